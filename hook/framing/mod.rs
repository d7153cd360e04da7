//! HTTP/1.1 request framing in the TLS front end, before tiny_http sees a byte.
//!
//! tiny_http 0.12 reads a request head without any size limit, drops the connection on a
//! header value that is not ASCII, takes the first of two different `Content-Length`s, and
//! hands a request to a worker as soon as its head is in, so a client trickling its body holds
//! a worker. The [`Framer`] sits in the pump (see `proxy`) and only ever forwards complete
//! requests: it collects a head of at most [`Limits::max_head`] bytes, checks its framing the
//! way Go's `net/http` server does, collects the body (`Content-Length` or chunked, at most
//! [`Limits::max_body`]), and then passes the request on with a `Content-Length` body. What it
//! refuses it answers itself ([`Step::Reject`]) and the connection closes.
//!
//! Each request also gets a deadline: [`Limits::request_timeout`] from its first byte, or the
//! API server's `?timeout=` when shorter. A request not complete by then is answered 408; a
//! complete one carries the deadline to the HTTP layer in the [`DEADLINE_HEADER`] (any
//! client-sent header of that name is dropped), which answers 504 instead of working past it.
//!
//! Here: the [`Framer`] (the state machine); `head`: the request line and headers; `chunked`:
//! chunked bodies.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod chunked;
mod head;

use chunked::dechunk;
#[cfg(test)]
use head::api_timeout;
use head::{head_too_large, parse};

/// The header carrying a request's deadline to the HTTP layer: microseconds since [`epoch`].
pub const DEADLINE_HEADER: &str = "x-lifeboat-deadline-us";

/// The longest `?timeout=` the API server sends (a webhook's `timeoutSeconds` is 1-30).
const MAX_API_TIMEOUT: Duration = Duration::from_secs(30);

/// Chunk-size lines and trailer lines longer than this are refused.
const MAX_LINE: usize = 4096;

/// The process-wide instant deadlines are counted from.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `instant` as microseconds since [`epoch`] (0 for anything before it).
pub fn to_micros(instant: Instant) -> u64 {
    u64::try_from(instant.saturating_duration_since(epoch()).as_micros()).unwrap_or(u64::MAX)
}

/// The instant `micros` after [`epoch`].
pub fn from_micros(micros: u64) -> Instant {
    epoch() + Duration::from_micros(micros)
}

/// What one request may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line and headers, CRLFs included.
    pub max_head: usize,
    pub max_body: usize,
    /// From a request's first byte to its last.
    pub request_timeout: Duration,
}

/// A refusal the front end answers itself, then closes the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    /// For `hook_errors_total{kind}`.
    pub kind: &'static str,
    pub message: String,
    /// Body bytes the client announced, read and thrown away (bounded) before closing, so a
    /// client that writes its whole body before reading still gets the answer.
    pub discard: u64,
}

/// The result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// No complete request yet.
    NeedMore,
    /// One complete request, rewritten (Content-Length framing, deadline header), to forward.
    Forward(Vec<u8>),
    /// The client waits for `100 Continue` before sending its body: send it, then go on.
    Continue,
    Reject(Reject),
}

struct Head {
    /// The rewritten head without its final CRLF.
    lines: Vec<u8>,
    /// Bytes the head took in the input.
    len: usize,
    body: Body,
    deadline: Instant,
    expect_continue: bool,
}

enum Body {
    Length(usize),
    Chunked,
}

/// Collects the requests of one connection; see the module documentation.
pub struct Framer {
    limits: Limits,
    buf: Vec<u8>,
    /// How far `buf` was searched for the end of the head.
    scanned: usize,
    /// When the request in `buf` began (its first byte).
    started: Option<Instant>,
    head: Option<Head>,
    continue_sent: bool,
    /// A chunked body decoded so far, and where in the input after the head decoding stopped.
    chunks: Vec<u8>,
    chunks_at: usize,
}

impl Framer {
    pub fn new(limits: Limits) -> Framer {
        Framer {
            limits,
            buf: Vec::new(),
            scanned: 0,
            started: None,
            head: None,
            continue_sent: false,
            chunks: Vec::new(),
            chunks_at: 0,
        }
    }

    /// Adds bytes received from the client at `now`.
    pub fn push(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        if self.started.is_none() {
            self.started = Some(now);
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held for the request being collected.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.chunks.len()
    }

    /// Whether part of a request has arrived and not yet been forwarded.
    pub fn partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// When the request being collected must be complete (`None`: nothing is being collected).
    pub fn deadline(&self) -> Option<Instant> {
        let started = self.started?;
        Some(match &self.head {
            Some(h) => h.deadline,
            None => started + self.limits.request_timeout,
        })
    }

    /// The answer for a request that missed its deadline.
    pub fn timed_out(&self) -> Reject {
        Reject {
            status: 408,
            kind: "timeout",
            message: format!(
                "the request did not arrive within {} ms\n",
                self.limits.request_timeout.as_millis()
            ),
            discard: 0,
        }
    }

    /// The next step for the bytes received so far; call again after `Forward` or `Continue`.
    pub fn next(&mut self, now: Instant) -> Step {
        if self.buf.is_empty() {
            return Step::NeedMore;
        }
        if self.head.is_none() {
            match self.parse_head(now) {
                Ok(Some(head)) => self.head = Some(head),
                Ok(None) => return Step::NeedMore,
                Err(reject) => return Step::Reject(reject),
            }
        }
        let head = self.head.as_ref().expect("parsed above");
        let (body, used) = match &head.body {
            Body::Length(n) => {
                if self.buf.len() - head.len < *n {
                    return self.wait_for_body();
                }
                (self.buf[head.len..head.len + n].to_vec(), head.len + n)
            }
            Body::Chunked => {
                let data = &self.buf[head.len..];
                match dechunk(data, &mut self.chunks, &mut self.chunks_at, self.limits.max_body) {
                    Ok(Some(used)) => (std::mem::take(&mut self.chunks), head.len + used),
                    Ok(None) => return self.wait_for_body(),
                    Err(reject) => return Step::Reject(reject),
                }
            }
        };
        let head = self.head.take().expect("parsed above");
        let mut out = head.lines;
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        out.extend_from_slice(format!("{DEADLINE_HEADER}: {}\r\n\r\n", to_micros(head.deadline)).as_bytes());
        out.extend_from_slice(&body);
        self.buf.drain(..used);
        self.scanned = 0;
        self.continue_sent = false;
        self.chunks_at = 0;
        self.started = if self.buf.is_empty() { None } else { Some(now) };
        Step::Forward(out)
    }

    fn wait_for_body(&mut self) -> Step {
        let head = self.head.as_ref().expect("called with a head");
        if head.expect_continue && !self.continue_sent && self.buf.len() == head.len {
            self.continue_sent = true;
            return Step::Continue;
        }
        Step::NeedMore
    }

    /// Parses the head once it is complete: `Ok(None)` while it is not.
    fn parse_head(&mut self, now: Instant) -> Result<Option<Head>, Reject> {
        // Leading empty lines before a request line are ignored (RFC 9112 §2.2).
        while self.buf.starts_with(b"\r\n") {
            self.buf.drain(..2);
        }
        let from = self.scanned.saturating_sub(3);
        let end = self.buf[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| from + p);
        let Some(end) = end else {
            self.scanned = self.buf.len();
            if self.buf.len() > self.limits.max_head {
                return Err(head_too_large(self.limits.max_head));
            }
            return Ok(None);
        };
        let len = end + 4;
        if len > self.limits.max_head {
            return Err(head_too_large(self.limits.max_head));
        }
        let started = self.started.unwrap_or(now);
        parse(&self.buf[..end], len, started, &self.limits).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_head: 1024,
            max_body: 100,
            request_timeout: Duration::from_secs(10),
        }
    }

    fn run(input: &[u8]) -> Vec<Step> {
        let mut f = Framer::new(limits());
        let now = Instant::now();
        f.push(input, now);
        let mut steps = Vec::new();
        loop {
            match f.next(now) {
                Step::NeedMore => return steps,
                s @ Step::Reject(_) => {
                    steps.push(s);
                    return steps;
                }
                s => steps.push(s),
            }
        }
    }

    fn status(steps: &[Step]) -> Option<u16> {
        steps.iter().find_map(|s| match s {
            Step::Reject(r) => Some(r.status),
            _ => None,
        })
    }

    fn forwarded(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Forward(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn complete_requests_are_forwarded_with_length_framing() {
        let steps =
            run(b"POST /mutate?timeout=3s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n\r\n");
        let out = forwarded(&steps);
        assert_eq!(out.len(), 2, "{steps:?}");
        assert!(out[0].starts_with("POST /mutate?timeout=3s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"));
        assert!(
            out[0].contains(DEADLINE_HEADER) && out[0].ends_with("\r\n\r\n{}"),
            "{}",
            out[0]
        );
        assert!(out[1].contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let steps =
            run(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\n{}\r\n1\r\n \r\n0\r\nT: v\r\n\r\n");
        let out = forwarded(&steps);
        assert_eq!(out.len(), 1, "{steps:?}");
        assert!(
            out[0].contains("Content-Length: 3\r\n") && out[0].ends_with("{} "),
            "{}",
            out[0]
        );
        assert!(!out[0].to_ascii_lowercase().contains("transfer-encoding"));
    }

    #[test]
    fn framing_problems_are_answered() {
        for (input, code) in [
            (
                &b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"[..],
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 2, 3\r\n\r\n{}", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nBad Name: a\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n", 413),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            (b"POST / HTTP/2.0\r\n\r\n", 505),
            (b"POST /\r\n\r\n", 400),
        ] {
            assert_eq!(status(&run(input)), Some(code), "{}", String::from_utf8_lossy(input));
        }
        // The same length twice is fine, as in Go.
        let ok = run(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(forwarded(&ok).len(), 1);
        // The 413 says how much body to read and drop before closing.
        let Some(Step::Reject(r)) = run(b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n").pop() else {
            panic!()
        };
        assert_eq!((r.status, r.discard), (413, 5000));
    }

    #[test]
    fn the_head_is_bounded_even_without_its_end() {
        let mut f = Framer::new(limits());
        let now = Instant::now();
        f.push(b"POST / HTTP/1.1\r\n", now);
        for _ in 0..100 {
            f.push(b"X-A: 0123456789\r\n", now);
            if let Step::Reject(r) = f.next(now) {
                assert_eq!(r.status, 431);
                return;
            }
        }
        panic!("an endless head was never refused");
    }

    #[test]
    fn a_client_deadline_header_is_replaced_and_the_api_timeout_shortens_the_deadline() {
        let mut f = Framer::new(limits());
        let now = Instant::now();
        f.push(
            b"POST /mutate?timeout=2s HTTP/1.1\r\nX-Lifeboat-Deadline-Us: 1\r\nContent-Length: 5\r\n\r\n{",
            now,
        );
        assert_eq!(f.next(now), Step::NeedMore);
        assert_eq!(f.deadline(), Some(now + Duration::from_secs(2)));
        f.push(b"}   ", now);
        let Step::Forward(out) = f.next(now) else { panic!() };
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches(DEADLINE_HEADER).count(), 1, "{text}");
        assert!(!text.contains(": 1\r\n"), "{text}");
        assert_eq!(api_timeout("/mutate?x=1&timeout=1m0s"), Some(Duration::from_secs(30)));
        assert_eq!(api_timeout("/mutate?timeout=500ms"), Some(Duration::from_millis(500)));
        assert_eq!(api_timeout("/mutate"), None);
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let mut f = Framer::new(limits());
        let now = Instant::now();
        f.push(
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            now,
        );
        assert_eq!(f.next(now), Step::Continue);
        assert_eq!(f.next(now), Step::NeedMore);
        f.push(b"{}", now);
        assert!(matches!(f.next(now), Step::Forward(_)));
    }
}
