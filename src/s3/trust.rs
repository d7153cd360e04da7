//! The TLS trust store of lifeboat's own S3 client: the system roots as Go (so rclone) reads
//! them on Linux ([`crate::roots`]: `SSL_CERT_FILE`, `SSL_CERT_DIR`, Go's bundle files and
//! directories). rclone and s3sync then trust the same CAs; a private CA goes into
//! `SSL_CERT_FILE`.

/// The CA certificates both clients trust.
#[derive(Clone, Default)]
pub struct Trust {
    certs: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl Trust {
    /// Loads the roots. `SSL_CERT_FILE` must be readable when set (checked with the
    /// configuration); none found leaves the store empty, and TLS then fails naming the CA.
    pub fn load() -> Trust {
        Trust {
            certs: crate::roots::system().unwrap_or_default(),
        }
    }

    pub fn ureq_config(&self) -> ureq::tls::TlsConfig {
        crate::tls::ureq_tls()
            .root_certs(crate::tls::ureq_roots_of(&self.certs))
            .build()
    }
}
