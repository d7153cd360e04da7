#!/usr/bin/env bash
# Benchmarks hook on loopback over TLS with keep-alive: start-up time, latency (p50/p99) and
# throughput at concurrency 1 and 32, and peak RSS. Release build, no gRPC.
#
#   bash bench/hook.sh            # REQUESTS=3000 per connection at c=1, 500 per connection at c=32
#                                 # (closed loop), then 100 per connection at RATES="1000 2000 4000"/s
#
# The request is a realistic Pod CREATE AdmissionReview (a Deployment's Pod with managedFields,
# asking for injection of two databases), so every request produces a full patch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REQ1=${REQUESTS:-3000}
REQ32=${REQUESTS32:-500}

cargo build --quiet --release --no-default-features --bin hook --example hook_load
bin=${HOOK_BIN:-target/release/hook}   # HOOK_BIN: compare another build side by side
load=target/release/examples/hook_load

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
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

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start_ns=$(date +%s%N)
LISTEN_ADDR=127.0.0.1:$port METRICS_ADDR=127.0.0.1:$mport TLS_CERT_FILE=$work/tls.crt TLS_KEY_FILE=$work/tls.key \
  HOOK_IMAGE=registry.example/lifeboat:bench SOCKET_DIR=$work LOG_LEVEL=warn "$bin" 2>"$work/hook.log" &
pid=$!

echo "binary: $(du -h "$bin" | cut -f1), $(nproc) cores, body $(wc -c <"$work/body.json") bytes"
"$load" "127.0.0.1:$port" "$work/ca.crt" "$work/body.json" 1 0 "$start_ns"
echo "{\"idle_rss_kb\":$(awk '/VmRSS/ {print $2}' /proc/$pid/status)}"
"$load" "127.0.0.1:$port" "$work/ca.crt" "$work/body.json" 1 "$REQ1"
echo "{\"rss_after_c1_kb\":$(awk '/VmRSS/ {print $2}' /proc/$pid/status)}"
"$load" "127.0.0.1:$port" "$work/ca.crt" "$work/body.json" 32 "$REQ32"
echo "{\"peak_rss_after_c32_kb\":$(awk '/VmHWM/ {print $2}' /proc/$pid/status)}"
# Open loop: 32 connections together starting RATE requests per second on a fixed schedule
# (latency counted from each request's scheduled start), as an API server under load sends them.
for rate in ${RATES:-1000 2000 4000}; do
  RATE=$rate "$load" "127.0.0.1:$port" "$work/ca.crt" "$work/body.json" 32 "$((REQ32 / 5))"
done
echo "load average: $(cut -d" " -f1-3 /proc/loadavg)"
echo "{\"peak_rss_kb\":$(awk '/VmHWM/ {print $2}' /proc/$pid/status),\"threads_now\":$(awk '/Threads/ {print $2}' /proc/$pid/status)}"
kill -TERM "$pid"
wait "$pid" && echo "exit after SIGTERM: 0"
