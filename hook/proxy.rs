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

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown as Direction, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lifeboat::metrics::Registry;
use rustls::{ServerConfig, ServerConnection};

use crate::framing::{self, Framer, Reject, Step};
use crate::http::Backend;

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
    fn set_state(&self, state: u8) {
        self.since.store(framing::to_micros(Instant::now()), Ordering::SeqCst);
        self.state.store(state, Ordering::SeqCst);
    }
}

/// Kicks per connection: a client that sends half a request and stops must not make the
/// watchdog poke the HTTP layer forever.
const MAX_KICKS: u64 = 5;

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
                let idle = conn.last_out.load(Ordering::SeqCst) >= conn.last_in.load(Ordering::SeqCst);
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
                shared.metrics.inc("hook_errors_total", &[("kind", "accept")]);
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
        let conn = Arc::new(Conn {
            tcp: handle,
            last_in: AtomicU64::new(0),
            last_out: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            watched: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            state: std::sync::atomic::AtomicU8::new(WAITING_ON_CLIENT),
            since: AtomicU64::new(framing::to_micros(Instant::now())),
        });
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
            shared.metrics.inc("hook_errors_total", &[("kind", "thread")]);
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
    metrics.inc("hook_errors_total", &[("kind", "evicted")]);
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
fn watchdog(shared: &Shared) {
    loop {
        std::thread::sleep(Duration::from_millis(10));
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
            shared.metrics.inc("hook_backend_kicks_total", &[]);
            drop(UnixStream::connect(shared.backend.socket_path()));
        }
    }
}

/// Handshake, then pump until either side is done.
fn serve(mut tcp: TcpStream, conn: &Arc<Conn>, shared: &Arc<Shared>) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let mut tls = ServerConnection::new(Arc::clone(&shared.tls)).map_err(|e| e.to_string())?;
    // One deadline for the whole handshake: each read and write may only take what is left,
    // so a client sending a byte at a time cannot stretch it. (rustls' `complete_io` reads
    // again and again within one call, so it is not used here.)
    let deadline = Instant::now() + shared.limits.handshake_timeout;
    if let Err(e) = handshake(&mut tls, &mut tcp, deadline) {
        shared.metrics.inc("hook_errors_total", &[("kind", "handshake")]);
        return Err(format!("TLS handshake failed: {e}"));
    }
    tcp.set_write_timeout(Some(shared.limits.handshake_timeout.max(Duration::from_secs(10))))
        .map_err(|e| e.to_string())?;
    // From here on poll() does the waiting; the write timeouts bound a peer that stops reading.
    tcp.set_read_timeout(None).map_err(|e| e.to_string())?;
    let mut unix = shared.backend.connect().map_err(|e| {
        shared.metrics.inc("hook_errors_total", &[("kind", "backend")]);
        format!("cannot reach the HTTP layer: {e}")
    })?;
    unix.set_write_timeout(Some(shared.limits.idle_timeout))
        .map_err(|e| e.to_string())?;
    let result = pump(&mut tcp, &mut unix, &mut tls, conn, shared);
    tls.send_close_notify();
    while tls.wants_write() {
        if tls.write_tls(&mut tcp).is_err() {
            break;
        }
    }
    if let Ok(Some(discard)) = &result {
        linger(&mut tcp, *discard);
    }
    let _ = tcp.shutdown(Direction::Both);
    result.map(|_| ())
}

/// Drives the TLS handshake to its end, or fails once `deadline` has passed.
fn handshake(tls: &mut ServerConnection, tcp: &mut TcpStream, deadline: Instant) -> std::io::Result<()> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake deadline passed");
    loop {
        while tls.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            tcp.set_write_timeout(Some(left))?;
            tls.write_tls(tcp)?;
        }
        if !tls.is_handshaking() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        tcp.set_read_timeout(Some(left))?;
        match tls.read_tls(tcp) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(timed_out()),
            Err(e) => return Err(e),
        }
        if let Err(e) = tls.process_new_packets() {
            // Send the alert, then give up.
            let _ = tls.write_tls(tcp);
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
    }
}

/// Carries bytes both ways on one thread: TLS records from the client are decrypted and
/// framed ([`Framer`]), each complete request is written to the HTTP layer; its responses are
/// encrypted and sent to the client. Ends when the HTTP layer closes its side (after the
/// client closed theirs, or on its own), after `idle_timeout` with nothing from either side,
/// or when the front end answers a request itself (`Ok(Some(bytes to discard))`, see
/// [`linger`]): refused, or not complete by its deadline.
///
/// tiny_http writes a response's head and body with two separate writes. Sending each as it
/// comes would cost the client two TLS records, two TCP segments and two wake-ups per
/// request, so once a response head with a `Content-Length` has arrived, the pump waits for
/// the rest of that body (each read at most [`COALESCE_WAIT`], so a body that does not
/// follow, as for HEAD, only delays the head by that much) and encrypts the response in one go.
fn pump(
    tcp: &mut TcpStream,
    unix: &mut UnixStream,
    tls: &mut ServerConnection,
    conn: &Conn,
    shared: &Shared,
) -> Result<Option<u64>, String> {
    let conns = &shared.conns;
    let mut buf = vec![0u8; 8 * 1024];
    let mut framer = Framer::new(shared.limits.request);
    let mut held = Held { shared, bytes: 0 };
    let mut pending = Vec::new();
    let mut client_open = true;
    loop {
        // Records already buffered (e.g. a request sent right behind the client's Finished,
        // which the handshake read but did not decrypt) must be processed before waiting.
        if client_open {
            let flow = forward_requests(tls, tcp, unix, &mut framer, conn, shared);
            held.update(framer.buffered());
            match flow? {
                Flow::Open => {}
                Flow::Closed => client_open = false,
                Flow::Answered(discard) => return Ok(Some(discard)),
            }
        }
        let deadline = framer.deadline().filter(|_| client_open);
        let mut timeout = match deadline {
            Some(d) => shared
                .limits
                .idle_timeout
                .min(d.saturating_duration_since(Instant::now())),
            None => shared.limits.idle_timeout,
        };
        // Over the budget, a connection holding part of a request waits before reading more.
        let over_budget = framer.partial() && shared.buffered.load(Ordering::SeqCst) > shared.buffer_budget();
        if over_budget {
            timeout = timeout.min(Duration::from_millis(10));
        }
        let reading = client_open && !over_budget;
        let ready = wait(tcp, reading, unix, timeout).map_err(|e| format!("poll: {e}"))?;
        let Some((from_client, from_backend)) = ready else {
            continue; // Interrupted by a signal.
        };
        if !from_client && !from_backend {
            if over_budget && deadline.is_none_or(|d| Instant::now() < d) {
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                answer(tls, tcp, &framer.timed_out(), shared)?;
                return Ok(Some(0));
            }
            if deadline.is_some() && timeout < shared.limits.idle_timeout {
                continue; // Woken early for a deadline that has not quite passed.
            }
            return Err("idle for too long".into());
        }
        if from_backend {
            match read_some(unix, &mut pending) {
                Chunk::Data => {}
                Chunk::Nothing => continue,
                Chunk::End => return Ok(None),
            }
            let mut open = true;
            while missing_body(&pending).is_some()
                && matches!(wait(tcp, false, unix, COALESCE_WAIT), Ok(Some((_, true))))
            {
                match read_some(unix, &mut pending) {
                    Chunk::Data => {}
                    Chunk::Nothing => break,
                    Chunk::End => {
                        open = false;
                        break;
                    }
                }
            }
            tls.writer().write_all(&pending).map_err(|e| format!("TLS: {e}"))?;
            pending.clear();
            while tls.wants_write() {
                tls.write_tls(tcp).map_err(|e| format!("writing to the client: {e}"))?;
            }
            conn.last_out.store(conns.event(), Ordering::SeqCst);
            conn.set_state(if framer.partial() { WAITING_ON_CLIENT } else { IDLE });
            if !open {
                return Ok(None);
            }
        }
        if from_client {
            let n = match tcp.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading from the client: {e}")),
            };
            if n == 0 {
                // The client (or the drain) closed its side: let the HTTP layer finish.
                client_open = false;
                let _ = unix.shutdown(Direction::Write);
                continue;
            }
            conn.last_in.store(conns.event(), Ordering::SeqCst);
            let mut incoming = &buf[..n];
            while !incoming.is_empty() && client_open {
                tls.read_tls(&mut incoming).map_err(|e| format!("TLS: {e}"))?;
                let flow = forward_requests(tls, tcp, unix, &mut framer, conn, shared);
                held.update(framer.buffered());
                match flow? {
                    Flow::Open => {}
                    Flow::Closed => client_open = false,
                    Flow::Answered(discard) => return Ok(Some(discard)),
                }
            }
        }
    }
}

/// What [`forward_requests`] leaves the connection in.
enum Flow {
    Open,
    /// The client sent close_notify.
    Closed,
    /// The front end answered a request itself; close after discarding this many bytes.
    Answered(u64),
}

/// Decrypts the TLS records rustls holds, frames them, and writes each complete request to
/// the HTTP layer, then sends whatever rustls has to say (an alert first if the records were
/// bad). A request the framer refuses is answered here.
fn forward_requests(
    tls: &mut ServerConnection,
    tcp: &mut TcpStream,
    unix: &mut UnixStream,
    framer: &mut Framer,
    conn: &Conn,
    shared: &Shared,
) -> Result<Flow, String> {
    if let Err(e) = tls.process_new_packets() {
        // Send the alert, then give up on this connection.
        let _ = tls.write_tls(tcp);
        return Err(format!("TLS: {e}"));
    }
    let mut plain = Vec::new();
    let closed = drain_plaintext(tls, &mut plain);
    let now = Instant::now();
    if !plain.is_empty() {
        conn.last_in.store(shared.conns.event(), Ordering::SeqCst);
        if conn.state.load(Ordering::SeqCst) == IDLE {
            conn.set_state(WAITING_ON_CLIENT);
        }
        framer.push(&plain, now);
    }
    loop {
        match framer.next(now) {
            Step::NeedMore => break,
            Step::Forward(request) => {
                let event = shared.conns.event();
                conn.last_in.store(event, Ordering::SeqCst);
                conn.forwarded.store(event, Ordering::SeqCst);
                conn.set_state(IN_FLIGHT);
                unix.write_all(&request).map_err(|e| format!("HTTP layer: {e}"))?;
            }
            Step::Continue => {
                tls.writer()
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .map_err(|e| format!("TLS: {e}"))?;
            }
            Step::Reject(reject) => {
                answer(tls, tcp, &reject, shared)?;
                return Ok(Flow::Answered(reject.discard));
            }
        }
    }
    while tls.wants_write() {
        tls.write_tls(tcp).map_err(|e| format!("writing to the client: {e}"))?;
    }
    if closed {
        let _ = unix.shutdown(Direction::Write);
        return Ok(Flow::Closed);
    }
    Ok(Flow::Open)
}

/// Sends the front end's own answer to a refused request (`Connection: close`) and counts it.
fn answer(tls: &mut ServerConnection, tcp: &mut TcpStream, reject: &Reject, shared: &Shared) -> Result<(), String> {
    shared
        .metrics
        .inc("hook_requests_total", &[("code", &reject.status.to_string())]);
    shared.metrics.inc("hook_errors_total", &[("kind", reject.kind)]);
    let reason = match reject.status {
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reject.status,
        reject.message.len(),
        reject.message
    );
    tls.writer()
        .write_all(response.as_bytes())
        .map_err(|e| format!("TLS: {e}"))?;
    while tls.wants_write() {
        tls.write_tls(tcp).map_err(|e| format!("writing to the client: {e}"))?;
    }
    Ok(())
}

/// Bytes and time [`linger`] spends at most on a refused client's unread body.
const LINGER_MAX_BYTES: u64 = 16 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// After the front end's own answer: ends our side, then reads and drops what the client is
/// still sending (its announced body, bounded), as Go's server does, so that a client that
/// writes its whole body before reading sees the answer instead of a connection reset.
fn linger(tcp: &mut TcpStream, discard: u64) {
    let _ = tcp.shutdown(Direction::Write);
    let mut left = discard.min(LINGER_MAX_BYTES) + 64 * 1024;
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = [0u8; 16 * 1024];
    while left > 0 {
        let rest = deadline.saturating_duration_since(Instant::now());
        if rest.is_zero() || tcp.set_read_timeout(Some(rest)).is_err() {
            return;
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

/// Moves decrypted bytes into `out`; returns true when the client sent close_notify.
fn drain_plaintext(tls: &mut ServerConnection, out: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8 * 1024];
    loop {
        match tls.reader().read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return false, // WouldBlock: nothing more for now.
        }
    }
}

/// Waits until the client (when `client_open`) or the HTTP layer has something to read (data,
/// end of stream or an error), at most `timeout`; says which (neither: the time ran out).
/// `None` when a signal interrupted the wait.
fn wait(
    tcp: &TcpStream,
    client_open: bool,
    unix: &UnixStream,
    timeout: Duration,
) -> std::io::Result<Option<(bool, bool)>> {
    let mut fds = [
        libc::pollfd {
            fd: unix.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: tcp.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let count: libc::nfds_t = if client_open { 2 } else { 1 };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fds` holds `count` valid pollfds for descriptors kept open during the call.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, millis) };
    if ready < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let any = |f: &libc::pollfd| f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok(Some((client_open && any(&fds[1]), any(&fds[0]))))
}

/// How long the pump waits for more of a response body (see [`pump`]);
/// tiny_http writes the body microseconds after the head.
const COALESCE_WAIT: Duration = Duration::from_millis(5);

/// Responses larger than this are sent as they come, without waiting for the whole body.
const COALESCE_MAX: usize = 1024 * 1024;

enum Chunk {
    /// Bytes were appended.
    Data,
    /// The read was interrupted by a signal.
    Nothing,
    /// End of stream or a hard error.
    End,
}

/// Reads what is there (up to 8 KiB) and appends it to `buf`.
fn read_some(unix: &mut UnixStream, buf: &mut Vec<u8>) -> Chunk {
    let mut chunk = [0u8; 8 * 1024];
    match unix.read(&mut chunk) {
        Ok(0) => Chunk::End,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Chunk::Data
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Chunk::Nothing,
        Err(_) => Chunk::End,
    }
}

/// When `data` starts with a complete HTTP response head that has a `Content-Length`, and not
/// all of that body is in `data` yet: how many bytes are still to come. `None` otherwise
/// (anything else is passed on as it is), also for statuses that never carry a body.
fn missing_body(data: &[u8]) -> Option<usize> {
    let status = data.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    if status[0] == b'1' || status == b"204" || status == b"304" {
        return None;
    }
    let head_len = data.windows(4).take(16 * 1024).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&data[..head_len]).ok()?;
    let length: usize = head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    let total = head_len.checked_add(length).filter(|&t| t <= COALESCE_MAX)?;
    (data.len() < total).then(|| total - data.len())
}

#[cfg(test)]
mod tests {
    use super::missing_body;

    #[test]
    fn a_head_waits_for_its_body() {
        let head = b"HTTP/1.1 200 OK\r\nServer: tiny-http\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(missing_body(head), Some(10));
        let mut partial = head.to_vec();
        partial.extend_from_slice(b"0123");
        assert_eq!(missing_body(&partial), Some(6));
        partial.extend_from_slice(b"456789");
        assert_eq!(missing_body(&partial), None);
        // A following pipelined response does not make the first one wait.
        partial.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(missing_body(&partial), None);
    }

    #[test]
    fn anything_else_is_sent_as_it_comes() {
        // No complete head, no length, no HTTP, a body too large to hold, a bad length.
        assert_eq!(missing_body(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n"), None);
        assert_eq!(
            missing_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
        assert_eq!(missing_body(b"{\"Content-Length\": 5}\r\n\r\n"), None);
        assert_eq!(
            missing_body(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"),
            None
        );
        assert_eq!(missing_body(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), None);
        assert_eq!(
            missing_body(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
            None
        );
        assert_eq!(missing_body(b""), None);
    }
}
