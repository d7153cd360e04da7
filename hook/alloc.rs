//! The allocator's settings for serving (glibc malloc; other C libraries keep their defaults).
//!
//! The hook runs about 2 threads per connection plus its workers (80 at 32 connections), and
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
//!   the top of an arena is returned once it reaches 128 KiB.

/// Arenas at most (glibc's default is 8 per core).
pub const ARENAS: i32 = 2;
/// Blocks this large or larger are mapped on their own (glibc's starting default, kept fixed).
pub const MMAP_THRESHOLD: i32 = 128 * 1024;
/// Free memory at an arena's top past this is returned (glibc's starting default, kept fixed).
pub const TRIM_THRESHOLD: i32 = 128 * 1024;

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
