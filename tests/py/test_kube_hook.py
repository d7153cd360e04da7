"""The hook through the real admission chain of kube-apiserver 1.20: the chart's
MutatingWebhookConfiguration as rendered (TLS mode "secret", its caBundle a CA made at test time;
`clientConfig.url` instead of the Service, as the hook runs on this machine) registered on the
apiserver; Pods created through the API come back stored with the patch applied, after the
apiserver's own defaulting and validation of the patched Pod.

1.20 has no native sidecars (an init container's `restartPolicy: Always` is dropped silently) and
no `matchConditions` (dropped too: the hook itself leaves unannotated Pods alone), so these Pods
use `native-sidecar: "false"`; native mode stays covered by schema validation (test_chart.py and
the hook's patch tests).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from etcd_cluster import free_ports, scrubbed_env
from kube_control_plane import KubeError, kill, ns_path
from pki import make_ca
from process_kubelet import Image
from waiting import WaitTimeout, wait_for

PREFIX = "litestream-hook.kaidotio.github.io"
HOOK_IMAGE = "registry.example/lifeboat:test"


@pytest.fixture
def hook(tmp_path, bin_dir):
    """target/debug/hook serving HTTPS on 127.0.0.1 with a leaf of a CA made here."""
    ca = make_ca(tmp_path / "pki", "hook-ca")
    cert, key = ca.issue(tmp_path / "pki", "hook", ["127.0.0.1", "localhost"], client=False, server=True)
    port, metrics = free_ports(2)
    # Unix socket paths are at most 107 bytes: pytest's tmp_path (its name grows with the run
    # number and the test's name) is too long on some runs, so the socket folder is short.
    run_dir = Path(tempfile.mkdtemp(prefix="hk-", dir="/tmp"))
    env = scrubbed_env({
        "LISTEN_ADDR": f"127.0.0.1:{port}", "METRICS_ADDR": f"127.0.0.1:{metrics}",
        "TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key), "HOOK_IMAGE": HOOK_IMAGE,
        "SOCKET_DIR": str(run_dir), "LOG_LEVEL": "debug",
    })
    for var in ("VARIANT", "NATIVE_SIDECAR", "LITESTREAM_IMAGE"):
        env.pop(var, None)
    log = tmp_path / "hook.log"
    exe = bin_dir / "hook"
    assert exe.exists(), f"{exe} missing: cargo build --bins"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe)], env=env, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or '"msg":"serving"' in log.read_text(errors="replace"), 30,
                 "the hook to log serving")
        assert proc.poll() is None, f"hook exited {proc.returncode}: {log.read_text()}"
        yield {"port": port, "ca": ca, "log": log, "metrics": metrics}
    finally:
        kill(proc, grace=30)
        shutil.rmtree(run_dir, ignore_errors=True)


def rendered_webhook(ns: str, ca_pem: bytes, port: int) -> dict:
    """The chart's MutatingWebhookConfiguration for a release in `ns`, pointed at the local hook
    and limited to `ns` through the chart's own namespaceSelectorExpressions value."""
    import helm_python
    import yaml

    from chart_render import CHART  # the chart folder; rendering as the chart tests do

    values = {
        "hook": {"tls": {"mode": "secret", "secretName": "hook-tls", "caBundle": base64.b64encode(ca_pem).decode()},
                 "webhook": {"namespaceSelectorExpressions": [
                     {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}]}},
    }
    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema(copy.deepcopy(values))
        files = chart.render(copy.deepcopy(values), name="rel", namespace=ns, is_install=True)
    docs = [d for path, text in files.items() if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]
    [mwc] = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    for w in mwc["webhooks"]:
        assert w["clientConfig"]["service"]["path"] == "/mutate"
        w["clientConfig"] = {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": w["clientConfig"]["caBundle"]}
    return mwc


@pytest.fixture
def webhook(kube_plane, kube_ns, hook):
    admin = kube_plane.admin
    # 1.21+ labels every namespace with its name; 1.20 does not, so the chart's selector needs it.
    admin.patch(f"/api/v1/namespaces/{kube_ns}",
                {"metadata": {"labels": {"kubernetes.io/metadata.name": kube_ns}}})
    mwc = rendered_webhook(kube_ns, hook["ca"].cert_pem, hook["port"])
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    admin.create(path, mwc)
    name = mwc["metadata"]["name"]
    try:
        # The apiserver picks the configuration up through an informer: wait until a dry-run
        # create of an annotated Pod comes back injected.
        probe = app_pod("probe")

        def effective():
            out = admin.create(ns_path(kube_ns, "pods") + "?dryRun=All", probe)
            return out["metadata"].get("annotations", {}).get(f"{PREFIX}/injected") == "true"
        wait_for(effective, 30, "the webhook configuration to take effect", interval=0.3)
        yield mwc
    finally:
        admin.request("DELETE", f"{path}/{name}")


def app_pod(name: str, **annotations) -> dict:
    ann = {f"{PREFIX}/inject": "true", f"{PREFIX}/native-sidecar": "false",
           f"{PREFIX}/path": "/var/lib/app/main.db,/cache/c.db", f"{PREFIX}/bucket": "backups",
           f"{PREFIX}/endpoint": "http://127.0.0.1:9", f"{PREFIX}/secret": "s3"}
    ann.update({f"{PREFIX}/{k}": v for k, v in annotations.items()})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": ann},
            "spec": {"restartPolicy": "Always", "securityContext": {"runAsUser": 1000, "runAsNonRoot": True},
                     "containers": [{"name": "app", "image": "local/app:1",
                                     "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                     "volumes": [{"name": "scratch", "emptyDir": {}}]}}


def test_an_annotated_pod_is_stored_with_the_patch_the_apiserver_validated(kube_plane, kube_ns, webhook, hook):
    admin = kube_plane.admin
    stored = admin.create(ns_path(kube_ns, "pods"), app_pod("app"))
    md, spec = stored["metadata"], stored["spec"]
    assert md["annotations"][f"{PREFIX}/injected"] == "true"
    inits = [c["name"] for c in spec["initContainers"]]
    assert inits == ["litestream-hook-config", "litestream-hook-restore-0", "litestream-hook-restore-1"], inits
    names = [c["name"] for c in spec["containers"]]
    assert names == ["app", "litestream-hook-replicate"], names
    # The apiserver defaulted the injected containers (what only a real apiserver does).
    for c in spec["initContainers"] + spec["containers"]:
        assert c["terminationMessagePath"] == "/dev/termination-log" and c["imagePullPolicy"], c["name"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert set(vols) == {"scratch", "litestream-hook-data", "litestream-hook-config"} | {
        v for v in vols if v.startswith("default-token-")}, vols
    assert vols["litestream-hook-data"]["emptyDir"]["sizeLimit"] == "1Gi"
    app = spec["containers"][0]
    mounts = {m["mountPath"]: m for m in app["volumeMounts"]}
    db_mounts = [mounts["/var/lib/app"], mounts["/cache"]]
    assert {m["name"] for m in db_mounts} == {"litestream-hook-data"}
    assert sorted(m["subPath"] for m in db_mounts) == ["db0", "db1"], db_mounts
    assert "/scratch" in mounts
    replicate = spec["containers"][1]
    assert replicate["image"].startswith("litestream/litestream:")
    env = {e["name"]: e for e in replicate.get("env", [])}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}
    # What is stored is what a GET returns: the patch went through the apiserver's storage.
    assert admin.get(ns_path(kube_ns, "pods", "app"))["spec"]["containers"][1]["name"] == "litestream-hook-replicate"


def test_unannotated_pods_and_bad_annotations_through_the_real_chain(kube_plane, kube_ns, webhook):
    admin = kube_plane.admin
    plain = app_pod("plain")
    plain["metadata"]["annotations"] = {}
    stored = admin.create(ns_path(kube_ns, "pods"), plain)
    assert [c["name"] for c in stored["spec"]["containers"]] == ["app"]
    assert "initContainers" not in stored["spec"]
    with pytest.raises(KubeError) as err:
        admin.create(ns_path(kube_ns, "pods"), app_pod("bad", storage="-1Gi"))
    # The apiserver reports the webhook's denial with the hook's message, naming the annotation.
    assert err.value.status == 400, err.value.body
    assert "denied the request" in err.value.body["message"] and f"{PREFIX}/storage" in err.value.body["message"]
    assert not admin.exists(ns_path(kube_ns, "pods", "bad"))


# ---- the injected Pod runs: Litestream round trip through the apiserver and the process kubelet

ACCESS_KEY, SECRET_KEY = "AKIDKUBETEST", "kube-test-secret-5c4b3a"
LITESTREAM_IMAGE = "litestream/litestream:0.5.17"
APP = r"""
import sqlite3, sys, time
for db, n in ((sys.argv[1], 100), (sys.argv[2], 7)):
    c = sqlite3.connect(db)
    c.execute("pragma journal_mode=wal")
    c.execute("create table if not exists t (id integer primary key, v text)")
    before = c.execute("select count(*), coalesce(sum(id), 0) from t").fetchone()
    if before[0] == 0:
        c.executemany("insert into t (id, v) values (?, ?)", [(i, "row %d" % i) for i in range(n)])
        c.commit()
    print(db, "before", before, "now", c.execute("select count(*), coalesce(sum(id), 0) from t").fetchone(),
          flush=True)
    c.close()
time.sleep(3600)
"""
SEED = r"""
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("pragma journal_mode=wal")
c.execute("create table if not exists t (id integer primary key, v text)")
have = c.execute("select count(*) from t").fetchone()[0]
c.executemany("insert into t (id, v) values (?, ?)", [(i, "old %d" % i) for i in range(have, int(sys.argv[2]))])
c.commit()
"""
COUNT = r"""
import sqlite3, sys
c = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
print(c.execute("select count(*), coalesce(sum(id), 0) from t").fetchone())
"""


@pytest.fixture
def s3(tmp_path, tools_bin):
    """`rclone serve s3` over a folder with bucket `pods`."""
    root = tmp_path / "s3"
    (root / "pods").mkdir(parents=True)
    [port] = free_ports(1)
    proc = subprocess.Popen([str(tools_bin / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                             "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--log-level", "ERROR", str(root)],
                            env=scrubbed_env({"RCLONE_CONFIG": "/dev/null"}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import socket

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(lambda: proc.poll() is None and listening(), 30, "rclone serve s3")
        yield {"endpoint": f"http://127.0.0.1:{port}", "root": root}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def replicated_rows(tools_bin, config, db, scratch):
    """Restores `db` from S3 with the host's litestream into `scratch`; its rows, or None."""
    scratch.unlink(missing_ok=True)
    env = scrubbed_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                        "HOME": str(scratch.parent)})
    r = subprocess.run([str(tools_bin / "litestream"), "restore", "-no-expand-env", "-config", str(config),
                        "-o", str(scratch), db], env=env, capture_output=True, timeout=60)
    if r.returncode != 0 or not scratch.exists():
        return None
    return subprocess.run(["/usr/bin/python3", "-c", COUNT, str(scratch)], capture_output=True, text=True,
                          timeout=30).stdout.strip()


DBS = ["/var/lib/app/main.db", "/cache/c.db"]


def prepare_node(admin, kube_node, kube_ns, tools_bin, bin_dir):
    """The images the round trips run (hook, litestream, the python app) and the S3 Secret."""
    kube_node.images[HOOK_IMAGE] = Image(programs={"hook": bin_dir.resolve() / "hook"}, entrypoint=["hook"])
    kube_node.images[LITESTREAM_IMAGE] = Image(programs={"litestream": tools_bin / "litestream"},
                                               entrypoint=["litestream"])
    kube_node.images["local/app:1"] = Image(programs={"python3": "/usr/bin/python3"}, entrypoint=["python3"])
    admin.create(ns_path(kube_ns, "secrets"), {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
        "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}})


def round_trip_pod(name, s3, **annotations):
    """An annotated Pod whose app fills both databases (when empty), reports them and sleeps."""
    p = app_pod(name, endpoint=s3["endpoint"], bucket="pods",
                **{"sync-interval": "200ms", "path": ",".join(DBS), **annotations})
    p["spec"]["containers"][0].update({"command": ["python3", "-c", APP, *DBS]})
    p["spec"]["terminationGracePeriodSeconds"] = 5
    return p


def app_log(admin, kube_ns, name):
    """The app's log once it reported both databases (through the apiserver's pods/log)."""
    def lines():
        status, body = admin.request("GET", ns_path(kube_ns, "pods", name) + "/log?container=app")
        out = body if status == 200 and isinstance(body, str) else ""
        return out if out.count("\n") >= 2 else None
    try:
        return wait_for(lines, 90, f"the app of pod {name} to report both databases", interval=0.3)
    except WaitTimeout as e:
        status = admin.get(ns_path(kube_ns, "pods", name)).get("status", {})
        raise WaitTimeout(f"{e}\npod status: {status}") from None


def bucket_keys(s3):
    return sorted(str(p.relative_to(s3["root"] / "pods")) for p in (s3["root"] / "pods").rglob("*") if p.is_file())


def recreate_and_find_the_rows(admin, kube_ns, pod):
    """Deletes Pod `db` (the kubelet stops and removes it) and creates `pod` in its place: empty
    volumes, so the restore init containers, each exiting 0, bring the rows back before the app."""
    admin.delete(ns_path(kube_ns, "pods", "db"))
    wait_for(lambda: not admin.exists(ns_path(kube_ns, "pods", "db")), 60, "pod db to be gone", interval=0.3)
    admin.create(ns_path(kube_ns, "pods"), pod)
    again = app_log(admin, kube_ns, "db")
    assert "main.db before (100, 4950)" in again and "c.db before (7, 21)" in again, again
    stored = admin.get(ns_path(kube_ns, "pods", "db"))
    inits = {s["name"]: s for s in stored["status"]["initContainerStatuses"]}
    assert all(s["state"]["terminated"]["exitCode"] == 0 for s in inits.values()), inits


def test_the_injected_pod_replicates_and_restores_through_the_real_api_and_node(
        kube_plane, kube_node, kube_ns, webhook, s3, tools_bin, bin_dir, tmp_path):
    admin = kube_plane.admin
    prepare_node(admin, kube_node, kube_ns, tools_bin, bin_dir)
    dbs = DBS

    def app(name):
        return round_trip_pod(name, s3)

    stored = admin.create(ns_path(kube_ns, "pods"), app("db"))
    assert stored["metadata"]["annotations"][f"{PREFIX}/injected"] == "true"
    first = app_log(admin, kube_ns, "db")
    assert "main.db before (0, 0) now (100, 4950)" in first and "c.db before (0, 0) now (7, 21)" in first, first
    # The rows reach S3 (restored on the host from what the sidecar replicated).
    pod = admin.get(ns_path(kube_ns, "pods", "db"))
    config = kube_node.dir / "pods" / pod["metadata"]["uid"] / "volumes" / "litestream-hook-config" / "litestream.yml"
    scratch = tmp_path / "scratch.db"
    for db, rows in zip(dbs, ["(100, 4950)", "(7, 21)"]):
        wait_for(lambda: replicated_rows(tools_bin, config, db, scratch) == rows, 90, f"{db} rows in S3", interval=0.5)
    keys = bucket_keys(s3)
    assert keys and all(k.startswith(f"{kube_ns}/db/") for k in keys), keys

    recreate_and_find_the_rows(admin, kube_ns, app("db"))
    # No secret in any log the node kept.
    for log in (kube_node.dir / "pods").rglob("log"):
        assert SECRET_KEY not in log.read_text(errors="replace"), log


def test_a_replica_path_override_restores_an_existing_backup_through_the_real_api_and_node(
        kube_plane, kube_node, kube_ns, webhook, s3, tools_bin, bin_dir, tmp_path):
    """Migration: a backup made elsewhere (here a hand-run Litestream 0.5 writing `legacy/main.db`
    at the bucket's top, as the original litestream-hook's layout differed) is restored into the
    injected Pod through `replica-path`, and replication continues there; the other database
    keeps its default path."""
    admin = kube_plane.admin
    prepare_node(admin, kube_node, kube_ns, tools_bin, bin_dir)
    # The old backup: 50 rows replicated by the host's litestream to legacy/main.db.
    seed_db = tmp_path / "seed" / "main.db"
    seed_db.parent.mkdir()
    subprocess.run(["/usr/bin/python3", "-c", SEED, str(seed_db), "50"], check=True, timeout=30)
    seed_config = tmp_path / "seed.yml"
    seed_config.write_text(json.dumps({"dbs": [{"path": str(seed_db), "replica": {
        "type": "s3", "bucket": "pods", "path": "legacy/main.db", "endpoint": s3["endpoint"],
        "region": "us-east-1", "force-path-style": True, "sync-interval": "200ms"}}]}))
    env = scrubbed_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                        "HOME": str(tmp_path)})
    with open(tmp_path / "seed.log", "wb") as out:
        seeder = subprocess.Popen([str(tools_bin / "litestream"), "replicate", "-no-expand-env", "-config",
                                   str(seed_config)], env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        scratch = tmp_path / "scratch.db"
        wait_for(lambda: replicated_rows(tools_bin, seed_config, str(seed_db), scratch) == "(50, 1225)", 90,
                 "the old backup in S3", interval=0.5)
    finally:
        os.killpg(seeder.pid, signal.SIGTERM)
        seeder.wait(30)
    assert all(k.startswith("legacy/main.db/") for k in bucket_keys(s3)), bucket_keys(s3)

    stored = admin.create(ns_path(kube_ns, "pods"), round_trip_pod(
        "db", s3, **{"replica-path": "/var/lib/app/main.db=legacy/main.db"}))
    assert stored["metadata"]["annotations"][f"{PREFIX}/injected"] == "true"
    first = app_log(admin, kube_ns, "db")
    # main.db came back from the old backup before the app started; c.db had none and starts empty.
    assert "main.db before (50, 1225)" in first and "c.db before (0, 0) now (7, 21)" in first, first
    pod = admin.get(ns_path(kube_ns, "pods", "db"))
    config = kube_node.dir / "pods" / pod["metadata"]["uid"] / "volumes" / "litestream-hook-config" / "litestream.yml"
    wait_for(lambda: replicated_rows(tools_bin, config, "/cache/c.db", scratch) == "(7, 21)", 90, "c.db rows in S3",
             interval=0.5)
    keys = bucket_keys(s3)
    assert all(k.startswith(("legacy/main.db/", f"{kube_ns}/db/c.db/")) for k in keys), keys
    assert any(k.startswith(f"{kube_ns}/db/c.db/") for k in keys), keys
    assert not any(k.startswith(f"{kube_ns}/db/main.db") for k in keys), keys
    # The sidecar writes main.db's changes to the overridden path: rows written into the Pod's
    # database volume (the node's folder behind the app's and the sidecar's mounts) reach
    # legacy/main.db.
    data = kube_node.dir / "pods" / pod["metadata"]["uid"] / "volumes" / "litestream-hook-data"
    [live] = [p for p in data.rglob("main.db")]
    subprocess.run(["/usr/bin/python3", "-c", SEED, str(live), "60"], check=True, timeout=30)
    wait_for(lambda: replicated_rows(tools_bin, config, "/var/lib/app/main.db", scratch) == "(60, 1770)", 90,
             "main.db's new rows at legacy/main.db", interval=0.5)
    assert not any(k.startswith(f"{kube_ns}/db/main.db") for k in bucket_keys(s3))


def test_colliding_replica_paths_are_denied_through_the_real_chain(kube_plane, kube_ns, webhook):
    admin = kube_plane.admin
    for value in ("/var/lib/app/main.db=" + kube_ns + "/bad/c.db", "/var/lib/app/main.db=x,/cache/c.db=x/y",
                  "/var/lib/app/main.db=/abs", "/other.db=x"):
        with pytest.raises(KubeError) as err:
            admin.create(ns_path(kube_ns, "pods"), app_pod("bad", **{"replica-path": value}))
        assert err.value.status == 400, err.value.body
        assert f"{PREFIX}/replica-path" in err.value.body["message"], (value, err.value.body)
        assert not admin.exists(ns_path(kube_ns, "pods", "bad"))


def keygen(folder: Path, name: str, kind: str) -> tuple[Path, str]:
    """A key pair made by ssh-keygen: (private key file, public key line)."""
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(key)], check=True, timeout=30)
    return key, key.with_suffix(".pub").read_text().strip()


@pytest.fixture
def sftp(tmp_path, tools_bin):
    """`rclone serve sftp` over a folder, with an ECDSA host key and one authorized client key."""
    keys = tmp_path / "ssh"
    keys.mkdir()
    host_key, host_pub = keygen(keys, "host", "ecdsa")
    client_key, client_pub = keygen(keys, "client", "ed25519")
    (keys / "authorized_keys").write_text(client_pub + "\n")
    root = tmp_path / "sftp"
    root.mkdir()
    [port] = free_ports(1)
    proc = subprocess.Popen([str(tools_bin / "rclone"), "serve", "sftp", "--config", "/dev/null", "--user", "backup",
                             "--addr", f"127.0.0.1:{port}", "--key", str(host_key), "--authorized-keys",
                             str(keys / "authorized_keys"), str(root)],
                            env=scrubbed_env({}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        import socket

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(lambda: proc.poll() is None and listening(), 30, "rclone serve sftp")
        yield {"endpoint": f"sftp://backup@127.0.0.1:{port}/pods", "host_key": host_pub, "root": root,
               "client_key": client_key}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_an_sftp_replica_round_trip_through_the_real_api_and_node(
        kube_plane, kube_node, kube_ns, webhook, sftp, tools_bin, bin_dir, tmp_path):
    """`type: sftp` through the real chain: the apiserver admits and stores the patched Pod with
    its Secret volume; the node runs every container as the Pod's non-root user (1000), so the
    SSH key file must be readable to it; the rows come back after the Pod is recreated."""
    admin = kube_plane.admin
    prepare_node(admin, kube_node, kube_ns, tools_bin, bin_dir)
    admin.create(ns_path(kube_ns, "secrets"), {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ssh"},
        "stringData": {"SSH_PRIVATE_KEY": sftp["client_key"].read_text()}})

    def app(name):
        p = round_trip_pod(name, {"endpoint": sftp["endpoint"]}, type="sftp", secret="ssh",
                           **{"host-key": sftp["host_key"]})
        del p["metadata"]["annotations"][f"{PREFIX}/bucket"]
        return p

    stored = admin.create(ns_path(kube_ns, "pods"), app("db"))
    assert stored["metadata"]["annotations"][f"{PREFIX}/injected"] == "true"
    [ssh] = [v for v in stored["spec"]["volumes"] if v["name"] == "litestream-hook-ssh"]
    assert ssh["secret"]["secretName"] == "ssh", ssh
    first = app_log(admin, kube_ns, "db")
    assert "main.db before (0, 0) now (100, 4950)" in first and "c.db before (0, 0) now (7, 21)" in first, first
    served = sftp["root"] / "pods" / kube_ns / "db"
    wait_for(lambda: all(any((served / f / "ltx").rglob("*.ltx")) for f in ("main.db", "c.db")), 90,
             "both databases on the SFTP server", interval=0.5)

    recreate_and_find_the_rows(admin, kube_ns, app("db"))
    private = sftp["client_key"].read_text()
    for log in (kube_node.dir / "pods").rglob("log"):
        text = log.read_text(errors="replace")
        assert not any(line in text for line in private.splitlines() if len(line) > 16), log
