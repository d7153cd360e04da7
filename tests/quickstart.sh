#!/usr/bin/env bash
# lifeboat quickstart, the README's first command: `bash tests/quickstart.sh [--verbose] [--keep]`.
#
# On a fresh machine with Rust, Python 3 and a C++ compiler: installs the real tools
# (tests/tools.sh: rclone, etcd 3.5, grpcio, ... into .tools/, no root), checks for cmake (needed
# by grpcio-sys; installed with apt-get only when running as root), builds the three binaries
# (`cargo build --bins`, the dev profile the tests use, so they share one build), then runs
# tests/quickstart.py: s3sync between two local S3 servers, one AdmissionReview to hook over HTTPS,
# and an etcd snapshot through etcdsnap's CSI socket. Everything on 127.0.0.1, in one temporary
# directory; every process is stopped and the directory removed at the end, also on failure or
# Ctrl-C. Exit status 0 only when every step succeeded.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
case "${1:-}" in
  -h | --help)
    echo "usage: bash tests/quickstart.sh [--verbose] [--keep]"
    echo "  --verbose  print hook's whole JSON Patch"
    echo "  --keep     keep the working directory (all logs) and print where it is"
    exit 0
    ;;
esac

missing=()
command -v cargo >/dev/null 2>&1 || { echo "quickstart: cargo not found: install Rust (https://rustup.rs)" >&2; exit 2; }
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "quickstart: installing ${missing[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "quickstart: missing ${missing[*]} (the build of etcdsnap's gRPC core needs cmake, make and a C++ compiler)." >&2
    echo "quickstart: install them, e.g. \`sudo apt-get install -y ${missing[*]}\`, and run again." >&2
    exit 2
  fi
fi

echo "== tools: tests/tools.sh (rclone, etcd 3.5, grpcio ... into .tools/, no root) =="
bin=$(bash tests/tools.sh)
# The machine may point AWS clients at its own CA bundle; the demo talks to its own servers.
unset AWS_CA_BUNDLE

echo "== build: cargo build --bins (the first build compiles gRPC core: several minutes) =="
cargo build --bins
target=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

work=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-quickstart.XXXXXX")
keep=0
for arg in "$@"; do [[ $arg == --keep ]] && keep=1; done
child=""
cleanup() {
  # The Python side stops its own processes; this makes sure it has ended, then removes its files.
  if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true
    for _ in $(seq 1 300); do
      kill -0 "$child" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$child" 2>/dev/null || true
  fi
  if ((keep == 0)); then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# In the background so that a signal to this script runs its trap at once (bash defers traps
# while a foreground child runs); the script forwards it as SIGTERM.
"$bin/python" tests/quickstart.py --bin-dir "$target/debug" --tools "$bin" --workdir "$work" "$@" &
child=$!
set +e
wait "$child"
rc=$?
set -e
child=""
exit "$rc"
