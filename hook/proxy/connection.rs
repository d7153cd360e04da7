//! One client connection from its handshake to its close: the TLS handshake within one
//! deadline, the pump (see `pump`), close_notify, and the front end's own answers to refused
//! requests, after which the client's unread body is read and dropped (bounded) so a client
//! that writes its body first still sees the answer.

use std::io::{Read, Write};
use std::net::{Shutdown as Direction, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use super::pump::pump;
use super::{Conn, Shared};
use crate::framing::Reject;
use crate::metrics;

/// Handshake, then pump until either side is done.
pub(super) fn serve(mut tcp: TcpStream, conn: &Arc<Conn>, shared: &Arc<Shared>) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let mut tls = ServerConnection::new(Arc::clone(&shared.tls)).map_err(|e| e.to_string())?;
    // One deadline for the whole handshake: each read and write may only take what is left,
    // so a client sending a byte at a time cannot stretch it. (rustls' `complete_io` reads
    // again and again within one call, so it is not used here.)
    let deadline = Instant::now() + shared.limits.handshake_timeout;
    if let Err(e) = handshake(&mut tls, &mut tcp, deadline) {
        shared.metrics.inc(&metrics::ERRORS, ["handshake"]);
        return Err(format!("TLS handshake failed: {e}"));
    }
    tcp.set_write_timeout(Some(shared.limits.handshake_timeout.max(Duration::from_secs(10))))
        .map_err(|e| e.to_string())?;
    // From here on poll() does the waiting; the write timeouts bound a peer that stops reading.
    tcp.set_read_timeout(None).map_err(|e| e.to_string())?;
    let mut unix = shared.backend.connect().map_err(|e| {
        shared.metrics.inc(&metrics::ERRORS, ["backend"]);
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

/// Sends the front end's own answer to a refused request (`Connection: close`) and counts it.
pub(super) fn answer(
    tls: &mut ServerConnection,
    tcp: &mut TcpStream,
    reject: &Reject,
    shared: &Shared,
) -> Result<(), String> {
    shared.metrics.inc(&metrics::REQUESTS, [&reject.status.to_string()]);
    shared.metrics.inc(&metrics::ERRORS, [reject.kind]);
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
    send(tls, tcp, response.as_bytes())
}

/// Encrypts `data` and writes it to the client, however large: rustls takes at most its
/// buffer limit (64 KiB) of plaintext at a time, so each piece is written out before the next.
pub(super) fn send(tls: &mut ServerConnection, tcp: &mut impl Write, mut data: &[u8]) -> Result<(), String> {
    loop {
        let taken = tls.writer().write(data).map_err(|e| format!("TLS: {e}"))?;
        data = &data[taken..];
        if taken == 0 && !data.is_empty() && !tls.wants_write() {
            return Err("TLS: the connection takes no more data".into());
        }
        while tls.wants_write() {
            tls.write_tls(tcp).map_err(|e| format!("writing to the client: {e}"))?;
        }
        if data.is_empty() {
            return Ok(());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::send;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::io::Read;
    use std::sync::Arc;

    /// A server and a client connection that completed their handshake in memory.
    fn pair() -> (rustls::ServerConnection, rustls::ClientConnection) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let server = rustls::ServerConfig::builder_with_provider(lifeboat::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(lifeboat::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
        for _ in 0..10 {
            if !s.is_handshaking() && !c.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!s.is_handshaking() && !c.is_handshaking());
        (s, c)
    }

    #[test]
    fn answers_larger_than_the_tls_buffer_are_sent_whole() {
        // rustls takes at most 64 KiB of plaintext before its records are written out: a
        // single write_all of a larger answer fails half-way and the connection is dropped.
        let (mut server, mut client) = pair();
        let answer: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        send(&mut server, &mut wire, &answer).expect("sent");
        let mut input = wire.as_slice();
        let mut got = Vec::new();
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            client.process_new_packets().unwrap();
            let mut chunk = vec![0; 64 * 1024];
            while let Ok(n) = client.reader().read(&mut chunk) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
        }
        assert_eq!(got.len(), answer.len());
        assert!(got == answer);
    }
}
