//! lifeboat's shared library: what more than one of the three binaries needs.
//!
//! Each module has one job:
//! - [`log`]: the JSON log line format and `LOG_LEVEL` handling, identical in every binary.
//! - [`env`]: reading configuration from environment variables, reporting every problem at once,
//!   and the schema those reads declare (`--print-config-schema`).
//! - [`names`]: Kubernetes name rules (DNS labels).
//! - [`quantity`]: Kubernetes quantities (bytes, CPU).
//! - [`s3`]: lifeboat's own S3 client (SigV4, listings, uploads, downloads, credentials).
//! - [`secret`]: a credential that never prints.
//! - [`cli`]: a subcommand's `--help` and bad-argument handling.
//! - [`shutdown`]: SIGTERM/SIGINT turned into a flag threads can wait on.
//! - [`tls`]: loading PEM certificates and keys for rustls and ureq, with errors that name the file;
//!   `ureq_tls`, the start of every ureq TLS configuration.
//! - [`roots`]: the system's trusted CA certificates, read as Go reads them (no roots compiled in).
//! - [`base64`]: standard base64 (AdmissionReview patches, Secret and kubeconfig data).
//! - [`metrics`]: a small Prometheus registry and its text format.
//! - [`ops_http`]: the plain-HTTP `/metrics`, `/healthz`, `/readyz` endpoint of the servers.

#![forbid(unsafe_code)]

pub mod base64;
pub mod cli;
pub mod env;
pub mod log;
pub mod metrics;
pub mod names;
pub mod ops_http;
pub mod quantity;
pub mod roots;
pub mod s3;
pub mod secret;
pub mod shutdown;
pub mod tls;
