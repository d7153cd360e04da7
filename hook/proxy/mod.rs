//! The TLS front end: accepts TCP connections, terminates TLS with rustls, and pumps the
//! plain bytes to and from the HTTP layer's private Unix socket.
//!
//! One thread per connection does the handshake (within `handshake_timeout` in all, not per
//! read) and then carries the bytes both ways, waiting on both sockets with poll(). Requests
//! go through a [`Framer`]: only complete, bounded requests reach the HTTP layer (see
//! `framing`). Connections are capped (`max_connections`): at the cap the accept loop closes
//! the connection that has waited longest on its client (mid-handshake or mid-request first,
//! then idle keep-alive ones; never one whose request is being answered), so slow clients
//! cannot keep real requests out; with none to close it waits, and extra clients queue in the
//! kernel backlog instead of exhausting threads or file descriptors. An accept() error is
//! logged, counted and retried after a short pause; it never ends the loop.
//!
//! Shutdown ([`Front::drain`]) works like Go's `http.Server.Shutdown`: stop accepting, then
//! half-close each connection as soon as it is idle (its last bytes were a response). A
//! request whose bytes have arrived is answered before its connection closes.
//!
//! Here: the accept loop, the connection table and its eviction, the watchdog and the drain;
//! `connection`: one connection's handshake, close and the front end's own answers; `pump`:
//! its bytes both ways.

use std::collections::HashMap;
use std::net::{Shutdown as Direction, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lifeboat::metrics::Registry;
use rustls::ServerConfig;

mod connection;
mod pump;

use crate::framing;
use crate::http::Backend;
use crate::metrics;
use connection::serve;

/// Limits of the front end.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long a connection may sit without receiving a byte.
    pub idle_timeout: Duration,
    /// Size and time limits of one request.
    pub request: framing::Limits,
}

/// What a connection is doing, for choosing which to close at the connection cap.
const WAITING_ON_CLIENT: u8 = 0;
const IDLE: u8 = 1;
const IN_FLIGHT: u8 = 2;

/// A connection is closed at the cap only once it has waited this long on its client.
const EVICT_MIN_AGE: Duration = Duration::from_millis(200);

/// One open connection, as the drain sees it.
struct Conn {
    tcp: TcpStream,
    /// Event numbers of the last bytes received and the last bytes sent.
    last_in: AtomicU64,
    last_out: AtomicU64,
    closing: AtomicBool,
    /// The `last_in` the watchdog saw unanswered on its previous look.
    watched: AtomicU64,
    /// Kicks sent for this connection (at most [`MAX_KICKS`]).
    kicks: AtomicU64,
    /// Event number of the last complete request forwarded to the HTTP layer.
    forwarded: AtomicU64,
    /// [`WAITING_ON_CLIENT`], [`IDLE`] or [`IN_FLIGHT`], and since when (µs, `framing::epoch`).
    state: std::sync::atomic::AtomicU8,
    since: AtomicU64,
}

impl Conn {
    fn new(tcp: TcpStream) -> Conn {
        Conn {
            tcp,
            last_in: AtomicU64::new(0),
            last_out: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            watched: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            state: std::sync::atomic::AtomicU8::new(WAITING_ON_CLIENT),
            since: AtomicU64::new(framing::to_micros(Instant::now())),
        }
    }

    fn set_state(&self, state: u8) {
        self.since.store(framing::to_micros(Instant::now()), Ordering::SeqCst);
        self.state.store(state, Ordering::SeqCst);
    }

    /// Whether nothing is under way for the drain: the last bytes were a response, and no
    /// bytes from the client wait unread on the socket. Bytes that arrived before the drain
    /// looked belong to a request the client already sent (its pump thread may not have run
    /// yet on a loaded machine): that request is answered, not cut off.
    fn idle(&self) -> bool {
        self.last_out.load(Ordering::SeqCst) >= self.last_in.load(Ordering::SeqCst) && !unread_bytes(&self.tcp)
    }
}

/// Whether bytes wait to be read on `tcp`, without reading them and without blocking.
fn unread_bytes(tcp: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`, which lives across the call. MSG_PEEK
    // consumes nothing and MSG_DONTWAIT makes this one call non-blocking without changing the
    // descriptor's flags, which its pump thread shares.
    let n = unsafe {
        libc::recv(
            tcp.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Kicks per connection: a client that sends half a request and stops must not make the
/// watchdog poke the HTTP layer forever.
const MAX_KICKS: u64 = 5;
/// How often at most the watchdog gives freed memory back (`alloc::trim_if_asked`).
const TRIM_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Conns {
    map: Mutex<HashMap<u64, Arc<Conn>>>,
    changed: Condvar,
    ids: AtomicU64,
    events: AtomicU64,
}

impl Conns {
    fn event(&self) -> u64 {
        self.events.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn remove(&self, id: u64) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        crate::alloc::trim_later();
        self.changed.notify_all();
    }
}

/// The running TLS front end.
pub struct Front {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Conns>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    tls: Arc<ServerConfig>,
    backend: Arc<Backend>,
    metrics: Registry,
    limits: Limits,
    conns: Arc<Conns>,
    /// Bytes of incomplete requests held by all connections' framers together.
    buffered: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// At most this many bytes of incomplete requests are held at once (all connections): 32
    /// MiB, or two bodies when MAX_BODY_BYTES is larger. Past it, connections holding part of
    /// a request are not read from (TCP pushes back) until others complete or time out.
    fn buffer_budget(&self) -> usize {
        (32 * 1024 * 1024).max(2 * self.limits.request.max_body)
    }
}

/// Keeps [`Shared::buffered`] equal to what one framer holds, and gives it back at the end.
struct Held<'a> {
    shared: &'a Shared,
    bytes: usize,
}

impl Held<'_> {
    fn update(&mut self, now: usize) {
        if now > self.bytes {
            self.shared.buffered.fetch_add(now - self.bytes, Ordering::SeqCst);
        } else {
            self.shared.buffered.fetch_sub(self.bytes - now, Ordering::SeqCst);
        }
        self.bytes = now;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.update(0);
    }
}

impl Front {
    /// Binds `listen` and starts accepting.
    pub fn start(
        listen: &str,
        tls: Arc<ServerConfig>,
        backend: Arc<Backend>,
        metrics: Registry,
        limits: Limits,
    ) -> Result<Front, String> {
        let listener = TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("{listen}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Conns::default());
        let shared = Arc::new(Shared {
            tls,
            backend,
            metrics,
            limits,
            conns: Arc::clone(&conns),
            buffered: std::sync::atomic::AtomicUsize::new(0),
        });
        let watched = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("http-watchdog".into())
            .spawn(move || watchdog(&watched))
            .map_err(|e| format!("cannot start the watchdog thread: {e}"))?;
        let stopping = Arc::clone(&stop);
        let accept = std::thread::Builder::new()
            .name("tls-accept".into())
            .spawn(move || accept_loop(&listener, &shared, &stopping))
            .map_err(|e| format!("cannot start the accept thread: {e}"))?;
        Ok(Front {
            addr,
            stop,
            conns,
            accept: Some(accept),
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Open connections right now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Stops accepting, lets in-flight requests finish and closes idle connections, for at
    /// most `timeout`. Returns whether every connection closed in time.
    pub fn drain(&mut self, timeout: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        self.conns.changed.notify_all();
        // Wake the blocking accept() with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => [127, 0, 0, 1].into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let open: Vec<Arc<Conn>> = self
                .conns
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            if open.is_empty() {
                return true;
            }
            let late = Instant::now() >= deadline;
            for conn in open {
                let idle = conn.idle();
                if late {
                    let _ = conn.tcp.shutdown(Direction::Both);
                } else if idle && !conn.closing.swap(true, Ordering::SeqCst) {
                    // No request in flight: the client → server side ends, the HTTP layer
                    // sees end-of-stream, closes, and the response pump closes TLS.
                    let _ = conn.tcp.shutdown(Direction::Read);
                }
            }
            if late {
                return false;
            }
            let guard = self.conns.map.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self.conns.changed.wait_timeout(guard, Duration::from_millis(10));
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    let mut backoff = Duration::from_millis(5);
    loop {
        {
            let mut map = shared.conns.map.lock().unwrap_or_else(|e| e.into_inner());
            while map.len() >= shared.limits.max_connections && !stop.load(Ordering::SeqCst) {
                if evict_one(&map, &shared.metrics) {
                    // Its thread sees the closed socket and removes it: wait for that.
                }
                map = shared
                    .conns
                    .changed
                    .wait_timeout(map, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        // The connection needs two descriptors (the stream and a clone for shutdown): when
        // descriptors run out either step fails with EMFILE, and both are handled alike.
        let accepted = listener
            .accept()
            .and_then(|(tcp, peer)| tcp.try_clone().map(|handle| (tcp, handle, peer)));
        let (tcp, handle, peer) = match accepted {
            Ok(parts) => parts,
            Err(e) => {
                // EMFILE, ENOBUFS, ECONNABORTED...: log, pause, go on; never give up.
                shared.metrics.inc(&metrics::ERRORS, ["accept"]);
                log::warn!(error:% = e, retry_ms = backoff.as_millis() as u64; "accepting a connection failed");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let id = shared.conns.ids.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(handle));
        shared
            .conns
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&conn));
        let worker = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("tls-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Err(e) = serve(tcp, &conn, &worker) {
                    log::debug!(peer:% = peer, error = e.as_str(); "connection ended with an error");
                }
                worker.conns.remove(id);
            });
        if let Err(e) = spawned {
            shared.conns.remove(id);
            shared.metrics.inc(&metrics::ERRORS, ["thread"]);
            log::warn!(error:% = e; "cannot start a connection thread; connection dropped");
        }
    }
}

/// At the connection cap: closes the connection that has waited longest on its client
/// (mid-handshake or mid-request first, then idle), if one has waited [`EVICT_MIN_AGE`].
/// Returns whether one was closed.
fn evict_one(map: &HashMap<u64, Arc<Conn>>, metrics: &Registry) -> bool {
    let oldest_allowed = framing::to_micros(Instant::now()).saturating_sub(EVICT_MIN_AGE.as_micros() as u64);
    let victim = map
        .values()
        .filter(|c| !c.closing.load(Ordering::SeqCst))
        .filter_map(|c| {
            let state = c.state.load(Ordering::SeqCst);
            let since = c.since.load(Ordering::SeqCst);
            (state != IN_FLIGHT && since <= oldest_allowed).then_some(((state, since), c))
        })
        .min_by_key(|(key, _)| *key);
    let Some((_, conn)) = victim else {
        return false;
    };
    conn.closing.store(true, Ordering::SeqCst);
    let _ = conn.tcp.shutdown(Direction::Both);
    metrics.inc(&metrics::ERRORS, ["evicted"]);
    true
}

/// Works around a lost wake-up in tiny_http 0.12's thread pool (`TaskPool::spawn` queues a
/// connection when a thread counts as waiting, but that thread may already have been
/// notified for the previous one): when connections arrive together, one can sit in the
/// queue with no thread to serve it until another connection ends, which with keep-alive may
/// be never. A connection that has sent a request but never had any answer, for two looks
/// in a row (10-20 ms), gets a "kick": an empty connection to the socket, whose arrival
/// starts or wakes a pool thread, which serves the queue in order. Connections that were
/// answered once own a thread for good, so they are never kicked for being slow; each
/// connection gets at most [`MAX_KICKS`]. Kicks are counted in `hook_backend_kicks_total`.
///
/// It also gives freed memory back to the system when asked (`alloc::trim_if_asked`: a
/// connection ended, a large request was answered), at most once per [`TRIM_EVERY`].
fn watchdog(shared: &Shared) {
    let mut last_trim = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(10));
        if last_trim.elapsed() >= TRIM_EVERY && crate::alloc::trim_if_asked() {
            last_trim = Instant::now();
        }
        let mut stuck = 0;
        for conn in shared.conns.map.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let last_in = conn.forwarded.load(Ordering::SeqCst);
            let never_answered = conn.last_out.load(Ordering::SeqCst) == 0;
            if last_in > 0
                && never_answered
                && conn.watched.swap(last_in, Ordering::SeqCst) == last_in
                && conn.kicks.fetch_add(1, Ordering::SeqCst) < MAX_KICKS
            {
                stuck += 1;
            }
        }
        for _ in 0..stuck {
            shared.metrics.inc(&metrics::BACKEND_KICKS, []);
            drop(UnixStream::connect(shared.backend.socket_path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn a_connection_with_bytes_still_unread_is_not_idle() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let conn = Conn::new(server.try_clone().unwrap());
        assert!(conn.idle(), "nothing sent yet");
        // The client sent the start of a request; no pump has read it yet.
        client.write_all(b"POST /mutate HTTP/1.1\r\n").unwrap();
        let start = Instant::now();
        while !unread_bytes(&server) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!conn.idle(), "bytes the client sent before the drain looked");
        // Once read (and answered), the connection is idle again.
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"POST /mutate HTTP/1.1\r\n");
        assert!(conn.idle());
        conn.last_in.store(2, Ordering::SeqCst);
        assert!(!conn.idle(), "a request read and not answered");
        conn.last_out.store(3, Ordering::SeqCst);
        assert!(conn.idle());
    }
}
