"""The Kubernetes API stand-in answers like kube-apiserver: real paths, status codes and Status
bodies, selectors, resourceVersion conflicts, garbage collection and strict schema checks."""

from __future__ import annotations

import http.client
import json
import ssl
import threading

import pytest
import yaml

from kube_standin import KubeStandin, schema_check

CM = "/api/v1/namespaces/default/configmaps"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
PVCS = "/api/v1/namespaces/default/persistentvolumeclaims"


def cm(name, labels=None, data=None, **meta):
    m = {"name": name, **meta}
    if labels is not None:
        m["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": m, "data": data or {"k": "v"}}


def job(name, containers, **spec):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": containers}}, **spec}}


def pvc(name, size="1Mi", **meta):
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, **meta},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}


@pytest.fixture
def c(kube):
    client = kube.client()
    yield client
    client.close()


def test_not_found_status_body_is_exactly_the_apiservers(c):
    st, body, headers = c.get(f"{CM}/x")
    assert st == 404
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": 'configmaps "x" not found', "reason": "NotFound",
                    "details": {"name": "x", "kind": "configmaps"}, "code": 404}
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(json.dumps(body))
    st, body, _ = c.get(f"{JOBS}/j")
    assert st == 404 and body["message"] == 'jobs.batch "j" not found'
    assert body["details"] == {"name": "j", "group": "batch", "kind": "jobs"}


def test_unauthorized_without_or_with_wrong_token(kube):
    for token in (None, "wrong", kube.token + "x"):
        client = kube.client(token=token)
        st, body, _ = client.get(f"{CM}/x")
        client.close()
        assert st == 401
        assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    anon = kube.client(token=None)
    assert anon.get("/readyz")[:2] == (200, "ok")  # public info, as with anonymous auth
    anon.close()
    assert kube.client(token="wrong").get("/readyz")[0] == 401  # a bad token is never anonymous


def test_create_conflict_and_already_exists(c):
    st, created, _ = c.post(CM, cm("x"))
    assert st == 201
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert isinstance(meta["resourceVersion"], str) and int(meta["resourceVersion"]) > 0
    st, body, _ = c.post(CM, cm("x"))
    assert st == 409 and body["reason"] == "AlreadyExists" and body["message"] == 'configmaps "x" already exists'
    assert body["details"] == {"name": "x", "kind": "configmaps"} and body["code"] == 409
    stale = dict(created, data={"k": "1"})
    assert c.put(f"{CM}/x", stale)[0] == 200
    st, body, _ = c.put(f"{CM}/x", dict(created, data={"k": "2"}))  # same, now stale, resourceVersion
    assert st == 409
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": 'Operation cannot be fulfilled on configmaps "x": the object has been modified; '
                               "please apply your changes to the latest version and try again",
                    "reason": "Conflict", "details": {"name": "x", "kind": "configmaps"}, "code": 409}
    st, body, _ = c.patch(f"{CM}/x", {"metadata": {"resourceVersion": meta["resourceVersion"]}, "data": {"k": "3"}})
    assert st == 409 and body["reason"] == "Conflict"
    assert c.get(f"{CM}/x")[1]["data"] == {"k": "1"}
    st, body, _ = c.put(f"{CM}/absent", cm("absent"))
    assert st == 404 and body["reason"] == "NotFound"


def test_resource_version_is_one_counter_across_the_store(c):
    rvs = [int(c.post(CM, cm(f"rv{i}"))[1]["metadata"]["resourceVersion"]) for i in range(3)]
    rvs.append(int(c.post(PVCS, pvc("rvp"))[1]["metadata"]["resourceVersion"]))
    assert rvs == sorted(rvs) and len(set(rvs)) == 4
    listed = c.get(CM)[1]
    assert int(listed["metadata"]["resourceVersion"]) >= rvs[-1]


def test_concurrent_read_modify_write_loses_no_update(kube):
    first = kube.client()
    first.post(CM, cm("counter", data={"n": "0"}))
    first.close()
    conflicts = []

    def worker():
        client = kube.client()
        for _ in range(10):
            for _attempt in range(200):
                obj = client.get(f"{CM}/counter")[1]
                obj["data"]["n"] = str(int(obj["data"]["n"]) + 1)
                st, body, _ = client.put(f"{CM}/counter", obj)
                if st == 200:
                    break
                assert st == 409 and body["reason"] == "Conflict"
                conflicts.append(1)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check = kube.client()
    assert check.get(f"{CM}/counter")[1]["data"]["n"] == "40"
    check.close()


def test_invalid_objects_get_422_and_are_recorded(kube, c):
    bad = cm("bad")
    bad["metadata"]["bogus"] = True
    st, body, _ = c.post(CM, bad)
    assert st == 422 and body["reason"] == "Invalid" and body["code"] == 422
    assert body["message"].startswith('ConfigMap "bad" is invalid: ')
    assert body["details"]["kind"] == "ConfigMap" and body["details"]["causes"]
    assert "bogus" in body["details"]["causes"][0]["message"]
    assert [f["name"] for f in kube.schema_failures] == ["bad"]
    wrong_type = job("j", [{"name": "c", "image": "x", "command": ["etcdctl"]}], backoffLimit="six")
    assert c.post(JOBS, wrong_type)[0] == 422
    unknown_in_spec = job("j", [{"name": "c", "image": "x", "command": ["etcdctl"], "imagePullPolicyy": "Always"}])
    assert c.post(JOBS, unknown_in_spec)[0] == 422
    assert len(kube.schema_failures) == 3
    assert c.get(f"{CM}/bad")[0] == 404 and c.get(f"{JOBS}/j")[0] == 404
    kube.schema_failures.clear()  # recorded as they should be; the fixture asserts none at teardown


def test_apiserver_validation_beyond_the_schema(c):
    long_label = cm("lbl", labels={"etcd.io/snapshot": "x" * 64})
    st, body, _ = c.post(CM, long_label)
    assert st == 422 and "must be no more than 63 characters" in body["message"]
    assert c.post(CM, cm("Upper_Case"))[0] == 422
    assert c.post(CM, cm("big", data={"blob": "x" * (1024 * 1024 + 1)}))[0] == 422
    always = job("always", [{"name": "c", "image": "x", "command": ["etcdctl"]}])
    always["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    st, body, _ = c.post(JOBS, always)
    assert st == 422 and "restartPolicy" in body["details"]["causes"][0]["field"]
    assert c.post(JOBS, job("noimage", [{"name": "c", "command": ["etcdctl"]}]))[0] == 422
    assert c.post(PVCS, pvc("badsize", size="lots"))[0] == 422
    nostorage = pvc("nostorage")
    nostorage["spec"]["resources"] = {}
    assert c.post(PVCS, nostorage)[0] == 422
    assert len(c.standin.schema_failures) == 7  # recorded like schema failures
    c.standin.schema_failures.clear()


def test_schema_accepts_good_job_pvc_configmap_secret(kube, c):
    kube.hold_jobs()
    good_job = job("good", [{"name": "save", "image": "registry.k8s.io/etcd:3.5.21-0",
                             "command": ["etcdctl", "version"], "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                             "env": [{"name": "ETCDCTL_API", "value": "3"}]}],
                   backoffLimit=1, activeDeadlineSeconds=60, ttlSecondsAfterFinished=300)
    good_job["spec"]["template"]["spec"]["volumes"] = [{"name": "out", "emptyDir": {}}]
    good_job["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "etcdsnap"}
    assert c.post(JOBS, good_job)[0] == 201
    assert c.post(PVCS, pvc("good", size="64Mi", labels={"etcd.io/cluster": "main"}))[0] == 201
    assert c.post(CM, cm("good", data={"snapshots.json": "{}"}))[0] == 201
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
              "stringData": {"tls.crt": "c", "tls.key": "k"}}
    st, body, _ = c.post("/api/v1/namespaces/default/secrets", secret)
    assert st == 201 and body["data"] == {"tls.crt": "Yw==", "tls.key": "aw=="} and "stringData" not in body
    stored_job = kube.get_object("jobs", "default", "good")
    assert stored_job["spec"]["backoffLimit"] == 1 and stored_job["spec"]["completions"] == 1
    assert stored_job["spec"]["template"]["metadata"]["labels"]["job-name"] == "good"
    for kind in ("jobs", "persistentvolumeclaims", "persistentvolumes", "configmaps", "secrets", "namespaces"):
        for o in kube.objects(kind):
            assert schema_check(o) is None, (kind, o)
    kube.release_jobs()
    kube.wait_job("default", "good", 30)


def test_pvc_is_bound_to_a_local_dir_with_a_pv(kube, c):
    st, body, _ = c.post(PVCS, pvc("data", size="5Mi", labels={"etcd.io/cluster": "main"}))
    assert st == 201 and body["status"]["phase"] == "Bound" and body["status"]["capacity"] == {"storage": "5Mi"}
    d = kube.pvc_dir("default", "data")
    assert d.is_dir() and kube.pvc_request("default", "data") == "5Mi"
    pv = c.get(f"/api/v1/persistentvolumes/{body['spec']['volumeName']}")[1]
    assert pv["spec"]["claimRef"]["uid"] == body["metadata"]["uid"] and pv["spec"]["hostPath"]["path"] == str(d)
    assert c.delete(f"{PVCS}/data")[0] == 200
    assert not d.exists() and c.get(f"/api/v1/persistentvolumes/{body['spec']['volumeName']}")[0] == 404
    with pytest.raises(KeyError):
        kube.pvc_dir("default", "data")


def test_label_and_field_selectors(c):
    for name, labels in [("a", {"etcd.io/cluster": "main", "tier": "db"}), ("b", {"etcd.io/cluster": "other"}),
                         ("c", {"tier": "cache"}), ("d", {})]:
        assert c.post(CM, cm(name, labels=labels))[0] == 201

    def names(selector, field=""):
        from urllib.parse import quote

        st, body, _ = c.get(f"{CM}?labelSelector={quote(selector)}&fieldSelector={quote(field)}")
        assert st == 200, body
        assert body["kind"] == "ConfigMapList" and all("kind" not in i for i in body["items"])
        return sorted(i["metadata"]["name"] for i in body["items"])

    assert names("etcd.io/cluster=main") == ["a"]
    assert names("etcd.io/cluster==main") == ["a"]
    assert names("etcd.io/cluster!=main") == ["b", "c", "d"]
    assert names("etcd.io/cluster in (main, other)") == ["a", "b"]
    assert names("tier notin (db)") == ["b", "c", "d"]
    assert names("etcd.io/cluster") == ["a", "b"]
    assert names("!etcd.io/cluster") == ["c", "d"]
    assert names("etcd.io/cluster,tier=db") == ["a"]
    assert names("etcd.io/cluster,tier=cache") == []
    assert names("", "metadata.name=c") == ["c"]
    assert names("tier", "metadata.name!=c") == ["a"]
    st, body, _ = c.get(f"{CM}?labelSelector=a%20in%20b")
    assert st == 400 and body["reason"] == "BadRequest"
    st, body, _ = c.get(f"{CM}?fieldSelector=spec.foo%3Dx")
    assert st == 400 and body["message"] == "field label not supported: spec.foo"
    first = c.get(f"{CM}?limit=3")[1]
    assert len(first["items"]) == 3 and first["metadata"]["remainingItemCount"] == 1
    rest = c.get(f"{CM}?limit=3&continue={first['metadata']['continue']}")[1]
    assert [i["metadata"]["name"] for i in rest["items"]] == ["d"] and "continue" not in rest["metadata"]
    assert len(c.get("/api/v1/configmaps?labelSelector=tier")[1]["items"]) == 2  # all namespaces


def test_generate_name_dry_run_and_namespace_checks(kube, c):
    st, body, _ = c.post(CM, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "snap-"}})
    assert st == 201 and body["metadata"]["name"].startswith("snap-") and len(body["metadata"]["name"]) == 10
    st, body, _ = c.post(f"{CM}?dryRun=All", cm("dry"))
    assert st == 201 and body["metadata"]["name"] == "dry" and c.get(f"{CM}/dry")[0] == 404
    st, body, _ = c.post(CM, cm("elsewhere", namespace="kube-system"))
    assert st == 400 and body["reason"] == "BadRequest" and "does not match the namespace" in body["message"]
    st, body, _ = c.post("/api/v1/namespaces/nope/configmaps", cm("x"))
    assert st == 404 and body["message"] == 'namespaces "nope" not found'
    assert c.get("/api/v1/namespaces/kube-system")[1]["status"]["phase"] == "Active"
    st, body, _ = c.delete(f"{CM}/dry?dryRun=All")
    assert st == 404
    c.post(CM, cm("keep"))
    assert c.delete(f"{CM}/keep?dryRun=All")[0] == 200 and c.get(f"{CM}/keep")[0] == 200


def test_paths_methods_and_patch_types(c):
    assert c.get("/api/v1/namespaces/default/widgets")[0] == 404
    st, body, _ = c.get("/apis/apps/v1/namespaces/default/deployments")
    assert st == 404 and body["message"] == "the server could not find the requested resource"
    st, body, _ = c.put(CM, cm("x"))
    assert st == 405 and body["reason"] == "MethodNotAllowed"
    c.post(CM, cm("p", labels={"a": "1"}, data={"x": "1", "y": "2"}))
    assert c.patch(f"{CM}/p", {"data": {"y": None, "z": "3"}})[1]["data"] == {"x": "1", "z": "3"}
    assert c.patch(f"{CM}/p", {"metadata": {"labels": {"b": "2"}}},
                   "application/strategic-merge-patch+json")[1]["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert c.patch(f"{CM}/p", [{"op": "replace", "path": "/data/x", "value": "9"}],
                   "application/json-patch+json")[1]["data"]["x"] == "9"
    st, body, _ = c.patch(f"{CM}/p", {"data": {}}, "application/json")
    assert st == 415 and body["reason"] == "UnsupportedMediaType"
    assert c.patch(f"{CM}/missing", {"data": {}})[0] == 404
    st, body, _ = c.patch(f"{CM}/p", {"bogus": 1})
    assert st == 422 and "bogus" in body["message"]
    c.standin.schema_failures.clear()


def test_delete_garbage_collects_owned_objects(kube, c):
    owner = c.post(CM, cm("owner"))[1]
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    c.post(CM, cm("child", ownerReferences=[ref]))
    c.post(PVCS, pvc("child-pvc", ownerReferences=[ref]))
    grandchild_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "child",
                      "uid": c.get(f"{CM}/child")[1]["metadata"]["uid"]}
    c.post(CM, cm("grandchild", ownerReferences=[grandchild_ref]))
    c.post(CM, cm("unrelated"))
    st, body, _ = c.delete(f"{CM}/owner")
    assert st == 200 and body["status"] == "Success" and body["details"]["uid"] == owner["metadata"]["uid"]
    assert sorted(o["metadata"]["name"] for o in kube.objects("configmaps", "default")) == ["unrelated"]
    assert kube.objects("persistentvolumeclaims", "default") == []
    st, body, _ = c.delete(f"{CM}/owner")
    assert st == 404 and body["reason"] == "NotFound"
    # Orphan keeps dependents and drops the reference
    o2 = c.post(CM, cm("o2"))[1]
    c.post(CM, cm("kept", ownerReferences=[{"apiVersion": "v1", "kind": "ConfigMap", "name": "o2",
                                            "uid": o2["metadata"]["uid"]}]))
    assert c.delete(f"{CM}/o2?propagationPolicy=Orphan")[0] == 200
    assert "ownerReferences" not in c.get(f"{CM}/kept")[1]["metadata"]
    # an object created with only a dead owner is collected at once
    c.post(CM, cm("dangling", ownerReferences=[{"apiVersion": "v1", "kind": "ConfigMap", "name": "gone",
                                                "uid": "00000000-0000-0000-0000-000000000000"}]))
    assert c.get(f"{CM}/dangling")[0] == 404
    # DeleteOptions body and bad policies
    st, body, _ = c.delete(f"{CM}/kept", {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Bad"})
    assert st == 400
    st, body, _ = c.delete(f"{CM}/kept", {"kind": "DeleteOptions", "apiVersion": "v1",
                                          "preconditions": {"resourceVersion": "1"}})
    assert st == 409 and body["reason"] == "Conflict"


def test_finalizers_hold_deletion_until_removed(c):
    c.post(CM, cm("fin", finalizers=["etcdsnap.lifeboat/protect"]))
    st, body, _ = c.delete(f"{CM}/fin")
    assert st == 200 and body["metadata"]["deletionTimestamp"]
    got = c.get(f"{CM}/fin")[1]
    got["metadata"]["finalizers"] = []
    assert c.put(f"{CM}/fin", got)[0] == 200
    assert c.get(f"{CM}/fin")[0] == 404


def test_request_log(kube, c):
    c.get(f"{CM}?labelSelector=a%3Db")
    assert ("GET", CM, {"labelSelector": "a=b"}) in kube.requests


def test_https_keep_alive_and_discovery(kube):
    ctx = ssl.create_default_context(cafile=str(kube.ca_path))
    conn = http.client.HTTPSConnection("localhost", kube.port, context=ctx, timeout=5)
    auth = {"Authorization": f"Bearer {kube.token}"}
    socks = []
    for path in ("/version", "/api", "/apis", "/api/v1", "/apis/batch/v1"):
        conn.request("GET", path, headers=auth)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200 and resp.getheader("Content-Length") and resp.version == 11
        socks.append(id(conn.sock))
        if path == "/version":
            assert body["major"] == "1" and body["minor"] == "33"
        if path == "/apis/batch/v1":
            assert [r["name"] for r in body["resources"]] == ["jobs"]
    assert len(set(socks)) == 1, "the connection was kept alive"
    conn.close()
    untrusting = http.client.HTTPSConnection("127.0.0.1", kube.port, context=ssl.create_default_context(), timeout=5)
    with pytest.raises(ssl.SSLError):
        untrusting.request("GET", "/version")
    untrusting.close()


def test_kubeconfig_points_at_the_standin(kube):
    cfg = yaml.safe_load(kube.kubeconfig_path.read_text())
    ctx = next(x for x in cfg["contexts"] if x["name"] == cfg["current-context"])["context"]
    cluster = next(x for x in cfg["clusters"] if x["name"] == ctx["cluster"])["cluster"]
    user = next(x for x in cfg["users"] if x["name"] == ctx["user"])["user"]
    import base64

    assert cluster["server"] == kube.url and user["token"] == kube.token
    assert base64.b64decode(cluster["certificate-authority-data"]) == kube.ca_path.read_bytes()
    assert (kube.kubeconfig_path.stat().st_mode & 0o777) == 0o600
    assert (kube.serviceaccount_dir / "token").read_text() == kube.token


def test_seeded_objects_are_validated(kube):
    with pytest.raises(ValueError):
        kube.put_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "etcd"},
                         "data": {"ca.crt": 5}})
    s = kube.put_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "etcd"},
                         "stringData": {"ca.crt": "pem"}})
    assert s["data"] == {"ca.crt": "cGVt"} and kube.get_object("namespaces", None, "etcd") is not None


def test_stop_closes_the_server(tmp_path):
    k = KubeStandin(tmp_path).start()
    port = k.port
    client = k.client()
    assert client.get("/readyz")[0] == 200
    k.stop()
    client.close()
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_pvc_update_rules_and_delete_collection(kube, c):
    created = c.post(PVCS, pvc("grow", size="1Mi", labels={"etcd.io/snapshot": "a"}))[1]
    created["spec"]["resources"]["requests"]["storage"] = "2Mi"
    st, body, _ = c.put(f"{PVCS}/grow", created)
    assert st == 200 and body["spec"]["resources"]["requests"]["storage"] == "2Mi"
    body["spec"]["accessModes"] = ["ReadWriteMany"]
    st, err, _ = c.put(f"{PVCS}/grow", body)
    assert st == 422 and "immutable" in err["message"]
    kube.schema_failures.clear()
    c.post(PVCS, pvc("other", labels={"etcd.io/snapshot": "b"}))
    st, listed, _ = c.delete(f"{PVCS}?labelSelector=etcd.io%2Fsnapshot%3Da")
    assert st == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["grow"]
    assert [o["metadata"]["name"] for o in kube.objects("PersistentVolumeClaim", "default")] == ["other"]


def test_pvc_with_volume_name_binds_statically(kube, c):
    st, body, _ = c.post(PVCS, pvc("static") | {"spec": {
        "accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Mi"}}, "volumeName": "handle-pv",
        "storageClassName": "etcdsnap-handle"}})
    assert st == 201 and body["status"]["phase"] == "Pending" and body["spec"]["volumeName"] == "handle-pv"
    assert c.get("/api/v1/persistentvolumes/handle-pv")[0] == 404
    kube.put_object({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "handle-pv2"},
                     "spec": {"accessModes": ["ReadOnlyMany"], "capacity": {"storage": "1Mi"},
                              "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "etcdsnap-handle",
                              "csi": {"driver": "etcdsnap.lifeboat.dev", "volumeHandle": "default/static2"}}})
    st, body, _ = c.post(PVCS, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "metadata": {"name": "static2"},
                                "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Mi"}},
                                         "volumeName": "handle-pv2", "storageClassName": "etcdsnap-handle"}})
    assert st == 201 and body["status"]["phase"] == "Bound" and body["spec"]["volumeName"] == "handle-pv2"
    pv = c.get("/api/v1/persistentvolumes/handle-pv2")[1]
    assert pv["spec"]["claimRef"]["uid"] == body["metadata"]["uid"] and pv["status"]["phase"] == "Bound"
    assert c.delete(f"{PVCS}/static2")[0] == 200
    assert c.get("/api/v1/persistentvolumes/handle-pv2")[1]["status"]["phase"] == "Released"  # Retain
