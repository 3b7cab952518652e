//! Foundation: a messaging engine and actor runtime.
//!
//! This is the crate users link: `use foundation::...` and nothing else.
//! Today it is the single-node runtime of `foundation-sched` — thread-per-core
//! shards running green processes with Erlang's links, monitors, exit
//! signals, timers and per-process arenas — re-exported whole. The OTP
//! layer (servers, supervisors, registries, ecosystems), the transport and
//! distribution are built on it in the modules the architecture names, and
//! join this facade as they land.
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

pub use foundation_sched::*;
