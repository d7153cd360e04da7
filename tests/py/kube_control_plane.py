"""A real Kubernetes control plane for tests: etcd 3.5, kube-apiserver and kube-controller-manager
1.20.2 (built by tests/kube.sh from Debian 12's source package), on 127.0.0.1 only.

- PKI made at test time (pki.py): one CA signs the apiserver's serving certificate, the client
  certificates of every identity (admin in system:masters, the controller-manager, the scheduler
  and the node of the process kubelet, the apiserver's kubelet client) and the kubelet's serving
  certificate; service-account tokens are signed with an RSA key made here.
- kube-apiserver: TLS, client-certificate auth (no anonymous access), Node and RBAC authorizers,
  the default admission chain plus NodeRestriction, service-account token signing, an audit log
  (Metadata level) for least-privilege checks; the insecure port off; ports chosen at start.
- kube-controller-manager: the service-account, token, job, garbage-collector, namespace and
  PVC/PV-protection controllers (the default admission chain puts the protection finalizers on
  every PVC and PV: without them a deleted claim stays Terminating), each with its own service-account credentials (as kubeadm runs it).
- Every process runs in its own session, dies with the test process (PR_SET_PDEATHSIG) and is
  killed on `stop()`, at interpreter exit and on start failure; every wait is bounded.

`KubeClient` is a small HTTPS client (client certificate or bearer token) for tests.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import http.client
import json
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcd_cluster import EtcdCluster, free_ports, scrubbed_env
from pki import CA, _san, _write, make_ca
from waiting import WaitTimeout, wait_for

__all__ = ["ControlPlane", "KubeClient", "KubeError", "kube_bin_dir", "issue_identity"]

REPO = Path(__file__).resolve().parents[2]
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


class KubeError(RuntimeError):
    """An API answer that was not 2xx: `status` and the apiserver's `Status` body."""

    def __init__(self, method: str, path: str, status: int, body):
        self.status = status
        self.body = body
        msg = body.get("message") if isinstance(body, dict) else str(body)[:500]
        super().__init__(f"{method} {path}: {status}: {msg}")


def kube_bin_dir() -> Path:
    """Where kube-apiserver and kube-controller-manager are: `$LIFEBOAT_KUBE_BIN`, else what
    `bash tests/kube.sh` prints (building them on first use; a build failure fails the caller)."""
    env = os.environ.get("LIFEBOAT_KUBE_BIN")
    if env:
        return Path(env)
    out = subprocess.run(["bash", str(REPO / "tests" / "kube.sh")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"tests/kube.sh failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def issue_identity(ca: CA, dir: Path, stem: str, user: str, groups=(), names=(), server: bool = False,
                   client: bool = True):
    """A certificate for Kubernetes user `user` (CN) in `groups` (O), optionally also a serving
    certificate for `names`; returns (cert_path, key_path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
    usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
    cert = b.sign(ca.key, hashes.SHA256())
    cert_path, key_path = Path(dir) / f"{stem}.crt", Path(dir) / f"{stem}.key"
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), private=True)
    return cert_path, key_path


# ---- processes ------------------------------------------------------------------------------

_LIVE: set[int] = set()
_LIVE_LOCK = threading.Lock()
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child before exec: SIGKILL when the parent dies (a killed pytest leaks nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; atexit and stop() still kill it
        pass


def spawn(args, log_path: Path, env=None, cwd=None) -> subprocess.Popen:
    """Start `args` in its own session with output to `log_path`; tracked for killing."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env or scrubbed_env(),
                                cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
    with _LIVE_LOCK:
        _LIVE.add(proc.pid)
    return proc


def kill(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL after `grace` s; reaps it."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    with _LIVE_LOCK:
        _LIVE.discard(proc.pid)


@atexit.register
def _kill_all() -> None:
    for pid in list(_LIVE):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Etcd(EtcdCluster):
    """EtcdCluster whose member dies with the test process too (spawn above)."""

    def _spawn(self, m) -> None:
        if m.running():
            return
        m.proc = spawn(self._args(m), m.log_path, env=scrubbed_env(), cwd=self.dir)


# ---- client ---------------------------------------------------------------------------------


class KubeClient:
    """HTTPS client for the apiserver as one identity (client certificate or bearer token).
    One keep-alive connection per thread; every request bounded by `timeout`."""

    def __init__(self, port: int, ca_path: Path, cert=None, token: str | None = None, timeout: float = 30.0):
        self.port = port
        self.ca_path = Path(ca_path)
        self.cert = cert
        self.token = token
        self.timeout = timeout
        self.ctx = ssl.create_default_context(cafile=str(ca_path))
        if cert is not None:
            self.ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPSConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=self.timeout)
            self._local.conn = c
        return c

    def request(self, method: str, path: str, body=None, content_type: str = "application/json",
                raw: bool = False):
        """(status, body): JSON parsed when the answer is JSON, else text (bytes with `raw`)."""
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        for attempt in range(2):  # one retry on a keep-alive connection the server closed
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        if raw:
            return resp.status, payload
        if resp.getheader("Content-Type", "").startswith("application/json") and payload:
            return resp.status, json.loads(payload)
        return resp.status, payload.decode(errors="replace")

    def ok(self, method: str, path: str, body=None, content_type: str = "application/json"):
        """The body of a 2xx answer; KubeError otherwise."""
        status, out = self.request(method, path, body, content_type)
        if not 200 <= status < 300:
            raise KubeError(method, path, status, out)
        return out

    def get(self, path):
        return self.ok("GET", path)

    def create(self, path, obj):
        return self.ok("POST", path, obj)

    def put(self, path, obj):
        return self.ok("PUT", path, obj)

    def patch(self, path, patch, content_type="application/merge-patch+json"):
        return self.ok("PATCH", path, patch, content_type)

    def delete(self, path, body=None):
        return self.ok("DELETE", path, body)

    def exists(self, path) -> bool:
        status, out = self.request("GET", path)
        if status == 404:
            return False
        if status != 200:
            raise KubeError("GET", path, status, out)
        return True

    def close(self):
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None


# ---- control plane --------------------------------------------------------------------------

AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager under `dir` (see module doc)."""

    READY_TIMEOUT = 90.0  # /readyz is ok after 6-7 s idle; the machine may be busy

    def __init__(self, dir, tools: Path, kube_bin: Path):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tools = Path(tools)
        self.kube_bin = Path(kube_bin)
        for prog in ("kube-apiserver", "kube-controller-manager"):
            if not (self.kube_bin / prog).exists():
                raise RuntimeError(f"{prog} missing in {self.kube_bin}: run `bash tests/kube.sh`")
        self.pki = self.dir / "pki"
        self.ca = make_ca(self.pki, "kube-ca")
        self.ca_path = self.ca.cert_path
        self.etcd: EtcdCluster | None = None
        self.apiserver: subprocess.Popen | None = None
        self.controller_manager: subprocess.Popen | None = None
        self.port = 0
        self.audit_log = self.dir / "audit.log"
        self.apiserver_log = self.dir / "kube-apiserver.log"
        self.cm_log = self.dir / "kube-controller-manager.log"
        self._identities: dict[str, tuple[Path, Path]] = {}
        self.admin: KubeClient | None = None

    # identities ---------------------------------------------------------------------------

    def identity(self, user: str, groups=()) -> tuple[Path, Path]:
        """(cert, key) of a client certificate for `user` in `groups` (made once)."""
        key = user + "|" + ",".join(groups)
        if key not in self._identities:
            stem = "id-" + "".join(c if c.isalnum() else "-" for c in user)
            self._identities[key] = issue_identity(self.ca, self.pki, stem, user, groups)
        return self._identities[key]

    def client(self, user: str = "admin", groups=("system:masters",), token: str | None = None) -> KubeClient:
        if token is not None:
            return KubeClient(self.port, self.ca_path, token=token)
        return KubeClient(self.port, self.ca_path, cert=self.identity(user, groups))

    def kubeconfig(self, path: Path, user: str = "admin", groups=("system:masters",),
                   token: str | None = None, namespace: str | None = None) -> Path:
        """A kubeconfig for the apiserver as `user` (client certificate) or with a bearer `token`."""
        if token is not None:
            u = {"token": token}
        else:
            cert, key = self.identity(user, groups)
            u = {"client-certificate": str(cert), "client-key": str(key)}
        ctx = {"cluster": "test", "user": "u"}
        if namespace:
            ctx["namespace"] = namespace
        cfg = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": str(self.ca_path)}}],
            "users": [{"name": "u", "user": u}],
            "contexts": [{"name": "test", "context": ctx}],
            "current-context": "test",
        }
        path = Path(path)
        _write(path, json.dumps(cfg, indent=1).encode(), private=True)
        return path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> "ControlPlane":
        try:
            self.etcd = _Etcd(self.dir / "etcd", members=1, tools=self.tools)
            self.etcd.start()
            self._write_files()
            for attempt in range(3):  # a port taken between choosing and binding: choose again
                self.port = free_ports(1)[0]
                self.apiserver = spawn(self._apiserver_args(), self.apiserver_log)
                if self._wait_ready():
                    break
                kill(self.apiserver)
                if "address already in use" not in tail(self.apiserver_log, 50):
                    raise RuntimeError(f"kube-apiserver did not become ready:\n{tail(self.apiserver_log)}")
            else:
                raise RuntimeError(f"kube-apiserver could not bind a port:\n{tail(self.apiserver_log)}")
            self.admin = self.client()
            self.kubeconfig(self.dir / "controller-manager.kubeconfig", "system:kube-controller-manager")
            self.controller_manager = spawn(self._cm_args(), self.cm_log)
            # The service-account and token controllers work once the default namespace has a
            # default ServiceAccount with a token Secret.
            self.wait_service_account("default")
        except BaseException:
            self.stop()
            raise
        return self

    def _write_files(self) -> None:
        self.server_cert, self.server_key = self.ca.issue(
            self.pki, "apiserver", ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
                                    "kubernetes.default.svc", "10.96.0.1"], client=False, server=True)
        self.kubelet_client = issue_identity(self.ca, self.pki, "apiserver-kubelet-client",
                                             "kube-apiserver-kubelet-client", ["system:masters"])
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key = self.pki / "sa.key"
        self.sa_pub = self.pki / "sa.pub"
        _write(self.sa_key, sa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), private=True)
        _write(self.sa_pub, sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
        self.audit_policy = self.dir / "audit-policy.yaml"
        self.audit_policy.write_text(AUDIT_POLICY)

    def _apiserver_args(self) -> list[str]:
        e = self.etcd
        return [
            str(self.kube_bin / "kube-apiserver"),
            "--bind-address=127.0.0.1", f"--secure-port={self.port}", "--insecure-port=0",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--etcd-servers={','.join(e.client_urls)}", f"--etcd-cafile={e.ca_path}",
            f"--etcd-certfile={e.client_cert_path}", f"--etcd-keyfile={e.client_key_path}",
            f"--tls-cert-file={self.server_cert}", f"--tls-private-key-file={self.server_key}",
            f"--client-ca-file={self.ca_path}", "--anonymous-auth=false",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self.sa_pub}", f"--service-account-signing-key-file={self.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            f"--kubelet-client-certificate={self.kubelet_client[0]}", f"--kubelet-client-key={self.kubelet_client[1]}",
            f"--kubelet-certificate-authority={self.ca_path}", "--kubelet-preferred-address-types=InternalIP",
            f"--audit-policy-file={self.audit_policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            "--profiling=false", "--v=1",
        ]

    def _cm_args(self) -> list[str]:
        kc = self.dir / "controller-manager.kubeconfig"
        return [
            str(self.kube_bin / "kube-controller-manager"),
            f"--kubeconfig={kc}", "--port=0", "--secure-port=0", "--bind-address=127.0.0.1",
            "--leader-elect=false", "--use-service-account-credentials=true",
            "--controllers=serviceaccount-token,serviceaccount,job,garbagecollector,namespace,pvc-protection,pv-protection",
            f"--service-account-private-key-file={self.sa_key}", f"--root-ca-file={self.ca_path}",
            "--concurrent-gc-syncs=5", "--v=1",
        ]

    def _wait_ready(self) -> bool:
        """True once /readyz answers ok; False when the apiserver exited first; raises on timeout."""
        probe = KubeClient(self.port, self.ca_path, cert=self.identity("admin", ("system:masters",)), timeout=5)
        deadline = time.monotonic() + self.READY_TIMEOUT
        try:
            for _ in range(10000):
                if self.apiserver.poll() is not None:
                    return False
                try:
                    status, body = probe.request("GET", "/readyz")
                    if status == 200:
                        return True
                except (OSError, http.client.HTTPException):
                    probe.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kube-apiserver /readyz not ok after {self.READY_TIMEOUT} s:\n"
                                       f"{tail(self.apiserver_log)}")
                time.sleep(0.2)
        finally:
            probe.close()
        return False

    def wait_service_account(self, ns: str, name: str = "default", timeout: float = 60.0) -> dict:
        """Wait (bounded) until ServiceAccount `ns/name` exists with a token Secret; returns it."""
        def ready():
            self.check_running()
            status, sa = self.admin.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/{name}")
            return sa if status == 200 and sa.get("secrets") else None
        try:
            return wait_for(ready, timeout, f"ServiceAccount {ns}/{name} with a token", interval=0.2)
        except WaitTimeout as e:
            raise WaitTimeout(f"{e}\ncontroller-manager log:\n{tail(self.cm_log)}") from None

    def sa_token(self, ns: str, name: str, timeout: float = 60.0) -> str:
        """The legacy token of ServiceAccount `ns/name` (1.20's token controller makes it)."""
        import base64

        sa = self.wait_service_account(ns, name, timeout)
        for ref in sa["secrets"]:
            s = self.admin.get(f"/api/v1/namespaces/{ns}/secrets/{ref['name']}")
            if s.get("type") == "kubernetes.io/service-account-token" and s.get("data", {}).get("token"):
                return base64.b64decode(s["data"]["token"]).decode()
        raise RuntimeError(f"ServiceAccount {ns}/{name} has no token Secret with data")

    def check_running(self) -> None:
        """Raise naming the component when one of ours exited."""
        for name, proc, log in (("kube-apiserver", self.apiserver, self.apiserver_log),
                                ("kube-controller-manager", self.controller_manager, self.cm_log)):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")

    def audit_events(self) -> list[dict]:
        out = []
        if self.audit_log.exists():
            for line in self.audit_log.read_text(errors="replace").splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out

    def rss_kb(self) -> dict:
        """Resident memory of each process (kB), for reports."""
        out = {}
        for name, proc in (("kube-apiserver", self.apiserver), ("kube-controller-manager", self.controller_manager)):
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] = int(line.split()[1])
            except (OSError, AttributeError):
                pass
        return out

    def stop(self) -> None:
        if self.admin is not None:
            self.admin.close()
        kill(self.controller_manager)
        kill(self.apiserver)
        if self.etcd is not None:
            self.etcd.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def ns_path(ns: str, plural: str, name: str | None = None, group: str = "", version: str = "v1") -> str:
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    p = f"{base}/namespaces/{ns}/{plural}"
    return f"{p}/{urllib.parse.quote(name)}" if name else p


def wait_pod(client: KubeClient, ns: str, name: str, pred, timeout: float = 60.0, what: str = "pod condition"):
    """Poll Pod `ns/name` until `pred(pod)` is truthy (bounded); the timeout names the last status."""
    last = {}

    def check():
        nonlocal last
        status, pod = client.request("GET", ns_path(ns, "pods", name))
        if status != 200:
            last = {"http": status}
            return None
        last = pod.get("status", {})
        return pod if pred(pod) else None
    try:
        return wait_for(check, timeout, f"{what} of pod {ns}/{name}", interval=0.2)
    except WaitTimeout:
        raise WaitTimeout(f"timed out after {timeout} s waiting for {what} of pod {ns}/{name}; "
                          f"last status: {json.dumps(last)[:3000]}") from None


def phase_in(*phases):
    return lambda pod: pod.get("status", {}).get("phase") in phases
