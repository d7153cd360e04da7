//! The driver's metrics, declared once: each line a typed handle (name, help, label names)
//! that the RPC layer, the engine and the readiness check record through; `declare` registers
//! them all at start.

use lifeboat::metrics::LATENCY_BUCKETS;

lifeboat::metrics_table! {
    RPC_TOTAL: Counter<2> = Counter::new(
        "etcdsnap_rpc_total",
        "CSI RPCs answered, by method and gRPC code.",
        &["method", "code"],
    );
    RPC_SECONDS: Histogram<2> = Histogram::new(
        "etcdsnap_rpc_duration_seconds",
        "CSI RPC latency in seconds, by method and gRPC code.",
        &["method", "code"],
        LATENCY_BUCKETS,
    );
    RPC_IN_FLIGHT: Gauge<0> = Gauge::new("etcdsnap_rpc_in_flight", "CSI RPCs being handled now.", &[]);
    SNAPSHOTS_TOTAL: Counter<1> = Counter::new(
        "etcdsnap_snapshots_total",
        "Snapshots finished, by result (ready or failed).",
        &["result"],
    );
    SNAPSHOT_SECONDS: Histogram<1> = Histogram::new(
        "etcdsnap_snapshot_duration_seconds",
        "Seconds from Create to a verified (or failed) snapshot, by result.",
        &["result"],
        &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0],
    );
    SNAPSHOT_BYTES: Histogram<0> = Histogram::new(
        "etcdsnap_snapshot_size_bytes",
        "Size of verified snapshot files in bytes.",
        &[],
        &[
            1048576.0,
            4194304.0,
            16777216.0,
            67108864.0,
            268435456.0,
            1073741824.0,
            4294967296.0,
            8589934592.0,
        ],
    );
    ETCD_MEMBERS: Gauge<1> = Gauge::new(
        "etcdsnap_etcd_members",
        "Voting members of the etcd cluster at its last health check.",
        &["cluster"],
    );
    ETCD_MEMBERS_HEALTHY: Gauge<1> = Gauge::new(
        "etcdsnap_etcd_members_healthy",
        "Healthy voting members at the last health check.",
        &["cluster"],
    );
    ETCD_HEALTHY: Gauge<1> = Gauge::new(
        "etcdsnap_etcd_healthy",
        "1 when the last health check allowed a snapshot, else 0.",
        &["cluster"],
    );
    ETCD_CHECKS: Counter<2> = Counter::new(
        "etcdsnap_etcd_health_checks_total",
        "etcd health checks, by cluster and result (ok or refused).",
        &["cluster", "result"],
    );
    KUBE_READY: Gauge<0> = Gauge::new(
        "etcdsnap_kube_api_ready",
        "1 when the Kubernetes API answered the last readiness check.",
        &[],
    );
}
