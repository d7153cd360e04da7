#!/usr/bin/env python3
"""lifeboat quickstart: the three binaries against real local servers, on embedded defaults.

Run by `bash tests/quickstart.sh` (which installs the tools and builds the binaries first), or
directly with the tools' Python: `.tools/bin/python tests/quickstart.py [--bin-dir DIR]`.

  s3sync    two `rclone serve s3` servers on 127.0.0.1; the source bucket is seeded over S3,
            s3sync runs as a dry run, then for real (the destination is listed and compared
            with the source), then again (a no-op).
  hook      started with a certificate made now; one AdmissionReview for an annotated Pod over
            HTTPS; the decision and the JSON Patch are shown, and the patched Pod is checked
            against the Kubernetes 1.33 Pod schema.
  etcdsnap  a 3-member etcd cluster over TLS (client certificates) and the Kubernetes API
            stand-in (tests/py); a VolumeGroupSnapshot through the CSI Unix socket with an
            independent gRPC client; the snapshot file is checked with `etcdutl snapshot status`;
            then the group is deleted (Job, PVC and records gone).

Everything binds 127.0.0.1 and lives in one temporary directory; every process started here is
stopped and the directory removed at the end, also on failure, Ctrl-C or SIGTERM. Exit status 0
only when every step succeeded. No secret is printed (the S3 keys are demo values anyway).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY_DIR = REPO / "tests" / "py"
sys.path.insert(0, str(PY_DIR))

# Child tools must not see the machine's AWS/rclone settings (AWS_CA_BUNDLE in particular).
for _k in list(os.environ):
    if _k.startswith(("AWS_", "RCLONE_")):
        del os.environ[_k]

from etcd_cluster import EtcdCluster, free_ports, scrubbed_env, tools_bin as default_tools  # noqa: E402
from pki import make_ca  # noqa: E402
from waiting import wait_for  # noqa: E402

# Demo credentials of the two local S3 servers: never printed, never in any argv.
S3_ACCESS_KEY = "quickstart-access"
S3_SECRET_KEY = "quickstart-secret-not-a-real-one"
SOURCE_BUCKET = "demo-source"
DEST_BUCKET = "demo-backup"
SEED = {
    "reports/2026-10.csv": b"month,orders\n2026-10,1180\n",
    "reports/2026-11.csv": b"month,orders\n2026-11,1342\n",
    "images/logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
    "db/orders.dump": bytes(range(256)) * 4096,  # 1 MiB
    "README.txt": b"seeded by tests/quickstart.py\n",
}
STALE = {"old/removed-upstream.txt": b"this object is no longer in the source\n"}
HOOK_PREFIX = "litestream-hook.kaidotio.github.io"
ETCD_NS = "etcd"

WIDTH = 100


# ---- output -----------------------------------------------------------------------------------

def header(title: str) -> None:
    print(f"\n== {title} " + "=" * max(3, WIDTH - len(title) - 4), flush=True)


def say(text: str = "", indent: int = 2) -> None:
    print(textwrap.indent(text, " " * indent) if text else "", flush=True)


def clip(text: str, n: int = WIDTH + 16) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def log_lines(path: Path) -> list[dict]:
    """The JSON log lines of one of our binaries (non-JSON lines kept as {"msg": line})."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line)
            out.append(obj if isinstance(obj, dict) else {"msg": line})
        except ValueError:
            out.append({"msg": line})
    return out


def fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:.3g}" if v < 1000 else str(round(v))
    return json.dumps(v)


def show_log(lines: list[dict], keep=None, fields=None) -> None:
    """One short line per JSON log line: `level msg key=value ...` (time dropped, values clipped)."""
    for obj in lines:
        if keep and obj.get("msg") not in keep:
            continue
        rest = {k: v for k, v in obj.items() if k not in ("time", "level", "msg")}
        if fields is not None:  # in the order given
            rest = {k: rest[k] for k in fields if k in rest}
        kv = " ".join(f"{k}={fmt(v)}" for k, v in rest.items())
        say(clip(f"| {obj.get('level', '-'):5} {obj.get('msg', '')}  {kv}".rstrip()), 4)


def tail(path: Path, n: int = 15) -> str:
    if not path.exists():
        return f"({path.name}: no output)"
    lines = path.read_text(errors="replace").splitlines()[-n:]
    return "\n".join(lines)


class StepFailed(Exception):
    pass


def check(cond, message: str) -> None:
    if not cond:
        raise StepFailed(message)


# ---- processes --------------------------------------------------------------------------------

class Processes:
    """Every server process started here, each in its own session (a Ctrl-C reaches only this
    script, which then stops them in reverse order: SIGTERM, bounded wait, SIGKILL)."""

    def __init__(self):
        self.items: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
        with open(log, "ab") as f:
            p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                 start_new_session=True, cwd=log.parent)
        self.items.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 10) -> int | None:
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass
        return p.returncode

    def stop_all(self) -> None:
        for _, p in reversed(self.items):
            self.stop(p)
        self.items.clear()


def wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 20) -> None:
    """Wait (bounded) until `port` accepts connections; fail at once if `proc` exits."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if proc.poll() is not None:
            raise StepFailed(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise StepFailed(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s:\n{tail(log)}")


# ---- step: s3sync -----------------------------------------------------------------------------

def s3_client(endpoint: str):
    import boto3
    import botocore.config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=5, read_timeout=20,
            request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


def listing(client, bucket: str) -> dict[str, int]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"MaxItems": 10000}):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


SUMMARY_FIELDS = ["outcome", "transfers", "deletes", "bytes", "errors", "elapsed_s"]


def run_s3sync(ctx, source_url: str, dest_url: str, dry_run: bool) -> tuple[int, list[dict]]:
    env = scrubbed_env()
    env.update({
        "SOURCE_S3_ENDPOINT": source_url, "SOURCE_ACCESS_KEY": S3_ACCESS_KEY,
        "SOURCE_SECRET_KEY": S3_SECRET_KEY, "SOURCE_BUCKET": SOURCE_BUCKET,
        "DEST_S3_ENDPOINT": dest_url, "DEST_ACCESS_KEY": S3_ACCESS_KEY,
        "DEST_SECRET_KEY": S3_SECRET_KEY, "DEST_BUCKET": DEST_BUCKET, "DEST_PREFIX": "/",
        "DRY_RUN": "true" if dry_run else "false",
        "RCLONE_BINARY": str(ctx.tools / "rclone"),
        "LOG_LEVEL": "info",
    })
    log = ctx.work / ("s3sync-dry-run.log" if dry_run else "s3sync.log")
    with open(log, "wb") as f:
        try:
            cp = subprocess.run([str(ctx.bin_dir / "s3sync")], env=env, stdin=subprocess.DEVNULL,
                                stdout=f, stderr=f, timeout=60)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"s3sync did not finish within 60 s:\n{tail(log)}") from None
    return cp.returncode, log_lines(log)


def step_s3sync(ctx) -> str:
    procs, urls = [], []
    ports = free_ports(2)
    for name, port in zip(("source", "destination"), ports):
        d = ctx.work / f"s3-{name}"
        d.mkdir()
        env = scrubbed_env({"RCLONE_CONFIG": "/dev/null",
                            # the key pair by environment (CSV-quoted: one "key,secret" entry), not argv
                            "RCLONE_AUTH_KEY": f'"{S3_ACCESS_KEY},{S3_SECRET_KEY}"'})
        log = ctx.work / f"s3-{name}.log"
        p = ctx.procs.start(f"rclone serve s3 ({name})", [str(ctx.tools / "rclone"), "serve", "s3", "--addr",
                                                         f"127.0.0.1:{port}", str(d)], env, log)
        wait_port(port, p, f"rclone serve s3 ({name})", log)
        procs.append(p)
        urls.append(f"http://127.0.0.1:{port}")
    say(f"S3 servers: source {urls[0]} (bucket {SOURCE_BUCKET}), destination {urls[1]} (bucket {DEST_BUCKET})")
    src, dst = s3_client(urls[0]), s3_client(urls[1])
    src.create_bucket(Bucket=SOURCE_BUCKET)
    dst.create_bucket(Bucket=DEST_BUCKET)
    for key, body in SEED.items():
        src.put_object(Bucket=SOURCE_BUCKET, Key=key, Body=body)
    for key, body in STALE.items():
        dst.put_object(Bucket=DEST_BUCKET, Key=key, Body=body)
    say(f"seeded {len(SEED)} objects ({sum(map(len, SEED.values()))} bytes) into {SOURCE_BUCKET}, "
        f"and {len(STALE)} stale object into {DEST_BUCKET}")

    say("\ns3sync with DRY_RUN=true:")
    code, lines = run_s3sync(ctx, urls[0], urls[1], dry_run=True)
    summary = [x for x in lines if "outcome" in x]
    show_log(summary, fields=SUMMARY_FIELDS)
    check(code == 0, f"the dry run exited with {code}")
    check(summary and summary[-1]["outcome"] == "dry_run", "the dry run logged no dry-run summary")
    check(listing(dst, DEST_BUCKET) == {k: len(v) for k, v in STALE.items()}, "the dry run changed the destination")
    say("destination unchanged by the dry run", 4)

    say("\ns3sync:")
    code, lines = run_s3sync(ctx, urls[0], urls[1], dry_run=False)
    show_log(lines, keep={"starting", "pre-flight ok", "sync finished", "sync failed", "sync refused"},
             fields=["source", "dest", "compare", "max_delete", "side", "bucket", "has_objects"] + SUMMARY_FIELDS)
    summary = [x for x in lines if "outcome" in x]
    check(code == 0, f"s3sync exited with {code}:\n" + "\n".join(json.dumps(x) for x in lines[-8:]))
    check(summary and summary[-1]["outcome"] == "success", "s3sync logged no success summary")
    got = listing(dst, DEST_BUCKET)
    say(f"\ndestination {DEST_BUCKET} now holds:")
    for key, size in sorted(got.items()):
        say(f"{size:>9}  {key}", 4)
    check(got == {k: len(v) for k, v in SEED.items()}, f"destination listing {sorted(got)} != source {sorted(SEED)}")
    for key, body in SEED.items():
        check(dst.get_object(Bucket=DEST_BUCKET, Key=key)["Body"].read() == body, f"{key} differs after the sync")
    s = summary[-1]
    check((s.get("transfers"), s.get("deletes")) == (len(SEED), len(STALE)),
          f"expected {len(SEED)} transfers and {len(STALE)} delete, the summary says {s}")

    say("\ns3sync again (the usual CronJob run: nothing changed):")
    code, lines = run_s3sync(ctx, urls[0], urls[1], dry_run=False)
    again = [x for x in lines if "outcome" in x]
    show_log(again, fields=SUMMARY_FIELDS)
    check(code == 0 and again and again[-1]["outcome"] == "success", f"the re-sync exited with {code}")
    check((again[-1].get("transfers"), again[-1].get("deletes")) == (0, 0), f"the re-sync changed things: {again[-1]}")
    for p in reversed(procs):
        ctx.procs.stop(p)
    return (f"{s.get('transfers')} copied, {s.get('deletes')} deleted, {s.get('bytes')} bytes; destination == "
            "source; re-sync: no-op")


# ---- step: hook -------------------------------------------------------------------------------

def demo_review() -> dict:
    """An AdmissionReview as the API server sends it for a Deployment's Pod (no name, no namespace)."""
    pod = {
        "metadata": {
            "generateName": "orders-6b8d9c7f5-",
            "labels": {"app": "orders", "pod-template-hash": "6b8d9c7f5"},
            "annotations": {f"{HOOK_PREFIX}/inject": "true", f"{HOOK_PREFIX}/path": "/var/lib/orders/orders.db",
                            f"{HOOK_PREFIX}/bucket": "orders-backup"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-6b8d9c7f5",
                                 "uid": "7f0c5d0e-9c1b-4f53-8a0e-2b6c1d3e4f5a", "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "containers": [{"name": "app", "image": "registry.example/orders:1.4.2",
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}]}],
            "restartPolicy": "Always",
            "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
        },
    }
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "3f6b9a52-quickstart", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": None, "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def patch_brief(ops: list[dict]) -> list[str]:
    """The patch as a few readable lines: each operation, one line per added list item (its name
    and what matters about it), and the Litestream config the config writer carries, pretty."""
    out, configs = [], []
    for op in ops:
        value = op.get("value")
        if not isinstance(value, list):
            out.append(f"{op['op']} {op['path']} = {json.dumps(value)}")
            continue
        out.append(f"{op['op']} {op['path']}")
        for item in value:
            if not isinstance(item, dict):
                out.append(f"    {json.dumps(item)}")
                continue
            bits = []
            if "image" in item:
                bits.append(item["image"])
                if item.get("restartPolicy") == "Always":
                    bits.append("(native sidecar)")
                bits.append(" ".join(item.get("command", []) + item.get("args", [])))
                for e in item.get("env", []):
                    if e.get("name") == "LIFEBOAT_LITESTREAM_CONFIG":
                        configs.append(e.get("value", ""))
            elif "mountPath" in item:
                bits.append(f"-> {item['mountPath']}" + (f" (subPath {item['subPath']})" if "subPath" in item else ""))
            else:
                bits.append(json.dumps({k: v for k, v in item.items() if k != "name"}))
            out.append(f"    {item.get('name', '?'):<27} " + " ".join(b for b in bits if b))
    for raw in configs:
        out.append("Litestream config (written into the config volume by litestream-hook-config):")
        try:
            out.extend("    " + line for line in json.dumps(json.loads(raw), indent=2).splitlines())
        except ValueError:
            out.append(f"    {raw}")
    return out


def step_hook(ctx) -> str:
    pki_dir = ctx.work / "hook-pki"
    ca = make_ca(pki_dir, "quickstart-ca")
    cert, key = ca.issue(pki_dir, "hook", ["localhost", "127.0.0.1"], client=False, server=True)
    port, metrics_port = free_ports(2)
    sock_dir = ctx.socket_dir / "hook"
    sock_dir.mkdir()
    env = scrubbed_env({
        "LISTEN_ADDR": f"127.0.0.1:{port}", "METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key), "SOCKET_DIR": str(sock_dir),
        "HOOK_IMAGE": "registry.example/lifeboat/hook:0.1.0", "LOG_LEVEL": "info",
    })
    log = ctx.work / "hook.log"
    proc = ctx.procs.start("hook", [str(ctx.bin_dir / "hook")], env, log)
    wait_port(port, proc, "hook", log)
    say(f"hook serving https://127.0.0.1:{port}/mutate with a certificate signed by a CA made just now")

    review = demo_review()
    tls = ssl.create_default_context(cafile=str(ca.cert_path))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=10)
    try:
        conn.request("POST", "/mutate?timeout=10s", body=json.dumps(review),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    check(resp.status == 200, f"POST /mutate answered {resp.status}: {body[:300]!r}")
    answer = json.loads(body)["response"]
    check(answer.get("uid") == review["request"]["uid"], "the response does not echo the request uid")
    say(f"POST /mutate: AdmissionReview CREATE Pod {review['request']['object']['metadata']['generateName']}* "
        "in namespace shop,")
    say("annotated inject=true, path=/var/lib/orders/orders.db, bucket=orders-backup:")
    say(f"decision: allowed={answer.get('allowed')} patchType={answer.get('patchType')} uid={answer.get('uid')}", 4)
    check(answer.get("allowed") is True and answer.get("patchType") == "JSONPatch" and answer.get("patch"),
          f"expected an allowed response with a JSON Patch, got {json.dumps(answer)[:300]}")
    ops = json.loads(base64.b64decode(answer["patch"]))
    say(f"JSON Patch, decoded ({len(ops)} operations; abridged, --verbose prints it whole):", 4)
    for line in patch_brief(ops):
        say(clip(line), 6)
    if ctx.verbose:
        say(json.dumps(ops, indent=2), 6)

    # Apply it with an independent JSON Patch implementation and validate the result strictly.
    pod = dict(review["request"]["object"], apiVersion="v1", kind="Pod")
    cp = subprocess.run([sys.executable, str(PY_DIR / "hook_patch.py")], input=json.dumps(
        {"pod": pod, "patch": answer["patch"]}), capture_output=True, text=True, timeout=60)
    check(cp.returncode == 0, f"hook_patch.py failed: {cp.stderr[-500:]}")
    result = json.loads(cp.stdout)
    check("error" not in result, f"the patch does not give a valid Pod: {result.get('error')}")
    patched = result["pod"]["spec"]
    inits = [c["name"] for c in patched.get("initContainers", [])]
    check(len(inits) == 3 and any(c.get("restartPolicy") == "Always" for c in patched["initContainers"]),
          f"expected a config writer, a restore and a native replicate sidecar, got {inits}")
    say("patched Pod (applied with python jsonpatch) is valid against the Kubernetes 1.33 Pod schema, strictly", 4)
    show_log(log_lines(log))
    code = ctx.procs.stop(proc)
    check(code == 0, f"hook exited with {code} on SIGTERM:\n{tail(log)}")
    return f"allowed; {len(ops)}-op patch: config writer, restore, replicate sidecar; patched Pod valid"


# ---- step: etcdsnap ---------------------------------------------------------------------------

def step_etcdsnap(ctx) -> str:
    from etcdsnap_driver import Driver, create_group_when_cut, generate_stubs, seed_cluster
    from kube_standin import KubeStandin

    binary = ctx.bin_dir / "etcdsnap"
    check(binary.exists(), f"{binary} is missing (cargo build --bins)")
    cluster = EtcdCluster(ctx.work / "etcd", members=3, tools=ctx.tools)
    ctx.cleanups.append(cluster.stop)
    cluster.start()
    leader = cluster.leader_index()
    say(f"etcd 3.5, 3 members, TLS with client certificates: {', '.join(u[8:] for u in cluster.client_urls)} "
        f"(leader m{leader})")
    for i in range(25):
        cluster.put(f"/quickstart/orders/{i:03}", json.dumps({"order": i, "total": 10 * i}))
    say("wrote 25 keys under /quickstart/orders/")

    kube = KubeStandin(ctx.work / "kube", ctx.tools, bin_dir=ctx.bin_dir)
    ctx.cleanups.append(kube.stop)
    kube.start()
    # The handle PV/PVC pair of the README's etcdsnap section and the client TLS Secret, seeded
    # as the etcdsnap tests do it.
    volume = seed_cluster(kube, cluster, ETCD_NS, "main")
    pv = kube.get_object("persistentvolumes", None, f"{ETCD_NS}-main-handle")
    check(pv is not None, "the handle PV was not seeded")
    check(volume == pv["spec"]["csi"]["volumeHandle"], f"the handle PVC {volume} is not the PV's volumeHandle")
    say(f"Kubernetes API stand-in {kube.url} seeded with Secret {ETCD_NS}/main-client-tls (etcd client TLS)")
    phase = (kube.get_object("persistentvolumeclaims", ETCD_NS, "main-handle") or {}).get("status", {}).get("phase")
    say(f"and the handle pair: PV {pv['metadata']['name']} (volumeHandle {volume}), PVC {volume} "
        f"labelled etcd.io/cluster=main ({phase})")

    pb2, pb2_grpc = generate_stubs(ctx.work / "stubs")
    driver = Driver(ctx.bin_dir, ctx.socket_dir / "etcdsnap", kube.kubeconfig_path, pb2, pb2_grpc,
                    LOG_LEVEL="info", PVC_MIN_SIZE="64Mi", JOB_BACKOFF_LIMIT="0")
    ctx.cleanups.append(driver.stop)
    driver.start()
    info = driver.identity.GetPluginInfo(pb2.GetPluginInfoRequest(), timeout=10)
    say(f"etcdsnap serving CSI on unix://{driver.socket}, KUBECONFIG -> the stand-in")
    say(f"GetPluginInfo -> {info.name} {info.vendor_version}")

    started = time.monotonic()
    # Answered once etcd has cut the snapshot (ABORTED before, which the sidecar retries).
    group = create_group_when_cut(driver, pb2, "quickstart-group", [volume])
    say(f"CreateVolumeGroupSnapshot(quickstart-group, [{volume}]) -> {group.group_snapshot_id} "
        f"ready_to_use={group.ready_to_use}")

    def ready():
        g = driver.group.GetVolumeGroupSnapshot(pb2.GetVolumeGroupSnapshotRequest(
            group_snapshot_id=group.group_snapshot_id), timeout=30).group_snapshot
        return g if g.ready_to_use else None
    try:
        done = wait_for(ready, 60, "the group snapshot to be ready_to_use", interval=0.2)
    except AssertionError as e:
        raise StepFailed(f"{e}\n{tail(driver.log_path)}") from None
    took = time.monotonic() - started
    snap = done.snapshots[0]
    say(f"ready_to_use after {took:.1f} s: snapshot {snap.snapshot_id} of {snap.source_volume_id}, "
        f"size {snap.size_bytes} bytes, created {time.strftime('%H:%M:%S', time.gmtime(snap.creation_time.seconds))} UTC")
    reported = [x for x in log_lines(driver.log_path)
                if x.get("msg") == "snapshot ready" and x.get("snapshot") == snap.snapshot_id]
    check(reported, "etcdsnap logged no `snapshot ready` line for the snapshot")
    rep = reported[-1]
    say(f"etcdsnap reports: revision {rep.get('revision')}, hash {rep.get('hash')}, {rep.get('keys')} keys", 4)

    path = kube.pvc_dir(ETCD_NS, "etcdsnap-" + snap.snapshot_id) / "snapshot.db"
    cp = subprocess.run([str(ctx.tools / "etcdutl"), "snapshot", "status", str(path), "-w", "json"],
                        capture_output=True, text=True, timeout=30, env=scrubbed_env())
    check(cp.returncode == 0, f"etcdutl snapshot status failed: {cp.stderr[-500:]}")
    st = json.loads(cp.stdout)
    say(f"etcdutl snapshot status {path.name} (in the snapshot's PVC): hash {st['hash']}, revision {st['revision']}, "
        f"{st['totalKey']} keys, {st['totalSize']} bytes", 4)
    check((st["hash"], st["revision"], st["totalSize"]) == (rep.get("hash"), rep.get("revision"), snap.size_bytes),
          f"etcdutl says {st}, etcdsnap reported {rep} and size {snap.size_bytes}")
    check(st["totalKey"] >= 25, f"the snapshot holds {st['totalKey']} keys, fewer than the 25 written")
    say("verified: hash, revision and size match what etcdsnap reported", 4)
    show_log(log_lines(driver.log_path), keep={"serving", "etcd cluster healthy", "snapshot job started",
                                                "group snapshot started", "snapshot ready"},
             fields=["cluster", "healthy", "members", "member", "group", "volumes", "job", "revision", "seconds"])

    driver.group.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(
        group_snapshot_id=group.group_snapshot_id, snapshot_ids=[snap.snapshot_id]), timeout=30)
    left = kube.objects("jobs", ETCD_NS) + [
        o for o in kube.objects("persistentvolumeclaims", ETCD_NS) if o["metadata"]["name"].startswith("etcdsnap-")]
    check(not left, f"DeleteVolumeGroupSnapshot left {[o['metadata']['name'] for o in left]}")
    say("DeleteVolumeGroupSnapshot: Job, PVC and records removed")
    check(kube.schema_failures == [], f"objects failed strict schema validation: {kube.schema_failures}")
    check(kube.job_problems == [], f"Jobs a real cluster could not run: {kube.job_problems}")
    say("every object etcdsnap sent to the API passed strict Kubernetes 1.33 schema validation")
    code = driver.stop()
    check(code == 0, f"etcdsnap exited with {code} on SIGTERM:\n{tail(driver.log_path)}")
    return f"{snap.size_bytes} bytes, revision {st['revision']}, hash {st['hash']}; etcdutl agrees"


# ---- main -------------------------------------------------------------------------------------

class Context:
    def __init__(self, work: Path, bin_dir: Path, tools: Path, verbose: bool):
        self.work, self.bin_dir, self.tools, self.verbose = work, bin_dir, tools, verbose
        self.procs = Processes()
        self.cleanups = []
        # Unix socket paths are limited to 107 bytes: with a long working directory, the sockets
        # (and the etcdsnap driver's directory) go to a short one in /tmp, removed at the end too.
        self.socket_dir = work if len(str(work)) <= 48 else Path(tempfile.mkdtemp(prefix="lbqs.", dir="/tmp"))

    def cleanup(self) -> None:
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                print(f"  cleanup: {e}", file=sys.stderr)
        self.cleanups.clear()
        self.procs.stop_all()


class Interrupted(BaseException):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", type=Path,
                    default=Path(os.environ.get("LIFEBOAT_BIN_DIR") or REPO / "target" / "debug"))
    ap.add_argument("--tools", type=Path, default=default_tools())
    ap.add_argument("--workdir", type=Path, help="an empty directory to work in (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs) at the end")
    ap.add_argument("--verbose", action="store_true", help="print the whole JSON Patch")
    args = ap.parse_args()

    signalled = []

    def on_signal(signum, _frame):
        signalled.append(signum)
        if len(signalled) == 1:  # the first one interrupts; cleanup then runs undisturbed
            raise Interrupted(signal.Signals(signum).name)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    for tool in ("rclone", "etcd", "etcdctl", "etcdutl"):
        if not (args.tools / tool).exists():
            print(f"quickstart: {tool} missing in {args.tools}: run `bash tests/tools.sh`", file=sys.stderr)
            return 2
    os.environ["LIFEBOAT_TOOLS"] = str(args.tools)
    os.environ["LIFEBOAT_BIN_DIR"] = str(args.bin_dir)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = args.workdir
    else:
        work = Path(tempfile.mkdtemp(prefix="lifeboat-quickstart."))
    ctx = Context(work, args.bin_dir, args.tools, args.verbose)
    steps = [("s3sync", "s3sync: sync one bucket into another (two rclone S3 servers)", step_s3sync),
             ("hook", "hook: one AdmissionReview over HTTPS", step_hook),
             ("etcdsnap", "etcdsnap: a VolumeGroupSnapshot of a TLS etcd cluster over the CSI socket", step_etcdsnap)]
    results = []
    started = time.monotonic()
    interrupted = None
    try:
        for name, title, fn in steps:
            header(title)
            t0 = time.monotonic()
            try:
                check((args.bin_dir / name).exists(), f"{args.bin_dir / name} is missing: run `cargo build --bins`")
                detail = fn(ctx)
                results.append((name, True, detail, time.monotonic() - t0))
            except Interrupted:
                raise
            except Exception as e:  # noqa: BLE001 - every step reports and the next one runs
                msg = str(e) if isinstance(e, StepFailed) else f"{type(e).__name__}: {e}"
                say(f"FAILED: {msg}")
                results.append((name, False, msg.splitlines()[0] if msg else type(e).__name__,
                                time.monotonic() - t0))
            finally:
                ctx.cleanup()
    except Interrupted as e:
        interrupted = str(e)
        print(f"\nquickstart: interrupted by {interrupted}: stopping everything", file=sys.stderr, flush=True)
    finally:
        ctx.cleanup()
        if not args.keep:
            shutil.rmtree(ctx.socket_dir, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)

    header("summary")
    for name, ok, detail, secs in results:
        say(clip(f"{'ok    ' if ok else 'FAILED'} {name:<9} {secs:5.1f} s  {detail}"))
    for name, _, _ in steps[len(results):]:
        say(f"{'SKIPPED':<6} {name}")
    ok = interrupted is None and len(results) == len(steps) and all(r[1] for r in results)
    say(f"\n{'all steps succeeded' if ok else 'quickstart FAILED'} in {time.monotonic() - started:.1f} s; "
        f"every process stopped, {'temporary files removed' if not args.keep else 'files kept in ' + str(work)}"
        + (f" and {ctx.socket_dir}" if args.keep and ctx.socket_dir != work else ""))
    if interrupted:
        return 130 if interrupted == "SIGINT" else 143
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
