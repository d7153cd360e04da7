"""etcdsnap benchmark: an end-to-end snapshot of a ~50 MB etcd (CreateVolumeGroupSnapshot until
GetVolumeGroupSnapshot says ready: health check, PVC, Job running etcdctl + etcdutl, result read
back) against a raw `etcdctl snapshot save` of the same cluster; Identity/Get RPC latency over
the Unix socket; the driver's RSS; and the S3 export of a BENCH_EXPORT_MB (100) MiB file by
`etcdsnap export` (hash, upload in 16 MiB parts, the copy checked by Content-MD5 or read back) against `rclone copyto` of the same
file to the same `rclone serve s3`, interleaved. BENCH_ONLY=export or =snapshot runs one half.
Uses the test fixtures (real 3-member TLS etcd, Kubernetes
stand-in) and the built binary in LIFEBOAT_BIN_DIR. Prints figures; asserts nothing about speed."""

from __future__ import annotations

import json
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
EXPORT_MB = int(os.environ.get("BENCH_EXPORT_MB", "100"))
ONLY = os.environ.get("BENCH_ONLY", "")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def rss_kib(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def export_bench(tools: Path, bin_dir: Path, tmp: Path) -> None:
    from etcd_cluster import scrubbed_env
    from s3_servers import ACCESS_KEY, SECRET_KEY, S3Server

    server = S3Server("rclone", tools, tmp / "s3")
    try:
        server.make_bucket("bench")
        src = tmp / "export.db"
        with open(src, "wb") as f:
            for _ in range(EXPORT_MB):
                f.write(os.urandom(1 << 20))
        size = src.stat().st_size
        load_start = os.getloadavg()[0]
        env = scrubbed_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "LOG_LEVEL": "warn"})
        rclone_env = scrubbed_env({
            "RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
            "RCLONE_CONFIG_S3_ENDPOINT": server.endpoint, "RCLONE_CONFIG_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": SECRET_KEY, "RCLONE_CONFIG_S3_REGION": "us-east-1",
            "RCLONE_CONFIG_S3_FORCE_PATH_STYLE": "true"})
        ours, theirs, checks = [], [], set()
        for i in range(RUNS):
            t = time.perf_counter()
            subprocess.run([str(tools / "rclone"), "copyto", str(src), f"s3:bench/rclone-{i}.db"], env=rclone_env,
                           check=True, timeout=600, stdout=subprocess.DEVNULL)
            theirs.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = subprocess.run([str(bin_dir / "etcdsnap"), "export", "--file", str(src), "--endpoint",
                                  server.endpoint, "--bucket", "bench", "--key", f"etcdsnap-{i}.db"], env=env,
                                 check=True, timeout=600, stdout=subprocess.PIPE, text=True)
            ours.append(time.perf_counter() - t)
            checks.add(json.loads(out.stdout.strip().splitlines()[-1])["etcdsnapExport"]["check"])
        mib = size / 2**20
        load0 = f"{load_start:.1f}"
        o, r = statistics.median(ours), statistics.median(theirs)
        print(f"export file: {mib:.0f} MiB to rclone serve s3 (loopback)")
        print(f"rclone copyto: median {r:.2f} s ({mib / r:.0f} MiB/s)  runs {', '.join(f'{x:.2f}' for x in theirs)}")
        print(f"load average before: {load0}, after: {os.getloadavg()[0]:.1f} (1 min)")
        print("rclone copyto does: one PUT (100 MiB is under its 200 MiB upload_cutoff) with Content-MD5 from an "
              "MD5 pass over the file, the answer's ETag compared; no read-back")
        how = f"SHA-256 pass, Content-MD5 probe, 16 MiB parts, 2 in flight, check {'/'.join(sorted(checks))}"
        print(f"etcdsnap export ({how}): median {o:.2f} s ({mib / o:.0f} MiB/s)  "
              f"runs {', '.join(f'{x:.2f}' for x in ours)}")
        print(f"export throughput ratio etcdsnap / rclone copyto: {r / o:.2f}x")
    finally:
        server.stop()


def main():
    tools = tools_bin()
    bin_dir = Path(os.environ.get("LIFEBOAT_BIN_DIR") or REPO / "target" / "debug")
    if ONLY != "snapshot":
        with tempfile.TemporaryDirectory(prefix="etcdsnap-bench-export-") as tmp:
            export_bench(tools, bin_dir, Path(tmp))
    if ONLY == "export":
        return
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
