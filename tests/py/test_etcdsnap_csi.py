"""etcdsnap's CSI surface through an independent client (Python grpcio, stubs generated from
proto/ at test time) over the Unix socket: what csi-sanity's Identity, Controller (snapshot,
ValidateVolumeCapabilities) and GroupController tests assert, plus readiness, configuration
errors and SIGTERM handling. The Kubernetes API is the strict stand-in; no etcd is needed for
these cases."""

from __future__ import annotations

import re
import socket
import threading
import time

import grpc
import pytest

from etcdsnap_driver import DRIVER, Driver, running_driver, seed_cluster
from waiting import wait_for


@pytest.fixture
def driver(tmp_path, kube, bin_dir, stubs):
    with running_driver(bin_dir, tmp_path / "driver", kube.kubeconfig_path, stubs) as d:
        yield d


def code_of(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_plugin_info(driver, stubs):
    pb2, _ = stubs
    info = driver.identity.GetPluginInfo(pb2.GetPluginInfoRequest())
    assert info.name == DRIVER
    assert re.fullmatch(r"[a-zA-Z][A-Za-z0-9-._]{0,61}[a-zA-Z]", info.name)
    assert info.vendor_version


def test_plugin_capabilities(driver, stubs):
    pb2, _ = stubs
    caps = driver.identity.GetPluginCapabilities(pb2.GetPluginCapabilitiesRequest()).capabilities
    Svc = pb2.PluginCapability.Service
    types = {c.service.type for c in caps if c.WhichOneof("type") == "service"}
    assert types == {Svc.CONTROLLER_SERVICE, Svc.GROUP_CONTROLLER_SERVICE}
    for c in caps:  # csi-sanity: every capability is a known one
        assert c.service.type in Svc.Type.values() and c.service.type != Svc.UNKNOWN


def test_probe_and_ready_follow_the_kubernetes_api(driver, kube, stubs):
    pb2, _ = stubs
    probe = driver.identity.Probe(pb2.ProbeRequest())
    assert probe.HasField("ready") and probe.ready.value is True
    assert driver.http("/ready")[0] == 200
    assert driver.http("/healthz")[0] == 200
    kube.stop()
    wait_for(lambda: driver.http("/ready")[0] == 503, 10, "/ready to say 503")
    status, body = driver.http("/ready")
    assert "Kubernetes API" in body, body
    # A healthy plugin waiting for its dependency answers ready=false, not an error.
    assert driver.identity.Probe(pb2.ProbeRequest()).ready.value is False
    assert driver.metric("etcdsnap_kube_api_ready") == 0.0


def test_controller_capabilities_and_unimplemented_rpcs(driver, stubs):
    pb2, _ = stubs
    caps = driver.controller.ControllerGetCapabilities(pb2.ControllerGetCapabilitiesRequest()).capabilities
    RPC = pb2.ControllerServiceCapability.RPC
    assert [c.rpc.type for c in caps] == [RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT]
    for method in ("/csi.v1.Controller/CreateVolume", "/csi.v1.Controller/ListVolumes",
                   "/csi.v1.Controller/ControllerPublishVolume", "/csi.v1.Node/NodeGetInfo"):
        call = driver.channel.unary_unary(method, request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        code, _ = code_of(lambda: call(None, timeout=5))
        assert code == grpc.StatusCode.UNIMPLEMENTED, method


def test_validate_volume_capabilities(driver, kube, stubs):
    """Issue 9.2: a Controller plugin MUST implement ValidateVolumeCapabilities: INVALID_ARGUMENT
    without a volume id or capabilities, NOT_FOUND for an unknown volume, and for a handle an
    answer without `confirmed` that says why (it is only snapshotted; there is no Node service)."""
    pb2, _ = stubs
    c = driver.controller
    VC = pb2.VolumeCapability
    mount = VC(mount=VC.MountVolume(), access_mode=VC.AccessMode(mode=VC.AccessMode.MULTI_NODE_READER_ONLY))
    inv = grpc.StatusCode.INVALID_ARGUMENT
    code, details = code_of(lambda: c.ValidateVolumeCapabilities(
        pb2.ValidateVolumeCapabilitiesRequest(volume_capabilities=[mount]), timeout=10))
    assert code == inv and "volume_id" in details
    code, details = code_of(lambda: c.ValidateVolumeCapabilities(
        pb2.ValidateVolumeCapabilitiesRequest(volume_id="etcd/main-handle"), timeout=10))
    assert code == inv and "volume_capabilities" in details
    code, details = code_of(lambda: c.ValidateVolumeCapabilities(pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="etcd/main-handle", volume_capabilities=[VC(mount=VC.MountVolume())]), timeout=10))
    assert code == inv and "access mode" in details
    for missing in ("etcd/missing", "Not A Volume", "a/b/c"):
        code, _ = code_of(lambda: c.ValidateVolumeCapabilities(pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=missing, volume_capabilities=[mount]), timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND, missing
    # A PVC that is no handle (no cluster label) is no volume of this driver either.
    kube.put_object({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": "plain", "namespace": "etcd"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}})
    code, _ = code_of(lambda: c.ValidateVolumeCapabilities(pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="etcd/plain", volume_capabilities=[mount]), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND
    kube.put_object({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": "main-handle", "namespace": "etcd", "labels": {"etcd.io/cluster": "main"}},
                     "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Mi"}}}})
    resp = c.ValidateVolumeCapabilities(pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="etcd/main-handle", volume_capabilities=[mount]), timeout=10)
    assert not resp.HasField("confirmed")
    assert "etcd/main-handle" in resp.message and "Node service" in resp.message


def test_group_controller_capabilities(driver, stubs):
    pb2, _ = stubs
    caps = driver.group.GroupControllerGetCapabilities(pb2.GroupControllerGetCapabilitiesRequest()).capabilities
    RPC = pb2.GroupControllerServiceCapability.RPC
    assert [c.rpc.type for c in caps] == [RPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT]


def test_group_snapshot_argument_errors(driver, kube, stubs):
    pb2, _ = stubs
    g = driver.group
    inv = grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: g.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
        source_volume_ids=["etcd/main"])))[0] == inv
    code, details = code_of(lambda: g.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(name="gs-1")))
    assert code == inv and "source_volume_ids" in details
    assert code_of(lambda: g.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
        name="gs-1", source_volume_ids=["etcd/a", "etcd/a"])))[0] == inv
    assert code_of(lambda: g.GetVolumeGroupSnapshot(pb2.GetVolumeGroupSnapshotRequest()))[0] == inv
    assert code_of(lambda: g.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest()))[0] == inv
    # Unknown ids: NOT_FOUND on Get (also for a well-formed id), success on Delete, with or
    # without snapshot_ids (an empty list is not rejected).
    for gid in ("does-not-exist", "g-" + "0" * 32):
        assert code_of(lambda: g.GetVolumeGroupSnapshot(pb2.GetVolumeGroupSnapshotRequest(
            group_snapshot_id=gid)))[0] == grpc.StatusCode.NOT_FOUND
        g.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid))
        g.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(
            group_snapshot_id=gid, snapshot_ids=["s-" + "1" * 32, "nope"]))
    # A source volume that does not exist, a malformed id, a PVC that is no etcd handle.
    code, details = code_of(lambda: g.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
        name="gs-2", source_volume_ids=["etcd/missing"])))
    assert code == grpc.StatusCode.NOT_FOUND and "etcd/missing" in details
    assert code_of(lambda: g.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
        name="gs-2", source_volume_ids=["Bad/Name"])))[0] == inv
    kube.put_object({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": "plain", "namespace": "default"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}})
    code, details = code_of(lambda: g.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
        name="gs-2", source_volume_ids=["plain"])))
    assert code == inv and "etcd.io/cluster" in details and "default/plain" in details
    # Nothing was created by any refused call.
    assert kube.objects("jobs", "default") == [] and kube.objects("configmaps", "kube-system") == []
    assert driver.metric("etcdsnap_rpc_total", method="CreateVolumeGroupSnapshot", code="INVALID_ARGUMENT") >= 4
    assert driver.metric("etcdsnap_rpc_total", method="GetVolumeGroupSnapshot", code="NOT_FOUND") == 2


def test_snapshot_argument_errors(driver, stubs):
    pb2, _ = stubs
    c = driver.controller
    inv = grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: c.CreateSnapshot(pb2.CreateSnapshotRequest(source_volume_id="etcd/main")))[0] == inv
    assert code_of(lambda: c.CreateSnapshot(pb2.CreateSnapshotRequest(name="snap-1")))[0] == inv
    assert code_of(lambda: c.DeleteSnapshot(pb2.DeleteSnapshotRequest()))[0] == inv
    c.DeleteSnapshot(pb2.DeleteSnapshotRequest(snapshot_id="unknown-id"))
    c.DeleteSnapshot(pb2.DeleteSnapshotRequest(snapshot_id="s-" + "2" * 32))
    assert code_of(lambda: c.CreateSnapshot(pb2.CreateSnapshotRequest(
        name="n" * 128, source_volume_id="etcd/missing")))[0] == grpc.StatusCode.NOT_FOUND


def test_bad_configuration_is_reported_at_once(tmp_path, kube, bin_dir, stubs):
    d = Driver(bin_dir, tmp_path / "driver", kube.kubeconfig_path, *stubs,
               DRIVER_NAME="1-bad-name", CLUSTER_LABEL="a/b/c", CSI_ENDPOINT="tcp://127.0.0.1:1")
    d.start(wait=False)
    assert d.proc.wait(20) == 2
    logs = d.logs()
    for var in ("DRIVER_NAME", "CLUSTER_LABEL", "CSI_ENDPOINT"):
        assert var in logs, logs
    assert '"level":"error"' in logs
    d.stop()


def test_stale_socket_replaced_and_sigterm_finishes_in_flight_rpc(tmp_path, kube, bin_dir, stubs, etcd_like_blackhole):
    pb2, _ = stubs
    # One completion queue: a handler that blocked it would also block the Probes below.
    d = Driver(bin_dir, tmp_path / "driver", kube.kubeconfig_path, *stubs, ETCD_TIMEOUT="5s", GRPC_THREADS=1)
    # A socket file left behind by a killed driver.
    d.socket.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d.socket))
    stale.close()
    d.start()
    # An etcd "cluster" whose only endpoint accepts TCP and never answers: the health check
    # blocks for ETCD_TIMEOUT, so the Create is in flight when SIGTERM arrives.
    kube.put_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "slow-client-tls", "namespace": "default"},
                     "data": etcd_like_blackhole["secret_data"]})
    kube.put_object({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": "slow", "namespace": "default", "labels": {"etcd.io/cluster": "slow"},
                                  "annotations": {"etcd.io/endpoints": etcd_like_blackhole["url"]}},
                     "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Mi"}}}})
    result = {}

    def create():
        try:
            d.group.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
                name="slow-1", source_volume_ids=["default/slow"]), timeout=30)
        except grpc.RpcError as e:
            result["code"], result["details"] = e.code(), e.details()

    t = threading.Thread(target=create)
    t.start()
    wait_for(lambda: d.metric("etcdsnap_rpc_in_flight") == 1, 10, "the Create to be in flight")
    # Identity keeps answering while the Create waits on etcd.
    for _ in range(20):
        assert d.identity.Probe(pb2.ProbeRequest(), timeout=10).ready.value is True
        assert d.identity.GetPluginInfo(pb2.GetPluginInfoRequest(), timeout=10).name
    assert t.is_alive() and "code" not in result, "the Create finished before the Probes"
    d.proc.send_signal(15)
    t.join(30)
    assert not t.is_alive()
    # The in-flight RPC was answered (not cancelled): the etcd check's own verdict.
    assert result.get("code") == grpc.StatusCode.FAILED_PRECONDITION, (result, d.logs())
    assert "slow" in result["details"]
    assert d.proc.wait(20) == 0
    assert not d.socket.exists()
    assert "etcdsnap stopped" in d.logs()
    d.stop()


@pytest.fixture
def etcd_like_blackhole(pki, tmp_path):
    """A TCP listener that never accepts, and client TLS material for it."""
    import base64

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    cert, key = pki.issue(tmp_path / "bh", "client", names=["client"], client=True, server=False)
    data = {"ca.crt": base64.b64encode(open(pki.cert_path, "rb").read()).decode(),
            "tls.crt": base64.b64encode(open(cert, "rb").read()).decode(),
            "tls.key": base64.b64encode(open(key, "rb").read()).decode()}
    try:
        yield {"url": f"https://127.0.0.1:{lsock.getsockname()[1]}", "secret_data": data}
    finally:
        lsock.close()


def test_token_file_is_reread_and_a_wrong_token_is_unauthenticated(tmp_path, kube, bin_dir, stubs):
    """A JSON kubeconfig with a CA file and a tokenFile (the rotating service-account form): the
    token is read per request, a wrong one gives UNAUTHENTICATED and not-ready, a fixed one heals.
    The token never appears in the driver's logs."""
    import json

    pb2, _ = stubs
    token_file = tmp_path / "token"
    token_file.write_text(kube.token + "\n")
    kubeconfig = tmp_path / "kubeconfig.json"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "standin", "cluster": {"server": kube.url, "certificate-authority": str(kube.ca_path)}}],
        "users": [{"name": "sa", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "sa", "context": {"cluster": "standin", "user": "sa"}}],
    }))
    d = Driver(bin_dir, tmp_path / "driver", kubeconfig, *stubs).start()
    try:
        missing = pb2.CreateVolumeGroupSnapshotRequest(name="t-1", source_volume_ids=["default/nothing"])
        assert code_of(lambda: d.group.CreateVolumeGroupSnapshot(missing))[0] == grpc.StatusCode.NOT_FOUND
        token_file.write_text("not-the-token")
        code, details = code_of(lambda: d.group.CreateVolumeGroupSnapshot(missing))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "401" in details, details
        wait_for(lambda: d.http("/ready")[0] == 503, 10, "not ready with a wrong token")
        token_file.write_text(kube.token)
        wait_for(lambda: d.http("/ready")[0] == 200, 10, "ready again")
        assert code_of(lambda: d.group.CreateVolumeGroupSnapshot(missing))[0] == grpc.StatusCode.NOT_FOUND
    finally:
        assert d.stop() == 0
    assert kube.token not in d.logs()


def test_a_kubeconfig_without_a_ca_trusts_the_system_roots(tmp_path, kube, bin_dir, stubs):
    """A kubeconfig that names no certificate-authority: the API server is trusted through the
    system roots as Go's crypto/x509 (so kubectl) reads them, here SSL_CERT_FILE; another CA
    there is refused; no roots at all refuse the start, naming every place tried. Nothing is
    compiled in that could stand in for them."""
    import json

    from pki import make_ca

    kubeconfig = tmp_path / "kubeconfig.json"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "standin", "cluster": {"server": kube.url}}],
        "users": [{"name": "sa", "user": {"token": kube.token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "standin", "user": "sa"}}],
    }))
    no_certs = tmp_path / "no-certs"
    no_certs.mkdir()

    d = Driver(bin_dir, tmp_path / "trusted", kubeconfig, *stubs,
               SSL_CERT_FILE=kube.ca_path, SSL_CERT_DIR=no_certs).start()
    try:
        wait_for(lambda: d.http("/ready")[0] == 200, 20, "ready through SSL_CERT_FILE")
    finally:
        assert d.stop() == 0

    other = make_ca(tmp_path / "other", "other")
    d = Driver(bin_dir, tmp_path / "other-ca", kubeconfig, *stubs,
               SSL_CERT_FILE=other.cert_path, SSL_CERT_DIR=no_certs).start()
    try:
        status, body = d.http("/ready")
        assert status == 503 and "unknownissuer" in body.lower(), (status, body)
    finally:
        assert d.stop() == 0

    missing = tmp_path / "missing.pem"
    d = Driver(bin_dir, tmp_path / "none", kubeconfig, *stubs, SSL_CERT_FILE=missing, SSL_CERT_DIR=no_certs)
    d.start(wait=False)
    try:
        assert d.proc.wait(20) != 0
    finally:
        d.stop()
    logs = d.logs()
    assert "the kubeconfig names none" in logs, logs
    assert f"SSL_CERT_FILE={missing}: not found" in logs, logs
    assert f"SSL_CERT_DIR entry {no_certs}: no PEM certificate in its 0 entries" in logs, logs
    assert kube.token not in logs
