"""The chart's hook: the webhook's wiring to its pods, its own pods and kube-system exempt, the
drain, the NetworkPolicy, host networking, and the cert-manager chain (rendered by a real Helm
engine, see chart_render.py)."""

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


# ---------------------------------------------------------------------------------------------
# hook


def test_hook_webhook_reaches_the_pods_over_the_service(helm):
    objects = render(helm, None)
    mwc = one(objects, "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    assert hook["name"] == "inject.litestream-hook.kaidotio.github.io"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 5
    assert hook["reinvocationPolicy"] == "Never"
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    ref = hook["clientConfig"]["service"]
    assert ref["path"] == "/mutate" and ref["port"] == 443 and ref["namespace"] == NAMESPACE
    service = one(objects, "Service", "hook")
    assert service["metadata"]["name"] == ref["name"]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == 443]
    deployment = one(objects, "Deployment", "hook")
    pod = deployment["spec"]["template"]
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    target = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert target and target[0]["containerPort"] == 9443
    assert {p["containerPort"] for p in container["ports"]} == {9443, 8080}
    env = env_of(container)
    assert env["LISTEN_ADDR"]["value"].endswith(":9443") and env["METRICS_ADDR"]["value"].endswith(":8080")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # TLS files live inside the mounted Secret volume
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE"):
        assert env[name]["value"].startswith(mount["mountPath"].rstrip("/") + "/")
    assert env["HOOK_IMAGE"]["value"] == container["image"]
    # the root filesystem is read-only: the hook's private socket goes to an emptyDir
    writable = {v["name"] for v in pod["spec"]["volumes"] if "emptyDir" in v}
    assert any(m["mountPath"] == env["SOCKET_DIR"]["value"] and m["name"] in writable
               for m in container["volumeMounts"])
    assert deployment["spec"]["replicas"] == 2
    pdb = one(objects, "PodDisruptionBudget", "hook")
    assert pdb["spec"]["minAvailable"] == 1
    assert selector_matches(pdb["spec"]["selector"], pod["metadata"]["labels"])


def test_hook_reinvocation_is_a_choice(helm):
    """IfNeeded lets the hook give containers added by later webhooks the database mounts."""
    (hook,) = one(render(helm, {"hook": {"webhook": {"reinvocationPolicy": "IfNeeded"}}}),
                  "MutatingWebhookConfiguration")["webhooks"]
    assert hook["reinvocationPolicy"] == "IfNeeded"
    with pytest.raises(Exception, match="reinvocationPolicy"):
        render(helm, {"hook": {"webhook": {"reinvocationPolicy": "Always"}}})


def test_hook_never_intercepts_its_own_pods_or_kube_system(helm):
    values = SCENARIOS["everything"]
    objects = render(helm, values)
    (hook,) = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    # the hook's own pods are never selected (it cannot wait for itself to start) ...
    hook_pod = one(objects, "Deployment", "hook")["spec"]["template"]
    assert not selector_matches(hook["objectSelector"], hook_pod["metadata"]["labels"])
    # ... but a pod of another application installed under the same release name is (it was
    # exempted silently when the selector keyed on app.kubernetes.io/instance)
    assert selector_matches(hook["objectSelector"], {"app": "shop", "app.kubernetes.io/instance": RELEASE})
    assert selector_matches(hook["objectSelector"], {"app": "shop", "app.kubernetes.io/instance": "shop"})
    assert selector_matches(hook["objectSelector"], {})
    ns = lambda name: {"kubernetes.io/metadata.name": name}  # noqa: E731 - the label the API server sets
    assert not selector_matches(hook["namespaceSelector"], ns("kube-system"))
    assert selector_matches(hook["namespaceSelector"], ns("default"))
    assert hook["matchConditions"] == [{
        "name": "has-inject-annotation",
        "expression": "has(object.metadata.annotations) && "
                      "'litestream-hook.kaidotio.github.io/inject' in object.metadata.annotations"}]


def _hook_pod(objects):
    return one(objects, "Deployment", "hook")["spec"]["template"]["spec"]


@pytest.mark.parametrize("drain", [None, {"preStopSleepSeconds": 20, "shutdownTimeoutSeconds": 40}])
def test_hook_keeps_serving_while_endpoints_update_then_drains(helm, drain):
    """Rollouts never refuse Pods: a terminating replica first sleeps (the API servers still dial
    it), then gets SIGTERM and finishes in-flight requests within SHUTDOWN_TIMEOUT, all inside
    the grace period, so the kubelet never SIGKILLs a request."""
    objects = render(helm, {"hook": {"drain": drain}} if drain else None)
    pod = _hook_pod(objects)
    (container,) = pod["containers"]
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    shutdown = {e["name"]: e["value"] for e in container["env"]}["SHUTDOWN_TIMEOUT"]
    assert re.fullmatch(r"\d+s", shutdown)
    assert sleep >= 5
    assert pod["terminationGracePeriodSeconds"] >= sleep + int(shutdown[:-1]) + 5
    if drain:
        assert (sleep, shutdown) == (20, "40s")
    # no sleep asked for: no preStop hook at all (not a zero-second one)
    pod = _hook_pod(render(helm, {"hook": {"drain": {"preStopSleepSeconds": 0, "shutdownTimeoutSeconds": 25}}}))
    assert "lifecycle" not in pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] == 30


def test_hook_network_policy_admits_only_the_webhook_and_metrics_ports(helm):
    objects = render(helm, SCENARIOS["hook-own-tls-variant"])
    (policy,) = by_kind(objects, "NetworkPolicy")
    pod = one(objects, "Deployment", "hook")["spec"]["template"]
    assert selector_matches(policy["spec"]["podSelector"], pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["egress"] == []
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    (webhook, metrics) = policy["spec"]["ingress"]
    assert [p["port"] for p in webhook["ports"]] == ["webhook"] and webhook["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    assert [p["port"] for p in metrics["ports"]] == ["metrics"] and metrics["from"][0]["namespaceSelector"]
    assert {"webhook", "metrics"} <= ports
    assert not by_kind(render(helm, None), "NetworkPolicy")


def test_hook_on_the_host_network_listens_on_its_own_port(helm):
    objects = render(helm, {"hook": {"hostNetwork": True, "port": 10250 + 13}})
    pod = _hook_pod(objects)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LISTEN_ADDR"] == "0.0.0.0:10263"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["webhook"] == 10263
    service = one(objects, "Service", "hook")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["webhook"] == 443
    assert "hostNetwork" not in _hook_pod(render(helm, None))


def test_hook_cert_manager_chain_keeps_the_ca_across_renewals(helm):
    objects = render(helm, None)
    issuers = {o["metadata"]["name"]: o for o in by_kind(objects, "Issuer")}
    certs = {o["metadata"]["name"]: o for o in by_kind(objects, "Certificate")}
    assert len(issuers) == 2 and len(certs) == 2
    ca = next(c for c in certs.values() if c["spec"].get("isCA"))
    leaf = next(c for c in certs.values() if not c["spec"].get("isCA"))
    # self-signed issuer -> CA certificate -> CA issuer (from the CA's Secret) -> serving certificate
    assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]
    ca_issuer = issuers[leaf["spec"]["issuerRef"]["name"]]
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert ca["spec"]["privateKey"]["rotationPolicy"] == "Never"
    hours = lambda d: int(d.rstrip("h"))  # noqa: E731
    assert hours(ca["spec"]["duration"]) >= 10 * hours(leaf["spec"]["duration"])
    assert hours(leaf["spec"]["renewBefore"]) < hours(leaf["spec"]["duration"])
    # the webhook trusts the CA (not the leaf), so renewing the leaf changes nothing there
    mwc = one(objects, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{NAMESPACE}/{ca['metadata']['name']}"
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]
    # the serving certificate names the Service and is what the pods mount
    service = one(objects, "Service", "hook")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in leaf["spec"]["dnsNames"]
    assert "server auth" in leaf["spec"]["usages"]
    pod = one(objects, "Deployment", "hook")["spec"]["template"]["spec"]
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == leaf["spec"]["secretName"]


def test_hook_with_own_certificate_variant_and_options(helm):
    objects = render(helm, SCENARIOS["hook-own-tls-variant"])
    assert not by_kind(objects, "Certificate") and not by_kind(objects, "Issuer")
    assert not by_kind(objects, "PodDisruptionBudget")
    mwc = one(objects, "MutatingWebhookConfiguration")
    assert "annotations" not in mwc["metadata"]
    (hook,) = mwc["webhooks"]
    assert hook["name"] == "inject.blue.litestream-hook.kaidotio.github.io"
    assert hook["clientConfig"]["caBundle"] == SCENARIOS["hook-own-tls-variant"]["hook"]["tls"]["caBundle"]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 3
    assert "matchConditions" not in hook
    for name in ("monitoring", "kube-system"):
        assert not selector_matches(hook["namespaceSelector"], {"kubernetes.io/metadata.name": name})
    deployment = one(objects, "Deployment", "hook")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kaidotio/lifeboat/hook@sha256:" + "a" * 64
    env = env_of(container)
    assert env["VARIANT"]["value"] == "blue"
    assert env["LITESTREAM_IMAGE"]["value"] == "litestream/litestream:0.5.2"
    assert env["NATIVE_SIDECAR"]["value"] == "true"
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "hook-tls"
    assert deployment["metadata"]["labels"]["team"] == "platform"
