//! A panic on any thread is logged as one JSON line, like every other log line.
//!
//! The test runs itself again as a child process (so the panic hook and the logger it
//! installs do not touch other tests) and reads the child's stderr.

use std::process::Command;

const CHILD: &str = "LIFEBOAT_PANIC_CHILD";

#[test]
fn child_panics_on_a_named_thread() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    lifeboat::log::init(log::LevelFilter::Info);
    let worker = std::thread::Builder::new()
        .name("worker-7".into())
        .spawn(|| panic!("descriptor clone failed: {}", 24))
        .unwrap();
    assert!(worker.join().is_err());
}

#[test]
fn panics_are_logged_as_one_json_line() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "log_panics::child_panics_on_a_named_thread",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let panics: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v: &serde_json::Value| v["msg"] == "a thread panicked")
        .collect();
    assert_eq!(panics.len(), 1, "{stderr}");
    let p = &panics[0];
    assert_eq!(p["level"], "error");
    assert_eq!(p["thread"], "worker-7");
    assert_eq!(p["panic"], "descriptor clone failed: 24");
    assert!(
        p["location"].as_str().unwrap().starts_with("tests/it/log_panics.rs:"),
        "{p}"
    );
    assert!(p["time"].is_string());
    // Rust's default multi-line report is gone.
    assert!(!stderr.contains("panicked at"), "{stderr}");
}
