"""The chart against the binaries as they are: every variable it sets is one the binary reads in
the format it parses, extraEnv offers exactly those, ports, probes and arguments the binaries
serve, the documented handle manifests, and the images' entrypoints (from what the binaries
print with `--print-config-schema` and do when started)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

import chart_crd_schemas
import config_schema

ROOT = Path(__file__).resolve().parents[2]

from chart_render import *  # noqa: E402,F401,F403 - fixtures, scenarios and render helpers
from test_chart_etcdsnap import handle_annotations  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The chart against the binaries as they are: names, formats, required variables, ports, probes,
# arguments and the handle manifests, from what the binaries print (`--print-config-schema`,
# config_schema.py) and do when run, never from their source or docs text.

# Variables a binary reads that the chart neither sets nor offers in extraEnv, and why.
NOT_FOR_THE_CHART = {
    # the image's own environment, passed through to rclone; profile files, read only to refuse them
    "s3sync": {"PATH", "HOME", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"},
    "hook": set(),
    # the kubelet sets the in-cluster ones; KUBECONFIG is for running etcdsnap on a workstation
    "etcdsnap": {"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"},
}
# Containers of the chart that do not run a lifeboat binary.
FOREIGN_CONTAINERS = {"csi-snapshotter"}


def lifeboat_containers(objects):
    """(component, container) of every Deployment/CronJob container running a lifeboat binary."""
    for owner, pod in pod_specs(objects):
        component = owner["metadata"]["labels"]["app.kubernetes.io/component"]
        for c in containers(pod):
            if c["name"] in FOREIGN_CONTAINERS:
                continue
            assert c["name"] == component, f"{owner['kind']} {owner['metadata']['name']}: container {c['name']}"
            assert c["image"].split("@")[0].rsplit(":", 1)[0].endswith("/" + component), c["image"]
            yield component, c


def _duration_ok(value):
    """lifeboat::env::parse_duration: a bare number of seconds, or number+unit parts (ms, s, m, h)."""
    return re.fullmatch(r"\d+|(\d+(ms|s|m|h))+", value) is not None


def _check_value(component, var, value):
    """`value` has the form the binary's declaration `var` (from --print-config-schema) parses."""
    where = f"{component} {var['name']}={value!r}"
    kind = var["kind"]
    if kind == "bool":
        assert value.strip().lower() in {"true", "false", "1", "0", "yes", "no", "on", "off"}, where
    if kind == "duration":
        assert _duration_ok(value), where
    if kind == "integer":
        assert re.fullmatch(r"\d+", value), f"{where}: not a whole number"
        if "min" in var:
            assert var["min"] <= int(value) <= var["max"], \
                f"{where}: not a whole number from {var['min']} to {var['max']}"
    if kind == "dns-label":
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) and len(value) <= var["max_length"], where
    if var["name"].endswith("_ADDR"):
        host, _, port = value.rpartition(":")
        assert port.isdigit() and int(port) < 65536 and host not in ("", "localhost", "127.0.0.1"), \
            f"{where}: must listen on all interfaces of the pod"


@pytest.mark.parametrize("scenario_name", list(SCENARIOS))
def test_every_env_var_the_chart_sets_is_one_the_binary_reads(helm, scenario_name):
    """The drift guard: for each container running a lifeboat binary, every variable the chart
    sets is read by that binary (as it declares), every variable it requires is set, and
    every literal value has the format the binary parses."""
    objects = render(helm, SCENARIOS[scenario_name])
    seen = set()
    for component, c in lifeboat_containers(objects):
        seen.add(component)
        reads = config_schema.variables(component)
        env = env_of(c)
        unknown = set(env) - set(reads)
        assert not unknown, f"{component}: the chart sets {sorted(unknown)}, which {component} never reads"
        missing = config_schema.required(component) - set(env)
        assert not missing, f"{component}: required {sorted(missing)} not set by the chart"
        for name, entry in env.items():
            assert name not in NOT_FOR_THE_CHART[component], f"{component}: {name} is not the chart's to set"
            if "value" in entry and "$(" not in entry["value"]:
                _check_value(component, reads[name], entry["value"])
            if reads[name]["secret"]:
                assert "valueFrom" in entry, f"{component}: the secret {name} is a literal in the pod spec"
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o, _ in pod_specs(objects)}
    assert seen == components


def test_the_drift_guard_has_something_to_guard():
    """What the binaries declare is what they are known to need: the contract is not silently
    empty, and its kinds, ranges and secrets are the ones the reading code applies."""
    # the keys are optional: a side without them uses the platform's credentials
    assert config_schema.required("s3sync") == {
        f"{side}_{name}" for side in ("SOURCE", "DEST") for name in ("S3_ENDPOINT", "BUCKET")
    } | {"DEST_PREFIX"}
    assert config_schema.required("hook") == {"TLS_CERT_FILE", "TLS_KEY_FILE", "HOOK_IMAGE"}
    assert config_schema.required("etcdsnap") == set()  # every etcdsnap variable has a default
    secrets = {n for n, v in config_schema.variables("s3sync").items() if v["secret"]}
    assert secrets == {f"{side}_{name}" for side in ("SOURCE", "DEST") for name in ("ACCESS_KEY", "SECRET_KEY")} | {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN"}
    for component in ("hook", "etcdsnap"):
        assert not any(v["secret"] for v in config_schema.variables(component).values()), component
    reads = config_schema.variables("etcdsnap")
    assert {"CSI_ENDPOINT", "DRIVER_NAME", "METADATA_NAMESPACE", "CLUSTER_LABEL", "METRICS_ADDR"} <= set(reads)
    assert "POD_NAMESPACE" not in reads
    assert (reads["GRPC_THREADS"]["min"], reads["GRPC_THREADS"]["max"]) == (1, 64)
    assert reads["JOB_TIMEOUT"]["kind"] == "duration" and reads["JOB_TIMEOUT"]["default"] == "10m"
    assert reads["CSI_ENDPOINT"]["default"] == "unix:///csi/csi.sock"
    assert reads["PVC_MIN_SIZE"]["default"] == "1Gi"
    body = config_schema.variables("hook")["MAX_BODY_BYTES"]
    assert (body["min"], body["max"], body["default"]) == (4096, 256 * 1024 * 1024, 3 * 1024 * 1024 + 256 * 1024)
    s3sync = config_schema.variables("s3sync")
    assert s3sync["MAX_DELETE"]["default"] == "1000" and s3sync["COMPARE"]["default"] == "checksum"
    assert s3sync["DRY_RUN"] == {"name": "DRY_RUN", "kind": "bool", "default": False, "secret": False,
                                 "required": False}
    # rclone's pass-through list is declared, not read by s3sync itself
    assert {"HTTPS_PROXY", "NO_PROXY", "TZ"} <= {n for n, v in s3sync.items() if v["kind"] == "pass-through"}
    for component in ("s3sync", "hook", "etcdsnap"):
        assert config_schema.variables(component)["LOG_LEVEL"]["default"] == "info"


@pytest.mark.parametrize("component", ["s3sync", "hook", "etcdsnap"])
def test_extra_env_offers_exactly_the_variables_the_binary_reads(helm, component):
    """values.schema.json's extraEnv names = what the binary reads, less what is not the chart's."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    offered = set(schema["properties"][component]["properties"]["extraEnv"]["propertyNames"]["enum"])
    assert offered == set(config_schema.variables(component)) - NOT_FOR_THE_CHART[component]
    # values.yaml's extraEnv examples are among them
    text = (CHART / "values.yaml").read_text()
    block = text[text.index(f"\n{component}:\n") + 1:]
    end = re.search(r"^[a-z#]", block[len(component) + 2:], re.M)  # the next top-level key or section
    block = block[:end.start() + len(component) + 2] if end else block
    lines = block[:block.index("\n  extraEnv:")].splitlines()
    comment = []
    while lines and lines[-1].startswith("  #"):
        comment.insert(0, lines.pop())
    examples = re.findall(r"\{([^}]*)\}", " ".join(comment))  # e.g. {JOB_TIMEOUT: "10m"}
    named = {k for e in examples for k in re.findall(r"([A-Za-z_][A-Za-z0-9_]*):", e)}
    assert named and named <= offered, (component, comment, named - offered)


def test_ports_probes_and_arguments_match_the_binaries(helm):
    objects = render(helm, SCENARIOS["everything"])
    for component, c in lifeboat_containers(objects):
        if component == "s3sync":
            assert "ports" not in c and "args" not in c and "command" not in c
            continue
        env = env_of(c)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert int(env["METRICS_ADDR"]["value"].rsplit(":", 1)[1]) == ports["metrics"] == 8080
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["port"] == "metrics", (component, probe, get)
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        if component == "hook":
            assert int(env["LISTEN_ADDR"]["value"].rsplit(":", 1)[1]) == ports["webhook"] == 9443
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert "args" not in c and "command" not in c  # `hook` alone serves
        if component == "etcdsnap":
            assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
            assert "command" not in c  # the image's ENTRYPOINT
            # the binary accepting the argument: test_the_binaries_start_with_the_charts_env_and_args...
            (arg,) = c["args"]
            flag, _, value = arg.partition("=")
            assert flag == "--endpoint"
            # Kubernetes expands $(VAR) from the container's env
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)]["value"], value)
            assert re.fullmatch(r"unix:///[^/].*", value), value
            sock = value[len("unix://"):]
            mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "socket-dir")
            assert sock.startswith(mount.rstrip("/") + "/")
            sidecar = next(x for x in containers(one(objects, "Deployment", "etcdsnap")["spec"]["template"])
                           if x["name"] == "csi-snapshotter")
            assert f"--csi-address={sock}" in sidecar["args"]


def _status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@pytest.mark.parametrize("component", ["hook", "etcdsnap"])
def test_the_binaries_start_with_the_charts_env_and_args_and_serve_its_probes(helm, component, bin_dir, tmp_path):
    """The real binary, given the chart's literal environment and arguments (listen addresses on
    127.0.0.1, files and sockets under a temporary folder, no Kubernetes API for etcdsnap),
    starts and answers every probe path the chart points at: 200 for liveness and startup; the
    readiness path exists (etcdsnap's is 503 while no API server answers)."""
    import tempfile

    from etcdsnap_driver import free_port, scrubbed_env, unreachable_kubeconfig
    from pki import make_ca
    from waiting import wait_for

    short = Path(tempfile.mkdtemp(prefix="lb-", dir="/tmp"))  # Unix socket paths are short
    objects = render(helm, SCENARIOS["everything"])
    (c,) = [c for comp, c in lifeboat_containers(objects) if comp == component]
    env = scrubbed_env()
    env.update({k: v["value"] for k, v in env_of(c).items() if "value" in v})
    metrics = free_port()
    env["METRICS_ADDR"] = f"127.0.0.1:{metrics}"
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c.get("args", [])]
    if component == "hook":
        ca = make_ca(tmp_path / "pki", "probe-ca")
        cert, key = ca.issue(tmp_path / "pki", "hook", ["127.0.0.1"], client=False, server=True)
        env.update({"LISTEN_ADDR": f"127.0.0.1:{free_port()}", "TLS_CERT_FILE": str(cert),
                    "TLS_KEY_FILE": str(key), "SOCKET_DIR": str(short)})
    else:
        env["KUBECONFIG"] = str(unreachable_kubeconfig(tmp_path / "kubeconfig"))
        # the chart's socket folder is the pod's emptyDir; here it is a temporary one
        args = [re.sub(r"unix:///\S*/", f"unix://{short}/", a) for a in args]
        assert args and all(a.startswith(f"--endpoint=unix://{short}/") for a in args), args
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(bin_dir / component), *args], env=env, stdout=out, stderr=out)
    try:
        def up():
            assert proc.poll() is None, f"{component} exited {proc.returncode}: {log.read_text()[-3000:]}"
            return _status(metrics, "/healthz") == 200
        wait_for(up, 30, f"{component}'s /healthz")
        for probe in ("startupProbe", "livenessProbe"):
            assert _status(metrics, c[probe]["httpGet"]["path"]) == 200, probe
        ready = c["readinessProbe"]["httpGet"]["path"]
        if component == "hook":
            wait_for(lambda: _status(metrics, ready) == 200, 30, f"hook's {ready}")
        else:
            assert _status(metrics, ready) in (200, 503), ready
        assert _status(metrics, "/no-such-probe") == 404  # the checks above can fail
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
        shutil.rmtree(short, ignore_errors=True)
    assert code == 0, f"{component} exited {code} on SIGTERM: {log.read_text()[-3000:]}"


def _handle_example():
    """docs/examples/etcdsnap-handle.yaml, the handle pair docs/etcdsnap.md links (as YAML)."""
    return [o for o in yaml.safe_load_all((ROOT / "docs" / "examples" / "etcdsnap-handle.yaml").read_text()) if o]


def test_etcdsnap_handles_match_the_documented_manifests(helm):
    """The chart's handle pair for the documented example is that pair (which
    test_etcdsnap_docs.py validates), with the chart's labels on top."""
    want = {o["kind"]: o for o in _handle_example()}
    want_pvc = want["PersistentVolumeClaim"]
    annotations = want_pvc["metadata"]["annotations"]
    handle = {"cluster": want_pvc["metadata"]["labels"]["etcd.io/cluster"],
              "namespace": want_pvc["metadata"]["namespace"],
              "endpoints": annotations["etcd.io/endpoints"].split(","),
              "clientTLSSecret": annotations["etcd.io/client-tls-secret"],
              "authSecret": annotations["etcd.io/auth-secret"]}
    objects = render(helm, {"hook": {"enabled": False}, "etcdsnap": {"enabled": True, "handles": [handle]}})
    got = {o["kind"]: strip(o) for o in objects if o["kind"] in ("PersistentVolume", "PersistentVolumeClaim")}
    for kind in ("PersistentVolume", "PersistentVolumeClaim"):
        g, w = got[kind], want[kind]
        assert g["metadata"]["name"] == w["metadata"]["name"], kind
        assert g["metadata"].get("namespace") == w["metadata"].get("namespace"), kind
        assert g["spec"] == w["spec"], kind
        assert w["metadata"].get("labels", {}).items() <= g["metadata"]["labels"].items(), kind
        assert g["metadata"].get("annotations") == w["metadata"].get("annotations"), kind
    # the annotation keys are the ones etcdsnap's discovery reads (its contract says which)
    read = set(config_schema.contract("etcdsnap")["pvc_annotations"])
    assert set(handle_annotations({"endpoints": ["https://a:2379"], "service": "s", "clientTLSSecret": "t",
                                               "authSecret": "u"})) == read


def test_images_run_the_binaries_the_way_the_chart_and_the_hook_call_them(bin_dir, tmp_path):
    """The chart never sets `command`: each image's ENTRYPOINT is its binary. The hook injects
    HOOK_IMAGE as an init container with args `write-config FILE` and no command, so the hook
    image's ENTRYPOINT must be the hook binary, which accepts `write-config` (run here with the
    init container's own args and environment, as `hook inject` writes them).

    The images themselves are checked where they are built and run (tests/images/test_images.py):
    each image's ENTRYPOINT is /usr/local/bin/<binary> (test_image_shape), the hook image runs
    the injected init container's args with no command given, and the s3sync image syncs with
    the rclone on its PATH; nothing here reads the Containerfile."""
    hook_image = "registry.example/lifeboat/hook:0.1.0"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "app", "namespace": "shop",
                        "annotations": {"litestream-hook.kaidotio.github.io/inject": "true",
                                        "litestream-hook.kaidotio.github.io/path": "/data/app.db"}},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    env = {"PATH": "/usr/bin:/bin", "HOOK_IMAGE": hook_image}
    done = subprocess.run([str(bin_dir / "hook"), "inject", "-f", str(tmp_path / "pod.json")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    injected = json.loads(done.stdout)
    (init,) = [c for c in injected["spec"]["initContainers"] if c["image"] == hook_image]
    assert init["args"][0] == "write-config" and "command" not in init, init
    # the hook binary does what that init container asks: the config lands in a file
    target = tmp_path / "litestream.yml"
    init_env = {e["name"]: e["value"] for e in init.get("env", []) if "value" in e}
    done = subprocess.run([str(bin_dir / "hook"), "write-config", str(target)],
                          env={"PATH": "/usr/bin:/bin", **init_env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "/data/app.db" in target.read_text()
    # s3sync runs "rclone" from PATH unless RCLONE_BINARY says otherwise; the image puts it in
    # /usr/local/bin (on distroless's PATH) and the chart leaves RCLONE_BINARY unset
    assert config_schema.variables("s3sync")["RCLONE_BINARY"]["default"] == "rclone"


def test_schema_limits_are_the_binaries_limits(helm):
    """A value the schema accepts is one the binary accepts: numeric ranges and the hook's
    VARIANT length from the binaries' declarations, name formats of etcdsnap's settings."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    retries = schema["s3sync"]["properties"]["retries"]
    declared = config_schema.variables("s3sync")["RETRIES"]
    assert (retries["minimum"], retries["maximum"]) == (declared["min"], declared["max"])
    variant = config_schema.variables("hook")["VARIANT"]
    assert variant["kind"] == "dns-label"
    longest = variant["max_length"]
    assert schema["hook"]["properties"]["variant"]["maxLength"] == longest
    with helm.Chart.load(str(CHART)) as chart:
        for bad in ({"s3sync": {**S3_ON, "retries": 0}}, {"s3sync": {**S3_ON, "retries": 101}},
                    {"hook": {"variant": "a" * (longest + 1)}},
                    {"etcdsnap": {"metadataNamespace": "Not_A_Namespace"}},
                    {"etcdsnap": {"snapshotStorageClass": "fast storage"}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)
        chart.validate_schema({"s3sync": {**S3_ON, "retries": 100}, "hook": {"variant": "a" * longest}})
