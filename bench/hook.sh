#!/usr/bin/env bash
# Benchmarks hook on loopback over TLS with keep-alive against a floor run side by side:
# examples/hook_floor.rs, the least a webhook built from the same crates does (rustls 0.23,
# serde_json, one thread per connection, an answer of the same size as the hook's), and the
# same floor in tiny_http's arrangement (`--tiny-http`: TLS in front, tiny_http on a Unix
# socket, 4 workers; no limits, checks or logs). All three servers get the same load client
# and body, in turn; each measure is printed for all three with the ratios hook/floor,
# hook/tiny_http floor (the hook's own work) and tiny_http floor/floor (tiny_http's cost):
# server CPU per request, latency (p50/p99) and throughput
# at concurrency 1 and 32 (closed loop), open-loop p99 at RATES (also with 64 slow clients and
# with 4 connections of large requests alongside), peak RSS and threads.
# Release build, no gRPC.
#
#   bash bench/hook.sh            # REQUESTS=3000 per connection at c=1, 500 per connection at c=32
#                                 # (closed loop), then 100 per connection at RATES="1000 2000"/s,
#                                 # then RSS_REQUESTS=100000 over 32 connections for memory
#   RSS_REQUESTS=1000000 bash bench/hook.sh   # the memory figure of docs/hook.md
#   STATIC=1 bash bench/hook.sh   # hook, floor and client built static, as the image ships the hook
#
# The request is a realistic Pod CREATE AdmissionReview (a Deployment's Pod with managedFields,
# asking for injection of two databases), so every request produces a full patch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REQ1=${REQUESTS:-3000}
REQ32=${REQUESTS32:-500}

# STATIC=1: all three built as the image ships the hook (glibc static-pie, see Containerfile).
out=target/release
if [[ ${STATIC:-0} == 1 ]]; then
  triple=$(rustc -vV | sed -n 's/^host: //p')
  export RUSTFLAGS="-C target-feature=+crt-static"
  cargo build --quiet --release --no-default-features --target "$triple" --bin hook --example hook_load --example hook_floor
  out=target/$triple/release
else
  cargo build --quiet --release --no-default-features --bin hook --example hook_load --example hook_floor
fi
bin=${HOOK_BIN:-$out/hook}   # HOOK_BIN: compare another build side by side
load=$out/examples/hook_load
floor=$out/examples/hook_floor

work=$(mktemp -d)
pid=; fpid=; tpid=
trap 'kill "$pid" "$fpid" "$tpid" 2>/dev/null || true; rm -rf "$work"' EXIT
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key" 2>/dev/null
openssl req -x509 -new -key "$work/ca.key" -subj /CN=bench-ca -days 1 -out "$work/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$work/tls.key" 2>/dev/null   # SEC1, as cert-manager writes
openssl req -new -key "$work/tls.key" -subj /CN=localhost -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -days 1 -extfile "$work/ext" -out "$work/tls.crt" 2>/dev/null

cat >"$work/body.json" <<'JSON'
{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"bench-0001","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"requestKind":{"group":"","version":"v1","kind":"Pod"},"requestResource":{"group":"","version":"v1","resource":"pods"},"namespace":"shop","operation":"CREATE","userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller","groups":["system:serviceaccounts","system:authenticated"]},"object":{"metadata":{"generateName":"web-7d9f8c6b5-","labels":{"app":"web","pod-template-hash":"7d9f8c6b5"},"annotations":{"litestream-hook.kaidotio.github.io/inject":"true","litestream-hook.kaidotio.github.io/path":"/var/lib/app/main.db,/cache/c.db","litestream-hook.kaidotio.github.io/endpoint":"http://minio.storage:9000"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d9f8c6b5","uid":"0b7f7b5e-8d1c-4a55-9f7b-3c1d2e4f5a6b","controller":true,"blockOwnerDeletion":true}],"managedFields":[{"manager":"kube-controller-manager","operation":"Update","apiVersion":"v1","time":"2026-11-24T06:00:00Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:generateName":{},"f:labels":{".":{},"f:app":{}}}}}]},"spec":{"volumes":[{"name":"kube-api-access-abcde","projected":{"sources":[{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}}],"defaultMode":420}}],"containers":[{"name":"app","image":"registry.example/web:1.2.3","ports":[{"containerPort":8080,"protocol":"TCP"}],"resources":{"limits":{"memory":"128Mi"}},"volumeMounts":[{"name":"kube-api-access-abcde","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}],"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","securityContext":{},"schedulerName":"default-scheduler","tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"},"status":{}},"oldObject":null,"dryRun":false,"options":{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}
JSON

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); mport=$(free_port); fport=$(free_port); tport=$(free_port)
start_ns=$(date +%s%N)
LISTEN_ADDR=127.0.0.1:$port METRICS_ADDR=127.0.0.1:$mport TLS_CERT_FILE=$work/tls.crt TLS_KEY_FILE=$work/tls.key \
  HOOK_IMAGE=registry.example/lifeboat:bench SOCKET_DIR=$work LOG_LEVEL=warn "$bin" 2>"$work/hook.log" &
pid=$!
echo "binary: $(du -h "$bin" | cut -f1), $(nproc) cores, body $(wc -c <"$work/body.json") bytes, load average at the start: $(cut -d" " -f1-3 /proc/loadavg)"
SAVE_RESPONSE=$work/answer.json "$load" "127.0.0.1:$port" "$work/ca.crt" "$work/body.json" 1 0 "$start_ns"
"$floor" "127.0.0.1:$fport" "$work/tls.crt" "$work/tls.key" "$work/answer.json" &
fpid=$!
"$load" "127.0.0.1:$fport" "$work/ca.crt" "$work/body.json" 1 0 "$(date +%s%N)" >/dev/null
TMPDIR=$work "$floor" --tiny-http "127.0.0.1:$tport" "$work/tls.crt" "$work/tls.key" "$work/answer.json" &
tpid=$!
"$load" "127.0.0.1:$tport" "$work/ca.crt" "$work/body.json" 1 0 "$(date +%s%N)" >/dev/null
echo "answer: $(wc -c <"$work/answer.json") bytes from all three"
rss_of() { awk "/$1/ {print \$2}" "/proc/$2/status"; }
echo "{\"idle_rss_kb\":{\"hook\":$(rss_of VmRSS $pid),\"floor\":$(rss_of VmRSS $fpid),\"tiny_http_floor\":$(rss_of VmRSS $tpid)}}"

# CPU ticks (user + system, all threads, dead ones included) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# One round: the same load on the hook, the floor and the tiny_http floor in turn; prints the
# three lines, the server CPU per request of each, and the ratios of p50, p99, throughput and CPU.
round() {
  local label=$1; shift
  local out=() cpu=()
  for target in "$pid:$port" "$fpid:$fport" "$tpid:$tport"; do
    local p=${target%%:*} prt=${target##*:} t0 t1 line
    t0=$(ticks "$p")
    line=$("$@" "127.0.0.1:$prt" "$work/ca.crt" "$work/body.json" "${ARGS[@]}")
    t1=$(ticks "$p")
    out+=("$line"); cpu+=("$((t1 - t0))")
  done
  python3 - "$label" "$hz" "${out[@]}" "${cpu[@]}" <<'PY'
import json, sys
label, hz = sys.argv[1], int(sys.argv[2])
lines, ticks = [json.loads(l) for l in sys.argv[3:6]], [int(t) for t in sys.argv[6:9]]
us = [t * 1e6 / hz / max(r["requests"], 1) for t, r in zip(ticks, lines)]
ratio = lambda x, y: round(x / y, 2) if y else None
def ratios(i, j):
    a, b = lines[i], lines[j]
    return {"p50": ratio(a["p50_ms"], b["p50_ms"]), "p99": ratio(a["p99_ms"], b["p99_ms"]),
            "req_per_s": ratio(a["req_per_s"], b["req_per_s"]), "cpu_per_req": ratio(us[i], us[j])}
names = ("hook", "floor", "tiny_http_floor")
print(json.dumps({"round": label}
    | {n: {k: r[k] for k in ("p50_ms", "p99_ms", "req_per_s", "errors")} | {"cpu_us_per_req": round(u)}
       for n, r, u in zip(names, lines, us)}
    | {"ratio_hook_to_floor": ratios(0, 1), "ratio_hook_to_tiny_http_floor": ratios(0, 2),
       "ratio_tiny_http_floor_to_floor": ratios(2, 1)}))
PY
}
ARGS=(1 "$REQ1"); round "closed c=1" "$load"
ARGS=(32 "$REQ32"); round "closed c=32" "$load"
# Open loop: 32 connections together starting RATE requests per second on a fixed schedule
# (latency counted from each request's scheduled start), as an API server under load sends them.
for rate in ${RATES:-1000 2000}; do
  ARGS=(32 "$((REQ32 / 5))"); RATE=$rate round "open $rate/s c=32" "$load"
done
# And once more with slow clients holding connections alongside (64 trickling a ClientHello).
python3 - "$port" "$fport" "$tport" <<'PY' &
import socket, sys, time
socks = []
for port in map(int, sys.argv[1:]):
    for _ in range(64):
        s = socket.create_connection(("127.0.0.1", port)); s.send(b"\x16"); socks.append(s)
time.sleep(60)
PY
slow=$!
sleep 1
ARGS=(32 "$((REQ32 / 5))"); RATE=2000 round "open 2000/s c=32, 64 slow clients" "$load"
kill "$slow" 2>/dev/null || true
# And with large requests alongside: 4 connections sending, back to back, a Pod with 50,000
# annotations (about 1.3 MB, the kind of request that once took seconds and hundreds of MiB),
# to the same server as the round's load.
python3 - "$work/body.json" "$work/large.json" <<'PY'
import json, sys
review = json.load(open(sys.argv[1]))
review["request"]["object"]["metadata"]["annotations"].update({f"example.com/k{i}": "v" for i in range(50000)})
json.dump(review, open(sys.argv[2], "w"))
PY
# with_large LOAD ADDR CA BODY ARGS...: runs the load while 4 connections send large requests.
with_large() {
  "$1" "$2" "$work/ca.crt" "$work/large.json" 4 100000 >/dev/null 2>&1 &
  local big=$!
  sleep 0.5
  "$@"
  kill "$big" 2>/dev/null; wait "$big" 2>/dev/null || true
}
echo "large request: $(wc -c <"$work/large.json") bytes"
ARGS=(32 "$((REQ32 / 5))"); RATE=2000 round "open 2000/s c=32, 4 connections of large requests" with_large "$load"
# The most each server held so far (VmHWM): the slow and large rounds included.
echo "{\"peak_rss_kb_so_far\":{\"hook\":$(rss_of VmHWM $pid),\"floor\":$(rss_of VmHWM $fpid),\"tiny_http_floor\":$(rss_of VmHWM $tpid)}}"
# Where the hook's extra CPU goes, by counters (perf is often unavailable): the system calls each
# server makes per request in a closed c=1 round (strace -c -f attached to it; strace slows both
# alike, so only the counts matter), futex calls being the thread hand-offs.
if command -v strace >/dev/null && [[ ${COUNTERS:-1} == 1 ]]; then
  for target in "hook:$pid:$port" "floor:$fpid:$fport" "tiny_http_floor:$tpid:$tport"; do
    IFS=: read -r name p prt <<<"$target"
    strace -c -f -q -p "$p" -o "$work/strace-$name" &
    spid=$!
    sleep 1
    n=${STRACE_REQUESTS:-300}
    "$load" "127.0.0.1:$prt" "$work/ca.crt" "$work/body.json" 1 "$n" >/dev/null
    kill -INT "$spid"; wait "$spid" 2>/dev/null || true
    python3 - "$name" "$n" "$work/strace-$name" <<'PY'
import json, sys
name, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = {}
for line in open(path):
    parts = line.split()
    if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
        calls[parts[-1]] = int(parts[3])
total = sum(calls.values())
top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
print(json.dumps({"syscalls_per_request": name, "total": round(total / n, 1),
                  "top": {k: round(v / n, 1) for k, v in top}}))
PY
  done
fi
# Memory: RSS_REQUESTS requests (default 100 000; docs/hook.md's figure is for 1 000 000) over
# 32 keep-alive connections on each server in turn, closed loop, after everything above. The
# peak (VmHWM, reset just before through /proc/PID/clear_refs) is the most either held while
# its 32 connections were open; "after" is once they have closed.
if [[ ${RSS_REQUESTS:-100000} -gt 0 ]]; then
  per=$(( (${RSS_REQUESTS:-100000} + 31) / 32 ))
  for target in "hook:$pid:$port" "floor:$fpid:$fport" "tiny_http_floor:$tpid:$tport"; do
    IFS=: read -r name p prt <<<"$target"
    echo 5 >"/proc/$p/clear_refs"
    line=$("$load" "127.0.0.1:$prt" "$work/ca.crt" "$work/body.json" 32 "$per")
    printf '%s %s %s\n' "$name" "$(awk '/VmHWM/ {print $2}' "/proc/$p/status")" "$(awk '/VmRSS/ {print $2}' "/proc/$p/status")"
    echo "$line" >&2
  done >"$work/rss" 2>"$work/rss-load"
  python3 - "$work/rss" "$work/rss-load" "$per" <<'PY'
import json, sys
rows = [l.split() for l in open(sys.argv[1])]
loads = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
kb = {name: (int(peak), int(after)) for name, peak, after in rows}
print(json.dumps({"memory": f"{32 * int(sys.argv[3])} requests over 32 connections",
    "hook": {"peak_rss_kb": kb["hook"][0], "rss_after_kb": kb["hook"][1], "errors": loads[0]["errors"]},
    "floor": {"peak_rss_kb": kb["floor"][0], "rss_after_kb": kb["floor"][1], "errors": loads[1]["errors"]},
    "tiny_http_floor": {"peak_rss_kb": kb["tiny_http_floor"][0], "rss_after_kb": kb["tiny_http_floor"][1],
        "errors": loads[2]["errors"]},
    "ratio_hook_to_floor": {"peak_rss": round(kb["hook"][0] / kb["floor"][0], 2)},
    "ratio_hook_to_tiny_http_floor": {"peak_rss": round(kb["hook"][0] / kb["tiny_http_floor"][0], 2)}}))
PY
fi
echo "load average: $(cut -d" " -f1-3 /proc/loadavg)"
for p in "$pid" "$fpid" "$tpid"; do
  echo "{\"pid\":$p,\"peak_rss_kb\":$(awk '/VmHWM/ {print $2}' /proc/$p/status),\"threads_now\":$(awk '/Threads/ {print $2}' /proc/$p/status)}"
done
kill "$fpid" "$tpid"
kill -TERM "$pid"
wait "$pid" && echo "exit after SIGTERM: 0"
