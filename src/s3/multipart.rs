//! Uploading a file: one PUT when it fits in one part, else a multipart upload (create,
//! upload the parts two at a time, complete; abort on any failure so no parts are left behind),
//! one part in memory per part in flight. Part size and part count are bounded by S3's limits.

use std::fs::File;
use std::io::Read;
use std::path::Path;

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
        let mut buf = Vec::with_capacity(part.min(size) as usize);
        if size <= part {
            read_part(&mut file, &mut buf, size).map_err(io)?;
            let etag = self.put_object(key, headers, &buf)?;
            return Ok(Uploaded {
                size,
                parts: 0,
                part_size: part,
                etag,
            });
        }
        drop(buf);
        let upload_id = self.create_multipart(key, headers)?;
        let result = self
            .upload_parts(&file, path, key, &upload_id, size, part)
            .and_then(|etags| self.complete_multipart(key, &upload_id, &etags));
        match result {
            Ok(etag) => Ok(Uploaded {
                size,
                parts: size.div_ceil(part) as u32,
                part_size: part,
                etag,
            }),
            Err(e) => {
                if let Err(a) = self.abort_multipart(key, &upload_id) {
                    log::warn!(key = key, error = a.detail.as_str(); "aborting the multipart upload failed");
                }
                Err(e)
            }
        }
    }

    /// Uploads every part, [`PARALLEL_PARTS`] at a time (one buffer of a part each, read with
    /// `pread`); the ETags in part order, or the first error (the other workers stop).
    fn upload_parts(
        &self,
        file: &File,
        path: &Path,
        key: &str,
        upload_id: &str,
        size: u64,
        part: u64,
    ) -> Result<Vec<String>, Error> {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Mutex;

        let count = size.div_ceil(part);
        let next = AtomicU64::new(1);
        let failed = AtomicBool::new(false);
        let etags = Mutex::new(vec![String::new(); count as usize]);
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
                            .and_then(|()| self.upload_part(key, upload_id, n as u32, &buf[..len]));
                        match result {
                            Ok(etag) => etags.lock().unwrap_or_else(|e| e.into_inner())[(n - 1) as usize] = etag,
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
        Ok(etags.into_inner().unwrap_or_else(|e| e.into_inner()))
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

    /// UploadPart number `n` (from 1): its ETag.
    pub fn upload_part(&self, key: &str, upload_id: &str, n: u32, body: &[u8]) -> Result<String, Error> {
        let number = n.to_string();
        let answer = self.request(
            "PUT",
            key,
            &[("partNumber", number.as_str()), ("uploadId", upload_id)],
            &[],
            body,
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
}
