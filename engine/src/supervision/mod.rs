//! Supervisors: processes that start, watch and restart other processes,
//! as OTP's `supervisor`.
//!
//! A supervisor starts its children in order, links to each, and traps
//! exits. When a child ends, its [`Restart`] type decides whether it comes
//! back, and the supervisor's [`Strategy`] decides which children restart
//! with it. Restarts are limited: more than `max_restarts` within `period`
//! and the supervisor gives up — it stops every child, in reverse start
//! order, and ends with [`INTENSITY_EXCEEDED`], which its own parent sees
//! and handles in turn. So a crash storm escalates up the tree instead of
//! looping.
//!
//! Stopping a child follows its [`Shutdown`]: an exit signal with reason
//! `Shutdown` and a grace period, after which it is killed, or a kill at
//! once. A supervisor that stops — told by its parent, or giving up —
//! stops its children in reverse start order first.
//!
//! ```
//! use foundation::supervision::{ChildSpec, Strategy, SupervisorSpec};
//! use foundation::{Context, ExitReason, Runtime};
//! use std::time::Duration;
//!
//! let runtime = Runtime::builder().shards(1).build().unwrap();
//! let restarted = runtime
//!     .block_on(|cx: Context<()>| async move {
//!         let spec = SupervisorSpec::new(Strategy::OneForOne).child(ChildSpec::worker(
//!             "idle",
//!             |cx: Context<()>| async move {
//!                 cx.recv().await;
//!             },
//!         ));
//!         let supervisor = spec.start_link(&cx);
//!         let before = supervisor.which_children(&cx).await.unwrap()[0].pid.unwrap();
//!         cx.exit(before, ExitReason::error("crash"));
//!         cx.sleep(Duration::from_millis(20)).await;
//!         let after = supervisor.which_children(&cx).await.unwrap()[0].pid.unwrap();
//!         before != after
//!     })
//!     .unwrap();
//! assert!(restarted);
//! ```

mod intensity;
mod supervisor;

pub(crate) use intensity::RestartIntensity;

pub use supervisor::{
    ChildInfo, ChildKind, ChildSpec, Counts, Restart, Shutdown, Strategy, SupervisorError,
    SupervisorRef, SupervisorSpec, INTENSITY_EXCEEDED,
};
