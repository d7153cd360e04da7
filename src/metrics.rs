//! A small Prometheus registry: counters, gauges and histograms with labels, rendered in
//! the text exposition format (version 0.0.4).
//!
//! Metrics are registered once by name with their help text; each observation names its
//! label values. Everything is behind one mutex: the binaries record a handful of
//! observations per request, far below where contention would show.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Latency buckets in seconds, from 100 µs to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

type Labels = Vec<(String, String)>;

#[derive(Default, Clone)]
struct Series {
    value: f64,
    /// Histogram only: cumulative-to-be counts per bucket, and the sum.
    buckets: Vec<u64>,
    count: u64,
}

struct Family {
    help: String,
    kind: Kind,
    buckets: Vec<f64>,
    series: BTreeMap<Labels, Series>,
}

/// A set of metric families. Cheap to clone; clones share the data.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn register(&self, name: &str, help: &str, kind: Kind, buckets: &[f64]) {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        families.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            buckets: buckets.to_vec(),
            series: BTreeMap::new(),
        });
    }

    /// Declares a counter (a value that only goes up).
    pub fn counter(&self, name: &str, help: &str) {
        self.register(name, help, Kind::Counter, &[]);
    }

    /// Declares a gauge (a value that goes up and down).
    pub fn gauge(&self, name: &str, help: &str) {
        self.register(name, help, Kind::Gauge, &[]);
    }

    /// Declares a histogram with the given upper bounds (ascending).
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) {
        self.register(name, help, Kind::Histogram, buckets);
    }

    fn with_series(&self, name: &str, pairs: &[(&str, &str)], f: impl FnOnce(&mut Series, &Family)) {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let Some(family) = families.get_mut(name) else {
            debug_assert!(false, "metric {name} used before it was declared");
            return;
        };
        let nbuckets = family.buckets.len();
        let mut series = family.series.remove(&labels(pairs)).unwrap_or_else(|| Series {
            buckets: vec![0; nbuckets],
            ..Series::default()
        });
        f(&mut series, family);
        family.series.insert(labels(pairs), series);
    }

    /// Adds `by` to a counter.
    pub fn inc_by(&self, name: &str, pairs: &[(&str, &str)], by: f64) {
        self.with_series(name, pairs, |s, _| s.value += by);
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &str, pairs: &[(&str, &str)]) {
        self.inc_by(name, pairs, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, pairs: &[(&str, &str)], value: f64) {
        self.with_series(name, pairs, |s, _| s.value = value);
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &str, pairs: &[(&str, &str)], value: f64) {
        self.with_series(name, pairs, |s, family| {
            if let Some(i) = family.buckets.iter().position(|b| value <= *b) {
                s.buckets[i] += 1;
            }
            s.count += 1;
            s.value += value;
        });
    }

    /// The current value of a counter or gauge series (tests and readiness checks).
    pub fn value(&self, name: &str, pairs: &[(&str, &str)]) -> f64 {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        families
            .get(name)
            .and_then(|f| f.series.get(&labels(pairs)))
            .map_or(0.0, |s| if s.count > 0 { s.count as f64 } else { s.value })
    }

    /// The whole registry in Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, series) in &family.series {
                if family.kind != Kind::Histogram {
                    let _ = writeln!(out, "{name}{} {}", render_labels(labels, None), number(series.value));
                    continue;
                }
                let mut cumulative = 0;
                for (bound, n) in family.buckets.iter().zip(&series.buckets) {
                    cumulative += n;
                    let le = number(*bound);
                    let _ = writeln!(out, "{name}_bucket{} {cumulative}", render_labels(labels, Some(&le)));
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    render_labels(labels, Some("+Inf")),
                    series.count
                );
                let _ = writeln!(
                    out,
                    "{name}_sum{} {}",
                    render_labels(labels, None),
                    number(series.value)
                );
                let _ = writeln!(out, "{name}_count{} {}", render_labels(labels, None), series.count);
            }
        }
        out
    }
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let r = Registry::new();
        r.counter("x_requests_total", "Requests.");
        r.histogram("x_seconds", "Latency.", &[0.1, 1.0]);
        r.inc("x_requests_total", &[("code", "200")]);
        r.inc("x_requests_total", &[("code", "200")]);
        r.inc("x_requests_total", &[("code", "a\"b")]);
        r.observe("x_seconds", &[], 0.05);
        r.observe("x_seconds", &[], 0.5);
        r.observe("x_seconds", &[], 5.0);
        let text = r.render();
        assert!(text.contains("# TYPE x_requests_total counter\n"), "{text}");
        assert!(text.contains("x_requests_total{code=\"200\"} 2\n"), "{text}");
        assert!(text.contains("x_requests_total{code=\"a\\\"b\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_sum 5.55\n"), "{text}");
        assert!(text.contains("x_seconds_count 3\n"), "{text}");
        assert_eq!(r.value("x_requests_total", &[("code", "200")]), 2.0);
    }
}
