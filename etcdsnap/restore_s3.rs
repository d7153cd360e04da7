//! `etcdsnap restore --from-s3 s3://BUCKET/KEY`: back from the S3 copy of a snapshot when the
//! cluster (and with it the snapshot PVC and the records) is gone. Run where `etcdutl` is, or
//! without `--data-dir` as the fetch step before it (e.g. an init container in etcdsnap's image
//! writing to a volume the etcd image's `etcdutl snapshot restore` then reads).
//!
//! 1. HEAD the object: its size and the SHA-256 the export stored (`x-amz-meta-sha256`). The
//!    expected hash is `--sha256` (from the record's `export.sha256`) or that metadata; both
//!    given must agree, neither is an error.
//! 2. GET it to `<output>.partial` (bounded by the size HEAD gave), hashing on the way; a
//!    mismatch removes the partial file and stops: nothing is restored.
//!    A gzip copy (`x-amz-meta-compression: gzip`) is decompressed on the way into the partial
//!    file, never past its `x-amz-meta-size` (the snapshot's size): a stream that would write
//!    more, is damaged, or decompresses to other bytes than the SHA-256 names is refused the
//!    same way. The hash checked is the one of the snapshot itself, decompressed.
//! 3. Rename to `--output`; with `--data-dir`, run `etcdutl snapshot restore` into it (which
//!    checks etcd's own hash appended to the file too).
//!
//! Keys from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (`AWS_SESSION_TOKEN`), never argv.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::export::{self, Target};
use crate::gzip;

/// The largest object fetched (etcd's own database limit is 8 GiB).
const MAX_BYTES: u64 = 64 << 30;

const USAGE: &str = "usage: etcdsnap restore --from-s3 s3://BUCKET/KEY --endpoint URL --output FILE
                        [--region us-east-1] [--path-style true] [--sha256 HEX]
                        [--data-dir DIR --name MEMBER --initial-cluster NAME=URL,...
                         --initial-advertise-peer-urls URL [--initial-cluster-token TOKEN]
                         [--etcdutl etcdutl]]

Fetches the S3 copy of a snapshot to FILE and checks its SHA-256 (--sha256, else the copy's
x-amz-meta-sha256) before anything else; with --data-dir, then runs etcdutl snapshot restore.
A gzip copy (x-amz-meta-compression: gzip) is decompressed on the way, at most its
x-amz-meta-size bytes, and the SHA-256 checked is that of the decompressed snapshot.
Keys from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN).";

#[derive(Debug)]
struct Args {
    target: Target,
    key: String,
    output: PathBuf,
    sha256: Option<String>,
    restore: Option<Restore>,
}

#[derive(Debug)]
struct Restore {
    data_dir: PathBuf,
    name: String,
    initial_cluster: String,
    peer_urls: String,
    token: String,
    etcdutl: String,
}

fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let known = [
        "from-s3",
        "endpoint",
        "output",
        "region",
        "path-style",
        "sha256",
        "data-dir",
        "name",
        "initial-cluster",
        "initial-advertise-peer-urls",
        "initial-cluster-token",
        "etcdutl",
    ];
    let Some(mut m) = export::flags(args, &known)? else {
        return Ok(None);
    };
    let mut need = |k: &str| {
        m.remove(k)
            .filter(|v| !v.is_empty())
            .ok_or(format!("--{k} is required"))
    };
    let url = need("from-s3")?;
    let (bucket, key) = url
        .strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or(format!("--from-s3 must be s3://BUCKET/KEY, got {url:?}"))?;
    let endpoint = need("endpoint")?;
    let output = PathBuf::from(need("output")?);
    let sha256 = m.remove("sha256").map(|s| s.to_ascii_lowercase());
    if let Some(s) = &sha256 {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("--sha256 must be 64 hex digits".into());
        }
    }
    let path_style = match m.remove("path-style").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => return Err(format!("--path-style must be true or false, got {v:?}")),
    };
    let restore = match m.remove("data-dir") {
        None => {
            if let Some(k) = ["name", "initial-cluster", "initial-advertise-peer-urls"]
                .iter()
                .find(|k| m.contains_key(**k))
            {
                return Err(format!("--{k} needs --data-dir"));
            }
            None
        }
        Some(d) => {
            let name = m.remove("name").ok_or("--data-dir needs --name")?;
            let initial_cluster = m
                .remove("initial-cluster")
                .ok_or("--data-dir needs --initial-cluster")?;
            if !initial_cluster.contains(&format!("{name}=")) {
                return Err(format!("--initial-cluster does not list the member --name {name:?}"));
            }
            Some(Restore {
                data_dir: PathBuf::from(d),
                name,
                initial_cluster,
                peer_urls: m
                    .remove("initial-advertise-peer-urls")
                    .ok_or("--data-dir needs --initial-advertise-peer-urls")?,
                token: m
                    .remove("initial-cluster-token")
                    .unwrap_or_else(|| "etcd-cluster".into()),
                etcdutl: m.remove("etcdutl").unwrap_or_else(|| "etcdutl".into()),
            })
        }
    };
    Ok(Some(Args {
        target: Target {
            endpoint,
            bucket: bucket.to_string(),
            region: m.remove("region").unwrap_or_else(|| "us-east-1".into()),
            path_style,
        },
        key: key.to_string(),
        output,
        sha256,
        restore,
    }))
}

/// Whether `argv` asks for this mode.
pub fn wanted(argv: &[String]) -> bool {
    argv.iter().any(|a| a == "--from-s3" || a.starts_with("--from-s3="))
}

pub fn main(argv: &[String]) -> i32 {
    let args = match lifeboat::cli::parsed("etcdsnap restore", USAGE, parse_args(argv)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let url = args.target.url(&args.key);
    match run(&args) {
        Ok(sha) => {
            println!("fetched {url} to {} (SHA-256 {sha} checked)", args.output.display());
            if let Some(r) = &args.restore {
                println!("restored member {} into {}", r.name, r.data_dir.display());
            }
            0
        }
        Err(e) => {
            log::error!(url = url.as_str(), error = e.as_str(); "restore from S3 failed");
            1
        }
    }
}

fn run(a: &Args) -> Result<String, String> {
    let url = a.target.url(&a.key);
    if a.output.exists() {
        return Err(format!("{} exists already; not overwritten", a.output.display()));
    }
    if let Some(r) = &a.restore {
        if r.data_dir.exists() {
            return Err(format!(
                "--data-dir {} exists already; etcdutl needs a new one",
                r.data_dir.display()
            ));
        }
    }
    let client = export::client(&a.target, export::credentials_from_env()?);
    let head = client
        .head_object(&a.key)
        .map_err(|e| format!("{url}: {e}"))?
        .ok_or(format!("{url}: no such object"))?;
    let stored = head.meta(export::META_SHA256).map(str::to_ascii_lowercase);
    let want = match (&a.sha256, &stored) {
        (Some(w), Some(s)) if w != s => {
            return Err(format!(
                "{url}: --sha256 {w} differs from the copy's x-amz-meta-sha256 {s}; nothing restored"
            ))
        }
        (Some(w), _) => w.clone(),
        (None, Some(s)) => s.clone(),
        (None, None) => {
            return Err(format!(
                "{url} has no x-amz-meta-sha256: pass --sha256 (the record's export.sha256); nothing restored"
            ))
        }
    };
    if head.size > MAX_BYTES {
        return Err(format!("{url} has {} bytes, more than {MAX_BYTES}", head.size));
    }
    let partial = partial_path(&a.output);
    let _ = std::fs::remove_file(&partial);
    let fetched = match head.meta(gzip::META_COMPRESSION) {
        None | Some("none") => client
            .get_to_file(&a.key, &partial, head.size)
            .map(|f| (f.sha256, f.size, head.size))
            .map_err(|e| format!("{url}: {e}")),
        Some("gzip") => fetch_gzip(&client, &url, &a.key, &head, &partial),
        Some(other) => Err(format!(
            "{url} has x-amz-meta-{} {other:?}, which this etcdsnap cannot read; nothing restored",
            gzip::META_COMPRESSION
        )),
    };
    let (sha256, size, want_size) = match fetched {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if sha256 != want || size != want_size {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "{url} is damaged: its SHA-256 is {sha256} ({size} bytes), the snapshot's {want} ({want_size} bytes); nothing restored"
        ));
    }
    std::fs::rename(&partial, &a.output).map_err(|e| format!("renaming to {}: {e}", a.output.display()))?;
    if let Some(r) = &a.restore {
        etcdutl_restore(r, &a.output)?;
    }
    Ok(want)
}

/// GETs a gzip copy through the bounded decompressor into `partial`: the SHA-256 and size of
/// what came out, and the size `x-amz-meta-size` records.
fn fetch_gzip(
    client: &lifeboat::s3::Client,
    url: &str,
    key: &str,
    head: &lifeboat::s3::object::Head,
    partial: &Path,
) -> Result<(String, u64, u64), String> {
    let size = head
        .meta(gzip::META_SIZE)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or(format!(
            "{url} is gzipped but has no valid x-amz-meta-{} (its size uncompressed); nothing restored",
            gzip::META_SIZE
        ))?;
    if size > MAX_BYTES {
        return Err(format!(
            "{url} records {size} bytes uncompressed, more than {MAX_BYTES}"
        ));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let mut sink = gzip::Gunzip::new(Some(file), size).map_err(|e| format!("writing {}: {e}", partial.display()))?;
    let damaged = |why: &str| {
        format!(
            "{url} is damaged: {why} (x-amz-meta-{} {size}); nothing restored",
            gzip::META_SIZE
        )
    };
    if let Err(e) = client.get_streamed(key, head.size, &mut sink) {
        return Err(match &sink.failure {
            Some(why) => damaged(why),
            None => format!("{url}: {e}"),
        });
    }
    let got = sink.finish().map_err(|why| damaged(&why))?;
    Ok((got.sha256, got.size, size))
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

fn etcdutl_restore(r: &Restore, file: &Path) -> Result<(), String> {
    let out = Command::new(&r.etcdutl)
        .arg("snapshot")
        .arg("restore")
        .arg(file)
        .arg(format!("--data-dir={}", r.data_dir.display()))
        .arg(format!("--name={}", r.name))
        .arg(format!("--initial-cluster={}", r.initial_cluster))
        .arg(format!("--initial-cluster-token={}", r.token))
        .arg(format!("--initial-advertise-peer-urls={}", r.peer_urls))
        .output()
        .map_err(|e| format!("running {}: {e}", r.etcdutl))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "etcdutl snapshot restore failed ({}): {}",
            out.status,
            crate::status::truncate(text.trim(), 1000)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = parse_args(&a(&[
            "--from-s3=s3://b/etcd/main/s-1.db",
            "--endpoint=http://x",
            "--output=/o",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((p.target.bucket.as_str(), p.key.as_str()), ("b", "etcd/main/s-1.db"));
        assert!(p.restore.is_none());
        let err = |v: &[&str]| parse_args(&a(v)).unwrap_err();
        assert!(err(&["--from-s3=b/k", "--endpoint=http://x", "--output=/o"]).contains("s3://BUCKET/KEY"));
        assert!(err(&[
            "--from-s3=s3://b/k",
            "--endpoint=http://x",
            "--output=/o",
            "--sha256=zz"
        ])
        .contains("64 hex"));
        assert!(
            err(&["--from-s3=s3://b/k", "--endpoint=http://x", "--output=/o", "--name=m"]).contains("needs --data-dir")
        );
        assert!(err(&[
            "--from-s3=s3://b/k",
            "--endpoint=http://x",
            "--output=/o",
            "--data-dir=/d",
            "--name=m0",
            "--initial-cluster=m1=http://p"
        ])
        .contains("does not list"));
        assert!(wanted(&a(&["--from-s3", "s3://b/k"])));
        assert!(!wanted(&a(&["--snapshot-id", "s-1"])));
        assert_eq!(
            partial_path(Path::new("/r/snapshot.db")),
            PathBuf::from("/r/snapshot.db.partial")
        );
    }
}
