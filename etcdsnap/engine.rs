//! The CSI snapshot operations, shared by Controller (one volume) and GroupController (a
//! group of volumes; the group's own operations are in `groups`). Each one validates, takes
//! the id's lock ([`KeyLocks`]), acts, answers.
//!
//! Creating a snapshot of a volume:
//! 1. resolve the handle PVC to its etcd cluster (`discovery`) and check the cluster's
//!    health (`etcd`): quorum, leader, no alarm, or FAILED_PRECONDITION;
//! 2. write the snapshot record (state `pending`) *before* creating anything, so a crash at
//!    any later point leaves a record that names what to clean up;
//! 3. create the PVC, then the Job owned by the PVC; the record becomes `running`;
//! 4. wait, at most `CREATE_WAIT` (below the csi-snapshotter's `--timeout`), until etcd
//!    has cut the snapshot (the Job's save step is done): the spec lets Create answer OK
//!    only once the snapshot is cut, with `creation_time` the time of the cut. Until then
//!    the answer is ABORTED ("operation pending"), which the sidecar treats as not final
//!    and retries. After the cut it answers OK with ready_to_use=false until the file is
//!    verified; the sidecar polls Create (single snapshots) and ListSnapshots (members of
//!    a group) until ready.
//!
//! How a record follows its Job is the state machine in `lifecycle`, driven by every RPC
//! that looks at a snapshot and by the monitor thread every `POLL_INTERVAL`. A failed
//! snapshot is reported once by the next Create with the same name, which clears it; the
//! retry after that starts afresh.
//!
//! Longer than the ~500-line guide (about 600 lines before its tests): every single-snapshot
//! RPC with its validate, lock, act and answer steps; the group RPCs are in `groups`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use lifeboat::metrics::Registry;

use crate::config::EngineConfig;
use crate::discovery::{self, Target};
use crate::etcd::{EtcdClient, Healthy};
use crate::ids;
use crate::job::{self, Plan};
use crate::kube::{path, Kube};
use crate::lifecycle::failure_status;
use crate::locks::KeyLocks;
use crate::metadata::{ExportRecord, GroupRecord, SnapshotRecord, State, Store, Time};
use crate::metrics;
use crate::params::{Member, Params};
use crate::status::{truncate, Code, Status};

/// How long an RPC waits for another operation on the same id.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting Create looks again, at most.
pub(crate) const CUT_POLL: Duration = Duration::from_millis(500);
/// How often it looks in its first [`CUT_POLL_FAST_FOR`]: most etcd snapshots are cut within
/// a second or two, and a look at a 500 ms pace would add up to 500 ms to each (a look is a
/// GET of the Job and a list of its Pods: 20 more in those 2 s than at the slow pace).
pub(crate) const CUT_POLL_FAST: Duration = Duration::from_millis(100);
pub(crate) const CUT_POLL_FAST_FOR: Duration = Duration::from_secs(2);

/// How long a Create that has waited `waited` for the cut sleeps before it looks again:
/// [`CUT_POLL_FAST`] at first, then [`CUT_POLL`], never longer than `POLL_INTERVAL` or what is
/// left of `CREATE_WAIT`.
pub(crate) fn cut_poll(cfg: &EngineConfig, waited: Duration) -> Duration {
    let pace = if waited < CUT_POLL_FAST_FOR {
        CUT_POLL_FAST
    } else {
        CUT_POLL
    };
    pace.min(cfg.poll_interval).min(cfg.create_wait.saturating_sub(waited))
}
/// Entries of one ListSnapshots answer at most, whatever max_entries asks.
pub const MAX_LIST_ENTRIES: usize = 500;

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

pub(crate) fn view(rec: &SnapshotRecord) -> SnapshotView {
    SnapshotView {
        id: rec.id.clone(),
        volume_id: rec.volume_id.clone(),
        group_id: rec.group_id.clone(),
        size_bytes: if rec.state == State::Ready {
            rec.size_bytes as i64
        } else {
            0
        },
        // Until the cut the record's creation is the best there is; no RPC answers OK then.
        created: rec.cut.unwrap_or(rec.created),
        ready: rec.state == State::Ready,
    }
}

/// Whether etcd has cut this snapshot (a verified one necessarily has).
pub(crate) fn is_cut(rec: &SnapshotRecord) -> bool {
    rec.cut.is_some() || rec.state == State::Ready
}

/// ABORTED while the snapshot is not cut yet: the sidecar retries the same Create.
pub(crate) fn not_cut_yet(what: &str, rec: &SnapshotRecord, waited: Duration) -> Status {
    Status::new(
        Code::Aborted,
        format!(
            "{what}: etcd has not cut the snapshot of volume {} yet (Job {}/{} has not finished its save step after {:.0}s); retry",
            rec.volume_id,
            rec.namespace,
            rec.object,
            waited.as_secs_f64()
        ),
    )
}

/// One page of `items` for ListSnapshots: at most `max_entries` (0: [`MAX_LIST_ENTRIES`])
/// from the offset in `token` (empty: the start), and the token of the next page (empty:
/// none). A token that is not an offset within the list is ABORTED, as the spec asks.
pub fn paginate<T>(mut items: Vec<T>, max_entries: i32, token: &str) -> Result<(Vec<T>, String), Status> {
    if max_entries < 0 {
        return Err(Status::invalid(format!(
            "ListSnapshots: max_entries must not be negative, got {max_entries}"
        )));
    }
    let bad_token = || {
        Status::new(
            Code::Aborted,
            format!(
                "ListSnapshots: starting_token {:?} is not one this driver handed out (or the list has shrunk since)",
                truncate(token, 64)
            ),
        )
    };
    let start: usize = if token.is_empty() {
        0
    } else {
        token.parse().map_err(|_| bad_token())?
    };
    if start > items.len() || (start == items.len() && start > 0) {
        return Err(bad_token());
    }
    let page = match max_entries {
        0 => MAX_LIST_ENTRIES,
        n => (n as usize).min(MAX_LIST_ENTRIES),
    };
    let end = (start + page).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    items.truncate(end);
    Ok((items.split_off(start), next))
}

/// ALREADY_EXISTS when a snapshot or group of this name was created with other parameters.
/// Records of older drivers did not keep them and match any.
pub(crate) fn check_same_parameters(
    what: &str,
    stored: Option<&std::collections::BTreeMap<String, String>>,
    params: &Params,
) -> Result<(), Status> {
    match stored {
        Some(stored) if *stored != params.given => Err(Status::new(
            Code::AlreadyExists,
            format!(
                "{what} already exists with parameters {stored:?}, not {:?}",
                params.given
            ),
        )),
        _ => Ok(()),
    }
}

/// FAILED_PRECONDITION when `snapshot_ids` (optional) are not exactly the group's snapshots.
pub(crate) fn check_snapshot_ids(group: &GroupRecord, snapshot_ids: &[String]) -> Result<(), Status> {
    if snapshot_ids.is_empty() || same_volumes(&group.snapshot_ids, snapshot_ids) {
        return Ok(());
    }
    Err(Status::precondition(format!(
        "snapshot_ids {snapshot_ids:?} are not the snapshots of group snapshot {} ({:?})",
        group.id, group.snapshot_ids
    )))
}

pub struct Engine {
    pub(crate) kube: Arc<Kube>,
    pub(crate) store: Store,
    pub(crate) cfg: EngineConfig,
    pub(crate) metrics: Registry,
    pub(crate) locks: KeyLocks,
}

pub(crate) fn same_volumes(a: &[String], b: &[String]) -> bool {
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
    pub(crate) fn healthy_target(&self, volume_id: &str) -> Result<(Target, Healthy), Status> {
        let target = discovery::resolve(&self.kube, &self.cfg.cluster_label, volume_id)?;
        let cluster = target.cluster_id();
        let mut client = EtcdClient::new(&cluster, &target.tls, self.cfg.etcd_timeout)?;
        let result = match &target.auth {
            Some((secret, auth)) => client
                .authenticate(&target.endpoints, auth, secret)
                .and_then(|()| client.check(&target.endpoints)),
            // Without a user, an etcd with auth on would fail the Job's etcdctl ("user name is
            // empty"): refuse before anything is made, saying what is missing. Asked of the
            // member found healthy, so an unreachable cluster costs no extra timeout.
            None => client.check(&target.endpoints).and_then(|h| {
                if client.auth_enabled(std::slice::from_ref(&h.member_url)) == Some(true) {
                    return Err(Status::precondition(format!(
                        "etcd cluster {cluster} has authentication enabled: name a basic-auth Secret (username, \
                         password; the user needs the root role to take snapshots) with the annotation {} on volume \
                         {volume_id}",
                        discovery::ANNOTATION_AUTH_SECRET
                    )));
                }
                Ok(h)
            }),
        };
        let labels = [cluster.as_str()];
        match &result {
            Ok(h) => {
                self.metrics
                    .set(&metrics::ETCD_MEMBERS, labels, h.voting_members as f64);
                self.metrics
                    .set(&metrics::ETCD_MEMBERS_HEALTHY, labels, h.healthy_members as f64);
                self.metrics.set(&metrics::ETCD_HEALTHY, labels, 1.0);
                self.metrics.inc(&metrics::ETCD_CHECKS, [&cluster, "ok"]);
                log::info!(cluster = cluster.as_str(), healthy = h.healthy_members, members = h.voting_members,
                    member = h.member_name.as_str(), db_size = h.db_size; "etcd cluster healthy");
            }
            Err(e) => {
                self.metrics.set(&metrics::ETCD_HEALTHY, labels, 0.0);
                self.metrics.inc(&metrics::ETCD_CHECKS, [&cluster, "refused"]);
                log::warn!(cluster = cluster.as_str(), error = e.message.as_str(); "etcd cluster refused for a snapshot");
            }
        }
        result.map(|h| (target, h))
    }

    // ---- volumes ----

    /// NOT_FOUND unless `volume_id` names a handle PVC (one with the cluster label).
    pub fn volume_exists(&self, volume_id: &str) -> Result<(), Status> {
        discovery::handle_exists(&self.kube, &self.cfg.cluster_label, volume_id)
    }

    // ---- single snapshots (Controller) ----

    /// CreateSnapshot: idempotent by `name`; OK only once etcd has cut the snapshot.
    pub fn create_snapshot(&self, name: &str, volume_id: &str, params: &Params) -> Result<SnapshotView, Status> {
        let sid = ids::snapshot_id(&self.cfg.driver_name, name);
        {
            let _guard = self.locks.lock(&sid, LOCK_WAIT)?;
            match self.store.get::<SnapshotRecord>(&sid)? {
                Some(rec) => {
                    if rec.volume_id != volume_id {
                        return Err(Status::new(
                            Code::AlreadyExists,
                            format!(
                                "snapshot {name:?} already exists for source volume {:?}, not {volume_id:?}",
                                rec.volume_id
                            ),
                        ));
                    }
                    check_same_parameters(&format!("snapshot {name:?}"), rec.parameters.as_ref(), params)?;
                }
                None => {
                    let (target, health) = self.healthy_target(volume_id)?;
                    self.start(&sid, None, name, volume_id, &target, &health, Time::now(), params)?;
                }
            }
        }
        let what = format!("CreateSnapshot {name:?}");
        let rec = self.await_cut(&[sid], &what)?.remove(0);
        if rec.state == State::Failed {
            let _guard = self.locks.lock(&rec.id, LOCK_WAIT)?;
            return Err(self.report_failure_and_clear(&rec));
        }
        Ok(view(&rec))
    }

    /// Refreshes the records of `sids` until every one is cut or one failed, for at most
    /// CREATE_WAIT; ABORTED after that. Each record is refreshed under its own lock, which
    /// is not held while waiting, so other RPCs and the monitor go on meanwhile.
    fn await_cut(&self, sids: &[String], what: &str) -> Result<Vec<SnapshotRecord>, Status> {
        let started = Instant::now();
        loop {
            let mut recs = Vec::with_capacity(sids.len());
            for sid in sids {
                let _g = self.locks.lock(sid, LOCK_WAIT)?;
                let rec = self.store.get::<SnapshotRecord>(sid)?.ok_or_else(|| {
                    Status::new(
                        Code::Aborted,
                        format!("{what}: snapshot {sid} was deleted meanwhile; retry"),
                    )
                })?;
                recs.push(self.refresh_locked(rec)?);
            }
            if recs.iter().any(|r| r.state == State::Failed) || recs.iter().all(is_cut) {
                return Ok(recs);
            }
            let waited = started.elapsed();
            if waited >= self.cfg.create_wait {
                let pending = recs.iter().find(|r| !is_cut(r)).unwrap_or(&recs[0]);
                return Err(not_cut_yet(what, pending, waited));
            }
            std::thread::sleep(cut_poll(&self.cfg, waited));
        }
    }

    /// DeleteSnapshot: removes Job, PVC and record; succeeds when there is nothing.
    pub fn delete_snapshot(&self, sid: &str) -> Result<(), Status> {
        if !ids::is_our_id(sid, "s-") {
            return Ok(());
        }
        let _guard = self.locks.lock(sid, LOCK_WAIT)?;
        if let Some(rec) = self.store.get::<SnapshotRecord>(sid)? {
            if let Some(gid) = &rec.group_id {
                if self.store.get::<GroupRecord>(gid)?.is_some() {
                    return Err(Status::precondition(format!(
                        "snapshot {sid} is a member of group snapshot {gid}: it is deleted with the group \
                         (DeleteVolumeGroupSnapshot), not alone"
                    )));
                }
            }
        }
        self.delete_snapshot_locked(sid)
    }

    pub(crate) fn delete_snapshot_locked(&self, sid: &str) -> Result<(), Status> {
        if let Some(rec) = self.store.get::<SnapshotRecord>(sid)? {
            // The copy first: the record is what names it.
            if let Some(e) = rec.export.as_ref().filter(|e| !e.retain) {
                crate::copies::delete_copy(&self.kube, &rec.namespace, e)
                    .map_err(|s| s.context(format!("deleting snapshot {sid}")))?;
            }
            self.remove_objects(&rec.namespace, &rec.object)?;
            self.store.delete(sid)?;
            log::info!(snapshot = sid, volume = rec.volume_id.as_str(); "snapshot deleted");
        }
        Ok(())
    }

    /// The record of a snapshot that exists for the CO: cut and not failed. Refreshed
    /// when its lock is free (a busy lock means another RPC is refreshing it right now).
    fn listed(&self, sid: &str) -> Result<Option<SnapshotRecord>, Status> {
        let Some(rec) = self.store.get::<SnapshotRecord>(sid)? else {
            return Ok(None);
        };
        let rec = match self.locks.try_lock(sid) {
            Some(_g) => self.refresh_locked(rec)?,
            None => rec,
        };
        Ok((is_cut(&rec) && rec.state != State::Failed).then_some(rec))
    }

    /// GetSnapshot: NOT_FOUND for an unknown id, and for a snapshot not cut yet or failed.
    pub fn get_snapshot(&self, sid: &str) -> Result<SnapshotView, Status> {
        let not_found = || Status::not_found(format!("snapshot {sid} not found"));
        if !ids::is_our_id(sid, "s-") {
            return Err(not_found());
        }
        self.listed(sid)?.map(|r| view(&r)).ok_or_else(not_found)
    }

    /// ListSnapshots: the snapshots that exist (cut, not failed), by id, optionally only
    /// `snapshot_id` or only those of `volume_id`; pages of at most `max_entries` (0: the
    /// driver's maximum), `token` being the offset the previous page handed out.
    pub fn list_snapshots(
        &self,
        snapshot_id: &str,
        volume_id: &str,
        max_entries: i32,
        token: &str,
    ) -> Result<(Vec<SnapshotView>, String), Status> {
        let mut all: Vec<SnapshotRecord> = if !snapshot_id.is_empty() {
            if ids::is_our_id(snapshot_id, "s-") {
                self.listed(snapshot_id)?.into_iter().collect()
            } else {
                Vec::new()
            }
        } else {
            let mut found = Vec::new();
            for rec in self.store.snapshots_in(&[State::Running, State::Ready])? {
                if is_cut(&rec) {
                    found.push(rec);
                }
            }
            found
        };
        if !volume_id.is_empty() {
            all.retain(|r| r.volume_id == volume_id);
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let (page, next) = paginate(all, max_entries, token)?;
        Ok((page.iter().map(view).collect(), next))
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
    pub(crate) fn start(
        &self,
        sid: &str,
        gid: Option<&str>,
        name: &str,
        volume_id: &str,
        target: &Target,
        health: &Healthy,
        created: Time,
        params: &Params,
    ) -> Result<SnapshotRecord, Status> {
        let object = ids::object_name(sid);
        let member_url = match params.member {
            Member::Leader => health.member_url.clone(),
            Member::Follower => health.follower_urls.first().cloned().ok_or_else(|| {
                Status::precondition(format!(
                    "etcd cluster {}: the class asks for member: follower, but no follower is healthy",
                    target.cluster_id()
                ))
            })?,
        };
        let ns = target.volume.namespace.clone();
        let export = match &params.export {
            Some(e) => {
                crate::copies::check_secret(&self.kube, &ns, &e.secret)?;
                Some(ExportRecord {
                    target: e.target.clone(),
                    key: format!("{}{}/{sid}.db{}", e.prefix, target.cluster_id(), e.compression.suffix()),
                    secret: e.secret.clone(),
                    part_size: e.part_size,
                    retain: e.retain,
                    compression: e.compression,
                    stored_size: None,
                    sha256: None,
                    size: None,
                    parts: None,
                    check: None,
                })
            }
            None => None,
        };
        let size = job::pvc_size(health.db_size, self.cfg.pvc_min_bytes, self.cfg.pvc_headroom_percent);
        let record = SnapshotRecord {
            id: sid.to_string(),
            name: truncate(name, ids::MAX_NAME_BYTES),
            group_id: gid.map(str::to_string),
            volume_id: volume_id.to_string(),
            cluster: target.cluster_id(),
            namespace: ns.clone(),
            object: object.clone(),
            member_url: member_url.clone(),
            tls_secret: target.tls_secret.clone(),
            auth_secret: target.auth.as_ref().map(|(s, _)| s.clone()),
            created,
            state: State::Pending,
            reason: None,
            size_bytes: 0,
            pvc_bytes: size,
            revision: None,
            hash: None,
            total_keys: None,
            finished: None,
            cut: None,
            cut_pod: None,
            failure: None,
            reverify_attempts: 0,
            parameters: Some(params.given.clone()),
            export: export.clone(),
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
            member_url: member_url.clone(),
            tls_secret: target.tls_secret.clone(),
            auth_secret: target.auth.as_ref().map(|(s, _)| s.clone()),
            size_bytes: size,
            storage_class: params.storage_class.clone(),
            trial_restore: params.trial_restore,
            export: export.as_ref().map(ExportRecord::job_export),
        };
        let made = (|| -> Result<SnapshotRecord, Status> {
            let pvc_path = path::<PersistentVolumeClaim>(&ns, None);
            let pvc = match self.kube.create(&pvc_path, &job::pvc(&plan, &self.cfg)) {
                Ok(p) => p,
                Err(e) if e.is_already_exists() => self
                    .kube
                    .get::<PersistentVolumeClaim>(&path::<PersistentVolumeClaim>(&ns, Some(&object)))?
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
                .create(&path::<Job>(&ns, None), &job::job(&plan, &self.cfg, &uid))
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
                    member = member_url.as_str(), job = format!("{ns}/{object}").as_str(), pvc_bytes = size;
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
    fn list_pages() {
        let items: Vec<u32> = (0..7).collect();
        // (max_entries, token) -> (page, next token) or the error code.
        type Want = Result<(Vec<u32>, &'static str), Code>;
        let table: [(i32, &str, Want); 9] = [
            (0, "", Ok(((0..7).collect(), ""))),
            (3, "", Ok((vec![0, 1, 2], "3"))),
            (3, "3", Ok((vec![3, 4, 5], "6"))),
            (3, "6", Ok((vec![6], ""))),
            (7, "", Ok(((0..7).collect(), ""))),
            (3, "7", Err(Code::Aborted)),
            (3, "8", Err(Code::Aborted)),
            (3, "x", Err(Code::Aborted)),
            (-1, "", Err(Code::InvalidArgument)),
        ];
        for (max, token, want) in table {
            let got = paginate(items.clone(), max, token);
            match want {
                Ok((page, next)) => assert_eq!(got.unwrap(), (page, next.to_string()), "{max} {token:?}"),
                Err(code) => assert_eq!(got.unwrap_err().code, code, "{max} {token:?}"),
            }
        }
        assert_eq!(paginate(Vec::<u32>::new(), 0, "").unwrap(), (vec![], String::new()));
        let many: Vec<usize> = (0..MAX_LIST_ENTRIES + 1).collect();
        let (page, next) = paginate(many, 0, "").unwrap();
        assert_eq!((page.len(), next), (MAX_LIST_ENTRIES, MAX_LIST_ENTRIES.to_string()));
    }
}
