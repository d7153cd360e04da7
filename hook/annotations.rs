//! The Pod annotations that ask for Litestream, parsed and validated into [`Settings`].
//!
//! Every annotation lives under one prefix (`litestream-hook.kaidotio.github.io`, or
//! `<VARIANT>.litestream-hook.kaidotio.github.io`). A value that is wrong gets a [`Denial`]
//! naming the full annotation key and saying what is expected, so `kubectl apply` tells the
//! user exactly what to fix. Values only ever reach the Pod as JSON strings, argv entries or
//! the JSON config: validation here is about catching mistakes early, not about escaping.

use std::fmt;

use serde_json::{Map, Value};

use crate::replica::Raw;
pub use crate::replica::{Kind, Target};
pub use crate::values::*;

/// The prefix of every annotation when no VARIANT is set.
pub const BASE_PREFIX: &str = "litestream-hook.kaidotio.github.io";

/// The longest annotation key Kubernetes allows: a 253-byte prefix, `/`, a 63-byte name.
pub const MAX_KEY_BYTES: usize = 317;

/// The annotation keys (after `<prefix>/`) this hook understands.
pub const KEYS: &[&str] = &[
    "inject",
    "injected",
    "storage",
    "image",
    "bucket",
    "secret",
    "path",
    "endpoint",
    "region",
    "prefix",
    "name",
    "sync-interval",
    "native-sidecar",
    "cpu-request",
    "cpu-limit",
    "memory-request",
    "memory-limit",
    "replica-path",
    "snapshot-interval",
    "retention",
    "validation-interval",
    "type",
    "account",
    "host-key",
];

/// The marker annotation (after `<prefix>/`) put on every Pod the hook injected.
pub const MARKER: &str = "injected";

/// Cluster-wide defaults, from the hook's environment.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// The Litestream image used unless a Pod names another.
    pub image: String,
    /// The image of the hook itself, which writes the Litestream config (`hook write-config`).
    pub hook_image: String,
    /// The default replica target: its type, and the values of its annotations that Pods of
    /// that type inherit (a Pod of another type gives its own).
    pub kind: Kind,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub account: Option<String>,
    pub host_key: Option<String>,
    pub secret: String,
    pub storage: String,
    /// Whether the replicate sidecar is a native sidecar (init container, `restartPolicy: Always`).
    pub native_sidecar: bool,
    /// Requests and limits of each injected container.
    pub resources: Resources,
    /// Litestream settings (`DEFAULT_SYNC_INTERVAL`...); none: Litestream's own.
    pub tuning: crate::litestream_settings::Tuning,
}

/// CPU and memory requests and limits (Kubernetes quantities) of injected containers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

impl Resources {
    /// The defaults: enough for Litestream on a small database, and all four set, so a
    /// namespace with a ResourceQuota on requests or limits (and no LimitRange) admits the Pod.
    pub fn builtin() -> Resources {
        Resources {
            cpu_request: Some("10m".into()),
            cpu_limit: Some("1".into()),
            memory_request: Some("64Mi".into()),
            memory_limit: Some("256Mi".into()),
        }
    }

    /// Refuses a request above its limit (the API server would refuse the Pod).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        type Parse = fn(&str) -> Result<f64, String>;
        let pairs: [(&str, &Option<String>, &Option<String>, Parse); 2] = [
            ("cpu", &self.cpu_request, &self.cpu_limit, check_cpu),
            ("memory", &self.memory_request, &self.memory_limit, check_bytes),
        ];
        for (what, request, limit, parse) in pairs {
            if let (Some(r), Some(l)) = (request, limit) {
                if parse(r).unwrap_or(0.0) > parse(l).unwrap_or(f64::MAX) {
                    return Err((what, format!("the {what} request {r} is above the {what} limit {l}")));
                }
            }
        }
        Ok(())
    }
}

impl Defaults {
    /// The default target's values, as the type's check takes them.
    pub fn target(&self) -> Raw<'_> {
        Raw {
            kind: self.kind,
            bucket: self.bucket.as_deref(),
            endpoint: self.endpoint.as_deref(),
            region: self.region.as_deref(),
            account: self.account.as_deref(),
            host_key: self.host_key.as_deref(),
        }
    }
}

impl Default for Defaults {
    fn default() -> Defaults {
        Defaults {
            image: "litestream/litestream:0.5.17".into(),
            // No sensible default: `main` requires HOOK_IMAGE.
            hook_image: String::new(),
            kind: Kind::S3,
            bucket: Some("litestream".into()),
            endpoint: None,
            region: None,
            account: None,
            host_key: None,
            secret: "litestream-hook-secret".into(),
            storage: "1Gi".into(),
            native_sidecar: true,
            resources: Resources::builtin(),
            tuning: Default::default(),
        }
    }
}

/// What the annotations of one Pod ask for, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The emptyDir `sizeLimit` of the database volume (a Kubernetes quantity).
    pub storage: String,
    pub image: String,
    /// Where the replicas go (the `type` and its annotations).
    pub target: Target,
    /// The Secret with the target's credentials (`Kind::env_keys`, or the SSH key).
    pub secret: String,
    /// Absolute paths of the SQLite databases, at least one, no duplicates.
    pub paths: Vec<String>,
    /// Leading folders of every replica path in the bucket.
    pub prefix: Option<String>,
    /// Overrides the owner-derived name in replica paths.
    pub name: Option<String>,
    /// Replica paths set by `replica-path`: (database path, whole path in the bucket).
    pub replica_paths: Vec<(String, String)>,
    /// Litestream's intervals and retention (`sync-interval`, `snapshot-interval`...).
    pub tuning: crate::litestream_settings::Tuning,
    pub native_sidecar: bool,
    pub resources: Resources,
}

/// A reason to refuse a Pod, naming the annotation at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The full annotation key (`<prefix>/<key>`), or empty when no single annotation is at fault.
    pub annotation: String,
    pub message: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.annotation.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "annotation {}: {}", self.annotation, self.message)
        }
    }
}

/// The annotation prefix for a variant (`None`: the base prefix).
pub fn prefix_for(variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{v}.{BASE_PREFIX}"),
        None => BASE_PREFIX.to_string(),
    }
}

/// Whether `annotations` carry the injected marker under `prefix`.
pub fn is_injected(annotations: Option<&Map<String, Value>>, prefix: &str) -> bool {
    annotations.and_then(|a| a.get(&format!("{prefix}/{MARKER}"))).is_some()
}

/// Reads the annotations under `prefix`: `Ok(None)` when the Pod did not ask for injection.
pub fn parse(
    annotations: Option<&Map<String, Value>>,
    prefix: &str,
    defaults: &Defaults,
) -> Result<Option<Settings>, Denial> {
    let empty = Map::new();
    let annotations = annotations.unwrap_or(&empty);
    let reader = Reader { annotations, prefix };
    match reader.get("inject")? {
        None | Some("false") => return Ok(None),
        Some("true") => {}
        Some(_) => return Err(reader.deny("inject", "must be \"true\" or \"false\"")),
    }
    for key in annotations.keys() {
        if let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
            if !KEYS.contains(&rest) {
                return Err(Denial {
                    annotation: clip(key, MAX_KEY_BYTES),
                    message: format!(
                        "unknown annotation; known keys under {prefix}/ are: {}",
                        KEYS.join(", ")
                    ),
                });
            }
        }
    }

    let storage = reader.or("storage", &defaults.storage, check_quantity)?;
    let image = reader.or("image", &defaults.image, check_image)?;
    let target = target(&reader, defaults)?;
    let secret = reader.or("secret", &defaults.secret, check_dns_subdomain)?;
    let paths_raw = reader.or("path", "/mnt/litestream.db", |_| Ok(()))?;
    let paths = parse_paths(&paths_raw).map_err(|m| reader.deny("path", &m))?;
    let replica_paths = replica_paths(&reader, &paths)?;
    let prefix_value = reader.optional("prefix", None, check_replica_segments)?;
    let name = reader.optional("name", None, check_replica_segments)?;
    let tuning = tuning(&reader, &defaults.tuning)?;
    let native_sidecar = match reader.get("native-sidecar")? {
        None => defaults.native_sidecar,
        Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(reader.deny("native-sidecar", "must be \"true\" or \"false\"")),
    };
    let d = &defaults.resources;
    let resources = Resources {
        cpu_request: reader.optional("cpu-request", d.cpu_request.as_deref(), |v| check_cpu(v).map(|_| ()))?,
        cpu_limit: reader.optional("cpu-limit", d.cpu_limit.as_deref(), |v| check_cpu(v).map(|_| ()))?,
        memory_request: reader.optional("memory-request", d.memory_request.as_deref(), |v| {
            check_bytes(v).map(|_| ())
        })?,
        memory_limit: reader.optional("memory-limit", d.memory_limit.as_deref(), |v| {
            check_bytes(v).map(|_| ())
        })?,
    };
    resources
        .check()
        .map_err(|(what, m)| reader.deny(&format!("{what}-request"), &m))?;
    Ok(Some(Settings {
        storage,
        image,
        target,
        secret,
        paths,
        prefix: prefix_value,
        name,
        replica_paths,
        tuning,
        native_sidecar,
        resources,
    }))
}

/// The replica target: `type` (or the default type), then that type's annotations, each
/// falling back to the cluster default only when the type is the default type.
fn target(reader: &Reader<'_>, defaults: &Defaults) -> Result<Target, Denial> {
    let kind = match reader.get("type")? {
        None | Some("") => defaults.kind,
        Some(v) => Kind::parse(v).map_err(|m| reader.deny("type", &format!("{m}, got {}", quote(v))))?,
    };
    let inherit = kind == defaults.kind;
    let value = |key: &str, default: &Option<String>| -> Result<Option<String>, Denial> {
        Ok(match reader.get(key)? {
            Some("") => None,
            Some(v) => Some(v.to_string()),
            None if inherit => default.clone(),
            None => None,
        })
    };
    let bucket = value("bucket", &defaults.bucket)?;
    let endpoint = value("endpoint", &defaults.endpoint)?;
    let region = value("region", &defaults.region)?;
    let account = value("account", &defaults.account)?;
    let host_key = value("host-key", &defaults.host_key)?;
    let raw = Raw {
        kind,
        bucket: bucket.as_deref(),
        endpoint: endpoint.as_deref(),
        region: region.as_deref(),
        account: account.as_deref(),
        host_key: host_key.as_deref(),
    };
    crate::replica::check(&raw).map_err(|(key, message)| {
        let message = match raw.value(key) {
            Some(v) => format!("{message}, got {}", quote(v)),
            None => message,
        };
        reader.deny(key, &message)
    })
}

/// The Litestream settings of `litestream_settings::SETTINGS`, each its annotation or its default.
fn tuning(
    reader: &Reader<'_>,
    defaults: &crate::litestream_settings::Tuning,
) -> Result<crate::litestream_settings::Tuning, Denial> {
    use crate::litestream_settings::{check, Tuning, SETTINGS};
    let mut values: [Option<String>; 4] = Default::default();
    for ((setting, default), value) in SETTINGS.iter().zip(defaults.values()).zip(values.iter_mut()) {
        *value = reader.optional(setting.key, default.as_deref(), |v| check(setting, v))?;
    }
    Ok(Tuning::from_values(values))
}

/// The `replica-path` annotation (see `replica_paths`); none when absent or empty.
fn replica_paths(reader: &Reader<'_>, paths: &[String]) -> Result<Vec<(String, String)>, Denial> {
    match reader.get("replica-path")? {
        None | Some("") => Ok(Vec::new()),
        Some(raw) => crate::replica_paths::parse(raw, paths).map_err(|m| reader.deny("replica-path", &m)),
    }
}

struct Reader<'a> {
    annotations: &'a Map<String, Value>,
    prefix: &'a str,
}

impl Reader<'_> {
    fn key(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }

    fn deny(&self, key: &str, message: &str) -> Denial {
        Denial {
            annotation: self.key(key),
            message: message.to_string(),
        }
    }

    /// The trimmed value of `key`, `None` when absent. Non-string values are refused.
    fn get(&self, key: &str) -> Result<Option<&str>, Denial> {
        match self.annotations.get(&self.key(key)) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim())),
            Some(_) => Err(self.deny(key, "must be a string")),
        }
    }

    fn or(&self, key: &str, default: &str, check: impl Fn(&str) -> Result<(), String>) -> Result<String, Denial> {
        let value = self.get(key)?.unwrap_or(default);
        check(value).map_err(|m| self.deny(key, &format!("{m}, got {}", quote(value))))?;
        Ok(value.to_string())
    }

    fn optional(
        &self,
        key: &str,
        default: Option<&str>,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Option<String>, Denial> {
        match self.get(key)?.or(default) {
            None | Some("") => Ok(None),
            Some(value) => {
                check(value).map_err(|m| self.deny(key, &format!("{m}, got {}", quote(value))))?;
                Ok(Some(value.to_string()))
            }
        }
    }
}

/// A value quoted for a message, shortened so a huge annotation cannot flood the response.
fn quote(value: &str) -> String {
    const MAX: usize = 100;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}… ({} bytes)", value.len())
    }
}

/// At most this many databases per Pod.
pub const MAX_DATABASES: usize = 16;

/// `s` cut to at most `max` bytes (at a character boundary) with the full length said, so a
/// huge value cannot flood a response, an audit annotation or a log line.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Splits the comma list of database paths and checks each one.
///
/// The count is checked first, in one pass, so a list of any length costs linear time.
pub fn parse_paths(raw: &str) -> Result<Vec<String>, String> {
    let entries = raw.bytes().filter(|&b| b == b',').count() + 1;
    if entries > MAX_DATABASES {
        return Err(format!("at most {MAX_DATABASES} databases per Pod, got {entries}"));
    }
    let mut paths: Vec<String> = Vec::new();
    for part in raw.split(',') {
        let path = part.trim();
        if path.is_empty() {
            return Err(format!("empty entry in the comma list, got {}", quote(raw)));
        }
        check_db_path(path).map_err(|m| format!("{m}, got {}", quote(path)))?;
        if paths.iter().any(|p| p == path) {
            return Err(format!("{} is listed twice", quote(path)));
        }
        let file = file_name(path);
        if paths.iter().any(|p| file_name(p) == file) {
            return Err(format!(
                "two databases are named {} (each database's replica path ends in its file name, so file names must differ)",
                quote(file)
            ));
        }
        paths.push(path.to_string());
    }
    Ok(paths)
}

/// The last segment of an absolute path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The folder of an absolute path (never `/` for a path [`check_db_path`] accepted).
pub fn dir_name(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) if i > 0 => &path[..i],
        _ => "/",
    }
}

fn check_db_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("each path must be absolute".into());
    }
    if path.len() > 1024 {
        return Err("each path must be at most 1024 bytes".into());
    }
    if path.chars().any(|c| c == ':' || c == '\\') || !yaml_printable(path) {
        return Err(
            "paths must not contain control characters, Unicode non-characters (U+FFFE...), ':' or '\\'".into(),
        );
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments.len() < 2 {
        return Err("the database must be in a folder below / (e.g. /mnt/app.db)".into());
    }
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err("paths must be clean: no empty, '.' or '..' segments, no trailing '/'".into());
    }
    // The config volume is mounted at CONFIG_DIR in the injected containers: a database folder
    // there or below would be a second mount at the same place, or inside the 1Mi config
    // volume; a database folder above it (`/etc`) would hide the image's /etc (its CA
    // certificates, so no TLS to S3) in every container.
    let dir = dir_name(path);
    let config_dir = crate::inject::CONFIG_DIR;
    if dir == config_dir || dir.starts_with(&format!("{config_dir}/")) || config_dir.starts_with(&format!("{dir}/")) {
        return Err(format!(
            "a database folder must not be {config_dir}, inside it, or above it (this hook mounts its config there)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn annotations(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{BASE_PREFIX}/{k}"), json!(v)))
            .collect()
    }

    fn parse_pairs(pairs: &[(&str, &str)]) -> Result<Option<Settings>, Denial> {
        parse(Some(&annotations(pairs)), BASE_PREFIX, &Defaults::default())
    }

    #[test]
    fn defaults_apply_when_only_inject_is_set() {
        let s = parse_pairs(&[("inject", "true")]).unwrap().unwrap();
        assert_eq!(s.storage, "1Gi");
        assert_eq!(
            s.target,
            Target::S3 {
                bucket: "litestream".into(),
                endpoint: None,
                region: None
            }
        );
        assert_eq!(s.secret, "litestream-hook-secret");
        assert_eq!(s.paths, ["/mnt/litestream.db"]);
        assert!(s.native_sidecar);
    }

    #[test]
    fn not_asked_means_none() {
        assert_eq!(parse(None, BASE_PREFIX, &Defaults::default()), Ok(None));
        assert_eq!(parse_pairs(&[("inject", "false"), ("bucket", "BAD")]), Ok(None));
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (key, value) in [
            ("inject", "yes"),
            ("storage", "1GB"),
            ("storage", "0"),
            ("storage", "-1Gi"),
            ("storage", "abc"),
            ("bucket", "Has Space"),
            ("bucket", "a"),
            ("secret", "UPPER"),
            ("path", "relative.db"),
            ("path", "/top.db"),
            ("path", "/a/../b.db"),
            ("path", "/a/x.db,/b/x.db"),
            ("path", "/a/x.db,,/b/y.db"),
            ("path", "/a/x\n.db"),
            ("endpoint", "ftp://x"),
            ("endpoint", "http://x\"; rm -rf /"),
            ("image", "busybox; sh"),
            ("region", "us east"),
            ("prefix", "/abs"),
            ("prefix", "a/../b"),
            ("sync-interval", "soon"),
            ("sync-interval", "0s"),
            ("native-sidecar", "maybe"),
        ] {
            let err = parse_pairs(&[("inject", "true"), (key, value)]).unwrap_err();
            assert_eq!(err.annotation, format!("{BASE_PREFIX}/{key}"), "{key}={value:?}: {err}");
            assert!(err.to_string().contains(&format!("{BASE_PREFIX}/{key}")), "{err}");
        }
    }

    #[test]
    fn a_pod_of_another_type_than_the_default_inherits_none_of_its_values() {
        const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDZOX30WY177glSjMKCtb9Bumn1CQNjV3u9PhVkxpSpw";
        let defaults = Defaults {
            endpoint: Some("https://s3.example.com".into()),
            region: Some("eu-west-1".into()),
            ..Defaults::default()
        };
        let a = annotations(&[
            ("inject", "true"),
            ("type", "sftp"),
            ("endpoint", "sftp://backup@h:2022"),
            ("host-key", KEY),
        ]);
        let s = parse(Some(&a), BASE_PREFIX, &defaults).unwrap().unwrap();
        assert_eq!(s.target.kind(), Kind::Sftp);
        // Azure: the default bucket and endpoint (S3's) are not taken over.
        let a = annotations(&[("inject", "true"), ("type", "abs"), ("account", "acct")]);
        let err = parse(Some(&a), BASE_PREFIX, &defaults).unwrap_err();
        assert_eq!(err.annotation, format!("{BASE_PREFIX}/bucket"), "{err}");
        assert!(err.message.contains("required for type abs"), "{err}");
        // A Pod of the default type inherits them.
        let sftp_defaults = Defaults {
            kind: Kind::Sftp,
            bucket: None,
            endpoint: Some("sftp://backup@h".into()),
            host_key: Some(KEY.into()),
            ..Defaults::default()
        };
        let s = parse_pairs_with(&[("inject", "true")], &sftp_defaults)
            .unwrap()
            .unwrap();
        assert_eq!(s.target.fields("n/a/x.db")["host"], "h:22");
        let err = parse_pairs_with(&[("inject", "true"), ("type", "gs")], &sftp_defaults).unwrap_err();
        assert_eq!(err.annotation, format!("{BASE_PREFIX}/type"), "{err}");
        let err = parse_pairs_with(&[("inject", "true"), ("region", "eu")], &sftp_defaults).unwrap_err();
        assert!(err.message.contains("not used by type sftp"), "{err}");
    }

    fn parse_pairs_with(pairs: &[(&str, &str)], defaults: &Defaults) -> Result<Option<Settings>, Denial> {
        parse(Some(&annotations(pairs)), BASE_PREFIX, defaults)
    }

    #[test]
    fn unknown_keys_are_denied_with_the_known_ones_listed() {
        let err = parse_pairs(&[("inject", "true"), ("buckt", "x")]).unwrap_err();
        assert_eq!(err.annotation, format!("{BASE_PREFIX}/buckt"));
        assert!(err.message.contains("bucket"), "{err}");
    }

    #[test]
    fn variants_have_their_own_prefix() {
        let prefix = prefix_for(Some("blue"));
        assert_eq!(prefix, "blue.litestream-hook.kaidotio.github.io");
        let mut a = annotations(&[("inject", "true")]);
        assert_eq!(parse(Some(&a), &prefix, &Defaults::default()), Ok(None));
        a.insert(format!("{prefix}/inject"), json!("true"));
        assert!(parse(Some(&a), &prefix, &Defaults::default()).unwrap().is_some());
    }

    #[test]
    fn several_paths() {
        let s = parse_pairs(&[("inject", "true"), ("path", " /a/x.db , /b/c/y.db")])
            .unwrap()
            .unwrap();
        assert_eq!(s.paths, ["/a/x.db", "/b/c/y.db"]);
        assert_eq!(dir_name("/b/c/y.db"), "/b/c");
        assert_eq!(file_name("/b/c/y.db"), "y.db");
    }
}
