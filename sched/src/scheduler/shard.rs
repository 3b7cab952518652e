//! One shard: the single-threaded heart of the runtime.
//!
//! Everything here runs on the shard's own thread. State lives in `Cell`s
//! and `RefCell`s, and no borrow is ever held while user code runs (a
//! process's poll, or the drop of its future), so user code may call back
//! into the shard freely.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::task::{self, Poll};

use crate::arena::{ChunkPool, PoolStats};
use crate::driver::Driver;
use crate::exit::{ExitReason, MonitorRef};
use crate::pid::{NodeId, Pid, ShardId};
use crate::process::cell::ProcessCell;
use crate::process::signal::Signal;
use crate::process::table::Table;
use crate::process::{
    make_process, Addr, Envelope, HeapLimitExceeded, LocalSpawn, Placement, Priority, Process,
    ProcessInfo, Relations, SpawnError,
};
use crate::ring::erased::{Deliver, ErasedMessage};
use crate::ring::spsc::{Consumer, Producer};
use crate::runtime::ShardStats;
use crate::scheduler::run_queue::RunQueue;
use crate::scheduler::shared::Shared;
use crate::scheduler::{monitor_ref, waker, Packet, ShardWork, TimerAction};
use crate::time::wheel::{TimerKey, TimerWheel};
use crate::time::Instant;

/// One shard's scheduler state.
pub(crate) struct Shard {
    pub(crate) id: ShardId,
    pub(crate) node: NodeId,
    pub(crate) shared: Arc<Shared>,
    pub(crate) table: RefCell<Table<Process>>,
    pub(crate) pool: Rc<ChunkPool>,
    run_queue: RefCell<RunQueue>,
    timers: RefCell<TimerWheel<TimerAction>>,
    fired: RefCell<Vec<TimerAction>>,
    now: Cell<Instant>,
    outbox: RefCell<Outbox>,
    inbox: RefCell<Vec<Consumer<Packet>>>,
    /// The slot being polled, if any.
    running: Cell<Option<u32>>,
    /// The running process was woken during its poll.
    running_woken: Cell<bool>,
    /// The running process was told to end during its poll.
    running_exiting: Cell<bool>,
    /// The running process sent into a ring that was already backed up.
    running_overflowed: Cell<bool>,
    /// Processes that yielded after sending into a backed-up ring: they run
    /// again once every ring has drained its overflow (or when a message
    /// wakes them), so a fast sender cannot grow the overflow without
    /// bound.
    waiting_for_room: RefCell<Vec<Pid>>,
    /// Reductions left in the current poll.
    budget: Cell<u32>,
    /// Reductions charged through `coop` in the current poll, added to the
    /// process's count when the poll ends (not per charge: a process that
    /// sends small messages charges once per send).
    charged: Cell<u64>,
    /// What runs when the current poll ends (see [`crate::coop::at_poll_end`]).
    poll_end: RefCell<Vec<fn()>>,
    next_monitor: Cell<u64>,
    polls: Cell<u64>,
    /// Processes that ended after shutdown began, whatever ended them (the
    /// shutdown itself, or a linked process stopped on another shard).
    ended_in_shutdown: Cell<usize>,
}

/// The producing ends of this shard's rings to every other shard, with the
/// packets that did not fit yet.
struct Outbox {
    rings: Vec<Option<Producer<Packet>>>,
    /// Packets waiting for room in a full ring, in order. A send never
    /// blocks a shard: two shards filling each other's rings would deadlock.
    overflow: Vec<VecDeque<Packet>>,
    /// Destinations written to since the last flush.
    dirty: Vec<usize>,
    is_dirty: Vec<bool>,
}

/// What a shard thread is given when it starts.
pub(crate) struct ShardParts {
    pub(crate) id: ShardId,
    pub(crate) shared: Arc<Shared>,
    pub(crate) outbound: Vec<Option<Producer<Packet>>>,
    pub(crate) inbound: Vec<Consumer<Packet>>,
    pub(crate) pool: ChunkPool,
}

impl Shard {
    pub(crate) fn new(parts: ShardParts) -> Rc<Shard> {
        let destinations = parts.outbound.len();
        let now = parts.shared.clock.now();
        Rc::new(Shard {
            id: parts.id,
            node: parts.shared.node,
            table: RefCell::new(Table::new()),
            pool: Rc::new(parts.pool),
            run_queue: RefCell::new(RunQueue::default()),
            timers: RefCell::new(TimerWheel::new(now.as_nanos())),
            fired: RefCell::new(Vec::new()),
            now: Cell::new(now),
            outbox: RefCell::new(Outbox {
                rings: parts.outbound,
                overflow: (0..destinations).map(|_| VecDeque::new()).collect(),
                dirty: Vec::new(),
                is_dirty: vec![false; destinations],
            }),
            inbox: RefCell::new(parts.inbound),
            running: Cell::new(None),
            running_woken: Cell::new(false),
            running_exiting: Cell::new(false),
            running_overflowed: Cell::new(false),
            waiting_for_room: RefCell::new(Vec::new()),
            budget: Cell::new(0),
            charged: Cell::new(0),
            poll_end: RefCell::new(Vec::new()),
            next_monitor: Cell::new(0),
            polls: Cell::new(0),
            ended_in_shutdown: Cell::new(0),
            shared: parts.shared,
        })
    }

    /// The shard's loop; returns, after stopping every process, when the
    /// runtime shuts down. Returns how many processes it stopped.
    pub(crate) fn run(self: &Rc<Shard>, mut driver: Box<dyn Driver>) -> usize {
        let _current = waker::enter(self.clone());
        driver.enter();
        loop {
            self.turn(driver.as_mut());
            if self.shared.shutdown.load(Ordering::Acquire) {
                break;
            }
            if self.run_queue.borrow().is_empty() && !self.spin_for_work(driver.as_mut()) {
                self.park(driver.as_mut());
            }
        }
        self.stop_all()
    }

    /// One turn of the loop: read the clock, take in what other shards and
    /// threads sent, poll the driver, fire due timers, run a pass of
    /// processes and flush what they sent. The real loop parks between
    /// turns when idle; a simulation decides itself when to turn again
    /// (this thread must be in the shard, [`waker::enter`]).
    pub(crate) fn turn(self: &Rc<Shard>, driver: &mut dyn Driver) {
        self.now.set(self.shared.clock.now());
        self.drain_inbound();
        driver.poll();
        self.fire_timers();
        self.run_pass(driver);
        self.flush();
    }

    /// Whether a turn now would run anything: runnable processes, or
    /// packets from other shards or threads.
    pub(crate) fn has_work(&self) -> bool {
        !self.run_queue.borrow().is_empty() || self.has_inbound()
    }

    /// When the next timer is due, if one is set.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers
            .borrow()
            .next_deadline()
            .map(Instant::from_nanos)
    }

    /// The clock as of the start of this pass.
    pub(crate) fn now(&self) -> Instant {
        self.now.get()
    }

    fn shared_self(&self) -> &crate::scheduler::shared::ShardShared {
        &self.shared.shards[self.id.0 as usize]
    }

    // ---- running processes -------------------------------------------

    /// Polls up to [`POLLS_PER_PASS`] processes: enough to spread the cost
    /// of reading the clock and the rings over many polls, few enough that
    /// packets from other shards and due timers wait only briefly.
    ///
    /// After a poll that used up its whole reduction budget (a long one:
    /// a process that copied megabytes, a connection that read a burst),
    /// the driver is polled at once, so I/O that completed meanwhile wakes
    /// its processes now and a `High` one among them runs next instead of
    /// at the end of the pass.
    fn run_pass(self: &Rc<Shard>, driver: &mut dyn Driver) {
        for _ in 0..POLLS_PER_PASS {
            let Some(slot) = self.run_queue.borrow_mut().pop() else {
                break;
            };
            self.poll_slot(slot);
            self.flush();
            if self.budget_used_up() {
                driver.poll();
            }
        }
    }

    fn poll_slot(&self, slot: u32) {
        let (pid, mut future, priority) = {
            let mut table = self.table.borrow_mut();
            let Some(process) = table.get_slot_mut(slot) else {
                return;
            };
            if !process.queued {
                return; // A stale entry: the slot was requeued or reused.
            }
            process.queued = false;
            if let Some(reason) = process.exit.clone() {
                let pid = process.pid;
                drop(table);
                self.terminate(pid, reason);
                return;
            }
            let Some(future) = process.future.take() else {
                return;
            };
            process.running = true;
            (process.pid, future, process.priority)
        };

        self.running.set(Some(slot));
        self.running_woken.set(false);
        self.running_exiting.set(false);
        self.running_overflowed.set(false);
        self.budget
            .set(budget_for(self.shared.reductions, priority));
        self.charged.set(0);
        let polls = self.polls.get() + 1;
        let watch = self.shared_self();
        watch.polling.store(pid.to_bits(), Ordering::Relaxed);
        watch.polls.store(polls, Ordering::Release);

        if let Some(simulated) = &self.shared.simulated {
            simulated.record(self.now(), pid);
        }
        let waker = waker::for_pid(pid);
        let mut cx = task::Context::from_waker(&waker);
        let polled = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));

        watch.polls.store(polls + 1, Ordering::Release);
        self.polls.set(polls + 1);
        self.running.set(None);
        self.run_poll_end_hooks();

        let finished = match polled {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(reason)) => Some(reason),
            Err(payload) => Some(panic_reason(payload)),
        };
        let mut table = self.table.borrow_mut();
        let process = table
            .get_mut(pid.slot(), pid.generation())
            .expect("a process stays in its slot while it runs");
        process.running = false;
        process.cell.add_reductions(self.charged.take());
        match finished {
            None => {
                process.future = Some(future);
                if let Some(reason) = process.exit.clone() {
                    drop(table);
                    self.terminate(pid, reason);
                } else if self.running_overflowed.get() {
                    drop(table);
                    self.waiting_for_room.borrow_mut().push(pid);
                } else if self.running_woken.get() {
                    process.queued = true;
                    let priority = process.priority;
                    drop(table);
                    self.enqueue(slot, priority);
                }
            }
            Some(reason) => {
                let reason = process.exit.take().unwrap_or(reason);
                drop(table);
                drop_quietly(future);
                self.terminate(pid, reason);
            }
        }
    }

    /// Ends the process `pid`: frees its slot, drops its future (and with
    /// it the context, the arena and the mailbox), then tells its links and
    /// monitors.
    fn terminate(&self, pid: Pid, reason: ExitReason) {
        let Some(process) = self.table.borrow_mut().remove(pid.slot(), pid.generation()) else {
            return;
        };
        self.shared_self().live.fetch_sub(1, Ordering::Relaxed);
        if self.shared.shutdown.load(Ordering::Relaxed) {
            self.ended_in_shutdown.set(self.ended_in_shutdown.get() + 1);
        }
        let Process {
            future, relations, ..
        } = process;
        if let Some(future) = future {
            drop_quietly(future);
        }
        if let Some(relations) = relations {
            self.announce_exit(pid, &reason, *relations);
        }
    }

    /// Stops every process with reason `Shutdown`, including any spawned by
    /// the destructors of the ones stopped (spawning fails once shutdown has
    /// begun, so this ends). Returns how many it stopped.
    pub(crate) fn stop_all(&self) -> usize {
        loop {
            let occupied = self.table.borrow().occupied();
            if occupied.is_empty() {
                break;
            }
            for (slot, generation) in occupied {
                let pid = Pid::new(self.node, self.id, slot, generation);
                self.terminate(pid, ExitReason::Shutdown);
            }
        }
        self.run_queue.borrow_mut().clear();
        self.flush();
        // Whatever is injected from now on is dropped, so a waiting caller
        // sees its reply channel close instead of blocking forever.
        let closed = self.shared_self().close_injector();
        drop(closed);
        self.ended_in_shutdown.get()
    }

    pub(crate) fn enqueue(&self, slot: u32, priority: Priority) {
        self.run_queue.borrow_mut().push(slot, priority);
    }

    /// Makes `process` runnable. Returns whether the caller must put it in
    /// the run queue (it was neither queued nor running).
    #[inline]
    pub(crate) fn wake_process(&self, process: &mut Process) -> bool {
        if process.running {
            self.running_woken.set(true);
            false
        } else if process.queued {
            false
        } else {
            process.queued = true;
            true
        }
    }

    /// Wakes the process `pid` of this shard, if it still exists.
    pub(crate) fn wake(&self, pid: Pid) {
        let runnable = self
            .with_process(pid, |process| {
                self.wake_process(process).then_some(process.priority)
            })
            .flatten();
        if let Some(priority) = runnable {
            self.enqueue(pid.slot(), priority);
        }
    }

    /// Wakes `pid` wherever it runs in this runtime.
    pub(crate) fn wake_anywhere(&self, pid: Pid) {
        if pid.shard() == self.id {
            self.wake(pid);
        } else {
            self.push_packet(pid.shard(), Packet::Wake(pid));
        }
    }

    /// The running process asks to run again after other processes.
    pub(crate) fn yield_running(&self) {
        self.running_woken.set(true);
    }

    /// Defers `hook` to the end of the running process's poll; `false`
    /// when no process is running.
    pub(crate) fn at_poll_end(&self, hook: fn()) -> bool {
        if self.running.get().is_none() {
            return false;
        }
        self.poll_end.borrow_mut().push(hook);
        true
    }

    fn run_poll_end_hooks(&self) {
        if self.poll_end.borrow().is_empty() {
            return;
        }
        // Taken out first: a hook may wake processes, which borrows the
        // shard again, but cannot defer more (no process is running).
        let hooks = std::mem::take(&mut *self.poll_end.borrow_mut());
        for hook in &hooks {
            hook();
        }
        let mut kept = self.poll_end.borrow_mut();
        if kept.is_empty() {
            // Keep the allocation for the next poll.
            *kept = hooks;
            kept.clear();
        }
    }

    /// Charges `reductions` to the running process's budget (see
    /// [`crate::coop`]); whether the budget is used up. `false` when no
    /// process is running.
    pub(crate) fn charge_running(&self, reductions: u32) -> bool {
        if self.running.get().is_none() {
            return false;
        }
        let budget = self.budget.get().saturating_sub(reductions);
        self.budget.set(budget);
        self.charged.set(self.charged.get() + u64::from(reductions));
        budget == 0
    }

    pub(crate) fn set_running_exiting(&self) {
        self.running_exiting.set(true);
    }

    /// Whether the running process was told to end during this poll; its
    /// receives then stay pending so it stops at its next `.await`.
    #[inline]
    pub(crate) fn running_is_exiting(&self) -> bool {
        self.running_exiting.get()
    }

    #[inline]
    pub(crate) fn budget_used_up(&self) -> bool {
        self.budget.get() == 0
    }

    #[inline]
    pub(crate) fn consume_reduction<M>(&self, cell: &ProcessCell<M>) {
        self.budget.set(self.budget.get().saturating_sub(1));
        cell.reductions.set(cell.reductions.get() + 1);
    }

    /// Runs `f` on the live process `pid` of this shard.
    pub(crate) fn with_process<R>(&self, pid: Pid, f: impl FnOnce(&mut Process) -> R) -> Option<R> {
        if pid.node() != self.node || pid.shard() != self.id {
            return None;
        }
        self.table
            .borrow_mut()
            .get_mut(pid.slot(), pid.generation())
            .map(f)
    }

    // ---- spawning ----------------------------------------------------

    /// Spawns a process on this shard.
    pub(crate) fn spawn_local<T, F, Fut>(
        self: &Rc<Shard>,
        spawn: LocalSpawn,
        start: F,
    ) -> Result<Addr<T>, SpawnError>
    where
        T: Send + 'static,
        F: FnOnce(crate::Context<T>) -> Fut + 'static,
        Fut: Future + 'static,
        Fut::Output: crate::ProcessResult,
    {
        if self.shared.shutdown.load(Ordering::Relaxed) {
            return Err(SpawnError::ShuttingDown);
        }
        let (slot, generation) = self
            .table
            .borrow_mut()
            .vacant()
            .map_err(|_| SpawnError::TableFull)?;
        let pid = Pid::new(self.node, self.id, slot, generation);
        let (cell, future) = make_process(pid, self.clone(), spawn.max_heap_bytes, start);
        let relations = (spawn.link.is_some() || spawn.monitored_by.is_some()).then(|| {
            let mut relations = Box::<Relations>::default();
            relations.links.extend(spawn.link);
            relations.monitored_by.extend(spawn.monitored_by);
            relations
        });
        self.table.borrow_mut().fill(
            slot,
            Process {
                pid,
                cell,
                future: Some(future),
                queued: true,
                running: false,
                exit: None,
                trap_exit: spawn.trap_exit,
                priority: spawn.priority,
                heap_limited: spawn.max_heap_bytes.is_some(),
                relations,
            },
        );
        self.enqueue(slot, spawn.priority);
        self.shared_self().live.fetch_add(1, Ordering::Relaxed);
        Ok(Addr::new(pid))
    }

    /// Which shard a placement means, checked.
    pub(crate) fn place(&self, placement: Placement) -> Result<ShardId, SpawnError> {
        self.shared.place(placement, self.id)
    }

    pub(crate) fn new_monitor_ref(&self) -> MonitorRef {
        let counter = self.next_monitor.get();
        self.next_monitor.set(counter + 1);
        monitor_ref(self.node, self.id.0, counter)
    }

    // ---- messages, signals and packets ------------------------------

    /// Sends a typed message to `to`, on this shard or another.
    #[inline]
    pub(crate) fn send_message<T: Send + 'static>(&self, to: Pid, message: T) {
        if to.node() != self.node {
            self.shared.undelivered.fetch_add(1, Ordering::Relaxed);
        } else if to.shard() == self.id {
            self.deliver(to, message);
        } else {
            let message = ErasedMessage::new(message);
            self.push_packet(to.shard(), Packet::Message { to, message });
        }
    }

    /// Delivers every message of `messages` to `to`, a process of this
    /// shard, in order: looked up, and woken, once for all of them. The
    /// messages are taken while the process table is borrowed, so
    /// producing them must not reach the shard. Without such a process,
    /// they are dropped and counted. A heap limit is checked once the
    /// whole batch is in the mailbox.
    pub(crate) fn deliver_all<T: Send + 'static>(
        &self,
        to: Pid,
        messages: impl IntoIterator<Item = T>,
    ) {
        let mut table = self.table.borrow_mut();
        let Some(process) = table
            .get_mut(to.slot(), to.generation())
            .filter(|process| process.exit.is_none())
        else {
            return self.lose(messages);
        };
        let Some(cell) = process.cell.as_any().downcast_ref::<ProcessCell<T>>() else {
            return self.lose(messages);
        };
        let delivered = cell.push_all(messages.into_iter().map(Envelope::Msg));
        if delivered > 0 && self.after_delivery(process) {
            let priority = process.priority;
            drop(table);
            self.enqueue(to.slot(), priority);
        }
    }

    /// Drops messages for a process that is not there, counted.
    fn lose<T>(&self, messages: impl IntoIterator<Item = T>) {
        let lost = messages.into_iter().count() as u64;
        self.shared.undelivered.fetch_add(lost, Ordering::Relaxed);
    }

    /// Sends `signal` to `to`, on this shard or another.
    pub(crate) fn send_signal(&self, to: Pid, signal: Signal) {
        if to.node() != self.node {
            match self.shared.distribution.get() {
                Some(distribution) => distribution.signal(to, signal),
                // No distribution: no other node can be reached.
                None => self.answer_absent(to, signal, ExitReason::NoConnection),
            }
        } else if to.shard() == self.id {
            self.handle_signal(to, signal);
        } else if usize::from(to.shard().0) >= self.shared.shards.len() {
            // No such shard, so no such process.
            self.answer_for_missing(to, signal);
        } else {
            self.push_packet(to.shard(), Packet::Signal { to, signal });
        }
    }

    /// Runs `work` on shard `target`: here at once, or there through the
    /// ring.
    pub(crate) fn run_on(self: &Rc<Shard>, target: crate::ShardId, work: ShardWork) {
        if target == self.id {
            work(self);
        } else {
            self.push_packet(target, Packet::Run(work));
        }
    }

    #[inline]
    /// Sends `work` to run on shard `to` (another shard).
    pub(crate) fn push_run(&self, to: ShardId, work: ShardWork) {
        self.push_packet(to, Packet::Run(work));
    }

    fn push_packet(&self, to: ShardId, packet: Packet) {
        let index = to.0 as usize;
        let mut outbox = self.outbox.borrow_mut();
        let Outbox {
            rings,
            overflow,
            dirty,
            is_dirty,
        } = &mut *outbox;
        let Some(Some(ring)) = rings.get_mut(index) else {
            drop(outbox);
            self.shared.undelivered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let packet = if overflow[index].is_empty() {
            ring.push(packet).err()
        } else {
            Some(packet)
        };
        if let Some(packet) = packet {
            overflow[index].push_back(packet);
            self.running_overflowed.set(self.running.get().is_some());
        }
        if !is_dirty[index] {
            is_dirty[index] = true;
            dirty.push(index);
        }
    }

    /// Moves overflowed packets into rings that have room again, and wakes
    /// every destination written to since the last flush.
    fn flush(&self) {
        let mut outbox = self.outbox.borrow_mut();
        if outbox.dirty.is_empty() {
            return;
        }
        let Outbox {
            rings,
            overflow,
            dirty,
            is_dirty,
        } = &mut *outbox;
        dirty.retain(|&index| {
            if let Some(ring) = rings[index].as_mut() {
                while let Some(packet) = overflow[index].pop_front() {
                    if let Err(packet) = ring.push(packet) {
                        overflow[index].push_front(packet);
                        break;
                    }
                }
            }
            self.shared.shards[index].notify();
            let keep = !overflow[index].is_empty();
            is_dirty[index] = keep;
            keep
        });
        if dirty.is_empty() {
            drop(outbox);
            let waiting = std::mem::take(&mut *self.waiting_for_room.borrow_mut());
            for pid in waiting {
                self.wake(pid);
            }
        }
    }

    fn drain_inbound(self: &Rc<Shard>) {
        let sources = self.inbox.borrow().len();
        for source in 0..sources {
            // Bounded, so a flooding source cannot keep this shard from its
            // run queue.
            for _ in 0..INBOUND_BATCH {
                let packet = self.inbox.borrow_mut()[source].pop();
                match packet {
                    Some(packet) => self.apply(packet),
                    None => break,
                }
            }
            self.inbox.borrow_mut()[source].release();
        }
        let me = self.shared_self();
        if me.injected.load(Ordering::Relaxed) && me.injected.swap(false, Ordering::AcqRel) {
            for packet in me.take_injected() {
                self.apply(packet);
            }
        }
    }

    fn apply(self: &Rc<Shard>, packet: Packet) {
        match packet {
            Packet::Message { to, message } => message.deliver(&**self, to),
            Packet::Signal { to, signal } => self.handle_signal(to, signal),
            Packet::Wake(pid) => self.wake(pid),
            Packet::Run(work) => work(self),
        }
    }

    fn has_inbound(&self) -> bool {
        self.shared_self().injected.load(Ordering::Acquire)
            || self.inbox.borrow().iter().any(|ring| !ring.is_empty())
    }

    /// Busy-waits up to the idle spin for a packet, an I/O completion, a
    /// due timer or shutdown, so that a shard that just ran out of work
    /// picks up the next packet in nanoseconds rather than after a wake-up.
    /// Returns whether work arrived.
    fn spin_for_work(&self, driver: &mut dyn Driver) -> bool {
        let spin = self.shared.idle_spin;
        if spin.is_zero() {
            return false;
        }
        let clock = &self.shared.clock;
        let deadline = clock.now() + spin;
        let next_timer = self.timers.borrow().next_deadline();
        loop {
            for _ in 0..SPINS_PER_CLOCK_READ {
                if self.has_inbound() {
                    return true;
                }
                std::hint::spin_loop();
            }
            self.flush();
            driver.poll();
            if !self.run_queue.borrow().is_empty() {
                // The flush woke processes waiting for room, or the driver
                // woke processes whose I/O completed.
                return true;
            }
            let now = clock.now();
            let timer_due = next_timer.is_some_and(|deadline| deadline <= now.as_nanos());
            if timer_due || self.shared.shutdown.load(Ordering::Relaxed) {
                return true;
            }
            if now >= deadline {
                return false;
            }
        }
    }

    fn park(&self, driver: &mut dyn Driver) {
        let mut timeout = self
            .timers
            .borrow()
            .next_deadline()
            .map(|deadline| Instant::from_nanos(deadline) - self.now());
        if !self.outbox.borrow().dirty.is_empty() {
            // Packets wait for room in a full ring. Its consumer does not
            // wake us when it makes room, so look again shortly.
            timeout = Some(timeout.map_or(OVERFLOW_RETRY, |t| t.min(OVERFLOW_RETRY)));
        }
        let me = self.shared_self();
        me.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let idle = self.run_queue.borrow().is_empty() && !self.has_inbound();
        if idle && !self.shared.shutdown.load(Ordering::SeqCst) {
            driver.park(timeout);
        }
        me.parked.store(false, Ordering::Relaxed);
    }

    // ---- timers --------------------------------------------------------

    pub(crate) fn set_timer(&self, deadline: Instant, action: TimerAction) -> TimerKey {
        self.timers.borrow_mut().insert(deadline.as_nanos(), action)
    }

    pub(crate) fn cancel_timer(&self, key: TimerKey) -> bool {
        self.timers.borrow_mut().cancel(key).is_some()
    }

    fn fire_timers(&self) {
        let mut fired = std::mem::take(&mut *self.fired.borrow_mut());
        self.timers
            .borrow_mut()
            .advance(self.now().as_nanos(), &mut fired);
        for action in fired.drain(..) {
            match action {
                TimerAction::Wake(pid) => self.wake(pid),
                TimerAction::Run(work) => work(self),
            }
        }
        *self.fired.borrow_mut() = fired;
    }

    // ---- introspection -------------------------------------------------

    pub(crate) fn process_info(&self, pid: Pid) -> Option<ProcessInfo> {
        if pid.node() != self.node || pid.shard() != self.id {
            return None;
        }
        self.table
            .borrow()
            .get(pid.slot(), pid.generation())
            .map(Process::info)
    }

    pub(crate) fn stats(&self) -> ShardStats {
        ShardStats {
            shard: self.id,
            processes: self.table.borrow().len(),
            run_queue: self.run_queue.borrow().len(),
            timers: self.timers.borrow().len(),
            pool: self.pool_stats(),
        }
    }

    fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }
}

impl Deliver for Shard {
    /// Puts `message` in the mailbox of `to`, a process of this shard, and
    /// wakes it. A message for a process that is gone, or that is already
    /// ending, is dropped.
    #[inline]
    fn deliver<T: Send + 'static>(&self, to: Pid, message: T) {
        let mut table = self.table.borrow_mut();
        let process = table
            .get_mut(to.slot(), to.generation())
            .filter(|process| process.exit.is_none());
        let Some(process) = process else {
            self.shared.undelivered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(cell) = process.cell.as_any().downcast_ref::<ProcessCell<T>>() else {
            self.shared.undelivered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        cell.push(Envelope::Msg(message));
        if self.after_delivery(process) {
            let priority = process.priority;
            drop(table);
            self.enqueue(to.slot(), priority);
        }
    }
}

/// The reduction budget of one poll of a process at `priority`: `Low`
/// processes (bulk transfers) get an eighth, so that one of their polls,
/// which cannot be interrupted, holds up a `High` process that becomes
/// ready meanwhile an eighth as long; they are polled as often as before,
/// just in shorter slices.
fn budget_for(reductions: u32, priority: Priority) -> u32 {
    match priority {
        Priority::Low => (reductions / 8).max(1),
        Priority::Normal | Priority::High => reductions,
    }
}

/// Polls between two reads of the clock, the rings and the timers.
const POLLS_PER_PASS: usize = 64;

/// Looks at the rings between two clock reads while spinning.
const SPINS_PER_CLOCK_READ: usize = 64;

/// How long a shard with packets waiting for ring space parks at most.
const OVERFLOW_RETRY: std::time::Duration = std::time::Duration::from_micros(50);

/// Packets taken from one inbound ring before moving to the next: no more
/// than a receiver consumes in one poll's budget, so a flooded shard moves
/// packets into mailboxes only as fast as its processes take them out, and
/// the backlog stays in the (bounded) ring where the sender sees it.
const INBOUND_BATCH: usize = 1024;

/// The exit reason for a poll that unwound with `payload`.
fn panic_reason(payload: Box<dyn std::any::Any + Send>) -> ExitReason {
    if payload.is::<HeapLimitExceeded>() {
        return ExitReason::HeapLimit;
    }
    let message = if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).into()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.as_str().into()
    } else {
        "a panic with a non-string payload".into()
    };
    ExitReason::Panic(message)
}

/// Drops a process's future, containing any panic from a destructor so that
/// it cannot take the shard down.
fn drop_quietly<T>(value: T) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
}
