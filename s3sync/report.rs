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

/// The run's metrics, declared once. A run sets each of them, except
/// `LAST_SUCCESS` when no run has succeeded yet; none is declared without a value.
mod metrics {
    lifeboat::metrics_table! {
        LAST_RUN: Gauge<0> = Gauge::new(
            "s3sync_last_run_timestamp_seconds",
            "When the last run ended (Unix time).",
            &[],
        );
        EXIT_CODE: Gauge<0> = Gauge::new("s3sync_exit_code", "The last run's exit code.", &[]);
        BYTES: Gauge<0> = Gauge::new("s3sync_bytes", "Bytes the last run transferred.", &[]);
        TRANSFERS: Gauge<0> = Gauge::new("s3sync_transfers", "Objects the last run copied.", &[]);
        DELETES: Gauge<0> = Gauge::new("s3sync_deletes", "Objects the last run deleted.", &[]);
        ERRORS: Gauge<0> = Gauge::new("s3sync_errors", "Errors rclone counted in the last run.", &[]);
        DURATION: Gauge<0> = Gauge::new("s3sync_duration_seconds", "Wall time of the last run.", &[]);
        VERIFIED: Gauge<0> = Gauge::new(
            "s3sync_verified",
            "1 if the last run verified the copy, 0 if verification failed or did not run.",
            &[],
        );
        OUTCOME: Gauge<1> = Gauge::new(
            "s3sync_outcome",
            "1 for the last run's outcome (success, refused, failed, ...).",
            &["outcome"],
        );
        LAST_SUCCESS: Gauge<0> = Gauge::new(
            "s3sync_last_success_timestamp_seconds",
            "When a run last succeeded (Unix time).",
            &[],
        );
    }
}

/// The text of the metrics; `previous_success` is carried over when this run did not succeed.
pub fn render(n: &RunNumbers<'_>, now: f64, previous_success: Option<f64>) -> String {
    let r = Registry::new();
    r.set(&metrics::LAST_RUN, [], now);
    r.set(&metrics::EXIT_CODE, [], f64::from(n.exit_code));
    r.set(&metrics::BYTES, [], n.bytes as f64);
    r.set(&metrics::TRANSFERS, [], n.transfers as f64);
    r.set(&metrics::DELETES, [], n.deletes as f64);
    r.set(&metrics::ERRORS, [], n.errors as f64);
    r.set(&metrics::DURATION, [], n.duration_s);
    r.set(&metrics::VERIFIED, [], if n.verified == Some(true) { 1.0 } else { 0.0 });
    r.set(&metrics::OUTCOME, [n.outcome], 1.0);
    let success = if n.exit_code == 0 { Some(now) } else { previous_success };
    if let Some(t) = success {
        r.set(&metrics::LAST_SUCCESS, [], t);
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
                .find_map(|l| l.strip_prefix(metrics::LAST_SUCCESS.name())?.trim().parse::<f64>().ok())
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
        // The system's roots, as the Pushgateway's Go clients read them; required for https
        // (a redirect from http to https with none trusts nothing and fails).
        let roots = match lifeboat::roots::ureq_system() {
            Ok(roots) => roots,
            Err(e) if url.to_ascii_lowercase().starts_with("https://") => {
                log::warn!(error:% = e; "cannot push the metrics");
                return;
            }
            Err(_) => ureq::tls::RootCerts::new_with_certs(&[]),
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .tls_config(lifeboat::tls::ureq_tls().root_certs(roots).build())
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

    /// The textfile's whole text, byte for byte (what node-exporter and the Pushgateway read).
    #[test]
    fn renders_the_exact_textfile() {
        let n = RunNumbers {
            outcome: "failed",
            exit_code: 3,
            bytes: 1024,
            transfers: 2,
            deletes: 1,
            errors: 4,
            duration_s: 2.25,
            verified: Some(false),
        };
        assert_eq!(
            render(&n, 1700000000.0, Some(1690000000.0)),
            "# HELP s3sync_bytes Bytes the last run transferred.\n\
             # TYPE s3sync_bytes gauge\n\
             s3sync_bytes 1024\n\
             # HELP s3sync_deletes Objects the last run deleted.\n\
             # TYPE s3sync_deletes gauge\n\
             s3sync_deletes 1\n\
             # HELP s3sync_duration_seconds Wall time of the last run.\n\
             # TYPE s3sync_duration_seconds gauge\n\
             s3sync_duration_seconds 2.25\n\
             # HELP s3sync_errors Errors rclone counted in the last run.\n\
             # TYPE s3sync_errors gauge\n\
             s3sync_errors 4\n\
             # HELP s3sync_exit_code The last run's exit code.\n\
             # TYPE s3sync_exit_code gauge\n\
             s3sync_exit_code 3\n\
             # HELP s3sync_last_run_timestamp_seconds When the last run ended (Unix time).\n\
             # TYPE s3sync_last_run_timestamp_seconds gauge\n\
             s3sync_last_run_timestamp_seconds 1700000000\n\
             # HELP s3sync_last_success_timestamp_seconds When a run last succeeded (Unix time).\n\
             # TYPE s3sync_last_success_timestamp_seconds gauge\n\
             s3sync_last_success_timestamp_seconds 1690000000\n\
             # HELP s3sync_outcome 1 for the last run's outcome (success, refused, failed, ...).\n\
             # TYPE s3sync_outcome gauge\n\
             s3sync_outcome{outcome=\"failed\"} 1\n\
             # HELP s3sync_transfers Objects the last run copied.\n\
             # TYPE s3sync_transfers gauge\n\
             s3sync_transfers 2\n\
             # HELP s3sync_verified 1 if the last run verified the copy, 0 if verification failed or did not run.\n\
             # TYPE s3sync_verified gauge\n\
             s3sync_verified 0\n"
        );
    }
}
