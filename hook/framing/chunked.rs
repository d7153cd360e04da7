//! Chunked request bodies, decoded as they trickle in (each complete chunk once), bounded by
//! the body limit and the line limit.

use super::head::bad;
use super::{Reject, MAX_LINE};

/// Decodes a chunked body from the start of `data` into `body`, going on from `at` (each
/// complete chunk is decoded once, however the bytes trickle in): `Ok(None)` until it is
/// complete, then the bytes it took (trailers included, and dropped).
pub(super) fn dechunk(
    data: &[u8],
    body: &mut Vec<u8>,
    done: &mut usize,
    max_body: usize,
) -> Result<Option<usize>, Reject> {
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
