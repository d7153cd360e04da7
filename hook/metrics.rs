//! The hook's metrics, declared once: each line a typed handle (name, help, label names) that
//! the serving code records through; `declare` registers them all at start.

use lifeboat::metrics::LATENCY_BUCKETS;

lifeboat::metrics_table! {
    REQUESTS: Counter<1> = Counter::new(
        "hook_requests_total",
        "HTTP requests on the admission endpoint, by status code.",
        &["code"],
    );
    ADMISSIONS: Counter<1> = Counter::new(
        "hook_admissions_total",
        "Admission decisions, by result (injected, skipped, denied, invalid).",
        &["result"],
    );
    INJECTIONS: Counter<0> = Counter::new("hook_injections_total", "Pods that got Litestream injected.", &[]);
    DENIALS: Counter<1> = Counter::new(
        "hook_denials_total",
        "Pods denied, by the annotation at fault.",
        &["annotation"],
    );
    ERRORS: Counter<1> = Counter::new(
        "hook_errors_total",
        "Errors, by kind (accept, handshake, too_large, content_type, invalid, ...).",
        &["kind"],
    );
    BACKEND_KICKS: Counter<0> = Counter::new(
        "hook_backend_kicks_total",
        "Wake-ups sent to the HTTP layer for a request left unanswered (see proxy::watchdog).",
        &[],
    );
    TLS_RELOADS: Counter<1> = Counter::new(
        "hook_tls_reloads_total",
        "Certificate reloads after the files changed, by result.",
        &["result"],
    );
    REQUEST_SECONDS: Histogram<0> = Histogram::new(
        "hook_request_duration_seconds",
        "Time from a request's headers to its response, in seconds.",
        &[],
        LATENCY_BUCKETS,
    );
}
