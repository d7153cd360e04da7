//! Single-object requests: PUT of a body held in memory, HEAD and DELETE.

use super::client::{err, Answer, Client, Error, ErrorKind};

/// What HEAD says about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    /// The ETag without quotes.
    pub etag: String,
    /// User metadata (`x-amz-meta-*`), names lowercase without the prefix.
    pub metadata: Vec<(String, String)>,
}

impl Head {
    pub fn meta(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The ETag of an answer without quotes.
pub(super) fn etag(answer: &Answer) -> String {
    answer.header("etag").unwrap_or_default().trim_matches('"').to_string()
}

impl Client {
    /// PUT `body` as `key` (the body's SHA-256 is signed, so a server that checks it refuses a
    /// body changed on the way). `headers` are extra headers such as `x-amz-meta-*`. Returns
    /// the ETag.
    pub fn put_object(&self, key: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<String, Error> {
        let answer = self.request("PUT", key, &[], headers, body)?;
        Ok(etag(&answer))
    }

    /// HEAD `key`: `Ok(None)` when there is no such object.
    pub fn head_object(&self, key: &str) -> Result<Option<Head>, Error> {
        let answer = match self.request("HEAD", key, &[], &[], &[]) {
            Ok(a) => a,
            Err(e) if e.status == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = answer
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| err(ErrorKind::Other, format!("HEAD {key}: no Content-Length in the answer")))?;
        let metadata = answer
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let k = k.to_ascii_lowercase();
                k.strip_prefix("x-amz-meta-")
                    .map(|n| (n.to_string(), v.trim().to_string()))
            })
            .collect();
        Ok(Some(Head {
            size,
            etag: etag(&answer),
            metadata,
        }))
    }

    /// DELETE `key`; an object that is already gone is fine (S3 answers 204 either way).
    pub fn delete_object(&self, key: &str) -> Result<(), Error> {
        match self.request("DELETE", key, &[], &[], &[]) {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(404) && e.code != "NoSuchBucket" => Ok(()),
            Err(e) => Err(e),
        }
    }
}
