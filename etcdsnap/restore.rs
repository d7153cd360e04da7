//! `etcdsnap restore`: the documented way from a verified snapshot back to a running etcd.
//!
//! For one member of the new cluster it writes (and with `--apply` runs and waits for) a Job
//! in the snapshot's namespace that mounts the snapshot PVC read-only and the member's data
//! PVC, and runs, as argv (etcd images have no shell):
//!
//! ```text
//! etcdutl snapshot restore /snapshot/snapshot.db --data-dir=/var/lib/etcd/<data-subdir>
//!   --name=<member> --initial-cluster=<...> --initial-cluster-token=<...>
//!   --initial-advertise-peer-urls=<...>
//! ```
//!
//! `etcdutl` checks the snapshot's integrity hash while restoring. With `--apply` the Job is
//! deleted once it succeeded and kept for inspection when it failed. Run it once per member
//! (same `--initial-cluster` and token, each member's own name, peer URL and PVC), then
//! start the members with `--data-dir=/var/lib/etcd/<data-subdir>` and the same flags.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::ids;
use crate::job::{self, JobState, LABEL_MANAGED_BY, LABEL_SNAPSHOT};
use crate::kube::{path, Kube};
use crate::metadata::{SnapshotRecord, State, Store};

const USAGE: &str = "usage: etcdsnap restore --snapshot-id ID --name MEMBER --initial-cluster NAME=URL,...
                        --initial-advertise-peer-urls URL --target-pvc PVC
                        [--initial-cluster-token TOKEN] [--data-subdir data] [--image IMAGE]
                        [--apply [--timeout 10m]]

Prints the Job (JSON) that restores snapshot ID into the member's data PVC (same namespace as
the snapshot); with --apply, creates it and waits for it. Reads METADATA_NAMESPACE (default
kube-system) and DRIVER_NAME like the driver, and KUBECONFIG or the pod's service account.";

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub snapshot_id: String,
    pub name: String,
    pub initial_cluster: String,
    pub peer_urls: String,
    pub target_pvc: String,
    pub token: String,
    pub data_subdir: String,
    pub image: String,
    pub apply: bool,
    pub timeout: Duration,
}

pub fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    let mut apply = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        match key {
            "-h" | "--help" => return Ok(None),
            "--apply" => apply = true,
            "--snapshot-id"
            | "--name"
            | "--initial-cluster"
            | "--initial-advertise-peer-urls"
            | "--target-pvc"
            | "--initial-cluster-token"
            | "--data-subdir"
            | "--image"
            | "--timeout" => {
                let v = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| format!("{key} needs a value"))?.clone(),
                };
                m.insert(key.trim_start_matches("--").to_string(), v);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut missing = Vec::new();
    let mut need = |k: &str| match m.get(k) {
        Some(v) if !v.is_empty() => v.clone(),
        _ => {
            missing.push(format!("--{k}"));
            String::new()
        }
    };
    let snapshot_id = need("snapshot-id");
    let name = need("name");
    let initial_cluster = need("initial-cluster");
    let peer_urls = need("initial-advertise-peer-urls");
    let target_pvc = need("target-pvc");
    if !missing.is_empty() {
        return Err(format!("missing {}", missing.join(", ")));
    }
    if !ids::is_our_id(&snapshot_id, "s-") {
        return Err(format!(
            "--snapshot-id {snapshot_id:?} is not an etcdsnap snapshot id (s-<32 hex>)"
        ));
    }
    if !ids::is_dns_subdomain(&target_pvc) {
        return Err(format!("--target-pvc {target_pvc:?} is not a PVC name"));
    }
    if !initial_cluster.contains(&format!("{name}=")) {
        return Err(format!("--initial-cluster does not list the member --name {name:?}"));
    }
    let data_subdir = m.get("data-subdir").cloned().unwrap_or_else(|| "data".into());
    if data_subdir.is_empty() || data_subdir.contains('/') || data_subdir.starts_with('.') {
        return Err("--data-subdir must be one directory name".into());
    }
    let timeout = match m.get("timeout") {
        Some(t) => lifeboat::env::parse_duration(t).map_err(|e| format!("--timeout: {e}"))?,
        None => Duration::from_secs(600),
    };
    Ok(Some(Args {
        snapshot_id,
        name,
        initial_cluster,
        peer_urls,
        target_pvc,
        token: m
            .get("initial-cluster-token")
            .cloned()
            .unwrap_or_else(|| "etcd-cluster".into()),
        data_subdir,
        image: m
            .get("image")
            .cloned()
            .unwrap_or_else(|| crate::config::DEFAULT_ETCD_IMAGE.into()),
        apply,
        timeout,
    }))
}

/// The restore Job for `args` from the snapshot `rec`.
pub fn restore_job(args: &Args, rec: &SnapshotRecord) -> Job {
    let name = format!(
        "etcdsnap-restore-{}",
        &ids::snapshot_id("restore", &format!("{}\0{}\0{}", rec.id, args.name, args.target_pvc))[2..18]
    );
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "etcdsnap".to_string()),
        (LABEL_SNAPSHOT.to_string(), rec.id.clone()),
    ]);
    let container = Container {
        name: "restore".to_string(),
        image: Some(args.image.clone()),
        command: Some(vec![job::ETCDUTL.to_string()]),
        args: Some(vec![
            "snapshot".to_string(),
            "restore".to_string(),
            job::SNAPSHOT_FILE.to_string(),
            format!("--data-dir=/var/lib/etcd/{}", args.data_subdir),
            format!("--name={}", args.name),
            format!("--initial-cluster={}", args.initial_cluster),
            format!("--initial-cluster-token={}", args.token),
            format!("--initial-advertise-peer-urls={}", args.peer_urls),
        ]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "snapshot".to_string(),
                mount_path: job::SNAPSHOT_DIR.to_string(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "data".to_string(),
                mount_path: "/var/lib/etcd".to_string(),
                ..Default::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    };
    let pvc_volume = |volume: &str, claim: &str, read_only: bool| Volume {
        name: volume.to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.to_string(),
            read_only: Some(read_only),
        }),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(rec.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(args.timeout.as_secs().max(10) as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        // etcd runs as root in the upstream images; the data must be theirs.
                        run_as_user: Some(0),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![
                        pvc_volume("snapshot", &rec.object, true),
                        pvc_volume("data", &args.target_pvc, false),
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Entry point of `etcdsnap restore`; returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let args = match lifeboat::cli::parsed("etcdsnap restore", USAGE, parse_args(argv)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            log::error!(error = e.as_str(), snapshot = args.snapshot_id.as_str(); "restore failed");
            1
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    // Read and checked as the driver reads them, so restore looks where the driver wrote.
    let mut env = lifeboat::env::Env::from_process();
    let namespace = crate::config::metadata_namespace(&mut env);
    let driver = crate::config::driver_name(&mut env);
    env.finish().map_err(|e| e.to_string())?;
    let kube = std::sync::Arc::new(Kube::from_environment(Duration::from_secs(15))?);
    let store = Store::new(std::sync::Arc::clone(&kube), &namespace, &driver);
    let rec: SnapshotRecord = store
        .get(&args.snapshot_id)
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("snapshot {} not found in namespace {namespace}", args.snapshot_id))?;
    if rec.state != State::Ready {
        return Err(format!(
            "snapshot {} is {}, not ready; only verified snapshots are restored",
            rec.id,
            rec.state.label()
        ));
    }
    let job = restore_job(args, &rec);
    let text = serde_json::to_string_pretty(&job).map_err(|e| e.to_string())?;
    if !args.apply {
        println!("{text}");
        return Ok(());
    }
    let name = job.metadata.name.clone().unwrap_or_default();
    kube.create(&path::<Job>(&rec.namespace, None), &job)
        .map_err(|e| e.to_string())?;
    log::info!(job = format!("{}/{name}", rec.namespace).as_str(), snapshot = rec.id.as_str(),
        revision = rec.revision.unwrap_or_default(), member = args.name.as_str(); "restore job created");
    let deadline = Instant::now() + args.timeout + Duration::from_secs(30);
    let path = path::<Job>(&rec.namespace, Some(&name));
    while Instant::now() < deadline {
        let job: Job = kube
            .get(&path)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("Job {}/{name} disappeared", rec.namespace))?;
        match job::job_state(&job) {
            JobState::Succeeded => {
                // Leave nothing behind; a failed Job stays for inspection.
                if let Err(e) = kube.delete(&path) {
                    log::warn!(error:% = e; "could not delete the finished restore Job");
                }
                log::info!(job = name.as_str(), data_dir = format!("/var/lib/etcd/{}", args.data_subdir).as_str(); "restore complete");
                println!(
                    "restored snapshot {} into PVC {}/{}",
                    rec.id, rec.namespace, args.target_pvc
                );
                return Ok(());
            }
            JobState::Failed { text, .. } => {
                return Err(format!("restore Job {}/{name} failed: {text}", rec.namespace))
            }
            JobState::Running => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    Err(format!(
        "restore Job {}/{name} did not finish within {:?}",
        rec.namespace, args.timeout
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn arguments() {
        let id = "s-0123456789abcdef0123456789abcdef";
        let a = parse_args(&argv(&format!(
            "--snapshot-id {id} --name m0 --initial-cluster m0=https://m0:2380 --initial-advertise-peer-urls=https://m0:2380 --target-pvc data-m0 --apply"
        )))
        .unwrap()
        .unwrap();
        assert_eq!((a.name.as_str(), a.data_subdir.as_str(), a.apply), ("m0", "data", true));
        let err = parse_args(&argv("--name m0")).unwrap_err();
        assert!(err.contains("--snapshot-id") && err.contains("--target-pvc"), "{err}");
        let err = parse_args(&argv(&format!(
            "--snapshot-id {id} --name m1 --initial-cluster m0=https://m0:2380 --initial-advertise-peer-urls u --target-pvc p"
        )))
        .unwrap_err();
        assert!(err.contains("does not list the member"), "{err}");
        assert!(parse_args(&argv("--bogus")).is_err());
        assert_eq!(parse_args(&argv("--help")), Ok(None));
    }

    #[test]
    fn restore_job_is_argv_only() {
        let rec: SnapshotRecord = serde_json::from_value(serde_json::json!({
            "id": "s-0123456789abcdef0123456789abcdef", "volume_id": "etcd/main", "cluster": "etcd/main",
            "namespace": "etcd", "object": "etcdsnap-s-0123456789abcdef0123456789abcdef", "member_url": "https://x",
            "tls_secret": "t", "created": {"seconds": 1, "nanos": 0}, "state": "ready"
        }))
        .unwrap();
        let a = parse_args(&argv(
            "--snapshot-id s-0123456789abcdef0123456789abcdef --name m0 --initial-cluster m0=https://m0:2380 --initial-advertise-peer-urls https://m0:2380 --target-pvc data-m0",
        ))
        .unwrap()
        .unwrap();
        let v = serde_json::to_value(restore_job(&a, &rec)).unwrap();
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["command"][0], job::ETCDUTL);
        assert_eq!(c["args"][2], job::SNAPSHOT_FILE);
        assert!(c["args"]
            .as_array()
            .unwrap()
            .contains(&"--data-dir=/var/lib/etcd/data".into()));
        assert_eq!(v["metadata"]["namespace"], "etcd");
        assert!(v["metadata"]["name"].as_str().unwrap().len() <= 63);
        let vols = &v["spec"]["template"]["spec"]["volumes"];
        assert_eq!(vols[0]["persistentVolumeClaim"]["claimName"], rec.object);
        assert_eq!(vols[0]["persistentVolumeClaim"]["readOnly"], true);
        assert_eq!(vols[1]["persistentVolumeClaim"]["claimName"], "data-m0");
    }
}
