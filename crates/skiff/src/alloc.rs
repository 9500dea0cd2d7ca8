//! The process's allocator, chosen once at the start of `main`: mimalloc for `skiff server`,
//! glibc's malloc (two arenas) for everything else.
//!
//! The API server lives on short-lived JSON values made on one thread and freed on another;
//! there glibc's malloc spent over half the server's CPU merging and unlinking free chunks
//! (density benchmark, 5,000 nodes: 179 bindings/s with it, 600 with mimalloc). The agent, the
//! container monitors and `skiff up` are small and long-lived, where mimalloc's pages per thread
//! cost more than they save (pod-startup benchmark: a monitor 2.3 MiB PSS against 0.16, the
//! agent with 100 pods 79 MiB against 27). Memory allocated before the switch (the Rust
//! runtime's start) stays glibc's and is given back to it: each free asks mimalloc whether
//! the block is its own, a lookup in its page map.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

static MIMALLOC: AtomicBool = AtomicBool::new(false);

/// Makes every allocation from now on mimalloc's. Called before any other thread exists.
pub fn use_mimalloc() {
    MIMALLOC.store(true, Ordering::Relaxed);
}

fn mimalloc() -> bool {
    MIMALLOC.load(Ordering::Relaxed)
}

/// Whether mimalloc made the block at `ptr`.
fn owned(ptr: *mut u8) -> bool {
    // SAFETY: a lookup of the address in mimalloc's page map; it reads nothing at `ptr`.
    unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

pub struct Chosen;

// SAFETY: each block is freed or resized by the allocator that made it (`owned` tells them
// apart once mimalloc is in use); a block moved from glibc to mimalloc is copied whole.
unsafe impl GlobalAlloc for Chosen {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if mimalloc() {
                MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if mimalloc() {
                MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed to the allocator that made the block.
        unsafe {
            if mimalloc() && owned(ptr) {
                MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract; a glibc block grown after the switch is copied into
        // a new mimalloc block of the new size and freed where it was made.
        unsafe {
            if !mimalloc() {
                return System.realloc(ptr, layout, new_size);
            }
            if owned(ptr) {
                return MiMalloc.realloc(ptr, layout, new_size);
            }
            let grown = MiMalloc.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !grown.is_null() {
                std::ptr::copy_nonoverlapping(ptr, grown, layout.size().min(new_size));
                System.dealloc(ptr, layout);
            }
            grown
        }
    }
}
