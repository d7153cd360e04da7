"""Issue 9 items 5-7 against a real 3-member etcd cluster and the strict Kubernetes API stand-in:
groups that span several etcd snapshots are refused unless the class says `per-volume`; class
parameters are validated and used; a member of a group is not deleted alone; mismatching
snapshot_ids on Get/Delete of a group are reported."""

from __future__ import annotations

import grpc

from csi_sidecar import Sidecar
from etcdsnap_driver import seed_cluster
from etcdsnap_fixtures import META, NS, code_of, driver, volume  # noqa: F401 - fixtures


def test_groups_of_several_volumes_need_per_volume_consistency(driver, kube, etcd_cluster, volume, stubs):
    """Issue 9.5: two volumes are two etcd snapshots with no common point in time: refused with
    a message that says so, before anything is created; accepted with groupConsistency=per-volume."""
    pb2, _ = stubs
    other = seed_cluster(kube, etcd_cluster, NS, "other")
    req = pb2.CreateVolumeGroupSnapshotRequest(name="two", source_volume_ids=[volume, other])
    code, details = code_of(lambda: driver.group.CreateVolumeGroupSnapshot(req, timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "no common point in time" in details and "groupConsistency" in details and "per-volume" in details
    assert volume in details and other in details
    assert kube.objects("jobs", NS) == [] and kube.objects("configmaps", META) == []
    group, members = Sidecar(driver, pb2).create_group("two", [volume, other],
                                                      parameters={"groupConsistency": "per-volume"})
    assert len(members) == 2 and all(m.ready for m in members.values())


def test_class_parameters_are_validated_and_used(driver, kube, etcd_cluster, volume, stubs):
    """Issue 9.6: an unknown key is INVALID_ARGUMENT naming it; the sidecar's own keys pass;
    the same name with other parameters is ALREADY_EXISTS; storageClassName and member are used."""
    pb2, _ = stubs
    c = driver.controller
    code, details = code_of(lambda: c.CreateSnapshot(pb2.CreateSnapshotRequest(
        name="p-1", source_volume_id=volume, parameters={"storageclass": "fast"}), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and '"storageclass"' in details, details
    code, details = code_of(lambda: driver.group.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
        name="p-g", source_volume_ids=[volume], parameters={"member": "any"}), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "member" in details
    assert kube.objects("jobs", NS) == []
    params = {"storageClassName": "etcd-snapshots", "member": "follower",
              "csi.storage.k8s.io/volumesnapshot/name": "snap-p-1",
              "csi.storage.k8s.io/volumesnapshot/namespace": "apps",
              "csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-1"}
    leader = etcd_cluster.leader_index()
    content = Sidecar(driver, pb2).create_snapshot("p-1", volume, parameters=params)
    obj = "etcdsnap-" + content.snapshot_handle
    pvc = kube.get_object("persistentvolumeclaims", NS, obj)
    assert pvc["spec"]["storageClassName"] == "etcd-snapshots"
    args = kube.get_object("jobs", NS, obj)["spec"]["template"]["spec"]["initContainers"][0]["args"]
    endpoint = [a for a in args if a.startswith("--endpoints=")][0].removeprefix("--endpoints=")
    assert endpoint in etcd_cluster.client_urls
    if etcd_cluster.leader_index() == leader:  # no election in between
        assert endpoint != etcd_cluster.client_urls[leader]
    # The same name with other parameters (the sidecar's own keys aside) is another snapshot.
    changed = dict(params, storageClassName="other")
    code, details = code_of(lambda: c.CreateSnapshot(pb2.CreateSnapshotRequest(
        name="p-1", source_volume_id=volume, parameters=changed), timeout=60))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "parameters" in details, details
    same = dict(params, **{"csi.storage.k8s.io/volumesnapshotcontent/name": "renamed"})
    assert c.CreateSnapshot(pb2.CreateSnapshotRequest(name="p-1", source_volume_id=volume, parameters=same),
                            timeout=60).snapshot.snapshot_id == content.snapshot_handle
    g, _ = Sidecar(driver, pb2).create_group("p-g", [volume], parameters={"member": "leader"})
    code, details = code_of(lambda: driver.group.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
        name="p-g", source_volume_ids=[volume], parameters={"member": "follower"}), timeout=60))
    assert code == grpc.StatusCode.ALREADY_EXISTS


def test_group_members_are_not_deleted_alone_and_snapshot_ids_must_match(driver, kube, etcd_cluster, volume,
                                                                         stubs):
    """Issue 9.7: DeleteSnapshot of a group's member is FAILED_PRECONDITION (the group stays
    whole and ready); Get/Delete of the group with snapshot_ids that are not its members are
    FAILED_PRECONDITION; empty snapshot_ids are accepted."""
    pb2, _ = stubs
    group, members = Sidecar(driver, pb2).create_group("members", [volume])
    gid = group.snapshot_handle
    (sid, _), = members.items()
    code, details = code_of(lambda: driver.controller.DeleteSnapshot(pb2.DeleteSnapshotRequest(snapshot_id=sid)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and gid in details, details
    g = driver.group.GetVolumeGroupSnapshot(pb2.GetVolumeGroupSnapshotRequest(group_snapshot_id=gid)).group_snapshot
    assert g.ready_to_use and [s.snapshot_id for s in g.snapshots] == [sid]
    assert driver.group.GetVolumeGroupSnapshot(pb2.GetVolumeGroupSnapshotRequest(
        group_snapshot_id=gid, snapshot_ids=[sid])).group_snapshot.ready_to_use
    for wrong in (["s-" + "0" * 32], [sid, "s-" + "1" * 32]):
        code, details = code_of(lambda: driver.group.GetVolumeGroupSnapshot(pb2.GetVolumeGroupSnapshotRequest(
            group_snapshot_id=gid, snapshot_ids=wrong)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "snapshot_ids" in details, details
        code, _ = code_of(lambda: driver.group.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(
            group_snapshot_id=gid, snapshot_ids=wrong)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert kube.get_object("jobs", NS, "etcdsnap-" + sid) is not None  # nothing was deleted
    driver.group.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid,
                                                                                snapshot_ids=[sid]))
    assert kube.objects("jobs", NS) == []
    assert [c for c in kube.objects("configmaps", META)
            if c["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "etcdsnap"] == []


def test_trial_restore_before_ready(driver, kube, etcd_cluster, volume, stubs):
    """trialRestore: true restores the file into a scratch emptyDir with etcdutl (which checks
    the SHA-256 etcd appended to it) before it is verified; an invalid value is refused."""
    pb2, _ = stubs
    code, details = code_of(lambda: driver.controller.CreateSnapshot(pb2.CreateSnapshotRequest(
        name="trial", source_volume_id=volume, parameters={"trialRestore": "yes"}), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "trialRestore" in details
    content = Sidecar(driver, pb2).create_snapshot("trial", volume, parameters={"trialRestore": "true"})
    assert content.ready and content.restore_size > 0
    obj = "etcdsnap-" + content.snapshot_handle
    init = kube.get_object("jobs", NS, obj)["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["save", "trial-restore"]
    assert "restored snapshot" in kube.job_logs(NS, obj)
