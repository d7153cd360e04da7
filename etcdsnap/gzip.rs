//! The optional compression of the S3 copy (class parameter `exportCompression: gzip`): what
//! the copy says about itself, the compressor's input hashed on the way, and a bounded
//! decompressing sink for reading a copy back or restoring it.
//!
//! A gzip copy is `<key>.db.gz`, `Content-Type: application/gzip`, never `Content-Encoding`
//! (S3 clients would decompress it silently); `x-amz-meta-sha256` stays the SHA-256 of the
//! snapshot itself (uncompressed), `x-amz-meta-compression: gzip` and `x-amz-meta-size` its
//! size uncompressed. So `gunzip` and `sha256sum` check a copy by hand, and the reader here
//! checks what comes out of the decompressor, never more than `x-amz-meta-size` bytes of it.

use std::fs::File;
use std::io::{Read, Seek, Write};

use flate2::write::GzDecoder;
use lifeboat::s3::download::Sink;
use ring::digest;
use serde::{Deserialize, Serialize};

/// Level 1, the fastest: the export runs in the snapshot Job on a small CPU request, and on an
/// etcd snapshot (bbolt pages: free pages of zeros, repeated key prefixes) level 1 already
/// takes most of the gain (figures in docs/etcdsnap.md).
pub const LEVEL: u32 = 1;
/// Metadata keys (sent as `x-amz-meta-*`): the compression, and the size uncompressed.
pub const META_COMPRESSION: &str = "compression";
pub const META_SIZE: &str = "size";
pub const CONTENT_TYPE: &str = "application/gzip";

/// How the copy is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// The snapshot file as it is (`<key>.db`).
    #[default]
    None,
    /// gzip (`<key>.db.gz`).
    Gzip,
}

impl Compression {
    pub const ALLOWED: &'static str = "\"none\" or \"gzip\"";

    pub fn parse(v: &str) -> Option<Compression> {
        match v {
            "none" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        }
    }

    /// What the object key ends with after `.db`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
        }
    }
}

/// A reader that hashes (SHA-256) and counts what passes.
pub struct Hashing<R> {
    inner: R,
    ctx: digest::Context,
    pub total: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            ctx: digest::Context::new(&digest::SHA256),
            total: 0,
        }
    }

    pub fn sha256(&self) -> String {
        lifeboat::s3::sigv4::hex(self.ctx.clone().finish().as_ref())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.total += n as u64;
        Ok(n)
    }
}

/// What the decompressor writes: hashed, counted, refused past `max` before a byte beyond it
/// reaches the file.
struct Bounded {
    file: Option<File>,
    ctx: digest::Context,
    total: u64,
    max: u64,
    over: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.total + buf.len() as u64 > self.max {
            self.over = true;
            return Err(std::io::Error::other(format!(
                "it decompresses to more than {} bytes",
                self.max
            )));
        }
        if let Some(f) = &mut self.file {
            f.write_all(buf)?;
        }
        self.ctx.update(buf);
        self.total += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// A [`Sink`] that gunzips into a file (or only hashes), at most `max` bytes.
pub struct Gunzip {
    file: Option<File>,
    max: u64,
    decoder: Option<GzDecoder<Bounded>>,
    /// Why the stream was refused (damaged, or past `max`), once it was.
    pub failure: Option<String>,
}

/// What came out of the decompressor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub size: u64,
    /// Hex SHA-256 of the decompressed bytes.
    pub sha256: String,
}

impl Gunzip {
    /// Into `file` (written from its start), or with `None` only hashed.
    pub fn new(file: Option<File>, max: u64) -> std::io::Result<Gunzip> {
        let mut g = Gunzip {
            file,
            max,
            decoder: None,
            failure: None,
        };
        g.restart()?;
        Ok(g)
    }

    /// The end of the stream: its CRC-32 and length checked, the file synced.
    pub fn finish(&mut self) -> Result<Unpacked, String> {
        if let Some(f) = &self.failure {
            return Err(f.clone());
        }
        let d = self.decoder.as_mut().ok_or("the decompressor was not started")?;
        if let Err(e) = d.try_finish() {
            let why = describe(&e, d.get_ref());
            self.failure = Some(why.clone());
            return Err(why);
        }
        let out = d.get_mut();
        if let Some(f) = &out.file {
            f.sync_all().map_err(|e| format!("writing: {e}"))?;
        }
        Ok(Unpacked {
            size: out.total,
            sha256: lifeboat::s3::sigv4::hex(out.ctx.clone().finish().as_ref()),
        })
    }
}

fn describe(e: &std::io::Error, out: &Bounded) -> String {
    if out.over {
        format!("it decompresses to more than {} bytes", out.max)
    } else if e.kind() == std::io::ErrorKind::WriteZero {
        "data after the end of its gzip stream".to_string()
    } else {
        format!("its gzip stream is damaged or cut short ({e})")
    }
}

impl Sink for Gunzip {
    fn restart(&mut self) -> std::io::Result<()> {
        // Dropped first: it flushes what it holds into the file, which is then emptied.
        self.decoder = None;
        self.failure = None;
        let out = match &mut self.file {
            Some(f) => {
                f.set_len(0)?;
                f.seek(std::io::SeekFrom::Start(0))?;
                Some(f.try_clone()?)
            }
            None => None,
        };
        self.decoder = Some(GzDecoder::new(Bounded {
            file: out,
            ctx: digest::Context::new(&digest::SHA256),
            total: 0,
            max: self.max,
            over: false,
        }));
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let d = self
            .decoder
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the decompressor was not started"))?;
        d.write_all(data).map_err(|e| {
            let why = describe(&e, d.get_ref());
            self.failure = Some(why.clone());
            std::io::Error::other(why)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut r = flate2::read::GzEncoder::new(data, flate2::Compression::new(LEVEL));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    fn gunzip(packed: &[u8], max: u64) -> Result<Unpacked, String> {
        let mut g = Gunzip::new(None, max).unwrap();
        for chunk in packed.chunks(1000) {
            if g.write(chunk).is_err() {
                break;
            }
        }
        g.finish()
    }

    #[test]
    fn bounded_checked_gunzip() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let packed = gzip(&data);
        assert!(packed.len() < data.len() / 4, "{}", packed.len());
        let sha = lifeboat::s3::sigv4::hex(digest::digest(&digest::SHA256, &data).as_ref());
        assert_eq!(
            gunzip(&packed, data.len() as u64),
            Ok(Unpacked {
                size: data.len() as u64,
                sha256: sha
            })
        );
        // One byte short of the bound: refused as a bomb.
        assert!(gunzip(&packed, data.len() as u64 - 1)
            .unwrap_err()
            .contains("more than"));
        // Cut short, trailing bytes, a changed byte in the CRC.
        assert!(gunzip(&packed[..packed.len() - 3], 1 << 20)
            .unwrap_err()
            .contains("damaged or cut short"));
        let mut longer = packed.clone();
        longer.extend_from_slice(b"junk");
        assert!(gunzip(&longer, 1 << 20).unwrap_err().contains("after the end"));
        let mut bad = packed.clone();
        let n = bad.len() - 6;
        bad[n] ^= 1;
        assert!(gunzip(&bad, 1 << 20).is_err());
        assert_eq!(Compression::parse("gzip"), Some(Compression::Gzip));
        assert_eq!(Compression::parse("zstd"), None);
    }
}
