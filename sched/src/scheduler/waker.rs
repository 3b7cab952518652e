//! Wakers for processes, and the thread's current shard.
//!
//! A process's waker is its pid: the waker's data word holds the pid's bits
//! rather than a pointer, so making, cloning and dropping a waker costs
//! nothing and allocates nothing. Waking looks up the calling thread's
//! shard: on a shard of the same runtime the wake is routed from there
//! (directly, or through the ring to the pid's shard); from any other
//! thread it goes through the runtime's injector, found by node id.
//!
//! This module holds the crate's one `RawWaker`; its contract is met
//! because the data word is a plain integer that every vtable function may
//! copy and use from any thread.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{RawWaker, RawWakerVTable, Waker};

use crate::pid::Pid;
use crate::runtime::registry;
use crate::scheduler::shared::Shared;
use crate::scheduler::{Packet, Shard};

// The waker's data word carries a whole pid.
const _: () = assert!(usize::BITS >= u64::BITS, "wakers need 64-bit pointers");

thread_local! {
    static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// Makes `shard` the current thread's shard until the guard drops.
pub(crate) fn enter(shard: Rc<Shard>) -> CurrentShard {
    CURRENT.with(|current| *current.borrow_mut() = Some(shard));
    CurrentShard(())
}

/// Clears the thread's current shard when dropped.
pub(crate) struct CurrentShard(());

impl Drop for CurrentShard {
    fn drop(&mut self) {
        // Take it out first: dropping the shard may run destructors that
        // look at the current shard.
        let shard = CURRENT.with(|current| current.borrow_mut().take());
        drop(shard);
    }
}

/// Runs `f` on this thread's shard, if it runs one.
pub(crate) fn with_current_shard<R>(f: impl FnOnce(&Rc<Shard>) -> R) -> Option<R> {
    CURRENT.with(|current| Some(f(current.try_borrow().ok()?.as_ref()?)))
}

/// Runs `f` on this thread's shard if it is one of `shared`'s runtime.
pub(crate) fn with_shard_of<R>(shared: &Arc<Shared>, f: impl FnOnce(&Rc<Shard>) -> R) -> Option<R> {
    CURRENT.with(|current| {
        let current = current.try_borrow().ok()?;
        let shard = current
            .as_ref()
            .filter(|shard| Arc::ptr_eq(&shard.shared, shared))?;
        Some(f(shard))
    })
}

/// The waker of process `pid`.
pub(crate) fn for_pid(pid: Pid) -> Waker {
    let raw = RawWaker::new(pid.to_bits() as usize as *const (), &VTABLE);
    // SAFETY: the vtable functions below treat the data word as an integer
    // (never dereferenced), are safe to call from any thread, and clone
    // returns a waker with the same data and vtable, as `RawWaker`'s
    // contract requires.
    unsafe { Waker::from_raw(raw) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop_waker);

fn clone(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake(data: *const ()) {
    wake_pid(Pid::from_bits(data as usize as u64));
}

fn drop_waker(_: *const ()) {}

fn wake_pid(pid: Pid) {
    let woke_here = CURRENT.with(|current| match current.try_borrow() {
        Ok(current) => match current.as_ref() {
            Some(shard) if shard.node == pid.node() => {
                shard.wake_anywhere(pid);
                true
            }
            _ => false,
        },
        Err(_) => false,
    });
    if !woke_here {
        if let Some(shared) = registry::lookup(pid.node()) {
            shared.inject(pid.shard(), Packet::Wake(pid));
        }
    }
}
