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

import base64
import copy
import http.server
import json
import ssl
import subprocess
import threading

import pytest
import yaml

from etcd_cluster import free_ports
from etcdsnap_driver import running_driver
from pki import make_ca
from test_chart import DRIVER_CLUSTER_CALLS, DRIVER_METADATA_CALLS
from kube_control_plane import ns_path
from kube_recorder import Recorder
from process_kubelet import Image
from waiting import wait_for

ETCD_IMAGE = "registry.k8s.io/etcd:3.5.21-0"
DRIVER = "etcdsnap.lifeboat.dev"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
# Granted but not exercised here, and why: discovery through the Service's Endpoints needs
# member addresses, and 1.20 refuses loopback addresses in Endpoints (this cluster's etcd
# listens on 127.0.0.1), so the PVC names its endpoints in the etcd.io/endpoints annotation.
UNUSED_HERE = {("get", "services"), ("get", "endpoints")}


def render(ns):
    import helm_python

    from test_chart import CHART

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


def etcdsnap_rules(objs, ns):
    """(verb, resource) pairs the chart grants etcdsnap itself (not the csi-snapshotter sidecar)."""
    out = set()
    for o in objs:
        if o["kind"] == "Role" and not o["metadata"]["name"].endswith("-leader-election"):
            for r in o["rules"]:
                out |= {(v, res) for v in r["verbs"] for res in r["resources"]}
    return out


def test_group_snapshot_through_the_real_api_with_exactly_the_charts_rbac(
        kube_plane, kube_node, kube_ns, rbac, job_label_webhook, etcd_cluster, stubs, bin_dir, tools_bin, tmp_path):
    admin = kube_plane.admin
    ns = kube_ns
    sa, objs = rbac
    etcd = {"etcdctl": tools_bin / "etcdctl", "etcdutl": tools_bin / "etcdutl"}
    kube_node.images[ETCD_IMAGE] = Image(programs={**etcd, **{f"/usr/local/bin/{k}": v for k, v in etcd.items()}})
    # The handle pair and the client TLS Secret, as the README describes them.
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
        pb2, _ = stubs
        user = f"system:serviceaccount:{ns}:{sa}"
        with running_driver(bin_dir, tmp_path / "driver", kubeconfig, stubs, JOB_BACKOFF_LIMIT=0,
                            PVC_MIN_SIZE="64Mi", METADATA_NAMESPACE=ns, ETCD_IMAGE=ETCD_IMAGE) as d:
            g = d.group.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
                name="kube-e2e", source_volume_ids=[f"{ns}/main-handle"]), timeout=30).group_snapshot

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
        recorder.stop()
    finally:
        admin.request("DELETE", f"/api/v1/persistentvolumes/{ns}-main-handle")
    # Every object etcdsnap sent is valid for Kubernetes 1.33 (1.20 would drop unknown fields).
    assert any(m == "POST" for m, _, _ in recorder.requests), recorder.requests
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
    granted = etcdsnap_rules(objs, ns)
    assert used <= granted, f"used but not granted: {used - granted}"
    assert granted - used == UNUSED_HERE, f"granted but unused: {granted - used - UNUSED_HERE}"
    # What test_chart.py holds the chart's RBAC to (per namespace) is what the apiserver recorded.
    needs = {(verb, resource) for calls in (DRIVER_METADATA_CALLS, DRIVER_CLUSTER_CALLS)
             for (_, resource), verbs in calls.items() for verb in verbs}
    assert used | UNUSED_HERE == needs, f"recorded {sorted(used)}, test_chart.py says {sorted(needs)}"
