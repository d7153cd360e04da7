//! `Content-MD5`: the digest S3 servers verify on receipt, and finding out whether one does.
//!
//! A server that checks `Content-MD5` refuses a body that does not match it with `400 BadDigest`
//! (AWS, MinIO, Ceph, `rclone serve s3`); others ignore the header (moto) and store whatever
//! arrived. So before relying on it, [`Client::probe_content_md5`] sends a tiny body with a
//! digest that cannot match: only a `BadDigest` answer proves the server checks. Tried here and
//! not used: `x-amz-checksum-sha256` (`rclone serve s3` stores a wrong one and echoes it back on
//! HEAD; moto accepts a wrong one) and the signed payload hash (neither server checks it).

use super::client::{Client, Error};

/// The body of the probe, and the digest it is sent with (the MD5 of other bytes).
const PROBE_BODY: &[u8] = b"etcdsnap: does this server verify Content-MD5?";
const PROBE_DIGEST_OF: &[u8] = b"not the probe body";

/// The MD5 of `data`.
pub fn md5(data: &[u8]) -> [u8; 16] {
    md5::compute(data).0
}

/// The `Content-MD5` header value: standard base64 of the digest.
pub fn content_md5(digest: &[u8; 16]) -> String {
    crate::base64::encode(digest)
}

/// The multipart ETag S3 computes from its parts' MD5s: the MD5 of the digests one after
/// another, in hex, `-` and the number of parts.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let joined: Vec<u8> = part_md5s.iter().flatten().copied().collect();
    format!("{}-{}", super::sigv4::hex(&md5(&joined)), part_md5s.len())
}

/// Whether an ETag has the shape of a single MD5 (32 hex digits).
pub fn is_md5_etag(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `400 BadDigest`: the server checks `Content-MD5`.
    Verified,
    /// The mismatched body was stored: the server does not check.
    Ignored,
}

impl Client {
    /// PUTs `PROBE_BODY` as `key` with a `Content-MD5` that does not match it. A server that
    /// does not check stores it, so the caller's upload must replace it or delete it. Not a part
    /// of a multipart upload: `rclone serve s3` fails the whole upload when one part is refused.
    /// Any other refusal is an error of the upload.
    pub fn probe_content_md5(&self, key: &str) -> Result<Probe, Error> {
        let wrong = content_md5(&md5(PROBE_DIGEST_OF));
        match self.request("PUT", key, &[], &[("content-md5", wrong.as_str())], PROBE_BODY) {
            Ok(_) => Ok(Probe::Ignored),
            Err(e) if e.status == Some(400) && e.code == "BadDigest" => Ok(Probe::Verified),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_rfc_1321_and_s3s_multipart_rule() {
        assert_eq!(
            super::super::sigv4::hex(&md5(b"abc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(content_md5(&md5(b"")), "1B2M2Y8AsgTpgAmY7PhCfg==");
        // md5(md5("a") || md5("b")) and two parts.
        let etag = multipart_etag(&[md5(b"a"), md5(b"b")]);
        let mut joined = md5(b"a").to_vec();
        joined.extend_from_slice(&md5(b"b"));
        assert_eq!(etag, format!("{}-2", super::super::sigv4::hex(&md5(&joined))));
        assert!(is_md5_etag("900150983cd24fb0d6963f7d28e17f72") && !is_md5_etag(&etag));
    }
}
