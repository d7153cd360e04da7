//! Uploading what a reader yields, of a size not known in advance (a file gzipped on the way):
//! part-size chunks are read one after another; when the input ends within the first part it
//! is one PUT, else a multipart upload of the parts as they come, [`PARALLEL_PARTS`] in flight
//! (aborted on any failure, so no parts are left behind). Memory: the parts in flight and the
//! one being read, nothing on disk.
//!
//! Every body carries its `Content-MD5`, and the ETags are checked as in [`super::multipart`]
//! (the probe first, [`Uploaded::md5_verified`] when the server proved it checks the digests).
//! The part size is not grown to stay within [`MAX_PARTS`] (the size is not known): an input
//! past `MAX_PARTS` parts is an error.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use super::checksum::{self, Probe};
use super::client::{err, Client, Error, ErrorKind};
use super::multipart::{check_etag, Uploaded, MAX_PART, MAX_PARTS, MIN_PART, PARALLEL_PARTS};
use super::object::etag;

/// The input cut in parts: each [`Parts::next_part`] is a full part, or the shorter last one.
pub struct Parts<'a> {
    reader: &'a mut dyn Read,
    part: usize,
    ended: bool,
    /// Bytes read so far.
    pub total: u64,
}

impl<'a> Parts<'a> {
    pub fn new(reader: &'a mut dyn Read, part: usize) -> Parts<'a> {
        Parts {
            reader,
            part,
            ended: false,
            total: 0,
        }
    }

    /// The next part (1 to `part` bytes, reading until it is full or the input ends), `None`
    /// once the input has ended.
    pub fn next_part(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.ended {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(self.part);
        (&mut *self.reader).take(self.part as u64).read_to_end(&mut buf)?;
        if buf.len() < self.part {
            self.ended = true;
        }
        self.total += buf.len() as u64;
        Ok(if buf.is_empty() { None } else { Some(buf) })
    }
}

fn reading(e: std::io::Error) -> Error {
    err(ErrorKind::Other, format!("reading the data to upload: {e}"))
}

impl Client {
    /// Uploads everything `reader` yields as `key` with `headers` (e.g. `x-amz-meta-*`,
    /// `content-type`), in parts of `part_size` bytes (kept within S3's part limits) when it is
    /// more than one part.
    pub fn upload_reader(
        &self,
        reader: &mut dyn Read,
        key: &str,
        part_size: u64,
        headers: &[(&str, &str)],
    ) -> Result<Uploaded, Error> {
        let part = part_size.clamp(MIN_PART, MAX_PART);
        // As in `upload_file`: the probe writes `key` where the server does not check; the
        // upload replaces it, or it is deleted when the upload fails.
        let probe = self.probe_content_md5(key)?;
        let sign_body = probe == Probe::Ignored;
        let mut parts = Parts::new(reader, part as usize);
        let result = (|| {
            let first = parts.next_part().map_err(reading)?.unwrap_or_default();
            let second = if first.len() as u64 == part {
                parts.next_part().map_err(reading)?
            } else {
                None
            };
            match second {
                None => {
                    let etag = self.put_body(key, headers, &first, sign_body)?;
                    Ok((etag, 0))
                }
                Some(second) => self.multipart_stream(&mut parts, key, headers, [first, second], sign_body),
            }
        })();
        let total = parts.total;
        self.uploaded(key, probe, part, result.map(|(etag, count)| (etag, total, count)))
    }

    /// One PUT of `body` with its `Content-MD5`: the ETag.
    fn put_body(&self, key: &str, headers: &[(&str, &str)], body: &[u8], sign_body: bool) -> Result<String, Error> {
        let md5 = checksum::md5(body);
        let header = checksum::content_md5(&md5);
        let mut all = headers.to_vec();
        all.push(("content-md5", header.as_str()));
        let etag = etag(&self.request_body("PUT", key, &[], &all, body, sign_body)?);
        check_etag(&format!("PUT {key}"), &etag, &md5)?;
        Ok(etag)
    }

    /// A multipart upload of `first` parts and the rest of `parts` (aborted on any failure):
    /// the object's ETag and the number of parts.
    fn multipart_stream(
        &self,
        parts: &mut Parts,
        key: &str,
        headers: &[(&str, &str)],
        first: [Vec<u8>; 2],
        sign_body: bool,
    ) -> Result<(String, u32), Error> {
        let upload_id = self.create_multipart(key, headers)?;
        let result = self
            .stream_parts(parts, key, &upload_id, first, sign_body)
            .and_then(|(etags, md5s)| {
                let etag = self.complete_checked(key, &upload_id, &etags, &md5s)?;
                Ok((etag, etags.len() as u32))
            });
        if result.is_err() {
            if let Err(a) = self.abort_multipart(key, &upload_id) {
                log::warn!(key = key, error = a.detail.as_str(); "aborting the multipart upload failed");
            }
        }
        result
    }

    /// Reads the parts here and hands each to one of [`PARALLEL_PARTS`] workers (a rendezvous
    /// channel: a part is read only when a worker is free to take it); the ETags and MD5s in
    /// part order, or the first error (reading stops, the other worker ends its part).
    fn stream_parts(
        &self,
        parts: &mut Parts,
        key: &str,
        upload_id: &str,
        first: [Vec<u8>; 2],
        sign_body: bool,
    ) -> Result<(Vec<String>, Vec<[u8; 16]>), Error> {
        let failed = AtomicBool::new(false);
        let done: Mutex<BTreeMap<u32, (String, [u8; 16])>> = Mutex::new(BTreeMap::new());
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let fail = |e: Error| {
            failed.store(true, Ordering::Relaxed);
            first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
        };
        let mut sent = 0u32;
        std::thread::scope(|scope| {
            let (tx, rx) = sync_channel::<(u32, Vec<u8>)>(0);
            // Held by the workers only: when they have all stopped, a send fails instead of
            // waiting for a taker that will not come.
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..PARALLEL_PARTS {
                let rx = Arc::clone(&rx);
                let (failed, done, fail) = (&failed, &done, &fail);
                scope.spawn(move || {
                    while !failed.load(Ordering::Relaxed) {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((n, body)) = job else { break };
                        let md5 = checksum::md5(&body);
                        let result = self
                            .upload_part(key, upload_id, n, &md5, &body, sign_body)
                            .and_then(|etag| {
                                check_etag(&format!("UploadPart {n} of {key}"), &etag, &md5)?;
                                Ok(etag)
                            });
                        match result {
                            Ok(etag) => {
                                done.lock().unwrap_or_else(|e| e.into_inner()).insert(n, (etag, md5));
                            }
                            Err(e) => fail(e),
                        }
                    }
                });
            }
            drop(rx);
            let [a, b] = first;
            let mut next = [Some(a), Some(b)].into_iter();
            loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let body = match next.next() {
                    Some(b) => b,
                    None => match parts.next_part() {
                        Ok(b) => b,
                        Err(e) => {
                            fail(reading(e));
                            break;
                        }
                    },
                };
                let Some(body) = body else { break };
                if u64::from(sent) >= MAX_PARTS {
                    fail(err(
                        ErrorKind::TooMany,
                        format!("{key}: more than {MAX_PARTS} parts of {} bytes", body.len().max(1)),
                    ));
                    break;
                }
                sent += 1;
                if tx.send((sent, body)).is_err() {
                    break;
                }
            }
            drop(tx);
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
        if done.len() != sent as usize || done.keys().copied().ne(1..=sent) {
            return Err(err(
                ErrorKind::Other,
                format!("{key}: {} of {sent} parts uploaded", done.len()),
            ));
        }
        Ok(done.into_values().unzip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields one byte per read, as a pipe or a compressor may.
    struct Trickle(std::io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    fn cut(len: usize, part: usize) -> Vec<usize> {
        let mut r = Trickle(std::io::Cursor::new(vec![7u8; len]));
        let mut parts = Parts::new(&mut r, part);
        let mut sizes = Vec::new();
        while let Some(p) = parts.next_part().unwrap() {
            sizes.push(p.len());
        }
        assert_eq!(parts.total, len as u64);
        assert!(parts.next_part().unwrap().is_none());
        sizes
    }

    #[test]
    fn parts_are_full_but_the_last_and_the_end_is_seen() {
        // Empty input: no part (one PUT of an empty body).
        assert_eq!(cut(0, 4), Vec::<usize>::new());
        // Exactly one part: one part, then the end (one PUT, not a multipart of one).
        assert_eq!(cut(4, 4), vec![4]);
        // One byte over: a full part and a part of one byte.
        assert_eq!(cut(5, 4), vec![4, 1]);
        assert_eq!(cut(9, 4), vec![4, 4, 1]);
        assert_eq!(cut(3, 4), vec![3]);
    }
}
