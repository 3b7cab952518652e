//! Membership and distribution under the simulator: whole nodes — the
//! real transport over the simulated network, the full-mesh peer service
//! with SWIM, the distribution service — partitioned, crashed and
//! restarted on a schedule drawn from a seed. Checked after every step:
//! no monitor gets a second `Down`. Checked after healing: membership
//! converges (every node sees every other, at its current address), and
//! every monitor of a process that ended got exactly one `Down`.
//!
//! `cargo test -p foundation-tests sim_` runs this with the other
//! simulation suites; `FOUNDATION_SIM_SEEDS` raises the number of seeds
//! (default 4), `FOUNDATION_SIM_SEED` replays one.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sim::{every_seed, seeds};
use foundation::membership::{FailureDetector, FullMesh, PeerService};
use foundation::node::{NodeConfig, Services};
use foundation::sim::{SimRng, Simulation};
use foundation::transport::sim::{Link, Network};
use foundation::{Context, Envelope, ExitReason, Handle, MonitorRef, NodeId, Pid, Runtime};

/// Seeds tried unless `FOUNDATION_SIM_SEEDS` says more.
const DEFAULT_SEEDS: u64 = 4;

/// Nodes of a run.
const CLUSTER: u16 = 5;

const PORT: u16 = 7000;

fn ip(n: u16) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, n as u8))
}

fn addr(n: u16) -> SocketAddr {
    SocketAddr::new(ip(n), PORT)
}

/// What one node shares with the test: its boots so far, its peer service
/// and its current worker (the process the others monitor).
#[derive(Default)]
struct Shared {
    boots: u32,
    mesh: Option<FullMesh>,
    transport: Option<foundation::transport::Transport>,
    worker: Option<Pid>,
}

/// A monitor one boot of a node took out, and the `Down`s it got.
#[derive(Debug)]
struct Watch {
    target: Pid,
    downs: Vec<ExitReason>,
}

/// Every monitor of a run, by (watching node, its boot, the monitor).
type Watches = Arc<Mutex<BTreeMap<(u16, u32, MonitorRef), Watch>>>;

fn run(seed: u64) -> Result<u64, String> {
    let mut sim = Simulation::new(seed);
    let network = Network::new(&sim);
    network.set_default_link(Link {
        latency: Duration::from_micros(200),
        jitter: Duration::from_millis(1),
        loss: 0.01,
        retransmit: Duration::from_millis(200),
    });
    let nodes: Arc<Vec<Mutex<Shared>>> =
        Arc::new((0..=CLUSTER).map(|_| Mutex::default()).collect());
    let watches: Watches = Arc::default();
    for n in 1..=CLUSTER {
        let drivers = network.driver(ip(n));
        let (nodes, watches) = (nodes.clone(), watches.clone());
        let timings = FailureDetector::default();
        let boot = move |handle: &Handle| boot(handle, seed, n, &timings, &nodes, &watches);
        sim.add_restartable_node(move || Runtime::builder().driver(drivers.clone()), boot)
            .map_err(|error| error.to_string())?;
    }
    sim.run_for(Duration::from_secs(3));
    converged(&nodes).map_err(|e| format!("at start: {e}"))?;

    let mut schedule: SimRng = sim.rng(u64::from(CLUSTER) + 1);
    let pick = |schedule: &mut SimRng| 1 + schedule.below(u64::from(CLUSTER)) as u16;
    for step in 0..12 {
        sim.run_for(Duration::from_millis(200 + schedule.below(1800)));
        at_most_one_down(&watches).map_err(|e| format!("step {step}: {e}"))?;
        let (a, b) = (pick(&mut schedule), pick(&mut schedule));
        match schedule.below(5) {
            0 => network.partition_both(ip(a), ip(b)),
            1 => network.heal_all(),
            2 => drop(sim.crash(usize::from(a) - 1)),
            3 | 4 => drop(sim.restart(usize::from(a) - 1).map_err(|e| e.to_string())?),
            _ => unreachable!("below(5)"),
        }
    }
    // Heal: no cut, every node up, time to settle.
    network.heal_all();
    for n in 1..=CLUSTER {
        if !sim.is_up(usize::from(n) - 1) {
            sim.restart(usize::from(n) - 1).map_err(|e| e.to_string())?;
        }
    }
    sim.run_for(Duration::from_secs(15));
    at_most_one_down(&watches).map_err(|e| format!("after healing: {e}"))?;
    converged(&nodes).map_err(|e| format!("after healing: {e}"))?;
    ended_targets_were_reported(&nodes, &watches).map_err(|e| format!("after healing: {e}"))?;
    Ok(sim.trace())
}

/// Boots node `n`: its services (transport, peer service and distribution
/// under a supervisor), a worker for the others to watch, and a watcher that
/// monitors the workers of the nodes it sees up, as they appear.
fn boot(
    handle: &Handle,
    seed: u64,
    n: u16,
    timings: &FailureDetector,
    nodes: &Arc<Vec<Mutex<Shared>>>,
    watches: &Watches,
) {
    // Join through node 1, or node 2 when this is node 1: the node's own
    // start-up path, as `Node::start` runs it.
    let config = NodeConfig::new(format!("node-{n}"), "sim")
        .listen(addr(n))
        .seed(addr(if n == 1 { 2 } else { 1 }))
        .failure_detector(timings.clone());
    let services = Services::start_simulated(handle, &config, None, seed ^ u64::from(n))
        .expect("the node's services start");
    let mesh = services.membership().clone();
    let worker = handle
        .spawn(|cx: Context<()>| async move { while let Envelope::Msg(()) = cx.recv().await {} })
        .expect("spawn the worker");
    let boot = {
        let mut node = nodes[usize::from(n)].lock().unwrap();
        node.boots += 1;
        node.mesh = Some(mesh);
        node.transport = Some(services.transport().clone());
        node.worker = Some(worker.pid());
        node.boots
    };
    let (nodes, watches) = (nodes.clone(), watches.clone());
    handle
        .spawn(move |cx: Context<()>| async move {
            let mut watched = std::collections::BTreeSet::new();
            loop {
                // Only nodes this one sees up: a monitor of a process on
                // a node it has not met is answered `noconnection` at once.
                let mesh = nodes[usize::from(n)].lock().unwrap().mesh.clone();
                let up = mesh.map(|mesh| mesh.members()).unwrap_or_default();
                for other in up.iter().map(|member| member.node.0) {
                    let target = nodes[usize::from(other)].lock().unwrap().worker;
                    if let Some(target) = target.filter(|target| watched.insert(*target)) {
                        let monitor = cx.monitor(target);
                        let watch = Watch {
                            target,
                            downs: Vec::new(),
                        };
                        watches.lock().unwrap().insert((n, boot, monitor), watch);
                    }
                }
                match cx.recv_timeout(Duration::from_millis(100)).await {
                    Some(Envelope::Down(down)) => {
                        let mut watches = watches.lock().unwrap();
                        if let Some(watch) = watches.get_mut(&(n, boot, down.monitor)) {
                            watch.downs.push(down.reason);
                        }
                    }
                    // Nobody sends it anything: a message means stop.
                    Some(Envelope::Msg(())) => return,
                    _ => {}
                }
            }
        })
        .expect("spawn the watcher");
}

/// No monitor got two `Down`s.
fn at_most_one_down(watches: &Watches) -> Result<(), String> {
    for ((node, boot, monitor), watch) in watches.lock().unwrap().iter() {
        if watch.downs.len() > 1 {
            return Err(format!(
                "node {node} (boot {boot}) got {:?} for {monitor:?} on {}",
                watch.downs, watch.target
            ));
        }
    }
    Ok(())
}

/// Every node sees every other up, at its address.
fn converged(nodes: &[Mutex<Shared>]) -> Result<(), String> {
    for n in 1..=CLUSTER {
        let mesh = nodes[usize::from(n)].lock().unwrap().mesh.clone();
        let members: Vec<_> = mesh
            .map(|mesh| mesh.members())
            .unwrap_or_default()
            .iter()
            .map(|member| (member.node, member.addr))
            .collect();
        let expected: Vec<_> = (1..=CLUSTER)
            .filter(|&other| other != n)
            .map(|other| (NodeId(other), addr(other)))
            .collect();
        if members != expected {
            return Err(format!("node {n} sees {members:?}"));
        }
    }
    Ok(())
}

/// Every monitor held by a boot that still runs, on a worker that ended
/// (its node crashed or restarted since), got its one `Down`.
fn ended_targets_were_reported(nodes: &[Mutex<Shared>], watches: &Watches) -> Result<(), String> {
    let current: BTreeMap<u16, (u32, Option<Pid>)> = (1..=CLUSTER)
        .map(|n| {
            let node = nodes[usize::from(n)].lock().unwrap();
            (n, (node.boots, node.worker))
        })
        .collect();
    for ((node, boot, monitor), watch) in watches.lock().unwrap().iter() {
        let watcher_lives = current[node].0 == *boot;
        let target_node = watch.target.node().0;
        let target_ended = current[&target_node].1 != Some(watch.target);
        if watcher_lives && target_ended && watch.downs.len() != 1 {
            return Err(format!(
                "node {node} (boot {boot}) got {:?} for {monitor:?} on {}, which ended",
                watch.downs, watch.target
            ));
        }
    }
    Ok(())
}

#[test]
fn sim_membership_converges_and_monitors_fire_once_through_crashes_and_partitions() {
    every_seed(DEFAULT_SEEDS, "sim_membership", "converges", |seed| {
        run(seed).map(drop)
    });
}

#[test]
fn sim_membership_the_same_seed_replays_the_same_trace() {
    let seed = seeds(1)[0];
    let first = run(seed).expect("the run passes");
    let second = run(seed).expect("the run passes");
    assert_eq!(first, second, "seed {seed}");
}

/// A node that crashed for good is forgotten: once SWIM no longer
/// remembers it, no node keeps dialling it.
#[test]
fn sim_membership_a_node_gone_for_good_is_no_longer_dialled() {
    let seed = seeds(1)[0];
    let mut sim = Simulation::new(seed);
    let network = Network::new(&sim);
    let nodes: Arc<Vec<Mutex<Shared>>> =
        Arc::new((0..=CLUSTER).map(|_| Mutex::default()).collect());
    let watches: Watches = Arc::default();
    let timings = FailureDetector {
        forget_after: Duration::from_secs(20),
        ..FailureDetector::default()
    };
    for n in 1..=CLUSTER {
        let drivers = network.driver(ip(n));
        let (nodes, watches, timings) = (nodes.clone(), watches.clone(), timings.clone());
        let boot = move |handle: &Handle| boot(handle, seed, n, &timings, &nodes, &watches);
        sim.add_restartable_node(move || Runtime::builder().driver(drivers.clone()), boot)
            .unwrap();
    }
    sim.run_for(Duration::from_secs(3));
    converged(&nodes).unwrap();
    let dialled = |n: u16| {
        let transport = nodes[usize::from(n)].lock().unwrap().transport.clone();
        transport.expect("booted").peers()
    };
    assert!(dialled(1).contains(&NodeId(CLUSTER)));
    sim.crash(usize::from(CLUSTER) - 1);
    sim.run_for(Duration::from_secs(60));
    for n in 1..CLUSTER {
        let peers = dialled(n);
        assert!(
            !peers.contains(&NodeId(CLUSTER)),
            "node {n} still dials node {CLUSTER}: {peers:?}"
        );
        assert_eq!(peers.len(), usize::from(CLUSTER) - 2, "node {n}: {peers:?}");
    }
}
