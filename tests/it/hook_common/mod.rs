//! What the hook integration tests share: starting the real `hook` binary with test
//! certificates, a keep-alive HTTPS client on rustls, AdmissionReview fixtures shaped like the
//! API server's, and the independent patch check (python jsonpatch + kubernetes-validate).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

pub mod pod_runner;

use crate::support::pki::{Alg, Ca, Files};
use crate::support::{free_port, scrub, temp_dir, tools_bin, wait_for, Proc};

/// The annotation prefix without a VARIANT.
pub const PREFIX: &str = "litestream-hook.kaidotio.github.io";
pub const HOOK_IMAGE: &str = "registry.example/lifeboat:test";

/// The Python of the tools venv (jsonpatch, kubernetes-validate, sqlite3).
pub fn python() -> PathBuf {
    tools_bin().join("../venv/bin/python")
}

/// A running hook with its certificates and log.
pub struct Hook {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub ca_pem: String,
    /// Held so the hook's files are removed when this is dropped.
    pub _dir: tempfile::TempDir,
    pub log: PathBuf,
}

/// Test PKI plus a hook to start with it.
pub struct Setup {
    pub ca: Ca,
    pub dir: tempfile::TempDir,
    pub files: Files,
}

impl Setup {
    /// A CA and a leaf for `localhost`/`127.0.0.1` with `alg`, written as ca.crt/tls.crt/tls.key.
    pub fn new(alg: Alg) -> Setup {
        let ca = Ca::new("hook test CA");
        let dir = temp_dir("hook");
        let leaf = ca.leaf("hook", &["localhost", "127.0.0.1"], alg);
        let files = ca.write(&leaf, dir.path(), "tls");
        Setup { ca, dir, files }
    }
}

/// Starts the hook with `env` on top of the defaults, and waits until it serves.
pub fn start(setup: &Setup, env: &[(&str, &str)]) -> Hook {
    start_with(setup, env, None)
}

/// Like [`start`], optionally through a wrapper command (e.g. `sh -c 'ulimit -n 64; exec "$0"'`).
pub fn start_with(setup: &Setup, env: &[(&str, &str)], wrapper: Option<&[&str]>) -> Hook {
    let dir = temp_dir("hook-run");
    let port = free_port();
    let metrics_port = free_port();
    let log = dir.path().join("hook.log");
    let bin = env!("CARGO_BIN_EXE_hook");
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    scrub(&mut cmd);
    for var in ["VARIANT", "NATIVE_SIDECAR", "LOG_LEVEL", "HOOK_IMAGE", "GLIBC_TUNABLES"] {
        cmd.env_remove(var);
    }
    cmd.env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("TLS_CERT_FILE", &setup.files.cert)
        .env("TLS_KEY_FILE", &setup.files.key)
        .env("TLS_RELOAD_INTERVAL", "100ms")
        .env("HOOK_IMAGE", HOOK_IMAGE)
        .env("SOCKET_DIR", dir.path())
        .env("LOG_LEVEL", "debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let proc = Proc::spawn("hook", cmd);
    let hook = Hook {
        proc,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        metrics: format!("127.0.0.1:{metrics_port}").parse().unwrap(),
        ca_pem: setup.ca.cert_pem.clone(),
        _dir: dir,
        log,
    };
    wait_for("the hook to log \"serving\"", Duration::from_secs(30), || {
        hook.log_text().contains("\"msg\":\"serving\"").then_some(())
    });
    hook
}

impl Hook {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every log line, parsed; panics on a line that is not one JSON object.
    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
            .collect()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr, &self.ca_pem)
    }

    /// GET on the plain-HTTP metrics endpoint; returns (status, body).
    pub fn ops_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.metrics).expect("connect metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.ops_get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// A one-shot admission round trip on a fresh connection.
    pub fn review(&self, review: &Value) -> Value {
        let mut c = self.client();
        let r = c.post("/mutate?timeout=10s", "application/json", review.to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).expect("response is JSON")
    }
}

/// A TLS client connection speaking HTTP/1.1 with keep-alive.
pub struct Client {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A rustls client config trusting `ca_pem` only.
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in lifeboat::tls::certs_from_pem(ca_pem.as_bytes()).unwrap() {
        roots.add(cert).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(lifeboat::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl Client {
    pub fn connect(addr: SocketAddr, ca_pem: &str) -> Client {
        Client::try_connect(addr, &client_config(ca_pem)).expect("TLS connection")
    }

    /// Connects and completes the handshake.
    pub fn try_connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Result<Client, String> {
        Client::try_connect_within(addr, config, Duration::from_secs(30))
    }

    /// Like [`Client::try_connect`], giving up on any read (the handshake's included) after `wait`.
    pub fn try_connect_within(
        addr: SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        wait: Duration,
    ) -> Result<Client, String> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(wait)).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = "localhost".try_into().unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        Ok(Client { stream })
    }

    /// The DER of the certificate the server presented.
    pub fn peer_cert(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().expect("peer certificates")[0].to_vec()
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    pub fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        self.try_post(path, content_type, body).expect("HTTP exchange")
    }

    pub fn try_post(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<Reply, String> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.send(&request).map_err(|e| format!("send: {e}"))?;
        self.read_reply()
    }

    /// Reads one response (Content-Length framed).
    pub fn read_reply(&mut self) -> Result<Reply, String> {
        self.read_response(true)
    }

    /// Reads the answer to a HEAD request: status line and headers, no body.
    pub fn read_head_reply(&mut self) -> Result<Reply, String> {
        self.read_response(false)
    }

    fn read_response(&mut self, with_body: bool) -> Result<Reply, String> {
        let mut reader = BufReader::new(&mut self.stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("status line: {e}"))?;
        if line.is_empty() {
            return Err("connection closed before a response".into());
        }
        let status: u16 = line
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).map_err(|e| format!("header: {e}"))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .filter(|_| with_body)
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
        Ok(Reply { status, headers, body })
    }
}

/// A Pod as a ReplicaSet controller creates it: generateName, pod-template-hash label,
/// ownerReferences, managedFields, no name and no namespace.
pub fn deployment_pod(annotations: Value) -> Value {
    json!({
        "metadata": {
            "generateName": "web-7d9f8c6b5-",
            "creationTimestamp": null,
            "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5"},
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5",
                "uid": "0b7f7b5e-8d1c-4a55-9f7b-3c1d2e4f5a6b", "controller": true, "blockOwnerDeletion": true
            }],
            "managedFields": [{
                "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "time": "2026-11-24T06:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}}}}
            }]
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
            "containers": [{
                "name": "app", "image": "registry.example/web:1.2.3",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {"limits": {"memory": "128Mi"}},
                "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    })
}

/// An AdmissionReview as the API server sends it for `operation` on `object` in `namespace`.
pub fn review(uid: &str, namespace: &str, operation: &str, object: Value, dry_run: bool) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "5a1b", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// `{prefix/key: value}` for the given pairs.
pub fn annotations(pairs: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = pairs.iter().map(|(k, v)| (format!("{PREFIX}/{k}"), json!(v))).collect();
    Value::Object(map)
}

/// Applies the response's patch to `pod` with python jsonpatch and validates the result
/// strictly against the Kubernetes 1.33 Pod schema, then checks what the API server's
/// validation would also refuse (duplicate names, dangling volume references, duplicate
/// mount paths). Returns the patched Pod.
pub fn apply(pod: &Value, response: &Value) -> Value {
    let patch = response["response"]["patch"].as_str().expect("a patch");
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let input = json!({"pod": with_kind(pod), "patch": patch}).to_string();
    let mut child = Command::new(python())
        .arg(crate::support::root().join("tests/py/hook_patch.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "hook_patch.py failed");
    let result: Value = serde_json::from_slice(&out.stdout).expect("hook_patch.py output");
    if let Some(e) = result.get("error") {
        panic!("{e}");
    }
    let patched = result["pod"].clone();
    api_server_checks(&patched);
    patched
}

fn with_kind(pod: &Value) -> Value {
    let mut pod = pod.clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod
}

/// The parts of Pod validation a schema cannot express.
pub fn api_server_checks(pod: &Value) {
    let spec = &pod["spec"];
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let volumes: Vec<String> = list(&spec["volumes"])
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let mut unique = volumes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), volumes.len(), "duplicate volume names: {volumes:?}");
    let mut names = Vec::new();
    for c in list(&spec["initContainers"])
        .iter()
        .chain(list(&spec["containers"]).iter())
    {
        names.push(c["name"].as_str().unwrap().to_string());
        let mut paths = Vec::new();
        for m in list(&c["volumeMounts"]) {
            let v = m["name"].as_str().unwrap();
            assert!(volumes.iter().any(|x| x == v), "mount of unknown volume {v}");
            paths.push(m["mountPath"].as_str().unwrap().to_string());
        }
        let n = paths.len();
        paths.sort();
        paths.dedup();
        assert_eq!(n, paths.len(), "duplicate mountPath in {}", c["name"]);
    }
    for c in list(&spec["containers"]) {
        assert!(c.get("restartPolicy").is_none(), "restartPolicy on a regular container");
    }
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(n, names.len(), "duplicate container names");
}

/// The config the config-writer init container carries, parsed.
pub fn config_of(pod: &Value) -> Value {
    let init = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["args"][0] == "write-config")
        .expect("config writer");
    let env = init["env"].as_array().unwrap();
    let raw = env.iter().find(|e| e["name"] == "LIFEBOAT_LITESTREAM_CONFIG").unwrap()["value"]
        .as_str()
        .unwrap();
    // What the container sees, after the kubelet's expansion (no variables precede it).
    serde_json::from_str(&kube_expand(raw, &|_| None)).expect("config is JSON")
}

/// Runs a shell-free Python snippet with `args`.
pub fn run_python(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Kubernetes' variable expansion of container `command`/`args`/env values, as the kubelet does
/// it (k8s.io/kubernetes third_party/forked/golang/expansion): `$$` → `$`, `$(NAME)` → the
/// value of NAME when defined (else left as written), anything else unchanged.
pub fn kube_expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::new();
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(end) => {
                        let name = &rest[1..end];
                        out.push_str(&vars(name).unwrap_or_else(|| format!("$({name})")));
                        end + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    out.push('$');
                    0
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}
