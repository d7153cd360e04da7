//! Streaming GET: an object's bytes handed to a sink as they arrive, with a byte bound, the
//! SHA-256 computed on the way; a failed attempt is retried from the start (the sink is told
//! to start over). Used to read an upload back and to fetch a snapshot to a file.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use ring::digest;

use super::client::{err, status_error, Client, Error, ErrorKind, Target};
use super::sigv4::{self, hex};

/// What was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// Where the bytes go.
pub trait Sink {
    /// Discards what an earlier attempt wrote.
    fn restart(&mut self) -> std::io::Result<()>;
    fn write(&mut self, data: &[u8]) -> std::io::Result<()>;
}

/// Only the hash.
pub struct Discard;

impl Sink for Discard {
    fn restart(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file, truncated at each start.
pub struct ToFile(pub File);

impl Sink for ToFile {
    fn restart(&mut self) -> std::io::Result<()> {
        use std::io::Seek;
        self.0.set_len(0)?;
        self.0.seek(std::io::SeekFrom::Start(0)).map(|_| ())
    }
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all(data)
    }
}

impl Client {
    /// GETs `key` into `sink`, refusing an object over `max_bytes` (announced or sent).
    pub fn get_streamed(&self, key: &str, max_bytes: u64, sink: &mut dyn Sink) -> Result<Fetched, Error> {
        let target = self.target(key, &[]);
        self.retrying(|| {
            sink.restart().map_err(|e| {
                (
                    err(ErrorKind::Other, format!("GET {key}: cannot start the output: {e}")),
                    false,
                )
            })?;
            self.get_once(key, &target, max_bytes, sink)
        })
    }

    /// GETs `key` into a new file at `to` (created, never overwritten).
    pub fn get_to_file(&self, key: &str, to: &Path, max_bytes: u64) -> Result<Fetched, Error> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .map_err(|e| err(ErrorKind::Other, format!("cannot create {}: {e}", to.display())))?;
        let mut sink = ToFile(file);
        let fetched = self.get_streamed(key, max_bytes, &mut sink)?;
        sink.0
            .sync_all()
            .map_err(|e| err(ErrorKind::Other, format!("writing {}: {e}", to.display())))?;
        Ok(fetched)
    }

    fn get_once(
        &self,
        key: &str,
        target: &Target,
        max_bytes: u64,
        sink: &mut dyn Sink,
    ) -> Result<Fetched, (Error, bool)> {
        let mut response = self.send("GET", target, &[], sigv4::EMPTY_SHA256, &[])?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_vec()
                .unwrap_or_default();
            return Err(status_error(status, &body));
        }
        let announced: Option<u64> = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        if announced.is_some_and(|n| n > max_bytes) {
            return Err((
                err(
                    ErrorKind::TooMany,
                    format!("GET {key}: the object is larger than {max_bytes} bytes"),
                ),
                false,
            ));
        }
        let mut reader = response
            .body_mut()
            .with_config()
            .limit(max_bytes.saturating_add(1))
            .reader();
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let kind = if e.kind() == std::io::ErrorKind::TimedOut {
                        ErrorKind::Timeout
                    } else {
                        ErrorKind::Unreachable
                    };
                    return Err((err(kind, format!("GET {key}: reading the body: {e}")), true));
                }
            };
            total += n as u64;
            if total > max_bytes {
                return Err((
                    err(
                        ErrorKind::TooMany,
                        format!("GET {key}: the object is larger than {max_bytes} bytes"),
                    ),
                    false,
                ));
            }
            ctx.update(&buf[..n]);
            sink.write(&buf[..n])
                .map_err(|e| (err(ErrorKind::Other, format!("GET {key}: writing: {e}")), false))?;
        }
        if announced.is_some_and(|n| n != total) {
            return Err((
                err(
                    ErrorKind::Unreachable,
                    format!(
                        "GET {key}: {total} bytes received, {} announced",
                        announced.unwrap_or(0)
                    ),
                ),
                true,
            ));
        }
        Ok(Fetched {
            size: total,
            sha256: hex(ctx.finish().as_ref()),
        })
    }
}
