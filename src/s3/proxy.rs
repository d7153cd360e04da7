//! Which HTTP proxy a request to an S3 endpoint goes through, by Go's rules (so the same as
//! rclone): `HTTPS_PROXY` for https, `HTTP_PROXY` for http (either case), none for loopback
//! hosts or a `NO_PROXY` match. CIDR ranges in `NO_PROXY` are not understood.

/// The proxy Go's `http.ProxyFromEnvironment` would use for this endpoint: `HTTPS_PROXY` for
/// https, `HTTP_PROXY` for http (either case), none for loopback hosts or a `NO_PROXY` match.
pub fn proxy_for(scheme: &str, host: &str) -> Option<ureq::Proxy> {
    let var = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    };
    let url = if scheme == "https" {
        var(["HTTPS_PROXY", "https_proxy"])
    } else {
        var(["HTTP_PROXY", "http_proxy"])
    }?;
    if host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return None;
    }
    let no_proxy = var(["NO_PROXY", "no_proxy"]).unwrap_or_default();
    if no_proxy_matches(&no_proxy, host) {
        return None;
    }
    let url = if url.contains("://") {
        url
    } else {
        format!("http://{url}")
    };
    ureq::Proxy::new(&url).ok()
}

/// Go's NO_PROXY rules, for host names and exact addresses: `*` matches all; `example.com`
/// and `.example.com` match the name and its subdomains; a port in an entry is ignored.
fn no_proxy_matches(list: &str, host: &str) -> bool {
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry.trim_start_matches('[');
        let name = match entry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
            _ => entry,
        }
        .trim_end_matches(']')
        .to_ascii_lowercase();
        let bare = name.trim_start_matches('.');
        host == bare || host.ends_with(&format!(".{bare}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_rules() {
        assert!(no_proxy_matches("example.com", "s3.example.com"));
        assert!(no_proxy_matches(" .example.com:443", "example.com"));
        assert!(no_proxy_matches("*", "x"));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(no_proxy_matches("10.0.0.1", "10.0.0.1"));
    }
}
