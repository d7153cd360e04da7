//! The system's trusted CA certificates, found the way Go's `crypto/x509` finds them on Linux
//! (`root_linux.go`, `root_unix.go`), so lifeboat trusts what rclone, kubectl and the
//! Pushgateway's own clients trust on the same machine. No roots are compiled in.
//!
//! - The bundle file: `SSL_CERT_FILE` when set, else the first of Go's files
//!   ([`GO_CERT_FILES`]) that can be read (Go stops at the first one read).
//! - Plus every file in each directory of `SSL_CERT_DIR` (colon-separated) when set, else in
//!   Go's directories ([`GO_CERT_DIRS`]); files that are not PEM certificates are skipped.
//!
//! Reads are bounded (bytes per file, files per directory, bytes in all). When nothing yields
//! a certificate, the error names every place tried and why each gave none.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

/// Go's bundle files, in its order.
pub const GO_CERT_FILES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Gentoo, distroless
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL 6
    "/etc/ssl/ca-bundle.pem",             // OpenSUSE
    "/etc/pki/tls/cacert.pem",            // OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
    "/etc/ssl/cert.pem",                  // Alpine
];
/// Go's certificate directories; all are read.
pub const GO_CERT_DIRS: [&str; 2] = ["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// Bytes read from one file at most (a full Mozilla bundle is about 220 KiB).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Entries looked at in one directory at most.
pub const MAX_DIR_FILES: usize = 4096;
/// Bytes read in all at most.
pub const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;

/// No certificate anywhere: each place tried, and why it gave none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoots {
    pub tried: Vec<String>,
}

impl fmt::Display for NoRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no trusted CA certificates found (tried {}); set SSL_CERT_FILE to a PEM bundle",
            self.tried.join("; ")
        )
    }
}

impl std::error::Error for NoRoots {}

/// The roots from this process's `SSL_CERT_FILE` / `SSL_CERT_DIR` (empty means unset, as in Go).
pub fn system() -> Result<Vec<CertificateDer<'static>>, NoRoots> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    load(var("SSL_CERT_FILE").as_deref(), var("SSL_CERT_DIR").as_deref())
}

/// [`system`] as ureq's trust roots.
pub fn ureq_system() -> Result<ureq::tls::RootCerts, NoRoots> {
    Ok(crate::tls::ureq_roots_of(&system()?))
}

/// The roots from these settings (each `None` when unset).
pub fn load(cert_file: Option<&OsStr>, cert_dir: Option<&OsStr>) -> Result<Vec<CertificateDer<'static>>, NoRoots> {
    let mut reader = Reader {
        certs: Vec::new(),
        tried: Vec::new(),
        budget: MAX_TOTAL_BYTES,
    };
    let files: Vec<(PathBuf, String)> = match cert_file {
        Some(f) => vec![(PathBuf::from(f), format!("SSL_CERT_FILE={}", Path::new(f).display()))],
        None => GO_CERT_FILES
            .iter()
            .map(|f| (PathBuf::from(f), f.to_string()))
            .collect(),
    };
    for (path, label) in files {
        match reader.file(&path) {
            Ok(()) => break,
            Err(why) => reader.tried.push(format!("{label}: {why}")),
        }
    }
    let dirs: Vec<(PathBuf, String)> = match cert_dir {
        Some(d) => std::env::split_paths(d)
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| {
                let label = format!("SSL_CERT_DIR entry {}", p.display());
                (p, label)
            })
            .collect(),
        None => GO_CERT_DIRS
            .iter()
            .map(|d| (PathBuf::from(d), format!("{d}/")))
            .collect(),
    };
    for (dir, label) in dirs {
        if let Err(why) = reader.dir(&dir) {
            reader.tried.push(format!("{label}: {why}"));
        }
    }
    if reader.certs.is_empty() {
        return Err(NoRoots { tried: reader.tried });
    }
    Ok(reader.certs)
}

struct Reader {
    certs: Vec<CertificateDer<'static>>,
    tried: Vec<String>,
    budget: u64,
}

impl Reader {
    /// Reads one file; `Ok` when it was read (even if it held no certificate, as Go stops
    /// there too), else why not.
    fn file(&mut self, path: &Path) -> Result<(), String> {
        let bytes = self.read(path)?;
        match crate::tls::certs_from_pem(&bytes) {
            Ok(certs) => self.certs.extend(certs),
            Err(e) => self.tried.push(format!("{}: {e}", path.display())),
        }
        Ok(())
    }

    /// Reads every certificate file in a directory; `Err` when none gave a certificate.
    fn dir(&mut self, dir: &Path) -> Result<(), String> {
        let entries = std::fs::read_dir(dir).map_err(|e| describe(&e))?;
        let before = self.certs.len();
        let mut looked = 0;
        for entry in entries.flatten().take(MAX_DIR_FILES) {
            looked += 1;
            if let Ok(bytes) = self.read(&entry.path()) {
                self.certs
                    .extend(crate::tls::certs_from_pem(&bytes).unwrap_or_default());
            }
        }
        if self.certs.len() == before {
            return Err(format!("no PEM certificate in its {looked} entries"));
        }
        Ok(())
    }

    /// A regular file's bytes, within the bounds.
    fn read(&mut self, path: &Path) -> Result<Vec<u8>, String> {
        let meta = std::fs::metadata(path).map_err(|e| describe(&e))?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        let limit = MAX_FILE_BYTES.min(self.budget);
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
            .map_err(|e| describe(&e))?;
        if bytes.len() as u64 > limit {
            return Err(if limit < MAX_FILE_BYTES {
                format!("over the {MAX_TOTAL_BYTES}-byte limit on all certificate files")
            } else {
                format!("larger than {MAX_FILE_BYTES} bytes")
            });
        }
        self.budget -= bytes.len() as u64;
        Ok(bytes)
    }
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        _ => format!("cannot read: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    struct Ca {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    fn temp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("lifeboat-roots-{name}-"))
            .tempdir()
            .unwrap()
    }

    fn os(p: &Path) -> Option<&OsStr> {
        Some(p.as_os_str())
    }

    #[test]
    fn the_file_and_every_directory_are_read() {
        let (a, b, c) = (ca("a"), ca("b"), ca("c"));
        let dir = temp("read");
        let file = dir.path().join("bundle.pem");
        std::fs::write(&file, format!("{}{}", a.pem, b.pem)).unwrap();
        let (d1, d2) = (dir.path().join("d1"), dir.path().join("d2"));
        std::fs::create_dir_all(&d1).unwrap();
        std::fs::create_dir_all(&d2).unwrap();
        std::fs::write(d1.join("c.pem"), &c.pem).unwrap();
        std::fs::write(d1.join("README"), "not a certificate").unwrap();
        std::fs::create_dir(d1.join("sub")).unwrap();
        std::fs::write(d2.join("a-again.crt"), &a.pem).unwrap();
        let dirs = std::env::join_paths([&d1, &d2]).unwrap();
        assert_eq!(load(os(&file), Some(&dirs)).unwrap().len(), 4);
        // SSL_CERT_DIR alone (its file unreadable): the directories still count, as in Go.
        let missing = dir.path().join("missing.pem");
        assert_eq!(load(os(&missing), Some(&dirs)).unwrap().len(), 2);
    }

    #[test]
    fn nothing_found_names_every_place_tried() {
        let dir = temp("none");
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join("notes.txt"), "no certificate here").unwrap();
        let gone = dir.path().join("gone");
        let dirs = std::env::join_paths([&empty, &gone]).unwrap();
        let e = load(os(&missing), Some(&dirs)).unwrap_err().to_string();
        assert!(e.starts_with("no trusted CA certificates found (tried "), "{e}");
        assert!(
            e.contains(&format!("SSL_CERT_FILE={}: not found", missing.display())),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                "SSL_CERT_DIR entry {}: no PEM certificate in its 1 entries",
                empty.display()
            )),
            "{e}"
        );
        assert!(
            e.contains(&format!("SSL_CERT_DIR entry {}: not found", gone.display())),
            "{e}"
        );
        assert!(e.ends_with("set SSL_CERT_FILE to a PEM bundle"), "{e}");

        // A bundle that is read but holds no certificate is named with why.
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").unwrap();
        let e = load(os(&junk), Some(&dirs)).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}: not valid PEM certificate data", junk.display())),
            "{e}"
        );
    }

    #[test]
    fn reads_are_bounded() {
        let dir = temp("bounds");
        // Larger than a file may be: refused without reading past the bound.
        let big = dir.path().join("big.pem");
        let a = ca("a");
        let mut f = std::fs::File::create(&big).unwrap();
        f.write_all(a.pem.as_bytes()).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = load(os(&big), Some(empty.as_os_str())).unwrap_err().to_string();
        assert!(e.contains(&format!("larger than {MAX_FILE_BYTES} bytes")), "{e}");
        // A FIFO (or any non-regular file) is never opened, so it cannot block.
        let fifo = dir.path().join("fifo.pem");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let started = std::time::Instant::now();
        let e = load(os(&fifo), Some(empty.as_os_str())).unwrap_err().to_string();
        assert!(e.contains("fifo.pem: not a regular file"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A TLS server on 127.0.0.1 with a certificate from `ca`, answering each connection 200.
    fn tls_server(ca: &Ca) -> std::net::SocketAddr {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let config = std::sync::Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for tcp in listener.incoming().take(8).flatten() {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let conn = rustls::ServerConnection::new(std::sync::Arc::clone(&config)).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = [0u8; 1024];
                if tls.read(&mut head).is_ok() {
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        addr
    }

    fn get(roots: ureq::tls::RootCerts, addr: std::net::SocketAddr) -> Result<u16, ureq::Error> {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .tls_config(crate::tls::ureq_tls().root_certs(roots).build())
            .build()
            .new_agent();
        agent
            .get(&format!("https://localhost:{}/", addr.port()))
            .call()
            .map(|r| r.status().as_u16())
    }

    /// A server whose CA is only in the file: trusted through it, refused without it, and
    /// refused by a TLS configuration that names no roots (nothing is compiled in).
    #[test]
    fn a_server_is_trusted_only_through_the_roots_read() {
        let (ours, other) = (ca("ours"), ca("other"));
        let addr = tls_server(&ours);
        let dir = temp("tls");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let (ours_pem, other_pem) = (dir.path().join("ours.pem"), dir.path().join("other.pem"));
        std::fs::write(&ours_pem, &ours.pem).unwrap();
        std::fs::write(&other_pem, &other.pem).unwrap();

        let roots = |file: &Path| crate::tls::ureq_roots_of(&load(os(file), Some(empty.as_os_str())).unwrap());
        assert_eq!(get(roots(&ours_pem), addr).unwrap(), 200);
        let refused = get(roots(&other_pem), addr).unwrap_err().to_string();
        assert!(refused.to_lowercase().contains("unknownissuer"), "{refused}");
        let none = get(ureq::tls::RootCerts::new_with_certs(&[]), addr)
            .unwrap_err()
            .to_string();
        assert!(none.to_lowercase().contains("unknownissuer"), "{none}");
    }
}
