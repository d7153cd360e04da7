//! The bytes of one connection, both ways on one thread: decrypted TLS records framed into
//! complete requests for the HTTP layer, its responses encrypted (each in one TLS record when it
//! can wait for the body) for the client, poll() waiting on both sockets with the request's
//! deadline and the idle timeout, and the shared budget of incomplete requests.

use std::io::{Read, Write};
use std::net::{Shutdown as Direction, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use super::connection::{answer, send};
use super::{Conn, Held, Shared, IDLE, IN_FLIGHT, WAITING_ON_CLIENT};
use crate::framing::{Framer, Step};

/// Carries bytes both ways on one thread: TLS records from the client are decrypted and
/// framed ([`Framer`]), each complete request is written to the HTTP layer; its responses are
/// encrypted and sent to the client. Ends when the HTTP layer closes its side (after the
/// client closed theirs, or on its own), after `idle_timeout` with nothing from either side,
/// or when the front end answers a request itself (`Ok(Some(bytes to discard))`, see
/// [`linger`](super::connection)): refused, or not complete by its deadline.
///
/// tiny_http writes a response's head and body with two separate writes. Sending each as it
/// comes would cost the client two TLS records, two TCP segments and two wake-ups per
/// request, so once a response head with a `Content-Length` has arrived, the pump waits for
/// the rest of that body (each read at most [`COALESCE_WAIT`], so a body that does not
/// follow, as for HEAD, only delays the head by that much) and encrypts the response in one go.
pub(super) fn pump(
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
            send(tls, tcp, &pending)?;
            pending.clear();
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
            Step::Continue => send(tls, tcp, b"HTTP/1.1 100 Continue\r\n\r\n")?,
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
