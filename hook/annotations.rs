//! The Pod annotations that ask for Litestream, parsed and validated into [`Settings`].
//!
//! Every annotation lives under one prefix (`litestream-hook.kaidotio.github.io`, or
//! `<VARIANT>.litestream-hook.kaidotio.github.io`). A value that is wrong gets a [`Denial`]
//! naming the full annotation key and saying what is expected, so `kubectl apply` tells the
//! user exactly what to fix. Values only ever reach the Pod as JSON strings, argv entries or
//! the JSON config: validation here is about catching mistakes early, not about escaping.

use std::fmt;

use serde_json::{Map, Value};

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
    pub bucket: String,
    pub secret: String,
    pub storage: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Whether the replicate sidecar is a native sidecar (init container, `restartPolicy: Always`).
    pub native_sidecar: bool,
}

impl Default for Defaults {
    fn default() -> Defaults {
        Defaults {
            image: "litestream/litestream:0.5.17".into(),
            // No sensible default: `main` requires HOOK_IMAGE.
            hook_image: String::new(),
            bucket: "litestream".into(),
            secret: "litestream-hook-secret".into(),
            storage: "1Gi".into(),
            endpoint: None,
            region: None,
            native_sidecar: true,
        }
    }
}

/// What the annotations of one Pod ask for, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The emptyDir `sizeLimit` of the database volume (a Kubernetes quantity).
    pub storage: String,
    pub image: String,
    pub bucket: String,
    pub secret: String,
    /// Absolute paths of the SQLite databases, at least one, no duplicates.
    pub paths: Vec<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Leading folders of every replica path in the bucket.
    pub prefix: Option<String>,
    /// Overrides the owner-derived name in replica paths.
    pub name: Option<String>,
    /// Litestream's `sync-interval` (a Go duration such as `1s`).
    pub sync_interval: Option<String>,
    pub native_sidecar: bool,
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
    let bucket = reader.or("bucket", &defaults.bucket, check_bucket)?;
    let secret = reader.or("secret", &defaults.secret, check_dns_subdomain)?;
    let paths_raw = reader.or("path", "/mnt/litestream.db", |_| Ok(()))?;
    let paths = parse_paths(&paths_raw).map_err(|m| reader.deny("path", &m))?;
    let endpoint = reader.optional("endpoint", defaults.endpoint.as_deref(), check_endpoint)?;
    let region = reader.optional("region", defaults.region.as_deref(), check_region)?;
    let prefix_value = reader.optional("prefix", None, check_replica_segments)?;
    let name = reader.optional("name", None, check_replica_segments)?;
    let sync_interval = reader.optional("sync-interval", None, check_sync_interval)?;
    let native_sidecar = match reader.get("native-sidecar")? {
        None => defaults.native_sidecar,
        Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(reader.deny("native-sidecar", "must be \"true\" or \"false\"")),
    };
    Ok(Some(Settings {
        storage,
        image,
        bucket,
        secret,
        paths,
        endpoint,
        region,
        prefix: prefix_value,
        name,
        sync_interval,
        native_sidecar,
    }))
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
    if path.chars().any(|c| c.is_control() || c == ':' || c == '\\') {
        return Err("paths must not contain control characters, ':' or '\\'".into());
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments.len() < 2 {
        return Err("the database must be in a folder below / (e.g. /mnt/app.db)".into());
    }
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err("paths must be clean: no empty, '.' or '..' segments, no trailing '/'".into());
    }
    Ok(())
}

/// A Kubernetes resource quantity, positive (e.g. `1Gi`, `500M`, `1.5G`, `2e9`).
pub fn check_quantity(s: &str) -> Result<(), String> {
    const WHY: &str = "must be a Kubernetes quantity greater than zero such as 1Gi, 500Mi or 2G";
    let (number, suffix) = split_number(s);
    if number.is_empty() || number.len() > 40 {
        return Err(WHY.into());
    }
    let digits = number.strip_prefix('+').unwrap_or(number);
    let mut parts = digits.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits_ok = |d: &str| d.chars().all(|c| c.is_ascii_digit());
    if !digits_ok(whole) || !frac.is_none_or(digits_ok) || (whole.is_empty() && frac.is_none_or(str::is_empty)) {
        return Err(WHY.into());
    }
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        exp => {
            let rest = exp.strip_prefix(['e', 'E']);
            rest.is_some_and(|r| {
                let r = r.strip_prefix(['+', '-']).unwrap_or(r);
                !r.is_empty() && r.len() <= 3 && r.chars().all(|c| c.is_ascii_digit())
            })
        }
    };
    if !suffix_ok {
        return Err(WHY.into());
    }
    if !digits.chars().any(|c| ('1'..='9').contains(&c)) {
        return Err(WHY.into());
    }
    Ok(())
}

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// A container image reference: registry/name[:tag][@digest], no spaces or control characters.
pub fn check_image(s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-/:@".contains(c);
    if s.is_empty() || s.len() > 512 || !s.chars().all(ok_char) || s.starts_with(['-', '/', ':', '@', '.']) {
        return Err("must be a container image reference such as litestream/litestream:0.5.17".into());
    }
    Ok(())
}

/// An S3 bucket name: 3 to 63 lower-case letters, digits, dots and hyphens.
pub fn check_bucket(s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&s.len())
        || !s.chars().all(ok_char)
        || !edge_ok(s.chars().next())
        || !edge_ok(s.chars().last())
    {
        return Err("must be an S3 bucket name: 3 to 63 lower-case letters, digits, '.' and '-'".into());
    }
    Ok(())
}

/// A Kubernetes object name (RFC 1123 subdomain), as a Secret name must be.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
        return Err("must be a Kubernetes object name (lower-case letters, digits, '-' and '.')".into());
    }
    Ok(())
}

/// An RFC 1123 label (VARIANT), at most `max` characters.
pub fn check_dns_label(s: &str, max: usize) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a DNS label of at most {max} lower-case letters, digits and '-'"
        ))
    }
}

/// An http(s) URL without spaces, quotes or control characters.
pub fn check_endpoint(s: &str) -> Result<(), String> {
    const WHY: &str = "must be an http:// or https:// URL such as http://minio.storage:9000";
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or(WHY)?;
    let host = rest.split('/').next().unwrap_or("");
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-._~:/[]%@!$&'()*+,;=".contains(c);
    if host.is_empty() || s.len() > 2048 || !s.chars().all(ok_char) || s.contains('\'') {
        return Err(WHY.into());
    }
    Ok(())
}

/// A region name such as `us-east-1`.
pub fn check_region(s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if s.len() > 64 || !s.chars().all(ok_char) {
        return Err("must be a region name such as us-east-1".into());
    }
    Ok(())
}

/// Folders of a replica path: segments of letters, digits, '.', '_' and '-', joined by '/'.
pub fn check_replica_segments(s: &str) -> Result<(), String> {
    let segment_ok = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if s.len() > 512 || !s.split('/').all(segment_ok) {
        return Err(
            "must be folder names of letters, digits, '.', '_' and '-' joined by '/', without leading or trailing '/'"
                .into(),
        );
    }
    Ok(())
}

/// A Go duration (`time.ParseDuration`, unsigned): `1s`, `500ms`, `1m30s`, `1.5h`. Values Go
/// cannot hold (over about 2562047h) are refused, as Go refuses them.
pub fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    const WHY: &str = "must be a duration such as 1s, 500ms or 1m30s";
    let mut rest = s;
    if rest.is_empty() || rest.len() > 32 {
        return Err(WHY.into());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or(WHY)?;
        let number = &rest[..digits];
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
            return Err(WHY.into());
        }
        rest = &rest[digits..];
        let (unit, nanos) = [
            ("ns", 1u128),
            ("us", 1_000),
            ("µs", 1_000),
            ("ms", 1_000_000),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
        ]
        .into_iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())
        .ok_or(WHY)?;
        rest = &rest[unit.len()..];
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = whole.parse().map_err(|_| WHY)?;
        let mut part = whole.checked_mul(nanos).ok_or(WHY)?;
        let mut scale = nanos;
        for d in frac.bytes().take(18) {
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(part).ok_or(WHY)?;
        if total > i64::MAX as u128 {
            return Err(format!("{WHY} (at most 2562047h, as Go allows)"));
        }
    }
    Ok(std::time::Duration::from_nanos(total as u64))
}

/// A Go duration from `min` to `max`, for a Litestream setting.
pub fn check_go_duration_in(s: &str, min: std::time::Duration, max: std::time::Duration) -> Result<(), String> {
    let d = parse_go_duration(s)?;
    if d < min || d > max {
        return Err(format!(
            "must be a duration from {} to {}",
            show_duration(min),
            show_duration(max)
        ));
    }
    Ok(())
}

fn show_duration(d: std::time::Duration) -> String {
    match d.as_millis() {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Litestream's `sync-interval`: from 10ms (shorter only burns CPU) to 24h (longer is no backup).
pub fn check_sync_interval(s: &str) -> Result<(), String> {
    check_go_duration_in(
        s,
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(24 * 3600),
    )
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
        assert_eq!(s.bucket, "litestream");
        assert_eq!(s.secret, "litestream-hook-secret");
        assert_eq!(s.paths, ["/mnt/litestream.db"]);
        assert_eq!(s.endpoint, None);
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
    fn unknown_keys_are_denied_with_the_known_ones_listed() {
        let err = parse_pairs(&[("inject", "true"), ("buckt", "x")]).unwrap_err();
        assert_eq!(err.annotation, format!("{BASE_PREFIX}/buckt"));
        assert!(err.message.contains("bucket"), "{err}");
    }

    #[test]
    fn quantities_and_durations() {
        for ok in ["1Gi", "500Mi", "1.5G", "2e9", "100", "+1Ki", "0.5Gi", "1E3"] {
            assert!(check_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Gi", "1GB", "1 Gi", "1.2.3Gi", "0Gi", "0.0", "1e", "1e+", "."] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
        for ok in ["1s", "500ms", "1m30s", "1.5s", "2h", "24h", "10ms"] {
            assert!(check_sync_interval(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "1", "s", "1x", "0s", "-1s", "1.s", "9999999h", "25h", "1ms", "2562048h",
        ] {
            assert!(check_sync_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_go_duration("1m30.5s"),
            Ok(std::time::Duration::from_millis(90_500))
        );
        assert_eq!(parse_go_duration("2562047h").map(|d| d.as_secs()), Ok(2562047 * 3600));
        assert!(parse_go_duration("2562048h").is_err());
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
