//! The process kubelet of the hook's round trips: a patched Pod's containers run as local
//! processes in Pod order, each in its own mount namespace built by
//! `tests/py/process_container.py` (the Pod's emptyDir and Secret volumes bind-mounted at the
//! container's `volumeMounts`, `readOnlyRootFilesystem` a read-only root), with env from the
//! Secret and `$(VAR)` expanded as the kubelet does. It does not pull images (an injected
//! container's image names which local program runs), enforce users, resources or probes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::{kube_expand, HOOK_IMAGE};
use crate::support::{self, tool, Proc};

/// Runs a patched Pod's containers as local processes, one mount namespace each.
pub struct PodRunner {
    pub pod: Value,
    /// Volume name → folder on this machine (the node's emptyDir, or the Secret's files).
    pub volumes: HashMap<String, PathBuf>,
    /// The Pod's Secret volumes.
    secret_volumes: Vec<Value>,
    /// (secret name, key) → value.
    secrets: HashMap<(String, String), String>,
    /// Where container roots and specs go.
    pub dir: PathBuf,
    /// Containers started so far (names their roots).
    runs: std::cell::Cell<usize>,
}

impl PodRunner {
    /// The Pod's runner; `secret` holds the (key, value) pairs of the Secret named `secret_name`.
    pub fn new(pod: Value, root: &Path, secret_name: &str, secret: &[(&str, &str)]) -> PodRunner {
        let mut volumes = HashMap::new();
        let mut secret_volumes = Vec::new();
        for v in pod["spec"]["volumes"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap().to_string();
            if v.get("emptyDir").is_some() || v.get("secret").is_some() {
                volumes.insert(name.clone(), root.join(format!("volume-{name}")));
            }
            if v.get("secret").is_some() {
                secret_volumes.push(v.clone());
            }
        }
        let secrets = secret
            .iter()
            .map(|(k, v)| ((secret_name.to_string(), k.to_string()), v.to_string()))
            .collect();
        let dir = root.join("containers");
        std::fs::create_dir_all(&dir).unwrap();
        PodRunner {
            pod,
            volumes,
            secret_volumes,
            secrets,
            dir,
            runs: Default::default(),
        }
    }

    /// Fresh, empty emptyDir volumes (a new Pod on a new node); Secret volumes hold their
    /// items as the kubelet writes them (a missing key fails, as the kubelet refuses the Pod).
    pub fn empty_volumes(&self) {
        for dir in self.volumes.values() {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).unwrap();
        }
        for v in &self.secret_volumes {
            let s = &v["secret"];
            let dir = &self.volumes[v["name"].as_str().unwrap()];
            let secret_name = s["secretName"].as_str().unwrap().to_string();
            for item in s["items"].as_array().unwrap() {
                let key = (secret_name.clone(), item["key"].as_str().unwrap().to_string());
                let value = self.secrets.get(&key).unwrap_or_else(|| panic!("no secret {key:?}"));
                let file = dir.join(item["path"].as_str().unwrap());
                std::fs::write(&file, value).unwrap();
                let mode = item["mode"].as_u64().or(s["defaultMode"].as_u64()).unwrap_or(0o644);
                std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode as u32)).unwrap();
            }
        }
    }

    /// The process for container `c` running `program` with `argv`: the container helper in a
    /// new mount namespace, given the container's mounts, env (secretKeyRef from the fake
    /// Secret, `$(VAR)` expanded as the kubelet does) and read-only root.
    pub fn container(&self, c: &Value, program: &Path, argv: Vec<String>, env: Vec<(String, String)>) -> Command {
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let Some(volume) = self.volumes.get(m["name"].as_str().unwrap()) else {
                continue; // the service-account token: not needed here
            };
            let source = match m["subPath"].as_str() {
                Some(sub) => volume.join(sub),
                None => volume.clone(),
            };
            std::fs::create_dir_all(&source).unwrap(); // as the kubelet does for a subPath
            mounts.push(json!({"source": source, "target": m["mountPath"], "readOnly": m["readOnly"] == true}));
        }
        let n = self.runs.get();
        self.runs.set(n + 1);
        let name = c["name"].as_str().unwrap();
        let program = program.canonicalize().unwrap();
        let mut env_map: serde_json::Map<String, Value> = serde_json::Map::new();
        env_map.insert("PATH".into(), json!("/usr/local/bin:/usr/bin:/bin"));
        env_map.insert("HOME".into(), json!("/root"));
        for (k, v) in env {
            env_map.insert(k, json!(v));
        }
        let spec = json!({
            "root": self.dir.join(format!("{n}-{name}")),
            "host_paths": [program.parent().unwrap()],
            "mounts": mounts,
            "workdir": "/",
            "readOnlyRoot": c["securityContext"]["readOnlyRootFilesystem"] == true,
            "program": program,
            "argv": argv,
            "env": env_map,
        });
        let spec_file = self.dir.join(format!("{n}-{name}.json"));
        std::fs::write(&spec_file, spec.to_string()).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.env_clear()
            .args(["--mount", "--propagation", "private", "/usr/bin/python3", "-I"])
            .arg(support::root().join("tests/py/process_container.py"))
            .arg(&spec_file)
            .current_dir("/");
        cmd
    }

    /// An injected container: image → program, args and env as the kubelet passes them.
    pub fn command(&self, c: &Value) -> Command {
        let image = c["image"].as_str().unwrap();
        let (program, name): (PathBuf, &str) = if image == HOOK_IMAGE {
            (PathBuf::from(env!("CARGO_BIN_EXE_hook")), "hook")
        } else {
            assert!(
                image.starts_with("litestream/litestream:0.5."),
                "unexpected image {image}"
            );
            (tool("litestream"), "litestream")
        };
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
        let mut argv = vec![name.to_string()];
        for arg in c["args"].as_array().unwrap() {
            argv.push(kube_expand(arg.as_str().unwrap(), &|n| {
                env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
            }));
        }
        self.container(c, &program, argv, env)
    }

    /// The app container (the Pod's first) running python `code` with `args`, to its end; its stdout.
    pub fn app(&self, code: &str, args: &[&str]) -> String {
        let c = &self.pod["spec"]["containers"][0];
        let mut argv = vec!["python3".to_string(), "-c".into(), code.into()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let out = self
            .container(c, Path::new("/usr/bin/python3"), argv, Vec::new())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "app failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The sidecar's log file (appended).
    pub fn log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("sidecar.log"))
            .unwrap()
    }

    /// Runs the init containers in order; returns the sidecar (native or not), started.
    pub fn start(&self) -> Option<Proc> {
        self.try_start()
            .unwrap_or_else(|(name, stderr)| panic!("init container {name} failed: {stderr}"))
    }

    /// Whether `text` holds a Secret value (or one line of a multi-line one, such as a key).
    pub fn leaks(&self, text: &str) -> bool {
        self.secrets
            .values()
            .flat_map(|v| std::iter::once(v.as_str()).chain(v.lines().filter(|l| l.len() >= 16)))
            .any(|v| text.contains(v))
    }

    /// As [`PodRunner::start`], or the first init container that failed, with its stderr (the
    /// Pod stays in Init, as the kubelet would leave it).
    pub fn try_start(&self) -> Result<Option<Proc>, (String, String)> {
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
            assert!(!self.leaks(&stderr), "{name} logged the secret");
            if !out.status.success() {
                return Err((name.to_string(), stderr.into_owned()));
            }
        }
        for c in self.pod["spec"]["containers"].as_array().unwrap() {
            if c["name"].as_str().unwrap().contains("litestream-hook") {
                let mut cmd = self.command(c);
                cmd.stdout(self.log()).stderr(self.log());
                sidecar = Some(Proc::spawn("replicate", cmd));
            }
        }
        Ok(sidecar)
    }
}

pub const APP: &str = r#"
import os, sqlite3, sys
db, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(os.path.dirname(db), exist_ok=True)
c = sqlite3.connect(db)
c.execute("pragma journal_mode=wal")
c.execute("create table if not exists t (id integer primary key, v text)")
c.executemany("insert into t (id, v) values (?, ?)", [(i, "row %d" % i) for i in range(start, start + n)])
c.commit()
print(c.execute("select count(*), coalesce(sum(id), 0) from t").fetchone())
"#;

pub const COUNT: &str = r#"
import sqlite3, sys
c = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
print(c.execute("select count(*), coalesce(sum(id), 0) from t").fetchone())
"#;
