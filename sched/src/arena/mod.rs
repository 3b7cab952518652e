//! Per-process bump arenas.
//!
//! Every Foundation process allocates from its own [`Arena`]. The arena takes
//! fixed-size chunks from its shard's [`ChunkPool`] and hands out memory by
//! bumping a pointer; nothing is freed object by object. When the process
//! exits its arena drops, and every chunk goes back to the pool at once.
//!
//! ```
//! use std::rc::Rc;
//! use foundation_sched::arena::{Arena, ChunkPool};
//!
//! // One pool per shard...
//! let pool = Rc::new(ChunkPool::new(64 * 1024, 32));
//!
//! // ...one arena per process.
//! let arena = Arena::new(Rc::clone(&pool));
//! let name = arena.alloc_str("worker-7");
//! let samples = arena.alloc_slice_copy(&[1.5_f64, 2.5, 4.0]);
//! assert_eq!(name, "worker-7");
//! assert_eq!(samples.iter().sum::<f64>(), 8.0);
//! assert_eq!(arena.reserved_bytes(), 64 * 1024); // what a heap limit counts
//!
//! drop(arena); // the process exits: everything is given back
//! assert_eq!(pool.stats().chunks_free, pool.stats().chunks_total);
//! ```
//!
//! # Why arenas
//!
//! - **Per-process memory accounting.** All of a process's memory sits in
//!   chunks and mappings its arena holds, so [`Arena::reserved_bytes`] is
//!   exactly what the process costs, read in O(1). The scheduler adds the
//!   mailbox's bytes and compares the sum with the process's
//!   `max_heap_bytes`, killing it with a `HeapLimit` reason when it is over.
//! - **Free whole on exit.** A process is the unit of failure. When it exits,
//!   normally or by crashing, dropping its arena gives back everything it
//!   allocated in O(chunks), without visiting a single object, so no exit path
//!   can leak.
//! - **No per-object free.** Allocation is a pointer bump: no headers, no
//!   free lists, no fragmentation inside a process. The price is that memory
//!   a process stops using stays reserved until it exits, and that
//!   destructors of arena values are not run (see [`Arena::alloc`]). A
//!   long-lived process that keeps producing garbage should hand the work to
//!   short-lived processes, as one would in Erlang.
//! - **An mmap'd pool per shard.** Chunks come from large anonymous mappings
//!   ([`memmap2`]) owned by the shard's [`ChunkPool`], not from the global
//!   allocator: spawning and exiting take no lock and touch no other thread
//!   (processes never migrate, so the pool and the arenas are `!Send`), and a
//!   chunk freed by one process is reused by the next process on the shard.
//!
//! # Layout
//!
//! An arena keeps a singly linked list of its chunks through a footer at the
//! end of each chunk, and bumps downwards from the footer towards the chunk's
//! start (the cheapest bump: one subtraction and one mask).
//!
//! ```text
//!   start                      cursor                 footer
//!   |        free              |   handed out         |ChunkFooter|
//!   +--------------------------+----------------------+-----------+
//!   <------------------------- chunk_size ------------------------>
//! ```
//!
//! A footer records the previous chunk, its own chunk's start, how many chunks
//! the list holds and how many bytes the earlier chunks handed out, so that
//! [`Arena::used_bytes`] and [`Arena::reserved_bytes`] need no walk. A request
//! that does not fit in a fresh chunk (more than `chunk_size` minus the
//! footer's 32 bytes) gets a mapping of its own from the pool; those are kept
//! in a small boxed list, which is allocated only on the first such request.
//!
//! # Safety invariants
//!
//! The `unsafe` code in this module relies on these, and on the pool's P1–P3
//! (in `pool.rs`); every method keeps them.
//!
//! - **A1. Ownership.** Every chunk on the footer list was acquired from
//!   `self.pool` and not released, appears on the list once, and is owned by
//!   this arena alone. Every large mapping in `self.large` is owned by this
//!   arena alone. `self.pool` is an `Rc`, so the pool, and with it every
//!   region (P2), outlives the arena.
//! - **A2. Footers.** `self.footer` is `None`, or points to the `ChunkFooter`
//!   of the most recently acquired chunk, written by `push_chunk` at
//!   `chunk start + chunk_size - FOOTER_SIZE` (aligned for `ChunkFooter`,
//!   since chunk starts are 4096-aligned and `FOOTER_SIZE` is a multiple of
//!   its alignment). Each footer's `prev` is the previous chunk's footer.
//!   Footers are only ever accessed by value (read or written whole, no
//!   reference is kept).
//! - **A3. Bump window.** With no chunk, `cursor` and `start` are null. With a
//!   chunk, `start` is its first byte and `start <= cursor <= footer`; bytes in
//!   `[start, cursor)` are free, bytes in `[cursor, footer)` have been handed
//!   out, and the cursor only moves down. Hence memory handed out is never
//!   handed out again, never overlaps a footer, and every two allocations are
//!   disjoint.
//! - **A4. Lifetimes.** Every reference handed out borrows `&self`, and
//!   chunks and mappings are given back only in `Drop`, which takes
//!   `&mut self`; so no reference outlives its memory. (Raw pointers from
//!   [`Arena::alloc_layout`] carry that duty to their users.)
//! - **A5. Alignment.** Chunk and mapping starts are aligned to 4096 (P1) and
//!   requests are limited to that alignment, so a request of at most
//!   `chunk_size - FOOTER_SIZE` bytes always fits in a fresh chunk.
//!
//! Leaking an arena (`mem::forget`) leaks its chunks until the pool drops; it
//! is not unsound.
//!
//! Under Miri the pool's regions are heap allocations instead of mmap (see
//! `pool.rs`), and the unit tests use small counts so that
//! `cargo +nightly miri test` checks all of the above quickly.

mod pool;

pub use pool::{ChunkPool, PoolStats};

use std::alloc::Layout;
use std::cell::Cell;
use std::fmt;
use std::mem;
use std::num::NonZeroUsize;
use std::ptr::{self, NonNull};
use std::rc::Rc;
use std::slice;
use std::str;

use pool::{Chunk, LargeMapping, MAP_ALIGN};

/// A process's bump arena.
///
/// Allocation is a pointer bump in the current chunk, taken from the shard's
/// [`ChunkPool`]; a request bigger than a chunk gets its own mapping (a
/// "large" allocation). Nothing is freed until the arena drops; then
/// everything is given back: chunks to the pool, large mappings unmapped.
///
/// Allocating takes `&self` (like `bumpalo`), so values can be allocated while
/// others are borrowed; every reference handed out borrows the arena and
/// cannot outlive it. A new arena allocates nothing until its first
/// allocation, and is 40 bytes on 64-bit targets, so idle processes stay
/// small. Destructors of arena values are never run: see [`Arena::alloc`].
///
/// # Examples
///
/// ```
/// use std::rc::Rc;
/// use foundation_sched::arena::{Arena, ChunkPool};
///
/// let pool = Rc::new(ChunkPool::new(64 * 1024, 32));
/// let arena = Arena::new(Rc::clone(&pool));
///
/// let count = arena.alloc(0_u64);
/// let label = arena.alloc_str("requests");
/// *count += 3;
/// assert_eq!((*count, &*label), (3, "requests"));
/// ```
///
/// References cannot outlive the arena:
///
/// ```compile_fail
/// use std::rc::Rc;
/// use foundation_sched::arena::{Arena, ChunkPool};
///
/// let pool = Rc::new(ChunkPool::new(4096, 4));
/// let arena = Arena::new(pool);
/// let x = arena.alloc(1_u32);
/// drop(arena);
/// *x += 1; // error: `arena` is still borrowed
/// ```
///
/// An arena stays on its shard's thread:
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<foundation_sched::arena::Arena>();
/// ```
pub struct Arena {
    pool: Rc<ChunkPool>,
    /// Lowest handed-out byte of the current chunk; the next allocation ends
    /// here. Null when there is no chunk (A3).
    cursor: Cell<*mut u8>,
    /// First byte of the current chunk. Null when there is no chunk (A3).
    start: Cell<*mut u8>,
    /// Footer of the current chunk, head of the chunk list (A2).
    footer: Cell<Option<NonNull<ChunkFooter>>>,
    /// Large mappings; boxed and created on first use to keep `Arena` small.
    large: Cell<Option<Box<LargeSet>>>,
}

impl Arena {
    /// Creates an empty arena drawing on `pool`. Allocates nothing: the first
    /// chunk is taken on the first allocation.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use foundation_sched::arena::{Arena, ChunkPool};
    ///
    /// let pool = Rc::new(ChunkPool::new(64 * 1024, 32));
    /// let arena = Arena::new(Rc::clone(&pool));
    /// assert_eq!(arena.reserved_bytes(), 0);
    /// assert_eq!(pool.stats().mapped_bytes, 0);
    /// ```
    pub fn new(pool: Rc<ChunkPool>) -> Arena {
        Arena {
            pool,
            cursor: Cell::new(ptr::null_mut()),
            start: Cell::new(ptr::null_mut()),
            footer: Cell::new(None),
            large: Cell::new(None),
        }
    }

    /// Moves `value` into the arena and returns a mutable reference to it,
    /// valid as long as the arena.
    ///
    /// **`T`'s destructor is never run**: when the arena drops, its memory is
    /// given back without looking at what is in it (as with `bumpalo`). Store
    /// plain data, or types whose `Drop` only frees memory that the arena
    /// owns anyway; a `Vec`, `String` or `Rc` moved into the arena leaks its
    /// own heap allocation or count. Zero-sized types take no memory.
    ///
    /// # Panics
    ///
    /// If `T`'s alignment is over 4096, or memory cannot be mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use foundation_sched::arena::{Arena, ChunkPool};
    ///
    /// #[derive(Debug, PartialEq)]
    /// struct Point { x: i32, y: i32 }
    ///
    /// let arena = Arena::new(Rc::new(ChunkPool::new(64 * 1024, 32)));
    /// let p = arena.alloc(Point { x: 1, y: 2 });
    /// let q = arena.alloc(Point { x: 3, y: 4 }); // `p` is still usable
    /// p.x += q.x;
    /// assert_eq!(*p, Point { x: 4, y: 2 });
    /// ```
    // `&mut` from `&self` is the point of a bump arena: each call hands out
    // fresh memory disjoint from every other allocation (A3).
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub fn alloc<T>(&self, value: T) -> &mut T {
        let ptr = self.alloc_layout(Layout::new::<T>()).cast::<T>();
        // SAFETY: `alloc_layout` returned memory aligned for `T`, valid for
        // writes of `size_of::<T>()` bytes (any non-null aligned pointer for a
        // ZST) and disjoint from every other allocation (A3), so writing and
        // then borrowing it uniquely is sound. The borrow is tied to `&self`,
        // and the memory stays valid until the arena drops (A4).
        unsafe {
            ptr.as_ptr().write(value);
            &mut *ptr.as_ptr()
        }
    }

    /// Copies `src` into the arena and returns the copy.
    ///
    /// # Panics
    ///
    /// If `T`'s alignment is over 4096, or memory cannot be mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use foundation_sched::arena::{Arena, ChunkPool};
    ///
    /// let arena = Arena::new(Rc::new(ChunkPool::new(64 * 1024, 32)));
    /// let scores = arena.alloc_slice_copy(&[3_u16, 1, 2]);
    /// scores.sort_unstable();
    /// assert_eq!(scores, &[1, 2, 3]);
    /// ```
    #[allow(clippy::mut_from_ref)] // as for `alloc`
    pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> &mut [T] {
        let dst = self.alloc_layout(Layout::for_value(src)).cast::<T>();
        // SAFETY: `dst` is aligned for `T` and valid for writes of
        // `size_of_val(src)` bytes (A3, A5), fresh so it cannot overlap `src`,
        // and disjoint from every other allocation. `T: Copy`, so the bitwise
        // copy makes `src.len()` valid values and nothing is dropped twice.
        // The slice borrows `&self` and stays valid until the arena drops (A4).
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), src.len());
            slice::from_raw_parts_mut(dst.as_ptr(), src.len())
        }
    }

    /// Copies `s` into the arena and returns the copy.
    ///
    /// # Panics
    ///
    /// If memory cannot be mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use foundation_sched::arena::{Arena, ChunkPool};
    ///
    /// let arena = Arena::new(Rc::new(ChunkPool::new(64 * 1024, 32)));
    /// let reason = arena.alloc_str("shutdown");
    /// reason.make_ascii_uppercase();
    /// assert_eq!(reason, "SHUTDOWN");
    /// ```
    #[allow(clippy::mut_from_ref)] // as for `alloc`
    pub fn alloc_str(&self, s: &str) -> &mut str {
        let bytes = self.alloc_slice_copy(s.as_bytes());
        // SAFETY: `bytes` is an exact copy of a `str`, hence valid UTF-8.
        unsafe { str::from_utf8_unchecked_mut(bytes) }
    }

    /// Allocates memory for `layout` and returns a pointer to it, aligned to
    /// `layout.align()`.
    ///
    /// The memory is uninitialized (it may hold bytes from a chunk's previous
    /// owner) and is valid for reads and writes of `layout.size()` bytes until
    /// the arena drops. The pointer does not borrow the arena: using it after
    /// the arena is dropped is undefined behaviour, which the `unsafe` code
    /// that dereferences it must rule out. A zero-sized layout gets a
    /// dangling, aligned pointer and takes no memory.
    ///
    /// # Panics
    ///
    /// If `layout.align()` is over 4096, or memory cannot be mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use std::rc::Rc;
    /// use foundation_sched::arena::{Arena, ChunkPool};
    ///
    /// let arena = Arena::new(Rc::new(ChunkPool::new(64 * 1024, 32)));
    /// let layout = Layout::from_size_align(100, 64).unwrap();
    /// let ptr = arena.alloc_layout(layout);
    /// assert_eq!(ptr.as_ptr() as usize % 64, 0);
    ///
    /// // SAFETY: `ptr` is valid for 100 bytes while `arena` lives.
    /// unsafe { ptr.as_ptr().write_bytes(0xAB, 100) };
    /// ```
    #[inline]
    pub fn alloc_layout(&self, layout: Layout) -> NonNull<u8> {
        assert!(
            layout.align() <= MAP_ALIGN,
            "Arena: alignment {} is over the maximum of {MAP_ALIGN}",
            layout.align()
        );
        if layout.size() == 0 {
            let align = NonZeroUsize::new(layout.align()).unwrap_or(NonZeroUsize::MIN);
            return NonNull::dangling().with_addr(align);
        }
        match self.bump(layout) {
            Some(ptr) => ptr,
            None => self.alloc_slow(layout),
        }
    }

    /// Bytes of chunks and large mappings this arena holds: what the process
    /// costs, and what a heap limit counts. Grows by the pool's chunk size for
    /// every chunk, and by the page-rounded size of every large allocation.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use foundation_sched::arena::{Arena, ChunkPool};
    ///
    /// let arena = Arena::new(Rc::new(ChunkPool::new(4096, 8)));
    /// assert_eq!(arena.reserved_bytes(), 0);
    /// arena.alloc(1_u8);
    /// assert_eq!(arena.reserved_bytes(), 4096); // one chunk
    /// arena.alloc_slice_copy(&[0_u8; 3000]);
    /// arena.alloc_slice_copy(&[0_u8; 3000]);
    /// assert_eq!(arena.reserved_bytes(), 2 * 4096); // the second did not fit
    /// ```
    pub fn reserved_bytes(&self) -> usize {
        let chunks = self.current_footer().map_or(0, |(_, footer)| footer.chunks);
        chunks * self.pool.chunk_size() + self.with_large(|large| large.reserved)
    }

    /// Bytes handed out so far, alignment padding included. The rest of
    /// [`Arena::reserved_bytes`] is chunk footers, the unused ends of chunks,
    /// and page rounding of large allocations.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use foundation_sched::arena::{Arena, ChunkPool};
    ///
    /// let arena = Arena::new(Rc::new(ChunkPool::new(4096, 8)));
    /// arena.alloc(1_u64);
    /// arena.alloc_str("hi");
    /// assert_eq!(arena.used_bytes(), 10);
    /// ```
    pub fn used_bytes(&self) -> usize {
        let in_chunks = self.current_footer().map_or(0, |(at, footer)| {
            footer.used_before + (at.addr().get() - self.cursor.get().addr())
        });
        in_chunks + self.with_large(|large| large.used)
    }

    /// The fast path: bumps the cursor down in the current chunk, or returns
    /// `None` when `layout` does not fit there (or there is no chunk).
    /// `layout.size()` is not zero.
    #[inline]
    fn bump(&self, layout: Layout) -> Option<NonNull<u8>> {
        let cursor = self.cursor.get();
        // With no chunk, `cursor` is null and the subtraction fails (A3).
        let addr = cursor.addr().checked_sub(layout.size())? & !(layout.align() - 1);
        if addr < self.start.get().addr() {
            return None;
        }
        // In `[start, cursor)`, so in the current chunk, and non-null since
        // `start` is; `with_addr` keeps the chunk's provenance.
        let new = cursor.with_addr(addr);
        let ptr = NonNull::new(new)?;
        self.cursor.set(new);
        Some(ptr)
    }

    /// The slow path: a large mapping, or a new chunk. `layout.size()` is not
    /// zero and `layout.align()` is at most 4096.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout) -> NonNull<u8> {
        if layout.size() > self.pool.chunk_size() - FOOTER_SIZE {
            return self.alloc_large(layout);
        }
        self.push_chunk();
        self.bump(layout)
            .expect("a fresh chunk fits any request up to chunk_size - FOOTER_SIZE (A5)")
    }

    /// Gives `layout` a mapping of its own. The mapping starts 4096-aligned
    /// (P1), which is enough for any alignment we accept.
    fn alloc_large(&self, layout: Layout) -> NonNull<u8> {
        let mapping = self.pool.map_large(layout.size());
        let ptr = mapping.as_ptr();
        let mut large = self.large.take().unwrap_or_default();
        large.reserved += mapping.size();
        large.used += layout.size();
        large.mappings.push(mapping);
        self.large.set(Some(large));
        ptr
    }

    /// Takes a chunk from the pool, writes its footer and makes it current.
    fn push_chunk(&self) {
        let chunk_size = self.pool.chunk_size();
        let current = self.current_footer();
        let (chunks, used_before) = current.map_or((0, 0), |(at, footer)| {
            let used_here = at.addr().get() - self.cursor.get().addr();
            (footer.chunks, footer.used_before + used_here)
        });
        let start = self.pool.acquire().into_raw();
        let footer = ChunkFooter {
            prev: current.map(|(at, _)| at),
            start,
            chunks: chunks + 1,
            used_before,
        };
        // SAFETY: the chunk is ours alone (A1) and `chunk_size` bytes long, so
        // the offset `chunk_size - FOOTER_SIZE` is in bounds and the footer's
        // bytes are in the chunk; the address is aligned for `ChunkFooter`
        // (A2). Nothing else points into the fresh chunk.
        let at = unsafe {
            let at = start.add(chunk_size - FOOTER_SIZE).cast::<ChunkFooter>();
            at.as_ptr().write(footer);
            at
        };
        self.footer.set(Some(at));
        self.start.set(start.as_ptr());
        self.cursor.set(at.as_ptr().cast::<u8>());
    }

    /// The current chunk's footer: where it is, and a copy of it.
    fn current_footer(&self) -> Option<(NonNull<ChunkFooter>, ChunkFooter)> {
        let at = self.footer.get()?;
        // SAFETY: `self.footer` points to a footer of a chunk we own (A1, A2).
        Some((at, unsafe { read_footer(at) }))
    }

    /// Runs `f` on the large-allocation bookkeeping (an empty one if there is
    /// none yet).
    fn with_large<R>(&self, f: impl FnOnce(&LargeSet) -> R) -> R {
        let large = self.large.take();
        let result = f(large.as_deref().unwrap_or(&LargeSet::EMPTY));
        self.large.set(large);
        result
    }
}

impl Drop for Arena {
    /// Gives every chunk back to the pool and unmaps every large mapping.
    fn drop(&mut self) {
        let mut next = self.footer.take();
        while let Some(at) = next {
            // SAFETY: `at` is on the footer list (A2), and its chunk has not
            // been released yet: chunks are released just below, after their
            // footer is read, and each appears once on the list (A1).
            let footer = unsafe { read_footer(at) };
            next = footer.prev;
            // SAFETY: `footer.start` came from `Chunk::into_raw` of a chunk
            // `self.pool` handed out (`push_chunk`), and this is the only
            // time it is turned back (A1). `&mut self` means no reference
            // into the chunk is live (A4).
            let chunk = unsafe { Chunk::from_raw(&self.pool, footer.start) };
            self.pool.release(chunk);
        }
        self.cursor.set(ptr::null_mut());
        self.start.set(ptr::null_mut());
        if let Some(large) = self.large.take() {
            for mapping in large.mappings {
                self.pool.unmap_large(mapping);
            }
        }
    }
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("reserved_bytes", &self.reserved_bytes())
            .field("used_bytes", &self.used_bytes())
            .finish_non_exhaustive()
    }
}

/// The bookkeeping at the end of every chunk (A2).
#[derive(Clone, Copy)]
#[repr(C)]
struct ChunkFooter {
    /// The previous chunk's footer.
    prev: Option<NonNull<ChunkFooter>>,
    /// This chunk's first byte, from `Chunk::into_raw`.
    start: NonNull<u8>,
    /// Chunks on the list, this one included.
    chunks: usize,
    /// Bytes handed out from the earlier chunks.
    used_before: usize,
}

/// Size of a [`ChunkFooter`]; a multiple of its alignment, as every size is.
const FOOTER_SIZE: usize = mem::size_of::<ChunkFooter>();

/// The large allocations of one arena.
#[derive(Default)]
struct LargeSet {
    mappings: Vec<LargeMapping>,
    /// Sum of the mappings' sizes.
    reserved: usize,
    /// Sum of the requested sizes.
    used: usize,
}

impl LargeSet {
    const EMPTY: LargeSet = LargeSet {
        mappings: Vec::new(),
        reserved: 0,
        used: 0,
    };
}

/// Copies the footer at `at`.
///
/// # Safety
///
/// `at` must point to a footer written by `push_chunk` whose chunk has not
/// been given back to the pool (A1, A2).
unsafe fn read_footer(at: NonNull<ChunkFooter>) -> ChunkFooter {
    // SAFETY: the caller guarantees `at` points to an initialized, aligned
    // footer in a chunk that is still mapped (P2) and owned by the arena.
    unsafe { at.as_ptr().read() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 4096;
    /// Bytes a chunk can hand out.
    const USABLE: usize = CHUNK - FOOTER_SIZE;

    fn pool(chunks_per_region: usize) -> Rc<ChunkPool> {
        Rc::new(ChunkPool::new(CHUNK, chunks_per_region))
    }

    /// Fewer iterations under Miri, which is ~1000x slower.
    fn scaled(native: usize, miri: usize) -> usize {
        if cfg!(miri) {
            miri
        } else {
            native
        }
    }

    #[test]
    fn an_idle_arena_is_small() {
        assert!(mem::size_of::<Arena>() <= 48, "{}", mem::size_of::<Arena>());
    }

    #[test]
    fn a_fresh_arena_allocates_nothing() {
        let pool = pool(4);
        let arena = Arena::new(Rc::clone(&pool));
        // Zero-sized requests take no memory either.
        arena.alloc(());
        arena.alloc([0_u64; 0]);
        assert!(arena.alloc_slice_copy::<u32>(&[]).is_empty());
        assert_eq!(arena.alloc_str(""), "");
        let zst = arena.alloc_layout(Layout::from_size_align(0, 4096).unwrap());
        assert_eq!(zst.as_ptr() as usize % 4096, 0);
        assert_eq!(arena.reserved_bytes(), 0);
        assert_eq!(arena.used_bytes(), 0);
        assert_eq!(pool.stats(), PoolStats::default());
        drop(arena);
        assert_eq!(pool.stats(), PoolStats::default());
    }

    #[test]
    fn mixed_allocations_are_aligned_and_disjoint() {
        let pool = pool(8);
        let arena = Arena::new(Rc::clone(&pool));
        let mut blocks = Vec::new();
        for i in 0..scaled(20_000, 400) {
            let align = 1 << (i % 13); // 1 ..= 4096
            let size = (i * 37) % 300 + (i % 3) * 7; // includes 0
            let layout = Layout::from_size_align(size, align).unwrap();
            let ptr = arena.alloc_layout(layout);
            assert_eq!(ptr.as_ptr() as usize % align, 0, "{layout:?}");
            // SAFETY: `ptr` is valid for `size` bytes while `arena` lives.
            unsafe { ptr.as_ptr().write_bytes(i as u8, size) };
            blocks.push((ptr, size, i as u8));
        }
        // Any overlap would have overwritten an earlier block's bytes.
        for (ptr, size, byte) in blocks {
            // SAFETY: as above; all `size` bytes were written.
            let bytes = unsafe { slice::from_raw_parts(ptr.as_ptr(), size) };
            assert!(bytes.iter().all(|&b| b == byte));
        }
        assert!(pool.stats().chunks_total - pool.stats().chunks_free > 1);
    }

    #[test]
    fn values_survive_across_chunk_boundaries() {
        #[derive(Clone, Copy, Debug, PartialEq)]
        struct Record {
            id: u64,
            score: f32,
            tag: u8,
            name: [u8; 19],
        }
        let record = |i: usize| Record {
            id: i as u64 * 0x9E37_79B9,
            score: i as f32 / 3.0,
            tag: i as u8,
            name: [i as u8 ^ 0x5A; 19],
        };
        let pool = pool(4);
        let arena = Arena::new(Rc::clone(&pool));
        let n = scaled(50_000, 1_000);
        let mut held = Vec::with_capacity(n);
        let mut words = Vec::new();
        for i in 0..n {
            held.push(arena.alloc(record(i)));
            if i % 10 == 0 {
                words.push(arena.alloc_str(&format!("word-{i}")));
            }
        }
        assert!(
            arena.reserved_bytes() >= 5 * CHUNK,
            "crossed several chunks"
        );
        for (i, r) in held.iter().enumerate() {
            assert_eq!(**r, record(i));
        }
        for (k, w) in words.iter().enumerate() {
            assert_eq!(&**w, format!("word-{}", k * 10));
        }
    }

    #[test]
    fn reserved_bytes_grows_by_a_chunk_per_chunk() {
        let pool = pool(4);
        let arena = Arena::new(Rc::clone(&pool));
        // Every `u64` fits until a chunk is full; the next one takes a chunk.
        let per_chunk = USABLE / 8;
        for chunk in 1..=scaled(20, 6) {
            for _ in 0..per_chunk {
                arena.alloc(0_u64);
                assert_eq!(arena.reserved_bytes(), chunk * CHUNK);
            }
            assert_eq!(arena.used_bytes(), chunk * per_chunk * 8);
            let stats = pool.stats();
            assert_eq!(stats.chunks_total - stats.chunks_free, chunk);
        }
    }

    #[test]
    fn used_bytes_counts_padding() {
        let arena = Arena::new(pool(4));
        arena.alloc(1_u64);
        arena.alloc(2_u8);
        assert_eq!(arena.used_bytes(), 9);
        arena.alloc(3_u64); // 7 bytes of padding
        assert_eq!(arena.used_bytes(), 24);
    }

    #[test]
    fn a_request_that_fills_a_chunk_is_not_large() {
        let pool = pool(4);
        let arena = Arena::new(Rc::clone(&pool));
        let full = Layout::from_size_align(USABLE, 4096).unwrap();
        arena.alloc_layout(full);
        assert_eq!(pool.stats().large_allocs_live, 0);
        assert_eq!(arena.reserved_bytes(), CHUNK);
        arena.alloc_layout(Layout::from_size_align(USABLE + 1, 1).unwrap());
        assert_eq!(pool.stats().large_allocs_live, 1);
    }

    #[test]
    fn large_allocations_get_their_own_mapping() {
        let pool = pool(4);
        let arena = Arena::new(Rc::clone(&pool));
        let small = arena.alloc(7_u32);
        let size = 3 * CHUNK + 5;
        let ptr = arena.alloc_layout(Layout::from_size_align(size, 4096).unwrap());
        assert_eq!(ptr.as_ptr() as usize % 4096, 0);
        // SAFETY: `ptr` is valid for `size` bytes while `arena` lives.
        let bytes = unsafe { slice::from_raw_parts_mut(ptr.as_ptr(), size) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let words: Vec<u64> = (0..scaled(10_000, 1_000) as u64).collect();
        let copy = arena.alloc_slice_copy(&words);
        assert_eq!(copy, &words[..]);
        assert!(bytes.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert_eq!(*small, 7);

        let stats = pool.stats();
        assert_eq!(stats.large_allocs_live, 2);
        let large_reserved = 4 * CHUNK + (words.len() * 8).next_multiple_of(4096);
        assert_eq!(arena.reserved_bytes(), CHUNK + large_reserved);
        assert_eq!(arena.used_bytes(), 4 + size + words.len() * 8);
        assert_eq!(stats.mapped_bytes, 4 * CHUNK + large_reserved);
        drop(arena);
        assert_eq!(pool.stats().large_allocs_live, 0);
        assert_eq!(pool.stats().mapped_bytes, 4 * CHUNK);
    }

    #[test]
    fn dropping_an_arena_returns_everything() {
        let pool = pool(4);
        let arena = Arena::new(Rc::clone(&pool));
        for i in 0..scaled(10_000, 300) {
            arena.alloc_slice_copy(&[i as u32; 7]);
            if i % 100 == 0 {
                arena.alloc_slice_copy(&vec![i as u8; CHUNK + i]);
            }
        }
        let stats = pool.stats();
        assert!(stats.chunks_free < stats.chunks_total);
        assert!(stats.large_allocs_live > 0);
        drop(arena);
        let stats = pool.stats();
        assert_eq!(stats.chunks_free, stats.chunks_total);
        assert_eq!(stats.large_allocs_live, 0);
        assert_eq!(stats.mapped_bytes, stats.chunks_total * CHUNK);
    }

    #[test]
    fn arenas_reuse_freed_chunks() {
        let pool = pool(8);
        let round = |pool: &Rc<ChunkPool>, round: usize| {
            let arenas: Vec<Arena> = (0..5).map(|_| Arena::new(Rc::clone(pool))).collect();
            for (k, arena) in arenas.iter().enumerate() {
                for i in 0..(k + 1) * 200 {
                    arena.alloc((round, k, i));
                }
            }
            // Drop in a different order each round.
            let mut arenas = arenas;
            arenas.rotate_left(round % 5);
            drop(arenas);
        };
        round(&pool, 0);
        let after_first = pool.stats();
        assert!(after_first.mapped_bytes > 0);
        for r in 1..scaled(200, 10) {
            round(&pool, r);
            let stats = pool.stats();
            assert_eq!(stats.mapped_bytes, after_first.mapped_bytes, "round {r}");
            assert_eq!(stats.chunks_free, stats.chunks_total);
        }
    }

    #[test]
    fn destructors_are_not_run() {
        struct Loud<'a>(&'a Cell<usize>);
        impl Drop for Loud<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let drops = Cell::new(0);
        let arena = Arena::new(pool(2));
        arena.alloc(Loud(&drops));
        arena.alloc([Loud(&drops), Loud(&drops)]);
        drop(arena);
        assert_eq!(drops.get(), 0);
    }

    #[test]
    #[should_panic(expected = "alignment 8192 is over the maximum of 4096")]
    fn rejects_alignment_over_a_page() {
        let arena = Arena::new(pool(2));
        arena.alloc_layout(Layout::from_size_align(16, 8192).unwrap());
    }

    #[test]
    fn zero_sized_values_are_aligned() {
        #[repr(align(256))]
        struct Aligned;
        let arena = Arena::new(pool(2));
        let a = arena.alloc(Aligned) as *mut Aligned;
        assert_eq!(a as usize % 256, 0);
        assert_eq!(arena.reserved_bytes(), 0);
    }

    #[test]
    #[cfg(not(miri))]
    fn big_chunks_work_too() {
        let pool = Rc::new(ChunkPool::new(1 << 20, 4));
        let arena = Arena::new(Rc::clone(&pool));
        let xs: Vec<&mut u64> = (0..300_000_u64).map(|i| arena.alloc(i)).collect();
        assert!(xs.iter().enumerate().all(|(i, x)| **x == i as u64));
        assert_eq!(arena.reserved_bytes(), 3 << 20);
    }
}
