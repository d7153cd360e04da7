//! Server-side copy: when both sides are one service signed by one identity, rclone copies
//! with CopyObject (`--server-side-across-configs`) instead of through s3sync's Pod; the copy
//! is checked by the verification like any other. Other pairs copy client-side.

use crate::s3sync_common::{contents, make_bucket, run, set, vars, Run};
use crate::support::s3::{Flavor, S3Server};

const AK: &str = "AKIALIFEBOATTEST01";
const SK: &str = "lifeboat-test-secret-0123456789";

/// Whether the run asked rclone for server-side copies.
fn asked_server_side(r: &Run) -> bool {
    let line = r
        .lines
        .iter()
        .find(|l| l["msg"] == "running rclone sync")
        .unwrap_or_else(|| panic!("no rclone sync: {}", r.stderr));
    line["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--server-side-across-configs")
}

#[test]
fn one_service_and_identity_copies_server_side_and_verifies() {
    for flavor in [Flavor::Rclone, Flavor::Moto] {
        let s3 = S3Server::start(flavor, AK, SK);
        make_bucket(&s3, "src");
        make_bucket(&s3, "dst");
        s3.put("src", "a.txt", b"alpha");
        s3.put("src", "dir/b.bin", &vec![9u8; 200_000]);
        let mut env = vars(&s3, "src", &s3, "dst");
        // Another spelling of the same server: still one service.
        set(
            &mut env,
            "DEST_S3_ENDPOINT",
            &format!("http://localhost:{}/", s3.addr.port()),
        );
        let r = run(&env);
        assert_eq!(r.code, 0, "{flavor:?}: {}", r.stderr);
        assert!(asked_server_side(&r), "{flavor:?}: {}", r.stderr);
        // rclone's own per-object lines say how each object was copied.
        assert!(r.stderr.contains("server-side copy"), "{flavor:?}: {}", r.stderr);
        assert_eq!(r.summary()["verified"], true);
        assert_eq!(r.summary()["transfers"], 2);
        assert_eq!(contents(&s3, "dst"), contents(&s3, "src"));

        // Switched off: through the Pod.
        s3.put("src", "c.txt", b"charlie");
        set(&mut env, "SERVER_SIDE_COPY", "false");
        let r = run(&env);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            !asked_server_side(&r) && !r.stderr.contains("server-side copy"),
            "{}",
            r.stderr
        );
        assert_eq!(contents(&s3, "dst"), contents(&s3, "src"));
    }
}

#[test]
fn different_services_or_identities_copy_client_side() {
    // Two servers with the same keys.
    let a = S3Server::start(Flavor::Rclone, AK, SK);
    let b = S3Server::start(Flavor::Rclone, AK, SK);
    make_bucket(&a, "src");
    make_bucket(&b, "dst");
    a.put("src", "a.txt", b"alpha");
    let r = run(&vars(&a, "src", &b, "dst"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!asked_server_side(&r), "{}", r.stderr);
    assert_eq!(contents(&b, "dst"), contents(&a, "src"));

    // One server, but the destination signs as another identity (here: the same keys in
    // another region, which a server that checks regions would refuse for CopyObject).
    make_bucket(&a, "dst2");
    let mut env = vars(&a, "src", &a, "dst2");
    set(&mut env, "DEST_REGION", "eu-west-1");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!asked_server_side(&r), "{}", r.stderr);
}
