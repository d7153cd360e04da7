//! The hook's configuration: every environment variable it reads, checked in one pass
//! (all problems reported together, before anything is served), and the same reads declared
//! as its contract (`hook --print-config-schema`). What shapes the injection (VARIANT and the
//! cluster defaults) is read on its own too, for `hook inject`.

use std::path::PathBuf;
use std::time::Duration;

use lifeboat::env::Env;

use crate::annotations::{self, Defaults};
use crate::{framing, litestream_settings, proxy};

/// Everything read from the environment.
pub struct Config {
    pub listen: String,
    pub metrics_listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub reload_interval: Duration,
    pub variant: Option<String>,
    pub defaults: Defaults,
    pub max_body: usize,
    pub limits: proxy::Limits,
    pub workers: usize,
    pub shutdown_timeout: Duration,
    pub socket_dir: PathBuf,
}

/// What shapes the injection (for serving and for `hook inject`): VARIANT and the defaults.
pub fn read_injection(mut env: Env) -> (Env, Option<String>, Defaults) {
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
    let kind = env.parse_or("DEFAULT_TYPE", builtin.kind.name(), annotations::Kind::parse);
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
    // The default target's values; checked together below, by the rule of its type.
    let bucket = env.string_or("DEFAULT_BUCKET", builtin.bucket.as_deref().unwrap_or_default());
    let bucket = (kind != annotations::Kind::Sftp || env.is_set("DEFAULT_BUCKET")).then_some(bucket);
    let [endpoint, region, account, host_key] = [
        "DEFAULT_ENDPOINT",
        "DEFAULT_REGION",
        "DEFAULT_ACCOUNT",
        "DEFAULT_HOST_KEY",
    ]
    .map(|var| env.optional(var));
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
        kind,
        bucket,
        endpoint,
        region,
        account,
        host_key,
        secret,
        storage,
        native_sidecar,
        resources,
    };
    // A value the default type would refuse is a problem; one it needs but lacks is not
    // (Pods then give it).
    if let Err((key, message)) = crate::replica::check(&defaults.target()) {
        let var = format!("DEFAULT_{}", key.to_uppercase().replace('-', "_"));
        if env.is_set(&var) {
            env.problem(&var, format!("{message} (DEFAULT_TYPE is {})", kind.name()));
        }
    }
    (env, variant, defaults)
}

/// `hook --print-config-schema`: what serving reads (its own reads, run against an empty
/// environment, declare it).
pub fn config_schema() -> lifeboat::env::Schema {
    let env = Env::from_pairs(Vec::<(String, String)>::new());
    let schema = env.schema();
    let _ = read_config(env, Ok(log::LevelFilter::Info));
    schema
}

pub fn read_config(env: Env, level: Result<log::LevelFilter, String>) -> Result<Config, lifeboat::env::ConfigError> {
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
