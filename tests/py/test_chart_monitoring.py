"""The chart's monitoring objects: ServiceMonitors that select the components' metrics Services,
and alerts and a Grafana dashboard whose lifeboat metrics are ones the real binaries export.

The metric names are read from the running hook's and etcdsnap's `/metrics` (their `# TYPE`
lines), not from their source: a renamed metric makes the alert or panel that uses it fail here.
Metrics of other exporters (kube-state-metrics, cert-manager, `up`) are named as those projects
document them and are not checked against a running exporter.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess

import pytest

from etcdsnap_driver import free_port, running_driver, scrubbed_env, unreachable_kubeconfig
from chart_render import CHART, NAMESPACE, SCENARIOS, by_kind, helm, one, render, selector_matches  # noqa: F401
from waiting import wait_for

MONITORING_ON = {**SCENARIOS["everything"],
                 "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                                "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}


def scrape(port: int) -> set[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 200, body[:300]
    return {m.group(1) for m in re.finditer(r"^# TYPE (\S+) \S+$", body, re.M)}


def lifeboat_metrics(expr: str) -> set[str]:
    """hook_* and etcdsnap_* series an expression reads, histogram suffixes folded to the family."""
    names = set(re.findall(r"\b((?:hook|etcdsnap)_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


@pytest.fixture(scope="module")
def exported(bin_dir, tmp_path_factory, stubs):
    """The metric families the real hook and etcdsnap expose."""
    from pki import make_ca

    work = tmp_path_factory.mktemp("monitoring")
    ca = make_ca(work / "pki", "monitoring-ca")
    cert, key = ca.issue(work / "pki", "hook", ["127.0.0.1"], client=False, server=True)
    sock = work / "sock"
    sock.mkdir()
    metrics = free_port()
    env = scrubbed_env()
    env.update({"LISTEN_ADDR": f"127.0.0.1:{free_port()}", "METRICS_ADDR": f"127.0.0.1:{metrics}",
                "TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key), "SOCKET_DIR": str(sock),
                "HOOK_IMAGE": "registry.example/lifeboat/hook:0.1.0"})
    hook = subprocess.Popen([str(bin_dir / "hook")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            assert hook.poll() is None, f"hook exited with {hook.returncode}"
            try:
                return bool(scrape(metrics))
            except OSError:
                return False
        wait_for(up, timeout=20, what="the hook's /metrics")
        names = scrape(metrics)
    finally:
        hook.terminate()
        hook.wait(timeout=30)
    # etcdsnap serves /metrics whether or not an API server answers; none is needed for the names
    kubeconfig = unreachable_kubeconfig(work / "kubeconfig")
    with running_driver(bin_dir, work / "etcdsnap", kubeconfig, stubs) as driver:
        names |= scrape(driver.metrics_port)
    assert any(n.startswith("hook_") for n in names) and any(n.startswith("etcdsnap_") for n in names), names
    return names


def test_service_monitors_select_each_components_metrics_port(helm):
    objects = render(helm, MONITORING_ON)
    monitors = by_kind(objects, "ServiceMonitor")
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors} == {"hook", "etcdsnap"}
    services = by_kind(objects, "Service")
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"]["endpoints"]
        matched = [s for s in services if selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert matched, monitor["metadata"]["name"]
        for service in matched:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert not by_kind(render(helm, SCENARIOS["everything"]), "ServiceMonitor")


def test_alerts_and_dashboard_read_metrics_the_binaries_export(helm, exported):
    objects = render(helm, MONITORING_ON)
    (rule,) = by_kind(objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"LifeboatHookDown", "LifeboatHookErrors", "LifeboatHookCertificateExpiresSoon",
            "LifeboatS3SyncNoRecentSuccess", "LifeboatS3SyncJobFailed", "LifeboatEtcdSnapshotFailed",
            "LifeboatEtcdUnhealthy"} <= set(alerts)
    used = set()
    for name, alert in alerts.items():
        assert NAMESPACE in alert["expr"], name  # scoped to this release's namespace
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        used |= lifeboat_metrics(alert["expr"])
    (dashboard,) = [o for o in by_kind(objects, "ConfigMap") if "lifeboat.json" in o.get("data", {})]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["lifeboat.json"])
    assert board == json.loads((CHART / "dashboards" / "lifeboat.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    for expr in exprs:
        used |= lifeboat_metrics(expr)
    assert len(used) >= 8
    assert used <= exported, f"not exported by hook or etcdsnap: {sorted(used - exported)}"


def test_alerts_follow_the_enabled_components(helm):
    objects = render(helm, {"hook": {"enabled": False}, "etcdsnap": {"enabled": True},
                            "monitoring": {"prometheusRule": {"enabled": True}}})
    (rule,) = by_kind(objects, "PrometheusRule")
    assert [g["name"] for g in rule["spec"]["groups"]] == ["lifeboat-etcdsnap"]
    # own certificates: no cert-manager alert
    objects = render(helm, {**SCENARIOS["hook-own-tls-variant"], "monitoring": {"prometheusRule": {"enabled": True}}})
    (rule,) = by_kind(objects, "PrometheusRule")
    assert "LifeboatHookCertificateExpiresSoon" not in {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
