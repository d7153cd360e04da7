//! The admission endpoint over real TLS with bad and odd input: wrong routes, methods and
//! content types, malformed, truncated and huge bodies, garbage on the TLS port, keep-alive,
//! accept() errors, and the metrics and health endpoints.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::hook_common::*;
use crate::support::pki::Alg;
use crate::support::wait_for;
use serde_json::{json, Value};

fn pod_review(uid: &str) -> Value {
    review(
        uid,
        "ns",
        "CREATE",
        deployment_pod(annotations(&[("inject", "true")])),
        false,
    )
}

/// The status of one ordinary AdmissionReview on a fresh connection: the hook still serves.
fn served(hook: &Hook, uid: &str) -> u16 {
    let body = pod_review(uid).to_string();
    hook.client()
        .post("/mutate", "application/json", body.as_bytes())
        .status
}

#[test]
fn keep_alive_carries_many_requests_on_one_connection() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let mut client = hook.client();
    for i in 0..300 {
        let body = pod_review(&format!("k{i}")).to_string();
        let reply = client.post("/mutate?timeout=10s", "application/json", body.as_bytes());
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("Content-Type"), Some("application/json"));
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["response"]["uid"], format!("k{i}"));
        assert!(v["response"]["patch"].is_string());
    }
    assert_eq!(hook.metric("hook_injections_total"), 300.0);
    assert_eq!(hook.metric("hook_requests_total{code=\"200\"}"), 300.0);
    // The duration is recorded after the response is written, so the last one may lag the reply.
    wait_for("300 request durations", Duration::from_secs(10), || {
        let (_, metrics) = hook.ops_get("/metrics");
        metrics
            .contains("hook_request_duration_seconds_count 300")
            .then_some(())
    });
    assert_eq!(hook.ops_get("/healthz").0, 200);
    assert_eq!(hook.ops_get("/readyz").0, 200);
}

#[test]
fn routes_methods_and_content_types() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let body = pod_review("r").to_string();
    let mut client = hook.client();
    assert_eq!(
        client.post("/validate", "application/json", body.as_bytes()).status,
        404
    );
    assert_eq!(
        client.post("/mutate/x", "application/json", body.as_bytes()).status,
        404
    );
    assert_eq!(client.post("/mutate", "text/plain", body.as_bytes()).status, 415);
    assert_eq!(client.post("/mutate", "application/yaml", body.as_bytes()).status, 415);
    assert_eq!(
        client
            .post("/mutate", "application/json; charset=utf-8", body.as_bytes())
            .status,
        200
    );
    assert_eq!(client.post("/mutate", "Application/JSON", body.as_bytes()).status, 200);
    client.send(b"GET /mutate HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let reply = client.read_reply().unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("Allow"), Some("POST"));
    // HEAD: a head that announces a body, and no body; the connection then goes on.
    client.send(b"HEAD /mutate HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let reply = client.read_head_reply().unwrap();
    assert_eq!(reply.status, 405);
    assert!(reply.body.is_empty());
    assert_eq!(client.post("/mutate", "application/json", body.as_bytes()).status, 200);
    // No Content-Type at all.
    let raw = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(raw.as_bytes()).unwrap();
    assert_eq!(client.read_reply().unwrap().status, 415);
    // The same connection still works.
    assert_eq!(client.post("/mutate", "application/json", body.as_bytes()).status, 200);
    assert_eq!(hook.metric("hook_errors_total{kind=\"content_type\"}"), 3.0);
}

#[test]
fn malformed_truncated_and_wrong_bodies() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let good = pod_review("t").to_string();
    let mut client = hook.client();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"".to_vec(), 400),
        (b"{".to_vec(), 400),
        (b"\xff\xfe\x00garbage".to_vec(), 400),
        (good.as_bytes()[..good.len() / 2].to_vec(), 400),
        (b"null".to_vec(), 400),
        (
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}})
                .to_string()
                .into_bytes(),
            400,
        ),
    ];
    for (body, status) in &cases {
        let reply = client.post("/mutate", "application/json", body);
        assert_eq!(reply.status, *status, "{}", String::from_utf8_lossy(body));
        assert!(!reply.text().is_empty(), "a 400 says why");
    }
    // A Pod CREATE whose object is not an object: denied, uid echoed.
    let mut odd = pod_review("odd");
    odd["request"]["object"] = json!("not a pod");
    let reply = client.post("/mutate", "application/json", odd.to_string().as_bytes());
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        (v["response"]["uid"].as_str(), v["response"]["allowed"].as_bool()),
        (Some("odd"), Some(false))
    );
    // Deeply nested JSON does not overflow a stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(client.post("/mutate", "application/json", deep.as_bytes()).status, 400);
    // A body cut short by a closed connection: that connection ends, the server goes on.
    let mut cut = hook.client();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        good.len()
    );
    cut.send(head.as_bytes()).unwrap();
    cut.send(&good.as_bytes()[..100]).unwrap();
    drop(cut);
    assert_eq!(client.post("/mutate", "application/json", good.as_bytes()).status, 200);
    assert_eq!(
        hook.client()
            .post("/mutate", "application/json", good.as_bytes())
            .status,
        200
    );
}

#[test]
fn huge_bodies_are_refused() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[("MAX_BODY_BYTES", "65536")]);
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    pod["metadata"]["annotations"]["padding"] = json!("x".repeat(70_000));
    let body = review("big", "ns", "CREATE", pod, false).to_string();
    let mut client = hook.client();
    let reply = client.post("/mutate", "application/json", body.as_bytes());
    assert_eq!(reply.status, 413);
    assert!(reply.text().contains("65536"), "{}", reply.text());
    // Chunked, with no Content-Length to refuse early: cut off at the limit.
    let mut chunked = hook.client();
    let mut raw =
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for chunk in body.as_bytes().chunks(8192) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    chunked.send(&raw).unwrap();
    assert_eq!(chunked.read_reply().unwrap().status, 413);
    assert_eq!(hook.metric("hook_errors_total{kind=\"too_large\"}"), 2.0);
    let small = pod_review("s").to_string();
    assert_eq!(
        hook.client()
            .post("/mutate", "application/json", small.as_bytes())
            .status,
        200
    );
}

#[test]
fn garbage_and_failed_handshakes_do_not_hurt_the_server() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    // Plain HTTP on the TLS port, random bytes, a connection that just closes.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x05hello",
        b"",
    ] {
        let mut s = TcpStream::connect(hook.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(garbage).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1 200"));
    }
    // A client that does not trust the server's CA.
    let other = support::pki::Ca::new("someone else");
    let config = client_config(&other.cert_pem);
    assert!(Client::try_connect(hook.addr, &config).is_err());
    assert_eq!(served(&hook, "after"), 200);
    assert!(hook.metric("hook_errors_total{kind=\"handshake\"}") >= 3.0);
    for line in hook.log_lines() {
        assert!(
            line["time"].is_string() && line["level"].is_string() && line["msg"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn accept_errors_do_not_stop_the_server() {
    // Each connection takes two descriptors (the stream and its clone), so depending on how
    // many are open at start, EMFILE hits either accept() or the clone: try both parities.
    for limit in [41, 42] {
        descriptors_running_out_do_not_stop_the_server(limit);
    }
}

fn descriptors_running_out_do_not_stop_the_server(limit: u32) {
    let setup = Setup::new(Alg::EcdsaP256);
    // Few file descriptors: idle connections exhaust them and accepting fails with EMFILE.
    // Counted on top of whatever descriptors the test runner passed down (the shell's own).
    let script = format!("n=$(ls /proc/$$/fd | wc -l); ulimit -n $((n + {limit})) && exec \"$0\"");
    let hook = start_with(&setup, &[], Some(&["sh", "-c", &script]));
    assert_eq!(served(&hook, "fd"), 200);
    let mut idle: Vec<TcpStream> = Vec::new();
    let mut tls: Vec<Client> = Vec::new();
    // Once descriptors run out, further connections wait in the backlog: give up on those quickly.
    for _ in 0..10 {
        if let Ok(c) = Client::try_connect_within(hook.addr, &client_config(&hook.ca_pem), Duration::from_secs(1)) {
            tls.push(c);
        }
    }
    for _ in 0..60 {
        idle.push(TcpStream::connect(hook.addr).unwrap());
    }
    wait_for("accept() to fail and be logged", Duration::from_secs(30), || {
        hook.log_text().contains("accepting a connection failed").then_some(())
    });
    drop(idle);
    drop(tls);
    // Once descriptors are free again, the same process serves again.
    let body = pod_review("fd").to_string();
    wait_for("the hook to serve again", Duration::from_secs(60), || {
        let mut c = Client::try_connect(hook.addr, &client_config(&hook.ca_pem)).ok()?;
        let r = c.try_post("/mutate", "application/json", body.as_bytes()).ok()?;
        (r.status == 200).then_some(())
    });
    for _ in 0..20 {
        assert_eq!(served(&hook, "fd"), 200);
    }
    // Even a dependency's panic on the way (tiny_http unwraps a failed clone) is one JSON line.
    let lines = hook.log_lines();
    for line in lines.iter().filter(|l| l["msg"] == "a thread panicked") {
        assert_eq!(line["level"], "error", "{line}");
        assert!(line["location"].is_string() && line["panic"].is_string(), "{line}");
    }
}

#[test]
fn idle_and_silent_connections_are_closed() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[("IDLE_TIMEOUT", "300ms"), ("HANDSHAKE_TIMEOUT", "300ms")]);
    // A client that never starts the handshake is dropped after HANDSHAKE_TIMEOUT, well
    // before this read gives up (10 s).
    let mut raw = TcpStream::connect(hook.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match raw.read(&mut [0u8; 1]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the silent connection was not closed: {other:?}"),
    }
    // A client answered once, then silent, is closed after IDLE_TIMEOUT (with close_notify),
    // well before its own read timeout (30 s).
    let body = pod_review("idle").to_string();
    let mut client = hook.client();
    assert_eq!(client.post("/mutate", "application/json", body.as_bytes()).status, 200);
    let closed = client.read_reply().unwrap_err();
    assert!(closed.contains("connection closed"), "{closed}");
    // A client that is mid-request when the time runs out is closed too, and the server goes on.
    let mut slow = hook.client();
    slow.send(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    assert!(slow.read_reply().is_err());
    assert_eq!(
        hook.client()
            .post("/mutate", "application/json", body.as_bytes())
            .status,
        200
    );
}

/// The hard open files limit of this process (inherited by the hook).
fn hard_open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

#[test]
fn the_open_files_limit_is_raised_and_checked() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hard = hard_open_files_limit();
    let too_many = |hook: &Hook| {
        hook.log_lines().into_iter().find(|l| {
            l["msg"]
                .as_str()
                .unwrap_or("")
                .starts_with("MAX_CONNECTIONS does not fit")
        })
    };
    // A low soft limit under a higher hard one: the hook raises it to the hard one.
    let hook = start_with(&setup, &[], Some(&["sh", "-c", "ulimit -S -n 100 && exec \"$0\""]));
    let serving = hook.log_lines().into_iter().find(|l| l["msg"] == "serving").unwrap();
    assert_eq!(serving["open_files_limit"], hard, "{serving}");
    // 256 connections (the default) take 6 descriptors each, plus 64 kept aside.
    assert_eq!(too_many(&hook).is_some(), hard < 64 + 6 * 256);
    drop(hook);
    // Both limits low: the hook says which setting does not fit, and serves anyway.
    let hook = start_with(&setup, &[], Some(&["sh", "-c", "ulimit -n 100 && exec \"$0\""]));
    let warning = too_many(&hook).expect("a warning about MAX_CONNECTIONS");
    assert_eq!(warning["level"], "warn");
    assert_eq!(warning["max_connections"], 256);
    assert_eq!(warning["open_files_limit"], 100);
    assert_eq!(warning["connections_that_fit"], 6);
    assert_eq!(served(&hook, "limit"), 200);
}

#[test]
fn a_request_sent_together_with_the_handshake_is_answered() {
    // rustls buffers plaintext written before the handshake ends and sends it right behind
    // the client's Finished, in the same TCP segment: the server must not leave it unread.
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let body = pod_review("early").to_string();
    for _ in 0..20 {
        let tcp = TcpStream::connect(hook.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut conn =
            rustls::ClientConnection::new(client_config(&hook.ca_pem), "localhost".try_into().unwrap()).unwrap();
        let request = format!(
            "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.writer().write_all(request.as_bytes()).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"uid\":\"early\""), "{text}");
    }
}

/// 32 connections opened at once (a barrier), each sending five reviews on keep-alive; every
/// one must get a 200.
fn burst_of_32_connections(hook: &Hook, body: &std::sync::Arc<String>) {
    drop(connections_32_at_once(hook, body, 5));
}

/// 32 connections opened at once (a barrier), each sending `reviews` reviews on keep-alive;
/// every one must get a 200. Returns them still open.
fn connections_32_at_once(hook: &Hook, body: &std::sync::Arc<String>, reviews: usize) -> Vec<Client> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let (addr, config, body, barrier) = (hook.addr, client_config(&hook.ca_pem), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut client = Client::try_connect(addr, &config)?;
                for _ in 0..reviews {
                    let reply = client.try_post("/mutate", "application/json", body.as_bytes())?;
                    if reply.status != 200 {
                        return Err(format!("status {}", reply.status));
                    }
                }
                Ok::<_, String>(client)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap().expect("every connection is served"))
        .collect()
}

#[test]
fn many_connections_opened_at_once_are_all_served() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let body = std::sync::Arc::new(pod_review("burst").to_string());
    for _round in 0..20 {
        burst_of_32_connections(&hook, &body);
    }
    assert_eq!(hook.metric("hook_requests_total{code=\"200\"}"), 3200.0);
}

#[test]
fn a_half_sent_first_request_never_reaches_the_http_layer() {
    // Only complete requests are handed on, so nothing waits in tiny_http and nothing is kicked.
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[("WORKERS", "1")]);
    let body = pod_review("half").to_string();
    let mut client = hook.client();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.send(head.as_bytes()).unwrap();
    client.send(&body.as_bytes()[..body.len() / 2]).unwrap();
    // A half request handed on would be "sent but never answered" and kicked within two
    // watchdog looks (10-20 ms). Checked while it is the only connection, so that a second
    // request slowed down by a loaded machine (kicked for its own sake) cannot count.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hook.metric("hook_backend_kicks_total"), 0.0);
    // The only worker is free: another client is served while the first one stalls.
    let started = std::time::Instant::now();
    assert_eq!(
        hook.client()
            .post("/mutate", "application/json", body.as_bytes())
            .status,
        200
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    client.send(&body.as_bytes()[body.len() / 2..]).unwrap();
    assert_eq!(client.read_reply().unwrap().status, 200);
}

/// The hook's peak resident memory (VmHWM) in KiB.
fn peak_rss_kib(hook: &Hook) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", hook.proc.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The bytes of a real ClientHello, to trickle.
fn client_hello(hook: &Hook) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(client_config(&hook.ca_pem), "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

/// Reads until end of stream or `within`; returns what came and whether the stream ended in time.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = std::time::Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (out, false)
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn the_handshake_and_the_request_have_deadlines_not_per_read_timeouts() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[("HANDSHAKE_TIMEOUT", "1s"), ("REQUEST_TIMEOUT", "1s")]);
    // A ClientHello at a byte every 200 ms: each read is quick, the handshake never ends.
    let hello = client_hello(&hook);
    let mut raw = TcpStream::connect(hook.addr).unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in hello.iter().take(40) {
        if raw.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        // Wait 200 ms for the server's end of stream, then send the next byte.
        let (_, eof) = read_until_closed(&mut raw, Duration::from_millis(200));
        if eof {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled handshake was never cut off");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    // A request head at a byte every 200 ms: answered 408 once its second is up.
    let mut client = hook.client();
    let started = std::time::Instant::now();
    let head = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";
    let mut reply = None;
    for byte in head.iter() {
        if client.send(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_millis(1500) {
            reply = Some(client.read_reply());
            break;
        }
    }
    let reply = reply.expect("the head was sent in full before the deadline").unwrap();
    assert_eq!(reply.status, 408);
    assert!(started.elapsed() < Duration::from_secs(4));
    // The API server's own `?timeout=` is shorter than REQUEST_TIMEOUT: a body still missing
    // after it is not waited for.
    let hook = start(&setup, &[]);
    let body = pod_review("late").to_string();
    let mut client = hook.client();
    let started = std::time::Instant::now();
    let head = format!(
        "POST /mutate?timeout=1s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.send(head.as_bytes()).unwrap();
    client.send(&body.as_bytes()[..10]).unwrap();
    assert_eq!(client.read_reply().unwrap().status, 408);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(hook.metric("hook_errors_total{kind=\"timeout\"}"), 1.0);
}

#[test]
fn real_requests_are_served_while_256_slow_clients_hold_connections() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let hello = client_hello(&hook);
    // 128 TCP connections trickling a ClientHello, 128 TLS connections trickling a request
    // head, each a byte every second: every read is quick, none ever completes.
    let mut raw: Vec<TcpStream> = (0..128).map(|_| TcpStream::connect(hook.addr).unwrap()).collect();
    let mut tls: Vec<Client> = (0..128)
        .filter_map(|_| Client::try_connect(hook.addr, &client_config(&hook.ca_pem)).ok())
        .collect();
    assert_eq!(tls.len(), 128);
    for c in &mut tls {
        let _ = c.send(b"P");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for i in 1..40 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
                for s in &mut raw {
                    let _ = s.write_all(&[hello[(i - 1) % hello.len()]]);
                }
                for c in &mut tls {
                    let _ = c.send(b"O");
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let body = pod_review("real").to_string();
    for i in 0..4 {
        let started = std::time::Instant::now();
        let mut c = Client::try_connect_within(hook.addr, &client_config(&hook.ca_pem), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("real request {i}: {e}"));
        let reply = c
            .try_post("/mutate?timeout=10s", "application/json", body.as_bytes())
            .unwrap_or_else(|e| panic!("real request {i}: {e}"));
        assert_eq!(reply.status, 200);
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
    let evicted = hook.metric("hook_errors_total{kind=\"evicted\"}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    trickler.join().unwrap();
    // Room was made by closing slow clients (the metric is read before they go away).
    assert!(evicted >= 1.0, "{evicted}");
}

#[test]
fn request_heads_are_bounded_before_the_http_layer() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    // One long header line: 431, without the end of the head ever being looked for further.
    let mut client = hook.client();
    let mut head = b"POST /mutate HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 100 * 1024));
    let _ = client.send(&head);
    assert_eq!(client.read_reply().unwrap().status, 431);
    // 40 MiB of small headers: the connection is cut off long before, memory stays flat.
    let before = peak_rss_kib(&hook);
    let mut client = hook.client();
    client.send(b"POST /mutate HTTP/1.1\r\nHost: x\r\n").unwrap();
    let line = b"X-Small-Header-Name: some value that repeats\r\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(line.len() * 1400).collect();
    let mut sent = 0usize;
    while sent < 40 * 1024 * 1024 {
        if client.send(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(sent < 40 * 1024 * 1024, "40 MiB of request head were accepted");
    let grown = peak_rss_kib(&hook).saturating_sub(before);
    assert!(grown < 16 * 1024, "peak RSS grew by {grown} KiB");
    assert!(hook.metric("hook_errors_total{kind=\"header_too_large\"}") >= 1.0);
    assert_eq!(served(&hook, "after"), 200);
}

#[test]
fn framing_problems_get_an_answer_the_client_can_read() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[("MAX_BODY_BYTES", "65536")]);
    let body = pod_review("f").to_string();
    // Two different Content-Lengths: refused, as Go's server does (which one is the body?).
    let mut c = hook.client();
    let raw = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nContent-Length: 5\r\n\r\n{body}",
        body.len()
    );
    c.send(raw.as_bytes()).unwrap();
    assert_eq!(c.read_reply().unwrap().status, 400);
    // A header value that is not ASCII: an answer, not a dropped connection.
    let mut c = hook.client();
    let raw = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nX-Name: caf\u{e9}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send(raw.as_bytes()).unwrap();
    let reply = c.read_reply().unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("X-Name"), "{}", reply.text());
    // A client that writes its whole (too large) body before reading still gets the 413.
    let big = vec![b'x'; 8 * 1024 * 1024];
    let mut c = hook.client();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    c.send(head.as_bytes()).unwrap();
    c.send(&big)
        .expect("the body is read (and dropped), not refused with a reset");
    let reply = c.read_reply().unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(reply.header("Connection"), Some("close"));
    // The same connection is not reused, and the server goes on.
    assert_eq!(
        hook.client()
            .post("/mutate", "application/json", body.as_bytes())
            .status,
        200
    );
    assert_eq!(hook.metric("hook_errors_total{kind=\"bad_request\"}"), 2.0);
}

#[test]
fn many_large_requests_held_incomplete_stay_within_a_memory_budget() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[("REQUEST_TIMEOUT", "6s")]);
    let before = peak_rss_kib(&hook);
    // 48 clients each send all of a 3 MiB body but its last byte: 144 MiB if all were held.
    let senders: Vec<_> = (0..48)
        .map(|_| {
            let (addr, config) = (hook.addr, client_config(&hook.ca_pem));
            std::thread::spawn(move || {
                let Ok(mut c) = Client::try_connect(addr, &config) else {
                    return;
                };
                let len = 3 * 1024 * 1024;
                let head = format!(
                    "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
                );
                if c.send(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 * 1024];
                for _ in 0..len / chunk.len() - 1 {
                    if c.send(&chunk).is_err() {
                        return;
                    }
                }
                let _ = c.send(&chunk[1..]);
                let _ = c.read_reply();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    // Meanwhile a real request is served (it arrives whole, so it is read at once).
    let body = pod_review("during").to_string();
    let started = std::time::Instant::now();
    assert_eq!(
        hook.client()
            .post("/mutate", "application/json", body.as_bytes())
            .status,
        200
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    for s in senders {
        s.join().unwrap();
    }
    let grown = peak_rss_kib(&hook).saturating_sub(before);
    assert!(grown < 80 * 1024, "peak RSS grew by {grown} KiB");
    assert!(hook.metric("hook_errors_total{kind=\"timeout\"}") >= 1.0);
}

/// A Pod CREATE asking for injection, with `extra` more annotations (about 24 bytes each).
fn large_review(uid: &str, extra: usize) -> String {
    let mut pod = deployment_pod(annotations(&[("inject", "true")]));
    for i in 0..extra {
        pod["metadata"]["annotations"][format!("example.com/k{i}")] = json!("v");
    }
    review(uid, "ns", "CREATE", pod, false).to_string()
}

#[test]
fn a_request_whose_deadline_passed_while_queued_gets_504() {
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[("WORKERS", "1")]);
    // Keep the large lane busy: requests with 100,000 annotations each (about 2.4 MB).
    let heavy = std::sync::Arc::new(large_review("heavy", 100_000));
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let (addr, config, heavy) = (hook.addr, client_config(&hook.ca_pem), heavy.clone());
            std::thread::spawn(move || {
                let mut c = Client::try_connect(addr, &config).unwrap();
                c.try_post("/mutate?timeout=30s", "application/json", heavy.as_bytes())
                    .map(|r| r.status)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A large request (100 KB, sent within the timeout) that the API server gave 100 ms: by
    // the time the large lane gets to it, behind the four, it is past.
    let late = large_review("late", 4_000);
    let reply = hook
        .client()
        .post("/mutate?timeout=100ms", "application/json", late.as_bytes());
    assert_eq!(reply.status, 504, "{}", reply.text());
    for b in busy {
        assert_eq!(b.join().unwrap(), Ok(200));
    }
    assert!(hook.metric("hook_errors_total{kind=\"deadline\"}") >= 1.0);
}

#[test]
fn ordinary_requests_do_not_wait_behind_large_ones() {
    // Three requests of 2.4 MB arrive first, then a Pod of a few KiB, with one worker: the
    // large ones go to their own lane, so the small one is answered before they are.
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[("WORKERS", "1")]);
    let heavy = std::sync::Arc::new(large_review("heavy", 100_000));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let large: Vec<_> = (0..3)
        .map(|_| {
            let (addr, config, heavy) = (hook.addr, client_config(&hook.ca_pem), heavy.clone());
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut c = Client::try_connect(addr, &config)?;
                let status = c
                    .try_post("/mutate?timeout=30s", "application/json", heavy.as_bytes())?
                    .status;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<u16, String>(status)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let body = pod_review("small").to_string();
    let reply = hook
        .client()
        .post("/mutate?timeout=30s", "application/json", body.as_bytes());
    let large_before = answered.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        large_before < 3,
        "the small request was answered after all {large_before} large ones"
    );
    for l in large {
        assert_eq!(l.join().unwrap(), Ok(200));
    }
}

/// The mappings of process `pid` from `/proc/PID/maps`: start, end, permissions, anonymous.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mappings(pid: u32) -> Vec<(u64, u64, String, bool)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (start, end) = fields[0].split_once('-').unwrap();
            let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
            (hex(start), hex(end), fields[1].to_string(), fields.len() < 6)
        })
        .collect()
}

/// glibc malloc's arenas besides the main heap in process `pid`: each is an anonymous mapping
/// of 64 MiB (HEAP_MAX_SIZE on 64-bit), aligned to its size, read-write for the part in use
/// and inaccessible for the rest (thread stacks are the other way round: guard page first).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_arenas(pid: u32) -> usize {
    const HEAP_MAX: u64 = 64 << 20;
    mappings(pid)
        .windows(2)
        .filter(|w| {
            let ((start, end, perms, anon), (next_start, next_end, next_perms, next_anon)) = (&w[0], &w[1]);
            *anon
                && *next_anon
                && start % HEAP_MAX == 0
                && perms == "rw-p"
                && next_perms == "---p"
                && end == next_start
                && next_end - start == HEAP_MAX
        })
        .count()
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_keeps_to_two_arenas_however_many_threads_serve() {
    // Every thread (about two per connection) would get an arena of its own, up to 8 per
    // core, each holding its own free memory: the hook limits glibc to two in all.
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let body = std::sync::Arc::new(pod_review("arenas").to_string());
    burst_of_32_connections(&hook, &body);
    assert_eq!(hook.metric("hook_requests_total{code=\"200\"}"), 160.0);
    let arenas = malloc_arenas(hook.proc.pid());
    assert!(arenas <= 1, "{arenas} malloc arenas besides the main heap");
}

/// Thread stacks mapped in process `pid`: glibc maps each with its guard page first (an
/// inaccessible page, then the read-write stack above it), the other way round from malloc's
/// arenas. Rust's per-thread signal stacks look the same but are small (a few pages): only
/// stacks of 64 KiB and more count.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn thread_stacks(pid: u32) -> usize {
    mappings(pid)
        .windows(2)
        .filter(|w| {
            let ((start, end, perms, anon), (next_start, next_end, next_perms, next_anon)) = (&w[0], &w[1]);
            *anon
                && *next_anon
                && perms == "---p"
                && end - start == 4096
                && next_perms == "rw-p"
                && end == next_start
                && next_end - next_start >= 64 << 10
        })
        .count()
}

/// The number of threads of process `pid`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn the_stacks_of_ended_connection_threads_are_given_back() {
    // glibc keeps up to 40 MiB of ended threads' stacks for reuse, each with its last pages
    // resident: after a burst of 32 connections (a thread each) the hook keeps none of them.
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let pid = hook.proc.pid();
    let body = std::sync::Arc::new(pod_review("stacks").to_string());
    let before = threads(pid);
    let settle = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while threads(pid) > before + 8 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let live = threads(pid);
        assert!(
            live <= before + 8,
            "the connection threads did not end: {live} threads, {before} before"
        );
        live
    };
    burst_of_32_connections(&hook, &body);
    settle();
    // A thread's stack can only be unmapped once the thread is gone, so the last ones of the
    // burst wait for the next thread to end: one more connection.
    let reply = hook.client().post("/mutate", "application/json", body.as_bytes());
    assert_eq!(reply.status, 200);
    let live = settle();
    // Every thread but the main one has a stack of its own; at most one is left over.
    let stacks = thread_stacks(pid);
    assert!(stacks <= live, "{stacks} thread stacks mapped for {live} threads");
}

/// Anonymous memory resident in process `pid` (heap, arenas, stacks), in KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn anonymous_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn memory_of_large_requests_is_given_back_once_they_are_answered() {
    // Four Pods with 20,000 annotations each (about 0.5 MB): parsing them makes many small
    // allocations, freed in the middle of malloc's arenas where glibc never returns them by
    // itself (measured: 13.6 MiB still resident afterwards, 2 MiB with the trim).
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let pid = hook.proc.pid();
    let idle = anonymous_kib(pid);
    let heavy = std::sync::Arc::new(large_review("heavy", 20_000));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, config, heavy) = (hook.addr, client_config(&hook.ca_pem), heavy.clone());
            std::thread::spawn(move || {
                let mut c = Client::try_connect(addr, &config)?;
                let status = c
                    .try_post("/mutate?timeout=30s", "application/json", heavy.as_bytes())?
                    .status;
                Ok::<_, String>((status, c))
            })
        })
        .collect();
    // The connections stay open, as the API server keeps them.
    let mut open = Vec::new();
    for c in clients {
        let (status, client) = c.join().unwrap().expect("answered");
        assert_eq!(status, 200);
        open.push(client);
    }
    let bound = idle + 4096;
    wait_for("the large requests' memory given back", Duration::from_secs(15), || {
        (anonymous_kib(pid) <= bound).then_some(())
    });
    drop(open);
}

/// Each mapping of process `pid` as `/proc/PID/smaps` has it: (size KiB, permissions, name, Rss KiB).
fn smaps(pid: u32) -> Vec<(u64, String, String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out: Vec<(u64, String, String, u64)> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some((start, end)) = fields[0].split_once('-').filter(|_| fields.len() >= 5) {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
                let name = fields.get(5).unwrap_or(&"").to_string();
                out.push(((b - a) / 1024, fields[1].to_string(), name, 0));
                continue;
            }
        }
        if let (Some(last), Some(rss)) = (out.last_mut(), line.strip_prefix("Rss:")) {
            last.3 = rss.trim().trim_end_matches("kB").trim().parse().unwrap();
        }
    }
    out
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn large_requests_are_reviewed_in_a_region_given_back_whole() {
    // The lane reviews a large request in a region of its own (256 MiB of address space), so
    // its many small pieces never enter malloc's shared arenas, where the memory other threads
    // allocate meanwhile would pin their pages (docs/hook.md, "Memory"). Once answered, the
    // region holds nothing resident and the rest of the hook's memory has not grown by them.
    const REGION_KIB: u64 = 256 * 1024;
    let setup = Setup::new(Alg::EcdsaP256);
    let hook = start(&setup, &[]);
    let pid = hook.proc.pid();
    let region = |pid| {
        let found: Vec<u64> = smaps(pid)
            .into_iter()
            .filter(|(size, perms, name, _)| *size == REGION_KIB && perms == "rw-p" && name.is_empty())
            .map(|m| m.3)
            .collect();
        assert_eq!(found.len(), 1, "one region mapping of 256 MiB: {found:?}");
        found[0]
    };
    let small = review(
        "small",
        "ns",
        "CREATE",
        deployment_pod(annotations(&[("inject", "true")])),
        false,
    )
    .to_string();
    // `n` keep-alive connections, each having sent one ordinary request.
    let open = |n: usize| -> Vec<Client> {
        (0..n)
            .map(|_| {
                let mut c = hook.client();
                assert_eq!(c.post("/mutate", "application/json", small.as_bytes()).status, 200);
                c
            })
            .collect()
    };
    // What 32 open connections cost, without large requests.
    let warm = open(32);
    std::thread::sleep(Duration::from_millis(1500)); // a trim (at most one a second)
    let with_32 = anonymous_kib(pid) - region(pid);
    drop(warm);
    // Again, but the 32 connections open while four large requests are reviewed: their state
    // is allocated while the reviews' pieces would fill the arenas.
    let heavy = std::sync::Arc::new(large_review("heavy", 20_000));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (addr, config, heavy) = (hook.addr, client_config(&hook.ca_pem), heavy.clone());
            std::thread::spawn(move || {
                let mut c = Client::try_connect(addr, &config)?;
                for _ in 0..3 {
                    let status = c
                        .try_post("/mutate?timeout=30s", "application/json", heavy.as_bytes())?
                        .status;
                    assert_eq!(status, 200);
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    let conns = open(32);
    for s in senders {
        s.join().unwrap().expect("answered");
    }
    assert!(region(pid) <= 16, "{} KiB of the region still resident", region(pid));
    // Outside the region: within 1 MiB of the same 32 connections without large requests.
    wait_for(
        "the hook's memory back near 32 connections' own",
        Duration::from_secs(10),
        || (anonymous_kib(pid) - region(pid) <= with_32 + 1024).then_some(()),
    );
    drop(conns);
}

/// Anonymous memory the hook holds with 32 keep-alive connections open, each having sent 100
/// reviews (all 32 at once), over what it held before they opened; in KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn memory_of_32_busy_connections(hook: &Hook) -> u64 {
    let pid = hook.proc.pid();
    let idle = anonymous_kib(pid);
    let open = connections_32_at_once(hook, &std::sync::Arc::new(pod_review("cache").to_string()), 100);
    std::thread::sleep(Duration::from_millis(1500)); // every thread back to waiting
    let held = anonymous_kib(pid).saturating_sub(idle);
    drop(open);
    held
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn threads_do_not_each_keep_a_cache_of_freed_blocks() {
    // glibc caches up to 7 freed blocks of every size up to 1032 bytes in each thread; the
    // hook's threads (two per connection) each free pieces of requests and answers, then wait,
    // holding them. The hook caches only blocks of at most 64 bytes. Side by side with a hook
    // given glibc's default (an operator's GLIBC_TUNABLES value, which the hook keeps), after
    // the same load. Measured (debug build): about 3.2 MiB against 4.5 MiB.
    let setup = Setup::new(Alg::EcdsaP256);
    let shipped = memory_of_32_busy_connections(&start(&setup, &[]));
    let glibc_default =
        memory_of_32_busy_connections(&start(&setup, &[("GLIBC_TUNABLES", "glibc.malloc.tcache_max=1032")]));
    assert!(
        shipped * 100 <= glibc_default * 85,
        "32 busy connections hold {shipped} KiB, {glibc_default} KiB with glibc's per-thread cache"
    );
}
