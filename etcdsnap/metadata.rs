//! Snapshot records, one ConfigMap each, in the metadata namespace (default kube-system).
//!
//! A record's ConfigMap is named after its id (`etcdsnap-g-…` for a group, `etcdsnap-s-…`
//! for a snapshot), so every lookup is a GET by name. The record is JSON under one key,
//! `record.json`; labels (driver, kind, state, group) let the monitor list what is still
//! running after a restart. Updates are read-modify-write with the ConfigMap's
//! resourceVersion: a concurrent writer makes the PUT fail with 409 and the change is
//! re-applied to the fresh copy, so no update is lost across threads or driver restarts.
//! Records stay small: names are capped, failure reasons truncated, groups bounded.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids;
use crate::job::{LABEL_DRIVER, LABEL_GROUP, LABEL_MANAGED_BY};
use crate::kube::{path, Kube};
use crate::status::Status;

pub const LABEL_KIND: &str = "etcdsnap.lifeboat.dev/kind";
pub const LABEL_STATE: &str = "etcdsnap.lifeboat.dev/state";
const KEY: &str = "record.json";
/// Longest failure reason kept in a record.
pub const MAX_REASON: usize = 1024;
/// Attempts of one read-modify-write before giving up (each lost race means progress elsewhere).
const UPDATE_ATTEMPTS: usize = 10;

/// Where a snapshot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Record written; PVC and Job being created.
    Pending,
    /// The Job exists and has not finished.
    Running,
    /// The Job succeeded and the file was verified.
    Ready,
    /// The Job failed or timed out; its PVC and Job were removed.
    Failed,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Ready => "ready",
            State::Failed => "failed",
        }
    }
}

/// Why a snapshot failed: what the RPC that reports it answers (see `lifecycle::failure_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The Job ran past its deadline, or showed no result in time (DEADLINE_EXCEEDED).
    TimedOut,
    /// The Job failed: etcdctl or etcdutl exited with an error (INTERNAL).
    JobFailed,
    /// Creating the PVC and Job was interrupted, or the Job vanished (INTERNAL).
    Lost,
    /// The snapshot file could not be verified (INTERNAL).
    Unverified,
}

/// A point in time as the CSI Timestamp carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Time {
    pub seconds: i64,
    pub nanos: i32,
}

impl Time {
    pub fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    }

    pub fn as_secs_f64(self) -> f64 {
        self.seconds as f64 + self.nanos as f64 / 1e9
    }

    /// From fractional Unix seconds (etcd's log timestamps); `None` when out of range.
    pub fn from_secs_f64(secs: f64) -> Option<Time> {
        if !secs.is_finite() || !(0.0..1e11).contains(&secs) {
            return None;
        }
        let whole = secs.floor();
        Some(Time {
            seconds: whole as i64,
            nanos: (((secs - whole) * 1e9) as i32).clamp(0, 999_999_999),
        })
    }
}

/// One snapshot of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    /// The CreateSnapshot name (empty for a member of a group).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub group_id: Option<String>,
    pub volume_id: String,
    /// `namespace/cluster` of the etcd cluster.
    pub cluster: String,
    /// Namespace of the PVC and Job (the etcd cluster's namespace).
    pub namespace: String,
    /// Name of both the PVC and the Job.
    pub object: String,
    pub member_url: String,
    pub tls_secret: String,
    /// The Secret with the etcd user and password (annotation `etcd.io/auth-secret`).
    #[serde(default)]
    pub auth_secret: Option<String>,
    pub created: Time,
    pub state: State,
    #[serde(default)]
    pub reason: Option<String>,
    /// Size of the snapshot file (once ready).
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub pvc_bytes: u64,
    #[serde(default)]
    pub revision: Option<i64>,
    #[serde(default)]
    pub hash: Option<u64>,
    #[serde(default)]
    pub total_keys: Option<u64>,
    #[serde(default)]
    pub finished: Option<Time>,
    /// When etcd cut the snapshot: set once the Job's save step has finished. Create answers
    /// OK only from then on, and this is the snapshot's `creation_time`.
    #[serde(default)]
    pub cut: Option<Time>,
    /// The pod whose save step made that cut (`None` when its pods were gone by then).
    #[serde(default)]
    pub cut_pod: Option<String>,
    /// Why it failed (with `state: failed`).
    #[serde(default)]
    pub failure: Option<FailureKind>,
    /// Verify-only Jobs started because the first Job's pods were gone before their result
    /// was read (see `lifecycle`).
    #[serde(default)]
    pub reverify_attempts: u32,
    /// The class parameters it was created with (`None` in records of older drivers).
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, String>>,
    /// The S3 copy, when the class asks for one.
    #[serde(default)]
    pub export: Option<ExportRecord>,
}

/// Where a snapshot's S3 copy is, and (once ready) what was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    pub target: crate::export::Target,
    pub key: String,
    /// The Secret (in the snapshot's namespace) with the S3 keys: read again to delete the copy.
    pub secret: String,
    pub part_size: u64,
    /// Keep the copy when the snapshot is deleted.
    pub retain: bool,
    /// How the copy is stored (records of older drivers: as the file is).
    #[serde(default)]
    pub compression: crate::gzip::Compression,
    /// Bytes of the object in S3 (with gzip, compressed; `size` is the snapshot's).
    #[serde(default)]
    pub stored_size: Option<u64>,
    /// Hex SHA-256 of the snapshot file, equal to that of the copy (checked as `check` says;
    /// with gzip, of the copy decompressed).
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub parts: Option<u32>,
    /// How the copy was checked (`export::Check`; a string, so a record any version wrote parses).
    #[serde(default)]
    pub check: Option<String>,
}

/// A group snapshot: its name, volumes and member snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: String,
    pub name: String,
    /// The source volumes in the order the CO sent them.
    pub volume_ids: Vec<String>,
    /// One per volume, same order.
    pub snapshot_ids: Vec<String>,
    pub created: Time,
    /// Set once every member's record, PVC and Job exist. A group without it whose member
    /// is missing was interrupted while being created.
    #[serde(default)]
    pub complete: bool,
    /// The class parameters it was created with (`None` in records of older drivers).
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, String>>,
}

/// What the store needs to know about a record type.
pub trait Record: Serialize + DeserializeOwned + Clone {
    const KIND: &'static str;
    fn id(&self) -> &str;
    fn extra_labels(&self) -> Vec<(&'static str, String)>;
}

impl Record for SnapshotRecord {
    const KIND: &'static str = "snapshot";
    fn id(&self) -> &str {
        &self.id
    }
    fn extra_labels(&self) -> Vec<(&'static str, String)> {
        let mut l = vec![(LABEL_STATE, self.state.label().to_string())];
        if let Some(g) = &self.group_id {
            l.push((LABEL_GROUP, g.clone()));
        }
        l
    }
}

impl Record for GroupRecord {
    const KIND: &'static str = "group";
    fn id(&self) -> &str {
        &self.id
    }
    fn extra_labels(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// The ConfigMap-backed record store.
pub struct Store {
    kube: Arc<Kube>,
    namespace: String,
    driver: String,
}

impl Store {
    pub fn new(kube: Arc<Kube>, namespace: &str, driver: &str) -> Store {
        Store {
            kube,
            namespace: namespace.to_string(),
            driver: driver.to_string(),
        }
    }

    fn path(&self, id: Option<&str>) -> String {
        let name = id.map(ids::object_name);
        path::<ConfigMap>(&self.namespace, name.as_deref())
    }

    fn make_configmap<R: Record>(&self, record: &R, resource_version: Option<String>) -> Result<ConfigMap, Status> {
        let json = serde_json::to_string(record).map_err(|e| Status::internal(format!("encoding record: {e}")))?;
        let mut labels = BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), "etcdsnap".to_string()),
            (LABEL_DRIVER.to_string(), self.driver.clone()),
            (LABEL_KIND.to_string(), R::KIND.to_string()),
        ]);
        for (k, v) in record.extra_labels() {
            labels.insert(k.to_string(), v);
        }
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(ids::object_name(record.id())),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                resource_version,
                ..Default::default()
            },
            data: Some(BTreeMap::from([(KEY.to_string(), json)])),
            ..Default::default()
        })
    }

    fn read_configmap<R: Record>(&self, cm: &ConfigMap) -> Result<(R, String), Status> {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let json = cm
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .ok_or_else(|| Status::internal(format!("ConfigMap {}/{name} has no {KEY}", self.namespace)))?;
        let record = serde_json::from_str(json)
            .map_err(|e| Status::internal(format!("ConfigMap {}/{name}: unreadable {KEY}: {e}", self.namespace)))?;
        Ok((record, cm.metadata.resource_version.clone().unwrap_or_default()))
    }

    /// The record with this id, if any.
    pub fn get<R: Record>(&self, id: &str) -> Result<Option<R>, Status> {
        let cm: Option<ConfigMap> = self.kube.get(&self.path(Some(id)))?;
        cm.map(|cm| self.read_configmap(&cm).map(|(r, _)| r)).transpose()
    }

    /// Creates the record; `Ok(false)` when one with this id already exists.
    pub fn create<R: Record>(&self, record: &R) -> Result<bool, Status> {
        let cm = self.make_configmap(record, None)?;
        match self.kube.create(&self.path(None), &cm) {
            Ok(_) => Ok(true),
            Err(e) if e.is_already_exists() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Read-modify-write: `change` edits the current record and says whether it changed.
    /// Retries on a resourceVersion conflict. `Ok(None)` when there is no record.
    pub fn update<R: Record>(&self, id: &str, mut change: impl FnMut(&mut R) -> bool) -> Result<Option<R>, Status> {
        let path = self.path(Some(id));
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(cm) = self.kube.get::<ConfigMap>(&path)? else {
                return Ok(None);
            };
            let (mut record, rv) = self.read_configmap::<R>(&cm)?;
            if !change(&mut record) {
                return Ok(Some(record));
            }
            let updated = self.make_configmap(&record, Some(rv))?;
            match self.kube.replace(&path, &updated) {
                Ok(_) => return Ok(Some(record)),
                Err(e) if e.is_conflict() => continue,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Status::new(
            crate::status::Code::Aborted,
            format!("record {id}: {UPDATE_ATTEMPTS} concurrent updates in a row; retry"),
        ))
    }

    /// Deletes the record; succeeds when it is already gone.
    pub fn delete(&self, id: &str) -> Result<(), Status> {
        self.kube.delete(&self.path(Some(id)))?;
        Ok(())
    }

    /// Every snapshot record of this driver in one of `states`.
    pub fn snapshots_in(&self, states: &[State]) -> Result<Vec<SnapshotRecord>, Status> {
        let names: Vec<&str> = states.iter().map(|s| s.label()).collect();
        let selector = format!(
            "{LABEL_DRIVER}={},{LABEL_KIND}=snapshot,{LABEL_STATE} in ({})",
            self.driver,
            names.join(",")
        );
        let cms: Vec<ConfigMap> = self.kube.list(&self.path(None), &selector)?;
        cms.iter()
            .map(|cm| self.read_configmap::<SnapshotRecord>(cm).map(|(r, _)| r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SnapshotRecord {
        SnapshotRecord {
            id: "s-0123456789abcdef0123456789abcdef".into(),
            name: String::new(),
            group_id: Some("g-0123456789abcdef0123456789abcdef".into()),
            volume_id: "etcd/main".into(),
            cluster: "etcd/main".into(),
            namespace: "etcd".into(),
            object: "etcdsnap-s-0123456789abcdef0123456789abcdef".into(),
            member_url: "https://127.0.0.1:2379".into(),
            tls_secret: "main-client-tls".into(),
            auth_secret: None,
            created: Time {
                seconds: 1_800_000_000,
                nanos: 5,
            },
            state: State::Running,
            reason: None,
            size_bytes: 0,
            pvc_bytes: 1 << 30,
            revision: None,
            hash: None,
            total_keys: None,
            finished: None,
            cut: None,
            cut_pod: None,
            failure: None,
            reverify_attempts: 0,
            parameters: None,
            export: None,
        }
    }

    #[test]
    fn records_round_trip_through_configmaps() {
        let kube = Arc::new(
            Kube::from_kubeconfig_value(
                &serde_json::json!({"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}],
                    "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}]}),
                std::time::Duration::from_secs(1),
            )
            .unwrap(),
        );
        let store = Store::new(kube, "kube-system", "etcdsnap.lifeboat.dev");
        let rec = record();
        let mut cm = store.make_configmap(&rec, Some("42".into())).unwrap();
        let labels = cm.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_STATE], "running");
        assert_eq!(labels[LABEL_KIND], "snapshot");
        assert_eq!(labels[LABEL_GROUP], "g-0123456789abcdef0123456789abcdef");
        assert!(labels.values().all(|v| v.len() <= 63));
        assert_eq!(
            cm.metadata.name.as_deref(),
            Some("etcdsnap-s-0123456789abcdef0123456789abcdef")
        );
        cm.metadata.resource_version = Some("43".into());
        let (back, rv): (SnapshotRecord, String) = store.read_configmap(&cm).unwrap();
        assert_eq!(back, rec);
        assert_eq!(rv, "43");
        // A record is far below the ConfigMap limit even with a maximal reason.
        let mut big = rec;
        big.reason = Some("x".repeat(MAX_REASON));
        let size = serde_json::to_string(&store.make_configmap(&big, None).unwrap())
            .unwrap()
            .len();
        assert!(size < 4096, "{size}");
        // The store reports an unreachable API server as UNAVAILABLE, with the path.
        let err = store
            .get::<SnapshotRecord>("s-0123456789abcdef0123456789abcdef")
            .unwrap_err();
        assert_eq!(err.code, crate::status::Code::Unavailable);
        assert!(
            err.message
                .contains("/api/v1/namespaces/kube-system/configmaps/etcdsnap-s-"),
            "{}",
            err.message
        );
    }
}
