//! The native binary's global allocator: mimalloc, built with `no_thp` (transparent
//! huge pages made idle RSS 18 MB instead of 11 MB, and 1,000 open streams 91 MB
//! instead of 62 MB).
//!
//! The request path allocates many small, short-lived objects (header maps, futures,
//! buffers): some 35 a non-streamed request and 50 a streamed one. The `mimalloc`
//! crate's allocator sends every one of them through `mi_malloc_aligned`, whose
//! checks cost about 60 instructions an allocation (callgrind, bench/instructions.sh);
//! plain `mi_malloc` serves the alignment almost every Rust allocation asks for in
//! about half that. mimalloc rounds every block above one word to a multiple of
//! `MAX_ALIGN_SIZE` (16 on 64-bit targets, `MI_ALIGN2W` in its page queues) and starts
//! its pages aligned, so a block of at least `align` bytes is aligned to any `align`
//! up to 16; larger alignments, and smaller blocks that ask for more than their size,
//! go the aligned way.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least that many bytes has
/// (`MI_MAX_ALIGN_SIZE`).
const MAX_ALIGN_SIZE: usize = 16;

/// Whether `mi_malloc(size)` is aligned enough for `align`.
#[inline(always)]
fn plain(size: usize, align: usize) -> bool {
    align <= MAX_ALIGN_SIZE && align <= size
}

pub struct Allocator;

// SAFETY: each function hands on to mimalloc, whose blocks satisfy the layout: the
// plain calls only where `plain` holds (see the module's note), the aligned ones
// otherwise; every block, however allocated, is freed by `mi_free` and resized by
// `mi_realloc`/`mi_realloc_aligned`, which keep its contents.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if plain(size, align) {
            mi::mi_malloc(size).cast()
        } else {
            mi::mi_malloc_aligned(size, align).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if plain(size, align) {
            mi::mi_zalloc(size).cast()
        } else {
            mi::mi_zalloc_aligned(size, align).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if plain(new_size, align) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, align).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size a request path asks for, at every alignment up to a page: each
    /// block is aligned, holds what was written into it through a grow and a
    /// shrink, and is freed (mimalloc's own checks would catch a foreign pointer).
    #[test]
    fn every_block_is_aligned_as_its_layout_asks_through_resizes() {
        let aligns = [1usize, 2, 4, 8, 16, 32, 64, 4096];
        let sizes = (1..=300).chain([511, 512, 513, 4095, 4096, 70_000, 300_000]);
        for size in sizes {
            for align in aligns {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; the block is written within its size,
                // resized with its own layout and freed once.
                unsafe {
                    for zeroed in [false, true] {
                        let ptr = if zeroed {
                            Allocator.alloc_zeroed(layout)
                        } else {
                            Allocator.alloc(layout)
                        };
                        assert!(!ptr.is_null());
                        assert_eq!(ptr as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!((0..size).all(|i| *ptr.add(i) == 0));
                        }
                        for i in 0..size {
                            *ptr.add(i) = (i % 251) as u8;
                        }
                        let grown = Allocator.realloc(ptr, layout, size * 3);
                        assert_eq!(grown as usize % align, 0, "grown {size} align {align}");
                        assert!((0..size).all(|i| *grown.add(i) == (i % 251) as u8));
                        let bigger = Layout::from_size_align(size * 3, align).unwrap();
                        let shrunk = Allocator.realloc(grown, bigger, size.div_ceil(2));
                        assert_eq!(shrunk as usize % align, 0, "shrunk {size} align {align}");
                        assert!((0..size.div_ceil(2)).all(|i| *shrunk.add(i) == (i % 251) as u8));
                        let smaller = Layout::from_size_align(size.div_ceil(2), align).unwrap();
                        Allocator.dealloc(shrunk, smaller);
                    }
                }
            }
        }
    }
}
