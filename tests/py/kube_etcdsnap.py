"""Fixtures for etcdsnap against the real kube-apiserver 1.20 (test_kube_etcdsnap*.py): the chart's
rendered ServiceAccount and RBAC applied (`rbac`), a webhook adding 1.27+'s Job Pod label
(`job_label_webhook`), and `etcdsnap_kube`: the handle pair and client TLS Secret of a real etcd
cluster, the etcd image mapped to the real etcdctl/etcdutl on the process kubelet (the verify
step can be held: `hold_verify`), and a kubeconfig with the ServiceAccount's token that points
at a recording, fault-injecting proxy (kube_recorder.py) in front of the apiserver."""

from __future__ import annotations

import base64
import copy
import http.server
import json
import ssl
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from etcd_cluster import free_ports
from kube_control_plane import ns_path
from kube_recorder import Recorder
from pki import make_ca
from process_kubelet import Image
from waiting import wait_for

ETCD_IMAGE = "registry.k8s.io/etcd:3.5.21-0"
DRIVER = "etcdsnap.lifeboat.dev"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


def render(ns):
    import helm_python

    from chart_render import CHART

    values = {"hook": {"enabled": False},
              "etcdsnap": {"enabled": True, "namespaces": [ns], "metadataNamespace": ns, "etcdImage": ETCD_IMAGE}}
    with helm_python.Chart.load(str(CHART)) as chart:
        files = chart.render(copy.deepcopy(values), name="rel", namespace=ns, is_install=True)
    return [d for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def path_of(o, ns):
    group, _, version = o["apiVersion"].rpartition("/")
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    plural = {"ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings",
              "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}[o["kind"]]
    if o["kind"] in ("ClusterRole", "ClusterRoleBinding"):
        return f"{base}/{plural}"
    return f"{base}/namespaces/{o['metadata'].get('namespace', ns)}/{plural}"


@pytest.fixture
def rbac(kube_plane, kube_ns):
    """The chart's etcdsnap ServiceAccount and RBAC, applied; yields (sa name, rendered objects)."""
    admin = kube_plane.admin
    objs = [o for o in render(kube_ns) if o["kind"] in RBAC_KINDS]
    made = []
    try:
        for o in objs:
            admin.create(path_of(o, kube_ns), o)
            made.append(o)
        [sa] = [o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"]
        yield sa, objs
    finally:
        for o in made:
            if o["kind"].startswith("Cluster"):
                admin.request("DELETE", f"{path_of(o, kube_ns)}/{o['metadata']['name']}")


class _JobLabel(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):  # noqa: N802
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = review["request"]
        job = (req["object"]["metadata"].get("labels") or {}).get("job-name")
        resp = {"uid": req["uid"], "allowed": True}
        if job:
            patch = [{"op": "add", "path": "/metadata/labels/batch.kubernetes.io~1job-name", "value": job}]
            resp.update(patchType="JSONPatch", patch=base64.b64encode(json.dumps(patch).encode()).decode())
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def job_label_webhook(kube_plane, kube_ns, tmp_path):
    """Adds 1.27+'s batch.kubernetes.io/job-name label to Job Pods in the test namespace."""
    ca = make_ca(tmp_path / "wh", "joblabel-ca")
    cert, key = ca.issue(tmp_path / "wh", "wh", ["127.0.0.1"], client=False, server=True)
    [port] = free_ports(1)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _JobLabel)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    admin = kube_plane.admin
    admin.patch(f"/api/v1/namespaces/{kube_ns}", {"metadata": {"labels": {"kubernetes.io/metadata.name": kube_ns}}})
    name = f"job-label-{kube_ns}"[:63]
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    admin.create(path, {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{"name": "job-label.test.lifeboat.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "failurePolicy": "Fail", "timeoutSeconds": 5,
                      "clientConfig": {"url": f"https://127.0.0.1:{port}/", "caBundle":
                                       base64.b64encode(ca.cert_pem).decode()},
                      "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                 "resources": ["pods"], "scope": "Namespaced"}],
                      "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": kube_ns}},
                      "objectSelector": {"matchExpressions": [{"key": "job-name", "operator": "Exists"}]}}]})
    try:
        probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "labels": {"job-name": "x"}},
                 "spec": {"containers": [{"name": "c", "image": "x"}]}}
        wait_for(lambda: "batch.kubernetes.io/job-name" in admin.create(
            ns_path(kube_ns, "pods") + "?dryRun=All", probe)["metadata"]["labels"], 30, "the job-label webhook",
            interval=0.3)
        yield
    finally:
        admin.request("DELETE", f"{path}/{name}")
        server.shutdown()
        server.server_close()


class VerifyHold:
    """Holds the Job's verify step (`etcdutl snapshot status`) until `release()`: the image's
    etcdutl is a shell wrapper that waits (at most 120 s) for a file in a folder the process
    kubelet shows its containers, then runs the real etcdutl."""

    def __init__(self, dir: Path, etcdutl: Path):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flag = self.dir / "release"
        self.program = self.dir / "etcdutl"
        self.program.write_text(
            "#!/bin/sh\n"
            'case "$1 $2" in "snapshot status") i=0\n'
            f'  while [ ! -e {self.flag} ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done;; esac\n'
            f'exec {etcdutl.resolve()} "$@"\n')
        self.program.chmod(0o755)
        self.dir.chmod(0o755)

    def hold(self) -> None:
        self.flag.unlink(missing_ok=True)

    def release(self) -> None:
        self.flag.write_text("")


@pytest.fixture
def etcdsnap_kube(kube_plane, kube_node, kube_ns, rbac, job_label_webhook, etcd_cluster, tools_bin, tmp_path):
    """The handle volume `<ns>/main-handle` of the real etcd cluster, its client TLS Secret, the
    etcd image on the node (verify held until `hold.release()` when `hold.held`), and a
    kubeconfig with the chart's ServiceAccount token through the recording proxy."""
    admin = kube_plane.admin
    ns = kube_ns
    sa, objs = rbac
    hold = VerifyHold(tmp_path / "hold", tools_bin / "etcdutl")
    hold.release()  # not held unless a test removes the flag before the Job runs
    etcdutl = hold.program
    etcd = {"etcdctl": tools_bin / "etcdctl", "etcdutl": etcdutl}
    kube_node.images[ETCD_IMAGE] = Image(programs={**etcd, **{f"/usr/local/bin/{k}": v for k, v in etcd.items()}})
    kube_node.host_paths.append(str(hold.dir))
    admin.create(ns_path(ns, "secrets"), {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "main-client-tls"},
        "data": {"ca.crt": base64.b64encode(etcd_cluster.ca_path.read_bytes()).decode(),
                 "tls.crt": base64.b64encode(etcd_cluster.client_cert_path.read_bytes()).decode(),
                 "tls.key": base64.b64encode(etcd_cluster.client_key_path.read_bytes()).decode()}})
    admin.create("/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{ns}-main-handle"},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadOnlyMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "etcdsnap-handle",
                 "claimRef": {"namespace": ns, "name": "main-handle"},
                 "csi": {"driver": DRIVER, "volumeHandle": f"{ns}/main-handle"}}})
    recorder = None
    try:
        admin.create(ns_path(ns, "persistentvolumeclaims"), {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "main-handle", "labels": {"etcd.io/cluster": "main"},
                         "annotations": {"etcd.io/endpoints": ",".join(etcd_cluster.client_urls),
                                         "etcd.io/client-tls-secret": "main-client-tls"}},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Mi"}},
                     "storageClassName": "etcdsnap-handle", "volumeName": f"{ns}-main-handle"}})
        for i in range(20):
            etcd_cluster.put(f"/kube-e2e/key-{i}", f"value-{i}")
        token = kube_plane.sa_token(ns, sa)
        kubeconfig = kube_plane.kubeconfig(tmp_path / "etcdsnap.kubeconfig", token=token)
        # etcdsnap talks to the apiserver through the recording proxy (strict 1.33 schema check).
        recorder = Recorder(kube_plane).start()
        cfg = json.loads(kubeconfig.read_text())
        cfg["clusters"][0]["cluster"]["server"] = recorder.url
        kubeconfig.write_text(json.dumps(cfg))
        yield SimpleNamespace(admin=admin, ns=ns, sa=sa, objs=objs, user=f"system:serviceaccount:{ns}:{sa}",
                              volume=f"{ns}/main-handle", kubeconfig=kubeconfig, recorder=recorder, hold=hold,
                              node=kube_node, env=dict(JOB_BACKOFF_LIMIT=0, PVC_MIN_SIZE="64Mi",
                                                       METADATA_NAMESPACE=ns, ETCD_IMAGE=ETCD_IMAGE))
    finally:
        hold.release()
        if recorder is not None:
            recorder.stop()
        kube_node.host_paths.remove(str(hold.dir))
        admin.request("DELETE", f"/api/v1/persistentvolumes/{ns}-main-handle")
    assert recorder.schema_failures == [], recorder.schema_failures
