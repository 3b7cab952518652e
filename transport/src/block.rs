//! Receive blocks: the buffers received messages are read from in place,
//! and the count of the messages that still point into each.
//!
//! A connection reads a batch of frames into a block and hands each message
//! in it to its process as a [`Remote`](crate::Remote) that points into the
//! block. When the last of them is dropped the block is freed and its bytes
//! are reported consumed, which is the credit its sender gets back.
//!
//! With an `Arc`, every message would cost an atomic increment where it is
//! made, on the connection's shard, and an atomic decrement where it is
//! dropped, on the receiving process's shard, and the count's cache line
//! would cross between the two cores twice per message. With 64-byte
//! messages that was the largest cost of the receiving side. So the count
//! here moves in bulk:
//!
//! - a run of messages for one process takes its references with one
//!   addition ([`Block::share`]);
//! - a process that drops messages while it is polled owes their
//!   references to its thread, which gives them back with one subtraction
//!   per block when the poll ends ([`coop::at_poll_end`]), or earlier when
//!   it drops a message of another block. Outside a poll a drop gives its
//!   reference back at once.
//!
//! Credit therefore returns when the poll that dropped the messages ends,
//! not at each drop: at most one poll later.
//!
//! # Invariants
//!
//! - `Shared::refs` is the number of [`Block`] values pointing at the
//!   shared part, plus the references this or any thread owes (`OWED`),
//!   plus those a live [`Shares`] has not handed out yet.
//! - The shared part is freed once, by whoever takes `refs` to zero, after
//!   an acquire fence: every other holder's last use happens before it.
//! - Its bytes are written before the block is made and only read after.

#![allow(unsafe_code)] // A reference count that moves in bulk; see the invariants above.

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{self, AtomicUsize, Ordering};
use std::sync::Arc;

use foundation_sched::coop;
use rkyv::util::AlignedVec;

use crate::frame::PAYLOAD_ALIGN;
use crate::inbound::Feedback;

/// A counted reference to an immutable receive buffer.
pub(crate) struct Block {
    shared: NonNull<Shared>,
}

struct Shared {
    refs: AtomicUsize,
    bytes: AlignedVec<PAYLOAD_ALIGN>,
    /// Frame bytes this block accounts for, returned as credit when freed.
    frame_bytes: u64,
    feedback: Arc<Feedback>,
}

// SAFETY: a `Block` only reads its shared part, whose fields are `Send`
// and `Sync`, and changes the count atomically, so it may be moved to and
// used from any thread, as an `Arc<Shared>` could.
unsafe impl Send for Block {}
// SAFETY: as for `Send`: `&Block` gives only reads and atomic count changes.
unsafe impl Sync for Block {}

impl Block {
    /// Makes `bytes` a block: the only reference to it, freed (and its
    /// `frame_bytes` reported consumed to `feedback`) when the last one is
    /// dropped.
    pub(crate) fn new(
        bytes: AlignedVec<PAYLOAD_ALIGN>,
        frame_bytes: u64,
        feedback: Arc<Feedback>,
    ) -> Block {
        let shared = Box::new(Shared {
            refs: AtomicUsize::new(1),
            bytes,
            frame_bytes,
            feedback,
        });
        Block {
            shared: NonNull::from(Box::leak(shared)),
        }
    }

    fn shared(&self) -> &Shared {
        // SAFETY: this block is one of the `refs`, so the count is not zero
        // and the shared part is not freed while `self` lives.
        unsafe { self.shared.as_ref() }
    }

    /// The buffer's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.shared().bytes
    }

    /// Takes `count` references at once, for [`Shares::take`] to hand out.
    pub(crate) fn share(&self, count: usize) -> Shares<'_> {
        if count > 0 {
            self.add(count);
        }
        Shares {
            block: self,
            left: count,
        }
    }

    fn add(&self, count: usize) {
        // Relaxed, as `Arc::clone`: a new reference is made from an
        // existing one, which keeps the block alive meanwhile.
        let previous = self.shared().refs.fetch_add(count, Ordering::Relaxed);
        if previous > isize::MAX as usize {
            // As `Arc`: a count this high means leaked references; going on
            // could wrap it and free a block in use.
            std::process::abort();
        }
    }
}

impl Clone for Block {
    fn clone(&self) -> Block {
        self.add(1);
        Block {
            shared: self.shared,
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        owe(self.shared);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.feedback.consume(self.frame_bytes);
        self.feedback.recycle(std::mem::take(&mut self.bytes));
    }
}

/// References to a block taken in advance by [`Block::share`]; those not
/// handed out are given back when it is dropped.
pub(crate) struct Shares<'a> {
    block: &'a Block,
    left: usize,
}

impl<'a> Shares<'a> {
    /// The block shared.
    pub(crate) fn block(&self) -> &'a Block {
        self.block
    }

    /// One more reference to the block: one taken in advance, or a new one
    /// once those are used up.
    pub(crate) fn take(&mut self) -> Block {
        if self.left == 0 {
            return self.block.clone();
        }
        self.left -= 1;
        Block {
            shared: self.block.shared,
        }
    }
}

impl Drop for Shares<'_> {
    fn drop(&mut self) {
        if self.left > 0 {
            // SAFETY: the `left` references were taken by `share` and not
            // handed out; they are given up here.
            unsafe { release(self.block.shared, self.left) };
        }
    }
}

/// References a thread owes: dropped during the running poll, all to one
/// block, given back when the poll ends.
#[derive(Clone, Copy)]
struct Owed {
    shared: Option<NonNull<Shared>>,
    count: usize,
}

thread_local! {
    static OWED: Cell<Owed> = const {
        Cell::new(Owed {
            shared: None,
            count: 0,
        })
    };
}

/// Gives up one reference to `shared`: owed until the poll ends if a
/// process is being polled on this thread, at once otherwise.
fn owe(shared: NonNull<Shared>) {
    let owed = OWED.try_with(|owed| {
        let held = owed.get();
        match held.shared {
            Some(block) if block == shared => {
                owed.set(Owed {
                    shared: Some(block),
                    count: held.count + 1,
                });
                true
            }
            Some(block) => {
                // Another block's turn: the one owed so far is paid now. The
                // cell is set first, as freeing a block runs code (its
                // feedback's waker) that may drop more blocks.
                owed.set(Owed {
                    shared: Some(shared),
                    count: 1,
                });
                // SAFETY: `held.count` references to `block` were owed by
                // this thread, and are no longer.
                unsafe { release(block, held.count) };
                true
            }
            None if coop::at_poll_end(pay_owed) => {
                owed.set(Owed {
                    shared: Some(shared),
                    count: 1,
                });
                true
            }
            None => false,
        }
    });
    if owed != Ok(true) {
        // SAFETY: the reference given up by the caller's drop, not owed.
        unsafe { release(shared, 1) };
    }
}

/// Gives back what this thread owes; runs when a poll ends.
fn pay_owed() {
    let Ok(held) = OWED.try_with(|owed| {
        owed.replace(Owed {
            shared: None,
            count: 0,
        })
    }) else {
        return;
    };
    if let Some(block) = held.shared {
        // SAFETY: the references owed by this thread, no longer owed.
        unsafe { release(block, held.count) };
    }
}

/// Subtracts `count` references from `shared`, and frees it if they were
/// the last.
///
/// # Safety
///
/// The caller owns `count` references to `shared` and gives them up: it
/// must not use them afterwards.
unsafe fn release(shared: NonNull<Shared>, count: usize) {
    // SAFETY: the caller's references keep the shared part alive until
    // this subtraction has taken them away.
    let refs = unsafe { &shared.as_ref().refs };
    // Release, as `Arc`'s drop: this holder's reads of the bytes happen
    // before whoever frees them.
    if refs.fetch_sub(count, Ordering::Release) != count {
        return;
    }
    atomic::fence(Ordering::Acquire);
    // SAFETY: the count reached zero, so no other reference exists, and
    // the shared part was made by `Box::new` in `Block::new`.
    drop(unsafe { Box::from_raw(shared.as_ptr()) });
}

#[cfg(test)]
mod tests {
    use super::*;

    use foundation_sched::Runtime;

    fn block(feedback: &Arc<Feedback>, frame_bytes: u64) -> Block {
        let mut bytes = AlignedVec::new();
        bytes.extend_from_slice(&[7; 64]);
        Block::new(bytes, frame_bytes, feedback.clone())
    }

    #[test]
    fn a_block_is_freed_with_its_last_reference_however_they_were_taken() {
        let feedback = Feedback::new(1, 4096);
        let batch = block(&feedback, 10);
        let mut shares = batch.share(3);
        let first = shares.take();
        let second = shares.take();
        drop(shares); // gives back the third
        let extra = {
            let mut shares = batch.share(1);
            shares.take();
            shares.take() // past those taken: a new one
        };
        let copy = first.clone();
        assert_eq!(copy.bytes(), &[7; 64]);
        for reference in [batch, first, second, extra] {
            drop(reference);
            assert_eq!(feedback.consumed(), 0, "a reference is left");
        }
        drop(copy);
        assert_eq!(feedback.consumed(), 10, "freed with the last");
    }

    #[test]
    fn references_from_other_threads_free_a_block_once() {
        let feedback = Feedback::new(1, 4096);
        let batch = block(&feedback, 5);
        let mut shares = batch.share(4);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let reference = shares.take();
                std::thread::spawn(move || assert_eq!(reference.bytes()[0], 7))
            })
            .collect();
        drop(shares);
        drop(batch);
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(feedback.consumed(), 5);
    }

    #[test]
    #[cfg_attr(miri, ignore)] // A runtime's threads and parking.
    fn a_process_gives_its_references_back_when_its_poll_ends() {
        let feedback = Feedback::new(1, 4096);
        let (a, b) = (block(&feedback, 1), block(&feedback, 100));
        let runtime = Runtime::builder().shards(1).build().unwrap();
        let watched = feedback.clone();
        let seen = runtime
            .block_on(move |cx: foundation_sched::Context<()>| async move {
                let mut seen = Vec::new();
                let (a2, b2) = (a.clone(), b.clone());
                drop(a);
                drop(a2);
                seen.push(watched.consumed()); // both of a's owed
                drop(b);
                seen.push(watched.consumed()); // a's paid: b's turn
                drop(b2);
                seen.push(watched.consumed());
                cx.yield_now().await;
                seen.push(watched.consumed()); // the poll ended
                seen
            })
            .unwrap();
        assert_eq!(seen, [0, 1, 1, 101]);
        runtime.shutdown();
    }
}
