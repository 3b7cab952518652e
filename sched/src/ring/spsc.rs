//! A bounded single-producer single-consumer ring.
//!
//! Invariants:
//! * `head` (next slot to read) is written only by the [`Consumer`], `tail`
//!   (next slot to write) only by the [`Producer`]; both only grow (they
//!   wrap as `usize`, and slots are indexed by `position & mask`).
//! * Slots in `head..tail` hold initialized values; all others are
//!   uninitialized. `tail - head <= capacity` always.
//! * The producer publishes a slot with a release store of `tail` after
//!   writing it; the consumer reads `tail` with acquire before reading the
//!   slot. The consumer hands slots back with a release store of `head`
//!   after moving their values out — once per batch ([`Consumer::release`]),
//!   not once per value, so a producer waiting on a full ring does not pull
//!   the `head` cache line across cores for every slot; the producer reads
//!   `head` with acquire before overwriting.
//! * The consumer's local `head` may run ahead of the shared one; the
//!   shared one is what the producer and `Drop` see, so the consumer
//!   publishes it when it drops.
//! * Each side caches the other side's index and re-reads it only when the
//!   cache says the ring is full (producer) or empty (consumer).

use std::mem::MaybeUninit;

use super::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

/// Makes a ring with room for `capacity` values (rounded up to a power of
/// two) and returns its two ends.
pub(crate) fn ring<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity.max(2).next_power_of_two();
    let slots = (0..capacity)
        .map(|_| CacheAligned(UnsafeCell::new(MaybeUninit::uninit())))
        .collect();
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicUsize::new(0)),
        tail: CachePadded(AtomicUsize::new(0)),
        slots,
        mask: capacity - 1,
    });
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            cached_head: 0,
        },
        Consumer {
            shared,
            head: 0,
            cached_tail: 0,
        },
    )
}

/// The writing end of a ring. Owned by the source shard.
pub(crate) struct Producer<T> {
    shared: Arc<Shared<T>>,
    tail: usize,
    cached_head: usize,
}

/// The reading end of a ring. Owned by the destination shard.
pub(crate) struct Consumer<T> {
    shared: Arc<Shared<T>>,
    head: usize,
    cached_tail: usize,
}

struct Shared<T> {
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
    slots: Box<[CacheAligned<UnsafeCell<MaybeUninit<T>>>]>,
    mask: usize,
}

/// Starts every slot on its own cache line, so the producer writing one
/// slot does not steal the line of the slot the consumer is reading.
#[repr(align(64))]
struct CacheAligned<T>(T);

impl<T> std::ops::Deref for CacheAligned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Keeps the two indices on separate cache lines, so producer and consumer
/// do not invalidate each other's line on every operation.
#[repr(align(128))]
struct CachePadded<T>(T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

// SAFETY: the ring moves `T` values from one thread to another, so it is
// `Send`/`Sync` exactly when `T: Send`. Each slot is accessed by one side at
// a time, as the module invariants describe.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: see above; shared access is mediated by the head/tail protocol.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Producer<T> {
    /// Appends `value`, or gives it back when the ring is full.
    pub(crate) fn push(&mut self, value: T) -> Result<(), T> {
        let capacity = self.shared.mask + 1;
        if self.tail.wrapping_sub(self.cached_head) == capacity {
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.cached_head) == capacity {
                return Err(value);
            }
        }
        let slot = &self.shared.slots[self.tail & self.shared.mask];
        // SAFETY: `tail - head < capacity`, so this slot is outside
        // `head..tail`: the consumer does not read it, and it holds no live
        // value (it was never written, or the consumer moved it out before
        // publishing the `head` we read with acquire).
        slot.with_mut(|p| unsafe { (*p).write(value) });
        self.tail = self.tail.wrapping_add(1);
        self.shared.tail.store(self.tail, Ordering::Release);
        Ok(())
    }
}

impl<T> Consumer<T> {
    /// Removes the oldest value, if any.
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.head == self.cached_tail {
            self.cached_tail = self.shared.tail.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        let slot = &self.shared.slots[self.head & self.shared.mask];
        // SAFETY: `head < tail` as published by the producer with release
        // and read here with acquire, so the slot holds an initialized value
        // that the producer will not touch until `head` moves past it. We
        // move it out exactly once, then advance `head`.
        let value = slot.with_mut(|p| unsafe { (*p).assume_init_read() });
        self.head = self.head.wrapping_add(1);
        Some(value)
    }

    /// Hands the slots popped so far back to the producer.
    pub(crate) fn release(&mut self) {
        self.shared.head.store(self.head, Ordering::Release);
    }

    /// Whether the ring looks empty to the consumer right now. With a
    /// `SeqCst` fence before it, this is the consumer's half of the parking
    /// handshake described in the scheduler.
    pub(crate) fn is_empty(&self) -> bool {
        self.head == self.shared.tail.load(Ordering::Acquire)
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // `Shared::drop` drops what lies between the shared indices; the
        // values popped since the last release are gone already.
        self.release();
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        let mut position = head;
        while position != tail {
            let slot = &self.slots[position & self.mask];
            // SAFETY: both ends are gone (this is the last `Arc`), and the
            // slots in `head..tail` hold initialized values never moved out.
            slot.with_mut(|p| unsafe { (*p).assume_init_drop() });
            position = position.wrapping_add(1);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn values_come_out_in_order_and_full_is_refused() {
        let (mut tx, mut rx) = ring(4);
        for i in 0..4 {
            tx.push(i).unwrap();
        }
        assert_eq!(tx.push(99), Err(99));
        assert_eq!(rx.pop(), Some(0));
        assert_eq!(
            tx.push(99),
            Err(99),
            "a popped slot is not free until released"
        );
        rx.release();
        tx.push(4).unwrap();
        let rest: Vec<_> = std::iter::from_fn(|| rx.pop()).collect();
        assert_eq!(rest, vec![1, 2, 3, 4]);
        assert!(rx.is_empty());
    }

    #[test]
    fn indices_wrap_many_times() {
        let (mut tx, mut rx) = ring(2);
        for i in 0..1000u32 {
            tx.push(i).unwrap();
            assert_eq!(rx.pop(), Some(i));
            rx.release();
        }
    }

    #[test]
    fn values_left_in_the_ring_are_dropped_once() {
        let counter = Rc::new(());
        {
            let (mut tx, mut rx) = ring(8);
            for _ in 0..5 {
                tx.push(counter.clone()).unwrap();
            }
            drop(rx.pop());
            assert_eq!(Rc::strong_count(&counter), 5);
        }
        assert_eq!(Rc::strong_count(&counter), 1);
    }

    #[test]
    fn two_threads_transfer_every_value_in_order() {
        let count: u64 = if cfg!(miri) { 200 } else { 200_000 };
        let (mut tx, mut rx) = ring(64);
        let producer = std::thread::spawn(move || {
            for i in 0..count {
                let mut value = Box::new(i);
                loop {
                    match tx.push(value) {
                        Ok(()) => break,
                        Err(back) => {
                            value = back;
                            std::thread::yield_now();
                        }
                    }
                }
            }
        });
        let mut expected = 0;
        while expected < count {
            match rx.pop() {
                Some(value) => {
                    assert_eq!(*value, expected);
                    expected += 1;
                }
                None => {
                    rx.release();
                    std::thread::yield_now();
                }
            }
        }
        producer.join().unwrap();
        assert!(rx.pop().is_none());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    /// Every interleaving of a producer pushing three values through a ring
    /// of two slots and a consumer popping them: nothing is lost,
    /// duplicated, reordered or read uninitialized, and a value still in the
    /// ring when both ends drop is dropped.
    #[test]
    fn loom_ring_transfers_in_order() {
        loom::model(|| {
            let (mut tx, mut rx) = ring::<loom::sync::Arc<u32>>(2);
            let producer = loom::thread::spawn(move || {
                for i in 0..3 {
                    let mut value = loom::sync::Arc::new(i);
                    loop {
                        match tx.push(value) {
                            Ok(()) => break,
                            Err(back) => {
                                value = back;
                                loom::thread::yield_now();
                            }
                        }
                    }
                }
            });
            let mut seen = 0;
            while seen < 2 {
                match rx.pop() {
                    Some(value) => {
                        assert_eq!(*value, seen);
                        seen += 1;
                        rx.release();
                    }
                    None => loom::thread::yield_now(),
                }
            }
            producer.join().unwrap();
            // The third value is either in the ring or already popped.
            if let Some(value) = rx.pop() {
                assert_eq!(*value, 2);
            }
        });
    }
}
