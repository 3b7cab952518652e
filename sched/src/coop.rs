//! Cooperation for code that runs inside a process but without its
//! [`Context`](crate::Context): libraries layered on the runtime (the
//! transport's sends, its connection loops) charge the work they do to the
//! running process's reduction budget, so a process that sends large
//! messages in a loop, or a connection that keeps finding more bytes to
//! read, yields to the rest of its shard like any process that receives.
//!
//! Work is counted in reductions, the unit of the budget each poll gets
//! ([`Builder::reductions`](crate::Builder::reductions), 2,000 by default):
//! a receive or a send is one; code that copies bytes can count one per
//! [`BYTES_PER_REDUCTION`], about the time of one small send.
//!
//! Outside a process (another executor, a plain thread) nothing is
//! charged and nothing yields.
//!
//! Such a library may also batch work across the operations of one poll
//! and finish it when the poll ends ([`at_poll_end`]): the transport
//! stages a process's small sends on the shard and hands them to their
//! connection in one piece, instead of taking a lock per message.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::scheduler::waker;

/// Bytes of copying worth one reduction.
pub const BYTES_PER_REDUCTION: usize = 256;

/// Reductions worth `bytes` of copying: at least one.
pub fn reductions_for(bytes: usize) -> u32 {
    u32::try_from(1 + bytes / BYTES_PER_REDUCTION).unwrap_or(u32::MAX)
}

/// Charges `reductions` to the running process's budget for this poll.
/// Returns `true` when the budget is used up: the caller should yield —
/// wake its task and return `Pending` — as soon as it can. Always `false`
/// outside a process.
pub fn charge(reductions: u32) -> bool {
    waker::with_current_shard(|shard| shard.charge_running(reductions)).unwrap_or(false)
}

/// Runs `hook` once, on this shard, as soon as the running process's
/// current poll ends (whether it yields, finishes or panics), before the
/// shard polls anything else. Returns `false` outside a process: nothing is
/// deferred, and the caller must do its work now.
///
/// Every call defers one more run: a caller that may call it many times in
/// one poll remembers that it already did.
///
/// # Example
///
/// ```
/// use foundation_sched::{coop, Context, Runtime};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// static FLUSHES: AtomicUsize = AtomicUsize::new(0);
///
/// fn flush() {
///     FLUSHES.fetch_add(1, Ordering::Relaxed);
/// }
///
/// let runtime = Runtime::builder().shards(1).build().unwrap();
/// runtime
///     .block_on(|cx: Context<()>| async move {
///         assert!(coop::at_poll_end(flush));
///         assert_eq!(FLUSHES.load(Ordering::Relaxed), 0, "not yet");
///         cx.yield_now().await; // The poll ends here.
///         assert_eq!(FLUSHES.load(Ordering::Relaxed), 1);
///     })
///     .unwrap();
/// assert!(!coop::at_poll_end(flush), "outside a process");
/// ```
pub fn at_poll_end(hook: fn()) -> bool {
    waker::with_current_shard(|shard| shard.at_poll_end(hook)).unwrap_or(false)
}

/// Charges `reductions` and, if that used up the budget, yields once so
/// the shard runs its other processes first.
pub fn consume(reductions: u32) -> Consume {
    Consume {
        reductions,
        charged: false,
    }
}

/// The future of [`consume`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Consume {
    reductions: u32,
    charged: bool,
}

impl Future for Consume {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<()> {
        if self.charged {
            return Poll::Ready(());
        }
        self.charged = true;
        if charge(self.reductions) {
            task.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(())
    }
}
