//! TLS termination with real handshakes: EC (PKCS#8 and the SEC1 form cert-manager writes)
//! and RSA (PKCS#8 and PKCS#1) keys; certificate rotation the way the kubelet and
//! cert-manager do it (a `..data` symlink swapped atomically) while clients keep sending
//! requests, with zero failures; and a corrupt or mismatched key, which keeps the old
//! certificate in service.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::hook_common::*;
use crate::support::pki::{to_pkcs1, to_sec1, Alg, Ca, Files, Leaf};
use crate::support::wait_for;
use serde_json::Value;

fn der(cert_pem: &str) -> Vec<u8> {
    lifeboat::tls::certs_from_pem(cert_pem.as_bytes()).unwrap()[0].to_vec()
}

fn body() -> String {
    review(
        "tls",
        "ns",
        "CREATE",
        deployment_pod(annotations(&[("inject", "true")])),
        false,
    )
    .to_string()
}

#[test]
fn ec_sec1_rsa_pkcs1_and_pkcs8_keys_all_serve() {
    for (alg, form) in [
        (Alg::EcdsaP256, "pkcs8"),
        (Alg::EcdsaP256, "sec1"),
        (Alg::Rsa2048, "pkcs8"),
        (Alg::Rsa2048, "pkcs1"),
    ] {
        let mut setup = Setup::new(Alg::EcdsaP256);
        let mut leaf = setup.ca.leaf("hook", &["localhost", "127.0.0.1"], alg);
        leaf.key_pem = match form {
            "sec1" => to_sec1(&leaf.key_pem),
            "pkcs1" => to_pkcs1(&leaf.key_pem),
            _ => leaf.key_pem,
        };
        let marker = match form {
            "sec1" => "BEGIN EC PRIVATE KEY",
            "pkcs1" => "BEGIN RSA PRIVATE KEY",
            _ => "BEGIN PRIVATE KEY",
        };
        assert!(leaf.key_pem.contains(marker), "{form}");
        setup.files = setup.ca.write(&leaf, setup.dir.path(), "tls");
        let hook = start(&setup, &[]);
        let mut client = hook.client();
        assert_eq!(client.peer_cert(), der(&leaf.cert_pem), "{alg:?} {form}");
        let reply = client.post("/mutate", "application/json", body().as_bytes());
        assert_eq!(reply.status, 200, "{alg:?} {form}");
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(v["response"]["patch"].is_string());
    }
}

/// A kubelet-style projected folder: `tls.crt -> ..data/tls.crt`, `..data -> ..<version>`.
struct Projected {
    dir: PathBuf,
    version: usize,
}

impl Projected {
    fn new(dir: &Path, leaf: &Leaf, ca: &Ca) -> (Projected, Files) {
        let mut p = Projected {
            dir: dir.join("projected"),
            version: 0,
        };
        std::fs::create_dir_all(&p.dir).unwrap();
        p.publish(&leaf.cert_pem, &leaf.key_pem);
        std::os::unix::fs::symlink("..data/tls.crt", p.dir.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", p.dir.join("tls.key")).unwrap();
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        let files = Files {
            ca: ca_file,
            cert: p.dir.join("tls.crt"),
            key: p.dir.join("tls.key"),
        };
        (p, files)
    }

    /// Writes a new version folder and swaps `..data` to it atomically (rename of a symlink).
    fn publish(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let name = format!("..2026_11_24_{:04}", self.version);
        let version = self.dir.join(&name);
        std::fs::create_dir_all(&version).unwrap();
        std::fs::write(version.join("tls.crt"), cert).unwrap();
        std::fs::write(version.join("tls.key"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

fn served_cert(hook: &Hook) -> Vec<u8> {
    hook.client().peer_cert()
}

#[test]
fn rotation_under_load_fails_no_request() {
    let mut setup = Setup::new(Alg::EcdsaP256);
    let first = setup.ca.leaf("hook", &["localhost", "127.0.0.1"], Alg::EcdsaP256);
    let (mut projected, files) = Projected::new(setup.dir.path(), &first, &setup.ca);
    setup.files = files;
    let hook = start(&setup, &[]);
    assert_eq!(served_cert(&hook), der(&first.cert_pem));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let body = Arc::new(body());
    let mut threads = Vec::new();
    for t in 0..6 {
        let (stop, ok, failed, errors, body) = (stop.clone(), ok.clone(), failed.clone(), errors.clone(), body.clone());
        let (addr, config) = (hook.addr, client_config(&hook.ca_pem));
        threads.push(std::thread::spawn(move || {
            let keep_alive = t % 2 == 0;
            let mut client: Option<Client> = None;
            // Bounded: at most 100k requests per thread.
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let result = (|| {
                    if client.is_none() || !keep_alive {
                        client = Some(Client::try_connect(addr, &config)?);
                    }
                    let reply = client
                        .as_mut()
                        .unwrap()
                        .try_post("/mutate", "application/json", body.as_bytes())?;
                    if reply.status != 200 {
                        return Err(format!("status {}", reply.status));
                    }
                    Ok(())
                })();
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        client = None;
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    wait_for("load to start", Duration::from_secs(30), || {
        (ok.load(Ordering::SeqCst) > 50).then_some(())
    });

    let second = setup.ca.leaf("hook", &["localhost", "127.0.0.1"], Alg::EcdsaP256);
    let sec1 = to_sec1(&second.key_pem);
    projected.publish(&second.cert_pem, &sec1);
    wait_for("the rotated EC certificate", Duration::from_secs(30), || {
        (served_cert(&hook) == der(&second.cert_pem)).then_some(())
    });
    let before = ok.load(Ordering::SeqCst);
    wait_for("more load", Duration::from_secs(30), || {
        (ok.load(Ordering::SeqCst) > before + 50).then_some(())
    });
    let third = setup.ca.leaf("hook", &["localhost", "127.0.0.1"], Alg::Rsa2048);
    projected.publish(&third.cert_pem, &third.key_pem);
    wait_for("the rotated RSA certificate", Duration::from_secs(30), || {
        (served_cert(&hook) == der(&third.cert_pem)).then_some(())
    });
    let before = ok.load(Ordering::SeqCst);
    wait_for("more load", Duration::from_secs(30), || {
        (ok.load(Ordering::SeqCst) > before + 50).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(ok.load(Ordering::SeqCst) > 150);
    assert_eq!(hook.metric("hook_tls_reloads_total{result=\"ok\"}"), 2.0);
    assert_eq!(hook.metric("hook_tls_reloads_total{result=\"error\"}"), 0.0);
}

#[test]
fn a_corrupt_or_mismatched_key_keeps_the_old_certificate() {
    let mut setup = Setup::new(Alg::EcdsaP256);
    let first = setup.ca.leaf("hook", &["localhost", "127.0.0.1"], Alg::EcdsaP256);
    let (mut projected, files) = Projected::new(setup.dir.path(), &first, &setup.ca);
    setup.files = files;
    let hook = start(&setup, &[]);
    let second = setup.ca.leaf("hook", &["localhost", "127.0.0.1"], Alg::EcdsaP256);
    let other = setup.ca.leaf("other", &["localhost"], Alg::EcdsaP256);

    // Corrupt key: base64 garbage inside a valid-looking PEM block.
    projected.publish(
        &second.cert_pem,
        "-----BEGIN PRIVATE KEY-----\nAAAAbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    wait_for("the reload error", Duration::from_secs(30), || {
        (hook.metric("hook_tls_reloads_total{result=\"error\"}") == 1.0).then_some(())
    });
    assert_eq!(served_cert(&hook), der(&first.cert_pem));
    let reply = hook.client().post("/mutate", "application/json", body().as_bytes());
    assert_eq!(reply.status, 200);
    // A valid key that belongs to another certificate.
    projected.publish(&second.cert_pem, &other.key_pem);
    wait_for("the second reload error", Duration::from_secs(30), || {
        (hook.metric("hook_tls_reloads_total{result=\"error\"}") == 2.0).then_some(())
    });
    assert_eq!(served_cert(&hook), der(&first.cert_pem));
    // Fixed: the new pair is served.
    projected.publish(&second.cert_pem, &second.key_pem);
    wait_for("the fixed certificate", Duration::from_secs(30), || {
        (served_cert(&hook) == der(&second.cert_pem)).then_some(())
    });
    let errors: Vec<Value> = hook.log_lines().into_iter().filter(|l| l["level"] == "error").collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for e in &errors {
        let text = e.to_string();
        assert!(text.contains("tls.key"), "the error names the file: {text}");
        assert!(!text.contains("AAAAbm90"), "no key material in logs: {text}");
    }
}
