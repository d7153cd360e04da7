"""The chart against the real kube-apiserver 1.20: every rendered object of a kind 1.20 serves
is created with server-side dry run (admission, defaulting and the apiserver's own validation
run; nothing is stored); the kinds 1.20 does not serve are named here and stay covered by
schema validation against 1.33+ in test_chart.py. 1.20 drops unknown fields silently, so the dry
run proves semantics, not the absence of fields it does not know."""

from __future__ import annotations

import copy

import pytest
import yaml

from kube_control_plane import KubeError

# Kinds the chart renders that 1.20 lacks (newer API versions, or CRDs of cert-manager and the
# CSI snapshotter, which this test cluster does not install).
UNSERVED_ON_1_20 = {
    "batch/v1 CronJob",  # batch/v1beta1 only
    "policy/v1 PodDisruptionBudget",  # policy/v1beta1 only
    "cert-manager.io/v1 Certificate", "cert-manager.io/v1 Issuer",  # CRDs
    "snapshot.storage.k8s.io/v1 VolumeSnapshotClass",  # CRD
    "groupsnapshot.storage.k8s.io/v1 VolumeGroupSnapshotClass",  # CRD
    "groupsnapshot.storage.k8s.io/v1beta1 VolumeGroupSnapshotClass",  # CRD
    "groupsnapshot.storage.k8s.io/v1beta2 VolumeGroupSnapshotClass",  # CRD
    "monitoring.coreos.com/v1 ServiceMonitor", "monitoring.coreos.com/v1 PrometheusRule",  # CRDs
}


def without_fields_newer_than_1_20(obj):
    """The object less the fields the chart uses that 1.20 does not know, each named here (they
    stay covered by the 1.33+ schema in test_chart.py). 1.20 would drop them silently and then
    judge what is left: a preStop hook whose only handler is `sleep` (1.29+) has none left."""
    obj = copy.deepcopy(obj)
    pod = (obj.get("spec", {}).get("template", {}) or {}).get("spec", {})
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        pre_stop = c.get("lifecycle", {}).get("preStop", {})
        if "sleep" in pre_stop:
            del pre_stop["sleep"]
            if not pre_stop:
                del c["lifecycle"]["preStop"]
            if not c["lifecycle"]:
                del c["lifecycle"]
    return obj


def render(values, ns):
    import helm_python

    from chart_render import CHART

    with helm_python.Chart.load(str(CHART)) as chart:
        files = chart.render(copy.deepcopy(values), name="rel", namespace=ns, is_install=True)
    return [d for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def discovery(admin, api_version):
    path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    status, body = admin.request("GET", path)
    return {r["kind"]: r for r in body["resources"] if "/" not in r["name"]} if status == 200 else {}


def scenarios():
    from chart_render import SCENARIOS

    return sorted(s for s in SCENARIOS if s != "nothing")  # "nothing" renders no object


@pytest.mark.parametrize("scenario", scenarios())
def test_every_rendered_object_passes_a_server_side_dry_run_where_1_20_serves_its_kind(kube_plane, kube_ns, scenario):
    from chart_render import SCENARIOS

    admin = kube_plane.admin
    objects = render(SCENARIOS[scenario], kube_ns)
    assert objects
    # Namespaces the values name besides the release's (kept for the session: scenarios share them).
    for ns in sorted({o["metadata"]["namespace"] for o in objects if o["metadata"].get("namespace")} - {kube_ns}):
        status, _ = admin.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                                   "metadata": {"name": ns}})
        assert status in (201, 409), ns
    unserved, failures, served = set(), [], 0
    cache = {}
    for o in objects:
        kinds = cache.setdefault(o["apiVersion"], discovery(admin, o["apiVersion"]))
        r = kinds.get(o["kind"])
        if r is None:
            unserved.add(f"{o['apiVersion']} {o['kind']}")
            continue
        base = f"/api/{o['apiVersion']}" if "/" not in o["apiVersion"] else f"/apis/{o['apiVersion']}"
        if r["namespaced"]:
            base += f"/namespaces/{o['metadata'].get('namespace', kube_ns)}"
        try:
            out = admin.create(f"{base}/{r['name']}?dryRun=All", without_fields_newer_than_1_20(o))
            assert out["kind"] == o["kind"]
            served += 1
        except KubeError as e:
            failures.append(f"{o['kind']} {o['metadata']['name']}: {e}")
    assert failures == [], failures
    assert served > 0
    assert unserved <= UNSERVED_ON_1_20, f"kinds 1.20 does not serve that this test does not name: {unserved - UNSERVED_ON_1_20}"
