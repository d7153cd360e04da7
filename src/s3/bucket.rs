//! Bucket names: two rules, on purpose, each for its use.
//!
//! - [`check_existing`] (s3sync): any bucket an S3-compatible store may already hold. s3sync
//!   syncs buckets that exist, so it must accept what providers accept: AWS's legacy
//!   us-east-1 names (up to 255 characters, upper case and `_`, allowed before March 2018) and
//!   relaxed names such as Ceph RGW's (`rgw_relaxed_s3_bucket_names`). It addresses them
//!   path-style by default, so they need not be DNS names. Only what no provider allows
//!   (`/`, spaces, other punctuation) is refused; a bucket that is not there fails pre-flight.
//! - [`check_dns_compatible`] (hook): AWS's current rule (3 to 63 lower-case letters, digits,
//!   `.` and `-`, alphanumeric at both ends). The hook writes the name into the Litestream
//!   config of every Pod that asks for it (from any Pod author's annotation), and Litestream's
//!   AWS SDK addresses AWS virtual-hosted style, where the bucket is a DNS label of the host.

/// A name an S3-compatible store may hold: 1 to 255 letters, digits, `.`, `-`, `_`.
pub fn check_existing(name: &str) -> Result<(), String> {
    if name.len() > 255
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(
            "expected a bucket name (letters, digits, '.', '-', '_'; no '/'; use the PREFIX variable for a path)"
                .into(),
        );
    }
    Ok(())
}

/// AWS's rule for new buckets: 3 to 63 lower-case letters, digits, `.` and `-`,
/// alphanumeric at both ends.
pub fn check_dns_compatible(s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&s.len())
        || !s.chars().all(ok_char)
        || !edge_ok(s.chars().next())
        || !edge_ok(s.chars().last())
    {
        return Err("must be an S3 bucket name: 3 to 63 lower-case letters, digits, '.' and '-'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_buckets_of_any_provider() {
        for ok in ["a", "prod-data", "Legacy_Bucket.2017", &"b".repeat(255)] {
            assert!(check_existing(ok).is_ok(), "{ok}");
        }
        for bad in ["a/b", "a b", "a:b", "é", &"b".repeat(256)] {
            assert!(check_existing(bad).unwrap_err().contains("PREFIX"), "{bad}");
        }
    }

    #[test]
    fn dns_compatible_buckets() {
        for ok in ["abc", "litestream", "my.bucket-1", &"b".repeat(63)] {
            assert!(check_dns_compatible(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "Upper", "a_b", "-abc", "abc-", ".abc", &"b".repeat(64), "a/b"] {
            assert!(check_dns_compatible(bad).is_err(), "{bad}");
        }
        // Every DNS-compatible name is one an existing bucket may have; not the other way round.
        assert!(check_existing("my.bucket-1").is_ok() && check_dns_compatible("Legacy_Bucket").is_err());
    }
}
