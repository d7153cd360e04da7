//! Test PKI made at test time: a CA, and server and client certificates it signs, as PEM
//! files, with ECDSA P-256 or RSA keys.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// The algorithm of a generated key.
#[derive(Clone, Copy, Debug)]
pub enum Alg {
    EcdsaP256,
    Rsa2048,
}

/// A certificate authority that can sign leaf certificates.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Paths of a written certificate, key and the CA that signed them.
#[derive(Clone, Debug)]
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn key(alg: Alg) -> KeyPair {
    match alg {
        Alg::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key"),
        Alg::Rsa2048 => rsa_key(),
    }
}

/// rcgen (on ring) cannot generate RSA keys; openssl makes one, rcgen signs with it.
fn rsa_key() -> KeyPair {
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .expect("openssl genpkey (needed for RSA test keys)");
    assert!(out.status.success(), "openssl genpkey failed");
    let pem = String::from_utf8(out.stdout).expect("pem");
    KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("rsa key")
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = key(Alg::EcdsaP256);
        let cert = params.self_signed(&key).expect("self-signed ca");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), usable as server and client.
    pub fn leaf(&self, common_name: &str, names: &[&str], alg: Alg) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        for n in names {
            params.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("dns name")),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = key(alg);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `ca.crt`, `<stem>.crt` and `<stem>.key` into `dir`.
    pub fn write(&self, leaf: &Leaf, dir: &Path, stem: &str) -> Files {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca = dir.join("ca.crt");
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&ca, &self.cert_pem).expect("write ca");
        std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
        std::fs::write(&key, &leaf.key_pem).expect("write key");
        Files { ca, cert, key }
    }
}

/// Converts a PKCS#8 EC key PEM to the SEC1 form ("EC PRIVATE KEY") cert-manager writes.
pub fn to_sec1(pkcs8_pem: &str) -> String {
    openssl_convert(pkcs8_pem, &["ec", "-outform", "PEM"])
}

/// Converts a PKCS#8 RSA key PEM to the PKCS#1 form ("RSA PRIVATE KEY").
pub fn to_pkcs1(pkcs8_pem: &str) -> String {
    openssl_convert(pkcs8_pem, &["rsa", "-traditional", "-outform", "PEM"])
}

fn openssl_convert(pem: &str, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}
