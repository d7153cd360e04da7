//! Folds rclone's stderr into s3sync's JSON log, and keeps the numbers for the summary.
//!
//! rclone (with `--use-json-log`) writes one JSON object per line, but a few lines (those
//! written before its logger is set up) are plain text such as
//! `2026/11/24 06:19:25 NOTICE: ...`. Each line becomes one line of our log: the level mapped
//! to ours, rclone's message as `msg`, its fields kept, `from: "rclone"` added. Stats lines
//! (`"stats": {...}`) are logged as `rclone stats` with flat fields (bytes, transfers,
//! deletes, errors, checks, elapsed_s), and the latest one is kept for the final summary.
//! Every line passes through a [`Redactor`] first.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use log::kv::Value;
use log::{Level, Record};
use serde_json::{Map, Value as Json};

/// Replaces every occurrence of the configured secrets by `[redacted]`.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Secrets shorter than 4 characters are not searched for (they would mangle ordinary text;
    /// no real S3 key is that short).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= 4)
            .map(str::to_string)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// The numbers of rclone's latest stats line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub bytes: u64,
    pub transfers: u64,
    pub checks: u64,
    pub deletes: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub fatal_error: bool,
    pub last_error: Option<String>,
}

impl Stats {
    fn from_json(stats: &Map<String, Json>) -> Stats {
        let n = |k: &str| stats.get(k).and_then(Json::as_u64).unwrap_or(0);
        Stats {
            bytes: n("bytes"),
            transfers: n("transfers"),
            checks: n("checks"),
            deletes: n("deletes"),
            errors: n("errors"),
            elapsed_s: stats.get("elapsedTime").and_then(Json::as_f64).unwrap_or(0.0),
            fatal_error: stats.get("fatalError").and_then(Json::as_bool).unwrap_or(false),
            last_error: stats.get("lastError").and_then(Json::as_str).map(str::to_string),
        }
    }
}

/// One line of rclone output, understood.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub level: Level,
    pub msg: String,
    /// rclone's other fields (its `source` renamed `rclone_source`; `time` dropped).
    pub fields: Map<String, Json>,
    pub stats: Option<Stats>,
}

/// Parses one (already redacted) line; `None` for blank lines.
pub fn parse(line: &str) -> Option<Line> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return None;
    }
    if let Ok(Json::Object(mut obj)) = serde_json::from_str::<Json>(line) {
        if obj.contains_key("msg") || obj.contains_key("level") {
            let level = obj
                .remove("level")
                .and_then(|l| l.as_str().map(level_of))
                .unwrap_or(Level::Info);
            let msg = obj
                .remove("msg")
                .map(|m| m.as_str().map(str::to_string).unwrap_or(m.to_string()));
            obj.remove("time");
            if let Some(src) = obj.remove("source") {
                obj.insert("rclone_source".into(), src);
            }
            let stats = match obj.remove("stats") {
                Some(Json::Object(s)) => Some(Stats::from_json(&s)),
                _ => None,
            };
            let msg = if stats.is_some() {
                "rclone stats".to_string()
            } else {
                msg.unwrap_or_default().trim().to_string()
            };
            return Some(Line {
                level,
                msg,
                fields: obj,
                stats,
            });
        }
    }
    Some(plain(line))
}

/// A plain-text line: `YYYY/MM/DD HH:MM:SS LEVEL : message`, or anything else (kept whole, info).
fn plain(line: &str) -> Line {
    let mut level = Level::Info;
    let mut msg = line.trim();
    let bytes = msg.as_bytes();
    // "2026/11/24 06:19:25 " is 20 bytes.
    if bytes.len() > 20 && bytes[4] == b'/' && bytes[7] == b'/' && bytes[13] == b':' && bytes[19] == b' ' {
        let rest = &msg[20..];
        if let Some((word, text)) = rest.split_once(':') {
            let word = word.trim();
            if !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase()) {
                level = level_of(word);
                msg = text.trim();
            }
        }
    }
    Line {
        level,
        msg: msg.to_string(),
        fields: Map::new(),
        stats: None,
    }
}

/// rclone's level names onto ours; rclone's NOTICE (its default level) is our info.
pub fn level_of(name: &str) -> Level {
    match name.trim().to_ascii_lowercase().as_str() {
        "debug" => Level::Debug,
        "info" | "notice" => Level::Info,
        "warning" | "warn" => Level::Warn,
        "error" | "critical" | "fatal" | "alert" | "emergency" => Level::Error,
        _ => Level::Info,
    }
}

/// Writes `line` to our log, with target `s3sync::rclone` so LOG_LEVEL applies.
pub fn emit(line: &Line) {
    let mut pairs: Vec<(String, Json)> = vec![("from".into(), Json::from("rclone"))];
    if let Some(s) = &line.stats {
        pairs.push(("bytes".into(), s.bytes.into()));
        pairs.push(("transfers".into(), s.transfers.into()));
        pairs.push(("checks".into(), s.checks.into()));
        pairs.push(("deletes".into(), s.deletes.into()));
        pairs.push(("errors".into(), s.errors.into()));
        pairs.push(("elapsed_s".into(), Json::from(round_ms(s.elapsed_s))));
        if let Some(e) = &s.last_error {
            pairs.push(("last_error".into(), Json::from(e.as_str())));
        }
    } else {
        for (k, v) in &line.fields {
            pairs.push((k.clone(), v.clone()));
        }
    }
    let kvs: Vec<(&str, Value<'_>)> = pairs.iter().map(|(k, v)| (k.as_str(), Value::from_serde(v))).collect();
    let kvs: &[(&str, Value<'_>)] = &kvs;
    log::logger().log(
        &Record::builder()
            .level(line.level)
            .target("s3sync::rclone")
            .module_path_static(Some("s3sync::rclone"))
            .args(format_args!("{}", line.msg))
            .key_values(&kvs)
            .build(),
    );
}

pub fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// What a folded stream leaves behind: the last stats, and the error messages seen.
#[derive(Clone, Debug, Default)]
pub struct Folded {
    pub stats: Option<Stats>,
    pub errors: Vec<String>,
}

/// How folded lines are logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// At rclone's level (mapped to ours).
    AsIs,
}

/// Reads `stream` to its end, redacting, logging and collecting each line into `into`.
pub fn fold(stream: impl Read, redactor: &Redactor, emit_as: Emit, into: &Arc<Mutex<Folded>>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = redactor.apply(&String::from_utf8_lossy(&buf));
        let Some(line) = parse(&text) else { continue };
        match emit_as {
            Emit::AsIs => emit(&line),
        }
        let mut folded = into.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = &line.stats {
            folded.stats = Some(s.clone());
        }
        if line.level == Level::Error {
            folded.errors.push(line.msg.clone());
        }
        // rclone's closing "Failed to sync with N errors: last error was: X" (or "Failed to lsf: X")
        // line is a notice, but it is the best one-line description of a failure.
        if let Some((_, last)) = line.msg.split_once("last error was: ") {
            folded.errors.push(last.to_string());
        } else if let Some(rest) = line.msg.strip_prefix("Failed to ") {
            if let Some((_, err)) = rest.split_once(": ") {
                folded.errors.push(err.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_keep_fields() {
        let l = parse(r#"{"time":"2026-11-24T06:19:15Z","level":"info","msg":"Copied (new)","size":3,"object":"a.txt","source":"operations/copy.go:382"}"#).unwrap();
        assert_eq!(l.level, Level::Info);
        assert_eq!(l.msg, "Copied (new)");
        assert_eq!(l.fields["object"], "a.txt");
        assert_eq!(l.fields["size"], 3);
        assert_eq!(l.fields["rclone_source"], "operations/copy.go:382");
        assert!(l.fields.get("time").is_none());
    }

    #[test]
    fn stats_lines_are_parsed() {
        let l = parse(r#"{"time":"x","level":"notice","msg":"\nTransferred: ...\n","stats":{"bytes":5,"checks":2,"deletes":1,"elapsedTime":0.0088,"errors":3,"fatalError":true,"lastError":"failed to delete 2 files","transfers":2},"source":"accounting/stats.go:549"}"#).unwrap();
        let s = l.stats.unwrap();
        assert_eq!((s.bytes, s.transfers, s.checks, s.deletes, s.errors), (5, 2, 2, 1, 3));
        assert!(s.fatal_error);
        assert_eq!(s.last_error.as_deref(), Some("failed to delete 2 files"));
        assert_eq!(l.msg, "rclone stats");
        assert_eq!(l.level, Level::Info);
    }

    #[test]
    fn plain_lines_are_understood() {
        let l = parse("2026/11/24 06:19:25 DEBUG : Setting --config \"/dev/null\" from environment").unwrap();
        assert_eq!(l.level, Level::Debug);
        assert_eq!(l.msg, "Setting --config \"/dev/null\" from environment");
        let l = parse("2026/11/24 06:19:32 ERROR : error listing: directory not found").unwrap();
        assert_eq!(l.level, Level::Error);
        let l = parse("panic: something odd").unwrap();
        assert_eq!((l.level, l.msg.as_str()), (Level::Info, "panic: something odd"));
        assert!(parse("  \n").is_none());
    }

    #[test]
    fn redaction() {
        let r = Redactor::new(["SECRETKEY123", "abc", "SECRETKEY"]);
        assert_eq!(
            r.apply("k=SECRETKEY123 and SECRETKEY abc"),
            "k=[redacted] and [redacted] abc"
        );
    }

    #[test]
    fn fold_collects_errors_and_stats() {
        let input = concat!(
            "2026/11/24 06:19:25 DEBUG : hello\n",
            r#"{"level":"error","msg":"boom SECRETKEY123"}"#,
            "\n",
            r#"{"level":"notice","msg":"x","stats":{"bytes":7,"transfers":1}}"#,
            "\n",
            r#"{"level":"notice","msg":"Failed to sync with 1 errors: last error was: boom"}"#,
            "\n"
        );
        let into = Arc::new(Mutex::new(Folded::default()));
        fold(input.as_bytes(), &Redactor::new(["SECRETKEY123"]), Emit::AsIs, &into);
        let f = into.lock().unwrap();
        assert_eq!(f.stats.as_ref().unwrap().bytes, 7);
        assert_eq!(f.errors, ["boom [redacted]", "boom"]);
    }
}
