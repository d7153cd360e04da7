//! What the s3sync integration tests share: running the real s3sync binary against real S3
//! servers with a clean environment, bounded in time, and checking its log lines.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::support::pki::Files;
use crate::support::s3::{Flavor, S3Server};
use crate::support::{free_port, scrub, tool, wait_for_port, Proc};

/// How long any single s3sync run in a test may take before it is killed and the test fails.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A `Command` for s3sync with an empty environment except PATH and the given variables.
/// `S3SYNC_UNDER_TEST` replaces the binary (to show that a test fails on an older build).
pub fn command(vars: &[(String, String)]) -> Command {
    let bin = std::env::var_os("S3SYNC_UNDER_TEST").unwrap_or_else(|| env!("CARGO_BIN_EXE_s3sync").into());
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.env("RCLONE_BINARY", tool("rclone"));
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// The nine required variables for syncing `src_bucket` on `src` into `dst_bucket` on `dst`.
pub fn vars(src: &S3Server, src_bucket: &str, dst: &S3Server, dst_bucket: &str) -> Vec<(String, String)> {
    [
        ("SOURCE_S3_ENDPOINT", src.endpoint()),
        ("SOURCE_ACCESS_KEY", src.access_key.clone()),
        ("SOURCE_SECRET_KEY", src.secret_key.clone()),
        ("SOURCE_BUCKET", src_bucket.to_string()),
        ("DEST_S3_ENDPOINT", dst.endpoint()),
        ("DEST_ACCESS_KEY", dst.access_key.clone()),
        ("DEST_SECRET_KEY", dst.secret_key.clone()),
        ("DEST_BUCKET", dst_bucket.to_string()),
        // Required (no default, unlike the Go original's SOURCE_BUCKET): `/` is the whole bucket.
        ("DEST_PREFIX", "/".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Sets (or replaces) `key` in `vars`.
pub fn set(vars: &mut Vec<(String, String)>, key: &str, value: &str) {
    vars.retain(|(k, _)| k != key);
    vars.push((key.to_string(), value.to_string()));
}

/// A finished s3sync run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Every stderr line, parsed (each is checked to be a JSON object with time/level/msg).
    pub lines: Vec<Value>,
}

impl Run {
    /// The final summary line (the last line, which must have `outcome` and `exit_code`).
    pub fn summary(&self) -> &Value {
        let last = self
            .lines
            .last()
            .unwrap_or_else(|| panic!("no log lines; stdout: {}", self.stdout));
        assert!(
            last.get("outcome").is_some() && last.get("exit_code").is_some(),
            "last line is not the summary: {last}\n{}",
            self.stderr
        );
        assert_eq!(
            last["exit_code"], self.code,
            "summary exit_code differs from the exit code"
        );
        last
    }

    /// Whether any line's `msg` contains `text`.
    pub fn has_msg(&self, text: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l["msg"].as_str().is_some_and(|m| m.contains(text)))
    }
}

/// A running s3sync whose output is collected.
pub struct Running {
    pub proc: Proc,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
    /// stderr as read so far (for waiting on a line).
    pub seen: Arc<Mutex<String>>,
}

pub fn spawn(cmd: Command) -> Running {
    let mut cmd = cmd;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut proc = Proc::spawn("s3sync", cmd);
    let mut out = proc.child.stdout.take().unwrap();
    let mut err = proc.child.stderr.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let stderr = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            seen.lock().unwrap().clone()
        })
    };
    Running {
        proc,
        stdout,
        stderr,
        seen,
    }
}

impl Running {
    /// Waits (bounded by RUN_LIMIT) for the exit, then checks every log line.
    pub fn finish(mut self) -> Run {
        let status = self.proc.wait_timeout(RUN_LIMIT);
        let status = status.unwrap_or_else(|| {
            self.proc.stop(Duration::from_secs(5));
            panic!(
                "s3sync did not finish within {RUN_LIMIT:?}; log so far:\n{}",
                self.seen.lock().unwrap()
            )
        });
        let stdout = self.stdout.join().unwrap();
        let stderr = self.stderr.join().unwrap();
        let lines = parse_log(&stderr);
        Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
            lines,
        }
    }
}

/// Runs s3sync with `vars` to completion.
pub fn run(vars: &[(String, String)]) -> Run {
    spawn(command(vars)).finish()
}

/// Parses every stderr line as a JSON object with string `time`, `level` and `msg`.
pub fn parse_log(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            for key in ["time", "level", "msg"] {
                assert!(v[key].is_string(), "log line without string {key}: {line}");
            }
            assert!(
                ["error", "warn", "info", "debug", "trace"].contains(&v["level"].as_str().unwrap()),
                "unknown level: {line}"
            );
            v
        })
        .collect()
}

/// Creates an empty bucket through the S3 API (works the same on both server flavours).
pub fn make_bucket(s3: &S3Server, bucket: &str) {
    assert!(
        s3.rclone(&["mkdir", &format!("s3:{bucket}")]).success(),
        "mkdir {bucket}"
    );
}

/// Deletes one object through the S3 API.
pub fn delete(s3: &S3Server, bucket: &str, key: &str) {
    assert!(
        s3.rclone(&["deletefile", &format!("s3:{bucket}/{key}")]).success(),
        "delete {bucket}/{key}"
    );
}

/// Every `key -> contents` in a bucket.
pub fn contents(s3: &S3Server, bucket: &str) -> Vec<(String, Vec<u8>)> {
    s3.list(bucket)
        .into_iter()
        .map(|k| (k.clone(), s3.get(bucket, &k)))
        .collect()
}

/// `rclone serve s3` over TLS with `files`' certificate, serving the folders of `data` as
/// buckets, on 127.0.0.1; `auth` is `Some("KEY,SECRET")`, or `None` to take any request
/// unsigned (then it stores each PUT body as a file, which the Pushgateway tests read).
/// Returns the server and its port, once it accepts connections.
pub fn rclone_s3_over_tls(files: &Files, data: &std::path::Path, auth: Option<&str>) -> (Proc, u16) {
    let port = free_port();
    let mut serve = Command::new(tool("rclone"));
    scrub(&mut serve);
    serve
        .env("RCLONE_CONFIG", "/dev/null")
        .args(["serve", "s3", "--addr", &format!("127.0.0.1:{port}")]);
    if let Some(auth) = auth {
        serve.arg("--auth-key").arg(auth);
    }
    serve
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .args(["--log-level", "ERROR"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Proc::spawn("rclone serve s3 (TLS)", serve);
    wait_for_port(format!("127.0.0.1:{port}").parse().unwrap(), Duration::from_secs(30));
    (server, port)
}

/// Two `rclone serve s3` servers with the keys `ak`/`sk`, one with the bucket `src`, one `dst`.
pub fn rclone_pair(ak: &str, sk: &str) -> (S3Server, S3Server) {
    let src = S3Server::start(Flavor::Rclone, ak, sk);
    let dst = S3Server::start(Flavor::Rclone, ak, sk);
    make_bucket(&src, "src");
    make_bucket(&dst, "dst");
    (src, dst)
}

/// The PIDs of the direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else {
        return Vec::new();
    };
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// The command line of `pid`, arguments joined by spaces (empty when it is gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
