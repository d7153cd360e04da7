//! The parameters of a VolumeSnapshotClass or VolumeGroupSnapshotClass, as CreateSnapshot
//! and CreateVolumeGroupSnapshot receive them.
//!
//! | key | values | where | meaning |
//! |---|---|---|---|
//! | `storageClassName` | a StorageClass name | both | storage class of the snapshot PVCs (default `STORAGE_CLASS`) |
//! | `member` | `leader` (default), `follower` | both | which healthy member etcdctl saves from |
//! | `trialRestore` | `false` (default), `true` | both | before the file is verified, restore it into a scratch folder with `etcdutl snapshot restore`, which also checks the SHA-256 etcd appended to it |
//! | `exportBucket` | a bucket name | both | copy each verified snapshot to this S3 bucket (enables the export; needs `exportEndpoint` and `exportSecretName`) |
//! | `exportEndpoint` | `http(s)://host[:port][/path]` | both | the S3 endpoint |
//! | `exportSecretName` | a Secret name | both | Secret in the handle's namespace with `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (optional `AWS_SESSION_TOKEN`) |
//! | `exportRegion` | a region (default `us-east-1`) | both | the signing region |
//! | `exportPathStyle` | `true` (default), `false` | both | path-style (`host/bucket/key`) or virtual-hosted (`bucket.host/key`) addressing |
//! | `exportPrefix` | a key prefix (default empty) | both | objects are `<prefix><namespace>/<cluster>/<snapshot id>.db` |
//! | `exportPartSize` | bytes or `16Mi` (5Mi to 5Gi, default 16Mi) | both | multipart part size (grown to keep within 10000 parts) |
//! | `exportRetention` | `delete` (default), `retain` | both | whether deleting the snapshot deletes the copy |
//! | `exportCompression` | `none` (default), `gzip` | both | `gzip`: the copy is `<...>.db.gz`, gzipped while it is uploaded (see `gzip`) |
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
pub const EXPORT_BUCKET: &str = "exportBucket";
pub const EXPORT_ENDPOINT: &str = "exportEndpoint";
pub const EXPORT_SECRET: &str = "exportSecretName";
pub const EXPORT_REGION: &str = "exportRegion";
pub const EXPORT_PATH_STYLE: &str = "exportPathStyle";
pub const EXPORT_PREFIX: &str = "exportPrefix";
pub const EXPORT_PART_SIZE: &str = "exportPartSize";
pub const EXPORT_RETENTION: &str = "exportRetention";
pub const EXPORT_COMPRESSION: &str = "exportCompression";
const EXPORT_KEYS: [&str; 9] = [
    EXPORT_BUCKET,
    EXPORT_ENDPOINT,
    EXPORT_SECRET,
    EXPORT_REGION,
    EXPORT_PATH_STYLE,
    EXPORT_PREFIX,
    EXPORT_PART_SIZE,
    EXPORT_RETENTION,
    EXPORT_COMPRESSION,
];
/// The multipart part size unless the class says otherwise.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// Longest `exportPrefix`.
const MAX_PREFIX: usize = 512;
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

/// The export of verified snapshots to S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub target: crate::export::Target,
    pub prefix: String,
    /// The Secret (in the handle's namespace) with the S3 keys.
    pub secret: String,
    pub part_size: u64,
    /// Keep the copy when the snapshot is deleted.
    pub retain: bool,
    pub compression: crate::gzip::Compression,
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
    /// Where verified snapshots are copied, when the class asks for it.
    pub export: Option<Export>,
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
            k if EXPORT_KEYS.contains(&k) => {}
            _ => {
                let export = EXPORT_KEYS.join(", ");
                let known = match rpc {
                    For::Snapshot => format!("{STORAGE_CLASS}, {MEMBER}, {TRIAL_RESTORE}, {export}"),
                    For::Group => format!("{STORAGE_CLASS}, {MEMBER}, {TRIAL_RESTORE}, {GROUP_CONSISTENCY}, {export}"),
                };
                return Err(Status::invalid(format!(
                    "{what}: unknown parameter {:?} (known: {known}, and the sidecar's {SIDECAR_PREFIX}* keys)",
                    crate::status::truncate(key, 128)
                )));
            }
        }
        p.given.insert(key.clone(), value.clone());
    }
    p.export = export(raw, what)?;
    Ok(p)
}

/// The export parameters: none at all, or a complete, valid set.
fn export(raw: &HashMap<String, String>, what: &str) -> Result<Option<Export>, Status> {
    let get = |k: &str| raw.get(k).map(String::as_str);
    let invalid = |msg: String| Err(Status::invalid(format!("{what}: {msg}")));
    let Some(bucket) = get(EXPORT_BUCKET) else {
        if let Some(k) = EXPORT_KEYS.iter().find(|k| raw.contains_key(**k)) {
            return invalid(format!(
                "parameter {k} needs {EXPORT_BUCKET} (the export is off without it)"
            ));
        }
        return Ok(None);
    };
    if !is_bucket_name(bucket) {
        return invalid(format!(
            "parameter {EXPORT_BUCKET} must be an S3 bucket name (3-63 of a-z, 0-9, '.', '-'), got {:?}",
            crate::status::truncate(bucket, 128)
        ));
    }
    let Some(endpoint) = get(EXPORT_ENDPOINT) else {
        return invalid(format!(
            "parameter {EXPORT_BUCKET} needs {EXPORT_ENDPOINT} (the S3 endpoint URL)"
        ));
    };
    if let Err(why) = check_endpoint(endpoint) {
        return invalid(format!("parameter {EXPORT_ENDPOINT} {why}"));
    }
    let Some(secret) = get(EXPORT_SECRET) else {
        return invalid(format!(
            "parameter {EXPORT_BUCKET} needs {EXPORT_SECRET} (the Secret with the S3 keys)"
        ));
    };
    if !ids::is_dns_subdomain(secret) {
        return invalid(format!(
            "parameter {EXPORT_SECRET} must be a Secret name, got {secret:?}"
        ));
    }
    let region = get(EXPORT_REGION).unwrap_or("us-east-1");
    if region.is_empty() || region.len() > 64 || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return invalid(format!(
            "parameter {EXPORT_REGION} must be a region such as us-east-1, got {region:?}"
        ));
    }
    let path_style = match get(EXPORT_PATH_STYLE).unwrap_or("true") {
        "true" => true,
        "false" => false,
        v => {
            return invalid(format!(
                "parameter {EXPORT_PATH_STYLE} must be \"true\" or \"false\", got {v:?}"
            ))
        }
    };
    let prefix = get(EXPORT_PREFIX).unwrap_or("");
    if prefix.len() > MAX_PREFIX
        || prefix.starts_with('/')
        || prefix.split('/').any(|s| s == "." || s == "..")
        || prefix.chars().any(char::is_control)
    {
        return invalid(format!(
            "parameter {EXPORT_PREFIX} must be a key prefix of at most {MAX_PREFIX} bytes, not starting with '/', \
             without '.' or '..' segments or control characters"
        ));
    }
    let part_size = match get(EXPORT_PART_SIZE) {
        None => DEFAULT_PART_SIZE,
        Some(v) => match crate::config::parse_quantity(v) {
            Ok(n) if (lifeboat::s3::multipart::MIN_PART..=lifeboat::s3::multipart::MAX_PART).contains(&n) => n,
            _ => return invalid(format!("parameter {EXPORT_PART_SIZE} must be 5Mi to 5Gi, got {v:?}")),
        },
    };
    let retain = match get(EXPORT_RETENTION).unwrap_or("delete") {
        "delete" => false,
        "retain" => true,
        v => {
            return invalid(format!(
                "parameter {EXPORT_RETENTION} must be \"delete\" or \"retain\", got {v:?}"
            ))
        }
    };
    let compression = get(EXPORT_COMPRESSION).unwrap_or("none");
    let Some(compression) = crate::gzip::Compression::parse(compression) else {
        return invalid(format!(
            "parameter {EXPORT_COMPRESSION} must be {}, got {:?}",
            crate::gzip::Compression::ALLOWED,
            crate::status::truncate(compression, 128)
        ));
    };
    Ok(Some(Export {
        target: crate::export::Target {
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            region: region.to_string(),
            path_style,
        },
        prefix: prefix.to_string(),
        secret: secret.to_string(),
        part_size,
        retain,
        compression,
    }))
}

/// S3's bucket naming rules (lowercase, digits, dots, hyphens; 3 to 63; alphanumeric ends).
fn is_bucket_name(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
        && !b.contains("..")
}

/// An endpoint is `http(s)://host[:port][/path]`: no user info (keys belong in the Secret), no
/// query or fragment.
fn check_endpoint(e: &str) -> Result<(), String> {
    let lower = e.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err("has no host".into());
    }
    if host.contains('@') {
        return Err("must not hold credentials (put the keys in the Secret)".into());
    }
    if rest.contains('?') || rest.contains('#') || e.len() > 2048 || e.chars().any(|c| c.is_control() || c == ' ') {
        return Err("must be a plain URL without query, fragment or spaces".into());
    }
    Ok(())
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

    #[test]
    fn export_parameters_are_all_or_nothing_and_checked() {
        let base = [
            ("exportBucket", "etcd-backups"),
            ("exportEndpoint", "https://s3.example:9000"),
            ("exportSecretName", "s3-keys"),
        ];
        let p = parse(&map(&base), For::Snapshot, "X").unwrap();
        let e = p.export.unwrap();
        assert_eq!(e.target.region, "us-east-1");
        assert!(e.target.path_style && !e.retain);
        assert_eq!(e.part_size, DEFAULT_PART_SIZE);
        assert_eq!(e.compression, crate::gzip::Compression::None);
        assert_eq!(p.given.len(), 3);
        let mut more = base.to_vec();
        more.extend([
            ("exportRetention", "retain"),
            ("exportPartSize", "8Mi"),
            ("exportPrefix", "prod/"),
            ("exportPathStyle", "false"),
            ("exportCompression", "gzip"),
        ]);
        let e = parse(&map(&more), For::Group, "X").unwrap().export.unwrap();
        assert!(e.retain && !e.target.path_style);
        assert_eq!(e.compression, crate::gzip::Compression::Gzip);
        assert_eq!((e.part_size, e.prefix.as_str()), (8 << 20, "prod/"));
        assert_eq!(parse(&map(&[]), For::Snapshot, "X").unwrap().export, None);
        type Pairs = &'static [(&'static str, &'static str)];
        let bad: [(Pairs, &str); 12] = [
            (&[("exportRetention", "retain")], "exportRetention needs exportBucket"),
            (&[("exportBucket", "b-1")], "needs exportEndpoint"),
            (
                &[("exportBucket", "b-1"), ("exportEndpoint", "http://x")],
                "needs exportSecretName",
            ),
            (&[("exportBucket", "Bad_Bucket")], "exportBucket must be"),
            (
                &[("exportBucket", "b-1"), ("exportEndpoint", "ftp://x")],
                "exportEndpoint must start",
            ),
            (
                &[("exportBucket", "b-1"), ("exportEndpoint", "https://AKIA:pw@x")],
                "must not hold credentials",
            ),
            (
                &[
                    ("exportBucket", "b-1"),
                    ("exportEndpoint", "http://x"),
                    ("exportSecretName", "s"),
                    ("exportPartSize", "1Mi"),
                ],
                "exportPartSize must be 5Mi to 5Gi",
            ),
            (
                &[
                    ("exportBucket", "b-1"),
                    ("exportEndpoint", "http://x"),
                    ("exportSecretName", "s"),
                    ("exportRetention", "keep"),
                ],
                "exportRetention must be",
            ),
            (
                &[
                    ("exportBucket", "b-1"),
                    ("exportEndpoint", "http://x"),
                    ("exportSecretName", "s"),
                    ("exportPrefix", "../x"),
                ],
                "exportPrefix must be",
            ),
            (&[("exportbucket", "b-1")], "unknown parameter \"exportbucket\""),
            (
                &[
                    ("exportBucket", "b-1"),
                    ("exportEndpoint", "http://x"),
                    ("exportSecretName", "s"),
                    ("exportCompression", "zstd"),
                ],
                "parameter exportCompression must be \"none\" or \"gzip\", got \"zstd\"",
            ),
            (&[("exportCompression", "gzip")], "exportCompression needs exportBucket"),
        ];
        for (pairs, want) in bad {
            let err = parse(&map(pairs), For::Snapshot, "CreateSnapshot").unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument);
            assert!(err.message.contains(want), "{want}: {}", err.message);
            assert!(!err.message.contains("pw@"), "{}", err.message);
        }
    }
}
