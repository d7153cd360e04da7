//! Configuration from environment variables, with every problem reported at once.
//!
//! An [`Env`] reads variables one by one; each read that fails records a [`Problem`]
//! naming the variable and returns a placeholder so reading can go on. [`Env::finish`]
//! then returns all problems together, so a user fixes a broken Job spec in one pass.
//! Empty values count as missing. Values of secret variables are never echoed. A variable
//! whose name or value is not UTF-8 is reported by name only (never its bytes) when read.
//!
//! Every read also declares the variable (its kind, default, range, whether it is secret or
//! required) in a [`Schema`]: a binary's `--print-config-schema` runs its own reading code
//! against an empty environment and prints what was declared, so the machine-readable
//! contract is the code that reads, and cannot drift from it.
//!
//! Longer than the ~500-line guide on purpose: reading and declaring are the same calls, so
//! the reader and the schema live together.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// One thing wrong with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The variable's name.
    pub var: String,
    /// What is wrong with it, in words.
    pub what: String,
}

/// Every problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.problems.len())?;
        if self.problems.len() != 1 {
            write!(f, "s")?;
        }
        write!(f, "):")?;
        for (i, p) in self.problems.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}{}: {}", p.var, p.what)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A reader of configuration variables that collects problems instead of stopping at the first.
pub struct Env {
    vars: HashMap<String, String>,
    /// Variables present in the process environment whose value is not UTF-8 (names with
    /// bytes that are not UTF-8 are kept lossily: they cannot match a name we read).
    not_utf8: HashSet<String>,
    /// Interior mutability: reading a value (`optional`, through `&self`) can record that the
    /// variable is not UTF-8.
    problems: RefCell<Vec<Problem>>,
    /// What each read declared; shared with [`Env::schema`] handles, which outlive `finish`.
    schema: Schema,
}

impl Env {
    /// Reads from the process environment.
    /// Never panics: `std::env::vars()` would on a value that is not UTF-8, printing it.
    pub fn from_process() -> Env {
        let mut vars = HashMap::new();
        let mut not_utf8 = HashSet::new();
        for (key, value) in std::env::vars_os() {
            match (key.into_string(), value.into_string()) {
                (Ok(k), Ok(v)) => {
                    vars.insert(k, v);
                }
                (Ok(k), Err(_)) => {
                    not_utf8.insert(k);
                }
                (Err(k), _) => {
                    not_utf8.insert(k.to_string_lossy().into_owned());
                }
            }
        }
        Env {
            vars,
            not_utf8,
            problems: RefCell::new(Vec::new()),
            schema: Schema::default(),
        }
    }

    /// Marks `var` as present with a value that is not UTF-8 (tests; `from_process` finds them).
    pub fn with_not_utf8(mut self, var: &str) -> Env {
        self.vars.remove(var);
        self.not_utf8.insert(var.to_string());
        self
    }

    /// Reads from the given pairs (tests, or a caller that assembled its own set).
    pub fn from_pairs<I, K, V>(pairs: I) -> Env
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            not_utf8: HashSet::new(),
            problems: RefCell::new(Vec::new()),
            schema: Schema::default(),
        }
    }

    /// Records a problem with `var` (for checks that involve several variables).
    pub fn problem(&mut self, var: &str, what: impl Into<String>) {
        self.record(var, what.into());
    }

    fn record(&self, var: &str, what: String) {
        let mut problems = self.problems.borrow_mut();
        if problems.iter().any(|p| p.var == var && p.what == what) {
            return;
        }
        problems.push(Problem {
            var: var.to_string(),
            what,
        });
    }

    /// Records the problem when `var` is set to bytes that are not UTF-8; its value is never shown.
    fn check_utf8(&self, var: &str) {
        if self.not_utf8.contains(var) {
            self.record(var, NOT_UTF8.to_string());
        }
    }

    /// Whether `var` is set (to anything, also bytes that are not UTF-8).
    pub fn is_set(&self, var: &str) -> bool {
        self.vars.contains_key(var) || self.not_utf8.contains(var)
    }

    /// The value of `var`, or `None` when it is unset or empty (after trimming), or not UTF-8
    /// (then a problem is recorded).
    pub fn optional(&self, var: &str) -> Option<String> {
        self.schema.declare(var, |_| {});
        self.check_utf8(var);
        self.vars
            .get(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The value of `var`; records "is missing" when it is unset or empty.
    pub fn required(&mut self, var: &str) -> String {
        self.schema.declare(var, |d| d.required = true);
        match self.optional(var) {
            Some(v) => v,
            None if self.not_utf8.contains(var) => String::new(),
            None => {
                self.problem(var, "is missing (required, must not be empty)");
                String::new()
            }
        }
    }

    /// The value of a secret variable, untrimmed (a key may legitimately end in a space);
    /// records "is missing" when unset or empty. Its value never appears in a problem.
    pub fn secret(&mut self, var: &str) -> String {
        self.schema.declare(var, |d| {
            d.secret = true;
            d.required = true;
        });
        self.check_utf8(var);
        match self.vars.get(var).filter(|v| !v.is_empty()) {
            Some(v) => v.clone(),
            None if self.not_utf8.contains(var) => String::new(),
            None => {
                self.problem(var, "is missing (required, must not be empty)");
                String::new()
            }
        }
    }

    /// The value of an optional secret variable, untrimmed, or `None` when unset, empty or only
    /// blanks.
    /// Declared secret (so the contract says it must come from a Secret) even when unset.
    pub fn optional_secret(&mut self, var: &str) -> Option<String> {
        self.schema.declare(var, |d| d.secret = true);
        self.optional_untrimmed(var)
    }

    /// The value of `var` as it is (not trimmed), or `None` when it is unset, empty or only
    /// blanks (like [`Env::optional`]), or not UTF-8 (then a problem is recorded).
    pub fn optional_untrimmed(&self, var: &str) -> Option<String> {
        self.optional(var)?;
        self.vars.get(var).cloned()
    }

    /// A value parsed by `parse`, or `default` when unset. A parse error is recorded
    /// together with the offending value.
    /// The schema shows `default` when it is a string, number, boolean or duration (or an
    /// `Option` of one); other types are declared without a default (see [`Env::parse_or`]).
    pub fn parse_with<T: 'static>(
        &mut self,
        var: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let shown = shown_default(&default);
        self.schema.declare(var, |d| d.default = d.default.take().or(shown));
        self.parse_value(var, default, parse)
    }

    fn parse_value<T>(&mut self, var: &str, default: T, parse: impl FnOnce(&str) -> Result<T, String>) -> T {
        match self.optional(var) {
            None => default,
            Some(raw) => match parse(&raw) {
                Ok(v) => v,
                Err(why) => {
                    self.problem(var, format!("{why}, got {raw:?}"));
                    default
                }
            },
        }
    }

    /// A boolean: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (any case).
    pub fn bool(&mut self, var: &str, default: bool) -> bool {
        self.schema.declare(var, |d| {
            d.kind = Kind::Bool;
            d.default = Some(Value::Bool(default));
        });
        self.parse_value(var, default, parse_bool)
    }

    /// A whole number of type `T`; negative or fractional input is an error for unsigned `T`.
    pub fn number<T: FromStr + Copy + fmt::Display>(&mut self, var: &str, default: T) -> T {
        self.schema.declare(var, |d| {
            d.kind = Kind::Integer;
            d.default = Some(number_value(&default));
        });
        self.parse_value(var, default, |s| {
            s.parse::<T>()
                .map_err(|_| "expected a whole number in range".to_string())
        })
    }

    /// A whole number that must lie in `min..=max`.
    pub fn number_in<T>(&mut self, var: &str, default: T, min: T, max: T) -> T
    where
        T: FromStr + Copy + PartialOrd + fmt::Display,
    {
        self.schema.declare(var, |d| {
            d.kind = Kind::Integer;
            d.default = Some(number_value(&default));
            d.min = Some(number_value(&min));
            d.max = Some(number_value(&max));
        });
        self.parse_value(var, default, |s| {
            let v = s
                .parse::<T>()
                .map_err(|_| format!("expected a whole number from {min} to {max}"))?;
            if v < min || v > max {
                return Err(format!("expected a whole number from {min} to {max}"));
            }
            Ok(v)
        })
    }

    /// A duration such as `90s`, `15m`, `1h30m`, `500ms`; a bare number is seconds.
    pub fn duration(&mut self, var: &str, default: Option<Duration>) -> Option<Duration> {
        self.schema.declare(var, |d| {
            d.kind = Kind::Duration;
            d.default = default.map(|v| Value::String(format_duration(v)));
        });
        self.parse_value(var, default, |s| parse_duration(s).map(Some))
    }

    /// A duration with a default, so the caller writes the default once.
    pub fn duration_or(&mut self, var: &str, default: Duration) -> Duration {
        self.duration(var, Some(default)).unwrap_or(default)
    }

    /// The value of `var`, or `default` when it is unset or empty.
    pub fn string_or(&mut self, var: &str, default: &str) -> String {
        self.schema
            .declare(var, |d| d.default = Some(Value::String(default.to_string())));
        self.optional(var).unwrap_or_else(|| default.to_string())
    }

    /// A value parsed by `parse`, with a default written as text (parsed by the same `parse`, so
    /// the default is written once and the schema shows it as the user would write it).
    ///
    /// # Panics
    /// When `default` does not parse: that is a bug in the caller, found by its first test.
    pub fn parse_or<T>(&mut self, var: &str, default: &str, parse: impl Fn(&str) -> Result<T, String>) -> T {
        self.schema
            .declare(var, |d| d.default = Some(Value::String(default.to_string())));
        let fallback = match parse(default) {
            Ok(v) => v,
            Err(why) => panic!("the default of {var} does not parse: {why}"),
        };
        self.parse_value(var, fallback, parse)
    }

    /// A DNS label (RFC 1123) of at most `max` bytes (and never more than 63), or `None` when unset.
    pub fn dns_label(&mut self, var: &str, max: usize) -> Option<String> {
        let max = max.min(crate::names::DNS_LABEL_MAX);
        self.schema.declare(var, |d| {
            d.kind = Kind::DnsLabel;
            d.max_length = Some(max);
        });
        self.parse_value(var, None, |v| {
            crate::names::check_dns_label(v, max).map(|_| Some(v.to_string()))
        })
    }

    /// Declares `var` required and records `problem` (e.g. "is missing (why it is needed)")
    /// when it is unset or empty; for a variable read with another method first.
    pub fn require(&mut self, var: &str, problem: &str) {
        self.schema.declare(var, |d| d.required = true);
        if self.optional(var).is_none() {
            self.problem(var, problem);
        }
    }

    /// Declares `LOG_LEVEL` and records the problem when `outcome` (of
    /// [`crate::log::init_from_env`], which read it first to set up logging) is an error, so an
    /// invalid level is reported like every other problem, with the value given.
    pub fn log_level(&mut self, outcome: Result<log::LevelFilter, String>) -> log::LevelFilter {
        self.schema
            .declare("LOG_LEVEL", |d| d.default = Some(Value::String("info".into())));
        // Read through `self` too, so a value that is not UTF-8 is reported by name.
        let raw = self.optional("LOG_LEVEL").unwrap_or_default();
        match outcome {
            Ok(level) => level,
            Err(why) => {
                self.problem("LOG_LEVEL", format!("{why}, got {raw:?}"));
                log::LevelFilter::Info
            }
        }
    }

    /// A handle on what this environment's reads declare; it outlives [`Env::finish`].
    pub fn schema(&self) -> Schema {
        self.schema.clone()
    }

    /// Ends reading: `Ok` when nothing was wrong, else every problem in the order found.
    pub fn finish(self) -> Result<(), ConfigError> {
        let problems = self.problems.into_inner();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

const NOT_UTF8: &str = "is not valid UTF-8 (its value is not shown)";

/// Parses a boolean the way [`Env::bool`] does.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

/// Parses `90s`, `15m`, `1h30m`, `500ms`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const WHY: &str = "expected a duration such as 90s, 15m, 1h30m or 500ms";
    let s = s.trim();
    if s.is_empty() {
        return Err(WHY.into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or(WHY)?;
        if digits == 0 {
            return Err(WHY.into());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| WHY)?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or(WHY)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or(WHY)?),
            _ => return Err(WHY.into()),
        };
        total = total.checked_add(part).ok_or(WHY)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Writes a duration the way [`parse_duration`] reads it (`1h30m`, `90s`, `500ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// What a variable's value is, in the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Text, checked (if at all) by the binary's own rule.
    String,
    /// `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
    Bool,
    /// A whole number, within `min..=max` when those are given.
    Integer,
    /// A duration as [`parse_duration`] reads it.
    Duration,
    /// An RFC 1123 label of at most `max_length` bytes.
    DnsLabel,
    /// Not read by the binary itself but passed on to a program or library it runs.
    PassThrough,
}

/// One variable in the schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Declared {
    pub name: String,
    pub kind: Kind,
    /// The value used when the variable is unset (absent: no value, or not shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Its value is never logged or echoed.
    pub secret: bool,
    /// The binary refuses to start without it.
    pub required: bool,
}

/// The variables a binary's reads declared, in the order first read.
#[derive(Debug, Clone, Default)]
pub struct Schema(Arc<Mutex<Vec<Declared>>>);

impl Schema {
    /// Declares `var` (once; later reads refine it through `refine`).
    fn declare(&self, var: &str, refine: impl FnOnce(&mut Declared)) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = match all.iter().position(|d| d.name == var) {
            Some(i) => i,
            None => {
                all.push(Declared {
                    name: var.to_string(),
                    kind: Kind::String,
                    default: None,
                    min: None,
                    max: None,
                    max_length: None,
                    secret: false,
                    required: false,
                });
                all.len() - 1
            }
        };
        let before = all[at].kind;
        refine(&mut all[at]);
        // A later plain read (`optional`) does not turn a typed variable back into text.
        if all[at].kind == Kind::String && before != Kind::String {
            all[at].kind = before;
        }
    }

    /// Declares variables a binary does not read itself but passes on (to rclone, say).
    pub fn pass_through(&self, vars: &[&str]) {
        for var in vars {
            let known = self
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|d| d.name == *var);
            if !known {
                self.declare(var, |d| d.kind = Kind::PassThrough);
            }
        }
    }

    /// Declares a variable read outside [`Env`] (by a library that reads the process
    /// environment itself), with its default.
    pub fn external(&self, var: &str, default: Option<&str>) {
        self.declare(var, |d| {
            d.default = d.default.take().or(default.map(|v| Value::String(v.to_string())))
        });
    }

    /// Everything declared so far.
    pub fn vars(&self) -> Vec<Declared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The schema as printed by `--print-config-schema`: `{"variables": [...]}`.
    pub fn to_json(&self) -> String {
        self.to_json_with(serde_json::Map::new())
    }

    /// The schema with more facts of the binary's contract beside `variables`.
    pub fn to_json_with(&self, mut more: serde_json::Map<String, Value>) -> String {
        more.insert("variables".into(), serde_json::json!(self.vars()));
        Value::Object(more).to_string()
    }
}

/// A number as JSON (an integer when it is one, else its text).
fn number_value<T: fmt::Display>(n: &T) -> Value {
    let text = n.to_string();
    match text.parse::<i64>() {
        Ok(i) => Value::from(i),
        Err(_) => match text.parse::<u64>() {
            Ok(u) => Value::from(u),
            Err(_) => Value::String(text),
        },
    }
}

/// `default` as JSON when its type is one a schema can show.
fn shown_default<T: 'static>(default: &T) -> Option<Value> {
    let any = default as &dyn Any;
    macro_rules! numbers {
        ($($t:ty),*) => {
            $(
                if let Some(n) = any.downcast_ref::<$t>() {
                    return Some(number_value(n));
                }
                if let Some(n) = any.downcast_ref::<Option<$t>>() {
                    return n.as_ref().map(number_value);
                }
            )*
        };
    }
    numbers!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);
    // An empty text default is no default (an empty value counts as unset).
    if let Some(s) = any.downcast_ref::<String>() {
        return (!s.is_empty()).then(|| Value::String(s.clone()));
    }
    if let Some(s) = any.downcast_ref::<Option<String>>() {
        return s.clone().map(Value::String);
    }
    if let Some(s) = any.downcast_ref::<&'static str>() {
        return Some(Value::String(s.to_string()));
    }
    if let Some(b) = any.downcast_ref::<bool>() {
        return Some(Value::Bool(*b));
    }
    if let Some(d) = any.downcast_ref::<Duration>() {
        return Some(Value::String(format_duration(*d)));
    }
    if let Some(d) = any.downcast_ref::<Option<Duration>>() {
        return d.map(|d| Value::String(format_duration(d)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_secrets_keep_their_blanks_but_blank_is_unset() {
        let mut env = Env::from_pairs([("K", "key "), ("B", "  ")]);
        assert_eq!(env.optional_secret("K").as_deref(), Some("key "));
        assert_eq!(env.optional_secret("B"), None);
        assert_eq!(env.optional_untrimmed("K").as_deref(), Some("key "));
        assert!(env.schema().vars().iter().all(|d| d.secret));
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut env = Env::from_pairs([("A", ""), ("N", "abc"), ("B", "maybe"), ("S", "  ")]);
        let _ = env.required("A");
        let _ = env.required("MISSING");
        let n: u32 = env.number("N", 3);
        let b = env.bool("B", false);
        let _ = env.secret("SECRET");
        assert_eq!(n, 3);
        assert!(!b);
        let err = env.finish().unwrap_err();
        let vars: Vec<_> = err.problems.iter().map(|p| p.var.as_str()).collect();
        assert_eq!(vars, ["A", "MISSING", "N", "B", "SECRET"]);
        let text = err.to_string();
        assert!(text.contains("5 problems"), "{text}");
        assert!(
            text.contains("N: expected a whole number in range, got \"abc\""),
            "{text}"
        );
        // Problems are separated, not terminated.
        assert!(text.contains("): A: "), "{text}");
        assert!(!text.ends_with(';') && text.matches("; ").count() == 4, "{text}");
    }

    #[test]
    fn secrets_are_not_trimmed_or_echoed() {
        let mut env = Env::from_pairs([("K", " key ")]);
        assert_eq!(env.secret("K"), " key ");
        assert!(env.finish().is_ok());
    }

    #[test]
    fn numbers_reject_negative_and_out_of_range() {
        let mut env = Env::from_pairs([("U", "-1"), ("R", "11"), ("OK", "7")]);
        let _: u64 = env.number("U", 0);
        let _: u32 = env.number_in("R", 1, 0, 10);
        assert_eq!(env.number_in::<u32>("OK", 1, 0, 10), 7);
        let err = env.finish().unwrap_err();
        assert_eq!(err.problems.len(), 2);
        assert!(err.problems[1].what.contains("from 0 to 10"));
    }

    #[test]
    fn values_that_are_not_utf8_are_named_once_never_shown() {
        let mut env = Env::from_pairs([("OK", "1")]).with_not_utf8("S").with_not_utf8("O");
        assert_eq!(env.secret("S"), "");
        assert_eq!(env.optional("O"), None);
        assert_eq!(env.required("O"), "");
        assert!(env.is_set("O"));
        let err = env.finish().unwrap_err();
        let vars: Vec<_> = err.problems.iter().map(|p| p.var.as_str()).collect();
        assert_eq!(vars, ["S", "O"]);
        assert!(err.problems[0].what.contains("not valid UTF-8"));
    }

    #[test]
    fn booleans() {
        for (s, v) in [("TRUE", true), ("0", false), ("yes", true), ("off", false)] {
            assert_eq!(parse_bool(s), Ok(v));
        }
        assert!(parse_bool("y").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "m", "5x", "1.5h", "-3s", "h5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_declare_the_schema_they_parse_by() {
        let mut env = Env::from_pairs([("N", "7"), ("LOG_LEVEL", "loud")]);
        let schema = env.schema();
        env.log_level(Err("expected one of off, error, warn, info, debug, trace".into()));
        let _ = env.required("URL");
        let _ = env.secret("KEY");
        let _ = env.bool("DRY_RUN", false);
        let _: u32 = env.number_in("N", 3, 1, 10);
        let _ = env.duration("WAIT", Some(Duration::from_secs(90)));
        let _ = env.duration_or("GRACE", Duration::from_millis(1500));
        let _ = env.string_or("BIN", "rclone");
        let _ = env.parse_with("NAME", "kube-system".to_string(), |s| Ok(s.to_string()));
        let _ = env.parse_with("EMPTY", String::new(), |s| Ok(s.to_string()));
        let _: u64 = env.parse_or(
            "SIZE",
            "1Gi",
            |s| if s == "1Gi" { Ok(1 << 30) } else { Err("no".into()) },
        );
        let _ = env.dns_label("VARIANT", 20);
        env.require("PREFIX", "is required: say which folder");
        let _ = env.optional("DRY_RUN"); // a later plain read keeps the kind
        schema.pass_through(&["TZ", "BIN"]);
        schema.external("KUBECONFIG", None);
        let err = env.finish().unwrap_err();
        let problems: Vec<_> = err.problems.iter().map(|p| (p.var.as_str(), p.what.as_str())).collect();
        assert!(problems.contains(&(
            "LOG_LEVEL",
            "expected one of off, error, warn, info, debug, trace, got \"loud\""
        )));
        assert!(problems.contains(&("PREFIX", "is required: say which folder")));

        let vars = schema.vars();
        let names: Vec<_> = vars.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "LOG_LEVEL",
                "URL",
                "KEY",
                "DRY_RUN",
                "N",
                "WAIT",
                "GRACE",
                "BIN",
                "NAME",
                "EMPTY",
                "SIZE",
                "VARIANT",
                "PREFIX",
                "TZ",
                "KUBECONFIG"
            ]
        );
        let get = |name: &str| vars.iter().find(|d| d.name == name).unwrap().clone();
        let json = |name: &str| serde_json::to_value(get(name)).unwrap();
        assert_eq!(
            json("N"),
            serde_json::json!({"name": "N", "kind": "integer", "default": 3, "min": 1, "max": 10,
                               "secret": false, "required": false})
        );
        assert_eq!((get("URL").required, get("URL").secret), (true, false));
        assert_eq!((get("KEY").required, get("KEY").secret), (true, true));
        assert_eq!(get("DRY_RUN").kind, Kind::Bool);
        assert_eq!(get("DRY_RUN").default, Some(Value::Bool(false)));
        assert_eq!(
            (get("WAIT").kind, get("WAIT").default),
            (Kind::Duration, Some("1m30s".into()))
        );
        assert_eq!(get("GRACE").default, Some("1s500ms".into()));
        assert_eq!(
            (get("BIN").kind, get("BIN").default),
            (Kind::String, Some("rclone".into()))
        );
        assert_eq!(get("NAME").default, Some("kube-system".into()));
        assert_eq!(get("EMPTY").default, None);
        assert_eq!(get("SIZE").default, Some("1Gi".into()));
        assert_eq!(
            (get("VARIANT").kind, get("VARIANT").max_length),
            (Kind::DnsLabel, Some(20))
        );
        assert!(get("PREFIX").required);
        assert_eq!(get("TZ").kind, Kind::PassThrough);
        assert_eq!(get("LOG_LEVEL").default, Some("info".into()));
        let printed: Value = serde_json::from_str(&schema.to_json()).unwrap();
        assert_eq!(printed["variables"].as_array().unwrap().len(), names.len());
    }

    #[test]
    fn a_value_that_parses_is_not_a_problem_and_the_default_text_is_used_when_unset() {
        let parse = |s: &str| s.parse::<u32>().map_err(|_| "expected a number".to_string());
        let mut env = Env::from_pairs([("A", "5")]);
        assert_eq!(env.parse_or("A", "9", parse), 5);
        assert_eq!(env.parse_or("B", "9", parse), 9);
        assert_eq!(env.dns_label("L", 100), None);
        env.require("A", "is missing");
        assert_eq!(env.log_level(Ok(log::LevelFilter::Debug)), log::LevelFilter::Debug);
        assert!(env.finish().is_ok());
        let mut env = Env::from_pairs([("L", &*"a".repeat(64))]);
        assert_eq!(env.dns_label("L", 100), None);
        let err = env.finish().unwrap_err();
        assert!(err.problems[0].what.contains("at most 63"), "{err}");
    }

    #[test]
    fn durations_are_written_the_way_they_are_read() {
        for ms in [0, 1, 999, 1000, 61_000, 3_600_000, 5_400_000, 90_061_001] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms}");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
    }
}
