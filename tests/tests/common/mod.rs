//! What the `sched_*` suites share: shard choice, waiting for a `Down`,
//! drop counters and bounded polling from the test thread; and, for the
//! `transport_*` suites, test nodes ([`transport`]), a proxy that cuts
//! their connections ([`proxy`]) and a peer played by hand
//! ([`raw_peer`]); for the `sim_*` suites, a supervisor of crashing
//! workers ([`sim`]); for the `dist_*` suites, clusters of nodes in this
//! process ([`cluster`]).

#![allow(
    dead_code,
    reason = "each suite is its own crate and uses only some of these"
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foundation::{Context, Down, Envelope, Exit, ExitReason, MonitorRef, Placement, ShardId};

pub(crate) mod cluster;
pub(crate) mod proxy;
pub(crate) mod raw_peer;
pub(crate) mod sim;
pub(crate) mod transport;

/// How long a test waits for something that must happen before it calls
/// the runtime broken. Only a bound: no test asserts how long anything took.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// How long a test watches for something that must *not* happen.
pub(crate) const QUIET: Duration = Duration::from_millis(100);

/// Where a peer of the calling process goes: on its own shard, or on the
/// other shard of a two-shard runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Where {
    /// The caller's shard.
    Same,
    /// The other shard of a two-shard runtime.
    Other,
}

impl Where {
    /// Both variants, for tests that run once per placement.
    pub(crate) const BOTH: [Where; 2] = [Where::Same, Where::Other];

    /// The placement this means for a process running on `cx`'s shard.
    pub(crate) fn placement<M: Send + 'static>(self, cx: &Context<M>) -> Placement {
        Placement::Shard(self.shard(cx))
    }

    /// The shard this means for a process running on `cx`'s shard.
    pub(crate) fn shard<M: Send + 'static>(self, cx: &Context<M>) -> ShardId {
        match self {
            Where::Same => cx.shard(),
            Where::Other => ShardId((cx.shard().0 + 1) % 2),
        }
    }
}

/// Waits for the `Down` of `monitor`, leaving every other envelope in the
/// mailbox.
pub(crate) async fn down<M: Send + 'static>(cx: &Context<M>, monitor: MonitorRef) -> Down {
    let down = cx
        .recv_match_timeout(
            |envelope| matches!(envelope, Envelope::Down(down) if down.monitor == monitor),
            PATIENCE,
        )
        .await;
    match down {
        Some(Envelope::Down(down)) => down,
        Some(_) => unreachable!("the predicate only matches this Down"),
        None => panic!("no Down for {monitor:?} within {PATIENCE:?}"),
    }
}

/// Waits for the `Down` of `monitor`, as [`down`] does, and returns its
/// reason.
pub(crate) async fn down_reason<M: Send + 'static>(
    cx: &Context<M>,
    monitor: MonitorRef,
) -> ExitReason {
    down(cx, monitor).await.reason
}

/// Waits for the next trapped exit signal, leaving every other envelope in
/// the mailbox.
pub(crate) async fn exit_signal<M: Send + 'static>(cx: &Context<M>) -> Exit {
    let exit = cx
        .recv_match_timeout(|envelope| matches!(envelope, Envelope::Exit(_)), PATIENCE)
        .await;
    match exit {
        Some(Envelope::Exit(exit)) => exit,
        Some(_) => unreachable!("the predicate only matches exits"),
        None => panic!("no exit signal within {PATIENCE:?}"),
    }
}

/// Counts the guards it made, and how many of them were dropped.
#[derive(Clone, Default)]
pub(crate) struct DropCounter(Arc<Counts>);

/// What a [`DropCounter`] has counted.
#[derive(Default)]
pub(crate) struct Counts {
    made: AtomicUsize,
    dropped: AtomicUsize,
}

/// Adds one to its counter's drops when dropped.
pub(crate) struct DropGuard(Arc<Counts>);

impl DropCounter {
    /// A guard that counts its drop here.
    pub(crate) fn guard(&self) -> DropGuard {
        self.0.made.fetch_add(1, Ordering::SeqCst);
        DropGuard(self.0.clone())
    }

    /// Guards made so far.
    pub(crate) fn made(&self) -> usize {
        self.0.made.load(Ordering::SeqCst)
    }

    /// Guards dropped so far.
    pub(crate) fn dropped(&self) -> usize {
        self.0.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `condition` from the test thread until it holds, for at most
/// [`PATIENCE`]; panics with `what` if it never does.
pub(crate) fn eventually(what: &str, condition: impl FnMut() -> bool) {
    assert!(
        within_patience(condition),
        "never happened within {PATIENCE:?}: {what}"
    );
}

/// Polls `condition` from the test thread until it holds, for at most
/// [`PATIENCE`]; returns whether it did.
pub(crate) fn within_patience(mut condition: impl FnMut() -> bool) -> bool {
    let step = Duration::from_millis(2);
    let steps = PATIENCE.as_millis() / step.as_millis();
    for _ in 0..steps {
        if condition() {
            return true;
        }
        std::thread::sleep(step);
    }
    condition()
}
