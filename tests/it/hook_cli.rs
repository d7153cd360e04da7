//! The binary's command line and configuration errors: every problem named at once, a JSON
//! log line, a non-zero exit; and `hook write-config`, the init container mode.

use crate::support;

use std::process::Command;

use serde_json::Value;

fn hook() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hook"));
    cmd.env_clear();
    cmd
}

fn last_log(stderr: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().last().unwrap_or_else(|| panic!("no log line: {text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn configuration_problems_are_all_reported_at_once() {
    let out = hook()
        .env("TLS_RELOAD_INTERVAL", "soon")
        .env("VARIANT", "Not_A_Label")
        .env("DEFAULT_STORAGE", "1GB")
        .env("MAX_BODY_BYTES", "12")
        .env("LOG_LEVEL", "loud")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = last_log(&out.stderr);
    assert_eq!(line["level"], "error");
    let error = line["error"].as_str().unwrap();
    for var in [
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "HOOK_IMAGE",
        "TLS_RELOAD_INTERVAL",
        "VARIANT",
        "DEFAULT_STORAGE",
        "MAX_BODY_BYTES",
        "LOG_LEVEL",
    ] {
        assert!(error.contains(var), "{var} missing from: {error}");
    }
}

#[test]
fn a_secret_name_with_a_label_over_63_bytes_is_refused() {
    // Kubernetes refuses such a Secret name (every label of a subdomain is at most 63 bytes);
    // the hook used to accept it and inject Pods that could never start.
    let long = format!("{}.example", "a".repeat(64));
    let out = hook().env("DEFAULT_SECRET", &long).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let error = last_log(&out.stderr)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("DEFAULT_SECRET: must be a Kubernetes object name"),
        "{error}"
    );
    let fine = hook()
        .env("DEFAULT_SECRET", format!("{}.example", "a".repeat(63)))
        .output()
        .unwrap();
    let error = last_log(&fine.stderr)["error"].as_str().unwrap().to_string();
    assert!(!error.contains("DEFAULT_SECRET"), "{error}");
}

#[test]
fn the_default_target_is_checked_by_the_rule_of_its_type() {
    let error_of = |env: &[(&str, &str)]| {
        let mut cmd = hook();
        cmd.envs(env.iter().copied());
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2)); // TLS files and HOOK_IMAGE are missing anyway
        last_log(&out.stderr)["error"].as_str().unwrap().to_string()
    };
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDZOX30WY177glSjMKCtb9Bumn1CQNjV3u9PhVkxpSpw";
    // Values the default type refuses stop the start, named.
    for (env, var, says) in [
        (vec![("DEFAULT_TYPE", "gs")], "DEFAULT_TYPE", "\"s3\""),
        (
            vec![("DEFAULT_TYPE", "sftp"), ("DEFAULT_REGION", "eu")],
            "DEFAULT_REGION",
            "not used by type sftp",
        ),
        (
            vec![("DEFAULT_TYPE", "sftp"), ("DEFAULT_HOST_KEY", "ssh-ed25519 nope")],
            "DEFAULT_HOST_KEY",
            "host key",
        ),
        (
            vec![("DEFAULT_TYPE", "abs"), ("DEFAULT_BUCKET", "a.b")],
            "DEFAULT_BUCKET",
            "container",
        ),
        (vec![("DEFAULT_ENDPOINT", "sftp://u@h")], "DEFAULT_ENDPOINT", "http"),
    ] {
        let error = error_of(&env);
        assert!(
            error.contains(&format!("{var}: ")) && error.contains(says),
            "{env:?}: {error}"
        );
    }
    // What a type needs but the defaults lack is asked of each Pod instead; the builtin S3
    // bucket is no default of an SFTP target.
    let error = error_of(&[("DEFAULT_TYPE", "sftp"), ("DEFAULT_HOST_KEY", key)]);
    assert!(!error.contains("DEFAULT_"), "{error}");
}

#[test]
fn unreadable_certificates_stop_start_up_naming_the_file() {
    let dir = support::temp_dir("hook-cli");
    let cert = support::write_file(dir.path(), "tls.crt", "not a certificate");
    let key = support::write_file(
        dir.path(),
        "tls.key",
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    );
    let out = hook()
        .env("TLS_CERT_FILE", &cert)
        .env("TLS_KEY_FILE", &key)
        .env("HOOK_IMAGE", "x/hook:1")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = last_log(&out.stderr)["error"].as_str().unwrap().to_string();
    assert!(error.contains("tls.crt"), "{error}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("c2VjcmV0"));
}

#[test]
fn write_config_checks_and_writes_atomically() {
    let dir = support::temp_dir("hook-cli");
    let file = dir.path().join("litestream.yml");
    // Usage errors.
    assert_eq!(hook().arg("write-config").output().unwrap().status.code(), Some(2));
    assert_eq!(hook().arg("frobnicate").output().unwrap().status.code(), Some(2));
    // Missing or broken config: exit 1, nothing written.
    let out = hook().arg("write-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(last_log(&out.stderr)["error"]
        .as_str()
        .unwrap()
        .contains("LIFEBOAT_LITESTREAM_CONFIG"));
    let out = hook()
        .arg("write-config")
        .arg(&file)
        .env("LIFEBOAT_LITESTREAM_CONFIG", "dbs: [oops")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!file.exists());
    // A good one is written as given, and a second run replaces it.
    let config = r#"{"dbs":[{"path":"/d/$(x) \"q\".db","replica":{"type":"s3","bucket":"b","path":"n/a/x.db"}}]}"#;
    for _ in 0..2 {
        let out = hook()
            .arg("write-config")
            .arg(&file)
            .env("LIFEBOAT_LITESTREAM_CONFIG", config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, serde_json::from_str::<Value>(config).unwrap());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");
}
