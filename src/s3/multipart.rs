//! Uploading a file: one PUT when it fits in one part, else a multipart upload (create,
//! upload each part, complete; abort on any failure so no parts are left behind), one part in
//! memory at a time. Part size and part count are bounded by S3's limits.

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
        let upload_id = self.create_multipart(key, headers)?;
        let result = (|| {
            let count = size.div_ceil(part);
            let mut etags = Vec::with_capacity(count as usize);
            for n in 1..=count {
                let len = part.min(size - (n - 1) * part);
                read_part(&mut file, &mut buf, len).map_err(io)?;
                etags.push(self.upload_part(key, &upload_id, n as u32, &buf)?);
            }
            self.complete_multipart(key, &upload_id, &etags)
        })();
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
