//! SIGTERM: the hook stops accepting, finishes the requests already under way, closes idle
//! keep-alive connections, and exits 0.

use std::net::TcpStream;
use std::time::Duration;

use crate::hook_common::*;
use crate::support::pki::Alg;
use crate::support::wait_for;
use serde_json::Value;

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let setup = Setup::new(Alg::EcdsaP256);
    let mut hook = start(&setup, &[]);
    let body = review(
        "inflight",
        "ns",
        "CREATE",
        deployment_pod(annotations(&[("inject", "true")])),
        false,
    )
    .to_string();

    // An idle keep-alive connection that has already been used.
    let mut idle = hook.client();
    assert_eq!(idle.post("/mutate", "application/json", body.as_bytes()).status, 200);
    // A request under way: headers and half of the body sent.
    let mut slow = hook.client();
    let head = format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.send(head.as_bytes()).unwrap();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    slow.send(first).unwrap();

    hook.proc.signal(15);
    wait_for("the hook to start draining", Duration::from_secs(30), || {
        hook.log_text()
            .contains("stopping: finishing in-flight requests")
            .then_some(())
    });
    // The idle connection is closed by the server (close_notify, then end of stream).
    let closed = idle.read_reply().expect_err("nothing but the close");
    assert!(closed.contains("closed"), "{closed}");
    // No new connections once the listener is closed.
    wait_for("the listener to close", Duration::from_secs(30), || {
        TcpStream::connect(hook.addr).is_err().then_some(())
    });
    // The request under way completes with a full answer.
    slow.send(rest).unwrap();
    let reply = slow.read_reply().expect("the in-flight request is answered");
    assert_eq!(reply.status, 200);
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["response"]["uid"], "inflight");
    assert!(v["response"]["patch"].is_string());

    let status = hook.proc.wait_timeout(Duration::from_secs(30)).expect("the hook exits");
    assert_eq!(status.code(), Some(0));
    let log = hook.log_text();
    assert!(log.contains("\"msg\":\"stopped\""), "{log}");
    assert!(log.contains("\"signal\":\"SIGTERM\""), "{log}");
}
