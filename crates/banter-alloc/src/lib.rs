//! The global allocator of banter's binaries and benchmarks: the system allocator, with every
//! block of [`HUGE_PAGE`] or more marked for transparent huge pages; and [`prefetch`], the
//! cache hint the stream engine's batches use.
//!
//! The stream processor's state is a few large hash tables (panes, dedup ids, interned names,
//! first-hour posts) read at random, one or more cache misses per event. With 4 KiB pages each
//! miss is also a TLB miss: 100,000 active posts spread the tables over tens of thousands of
//! pages. Linux backs a range with 2 MiB pages when it is marked `MADV_HUGEPAGE` (the default
//! `transparent_hugepage=madvise` mode gives huge pages only to ranges that ask), so large blocks
//! ask. Measured with the engine benchmark: see `docs/benchmarks.md`.
//!
//! Nothing else changes: allocation and freeing are the system allocator's; the advice is a
//! hint the kernel may ignore (THP disabled, no huge page free), and on other systems it is
//! not given.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: banter_alloc::HugePages = banter_alloc::HugePages;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

/// Starts loading the cache line that holds `r` and returns at once: nothing waits for it.
///
/// For code that knows which scattered pieces of memory it is about to read (the stream
/// engine, a batch of events ahead): their cache misses then overlap instead of being waited
/// for one after another. Only a hint; on targets other than x86-64 it does nothing.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is an SSE instruction, and SSE is part of every x86-64 CPU. A
    // prefetch never faults and changes no memory; `r` is a valid reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(r).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// Starts loading every cache line `*r` spans (a value larger than one line, read field by
/// field a little later) and returns at once; see [`prefetch`].
#[inline(always)]
pub fn prefetch_all<T>(r: &T) {
    let start = std::ptr::from_ref(r).cast::<u8>();
    let (first, lines) = lines_spanned(start.addr(), std::mem::size_of::<T>());
    let mut line = start.wrapping_sub(start.addr() - first);
    for _ in 0..lines {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: PREFETCHT0 is an SSE instruction, part of every x86-64 CPU. A prefetch
        // never faults and changes no memory, whatever the address; `line` is computed with
        // wrapping arithmetic and never dereferenced.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.cast::<i8>(),
            );
        }
        line = line.wrapping_add(CACHE_LINE);
    }
}

/// The cache line size of x86-64 CPUs.
const CACHE_LINE: usize = 64;

/// The address of the cache line holding byte `addr`, and how many lines the `size` bytes
/// from it touch (bytes that start inside a line may touch one more than their size alone
/// needs; an empty value, one).
fn lines_spanned(addr: usize, size: usize) -> (usize, usize) {
    let first = addr - addr % CACHE_LINE;
    let last = addr + size.max(1) - 1;
    (first, (last - first) / CACHE_LINE + 1)
}

/// The huge page size (x86-64 and aarch64 with 4 KiB base pages): blocks at least this large
/// are advised.
pub const HUGE_PAGE: usize = 2 << 20;

/// The system allocator, advising transparent huge pages for large blocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct HugePages;

/// Advises huge pages for the whole 2 MiB pages inside `[p, p + size)`.
#[cfg(target_os = "linux")]
fn advise(p: *mut u8, size: usize) {
    let start = (p as usize).next_multiple_of(HUGE_PAGE);
    let end = (p as usize + size) & !(HUGE_PAGE - 1);
    if end > start {
        // SAFETY: the range lies inside a block the system allocator just gave us, and
        // MADV_HUGEPAGE only changes how the kernel backs it, not its contents or mapping.
        // The result is ignored: without THP the advice is simply not taken.
        let _ =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_: *mut u8, _: usize) {}

/// `p`, a block of `size` bytes from the system allocator (or null), advised when large.
fn advised(p: *mut u8, size: usize) -> *mut u8 {
    if !p.is_null() && size >= HUGE_PAGE {
        advise(p, size);
    }
    p
}

// SAFETY: every call is forwarded to `System` with the same arguments; `advise` only gives the
// kernel a hint about memory inside the returned block.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        advised(unsafe { System.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        advised(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        advised(unsafe { System.realloc(ptr, layout, new_size) }, new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_fetched_from_the_line_of_its_first_byte_to_that_of_its_last() {
        // 136 bytes (a conversation item's slot) from the start of a line: three lines.
        assert_eq!(lines_spanned(6400, 136), (6400, 3));
        // The same from byte 60 of a line: bytes 6460..6596 touch four.
        assert_eq!(lines_spanned(6460, 136), (6400, 4));
        assert_eq!(lines_spanned(6463, 1), (6400, 1));
        assert_eq!(lines_spanned(6463, 2), (6400, 2));
        assert_eq!(lines_spanned(6400, 64), (6400, 1));
        assert_eq!(lines_spanned(6400, 0), (6400, 1));
        let v = [0u64; 40];
        prefetch_all(&v);
        prefetch_all(&());
    }

    #[test]
    fn large_and_small_blocks_work_as_the_system_allocator() {
        for size in [1, 64, 4096, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 17] {
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: non-zero size; freed with the same layout below.
            unsafe {
                let p = HugePages.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                p.write_bytes(0xab, size);
                let q = HugePages.realloc(p, layout, size * 2);
                assert!(!q.is_null());
                assert!(std::slice::from_raw_parts(q, size)
                    .iter()
                    .all(|&b| b == 0xab));
                HugePages.dealloc(q, Layout::from_size_align(size * 2, 8).unwrap());
            }
        }
    }
}
