//! hook: a mutating admission webhook that injects Litestream into annotated Pods.
//!
//! Data flow: `proxy` (TCP accept, rustls with certificates from `tls`) → `http` (tiny_http
//! on a private Unix socket) → `admission` (AdmissionReview in/out) → `annotations` (what the
//! Pod asks for) → `inject` (the JSON Patch) with `litestream_config` (the Litestream config).
//! Configuration is read and checked by `config`; metrics and health are served on plain HTTP
//! by `lifeboat::ops_http`.
//!
//! `hook inject -f FILE` runs the same decision offline (see `offline`).
//! `hook write-config FILE` is the other mode: the init container that writes the config
//! from its environment into the Pod's config volume (see `litestream_config`).

mod admission;
mod alloc;
mod annotations;
mod config;
mod conflicts;
mod fds;
mod framing;
mod host_key;
mod http;
mod inject;
mod litestream_config;
mod litestream_settings;
mod metrics;
mod offline;
mod pod;
mod proxy;
mod region;
mod replica;
mod replica_paths;
mod run;
mod tls;
mod values;

/// glibc malloc, except while the large lane reviews a request (`region`).
#[global_allocator]
static ALLOCATOR: region::Allocator = region::Allocator;

use std::sync::Arc;
use std::time::Instant;

use lifeboat::env::Env;
use lifeboat::metrics::Registry;
use lifeboat::ops_http::{OpsServer, ReadyCheck};
use lifeboat::shutdown::{signal_name, Shutdown};

use config::{config_schema, read_config, read_injection, Config};

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
    // Serving: before any thread starts, so once more with the C library's tunables (`alloc`).
    if let Err(e) = alloc::with_tunables() {
        log::warn!(error = e.as_str(); "serving with the C library's default thread stack cache and per-thread cache of freed blocks; memory use may be higher");
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
    // Before any thread starts (see `alloc`).
    let refused = alloc::tune();
    if !refused.is_empty() {
        log::warn!(settings:? = refused; "the C library refused some malloc settings; memory use may be higher");
    }
    if let Err(e) = region::init() {
        log::warn!(error = e.as_str(); "large requests are parsed in the shared malloc arenas; memory use may be higher");
    }
    let shutdown = Shutdown::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let metrics = Registry::new();
    metrics::declare(&metrics);
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
