//! The broker's global allocator: the system allocator, except that very
//! large blocks are reserved with `mmap(MAP_NORESERVE)`.
//!
//! Why: the Kafka protocol decoder sizes a `Vec` from a length read off the
//! wire before it has read the elements. A request claiming two billion
//! array entries would ask for a block far larger than RAM; the system
//! allocator refuses, and Rust aborts the process on a failed allocation —
//! one malformed request would take the broker down. A NORESERVE mapping
//! only reserves address space: pages are committed when touched, and the
//! decoder fails on the missing bytes long before it touches more than the
//! frame's worth. Legitimate large buffers behave exactly as before.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks at least this large are mapped rather than malloc'd.
const LARGE: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct BrokerAllocator;

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no
    // preconditions; failure is reported as MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block comes from exactly one of two sources, chosen by its
// layout in the same way on alloc and dealloc, and each source's contract
// (alignment, size, zeroing) is kept.
unsafe impl GlobalAlloc for BrokerAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // SAFETY: see `map`; page alignment covers any align <= PAGE.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarding the caller's valid layout.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // SAFETY: anonymous mappings are zero-filled.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarding the caller's valid layout.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) {
            // SAFETY: `ptr` was mapped by `map` with this very size.
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            // SAFETY: `ptr` came from System with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_large(&layout) && !is_large(&new_layout) {
            // SAFETY: both sides are System's; forwarding valid arguments.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing between the two sources: move the bytes by hand.
        // SAFETY: `new_layout` is valid; the copy stays within both blocks.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservations_succeed_and_small_ones_round_trip() {
        let a = BrokerAllocator;
        // 64 GiB: more than the machine has, but only reserved.
        let big = Layout::from_size_align(64 << 30, 8).unwrap();
        // SAFETY: valid layouts; each block is freed with its own layout.
        unsafe {
            let p = a.alloc(big);
            assert!(!p.is_null());
            p.write(7);
            assert_eq!(p.read(), 7);
            let small = Layout::from_size_align(64, 8).unwrap();
            let q = a.realloc(p, big, 64);
            assert_eq!(q.read(), 7);
            let r = a.realloc(q, small, LARGE);
            assert_eq!(r.read(), 7);
            a.dealloc(r, Layout::from_size_align(LARGE, 8).unwrap());
        }
    }
}
