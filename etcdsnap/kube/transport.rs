//! The connection to one API server: credentials (in-cluster service account, or a kubeconfig
//! read by [`super::kubeconfig`]), the TLS agent, and one request with its bounded retries
//! ([`retryable`]). Tokens are never logged or put into an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{kubeconfig, KubeError};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How requests authenticate.
enum Auth {
    None,
    Token(String),
    TokenFile(PathBuf),
}

/// The HTTP methods etcdsnap sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub(super) fn name(self) -> &'static str {
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
        let cfg = kubeconfig::read(path)?;
        Kube::from_context(cfg, timeout).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// From an already parsed kubeconfig document (relative file paths resolve from `.`).
    #[cfg(test)]
    pub fn from_kubeconfig_value(doc: &serde_json::Value, timeout: Duration) -> Result<Kube, String> {
        Kube::from_context(kubeconfig::select_context(doc, Path::new("."))?, timeout)
    }

    fn from_context(cfg: kubeconfig::ContextConfig, timeout: Duration) -> Result<Kube, String> {
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
        let mut tls = lifeboat::tls::ureq_tls();
        if let Some(ca) = ca_pem {
            tls = tls.root_certs(lifeboat::tls::ureq_roots(ca).map_err(|e| format!("API server CA: {e}"))?);
        } else if server.to_ascii_lowercase().starts_with("https://") {
            // No CA named: the system's roots, as kubectl (Go's crypto/x509) would use.
            let roots = lifeboat::roots::ureq_system()
                .map_err(|e| format!("API server CA: the kubeconfig names none, and {e}"))?;
            tls = tls.root_certs(roots);
        }
        if let Some((cert, key)) = client {
            tls = tls.client_cert(Some(
                lifeboat::tls::ureq_client_cert(cert, key).map_err(|e| format!("client certificate: {e}"))?,
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
    pub(super) fn call(
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
    pub(super) fn call_once(
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

    pub(super) fn check(&self, op: &str, status: u16, bytes: &[u8]) -> Result<(), KubeError> {
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

    pub(super) fn decode<T: DeserializeOwned>(&self, op: &str, bytes: &[u8]) -> Result<T, KubeError> {
        serde_json::from_slice(bytes).map_err(|e| KubeError {
            op: op.to_string(),
            status: None,
            reason: "Decode".into(),
            message: format!("unexpected answer: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
