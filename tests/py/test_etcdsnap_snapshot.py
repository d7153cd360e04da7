"""etcdsnap end to end: a real 3-member etcd cluster over TLS with client certificates, the strict
Kubernetes API stand-in running each Job's containers (real etcdctl/etcdutl) as local processes,
the built driver on a Unix socket, and an independent grpcio client."""

from __future__ import annotations

import base64
import re
import json
import subprocess
import threading
import time

import grpc
import pytest

from etcdsnap_driver import Driver, create_group_when_cut, free_port, running_driver, seed_cluster
from etcd_cluster import restored_keys
from etcdsnap_fixtures import META, NS, code_of, driver, volume  # noqa: F401 - fixtures
from waiting import wait_for


def etcdutl_status(tools_bin, path) -> dict:
    out = subprocess.run([str(tools_bin / "etcdutl"), "snapshot", "status", str(path), "-w", "json"],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def records(kube):
    return {o["metadata"]["name"]: o for o in kube.objects("configmaps", META)
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "etcdsnap"}


def create_group(d, pb2, name, volumes, budget: float = 60, parameters=None):
    """CreateVolumeGroupSnapshot as the sidecar calls it (again while ABORTED), within `budget`."""
    return create_group_when_cut(d, pb2, name, volumes, budget, parameters, call_timeout=30)


def create_group_once(d, pb2, name, volumes):
    return d.group.CreateVolumeGroupSnapshot(
        pb2.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=volumes), timeout=30).group_snapshot


def group_ids(name, volume):
    """The group id and its member's snapshot id for `name` and one volume (ids.rs)."""
    import hashlib

    gid = "g-" + hashlib.sha256(f"group\0etcdsnap.lifeboat.dev\0{name}".encode()).hexdigest()[:32]
    sid = "s-" + hashlib.sha256(f"member\0{gid}\0{volume}".encode()).hexdigest()[:32]
    return gid, sid


def get_group(d, pb2, gid):
    return d.group.GetVolumeGroupSnapshot(pb2.GetVolumeGroupSnapshotRequest(group_snapshot_id=gid), timeout=30).group_snapshot


def test_group_snapshot_end_to_end(driver, kube, etcd_cluster, volume, stubs, tools_bin):
    pb2, _ = stubs
    handle = kube.get_object("persistentvolumeclaims", NS, volume.split("/")[1])
    assert handle["status"]["phase"] == "Bound"  # the README's pre-bound PV/PVC pair
    for i in range(20):
        etcd_cluster.put(f"/e2e/key-{i}", f"value-{i}")
    kube.hold_jobs()
    leader_before = etcd_cluster.leader_index()
    # While the Job has not run, etcd has not cut the snapshot: Create answers ABORTED (the
    # sidecar retries), never OK.
    code, details = code_of(lambda: create_group_once(driver, pb2, "groupsnapshot-e2e", [volume]))
    assert code == grpc.StatusCode.ABORTED and "not cut the snapshot" in details, details
    gid, sid = group_ids("groupsnapshot-e2e", volume)
    assert gid.startswith("g-") and len(gid) <= 128 and sid.startswith("s-")
    obj = "etcdsnap-" + sid
    job = kube.get_object("jobs", NS, obj)
    pvc = kube.get_object("persistentvolumeclaims", NS, obj)
    assert job and pvc
    # The Job is owned by the PVC, both are labelled with short ids only.
    assert job["metadata"]["ownerReferences"][0]["uid"] == pvc["metadata"]["uid"]
    for o in (job, pvc):
        labels = o["metadata"]["labels"]
        assert labels["etcdsnap.lifeboat.dev/snapshot"] == sid
        assert labels["etcdsnap.lifeboat.dev/group"] == gid
        assert all(len(v) <= 63 for v in labels.values())
    # The snapshot is taken from exactly one member, the leader, over TLS.
    args = job["spec"]["template"]["spec"]["initContainers"][0]["args"]
    endpoints = [a for a in args if a.startswith("--endpoints=")]
    assert len(endpoints) == 1 and endpoints[0].removeprefix("--endpoints=") in etcd_cluster.client_urls
    if etcd_cluster.leader_index() == leader_before:  # no election in between
        assert endpoints == [f"--endpoints={etcd_cluster.client_urls[leader_before]}"]
    # Records: one for the group, one per snapshot, with a resourceVersion.
    recs = records(kube)
    assert set(recs) == {"etcdsnap-" + gid, obj}
    assert recs[obj]["metadata"]["labels"]["etcdsnap.lifeboat.dev/state"] == "running"
    assert recs[obj]["metadata"]["resourceVersion"]
    # A retry of Create while the Job is pending: still ABORTED, no second Job.
    assert code_of(lambda: create_group_once(driver, pb2, "groupsnapshot-e2e", [volume]))[0] == grpc.StatusCode.ABORTED
    assert len(kube.objects("jobs", NS)) == 1

    kube.release_jobs()
    g = create_group(driver, pb2, "groupsnapshot-e2e", [volume])
    assert g.group_snapshot_id == gid and len(g.snapshots) == 1
    s = g.snapshots[0]
    assert (s.snapshot_id, s.source_volume_id, s.group_snapshot_id) == (sid, volume, gid)
    assert s.creation_time.seconds > 0 and g.creation_time == s.creation_time
    kube.release_jobs()
    done = wait_for(lambda: (lambda r: r if r.ready_to_use else None)(get_group(driver, pb2, g.group_snapshot_id)),
                    60, "the group snapshot to be ready")
    snap = done.snapshots[0]
    assert snap.ready_to_use and snap.snapshot_id == s.snapshot_id
    # The file is really there, and the size reported is what etcdutl says about it.
    path = kube.pvc_dir(NS, obj) / "snapshot.db"
    st = etcdutl_status(tools_bin, path)
    assert snap.size_bytes == st["totalSize"] > 0
    rec = json.loads(records(kube)[obj]["data"]["record.json"])
    assert rec["state"] == "ready" and rec["hash"] == st["hash"] and rec["revision"] == st["revision"]
    assert records(kube)[obj]["metadata"]["labels"]["etcdsnap.lifeboat.dev/state"] == "ready"
    assert kube.pvc_request(NS, obj) == "64Mi"
    # Same name, same volume: the same ready group. Same name, other volumes: ALREADY_EXISTS.
    same = create_group(driver, pb2, "groupsnapshot-e2e", [volume])
    assert same.ready_to_use and same.snapshots[0].size_bytes == snap.size_bytes
    other = seed_cluster(kube, etcd_cluster, NS, "other")
    code, details = code_of(lambda: create_group(driver, pb2, "groupsnapshot-e2e", [volume, other]))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "groupsnapshot-e2e" in details
    assert driver.metric("etcdsnap_snapshots_total", result="ready") == 1
    assert driver.metric("etcdsnap_snapshot_size_bytes_count") == 1
    assert driver.metric("etcdsnap_etcd_members_healthy", cluster=f"{NS}/main") == 3
    assert driver.metric("etcdsnap_rpc_duration_seconds_count", method="CreateVolumeGroupSnapshot", code="ABORTED") >= 2
    assert driver.metric("etcdsnap_rpc_duration_seconds_count", method="CreateVolumeGroupSnapshot", code="OK") == 2

    # Delete removes Job, PVC and records; twice is fine; then Get is NOT_FOUND.
    for _ in range(2):
        driver.group.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(
            group_snapshot_id=g.group_snapshot_id, snapshot_ids=[s.snapshot_id]))
    assert kube.get_object("jobs", NS, obj) is None
    assert kube.get_object("persistentvolumeclaims", NS, obj) is None
    assert kube.objects("pods", NS) == []
    assert records(kube) == {}
    assert code_of(lambda: get_group(driver, pb2, g.group_snapshot_id))[0] == grpc.StatusCode.NOT_FOUND


def test_two_clusters_in_one_group(driver, kube, etcd_cluster, stubs, tools_bin):
    """Two handle PVCs (here both for the same real cluster, via a Service's Endpoints and via
    the annotation) give one snapshot each in one group, when the class accepts one point in time
    per volume (groupConsistency: per-volume; refused otherwise, see test_etcdsnap_params)."""
    pb2, _ = stubs
    a = seed_cluster(kube, etcd_cluster, NS, "main")
    # The second handle finds its members through a Service and its Endpoints.
    kube.put_etcd_tls_secret(etcd_cluster, NS, "svc-client-tls")
    kube.put_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": NS},
                     "spec": {"clusterIP": "None", "ports": [{"name": "client", "port": 2379}]}})
    kube.put_object({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "svc", "namespace": NS},
                     "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                                  "ports": [{"name": "client", "port": m.client_port}]}
                                 for m in etcd_cluster.members]})
    kube.put_object({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": "svc-handle", "namespace": NS, "labels": {"etcd.io/cluster": "svc"}},
                     "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Mi"}}}})
    b = f"{NS}/svc-handle"
    g = create_group(driver, pb2, "two", [a, b], parameters={"groupConsistency": "per-volume"})
    assert [s.source_volume_id for s in g.snapshots] == [a, b]
    assert len({s.snapshot_id for s in g.snapshots}) == 2
    done = wait_for(lambda: (lambda r: r if r.ready_to_use else None)(get_group(driver, pb2, g.group_snapshot_id)),
                    60, "both snapshots ready")
    for s in done.snapshots:
        assert s.size_bytes == etcdutl_status(tools_bin, kube.pvc_dir(NS, "etcdsnap-" + s.snapshot_id) / "snapshot.db")["totalSize"]
    driver.group.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=g.group_snapshot_id))
    assert kube.objects("jobs", NS) == [] and records(kube) == {}


def test_create_snapshot_single_volume(driver, kube, etcd_cluster, volume, stubs, tools_bin):
    pb2, _ = stubs
    c = driver.controller
    req = pb2.CreateSnapshotRequest(name="snapshot-" + "x" * 119, source_volume_id=volume)
    first = wait_for(lambda: (lambda r: r)(_create_ok(c, req)), 60, "CreateSnapshot to answer OK")
    assert first.source_volume_id == volume and first.group_snapshot_id == ""
    # The sidecar retries Create until ready_to_use; each retry is the same snapshot.
    snap = wait_for(lambda: (lambda r: r if r.ready_to_use else None)(c.CreateSnapshot(req, timeout=30).snapshot),
                    60, "CreateSnapshot to report ready")
    assert snap.snapshot_id == first.snapshot_id and snap.creation_time == first.creation_time
    path = kube.pvc_dir(NS, "etcdsnap-" + snap.snapshot_id) / "snapshot.db"
    assert snap.size_bytes == etcdutl_status(tools_bin, path)["totalSize"]
    other = seed_cluster(kube, etcd_cluster, NS, "other")
    code, _ = code_of(lambda: c.CreateSnapshot(pb2.CreateSnapshotRequest(name=req.name, source_volume_id=other)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    for _ in range(2):
        c.DeleteSnapshot(pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert kube.objects("jobs", NS) == [] and kube.objects("persistentvolumeclaims", NS) != []
    assert kube.get_object("persistentvolumeclaims", NS, "etcdsnap-" + snap.snapshot_id) is None
    assert records(kube) == {}


def _create_ok(c, req):
    """CreateSnapshot's answer, or None while it is ABORTED (not cut yet)."""
    try:
        return c.CreateSnapshot(req, timeout=30).snapshot
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ABORTED:
            raise
        return None


def current_leader(cluster) -> int:
    """The leader's index, waiting out an election in progress (index 0 is a valid answer)."""
    return wait_for(lambda: (lambda i: None if i is None else (i,))(cluster.leader_index()), 20, "an etcd leader")[0]


def test_one_member_down_still_snapshots(driver, kube, etcd_cluster, volume, stubs):
    pb2, _ = stubs
    leader = current_leader(etcd_cluster)
    down = (leader + 1) % 3
    etcd_cluster.stop_member(down)
    try:
        g = create_group(driver, pb2, "one-down", [volume])
        done = wait_for(lambda: (lambda r: r if r.ready_to_use else None)(get_group(driver, pb2, g.group_snapshot_id)),
                        60, "snapshot with one member down")
        assert done.snapshots[0].size_bytes > 0
        assert driver.metric("etcdsnap_etcd_members_healthy", cluster=f"{NS}/main") == 2
        assert driver.metric("etcdsnap_etcd_members", cluster=f"{NS}/main") == 3
        job = kube.get_object("jobs", NS, "etcdsnap-" + done.snapshots[0].snapshot_id)
        args = job["spec"]["template"]["spec"]["initContainers"][0]["args"]
        assert f"--endpoints={etcd_cluster.client_urls[down]}" not in args
    finally:
        etcd_cluster.heal()


def test_two_members_down_is_refused(driver, kube, etcd_cluster, volume, stubs):
    pb2, _ = stubs
    alive = current_leader(etcd_cluster)
    downs = [i for i in range(3) if i != alive]
    for i in downs:
        etcd_cluster.stop_member(i)
    try:
        code, details = code_of(lambda: create_group(driver, pb2, "two-down", [volume]))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        # The survivor may already report "no leader" itself: 0 or 1 healthy, 1 reachable.
        assert re.search(rf"etcd cluster {NS}/main has lost quorum: [01] of 3 voting members healthy "
                         r"\(1 reachable\), 2 needed; ", details), details
        for i in downs:
            assert etcd_cluster.client_urls[i] in details, details
        # Refused before anything was created.
        assert kube.objects("jobs", NS) == [] and records(kube) == {}
        assert driver.metric("etcdsnap_etcd_healthy", cluster=f"{NS}/main") == 0
    finally:
        etcd_cluster.heal()


def test_nospace_alarm_is_refused(driver, kube, etcd_cluster, volume, stubs):
    pb2, _ = stubs
    etcd_cluster.trigger_nospace()
    try:
        code, details = code_of(lambda: create_group(driver, pb2, "nospace", [volume]))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert f"etcd cluster {NS}/main has an active alarm: NOSPACE on member" in details, details
        assert kube.objects("jobs", NS) == [] and records(kube) == {}
    finally:
        etcd_cluster.heal()


def test_failed_job_is_reported_and_cleaned_up(tmp_path, kube, etcd_cluster, volume, stubs, bin_dir):
    pb2, _ = stubs
    # etcdctl gives up after 4/5 of JOB_TIMEOUT (12 s here), before the Job's own deadline.
    driver = Driver(bin_dir, tmp_path / "driver", kube.kubeconfig_path, *stubs, JOB_BACKOFF_LIMIT=0,
                    JOB_TIMEOUT="15s", CREATE_WAIT="3s").start()
    kube.hold_jobs()
    assert code_of(lambda: create_group_once(driver, pb2, "doomed", [volume]))[0] == grpc.StatusCode.ABORTED
    gid, sid = group_ids("doomed", volume)
    obj = "etcdsnap-" + sid
    # The cluster goes away after the health check: etcdctl cannot reach the member.
    for i in range(3):
        etcd_cluster.stop_member(i)
    try:
        kube.release_jobs()
        kube.wait_job(NS, obj, 60)
        # The monitor notices the failure and removes Job and PVC without any RPC.
        wait_for(lambda: kube.get_object("persistentvolumeclaims", NS, obj) is None, 30, "cleanup of the PVC")
        assert kube.get_object("jobs", NS, obj) is None
        rec = json.loads(records(kube)[obj]["data"]["record.json"])
        assert rec["state"] == "failed"
        assert "container save exited with code" in rec["reason"], rec["reason"]
        assert "BackoffLimitExceeded" in rec["reason"], rec["reason"]
        # Get reports the reason; so does the next Create (which then clears the failure)...
        code, details = code_of(lambda: get_group(driver, pb2, gid))
        assert code == grpc.StatusCode.INTERNAL and "container save exited" in details, details
        code, details = code_of(lambda: create_group(driver, pb2, "doomed", [volume]))
        assert code == grpc.StatusCode.INTERNAL and "failed" in details
        assert records(kube) == {}
        assert driver.metric("etcdsnap_snapshots_total", result="failed") == 1
    finally:
        etcd_cluster.heal()
    # ...and the retry after that starts afresh and succeeds.
    again = create_group(driver, pb2, "doomed", [volume])
    wait_for(lambda: get_group(driver, pb2, again.group_snapshot_id).ready_to_use, 60, "the retried snapshot")
    assert driver.stop() == 0


def test_concurrent_creates_make_one_snapshot(driver, kube, etcd_cluster, volume, stubs):
    pb2, _ = stubs
    kube.hold_jobs()

    def race(create):
        results, errors = [], []

        def one():
            try:
                results.append(create(driver, pb2, "racy", [volume]).group_snapshot_id)
            except grpc.RpcError as e:
                errors.append(e.code())

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        return results, errors

    # Not cut while the Job is held: every one of them is ABORTED, and there is one Job.
    results, errors = race(create_group_once)
    assert results == [] and errors == [grpc.StatusCode.ABORTED] * 6
    assert len(kube.objects("jobs", NS)) == 1 and len(records(kube)) == 2
    kube.release_jobs()
    results, errors = race(create_group)
    assert errors == [] and len(set(results)) == 1 and len(results) == 6
    assert len(kube.objects("jobs", NS)) == 1 and len(records(kube)) == 2
    wait_for(lambda: get_group(driver, pb2, results[0]).ready_to_use, 60, "ready")


def test_restart_resumes_running_snapshots(tmp_path, kube, etcd_cluster, volume, bin_dir, stubs):
    pb2, _ = stubs
    kube.hold_jobs()
    first = Driver(bin_dir, tmp_path / "d1", kube.kubeconfig_path, *stubs, CREATE_WAIT="2s").start()
    assert code_of(lambda: create_group_once(first, pb2, "across-restart", [volume]))[0] == grpc.StatusCode.ABORTED
    gid, sid = group_ids("across-restart", volume)
    assert first.stop() == 0
    kube.release_jobs()
    second = Driver(bin_dir, tmp_path / "d2", kube.kubeconfig_path, *stubs).start()
    try:
        obj = "etcdsnap-" + sid
        # The monitor of the new process finishes the record without any RPC.
        wait_for(lambda: records(kube)[obj]["metadata"]["labels"]["etcdsnap.lifeboat.dev/state"] == "ready", 60,
                 "the restarted driver to finish the snapshot")
        assert get_group(second, pb2, gid).ready_to_use
    finally:
        assert second.stop() == 0


def test_restore_round_trip(driver, kube, etcd_cluster, volume, stubs, tools_bin, bin_dir, tmp_path):
    pb2, _ = stubs
    expected = {f"/restore/k{i}": f"v{i}-" + "x" * i for i in range(50)}
    for k, v in expected.items():
        etcd_cluster.put(k, v)
    g = create_group(driver, pb2, "for-restore", [volume])
    snap = wait_for(lambda: (lambda r: r if r.ready_to_use else None)(get_group(driver, pb2, g.group_snapshot_id)),
                    60, "snapshot").snapshots[0]
    before = etcd_cluster.get_all("/restore/")
    assert before == expected
    etcd_cluster.put("/restore/after-snapshot", "must not be restored")
    # The member's data PVC, then the restore Job through `etcdsnap restore --apply`.
    status, body, _ = kube.client().post(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-r0", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}})
    assert status == 201, body
    peer, client = free_port(), free_port()
    env = dict(driver.env)
    run = subprocess.run([str(bin_dir / "etcdsnap"), "restore", "--snapshot-id", snap.snapshot_id, "--name", "r0",
                          "--initial-cluster", f"r0=http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
                          f"http://127.0.0.1:{peer}", "--target-pvc", "data-r0", "--apply", "--timeout", "60s"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "restored snapshot" in run.stdout
    # The finished restore Job is removed; only the snapshot's own Job remains.
    assert [j["metadata"]["name"] for j in kube.objects("jobs", NS)] == ["etcdsnap-" + snap.snapshot_id]
    data_dir = kube.pvc_dir(NS, "data-r0") / "data"
    assert (data_dir / "member").is_dir()
    # A fresh etcd on the restored data: the keys are exactly those at snapshot time.
    restored = restored_keys(tools_bin, data_dir, peer, client, "/restore/", tmp_path / "restored-etcd.log")
    assert restored == expected
    # Restoring an unknown snapshot fails clearly.
    bad = subprocess.run([str(bin_dir / "etcdsnap"), "restore", "--snapshot-id", "s-" + "0" * 32, "--name", "r0",
                          "--initial-cluster", "r0=http://x:1", "--initial-advertise-peer-urls", "http://x:1",
                          "--target-pvc", "data-r0"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not found" in bad.stderr


def test_interrupted_group_create_recovers(driver, kube, etcd_cluster, volume, stubs):
    """A group record left by a driver that died before creating its members: the next Create
    reports it, clears it, and the one after that takes the snapshot."""
    import hashlib

    pb2, _ = stubs
    gid = "g-" + hashlib.sha256(b"group\0etcdsnap.lifeboat.dev\0interrupted").hexdigest()[:32]
    sid = "s-" + hashlib.sha256(f"member\0{gid}\0{volume}".encode()).hexdigest()[:32]
    record = {"id": gid, "name": "interrupted", "volume_ids": [volume], "snapshot_ids": [sid],
              "created": {"seconds": int(time.time()), "nanos": 0}}
    kube.put_object({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": f"etcdsnap-{gid}", "namespace": META,
                                  "labels": {"app.kubernetes.io/managed-by": "etcdsnap"}},
                     "data": {"record.json": json.dumps(record)}})
    code, details = code_of(lambda: create_group(driver, pb2, "interrupted", [volume]))
    assert code == grpc.StatusCode.INTERNAL and "interrupted" in details, details
    assert records(kube) == {}
    g = create_group(driver, pb2, "interrupted", [volume])
    assert g.group_snapshot_id == gid and g.snapshots[0].snapshot_id == sid
    wait_for(lambda: get_group(driver, pb2, gid).ready_to_use, 60, "ready")
    # A member is not deleted on its own (issue 9.7): the group stays whole, and deletes cleanly.
    code, details = code_of(lambda: driver.controller.DeleteSnapshot(pb2.DeleteSnapshotRequest(snapshot_id=sid)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and gid in details, details
    assert [s.snapshot_id for s in get_group(driver, pb2, gid).snapshots] == [sid]
    driver.group.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid))
    assert records(kube) == {} and kube.objects("jobs", NS) == []


def test_job_that_never_runs_times_out(tmp_path, kube, etcd_cluster, volume, stubs, bin_dir):
    """A Job the cluster never starts (held by the stand-in, as with a broken Job controller):
    30 s after JOB_TIMEOUT the driver fails it with DEADLINE_EXCEEDED and removes Job and PVC."""
    pb2, _ = stubs
    d = Driver(bin_dir, tmp_path / "driver", kube.kubeconfig_path, *stubs, JOB_TIMEOUT="10s", CREATE_WAIT="2s").start()
    try:
        kube.hold_jobs()
        assert code_of(lambda: create_group_once(d, pb2, "never-runs", [volume]))[0] == grpc.StatusCode.ABORTED
        gid, sid = group_ids("never-runs", volume)
        obj = "etcdsnap-" + sid
        assert not get_group(d, pb2, gid).ready_to_use
        # The Job goes first, then the PVC: wait for both.
        wait_for(lambda: kube.get_object("jobs", NS, obj) is None, 90, "the driver to give up on the Job")
        wait_for(lambda: kube.get_object("persistentvolumeclaims", NS, obj) is None, 10, "the PVC to be removed")
        code, details = code_of(lambda: get_group(d, pb2, gid))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "timed out" in details and "JOB_TIMEOUT 10s" in details
        kube.release_jobs()
    finally:
        assert d.stop() == 0
