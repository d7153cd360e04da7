//! The large lane's own memory: while a large request is reviewed, the lane thread's small
//! allocations come from one region of address space, and the whole region is given back to
//! the system once nothing in it is alive.
//!
//! A large AdmissionReview (a megabyte of annotations, containers, mounts) is parsed into many
//! small pieces. In glibc's shared arenas those pieces push the heap up by megabytes, and the
//! long-lived memory other threads allocate meanwhile (a new connection's state) lands in
//! between; when the pieces are freed, `malloc_trim` can return only whole free pages, so the
//! pages holding those survivors stay resident for good (measured: 4.3 MiB of a 14.9 MiB heap
//! after the bench's large-request round, docs/hook.md "Memory"). Here the pieces never enter
//! the arenas: a bump allocator hands them out of [`REGION`] bytes reserved at start
//! (`MAP_NORESERVE`: address space, not memory), counts the live ones, and
//! [`release`] returns every touched page (`MADV_DONTNEED`) when the count is zero.
//!
//! Only the thread inside [`with_region`] allocates from the region, and only blocks under
//! [`SMALL`] (larger ones get their own mapping from malloc, returned when freed). Blocks may
//! be freed by any thread. Nothing is reused before the region is released, so memory freed
//! during the review stays resident until [`release`]; if the region runs out, malloc serves.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Address space reserved for the region (no memory until touched).
pub const REGION: usize = 256 << 20;
/// Blocks this large or larger are not taken from the region.
pub const SMALL: usize = 128 * 1024;

/// The hook's global allocator: glibc malloc (`System`), except inside [`with_region`].
pub struct Allocator;

/// The region's start (0: not mapped, so everything goes to malloc).
static BASE: AtomicUsize = AtomicUsize::new(0);
/// Offset of the first unused byte (only the thread inside `with_region` moves it).
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Blocks handed out of the region and not freed yet.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// One thread at a time inside `with_region`, and `release` not meanwhile.
static USER: Mutex<()> = Mutex::new(());

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

fn inside() -> bool {
    INSIDE.try_with(Cell::get).unwrap_or(false)
}

fn in_region(ptr: *mut u8) -> bool {
    let base = BASE.load(Ordering::Acquire);
    let p = ptr as usize;
    base != 0 && p >= base && p < base + REGION
}

/// A block of `layout` from the region, or null when it does not fit.
fn bump(layout: Layout) -> *mut u8 {
    let base = BASE.load(Ordering::Acquire);
    if base == 0 {
        return std::ptr::null_mut();
    }
    let next = NEXT.load(Ordering::Relaxed);
    let align = layout.align();
    let start = (base + next + align - 1) & !(align - 1);
    let end = start + layout.size().max(1);
    if end > base + REGION {
        return std::ptr::null_mut();
    }
    NEXT.store(end - base, Ordering::Relaxed);
    LIVE.fetch_add(1, Ordering::Relaxed);
    start as *mut u8
}

/// A region block for this thread's `layout` when it is inside [`with_region`] and the block
/// is small and fits; else null (malloc serves).
fn from_region(layout: Layout) -> *mut u8 {
    if layout.size() < SMALL && inside() {
        bump(layout)
    } else {
        std::ptr::null_mut()
    }
}

// SAFETY: every block comes either from `System` (and goes back to it) or from the region,
// told apart by address; region blocks are handed out once each (the bump only moves forward)
// and their memory is returned to the system only while no block is live (`release`).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = from_region(layout);
        if !p.is_null() {
            return p;
        }
        // SAFETY: the caller's contract (a non-zero-size layout) is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Region memory was never handed out since it was mapped or released (MADV_DONTNEED
        // gives zero pages, or `release` zeroes it), so it is zero already.
        let p = from_region(layout);
        if !p.is_null() {
            return p;
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_region(ptr) {
            LIVE.fetch_sub(1, Ordering::Release);
        } else {
            // SAFETY: not a region block, so `System` allocated it with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !in_region(ptr) {
            // SAFETY: a `System` block; the caller's contract is passed on.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees new_size, rounded up to the alignment, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a valid layout of non-zero size (new_size > 0 by realloc's contract).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap (the new
            // one is fresh); the old one is freed after the copy.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

/// Reserves the region (call once at start, before serving). On failure the region stays off
/// and every allocation goes to malloc; the reason is returned.
pub fn init() -> Result<(), String> {
    if BASE.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing; nothing
    // else refers to it until BASE publishes it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "cannot reserve the large lane's region: {}",
            std::io::Error::last_os_error()
        ));
    }
    BASE.store(p as usize, Ordering::Release);
    Ok(())
}

/// Runs `f` with this thread's small allocations taken from the region, and returns a copy of
/// its result made outside the region; the region is then given back (if nothing else made in
/// it is alive).
pub fn run<R: Clone>(f: impl FnOnce() -> R) -> R {
    let inside = with_region(f);
    let out = inside.clone();
    drop(inside);
    release();
    out
}

/// Runs `f` with this thread's small allocations taken from the region. What `f` returns may
/// live in the region: copy it out, drop it, then call [`release`] (as [`run`] does).
fn with_region<R>(f: impl FnOnce() -> R) -> R {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            let _ = INSIDE.try_with(|i| i.set(false));
        }
    }
    let _user = USER.lock().unwrap_or_else(|e| e.into_inner());
    release_locked();
    INSIDE.with(|i| i.set(true));
    let _leave = Leave;
    f()
}

/// Gives the region's touched pages back to the system if no block in it is alive; returns
/// whether it did (false: something allocated in it is still in use, or it is off).
fn release() -> bool {
    let _user = USER.lock().unwrap_or_else(|e| e.into_inner());
    release_locked()
}

fn release_locked() -> bool {
    let base = BASE.load(Ordering::Acquire);
    if base == 0 || LIVE.load(Ordering::Acquire) != 0 {
        return false;
    }
    let used = NEXT.load(Ordering::Relaxed);
    if used > 0 {
        let page = 4096;
        let len = (used + page - 1) & !(page - 1);
        // SAFETY: [base, base + len) lies inside the region, and no block in it is live (LIVE
        // is 0 and only the thread holding USER could hand out a new one), so no reference
        // into these pages exists; they read as zero afterwards.
        let dropped = unsafe { libc::madvise(base as *mut libc::c_void, len.min(REGION), libc::MADV_DONTNEED) };
        if dropped != 0 {
            // Refused (locked pages: mlock, mlockall): `alloc_zeroed` relies on the memory
            // handed out again being zero, so zero it by hand.
            // SAFETY: as above; [base, base + used) lies inside the region.
            unsafe { std::ptr::write_bytes(base as *mut u8, 0, used) };
        }
        NEXT.store(0, Ordering::Relaxed);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The region is one for the process: its tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of the region handed out since it was last released, and blocks alive in it.
    fn usage() -> (usize, usize) {
        (NEXT.load(Ordering::Relaxed), LIVE.load(Ordering::Relaxed))
    }

    /// Resident KiB of the region's first 32 MiB (`mincore`).
    fn region_rss_kib() -> usize {
        let base = BASE.load(Ordering::Acquire);
        let len = 32 << 20;
        let mut pages = vec![0u8; len / 4096];
        // SAFETY: the range is inside the region mapping; `pages` has one byte per page.
        let r = unsafe { libc::mincore(base as *mut libc::c_void, len, pages.as_mut_ptr()) };
        assert_eq!(r, 0);
        pages.iter().filter(|&&p| p & 1 == 1).count() * 4
    }

    #[test]
    fn the_lane_allocates_in_the_region_and_gives_it_back_whole() {
        let _serial = serial();
        init().unwrap();
        // 20 MiB in small pieces, as a large review's parse makes them.
        let (count, kept) = with_region(|| {
            let pieces: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 500]).collect();
            assert!(pieces.iter().all(|p| in_region(p.as_ptr() as *mut u8)));
            let big = vec![0u8; SMALL];
            assert!(!in_region(big.as_ptr() as *mut u8), "large blocks go to malloc");
            (pieces.len(), pieces[123].clone())
        });
        assert_eq!(count, 40_000);
        assert!(region_rss_kib() >= 19 * 1024, "{} KiB", region_rss_kib());
        // Something made inside is still alive: the region stays, and its memory is intact.
        assert!(in_region(kept.as_ptr() as *mut u8));
        assert!(!release());
        assert!(kept.iter().all(|&b| b == 123));
        // Outside the region, new blocks and a region block's growth come from malloc.
        let mut grown = kept;
        grown.extend_from_slice(&[1; 1000]);
        assert!(!in_region(grown.as_ptr() as *mut u8));
        assert_eq!(grown[499], 123);
        drop(grown);
        assert!(release());
        assert_eq!(region_rss_kib(), 0);
        assert_eq!(usage(), (0, 0));
        // And it is used again from the start, zeroed.
        let zeroed = with_region(|| vec![0u64; 100].into_iter().sum::<u64>());
        assert_eq!(zeroed, 0);
        assert!(release());
        // `run`: the result is a copy made outside, and the region is given back after it.
        let copy = run(|| vec![7u8; 100]);
        assert!(!in_region(copy.as_ptr() as *mut u8));
        assert_eq!((copy.len(), copy[99]), (100, 7));
        assert_eq!(usage(), (0, 0));
    }

    #[test]
    fn memory_handed_out_again_is_zero_even_when_the_pages_cannot_be_dropped() {
        let _serial = serial();
        init().unwrap();
        // Locked pages (mlock, or mlockall by the operator's setup) refuse MADV_DONTNEED: the
        // bytes written before the release must still read as zero when handed out again.
        let dirty = with_region(|| {
            let v = vec![0xffu8; 4000];
            assert!(in_region(v.as_ptr() as *mut u8));
            v.as_ptr() as usize
        });
        let base = BASE.load(Ordering::Acquire);
        // SAFETY: the region's first page, mapped and readable.
        assert_eq!(unsafe { libc::mlock(base as *const libc::c_void, 4096) }, 0);
        assert!(release());
        let zeroed = with_region(|| {
            let v = vec![0u8; 4000];
            (v.as_ptr() as usize, v.iter().all(|&b| b == 0))
        });
        // SAFETY: as above.
        unsafe { libc::munlock(base as *const libc::c_void, 4096) };
        assert!(release());
        assert_eq!(zeroed.0, dirty, "the same bytes are handed out again");
        assert!(zeroed.1, "alloc_zeroed gave non-zero memory");
    }
}
