//! The transport over the simulated network (`foundation::transport::sim`):
//! real transports — handshakes, frames, lanes, credit, acknowledgements,
//! reconnects — between simulated nodes, on virtual time, under latency,
//! loss and partitions drawn from the simulation's seed.
//!
//! `cargo test -p foundation-tests sim_` runs these with the other
//! simulation suites; `FOUNDATION_SIM_SEEDS` raises the number of seeds of
//! the randomized ones (default 8), `FOUNDATION_SIM_SEED` runs one.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::transport::{Numbered, Seen};
use foundation::sim::{SimRng, Simulation};
use foundation::time::Instant;
use foundation::transport::fault::{Fault, FaultRule};
use foundation::transport::sim::{Link, Network};
use foundation::transport::{
    ChannelId, ChannelSpec, Cookie, Remote, StartError, Transport, TransportConfig,
};
use foundation::{Addr, Context, Envelope, Handle, NodeId, Pid, Runtime};

/// Seeds the randomized tests try unless `FOUNDATION_SIM_SEEDS` says more.
const DEFAULT_SEEDS: u64 = 8;

/// The port every simulated node listens on.
const PORT: u16 = 7000;

/// Host `n` (from 1) of the simulated network.
fn ip(n: u16) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n as u8))
}

fn addr(n: u16) -> SocketAddr {
    SocketAddr::new(ip(n), PORT)
}

/// A node's transport and its receiving process, as its boot left them.
#[derive(Clone, Default)]
struct Booted(Arc<Mutex<Option<(Transport, Pid)>>>);

impl Booted {
    fn transport(&self) -> Transport {
        self.0.lock().unwrap().as_ref().expect("booted").0.clone()
    }

    fn receiver(&self) -> Pid {
        self.0.lock().unwrap().as_ref().expect("booted").1
    }
}

/// What a receiver saw, with the virtual time it saw each.
type Log = Arc<Mutex<Vec<(Instant, Seen)>>>;

/// Adds node `n` of `cluster` nodes on `network` (host `ip(n)`, node id
/// `n`): its boot starts its transport on `addr(n)`, makes every other
/// node a peer and spawns a receiver that logs into `log`. Restartable:
/// every restart boots it again.
fn add_node(sim: &mut Simulation, network: &Network, n: u16, cluster: u16, log: &Log) -> Booted {
    let booted = Booted::default();
    let (slot, log) = (booted.clone(), log.clone());
    let seed = sim.seed() ^ u64::from(n);
    let drivers = network.driver(ip(n));
    let builder = move || Runtime::builder().driver(drivers.clone());
    let boot = move |handle: &Handle| {
        let mut config = TransportConfig::new(format!("node-{n}"), Cookie::new("sim"));
        config.listen = addr(n);
        config.seed = Some(seed);
        let transport = Transport::start_simulated(handle, config).expect("the transport starts");
        for peer in (1..=cluster).filter(|&peer| peer != n) {
            transport
                .add_peer(NodeId(peer), addr(peer))
                .expect("a new peer");
        }
        let log = log.clone();
        let receiver: Addr<Remote<Numbered>> = handle
            .spawn(move |cx: Context<Remote<Numbered>>| async move {
                while let Envelope::Msg(message) = cx.recv().await {
                    log.lock().unwrap().push((cx.now(), Seen::of(&message)));
                }
            })
            .expect("spawn the receiver");
        transport.register(&receiver);
        *slot.0.lock().unwrap() = Some((transport, receiver.pid()));
    };
    sim.add_restartable_node(builder, boot).expect("a node");
    booted
}

/// Spawns on `node` a process that sends `count` messages numbered from
/// `first` to `to` on `channel`, in order, `gap` apart in virtual time.
fn send_numbered(
    sim: &mut Simulation,
    node: usize,
    from: &Booted,
    to: Pid,
    channel: ChannelId,
    (first, count): (u64, u64),
    gap: Duration,
) {
    let transport = from.transport();
    sim.node(node)
        .enter(|handle| {
            handle.spawn(move |cx: Context<()>| async move {
                for seq in first..first + count {
                    let message = Numbered::new(0, seq, 24);
                    transport
                        .send(cx.pid(), to, channel, &message)
                        .await
                        .expect("a send on a known peer's channel");
                    if !gap.is_zero() {
                        cx.sleep(gap).await;
                    }
                }
            })
        })
        .expect("spawn the sender");
}

/// The sequence numbers `log` saw, in arrival order, each checked intact.
fn seqs(log: &Log) -> Vec<u64> {
    let log = log.lock().unwrap();
    assert!(log.iter().all(|(_, seen)| seen.intact), "bodies intact");
    log.iter().map(|(_, seen)| seen.seq).collect()
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("FOUNDATION_SIM_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("FOUNDATION_SIM_SEEDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    (1..=count).collect()
}

#[test]
fn sim_network_carries_messages_between_simulated_nodes_with_latency() {
    let mut sim = Simulation::new(11);
    let network = Network::new(&sim);
    let latency = Duration::from_millis(3);
    network.set_default_link(Link {
        latency,
        jitter: Duration::ZERO,
        ..Link::default()
    });
    let log = Log::default();
    let a = add_node(&mut sim, &network, 1, 2, &log);
    let b = add_node(&mut sim, &network, 2, 2, &log);
    sim.run_for(Duration::from_millis(100));
    assert!(a.transport().is_connected(NodeId(2), ChannelId::DATA));
    let sent_at = sim.now();
    send_numbered(
        &mut sim,
        0,
        &a,
        b.receiver(),
        ChannelId::DATA,
        (0, 1000),
        Duration::ZERO,
    );
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        seqs(&log),
        (0..1000).collect::<Vec<_>>(),
        "all, once, in order"
    );
    let first = log.lock().unwrap()[0].0;
    assert!(
        first >= sent_at + latency,
        "a message takes the link's latency: sent {sent_at:?}, arrived {first:?}"
    );
    assert_eq!(b.transport().stats().delivered, 1000);
}

#[test]
fn sim_network_a_refused_connect_is_retried_until_the_peer_listens() {
    let mut sim = Simulation::new(12);
    let network = Network::new(&sim);
    let log = Log::default();
    let a = add_node(&mut sim, &network, 1, 2, &log);
    sim.run_for(Duration::from_millis(200));
    assert!(!a.transport().is_connected(NodeId(2), ChannelId::CONTROL));
    let refused = a.transport().recent_errors();
    assert!(
        !refused.is_empty(),
        "connects to a host nobody listens on fail"
    );
    let b = add_node(&mut sim, &network, 2, 2, &log);
    sim.run_for(Duration::from_secs(5));
    assert!(
        a.transport().is_connected(NodeId(2), ChannelId::CONTROL),
        "{:?} {:?} {:?}",
        a.transport().recent_errors(),
        b.transport().recent_errors(),
        network
    );
    send_numbered(
        &mut sim,
        0,
        &a,
        b.receiver(),
        ChannelId::CONTROL,
        (0, 10),
        Duration::ZERO,
    );
    sim.run_for(Duration::from_secs(1));
    assert_eq!(seqs(&log), (0..10).collect::<Vec<_>>());
}

/// One randomized run: node 1 sends numbered messages on the acknowledged
/// `control` channel to node 2 while the network loses segments, jitters,
/// and partitions the two hosts (one way or both) on a schedule drawn from
/// the seed, and a fault rule drops a tenth of the messages (which cuts
/// the connection: they are sent again). After healing, every message has
/// arrived exactly once, in order. Returns the run's trace hash.
fn acknowledged_run(seed: u64) -> u64 {
    const COUNT: u64 = 600;
    let mut sim = Simulation::new(seed);
    let network = Network::new(&sim);
    network.set_default_link(Link {
        latency: Duration::from_micros(200),
        jitter: Duration::from_millis(2),
        loss: 0.02,
        retransmit: Duration::from_millis(200),
    });
    let log = Log::default();
    let a = add_node(&mut sim, &network, 1, 2, &log);
    let b = add_node(&mut sim, &network, 2, 2, &log);
    b.transport().faults().add(
        FaultRule::new(Fault::Drop(0.1))
            .from(NodeId(1))
            .channel(ChannelId::CONTROL),
    );
    send_numbered(
        &mut sim,
        0,
        &a,
        b.receiver(),
        ChannelId::CONTROL,
        (0, COUNT),
        Duration::from_millis(5),
    );
    let mut schedule = sim.rng(1);
    for _ in 0..12 {
        sim.run_for(Duration::from_millis(20 + schedule.below(400)));
        cut_at_random(&network, &mut schedule);
    }
    network.heal_all();
    sim.run_for(Duration::from_secs(30));
    let seen = seqs(&log);
    assert_eq!(
        seen,
        (0..COUNT).collect::<Vec<_>>(),
        "seed {seed}: every message exactly once, in order \
         (replay: FOUNDATION_SIM_SEED={seed} cargo test -p foundation-tests --test sim_network)"
    );
    assert!(
        b.transport().faults().injected() > 0,
        "seed {seed}: the fault rule dropped something"
    );
    let lanes: u64 = ChannelSpec::defaults()
        .iter()
        .map(|channel| u64::from(channel.parallelism))
        .sum();
    assert!(
        a.transport().stats().connections > lanes,
        "seed {seed}: connections were cut and made again"
    );
    assert_eq!(
        network.open_connections() as u64,
        2 * lanes,
        "seed {seed}: one connection per lane each way, none left over from the cuts"
    );
    sim.trace()
}

/// Heals, or cuts one direction, or both, between hosts 1 and 2.
fn cut_at_random(network: &Network, rng: &mut SimRng) {
    network.heal_all();
    match rng.below(4) {
        0 => network.partition(ip(1), ip(2)),
        1 => network.partition(ip(2), ip(1)),
        2 => network.partition_both(ip(1), ip(2)),
        _ => {}
    }
}

#[test]
fn sim_network_acknowledged_delivery_is_exactly_once_through_partitions_and_loss() {
    for seed in seeds() {
        acknowledged_run(seed);
    }
}

#[test]
fn sim_network_the_same_seed_replays_the_same_trace() {
    let mut traces = Vec::new();
    for seed in seeds().into_iter().take(4) {
        let trace = acknowledged_run(seed);
        assert_eq!(trace, acknowledged_run(seed), "seed {seed} replays");
        traces.push(trace);
    }
    traces.dedup();
    assert!(
        traces.len() > 1 || seeds().len() == 1,
        "different seeds, different runs"
    );
}

#[test]
fn sim_network_a_crashed_node_restarts_and_its_peer_reconnects() {
    let mut sim = Simulation::new(13);
    let network = Network::new(&sim);
    let log = Log::default();
    let a = add_node(&mut sim, &network, 1, 2, &log);
    let b = add_node(&mut sim, &network, 2, 2, &log);
    sim.run_for(Duration::from_millis(100));
    let before = b.receiver();
    send_numbered(
        &mut sim,
        0,
        &a,
        before,
        ChannelId::CONTROL,
        (0, 50),
        Duration::ZERO,
    );
    sim.run_for(Duration::from_millis(100));
    assert_eq!(seqs(&log), (0..50).collect::<Vec<_>>());

    assert!(sim.crash(1));
    sim.run_for(Duration::from_millis(500));
    assert!(
        !a.transport().is_connected(NodeId(2), ChannelId::CONTROL),
        "the crash closed node 2's connections"
    );
    assert!(sim.restart(1).expect("node 2 restarts"));
    sim.run_for(Duration::from_secs(5));
    assert!(
        a.transport().is_connected(NodeId(2), ChannelId::CONTROL),
        "node 1 dialled the restarted node again"
    );
    send_numbered(
        &mut sim,
        0,
        &a,
        b.receiver(),
        ChannelId::CONTROL,
        (50, 50),
        Duration::ZERO,
    );
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        seqs(&log),
        (0..100).collect::<Vec<_>>(),
        "the restarted node's new incarnation gets the new messages, numbered afresh"
    );

    assert!(sim.crash(0) && sim.crash(1));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        network.open_connections(),
        0,
        "no connection outlives its nodes: {network:?}"
    );
}

#[test]
fn sim_network_a_transport_starts_only_inside_a_node_on_a_network_host() {
    let mut sim = Simulation::new(14);
    let network = Network::new(&sim);
    let on_host = sim
        .add_node(Runtime::builder().driver(network.driver(ip(1))))
        .expect("a node");
    let plain = sim.add_node(Runtime::builder()).expect("a node");
    let config = || TransportConfig::new("node", Cookie::new("sim"));
    let outside = Transport::start_simulated(&sim.node(on_host).handle().clone(), config());
    assert!(
        matches!(outside, Err(StartError::Backend(_))),
        "outside the node: {outside:?}"
    );
    let no_host = sim
        .node(plain)
        .enter(|handle| Transport::start_simulated(handle, config()));
    assert!(
        matches!(no_host, Err(StartError::Backend(_))),
        "a node that is no network host: {no_host:?}"
    );
    let started = sim
        .node(on_host)
        .enter(|handle| Transport::start_simulated(handle, config()))
        .expect("inside a node on a host");
    assert_eq!(started.local_addr().ip(), ip(1), "listens on its host");
}
