//! Real S3 servers on 127.0.0.1 for tests: `rclone serve s3` over a folder, and moto, an
//! independent implementation. Both are stopped when the handle is dropped.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, scrub, temp_dir, tool, wait_for_port, Proc};

/// Which implementation serves S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Rclone,
    Moto,
}

/// A running S3 server with one set of credentials.
pub struct S3Server {
    pub flavor: Flavor,
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    /// rclone only: the folder whose top-level directories are the buckets.
    pub dir: Option<tempfile::TempDir>,
    /// Held so the server stops when this is dropped.
    _proc: Proc,
}

impl S3Server {
    /// Starts `flavor` on a free loopback port with the given credentials (moto accepts any).
    pub fn start(flavor: Flavor, access_key: &str, secret_key: &str) -> S3Server {
        S3Server::start_with_env(flavor, access_key, secret_key, &[])
    }

    /// [`S3Server::start`] with extra environment variables for the server (moto's
    /// `MOTO_ENABLE_RECORDING`, for instance).
    pub fn start_with_env(flavor: Flavor, access_key: &str, secret_key: &str, env: &[(&str, &str)]) -> S3Server {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (proc, dir) = match flavor {
            Flavor::Rclone => {
                let dir = temp_dir("s3");
                let mut cmd = Command::new(tool("rclone"));
                scrub(&mut cmd);
                cmd.env("RCLONE_CONFIG", "/dev/null")
                    .envs(env.iter().copied())
                    .args(["serve", "s3", "--addr"])
                    .arg(addr.to_string())
                    .arg("--auth-key")
                    .arg(format!("{access_key},{secret_key}"))
                    .args(["--log-level", "ERROR"])
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                (Proc::spawn("rclone serve s3", cmd), Some(dir))
            }
            Flavor::Moto => {
                let mut cmd = Command::new(tool("moto_server"));
                scrub(&mut cmd);
                cmd.envs(env.iter().copied())
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                (Proc::spawn("moto_server", cmd), None)
            }
        };
        wait_for_port(addr, Duration::from_secs(30));
        S3Server {
            flavor,
            addr,
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            dir,
            _proc: proc,
        }
    }

    /// The endpoint URL, e.g. `http://127.0.0.1:39211`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket (an empty directory for rclone; a PUT for moto). Names must be 3 to 63
    /// characters: `rclone serve s3` rejects shorter ones.
    pub fn create_bucket(&self, bucket: &str) {
        match self.flavor {
            Flavor::Rclone => {
                let dir = self.dir.as_ref().unwrap().path().join(bucket);
                std::fs::create_dir_all(dir).expect("create bucket dir");
            }
            Flavor::Moto => {
                let status = self.rclone(&["mkdir", &format!("s3:{bucket}")]);
                assert!(status.success(), "creating bucket {bucket} on moto failed");
            }
        }
    }

    /// A `Command` for the real rclone with this server configured as remote `s3:`, and no
    /// config file. The caller adds the subcommand.
    pub fn rclone_command(&self) -> Command {
        let mut cmd = Command::new(tool("rclone"));
        scrub(&mut cmd);
        cmd.env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_CONFIG_S3_TYPE", "s3")
            .env("RCLONE_CONFIG_S3_PROVIDER", "Other")
            .env("RCLONE_CONFIG_S3_ENDPOINT", self.endpoint())
            .env("RCLONE_CONFIG_S3_ACCESS_KEY_ID", &self.access_key)
            .env("RCLONE_CONFIG_S3_SECRET_ACCESS_KEY", &self.secret_key)
            .env("RCLONE_CONFIG_S3_REGION", "us-east-1")
            .env("RCLONE_CONFIG_S3_FORCE_PATH_STYLE", "true");
        cmd
    }

    /// Runs `rclone ARGS` against this server (remote `s3:`) and returns its status.
    pub fn rclone(&self, args: &[&str]) -> std::process::ExitStatus {
        self.rclone_command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run rclone")
    }

    /// Runs `rclone ARGS` and returns stdout (panics on failure).
    pub fn rclone_output(&self, args: &[&str]) -> String {
        let out = self.rclone_command().args(args).output().expect("run rclone");
        assert!(
            out.status.success(),
            "rclone {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Uploads `contents` as `bucket/key`.
    pub fn put(&self, bucket: &str, key: &str, contents: &[u8]) {
        use std::io::Write;
        let mut child = self
            .rclone_command()
            .args(["rcat", &format!("s3:{bucket}/{key}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rclone rcat");
        child.stdin.take().unwrap().write_all(contents).unwrap();
        assert!(child.wait().unwrap().success(), "upload of {bucket}/{key} failed");
    }

    /// The object keys in a bucket (recursive, sorted).
    pub fn list(&self, bucket: &str) -> Vec<String> {
        let out = self.rclone_output(&["lsf", "-R", "--files-only", &format!("s3:{bucket}")]);
        let mut keys: Vec<String> = out.lines().map(str::to_string).collect();
        keys.sort();
        keys
    }

    /// The contents of `bucket/key`.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self
            .rclone_command()
            .args(["cat", &format!("s3:{bucket}/{key}")])
            .output()
            .expect("rclone cat");
        assert!(out.status.success(), "reading {bucket}/{key} failed");
        out.stdout
    }
}

/// boto3 (an independent S3 client) against `server`: the raw-key helpers below use it for
/// keys rclone would encode or cannot write (`.`/`..` segments, `//`, `dir/` markers).
fn boto3(server: &S3Server, script: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let prelude = format!(
        "import sys, boto3\ns3 = boto3.client('s3', endpoint_url={:?}, aws_access_key_id={:?}, \
         aws_secret_access_key={:?}, region_name='us-east-1')\n",
        server.endpoint(),
        server.access_key,
        server.secret_key
    );
    let mut cmd = Command::new(tool("python"));
    scrub(&mut cmd);
    let mut child = cmd
        .arg("-c")
        .arg(prelude + script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl S3Server {
    /// Uploads `contents` as exactly `key` (no rclone encoding).
    pub fn put_raw(&self, bucket: &str, key: &str, contents: &[u8]) {
        boto3(
            self,
            "s3.put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=sys.stdin.buffer.read())",
            &[bucket, key],
            contents,
        );
    }

    /// Every key in `bucket` exactly as the server lists it, sorted.
    pub fn list_raw(&self, bucket: &str) -> Vec<String> {
        let out = boto3(
            self,
            "p = s3.get_paginator('list_objects_v2')\nfor page in p.paginate(Bucket=sys.argv[1]):\n    \
             for o in page.get('Contents', []): print(o['Key'])",
            &[bucket],
            b"",
        );
        let mut keys: Vec<String> = String::from_utf8(out).unwrap().lines().map(str::to_string).collect();
        keys.sort();
        keys
    }

    /// The contents of exactly `key`.
    pub fn get_raw(&self, bucket: &str, key: &str) -> Vec<u8> {
        boto3(
            self,
            "sys.stdout.buffer.write(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())",
            &[bucket, key],
            b"",
        )
    }
}
