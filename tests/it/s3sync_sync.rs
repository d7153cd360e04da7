//! s3sync against real S3 servers (rclone serve s3 and moto): new, changed and deleted
//! objects arrive; prefixes limit the sync to one subtree on both sides; a dry run changes
//! nothing; every run ends with a JSON summary line.

use crate::support;

use crate::s3sync_common::{command, contents, delete, make_bucket, rclone_s3_over_tls, run, set, spawn, vars};
use crate::support::s3::{Flavor, S3Server};

const AK: &str = "AKIALIFEBOATTEST01";
const SK: &str = "lifeboat-test-secret-0123456789";

#[test]
fn new_changed_and_deleted_objects_are_synced() {
    // Two implementations: rclone's server as source, moto as destination.
    let src = S3Server::start(Flavor::Rclone, AK, SK);
    let dst = S3Server::start(Flavor::Moto, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    src.put("src", "a.txt", b"alpha");
    src.put("src", "dir/b.txt", b"bravo-1");
    src.put("src", "dir/deep/c.bin", &vec![7u8; 100_000]);
    src.put("src", "gone.txt", b"to be deleted");
    let env = vars(&src, "src", &dst, "dst");

    let first = run(&env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let summary = first.summary();
    assert_eq!(summary["outcome"], "success");
    assert_eq!(summary["transfers"], 4);
    assert_eq!(summary["level"], "info");
    assert_eq!(contents(&dst, "dst"), contents(&src, "src"));

    // Change one object keeping its size (only the checksum tells), add one, delete one.
    src.put("src", "dir/b.txt", b"bravo-2");
    src.put("src", "new.txt", b"new object");
    delete(&src, "src", "gone.txt");
    let second = run(&env);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let summary = second.summary();
    assert_eq!(summary["transfers"], 2, "{summary}");
    assert_eq!(summary["deletes"], 1, "{summary}");
    assert_eq!(dst.get("dst", "dir/b.txt"), b"bravo-2");
    assert_eq!(dst.list("dst"), ["a.txt", "dir/b.txt", "dir/deep/c.bin", "new.txt"]);
    assert_eq!(contents(&dst, "dst"), contents(&src, "src"));

    // Nothing changed: a no-op run transfers and deletes nothing.
    let third = run(&env);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(third.summary()["transfers"], 0);
    assert_eq!(third.summary()["deletes"], 0);
    assert!(third.summary()["checks"].as_u64().unwrap() >= 4);
    // Every object matched by size and MD5 in s3sync's own listings: rclone is not needed.
    assert!(!third.has_msg("running rclone sync"), "{}", third.stderr);
    assert_eq!(third.summary()["verified"], true);
}

#[test]
fn prefixes_limit_the_sync_to_one_subtree() {
    // moto as source, rclone's server as destination.
    let src = S3Server::start(Flavor::Moto, AK, SK);
    let dst = S3Server::start(Flavor::Rclone, AK, SK);
    make_bucket(&src, "data");
    make_bucket(&dst, "backup");
    src.put("data", "2026/11/a.txt", b"in scope");
    src.put("data", "2026/11/sub/b.txt", b"in scope too");
    src.put("data", "2025/old.txt", b"out of scope");
    src.put("data", "2026/11.txt", b"shares the prefix string, not the folder");
    dst.put("backup", "mirror/stale.txt", b"not in source: deleted");
    dst.put("backup", "other/keep.txt", b"outside the destination prefix: kept");

    let mut env = vars(&src, "data", &dst, "backup");
    set(&mut env, "SOURCE_PREFIX", "/2026/11/");
    set(&mut env, "DEST_PREFIX", "mirror");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["deletes"], 1);
    assert_eq!(
        dst.list("backup"),
        ["mirror/a.txt", "mirror/sub/b.txt", "other/keep.txt"]
    );
    assert_eq!(dst.get("backup", "mirror/sub/b.txt"), b"in scope too");
    assert_eq!(src.list("data").len(), 4, "the source is never modified");
}

#[test]
fn dry_run_changes_nothing() {
    let src = S3Server::start(Flavor::Rclone, AK, SK);
    let dst = S3Server::start(Flavor::Rclone, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    src.put("src", "new.txt", b"would be copied");
    src.put("src", "same.txt", b"v2");
    dst.put("dst", "same.txt", b"v1");
    dst.put("dst", "extra.txt", b"would be deleted");
    let before = contents(&dst, "dst");

    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "DRY_RUN", "true");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = r.summary();
    assert_eq!(summary["outcome"], "dry_run");
    assert_eq!(summary["dry_run"], true);
    assert!(
        r.has_msg("--dry-run"),
        "rclone's dry-run notices are in the log:\n{}",
        r.stderr
    );
    assert_eq!(contents(&dst, "dst"), before);
}

#[test]
fn compare_modes_trade_speed_for_detection() {
    // COMPARE=size cannot see a same-size change; checksum (the default) and modtime can.
    let src = S3Server::start(Flavor::Rclone, AK, SK);
    let dst = S3Server::start(Flavor::Moto, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    src.put("src", "f.txt", b"version-1");
    let mut env = vars(&src, "src", &dst, "dst");
    assert_eq!(run(&env).code, 0);
    src.put("src", "f.txt", b"version-2");

    // size-only misses a same-size change: rclone reports success, and s3sync's own
    // verification (independent listings, MD5 ETags on both sides) catches it: exit 11.
    set(&mut env, "COMPARE", "size");
    let r = run(&env);
    assert_eq!(r.code, 11, "{}", r.stderr);
    let summary = r.summary();
    assert_eq!(summary["transfers"], 0);
    assert_eq!(summary["outcome"], "verify_failed");
    assert_eq!(summary["verified"], false);
    assert_eq!(summary["verify_differing"], 1);
    assert!(summary["error"].as_str().unwrap().contains("f.txt (MD5 "), "{summary}");
    assert_eq!(
        dst.get("dst", "f.txt"),
        b"version-1",
        "size-only misses a same-size change"
    );
    // Without the verification the miss is silent.
    set(&mut env, "VERIFY", "false");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["verified"], serde_json::Value::Null);
    set(&mut env, "VERIFY", "true");

    for mode in ["modtime", "checksum"] {
        src.put("src", "f.txt", format!("{mode:-<9}").as_bytes());
        set(&mut env, "COMPARE", mode);
        let r = run(&env);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.summary()["transfers"], 1, "{mode}");
        assert_eq!(r.summary()["verified"], true, "{mode}");
        assert_eq!(dst.get("dst", "f.txt"), format!("{mode:-<9}").as_bytes(), "{mode}");
    }
}

#[test]
fn the_summary_is_logged_at_every_level_but_off_and_object_lines_have_their_own_switch() {
    let src = S3Server::start(Flavor::Rclone, AK, SK);
    let dst = S3Server::start(Flavor::Rclone, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    let mut env = vars(&src, "src", &dst, "dst");
    for (i, level) in ["warn", "error"].into_iter().enumerate() {
        src.put("src", &format!("{level}.txt"), level.as_bytes());
        set(&mut env, "LOG_LEVEL", level);
        let r = run(&env);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let summary = r.summary();
        assert_eq!(summary["outcome"], "success", "{level}");
        assert_eq!(summary["transfers"], 1, "{level}");
        assert!(
            r.lines
                .iter()
                .all(|l| l["level"] != "info" || l.get("outcome").is_some()),
            "{level}: {}",
            r.stderr
        );
        assert_eq!(dst.list("dst").len(), i + 1);
    }
    set(&mut env, "LOG_LEVEL", "off");
    src.put("src", "off.txt", b"off");
    let r = run(&env);
    assert_eq!(r.code, 0);
    assert!(r.stderr.is_empty() && r.stdout.is_empty(), "{}", r.stderr);

    // At info, rclone's per-object lines are there unless LOG_OBJECTS=false.
    set(&mut env, "LOG_LEVEL", "info");
    src.put("src", "info.txt", b"info");
    set(&mut env, "LOG_OBJECTS", "false");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["transfers"], 1);
    assert!(!r.lines.iter().any(|l| l.get("object").is_some()), "{}", r.stderr);
    src.put("src", "info2.txt", b"info2");
    set(&mut env, "LOG_OBJECTS", "true");
    let r = run(&env);
    assert!(r.lines.iter().any(|l| l["object"] == "info2.txt"), "{}", r.stderr);
}

#[test]
fn soft_deletes_move_deleted_and_overwritten_objects_into_a_dated_folder() {
    let src = S3Server::start(Flavor::Rclone, AK, SK);
    let dst = S3Server::start(Flavor::Rclone, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    src.put("src", "a.txt", b"a new");
    src.put("src", "b.txt", b"b");
    dst.put("dst", "live/a.txt", b"a old");
    dst.put("dst", "live/c.txt", b"c gone from the source");
    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "DEST_PREFIX", "live");
    set(&mut env, "BACKUP_PREFIX", "deleted");
    set(&mut env, "MAX_DELETE_PERCENT", "100");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["verified"], true);
    let keys = dst.list("dst");
    let live: Vec<&String> = keys.iter().filter(|k| k.starts_with("live/")).collect();
    assert_eq!(live, ["live/a.txt", "live/b.txt"]);
    let backed: Vec<&String> = keys.iter().filter(|k| k.starts_with("deleted/")).collect();
    assert_eq!(backed.len(), 2, "{keys:?}");
    let old_a = backed
        .iter()
        .find(|k| k.ends_with("/a.txt"))
        .expect("the overwritten a.txt");
    assert_eq!(dst.get("dst", old_a), b"a old");
    let old_c = backed
        .iter()
        .find(|k| k.ends_with("/c.txt"))
        .expect("the deleted c.txt");
    assert_eq!(dst.get("dst", old_c), b"c gone from the source");

    // A backup folder inside the synced one is refused.
    set(&mut env, "BACKUP_PREFIX", "live/trash");
    assert_eq!(run(&env).code, 2);
}

#[test]
fn metrics_file_reports_every_run_and_keeps_the_last_success() {
    let src = S3Server::start(Flavor::Rclone, AK, SK);
    let dst = S3Server::start(Flavor::Rclone, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    src.put("src", "a.txt", b"a");
    let dir = support::temp_dir("metrics");
    let file = dir.path().join("s3sync.prom");
    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "METRICS_FILE", file.to_str().unwrap());
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&file).unwrap();
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {text}"))
    };
    assert_eq!(value(&text, "s3sync_exit_code"), 0.0);
    assert_eq!(value(&text, "s3sync_transfers"), 1.0);
    assert_eq!(value(&text, "s3sync_verified"), 1.0);
    assert!(text.contains("s3sync_outcome{outcome=\"success\"} 1"), "{text}");
    let success = value(&text, "s3sync_last_success_timestamp_seconds");

    // A refused run: its own numbers, and the last success carried over.
    dst.put("dst", "extra.txt", b"x");
    set(&mut env, "MAX_DELETE", "0");
    let r = run(&env);
    assert_eq!(r.code, 7, "{}", r.stderr);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(value(&text, "s3sync_exit_code"), 7.0);
    assert_eq!(value(&text, "s3sync_verified"), 0.0);
    assert!(text.contains("s3sync_outcome{outcome=\"refused\"} 1"), "{text}");
    assert_eq!(value(&text, "s3sync_last_success_timestamp_seconds"), success);
}

#[test]
fn metrics_are_pushed_over_tls_trusting_only_the_roots_read_as_go_reads_them() {
    // The Pushgateway's place is taken by rclone serve s3 over TLS without auth: a real Go TLS
    // server that stores the PUT body under its path. It does not do the Pushgateway's grouping
    // (not under test here: the TLS trust is). Its CA is trusted only through SSL_CERT_FILE;
    // ureq has no compiled-in roots that could stand in.
    let src = S3Server::start(Flavor::Rclone, AK, SK);
    let dst = S3Server::start(Flavor::Rclone, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    src.put("src", "a.txt", b"a");
    let dir = support::temp_dir("push");
    let ca = support::pki::Ca::new("pushgateway-test-ca");
    let leaf = ca.leaf("localhost", &["localhost"], support::pki::Alg::EcdsaP256);
    let files = ca.write(&leaf, dir.path(), "push");
    let other = support::pki::Ca::new("another-ca");
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, &other.cert_pem).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("metrics")).unwrap();
    let (_gateway, port) = rclone_s3_over_tls(&files, &data, None);
    let pushed = data.join("metrics/job/s3sync/instance/dst");
    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "METRICS_PUSH_URL", &format!("https://localhost:{port}"));

    // Another CA in SSL_CERT_FILE: the push is refused (a warning; the run still succeeds).
    let mut cmd = command(&env);
    cmd.env("SSL_CERT_FILE", &other_ca);
    let r = spawn(cmd).finish();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.has_msg("cannot push the metrics"), "{}", r.stderr);
    assert!(!pushed.exists());

    let mut cmd = command(&env);
    cmd.env("SSL_CERT_FILE", &files.ca);
    let r = spawn(cmd).finish();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.has_msg("cannot push the metrics"), "{}", r.stderr);
    let text = std::fs::read_to_string(&pushed).unwrap();
    assert!(text.contains("s3sync_outcome{outcome=\"success\"} 1\n"), "{text}");
    assert!(text.contains("s3sync_last_success_timestamp_seconds "), "{text}");
}
