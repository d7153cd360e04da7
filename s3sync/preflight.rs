//! Pre-flight: both buckets reachable, credentials accepted, bucket present — and each side's
//! full listing under its prefix, for the deletion plan (`plan.rs`). Done in-process with
//! s3sync's own S3 client (`s3.rs`), both sides at once, each failure explained in one line.
//!
//! The first ListObjectsV2 request of each side is the reachability check; its failure ends
//! the run with a kind (`bucket_missing`, `credentials`, `unreachable`, `tls`, `timeout`,
//! `other`) and the exit code rclone would have used for the same failure. Each request is
//! bounded by [`REQUEST_TIMEOUT`] (and `IO_TIMEOUT` if shorter), the whole listing by
//! `LIST_TIMEOUT`, its size by `MAX_OBJECTS`; a stop request ends the wait at once.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use lifeboat::shutdown::Shutdown;

use crate::config::{Bucket, Config};
use lifeboat::s3::trust::Trust;
use lifeboat::s3::{self, Client, ErrorKind, Object};

/// The longest a single listing request may take, connect to last byte: a LIST answer starts
/// quickly or the endpoint is not healthy.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a bucket failed its pre-flight check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The exit code to end with.
    pub code: i32,
    /// One line: which bucket, what is wrong, the server's words.
    pub message: String,
    /// A short machine-readable kind.
    pub kind: &'static str,
}

/// A client for `bucket`, with the run's timeouts.
pub fn client(config: &Config, bucket: &Bucket, trust: &Trust) -> Client {
    let provider = bucket.provider();
    let fixed = match provider.source() {
        s3::credentials::Source::Static(c) => c.clone(),
        _ => s3::Credentials {
            access_key: String::new(),
            secret_key: lifeboat::secret::Secret::new(String::new()),
            session_token: None,
        },
    };
    Client::new(
        &bucket.location(),
        fixed,
        trust,
        config.connect_timeout,
        config.io_timeout.min(REQUEST_TIMEOUT),
        config.low_level_retries,
        concat!("s3sync/", env!("CARGO_PKG_VERSION")),
    )
    .with_provider(provider)
}

/// Lists both sides at once. `Ok(None)` when a stop was requested (the listing threads are
/// left to end by their own timeouts).
pub fn list_both(config: &Config, trust: &Trust, shutdown: &Shutdown) -> Result<Option<[Vec<Object>; 2]>, Failure> {
    let (tx, rx) = mpsc::channel();
    let deadline = Instant::now() + config.list_timeout;
    for (i, bucket) in [&config.source, &config.dest].into_iter().enumerate() {
        let (tx, bucket) = (tx.clone(), bucket.clone());
        let client = client(config, &bucket, trust);
        let max = config.max_objects;
        std::thread::spawn(move || {
            let result = client.list_all(&bucket.key_prefix(), max, deadline);
            let _ = tx.send((i, result.map_err(|e| explain(&bucket, &e))));
        });
    }
    drop(tx);
    let mut out: [Option<Vec<Object>>; 2] = [None, None];
    while out.iter().any(Option::is_none) {
        if shutdown.requested().is_some() {
            return Ok(None);
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((i, Ok(objects))) => out[i] = Some(objects),
            Ok((_, Err(f))) => return Err(f),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Failure {
                    code: 1,
                    kind: "other",
                    message: "a listing thread ended without a result".into(),
                })
            }
        }
    }
    let [a, b] = out;
    Ok(Some([a.unwrap_or_default(), b.unwrap_or_default()]))
}

/// Turns a client error into one clear message and an exit code (rclone's for the same cause:
/// 3 directory not found, 5 temporary, 1 otherwise; 7 fatal for a listing over MAX_OBJECTS).
pub fn explain(bucket: &Bucket, e: &s3::Error) -> Failure {
    let side = bucket.role.word();
    let (code, what) = match e.kind {
        ErrorKind::BucketMissing => (3, format!("{side} bucket {:?} does not exist at {}", bucket.bucket, bucket.endpoint)),
        ErrorKind::Credentials => match &bucket.auth {
            crate::config::Auth::Static { .. } => (
                1,
                format!(
                    "{side} credentials were rejected by {} ({}ACCESS_KEY / {}SECRET_KEY, or their permissions on bucket {:?})",
                    bucket.endpoint,
                    bucket.role.var_prefix(),
                    bucket.role.var_prefix(),
                    bucket.bucket
                ),
            ),
            crate::config::Auth::Platform(p) => (
                1,
                format!(
                    "{side} credentials from the platform ({}) could not be had or were rejected by {} (or lack permissions on bucket {:?})",
                    p.source().kind(),
                    bucket.endpoint,
                    bucket.bucket
                ),
            ),
        },
        ErrorKind::Tls => (1, format!("TLS with the {side} endpoint {} failed (the CA is taken from SSL_CERT_FILE / SSL_CERT_DIR)", bucket.endpoint)),
        ErrorKind::Unreachable => (5, format!("{side} endpoint {} is unreachable", bucket.endpoint)),
        ErrorKind::Timeout => (5, format!("{side} endpoint {} did not answer in time", bucket.endpoint)),
        ErrorKind::TooMany => (7, format!("the {side} listing of {:?} is too large", bucket.display())),
        _ => (1, format!("listing the {side} bucket {:?} at {} failed", bucket.display(), bucket.endpoint)),
    };
    Failure {
        code,
        kind: e.kind.as_str(),
        message: format!("{what}: {}", e.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        c.dest
    }

    #[test]
    fn failures_are_named() {
        let b = bucket();
        let e = |kind| s3::Error {
            kind,
            status: None,
            code: String::new(),
            detail: "why".into(),
        };
        let f = explain(&b, &e(ErrorKind::BucketMissing));
        assert_eq!((f.kind, f.code), ("bucket_missing", 3));
        assert!(
            f.message
                .starts_with("destination bucket \"dst\" does not exist at http://127.0.0.1:2"),
            "{}",
            f.message
        );
        let f = explain(&b, &e(ErrorKind::Credentials));
        assert!(f.message.contains("DEST_SECRET_KEY") && f.code == 1);
        assert_eq!(explain(&b, &e(ErrorKind::Unreachable)).code, 5);
        assert_eq!(explain(&b, &e(ErrorKind::Timeout)).code, 5);
        assert_eq!(explain(&b, &e(ErrorKind::Other)).kind, "other");
    }
}
