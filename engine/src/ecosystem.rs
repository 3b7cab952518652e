//! Process ecosystems: a coordinator and its workers, spawned, supervised,
//! scaled and stopped as one unit.
//!
//! [`spawn_ecosystem`] starts a manager process that starts the
//! coordinator and `count` workers (from a factory called once per worker),
//! links to all of them and traps their exits. When a worker ends the
//! manager tells the coordinator ([`WorkerEvent::Exited`]), starts a
//! replacement and tells the coordinator again ([`WorkerEvent::Started`]);
//! when the coordinator ends it is restarted. The spec's [`Strategy`]
//! widens that to the whole unit where asked
//! ([`EcosystemSpec::strategy`]). The manager is itself a supervisor, and
//! [`EcosystemSpec::into_child_spec`] puts it in a supervision tree. Restarts obey the same
//! intensity rule as a supervisor's: more than `max_restarts` within
//! `period` and the manager stops everything and ends with
//! [`INTENSITY_EXCEEDED`](crate::supervision::INTENSITY_EXCEEDED), which
//! whoever supervises the manager sees.
//!
//! The [`Distribution`] says where the workers run. By default
//! ([`Distribution::LocalOnly`]) the whole ecosystem runs on the manager's
//! node and shard. With [`Distribution::ExplicitNodes`] or
//! [`Distribution::ClusterWide`] the workers are spread over nodes by a
//! [`PlacementStrategy`]: such workers are started through each node's
//! process factory ([`crate::dist::Factory`]), by a kind registered on
//! every node the policy may pick ([`EcosystemSpec::with_worker_kind`]),
//! since a function cannot travel to another node. The manager links to
//! each worker wherever it runs, so a worker whose node goes down ends for
//! the manager with `noconnection` and is replaced on a node that is up,
//! like any worker that ends. The coordinator runs beside the manager. A
//! worker on another node is reached with [`crate::dist::send`] to its pid
//! (its [`Addr`] serves only on its own node), and its kind should take
//! [`Remote`](foundation_transport::Remote) messages. Workers are spawned
//! linked ([`crate::dist::spawn_link`]): the link exists before a worker
//! runs, wherever it runs.
//!
//! ```
//! use foundation::ecosystem::{spawn_ecosystem, EcosystemSpec, WorkerEvent};
//! use foundation::{Context, Envelope, Runtime};
//!
//! /// The coordinator's messages: its own, plus what the manager tells it.
//! enum Coord {
//!     Worker(WorkerEvent),
//! }
//! impl From<WorkerEvent> for Coord {
//!     fn from(event: WorkerEvent) -> Coord {
//!         Coord::Worker(event)
//!     }
//! }
//!
//! let runtime = Runtime::builder().shards(1).build().unwrap();
//! let count = runtime
//!     .block_on(|cx: Context<()>| async move {
//!         let spec = EcosystemSpec::new(
//!             |cx: Context<Coord>| async move { while let Envelope::Msg(_) = cx.recv().await {} },
//!             |cx: Context<u64>| async move { while let Envelope::Msg(_) = cx.recv().await {} },
//!             100,
//!         );
//!         let ecosystem = spawn_ecosystem(&cx, spec).unwrap();
//!         ecosystem.scale(&cx, 10).await.unwrap();
//!         let stats = ecosystem.stats(&cx).await.unwrap();
//!         ecosystem.stop(&cx).await.unwrap();
//!         stats.workers
//!     })
//!     .unwrap();
//! assert_eq!(count, 10);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use foundation_sched::sim::SimRng;
use foundation_sched::time::Instant;
use foundation_sched::{Addr, Context, ExitReason, NodeId, Pid, ProcessResult};
use foundation_transport::frame::{self, Wire};

use crate::dist::{self, Dist};

use crate::server::{serve, stop_after_reply, CallError, Info, Server, ServerContext, ServerRef};
use crate::supervision::{ChildKind, ChildSpec, RestartIntensity, Strategy};

/// Where an ecosystem's processes run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Distribution {
    /// On the node (and shard) of the manager.
    LocalOnly,
    /// On the listed nodes, placed by `placement`.
    ExplicitNodes {
        /// The nodes to use.
        nodes: Vec<NodeId>,
        /// How workers are spread over them.
        placement: PlacementStrategy,
    },
    /// On every node of the cluster, placed by `placement`.
    ClusterWide {
        /// How workers are spread over the nodes.
        placement: PlacementStrategy,
    },
}

/// How workers are spread over nodes. A node that cannot start a worker
/// (it went down, or refuses) is passed over for the next one the strategy
/// names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlacementStrategy {
    /// In turn.
    RoundRobin,
    /// On the node running the fewest of this ecosystem's workers.
    LeastLoaded,
    /// At random (drawn from a stream seeded by the manager's pid).
    Random,
    /// Near the coordinator first. Nodes carry no machine or rack
    /// information yet, so this is the manager's own node, then the others
    /// in node order.
    TopologyAware,
}

/// What the manager tells the coordinator about its workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A worker ended, with this reason.
    Exited {
        /// The worker.
        pid: Pid,
        /// Why.
        reason: ExitReason,
    },
    /// A worker started (a replacement, or one added by scaling up).
    Started {
        /// The new worker.
        pid: Pid,
    },
}

/// How to start an ecosystem.
pub struct EcosystemSpec<C: From<WorkerEvent> + Send + 'static, W: Send + 'static> {
    coordinator: StartFn<C, W, C>,
    worker: WorkerStart<C, W>,
    workers: usize,
    strategy: Strategy,
    distribution: Distribution,
    max_restarts: u32,
    period: Duration,
}

impl<C: From<WorkerEvent> + Send + 'static, W: Send + 'static> Clone for EcosystemSpec<C, W> {
    fn clone(&self) -> Self {
        EcosystemSpec {
            coordinator: self.coordinator.clone(),
            worker: self.worker.clone(),
            workers: self.workers,
            strategy: self.strategy,
            distribution: self.distribution.clone(),
            max_restarts: self.max_restarts,
            period: self.period,
        }
    }
}

impl<C, W> EcosystemSpec<C, W>
where
    C: From<WorkerEvent> + Send + 'static,
    W: Send + 'static,
{
    /// A coordinator started by `coordinator` and `workers` workers started
    /// by `worker` (called once per worker, and again for each
    /// replacement). Defaults: local only; at most `max(10, workers / 10)`
    /// restarts in 5 seconds.
    pub fn new<FC, FutC, FW, FutW>(coordinator: FC, worker: FW, workers: usize) -> Self
    where
        FC: Fn(Context<C>) -> FutC + Clone + Send + Sync + 'static,
        FutC: Future + 'static,
        FutC::Output: ProcessResult,
        FW: Fn(Context<W>) -> FutW + Clone + Send + Sync + 'static,
        FutW: Future + 'static,
        FutW::Output: ProcessResult,
    {
        let worker: StartFn<C, W, W> = Arc::new(move |manager| manager.spawn_link(worker.clone()));
        EcosystemSpec::with_start(coordinator, WorkerStart::Local(worker), workers)
    }

    /// A coordinator started by `coordinator` and `workers` workers started
    /// through the process factory of the node each lands on, as `kind`
    /// with `args` ([`crate::dist::spawn`]): what lets workers run on other
    /// nodes ([`EcosystemSpec::distribution`]). `kind` must be registered
    /// on every node the distribution may pick, with `W` as its mailbox
    /// type. Defaults as [`EcosystemSpec::new`]'s.
    pub fn with_worker_kind<FC, FutC, A>(
        coordinator: FC,
        kind: &str,
        args: &A,
        workers: usize,
    ) -> Result<Self, EcosystemError>
    where
        FC: Fn(Context<C>) -> FutC + Clone + Send + Sync + 'static,
        FutC: Future + 'static,
        FutC::Output: ProcessResult,
        A: Wire,
    {
        let args =
            frame::archive(args).map_err(|error| EcosystemError::Arguments(error.to_string()))?;
        let start = WorkerStart::Kind {
            kind: kind.into(),
            args: args.into(),
        };
        Ok(EcosystemSpec::with_start(coordinator, start, workers))
    }

    fn with_start<FC, FutC>(coordinator: FC, worker: WorkerStart<C, W>, workers: usize) -> Self
    where
        FC: Fn(Context<C>) -> FutC + Clone + Send + Sync + 'static,
        FutC: Future + 'static,
        FutC::Output: ProcessResult,
    {
        EcosystemSpec {
            coordinator: Arc::new(move |manager| manager.spawn_link(coordinator.clone())),
            worker,
            workers,
            strategy: Strategy::OneForOne,
            distribution: Distribution::LocalOnly,
            max_restarts: u32::try_from(workers / 10).unwrap_or(u32::MAX).max(10),
            period: Duration::from_secs(5),
        }
    }

    /// What restarts when a process of the ecosystem ends. The coordinator
    /// counts as started first, the workers after it:
    /// * `OneForOne` (the default) and `Dynamic`: only the process that
    ///   ended;
    /// * `OneForAll`: the coordinator and every worker;
    /// * `RestForOne`: a coordinator restart brings fresh workers with it;
    ///   a worker is replaced alone (workers are not ordered among
    ///   themselves).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// A child spec that runs this ecosystem under a supervisor: its manager
    /// is the child, and supervises the coordinator and workers itself.
    pub fn into_child_spec(self, id: impl Into<Arc<str>>) -> ChildSpec {
        ChildSpec::from_start(id, ChildKind::Supervisor, move |supervisor| {
            let spec = self.clone();
            let parent = supervisor.pid();
            supervisor
                .spawn_link(move |cx| serve(Manager::new(spec, parent), cx))
                .pid()
        })
    }

    /// Where the ecosystem runs.
    pub fn distribution(mut self, distribution: Distribution) -> Self {
        self.distribution = distribution;
        self
    }

    /// At most `max_restarts` restarts (coordinator or workers) within
    /// `period`.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }
}

/// Starts one process of an ecosystem, linked to its manager, whose
/// messages are `T`.
type StartFn<C, W, T> = Arc<dyn Fn(&ServerContext<Manager<C, W>>) -> Addr<T> + Send + Sync>;

/// How workers start: by a function, on the manager's shard, or by a kind
/// registered with the process factory of whichever node they land on.
enum WorkerStart<C: From<WorkerEvent> + Send + 'static, W: Send + 'static> {
    Local(StartFn<C, W, W>),
    Kind {
        kind: Arc<str>,
        /// The kind's arguments, archived once for every spawn.
        args: Arc<[u8]>,
    },
}

impl<C: From<WorkerEvent> + Send + 'static, W: Send + 'static> Clone for WorkerStart<C, W> {
    fn clone(&self) -> Self {
        match self {
            WorkerStart::Local(start) => WorkerStart::Local(start.clone()),
            WorkerStart::Kind { kind, args } => WorkerStart::Kind {
                kind: kind.clone(),
                args: args.clone(),
            },
        }
    }
}

/// Why an ecosystem operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EcosystemError {
    /// This distribution places workers on other nodes, and the spec's
    /// workers start by a function, which cannot travel: use
    /// [`EcosystemSpec::with_worker_kind`].
    Unsupported(Distribution),
    /// The workers start by kind ([`EcosystemSpec::with_worker_kind`]),
    /// and this node runs no distribution.
    NotDistributed,
    /// The workers' arguments could not be archived.
    Arguments(String),
    /// The manager did not answer: it is gone, or too slow.
    Call(CallError),
}

impl fmt::Display for EcosystemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EcosystemError::Unsupported(distribution) => write!(
                f,
                "distribution {distribution:?} needs workers started by kind, not by a function"
            ),
            EcosystemError::NotDistributed => f.write_str("this node runs no distribution"),
            EcosystemError::Arguments(error) => write!(f, "the workers' arguments: {error}"),
            EcosystemError::Call(error) => write!(f, "ecosystem call failed: {error}"),
        }
    }
}

impl std::error::Error for EcosystemError {}

/// An ecosystem's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EcosystemStats {
    /// Workers running.
    pub workers: usize,
    /// Envelopes waiting in the coordinator's and workers' mailboxes.
    pub mailbox_len: usize,
    /// Restarts so far (coordinator and workers).
    pub restarts: u64,
}

/// Starts an ecosystem on the caller's shard, its manager linked to the
/// caller.
pub fn spawn_ecosystem<C, W, M>(
    cx: &Context<M>,
    spec: EcosystemSpec<C, W>,
) -> Result<Ecosystem<C, W>, EcosystemError>
where
    C: From<WorkerEvent> + Send + 'static,
    W: Send + 'static,
    M: Send + 'static,
{
    let by_function = matches!(spec.worker, WorkerStart::Local(_));
    if spec.distribution != Distribution::LocalOnly && by_function {
        return Err(EcosystemError::Unsupported(spec.distribution));
    }
    if !by_function {
        // Workers started by kind go through a process factory.
        Dist::of(cx).map_err(|_| EcosystemError::NotDistributed)?;
    }
    let parent = cx.pid();
    let manager = cx.spawn_link(move |cx| serve(Manager::new(spec, parent), cx));
    Ok(Ecosystem {
        manager: ServerRef::from_addr(manager),
    })
}

/// A running ecosystem.
pub struct Ecosystem<C: From<WorkerEvent> + Send + 'static, W: Send + 'static> {
    manager: ServerRef<Manager<C, W>>,
}

impl<C: From<WorkerEvent> + Send + 'static, W: Send + 'static> Clone for Ecosystem<C, W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: From<WorkerEvent> + Send + 'static, W: Send + 'static> Copy for Ecosystem<C, W> {}

impl<C: From<WorkerEvent> + Send + 'static, W: Send + 'static> fmt::Debug for Ecosystem<C, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ecosystem({})", self.manager.pid())
    }
}

/// How long ecosystem requests wait for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl<C, W> Ecosystem<C, W>
where
    C: From<WorkerEvent> + Send + 'static,
    W: Send + 'static,
{
    /// The manager's pid: link to it or monitor it to follow the whole
    /// ecosystem.
    pub fn pid(&self) -> Pid {
        self.manager.pid()
    }

    /// The current coordinator.
    pub async fn coordinator<M: Send + 'static>(
        &self,
        cx: &Context<M>,
    ) -> Result<Addr<C>, EcosystemError> {
        match self.request(cx, Request::Coordinator).await? {
            Reply::Coordinator(addr) => Ok(addr),
            _ => unreachable!("each request has one kind of answer"),
        }
    }

    /// The current workers.
    pub async fn workers<M: Send + 'static>(
        &self,
        cx: &Context<M>,
    ) -> Result<Vec<Addr<W>>, EcosystemError> {
        match self.request(cx, Request::Workers).await? {
            Reply::Workers(workers) => Ok(workers),
            _ => unreachable!("each request has one kind of answer"),
        }
    }

    /// Starts or stops workers until there are `workers` of them. Stopped
    /// workers are sent an exit signal with reason `Shutdown` and not
    /// waited for.
    pub async fn scale<M: Send + 'static>(
        &self,
        cx: &Context<M>,
        workers: usize,
    ) -> Result<(), EcosystemError> {
        self.request(cx, Request::Scale(workers)).await.map(drop)
    }

    /// Worker count, mailbox lengths and restarts.
    pub async fn stats<M: Send + 'static>(
        &self,
        cx: &Context<M>,
    ) -> Result<EcosystemStats, EcosystemError> {
        match self.request(cx, Request::Stats).await? {
            Reply::Stats(stats) => Ok(stats),
            _ => unreachable!("each request has one kind of answer"),
        }
    }

    /// Stops the workers, then the coordinator, then the manager, which
    /// ends with reason `Normal`. Returns once they have been told to stop.
    pub async fn stop<M: Send + 'static>(&self, cx: &Context<M>) -> Result<(), EcosystemError> {
        self.request(cx, Request::Stop).await.map(drop)
    }

    async fn request<M: Send + 'static>(
        &self,
        cx: &Context<M>,
        request: Request,
    ) -> Result<Reply<C, W>, EcosystemError> {
        self.manager
            .call(cx, request, REQUEST_TIMEOUT)
            .await
            .map_err(EcosystemError::Call)
    }
}

pub(crate) enum Request {
    Coordinator,
    Workers,
    Scale(usize),
    Stats,
    Stop,
}

pub(crate) enum Reply<C, W> {
    Coordinator(Addr<C>),
    Workers(Vec<Addr<W>>),
    Stats(EcosystemStats),
    Done,
}

/// The process that runs an ecosystem.
pub(crate) struct Manager<C: From<WorkerEvent> + Send + 'static, W: Send + 'static> {
    spec: EcosystemSpec<C, W>,
    parent: Pid,
    coordinator: Option<Addr<C>>,
    /// How many workers there should be.
    target: usize,
    /// The running workers, and where each sits in `workers`, so that an
    /// exit or a scale-down is O(1) whatever the size.
    workers: Vec<Addr<W>>,
    positions: HashMap<Pid, usize>,
    /// Workers per node, for `LeastLoaded`.
    per_node: HashMap<NodeId, usize>,
    /// Placements so far, for `RoundRobin` and `TopologyAware`.
    turn: usize,
    /// Draws of `Random`.
    draws: SimRng,
    restarts: u64,
    intensity: RestartIntensity,
}

/// How long a remote spawn of a worker may take before the next node is
/// tried. A spawn that times out may still start its worker there; it is
/// linked to the manager (who ignores its exit) and ends with it.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The stream of the manager's pid that `Random` placement draws from.
const RANDOM_PLACEMENT: u64 = 0xec05;

impl<C, W> Manager<C, W>
where
    C: From<WorkerEvent> + Send + 'static,
    W: Send + 'static,
{
    fn new(spec: EcosystemSpec<C, W>, parent: Pid) -> Self {
        Manager {
            parent,
            coordinator: None,
            target: spec.workers,
            workers: Vec::new(),
            positions: HashMap::new(),
            per_node: HashMap::new(),
            turn: 0,
            draws: SimRng::new(parent.to_bits(), RANDOM_PLACEMENT),
            restarts: 0,
            intensity: RestartIntensity::new(spec.max_restarts, spec.period),
            spec,
        }
    }

    /// Starts the coordinator, then workers up to the target. On a restart
    /// (`announce`) the coordinator is told of each worker; at the first
    /// start it can ask for them.
    async fn start_all(
        &mut self,
        cx: &ServerContext<Self>,
        announce: bool,
    ) -> Result<(), ExitReason> {
        self.coordinator = Some((self.spec.coordinator)(cx));
        while self.workers.len() < self.target {
            let worker = self.start_worker(cx).await?;
            if announce {
                self.tell_coordinator(cx, WorkerEvent::Started { pid: worker.pid() });
            }
        }
        Ok(())
    }

    /// Starts a worker, linked: here by its function, or by its kind on a
    /// node the placement picks. A worker that no node could start ends
    /// the manager, as a child that fails to start ends its supervisor.
    async fn start_worker(&mut self, cx: &ServerContext<Self>) -> Result<Addr<W>, ExitReason> {
        let worker = match self.spec.worker.clone() {
            WorkerStart::Local(start) => start(cx),
            WorkerStart::Kind { kind, args } => self.start_by_kind(cx, &kind, &args).await?,
        };
        self.positions.insert(worker.pid(), self.workers.len());
        *self.per_node.entry(worker.pid().node()).or_default() += 1;
        self.workers.push(worker);
        Ok(worker)
    }

    async fn start_by_kind(
        &mut self,
        cx: &ServerContext<Self>,
        kind: &str,
        args: &[u8],
    ) -> Result<Addr<W>, ExitReason> {
        let mut refusals = Vec::new();
        for node in self.placement_order(cx) {
            match dist::spawn_archived(cx, node, kind, args.to_vec(), true, SPAWN_TIMEOUT).await {
                Ok(pid) => return Ok(Addr::from_pid(pid)),
                Err(error) => refusals.push(format!("node {}: {error}", node.0)),
            }
        }
        Err(ExitReason::error(format!(
            "no node could start a worker of kind {kind:?} ({})",
            refusals.join("; ")
        )))
    }

    /// The nodes to try for the next worker, in the placement's order:
    /// those of the distribution that are up.
    fn placement_order(&mut self, cx: &ServerContext<Self>) -> Vec<NodeId> {
        let here = cx.runtime().node();
        let up = Dist::of(cx).map_or_else(|_| vec![here], |dist| dist.nodes());
        let (mut nodes, placement): (Vec<NodeId>, _) = match &self.spec.distribution {
            Distribution::ExplicitNodes { nodes, placement } => (
                nodes
                    .iter()
                    .copied()
                    .filter(|node| up.contains(node))
                    .collect(),
                *placement,
            ),
            Distribution::ClusterWide { placement } => (up, *placement),
            Distribution::LocalOnly => (vec![here], PlacementStrategy::RoundRobin),
        };
        if nodes.is_empty() {
            return nodes;
        }
        let turn = self.turn % nodes.len();
        self.turn += 1;
        match placement {
            PlacementStrategy::RoundRobin => nodes.rotate_left(turn),
            PlacementStrategy::Random => {
                let first = self.draws.below(nodes.len() as u64) as usize;
                nodes.rotate_left(first);
            }
            PlacementStrategy::LeastLoaded => {
                nodes.sort_by_key(|node| self.per_node.get(node).copied().unwrap_or(0));
            }
            PlacementStrategy::TopologyAware => {
                if let Some(at) = nodes.iter().position(|&node| node == here) {
                    nodes[..=at].rotate_right(1);
                }
            }
        }
        nodes
    }

    /// Counts worker `pid` off its node.
    fn unplace(&mut self, pid: Pid) {
        if let Some(count) = self.per_node.get_mut(&pid.node()) {
            *count = count.saturating_sub(1);
        }
    }

    /// Forgets worker `pid`; whether it was one.
    fn forget_worker(&mut self, pid: Pid) -> bool {
        let Some(position) = self.positions.remove(&pid) else {
            return false;
        };
        self.unplace(pid);
        self.workers.swap_remove(position);
        if let Some(moved) = self.workers.get(position) {
            self.positions.insert(moved.pid(), position);
        }
        true
    }

    fn tell_coordinator(&self, cx: &ServerContext<Self>, event: WorkerEvent) {
        if let Some(coordinator) = &self.coordinator {
            cx.send(coordinator, C::from(event));
        }
    }

    /// Stops the newest worker.
    fn stop_newest_worker(&mut self, cx: &ServerContext<Self>) {
        if let Some(worker) = self.workers.pop() {
            self.positions.remove(&worker.pid());
            self.unplace(worker.pid());
            cx.unlink(worker.pid());
            cx.exit(worker.pid(), ExitReason::Shutdown);
        }
    }

    fn stop_all(&mut self, cx: &ServerContext<Self>) {
        while !self.workers.is_empty() {
            self.stop_newest_worker(cx);
        }
        if let Some(coordinator) = self.coordinator.take() {
            cx.unlink(coordinator.pid());
            cx.exit(coordinator.pid(), ExitReason::Shutdown);
        }
    }

    /// Counts a restart; an error when it is one too many.
    fn restart_allowed(&mut self, now: Instant) -> Result<(), ExitReason> {
        self.restarts += 1;
        self.intensity.record(now)
    }
}

impl<C, W> Server for Manager<C, W>
where
    C: From<WorkerEvent> + Send + 'static,
    W: Send + 'static,
{
    type Call = Request;
    type Reply = Reply<C, W>;
    type Cast = ();
    type Info = ();

    async fn init(&mut self, cx: &ServerContext<Self>) -> Result<(), ExitReason> {
        cx.trap_exit(true);
        self.draws = SimRng::new(cx.pid().to_bits(), RANDOM_PLACEMENT);
        self.start_all(cx, false).await
    }

    async fn handle_call(
        &mut self,
        request: Request,
        cx: &ServerContext<Self>,
    ) -> Result<Reply<C, W>, ExitReason> {
        Ok(match request {
            Request::Coordinator => Reply::Coordinator(self.coordinator.expect("started in init")),
            Request::Workers => Reply::Workers(self.workers.clone()),
            Request::Scale(target) => {
                self.target = target;
                while self.workers.len() < target {
                    let worker = self.start_worker(cx).await?;
                    self.tell_coordinator(cx, WorkerEvent::Started { pid: worker.pid() });
                }
                while self.workers.len() > target {
                    self.stop_newest_worker(cx);
                }
                Reply::Done
            }
            Request::Stats => {
                let mut mailbox_len = 0;
                let pids = self
                    .coordinator
                    .iter()
                    .map(Addr::pid)
                    .chain(self.workers.iter().map(Addr::pid));
                for pid in pids.collect::<Vec<_>>() {
                    if let Some(info) = cx.process_info(pid).await {
                        mailbox_len += info.mailbox_len;
                    }
                }
                Reply::Stats(EcosystemStats {
                    workers: self.workers.len(),
                    mailbox_len,
                    restarts: self.restarts,
                })
            }
            Request::Stop => {
                self.stop_all(cx);
                // `Normal`, as for `gen_server:stop`, so a linked caller
                // that asked for the stop is not taken down with it.
                stop_after_reply(cx, ExitReason::Normal);
                Reply::Done
            }
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
        if exit.from == self.parent {
            return Err(exit.reason);
        }
        if self
            .coordinator
            .is_some_and(|coordinator| coordinator.pid() == exit.from)
        {
            self.coordinator = None;
            self.restart_allowed(cx.now())?;
            match self.spec.strategy {
                Strategy::OneForAll | Strategy::RestForOne => {
                    self.stop_all(cx);
                    self.start_all(cx, true).await?;
                }
                Strategy::OneForOne | Strategy::Dynamic => {
                    self.coordinator = Some((self.spec.coordinator)(cx));
                }
            }
            return Ok(());
        }
        if self.forget_worker(exit.from) {
            self.tell_coordinator(
                cx,
                WorkerEvent::Exited {
                    pid: exit.from,
                    reason: exit.reason,
                },
            );
            self.restart_allowed(cx.now())?;
            if self.spec.strategy == Strategy::OneForAll {
                self.stop_all(cx);
                self.start_all(cx, true).await?;
            } else {
                let worker = self.start_worker(cx).await?;
                self.tell_coordinator(cx, WorkerEvent::Started { pid: worker.pid() });
            }
        }
        Ok(())
    }

    async fn terminate(&mut self, _: &ExitReason, cx: &ServerContext<Self>) {
        self.stop_all(cx);
    }
}
