//! The rclone command lines s3sync runs, and the environment they run in.
//!
//! rclone gets its two remotes (`source:` and `dest:`) from `RCLONE_CONFIG_<REMOTE>_*`
//! environment variables with `RCLONE_CONFIG=/dev/null`, so no config file is read or written
//! and no credential is ever in argv (visible in `ps` and `/proc/<pid>/cmdline`). The child's
//! environment is built from scratch: only a few system variables pass through
//! ([`PASS_THROUGH`]), so a stray `RCLONE_*` or `AWS_*` variable in the Pod cannot change what
//! the sync does. The one deliberate exception: a side without static keys runs with rclone's
//! `env_auth`, and then the `AWS_*` credential variables s3sync resolved its own keys from
//! (`lifeboat::s3::credentials::VARS`, as read) pass, with profile files and instance metadata
//! switched off.

use std::process::{Command, Stdio};
use std::time::Duration;

use log::LevelFilter;

use crate::config::{Auth, Bucket, Compare, Config};

/// System variables rclone may need: search path, home, temp dir, time zone, proxies, and
/// the Go TLS trust store location (`SSL_CERT_FILE`/`SSL_CERT_DIR`, for private CAs).
pub const PASS_THROUGH: [&str; 12] = [
    "PATH",
    "HOME",
    "TMPDIR",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// A `Command` for the rclone binary with both remotes configured and nothing else
/// inherited; the child dies with s3sync and leads its own process group (`child::supervise`). The caller adds the subcommand and arguments.
pub fn command(config: &Config) -> Command {
    let mut cmd = Command::new(&config.rclone);
    cmd.env_clear();
    for var in PASS_THROUGH {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.env("RCLONE_CONFIG", "/dev/null");
    // A side without static keys uses rclone's env_auth: it gets the very AWS_* values s3sync
    // resolved its own credentials from, and no profile file or instance metadata (sources
    // s3sync does not follow), so both sign as the same identity.
    if !config.aws_env.is_empty() {
        for (var, value) in &config.aws_env {
            cmd.env(var, value.expose());
        }
        for (var, value) in lifeboat::s3::credentials::RCLONE_ENV {
            cmd.env(var, value);
        }
    }
    for bucket in [&config.source, &config.dest] {
        for (key, value) in remote_env(bucket) {
            cmd.env(key, value);
        }
    }
    cmd.stdin(Stdio::null());
    crate::child::supervise(&mut cmd);
    cmd
}

/// The `RCLONE_CONFIG_<REMOTE>_*` variables describing one bucket's remote.
fn remote_env(b: &Bucket) -> Vec<(String, String)> {
    let name = b.role.remote().to_ascii_uppercase();
    let var = |key: &str| format!("RCLONE_CONFIG_{name}_{key}");
    let auth = match &b.auth {
        Auth::Static { access_key, secret_key } => vec![
            (var("ENV_AUTH"), "false".into()),
            (var("ACCESS_KEY_ID"), access_key.expose().into()),
            (var("SECRET_ACCESS_KEY"), secret_key.expose().into()),
        ],
        Auth::Platform(_) => vec![(var("ENV_AUTH"), "true".into())],
    };
    let mut out = vec![
        (var("TYPE"), "s3".into()),
        (var("PROVIDER"), b.provider.clone()),
        (var("ENDPOINT"), b.endpoint.clone()),
        (var("REGION"), b.region.clone()),
        (var("FORCE_PATH_STYLE"), b.path_style.to_string()),
        // rclone's S3 default minus `Dot`: with it, keys with `.`/`..` segments fail to copy
        // (measured: "Failed to copy ... NoSuchKey", exit 4, and then no deletion ever runs);
        // without it they are copied byte for byte (S3 to S3, both sides the same encoding).
        (var("ENCODING"), "Slash,InvalidUtf8".into()),
    ];
    out.extend(auth);
    out
}

/// Flags every rclone run gets: JSON logs, bounded connection handling.
fn common_args(config: &Config, log_level: &str, io_timeout: Duration) -> Vec<String> {
    vec![
        "--use-json-log".into(),
        "--log-level".into(),
        log_level.into(),
        "--low-level-retries".into(),
        config.low_level_retries.to_string(),
        "--contimeout".into(),
        go_duration(config.connect_timeout),
        "--timeout".into(),
        go_duration(io_timeout),
    ]
}

/// rclone's log level for our `LOG_LEVEL`: rclone logs at least NOTICE (its stats and
/// closing lines are notices); our logger then drops what LOG_LEVEL does not want.
pub fn log_level_for(level: LevelFilter) -> &'static str {
    match level {
        LevelFilter::Debug | LevelFilter::Trace => "DEBUG",
        LevelFilter::Info => "INFO",
        _ => "NOTICE",
    }
}

/// The arguments of the sync itself. `max_delete`: the deletions the plan allows (`None` =
/// unlimited), passed as `--max-delete`, a backstop should the source change after the plan.
/// `server_side`: both sides are one service and identity (`overlap::server_side`), so
/// objects are copied by the server (`--server-side-across-configs`), not through this Pod.
pub fn sync_args(config: &Config, max_delete: Option<u64>, server_side: bool) -> Vec<String> {
    let mut args = vec!["sync".into(), config.source.rclone_path(), config.dest.rclone_path()];
    let level = match log_level_for(config.log_level) {
        // INFO is where rclone logs each object; LOG_OBJECTS=false keeps those lines out.
        "INFO" if !config.log_objects => "NOTICE",
        level => level,
    };
    args.extend(common_args(config, level, config.io_timeout));
    args.extend([
        "--stats".into(),
        go_duration(config.stats_interval),
        "--stats-log-level".into(),
        "NOTICE".into(),
        "--retries".into(),
        config.retries.to_string(),
        "--transfers".into(),
        config.transfers.to_string(),
        "--checkers".into(),
        config.checkers.to_string(),
        // Both buckets were checked by the pre-flight; this saves a request per upload and
        // means the sync never creates a bucket.
        "--s3-no-check-bucket".into(),
    ]);
    match config.compare {
        Compare::Checksum => args.push("--checksum".into()),
        Compare::Modtime => {}
        Compare::Size => args.push("--size-only".into()),
    }
    if config.fast_list {
        args.push("--fast-list".into());
    }
    if server_side {
        // The two remotes are one service: CopyObject instead of download and upload.
        args.push("--server-side-across-configs".into());
    }
    if let Some(b) = &config.backup {
        // Deleted and overwritten objects are moved here instead (server-side, same remote).
        args.push("--backup-dir".into());
        args.push(backup_dir(b, std::time::SystemTime::now()));
    }
    if let Some(n) = max_delete {
        args.push("--max-delete".into());
        args.push(n.to_string());
    }
    if let Some(rate) = &config.bwlimit {
        args.push("--bwlimit".into());
        args.push(rate.clone());
    }
    if let Some(d) = config.max_duration {
        args.push("--max-duration".into());
        args.push(go_duration(d));
    }
    if config.dry_run {
        args.push("--dry-run".into());
    }
    args
}

/// `dest:<bucket>/<prefix>/<UTC time>/`, one folder per run (`2026-12-01T102833Z`).
pub fn backup_dir(b: &crate::config::Backup, now: std::time::SystemTime) -> String {
    let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let (stamp, _) = lifeboat::s3::sigv4::amz_dates(secs);
    let stamp = format!("{}-{}-{}{}", &stamp[..4], &stamp[4..6], &stamp[6..8], &stamp[8..]);
    format!("dest:{}/{}/{stamp}/", b.bucket, b.prefix)
}

/// A duration in Go's syntax, which rclone parses (`1500ms`, `90s`).
fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat::env::Env;

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut pairs = vec![
            ("SOURCE_S3_ENDPOINT", "http://127.0.0.1:1"),
            ("SOURCE_ACCESS_KEY", "AKIA-SOURCE-XYZ"),
            ("SOURCE_SECRET_KEY", "source-secret-xyz"),
            ("SOURCE_BUCKET", "src"),
            ("DEST_S3_ENDPOINT", "http://127.0.0.1:2"),
            ("DEST_ACCESS_KEY", "AKIA-DEST-XYZ"),
            ("DEST_SECRET_KEY", "dest-secret-xyz"),
            ("DEST_BUCKET", "dst"),
            ("DEST_PREFIX", "/"),
            ("RCLONE_BINARY", "/bin/sh"),
        ];
        pairs.extend_from_slice(extra);
        crate::config::from_env(Env::from_pairs(pairs), Ok(LevelFilter::Info)).unwrap()
    }

    #[test]
    fn argv_has_no_secrets_and_env_has_remotes() {
        let c = config(&[]);
        let cmd = command(&c);
        let argv = sync_args(&c, Some(1000), false).join(" ");
        for secret in [
            "AKIA-SOURCE-XYZ",
            "source-secret-xyz",
            "AKIA-DEST-XYZ",
            "dest-secret-xyz",
        ] {
            assert!(!argv.contains(secret), "{argv}");
        }
        let envs: Vec<(String, String)> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_string_lossy().into_owned(), v?.to_string_lossy().into_owned())))
            .collect();
        let get = |k: &str| envs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RCLONE_CONFIG"), Some("/dev/null"));
        assert_eq!(get("RCLONE_CONFIG_SOURCE_SECRET_ACCESS_KEY"), Some("source-secret-xyz"));
        assert_eq!(get("RCLONE_CONFIG_DEST_ENDPOINT"), Some("http://127.0.0.1:2"));
        assert_eq!(get("RCLONE_CONFIG_DEST_ENV_AUTH"), Some("false"));
    }

    #[test]
    fn a_side_without_keys_gets_env_auth_and_exactly_the_variables_read() {
        let pairs = [
            ("SOURCE_S3_ENDPOINT", "http://127.0.0.1:1"),
            ("SOURCE_BUCKET", "src"),
            ("DEST_S3_ENDPOINT", "http://127.0.0.1:2"),
            ("DEST_ACCESS_KEY", "AKIA-DEST-XYZ"),
            ("DEST_SECRET_KEY", "dest-secret-xyz"),
            ("DEST_BUCKET", "dst"),
            ("DEST_PREFIX", "/"),
            ("RCLONE_BINARY", "/bin/sh"),
            ("AWS_ACCESS_KEY_ID", "AKIA-ENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret "),
            ("AWS_SESSION_TOKEN", "env-token"),
        ];
        let c = crate::config::from_env(Env::from_pairs(pairs), Ok(LevelFilter::Info)).unwrap();
        let cmd = command(&c);
        let envs: Vec<(String, String)> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_string_lossy().into_owned(), v?.to_string_lossy().into_owned())))
            .collect();
        let get = |k: &str| envs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RCLONE_CONFIG_SOURCE_ENV_AUTH"), Some("true"));
        assert_eq!(get("RCLONE_CONFIG_SOURCE_ACCESS_KEY_ID"), None);
        assert_eq!(get("RCLONE_CONFIG_DEST_ENV_AUTH"), Some("false"));
        // The values as read, untrimmed; no profile file, no instance metadata.
        assert_eq!(get("AWS_SECRET_ACCESS_KEY"), Some("env-secret "));
        assert_eq!(get("AWS_SESSION_TOKEN"), Some("env-token"));
        assert_eq!(get("AWS_SHARED_CREDENTIALS_FILE"), Some("/dev/null"));
        assert_eq!(get("AWS_EC2_METADATA_DISABLED"), Some("true"));
        // Both sides with static keys: no AWS_* variable reaches rclone.
        let c = config(&[
            ("AWS_ACCESS_KEY_ID", "AKIA-ENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
        ]);
        assert!(command(&c)
            .get_envs()
            .all(|(k, _)| !k.to_string_lossy().starts_with("AWS_")));
    }

    #[test]
    fn sync_flags_follow_config() {
        let c = config(&[]);
        let args = sync_args(&c, Some(1000), false);
        let s = args.join(" ");
        assert!(s.starts_with("sync source:src/ dest:dst/ "), "{s}");
        assert!(s.contains("--checksum") && s.contains("--fast-list") && s.contains("--max-delete 1000"));
        assert!(s.contains("--retries 3 ") && s.contains("--low-level-retries 3 ") && s.contains("--contimeout 10s"));
        assert!(!s.contains("--dry-run") && !s.contains("--bwlimit"));

        let c = config(&[
            ("COMPARE", "size"),
            ("MAX_DELETE", "unlimited"),
            ("DRY_RUN", "true"),
            ("FAST_LIST", "false"),
            ("BANDWIDTH_LIMIT", "1M"),
            ("MAX_DURATION", "1h30m"),
            ("SOURCE_PREFIX", "a/b"),
        ]);
        let s = sync_args(&c, None, false).join(" ");
        assert!(s.starts_with("sync source:src/a/b/ dest:dst/ "), "{s}");
        assert!(s.contains("--size-only") && !s.contains("--checksum") && !s.contains("--max-delete"));
        assert!(s.contains("--dry-run") && !s.contains("--fast-list") && s.contains("--bwlimit 1M"));
        assert!(s.contains("--max-duration 5400s"), "{s}");
    }

    #[test]
    fn backup_dirs_are_dated() {
        let b = crate::config::Backup {
            bucket: "bk".into(),
            prefix: "deleted".into(),
        };
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(backup_dir(&b, t), "dest:bk/deleted/2015-08-30T123600Z/");
        let c = config(&[("BACKUP_PREFIX", "deleted"), ("DEST_PREFIX", "live")]);
        assert!(sync_args(&c, None, false)
            .join(" ")
            .contains("--backup-dir dest:dst/deleted/"));
    }

    #[test]
    fn durations_for_go() {
        assert_eq!(go_duration(Duration::from_secs(90)), "90s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }
}
