//! Which rclone `RCLONE_BINARY` is: s3sync's exit codes, flags and log parsing assume
//! rclone >= 1.69, and a program that is not rclone at all (`/bin/true`) must not report a
//! sync that never happened as a success.
//!
//! The version is read without starting rclone (a start costs 0.1-0.2 s, as much as a no-op
//! sync): Go writes its build information into the ELF section `.go.buildinfo`, where the
//! main module line reads `mod<TAB>github.com/rclone/rclone<TAB>v1.75.2` (what
//! `go version -m` prints). Only when that is missing (a wrapper script, a development build,
//! not a Go program) is `rclone version` run, bounded in time.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The oldest rclone whose exit codes and flags s3sync relies on.
pub const MINIMUM: (u32, u32) = (1, 69);
/// How long `rclone version` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// The most bytes of the buildinfo section read.
const MAX_SECTION: u64 = 64 * 1024;
const MODULE_LINE: &[u8] = b"mod\tgithub.com/rclone/rclone\t";

/// The version (`v1.75.2`, as found) of the rclone at `path`, or why it is not usable.
pub fn check(path: &Path) -> Result<String, String> {
    let found = match from_buildinfo(path) {
        Some(v) => v,
        None => from_command(path)?,
    };
    match parse(&found) {
        Some((major, minor)) if (major, minor) >= MINIMUM => Ok(found),
        Some(_) => Err(format!(
            "{} is rclone {found}; s3sync needs rclone v{}.{} or newer (its exit codes and flags)",
            path.display(),
            MINIMUM.0,
            MINIMUM.1
        )),
        None => Err(format!(
            "{} reports the version {found:?}, which s3sync cannot read",
            path.display()
        )),
    }
}

/// `(major, minor)` of `v1.75.2`, `v1.75.2+dirty`, `1.70.0-beta...`.
fn parse(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The main module version from the ELF section `.go.buildinfo`, if `path` is a Go binary of
/// rclone with one.
fn from_buildinfo(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut ehdr = [0u8; 64];
    f.read_exact(&mut ehdr).ok()?;
    // 64-bit little-endian ELF only (what rclone ships for Linux on amd64 and arm64).
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let shoff = u64_at(&ehdr, 0x28);
    let shentsize = u16_at(&ehdr, 0x3a) as u64;
    let shnum = u16_at(&ehdr, 0x3c) as u64;
    let shstrndx = u16_at(&ehdr, 0x3e) as u64;
    if shentsize < 64 || shnum == 0 || shnum > 4096 || shstrndx >= shnum {
        return None;
    }
    let mut headers = vec![0u8; (shentsize * shnum) as usize];
    f.seek(SeekFrom::Start(shoff)).ok()?;
    f.read_exact(&mut headers).ok()?;
    let header = |i: u64| &headers[(i * shentsize) as usize..((i + 1) * shentsize) as usize];
    let read = |f: &mut std::fs::File, off: u64, len: u64| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len.min(MAX_SECTION) as usize];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut buf).ok()?;
        Some(buf)
    };
    let strtab = header(shstrndx);
    let names = read(&mut f, u64_at(strtab, 0x18), u64_at(strtab, 0x20))?;
    for i in 0..shnum {
        let h = header(i);
        let name_off = u32::from_le_bytes(h[..4].try_into().ok()?) as usize;
        let name = names.get(name_off..)?.split(|&b| b == 0).next()?;
        if name == b".go.buildinfo" {
            let data = read(&mut f, u64_at(h, 0x18), u64_at(h, 0x20))?;
            let at = data.windows(MODULE_LINE.len()).position(|w| w == MODULE_LINE)?;
            let rest = &data[at + MODULE_LINE.len()..];
            let end = rest.iter().position(|&b| b == b'\t' || b == b'\n')?;
            let v = std::str::from_utf8(&rest[..end]).ok()?;
            return (v != "(devel)").then(|| v.to_string());
        }
    }
    None
}

/// The version from `rclone version`'s first line (`rclone v1.75.2`).
fn from_command(path: &Path) -> Result<String, String> {
    let mut cmd = std::process::Command::new(path);
    cmd.arg("version")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(p) = std::env::var_os("PATH") {
        cmd.env("PATH", p);
    }
    crate::child::supervise(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < COMMAND_TIMEOUT => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{} version` did not answer within {COMMAND_TIMEOUT:?}",
                    path.display()
                ));
            }
        }
    };
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.by_ref().take(64 * 1024).read_to_string(&mut out);
    }
    let first = out.lines().next().unwrap_or("");
    match first.strip_prefix("rclone ") {
        Some(v) if status.success() => Ok(v.trim().to_string()),
        _ => Err(format!(
            "{} is not rclone: `{} version` printed {:?} and exited with {status}",
            path.display(),
            path.display(),
            first.chars().take(80).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse("v1.75.2+dirty"), Some((1, 75)));
        assert_eq!(parse("1.69.0-beta.1"), Some((1, 69)));
        assert_eq!(parse("(devel)"), None);
        assert!((1, 68) < MINIMUM && (1, 70) >= MINIMUM && (2, 0) >= MINIMUM);
    }

    #[test]
    fn a_program_that_is_not_rclone_is_refused() {
        let e = check(Path::new("/bin/true")).unwrap_err();
        assert!(e.contains("is not rclone"), "{e}");
    }
}
