//! The allocator's settings for serving (glibc malloc; other C libraries keep their defaults).
//!
//! The hook runs about 2 threads per connection plus its workers (about 70 at 32 connections), and
//! a request's memory is allocated on one thread and freed on another. glibc's defaults give
//! up to 8 arenas per core, each keeping its own free memory and fragments, and raise the
//! mmap threshold after a large block is freed, so that later large blocks (request bodies up
//! to `MAX_BODY_BYTES`, their patches) come from an arena and stay resident after they are
//! freed. Measured with `bench/hook.sh` (docs/hook.md, "Memory"), so set at start-up, before
//! any thread exists:
//! - [`ARENAS`] arenas in all: the hook's threads mostly wait, and on the 2 cores it is sized
//!   for, more arenas only hold more idle memory;
//! - fixed mmap and trim thresholds ([`MMAP_THRESHOLD`], [`TRIM_THRESHOLD`]): a block of 128
//!   KiB or more gets its own mapping, returned to the system when freed, and free memory at
//!   the top of an arena is returned once it reaches 128 KiB;
//! - no cache of the stacks of ended threads ([`TUNABLES`]): glibc keeps up to 40 MiB of them
//!   for reuse, each with its last-used pages resident (12-20 KiB a connection thread), so a
//!   burst of slow clients would leave its memory behind for good. A stack is now unmapped when
//!   its thread ends (a `mmap`/`munmap` per connection, which keep-alive makes rare). Only the
//!   environment can set this (`GLIBC_TUNABLES`, read as the C library starts), so serving
//!   re-executes the binary once with it added ([`with_tunables`]);
//! - a per-thread cache of freed blocks only for small blocks (`tcache_max=64`: requests of up
//!   to 72 bytes; also [`TUNABLES`]). glibc's default (2.36, where this was measured) caches up to 7
//!   blocks of each size up to 1032 bytes in every thread:
//!   each of the hook's threads frees pieces of requests and answers of every size and then
//!   waits, holding them where no other thread can use them. Measured with `bench/hook.sh`
//!   (1,000,000 requests at 32 connections after the other rounds): peak RSS 11,012 KiB with
//!   glibc's cache, 7,392 KiB with this one, CPU per request unchanged within the machine's
//!   noise;
//! - free memory inside the arenas returned to the system after a connection ended or a large
//!   request was answered ([`trim_if_asked`], at most once a second), where the thresholds
//!   above only return the top of an arena.

use std::sync::atomic::{AtomicBool, Ordering};

/// Arenas at most (glibc's default is 8 per core).
pub const ARENAS: i32 = 2;
/// Blocks this large or larger are mapped on their own (glibc's starting default, kept fixed).
pub const MMAP_THRESHOLD: i32 = 128 * 1024;
/// Free memory at an arena's top past this is returned (glibc's starting default, kept fixed).
pub const TRIM_THRESHOLD: i32 = 128 * 1024;

/// The glibc tunables serving needs (see the module doc), in `GLIBC_TUNABLES` syntax.
pub const TUNABLES: &str = "glibc.pthread.stack_cache_size=0:glibc.malloc.tcache_max=64";
const TUNABLES_ENV: &str = "GLIBC_TUNABLES";

/// The `GLIBC_TUNABLES` value with [`TUNABLES`] added to `current`, or `None` when nothing needs
/// adding: each tunable the operator already set keeps the operator's value.
pub fn tunables_to_add(current: Option<&str>) -> Option<String> {
    let current = current.unwrap_or("");
    let set: Vec<&str> = current
        .split(':')
        .filter_map(|t| t.split_once('=').map(|(k, _)| k))
        .collect();
    let missing: Vec<&str> = TUNABLES
        .split(':')
        .filter(|t| t.split_once('=').is_some_and(|(k, _)| !set.contains(&k)))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut all: Vec<&str> = current.split(':').filter(|t| !t.is_empty()).collect();
    all.extend(missing);
    Some(all.join(":"))
}

/// Re-executes this binary with the same arguments and [`TUNABLES`] added to its environment,
/// unless they are there already (then it returns at once). Returns only when there is nothing
/// to do, or with why the exec failed (serving goes on with glibc's defaults). Call before
/// starting any thread: the process image is replaced, the process id stays.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn with_tunables() -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let current = std::env::var(TUNABLES_ENV).ok();
    let Some(value) = tunables_to_add(current.as_deref()) else {
        return Ok(());
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the running binary: {e}"))?;
    let e = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(TUNABLES_ENV, value)
        .exec();
    Err(format!("cannot re-execute {}: {e}", exe.display()))
}

/// Other C libraries: nothing to set.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn with_tunables() -> Result<(), String> {
    Ok(())
}

/// Something large was freed (a connection ended, a large request was answered): the next
/// [`trim_if_asked`] gives the memory back.
pub fn trim_later() {
    TRIM_ASKED.store(true, Ordering::Relaxed);
}

static TRIM_ASKED: AtomicBool = AtomicBool::new(false);

/// Gives free memory inside the malloc arenas back to the system (`malloc_trim`) when
/// [`trim_later`] asked for it since the last time: whole free pages anywhere in an arena,
/// where [`TRIM_THRESHOLD`] only returns its top. It walks the arenas under their locks (well
/// under a millisecond for the hook's few MiB), so the one caller (the front end's watchdog)
/// rations it to once a second. Returns whether it ran.
pub fn trim_if_asked() -> bool {
    if !TRIM_ASKED.swap(false, Ordering::Relaxed) {
        return false;
    }
    release_free_memory();
    true
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim takes a plain integer (the padding to keep) and works under the
    // arenas' own locks; it only returns free pages, no live allocation moves.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Applies the settings above; returns the ones glibc refused (none expected). Call before
/// starting any thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() -> Vec<&'static str> {
    let settings = [
        ("M_ARENA_MAX", libc::M_ARENA_MAX, ARENAS),
        ("M_MMAP_THRESHOLD", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_TRIM_THRESHOLD", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ];
    let mut refused = Vec::new();
    for (name, param, value) in settings {
        // SAFETY: mallopt only changes glibc malloc's parameters; it takes plain integers, and
        // glibc serialises it against allocations with the arenas' own locks.
        if unsafe { libc::mallopt(param, value) } != 1 {
            refused.push(name);
        }
    }
    refused
}

/// Other C libraries: nothing to set.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() -> Vec<&'static str> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunables_are_added_once_and_an_operators_value_is_kept() {
        assert_eq!(tunables_to_add(None).as_deref(), Some(TUNABLES));
        assert_eq!(tunables_to_add(Some("")).as_deref(), Some(TUNABLES));
        assert_eq!(
            tunables_to_add(Some("glibc.malloc.check=0")).as_deref(),
            Some("glibc.malloc.check=0:glibc.pthread.stack_cache_size=0:glibc.malloc.tcache_max=64")
        );
        assert_eq!(tunables_to_add(Some(TUNABLES)), None);
        // Only what the operator left unset is added.
        assert_eq!(
            tunables_to_add(Some("glibc.pthread.stack_cache_size=1048576")).as_deref(),
            Some("glibc.pthread.stack_cache_size=1048576:glibc.malloc.tcache_max=64")
        );
        assert_eq!(
            tunables_to_add(Some("glibc.malloc.tcache_max=1032:glibc.pthread.stack_cache_size=0")),
            None
        );
    }
}
