"""The etcd fixtures behave like the real thing: TLS with client certs, a leader, quorum rules,
a real NOSPACE alarm, the HTTPS JSON gateway the driver uses, and nothing left running."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from etcd_cluster import EtcdCluster, EtcdError
from pki import make_ca
from waiting import wait_for


def _load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_issues_chained_leaves_with_sans_and_pkcs8_keys(tmp_path):
    ca = make_ca(tmp_path, "ca")
    cert_path, key_path = ca.issue(tmp_path, "srv", ["127.0.0.1", "localhost"], client=False, server=True)
    rsa_cert, rsa_key = ca.issue(tmp_path, "cli", ["localhost"], client=True, server=False, key="rsa")
    cert = _load(cert_path)
    cert.verify_directly_issued_by(_load(ca.cert_path))
    _load(rsa_cert).verify_directly_issued_by(_load(ca.cert_path))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert isinstance(load_pem_private_key(key_path.read_bytes(), None), ec.EllipticCurvePrivateKey)
    assert isinstance(load_pem_private_key(rsa_key.read_bytes(), None), rsa.RSAPrivateKey)
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    eku = _load(rsa_cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [u._name for u in eku] == ["clientAuth"]


def test_pki_certs_complete_a_mutual_tls_handshake(tmp_path):
    ca = make_ca(tmp_path, "ca")
    srv = ca.issue(tmp_path, "srv", ["127.0.0.1"], client=False, server=True)
    cli = ca.issue(tmp_path, "cli", [], client=True, server=False, key="rsa")
    other = make_ca(tmp_path / "other", "other").issue(tmp_path / "other", "cli", [], client=True, server=False)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(*map(str, srv))
    sctx.load_verify_locations(str(ca.cert_path))
    sctx.verify_mode = ssl.CERT_REQUIRED
    import socket

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(2)
    results = []

    def serve():
        for _ in range(2):
            conn, _ = lsock.accept()
            conn.settimeout(5)
            try:
                with sctx.wrap_socket(conn, server_side=True) as s:
                    results.append(s.getpeercert()["subject"])
                    s.sendall(b"hi")
            except (ssl.SSLError, OSError) as e:
                results.append(e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    port = lsock.getsockname()[1]

    def connect(client_pair):
        cctx = ssl.create_default_context(cafile=str(ca.cert_path))
        cctx.load_cert_chain(*map(str, client_pair))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with cctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return s.recv(2)

    assert connect(cli) == b"hi"
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        data = connect(other)
        assert data == b"hi", "server must refuse a client cert from another CA"
        raise AssertionError("client cert from another CA was accepted")
    t.join(5)
    lsock.close()
    assert results[0] == ((("commonName", "cli"),),)
    assert isinstance(results[1], ssl.SSLError)


def test_cluster_has_three_members_and_one_leader(etcd_cluster):
    c = etcd_cluster
    assert len(c.client_urls) == 3 and all(u.startswith("https://127.0.0.1:") for u in c.client_urls)
    st, body = c.http(0, "POST", "/v3/cluster/member/list", {})
    assert st == 200
    members = body["members"]
    assert sorted(m["name"] for m in members) == ["m0", "m1", "m2"]
    assert sorted(u for m in members for u in m["clientURLs"]) == sorted(c.client_urls)
    statuses = [c.status(i) for i in range(3)]
    leaders = {s["leader"] for s in statuses}
    assert len(leaders) == 1 and leaders != {"0"}
    assert sum(s["header"]["member_id"] == s["leader"] for s in statuses) == 1
    assert c.leader_index() is not None


def test_gateway_status_with_client_cert_over_http_client(etcd_cluster):
    c = etcd_cluster
    ctx = ssl.create_default_context(cafile=str(c.ca_path))
    ctx.load_cert_chain(str(c.client_cert_path), str(c.client_key_path))
    port = int(c.client_urls[1].rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    conn.request("POST", "/v3/maintenance/status", body=b"{}", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200
    assert body["version"] == "3.5.1"
    assert int(body["dbSize"]) > 0 and body["header"]["member_id"] and body["leader"] != "0"
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)  # SAN localhost too
    conn.request("POST", "/v3/maintenance/alarm", body=b'{"action":"GET"}')
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()).get("alarms", []) == []
    conn.close()


def test_client_without_certificate_is_refused(etcd_cluster):
    ctx = ssl.create_default_context(cafile=str(etcd_cluster.ca_path))  # trusts the server, no client cert
    port = int(etcd_cluster.client_urls[0].rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        conn.request("POST", "/v3/maintenance/status", body=b"{}")
        conn.getresponse().read()
    conn.close()


def test_put_get_and_etcdctl_flags(etcd_cluster):
    c = etcd_cluster
    c.put("/fixture/a", "1")
    c.put("/fixture/b", "two words")
    c.put("/other", "x")
    assert c.get_all("/fixture/") == {"/fixture/a": "1", "/fixture/b": "two words"}
    assert {"/fixture/a", "/other"} <= set(c.get_all())
    out = c.etcdctl("endpoint", "health", "-w", "json", check=True)
    assert len([e for e in json.loads(out.stdout) if e["health"]]) == 3


def test_snapshot_save_and_etcdutl_status(etcd_cluster, tmp_path):
    c = etcd_cluster
    c.put("/snap/k", "v")
    target = tmp_path / "db.snap"
    c.etcdctl("snapshot", "save", str(target), endpoints=[c.client_urls[2]], check=True)
    st = subprocess.run([str(c.tools / "etcdutl"), "snapshot", "status", "-w", "json", str(target)],
                        capture_output=True, check=True, timeout=30)
    status = json.loads(st.stdout)
    assert status["revision"] >= 1 and status["totalKey"] >= 1 and status["totalSize"] + 32 == target.stat().st_size  # + sha256 trailer


def test_one_member_stopped_keeps_quorum_and_leader(etcd_cluster, tmp_path):
    c = etcd_cluster
    try:
        leader = c.leader_index()
        c.stop_member(leader)
        assert leader not in c.running_members()
        wait_for(lambda: c.leader_index() is not None, 10, "a new leader among the two left")
        assert c.leader_index() in c.running_members()
        c.put("/quorum/one-down", "ok")
        assert c.get_all("/quorum/") == {"/quorum/one-down": "ok"}
        st, body = c.http(c.running_members()[0], "GET", "/health")
        assert st == 200 and body["health"] == "true"
        with pytest.raises(OSError):
            c.http(leader, "GET", "/health", timeout=2)
        c.start_member(leader)  # same data dir: it rejoins and catches up
        assert c.running_members() == [0, 1, 2]
        out = c.etcdctl("get", "/quorum/one-down", "--print-value-only", "--consistency=s",
                        endpoints=[c.client_urls[leader]], check=True)
        assert wait_for(lambda: c.etcdctl("get", "/quorum/one-down", "--print-value-only", "--consistency=s",
                                          endpoints=[c.client_urls[leader]]).stdout.strip() == b"ok", 10,
                        "the restarted member to catch up") and out.returncode == 0
    finally:
        c.heal()
    assert c.running_members() == [0, 1, 2]
    assert c.get_all("/quorum/") == {"/quorum/one-down": "ok"}


def test_two_members_stopped_loses_quorum(etcd_cluster):
    c = etcd_cluster
    try:
        c.stop_member(0)
        c.stop_member(1)
        wait_for(lambda: c.status(2).get("leader", "0") == "0", 10, "the lone member to lose its leader")
        st, body = c.http(2, "GET", "/health")
        assert st == 503 and body["reason"] == "RAFT NO LEADER"
        cp = c.etcdctl("put", "/quorum/two-down", "no", command_timeout="2s")
        assert cp.returncode != 0
    finally:
        c.heal()
    assert c.leader_index() is not None
    assert "/quorum/two-down" not in c.get_all("/quorum/")


def test_nospace_alarm_is_real_and_disarmable(etcd_cluster):
    c = etcd_cluster
    try:
        c.trigger_nospace()
        assert [a["alarm"] for a in c.alarms()] == ["NOSPACE"] * len(c.alarms()) and c.alarms()
        st, body = c.http(0, "POST", "/v3/maintenance/alarm", {"action": "GET"})
        assert st == 200 and body["alarms"][0]["alarm"] == "NOSPACE"
        cp = c.etcdctl("put", "/nospace-test", "x")
        assert cp.returncode != 0 and b"database space exceeded" in cp.stderr
        st, body = c.http(1, "GET", "/health")
        assert st == 503 and body["reason"] == "ALARM NOSPACE"
        c.disarm()
        assert c.alarms() == []
        c.put("/nospace-test", "after")
    finally:
        c.heal()
    assert c.get_all("/nospace-test") == {"/nospace-test": "after"}


def test_small_quota_cluster_raises_nospace(tmp_path):
    with EtcdCluster(tmp_path, members=1, quota_backend_bytes=1024 * 1024) as c:
        c.trigger_nospace()
        assert c.alarms()[0]["alarm"] == "NOSPACE"
        assert c.etcdctl("put", "k", "v").returncode != 0


def test_fill_writes_roughly_that_much(tmp_path):
    with EtcdCluster(tmp_path, members=1) as c:
        before = int(c.status(0)["dbSize"])
        assert c.fill(3 * 1024 * 1024) == 3 * 1024 * 1024
        # dbSize follows the backend's batched commits
        wait_for(lambda: int(c.status(0)["dbSize"]) - before >= 3 * 1024 * 1024, 5, "dbSize to grow by 3 MiB")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_processes_are_killed_when_the_test_body_fails(tmp_path):
    pids = []
    with pytest.raises(RuntimeError):
        with EtcdCluster(tmp_path, members=1) as c:
            pids = [m.proc.pid for m in c.members]
            raise RuntimeError("test body failed")
    assert pids and not any(_alive(p) for p in pids)


def test_start_failure_is_reported_and_cleaned_up(tmp_path):
    c = EtcdCluster(tmp_path, members=1)
    c._extra_args = ["--no-such-flag"]
    with pytest.raises(EtcdError, match="exited"):
        c.start()
    assert c.running_members() == []


def test_a_port_stolen_before_start_is_replaced(tmp_path):
    import socket

    c = EtcdCluster(tmp_path, members=1)
    thief = socket.socket()
    thief.bind(("127.0.0.1", c.members[0].client_port))
    thief.listen(1)
    try:
        with c:
            assert c.members[0].client_port != thief.getsockname()[1]
            assert c.status(0)["version"] == "3.5.1"
    finally:
        thief.close()


def test_restore_from_a_snapshot_serves_the_same_keys(etcd_cluster, tmp_path):
    c = etcd_cluster
    for i in range(20):
        c.put(f"/restore/{i:02d}", f"value-{i}")
    snap = tmp_path / "snap.db"
    c.etcdctl("snapshot", "save", str(snap), endpoints=[c.client_urls[0]], check=True)
    with EtcdCluster(tmp_path / "restored", members=1).restore_from(snap) as fresh:
        assert fresh.get_all() == c.get_all()
        assert len(fresh.get_all("/restore/")) == 20
        fresh.put("/restore/new", "x")  # a working, writable cluster
    with pytest.raises(EtcdError, match="restore"):
        EtcdCluster(tmp_path / "bad", members=1).restore_from(tmp_path / "missing.db")
