"""A recording HTTPS proxy in front of the real kube-apiserver: a client (etcdsnap) talks to it
as to the apiserver (same CA, its own serving certificate), every request is forwarded with its
own Authorization header over a new TLS connection and answered with the apiserver's answer.
Each request is recorded (method, path, status) and every object body sent with POST or PUT is
validated strictly against Kubernetes 1.33 (kube_standin.schema_check: unknown fields are
errors), because 1.20 drops unknown fields silently. Bodies are bounded (16 MiB)."""

from __future__ import annotations

import http.client
import http.server
import json
import ssl
import threading

from etcd_cluster import free_ports
from kube_control_plane import ControlPlane, issue_identity

MAX_BODY = 16 << 20


class Recorder:
    def __init__(self, plane: ControlPlane):
        self.plane = plane
        self.port = free_ports(1)[0]
        self.requests: list[tuple[str, str, int]] = []
        self.schema_failures: list[str] = []
        self._lock = threading.Lock()
        self._server = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "Recorder":
        from kube_standin import schema_check

        rec = self
        upstream_ctx = ssl.create_default_context(cafile=str(self.plane.ca_path))

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def log_message(self, *a):
                pass

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
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPSConnection("127.0.0.1", rec.plane.port, context=upstream_ctx, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read(MAX_BODY)
                finally:
                    conn.close()
                with rec._lock:
                    rec.requests.append((self.command, self.path, resp.status))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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
