//! The simulated side of the runtime seam (`foundation::sim`): nodes on one
//! thread and a virtual clock, the real process and supervision code on
//! them, and runs that replay exactly from their seed.
//!
//! `cargo test -p foundation-tests sim_` runs these; `FOUNDATION_SIM_SEEDS`
//! raises the number of seeds the replay check tries (default 8).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use foundation::sim::{SimRng, Simulation};
mod common;

use common::sim::crashing_workers;
use foundation::{Context, Envelope, Runtime};

/// Seeds the replay check tries unless `FOUNDATION_SIM_SEEDS` says more.
const DEFAULT_SEEDS: u64 = 8;

#[test]
fn sim_an_hour_of_sleep_passes_at_once() {
    let mut sim = Simulation::new(1);
    let node = sim.add_node(Runtime::builder()).expect("a node");
    let woke = Arc::new(Mutex::new(None));
    let seen = woke.clone();
    let sleeper = move |cx: Context<()>| async move {
        cx.sleep(Duration::from_secs(3600)).await;
        *seen.lock().unwrap() = Some(cx.now());
    };
    sim.node(node)
        .enter(|node| node.spawn(sleeper))
        .expect("spawn");
    sim.run_for(Duration::from_secs(3599));
    assert_eq!(*woke.lock().unwrap(), None, "not a second early");
    sim.run_for(Duration::from_secs(2));
    let woke = woke
        .lock()
        .unwrap()
        .expect("woke within the hour and a second");
    assert_eq!(woke.as_nanos(), 3600 * 1_000_000_000);
    assert_eq!(sim.now().as_nanos(), 3601 * 1_000_000_000);
}

#[test]
fn sim_timers_on_many_nodes_fire_in_virtual_time_order() {
    const NODES: usize = 20;
    const SLEEPS: u64 = 30;
    let mut sim = Simulation::new(2);
    let wakes = Arc::new(Mutex::new(Vec::new()));
    for index in 0..NODES {
        let node = sim.add_node(Runtime::builder()).expect("a node");
        let mut rng = sim.rng(index as u64);
        let wakes = wakes.clone();
        let sleeper = move |cx: Context<()>| async move {
            for _ in 0..SLEEPS {
                let nap = Duration::from_millis(1 + rng.below(500));
                let due = cx.now() + nap;
                cx.sleep(nap).await;
                wakes.lock().unwrap().push((cx.now(), due, index));
            }
        };
        sim.node(node)
            .enter(|node| node.spawn(sleeper))
            .expect("spawn");
    }
    sim.run_for(Duration::from_secs(60));
    let wakes = wakes.lock().unwrap();
    assert_eq!(wakes.len(), NODES * SLEEPS as usize, "every sleep ended");
    for pair in wakes.windows(2) {
        assert!(pair[0].0 <= pair[1].0, "wakes in time order: {pair:?}");
    }
    for &(woke, due, index) in wakes.iter() {
        assert!(woke >= due, "node {index} woke at {woke:?}, before {due:?}");
        // The wheel's resolution is a millisecond, and virtual time jumps
        // straight to the deadline.
        assert!(
            woke - due < Duration::from_millis(1),
            "node {index} woke late"
        );
    }
}

#[test]
fn sim_the_same_seed_replays_the_same_trace() {
    let seeds = std::env::var("FOUNDATION_SIM_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    let mut traces = Vec::new();
    for seed in 0..seeds {
        let first = crash_storm(seed);
        let again = crash_storm(seed);
        assert_eq!(
            first, again,
            "seed {seed} did not replay; rerun with \
             `cargo test -p foundation-tests sim_the_same_seed` to see it again"
        );
        assert!(
            first.events > 1000,
            "seed {seed}: the scenario ran ({first:?})"
        );
        traces.push(first.trace);
    }
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(
        traces.len() as u64,
        seeds,
        "different seeds run differently"
    );
}

/// What a run of [`crash_storm`] left behind.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    trace: u64,
    events: u64,
    /// Restarts each node's supervisor made, seen through its monitor.
    downs: Vec<u64>,
}

/// Ten nodes, each with a `one_for_one` supervisor of three workers that
/// crash at random moments and a process that monitors them, run for ten
/// virtual seconds.
fn crash_storm(seed: u64) -> Outcome {
    const NODES: usize = 10;
    let mut sim = Simulation::new(seed);
    let downs = Arc::new(Mutex::new(vec![0_u64; NODES]));
    for index in 0..NODES {
        let node = sim.add_node(Runtime::builder()).expect("a node");
        let rng = sim.rng(index as u64);
        let downs = downs.clone();
        sim.node(node)
            .enter(|node| {
                node.spawn(move |cx: Context<()>| watch_crashing_workers(cx, rng, index, downs))
            })
            .expect("spawn");
    }
    sim.run_for(Duration::from_secs(10));
    let downs = downs.lock().unwrap().clone();
    Outcome {
        trace: sim.trace(),
        events: sim.events(),
        downs,
    }
}

/// Starts a supervisor of three crashing workers, monitors each worker it
/// finds, and counts the `Down`s.
async fn watch_crashing_workers(
    cx: Context<()>,
    mut rng: SimRng,
    index: usize,
    downs: Arc<Mutex<Vec<u64>>>,
) {
    let spec = crashing_workers(
        &mut rng,
        3,
        Duration::from_millis(10),
        Duration::from_millis(300),
        1000,
    );
    let supervisor = spec.start_link(&cx);
    let mut watched = Vec::new();
    loop {
        for child in supervisor.which_children(&cx).await.unwrap_or_default() {
            if let Some(pid) = child.pid.filter(|pid| !watched.contains(pid)) {
                cx.monitor(pid);
                watched.push(pid);
            }
        }
        let pause = Duration::from_millis(1 + rng.below(50));
        while let Some(envelope) = cx.recv_timeout(pause).await {
            if let Envelope::Down(_) = envelope {
                downs.lock().unwrap()[index] += 1;
            }
        }
    }
}
