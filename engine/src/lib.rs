//! Foundation: a messaging engine and actor runtime.
//!
//! This is the crate users link: `use foundation::...` and nothing else.
//! It re-exports the single-node runtime of `foundation-sched` whole —
//! thread-per-core shards running green processes with Erlang's links,
//! monitors, exit signals, timers and per-process arenas — and builds the
//! OTP layer on it:
//!
//! * [`server`]: request/reply (`call`) and fire-and-forget (`cast`)
//!   messaging with a server behaviour, as `gen_server`.
//!
//! Supervisors, registries, ecosystems, the transport and distribution join
//! this facade, in the modules the architecture names, as they land.
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

pub mod server;

pub use foundation_sched::*;
