//! s3sync when things go wrong, against real servers: wrong credentials, a missing bucket and
//! an unreachable endpoint each end with a clear message and the documented exit code (and
//! quickly: every run is bounded); SIGTERM mid-sync stops rclone and is logged; orphaned
//! processes are reaped; no credential is ever in a child's argv.

use crate::support;

use std::time::Duration;

use crate::s3sync_common::{
    alive, children, cmdline, command, make_bucket, rclone_pair, rclone_s3_over_tls, run, set, spawn, vars,
};
use crate::support::s3::{Flavor, S3Server};
use crate::support::{free_port, tool, wait_for};

const AK: &str = "AKIALIFEBOATTEST03";
const SK: &str = "lifeboat-test-secret-failures-42";

fn servers() -> (S3Server, S3Server) {
    let (src, dst) = rclone_pair(AK, SK);
    src.put("src", "a.txt", b"alpha");
    (src, dst)
}

#[test]
fn preflight_failures_are_clear_and_use_rclone_exit_codes() {
    let (src, dst) = servers();
    let base = vars(&src, "src", &dst, "dst");

    // Wrong secret key on the destination: rclone's code 1, the variables named.
    let mut env = base.clone();
    set(&mut env, "DEST_SECRET_KEY", "not-the-right-secret-key");
    let r = run(&env);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        !r.has_msg("running rclone sync"),
        "the sync must not start after a failed pre-flight"
    );
    let error = r.summary()["error"].as_str().unwrap().to_string();
    assert!(error.contains("destination credentials were rejected"), "{error}");
    assert!(error.contains("DEST_ACCESS_KEY / DEST_SECRET_KEY"), "{error}");
    assert!(
        error.contains("SignatureDoesNotMatch"),
        "rclone's reason is kept: {error}"
    );

    // Missing source bucket: rclone's "directory not found", 3.
    let mut env = base.clone();
    set(&mut env, "SOURCE_BUCKET", "no-such-bucket");
    let r = run(&env);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let error = r.summary()["error"].as_str().unwrap();
    assert!(
        error.contains("source bucket \"no-such-bucket\" does not exist"),
        "{error}"
    );

    // A missing destination bucket is not created behind the user's back.
    let mut env = base.clone();
    set(&mut env, "DEST_BUCKET", "not-created");
    let r = run(&env);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.summary()["error"]
        .as_str()
        .unwrap()
        .contains("destination bucket \"not-created\" does not exist"));

    // Nothing listens: rclone's retryable-error code 5, named unreachable.
    let mut env = base.clone();
    set(
        &mut env,
        "DEST_S3_ENDPOINT",
        &format!("http://127.0.0.1:{}", free_port()),
    );
    let r = run(&env);
    assert_eq!(r.code, 5, "{}", r.stderr);
    let error = r.summary()["error"].as_str().unwrap();
    assert!(
        error.contains("destination endpoint http://127.0.0.1:") && error.contains("is unreachable"),
        "{error}"
    );
    assert!(error.to_lowercase().contains("connection refused"), "{error}");
}

#[test]
fn sigterm_mid_sync_stops_rclone_and_logs_a_summary() {
    let (src, dst) = servers();
    src.put("src", "big.bin", &vec![42u8; 3 * 1024 * 1024]);
    let mut env = vars(&src, "src", &dst, "dst");
    // 256 KiB/s: the 3 MiB object takes about 12 s, far longer than the test needs.
    set(&mut env, "BANDWIDTH_LIMIT", "256K");
    set(&mut env, "STATS_INTERVAL", "500ms");
    let running = spawn(command(&env));
    let pid = running.proc.pid();

    // Wait until the sync child is rclone doing `sync`, and a stats line shows progress.
    let rclone_pid = wait_for("rclone sync to start", Duration::from_secs(60), || {
        children(pid).into_iter().find(|c| cmdline(*c).contains(" sync "))
    });
    let argv = cmdline(rclone_pid);
    assert!(
        !argv.contains(AK) && !argv.contains(SK),
        "credentials in rclone's argv: {argv}"
    );
    let environ = std::fs::read(format!("/proc/{rclone_pid}/environ")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&environ).contains("RCLONE_CONFIG=/dev/null"),
        "remotes come from the environment, not a config file"
    );
    wait_for("a stats line", Duration::from_secs(30), || {
        running.seen.lock().unwrap().contains("\"rclone stats\"").then_some(())
    });

    running.proc.signal(15);
    let r = running.finish();
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.code, 143, "rclone's own exit code after SIGTERM: {}", r.stderr);
    let summary = r.summary();
    assert_eq!(summary["outcome"], "stopped");
    assert_eq!(summary["signal"], "SIGTERM");
    assert_eq!(summary["rclone_stats"], true, "the last stats seen are in the summary");
    assert!(r.has_msg("forwarding the signal to rclone"));
    // rclone is gone (reaped by s3sync, so no zombie is left behind either).
    assert!(!std::path::Path::new(&format!("/proc/{rclone_pid}")).exists() || !cmdline(rclone_pid).contains(" sync "));
    assert!(
        !dst.list("dst").contains(&"big.bin".to_string()),
        "the interrupted object was not completed"
    );
}

#[test]
fn max_duration_ends_the_run_with_rclone_code_10() {
    let (src, dst) = servers();
    src.put("src", "big.bin", &vec![1u8; 2 * 1024 * 1024]);
    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "BANDWIDTH_LIMIT", "128K");
    set(&mut env, "MAX_DURATION", "1s");
    let r = run(&env);
    assert_eq!(r.code, 10, "{}", r.stderr);
    let summary = r.summary();
    assert_eq!(summary["outcome"], "failed");
    assert!(summary["error"].as_str().unwrap().contains("max-duration"), "{summary}");
}

#[test]
fn orphaned_processes_are_reaped() {
    // A wrapper in place of rclone: for `sync`, it leaves an orphan (a process whose parent
    // has exited; it is re-parented to s3sync, the child subreaper / PID 1), then waits until
    // that orphan has been reaped (a zombie still answers `kill -0`), records the result, and
    // runs the real rclone.
    let (src, dst) = servers();
    let dir = support::temp_dir("reap");
    let marker = dir.path().join("result");
    let pidfile = dir.path().join("orphan.pid");
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = sync ]; then
  ( sh -c 'echo $$ > "{pidfile}"; exit 0' & )
  n=0
  while [ ! -s "{pidfile}" ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done
  orphan=$(cat "{pidfile}")
  while kill -0 "$orphan" 2>/dev/null && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done
  if kill -0 "$orphan" 2>/dev/null; then echo zombie > "{marker}"; else echo reaped > "{marker}"; fi
fi
exec "{rclone}" "$@"
"#,
        pidfile = pidfile.display(),
        marker = marker.display(),
        rclone = tool("rclone").display()
    );
    let wrapper = support::write_file(dir.path(), "rclone-wrapper", script);
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "LOG_LEVEL", "debug");
    let mut cmd = command(&env);
    cmd.env("RCLONE_BINARY", &wrapper);
    let r = spawn(cmd).finish();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "reaped");
    assert!(r.has_msg("reaped an orphaned process"), "{}", r.stderr);
    assert_eq!(dst.list("dst"), ["a.txt"]);
}

#[test]
fn https_endpoint_with_a_private_ca() {
    // A TLS S3 endpoint whose certificate comes from a test CA: without that CA the pre-flight
    // names a TLS failure; with SSL_CERT_FILE pointing at it (passed through to rclone), the
    // sync works.
    let dir = support::temp_dir("tls");
    let ca = support::pki::Ca::new("s3sync-test-ca");
    let leaf = ca.leaf("localhost", &["localhost", "127.0.0.1"], support::pki::Alg::EcdsaP256);
    let files = ca.write(&leaf, dir.path(), "s3");
    let data = support::temp_dir("tls-data");
    std::fs::create_dir_all(data.path().join("dst")).unwrap();
    let (_server, port) = rclone_s3_over_tls(&files, data.path(), Some(&format!("{AK},{SK}")));

    let src = S3Server::start(Flavor::Moto, AK, SK);
    make_bucket(&src, "src");
    src.put("src", "a.txt", b"over TLS");
    let mut env = vars(&src, "src", &src, "unused");
    set(&mut env, "DEST_S3_ENDPOINT", &format!("https://localhost:{port}"));
    set(&mut env, "DEST_BUCKET", "dst");

    let r = run(&env);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let error = r.summary()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("TLS with the destination endpoint https://localhost:"),
        "{error}"
    );

    let mut cmd = command(&env);
    cmd.env("SSL_CERT_FILE", &files.ca);
    let r = spawn(cmd).finish();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(data.path().join("dst/a.txt")).unwrap(), b"over TLS");
}

#[test]
fn sigterm_during_the_preflight_stops_at_once() {
    // The destination accepts connections but never answers: the pre-flight would wait for
    // its timeouts (30 s idle x LOW_LEVEL_RETRIES). SIGTERM must end it as "stopped" instead.
    let (src, dst) = servers();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            // Accept and hold up to a few connections without ever answering.
            let mut conns = Vec::new();
            silent.set_nonblocking(true).unwrap();
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(60) && conns.len() < 16 {
                match silent.accept() {
                    Ok((c, _)) => {
                        conns.push(c);
                        accepted.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
                if !conns.is_empty() && start.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            conns
        })
    };
    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "DEST_S3_ENDPOINT", &format!("http://127.0.0.1:{port}"));
    let running = spawn(command(&env));
    // Wait until the pre-flight is waiting on the silent endpoint.
    wait_for("the pre-flight to connect", Duration::from_secs(60), || {
        accepted.load(std::sync::atomic::Ordering::SeqCst).then_some(())
    });
    running.proc.signal(15);
    let r = running.finish();
    assert_eq!(r.code, 143, "{}", r.stderr);
    let summary = r.summary();
    assert_eq!(summary["outcome"], "stopped");
    assert!(
        summary["error"].as_str().unwrap().contains("before the sync started"),
        "{summary}"
    );
    assert!(!r.has_msg("running rclone sync"));
    drop(held);
}

/// A stand-in for rclone that answers `version` like rclone and, for the sync, ignores SIGTERM
/// and leaves a child holding its output pipes (what a hung rclone with a helper looks like).
/// It stands in only for this: the pre-flight before it runs against real servers.
fn stubborn_rclone(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let pidfile = dir.join("helper.pid");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = version ]; then echo 'rclone v1.75.2'; exit 0; fi\ntrap '' TERM\nsleep 300 &\necho $! > \"{}\"\nsleep 300\n",
        pidfile.display()
    );
    let path = support::write_file(dir, "stubborn-rclone", script);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (path, pidfile)
}

fn helper_alive(pidfile: &std::path::Path) -> bool {
    let pid = std::fs::read_to_string(pidfile).unwrap_or_default();
    pid.trim().parse().is_ok_and(alive)
}

#[test]
fn a_stop_ends_within_the_grace_even_when_rclone_ignores_sigterm() {
    let (src, dst) = servers();
    let dir = support::temp_dir("stubborn");
    let (fake, pidfile) = stubborn_rclone(dir.path());
    let mut env = vars(&src, "src", &dst, "dst");
    set(&mut env, "STOP_GRACE", "3s");
    let mut cmd = command(&env);
    cmd.env("RCLONE_BINARY", &fake);
    let running = spawn(cmd);
    wait_for("the sync to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .filter(|p| !p.trim().is_empty())
            .map(|_| ())
    });
    let start = std::time::Instant::now();
    running.proc.signal(15);
    let r = running.finish();
    let took = start.elapsed();
    // 3 s grace, then the process group is killed; the pipes close with it.
    assert!(took < Duration::from_secs(12), "the stop took {took:?}");
    assert_eq!(r.summary()["outcome"], "stopped", "{}", r.stderr);
    assert_eq!(r.summary()["signal"], "SIGTERM");
    assert!(r.has_msg("killing it and its process group"), "{}", r.stderr);
    assert!(!helper_alive(&pidfile), "rclone's helper survived the stop");

    // SYNC_TIMEOUT bounds the sync phase the same way, classified as a timeout (exit 5).
    std::fs::remove_file(&pidfile).unwrap();
    set(&mut env, "STOP_GRACE", "2s");
    set(&mut env, "SYNC_TIMEOUT", "2s");
    let mut cmd = command(&env);
    cmd.env("RCLONE_BINARY", &fake);
    let start = std::time::Instant::now();
    let r = spawn(cmd).finish();
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.summary()["error"].as_str().unwrap().contains("SYNC_TIMEOUT"),
        "{}",
        r.stderr
    );
    assert!(!helper_alive(&pidfile));
}

#[test]
fn an_endpoint_that_accepts_and_never_answers_fails_the_preflight_in_bounded_time() {
    let (src, _dst) = servers();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut env = vars(&src, "src", &src, "unused");
    set(&mut env, "DEST_S3_ENDPOINT", &format!("http://127.0.0.1:{port}"));
    set(&mut env, "IO_TIMEOUT", "3s");
    let start = std::time::Instant::now();
    let r = run(&env);
    // The kernel completes the connections (backlog); nothing ever answers.
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
    assert_eq!(r.code, 5, "{}", r.stderr);
    let error = r.summary()["error"].as_str().unwrap();
    assert!(error.contains("did not answer in time"), "{error}");
    assert!(r.lines.iter().any(|l| l["kind"] == "timeout"), "{}", r.stderr);
    drop(silent);
}
