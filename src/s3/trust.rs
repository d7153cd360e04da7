//! The TLS trust store of lifeboat's own S3 client, built the way Go (so rclone) builds its
//! system roots on Linux: `SSL_CERT_FILE` (else the first bundle of Go's list that exists)
//! plus every certificate file in `SSL_CERT_DIR` (colon-separated; else Go's directories).
//! rclone and s3sync then trust the same CAs; a private CA goes into `SSL_CERT_FILE`.

use std::path::{Path, PathBuf};

/// Go's `crypto/x509` bundle files, in its order (the first that exists is used).
const GO_CERT_FILES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// Go's certificate directories.
const GO_CERT_DIRS: [&str; 3] = ["/etc/ssl/certs", "/etc/pki/tls/certs", "/system/etc/security/cacerts"];
/// Bounds on what is read: files per directory and bytes per file.
const MAX_DIR_FILES: usize = 4096;
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The CA certificates both clients trust.
#[derive(Clone, Default)]
pub struct Trust {
    certs: Vec<ureq::tls::Certificate<'static>>,
}

impl Trust {
    /// Loads the roots. `SSL_CERT_FILE` must be readable when set (checked with the
    /// configuration); directory entries that are not certificates are skipped, as Go does.
    pub fn load() -> Trust {
        let mut certs = Vec::new();
        let file = std::env::var_os("SSL_CERT_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| GO_CERT_FILES.iter().map(PathBuf::from).find(|p| p.is_file()));
        if let Some(f) = file {
            certs.extend(read_pem(&f));
        }
        let dirs: Vec<PathBuf> = match std::env::var_os("SSL_CERT_DIR").filter(|v| !v.is_empty()) {
            Some(v) => std::env::split_paths(&v).collect(),
            None => GO_CERT_DIRS.iter().map(PathBuf::from).collect(),
        };
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten().take(MAX_DIR_FILES) {
                certs.extend(read_pem(&entry.path()));
            }
        }
        Trust { certs }
    }

    pub fn ureq_config(&self) -> ureq::tls::TlsConfig {
        ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&self.certs))
            .build()
    }
}

fn read_pem(path: &Path) -> Vec<ureq::tls::Certificate<'static>> {
    let ok = std::fs::metadata(path)
        .map(|m| m.is_file() && m.len() <= MAX_FILE_BYTES)
        .unwrap_or(false);
    if !ok {
        return Vec::new();
    }
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    crate::tls::certs_from_pem(&bytes)
        .map(|certs| {
            certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect()
        })
        .unwrap_or_default()
}
