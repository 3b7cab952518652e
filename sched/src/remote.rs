//! The seam distribution plugs into: signals between a local process and a
//! process on another node.
//!
//! Links, monitors and exit signals are [`Signal`]s. Between processes of
//! one runtime the shards carry them; when the target's pid names another
//! node, the runtime hands the signal to the [`Distribution`] installed
//! with [`Handle::set_distribution`](crate::Handle::set_distribution),
//! which carries it to that node, where it is handed in with
//! [`Handle::deliver_signal`](crate::Handle::deliver_signal). Without a
//! distribution no other node is reachable: a link or monitor aimed at one
//! answers at once with [`ExitReason::NoConnection`](crate::ExitReason),
//! as Erlang answers for a node it cannot connect to.
//!
//! The runtime keeps Erlang's guarantees on the receiving side whatever
//! the network does: a `Down` for a monitor that is no longer active, or a
//! link exit for a link that is gone, is dropped. So a distribution that
//! delivers `NoConnection` when a node goes down, and the real `Down` if it
//! comes later, still yields exactly one `Down` per monitor.

use crate::pid::Pid;

pub use crate::process::signal::{ExitKind, Signal};

/// Carries signals to processes on other nodes.
pub trait Distribution: Send + Sync + 'static {
    /// Carries `signal` to process `to`, whose node is not this one. Called
    /// on the sending process's shard, in the order its signals were sent;
    /// it must not block. A signal that cannot be carried should be
    /// answered as an unreachable node's would be: a `Link` with an exit
    /// and a `Monitor` with a `Down`, both with `NoConnection`
    /// ([`Signal::answer_absent`]).
    fn signal(&self, to: Pid, signal: Signal);
}
