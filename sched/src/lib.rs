//! Foundation's single-node runtime: thread-per-core shards running green
//! processes, in the Erlang/OTP tradition.
//!
//! # The model
//!
//! A [`Runtime`] starts one OS thread per shard, each pinned to a core. A
//! shard owns everything its processes touch — run queue, process table,
//! timer wheel, arena pool, driver, inbound rings — and shares none of it,
//! so a shard runs without locks. Processes never migrate: load is balanced
//! when a process is placed at spawn ([`Placement`]), and a process may hold
//! `!Send` state.
//!
//! A process is a future plus a control block. It receives typed messages
//! through its [`Context`]; it can link to and monitor other processes,
//! trap exits, set timers, spawn, and allocate from its own arena, which is
//! freed whole when it ends. Exit semantics are Erlang's; the [`exit`]
//! module documents them and the few places they differ.
//!
//! ```
//! use foundation_sched::{Context, Envelope, Runtime};
//!
//! let runtime = Runtime::builder().shards(2).build().unwrap();
//! let answer = runtime
//!     .block_on(|cx: Context<u64>| async move {
//!         // A child on this shard doubles what it receives and replies.
//!         let me = cx.addr();
//!         let doubler = cx.spawn(move |cx: Context<u64>| async move {
//!             while let Envelope::Msg(n) = cx.recv().await {
//!                 cx.send(&me, n * 2);
//!             }
//!         });
//!         cx.send(&doubler, 21);
//!         cx.recv().await.into_msg()
//!     })
//!     .unwrap();
//! assert_eq!(answer, Some(42));
//! ```
//!
//! # How a message travels
//!
//! A send to a process on the same shard pushes onto its mailbox and, if it
//! was waiting, onto the run queue. A send to another shard goes through the
//! single-writer ring for that (source, destination) pair, carrying the
//! message inline without an allocation when it is 64 bytes or less; the
//! destination drains its rings in batches, and is woken through its
//! driver only if it was parked. Threads outside the runtime send through a
//! per-shard injector ([`Handle::send`]).
//!
//! # Fairness and stalls
//!
//! Each poll of a process has a budget of reductions (receives, sends,
//! [`Context::checkpoint`]s); a receive that finds its budget used up yields
//! instead. Rust code cannot be pre-empted, so a process that loops without
//! awaiting blocks its shard: the stall watchdog reports its pid
//! ([`Handle::stalls`]).
//!
//! # Simulation
//!
//! The runtime has two sides behind one seam: the real one above (threads,
//! drivers, the wall clock) and a simulated one ([`sim`]): nodes whose
//! single shard runs on the caller's thread, on a [`time::VirtualClock`]
//! that jumps from one timer to the next, with every random choice drawn
//! from streams of one seed. The processes, mailboxes, links, monitors,
//! timers and arenas are the same code; only who turns the shard loop, and
//! when, differs. A run replays exactly from its seed.
//!
//! # Modules with `unsafe`
//!
//! Unsafe code is confined to [`arena`] (bump allocation in mmap'd chunks),
//! `ring` (the cross-shard SPSC ring and the inline erased message) and
//! `scheduler::waker` (a `RawWaker` whose data is a pid). Each module lists
//! its invariants, every block has a `SAFETY` comment, and the arena and
//! ring tests run under Miri; the ring also has a loom model.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod arena;
pub mod coop;
pub mod driver;
pub mod exit;
pub mod oneshot;
mod pid;
mod process;
pub mod remote;
mod ring;
mod runtime;
mod scheduler;
pub mod sim;
pub mod time;

pub use exit::{Down, Exit, ExitReason, MonitorRef, ProcessResult};
pub use pid::{NodeId, Pid, ShardId};
pub use process::{
    Addr, Checkpoint, Context, Envelope, ExitHook, Placement, Priority, ProcessInfo, Receive,
    ReceiveTimeout, Sleep, SpawnError, SpawnOptions, Spawned, Status, TimerRef, YieldNow,
};
pub use runtime::{
    BlockOnError, BuildError, Builder, Handle, Runtime, ShardStats, ShutdownReport, Stall,
};
