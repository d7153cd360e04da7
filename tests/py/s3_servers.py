"""Real S3 servers on 127.0.0.1 for the etcdsnap export tests: `rclone serve s3` over a folder and
moto (an independent implementation), a bucket made on each, and boto3 (AWS's own SDK, not our
client) to look at what they store.

`FaultProxy` sits between a client and a real server and changes what passes, to prove a failed or
corrupted upload is caught. It is a stand-in written here (no real S3 server corrupts on request):
it forwards each request with a Content-Length body as it came and the answer as it came, except
for the one fault it is set to; it does not support chunked request bodies or keep-alive."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import subprocess
import threading
from pathlib import Path

from etcd_cluster import scrubbed_env
from waiting import wait_for

ACCESS_KEY = "etcdsnap-test-access"
SECRET_KEY = "etcdsnap-test-secret-0123456789"  # rclone serve s3 wants long keys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class S3Server:
    def __init__(self, flavor: str, tools_bin: Path, workdir: Path):
        self.flavor, self.port = flavor, _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / f"{flavor}.log", "ab")
        env = scrubbed_env({"RCLONE_CONFIG": "/dev/null"})
        if flavor == "rclone":
            self.dir = workdir / "data"
            self.dir.mkdir(exist_ok=True)
            env["RCLONE_AUTH_KEY"] = f'"{ACCESS_KEY},{SECRET_KEY}"'  # by environment, not argv
            argv = [str(tools_bin / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{self.port}", str(self.dir)]
        else:
            argv = [str(tools_bin / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log, start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or _port_open(self.port), 60, f"{flavor} to listen")
        assert self.proc.poll() is None, f"{flavor} exited with {self.proc.returncode}"

    def boto(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                                          connect_timeout=5, read_timeout=30))

    def make_bucket(self, bucket: str) -> None:
        if self.flavor == "rclone":
            (self.dir / bucket).mkdir()
        else:
            self.boto().create_bucket(Bucket=bucket)

    def keys(self, bucket: str) -> list[str]:
        return [o["Key"] for o in self.boto().list_objects_v2(Bucket=bucket).get("Contents", [])]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@contextlib.contextmanager
def s3_server(flavor: str, tools_bin: Path, workdir: Path):
    server = S3Server(flavor, tools_bin, workdir)
    try:
        yield server
    finally:
        server.stop()


class FaultProxy:
    """Forwards to `upstream_port`; `fault` is one of
    - "corrupt-upload": one byte of every PUT body is flipped on the way to the server;
    - "corrupt-download": one byte of every GET answer body is flipped on the way back;
    - "refuse-upload": every PUT is answered 403 AccessDenied (never forwarded)."""

    def __init__(self, upstream_port: int, fault: str):
        self.fault, self.upstream = fault, upstream_port
        self.seen: list[tuple[str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _any(self):
                method = self.command
                proxy.seen.append((method, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if method == "PUT" and proxy.fault == "refuse-upload":
                    msg = b"<Error><Code>AccessDenied</Code><Message>refused by the test</Message></Error>"
                    self.send_response(403)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if method == "PUT" and proxy.fault == "corrupt-upload" and body:
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                try:
                    conn.request(method, self.path, body=body, headers=headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server answered before the whole body (rclone serve s3 on BadDigest)
                resp = conn.getresponse()
                data = resp.read()
                if method == "GET" and proxy.fault == "corrupt-download" and data and resp.status == 200:
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                # HEAD announces the object's length; everything else the body's.
                length = resp.getheader("Content-Length", "0") if method == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
