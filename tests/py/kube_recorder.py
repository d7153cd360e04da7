"""A recording, fault-injecting HTTPS proxy in front of the real kube-apiserver: a client
(etcdsnap) talks to it as to the apiserver (same CA, its own serving certificate), every request
is forwarded with its own Authorization header over a new TLS connection and answered with the
apiserver's answer. Each request is recorded (`Request`: method, path, status, None for a dropped
connection, and when) and every object body sent with POST or PUT is validated strictly against
Kubernetes 1.33 (kube_standin.schema_check: unknown fields are errors), because 1.20 drops
unknown fields silently. Bodies are bounded (16 MiB).

Faults, by rule (`fail`, `slow`, `drop`), matched by method ("*": any) and a regex searched in
the path without its query, each for a count of matching requests (`times`, None: until
`clear_faults`) and with a probability drawn from a generator seeded at construction (the same
seed and the same requests give the same faults). The first rule that matches and draws true
applies; a rule whose count is used up no longer matches.
- `fail(..., status)`: answered by the proxy with an apiserver-shaped `Status` (reason from the
  status unless given: 409 Conflict, 429 TooManyRequests with a `Retry-After` header, 500
  InternalError, 503 ServiceUnavailable, ...); the request never reaches the apiserver, as when
  the apiserver refuses it before acting (a 409 is the stale-resourceVersion answer).
- `slow(..., seconds)`: the answer is held that long (at most MAX_DELAY) before forwarding.
- `drop(..., after_forward)`: the TLS connection is cut without an answer, before forwarding
  (the request was lost) or after it (the apiserver acted; the client never hears).
What it does not do: watch streams, HTTP/2, partial answers (a drop is all or nothing)."""

from __future__ import annotations

import http.client
import http.server
import json
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import NamedTuple

from etcd_cluster import free_ports
from kube_control_plane import ControlPlane, issue_identity

MAX_BODY = 16 << 20
MAX_DELAY = 30.0  # seconds a slow answer is held at most: every wait in a test is bounded
UPSTREAM_TIMEOUT = 60.0

REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
           410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 502: "BadGateway",
           503: "ServiceUnavailable", 504: "Timeout"}


class Request(NamedTuple):
    method: str
    path: str  # with its query
    status: int | None  # None: the connection was cut without an answer
    at: float  # time.monotonic() when the answer (or the cut) was given


@dataclass
class Fault:
    method: str
    path: re.Pattern
    action: str  # "fail" | "slow" | "drop"
    times: int | None = 1
    probability: float = 1.0
    status: int = 0
    reason: str | None = None
    message: str | None = None
    retry_after: int | None = None
    delay: float = 0.0
    after_forward: bool = False
    hits: list = field(default_factory=list)  # (method, path) of every request it applied to

    def matches(self, method: str, path: str) -> bool:
        return (self.times is None or self.times > 0) and self.method in ("*", method) and bool(self.path.search(path))


def status_body(code: int, reason: str, message: str) -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


class Recorder:
    def __init__(self, plane: ControlPlane, seed: int = 0):
        self.plane = plane
        self.port = free_ports(1)[0]
        self.requests: list[Request] = []
        self.schema_failures: list[str] = []
        self.faults: list[Fault] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # ---- fault rules ---------------------------------------------------------------------

    def _add(self, method: str, path: str, action: str, times: int | None, probability: float, **kw) -> Fault:
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"probability {probability} is not in (0, 1]")
        if times is not None and times < 1:
            raise ValueError(f"times {times} must be at least 1 (or None: until clear_faults)")
        rule = Fault(method.upper(), re.compile(path), action, times, probability, **kw)
        with self._lock:
            self.faults.append(rule)
        return rule

    def fail(self, method: str, path: str, status: int, times: int | None = 1, probability: float = 1.0,
             reason: str | None = None, message: str | None = None, retry_after: int | None = None) -> Fault:
        """Answer matching requests with `status` and a Status body (429: Retry-After, 1 s unless given)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        return self._add(method, path, "fail", times, probability, status=status,
                         reason=reason or REASONS.get(status, "InternalError"),
                         message=message or f"injected by the test proxy ({status})", retry_after=retry_after)

    def slow(self, method: str, path: str, seconds: float, times: int | None = 1, probability: float = 1.0) -> Fault:
        """Hold matching requests `seconds` (at most MAX_DELAY) before forwarding them."""
        if not 0 <= seconds <= MAX_DELAY:
            raise ValueError(f"a slow answer is held at most {MAX_DELAY} s, not {seconds}")
        return self._add(method, path, "slow", times, probability, delay=seconds)

    def drop(self, method: str, path: str, times: int | None = 1, probability: float = 1.0,
             after_forward: bool = False) -> Fault:
        """Cut the connection of matching requests without an answer (after forwarding, if asked)."""
        return self._add(method, path, "drop", times, probability, after_forward=after_forward)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for rule in self.faults:
                if rule.matches(method, path) and (rule.probability >= 1.0 or self._rng.random() < rule.probability):
                    if rule.times is not None:
                        rule.times -= 1
                    rule.hits.append((method, path))
                    return rule
        return None

    # ---- the proxy -----------------------------------------------------------------------

    def start(self) -> "Recorder":
        from kube_standin import schema_check

        rec = self
        upstream_ctx = ssl.create_default_context(cafile=str(self.plane.ca_path))

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def log_message(self, *a):
                pass

            def _record(self, status):
                with rec._lock:
                    rec.requests.append(Request(self.command, self.path, status, time.monotonic()))

            def _cut(self):
                """Closes the connection without an answer (no TLS close_notify, like a lost peer)."""
                self._record(None)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _answer(self, status, headers, data):
                self._record(status)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_BODY:
                    self.send_error(413)
                    return
                body = self.rfile.read(n) if n else None
                if body and self.command in ("POST", "PUT") and "json" in self.headers.get("Content-Type", ""):
                    try:
                        obj = json.loads(body)
                        problem = schema_check(obj) if isinstance(obj, dict) and obj.get("kind") else None
                    except ValueError as e:
                        problem = f"not JSON: {e}"
                    if problem:
                        with rec._lock:
                            rec.schema_failures.append(f"{self.command} {self.path}: {problem}")
                fault = rec._fault_for(self.command, urllib.parse.urlsplit(self.path).path)
                if fault is not None and fault.action == "fail":
                    headers = [("Content-Type", "application/json")]
                    if fault.retry_after is not None:
                        headers.append(("Retry-After", str(fault.retry_after)))
                    self._answer(fault.status, headers, status_body(fault.status, fault.reason, fault.message))
                    return
                if fault is not None and fault.action == "drop" and not fault.after_forward:
                    self._cut()
                    return
                if fault is not None and fault.action == "slow":
                    time.sleep(fault.delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPSConnection("127.0.0.1", rec.plane.port, context=upstream_ctx,
                                                   timeout=UPSTREAM_TIMEOUT)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read(MAX_BODY)
                finally:
                    conn.close()
                if fault is not None and fault.action == "drop":
                    self._cut()
                    return
                self._answer(resp.status, resp.getheaders(), data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815

        cert, key = issue_identity(self.plane.ca, self.plane.pki, f"recorder-{self.port}", "recorder", (),
                                   names=["127.0.0.1", "localhost"], server=True, client=False)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="kube-recorder").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
