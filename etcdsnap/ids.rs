//! Identifiers: parsing CSI volume ids, deriving snapshot ids, naming Kubernetes objects.
//!
//! * A volume id is `namespace/pvc` (just `pvc` means namespace `default`): the handle
//!   PersistentVolumeClaim labelled with the etcd cluster it stands for.
//! * Ids we hand out are derived from the caller's idempotency name with SHA-256, so a
//!   retried Create maps to the same id without any lookup table: `g-<32 hex>` for a group
//!   snapshot, `s-<32 hex>` for a snapshot. They are 34 bytes (CSI allows 128), valid as
//!   label values and as parts of object names; the caller's names and volume ids, which
//!   can be long, never go into labels or names.

use crate::status::Status;

/// The most source volumes one group snapshot may hold (keeps metadata bounded).
pub const MAX_GROUP_VOLUMES: usize = 32;
/// The longest idempotency name we accept (the CO sends ~60 bytes; the spec caps ids at 128).
pub const MAX_NAME_BYTES: usize = 1024;

/// SHA-256 of `data` (ring, already linked as rustls' crypto provider; no extra crate).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `prefix` + the first 128 bits of SHA-256 over the parts, separated by NUL bytes.
fn derive(prefix: &str, parts: &[&str]) -> String {
    let joined = parts.join("\0");
    format!("{prefix}{}", hex(&sha256(joined.as_bytes())[..16]))
}

/// The group snapshot id for a CreateVolumeGroupSnapshot name (stable across retries).
pub fn group_id(driver: &str, name: &str) -> String {
    derive("g-", &["group", driver, name])
}

/// The id of the snapshot of `volume_id` inside group `group_id`.
pub fn member_snapshot_id(group_id: &str, volume_id: &str) -> String {
    derive("s-", &["member", group_id, volume_id])
}

/// The snapshot id for a CreateSnapshot name (a snapshot outside any group).
pub fn snapshot_id(driver: &str, name: &str) -> String {
    derive("s-", &["snapshot", driver, name])
}

/// Whether `id` has the shape of an id we issue (`g-`/`s-` + 32 lower-case hex).
pub fn is_our_id(id: &str, prefix: &str) -> bool {
    id.len() == 34
        && id.starts_with(prefix)
        && id[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Name of the ConfigMap holding the record of `id`, and of a snapshot's PVC and Job.
pub fn object_name(id: &str) -> String {
    format!("etcdsnap-{id}")
}

/// A parsed `namespace/name` volume id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Parses `namespace/pvc` or `pvc` (namespace `default`), checking both are DNS-1123 names.
pub fn parse_volume_id(id: &str) -> Result<VolumeId, Status> {
    let (namespace, name) = match id.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("default", id),
    };
    if !is_dns_label(namespace) {
        return Err(Status::invalid(format!(
            "volume id {id:?}: namespace {namespace:?} is not a valid Kubernetes namespace name (expected namespace/pvc)"
        )));
    }
    if !is_dns_subdomain(name) {
        return Err(Status::invalid(format!(
            "volume id {id:?}: {name:?} is not a valid PersistentVolumeClaim name (expected namespace/pvc)"
        )));
    }
    Ok(VolumeId {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

// The Kubernetes name rules are lifeboat's, shared with the hook.
pub use lifeboat::names::{is_dns_label, is_dns_subdomain};

/// The CSI driver name rule: `^[a-zA-Z][A-Za-z0-9-._]{0,61}[a-zA-Z]$`.
pub fn is_valid_driver_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b.len() <= 63
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

pub use lifeboat::names::is_label_key;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_vector() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn ids_are_stable_short_and_distinct() {
        let a = group_id("d", "groupsnapshot-1");
        assert_eq!(a, group_id("d", "groupsnapshot-1"));
        assert_ne!(a, group_id("d", "groupsnapshot-2"));
        assert_ne!(a, group_id("other", "groupsnapshot-1"));
        assert!(is_our_id(&a, "g-") && !is_our_id(&a, "s-"), "{a}");
        let long = "x".repeat(1000);
        let s = snapshot_id("d", &long);
        assert_eq!(s.len(), 34);
        assert!(is_our_id(&s, "s-"));
        assert_ne!(member_snapshot_id(&a, "ns/a"), member_snapshot_id(&a, "ns/b"));
        assert!(object_name(&s).len() <= 63);
        assert!(!is_our_id("g-XYZ", "g-"));
    }

    #[test]
    fn volume_ids() {
        assert_eq!(
            parse_volume_id("etcd/main-handle").unwrap(),
            VolumeId {
                namespace: "etcd".into(),
                name: "main-handle".into()
            }
        );
        assert_eq!(parse_volume_id("handle").unwrap().namespace, "default");
        for bad in [
            "",
            "/x",
            "ns/",
            "NS/x",
            "ns/x/y",
            "ns/-x",
            &format!("{}/x", "a".repeat(64)),
        ] {
            let err = parse_volume_id(bad).unwrap_err();
            assert_eq!(err.code, crate::status::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn driver_names_follow_the_csi_rule() {
        for ok in ["etcdsnap.lifeboat.dev", "ab", "a-b_c.d"] {
            assert!(is_valid_driver_name(ok), "{ok}");
        }
        for bad in ["a", "1abc", "abc1", "abc-", "a b", &"a".repeat(64), "a/b"] {
            assert!(!is_valid_driver_name(bad), "{bad}");
        }
        assert!(is_valid_driver_name(&"a".repeat(63)));
    }
}
