"""The chart's etcdsnap: the sidecar and the driver on one socket, the driver name everywhere,
handles, options, and RBAC held to least privilege (rendered by a real Helm engine, see
chart_render.py)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

import chart_crd_schemas
import config_schema

ROOT = Path(__file__).resolve().parents[2]

from chart_render import *  # noqa: E402,F401,F403 - fixtures, scenarios and render helpers


# ---------------------------------------------------------------------------------------------
# etcdsnap


def _snapshotter(objects):
    pod = one(objects, "Deployment", "etcdsnap")["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    return pod, by_name["etcdsnap"], by_name["csi-snapshotter"]


def test_etcdsnap_sidecar_speaks_group_snapshots_over_a_shared_socket(helm):
    objects = render(helm, SCENARIOS["everything"])
    pod, driver, sidecar = _snapshotter(objects)
    image, tag = sidecar["image"].rsplit(":", 1)
    assert image == "registry.k8s.io/sig-storage/csi-snapshotter"
    major, minor, _ = (int(x) for x in tag.lstrip("v").split("."))
    assert (major, minor) >= (8, 6), "VolumeGroupSnapshot v1 needs csi-snapshotter v8.6.0+"
    args = sidecar["args"]
    assert "--csi-address=/csi/csi.sock" in args
    assert "--leader-election" in args
    assert "--feature-gates=CSIVolumeGroupSnapshot=true" in args
    (socket_volume,) = [v for v in pod["volumes"] if v["name"] == "socket-dir"]
    assert "emptyDir" in socket_volume
    for c in (driver, sidecar):
        assert {"name": "socket-dir", "mountPath": "/csi"} in c["volumeMounts"]
    env = env_of(driver)
    assert env["CSI_ENDPOINT"]["value"] == "unix:///csi/csi.sock"
    assert env["METADATA_NAMESPACE"]["value"] == NAMESPACE
    assert env["CLUSTER_LABEL"]["value"] == "etcd.io/cluster"
    assert "STORAGE_CLASS" not in env and "ETCD_IMAGE" not in env
    assert driver["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["automountServiceAccountToken"] is True


def handle_annotations(handle):
    """The PVC annotations etcdsnap's discovery reads (etcdsnap/discovery.rs), from a handle's values."""
    out = {}
    if handle.get("endpoints"):
        out["etcd.io/endpoints"] = ",".join(handle["endpoints"])
    if handle.get("service"):
        out["etcd.io/service"] = handle["service"]
    if handle.get("clientTLSSecret"):
        out["etcd.io/client-tls-secret"] = handle["clientTLSSecret"]
    if handle.get("authSecret"):
        out["etcd.io/auth-secret"] = handle["authSecret"]
    return {**out, **handle.get("annotations", {})}


def test_etcdsnap_driver_name_is_the_same_everywhere_and_handles_are_bound(helm):
    for scenario_name in ("everything", "etcdsnap-only"):
        values = SCENARIOS[scenario_name]
        objects = render(helm, values)
        snap = values["etcdsnap"]
        _, driver, _ = _snapshotter(objects)
        name = env_of(driver)["DRIVER_NAME"]["value"]
        assert name == snap.get("driverName", "etcdsnap.lifeboat.dev")
        csidrivers = by_kind(objects, "CSIDriver")
        if snap.get("csiDriver", {}).get("create", True):
            assert [d["metadata"]["name"] for d in csidrivers] == [name]
            assert csidrivers[0]["spec"]["attachRequired"] is False
        else:
            assert not csidrivers
        assert one(objects, "VolumeSnapshotClass")["driver"] == name
        vgsc = one(objects, "VolumeGroupSnapshotClass")
        assert vgsc["driver"] == name
        assert vgsc["apiVersion"] == snap.get("volumeGroupSnapshotClass", {}).get(
            "apiVersion", "groupsnapshot.storage.k8s.io/v1")
        label = snap.get("clusterLabel", "etcd.io/cluster")
        pvs = {pv["metadata"]["name"]: pv for pv in by_kind(objects, "PersistentVolume")}
        pvcs = by_kind(objects, "PersistentVolumeClaim")
        assert len(pvs) == len(pvcs) == len(snap["handles"])
        for handle, pvc in zip(snap["handles"], pvcs):
            ns = handle.get("namespace", NAMESPACE)
            assert pvc["metadata"]["namespace"] == ns
            assert pvc["metadata"]["labels"][label] == handle["cluster"]
            assert pvc["metadata"].get("annotations", {}) == handle_annotations(handle)
            pv = pvs[pvc["spec"]["volumeName"]]
            assert pv["spec"]["csi"]["driver"] == name
            assert pv["spec"]["csi"]["volumeHandle"] == f"{ns}/{pvc['metadata']['name']}"
            assert pv["spec"]["claimRef"]["name"] == pvc["metadata"]["name"]
            assert pv["spec"]["claimRef"]["namespace"] == ns
            assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == "etcdsnap-handle"
            assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
            assert pv["metadata"]["labels"][label] == handle["cluster"]
            # a VolumeGroupSnapshot selecting the cluster label picks exactly this handle
            selected = [p for p in pvcs if p["metadata"]["namespace"] == ns and
                        selector_matches({"matchLabels": {label: handle["cluster"]}}, p["metadata"]["labels"])]
            assert selected == [pvc]


def test_etcdsnap_options_reach_the_objects(helm):
    objects = render(helm, SCENARIOS["etcdsnap-only"])
    _, driver, sidecar = _snapshotter(objects)
    env = env_of(driver)
    assert env["METADATA_NAMESPACE"]["value"] == "etcdsnap-meta"
    assert env["STORAGE_CLASS"]["value"] == "fast"
    assert env["ETCD_IMAGE"]["value"] == "registry.k8s.io/etcd:3.5.21-0"
    assert env["CLUSTER_LABEL"]["value"] == "example.com/etcd"
    assert "--worker-threads=4" in sidecar["args"]
    vsc = one(objects, "VolumeSnapshotClass")
    assert vsc["metadata"]["name"] == "etcd" and vsc["deletionPolicy"] == "Retain"
    assert vsc["metadata"]["annotations"] == {"snapshot.storage.kubernetes.io/is-default-class": "true"}
    vgsc = one(objects, "VolumeGroupSnapshotClass")
    assert vgsc["metadata"]["annotations"] == {"groupsnapshot.storage.kubernetes.io/is-default-class": "true"}


def test_etcdsnap_notes_example_snapshots_the_first_handle(helm):
    values = SCENARIOS["etcdsnap-only"]
    notes = render_raw(helm, values)["lifeboat/templates/NOTES.txt"]
    lines = notes.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "kubectl apply -f - <<EOT")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "EOT")
    body = lines[start + 1:end]
    indent = min(len(line) - len(line.lstrip()) for line in body if line.strip())
    vgs = yaml.safe_load("\n".join(line[indent:] for line in body))
    objects = render(helm, values)
    vgsc = one(objects, "VolumeGroupSnapshotClass")
    assert vgs["apiVersion"] == vgsc["apiVersion"] and vgs["kind"] == "VolumeGroupSnapshot"
    assert vgs["spec"]["volumeGroupSnapshotClassName"] == vgsc["metadata"]["name"]
    (pvc,) = by_kind(objects, "PersistentVolumeClaim")
    assert vgs["metadata"]["namespace"] == pvc["metadata"]["namespace"]
    assert selector_matches(vgs["spec"]["source"]["selector"], pvc["metadata"]["labels"])


def _rules_by_role(objects):
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o["rules"]
            for o in objects if o["kind"] in ("Role", "ClusterRole")}


# What the csi-snapshotter sidecar (v8.6.0) needs: kubernetes-csi/external-snapshotter's
# deploy/kubernetes/csi-snapshotter/rbac-csi-snapshotter.yaml (its code is not in this repository),
# without `create` on volumesnapshotcontents, which the sidecar stopped needing in v8.2.0 when
# creating group members moved to the snapshot-controller (CHANGELOG-8.2, PR 1171).
SIDECAR_CLUSTER_GRANTS = {
    ("", "events"): {"list", "watch", "create", "update", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotclasses"): {"get", "list", "watch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list", "watch", "update", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"update", "patch"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses"): {"get", "list", "watch"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents"): {"get", "list", "watch", "update", "patch"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status"): {"update", "patch"},
}
SIDECAR_LEADER_ELECTION = {("coordination.k8s.io", "leases"): {"get", "watch", "list", "delete", "update", "create"}}


def _grants(objects):
    """{namespace or "*": {(apiGroup, resource): verbs}} over every Role and ClusterRole."""
    grants = {}
    for (kind, ns, _), rules in _rules_by_role(objects).items():
        for rule in rules:
            for f in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[f], f"wildcard in {rule}"
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    scope = grants.setdefault("*" if kind == "ClusterRole" else ns, {})
                    scope.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


# What etcdsnap's driver calls on the Kubernetes API, (apiGroup, resource) -> verbs: the records
# (metadata.rs) are the only ConfigMaps, in the metadata namespace; everything else is per etcd
# cluster. Not read from the driver's code: test_kube_etcdsnap.py checks these against the
# requests the real apiserver's audit log recorded while the driver took a snapshot.
DRIVER_METADATA_CALLS = {("", "configmaps"): {"get", "list", "create", "update", "delete"}}
DRIVER_CLUSTER_CALLS = {
    ("", "persistentvolumeclaims"): {"get", "create", "delete"},
    ("batch", "jobs"): {"get", "create", "delete"},
    ("", "pods"): {"list"},
    ("", "pods/log"): {"get"},
    ("", "secrets"): {"get"},
    ("", "services"): {"get"},
    ("", "endpoints"): {"get"},
}


def _driver_needs():
    """(metadata namespace grants, etcd namespace grants) the driver needs."""
    return copy.deepcopy(DRIVER_METADATA_CALLS), copy.deepcopy(DRIVER_CLUSTER_CALLS)


def test_etcdsnap_rbac_is_least_privilege(helm):
    """Every grant is something a container of the etcdsnap pod calls, and every call is granted:
    etcdsnap's from the calls the apiserver recorded (DRIVER_*_CALLS), the sidecar's from upstream's list."""
    meta_needs, etcd_needs = _driver_needs()
    for scenario_name, expected_ns in (("everything", {"etcd", NAMESPACE}), ("etcdsnap-only", {"etcd-a", "etcd-b"})):
        objects = render(helm, SCENARIOS[scenario_name])
        grants = _grants(objects)
        meta_ns = SCENARIOS[scenario_name]["etcdsnap"].get("metadataNamespace", NAMESPACE)
        # cluster-wide: the sidecar's list, nothing for etcdsnap itself (the volume handle names
        # the PVC, so no PersistentVolume is ever read)
        assert grants["*"] == SIDECAR_CLUSTER_GRANTS
        # namespaced: exactly the etcd namespaces, the metadata namespace and the release namespace
        assert set(grants) - {"*"} == expected_ns | {meta_ns, NAMESPACE}
        for ns in expected_ns | {meta_ns, NAMESPACE}:
            wanted = {}
            for part in ((etcd_needs if ns in expected_ns else {}), (meta_needs if ns == meta_ns else {}),
                         (SIDECAR_LEADER_ELECTION if ns == NAMESPACE else {})):
                for key, verbs in part.items():
                    wanted.setdefault(key, set()).update(verbs)
            assert grants[ns] == wanted, f"namespace {ns}: granted {grants[ns]}, needed {wanted}"
        # every binding points at a rendered role and at the etcdsnap service account
        roles = _rules_by_role(objects)
        sa = one(objects, "ServiceAccount", "etcdsnap")["metadata"]["name"]
        assert one(objects, "Deployment", "etcdsnap")["spec"]["template"]["spec"]["serviceAccountName"] == sa
        bound = set()
        for binding in by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding"):
            role_kind = binding["roleRef"]["kind"]
            role_ns = binding["metadata"].get("namespace") if role_kind == "Role" else None
            assert role_kind in ("Role", "ClusterRole")
            assert (role_kind, role_ns, binding["roleRef"]["name"]) in roles, binding["metadata"]["name"]
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
            bound.add((role_kind, role_ns, binding["roleRef"]["name"]))
        assert bound == set(roles), "a role nobody is bound to"
        # the driver looks for its records where it may touch ConfigMaps (its default would be kube-system)
        _, driver, _ = _snapshotter(objects)
        assert [ns for ns, g in grants.items() if ("", "configmaps") in g] == [env_of(driver)["METADATA_NAMESPACE"]["value"]]
    # a handle outside etcdsnap.namespaces would be a cluster the driver cannot read
    with pytest.raises(helm.HelmRenderError, match="not in etcdsnap.namespaces"):
        render(helm, {"etcdsnap": {"enabled": True, "namespaces": ["etcd-a"],
                                   "handles": [{"cluster": "b", "namespace": "etcd-b"}]}})


def test_only_etcdsnap_gets_kubernetes_api_credentials(helm):
    objects = render(helm, SCENARIOS["everything"])
    for owner, pod in pod_specs(objects):
        component = owner["metadata"]["labels"]["app.kubernetes.io/component"]
        assert pod["spec"]["automountServiceAccountToken"] is (component == "etcdsnap"), component
    for sa in by_kind(objects, "ServiceAccount"):
        component = sa["metadata"]["labels"]["app.kubernetes.io/component"]
        assert sa.get("automountServiceAccountToken", True) is (component == "etcdsnap")
