//! Credentials from the platform: a side without static keys signs with the Pod's
//! credentials — `AWS_ACCESS_KEY_ID`..., IRSA web identity (moto's real STS
//! AssumeRoleWithWebIdentity), container credentials (EKS Pod Identity) — and s3sync's own
//! client and rclone sign as the same identity. Where they could not agree, or there is no
//! source at all, the run is refused before any request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::s3sync_common::{contents, make_bucket, run, set, vars};
use crate::support::s3::{Flavor, S3Server};
use crate::support::write_file;

const AK: &str = "AKIALIFEBOATTEST01";
const SK: &str = "lifeboat-test-secret-0123456789";
/// The keys only the platform hands out (the destination server accepts only these).
const PLATFORM_AK: &str = "AKIAPLATFORMONLY77";
const PLATFORM_SK: &str = "platform-only-secret-9876543210";

fn without_keys(env: &mut Vec<(String, String)>, prefix: &str) {
    env.retain(|(k, _)| k != &format!("{prefix}ACCESS_KEY") && k != &format!("{prefix}SECRET_KEY"));
}

/// The requests moto recorded (`MOTO_ENABLE_RECORDING`), from line `from` on.
fn recorded(path: &std::path::Path, from: usize) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(from)
        .map(|l| serde_json::from_str(l).expect("recording line"))
        .collect()
}

fn body_text(entry: &Value) -> String {
    use std::io::Read;
    let raw = entry["body"].as_str().unwrap_or_default();
    if entry["body_encoded"] == true {
        // base64, decoded by hand (no crate for it in the tree).
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in raw.bytes().filter(|c| *c != b'=') {
            let v = table.iter().position(|t| *t == c).unwrap() as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        let mut s = String::new();
        let _ = out.as_slice().read_to_string(&mut s);
        s
    } else {
        raw.to_string()
    }
}

#[test]
fn web_identity_signs_both_clients_as_the_assumed_role() {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("moto.jsonl");
    let rec = recording.to_str().unwrap();
    let src = S3Server::start_with_env(
        Flavor::Moto,
        AK,
        SK,
        &[("MOTO_ENABLE_RECORDING", "1"), ("MOTO_RECORDER_FILEPATH", rec)],
    );
    let dst = S3Server::start(Flavor::Rclone, AK, SK);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    src.put("src", "a.txt", b"alpha");
    src.put("src", "dir/b.bin", &vec![3u8; 50_000]);
    let seeded = recorded(&recording, 0).len();

    let token = "eyJhbGciOiJSUzI1NiJ9.lifeboat-projected-token.c2lnbmF0dXJl";
    let token_file = write_file(dir.path(), "token", token);
    let mut env = vars(&src, "src", &dst, "dst");
    without_keys(&mut env, "SOURCE_");
    set(&mut env, "AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap());
    set(&mut env, "AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/lifeboat-sync");
    set(&mut env, "AWS_ROLE_SESSION_NAME", "lifeboat-test");
    set(&mut env, "AWS_ENDPOINT_URL_STS", &src.endpoint());
    let r = run(&env);
    // The run's requests only (the checks below read with the static test keys).
    let requests = recorded(&recording, seeded);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["verified"], true, "{}", r.stderr);
    assert_eq!(contents(&dst, "dst"), contents(&src, "src"));
    assert!(!r.stderr.contains(token) && !r.stdout.contains(token), "{}", r.stderr);

    let ua = |e: &Value| e["headers"]["User-Agent"].as_str().unwrap_or_default().to_string();
    let (sts, s3): (Vec<&Value>, Vec<&Value>) = requests
        .iter()
        .partition(|e| body_text(e).contains("Action=AssumeRoleWithWebIdentity"));
    // One exchange by each client, both for the configured role and session, with the token.
    for who in ["s3sync/", "aws-sdk-go"] {
        let mine: Vec<_> = sts.iter().filter(|e| ua(e).contains(who)).collect();
        assert!(!mine.is_empty(), "no STS call by {who}: {sts:?}");
        for e in mine {
            let body = body_text(e);
            assert!(
                body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Flifeboat-sync")
                    && body.contains("RoleSessionName=lifeboat-test"),
                "{body}"
            );
            assert!(
                body.contains("WebIdentityToken=eyJhbGciOiJSUzI1NiJ9.lifeboat-projected-token"),
                "{body}"
            );
        }
    }
    // Every S3 request of both clients is signed with temporary keys (moto issues ASIA...)
    // and carries the session token; none with the static test keys.
    let mut by = std::collections::BTreeSet::new();
    for e in &s3 {
        let auth = e["headers"]["Authorization"].as_str().unwrap_or_default();
        assert!(auth.contains("Credential=ASIA"), "{} {}: {auth}", e["method"], e["url"]);
        assert!(e["headers"]["X-Amz-Security-Token"].is_string(), "{e}");
        by.insert(if ua(e).starts_with("s3sync/") {
            "s3sync"
        } else {
            "rclone"
        });
    }
    assert_eq!(by.into_iter().collect::<Vec<_>>(), ["rclone", "s3sync"], "{s3:?}");
}

/// A stand-in for the EKS Pod Identity agent (a tiny HTTP server on 127.0.0.1): it answers
/// `GET /v1/credentials` with the keys when the `Authorization` header is the token, else
/// 401, and counts the fetches of each client. It does not do what the agent does beyond
/// that: no IAM, no rotation of its own, no 169.254.170.23 address, no association lookup.
struct PodIdentityAgent {
    url: String,
    fetches: Arc<Mutex<Vec<String>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl PodIdentityAgent {
    fn start(token: &'static str, lifetime: Duration) -> PodIdentityAgent {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/credentials", server.server_addr().to_ip().unwrap());
        let fetches = Arc::new(Mutex::new(Vec::new()));
        let seen = fetches.clone();
        let served = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn(move || {
            // Bounded: the test's runs make a handful of fetches.
            while served.fetch_add(1, Ordering::SeqCst) < 200 {
                let Ok(Some(req)) = server.recv_timeout(Duration::from_secs(150)) else {
                    return;
                };
                let header = |name: &'static str| {
                    req.headers()
                        .iter()
                        .find(|h| h.field.equiv(name))
                        .map(|h| h.value.as_str().to_string())
                        .unwrap_or_default()
                };
                seen.lock().unwrap().push(header("User-Agent"));
                if header("Authorization") != token {
                    let _ = req.respond(
                        tiny_http::Response::from_string(r#"{"code":"AccessDeniedException","message":"bad token"}"#)
                            .with_status_code(401),
                    );
                    continue;
                }
                let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + lifetime;
                let body = serde_json::json!({
                    "AccessKeyId": PLATFORM_AK,
                    "SecretAccessKey": PLATFORM_SK,
                    "Token": "pod-identity-session-token",
                    "AccountId": "123456789012",
                    "Expiration": rfc3339(expires.as_secs()),
                });
                let _ = req.respond(tiny_http::Response::from_string(body.to_string()));
            }
        });
        PodIdentityAgent {
            url,
            fetches,
            _thread: thread,
        }
    }

    /// Fetches by s3sync (its user agent), and by anyone else (rclone).
    fn fetches(&self) -> (usize, usize) {
        let all = self.fetches.lock().unwrap();
        let ours = all.iter().filter(|ua| ua.starts_with("s3sync/")).count();
        (ours, all.len() - ours)
    }
}

/// `secs` as RFC 3339 UTC, by coreutils' `date` (not by lifeboat's own date code, which the
/// expiry under test is read with).
fn rfc3339(secs: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    assert!(out.status.success(), "date: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn container_credentials_sign_both_clients_and_are_renewed_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let src = S3Server::start(Flavor::Rclone, AK, SK);
    // The destination accepts only the keys the agent hands out: a request signed with
    // anything else fails, so success shows both clients used them.
    let dst = S3Server::start(Flavor::Rclone, PLATFORM_AK, PLATFORM_SK);
    make_bucket(&src, "src");
    dst.create_bucket("dst");
    src.put("src", "a.txt", b"alpha");
    src.put("src", "b.txt", b"bravo");
    // Credentials that expire within the refresh window: fetched again before each use.
    let agent = PodIdentityAgent::start("pod-identity-token-123", Duration::from_secs(120));
    let token_file = write_file(dir.path(), "eks-pod-identity-token", "pod-identity-token-123");
    let mut env = vars(&src, "src", &dst, "dst");
    without_keys(&mut env, "DEST_");
    set(&mut env, "AWS_CONTAINER_CREDENTIALS_FULL_URI", &agent.url);
    set(
        &mut env,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        token_file.to_str().unwrap(),
    );
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["verified"], true);
    assert_eq!(contents(&dst, "dst"), contents(&src, "src"));
    let (ours, rclone) = agent.fetches();
    assert!(rclone >= 1, "rclone did not fetch: {:?}", agent.fetches.lock().unwrap());
    // Pre-flight and verification each signed with freshly fetched keys.
    assert!(ours >= 2, "s3sync fetched {ours} times");
    for secret in [PLATFORM_SK, "pod-identity-token-123", "pod-identity-session-token"] {
        assert!(!r.stderr.contains(secret), "{}", r.stderr);
    }

    // Long-lived credentials are fetched once for the whole run.
    let agent = PodIdentityAgent::start("pod-identity-token-123", Duration::from_secs(6 * 3600));
    set(&mut env, "AWS_CONTAINER_CREDENTIALS_FULL_URI", &agent.url);
    src.put("src", "c.txt", b"charlie");
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(agent.fetches().0, 1);

    // A wrong token: the run fails as a credentials problem, naming neither token nor keys.
    std::fs::write(&token_file, "stale-token-456").unwrap();
    let r = run(&env);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.lines
            .iter()
            .any(|l| l["kind"] == "credentials" && l["msg"].as_str().unwrap().contains("(container)")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    assert!(!r.stderr.contains("stale-token-456"), "{}", r.stderr);
}

#[test]
fn environment_keys_are_used_when_a_side_has_none() {
    let src = S3Server::start(Flavor::Rclone, AK, SK);
    let dst = S3Server::start(Flavor::Rclone, PLATFORM_AK, PLATFORM_SK);
    make_bucket(&src, "src");
    dst.create_bucket("dst");
    src.put("src", "a.txt", b"alpha");
    let mut env = vars(&src, "src", &dst, "dst");
    without_keys(&mut env, "DEST_");
    set(&mut env, "AWS_ACCESS_KEY_ID", PLATFORM_AK);
    set(&mut env, "AWS_SECRET_ACCESS_KEY", PLATFORM_SK);
    let r = run(&env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["verified"], true);
    assert_eq!(contents(&dst, "dst"), contents(&src, "src"));
    assert!(!r.stderr.contains(PLATFORM_SK));
}

#[test]
fn no_source_or_a_source_rclone_would_read_differently_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(dir.path(), "token", "t0ken");
    let token = token_file.to_str().unwrap();
    let base = || {
        let env: Vec<(String, String)> = [
            ("SOURCE_S3_ENDPOINT", "http://127.0.0.1:1"),
            ("SOURCE_BUCKET", "src"),
            ("DEST_S3_ENDPOINT", "http://127.0.0.1:2"),
            ("DEST_ACCESS_KEY", AK),
            ("DEST_SECRET_KEY", SK),
            ("DEST_BUCKET", "dst"),
            ("DEST_PREFIX", "/"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env
    };
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[], "SOURCE_ACCESS_KEY"),
        (&[("SOURCE_ACCESS_KEY", AK)], "SOURCE_SECRET_KEY"),
        (&[("AWS_ACCESS_KEY_ID", AK)], "AWS_SECRET_ACCESS_KEY"),
        (
            &[("AWS_WEB_IDENTITY_TOKEN_FILE", token), ("AWS_REGION", "eu-west-1")],
            "AWS_ROLE_ARN",
        ),
        // rclone's STS client has no region from the bucket's REGION: it would fail.
        (
            &[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", token),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ],
            "AWS_REGION",
        ),
        (&[("AWS_PROFILE", "prod")], "AWS_PROFILE"),
    ];
    for (extra, var) in cases {
        let mut env = base();
        for (k, v) in extra {
            set(&mut env, k, v);
        }
        let r = run(&env);
        assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
        assert_eq!(r.summary()["outcome"], "config_error", "{extra:?}");
        let problems = r
            .lines
            .iter()
            .find_map(|l| l["problems"].as_array().cloned())
            .unwrap_or_default();
        assert!(
            problems.iter().any(|p| p.as_str().is_some_and(|p| p.starts_with(var))),
            "{extra:?}: expected a problem with {var}: {problems:?}"
        );
        assert!(!r.stderr.contains("t0ken") && !r.stderr.contains(SK), "{}", r.stderr);
    }
}
