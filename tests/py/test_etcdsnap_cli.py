"""`etcdsnap restore` reads METADATA_NAMESPACE and DRIVER_NAME exactly as the driver does (one
reader in etcdsnap/config.rs): an invalid value is named before any Kubernetes API call, and an
empty one means the driver's default, not the empty namespace."""

from __future__ import annotations

import json
import subprocess

from etcdsnap_driver import scrubbed_env, unreachable_kubeconfig

ARGS = ["restore", "--snapshot-id", "s-" + "0123456789abcdef" * 2, "--name", "r0", "--initial-cluster",
        "r0=https://r0.etcd.svc:2380", "--initial-advertise-peer-urls", "https://r0.etcd.svc:2380",
        "--target-pvc", "data-r0"]


def restore(bin_dir, tmp_path, **env):
    full = scrubbed_env()
    full["KUBECONFIG"] = str(unreachable_kubeconfig(tmp_path / "kubeconfig"))
    full.update(env)
    return subprocess.run([str(bin_dir / "etcdsnap"), *ARGS], env=full, capture_output=True, text=True, timeout=120)


def test_restore_names_an_invalid_metadata_namespace_or_driver_name_before_calling_the_api(bin_dir, tmp_path):
    done = restore(bin_dir, tmp_path, METADATA_NAMESPACE="Not_A_Namespace", DRIVER_NAME="-bad-")
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert "METADATA_NAMESPACE: must be a Kubernetes namespace name" in error, error
    assert "DRIVER_NAME" in error and "127.0.0.1:9" not in error, error
    # Valid (or empty, so the defaults) they pass, and the API (unreachable here) is what fails.
    done = restore(bin_dir, tmp_path, METADATA_NAMESPACE="", DRIVER_NAME="etcdsnap.lifeboat.dev")
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert "METADATA_NAMESPACE" not in error and "DRIVER_NAME" not in error, error
    assert "kube-system" in error or "127.0.0.1" in error or "connect" in error.lower(), error
