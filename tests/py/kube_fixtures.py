"""pytest fixtures for the real Kubernetes control plane (kube_control_plane.py) and the process
kubelet (process_kubelet.py), imported by conftest.py.

- `kube_plane` (session): builds the binaries once (tests/kube.sh, cached outside the clone) and
  starts etcd + kube-apiserver + kube-controller-manager; a build or start failure fails the
  tests that use it (never a skip). Stopped at the end of the session, on failure and on Ctrl-C
  (pytest tears session fixtures down on KeyboardInterrupt; an atexit hook and PR_SET_PDEATHSIG
  cover the rest).
- `kube_node` (session): the process kubelet, registered as node `node-1`; tests add the images
  they run to `kube_node.images`. Skipped, saying why, where containers cannot get their own
  mount namespace (not root, no unshare). Its problems (failed status writes, crashed workers)
  fail the session at teardown.
- `kube_ns` (function): a fresh namespace per test, with its default ServiceAccount's token made
  (1.20's ServiceAccount admission refuses Pods before that); deleted after the test.
"""

from __future__ import annotations

import re
import secrets

import pytest

from kube_control_plane import ControlPlane, kube_bin_dir
from process_kubelet import ProcessKubelet, unshare_unavailable


@pytest.fixture(scope="session")
def kube_plane(tmp_path_factory, tools_bin):
    try:
        bin_dir = kube_bin_dir()
    except Exception as e:  # noqa: BLE001 - the build failing is a test failure, with its log
        pytest.fail(f"could not build the real control plane: {e}", pytrace=False)
    plane = ControlPlane(tmp_path_factory.mktemp("kube"), tools_bin, bin_dir)
    try:
        plane.start()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"could not start the real control plane: {e}", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube_node(kube_plane, tmp_path_factory, tools_bin, bin_dir):
    why = unshare_unavailable()
    if why:
        pytest.skip(f"process kubelet unavailable: {why}")
    tools_real = [str(tools_bin.resolve().parent)]
    node = ProcessKubelet(kube_plane, tmp_path_factory.mktemp("node"), images={},
                          host_paths=sorted({*tools_real, str(bin_dir.resolve())}))
    node.start()
    try:
        yield node
    finally:
        node.stop()
    assert node.all_problems() == [], f"process kubelet problems: {node.all_problems()}"


@pytest.fixture
def kube_ns(request, kube_plane):
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    ns = f"{base}-{secrets.token_hex(3)}"
    kube_plane.admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kube_plane.wait_service_account(ns)
    try:
        yield ns
    finally:
        kube_plane.admin.request("DELETE", f"/api/v1/namespaces/{ns}")
