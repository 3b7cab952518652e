//! Why processes end, and the signals that say so.
//!
//! Semantics follow Erlang's reference manual (*Processes*, sections on
//! links, exit signals and monitors):
//!
//! * A process that returns ends with [`ExitReason::Normal`]; one that
//!   panics ends with [`ExitReason::Panic`] carrying the panic message; one
//!   whose arena and mailbox outgrow `max_heap_bytes` ends with
//!   [`ExitReason::HeapLimit`].
//! * When a process ends, every linked process receives an exit signal with
//!   the same reason, and every monitoring process receives exactly one
//!   [`Down`].
//! * An exit signal that reaches a process trapping exits becomes an
//!   [`Exit`] message in its mailbox. Otherwise a `Normal` reason is ignored
//!   and any other reason ends the receiver with that reason.
//! * A kill ([`Context::kill`](crate::Context::kill)) cannot be trapped: the
//!   target ends with [`ExitReason::Killed`], and its links see `Killed`,
//!   which they may trap like any other reason.
//! * Linking to or monitoring a process that does not exist yields
//!   [`ExitReason::NoProc`] at once.
//!
//! Where this runtime differs from Erlang: a process that is told to end
//! while it is running finishes its current poll (up to its next `.await`)
//! before it ends, because Rust code cannot be pre-empted mid-statement.

use std::fmt;
use std::sync::Arc;

use crate::pid::Pid;

/// Why a process ended, or the reason an exit signal carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExitReason {
    /// The process returned. Links ignore it unless they trap exits.
    Normal,
    /// The process was asked to stop: runtime shutdown, or a supervisor.
    Shutdown,
    /// The process was killed, untrappably.
    Killed,
    /// The process panicked; the panic message.
    Panic(Arc<str>),
    /// The process's arena and mailbox outgrew its `max_heap_bytes`.
    HeapLimit,
    /// The process named in a link or monitor did not exist.
    NoProc,
    /// The node of a linked or monitored process became unreachable.
    /// Reserved for distribution.
    NoConnection,
    /// A reason chosen by the program.
    Error(Arc<str>),
}

impl ExitReason {
    /// A reason chosen by the program, as Erlang's `exit(Reason)`.
    pub fn error(reason: impl Into<Arc<str>>) -> ExitReason {
        ExitReason::Error(reason.into())
    }

    /// Whether this reason leaves linked processes that do not trap exits
    /// alive (only `Normal` does).
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitReason::Normal)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Panic(message) => write!(f, "panic: {message}"),
            ExitReason::HeapLimit => f.write_str("heap limit"),
            ExitReason::NoProc => f.write_str("noproc"),
            ExitReason::NoConnection => f.write_str("noconnection"),
            ExitReason::Error(reason) => f.write_str(reason),
        }
    }
}

/// What a process's function returns: how it ended.
///
/// `()` ends normally; an [`ExitReason`] or `Result<(), ExitReason>` ends
/// with that reason, so `?` works inside a process.
pub trait ProcessResult {
    /// The exit reason this value stands for.
    fn into_reason(self) -> ExitReason;
}

impl ProcessResult for () {
    fn into_reason(self) -> ExitReason {
        ExitReason::Normal
    }
}

impl ProcessResult for ExitReason {
    fn into_reason(self) -> ExitReason {
        self
    }
}

impl ProcessResult for Result<(), ExitReason> {
    fn into_reason(self) -> ExitReason {
        match self {
            Ok(()) => ExitReason::Normal,
            Err(reason) => reason,
        }
    }
}

/// Identifies one monitor, unique within its cluster: it packs the node and
/// shard that made it with that shard's count of monitors, so a process
/// monitored from several nodes tells their monitors apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MonitorRef(pub(crate) u64);

impl MonitorRef {
    /// The packed representation, for the wire.
    pub fn to_bits(self) -> u64 {
        self.0
    }

    /// Rebuilds a monitor reference from [`MonitorRef::to_bits`].
    pub fn from_bits(bits: u64) -> MonitorRef {
        MonitorRef(bits)
    }
}

impl fmt::Debug for MonitorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (node, shard, count) = (
            self.0 >> 48,
            (self.0 >> 40) & 0xff,
            self.0 & ((1 << 40) - 1),
        );
        write!(f, "#Ref<{node}.{shard}.{count}>")
    }
}

/// A monitored process ended (Erlang's `{'DOWN', Ref, process, Pid, Reason}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Down {
    /// The monitor this notice belongs to.
    pub monitor: MonitorRef,
    /// The process that ended.
    pub pid: Pid,
    /// Why it ended; `NoProc` if it did not exist when monitored.
    pub reason: ExitReason,
}

/// An exit signal turned into a message, because the receiver traps exits
/// (Erlang's `{'EXIT', From, Reason}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The process the signal came from.
    pub from: Pid,
    /// The reason it carries.
    pub reason: ExitReason,
}
