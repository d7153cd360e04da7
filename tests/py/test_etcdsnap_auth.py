"""etcdsnap against an etcd with `auth enable` (issue 9: username/password besides client
certificates): the user and password come from the basic-auth Secret the handle PVC names
(`etcd.io/auth-secret`, found like the client TLS Secret); the driver logs in for its health check
(`/v3/auth/authenticate`, the token on every gateway call) and the Job's etcdctl gets them as
ETCDCTL_USER/ETCDCTL_PASSWORD by reference. A real etcd 3.5 over TLS with client certificates
(without a CommonName: etcd's gateway refuses one with auth on), the strict stand-in running the
Job's real etcdctl/etcdutl."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from csi_sidecar import Sidecar
from etcd_cluster import EtcdCluster
from etcdsnap_driver import seed_cluster
from etcdsnap_fixtures import META, NS, code_of, driver  # noqa: F401 - fixtures

ROOT_PW = "root-pw-0f1e2d3c"
BACKUP_PW = "backup-pw-9a8b7c6d5e"


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory, tools_bin):
    c = EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), members=1, tools=tools_bin, client_common_name="")
    c.start()
    try:
        # A snapshot needs the root role (etcd checks admin permission for Maintenance.Snapshot).
        for args in (["user", "add", f"root:{ROOT_PW}"], ["user", "grant-role", "root", "root"],
                     ["user", "add", f"backup:{BACKUP_PW}"], ["user", "grant-role", "backup", "root"],
                     ["auth", "enable"]):
            c.etcdctl(*args, check=True)
        yield c
    finally:
        c.stop()


def auth_secret(kube, name: str, password: str) -> None:
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    kube.put_object({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
                     "metadata": {"name": name, "namespace": NS},
                     "data": {"username": b64("backup"), "password": b64(password)}})


def test_snapshot_as_an_etcd_user(driver, kube, auth_cluster, stubs):
    pb2, _ = stubs
    for i in range(10):
        auth_cluster.etcdctl("put", "--user", "root", "--password", ROOT_PW, f"/auth/k{i}", f"v{i}", check=True)
    auth_secret(kube, "main-etcd-user", BACKUP_PW)
    volume = seed_cluster(kube, auth_cluster, NS, "main", annotations={"etcd.io/auth-secret": "main-etcd-user"})
    content = Sidecar(driver, pb2).create_snapshot("snap-auth", volume, budget=120)
    assert content.ready and content.restore_size > 0
    sid = content.snapshot_handle
    rec = json.loads(kube.get_object("configmaps", META, "etcdsnap-" + sid)["data"]["record.json"])
    assert rec["state"] == "ready" and rec["total_keys"] >= 10 and rec["auth_secret"] == "main-etcd-user"
    save = kube.get_object("jobs", NS, "etcdsnap-" + sid)["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e for e in save["env"]}
    assert env["ETCDCTL_USER"]["valueFrom"]["secretKeyRef"] == {"name": "main-etcd-user", "key": "username",
                                                                 "optional": False}
    assert env["ETCDCTL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert all(BACKUP_PW not in a for a in save["args"])
    for text in (driver.logs(), kube.job_logs(NS, "etcdsnap-" + sid), json.dumps(rec)):
        assert BACKUP_PW not in text


def test_missing_or_wrong_credentials_are_refused_clearly(driver, kube, auth_cluster, stubs):
    pb2, _ = stubs
    # No user for an etcd with auth on: refused before a Job would fail on "user name is empty".
    plain = seed_cluster(kube, auth_cluster, NS, "plain")
    code, details = code_of(lambda: driver.controller.CreateSnapshot(
        pb2.CreateSnapshotRequest(name="snap-plain", source_volume_id=plain), timeout=30))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert f"etcd cluster {NS}/plain has authentication enabled" in details and "etcd.io/auth-secret" in details
    # A wrong password: refused at login, naming the Secret and the user, never the password.
    auth_secret(kube, "wrong-user", "not-the-password")
    wrong = seed_cluster(kube, auth_cluster, NS, "wrong", annotations={"etcd.io/auth-secret": "wrong-user"})
    code, details = code_of(lambda: driver.controller.CreateSnapshot(
        pb2.CreateSnapshotRequest(name="snap-wrong", source_volume_id=wrong), timeout=30))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert 'user "backup" of Secret wrong-user was refused' in details and "authentication failed" in details, details
    assert "not-the-password" not in details and "not-the-password" not in driver.logs()
    # A missing Secret: named.
    gone = seed_cluster(kube, auth_cluster, NS, "gone", annotations={"etcd.io/auth-secret": "absent"})
    code, details = code_of(lambda: driver.controller.CreateSnapshot(
        pb2.CreateSnapshotRequest(name="snap-gone", source_volume_id=gone), timeout=30))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and f"etcd auth Secret {NS}/absent not found" in details
    assert [j for j in kube.objects("jobs", NS)] == []
