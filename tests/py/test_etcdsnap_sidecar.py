"""etcdsnap as csi-snapshotter v8 drives it (the model in csi_sidecar.py, written from the
sidecar's source), against a real 3-member etcd cluster over TLS and the strict Kubernetes API
stand-in running each Job's containers (real etcdctl/etcdutl) as local processes.

Regression tests for issue 9 items 1-4: group members that reported ready before etcd was saved,
ListSnapshots/GetSnapshot, Create answering OK before the snapshot was cut, and vanished pods
that threw a verified snapshot away (transient API errors: test_kube_etcdsnap_faults.py, through
the real apiserver)."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from csi_sidecar import Sidecar
from etcdsnap_driver import running_driver, seed_cluster
from etcdsnap_fixtures import META, NS, code_of, driver, volume  # noqa: F401 - fixtures
from waiting import wait_for


def record(kube, sid) -> dict:
    cm = kube.get_object("configmaps", META, "etcdsnap-" + sid)
    return json.loads(cm["data"]["record.json"])


def file_status(tools_bin, kube, sid) -> dict:
    import subprocess

    path = kube.pvc_dir(NS, "etcdsnap-" + sid) / "snapshot.db"
    out = subprocess.run([str(tools_bin / "etcdutl"), "snapshot", "status", str(path), "-w", "json"],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def put_revision(cluster, key, value) -> int:
    out = cluster.etcdctl("put", "-w", "json", "--", key, value, check=True).stdout
    return int(json.loads(out)["header"]["revision"])


def ts(t) -> float:
    return t.seconds + t.nanos / 1e9


def test_group_members_are_not_ready_before_the_file_is_verified(driver, kube, etcd_cluster, volume, stubs,
                                                                 tools_bin):
    """Issue 9.1: the sidecar follows each member with ListSnapshots(snapshot_id); a member is
    ready, with its restoreSize, only once etcdutl has verified the file."""
    pb2, _ = stubs
    sidecar = Sidecar(driver, pb2)
    kube.hold_containers("verify")  # etcd's snapshot is saved; its verification waits
    seen = {}

    def members_created(group, members):
        for sid, m in members.items():
            ready, created, size = sidecar.snapshot_status(sid)
            seen[sid] = (ready, created, size)
        # ListSnapshots by source volume finds the member too; an unknown id finds nothing.
        by_volume = driver.controller.ListSnapshots(pb2.ListSnapshotsRequest(source_volume_id=volume), timeout=30)
        seen["by_volume"] = [e.snapshot.snapshot_id for e in by_volume.entries]
        kube.release_containers()

    group, members = sidecar.create_group("vgs-verify-first", [volume], on_members=members_created)
    (sid, member), = members.items()
    # While the file was not verified, the member was not ready and had no size.
    assert seen[sid][0] is False and seen[sid][2] == 0, seen
    assert seen["by_volume"] == [sid]
    # Ready now, with the size etcdutl reports and the creation time of the cut.
    st = file_status(tools_bin, kube, sid)
    assert member.ready and member.restore_size == st["totalSize"] > 0
    rec = record(kube, sid)
    assert rec["state"] == "ready" and rec["revision"] == st["revision"]
    cut = rec["cut"]["seconds"] + rec["cut"]["nanos"] / 1e9
    assert abs(member.creation_time - cut) < 1e-6 and abs(group.creation_time - cut) < 1e-6
    assert seen[sid][1] == pytest.approx(cut, abs=1e-6)
    assert ("ListSnapshots", "OK") in sidecar.calls


def test_list_and_get_snapshots(driver, kube, etcd_cluster, volume, stubs):
    """Issue 9.1: ListSnapshots filters by snapshot_id and source_volume_id, pages with
    max_entries/starting_token, ABORTED for a token it did not hand out; GetSnapshot."""
    pb2, _ = stubs
    c = driver.controller
    caps = {x.rpc.type for x in c.ControllerGetCapabilities(pb2.ControllerGetCapabilitiesRequest()).capabilities}
    RPC = pb2.ControllerServiceCapability.RPC
    assert {RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT} == caps
    other = seed_cluster(kube, etcd_cluster, NS, "other")
    sidecar = Sidecar(driver, pb2)
    made = {sidecar.create_snapshot(f"snap-{i}", volume).snapshot_handle for i in range(3)}
    made_other = sidecar.create_snapshot("snap-other", other).snapshot_handle

    def ids(**kw):
        return [e.snapshot.snapshot_id for e in c.ListSnapshots(pb2.ListSnapshotsRequest(**kw), timeout=30).entries]

    assert sorted(ids()) == sorted(made | {made_other}) == ids()
    assert sorted(ids(source_volume_id=volume)) == sorted(made)
    assert ids(source_volume_id=other) == [made_other]
    assert ids(source_volume_id=f"{NS}/nobody") == []
    one = sorted(made)[1]
    assert ids(snapshot_id=one) == [one]
    assert ids(snapshot_id=one, source_volume_id=other) == []
    assert ids(snapshot_id="s-" + "0" * 32) == [] and ids(snapshot_id="not-ours") == []
    # Pages of two: every snapshot once, in order.
    pages, token = [], ""
    for _ in range(5):
        resp = c.ListSnapshots(pb2.ListSnapshotsRequest(max_entries=2, starting_token=token), timeout=30)
        assert len(resp.entries) <= 2
        pages.extend(e.snapshot.snapshot_id for e in resp.entries)
        token = resp.next_token
        if not token:
            break
    assert pages == ids()
    for bad in ("zzz", "99", "-1"):
        code, details = code_of(lambda: c.ListSnapshots(pb2.ListSnapshotsRequest(starting_token=bad), timeout=30))
        assert code == grpc.StatusCode.ABORTED and "starting_token" in details, (bad, details)
    code, _ = code_of(lambda: c.ListSnapshots(pb2.ListSnapshotsRequest(max_entries=-1), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Entries carry what CreateSnapshot answered.
    entry = c.ListSnapshots(pb2.ListSnapshotsRequest(snapshot_id=one), timeout=30).entries[0].snapshot
    assert entry.ready_to_use and entry.size_bytes > 0 and entry.source_volume_id == volume
    got = c.GetSnapshot(pb2.GetSnapshotRequest(snapshot_id=one), timeout=30).snapshot
    assert got == entry
    assert code_of(lambda: c.GetSnapshot(pb2.GetSnapshotRequest(snapshot_id="s-" + "0" * 32)))[0] == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: c.GetSnapshot(pb2.GetSnapshotRequest()))[0] == grpc.StatusCode.INVALID_ARGUMENT
    # A deleted snapshot is no longer listed.
    c.DeleteSnapshot(pb2.DeleteSnapshotRequest(snapshot_id=one))
    assert one not in ids() and len(ids()) == 3


def test_create_answers_ok_only_once_etcd_has_cut_the_snapshot(driver, kube, etcd_cluster, volume, stubs,
                                                               tools_bin):
    """Issue 9.3: no OK before the cut (retryable ABORTED instead, within the sidecar's
    timeout); creation_time is the cut; a key written after OK is not in the snapshot, one
    written before is."""
    pb2, _ = stubs
    c = driver.controller
    req = pb2.CreateSnapshotRequest(name="cut-first", source_volume_id=volume)
    kube.hold_jobs()
    before = put_revision(etcd_cluster, "/cut/before", "in the snapshot")
    t0 = time.monotonic()
    code, details = code_of(lambda: c.CreateSnapshot(req, timeout=60))
    assert code == grpc.StatusCode.ABORTED and "not cut the snapshot" in details, details
    assert time.monotonic() - t0 < 30  # CREATE_WAIT (3 s here), well within the sidecar's 60 s
    # The same for a group snapshot.
    code, _ = code_of(lambda: driver.group.CreateVolumeGroupSnapshot(
        pb2.CreateVolumeGroupSnapshotRequest(name="cut-first-group", source_volume_ids=[volume]), timeout=60))
    assert code == grpc.StatusCode.ABORTED
    jobs = len(kube.objects("jobs", NS))
    released = time.time()
    kube.release_jobs()
    first = None
    for _ in range(60):
        try:
            first = c.CreateSnapshot(req, timeout=60).snapshot
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.ABORTED, e.details()
    assert first is not None
    answered = time.time()
    after = put_revision(etcd_cluster, "/cut/after", "not in the snapshot")
    assert released - 1 <= ts(first.creation_time) <= answered
    # Retries until ready: the same snapshot, the same creation time, no new Job.
    sidecar = Sidecar(driver, pb2)
    content = sidecar.create_snapshot("cut-first", volume)
    assert content.snapshot_handle == first.snapshot_id
    assert content.creation_time == pytest.approx(ts(first.creation_time), abs=1e-6)
    assert len(kube.objects("jobs", NS)) == jobs
    st = file_status(tools_bin, kube, first.snapshot_id)
    assert before <= st["revision"] < after, (before, st["revision"], after)
    assert record(kube, first.snapshot_id)["revision"] == st["revision"]
    # The group that was refused meanwhile becomes OK once cut, with its cut as creation_time.
    group, members = sidecar.create_group("cut-first-group", [volume])
    (sid, m), = members.items()
    assert group.creation_time == pytest.approx(m.creation_time, abs=1e-6)


def test_pods_gone_after_success_keep_the_result(tmp_path, kube, etcd_cluster, volume, stubs, bin_dir, tools_bin):
    """Issue 9.4: the Job succeeded, its pods were removed (garbage collection, a node drain)
    before the driver read the result: the file on the PVC is verified again, not discarded."""
    pb2, _ = stubs
    # The monitor looks only every minute, so the pods go before anyone reads their result.
    with running_driver(bin_dir, tmp_path / "driver", kube.kubeconfig_path, stubs, POLL_INTERVAL="60s",
                        CREATE_WAIT="20s", JOB_BACKOFF_LIMIT=0) as d:
        kube.hold_containers("verify")
        g = d.group.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
            name="pods-gone", source_volume_ids=[volume]), timeout=60).group_snapshot
        assert not g.ready_to_use
        sid = g.snapshots[0].snapshot_id
        obj = "etcdsnap-" + sid
        cut = ts(g.creation_time)
        kube.release_containers()
        kube.wait_job(NS, obj, 60)
        client = kube.client()
        for pod in kube.objects("pods", NS):
            status, body, _ = client.delete(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}")
            assert status == 200, body
        assert kube.objects("pods", NS) == []
        done = wait_for(lambda: (lambda r: r if r.ready_to_use else None)(d.group.GetVolumeGroupSnapshot(
            pb2.GetVolumeGroupSnapshotRequest(group_snapshot_id=g.group_snapshot_id), timeout=60).group_snapshot),
            60, "the file to be verified again")
        st = file_status(tools_bin, kube, sid)
        assert done.snapshots[0].size_bytes == st["totalSize"]
        assert ts(done.creation_time) == pytest.approx(cut, abs=1e-6)
        rec = record(kube, sid)
        assert rec["state"] == "ready" and rec["revision"] == st["revision"] and rec["reverify_attempts"] == 1
        assert kube.get_object("jobs", NS, obj + "-verify") is not None
        d.group.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=g.group_snapshot_id))
        assert kube.objects("jobs", NS) == []
