//! The floor `bench/hook.sh` measures the hook against: the least any webhook built from the
//! same crates has to do per request. One thread per connection: rustls 0.23 (the same
//! provider and defaults as the hook), read a Content-Length request, parse the
//! AdmissionReview with serde_json, answer a response of the same size as the hook's (its
//! patch, taken from RESPONSE_FILE, with this request's uid) in one write. No limits, no
//! framing checks, no metrics, no logs: not a server to deploy, a baseline to divide by.
//!
//! Usage: hook_floor ADDR CERT_FILE KEY_FILE RESPONSE_FILE

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use serde_json::{json, Value};

fn serve(tcp: TcpStream, config: Arc<rustls::ServerConfig>, patch: Arc<String>) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if stream.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        stream.read_exact(&mut body)?;
        let review: Value = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
        let uid = review["request"]["uid"].as_str().unwrap_or("");
        let answer = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch.as_str()}})
        .to_string();
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        )
        .into_bytes();
        out.extend_from_slice(answer.as_bytes());
        let inner = stream.get_mut();
        inner.write_all(&out)?;
        inner.flush()?;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: hook_floor ADDR CERT_FILE KEY_FILE RESPONSE_FILE");
        std::process::exit(2);
    }
    let certs = lifeboat::tls::load_certs(std::path::Path::new(&args[2])).expect("CERT_FILE");
    let key = lifeboat::tls::load_key(std::path::Path::new(&args[3])).expect("KEY_FILE");
    let mut config = rustls::ServerConfig::builder_with_provider(lifeboat::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let saved: Value = serde_json::from_slice(&std::fs::read(&args[4]).expect("RESPONSE_FILE")).expect("JSON");
    let patch = Arc::new(saved["response"]["patch"].as_str().expect("a patch").to_string());
    let listener = TcpListener::bind(&args[1]).expect("ADDR");
    for tcp in listener.incoming().flatten() {
        let (config, patch) = (Arc::clone(&config), Arc::clone(&patch));
        std::thread::spawn(move || {
            let _ = serve(tcp, config, patch);
        });
    }
}
