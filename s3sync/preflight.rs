//! Pre-flight: both buckets reachable, credentials accepted, bucket present — checked with
//! rclone itself before the sync starts, and each failure explained in one clear line.
//!
//! The probe is `rclone lsf -R --files-only <remote>:<bucket>/<prefix>`, run with the same
//! remotes, credentials, TLS and timeouts as the sync. rclone streams this listing, so the
//! probe stops at the first object: its cost is one or a few LIST requests whatever the
//! bucket's size. The same probe tells the empty-source guard whether each side is empty.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use lifeboat::shutdown::Shutdown;

use crate::config::{Bucket, Config};
use crate::logfold::{self, Emit, Folded, Redactor};
use crate::rclone;

/// What the probe found out about one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// At least one object lies under the configured prefix.
    pub has_objects: bool,
}

/// Why a bucket failed its pre-flight check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The exit code to end with: rclone's own code for the listing.
    pub code: i32,
    /// One line: which bucket, what is wrong, rclone's words.
    pub message: String,
    /// A short machine-readable kind: bucket_missing, credentials, unreachable, tls, other.
    pub kind: &'static str,
}

/// Probes `bucket`. A stop request (SIGTERM/SIGINT) ends the probe at once; the caller then
/// checks `shutdown` before looking at the result.
pub fn probe(config: &Config, bucket: &Bucket, redactor: &Redactor, shutdown: &Shutdown) -> Result<Probe, Failure> {
    let mut cmd = rclone::command(config);
    cmd.args(rclone::probe_args(config, bucket));
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Failure {
        code: 1,
        kind: "other",
        message: format!("cannot run rclone ({}): {e}", config.rclone.display()),
    })?;
    let folded = Arc::new(Mutex::new(Folded::default()));
    let stderr = child.stderr.take().map(|stream| {
        let (folded, redactor) = (folded.clone(), redactor.clone());
        thread::spawn(move || logfold::fold(stream, &redactor, Emit::Debug, &folded))
    });
    let stdout = child.stdout.take();
    // std's Child never signals a process it has already reaped, so killing through it from
    // the watcher cannot hit a reused PID.
    let child = Arc::new(Mutex::new(child));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (child, done, shutdown) = (child.clone(), done.clone(), shutdown.clone());
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if shutdown.wait_timeout(Duration::from_millis(100)).is_some() {
                    let _ = lock(&child).kill();
                    return;
                }
            }
        })
    };
    let mut has_objects = false;
    if let Some(stdout) = stdout {
        let mut first = String::new();
        if BufReader::new(stdout)
            .read_line(&mut first)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            has_objects = true;
            // One object is all we need to know; stop the listing.
            let _ = lock(&child).kill();
        }
    }
    // Polled, so the lock is free for the watcher between looks.
    let status = loop {
        match lock(&child).try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        thread::sleep(Duration::from_millis(10));
    };
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    if let Some(t) = stderr {
        let _ = t.join();
    }
    if has_objects {
        return Ok(Probe { has_objects });
    }
    let status = status.map_err(|e| Failure {
        code: 1,
        kind: "other",
        message: format!("waiting for rclone failed: {e}"),
    })?;
    if status.success() {
        return Ok(Probe { has_objects: false });
    }
    let code = status.code().unwrap_or(1);
    let errors = folded.lock().unwrap_or_else(|e| e.into_inner()).errors.clone();
    Err(explain(bucket, code, &errors))
}

fn lock(child: &Mutex<Child>) -> MutexGuard<'_, Child> {
    child.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turns rclone's exit code and error lines into one clear message.
pub fn explain(bucket: &Bucket, code: i32, errors: &[String]) -> Failure {
    let detail = errors
        .last()
        .cloned()
        .unwrap_or_else(|| format!("rclone exited with code {code}"));
    let all = errors.join("\n");
    let has = |needles: &[&str]| needles.iter().any(|n| all.contains(n));
    let side = bucket.role.word();
    let (kind, what) = if code == 3 || has(&["directory not found", "NoSuchBucket"]) {
        (
            "bucket_missing",
            format!(
                "{side} bucket {:?} does not exist at {}",
                bucket.bucket, bucket.endpoint
            ),
        )
    } else if has(&[
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "StatusCode: 403",
        "StatusCode: 401",
    ]) {
        (
            "credentials",
            format!(
                "{side} credentials were rejected by {} ({}ACCESS_KEY / {}SECRET_KEY, or their permissions on bucket {:?})",
                bucket.endpoint,
                bucket.role.var_prefix(),
                bucket.role.var_prefix(),
                bucket.bucket
            ),
        )
    } else if has(&["x509:", "tls:", "certificate"]) {
        (
            "tls",
            format!("TLS with the {side} endpoint {} failed", bucket.endpoint),
        )
    } else if has(&[
        "connection refused",
        "no such host",
        "i/o timeout",
        "dial tcp",
        "connection reset",
        "network is unreachable",
        "context deadline exceeded",
        "EOF",
    ]) {
        (
            "unreachable",
            format!("{side} endpoint {} is unreachable", bucket.endpoint),
        )
    } else {
        (
            "other",
            format!(
                "listing the {side} bucket {:?} at {} failed",
                bucket.display(),
                bucket.endpoint
            ),
        )
    };
    Failure {
        code,
        kind,
        message: format!("{what}: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Role, Secret};

    fn bucket() -> Bucket {
        let c = crate::config::from_env(
            lifeboat::env::Env::from_pairs([
                ("SOURCE_S3_ENDPOINT", "http://127.0.0.1:1"),
                ("SOURCE_ACCESS_KEY", "a"),
                ("SOURCE_SECRET_KEY", "b"),
                ("SOURCE_BUCKET", "src"),
                ("DEST_S3_ENDPOINT", "http://127.0.0.1:2"),
                ("DEST_ACCESS_KEY", "c"),
                ("DEST_SECRET_KEY", "d"),
                ("DEST_BUCKET", "dst"),
                ("DEST_PREFIX", "/"),
                ("RCLONE_BINARY", "/bin/sh"),
            ]),
            Ok(log::LevelFilter::Info),
        )
        .unwrap();
        let b = c.dest;
        assert_eq!(b.role, Role::Dest);
        let _ = Secret::clone(&b.access_key);
        b
    }

    #[test]
    fn failures_are_named() {
        let b = bucket();
        let f = explain(&b, 3, &["error listing: directory not found".into()]);
        assert_eq!((f.kind, f.code), ("bucket_missing", 3));
        assert!(
            f.message
                .starts_with("destination bucket \"dst\" does not exist at http://127.0.0.1:2"),
            "{}",
            f.message
        );
        let f = explain(
            &b,
            1,
            &["api error SignatureDoesNotMatch: The request signature".into()],
        );
        assert_eq!(f.kind, "credentials");
        assert!(f.message.contains("DEST_SECRET_KEY"));
        let f = explain(&b, 5, &["dial tcp 127.0.0.1:2: connect: connection refused".into()]);
        assert_eq!((f.kind, f.code), ("unreachable", 5));
        let f = explain(&b, 1, &[]);
        assert_eq!(f.kind, "other");
        assert!(f.message.contains("rclone exited with code 1"));
    }
}
