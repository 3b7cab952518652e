//! A shard's pool of fixed-size arena chunks.
//!
//! The pool maps large anonymous regions (`chunks_per_region * chunk_size`
//! bytes each, with [`memmap2::MmapMut::map_anon`]) lazily, the first time a
//! chunk is wanted and none is free, and carves each region into chunks. A
//! chunk given back goes onto a LIFO free list and is handed to the next
//! arena that asks, so a shard whose processes come and go settles at the
//! peak number of chunks it ever needed and stops mapping. Regions are
//! unmapped only when the pool itself drops.
//!
//! Allocations bigger than a chunk do not come from regions: each gets its own
//! mapping ([`ChunkPool::map_large`]), unmapped when its arena drops.
//!
//! # Invariants
//!
//! These are what [`Arena`](super::Arena) relies on; the pool keeps them.
//!
//! - **P1. Alignment.** Every region starts at an address aligned to
//!   [`MAP_ALIGN`] (mmap returns page-aligned addresses; the Miri backing asks
//!   for that alignment), and `chunk_size` is a power of two of at least
//!   [`MAP_ALIGN`], so every chunk start is aligned to [`MAP_ALIGN`]. Large
//!   mappings start aligned to [`MAP_ALIGN`] too.
//! - **P2. Lifetime.** A region stays mapped until the pool drops, so a chunk
//!   pointer stays valid for reads and writes of `chunk_size` bytes for as
//!   long as the pool that handed it out is alive.
//! - **P3. Exclusive ownership.** Each chunk of a region is, at any moment,
//!   either on the free list exactly once or owned by exactly one [`Chunk`]
//!   value (or its raw form, see [`Chunk::into_raw`]). [`Chunk`] is neither
//!   `Clone` nor `Copy`, and [`ChunkPool::release`] checks that a chunk comes
//!   from this pool, so safe code cannot put a foreign or duplicate chunk on
//!   the free list; only [`Chunk::from_raw`], which is `unsafe`, can forge one.
//!
//! # Miri
//!
//! Miri cannot run `mmap`, so under `cfg(miri)` a [`Region`] is backed by
//! `std::alloc::alloc_zeroed` with [`MAP_ALIGN`] alignment: exactly the
//! alignment the code may assume from mmap, no more, so Miri would catch code
//! that relied on more. The two `cfg`'d items are `Region::map` and, for Miri
//! only, `Region`'s `Drop`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Alignment of every region, chunk and large mapping: the smallest page size
/// of the platforms we run on. It is also the largest alignment an
/// [`Arena`](super::Arena) serves.
pub(crate) const MAP_ALIGN: usize = 4096;

/// A shard's pool of fixed-size arena chunks, carved from large anonymous
/// mmap'd regions ([`memmap2::MmapMut::map_anon`]).
///
/// One pool serves every [`Arena`](super::Arena) of a shard. It is
/// single-threaded: the shard shares it through an [`Rc`](std::rc::Rc), and it
/// is neither `Send` nor `Sync`. Nothing is mapped at construction; the first
/// region is mapped when the first arena allocates. Chunks released by dropped
/// arenas are reused before any new region is mapped.
///
/// # Examples
///
/// ```
/// use std::rc::Rc;
/// use foundation_sched::arena::{Arena, ChunkPool, PoolStats};
///
/// // 64 KiB chunks, mapped 32 at a time (2 MiB regions).
/// let pool = Rc::new(ChunkPool::new(64 * 1024, 32));
/// assert_eq!(pool.stats(), PoolStats::default()); // nothing mapped yet
///
/// let arena = Arena::new(Rc::clone(&pool));
/// arena.alloc(7_u32);
/// let stats = pool.stats();
/// assert_eq!(stats.mapped_bytes, 2 * 1024 * 1024);
/// assert_eq!(stats.chunks_total, 32);
/// assert_eq!(stats.chunks_free, 31);
///
/// drop(arena); // the process exited: its chunk goes back to the pool
/// assert_eq!(pool.stats().chunks_free, 32);
/// ```
///
/// The pool stays on its shard's thread:
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<foundation_sched::arena::ChunkPool>();
/// ```
pub struct ChunkPool {
    /// Distinguishes this pool's chunks from other pools' (P3).
    id: usize,
    chunk_size: usize,
    chunks_per_region: usize,
    /// `chunk_size * chunks_per_region`, checked for overflow in `new`.
    region_size: usize,
    /// Every region ever mapped; dropped (unmapped) with the pool (P2).
    regions: RefCell<Vec<Region>>,
    /// Start of every free chunk, each once (P3). Popped from the end.
    free: RefCell<Vec<NonNull<u8>>>,
    large_live: Cell<usize>,
    large_bytes: Cell<usize>,
}

/// A snapshot of a [`ChunkPool`]'s counters, from [`ChunkPool::stats`].
///
/// # Examples
///
/// ```
/// use std::rc::Rc;
/// use foundation_sched::arena::{Arena, ChunkPool};
///
/// let pool = Rc::new(ChunkPool::new(4096, 8));
/// let arena = Arena::new(Rc::clone(&pool));
/// arena.alloc_slice_copy(&[0_u8; 10_000]); // more than a chunk: its own mapping
///
/// let stats = pool.stats();
/// assert_eq!(stats.large_allocs_live, 1);
/// assert_eq!(stats.chunks_total, 0); // no chunk was needed
/// assert_eq!(stats.mapped_bytes, 12 * 1024); // 10 000 bytes, rounded to pages
///
/// drop(arena);
/// assert_eq!(pool.stats().large_allocs_live, 0);
/// assert_eq!(pool.stats().mapped_bytes, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes currently mapped: every region, plus every live large mapping
    /// (rounded up to 4 KiB).
    pub mapped_bytes: usize,
    /// Chunks carved from all regions, free or in use.
    pub chunks_total: usize,
    /// Chunks on the free list, ready for the next arena.
    pub chunks_free: usize,
    /// Large allocations (bigger than a chunk) not yet given back.
    pub large_allocs_live: usize,
}

impl ChunkPool {
    /// Creates an empty pool of `chunk_size`-byte chunks that maps
    /// `chunks_per_region` chunks at a time. Maps nothing until the first
    /// chunk is acquired.
    ///
    /// # Panics
    ///
    /// If `chunk_size` is not a power of two of at least 4096, if
    /// `chunks_per_region` is zero, or if a region's size overflows `usize`.
    ///
    /// # Examples
    ///
    /// ```
    /// use foundation_sched::arena::ChunkPool;
    ///
    /// let pool = ChunkPool::new(64 * 1024, 32);
    /// assert_eq!(pool.chunk_size(), 64 * 1024);
    /// assert_eq!(pool.stats().mapped_bytes, 0);
    /// ```
    ///
    /// ```should_panic
    /// // Not a power of two.
    /// foundation_sched::arena::ChunkPool::new(6000, 32);
    /// ```
    pub fn new(chunk_size: usize, chunks_per_region: usize) -> ChunkPool {
        assert!(
            chunk_size.is_power_of_two() && chunk_size >= MAP_ALIGN,
            "ChunkPool::new: chunk_size must be a power of two >= {MAP_ALIGN}, got {chunk_size}"
        );
        assert!(
            chunks_per_region > 0,
            "ChunkPool::new: chunks_per_region must be at least 1"
        );
        let region_size = chunk_size
            .checked_mul(chunks_per_region)
            .filter(|&size| size <= isize::MAX as usize)
            .unwrap_or_else(|| {
                panic!(
                    "ChunkPool::new: a region of {chunks_per_region} chunks of {chunk_size} bytes \
                     is too large"
                )
            });
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        ChunkPool {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            chunk_size,
            chunks_per_region,
            region_size,
            regions: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            large_live: Cell::new(0),
            large_bytes: Cell::new(0),
        }
    }

    /// The size in bytes of every chunk this pool hands out.
    ///
    /// # Examples
    ///
    /// ```
    /// use foundation_sched::arena::ChunkPool;
    ///
    /// assert_eq!(ChunkPool::new(8192, 4).chunk_size(), 8192);
    /// ```
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The pool's counters now: mapped bytes, chunks carved and free, live
    /// large allocations.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use foundation_sched::arena::{Arena, ChunkPool};
    ///
    /// let pool = Rc::new(ChunkPool::new(4096, 16));
    /// let arenas: Vec<Arena> = (0..3).map(|_| Arena::new(Rc::clone(&pool))).collect();
    /// for arena in &arenas {
    ///     arena.alloc_str("hello");
    /// }
    /// let stats = pool.stats();
    /// assert_eq!(stats.chunks_total - stats.chunks_free, 3); // one chunk per arena
    /// ```
    pub fn stats(&self) -> PoolStats {
        let regions = self.regions.borrow().len();
        PoolStats {
            mapped_bytes: regions * self.region_size + self.large_bytes.get(),
            chunks_total: regions * self.chunks_per_region,
            chunks_free: self.free.borrow().len(),
            large_allocs_live: self.large_live.get(),
        }
    }

    /// Takes a chunk off the free list, or maps a new region and carves it
    /// when the list is empty.
    ///
    /// # Panics
    ///
    /// If the region cannot be mapped.
    pub(crate) fn acquire(&self) -> Chunk {
        // Bind first: the `RefMut` must be gone before `map_region` borrows
        // the free list again.
        let popped = self.free.borrow_mut().pop();
        let ptr = match popped {
            Some(ptr) => ptr,
            None => self.map_region(),
        };
        Chunk {
            ptr,
            size: self.chunk_size,
            pool: self.id,
        }
    }

    /// Puts a chunk back on the free list. Its contents are left as they are.
    ///
    /// # Panics
    ///
    /// If `chunk` was handed out by another pool.
    pub(crate) fn release(&self, chunk: Chunk) {
        assert_eq!(
            chunk.pool, self.id,
            "ChunkPool::release: the chunk belongs to another pool"
        );
        debug_assert_eq!(chunk.size, self.chunk_size);
        self.free.borrow_mut().push(chunk.ptr);
    }

    /// Maps `size` bytes (rounded up to [`MAP_ALIGN`]) of their own for an
    /// allocation too big for a chunk. The mapping starts aligned to
    /// [`MAP_ALIGN`] (P1) and is counted in [`PoolStats`] until it is given to
    /// [`ChunkPool::unmap_large`].
    ///
    /// # Panics
    ///
    /// If `size` is zero or the mapping fails.
    pub(crate) fn map_large(&self, size: usize) -> LargeMapping {
        assert!(size > 0, "ChunkPool::map_large: empty mapping");
        let len = size
            .checked_next_multiple_of(MAP_ALIGN)
            .filter(|&len| len <= isize::MAX as usize)
            .unwrap_or_else(|| panic!("Arena: an allocation of {size} bytes is too large"));
        let region = Region::map(len).unwrap_or_else(|err| {
            panic!("Arena: failed to map {len} bytes for a large allocation: {err}")
        });
        self.large_live.set(self.large_live.get() + 1);
        self.large_bytes.set(self.large_bytes.get() + len);
        LargeMapping {
            region,
            pool: self.id,
        }
    }

    /// Unmaps a large allocation and stops counting it.
    pub(crate) fn unmap_large(&self, mapping: LargeMapping) {
        debug_assert_eq!(mapping.pool, self.id);
        self.large_live.set(self.large_live.get() - 1);
        self.large_bytes
            .set(self.large_bytes.get() - mapping.region.len);
        drop(mapping);
    }

    /// Maps a region, puts all its chunks but the first on the free list and
    /// returns the first.
    #[cold]
    #[inline(never)]
    fn map_region(&self) -> NonNull<u8> {
        let region = Region::map(self.region_size).unwrap_or_else(|err| {
            panic!(
                "ChunkPool: failed to map a region of {} bytes: {err}",
                self.region_size
            )
        });
        let base = region.ptr;
        // P1: everything else assumes this; it is checked once per region.
        assert_eq!(
            base.as_ptr() as usize % MAP_ALIGN,
            0,
            "ChunkPool: the region is not {MAP_ALIGN}-aligned"
        );
        let chunk_at = |index: usize| {
            // In bounds of the region (index < chunks_per_region), hence
            // non-null; `wrapping_add` keeps the region's provenance.
            NonNull::new(base.as_ptr().wrapping_add(index * self.chunk_size))
                .expect("a chunk inside a mapping is not null")
        };
        // Reversed so that chunks are popped in address order.
        self.free
            .borrow_mut()
            .extend((1..self.chunks_per_region).rev().map(chunk_at));
        self.regions.borrow_mut().push(region);
        base
    }
}

impl fmt::Debug for ChunkPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkPool")
            .field("chunk_size", &self.chunk_size)
            .field("chunks_per_region", &self.chunks_per_region)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Ownership of one chunk of a [`ChunkPool`]: `size()` bytes starting at
/// `as_ptr()`, aligned to [`MAP_ALIGN`], readable and writable while the pool
/// is alive (P1, P2). Give it back with [`ChunkPool::release`]; dropping it
/// instead leaks the chunk until the pool drops.
#[derive(Debug)]
pub(crate) struct Chunk {
    ptr: NonNull<u8>,
    size: usize,
    /// The id of the pool that handed it out.
    pool: usize,
}

impl Chunk {
    /// The chunk's first byte.
    #[cfg(test)]
    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The chunk's size in bytes: its pool's `chunk_size`.
    #[cfg(test)]
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Gives up the `Chunk` value, keeping ownership of the memory in the
    /// returned pointer (the chunk's first byte), for storage in places that
    /// hold only a pointer. Turn it back with [`Chunk::from_raw`].
    pub(crate) fn into_raw(self) -> NonNull<u8> {
        self.ptr
    }

    /// Rebuilds the chunk that [`Chunk::into_raw`] turned into `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must have been returned by [`Chunk::into_raw`] for a chunk that
    /// `pool` handed out, and no other `Chunk` (or pointer later passed to
    /// `from_raw`) may own the same chunk: each `into_raw` is undone at most
    /// once. Otherwise the pool could hand the same memory to two owners.
    pub(crate) unsafe fn from_raw(pool: &ChunkPool, ptr: NonNull<u8>) -> Chunk {
        Chunk {
            ptr,
            size: pool.chunk_size,
            pool: pool.id,
        }
    }
}

/// A mapping of its own for one allocation bigger than a chunk, from
/// [`ChunkPool::map_large`]. Unmapped when dropped; give it to
/// [`ChunkPool::unmap_large`] so the pool's counters follow.
pub(crate) struct LargeMapping {
    region: Region,
    pool: usize,
}

impl LargeMapping {
    /// The mapping's first byte, aligned to [`MAP_ALIGN`] (P1); valid for
    /// reads and writes of `size()` bytes while the mapping lives.
    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        self.region.ptr
    }

    /// The mapping's length in bytes (the request rounded up to [`MAP_ALIGN`]).
    pub(crate) fn size(&self) -> usize {
        self.region.len
    }
}

/// An anonymous, zero-filled, read-write mapping of `len` bytes starting at
/// `ptr` (aligned to [`MAP_ALIGN`]), released when dropped.
struct Region {
    ptr: NonNull<u8>,
    len: usize,
    /// Owns the mapping; `ptr` was taken from it. Moving the `MmapMut` does
    /// not move the mapped memory.
    #[cfg(not(miri))]
    _map: memmap2::MmapMut,
}

impl Region {
    /// Maps `len` (> 0) bytes.
    #[cfg(not(miri))]
    fn map(len: usize) -> io::Result<Region> {
        let mut map = memmap2::MmapMut::map_anon(len)?;
        let ptr = NonNull::new(map.as_mut_ptr())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Region {
            ptr,
            len,
            _map: map,
        })
    }

    /// Allocates `len` (> 0) zeroed bytes aligned to [`MAP_ALIGN`], standing
    /// in for mmap under Miri.
    #[cfg(miri)]
    fn map(len: usize) -> io::Result<Region> {
        assert!(len > 0, "Region::map: empty region");
        let layout = std::alloc::Layout::from_size_align(len, MAP_ALIGN)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `layout` has a non-zero size (asserted above).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Region { ptr, len })
    }
}

#[cfg(miri)]
impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated by `Region::map` with exactly this
        // layout (it succeeded there, so it is valid here), and a `Region` is
        // dropped once.
        unsafe {
            std::alloc::dealloc(
                self.ptr.as_ptr(),
                std::alloc::Layout::from_size_align_unchecked(self.len, MAP_ALIGN),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 4096;

    #[test]
    fn new_maps_nothing() {
        let pool = ChunkPool::new(CHUNK, 8);
        assert_eq!(pool.stats(), PoolStats::default());
        assert_eq!(pool.chunk_size(), CHUNK);
    }

    #[test]
    fn acquire_maps_one_region_at_a_time() {
        let pool = ChunkPool::new(CHUNK, 4);
        let first = pool.acquire();
        assert_eq!(first.size(), CHUNK);
        assert_eq!(
            pool.stats(),
            PoolStats {
                mapped_bytes: 4 * CHUNK,
                chunks_total: 4,
                chunks_free: 3,
                large_allocs_live: 0,
            }
        );
        let mut held: Vec<Chunk> = (0..3).map(|_| pool.acquire()).collect();
        assert_eq!(pool.stats().chunks_free, 0);
        assert_eq!(pool.stats().mapped_bytes, 4 * CHUNK);
        held.push(pool.acquire()); // the fifth needs a second region
        assert_eq!(pool.stats().mapped_bytes, 8 * CHUNK);
        assert_eq!(pool.stats().chunks_total, 8);
        assert_eq!(pool.stats().chunks_free, 3);
        pool.release(first);
        held.into_iter().for_each(|chunk| pool.release(chunk));
        assert_eq!(pool.stats().chunks_free, 8);
    }

    #[test]
    fn chunks_are_aligned_disjoint_and_writable() {
        let pool = ChunkPool::new(CHUNK, 3);
        let chunks: Vec<Chunk> = (0..7).map(|_| pool.acquire()).collect();
        let mut starts: Vec<usize> = chunks
            .iter()
            .map(|c| c.as_ptr().as_ptr() as usize)
            .collect();
        starts.sort_unstable();
        for pair in starts.windows(2) {
            assert!(pair[1] - pair[0] >= CHUNK, "chunks overlap");
        }
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.as_ptr().as_ptr() as usize % MAP_ALIGN, 0);
            let p = chunk.as_ptr().as_ptr();
            // SAFETY: the chunk is ours, `CHUNK` bytes long and mapped while
            // `pool` lives (P2, P3); offsets 0 and CHUNK - 1 are in bounds.
            unsafe {
                p.write(i as u8);
                p.add(CHUNK - 1).write(!(i as u8));
            }
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let p = chunk.as_ptr().as_ptr();
            // SAFETY: as above; both bytes were written.
            let (first, last) = unsafe { (p.read(), p.add(CHUNK - 1).read()) };
            assert_eq!((first, last), (i as u8, !(i as u8)));
        }
        chunks.into_iter().for_each(|chunk| pool.release(chunk));
    }

    #[test]
    fn released_chunks_are_reused_before_mapping() {
        let pool = ChunkPool::new(CHUNK, 2);
        let a = pool.acquire();
        let b = pool.acquire();
        let b_ptr = b.as_ptr();
        let mapped = pool.stats().mapped_bytes;
        pool.release(b);
        let again = pool.acquire();
        assert_eq!(again.as_ptr(), b_ptr, "the free list is LIFO");
        assert_eq!(pool.stats().mapped_bytes, mapped);
        pool.release(a);
        pool.release(again);
    }

    #[test]
    fn raw_round_trip_keeps_the_chunk() {
        let pool = ChunkPool::new(CHUNK, 2);
        let chunk = pool.acquire();
        let ptr = chunk.as_ptr();
        let raw = chunk.into_raw();
        // SAFETY: `raw` came from `into_raw` of a chunk of `pool`, once.
        let chunk = unsafe { Chunk::from_raw(&pool, raw) };
        assert_eq!(chunk.as_ptr(), ptr);
        pool.release(chunk);
        assert_eq!(pool.stats().chunks_free, 2);
    }

    #[test]
    #[should_panic(expected = "belongs to another pool")]
    fn release_rejects_a_foreign_chunk() {
        let a = ChunkPool::new(CHUNK, 2);
        let b = ChunkPool::new(CHUNK, 2);
        b.release(a.acquire());
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn rejects_chunk_size_not_a_power_of_two() {
        ChunkPool::new(3 * 4096, 2);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn rejects_chunk_size_below_a_page() {
        ChunkPool::new(2048, 2);
    }

    #[test]
    #[should_panic(expected = "chunks_per_region")]
    fn rejects_empty_regions() {
        ChunkPool::new(CHUNK, 0);
    }

    #[test]
    fn large_mappings_are_counted_until_unmapped() {
        let pool = ChunkPool::new(CHUNK, 2);
        let big = pool.map_large(3 * CHUNK + 1);
        assert_eq!(big.size(), 4 * CHUNK);
        assert_eq!(big.as_ptr().as_ptr() as usize % MAP_ALIGN, 0);
        assert_eq!(pool.stats().large_allocs_live, 1);
        assert_eq!(pool.stats().mapped_bytes, 4 * CHUNK);
        assert_eq!(pool.stats().chunks_total, 0);
        pool.unmap_large(big);
        assert_eq!(pool.stats(), PoolStats::default());
    }
}
