//! Uploading a file: one PUT when it fits in one part, else a multipart upload (create,
//! upload the parts two at a time, complete; abort on any failure so no parts are left behind),
//! one part in memory per part in flight. Part size and part count are bounded by S3's limits.
//!
//! Every body carries its `Content-MD5` (and its signed SHA-256). Before the first body, a probe
//! ([`Client::probe_content_md5`]) finds out whether the server refuses a mismatched digest;
//! [`Uploaded::md5_verified`] says so, and then each part's ETag (where it is an MD5) and the
//! object's multipart ETag are compared with the digests sent, too.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::checksum::{self, Probe};
use super::client::{err, Client, Error, ErrorKind};
use super::object::etag;
use super::xml;

/// S3's smallest part (all but the last), largest part, and most parts per upload.
pub const MIN_PART: u64 = 5 << 20;
pub const MAX_PART: u64 = 5 << 30;
pub const MAX_PARTS: u64 = 10_000;
/// Parts in flight at once (each holds one part in memory).
pub const PARALLEL_PARTS: u64 = 2;

/// What was uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub size: u64,
    /// 0 for a single PUT.
    pub parts: u32,
    pub part_size: u64,
    pub etag: String,
    /// The server proved (by refusing the probe) that it checks `Content-MD5`, and every body
    /// was sent with its MD5: what it stored is what was read from the file.
    pub md5_verified: bool,
}

/// The part size for a file of `size` bytes: `wanted` (at least [`MIN_PART`]), grown in MiB
/// steps when the file would need more than [`MAX_PARTS`] parts; an error past [`MAX_PART`].
pub fn part_size_for(size: u64, wanted: u64) -> Result<u64, String> {
    let mut part = wanted.max(MIN_PART);
    if size.div_ceil(part) > MAX_PARTS {
        part = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) * (1 << 20);
    }
    if part > MAX_PART {
        return Err(format!(
            "a file of {size} bytes needs parts over {MAX_PART} bytes, more than S3 allows"
        ));
    }
    Ok(part)
}

fn read_part(file: &mut File, buf: &mut Vec<u8>, len: u64) -> std::io::Result<()> {
    buf.clear();
    file.by_ref().take(len).read_to_end(buf)?;
    if (buf.len() as u64) < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file shrank while it was uploaded",
        ));
    }
    Ok(())
}

/// An ETag that is an MD5 must be the one of what was sent.
pub(super) fn check_etag(what: &str, got: &str, sent: &[u8; 16]) -> Result<(), Error> {
    let want = super::sigv4::hex(sent);
    if checksum::is_md5_etag(got) && !got.eq_ignore_ascii_case(&want) {
        return Err(err(
            ErrorKind::Other,
            format!("{what}: the server's ETag is {got}, the MD5 of what was sent {want}"),
        ));
    }
    Ok(())
}

impl Client {
    /// Uploads the file at `path` as `key` with `headers` (e.g. `x-amz-meta-*`), in parts of
    /// about `part_size` bytes when it is larger than one part.
    pub fn upload_file(
        &self,
        path: &Path,
        key: &str,
        part_size: u64,
        headers: &[(&str, &str)],
    ) -> Result<Uploaded, Error> {
        let io = |e: std::io::Error| err(ErrorKind::Other, format!("reading {}: {e}", path.display()));
        let mut file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let part = part_size_for(size, part_size).map_err(|e| err(ErrorKind::Other, e))?;
        // The probe writes `key` itself when the server does not check: the upload replaces it,
        // or it is deleted when the upload fails.
        let probe = self.probe_content_md5(key)?;
        // Where the server verifies each body's signed Content-MD5, the body is not hashed a
        // second time for the signature.
        let sign_body = probe == Probe::Ignored;
        let result = if size <= part {
            self.put_file(&mut file, path, key, size, headers, sign_body)
        } else {
            self.multipart_file(&file, path, key, size, part, headers, sign_body)
        };
        let parts = if size <= part { 0 } else { size.div_ceil(part) as u32 };
        self.uploaded(key, probe, part, result.map(|etag| (etag, size, parts)))
    }

    /// What an upload of `key` after `probe` gave: the [`Uploaded`] for `(etag, size, parts)`,
    /// or the error, after deleting the probe's object where the probe wrote `key` itself.
    pub(super) fn uploaded(
        &self,
        key: &str,
        probe: Probe,
        part_size: u64,
        result: Result<(String, u64, u32), Error>,
    ) -> Result<Uploaded, Error> {
        match result {
            Ok((etag, size, parts)) => Ok(Uploaded {
                size,
                parts,
                part_size,
                etag,
                md5_verified: probe == Probe::Verified,
            }),
            Err(e) => {
                if probe == Probe::Ignored {
                    if let Err(d) = self.delete_object(key) {
                        log::warn!(key = key, error = d.detail.as_str(); "deleting the probe failed");
                    }
                }
                Err(e)
            }
        }
    }

    /// One PUT of the whole file with its `Content-MD5`: the ETag.
    fn put_file(
        &self,
        file: &mut File,
        path: &Path,
        key: &str,
        size: u64,
        headers: &[(&str, &str)],
        sign_body: bool,
    ) -> Result<String, Error> {
        let mut buf = Vec::with_capacity(size as usize);
        read_part(file, &mut buf, size)
            .map_err(|e| err(ErrorKind::Other, format!("reading {}: {e}", path.display())))?;
        let md5 = checksum::md5(&buf);
        let header = checksum::content_md5(&md5);
        let mut all = headers.to_vec();
        all.push(("content-md5", header.as_str()));
        let etag = etag(&self.request_body("PUT", key, &[], &all, &buf, sign_body)?);
        check_etag(&format!("PUT {key}"), &etag, &md5)?;
        Ok(etag)
    }

    /// A multipart upload of the file (aborted on any failure): the object's ETag.
    #[allow(clippy::too_many_arguments)] // private steps of one upload, called once each
    fn multipart_file(
        &self,
        file: &File,
        path: &Path,
        key: &str,
        size: u64,
        part: u64,
        headers: &[(&str, &str)],
        sign_body: bool,
    ) -> Result<String, Error> {
        let upload_id = self.create_multipart(key, headers)?;
        let result = self
            .upload_parts(file, path, key, &upload_id, size, part, sign_body)
            .and_then(|(etags, md5s)| self.complete_checked(key, &upload_id, &etags, &md5s));
        if result.is_err() {
            if let Err(a) = self.abort_multipart(key, &upload_id) {
                log::warn!(key = key, error = a.detail.as_str(); "aborting the multipart upload failed");
            }
        }
        result
    }

    /// Uploads every part, [`PARALLEL_PARTS`] at a time (one buffer of a part each, read with
    /// `pread`), each with its `Content-MD5`; the ETags and MD5s in part order, or the first
    /// error (the other workers stop).
    #[allow(clippy::too_many_arguments)] // private steps of one upload, called once each
    fn upload_parts(
        &self,
        file: &File,
        path: &Path,
        key: &str,
        upload_id: &str,
        size: u64,
        part: u64,
        sign_body: bool,
    ) -> Result<(Vec<String>, Vec<[u8; 16]>), Error> {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Mutex;

        let count = size.div_ceil(part);
        let next = AtomicU64::new(1);
        let failed = AtomicBool::new(false);
        let done = Mutex::new(vec![(String::new(), [0u8; 16]); count as usize]);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL_PARTS.min(count) {
                scope.spawn(|| {
                    let mut buf = vec![0u8; part as usize];
                    while !failed.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n > count {
                            break;
                        }
                        let offset = (n - 1) * part;
                        let len = part.min(size - offset) as usize;
                        let result = file
                            .read_exact_at(&mut buf[..len], offset)
                            .map_err(|e| err(ErrorKind::Other, format!("reading {}: {e}", path.display())))
                            .and_then(|()| {
                                let md5 = checksum::md5(&buf[..len]);
                                let etag = self.upload_part(key, upload_id, n as u32, &md5, &buf[..len], sign_body)?;
                                check_etag(&format!("UploadPart {n} of {key}"), &etag, &md5)?;
                                Ok((etag, md5))
                            });
                        match result {
                            Ok(got) => done.lock().unwrap_or_else(|e| e.into_inner())[(n - 1) as usize] = got,
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        Ok(done.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().unzip())
    }

    /// CompleteMultipartUpload with the parts' ETags: the object's ETag, which must be the
    /// digest of the parts' MD5s (`md5(part MD5s)-N`) where the server gives one of that form.
    pub(super) fn complete_checked(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
        md5s: &[[u8; 16]],
    ) -> Result<String, Error> {
        let etag = self.complete_multipart(key, upload_id, etags)?;
        let want = checksum::multipart_etag(md5s);
        if etag.contains('-') && !etag.eq_ignore_ascii_case(&want) {
            return Err(err(
                ErrorKind::Other,
                format!("CompleteMultipartUpload {key}: the server's ETag is {etag}, the parts' {want}"),
            ));
        }
        Ok(etag)
    }

    /// CreateMultipartUpload: the upload id.
    pub fn create_multipart(&self, key: &str, headers: &[(&str, &str)]) -> Result<String, Error> {
        let answer = self.request("POST", key, &[("uploads", "")], headers, &[])?;
        let text = String::from_utf8_lossy(&answer.body);
        xml::tag(&text, "UploadId").filter(|id| !id.is_empty()).ok_or_else(|| {
            err(
                ErrorKind::Other,
                format!("CreateMultipartUpload {key}: no UploadId in the answer"),
            )
        })
    }

    /// UploadPart number `n` (from 1) with `md5`, the MD5 of `body`, as its `Content-MD5`
    /// (and the body's SHA-256 signed when `sign_body`): its ETag.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u32,
        md5: &[u8; 16],
        body: &[u8],
        sign_body: bool,
    ) -> Result<String, Error> {
        let number = n.to_string();
        let content_md5 = checksum::content_md5(md5);
        let answer = self.request_body(
            "PUT",
            key,
            &[("partNumber", number.as_str()), ("uploadId", upload_id)],
            &[("content-md5", content_md5.as_str())],
            body,
            sign_body,
        )?;
        let etag = etag(&answer);
        if etag.is_empty() {
            return Err(err(
                ErrorKind::Other,
                format!("UploadPart {n} of {key}: no ETag in the answer"),
            ));
        }
        Ok(etag)
    }

    /// CompleteMultipartUpload with the parts' ETags in order: the object's ETag. S3 may answer
    /// 200 with an error in the body; that is an error here.
    pub fn complete_multipart(&self, key: &str, upload_id: &str, etags: &[String]) -> Result<String, Error> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (i, e) in etags.iter().enumerate() {
            body.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>\"{}\"</ETag></Part>",
                i + 1,
                xml_escape(e)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let answer = self.request("POST", key, &[("uploadId", upload_id)], &[], body.as_bytes())?;
        let text = String::from_utf8_lossy(&answer.body);
        if !text.contains("<CompleteMultipartUploadResult") {
            let code = xml::tag(&text, "Code").unwrap_or_default();
            let message = xml::tag(&text, "Message").unwrap_or_default();
            return Err(Error {
                kind: ErrorKind::Other,
                status: Some(answer.status),
                code: code.clone(),
                detail: format!("CompleteMultipartUpload {key}: {code}: {message}"),
            });
        }
        Ok(xml::tag(&text, "ETag")
            .unwrap_or_default()
            .trim_matches('"')
            .to_string())
    }

    /// AbortMultipartUpload (its parts are freed).
    pub fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), Error> {
        match self.request("DELETE", key, &[("uploadId", upload_id)], &[], &[]) {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_stay_within_s3_limits() {
        assert_eq!(part_size_for(1 << 30, 16 << 20), Ok(16 << 20));
        assert_eq!(part_size_for(10, 1), Ok(MIN_PART));
        // 1 TiB in 16 MiB parts would be 65536 parts: the part grows to stay within 10000.
        let p = part_size_for(1 << 40, 16 << 20).unwrap();
        assert!((1u64 << 40).div_ceil(p) <= MAX_PARTS && p % (1 << 20) == 0, "{p}");
        assert!(part_size_for(MAX_PART * MAX_PARTS + 1, MIN_PART).is_err());
    }

    #[test]
    fn an_md5_etag_must_be_the_digest_sent() {
        let sent = checksum::md5(b"part");
        let hex = crate::s3::sigv4::hex(&sent);
        assert!(check_etag("p", &hex, &sent).is_ok());
        assert!(check_etag("p", &hex.to_uppercase(), &sent).is_ok());
        let other = crate::s3::sigv4::hex(&checksum::md5(b"part, one byte changed"));
        assert!(check_etag("p", &other, &sent)
            .unwrap_err()
            .detail
            .contains("the MD5 of what was sent"));
        // Not an MD5 (SSE-KMS, some gateways): nothing to compare.
        assert!(check_etag("p", "opaque-etag", &sent).is_ok());
    }
}
