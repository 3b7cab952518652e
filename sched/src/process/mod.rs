//! Green processes: what a process is, and what it can do through its
//! [`Context`].
//!
//! A process is a future plus a control block on one shard. It never moves
//! to another shard, so the future need not be `Send`; only the closure that
//! makes it must be, when it is spawned from another thread. Every process
//! has one typed mailbox of [`Envelope`]s: its own messages of type `M`, and
//! the [`Down`] and [`Exit`] notices that monitors and trapped exit signals
//! produce, in the order they arrived.
//!
//! ```
//! use foundation_sched::{Context, Envelope, Runtime};
//!
//! let runtime = Runtime::builder().shards(1).build().unwrap();
//! let total = runtime
//!     .block_on(|cx: Context<u64>| async move {
//!         // A child that sums what it is sent until a zero, then replies.
//!         let parent = cx.addr();
//!         let summer = cx.spawn(move |cx: Context<u64>| async move {
//!             let mut sum = 0;
//!             while let Envelope::Msg(n) = cx.recv().await {
//!                 if n == 0 {
//!                     break;
//!                 }
//!                 sum += n;
//!             }
//!             cx.send(&parent, sum);
//!         });
//!         for n in [1, 2, 3, 0] {
//!             cx.send(&summer, n);
//!         }
//!         cx.recv().await.into_msg()
//!     })
//!     .unwrap();
//! assert_eq!(total, Some(6));
//! ```

pub(crate) mod cell;
mod receive;
pub(crate) mod signal;
pub(crate) mod table;

pub use receive::{Checkpoint, Receive, ReceiveTimeout, Sleep, YieldNow};

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::arena::Arena;
use crate::exit::{Down, Exit, ExitReason, MonitorRef};
use crate::oneshot;
use crate::pid::{Pid, ShardId};
use crate::scheduler::{ProcessFuture, Shard, TimerAction};
use crate::time::wheel::TimerKey;
use crate::time::Instant;
use cell::{AnyCell, ProcessCell};
use signal::{ExitKind, Signal};

/// One entry of a process's mailbox.
#[derive(Debug)]
pub enum Envelope<M> {
    /// A message sent to the process.
    Msg(M),
    /// A process this one monitors ended.
    Down(Down),
    /// An exit signal, received as a message because the process traps
    /// exits.
    Exit(Exit),
}

impl<M> Envelope<M> {
    /// The message, if this is one.
    pub fn into_msg(self) -> Option<M> {
        match self {
            Envelope::Msg(message) => Some(message),
            _ => None,
        }
    }
}

/// The typed address of a process whose messages are `M`: its pid plus the
/// type, so sends are checked at compile time.
///
/// An `Addr` is `Copy`, `Send` and `Sync` whatever `M` is.
pub struct Addr<M> {
    pid: Pid,
    message: PhantomData<fn(M)>,
}

impl<M> Addr<M> {
    pub(crate) fn new(pid: Pid) -> Addr<M> {
        Addr {
            pid,
            message: PhantomData,
        }
    }

    /// The address of process `pid`, taking on trust that its messages are
    /// `M`. Nothing checks it here; a message of the wrong type is dropped
    /// when it reaches the process, and counted as undelivered. Registries
    /// and distribution, which hold pids, use this after checking the type
    /// their own way.
    pub fn from_pid(pid: Pid) -> Addr<M> {
        Addr::new(pid)
    }

    /// The process's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }
}

impl<M> Clone for Addr<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Addr<M> {}

impl<M> PartialEq for Addr<M> {
    fn eq(&self, other: &Self) -> bool {
        self.pid == other.pid
    }
}

impl<M> Eq for Addr<M> {}

impl<M> Hash for Addr<M> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pid.hash(state);
    }
}

impl<M> fmt::Debug for Addr<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Addr({})", self.pid)
    }
}

/// Where a new process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// On the spawning process's shard (the default inside a process).
    #[default]
    Current,
    /// On the named shard.
    Shard(ShardId),
    /// On the shard with the fewest live processes (the default from
    /// outside the runtime).
    LeastLoaded,
}

/// How to spawn a process: where, and with which relations and limits.
///
/// ```
/// use foundation_sched::{Placement, ShardId, SpawnOptions};
///
/// let options = SpawnOptions::new()
///     .placement(Placement::Shard(ShardId(0)))
///     .link()
///     .max_heap_bytes(1 << 20);
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default)]
pub struct SpawnOptions {
    pub(crate) placement: Placement,
    pub(crate) link: bool,
    pub(crate) monitor: bool,
    pub(crate) trap_exit: bool,
    pub(crate) max_heap_bytes: Option<usize>,
    pub(crate) priority: Priority,
}

/// How urgently a process runs when it is runnable, as Erlang's process
/// priorities: each shard runs its `High` processes before any other, and
/// `Low` ones after `Normal` ones, though never starved by them (one pick
/// in eight goes to a `Low` process while both wait).
///
/// `High` is for short, latency-bound work that must not queue behind a
/// backlog — the transport runs its control channel's connections at
/// `High` — and starves the rest of its shard while it stays runnable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// After `Normal` processes (background and bulk work), with an
    /// eighth of the reduction budget per poll: a long-running `Low`
    /// process yields its shard eight times as often, so the urgent work
    /// that becomes ready meanwhile waits less.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Before every other process of the shard.
    High,
}

impl SpawnOptions {
    /// Defaults: current shard, no link, no monitor, no heap limit.
    pub fn new() -> SpawnOptions {
        SpawnOptions::default()
    }

    /// Where the process runs.
    pub fn placement(mut self, placement: Placement) -> SpawnOptions {
        self.placement = placement;
        self
    }

    /// Links the new process to the spawning one, atomically with the spawn
    /// (Erlang's `spawn_link`).
    pub fn link(mut self) -> SpawnOptions {
        self.link = true;
        self
    }

    /// Monitors the new process from the spawning one, atomically with the
    /// spawn (Erlang's `spawn_monitor`).
    pub fn monitor(mut self) -> SpawnOptions {
        self.monitor = true;
        self
    }

    /// Starts the process trapping exits.
    pub fn trap_exit(mut self) -> SpawnOptions {
        self.trap_exit = true;
        self
    }

    /// Ends the process with [`ExitReason::HeapLimit`] when its arena and
    /// mailbox together hold more than `bytes`.
    pub fn max_heap_bytes(mut self, bytes: usize) -> SpawnOptions {
        self.max_heap_bytes = Some(bytes);
        self
    }

    /// Runs the process at `priority` (default [`Priority::Normal`]).
    pub fn priority(mut self, priority: Priority) -> SpawnOptions {
        self.priority = priority;
        self
    }
}

/// A process spawned with [`Context::spawn_with`].
#[derive(Debug)]
pub struct Spawned<M> {
    /// The new process.
    pub addr: Addr<M>,
    /// The monitor, when [`SpawnOptions::monitor`] asked for one.
    pub monitor: Option<MonitorRef>,
}

/// Why a spawn failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnError {
    /// The shard's process table is full.
    TableFull,
    /// No shard has this id.
    NoSuchShard(ShardId),
    /// The runtime is shutting down.
    ShuttingDown,
    /// Link or monitor was asked for by a spawn from outside any process.
    NotInProcess,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::TableFull => f.write_str("the shard's process table is full"),
            SpawnError::NoSuchShard(shard) => write!(f, "no shard {}", shard.0),
            SpawnError::ShuttingDown => f.write_str("the runtime is shutting down"),
            SpawnError::NotInProcess => f.write_str("link and monitor need a spawning process"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// What a process is doing, as `process_info` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Being polled right now (it is asking about itself).
    Running,
    /// Waiting in its shard's run queue.
    Runnable,
    /// Waiting for a message, a timer or another future.
    Waiting,
    /// Told to end; it ends before it runs again.
    Exiting,
}

/// A snapshot of a process, like `erlang:process_info/1`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// The process.
    pub pid: Pid,
    /// What it is doing.
    pub status: Status,
    /// Envelopes waiting in its mailbox.
    pub mailbox_len: usize,
    /// Bytes those envelopes occupy (their shallow size).
    pub mailbox_bytes: usize,
    /// Bytes its arena holds.
    pub arena_bytes: usize,
    /// Arena plus mailbox: what `max_heap_bytes` limits.
    pub heap_bytes: usize,
    /// Reductions (receives, sends, checkpoints) it has used.
    pub reductions: u64,
    /// Processes it is linked to.
    pub links: usize,
    /// Processes it monitors.
    pub monitors: usize,
    /// Processes monitoring it.
    pub monitored_by: usize,
    /// Whether it traps exits.
    pub trap_exit: bool,
    /// Its priority.
    pub priority: Priority,
}

/// A timer set with [`Context::send_after`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerRef {
    shard: ShardId,
    key: TimerKey,
}

/// A running process's handle on the runtime: its mailbox, its arena, and
/// every operation a process performs (send, spawn, link, monitor, exit,
/// timers). It is moved into the process's future when the process is
/// spawned.
pub struct Context<M> {
    pid: Pid,
    shard: Rc<Shard>,
    cell: Rc<ProcessCell<M>>,
    arena: Arena,
}

impl<M: Send + 'static> Context<M> {
    /// This process's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// This process's own typed address.
    pub fn addr(&self) -> Addr<M> {
        Addr::new(self.pid)
    }

    /// The shard this process runs on.
    pub fn shard(&self) -> ShardId {
        self.shard.id
    }

    /// The runtime's clock, as of the start of this poll.
    pub fn now(&self) -> Instant {
        self.shard.now()
    }

    /// Waits for the next envelope in the mailbox.
    #[inline]
    pub fn recv(&self) -> Receive<'_, M> {
        Receive::new(self, None)
    }

    /// Waits up to `timeout` for the next envelope; `None` on timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> ReceiveTimeout<'_, M> {
        ReceiveTimeout::new(self, None, self.now() + timeout)
    }

    /// Selective receive: waits for the first envelope for which `matches`
    /// is true, leaving every other envelope in the mailbox, in order.
    pub fn recv_match<P>(&self, matches: P) -> Receive<'_, M, P>
    where
        P: FnMut(&Envelope<M>) -> bool,
    {
        Receive::new(self, Some(matches))
    }

    /// Selective receive with a timeout; `None` on timeout.
    pub fn recv_match_timeout<P>(&self, matches: P, timeout: Duration) -> ReceiveTimeout<'_, M, P>
    where
        P: FnMut(&Envelope<M>) -> bool,
    {
        ReceiveTimeout::new(self, Some(matches), self.now() + timeout)
    }

    /// Takes the next envelope if there is one, without waiting.
    pub fn try_recv(&self) -> Option<Envelope<M>> {
        let envelope = self.cell.mailbox.borrow_mut().pop_front()?;
        self.shard.consume_reduction(&self.cell);
        Some(envelope)
    }

    /// Sends `message` to `to`, on this node. Like Erlang's `!`, a message
    /// to a process that no longer exists is dropped silently (and counted
    /// in the runtime's undelivered count): use a monitor to learn of its
    /// end.
    #[inline]
    pub fn send<T: Send + 'static>(&self, to: &Addr<T>, message: T) {
        self.shard.consume_reduction(&self.cell);
        self.shard.send_message(to.pid, message);
    }

    /// Sends `message` to `to` after `delay`. The timer can be cancelled
    /// from this shard with [`Context::cancel_timer`].
    pub fn send_after<T: Send + 'static>(
        &self,
        to: &Addr<T>,
        message: T,
        delay: Duration,
    ) -> TimerRef {
        let to = to.pid;
        let action = TimerAction::Run(Box::new(move |shard: &Shard| {
            shard.send_message(to, message)
        }));
        let key = self.shard.set_timer(self.now() + delay, action);
        TimerRef {
            shard: self.shard.id,
            key,
        }
    }

    /// Cancels a timer set by a process on this shard. Returns whether it
    /// was still pending; `false` also for a timer of another shard.
    pub fn cancel_timer(&self, timer: TimerRef) -> bool {
        timer.shard == self.shard.id && self.shard.cancel_timer(timer.key)
    }

    /// Waits for `duration`.
    pub fn sleep(&self, duration: Duration) -> Sleep<'_, M> {
        Sleep::new(self, self.now() + duration)
    }

    /// Yields to the other processes of the shard once.
    pub fn yield_now(&self) -> YieldNow<'_, M> {
        YieldNow::new(self)
    }

    /// Counts one reduction and yields if the process has used up its
    /// budget for this poll. Call it in long loops that do not receive, so
    /// that other processes get their turn.
    #[inline]
    pub fn checkpoint(&self) -> Checkpoint<'_, M> {
        Checkpoint::new(self)
    }

    /// Spawns a process on this shard.
    ///
    /// # Panics
    /// When the shard's process table is full; see [`Context::spawn_with`]
    /// for the fallible form.
    pub fn spawn<T, F, Fut>(&self, start: F) -> Addr<T>
    where
        T: Send + 'static,
        F: FnOnce(Context<T>) -> Fut + 'static,
        Fut: Future + 'static,
        Fut::Output: crate::ProcessResult,
    {
        match self.shard.spawn_local(LocalSpawn::default(), start) {
            Ok(addr) => addr,
            Err(error) => panic!("spawn failed: {error}"),
        }
    }

    /// Spawns a process on this shard, linked to this one.
    pub fn spawn_link<T, F, Fut>(&self, start: F) -> Addr<T>
    where
        T: Send + 'static,
        F: FnOnce(Context<T>) -> Fut + 'static,
        Fut: Future + 'static,
        Fut::Output: crate::ProcessResult,
    {
        let spawn = LocalSpawn {
            link: Some(self.pid),
            ..LocalSpawn::default()
        };
        match self.shard.spawn_local(spawn, start) {
            Ok(addr) => {
                self.shard.add_link(self.pid, addr.pid);
                addr
            }
            Err(error) => panic!("spawn failed: {error}"),
        }
    }

    /// Spawns a process on this shard, monitored by this one.
    pub fn spawn_monitor<T, F, Fut>(&self, start: F) -> (Addr<T>, MonitorRef)
    where
        T: Send + 'static,
        F: FnOnce(Context<T>) -> Fut + 'static,
        Fut: Future + 'static,
        Fut::Output: crate::ProcessResult,
    {
        let monitor = self.shard.new_monitor_ref();
        let spawn = LocalSpawn {
            monitored_by: Some((monitor, self.pid)),
            ..LocalSpawn::default()
        };
        match self.shard.spawn_local(spawn, start) {
            Ok(addr) => {
                self.shard.add_monitor(self.pid, monitor, addr.pid);
                (addr, monitor)
            }
            Err(error) => panic!("spawn failed: {error}"),
        }
    }

    /// Spawns a process with `options`: on any shard, linked, monitored,
    /// trapping exits, with a heap limit. Waits only when the process is
    /// placed on another shard.
    pub async fn spawn_with<T, F, Fut>(
        &self,
        options: SpawnOptions,
        start: F,
    ) -> Result<Spawned<T>, SpawnError>
    where
        T: Send + 'static,
        F: FnOnce(Context<T>) -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: crate::ProcessResult,
    {
        let target = self.shard.place(options.placement)?;
        let monitor = options.monitor.then(|| self.shard.new_monitor_ref());
        let spawn = LocalSpawn {
            link: options.link.then_some(self.pid),
            monitored_by: monitor.map(|monitor| (monitor, self.pid)),
            trap_exit: options.trap_exit,
            max_heap_bytes: options.max_heap_bytes,
            priority: options.priority,
        };
        if target == self.shard.id {
            let addr = self.shard.spawn_local(spawn, start)?;
            if options.link {
                self.shard.add_link(self.pid, addr.pid);
            }
            if let Some(monitor) = monitor {
                self.shard.add_monitor(self.pid, monitor, addr.pid);
            }
            return Ok(Spawned { addr, monitor });
        }
        // The remote shard links back with a `Link` signal and registers the
        // monitor before the child can run, and that signal travels the
        // same ring as any later exit or `Down`, so neither can overtake it.
        // The monitor is recorded here first for the same reason.
        if let Some(monitor) = monitor {
            self.shard.add_monitor(self.pid, monitor, self.pid);
        }
        let (reply, spawned) = oneshot::channel();
        let parent = spawn.link;
        self.shard.run_on(
            target,
            Box::new(move |shard: &Rc<Shard>| {
                let result = shard.spawn_local(spawn, start);
                if let (Ok(addr), Some(parent)) = (&result, parent) {
                    shard.send_signal(parent, Signal::Link { from: addr.pid });
                }
                reply.send(result);
            }),
        );
        let result = spawned.await.unwrap_or(Err(SpawnError::ShuttingDown));
        match (&result, monitor) {
            (Ok(addr), Some(monitor)) => self.shard.retarget_monitor(self.pid, monitor, addr.pid),
            (Err(_), Some(monitor)) => {
                self.shard.forget_monitor(self.pid, monitor);
            }
            _ => {}
        }
        result.map(|addr| Spawned { addr, monitor })
    }

    /// Links this process to `pid`: when either ends abnormally, the other
    /// receives an exit signal. Linking to a process that does not exist
    /// sends this process an exit signal with reason `NoProc`.
    pub fn link(&self, pid: Pid) {
        if pid == self.pid {
            return;
        }
        self.shard.add_link(self.pid, pid);
        self.shard.send_signal(pid, Signal::Link { from: self.pid });
    }

    /// Removes the link to `pid`, on both sides.
    pub fn unlink(&self, pid: Pid) {
        self.shard.remove_link(self.pid, pid);
        self.shard
            .send_signal(pid, Signal::Unlink { from: self.pid });
    }

    /// Monitors `pid`: exactly one [`Down`] arrives when it ends (at once,
    /// with `NoProc`, if it does not exist), unless demonitored first.
    pub fn monitor(&self, pid: Pid) -> MonitorRef {
        let monitor = self.shard.new_monitor_ref();
        self.shard.add_monitor(self.pid, monitor, pid);
        self.shard.send_signal(
            pid,
            Signal::Monitor {
                from: self.pid,
                monitor,
            },
        );
        monitor
    }

    /// Removes a monitor, and any `Down` for it already in the mailbox
    /// (Erlang's `demonitor(Ref, [flush])`). Returns whether the monitor
    /// was still active.
    pub fn demonitor(&self, monitor: MonitorRef) -> bool {
        self.cell.flush_down(monitor);
        match self.shard.forget_monitor(self.pid, monitor) {
            Some(target) => {
                self.shard
                    .send_signal(target, Signal::Demonitor { monitor });
                true
            }
            None => false,
        }
    }

    /// Sets whether exit signals arrive as [`Envelope::Exit`] messages
    /// instead of ending this process. Returns the previous setting.
    pub fn trap_exit(&self, trap: bool) -> bool {
        self.shard.set_trap_exit(self.pid, trap)
    }

    /// Sets this process's [`Priority`] (Erlang's
    /// `process_flag(priority, _)`), from its next wait on. Returns the
    /// previous one.
    pub fn set_priority(&self, priority: Priority) -> Priority {
        self.shard
            .with_process(self.pid, |process| {
                std::mem::replace(&mut process.priority, priority)
            })
            .unwrap_or(priority)
    }

    /// Sends `pid` an exit signal with `reason` (Erlang's `exit/2`). A
    /// process that traps exits receives it as a message; otherwise
    /// `Normal` is ignored (unless `pid` is this process) and any other
    /// reason ends it.
    pub fn exit(&self, pid: Pid, reason: ExitReason) {
        self.shard.send_signal(
            pid,
            Signal::Exit {
                from: self.pid,
                reason,
                kind: ExitKind::Signal,
            },
        );
    }

    /// Kills `pid` untrappably; it ends with [`ExitReason::Killed`].
    pub fn kill(&self, pid: Pid) {
        self.shard.send_signal(
            pid,
            Signal::Exit {
                from: self.pid,
                reason: ExitReason::Killed,
                kind: ExitKind::Kill,
            },
        );
    }

    /// Runs `hook` on `pid`'s shard when `pid` ends, with its exit reason —
    /// at once with `NoProc` if it does not exist. This is a monitor for
    /// runtime services (name registries, process groups) that must react
    /// to a death without being a process: the hook runs inside the
    /// runtime, so it must be short and must not block.
    pub fn on_exit(&self, pid: Pid, hook: ExitHook) {
        self.shard.on_exit(pid, hook);
    }

    /// A handle on this process's runtime, to give to other threads or to
    /// reach runtime-wide services ([`Handle::extension`](crate::Handle::extension)).
    pub fn runtime(&self) -> crate::Handle {
        crate::Handle::from_shared(self.shard.shared.clone())
    }

    /// A snapshot of any process of this runtime, or `None` if it does not
    /// exist.
    pub async fn process_info(&self, pid: Pid) -> Option<ProcessInfo> {
        if pid.shard() == self.shard.id && pid.node() == self.shard.node {
            return self.shard.process_info(pid);
        }
        if pid.node() != self.shard.node {
            return None;
        }
        let (reply, info) = oneshot::channel();
        self.shard.run_on(
            pid.shard(),
            Box::new(move |shard: &Rc<Shard>| reply.send(shard.process_info(pid))),
        );
        info.await.flatten()
    }

    /// This process's arena: bump allocation that lives as long as the
    /// process and is freed whole when it ends. Counts towards
    /// `max_heap_bytes`.
    ///
    /// ```
    /// use foundation_sched::Runtime;
    ///
    /// let runtime = Runtime::builder().shards(1).build().unwrap();
    /// let len = runtime
    ///     .block_on(|cx: foundation_sched::Context<()>| async move {
    ///         let words = cx.alloc_slice_copy(&[1u32, 2, 3]);
    ///         words[0] = 10;
    ///         words.iter().sum::<u32>()
    ///     })
    ///     .unwrap();
    /// assert_eq!(len, 15);
    /// ```
    pub fn alloc<T>(&self, value: T) -> &mut T {
        let value = self.arena.alloc(value);
        self.account_arena();
        value
    }

    /// Copies `source` into this process's arena.
    pub fn alloc_slice_copy<T: Copy>(&self, source: &[T]) -> &mut [T] {
        let slice = self.arena.alloc_slice_copy(source);
        self.account_arena();
        slice
    }

    /// Copies `source` into this process's arena.
    pub fn alloc_str(&self, source: &str) -> &mut str {
        let string = self.arena.alloc_str(source);
        self.account_arena();
        string
    }

    /// Records the arena's size for `process_info`, and ends the process
    /// with `HeapLimit` (by unwinding out of its poll) if it is over its
    /// limit.
    fn account_arena(&self) {
        let reserved = self.arena.reserved_bytes();
        if reserved != self.cell.arena_bytes.get() {
            self.cell.arena_bytes.set(reserved);
            if self.cell.over_heap_limit() {
                std::panic::resume_unwind(Box::new(HeapLimitExceeded));
            }
        }
    }
}

impl<M> Context<M> {
    pub(crate) fn cell(&self) -> &ProcessCell<M> {
        &self.cell
    }

    pub(crate) fn shard_ref(&self) -> &Shard {
        &self.shard
    }
}

/// The unwind payload that ends a process over its heap limit.
pub(crate) struct HeapLimitExceeded;

/// A process's control block, in its shard's table.
pub(crate) struct Process {
    pub(crate) pid: Pid,
    pub(crate) cell: Rc<dyn AnyCell>,
    /// `None` while the process is being polled.
    pub(crate) future: Option<ProcessFuture>,
    /// In the run queue.
    pub(crate) queued: bool,
    /// Being polled right now.
    pub(crate) running: bool,
    /// Told to end, with this reason; the first reason wins, except that a
    /// kill overrides.
    pub(crate) exit: Option<ExitReason>,
    pub(crate) trap_exit: bool,
    pub(crate) priority: Priority,
    /// Whether a `max_heap_bytes` applies, so deliveries to the (many)
    /// processes without one skip the check.
    pub(crate) heap_limited: bool,
    /// Links and monitors, allocated on first use: most processes have
    /// none, and an idle process should stay small.
    pub(crate) relations: Option<Box<Relations>>,
}

/// A process's links and monitors. Hashed with a fixed hasher (not
/// std's per-map random keys), so that the order in which exit signals and
/// `Down`s go out is the same in every run: a simulation replays exactly.
#[derive(Default)]
pub(crate) struct Relations {
    pub(crate) links: FxHashSet<Pid>,
    /// Monitors this process holds: reference → monitored process.
    pub(crate) monitors: FxHashMap<MonitorRef, Pid>,
    /// Monitors on this process: reference → watching process.
    pub(crate) monitored_by: FxHashMap<MonitorRef, Pid>,
    /// Run when the process ends (see [`Context::on_exit`]).
    pub(crate) exit_hooks: Vec<ExitHook>,
}

/// Code run on a process's shard when the process ends, with its reason.
pub type ExitHook = Box<dyn FnOnce(&ExitReason) + Send>;

/// What a local spawn sets up atomically with the new process.
#[derive(Default)]
pub(crate) struct LocalSpawn {
    pub(crate) link: Option<Pid>,
    pub(crate) monitored_by: Option<(MonitorRef, Pid)>,
    pub(crate) trap_exit: bool,
    pub(crate) max_heap_bytes: Option<usize>,
    pub(crate) priority: Priority,
}

impl Process {
    pub(crate) fn relations(&mut self) -> &mut Relations {
        self.relations.get_or_insert_with(Box::default)
    }

    pub(crate) fn status(&self) -> Status {
        if self.exit.is_some() {
            Status::Exiting
        } else if self.running {
            Status::Running
        } else if self.queued {
            Status::Runnable
        } else {
            Status::Waiting
        }
    }

    pub(crate) fn info(&self) -> ProcessInfo {
        let relations = self.relations.as_deref();
        let mailbox_bytes = self.cell.mailbox_bytes();
        let arena_bytes = self.cell.arena_bytes();
        ProcessInfo {
            pid: self.pid,
            status: self.status(),
            mailbox_len: self.cell.mailbox_len(),
            mailbox_bytes,
            arena_bytes,
            heap_bytes: mailbox_bytes + arena_bytes,
            reductions: self.cell.reductions(),
            links: relations.map_or(0, |r| r.links.len()),
            monitors: relations.map_or(0, |r| r.monitors.len()),
            monitored_by: relations.map_or(0, |r| r.monitored_by.len()),
            trap_exit: self.trap_exit,
            priority: self.priority,
        }
    }
}

/// Builds a process's context and its boxed future. The user's closure is
/// called at the first poll, on the process's own shard, so the future it
/// returns never crosses threads.
pub(crate) fn make_process<T, F, Fut>(
    pid: Pid,
    shard: Rc<Shard>,
    max_heap_bytes: Option<usize>,
    start: F,
) -> (Rc<ProcessCell<T>>, ProcessFuture)
where
    T: Send + 'static,
    F: FnOnce(Context<T>) -> Fut + 'static,
    Fut: Future + 'static,
    Fut::Output: crate::ProcessResult,
{
    use crate::ProcessResult;
    let cell = Rc::new(ProcessCell::new(max_heap_bytes));
    let arena = Arena::new(shard.pool.clone());
    let context = Context {
        pid,
        shard,
        cell: cell.clone(),
        arena,
    };
    let future = Box::pin(async move { start(context).await.into_reason() });
    (cell, future)
}
