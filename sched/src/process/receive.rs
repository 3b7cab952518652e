//! The futures a process awaits: receives, sleeps and yields.
//!
//! None of them registers a `Waker`: the shard knows which process it is
//! polling, a send to a waiting process puts it back in the run queue, and a
//! timer fires by pid. Each receive uses one reduction; when the poll's
//! budget is used up, a receive that could complete yields instead, so a
//! process with a full mailbox cannot starve its shard.

use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};

use crate::process::{Context, Envelope};
use crate::scheduler::TimerAction;
use crate::time::wheel::TimerKey;
use crate::time::Instant;

/// A receive without a timeout: see [`Context::recv`] and
/// [`Context::recv_match`].
#[must_use = "futures do nothing unless awaited"]
pub struct Receive<'a, M, P = fn(&Envelope<M>) -> bool> {
    core: ReceiveCore<'a, M, P>,
}

/// A receive with a timeout, resolving to `None` when it expires: see
/// [`Context::recv_timeout`] and [`Context::recv_match_timeout`].
#[must_use = "futures do nothing unless awaited"]
pub struct ReceiveTimeout<'a, M, P = fn(&Envelope<M>) -> bool> {
    core: ReceiveCore<'a, M, P>,
}

/// Waits for a duration: see [`Context::sleep`].
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep<'a, M> {
    context: &'a Context<M>,
    deadline: Instant,
    timer: Option<TimerKey>,
}

/// Yields once: see [`Context::yield_now`].
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow<'a, M> {
    context: &'a Context<M>,
    yielded: bool,
}

/// Counts a reduction and yields if the budget is used up: see
/// [`Context::checkpoint`].
#[must_use = "futures do nothing unless awaited"]
pub struct Checkpoint<'a, M> {
    yield_now: YieldNow<'a, M>,
    counted: bool,
}

struct ReceiveCore<'a, M, P> {
    context: &'a Context<M>,
    matches: Option<P>,
    /// Envelopes already found not to match, so a selective receive that is
    /// woken by a new arrival looks only at the new ones.
    scanned: usize,
    deadline: Option<Instant>,
    timer: Option<TimerKey>,
}

impl<'a, M: Send + 'static, P> Receive<'a, M, P> {
    pub(crate) fn new(context: &'a Context<M>, matches: Option<P>) -> Self {
        Receive {
            core: ReceiveCore::new(context, matches, None),
        }
    }
}

impl<'a, M: Send + 'static, P> ReceiveTimeout<'a, M, P> {
    pub(crate) fn new(context: &'a Context<M>, matches: Option<P>, deadline: Instant) -> Self {
        ReceiveTimeout {
            core: ReceiveCore::new(context, matches, Some(deadline)),
        }
    }
}

impl<M: Send + 'static, P: FnMut(&Envelope<M>) -> bool + Unpin> Future for Receive<'_, M, P> {
    type Output = Envelope<M>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<Envelope<M>> {
        match self.get_mut().core.poll_next() {
            Poll::Ready(Some(envelope)) => Poll::Ready(envelope),
            // Without a deadline the core never reports a timeout.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

impl<M: Send + 'static, P: FnMut(&Envelope<M>) -> bool + Unpin> Future
    for ReceiveTimeout<'_, M, P>
{
    type Output = Option<Envelope<M>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<Option<Envelope<M>>> {
        self.get_mut().core.poll_next()
    }
}

impl<'a, M: Send + 'static, P> ReceiveCore<'a, M, P> {
    fn new(context: &'a Context<M>, matches: Option<P>, deadline: Option<Instant>) -> Self {
        ReceiveCore {
            context,
            matches,
            scanned: 0,
            deadline,
            timer: None,
        }
    }
}

impl<M: Send + 'static, P: FnMut(&Envelope<M>) -> bool> ReceiveCore<'_, M, P> {
    /// `Ready(Some)` with an envelope, `Ready(None)` when the deadline has
    /// passed, `Pending` otherwise.
    #[inline(always)]
    fn poll_next(&mut self) -> Poll<Option<Envelope<M>>> {
        let shard = self.context.shard_ref();
        if shard.running_is_exiting() {
            return Poll::Pending;
        }
        let cell = self.context.cell();
        let mut mailbox = cell.mailbox.borrow_mut();
        let found = match &mut self.matches {
            None => (!mailbox.is_empty()).then_some(0),
            Some(matches) => {
                let start = self.scanned.min(mailbox.len());
                let found = mailbox
                    .iter()
                    .skip(start)
                    .position(matches)
                    .map(|offset| start + offset);
                self.scanned = found.unwrap_or(mailbox.len());
                found
            }
        };
        if let Some(index) = found {
            if shard.budget_used_up() {
                drop(mailbox);
                shard.yield_running();
                return Poll::Pending;
            }
            let envelope = mailbox.remove(index);
            drop(mailbox);
            shard.consume_reduction(cell);
            self.cancel_timer();
            return Poll::Ready(envelope);
        }
        drop(mailbox);
        if let Some(deadline) = self.deadline {
            if shard.now() >= deadline {
                self.cancel_timer();
                return Poll::Ready(None);
            }
            if self.timer.is_none() {
                let wake = TimerAction::Wake(self.context.pid());
                self.timer = Some(shard.set_timer(deadline, wake));
            }
        }
        Poll::Pending
    }
}

impl<M, P> ReceiveCore<'_, M, P> {
    fn cancel_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            self.context.shard_ref().cancel_timer(timer);
        }
    }
}

impl<M, P> Drop for ReceiveCore<'_, M, P> {
    fn drop(&mut self) {
        self.cancel_timer();
    }
}

impl<'a, M: Send + 'static> Sleep<'a, M> {
    pub(crate) fn new(context: &'a Context<M>, deadline: Instant) -> Self {
        Sleep {
            context,
            deadline,
            timer: None,
        }
    }
}

impl<M: Send + 'static> Future for Sleep<'_, M> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<()> {
        let shard = self.context.shard_ref();
        if shard.now() >= self.deadline {
            return Poll::Ready(());
        }
        if self.timer.is_none() {
            let wake = TimerAction::Wake(self.context.pid());
            let timer = shard.set_timer(self.deadline, wake);
            self.timer = Some(timer);
        }
        Poll::Pending
    }
}

impl<M> Drop for Sleep<'_, M> {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            self.context.shard_ref().cancel_timer(timer);
        }
    }
}

impl<'a, M: Send + 'static> YieldNow<'a, M> {
    pub(crate) fn new(context: &'a Context<M>) -> Self {
        YieldNow {
            context,
            yielded: false,
        }
    }
}

impl<M: Send + 'static> Future for YieldNow<'_, M> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        self.context.shard_ref().yield_running();
        Poll::Pending
    }
}

impl<'a, M: Send + 'static> Checkpoint<'a, M> {
    pub(crate) fn new(context: &'a Context<M>) -> Self {
        Checkpoint {
            yield_now: YieldNow::new(context),
            counted: false,
        }
    }
}

impl<M: Send + 'static> Future for Checkpoint<'_, M> {
    type Output = ();

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        if !self.counted {
            self.counted = true;
            let context = self.yield_now.context;
            let shard = context.shard_ref();
            if !shard.budget_used_up() {
                shard.consume_reduction(context.cell());
                return Poll::Ready(());
            }
        }
        Pin::new(&mut self.yield_now).poll(cx)
    }
}
