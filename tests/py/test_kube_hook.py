"""The hook through the real admission chain of kube-apiserver 1.20: the chart's
MutatingWebhookConfiguration as rendered (TLS mode "secret", its caBundle a CA made at test time;
`clientConfig.url` instead of the Service, as the hook runs on this machine) registered on the
apiserver; Pods created through the API come back stored with the patch applied, after the
apiserver's own defaulting and validation of the patched Pod.

1.20 has no native sidecars (an init container's `restartPolicy: Always` is dropped silently) and
no `matchConditions` (dropped too: the hook itself leaves unannotated Pods alone), so these Pods
use `native-sidecar: "false"`; native mode stays covered by schema validation (test_chart.py and
the hook's patch tests).
"""

from __future__ import annotations

import base64
import copy
import os
import signal
import subprocess

import pytest

from etcd_cluster import free_ports, scrubbed_env
from kube_control_plane import KubeError, ns_path
from pki import make_ca
from waiting import wait_for

PREFIX = "litestream-hook.kaidotio.github.io"
HOOK_IMAGE = "registry.example/lifeboat:test"


@pytest.fixture
def hook(tmp_path, bin_dir):
    """target/debug/hook serving HTTPS on 127.0.0.1 with a leaf of a CA made here."""
    ca = make_ca(tmp_path / "pki", "hook-ca")
    cert, key = ca.issue(tmp_path / "pki", "hook", ["127.0.0.1", "localhost"], client=False, server=True)
    port, metrics = free_ports(2)
    (tmp_path / "run").mkdir()
    env = scrubbed_env({
        "LISTEN_ADDR": f"127.0.0.1:{port}", "METRICS_ADDR": f"127.0.0.1:{metrics}",
        "TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key), "HOOK_IMAGE": HOOK_IMAGE,
        "SOCKET_DIR": str(tmp_path / "run"), "LOG_LEVEL": "debug",
    })
    for var in ("VARIANT", "NATIVE_SIDECAR", "LITESTREAM_IMAGE"):
        env.pop(var, None)
    log = tmp_path / "hook.log"
    exe = bin_dir / "hook"
    assert exe.exists(), f"{exe} missing: cargo build --bins"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe)], env=env, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or '"msg":"serving"' in log.read_text(errors="replace"), 30,
                 "the hook to log serving")
        assert proc.poll() is None, f"hook exited {proc.returncode}: {log.read_text()}"
        yield {"port": port, "ca": ca, "log": log, "metrics": metrics}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def rendered_webhook(ns: str, ca_pem: bytes, port: int) -> dict:
    """The chart's MutatingWebhookConfiguration for a release in `ns`, pointed at the local hook
    and limited to `ns` through the chart's own namespaceSelectorExpressions value."""
    import helm_python
    import yaml

    from test_chart import CHART  # the chart folder; rendering as test_chart.py does

    values = {
        "hook": {"tls": {"mode": "secret", "secretName": "hook-tls", "caBundle": base64.b64encode(ca_pem).decode()},
                 "webhook": {"namespaceSelectorExpressions": [
                     {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}]}},
    }
    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema(copy.deepcopy(values))
        files = chart.render(copy.deepcopy(values), name="rel", namespace=ns, is_install=True)
    docs = [d for path, text in files.items() if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]
    [mwc] = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    for w in mwc["webhooks"]:
        assert w["clientConfig"]["service"]["path"] == "/mutate"
        w["clientConfig"] = {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": w["clientConfig"]["caBundle"]}
    return mwc


@pytest.fixture
def webhook(kube_plane, kube_ns, hook):
    admin = kube_plane.admin
    # 1.21+ labels every namespace with its name; 1.20 does not, so the chart's selector needs it.
    admin.patch(f"/api/v1/namespaces/{kube_ns}",
                {"metadata": {"labels": {"kubernetes.io/metadata.name": kube_ns}}})
    mwc = rendered_webhook(kube_ns, hook["ca"].cert_pem, hook["port"])
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    admin.create(path, mwc)
    name = mwc["metadata"]["name"]
    try:
        # The apiserver picks the configuration up through an informer: wait until a dry-run
        # create of an annotated Pod comes back injected.
        probe = app_pod("probe")

        def effective():
            out = admin.create(ns_path(kube_ns, "pods") + "?dryRun=All", probe)
            return out["metadata"].get("annotations", {}).get(f"{PREFIX}/injected") == "true"
        wait_for(effective, 30, "the webhook configuration to take effect", interval=0.3)
        yield mwc
    finally:
        admin.request("DELETE", f"{path}/{name}")


def app_pod(name: str, **annotations) -> dict:
    ann = {f"{PREFIX}/inject": "true", f"{PREFIX}/native-sidecar": "false",
           f"{PREFIX}/path": "/var/lib/app/main.db,/cache/c.db", f"{PREFIX}/bucket": "backups",
           f"{PREFIX}/endpoint": "http://127.0.0.1:9", f"{PREFIX}/secret": "s3"}
    ann.update({f"{PREFIX}/{k}": v for k, v in annotations.items()})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": ann},
            "spec": {"restartPolicy": "Always", "securityContext": {"runAsUser": 1000, "runAsNonRoot": True},
                     "containers": [{"name": "app", "image": "local/app:1",
                                     "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                     "volumes": [{"name": "scratch", "emptyDir": {}}]}}


def test_an_annotated_pod_is_stored_with_the_patch_the_apiserver_validated(kube_plane, kube_ns, webhook, hook):
    admin = kube_plane.admin
    stored = admin.create(ns_path(kube_ns, "pods"), app_pod("app"))
    md, spec = stored["metadata"], stored["spec"]
    assert md["annotations"][f"{PREFIX}/injected"] == "true"
    inits = [c["name"] for c in spec["initContainers"]]
    assert inits == ["litestream-hook-config", "litestream-hook-restore-0", "litestream-hook-restore-1"], inits
    names = [c["name"] for c in spec["containers"]]
    assert names == ["app", "litestream-hook-replicate"], names
    # The apiserver defaulted the injected containers (what only a real apiserver does).
    for c in spec["initContainers"] + spec["containers"]:
        assert c["terminationMessagePath"] == "/dev/termination-log" and c["imagePullPolicy"], c["name"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert set(vols) == {"scratch", "litestream-hook-data", "litestream-hook-config"} | {
        v for v in vols if v.startswith("default-token-")}, vols
    assert vols["litestream-hook-data"]["emptyDir"]["sizeLimit"] == "1Gi"
    app = spec["containers"][0]
    mounts = {m["mountPath"]: m for m in app["volumeMounts"]}
    db_mounts = [mounts["/var/lib/app"], mounts["/cache"]]
    assert {m["name"] for m in db_mounts} == {"litestream-hook-data"}
    assert sorted(m["subPath"] for m in db_mounts) == ["db0", "db1"], db_mounts
    assert "/scratch" in mounts
    replicate = spec["containers"][1]
    assert replicate["image"].startswith("litestream/litestream:")
    env = {e["name"]: e for e in replicate.get("env", [])}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}
    # What is stored is what a GET returns: the patch went through the apiserver's storage.
    assert admin.get(ns_path(kube_ns, "pods", "app"))["spec"]["containers"][1]["name"] == "litestream-hook-replicate"


def test_unannotated_pods_and_bad_annotations_through_the_real_chain(kube_plane, kube_ns, webhook):
    admin = kube_plane.admin
    plain = app_pod("plain")
    plain["metadata"]["annotations"] = {}
    stored = admin.create(ns_path(kube_ns, "pods"), plain)
    assert [c["name"] for c in stored["spec"]["containers"]] == ["app"]
    assert "initContainers" not in stored["spec"]
    with pytest.raises(KubeError) as err:
        admin.create(ns_path(kube_ns, "pods"), app_pod("bad", storage="-1Gi"))
    # The apiserver reports the webhook's denial with the hook's message, naming the annotation.
    assert err.value.status == 400, err.value.body
    assert "denied the request" in err.value.body["message"] and f"{PREFIX}/storage" in err.value.body["message"]
    assert not admin.exists(ns_path(kube_ns, "pods", "bad"))
