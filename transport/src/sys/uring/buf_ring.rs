//! The provided-buffer ring: receive buffers the kernel picks from.
//!
//! A multishot receive does not name a buffer. It names a *buffer group*,
//! and each time data arrives the kernel takes the next buffer of that
//! group's ring, fills it and posts a completion carrying the buffer's id.
//! The buffer then belongs to the application until it puts the buffer
//! back on the ring.
//!
//! Two anonymous mappings make up the ring:
//!
//! - the *entries*: `count` slots of `struct io_uring_buf` (address,
//!   length, buffer id), page-aligned as the kernel requires. The 16-bit
//!   `resv` field of slot 0 doubles as the ring's *tail*, which only we
//!   write; the kernel keeps the head to itself;
//! - the *data*: `count` buffers of `size` bytes, buffer `id` at
//!   `id * size`.
//!
//! # Invariants
//!
//! 1. Every buffer id is in exactly one place: on the ring (the kernel may
//!    fill it at any time) or *held* (the kernel handed it to us in a
//!    completion and will not touch it until we put it back). `held`
//!    records which; the count of ids on the ring is `count - held`.
//! 2. We only read a held buffer ([`BufRing::bytes`]), so we never read
//!    memory the kernel may be writing.
//! 3. We only put back a held buffer ([`BufRing::give_back`]), once. So at
//!    most `count` ids are on the ring, the slot at `tail` is never one
//!    the kernel has yet to read, and writing it races with nothing.
//! 4. A slot is written completely before the tail that publishes it is
//!    stored, with release ordering (the kernel loads it with acquire).
//! 5. The mappings outlive the kernel's use of them: whoever registers the
//!    ring promises (see [`BufRing::register`]) to drop it only once no
//!    request that may select a buffer is in flight or yet to come, or else
//!    to leak it with [`std::mem::forget`].

#![allow(unsafe_code)] // Memory shared with the kernel; see the invariants above.

use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;

/// `struct io_uring_buf`, one slot of the ring (kernel ABI).
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    /// In slot 0: the ring's tail.
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<RawBuf>() == 16);

/// Byte offset of the tail (slot 0's `resv`) from the start of the ring.
const TAIL_OFFSET: usize = 14;

/// A provided-buffer ring of `count` buffers of `size` bytes.
pub(super) struct BufRing {
    entries: Mapping,
    data: Mapping,
    count: u16,
    size: u32,
    /// Our copy of the tail (the kernel only reads it).
    tail: u16,
    /// Which ids the kernel has handed to us (invariant 1).
    held: Vec<bool>,
    held_count: usize,
}

impl BufRing {
    /// Maps a ring of `count` buffers (a power of two, at most 32768) of
    /// `size` bytes each, all of them on the ring.
    pub(super) fn new(count: u16, size: u32) -> io::Result<BufRing> {
        if count == 0 || !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffers must be a power of two in 1..=32768 and recv_buffer_size non-zero",
            ));
        }
        let data_bytes = usize::from(count)
            .checked_mul(size as usize)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let entries = Mapping::new(usize::from(count) * std::mem::size_of::<RawBuf>())?;
        let data = Mapping::new(data_bytes)?;
        let mut ring = BufRing {
            entries,
            data,
            count,
            size,
            tail: 0,
            held: vec![true; usize::from(count)],
            held_count: usize::from(count),
        };
        for id in 0..count {
            ring.give_back(id);
        }
        Ok(ring)
    }

    /// Registers the ring with `submitter`'s io_uring as buffer group
    /// `group`.
    ///
    /// # Safety
    ///
    /// The kernel writes into the buffers on behalf of any request that
    /// selects from the group. `self` may be dropped only once no such
    /// request is in flight and none will be submitted any more; if that
    /// cannot be ensured, it must be leaked ([`std::mem::forget`]).
    pub(super) unsafe fn register(&self, submitter: &Submitter<'_>, group: u16) -> io::Result<()> {
        // SAFETY: the entries mapping holds `count` slots, page-aligned. The
        // kernel pins its pages while registered, and this function's
        // contract keeps the buffers it points to mapped as long as a
        // request may fill them.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.ptr.as_ptr() as u64,
                self.count,
                group,
                0,
            )
        }
    }

    /// How many buffers are on the ring, as far as completions reaped so far
    /// tell.
    /// Bytes in each buffer.
    pub(super) fn buffer_size(&self) -> usize {
        self.size as usize
    }

    pub(super) fn available(&self) -> usize {
        usize::from(self.count) - self.held_count
    }

    /// Records that a completion handed buffer `id` to us with `len` bytes
    /// in it. Fails, changing nothing, if the kernel's report makes no
    /// sense: an unknown id, one we already hold, or a length larger than
    /// the buffer.
    pub(super) fn take(&mut self, id: u16, len: usize) -> Result<(), BadBuffer> {
        let Some(held) = self.held.get_mut(usize::from(id)) else {
            return Err(BadBuffer);
        };
        if *held || len > self.size as usize {
            return Err(BadBuffer);
        }
        *held = true;
        self.held_count += 1;
        Ok(())
    }

    /// Bytes `start..end` of held buffer `id`; `None` if `id` is not held or
    /// the range is not within the buffer.
    pub(super) fn bytes(&self, id: u16, start: usize, end: usize) -> Option<&[u8]> {
        if !*self.held.get(usize::from(id))? || start > end || end > self.size as usize {
            return None;
        }
        let offset = usize::from(id) * self.size as usize + start;
        // SAFETY: `id < count` and `end <= size`, so the range lies within
        // the data mapping, which is initialised (zero-filled at mapping,
        // then written by the kernel). The buffer is held, so the kernel
        // does not write it until `give_back(id)`, which needs `&mut self`
        // and so cannot happen while the returned borrow lives (invariant 2).
        Some(unsafe { std::slice::from_raw_parts(self.data.ptr.as_ptr().add(offset), end - start) })
    }

    /// Puts held buffer `id` back on the ring for the kernel to fill. Does
    /// nothing if `id` is not held.
    pub(super) fn give_back(&mut self, id: u16) {
        match self.held.get_mut(usize::from(id)) {
            Some(held) if *held => *held = false,
            _ => return,
        }
        self.held_count -= 1;
        let slot = usize::from(self.tail & (self.count - 1));
        let entry = self.entries.ptr.as_ptr().cast::<RawBuf>();
        // SAFETY: `slot < count`, so the slot is within the entries mapping,
        // whose start is page-aligned, so the slot is aligned for `RawBuf`.
        // The slot is not one the kernel may read (invariant 3). Fields are
        // written one by one through raw pointers, leaving slot 0's `resv`
        // (the tail) alone.
        unsafe {
            let entry = entry.add(slot);
            ptr::addr_of_mut!((*entry).addr)
                .write(self.data.ptr.as_ptr() as u64 + u64::from(id) * u64::from(self.size));
            ptr::addr_of_mut!((*entry).len).write(self.size);
            ptr::addr_of_mut!((*entry).bid).write(id);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is slot 0's `resv` field, two bytes at an even
        // offset of a page-aligned mapping that lives as long as `self`.
        // The kernel reads it concurrently, hence the atomic store; release
        // ordering publishes the slot written above (invariant 4).
        let tail = unsafe {
            &*self
                .entries
                .ptr
                .as_ptr()
                .add(TAIL_OFFSET)
                .cast::<AtomicU16>()
        };
        tail.store(self.tail, Ordering::Release);
    }
}

/// A completion named a buffer that makes no sense.
#[derive(Debug)]
pub(super) struct BadBuffer;

// SAFETY: `BufRing` owns its mappings outright (nothing else holds their
// pointers but the kernel), so moving it to another thread moves sole
// access with it.
unsafe impl Send for BufRing {}

/// An anonymous, private, page-aligned mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing aliases nothing; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are those of a mapping made in
        // `Mapping::new` and not unmapped since; the owner of the ring
        // guarantees the kernel is done with it (invariant 5).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_move_between_the_ring_and_the_application() {
        let mut ring = BufRing::new(4, 16).unwrap();
        assert_eq!(ring.available(), 4);
        assert!(
            ring.bytes(1, 0, 4).is_none(),
            "a buffer on the ring is not readable"
        );
        ring.take(1, 8).unwrap();
        assert_eq!(ring.available(), 3);
        assert_eq!(ring.bytes(1, 0, 8).unwrap(), &[0; 8]);
        assert!(ring.take(1, 8).is_err(), "taken twice");
        assert!(ring.take(4, 8).is_err(), "no such id");
        assert!(ring.take(2, 17).is_err(), "longer than the buffer");
        assert!(ring.bytes(1, 0, 17).is_none());
        ring.give_back(1);
        ring.give_back(1);
        assert_eq!(ring.available(), 4);
        assert_eq!(ring.tail, 5);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(BufRing::new(0, 16).is_err());
        assert!(BufRing::new(3, 16).is_err());
        assert!(BufRing::new(4, 0).is_err());
    }
}
