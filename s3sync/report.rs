//! Metrics for a short-lived Job: at the end of every run (after the summary line) the run's
//! numbers in Prometheus' text format, written to `METRICS_FILE` (for node-exporter's textfile
//! collector, replaced atomically) and/or pushed to a Pushgateway at `METRICS_PUSH_URL`
//! (`PUT <url>/metrics/job/s3sync/instance/<dest bucket>`, bounded to 10 s). A failure to report
//! is logged as a warning and never changes the exit code.
//!
//! `s3sync_last_success_timestamp_seconds` survives failed runs: a textfile run carries the
//! previous file's value over, and a push replaces only the series it sends (a failed run does
//! not send it, so the Pushgateway keeps the last successful run's value).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifeboat::metrics::Registry;

/// What one run reports.
pub struct RunNumbers<'a> {
    pub outcome: &'a str,
    pub exit_code: i32,
    pub bytes: u64,
    pub transfers: u64,
    pub deletes: u64,
    pub errors: u64,
    pub duration_s: f64,
    /// `None`: not verified.
    pub verified: Option<bool>,
}

const LAST_SUCCESS: &str = "s3sync_last_success_timestamp_seconds";

/// The text of the metrics; `previous_success` is carried over when this run did not succeed.
pub fn render(n: &RunNumbers<'_>, now: f64, previous_success: Option<f64>) -> String {
    let r = Registry::new();
    let gauges: [(&str, &str, f64); 8] = [
        (
            "s3sync_last_run_timestamp_seconds",
            "When the last run ended (Unix time).",
            now,
        ),
        ("s3sync_exit_code", "The last run's exit code.", f64::from(n.exit_code)),
        ("s3sync_bytes", "Bytes the last run transferred.", n.bytes as f64),
        ("s3sync_transfers", "Objects the last run copied.", n.transfers as f64),
        ("s3sync_deletes", "Objects the last run deleted.", n.deletes as f64),
        (
            "s3sync_errors",
            "Errors rclone counted in the last run.",
            n.errors as f64,
        ),
        ("s3sync_duration_seconds", "Wall time of the last run.", n.duration_s),
        (
            "s3sync_verified",
            "1 if the last run verified the copy, 0 if verification failed or did not run.",
            if n.verified == Some(true) { 1.0 } else { 0.0 },
        ),
    ];
    for (name, help, value) in gauges {
        r.gauge(name, help);
        r.set(name, &[], value);
    }
    r.gauge(
        "s3sync_outcome",
        "1 for the last run's outcome (success, refused, failed, ...).",
    );
    r.set("s3sync_outcome", &[("outcome", n.outcome)], 1.0);
    let success = if n.exit_code == 0 { Some(now) } else { previous_success };
    if let Some(t) = success {
        r.gauge(LAST_SUCCESS, "When a run last succeeded (Unix time).");
        r.set(LAST_SUCCESS, &[], t);
    }
    r.render()
}

/// Writes and/or pushes the metrics, as configured.
pub fn report(file: Option<&Path>, push: Option<&str>, instance: &str, n: &RunNumbers<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if let Some(path) = file {
        let previous = std::fs::File::open(path).ok().and_then(|f| {
            use std::io::Read;
            let mut text = String::new();
            f.take(64 * 1024).read_to_string(&mut text).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix(LAST_SUCCESS)?.trim().parse::<f64>().ok())
        });
        let text = render(n, now, previous);
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            log::warn!(path:% = path.display(), error:% = e; "cannot write METRICS_FILE");
        }
    }
    if let Some(url) = push {
        let text = render(n, now, None);
        let target = format!("{}/metrics/job/s3sync/instance/{instance}", url.trim_end_matches('/'));
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        match agent
            .put(&target)
            .header("content-type", "text/plain; version=0.0.4")
            .send(text.as_bytes())
        {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => log::warn!(status = r.status().as_u16(); "the Pushgateway refused the metrics"),
            Err(e) => log::warn!(error:% = e; "cannot push the metrics"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_success_survives_a_failed_run() {
        let mut n = RunNumbers {
            outcome: "success",
            exit_code: 0,
            bytes: 5,
            transfers: 1,
            deletes: 0,
            errors: 0,
            duration_s: 1.5,
            verified: Some(true),
        };
        let ok = render(&n, 100.0, Some(50.0));
        assert!(ok.contains("s3sync_last_success_timestamp_seconds 100\n"), "{ok}");
        assert!(
            ok.contains("s3sync_verified 1\n") && ok.contains("s3sync_outcome{outcome=\"success\"} 1\n"),
            "{ok}"
        );
        n.exit_code = 7;
        n.outcome = "refused";
        n.verified = None;
        let failed = render(&n, 200.0, Some(100.0));
        assert!(
            failed.contains("s3sync_last_success_timestamp_seconds 100\n"),
            "{failed}"
        );
        assert!(failed.contains("s3sync_exit_code 7\n") && failed.contains("s3sync_verified 0\n"));
        assert!(!render(&n, 200.0, None).contains("last_success"));
    }
}
