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

use common::sim::{every_seed, seeds};
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

/// Connections from one node to another: one per lane of each channel.
fn lanes() -> u64 {
    ChannelSpec::defaults()
        .iter()
        .map(|channel| u64::from(channel.parallelism))
        .sum()
}

/// The sequence numbers `log` saw, in arrival order, each checked intact.
fn seqs(log: &Log) -> Vec<u64> {
    let log = log.lock().unwrap();
    assert!(log.iter().all(|(_, seen)| seen.intact), "bodies intact");
    log.iter().map(|(_, seen)| seen.seq).collect()
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
    let lanes = lanes();
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
    for seed in seeds(DEFAULT_SEEDS) {
        acknowledged_run(seed);
    }
}

#[test]
fn sim_network_the_same_seed_replays_the_same_trace() {
    let mut traces = Vec::new();
    for seed in seeds(DEFAULT_SEEDS).into_iter().take(4) {
        let trace = acknowledged_run(seed);
        assert_eq!(trace, acknowledged_run(seed), "seed {seed} replays");
        traces.push(trace);
    }
    traces.dedup();
    assert!(
        traces.len() > 1 || seeds(DEFAULT_SEEDS).len() == 1,
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

/// Nodes of a cluster chaos run.
const CLUSTER: u16 = 4;

/// What one node of a chaos run shares with the test: its boots so far,
/// its current transport, and the pid of its current receiver.
#[derive(Default)]
struct ChaosNode {
    boots: u32,
    transport: Option<Transport>,
    receiver: Option<Pid>,
}

/// What a chaos run saw: per receiving node, (its boot, the message); per
/// sending boot (`node * 1000 + boot`) and destination node, the numbers
/// sent.
#[derive(Default)]
struct ChaosLog {
    received: Vec<Vec<(u32, Seen)>>,
    sent: std::collections::BTreeMap<(u32, u16), Vec<u64>>,
}

/// One cluster chaos run: four nodes, each sending numbered messages on
/// the acknowledged `control` channel to each other node's receiver, while
/// a schedule drawn from the seed partitions pairs (one way or both),
/// crashes and restarts nodes and adds and removes message-dropping fault
/// rules. Checked after every step: each boot of a receiver sees each
/// sender's messages exactly once and consecutively (a peer's restart
/// loses what its old incarnation had not acknowledged, never a message in
/// the middle). Checked after healing: the last message each sender sent
/// reached each receiver, and one connection per lane and direction is
/// left.
fn cluster_chaos(seed: u64) -> Result<(), String> {
    let mut sim = Simulation::new(seed);
    let network = Network::new(&sim);
    network.set_default_link(Link {
        latency: Duration::from_micros(100),
        jitter: Duration::from_millis(1),
        loss: 0.01,
        retransmit: Duration::from_millis(200),
    });
    let nodes: Arc<Vec<Mutex<ChaosNode>>> =
        Arc::new((0..=CLUSTER).map(|_| Mutex::default()).collect());
    let log = Arc::new(Mutex::new(ChaosLog {
        received: vec![Vec::new(); usize::from(CLUSTER) + 1],
        ..ChaosLog::default()
    }));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for n in 1..=CLUSTER {
        let drivers = network.driver(ip(n));
        let (nodes, log, stop) = (nodes.clone(), log.clone(), stop.clone());
        let boot = move |handle: &Handle| chaos_boot(handle, seed, n, &nodes, &log, &stop);
        sim.add_restartable_node(move || Runtime::builder().driver(drivers.clone()), boot)
            .map_err(|error| error.to_string())?;
    }
    let mut schedule = sim.rng(u64::from(CLUSTER) + 1);
    let pick = |schedule: &mut SimRng| 1 + schedule.below(u64::from(CLUSTER)) as u16;
    for step in 0..16 {
        sim.run_for(Duration::from_millis(50 + schedule.below(350)));
        check_consecutive(&log.lock().unwrap()).map_err(|e| format!("step {step}: {e}"))?;
        let (a, b) = (pick(&mut schedule), pick(&mut schedule));
        match schedule.below(7) {
            0 => network.partition(ip(a), ip(b)),
            1 => network.partition_both(ip(a), ip(b)),
            2 => network.heal_all(),
            3 => drop(sim.crash(usize::from(a) - 1)),
            4 => drop(sim.restart(usize::from(a) - 1).map_err(|e| e.to_string())?),
            5 | 6 => {
                let node = nodes[usize::from(a)].lock().unwrap();
                if let Some(transport) = &node.transport {
                    match a != b && schedule.chance(0.5) {
                        true => drop(
                            transport.faults().add(
                                FaultRule::new(Fault::Drop(0.1))
                                    .from(NodeId(b))
                                    .channel(ChannelId::CONTROL),
                            ),
                        ),
                        false => transport.faults().clear(),
                    }
                }
            }
            _ => unreachable!("below(7)"),
        }
    }
    // Heal: every node up, no cut, no rule; then the senders stop.
    network.heal_all();
    for n in 1..=CLUSTER {
        sim.restart(usize::from(n) - 1)
            .map_err(|error| error.to_string())?;
        if let Some(transport) = &nodes[usize::from(n)].lock().unwrap().transport {
            transport.faults().clear();
        }
    }
    sim.run_for(Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sim.run_for(Duration::from_secs(10));
    let log = log.lock().unwrap();
    check_consecutive(&log).map_err(|e| format!("after healing: {e}"))?;
    for to in 1..=CLUSTER {
        let boot = nodes[usize::from(to)].lock().unwrap().boots;
        for from in (1..=CLUSTER).filter(|&from| from != to) {
            let sender = u32::from(from) * 1000 + nodes[usize::from(from)].lock().unwrap().boots;
            let Some(&last) = log.sent.get(&(sender, to)).and_then(|sent| sent.last()) else {
                continue;
            };
            let got = log.received[usize::from(to)]
                .iter()
                .filter(|(b, seen)| *b == boot && seen.sender == sender)
                .map(|(_, seen)| seen.seq)
                .next_back();
            if got != Some(last) {
                return Err(format!(
                    "after healing: node {to} (boot {boot}) got up to {got:?} from sender {sender}, which sent up to {last}"
                ));
            }
        }
    }
    let lanes = lanes();
    let expected = u64::from(CLUSTER) * u64::from(CLUSTER - 1) * lanes;
    let open = network.open_connections() as u64;
    if open != expected {
        return Err(format!(
            "after healing: {open} connections open, {expected} lanes"
        ));
    }
    Ok(())
}

/// Boots node `n` of a chaos run: its transport, its peers, its receiver
/// and one sender per other node.
fn chaos_boot(
    handle: &Handle,
    seed: u64,
    n: u16,
    nodes: &Arc<Vec<Mutex<ChaosNode>>>,
    log: &Arc<Mutex<ChaosLog>>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) {
    let mut config = TransportConfig::new(format!("node-{n}"), Cookie::new("sim"));
    config.listen = addr(n);
    config.seed = Some(seed ^ u64::from(n));
    let transport = Transport::start_simulated(handle, config).expect("the transport starts");
    for peer in (1..=CLUSTER).filter(|&peer| peer != n) {
        transport
            .add_peer(NodeId(peer), addr(peer))
            .expect("a new peer");
    }
    let boot = {
        let mut node = nodes[usize::from(n)].lock().unwrap();
        node.boots += 1;
        node.transport = Some(transport.clone());
        node.boots
    };
    let receiving = log.clone();
    let receiver: Addr<Remote<Numbered>> = handle
        .spawn(move |cx: Context<Remote<Numbered>>| async move {
            while let Envelope::Msg(message) = cx.recv().await {
                receiving.lock().unwrap().received[usize::from(n)].push((boot, Seen::of(&message)));
            }
        })
        .expect("spawn the receiver");
    transport.register(&receiver);
    nodes[usize::from(n)].lock().unwrap().receiver = Some(receiver.pid());
    let sender = u32::from(n) * 1000 + boot;
    for to in (1..=CLUSTER).filter(|&to| to != n) {
        let mut rng = SimRng::new(seed, u64::from(sender) << 8 | u64::from(to));
        let (nodes, log, stop, transport) =
            (nodes.clone(), log.clone(), stop.clone(), transport.clone());
        handle
            .spawn(move |cx: Context<()>| async move {
                for seq in 0.. {
                    cx.sleep(Duration::from_millis(20 + rng.below(30))).await;
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let Some(receiver) = nodes[usize::from(to)].lock().unwrap().receiver else {
                        continue;
                    };
                    let message = Numbered::new(sender, seq, 16);
                    log.lock()
                        .unwrap()
                        .sent
                        .entry((sender, to))
                        .or_default()
                        .push(seq);
                    if transport
                        .send(cx.pid(), receiver, ChannelId::CONTROL, &message)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
            .expect("spawn a sender");
    }
}

/// Each boot of each receiver saw each sender's messages once and
/// consecutively, intact.
fn check_consecutive(log: &ChaosLog) -> Result<(), String> {
    for (node, received) in log.received.iter().enumerate() {
        let mut last: std::collections::BTreeMap<(u32, u32), u64> = Default::default();
        for (boot, seen) in received {
            if !seen.intact {
                return Err(format!("node {node} got a damaged message {seen:?}"));
            }
            if let Some(previous) = last.insert((*boot, seen.sender), seen.seq) {
                if seen.seq != previous + 1 {
                    return Err(format!(
                        "node {node} (boot {boot}) got {} after {previous} from sender {}",
                        seen.seq, seen.sender
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn sim_network_cluster_chaos_keeps_acknowledged_delivery_exact() {
    every_seed(
        DEFAULT_SEEDS,
        "sim_network",
        "sim_network_cluster_chaos",
        cluster_chaos,
    );
}
