//! TLS for the admission endpoint: rustls 0.23 with a certificate that follows its files.
//!
//! [`Certificates`] is the `ResolvesServerCert` every handshake asks. A watcher thread reads
//! TLS_CERT_FILE and TLS_KEY_FILE every `interval` (through any `..data` symlink, as
//! cert-manager and the kubelet swap it) and, once their content has changed and then stayed
//! the same for one more look (debounce: a writer may be half-way), loads the pair. New
//! handshakes then get the new certificate; open connections keep theirs. A pair that does
//! not load (unreadable, corrupt, key not matching the certificate) is logged as an error and
//! the previous certificate stays in service.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lifeboat::metrics::Registry;
use lifeboat::shutdown::Shutdown;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics;

/// The certificate currently served, swapped when the files change.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner())))
    }
}

/// Loads a certificate chain and its key, checking that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let certs = lifeboat::tls::load_certs(cert).map_err(|e| e.to_string())?;
    let der = lifeboat::tls::load_key(key).map_err(|e| e.to_string())?;
    CertifiedKey::from_der(certs, der, &lifeboat::tls::provider())
        .map_err(|e| format!("{} with {}: unusable pair: {e}", cert.display(), key.display()))
}

/// The rustls server configuration (HTTP/1.1 only) around `certs`.
pub fn server_config(certs: Arc<Certificates>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(lifeboat::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Loads the pair once (an error here stops start-up) and starts the watcher thread.
pub fn start(
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    metrics: Registry,
    shutdown: Shutdown,
) -> Result<Arc<Certificates>, String> {
    let first = load_pair(&cert, &key)?;
    let certs = Arc::new(Certificates {
        current: RwLock::new(Arc::new(first)),
    });
    let watched = Arc::clone(&certs);
    let mut seen = read_both(&cert, &key);
    std::thread::Builder::new()
        .name("tls-watch".into())
        .spawn(move || {
            let mut pending: Option<Snapshot> = None;
            while shutdown.wait_timeout(interval).is_none() {
                let now = read_both(&cert, &key);
                if now == seen {
                    pending = None;
                    continue;
                }
                if pending.as_ref() != Some(&now) {
                    // Changed since the last look: wait one more interval for it to settle.
                    pending = Some(now);
                    continue;
                }
                pending = None;
                seen = now;
                match load_pair(&cert, &key) {
                    Ok(pair) => {
                        *watched.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                        metrics.inc(&metrics::TLS_RELOADS, ["ok"]);
                        log::info!(cert:% = cert.display(); "TLS certificate reloaded");
                    }
                    Err(e) => {
                        metrics.inc(&metrics::TLS_RELOADS, ["error"]);
                        log::error!(error:% = e; "TLS certificate files changed but do not load; still serving the previous certificate");
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the TLS watcher: {e}"))?;
    Ok(certs)
}

/// The content of both files (or the read errors), compared to notice any change.
type Snapshot = (Result<Vec<u8>, String>, Result<Vec<u8>, String>);

fn read_both(cert: &Path, key: &Path) -> Snapshot {
    let read = |p: &Path| std::fs::read(p).map_err(|e| e.kind().to_string());
    (read(cert), read(key))
}
