"""Kept only for what the real control plane (kube_control_plane.py) cannot do yet: 1.27+ Job labels, fast per-test clusters (API faults: kube_recorder.py).

A strict stand-in for the Kubernetes API over HTTPS on loopback, written by this project: it agrees
with our model of Kubernetes, not necessarily with Kubernetes (the real apiserver 1.20 runs the
tests in test_kube_*.py).

It serves the real paths of the resources etcdsnap uses, answers with the apiserver's status
codes and `Status` bodies, filters by label and field selectors, enforces resourceVersion
conflicts, garbage-collects owned objects, validates every object it receives strictly
against the real OpenAPI schema (`kubernetes_validate`), binds PVCs to local directories and
plays the Job controller: each Job's containers run as local processes (etcdctl/etcdutl from
the tools dir), with volume mounts rewritten to local directories.
"""

from __future__ import annotations

import base64
import copy
import datetime
import functools
import http.server
import json
import os
import random
import re
import secrets as pysecrets
import shutil
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import kubernetes_validate
import yaml

import kube_api as api
from kube_api import ApiError, Resource
from pki import make_ca

__all__ = ["KubeStandin", "KubeClient", "ApiError", "schema_check"]

K8S_VERSION = "1.33"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gen_suffix(n: int = 5) -> str:
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


@functools.lru_cache(maxsize=None)
def _validator(kind: str, api_version: str):
    """kubernetes_validate's strict validator for one kind, built once (its `validate` re-reads the
    1.4 MB definitions file on every call)."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource as RefResource

    version = [v for v in utils.all_versions() if utils.major_minor(v) == K8S_VERSION][-1]
    schema_dir = f"v{version}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json",
                                   K8S_VERSION)
    defs = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", K8S_VERSION)
    registry = RefResource.from_contents(defs) @ (RefResource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_check(obj: dict) -> str | None:
    """Strict validation against the real Kubernetes 1.33 schema (kubernetes_validate's strict
    schemas: unknown fields are errors): None, or what is wrong."""
    try:
        validator = _validator(str(obj.get("kind")), str(obj.get("apiVersion")))
    except (FileNotFoundError, IndexError, kubernetes_validate.utils.VersionNotSupportedError):
        return f"no schema for kind {obj.get('kind')!r} apiVersion {obj.get('apiVersion')!r} in Kubernetes {K8S_VERSION}"
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    e = errors[0]
    path = ".".join(str(p) for p in e.absolute_path)
    return f"{path}: {e.message}" if path else e.message


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-standin"
    timeout = 30  # idle keep-alive connections end

    def log_message(self, fmt, *args):  # quiet
        pass

    def _dispatch(self):
        standin: KubeStandin = self.server.standin  # type: ignore[attr-defined]
        try:
            body = self._read_body()
        except ValueError as e:
            return self._send(400, api.status_body(400, str(e)))
        code, payload, headers = standin.handle(self.command, self.path, dict(self.headers.items()), body)
        self._send(code, payload, headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            for _ in range(100000):
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(8)
            raise ValueError("chunked body too long")
        n = int(self.headers.get("Content-Length") or 0)
        if n > 8 * 1024 * 1024:
            raise ValueError("request body too large")
        return self.rfile.read(n) if n else b""

    def _send(self, code: int, payload, headers: dict | None = None):
        if isinstance(payload, (bytes, str)):
            data = payload.encode() if isinstance(payload, str) else payload
            ctype = "text/plain; charset=utf-8"
        else:
            data = json.dumps(payload).encode()
            ctype = "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        # headers and body in one write: no Nagle/delayed-ACK stall between them
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(data)
        self.wfile.write(b"".join(self._headers_buffer))
        self._headers_buffer = []


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, ctx: ssl.SSLContext, standin):
        super().__init__(addr, handler)
        self.ctx = ctx
        self.standin = standin
        self.conns: set = set()
        self.conns_lock = threading.Lock()

    def finish_request(self, request, client_address):
        # The TLS handshake runs on the connection's own thread, not in the accept loop.
        request.settimeout(30)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.conns_lock:
            self.conns.add(tls)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (ssl.SSLError, OSError):
            pass
        finally:
            with self.conns_lock:
                self.conns.discard(tls)
            try:
                tls.close()
            except OSError:
                pass

    def close_all(self):
        with self.conns_lock:
            for c in list(self.conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class KubeStandin:
    """See the module doc, and tests/FIXTURES.md for the contract."""

    def __init__(self, tmpdir, tools_bin=None, bin_dir=None, backoff_base: float = 0.2,
                 namespaces=("default", "kube-system", "kube-public")):
        from etcd_cluster import tools_bin as default_tools

        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tools_bin = Path(tools_bin) if tools_bin else default_tools()
        env_bin = os.environ.get("LIFEBOAT_BIN_DIR")
        self.bin_dir = Path(bin_dir) if bin_dir else (Path(env_bin) if env_bin else None)
        self.backoff_base = backoff_base
        self.token = pysecrets.token_urlsafe(32)
        pki_dir = self.dir / "pki"
        self.ca = make_ca(pki_dir, "kube-ca")
        self.ca_path = self.ca.cert_path
        self._cert, self._key = self.ca.issue(pki_dir, "apiserver", ["127.0.0.1", "localhost", "kubernetes.default.svc"],
                                              client=False, server=True)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._store: dict[tuple, dict] = {}  # (plural, ns, name) -> object
        self._rv = 0
        self.schema_failures: list[dict] = []
        self.job_problems: list[str] = []
        self.requests: list[tuple] = []
        self._pvc_dirs: dict[tuple, Path] = {}
        self._held = False
        self._held_jobs: list[tuple] = []
        self._held_containers: set[str] = set()
        self._jobs = None  # JobController, created in start()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.kubeconfig_path = self.dir / "kubeconfig"
        self.serviceaccount_dir = self.dir / "serviceaccount"
        for ns in namespaces:
            self.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "KubeStandin":
        from kube_jobs import JobController

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self._cert), str(self._key))
        ctx.set_alpn_protocols(["http/1.1"])
        self._server = _Server(("127.0.0.1", 0), _Handler, ctx, self)
        port = self._server.server_address[1]
        self.url = f"https://127.0.0.1:{port}"
        self.port = port
        self._jobs = JobController(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="kube-standin", daemon=True)
        self._thread.start()
        self._write_client_files()
        return self

    def stop(self) -> None:
        if self._jobs is not None:
            self._jobs.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.close_all()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _write_client_files(self) -> None:
        ca_b64 = base64.b64encode(self.ca_path.read_bytes()).decode()
        cfg = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "standin", "cluster": {"server": self.url, "certificate-authority-data": ca_b64}}],
            "users": [{"name": "etcdsnap", "user": {"token": self.token}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "etcdsnap",
                                                         "namespace": "kube-system"}}],
            "current-context": "standin",
        }
        fd = os.open(self.kubeconfig_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg, f)
        self.serviceaccount_dir.mkdir(parents=True, exist_ok=True)
        (self.serviceaccount_dir / "token").write_text(self.token)
        shutil.copy(self.ca_path, self.serviceaccount_dir / "ca.crt")
        (self.serviceaccount_dir / "namespace").write_text("kube-system")

    def client(self, token: str | None = "") -> "KubeClient":
        """A keep-alive HTTPS client trusting the stand-in's CA, with the token ("" = the right one)."""
        return KubeClient(self, token)

    def in_cluster_env(self) -> dict:
        """KUBERNETES_SERVICE_HOST/PORT as a pod sees them (token and CA: `serviceaccount_dir`)."""
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}

    # ---- test-side API -----------------------------------------------------------------------

    def objects(self, kind: str, ns: str | None = None) -> list[dict]:
        """Deep copies of stored objects of a kind (Kind or plural), in one namespace or all."""
        res = api.resource_for(kind)
        with self.lock:
            return [copy.deepcopy(o) for (p, n, _), o in sorted(self._store.items())
                    if p == res.plural and (ns is None or n == ns)]

    def get_object(self, kind: str, ns: str | None, name: str) -> dict | None:
        res = api.resource_for(kind)
        with self.lock:
            o = self._store.get((res.plural, ns if res.namespaced else None, name))
            return copy.deepcopy(o) if o else None

    def put_object(self, obj: dict) -> dict:
        """Seed an object (validated strictly; namespaces are created as needed); returns the stored copy."""
        obj = copy.deepcopy(obj)
        res = api.resource_for(obj["kind"])
        problem = schema_check(obj)
        causes = [] if problem else api.validate_semantics(res, obj)
        if problem or causes:
            raise ValueError(f"seed object {obj['kind']}/{obj.get('metadata', {}).get('name')} is invalid: "
                             f"{problem or ''} {causes or ''}")
        meta = obj["metadata"]
        ns = meta.get("namespace") if res.namespaced else None
        if res.namespaced:
            if not ns:
                raise ValueError("namespaced seed objects need metadata.namespace")
            if ("namespaces", None, ns) not in self._store:
                self.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        with self.lock:
            stored = self._insert(res, ns, obj)
        return copy.deepcopy(stored)

    def put_etcd_tls_secret(self, cluster, ns: str, name: str) -> dict:
        """Seed a Secret with an EtcdCluster's client TLS material: ca.crt, tls.crt, tls.key."""
        return self.put_object({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns},
            "data": {"ca.crt": base64.b64encode(Path(cluster.ca_path).read_bytes()).decode(),
                     "tls.crt": base64.b64encode(Path(cluster.client_cert_path).read_bytes()).decode(),
                     "tls.key": base64.b64encode(Path(cluster.client_key_path).read_bytes()).decode()},
        })

    def pvc_dir(self, ns: str, name: str) -> Path:
        """The local directory that backs a bound PVC."""
        with self.lock:
            try:
                return self._pvc_dirs[(ns, name)]
            except KeyError:
                raise KeyError(f"no PVC {ns}/{name}") from None

    def pvc_request(self, ns: str, name: str) -> str | None:
        o = self.get_object("persistentvolumeclaims", ns, name)
        return o and o["spec"]["resources"]["requests"]["storage"]

    def hold_jobs(self) -> None:
        """Keep new Jobs pending (no pods, empty status) until `release_jobs()`."""
        with self.lock:
            self._held = True

    def release_jobs(self) -> None:
        with self.lock:
            self._held = False
            held, self._held_jobs = self._held_jobs, []
        for ns, name in held:
            self._jobs.launch(ns, name)

    def hold_containers(self, name: str) -> None:
        """Containers called `name` of Job pods do not start until `release_containers()`; the
        ones before them in the pod have run (e.g. a snapshot saved but not verified yet)."""
        with self.lock:
            self._held_containers.add(name)

    def release_containers(self) -> None:
        with self.lock:
            self._held_containers.clear()

    def wait_job(self, ns: str, name: str, timeout: float = 60.0) -> dict:
        """Wait until the Job has a Complete or Failed condition; returns it. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                job = self._store.get(("jobs", ns, name))
                if job is not None:
                    for c in (job.get("status") or {}).get("conditions") or []:
                        if c["type"] in ("Complete", "Failed") and c["status"] == "True":
                            return copy.deepcopy(job)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {ns}/{name} not finished after {timeout} s: "
                                       f"{job and job.get('status')}")
                self.changed.wait(min(left, 0.5))

    def job_logs(self, ns: str, name: str) -> str:
        """Output (stdout+stderr) of every container of every pod the Job ran, in order."""
        return self._jobs.logs(ns, name) if self._jobs else ""

    # ---- store internals (call with self.lock held) -----------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _insert(self, res: Resource, ns: str | None, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        if res.namespaced:
            meta["namespace"] = ns
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        for f in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(f, None)
        if res.plural == "jobs":
            meta["generation"] = 1
        self._defaults_on_create(res, obj)
        meta["resourceVersion"] = self._next_rv()
        self._store[(res.plural, ns, meta["name"])] = obj
        self._after_create(res, obj)
        self.changed.notify_all()
        return obj

    def _defaults_on_create(self, res: Resource, obj: dict) -> None:
        if res.plural == "secrets":
            string_data = obj.pop("stringData", None) or {}
            data = obj.setdefault("data", {}) if string_data or obj.get("data") is not None else None
            for k, v in string_data.items():
                data[k] = base64.b64encode(v.encode()).decode()
            obj.setdefault("type", "Opaque")
        elif res.plural == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif res.plural == "jobs":
            uid = obj["metadata"]["uid"]
            name = obj["metadata"]["name"]
            spec = obj["spec"]
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
            labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                      "controller-uid": uid, "job-name": name}
            spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
            tmeta = spec["template"].setdefault("metadata", {})
            tmeta.setdefault("labels", {}).update(labels)
            obj["metadata"].setdefault("labels", {}).update(
                {k: v for k, v in labels.items() if k not in obj["metadata"].get("labels", {})})
            obj["status"] = {}
        elif res.plural == "persistentvolumeclaims":
            spec = obj["spec"]
            spec.setdefault("volumeMode", "Filesystem")
            ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            d = self.dir / "pvcs" / ns / f"{name}-{obj['metadata']['uid'][:8]}"
            d.mkdir(parents=True, exist_ok=True)
            self._pvc_dirs[(ns, name)] = d
            if spec.get("volumeName"):
                # static binding to a named PV: Bound if that PV exists, else Pending (as for real)
                pv = self._store.get(("persistentvolumes", None, spec["volumeName"]))
                if pv is None:
                    obj["status"] = {"phase": "Pending"}
                    return
                pv["spec"].setdefault("claimRef", {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                                   "name": name, "namespace": ns,
                                                   "uid": obj["metadata"]["uid"]})
                pv["status"] = {"phase": "Bound"}
                self._set("persistentvolumes", None, spec["volumeName"], pv)
                capacity = (pv["spec"].get("capacity") or {}).get("storage") or \
                    spec["resources"]["requests"]["storage"]
                obj["status"] = {"phase": "Bound", "accessModes": list(pv["spec"].get("accessModes") or []),
                                 "capacity": {"storage": capacity}}
                obj["metadata"].setdefault("annotations", {})["pv.kubernetes.io/bind-completed"] = "yes"
                return
            spec["volumeName"] = f"pvc-{obj['metadata']['uid']}"
            obj["status"] = {"phase": "Bound", "accessModes": list(spec.get("accessModes") or []),
                             "capacity": {"storage": spec["resources"]["requests"]["storage"]}}
            obj["metadata"].setdefault("annotations", {}).update(
                {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"})
        elif res.plural == "pods":
            obj.setdefault("status", {"phase": "Pending"})

    def _after_create(self, res: Resource, obj: dict) -> None:
        if res.plural == "persistentvolumeclaims" and obj["status"]["phase"] == "Bound" and \
                ("persistentvolumes", None, obj["spec"].get("volumeName")) not in self._store:
            meta, spec = obj["metadata"], obj["spec"]
            pv = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": spec["volumeName"], "uid": str(uuid.uuid4()), "creationTimestamp": _now(),
                             "resourceVersion": self._next_rv(),
                             "annotations": {"pv.kubernetes.io/provisioned-by": "standin.local"}},
                "spec": {"accessModes": list(spec.get("accessModes") or []),
                         "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                         "hostPath": {"path": str(self._pvc_dirs[(meta["namespace"], meta["name"])]), "type": ""},
                         "persistentVolumeReclaimPolicy": "Delete", "volumeMode": "Filesystem",
                         "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": meta["name"],
                                      "namespace": meta["namespace"], "uid": meta["uid"]}},
                "status": {"phase": "Bound"},
            }
            if spec.get("storageClassName"):
                pv["spec"]["storageClassName"] = spec["storageClassName"]
            self._store[("persistentvolumes", None, pv["metadata"]["name"])] = pv

    def _set(self, plural: str, ns: str | None, name: str, obj: dict) -> dict:
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._store[(plural, ns, name)] = obj
        self.changed.notify_all()
        return obj

    def _remove(self, plural: str, ns: str | None, name: str, policy: str) -> dict | None:
        """Delete one object and apply garbage collection to its dependents."""
        obj = self._store.pop((plural, ns, name), None)
        if obj is None:
            return None
        self._rv += 1
        uid = obj["metadata"]["uid"]
        if plural == "persistentvolumeclaims":
            d = self._pvc_dirs.pop((ns, name), None)
            pv_name = (obj.get("spec") or {}).get("volumeName")
            pv = self._store.get(("persistentvolumes", None, pv_name)) if pv_name else None
            if pv is not None and ((pv["spec"].get("claimRef") or {}).get("uid") == uid):
                if (pv["metadata"].get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") == "standin.local":
                    self._store.pop(("persistentvolumes", None, pv_name), None)  # reclaim policy Delete
                else:
                    pv = copy.deepcopy(pv)
                    pv["status"] = {"phase": "Released"}
                    self._set("persistentvolumes", None, pv_name, pv)
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
        if plural == "jobs" and self._jobs is not None:
            self._jobs.forget(ns, name, uid)
        if plural == "pods" and self._jobs is not None:
            self._jobs.pod_deleted(ns, name)
        if plural == "namespaces":
            for key in [k for k in self._store if k[1] == name]:
                self._remove(key[0], key[1], key[2], "Background")
        dependents = [k for k, o in self._store.items()
                      if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
                      and (k[1] == ns or not obj["metadata"].get("namespace"))]
        for key in dependents:
            dep = self._store.get(key)
            if dep is None:
                continue
            if policy == "Orphan":
                refs = [r for r in dep["metadata"]["ownerReferences"] if r.get("uid") != uid]
                if refs:
                    dep["metadata"]["ownerReferences"] = refs
                else:
                    dep["metadata"].pop("ownerReferences", None)
                self._set(key[0], key[1], key[2], dep)
            else:
                remaining = [r for r in dep["metadata"]["ownerReferences"]
                             if r.get("uid") != uid and self._owner_exists(key[1], r)]
                if not remaining:
                    self._remove(key[0], key[1], key[2], "Background")
        self.changed.notify_all()
        return obj

    def _owner_exists(self, ns: str | None, ref: dict) -> bool:
        for (p, n, _), o in self._store.items():
            if o["metadata"]["uid"] == ref.get("uid") and (n == ns or n is None):
                return True
        return False

    def _collect_dangling(self, res: Resource, ns: str | None, obj: dict) -> None:
        """The garbage collector deletes an object all of whose owners are gone."""
        refs = obj["metadata"].get("ownerReferences") or []
        if refs and not any(self._owner_exists(ns, r) for r in refs):
            self._remove(res.plural, ns, obj["metadata"]["name"], "Background")

    # ---- HTTP dispatch ------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict, body: bytes):
        """Serve one request: returns (code, payload, headers)."""
        parsed = urllib.parse.urlsplit(raw_path)
        path = parsed.path
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        with self.lock:
            self.requests.append((method, path, query))
        try:
            self._auth(path, headers)
            return self._route(method, path, query, headers, body)
        except ApiError as e:
            return e.code, e.body, e.headers
        except Exception as e:  # noqa: BLE001 - an internal error is a 500 Status, as in the apiserver
            import traceback

            traceback.print_exc()
            return 500, api.status_body(500, f"stand-in internal error: {e!r}", "InternalError"), {}

    def _auth(self, path: str, headers: dict) -> None:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        if auth is None and path in ("/readyz", "/healthz", "/livez", "/version"):
            return  # system:public-info-viewer lets anonymous clients read these
        if auth is None or not pysecrets.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _route(self, method, path, query, headers, body):
        if path in ("/readyz", "/healthz", "/livez"):
            return (200, "ok", {}) if method in ("GET", "HEAD") else self._405()
        if path == "/version":
            return 200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "standin",
                         "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2",
                         "compiler": "gc", "platform": "linux/amd64"}, {}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]}, {}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "batch", "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}}]}, {}
        if path in ("/api/v1", "/apis/batch/v1"):
            group = "" if path == "/api/v1" else "batch"
            return 200, {"kind": "APIResourceList", "apiVersion": "v1",
                         "groupVersion": "v1" if not group else "batch/v1",
                         "resources": [{"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                                        "kind": r.kind, "verbs": ["create", "delete", "get", "list", "patch",
                                                                  "update"]}
                                       for r in api.RESOURCES if r.group == group]}, {}
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise self._404()
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        elif len(rest) == 2 and rest[0] == "namespaces":
            rest = ["namespaces", rest[1]]
        if not rest:
            raise self._404()
        res = api.resource_by_path(group, version, rest[0])
        if res is None or (ns is not None and not res.namespaced):
            raise self._404()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if len(rest) > 3 or (sub is not None and sub not in ("status", "log")) or (sub == "log" and res.plural != "pods"):
            raise self._404()
        if query.get("watch") in ("1", "true"):
            raise api.bad_request("watch is not supported by the test stand-in")
        dry = query.get("dryRun")
        if dry is not None and dry != "All":
            raise api.bad_request(f'Invalid dryRun value "{dry}": valid values are "All"')
        dry_run = dry == "All"
        with self.lock:
            if name is None:
                if method == "GET":
                    return 200, self._list(res, ns, query), {}
                if method == "POST":
                    if res.namespaced and ns is None:
                        raise self._405()
                    return self._create(res, ns, body, headers, dry_run)
                if method == "DELETE" and ns is not None:
                    return self._delete_collection(res, ns, query, body, dry_run)
                raise self._405()
            if sub == "log":
                if method != "GET":
                    raise self._405()
                return self._pod_log(ns, name, query)
            if method == "GET":
                return 200, self._get(res, ns, name), {}
            if method == "PUT":
                return self._update(res, ns, name, body, headers, dry_run, sub)
            if method == "PATCH":
                return self._patch(res, ns, name, body, headers, dry_run, sub)
            if method == "DELETE" and sub is None:
                return self._delete(res, ns, name, query, body, dry_run)
            raise self._405()

    @staticmethod
    def _404():
        return ApiError(404, "the server could not find the requested resource", "NotFound", {})

    @staticmethod
    def _405():
        return ApiError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed",
                        {})

    def _check_ns(self, res: Resource, ns: str | None) -> None:
        if res.namespaced and ("namespaces", None, ns) not in self._store:
            raise api.namespace_not_found(ns)

    def _get(self, res: Resource, ns, name) -> dict:
        o = self._store.get((res.plural, ns, name))
        if o is None:
            raise api.not_found(res, name)
        return copy.deepcopy(o)

    def _list(self, res: Resource, ns, query) -> dict:
        lreqs = api.parse_label_selector(query.get("labelSelector", ""))
        freqs = api.parse_field_selector(res, query.get("fieldSelector", ""))
        items = [o for (p, n, _), o in sorted(self._store.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
                 if p == res.plural and (ns is None or n == ns)
                 and api.match_labels(lreqs, o["metadata"].get("labels")) and api.match_fields(freqs, o)]
        cont = query.get("continue")
        if cont:
            try:
                after = json.loads(base64.urlsafe_b64decode(cont.encode()).decode())
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "continue key is not valid: incorrect encoded start resourceVersion "
                               "(version meta.k8s.io/v1)", "BadRequest") from None
            items = [o for o in items if [o["metadata"].get("namespace") or "", o["metadata"]["name"]] > after]
        meta = {"resourceVersion": str(self._rv)}
        limit = int(query.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps([last.get("namespace") or "", last["name"]]).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        out_items = []
        for o in items:
            c = copy.deepcopy(o)
            c.pop("apiVersion", None)  # list items carry no apiVersion/kind, as from the apiserver
            c.pop("kind", None)
            out_items.append(c)
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": out_items}

    def _decode(self, body: bytes, headers: dict) -> dict:
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "application/json")
        if "yaml" in ctype:
            try:
                obj = yaml.safe_load(body)
            except yaml.YAMLError as e:
                raise api.bad_request(f"error decoding YAML: {e}") from None
        else:
            try:
                obj = json.loads(body or b"null")
            except ValueError as e:
                raise api.bad_request(f"the body of the request was in an unknown format: {e}") from None
        if not isinstance(obj, dict):
            raise api.bad_request("Object 'Kind' is missing in the request body")
        return obj

    def _check_gvk(self, res: Resource, obj: dict) -> None:
        av, kind = obj.get("apiVersion"), obj.get("kind")
        if kind is None:
            raise api.bad_request(f"Object 'Kind' is missing in '{json.dumps(obj)[:200]}'")
        if av != res.api_version or kind != res.kind:
            raise api.bad_request(f"the API version in the data ({av}) does not match the expected API version "
                                  f"({res.api_version})" if av != res.api_version else
                                  f"the kind in the data ({kind}) does not match the expected kind ({res.kind})")

    def _validate(self, res: Resource, obj: dict, verb: str, old: dict | None = None) -> None:
        name = (obj.get("metadata") or {}).get("name") or (obj.get("metadata") or {}).get("generateName") or ""
        problem = schema_check(obj)
        if problem:
            with self.lock:
                self.schema_failures.append({"verb": verb, "kind": res.kind, "name": name, "error": problem,
                                             "object": copy.deepcopy(obj)})
            raise api.invalid(res, name, [{"reason": "FieldValueInvalid", "message": problem, "field": ""}])
        causes = api.validate_semantics(res, obj, old)
        if causes:
            with self.lock:  # the apiserver's own checks: just as much a bug in what we sent
                self.schema_failures.append({"verb": verb, "kind": res.kind, "name": name, "error": causes,
                                             "object": copy.deepcopy(obj)})
            raise api.invalid(res, name, causes)

    def _create(self, res: Resource, ns, body, headers, dry_run):
        obj = self._decode(body, headers)
        self._check_gvk(res, obj)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace") not in (None, "", ns):
                raise api.bad_request("the namespace of the provided object does not match the namespace sent on "
                                      "the request")
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(20):
                candidate = meta["generateName"] + _gen_suffix()
                if (res.plural, ns, candidate) not in self._store:
                    break
            meta["name"] = candidate
        self._validate(res, obj, "create")
        self._check_ns(res, ns)
        if (res.plural, ns, meta["name"]) in self._store:
            raise api.already_exists(res, meta["name"])
        if dry_run:
            preview = copy.deepcopy(obj)
            preview["metadata"].update({"uid": str(uuid.uuid4()), "creationTimestamp": _now()})
            if res.namespaced:
                preview["metadata"]["namespace"] = ns
            return 201, preview, {}
        stored = self._insert(res, ns, obj)
        self._collect_dangling(res, ns, stored)
        if res.plural == "jobs" and (res.plural, ns, meta["name"]) in self._store:
            if self._held:
                self._held_jobs.append((ns, meta["name"]))
            else:
                self._jobs.launch(ns, meta["name"])
        return 201, copy.deepcopy(stored), {}

    def _apply_update(self, res: Resource, ns, name, new: dict, old: dict, verb: str, dry_run: bool, sub):
        meta = new.setdefault("metadata", {})
        if meta.get("name") not in (None, name):
            raise api.bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                                  f"({name})")
        meta["name"] = name
        if res.namespaced:
            if meta.get("namespace") not in (None, "", ns):
                raise api.bad_request("the namespace of the provided object does not match the namespace sent on "
                                      "the request")
            meta["namespace"] = ns
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and rv != old["metadata"]["resourceVersion"]:
            raise api.conflict(res, name)
        if meta.get("uid") not in (None, "", old["metadata"]["uid"]):
            raise ApiError(409, f"Precondition failed: UID in precondition: {meta.get('uid')}, UID in object meta: "
                           f"{old['metadata']['uid']}", "Conflict", res.details(name))
        for f in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if f in old["metadata"]:
                meta[f] = old["metadata"][f]
            else:
                meta.pop(f, None)
        meta.pop("resourceVersion", None)
        if res.has_status:
            if sub == "status":
                status = new.get("status")
                new = copy.deepcopy(old)
                new["status"] = status
                new["metadata"].pop("resourceVersion", None)
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        if res.plural == "secrets" and new.get("stringData"):
            data = new.setdefault("data", {})
            for k, v in new.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        if res.plural == "jobs" and new.get("spec") != old.get("spec"):
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        self._validate(res, new, verb, old)
        if dry_run:
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return 200, new, {}
        stored = self._set(res.plural, ns, name, new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(res.plural, ns, name, "Background")
        return 200, copy.deepcopy(stored), {}

    def _update(self, res: Resource, ns, name, body, headers, dry_run, sub):
        new = self._decode(body, headers)
        self._check_gvk(res, new)
        old = self._store.get((res.plural, ns, name))
        if old is None:
            self._check_ns(res, ns)
            raise api.not_found(res, name)
        return self._apply_update(res, ns, name, new, old, "update", dry_run, sub)

    def _patch(self, res: Resource, ns, name, body, headers, dry_run, sub):
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "").split(";")[0].strip()
        old = self._store.get((res.plural, ns, name))
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                         "application/json-patch+json"):
            raise ApiError(415, "the body of the request was in an unknown format - accepted media types include: "
                           "application/json-patch+json, application/merge-patch+json, "
                           "application/apply-patch+yaml, application/strategic-merge-patch+json",
                           "UnsupportedMediaType")
        if old is None:
            raise api.not_found(res, name)
        try:
            patch = json.loads(body or b"null")
        except ValueError as e:
            raise api.bad_request(f"error decoding patch: {e}") from None
        if ctype == "application/json-patch+json":
            import jsonpatch

            try:
                new = jsonpatch.apply_patch(copy.deepcopy(old), patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as e:
                raise ApiError(422, f"the server rejected our request due to an error in our request: {e}",
                               "Invalid") from None
        else:
            if not isinstance(patch, dict):
                raise api.bad_request("patch body must be a JSON object")
            new = api.merge_patch(old, patch)
        if new.get("apiVersion") != res.api_version or new.get("kind") != res.kind:
            raise api.bad_request("a patch may not change apiVersion or kind")
        if not (isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion")):
            new.setdefault("metadata", {}).pop("resourceVersion", None)
        return self._apply_update(res, ns, name, new, old, "patch", dry_run, sub)

    def _delete_options(self, query, body) -> tuple[str | None, dict]:
        opts = {}
        if body:
            try:
                opts = json.loads(body)
            except ValueError as e:
                raise api.bad_request(f"invalid DeleteOptions: {e}") from None
            if not isinstance(opts, dict):
                raise api.bad_request("invalid DeleteOptions")
        policy = query.get("propagationPolicy") or opts.get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise api.bad_request(f'Unsupported value: "{policy}": supported values: "Foreground", "Background", '
                                  '"Orphan"')
        return policy, opts

    def _delete(self, res: Resource, ns, name, query, body, dry_run):
        policy, opts = self._delete_options(query, body)
        obj = self._store.get((res.plural, ns, name))
        if obj is None:
            raise api.not_found(res, name)
        pre = opts.get("preconditions") or {}
        if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise ApiError(409, f"Operation cannot be fulfilled on {res.qualified} \"{name}\": Precondition failed: "
                           f"ResourceVersion in precondition: {pre['resourceVersion']}, ResourceVersion in object "
                           f"meta: {obj['metadata']['resourceVersion']}", "Conflict", res.details(name))
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise ApiError(409, f"Operation cannot be fulfilled on {res.qualified} \"{name}\": Precondition failed: "
                           f"UID in precondition: {pre['uid']}, UID in object meta: {obj['metadata']['uid']}",
                           "Conflict", res.details(name))
        if policy is None:
            # batch/v1 Jobs default to orphaning their pods (why kubectl sends Background)
            policy = "Orphan" if res.plural == "jobs" else "Background"
        if dry_run:
            return 200, self._deleted_body(res, obj), {}
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["deletionGracePeriodSeconds"] = 0
                self._set(res.plural, ns, name, obj)
            return 200, copy.deepcopy(obj), {}
        self._remove(res.plural, ns, name, policy)
        return 200, self._deleted_body(res, obj), {}

    @staticmethod
    def _deleted_body(res: Resource, obj: dict) -> dict:
        if res.plural in ("pods", "services", "namespaces", "persistentvolumeclaims", "persistentvolumes"):
            return copy.deepcopy(obj)
        details = res.details(obj["metadata"]["name"])
        details["uid"] = obj["metadata"]["uid"]
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def _delete_collection(self, res: Resource, ns, query, body, dry_run):
        policy, _ = self._delete_options(query, body)
        listed = self._list(res, ns, {k: v for k, v in query.items() if k in ("labelSelector", "fieldSelector")})
        if not dry_run:
            for o in listed["items"]:
                self._remove(res.plural, ns, o["metadata"]["name"],
                             policy or ("Orphan" if res.plural == "jobs" else "Background"))
        return 200, listed, {}

    def _pod_log(self, ns, name, query):
        pod = self._store.get(("pods", ns, name))
        if pod is None:
            raise api.not_found(api.resource_for("pods"), name)
        containers = [c["name"] for c in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]]
        container = query.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None:
            raise api.bad_request(f"a container name must be specified for pod {name}, choose one of: {containers}")
        if container not in containers:
            raise api.bad_request(f"container {container} is not valid for pod {name}")
        text = self._jobs.container_log(ns, name, container) if self._jobs else ""
        tail = query.get("tailLines")
        if tail:
            text = "".join(text.splitlines(keepends=True)[-int(tail):])
        return 200, text, {}


class KubeClient:
    """A minimal HTTPS client for the stand-in (one keep-alive connection), for tests."""

    def __init__(self, standin: KubeStandin, token: str | None = "", verify: bool = True):
        import http.client

        self.standin = standin
        self.token = standin.token if token == "" else token
        ctx = ssl.create_default_context(cafile=str(standin.ca_path)) if verify else ssl.create_default_context()
        self.conn = http.client.HTTPSConnection("127.0.0.1", standin.port, context=ctx, timeout=30)

    def request(self, method: str, path: str, body=None, content_type: str = "application/json",
                headers: dict | None = None):
        """Returns (status, parsed body (JSON or text), response headers)."""
        h = dict(headers or {})
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h["Content-Type"] = content_type
        self.conn.request(method, path, body=data, headers=h)
        resp = self.conn.getresponse()
        raw = resp.read()
        ctype = resp.getheader("Content-Type", "")
        parsed = json.loads(raw) if ctype.startswith("application/json") and raw else raw.decode(errors="replace")
        return resp.status, parsed, dict(resp.getheaders())

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body):
        return self.request("POST", path, body)

    def put(self, path, body):
        return self.request("PUT", path, body)

    def patch(self, path, body, content_type="application/merge-patch+json"):
        return self.request("PATCH", path, body, content_type)

    def delete(self, path, body=None):
        return self.request("DELETE", path, body)

    def close(self):
        self.conn.close()
