//! The plain-HTTP operations endpoint every long-running binary serves (default :8080):
//! `/metrics` (Prometheus text), `/healthz` (the process is alive) and `/readyz` (also
//! answered on `/ready`: the binary's own readiness check passes).
//!
//! It runs on its own thread and never carries secrets or admission traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::Registry;
use crate::shutdown::Shutdown;

/// Decides readiness: `Ok(())` when ready, else the reason it is not.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A running operations server.
pub struct OpsServer {
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
}

impl OpsServer {
    /// Binds `addr` and starts serving; stops when `shutdown` fires or the server is dropped.
    pub fn start(addr: &str, metrics: Registry, ready: ReadyCheck, shutdown: Shutdown) -> Result<OpsServer, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let server = Arc::new(server);
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("{addr} is not an IP address"))?;
        let worker = Arc::clone(&server);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ops-http".into())
            .spawn(move || serve(&worker, &metrics, &ready, &shutdown, &stopped))
            .map_err(|e| format!("cannot start the ops thread: {e}"))?;
        Ok(OpsServer {
            addr: bound,
            thread: Some(thread),
            server,
            stop,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, metrics: &Registry, ready: &ReadyCheck, shutdown: &Shutdown, stop: &AtomicBool) {
    loop {
        if shutdown.requested().is_some() || stop.load(Ordering::SeqCst) {
            return;
        }
        let request = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                // Accept errors (e.g. too many open files) must not end the server.
                log::warn!(error:% = e; "ops endpoint: receiving a request failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let (code, body, content_type) = match (request.method(), path.as_str()) {
            (tiny_http::Method::Get, "/metrics") => (200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8"),
            (tiny_http::Method::Get, "/healthz") => (200, "ok\n".to_string(), "text/plain; charset=utf-8"),
            (tiny_http::Method::Get, "/readyz" | "/ready") => match ready() {
                Ok(()) => (200, "ok\n".to_string(), "text/plain; charset=utf-8"),
                Err(why) => (503, format!("not ready: {why}\n"), "text/plain; charset=utf-8"),
            },
            (tiny_http::Method::Get, _) => (404, "not found\n".to_string(), "text/plain; charset=utf-8"),
            _ => (405, "method not allowed\n".to_string(), "text/plain; charset=utf-8"),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
            .expect("static header is valid");
        let response = tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(header);
        if let Err(e) = request.respond(response) {
            log::debug!(error:% = e; "ops endpoint: client went away");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        static T: crate::metrics::Counter<0> = crate::metrics::Counter::new("t_total", "T.", &[]);
        let metrics = Registry::new();
        metrics.inc(&T, []);
        let flag = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&flag);
        let ready: ReadyCheck = Arc::new(move || {
            if f.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("api unreachable".into())
            }
        });
        let ops = OpsServer::start("127.0.0.1:0", metrics, ready, Shutdown::new()).unwrap();
        assert!(get(ops.addr(), "/metrics").contains("t_total 1"));
        assert!(get(ops.addr(), "/healthz").starts_with("HTTP/1.1 200"));
        let not_ready = get(ops.addr(), "/readyz");
        assert!(
            not_ready.starts_with("HTTP/1.1 503") && not_ready.contains("api unreachable"),
            "{not_ready}"
        );
        flag.store(true, Ordering::SeqCst);
        assert!(get(ops.addr(), "/ready?x=1").starts_with("HTTP/1.1 200"));
        assert!(get(ops.addr(), "/nope").starts_with("HTTP/1.1 404"));
    }
}
