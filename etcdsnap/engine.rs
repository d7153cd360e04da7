//! Snapshot orchestration: the one place that creates, follows and removes snapshots,
//! shared by Controller (one volume) and GroupController (a group of volumes).
//!
//! Creating a snapshot of a volume:
//! 1. resolve the handle PVC to its etcd cluster (`discovery`) and check the cluster's
//!    health (`etcd`): quorum, leader, no alarm, or FAILED_PRECONDITION;
//! 2. write the snapshot record (state `pending`) *before* creating anything, so a crash at
//!    any later point leaves a record that names what to clean up;
//! 3. create the PVC, then the Job owned by the PVC; the record becomes `running`;
//! 4. return at once with ready_to_use=false: the csi-snapshotter sidecar times an RPC out
//!    after a minute and retries, so Create never waits for the Job.
//!
//! A running snapshot is followed by [`Engine::refresh`], called by every RPC that looks at
//! it and by the monitor thread ([`Engine::monitor`]) every `POLL_INTERVAL`, which also
//! resumes after a restart from the records' state labels. A completed Job's verify log
//! gives the file's size, revision and hash (`ready`). A failed or timed-out Job is
//! recorded with its reason and its PVC and Job are removed (`failed`); the next Create
//! with the same name reports that reason once, clears the record, and the retry after
//! that starts afresh.
//!
//! One operation per id at a time inside this process ([`KeyLocks`]); across processes
//! and restarts the records' resourceVersion keeps updates from being lost.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use lifeboat::metrics::Registry;
use lifeboat::shutdown::Shutdown;

use crate::config::EngineConfig;
use crate::discovery::{self, Target};
use crate::etcd::{EtcdClient, Healthy};
use crate::ids;
use crate::job::{self, JobState, Plan};
use crate::kube::{batch_path, core_path, Kube};
use crate::metadata::{GroupRecord, SnapshotRecord, State, Store, Time, MAX_REASON};
use crate::status::{truncate, Code, Status};

pub const SNAPSHOTS_TOTAL: &str = "etcdsnap_snapshots_total";
pub const SNAPSHOT_SECONDS: &str = "etcdsnap_snapshot_duration_seconds";
pub const SNAPSHOT_BYTES: &str = "etcdsnap_snapshot_size_bytes";
pub const ETCD_MEMBERS: &str = "etcdsnap_etcd_members";
pub const ETCD_MEMBERS_HEALTHY: &str = "etcdsnap_etcd_members_healthy";
pub const ETCD_HEALTHY: &str = "etcdsnap_etcd_healthy";
pub const ETCD_CHECKS: &str = "etcdsnap_etcd_health_checks_total";

/// A record stuck in `pending` this long was interrupted (the driver died mid-create).
const PENDING_GRACE: Duration = Duration::from_secs(120);
/// How long after JOB_TIMEOUT the driver itself gives up on a Job that shows no result.
const JOB_GRACE: Duration = Duration::from_secs(30);
/// How long an RPC waits for another operation on the same id.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Declares the engine's metrics.
pub fn register_metrics(m: &Registry) {
    m.counter(SNAPSHOTS_TOTAL, "Snapshots finished, by result (ready or failed).");
    m.histogram(
        SNAPSHOT_SECONDS,
        "Seconds from Create to a verified (or failed) snapshot, by result.",
        &[
            1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ],
    );
    m.histogram(
        SNAPSHOT_BYTES,
        "Size of verified snapshot files in bytes.",
        &[
            1048576.0,
            4194304.0,
            16777216.0,
            67108864.0,
            268435456.0,
            1073741824.0,
            4294967296.0,
            8589934592.0,
        ],
    );
    m.gauge(
        ETCD_MEMBERS,
        "Voting members of the etcd cluster at its last health check.",
    );
    m.gauge(ETCD_MEMBERS_HEALTHY, "Healthy voting members at the last health check.");
    m.gauge(ETCD_HEALTHY, "1 when the last health check allowed a snapshot, else 0.");
    m.counter(
        ETCD_CHECKS,
        "etcd health checks, by cluster and result (ok or refused).",
    );
}

/// A snapshot as the CSI services report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotView {
    pub id: String,
    pub volume_id: String,
    pub group_id: Option<String>,
    pub size_bytes: i64,
    pub created: Time,
    pub ready: bool,
}

/// A group snapshot as the CSI services report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub id: String,
    pub snapshots: Vec<SnapshotView>,
    pub created: Time,
    pub ready: bool,
}

fn view(rec: &SnapshotRecord) -> SnapshotView {
    SnapshotView {
        id: rec.id.clone(),
        volume_id: rec.volume_id.clone(),
        group_id: rec.group_id.clone(),
        size_bytes: if rec.state == State::Ready {
            rec.size_bytes as i64
        } else {
            0
        },
        created: rec.created,
        ready: rec.state == State::Ready,
    }
}

/// Per-id mutual exclusion inside this process.
#[derive(Default)]
pub struct KeyLocks {
    held: Mutex<HashSet<String>>,
    freed: Condvar,
}

pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.key);
        self.locks.freed.notify_all();
    }
}

impl KeyLocks {
    /// Waits up to `wait` for `key`; ABORTED ("operation pending") after that, as CSI asks.
    pub fn lock(&self, key: &str, wait: Duration) -> Result<KeyGuard<'_>, Status> {
        let deadline = std::time::Instant::now() + wait;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.contains(key) {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(Status::new(
                    Code::Aborted,
                    format!("an operation on {key} is already in progress; retry"),
                ));
            }
            held = self
                .freed
                .wait_timeout(held, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        held.insert(key.to_string());
        Ok(KeyGuard {
            locks: self,
            key: key.to_string(),
        })
    }

    pub fn try_lock(&self, key: &str) -> Option<KeyGuard<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains(key) {
            return None;
        }
        held.insert(key.to_string());
        Some(KeyGuard {
            locks: self,
            key: key.to_string(),
        })
    }
}

pub struct Engine {
    kube: Arc<Kube>,
    store: Store,
    cfg: EngineConfig,
    metrics: Registry,
    locks: KeyLocks,
}

fn same_volumes(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

impl Engine {
    pub fn new(kube: Arc<Kube>, cfg: EngineConfig, metrics: Registry) -> Engine {
        let store = Store::new(Arc::clone(&kube), &cfg.metadata_namespace, &cfg.driver_name);
        Engine {
            kube,
            store,
            cfg,
            metrics,
            locks: KeyLocks::default(),
        }
    }

    // ---- health ----

    /// Resolves the volume and checks its cluster, recording the health metrics.
    fn healthy_target(&self, volume_id: &str) -> Result<(Target, Healthy), Status> {
        let target = discovery::resolve(&self.kube, &self.cfg.cluster_label, volume_id)?;
        let cluster = target.cluster_id();
        let client = EtcdClient::new(&cluster, &target.tls, self.cfg.etcd_timeout)?;
        let result = client.check(&target.endpoints);
        let labels = [("cluster", cluster.as_str())];
        match &result {
            Ok(h) => {
                self.metrics.set(ETCD_MEMBERS, &labels, h.voting_members as f64);
                self.metrics
                    .set(ETCD_MEMBERS_HEALTHY, &labels, h.healthy_members as f64);
                self.metrics.set(ETCD_HEALTHY, &labels, 1.0);
                self.metrics
                    .inc(ETCD_CHECKS, &[("cluster", &cluster), ("result", "ok")]);
                log::info!(cluster = cluster.as_str(), healthy = h.healthy_members, members = h.voting_members,
                    member = h.member_name.as_str(), db_size = h.db_size; "etcd cluster healthy");
            }
            Err(e) => {
                self.metrics.set(ETCD_HEALTHY, &labels, 0.0);
                self.metrics
                    .inc(ETCD_CHECKS, &[("cluster", &cluster), ("result", "refused")]);
                log::warn!(cluster = cluster.as_str(), error = e.message.as_str(); "etcd cluster refused for a snapshot");
            }
        }
        result.map(|h| (target, h))
    }

    // ---- single snapshots (Controller) ----

    /// CreateSnapshot: idempotent by `name`.
    pub fn create_snapshot(&self, name: &str, volume_id: &str) -> Result<SnapshotView, Status> {
        let sid = ids::snapshot_id(&self.cfg.driver_name, name);
        let _guard = self.locks.lock(&sid, LOCK_WAIT)?;
        if let Some(rec) = self.store.get::<SnapshotRecord>(&sid)? {
            if rec.volume_id != volume_id {
                return Err(Status::new(
                    Code::AlreadyExists,
                    format!(
                        "snapshot {name:?} already exists for source volume {:?}, not {volume_id:?}",
                        rec.volume_id
                    ),
                ));
            }
            let rec = self.refresh_locked(rec)?;
            if rec.state == State::Failed {
                return Err(self.report_failure_and_clear(&rec));
            }
            return Ok(view(&rec));
        }
        let (target, health) = self.healthy_target(volume_id)?;
        let rec = self.start(&sid, None, name, volume_id, &target, &health, Time::now())?;
        Ok(view(&rec))
    }

    /// DeleteSnapshot: removes Job, PVC and record; succeeds when there is nothing.
    pub fn delete_snapshot(&self, sid: &str) -> Result<(), Status> {
        if !ids::is_our_id(sid, "s-") {
            return Ok(());
        }
        let _guard = self.locks.lock(sid, LOCK_WAIT)?;
        self.delete_snapshot_locked(sid)
    }

    fn delete_snapshot_locked(&self, sid: &str) -> Result<(), Status> {
        if let Some(rec) = self.store.get::<SnapshotRecord>(sid)? {
            self.remove_objects(&rec.namespace, &rec.object)?;
            self.store.delete(sid)?;
            log::info!(snapshot = sid, volume = rec.volume_id.as_str(); "snapshot deleted");
        }
        Ok(())
    }

    // ---- group snapshots (GroupController) ----

    /// CreateVolumeGroupSnapshot: idempotent by `name`; ALREADY_EXISTS for other volumes.
    pub fn create_group(&self, name: &str, volume_ids: &[String]) -> Result<GroupView, Status> {
        let gid = ids::group_id(&self.cfg.driver_name, name);
        let _guard = self.locks.lock(&gid, LOCK_WAIT)?;
        if let Some(group) = self.store.get::<GroupRecord>(&gid)? {
            return self.existing_group(name, group, volume_ids);
        }
        // Resolve and check every cluster before creating anything, so a refusal leaves nothing.
        let mut checked = Vec::new();
        for v in volume_ids {
            checked.push(self.healthy_target(v)?);
        }
        let created = Time::now();
        let group = GroupRecord {
            id: gid.clone(),
            name: name.to_string(),
            volume_ids: volume_ids.to_vec(),
            snapshot_ids: volume_ids.iter().map(|v| ids::member_snapshot_id(&gid, v)).collect(),
            created,
            complete: false,
        };
        if !self.store.create(&group)? {
            // Another driver instance created it meanwhile.
            let group = self.store.get::<GroupRecord>(&gid)?.ok_or_else(|| {
                Status::new(
                    Code::Aborted,
                    format!("group snapshot {gid} changed concurrently; retry"),
                )
            })?;
            return self.existing_group(name, group, volume_ids);
        }
        let mut started = Vec::new();
        for ((target, health), (sid, v)) in checked.iter().zip(group.snapshot_ids.iter().zip(volume_ids)) {
            let started_one = {
                let _g = self.locks.lock(sid, LOCK_WAIT)?;
                self.start(sid, Some(&gid), "", v, target, health, created)
            };
            match started_one {
                Ok(rec) => started.push(view(&rec)),
                Err(e) => {
                    // Undo the whole group: a group snapshot is all or nothing.
                    for sid in &group.snapshot_ids {
                        let _g = self.locks.lock(sid, LOCK_WAIT)?;
                        if let Err(e) = self.delete_snapshot_locked(sid) {
                            log::warn!(snapshot = sid.as_str(), error = e.message.as_str(); "cleanup after a failed group create");
                        }
                    }
                    if let Err(e) = self.store.delete(&gid) {
                        log::warn!(group = gid.as_str(), error = e.message.as_str(); "cleanup after a failed group create");
                    }
                    return Err(e);
                }
            }
        }
        self.store.update::<GroupRecord>(&gid, |g| {
            let changed = !g.complete;
            g.complete = true;
            changed
        })?;
        log::info!(group = gid.as_str(), volumes = volume_ids.len(); "group snapshot started");
        Ok(GroupView {
            id: gid,
            ready: started.iter().all(|s| s.ready),
            snapshots: started,
            created,
        })
    }

    fn existing_group(&self, name: &str, group: GroupRecord, volume_ids: &[String]) -> Result<GroupView, Status> {
        if !same_volumes(&group.volume_ids, volume_ids) {
            return Err(Status::new(
                Code::AlreadyExists,
                format!(
                    "group snapshot {name:?} already exists with source volumes {:?}, not {volume_ids:?}",
                    group.volume_ids
                ),
            ));
        }
        match self.group_view(&group) {
            Err(failed) if failed.code != Code::Unavailable && failed.code != Code::Aborted => {
                // Report the failure once and clear it: the CO's next retry starts afresh.
                for sid in &group.snapshot_ids {
                    let _g = self.locks.lock(sid, LOCK_WAIT)?;
                    self.delete_snapshot_locked(sid)?;
                }
                self.store.delete(&group.id)?;
                Err(failed)
            }
            other => other,
        }
    }

    /// GetVolumeGroupSnapshot: NOT_FOUND for an unknown id.
    pub fn get_group(&self, gid: &str) -> Result<GroupView, Status> {
        let not_found = || Status::not_found(format!("group snapshot {gid} not found"));
        if !ids::is_our_id(gid, "g-") {
            return Err(not_found());
        }
        let _guard = self.locks.lock(gid, LOCK_WAIT)?;
        let group = self.store.get::<GroupRecord>(gid)?.ok_or_else(not_found)?;
        self.group_view(&group)
    }

    /// DeleteVolumeGroupSnapshot: removes every member and the group; succeeds when absent.
    /// `snapshot_ids` may name members too (only those of this group are touched).
    pub fn delete_group(&self, gid: &str, snapshot_ids: &[String]) -> Result<(), Status> {
        if !ids::is_our_id(gid, "g-") {
            return Ok(());
        }
        let _guard = self.locks.lock(gid, LOCK_WAIT)?;
        let mut members: Vec<String> = Vec::new();
        if let Some(group) = self.store.get::<GroupRecord>(gid)? {
            members.extend(group.snapshot_ids);
        }
        for sid in snapshot_ids {
            if !members.contains(sid) && ids::is_our_id(sid, "s-") {
                if let Some(rec) = self.store.get::<SnapshotRecord>(sid)? {
                    if rec.group_id.as_deref() == Some(gid) {
                        members.push(sid.clone());
                    }
                }
            }
        }
        for sid in &members {
            let _g = self.locks.lock(sid, LOCK_WAIT)?;
            self.delete_snapshot_locked(sid)?;
        }
        self.store.delete(gid)?;
        log::info!(group = gid, snapshots = members.len(); "group snapshot deleted");
        Ok(())
    }

    /// The group with every member refreshed; an error when a member failed or vanished.
    fn group_view(&self, group: &GroupRecord) -> Result<GroupView, Status> {
        let mut snapshots = Vec::new();
        for (sid, volume) in group.snapshot_ids.iter().zip(&group.volume_ids) {
            let rec = match self.store.get::<SnapshotRecord>(sid)? {
                Some(rec) => {
                    let _g = self.locks.lock(sid, LOCK_WAIT)?;
                    self.refresh_locked(rec)?
                }
                None if group.complete => {
                    // Deleted on its own (DeleteSnapshot): the group reports what is left.
                    log::warn!(group = group.id.as_str(), snapshot = sid.as_str(), volume = volume.as_str();
                        "a member of the group snapshot was deleted");
                    continue;
                }
                None => {
                    return Err(Status::internal(format!(
                        "group snapshot {}: creating the snapshot of volume {volume} was interrupted",
                        group.id
                    )))
                }
            };
            if rec.state == State::Failed {
                return Err(failure_status(&rec).context(format!("group snapshot {}", group.id)));
            }
            snapshots.push(view(&rec));
        }
        Ok(GroupView {
            id: group.id.clone(),
            ready: snapshots.iter().all(|s| s.ready),
            snapshots,
            created: group.created,
        })
    }

    fn report_failure_and_clear(&self, rec: &SnapshotRecord) -> Status {
        let status = failure_status(rec);
        if let Err(e) = self.delete_snapshot_locked(&rec.id) {
            log::warn!(snapshot = rec.id.as_str(), error = e.message.as_str(); "clearing a failed snapshot");
        }
        status
    }

    // ---- the data path ----

    /// Writes the record, then the PVC and the Job; undoes everything on failure.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        sid: &str,
        gid: Option<&str>,
        name: &str,
        volume_id: &str,
        target: &Target,
        health: &Healthy,
        created: Time,
    ) -> Result<SnapshotRecord, Status> {
        let object = ids::object_name(sid);
        let ns = target.volume.namespace.clone();
        let size = job::pvc_size(health.db_size, self.cfg.pvc_min_bytes, self.cfg.pvc_headroom_percent);
        let record = SnapshotRecord {
            id: sid.to_string(),
            name: truncate(name, ids::MAX_NAME_BYTES),
            group_id: gid.map(str::to_string),
            volume_id: volume_id.to_string(),
            cluster: target.cluster_id(),
            namespace: ns.clone(),
            object: object.clone(),
            member_url: health.member_url.clone(),
            tls_secret: target.tls_secret.clone(),
            created,
            state: State::Pending,
            reason: None,
            size_bytes: 0,
            pvc_bytes: size,
            revision: None,
            hash: None,
            total_keys: None,
            finished: None,
        };
        if !self.store.create(&record)? {
            // Left over from an earlier attempt (another instance, or a crash): follow it.
            let rec = self
                .store
                .get::<SnapshotRecord>(sid)?
                .ok_or_else(|| Status::new(Code::Aborted, format!("snapshot {sid} changed concurrently; retry")))?;
            return self.refresh_locked(rec);
        }
        let plan = Plan {
            snapshot_id: sid.to_string(),
            group_id: gid.map(str::to_string),
            namespace: ns.clone(),
            name: object.clone(),
            member_url: health.member_url.clone(),
            tls_secret: target.tls_secret.clone(),
            size_bytes: size,
        };
        let made = (|| -> Result<SnapshotRecord, Status> {
            let pvc_path = core_path(&ns, "persistentvolumeclaims", None);
            let pvc = match self.kube.create(&pvc_path, &job::pvc(&plan, &self.cfg)) {
                Ok(p) => p,
                Err(e) if e.is_already_exists() => self
                    .kube
                    .get::<PersistentVolumeClaim>(&core_path(&ns, "persistentvolumeclaims", Some(&object)))?
                    .ok_or_else(|| Status::new(Code::Aborted, format!("PVC {ns}/{object} vanished; retry")))?,
                Err(e) => return Err(e.into()),
            };
            let uid = pvc
                .metadata
                .uid
                .clone()
                .ok_or_else(|| Status::internal(format!("PVC {ns}/{object} has no uid")))?;
            match self
                .kube
                .create(&batch_path(&ns, "jobs", None), &job::job(&plan, &self.cfg, &uid))
            {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e.into()),
            }
            self.store
                .update::<SnapshotRecord>(sid, |r| {
                    if r.state == State::Pending {
                        r.state = State::Running;
                        true
                    } else {
                        false
                    }
                })?
                .ok_or_else(|| Status::new(Code::Aborted, format!("snapshot {sid} was deleted while starting")))
        })();
        match made {
            Ok(rec) => {
                log::info!(snapshot = sid, volume = volume_id, cluster = record.cluster.as_str(),
                    member = health.member_url.as_str(), job = format!("{ns}/{object}").as_str(), pvc_bytes = size;
                    "snapshot job started");
                Ok(rec)
            }
            Err(e) => {
                if let Err(c) = self.remove_objects(&ns, &object) {
                    log::warn!(snapshot = sid, error = c.message.as_str(); "cleanup after a failed start");
                }
                if let Err(c) = self.store.delete(sid) {
                    log::warn!(snapshot = sid, error = c.message.as_str(); "cleanup after a failed start");
                }
                Err(e.context(format!("starting the snapshot of volume {volume_id}")))
            }
        }
    }

    /// Deletes the Job (its pods go with it) and the PVC; absent objects are fine.
    fn remove_objects(&self, ns: &str, object: &str) -> Result<(), Status> {
        self.kube.delete(&batch_path(ns, "jobs", Some(object)))?;
        self.kube
            .delete(&core_path(ns, "persistentvolumeclaims", Some(object)))?;
        Ok(())
    }

    /// Brings a record up to date with its Job. The caller holds the record's lock.
    fn refresh_locked(&self, rec: SnapshotRecord) -> Result<SnapshotRecord, Status> {
        match rec.state {
            State::Ready | State::Failed => Ok(rec),
            State::Pending => {
                let age = Time::now().as_secs_f64() - rec.created.as_secs_f64();
                if age > PENDING_GRACE.as_secs_f64() {
                    self.fail(&rec, "creating the snapshot's PVC and Job was interrupted".to_string())
                } else {
                    Ok(rec)
                }
            }
            State::Running => {
                let job_path = batch_path(&rec.namespace, "jobs", Some(&rec.object));
                let Some(job) = self.kube.get::<Job>(&job_path)? else {
                    return self.fail(
                        &rec,
                        format!("Job {}/{} disappeared before finishing", rec.namespace, rec.object),
                    );
                };
                match job::job_state(&job) {
                    JobState::Running => {
                        let age = Time::now().as_secs_f64() - rec.created.as_secs_f64();
                        // The Job's own deadline fires first; this catches a Job that never ran
                        // (a Job controller that is down, a suspended Job).
                        let limit = (self.cfg.job_timeout + JOB_GRACE).as_secs_f64();
                        if age > limit {
                            self.fail(
                                &rec,
                                format!(
                                    "timed out: Job {}/{} showed no result {:.0}s after it was created (JOB_TIMEOUT {:.0}s)",
                                    rec.namespace,
                                    rec.object,
                                    age,
                                    self.cfg.job_timeout.as_secs_f64()
                                ),
                            )
                        } else {
                            Ok(rec)
                        }
                    }
                    JobState::Succeeded => match self.read_result(&rec) {
                        Ok(st) => self.succeed(&rec, st),
                        Err(why) => self.fail(&rec, why),
                    },
                    JobState::Failed(reason) => {
                        let pods = self.job_pods(&rec).unwrap_or_default();
                        let mut why = format!("Job {}/{} failed: {reason}", rec.namespace, rec.object);
                        for f in job::container_failures(&pods) {
                            why.push_str("; ");
                            why.push_str(&f);
                        }
                        self.fail(&rec, why)
                    }
                }
            }
        }
    }

    fn job_pods(&self, rec: &SnapshotRecord) -> Result<Vec<Pod>, Status> {
        let selector = format!("batch.kubernetes.io/job-name={}", rec.object);
        Ok(self.kube.list(&core_path(&rec.namespace, "pods", None), &selector)?)
    }

    /// The verify container's verdict on the file, from its log (or its termination message).
    fn read_result(&self, rec: &SnapshotRecord) -> Result<job::FileStatus, String> {
        let pods = self
            .job_pods(rec)
            .map_err(|e| format!("listing the Job's pods: {}", e.message))?;
        let succeeded: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
            .collect();
        let Some(pod) = succeeded.last() else {
            return Err(format!(
                "Job {}/{} completed but none of its pods succeeded",
                rec.namespace, rec.object
            ));
        };
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let log_path = format!("{}/log", core_path(&rec.namespace, "pods", Some(&pod_name)));
        let log = self
            .kube
            .get_text(&log_path, &[("container", job::VERIFY_CONTAINER)])
            .map_err(|e| format!("reading the verify log: {}", e.message))?;
        if let Some(text) = log {
            return job::parse_file_status(&text);
        }
        let message = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == job::VERIFY_CONTAINER))
            .and_then(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
            .unwrap_or_default();
        job::parse_file_status(&message)
    }

    fn succeed(&self, rec: &SnapshotRecord, st: job::FileStatus) -> Result<SnapshotRecord, Status> {
        let (updated, took) = self.finish(
            rec,
            "ready",
            |state| state == State::Running,
            |r| {
                r.state = State::Ready;
                r.size_bytes = st.total_size;
                r.revision = Some(st.revision);
                r.hash = Some(st.hash);
                r.total_keys = Some(st.total_key);
            },
        )?;
        if let Some(secs) = took {
            self.metrics.observe(SNAPSHOT_BYTES, &[], st.total_size as f64);
            log::info!(snapshot = rec.id.as_str(), volume = rec.volume_id.as_str(), size = st.total_size,
                revision = st.revision, hash = st.hash, keys = st.total_key, seconds = secs; "snapshot ready");
        }
        Ok(updated)
    }

    /// Records the failure, then removes the Job and PVC.
    fn fail(&self, rec: &SnapshotRecord, reason: String) -> Result<SnapshotRecord, Status> {
        let reason = truncate(&reason, MAX_REASON);
        let (updated, took) = self.finish(
            rec,
            "failed",
            |state| !matches!(state, State::Ready | State::Failed),
            |r| {
                r.state = State::Failed;
                r.reason = Some(reason.clone());
            },
        )?;
        if took.is_some() {
            log::warn!(snapshot = rec.id.as_str(), volume = rec.volume_id.as_str(), reason = reason.as_str(); "snapshot failed");
        }
        if updated.state == State::Failed {
            self.remove_objects(&rec.namespace, &rec.object)?;
        }
        Ok(updated)
    }

    /// Moves a record to a final state, if `may_finish` allows it from the state it is in:
    /// `apply` fills in the outcome and the finish time is stamped. Returns the stored record
    /// and, when this call made the move, the snapshot's duration in seconds, which is also
    /// counted in the metrics under `result`.
    fn finish(
        &self,
        rec: &SnapshotRecord,
        result: &str,
        may_finish: impl Fn(State) -> bool,
        apply: impl Fn(&mut SnapshotRecord),
    ) -> Result<(SnapshotRecord, Option<f64>), Status> {
        let mut transitioned = false;
        let now = Time::now();
        let updated = self
            .store
            .update::<SnapshotRecord>(&rec.id, |r| {
                if !may_finish(r.state) {
                    return false;
                }
                apply(r);
                r.finished = Some(now);
                transitioned = true;
                true
            })?
            .ok_or_else(|| Status::not_found(format!("snapshot {} was deleted", rec.id)))?;
        if !transitioned {
            return Ok((updated, None));
        }
        let secs = now.as_secs_f64() - rec.created.as_secs_f64();
        self.metrics.inc(SNAPSHOTS_TOTAL, &[("result", result)]);
        self.metrics.observe(SNAPSHOT_SECONDS, &[("result", result)], secs);
        Ok((updated, Some(secs)))
    }

    // ---- the monitor ----

    /// Follows unfinished snapshots every `poll_interval` until shutdown (also right after
    /// start, which resumes the snapshots a previous run left behind).
    pub fn monitor(&self, shutdown: &Shutdown) {
        loop {
            match self.store.snapshots_in(&[State::Pending, State::Running]) {
                Ok(records) => {
                    for rec in records {
                        if shutdown.requested().is_some() {
                            return;
                        }
                        let Some(_g) = self.locks.try_lock(&rec.id) else {
                            continue;
                        };
                        // Re-read under the lock: an RPC may have moved it on.
                        let fresh = match self.store.get::<SnapshotRecord>(&rec.id) {
                            Ok(Some(r)) => r,
                            Ok(None) => continue,
                            Err(e) => {
                                log::warn!(snapshot = rec.id.as_str(), error = e.message.as_str(); "monitor: reading a record");
                                continue;
                            }
                        };
                        if let Err(e) = self.refresh_locked(fresh) {
                            log::warn!(snapshot = rec.id.as_str(), error = e.message.as_str(); "monitor: following a snapshot");
                        }
                    }
                }
                Err(e) => log::warn!(error = e.message.as_str(); "monitor: listing unfinished snapshots"),
            }
            if shutdown.wait_timeout(self.cfg.poll_interval).is_some() {
                return;
            }
        }
    }
}

/// The status an RPC returns for a failed snapshot.
fn failure_status(rec: &SnapshotRecord) -> Status {
    let reason = rec.reason.clone().unwrap_or_else(|| "failed".to_string());
    let code = if reason.starts_with("timed out") || reason.contains(" failed: DeadlineExceeded") {
        Code::DeadlineExceeded
    } else {
        Code::Internal
    };
    Status::new(code, format!("snapshot of volume {} failed: {reason}", rec.volume_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_sets_compare_without_order_or_duplicates() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(same_volumes(&s(&["a/x", "a/y"]), &s(&["a/y", "a/x"])));
        assert!(same_volumes(&s(&["a/x"]), &s(&["a/x", "a/x"])));
        assert!(!same_volumes(&s(&["a/x"]), &s(&["a/x", "a/y"])));
    }

    #[test]
    fn key_locks_exclude_and_time_out() {
        let locks = Arc::new(KeyLocks::default());
        let g = locks.lock("g-1", Duration::from_secs(1)).unwrap();
        assert!(locks.try_lock("g-1").is_none());
        assert!(locks.try_lock("g-2").is_some());
        let err = locks.lock("g-1", Duration::from_millis(50)).err().unwrap();
        assert_eq!(err.code, Code::Aborted);
        let l2 = Arc::clone(&locks);
        let waiter = std::thread::spawn(move || l2.lock("g-1", Duration::from_secs(10)).is_ok());
        std::thread::sleep(Duration::from_millis(50));
        drop(g);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn failures_map_to_codes() {
        let mut rec: SnapshotRecord = serde_json::from_value(serde_json::json!({
            "id": "s-1", "volume_id": "etcd/main", "cluster": "etcd/main", "namespace": "etcd", "object": "o",
            "member_url": "https://x", "tls_secret": "t", "created": {"seconds": 1, "nanos": 0}, "state": "failed",
            "reason": "Job etcd/o failed: DeadlineExceeded: Job was active longer than specified deadline"
        }))
        .unwrap();
        assert_eq!(failure_status(&rec).code, Code::DeadlineExceeded);
        rec.reason = Some("Job etcd/o failed: BackoffLimitExceeded".into());
        let st = failure_status(&rec);
        assert_eq!(st.code, Code::Internal);
        assert!(
            st.message.contains("volume etcd/main failed: Job etcd/o failed"),
            "{}",
            st.message
        );
        assert!(!view(&rec).ready && view(&rec).size_bytes == 0);
    }
}
