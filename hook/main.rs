//! hook: a mutating admission webhook that injects Litestream into annotated Pods.
//!
//! Data flow: `proxy` (TCP accept, rustls with certificates from `tls`) → `http` (tiny_http
//! on a private Unix socket) → `admission` (AdmissionReview in/out) → `annotations` (what the
//! Pod asks for) → `inject` (the JSON Patch) with `litestream_config` (the Litestream config).
//! Metrics and health are served on plain HTTP by `lifeboat::ops_http`.
//!
//! `hook inject -f FILE` runs the same decision offline (see `offline`).
//! `hook write-config FILE` is the other mode: the init container that writes the config
//! from its environment into the Pod's config volume (see `litestream_config`).

mod admission;
mod annotations;
mod conflicts;
mod fds;
mod framing;
mod http;
mod inject;
mod litestream_config;
mod litestream_settings;
mod offline;
mod pod;
mod proxy;
mod replica_paths;
mod run;
mod tls;
mod values;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat::env::Env;
use lifeboat::metrics::{Registry, LATENCY_BUCKETS};
use lifeboat::ops_http::{OpsServer, ReadyCheck};
use lifeboat::shutdown::{signal_name, Shutdown};

use annotations::Defaults;

/// Everything read from the environment.
struct Config {
    listen: String,
    metrics_listen: String,
    cert: PathBuf,
    key: PathBuf,
    reload_interval: Duration,
    variant: Option<String>,
    defaults: Defaults,
    max_body: usize,
    limits: proxy::Limits,
    workers: usize,
    shutdown_timeout: Duration,
    socket_dir: PathBuf,
}

/// What shapes the injection (for serving and for `hook inject`): VARIANT and the defaults.
fn read_injection(mut env: Env) -> (Env, Option<String>, Defaults) {
    let builtin = Defaults::default();
    let variant = env.dns_label("VARIANT", 20);
    let hook_image = env.parse_with("HOOK_IMAGE", String::new(), |v| {
        annotations::check_image(v).map(|_| v.to_string())
    });
    env.require(
        "HOOK_IMAGE",
        "is missing (the image of this hook, which writes the Litestream config in each Pod)",
    );
    let checked = |env: &mut Env, var: &str, default: &str, check: fn(&str) -> Result<(), String>| {
        env.parse_with(var, default.to_string(), |v| check(v).map(|_| v.to_string()))
    };
    let image = checked(&mut env, "LITESTREAM_IMAGE", &builtin.image, annotations::check_image);
    let bucket = checked(&mut env, "DEFAULT_BUCKET", &builtin.bucket, annotations::check_bucket);
    let secret = checked(
        &mut env,
        "DEFAULT_SECRET",
        &builtin.secret,
        annotations::check_dns_subdomain,
    );
    let storage = checked(
        &mut env,
        "DEFAULT_STORAGE",
        &builtin.storage,
        annotations::check_quantity,
    );
    let endpoint = env.parse_with("DEFAULT_ENDPOINT", None, |v| {
        annotations::check_endpoint(v).map(|_| Some(v.to_string()))
    });
    let region = env.parse_with("DEFAULT_REGION", None, |v| {
        annotations::check_region(v).map(|_| Some(v.to_string()))
    });
    let native_sidecar = env.bool("NATIVE_SIDECAR", true);
    // Requests and limits of injected containers; `none` leaves one out.
    let quantity = |env: &mut Env, var: &str, default: Option<String>, check: fn(&str) -> Result<f64, String>| {
        env.parse_with(var, default, |v| match v {
            "none" => Ok(None),
            v => check(v).map(|_| Some(v.to_string())),
        })
    };
    let base = annotations::Resources::builtin();
    let resources = annotations::Resources {
        cpu_request: quantity(
            &mut env,
            "DEFAULT_CPU_REQUEST",
            base.cpu_request,
            annotations::check_cpu,
        ),
        cpu_limit: quantity(&mut env, "DEFAULT_CPU_LIMIT", base.cpu_limit, annotations::check_cpu),
        memory_request: quantity(
            &mut env,
            "DEFAULT_MEMORY_REQUEST",
            base.memory_request,
            annotations::check_bytes,
        ),
        memory_limit: quantity(
            &mut env,
            "DEFAULT_MEMORY_LIMIT",
            base.memory_limit,
            annotations::check_bytes,
        ),
    };
    if let Err((what, message)) = resources.check() {
        env.problem(&format!("DEFAULT_{}_REQUEST", what.to_uppercase()), &message);
    }
    // Litestream settings (litestream_settings::SETTINGS), each by its own name.
    let tuning = litestream_settings::Tuning {
        sync_interval: litestream_settings::read_default(&mut env, "DEFAULT_SYNC_INTERVAL"),
        snapshot_interval: litestream_settings::read_default(&mut env, "DEFAULT_SNAPSHOT_INTERVAL"),
        retention: litestream_settings::read_default(&mut env, "DEFAULT_RETENTION"),
        validation_interval: litestream_settings::read_default(&mut env, "DEFAULT_VALIDATION_INTERVAL"),
    };
    let defaults = Defaults {
        tuning,
        image,
        hook_image,
        bucket,
        secret,
        storage,
        endpoint,
        region,
        native_sidecar,
        resources,
    };
    (env, variant, defaults)
}

/// `hook --print-config-schema`: what serving reads (its own reads, run against an empty
/// environment, declare it).
fn config_schema() -> lifeboat::env::Schema {
    let env = Env::from_pairs(Vec::<(String, String)>::new());
    let schema = env.schema();
    let _ = read_config(env, Ok(log::LevelFilter::Info));
    schema
}

fn read_config(env: Env, level: Result<log::LevelFilter, String>) -> Result<Config, lifeboat::env::ConfigError> {
    let (mut env, variant, defaults) = read_injection(env);
    env.log_level(level);
    let listen = env.string_or("LISTEN_ADDR", "0.0.0.0:9443");
    let metrics_listen = env.string_or("METRICS_ADDR", "0.0.0.0:8080");
    let cert = PathBuf::from(env.required("TLS_CERT_FILE"));
    let key = PathBuf::from(env.required("TLS_KEY_FILE"));
    let reload_interval = env
        .duration_or("TLS_RELOAD_INTERVAL", Duration::from_secs(1))
        .max(Duration::from_millis(10));
    // The API server refuses request bodies over 3 MiB (its MaxRequestBodyBytes: twice etcd's
    // 1.5 MiB, for JSON against protobuf), so the Pod in an AdmissionReview is at most that;
    // 256 KiB more covers the envelope (userInfo, options) and earlier webhooks' additions.
    let max_body = env.number_in("MAX_BODY_BYTES", 3 * 1024 * 1024 + 256 * 1024, 4096, 256 * 1024 * 1024);
    let max_head = env.number_in("MAX_HEADER_BYTES", 32 * 1024, 1024, 1024 * 1024);
    let request_timeout = env.duration_or("REQUEST_TIMEOUT", Duration::from_secs(10));
    let max_connections = env.number_in("MAX_CONNECTIONS", 256, 1, 10_000);
    let workers = env.number_in("WORKERS", 4, 1, 256);
    let handshake_timeout = env.duration_or("HANDSHAKE_TIMEOUT", Duration::from_secs(10));
    let idle_timeout = env.duration_or("IDLE_TIMEOUT", Duration::from_secs(120));
    let shutdown_timeout = env.duration_or("SHUTDOWN_TIMEOUT", Duration::from_secs(25));
    let socket_dir = env
        .optional("SOCKET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    env.finish()?;
    Ok(Config {
        listen,
        metrics_listen,
        cert,
        key,
        reload_interval,
        variant,
        defaults,
        max_body,
        limits: proxy::Limits {
            max_connections,
            handshake_timeout,
            idle_timeout,
            request: framing::Limits {
                max_head,
                max_body,
                request_timeout,
            },
        },
        workers,
        shutdown_timeout,
        socket_dir,
    })
}

fn declare(metrics: &Registry) {
    metrics.counter(
        "hook_requests_total",
        "HTTP requests on the admission endpoint, by status code.",
    );
    metrics.counter(
        "hook_admissions_total",
        "Admission decisions, by result (injected, skipped, denied, invalid).",
    );
    metrics.counter("hook_injections_total", "Pods that got Litestream injected.");
    metrics.counter("hook_denials_total", "Pods denied, by the annotation at fault.");
    metrics.counter(
        "hook_errors_total",
        "Errors, by kind (accept, handshake, too_large, content_type, invalid, ...).",
    );
    metrics.counter(
        "hook_backend_kicks_total",
        "Wake-ups sent to the HTTP layer for a request left unanswered (see proxy::watchdog).",
    );
    metrics.counter(
        "hook_tls_reloads_total",
        "Certificate reloads after the files changed, by result.",
    );
    metrics.histogram(
        "hook_request_duration_seconds",
        "Time from a request's headers to its response, in seconds.",
        LATENCY_BUCKETS,
    );
}

fn main() {
    let level = lifeboat::log::init_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("write-config") {
        std::process::exit(write_config(&args[1..]));
    }
    if args.first().map(String::as_str) == Some("inject") {
        std::process::exit(inject(&args[1..]));
    }
    if args.first().map(String::as_str) == Some("--print-config-schema") {
        println!("{}", config_schema().to_json());
        return;
    }
    if let Some(arg) = args.first() {
        log::error!(argument = arg.as_str(); "unknown argument; usage: hook (serve) | hook inject -f FILE [-n NAMESPACE] | hook write-config FILE | hook --print-config-schema");
        std::process::exit(2);
    }
    let config = match read_config(Env::from_process(), level) {
        Ok(c) => c,
        Err(e) => {
            log::error!(error:% = e; "cannot start");
            std::process::exit(2);
        }
    };
    match serve(config) {
        Ok(()) => {}
        Err(e) => {
            log::error!(error = e.as_str(); "cannot start");
            std::process::exit(1);
        }
    }
}

/// `hook inject`: the configuration of serving minus the serving part (see `offline`).
fn inject(args: &[String]) -> i32 {
    let (env, variant, defaults) = read_injection(Env::from_process());
    if let Err(e) = env.finish() {
        log::error!(error:% = e; "cannot inject");
        return 2;
    }
    let config = admission::Config {
        prefix: annotations::prefix_for(variant.as_deref()),
        names: inject::Names::new(variant.as_deref()),
        defaults,
    };
    offline::run(args, &config)
}

fn write_config(args: &[String]) -> i32 {
    let [file] = args else {
        log::error!(
            "usage: hook write-config FILE (the config comes from {})",
            litestream_config::CONFIG_ENV
        );
        return 2;
    };
    match litestream_config::write_from_env(std::path::Path::new(file)) {
        Ok(()) => {
            log::info!(file = file.as_str(); "Litestream config written");
            0
        }
        Err(e) => {
            log::error!(error = e.as_str(); "cannot write the Litestream config");
            1
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    let started = Instant::now();
    let shutdown = Shutdown::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let metrics = Registry::new();
    declare(&metrics);
    let certs = tls::start(
        config.cert.clone(),
        config.key.clone(),
        config.reload_interval,
        metrics.clone(),
        shutdown.clone(),
    )?;
    let open_files = open_files_limit(config.limits.max_connections);
    let prefix = annotations::prefix_for(config.variant.as_deref());
    let app = Arc::new(http::App {
        admission: admission::Config {
            prefix: prefix.clone(),
            names: inject::Names::new(config.variant.as_deref()),
            defaults: config.defaults.clone(),
        },
        metrics: metrics.clone(),
        max_body: config.max_body,
    });
    let backend = http::Backend::start(&config.socket_dir, config.workers, app)?;
    let mut front = proxy::Front::start(
        &config.listen,
        tls::server_config(certs),
        Arc::clone(&backend),
        metrics.clone(),
        config.limits,
    )?;
    let ready: ReadyCheck = Arc::new(|| Ok(()));
    let ops = OpsServer::start(&config.metrics_listen, metrics, ready, shutdown.clone())?;
    log::info!(
        addr:% = front.addr(),
        metrics_addr:% = ops.addr(),
        annotation_prefix = prefix.as_str(),
        open_files_limit = open_files,
        startup_ms = started.elapsed().as_millis() as u64;
        "serving"
    );
    let signal = shutdown.wait();
    let open = front.connections();
    log::info!(signal = signal_name(signal), open_connections = open; "stopping: finishing in-flight requests");
    let clean = front.drain(config.shutdown_timeout);
    backend.remove_socket_dir();
    if clean {
        log::info!("stopped");
    } else {
        log::warn!(timeout_s = config.shutdown_timeout.as_secs(); "stopped with connections still open after the shutdown timeout");
    }
    drop(ops);
    Ok(())
}

/// Raises the open files limit to its hard maximum and warns when `max_connections` cannot fit.
fn open_files_limit(max_connections: usize) -> Option<u64> {
    match fds::raise() {
        Ok(limit) => {
            let fit = fds::connections_that_fit(limit.now);
            if fit < max_connections as u64 {
                log::warn!(
                    max_connections = max_connections,
                    open_files_limit = limit.now,
                    descriptors_per_connection = fds::PER_CONNECTION,
                    connections_that_fit = fit;
                    "MAX_CONNECTIONS does not fit in the open files limit: lower it or raise the limit, or connections beyond {fit} will fail"
                );
            }
            Some(limit.now)
        }
        Err(e) => {
            log::warn!(error:% = e; "cannot read the open files limit");
            None
        }
    }
}
