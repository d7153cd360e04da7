//! The floor `bench/hook.sh` measures the hook against: the least any webhook built from the
//! same crates has to do per request. One thread per connection: rustls 0.23 (the same
//! provider and defaults as the hook), read a Content-Length request, parse the
//! AdmissionReview with serde_json, answer a response of the same size as the hook's (its
//! patch, taken from RESPONSE_FILE, with this request's uid) in one write. No limits, no
//! framing checks, no metrics, no logs: not a server to deploy, a baseline to divide by.
//!
//! With `--tiny-http`, the same work in the arrangement tiny_http imposes on the hook (tiny_http
//! 0.12 cannot be handed a stream, so TLS ends in front of it): each connection's thread
//! decrypts and writes the bytes to tiny_http on a Unix socket, tiny_http's connection thread
//! reads the request and queues it, one of 4 workers (the hook's default) parses it and
//! answers through tiny_http, and the connection's thread encrypts the answer in one TLS
//! record (as the hook's front end does). Still no limits, deadlines, checks, metrics or
//! logs: what the hook costs over this is its own work, what this costs over the plain floor
//! is tiny_http's.
//!
//! Usage: hook_floor [--tiny-http] ADDR CERT_FILE KEY_FILE RESPONSE_FILE

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
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
        let answer = answer(&body, &patch)?;
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

/// The answer to one AdmissionReview: the saved patch with the request's uid.
fn answer(body: &[u8], patch: &str) -> std::io::Result<String> {
    let review: Value = serde_json::from_slice(body).map_err(std::io::Error::other)?;
    let uid = review["request"]["uid"].as_str().unwrap_or("");
    Ok(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch}})
    .to_string())
}

/// `--tiny-http`: one connection's bytes both ways between the client (TLS) and tiny_http (the
/// Unix socket at `socket`), on one thread, poll() waiting on both.
fn relay(tcp: TcpStream, config: Arc<rustls::ServerConfig>, socket: &Path) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut tcp = tcp;
    let mut tls = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut unix = UnixStream::connect(socket)?;
    let mut plain = [0u8; 8 * 1024];
    let mut out = Vec::new();
    let (mut sent, mut answered, mut kicks) = (false, false, 0);
    loop {
        let mut fds = [&tcp.as_raw_fd(), &unix.as_raw_fd()].map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // tiny_http 0.12's thread pool can leave a new connection queued with no thread (a
        // lost wake-up, see hook/proxy's watchdog): as the hook does, a connection whose
        // first request has no answer after 20 ms connects once more, empty, which wakes one
        // (at most 5 times, as the hook).
        let wait = if sent && !answered && kicks < 5 { 20 } else { -1 };
        // SAFETY: two valid pollfds for descriptors open during the call.
        match unsafe { libc::poll(fds.as_mut_ptr(), 2, wait) } {
            n if n < 0 => continue, // EINTR
            0 => {
                drop(UnixStream::connect(socket));
                kicks += 1;
                continue;
            }
            _ => {}
        }
        if fds[0].revents != 0 {
            if tls.read_tls(&mut tcp)? == 0 {
                return Ok(());
            }
            tls.process_new_packets().map_err(std::io::Error::other)?;
            loop {
                match tls.reader().read(&mut plain) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        unix.write_all(&plain[..n])?;
                        sent = true;
                    }
                    Err(_) => break, // WouldBlock: nothing more for now.
                }
            }
        }
        if fds[1].revents != 0 {
            // tiny_http writes the head, then the body: wait for the whole answer.
            loop {
                let n = unix.read(&mut plain)?;
                if n == 0 {
                    return Ok(());
                }
                out.extend_from_slice(&plain[..n]);
                if complete(&out) {
                    break;
                }
            }
            tls.writer().write_all(&out)?;
            out.clear();
            answered = true;
        }
        while tls.wants_write() {
            tls.write_tls(&mut tcp)?;
        }
    }
}

/// Whether `data` holds a whole response: a head and the `Content-Length` bytes it names.
fn complete(data: &[u8]) -> bool {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let len = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    data.len() >= end + 4 + len
}

/// `--tiny-http`: tiny_http on a Unix socket in a folder of its own, and 4 workers answering.
fn tiny_http_backend(patch: Arc<String>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hook-floor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("a folder for the socket");
    let path = dir.join("http.sock");
    let listener = UnixListener::bind(&path).expect("the Unix socket");
    let server = Arc::new(tiny_http::Server::from_listener(listener, None).expect("tiny_http"));
    for _ in 0..4 {
        let (server, patch) = (Arc::clone(&server), Arc::clone(&patch));
        std::thread::spawn(move || loop {
            let Ok(mut request) = server.recv() else { return };
            let mut body = Vec::new();
            let answered = match request
                .as_reader()
                .read_to_end(&mut body)
                .and_then(|_| answer(&body, &patch))
            {
                Ok(a) => tiny_http::Response::from_string(a).with_header(
                    tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap(),
                ),
                Err(e) => tiny_http::Response::from_string(e.to_string()).with_status_code(400),
            };
            let _ = request.respond(answered);
        });
    }
    path
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let tiny = args.get(1).is_some_and(|a| a == "--tiny-http");
    if tiny {
        args.remove(1);
    }
    if args.len() != 5 {
        eprintln!("usage: hook_floor [--tiny-http] ADDR CERT_FILE KEY_FILE RESPONSE_FILE");
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
    let socket = tiny.then(|| Arc::new(tiny_http_backend(Arc::clone(&patch))));
    let listener = TcpListener::bind(&args[1]).expect("ADDR");
    for tcp in listener.incoming().flatten() {
        let (config, patch, socket) = (Arc::clone(&config), Arc::clone(&patch), socket.clone());
        std::thread::spawn(move || {
            let _ = match socket {
                Some(socket) => relay(tcp, config, &socket),
                None => serve(tcp, config, patch),
            };
        });
    }
}
