#!/usr/bin/env bash
# Server-side copy against client-side copy, side by side in one run: the same initial copy
# between two buckets of one `rclone serve s3`, by rclone with the flags s3sync uses, with and
# without --server-side-across-configs (what s3sync adds when both sides are one service and
# identity). Prints each round and the ratio of the medians.
# Usage: bash bench/s3sync-server-side.sh   (env: SMALL=300 LARGE=4 LARGE_MIB=32 ROUNDS=5)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SMALL=${SMALL:-300}
LARGE=${LARGE:-4}
LARGE_MIB=${LARGE_MIB:-32}
ROUNDS=${ROUNDS:-5}
tools=${LIFEBOAT_TOOLS:-$PWD/.tools/bin}
export PATH="$tools:$PATH"
for v in $(env | grep -oE '^(AWS|RCLONE)_[A-Za-z0-9_]*' || true); do unset "$v"; done
RCLONE=$(command -v rclone)
work=$(mktemp -d /tmp/lifeboat-ssc-XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
python3 - "$work/s3/src" "$SMALL" "$LARGE" "$LARGE_MIB" <<'PY'
import os, random, sys
root, small, large, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(7)
os.makedirs(root, exist_ok=True)
for i in range(small):
    open(os.path.join(root, f"o{i:05d}.dat"), "wb").write(rnd.randbytes(rnd.randint(1024, 65536)))
for i in range(large):
    open(os.path.join(root, f"big{i}.bin"), "wb").write(rnd.randbytes(mib << 20))
PY
mkdir -p "$work/s3/dst"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$RCLONE" serve s3 --addr "127.0.0.1:$PORT" --auth-key AKIABENCH,bench-secret-0123456789 --log-level ERROR "$work/s3" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
export RCLONE_CONFIG=/dev/null
for r in SOURCE DEST; do
  export RCLONE_CONFIG_${r}_TYPE=s3 RCLONE_CONFIG_${r}_PROVIDER=Other RCLONE_CONFIG_${r}_ENDPOINT="http://127.0.0.1:$PORT" \
    RCLONE_CONFIG_${r}_ACCESS_KEY_ID=AKIABENCH RCLONE_CONFIG_${r}_SECRET_ACCESS_KEY=bench-secret-0123456789 \
    RCLONE_CONFIG_${r}_REGION=us-east-1 RCLONE_CONFIG_${r}_FORCE_PATH_STYLE=true RCLONE_CONFIG_${r}_ENCODING=Slash,InvalidUtf8
done
copy() { # extra flags...; prints seconds
  "$RCLONE" delete dest:dst >/dev/null 2>&1 || true   # through the API: the server caches listings
  local s e; s=$(date +%s.%N)
  "$RCLONE" sync source:src/ dest:dst/ --checksum --fast-list --transfers 4 --checkers 8 --s3-no-check-bucket \
    --low-level-retries 3 --log-level ERROR "$@"
  e=$(date +%s.%N); python3 -c "print(f'{$e - $s:.3f}')"
}
echo "data: $SMALL objects of 1-64 KiB + $LARGE x $LARGE_MIB MiB, one rclone serve s3, $ROUNDS rounds"
client=(); server=()
for i in $(seq "$ROUNDS"); do
  c=$(copy); s=$(copy --server-side-across-configs)
  client+=("$c"); server+=("$s")
  echo "round $i: client-side ${c}s  server-side ${s}s"
done
python3 - "${client[*]}" "${server[*]}" <<'PY'
import statistics, sys
c = statistics.median(map(float, sys.argv[1].split())); s = statistics.median(map(float, sys.argv[2].split()))
print(f"median: client-side {c:.3f}s  server-side {s:.3f}s  server/client = {s / c:.2f}x")
PY
