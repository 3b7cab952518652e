//! Calls across nodes: a request, and the answer its server gives.
//!
//! The caller monitors the server and sends it a [`Call`] (an id and the
//! request) on the acknowledged `control` channel, where the monitor went
//! just before it: the server's node takes the monitor first, so a server
//! that ends on the request is seen to end with its own reason. The server
//! answers with [`reply`], which sends the answer, archived, to the
//! caller's node's distribution address on `control`; the caller's node
//! completes the call waiting under that id on the thread that receives
//! it. The answer and the `Down` of a server that ends after answering
//! leave the server's node on the same connection, answer first, and are
//! taken in that order, so a server that answers and then ends is never
//! mistaken for one that ended without answering. Both orders hold because
//! `control` has one connection per peer (the default; a node refuses to
//! start with more).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use foundation_sched::{oneshot, Context, ExitReason, NodeId, Pid};
use foundation_transport::frame::{self, Wire};
use foundation_transport::{ChannelId, Remote, SendError};
use rkyv::api::high::HighDeserializer;
use rkyv::{rancor, Archive, Deserialize, Serialize};

use super::{well_known, Dist, DistMessage, NotDistributed, Service};
use crate::server::{self, await_answer};

/// A request as its server receives it, as `Remote<Call<T>>`: answer it
/// with [`reply`].
///
/// ```no_run
/// use foundation::dist::{self, Call};
/// use foundation::transport::Remote;
/// use foundation::{Context, Envelope};
///
/// // A server that doubles numbers for callers on any node.
/// async fn doubler(cx: Context<Remote<Call<u64>>>) {
///     while let Envelope::Msg(call) = cx.recv().await {
///         let n = call.request.to_native();
///         let _ = dist::reply(&cx, &call, &(n * 2)).await;
///     }
/// }
/// ```
#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct Call<T> {
    /// The call's id at the caller's node.
    id: u64,
    /// The request.
    pub request: T,
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// No answer within the timeout.
    Timeout,
    /// The server was not there, or ended before it answered: its exit
    /// reason, `noproc` if it did not exist, `noconnection` if its node
    /// went down or could not be reached.
    Exited(ExitReason),
    /// The request could not be sent.
    Send(SendError),
    /// The answer is not a valid archive of the type asked for.
    BadAnswer(String),
    /// This node runs no distribution.
    NotDistributed,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => f.write_str("the call timed out"),
            CallError::Exited(reason) => write!(f, "the server exited: {reason}"),
            CallError::Send(error) => write!(f, "cannot send the request: {error}"),
            CallError::BadAnswer(error) => write!(f, "bad answer: {error}"),
            CallError::NotDistributed => write!(f, "{NotDistributed}"),
        }
    }
}

impl std::error::Error for CallError {}

impl From<server::CallError> for CallError {
    fn from(error: server::CallError) -> CallError {
        match error {
            server::CallError::Timeout => CallError::Timeout,
            server::CallError::Exited(reason) => CallError::Exited(reason),
        }
    }
}

/// Calls the server `to`, on any node, with `request`, and waits at most
/// `timeout` for its answer.
pub async fn call<M, Q, R>(
    cx: &Context<M>,
    to: Pid,
    request: Q,
    timeout: Duration,
) -> Result<R, CallError>
where
    M: Send + 'static,
    Call<Q>: Wire,
    R: Wire,
    R::Archived: Deserialize<R, HighDeserializer<rancor::Error>>,
{
    let dist = Dist::of(cx).map_err(|_| CallError::NotDistributed)?;
    let monitor = cx.monitor(to);
    let body = ask(
        cx,
        &dist,
        to,
        Some(monitor),
        |id| Call { id, request },
        timeout,
    )
    .await;
    // Withdrawn whatever the outcome, and its `Down` flushed if it came
    // anyway (the answer can be `noconnection` before the monitor's).
    cx.demonitor(monitor);
    frame::unarchive(&body?).map_err(|error| CallError::BadAnswer(error.to_string()))
}

/// Sends `to` the request `make` builds around a fresh call id, on
/// `control`, and waits at most `timeout` for the answer's bytes — or for
/// the `Down` of `monitor`, or for `to`'s node to go down.
pub(crate) async fn ask<M: Send + 'static, T: Wire>(
    cx: &Context<M>,
    dist: &Dist,
    to: Pid,
    monitor: Option<foundation_sched::MonitorRef>,
    make: impl FnOnce(u64) -> T,
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let pending = &dist.shared.pending;
    let (id, answer) = pending.open(to.node());
    // Whatever ends the wait — an answer, an error, or the caller's own end
    // mid-call — the call stops waiting.
    let _waiting = Waiting { pending, id };
    dist.shared.drained(cx, to.node()).await;
    let sent = dist
        .shared
        .transport
        .send(cx.pid(), to, ChannelId::CONTROL, &make(id))
        .await;
    let outcome = match sent {
        Ok(()) => await_answer(cx, answer, monitor, timeout)
            .await
            .map_err(CallError::from),
        Err(error) => Err(CallError::Send(error)),
    };
    outcome?.map_err(CallError::Exited)
}

/// Answers `call` with `answer`. A caller that gave up by then drops it.
pub async fn reply<M, Q, R>(
    cx: &Context<M>,
    call: &Remote<Call<Q>>,
    answer: &R,
) -> Result<(), SendError>
where
    M: Send + 'static,
    Q: Archive,
    Call<Q>: Wire + Archive<Archived = ArchivedCall<Q>>,
    R: Wire,
{
    let dist = Dist::of(cx).map_err(|_| SendError::Closed)?;
    let body = frame::archive(answer).map_err(SendError::Encode)?;
    let reply = DistMessage::Reply {
        id: call.id.to_native(),
        body,
    };
    let to = well_known(call.source().node(), Service::Dist);
    dist.shared.drained(cx, to.node()).await;
    dist.shared
        .transport
        .send(cx.pid(), to, ChannelId::CONTROL, &reply)
        .await
}

/// A call waiting in [`Pending`], cancelled when dropped.
struct Waiting<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.cancel(self.id);
    }
}

/// An answer, or why none will come.
type Answer = Result<Vec<u8>, ExitReason>;

/// The calls and spawns of this node's processes that wait for another
/// node's answer, by id.
pub(crate) struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, (NodeId, oneshot::Sender<Answer>)>>,
}

impl Pending {
    /// A table whose first call id is `first`.
    pub(crate) fn starting_at(first: u64) -> Pending {
        Pending {
            next: AtomicU64::new(first),
            waiting: Mutex::default(),
        }
    }

    /// A new call to `node`: its id, and where its answer will come.
    pub(crate) fn open(&self, node: NodeId) -> (u64, oneshot::Receiver<Answer>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiting().insert(id, (node, sender));
        (id, receiver)
    }

    /// `node` answered call `id` with `body`. A node answers only the
    /// calls made to it; an answer for a call that gave up is dropped.
    pub(crate) fn answer(&self, node: NodeId, id: u64, body: &[u8]) {
        let sender = match self.waiting().entry(id) {
            Entry::Occupied(call) if call.get().0 == node => call.remove().1,
            _ => return,
        };
        sender.send(Ok(body.to_vec()));
    }

    /// The caller stopped waiting.
    pub(crate) fn cancel(&self, id: u64) {
        self.waiting().remove(&id);
    }

    /// `node` went down: its calls fail with `noconnection`.
    pub(crate) fn node_down(&self, node: NodeId) {
        let failed: Vec<_> = {
            let mut waiting = self.waiting();
            let ids: Vec<_> = waiting
                .iter()
                .filter(|(_, (asked, _))| *asked == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| waiting.remove(&id))
                .collect()
        };
        for (_, sender) in failed {
            sender.send(Err(ExitReason::NoConnection));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting().len()
    }

    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (NodeId, oneshot::Sender<Answer>)>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
