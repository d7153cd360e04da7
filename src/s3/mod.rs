//! A small blocking S3 client, lifeboat's own: ureq over rustls, requests signed with AWS
//! Signature V4 (HMAC-SHA256 from ring), no async runtime.
//!
//! It reaches endpoints the way rclone (Go) does, so that s3sync's second opinion next to
//! rclone can only refuse, never disagree silently: the same `SSL_CERT_FILE` / `SSL_CERT_DIR`
//! trust store ([`trust`]), the same `HTTP(S)_PROXY` / `NO_PROXY` rules ([`proxy`]), path or
//! virtual-hosted style, the signing region. Every cost is bounded: connect and per-request
//! timeouts, a response body limit, the number of objects a listing may hold, and a deadline
//! for the whole listing.
//!
//! - [`bucket`]: bucket name rules (existing buckets of any provider; DNS-compatible ones).
//! - [`endpoint`]: the endpoint URL rule, and a URL normalised to the server it reaches.
//! - [`sigv4`]: the signature.
//! - [`xml`]: reading S3's XML answers.
//! - [`client`]: the requests.
//! - [`object`]: PUT, HEAD and DELETE of one object.
//! - [`checksum`]: `Content-MD5`, and a probe of whether a server verifies it.
//! - [`multipart`]: uploading a file (one PUT, or a multipart upload in bounded parts).
//! - [`stream`]: uploading what a reader yields (size unknown in advance), in bounded parts.
//! - [`download`]: streaming GET into a sink, bounded, with its SHA-256.
//! - [`credentials`]: keys from the platform (environment, web identity, container).

pub mod bucket;
pub mod checksum;
pub mod client;
pub mod credentials;
pub mod download;
pub mod endpoint;
pub mod multipart;
pub mod object;
pub mod proxy;
pub mod sigv4;
pub mod stream;
pub mod trust;
pub mod xml;

pub use client::{Client, Error, ErrorKind, Object, Page};

use crate::secret::Secret;

/// What signs a request: an access key (not secret: it names the key), its secret, and the
/// session token of temporary credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: Secret,
    pub session_token: Option<Secret>,
}

/// Where one bucket lives and how it is addressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// `http(s)://host[:port][/path]`.
    pub endpoint: String,
    pub bucket: String,
    /// The signing region.
    pub region: String,
    /// `https://host/bucket/key` when true, `https://bucket.host/key` when false.
    pub path_style: bool,
}
