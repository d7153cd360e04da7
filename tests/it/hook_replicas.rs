//! Replica types besides S3, each against a real server, through the process kubelet
//! (`hook_common::pod_runner`) with the real `hook write-config` and `litestream`: SFTP on
//! `rclone serve sftp` (its host key and the client's key made by `ssh-keygen` at test time, the
//! client key reaching Litestream only as the Secret's file), and Azure Blob Storage on Azurite
//! (Microsoft's emulator; the account key reaching Litestream only as the Secret's environment
//! variable). The app writes rows, the Pod restarts with empty volumes, and the rows come back;
//! a server with another host key, or a wrong account key, stops the Pod in Init before
//! anything is restored.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::hook_common::pod_runner::{PodRunner, APP, COUNT};
use crate::hook_common::*;
use crate::support::pki::Alg;
use crate::support::{self, free_port, tool, wait_for, wait_for_port, Proc};

const DB: &str = "/var/lib/app/main.db";

/// A key pair of type `alg` (`ed25519`, `ecdsa`, `rsa`) made by `ssh-keygen` in `dir`:
/// (private key file, public key line).
fn keygen(dir: &Path, name: &str, alg: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", alg, "-N", "", "-C", name, "-f"])
        .arg(&file)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = std::fs::read_to_string(file.with_extension("pub")).unwrap();
    (file, public.trim().to_string())
}

/// `rclone serve sftp` over `root` on 127.0.0.1:`port`, with `host_keys` and one authorized
/// client key.
fn serve_sftp(root: &Path, port: u16, host_keys: &[&Path], authorized: &Path, log: &Path) -> Proc {
    std::fs::create_dir_all(root).unwrap();
    let mut cmd = Command::new(tool("rclone"));
    support::scrub(&mut cmd);
    cmd.args(["serve", "sftp", "--config", "/dev/null", "--user", "backup", "--addr"])
        .arg(format!("127.0.0.1:{port}"));
    for key in host_keys {
        cmd.arg("--key").arg(key);
    }
    cmd.arg("--authorized-keys")
        .arg(authorized)
        .arg(root)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    let p = Proc::spawn("rclone serve sftp", cmd);
    wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(30));
    p
}

/// Restores `DB` through the litestream `config` with `env` into a scratch file and counts its
/// rows; None until the replica has them.
fn restored_rows(config: &Path, env: &[(&str, &str)], scratch: &Path) -> Option<String> {
    let _ = std::fs::remove_file(scratch);
    let out = Command::new(tool("litestream"))
        .env_clear()
        .envs(env.iter().copied())
        .args(["restore", "-no-expand-env", "-config"])
        .arg(config)
        .arg("-o")
        .arg(scratch)
        .arg(DB)
        .output()
        .ok()?;
    if !out.status.success() || !scratch.exists() {
        return None;
    }
    Some(run_python(COUNT, &[path_str(scratch)]).trim().to_string())
}

/// The hook's patch of a Deployment's Pod with `annotations` (besides inject, path and a
/// 200ms sync interval), admitted.
fn patched_pod(hook: &Hook, annotations: &[(&str, &str)]) -> Value {
    let mut a = json!({
        format!("{PREFIX}/inject"): "true",
        format!("{PREFIX}/path"): DB,
        format!("{PREFIX}/sync-interval"): "200ms",
    });
    for (k, v) in annotations {
        a[format!("{PREFIX}/{k}")] = json!(v);
    }
    let pod = deployment_pod(a);
    let response = hook.review(&review("replica-1", "shop", "CREATE", pod.clone(), false));
    assert_eq!(response["response"]["allowed"], true, "{response}");
    apply(&pod, &response)
}

/// The round trip on `runner`'s Pod: the app writes 100 rows, `rows` (the replica's, read from
/// outside the Pod) shows them; a new Pod with empty volumes gets them back before the app
/// starts, and 10 more reach the replica.
fn round_trip(runner: &PodRunner, what: &str, rows: &dyn Fn() -> Option<String>) {
    runner.empty_volumes();
    let sidecar = runner.start().expect("the replicate sidecar");
    assert_eq!(runner.app(APP, &[DB, "0", "100"]), "(100, 4950)");
    wait_for(&format!("the rows in {what}"), Duration::from_secs(60), || {
        (rows()? == "(100, 4950)").then_some(())
    });
    drop(sidecar);
    runner.empty_volumes();
    let sidecar = runner.start().expect("the replicate sidecar");
    assert_eq!(runner.app(COUNT, &[DB]), "(100, 4950)");
    assert_eq!(runner.app(APP, &[DB, "100", "10"]), "(110, 5995)");
    wait_for(&format!("the new rows in {what}"), Duration::from_secs(60), || {
        (rows()? == "(110, 5995)").then_some(())
    });
    drop(sidecar);
}

#[test]
fn sftp_replica_round_trip_and_a_server_with_another_host_key_is_refused() {
    let dir = support::temp_dir("sftp");
    let d = dir.path();
    // The host keys of a stock OpenSSH server; Go's client asks for the ECDSA one, which is
    // the one the docs say to give (its ed25519 key would fail with "host key mismatch").
    let (host_ecdsa, host_pub) = keygen(d, "host-ecdsa", "ecdsa");
    let (host_ed25519, _) = keygen(d, "host-ed25519", "ed25519");
    let (host_rsa, _) = keygen(d, "host-rsa", "rsa");
    let (client_key, client_pub) = keygen(d, "client", "ed25519");
    let (impostor_key, _) = keygen(d, "impostor", "ecdsa");
    let authorized = d.join("authorized_keys");
    std::fs::write(&authorized, format!("{client_pub}\n")).unwrap();
    let port = free_port();
    let served = d.join("served");
    let server = serve_sftp(
        &served,
        port,
        &[&host_ed25519, &host_ecdsa, &host_rsa],
        &authorized,
        &d.join("sftp.log"),
    );

    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let endpoint = format!("sftp://backup@127.0.0.1:{port}/pods");
    let patched = patched_pod(
        &hook,
        &[
            ("type", "sftp"),
            ("endpoint", &endpoint),
            ("host-key", &host_pub),
            ("secret", "sftp-creds"),
        ],
    );
    let private = std::fs::read_to_string(&client_key).unwrap();
    let runner = PodRunner::new(
        patched.clone(),
        &d.join("pod"),
        "sftp-creds",
        &[("SSH_PRIVATE_KEY", private.as_str())],
    );
    // Read from outside the Pod with the Pod's config, its key path pointed at the key here.
    let config = runner.volumes["litestream-hook-config"].join("litestream.yml");
    let (scratch, checker) = (d.join("scratch.db"), d.join("checker.yml"));
    let rows = || {
        let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&config).ok()?).ok()?;
        c["dbs"][0]["replica"]["key-path"] = json!(client_key);
        std::fs::write(&checker, c.to_string()).unwrap();
        restored_rows(&checker, &[], &scratch)
    };
    round_trip(&runner, "the SFTP server", &rows);
    // Under the endpoint's folder, at the Pod's replica path.
    assert!(served.join("pods/shop/web/main.db/ltx").is_dir());
    drop(server);

    // Someone else answers at the address (same files, another host key): the restore refuses
    // it, so the Pod stays in Init instead of starting on an empty or foreign database.
    let impostor = serve_sftp(&served, port, &[&impostor_key], &authorized, &d.join("impostor.log"));
    runner.empty_volumes();
    let Err((failed, stderr)) = runner.try_start() else {
        panic!("the Pod started against a server with another host key");
    };
    assert!(failed.contains("restore"), "{failed}: {stderr}");
    assert!(stderr.contains("host key"), "{stderr}");
    assert!(!runner.volumes["litestream-hook-data"]
        .join("var/lib/app/main.db")
        .exists());
    drop(impostor);

    // The key is only in the Secret's file: not in the config, the logs or the patch.
    assert!(!runner.leaks(&std::fs::read_to_string(&config).unwrap()));
    assert!(!runner.leaks(&std::fs::read_to_string(runner.dir.join("sidecar.log")).unwrap()));
    assert!(!runner.leaks(&hook.log_text()));
    assert!(!runner.leaks(&patched.to_string()));
}

/// The emulator's well-known account and key (Azurite's README; not a secret anywhere).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service on 127.0.0.1:`port`, its data in `dir`.
fn serve_azurite(dir: &Path, port: u16) -> Proc {
    let mut cmd = Command::new(tool("azurite-blob"));
    cmd.args(["--blobHost", "127.0.0.1", "--blobPort"])
        .arg(port.to_string())
        .arg("--location")
        .arg(dir)
        .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn("azurite-blob", cmd);
    wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(60));
    p
}

/// One Blob service call signed with the account key (SharedKey, standard library only):
/// `create` a container, or `list` its blob names. Prints the names, one a line.
const BLOB_CALL: &str = r#"
import base64, hashlib, hmac, sys, urllib.request, xml.etree.ElementTree as ET
from email.utils import formatdate
from urllib.parse import urlparse
base, account, key, container, op = sys.argv[1:6]
query = {"restype": "container", **({"comp": "list"} if op == "list" else {})}
url = f"{base}/{container}?" + "&".join(f"{k}={v}" for k, v in query.items())
headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
method = "PUT" if op == "create" else "GET"
canonical = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
resource = f"/{account}{urlparse(url).path}" + "".join(f"\n{k}:{v}" for k, v in sorted(query.items()))
to_sign = "\n".join([method] + [""] * 11) + "\n" + canonical + resource
signature = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
headers["Authorization"] = f"SharedKey {account}:{signature}"
if method == "PUT":
    headers["Content-Length"] = "0"
with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=30) as r:
    body = r.read()
if op == "list":
    for name in ET.fromstring(body).iter("Name"):
        print(name.text)
"#;

#[test]
fn abs_replica_round_trip_and_a_wrong_account_key_stops_the_pod_in_init() {
    let dir = support::temp_dir("abs");
    let d = dir.path();
    let port = free_port();
    let _azurite = serve_azurite(&d.join("azurite"), port);
    let endpoint = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}");
    run_python(BLOB_CALL, &[&endpoint, AZURITE_ACCOUNT, AZURITE_KEY, "pods", "create"]);

    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let patched = patched_pod(
        &hook,
        &[
            ("type", "abs"),
            ("account", AZURITE_ACCOUNT),
            ("bucket", "pods"),
            ("endpoint", &endpoint),
            ("secret", "abs-creds"),
        ],
    );
    let runner = PodRunner::new(
        patched.clone(),
        &d.join("pod"),
        "abs-creds",
        &[("LITESTREAM_AZURE_ACCOUNT_KEY", AZURITE_KEY)],
    );
    let config = runner.volumes["litestream-hook-config"].join("litestream.yml");
    let scratch = d.join("scratch.db");
    let rows = || restored_rows(&config, &[("LITESTREAM_AZURE_ACCOUNT_KEY", AZURITE_KEY)], &scratch);
    round_trip(&runner, "the container", &rows);
    let blobs = run_python(BLOB_CALL, &[&endpoint, AZURITE_ACCOUNT, AZURITE_KEY, "pods", "list"]);
    assert!(blobs.lines().count() > 0, "{blobs}");
    assert!(blobs.lines().all(|b| b.starts_with("shop/web/main.db/")), "{blobs}");

    // The Secret holds a wrong (well-formed) key: the restore fails, the Pod stays in Init.
    let wrong = lifeboat::base64::encode(&[7u8; 64]);
    let bad = PodRunner::new(
        patched.clone(),
        &d.join("pod-bad"),
        "abs-creds",
        &[("LITESTREAM_AZURE_ACCOUNT_KEY", wrong.as_str())],
    );
    bad.empty_volumes();
    let Err((failed, stderr)) = bad.try_start() else {
        panic!("the Pod started with a wrong account key");
    };
    assert!(failed.contains("restore"), "{failed}: {stderr}");
    assert!(stderr.contains("AuthorizationFailure"), "{stderr}");

    // The key is only in the Pod's environment, from the Secret.
    for text in [
        std::fs::read_to_string(&config).unwrap(),
        std::fs::read_to_string(runner.dir.join("sidecar.log")).unwrap(),
        hook.log_text(),
        patched.to_string(),
    ] {
        assert!(!runner.leaks(&text));
    }
}
