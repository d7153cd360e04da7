//! Kubernetes name rules, written once for every binary: RFC 1123 labels (namespaces, the
//! hook's VARIANT), RFC 1123 subdomains (object names: Secrets, PVCs, StorageClasses) and
//! qualified label keys, as Kubernetes' `apimachinery/pkg/util/validation` defines them.

/// The longest DNS label: 63 bytes (RFC 1123; Kubernetes' `validation.DNS1123LabelMaxLength`).
pub const DNS_LABEL_MAX: usize = 63;

/// An RFC 1123 label of at most `max` bytes (never more than [`DNS_LABEL_MAX`]): lower-case
/// letters, digits and `-`, starting and ending with a letter or digit.
pub fn check_dns_label(s: &str, max: usize) -> Result<(), String> {
    let max = max.min(DNS_LABEL_MAX);
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a DNS label of at most {max} lower-case letters, digits and '-'"
        ))
    }
}

/// The longest DNS subdomain: 253 bytes (`validation.DNS1123SubdomainMaxLength`).
pub const DNS_SUBDOMAIN_MAX: usize = 253;

/// An RFC 1123 label: 1 to 63 lower-case letters, digits and `-`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    check_dns_label(s, DNS_LABEL_MAX).is_ok()
}

/// An RFC 1123 subdomain (a Kubernetes object name): dot-separated labels, at most 253 bytes.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= DNS_SUBDOMAIN_MAX && s.split('.').all(is_dns_label)
}

/// [`is_dns_subdomain`] with the reason when it is not one.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if is_dns_subdomain(s) {
        Ok(())
    } else {
        Err("must be a Kubernetes object name (lower-case letters, digits, '-' and '.'; labels of at most 63, 253 in all)".into())
    }
}

/// A qualified label key: optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters (alphanumerics, `-`, `_`, `.`; alphanumeric at both ends).
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return false;
        }
    }
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("blue-2", 20).is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "é"] {
            assert!(check_dns_label(bad, 63).is_err(), "{bad:?}");
        }
        assert!(check_dns_label(&"a".repeat(20), 20).is_ok());
        assert!(check_dns_label(&"a".repeat(21), 20).is_err());
        // Never more than 63, whatever the caller asks for.
        assert!(check_dns_label(&"a".repeat(63), 100).is_ok());
        let err = check_dns_label(&"a".repeat(64), 100).unwrap_err();
        assert!(err.contains("at most 63"), "{err}");
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["a", "main-client-tls", "a.b-c.d", &format!("{}.x", "a".repeat(63))] {
            assert!(is_dns_subdomain(ok) && check_dns_subdomain(ok).is_ok(), "{ok}");
        }
        let long = vec!["a".repeat(63); 4].join("."); // 255 bytes
        for bad in [
            "",
            ".",
            "a..b",
            "a.",
            "-a",
            "A",
            "a_b",
            &format!("{}.x", "a".repeat(64)),
            &long,
        ] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
            assert!(check_dns_subdomain(bad).unwrap_err().contains("object name"), "{bad:?}");
        }
    }

    #[test]
    fn label_keys() {
        for ok in ["etcd.io/cluster", "cluster", "example.com/a_b"] {
            assert!(is_label_key(ok), "{ok}");
        }
        for bad in ["", "/x", "etcd.io/", "Etc_d.io/x", "a/b/c", &"k".repeat(64)] {
            assert!(!is_label_key(bad), "{bad}");
        }
    }
}
