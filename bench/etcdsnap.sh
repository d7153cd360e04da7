#!/usr/bin/env bash
# etcdsnap benchmark: end-to-end snapshot of a ~50 MB, 3-member TLS etcd vs a raw
# `etcdctl snapshot save`, Identity/Get RPC latency, driver RSS. Prints figures.
#   bash bench/etcdsnap.sh                      # debug build (target/debug)
#   PROFILE=release bash bench/etcdsnap.sh      # release build
#   BENCH_SIZE_MB=50 BENCH_RUNS=5 BENCH_RPCS=500 (defaults)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=$(bash tests/tools.sh)
export PATH="$bin:$PATH" LIFEBOAT_TOOLS="$bin"
unset AWS_CA_BUNDLE
profile="${PROFILE:-debug}"
if [[ "$profile" == release ]]; then
  cargo build --release --bin etcdsnap
else
  cargo build --bin etcdsnap
fi
export LIFEBOAT_BIN_DIR="$PWD/target/$profile"
python="$PWD/.tools/venv/bin/python"
[[ -x "$python" ]] || python="$bin/python"
exec "$python" bench/etcdsnap_bench.py
