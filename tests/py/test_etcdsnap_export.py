"""etcdsnap's S3 copies (issue 9, "copies that survive the loss of the cluster"): each verified
snapshot uploaded by the Job's `etcdsnap export` container to real S3 servers (`rclone serve s3`
and moto), its SHA-256 checked against the copy read back before the snapshot is ready, the copy
deleted with the snapshot unless retained; a refused or corrupted upload never reports ready.
A real 3-member etcd over TLS, the strict Kubernetes stand-in running the Jobs' real programs,
csi-snapshotter's calls as csi_sidecar.py models them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time

import grpc
import pytest

from csi_sidecar import Sidecar
from etcdsnap_fixtures import META, NS, code_of, driver, volume  # noqa: F401 - fixtures
from s3_servers import ACCESS_KEY, SECRET_KEY, FaultProxy, s3_server
from waiting import wait_for

BUCKET = "etcd-copies"
KEYS_SECRET = "s3-keys"


def record(kube, sid) -> dict:
    cm = kube.get_object("configmaps", META, "etcdsnap-" + sid)
    return json.loads(cm["data"]["record.json"]) if cm else None


def put_keys_secret(kube, name: str = KEYS_SECRET) -> None:
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    kube.put_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                     "data": {"AWS_ACCESS_KEY_ID": b64(ACCESS_KEY), "AWS_SECRET_ACCESS_KEY": b64(SECRET_KEY)}})


def fill(cluster, mib: int = 8) -> None:
    """Enough incompressible data that the snapshot needs several 5 MiB parts."""
    if cluster.etcdctl("get", "/export-fill/0", "--keys-only", check=True).stdout.strip():
        return
    for i in range(mib * 8):
        cluster.etcdctl("put", f"/export-fill/{i}", input=base64.b64encode(os.urandom(96 * 1024)), check=True)


def export_params(endpoint: str, **extra) -> dict:
    p = {"exportBucket": BUCKET, "exportEndpoint": endpoint, "exportSecretName": KEYS_SECRET}
    p.update(extra)
    return p


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("flavor,retention", [("rclone", "delete"), ("moto", "retain")])
def test_copy_is_checked_before_ready_and_follows_the_snapshot(flavor, retention, tmp_path, driver, kube,
                                                               etcd_cluster, volume, stubs):
    pb2, _ = stubs
    fill(etcd_cluster)
    with s3_server(flavor, etcd_cluster.tools, tmp_path / "s3") as s3:
        s3.make_bucket(BUCKET)
        put_keys_secret(kube)
        params = export_params(s3.endpoint, exportPartSize="5Mi", exportPrefix="prod/", exportRetention=retention)
        req = pb2.CreateSnapshotRequest(name=f"snap-{flavor}", source_volume_id=volume, parameters=params)
        # Saved and verified, the upload held: cut (OK) but not ready.
        kube.hold_containers("export")
        first = wait_for(lambda: driver.controller.CreateSnapshot(req, timeout=30).snapshot, 60, "the cut")
        assert not first.ready_to_use
        sid = first.snapshot_id
        time.sleep(1.0)
        assert not driver.controller.CreateSnapshot(req, timeout=30).snapshot.ready_to_use
        assert s3.keys(BUCKET) == []
        job = kube.get_object("jobs", NS, "etcdsnap-" + sid)
        export = job["spec"]["template"]["spec"]["containers"][0]
        assert export["name"] == "export" and export["command"] == ["/usr/local/bin/etcdsnap"]
        assert all("valueFrom" in e and "value" not in e for e in export["env"])  # keys by reference only
        kube.release_containers()
        content = Sidecar(driver, pb2).create_snapshot(f"snap-{flavor}", volume, params, budget=120)
        assert content.ready and content.snapshot_handle == sid

        key = f"prod/{NS}/main/{sid}.db"
        assert s3.keys(BUCKET) == [key]
        local = kube.pvc_dir(NS, "etcdsnap-" + sid) / "snapshot.db"
        want = sha256(local)
        obj = s3.boto().get_object(Bucket=BUCKET, Key=key)
        body = obj["Body"].read()
        assert hashlib.sha256(body).hexdigest() == want and len(body) == local.stat().st_size
        assert {k.lower(): v for k, v in obj["Metadata"].items()}.get("sha256") == want  # rclone: "Sha256"
        rec = record(kube, sid)
        assert rec["state"] == "ready"
        assert rec["export"]["sha256"] == want and rec["export"]["size"] == len(body)
        assert rec["export"]["parts"] == -(-len(body) // (5 << 20)) >= 2, rec["export"]  # multipart, 5 MiB parts
        # rclone serve s3 refuses a mismatched Content-MD5 (BadDigest); moto does not, so its copy
        # is read back in full.
        assert rec["export"]["check"] == {"rclone": "content-md5", "moto": "read-back"}[flavor], rec["export"]
        assert SECRET_KEY not in json.dumps(rec) and SECRET_KEY not in driver.logs()
        for log in kube.job_logs(NS, "etcdsnap-" + sid).splitlines():
            assert SECRET_KEY not in log

        driver.controller.DeleteSnapshot(pb2.DeleteSnapshotRequest(snapshot_id=sid), timeout=30)
        assert record(kube, sid) is None
        assert s3.keys(BUCKET) == ([key] if retention == "retain" else [])


@pytest.mark.parametrize("fault,compression", [("refuse-upload", "none"), ("corrupt-upload", "none"),
                                               ("corrupt-download", "none"), ("corrupt-download", "gzip")])
def test_refused_or_corrupted_copy_never_reports_ready(fault, compression, tmp_path, driver, kube, etcd_cluster, volume,
                                                       stubs):
    """gzip, corrupt-download: the read-back of a gzip copy goes through the decompressor, which
    refuses what the proxy changed (the last byte, the gzip trailer's length)."""
    pb2, _ = stubs
    fill(etcd_cluster)
    # moto: it lists open multipart uploads (rclone serve s3 does not).
    with s3_server("moto", etcd_cluster.tools, tmp_path / "s3") as s3:
        s3.make_bucket(BUCKET)
        put_keys_secret(kube)
        proxy = FaultProxy(s3.port, fault)
        try:
            params = export_params(proxy.endpoint, exportPartSize="5Mi", exportCompression=compression)
            req = pb2.CreateSnapshotRequest(name=f"snap-{fault}-{compression}", source_volume_id=volume,
                                            parameters=params)
            answers, deadline, failure = [], time.monotonic() + 120, None
            while time.monotonic() < deadline:
                try:
                    answers.append(driver.controller.CreateSnapshot(req, timeout=30).snapshot)
                except grpc.RpcError as e:
                    if e.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                        time.sleep(0.2)
                        continue
                    failure = (e.code(), e.details())
                    break
                time.sleep(0.2)
            assert failure is not None, f"no failure reported; answers: {answers[-3:]}"
            assert not any(a.ready_to_use for a in answers), "a failed upload reported ready"
            code, details = failure
            assert code == grpc.StatusCode.INTERNAL and "container export exited with code 1" in details, details
            if fault == "corrupt-download":
                want = {"none": "read back has SHA-256", "gzip": "the copy read back is refused: its gzip stream"}
                assert want[compression] in details, details
            assert SECRET_KEY not in details and SECRET_KEY not in driver.logs()
            # Nothing that could pass for a copy is left behind, and no upload is left open.
            assert s3.keys(BUCKET) == []
            assert s3.boto().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
            assert ("PUT" in {m for m, _ in proxy.seen})
        finally:
            proxy.stop()


def test_missing_keys_secret_is_refused_before_anything_is_made(driver, kube, volume, stubs):
    pb2, _ = stubs
    req = pb2.CreateSnapshotRequest(name="snap-nosecret", source_volume_id=volume,
                                    parameters=export_params("http://127.0.0.1:9", exportSecretName="absent"))
    code, details = code_of(lambda: driver.controller.CreateSnapshot(req, timeout=30))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and f"Secret {NS}/absent" in details, details
    assert kube.objects("jobs", NS) == [] and kube.objects("persistentvolumeclaims", NS) == [
        o for o in kube.objects("persistentvolumeclaims", NS) if not o["metadata"]["name"].startswith("etcdsnap-")]


def restore_argv(bin_dir, endpoint, key, out_dir, peer, **extra):
    argv = [str(bin_dir / "etcdsnap"), "restore", "--from-s3", f"s3://{BUCKET}/{key}", "--endpoint", endpoint,
            "--output", str(out_dir / "snapshot.db"), "--data-dir", str(out_dir / "data"), "--name", "r0",
            "--initial-cluster", f"r0=http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}"]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return argv


def test_restore_from_the_copy_checks_sha256_first(tmp_path, driver, kube, etcd_cluster, volume, stubs, bin_dir):
    """Issue 9: `etcdsnap restore --from-s3` with the cluster gone: the copy's SHA-256 is checked
    before etcdutl runs; a damaged copy is a clear error and nothing is restored."""
    import subprocess

    from etcdsnap_driver import free_port
    from etcd_cluster import restored_keys, scrubbed_env

    pb2, _ = stubs
    tools = etcd_cluster.tools
    expected = {f"/s3-restore/k{i}": f"v{i}" for i in range(30)}
    for k, v in expected.items():
        etcd_cluster.put(k, v)
    with s3_server("rclone", tools, tmp_path / "s3") as s3:
        s3.make_bucket(BUCKET)
        put_keys_secret(kube)
        params = export_params(s3.endpoint, exportRetention="retain")
        content = Sidecar(driver, pb2).create_snapshot("snap-restore", volume, params, budget=120)
        sid = content.snapshot_handle
        etcd_cluster.put("/s3-restore/after-snapshot", "must not be restored")
        want = record(kube, sid)["export"]["sha256"]
        key = f"{NS}/main/{sid}.db"
        # The cluster is lost: the snapshot, its PVC and its record go; the copy stays.
        driver.controller.DeleteSnapshot(pb2.DeleteSnapshotRequest(snapshot_id=sid), timeout=30)
        assert record(kube, sid) is None and s3.keys(BUCKET) == [key]
        env = scrubbed_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
        peer, client = free_port(), free_port()

        good = tmp_path / "good"
        good.mkdir()
        run = subprocess.run(restore_argv(bin_dir, s3.endpoint, key, good, peer, sha256=want,
                                          etcdutl=str(tools / "etcdutl")),
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert f"SHA-256 {want} checked" in run.stdout and SECRET_KEY not in run.stdout + run.stderr
        assert sha256(good / "snapshot.db") == want
        restored = restored_keys(tools, good / "data", peer, client, "/s3-restore/", tmp_path / "restored-etcd.log")
        assert restored == expected

        # The copy is damaged in the bucket (one byte changed, its metadata kept): refused
        # before etcdutl runs, no file and no data dir left, with or without --sha256.
        body = bytearray(s3.boto().get_object(Bucket=BUCKET, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x01
        s3.boto().put_object(Bucket=BUCKET, Key=key, Body=bytes(body), Metadata={"sha256": want})
        for extra in ({"sha256": want}, {}):
            bad = tmp_path / f"bad{len(extra)}"
            bad.mkdir()
            run = subprocess.run(restore_argv(bin_dir, s3.endpoint, key, bad, peer, etcdutl=str(tools / "etcdutl"),
                                              **extra), env=env, capture_output=True, text=True, timeout=120)
            assert run.returncode == 1, run.stdout
            assert "is damaged: its SHA-256 is" in run.stderr and "nothing restored" in run.stderr, run.stderr
            assert list(bad.iterdir()) == []
        # A --sha256 that is not the copy's: refused before anything is fetched.
        other = tmp_path / "other"
        other.mkdir()
        run = subprocess.run(restore_argv(bin_dir, s3.endpoint, key, other, peer, sha256="0" * 64,
                                          etcdutl=str(tools / "etcdutl")), env=env, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 1 and "differs from the copy's x-amz-meta-sha256" in run.stderr, run.stderr
        assert list(other.iterdir()) == []


def export_argv(bin_dir, src, endpoint: str, key: str, part_size: int) -> list[str]:
    return [str(bin_dir / "etcdsnap"), "export", "--file", str(src), "--endpoint", endpoint, "--bucket", BUCKET,
            "--key", key, "--part-size", str(part_size)]


@pytest.mark.parametrize("multipart", [False, True])
def test_a_server_that_verifies_content_md5_refuses_a_corrupted_upload(multipart, tmp_path, bin_dir):
    """The `content-md5` check, which replaces the full read-back on a server that proves (by
    refusing the probe) that it checks Content-MD5: `rclone serve s3` through a proxy that flips a
    byte of every PUT body. Each body's digest makes the server refuse it, nothing is left, and the
    export fails; without the proxy the same export is ready with check `content-md5` and the copy
    is byte for byte the file."""
    import subprocess

    from etcd_cluster import scrubbed_env, tools_bin

    src = tmp_path / "snapshot.db"
    src.write_bytes(os.urandom((11 << 20) + 12345 if multipart else 3 << 20))
    part = 5 << 20 if multipart else 8 << 20
    env = scrubbed_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    with s3_server("rclone", tools_bin(), tmp_path / "s3") as s3:
        s3.make_bucket(BUCKET)
        proxy = FaultProxy(s3.port, "corrupt-upload")
        try:
            run = subprocess.run(export_argv(bin_dir, src, proxy.endpoint, "bad.db", part), env=env,
                                 capture_output=True, text=True, timeout=120)
        finally:
            proxy.stop()
        # rclone serve s3 answers BadDigest, and fails the whole multipart upload when one part is
        # refused, so a parallel part may see the upload gone instead.
        assert run.returncode == 1 and "export failed" in run.stderr, run.stdout + run.stderr
        assert s3.keys(BUCKET) == [] and "etcdsnapExport" not in run.stdout

        run = subprocess.run(export_argv(bin_dir, src, s3.endpoint, "good.db", part), env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout.strip().splitlines()[-1])["etcdsnapExport"]
        assert result["check"] == "content-md5" and result["parts"] == (3 if multipart else 0), result
        assert result["sha256"] == sha256(src)
        body = s3.boto().get_object(Bucket=BUCKET, Key="good.db")["Body"].read()
        assert body == src.read_bytes()


def gzip_meta(obj) -> dict:
    return {k.lower(): v for k, v in obj["Metadata"].items()}


@pytest.mark.parametrize("flavor", ["rclone", "moto"])
def test_gzip_copy_is_compressed_checked_and_restores(flavor, tmp_path, driver, kube, etcd_cluster, volume, stubs,
                                                      bin_dir):
    """exportCompression: gzip: the copy `<id>.db.gz` is the snapshot gzipped (gunzip gives the
    file byte for byte), smaller, with the snapshot's own SHA-256 and size as metadata and no
    Content-Encoding; on moto (no Content-MD5 check) it was read back decompressed. Deleting the
    snapshot deletes exactly that key. On rclone, `restore --from-s3` of it gives a working etcd;
    a damaged copy, and a gzip bomb (more than its x-amz-meta-size once decompressed), are
    refused with nothing restored and nothing written past the bound."""
    import gzip
    import subprocess

    from etcdsnap_driver import free_port
    from etcd_cluster import restored_keys, scrubbed_env

    pb2, _ = stubs
    tools = etcd_cluster.tools
    fill(etcd_cluster)
    expected = {f"/s3-gzip/k{i}": f"v{i}" for i in range(20)}
    for k, v in expected.items():
        etcd_cluster.put(k, v)
    retention = "retain" if flavor == "rclone" else "delete"
    with s3_server(flavor, tools, tmp_path / "s3") as s3:
        s3.make_bucket(BUCKET)
        put_keys_secret(kube)
        params = export_params(s3.endpoint, exportCompression="gzip", exportPartSize="5Mi",
                               exportRetention=retention)
        content = Sidecar(driver, pb2).create_snapshot(f"snap-gz-{flavor}", volume, params, budget=120)
        assert content.ready
        sid = content.snapshot_handle
        key = f"{NS}/main/{sid}.db.gz"
        assert s3.keys(BUCKET) == [key]
        local = kube.pvc_dir(NS, "etcdsnap-" + sid) / "snapshot.db"
        plain = local.read_bytes()
        want = hashlib.sha256(plain).hexdigest()
        obj = s3.boto().get_object(Bucket=BUCKET, Key=key)
        packed = obj["Body"].read()
        assert gzip.decompress(packed) == plain and len(packed) < len(plain), (len(packed), len(plain))
        assert gzip_meta(obj) == {"sha256": want, "compression": "gzip", "size": str(len(plain))}, obj["Metadata"]
        assert obj["ContentType"] == "application/gzip" and "ContentEncoding" not in obj, obj
        rec = record(kube, sid)["export"]
        assert (rec["compression"], rec["size"], rec["stored_size"], rec["sha256"]) == (
            "gzip", len(plain), len(packed), want), rec
        assert rec["parts"] == -(-len(packed) // (5 << 20)) >= 2, rec  # streamed multipart, 5 MiB parts
        assert rec["check"] == {"rclone": "content-md5", "moto": "read-back"}[flavor], rec

        driver.controller.DeleteSnapshot(pb2.DeleteSnapshotRequest(snapshot_id=sid), timeout=30)
        assert record(kube, sid) is None
        if flavor == "moto":
            assert s3.keys(BUCKET) == []
            return
        assert s3.keys(BUCKET) == [key]

        env = scrubbed_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
        peer, client = free_port(), free_port()

        def restore(name, bound_kib=None):
            out = tmp_path / name
            out.mkdir()
            argv = restore_argv(bin_dir, s3.endpoint, key, out, peer, etcdutl=str(tools / "etcdutl"))
            if bound_kib:  # a write past the limit kills the process (SIGXFSZ); not preexec_fn:
                # a fork of this process (grpc threads) must not run Python before exec
                argv = ["bash", "-c", f'ulimit -f {bound_kib} && exec "$@"', "bash", *argv]
            run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            return out, run

        good, run = restore("good")
        assert run.returncode == 0, run.stderr
        assert f"SHA-256 {want} checked" in run.stdout and SECRET_KEY not in run.stdout + run.stderr
        assert (good / "snapshot.db").read_bytes() == plain
        restored = restored_keys(tools, good / "data", peer, client, "/s3-gzip/", tmp_path / "restored-etcd.log")
        assert restored == expected

        # One byte of the compressed copy changed, its metadata kept: refused, nothing left.
        damaged = bytearray(packed)
        damaged[len(damaged) // 2] ^= 0x01
        meta = gzip_meta(obj)
        s3.boto().put_object(Bucket=BUCKET, Key=key, Body=bytes(damaged), Metadata=meta)
        bad, run = restore("damaged")
        assert run.returncode == 1, run.stdout + run.stderr
        assert "is damaged" in run.stderr and "nothing restored" in run.stderr, run.stderr
        assert list(bad.iterdir()) == []

        # A valid gzip stream of other bytes (the same size) under the snapshot's metadata: only
        # the SHA-256 of what comes out of the decompressor tells.
        other = plain[:-1] + bytes([plain[-1] ^ 0x01])
        s3.boto().put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(other, compresslevel=1), Metadata=meta)
        forged, run = restore("other")
        assert run.returncode == 1, run.stdout + run.stderr
        assert f"is damaged: its SHA-256 is {hashlib.sha256(other).hexdigest()}" in run.stderr, run.stderr
        assert list(forged.iterdir()) == []

        # A bomb: 64 MiB of zeros (about 64 KiB gzipped) under a copy that records 4096 bytes.
        # Refused with a clear error, never written past the bound (the file size limit would
        # kill the process), nothing left.
        bomb = gzip.compress(bytes(64 << 20), compresslevel=1)
        s3.boto().put_object(Bucket=BUCKET, Key=key, Body=bomb, Metadata={**meta, "size": "4096"})
        bombed, run = restore("bomb", bound_kib=1024)
        assert run.returncode == 1, (run.returncode, run.stderr)
        assert "decompresses to more than 4096 bytes" in run.stderr and "nothing restored" in run.stderr, run.stderr
        assert list(bombed.iterdir()) == []


def test_unknown_export_compression_is_refused_by_name(driver, kube, volume, stubs):
    pb2, _ = stubs
    put_keys_secret(kube)
    req = pb2.CreateSnapshotRequest(name="snap-zstd", source_volume_id=volume,
                                    parameters=export_params("http://127.0.0.1:9", exportCompression="zstd"))
    code, details = code_of(lambda: driver.controller.CreateSnapshot(req, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert 'exportCompression must be "none" or "gzip", got "zstd"' in details, details
    assert not [o for o in kube.objects("jobs", NS) if "snap-zstd" in json.dumps(o)]


@pytest.mark.parametrize("flavor", ["rclone", "moto"])
def test_gzip_export_of_an_empty_and_a_small_file_is_one_put(flavor, tmp_path, bin_dir):
    """`etcdsnap export --compression gzip` where the compressed stream ends within the first
    part: one PUT (parts 0), for an empty file too; the object gunzips to the file, and the
    result says both sizes and how it was checked (moto: read back and decompressed)."""
    import gzip
    import subprocess

    from etcd_cluster import scrubbed_env, tools_bin

    env = scrubbed_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    with s3_server(flavor, tools_bin(), tmp_path / "s3") as s3:
        s3.make_bucket(BUCKET)
        for name, data in [("empty", b""), ("small", b"".join(b"/registry/pods/ns/p%d\n" % i for i in range(50000)))]:
            src = tmp_path / f"{name}.db"
            src.write_bytes(data)
            argv = export_argv(bin_dir, src, s3.endpoint, f"{name}.db.gz", 5 << 20) + ["--compression", "gzip"]
            run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
            result = json.loads(run.stdout.strip().splitlines()[-1])["etcdsnapExport"]
            packed = s3.boto().get_object(Bucket=BUCKET, Key=f"{name}.db.gz")["Body"].read()
            assert gzip.decompress(packed) == data
            assert (result["parts"], result["compression"], result["size"], result["stored_size"]) == (
                0, "gzip", len(data), len(packed)), result
            assert result["sha256"] == hashlib.sha256(data).hexdigest()
            assert result["check"] == {"rclone": "content-md5", "moto": "read-back"}[flavor], result
        assert sorted(s3.keys(BUCKET)) == ["empty.db.gz", "small.db.gz"]
