"""The Helm chart, rendered by a real Helm engine and checked against real Kubernetes schemas.

Rendering uses helm-python-sdk, which embeds Helm v4's own Go engine (template functions,
values coalescing, values.schema.json validation, lint): the same code `helm template` runs.
Every rendered object is validated strictly (unknown fields fail) against the OpenAPI schemas
of the oldest and the newest Kubernetes we support (kubernetes-validate); the custom resources
(cert-manager, CSI snapshot classes) against the structural schemas in chart_crd_schemas.py.
On top of that: security properties of every workload, labels, no "null" strings, component
toggles, and the wiring between objects (webhook -> Service -> pods, CA chain, CSI names, RBAC).

Nothing here is skipped: without the renderer or the validator the tests fail and say why.
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
CHART = ROOT / "chart"
RELEASE = "rel"
NAMESPACE = "lifeboat"
# The oldest and newest Kubernetes minor versions the chart supports (Chart.yaml kubeVersion).
KUBE_VERSIONS = ("1.33", "1.37")

try:
    import helm_python
except ImportError as exc:  # pragma: no cover - the failure is the point
    helm_python = None
    HELM_IMPORT_ERROR = exc
try:
    import kubernetes_validate
except ImportError as exc:  # pragma: no cover
    kubernetes_validate = None
    KV_IMPORT_ERROR = exc


@pytest.fixture(scope="session")
def helm():
    if helm_python is None:
        pytest.fail(
            "helm-python-sdk (a real Helm v4 engine) is not importable: "
            f"{HELM_IMPORT_ERROR}. Install tests/requirements.txt (bash tests/tools.sh).",
            pytrace=False,
        )
    return helm_python


@pytest.fixture(scope="session")
def kv():
    if kubernetes_validate is None:
        pytest.fail(f"kubernetes-validate is not importable: {KV_IMPORT_ERROR}", pytrace=False)
    return kubernetes_validate


# ---------------------------------------------------------------------------------------------
# Values scenarios

S3_ON = {
    "enabled": True,
    "source": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "bucket": "prod-data",
               "accessKey": "AKIASOURCE", "secretKey": "source-secret"},
    "destination": {"endpoint": "https://backup.example.net:9000", "bucket": "prod-data-copy", "prefix": "/",
                    "accessKey": "AKIADEST", "secretKey": "dest-secret"},
}

SCENARIOS = {
    "defaults": None,
    "everything": {
        "s3sync": {**S3_ON, "extraEnv": {"SOURCE_PREFIX": "db/", "DEST_REGION": "", "BANDWIDTH_LIMIT": "10M",
                                         "MAX_DURATION": "50m", "COMPARE": "size", "HTTPS_PROXY": "http://proxy:3128"}},
        "hook": {"extraEnv": {"NATIVE_SIDECAR": "false", "WORKERS": "8", "DEFAULT_RETENTION": "72h",
                              "DEFAULT_SYNC_INTERVAL": "2s"},
                 "drain": {"preStopSleepSeconds": 5, "shutdownTimeoutSeconds": 20}},
        "etcdsnap": {"enabled": True, "extraEnv": {"JOB_TIMEOUT": "15m", "GRPC_THREADS": "8"}, "handles": [
            {"cluster": "main", "namespace": "etcd", "clientTLSSecret": "main-client-tls",
             "endpoints": ["https://main-0.main.etcd.svc:2379", "https://main-1.main.etcd.svc:2379"]},
            {"cluster": "events", "service": "etcd-events-client"}]},
    },
    "s3sync-existing-secret": {
        "hook": {"enabled": False},
        "s3sync": {"enabled": True, "existingSecret": "s3-keys", "dryRun": True, "maxDelete": 0,
                   "timeZone": "Europe/Berlin", "schedule": "*/15 * * * *",
                   "source": {"endpoint": "http://minio.storage:9000", "bucket": "a"},
                   "destination": {"endpoint": "http://minio.backup:9000", "bucket": "b", "prefix": "a"}},
    },
    "hook-own-tls-variant": {
        "imagePullSecrets": [{"name": "registry"}],
        "commonLabels": {"team": "platform"},
        "hook": {
            "variant": "blue", "replicas": 3, "litestreamImage": "litestream/litestream:0.5.2",
            "extraEnv": {"NATIVE_SIDECAR": "true"},
            "image": {"repository": "hook", "digest": "sha256:" + "a" * 64},
            "webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 3, "onlyAnnotatedPods": False,
                        "excludeNamespaces": ["monitoring", "kube-system"]},
            "tls": {"mode": "secret", "secretName": "hook-tls", "caBundle": "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0"},
            "pdb": {"enabled": False},
            "networkPolicy": {"enabled": True, "webhookFrom": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                              "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                                  "kubernetes.io/metadata.name": "monitoring"}}}]},
        },
    },
    "etcdsnap-only": {
        "hook": {"enabled": False},
        "etcdsnap": {
            "enabled": True, "driverName": "etcd.example.com", "metadataNamespace": "etcdsnap-meta",
            "snapshotStorageClass": "fast", "etcdImage": "registry.k8s.io/etcd:3.5.21-0", "namespaces": ["etcd-a", "etcd-b"], "clusterLabel": "example.com/etcd",
            "handles": [{"cluster": "a", "namespace": "etcd-a",
                         "annotations": {"etcdsnap.example.com/client-secret": "etcd-a-client"}}],
            "volumeSnapshotClass": {"isDefault": True, "deletionPolicy": "Retain", "name": "etcd"},
            "volumeGroupSnapshotClass": {"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2", "isDefault": True},
            "csiDriver": {"create": False},
            "snapshotter": {"extraArgs": ["--worker-threads=4"]},
        },
    },
    "nothing": {"hook": {"enabled": False}},
    "monitoring": {
        "s3sync": S3_ON, "etcdsnap": {"enabled": True, "handles": [{"cluster": "main"}]},
        "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                       "grafanaDashboard": {"enabled": True}},
    },
}


def render_raw(helm, values, namespace=NAMESPACE):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(copy.deepcopy(values))
        return chart.render(copy.deepcopy(values), name=RELEASE, namespace=namespace,
                            is_install=True)


def render(helm, values, namespace=NAMESPACE):
    """Rendered objects (dicts) of every template except NOTES.txt."""
    objects = []
    for path, text in sorted(render_raw(helm, values, namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                doc.setdefault("_template", path)  # removed before validation
                objects.append(doc)
    return objects


def strip(obj):
    return {k: v for k, v in obj.items() if k != "_template"}


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, component=None):
    found = [o for o in by_kind(objects, kind)
             if component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}"
    return found[0]


def pod_specs(objects):
    """(owner, pod template) of every workload."""
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield o, o["spec"]["template"]
        elif o["kind"] == "CronJob":
            yield o, o["spec"]["jobTemplate"]["spec"]["template"]
        elif o["kind"] == "Pod":
            yield o, o


def containers(pod_template):
    spec = pod_template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def selector_matches(selector, labels):
    """Kubernetes label selector semantics (matchLabels AND every matchExpression)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@pytest.fixture(scope="module", params=list(SCENARIOS))
def scenario(request, helm):
    return request.param, render(helm, SCENARIOS[request.param])


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
# s3sync

S3SYNC_ENV = {"SOURCE_S3_ENDPOINT", "SOURCE_ACCESS_KEY", "SOURCE_SECRET_KEY", "SOURCE_BUCKET",
              "DEST_S3_ENDPOINT", "DEST_ACCESS_KEY", "DEST_SECRET_KEY", "DEST_BUCKET",
              "DEST_PREFIX", "DRY_RUN", "MAX_DELETE", "MAX_DELETE_PERCENT", "RETRIES", "LOG_LEVEL"}
S3SYNC_SECRET_KEYS = {"SOURCE_ACCESS_KEY", "SOURCE_SECRET_KEY", "DEST_ACCESS_KEY", "DEST_SECRET_KEY"}


def test_s3sync_cronjob_shape_and_environment(helm):
    values = SCENARIOS["everything"]
    objects = render(helm, values)
    cron = one(objects, "CronJob", "s3sync")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedule"] == "17 * * * *"
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 3600 and job["backoffLimit"] == 1
    # Exit 2 (configuration) and 7 (refused before changing anything) are not retried.
    (fail, ignore) = job["podFailurePolicy"]["rules"]
    assert fail == {"action": "FailJob",
                    "onExitCodes": {"containerName": "s3sync", "operator": "In", "values": [2, 7]}}
    assert ignore["action"] == "Ignore" and ignore["onPodConditions"][0]["type"] == "DisruptionTarget"
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    env = env_of(container)
    # exactly the documented names, plus the non-empty extraEnv entries; the empty one is left out
    assert set(env) == S3SYNC_ENV | {"SOURCE_PREFIX", "BANDWIDTH_LIMIT", "MAX_DURATION", "COMPARE", "HTTPS_PROXY"}
    assert env["SOURCE_S3_ENDPOINT"]["value"] == S3_ON["source"]["endpoint"]
    assert env["DEST_BUCKET"]["value"] == "prod-data-copy"
    assert env["DRY_RUN"]["value"] == "false" and env["MAX_DELETE"]["value"] == "1000"
    assert env["RETRIES"]["value"] == "3" and env["LOG_LEVEL"]["value"] == "info"
    secret = one(objects, "Secret", "s3sync")
    assert set(secret["stringData"]) == S3SYNC_SECRET_KEYS
    assert secret["stringData"]["DEST_SECRET_KEY"] == "dest-secret"
    for name in S3SYNC_SECRET_KEYS:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": name}
    # secrets are never inline in the workload
    for secret_value in ("source-secret", "dest-secret", "AKIASOURCE", "AKIADEST"):
        assert secret_value not in yaml.safe_dump(strip(cron))


def test_s3sync_existing_secret_and_zero_values(helm):
    objects = render(helm, SCENARIOS["s3sync-existing-secret"])
    assert not by_kind(objects, "Secret")
    cron = one(objects, "CronJob", "s3sync")
    assert cron["spec"]["timeZone"] == "Europe/Berlin"
    env = env_of(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert set(env) == S3SYNC_ENV | {"MAX_DURATION"}
    for name in S3SYNC_SECRET_KEYS:
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "s3-keys", "key": name}
    # false and 0 are real values, rendered as such (not dropped, not "null")
    assert env["DRY_RUN"]["value"] == "true"
    assert env["MAX_DELETE"]["value"] == "0"


def test_s3sync_platform_credentials_for_irsa_and_pod_identity(helm):
    """credentials: platform leaves a side's keys out (s3sync and rclone then use the Pod's own
    credentials); the ServiceAccount carries the IRSA role annotation; the AWS_* variables of
    the credentials chain are accepted in extraEnv."""
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/backup"}
    values = {"s3sync": {**S3_ON, "serviceAccount": {"annotations": role},
                         "source": {**S3_ON["source"], "credentials": "platform"},
                         "extraEnv": {"AWS_REGION": "eu-west-1", "AWS_ROLE_SESSION_NAME": "lifeboat"}}}
    objects = render(helm, values)
    assert one(objects, "ServiceAccount", "s3sync")["metadata"]["annotations"] == role
    env = env_of(one(objects, "CronJob", "s3sync")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert "SOURCE_ACCESS_KEY" not in env and "SOURCE_SECRET_KEY" not in env
    assert env["DEST_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "DEST_SECRET_KEY"
    assert env["AWS_REGION"]["value"] == "eu-west-1"
    assert set(one(objects, "Secret", "s3sync")["stringData"]) == {"DEST_ACCESS_KEY", "DEST_SECRET_KEY"}
    # Both sides from the platform: no Secret at all, no keys needed in the values.
    both = {"s3sync": {"enabled": True,
                       "source": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "bucket": "a", "credentials": "platform"},
                       "destination": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "bucket": "b", "prefix": "/",
                                       "credentials": "platform"}}}
    objects = render(helm, both)
    assert not by_kind(objects, "Secret")
    env = env_of(one(objects, "CronJob", "s3sync")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert not {n for n in env if n.endswith(("_ACCESS_KEY", "_SECRET_KEY"))}
    with pytest.raises(helm.HelmError, match="credentials"):
        render(helm, {"s3sync": {**S3_ON, "source": {**S3_ON["source"], "credentials": "irsa"}}})
    # A side with keys still needs them.
    with pytest.raises(helm.HelmError, match="accessKey"):
        render(helm, {"s3sync": {**both["s3sync"], "source": {**both["s3sync"]["source"], "credentials": "keys"}}})


@pytest.mark.parametrize("deadline, grace", [(3600, 60), (600, 30), (120, 30)])
def test_s3sync_ends_an_overlong_run_itself_before_the_job_deadline(helm, deadline, grace):
    """MAX_DURATION (then STOP_GRACE, 20 s by default, to stop rclone) ends within
    activeDeadlineSeconds minus the Pod's grace: the run always logs its summary and exits 10
    instead of being killed by the Job controller without one."""
    values = {"s3sync": {**S3_ON, "activeDeadlineSeconds": deadline, "terminationGracePeriodSeconds": grace}}
    cron = one(render(helm, values), "CronJob", "s3sync")
    env = env_of(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    max_duration = int(env["MAX_DURATION"]["value"].removesuffix("s"))
    assert max_duration + 20 + grace <= deadline
    assert max_duration >= 60
    # too short a deadline to leave room is refused, naming both values
    with pytest.raises(helm.HelmRenderError, match="activeDeadlineSeconds.*terminationGracePeriodSeconds"):
        render(helm, {"s3sync": {**S3_ON, "activeDeadlineSeconds": grace + 60, "terminationGracePeriodSeconds": grace}})
    # a MAX_DURATION of the user's own is kept
    values["s3sync"]["extraEnv"] = {"MAX_DURATION": "5m"}
    cron = one(render(helm, values), "CronJob", "s3sync")
    env = env_of(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert env["MAX_DURATION"]["value"] == "5m"


def test_s3sync_unlimited_deletions_and_a_ca_bundle_volume(helm):
    ca = {"name": "ca", "configMap": {"name": "s3-ca"}}
    mount = {"name": "ca", "mountPath": "/etc/s3sync-ca", "readOnly": True}
    values = {"s3sync": {**S3_ON, "maxDelete": "unlimited", "maxDeletePercent": 100,
                         "extraVolumes": [ca], "extraVolumeMounts": [mount],
                         "extraEnv": {"SSL_CERT_FILE": "/etc/s3sync-ca/ca.crt"}}}
    objects = render(helm, values)
    pod = one(objects, "CronJob", "s3sync")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert env["MAX_DELETE"]["value"] == "unlimited" and env["MAX_DELETE_PERCENT"]["value"] == "100"
    assert env["SSL_CERT_FILE"]["value"] == "/etc/s3sync-ca/ca.crt"
    assert ca in pod["volumes"] and mount in container["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


# ---------------------------------------------------------------------------------------------
# hook


def test_hook_webhook_reaches_the_pods_over_the_service(helm):
    objects = render(helm, None)
    mwc = one(objects, "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    assert hook["name"] == "inject.litestream-hook.kaidotio.github.io"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 5
    assert hook["reinvocationPolicy"] == "Never"
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    ref = hook["clientConfig"]["service"]
    assert ref["path"] == "/mutate" and ref["port"] == 443 and ref["namespace"] == NAMESPACE
    service = one(objects, "Service", "hook")
    assert service["metadata"]["name"] == ref["name"]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == 443]
    deployment = one(objects, "Deployment", "hook")
    pod = deployment["spec"]["template"]
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    target = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert target and target[0]["containerPort"] == 9443
    assert {p["containerPort"] for p in container["ports"]} == {9443, 8080}
    env = env_of(container)
    assert env["LISTEN_ADDR"]["value"].endswith(":9443") and env["METRICS_ADDR"]["value"].endswith(":8080")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # TLS files live inside the mounted Secret volume
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE"):
        assert env[name]["value"].startswith(mount["mountPath"].rstrip("/") + "/")
    assert env["HOOK_IMAGE"]["value"] == container["image"]
    # the root filesystem is read-only: the hook's private socket goes to an emptyDir
    writable = {v["name"] for v in pod["spec"]["volumes"] if "emptyDir" in v}
    assert any(m["mountPath"] == env["SOCKET_DIR"]["value"] and m["name"] in writable
               for m in container["volumeMounts"])
    assert deployment["spec"]["replicas"] == 2
    pdb = one(objects, "PodDisruptionBudget", "hook")
    assert pdb["spec"]["minAvailable"] == 1
    assert selector_matches(pdb["spec"]["selector"], pod["metadata"]["labels"])


def test_hook_reinvocation_is_a_choice(helm):
    """IfNeeded lets the hook give containers added by later webhooks the database mounts."""
    (hook,) = one(render(helm, {"hook": {"webhook": {"reinvocationPolicy": "IfNeeded"}}}),
                  "MutatingWebhookConfiguration")["webhooks"]
    assert hook["reinvocationPolicy"] == "IfNeeded"
    with pytest.raises(Exception, match="reinvocationPolicy"):
        render(helm, {"hook": {"webhook": {"reinvocationPolicy": "Always"}}})


def test_hook_never_intercepts_its_own_pods_or_kube_system(helm):
    values = SCENARIOS["everything"]
    objects = render(helm, values)
    (hook,) = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    # the hook's own pods are never selected (it cannot wait for itself to start) ...
    hook_pod = one(objects, "Deployment", "hook")["spec"]["template"]
    assert not selector_matches(hook["objectSelector"], hook_pod["metadata"]["labels"])
    # ... but a pod of another application installed under the same release name is (it was
    # exempted silently when the selector keyed on app.kubernetes.io/instance)
    assert selector_matches(hook["objectSelector"], {"app": "shop", "app.kubernetes.io/instance": RELEASE})
    assert selector_matches(hook["objectSelector"], {"app": "shop", "app.kubernetes.io/instance": "shop"})
    assert selector_matches(hook["objectSelector"], {})
    ns = lambda name: {"kubernetes.io/metadata.name": name}  # noqa: E731 - the label the API server sets
    assert not selector_matches(hook["namespaceSelector"], ns("kube-system"))
    assert selector_matches(hook["namespaceSelector"], ns("default"))
    assert hook["matchConditions"] == [{
        "name": "has-inject-annotation",
        "expression": "has(object.metadata.annotations) && "
                      "'litestream-hook.kaidotio.github.io/inject' in object.metadata.annotations"}]


def _hook_pod(objects):
    return one(objects, "Deployment", "hook")["spec"]["template"]["spec"]


@pytest.mark.parametrize("drain", [None, {"preStopSleepSeconds": 20, "shutdownTimeoutSeconds": 40}])
def test_hook_keeps_serving_while_endpoints_update_then_drains(helm, drain):
    """Rollouts never refuse Pods: a terminating replica first sleeps (the API servers still dial
    it), then gets SIGTERM and finishes in-flight requests within SHUTDOWN_TIMEOUT, all inside
    the grace period, so the kubelet never SIGKILLs a request."""
    objects = render(helm, {"hook": {"drain": drain}} if drain else None)
    pod = _hook_pod(objects)
    (container,) = pod["containers"]
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    shutdown = {e["name"]: e["value"] for e in container["env"]}["SHUTDOWN_TIMEOUT"]
    assert re.fullmatch(r"\d+s", shutdown)
    assert sleep >= 5
    assert pod["terminationGracePeriodSeconds"] >= sleep + int(shutdown[:-1]) + 5
    if drain:
        assert (sleep, shutdown) == (20, "40s")
    # no sleep asked for: no preStop hook at all (not a zero-second one)
    pod = _hook_pod(render(helm, {"hook": {"drain": {"preStopSleepSeconds": 0, "shutdownTimeoutSeconds": 25}}}))
    assert "lifecycle" not in pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] == 30


def test_hook_network_policy_admits_only_the_webhook_and_metrics_ports(helm):
    objects = render(helm, SCENARIOS["hook-own-tls-variant"])
    (policy,) = by_kind(objects, "NetworkPolicy")
    pod = one(objects, "Deployment", "hook")["spec"]["template"]
    assert selector_matches(policy["spec"]["podSelector"], pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["egress"] == []
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    (webhook, metrics) = policy["spec"]["ingress"]
    assert [p["port"] for p in webhook["ports"]] == ["webhook"] and webhook["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    assert [p["port"] for p in metrics["ports"]] == ["metrics"] and metrics["from"][0]["namespaceSelector"]
    assert {"webhook", "metrics"} <= ports
    assert not by_kind(render(helm, None), "NetworkPolicy")


def test_hook_on_the_host_network_listens_on_its_own_port(helm):
    objects = render(helm, {"hook": {"hostNetwork": True, "port": 10250 + 13}})
    pod = _hook_pod(objects)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LISTEN_ADDR"] == "0.0.0.0:10263"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["webhook"] == 10263
    service = one(objects, "Service", "hook")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["webhook"] == 443
    assert "hostNetwork" not in _hook_pod(render(helm, None))


def test_hook_cert_manager_chain_keeps_the_ca_across_renewals(helm):
    objects = render(helm, None)
    issuers = {o["metadata"]["name"]: o for o in by_kind(objects, "Issuer")}
    certs = {o["metadata"]["name"]: o for o in by_kind(objects, "Certificate")}
    assert len(issuers) == 2 and len(certs) == 2
    ca = next(c for c in certs.values() if c["spec"].get("isCA"))
    leaf = next(c for c in certs.values() if not c["spec"].get("isCA"))
    # self-signed issuer -> CA certificate -> CA issuer (from the CA's Secret) -> serving certificate
    assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]
    ca_issuer = issuers[leaf["spec"]["issuerRef"]["name"]]
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert ca["spec"]["privateKey"]["rotationPolicy"] == "Never"
    hours = lambda d: int(d.rstrip("h"))  # noqa: E731
    assert hours(ca["spec"]["duration"]) >= 10 * hours(leaf["spec"]["duration"])
    assert hours(leaf["spec"]["renewBefore"]) < hours(leaf["spec"]["duration"])
    # the webhook trusts the CA (not the leaf), so renewing the leaf changes nothing there
    mwc = one(objects, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{NAMESPACE}/{ca['metadata']['name']}"
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]
    # the serving certificate names the Service and is what the pods mount
    service = one(objects, "Service", "hook")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in leaf["spec"]["dnsNames"]
    assert "server auth" in leaf["spec"]["usages"]
    pod = one(objects, "Deployment", "hook")["spec"]["template"]["spec"]
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == leaf["spec"]["secretName"]


def test_hook_with_own_certificate_variant_and_options(helm):
    objects = render(helm, SCENARIOS["hook-own-tls-variant"])
    assert not by_kind(objects, "Certificate") and not by_kind(objects, "Issuer")
    assert not by_kind(objects, "PodDisruptionBudget")
    mwc = one(objects, "MutatingWebhookConfiguration")
    assert "annotations" not in mwc["metadata"]
    (hook,) = mwc["webhooks"]
    assert hook["name"] == "inject.blue.litestream-hook.kaidotio.github.io"
    assert hook["clientConfig"]["caBundle"] == SCENARIOS["hook-own-tls-variant"]["hook"]["tls"]["caBundle"]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 3
    assert "matchConditions" not in hook
    for name in ("monitoring", "kube-system"):
        assert not selector_matches(hook["namespaceSelector"], {"kubernetes.io/metadata.name": name})
    deployment = one(objects, "Deployment", "hook")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kaidotio/lifeboat/hook@sha256:" + "a" * 64
    env = env_of(container)
    assert env["VARIANT"]["value"] == "blue"
    assert env["LITESTREAM_IMAGE"]["value"] == "litestream/litestream:0.5.2"
    assert env["NATIVE_SIDECAR"]["value"] == "true"
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "hook-tls"
    assert deployment["metadata"]["labels"]["team"] == "platform"


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


# ---------------------------------------------------------------------------------------------
# The chart against the binaries as they are: names, formats, required variables, ports, probes,
# arguments and the handle manifests, from what the binaries print (`--print-config-schema`,
# config_schema.py) and do when run, never from their source or docs text.

# Variables a binary reads that the chart neither sets nor offers in extraEnv, and why.
NOT_FOR_THE_CHART = {
    # the image's own environment, passed through to rclone; profile files, read only to refuse them
    "s3sync": {"PATH", "HOME", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"},
    "hook": set(),
    # the kubelet sets the in-cluster ones; KUBECONFIG is for running etcdsnap on a workstation
    "etcdsnap": {"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"},
}
# Containers of the chart that do not run a lifeboat binary.
FOREIGN_CONTAINERS = {"csi-snapshotter"}


def lifeboat_containers(objects):
    """(component, container) of every Deployment/CronJob container running a lifeboat binary."""
    for owner, pod in pod_specs(objects):
        component = owner["metadata"]["labels"]["app.kubernetes.io/component"]
        for c in containers(pod):
            if c["name"] in FOREIGN_CONTAINERS:
                continue
            assert c["name"] == component, f"{owner['kind']} {owner['metadata']['name']}: container {c['name']}"
            assert c["image"].split("@")[0].rsplit(":", 1)[0].endswith("/" + component), c["image"]
            yield component, c


def _duration_ok(value):
    """lifeboat::env::parse_duration: a bare number of seconds, or number+unit parts (ms, s, m, h)."""
    return re.fullmatch(r"\d+|(\d+(ms|s|m|h))+", value) is not None


def _check_value(component, var, value):
    """`value` has the form the binary's declaration `var` (from --print-config-schema) parses."""
    where = f"{component} {var['name']}={value!r}"
    kind = var["kind"]
    if kind == "bool":
        assert value.strip().lower() in {"true", "false", "1", "0", "yes", "no", "on", "off"}, where
    if kind == "duration":
        assert _duration_ok(value), where
    if kind == "integer":
        assert re.fullmatch(r"\d+", value), f"{where}: not a whole number"
        if "min" in var:
            assert var["min"] <= int(value) <= var["max"], \
                f"{where}: not a whole number from {var['min']} to {var['max']}"
    if kind == "dns-label":
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) and len(value) <= var["max_length"], where
    if var["name"].endswith("_ADDR"):
        host, _, port = value.rpartition(":")
        assert port.isdigit() and int(port) < 65536 and host not in ("", "localhost", "127.0.0.1"), \
            f"{where}: must listen on all interfaces of the pod"


@pytest.mark.parametrize("scenario_name", list(SCENARIOS))
def test_every_env_var_the_chart_sets_is_one_the_binary_reads(helm, scenario_name):
    """The drift guard: for each container running a lifeboat binary, every variable the chart
    sets is read by that binary (as it declares), every variable it requires is set, and
    every literal value has the format the binary parses."""
    objects = render(helm, SCENARIOS[scenario_name])
    seen = set()
    for component, c in lifeboat_containers(objects):
        seen.add(component)
        reads = config_schema.variables(component)
        env = env_of(c)
        unknown = set(env) - set(reads)
        assert not unknown, f"{component}: the chart sets {sorted(unknown)}, which {component} never reads"
        missing = config_schema.required(component) - set(env)
        assert not missing, f"{component}: required {sorted(missing)} not set by the chart"
        for name, entry in env.items():
            assert name not in NOT_FOR_THE_CHART[component], f"{component}: {name} is not the chart's to set"
            if "value" in entry and "$(" not in entry["value"]:
                _check_value(component, reads[name], entry["value"])
            if reads[name]["secret"]:
                assert "valueFrom" in entry, f"{component}: the secret {name} is a literal in the pod spec"
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o, _ in pod_specs(objects)}
    assert seen == components


def test_the_drift_guard_has_something_to_guard():
    """What the binaries declare is what they are known to need: the contract is not silently
    empty, and its kinds, ranges and secrets are the ones the reading code applies."""
    # the keys are optional: a side without them uses the platform's credentials
    assert config_schema.required("s3sync") == {
        f"{side}_{name}" for side in ("SOURCE", "DEST") for name in ("S3_ENDPOINT", "BUCKET")
    } | {"DEST_PREFIX"}
    assert config_schema.required("hook") == {"TLS_CERT_FILE", "TLS_KEY_FILE", "HOOK_IMAGE"}
    assert config_schema.required("etcdsnap") == set()  # every etcdsnap variable has a default
    secrets = {n for n, v in config_schema.variables("s3sync").items() if v["secret"]}
    assert secrets == {f"{side}_{name}" for side in ("SOURCE", "DEST") for name in ("ACCESS_KEY", "SECRET_KEY")} | {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN"}
    for component in ("hook", "etcdsnap"):
        assert not any(v["secret"] for v in config_schema.variables(component).values()), component
    reads = config_schema.variables("etcdsnap")
    assert {"CSI_ENDPOINT", "DRIVER_NAME", "METADATA_NAMESPACE", "CLUSTER_LABEL", "METRICS_ADDR"} <= set(reads)
    assert "POD_NAMESPACE" not in reads
    assert (reads["GRPC_THREADS"]["min"], reads["GRPC_THREADS"]["max"]) == (1, 64)
    assert reads["JOB_TIMEOUT"]["kind"] == "duration" and reads["JOB_TIMEOUT"]["default"] == "10m"
    assert reads["CSI_ENDPOINT"]["default"] == "unix:///csi/csi.sock"
    assert reads["PVC_MIN_SIZE"]["default"] == "1Gi"
    body = config_schema.variables("hook")["MAX_BODY_BYTES"]
    assert (body["min"], body["max"], body["default"]) == (4096, 256 * 1024 * 1024, 3 * 1024 * 1024 + 256 * 1024)
    s3sync = config_schema.variables("s3sync")
    assert s3sync["MAX_DELETE"]["default"] == "1000" and s3sync["COMPARE"]["default"] == "checksum"
    assert s3sync["DRY_RUN"] == {"name": "DRY_RUN", "kind": "bool", "default": False, "secret": False,
                                 "required": False}
    # rclone's pass-through list is declared, not read by s3sync itself
    assert {"HTTPS_PROXY", "NO_PROXY", "TZ"} <= {n for n, v in s3sync.items() if v["kind"] == "pass-through"}
    for component in ("s3sync", "hook", "etcdsnap"):
        assert config_schema.variables(component)["LOG_LEVEL"]["default"] == "info"


@pytest.mark.parametrize("component", ["s3sync", "hook", "etcdsnap"])
def test_extra_env_offers_exactly_the_variables_the_binary_reads(helm, component):
    """values.schema.json's extraEnv names = what the binary reads, less what is not the chart's."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    offered = set(schema["properties"][component]["properties"]["extraEnv"]["propertyNames"]["enum"])
    assert offered == set(config_schema.variables(component)) - NOT_FOR_THE_CHART[component]
    # values.yaml's extraEnv examples are among them
    text = (CHART / "values.yaml").read_text()
    block = text[text.index(f"\n{component}:\n") + 1:]
    end = re.search(r"^[a-z#]", block[len(component) + 2:], re.M)  # the next top-level key or section
    block = block[:end.start() + len(component) + 2] if end else block
    lines = block[:block.index("\n  extraEnv:")].splitlines()
    comment = []
    while lines and lines[-1].startswith("  #"):
        comment.insert(0, lines.pop())
    examples = re.findall(r"\{([^}]*)\}", " ".join(comment))  # e.g. {JOB_TIMEOUT: "10m"}
    named = {k for e in examples for k in re.findall(r"([A-Za-z_][A-Za-z0-9_]*):", e)}
    assert named and named <= offered, (component, comment, named - offered)


def test_ports_probes_and_arguments_match_the_binaries(helm):
    objects = render(helm, SCENARIOS["everything"])
    for component, c in lifeboat_containers(objects):
        if component == "s3sync":
            assert "ports" not in c and "args" not in c and "command" not in c
            continue
        env = env_of(c)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert int(env["METRICS_ADDR"]["value"].rsplit(":", 1)[1]) == ports["metrics"] == 8080
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["port"] == "metrics", (component, probe, get)
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        if component == "hook":
            assert int(env["LISTEN_ADDR"]["value"].rsplit(":", 1)[1]) == ports["webhook"] == 9443
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert "args" not in c and "command" not in c  # `hook` alone serves
        if component == "etcdsnap":
            assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
            assert "command" not in c  # the image's ENTRYPOINT
            # the binary accepting the argument: test_the_binaries_start_with_the_charts_env_and_args...
            (arg,) = c["args"]
            flag, _, value = arg.partition("=")
            assert flag == "--endpoint"
            # Kubernetes expands $(VAR) from the container's env
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)]["value"], value)
            assert re.fullmatch(r"unix:///[^/].*", value), value
            sock = value[len("unix://"):]
            mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "socket-dir")
            assert sock.startswith(mount.rstrip("/") + "/")
            sidecar = next(x for x in containers(one(objects, "Deployment", "etcdsnap")["spec"]["template"])
                           if x["name"] == "csi-snapshotter")
            assert f"--csi-address={sock}" in sidecar["args"]


def _status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@pytest.mark.parametrize("component", ["hook", "etcdsnap"])
def test_the_binaries_start_with_the_charts_env_and_args_and_serve_its_probes(helm, component, bin_dir, tmp_path):
    """The real binary, given the chart's literal environment and arguments (listen addresses on
    127.0.0.1, files and sockets under a temporary folder, no Kubernetes API for etcdsnap),
    starts and answers every probe path the chart points at: 200 for liveness and startup; the
    readiness path exists (etcdsnap's is 503 while no API server answers)."""
    import tempfile

    from etcdsnap_driver import free_port, scrubbed_env, unreachable_kubeconfig
    from pki import make_ca
    from waiting import wait_for

    short = Path(tempfile.mkdtemp(prefix="lb-", dir="/tmp"))  # Unix socket paths are short
    objects = render(helm, SCENARIOS["everything"])
    (c,) = [c for comp, c in lifeboat_containers(objects) if comp == component]
    env = scrubbed_env()
    env.update({k: v["value"] for k, v in env_of(c).items() if "value" in v})
    metrics = free_port()
    env["METRICS_ADDR"] = f"127.0.0.1:{metrics}"
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c.get("args", [])]
    if component == "hook":
        ca = make_ca(tmp_path / "pki", "probe-ca")
        cert, key = ca.issue(tmp_path / "pki", "hook", ["127.0.0.1"], client=False, server=True)
        env.update({"LISTEN_ADDR": f"127.0.0.1:{free_port()}", "TLS_CERT_FILE": str(cert),
                    "TLS_KEY_FILE": str(key), "SOCKET_DIR": str(short)})
    else:
        env["KUBECONFIG"] = str(unreachable_kubeconfig(tmp_path / "kubeconfig"))
        # the chart's socket folder is the pod's emptyDir; here it is a temporary one
        args = [re.sub(r"unix:///\S*/", f"unix://{short}/", a) for a in args]
        assert args and all(a.startswith(f"--endpoint=unix://{short}/") for a in args), args
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(bin_dir / component), *args], env=env, stdout=out, stderr=out)
    try:
        def up():
            assert proc.poll() is None, f"{component} exited {proc.returncode}: {log.read_text()[-3000:]}"
            return _status(metrics, "/healthz") == 200
        wait_for(up, 30, f"{component}'s /healthz")
        for probe in ("startupProbe", "livenessProbe"):
            assert _status(metrics, c[probe]["httpGet"]["path"]) == 200, probe
        ready = c["readinessProbe"]["httpGet"]["path"]
        if component == "hook":
            wait_for(lambda: _status(metrics, ready) == 200, 30, f"hook's {ready}")
        else:
            assert _status(metrics, ready) in (200, 503), ready
        assert _status(metrics, "/no-such-probe") == 404  # the checks above can fail
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
        shutil.rmtree(short, ignore_errors=True)
    assert code == 0, f"{component} exited {code} on SIGTERM: {log.read_text()[-3000:]}"


def _handle_example():
    """docs/examples/etcdsnap-handle.yaml, the handle pair docs/etcdsnap.md links (as YAML)."""
    return [o for o in yaml.safe_load_all((ROOT / "docs" / "examples" / "etcdsnap-handle.yaml").read_text()) if o]


def test_etcdsnap_handles_match_the_documented_manifests(helm):
    """The chart's handle pair for the documented example is that pair (which
    test_etcdsnap_docs.py validates), with the chart's labels on top."""
    want = {o["kind"]: o for o in _handle_example()}
    want_pvc = want["PersistentVolumeClaim"]
    annotations = want_pvc["metadata"]["annotations"]
    handle = {"cluster": want_pvc["metadata"]["labels"]["etcd.io/cluster"],
              "namespace": want_pvc["metadata"]["namespace"],
              "endpoints": annotations["etcd.io/endpoints"].split(","),
              "clientTLSSecret": annotations["etcd.io/client-tls-secret"],
              "authSecret": annotations["etcd.io/auth-secret"]}
    objects = render(helm, {"hook": {"enabled": False}, "etcdsnap": {"enabled": True, "handles": [handle]}})
    got = {o["kind"]: strip(o) for o in objects if o["kind"] in ("PersistentVolume", "PersistentVolumeClaim")}
    for kind in ("PersistentVolume", "PersistentVolumeClaim"):
        g, w = got[kind], want[kind]
        assert g["metadata"]["name"] == w["metadata"]["name"], kind
        assert g["metadata"].get("namespace") == w["metadata"].get("namespace"), kind
        assert g["spec"] == w["spec"], kind
        assert w["metadata"].get("labels", {}).items() <= g["metadata"]["labels"].items(), kind
        assert g["metadata"].get("annotations") == w["metadata"].get("annotations"), kind
    # the annotation keys are the ones etcdsnap's discovery reads (its contract says which)
    read = set(config_schema.contract("etcdsnap")["pvc_annotations"])
    assert set(handle_annotations({"endpoints": ["https://a:2379"], "service": "s", "clientTLSSecret": "t",
                                               "authSecret": "u"})) == read


def test_images_run_the_binaries_the_way_the_chart_and_the_hook_call_them(bin_dir, tmp_path):
    """The chart never sets `command`: each image's ENTRYPOINT is its binary. The hook injects
    HOOK_IMAGE as an init container with args `write-config FILE` and no command, so the hook
    image's ENTRYPOINT must be the hook binary, which accepts `write-config` (run here with the
    init container's own args and environment, as `hook inject` writes them)."""
    text = (ROOT / "Containerfile").read_text()
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"^FROM \S+ AS (\w+)\n(?:(?!^FROM ).*\n?)*", text, re.M)}
    for target in ("s3sync", "hook", "etcdsnap"):
        assert f'ENTRYPOINT ["/usr/local/bin/{target}"]' in blocks[target], target
    hook_image = "registry.example/lifeboat/hook:0.1.0"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "app", "namespace": "shop",
                        "annotations": {"litestream-hook.kaidotio.github.io/inject": "true",
                                        "litestream-hook.kaidotio.github.io/path": "/data/app.db"}},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    env = {"PATH": "/usr/bin:/bin", "HOOK_IMAGE": hook_image}
    done = subprocess.run([str(bin_dir / "hook"), "inject", "-f", str(tmp_path / "pod.json")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    injected = json.loads(done.stdout)
    (init,) = [c for c in injected["spec"]["initContainers"] if c["image"] == hook_image]
    assert init["args"][0] == "write-config" and "command" not in init, init
    # the hook binary does what that init container asks: the config lands in a file
    target = tmp_path / "litestream.yml"
    init_env = {e["name"]: e["value"] for e in init.get("env", []) if "value" in e}
    done = subprocess.run([str(bin_dir / "hook"), "write-config", str(target)],
                          env={"PATH": "/usr/bin:/bin", **init_env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "/data/app.db" in target.read_text()
    # s3sync runs "rclone" from PATH unless RCLONE_BINARY says otherwise; the image puts it in
    # /usr/local/bin (on distroless's PATH) and the chart leaves RCLONE_BINARY unset
    assert config_schema.variables("s3sync")["RCLONE_BINARY"]["default"] == "rclone"
    assert "COPY --from=rclone /rclone /usr/local/bin/rclone" in blocks["s3sync"]


def test_schema_limits_are_the_binaries_limits(helm):
    """A value the schema accepts is one the binary accepts: numeric ranges and the hook's
    VARIANT length from the binaries' declarations, name formats of etcdsnap's settings."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    retries = schema["s3sync"]["properties"]["retries"]
    declared = config_schema.variables("s3sync")["RETRIES"]
    assert (retries["minimum"], retries["maximum"]) == (declared["min"], declared["max"])
    variant = config_schema.variables("hook")["VARIANT"]
    assert variant["kind"] == "dns-label"
    longest = variant["max_length"]
    assert schema["hook"]["properties"]["variant"]["maxLength"] == longest
    with helm.Chart.load(str(CHART)) as chart:
        for bad in ({"s3sync": {**S3_ON, "retries": 0}}, {"s3sync": {**S3_ON, "retries": 101}},
                    {"hook": {"variant": "a" * (longest + 1)}},
                    {"etcdsnap": {"metadataNamespace": "Not_A_Namespace"}},
                    {"etcdsnap": {"snapshotStorageClass": "fast storage"}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)
        chart.validate_schema({"s3sync": {**S3_ON, "retries": 100}, "hook": {"variant": "a" * longest}})
