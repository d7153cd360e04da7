"""The recording proxy's fault rules (kube_recorder.py), in front of the real kube-apiserver: what
the fault tests rely on (counts, seeded probabilities, the Status shape and Retry-After, a slow
answer held and bounded, a connection cut before or after the apiserver acted)."""

from __future__ import annotations

import http.client
import json
import ssl
import time

import pytest

from kube_control_plane import ns_path
from kube_recorder import MAX_DELAY, Recorder
from waiting import wait_for


@pytest.fixture
def proxy(kube_plane, kube_ns):
    """A recorder in front of the apiserver and a token allowed to read and write ConfigMaps in the test namespace."""
    rbac = "rbac.authorization.k8s.io"
    kube_plane.admin.create(ns_path(kube_ns, "roles", group=rbac), {
        "apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": {"name": "configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "update"]}]})
    kube_plane.admin.create(ns_path(kube_ns, "rolebindings", group=rbac), {
        "apiVersion": f"{rbac}/v1", "kind": "RoleBinding", "metadata": {"name": "configmaps"},
        "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "configmaps"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": kube_ns}]})
    token = kube_plane.sa_token(kube_ns, "default")
    rec = Recorder(kube_plane, seed=7).start()
    ctx = ssl.create_default_context(cafile=str(kube_plane.ca_path))

    def call(method, path, body=None, recorder=rec):
        conn = http.client.HTTPSConnection("127.0.0.1", recorder.port, context=ctx, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), json.loads(resp.read() or b"null")
        finally:
            conn.close()

    # The RBAC authorizer sees the binding once its informer has it.
    wait_for(lambda: call("GET", ns_path(kube_ns, "configmaps"))[0] == 200, 30, "the RoleBinding to apply",
             interval=0.2)
    rec.requests.clear()
    try:
        yield rec, call, kube_ns
    finally:
        rec.stop()


def cm(name):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}


def test_status_faults_answer_like_the_apiserver_for_their_count(proxy, kube_plane):
    rec, call, ns = proxy
    path = ns_path(ns, "configmaps")
    rec.fail("GET", rf"/namespaces/{ns}/configmaps$", 503, times=2)
    rec.fail("POST", "configmaps", 429, retry_after=3)
    for _ in range(2):
        status, _, body = call("GET", path + "?limit=5")  # the rule matches the path without its query
        assert status == 503 and body["kind"] == "Status" and body["reason"] == "ServiceUnavailable", body
    assert call("GET", path)[0] == 200
    status, headers, body = call("POST", path, cm("a"))
    assert status == 429 and headers.get("Retry-After") == "3" and body["reason"] == "TooManyRequests"
    assert not kube_plane.admin.exists(ns_path(ns, "configmaps", "a"))  # a refused request never arrives
    assert call("POST", path, cm("a"))[0] == 201
    # A 409 is refused before the apiserver acts: the object keeps its old content.
    rec.fail("PUT", "configmaps/a$", 409)
    obj = kube_plane.admin.get(ns_path(ns, "configmaps", "a"))
    status, _, body = call("PUT", ns_path(ns, "configmaps", "a"), {**obj, "data": {"k": "changed"}})
    assert status == 409 and body["reason"] == "Conflict"
    assert kube_plane.admin.get(ns_path(ns, "configmaps", "a"))["data"] == {"k": "v"}
    assert [r.status for r in rec.requests] == [503, 503, 200, 429, 201, 409]


def test_probabilities_come_from_the_seed(proxy, kube_plane):
    rec, call, ns = proxy
    path = ns_path(ns, "configmaps")

    def pattern(recorder):
        recorder.fail("GET", "configmaps$", 500, times=None, probability=0.5)
        return [call("GET", path, recorder=recorder)[0] for _ in range(16)]

    first = pattern(rec)
    again = Recorder(kube_plane, seed=7).start()
    try:
        assert pattern(again) == first
    finally:
        again.stop()
    assert set(first) == {200, 500}, first
    rec.clear_faults()
    assert call("GET", path)[0] == 200
    with pytest.raises(ValueError):
        rec.fail("GET", "x", 500, probability=0)


def test_slow_answers_are_held_and_bounded(proxy):
    rec, call, ns = proxy
    rec.slow("GET", "configmaps$", 1.0)
    t0 = time.monotonic()
    assert call("GET", ns_path(ns, "configmaps"))[0] == 200
    assert time.monotonic() - t0 >= 1.0
    with pytest.raises(ValueError):
        rec.slow("GET", "x", MAX_DELAY + 1)


def test_dropped_connections_before_and_after_the_apiserver_acted(proxy, kube_plane):
    rec, call, ns = proxy
    path = ns_path(ns, "configmaps")
    rec.drop("POST", "configmaps$")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
        call("POST", path, cm("lost"))
    assert not kube_plane.admin.exists(ns_path(ns, "configmaps", "lost"))
    rec.drop("POST", "configmaps$", after_forward=True)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
        call("POST", path, cm("applied"))
    assert kube_plane.admin.exists(ns_path(ns, "configmaps", "applied"))
    assert [r.status for r in rec.requests] == [None, None]
