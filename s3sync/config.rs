//! s3sync's configuration: every environment variable it reads, validated in one pass.
//!
//! [`from_env`] reads all variables through [`lifeboat::env::Env`], so a broken Job spec is
//! reported with every problem at once, before any network call. Secret values are kept in
//! [`Secret`], whose `Debug` never shows them; they leave this process only as environment
//! variables of the rclone child (see `rclone.rs`).
//!
//! Longer than the ~500-line guide (about 700 lines before its tests): it is the one table of
//! every variable with its check, read in one pass; split by topic, the cross-checks between
//! variables (both keys or neither, the overlap of the two sides, limits) would span files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifeboat::env::Env;
use lifeboat::s3::credentials::{self, Provider};
pub use lifeboat::secret::Secret;
use log::LevelFilter;

/// Which bucket of the two: decides the variable prefix and the rclone remote name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Source,
    Dest,
}

impl Role {
    /// The prefix of this side's variables: `SOURCE_` or `DEST_`.
    pub fn var_prefix(self) -> &'static str {
        match self {
            Role::Source => "SOURCE_",
            Role::Dest => "DEST_",
        }
    }

    /// The rclone remote name (also the `RCLONE_CONFIG_<NAME>_*` infix).
    pub fn remote(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Dest => "dest",
        }
    }

    /// A word for messages.
    pub fn word(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Dest => "destination",
        }
    }
}

/// One bucket: where it is, how to reach it, which part of it is synced.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub role: Role,
    pub endpoint: String,
    pub auth: Auth,
    pub bucket: String,
    /// The key prefix inside the bucket, without leading or trailing `/`; empty = whole bucket.
    pub prefix: String,
    pub region: String,
    pub provider: String,
    pub path_style: bool,
}

impl Bucket {
    /// The rclone path of the synced part, e.g. `source:my-bucket/daily/`.
    ///
    /// A prefix is a folder: the trailing `/` keeps rclone from treating the path as one
    /// object when an object with exactly the prefix's name exists (rclone's S3 backend checks
    /// for that object only for a root without a trailing `/`; with objects `db`, `db/1`,
    /// `db/2` and prefix `db` it would sync the single object `db` and leave `db/...` alone).
    pub fn rclone_path(&self) -> String {
        format!("{}:{}/{}", self.role.remote(), self.bucket, self.key_prefix())
    }

    /// Where the bucket lives, for lifeboat's own S3 client.
    pub fn location(&self) -> lifeboat::s3::Location {
        lifeboat::s3::Location {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
        }
    }

    /// Where this side's signing keys come from, shared by every client of the run.
    pub fn provider(&self) -> Arc<Provider> {
        match &self.auth {
            Auth::Static { access_key, secret_key } => Arc::new(Provider::fixed(lifeboat::s3::Credentials {
                access_key: access_key.expose().to_string(),
                secret_key: secret_key.clone(),
                session_token: None,
            })),
            Auth::Platform(p) => p.clone(),
        }
    }

    /// The prefix as S3 keys start with it: empty, or `prefix/`.
    pub fn key_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// `bucket/prefix` for log lines.
    pub fn display(&self) -> String {
        if self.prefix.is_empty() {
            self.bucket.clone()
        } else {
            format!("{}/{}", self.bucket, self.prefix)
        }
    }
}

/// How one side authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    /// `<SIDE>_ACCESS_KEY` and `<SIDE>_SECRET_KEY`.
    Static { access_key: Secret, secret_key: Secret },
    /// Neither is set: the platform's credentials (rclone's `env_auth`), resolved by
    /// `lifeboat::s3::credentials` from the variables in `Config::aws_env`.
    Platform(Arc<Provider>),
}

/// How rclone decides that an object is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Size and MD5 from the listing (`--checksum`); no per-object requests.
    Checksum,
    /// rclone's default: size and modification time (one HEAD per object on S3).
    Modtime,
    /// Size only (`--size-only`).
    Size,
}

impl Compare {
    pub fn name(self) -> &'static str {
        match self {
            Compare::Checksum => "checksum",
            Compare::Modtime => "modtime",
            Compare::Size => "size",
        }
    }
}

/// The deletion limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxDelete {
    /// At most this many objects deleted per run; 0 = delete nothing.
    Limit(u64),
    Unlimited,
}

/// Everything s3sync needs to run, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: Bucket,
    pub dest: Bucket,
    pub dry_run: bool,
    pub max_delete: MaxDelete,
    /// At most this percentage of the destination's objects deleted per run (100 = no limit).
    pub max_delete_percent: u8,
    pub allow_empty_source: bool,
    /// Skip (with a warning) keys rclone cannot represent instead of refusing the run.
    pub allow_uncopyable_keys: bool,
    /// Compare both sides after the sync with s3sync's own S3 client.
    pub verify: bool,
    /// Copy server-side (`--server-side-across-configs`) when both sides are one service
    /// signed by one identity (`overlap::server_side`); false = always through s3sync's Pod.
    pub server_side_copy: bool,
    /// The most objects one side's listing may hold (memory bound).
    pub max_objects: usize,
    /// The longest one side's full listing may take.
    pub list_timeout: Duration,
    pub compare: Compare,
    pub fast_list: bool,
    pub retries: u32,
    pub low_level_retries: u32,
    pub transfers: u32,
    pub checkers: u32,
    pub bwlimit: Option<String>,
    pub max_duration: Option<Duration>,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub stats_interval: Duration,
    /// How long rclone gets after SIGTERM before it and its process group are killed.
    pub stop_grace: Duration,
    /// The longest the rclone sync may run before it is stopped (exit 5, kind timeout).
    pub sync_timeout: Option<Duration>,
    pub rclone: PathBuf,
    pub log_level: LevelFilter,
    /// rclone logs every copied and deleted object (at LOG_LEVEL info or more verbose).
    pub log_objects: bool,
    /// Soft deletes: where deleted and overwritten destination objects are moved
    /// (`BACKUP_BUCKET` on the destination endpoint, `BACKUP_PREFIX`, then a dated folder).
    pub backup: Option<Backup>,
    /// Where the run's metrics are written (Prometheus textfile), if anywhere.
    pub metrics_file: Option<PathBuf>,
    /// A Pushgateway to push the run's metrics to, if any.
    pub metrics_push_url: Option<String>,
    /// When a side uses the platform's credentials: the `AWS_*` variables they were resolved
    /// from, exactly as read, for rclone's environment (empty otherwise).
    pub aws_env: Vec<(&'static str, Secret)>,
}

/// The soft-delete location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub bucket: String,
    /// Without leading or trailing `/`; never empty.
    pub prefix: String,
}

/// Reads and validates the whole configuration. `log_level` is the outcome of reading
/// `LOG_LEVEL` (done first, to set up logging), reported here with the other problems.
pub fn from_env(mut env: Env, log_level: Result<LevelFilter, String>) -> Result<Config, lifeboat::env::ConfigError> {
    let log_level = env.log_level(log_level);
    let mut source = bucket(&mut env, Role::Source);
    let mut dest = bucket(&mut env, Role::Dest);
    let dry_run = env.bool("DRY_RUN", false);
    let max_delete = env.parse_or("MAX_DELETE", "1000", parse_max_delete);
    let max_delete_percent = env.number_in("MAX_DELETE_PERCENT", 50u8, 0, 100);
    let allow_empty_source = env.bool("ALLOW_EMPTY_SOURCE", false);
    let allow_uncopyable_keys = env.bool("ALLOW_UNCOPYABLE_KEYS", false);
    let verify = env.bool("VERIFY", true);
    let server_side_copy = env.bool("SERVER_SIDE_COPY", true);
    let log_objects = env.bool("LOG_OBJECTS", true);
    let metrics_file = env.optional("METRICS_FILE").map(PathBuf::from);
    if let Some(p) = &metrics_file {
        if !p.parent().is_some_and(|d| d.as_os_str().is_empty() || d.is_dir()) {
            env.problem(
                "METRICS_FILE",
                format!("its folder does not exist, got {:?}", p.display().to_string()),
            );
        }
    }
    let metrics_push_url = env.optional("METRICS_PUSH_URL");
    if let Some(u) = &metrics_push_url {
        if let Err(why) = check_endpoint(u) {
            env.problem("METRICS_PUSH_URL", why);
        }
    }
    let backup_prefix = env.parse_with("BACKUP_PREFIX", String::new(), parse_prefix);
    let backup_bucket = env.optional("BACKUP_BUCKET");
    if let Some(b) = &backup_bucket {
        if let Err(why) = check_bucket(b) {
            env.problem("BACKUP_BUCKET", format!("{why}, got {b:?}"));
        }
    }
    let backup = if backup_prefix.is_empty() {
        if backup_bucket.is_some() {
            env.problem(
                "BACKUP_PREFIX",
                "is required with BACKUP_BUCKET (a folder such as deleted)",
            );
        }
        None
    } else {
        Some(Backup {
            bucket: backup_bucket.unwrap_or_else(|| dest.bucket.clone()),
            prefix: backup_prefix,
        })
    };
    if let Some(b) = &backup {
        if b.bucket == dest.bucket && overlaps(&b.prefix, &dest.prefix) {
            env.problem(
                "BACKUP_PREFIX",
                "must not overlap DEST_PREFIX in the destination bucket (the sync owns that folder; use a sibling folder or BACKUP_BUCKET)",
            );
        }
    }
    let max_objects = env.number_in("MAX_OBJECTS", 2_000_000usize, 1, 100_000_000);
    let list_timeout = positive_duration(&mut env, "LIST_TIMEOUT", Duration::from_secs(600));
    let compare = env.parse_or("COMPARE", "checksum", |s| match s.to_ascii_lowercase().as_str() {
        "checksum" => Ok(Compare::Checksum),
        "modtime" => Ok(Compare::Modtime),
        "size" => Ok(Compare::Size),
        _ => Err("expected checksum, modtime or size".into()),
    });
    let fast_list = env.bool("FAST_LIST", true);
    let retries = env.number_in("RETRIES", 3u32, 1, 100);
    let low_level_retries = env.number_in("LOW_LEVEL_RETRIES", 3u32, 1, 100);
    let transfers = env.number_in("TRANSFERS", 4u32, 1, 256);
    let checkers = env.number_in("CHECKERS", 8u32, 1, 1024);
    let bwlimit = env.parse_with("BANDWIDTH_LIMIT", None, |s| parse_bwlimit(s).map(Some));
    let max_duration = env.duration("MAX_DURATION", None);
    if max_duration == Some(Duration::ZERO) {
        env.problem("MAX_DURATION", "must be longer than 0 (unset it for no limit)");
    }
    let connect_timeout = positive_duration(&mut env, "CONNECT_TIMEOUT", Duration::from_secs(10));
    let io_timeout = positive_duration(&mut env, "IO_TIMEOUT", Duration::from_secs(300));
    let aws_env = platform_auth(&mut env, [&mut source, &mut dest], connect_timeout, io_timeout);
    let stats_interval = positive_duration(&mut env, "STATS_INTERVAL", Duration::from_secs(60));
    let stop_grace = positive_duration(&mut env, "STOP_GRACE", Duration::from_secs(20));
    if stop_grace > Duration::from_secs(600) {
        env.problem("STOP_GRACE", "must be at most 10m");
    }
    let sync_timeout = env.duration("SYNC_TIMEOUT", None);
    if sync_timeout == Some(Duration::ZERO) {
        env.problem("SYNC_TIMEOUT", "must be longer than 0 (unset it for no limit)");
    }
    if stats_interval < Duration::from_millis(100) {
        env.problem("STATS_INTERVAL", "must be at least 100ms (each interval logs a line)");
    }
    for (var, d) in [
        ("MAX_DURATION", max_duration),
        ("CONNECT_TIMEOUT", Some(connect_timeout)),
        ("IO_TIMEOUT", Some(io_timeout)),
        ("STATS_INTERVAL", Some(stats_interval)),
        ("LIST_TIMEOUT", Some(list_timeout)),
        ("SYNC_TIMEOUT", sync_timeout),
    ] {
        if d.is_some_and(|d| d > GO_MAX_DURATION) {
            env.problem(
                var,
                "must be at most 2562047h (the longest duration rclone, written in Go, accepts)",
            );
        }
    }
    match std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        Some(path) if lifeboat::tls::load_certs(std::path::Path::new(&path)).is_err() => {
            let why = lifeboat::tls::load_certs(std::path::Path::new(&path))
                .err()
                .map(|e| e.what)
                .unwrap_or_default();
            env.problem(
                "SSL_CERT_FILE",
                format!("must be a readable PEM file with at least one certificate: {why}"),
            );
        }
        _ => {}
    }
    let rclone_name = env.string_or("RCLONE_BINARY", "rclone");
    let rclone = match find_program(&rclone_name) {
        Some(path) => path,
        None => {
            env.problem(
                "RCLONE_BINARY",
                format!("no executable {rclone_name:?} found (a path, or a name looked up in PATH)"),
            );
            PathBuf::from(rclone_name)
        }
    };

    env.finish()?;
    Ok(Config {
        source,
        dest,
        dry_run,
        max_delete,
        max_delete_percent,
        allow_empty_source,
        allow_uncopyable_keys,
        verify,
        server_side_copy,
        max_objects,
        list_timeout,
        compare,
        fast_list,
        retries,
        low_level_retries,
        transfers,
        checkers,
        bwlimit,
        max_duration,
        connect_timeout,
        io_timeout,
        stats_interval,
        stop_grace,
        sync_timeout,
        rclone,
        log_level,
        log_objects,
        backup,
        metrics_file,
        metrics_push_url,
        aws_env,
    })
}

/// For the sides without static keys: resolves the platform's credentials once (both such
/// sides share them) and returns the variables read, for rclone. A side with no source at
/// all, or a source rclone would resolve differently, is a problem.
fn platform_auth(
    env: &mut Env,
    sides: [&mut Bucket; 2],
    connect: Duration,
    io_timeout: Duration,
) -> Vec<(&'static str, Secret)> {
    if !sides.iter().any(|b| matches!(b.auth, Auth::Platform(_))) {
        return Vec::new();
    }
    // Read as they are (a secret may end in a space); rclone gets the same values.
    let mut read = Vec::new();
    for var in credentials::VARS {
        let value = if credentials::SECRET_VARS.contains(&var) {
            env.optional_secret(var)
        } else {
            env.optional_untrimmed(var)
        };
        if let Some(v) = value {
            read.push((var, Secret::new(v)));
        }
    }
    for var in ["AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"] {
        if let Some(v) = env.optional(var) {
            read.push((var, Secret::new(v)));
        }
    }
    let lookup = |name: &str| {
        read.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.expose().to_string())
    };
    let resolved = credentials::resolve(&lookup);
    read.retain(|(k, _)| credentials::VARS.contains(k));
    let timeout = io_timeout.min(crate::preflight::REQUEST_TIMEOUT);
    let user_agent = concat!("s3sync/", env!("CARGO_PKG_VERSION"));
    let provider = match resolved {
        Ok(Some(source)) => Some(Arc::new(Provider::new(source, connect, timeout, user_agent))),
        Ok(None) => None,
        Err((var, why)) => {
            env.problem(var, why);
            return read;
        }
    };
    for side in sides {
        if let Auth::Platform(p) = &mut side.auth {
            match &provider {
                Some(shared) => *p = shared.clone(),
                None => env.problem(
                    &format!("{}ACCESS_KEY", side.role.var_prefix()),
                    format!(
                        "is missing, and the environment offers no credentials either: set {p}ACCESS_KEY and                          {p}SECRET_KEY, or give the Pod platform credentials (AWS_ACCESS_KEY_ID and                          AWS_SECRET_ACCESS_KEY; IRSA's AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN; Pod Identity's                          AWS_CONTAINER_CREDENTIALS_FULL_URI)",
                        p = side.role.var_prefix()
                    ),
                ),
            }
        }
    }
    read
}

fn bucket(env: &mut Env, role: Role) -> Bucket {
    let p = role.var_prefix();
    let var = |name: &str| format!("{p}{name}");
    let endpoint = env.required(&var("S3_ENDPOINT"));
    if !endpoint.is_empty() {
        if let Err(why) = check_endpoint(&endpoint) {
            // The value is not echoed: a URL may carry credentials.
            env.problem(&var("S3_ENDPOINT"), why);
        }
    }
    // Both keys, or neither (then the platform's credentials, see `platform_auth`).
    let access_key = env.optional_secret(&var("ACCESS_KEY")).map(Secret::new);
    let secret_key = env.optional_secret(&var("SECRET_KEY")).map(Secret::new);
    let auth = match (access_key, secret_key) {
        (Some(access_key), Some(secret_key)) => Auth::Static { access_key, secret_key },
        (None, None) => Auth::Platform(Arc::new(Provider::fixed(lifeboat::s3::Credentials {
            access_key: String::new(),
            secret_key: Secret::new(String::new()),
            session_token: None,
        }))),
        (have, _) => {
            let (set, unset) = if have.is_some() {
                ("ACCESS_KEY", "SECRET_KEY")
            } else {
                ("SECRET_KEY", "ACCESS_KEY")
            };
            env.problem(
                &var(unset),
                format!(
                    "is missing while {p}{set} is set: give both, or neither to use the platform's credentials",
                    p = p
                ),
            );
            Auth::Static {
                access_key: Secret::new(String::new()),
                secret_key: Secret::new(String::new()),
            }
        }
    };
    let bucket = env.required(&var("BUCKET"));
    if !bucket.is_empty() {
        if let Err(why) = check_bucket(&bucket) {
            env.problem(&var("BUCKET"), format!("{why}, got {bucket:?}"));
        }
    }
    let prefix = env.parse_with(&var("PREFIX"), String::new(), parse_prefix);
    // Unset or empty (an explicit `/` is the whole bucket).
    if role == Role::Dest {
        env.require(
            "DEST_PREFIX",
            "is required: the Go original defaulted it to SOURCE_BUCKET (several sources sharing one \
             backup bucket), s3sync has no default, so a Job migrated unchanged cannot sync into (and delete \
             from) the whole bucket; set DEST_PREFIX to the source bucket's name to keep the Go layout, or \
             DEST_PREFIX=/ for the whole destination bucket",
        );
    }
    let region = env.parse_with(&var("REGION"), "us-east-1".to_string(), |s| {
        if s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            Ok(s.to_string())
        } else {
            Err("expected a region name such as us-east-1 (letters, digits, '-', '_'; no quotes)".into())
        }
    });
    let provider = env.parse_with(&var("PROVIDER"), "Other".to_string(), |s| {
        PROVIDERS
            .iter()
            .find(|p| p.eq_ignore_ascii_case(s))
            .map(|p| p.to_string())
            .ok_or_else(|| "expected one of rclone's S3 providers (AWS, Ceph, Cloudflare, Minio, Other, ...; `rclone help backend s3`)".into())
    });
    let path_style = env.bool(&var("PATH_STYLE"), true);
    Bucket {
        role,
        endpoint,
        auth,
        bucket,
        prefix,
        region,
        provider,
        path_style,
    }
}

fn positive_duration(env: &mut Env, var: &str, default: Duration) -> Duration {
    let d = env.duration_or(var, default);
    if d.is_zero() {
        env.problem(var, "must be longer than 0");
        return default;
    }
    d
}

/// An endpoint must be an `http://` or `https://` URL with a host and no credentials
/// (lifeboat's one endpoint rule).
fn check_endpoint(url: &str) -> Result<(), String> {
    lifeboat::s3::endpoint::check(url)
}

/// Bucket names: any an S3-compatible store may hold (wider than AWS's rules, to allow
/// legacy and Ceph names; see `lifeboat::s3::bucket` for why s3sync and the hook differ).
fn check_bucket(name: &str) -> Result<(), String> {
    lifeboat::s3::bucket::check_existing(name)
}

/// A key prefix: leading and trailing `/` are dropped; `.`/`..` segments and empty
/// segments (`a//b`) are refused because rclone would not map them one to one onto keys.
fn parse_prefix(s: &str) -> Result<String, String> {
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("expected a key prefix such as backups/daily (no empty, '.' or '..' segments)".into());
    }
    if trimmed.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(trimmed.to_string())
}

/// `1000`, `0` (delete nothing), or `unlimited`/`-1`; at most 2^63-1 (rclone's flag is an int64).
fn parse_max_delete(s: &str) -> Result<MaxDelete, String> {
    match s.to_ascii_lowercase().as_str() {
        "unlimited" | "-1" => Ok(MaxDelete::Unlimited),
        other => other
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= i64::MAX as u64)
            .map(MaxDelete::Limit)
            .ok_or_else(|| {
                "expected a whole number from 0 (delete nothing) to 9223372036854775807, or unlimited".into()
            }),
    }
}

/// The longest duration Go (so rclone) can represent: 2^63-1 ns, about 2562047h47m.
const GO_MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// rclone 1.75's S3 providers (`rclone help backend s3`); the value is passed in this spelling.
const PROVIDERS: [&str; 53] = [
    "AWS",
    "Alibaba",
    "ArvanCloud",
    "BizflyCloud",
    "Ceph",
    "ChinaMobile",
    "Cloudflare",
    "Cubbit",
    "DigitalOcean",
    "Dreamhost",
    "Exaba",
    "Fastly",
    "FileLu",
    "FlashBlade",
    "GCS",
    "HCP",
    "Hetzner",
    "HuaweiOBS",
    "IBMCOS",
    "IDrive",
    "ImpossibleCloud",
    "Intercolo",
    "IONOS",
    "Leviia",
    "Liara",
    "Linode",
    "LyveCloud",
    "Magalu",
    "Mega",
    "Minio",
    "Netease",
    "Outscale",
    "OVHcloud",
    "Petabox",
    "Qiniu",
    "Rabata",
    "RackCorp",
    "Rclone",
    "Scaleway",
    "Scality",
    "SeaweedFS",
    "Selectel",
    "Servercore",
    "SpectraLogic",
    "Storj",
    "Synology",
    "TencentCOS",
    "US3",
    "Wasabi",
    "Zadara",
    "Zata",
    "ZeroServices",
    "Other",
];

/// rclone's `--bwlimit` size syntax: `off`, or `RATE` or `UPLOAD:DOWNLOAD`, where a rate is a
/// number with an optional unit `B`, `K`, `M`, `G`, `T`, `P` (bytes per second, K = KiB).
/// rclone's timetable form is not accepted.
fn parse_bwlimit(s: &str) -> Result<String, String> {
    const WHY: &str = "expected a rate such as 10M, 512K, 10M:1M or off";
    if s.eq_ignore_ascii_case("off") {
        return Ok("off".into());
    }
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() > 2 {
        return Err(WHY.into());
    }
    for part in parts {
        let digits = part.trim_end_matches(|c: char| "bBkKmMgGtTpP".contains(c));
        if part.len() - digits.len() > 1 || digits.is_empty() || digits.parse::<f64>().map(|v| v < 0.0).unwrap_or(true)
        {
            return Err(WHY.into());
        }
        if !digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(WHY.into());
        }
    }
    Ok(s.to_string())
}

/// `name` as an executable file: used as a path when it contains `/`, else looked up in PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// Whether two prefixes of the same bucket overlap (one contains the other).
pub fn overlaps(a: &str, b: &str) -> bool {
    let inside =
        |outer: &str, inner: &str| outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"));
    inside(a, b) || inside(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SOURCE_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("SOURCE_ACCESS_KEY", "ak"),
            ("SOURCE_SECRET_KEY", "sk"),
            ("SOURCE_BUCKET", "src"),
            ("DEST_S3_ENDPOINT", "https://s3.example.com"),
            ("DEST_ACCESS_KEY", "ak2"),
            ("DEST_SECRET_KEY", "sk2"),
            ("DEST_BUCKET", "dst"),
            ("DEST_PREFIX", "/"),
            ("RCLONE_BINARY", "/bin/sh"),
        ]
    }

    fn read(extra: &[(&'static str, &'static str)]) -> Result<Config, lifeboat::env::ConfigError> {
        let mut pairs = base();
        for (k, v) in extra {
            pairs.retain(|(key, _)| key != k);
            pairs.push((k, v));
        }
        from_env(Env::from_pairs(pairs), Ok(LevelFilter::Info))
    }

    #[test]
    fn defaults() {
        let c = read(&[]).unwrap();
        assert_eq!(c.max_delete, MaxDelete::Limit(1000));
        assert_eq!(c.retries, 3);
        assert_eq!(c.compare, Compare::Checksum);
        assert!(!c.dry_run && !c.allow_empty_source && c.fast_list);
        assert_eq!(c.source.rclone_path(), "source:src/");
        assert_eq!(c.dest.rclone_path(), "dest:dst/");
        assert_eq!(c.rclone, PathBuf::from("/bin/sh"));
        assert!(read(&[("RCLONE_BINARY", "/nonexistent/rclone")]).is_err());
    }

    #[test]
    fn prefixes_and_limits() {
        let c = read(&[("SOURCE_PREFIX", "/a/b/"), ("MAX_DELETE", "0"), ("DEST_PREFIX", "x")]).unwrap();
        assert_eq!(c.source.rclone_path(), "source:src/a/b/");
        assert_eq!(c.dest.rclone_path(), "dest:dst/x/");
        assert_eq!(c.max_delete, MaxDelete::Limit(0));
        assert_eq!(
            read(&[("MAX_DELETE", "unlimited")]).unwrap().max_delete,
            MaxDelete::Unlimited
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let err = read(&[
            ("SOURCE_BUCKET", ""),
            ("DEST_S3_ENDPOINT", "ftp://x"),
            ("MAX_DELETE", "-5"),
            ("RETRIES", "0"),
            ("DRY_RUN", "maybe"),
            ("COMPARE", "md5"),
            ("BANDWIDTH_LIMIT", "fast"),
            ("SOURCE_PREFIX", "a/../b"),
            ("MAX_DURATION", "0s"),
        ])
        .unwrap_err();
        let vars: Vec<&str> = err.problems.iter().map(|p| p.var.as_str()).collect();
        for v in [
            "SOURCE_BUCKET",
            "DEST_S3_ENDPOINT",
            "MAX_DELETE",
            "RETRIES",
            "DRY_RUN",
            "COMPARE",
            "BANDWIDTH_LIMIT",
            "SOURCE_PREFIX",
            "MAX_DURATION",
        ] {
            assert!(vars.contains(&v), "{v} not in {vars:?}");
        }
    }

    #[test]
    fn endpoint_with_credentials_is_refused_without_echo() {
        let err = read(&[("SOURCE_S3_ENDPOINT", "https://user:hunter2@s3.example.com")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("SOURCE_S3_ENDPOINT"));
    }

    #[test]
    fn endpoints_follow_the_one_rule_the_hook_follows_too() {
        // A port out of range or a query used to pass here and fail later inside rclone.
        for bad in [
            "http://s3.example.com:99999",
            "https://s3.example.com/?x=1",
            "http://:9000",
        ] {
            let err = read(&[("SOURCE_S3_ENDPOINT", bad)]).unwrap_err();
            assert!(
                err.problems.iter().any(|p| p.var == "SOURCE_S3_ENDPOINT"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn dest_prefix_is_required_and_slash_is_the_whole_bucket() {
        let mut pairs = base();
        pairs.retain(|(k, _)| *k != "DEST_PREFIX");
        let err = from_env(Env::from_pairs(pairs.clone()), Ok(LevelFilter::Info)).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].var, "DEST_PREFIX");
        assert!(err.problems[0].what.contains("SOURCE_BUCKET"), "{err}");
        pairs.push(("DEST_PREFIX", ""));
        assert!(from_env(Env::from_pairs(pairs), Ok(LevelFilter::Info)).is_err());
        assert_eq!(read(&[("DEST_PREFIX", "/")]).unwrap().dest.prefix, "");
    }

    #[test]
    fn bwlimit_syntax() {
        for ok in ["10M", "512k", "1.5M", "10M:1M", "off", "100"] {
            assert!(parse_bwlimit(ok).is_ok(), "{ok}");
        }
        for bad in ["fast", "10MB", "1:2:3", "-1M", ":", "M"] {
            assert!(parse_bwlimit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let c = read(&[("SOURCE_SECRET_KEY", "very-secret-value")]).unwrap();
        assert!(!format!("{c:?}").contains("very-secret-value"));
    }
}
