//! SWIM failure detection and membership, as a sans-IO state machine.
//!
//! [`Swim`] wraps `foca`'s SWIM (with the *Inf.* and *Susp.* extensions:
//! piggybacked dissemination, suspicion before declaring a member down)
//! and turns what it does into this engine's terms: inputs are packets
//! from peers, timers that came due, a peer's word that it leaves; outputs
//! are packets to send, timers to set and [`MemberEvent`]s. It reads no
//! clock and draws from a seeded stream, so the same inputs give the same
//! outputs, in the simulator as in tests. The process that carries it over
//! the transport is in [`super::full_mesh`].
//!
//! Members are identified to SWIM by node id, boot stamp, address and name
//! ([`Swimmer`]). The boot stamp orders starts of one node id: a node that
//! restarts, or that was declared down by mistake and rejoins, comes back
//! with a larger one and wins over its old self.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{Foca, Identity, NoCustomBroadcast, PostcardCodec, State, Timer};
use foundation_sched::sim::SimRng;
use foundation_sched::NodeId;
use serde::{Deserialize, Serialize};

use super::{DownReason, FailureDetector, Member, MemberEvent};

/// A member as SWIM knows it. Its SWIM address is its node id: two
/// identities with one node id are one node's starts, and the later boot
/// wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Swimmer {
    node: u16,
    boot: u64,
    addr: SocketAddr,
    name: String,
}

impl Swimmer {
    pub(crate) fn new(member: &Member, boot: u64) -> Swimmer {
        Swimmer {
            node: member.node.0,
            boot,
            addr: member.addr,
            name: member.name.clone(),
        }
    }

    pub(crate) fn member(&self) -> Member {
        Member {
            node: NodeId(self.node),
            name: self.name.clone(),
            addr: self.addr,
        }
    }
}

impl Identity for Swimmer {
    type Addr = u16;

    fn renew(&self) -> Option<Swimmer> {
        Some(Swimmer {
            boot: self.boot + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> u16 {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Swimmer) -> bool {
        self.boot > adversary.boot
    }
}

/// A timer SWIM asked for, to be handed back to [`Swim::on_timer`].
pub(crate) type SwimTimer = Timer<Swimmer>;

/// What one input made SWIM do.
#[derive(Default)]
pub(crate) struct Output {
    /// Packets, each for one member.
    pub(crate) sends: Vec<(Member, Vec<u8>)>,
    /// Timers to set: after the duration, hand the timer back.
    pub(crate) timers: Vec<(Duration, SwimTimer)>,
    /// What changed in the membership, in order.
    pub(crate) events: Vec<MemberEvent>,
}

/// Why a packet from a peer was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BadPacket(pub(crate) String);

/// One node's SWIM: its view of the cluster and its failure detector.
pub(crate) struct Swim {
    foca: Foca<Swimmer, PostcardCodec, Draws, NoCustomBroadcast>,
    out: foca::AccumulatingRuntime<Swimmer>,
    /// Members up, as SWIM knows them (with their boot), and whether they
    /// are suspected now.
    up: BTreeMap<NodeId, (Swimmer, bool)>,
    /// Members that said they leave: their down is a leave, not a failure.
    leaving: BTreeSet<NodeId>,
    /// Until the first member is up, the node is joining.
    joined: bool,
    /// This node left: SWIM's word that it is down is its own doing.
    left: bool,
}

impl Swim {
    /// This node, started at `boot`, with `timings`, drawing from `seed`.
    pub(crate) fn new(me: &Member, boot: u64, timings: &FailureDetector, seed: u64) -> Swim {
        let foca = Foca::new(
            Swimmer::new(me, boot),
            config(timings),
            Draws(SimRng::new(seed, DRAWS_STREAM)),
            PostcardCodec,
        );
        Swim {
            foca,
            out: foca::AccumulatingRuntime::new(),
            up: BTreeMap::new(),
            leaving: BTreeSet::new(),
            joined: false,
            left: false,
        }
    }

    /// Asks `seed`, found at its address, to let this node in.
    pub(crate) fn announce(&mut self, seed: &Member) -> Output {
        // Announcements are taken by whoever has the seed's node id, so
        // the boot stamp we do not know does not matter.
        let result = self.foca.announce(Swimmer::new(seed, 0), &mut self.out);
        self.step("announce", result)
    }

    /// Takes a packet from a peer.
    pub(crate) fn on_packet(&mut self, packet: &[u8]) -> (Output, Result<(), BadPacket>) {
        let result = self.foca.handle_data(packet, &mut self.out);
        let taken = result.map_err(|error| BadPacket(error.to_string()));
        (self.drain(), taken)
    }

    /// Takes back a timer that came due.
    pub(crate) fn on_timer(&mut self, timer: SwimTimer) -> Output {
        let result = self.foca.handle_timer(timer, &mut self.out);
        self.step("timer", result)
    }

    /// `node` said it leaves the cluster: it is down now, as a leave.
    pub(crate) fn on_leaving(&mut self, node: NodeId) -> Output {
        self.leaving.insert(node);
        let mut output = Output::default();
        if let Some((swimmer, _)) = self.up.remove(&node) {
            output
                .events
                .push(MemberEvent::Down(swimmer.member(), DownReason::Left));
        }
        output
    }

    /// This node leaves: SWIM tells the cluster that it is down.
    pub(crate) fn leave(&mut self) -> Output {
        self.left = true;
        let result = self.foca.leave_cluster(&mut self.out);
        self.step("leave", result)
    }

    /// Members up, in node order.
    pub(crate) fn members(&self) -> impl Iterator<Item = Member> + '_ {
        self.up.values().map(|(swimmer, _)| swimmer.member())
    }

    /// Whether SWIM still keeps `node` in mind, up or down: a down member
    /// is remembered for a while (and announced to, in case it was only
    /// cut off), then forgotten.
    pub(crate) fn remembers(&self, node: NodeId) -> bool {
        self.foca
            .iter_membership_state()
            .any(|member| member.id().node == node.0)
    }

    /// Whether some member was ever up: until then the node should keep
    /// announcing itself to its seeds.
    pub(crate) fn has_joined(&self) -> bool {
        self.joined
    }

    /// The output of a step that had no input from a peer: an error there
    /// is this node's own trouble, logged.
    fn step(&mut self, what: &str, result: Result<(), foca::Error>) -> Output {
        if let Err(error) = result {
            tracing::warn!("SWIM {what}: {error}");
        }
        self.drain()
    }

    /// `swimmer` is up: if another boot of its node was, that one went
    /// down first.
    fn up_again(&mut self, swimmer: Swimmer, events: &mut Vec<MemberEvent>) {
        let node = NodeId(swimmer.node);
        self.leaving.remove(&node);
        match self.up.insert(node, (swimmer.clone(), false)) {
            Some((old, _)) if old == swimmer => return,
            Some((old, _)) => events.push(MemberEvent::Down(old.member(), DownReason::Failed)),
            None => {}
        }
        events.push(MemberEvent::Up(swimmer.member()));
    }

    /// Collects what foca did into an [`Output`], with the events that
    /// changes of suspicion imply.
    fn drain(&mut self) -> Output {
        let mut output = Output::default();
        while let Some((to, packet)) = self.out.to_send() {
            output.sends.push((to.member(), packet.to_vec()));
        }
        while let Some(timer) = self.out.to_schedule() {
            output.timers.push(timer);
        }
        while let Some(notification) = self.out.to_notify() {
            self.notified(notification, &mut output.events);
        }
        // Suspicion changes come without a notification: compare.
        for swimmer in self.foca.iter_membership_state() {
            let node = NodeId(swimmer.id().node);
            let Some((known, suspected)) = self.up.get_mut(&node) else {
                continue;
            };
            let now_suspected = swimmer.state() == State::Suspect;
            if now_suspected != *suspected && swimmer.id() == known {
                *suspected = now_suspected;
                output.events.push(if now_suspected {
                    MemberEvent::Suspect(known.member())
                } else {
                    MemberEvent::Trusted(known.member())
                });
            }
        }
        output
    }

    fn notified(
        &mut self,
        notification: foca::OwnedNotification<Swimmer>,
        events: &mut Vec<MemberEvent>,
    ) {
        use foca::OwnedNotification as N;
        match notification {
            N::MemberUp(swimmer) => {
                self.joined = true;
                self.up_again(swimmer, events);
            }
            N::MemberDown(swimmer) => {
                let node = NodeId(swimmer.node);
                if self
                    .up
                    .get(&node)
                    .is_some_and(|(known, _)| *known == swimmer)
                {
                    self.up.remove(&node);
                    let reason = if self.leaving.remove(&node) {
                        DownReason::Left
                    } else {
                        DownReason::Failed
                    };
                    events.push(MemberEvent::Down(swimmer.member(), reason));
                }
            }
            // The same node with a later boot, while its old one counted as
            // up: it restarted before anyone declared it down. For its
            // peers its old processes are gone as if it had been.
            N::Rename(_, swimmer) if self.up.contains_key(&NodeId(swimmer.node)) => {
                self.up_again(swimmer, events);
            }
            N::Rename(..) => {}
            // The cluster declared this node down: for it, every other
            // node went away (their relations end, as theirs with it did),
            // and those SWIM still counts as up are up again at once,
            // under the boot this node rejoins with.
            N::Defunct | N::Rejoin(_) if !self.left => {
                for (_, (known, _)) in std::mem::take(&mut self.up) {
                    events.push(MemberEvent::Down(known.member(), DownReason::Failed));
                }
                let active: Vec<Swimmer> =
                    self.foca.iter_members().map(|m| m.id().clone()).collect();
                for swimmer in active {
                    self.up_again(swimmer, events);
                }
            }
            N::Active | N::Idle | N::Defunct | N::Rejoin(_) => {}
        }
    }
}

/// foca's configuration from ours.
fn config(timings: &FailureDetector) -> foca::Config {
    let mut config = foca::Config::simple();
    config.probe_period = timings.probe_period;
    config.probe_rtt = timings.probe_timeout;
    config.num_indirect_probes = NonZeroUsize::new(timings.indirect_probes.max(1)).expect("≥ 1");
    config.suspect_to_down_after = timings.suspicion_timeout;
    config.remove_down_after = timings.forget_after;
    config.max_transmissions = NonZeroU8::new(10).expect("non-zero");
    config.max_packet_size = NonZeroUsize::new(MAX_PACKET).expect("non-zero");
    // Tell a member we hold for down that it is, so that it rejoins with a
    // new boot instead of talking past us.
    config.notify_down_members = true;
    let every = |frequency: Duration, members: usize| {
        Some(foca::PeriodicParams {
            frequency,
            num_members: NonZeroUsize::new(members).expect("non-zero"),
        })
    };
    // Gossip keeps updates moving between probes; announcing now and then,
    // to live and to down members, heals a cluster split by a partition.
    config.periodic_gossip = every(timings.probe_period, 3);
    config.periodic_announce = every(timings.probe_period * 50, 1);
    config.periodic_announce_to_down_members = every(timings.probe_period * 25, 2);
    config
}

/// Largest SWIM packet: room for a few dozen piggybacked updates.
pub(crate) const MAX_PACKET: usize = 16 * 1024;

/// The stream of a node's seed that SWIM draws from.
const DRAWS_STREAM: u64 = 0x5357_494d; // "SWIM"

/// A seeded stream as the `rand` traits foca draws through.
struct Draws(SimRng);

impl rand::RngCore for Draws {
    fn next_u32(&mut self) -> u32 {
        (self.0.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.0.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster of [`Swim`]s on a virtual clock, exchanging packets
    /// through a queue that can lose everything for a node (a crash).
    struct Cluster {
        now: Duration,
        nodes: Vec<Option<Swim>>,
        /// (due, order, node, timer)
        timers: Vec<(Duration, u64, usize, SwimTimer)>,
        /// (due, to, packet)
        packets: Vec<(Duration, usize, Vec<u8>)>,
        events: Vec<Vec<MemberEvent>>,
        order: u64,
    }

    const LATENCY: Duration = Duration::from_micros(200);

    fn member(i: usize) -> Member {
        Member {
            node: NodeId(i as u16 + 1),
            name: format!("n{i}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 4000 + i as u16)),
        }
    }

    impl Cluster {
        fn new(size: usize) -> Cluster {
            let mut cluster = Cluster {
                now: Duration::ZERO,
                nodes: Vec::new(),
                timers: Vec::new(),
                packets: Vec::new(),
                events: vec![Vec::new(); size],
                order: 0,
            };
            for i in 0..size {
                cluster.nodes.push(Some(Swim::new(
                    &member(i),
                    1,
                    &FailureDetector::default(),
                    i as u64,
                )));
            }
            // Everyone joins through node 0.
            for i in 1..size {
                let output = cluster.nodes[i].as_mut().unwrap().announce(&member(0));
                cluster.apply(i, output);
            }
            cluster
        }

        fn apply(&mut self, from: usize, output: Output) {
            for (to, packet) in output.sends {
                let to = usize::from(to.node.0) - 1;
                self.packets.push((self.now + LATENCY, to, packet));
            }
            for (after, timer) in output.timers {
                self.order += 1;
                self.timers
                    .push((self.now + after, self.order, from, timer));
            }
            self.events[from].extend(output.events);
        }

        /// Runs until `until`, delivering packets and timers in time order.
        fn run_until(&mut self, until: Duration) {
            loop {
                let packet = (0..self.packets.len()).min_by_key(|&i| self.packets[i].0);
                let timer =
                    (0..self.timers.len()).min_by_key(|&i| (self.timers[i].0, self.timers[i].1));
                let packet_due = packet.map(|i| self.packets[i].0);
                let timer_due = timer.map(|i| self.timers[i].0);
                let next = match (packet_due, timer_due) {
                    (Some(p), Some(t)) => p.min(t),
                    (Some(p), None) => p,
                    (None, Some(t)) => t,
                    (None, None) => break,
                };
                if next > until {
                    break;
                }
                self.now = next;
                if packet_due == Some(next) {
                    let (_, to, bytes) = self.packets.swap_remove(packet.unwrap());
                    if let Some(swim) = self.nodes[to].as_mut() {
                        let (output, result) = swim.on_packet(&bytes);
                        result.unwrap();
                        self.apply(to, output);
                    }
                } else {
                    let (_, _, node, timer) = self.timers.swap_remove(timer.unwrap());
                    if let Some(swim) = self.nodes[node].as_mut() {
                        let output = swim.on_timer(timer);
                        self.apply(node, output);
                    }
                }
            }
            self.now = until;
        }

        fn members_of(&self, i: usize) -> Vec<NodeId> {
            self.nodes[i]
                .as_ref()
                .unwrap()
                .members()
                .map(|m| m.node)
                .collect()
        }

        fn downs_seen_by(&self, i: usize, node: NodeId) -> Vec<DownReason> {
            self.events[i]
                .iter()
                .filter_map(|event| match event {
                    MemberEvent::Down(member, reason) if member.node == node => Some(*reason),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn members_joining_through_one_seed_all_see_each_other() {
        let mut cluster = Cluster::new(5);
        cluster.run_until(Duration::from_secs(2));
        for i in 0..5 {
            let expected: Vec<_> = (0..5).filter(|&j| j != i).map(|j| member(j).node).collect();
            assert_eq!(cluster.members_of(i), expected, "node {i}'s view");
            assert!(cluster.nodes[i].as_ref().unwrap().has_joined());
            let ups = cluster.events[i]
                .iter()
                .filter(|event| matches!(event, MemberEvent::Up(_)))
                .count();
            assert_eq!(ups, 4, "node {i} saw each other node come up once");
        }
    }

    #[test]
    fn a_crashed_member_is_declared_failed_by_all_within_a_second() {
        let mut cluster = Cluster::new(4);
        cluster.run_until(Duration::from_secs(2));
        let crashed = member(2).node;
        cluster.nodes[2] = None;
        let crash = cluster.now;
        let mut detected = vec![None; 4];
        while detected
            .iter()
            .enumerate()
            .any(|(i, d)| i != 2 && d.is_none())
        {
            assert!(
                cluster.now < crash + Duration::from_secs(5),
                "not detected: {detected:?}"
            );
            cluster.run_until(cluster.now + Duration::from_millis(10));
            for i in [0, 1, 3] {
                if detected[i].is_none() && !cluster.members_of(i).contains(&crashed) {
                    detected[i] = Some(cluster.now - crash);
                }
            }
        }
        for i in [0, 1, 3] {
            assert_eq!(cluster.downs_seen_by(i, crashed), vec![DownReason::Failed]);
            let suspected = cluster.events[i]
                .iter()
                .any(|e| matches!(e, MemberEvent::Suspect(m) if m.node == crashed));
            assert!(suspected, "node {i} suspected the crashed node first");
            assert!(
                detected[i].unwrap() < Duration::from_secs(1),
                "{detected:?}"
            );
        }
    }

    #[test]
    fn a_member_that_leaves_is_down_as_left_once() {
        let mut cluster = Cluster::new(3);
        cluster.run_until(Duration::from_secs(2));
        let leaver = member(1).node;
        // The leaver tells each member (the process does it on the
        // acknowledged control channel), then SWIM spreads its down.
        for i in [0, 2] {
            let output = cluster.nodes[i].as_mut().unwrap().on_leaving(leaver);
            cluster.apply(i, output);
        }
        let output = cluster.nodes[1].as_mut().unwrap().leave();
        cluster.apply(1, output);
        cluster.nodes[1] = None;
        cluster.run_until(cluster.now + Duration::from_secs(3));
        for i in [0, 2] {
            assert_eq!(cluster.downs_seen_by(i, leaver), vec![DownReason::Left]);
            assert!(!cluster.members_of(i).contains(&leaver));
        }
    }

    #[test]
    fn a_restarted_member_comes_back_up_with_its_new_boot() {
        let mut cluster = Cluster::new(3);
        cluster.run_until(Duration::from_secs(2));
        cluster.nodes[2] = None;
        cluster.run_until(cluster.now + Duration::from_secs(2));
        let restarted = member(2).node;
        assert!(!cluster.members_of(0).contains(&restarted));
        let mut swim = Swim::new(&member(2), 2, &FailureDetector::default(), 99);
        let output = swim.announce(&member(0));
        cluster.nodes[2] = Some(swim);
        cluster.apply(2, output);
        cluster.run_until(cluster.now + Duration::from_secs(2));
        for i in [0, 1] {
            assert!(cluster.members_of(i).contains(&restarted), "node {i}");
            assert_eq!(
                cluster.downs_seen_by(i, restarted),
                vec![DownReason::Failed]
            );
        }
        assert_eq!(cluster.members_of(2), vec![member(0).node, member(1).node]);
    }

    #[test]
    fn a_member_restarted_before_anyone_noticed_is_down_then_up() {
        let mut cluster = Cluster::new(3);
        cluster.run_until(Duration::from_secs(2));
        let restarted = member(2).node;
        // Crashed and started again at once, with a later boot: nobody
        // had time to suspect the old one.
        let mut swim = Swim::new(&member(2), 2, &FailureDetector::default(), 77);
        let output = swim.announce(&member(0));
        cluster.nodes[2] = Some(swim);
        cluster.apply(2, output);
        cluster.run_until(cluster.now + Duration::from_secs(2));
        for i in [0, 1] {
            assert_eq!(
                cluster.downs_seen_by(i, restarted),
                vec![DownReason::Failed],
                "node {i}: the old start's processes are gone"
            );
            let ups = cluster.events[i]
                .iter()
                .filter(|e| matches!(e, MemberEvent::Up(m) if m.node == restarted))
                .count();
            assert_eq!(ups, 2, "node {i}: up, then up again");
            assert!(cluster.members_of(i).contains(&restarted));
        }
    }

    #[test]
    fn garbage_is_refused_and_changes_nothing() {
        let mut cluster = Cluster::new(2);
        cluster.run_until(Duration::from_secs(1));
        let swim = cluster.nodes[0].as_mut().unwrap();
        let (output, result) = swim.on_packet(&[0xff; 40]);
        assert!(result.is_err());
        assert!(output.events.is_empty());
        assert_eq!(cluster.members_of(0), vec![member(1).node]);
    }
}
