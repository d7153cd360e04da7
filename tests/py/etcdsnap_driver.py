"""Test helpers for the etcdsnap driver: CSI stubs generated at test time from proto/ with
grpcio-tools (an independent gRPC client: Python grpcio from PyPI, none of our Rust code), the
driver process (built binary from LIFEBOAT_BIN_DIR, Unix socket in a temp dir), and seeding of
the Kubernetes stand-in with an etcd cluster's handle PVC and client TLS Secret."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from etcd_cluster import scrubbed_env
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
DRIVER = "etcdsnap.lifeboat.dev"


def generate_stubs(out_dir: Path):
    """Compile proto/csi.proto with grpcio-tools into out_dir; returns (csi_pb2, csi_pb2_grpc)."""
    import grpc_tools
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main([
        "protoc", f"-I{REPO / 'proto'}", f"-I{well_known}",
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(REPO / "proto" / "csi.proto"),
    ])
    assert rc == 0, f"grpc_tools.protoc failed with {rc}"
    sys.path.insert(0, str(out_dir))
    try:
        pb2 = importlib.import_module("csi_pb2")
        pb2_grpc = importlib.import_module("csi_pb2_grpc")
    finally:
        sys.path.remove(str(out_dir))
    return pb2, pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    """One etcdsnap process serving on a Unix socket in `workdir`."""

    def __init__(self, bin_dir: Path, workdir: Path, kubeconfig: Path | None, pb2, pb2_grpc, **env):
        self.bin = Path(bin_dir) / "etcdsnap"
        assert self.bin.exists(), f"{self.bin} missing: run `cargo build --bin etcdsnap`"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "csi" / "csi.sock"
        self.metrics_port = free_port()
        self.pb2, self.pb2_grpc = pb2, pb2_grpc
        self.env = scrubbed_env()
        self.env.update({
            "CSI_ENDPOINT": f"unix://{self.socket}",
            "METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            "LOG_LEVEL": "debug",
            "POLL_INTERVAL": "200ms",
            "ETCD_TIMEOUT": "2s",
            "SHUTDOWN_GRACE": "10s",
        })
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)
        self.env.update({k: str(v) for k, v in env.items()})
        self.log_path = self.workdir / "etcdsnap.log"
        self.proc: subprocess.Popen | None = None
        self.channel = None

    def start(self, wait: bool = True) -> "Driver":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(self.bin)], env=self.env, stdout=self._log, stderr=self._log)
        if wait:
            wait_for(lambda: self.proc.poll() is not None or self.socket.exists(), 20, "the CSI socket")
            assert self.proc.poll() is None, f"etcdsnap exited with {self.proc.returncode}:\n{self.logs()}"
            self.connect()
        return self

    def connect(self):
        import grpc

        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self.identity = self.pb2_grpc.IdentityStub(self.channel)
        self.controller = self.pb2_grpc.ControllerStub(self.channel)
        self.group = self.pb2_grpc.GroupControllerStub(self.channel)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, **labels) -> float:
        """The value of the series `name` whose labels include `labels` (0 when absent)."""
        _, text = self.http("/metrics")
        total = None
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            if metric != name:
                continue
            have = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p) if rest else {}
            have = {k: v.strip('"') for k, v in have.items()}
            if all(have.get(k) == str(v) for k, v in labels.items()):
                total = (total or 0.0) + float(value)
        return total or 0.0

    def stop(self, timeout: float = 20) -> int:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def unreachable_kubeconfig(path: Path) -> Path:
    """Writes a kubeconfig whose API server never answers (port 9 on 127.0.0.1): etcdsnap
    serves CSI and /metrics all the same (its monitor and readiness check retry)."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:9", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "not-a-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "default"}}]}))
    return path


@contextlib.contextmanager
def running_driver(bin_dir: Path, workdir: Path, kubeconfig: Path | None, stubs, **env):
    """Starts etcdsnap, yields it, and on the way out asserts it exited 0 on SIGTERM."""
    d = Driver(bin_dir, workdir, kubeconfig, *stubs, **env)
    d.start()
    try:
        yield d
    finally:
        code = d.stop()
        assert code == 0, f"etcdsnap exited with {code}:\n{d.logs()}"


def seed_cluster(kube, cluster, ns: str = "etcd", name: str = "main", pvc: str | None = None,
                 endpoints: list[str] | None = None, label_key: str = "etcd.io/cluster",
                 annotations: dict | None = None) -> str:
    """Seed the stand-in with an etcd cluster's handle PVC (labelled, with the member URLs in the
    `etcd.io/endpoints` annotation) and its client TLS Secret. Returns the volume id `ns/pvc`."""
    pvc = pvc or f"{name}-handle"
    kube.put_etcd_tls_secret(cluster, ns, f"{name}-client-tls")
    # The pre-bound handle pair of the README: a PV of this driver whose volumeHandle names the PVC.
    kube.put_object({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"{ns}-{pvc}"},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadOnlyMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "etcdsnap-handle",
                 "claimRef": {"namespace": ns, "name": pvc},
                 "csi": {"driver": DRIVER, "volumeHandle": f"{ns}/{pvc}"}},
    })
    kube.put_object({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc, "namespace": ns, "labels": {label_key: name},
                     "annotations": {"etcd.io/endpoints": ",".join(endpoints or cluster.client_urls),
                                     **(annotations or {})}},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Mi"}},
                 "storageClassName": "etcdsnap-handle", "volumeName": f"{ns}-{pvc}"},
    })
    return f"{ns}/{pvc}"


def create_group_when_cut(driver: Driver, pb2, name: str, volumes: list[str], budget: float = 120,
                          parameters=None, call_timeout: float = 60):
    """CreateVolumeGroupSnapshot as csi-snapshotter calls it: again (after a short pause) while
    the answer is ABORTED, which etcdsnap gives until etcd has cut the snapshot; bounded by
    `budget`. Returns the group of the first OK answer."""
    import grpc

    deadline = time.monotonic() + budget
    while True:
        try:
            return driver.group.CreateVolumeGroupSnapshot(pb2.CreateVolumeGroupSnapshotRequest(
                name=name, source_volume_ids=volumes, parameters=parameters or {}), timeout=call_timeout).group_snapshot
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ABORTED or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_ready(driver: Driver, fetch, timeout: float = 60):
    """Poll `fetch()` (returns a message with ready_to_use) until ready; returns the last answer."""
    return wait_for(lambda: (lambda r: r if r.ready_to_use else None)(fetch()), timeout, "ready_to_use=true")
