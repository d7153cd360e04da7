//! The snapshot state machine: how one snapshot record follows its Job to `ready` or
//! `failed`. The caller holds the record's lock ([`crate::locks::KeyLocks`]).
//!
//! ```text
//! pending ──PVC+Job created──▶ running ──save step done──▶ running + cut ──verified──▶ ready
//!    │                            │                              │
//!    └─interrupted (120 s)        └─Job failed / timed out ──────┴──────────────────▶ failed
//! ```
//!
//! * **cut**: once the Job's `save` container (etcdctl) has exited 0, etcd has taken the
//!   snapshot. Its time is read once from etcdctl's log ("opened snapshot stream", when the
//!   server opens the read transaction the file holds) and stored in the record with the
//!   pod that made it: this is the snapshot's `creation_time`, and Create answers OK only
//!   from then on.
//! * **ready**: the `verify` container's `etcdutl snapshot status` result (size, revision,
//!   hash, keys) is read from its log once and stored in the record, where it survives the
//!   Job's pods. A failed read (the API server answering 5xx after the client's own retries)
//!   leaves the record `running` for the next refresh: a verified file is never thrown away
//!   for a read error. When the pods are gone before their result was read (garbage
//!   collection, a node drain), a verify-only Job checks the file on the PVC again.
//! * **failed**: the [`FailureKind`] is stored with the reason, and decides the gRPC code
//!   ([`failure_status`]); the Job(s) and PVC are removed.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use lifeboat::shutdown::Shutdown;

use crate::engine::Engine;
use crate::job::{self, JobState, Plan, LABEL_SNAPSHOT};
use crate::kube::path;
use crate::metadata::{FailureKind, SnapshotRecord, State, Time, MAX_REASON};
use crate::metrics;
use crate::status::{truncate, Code, Status};

/// A record stuck in `pending` this long was interrupted (the driver died mid-create).
const PENDING_GRACE: Duration = Duration::from_secs(120);
/// How long after JOB_TIMEOUT the driver itself gives up on a Job that shows no result.
const JOB_GRACE: Duration = Duration::from_secs(30);
/// Verify-only Jobs started for one snapshot at most.
const MAX_REVERIFY: u32 = 3;

/// The status an RPC returns for a failed snapshot.
pub fn failure_status(rec: &SnapshotRecord) -> Status {
    let reason = rec.reason.clone().unwrap_or_else(|| "failed".to_string());
    let code = match rec.failure {
        Some(FailureKind::TimedOut) => Code::DeadlineExceeded,
        Some(FailureKind::JobFailed | FailureKind::Lost | FailureKind::Unverified) | None => Code::Internal,
    };
    Status::new(code, format!("snapshot of volume {} failed: {reason}", rec.volume_id))
}

/// The Job's start time, as a last resort for the cut when its pods are gone.
fn job_start(job: &Job) -> Option<Time> {
    let t = job.status.as_ref()?.start_time.as_ref()?;
    Some(Time {
        seconds: t.0.as_second(),
        nanos: t.0.subsec_nanosecond(),
    })
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

impl Engine {
    /// Brings a record up to date with its Job. The caller holds the record's lock.
    pub(crate) fn refresh_locked(&self, rec: SnapshotRecord) -> Result<SnapshotRecord, Status> {
        match rec.state {
            State::Ready | State::Failed => Ok(rec),
            State::Pending => {
                let age = Time::now().as_secs_f64() - rec.created.as_secs_f64();
                if age > PENDING_GRACE.as_secs_f64() {
                    self.fail(
                        &rec,
                        FailureKind::Lost,
                        "creating the snapshot's PVC and Job was interrupted".to_string(),
                    )
                } else {
                    Ok(rec)
                }
            }
            State::Running => self.follow(rec),
        }
    }

    fn follow(&self, rec: SnapshotRecord) -> Result<SnapshotRecord, Status> {
        let job_path = path::<Job>(&rec.namespace, Some(&rec.object));
        let Some(job) = self.kube.get::<Job>(&job_path)? else {
            return self.fail(
                &rec,
                FailureKind::Lost,
                format!("Job {}/{} disappeared before finishing", rec.namespace, rec.object),
            );
        };
        match job::job_state(&job) {
            JobState::Running => {
                let rec = self.note_cut(rec, None)?;
                let age = Time::now().as_secs_f64() - rec.created.as_secs_f64();
                // The Job's own deadline fires first; this catches a Job that never ran
                // (a Job controller that is down, a suspended Job).
                let limit = (self.cfg.job_timeout + JOB_GRACE).as_secs_f64();
                if age > limit {
                    self.fail(
                        &rec,
                        FailureKind::TimedOut,
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
            JobState::Succeeded => {
                let rec = self.note_cut(rec, job_start(&job))?;
                self.collect_result(rec)
            }
            JobState::Failed { reason, text } => {
                let pods = self.snapshot_pods(&rec).unwrap_or_default();
                let mut why = format!("Job {}/{} failed: {text}", rec.namespace, rec.object);
                for f in job::container_failures(&pods) {
                    why.push_str("; ");
                    why.push_str(&f);
                }
                let kind = if reason == "DeadlineExceeded" {
                    FailureKind::TimedOut
                } else {
                    FailureKind::JobFailed
                };
                self.fail(&rec, kind, why)
            }
        }
    }

    /// Every pod of the snapshot's Jobs (the first one and any verify-only one).
    fn snapshot_pods(&self, rec: &SnapshotRecord) -> Result<Vec<Pod>, Status> {
        let selector = format!("{LABEL_SNAPSHOT}={}", rec.id);
        Ok(self.kube.list(&path::<Pod>(&rec.namespace, None), &selector)?)
    }

    /// Records the cut once the save step has exited 0. `fallback` is the time to record
    /// when no pod shows it any more (the Job's start, which is before the cut).
    fn note_cut(&self, rec: SnapshotRecord, fallback: Option<Time>) -> Result<SnapshotRecord, Status> {
        if rec.cut.is_some() {
            return Ok(rec);
        }
        let pods = match self.snapshot_pods(&rec) {
            Ok(p) => p,
            Err(e) => {
                log::warn!(snapshot = rec.id.as_str(), error = e.message.as_str(); "listing the Job's pods; will retry");
                return Ok(rec);
            }
        };
        let saved = pods.iter().find(|p| job::exited_ok(p, job::SAVE_CONTAINER));
        let (cut, pod) = match saved {
            Some(pod) => {
                let name = pod_name(pod).to_string();
                let log_path = format!("{}/log", path::<Pod>(&rec.namespace, Some(&name)));
                let from_log = match self.kube.get_text(&log_path, &[("container", job::SAVE_CONTAINER)]) {
                    Ok(Some(text)) => job::cut_time_from_log(&text),
                    Ok(None) => None,
                    Err(e) => {
                        log::warn!(snapshot = rec.id.as_str(), error = e.message.as_str(); "reading the save log; will retry");
                        return Ok(rec);
                    }
                };
                (
                    from_log.or_else(|| job::started_at(pod, job::SAVE_CONTAINER)),
                    Some(name),
                )
            }
            None if pods.is_empty() => (fallback, None),
            None => (None, None),
        };
        let Some(cut) = cut else {
            return Ok(rec);
        };
        let updated = self
            .store
            .update::<SnapshotRecord>(&rec.id, |r| {
                if r.cut.is_some() {
                    return false;
                }
                r.cut = Some(cut);
                r.cut_pod = pod.clone();
                true
            })?
            .ok_or_else(|| Status::not_found(format!("snapshot {} was deleted", rec.id)))?;
        log::info!(snapshot = rec.id.as_str(), volume = rec.volume_id.as_str(), cut = cut.as_secs_f64(),
            pod = pod.as_deref().unwrap_or(""); "etcd snapshot cut");
        Ok(updated)
    }

    /// The verify result of a succeeded Job, stored in the record.
    fn collect_result(&self, rec: SnapshotRecord) -> Result<SnapshotRecord, Status> {
        let pods = match self.snapshot_pods(&rec) {
            Ok(p) => p,
            Err(e) => {
                log::warn!(snapshot = rec.id.as_str(), error = e.message.as_str(); "listing the Job's pods; will retry");
                return Ok(rec);
            }
        };
        if let Some(cut_pod) = rec.cut_pod.as_deref() {
            if let Some(again) = pods
                .iter()
                .find(|p| pod_name(p) != cut_pod && job::exited_ok(p, job::SAVE_CONTAINER))
            {
                return self.fail(
                    &rec,
                    FailureKind::Unverified,
                    format!(
                        "pod {} saved the snapshot again after pod {cut_pod} had cut it (its verify step failed), \
                         so the file is not the point in time reported",
                        pod_name(again)
                    ),
                );
            }
        }
        // With an export, a pod counts once its export step (the last) has succeeded.
        let last_step = if rec.export.is_some() {
            job::EXPORT_CONTAINER
        } else {
            job::VERIFY_CONTAINER
        };
        for pod in pods.iter().rev().filter(|p| job::exited_ok(p, last_step)) {
            let name = pod_name(pod).to_string();
            let st = match self.container_log(&rec, &name, job::VERIFY_CONTAINER) {
                Ok(Some(text)) => match job::parse_file_status(&text) {
                    Ok(st) => st,
                    Err(why) => return self.fail(&rec, FailureKind::Unverified, why),
                },
                Ok(None) => continue,
                Err(()) => return Ok(rec),
            };
            let exported = match &rec.export {
                None => None,
                Some(e) => match self.container_log(&rec, &name, job::EXPORT_CONTAINER) {
                    Ok(Some(text)) => match crate::export::parse_result(&text) {
                        Ok(x) if x.key == e.key && x.compression == e.compression => Some(x),
                        Ok(x) => {
                            let why = format!(
                                "the export reports key {:?} ({}), the record {:?} ({})",
                                x.key,
                                x.compression.as_str(),
                                e.key,
                                e.compression.as_str()
                            );
                            return self.fail(&rec, FailureKind::Unverified, why);
                        }
                        Err(why) => return self.fail(&rec, FailureKind::Unverified, why),
                    },
                    Ok(None) => continue,
                    Err(()) => return Ok(rec),
                },
            };
            return self.succeed(&rec, st, exported);
        }
        self.reverify(rec)
    }

    /// The log of `container` in pod `pod`: `Err` (logged, to retry later) on an API error.
    fn container_log(&self, rec: &SnapshotRecord, pod: &str, container: &str) -> Result<Option<String>, ()> {
        let log_path = format!("{}/log", path::<Pod>(&rec.namespace, Some(pod)));
        self.kube.get_text(&log_path, &[("container", container)]).map_err(|e| {
            log::warn!(snapshot = rec.id.as_str(), pod = pod, container = container, error = e.message.as_str();
                "reading the {container} log; will retry");
        })
    }

    /// The Job succeeded but no pod shows its result any more: verify the file on the PVC
    /// again with a verify-only Job (at most [`MAX_REVERIFY`] of them).
    fn reverify(&self, rec: SnapshotRecord) -> Result<SnapshotRecord, Status> {
        let name = job::verify_job_name(&rec.object);
        let verify_path = path::<Job>(&rec.namespace, Some(&name));
        match self.kube.get::<Job>(&verify_path)? {
            Some(vjob) => match job::job_state(&vjob) {
                JobState::Running => Ok(rec),
                // Its pods are gone too: remove it, the next refresh starts another.
                JobState::Succeeded => {
                    self.kube.delete(&verify_path)?;
                    Ok(rec)
                }
                JobState::Failed { text, .. } => {
                    let pods = self.snapshot_pods(&rec).unwrap_or_default();
                    let mut why = format!("verifying the snapshot file again (Job {}/{name}) failed: {text}", rec.namespace);
                    for f in job::container_failures(&pods) {
                        why.push_str("; ");
                        why.push_str(&f);
                    }
                    self.fail(&rec, FailureKind::Unverified, why)
                }
            },
            None if rec.reverify_attempts >= MAX_REVERIFY => self.fail(
                &rec,
                FailureKind::Lost,
                format!(
                    "the pods of Job {}/{} were removed before their result was read, and {MAX_REVERIFY} verify Jobs did not report either",
                    rec.namespace, rec.object
                ),
            ),
            None => {
                let pvc_path = path::<PersistentVolumeClaim>(&rec.namespace, Some(&rec.object));
                let Some(pvc) = self.kube.get::<PersistentVolumeClaim>(&pvc_path)? else {
                    return self.fail(
                        &rec,
                        FailureKind::Lost,
                        format!("PVC {}/{} disappeared before the snapshot was verified", rec.namespace, rec.object),
                    );
                };
                let uid = pvc.metadata.uid.clone().unwrap_or_default();
                let plan = Plan {
                    snapshot_id: rec.id.clone(),
                    group_id: rec.group_id.clone(),
                    namespace: rec.namespace.clone(),
                    name: rec.object.clone(),
                    member_url: rec.member_url.clone(),
                    tls_secret: rec.tls_secret.clone(),
                    auth_secret: rec.auth_secret.clone(),
                    size_bytes: rec.pvc_bytes,
                    storage_class: None,
                    trial_restore: false,
                    export: rec.export.as_ref().map(|e| e.job_export()),
                };
                match self
                    .kube
                    .create(&path::<Job>(&rec.namespace, None), &job::verify_job(&plan, &self.cfg, &uid))
                {
                    Ok(_) => {}
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => return Err(e.into()),
                }
                log::warn!(snapshot = rec.id.as_str(), job = format!("{}/{name}", rec.namespace).as_str();
                    "the Job's pods are gone before their result was read; verifying the file again");
                let updated = self.store.update::<SnapshotRecord>(&rec.id, |r| {
                    r.reverify_attempts += 1;
                    true
                })?;
                Ok(updated.unwrap_or(rec))
            }
        }
    }

    fn succeed(
        &self,
        rec: &SnapshotRecord,
        st: job::FileStatus,
        exported: Option<crate::export::Exported>,
    ) -> Result<SnapshotRecord, Status> {
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
                if let (Some(e), Some(x)) = (r.export.as_mut(), exported.as_ref()) {
                    e.sha256 = Some(x.sha256.clone());
                    e.size = Some(x.size);
                    e.stored_size = x.stored_size;
                    e.parts = Some(x.parts);
                    e.check = Some(x.check.as_str().to_string());
                }
            },
        )?;
        if let Some(secs) = took {
            self.metrics.observe(&metrics::SNAPSHOT_BYTES, [], st.total_size as f64);
            log::info!(snapshot = rec.id.as_str(), volume = rec.volume_id.as_str(), size = st.total_size,
                revision = st.revision, hash = st.hash, keys = st.total_key, seconds = secs; "snapshot ready");
        }
        Ok(updated)
    }

    /// Records the failure, then removes the Job(s) and PVC.
    pub(crate) fn fail(
        &self,
        rec: &SnapshotRecord,
        kind: FailureKind,
        reason: String,
    ) -> Result<SnapshotRecord, Status> {
        let reason = truncate(&reason, MAX_REASON);
        let (updated, took) = self.finish(
            rec,
            "failed",
            |state| !matches!(state, State::Ready | State::Failed),
            |r| {
                r.state = State::Failed;
                r.failure = Some(kind);
                r.reason = Some(reason.clone());
            },
        )?;
        if took.is_some() {
            log::warn!(snapshot = rec.id.as_str(), volume = rec.volume_id.as_str(), reason = reason.as_str(); "snapshot failed");
        }
        if updated.state == State::Failed {
            // A copy of a failed snapshot is not a verified one (retained or not): best effort,
            // since the export removes a copy it could not verify itself.
            if let (Some(e), true) = (&updated.export, took.is_some()) {
                if let Err(why) = crate::copies::delete_copy(&self.kube, &rec.namespace, e) {
                    log::warn!(snapshot = rec.id.as_str(), error = why.message.as_str(); "removing the S3 copy of a failed snapshot");
                }
            }
            self.remove_objects(&rec.namespace, &rec.object)?;
        }
        Ok(updated)
    }

    /// Deletes the Jobs (their pods go with them) and the PVC; absent objects are fine.
    pub(crate) fn remove_objects(&self, ns: &str, object: &str) -> Result<(), Status> {
        self.kube.delete(&path::<Job>(ns, Some(object)))?;
        self.kube
            .delete(&path::<Job>(ns, Some(&job::verify_job_name(object))))?;
        self.kube.delete(&path::<PersistentVolumeClaim>(ns, Some(object)))?;
        Ok(())
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
        self.metrics.inc(&metrics::SNAPSHOTS_TOTAL, [result]);
        self.metrics.observe(&metrics::SNAPSHOT_SECONDS, [result], secs);
        Ok((updated, Some(secs)))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: Option<FailureKind>, reason: &str) -> SnapshotRecord {
        let mut rec: SnapshotRecord = serde_json::from_value(serde_json::json!({
            "id": "s-1", "volume_id": "etcd/main", "cluster": "etcd/main", "namespace": "etcd", "object": "o",
            "member_url": "https://x", "tls_secret": "t", "created": {"seconds": 1, "nanos": 0}, "state": "failed",
        }))
        .unwrap();
        rec.failure = kind;
        rec.reason = Some(reason.to_string());
        rec
    }

    #[test]
    fn failures_map_to_codes_by_kind_not_by_text() {
        let table = [
            (
                Some(FailureKind::TimedOut),
                "Job etcd/o failed: DeadlineExceeded",
                Code::DeadlineExceeded,
            ),
            (Some(FailureKind::TimedOut), "anything at all", Code::DeadlineExceeded),
            (
                Some(FailureKind::JobFailed),
                "Job etcd/o failed: BackoffLimitExceeded",
                Code::Internal,
            ),
            // Text that looks like a timeout does not make one.
            (
                Some(FailureKind::JobFailed),
                "timed out: etcdctl said so",
                Code::Internal,
            ),
            (Some(FailureKind::Lost), "Job etcd/o disappeared", Code::Internal),
            (Some(FailureKind::Unverified), "no status", Code::Internal),
            (None, "timed out: a record from an older driver", Code::Internal),
        ];
        for (kind, reason, code) in table {
            let st = failure_status(&failed(kind, reason));
            assert_eq!(st.code, code, "{kind:?} {reason}");
            assert!(
                st.message.contains(&format!("volume etcd/main failed: {reason}")),
                "{}",
                st.message
            );
        }
    }

    // ---- the state machine against the in-memory API (fake_api) ----

    use crate::fake_api::FakeApi;
    use crate::metadata::Store;
    use serde_json::{json, Value};

    const SID: &str = "s-0123456789abcdef0123456789abcdef";
    const OBJ: &str = "etcdsnap-s-0123456789abcdef0123456789abcdef";
    const JOBS: &str = "/apis/batch/v1/namespaces/etcd/jobs";
    const PODS: &str = "/api/v1/namespaces/etcd/pods";
    const PVCS: &str = "/api/v1/namespaces/etcd/persistentvolumeclaims";
    const STATUS_LOG: &str = "{\"hash\":7,\"revision\":42,\"totalKey\":3,\"totalSize\":20480}";
    const SAVE_LOG: &str = "{\"ts\":1800000000.25,\"msg\":\"opened snapshot stream; downloading\"}\n";

    fn engine(api: &FakeApi) -> Engine {
        let cfg = crate::config::Config::from_env(lifeboat::env::Env::from_pairs([("JOB_TIMEOUT", "60s")]), None)
            .unwrap()
            .engine;
        let metrics = lifeboat::metrics::Registry::new();
        crate::metrics::declare(&metrics);
        Engine::new(api.kube(), cfg, metrics)
    }

    fn running(age_secs: i64) -> SnapshotRecord {
        let mut rec = failed(None, "");
        rec.id = SID.into();
        rec.object = OBJ.into();
        rec.state = State::Running;
        rec.reason = None;
        rec.created = Time {
            seconds: Time::now().seconds - age_secs,
            nanos: 0,
        };
        rec
    }

    fn job(conditions: Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": OBJ, "namespace": "etcd"},
               "status": {"startTime": "2027-01-15T08:00:00Z", "conditions": conditions}})
    }

    fn cond(type_: &str, reason: &str) -> Value {
        json!([{"type": type_, "status": "True", "reason": reason, "message": "m"}])
    }

    fn pod(name: &str, save: Option<i32>, verify: Option<i32>) -> Value {
        let st = |c: &str, code: Option<i32>| match code {
            Some(code) => json!({"name": c, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "startedAt": "2027-01-15T08:00:01Z"}}}),
            None => json!({"name": c, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}}),
        };
        let mut status = json!({"phase": if verify == Some(0) { "Succeeded" } else { "Running" }, "containerStatuses": [st("verify", verify)]});
        if save.is_some() {
            status["initContainerStatuses"] = json!([st("save", save)]);
        }
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "etcd", "labels": {LABEL_SNAPSHOT: SID}}, "status": status})
    }

    /// One row: what the API holds, and what the refresh must make of the record.
    struct Case {
        name: &'static str,
        record: SnapshotRecord,
        job: Option<Value>,
        pods: Vec<Value>,
        logs: Vec<(&'static str, &'static str)>,
        failing: Option<&'static str>,
        state: State,
        failure: Option<FailureKind>,
        cut: Option<f64>,
        revision: Option<i64>,
        verify_job: bool,
    }

    fn case(name: &'static str) -> Case {
        Case {
            name,
            record: running(5),
            job: Some(job(json!([]))),
            pods: Vec::new(),
            logs: Vec::new(),
            failing: None,
            state: State::Running,
            failure: None,
            cut: None,
            revision: None,
            verify_job: false,
        }
    }

    #[test]
    fn the_state_machine_follows_the_job() {
        let saved = |name| pod(name, Some(0), None);
        let verified = |name| pod(name, Some(0), Some(0));
        let mut cut_by_a = running(5);
        cut_by_a.cut = Some(Time {
            seconds: 1_800_000_000,
            nanos: 0,
        });
        cut_by_a.cut_pod = Some("p-a".into());
        let mut pending_old = running(600);
        pending_old.state = State::Pending;
        let table = vec![
            Case {
                ..case("job not started yet: running, no cut")
            },
            Case {
                pods: vec![saved("p-a")],
                logs: vec![("/api/v1/namespaces/etcd/pods/p-a/log", SAVE_LOG)],
                cut: Some(1_800_000_000.25),
                ..case("save step done: the cut from etcdctl's log")
            },
            Case {
                pods: vec![saved("p-a")],
                cut: Some(1_800_000_001.0),
                ..case("save step done, no log line: the container's start")
            },
            Case {
                job: Some(job(cond("Complete", "CompletionsReached"))),
                pods: vec![verified("p-a")],
                logs: vec![("/api/v1/namespaces/etcd/pods/p-a/log", STATUS_LOG)],
                state: State::Ready,
                revision: Some(42),
                cut: Some(1_800_000_001.0),
                ..case("job complete: ready with etcdutl's result")
            },
            Case {
                job: Some(job(cond("Complete", "CompletionsReached"))),
                pods: vec![verified("p-a")],
                failing: Some("/api/v1/namespaces/etcd/pods/p-a/log"),
                // The save log is unreadable too: the cut waits for the next refresh as well.
                ..case("result unreadable (500): still running, not failed")
            },
            Case {
                job: Some(job(cond("Complete", "CompletionsReached"))),
                verify_job: true,
                cut: Some(1_800_000_000.0),
                ..case("pods gone: a verify-only Job, cut from the Job's start")
            },
            Case {
                job: Some(job(cond("Complete", "CompletionsReached"))),
                pods: vec![verified("p-a")],
                logs: vec![("/api/v1/namespaces/etcd/pods/p-a/log", "Error: no status here")],
                state: State::Failed,
                failure: Some(FailureKind::Unverified),
                cut: Some(1_800_000_001.0),
                ..case("verify printed no status: failed, unverified")
            },
            Case {
                record: cut_by_a,
                job: Some(job(cond("Complete", "CompletionsReached"))),
                pods: vec![pod("p-a", Some(0), Some(1)), verified("p-b")],
                logs: vec![("/api/v1/namespaces/etcd/pods/p-b/log", STATUS_LOG)],
                state: State::Failed,
                failure: Some(FailureKind::Unverified),
                cut: Some(1_800_000_000.0),
                ..case("saved again after the cut: failed, not the point in time reported")
            },
            Case {
                job: Some(job(cond("Failed", "DeadlineExceeded"))),
                state: State::Failed,
                failure: Some(FailureKind::TimedOut),
                ..case("job past its deadline: timed out")
            },
            Case {
                job: Some(job(cond("Failed", "BackoffLimitExceeded"))),
                state: State::Failed,
                failure: Some(FailureKind::JobFailed),
                ..case("job failed: job failed")
            },
            Case {
                job: None,
                state: State::Failed,
                failure: Some(FailureKind::Lost),
                ..case("job vanished: lost")
            },
            Case {
                record: running(200),
                state: State::Failed,
                failure: Some(FailureKind::TimedOut),
                ..case("job never ran past JOB_TIMEOUT + grace: timed out")
            },
            Case {
                record: pending_old,
                job: None,
                state: State::Failed,
                failure: Some(FailureKind::Lost),
                ..case("pending for too long: lost")
            },
        ];
        for c in table {
            let api = FakeApi::start();
            let engine = engine(&api);
            let store = Store::new(api.kube(), "kube-system", "etcdsnap.lifeboat.dev");
            assert!(store.create(&c.record).unwrap(), "{}", c.name);
            api.put(
                &format!("{PVCS}/{OBJ}"),
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": OBJ, "namespace": "etcd"}}),
            );
            if let Some(j) = &c.job {
                api.put(&format!("{JOBS}/{OBJ}"), j.clone());
            }
            for p in &c.pods {
                let name = p["metadata"]["name"].as_str().unwrap();
                api.put(&format!("{PODS}/{name}"), p.clone());
            }
            for (path, text) in &c.logs {
                api.set_log(path, text);
            }
            if let Some(prefix) = c.failing {
                api.fail(prefix, 500);
            }
            let rec = store.get::<SnapshotRecord>(SID).unwrap().unwrap();
            let out = engine.refresh_locked(rec).unwrap();
            let stored = store.get::<SnapshotRecord>(SID).unwrap().unwrap();
            assert_eq!(out, stored, "{}: the answer is what is stored", c.name);
            assert_eq!(stored.state, c.state, "{}", c.name);
            assert_eq!(stored.failure, c.failure, "{}", c.name);
            assert_eq!(stored.revision, c.revision, "{}", c.name);
            let cut = stored.cut.map(Time::as_secs_f64);
            match (cut, c.cut) {
                (Some(got), Some(want)) => assert!((got - want).abs() < 1e-3, "{}: cut {got} != {want}", c.name),
                (got, want) => assert_eq!(got, want, "{}: cut", c.name),
            }
            let verify = api.get(&format!("{JOBS}/{OBJ}-verify")).is_some();
            assert_eq!(verify, c.verify_job, "{}: verify-only Job", c.name);
            if c.state == State::Failed {
                // A failure removes the Jobs and the PVC.
                assert!(api.get(&format!("{JOBS}/{OBJ}")).is_none(), "{}", c.name);
                assert!(api.get(&format!("{PVCS}/{OBJ}")).is_none(), "{}", c.name);
            } else {
                assert!(api.get(&format!("{PVCS}/{OBJ}")).is_some(), "{}: the PVC stays", c.name);
                assert!(
                    !api.requests().iter().any(|(m, _)| m == "DELETE"),
                    "{}: nothing deleted",
                    c.name
                );
            }
        }
    }
}
