//! Kubernetes name rules (RFC 1123 labels), written once for every binary.

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
}
