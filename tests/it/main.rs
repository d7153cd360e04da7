//! lifeboat's integration tests: one crate, one module per area, run against the real
//! programs (rclone, moto, Litestream, etcd) and the built binaries. `cargo test --test it
//! hook_` runs one area; the shared helpers are `support` (tools, ports, processes, PKI,
//! S3 servers), `hook_common` and `s3sync_common`.

mod hook_common;
mod s3sync_common;
mod support;

mod hook_admission;
mod hook_cli;
mod hook_http;
mod hook_litestream;
mod hook_replicas;
mod hook_shutdown;
mod hook_tls;
mod log_panics;
mod s3sync_credentials;
mod s3sync_dataloss;
mod s3sync_failures;
mod s3sync_safety;
mod s3sync_server_side;
mod s3sync_sync;
mod support_selftest;
