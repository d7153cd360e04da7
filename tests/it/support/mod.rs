//! Helpers shared by the integration tests: where the real tools are, free loopback ports,
//! child processes that are stopped when a test ends, bounded waiting, and test PKI.
//!
//! Each test file includes this with `mod support;` and uses what it needs.

pub mod pki;
pub mod s3;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder `tests/tools.sh` links the real programs into.
pub fn tools_bin() -> PathBuf {
    let dir = std::env::var_os("LIFEBOAT_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin"));
    assert!(
        dir.join("rclone").exists(),
        "real tools missing in {}: run `bash tests/tools.sh` (tests/run does)",
        dir.display()
    );
    dir
}

/// The path of one real program (rclone, litestream, etcd, etcdctl, etcdutl, moto_server, python).
pub fn tool(name: &str) -> PathBuf {
    tools_bin().join(name)
}

/// Removes AWS_*, RCLONE_* and LITESTREAM_* variables inherited from the machine.
pub fn scrub(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("AWS_") || k.starts_with("RCLONE_") || k.starts_with("LITESTREAM_") {
            cmd.env_remove(&key);
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Calls `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    wait_for(&format!("{addr} to accept connections"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    });
}

/// A child process that is terminated (SIGTERM, then SIGKILL after 5 s) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Spawns `cmd` with stdin closed; stdout/stderr as the command was set up.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by number (15 = SIGTERM, 9 = SIGKILL, 19 = SIGSTOP, 18 = SIGCONT).
    pub fn signal(&self, signal: i32) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status, then SIGKILLs.
    pub fn stop(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        self.signal(15);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("lifeboat-{prefix}-"))
        .tempdir()
        .expect("create temp dir")
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}
