//! The parameters of a VolumeSnapshotClass or VolumeGroupSnapshotClass, as CreateSnapshot
//! and CreateVolumeGroupSnapshot receive them.
//!
//! | key | values | where | meaning |
//! |---|---|---|---|
//! | `storageClassName` | a StorageClass name | both | storage class of the snapshot PVCs (default `STORAGE_CLASS`) |
//! | `member` | `leader` (default), `follower` | both | which healthy member etcdctl saves from |
//! | `trialRestore` | `false` (default), `true` | both | before the file is verified, restore it into a scratch folder with `etcdutl snapshot restore`, which also checks the SHA-256 etcd appended to it |
//! | `groupConsistency` | `strict` (default), `per-volume` | group | `strict` refuses a group of more than one volume: each volume is its own etcd snapshot Job, with no common point in time; `per-volume` accepts that, one point in time per volume |
//!
//! Keys under `csi.storage.k8s.io/` are the sidecar's own (`--extra-create-metadata`, secret
//! references) and are accepted and ignored. Any other key is INVALID_ARGUMENT naming it, so
//! a typo is not silently ignored. The known keys are kept in the record: the same name with
//! other parameters is ALREADY_EXISTS.

use std::collections::{BTreeMap, HashMap};

use crate::ids;
use crate::status::Status;

pub const STORAGE_CLASS: &str = "storageClassName";
pub const MEMBER: &str = "member";
pub const GROUP_CONSISTENCY: &str = "groupConsistency";
pub const TRIAL_RESTORE: &str = "trialRestore";
/// The sidecar's own keys.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// Which member the Job saves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Member {
    #[default]
    Leader,
    /// A healthy member that is not the leader (keeps the snapshot's read load off it).
    Follower,
}

/// Whether a group may have independent points in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupConsistency {
    /// One volume per group: a group snapshot is one point in time, or refused.
    #[default]
    Strict,
    /// One point in time per volume, accepted explicitly.
    PerVolume,
}

/// Which RPC the parameters came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum For {
    Snapshot,
    Group,
}

/// Validated parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Params {
    pub storage_class: Option<String>,
    pub member: Member,
    pub group_consistency: GroupConsistency,
    pub trial_restore: bool,
    /// The known keys as given (what the record keeps and compares).
    pub given: BTreeMap<String, String>,
}

/// Checks `raw` for the RPC `what` (its name, for messages).
pub fn parse(raw: &HashMap<String, String>, rpc: For, what: &str) -> Result<Params, Status> {
    let mut p = Params::default();
    let mut keys: Vec<&String> = raw.keys().collect();
    keys.sort();
    for key in keys {
        let value = &raw[key];
        if key.starts_with(SIDECAR_PREFIX) {
            continue;
        }
        match key.as_str() {
            STORAGE_CLASS => {
                if !ids::is_dns_subdomain(value) {
                    return Err(Status::invalid(format!(
                        "{what}: parameter {STORAGE_CLASS} must be a StorageClass name, got {value:?}"
                    )));
                }
                p.storage_class = Some(value.clone());
            }
            MEMBER => {
                p.member = match value.as_str() {
                    "leader" => Member::Leader,
                    "follower" => Member::Follower,
                    _ => {
                        return Err(Status::invalid(format!(
                            "{what}: parameter {MEMBER} must be \"leader\" or \"follower\", got {value:?}"
                        )))
                    }
                }
            }
            TRIAL_RESTORE => {
                p.trial_restore = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Status::invalid(format!(
                            "{what}: parameter {TRIAL_RESTORE} must be \"true\" or \"false\", got {value:?}"
                        )))
                    }
                }
            }
            GROUP_CONSISTENCY if rpc == For::Group => {
                p.group_consistency = match value.as_str() {
                    "strict" => GroupConsistency::Strict,
                    "per-volume" => GroupConsistency::PerVolume,
                    _ => {
                        return Err(Status::invalid(format!(
                            "{what}: parameter {GROUP_CONSISTENCY} must be \"strict\" or \"per-volume\", got {value:?}"
                        )))
                    }
                }
            }
            _ => {
                let known = match rpc {
                    For::Snapshot => format!("{STORAGE_CLASS}, {MEMBER}, {TRIAL_RESTORE}"),
                    For::Group => format!("{STORAGE_CLASS}, {MEMBER}, {TRIAL_RESTORE}, {GROUP_CONSISTENCY}"),
                };
                return Err(Status::invalid(format!(
                    "{what}: unknown parameter {:?} (known: {known}, and the sidecar's {SIDECAR_PREFIX}* keys)",
                    crate::status::truncate(key, 128)
                )));
            }
        }
        p.given.insert(key.clone(), value.clone());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Code;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parameters_are_checked() {
        let ok = parse(&map(&[]), For::Snapshot, "X").unwrap();
        assert_eq!(ok, Params::default());
        let p = parse(
            &map(&[
                ("storageClassName", "fast-ssd"),
                ("member", "follower"),
                ("csi.storage.k8s.io/volumesnapshot/name", "snap-1"),
                ("csi.storage.k8s.io/snapshotter-secret-name", "s"),
            ]),
            For::Snapshot,
            "X",
        )
        .unwrap();
        assert_eq!(p.storage_class.as_deref(), Some("fast-ssd"));
        assert_eq!(p.member, Member::Follower);
        // Only the known keys are kept (the sidecar's change per object).
        assert_eq!(p.given.len(), 2);
        assert!(
            parse(&map(&[("trialRestore", "true")]), For::Snapshot, "X")
                .unwrap()
                .trial_restore
        );
        assert!(parse(&map(&[("trialRestore", "yes")]), For::Snapshot, "X").is_err());
        let g = parse(&map(&[("groupConsistency", "per-volume")]), For::Group, "X").unwrap();
        assert_eq!(g.group_consistency, GroupConsistency::PerVolume);
        // (parameters, rpc) -> the message names what is wrong.
        type Pairs = &'static [(&'static str, &'static str)];
        let table: [(Pairs, For, &str); 6] = [
            (
                &[("storageclass", "x")],
                For::Snapshot,
                "unknown parameter \"storageclass\"",
            ),
            (
                &[("groupConsistency", "strict")],
                For::Snapshot,
                "unknown parameter \"groupConsistency\"",
            ),
            (&[("member", "any")], For::Group, "parameter member must be"),
            (
                &[("groupConsistency", "loose")],
                For::Group,
                "parameter groupConsistency must be",
            ),
            (
                &[("storageClassName", "Not_A_Name")],
                For::Group,
                "parameter storageClassName",
            ),
            (
                &[("retention", "1d"), ("member", "leader")],
                For::Group,
                "unknown parameter \"retention\"",
            ),
        ];
        for (pairs, rpc, want) in table {
            let err = parse(&map(pairs), rpc, "CreateX").unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument);
            assert!(
                err.message.contains(want) && err.message.starts_with("CreateX: "),
                "{}",
                err.message
            );
        }
    }
}
