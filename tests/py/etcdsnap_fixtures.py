"""Fixtures the etcdsnap conformance suites share (test_etcdsnap_params, test_etcdsnap_sidecar):
a driver with short waits against the stand-in, one seeded handle volume, and the gRPC code of a
refused call."""

from __future__ import annotations

import grpc
import pytest

from etcdsnap_driver import running_driver, seed_cluster

NS = "etcd"
META = "kube-system"


@pytest.fixture
def driver(tmp_path, kube, bin_dir, stubs):
    with running_driver(bin_dir, tmp_path / "driver", kube.kubeconfig_path, stubs, JOB_BACKOFF_LIMIT=0,
                        PVC_MIN_SIZE="64Mi", CREATE_WAIT="3s") as d:
        yield d


@pytest.fixture
def volume(kube, etcd_cluster):
    return seed_cluster(kube, etcd_cluster, NS, "main")


def code_of(call):
    """(code, details) of a call that must fail with an RpcError."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()
