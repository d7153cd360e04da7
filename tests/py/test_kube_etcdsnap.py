"""etcdsnap against the real kube-apiserver 1.20: its ServiceAccount has exactly the chart's
rendered RBAC (applied to the apiserver) and a token from the real token controller; the
snapshot Job runs through the real job controller and the process kubelet (real etcdctl and
etcdutl, the client TLS Secret and the snapshot PVC mounted where the Job says); the garbage
collector is real. Its requests pass through a recording proxy that validates every object it
sends strictly against Kubernetes 1.33. 1.20's job controller labels Pods `job-name` only (`batch.kubernetes.io/job-name`,
which etcdsnap selects on, came in 1.27): a test webhook adds that label, as 1.27+ does, and
nothing else. Every request the driver made is read back from the apiserver's audit log:
none was refused, and no granted permission went unused except the ones named below with why."""

from __future__ import annotations

import json
import subprocess

from etcdsnap_driver import running_driver
from test_chart_etcdsnap import DRIVER_CLUSTER_CALLS, DRIVER_METADATA_CALLS
from kube_control_plane import ns_path
from kube_etcdsnap import etcdsnap_kube, job_label_webhook, rbac  # noqa: F401 - fixtures
from waiting import wait_for

# Granted but not exercised here, and why: discovery through the Service's Endpoints needs
# member addresses, and 1.20 refuses loopback addresses in Endpoints (this cluster's etcd
# listens on 127.0.0.1), so the PVC names its endpoints in the etcd.io/endpoints annotation.
UNUSED_HERE = {("get", "services"), ("get", "endpoints")}


def etcdsnap_rules(objs, ns):
    """(verb, resource) pairs the chart grants etcdsnap itself (not the csi-snapshotter sidecar)."""
    out = set()
    for o in objs:
        if o["kind"] == "Role" and not o["metadata"]["name"].endswith("-leader-election"):
            for r in o["rules"]:
                out |= {(v, res) for v in r["verbs"] for res in r["resources"]}
    return out


def test_group_snapshot_through_the_real_api_with_exactly_the_charts_rbac(kube_plane, etcdsnap_kube, stubs, bin_dir,
                                                                          tools_bin):
    k = etcdsnap_kube
    admin, ns, recorder, kube_node = k.admin, k.ns, k.recorder, k.node
    pb2, _ = stubs
    user = k.user
    with running_driver(bin_dir, k.kubeconfig.parent / "driver", k.kubeconfig, stubs, **k.env) as d:
        g = d.group.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
            name="kube-e2e", source_volume_ids=[k.volume]), timeout=30).group_snapshot

        def ready():
            r = d.group.GetVolumeGroupSnapshot(pb2.GetVolumeGroupSnapshotRequest(
                group_snapshot_id=g.group_snapshot_id), timeout=30).group_snapshot
            return r if r.ready_to_use else None
        try:
            done = wait_for(ready, 180, "the group snapshot to be ready", interval=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}\ndriver log:\n{d.logs()[-4000:]}\njobs: "
                                 f"{json.dumps(admin.get(ns_path(ns, 'pods')))[-4000:]}") from None
        snap = done.snapshots[0]
        name = "etcdsnap-" + snap.snapshot_id
        # The Job ran through the real job controller; the snapshot is on the PVC's folder.
        job = admin.get(ns_path(ns, "jobs", name, group="batch"))
        assert job["status"].get("succeeded") == 1, job["status"]
        pvc = admin.get(ns_path(ns, "persistentvolumeclaims", name))
        path = kube_node.claim_dir(ns, name, pvc["metadata"]["uid"]) / "snapshot.db"
        st = json.loads(subprocess.run([str(tools_bin / "etcdutl"), "snapshot", "status", str(path), "-w", "json"],
                                       capture_output=True, text=True, timeout=30, check=True).stdout)
        assert snap.size_bytes == st["totalSize"] > 0
        # Deleting the group deletes the PVC; the real garbage collector removes the Job and
        # the kubelet its Pod.
        d.group.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(
            group_snapshot_id=g.group_snapshot_id, snapshot_ids=[snap.snapshot_id]), timeout=30)
        wait_for(lambda: not admin.exists(ns_path(ns, "jobs", name, group="batch")), 90,
                 "the garbage collector to delete the Job", interval=0.5)
        wait_for(lambda: admin.get(ns_path(ns, "pods"))["items"] == [], 90, "the Job's Pod to go", interval=0.5)
    # Every object etcdsnap sent is valid for Kubernetes 1.33 (1.20 would drop unknown fields).
    assert any(r.method == "POST" for r in recorder.requests), recorder.requests
    assert recorder.schema_failures == [], recorder.schema_failures
    # Least privilege, from the apiserver's audit log.
    events = [e for e in kube_plane.audit_events() if e.get("user", {}).get("username") == user]
    assert events, "no request of the driver in the audit log"
    refused = [(e["verb"], e["objectRef"]) for e in events if e.get("responseStatus", {}).get("code") == 403]
    assert refused == [], f"requests the chart's RBAC refused: {refused}"
    used = set()
    for e in events:
        ref = e.get("objectRef") or {}
        res = ref.get("resource", "") + ("/" + ref["subresource"] if ref.get("subresource") else "")
        used.add((e["verb"], res))
    granted = etcdsnap_rules(k.objs, ns)
    assert used <= granted, f"used but not granted: {used - granted}"
    assert granted - used == UNUSED_HERE, f"granted but unused: {granted - used - UNUSED_HERE}"
    # What test_chart_etcdsnap.py holds the chart's RBAC to (per namespace) is what the apiserver recorded.
    needs = {(verb, resource) for calls in (DRIVER_METADATA_CALLS, DRIVER_CLUSTER_CALLS)
             for (_, resource), verbs in calls.items() for verb in verbs}
    assert used | UNUSED_HERE == needs, f"recorded {sorted(used)}, test_chart_etcdsnap.py says {sorted(needs)}"
