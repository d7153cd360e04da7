//! Whether source and destination may be one bucket, and then whether their prefixes are
//! disjoint: `rclone sync` of a folder into an overlapping one deletes the source's objects.
//!
//! Endpoint strings are not compared as written: `http://127.0.0.1:P` and `http://127.0.0.1:P/`,
//! `HTTP://Host` and `http://host:80`, or `localhost` and `127.0.0.1` reach the same server. Two
//! sides are the same server when their normalised URLs (scheme and host case, default ports,
//! trailing and doubled slashes) are equal, or when their hosts resolve to a common address
//! (any two loopback addresses count as common) on the same port with the same path. AWS's
//! bucket names are global, so two `*.amazonaws.com` endpoints always count as one service.
//! Names that do not resolve are compared by name only: such a side cannot be reached, so
//! nothing is synced to or from it.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Duration;

use crate::config::{overlaps, Bucket};
use lifeboat::s3::endpoint::normalise;

/// The addresses `host` resolves to, bounded by `timeout` (an unanswered DNS query must not
/// hold the run); empty when it does not resolve in time.
pub fn resolve(host: &str, port: u16, timeout: Duration) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    let (tx, rx) = mpsc::channel();
    let name = host.to_string();
    // Not joined on timeout: getaddrinfo cannot be cancelled; the thread ends with its query.
    std::thread::spawn(move || {
        let addrs: Vec<IpAddr> = (name.as_str(), port)
            .to_socket_addrs()
            .map(|it| it.map(|a| a.ip()).collect())
            .unwrap_or_default();
        let _ = tx.send(addrs);
    });
    rx.recv_timeout(timeout).unwrap_or_default()
}

fn same_machine(a: &IpAddr, b: &IpAddr) -> bool {
    let local = |ip: &IpAddr| ip.is_loopback() || ip.is_unspecified();
    a == b || (local(a) && local(b))
}

fn is_aws(host: &str) -> bool {
    host == "amazonaws.com" || host.ends_with(".amazonaws.com")
}

/// Whether the two endpoints may reach one S3 service.
pub fn same_service(a: &str, b: &str, timeout: Duration) -> bool {
    let (a, b) = (normalise(a), normalise(b));
    if a == b || (is_aws(&a.host) && is_aws(&b.host)) {
        return true;
    }
    if a.port != b.port || a.path != b.path {
        return false;
    }
    let ra = resolve(&a.host, a.port, timeout);
    let rb = resolve(&b.host, b.port, timeout);
    ra.iter().any(|x| rb.iter().any(|y| same_machine(x, y)))
}

/// `Err` (naming both sides) when source and destination may be one bucket and their
/// prefixes are not disjoint.
pub fn check(source: &Bucket, dest: &Bucket, timeout: Duration) -> Result<(), String> {
    if !source.bucket.eq_ignore_ascii_case(&dest.bucket) || !overlaps(&source.prefix, &dest.prefix) {
        return Ok(());
    }
    if !same_service(&source.endpoint, &dest.endpoint, timeout) {
        return Ok(());
    }
    Err(format!(
        "source {:?} and destination {:?} may be the same bucket ({} and {} reach the same server) \
         and their prefixes overlap: the sync would delete or overwrite its own source; use disjoint \
         prefixes (neither inside the other)",
        source.display(),
        dest.display(),
        source.endpoint,
        dest.endpoint
    ))
}

/// Whether rclone may copy server-side (CopyObject on the destination, reading the source):
/// `SERVER_SIDE_COPY` is on, both sides are one service ([`same_service`]), and they sign as
/// one identity in one region (the same static keys, or both the platform's credentials), so
/// the destination's credentials can read the source. Anything else copies through the Pod.
pub fn server_side(source: &Bucket, dest: &Bucket, enabled: bool, timeout: Duration) -> bool {
    use crate::config::Auth;
    let one_identity = match (&source.auth, &dest.auth) {
        (
            Auth::Static {
                access_key: a1,
                secret_key: s1,
            },
            Auth::Static {
                access_key: a2,
                secret_key: s2,
            },
        ) => a1 == a2 && s1 == s2,
        (Auth::Platform(_), Auth::Platform(_)) => true,
        _ => false,
    };
    enabled
        && one_identity
        && source.region == dest.region
        && source.provider == dest.provider
        && source.path_style == dest.path_style
        && same_service(&source.endpoint, &dest.endpoint, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_service_by_name_address_or_aws() {
        let t = Duration::from_secs(5);
        assert!(same_service("http://127.0.0.1:9", "http://127.0.0.1:9/", t));
        assert!(same_service("http://localhost:9", "http://127.0.0.1:9", t));
        assert!(same_service("http://127.0.0.2:9", "http://[::1]:9", t));
        assert!(same_service(
            "https://s3.amazonaws.com",
            "https://s3.eu-west-1.amazonaws.com",
            t
        ));
        assert!(!same_service("http://127.0.0.1:9", "http://127.0.0.1:10", t));
        assert!(!same_service("http://127.0.0.1:9/a", "http://127.0.0.1:9/b", t));
    }
}
