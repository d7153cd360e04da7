//! The per-snapshot PersistentVolumeClaim and Job, and reading a finished Job's result.
//!
//! The Job runs the etcd image's own tools as argv (etcd images have no shell since 3.5.7):
//! 1. init container `save`: `etcdctl snapshot save /snapshot/snapshot.db` against ONE
//!    healthy member (the leader), with the cluster's client certificate from its Secret;
//! 2. container `verify`: `etcdutl snapshot status /snapshot/snapshot.db -w json`, which
//!    fails on a damaged file and prints hash, revision, key count and size, which the
//!    driver reads from the container's log.
//!
//! 3. with an export (class parameters), `verify` becomes the last init container and the
//!    container `export` (etcdsnap's own image) runs `etcdsnap export`, which uploads the file
//!    to S3, reads it back and checks its SHA-256 (see `export`); the keys come from the
//!    class's Secret as environment variables by reference.
//!
//! The PVC is sized from the database size plus headroom. Both objects carry etcdsnap's
//! labels (driver, snapshot id, group id); the Job is owned by the PVC, so deleting the PVC
//! garbage-collects the Job and its pods.
//!
//! Longer than the ~500-line guide: the Job is one object (save, status, verify, trial
//! restore and export steps with their volumes, environment and security context), built here
//! by one small function per part, so the whole spec reads in one place.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;

use crate::config::EngineConfig;
use crate::metadata::Time;

pub const SAVE_CONTAINER: &str = "save";
pub const TRIAL_RESTORE_CONTAINER: &str = "trial-restore";
/// Where the trial restore writes (an emptyDir as large as the snapshot PVC).
pub const SCRATCH_DIR: &str = "/scratch";
pub const VERIFY_CONTAINER: &str = "verify";
pub const EXPORT_CONTAINER: &str = "export";
/// etcdsnap in its own image.
pub const ETCDSNAP: &str = "/usr/local/bin/etcdsnap";
/// Where the snapshot PVC is mounted in the Job, and the file in it.
pub const SNAPSHOT_DIR: &str = "/snapshot";
pub const SNAPSHOT_FILE: &str = "/snapshot/snapshot.db";
/// Where the client TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/etcdsnap/tls";
pub const ETCDCTL: &str = "/usr/local/bin/etcdctl";
pub const ETCDUTL: &str = "/usr/local/bin/etcdutl";

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_DRIVER: &str = "etcdsnap.lifeboat.dev/driver";
pub const LABEL_SNAPSHOT: &str = "etcdsnap.lifeboat.dev/snapshot";
pub const LABEL_GROUP: &str = "etcdsnap.lifeboat.dev/group";
/// The unprivileged user the Job runs as (distroless "nonroot").
const RUN_AS: i64 = 65532;

/// Everything needed to write one snapshot's PVC and Job.
#[derive(Debug, Clone)]
pub struct Plan {
    pub snapshot_id: String,
    pub group_id: Option<String>,
    /// Namespace of the etcd cluster (and of its TLS Secret, the PVC and the Job).
    pub namespace: String,
    /// Name of both the PVC and the Job.
    pub name: String,
    pub member_url: String,
    pub tls_secret: String,
    /// The Secret with the etcd user (`username`) and `password`, when the cluster has auth.
    pub auth_secret: Option<String>,
    pub size_bytes: u64,
    /// The snapshot PVC's storage class (class parameter), else `STORAGE_CLASS`.
    pub storage_class: Option<String>,
    /// Restore the file into a scratch folder before verifying it (class parameter).
    pub trial_restore: bool,
    /// Copy the verified file to S3 (class parameters).
    pub export: Option<JobExport>,
}

/// Where the export container uploads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobExport {
    pub target: crate::export::Target,
    pub key: String,
    /// The Secret with the S3 keys.
    pub secret: String,
    pub part_size: u64,
    pub compression: crate::gzip::Compression,
}

/// The labels every object of one snapshot carries. All values are short ids.
pub fn labels(driver: &str, snapshot_id: &str, group_id: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert(LABEL_MANAGED_BY.to_string(), "etcdsnap".to_string());
    l.insert(LABEL_DRIVER.to_string(), driver.to_string());
    l.insert(LABEL_SNAPSHOT.to_string(), snapshot_id.to_string());
    if let Some(g) = group_id {
        l.insert(LABEL_GROUP.to_string(), g.to_string());
    }
    l
}

/// PVC size: the database plus `headroom_percent`, at least `min`, rounded up to MiB.
pub fn pvc_size(db_size: u64, min: u64, headroom_percent: u64) -> u64 {
    let wanted = db_size.saturating_mul(100 + headroom_percent) / 100;
    let bytes = wanted.max(min);
    bytes.div_ceil(1 << 20).saturating_mul(1 << 20)
}

/// A byte count as a Kubernetes quantity in MiB (`640Mi`).
pub fn quantity(bytes: u64) -> Quantity {
    Quantity(format!("{}Mi", bytes.div_ceil(1 << 20)))
}

pub fn pvc(plan: &Plan, cfg: &EngineConfig) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(plan.name.clone()),
            namespace: Some(plan.namespace.clone()),
            labels: Some(labels(&cfg.driver_name, &plan.snapshot_id, plan.group_id.as_deref())),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: plan.storage_class.clone().or_else(|| cfg.storage_class.clone()),
            volume_mode: Some("Filesystem".to_string()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), quantity(plan.size_bytes))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tls_args() -> Vec<String> {
    vec![
        format!("--cacert={TLS_DIR}/ca.crt"),
        format!("--cert={TLS_DIR}/tls.crt"),
        format!("--key={TLS_DIR}/tls.key"),
    ]
}

fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn small_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".to_string())),
            ("memory".to_string(), Quantity("128Mi".to_string())),
        ])),
        ..Default::default()
    }
}

/// The Job that saves and verifies the snapshot; `pvc_uid` makes the PVC its owner.
pub fn job(plan: &Plan, cfg: &EngineConfig, pvc_uid: &str) -> Job {
    let timeout_secs = cfg.job_timeout.as_secs().max(10);
    // etcdctl gives up before the Job's deadline, so a failure says what etcdctl saw.
    let command_timeout = (timeout_secs * 4 / 5).max(5);
    let mut save_args = vec![
        "snapshot".to_string(),
        "save".to_string(),
        SNAPSHOT_FILE.to_string(),
        format!("--endpoints={}", plan.member_url),
        "--dial-timeout=10s".to_string(),
        format!("--command-timeout={command_timeout}s"),
    ];
    save_args.extend(tls_args());
    let save = Container {
        name: SAVE_CONTAINER.to_string(),
        image: Some(cfg.etcd_image.clone()),
        command: Some(vec![ETCDCTL.to_string()]),
        args: Some(save_args),
        volume_mounts: Some(vec![
            snapshot_mount(false),
            VolumeMount {
                name: "etcd-client-tls".to_string(),
                mount_path: TLS_DIR.to_string(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        // etcdctl reads ETCDCTL_USER and ETCDCTL_PASSWORD (its --user/--password), here from
        // the auth Secret by reference: the password is in no argv and no object we write.
        env: plan.auth_secret.as_ref().map(|secret| {
            [("ETCDCTL_USER", "username"), ("ETCDCTL_PASSWORD", "password")]
                .into_iter()
                .map(|(name, key)| EnvVar {
                    name: name.to_string(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: secret.clone(),
                            key: key.to_string(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect()
        }),
        resources: Some(small_resources()),
        security_context: Some(hardened()),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    };
    let key = |k: &str| KeyToPath {
        key: k.to_string(),
        path: k.to_string(),
        mode: None,
    };
    let tls = Volume {
        name: "etcd-client-tls".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(plan.tls_secret.clone()),
            items: Some(vec![key("ca.crt"), key("tls.crt"), key("tls.key")]),
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Default::default()
    };
    let mut init = vec![save];
    let mut volumes = vec![tls];
    if plan.trial_restore {
        let (container, scratch) = trial_restore(plan, cfg);
        init.push(container);
        volumes.push(scratch);
    }
    job_object(plan, cfg, pvc_uid, &plan.name, init, volumes)
}

/// `etcdutl snapshot restore` of the file into an emptyDir: a full restore, which also checks
/// the SHA-256 etcd appended to the snapshot; the data is thrown away with the pod.
fn trial_restore(plan: &Plan, cfg: &EngineConfig) -> (Container, Volume) {
    let container = Container {
        name: TRIAL_RESTORE_CONTAINER.to_string(),
        image: Some(cfg.etcd_image.clone()),
        command: Some(vec![ETCDUTL.to_string()]),
        args: Some(vec![
            "snapshot".to_string(),
            "restore".to_string(),
            SNAPSHOT_FILE.to_string(),
            format!("--data-dir={SCRATCH_DIR}/restore"),
        ]),
        volume_mounts: Some(vec![
            snapshot_mount(true),
            VolumeMount {
                name: "scratch".to_string(),
                mount_path: SCRATCH_DIR.to_string(),
                ..Default::default()
            },
        ]),
        resources: Some(small_resources()),
        security_context: Some(hardened()),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    };
    let scratch = Volume {
        name: "scratch".to_string(),
        empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource {
            size_limit: Some(quantity(plan.size_bytes)),
            ..Default::default()
        }),
        ..Default::default()
    };
    (container, scratch)
}

/// `etcdsnap export` of the verified file, the keys from the Secret by reference.
fn export_container(e: &JobExport, cfg: &EngineConfig) -> Container {
    let from_secret = |name: &str, optional: bool| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: e.secret.clone(),
                key: name.to_string(),
                optional: Some(optional),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut args = vec![
        "export".to_string(),
        format!("--file={SNAPSHOT_FILE}"),
        format!("--endpoint={}", e.target.endpoint),
        format!("--bucket={}", e.target.bucket),
        format!("--key={}", e.key),
        format!("--region={}", e.target.region),
        format!("--path-style={}", e.target.path_style),
        format!("--part-size={}", e.part_size),
    ];
    if e.compression != crate::gzip::Compression::None {
        args.push(format!("--compression={}", e.compression.as_str()));
    }
    Container {
        name: EXPORT_CONTAINER.to_string(),
        image: Some(cfg.export_image.clone()),
        command: Some(vec![ETCDSNAP.to_string()]),
        args: Some(args),
        env: Some(vec![
            from_secret(crate::export::ENV_ACCESS_KEY, false),
            from_secret(crate::export::ENV_SECRET_KEY, false),
            from_secret(crate::export::ENV_SESSION_TOKEN, true),
        ]),
        volume_mounts: Some(vec![snapshot_mount(true)]),
        resources: Some(small_resources()),
        security_context: Some(hardened()),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    }
}

/// A Job that only verifies the file already on the PVC (named [`verify_job_name`]): used
/// when the first Job succeeded but its pods, and with them the verify result, were gone
/// before the driver read it.
pub fn verify_job(plan: &Plan, cfg: &EngineConfig, pvc_uid: &str) -> Job {
    job_object(plan, cfg, pvc_uid, &verify_job_name(&plan.name), Vec::new(), Vec::new())
}

/// The name of the verify-only Job of the snapshot whose objects are called `object`.
pub fn verify_job_name(object: &str) -> String {
    format!("{object}-verify")
}

fn snapshot_mount(read_only: bool) -> VolumeMount {
    VolumeMount {
        name: "snapshot".to_string(),
        mount_path: SNAPSHOT_DIR.to_string(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The Job around the verify container, after `init` containers, with the snapshot PVC and
/// `volumes` mounted.
fn job_object(
    plan: &Plan,
    cfg: &EngineConfig,
    pvc_uid: &str,
    name: &str,
    mut init: Vec<Container>,
    mut volumes: Vec<Volume>,
) -> Job {
    let labels = labels(&cfg.driver_name, &plan.snapshot_id, plan.group_id.as_deref());
    let timeout_secs = cfg.job_timeout.as_secs().max(10);
    let verify = Container {
        name: VERIFY_CONTAINER.to_string(),
        image: Some(cfg.etcd_image.clone()),
        command: Some(vec![ETCDUTL.to_string()]),
        args: Some(vec![
            "snapshot".to_string(),
            "status".to_string(),
            SNAPSHOT_FILE.to_string(),
            "--write-out=json".to_string(),
        ]),
        volume_mounts: Some(vec![snapshot_mount(true)]),
        resources: Some(small_resources()),
        security_context: Some(hardened()),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    };
    // With an export, the file is verified before it is uploaded.
    let containers = match &plan.export {
        Some(e) => {
            init.push(verify);
            vec![export_container(e, cfg)]
        }
        None => vec![verify],
    };
    volumes.insert(
        0,
        Volume {
            name: "snapshot".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: plan.name.clone(),
                read_only: Some(false),
            }),
            ..Default::default()
        },
    );
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(plan.namespace.clone()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_string(),
                kind: "PersistentVolumeClaim".to_string(),
                name: plan.name.clone(),
                uid: pvc_uid.to_string(),
                controller: Some(false),
                block_owner_deletion: Some(false),
            }]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(cfg.job_backoff_limit),
            active_deadline_seconds: Some(timeout_secs as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    init_containers: if init.is_empty() { None } else { Some(init) },
                    containers,
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where a Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    /// The Job's condition: its machine-readable `reason` (`DeadlineExceeded`,
    /// `BackoffLimitExceeded`, ...) and `reason: message` for people.
    Failed {
        reason: String,
        text: String,
    },
}

/// Reads the Job's conditions like `kubectl wait --for=condition=complete|failed`.
pub fn job_state(job: &Job) -> JobState {
    let status = job.status.as_ref();
    for c in status.and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => return JobState::Succeeded,
            "Failed" | "FailureTarget" => {
                let reason = c.reason.clone().unwrap_or_else(|| "Failed".to_string());
                let message = c.message.clone().unwrap_or_default();
                let text = if message.is_empty() {
                    reason.clone()
                } else {
                    format!("{reason}: {message}")
                };
                return JobState::Failed { reason, text };
            }
            _ => {}
        }
    }
    if status.and_then(|s| s.succeeded).unwrap_or(0) >= 1 {
        return JobState::Succeeded;
    }
    JobState::Running
}

/// The terminated state of container `name` of `pod` (init or regular), if it has ended.
fn terminated<'a>(pod: &'a Pod, name: &str) -> Option<&'a k8s_openapi::api::core::v1::ContainerStateTerminated> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == name)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// Whether container `name` of `pod` ended with exit code 0.
pub fn exited_ok(pod: &Pod, name: &str) -> bool {
    terminated(pod, name).is_some_and(|t| t.exit_code == 0)
}

/// When container `name` of `pod` started, if it has ended.
pub fn started_at(pod: &Pod, name: &str) -> Option<Time> {
    let t = terminated(pod, name)?.started_at.as_ref()?;
    Some(Time {
        seconds: t.0.as_second(),
        nanos: t.0.subsec_nanosecond(),
    })
}

/// When etcd cut the snapshot, from `etcdctl snapshot save`'s log: the time of its "opened
/// snapshot stream" line (the server takes its read transaction as that stream opens), else
/// of "fetching snapshot" (just before). etcd logs Unix seconds with microseconds.
pub fn cut_time_from_log(log: &str) -> Option<Time> {
    let mut fetching = None;
    for line in log.lines().take(10_000) {
        let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
            continue;
        };
        let (Some(msg), Some(ts)) = (
            o.get("msg").and_then(|m| m.as_str()),
            o.get("ts").and_then(|t| t.as_f64()),
        ) else {
            continue;
        };
        if msg.starts_with("opened snapshot stream") {
            return Time::from_secs_f64(ts);
        }
        if msg == "fetching snapshot" && fetching.is_none() {
            fetching = Time::from_secs_f64(ts);
        }
    }
    fetching
}

/// Why the containers of a Job's pods failed: each non-zero exit with its reason and the
/// last lines of its output (the termination message).
pub fn container_failures(pods: &[Pod]) -> Vec<String> {
    let mut out = Vec::new();
    for pod in pods {
        let Some(status) = &pod.status else { continue };
        let all = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for cs in all {
            let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
                continue;
            };
            if t.exit_code == 0 {
                continue;
            }
            let mut line = format!("container {} exited with code {}", cs.name, t.exit_code);
            if let Some(r) = t.reason.as_deref().filter(|r| !r.is_empty()) {
                line.push_str(&format!(" ({r})"));
            }
            if let Some(m) = t.message.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
                line.push_str(&format!(": {}", last_lines(m, 3)));
            }
            if !out.contains(&line) {
                out.push(line);
            }
        }
    }
    out
}

/// The last `n` non-empty lines, each shortened; etcd's JSON log lines become `msg: error`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(l) else {
                return crate::status::truncate(l, 300);
            };
            let msg = o.get("msg").and_then(|v| v.as_str()).unwrap_or("");
            let line = match o.get("error").and_then(|v| v.as_str()) {
                Some(e) => format!("{msg}: {e}"),
                None => msg.to_string(),
            };
            crate::status::truncate(&line, 300)
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// What `etcdutl snapshot status -w json` says about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct FileStatus {
    pub hash: u64,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Finds the status object in the verify container's log (etcdutl prints it without a
/// trailing newline, so it may share a line with other output).
pub fn parse_file_status(log: &str) -> Result<FileStatus, String> {
    let mut found = None;
    for (pos, _) in log.match_indices("{\"hash\"") {
        let mut stream = serde_json::Deserializer::from_str(&log[pos..]).into_iter::<FileStatus>();
        if let Some(Ok(st)) = stream.next() {
            found = Some(st);
        }
    }
    let st = found.ok_or_else(|| {
        format!(
            "no `etcdutl snapshot status` result in the verify log ({})",
            crate::status::truncate(log.trim(), 200)
        )
    })?;
    if st.total_size == 0 {
        return Err("etcdutl reports an empty snapshot file".to_string());
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EngineConfig {
        crate::config::Config::from_env(lifeboat::env::Env::from_pairs([("STORAGE_CLASS", "fast")]), None)
            .unwrap()
            .engine
    }

    fn plan() -> Plan {
        Plan {
            snapshot_id: "s-0123456789abcdef0123456789abcdef".into(),
            group_id: Some("g-0123456789abcdef0123456789abcdef".into()),
            namespace: "etcd".into(),
            name: "etcdsnap-s-0123456789abcdef0123456789abcdef".into(),
            member_url: "https://etcd-0.etcd.etcd.svc:2379".into(),
            tls_secret: "main-client-tls".into(),
            auth_secret: None,
            size_bytes: 3 << 30,
            storage_class: None,
            trial_restore: false,
            export: None,
        }
    }

    #[test]
    fn pvc_sizes() {
        assert_eq!(pvc_size(0, 1 << 30, 50), 1 << 30);
        assert_eq!(pvc_size(1 << 30, 1 << 20, 50), 3 << 29);
        assert_eq!(pvc_size(1, 1, 0), 1 << 20);
        assert_eq!(quantity(1 << 30).0, "1024Mi");
        assert_eq!(quantity((1 << 20) + 1).0, "2Mi");
    }

    #[test]
    fn job_runs_argv_only_against_one_member() {
        let job = job(&plan(), &cfg(), "uid-1");
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["apiVersion"], "batch/v1");
        assert_eq!(v["kind"], "Job");
        let spec = &v["spec"]["template"]["spec"];
        let save = &spec["initContainers"][0];
        assert_eq!(save["command"][0], ETCDCTL);
        let args: Vec<String> = serde_json::from_value(save["args"].clone()).unwrap();
        assert_eq!(&args[..3], ["snapshot", "save", SNAPSHOT_FILE]);
        assert_eq!(args.iter().filter(|a| a.starts_with("--endpoints=")).count(), 1);
        assert!(args.contains(&"--endpoints=https://etcd-0.etcd.etcd.svc:2379".to_string()));
        assert_eq!(spec["containers"][0]["command"][0], ETCDUTL);
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(v["spec"]["activeDeadlineSeconds"], 600);
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "PersistentVolumeClaim");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        // No shell anywhere: etcd images have none.
        let text = v.to_string();
        assert!(!text.contains("/bin/sh") && !text.contains("\"sh\""), "{text}");
        // Every label value is short enough.
        for (_, value) in v["metadata"]["labels"].as_object().unwrap() {
            assert!(value.as_str().unwrap().len() <= 63);
        }
    }

    #[test]
    fn pvc_spec() {
        let v = serde_json::to_value(pvc(&plan(), &cfg())).unwrap();
        assert_eq!(v["kind"], "PersistentVolumeClaim");
        assert_eq!(v["spec"]["resources"]["requests"]["storage"], "3072Mi");
        assert_eq!(v["spec"]["storageClassName"], "fast");
        let mut p = plan();
        p.storage_class = Some("etcd-snapshots".into());
        let v = serde_json::to_value(pvc(&p, &cfg())).unwrap();
        assert_eq!(v["spec"]["storageClassName"], "etcd-snapshots");
        assert_eq!(
            v["metadata"]["labels"][LABEL_GROUP],
            "g-0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn job_states() {
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "status": {"active": 1}
        }))
        .unwrap();
        assert_eq!(job_state(&job), JobState::Running);
        job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "status": {"failed": 2, "conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}
        }))
        .unwrap();
        assert_eq!(
            job_state(&job),
            JobState::Failed {
                reason: "BackoffLimitExceeded".into(),
                text: "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            }
        );
        job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        }))
        .unwrap();
        assert_eq!(job_state(&job), JobState::Succeeded);
    }

    #[test]
    fn container_failures_name_the_container_and_its_output() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Failed",
              "initContainerStatuses": [{"name": "save", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "a\nb\ncontext deadline exceeded\n"}}}],
              "containerStatuses": [{"name": "verify", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "PodInitializing"}}}]}
        }))
        .unwrap();
        let f = container_failures(&[pod]);
        assert_eq!(
            f,
            ["container save exited with code 1 (Error): a | b | context deadline exceeded"]
        );
        let json_log = "{\"level\":\"error\",\"msg\":\"streamer failed\",\"error\":\"connection refused\",\"stacktrace\":\"long\"}\nError: context deadline exceeded";
        assert_eq!(
            last_lines(json_log, 3),
            "streamer failed: connection refused | Error: context deadline exceeded"
        );
    }

    #[test]
    fn cut_time_comes_from_etcdctl_log() {
        let log = concat!(
            "{\"level\":\"info\",\"ts\":1796118077.3408055,\"msg\":\"created temporary db file\"}\n",
            "{\"level\":\"info\",\"ts\":1796118077.3418152,\"logger\":\"client\",\"msg\":\"opened snapshot stream; downloading\"}\n",
            "{\"level\":\"info\",\"ts\":1796118077.3418467,\"msg\":\"fetching snapshot\",\"endpoint\":\"https://x:2379\"}\n",
            "Snapshot saved at /snapshot/snapshot.db\n"
        );
        let t = cut_time_from_log(log).unwrap();
        assert_eq!(t.seconds, 1796118077);
        assert!((t.nanos - 341_815_200).abs() < 1000, "{}", t.nanos);
        // Without the stream line, "fetching snapshot"; without either, nothing.
        let t = cut_time_from_log("{\"ts\":12.5,\"msg\":\"fetching snapshot\"}").unwrap();
        assert_eq!((t.seconds, t.nanos), (12, 500_000_000));
        assert_eq!(cut_time_from_log("Snapshot saved at x\nnot json"), None);
        assert_eq!(cut_time_from_log("{\"ts\":-1,\"msg\":\"fetching snapshot\"}"), None);
    }

    #[test]
    fn trial_restore_is_an_init_container_into_scratch() {
        let mut p = plan();
        p.trial_restore = true;
        let v = serde_json::to_value(job(&p, &cfg(), "uid-1")).unwrap();
        let spec = &v["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["name"], SAVE_CONTAINER);
        let t = &spec["initContainers"][1];
        assert_eq!(t["name"], TRIAL_RESTORE_CONTAINER);
        assert_eq!(t["command"][0], ETCDUTL);
        assert_eq!(t["args"][1], "restore");
        let scratch = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "scratch")
            .unwrap();
        assert_eq!(scratch["emptyDir"]["sizeLimit"], "3072Mi");
        let without = serde_json::to_value(job(&plan(), &cfg(), "uid-1")).unwrap();
        assert_eq!(
            without["spec"]["template"]["spec"]["initContainers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn export_runs_etcdsnap_after_verify_with_keys_by_reference() {
        let mut p = plan();
        p.export = Some(JobExport {
            target: crate::export::Target {
                endpoint: "https://s3.example:9000".into(),
                bucket: "backups".into(),
                region: "eu-west-1".into(),
                path_style: true,
            },
            key: "etcd/main/s-1.db".into(),
            secret: "s3-keys".into(),
            part_size: 16 << 20,
            compression: crate::gzip::Compression::Gzip,
        });
        for j in [job(&p, &cfg(), "uid-1"), verify_job(&p, &cfg(), "uid-1")] {
            let v = serde_json::to_value(&j).unwrap();
            let spec = &v["spec"]["template"]["spec"];
            let init = spec["initContainers"].as_array().unwrap();
            assert_eq!(init.last().unwrap()["name"], VERIFY_CONTAINER);
            let c = &spec["containers"][0];
            assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
            assert_eq!(c["name"], EXPORT_CONTAINER);
            assert_eq!(c["command"][0], ETCDSNAP);
            assert_eq!(c["image"], cfg().export_image);
            assert!(c["args"].as_array().unwrap().contains(&"--key=etcd/main/s-1.db".into()));
            assert!(c["args"].as_array().unwrap().contains(&"--compression=gzip".into()));
            assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "s3-keys");
            assert_eq!(c["env"][2]["valueFrom"]["secretKeyRef"]["optional"], true);
            assert!(c["env"].as_array().unwrap().iter().all(|e| e.get("value").is_none()));
            assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        }
    }

    #[test]
    fn verify_job_only_verifies_the_file_on_the_pvc() {
        let v = serde_json::to_value(verify_job(&plan(), &cfg(), "uid-1")).unwrap();
        assert_eq!(
            v["metadata"]["name"],
            "etcdsnap-s-0123456789abcdef0123456789abcdef-verify"
        );
        assert!(v["metadata"]["name"].as_str().unwrap().len() <= 63);
        let spec = &v["spec"]["template"]["spec"];
        assert!(spec.get("initContainers").is_none());
        assert_eq!(spec["containers"][0]["name"], VERIFY_CONTAINER);
        assert_eq!(spec["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(spec["volumes"][0]["persistentVolumeClaim"]["claimName"], plan().name);
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            v["metadata"]["labels"][LABEL_SNAPSHOT],
            "s-0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn reads_etcdutl_status_output() {
        let log = "{\"level\":\"info\",\"msg\":\"x\"}\n{\"hash\":2917920538,\"revision\":2,\"totalKey\":7,\"totalSize\":20480}";
        let st = parse_file_status(log).unwrap();
        assert_eq!(
            st,
            FileStatus {
                hash: 2917920538,
                revision: 2,
                total_key: 7,
                total_size: 20480
            }
        );
        let glued = "{\"hash\":1,\"revision\":3,\"totalKey\":1,\"totalSize\":10}{\"level\":\"info\"}";
        assert_eq!(parse_file_status(glued).unwrap().revision, 3);
        assert!(parse_file_status("Error: snapshot file has wrong size").is_err());
        assert!(parse_file_status("{\"hash\":1,\"revision\":3,\"totalKey\":1,\"totalSize\":0}").is_err());
    }
}
