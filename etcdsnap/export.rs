//! The copy of a verified snapshot in S3-compatible object storage, so it survives the loss of
//! the cluster: `etcdsnap export` (the last container of the snapshot Job, etcdsnap's own
//! image, argv only), what it reports, and the client the driver and `etcdsnap restore` use.
//!
//! `etcdsnap export --file F --endpoint URL --bucket B --key K [--region R] [--path-style
//! true|false] [--part-size BYTES] [--compression none|gzip]` with the keys in `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), which the Job takes from the Secret the
//! class names (by reference: the driver never reads them into an object it writes):
//! 1. hashes the file (SHA-256);
//! 2. uploads it, one PUT or a multipart upload in bounded parts, each body's SHA-256 signed,
//!    with the hash as metadata `x-amz-meta-sha256`;
//! 3. checks what the server stored: HEAD (size and metadata) always; then, where a probe showed
//!    the server refuses a body whose `Content-MD5` does not match (`BadDigest`), the bodies it
//!    accepted are the bytes hashed here (check `content-md5`, as `rclone copyto` relies on);
//!    otherwise every byte is read back with a GET and hashed (check `read-back`);
//! 4. prints one line `{"etcdsnapExport":{...}}` and exits 0 only when all of it matches. On
//!    a mismatch it deletes the object it wrote, so a bad copy never looks like a good one.
//!
//! With `--compression gzip` the file is gzipped while it is uploaded (no temporary file, a few
//! parts in memory; see `gzip` for what the copy says about itself): step 2 streams the
//! compressor's output (hashing the file again on the way: it must not have changed), and step
//! 3 reads the copy back through a bounded decompressor and compares the SHA-256 of what comes
//! out, where the server does not prove it verifies `Content-MD5`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat::s3::download::Discard;
use lifeboat::s3::multipart::Uploaded;
use lifeboat::s3::trust::Trust;
use lifeboat::s3::{Client, Credentials, Location};
use lifeboat::secret::Secret;
use serde::{Deserialize, Serialize};

use crate::gzip::{self, Compression};

/// The marker of the result line in the export container's log.
pub const RESULT_KEY: &str = "etcdsnapExport";
/// The metadata key holding the snapshot's SHA-256 (sent as `x-amz-meta-sha256`).
pub const META_SHA256: &str = "sha256";
pub const ENV_ACCESS_KEY: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const ENV_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One request (a part of at most the part size) from connect to the last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const ATTEMPTS: u32 = 4;

const USAGE: &str = "usage: etcdsnap export --file FILE --endpoint URL --bucket BUCKET --key KEY
                       [--region us-east-1] [--path-style true] [--part-size 16777216]
                       [--compression none|gzip]

Uploads FILE to s3://BUCKET/KEY, reads it back and checks its SHA-256; keys from
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN). Prints one JSON line.
--compression gzip: FILE is gzipped on the way (KEY should end in .gz); the metadata keeps
the SHA-256 and size of FILE itself.";

/// Where copies go (from the class parameters, kept in the record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
}

impl Target {
    pub fn location(&self) -> Location {
        Location {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
        }
    }

    /// `s3://bucket/key` for messages.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// A client for `target` with these keys.
pub fn client(target: &Target, credentials: Credentials) -> Client {
    Client::new(
        &target.location(),
        credentials,
        &Trust::load(),
        CONNECT_TIMEOUT,
        REQUEST_TIMEOUT,
        ATTEMPTS,
        concat!("etcdsnap/", env!("CARGO_PKG_VERSION")),
    )
}

/// What the export container reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    pub key: String,
    pub size: u64,
    /// Hex SHA-256 of the file, equal to that of the object read back.
    pub sha256: String,
    /// 0 for a single PUT.
    pub parts: u32,
    /// How the copy was checked; a result without it (an older image) was read back.
    #[serde(default)]
    pub check: Check,
    /// How the copy is stored; `size` and `sha256` are always the snapshot's.
    #[serde(default)]
    pub compression: Compression,
    /// Bytes of the object in S3 (with gzip, compressed).
    #[serde(default)]
    pub stored_size: Option<u64>,
}

/// How the export checked what the server stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// The server verified each body's `Content-MD5` on receipt (a probe proved it checks).
    #[serde(rename = "content-md5")]
    ContentMd5,
    /// Every byte of the copy was read back and its SHA-256 compared.
    #[default]
    #[serde(rename = "read-back")]
    ReadBack,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::ContentMd5 => "content-md5",
            Check::ReadBack => "read-back",
        }
    }
}

/// The result line in the export container's log.
pub fn parse_result(log: &str) -> Result<Exported, String> {
    #[derive(Deserialize)]
    struct Line {
        #[serde(rename = "etcdsnapExport")]
        export: Exported,
    }
    for line in log.lines().rev().take(10_000) {
        if let Ok(l) = serde_json::from_str::<Line>(line.trim()) {
            if l.export.sha256.len() != 64 || !l.export.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("the export result has no valid SHA-256".into());
            }
            return Ok(l.export);
        }
    }
    Err("no `etcdsnap export` result in the export log".into())
}

/// The hex SHA-256 and size of a file, read once.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    // Read 1 MiB at a time, as the export's other passes over the file do.
    let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut hashing = gzip::Hashing::new(file);
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    Ok((hashing.sha256(), hashing.total))
}

/// The keys from the environment (the Job sets them from the Secret).
pub fn credentials_from_env() -> Result<Credentials, String> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let access_key = get(ENV_ACCESS_KEY).ok_or(format!("{ENV_ACCESS_KEY} is not set"))?;
    let secret_key = get(ENV_SECRET_KEY).ok_or(format!("{ENV_SECRET_KEY} is not set"))?;
    Ok(Credentials {
        access_key,
        secret_key: Secret::new(secret_key),
        session_token: get(ENV_SESSION_TOKEN).map(Secret::new),
    })
}

#[derive(Debug)]
struct Args {
    file: PathBuf,
    target: Target,
    key: String,
    part_size: u64,
    compression: Compression,
}

/// Reads `--name value` / `--name=value` pairs; every name must be in `known`.
pub fn flags(args: &[String], known: &[&str]) -> Result<Option<std::collections::BTreeMap<String, String>>, String> {
    let mut m = std::collections::BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            return Ok(None);
        }
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}"));
        };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (
                name.to_string(),
                it.next().ok_or(format!("--{name} needs a value"))?.clone(),
            ),
        };
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown flag --{name}"));
        }
        if m.insert(name.clone(), value).is_some() {
            return Err(format!("--{name} given twice"));
        }
    }
    Ok(Some(m))
}

fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let known = [
        "file",
        "endpoint",
        "bucket",
        "key",
        "region",
        "path-style",
        "part-size",
        "compression",
    ];
    let Some(mut m) = flags(args, &known)? else {
        return Ok(None);
    };
    let mut need = |k: &str| {
        m.remove(k)
            .filter(|v| !v.is_empty())
            .ok_or(format!("--{k} is required"))
    };
    let file = PathBuf::from(need("file")?);
    let endpoint = need("endpoint")?;
    let bucket = need("bucket")?;
    let key = need("key")?;
    let path_style = match m.remove("path-style").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => return Err(format!("--path-style must be true or false, got {v:?}")),
    };
    let part_size = match m.remove("part-size") {
        None => crate::params::DEFAULT_PART_SIZE,
        Some(v) => v
            .parse()
            .map_err(|_| format!("--part-size must be a byte count, got {v:?}"))?,
    };
    let compression = match m.remove("compression") {
        None => Compression::None,
        Some(v) => {
            Compression::parse(&v).ok_or(format!("--compression must be {}, got {v:?}", Compression::ALLOWED))?
        }
    };
    Ok(Some(Args {
        file,
        target: Target {
            endpoint,
            bucket,
            region: m.remove("region").unwrap_or_else(|| "us-east-1".into()),
            path_style,
        },
        key,
        part_size,
        compression,
    }))
}

/// The subcommand; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let a = match lifeboat::cli::parsed("etcdsnap export", USAGE, parse_args(args)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let creds = match credentials_from_env() {
        Ok(c) => c,
        Err(e) => {
            log::error!(error = e.as_str(); "export: no S3 keys");
            return 2;
        }
    };
    match export(&a, creds) {
        Ok(done) => {
            println!("{}", serde_json::json!({ RESULT_KEY: done }));
            0
        }
        Err(e) => {
            log::error!(url = a.target.url(&a.key).as_str(), error = e.as_str(); "export failed");
            1
        }
    }
}

fn export(a: &Args, creds: Credentials) -> Result<Exported, String> {
    let url = a.target.url(&a.key);
    let (sha256, size) = sha256_file(&a.file).map_err(|e| format!("reading {}: {e}", a.file.display()))?;
    log::info!(url = url.as_str(), size = size, sha256 = sha256.as_str(), compression = a.compression.as_str();
        "export: uploading");
    let client = client(&a.target, creds);
    let up = match a.compression {
        Compression::None => upload_plain(&client, a, &sha256, size)?,
        Compression::Gzip => upload_gzip(&client, a, &sha256, size)?,
    };
    let check = if up.md5_verified {
        Check::ContentMd5
    } else {
        Check::ReadBack
    };
    let copy = Copy {
        key: &a.key,
        compression: a.compression,
        size,
        stored: up.size,
        sha256: &sha256,
    };
    let checked = check_copy(&client, &copy, check == Check::ReadBack);
    if let Err(why) = &checked {
        delete_bad_copy(&client, &a.target, &a.key);
        return Err(format!("{url}: {why}"));
    }
    log::info!(url = url.as_str(), size = size, stored_size = up.size, parts = up.parts, sha256 = sha256.as_str(),
        check = check.as_str(), compression = a.compression.as_str(); "export: uploaded and checked");
    Ok(Exported {
        key: a.key.clone(),
        size,
        sha256,
        parts: up.parts,
        check,
        compression: a.compression,
        stored_size: Some(up.size),
    })
}

fn delete_bad_copy(client: &Client, target: &Target, key: &str) {
    if let Err(e) = client.delete_object(key) {
        let url = target.url(key);
        log::warn!(url = url.as_str(), error = e.detail.as_str(); "export: deleting the bad copy failed");
    }
}

fn changed(file: &Path, size: u64, then: u64) -> String {
    format!(
        "{} changed while it was uploaded ({size} bytes hashed, then {then} read)",
        file.display()
    )
}

/// The file as it is.
fn upload_plain(client: &Client, a: &Args, sha256: &str, size: u64) -> Result<Uploaded, String> {
    let url = a.target.url(&a.key);
    let meta = format!("x-amz-meta-{META_SHA256}");
    let up = client
        .upload_file(&a.file, &a.key, a.part_size, &[(meta.as_str(), sha256)])
        .map_err(|e| format!("uploading {url}: {e}"))?;
    if up.size != size {
        delete_bad_copy(client, &a.target, &a.key);
        return Err(changed(&a.file, size, up.size));
    }
    Ok(up)
}

/// The file gzipped on the way (read a second time, and hashed again: it must not have changed
/// since `sha256` was taken, which the metadata already names).
fn upload_gzip(client: &Client, a: &Args, sha256: &str, size: u64) -> Result<Uploaded, String> {
    let url = a.target.url(&a.key);
    let file = std::fs::File::open(&a.file).map_err(|e| format!("reading {}: {e}", a.file.display()))?;
    let mut reader = flate2::read::GzEncoder::new(gzip::Hashing::new(file), flate2::Compression::new(gzip::LEVEL));
    let meta_sha = format!("x-amz-meta-{META_SHA256}");
    let meta_compression = format!("x-amz-meta-{}", gzip::META_COMPRESSION);
    let meta_size = format!("x-amz-meta-{}", gzip::META_SIZE);
    let size_text = size.to_string();
    // Never Content-Encoding: S3 clients would hand out the decompressed bytes under this key.
    let headers = [
        (meta_sha.as_str(), sha256),
        (meta_compression.as_str(), Compression::Gzip.as_str()),
        (meta_size.as_str(), size_text.as_str()),
        ("content-type", gzip::CONTENT_TYPE),
    ];
    let started = std::time::Instant::now();
    let up = client
        .upload_reader(&mut reader, &a.key, a.part_size, &headers)
        .map_err(|e| format!("uploading {url}: {e}"))?;
    let read = reader.get_ref();
    if read.total != size || read.sha256() != sha256 {
        delete_bad_copy(client, &a.target, &a.key);
        return Err(changed(&a.file, size, read.total));
    }
    let secs = started.elapsed().as_secs_f64();
    log::info!(url = url.as_str(), size = size, stored_size = up.size, seconds = secs; "export: gzipped and uploaded");
    Ok(up)
}

/// What the copy must be.
struct Copy<'a> {
    key: &'a str,
    compression: Compression,
    /// The snapshot's size and SHA-256.
    size: u64,
    sha256: &'a str,
    /// The object's size.
    stored: u64,
}

/// HEAD of what the server stored, and with `full` a GET of every byte (decompressed, with
/// gzip), compared with the file.
fn check_copy(client: &Client, c: &Copy, full: bool) -> Result<(), String> {
    let head = client
        .head_object(c.key)
        .map_err(|e| format!("reading the copy back (HEAD): {e}"))?
        .ok_or("the copy is not there after the upload")?;
    if head.size != c.stored {
        return Err(format!("the copy has {} bytes, {} were uploaded", head.size, c.stored));
    }
    let sha256 = c.sha256;
    if head.meta(META_SHA256) != Some(sha256) {
        return Err(format!(
            "the copy's x-amz-meta-{META_SHA256} is {:?}, the snapshot's SHA-256 {sha256}",
            head.meta(META_SHA256).unwrap_or("")
        ));
    }
    if c.compression == Compression::Gzip {
        let size = c.size.to_string();
        for (k, want) in [(gzip::META_COMPRESSION, "gzip"), (gzip::META_SIZE, size.as_str())] {
            if head.meta(k) != Some(want) {
                return Err(format!(
                    "the copy's x-amz-meta-{k} is {:?}, not {want:?}",
                    head.meta(k).unwrap_or("")
                ));
            }
        }
    }
    if !full {
        return Ok(());
    }
    let (got_sha, got_size) = match c.compression {
        Compression::None => {
            let got = client
                .get_streamed(c.key, c.stored, &mut Discard)
                .map_err(|e| format!("reading the copy back (GET): {e}"))?;
            (got.sha256, got.size)
        }
        Compression::Gzip => {
            let mut sink = gzip::Gunzip::new(None, c.size).map_err(|e| format!("reading the copy back: {e}"))?;
            client
                .get_streamed(c.key, c.stored, &mut sink)
                .map_err(|e| format!("reading the copy back (GET): {e}"))?;
            let got = sink
                .finish()
                .map_err(|why| format!("the copy read back is refused: {why}"))?;
            (got.sha256, got.size)
        }
    };
    if got_size != c.size || got_sha != sha256 {
        return Err(format!(
            "the copy read back has SHA-256 {got_sha} ({got_size} bytes), the snapshot {sha256} ({} bytes)",
            c.size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_is_found_and_checked() {
        let sha = "a".repeat(64);
        let log = format!(
            "{{\"level\":\"info\",\"msg\":\"x\"}}\n{{\"etcdsnapExport\":{{\"key\":\"k\",\"size\":5,\"sha256\":\"{sha}\",\"parts\":0}}}}\n"
        );
        let r = parse_result(&log).unwrap();
        // A result without `check` (an older image) was read back.
        assert_eq!((r.key.as_str(), r.size, r.parts, r.check), ("k", 5, 0, Check::ReadBack));
        assert!(parse_result("{\"level\":\"error\"}").is_err());
        assert!(parse_result("{\"etcdsnapExport\":{\"key\":\"k\",\"size\":5,\"sha256\":\"zz\",\"parts\":0}}").is_err());
    }

    #[test]
    fn arguments() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = parse_args(&a(&[
            "--file=/f",
            "--endpoint",
            "http://x",
            "--bucket=b",
            "--key=k",
            "--path-style=false",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((p.target.region.as_str(), p.target.path_style), ("us-east-1", false));
        assert!(parse_args(&a(&["--file=/f"]))
            .unwrap_err()
            .contains("--endpoint is required"));
        assert!(parse_args(&a(&["--nope=1"]))
            .unwrap_err()
            .contains("unknown flag --nope"));
        assert!(parse_args(&a(&["--help"])).unwrap().is_none());
    }
}
