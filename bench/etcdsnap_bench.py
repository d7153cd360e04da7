"""etcdsnap benchmark: an end-to-end snapshot of a ~50 MB etcd (CreateVolumeGroupSnapshot until
GetVolumeGroupSnapshot says ready: health check, PVC, Job running etcdctl + etcdutl, result read
back) against a raw `etcdctl snapshot save` of the same cluster; Identity/Get RPC latency over
the Unix socket; the driver's RSS. Uses the test fixtures (real 3-member TLS etcd, Kubernetes
stand-in) and the built binary in LIFEBOAT_BIN_DIR. Prints figures; asserts nothing about speed."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "py"))

from etcd_cluster import EtcdCluster, tools_bin  # noqa: E402
from etcdsnap_driver import Driver, create_group_when_cut, generate_stubs, seed_cluster  # noqa: E402
from kube_standin import KubeStandin  # noqa: E402

SIZE_MB = int(os.environ.get("BENCH_SIZE_MB", "50"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
RPCS = int(os.environ.get("BENCH_RPCS", "500"))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def rss_kib(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def main():
    tools = tools_bin()
    bin_dir = Path(os.environ.get("LIFEBOAT_BIN_DIR") or REPO / "target" / "debug")
    with tempfile.TemporaryDirectory(prefix="etcdsnap-bench-") as tmp:
        tmp = Path(tmp)
        pb2, pb2_grpc = generate_stubs(tmp / "stubs")
        cluster = EtcdCluster(tmp / "etcd", members=3, tools=tools).start()
        kube = KubeStandin(tmp / "kube", tools, bin_dir=bin_dir).start()
        driver = None
        try:
            written = cluster.fill(SIZE_MB << 20)
            leader = cluster.leader_index()
            db_size = int(cluster.status(leader)["dbSize"])
            print(f"etcd: 3 members over TLS, {written / 2**20:.1f} MiB written, leader dbSize {db_size / 2**20:.1f} MiB")

            volume = seed_cluster(kube, cluster, "etcd", "main")
            driver = Driver(bin_dir, tmp / "driver", kube.kubeconfig_path, pb2, pb2_grpc, LOG_LEVEL="info",
                            POLL_INTERVAL="1s", PVC_MIN_SIZE="64Mi").start()
            # Interleaved, so both see the same cluster state (compaction, page cache).
            raw, e2e, sizes = [], [], []
            for i in range(RUNS):
                out = tmp / f"raw-{i}.db"
                t = time.perf_counter()
                cluster.etcdctl("snapshot", "save", str(out), endpoints=[cluster.client_urls[leader]], check=True,
                                timeout=300)
                raw.append(time.perf_counter() - t)
                out.unlink()
                t = time.perf_counter()
                g = create_group_when_cut(driver, pb2, f"bench-{i}", [volume], budget=600)
                for _ in range(100000):
                    got = driver.group.GetVolumeGroupSnapshot(pb2.GetVolumeGroupSnapshotRequest(
                        group_snapshot_id=g.group_snapshot_id), timeout=60).group_snapshot
                    if got.ready_to_use:
                        break
                    if time.perf_counter() - t > 600:
                        raise SystemExit("snapshot did not become ready within 600 s")
                    time.sleep(0.02)
                e2e.append(time.perf_counter() - t)
                sizes.append(got.snapshots[0].size_bytes)
                if i < RUNS - 1:
                    driver.group.DeleteVolumeGroupSnapshot(pb2.DeleteVolumeGroupSnapshotRequest(
                        group_snapshot_id=g.group_snapshot_id))
            ready_gid = g.group_snapshot_id

            lat = {}
            calls = {
                "GetPluginInfo": lambda: driver.identity.GetPluginInfo(pb2.GetPluginInfoRequest()),
                "Probe": lambda: driver.identity.Probe(pb2.ProbeRequest()),
                "GetVolumeGroupSnapshot": lambda: driver.group.GetVolumeGroupSnapshot(
                    pb2.GetVolumeGroupSnapshotRequest(group_snapshot_id=ready_gid)),
            }
            for name, call in calls.items():
                call()
                samples = []
                for _ in range(RPCS):
                    t = time.perf_counter()
                    call()
                    samples.append((time.perf_counter() - t) * 1000)
                lat[name] = samples
            rss, hwm = rss_kib(driver.proc.pid)

            raw_med, e2e_med = statistics.median(raw), statistics.median(e2e)
            print(f"snapshot file: {statistics.median(sizes) / 2**20:.1f} MiB (etcdutl totalSize)")
            print(f"raw etcdctl snapshot save (leader): median {raw_med:.2f} s  runs {', '.join(f'{x:.2f}' for x in raw)}")
            print(f"etcdsnap end to end (Create -> ready): median {e2e_med:.2f} s  runs {', '.join(f'{x:.2f}' for x in e2e)}")
            print(f"ratio end-to-end / raw: {e2e_med / raw_med:.2f}x (overhead {e2e_med - raw_med:+.2f} s)")
            for name, samples in lat.items():
                print(f"{name}: p50 {pct(samples, 50):.3f} ms  p99 {pct(samples, 99):.3f} ms  ({RPCS} calls)")
            print(f"driver RSS: {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB), binary {bin_dir / 'etcdsnap'}")
        finally:
            if driver is not None:
                driver.stop()
            kube.stop()
            cluster.stop()


if __name__ == "__main__":
    main()
