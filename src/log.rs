//! JSON logging: one object per line on stderr, the same shape in every binary.
//!
//! Every line has `time` (RFC 3339, UTC, milliseconds), `level` (`error`, `warn`, `info`,
//! `debug`, `trace`), `msg`, then the record's structured fields, written with the `log`
//! crate's key-value syntax: `info!(objects = 3, bucket = name; "synced")`.
//!
//! `LOG_LEVEL` sets the level for lifeboat's own code. Third-party crates (TLS, HTTP
//! clients) are held at `warn` whatever the level, so that a debug run cannot print
//! request headers or credentials that a dependency chooses to log.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Record};
use serde_json::{Map, Value as Json};

/// Module path prefixes that belong to lifeboat; everything else is a dependency.
const OWN_TARGETS: [&str; 4] = ["lifeboat", "s3sync", "hook", "etcdsnap"];

/// The target of a run's one summary line (s3sync): written at every `LOG_LEVEL` but `off`,
/// whatever the line's own level, so `LOG_LEVEL=warn` still ends each run with its summary.
pub const SUMMARY_TARGET: &str = "lifeboat::summary";

/// Parses a `LOG_LEVEL` value (case-insensitive): `off`, `error`, `warn`, `info`, `debug`, `trace`.
pub fn parse_level(value: &str) -> Result<LevelFilter, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err("expected one of off, error, warn, info, debug, trace".to_string()),
    }
}

/// Installs the JSON logger with `level` for lifeboat's code and `warn` for dependencies.
///
/// Safe to call more than once; only the first call takes effect.
pub fn init(level: LevelFilter) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level.min(LevelFilter::Warn));
    for target in OWN_TARGETS {
        builder.filter_module(target, level);
    }
    // The most specific directive wins: summaries pass at every level but off.
    builder.filter_module(
        SUMMARY_TARGET,
        if level == LevelFilter::Off {
            LevelFilter::Off
        } else {
            LevelFilter::Trace
        },
    );
    builder.target(env_logger::Target::Stderr);
    builder.format(|buf, record| {
        let time = buf.timestamp_millis().to_string();
        let line = render(&time, record);
        buf.write_all(line.as_bytes())?;
        buf.write_all(b"\n")
    });
    if builder.try_init().is_ok() {
        log_panics();
    }
}

/// Writes panics (ours or a dependency's, on any thread) as one JSON error line instead of
/// Rust's multi-line default, so that the log stays one object per line.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
        let thread = std::thread::current();
        log::error!(
            thread = thread.name().unwrap_or("unnamed"),
            location = location.as_deref().unwrap_or("unknown"),
            panic = message;
            "a thread panicked"
        );
    }));
}

/// Installs the logger at the level named by the `LOG_LEVEL` variable (default `info`).
///
/// Returns the error message for an invalid value so the caller can report it with the
/// rest of its configuration problems; the logger is then installed at `info`.
pub fn init_from_env() -> Result<LevelFilter, String> {
    let raw = std::env::var("LOG_LEVEL").unwrap_or_default();
    if raw.trim().is_empty() {
        init(LevelFilter::Info);
        return Ok(LevelFilter::Info);
    }
    match parse_level(&raw) {
        Ok(level) => {
            init(level);
            Ok(level)
        }
        Err(e) => {
            init(LevelFilter::Info);
            Err(e)
        }
    }
}

/// The lower-case name a level is written as.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Renders one record as a JSON object (without the trailing newline).
///
/// Fields named `time`, `level` or `msg` cannot overwrite the fixed keys; they are
/// written with a `field.` prefix instead.
pub fn render(time: &str, record: &Record<'_>) -> String {
    let mut object = Map::new();
    object.insert("time".into(), Json::String(time.to_string()));
    object.insert("level".into(), Json::String(level_name(record.level()).into()));
    object.insert("msg".into(), Json::String(record.args().to_string()));
    let mut fields = Fields(&mut object);
    // Visiting cannot fail: the visitor never returns an error.
    let _ = record.key_values().visit(&mut fields);
    let target = record.target();
    if !OWN_TARGETS.iter().any(|own| target.starts_with(own)) {
        object
            .entry("source")
            .or_insert_with(|| Json::String(target.to_string()));
    }
    Json::Object(object).to_string()
}

struct Fields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = serde_json::to_value(&value).unwrap_or_else(|_| Json::String(value.to_string()));
        let mut name = key.as_str().to_string();
        if matches!(name.as_str(), "time" | "level" | "msg") {
            name = format!("field.{name}");
        }
        self.0.insert(name, json);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: Level, target: &str, kvs: &[(&str, Value<'_>)], msg: std::fmt::Arguments<'_>) -> Json {
        let record = Record::builder()
            .level(level)
            .target(target)
            .args(msg)
            .key_values(&kvs)
            .build();
        serde_json::from_str(&render("2026-01-02T03:04:05.678Z", &record)).unwrap()
    }

    #[test]
    fn fixed_keys_and_typed_fields() {
        let kvs = [
            ("objects", Value::from(3u64)),
            ("bucket", Value::from("a\"b\n")),
            ("ok", Value::from(true)),
        ];
        let v = line(Level::Info, "s3sync::run", &kvs, format_args!("synced {}", 2));
        assert_eq!(v["time"], "2026-01-02T03:04:05.678Z");
        assert_eq!(v["level"], "info");
        assert_eq!(v["msg"], "synced 2");
        assert_eq!(v["objects"], 3);
        assert_eq!(v["bucket"], "a\"b\n");
        assert_eq!(v["ok"], true);
        assert!(v.get("source").is_none());
    }

    #[test]
    fn reserved_field_names_do_not_overwrite() {
        let kvs = [("msg", Value::from("other")), ("level", Value::from("x"))];
        let v = line(Level::Warn, "hook", &kvs, format_args!("real"));
        assert_eq!(v["msg"], "real");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["field.msg"], "other");
        assert_eq!(v["field.level"], "x");
    }

    #[test]
    fn dependency_records_name_their_source() {
        let v = line(Level::Error, "rustls::conn", &[], format_args!("bad"));
        assert_eq!(v["source"], "rustls::conn");
        assert_eq!(v["level"], "error");
    }

    #[test]
    fn level_names_parse() {
        assert_eq!(parse_level("DEBUG").unwrap(), LevelFilter::Debug);
        assert_eq!(parse_level(" warn ").unwrap(), LevelFilter::Warn);
        assert!(parse_level("verbose").unwrap_err().contains("expected one of"));
    }
}
