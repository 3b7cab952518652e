//! Servers: request/reply and fire-and-forget messaging, as OTP's
//! `gen_server`.
//!
//! A [`Server`] is a state plus callbacks; [`start`](ServerRef::start) runs
//! it as a process that receives [`Request`]s and dispatches them:
//! `call`s to [`Server::handle_call`], whose answer goes back to the
//! caller, `cast`s to [`Server::handle_cast`], and everything else
//! (plain info messages, `Down`s, trapped exits) to
//! [`Server::handle_info`]. A callback that returns an error stops the
//! server with that reason, after [`Server::terminate`].
//!
//! A call monitors the server for its duration, so a server that is
//! already dead, or dies before it answers, fails the call at once with
//! its exit reason instead of waiting for the timeout — what
//! `gen_server:call` does. The reply travels on a one-shot channel, never
//! through the caller's mailbox: a reply that comes after the timeout is
//! dropped, and the monitor's `Down` is flushed, so a call leaves nothing
//! behind in the caller's mailbox.
//!
//! ```
//! use foundation::server::{Server, ServerRef};
//! use foundation::{Context, ExitReason, Runtime};
//! use std::time::Duration;
//!
//! /// A counter: `call` adds and answers the new total; `cast` resets.
//! struct Counter(u64);
//!
//! impl Server for Counter {
//!     type Call = u64;
//!     type Reply = u64;
//!     type Cast = ();
//!     type Info = ();
//!
//!     async fn handle_call(&mut self, add: u64, _: &foundation::server::ServerContext<Self>) -> Result<u64, ExitReason> {
//!         self.0 += add;
//!         Ok(self.0)
//!     }
//!
//!     async fn handle_cast(&mut self, _: (), _: &foundation::server::ServerContext<Self>) -> Result<(), ExitReason> {
//!         self.0 = 0;
//!         Ok(())
//!     }
//! }
//!
//! let runtime = Runtime::builder().shards(1).build().unwrap();
//! let total = runtime
//!     .block_on(|cx: Context<()>| async move {
//!         let counter = ServerRef::start(&cx, Counter(0));
//!         counter.call(&cx, 2, Duration::from_secs(1)).await.unwrap();
//!         counter.cast(&cx, ());
//!         counter.call(&cx, 5, Duration::from_secs(1)).await
//!     })
//!     .unwrap();
//! assert_eq!(total, Ok(5));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};
use std::time::Duration;

use foundation_sched::oneshot;
use foundation_sched::{
    Addr, Context, Down, Envelope, Exit, ExitReason, MonitorRef, Pid, ReceiveTimeout,
};

/// The context a server's callbacks run with: its process's context.
pub type ServerContext<S> = Context<Request<S>>;

/// A server's behaviour: its state and the callbacks that handle what it
/// receives. Only [`Server::handle_call`] is required.
pub trait Server: Sized + 'static {
    /// What a call asks.
    type Call: Send + 'static;
    /// What a call answers.
    type Reply: Send + 'static;
    /// What a cast carries.
    type Cast: Send + 'static;
    /// Plain messages sent with [`ServerRef::info`].
    type Info: Send + 'static;

    /// Runs once, before the first request. An error stops the server with
    /// that reason (and skips `terminate`).
    fn init(&mut self, cx: &ServerContext<Self>) -> impl Future<Output = Result<(), ExitReason>> {
        let _ = cx;
        async { Ok(()) }
    }

    /// Answers a call. An error stops the server with that reason; the
    /// caller then fails with [`CallError::Exited`].
    fn handle_call(
        &mut self,
        request: Self::Call,
        cx: &ServerContext<Self>,
    ) -> impl Future<Output = Result<Self::Reply, ExitReason>>;

    /// Handles a cast. An error stops the server with that reason. By
    /// default casts are ignored.
    fn handle_cast(
        &mut self,
        message: Self::Cast,
        cx: &ServerContext<Self>,
    ) -> impl Future<Output = Result<(), ExitReason>> {
        let _ = (message, cx);
        async { Ok(()) }
    }

    /// Handles everything that is not a call or a cast. By default: a
    /// trapped exit with an abnormal reason stops the server with that
    /// reason (as `gen_server` does for its parent's exit), anything else
    /// is ignored.
    fn handle_info(
        &mut self,
        info: Info<Self::Info>,
        cx: &ServerContext<Self>,
    ) -> impl Future<Output = Result<(), ExitReason>> {
        let _ = cx;
        async move {
            match info {
                Info::Exit(exit) if !exit.reason.is_normal() => Err(exit.reason),
                _ => Ok(()),
            }
        }
    }

    /// Runs when a callback stopped the server, with the reason it will
    /// end with.
    fn terminate(
        &mut self,
        reason: &ExitReason,
        cx: &ServerContext<Self>,
    ) -> impl Future<Output = ()> {
        let _ = (reason, cx);
        async {}
    }
}

/// What a server's mailbox holds.
pub enum Request<S: Server> {
    /// A call, with where its answer goes.
    Call(S::Call, ReplyTo<S::Reply>),
    /// A cast.
    Cast(S::Cast),
    /// A plain message.
    Info(S::Info),
}

/// What [`Server::handle_info`] is given.
#[derive(Debug)]
pub enum Info<I> {
    /// A plain message.
    Msg(I),
    /// A process the server monitors ended.
    Down(Down),
    /// A trapped exit signal.
    Exit(Exit),
}

/// Where a call's answer goes.
pub struct ReplyTo<R>(oneshot::Sender<R>);

impl<R> ReplyTo<R> {
    /// Answers the call. A caller that gave up (timed out) is not told.
    pub fn send(self, reply: R) {
        self.0.send(reply);
    }
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// No answer within the timeout.
    Timeout,
    /// The server was not running, or ended before it answered; its exit
    /// reason (`NoProc` if it did not exist).
    Exited(ExitReason),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout => f.write_str("the call timed out"),
            CallError::Exited(reason) => write!(f, "the server exited: {reason}"),
        }
    }
}

impl std::error::Error for CallError {}

/// The typed address of a running server.
pub struct ServerRef<S: Server> {
    addr: Addr<Request<S>>,
}

impl<S: Server> Clone for ServerRef<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Server> Copy for ServerRef<S> {}

impl<S: Server> fmt::Debug for ServerRef<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerRef({})", self.addr.pid())
    }
}

impl<S: Server> ServerRef<S> {
    /// Starts `server` as a process on the caller's shard.
    pub fn start<M: Send + 'static>(cx: &Context<M>, server: S) -> ServerRef<S> {
        ServerRef {
            addr: cx.spawn(move |cx| serve(server, cx)),
        }
    }

    /// Starts `server` linked to the caller.
    pub fn start_link<M: Send + 'static>(cx: &Context<M>, server: S) -> ServerRef<S> {
        ServerRef {
            addr: cx.spawn_link(move |cx| serve(server, cx)),
        }
    }

    /// The server behind an address, for servers spawned some other way
    /// (for example by a supervisor, with [`serve`]).
    pub fn from_addr(addr: Addr<Request<S>>) -> ServerRef<S> {
        ServerRef { addr }
    }

    /// The server's pid.
    pub fn pid(&self) -> Pid {
        self.addr.pid()
    }

    /// The server's mailbox address.
    pub fn addr(&self) -> Addr<Request<S>> {
        self.addr
    }

    /// Sends a request and waits up to `timeout` for the answer.
    pub async fn call<M: Send + 'static>(
        &self,
        cx: &Context<M>,
        request: S::Call,
        timeout: Duration,
    ) -> Result<S::Reply, CallError> {
        let monitor = cx.monitor(self.pid());
        let (reply, answer) = oneshot::channel();
        cx.send(&self.addr, Request::Call(request, ReplyTo(reply)));
        let outcome = await_answer(cx, answer, Some(monitor), timeout).await;
        if !matches!(outcome, Err(CallError::Exited(_))) {
            // Withdraw the monitor and drop its `Down` if it came anyway.
            cx.demonitor(monitor);
        }
        outcome
    }

    /// Sends a cast: no answer, no wait.
    pub fn cast<M: Send + 'static>(&self, cx: &Context<M>, message: S::Cast) {
        cx.send(&self.addr, Request::Cast(message));
    }

    /// Sends a plain message, handled by [`Server::handle_info`].
    pub fn info<M: Send + 'static>(&self, cx: &Context<M>, message: S::Info) {
        cx.send(&self.addr, Request::Info(message));
    }
}

/// Runs `server` in the process of `cx`, until a callback stops it.
/// [`ServerRef::start`] spawns a process running this; call it directly to
/// run a server in a process spawned some other way.
pub async fn serve<S: Server>(mut server: S, cx: ServerContext<S>) -> ExitReason {
    if let Err(reason) = server.init(&cx).await {
        return reason;
    }
    loop {
        let outcome = match cx.recv().await {
            Envelope::Msg(Request::Call(request, reply)) => server
                .handle_call(request, &cx)
                .await
                .map(|answer| reply.send(answer)),
            Envelope::Msg(Request::Cast(message)) => server.handle_cast(message, &cx).await,
            Envelope::Msg(Request::Info(message)) => {
                server.handle_info(Info::Msg(message), &cx).await
            }
            Envelope::Down(down) => server.handle_info(Info::Down(down), &cx).await,
            // The signal `stop_after_reply` sent.
            Envelope::Exit(exit) if exit.from == cx.pid() => Err(exit.reason),
            Envelope::Exit(exit) => server.handle_info(Info::Exit(exit), &cx).await,
        };
        if let Err(reason) = outcome {
            server.terminate(&reason, &cx).await;
            return reason;
        }
    }
}

/// Ends the server with `reason` once the running callback has returned —
/// so a call can be answered and then the server stopped, as
/// `{stop, Reason, Reply, State}` does in `gen_server`. A server that traps
/// exits runs [`Server::terminate`] first.
pub fn stop_after_reply<S: Server>(cx: &ServerContext<S>, reason: ExitReason) {
    cx.exit(cx.pid(), reason);
}

/// Waits for whichever comes first: `answer`, the `Down` of `monitor` (the
/// server's, if the caller watches it), or the timeout. The caller
/// withdraws the monitor.
pub(crate) async fn await_answer<M: Send + 'static, R>(
    cx: &Context<M>,
    answer: oneshot::Receiver<R>,
    monitor: Option<MonitorRef>,
    timeout: Duration,
) -> Result<R, CallError> {
    let is_down = move |envelope: &Envelope<M>| matches!((envelope, monitor), (Envelope::Down(down), Some(m)) if down.monitor == m);
    CallOutcome {
        answer: Some(answer),
        down: cx.recv_match_timeout(is_down, timeout),
    }
    .await
}

/// Waits for whichever comes first: the answer, the server's `Down`, or
/// the timeout.
struct CallOutcome<'a, M, R, P> {
    /// `None` once the server dropped its `ReplyTo` without answering: the
    /// call then waits for the `Down` that tells why.
    answer: Option<oneshot::Receiver<R>>,
    down: ReceiveTimeout<'a, M, P>,
}

impl<M, R, P> Future for CallOutcome<'_, M, R, P>
where
    M: Send + 'static,
    P: FnMut(&Envelope<M>) -> bool + Unpin,
{
    type Output = Result<R, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        if let Some(answer) = self.answer.as_mut() {
            match Pin::new(answer).poll(cx) {
                Poll::Ready(Some(reply)) => return Poll::Ready(Ok(reply)),
                Poll::Ready(None) => self.answer = None,
                Poll::Pending => {}
            }
        }
        match Pin::new(&mut self.down).poll(cx) {
            Poll::Ready(Some(Envelope::Down(down))) => {
                Poll::Ready(Err(CallError::Exited(down.reason)))
            }
            Poll::Ready(Some(_)) => unreachable!("the receive only matches this monitor's Down"),
            Poll::Ready(None) => Poll::Ready(Err(CallError::Timeout)),
            Poll::Pending => Poll::Pending,
        }
    }
}
