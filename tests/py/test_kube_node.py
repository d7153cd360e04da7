"""The real control plane and the process kubelet, end to end through the API: RBAC, Pod
validation, containers with their own mounts, env, init order, status, logs via the apiserver's
pods/log proxy, restarts, the real job controller and garbage collector."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kube_control_plane import KubeError, ns_path, phase_in, wait_pod
from process_kubelet import Image
from waiting import wait_for

SH = "local/sh:1"


@pytest.fixture
def node(kube_node):
    kube_node.images[SH] = Image(programs={"sh": "/bin/sh", "/bin/sh": "/bin/sh"}, entrypoint=["/bin/sh"])
    return kube_node


def sh(name, script, **extra):
    return {"name": name, "image": SH, "command": ["sh", "-c", script], **extra}


def pod(name, containers, init=(), volumes=(), policy="Never", **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": policy, "initContainers": list(init), "containers": list(containers),
                     "volumes": list(volumes), "terminationGracePeriodSeconds": 2, **spec}}


def logs(plane, ns, name, container, **q):
    query = "&".join([f"container={container}"] + [f"{k}={v}" for k, v in q.items()])
    status, body = plane.admin.request("GET", ns_path(ns, "pods", name) + "/log?" + query, raw=True)
    assert status == 200, f"pods/log {ns}/{name}/{container}: {status} {body[:500]!r}"
    return body.decode()


def statuses(p, key="containerStatuses"):
    return {c["name"]: c for c in p["status"].get(key, [])}


def test_the_apiserver_is_kubernetes_1_20_with_rbac_and_its_own_validation(kube_plane, kube_ns):
    version = kube_plane.admin.get("/version")
    assert version["gitVersion"] == "v1.20.2"
    nobody = kube_plane.client("nobody", ())
    status, body = nobody.request("GET", ns_path(kube_ns, "secrets"))
    assert status == 403 and body["reason"] == "Forbidden", body
    assert 'User "nobody" cannot list resource "secrets"' in body["message"]
    # Semantic validation, not only the schema: a container name that is no DNS label.
    bad = pod("bad", [sh("Not_A_Label", "true")])
    with pytest.raises(KubeError) as err:
        kube_plane.admin.create(ns_path(kube_ns, "pods"), bad)
    assert err.value.status == 422 and "spec.containers[0].name" in err.value.body["message"]


def test_containers_see_exactly_their_mounts_env_and_init_order(kube_plane, node, kube_ns):
    admin = kube_plane.admin
    admin.create(ns_path(kube_ns, "secrets"), {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                                               "data": {"password": base64.b64encode(b"pw").decode()}})
    admin.create(ns_path(kube_ns, "configmaps"), {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
                                                  "data": {"greeting": "hello", "file.txt": "content\n"}})
    env = [
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
        {"name": "MSG", "value": "$(GREETING) world $$(GREETING) $(UNDEFINED)"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    p = pod("p", init=[
        sh("first", "echo first >> /data/order; mkdir -p /private; echo secret > /private/f",
           volumeMounts=[{"name": "data", "mountPath": "/data"}]),
        sh("second", "echo second >> /data/order", volumeMounts=[{"name": "data", "mountPath": "/data"}]),
    ], containers=[
        sh("main", "cat /data/order; cat /etc/cfg/file.txt; echo \"$MSG\"; echo arg=$(POD);"
                   " test \"$PASSWORD\" = pw && echo password-ok; cat /sub/x;"
                   " if test -e /private/f; then echo private-visible; else echo private-hidden; fi;"
                   " if (echo x > /data/w) 2>/dev/null; then echo writable; else echo read-only; fi;"
                   " printf done > /dev/termination-log; exit 3",
           env=env, volumeMounts=[
               {"name": "data", "mountPath": "/data", "readOnly": True},
               {"name": "data", "mountPath": "/sub", "subPath": "nested"},
               {"name": "cfg", "mountPath": "/etc/cfg"},
           ]),
    ], volumes=[{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "cm"}}])
    p["spec"]["initContainers"].insert(0, sh("nested", "mkdir -p /d/nested && echo in-subpath > /d/nested/x",
                                             volumeMounts=[{"name": "data", "mountPath": "/d"}]))
    admin.create(ns_path(kube_ns, "pods"), p)
    done = wait_pod(admin, kube_ns, "p", phase_in("Succeeded", "Failed"), 90, "phase Failed")
    assert done["status"]["phase"] == "Failed"
    assert done["spec"]["nodeName"] == node.node_name
    main = statuses(done)["main"]["state"]["terminated"]
    assert main["exitCode"] == 3 and main["reason"] == "Error" and main["message"] == "done", main
    inits = statuses(done, "initContainerStatuses")
    assert [n for n in inits] == ["nested", "first", "second"]
    assert all(s["state"]["terminated"]["exitCode"] == 0 for s in inits.values()), inits
    out = logs(kube_plane, kube_ns, "p", "main").splitlines()
    assert out == ["first", "second", "content", "hello world $(GREETING) $(UNDEFINED)", "arg=p", "password-ok",
                   "in-subpath", "private-hidden", "read-only"], out
    # Nothing a container wrote outside its mounts reached the host.
    assert not Path("/private").exists() and not Path("/data").exists() and not Path("/sub").exists()


def test_a_missing_secret_key_or_image_leaves_the_container_waiting_with_the_reason(kube_plane, node, kube_ns):
    admin = kube_plane.admin
    admin.create(ns_path(kube_ns, "secrets"), {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                                               "data": {"a": "YQ=="}})
    admin.create(ns_path(kube_ns, "pods"), pod("nokey", [sh("c", "true", env=[
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "missing"}}}])]))
    admin.create(ns_path(kube_ns, "pods"), pod("noimage", [{"name": "c", "image": "not/in-table:1"}]))

    def waiting(reason):
        return lambda p: any(c["state"].get("waiting", {}).get("reason") == reason
                             for c in p.get("status", {}).get("containerStatuses", []))
    p = wait_pod(admin, kube_ns, "nokey", waiting("CreateContainerConfigError"), 60, "CreateContainerConfigError")
    assert "missing" in p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert p["status"]["phase"] == "Pending"
    p = wait_pod(admin, kube_ns, "noimage", waiting("ErrImagePull"), 60, "ErrImagePull")
    assert "not/in-table:1" in p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]


def test_on_failure_restarts_until_success_and_keeps_the_previous_log(kube_plane, node, kube_ns):
    admin = kube_plane.admin
    script = "n=$(cat /d/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /d/n; echo run $n; [ $n -ge 3 ]"
    admin.create(ns_path(kube_ns, "pods"), pod("r", [sh("c", script, volumeMounts=[{"name": "d", "mountPath": "/d"}])],
                                               volumes=[{"name": "d", "emptyDir": {}}], policy="OnFailure"))
    done = wait_pod(admin, kube_ns, "r", phase_in("Succeeded", "Failed"), 90, "phase Succeeded")
    c = statuses(done)["c"]
    assert done["status"]["phase"] == "Succeeded" and c["restartCount"] == 2, c
    assert c["lastState"]["terminated"]["exitCode"] == 1
    assert logs(kube_plane, kube_ns, "r", "c") == "run 3\n"
    assert logs(kube_plane, kube_ns, "r", "c", previous="true") == "run 2\n"


def test_the_job_controller_runs_jobs_and_the_garbage_collector_removes_their_pods(kube_plane, node, kube_ns):
    admin = kube_plane.admin
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"backoffLimit": 0, "template": {"spec": {
               "restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
               "containers": [sh("work", "echo job-ran")]}}}}
    admin.create(ns_path(kube_ns, "jobs", group="batch"), job)
    wait_for(lambda: admin.get(ns_path(kube_ns, "jobs", "j", group="batch")).get("status", {}).get("succeeded") == 1,
             90, "Job j to succeed", interval=0.3)
    pods = admin.get(ns_path(kube_ns, "pods") + "?labelSelector=job-name%3Dj")["items"]
    assert len(pods) == 1
    assert logs(kube_plane, kube_ns, pods[0]["metadata"]["name"], "work") == "job-ran\n"
    admin.delete(ns_path(kube_ns, "jobs", "j", group="batch"),
                 {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
    wait_for(lambda: admin.get(ns_path(kube_ns, "pods"))["items"] == [], 90,
             "the garbage collector and the kubelet to remove the Job's Pod", interval=0.3)
