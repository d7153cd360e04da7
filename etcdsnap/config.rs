//! The driver's configuration: environment variables (and `--endpoint`), every problem
//! reported at once through [`lifeboat::env::Env`].

use std::path::PathBuf;
use std::time::Duration;

use lifeboat::env::{ConfigError, Env};

use crate::ids;

/// Everything the serving driver needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the Unix socket the CSI endpoint listens on.
    pub socket: PathBuf,
    /// `host:port` of the operations HTTP server.
    pub metrics_addr: String,
    pub driver_name: String,
    pub engine: EngineConfig,
    /// gRPC completion-queue threads (each can run one blocking RPC at a time).
    pub grpc_threads: usize,
    /// How long SIGTERM waits for in-flight RPCs.
    pub shutdown_grace: Duration,
}

/// What the snapshot engine needs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub driver_name: String,
    /// Where snapshot records (ConfigMaps) live.
    pub metadata_namespace: String,
    /// The PVC label naming the etcd cluster a handle volume stands for.
    pub cluster_label: String,
    /// Storage class of the per-snapshot PVCs (`None`: the cluster default).
    pub storage_class: Option<String>,
    /// Image with `/usr/local/bin/etcdctl` and `/usr/local/bin/etcdutl`.
    pub etcd_image: String,
    /// etcdsnap's own image (`/usr/local/bin/etcdsnap`), for the export container.
    pub export_image: String,
    /// Smallest per-snapshot PVC, in bytes.
    pub pvc_min_bytes: u64,
    /// Extra room over the etcd database size, in percent.
    pub pvc_headroom_percent: u64,
    /// The Job's `activeDeadlineSeconds`; a Job still unfinished after it is failed.
    pub job_timeout: Duration,
    pub job_backoff_limit: i32,
    /// Per-request timeout towards etcd members.
    pub etcd_timeout: Duration,
    /// How often the monitor looks at running snapshot Jobs.
    pub poll_interval: Duration,
    /// How long Create waits for etcd's snapshot to be cut before it answers ABORTED (the
    /// sidecar retries); below the csi-snapshotter's `--timeout`.
    pub create_wait: Duration,
}

pub const DEFAULT_ENDPOINT: &str = "unix:///csi/csi.sock";
pub const DEFAULT_DRIVER_NAME: &str = "etcdsnap.lifeboat.dev";
/// The image of the snapshot and restore Jobs (`ETCD_IMAGE`, `restore --image`).
pub const DEFAULT_ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.5.21-0";

/// `DRIVER_NAME`: the CSI driver name (the driver and `etcdsnap restore` read it alike).
pub fn driver_name(env: &mut Env) -> String {
    env.parse_with("DRIVER_NAME", DEFAULT_DRIVER_NAME.to_string(), |s| {
        if ids::is_valid_driver_name(s) {
            Ok(s.to_string())
        } else {
            Err("must match ^[a-zA-Z][A-Za-z0-9-._]{0,61}[a-zA-Z]$ (CSI driver name)".into())
        }
    })
}

/// `METADATA_NAMESPACE`: where the snapshot records live (the driver and `etcdsnap restore`).
pub fn metadata_namespace(env: &mut Env) -> String {
    env.parse_with("METADATA_NAMESPACE", "kube-system".to_string(), |s| {
        if ids::is_dns_label(s) {
            Ok(s.to_string())
        } else {
            Err("must be a Kubernetes namespace name".into())
        }
    })
}

impl Config {
    /// Reads the configuration from `env`; `endpoint_flag` (from `--endpoint`) wins over
    /// `CSI_ENDPOINT`.
    pub fn from_env(mut env: Env, endpoint_flag: Option<String>) -> Result<Config, ConfigError> {
        let endpoint = endpoint_flag.unwrap_or_else(|| env.string_or("CSI_ENDPOINT", DEFAULT_ENDPOINT));
        let socket = match parse_endpoint(&endpoint) {
            Ok(p) => p,
            Err(why) => {
                env.problem("CSI_ENDPOINT", format!("{why}, got {endpoint:?}"));
                PathBuf::new()
            }
        };
        let metrics_addr = env.parse_with("METRICS_ADDR", "0.0.0.0:8080".to_string(), parse_listen_addr);
        let driver_name = driver_name(&mut env);
        let metadata_namespace = metadata_namespace(&mut env);
        let cluster_label = env.parse_with("CLUSTER_LABEL", "etcd.io/cluster".to_string(), |s| {
            if ids::is_label_key(s) {
                Ok(s.to_string())
            } else {
                Err("must be a Kubernetes label key such as etcd.io/cluster".into())
            }
        });
        let storage_class = env.optional("STORAGE_CLASS");
        if let Some(sc) = &storage_class {
            if !ids::is_dns_subdomain(sc) {
                env.problem("STORAGE_CLASS", format!("must be a StorageClass name, got {sc:?}"));
            }
        }
        let etcd_image = env.string_or("ETCD_IMAGE", DEFAULT_ETCD_IMAGE);
        let default_export_image = format!("ghcr.io/kaidotio/lifeboat/etcdsnap:{}", env!("CARGO_PKG_VERSION"));
        let export_image = env.string_or("EXPORT_IMAGE", &default_export_image);
        let pvc_min_bytes = env.parse_or("PVC_MIN_SIZE", "1Gi", parse_quantity);
        let pvc_headroom_percent = env.number_in("PVC_HEADROOM_PERCENT", 50u64, 0, 1000);
        let job_timeout = env.duration_or("JOB_TIMEOUT", Duration::from_secs(600));
        let job_backoff_limit = env.number_in("JOB_BACKOFF_LIMIT", 1i32, 0, 10);
        let etcd_timeout = env.duration_or("ETCD_TIMEOUT", Duration::from_secs(5));
        let poll_interval = env.duration_or("POLL_INTERVAL", Duration::from_secs(2));
        let create_wait = env.duration_or("CREATE_WAIT", Duration::from_secs(45));
        let grpc_threads = env.number_in("GRPC_THREADS", 4usize, 1, 64);
        let shutdown_grace = env.duration_or("SHUTDOWN_GRACE", Duration::from_secs(30));
        if job_timeout < Duration::from_secs(10) {
            env.problem("JOB_TIMEOUT", "must be at least 10s");
        }
        if poll_interval < Duration::from_millis(100) || poll_interval > Duration::from_secs(60) {
            env.problem("POLL_INTERVAL", "must be between 100ms and 60s");
        }
        if create_wait < Duration::from_secs(1) || create_wait > Duration::from_secs(600) {
            env.problem(
                "CREATE_WAIT",
                "must be between 1s and 10m (and below the sidecar's --timeout)",
            );
        }
        if etcd_timeout.is_zero() {
            env.problem("ETCD_TIMEOUT", "must be more than 0");
        }
        env.finish()?;
        Ok(Config {
            socket,
            metrics_addr,
            driver_name: driver_name.clone(),
            engine: EngineConfig {
                driver_name,
                metadata_namespace,
                cluster_label,
                storage_class,
                etcd_image,
                export_image,
                pvc_min_bytes,
                pvc_headroom_percent,
                job_timeout,
                job_backoff_limit,
                etcd_timeout,
                poll_interval,
                create_wait,
            },
            grpc_threads,
            shutdown_grace,
        })
    }
}

/// `unix:///abs/path` or `unix:/abs/path` to the socket path.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, String> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or("expected a unix:///absolute/path endpoint")?;
    if !path.starts_with('/') || path.len() < 2 {
        return Err("expected an absolute socket path (unix:///csi/csi.sock)".into());
    }
    Ok(PathBuf::from(path))
}

/// `:8080` (all interfaces) or `host:port`.
fn parse_listen_addr(s: &str) -> Result<String, String> {
    let addr = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        s.to_string()
    };
    let (_, port) = addr.rsplit_once(':').ok_or("expected host:port or :port")?;
    port.parse::<u16>()
        .map_err(|_| "expected a port number from 0 to 65535".to_string())?;
    Ok(addr)
}

/// A Kubernetes byte quantity (`1073741824`, `512Mi`, `1.5Gi`, `2G`): the rule of
/// [`lifeboat::quantity::bytes`] (0 allowed, as before), rounded up to a whole byte as
/// Kubernetes rounds it.
pub fn parse_quantity(s: &str) -> Result<u64, String> {
    lifeboat::quantity::bytes_at_least(s, 0.0).map(|b| b.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cfg = Config::from_env(Env::from_pairs(Vec::<(String, String)>::new()), None).unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/csi/csi.sock"));
        assert_eq!(cfg.metrics_addr, "0.0.0.0:8080");
        assert_eq!(cfg.driver_name, DEFAULT_DRIVER_NAME);
        assert_eq!(cfg.engine.metadata_namespace, "kube-system");
        assert_eq!(cfg.engine.cluster_label, "etcd.io/cluster");
        assert_eq!(cfg.engine.pvc_min_bytes, 1 << 30);
    }

    #[test]
    fn flag_wins_and_every_problem_is_reported() {
        let env = Env::from_pairs([
            ("CSI_ENDPOINT", "tcp://0.0.0.0:1"),
            ("DRIVER_NAME", "bad name"),
            ("METADATA_NAMESPACE", "Kube_System"),
            ("CLUSTER_LABEL", "a/b/c"),
            ("PVC_MIN_SIZE", "lots"),
            ("METRICS_ADDR", ":99999"),
        ]);
        let err = Config::from_env(env, None).unwrap_err();
        let vars: Vec<_> = err.problems.iter().map(|p| p.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "CSI_ENDPOINT",
                "METRICS_ADDR",
                "DRIVER_NAME",
                "METADATA_NAMESPACE",
                "CLUSTER_LABEL",
                "PVC_MIN_SIZE"
            ]
        );
        let env = Env::from_pairs([("CSI_ENDPOINT", "tcp://0.0.0.0:1"), ("METRICS_ADDR", ":9090")]);
        let cfg = Config::from_env(env, Some("unix:/tmp/x.sock".into())).unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(cfg.metrics_addr, "0.0.0.0:9090");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("512Mi"), Ok(512 << 20));
        assert_eq!(parse_quantity("2G"), Ok(2_000_000_000));
        assert_eq!(parse_quantity("100"), Ok(100));
        // Kubernetes' own grammar, shared with the hook: 1.5Gi is a whole number of bytes.
        assert_eq!(parse_quantity("1.5Gi"), Ok(1610612736));
        assert_eq!(parse_quantity("0"), Ok(0));
        for bad in ["", "Mi", "1Xi", "-1", "100m"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
}
