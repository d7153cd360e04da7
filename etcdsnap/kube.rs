//! A small blocking client for the Kubernetes API over HTTPS (ureq + rustls).
//!
//! Credentials come from the pod's service account (token re-read on every request, since
//! projected tokens rotate; CA from the mounted `ca.crt`; `KUBERNETES_SERVICE_HOST/PORT`) or,
//! on a workstation, from the current context of `KUBECONFIG` (server, CA file or data,
//! bearer token, token file, or client certificate). Objects are k8s-openapi types sent as
//! JSON. Failures become [`KubeError`]s that keep the HTTP status and the API's `Status`
//! reason, and map to gRPC codes in [`KubeError::to_status`]. Tokens are never logged or
//! put into an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::status::{Code, Status};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How requests authenticate.
enum Auth {
    None,
    Token(String),
    TokenFile(PathBuf),
}

/// The HTTP methods etcdsnap sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// Attempts of one request at most (see [`retryable`]).
const ATTEMPTS: u32 = 4;
/// The longest wait between two attempts, whatever Retry-After asks for.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// Whether attempt `attempt` of a `method` request that got `status` (`None`: no answer)
/// is tried again, and after how long (200 ms, doubling). Like client-go: 429 (the server
/// did not process the request) for every method; 500/502/503/504 and transport failures
/// only for requests that are safe to repeat: GET, DELETE, and PUT, which carries a
/// resourceVersion, so a repeat of an update that went through fails with 409 instead of
/// applying twice. A POST that may have been applied is not repeated here: the caller sees
/// the error, and the CO's retry finds what the first one created.
fn retryable(method: Method, status: Option<u16>, attempt: u32) -> Option<Duration> {
    if attempt >= ATTEMPTS {
        return None;
    }
    let again = match status {
        Some(429) => true,
        Some(500 | 502 | 503 | 504) | None => method != Method::Post,
        Some(_) => false,
    };
    again.then(|| Duration::from_millis(200 << (attempt - 1)))
}

/// A connection to one API server.
pub struct Kube {
    agent: ureq::Agent,
    server: String,
    auth: Auth,
}

/// A failed API call: what we tried, the HTTP status (none for transport failures), the
/// `Status.reason` and the message.
#[derive(Debug, Clone)]
pub struct KubeError {
    pub op: String,
    pub status: Option<u16>,
    pub reason: String,
    pub message: String,
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(code) => write!(
                f,
                "{}: Kubernetes API answered {code} {}: {}",
                self.op, self.reason, self.message
            ),
            None => write!(f, "{}: Kubernetes API unreachable: {}", self.op, self.message),
        }
    }
}

impl std::error::Error for KubeError {}

impl KubeError {
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.status == Some(409) && self.reason != "AlreadyExists"
    }

    pub fn is_already_exists(&self) -> bool {
        self.status == Some(409) && self.reason == "AlreadyExists"
    }

    /// The gRPC status for this failure.
    pub fn to_status(&self) -> Status {
        let code = match self.status {
            None => Code::Unavailable,
            Some(400 | 422) => Code::Internal,
            Some(401) => Code::Unauthenticated,
            Some(403) => Code::PermissionDenied,
            Some(404) => Code::NotFound,
            Some(409) if self.reason == "AlreadyExists" => Code::AlreadyExists,
            Some(409 | 410) => Code::Aborted,
            Some(429) => Code::ResourceExhausted,
            Some(504) => Code::DeadlineExceeded,
            Some(500..=599) => Code::Unavailable,
            Some(_) => Code::Internal,
        };
        Status::new(code, self.to_string())
    }
}

impl From<KubeError> for Status {
    fn from(e: KubeError) -> Status {
        e.to_status()
    }
}

/// The path of a namespaced core/v1 collection or object.
pub fn core_path(namespace: &str, plural: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("/api/v1/namespaces/{namespace}/{plural}/{n}"),
        None => format!("/api/v1/namespaces/{namespace}/{plural}"),
    }
}

/// The path of a namespaced batch/v1 collection or object.
pub fn batch_path(namespace: &str, plural: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("/apis/batch/v1/namespaces/{namespace}/{plural}/{n}"),
        None => format!("/apis/batch/v1/namespaces/{namespace}/{plural}"),
    }
}

impl Kube {
    /// From `KUBECONFIG` when set, else the in-cluster service account.
    pub fn from_environment(timeout: Duration) -> Result<Kube, String> {
        if let Some(path) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            // Like kubectl, the first file of a list is the one with the current context.
            let first = std::env::split_paths(&path).next().unwrap_or_default();
            return Kube::from_kubeconfig(&first, timeout);
        }
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            return Kube::in_cluster(timeout);
        }
        Err("no Kubernetes credentials: set KUBECONFIG, or run in a pod with a service account".into())
    }

    /// In-cluster: `KUBERNETES_SERVICE_HOST/PORT`, the service account token and CA.
    pub fn in_cluster(timeout: Duration) -> Result<Kube, String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| "KUBERNETES_SERVICE_HOST is not set")?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        Kube::in_cluster_from(Path::new(SA_DIR), &host, &port, timeout)
    }

    /// In-cluster credentials from a service-account directory (`ca.crt`, `token`).
    fn in_cluster_from(dir: &Path, host: &str, port: &str, timeout: Duration) -> Result<Kube, String> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let ca_path = dir.join("ca.crt");
        let ca = std::fs::read(&ca_path).map_err(|e| format!("{}: cannot read: {e}", ca_path.display()))?;
        let token = dir.join("token");
        if !token.exists() {
            return Err(format!("{}: service account token missing", token.display()));
        }
        Kube::new(
            format!("https://{host}:{port}"),
            Some(&ca),
            None,
            Auth::TokenFile(token),
            timeout,
        )
    }

    /// From the current context of a kubeconfig file (YAML or JSON).
    pub fn from_kubeconfig(path: &Path, timeout: Duration) -> Result<Kube, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read kubeconfig: {e}", path.display()))?;
        let doc = parse_kubeconfig(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Kube::from_kubeconfig_doc(&doc, base, timeout).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// From an already parsed kubeconfig document (relative file paths resolve from `.`).
    #[cfg(test)]
    pub fn from_kubeconfig_value(doc: &Value, timeout: Duration) -> Result<Kube, String> {
        Kube::from_kubeconfig_doc(doc, Path::new("."), timeout)
    }

    fn from_kubeconfig_doc(doc: &Value, base: &Path, timeout: Duration) -> Result<Kube, String> {
        let cfg = select_context(doc, base)?;
        let auth = match (cfg.token, cfg.token_file) {
            (Some(t), _) => Auth::Token(t),
            (None, Some(f)) => Auth::TokenFile(f),
            (None, None) => Auth::None,
        };
        Kube::new(cfg.server, cfg.ca.as_deref(), cfg.client.as_ref(), auth, timeout)
    }

    fn new(
        server: String,
        ca_pem: Option<&[u8]>,
        client: Option<&(Vec<u8>, Vec<u8>)>,
        auth: Auth,
        timeout: Duration,
    ) -> Result<Kube, String> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca_pem {
            tls = tls.root_certs(lifeboat::tls::ureq_roots(ca).map_err(|e| format!("API server CA: {e}"))?);
        }
        if let Some((cert, key)) = client {
            tls = tls.client_cert(Some(
                client_cert(cert, key).map_err(|e| format!("client certificate: {e}"))?,
            ));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .user_agent(concat!("etcdsnap/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .new_agent();
        Ok(Kube {
            agent,
            server: server.trim_end_matches('/').to_string(),
            auth,
        })
    }

    /// Test-only: a client for the plain-HTTP in-memory API on 127.0.0.1 (`fake_api`).
    #[cfg(test)]
    pub(crate) fn plain_http_for_tests(server: &str) -> Kube {
        Kube::new(server.to_string(), None, None, Auth::None, Duration::from_secs(5)).expect("a client")
    }

    /// The API server's base URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn bearer(&self) -> Result<Option<String>, String> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Token(t) => Ok(Some(t.clone())),
            Auth::TokenFile(p) => std::fs::read_to_string(p)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|e| format!("{}: cannot read token: {e}", p.display())),
        }
    }

    /// One request, retried within bounds (see [`retryable`]); returns the status and body
    /// of the last HTTP answer.
    fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
        op: &str,
    ) -> Result<(u16, Vec<u8>), KubeError> {
        let mut attempt = 1;
        loop {
            let outcome = self.call_once(method, path, query, body.as_ref(), op);
            let wait = match &outcome {
                Ok((status, _, retry_after)) => retryable(method, Some(*status), attempt).map(|backoff| {
                    // The server's Retry-After wins over our backoff, within MAX_RETRY_WAIT.
                    retry_after.map_or(backoff, |secs| Duration::from_secs(secs).min(MAX_RETRY_WAIT))
                }),
                Err(_) => retryable(method, None, attempt),
            };
            match (wait, outcome) {
                (Some(wait), outcome) => {
                    let why = match &outcome {
                        Ok((status, _, _)) => format!("answered {status}"),
                        Err(e) => e.message.clone(),
                    };
                    log::warn!(op = op, attempt = attempt, wait_ms = wait.as_millis() as u64, error = why.as_str();
                        "Kubernetes API request failed; retrying");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                (None, outcome) => return outcome.map(|(status, bytes, _)| (status, bytes)),
            }
        }
    }

    /// One HTTP exchange: status, body and the Retry-After seconds, if any.
    fn call_once(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&(&str, Vec<u8>)>,
        op: &str,
    ) -> Result<(u16, Vec<u8>, Option<u64>), KubeError> {
        let transport = |message: String| KubeError {
            op: op.to_string(),
            status: None,
            reason: String::new(),
            message,
        };
        let url = format!("{}{path}", self.server);
        let bearer = self.bearer().map_err(transport)?.map(|t| format!("Bearer {t}"));
        let result = match method {
            Method::Get | Method::Delete => {
                let mut req = if method == Method::Get {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                for (k, v) in query {
                    req = req.query(*k, *v);
                }
                if let Some(b) = &bearer {
                    req = req.header("Authorization", b);
                }
                req.header("Accept", "application/json").call()
            }
            Method::Post | Method::Put => {
                let mut req = if method == Method::Post {
                    self.agent.post(&url)
                } else {
                    self.agent.put(&url)
                };
                for (k, v) in query {
                    req = req.query(*k, *v);
                }
                if let Some(b) = &bearer {
                    req = req.header("Authorization", b);
                }
                let (content_type, bytes) = body.map_or(("application/json", &b"{}"[..]), |(t, b)| (*t, &b[..]));
                req.header("Accept", "application/json")
                    .content_type(content_type)
                    .send(bytes)
            }
        };
        let mut response = result.map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| transport(format!("reading the answer: {e}")))?;
        Ok((status, bytes, retry_after))
    }

    fn check(&self, op: &str, status: u16, bytes: &[u8]) -> Result<(), KubeError> {
        if (200..300).contains(&status) {
            return Ok(());
        }
        let (reason, message) = match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => (
                v.get("reason").and_then(Value::as_str).unwrap_or("").to_string(),
                v.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
            ),
            Err(_) => (
                String::new(),
                crate::status::truncate(&String::from_utf8_lossy(bytes), 300),
            ),
        };
        Err(KubeError {
            op: op.to_string(),
            status: Some(status),
            reason,
            message,
        })
    }

    fn decode<T: DeserializeOwned>(&self, op: &str, bytes: &[u8]) -> Result<T, KubeError> {
        serde_json::from_slice(bytes).map_err(|e| KubeError {
            op: op.to_string(),
            status: None,
            reason: "Decode".into(),
            message: format!("unexpected answer: {e}"),
        })
    }

    /// GET one object; `None` when it does not exist.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, KubeError> {
        let op = format!("GET {path}");
        let (status, bytes) = self.call(Method::Get, path, &[], None, &op)?;
        if status == 404 {
            return Ok(None);
        }
        self.check(&op, status, &bytes)?;
        self.decode(&op, &bytes).map(Some)
    }

    /// GET a text sub-resource (pod logs); `None` when it does not exist.
    pub fn get_text(&self, path: &str, query: &[(&str, &str)]) -> Result<Option<String>, KubeError> {
        let op = format!("GET {path}");
        let (status, bytes) = self.call(Method::Get, path, query, None, &op)?;
        if status == 404 {
            return Ok(None);
        }
        self.check(&op, status, &bytes)?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// LIST a collection with a label selector (all pages).
    pub fn list<T: DeserializeOwned>(&self, path: &str, label_selector: &str) -> Result<Vec<T>, KubeError> {
        let op = format!("LIST {path}?labelSelector={label_selector}");
        let mut items = Vec::new();
        let mut cont = String::new();
        // Bounded: 100 pages of 500 is far beyond what etcdsnap ever lists.
        for _ in 0..100 {
            let mut query = vec![("labelSelector", label_selector), ("limit", "500")];
            if !cont.is_empty() {
                query.push(("continue", cont.as_str()));
            }
            let (status, bytes) = self.call(Method::Get, path, &query, None, &op)?;
            self.check(&op, status, &bytes)?;
            let page: Value = self.decode(&op, &bytes)?;
            if let Some(list) = page.get("items").and_then(Value::as_array) {
                for item in list {
                    items.push(serde_json::from_value(item.clone()).map_err(|e| KubeError {
                        op: op.clone(),
                        status: None,
                        reason: "Decode".into(),
                        message: format!("unexpected item: {e}"),
                    })?);
                }
            }
            cont = page
                .pointer("/metadata/continue")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if cont.is_empty() {
                return Ok(items);
            }
        }
        Err(KubeError {
            op,
            status: None,
            reason: "TooManyPages".into(),
            message: "more than 100 pages".into(),
        })
    }

    /// POST a new object; returns what the server stored.
    pub fn create<T: Serialize + DeserializeOwned>(&self, path: &str, object: &T) -> Result<T, KubeError> {
        self.send_object(Method::Post, path, object)
    }

    /// PUT (replace) an object; the server refuses with 409 when its resourceVersion is stale.
    pub fn replace<T: Serialize + DeserializeOwned>(&self, path: &str, object: &T) -> Result<T, KubeError> {
        self.send_object(Method::Put, path, object)
    }

    /// Sends `object` as JSON with `method` and decodes what the server stored.
    fn send_object<T: Serialize + DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        object: &T,
    ) -> Result<T, KubeError> {
        let op = format!("{} {path}", method.name());
        let body = serde_json::to_vec(object).map_err(|e| KubeError {
            op: op.clone(),
            status: None,
            reason: "Encode".into(),
            message: e.to_string(),
        })?;
        let (status, bytes) = self.call(method, path, &[], Some(("application/json", body)), &op)?;
        self.check(&op, status, &bytes)?;
        self.decode(&op, &bytes)
    }

    /// DELETE an object with background propagation (dependents are garbage-collected).
    /// Returns `false` when it was already gone.
    pub fn delete(&self, path: &str) -> Result<bool, KubeError> {
        let op = format!("DELETE {path}");
        let (status, bytes) = self.call(Method::Delete, path, &[("propagationPolicy", "Background")], None, &op)?;
        if status == 404 {
            return Ok(false);
        }
        self.check(&op, status, &bytes)?;
        Ok(true)
    }

    /// Whether the API server answers (`GET /readyz`).
    pub fn ready(&self) -> Result<(), String> {
        // One attempt: readiness reports the API server as it is now.
        let (status, body, _) = self
            .call_once(Method::Get, "/readyz", &[], None, "GET /readyz")
            .map_err(|e| e.to_string())?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!(
                "GET /readyz answered {status}: {}",
                crate::status::truncate(String::from_utf8_lossy(&body).trim(), 200)
            ))
        }
    }
}

/// A ureq client certificate from PEM chain and key (any of PKCS#8, PKCS#1, SEC1).
pub fn client_cert(cert_pem: &[u8], key_pem: &[u8]) -> Result<ureq::tls::ClientCert, String> {
    lifeboat::tls::ureq_client_cert(cert_pem, key_pem)
}

/// Decodes standard base64 (with padding), as used in kubeconfig `*-data` fields.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    lifeboat::base64::decode(text)
}

/// What the current kubeconfig context says.
#[derive(Debug)]
struct ContextConfig {
    server: String,
    ca: Option<Vec<u8>>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

fn named<'a>(doc: &'a Value, list: &str, name: &str, field: &str) -> Result<&'a Value, String> {
    doc.get(list)
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
        })
        .and_then(|i| i.get(field))
        .ok_or_else(|| format!("{list}: no entry named {name:?}"))
}

fn data_or_file(obj: &Value, data_key: &str, file_key: &str, base: &Path) -> Result<Option<Vec<u8>>, String> {
    if let Some(d) = obj.get(data_key).and_then(Value::as_str) {
        return base64_decode(d).map(Some).map_err(|e| format!("{data_key}: {e}"));
    }
    if let Some(f) = obj.get(file_key).and_then(Value::as_str) {
        let p = base.join(f);
        return std::fs::read(&p)
            .map(Some)
            .map_err(|e| format!("{file_key} {}: cannot read: {e}", p.display()));
    }
    Ok(None)
}

fn select_context(doc: &Value, base: &Path) -> Result<ContextConfig, String> {
    let current = doc
        .get("current-context")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("no current-context")?;
    let context = named(doc, "contexts", current, "context")?;
    let cluster_name = context
        .get("cluster")
        .and_then(Value::as_str)
        .ok_or("context has no cluster")?;
    let cluster = named(doc, "clusters", cluster_name, "cluster")?;
    let server = cluster
        .get("server")
        .and_then(Value::as_str)
        .ok_or("cluster has no server")?
        .to_string();
    if !server.starts_with("https://") {
        return Err(format!("cluster server {server:?} is not an https:// URL"));
    }
    let ca = data_or_file(cluster, "certificate-authority-data", "certificate-authority", base)?;
    let (mut token, mut token_file, mut client) = (None, None, None);
    if let Some(user_name) = context.get("user").and_then(Value::as_str) {
        let user = named(doc, "users", user_name, "user")?;
        token = user.get("token").and_then(Value::as_str).map(str::to_string);
        token_file = user.get("tokenFile").and_then(Value::as_str).map(|f| base.join(f));
        let cert = data_or_file(user, "client-certificate-data", "client-certificate", base)?;
        let key = data_or_file(user, "client-key-data", "client-key", base)?;
        if let (Some(c), Some(k)) = (cert, key) {
            client = Some((c, k));
        }
    }
    Ok(ContextConfig {
        server,
        ca,
        token,
        token_file,
        client,
    })
}

/// Parses a kubeconfig: JSON, or the block-style YAML subset kubectl and PyYAML write
/// (mappings, `- ` sequences, plain or quoted scalars, `{}`/`[]`, comments). Errors name
/// the line number only: a kubeconfig line may hold a token.
pub fn parse_kubeconfig(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text)
            .map_err(|e| format!("invalid JSON kubeconfig at line {} column {}", e.line(), e.column()));
    }
    let mut lines: Vec<Line> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_end();
        let content = trimmed.trim_start();
        if content.is_empty() || content.starts_with('#') || content == "---" {
            continue;
        }
        if raw.trim_start_matches(' ').starts_with('\t') {
            return Err(format!("line {}: tabs are not allowed for YAML indentation", n + 1));
        }
        lines.push((trimmed.len() - content.len(), content.to_string(), n + 1));
    }
    let mut i = 0;
    if lines.is_empty() {
        return Err("empty kubeconfig".into());
    }
    let indent = lines[0].0;
    let value = yaml_block(&mut lines, &mut i, indent)?;
    if i != lines.len() {
        return Err(format!("line {}: unexpected indentation", lines[i].2));
    }
    Ok(value)
}

fn is_seq_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

/// One significant line: indentation, content, 1-based line number.
type Line = (usize, String, usize);

fn yaml_block(lines: &mut Vec<Line>, i: &mut usize, indent: usize) -> Result<Value, String> {
    if is_seq_item(&lines[*i].1) {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].0 == indent && is_seq_item(&lines[*i].1) {
            let rest = lines[*i].1[1..].to_string();
            let inner = rest.trim_start();
            if inner.is_empty() {
                *i += 1;
                if *i < lines.len() && lines[*i].0 > indent {
                    let child = lines[*i].0;
                    items.push(yaml_block(lines, i, child)?);
                } else {
                    items.push(Value::Null);
                }
            } else if split_key(inner).is_some() {
                // "- key: value" starts a mapping at the column of "key".
                let col = indent + 1 + (rest.len() - inner.len());
                lines[*i] = (col, inner.to_string(), lines[*i].2);
                items.push(yaml_block(lines, i, col)?);
            } else {
                items.push(yaml_scalar(inner).map_err(|e| format!("line {}: {e}", lines[*i].2))?);
                *i += 1;
            }
        }
        return Ok(Value::Array(items));
    }
    let mut map = serde_json::Map::new();
    while *i < lines.len() && lines[*i].0 == indent && !is_seq_item(&lines[*i].1) {
        let (line, number) = (lines[*i].1.clone(), lines[*i].2);
        let (key, rest) = split_key(&line).ok_or_else(|| format!("line {number}: expected `key: value`"))?;
        *i += 1;
        let value = if rest.is_empty() {
            if *i < lines.len() && lines[*i].0 > indent {
                let child = lines[*i].0;
                yaml_block(lines, i, child)?
            } else if *i < lines.len() && lines[*i].0 == indent && is_seq_item(&lines[*i].1) {
                yaml_block(lines, i, indent)?
            } else {
                Value::Null
            }
        } else {
            yaml_scalar(rest).map_err(|e| format!("line {number}: {e}"))?
        };
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

/// Splits `key: rest` (key plain or quoted); `None` when the line is not a mapping entry.
fn split_key(line: &str) -> Option<(String, &str)> {
    if let Some(q) = line.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = line[1..].find(q)? + 1;
        let after = line[end + 1..].strip_prefix(':')?;
        if !(after.is_empty() || after.starts_with(' ')) {
            return None;
        }
        return Some((line[1..end].to_string(), after.trim()));
    }
    let pos = line.find(": ").or_else(|| line.strip_suffix(':').map(|s| s.len()))?;
    Some((line[..pos].trim().to_string(), line[pos + 1..].trim()))
}

fn yaml_scalar(text: &str) -> Result<Value, String> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or("unterminated quoted string")?;
        return serde_json::from_str(&format!("\"{inner}\"")).map_err(|_| "invalid escape in a quoted string".into());
    }
    if let Some(inner) = t.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or("unterminated quoted string")?;
        return Ok(Value::String(inner.replace("''", "'")));
    }
    let plain = match t.find(" #") {
        Some(p) => t[..p].trim_end(),
        None => t,
    };
    Ok(match plain {
        "{}" => Value::Object(Default::default()),
        "[]" => Value::Array(vec![]),
        "null" | "~" => Value::Null,
        s => Value::String(s.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECTL_STYLE: &str = r#"apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: aGVsbG8=
    server: https://127.0.0.1:6443
  name: kind
contexts:
- context:
    cluster: kind
    user: admin   # a comment
  name: ctx
current-context: ctx
kind: Config
preferences: {}
users:
- name: admin
  user:
    token: "s3cr3t"
"#;

    const INDENTED: &str = "current-context: 'ctx'\nclusters:\n  - name: kind\n    cluster:\n      server: https://h:1\ncontexts:\n  - name: ctx\n    context:\n      cluster: kind\n";

    #[test]
    fn reads_kubectl_and_pyyaml_style() {
        let doc = parse_kubeconfig(KUBECTL_STYLE).unwrap();
        let cfg = select_context(&doc, Path::new("/")).unwrap();
        assert_eq!(cfg.server, "https://127.0.0.1:6443");
        assert_eq!(cfg.ca.as_deref(), Some(&b"hello"[..]));
        assert_eq!(cfg.token.as_deref(), Some("s3cr3t"));
        assert!(doc["preferences"].is_object());

        let doc = parse_kubeconfig(INDENTED).unwrap();
        let cfg = select_context(&doc, Path::new("/")).unwrap();
        assert_eq!(cfg.server, "https://h:1");
        assert!(cfg.token.is_none() && cfg.ca.is_none());

        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(parse_kubeconfig(&json).unwrap(), doc);
    }

    #[test]
    fn kubeconfig_errors_say_what_is_missing() {
        let doc = parse_kubeconfig("current-context: nope\ncontexts: []\n").unwrap();
        let err = select_context(&doc, Path::new("/")).unwrap_err();
        assert!(err.contains("no entry named \"nope\""), "{err}");
        let doc = parse_kubeconfig(&INDENTED.replace("https://h:1", "http://h:1")).unwrap();
        assert!(select_context(&doc, Path::new("/"))
            .unwrap_err()
            .contains("not an https://"));
        assert!(parse_kubeconfig("a: b\n  c: d\n").is_err());
        // Errors name the line, never its content (it may be a token).
        let err = parse_kubeconfig("users:\n- name: u\n  user:\n    token: \"s3cr3t\n").unwrap_err();
        assert_eq!(err, "line 4: unterminated quoted string");
        let err = parse_kubeconfig("a: b\ns3cr3t-token-line\n").unwrap_err();
        assert!(err.starts_with("line 2") && !err.contains("s3cr3t"), "{err}");
        let err = parse_kubeconfig("{\"token\": \"s3cr3t").unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn api_errors_map_to_grpc_codes() {
        let e = |status, reason: &str| KubeError {
            op: "POST /x".into(),
            status,
            reason: reason.into(),
            message: "m".into(),
        };
        assert_eq!(e(Some(404), "NotFound").to_status().code, Code::NotFound);
        assert_eq!(e(Some(409), "AlreadyExists").to_status().code, Code::AlreadyExists);
        assert_eq!(e(Some(409), "Conflict").to_status().code, Code::Aborted);
        assert!(e(Some(409), "Conflict").is_conflict());
        assert_eq!(e(Some(403), "Forbidden").to_status().code, Code::PermissionDenied);
        assert_eq!(e(Some(422), "Invalid").to_status().code, Code::Internal);
        assert_eq!(e(Some(503), "").to_status().code, Code::Unavailable);
        assert_eq!(e(None, "").to_status().code, Code::Unavailable);
        let text = e(Some(403), "Forbidden").to_string();
        assert!(text.contains("POST /x") && text.contains("403 Forbidden"), "{text}");
    }

    #[test]
    fn in_cluster_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let err = Kube::in_cluster_from(dir.path(), "10.0.0.1", "443", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.contains("ca.crt: cannot read"), "{err}");
        let ca = rcgen::generate_simple_self_signed(vec!["kubernetes".to_string()]).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
        let err = Kube::in_cluster_from(dir.path(), "10.0.0.1", "443", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.contains("service account token missing"), "{err}");
        std::fs::write(dir.path().join("token"), "t0\n").unwrap();
        let kube = Kube::in_cluster_from(dir.path(), "fd00::1", "6443", Duration::from_secs(1)).unwrap();
        assert_eq!(kube.server(), "https://[fd00::1]:6443");
        assert_eq!(kube.bearer().unwrap().as_deref(), Some("t0"));
        // Rotated on disk: the next request uses the new token.
        std::fs::write(dir.path().join("token"), "t1").unwrap();
        assert_eq!(kube.bearer().unwrap().as_deref(), Some("t1"));
    }

    #[test]
    fn retries_are_bounded_and_only_where_safe() {
        use Method::*;
        // (method, status, attempt) -> wait before the next attempt, or none.
        let ms = Duration::from_millis;
        let table = [
            (Get, Some(500), 1, Some(ms(200))),
            (Get, Some(503), 2, Some(ms(400))),
            (Get, None, 3, Some(ms(800))),
            (Get, Some(503), ATTEMPTS, None),
            (Get, Some(404), 1, None),
            (Get, Some(403), 1, None),
            (Put, Some(500), 1, Some(ms(200))),
            (Delete, Some(502), 1, Some(ms(200))),
            (Post, Some(429), 1, Some(ms(200))),
            (Post, Some(500), 1, None),
            (Post, None, 1, None),
            (Put, Some(409), 1, None),
        ];
        for (method, status, attempt, want) in table {
            assert_eq!(
                retryable(method, status, attempt),
                want,
                "{method:?} {status:?} {attempt}"
            );
        }
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert!(base64_decode("not base64!").is_err());
    }
}
