"""The chart rendered by a real Helm engine, for the chart tests (test_chart*.py): the `helm`
and `kv` fixtures (helm-python-sdk, which embeds Helm v4's own Go engine; kubernetes-validate),
the values scenarios every object is checked in, and helpers to pick objects, containers and
environment out of a render. Nothing is skipped: without the renderer or the validator the
fixtures fail and say why."""

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
