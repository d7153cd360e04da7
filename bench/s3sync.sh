#!/usr/bin/env bash
# s3sync benchmark: builds a data set on local `rclone serve s3` servers and prints, side by
# side from one run:
#   1. wrapper overhead: s3sync (verification on, the default, and VERIFY=false) vs raw
#      `rclone sync` with exactly the flags and remotes s3sync uses (initial sync, no-op
#      re-sync, 1%-changed re-sync), with the time of s3sync's own listings and plan before the
#      sync and of its verification after it;
#   2. s3sync's defaults vs rclone's defaults on the no-op and the 1%-changed re-sync.
# Usage: bash bench/s3sync.sh   (env: SMALL=3000 LARGE=4 LARGE_MIB=32 ROUNDS=9 INITIAL_ROUNDS=3)
# Needs the tools from tests/tools.sh; builds the release binary without the csi feature.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SMALL=${SMALL:-3000}
LARGE=${LARGE:-4}
LARGE_MIB=${LARGE_MIB:-32}
ROUNDS=${ROUNDS:-9}
INITIAL_ROUNDS=${INITIAL_ROUNDS:-3}
tools=${LIFEBOAT_TOOLS:-$PWD/.tools/bin}
export PATH="$tools:$PATH"
unset AWS_CA_BUNDLE
for v in $(env | grep -oE '^(AWS|RCLONE)_[A-Za-z0-9_]*' || true); do unset "$v"; done

cargo build --release --no-default-features --bin s3sync >&2
S3SYNC=$PWD/target/release/s3sync
RCLONE=$(command -v rclone)

work=$(mktemp -d /tmp/lifeboat-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

AK=AKIABENCHLIFEBOAT01
SK=bench-secret-key-0123456789abcdef
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The data set, written straight into the source server's folder before it starts.
echo "building data set: $SMALL small objects (1-8 KiB) + $LARGE x $LARGE_MIB MiB" >&2
python3 - "$work/src/data" "$SMALL" "$LARGE" "$LARGE_MIB" <<'PY'
import os, random, sys
root, small, large, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(42)
for i in range(small):
    d = os.path.join(root, f"dir{i % 20:02d}", f"sub{i % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"obj{i:05d}.dat"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 8192)))
os.makedirs(os.path.join(root, "large"), exist_ok=True)
for i in range(large):
    with open(os.path.join(root, "large", f"big{i}.bin"), "wb") as f:
        f.write(rnd.randbytes(mib << 20))
PY
mkdir -p "$work/dst"

serve() { # dir port
  "$RCLONE" serve s3 --addr "127.0.0.1:$2" --auth-key "$AK,$SK" --log-level ERROR "$1" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0; sleep 0.1; done
  echo "server on $2 did not start" >&2; exit 1
}
SRC_PORT=$(port); serve "$work/src" "$SRC_PORT"
DST_PORT=$(port); serve "$work/dst" "$DST_PORT"

# The remotes, exactly as s3sync gives them to rclone (for the raw rclone runs).
remote_env() {
  export RCLONE_CONFIG=/dev/null
  for r in SOURCE:$SRC_PORT DEST:$DST_PORT; do
    n=${r%%:*}; p=${r#*:}
    export "RCLONE_CONFIG_${n}_TYPE=s3" "RCLONE_CONFIG_${n}_PROVIDER=Other" "RCLONE_CONFIG_${n}_ENV_AUTH=false" \
      "RCLONE_CONFIG_${n}_ACCESS_KEY_ID=$AK" "RCLONE_CONFIG_${n}_SECRET_ACCESS_KEY=$SK" \
      "RCLONE_CONFIG_${n}_ENDPOINT=http://127.0.0.1:$p" "RCLONE_CONFIG_${n}_REGION=us-east-1" \
      "RCLONE_CONFIG_${n}_FORCE_PATH_STYLE=true" "RCLONE_CONFIG_${n}_ENCODING=Slash,InvalidUtf8"
  done
}
remote_env

export SOURCE_S3_ENDPOINT=http://127.0.0.1:$SRC_PORT SOURCE_ACCESS_KEY=$AK SOURCE_SECRET_KEY=$SK SOURCE_BUCKET=data
export DEST_S3_ENDPOINT=http://127.0.0.1:$DST_PORT DEST_ACCESS_KEY=$AK DEST_SECRET_KEY=$SK DEST_PREFIX=/ RCLONE_BINARY=$RCLONE

now_ms() { date +%s%3N; }
# Each runner prints its wall time in ms; a failed run aborts the benchmark.
SUF=""  # destination bucket suffix: each initial-sync round writes into fresh buckets
run_s3sync() { local t0; t0=$(now_ms); DEST_BUCKET=s3sync$SUF "$S3SYNC" 2>"$work/s3sync.log" || { tail -5 "$work/s3sync.log" >&2; exit 1; }; echo $(($(now_ms) - t0)); }
run_noverify() { local t0; t0=$(now_ms); VERIFY=false DEST_BUCKET=noverify$SUF "$S3SYNC" 2>"$work/noverify.log" || { tail -5 "$work/noverify.log" >&2; exit 1; }; echo $(($(now_ms) - t0)); }
# The same argv s3sync ran (saved from its first log), pointed at the `raw` bucket.
save_args() { python3 - "$work/s3sync.log" >"$work/args" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    v = json.loads(line)
    if v["msg"] == "running rclone sync":
        print("\n".join(v["args"]))
PY
}
run_raw() {
  local t0 args=()
  mapfile -t args <"$work/args"
  for i in "${!args[@]}"; do [[ ${args[$i]} == dest:* ]] && args[$i]="dest:raw$SUF"; done
  t0=$(now_ms); "$RCLONE" "${args[@]}" 2>"$work/raw.log" || { tail -5 "$work/raw.log" >&2; exit 1; }; echo $(($(now_ms) - t0))
}
run_rcdefault() { local t0; t0=$(now_ms); "$RCLONE" sync source:data "dest:rcdefault$SUF" 2>"$work/rcdefault.log" || { tail -5 "$work/rcdefault.log" >&2; exit 1; }; echo $(($(now_ms) - t0)); }

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
pct() { python3 -c "print(f'{($1-$2)*100/$2:+.1f}%')"; }

# 1% of the small objects, a different set each round, rewritten through the S3 API.
change_one_percent() { # round
  local n=$((SMALL / 100)) stage="$work/stage"
  rm -rf "$stage"; mkdir -p "$stage"
  python3 - "$stage" "$SMALL" "$n" "$1" <<'PY'
import os, random, sys
stage, small, n, rnd_round = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(1000 + rnd_round)
for i in range(rnd_round * n, rnd_round * n + n):
    i %= small
    d = os.path.join(stage, f"dir{i % 20:02d}", f"sub{i % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"obj{i:05d}.dat"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 8192)))
PY
  "$RCLONE" copy "$stage" source:data --transfers 8 2>/dev/null
}

# s3sync's own shares of its run: the pre-flight (both listings, the plan) from its
# "starting" line to "running rclone sync" (or to the line saying rclone was not needed), and
# the verification (its "verified" line; 0 when the plan found nothing to do).
preflight_ms() { python3 - "$work/s3sync.log" <<'PY'
import json, sys
from datetime import datetime
t = {}
for line in open(sys.argv[1]):
    v = json.loads(line)
    msg = "running rclone sync" if "rclone not started" in v["msg"] else v["msg"]
    if msg in ("starting", "running rclone sync"):
        t[msg] = datetime.fromisoformat(v["time"].replace("Z", "+00:00"))
print(int((t["running rclone sync"] - t["starting"]).total_seconds() * 1000))
PY
}
verify_ms() { python3 - "$work/s3sync.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    v = json.loads(line)
    if v["msg"].startswith("verified"):
        print(int(v["elapsed_s"] * 1000))
        break
else:
    sys.exit("no verified line")
PY
}

# One round: the four contenders in an order that rotates with the round number, so none
# always runs first. Appends to the arrays named by the prefix ($1_s, $1_n, $1_r, $1_d, ...).
ROUND=0
run_round() {
  local k s n r d p v
  for k in 0 1 2 3; do
    case $(((k + ROUND) % 4)) in
      0) s=$(run_s3sync); p=$(preflight_ms); v=$(verify_ms); [ -s "$work/args" ] || save_args ;;
      1) n=$(run_noverify) ;;
      2) r=$(run_raw) ;;
      3) d=$(run_rcdefault) ;;
    esac
  done
  ROUND=$((ROUND + 1))
  eval "$1_s+=($s); $1_n+=($n); $1_r+=($r); $1_d+=($d); $1_p+=($p); $1_v+=($v); $1_x+=($((s - r))); $1_y+=($((n - r)))"
}

echo "initial sync into four empty buckets x $INITIAL_ROUNDS" >&2
for round in $(seq "$INITIAL_ROUNDS" -1 1); do
  SUF="-$round"
  for b in s3sync noverify raw rcdefault; do "$RCLONE" mkdir "dest:$b$SUF"; done
  run_round init
  # Round 1's buckets are kept for the re-sync rounds; the others only cost disk
  # (removed on disk: rclone serve s3 refuses to delete buckets that held folders).
  [ "$round" = 1 ] || for b in s3sync noverify raw rcdefault; do rm -rf "${work:?}/dst/$b$SUF"; done
done
echo "no-op re-sync x $ROUNDS" >&2
for _ in $(seq "$ROUNDS"); do run_round noop; done
echo "1%-changed re-sync x $ROUNDS" >&2
for round in $(seq "$ROUNDS"); do
  change_one_percent "$round"
  run_round chg
done
# The three destinations must be identical copies of the source.
for b in s3sync noverify raw rcdefault; do "$RCLONE" check source:data "dest:$b$SUF" --one-way 2>/dev/null || { echo "dest:$b differs" >&2; exit 1; }; done

total=$((SMALL + LARGE))
printf '\n%s objects (%s small, %s x %s MiB), rclone %s, wall ms, medians of %s initial / %s re-sync rounds\n' \
  "$total" "$SMALL" "$LARGE" "$LARGE_MIB" "$("$RCLONE" version | head -1 | awk '{print $2}')" "$INITIAL_ROUNDS" "$ROUNDS"
printf '\nwrapper overhead: s3sync vs raw rclone with the same flags; ratio = s3sync / raw of the medians;\n'
printf 'overhead = median of per-round differences; pre-sync = both listings + plan; verify = the verification\n'
printf '%-12s %8s %9s %11s %7s %7s %16s %16s %9s %7s\n' scenario s3sync "no-verify" "raw rclone" ratio "ratio nv" overhead "overhead nv" pre-sync verify
for sc in init:initial noop:no-op chg:1%-changed; do
  v=${sc%%:*}; name=${sc#*:}
  eval 'a=$(median "${'$v'_s[@]}"); n=$(median "${'$v'_n[@]}"); b=$(median "${'$v'_r[@]}"); p=$(median "${'$v'_p[@]}"); q=$(median "${'$v'_v[@]}"); x=$(median "${'$v'_x[@]}"); y=$(median "${'$v'_y[@]}")'
  printf '%-12s %8s %9s %11s %7s %7s %16s %16s %9s %7s\n' "$name" "$a" "$n" "$b" \
    "$(python3 -c "print(f'{$a/$b:.2f}x')")" "$(python3 -c "print(f'{$n/$b:.2f}x')")" \
    "$x ms $(pct "$((b + x))" "$b")" "$y ms $(pct "$((b + y))" "$b")" "$p" "$q"
done
printf '\ndefaults: s3sync (checksum, fast-list, no-check-bucket) vs rclone (modtime)\n'
printf '%-12s %8s %11s %9s\n' scenario s3sync "rclone dflt" speedup
for sc in init:initial noop:no-op chg:1%-changed; do
  v=${sc%%:*}; name=${sc#*:}
  eval 'a=$(median "${'$v'_s[@]}"); b=$(median "${'$v'_d[@]}")'
  printf '%-12s %8s %11s %9s\n' "$name" "$a" "$b" "$(python3 -c "print(f'{$b/$a:.2f}x')")"
done
printf '(load average at the end: %s)\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
