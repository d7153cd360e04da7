//! Ways s3sync could lose data or report a wrong copy as success, each against real servers
//! (`rclone serve s3`, moto) and the real rclone: overlapping source and destination, a prefix
//! that is also an object key, the Go original's DEST_PREFIX default, rclone outliving a
//! SIGKILLed s3sync, environment values that are not UTF-8, deletions beyond the limits, and
//! keys rclone cannot represent.

use crate::s3sync_common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::s3sync_common::{alive, children, cmdline, command, contents, make_bucket, rclone_pair, set, spawn, vars};
use crate::support::s3::{Flavor, S3Server};
use crate::support::wait_for;

const AK: &str = "AKIALIFEBOATTEST08";
const SK: &str = "lifeboat-test-secret-dataloss-8";

fn servers() -> (S3Server, S3Server) {
    rclone_pair(AK, SK)
}

#[test]
fn sigkill_of_s3sync_kills_rclone_too() {
    let (src, dst) = servers();
    src.put("src", "big.bin", &vec![7u8; 4 * 1024 * 1024]);
    let mut env = vars(&src, "src", &dst, "dst");
    // 256 KiB/s: the copy would take about 16 s.
    set(&mut env, "BANDWIDTH_LIMIT", "256K");
    // rclone at NOTICE with stats every minute writes nothing for a while: without the fix,
    // nothing (no SIGPIPE on a write to the dead parent's pipe) would end it soon.
    set(&mut env, "LOG_LEVEL", "warn");
    let mut running = spawn(command(&env));
    let pid = running.proc.pid();
    let rclone = wait_for("rclone sync to start", Duration::from_secs(60), || {
        children(pid).into_iter().find(|c| cmdline(*c).contains(" sync "))
    });
    // Past its start-up output, into the copy.
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(rclone), "rclone sync ended early");
    running.proc.signal(9);
    let _ = running.proc.wait_timeout(Duration::from_secs(10));
    // The kernel kills it with its parent: well within a second; 5 s on a loaded machine.
    let start = std::time::Instant::now();
    while alive(rclone) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let still = alive(rclone);
    if still {
        // SAFETY of the test machine: never leave it running.
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(rclone.to_string())
            .status();
    }
    assert!(!still, "rclone (pid {rclone}) kept running after s3sync was SIGKILLed");
}

#[test]
fn values_that_are_not_utf8_are_named_not_shown_and_the_summary_is_logged() {
    let (src, dst) = servers();
    src.put("src", "a.txt", b"alpha");
    let env = vars(&src, "src", &dst, "dst");

    // A secret with a byte that is not UTF-8: exit 2 naming the variable; no byte of it shown.
    let mut cmd = command(&env);
    cmd.env("DEST_SECRET_KEY", OsStr::from_bytes(b"visible-part-\xff-of-the-secret"));
    let r = spawn(cmd).finish();
    assert_eq!(r.code, 2, "{}", r.stderr);
    let summary = r.summary();
    assert_eq!(summary["outcome"], "config_error");
    let error = summary["error"].as_str().unwrap();
    assert!(
        error.contains("DEST_SECRET_KEY") && error.contains("not valid UTF-8"),
        "{error}"
    );
    assert!(!r.stderr.contains("visible-part"), "{}", r.stderr);

    // Such a value in a variable s3sync does not read changes nothing.
    let mut cmd = command(&env);
    cmd.env("UNRELATED_VARIABLE", OsStr::from_bytes(b"\xfe\xff"));
    let r = spawn(cmd).finish();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(contents(&dst, "dst"), contents(&src, "src"));
}

fn problems(r: &s3sync_common::Run) -> String {
    r.lines
        .iter()
        .find_map(|l| l.get("problems"))
        .and_then(|p| p.as_array())
        .map(|p| p.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

#[test]
fn one_bucket_written_differently_on_both_sides_is_refused_unless_prefixes_are_disjoint() {
    let s3 = S3Server::start(Flavor::Rclone, AK, SK);
    make_bucket(&s3, "shared");
    for key in ["a/1", "a/2", "other/keep"] {
        s3.put("shared", key, key.as_bytes());
    }
    let before = contents(&s3, "shared");
    let port = s3.addr.port();
    for dest in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}"),
        format!("HTTP://127.0.0.1:{port}//"),
        format!("http://[::1]:{port}"),
    ] {
        let mut env = vars(&s3, "shared", &s3, "shared");
        set(&mut env, "SOURCE_PREFIX", "a");
        set(&mut env, "DEST_S3_ENDPOINT", &dest);
        let r = s3sync_common::run(&env);
        assert_eq!(r.code, 2, "{dest}: {}", r.stderr);
        assert_eq!(r.summary()["outcome"], "config_error");
        assert!(problems(&r).contains("DEST_PREFIX"), "{dest}: {}", r.stderr);
        assert!(!r.has_msg("running rclone sync"));
        assert_eq!(contents(&s3, "shared"), before, "{dest}");
    }
    // Disjoint prefixes of one bucket are fine: `a` and `ab` are different folders.
    let mut env = vars(&s3, "shared", &s3, "shared");
    set(&mut env, "SOURCE_PREFIX", "a");
    set(&mut env, "DEST_PREFIX", "ab");
    set(&mut env, "DEST_S3_ENDPOINT", &format!("http://localhost:{port}/"));
    let r = s3sync_common::run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s3.list("shared"), ["a/1", "a/2", "ab/1", "ab/2", "other/keep"]);
}

#[test]
fn a_prefix_is_a_folder_even_when_an_object_has_its_name() {
    let src = S3Server::start(Flavor::Moto, AK, SK);
    let dst = S3Server::start(Flavor::Moto, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    for key in ["db", "db/1", "db/2"] {
        src.put("src", key, key.as_bytes());
    }
    dst.put("dst", "db", b"an object outside the folder");
    dst.put("dst", "db/stale", b"stale");
    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "SOURCE_PREFIX", "db");
    set(&mut env, "DEST_PREFIX", "db/");
    let r = s3sync_common::run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(dst.list("dst"), ["db", "db/1", "db/2"]);
    assert_eq!(dst.get("dst", "db"), b"an object outside the folder");
    assert_eq!(dst.get("dst", "db/1"), b"db/1");
}

#[test]
fn a_job_migrated_unchanged_from_the_go_original_deletes_nothing() {
    // The Go original synced SOURCE_BUCKET into DEST_BUCKET/SOURCE_BUCKET when DEST_PREFIX was
    // unset, so several applications share one backup bucket.
    let (src, dst) = servers();
    make_bucket(&src, "app-b");
    src.put("app-b", "data.db", b"b's data");
    make_bucket(&dst, "backups");
    dst.put("backups", "app-a/data.db", b"a's backup");
    dst.put("backups", "app-b/data.db", b"b's older backup");
    let mut env = vars(&src, "app-b", &dst, "backups");
    env.retain(|(k, _)| k != "DEST_PREFIX");
    let before = contents(&dst, "backups");
    let r = s3sync_common::run(&env);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(problems(&r).contains("DEST_PREFIX"), "{}", r.stderr);
    assert_eq!(contents(&dst, "backups"), before);

    // Spelled out as the Go original did it: the other application's backup stays.
    set(&mut env, "DEST_PREFIX", "app-b");
    let r = s3sync_common::run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(dst.get("backups", "app-a/data.db"), b"a's backup");
    assert_eq!(dst.get("backups", "app-b/data.db"), b"b's data");
}

#[test]
fn keys_rclone_cannot_represent_are_named_and_refused_dot_segments_are_copied() {
    // moto on both sides: a filesystem-backed server cannot hold these keys.
    let src = S3Server::start(Flavor::Moto, AK, SK);
    let dst = S3Server::start(Flavor::Moto, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    let dots = ["p/a/./b", "p/a/../c", "p/.", "p/..", "p/d/..", "p/ok.txt"];
    for key in dots {
        src.put_raw("src", key, key.as_bytes());
    }
    dst.put_raw("dst", "q/stale", b"stale");
    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "SOURCE_PREFIX", "p");
    set(&mut env, "DEST_PREFIX", "q");
    set(&mut env, "MAX_DELETE_PERCENT", "100");
    // `.` and `..` segments: copied byte for byte, and the stale object deleted.
    let r = s3sync_common::run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["verified"], true);
    let mut want: Vec<String> = dots.iter().map(|k| k.replacen("p/", "q/", 1)).collect();
    want.sort();
    assert_eq!(dst.list_raw("dst"), want);
    assert_eq!(dst.get_raw("dst", "q/a/../c"), b"p/a/../c");

    // A leading '/', '//' inside, a 'dir/' marker: named, counted, refused; nothing changes.
    let odd = ["p//lead", "p/x//y", "p/dir/"];
    for key in odd {
        src.put_raw("src", key, b"");
    }
    src.put_raw("src", "p/new.txt", b"new");
    let before = dst.list_raw("dst");
    let r = s3sync_common::run(&env);
    assert_eq!(r.code, 7, "{}", r.stderr);
    let summary = r.summary();
    assert_eq!(summary["outcome"], "refused");
    assert_eq!(summary["uncopyable"], 3);
    let error = summary["error"].as_str().unwrap();
    for key in odd {
        assert!(error.contains(key), "{key} not named: {error}");
    }
    assert!(error.contains("ALLOW_UNCOPYABLE_KEYS"), "{error}");
    assert_eq!(dst.list_raw("dst"), before);

    // Explicitly allowed: everything else is synced and verified, the three are left out.
    set(&mut env, "ALLOW_UNCOPYABLE_KEYS", "true");
    let r = s3sync_common::run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["uncopyable"], 3);
    assert_eq!(r.summary()["verified"], true);
    assert_eq!(dst.get_raw("dst", "q/new.txt"), b"new");
}
