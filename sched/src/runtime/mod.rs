//! Starting, using from outside, and stopping a runtime.
//!
//! A [`Runtime`] owns one pinned thread per shard (and a stall watchdog). A
//! [`Handle`] is how threads outside the runtime spawn processes, send to
//! them and query them; processes themselves use their
//! [`Context`](crate::Context).
//!
//! ```
//! use foundation_sched::{Context, Envelope, Runtime};
//!
//! let runtime = Runtime::builder().shards(2).build().unwrap();
//! let echo = runtime
//!     .spawn(|cx: Context<(u32, std::sync::mpsc::Sender<u32>)>| async move {
//!         while let Envelope::Msg((n, reply)) = cx.recv().await {
//!             reply.send(n * 2).unwrap();
//!         }
//!     })
//!     .unwrap();
//! let (tx, rx) = std::sync::mpsc::channel();
//! runtime.send(&echo, (21, tx));
//! assert_eq!(rx.recv().unwrap(), 42);
//! let report = runtime.shutdown();
//! assert_eq!(report.processes_stopped, 1);
//! ```

pub(crate) mod registry;
mod stall;

pub use stall::Stall;

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use crate::arena::{ChunkPool, PoolStats};
use crate::driver::{Driver, DriverFactory, ParkDriver};
use crate::exit::{Down, ExitReason};
use crate::oneshot;
use crate::pid::{NodeId, Pid, ShardId};
use crate::process::signal::{ExitKind, Signal};
use crate::process::{
    Addr, Context, Envelope, LocalSpawn, Placement, ProcessInfo, SpawnError, SpawnOptions,
};
use crate::ring::erased::ErasedMessage;
use crate::ring::spsc;
use crate::scheduler::shard::ShardParts;
use crate::scheduler::shared::{ShardShared, Shared, Simulated};
use crate::scheduler::{waker, Packet, Shard, ShardWork};
use crate::time::{Clock, SystemClock};

/// Configures and starts a [`Runtime`].
///
/// ```
/// use foundation_sched::Runtime;
/// use std::time::Duration;
///
/// let runtime = Runtime::builder()
///     .shards(2)
///     .reductions(4000)
///     .stall_threshold(Some(Duration::from_millis(50)))
///     .build()
///     .unwrap();
/// assert_eq!(runtime.shard_count(), 2);
/// ```
#[must_use]
pub struct Builder {
    shards: Option<usize>,
    cores: Option<Vec<usize>>,
    pin: bool,
    reductions: u32,
    stall_threshold: Option<Duration>,
    idle_spin: Duration,
    node: Option<NodeId>,
    clock: Option<Arc<dyn Clock>>,
    driver: Option<DriverFactory>,
    ring_capacity: Option<usize>,
    arena_chunk_bytes: usize,
    arena_region_chunks: usize,
}

/// Why a runtime could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// Shard count outside `1..=255`.
    ShardCount(usize),
    /// A core in the core set does not exist on this machine.
    NoSuchCore(usize),
    /// Another runtime in this OS process has this node id.
    NodeIdInUse(NodeId),
    /// Every node id is taken by runtimes in this OS process.
    NoFreeNodeId,
    /// The arena chunk size is not a power of two of at least 4 KiB.
    ArenaChunkBytes(usize),
    /// A shard thread could not be started.
    Thread(std::io::Error),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ShardCount(n) => write!(f, "{n} shards: the count must be 1 to 255"),
            BuildError::NoSuchCore(core) => write!(f, "core {core} does not exist"),
            BuildError::NodeIdInUse(node) => write!(f, "node id {} is in use", node.0),
            BuildError::NoFreeNodeId => f.write_str("no free node id"),
            BuildError::ArenaChunkBytes(n) => {
                write!(
                    f,
                    "arena chunk of {n} bytes: must be a power of two >= 4096"
                )
            }
            BuildError::Thread(error) => write!(f, "starting a shard thread: {error}"),
        }
    }
}

impl std::error::Error for BuildError {}

impl Builder {
    fn new() -> Builder {
        Builder {
            shards: None,
            cores: None,
            pin: true,
            reductions: 2000,
            stall_threshold: Some(Duration::from_millis(500)),
            idle_spin: Duration::from_micros(50),
            node: None,
            clock: None,
            driver: None,
            ring_capacity: None,
            arena_chunk_bytes: 8 * 1024,
            arena_region_chunks: 256,
        }
    }

    /// Number of shards; defaults to the number of cores in the core set.
    pub fn shards(mut self, shards: usize) -> Builder {
        self.shards = Some(shards);
        self
    }

    /// The cores shards are pinned to, round-robin; defaults to every core.
    pub fn cores(mut self, cores: Vec<usize>) -> Builder {
        self.cores = Some(cores);
        self
    }

    /// Whether to pin shard threads to cores (default true).
    pub fn pin(mut self, pin: bool) -> Builder {
        self.pin = pin;
        self
    }

    /// Reductions a process may use in one poll before it yields
    /// (default 2000; at least 1).
    pub fn reductions(mut self, reductions: u32) -> Builder {
        self.reductions = reductions.max(1);
        self
    }

    /// How long one poll may run before the watchdog reports a stall
    /// (default 500 ms); `None` turns the watchdog off.
    pub fn stall_threshold(mut self, threshold: Option<Duration>) -> Builder {
        self.stall_threshold = threshold;
        self
    }

    /// How long a shard that runs out of work busy-waits for more before
    /// it parks (default 50 µs). Spinning turns a cross-shard wake-up from
    /// a futex round trip (tens of microseconds) into a cache-line
    /// transfer, at the price of a busy core for that long after each
    /// burst; zero parks at once.
    pub fn idle_spin(mut self, spin: Duration) -> Builder {
        self.idle_spin = spin;
        self
    }

    /// This runtime's node id; by default the lowest id no other runtime
    /// in this OS process has.
    pub fn node(mut self, node: NodeId) -> Builder {
        self.node = Some(node);
        self
    }

    /// The clock runtime logic reads (default: the wall clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Builder {
        self.clock = Some(clock);
        self
    }

    /// Makes each shard's driver (default: [`ParkDriver`]).
    pub fn driver(mut self, factory: DriverFactory) -> Builder {
        self.driver = Some(factory);
        self
    }

    /// Packets each cross-shard ring holds before senders overflow into a
    /// local queue and wait. By default a shard's inbound rings share
    /// 16,384 slots (128 bytes each), each ring getting 256 to 4096 of
    /// them: deep rings let a sender keep filling while the receiver
    /// drains, which is what cross-shard throughput needs, while memory
    /// stays about 2 MiB per shard however many shards there are.
    pub fn ring_capacity(mut self, capacity: usize) -> Builder {
        self.ring_capacity = Some(capacity);
        self
    }

    /// Size of the chunks process arenas are made of (default 8 KiB).
    pub fn arena_chunk_bytes(mut self, bytes: usize) -> Builder {
        self.arena_chunk_bytes = bytes;
        self
    }

    /// Starts the runtime.
    pub fn build(self) -> Result<Runtime, BuildError> {
        let prepared = self.prepare(None)?;
        let Prepared {
            shared,
            shards,
            cores,
            pin,
            arena,
            stall_threshold,
        } = prepared;
        let mut threads = Vec::with_capacity(shards.len());
        for (index, parts) in shards.into_iter().enumerate() {
            let shard_shared = shared.clone();
            let core = (pin && !cores.is_empty()).then(|| cores[index % cores.len()]);
            let thread = thread::Builder::new()
                .name(format!("foundation-shard-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    }
                    let (shard, driver) = parts.into_shard(index, shard_shared, arena);
                    shard.run(driver)
                });
            match thread {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    let runtime = Runtime::assemble(shared, threads, None);
                    drop(runtime);
                    return Err(BuildError::Thread(error));
                }
            }
        }
        let watchdog =
            stall_threshold.map(|threshold| stall::spawn_watchdog(shared.clone(), threshold));
        Ok(Runtime::assemble(shared, threads, watchdog))
    }

    /// Builds a node of a simulation: one shard, run on the calling thread
    /// by [`crate::sim`], on `clock`, sharing `simulated`. No core is
    /// pinned, no thread started, no watchdog run; the shard never spins.
    ///
    /// Its node id is the builder's, or `default_node`. A simulated node is
    /// not registered among the OS process's runtimes: its ids are the
    /// simulation's own, the same in every run and in every test thread.
    pub(crate) fn build_simulated(
        mut self,
        default_node: NodeId,
        clock: Arc<dyn Clock>,
        simulated: Arc<Simulated>,
    ) -> Result<SimulatedParts, BuildError> {
        self.node = Some(self.node.unwrap_or(default_node));
        if self.shards.is_some_and(|shards| shards != 1) {
            return Err(BuildError::ShardCount(self.shards.unwrap_or(0)));
        }
        self.shards = Some(1);
        self.cores = Some(Vec::new());
        self.pin = false;
        self.idle_spin = Duration::ZERO;
        self.stall_threshold = None;
        self.clock = Some(clock);
        let Prepared {
            shared,
            mut shards,
            arena,
            ..
        } = self.prepare(Some(simulated))?;
        let parts = shards.pop().expect("one shard");
        let (shard, driver) = parts.into_shard(0, shared.clone(), arena);
        Ok(SimulatedParts {
            handle: Handle { shared },
            shard,
            driver,
        })
    }

    /// What both sides of the seam start from: checked settings, the node
    /// id, the shared state, and each shard's driver and rings.
    fn prepare(self, simulated: Option<Arc<Simulated>>) -> Result<Prepared, BuildError> {
        let available = core_affinity::get_core_ids().unwrap_or_default();
        let cores = match self.cores {
            Some(cores) => {
                if let Some(&missing) = cores
                    .iter()
                    .find(|&&c| !available.iter().any(|a| a.id == c))
                {
                    return Err(BuildError::NoSuchCore(missing));
                }
                cores
            }
            None => available.iter().map(|core| core.id).collect(),
        };
        let shard_count = self.shards.unwrap_or_else(|| cores.len().max(1));
        if !(1..=255).contains(&shard_count) {
            return Err(BuildError::ShardCount(shard_count));
        }
        if self.arena_chunk_bytes < 4096 || !self.arena_chunk_bytes.is_power_of_two() {
            return Err(BuildError::ArenaChunkBytes(self.arena_chunk_bytes));
        }
        let node = match (&simulated, self.node) {
            (Some(_), Some(node)) => node,
            _ => registry::claim(self.node).ok_or(match self.node {
                Some(node) => BuildError::NodeIdInUse(node),
                None => BuildError::NoFreeNodeId,
            })?,
        };

        let factory: DriverFactory = self
            .driver
            .unwrap_or_else(|| Arc::new(|_| Box::new(ParkDriver::new())));
        let drivers: Vec<_> = (0..shard_count)
            .map(|shard| factory(ShardId(shard as u8)))
            .collect();

        let ring_capacity = self.ring_capacity.unwrap_or_else(|| {
            let sources = shard_count.saturating_sub(1).max(1);
            (INBOUND_SLOTS_PER_SHARD / sources).clamp(256, 4096)
        });
        // rings[source][destination]
        let mut outbound: Vec<Vec<Option<spsc::Producer<Packet>>>> = (0..shard_count)
            .map(|_| (0..shard_count).map(|_| None).collect())
            .collect();
        let mut inbound: Vec<Vec<spsc::Consumer<Packet>>> =
            (0..shard_count).map(|_| Vec::new()).collect();
        for (source, producers) in outbound.iter_mut().enumerate() {
            for (destination, inbox) in inbound.iter_mut().enumerate() {
                if source != destination {
                    let (producer, consumer) = spsc::ring(ring_capacity);
                    producers[destination] = Some(producer);
                    inbox.push(consumer);
                }
            }
        }

        let shared = Arc::new(Shared {
            node,
            reductions: self.reductions,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
            idle_spin: self.idle_spin,
            shards: drivers
                .iter()
                .map(|driver| ShardShared::new(driver.unparker()))
                .collect(),
            shutdown: AtomicBool::new(false),
            undelivered: AtomicU64::new(0),
            stalls: Mutex::new(Vec::new()),
            extensions: Mutex::new(std::collections::HashMap::new()),
            simulated,
            distribution: std::sync::OnceLock::new(),
        });
        if shared.simulated.is_none() {
            registry::bind(node, &shared);
        }
        let shards = drivers
            .into_iter()
            .zip(outbound)
            .zip(inbound)
            .map(|((driver, outbound), inbound)| ShardSetup {
                driver,
                outbound,
                inbound,
            })
            .collect();
        Ok(Prepared {
            shared,
            shards,
            cores,
            pin: self.pin,
            arena: (self.arena_chunk_bytes, self.arena_region_chunks),
            stall_threshold: self.stall_threshold,
        })
    }
}

/// A simulated node's runtime: its handle, its one shard and the shard's
/// driver, for [`crate::sim`] to run on its thread.
pub(crate) struct SimulatedParts {
    pub(crate) handle: Handle,
    pub(crate) shard: Rc<Shard>,
    pub(crate) driver: Box<dyn Driver>,
}

/// A runtime's parts before its shards start.
struct Prepared {
    shared: Arc<Shared>,
    shards: Vec<ShardSetup>,
    cores: Vec<usize>,
    pin: bool,
    /// Arena chunk bytes and chunks per region.
    arena: (usize, usize),
    stall_threshold: Option<Duration>,
}

/// One shard's driver and rings, before the shard exists.
struct ShardSetup {
    driver: Box<dyn Driver>,
    outbound: Vec<Option<spsc::Producer<Packet>>>,
    inbound: Vec<spsc::Consumer<Packet>>,
}

impl ShardSetup {
    /// Creates shard `index` on the calling thread (it holds `!Send`
    /// state, so it lives on the thread that runs it).
    fn into_shard(
        self,
        index: usize,
        shared: Arc<Shared>,
        (chunk_bytes, region_chunks): (usize, usize),
    ) -> (Rc<Shard>, Box<dyn Driver>) {
        let shard = Shard::new(ShardParts {
            id: ShardId(index as u8),
            shared,
            outbound: self.outbound,
            inbound: self.inbound,
            pool: ChunkPool::new(chunk_bytes, region_chunks),
        });
        (shard, self.driver)
    }
}

/// A running runtime: its [`Handle`] plus ownership of its threads.
/// Dropping it shuts it down, as [`Runtime::shutdown`] does.
///
/// `Runtime` dereferences to [`Handle`], so every handle operation is
/// available on it directly.
pub struct Runtime {
    handle: Handle,
    threads: Vec<thread::JoinHandle<usize>>,
    watchdog: Option<thread::JoinHandle<()>>,
}

/// What a shutdown did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Processes that were still running and were stopped with reason
    /// `Shutdown`.
    pub processes_stopped: usize,
}

impl Runtime {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    fn assemble(
        shared: Arc<Shared>,
        threads: Vec<thread::JoinHandle<usize>>,
        watchdog: Option<thread::JoinHandle<()>>,
    ) -> Runtime {
        Runtime {
            handle: Handle { shared },
            threads,
            watchdog,
        }
    }

    /// A handle for other threads.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops every process (each ends with reason `Shutdown`, its
    /// destructors run and its arena returns to the pool), then joins every
    /// thread of the runtime.
    pub fn shutdown(mut self) -> ShutdownReport {
        self.stop()
    }

    fn stop(&mut self) -> ShutdownReport {
        let shared = &self.handle.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        for shard in shared.shards.iter() {
            shard.unparker.unpark();
        }
        let mut processes_stopped = 0;
        for thread in self.threads.drain(..) {
            match thread.join() {
                Ok(stopped) => processes_stopped += stopped,
                Err(panic) => {
                    tracing::error!(?panic, "a shard thread panicked");
                }
            }
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.thread().unpark();
            let _ = watchdog.join();
        }
        registry::release(shared.node);
        ShutdownReport { processes_stopped }
    }
}

impl Deref for Runtime {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// Ring slots a shard's inbound rings share by default.
const INBOUND_SLOTS_PER_SHARD: usize = 16_384;

/// Spawns, sends and queries from threads outside the runtime. Cheap to
/// clone; `Send` and `Sync`.
///
/// Operations that need an answer from a shard (spawn, `process_info`,
/// `block_on`) block the calling thread: do not call them from inside a
/// process, which has [`Context`] for all of this.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

/// Why [`Handle::block_on`] returned no value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockOnError {
    /// The process could not be spawned.
    Spawn(SpawnError),
    /// The process ended without returning, with this reason.
    Exited(ExitReason),
}

impl fmt::Display for BlockOnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockOnError::Spawn(error) => write!(f, "spawn failed: {error}"),
            BlockOnError::Exited(reason) => write!(f, "the process exited: {reason}"),
        }
    }
}

impl std::error::Error for BlockOnError {}

/// A snapshot of one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStats {
    /// The shard.
    pub shard: ShardId,
    /// Live processes.
    pub processes: usize,
    /// Processes waiting to run.
    pub run_queue: usize,
    /// Armed timers.
    pub timers: usize,
    /// The shard's arena chunk pool.
    pub pool: PoolStats,
}

/// The pid exit signals from outside the runtime come from. Shard 255
/// never exists (a runtime has at most 255 shards), so it names no process.
fn outside(node: NodeId) -> Pid {
    Pid::new(node, ShardId(u8::MAX), 0, 0)
}

impl Handle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Handle {
        Handle { shared }
    }

    /// The runtime's one value of type `T`, made with `T::default()` on
    /// first use: how services built on the runtime (registries, for
    /// example) keep runtime-wide state without globals.
    ///
    /// ```
    /// use foundation_sched::Runtime;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// let runtime = Runtime::builder().shards(1).build().unwrap();
    /// runtime.extension::<AtomicU64>().fetch_add(1, Ordering::Relaxed);
    /// assert_eq!(runtime.extension::<AtomicU64>().load(Ordering::Relaxed), 1);
    /// ```
    pub fn extension<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut extensions = self
            .shared
            .extensions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = extensions
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        entry
            .clone()
            .downcast::<T>()
            .expect("extensions are keyed by their type")
    }

    /// Runs `hook` on `pid`'s shard when `pid` ends (see
    /// [`Context::on_exit`]).
    pub fn on_exit(&self, pid: Pid, hook: crate::process::ExitHook) {
        if pid.node() != self.shared.node {
            hook(&ExitReason::NoProc);
            return;
        }
        self.shared.inject(
            pid.shard(),
            Packet::Run(Box::new(move |shard: &Rc<Shard>| shard.on_exit(pid, hook))),
        );
    }

    /// This runtime's node id.
    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    /// The runtime's clock now: the wall clock's monotonic time, or a
    /// simulation's virtual time.
    pub fn now(&self) -> crate::time::Instant {
        self.shared.clock.now()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shared.shards.len()
    }

    /// Spawns a process on the least-loaded shard.
    pub fn spawn<T, F, Fut>(&self, start: F) -> Result<Addr<T>, SpawnError>
    where
        T: Send + 'static,
        F: FnOnce(Context<T>) -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: crate::ProcessResult,
    {
        self.spawn_with(SpawnOptions::new().placement(Placement::LeastLoaded), start)
    }

    /// Spawns a process with `options`. `Placement::Current` means the
    /// least-loaded shard here; link and monitor need a spawning process
    /// and are refused with [`SpawnError::NotInProcess`].
    pub fn spawn_with<T, F, Fut>(
        &self,
        options: SpawnOptions,
        start: F,
    ) -> Result<Addr<T>, SpawnError>
    where
        T: Send + 'static,
        F: FnOnce(Context<T>) -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: crate::ProcessResult,
    {
        let (target, spawn) = self.prepare_spawn(&options)?;
        // On the target shard's own thread, spawn at once: waiting for the
        // shard to answer would wait for ourselves.
        let mut pending = Some((spawn, start));
        let here = waker::with_shard_of(&self.shared, |shard| {
            if shard.id != target {
                return None;
            }
            let (spawn, start) = pending.take()?;
            Some(shard.spawn_local(spawn, start))
        });
        if let Some(Some(spawned)) = here {
            return spawned;
        }
        let Some((spawn, start)) = pending else {
            unreachable!("`pending` is only taken by a spawn that returned")
        };
        let (reply, spawned) = oneshot::channel();
        self.shared.inject(
            target,
            Packet::Run(Box::new(move |shard: &Rc<Shard>| {
                reply.send(shard.spawn_local(spawn, start));
            })),
        );
        spawned
            .blocking_recv()
            .unwrap_or(Err(SpawnError::ShuttingDown))
    }

    /// Spawns a process with `options` without waiting for it to start,
    /// for code that must not block — a process or a driver spawning on
    /// another shard. The spawn itself happens on the target shard; a
    /// failure there (the runtime shutting down) is not reported.
    pub fn spawn_detached<T, F, Fut>(
        &self,
        options: SpawnOptions,
        start: F,
    ) -> Result<(), SpawnError>
    where
        T: Send + 'static,
        F: FnOnce(Context<T>) -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: crate::ProcessResult,
    {
        let (target, spawn) = self.prepare_spawn(&options)?;
        self.shared.inject(
            target,
            Packet::Run(Box::new(move |shard: &Rc<Shard>| {
                let _ = shard.spawn_local(spawn, start);
            })),
        );
        Ok(())
    }

    /// Where a spawn from outside a process goes, and what it sets up.
    fn prepare_spawn(&self, options: &SpawnOptions) -> Result<(ShardId, LocalSpawn), SpawnError> {
        if options.link || options.monitor {
            return Err(SpawnError::NotInProcess);
        }
        let placement = match options.placement {
            Placement::Current => Placement::LeastLoaded,
            other => other,
        };
        let target = self.shared.place(placement, ShardId(0))?;
        let spawn = LocalSpawn {
            trap_exit: options.trap_exit,
            max_heap_bytes: options.max_heap_bytes,
            priority: options.priority,
            ..LocalSpawn::default()
        };
        Ok((target, spawn))
    }

    /// Marks the runtime as shutting down: spawns fail from now on.
    pub(crate) fn begin_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
    }

    /// Sends `message` to `to`. Like a send inside a process, a message to
    /// a process that no longer exists is dropped and counted in
    /// [`Handle::undelivered`].
    pub fn send<T: Send + 'static>(&self, to: &Addr<T>, message: T) {
        let to = to.pid();
        // On one of this runtime's shard threads (a driver, or a process
        // holding a handle), take the shard's own path: no lock.
        let mut message = Some(message);
        let sent = waker::with_shard_of(&self.shared, |shard| {
            if let Some(message) = message.take() {
                shard.send_message(to, message);
            }
        });
        if sent.is_some() {
            return;
        }
        let Some(message) = message else { return };
        if to.node() != self.shared.node {
            self.shared.undelivered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let message = ErasedMessage::new(message);
        self.shared
            .inject(to.shard(), Packet::Message { to, message });
    }

    /// Sends every message of `messages` to `to`, in order, as [`Handle::send`]
    /// does one at a time. On the destination's own shard the process is
    /// looked up, and woken, once for all of them: a connection handing a
    /// batch of received messages to one process pays per message only
    /// for the mailbox entry. `messages` is consumed there while the
    /// shard's process table is borrowed, so producing a message must not
    /// send, spawn or signal; and a process's heap limit
    /// ([`SpawnOptions::max_heap_bytes`](crate::SpawnOptions::max_heap_bytes))
    /// is checked once the whole batch is in its mailbox, so a batch that
    /// crosses it ends the process with the batch unread.
    ///
    /// # Example
    ///
    /// ```
    /// use foundation_sched::{Context, Runtime};
    ///
    /// let runtime = Runtime::builder().shards(1).build().unwrap();
    /// let (total, summed) = std::sync::mpsc::channel();
    /// let adder = runtime
    ///     .spawn(move |cx: Context<u64>| async move {
    ///         let mut sum = 0;
    ///         for _ in 0..3 {
    ///             sum += cx.recv().await.into_msg().unwrap_or(0);
    ///         }
    ///         total.send(sum).unwrap();
    ///     })
    ///     .unwrap();
    /// runtime.handle().send_all(&adder, [1, 2, 3]);
    /// assert_eq!(summed.recv().unwrap(), 6);
    /// ```
    pub fn send_all<T: Send + 'static>(&self, to: &Addr<T>, messages: impl IntoIterator<Item = T>) {
        let pid = to.pid();
        let mut messages = Some(messages);
        waker::with_shard_of(&self.shared, |shard| {
            if pid.node() == shard.node && pid.shard() == shard.id {
                if let Some(messages) = messages.take() {
                    shard.deliver_all(pid, messages);
                }
            }
        });
        // Elsewhere, one at a time.
        for message in messages.into_iter().flatten() {
            self.send(to, message);
        }
    }

    /// Sends `pid` an exit signal with `reason`, as [`Context::exit`] does.
    pub fn exit(&self, pid: Pid, reason: ExitReason) {
        self.signal(pid, reason, ExitKind::Signal);
    }

    /// Kills `pid` untrappably, as [`Context::kill`] does.
    pub fn kill(&self, pid: Pid) {
        self.signal(pid, ExitReason::Killed, ExitKind::Kill);
    }

    fn signal(&self, to: Pid, reason: ExitReason, kind: ExitKind) {
        if to.node() != self.shared.node {
            return;
        }
        let from = outside(self.shared.node);
        let signal = Signal::Exit { from, reason, kind };
        self.shared
            .inject(to.shard(), Packet::Signal { to, signal });
    }

    /// Installs what carries signals to processes on other nodes (see
    /// [`remote`](crate::remote)). Only the first call installs; later
    /// ones return `false`.
    pub fn set_distribution(&self, distribution: Arc<dyn crate::remote::Distribution>) -> bool {
        self.shared.distribution.set(distribution).is_ok()
    }

    /// Hands in a signal that came from another node for the local process
    /// `to`, as if its sender (on that node) had sent it here. Called on a
    /// shard thread, it is ordered with the messages that thread sends
    /// after it, as [`Handle::send`] orders messages. A signal for
    /// a process that does not exist is answered as locally: a `Link` with
    /// a `NoProc` exit and a `Monitor` with a `NoProc` `Down`, which go back
    /// through the distribution. A pid of another node is ignored.
    pub fn deliver_signal(&self, to: Pid, signal: crate::remote::Signal) {
        if to.node() != self.shared.node {
            return;
        }
        // On one of this runtime's shard threads, the shard's own path, as
        // `send` takes: a signal handed in there stays in order with the
        // messages that thread delivers after it.
        let mut signal = Some(signal);
        let sent = waker::with_shard_of(&self.shared, |shard| {
            if let Some(signal) = signal.take() {
                shard.send_signal(to, signal);
            }
        });
        let Some(signal) = signal.filter(|_| sent.is_none()) else {
            return;
        };
        if usize::from(to.shard().0) < self.shared.shards.len() {
            self.shared
                .inject(to.shard(), Packet::Signal { to, signal });
        } else {
            // No such shard, so no such process: any shard answers.
            let answer: ShardWork = Box::new(move |shard| shard.answer_for_missing(to, signal));
            self.shared.inject(ShardId(0), Packet::Run(answer));
        }
    }

    /// A snapshot of process `pid`, or `None` if it does not exist.
    pub fn process_info(&self, pid: Pid) -> Option<ProcessInfo> {
        if pid.node() != self.shared.node {
            return None;
        }
        self.ask(pid.shard(), move |shard| shard.process_info(pid))
            .flatten()
    }

    /// A snapshot of every shard.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        (0..self.shard_count())
            .filter_map(|shard| self.ask(ShardId(shard as u8), |shard| shard.stats()))
            .collect()
    }

    /// Messages dropped so far because their destination did not exist.
    pub fn undelivered(&self) -> u64 {
        self.shared.undelivered.load(Ordering::Relaxed)
    }

    /// Stalls the watchdog has reported, oldest first.
    pub fn stalls(&self) -> Vec<Stall> {
        self.shared
            .stalls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs a process to completion and returns what it returned, blocking
    /// the calling thread. If the process ends any other way (a panic, a
    /// kill, a linked exit), returns its exit reason instead.
    ///
    /// ```
    /// use foundation_sched::{BlockOnError, Context, ExitReason, Runtime};
    ///
    /// let runtime = Runtime::builder().shards(1).build().unwrap();
    /// assert_eq!(runtime.block_on(|_: Context<()>| async { 7 }), Ok(7));
    /// let failed = runtime.block_on(|_: Context<()>| async { panic!("boom") });
    /// assert_eq!(failed, Err::<(), _>(BlockOnError::Exited(ExitReason::Panic("boom".into()))));
    /// ```
    pub fn block_on<M, T, F, Fut>(&self, start: F) -> Result<T, BlockOnError>
    where
        M: Send + 'static,
        T: Send + 'static,
        F: FnOnce(Context<M>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (result_tx, result) = oneshot::channel();
        let (reason_tx, reason) = oneshot::channel();
        // An observer monitors the process, so an abnormal end is reported
        // with its real reason, through the same monitor machinery any
        // process uses.
        self.spawn(move |observer: Context<()>| async move {
            let (_, monitor) = observer.spawn_monitor(move |cx: Context<M>| async move {
                result_tx.send(start(cx).await);
            });
            let down = observer
                .recv_match(
                    |envelope| matches!(envelope, Envelope::Down(down) if down.monitor == monitor),
                )
                .await;
            if let Envelope::Down(Down { reason, .. }) = down {
                reason_tx.send(reason);
            }
        })
        .map_err(BlockOnError::Spawn)?;
        match result.blocking_recv() {
            Some(value) => Ok(value),
            None => Err(BlockOnError::Exited(
                reason.blocking_recv().unwrap_or(ExitReason::Shutdown),
            )),
        }
    }

    /// Runs `query` on `shard` and waits for its answer; `None` if the
    /// runtime stopped first.
    fn ask<R: Send + 'static>(
        &self,
        shard: ShardId,
        query: impl FnOnce(&Shard) -> R + Send + 'static,
    ) -> Option<R> {
        // On that shard's own thread (a simulation, or a driver), answer
        // at once: waiting for the shard would wait for ourselves.
        let mut query = Some(query);
        let here = waker::with_shard_of(&self.shared, |current| {
            (current.id == shard).then(|| query.take().map(|query| query(current)))?
        });
        if let Some(Some(answer)) = here {
            return Some(answer);
        }
        let query = query?;
        let (reply, answer) = oneshot::channel();
        self.shared.inject(
            shard,
            Packet::Run(Box::new(move |shard: &Rc<Shard>| reply.send(query(shard)))),
        );
        answer.blocking_recv()
    }
}

impl Shared {
    /// Which shard `placement` means; `current` is the asking shard.
    pub(crate) fn place(
        &self,
        placement: Placement,
        current: ShardId,
    ) -> Result<ShardId, SpawnError> {
        match placement {
            Placement::Current => Ok(current),
            Placement::Shard(shard) if (shard.0 as usize) < self.shards.len() => Ok(shard),
            Placement::Shard(shard) => Err(SpawnError::NoSuchShard(shard)),
            Placement::LeastLoaded => Ok(self
                .shards
                .iter()
                .enumerate()
                .min_by_key(|(_, shard)| shard.live.load(Ordering::Relaxed))
                .map(|(index, _)| ShardId(index as u8))
                .unwrap_or(current)),
        }
    }
}
