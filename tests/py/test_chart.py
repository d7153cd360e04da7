"""The Helm chart, rendered by a real Helm engine and checked against real Kubernetes schemas.

Rendering uses helm-python-sdk, which embeds Helm v4's own Go engine (template functions,
values coalescing, values.schema.json validation, lint): the same code `helm template` runs.
Every rendered object is validated strictly (unknown fields fail) against the OpenAPI schemas
of the oldest and the newest Kubernetes we support (kubernetes-validate); the custom resources
(cert-manager, CSI snapshot classes) against the structural schemas in chart_crd_schemas.py.
On top of that: security properties of every workload, labels, no "null" strings, component
toggles, and the wiring between objects (webhook -> Service -> pods, CA chain, CSI names, RBAC).

Nothing here is skipped: without the renderer or the validator the tests fail and say why.

This file: every object in every scenario, the values schema and the component toggles, and
Helm's own lint. Per component: test_chart_s3sync.py, test_chart_hook.py,
test_chart_etcdsnap.py; the chart against the binaries' contracts: test_chart_contract.py.
"""

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
# Every object, every scenario


def test_every_object_is_valid_for_oldest_and_newest_kubernetes(scenario, kv):
    name, objects = scenario
    assert objects or name == "nothing"
    for obj in objects:
        body = strip(obj)
        key = (body["apiVersion"], body["kind"])
        where = f"{obj['_template']}: {key[1]} {body['metadata'].get('name')}"
        if key in chart_crd_schemas.SCHEMAS:
            try:
                jsonschema.validate(body, chart_crd_schemas.SCHEMAS[key])
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.absolute_path)}")
            continue
        for version in KUBE_VERSIONS:
            try:
                kv.validate(body, version, strict=True)
            except kv.SchemaNotFoundError:
                pytest.fail(f"{where}: no Kubernetes {version} schema and no CRD schema for {key}")
            except kv.ValidationError as exc:
                pytest.fail(f"{where}: invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_every_workload_runs_restricted(scenario):
    _, objects = scenario
    for owner, pod in pod_specs(objects):
        where = f"{owner['kind']} {owner['metadata']['name']}"
        spec = pod["spec"]
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, where
        assert psc.get("runAsUser") == 65532, where
        assert psc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), f"{where}: {forbidden}"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"
        for c in containers(pod):
            sc = c.get("securityContext", {})
            cw = f"{where} container {c['name']}"
            assert sc.get("runAsNonRoot") is True, cw
            assert sc.get("allowPrivilegeEscalation") is False, cw
            assert sc.get("readOnlyRootFilesystem") is True, cw
            assert sc.get("privileged") in (None, False), cw
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], cw
            assert not sc.get("capabilities", {}).get("add"), cw
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", cw
            res = c.get("resources", {})
            assert res.get("requests", {}).get("memory") and res.get("requests", {}).get("cpu"), cw
            assert res.get("limits", {}).get("memory"), cw
            for port in c.get("ports", []):
                assert "hostPort" not in port, cw


def test_long_running_containers_have_probes(scenario):
    _, objects = scenario
    for owner, pod in pod_specs(objects):
        if owner["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue  # s3sync is a run-to-completion Job with no server to probe
        for c in pod["spec"]["containers"]:
            assert "livenessProbe" in c, f"{owner['metadata']['name']}/{c['name']}: no livenessProbe"
            if c["name"] != "csi-snapshotter":  # the sidecar serves no traffic
                assert "readinessProbe" in c, f"{owner['metadata']['name']}/{c['name']}: no readinessProbe"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c and "httpGet" in c[probe]:
                    port = c[probe]["httpGet"]["port"]
                    names = {p["name"] for p in c.get("ports", [])}
                    numbers = {p["containerPort"] for p in c.get("ports", [])}
                    assert port in names or port in numbers, f"{c['name']} {probe} port {port} not declared"


def test_recommended_labels_everywhere(scenario):
    _, objects = scenario
    wanted = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
              "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"}
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert wanted <= set(labels), f"{obj['kind']} {obj['metadata']['name']}: missing {wanted - set(labels)}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
    for owner, pod in pod_specs(objects):
        labels = pod["metadata"]["labels"]
        assert wanted <= set(labels), f"pods of {owner['metadata']['name']}"
        if "selector" in owner["spec"]:
            assert selector_matches(owner["spec"]["selector"], labels), owner["metadata"]["name"]


def _strings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    else:
        yield path, node


def test_no_null_or_placeholder_strings(scenario):
    _, objects = scenario
    for obj in objects:
        for path, value in _strings(strip(obj)):
            assert value is not None, f"{obj['kind']} {obj['metadata']['name']}{path} is null"
            if isinstance(value, str):
                assert value.strip() not in ("null", "<nil>", "<no value>", "nil"), \
                    f"{obj['kind']} {obj['metadata']['name']}{path} = {value!r}"
    for _, pod in pod_specs(objects):
        for c in containers(pod):
            for e in c.get("env", []):
                assert ("value" in e) != ("valueFrom" in e), e
                if "value" in e:
                    assert isinstance(e["value"], str) and e["value"] != "", f"{c['name']}: {e}"


def test_names_are_unique_per_kind_and_namespace(scenario):
    _, objects = scenario
    seen = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


def test_two_releases_of_one_name_in_two_namespaces_share_no_cluster_scoped_name(helm):
    """Cluster-scoped objects (classes, cluster roles and bindings, the webhook) carry the
    release namespace: a second release of the same name elsewhere does not overwrite them."""
    def cluster_scoped(namespace, driver):
        values = {"etcdsnap": {"enabled": True, "driverName": driver, "handles": [{"cluster": "main"}]}}
        return {(o["kind"], o["metadata"]["name"]) for o in render(helm, values, namespace)
                if "namespace" not in o["metadata"]}
    a, b = cluster_scoped("team-a", "etcdsnap.a.example"), cluster_scoped("team-b", "etcdsnap.b.example")
    kinds = {kind for kind, _ in a}
    assert {"VolumeSnapshotClass", "VolumeGroupSnapshotClass", "ClusterRole", "ClusterRoleBinding",
            "MutatingWebhookConfiguration", "CSIDriver", "PersistentVolume"} <= kinds
    assert not a & b, sorted(a & b)


# ---------------------------------------------------------------------------------------------
# Values: schema, toggles


@pytest.mark.parametrize("values, complaint", [
    ({"hook": {"replica": 3}}, "replica"),
    ({"hooks": {"enabled": False}}, "hooks"),
    ({"hook": {"webhook": {"failurePolicy": "fail"}}}, "failurePolicy"),
    ({"hook": {"tls": {"mode": "secret"}}}, "secretName"),
    ({"s3sync": {"enabled": True}}, "endpoint"),
    ({"s3sync": {**S3_ON, "source": {**S3_ON["source"], "endpoint": "s3.example.com"}}}, "endpoint"),
    ({"s3sync": {**S3_ON, "source": {**S3_ON["source"], "secretKey": ""}}}, "secretKey"),
    ({"s3sync": {**S3_ON, "extraEnv": {"SOURCE_PREFIX": 5}}}, "SOURCE_PREFIX"),
    ({"s3sync": {**S3_ON, "extraEnv": {"bad name": "x"}}}, "bad name"),
    ({"s3sync": {**S3_ON, "maxDelete": -1}}, "maxDelete"),
    ({"s3sync": {**S3_ON, "maxDelete": "lots"}}, "maxDelete"),
    ({"s3sync": {**S3_ON, "maxDeletePercent": 101}}, "maxDeletePercent"),
    ({"s3sync": {**S3_ON, "logLevel": "verbose"}}, "logLevel"),
    ({"etcdsnap": {"enabled": True, "driverName": "has space"}}, "driverName"),
    ({"etcdsnap": {"handles": [{"namespace": "x"}]}}, "cluster"),
    ({"etcdsnap": {"handles": [{"cluster": "a", "endpoints": ["http://a-0.a:2379"]}]}}, "http://a-0.a:2379"),
    ({"etcdsnap": {"extraEnv": {"JOB_TIMEOUTS": "10m"}}}, "JOB_TIMEOUTS"),
    ({"hook": {"extraEnv": {"POD_NAMESPACE": "x"}}}, "POD_NAMESPACE"),
    ({"s3sync": {**S3_ON, "extraEnv": {"SOURCE_ENDPOINT": "https://x"}}}, "SOURCE_ENDPOINT"),
    ({"etcdsnap": {"volumeGroupSnapshotClass": {"apiVersion": "groupsnapshot.storage.k8s.io/v1alpha1"}}}, "apiVersion"),
    ({"etcdsnap": {"snapshotter": {"image": {"digest": "sha256:short"}}}}, "digest"),
    # holes found in review: each was accepted before
    ({"s3sync": {**S3_ON, "schedule": "not a cron"}}, "schedule"),
    ({"s3sync": {**S3_ON, "schedule": "0 * * *"}}, "schedule"),
    ({"etcdsnap": {"driverName": "Etcd_Snap.Example"}}, "driverName"),
    ({"etcdsnap": {"driverName": "a" * 64}}, "driverName"),
    ({"hook": {"resources": {"limits": {"memroy": "256Mi"}}}}, "memroy"),
    ({"hook": {"resources": {"limit": {"memory": "256Mi"}}}}, "limit"),
    ({"hook": {"resources": {"limits": None}}}, "limits"),
    ({"s3sync": {**S3_ON, "resources": {"limits": {"memory": None}}}}, "memory"),
    ({"hook": {"pdb": {"minAvailable": "100%"}}}, "minAvailable"),
    ({"commonLabels": {"bad key!": "x"}}, "bad key!"),
    ({"hook": {"podLabels": {"team": "has space"}}}, "has space"),
    ({"s3sync": {**S3_ON, "existingSecret": "Bad_Name"}}, "existingSecret"),
    ({"hook": {"tls": {"mode": "secret", "secretName": "UPPER", "caBundle": "eA=="}}}, "secretName"),
    ({"etcdsnap": {"volumeSnapshotClass": {"name": "a/b"}}}, "name"),
    ({"hook": {"port": 8080}}, "port"),
    ({"hook": {"drain": {"preStopSleepSeconds": -1, "shutdownTimeoutSeconds": 25}}}, "preStopSleepSeconds"),
])
def test_schema_rejects_mistakes_with_a_message_naming_them(helm, values, complaint):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(values)
        assert complaint in str(err.value)
        # render (what `helm install` does) refuses them too
        with pytest.raises(helm.HelmError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("values", [
    {"s3sync": {**S3_ON, "schedule": "@hourly"}},
    {"s3sync": {**S3_ON, "schedule": "@daily"}},
    {"s3sync": {**S3_ON, "schedule": "*/5 1-3 * JAN,FEB mon-fri"}},
    {"etcdsnap": {"enabled": True, "driverName": "etcdsnap.v2"}},
    {"etcdsnap": {"enabled": True, "driverName": "etcdsnap"}},
    {"hook": {"pdb": {"minAvailable": "50%"}}},
    {"hook": {"resources": {"requests": {"cpu": "1", "memory": "64Mi", "ephemeral-storage": "1Gi"},
                            "limits": {"memory": "128Mi", "example.com/gpu": 1}}}},
    {"commonLabels": {"example.com/team": "platform", "tier": ""}},
    {"etcdsnap": {"enabled": True, "snapshotter": {"extraArgs": ["--worker-threads=4", "--kube-api-qps=20"]}}},
])
def test_schema_accepts_what_kubernetes_accepts(helm, values):
    """The tightened rules refuse mistakes, not valid settings (each of these was refused or is new)."""
    objects = render(helm, values)
    assert objects


def test_hook_pdb_must_leave_room_for_a_drain(helm):
    with pytest.raises(helm.HelmRenderError, match="hook.pdb.minAvailable"):
        render(helm, {"hook": {"replicas": 1}})
    # a single replica is allowed without a PDB
    assert not by_kind(render(helm, {"hook": {"replicas": 1, "pdb": {"enabled": False}}}), "PodDisruptionBudget")


@pytest.mark.parametrize("arg", ["--csi-address=/tmp/other.sock", "--timeout=5s", "--leader-election=false",
                                 "--http-endpoint", "--feature-gates=CSIVolumeGroupSnapshot=false"])
def test_snapshotter_extra_args_cannot_repeat_the_charts_own_flags(helm, arg):
    flag = arg.split("=")[0]
    with pytest.raises(helm.HelmRenderError, match=f"etcdsnap.snapshotter.extraArgs: {flag} is set by the chart"):
        render(helm, {"etcdsnap": {"enabled": True, "snapshotter": {"extraArgs": ["--worker-threads=2", arg]}}})


def test_extra_env_cannot_override_chart_managed_variables(helm):
    with pytest.raises(helm.HelmRenderError, match="s3sync.extraEnv.MAX_DELETE"):
        render(helm, {"s3sync": {**S3_ON, "extraEnv": {"MAX_DELETE": "0"}}})
    with pytest.raises(helm.HelmRenderError, match="hook.extraEnv.TLS_KEY_FILE"):
        render(helm, {"hook": {"extraEnv": {"TLS_KEY_FILE": "/etc/passwd"}}})


COMPONENT_KINDS = {
    "s3sync": {"CronJob", "Secret", "ServiceAccount"},
    "hook": {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "MutatingWebhookConfiguration",
             "Issuer", "Certificate"},
    "etcdsnap": {"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                 "RoleBinding", "CSIDriver", "VolumeSnapshotClass", "VolumeGroupSnapshotClass",
                 "PersistentVolume", "PersistentVolumeClaim"},
}


@pytest.mark.parametrize("s3, hook, snap", [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)])
def test_each_component_switches_on_and_off_alone(helm, s3, hook, snap):
    values = {"s3sync": {**S3_ON, "enabled": bool(s3)}, "hook": {"enabled": bool(hook)},
              "etcdsnap": {"enabled": bool(snap), "handles": [{"cluster": "main"}]}}
    objects = render(helm, values)
    present = {}
    for obj in objects:
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        present.setdefault(component, set()).add(obj["kind"])
    expected = {name: kinds for name, kinds, on in
                (("s3sync", COMPONENT_KINDS["s3sync"], s3), ("hook", COMPONENT_KINDS["hook"], hook),
                 ("etcdsnap", COMPONENT_KINDS["etcdsnap"], snap)) if on}
    assert present == expected
    notes = render_raw(helm, values)["lifeboat/templates/NOTES.txt"]
    for name, on in (("s3sync", s3), ("hook", hook), ("etcdsnap", snap)):
        assert (f"{name}: off" in notes) != bool(on), notes


def test_defaults_install_only_the_hook(helm):
    objects = render(helm, None)
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects} == {"hook"}


# ---------------------------------------------------------------------------------------------
# Helm's own checks, and the image side


@pytest.mark.parametrize("scenario_name", ["defaults", "everything", "etcdsnap-only", "hook-own-tls-variant",
                                           "monitoring"])
@pytest.mark.parametrize("kube", [f"v{v}.0" for v in KUBE_VERSIONS])
def test_helm_lint_strict_is_clean(helm, scenario_name, kube):
    report = helm.lint(str(CHART), copy.deepcopy(SCENARIOS[scenario_name]), strict=True, kube_version=kube)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_chart_yaml_and_values_yaml_are_well_formed(helm):
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "lifeboat"
    assert meta["kubeVersion"] == f">={KUBE_VERSIONS[0]}.0-0"
    assert meta["home"].startswith("https://") and meta["sources"] and meta["icon"].endswith("/chart/icon.svg")
    assert (CHART / "icon.svg").read_text().startswith("<svg")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.values == values
        assert chart.metadata["version"] == meta["version"]
        chart.validate_schema(values)
