"""pytest fixtures for the etcdsnap tests: tools, built binaries, test PKI, a real 3-member etcd
cluster over TLS (module-scoped), and the strict Kubernetes API stand-in (see
tests/FIXTURES.md for the contract)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from etcd_cluster import EtcdCluster, tools_bin as _tools_bin  # noqa: E402
from pki import make_ca  # noqa: E402
from waiting import WaitTimeout, wait_for  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tools_bin() -> Path:
    """Directory with etcd, etcdctl, etcdutl (3.5.1): `$LIFEBOAT_TOOLS` or `<repo>/.tools/bin`."""
    d = _tools_bin()
    for prog in ("etcd", "etcdctl", "etcdutl"):
        assert (d / prog).exists(), f"{prog} missing in {d}: run `bash tests/tools.sh`"
    return d


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """Where the built binaries are: `$LIFEBOAT_BIN_DIR` or `<repo>/target/debug`."""
    return Path(os.environ.get("LIFEBOAT_BIN_DIR") or REPO / "target" / "debug")


@pytest.fixture
def pki(tmp_path):
    """A fresh test CA in `tmp_path/pki` (`pki.issue(dir, stem, names=[...])`)."""
    return make_ca(tmp_path / "pki", "test-ca")


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory, tools_bin):
    """A real 3-member etcd 3.5 cluster over TLS, shared by one test module; killed at its end.

    Tests that stop members or raise alarms should call `etcd_cluster.heal()` when done.
    """
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), members=3, tools=tools_bin)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kube(tmp_path, tools_bin, bin_dir):
    """The strict Kubernetes API stand-in; fails the test at teardown if any object it received
    did not validate against the real schema."""
    from kube_standin import KubeStandin

    standin = KubeStandin(tmp_path / "kube", tools_bin, bin_dir=bin_dir)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
    assert standin.schema_failures == [], f"objects sent to the API failed schema validation: {standin.schema_failures}"
    assert standin.job_problems == [], f"Jobs the stand-in could not run as a real cluster would: {standin.job_problems}"


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """Python gRPC stubs generated from proto/ with grpcio-tools, once per run."""
    from etcdsnap_driver import generate_stubs

    return generate_stubs(tmp_path_factory.mktemp("stubs"))



# The real control plane (etcd, kube-apiserver, kube-controller-manager) and the process kubelet.
from kube_fixtures import kube_node, kube_ns, kube_plane  # noqa: E402,F401
