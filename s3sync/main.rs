//! s3sync: makes one S3 bucket (or prefix) a copy of another by driving `rclone sync`.
//!
//! The flow, top to bottom: read the configuration (exit 2 on any problem, before any network
//! call) → the overlap check → list both sides with lifeboat's own S3 client (the pre-flight)
//! → plan: uncopyable keys, the empty-source guard, the deletion limits (exit 7 before
//! anything changes) → `rclone sync`, its output folded into our JSON log, SIGTERM/SIGINT
//! forwarded → verification by a second listing (exit 11 on a difference) → one summary line,
//! always → exit with 0, 2, 7, 11, or rclone's own code. See docs/s3sync.md for every variable.
//!
//! Longer than the ~500-line guide: this is that story, step by step, with the summary and
//! its metrics; each step's work is in its own module.
mod child;
mod config;
mod guard;
mod logfold;
mod overlap;
mod plan;
mod preflight;
mod rclone;
mod report;
mod verify;
mod version;

use std::time::Instant;

use lifeboat::env::Env;
use lifeboat::shutdown::{signal_name, Shutdown};
use log::Level;

use config::{Compare, Config, MaxDelete};
use lifeboat::s3::trust::Trust;
use logfold::{Redactor, Stats};

/// Exit code for configuration problems (rclone uses 2 for usage errors, the same idea).
const EXIT_CONFIG: i32 = 2;
/// Exit code when s3sync itself stops the run for safety (the empty-source guard): the code
/// rclone uses for fatal, not-retryable errors such as "--max-delete threshold reached".
const EXIT_REFUSED: i32 = 7;
/// Exit code when SYNC_TIMEOUT stopped the sync: rclone's "temporary error, a retry may help".
const EXIT_TIMEOUT: i32 = 5;
/// Exit code when the verification after the sync found the copy different from the source
/// (rclone's codes end at 10).
const EXIT_VERIFY: i32 = 11;

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "--print-config-schema") {
        println!("{}", config_schema().to_json());
        return;
    }
    std::process::exit(run());
}

/// `s3sync --print-config-schema`: what `config::from_env` reads (its own reads, run against an
/// empty environment, declare it), and the variables passed through to rclone.
fn config_schema() -> lifeboat::env::Schema {
    let env = Env::from_pairs(Vec::<(String, String)>::new());
    let schema = env.schema();
    let _ = config::from_env(env, Ok(log::LevelFilter::Info));
    schema.pass_through(&rclone::PASS_THROUGH);
    schema
}

/// How a run ended: the summary's `outcome` field and the metrics' label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Success,
    DryRun,
    Failed,
    Refused,
    Stopped,
    VerifyFailed,
    ConfigError,
}

impl Kind {
    /// The name in the summary line and the metrics.
    fn as_str(self) -> &'static str {
        match self {
            Kind::Success => "success",
            Kind::DryRun => "dry_run",
            Kind::Failed => "failed",
            Kind::Refused => "refused",
            Kind::Stopped => "stopped",
            Kind::VerifyFailed => "verify_failed",
            Kind::ConfigError => "config_error",
        }
    }

    /// The summary line's message.
    fn message(self) -> &'static str {
        match self {
            Kind::Success => "sync finished",
            Kind::DryRun => "dry run finished: nothing was changed",
            Kind::Stopped => "sync stopped",
            Kind::Refused => "sync refused",
            Kind::ConfigError => "not started: invalid configuration",
            Kind::VerifyFailed => "sync finished but the copy differs from the source",
            Kind::Failed => "sync failed",
        }
    }
}

/// How the run ended, for the summary line.
struct Outcome {
    kind: Kind,
    code: i32,
    stats: Option<Stats>,
    error: Option<String>,
    signal: Option<i32>,
    extra: Extra,
}

/// What the plan and the verification add to the summary.
#[derive(Default)]
struct Extra {
    uncopyable: u64,
    deletes_planned: Option<u64>,
    deletes_allowed: Option<u64>,
    /// The deletion limit that stopped the run.
    limit: Option<&'static str>,
    /// `None`: not verified (dry run, VERIFY=false, or the run did not get that far).
    verified: Option<bool>,
    verify: Option<verify::Report>,
}

impl Outcome {
    fn early(kind: Kind, code: i32, error: impl Into<String>) -> Outcome {
        Outcome {
            kind,
            code,
            stats: None,
            error: Some(error.into()),
            signal: None,
            extra: Extra::default(),
        }
    }

    fn with(mut self, extra: Extra) -> Outcome {
        self.extra = extra;
        self
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
            let outcome = Outcome::early(Kind::ConfigError, EXIT_CONFIG, err.to_string());
            return summarize(None, &outcome, started);
        }
    };
    let mut overlap = overlap::check(&config.source, &config.dest, config.connect_timeout);
    if let (Ok(()), Some(b)) = (&overlap, &config.backup) {
        // The backup folder is on the destination endpoint; it must not be inside the source.
        let backup = config::Bucket {
            bucket: b.bucket.clone(),
            prefix: b.prefix.clone(),
            ..config.dest.clone()
        };
        overlap =
            overlap::check(&config.source, &backup, config.connect_timeout).map_err(|e| format!("BACKUP_PREFIX: {e}"));
    }
    if let Err(why) = overlap {
        let problems = [format!("DEST_PREFIX: {why}")];
        log::error!(problems:serde = problems; "invalid configuration (1 problem): DEST_PREFIX: {why}");
        let outcome = Outcome::early(
            Kind::ConfigError,
            EXIT_CONFIG,
            format!("invalid configuration (1 problem): DEST_PREFIX: {why}"),
        );
        return summarize(Some(&config), &outcome, started);
    }
    match version::check(&config.rclone) {
        Ok(v) => log::debug!(version = v.as_str(); "rclone version"),
        Err(why) => {
            let problem = format!("RCLONE_BINARY: {why}");
            log::error!(problems:serde = [&problem]; "invalid configuration (1 problem): {problem}");
            let outcome = Outcome::early(
                Kind::ConfigError,
                EXIT_CONFIG,
                format!("invalid configuration (1 problem): {problem}"),
            );
            return summarize(Some(&config), &outcome, started);
        }
    }
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => {
            let outcome = Outcome::early(Kind::Failed, 1, format!("cannot install signal handlers: {e}"));
            return summarize(Some(&config), &outcome, started);
        }
    };
    child::become_subreaper();
    let outcome = sync(&config, &shutdown);
    child::reap_orphans();
    summarize(Some(&config), &outcome, started)
}

/// Pre-flight and plan, sync, verification.
fn sync(config: &Config, shutdown: &Shutdown) -> Outcome {
    let mut secrets: Vec<&str> = Vec::new();
    for side in [&config.source, &config.dest] {
        if let config::Auth::Static { access_key, secret_key } = &side.auth {
            secrets.extend([access_key.expose(), secret_key.expose()]);
        }
    }
    secrets.extend(
        config
            .aws_env
            .iter()
            .filter(|(k, _)| {
                [
                    "AWS_SECRET_ACCESS_KEY",
                    "AWS_SESSION_TOKEN",
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                ]
                .contains(k)
            })
            .map(|(_, v)| v.expose()),
    );
    let redactor = Redactor::new(secrets);
    log::info!(
        source = config.source.display().as_str(),
        source_endpoint = config.source.endpoint.as_str(),
        dest = config.dest.display().as_str(),
        dest_endpoint = config.dest.endpoint.as_str(),
        dry_run = config.dry_run,
        compare = config.compare.name(),
        max_delete = max_delete_text(config.max_delete).as_str(),
        max_delete_percent = config.max_delete_percent,
        verify = config.verify,
        rclone = config.rclone.display().to_string().as_str();
        "starting"
    );
    if let Some(signal) = shutdown.requested() {
        return stopped_before_sync(signal);
    }
    // Only https endpoints need the trust store (reading it costs a few ms).
    let https = [&config.source, &config.dest]
        .iter()
        .any(|b| b.endpoint.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://")));
    let trust = if https { Trust::load() } else { Trust::default() };

    // Pre-flight: both sides listed in full by our own client, at once.
    let (source, dest) = match preflight::list_both(config, &trust, shutdown) {
        Ok(Some([s, d])) => (
            plan::side(s, &config.source.key_prefix()),
            plan::side(d, &config.dest.key_prefix()),
        ),
        Ok(None) => return stopped_before_sync(shutdown.requested().unwrap_or(libc::SIGTERM)),
        Err(f) => {
            // A server's error text could quote a credential back.
            let message = redactor.apply(&f.message);
            log::error!(kind = f.kind, exit_code = f.code; "pre-flight failed: {message}");
            return Outcome::early(Kind::Failed, f.code, message);
        }
    };
    log::info!(
        source_objects = source.objects.len(),
        dest_objects = dest.objects.len();
        "pre-flight ok: both buckets listed"
    );

    // Objects rclone cannot represent: named, counted, refused unless allowed.
    let mut outcome_extra = Extra {
        uncopyable: source.uncopyable.len() as u64,
        ..Extra::default()
    };
    if !source.uncopyable.is_empty() {
        let first: Vec<&str> = source.uncopyable.iter().take(plan::NAMED).map(String::as_str).collect();
        let what = format!(
            "{} source objects have keys rclone cannot copy one to one (an empty path segment: a leading '/', \
             '//' inside, or a trailing '/' directory marker): {}",
            source.uncopyable.len(),
            first.join(", ")
        );
        if !config.allow_uncopyable_keys {
            let why = format!("refusing to sync: {what}; nothing was copied or deleted. Set ALLOW_UNCOPYABLE_KEYS=true to sync everything else and leave these out");
            log::error!(uncopyable = source.uncopyable.len(), keys:serde = first; "{why}");
            return Outcome::early(Kind::Refused, EXIT_REFUSED, why).with(outcome_extra);
        }
        log::warn!(uncopyable = source.uncopyable.len(), keys:serde = first; "{what}; ALLOW_UNCOPYABLE_KEYS=true: they are left out");
    }
    if !dest.uncopyable.is_empty() {
        let first: Vec<&str> = dest.uncopyable.iter().take(plan::NAMED).map(String::as_str).collect();
        log::warn!(uncopyable = dest.uncopyable.len(), keys:serde = first;
            "{} destination objects have keys rclone cannot handle; they are neither compared nor deleted", dest.uncopyable.len());
    }

    let (source_n, dest_n) = (source.objects.len() as u64, dest.objects.len() as u64);
    if let Err(why) = guard::check(source_n, dest_n, config.allow_empty_source) {
        log::error!("{why}");
        return Outcome::early(Kind::Refused, EXIT_REFUSED, why).with(outcome_extra);
    }
    if source_n == 0 && dest_n == 0 {
        log::warn!(source = config.source.display().as_str();
            "the source lists no objects, so there is nothing to sync: check SOURCE_BUCKET and SOURCE_PREFIX (a typo there syncs nothing, every run, with exit 0)");
    }

    // Plan, then act: the deletion limits are checked before anything is copied or deleted.
    let planned = plan::plan(&source, &dest);
    outcome_extra.deletes_planned = Some(planned.deletions);
    log::info!(deletes_planned = planned.deletions, first:serde = planned.first_deletions; "plan made");
    let max_delete = match config.max_delete {
        MaxDelete::Limit(n) => Some(n),
        MaxDelete::Unlimited => None,
    };
    if let Err(t) = plan::check_limits(&planned, max_delete, config.max_delete_percent) {
        outcome_extra.limit = Some(t.limit);
        outcome_extra.deletes_allowed = Some(t.allowed);
        if !config.dry_run {
            log::error!(limit = t.limit, deletes_planned = planned.deletions, deletes_allowed = t.allowed; "{}", t.message);
            return Outcome::early(Kind::Refused, EXIT_REFUSED, t.message).with(outcome_extra);
        }
        log::warn!(limit = t.limit, deletes_planned = planned.deletions, deletes_allowed = t.allowed;
            "dry run: a real run would be refused: {}", t.message);
    }
    // Nothing to do: with COMPARE=checksum rclone skips an object exactly when size and MD5
    // match, so when every object matches by MD5 (and nothing is to be deleted) its run would
    // change nothing. It is not started; the comparison just made is the verification.
    if config.compare == Compare::Checksum && !config.dry_run && source.uncopyable.is_empty() {
        let report = verify::compare(&source, &dest);
        if report.ok() && report.by_md5 == report.objects {
            log::info!(objects = report.objects, by_md5 = report.by_md5, elapsed_s = 0.0;
                "verified: the destination already equals the source (every object by size and MD5): nothing to do, rclone not started");
            outcome_extra.verified = Some(true);
            let checks = report.objects;
            outcome_extra.verify = Some(report);
            return Outcome {
                kind: Kind::Success,
                code: 0,
                stats: Some(Stats {
                    checks,
                    ..Stats::default()
                }),
                error: None,
                signal: None,
                extra: outcome_extra,
            };
        }
    }
    let (allowed, _) = plan::allowed(max_delete, config.max_delete_percent, planned.dest_objects);
    let backstop = (allowed != u64::MAX).then_some(allowed);
    if let Some(signal) = shutdown.requested() {
        return stopped_before_sync(signal);
    }

    let server_side = overlap::server_side(
        &config.source,
        &config.dest,
        config.server_side_copy,
        config.connect_timeout,
    );
    let args = rclone::sync_args(config, backstop, server_side);
    log::info!(args:serde = args; "running rclone sync");
    let mut cmd = rclone::command(config);
    cmd.args(&args);
    let limits = child::Limits {
        grace: config.stop_grace,
        deadline: config.sync_timeout.map(|t| Instant::now() + t),
    };
    let ended = match child::run(cmd, shutdown, &redactor, limits) {
        Ok(ended) => ended,
        Err(e) => {
            return Outcome::early(
                Kind::Failed,
                1,
                format!("cannot run rclone ({}): {e}", config.rclone.display()),
            )
            .with(outcome_extra)
        }
    };
    let error = ended.folded.errors.last().cloned();
    let outcome = match (ended.stopped_by, ended.code) {
        _ if ended.timed_out => Outcome {
            kind: Kind::Failed,
            code: EXIT_TIMEOUT,
            stats: ended.folded.stats,
            error: Some(format!(
                "timeout: the sync did not finish within SYNC_TIMEOUT ({}s) and was stopped",
                config.sync_timeout.unwrap_or_default().as_secs()
            )),
            signal: None,
            extra: outcome_extra,
        },
        (Some(signal), code) => Outcome {
            kind: Kind::Stopped,
            code: if code == 0 { 128 + signal } else { code },
            stats: ended.folded.stats,
            error: Some(format!("stopped by {}", signal_name(signal))),
            signal: Some(signal),
            extra: outcome_extra,
        },
        // rclone always ends with a stats line (--stats-log-level NOTICE); a program that
        // exits 0 without one did not sync anything.
        (None, 0) if ended.folded.stats.is_none() => Outcome {
            kind: Kind::Failed,
            code: 1,
            stats: None,
            error: Some(format!(
                "{} exited 0 without rclone's final stats line: RCLONE_BINARY does not behave like rclone",
                config.rclone.display()
            )),
            signal: None,
            extra: outcome_extra,
        },
        (None, 0) => Outcome {
            kind: if config.dry_run { Kind::DryRun } else { Kind::Success },
            code: 0,
            stats: ended.folded.stats,
            error: None,
            signal: None,
            extra: outcome_extra,
        },
        (None, code) => Outcome {
            kind: Kind::Failed,
            code,
            stats: ended.folded.stats,
            error: Some(error.unwrap_or_else(|| format!("rclone exited with code {code}"))),
            signal: None,
            extra: outcome_extra,
        },
    };
    if outcome.kind != Kind::Success || !config.verify {
        return outcome;
    }
    verify_after(config, &trust, shutdown, &redactor, outcome)
}

/// Lists both sides again and compares them; a difference turns success into `EXIT_VERIFY`.
fn verify_after(
    config: &Config,
    trust: &Trust,
    shutdown: &Shutdown,
    redactor: &Redactor,
    mut outcome: Outcome,
) -> Outcome {
    let started = Instant::now();
    let (source, dest) = match preflight::list_both(config, trust, shutdown) {
        Ok(Some([s, d])) => (
            plan::side(s, &config.source.key_prefix()),
            plan::side(d, &config.dest.key_prefix()),
        ),
        Ok(None) => {
            let signal = shutdown.requested().unwrap_or(libc::SIGTERM);
            outcome.kind = Kind::Stopped;
            outcome.code = 128 + signal;
            outcome.signal = Some(signal);
            outcome.error = Some(format!("stopped by {} during the verification", signal_name(signal)));
            outcome.extra.verified = Some(false);
            return outcome;
        }
        Err(f) => {
            let message = redactor.apply(&f.message);
            log::error!(kind = f.kind; "verification could not list: {message}");
            outcome.kind = Kind::VerifyFailed;
            outcome.code = EXIT_VERIFY;
            outcome.error = Some(format!("the copy could not be verified: {message}"));
            outcome.extra.verified = Some(false);
            return outcome;
        }
    };
    let report = verify::compare(&source, &dest);
    let elapsed_s = logfold::round_ms(started.elapsed().as_secs_f64());
    outcome.extra.verified = Some(report.ok());
    if report.ok() {
        log::info!(objects = report.objects, by_md5 = report.by_md5, elapsed_s = elapsed_s; "verified: the destination equals the source");
    } else {
        let why = format!(
            "verification failed: {} missing, {} extra, {} differing in the destination; first: {}",
            report.missing,
            report.extra,
            report.differing,
            report.first.join("; ")
        );
        log::error!(missing = report.missing, extra = report.extra, differing = report.differing, keys:serde = report.first; "{why}");
        outcome.kind = Kind::VerifyFailed;
        outcome.code = EXIT_VERIFY;
        outcome.error = Some(why);
    }
    outcome.extra.verify = Some(report);
    outcome
}

fn stopped_before_sync(signal: i32) -> Outcome {
    Outcome {
        kind: Kind::Stopped,
        code: 128 + signal,
        stats: None,
        error: Some(format!("stopped by {} before the sync started", signal_name(signal))),
        signal: Some(signal),
        extra: Extra::default(),
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
    let v = outcome.extra.verify.as_ref();
    let msg = outcome.kind.message();
    log::log!(
        target: lifeboat::log::SUMMARY_TARGET,
        level,
        outcome = outcome.kind.as_str(),
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
        verified = outcome.extra.verified,
        verify_objects = v.map(|r| r.objects),
        verify_missing = v.map(|r| r.missing),
        verify_extra = v.map(|r| r.extra),
        verify_differing = v.map(|r| r.differing),
        deletes_planned = outcome.extra.deletes_planned,
        deletes_allowed = outcome.extra.deletes_allowed,
        limit = outcome.extra.limit,
        uncopyable = outcome.extra.uncopyable,
        error = outcome.error.as_deref();
        "{msg}"
    );
    if let Some(c) = config.filter(|c| c.metrics_file.is_some() || c.metrics_push_url.is_some()) {
        let numbers = report::RunNumbers {
            outcome: outcome.kind.as_str(),
            exit_code: outcome.code,
            bytes: stats.bytes,
            transfers: stats.transfers,
            deletes: stats.deletes,
            errors: stats.errors,
            duration_s: elapsed_s,
            verified: outcome.extra.verified,
        };
        report::report(
            c.metrics_file.as_deref(),
            c.metrics_push_url.as_deref(),
            &c.dest.bucket,
            &numbers,
        );
    }
    outcome.code
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn outcome_kinds_have_the_documented_names_and_their_own_messages() {
        let all = [
            Kind::Success,
            Kind::DryRun,
            Kind::Failed,
            Kind::Refused,
            Kind::Stopped,
            Kind::VerifyFailed,
            Kind::ConfigError,
        ];
        let names: Vec<_> = all.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "success",
                "dry_run",
                "failed",
                "refused",
                "stopped",
                "verify_failed",
                "config_error"
            ]
        );
        let messages: std::collections::HashSet<_> = all.iter().map(|k| k.message()).collect();
        assert_eq!(messages.len(), all.len());
    }
}
