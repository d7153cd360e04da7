"""A real etcd 3.5 cluster on loopback for tests: peer and client TLS with client-cert auth.

Certificates come from `pki.py` (SAN 127.0.0.1 and localhost), ports are free ones, data
dirs live under the given tmpdir, every member runs in its own session and is killed on
`stop()`, on garbage collection and at interpreter exit, so a failing test leaks nothing.
Short heartbeat/election timeouts keep leader elections fast.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import weakref
from pathlib import Path

from pki import make_ca

__all__ = ["EtcdCluster", "EtcdError", "tools_bin", "free_ports", "scrubbed_env"]

_REPO = Path(__file__).resolve().parents[2]


def tools_bin() -> Path:
    """Where etcd/etcdctl/etcdutl live: `$LIFEBOAT_TOOLS` or `<repo>/.tools/bin`."""
    return Path(os.environ.get("LIFEBOAT_TOOLS") or _REPO / ".tools" / "bin")


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (sockets held until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def scrubbed_env(extra: dict | None = None) -> dict:
    """The environment for child tools: no ETCDCTL_*/ETCD_* overrides, no proxies, no AWS_*."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("ETCD", "AWS_", "RCLONE_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["ETCDCTL_API"] = "3"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if extra:
        env.update(extra)
    return env


class EtcdError(RuntimeError):
    pass


# Every live etcd process group, killed at interpreter exit whatever happened.
_LIVE: set[int] = set()
_LIVE_LOCK = threading.Lock()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    with _LIVE_LOCK:
        _LIVE.discard(pid)


@atexit.register
def _kill_all() -> None:
    for pid in list(_LIVE):
        _kill_group(pid)


class _Member:
    def __init__(self, index: int, name: str, client_port: int, peer_port: int, data_dir: Path, log_path: Path):
        self.index = index
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """A real etcd cluster of `members` members over TLS (see module doc)."""

    STARTUP_TIMEOUT = 30.0

    def __init__(self, tmpdir, members: int = 3, quota_backend_bytes: int | None = None,
                 tools: Path | None = None, heartbeat_ms: int = 50, election_ms: int = 500,
                 client_common_name: str = "etcdsnap"):
        if members < 1:
            raise ValueError("members must be >= 1")
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tools = Path(tools) if tools else tools_bin()
        self.size = members
        self.quota_backend_bytes = quota_backend_bytes
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        pki_dir = self.dir / "pki"
        self.ca = make_ca(pki_dir, "etcd-ca")
        self.ca_path = self.ca.cert_path
        self.server_cert_path, self.server_key_path = self.ca.issue(
            pki_dir, "etcd-server", ["127.0.0.1", "localhost"], client=True, server=True)
        self.peer_cert_path, self.peer_key_path = self.ca.issue(
            pki_dir, "etcd-peer", ["127.0.0.1", "localhost"], client=True, server=True)
        self.client_cert_path, self.client_key_path = self.ca.issue(
            pki_dir, "etcdsnap-client", ["localhost"], client=True, server=False, common_name=client_common_name)
        ports = free_ports(2 * members)
        self.token = f"lifeboat-{os.getpid()}-{id(self):x}"
        self.members = [
            _Member(i, f"m{i}", ports[2 * i], ports[2 * i + 1], self.dir / f"m{i}.data", self.dir / f"m{i}.log")
            for i in range(members)
        ]
        self._extra_args: list[str] = []
        self._finalizer = weakref.finalize(self, EtcdCluster._finalize, [m for m in self.members])

    # ---- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def _finalize(members):
        for m in members:
            if m.proc is not None and m.proc.poll() is None:
                _kill_group(m.proc.pid)

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def _args(self, m: _Member) -> list[str]:
        args = [
            str(self.tools / "etcd"),
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token,
            "--client-cert-auth", "--trusted-ca-file", str(self.ca_path),
            "--cert-file", str(self.server_cert_path), "--key-file", str(self.server_key_path),
            "--peer-client-cert-auth", "--peer-trusted-ca-file", str(self.ca_path),
            "--peer-cert-file", str(self.peer_cert_path), "--peer-key-file", str(self.peer_key_path),
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap", "--log-level", "warn", "--log-outputs", "stderr",
        ]
        if self.quota_backend_bytes is not None:
            args += ["--quota-backend-bytes", str(self.quota_backend_bytes)]
        return args + self._extra_args

    def _spawn(self, m: _Member) -> None:
        if m.running():
            return
        log = open(m.log_path, "ab")
        try:
            m.proc = subprocess.Popen(
                self._args(m), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=scrubbed_env(), start_new_session=True, cwd=self.dir,
            )
        finally:
            log.close()
        with _LIVE_LOCK:
            _LIVE.add(m.proc.pid)

    def start(self) -> "EtcdCluster":
        """Start every member and wait (bounded) until each one reports healthy.

        A port taken by someone else between picking and binding (other tests run in parallel)
        makes a fresh cluster retry on new ports, at most 3 times."""
        fresh = not any(m.data_dir.exists() for m in self.members)
        for attempt in range(3):
            try:
                for m in self.members:
                    self._spawn(m)
                self._wait_healthy(self.members)
                return self
            except EtcdError as e:
                self.stop()
                if not (fresh and attempt < 2 and "address already in use" in str(e)):
                    raise
                ports = free_ports(2 * len(self.members))
                for m in self.members:
                    shutil.rmtree(m.data_dir, ignore_errors=True)
                    m.client_port, m.peer_port = ports[2 * m.index], ports[2 * m.index + 1]
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def restore_from(self, snapshot) -> "EtcdCluster":
        """Before `start()`: fill every member's data dir from a snapshot file with the real
        `etcdutl snapshot restore` (the documented restore path); then `start()` serves its keys."""
        if any(m.running() for m in self.members):
            raise EtcdError("restore_from needs a stopped cluster")
        for m in self.members:
            if m.data_dir.exists():
                shutil.rmtree(m.data_dir)
            cp = subprocess.run(
                [str(self.tools / "etcdutl"), "snapshot", "restore", str(snapshot), "--name", m.name,
                 "--data-dir", str(m.data_dir), "--initial-cluster", self.initial_cluster,
                 "--initial-cluster-token", self.token, "--initial-advertise-peer-urls", m.peer_url],
                capture_output=True, env=scrubbed_env(), timeout=120)
            if cp.returncode != 0:
                raise EtcdError(f"etcdutl snapshot restore {snapshot} failed ({cp.returncode}): "
                                f"{cp.stderr.decode(errors='replace')[-2000:]}")
        return self

    def stop(self) -> None:
        for m in self.members:
            self._stop(m)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _stop(self, m: _Member, timeout: float = 10.0) -> None:
        if m.proc is None:
            return
        if m.proc.poll() is None:
            try:
                os.killpg(m.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(m.proc.pid)
        m.proc.wait(5)
        m.proc = None

    def stop_member(self, i: int) -> None:
        """Stop member `i` (SIGTERM, then SIGKILL after 10 s); its data dir is kept."""
        self._stop(self.members[i])

    def kill_member(self, i: int) -> None:
        """SIGKILL member `i` at once (a crash)."""
        m = self.members[i]
        if m.proc is not None:
            _kill_group(m.proc.pid)
            m.proc.wait(5)
            m.proc = None

    def start_member(self, i: int, wait: bool = True) -> None:
        """Start member `i` again on its data dir; it rejoins. Waits (bounded) until it is healthy."""
        m = self.members[i]
        self._spawn(m)
        if wait:
            self._wait_healthy([m])

    def heal(self) -> None:
        """Back to normal: start every stopped member (waiting until healthy) and clear any alarm."""
        stopped = [m for m in self.members if not m.running()]
        for m in stopped:
            self._spawn(m)
        self._wait_healthy(stopped)
        if self.alarms():
            self.disarm()

    def running_members(self) -> list[int]:
        return [m.index for m in self.members if m.running()]

    def log_tail(self, i: int, lines: int = 20) -> str:
        try:
            return "\n".join(self.members[i].log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_healthy(self, members, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.STARTUP_TIMEOUT)
        pending = list(members)
        last = {}
        while pending:
            for m in list(pending):
                if m.proc is not None and m.proc.poll() is not None:
                    raise EtcdError(f"etcd member {m.name} exited with {m.proc.returncode}:\n{self.log_tail(m.index)}")
                try:
                    status, body = self.http(m.index, "GET", "/health", timeout=2)
                    if status == 200 and body.get("health") == "true":
                        pending.remove(m)
                        continue
                    # An active alarm (e.g. NOSPACE, which survives restarts) makes /health false;
                    # the member is still up if it knows a leader.
                    if "ALARM" in str(body.get("reason", "")) and self.status(m.index).get("leader", "0") != "0":
                        pending.remove(m)
                        continue
                    last[m.name] = f"HTTP {status} {body}"
                except (OSError, ssl.SSLError, http.client.HTTPException, ValueError, EtcdError) as e:
                    last[m.name] = repr(e)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise EtcdError(
                    "etcd members not healthy in time: "
                    + "; ".join(f"{m.name}: {last.get(m.name)}\n{self.log_tail(m.index, 5)}" for m in pending))
            time.sleep(0.1)

    # ---- HTTPS JSON gateway ------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context trusting the cluster CA and presenting the etcdsnap client cert."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.load_cert_chain(str(self.client_cert_path), str(self.client_key_path))
        return ctx

    def http(self, i: int, method: str, path: str, body=None, timeout: float = 5.0):
        """One HTTPS request to member `i` (the gRPC gateway's JSON); returns (status, parsed JSON)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.members[i].client_port, context=self.ssl_context(),
                                           timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                parsed = json.loads(raw) if raw else {}
            except ValueError:
                parsed = {"raw": raw.decode(errors="replace")}
            return resp.status, parsed
        finally:
            conn.close()

    def status(self, i: int) -> dict:
        """`POST /v3/maintenance/status` on member `i` (header.member_id, leader, dbSize, ...).

        The gRPC gateway omits zero values: with no leader the "leader" field is absent."""
        st, body = self.http(i, "POST", "/v3/maintenance/status", {})
        if st != 200:
            raise EtcdError(f"status of member {i}: HTTP {st} {body}")
        return body

    def leader_index(self) -> int | None:
        """Index of the member that is leader according to a running member, or None."""
        for i in self.running_members():
            try:
                st = self.status(i)
            except (OSError, EtcdError, ssl.SSLError, http.client.HTTPException):
                continue
            leader = st.get("leader", "0")  # the gateway omits zero values: no leader = no field
            if leader == "0":
                continue
            for j in self.running_members():
                try:
                    if self.status(j)["header"]["member_id"] == leader:
                        return j
                except (OSError, EtcdError, KeyError, ssl.SSLError, http.client.HTTPException):
                    continue
        return None

    def alarms(self) -> list[dict]:
        """Active alarms via `POST /v3/maintenance/alarm` (action GET) on a running member."""
        for i in self.running_members():
            try:
                st, body = self.http(i, "POST", "/v3/maintenance/alarm", {"action": "GET"})
            except (OSError, ssl.SSLError, http.client.HTTPException):
                continue
            if st == 200:
                return body.get("alarms", [])
        raise EtcdError("no running member answered the alarm list")

    # ---- data via etcdctl ----------------------------------------------------------------------

    def etcdctl(self, *args, endpoints: list[str] | None = None, check: bool = False, timeout: float = 30.0,
                input: bytes | None = None, command_timeout: str = "10s") -> subprocess.CompletedProcess:
        """Run the real etcdctl with TLS flags and the running members' endpoints filled in."""
        eps = endpoints or [self.members[i].client_url for i in self.running_members()] or self.client_urls
        cmd = [
            str(self.tools / "etcdctl"),
            "--endpoints", ",".join(eps),
            "--cacert", str(self.ca_path), "--cert", str(self.client_cert_path), "--key", str(self.client_key_path),
            "--dial-timeout", "3s", "--command-timeout", command_timeout,
            *[str(a) for a in args],
        ]
        cp = subprocess.run(cmd, input=input, capture_output=True, env=scrubbed_env(), timeout=timeout)
        if check and cp.returncode != 0:
            raise EtcdError(f"etcdctl {' '.join(map(str, args))} failed ({cp.returncode}): {cp.stderr.decode(errors='replace')}")
        return cp

    def put(self, key: str, value: str) -> None:
        self.etcdctl("put", "--", key, value, check=True)

    def get_all(self, prefix: str = "") -> dict:
        """Every key under `prefix` (all keys for "") as {key: value} (str, utf-8)."""
        out = json.loads(self.etcdctl("get", "--prefix", "-w", "json", "--", prefix, check=True).stdout)
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode(errors="surrogateescape")
            for kv in out.get("kvs", [])
        }

    def _gateway_put(self, conn: http.client.HTTPSConnection, key: bytes, value: bytes):
        body = json.dumps({"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()})
        conn.request("POST", "/v3/kv/put", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, raw

    def fill(self, nbytes: int, prefix: str = "/fill/", chunk: int = 256 * 1024) -> int:
        """Write roughly `nbytes` of incompressible values under `prefix`; returns bytes written."""
        i = self.running_members()[0] if self.running_members() else 0
        conn = http.client.HTTPSConnection("127.0.0.1", self.members[i].client_port, context=self.ssl_context(),
                                           timeout=30)
        written, n = 0, 0
        try:
            while written < nbytes and n < 100000:
                size = min(chunk, max(1, nbytes - written))
                st, raw = self._gateway_put(conn, f"{prefix}{n:08d}".encode(), os.urandom(size))
                if st != 200:
                    raise EtcdError(f"fill: put failed: HTTP {st} {raw[:300]!r}")
                written += size
                n += 1
        finally:
            conn.close()
        return written

    def _raise_nospace_now(self, limit: int) -> None:
        i = self.running_members()[0]
        conn = http.client.HTTPSConnection("127.0.0.1", self.members[i].client_port, context=self.ssl_context(),
                                           timeout=30)
        try:
            for n in range(limit):
                st, raw = self._gateway_put(conn, f"/nospace/{n:06d}".encode(), os.urandom(64 * 1024))
                if st != 200:
                    if b"database space exceeded" in raw:
                        return
                    raise EtcdError(f"put while filling to quota: HTTP {st} {raw[:300]!r}")
        finally:
            conn.close()
        raise EtcdError(f"no NOSPACE after {limit} puts of 64 KiB")

    def trigger_nospace(self) -> None:
        """Make a real NOSPACE alarm active: writes until etcd refuses with 'database space exceeded'.

        With `quota_backend_bytes` set this just writes. Without it, every member is restarted with a
        quota just above the current DB size, filled to it, and restarted without the quota; the
        alarm is stored in the backend, so it stays active until `disarm()`.
        """
        if self.quota_backend_bytes is not None:
            self._raise_nospace_now(10000)
        else:
            db = max(int(self.status(i).get("dbSize", 0)) for i in self.running_members())
            running = self.running_members()
            self.stop()
            self.quota_backend_bytes = db + 2 * 1024 * 1024
            try:
                for i in running:
                    self._spawn(self.members[i])
                self._wait_healthy([self.members[i] for i in running])
                self._raise_nospace_now(2000)
            finally:
                self.quota_backend_bytes = None
                self.stop()
                for i in running:
                    self._spawn(self.members[i])
                self._wait_healthy([self.members[i] for i in running])
        self._wait_alarm(present=True)

    def disarm(self) -> None:
        """Free the space (compact + defrag) and disarm every alarm; waits until none is active."""
        self.etcdctl("del", "--prefix", "/nospace/", check=True)
        rev = int(self.status(self.running_members()[0])["header"]["revision"])
        self.etcdctl("compaction", "--physical", str(rev), check=False)
        self.etcdctl("defrag", check=False)
        self.etcdctl("alarm", "disarm", check=True)
        self._wait_alarm(present=False)

    def _wait_alarm(self, present: bool, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alarms = self.alarms()
            if bool(alarms) == present:
                return
            if time.monotonic() > deadline:
                raise EtcdError(f"alarm state did not become {'active' if present else 'clear'}: {alarms}")
            time.sleep(0.1)


def restored_keys(tools: Path, data_dir: Path, peer: int, client: int, prefix: str, log: Path) -> dict:
    """Starts a single etcd member `r0` on a restored `data_dir` (plain HTTP on 127.0.0.1),
    waits (30 s at most) until etcdctl reads the keys under `prefix`, stops it and returns them
    as {key: value}."""
    from waiting import wait_for

    proc = subprocess.Popen([str(tools / "etcd"), "--name", "r0", "--data-dir", str(data_dir),
                             "--listen-client-urls", f"http://127.0.0.1:{client}",
                             "--advertise-client-urls", f"http://127.0.0.1:{client}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"r0=http://127.0.0.1:{peer}"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        def keys():
            out = subprocess.run([str(tools / "etcdctl"), f"--endpoints=http://127.0.0.1:{client}", "get",
                                  prefix, "--prefix", "-w", "json"], capture_output=True, text=True,
                                 timeout=10, env=scrubbed_env())
            if out.returncode != 0:
                return None
            kvs = json.loads(out.stdout).get("kvs", [])
            return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode() for kv in kvs}
        return wait_for(keys, 30, "the restored etcd to answer")
    finally:
        proc.terminate()
        proc.wait(10)
