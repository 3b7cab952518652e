//! Foundation: a messaging engine and actor runtime.
//!
//! This is the crate users link: `use foundation::...` and nothing else.
//! It re-exports the single-node runtime of `foundation-sched` whole —
//! thread-per-core shards running green processes with Erlang's links,
//! monitors, exit signals, timers and per-process arenas — and builds the
//! OTP layer on it:
//!
//! * [`server`]: request/reply (`call`) and fire-and-forget (`cast`)
//!   messaging with a server behaviour, as `gen_server`;
//! * [`supervision`]: supervisors with child specs, the one-for-one,
//!   one-for-all, rest-for-one and dynamic strategies, restart intensity and
//!   ordered shutdown, as OTP's `supervisor`;
//! * [`registry`]: names and process groups, removed when their processes
//!   end;
//! * [`ecosystem`]: a coordinator and its workers as one supervised,
//!   scalable unit;
//! * [`node`]: a node from one configuration — runtime, transport and the
//!   engine's services under a supervisor — started and stopped in order
//!   (the `foundation-node` binary runs one);
//! * [`membership`]: which nodes form the cluster: joining through seeds,
//!   a full mesh of connections, SWIM failure detection, up/suspect/down
//!   events;
//! * [`dist`]: links, monitors and exit signals across nodes, messages by
//!   pid or name, calls, and remote spawn through each node's process
//!   factory;
//! * [`storage`]: a node's durable state, which a crash loses unless
//!   synced — on a file, or on a simulated disk;
//! * [`transport`]: nodes connected over io_uring or epoll, with
//!   validated zero-copy frames on prioritized channels with credit-based
//!   backpressure (the `foundation-transport` crate);
//! * [`fault`]: interposition — rules that lose, double or partition a
//!   node's traffic on purpose, for tests and chaos runs;
//! * [`sim`]: the simulated side of the runtime: whole clusters on one
//!   thread and a virtual clock, replayable from a seed.
//!
//! [`remote`] is the runtime's seam that [`dist`] plugs into.
//!
//! ```
//! use foundation::{Context, Envelope, ExitReason, Runtime};
//!
//! let runtime = Runtime::builder().shards(2).build().unwrap();
//! let reason = runtime
//!     .block_on(|cx: Context<()>| async move {
//!         // Watch a process that fails, as a supervisor would.
//!         let (_, monitor) = cx.spawn_monitor(|_: Context<()>| async {
//!             ExitReason::error("disk full")
//!         });
//!         match cx.recv().await {
//!             Envelope::Down(down) if down.monitor == monitor => down.reason,
//!             _ => unreachable!("only the Down arrives"),
//!         }
//!     })
//!     .unwrap();
//! assert_eq!(reason, ExitReason::error("disk full"));
//! ```

#![forbid(unsafe_code)]

pub mod dist;
pub mod ecosystem;
pub mod membership;
pub mod node;
pub mod registry;
pub mod server;
pub mod storage;
pub mod supervision;

pub use foundation_sched::*;
pub use foundation_transport as transport;
pub use foundation_transport::fault;
