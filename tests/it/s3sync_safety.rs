//! s3sync's safety rails, against real servers: MAX_DELETE / MAX_DELETE_PERCENT checked
//! before anything is deleted (0 = none),
//! the empty-source guard, configuration errors reported all at once before any network
//! call, and no credential in any output even at LOG_LEVEL=debug.

use crate::s3sync_common;
use crate::support;

use std::net::TcpListener;

use crate::s3sync_common::{contents, make_bucket, rclone_pair, run, set, vars};
use crate::support::s3::{Flavor, S3Server};

const AK: &str = "AKIALIFEBOATTEST02";
const SK: &str = "lifeboat-test-secret-9876543210";

fn with_extras(extras: usize) -> (S3Server, S3Server) {
    let (src, dst) = rclone_pair(AK, SK);
    src.put("src", "keep.txt", b"keep");
    src.put("src", "new.txt", b"new");
    dst.put("dst", "keep.txt", b"keep");
    for i in 0..extras {
        dst.put("dst", &format!("extra/{i}.txt"), b"only in destination");
    }
    (src, dst)
}

fn extras_left(dst: &S3Server) -> usize {
    dst.list("dst").iter().filter(|k| k.starts_with("extra/")).count()
}

#[test]
fn deletion_limits_are_checked_before_anything_is_deleted() {
    // 5 extra objects in a destination of 6: the run needs 5 deletions (83 %).
    let (src, dst) = with_extras(5);
    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "MAX_DELETE_PERCENT", "100");
    let before = contents(&dst, "dst");

    // Over the limit (0 = delete nothing; 2 < 5): refused before anything happens, every run
    // (rclone's own --max-delete would delete 2 and then fail, 2 more each run).
    for (limit, runs) in [("0", 1), ("2", 3)] {
        set(&mut env, "MAX_DELETE", limit);
        for _ in 0..runs {
            let r = run(&env);
            assert_eq!(r.code, 7, "{}", r.stderr);
            let summary = r.summary();
            assert_eq!(summary["outcome"], "refused");
            assert_eq!(summary["limit"], "MAX_DELETE");
            assert_eq!(summary["deletes_planned"], 5);
            assert_eq!(summary["deletes_allowed"], limit.parse::<u64>().unwrap());
            assert_eq!(summary["deletes"], 0);
            let error = summary["error"].as_str().unwrap();
            assert!(
                error.contains("delete 5") && error.contains(&format!("MAX_DELETE={limit}")),
                "{error}"
            );
            assert!(!r.has_msg("running rclone sync"));
            assert_eq!(contents(&dst, "dst"), before, "nothing copied, nothing deleted");
        }
    }

    // The relative limit: 5 of 6 is more than 50 %.
    set(&mut env, "MAX_DELETE", "unlimited");
    set(&mut env, "MAX_DELETE_PERCENT", "50");
    let r = run(&env);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert_eq!(r.summary()["limit"], "MAX_DELETE_PERCENT");
    assert_eq!(r.summary()["deletes_allowed"], 3);
    assert!(
        r.summary()["error"]
            .as_str()
            .unwrap()
            .contains("MAX_DELETE_PERCENT=50 (3 of 6"),
        "{}",
        r.stderr
    );
    assert_eq!(contents(&dst, "dst"), before);

    // Within both limits: the destination ends up equal to the source.
    set(&mut env, "MAX_DELETE", "5");
    set(&mut env, "MAX_DELETE_PERCENT", "90");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["deletes"], 5);
    assert_eq!(r.summary()["verified"], true);
    assert_eq!(contents(&dst, "dst"), contents(&src, "src"));
    assert_eq!(extras_left(&dst), 0);
}

#[test]
fn empty_source_does_not_wipe_the_destination() {
    let (src, dst) = with_extras(3);
    make_bucket(&src, "empty");
    let before = contents(&dst, "dst");

    // An empty bucket, and a prefix with nothing under it (a typo), are both refused.
    for (bucket, prefix) in [("empty", None), ("src", Some("no/such/prefix"))] {
        let mut env = vars(&src, bucket, &dst, "dst");
        if let Some(p) = prefix {
            set(&mut env, "SOURCE_PREFIX", p);
        }
        let r = run(&env);
        assert_eq!(r.code, 7, "{}", r.stderr);
        assert_eq!(r.summary()["outcome"], "refused");
        assert!(r.summary()["error"].as_str().unwrap().contains("ALLOW_EMPTY_SOURCE"));
        assert!(!r.has_msg("running rclone sync"), "rclone sync must not start");
        assert_eq!(contents(&dst, "dst"), before);
    }

    // Explicitly allowed: the destination is emptied. The deletion limits still apply:
    // MAX_DELETE 1000 > 4, and emptying is 100 % of the destination (MAX_DELETE_PERCENT).
    let mut env = vars(&src, "empty", &dst, "dst");
    set(&mut env, "ALLOW_EMPTY_SOURCE", "true");
    let r = run(&env);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert_eq!(r.summary()["limit"], "MAX_DELETE_PERCENT");
    assert_eq!(contents(&dst, "dst"), before);
    set(&mut env, "MAX_DELETE_PERCENT", "100");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(dst.list("dst").is_empty());
    assert_eq!(r.summary()["deletes"], 4);

    // Empty source into an empty destination is a no-op, not a refusal.
    let r = run(&vars(&src, "empty", &dst, "dst"));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn configuration_errors_are_listed_together_before_any_network_call() {
    // Endpoints point at a listener that counts connections: there must be none.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();

    let endpoint = format!("http://127.0.0.1:{port}");
    let env: Vec<(String, String)> = [
        ("SOURCE_S3_ENDPOINT", endpoint.as_str()),
        ("SOURCE_ACCESS_KEY", "AKIA-CONFIG-TEST-KEY"),
        ("SOURCE_SECRET_KEY", "config-test-secret-abcdef"),
        ("SOURCE_BUCKET", "src"),
        ("DEST_S3_ENDPOINT", "s3.example.com"),
        ("DEST_ACCESS_KEY", ""),
        ("DEST_SECRET_KEY", "config-test-secret-ghijkl"),
        ("RETRIES", "three"),
        ("DRY_RUN", "maybe"),
        ("MAX_DELETE", "-3"),
        ("LOG_LEVEL", "loud"),
        ("COMPARE", "md5"),
        ("MAX_DURATION", "1 hour"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let r = run(&env);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let summary = r.summary();
    assert_eq!(summary["outcome"], "config_error");
    let problems = r
        .lines
        .iter()
        .find_map(|l| l.get("problems"))
        .and_then(|p| p.as_array())
        .expect("a line listing the problems");
    let text = problems
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for var in [
        "DEST_S3_ENDPOINT",
        "DEST_ACCESS_KEY",
        "DEST_BUCKET",
        "RETRIES",
        "DRY_RUN",
        "MAX_DELETE",
        "LOG_LEVEL",
        "COMPARE",
        "MAX_DURATION",
        "DEST_PREFIX",
    ] {
        assert!(text.contains(var), "{var} missing from:\n{text}");
    }
    assert_eq!(problems.len(), 10, "{text}");
    for secret in [
        "AKIA-CONFIG-TEST-KEY",
        "config-test-secret-abcdef",
        "config-test-secret-ghijkl",
    ] {
        assert!(!r.stderr.contains(secret) && !r.stdout.contains(secret));
    }
    // Any connection attempt would be waiting in the listener's backlog.
    assert!(
        listener.accept().is_err(),
        "s3sync connected despite a bad configuration"
    );
}

#[test]
fn no_secret_in_any_output_at_debug_level() {
    const SRC_AK: &str = "AKIASRCDISTINCT7Q2Z";
    const SRC_SK: &str = "srcSecretDistinct+Zq8/v1xY";
    const DST_AK: &str = "AKIADSTDISTINCT4K9W";
    const DST_SK: &str = "dstSecretDistinct+Hm3/p0wQ";
    const WRONG_SK: &str = "wrongSecretDistinct+Ls5/t7N";
    let src = S3Server::start(Flavor::Rclone, SRC_AK, SRC_SK);
    let dst = S3Server::start(Flavor::Rclone, DST_AK, DST_SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    src.put("src", "a.txt", b"alpha");
    dst.put("dst", "old.txt", b"old");

    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "LOG_LEVEL", "debug");
    let mut runs = Vec::new();
    runs.push(("success", run(&env)));
    assert_eq!(runs[0].1.code, 0, "{}", runs[0].1.stderr);
    assert!(
        runs[0].1.lines.iter().any(|l| l["level"] == "debug"),
        "debug lines are logged"
    );

    let mut wrong = env.clone();
    set(&mut wrong, "DEST_SECRET_KEY", WRONG_SK);
    runs.push(("wrong credentials", run(&wrong)));
    let mut bad = env.clone();
    set(&mut bad, "RETRIES", "x");
    runs.push(("bad config", run(&bad)));
    let mut dry = env.clone();
    set(&mut dry, "DRY_RUN", "true");
    runs.push(("dry run", run(&dry)));
    assert_ne!(runs[1].1.code, 0);
    assert_eq!(runs[2].1.code, 2);

    for (what, r) in &runs {
        for secret in [SRC_AK, SRC_SK, DST_AK, DST_SK, WRONG_SK] {
            assert!(!r.stderr.contains(secret), "{what}: {secret} in stderr:\n{}", r.stderr);
            assert!(!r.stdout.contains(secret), "{what}: {secret} in stdout");
        }
    }
}

#[test]
fn values_rclone_would_reject_are_refused_before_any_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let base: Vec<(String, String)> = [
        ("SOURCE_S3_ENDPOINT", endpoint.as_str()),
        ("SOURCE_ACCESS_KEY", "AKIA-VALIDATION-KEY"),
        ("SOURCE_SECRET_KEY", "validation-secret-abcdef"),
        ("SOURCE_BUCKET", "src"),
        ("DEST_S3_ENDPOINT", endpoint.as_str()),
        ("DEST_ACCESS_KEY", "AKIA-VALIDATION-KEY"),
        ("DEST_SECRET_KEY", "validation-secret-abcdef"),
        ("DEST_BUCKET", "dst"),
        ("DEST_PREFIX", "/"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut env = base.clone();
    for (k, v) in [
        ("MAX_DELETE", "9223372036854775808"),
        ("MAX_DURATION", "2562048h"),
        ("SOURCE_REGION", "\"eu-west-1\""),
        ("DEST_PROVIDER", "NoSuchProvider"),
        ("STATS_INTERVAL", "1ms"),
        ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
    ] {
        set(&mut env, k, v);
    }
    let r = run(&env);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let problems = r
        .lines
        .iter()
        .find_map(|l| l.get("problems"))
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap();
    let text: Vec<&str> = problems.iter().filter_map(|p| p.as_str()).collect();
    for var in [
        "MAX_DELETE",
        "MAX_DURATION",
        "SOURCE_REGION",
        "DEST_PROVIDER",
        "STATS_INTERVAL",
        "SSL_CERT_FILE",
    ] {
        assert!(
            text.iter().any(|p| p.starts_with(&format!("{var}:"))),
            "{var} not in {text:?}"
        );
    }
    assert_eq!(text.len(), 6, "{text:?}");

    // Something that is not rclone, or too old an rclone: refused (exit 2), nothing contacted.
    let dir = support::temp_dir("fake-rclone");
    let old = support::write_file(dir.path(), "rclone-1.68", "#!/bin/sh\necho 'rclone v1.68.2'\n");
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (binary, expect) in [
        ("/bin/true", "is not rclone"),
        (old.to_str().unwrap(), "v1.69 or newer"),
    ] {
        let mut env = base.clone();
        set(&mut env, "RCLONE_BINARY", binary);
        let mut cmd = s3sync_common::command(&env);
        cmd.env("RCLONE_BINARY", binary);
        let r = s3sync_common::spawn(cmd).finish();
        assert_eq!(r.code, 2, "{binary}: {}", r.stderr);
        let error = r.summary()["error"].as_str().unwrap().to_string();
        assert!(error.contains("RCLONE_BINARY") && error.contains(expect), "{error}");
    }
    assert!(
        listener.accept().is_err(),
        "s3sync connected despite a bad configuration"
    );
}

#[test]
fn a_source_prefix_with_nothing_under_it_into_an_empty_destination_warns() {
    let (src, dst) = with_extras(0);
    make_bucket(&dst, "empty");
    let mut env = vars(&src, "src", &dst, "empty");
    set(&mut env, "SOURCE_PREFIX", "typo");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.lines
            .iter()
            .any(|l| l["level"] == "warn" && l["msg"].as_str().unwrap().contains("SOURCE_PREFIX")),
        "{}",
        r.stderr
    );
}
