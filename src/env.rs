//! Configuration from environment variables, with every problem reported at once.
//!
//! An [`Env`] reads variables one by one; each read that fails records a [`Problem`]
//! naming the variable and returns a placeholder so reading can go on. [`Env::finish`]
//! then returns all problems together, so a user fixes a broken Job spec in one pass.
//! Empty values count as missing. Values of secret variables are never echoed. A variable
//! whose name or value is not UTF-8 is reported by name only (never its bytes) when read.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

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
        self.check_utf8(var);
        self.vars
            .get(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The value of `var`; records "is missing" when it is unset or empty.
    pub fn required(&mut self, var: &str) -> String {
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

    /// A value parsed by `parse`, or `default` when unset. A parse error is recorded
    /// together with the offending value.
    pub fn parse_with<T>(&mut self, var: &str, default: T, parse: impl FnOnce(&str) -> Result<T, String>) -> T {
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
        self.parse_with(var, default, parse_bool)
    }

    /// A whole number of type `T`; negative or fractional input is an error for unsigned `T`.
    pub fn number<T: FromStr + Copy>(&mut self, var: &str, default: T) -> T {
        self.parse_with(var, default, |s| {
            s.parse::<T>()
                .map_err(|_| "expected a whole number in range".to_string())
        })
    }

    /// A whole number that must lie in `min..=max`.
    pub fn number_in<T>(&mut self, var: &str, default: T, min: T, max: T) -> T
    where
        T: FromStr + Copy + PartialOrd + fmt::Display,
    {
        self.parse_with(var, default, |s| {
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
        self.parse_with(var, default, |s| parse_duration(s).map(Some))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
