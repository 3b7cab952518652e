//! The I/O driver seam: how an idle shard waits.
//!
//! A shard that has nothing to run parks in its [`Driver`] until one of
//! three things happens: another thread unparks it (a cross-shard packet or
//! an injected message arrived), the next timer is due, or — for an I/O
//! driver — a completion arrived. Putting all three behind one wait is what
//! lets the transport's io_uring and epoll drivers replace the plain one
//! without the scheduler knowing about sockets: they implement this trait,
//! and the runtime builder takes a factory for them.
//!
//! This crate ships [`ParkDriver`], which waits on a futex-backed condition
//! variable and does no I/O.

mod park;

pub use park::ParkDriver;

use std::sync::Arc;
use std::time::Duration;

use crate::pid::ShardId;
use crate::time::Instant;

/// What a shard parks in when it is idle. One driver per shard, used only
/// on that shard's thread.
pub trait Driver: Send + 'static {
    /// Called once on the shard's thread before its loop starts: a driver
    /// that processes reach through thread-local state (an I/O reactor)
    /// installs it here.
    fn enter(&mut self) {}

    /// Called in a simulation before each of the node's turns, and when
    /// the simulation runs code inside the node: simulated nodes share one
    /// thread, so a driver reached through thread-local state installs it
    /// again here. Never called on a real shard.
    fn resume(&mut self) {}

    /// The counterpart of [`Driver::resume`], after the node's turn or
    /// the code run inside it: a driver uninstalls what `resume`
    /// installed, so that code outside the node cannot reach it.
    fn suspend(&mut self) {}

    /// When this driver next has work of its own on the virtual clock: a
    /// simulated network's next delivery to this node. A simulation jumps
    /// its clock no further than this. Real drivers have none.
    fn next_event(&self) -> Option<Instant> {
        None
    }

    /// Processes work the driver has ready without waiting (I/O
    /// completions, and submissions queued since the last call), waking
    /// the processes it concerns. Returns whether it did any. The shard
    /// calls it once per pass while busy, so a busy shard still serves
    /// I/O.
    fn poll(&mut self) -> bool {
        false
    }

    /// Waits until [`Unpark::unpark`] is called, `timeout` elapses, or the
    /// driver has work of its own (such as I/O completions), processing that
    /// work before returning. An unpark that happened before the call makes
    /// it return at once. Spurious returns are allowed.
    fn park(&mut self, timeout: Option<Duration>);

    /// A handle through which other threads wake this shard.
    fn unparker(&self) -> Arc<dyn Unpark>;
}

/// Wakes a parked shard. Cheap to call when the shard is not parked.
pub trait Unpark: Send + Sync + 'static {
    /// Makes the shard's current or next [`Driver::park`] return.
    fn unpark(&self);
}

/// Makes one driver per shard; the runtime calls it on the building thread
/// and moves each driver to its shard.
pub type DriverFactory = Arc<dyn Fn(ShardId) -> Box<dyn Driver> + Send + Sync>;
