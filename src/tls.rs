//! PEM certificates and private keys for rustls, with errors that name the file.
//!
//! Keys may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC), the three forms cert-manager and
//! openssl write. Error messages never include key material.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What went wrong loading a PEM file, and which file.
#[derive(Debug)]
pub struct PemError {
    pub path: PathBuf,
    pub what: String,
}

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for PemError {}

fn error(path: &Path, what: impl Into<String>) -> PemError {
    PemError {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Every certificate in a PEM file, in order; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = std::fs::read(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
    certs_from_pem(&bytes).map_err(|what| error(path, what))
}

/// The start of every ureq TLS configuration: ring as the crypto provider and no trusted
/// roots. ureq is built without a compiled-in root list, so the caller names the roots (a
/// kubeconfig's CA, [`crate::roots::system`]); one it forgets fails closed ("unknown issuer").
#[allow(clippy::disallowed_methods)] // the one place that may call TlsConfig::builder
pub fn ureq_tls() -> ureq::tls::TlsConfigBuilder {
    ureq::tls::TlsConfig::builder()
        .unversioned_rustls_crypto_provider(provider())
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[]))
}

/// ureq's trust roots: exactly the certificates in PEM text (at least one).
pub fn ureq_roots(ca_pem: &[u8]) -> Result<ureq::tls::RootCerts, String> {
    Ok(ureq_roots_of(&certs_from_pem(ca_pem)?))
}

/// ureq's trust roots: exactly these certificates.
pub fn ureq_roots_of(certs: &[CertificateDer<'_>]) -> ureq::tls::RootCerts {
    let certs: Vec<_> = certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    ureq::tls::RootCerts::new_with_certs(&certs)
}

/// A ureq client certificate from a PEM chain and a PEM private key (PKCS#8, RSA or EC).
/// The key is checked with [`key_from_pem`] first, whose errors never echo key material.
pub fn ureq_client_cert(cert_pem: &[u8], key_pem: &[u8]) -> Result<ureq::tls::ClientCert, String> {
    let chain: Vec<_> = certs_from_pem(cert_pem)?
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    key_from_pem(key_pem)?;
    let key = ureq::tls::PrivateKey::from_pem(key_pem)
        .map_err(|_| "no usable PRIVATE KEY block (PKCS#8, RSA or EC) found".to_string())?;
    Ok(ureq::tls::ClientCert::new_with_certs(&chain, key))
}

/// Every certificate in PEM text; at least one.
pub fn certs_from_pem(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "not valid PEM certificate data".to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = std::fs::read(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
    key_from_pem(&bytes).map_err(|what| error(path, what))
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in PEM text.
pub fn key_from_pem(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes)
        .map_err(|_| "no usable PRIVATE KEY block (PKCS#8, RSA or EC) found".to_string())
}

/// A root store holding every certificate in a CA bundle file.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, PemError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| error(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The process-wide crypto provider (ring), installed once.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_not_the_content() {
        let dir = std::env::temp_dir().join(format!("lifeboat-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("tls.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n").unwrap();
        let err = load_key(&key).unwrap_err().to_string();
        assert!(err.starts_with(&key.display().to_string()), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
        let missing = load_certs(&dir.join("nope.crt")).unwrap_err().to_string();
        assert!(
            missing.contains("nope.crt") && missing.contains("cannot read"),
            "{missing}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ureq_settings_from_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["etcd.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        assert!(ureq_roots(cert_pem.as_bytes()).is_ok());
        assert!(ureq_client_cert(cert_pem.as_bytes(), key_pem.as_bytes()).is_ok());
        assert_eq!(ureq_roots(b"").err().unwrap(), "no CERTIFICATE block found");
        assert!(ureq_client_cert(key_pem.as_bytes(), key_pem.as_bytes()).is_err());
        let broken = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n";
        let err = ureq_client_cert(cert_pem.as_bytes(), broken.as_bytes()).err().unwrap();
        assert!(err.contains("PRIVATE KEY") && !err.contains("c2VjcmV0"), "{err}");
    }
}
