//! The scheduler: one [`Shard`] per pinned thread, each with its own run
//! queue, process table, timer wheel, arena pool and rings.
//!
//! A shard's loop, in order: read the clock; drain the inbound rings and the
//! injector (packets from other shards and from threads outside the
//! runtime); fire due timers; poll the processes that were runnable when
//! the pass began, flushing outbound rings after each poll; and, when
//! nothing is runnable, park in the driver until a packet, a timer or I/O
//! needs it.
//!
//! Parking uses a handshake so that no wake-up is lost: the shard sets its
//! `parked` flag, issues a `SeqCst` fence and looks at its inbound rings once
//! more before it sleeps; a sender publishes its packet, issues a `SeqCst`
//! fence and reads the flag, and unparks the shard only if it is set. One of
//! the two always sees the other, and a shard that is busy costs its senders
//! no system call.

pub(crate) mod run_queue;
pub(crate) mod shard;
pub(crate) mod shared;
pub(crate) mod waker;

pub(crate) use shard::Shard;

use std::rc::Rc;

use crate::exit::MonitorRef;
use crate::pid::Pid;
use crate::process::signal::Signal;
use crate::ring::erased::ErasedMessage;

/// What travels in a ring or an injector to a shard.
pub(crate) enum Packet {
    /// A typed message for a process of the shard.
    Message {
        to: Pid,
        message: ErasedMessage<Shard>,
    },
    /// A signal for a process of the shard.
    Signal { to: Pid, signal: Signal },
    /// A waker fired for a process of the shard.
    Wake(Pid),
    /// Work to do on the shard: a remote spawn, a query, a reply.
    Run(ShardWork),
}

/// Work sent to run on a shard.
pub(crate) type ShardWork = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// A process's future, boxed and erased: it resolves to the exit reason.
pub(crate) type ProcessFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = crate::ExitReason>>>;

/// What a timer does when it fires.
pub(crate) enum TimerAction {
    /// Makes a waiting process runnable (receive timeouts, sleeps).
    Wake(Pid),
    /// Runs on the shard (`send_after`).
    Run(Box<dyn FnOnce(&Shard)>),
}

/// Makes a monitor reference unique in the cluster: the node's id in the
/// top 16 bits, the shard's in the next 8, a per-shard counter below.
pub(crate) fn monitor_ref(node: crate::NodeId, shard: u8, counter: u64) -> MonitorRef {
    MonitorRef(((node.0 as u64) << 48) | ((shard as u64) << 40) | (counter & ((1 << 40) - 1)))
}
