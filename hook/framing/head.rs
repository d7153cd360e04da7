//! The request head: the request line and headers checked the way Go's `net/http` server
//! checks them (one `Content-Length`, no `Transfer-Encoding` beside it, printable ASCII values,
//! no obsolete line folding, `Expect: 100-continue` only), the API server's `?timeout=` read,
//! and the head rewritten for the HTTP layer (the deadline header ours alone).

use std::time::{Duration, Instant};

use super::{Body, Head, Limits, Reject, DEADLINE_HEADER, MAX_API_TIMEOUT};

pub(super) fn head_too_large(max: usize) -> Reject {
    Reject {
        status: 431,
        kind: "header_too_large",
        message: format!("request head larger than {max} bytes\n"),
        discard: 0,
    }
}

pub(super) fn bad(message: impl Into<String>) -> Reject {
    Reject {
        status: 400,
        kind: "bad_request",
        message: message.into(),
        discard: 0,
    }
}

/// Checks a complete head (`raw`, without the final CRLFCRLF) and rewrites it.
pub(super) fn parse(raw: &[u8], len: usize, started: Instant, limits: &Limits) -> Result<Head, Reject> {
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
pub(super) fn api_timeout(target: &str) -> Option<Duration> {
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
