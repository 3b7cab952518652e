//! The supervisor process: child specs, strategies, restart intensity and
//! ordered shutdown.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use foundation_sched::{Context, Envelope, ExitReason, Pid, ProcessResult};

use super::RestartIntensity;
use crate::server::{serve, stop_after_reply, CallError, Info, Server, ServerContext, ServerRef};

/// The reason a supervisor ends with when its children restart more often
/// than its intensity allows.
pub const INTENSITY_EXCEEDED: &str = "supervisor: reached max restart intensity";

/// Which children restart when one ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that ended.
    OneForOne,
    /// Every child: the others are stopped (in reverse order) and all are
    /// started again (in order).
    OneForAll,
    /// The child that ended and every child started after it.
    RestForOne,
    /// Children are added at run time with
    /// [`SupervisorRef::start_child`], each restarting on its own
    /// (Erlang's `simple_one_for_one`, Elixir's `DynamicSupervisor`).
    Dynamic,
}

/// When a child that ended is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only after an abnormal end: not after `Normal` or `Shutdown`.
    Transient,
    /// Never; the child is forgotten once it ends.
    Temporary,
}

/// How a child is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Killed at once.
    BrutalKill,
    /// An exit signal with reason `Shutdown`, then a kill if it has not
    /// ended after this long.
    Timeout(Duration),
    /// An exit signal with reason `Shutdown`, waiting as long as it takes
    /// (the default for supervisor children).
    Infinity,
}

/// What a child is, as `count_children` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    /// A worker process.
    Worker,
    /// A supervisor.
    Supervisor,
}

/// How to start a child, and how to treat it.
#[derive(Clone)]
pub struct ChildSpec {
    id: Arc<str>,
    start: StartFn,
    restart: Restart,
    shutdown: Shutdown,
    kind: ChildKind,
}

/// Starts one child, linked to the supervisor whose context it is given,
/// and returns its pid.
type StartFn = Arc<dyn Fn(&ServerContext<Supervisor>) -> Pid + Send + Sync>;

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A worker started by `start`, called afresh on every (re)start.
    /// Defaults: permanent, 5 s shutdown timeout.
    pub fn worker<T, F, Fut>(id: impl Into<Arc<str>>, start: F) -> ChildSpec
    where
        T: Send + 'static,
        F: Fn(Context<T>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future + 'static,
        Fut::Output: ProcessResult,
    {
        ChildSpec::from_start(id, ChildKind::Worker, move |supervisor| {
            supervisor.spawn_link(start.clone()).pid()
        })
    }

    /// A nested supervisor. Defaults: permanent, infinite shutdown (it
    /// stops its own children first).
    pub fn supervisor(id: impl Into<Arc<str>>, spec: SupervisorSpec) -> ChildSpec {
        ChildSpec::from_start(id, ChildKind::Supervisor, move |parent| {
            let spec = spec.clone();
            let parent_pid = parent.pid();
            parent
                .spawn_link(move |cx| serve(Supervisor::new(spec, Some(parent_pid)), cx))
                .pid()
        })
    }

    /// A child of `kind` started by `start`, which spawns it linked to the
    /// supervisor it is given and returns its pid.
    pub(crate) fn from_start(
        id: impl Into<Arc<str>>,
        kind: ChildKind,
        start: impl Fn(&ServerContext<Supervisor>) -> Pid + Send + Sync + 'static,
    ) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            start: Arc::new(start),
            restart: Restart::Permanent,
            shutdown: match kind {
                ChildKind::Worker => Shutdown::Timeout(Duration::from_secs(5)),
                ChildKind::Supervisor => Shutdown::Infinity,
            },
            kind,
        }
    }

    /// Sets when the child restarts.
    pub fn restart(mut self, restart: Restart) -> ChildSpec {
        self.restart = restart;
        self
    }

    /// Sets how the child is stopped.
    pub fn shutdown(mut self, shutdown: Shutdown) -> ChildSpec {
        self.shutdown = shutdown;
        self
    }

    /// The child's id, unique within its supervisor.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A supervisor's strategy, restart intensity and children.
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    strategy: Strategy,
    max_restarts: u32,
    period: Duration,
    children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    /// A supervisor with `strategy`, no children yet, and OTP's default
    /// intensity: at most 1 restart in 5 seconds.
    pub fn new(strategy: Strategy) -> SupervisorSpec {
        SupervisorSpec {
            strategy,
            max_restarts: 1,
            period: Duration::from_secs(5),
            children: Vec::new(),
        }
    }

    /// At most `max_restarts` restarts within `period`; one more and the
    /// supervisor gives up.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> SupervisorSpec {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Adds a child, started after those added before it.
    pub fn child(mut self, child: ChildSpec) -> SupervisorSpec {
        self.children.push(child);
        self
    }

    /// Starts the supervisor, linked to the calling process, on its shard.
    pub fn start_link<M: Send + 'static>(self, cx: &Context<M>) -> SupervisorRef {
        let parent = cx.pid();
        SupervisorRef(ServerRef::from_addr(
            cx.spawn_link(move |cx| serve(Supervisor::new(self, Some(parent)), cx)),
        ))
    }

    /// Starts the supervisor unlinked, as the root of a tree, on the least
    /// loaded shard.
    pub fn start(
        self,
        handle: &foundation_sched::Handle,
    ) -> Result<SupervisorRef, foundation_sched::SpawnError> {
        let addr = handle.spawn(move |cx| serve(Supervisor::new(self, None), cx))?;
        Ok(SupervisorRef(ServerRef::from_addr(addr)))
    }
}

/// A child as `which_children` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildInfo {
    /// Its id.
    pub id: Arc<str>,
    /// Its pid, or `None` while it is not running (a transient child that
    /// ended normally).
    pub pid: Option<Pid>,
    /// Worker or supervisor.
    pub kind: ChildKind,
}

/// Child counts, as `count_children` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Child specs held.
    pub specs: usize,
    /// Children running.
    pub active: usize,
    /// Specs of supervisors.
    pub supervisors: usize,
    /// Specs of workers.
    pub workers: usize,
}

/// Why a supervisor request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The supervisor did not answer: it is gone, or too slow.
    Call(CallError),
    /// A child with this id exists already.
    AlreadyPresent(Arc<str>),
    /// No child has this id.
    NotFound(Arc<str>),
}

impl fmt::Display for SupervisorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorError::Call(error) => write!(f, "supervisor call failed: {error}"),
            SupervisorError::AlreadyPresent(id) => write!(f, "child {id} already present"),
            SupervisorError::NotFound(id) => write!(f, "no child {id}"),
        }
    }
}

impl std::error::Error for SupervisorError {}

/// A running supervisor.
#[derive(Clone, Copy, Debug)]
pub struct SupervisorRef(ServerRef<Supervisor>);

/// How long supervisor requests wait for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl SupervisorRef {
    /// The supervisor's pid.
    pub fn pid(&self) -> Pid {
        self.0.pid()
    }

    /// Every child, in start order.
    pub async fn which_children<M: Send + 'static>(
        &self,
        cx: &Context<M>,
    ) -> Result<Vec<ChildInfo>, SupervisorError> {
        match self.request(cx, Request::WhichChildren).await? {
            Reply::Children(children) => Ok(children),
            other => Err(other.unexpected()),
        }
    }

    /// Counts of children.
    pub async fn count_children<M: Send + 'static>(
        &self,
        cx: &Context<M>,
    ) -> Result<Counts, SupervisorError> {
        match self.request(cx, Request::CountChildren).await? {
            Reply::Counts(counts) => Ok(counts),
            other => Err(other.unexpected()),
        }
    }

    /// Adds and starts a child, after the existing ones.
    pub async fn start_child<M: Send + 'static>(
        &self,
        cx: &Context<M>,
        child: ChildSpec,
    ) -> Result<Pid, SupervisorError> {
        match self.request(cx, Request::StartChild(child)).await? {
            Reply::Started(pid) => Ok(pid),
            other => Err(other.unexpected()),
        }
    }

    /// Stops the supervisor: its children in reverse start order, then
    /// itself, with reason `Shutdown` (the way to stop a root supervisor,
    /// which has no parent to do it). Returns once the stop has begun.
    pub async fn stop<M: Send + 'static>(&self, cx: &Context<M>) -> Result<(), SupervisorError> {
        match self.request(cx, Request::Stop).await? {
            Reply::Done => Ok(()),
            other => Err(other.unexpected()),
        }
    }

    /// Stops the child `id` (per its shutdown) and forgets it.
    pub async fn terminate_child<M: Send + 'static>(
        &self,
        cx: &Context<M>,
        id: &str,
    ) -> Result<(), SupervisorError> {
        match self.request(cx, Request::TerminateChild(id.into())).await? {
            Reply::Done => Ok(()),
            other => Err(other.unexpected()),
        }
    }

    async fn request<M: Send + 'static>(
        &self,
        cx: &Context<M>,
        request: Request,
    ) -> Result<Reply, SupervisorError> {
        self.0
            .call(cx, request, REQUEST_TIMEOUT)
            .await
            .map_err(SupervisorError::Call)
    }
}

/// What a supervisor is asked.
pub(crate) enum Request {
    WhichChildren,
    CountChildren,
    StartChild(ChildSpec),
    TerminateChild(Arc<str>),
    Stop,
}

/// What a supervisor answers.
pub(crate) enum Reply {
    Children(Vec<ChildInfo>),
    Counts(Counts),
    Started(Pid),
    Done,
    Refused(SupervisorError),
}

impl Reply {
    fn unexpected(self) -> SupervisorError {
        match self {
            Reply::Refused(error) => error,
            _ => unreachable!("each request has one kind of answer"),
        }
    }
}

/// The supervisor's state.
pub(crate) struct Supervisor {
    strategy: Strategy,
    intensity: RestartIntensity,
    /// In start order.
    children: Vec<Child>,
    parent: Option<Pid>,
}

struct Child {
    spec: ChildSpec,
    pid: Option<Pid>,
}

impl Supervisor {
    fn new(spec: SupervisorSpec, parent: Option<Pid>) -> Supervisor {
        Supervisor {
            strategy: spec.strategy,
            intensity: RestartIntensity::new(spec.max_restarts, spec.period),
            children: spec
                .children
                .into_iter()
                .map(|spec| Child { spec, pid: None })
                .collect(),
            parent,
        }
    }

    fn start(&mut self, index: usize, cx: &ServerContext<Self>) {
        let child = &mut self.children[index];
        child.pid = Some((child.spec.start)(cx));
    }

    /// Stops children `from..` in reverse order.
    async fn stop_from(&mut self, from: usize, cx: &ServerContext<Self>) {
        for index in (from..self.children.len()).rev() {
            if let Some(pid) = self.children[index].pid.take() {
                stop_child(cx, pid, self.children[index].spec.shutdown).await;
            }
        }
    }

    /// A child ended with `reason`: restart what the strategy says, or
    /// give up.
    async fn child_ended(
        &mut self,
        index: usize,
        reason: ExitReason,
        cx: &ServerContext<Self>,
    ) -> Result<(), ExitReason> {
        self.children[index].pid = None;
        let restart = match self.children[index].spec.restart {
            Restart::Permanent => true,
            Restart::Transient => !matches!(reason, ExitReason::Normal | ExitReason::Shutdown),
            Restart::Temporary => false,
        };
        if !restart {
            if self.children[index].spec.restart == Restart::Temporary {
                self.children.remove(index);
            }
            return Ok(());
        }
        self.intensity.record(cx.now())?;
        match self.strategy {
            Strategy::OneForOne | Strategy::Dynamic => self.start(index, cx),
            Strategy::OneForAll => {
                self.stop_from(0, cx).await;
                self.forget_temporary_from(0);
                for index in 0..self.children.len() {
                    self.start(index, cx);
                }
            }
            Strategy::RestForOne => {
                self.stop_from(index + 1, cx).await;
                self.forget_temporary_from(index + 1);
                for index in index..self.children.len() {
                    self.start(index, cx);
                }
            }
        }
        Ok(())
    }

    /// Forgets the temporary children from `from` on: stopped because a
    /// sibling ended, they are never restarted (supervisor(3)).
    fn forget_temporary_from(&mut self, from: usize) {
        let stopped = self.children.split_off(from);
        self.children.extend(
            stopped
                .into_iter()
                .filter(|child| child.spec.restart != Restart::Temporary),
        );
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|child| &*child.spec.id == id)
    }
}

impl Server for Supervisor {
    type Call = Request;
    type Reply = Reply;
    type Cast = ();
    type Info = ();

    async fn init(&mut self, cx: &ServerContext<Self>) -> Result<(), ExitReason> {
        cx.trap_exit(true);
        for index in 0..self.children.len() {
            self.start(index, cx);
        }
        Ok(())
    }

    async fn handle_call(
        &mut self,
        request: Request,
        cx: &ServerContext<Self>,
    ) -> Result<Reply, ExitReason> {
        Ok(match request {
            Request::WhichChildren => Reply::Children(
                self.children
                    .iter()
                    .map(|child| ChildInfo {
                        id: child.spec.id.clone(),
                        pid: child.pid,
                        kind: child.spec.kind,
                    })
                    .collect(),
            ),
            Request::CountChildren => Reply::Counts(Counts {
                specs: self.children.len(),
                active: self
                    .children
                    .iter()
                    .filter(|child| child.pid.is_some())
                    .count(),
                supervisors: self
                    .children
                    .iter()
                    .filter(|c| c.spec.kind == ChildKind::Supervisor)
                    .count(),
                workers: self
                    .children
                    .iter()
                    .filter(|c| c.spec.kind == ChildKind::Worker)
                    .count(),
            }),
            Request::StartChild(spec) => {
                if self.position(&spec.id).is_some() {
                    Reply::Refused(SupervisorError::AlreadyPresent(spec.id))
                } else {
                    self.children.push(Child { spec, pid: None });
                    let index = self.children.len() - 1;
                    self.start(index, cx);
                    Reply::Started(self.children[index].pid.expect("just started"))
                }
            }
            Request::Stop => {
                stop_after_reply(cx, ExitReason::Shutdown);
                Reply::Done
            }
            Request::TerminateChild(id) => match self.position(&id) {
                None => Reply::Refused(SupervisorError::NotFound(id)),
                Some(index) => {
                    let child = self.children.remove(index);
                    if let Some(pid) = child.pid {
                        stop_child(cx, pid, child.spec.shutdown).await;
                    }
                    Reply::Done
                }
            },
        })
    }

    async fn handle_info(
        &mut self,
        info: Info<()>,
        cx: &ServerContext<Self>,
    ) -> Result<(), ExitReason> {
        let Info::Exit(exit) = info else {
            return Ok(());
        };
        if Some(exit.from) == self.parent {
            return Err(exit.reason);
        }
        match self
            .children
            .iter()
            .position(|child| child.pid == Some(exit.from))
        {
            Some(index) => self.child_ended(index, exit.reason, cx).await,
            // A process we are not responsible for: OTP ignores it too.
            None => Ok(()),
        }
    }

    async fn terminate(&mut self, _: &ExitReason, cx: &ServerContext<Self>) {
        self.stop_from(0, cx).await;
    }
}

/// Stops `pid` per `shutdown` and waits until it has ended, leaving no
/// `Exit` or `Down` of it in the supervisor's mailbox.
async fn stop_child(cx: &ServerContext<Supervisor>, pid: Pid, shutdown: Shutdown) {
    let monitor = cx.monitor(pid);
    cx.unlink(pid);
    let is_down = move |envelope: &Envelope<_>| matches!(envelope, Envelope::Down(down) if down.monitor == monitor);
    match shutdown {
        Shutdown::BrutalKill => cx.kill(pid),
        Shutdown::Infinity => cx.exit(pid, ExitReason::Shutdown),
        Shutdown::Timeout(grace) => {
            cx.exit(pid, ExitReason::Shutdown);
            if cx.recv_match_timeout(is_down, grace).await.is_some() {
                flush_exit(cx, pid).await;
                return;
            }
            cx.kill(pid);
        }
    }
    cx.recv_match(is_down).await;
    flush_exit(cx, pid).await;
}

/// Drops an `Exit` from `pid` that arrived before the unlink.
async fn flush_exit(cx: &ServerContext<Supervisor>, pid: Pid) {
    let from_pid =
        move |envelope: &Envelope<_>| matches!(envelope, Envelope::Exit(exit) if exit.from == pid);
    cx.recv_match_timeout(from_pid, Duration::ZERO).await;
}
