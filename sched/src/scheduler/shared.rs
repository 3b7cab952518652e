//! State the shards of one runtime share across threads: the only part of
//! the scheduler that is `Sync`.

use std::any::{Any, TypeId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::driver::Unpark;
use crate::pid::{NodeId, ShardId};
use crate::runtime::Stall;
use crate::scheduler::Packet;
use crate::time::Clock;

/// Runtime-wide shared state.
pub(crate) struct Shared {
    pub(crate) node: NodeId,
    /// Reductions a process may use in one poll.
    pub(crate) reductions: u32,
    pub(crate) clock: Arc<dyn Clock>,
    /// How long an idle shard busy-waits before it parks.
    pub(crate) idle_spin: std::time::Duration,
    pub(crate) shards: Box<[ShardShared]>,
    pub(crate) shutdown: AtomicBool,
    /// Messages dropped because their destination did not exist.
    pub(crate) undelivered: AtomicU64,
    /// Stalls the watchdog reported, oldest first, at most
    /// [`Shared::STALLS_KEPT`].
    pub(crate) stalls: Mutex<Vec<Stall>>,
    /// Runtime-wide values of services built on the runtime, by type.
    pub(crate) extensions: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// What a simulated runtime shares with its simulation; `None` on the
    /// real side.
    pub(crate) simulated: Option<Arc<Simulated>>,
    /// What carries signals to other nodes, once installed.
    pub(crate) distribution: std::sync::OnceLock<Arc<dyn crate::remote::Distribution>>,
}

/// What the nodes of a simulation share with it: the trace of what ran
/// when, and the bugs planted on purpose.
///
/// The trace folds every process poll, as (virtual time, pid), in order,
/// into one hash: two runs from one seed must fold to the same hash.
///
/// The agenda says which node has something due when: a node's own timers
/// and work, announced after each of its turns, and what others schedule
/// for it (a simulated network's deliveries, through an
/// [`Alarm`](crate::sim::Alarm)). The simulation visits only the nodes it
/// names, so a step costs what happens in it, not the cluster's size.
#[derive(Debug, Default)]
pub(crate) struct Simulated {
    agenda: Mutex<Agenda>,
    hash: AtomicU64,
    events: AtomicU64,
    /// `Down`s delivered so far.
    downs: AtomicU64,
    /// Planted bug: the `Down` with this number (from 1) is lost; zero
    /// for none.
    lost_down: AtomicU64,
}

impl Simulated {
    /// Plants the loss of the `nth` `Down` (from 1).
    pub(crate) fn lose_down(&self, nth: u64) {
        self.lost_down.store(nth, Ordering::Relaxed);
    }

    /// Counts a `Down` about to be delivered; whether a planted bug loses
    /// it.
    pub(crate) fn loses_down(&self) -> bool {
        let nth = self.downs.fetch_add(1, Ordering::Relaxed) + 1;
        nth == self.lost_down.load(Ordering::Relaxed)
    }

    /// Folds in one poll. Simulations run on one thread, so load and store
    /// do not race.
    pub(crate) fn record(&self, now: crate::time::Instant, pid: crate::Pid) {
        let mut hash = self.hash.load(Ordering::Relaxed);
        for word in [now.as_nanos(), pid.to_bits()] {
            // FNV-1a's step (xor, multiply by its prime), a whole word at
            // a time rather than a byte: as good for telling runs apart.
            hash = (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.hash.store(hash, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash.load(Ordering::Relaxed)
    }

    /// Puts node `node` on the agenda at `when`; entries at one instant
    /// come up in the order they were made.
    pub(crate) fn wake_at(&self, node: NodeId, when: crate::time::Instant) {
        let mut agenda = self.agenda();
        let order = agenda.made;
        agenda.made += 1;
        agenda.due.push(Reverse((when, order, node)));
    }

    /// The earliest instant on the agenda.
    pub(crate) fn next_wake(&self) -> Option<crate::time::Instant> {
        self.agenda().due.peek().map(|Reverse((when, ..))| *when)
    }

    /// Takes the next node on the agenda due by `now`.
    pub(crate) fn take_due(&self, now: crate::time::Instant) -> Option<NodeId> {
        let mut agenda = self.agenda();
        match agenda.due.peek() {
            Some(Reverse((when, ..))) if *when <= now => {}
            _ => return None,
        }
        agenda.due.pop().map(|Reverse((.., node))| node)
    }

    fn agenda(&self) -> std::sync::MutexGuard<'_, Agenda> {
        self.agenda.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

/// The simulation's agenda: (when, order made, node), earliest first.
#[derive(Debug, Default)]
struct Agenda {
    due: BinaryHeap<Reverse<(crate::time::Instant, u64, NodeId)>>,
    made: u64,
}

/// What other threads see of one shard.
pub(crate) struct ShardShared {
    pub(crate) unparker: Arc<dyn Unpark>,
    /// Packets from threads outside the runtime; `None` once the shard has
    /// stopped, so that late packets are dropped rather than kept forever.
    injector: Mutex<Option<Vec<Packet>>>,
    pub(crate) injected: AtomicBool,
    /// Set while the shard is (about to be) parked in its driver.
    pub(crate) parked: AtomicBool,
    /// Live processes, for least-loaded placement.
    pub(crate) live: AtomicUsize,
    /// Poll counter for the stall watchdog: odd while a poll is running.
    pub(crate) polls: AtomicU64,
    /// The pid (bits) being polled while `polls` is odd.
    pub(crate) polling: AtomicU64,
}

impl Shared {
    pub(crate) const STALLS_KEPT: usize = 1024;

    /// Hands `packet` to `shard` from a thread outside the runtime (or from
    /// a shard of another runtime).
    pub(crate) fn inject(&self, shard: ShardId, packet: Packet) {
        let Some(target) = self.shards.get(shard.0 as usize) else {
            self.undelivered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let refused = {
            let mut injector = target
                .injector
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match injector.as_mut() {
                Some(packets) => {
                    packets.push(packet);
                    None
                }
                None => Some(packet),
            }
        };
        if let Some(packet) = refused {
            // The shard has stopped. Dropping the packet (outside the lock:
            // it may hold anything) closes any reply channel in it.
            drop(packet);
            return;
        }
        target.injected.store(true, Ordering::Release);
        target.notify();
    }

    /// Records a stall, keeping the newest [`Shared::STALLS_KEPT`].
    pub(crate) fn record_stall(&self, stall: Stall) {
        let mut stalls = self.stalls.lock().unwrap_or_else(PoisonError::into_inner);
        if stalls.len() == Self::STALLS_KEPT {
            stalls.remove(0);
        }
        stalls.push(stall);
    }
}

impl ShardShared {
    pub(crate) fn new(unparker: Arc<dyn Unpark>) -> ShardShared {
        ShardShared {
            unparker,
            injector: Mutex::new(Some(Vec::new())),
            injected: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            polls: AtomicU64::new(0),
            polling: AtomicU64::new(0),
        }
    }

    /// Takes the packets injected so far.
    pub(crate) fn take_injected(&self) -> Vec<Packet> {
        let mut injector = self.injector.lock().unwrap_or_else(PoisonError::into_inner);
        injector.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Stops accepting injected packets; returns those not yet taken, for
    /// the caller to drop outside the lock.
    pub(crate) fn close_injector(&self) -> Vec<Packet> {
        let mut injector = self.injector.lock().unwrap_or_else(PoisonError::into_inner);
        injector.take().unwrap_or_default()
    }

    /// The sender's half of the parking handshake: called after publishing
    /// a packet, unparks the shard if it is parked.
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) {
            self.unparker.unpark();
        }
    }
}
