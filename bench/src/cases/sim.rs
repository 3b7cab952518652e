//! `sim`: how fast the simulator runs a cluster on virtual time.
//!
//! A [`Simulation`] of `sim_nodes` nodes (1,000; 100 under `quick`) runs
//! for `sim_seconds` of virtual time (60; 10 under `quick`) on this one
//! thread. Every node runs the real runtime and supervision code:
//!
//! - a `one_for_one` supervisor of four workers, each of which crashes
//!   after a random 0.1–2 s and is restarted;
//! - two processes that play ping-pong on a timer, one ball every 10–100 ms;
//! - a transport on the simulated network (`foundation::transport::sim`),
//!   connected to the next node's (a ring), and a process that sends the
//!   next node a 64-byte message on `data` every 10–100 ms, which a
//!   receiver there counts: handshakes, frames, credit and the network's
//!   latency, all simulated.
//!
//! Figures: the wall time of the run (target: under 60 s for 1,000 nodes
//! and 60 virtual seconds) and the events (process polls) per wall second.
//! No peer runs the same: this is the simulator's own speed, for the
//! randomized runs of `cargo test -p foundation-tests sim_` to plan with.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foundation::sim::{SimRng, Simulation};
use foundation::supervision::{ChildSpec, Strategy, SupervisorSpec};
use foundation::transport::sim::Network;
use foundation::transport::{ChannelId, Cookie, Remote, Transport, TransportConfig};
use foundation::{Addr, Context, Envelope, ExitReason, Handle, NodeId, Pid, Runtime};

use super::{Context as CaseContext, Trial};
use crate::report::{Better, Measurement, FOUNDATION};
use crate::stats::Stopwatch;

/// Name of the case.
pub(crate) const CASE: &str = "sim";

/// Workers per node's supervisor.
const WORKERS: u64 = 4;

/// The port every simulated node's transport listens on.
const PORT: u16 = 7000;

/// One run: wall seconds, events and messages that crossed the network.
#[derive(Clone, Copy, Debug)]
struct Run {
    wall_s: f64,
    events: u64,
    delivered: u64,
}

/// Measures the simulator.
pub(crate) fn run(context: &CaseContext) -> Vec<Measurement> {
    let nodes = context.scale.sim_nodes;
    let seconds = context.scale.sim_seconds;
    let mut seed = 0;
    let samples = context.interleave(
        "sim",
        vec![Trial::fallible(FOUNDATION, move || {
            seed += 1;
            simulate(seed, nodes, seconds)
        })],
    );
    let mut wall = Measurement::new(CASE, "sim_wall", "s", Better::Lower);
    samples.fill(&mut wall, |run| run.wall_s);
    wall.note(&format!(
        "{nodes} nodes (a supervisor of {WORKERS} crashing workers, a timed ping-pong and a transport sending to the next node each) for {seconds} virtual seconds on one thread; target: 1,000 nodes x 60 s in < 60 s."
    ));
    let mut rate = Measurement::new(CASE, "sim_events_per_s", "events/s", Better::Higher);
    samples.fill(&mut rate, |run| run.events as f64 / run.wall_s);
    let events = samples.median(FOUNDATION, |run| run.events as f64);
    let delivered = samples.median(FOUNDATION, |run| run.delivered as f64);
    if let (Some(events), Some(delivered)) = (events, delivered) {
        rate.note(&format!(
            "events are process polls: {events:.0} per run; {delivered:.0} messages crossed the simulated network."
        ));
    }
    vec![wall, rate]
}

/// Runs `nodes` nodes for `seconds` virtual seconds from `seed`.
fn simulate(seed: u64, nodes: usize, seconds: u64) -> Result<Run, String> {
    let mut sim = Simulation::new(seed);
    let network = Network::new(&sim);
    let delivered = Arc::new(AtomicU64::new(0));
    let mut transports = Vec::with_capacity(nodes);
    let mut receivers = Vec::with_capacity(nodes);
    for index in 0..nodes {
        let builder = Runtime::builder().driver(network.driver(host(index)));
        let node = sim.add_node(builder).map_err(|error| error.to_string())?;
        let next = (index + 1) % nodes;
        let counted = delivered.clone();
        let (transport, receiver) = sim
            .node(node)
            .enter(|handle| start_transport(handle, seed, index, next, counted))?;
        transports.push(transport);
        receivers.push(receiver);
    }
    for index in 0..nodes {
        let rngs = [sim.rng(index as u64), sim.rng((nodes + index) as u64)];
        let transport = transports[index].clone();
        let next = receivers[(index + 1) % nodes];
        sim.node(index)
            .enter(|node| {
                node.spawn(move |cx: Context<()>| node_workload(cx, rngs, transport, next))
            })
            .map_err(|error| error.to_string())?;
    }
    let clock = Stopwatch::start();
    sim.run_for(Duration::from_secs(seconds));
    let wall_s = clock.elapsed().as_secs_f64();
    Ok(Run {
        wall_s,
        events: sim.events(),
        delivered: delivered.load(Ordering::Relaxed),
    })
}

/// Node `index`'s host on the simulated network.
fn host(index: usize) -> IpAddr {
    let [.., high, low] = (index as u32 + 1).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, 0, high, low))
}

/// Starts node `index`'s transport (inside the node), with node `next` as
/// its peer, and a receiver that counts into `delivered`.
fn start_transport(
    handle: &Handle,
    seed: u64,
    index: usize,
    next: usize,
    delivered: Arc<AtomicU64>,
) -> Result<(Transport, Pid), String> {
    let mut config = TransportConfig::new(format!("node-{index}"), Cookie::new("sim"));
    config.listen = SocketAddr::new(host(index), PORT);
    config.seed = Some(seed ^ index as u64);
    let transport = Transport::start_simulated(handle, config).map_err(|e| e.to_string())?;
    // Simulated node `n` (from 0) has node id `n + 1`.
    let peer = NodeId(next as u16 + 1);
    transport
        .add_peer(peer, SocketAddr::new(host(next), PORT))
        .map_err(|error| error.to_string())?;
    let receiver = handle
        .spawn(move |cx: Context<Remote<[u8; 64]>>| async move {
            while let Envelope::Msg(_) = cx.recv().await {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        })
        .map_err(|error| error.to_string())?;
    transport.register(&receiver);
    Ok((transport, receiver.pid()))
}

/// One node's processes: the supervised crashing workers, the timed
/// ping-pong and the sender to the next node, started from this process,
/// which then plays the ping-pong.
///
/// `rngs`: the workload's random stream, and the sender's.
async fn node_workload(cx: Context<()>, rngs: [SimRng; 2], transport: Transport, next: Pid) {
    let [mut rng, mut sends] = rngs;
    let mut supervisor =
        SupervisorSpec::new(Strategy::OneForOne).intensity(u32::MAX, Duration::from_secs(1));
    for worker in 0..WORKERS {
        let life = Duration::from_millis(100 + rng.below(1900));
        supervisor = supervisor.child(ChildSpec::worker(
            format!("worker-{worker}"),
            move |cx: Context<()>| async move {
                cx.sleep(life).await;
                ExitReason::error("crash")
            },
        ));
    }
    let _supervisor = supervisor.start_link(&cx);
    let ponger = cx.spawn(|cx: Context<Addr<()>>| async move {
        while let Envelope::Msg(from) = cx.recv().await {
            cx.send(&from, ());
        }
    });
    cx.spawn(move |cx: Context<()>| async move {
        let message = [7_u8; 64];
        loop {
            cx.sleep(Duration::from_millis(10 + sends.below(90))).await;
            if transport
                .send(cx.pid(), next, ChannelId::DATA, &message)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let me = cx.addr();
    loop {
        cx.sleep(Duration::from_millis(10 + rng.below(90))).await;
        cx.send(&ponger, me);
        cx.recv().await;
    }
}
