//! The values the hook accepts, checked against what their consumers accept: Kubernetes
//! (quantities, names), the container runtime (image references), Litestream 0.5 and Go
//! (durations, endpoints, YAML-printable text). A value that passes here does not leave a Pod
//! in `Init:Error` or `InvalidImageName`.

pub use lifeboat::quantity::{bytes as check_bytes, cpu as check_cpu};

/// `storage`, or `DEFAULT_STORAGE`: see [`check_bytes`].
pub fn check_quantity(s: &str) -> Result<(), String> {
    check_bytes(s).map(|_| ())
}

/// A container image reference as the runtime parses it (the distribution reference
/// grammar): `[host[:port]/]path[:tag][@algorithm:hex]`, the path in lower case.
pub fn check_image(s: &str) -> Result<(), String> {
    let why =
        || "must be a container image reference such as litestream/litestream:0.5.17 (lower-case path)".to_string();
    if s.is_empty() || s.len() > 512 {
        return Err(why());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let (algorithm, hex) = d.split_once(':').ok_or_else(why)?;
        let algorithm_ok = !algorithm.is_empty()
            && algorithm.starts_with(|c: char| c.is_ascii_alphabetic())
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b));
        if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(why());
        }
    }
    // A tag is after the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && (t.as_bytes()[0].is_ascii_alphanumeric() || t.starts_with('_'))
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(why());
        }
    }
    if name.len() > 255 {
        return Err(why());
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let has_domain = components.len() > 1
        && (first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()));
    if has_domain {
        let (host, port) = match first.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
            _ => (first, None),
        };
        if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) || !host_ok(host) {
            return Err(why());
        }
        components.remove(0);
    }
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        if b.is_empty() || !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
            return false;
        }
        if !(b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit()) {
            return false;
        }
        // Separators: one '.' or '_', two '_', or any number of '-', between alphanumerics.
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
                i += 1;
            }
            let sep = &c[start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
                return false;
            }
        }
        true
    };
    if components.is_empty() || !components.iter().all(|c| component_ok(c)) {
        return Err(why());
    }
    Ok(())
}

/// A host name (letters, digits, '-', '_', dot-separated labels), an IPv4 address, or an
/// IPv6 address in brackets.
fn host_ok(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    lifeboat::s3::endpoint::is_host_name(host)
}

/// An S3 endpoint URL as Litestream (Go's `net/url`, the AWS SDK) uses it: lifeboat's one
/// endpoint rule (`http(s)://host[:port][/path]`, no credentials, no query or fragment).
pub fn check_endpoint(s: &str) -> Result<(), String> {
    lifeboat::s3::endpoint::check(s)
}

/// Text that YAML (Litestream's config parser) accepts: no control characters and no
/// Unicode non-characters (U+FFFE, U+FFFF, U+FDD0-U+FDEF, ...), which go-yaml refuses.
pub fn yaml_printable(s: &str) -> bool {
    s.chars().all(|c| {
        let n = c as u32;
        !(c.is_control() || (0xFDD0..=0xFDEF).contains(&n) || n & 0xFFFE == 0xFFFE)
    })
}

/// An S3 bucket name: 3 to 63 lower-case letters, digits, dots and hyphens (AWS's rule for
/// DNS-compatible names; see `lifeboat::s3::bucket` for why s3sync's rule is wider).
pub fn check_bucket(s: &str) -> Result<(), String> {
    lifeboat::s3::bucket::check_dns_compatible(s)
}

/// A Kubernetes object name (RFC 1123 subdomain), as a Secret name must be.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    lifeboat::names::check_dns_subdomain(s)
}

/// A region name such as `us-east-1`.
pub fn check_region(s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if s.len() > 64 || !s.chars().all(ok_char) {
        return Err("must be a region name such as us-east-1".into());
    }
    Ok(())
}

/// Folders of a replica path: segments of letters, digits, '.', '_' and '-', joined by '/'.
pub fn check_replica_segments(s: &str) -> Result<(), String> {
    let segment_ok = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if s.len() > 512 || !s.split('/').all(segment_ok) {
        return Err(
            "must be folder names of letters, digits, '.', '_' and '-' joined by '/', without leading or trailing '/'"
                .into(),
        );
    }
    Ok(())
}

/// A Go duration (`time.ParseDuration`, unsigned): `1s`, `500ms`, `1m30s`, `1.5h`. Values Go
/// cannot hold (over about 2562047h) are refused, as Go refuses them.
pub fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    const WHY: &str = "must be a duration such as 1s, 500ms or 1m30s";
    let mut rest = s;
    if rest.is_empty() || rest.len() > 32 {
        return Err(WHY.into());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or(WHY)?;
        let number = &rest[..digits];
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
            return Err(WHY.into());
        }
        rest = &rest[digits..];
        let (unit, nanos) = [
            ("ns", 1u128),
            ("us", 1_000),
            ("µs", 1_000),
            ("ms", 1_000_000),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
        ]
        .into_iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())
        .ok_or(WHY)?;
        rest = &rest[unit.len()..];
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = whole.parse().map_err(|_| WHY)?;
        let mut part = whole.checked_mul(nanos).ok_or(WHY)?;
        let mut scale = nanos;
        for d in frac.bytes().take(18) {
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(part).ok_or(WHY)?;
        if total > i64::MAX as u128 {
            return Err(format!("{WHY} (at most 2562047h, as Go allows)"));
        }
    }
    Ok(std::time::Duration::from_nanos(total as u64))
}

/// A Go duration from `min` to `max`, for a Litestream setting.
pub fn check_go_duration_in(s: &str, min: std::time::Duration, max: std::time::Duration) -> Result<(), String> {
    let d = parse_go_duration(s)?;
    if d < min || d > max {
        return Err(format!(
            "must be a duration from {} to {}",
            show_duration(min),
            show_duration(max)
        ));
    }
    Ok(())
}

fn show_duration(d: std::time::Duration) -> String {
    match d.as_millis() {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let check_sync_interval = |s| {
            check_go_duration_in(
                s,
                std::time::Duration::from_millis(10),
                std::time::Duration::from_secs(24 * 3600),
            )
        };
        for ok in ["1s", "500ms", "1m30s", "1.5s", "2h", "24h", "10ms"] {
            assert!(check_sync_interval(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "1", "s", "1x", "0s", "-1s", "1.s", "9999999h", "25h", "1ms", "2562048h",
        ] {
            assert!(check_sync_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_go_duration("1m30.5s"),
            Ok(std::time::Duration::from_millis(90_500))
        );
        assert_eq!(parse_go_duration("2562047h").map(|d| d.as_secs()), Ok(2562047 * 3600));
        assert!(parse_go_duration("2562048h").is_err());
    }

    #[test]
    fn image_references() {
        for ok in [
            "litestream/litestream:0.5.17",
            "litestream",
            "registry.example:5000/team/litestream:v1",
            "localhost/x",
            "Registry.Example/x",
            "ghcr.io/a__b/c-d--e.f_g:1_x",
            "x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "[::1]:5000/x:1",
        ] {
            assert!(check_image(ok).is_ok(), "{ok}");
        }
        for bad in [
            "Litestream/Litestream:0.5",
            "litestream/Litestream",
            "busybox; sh",
            "x:",
            "x:-bad",
            "-x",
            "x/",
            "x..y",
            "x@sha256:short",
            "registry.example:port/x",
            "a b",
            "x:tag with space",
        ] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn yaml_refuses_non_characters() {
        assert!(yaml_printable("/data/データ $(x) 'q'.db"));
        for bad in [
            "a\u{FFFE}",
            "a\u{FFFF}",
            "a\u{FDD0}",
            "a\u{1FFFE}",
            "a\u{85}",
            "a\u{7f}",
        ] {
            assert!(!yaml_printable(bad), "{bad:?}");
        }
    }
}
