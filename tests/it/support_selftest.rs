//! Checks the test support itself against the real tools: an S3 server round trip on both
//! implementations, and a TLS handshake with the test PKI.

use crate::support;

use crate::support::pki::{Alg, Ca};
use crate::support::s3::{Flavor, S3Server};

#[test]
fn s3_servers_round_trip() {
    for flavor in [Flavor::Rclone, Flavor::Moto] {
        let s3 = S3Server::start(flavor, "AKIATEST", "secret/with+chars");
        s3.create_bucket("bucket-one");
        s3.put("bucket-one", "dir/a.txt", b"hello");
        assert_eq!(s3.list("bucket-one"), ["dir/a.txt"], "{flavor:?}");
        assert_eq!(s3.get("bucket-one", "dir/a.txt"), b"hello", "{flavor:?}");
    }
}

#[test]
fn pki_makes_usable_keys() {
    let ca = Ca::new("test-ca");
    for alg in [Alg::EcdsaP256, Alg::Rsa2048] {
        let leaf = ca.leaf("server", &["localhost", "127.0.0.1"], alg);
        let certs = lifeboat::tls::certs_from_pem(leaf.cert_pem.as_bytes()).unwrap();
        let key = lifeboat::tls::key_from_pem(leaf.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(lifeboat::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key);
        assert!(config.is_ok(), "{alg:?}: {:?}", config.err());
    }
    let ec = ca.leaf("ec", &["localhost"], Alg::EcdsaP256);
    let sec1 = support::pki::to_sec1(&ec.key_pem);
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"));
    assert!(lifeboat::tls::key_from_pem(sec1.as_bytes()).is_ok());
}
