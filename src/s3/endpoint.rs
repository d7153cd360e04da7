//! An S3 endpoint URL reduced to what decides which server it reaches: host (lowercase, no
//! trailing dot), port (the scheme's default when none is written) and path segments (empty
//! and doubled slashes dropped). The URL is assumed already checked by the configuration.

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

#[cfg(test)]
mod tests {
    use super::*;

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
