//! The injected Pod actually works. The hook's patch is applied to a Pod, then the Pod is
//! "run" on this machine: each injected init container's and the sidecar's image and args
//! are executed as local processes in Pod order (the real `hook write-config`, the real
//! `litestream restore` and `litestream replicate`) against a real S3 server (`rclone serve
//! s3`). Volumes are folders; the database folders are mounted by symlinking their
//! mountPath to the volume's subPath, as the kubelet bind-mounts them. The app writes rows
//! with SQLite, the Pod "restarts" with empty volumes, and the rows come back from S3.

use crate::support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::hook_common::*;
use crate::support::pki::Alg;
use crate::support::s3::{Flavor, S3Server};
use crate::support::{tool, wait_for, Proc};
use serde_json::{json, Value};

const ACCESS_KEY: &str = "AKIDHOOKTEST";
const SECRET_KEY: &str = "hook-test-secret-9f8e7d";

/// Runs a patched Pod's containers as local processes.
struct PodRunner {
    pod: Value,
    /// Volume name → folder.
    volumes: HashMap<String, PathBuf>,
    /// (secret name, key) → value.
    secrets: HashMap<(String, String), String>,
    /// Working folder, HOME and TMPDIR of every process: the container's root filesystem,
    /// read-only for injected containers, so nothing may be written here (a shell injection
    /// would leave files here too).
    cwd: PathBuf,
    /// Init containers with a read-only root filesystem run under strace: (name, trace file,
    /// the folders their volumes are mounted at or come from).
    traces: std::cell::RefCell<Vec<(String, PathBuf, Vec<PathBuf>)>>,
}

impl PodRunner {
    fn new(pod: Value, root: &Path, secret: &str) -> PodRunner {
        let mut volumes = HashMap::new();
        for v in pod["spec"]["volumes"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap().to_string();
            if v.get("emptyDir").is_some() {
                volumes.insert(name.clone(), root.join(format!("volume-{name}")));
            }
        }
        let secrets = HashMap::from([
            (
                (secret.to_string(), "AWS_ACCESS_KEY_ID".to_string()),
                ACCESS_KEY.to_string(),
            ),
            (
                (secret.to_string(), "AWS_SECRET_ACCESS_KEY".to_string()),
                SECRET_KEY.to_string(),
            ),
        ]);
        let cwd = root.join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        PodRunner {
            pod,
            volumes,
            secrets,
            cwd,
            traces: Default::default(),
        }
    }

    /// Fresh, empty emptyDir volumes (a new Pod on a new node).
    fn empty_volumes(&self) {
        for dir in self.volumes.values() {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).unwrap();
        }
    }

    /// Builds the process for one container: image → program, args with mount paths mapped,
    /// env resolved (secretKeyRef from the fake Secret), database mounts as symlinks.
    fn command(&self, c: &Value) -> Command {
        let image = c["image"].as_str().unwrap();
        let program: PathBuf = if image == HOOK_IMAGE {
            PathBuf::from(env!("CARGO_BIN_EXE_hook"))
        } else {
            assert!(
                image.starts_with("litestream/litestream:0.5."),
                "unexpected image {image}"
            );
            tool("litestream")
        };
        let mut rewrites: Vec<(String, PathBuf)> = Vec::new();
        let mut writable: Vec<PathBuf> = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let Some(volume) = self.volumes.get(m["name"].as_str().unwrap()) else {
                continue;
            };
            let host = match m["subPath"].as_str() {
                Some(sub) => volume.join(sub),
                None => volume.clone(),
            };
            std::fs::create_dir_all(&host).unwrap();
            let at = m["mountPath"].as_str().unwrap();
            writable.push(host.clone());
            writable.push(PathBuf::from(at));
            if at.starts_with("/etc/") {
                rewrites.push((at.to_string(), host));
            } else {
                // A database folder: the test chose paths inside its temp folder.
                let link = Path::new(at);
                let _ = std::fs::remove_file(link);
                std::os::unix::fs::symlink(&host, link).unwrap();
            }
        }
        let read_only = c["securityContext"]["readOnlyRootFilesystem"] == true;
        let strace = Path::new("/usr/bin/strace");
        assert!(
            strace.exists(),
            "this test traces read-only-root init containers with /usr/bin/strace: apt-get install strace"
        );
        let traced = read_only && c["restartPolicy"] != "Always";
        let mut cmd = if traced {
            let trace = self.cwd.join(format!("../trace-{}", c["name"].as_str().unwrap()));
            self.traces
                .borrow_mut()
                .push((c["name"].as_str().unwrap().to_string(), trace.clone(), writable));
            let mut cmd = Command::new(strace);
            cmd.args([
                "-f",
                "-qq",
                "-e",
                "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,truncate,symlink,link",
            ])
            .arg("-o")
            .arg(&trace)
            .arg("--")
            .arg(program);
            cmd
        } else {
            Command::new(program)
        };
        let tmp = self.cwd.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        cmd.env_clear()
            .env("HOME", &self.cwd)
            .env("TMPDIR", &tmp)
            .current_dir(&self.cwd);
        // Env values first (each may refer to the ones before it), then args, both through
        // the kubelet's $(VAR) expansion.
        let mut env: Vec<(String, String)> = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            let value = match e.get("value") {
                Some(v) => {
                    let defined = env.clone();
                    kube_expand(v.as_str().unwrap(), &|n| {
                        defined.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
                    })
                }
                None => {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    let key = (
                        r["name"].as_str().unwrap().to_string(),
                        r["key"].as_str().unwrap().to_string(),
                    );
                    self.secrets
                        .get(&key)
                        .unwrap_or_else(|| panic!("no secret {key:?}"))
                        .clone()
                }
            };
            env.push((name.to_string(), value));
        }
        for arg in c["args"].as_array().unwrap() {
            let arg = kube_expand(arg.as_str().unwrap(), &|n| {
                env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
            });
            let mapped = rewrites.iter().find_map(|(at, host)| {
                arg.strip_prefix(at.as_str())
                    .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                    .map(|rest| format!("{}{rest}", host.display()))
            });
            cmd.arg(mapped.unwrap_or(arg));
        }
        cmd.envs(env);
        cmd
    }

    /// Every path the traced init containers opened for writing, created, renamed or removed
    /// outside their volumes (and /dev): with a read-only root filesystem each would fail.
    fn writes_outside_volumes(&self) -> Vec<String> {
        let mut outside = Vec::new();
        for (name, trace, writable) in self.traces.borrow().iter() {
            let text = std::fs::read_to_string(trace).unwrap_or_default();
            for line in text.lines() {
                let call = line.split_whitespace().nth(1).unwrap_or("");
                let is_open = call.starts_with("open") || call.starts_with("creat");
                if is_open
                    && !["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                        .iter()
                        .any(|f| line.contains(f))
                {
                    continue;
                }
                let Some(start) = line.find('"') else { continue };
                let mut path = String::new();
                let mut chars = line[start + 1..].chars();
                while let Some(ch) = chars.next() {
                    match ch {
                        '\\' => path.push(chars.next().unwrap_or('\\')),
                        '"' => break,
                        ch => path.push(ch),
                    }
                }
                let inside = path.starts_with("/dev/") || writable.iter().any(|w| Path::new(&path).starts_with(w));
                if !inside {
                    outside.push(format!("{name}: {line}"));
                }
            }
        }
        outside
    }

    /// The sidecar's log file (appended).
    fn log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cwd.join("../sidecar.log"))
            .unwrap()
    }

    /// Runs the init containers in order; returns the native sidecar, started.
    fn start(&self) -> Option<Proc> {
        let mut sidecar = None;
        for c in self.pod["spec"]["initContainers"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let mut cmd = self.command(c);
            if c["restartPolicy"] == "Always" {
                cmd.stdout(self.log()).stderr(self.log());
                sidecar = Some(Proc::spawn(name, cmd));
                continue;
            }
            let out = cmd.output().unwrap_or_else(|e| panic!("{name}: {e}"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "init container {name} failed: {stderr}");
            assert!(!stderr.contains(SECRET_KEY), "{name} logged the secret");
        }
        for c in self.pod["spec"]["containers"].as_array().unwrap() {
            if c["name"].as_str().unwrap().contains("litestream-hook") {
                let mut cmd = self.command(c);
                cmd.stdout(self.log()).stderr(self.log());
                sidecar = Some(Proc::spawn("replicate", cmd));
            }
        }
        sidecar
    }
}

const APP: &str = r#"
import sqlite3, sys
db, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect(db)
c.execute("pragma journal_mode=wal")
c.execute("create table if not exists t (id integer primary key, v text)")
c.executemany("insert into t (id, v) values (?, ?)", [(i, "row %d" % i) for i in range(start, start + n)])
c.commit()
print(c.execute("select count(*), coalesce(sum(id), 0) from t").fetchone())
"#;

const COUNT: &str = r#"
import sqlite3, sys
c = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
print(c.execute("select count(*), coalesce(sum(id), 0) from t").fetchone())
"#;

/// Restores `db` from S3 into a scratch file and counts its rows; None until it is complete.
fn replicated_rows(runner: &PodRunner, config: &Path, db: &str, scratch: &Path) -> Option<String> {
    let _ = std::fs::remove_file(scratch);
    let mut cmd = Command::new(tool("litestream"));
    cmd.env_clear()
        .env("HOME", runner.cwd.join("../checker-home"))
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

#[test]
fn injected_pod_replicates_and_restores_after_a_restart() {
    let s3 = S3Server::start(Flavor::Rclone, ACCESS_KEY, SECRET_KEY);
    s3.create_bucket("pods");
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let root = support::temp_dir("pod");
    // Two databases in two folders; the second has a hostile file name.
    let dir_a = root.path().join("app-data");
    let dir_b = root.path().join("cache");
    let db_a = format!("{}/main.db", dir_a.display());
    let db_b = format!(
        "{}/$(touch pwned)`touch pwned2`'\"; $(AWS_SECRET_ACCESS_KEY) x.db",
        dir_b.display()
    );
    let pod = deployment_pod(json!({
        format!("{PREFIX}/inject"): "true",
        format!("{PREFIX}/path"): format!("{db_a},{db_b}"),
        format!("{PREFIX}/endpoint"): s3.endpoint(),
        format!("{PREFIX}/bucket"): "pods",
        format!("{PREFIX}/secret"): "s3-creds",
        format!("{PREFIX}/sync-interval"): "200ms",
    }));
    let response = hook.review(&review("e2e-1", "shop", "CREATE", pod.clone(), false));
    let patched = apply(&pod, &response);
    let runner = PodRunner::new(patched.clone(), root.path(), "s3-creds");
    runner.empty_volumes();

    // First start: nothing to restore; restore must succeed without creating the databases.
    let sidecar = runner.start().expect("the replicate sidecar");
    assert!(!Path::new(&db_a).exists() && !Path::new(&db_b).exists());
    let config = runner.volumes["litestream-hook-config"].join("litestream.yml");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(written, config_of(&patched));

    // The app writes rows into both databases.
    assert_eq!(run_python(APP, &[&db_a, "0", "100"]).trim(), "(100, 4950)");
    assert_eq!(run_python(APP, &[&db_b, "0", "7"]).trim(), "(7, 21)");
    let scratch = root.path().join("scratch.db");
    wait_for("main.db rows in S3", Duration::from_secs(60), || {
        (replicated_rows(&runner, &config, &db_a, &scratch)? == "(100, 4950)").then_some(())
    });
    wait_for("the second database's rows in S3", Duration::from_secs(60), || {
        (replicated_rows(&runner, &config, &db_b, &scratch)? == "(7, 21)").then_some(())
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
    assert!(!Path::new(&db_a).exists());
    let sidecar = runner.start().expect("the replicate sidecar");
    assert_eq!(run_python(COUNT, &[&db_a]).trim(), "(100, 4950)");
    assert_eq!(run_python(COUNT, &[&db_b]).trim(), "(7, 21)");
    // And it keeps replicating after the restore.
    assert_eq!(run_python(APP, &[&db_a, "100", "10"]).trim(), "(110, 5995)");
    wait_for("new rows in S3", Duration::from_secs(60), || {
        (replicated_rows(&runner, &config, &db_a, &scratch)? == "(110, 5995)").then_some(())
    });
    drop(sidecar);

    // No shell ever ran the hostile name, and nothing wrote to the (read-only) root
    // filesystem: its stand-in, the working folder, HOME and TMPDIR, is as it was.
    let leftovers: Vec<_> = std::fs::read_dir(&runner.cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["tmp"], "written outside the volumes");
    assert_eq!(std::fs::read_dir(runner.cwd.join("tmp")).unwrap().count(), 0);
    assert_eq!(runner.writes_outside_volumes(), Vec::<String>::new());
    assert!(runner.traces.borrow().len() >= 3, "the init containers were traced");
    assert!(!std::fs::read_to_string(&config).unwrap().contains(SECRET_KEY));
    assert!(!hook.log_text().contains(SECRET_KEY));
}
