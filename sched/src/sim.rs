//! The simulated side of the runtime seam: whole clusters on one thread, on
//! virtual time, replayable from a seed.
//!
//! A [`Simulation`] owns a [`VirtualClock`] and a set of nodes
//! ([`SimNode`]). Each node is the real runtime — the same shard, process
//! table, run queue, mailboxes, timer wheel, links, monitors and arenas as
//! a [`Runtime`](crate::Runtime) — built with [`Builder`] as usual, except
//! that it runs one shard on the simulation's thread instead of a pinned
//! thread per core, never spins or parks, and reads the virtual clock.
//!
//! [`Simulation::run_for`] alternates two steps: run the nodes that have
//! something to do now until none has (each turn of a node is one turn of
//! the real shard loop), then jump the clock to the earliest thing any
//! node has due. An agenda says which nodes those are: after each of its
//! turns a node announces its next timer (or that it has more to do now),
//! and code that schedules work for *another* node — the transport's
//! simulated network, delivering bytes — sets that node's [`Alarm`]. A
//! step visits only the nodes on the agenda, so a cluster of thousands of
//! mostly idle nodes costs what happens in it. Nothing
//! waits on the wall clock, so a minute of timers runs in as long as the
//! handlers take, and nothing is left to chance: the order in which nodes
//! turn, the clock, and every random choice come from the simulation. Code
//! under test draws its randomness from a [`SimRng`] stream
//! ([`Simulation::rng`]) split from the seed, one stream per use, so that
//! adding a draw in one place does not shift every other.
//!
//! A node added with [`Simulation::add_restartable_node`] can crash
//! ([`Simulation::crash`]: every process on it ends at once) and restart
//! ([`Simulation::restart`]): the node is built again from its builder
//! and its boot function runs again, as a restarted OS process would.
//!
//! Every process poll is folded into a trace hash ([`Simulation::trace`]):
//! the same seed and the same code give the same hash, which is how a
//! failure found by a randomized run is known to replay.
//!
//! ```
//! use std::time::Duration;
//! use foundation_sched::sim::Simulation;
//! use foundation_sched::{Context, Runtime};
//!
//! let mut sim = Simulation::new(7);
//! let node = sim.add_node(Runtime::builder()).unwrap();
//! let sleeper = |cx: Context<()>| async move {
//!     // An hour of virtual time, at once.
//!     cx.sleep(Duration::from_secs(3600)).await;
//! };
//! sim.node(node).enter(|node| node.spawn(sleeper)).unwrap();
//! sim.run_for(Duration::from_secs(7200));
//! assert_eq!(sim.now().as_nanos(), 7_200_000_000_000);
//! ```

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::driver::Driver;
use crate::pid::NodeId;
use crate::runtime::{BuildError, Builder, Handle, SimulatedParts};
use crate::scheduler::shared::Simulated;
use crate::scheduler::{waker, Shard};
use crate::time::{Clock, Instant, VirtualClock};

/// Turns a node may take without becoming idle before
/// [`Simulation::run_for`] moves to the next node: processes that keep
/// waking each other still let the other nodes run.
const TURNS_PER_VISIT: usize = 64;

/// A cluster of nodes on one thread and one virtual clock.
pub struct Simulation {
    seed: u64,
    clock: Arc<VirtualClock>,
    simulated: Arc<Simulated>,
    nodes: Vec<Slot>,
    /// Node index by id, for the agenda's entries.
    index: FxHashMap<NodeId, usize>,
    /// The nodes [`Simulation::run_until_idle`] has lined up to visit, and
    /// which nodes those are (kept between calls: there is one per step).
    ready: VecDeque<usize>,
    queued: Vec<bool>,
}

/// A node's place in the simulation: the node while it is up, and how to
/// start it again.
struct Slot {
    id: NodeId,
    node: Option<SimNode>,
    start: Option<Start>,
}

/// A node's start-up, run at its first start and at every restart.
struct Start {
    builder: Box<dyn Fn() -> Builder>,
    boot: Box<dyn Fn(&Handle)>,
}

impl Simulation {
    /// An empty simulation at virtual time zero whose randomness all comes
    /// from `seed`.
    pub fn new(seed: u64) -> Simulation {
        Simulation {
            seed,
            clock: Arc::new(VirtualClock::new()),
            simulated: Arc::new(Simulated::default()),
            nodes: Vec::new(),
            index: FxHashMap::default(),
            ready: VecDeque::new(),
            queued: Vec::new(),
        }
    }

    /// The seed this simulation replays from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The virtual clock, for code that needs to read it.
    pub fn clock(&self) -> Arc<VirtualClock> {
        self.clock.clone()
    }

    /// Random stream `stream` of this simulation: the same seed and stream
    /// give the same numbers, different streams independent ones.
    pub fn rng(&self, stream: u64) -> SimRng {
        SimRng::new(self.seed, stream)
    }

    /// Adds a node built from `builder` (its node id, reductions, arena
    /// and driver settings apply; it runs one shard, unpinned, on this
    /// simulation's clock). Without a node id of its own, node `n` (from
    /// 0) gets id `n + 1`. Returns its index for [`Simulation::node`].
    pub fn add_node(&mut self, builder: Builder) -> Result<usize, BuildError> {
        let id = self.next_id()?;
        let node = self.build(builder, id, None)?;
        Ok(self.push(Slot {
            id: node.handle.node(),
            node: Some(node),
            start: None,
        }))
    }

    /// Adds a node that can crash and restart: `builder` makes its runtime
    /// and `boot` starts what it runs (inside the node, so `boot` may
    /// spawn), at first and again at every [`Simulation::restart`] — the
    /// node's own start-up path.
    pub fn add_restartable_node(
        &mut self,
        builder: impl Fn() -> Builder + 'static,
        boot: impl Fn(&Handle) + 'static,
    ) -> Result<usize, BuildError> {
        let id = self.next_id()?;
        let mut node = self.build(builder(), id, None)?;
        node.enter(&boot);
        Ok(self.push(Slot {
            id: node.handle.node(),
            node: Some(node),
            start: Some(Start {
                builder: Box::new(builder),
                boot: Box::new(boot),
            }),
        }))
    }

    /// Crashes node `index`: every process on it ends at once and nothing
    /// more runs there until [`Simulation::restart`]. `false` if it was
    /// down already.
    pub fn crash(&mut self, index: usize) -> bool {
        self.nodes
            .get_mut(index)
            .and_then(|slot| slot.node.take())
            .is_some()
    }

    /// Starts crashed node `index` again, with its id, through its
    /// builder and boot. Only for nodes added with
    /// [`Simulation::add_restartable_node`]; `Ok(false)` if the node is up
    /// or cannot restart.
    pub fn restart(&mut self, index: usize) -> Result<bool, BuildError> {
        let Some(slot) = self.nodes.get(index) else {
            return Ok(false);
        };
        let (Some(start), None) = (&slot.start, &slot.node) else {
            return Ok(false);
        };
        let mut node = self.build((start.builder)(), slot.id, Some(index))?;
        node.enter(&*start.boot);
        self.nodes[index].node = Some(node);
        Ok(true)
    }

    /// Whether node `index` is up (added, and not crashed).
    pub fn is_up(&self, index: usize) -> bool {
        self.nodes
            .get(index)
            .is_some_and(|slot| slot.node.is_some())
    }

    /// Node `index` (from [`Simulation::add_node`]).
    ///
    /// # Panics
    ///
    /// If there is no such node, or it is down.
    pub fn node(&mut self, index: usize) -> &mut SimNode {
        self.nodes[index].node.as_mut().expect("the node is up")
    }

    /// How many nodes there are.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Runs the cluster until `duration` of virtual time has passed: the
    /// nodes with something to do until none has, then the clock to the
    /// next thing due, and again. Returns the number of turns taken.
    /// Virtual time stands still while any process is runnable, so a
    /// process that never waits (it only yields) keeps this from
    /// returning, as it would keep a real shard busy.
    pub fn run_for(&mut self, duration: Duration) -> u64 {
        let end = self.now() + duration;
        let mut turns = 0;
        loop {
            turns += self.run_until_idle();
            match self.simulated.next_wake() {
                Some(next) if next <= end => self.clock.advance_to(next.max(self.now())),
                _ => {
                    self.clock.advance_to(end);
                    // What is due exactly at `end` runs too.
                    turns += self.run_until_idle();
                    return turns;
                }
            }
        }
    }

    /// Runs the nodes until none has work left at the current virtual
    /// time (timers and deliveries due now count as work). Returns the
    /// turns taken.
    pub fn run_until_idle(&mut self) -> u64 {
        let now = self.now();
        let mut turns = 0;
        // The nodes due now, each once, in the order the agenda gives.
        self.queued.resize(self.nodes.len(), false);
        loop {
            while let Some(id) = self.simulated.take_due(now) {
                if let Some(&index) = self.index.get(&id) {
                    if !std::mem::replace(&mut self.queued[index], true) {
                        self.ready.push_back(index);
                    }
                }
            }
            let Some(index) = self.ready.pop_front() else {
                return turns;
            };
            self.queued[index] = false;
            let Some(node) = self.nodes[index].node.as_mut() else {
                continue; // Crashed since it was put on the agenda.
            };
            for _ in 0..TURNS_PER_VISIT {
                if !node.is_due() {
                    break;
                }
                node.turn();
                turns += 1;
            }
            node.announce();
        }
    }

    /// The hash of every process poll so far, as (virtual time, pid), in
    /// order: equal for two runs that ran the same (and, but for a hash
    /// collision, only for those).
    pub fn trace(&self) -> u64 {
        self.simulated.hash()
    }

    /// Process polls so far: the simulation's events.
    pub fn events(&self) -> u64 {
        self.simulated.events()
    }

    /// Plants `bug` in every node of this simulation, on purpose: a
    /// randomized run's checks must find it (which is how a test shows
    /// that they can fail). Only simulated nodes have this switch.
    pub fn plant(&mut self, bug: Bug) {
        match bug {
            Bug::LoseDown { nth } => self.simulated.lose_down(nth),
        }
    }

    /// Adds `slot`; returns its index.
    fn push(&mut self, slot: Slot) -> usize {
        let index = self.nodes.len();
        self.index.insert(slot.id, index);
        self.nodes.push(slot);
        index
    }

    /// The next free default node id: one more than the nodes so far.
    fn next_id(&self) -> Result<NodeId, BuildError> {
        let id = u16::try_from(self.nodes.len() + 1).map_err(|_| BuildError::NoFreeNodeId)?;
        Ok(NodeId(id))
    }

    /// Builds a node from `builder`, id `id` unless it names its own, and
    /// enters its driver; for slot `slot`, if it has one already (a
    /// restart), or a new one.
    fn build(
        &self,
        builder: Builder,
        id: NodeId,
        slot: Option<usize>,
    ) -> Result<SimNode, BuildError> {
        let SimulatedParts {
            handle,
            shard,
            mut driver,
        } = builder.build_simulated(id, self.clock.clone(), self.simulated.clone())?;
        let taken = self
            .nodes
            .iter()
            .enumerate()
            .any(|(index, other)| Some(index) != slot && other.id == handle.node());
        if taken {
            return Err(BuildError::NodeIdInUse(handle.node()));
        }
        {
            let _inside = waker::enter(shard.clone());
            driver.enter();
        }
        let node = SimNode {
            handle,
            shard,
            driver,
            clock: self.clock.clone(),
            simulated: self.simulated.clone(),
        };
        node.announce();
        Ok(node)
    }
}

/// A bug a simulation can plant in its nodes ([`Simulation::plant`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bug {
    /// The `nth` `Down` (counted from 1 over the whole simulation) is
    /// lost: its monitor is gone, but the watcher never hears of it.
    LoseDown {
        /// Which `Down`.
        nth: u64,
    },
}

/// One node of a [`Simulation`]: a runtime whose single shard runs on the
/// simulation's thread.
pub struct SimNode {
    handle: Handle,
    shard: Rc<Shard>,
    driver: Box<dyn Driver>,
    clock: Arc<VirtualClock>,
    simulated: Arc<Simulated>,
}

impl SimNode {
    /// The node's handle, as a [`Runtime`](crate::Runtime) has: sends,
    /// exits, process info. Calls that wait for an answer from the shard
    /// (`spawn`, `block_on`, `process_info`, `shard_stats`) would wait for
    /// this very thread: make them inside the node, through
    /// [`SimNode::enter`]. Likewise, a waker of a simulated process must be
    /// woken inside its node (a process, or `enter`): simulated nodes are
    /// not in the OS process's registry of runtimes, through which a wake
    /// from elsewhere would be routed.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `f` inside this node, as on its shard's thread: there the
    /// handle's spawns happen at once instead of waiting for the shard
    /// (which runs on this very thread).
    ///
    /// ```
    /// # use foundation_sched::sim::Simulation;
    /// # use foundation_sched::{Context, Runtime};
    /// let mut sim = Simulation::new(1);
    /// let node = sim.add_node(Runtime::builder()).unwrap();
    /// let pid = sim
    ///     .node(node)
    ///     .enter(|node| node.spawn(|cx: Context<()>| async move { cx.recv().await; }))
    ///     .unwrap();
    /// assert_eq!(pid.pid().node(), sim.node(node).handle().node());
    /// ```
    pub fn enter<R>(&mut self, f: impl FnOnce(&Handle) -> R) -> R {
        let result = {
            let _inside = waker::enter(self.shard.clone());
            self.driver.resume();
            let result = f(&self.handle);
            self.driver.suspend();
            result
        };
        // `f` may have spawned, sent or set timers.
        self.announce();
        result
    }

    /// Whether a turn now would run anything: runnable processes, packets
    /// from outside, or a timer or a delivery due at the current virtual
    /// time.
    fn is_due(&self) -> bool {
        self.shard.has_work()
            || self
                .next_deadline()
                .is_some_and(|deadline| deadline <= self.clock.now())
    }

    /// One turn of the shard's loop.
    fn turn(&mut self) {
        let _inside = waker::enter(self.shard.clone());
        self.driver.resume();
        self.shard.turn(self.driver.as_mut());
        self.driver.suspend();
    }

    /// When the node's next timer or driver event (a simulated network's
    /// delivery) is due.
    fn next_deadline(&self) -> Option<Instant> {
        let timer = self.shard.next_deadline();
        let event = self.driver.next_event();
        timer.into_iter().chain(event).min()
    }

    /// Puts this node on the agenda for when it next has something to
    /// do: now, if it has; else its next deadline, if any.
    fn announce(&self) {
        let now = self.clock.now();
        let when = match self.shard.has_work() {
            true => Some(now),
            false => self.next_deadline(),
        };
        if let Some(when) = when {
            self.simulated.wake_at(self.handle.node(), when.max(now));
        }
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        let _inside = waker::enter(self.shard.clone());
        self.handle.begin_shutdown();
        self.shard.stop_all();
    }
}

/// How code running in one node of a simulation tells it that the node
/// will have something due at some virtual time, scheduled from outside
/// the node: the simulated network announces a delivery to a host through
/// that host's alarm. (A node's own timers and work need none: the
/// simulation looks at them after each of its turns.)
#[derive(Clone, Debug)]
pub struct Alarm {
    simulated: Arc<Simulated>,
    node: NodeId,
}

impl Alarm {
    /// The alarm of the simulated node whose code runs on this thread
    /// (inside a turn, [`SimNode::enter`] or a driver's
    /// [`Driver::enter`]); `None` outside a simulation.
    pub fn current() -> Option<Alarm> {
        waker::with_current_shard(|shard| {
            let simulated = shard.shared.simulated.clone()?;
            Some(Alarm {
                simulated,
                node: shard.shared.node,
            })
        })
        .flatten()
    }

    /// The node will have something due at `when`: the simulation visits
    /// it then (or at once, if `when` has passed).
    pub fn at(&self, when: Instant) {
        self.simulated.wake_at(self.node, when);
    }
}

/// A deterministic random stream: SplitMix64 over (seed, stream). Small,
/// fast and fully determined by its two numbers, which is what a replay
/// needs; not for cryptography.
///
/// ```
/// use foundation_sched::sim::SimRng;
///
/// let mut a = SimRng::new(42, 1);
/// let mut b = SimRng::new(42, 1);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(SimRng::new(42, 2).below(10) < 10);
/// ```
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// Stream `stream` of `seed`.
    pub fn new(seed: u64, stream: u64) -> SimRng {
        let mut mixer = SimRng {
            state: seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03),
        };
        SimRng {
            state: mixer.next_u64(),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is zero).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `true` with probability `p` (clamped to `0..=1`).
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}
