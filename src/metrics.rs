//! A small Prometheus registry: counters, gauges and histograms with labels, rendered in
//! the text exposition format (version 0.0.4).
//!
//! Each binary declares its metrics once, with [`metrics_table!`]: typed handles
//! ([`Counter`], [`Gauge`], [`Histogram`]) carrying the name, help text and label names, and
//! a `declare` function that registers the whole table. A call site names a handle, never a
//! string, and gives exactly as many label values as the handle has label names, so a wrong
//! name, a counter `set` like a gauge or a missing label does not compile; a name or label
//! name that is not valid Prometheus syntax fails the build too (the constructors are `const`
//! and check it). Everything is behind one mutex: the binaries record a handful of
//! observations per request, far below where contention would show.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Latency buckets in seconds, from 100 µs to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The type of a metric family.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The name in the `# TYPE` line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// What a metric is: name, help, type, label names and (histograms) bucket bounds.
#[derive(Debug, PartialEq)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub buckets: &'static [f64],
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*` (`colon`) or `[a-zA-Z_][a-zA-Z0-9_]*`, checked at compile time.
const fn valid_name(name: &str, colon: bool) -> bool {
    let b = name.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ok = c.is_ascii_alphabetic() || c == b'_' || (colon && c == b':') || (i > 0 && c.is_ascii_digit());
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl Desc {
    const fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Desc {
        assert!(valid_name(name, true), "not a Prometheus metric name");
        let mut i = 0;
        while i < labels.len() {
            assert!(valid_name(labels[i], false), "not a Prometheus label name");
            let b = labels[i].as_bytes();
            assert!(
                !(b.len() >= 2 && b[0] == b'_' && b[1] == b'_'),
                "label names starting with __ are reserved"
            );
            assert!(
                !(matches!(kind, Kind::Histogram) && same(labels[i], "le")),
                "a histogram cannot have a label le"
            );
            let mut j = 0;
            while j < i {
                assert!(!same(labels[i], labels[j]), "a label name is given twice");
                j += 1;
            }
            i += 1;
        }
        let mut k = 1;
        while k < buckets.len() {
            assert!(buckets[k - 1] < buckets[k], "histogram buckets must ascend");
            k += 1;
        }
        Desc {
            name,
            help,
            kind,
            labels,
            buckets,
        }
    }
}

/// A value that only goes up, with `N` labels.
pub struct Counter<const N: usize>(Desc);
/// A value that goes up and down, with `N` labels.
pub struct Gauge<const N: usize>(Desc);
/// A distribution of observations over fixed buckets, with `N` labels.
pub struct Histogram<const N: usize>(Desc);

impl<const N: usize> Counter<N> {
    pub const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str; N]) -> Self {
        Counter(Desc::new(name, help, Kind::Counter, labels, &[]))
    }
}

impl<const N: usize> Gauge<N> {
    pub const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str; N]) -> Self {
        Gauge(Desc::new(name, help, Kind::Gauge, labels, &[]))
    }
}

impl<const N: usize> Histogram<N> {
    /// `buckets`: the upper bounds, ascending (`+Inf` is implied).
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str; N],
        buckets: &'static [f64],
    ) -> Self {
        Histogram(Desc::new(name, help, Kind::Histogram, labels, buckets))
    }
}

/// A handle of any arity, as a table lists it.
pub trait Family: Sync {
    fn desc(&self) -> &Desc;
}

/// A handle with `N` labels: what [`Registry::value`] reads.
pub trait Metric<const N: usize>: Family {}

macro_rules! handle_traits {
    ($($t:ident),*) => {$(
        impl<const N: usize> Metric<N> for $t<N> {}
        impl<const N: usize> $t<N> {
            /// The metric's name, as the text format writes it.
            pub const fn name(&self) -> &'static str {
                self.0.name
            }
        }
        impl<const N: usize> Family for $t<N> {
            fn desc(&self) -> &Desc {
                &self.0
            }
        }
    )*};
}
handle_traits!(Counter, Gauge, Histogram);

/// Declares a binary's metrics once: a `pub static` handle per line, `ALL` (the table, in
/// order) and `declare(&Registry)`, which registers the table so `/metrics` lists every family
/// from the start.
///
/// ```
/// lifeboat::metrics_table! {
///     /// Requests, by status code.
///     REQUESTS: Counter<1> = Counter::new("x_requests_total", "Requests.", &["code"]);
/// }
/// let r = lifeboat::metrics::Registry::new();
/// declare(&r);
/// r.inc(&REQUESTS, ["200"]);
/// assert_eq!(r.value(&REQUESTS, ["200"]), 1.0);
/// ```
///
/// What does not compile: a name that is not in a table,
///
/// ```compile_fail
/// lifeboat::metrics_table! { REQUESTS: Counter<1> = Counter::new("x_requests_total", "R.", &["code"]); }
/// lifeboat::metrics::Registry::new().inc(&REQUESTS_TOTAL, ["200"]);
/// ```
///
/// the wrong number of label values,
///
/// ```compile_fail
/// lifeboat::metrics_table! { REQUESTS: Counter<1> = Counter::new("x_requests_total", "R.", &["code"]); }
/// lifeboat::metrics::Registry::new().inc(&REQUESTS, []);
/// ```
///
/// a counter set like a gauge,
///
/// ```compile_fail
/// lifeboat::metrics_table! { REQUESTS: Counter<0> = Counter::new("x_requests_total", "R.", &[]); }
/// lifeboat::metrics::Registry::new().set(&REQUESTS, [], 1.0);
/// ```
///
/// and a name that Prometheus would refuse (checked when the table is compiled).
///
/// ```compile_fail
/// lifeboat::metrics_table! { REQUESTS: Counter<0> = Counter::new("x-requests-total", "R.", &[]); }
/// lifeboat::metrics::Registry::new().inc(&REQUESTS, []);
/// ```
#[macro_export]
macro_rules! metrics_table {
    ($($(#[$attr:meta])* $name:ident: $kind:ident<$n:literal> = $value:expr;)+) => {
        #[allow(unused_imports)]
        use $crate::metrics::{Counter, Gauge, Histogram};
        $($(#[$attr])* pub static $name: $kind<$n> = $value;)+
        /// Every metric of this table, in the order declared.
        #[allow(dead_code)]
        pub static ALL: &[&dyn $crate::metrics::Family] = &[$(&$name),+];
        /// Registers every metric of this table.
        #[allow(dead_code)]
        pub fn declare(registry: &$crate::metrics::Registry) {
            for family in ALL {
                registry.declare(*family);
            }
        }
        #[cfg(test)]
        #[test]
        fn metrics_table_names_each_metric_once() {
            if let Err(e) = $crate::metrics::check_table(ALL) {
                panic!("{e}");
            }
        }
    };
}

/// A table's rule that `const` checks cannot see: no name twice, and no name that another
/// family's rendered series would also write (`x_count` beside a histogram `x`).
pub fn check_table(table: &[&dyn Family]) -> Result<(), String> {
    let mut written = std::collections::BTreeSet::new();
    for family in table {
        let d = family.desc();
        let mut names = vec![d.name.to_string()];
        if d.kind == Kind::Histogram {
            names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{}{s}", d.name)));
        }
        for n in names {
            if !written.insert(n.clone()) {
                return Err(format!(
                    "metric {} clashes with another metric of the table ({n})",
                    d.name
                ));
            }
        }
    }
    Ok(())
}

type Labels = Vec<(String, String)>;

#[derive(Default, Clone)]
struct Series {
    value: f64,
    /// Histogram only: cumulative-to-be counts per bucket, and the sum.
    buckets: Vec<u64>,
    count: u64,
}

struct Entry {
    desc: &'static Desc,
    series: BTreeMap<Labels, Series>,
}

/// A set of metric families. Cheap to clone; clones share the data.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<&'static str, Entry>>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers a family with no series yet (its `# HELP` and `# TYPE` lines show). A family
    /// used before it is declared is registered on first use.
    pub fn declare(&self, family: &'static dyn Family) {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        Self::entry(&mut families, family.desc());
    }

    fn entry<'a>(families: &'a mut BTreeMap<&'static str, Entry>, desc: &'static Desc) -> &'a mut Entry {
        let entry = families.entry(desc.name).or_insert_with(|| Entry {
            desc,
            series: BTreeMap::new(),
        });
        // Two handles with one name would mean one of them is not in the table's one line.
        debug_assert!(
            std::ptr::eq(entry.desc, desc) || *entry.desc == *desc,
            "metric {} declared twice",
            desc.name
        );
        entry
    }

    fn with_series(&self, desc: &'static Desc, values: &[&str], f: impl FnOnce(&mut Series, &Desc)) {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let entry = Self::entry(&mut families, desc);
        let key = labels(desc, values);
        let nbuckets = desc.buckets.len();
        let series = entry.series.entry(key).or_insert_with(|| Series {
            buckets: vec![0; nbuckets],
            ..Series::default()
        });
        f(series, desc);
    }

    /// Adds `by` to a counter.
    pub fn inc_by<const N: usize>(&self, counter: &'static Counter<N>, values: [&str; N], by: f64) {
        self.with_series(&counter.0, &values, |s, _| s.value += by);
    }

    /// Adds one to a counter.
    pub fn inc<const N: usize>(&self, counter: &'static Counter<N>, values: [&str; N]) {
        self.inc_by(counter, values, 1.0);
    }

    /// Sets a gauge.
    pub fn set<const N: usize>(&self, gauge: &'static Gauge<N>, values: [&str; N], value: f64) {
        self.with_series(&gauge.0, &values, |s, _| s.value = value);
    }

    /// Records one observation in a histogram.
    pub fn observe<const N: usize>(&self, histogram: &'static Histogram<N>, values: [&str; N], value: f64) {
        self.with_series(&histogram.0, &values, |s, desc| {
            if let Some(i) = desc.buckets.iter().position(|b| value <= *b) {
                s.buckets[i] += 1;
            }
            s.count += 1;
            s.value += value;
        });
    }

    /// The current value of a counter or gauge series, or a histogram's count (tests and
    /// readiness checks); 0 for a series never recorded.
    pub fn value<const N: usize>(&self, metric: &impl Metric<N>, values: [&str; N]) -> f64 {
        let desc = metric.desc();
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        families
            .get(desc.name)
            .and_then(|f| f.series.get(&labels(desc, &values)))
            .map_or(0.0, |s| if s.count > 0 { s.count as f64 } else { s.value })
    }

    /// The whole registry in Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let desc = family.desc;
            let _ = writeln!(out, "# HELP {name} {}", escape_help(desc.help));
            let _ = writeln!(out, "# TYPE {name} {}", desc.kind.name());
            for (labels, series) in &family.series {
                if desc.kind != Kind::Histogram {
                    let _ = writeln!(out, "{name}{} {}", render_labels(labels, None), number(series.value));
                    continue;
                }
                let mut cumulative = 0;
                for (bound, n) in desc.buckets.iter().zip(&series.buckets) {
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

fn labels(desc: &Desc, values: &[&str]) -> Labels {
    desc.labels
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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

    crate::metrics_table! {
        REQUESTS: Counter<1> = Counter::new("x_requests_total", "Requests.", &["code"]);
        SECONDS: Histogram<0> = Histogram::new("x_seconds", "Latency.", &[], &[0.1, 1.0]);
        CHECKS: Counter<2> = Counter::new("x_checks_total", "Checks,\nby cluster.", &["cluster", "result"]);
        UP: Gauge<0> = Gauge::new("x_up", "Up.", &[]);
        UNUSED: Gauge<1> = Gauge::new("x_unused", "Never set.", &["k"]);
    }

    #[test]
    fn renders_counters_and_histograms() {
        let r = Registry::new();
        declare(&r);
        r.inc(&REQUESTS, ["200"]);
        r.inc(&REQUESTS, ["200"]);
        r.inc(&REQUESTS, ["a\"b"]);
        r.observe(&SECONDS, [], 0.05);
        r.observe(&SECONDS, [], 0.5);
        r.observe(&SECONDS, [], 5.0);
        let text = r.render();
        assert!(text.contains("# TYPE x_requests_total counter\n"), "{text}");
        assert!(text.contains("x_requests_total{code=\"200\"} 2\n"), "{text}");
        assert!(text.contains("x_requests_total{code=\"a\\\"b\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_sum 5.55\n"), "{text}");
        assert!(text.contains("x_seconds_count 3\n"), "{text}");
        assert_eq!(r.value(&REQUESTS, ["200"]), 2.0);
        assert_eq!(r.value(&SECONDS, []), 3.0);
    }

    /// The whole text, exactly: families by name, declared ones with no series show their
    /// HELP and TYPE lines, labels in the handle's order, help escaped.
    #[test]
    fn renders_the_exact_text() {
        let r = Registry::new();
        declare(&r);
        r.inc(&CHECKS, ["b", "ok"]);
        r.inc_by(&CHECKS, ["a", "refused"], 2.0);
        r.set(&UP, [], 0.25);
        assert_eq!(
            r.render(),
            "# HELP x_checks_total Checks,\\nby cluster.\n\
             # TYPE x_checks_total counter\n\
             x_checks_total{cluster=\"a\",result=\"refused\"} 2\n\
             x_checks_total{cluster=\"b\",result=\"ok\"} 1\n\
             # HELP x_requests_total Requests.\n\
             # TYPE x_requests_total counter\n\
             # HELP x_seconds Latency.\n\
             # TYPE x_seconds histogram\n\
             # HELP x_unused Never set.\n\
             # TYPE x_unused gauge\n\
             # HELP x_up Up.\n\
             # TYPE x_up gauge\n\
             x_up 0.25\n"
        );
    }

    /// A handle used without `declare` still records (registered on first use); an
    /// undeclared, unused one does not show.
    #[test]
    fn a_handle_registers_itself_on_first_use() {
        let r = Registry::new();
        r.set(&UP, [], 1.0);
        assert_eq!(r.render(), "# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n");
        assert_eq!(r.value(&UP, []), 1.0);
        assert_eq!(r.value(&REQUESTS, ["200"]), 0.0);
    }

    #[test]
    fn the_table_lists_every_handle_once_in_order() {
        let names: Vec<&str> = ALL.iter().map(|f| f.desc().name).collect();
        assert_eq!(
            names,
            ["x_requests_total", "x_seconds", "x_checks_total", "x_up", "x_unused"]
        );
        assert_eq!(CHECKS.desc().labels, ["cluster", "result"]);
        assert_eq!(SECONDS.desc().kind, Kind::Histogram);
    }

    #[test]
    fn a_table_with_a_clash_is_refused() {
        static A: Counter<0> = Counter::new("x_total", "A.", &[]);
        static B: Gauge<1> = Gauge::new("x_total", "B.", &["k"]);
        static H: Histogram<0> = Histogram::new("x", "H.", &[], &[1.0]);
        static C: Counter<0> = Counter::new("x_count", "C.", &[]);
        assert!(check_table(&[&A, &H]).is_ok());
        let e = check_table(&[&A, &B]).unwrap_err();
        assert!(e.contains("metric x_total clashes"), "{e}");
        let e = check_table(&[&C, &H]).unwrap_err();
        assert!(e.contains("(x_count)"), "{e}");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("a_b:c9", true));
        assert!(!valid_name("a_b:c9", false));
        assert!(!valid_name("9a", true));
        assert!(!valid_name("a-b", true));
        assert!(!valid_name("", true));
        assert!(valid_name("_x", false));
    }
}
