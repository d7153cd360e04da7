//! The injected Pod actually works. The hook's patch is applied to a Pod, then the Pod is
//! "run" on this machine: each container (the injected init containers and sidecar: the real
//! `hook write-config`, the real `litestream restore` and `litestream replicate`; the app: a
//! python program writing with SQLite) runs as a local process in Pod order against a real S3
//! server (`rclone serve s3`), each in **its own mount namespace** built by the process
//! kubelet's container helper (`tests/py/process_container.py`): a private root with the host's
//! /usr, the Pod's volumes bind-mounted exactly at the container's `volumeMounts` (subPath,
//! readOnly), and `readOnlyRootFilesystem` made a read-only root. A database folder not mounted
//! into a container, or mounted from the wrong place, shows as it would on a node (the app
//! writes into its own root, Litestream sees an empty folder), and a write outside the volumes
//! by an injected container fails. The app writes rows, the Pod "restarts" with empty volumes,
//! and the rows come back from S3. (`tests/py/test_kube_hook.py` runs the same round trip
//! through the real kube-apiserver and the process kubelet; this one runs native-sidecar mode,
//! which the 1.20 apiserver cannot, and a hostile database name.)

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::hook_common::pod_runner::{PodRunner, APP, COUNT};
use crate::hook_common::*;
use crate::support::pki::Alg;
use crate::support::s3::{Flavor, S3Server};
use crate::support::{tool, wait_for};
use serde_json::{json, Value};

const ACCESS_KEY: &str = "AKIDHOOKTEST";
const SECRET_KEY: &str = "hook-test-secret-9f8e7d";
const S3_SECRET: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)];

/// Restores `db` from S3 into a scratch file and counts its rows; None until it is complete.
fn replicated_rows(runner: &PodRunner, config: &Path, db: &str, scratch: &Path) -> Option<String> {
    let _ = std::fs::remove_file(scratch);
    let mut cmd = Command::new(tool("litestream"));
    cmd.env_clear()
        .env("HOME", runner.dir.join("checker-home"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .args(["restore", "-no-expand-env", "-config"])
        .arg(config)
        .arg("-o")
        .arg(scratch)
        .arg(db)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let out = cmd.output().ok()?;
    if !out.status.success() || !scratch.exists() {
        return None;
    }
    Some(run_python(COUNT, &[path_str(scratch)]).trim().to_string())
}

/// The Pod of the round trips: two databases in two folders of the container's own file
/// system (not paths on this machine: only the mounts make them reach the volumes), the
/// second with a hostile file name.
const DB_A: &str = "/var/lib/app/main.db";
const DB_B: &str = "/cache/$(touch pwned)`touch pwned2`'\"; $(AWS_SECRET_ACCESS_KEY) x.db";

fn round_trip_pod(s3: &S3Server) -> Value {
    deployment_pod(json!({
        format!("{PREFIX}/inject"): "true",
        format!("{PREFIX}/path"): format!("{DB_A},{DB_B}"),
        format!("{PREFIX}/endpoint"): s3.endpoint(),
        format!("{PREFIX}/bucket"): "pods",
        format!("{PREFIX}/secret"): "s3-creds",
        format!("{PREFIX}/sync-interval"): "200ms",
    }))
}

/// Every file under `dir` named `name` (a hostile name run by a shell would leave one).
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if e.file_name() == name {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn injected_pod_replicates_and_restores_after_a_restart() {
    let s3 = S3Server::start(Flavor::Rclone, ACCESS_KEY, SECRET_KEY);
    s3.create_bucket("pods");
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let root = support::temp_dir("pod");
    let pod = round_trip_pod(&s3);
    let response = hook.review(&review("e2e-1", "shop", "CREATE", pod.clone(), false));
    let patched = apply(&pod, &response);
    let runner = PodRunner::new(patched.clone(), root.path(), "s3-creds", &S3_SECRET);
    runner.empty_volumes();

    // First start: nothing to restore; restore must succeed without creating the databases.
    // The init containers run with a read-only root: a write outside their volumes fails them.
    let sidecar = runner.start().expect("the replicate sidecar");
    assert!(files_named(root.path(), "main.db").is_empty());
    let config = runner.volumes["litestream-hook-config"].join("litestream.yml");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(written, config_of(&patched));

    // The app writes rows into both databases, through its own mounts.
    assert_eq!(runner.app(APP, &[DB_A, "0", "100"]), "(100, 4950)");
    assert_eq!(runner.app(APP, &[DB_B, "0", "7"]), "(7, 21)");
    let scratch = root.path().join("scratch.db");
    wait_for("main.db rows in S3", Duration::from_secs(60), || {
        (replicated_rows(&runner, &config, DB_A, &scratch)? == "(100, 4950)").then_some(())
    });
    wait_for("the second database's rows in S3", Duration::from_secs(60), || {
        (replicated_rows(&runner, &config, DB_B, &scratch)? == "(7, 21)").then_some(())
    });
    let keys = s3.list("pods");
    assert!(keys.iter().any(|k| k.starts_with("shop/web/main.db/")), "{keys:?}");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("shop/web/$(touch pwned)`touch pwned2`'\"; $(AWS_SECRET_ACCESS_KEY) x.db/")),
        "{keys:?}"
    );
    assert!(keys.iter().all(|k| k.starts_with("shop/web/")), "{keys:?}");
    assert!(
        keys.iter().all(|k| !k.contains(SECRET_KEY)),
        "the secret leaked into a key: {keys:?}"
    );
    drop(sidecar);

    // The Pod is recreated on another node: empty volumes, same replica paths.
    runner.empty_volumes();
    assert!(files_named(root.path(), "main.db").is_empty());
    let sidecar = runner.start().expect("the replicate sidecar");
    assert_eq!(runner.app(COUNT, &[DB_A]), "(100, 4950)");
    assert_eq!(runner.app(COUNT, &[DB_B]), "(7, 21)");
    // And it keeps replicating after the restore.
    assert_eq!(runner.app(APP, &[DB_A, "100", "10"]), "(110, 5995)");
    wait_for("new rows in S3", Duration::from_secs(60), || {
        (replicated_rows(&runner, &config, DB_A, &scratch)? == "(110, 5995)").then_some(())
    });
    drop(sidecar);

    // No shell ever ran the hostile name (it would have left these files in some volume or
    // root), and the secret is in no file or log we keep.
    for name in ["pwned", "pwned2"] {
        assert_eq!(files_named(root.path(), name), Vec::<PathBuf>::new());
    }
    assert!(!std::fs::read_to_string(&config).unwrap().contains(SECRET_KEY));
    assert!(!hook.log_text().contains(SECRET_KEY));
    let sidecar_log = std::fs::read_to_string(runner.dir.join("sidecar.log")).unwrap();
    assert!(sidecar_log.contains("replicating to"), "{sidecar_log}");
    assert!(!sidecar_log.contains(SECRET_KEY));
}

/// The harness is honest about mounts: with the app's database mount removed (as a Pod whose
/// app container the hook missed would be), the app writes into its own root and nothing
/// reaches S3, so the round trip above would fail. And an injected container that writes
/// outside its volumes fails on its read-only root.
#[test]
fn a_database_not_mounted_into_the_app_is_not_backed_up() {
    let s3 = S3Server::start(Flavor::Rclone, ACCESS_KEY, SECRET_KEY);
    s3.create_bucket("pods");
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let root = support::temp_dir("pod-unmounted");
    let pod = round_trip_pod(&s3);
    let response = hook.review(&review("e2e-2", "shop", "CREATE", pod.clone(), false));
    let mut patched = apply(&pod, &response);
    let app_mounts = patched["spec"]["containers"][0]["volumeMounts"].as_array_mut().unwrap();
    let before = app_mounts.len();
    app_mounts.retain(|m| m["name"] != "litestream-hook-data");
    assert_eq!(before - app_mounts.len(), 2, "the hook mounted both database folders");
    let runner = PodRunner::new(patched, root.path(), "s3-creds", &S3_SECRET);
    runner.empty_volumes();
    let sidecar = runner.start().expect("the replicate sidecar");
    assert_eq!(runner.app(APP, &[DB_A, "0", "100"]), "(100, 4950)");
    let config = runner.volumes["litestream-hook-config"].join("litestream.yml");
    let scratch = root.path().join("scratch.db");
    // Several sync intervals (200ms) pass: Litestream watches an empty folder.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(replicated_rows(&runner, &config, DB_A, &scratch), None);
    assert!(files_named(&runner.volumes["litestream-hook-data"], "main.db").is_empty());
    assert!(!s3.list("pods").iter().any(|k| k.starts_with("shop/web/main.db/")));
    drop(sidecar);

    // An injected container (read-only root) writing outside its volumes fails.
    let c = &runner.pod["spec"]["initContainers"][1];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let out = runner
        .container(
            c,
            Path::new("/usr/bin/python3"),
            vec!["python3".into(), "-c".into(), "open('/outside', 'w')".into()],
            Vec::new(),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"));
}
