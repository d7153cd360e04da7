//! An S3 endpoint URL reduced to what decides which server it reaches: host (lowercase, no
//! trailing dot), port (the scheme's default when none is written) and path segments (empty
//! and doubled slashes dropped). The URL is assumed already checked by the configuration,
//! with [`check`]: the one endpoint rule of every binary (s3sync's buckets and metrics push
//! URL, the hook's Litestream replicas).

/// An endpoint URL reduced to what decides which server it reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Path segments, without empty ones (`/a//b/` is `a/b`).
    pub path: String,
}

/// Parses and normalises an `http(s)://` URL (already checked by the configuration).
pub fn normalise(url: &str) -> Endpoint {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let scheme = scheme.to_ascii_lowercase();
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let path_part = tail.split(['?', '#']).next().unwrap_or("");
    let (host, port) = split_host_port(authority);
    let default_port = if scheme == "https" { 443 } else { 80 };
    Endpoint {
        host: host.to_ascii_lowercase().trim_end_matches('.').to_string(),
        port: port.unwrap_or(default_port),
        path: path_part
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/"),
    }
}

fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// Longest endpoint URL accepted (no S3 endpoint is near it; bounds what is parsed and logged).
pub const MAX_URL: usize = 2048;

/// An endpoint URL as S3 clients (rclone, Litestream: Go's `net/url` and the AWS SDK; our
/// own client) use it: `http(s)://host[:port][/path]` with a case-insensitive scheme, a host
/// name (letters, digits, `-`, `_`, dot-separated labels of at most 63), an IPv4 address or
/// an IPv6 address in brackets, a port from 1 to 65535, a path of URL characters, no query or
/// fragment, and no credentials (`user:password@`: keys belong in their own variables or
/// Secret, and a URL is logged). The reasons never echo the URL.
pub fn check(url: &str) -> Result<(), String> {
    const FORM: &str = "such as https://s3.example.com or http://minio.storage:9000";
    if url.len() > MAX_URL {
        return Err(format!("must be at most {MAX_URL} bytes"));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(format!("expected a URL starting with http:// or https://, {FORM}"));
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(
            "must not contain credentials (user:password@); give the keys in their own variables or Secret".into(),
        );
    }
    if path.contains(['?', '#']) {
        return Err(format!("must have no query or fragment (?, #), {FORM}"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let Some((inner, after)) = v6.split_once(']') else {
                return Err(format!("expected a host, {FORM}"));
            };
            if inner.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("expected an IPv6 address in brackets, {FORM}"));
            }
            match after.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None if after.is_empty() => (None, None),
                None => return Err(format!("expected a host, {FORM}")),
            }
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(authority), None),
        },
    };
    if host.is_some_and(|h| !is_host_name(h)) {
        return Err(format!("expected a URL with a host, {FORM}"));
    }
    if let Some(p) = port {
        let ok = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !ok || !(1..=65535).contains(&p.parse::<u32>().unwrap_or(0)) {
            return Err("expected a port from 1 to 65535".into());
        }
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~/%!$&()*+,;=:".contains(c))
    {
        return Err("must have a path of URL characters only (letters, digits, -._~/% and the like)".into());
    }
    Ok(())
}

/// A host name as Go's resolver and the container runtime take it (letters of any case,
/// digits, `-`, `_`, dot-separated labels of at most 63, 253 in all), or an IPv4 address.
pub fn is_host_name(host: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        for ok in [
            "http://minio.storage:9000",
            "https://s3.example.com",
            "HTTPS://S3.Example.com/",
            "HTTP://127.0.0.1:9000//",
            "http://10.0.0.1:65535/base",
            "http://[::1]:9000",
            "http://[::1]",
            "http://minio_1:9000",
            "http://localhost:9000/",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "s3.example.com",
            "ftp://x",
            "http://",
            "http://@",
            "http://user:pass@host",
            "https://user:hunter2@s3.example.com",
            "http://host:99999",
            "http://host:0",
            "http://host:",
            "http://:9000",
            "http://x?y=1",
            "http://x/#f",
            "http://[::1",
            "http://[nope]:1",
            "http://x\"; rm",
            "http://a b",
            "http://-a.example",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(check(&format!("http://h/{}", "a".repeat(MAX_URL))).is_err());
        // The reason never echoes the URL (it may carry a password).
        let why = check("https://user:hunter2@s3.example.com").unwrap_err();
        assert!(why.contains("credentials") && !why.contains("hunter2"), "{why}");
    }

    #[test]
    fn spellings_of_one_endpoint_normalise_alike() {
        let n = normalise("HTTP://LocalHost.:80//a//b/");
        assert_eq!((n.host.as_str(), n.port, n.path.as_str()), ("localhost", 80, "a/b"));
        assert_eq!(normalise("https://h"), normalise("https://h:443/"));
        assert_ne!(normalise("https://h"), normalise("http://h"));
        assert_eq!(normalise("http://[::1]:9000/").host, "::1");
        assert_eq!(normalise("http://[::1]:9000/").port, 9000);
    }
}
