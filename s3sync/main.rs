//! s3sync: makes one S3 bucket (or prefix) a copy of another by driving `rclone sync`.
//!
//! The flow, top to bottom: read the configuration (exit 2 on any problem, before any network
//! call) → pre-flight both buckets with rclone → the empty-source guard → `rclone sync`, its
//! output folded into our JSON log, SIGTERM/SIGINT forwarded → one summary line, always →
//! exit with 0, 2, or rclone's own code. See the README's s3sync section for every variable.

mod child;
mod config;
mod guard;
mod logfold;
mod overlap;
mod preflight;
mod rclone;

use std::time::Instant;

use lifeboat::env::Env;
use lifeboat::shutdown::{signal_name, Shutdown};
use log::Level;

use config::{Config, MaxDelete};
use logfold::{Redactor, Stats};

/// Exit code for configuration problems (rclone uses 2 for usage errors, the same idea).
const EXIT_CONFIG: i32 = 2;
/// Exit code when s3sync itself stops the run for safety (the empty-source guard): the code
/// rclone uses for fatal, not-retryable errors such as "--max-delete threshold reached".
const EXIT_REFUSED: i32 = 7;

fn main() {
    std::process::exit(run());
}

/// How the run ended, for the summary line.
struct Outcome {
    /// success, dry_run, failed, refused, stopped, config_error.
    kind: &'static str,
    code: i32,
    stats: Option<Stats>,
    error: Option<String>,
    signal: Option<i32>,
}

impl Outcome {
    fn early(kind: &'static str, code: i32, error: impl Into<String>) -> Outcome {
        Outcome {
            kind,
            code,
            stats: None,
            error: Some(error.into()),
            signal: None,
        }
    }
}

fn run() -> i32 {
    let started = Instant::now();
    let level = lifeboat::log::init_from_env();
    let config = match config::from_env(Env::from_process(), level) {
        Ok(config) => config,
        Err(err) => {
            let problems: Vec<String> = err.problems.iter().map(|p| format!("{}: {}", p.var, p.what)).collect();
            log::error!(problems:serde = problems; "{err}");
            let outcome = Outcome::early("config_error", EXIT_CONFIG, err.to_string());
            return summarize(None, &outcome, started);
        }
    };
    if let Err(why) = overlap::check(&config.source, &config.dest, config.connect_timeout) {
        let problems = [format!("DEST_PREFIX: {why}")];
        log::error!(problems:serde = problems; "invalid configuration (1 problem): DEST_PREFIX: {why}");
        let outcome = Outcome::early(
            "config_error",
            EXIT_CONFIG,
            format!("invalid configuration (1 problem): DEST_PREFIX: {why}"),
        );
        return summarize(Some(&config), &outcome, started);
    }
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => {
            let outcome = Outcome::early("failed", 1, format!("cannot install signal handlers: {e}"));
            return summarize(Some(&config), &outcome, started);
        }
    };
    child::become_subreaper();
    let outcome = sync(&config, &shutdown);
    child::reap_orphans();
    summarize(Some(&config), &outcome, started)
}

/// Pre-flight, guard, sync.
fn sync(config: &Config, shutdown: &Shutdown) -> Outcome {
    let redactor = Redactor::new([
        config.source.access_key.expose(),
        config.source.secret_key.expose(),
        config.dest.access_key.expose(),
        config.dest.secret_key.expose(),
    ]);
    log::info!(
        source = config.source.display().as_str(),
        source_endpoint = config.source.endpoint.as_str(),
        dest = config.dest.display().as_str(),
        dest_endpoint = config.dest.endpoint.as_str(),
        dry_run = config.dry_run,
        compare = config.compare.name(),
        max_delete = max_delete_text(config.max_delete).as_str(),
        rclone = config.rclone.display().to_string().as_str();
        "starting"
    );

    if let Some(signal) = shutdown.requested() {
        return stopped_before_sync(signal);
    }
    // Both buckets are probed at once: the pre-flight costs one rclone start, not two.
    let results = std::thread::scope(|scope| {
        let source = scope.spawn(|| preflight::probe(config, &config.source, &redactor, shutdown));
        let dest = preflight::probe(config, &config.dest, &redactor, shutdown);
        [source.join().expect("pre-flight thread panicked"), dest]
    });
    if let Some(signal) = shutdown.requested() {
        return stopped_before_sync(signal);
    }
    let mut probes = Vec::new();
    for (bucket, result) in [&config.source, &config.dest].into_iter().zip(results) {
        match result {
            Ok(probe) => {
                log::info!(bucket = bucket.display().as_str(), side = bucket.role.word(), has_objects = probe.has_objects; "pre-flight ok");
                probes.push(probe);
            }
            Err(f) => {
                log::error!(kind = f.kind, side = bucket.role.word(), exit_code = f.code; "pre-flight failed: {}", f.message);
                return Outcome::early("failed", f.code, f.message);
            }
        }
    }
    if let Err(why) = guard::check(probes[0], probes[1], config.allow_empty_source) {
        log::error!("{why}");
        return Outcome::early("refused", EXIT_REFUSED, why);
    }
    if let Some(signal) = shutdown.requested() {
        return stopped_before_sync(signal);
    }

    let args = rclone::sync_args(config);
    log::info!(args:serde = args; "running rclone sync");
    let mut cmd = rclone::command(config);
    cmd.args(&args);
    let ended = match child::run(cmd, shutdown, &redactor) {
        Ok(ended) => ended,
        Err(e) => {
            return Outcome::early(
                "failed",
                1,
                format!("cannot run rclone ({}): {e}", config.rclone.display()),
            )
        }
    };
    let error = ended.folded.errors.last().cloned();
    match (ended.stopped_by, ended.code) {
        (Some(signal), code) => Outcome {
            kind: "stopped",
            code: if code == 0 { 128 + signal } else { code },
            stats: ended.folded.stats,
            error: Some(format!("stopped by {}", signal_name(signal))),
            signal: Some(signal),
        },
        (None, 0) => Outcome {
            kind: if config.dry_run { "dry_run" } else { "success" },
            code: 0,
            stats: ended.folded.stats,
            error: None,
            signal: None,
        },
        (None, code) => Outcome {
            kind: "failed",
            code,
            stats: ended.folded.stats,
            error: Some(error.unwrap_or_else(|| format!("rclone exited with code {code}"))),
            signal: None,
        },
    }
}

fn stopped_before_sync(signal: i32) -> Outcome {
    Outcome {
        kind: "stopped",
        code: 128 + signal,
        stats: None,
        error: Some(format!("stopped by {} before the sync started", signal_name(signal))),
        signal: Some(signal),
    }
}

fn max_delete_text(m: MaxDelete) -> String {
    match m {
        MaxDelete::Limit(n) => n.to_string(),
        MaxDelete::Unlimited => "unlimited".into(),
    }
}

/// Logs the one summary line every run ends with, and returns the exit code.
fn summarize(config: Option<&Config>, outcome: &Outcome, started: Instant) -> i32 {
    let stats = outcome.stats.clone().unwrap_or_default();
    let level = if outcome.code == 0 { Level::Info } else { Level::Error };
    let elapsed_s = logfold::round_ms(started.elapsed().as_secs_f64());
    let msg = match outcome.kind {
        "success" => "sync finished",
        "dry_run" => "dry run finished: nothing was changed",
        "stopped" => "sync stopped",
        "refused" => "sync refused",
        "config_error" => "not started: invalid configuration",
        _ => "sync failed",
    };
    log::log!(
        level,
        outcome = outcome.kind,
        exit_code = outcome.code,
        dry_run = config.map(|c| c.dry_run).unwrap_or(false),
        bytes = stats.bytes,
        transfers = stats.transfers,
        checks = stats.checks,
        deletes = stats.deletes,
        errors = stats.errors,
        elapsed_s = elapsed_s,
        rclone_stats = outcome.stats.is_some(),
        signal = outcome.signal.map(signal_name),
        error = outcome.error.as_deref();
        "{msg}"
    );
    outcome.code
}
