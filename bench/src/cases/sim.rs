//! `sim`: how fast the simulator runs a cluster on virtual time.
//!
//! A [`Simulation`] of `sim_nodes` nodes (1,000; 100 under `quick`) runs
//! for `sim_seconds` of virtual time (60; 10 under `quick`) on this one
//! thread. Every node runs the real runtime and supervision code:
//!
//! - a `one_for_one` supervisor of four workers, each of which crashes
//!   after a random 0.1–2 s and is restarted;
//! - two processes that play ping-pong on a timer, one ball every 10–100 ms.
//!
//! Figures: the wall time of the run (target: under 60 s for 1,000 nodes
//! and 60 virtual seconds) and the events (process polls) per wall second.
//! No peer runs the same: this is the simulator's own speed, for the
//! randomized runs of `cargo test -p foundation-tests sim_` to plan with.

use std::time::Duration;

use foundation::sim::{SimRng, Simulation};
use foundation::supervision::{ChildSpec, Strategy, SupervisorSpec};
use foundation::{Addr, Context, Envelope, ExitReason, Runtime};

use super::{Context as CaseContext, Trial};
use crate::report::{Better, Measurement, FOUNDATION};
use crate::stats::Stopwatch;

/// Name of the case.
pub(crate) const CASE: &str = "sim";

/// Workers per node's supervisor.
const WORKERS: u64 = 4;

/// One run: wall seconds and events.
#[derive(Clone, Copy, Debug)]
struct Run {
    wall_s: f64,
    events: u64,
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
        "{nodes} nodes (a supervisor of {WORKERS} crashing workers and a timed ping-pong each) for {seconds} virtual seconds on one thread; target: 1,000 nodes x 60 s in < 60 s."
    ));
    let mut rate = Measurement::new(CASE, "sim_events_per_s", "events/s", Better::Higher);
    samples.fill(&mut rate, |run| run.events as f64 / run.wall_s);
    if let Some(events) = samples.median(FOUNDATION, |run| run.events as f64) {
        rate.note(&format!("events are process polls: {events:.0} per run."));
    }
    vec![wall, rate]
}

/// Runs `nodes` nodes for `seconds` virtual seconds from `seed`.
fn simulate(seed: u64, nodes: usize, seconds: u64) -> Result<Run, String> {
    let mut sim = Simulation::new(seed);
    for index in 0..nodes {
        let node = sim
            .add_node(Runtime::builder())
            .map_err(|error| error.to_string())?;
        let rng = sim.rng(index as u64);
        sim.node(node)
            .enter(|node| node.spawn(move |cx: Context<()>| node_workload(cx, rng)))
            .map_err(|error| error.to_string())?;
    }
    let clock = Stopwatch::start();
    sim.run_for(Duration::from_secs(seconds));
    let wall_s = clock.elapsed().as_secs_f64();
    Ok(Run {
        wall_s,
        events: sim.events(),
    })
}

/// One node's processes: the supervised crashing workers and the timed
/// ping-pong, started from this process, which then waits.
async fn node_workload(cx: Context<()>, mut rng: SimRng) {
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
    let me = cx.addr();
    loop {
        cx.sleep(Duration::from_millis(10 + rng.below(90))).await;
        cx.send(&ponger, me);
        cx.recv().await;
    }
}
