"""The process kubelet: the smallest honest node for the real control plane (no kubelet or
container runtime can run here). It talks to kube-apiserver only through the API, as a node
(`system:node:<name>`, so the Node authorizer and NodeRestriction apply) and, for binding, as
`system:kube-scheduler`.

What it does:
- registers a Node whose InternalIP is 127.0.0.1 and whose kubelet port is its own HTTPS server
  (serving certificate from the test CA; client certificates from that CA required), so the
  apiserver's `pods/log` proxy reaches it: GET /containerLogs/<ns>/<pod>/<container> with
  `tailLines`, `limitBytes` and `previous`;
- binds every unscheduled Pod (schedulerName default-scheduler) to its Node;
- runs each container of its Pods as a local process from one explicit table (image ->
  `Image(programs, entrypoint, cmd)`): `command` replaces the entrypoint and `args` the cmd as in
  a container runtime; the executable is looked up among the image's programs only (a command the
  image lacks fails with exit 128 like runc's "executable file not found");
- each container in its own mount namespace (`unshare --mount`, see process_container.py): a
  private root, and bind mounts exactly at its volumeMounts (subPath, subPathExpr, readOnly) over
  emptyDir, persistentVolumeClaim (one folder per claim uid, kept while the kubelet runs), secret
  and configMap folders (items, defaultMode, optional); a path not mounted is private to the
  container, as on a real node;
- env from `value`, `secretKeyRef`, `configMapKeyRef` (optional too), `fieldRef`
  (metadata.name/namespace/uid/labels/annotations, spec.nodeName/serviceAccountName,
  status.podIP/hostIP), and `envFrom`, with the kubelet's `$(VAR)` expansion (`$$` escapes,
  unknown references stay as written) in env values, command and args;
- init containers one after the other, each to exit 0 before the next; then the containers;
  restartPolicy Never/OnFailure/Always with restarts after a backoff (0.2 s doubling to 3 s);
- Pod status through the API (pods/status): phase, conditions, hostIP/podIP, init and container
  statuses with waiting/running/terminated states, exit codes, reasons, restart counts, last
  state and the termination message (terminationMessagePath, FallbackToLogsOnError);
- deletion: SIGTERM, terminationGracePeriodSeconds (at most 30 s), SIGKILL, then the final
  DELETE with grace 0 and a uid precondition, as the kubelet's status manager does;
- runAsUser/runAsGroup/fsGroup/supplementalGroups as process credentials, readOnlyRootFilesystem.

What it does not do: images (no pulling, no layers: programs come from the table and see the
host's /usr and the listed host folders read-only), networking (every Pod shares the host's
network, podIP 127.0.0.1, no Services), resource limits, probes, lifecycle hooks, ephemeral
and native sidecar containers, projected/downwardAPI/hostPath/CSI volumes (a Pod using one
gets a container waiting with reason CreateContainerConfigError naming it), atomic `..data`
updates of secret and configMap volumes after start, capabilities and seccomp, node status
heartbeats and leases, `follow` and timestamps for logs, exec/attach/port-forward; a claim must
exist but its binding (phase Bound, the PV) is not checked. Restarts
stop after `MAX_RESTARTS` (the container then stays waiting in CrashLoopBackOff). Every loop is
bounded in count and time.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import re
import shutil
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from etcd_cluster import free_ports
from kube_control_plane import ControlPlane, KubeError, _die_with_parent, issue_identity, kill

__all__ = ["Image", "ProcessKubelet", "unshare_unavailable"]

HELPER = Path(__file__).resolve().parent / "process_container.py"
MAX_RESTARTS = 6
SYNC_INTERVAL = 0.2
MAX_SYNCS = 2_000_000  # ~4.6 days at SYNC_INTERVAL: a bound, never reached by a test
MAX_GRACE = 30.0
MAX_MESSAGE = 4096


@dataclass
class Image:
    """What a container image means here: `programs` maps an executable name (or absolute path)
    as a Pod's `command` names it to a local program; `entrypoint`/`cmd` as in the image config."""
    programs: dict
    entrypoint: list = field(default_factory=list)
    cmd: list = field(default_factory=list)

    def resolve(self, name: str) -> str | None:
        p = self.programs.get(name) or self.programs.get(os.path.basename(name))
        return os.path.realpath(p) if p else None  # the real file: symlinks may leave the host folders


def unshare_unavailable() -> str | None:
    """Why containers cannot get their own mount namespace here, or None when they can."""
    if os.geteuid() != 0:
        return "the process kubelet needs root for unshare --mount and bind mounts (run the tests as root)"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare (util-linux) is not installed"
    r = subprocess.run([unshare, "--mount", "--propagation", "private", "true"], capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        return f"unshare --mount fails here: {r.stderr.strip()}"
    return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_VAR = re.compile(r"\$\((?P<name>[A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(s: str, env: dict) -> str:
    """The kubelet's $(VAR) expansion: defined names are replaced, `$$` is `$`, the rest stays."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group("name")
        return env[name] if name in env else m.group(0)
    return _VAR.sub(sub, s)


class ConfigError(Exception):
    """Why a container cannot be created (the kubelet's CreateContainerConfigError)."""


class _LogHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    kubelet: "ProcessKubelet"

    def log_message(self, *a):
        pass

    def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        if url.path == "/healthz":
            return self._send(200, b"ok")
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self._send(404, b"not found")
        _, ns, pod, container = (urllib.parse.unquote(p) for p in parts)
        previous = q.get("previous", ["false"])[0] == "true"
        path = self.kubelet.log_path(ns, pod, container, previous)
        if path is None:
            return self._send(404, f"container {container!r} of pod {ns}/{pod} has no log here".encode())
        data = path.read_bytes()
        if "tailLines" in q:
            n = int(q["tailLines"][0])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        if "limitBytes" in q:
            data = data[: int(q["limitBytes"][0])]
        self._send(200, data)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class _Container:
    """One run of one container: its process, log and termination file."""

    def __init__(self, spec: dict, init: bool):
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.state: dict = {"waiting": {"reason": "PodInitializing" if not init else "ContainerCreating"}}
        self.last_state: dict = {}
        self.started_at = None
        self.next_start = 0.0
        self.done = False  # terminated and not to be restarted


class _PodWorker(threading.Thread):
    def __init__(self, kubelet: "ProcessKubelet", pod: dict):
        super().__init__(daemon=True, name=f"pod-{pod['metadata']['name']}")
        self.k = kubelet
        self.pod = pod
        self.ns = pod["metadata"]["namespace"]
        self.pname = pod["metadata"]["name"]
        self.uid = pod["metadata"]["uid"]
        self.dir = kubelet.dir / "pods" / self.uid
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stop_requested = threading.Event()
        self.deleted = threading.Event()
        self.spec = pod["spec"]
        self.policy = self.spec.get("restartPolicy", "Always")
        self.inits = [_Container(c, True) for c in self.spec.get("initContainers", [])]
        self.mains = [_Container(c, False) for c in self.spec.get("containers", [])]
        self.phase = "Pending"
        self.initialized = not self.inits
        self.start_time = _now()
        self.reason = None
        self.message = None
        self.volumes: dict[str, Path] = {}
        self.problems: list[str] = []

    # ---- status --------------------------------------------------------------------------

    def _cstatus(self, c: _Container) -> dict:
        s = {"name": c.name, "image": c.spec.get("image", ""), "imageID": "", "restartCount": c.restarts,
             "ready": "running" in c.state and not c.init, "state": c.state}
        if c.last_state:
            s["lastState"] = c.last_state
        if "running" in c.state or "terminated" in c.state:
            s["containerID"] = f"process://{self.uid}/{c.name}/{c.restarts}"
        if not c.init:
            s["started"] = "running" in c.state
        return s

    def write_status(self) -> None:
        ready = self.phase == "Running" and all("running" in c.state for c in self.mains)
        t = _now()
        conds = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
            {"type": "Initialized", "status": "True" if self.initialized else "False", "lastTransitionTime": t},
            {"type": "ContainersReady", "status": "True" if ready else "False", "lastTransitionTime": t},
            {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": t},
        ]
        status = {
            "phase": self.phase, "conditions": conds, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}], "startTime": self.start_time,
            "initContainerStatuses": [self._cstatus(c) for c in self.inits],
            "containerStatuses": [self._cstatus(c) for c in self.mains],
        }
        if self.reason:
            status["reason"] = self.reason
        if self.message:
            status["message"] = self.message
        path = f"/api/v1/namespaces/{self.ns}/pods/{self.pname}/status"
        try:
            self.k.node.patch(path, {"status": status})
        except KubeError as e:
            if e.status != 404:
                self.problems.append(f"status update: {e}")

    # ---- volumes and env -----------------------------------------------------------------

    def _get(self, path: str, timeout: float = 10.0):
        """GET as the node; 403 is retried for a short while (the Node authorizer's graph learns
        about a freshly bound Pod asynchronously), 404 gives None."""
        deadline = time.monotonic() + timeout
        for _ in range(200):
            try:
                return self.k.node.get(path)
            except KubeError as e:
                if e.status == 404:
                    return None
                if e.status != 403 or time.monotonic() > deadline:
                    raise ConfigError(str(e)) from None
            time.sleep(0.1)
        raise ConfigError(f"GET {path}: forbidden")

    def _keyed(self, kind: str, name: str, optional: bool) -> dict | None:
        plural = "secrets" if kind == "Secret" else "configmaps"
        obj = self._get(f"/api/v1/namespaces/{self.ns}/{plural}/{name}")
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out

    def prepare_volumes(self) -> None:
        vroot = self.dir / "volumes"
        for v in self.spec.get("volumes", []):
            name = v["name"]
            d = vroot / name
            if "emptyDir" in v:
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, 0o777)
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                pvc = self._get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}")
                if pvc is None:
                    raise ConfigError(f'persistentvolumeclaim "{claim}" not found')
                d = self.k.claim_dir(self.ns, claim, pvc["metadata"]["uid"])
            elif "secret" in v or "configMap" in v:
                kind = "Secret" if "secret" in v else "ConfigMap"
                src = v["secret"] if kind == "Secret" else v["configMap"]
                ref = src.get("secretName") if kind == "Secret" else src.get("name")
                data = self._keyed(kind, ref, bool(src.get("optional")))
                d.mkdir(parents=True, exist_ok=True)
                mode = src.get("defaultMode", 0o644)
                items = src.get("items") or [{"key": k, "path": k} for k in sorted(data or {})]
                for it in items:
                    if data is None:
                        break
                    if it["key"] not in data:
                        if src.get("optional"):
                            continue
                        raise ConfigError(f'{kind.lower()} "{ref}": no key "{it["key"]}"')
                    f = d / it["path"]
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_bytes(data[it["key"]])
                    os.chmod(f, it.get("mode", mode))
                    gid = self.spec.get("securityContext", {}).get("fsGroup")
                    if gid is not None:
                        os.chown(f, -1, int(gid))
            else:
                kinds = sorted(k for k in v if k != "name")
                raise ConfigError(f"volume {name!r}: type {kinds} is not supported by the process kubelet")
            gid = self.spec.get("securityContext", {}).get("fsGroup")
            if gid is not None and ("emptyDir" in v or "persistentVolumeClaim" in v):
                os.chown(d, -1, int(gid))
                os.chmod(d, 0o2777 if "emptyDir" in v else 0o2775)
            self.volumes[name] = d

    def _field(self, path: str) -> str:
        md = self.pod["metadata"]
        simple = {"metadata.name": md["name"], "metadata.namespace": md["namespace"], "metadata.uid": md["uid"],
                  "spec.nodeName": self.k.node_name, "spec.serviceAccountName": self.spec.get("serviceAccountName", ""),
                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
        if path in simple:
            return simple[path]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (md.get(m.group(1)) or {}).get(m.group(2), "")
        raise ConfigError(f"fieldRef {path!r} is not supported by the process kubelet")

    def container_env(self, c: dict) -> dict:
        env: dict[str, str] = {}
        for ef in c.get("envFrom", []):
            if "secretRef" in ef or "configMapRef" in ef:
                kind = "Secret" if "secretRef" in ef else "ConfigMap"
                ref = ef.get("secretRef") or ef.get("configMapRef")
                data = self._keyed(kind, ref["name"], bool(ref.get("optional"))) or {}
                for k, v in data.items():
                    env[ef.get("prefix", "") + k] = v.decode(errors="replace")
        for e in c.get("env", []):
            if "valueFrom" not in e:
                env[e["name"]] = expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "Secret" if "secretKeyRef" in vf else "ConfigMap"
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                data = self._keyed(kind, ref["name"], bool(ref.get("optional")))
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f'couldn\'t find key {ref["key"]} in {kind} {self.ns}/{ref["name"]}')
                env[e["name"]] = data[ref["key"]].decode(errors="replace")
            elif "fieldRef" in vf:
                env[e["name"]] = self._field(vf["fieldRef"]["fieldPath"])
            else:
                raise ConfigError(f"env {e['name']}: {sorted(vf)} is not supported by the process kubelet")
        return env

    # ---- running -------------------------------------------------------------------------

    def start_container(self, c: _Container) -> None:
        spec = c.spec
        image = self.k.images.get(spec.get("image", ""))
        if image is None:
            c.state = {"waiting": {"reason": "ErrImagePull",
                                   "message": f"image {spec.get('image')!r} is not in the process kubelet's table"}}
            c.next_start = float("inf")
            return
        try:
            env = self.container_env(spec)
        except ConfigError as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            c.next_start = time.monotonic() + 1.0
            return
        if spec.get("command"):
            argv = [expand(a, env) for a in spec["command"]] + [expand(a, env) for a in spec.get("args", [])]
        else:
            args = spec["args"] if "args" in spec else image.cmd
            argv = list(image.entrypoint) + [expand(a, env) for a in args]
        mounts = []
        for m in spec.get("volumeMounts", []):
            src = self.volumes.get(m["name"])
            if src is None:
                c.state = {"waiting": {"reason": "CreateContainerConfigError",
                                       "message": f"volumeMount {m['name']!r} names no volume of the pod"}}
                c.next_start = float("inf")
                return
            sub = m.get("subPath") or (expand(m["subPathExpr"], env) if m.get("subPathExpr") else "")
            if sub:
                if os.path.isabs(sub) or ".." in Path(sub).parts:
                    c.state = {"waiting": {"reason": "CreateContainerConfigError",
                                           "message": f"subPath {sub!r} must be a relative path without '..'"}}
                    c.next_start = float("inf")
                    return
                src = src / sub
                if not src.exists():
                    src.mkdir(parents=True, exist_ok=True)  # as the kubelet does for subPath
                    os.chmod(src, 0o777)
            mounts.append({"source": str(src), "target": m["mountPath"], "readOnly": bool(m.get("readOnly"))})
        run = self.dir / "containers" / f"{c.name}-{c.restarts}"
        run.mkdir(parents=True, exist_ok=True)
        term = run / "termination-log"
        term.write_bytes(b"")
        os.chmod(term, 0o666)
        mounts.append({"source": str(term), "target": spec.get("terminationMessagePath", "/dev/termination-log")})
        program = image.resolve(argv[0]) if argv else None
        psc = self.spec.get("securityContext") or {}
        csc = spec.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        groups = list(psc.get("supplementalGroups") or [])
        if psc.get("fsGroup") is not None:
            groups.append(psc["fsGroup"])
        if uid is not None and gid is None:
            gid = 0  # as container runtimes do without runAsGroup (the image's group; ours have none)
        log = run / "log"
        c.log = log
        c.term = term
        c.started_at = _now()
        if program is None:
            log.write_bytes(f"exec: {argv[0] if argv else '(no command)'}: executable file not found in $PATH\n".encode())
            c.proc = None
            self._terminated(c, 128, "StartError",
                             f"exec: {argv[0] if argv else '(no command)'!r}: executable file not found in image "
                             f"{spec.get('image')!r}")
            return
        cspec = {"root": str(run / "root"), "host_paths": self.k.host_paths, "mounts": mounts,
                 "workdir": spec.get("workingDir") or "/", "readOnlyRoot": bool(csc.get("readOnlyRootFilesystem")),
                 "uid": uid, "gid": gid, "groups": groups, "program": program, "argv": argv,
                 "env": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "HOSTNAME": self.pname, "HOME": "/root" if not uid else "/", **env}}
        spec_file = run / "spec.json"
        spec_file.write_text(json.dumps(cspec))
        os.chmod(spec_file, 0o600)
        with open(log, "ab") as out:
            c.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", sys.executable, "-I", str(HELPER), str(spec_file)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, preexec_fn=_die_with_parent,
                cwd="/")
        c.state = {"running": {"startedAt": c.started_at}}

    def _terminated(self, c: _Container, code: int, reason: str | None = None, message: str | None = None) -> None:
        msg = message
        if msg is None:
            try:
                msg = c.term.read_bytes()[:MAX_MESSAGE].decode(errors="replace")
            except OSError:
                msg = ""
            if not msg and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                lines = c.log.read_bytes().splitlines()[-80:]
                msg = b"\n".join(lines)[-2048:].decode(errors="replace")
        t = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"),
             "startedAt": c.started_at, "finishedAt": _now(),
             "containerID": f"process://{self.uid}/{c.name}/{c.restarts}"}
        if code < 0:  # killed by a signal: 128 + signal, as runtimes report it
            t["exitCode"] = 128 - code
            t["signal"] = -code
            t["reason"] = "Error"
        if msg:
            t["message"] = msg
        c.state = {"terminated": t}

    @staticmethod
    def _succeeded(c: _Container) -> bool:
        return c.done and c.state.get("terminated", {}).get("exitCode") == 0

    def _should_restart(self, c: _Container) -> bool:
        code = c.state["terminated"]["exitCode"]
        if c.init:
            return code != 0 and self.policy != "Never"
        return self.policy == "Always" or (self.policy == "OnFailure" and code != 0)

    def _after_exit(self, c: _Container) -> None:
        if self._should_restart(c) and c.restarts < MAX_RESTARTS:
            c.last_state = c.state
            c.restarts += 1
            c.next_start = time.monotonic() + min(3.0, 0.2 * 2 ** c.restarts)
        elif self._should_restart(c):
            c.last_state = c.state
            c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"the process kubelet stops restarting after {MAX_RESTARTS} restarts"}}
            c.done = True
        else:
            c.done = True

    def poll(self, c: _Container) -> bool:
        """True when the container's process exited just now (its state is then terminated)."""
        if c.proc is None or c.proc.poll() is None:
            return False
        self._terminated(c, c.proc.returncode)
        c.proc = None
        self._after_exit(c)
        return True

    def kill_all(self, grace: float) -> None:
        running = [c for c in self.inits + self.mains if c.proc is not None and c.proc.poll() is None]
        for c in running:
            try:
                os.killpg(c.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for c in running:
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            kill(c.proc, 0)
            self._terminated(c, c.proc.returncode)
            c.proc = None
            c.done = True

    def run(self) -> None:  # noqa: C901 - the pod lifecycle reads top to bottom
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - recorded and asserted on by the fixture
            self.problems.append(f"pod {self.ns}/{self.pname}: {type(e).__name__}: {e}")
            self.kill_all(0)

    def _run(self) -> None:
        # volumes: retried a while (a Secret may be created just after the Pod)
        deadline = time.monotonic() + 60
        for _ in range(600):
            try:
                self.prepare_volumes()
                break
            except ConfigError as e:
                for c in self.inits[:1] or self.mains:
                    c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                self.write_status()
                if self.stop_requested.wait(1.0) or time.monotonic() > deadline:
                    return self._finish()
        self.write_status()
        changed = True
        for _ in range(MAX_SYNCS):
            if self.stop_requested.is_set():
                return self._finish()
            now = time.monotonic()
            if not self.initialized:
                c = next(c for c in self.inits if not self._succeeded(c))
                if c.proc is None and not c.done and now >= c.next_start:
                    self.start_container(c)
                    if "terminated" in c.state and c.proc is None:
                        self._after_exit(c)
                    changed = True
                elif self.poll(c):
                    changed = True
                if self._succeeded(c):
                    if all(self._succeeded(i) for i in self.inits):
                        self.initialized = True
                        for m in self.mains:
                            m.state = {"waiting": {"reason": "ContainerCreating"}}
                    changed = True
                elif c.done:  # failed for good: Never fails the Pod, otherwise it stays Pending
                    if self.policy == "Never":
                        self.phase = "Failed"
                    self.write_status()
                    return self._wait_deletion()
            else:
                for c in self.mains:
                    if c.proc is None and not c.done and now >= c.next_start:
                        self.start_container(c)
                        if "terminated" in c.state and c.proc is None:
                            self._after_exit(c)
                        changed = True
                    elif self.poll(c):
                        changed = True
                if all(c.done for c in self.mains):
                    failed = any(c.state.get("terminated", {}).get("exitCode", 1) != 0 for c in self.mains)
                    self.phase = "Failed" if failed else "Succeeded"
                    self.write_status()
                    return self._wait_deletion()
                self.phase = "Running" if any("running" in c.state or "terminated" in c.state
                                              for c in self.mains) else "Pending"
            if changed:
                self.write_status()
                changed = False
            time.sleep(0.05)

    def _wait_deletion(self) -> None:
        """A finished Pod stays until it is deleted; then the final delete."""
        for _ in range(MAX_SYNCS):
            if self.stop_requested.wait(0.5):
                return self._finish()

    def _finish(self) -> None:
        grace = float(self.pod["metadata"].get("deletionGracePeriodSeconds")
                      or self.spec.get("terminationGracePeriodSeconds", 30))
        self.kill_all(min(grace, MAX_GRACE))
        if self.deleted.is_set():
            try:
                self.k.node.delete(f"/api/v1/namespaces/{self.ns}/pods/{self.pname}",
                                   {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                    "preconditions": {"uid": self.uid}})
            except KubeError as e:
                if e.status not in (404, 409):
                    self.problems.append(f"final delete of {self.ns}/{self.pname}: {e}")


class ProcessKubelet:
    """A node named `node_name` backed by local processes (see module doc)."""

    def __init__(self, plane: ControlPlane, dir, images: dict, node_name: str = "node-1",
                 host_paths: list | None = None):
        self.plane = plane
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.images = dict(images)
        self.node_name = node_name
        # Host folders every container sees read-only: the tools and the built binaries.
        self.host_paths = [str(p) for p in (host_paths or [])]
        self.node = plane.client(f"system:node:{node_name}", ("system:nodes",))
        self.scheduler = plane.client("system:kube-scheduler", ())
        self.port = free_ports(1)[0]
        self.workers: dict[str, _PodWorker] = {}
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._lock = threading.Lock()

    # ---- the kubelet's HTTPS port ---------------------------------------------------------

    def _serve(self) -> None:
        cert, key = issue_identity(self.plane.ca, self.plane.pki, f"kubelet-{self.node_name}",
                                   f"system:node:{self.node_name}", ("system:nodes",), names=["127.0.0.1"],
                                   server=True, client=False)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(str(self.plane.ca_path))
        ctx.verify_mode = ssl.CERT_REQUIRED  # only the apiserver's kubelet client (signed by the CA)
        handler = type("Handler", (_LogHandler,), {"kubelet": self})
        self._server = _Server(("127.0.0.1", self.port), handler, bind_and_activate=True)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="kubelet-https").start()

    def log_path(self, ns: str, pod: str, container: str, previous: bool) -> Path | None:
        with self._lock:
            # the newest Pod of that name (an earlier one may still be stopping)
            w = next((w for w in reversed(self.workers.values()) if w.ns == ns and w.pname == pod), None)
        if w is None:
            return None
        c = next((c for c in w.inits + w.mains if c.name == container), None)
        if c is None:
            return None
        run = c.restarts - 1 if previous else c.restarts
        p = w.dir / "containers" / f"{container}-{run}" / "log"
        return p if run >= 0 and p.exists() else None

    def claim_dir(self, ns: str, claim: str, uid: str) -> Path:
        """The folder backing PersistentVolumeClaim `ns/claim` (one per claim uid)."""
        d = self.dir / "claims" / ns / f"{claim}-{uid}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> "ProcessKubelet":
        self._serve()
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name,
                                                             "kubernetes.io/os": "linux"}},
            "spec": {},
        }
        self.node.create("/api/v1/nodes", node)
        status = {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "process kubelet is posting ready status",
                            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
            "nodeInfo": {"kubeletVersion": "v1.20.2-process", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "process://", "kernelVersion": "",
                         "osImage": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }
        self.node.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": status})
        self._thread = threading.Thread(target=self._loop, daemon=True, name="kubelet-sync")
        self._thread.start()
        return self

    def _loop(self) -> None:
        failures = 0
        for _ in range(MAX_SYNCS):
            if self._stop.wait(SYNC_INTERVAL):
                return
            try:
                self._sync()
                failures = 0
            except Exception as e:  # noqa: BLE001 - one hiccup is retried; five in a row are a problem
                failures += 1
                if failures >= 5 and not self._stop.is_set() and len(self.problems) < 50:
                    self.problems.append(f"sync failed {failures} times in a row: {type(e).__name__}: {e}")

    def _sync(self) -> None:
        # schedule: every unscheduled Pod goes to this node
        pending = self.scheduler.get("/api/v1/pods?fieldSelector=" + urllib.parse.quote("spec.nodeName="))
        for p in pending.get("items", []):
            md = p["metadata"]
            if md.get("deletionTimestamp") or p["spec"].get("schedulerName", "default-scheduler") != "default-scheduler":
                continue
            try:
                self.scheduler.create(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/binding", {
                    "apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": md["name"], "namespace": md["namespace"], "uid": md["uid"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}})
            except KubeError as e:
                # gone, already bound, or its namespace is being deleted (a scheduler drops it too)
                if e.status not in (404, 409) and "being terminated" not in str(e):
                    raise
        mine = self.node.get("/api/v1/pods?fieldSelector=" + urllib.parse.quote(f"spec.nodeName={self.node_name}"))
        seen = set()
        for p in mine.get("items", []):
            uid = p["metadata"]["uid"]
            seen.add(uid)
            with self._lock:
                w = self.workers.get(uid)
            if w is None:
                if p["metadata"].get("deletionTimestamp"):
                    # never started here: nothing to stop, only the final delete
                    w = _PodWorker(self, p)
                    w.deleted.set()
                    w.stop_requested.set()
                elif p.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                else:
                    w = _PodWorker(self, p)
                with self._lock:
                    self.workers[uid] = w
                w.start()
            elif p["metadata"].get("deletionTimestamp") and not w.stop_requested.is_set():
                w.pod = p
                w.deleted.set()
                w.stop_requested.set()
        with self._lock:
            gone = [w for uid, w in self.workers.items() if uid not in seen and not w.stop_requested.is_set()]
        for w in gone:  # force-deleted: stop its processes
            w.stop_requested.set()

    def all_problems(self) -> list[str]:
        with self._lock:
            workers = list(self.workers.values())
        return self.problems + [p for w in workers for p in w.problems]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.stop_requested.set()
        for w in workers:
            if w.is_alive():
                w.join(MAX_GRACE + 10)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
