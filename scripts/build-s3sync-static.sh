#!/usr/bin/env bash
# Builds s3sync as one static file (glibc's static-pie: no dynamic loader, no shared libraries),
# for a workstation or a scratch image, and prints its path. docs/s3sync.md cites this script;
# tests/py/test_s3sync_static.py runs it and syncs with the result. Extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --no-default-features --bin s3sync --target "$target" "$@" >&2
echo "target/$target/release/s3sync"
