//! A message of any type in a fixed-size slot, for carrying typed messages
//! through rings that carry every type.
//!
//! A value whose size and alignment fit the inline slot is stored in place;
//! a larger one is boxed and the box stored in place. Either way the value
//! travels with a static table of two functions made for its type: one that
//! moves it out and hands it to its destination ([`Deliver`]), and one that
//! drops it if it is never delivered.
//!
//! Invariants: `storage` holds exactly one initialized value of the type
//! (or `Box` of it) that `vtable` was made for, from construction until
//! `deliver` moves it out or `drop` drops it; never both.

use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop, MaybeUninit};

use crate::pid::Pid;

/// Where erased messages end up: implemented by the shard, which puts the
/// typed message into the mailbox of the process `to`.
pub(crate) trait Deliver {
    /// Hands `message` to the process `to`.
    fn deliver<T: Send + 'static>(&self, to: Pid, message: T);
}

/// A message of some `Send` type, erased to a fixed size.
pub(crate) struct ErasedMessage<C: 'static> {
    storage: MaybeUninit<Storage>,
    vtable: &'static VTable<C>,
}

/// Bytes stored inline: enough for a 64-byte message, so such messages
/// cross shards without an allocation.
const INLINE_BYTES: usize = 64;

#[repr(C, align(8))]
struct Storage([u8; INLINE_BYTES]);

struct VTable<C> {
    /// Moves the value out of the storage and delivers it.
    deliver: unsafe fn(*mut u8, &C, Pid),
    /// Drops the value in the storage.
    drop: unsafe fn(*mut u8),
}

impl<C: Deliver + 'static> ErasedMessage<C> {
    /// Erases `value`.
    pub(crate) fn new<T: Send + 'static>(value: T) -> ErasedMessage<C> {
        let mut storage = MaybeUninit::<Storage>::uninit();
        let vtable = if fits_inline::<T>() {
            // SAFETY: `T` fits the storage in size and alignment (checked
            // just above), and the storage is uninitialized and ours.
            unsafe { storage.as_mut_ptr().cast::<T>().write(value) };
            &Inline::<T, C>::VTABLE
        } else {
            // SAFETY: a `Box<T>` is one pointer, which fits the storage.
            unsafe { storage.as_mut_ptr().cast::<Box<T>>().write(Box::new(value)) };
            &Boxed::<T, C>::VTABLE
        };
        ErasedMessage { storage, vtable }
    }

    /// Hands the message to `to` through `destination`.
    pub(crate) fn deliver(self, destination: &C, to: Pid) {
        let mut this = ManuallyDrop::new(self);
        let vtable = this.vtable;
        // SAFETY: the storage holds the value `vtable` was made for (module
        // invariant); `ManuallyDrop` keeps our `Drop` from dropping it again
        // after `deliver` has moved it out.
        unsafe { (vtable.deliver)(this.storage.as_mut_ptr().cast(), destination, to) }
    }
}

impl<C: 'static> Drop for ErasedMessage<C> {
    fn drop(&mut self) {
        // SAFETY: the value was never delivered (delivery forgets `self`),
        // so the storage still holds the value `vtable` was made for.
        unsafe { (self.vtable.drop)(self.storage.as_mut_ptr().cast()) }
    }
}

// SAFETY: an `ErasedMessage` is only ever made from a `T: Send` (see
// `new`), and the vtable is a table of plain function pointers.
unsafe impl<C: 'static> Send for ErasedMessage<C> {}

const fn fits_inline<T>() -> bool {
    mem::size_of::<T>() <= mem::size_of::<Storage>()
        && mem::align_of::<T>() <= mem::align_of::<Storage>()
}

struct Inline<T, C>(PhantomData<(T, C)>);

impl<T: Send + 'static, C: Deliver + 'static> Inline<T, C> {
    const VTABLE: VTable<C> = VTable {
        deliver: Self::deliver,
        drop: Self::drop,
    };

    /// # Safety
    /// `storage` holds an initialized `T`, which this moves out.
    unsafe fn deliver(storage: *mut u8, destination: &C, to: Pid) {
        // SAFETY: the caller guarantees an initialized `T` at `storage`.
        let value = unsafe { storage.cast::<T>().read() };
        destination.deliver(to, value);
    }

    /// # Safety
    /// `storage` holds an initialized `T`, which this drops.
    unsafe fn drop(storage: *mut u8) {
        // SAFETY: the caller guarantees an initialized `T` at `storage`.
        unsafe { storage.cast::<T>().drop_in_place() }
    }
}

struct Boxed<T, C>(PhantomData<(T, C)>);

impl<T: Send + 'static, C: Deliver + 'static> Boxed<T, C> {
    const VTABLE: VTable<C> = VTable {
        deliver: Self::deliver,
        drop: Self::drop,
    };

    /// # Safety
    /// `storage` holds an initialized `Box<T>`, which this moves out.
    unsafe fn deliver(storage: *mut u8, destination: &C, to: Pid) {
        // SAFETY: the caller guarantees an initialized `Box<T>` there.
        let value = unsafe { storage.cast::<Box<T>>().read() };
        destination.deliver(to, *value);
    }

    /// # Safety
    /// `storage` holds an initialized `Box<T>`, which this drops.
    unsafe fn drop(storage: *mut u8) {
        // SAFETY: the caller guarantees an initialized `Box<T>` there.
        unsafe { storage.cast::<Box<T>>().drop_in_place() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pid::{NodeId, ShardId};
    use std::any::Any;
    use std::cell::RefCell;
    use std::sync::Arc;

    #[derive(Default)]
    struct Collect(RefCell<Vec<(Pid, Box<dyn Any>)>>);

    impl Deliver for Collect {
        fn deliver<T: Send + 'static>(&self, to: Pid, message: T) {
            self.0.borrow_mut().push((to, Box::new(message)));
        }
    }

    fn pid(slot: u32) -> Pid {
        Pid::new(NodeId(0), ShardId(0), slot, 0)
    }

    #[test]
    fn small_and_large_messages_arrive_intact() {
        let sink = Collect::default();
        ErasedMessage::<Collect>::new(7u8).deliver(&sink, pid(1));
        ErasedMessage::<Collect>::new([9u64; 8]).deliver(&sink, pid(2));
        ErasedMessage::<Collect>::new([5u64; 40]).deliver(&sink, pid(3));
        ErasedMessage::<Collect>::new(String::from("hello")).deliver(&sink, pid(4));
        ErasedMessage::<Collect>::new(1u128 << 100).deliver(&sink, pid(5));

        let got = sink.0.into_inner();
        assert_eq!(got[0].0, pid(1));
        assert_eq!(got[0].1.downcast_ref::<u8>(), Some(&7));
        assert_eq!(got[1].1.downcast_ref::<[u64; 8]>(), Some(&[9; 8]));
        assert_eq!(got[2].1.downcast_ref::<[u64; 40]>(), Some(&[5; 40]));
        assert_eq!(got[3].1.downcast_ref::<String>().unwrap(), "hello");
        assert_eq!(got[4].1.downcast_ref::<u128>(), Some(&(1 << 100)));
        assert!(fits_inline::<[u64; 8]>());
        assert!(!fits_inline::<[u64; 9]>());
    }

    #[test]
    fn undelivered_messages_are_dropped_once() {
        let token = Arc::new(());
        let inline = ErasedMessage::<Collect>::new(token.clone());
        let boxed = ErasedMessage::<Collect>::new((token.clone(), [0u64; 16]));
        assert_eq!(Arc::strong_count(&token), 3);
        drop(inline);
        drop(boxed);
        assert_eq!(Arc::strong_count(&token), 1);

        let sink = Collect::default();
        ErasedMessage::<Collect>::new(token.clone()).deliver(&sink, pid(0));
        assert_eq!(Arc::strong_count(&token), 2);
        drop(sink);
        assert_eq!(Arc::strong_count(&token), 1);
    }
}
