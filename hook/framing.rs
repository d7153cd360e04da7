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

use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

fn head_too_large(max: usize) -> Reject {
    Reject {
        status: 431,
        kind: "header_too_large",
        message: format!("request head larger than {max} bytes\n"),
        discard: 0,
    }
}

fn bad(message: impl Into<String>) -> Reject {
    Reject {
        status: 400,
        kind: "bad_request",
        message: message.into(),
        discard: 0,
    }
}

/// Checks a complete head (`raw`, without the final CRLFCRLF) and rewrites it.
fn parse(raw: &[u8], len: usize, started: Instant, limits: &Limits) -> Result<Head, Reject> {
    let mut lines = raw.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or(b"");
    let request_line = std::str::from_utf8(request_line)
        .ok()
        .filter(|l| l.is_ascii() && !l.bytes().any(|b| b.is_ascii_control()))
        .ok_or_else(|| bad("malformed request line\n"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line\n"));
    };
    if method.is_empty() || !method.bytes().all(is_token) || target.is_empty() {
        return Err(bad("malformed request line\n"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Reject {
            status: 505,
            kind: "bad_request",
            message: "only HTTP/1.1 and HTTP/1.0 are served\n".into(),
            discard: 0,
        });
    }
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(request_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for line in lines {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(bad("obsolete line folding in the request head\n"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("a header line without ':'\n"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().copied().all(is_token) {
            return Err(bad("a header name is not a token\n"));
        }
        let value = trim(&line[colon + 1..]);
        if value.iter().any(|&b| b >= 0x80 || (b.is_ascii_control() && b != b'\t')) {
            return Err(bad(format!(
                "the value of header {} is not printable ASCII\n",
                String::from_utf8_lossy(name)
            )));
        }
        let name_str = std::str::from_utf8(name).expect("tokens are ASCII");
        let value_str = std::str::from_utf8(value).expect("checked ASCII");
        if name_str.eq_ignore_ascii_case("content-length") {
            // Go's server: several values are refused unless they are all the same.
            for v in value_str.split(',').map(str::trim) {
                let n: u64 = v
                    .parse()
                    .ok()
                    .filter(|_| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad("invalid Content-Length\n"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("conflicting Content-Length headers\n"));
                }
                length = Some(n);
            }
            continue;
        }
        if name_str.eq_ignore_ascii_case("transfer-encoding") {
            if !value_str.eq_ignore_ascii_case("chunked") || chunked {
                return Err(Reject {
                    status: 501,
                    kind: "bad_request",
                    message: "only Transfer-Encoding: chunked is supported\n".into(),
                    discard: 0,
                });
            }
            chunked = true;
            continue;
        }
        if name_str.eq_ignore_ascii_case("expect") {
            if value_str.eq_ignore_ascii_case("100-continue") {
                expect_continue = true;
                continue;
            }
            return Err(Reject {
                status: 417,
                kind: "bad_request",
                message: "only Expect: 100-continue is supported\n".into(),
                discard: 0,
            });
        }
        if name_str.eq_ignore_ascii_case(DEADLINE_HEADER) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if chunked && length.is_some() {
        return Err(bad("both Transfer-Encoding and Content-Length\n"));
    }
    if let Some(n) = length.filter(|&n| n > limits.max_body as u64) {
        return Err(Reject {
            status: 413,
            kind: "too_large",
            message: format!("request body larger than {} bytes\n", limits.max_body),
            discard: n,
        });
    }
    let timeout = api_timeout(target).map_or(limits.request_timeout, |t| t.min(limits.request_timeout));
    Ok(Head {
        lines: out,
        len,
        body: if chunked {
            Body::Chunked
        } else {
            Body::Length(length.unwrap_or(0) as usize)
        },
        deadline: started + timeout,
        expect_continue: expect_continue && (chunked || length.unwrap_or(0) > 0),
    })
}

/// The `timeout` query parameter the API server appends (`/mutate?timeout=10s`).
pub fn api_timeout(target: &str) -> Option<Duration> {
    let query = target.split_once('?')?.1;
    let value = query.split('&').find_map(|kv| kv.strip_prefix("timeout="))?;
    crate::annotations::parse_go_duration(value)
        .ok()
        .map(|t| t.min(MAX_API_TIMEOUT))
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Decodes a chunked body from the start of `data` into `body`, going on from `at` (each
/// complete chunk is decoded once, however the bytes trickle in): `Ok(None)` until it is
/// complete, then the bytes it took (trailers included, and dropped).
fn dechunk(data: &[u8], body: &mut Vec<u8>, done: &mut usize, max_body: usize) -> Result<Option<usize>, Reject> {
    let mut at = *done;
    loop {
        *done = at;
        let Some(line) = line_at(data, at)? else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(line.split(|&b| b == b';').next().unwrap_or(b""))
            .map_err(|_| bad("invalid chunk size\n"))?
            .trim();
        let size = usize::from_str_radix(size_text, 16)
            .ok()
            .filter(|_| !size_text.is_empty() && size_text.len() <= 16)
            .ok_or_else(|| bad("invalid chunk size\n"))?;
        at += line.len() + 2;
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                let Some(trailer) = line_at(data, at)? else {
                    return Ok(None);
                };
                at += trailer.len() + 2;
                if trailer.is_empty() {
                    return Ok(Some(at));
                }
            }
        }
        if body.len().saturating_add(size) > max_body {
            return Err(Reject {
                status: 413,
                kind: "too_large",
                message: format!("request body larger than {max_body} bytes\n"),
                discard: max_body as u64,
            });
        }
        if data.len() < at + size + 2 {
            return Ok(None);
        }
        if &data[at + size..at + size + 2] != b"\r\n" {
            return Err(bad("a chunk is not followed by CRLF\n"));
        }
        body.extend_from_slice(&data[at..at + size]);
        at += size + 2;
    }
}

/// The line starting at `at` (without its CRLF), `None` until its CRLF has arrived.
fn line_at(data: &[u8], at: usize) -> Result<Option<&[u8]>, Reject> {
    let rest = &data[at.min(data.len())..];
    match rest.windows(2).take(MAX_LINE + 1).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some(&rest[..end])),
        None if rest.len() > MAX_LINE => Err(bad("a chunk-size or trailer line is too long\n")),
        None => Ok(None),
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
