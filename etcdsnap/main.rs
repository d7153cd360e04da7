//! etcdsnap: a CSI driver that takes consistent, verified etcd snapshots.
//!
//! `etcdsnap [--endpoint unix:///csi/csi.sock]` serves the CSI Identity, Controller
//! (snapshots only) and GroupController services on a Unix socket, next to the
//! csi-snapshotter sidecar, plus `/metrics`, `/healthz` and `/ready` over HTTP.
//! `etcdsnap restore …` prints or runs the Job that restores a snapshot (see `restore.rs`);
//! `etcdsnap restore --from-s3 …` restores from its S3 copy (`restore_s3.rs`); `etcdsnap
//! export …` is the snapshot Job's upload step (`export.rs`).
//!
//! Reading order: `config` → `kube` (API client) → `discovery` (volume → etcd cluster) →
//! `etcd` (health) → `job` (PVC + Job) → `metadata` (records) → `locks` → `lifecycle` (a
//! snapshot's state machine) → `engine` (the CSI operations) →
//! `identity`/`controller`/`group_controller` (CSI services) → `grpc` (service glue).

mod config;
mod controller;
mod copies;
mod discovery;
mod engine;
mod etcd;
mod export;
mod group_controller;
mod groups;
mod grpc;
mod gzip;
mod identity;
mod ids;
mod job;
mod kube;
mod lifecycle;
mod locks;
mod metadata;
mod metrics;
mod params;
mod proto;
mod restore;
mod restore_s3;
mod status;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat::env::Env;
use lifeboat::metrics::Registry;
use lifeboat::ops_http::{OpsServer, ReadyCheck};
use lifeboat::shutdown::{signal_name, Shutdown};

use crate::config::Config;
use crate::kube::Kube;

const USAGE: &str = "usage: etcdsnap [--endpoint unix:///csi/csi.sock]
       etcdsnap restore --help
       etcdsnap export --help
       etcdsnap --print-config-schema

Serves the etcdsnap CSI driver. Configuration is read from the environment:
CSI_ENDPOINT, DRIVER_NAME, METRICS_ADDR, METADATA_NAMESPACE, CLUSTER_LABEL, STORAGE_CLASS,
ETCD_IMAGE, EXPORT_IMAGE, PVC_MIN_SIZE, PVC_HEADROOM_PERCENT, JOB_TIMEOUT, JOB_BACKOFF_LIMIT, ETCD_TIMEOUT,
POLL_INTERVAL, CREATE_WAIT, GRPC_THREADS, SHUTDOWN_GRACE, LOG_LEVEL (see docs/etcdsnap.md).";

const KUBE_TIMEOUT: Duration = Duration::from_secs(15);
const READY_CACHE: Duration = Duration::from_secs(2);

fn main() {
    let level = lifeboat::log::init_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("restore") if restore_s3::wanted(&args[1..]) => std::process::exit(restore_s3::main(&args[1..])),
        Some("restore") => std::process::exit(restore::main(&args[1..])),
        Some("export") => std::process::exit(export::main(&args[1..])),
        _ => {}
    }
    if args.first().map(String::as_str) == Some("--print-config-schema") {
        // The handle PVC annotations discovery reads are part of the contract too.
        let mut more = serde_json::Map::new();
        more.insert("pvc_annotations".into(), serde_json::json!(discovery::ANNOTATIONS));
        println!("{}", config_schema().to_json_with(more));
        return;
    }
    let endpoint = match lifeboat::cli::parsed("etcdsnap", USAGE, parse_args(&args)) {
        Ok(e) => e,
        Err(code) => std::process::exit(code),
    };
    let mut env = Env::from_process();
    env.log_level(level);
    let cfg = match Config::from_env(env, endpoint) {
        Ok(c) => c,
        Err(e) => {
            log::error!(error:% = e; "etcdsnap cannot start");
            std::process::exit(2);
        }
    };
    if let Err(e) = serve(cfg) {
        log::error!(error = e.as_str(); "etcdsnap stopped with an error");
        std::process::exit(1);
    }
}

/// `etcdsnap --print-config-schema`: what serving reads (its own reads, run against an empty
/// environment, declare it), and the variables the Kubernetes client reads from the process
/// environment itself (`kube::Kube::from_environment`).
fn config_schema() -> lifeboat::env::Schema {
    let mut env = Env::from_pairs(Vec::<(String, String)>::new());
    let schema = env.schema();
    env.log_level(Ok(log::LevelFilter::Info));
    let _ = Config::from_env(env, None);
    schema.external("KUBECONFIG", None);
    schema.external("KUBERNETES_SERVICE_HOST", None);
    schema.external("KUBERNETES_SERVICE_PORT", Some("443"));
    schema
}

/// `Ok(Some(endpoint flag))` to serve, `Ok(None)` for help.
fn parse_args(args: &[String]) -> Result<Option<Option<String>>, String> {
    let mut endpoint = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--endpoint" => endpoint = Some(it.next().ok_or("--endpoint needs a value")?.clone()),
            s if s.starts_with("--endpoint=") => endpoint = Some(s["--endpoint=".len()..].to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(endpoint))
}

/// A readiness check that asks the API server at most every [`READY_CACHE`].
fn kube_ready_check(kube: Arc<Kube>, metrics: Registry) -> ReadyCheck {
    let last: Mutex<Option<(Instant, Result<(), String>)>> = Mutex::new(None);
    Arc::new(move || {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < READY_CACHE {
                return result.clone();
            }
        }
        let result = kube.ready().map_err(|e| format!("Kubernetes API: {e}"));
        metrics.set(&metrics::KUBE_READY, [], if result.is_ok() { 1.0 } else { 0.0 });
        *last = Some((Instant::now(), result.clone()));
        result
    })
}

fn serve(cfg: Config) -> Result<(), String> {
    let shutdown = Shutdown::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let kube = Arc::new(Kube::from_environment(KUBE_TIMEOUT)?);
    let metrics = Registry::new();
    metrics::declare(&metrics);
    let ready = kube_ready_check(Arc::clone(&kube), metrics.clone());
    let ops = OpsServer::start(&cfg.metrics_addr, metrics.clone(), Arc::clone(&ready), shutdown.clone())?;

    let engine = Arc::new(engine::Engine::new(
        Arc::clone(&kube),
        cfg.engine.clone(),
        metrics.clone(),
    ));
    let monitor = {
        let engine = Arc::clone(&engine);
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || engine.monitor(&shutdown))
            .map_err(|e| format!("cannot start the monitor thread: {e}"))?
    };
    let shared = grpc::Shared {
        metrics: metrics.clone(),
        inflight: grpc::InFlight::default(),
    };
    let services = grpc::services(
        Arc::new(identity::Identity::new(&cfg.driver_name, ready)),
        Arc::new(controller::Controller::new(Arc::clone(&engine))),
        Arc::new(group_controller::GroupController::new(Arc::clone(&engine))),
        &shared,
    );
    let server = grpc::serve(&cfg.socket, cfg.grpc_threads, services)?;
    log::info!(endpoint = format!("unix://{}", cfg.socket.display()).as_str(), driver = cfg.driver_name.as_str(),
        metrics = ops.addr().to_string().as_str(), api = kube.server(),
        metadata_namespace = cfg.engine.metadata_namespace.as_str(); "etcdsnap serving");

    let signal = shutdown.wait();
    log::info!(signal = signal_name(signal), in_flight = shared.inflight.count(); "stopping: finishing in-flight RPCs");
    let clean = grpc::stop(server, &shared.inflight, cfg.shutdown_grace);
    let _ = monitor.join();
    let _ = std::fs::remove_file(&cfg.socket);
    drop(ops);
    if clean {
        log::info!("etcdsnap stopped");
    } else {
        log::warn!(grace_seconds = cfg.shutdown_grace.as_secs(); "etcdsnap stopped; RPCs still running after the grace period were cancelled");
    }
    Ok(())
}

/// The in-memory Kubernetes API of the state machine's unit tests.
#[cfg(test)]
mod fake_api;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_args(&a(&[])), Ok(Some(None)));
        assert_eq!(
            parse_args(&a(&["--endpoint", "unix:///x"])),
            Ok(Some(Some("unix:///x".into())))
        );
        assert_eq!(
            parse_args(&a(&["--endpoint=unix:///y"])),
            Ok(Some(Some("unix:///y".into())))
        );
        assert_eq!(parse_args(&a(&["--help"])), Ok(None));
        assert!(parse_args(&a(&["--endpoint"])).is_err());
        assert!(parse_args(&a(&["serve"])).unwrap_err().contains("unknown argument"));
    }
}
