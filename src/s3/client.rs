//! The requests: one [`Client`] per bucket, signed requests with bounded retries, and
//! ListObjectsV2 (one page, or every page within a deadline and an object cap).

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use super::credentials::Provider;
use super::sigv4::{self, uri_encode};
use super::trust::Trust;
use super::{endpoint, proxy, xml, Credentials, Location};

/// The largest answer body read into memory (a listing page of 1000 keys of 1 KiB fits easily).
pub const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// One object as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// The full key (with the prefix).
    pub key: String,
    pub size: u64,
    /// The ETag without quotes (the MD5 in hex for single-part uploads).
    pub etag: String,
}

impl Object {
    /// The MD5 when the ETag is one (32 hex digits; multipart ETags end in `-N`).
    pub fn md5(&self) -> Option<&str> {
        (self.etag.len() == 32 && self.etag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(self.etag.as_str())
    }
}

/// What kind of failure: callers decide exit codes and retries by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The bucket (or the object asked for) does not exist.
    BucketMissing,
    /// The credentials or their permissions were refused.
    Credentials,
    /// No connection (refused, reset, no route, name not found).
    Unreachable,
    /// The TLS handshake failed (an unknown CA, a wrong name).
    Tls,
    /// A timeout or deadline.
    Timeout,
    /// A listing over its object cap.
    TooMany,
    Other,
}

impl ErrorKind {
    /// The name in logs and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BucketMissing => "bucket_missing",
            ErrorKind::Credentials => "credentials",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::TooMany => "too_many",
            ErrorKind::Other => "other",
        }
    }
}

/// Why a request failed. The detail never holds a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    /// The HTTP status when the server answered.
    pub status: Option<u16>,
    /// S3's error code (`NoSuchKey`, `AccessDenied`, ...), empty when none.
    pub code: String,
    pub detail: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Error {}

pub(crate) fn err(kind: ErrorKind, detail: impl Into<String>) -> Error {
    Error {
        kind,
        status: None,
        code: String::new(),
        detail: detail.into(),
    }
}

/// An answer with a 2xx status.
pub struct Answer {
    pub status: u16,
    /// Response headers, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where one request goes: its URL, and the encoded path and canonical query it is signed with.
pub(super) struct Target {
    pub url: String,
    pub path: String,
    pub query: String,
}

/// A client for one bucket.
pub struct Client {
    agent: ureq::Agent,
    scheme: String,
    /// `host[:port]` as sent in the Host header (default ports left out).
    authority: String,
    /// The endpoint's own path (`/` or `/s3/`), ending in `/`.
    base_path: String,
    /// The bucket as a path segment (path style), empty for virtual-hosted style.
    path_bucket: String,
    region: String,
    credentials: Arc<Provider>,
    pub(super) retries: u32,
}

impl Client {
    /// `request_timeout` bounds each request from connect to the last body byte; `retries` is
    /// the number of attempts for a retryable failure (at least 1). `user_agent` names the
    /// program in the server's logs.
    pub fn new(
        location: &Location,
        credentials: Credentials,
        trust: &Trust,
        connect: Duration,
        request_timeout: Duration,
        retries: u32,
        user_agent: &str,
    ) -> Client {
        let scheme = if location.endpoint.to_ascii_lowercase().starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let ep = endpoint::normalise(&location.endpoint);
        let default_port = if scheme == "https" { 443 } else { 80 };
        let host = if ep.host.contains(':') {
            format!("[{}]", ep.host)
        } else {
            ep.host.clone()
        };
        let host = if location.path_style {
            host
        } else {
            format!("{}.{host}", location.bucket)
        };
        let authority = if ep.port == default_port {
            host
        } else {
            format!("{host}:{}", ep.port)
        };
        let base_path = if ep.path.is_empty() {
            "/".to_string()
        } else {
            format!("/{}/", ep.path)
        };
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(connect))
            .timeout_global(Some(request_timeout))
            .max_redirects(0)
            .proxy(proxy::proxy_for(scheme, &ep.host))
            .user_agent(user_agent);
        if scheme == "https" {
            config = config.tls_config(trust.ureq_config());
        }
        Client {
            agent: config.build().new_agent(),
            scheme: scheme.to_string(),
            authority,
            base_path,
            path_bucket: if location.path_style {
                location.bucket.clone()
            } else {
                String::new()
            },
            region: location.region.clone(),
            credentials: Arc::new(Provider::fixed(credentials)),
            retries: retries.max(1),
        }
    }

    /// Signs with credentials from `provider` (fetched, cached and renewed there) instead of
    /// the fixed ones given to [`Client::new`].
    pub fn with_provider(mut self, provider: Arc<Provider>) -> Client {
        self.credentials = provider;
        self
    }

    /// The URI-encoded path of `key` (the bucket's root for an empty key).
    fn path(&self, key: &str) -> String {
        let bucket = if self.path_bucket.is_empty() {
            String::new()
        } else {
            format!("{}/", uri_encode(&self.path_bucket, true))
        };
        format!("{}{bucket}{}", self.base_path, uri_encode(key, false))
    }

    /// One signed request, retried (with backoff) on 5xx, 429 and lost connections; the
    /// answer body is read up to `MAX_BODY_BYTES`. `query` pairs are encoded and sorted here.
    pub fn request(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, Error> {
        self.request_body(method, key, query, headers, body, true)
    }

    /// [`Client::request`], with `sign_body` false: `UNSIGNED-PAYLOAD` instead of the body's
    /// SHA-256 (for a body whose signed `Content-MD5` the server is known to verify).
    pub fn request_body(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
        sign_body: bool,
    ) -> Result<Answer, Error> {
        let target = self.target(key, query);
        let payload = if body.is_empty() {
            sigv4::EMPTY_SHA256.to_string()
        } else if !sign_body {
            sigv4::UNSIGNED_PAYLOAD.to_string()
        } else {
            sigv4::sha256_hex(body)
        };
        self.retrying(|| self.once(method, &target, headers, &payload, body))
    }

    /// Runs `attempt` up to the client's number of attempts, with backoff in between, while
    /// it fails with a retryable error; the last error otherwise.
    pub(super) fn retrying<T>(&self, mut attempt: impl FnMut() -> Result<T, (Error, bool)>) -> Result<T, Error> {
        let mut last = err(ErrorKind::Other, "no attempt made");
        for n in 0..self.retries {
            if n > 0 {
                backoff(n);
            }
            match attempt() {
                Ok(answer) => return Ok(answer),
                Err((e, retry)) => {
                    last = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// The URL, the encoded path and the canonical query string of a request for `key`.
    pub(super) fn target(&self, key: &str, query: &[(&str, &str)]) -> Target {
        let path = self.path(key);
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        pairs.sort();
        let query_string = pairs
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    format!("{k}=")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join("&");
        let url = if query_string.is_empty() {
            format!("{}://{}{}", self.scheme, self.authority, path)
        } else {
            format!("{}://{}{}?{}", self.scheme, self.authority, path, query_string)
        };
        Target {
            url,
            path,
            query: query_string,
        }
    }

    fn once(
        &self,
        method: &str,
        target: &Target,
        headers: &[(&str, &str)],
        payload: &str,
        body: &[u8],
    ) -> Result<Answer, (Error, bool)> {
        let mut response = self.send(method, target, headers, payload, body)?;
        let status = response.status().as_u16();
        let answer_headers = response_headers(&response);
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(MAX_BODY_BYTES)
                .read_to_vec()
                .map_err(|e| classify_transport(&e))?
        };
        if (200..300).contains(&status) {
            return Ok(Answer {
                status,
                headers: answer_headers,
                body,
            });
        }
        Err(status_error(status, &body))
    }

    /// Signs and sends one request; the answer's body is left unread (any status).
    pub(super) fn send(
        &self,
        method: &str,
        target: &Target,
        headers: &[(&str, &str)],
        payload: &str,
        body: &[u8],
    ) -> Result<ureq::http::Response<ureq::Body>, (Error, bool)> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let req = sigv4::Request {
            method,
            authority: &self.authority,
            path: &target.path,
            query: &target.query,
            headers,
            payload_sha256: payload,
        };
        let credentials = self.credentials.get().map_err(|e| (e, false))?;
        let signed = sigv4::sign(&req, &credentials, &self.region, now);
        let mut builder = ureq::http::Request::builder().method(method).uri(target.url.as_str());
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        for (k, v) in &signed {
            builder = builder.header(*k, v);
        }
        let request = builder
            .body(body)
            .map_err(|e| (err(ErrorKind::Other, format!("bad request: {e}")), false))?;
        self.agent.run(request).map_err(|e| classify_transport(&e))
    }

    /// One ListObjectsV2 page under `prefix`.
    pub fn list_page(&self, prefix: &str, token: Option<&str>, max_keys: u32) -> Result<Page, Error> {
        let max = max_keys.to_string();
        let mut query = vec![
            ("encoding-type", "url"),
            ("list-type", "2"),
            ("max-keys", max.as_str()),
            ("prefix", prefix),
        ];
        if let Some(t) = token {
            query.push(("continuation-token", t));
        }
        let answer = self.request("GET", "", &query, &[], &[])?;
        parse_page(&answer.body)
    }

    /// Every object under `prefix`, at most `max_objects` (more is an error: memory is bounded),
    /// all pages within `deadline`.
    pub fn list_all(&self, prefix: &str, max_objects: usize, deadline: Instant) -> Result<Vec<Object>, Error> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            if Instant::now() > deadline {
                return Err(err(
                    ErrorKind::Timeout,
                    format!("listing did not finish in time ({} objects so far)", all.len()),
                ));
            }
            let page = self.list_page(prefix, token.as_deref(), 1000)?;
            all.extend(page.objects);
            if all.len() > max_objects {
                return Err(err(
                    ErrorKind::TooMany,
                    format!("more than {max_objects} objects (MAX_OBJECTS)"),
                ));
            }
            match page.next {
                Some(t) if page.truncated => token = Some(t),
                _ => return Ok(all),
            }
        }
    }
}

/// The pause before attempt `attempt` (from 1) of a retried request.
pub(super) fn backoff(attempt: u32) {
    std::thread::sleep(Duration::from_millis(200 << attempt.min(4)));
}

/// The response headers, names lowercase.
pub(super) fn response_headers(response: &ureq::http::Response<ureq::Body>) -> Vec<(String, String)> {
    response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The error of a non-2xx answer with `body`, and whether it is worth retrying.
pub(super) fn status_error(status: u16, body: &[u8]) -> (Error, bool) {
    let text = String::from_utf8_lossy(body);
    let code = xml::tag(&text, "Code").unwrap_or_default();
    let message = xml::tag(&text, "Message").unwrap_or_default();
    let detail = format!("HTTP {status} {code}: {message}")
        .trim_end_matches([' ', ':'])
        .to_string();
    let kind = match (status, code.as_str()) {
        (_, "NoSuchBucket" | "NoSuchKey") | (404, _) => ErrorKind::BucketMissing,
        (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied") | (401 | 403, _) => ErrorKind::Credentials,
        _ => ErrorKind::Other,
    };
    let e = Error {
        kind,
        status: Some(status),
        code,
        detail,
    };
    (e, status >= 500 || status == 429)
}

fn classify_transport(e: &ureq::Error) -> (Error, bool) {
    let text = e.to_string();
    let kind = match e {
        ureq::Error::Timeout(_) => ErrorKind::Timeout,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => ErrorKind::Unreachable,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => ErrorKind::Tls,
        ureq::Error::BodyExceedsLimit(_) => ErrorKind::Other,
        ureq::Error::Io(io)
            if io.kind() == std::io::ErrorKind::TimedOut || io.kind() == std::io::ErrorKind::WouldBlock =>
        {
            ErrorKind::Timeout
        }
        ureq::Error::Io(io) if io.to_string().contains("certificate") || io.to_string().contains("tls") => {
            ErrorKind::Tls
        }
        ureq::Error::Io(_) => ErrorKind::Unreachable,
        _ => ErrorKind::Other,
    };
    let retry = kind == ErrorKind::Unreachable && !matches!(e, ureq::Error::HostNotFound);
    (err(kind, text), retry)
}

/// What one page holds.
#[derive(Debug, Default)]
pub struct Page {
    pub objects: Vec<Object>,
    pub truncated: bool,
    pub next: Option<String>,
}

fn parse_page(body: &[u8]) -> Result<Page, Error> {
    let text = std::str::from_utf8(body).map_err(|_| err(ErrorKind::Other, "listing is not UTF-8"))?;
    if !text.contains("<ListBucketResult") {
        return Err(err(ErrorKind::Other, "the answer is not a ListObjectsV2 result"));
    }
    let url_encoded = xml::tag(text, "EncodingType").is_some_and(|e| e.eq_ignore_ascii_case("url"));
    let mut objects = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<Contents>") {
        let after = &rest[start + 10..];
        let end = after
            .find("</Contents>")
            .ok_or_else(|| err(ErrorKind::Other, "truncated listing"))?;
        let item = &after[..end];
        let raw_key = xml::tag(item, "Key").ok_or_else(|| err(ErrorKind::Other, "an entry without Key"))?;
        let key = if url_encoded {
            xml::percent_decode(&raw_key).map_err(|e| err(ErrorKind::Other, e))?
        } else {
            raw_key
        };
        let size = xml::tag(item, "Size")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err(ErrorKind::Other, "an entry without Size"))?;
        let etag = xml::tag(item, "ETag")
            .unwrap_or_default()
            .trim_matches('"')
            .to_ascii_lowercase();
        objects.push(Object { key, size, etag });
        rest = &after[end + 11..];
    }
    Ok(Page {
        objects,
        truncated: xml::tag(text, "IsTruncated").is_some_and(|t| t == "true"),
        next: xml::tag(text, "NextContinuationToken"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_with_entities_and_url_encoding() {
        let xml = r#"<?xml version="1.0"?><ListBucketResult><Name>b</Name><EncodingType>url</EncodingType>
<IsTruncated>true</IsTruncated><NextContinuationToken>tok&amp;1</NextContinuationToken>
<Contents><Key>a/..%2Fb%20c</Key><Size>5</Size><ETag>&quot;9A0364B9E99BB480DD25E1F0284C8555&quot;</ETag></Contents>
<Contents><Key>d%2F</Key><Size>0</Size><ETag>"abc-2"</ETag></Contents></ListBucketResult>"#;
        let p = parse_page(xml.as_bytes()).unwrap();
        assert!(p.truncated);
        assert_eq!(p.next.as_deref(), Some("tok&1"));
        assert_eq!(p.objects[0].key, "a/../b c");
        assert_eq!(p.objects[0].md5(), Some("9a0364b9e99bb480dd25e1f0284c8555"));
        assert_eq!(p.objects[1].key, "d/");
        assert_eq!(p.objects[1].md5(), None);
        assert!(parse_page(b"<Error><Code>x</Code></Error>").is_err());
    }
}
