//! A one-value channel that a process can await and an outside thread can
//! block on: replies to calls, remote spawns and queries between shards.
//!
//! The receiving end is a future: a process awaiting it is woken (on its
//! own shard) when the value arrives, from whichever thread sends it. It is
//! the reply path of request/response protocols, so replies never enter
//! the caller's typed mailbox and a late reply after a timeout is simply
//! dropped with the receiver.
//!
//! ```
//! use foundation_sched::{oneshot, Context, Runtime};
//!
//! let runtime = Runtime::builder().shards(2).build().unwrap();
//! let (reply, answer) = oneshot::channel();
//! runtime.spawn(move |_: Context<()>| async move { reply.send(42) }).unwrap();
//! assert_eq!(answer.blocking_recv(), Some(42));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{self, Poll, Waker};

/// Makes a channel for one value.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::Empty(None)),
        ready: Condvar::new(),
    });
    (
        Sender {
            inner: Some(inner.clone()),
        },
        Receiver { inner },
    )
}

/// The sending half: sends one value, or closes the channel when dropped.
pub struct Sender<T> {
    inner: Option<Arc<Inner<T>>>,
}

/// The receiving half: a future of `Some(value)`, or `None` if the sender
/// was dropped without sending.
pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

enum State<T> {
    /// No value yet; the waker of a receiver waiting for one.
    Empty(Option<Waker>),
    Full(T),
    /// The sender went away without sending, or the value was taken.
    Closed,
}

impl<T> Sender<T> {
    /// Sends the value, waking the receiver.
    pub fn send(mut self, value: T) {
        if let Some(inner) = self.inner.take() {
            inner.finish(State::Full(value));
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.finish(State::Closed);
        }
    }
}

impl<T> Inner<T> {
    fn finish(&self, outcome: State<T>) {
        let previous = std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            outcome,
        );
        self.ready.notify_all();
        if let State::Empty(Some(waker)) = previous {
            waker.wake();
        }
    }

    fn take(&self, state: &mut State<T>) -> Option<T> {
        match std::mem::replace(state, State::Closed) {
            State::Full(value) => Some(value),
            _ => None,
        }
    }
}

impl<T> Receiver<T> {
    /// Blocks the calling thread until the value arrives; `None` if the
    /// sender was dropped without sending. Not for use inside a process.
    pub fn blocking_recv(self) -> Option<T> {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let State::Empty(_) = *state {
            state = self
                .inner
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        self.inner.take(&mut state)
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Option<T>> {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let State::Empty(waker) = &mut *state {
            *waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(self.inner.take(&mut state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_crosses_threads() {
        let (tx, rx) = channel();
        std::thread::spawn(move || tx.send(5)).join().unwrap();
        assert_eq!(rx.blocking_recv(), Some(5));
    }

    #[test]
    fn a_dropped_sender_closes() {
        let (tx, rx) = channel::<u8>();
        drop(tx);
        assert_eq!(rx.blocking_recv(), None);
    }
}
