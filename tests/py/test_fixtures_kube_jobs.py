"""The stand-in's Job controller runs real etcdctl/etcdutl against the real etcd cluster: the
snapshot file really lands in the PVC's directory; deadlines, backoff, pods and logs behave
like the real controller."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

from kube_standin import schema_check
from waiting import wait_for

NS = "kube-system"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"


def seed_tls(kube, cluster, name="etcd-client-tls"):
    secret = kube.put_etcd_tls_secret(cluster, NS, name)
    assert base64.b64decode(secret["data"]["tls.key"]) == cluster.client_key_path.read_bytes()


def seed_pvc(kube, name):
    kube.put_object({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": name, "namespace": NS, "labels": {"etcd.io/snapshot": name}},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}})


def snapshot_job(name, endpoint, pvc, deadline=120, backoff=0, extra_containers=()):
    tls = "/etc/etcd/tls"
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/managed-by": "etcdsnap"}},
        "spec": {
            "backoffLimit": backoff, "activeDeadlineSeconds": deadline,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/managed-by": "etcdsnap"}},
                "spec": {
                    "restartPolicy": "Never",
                    "initContainers": [{
                        "name": "save", "image": "registry.k8s.io/etcd:3.5.21-0",
                        "command": ["etcdctl", "snapshot", "save", "/snapshot/db"],
                        "env": [{"name": "ETCDCTL_ENDPOINTS", "value": endpoint},
                                {"name": "ETCDCTL_CACERT", "value": f"{tls}/ca.crt"},
                                {"name": "ETCDCTL_CERT", "value": f"{tls}/tls.crt"},
                                {"name": "ETCDCTL_KEY", "value": f"{tls}/tls.key"}],
                        "volumeMounts": [{"name": "snapshot", "mountPath": "/snapshot"},
                                         {"name": "tls", "mountPath": tls, "readOnly": True}],
                    }],
                    "containers": [{
                        "name": "verify", "image": "registry.k8s.io/etcd:3.5.21-0",
                        "command": ["etcdutl", "snapshot", "status", "/snapshot/db", "--write-out=json"],
                        "volumeMounts": [{"name": "snapshot", "mountPath": "/snapshot", "readOnly": True}],
                    }, *extra_containers],
                    "volumes": [{"name": "snapshot", "persistentVolumeClaim": {"claimName": pvc}},
                                {"name": "tls", "secret": {"secretName": "etcd-client-tls", "defaultMode": 0o400}}],
                },
            },
        },
    }


def check_all_stored_objects_valid(kube):
    for kind in ("jobs", "pods", "persistentvolumeclaims", "persistentvolumes", "secrets"):
        for o in kube.objects(kind):
            assert schema_check(o) is None, (kind, o["metadata"]["name"], schema_check(o))


def test_snapshot_job_writes_a_real_snapshot_into_the_pvc(kube, etcd_cluster):
    etcd_cluster.put("/job/key", "value")
    seed_tls(kube, etcd_cluster)
    seed_pvc(kube, "snap-1")
    c = kube.client()
    st, created, _ = c.post(JOBS, snapshot_job("snap-1", etcd_cluster.client_urls[1], "snap-1"))
    assert st == 201, created
    done = kube.wait_job(NS, "snap-1", 60)
    conds = {x["type"]: x for x in done["status"]["conditions"]}
    assert conds["Complete"]["status"] == "True" and "Failed" not in conds, kube.job_logs(NS, "snap-1")
    assert done["status"]["succeeded"] == 1 and "active" not in done["status"] and done["status"]["completionTime"]
    snap = kube.pvc_dir(NS, "snap-1") / "db"
    assert snap.is_file() and snap.stat().st_size > 0
    out = subprocess.run([str(etcd_cluster.tools / "etcdutl"), "snapshot", "status", str(snap), "-w", "json"],
                         capture_output=True, timeout=30, check=True)
    status = json.loads(out.stdout)
    assert status["totalKey"] >= 1 and status["revision"] >= 1
    assert json.loads(kube.job_logs(NS, "snap-1").split("==> ")[-1].split("\n", 1)[1])["hash"] == status["hash"]
    # the pod, listed the way the driver finds it
    st, pods, _ = c.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=job-name%3Dsnap-1")
    assert st == 200 and len(pods["items"]) == 1
    pod = pods["items"][0]
    assert pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "snap-1"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    st, log, _ = c.get(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/log?container=verify")
    assert st == 200 and json.loads(log)["hash"] == status["hash"]
    check_all_stored_objects_valid(kube)
    # deleting the Job with Background propagation removes its pods too
    assert c.delete(f"{JOBS}/snap-1?propagationPolicy=Background")[0] == 200
    assert kube.objects("pods", NS) == []
    c.close()


def test_job_delete_defaults_to_orphaning_pods(kube, etcd_cluster):
    seed_tls(kube, etcd_cluster)
    seed_pvc(kube, "snap-o")
    c = kube.client()
    c.post(JOBS, snapshot_job("snap-o", etcd_cluster.client_urls[0], "snap-o"))
    kube.wait_job(NS, "snap-o", 60)
    assert c.delete(f"{JOBS}/snap-o")[0] == 200
    pods = kube.objects("pods", NS)
    assert len(pods) == 1 and "ownerReferences" not in pods[0]["metadata"]
    c.close()


def test_failing_job_retries_to_the_backoff_limit_and_reports_the_reason(kube, etcd_cluster):
    seed_tls(kube, etcd_cluster)
    seed_pvc(kube, "snap-bad")
    c = kube.client()
    dead = "https://127.0.0.1:1"  # nothing listens: etcdctl fails
    job = snapshot_job("snap-bad", dead, "snap-bad", backoff=1)
    job["spec"]["template"]["spec"]["initContainers"][0]["command"] += ["--dial-timeout=300ms",
                                                                        "--command-timeout=1s"]
    assert c.post(JOBS, job)[0] == 201
    done = kube.wait_job(NS, "snap-bad", 60)
    failed = [x for x in done["status"]["conditions"] if x["type"] == "Failed"][0]
    assert failed["reason"] == "BackoffLimitExceeded" and failed["message"] == "Job has reached the specified backoff limit"
    assert done["status"]["failed"] == 2 and "succeeded" not in done["status"]
    pods = c.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3Dsnap-bad")[1]["items"]
    assert len(pods) == 2 and all(p["status"]["phase"] == "Failed" for p in pods)
    term = pods[0]["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] != 0 and term["reason"] == "Error"
    assert "127.0.0.1:1" in term["message"] or "deadline" in term["message"], term["message"]
    assert "containerStatuses" not in pods[0]["status"], "containers after a failed init container must not run"
    assert not (kube.pvc_dir(NS, "snap-bad") / "db").exists()
    check_all_stored_objects_valid(kube)
    c.close()


def test_active_deadline_kills_the_process_and_fails_the_job(kube, etcd_cluster, tmp_path):
    seed_tls(kube, etcd_cluster)
    seed_pvc(kube, "snap-slow")
    marker = "lifeboat-deadline-" + str(os.getpid())
    watch = {"name": "hang", "image": "registry.k8s.io/etcd:3.5.21-0",
             "command": ["etcdctl", "watch", f"/{marker}", f"--endpoints={etcd_cluster.client_urls[0]}",
                         "--cacert=/tls/ca.crt", "--cert=/tls/tls.crt", "--key=/tls/tls.key"],
             "volumeMounts": [{"name": "tls", "mountPath": "/tls"}]}
    job = snapshot_job("snap-slow", etcd_cluster.client_urls[0], "snap-slow", deadline=2, backoff=3,
                       extra_containers=[watch])
    c = kube.client()
    started = time.monotonic()
    assert c.post(JOBS, job)[0] == 201
    done = kube.wait_job(NS, "snap-slow", 30)
    assert time.monotonic() - started >= 2
    failed = [x for x in done["status"]["conditions"] if x["type"] == "Failed"][0]
    assert failed["reason"] == "DeadlineExceeded"
    assert failed["message"] == "Job was active longer than specified deadline"
    pod = kube.objects("pods", NS)[0]
    assert pod["status"]["phase"] == "Failed" and pod["status"]["reason"] == "DeadlineExceeded"
    # the watch process is gone: nothing runs etcdctl with our marker any more
    wait_for(lambda: not any(marker in _cmdline(p) for p in os.listdir("/proc") if p.isdigit()), 5,
             "the killed container process to vanish")
    check_all_stored_objects_valid(kube)
    c.close()


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def test_held_jobs_stay_pending_until_released(kube, etcd_cluster):
    seed_tls(kube, etcd_cluster)
    seed_pvc(kube, "snap-held")
    kube.hold_jobs()
    c = kube.client()
    c.post(JOBS, snapshot_job("snap-held", etcd_cluster.client_urls[2], "snap-held"))
    time.sleep(0.3)
    job = c.get(f"{JOBS}/snap-held")[1]
    assert job["status"] == {} and kube.objects("pods", NS) == []
    kube.release_jobs()
    done = kube.wait_job(NS, "snap-held", 60)
    assert done["status"]["succeeded"] == 1
    c.close()


def test_missing_pvc_keeps_the_pod_pending_until_the_deadline(kube, etcd_cluster):
    seed_tls(kube, etcd_cluster)
    c = kube.client()
    c.post(JOBS, snapshot_job("snap-nopvc", etcd_cluster.client_urls[0], "does-not-exist", deadline=1))
    done = kube.wait_job(NS, "snap-nopvc", 20)
    assert [x["reason"] for x in done["status"]["conditions"] if x["type"] == "Failed"] == ["DeadlineExceeded"]
    c.close()


def test_shell_commands_and_unknown_programs_are_flagged(kube, etcd_cluster):
    c = kube.client()
    for name, cmd in (("shell", ["/bin/sh", "-c", "etcdctl snapshot save /x"]), ("unknown", ["kubectl", "get"])):
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
               "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                   {"name": "c", "image": "registry.k8s.io/etcd:3.5.21-0", "command": cmd}]}}}}
        assert c.post(JOBS, job)[0] == 201
        done = kube.wait_job(NS, name, 20)
        assert done["status"]["failed"] == 1
    assert len(kube.job_problems) == 2
    assert "shell" in kube.job_problems[0] and "kubectl" in kube.job_problems[1]
    kube.job_problems.clear()
    c.close()


def test_env_from_secret_and_configmap_and_var_expansion(kube, etcd_cluster):
    seed_tls(kube, etcd_cluster)
    etcd_cluster.put("/env/k", "from-env")
    kube.put_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ep", "namespace": NS},
                     "data": {"endpoint": etcd_cluster.client_urls[0]}})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "envjob"},
           "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
               "name": "get", "image": "registry.k8s.io/etcd:3.5.21-0",
               "command": ["etcdctl", "get", "$(KEY)", "--print-value-only", "--endpoints=$(EP)"],
               "env": [{"name": "KEY", "value": "/env/k"},
                       {"name": "EP", "valueFrom": {"configMapKeyRef": {"name": "ep", "key": "endpoint"}}},
                       {"name": "ETCDCTL_CACERT", "value": "/tls/ca.crt"},
                       {"name": "ETCDCTL_CERT", "value": "/tls/tls.crt"},
                       {"name": "ETCDCTL_KEY", "value": "/tls/tls.key"}],
               "volumeMounts": [{"name": "tls", "mountPath": "/tls"}]}],
               "volumes": [{"name": "tls", "secret": {"secretName": "etcd-client-tls",
                                                      "items": [{"key": "ca.crt", "path": "ca.crt"},
                                                                {"key": "tls.crt", "path": "tls.crt"},
                                                                {"key": "tls.key", "path": "tls.key"}]}}]}}}}
    c = kube.client()
    assert c.post(JOBS, job)[0] == 201
    done = kube.wait_job(NS, "envjob", 30)
    assert done["status"].get("succeeded") == 1, kube.job_logs(NS, "envjob")
    assert kube.job_logs(NS, "envjob").splitlines()[-1] == "from-env"
    c.close()


def test_args_only_container_status_subresource_and_log_tail(kube, etcd_cluster):
    c = kube.client()
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "argsonly"},
           "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
               "name": "v", "image": "registry.k8s.io/etcd:3.5.21-0", "args": ["etcdutl", "version"]}]}}}}
    assert c.post(JOBS, job)[0] == 201
    done = kube.wait_job(NS, "argsonly", 20)
    assert done["status"]["succeeded"] == 1
    st, status_view, _ = c.get(f"{JOBS}/argsonly/status")
    assert st == 200 and status_view["status"]["succeeded"] == 1
    # a PUT of the main resource cannot change status
    done["status"]["succeeded"] = 0
    done["metadata"]["labels"]["seen"] = "yes"
    st, updated, _ = c.put(f"{JOBS}/argsonly", done)
    assert st == 200 and updated["status"]["succeeded"] == 1 and updated["metadata"]["labels"]["seen"] == "yes"
    pod = kube.objects("pods", NS)[0]["metadata"]["name"]
    st, log, _ = c.get(f"/api/v1/namespaces/{NS}/pods/{pod}/log?tailLines=1")
    assert st == 200 and log.startswith("API version:")
    assert c.get(f"/api/v1/namespaces/{NS}/pods/{pod}/log?container=nope")[0] == 400
    c.close()


def test_stopping_the_standin_kills_running_containers(tmp_path, tools_bin, etcd_cluster):
    from kube_standin import KubeStandin

    marker = f"lifeboat-stop-{os.getpid()}"
    k = KubeStandin(tmp_path / "k", tools_bin).start()
    seed_tls(k, etcd_cluster)
    c = k.client()
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "forever"},
           "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
               "name": "w", "image": "registry.k8s.io/etcd:3.5.21-0",
               "command": ["etcdctl", "watch", f"/{marker}", f"--endpoints={etcd_cluster.client_urls[0]}",
                           "--cacert=/tls/ca.crt", "--cert=/tls/tls.crt", "--key=/tls/tls.key"],
               "volumeMounts": [{"name": "tls", "mountPath": "/tls"}]}],
               "volumes": [{"name": "tls", "secret": {"secretName": "etcd-client-tls"}}]}}}}
    assert c.post(JOBS, job)[0] == 201
    wait_for(lambda: any(marker in _cmdline(p) for p in os.listdir("/proc") if p.isdigit()), 10,
             "the container process to start")
    c.close()
    k.stop()
    wait_for(lambda: not any(marker in _cmdline(p) for p in os.listdir("/proc") if p.isdigit()), 5,
             "the container process to be killed by stop()")
    assert k.job_problems == [] and k.schema_failures == []


def test_ttl_after_finished_deletes_the_job_and_its_pods(kube, etcd_cluster):
    c = kube.client()
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "ttl"},
           "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 0, "template": {"spec": {
               "restartPolicy": "Never", "containers": [{"name": "v", "image": "registry.k8s.io/etcd:3.5.21-0",
                                                         "command": ["etcdctl", "version"]}]}}}}
    assert c.post(JOBS, job)[0] == 201
    wait_for(lambda: c.get(f"{JOBS}/ttl")[0] == 404, 20, "the finished Job to be deleted by its TTL")
    assert kube.objects("pods", NS) == []
    c.close()


def test_concurrent_jobs_lists_and_deletes(kube):
    import threading

    errors = []

    def worker(n):
        c = kube.client()
        try:
            for i in range(3):
                name = f"w{n}-{i}"
                job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                       "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                           {"name": "v", "image": "registry.k8s.io/etcd:3.5.21-0", "command": ["etcdutl", "version"]}]}}}}
                assert c.post(JOBS, job)[0] == 201
                c.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=job-name%3D{name}")
                if i == 1:  # delete one while it may still run
                    assert c.delete(f"{JOBS}/{name}?propagationPolicy=Background")[0] == 200
                else:
                    assert kube.wait_job(NS, name, 30)["status"]["succeeded"] == 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and errors == []
    names = sorted(j["metadata"]["name"] for j in kube.objects("jobs", NS))
    assert names == sorted(f"w{n}-{i}" for n in range(4) for i in (0, 2))
    wait_for(lambda: all(p["metadata"]["labels"]["job-name"] in names for p in kube.objects("pods", NS)), 10,
             "pods of deleted Jobs to be collected")
