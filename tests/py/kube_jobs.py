"""The stand-in's Job controller: runs each Job's pod template as local processes.

Containers (initContainers, then containers, in order) run their argv only (the image is
ignored; etcd images have no shell): the program is looked up by basename in the tools dir,
then in the built-binaries dir. Volume mounts are rewritten to local directories (PVC ->
its bound dir, Secret/ConfigMap -> files, emptyDir -> temp dir); other absolute paths are left alone
(they may be etcd keys), and the working directory is the pod's own scratch dir. Pods, Job status and
conditions follow the real Job controller; activeDeadlineSeconds and backoffLimit are enforced.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from etcd_cluster import scrubbed_env

SHELLS = {"sh", "bash", "ash", "dash", "zsh", "busybox", "ksh"}
LOG_LINES = 10  # lines of output kept in a terminated container's message


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Pending(Exception):
    """The pod cannot start (e.g. a volume's Secret or PVC is missing): it stays Pending."""


class _Gone(Exception):
    """The Job or pod was deleted, or the stand-in stops."""


class JobController:
    def __init__(self, standin):
        self.s = standin
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: dict[int, subprocess.Popen] = {}
        self._gone_jobs: set[str] = set()  # uids of deleted Jobs
        self._gone_pods: set[tuple] = set()
        self._logs: dict[tuple, list] = {}  # (ns, job) -> [(pod, container, path)]
        self._mu = threading.Lock()

    # ---- called by the stand-in ------------------------------------------------------------

    def launch(self, ns: str, name: str) -> None:
        t = threading.Thread(target=self._run_guarded, args=(ns, name), name=f"job-{ns}-{name}", daemon=True)
        with self._mu:
            self._threads.append(t)
        t.start()

    def forget(self, ns: str, name: str, uid: str) -> None:
        with self._mu:
            self._gone_jobs.add(uid)

    def pod_deleted(self, ns: str, name: str) -> None:
        with self._mu:
            self._gone_pods.add((ns, name))

    def stop(self) -> None:
        self._stopping.set()
        with self._mu:
            procs = list(self._procs.values())
            threads = list(self._threads)
        for p in procs:
            _kill(p)
        for t in threads:
            t.join(5)

    def logs(self, ns: str, name: str) -> str:
        with self._mu:
            entries = list(self._logs.get((ns, name), []))
        out = []
        for pod, container, path in entries:
            out.append(f"==> {pod}/{container} <==\n")
            out.append(_read(path))
        return "".join(out)

    def container_log(self, ns: str, pod: str, container: str) -> str:
        with self._mu:
            entries = [e for es in self._logs.values() for e in es]
        for p, c, path in reversed(entries):
            if p == pod and c == container:
                return _read(path)
        return ""

    # ---- the controller loop ------------------------------------------------------------------

    def _run_guarded(self, ns, name):
        try:
            self._run(ns, name)
            self._ttl(ns, name)
        except _Gone:
            pass
        except Exception as e:  # noqa: BLE001 - a stand-in bug must show up in the test
            import traceback

            traceback.print_exc()
            with self.s.lock:
                self.s.job_problems.append(f"job {ns}/{name}: stand-in error {e!r}")

    def _ttl(self, ns, name):
        """The TTL-after-finished controller: delete a finished Job (Background) after its TTL."""
        with self.s.lock:
            job = self.s._store.get(("jobs", ns, name))
            if job is None or job["spec"].get("ttlSecondsAfterFinished") is None:
                return
            uid, ttl = job["metadata"]["uid"], job["spec"]["ttlSecondsAfterFinished"]
        end = time.monotonic() + ttl
        while time.monotonic() < end:
            with self.s.lock:
                self._job(ns, name, uid)
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        with self.s.lock:
            self._job(ns, name, uid)
            self.s._remove("jobs", ns, name, "Background")

    def _job(self, ns, name, uid):
        job = self.s._store.get(("jobs", ns, name))
        if job is None or job["metadata"]["uid"] != uid or uid in self._gone_jobs or self._stopping.is_set():
            raise _Gone()
        return job

    def _update_status(self, ns, name, uid, fn) -> None:
        with self.s.lock:
            job = copy.deepcopy(self._job(ns, name, uid))
            status = job.setdefault("status", {})
            fn(status)
            self.s._set("jobs", ns, name, job)

    def _run(self, ns, name):
        with self.s.lock:
            job = self.s._store.get(("jobs", ns, name))
            if job is None:
                return
            job = copy.deepcopy(job)
        uid = job["metadata"]["uid"]
        spec = job["spec"]
        backoff_limit = spec.get("backoffLimit", 6)
        deadline_s = spec.get("activeDeadlineSeconds")
        started = time.monotonic()
        deadline = started + deadline_s if deadline_s else None

        def begin(st):
            st["startTime"] = _now()
            st["active"] = 1
            st["ready"] = 0
            st["terminating"] = 0
            st["uncountedTerminatedPods"] = {}
        self._update_status(ns, name, uid, begin)

        failures = 0
        for _attempt in range(1000):
            pod_name = self._create_pod(ns, job)
            outcome, reason, message = self._run_pod(ns, job, pod_name, deadline, backoff_limit)
            if outcome == "succeeded":
                def done(st):
                    st.pop("active", None)
                    st["succeeded"] = 1
                    st["ready"] = 0
                    st["completionTime"] = _now()
                    st["conditions"] = [_cond("SuccessCriteriaMet", "CompletionsReached",
                                              "Reached expected number of succeeded pods"),
                                        _cond("Complete", "CompletionsReached",
                                              "Reached expected number of succeeded pods")]
                self._update_status(ns, name, uid, done)
                return
            failures += 1 if outcome == "failed" else 0
            if outcome == "deadline":
                self._finish_failed(ns, name, uid, failures or 1, "DeadlineExceeded",
                                    "Job was active longer than specified deadline")
                return
            if failures > backoff_limit or outcome == "failed_final":
                self._finish_failed(ns, name, uid, failures, "BackoffLimitExceeded",
                                    "Job has reached the specified backoff limit")
                return

            def failed_once(st, n=failures):
                st["failed"] = n
                st["active"] = 1
            self._update_status(ns, name, uid, failed_once)
            # back off before the next pod (the real controller: 10 s doubling; here backoff_base)
            wait_until = time.monotonic() + self.s.backoff_base * (2 ** (failures - 1))
            while time.monotonic() < wait_until:
                with self.s.lock:
                    self._job(ns, name, uid)
                if deadline and time.monotonic() >= deadline:
                    self._finish_failed(ns, name, uid, failures, "DeadlineExceeded",
                                        "Job was active longer than specified deadline")
                    return
                time.sleep(0.02)

    def _finish_failed(self, ns, name, uid, failures, reason, message):
        def fail(st):
            st.pop("active", None)
            st["failed"] = max(failures, 1)
            st["ready"] = 0
            st["conditions"] = [_cond("FailureTarget", reason, message), _cond("Failed", reason, message)]
        self._update_status(ns, name, uid, fail)

    def _create_pod(self, ns, job) -> str:
        tmpl = job["spec"]["template"]
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": f"{job['metadata']['name']}-",
                "namespace": ns,
                "labels": dict((tmpl.get("metadata") or {}).get("labels") or {}),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                     "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": copy.deepcopy(tmpl.get("spec") or {}),
            "status": {"phase": "Pending"},
        }
        if (tmpl.get("metadata") or {}).get("annotations"):
            pod["metadata"]["annotations"] = dict(tmpl["metadata"]["annotations"])
        pod["spec"]["nodeName"] = "standin-node"
        with self.s.lock:
            self._job(ns, job["metadata"]["name"], job["metadata"]["uid"])
            for _ in range(20):
                candidate = pod["metadata"]["generateName"] + _suffix()
                if ("pods", ns, candidate) not in self.s._store:
                    break
            pod["metadata"]["name"] = candidate
            from kube_api import resource_for

            self.s._insert(resource_for("pods"), ns, pod)
        return candidate

    def _set_pod_status(self, ns, pod_name, fn) -> None:
        with self.s.lock:
            pod = self.s._store.get(("pods", ns, pod_name))
            if pod is None:
                return
            pod = copy.deepcopy(pod)
            fn(pod.setdefault("status", {}))
            self.s._set("pods", ns, pod_name, pod)

    def _check(self, ns, job, pod_name):
        with self.s.lock:
            self._job(ns, job["metadata"]["name"], job["metadata"]["uid"])
            if (ns, pod_name) in self._gone_pods or ("pods", ns, pod_name) not in self.s._store:
                raise _Gone()

    def _run_pod(self, ns, job, pod_name, deadline, backoff_limit):
        """Run one pod; returns (outcome, reason, message) with outcome succeeded|failed|deadline."""
        spec = job["spec"]["template"]["spec"]
        pod_dir = self.s.dir / "pods" / ns / pod_name
        pod_dir.mkdir(parents=True, exist_ok=True)
        # volumes: wait (bounded by the deadline and the stand-in's life) while they cannot mount
        for _ in range(1000000):
            self._check(ns, job, pod_name)
            try:
                mounts = self._volumes(ns, spec, pod_dir)
                break
            except _Pending as e:
                self._set_pod_status(ns, pod_name, lambda st, m=str(e): st.update(
                    {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                     "message": m, "reason": "ContainerCreating"}))
                if deadline and time.monotonic() >= deadline:
                    return self._pod_deadline(ns, pod_name)
                time.sleep(0.05)
        self._set_pod_status(ns, pod_name, lambda st: st.update(
            {"phase": "Running", "startTime": _now(), "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
             "message": None, "reason": None}) or _drop_none(st))
        restart_policy = spec.get("restartPolicy")
        groups = [("initContainerStatuses", spec.get("initContainers") or []),
                  ("containerStatuses", spec.get("containers") or [])]
        for status_field, containers in groups:
            for c in containers:
                restarts = 0
                while True:
                    code, reason, message, started_at = self._run_container(ns, job, pod_name, pod_dir, c, mounts,
                                                                             deadline)
                    if code is None:  # deadline
                        self._record_container(ns, pod_name, status_field, c, 137, "Error", message, started_at,
                                               restarts)
                        return self._pod_deadline(ns, pod_name)
                    self._record_container(ns, pod_name, status_field, c, code, reason, message, started_at, restarts)
                    if code == 0:
                        break
                    if restart_policy == "OnFailure" and restarts < backoff_limit:
                        restarts += 1
                        time.sleep(min(self.s.backoff_base * (2 ** (restarts - 1)), 5))
                        continue
                    self._set_pod_status(ns, pod_name, lambda st: st.update({"phase": "Failed"}))
                    return ("failed_final" if restart_policy == "OnFailure" else "failed"), reason, message
        self._set_pod_status(ns, pod_name, lambda st: st.update({"phase": "Succeeded"}))
        return "succeeded", None, None

    def _pod_deadline(self, ns, pod_name):
        msg = "Pod was active on the node longer than the specified deadline"
        self._set_pod_status(ns, pod_name, lambda st: st.update(
            {"phase": "Failed", "reason": "DeadlineExceeded", "message": msg}))
        return "deadline", "DeadlineExceeded", msg

    def _record_container(self, ns, pod_name, field, c, code, reason, message, started_at, restarts):
        entry = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                 "restartCount": restarts, "started": False, "containerID": f"standin://{pod_name}-{c['name']}",
                 "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": started_at,
                                          "finishedAt": _now(), "containerID": f"standin://{pod_name}-{c['name']}"}}}
        if message:
            entry["state"]["terminated"]["message"] = message

        def upd(st):
            lst = [s for s in st.get(field) or [] if s["name"] != c["name"]]
            lst.append(entry)
            st[field] = lst
        self._set_pod_status(ns, pod_name, upd)

    # ---- volumes, env and argv ------------------------------------------------------------------

    def _volumes(self, ns, spec, pod_dir: Path) -> dict:
        out = {}
        for v in spec.get("volumes") or []:
            name = v["name"]
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                try:
                    out[name] = self.s.pvc_dir(ns, claim)
                except KeyError:
                    raise _Pending(f'persistentvolumeclaim "{claim}" not found') from None
            elif "secret" in v or "configMap" in v:
                is_secret = "secret" in v
                src = v["secret" if is_secret else "configMap"]
                obj_name = src.get("secretName" if is_secret else "name")
                with self.s.lock:
                    obj = self.s._store.get(("secrets" if is_secret else "configmaps", ns, obj_name))
                    obj = copy.deepcopy(obj)
                d = pod_dir / "volumes" / name
                d.mkdir(parents=True, exist_ok=True)
                if obj is None:
                    if src.get("optional"):
                        out[name] = d
                        continue
                    raise _Pending(f'{"secret" if is_secret else "configmap"} "{obj_name}" not found')
                if is_secret:
                    files = {k: base64.b64decode(val) for k, val in (obj.get("data") or {}).items()}
                else:
                    files = {k: val.encode() for k, val in (obj.get("data") or {}).items()}
                    files.update({k: base64.b64decode(val) for k, val in (obj.get("binaryData") or {}).items()})
                items = src.get("items")
                mode = src.get("defaultMode", 0o644)
                if items:
                    for it in items:
                        if it["key"] not in files:
                            if src.get("optional"):
                                continue
                            raise _Pending(f'key "{it["key"]}" not found in {obj_name}')
                        _write_file(d / it["path"], files[it["key"]], it.get("mode", mode))
                else:
                    for k, data in files.items():
                        _write_file(d / k, data, mode)
                out[name] = d
            elif "emptyDir" in v:
                d = pod_dir / "volumes" / name
                d.mkdir(parents=True, exist_ok=True)
                out[name] = d
            else:
                kinds = [k for k in v if k != "name"]
                with self.s.lock:
                    self.s.job_problems.append(f"volume {name}: type {kinds} is not supported by the stand-in")
                raise _Pending(f"volume {name}: unsupported type {kinds}")
        return out

    def _mount_map(self, c, mounts: dict) -> list[tuple[str, str]]:
        pairs = []
        for m in c.get("volumeMounts") or []:
            local = mounts[m["name"]]
            if m.get("subPath"):
                local = local / m["subPath"]
                local.mkdir(parents=True, exist_ok=True)
            pairs.append((m["mountPath"].rstrip("/") or "/", str(local)))
        pairs.sort(key=lambda p: -len(p[0]))
        return pairs

    def _env(self, ns, c, pod_name) -> dict:
        env: dict[str, str] = {}
        with self.s.lock:
            store = self.s._store
            for ef in c.get("envFrom") or []:
                ref = ef.get("secretRef") or ef.get("configMapRef")
                obj = store.get(("secrets" if "secretRef" in ef else "configmaps", ns, ref["name"]))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise _Pending(f'{"secret" if "secretRef" in ef else "configmap"} "{ref["name"]}" not found')
                for k, v in (obj.get("data") or {}).items():
                    env[ef.get("prefix", "") + k] = base64.b64decode(v).decode() if "secretRef" in ef else v
            for e in c.get("env") or []:
                if "valueFrom" not in e:
                    env[e["name"]] = _expand(e.get("value", ""), env)
                    continue
                vf = e["valueFrom"]
                if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    is_secret = "secretKeyRef" in vf
                    ref = vf["secretKeyRef" if is_secret else "configMapKeyRef"]
                    obj = store.get(("secrets" if is_secret else "configmaps", ns, ref["name"]))
                    data = (obj or {}).get("data") or {}
                    if ref["key"] not in data:
                        if ref.get("optional"):
                            continue
                        raise _Pending(f'{"secret" if is_secret else "configmap"} "{ref["name"]}" key '
                                       f'"{ref["key"]}" not found')
                    env[e["name"]] = base64.b64decode(data[ref["key"]]).decode() if is_secret else data[ref["key"]]
                elif "fieldRef" in vf:
                    path = vf["fieldRef"]["fieldPath"]
                    env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": ns,
                                      "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1",
                                      "spec.nodeName": "standin-node"}.get(path, "")
                else:
                    self.s.job_problems.append(f"container {c['name']}: env {e['name']} valueFrom {list(vf)} "
                                               "is not supported by the stand-in")
        return env

    def _resolve(self, prog: str) -> str | None:
        base = os.path.basename(prog)
        for d in [self.s.tools_bin, self.s.bin_dir]:
            if d is not None and (Path(d) / base).is_file() and os.access(Path(d) / base, os.X_OK):
                return str(Path(d) / base)
        return None

    def _wait_unheld(self, ns, job, pod_name, c, deadline) -> bool:
        """While the test holds containers of this name (`hold_containers`), the container does
        not start, like one whose image is still being pulled; False when the deadline passed."""
        while True:
            with self.s.lock:
                held = c["name"] in self.s._held_containers
            if not held:
                return True
            self._check(ns, job, pod_name)
            if deadline and time.monotonic() >= deadline:
                return False
            if self._stopping.wait(0.05):
                raise _Gone()

    def _run_container(self, ns, job, pod_name, pod_dir, c, mounts, deadline):
        """Run one container to its end: (exit code or None on deadline, reason, message, startedAt)."""
        if not self._wait_unheld(ns, job, pod_name, c, deadline):
            return None, "DeadlineExceeded", "", _now()
        started_at = _now()
        log_path = pod_dir / f"{c['name']}.log"
        with self._mu:
            self._logs.setdefault((ns, job["metadata"]["name"]), []).append((pod_name, c["name"], log_path))
        # etcd images have no ENTRYPOINT: without `command`, `args` is the argv (args[0] the program)
        argv = list(c.get("command") or []) + list(c.get("args") or [])
        if not argv:
            self._problem(f"pod {ns}/{pod_name} container {c['name']}: no command or args; the stand-in runs argv "
                          "only (an image's default command is unknown here)")
            return 128, "StartError", "no command", started_at
        base = os.path.basename(argv[0])
        if base in SHELLS:
            self._problem(f"pod {ns}/{pod_name} container {c['name']}: runs a shell ({argv[0]}); etcd images have "
                          "no shell since 3.5.7, use argv")
            return 127, "StartError", f'exec: "{argv[0]}": executable file not found in $PATH', started_at
        prog = self._resolve(argv[0])
        if prog is None:
            self._problem(f"pod {ns}/{pod_name} container {c['name']}: program {argv[0]} is not in the tools or "
                          "binaries dir")
            return 128, "StartError", f'exec: "{argv[0]}": executable file not found in $PATH', started_at
        try:
            env = self._env(ns, c, pod_name)
        except _Pending as e:
            return 1, "CreateContainerConfigError", str(e), started_at
        argv = [_expand(a, env) for a in argv]
        pairs = self._mount_map(c, mounts)
        rootfs = pod_dir / "rootfs"
        argv = [prog] + [_rewrite(a, pairs, rootfs) for a in argv[1:]]
        env = {k: _rewrite(v, pairs, rootfs) for k, v in env.items()}
        cwd = _rewrite(c["workingDir"], pairs, rootfs) if c.get("workingDir") else str(rootfs)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        child_env = scrubbed_env()
        child_env = {k: v for k, v in child_env.items() if k in ("PATH", "NO_PROXY", "no_proxy", "LANG")}
        child_env.update({"HOSTNAME": pod_name, "HOME": str(rootfs)})
        child_env.update(env)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env, cwd=cwd,
                                    start_new_session=True)
        with self._mu:
            self._procs[proc.pid] = proc
        try:
            while proc.poll() is None:
                try:
                    self._check(ns, job, pod_name)
                except _Gone:
                    _kill(proc)
                    raise
                if deadline and time.monotonic() >= deadline:
                    _kill(proc)
                    return None, "DeadlineExceeded", _tail(log_path), started_at
                time.sleep(0.02)
        finally:
            with self._mu:
                self._procs.pop(proc.pid, None)
        code = proc.returncode
        if code < 0:
            code = 128 - code
        return code, "Completed" if code == 0 else "Error", (_tail(log_path) if code else None), started_at

    def _problem(self, text: str) -> None:
        with self.s.lock:
            self.s.job_problems.append(text)


def _cond(type_, reason, message):
    now = _now()
    return {"type": type_, "status": "True", "lastProbeTime": now, "lastTransitionTime": now, "reason": reason,
            "message": message}


def _suffix(n=5):
    import random

    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def _drop_none(st):
    for k in [k for k, v in st.items() if v is None]:
        del st[k]


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _read(path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _tail(path, n=LOG_LINES) -> str:
    return "\n".join(_read(path).splitlines()[-n:])


def _write_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode & 0o777)


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(s: str, env: dict) -> str:
    """Kubernetes $(VAR) expansion: defined vars are replaced, $$ escapes, unknown refs stay."""
    def rep(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR.sub(rep, s)


def _rewrite(s: str, pairs: list[tuple[str, str]], rootfs: Path) -> str:
    """Map container paths under a volume mount in an argument (whole, or after `--flag=`) to local dirs."""
    def one(path: str) -> str:
        if not path.startswith("/"):
            return path
        for mount, local in pairs:
            if path == mount or path.startswith(mount + "/") or mount == "/":
                return local + path[len(mount):]
        return path  # not on a volume (may be an etcd key like /registry/x): left alone

    if s.startswith("/"):
        return one(s)
    m = re.match(r"^(--?[A-Za-z0-9][-A-Za-z0-9_.]*=)(/.*)$", s)
    if m:
        return m.group(1) + one(m.group(2))
    return s
