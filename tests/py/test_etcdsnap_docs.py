"""The handle PV/PVC manifests docs/etcdsnap.md points at (docs/examples/etcdsnap-handle.yaml,
loaded as YAML) are valid Kubernetes objects (strict 1.33 schema), pre-bound to each other, and
use the volume handle form the driver accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from kube_standin import schema_check

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "etcdsnap-handle.yaml"


def test_documented_handle_manifests_are_valid():
    objects = [o for o in yaml.safe_load_all(EXAMPLE.read_text()) if o]
    kinds = {o["kind"]: o for o in objects}
    assert set(kinds) == {"PersistentVolume", "PersistentVolumeClaim"}
    for o in objects:
        assert schema_check(o) is None, (o["kind"], schema_check(o))
    pv, pvc = kinds["PersistentVolume"], kinds["PersistentVolumeClaim"]
    ns, name = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
    assert pv["spec"]["csi"]["volumeHandle"] == f"{ns}/{name}"
    assert pv["spec"]["csi"]["driver"] == "etcdsnap.lifeboat.dev"
    assert pv["spec"]["claimRef"] == {"namespace": ns, "name": name}
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert "etcd.io/cluster" in pvc["metadata"]["labels"]
    for url in pvc["metadata"]["annotations"]["etcd.io/endpoints"].split(","):
        assert url.startswith("https://")
