//! The simulated side of the runtime seam (`foundation::sim`): nodes on one
//! thread and a virtual clock, the real process and supervision code on
//! them, and runs that replay exactly from their seed.
//!
//! `cargo test -p foundation-tests sim_` runs these; `FOUNDATION_SIM_SEEDS`
//! raises the number of seeds the replay check tries (default 8).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foundation::sim::{SimRng, Simulation};
mod common;

use common::sim::{crashing_workers, seeds};
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
    let seeds = seeds(DEFAULT_SEEDS);
    let mut traces = Vec::new();
    for &seed in &seeds {
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
    assert_eq!(traces.len(), seeds.len(), "different seeds run differently");
}

#[test]
fn sim_a_crashed_node_restarts_through_its_start_up() {
    let run = || {
        let mut sim = Simulation::new(3);
        let boots = Arc::new(AtomicU64::new(0));
        let ticks = Arc::new(Mutex::new([0_u64; 2]));
        // Node 0 restarts; node 1 is a bystander. Each ticks every 10 ms.
        let (node_boots, node_ticks) = (boots.clone(), ticks.clone());
        let restartable = sim
            .add_restartable_node(Runtime::builder, move |node| {
                node_boots.fetch_add(1, Ordering::Relaxed);
                let ticks = node_ticks.clone();
                node.spawn(move |cx: Context<()>| tick(cx, 0, ticks))
                    .expect("spawn");
            })
            .expect("a node");
        let bystander = sim.add_node(Runtime::builder()).expect("a node");
        let bystander_ticks = ticks.clone();
        sim.node(bystander)
            .enter(|node| node.spawn(move |cx: Context<()>| tick(cx, 1, bystander_ticks)))
            .expect("spawn");
        let second = Duration::from_secs(1);
        sim.run_for(second);
        let before = *ticks.lock().unwrap();
        assert!(sim.crash(restartable), "up until now");
        assert!(!sim.is_up(restartable) && !sim.crash(restartable));
        sim.run_for(second);
        let down = *ticks.lock().unwrap();
        assert_eq!(down[0], before[0], "nothing runs on a crashed node");
        assert!(down[1] > before[1] + 50, "the other node carries on");
        assert!(sim.restart(restartable).expect("it restarts"));
        assert!(!sim.restart(restartable).expect("up already"));
        sim.run_for(second);
        let after = *ticks.lock().unwrap();
        assert!(after[0] > down[0] + 50, "it runs again after the restart");
        assert_eq!(boots.load(Ordering::Relaxed), 2, "booted twice");
        sim.trace()
    };
    assert_eq!(run(), run(), "a run with a crash replays too");

    /// Counts ticks in `ticks[index]`, one every 10 ms.
    async fn tick(cx: Context<()>, index: usize, ticks: Arc<Mutex<[u64; 2]>>) {
        loop {
            cx.sleep(Duration::from_millis(10)).await;
            ticks.lock().unwrap()[index] += 1;
        }
    }
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
