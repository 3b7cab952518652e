//! The randomized scenario runner: per seed, a simulated cluster whose
//! nodes each run a supervision tree under generated chaos — workers
//! killed at random moments, processes monitored at random, short-lived
//! processes coming and going, nodes crashing and restarting — with the
//! invariants checked as it runs and again after healing:
//!
//! - every monitor gets exactly one `Down`, for the process it watched;
//! - a supervisor restores its children once the chaos stops;
//! - no process outlives the scenario (none leaks), and every arena chunk
//!   and large allocation is back in its shard's pool (no memory leaks).
//!
//! `cargo test -p foundation-tests sim_` runs [`DEFAULT_SEEDS`] seeds;
//! `FOUNDATION_SIM_SEEDS=N` runs N, and `FOUNDATION_SIM_SEED=S` exactly
//! seed S. A failure names its seed and the command that replays it.
//!
//! These nodes do not talk to each other; `sim_network` runs clusters that
//! do, over the simulated network. Membership joins the invariants with
//! the distribution issue.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::sim::{crashing_workers, every_seed};
use foundation::sim::{Bug, SimRng, Simulation};
use foundation::{Context, Envelope, ExitReason, MonitorRef, Pid, Runtime};

/// Seeds a run tries unless `FOUNDATION_SIM_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 16;
/// Nodes per simulation.
const NODES: usize = 4;
/// Workers under each node's supervisor.
const WORKERS: usize = 4;
/// Virtual time the chaos lasts.
const CHAOS: Duration = Duration::from_secs(5);
/// Virtual time allowed for healing, and for the end to settle.
const SETTLE: Duration = Duration::from_secs(1);

#[test]
fn sim_invariants_hold_under_random_chaos() {
    every_seed(
        DEFAULT_SEEDS,
        "sim_invariants",
        "sim_invariants_hold",
        |seed| run_scenario(seed, None),
    );
}

/// The runner can fail: with one `Down` lost on purpose, some seed among
/// the default ones shows it.
#[test]
fn sim_invariants_find_a_lost_down() {
    let found = (0..DEFAULT_SEEDS)
        .find_map(|seed| run_scenario(seed, Some(Bug::LoseDown { nth: 3 + seed % 7 })).err());
    let failure = found.expect("a lost Down goes unnoticed by every seed");
    assert!(failure.contains("got 0 Down(s)"), "{failure}");
}

/// What one node's harness saw.
#[derive(Debug, Default)]
struct Log {
    /// Every monitor taken: the pid it watches, and the `Down`s it got.
    monitors: BTreeMap<MonitorRef, (Pid, Vec<Pid>)>,
    /// Violations noticed while running.
    violations: Vec<String>,
    /// Children killed by the chaos.
    kills: usize,
    /// Running children after healing.
    restored: Option<usize>,
    /// The harness reached its end.
    done: bool,
}

/// Runs seed `seed` (with `bug` planted) and checks every invariant;
/// `Err` says what broke.
fn run_scenario(seed: u64, bug: Option<Bug>) -> Result<(), String> {
    let mut sim = Simulation::new(seed);
    if let Some(bug) = bug {
        sim.plant(bug);
    }
    // Every node keeps the log of each of its boots; a boot draws from a
    // random stream of its own.
    let mut logs = Vec::new();
    for index in 0..NODES {
        let boots: Arc<Mutex<Vec<Arc<Mutex<Log>>>>> = Arc::default();
        let node_boots = boots.clone();
        sim.add_restartable_node(Runtime::builder, move |node| {
            let mut boots = node_boots.lock().unwrap();
            let stream = (index * 1000 + boots.len()) as u64;
            let rng = SimRng::new(seed, stream);
            let log = Arc::new(Mutex::new(Log::default()));
            boots.push(log.clone());
            node.spawn(move |cx: Context<()>| harness(cx, rng, log))
                .expect("spawn the harness");
        })
        .map_err(|e| e.to_string())?;
        logs.push(boots);
    }
    // The crash schedule: about half the nodes crash once early on and
    // restart a little later, in time for their new boot to finish.
    let mut schedule = sim.rng(u64::MAX);
    let crashes: Vec<Option<(u64, u64)>> = (0..NODES)
        .map(|_| {
            let crash = 5 + schedule.below(16);
            let restart = crash + 1 + schedule.below(5);
            schedule.chance(0.5).then_some((crash, restart))
        })
        .collect();
    // Check as it runs: what the harnesses noticed, step by step.
    let steps = (CHAOS + SETTLE * 3).as_millis() as u64 / 100 + 30;
    for step in 0..steps {
        for (node, crash) in crashes.iter().enumerate() {
            match *crash {
                Some((at, _)) if at == step => {
                    sim.crash(node);
                }
                Some((_, at)) if at == step => {
                    sim.restart(node).map_err(|e| e.to_string())?;
                }
                _ => {}
            }
        }
        sim.run_for(Duration::from_millis(100));
        for (node, boots) in logs.iter().enumerate() {
            for log in boots.lock().unwrap().iter() {
                if let Some(violation) = log.lock().unwrap().violations.first() {
                    return Err(format!(
                        "seed {seed}, node {node}, step {step}: {violation}"
                    ));
                }
            }
        }
    }
    for (node, boots) in logs.iter().enumerate() {
        let at = |what: String| format!("seed {seed}, node {node}, after healing: {what}");
        let boots = boots.lock().unwrap();
        let expected = if crashes[node].is_some() { 2 } else { 1 };
        if boots.len() != expected {
            return Err(at(format!("{} boots, {expected} expected", boots.len())));
        }
        // Only the last boot lived to the end; a crash cut the others.
        let log = boots.last().expect("booted").lock().unwrap();
        if !log.done {
            return Err(at("the harness did not finish".into()));
        }
        // The chaos happened (a scenario that did nothing proves nothing).
        if log.kills < 10 || log.monitors.len() < 20 {
            return Err(at(format!(
                "only {} kills and {} monitors",
                log.kills,
                log.monitors.len()
            )));
        }
        if log.restored != Some(WORKERS) {
            return Err(at(format!(
                "{:?} of {WORKERS} children running after the chaos",
                log.restored
            )));
        }
        for (monitor, (watched, downs)) in &log.monitors {
            if downs.len() != 1 || downs[0] != *watched {
                return Err(at(format!(
                    "monitor {monitor:?} of {watched:?} got {} Down(s): {downs:?}",
                    downs.len()
                )));
            }
        }
        let stats = sim.node(node).enter(|node| node.shard_stats()[0]);
        if stats.processes != 0 {
            return Err(at(format!("{} processes left behind", stats.processes)));
        }
        let pool = stats.pool;
        if pool.chunks_free != pool.chunks_total || pool.large_allocs_live != 0 {
            return Err(at(format!("arena memory left behind: {pool:?}")));
        }
    }
    Ok(())
}

/// One node's scenario: a supervisor of crashing workers, chaos for
/// [`CHAOS`], healing, then an orderly end in which every process stops.
async fn harness(cx: Context<()>, mut rng: SimRng, log: Arc<Mutex<Log>>) {
    cx.trap_exit(true);
    // Each worker lives a while, then crashes on its own (unless killed
    // first).
    let spec = crashing_workers(
        &mut rng,
        WORKERS,
        Duration::from_millis(50),
        Duration::from_secs(2),
        10_000,
    );
    let supervisor = spec.start_link(&cx);
    let end = cx.now() + CHAOS;
    while cx.now() < end {
        match rng.below(3) {
            0 => {
                // Watch a random child.
                if let Some(pid) = random_child(&cx, &supervisor, &mut rng).await {
                    let monitor = cx.monitor(pid);
                    log.lock()
                        .unwrap()
                        .monitors
                        .insert(monitor, (pid, Vec::new()));
                }
            }
            1 => {
                // Kill a random child.
                if let Some(pid) = random_child(&cx, &supervisor, &mut rng).await {
                    cx.exit(pid, ExitReason::error("chaos"));
                    log.lock().unwrap().kills += 1;
                }
            }
            _ => {
                // A short-lived process of our own, watched.
                let nap = Duration::from_millis(rng.below(30));
                let child = cx.spawn(move |cx: Context<()>| async move { cx.sleep(nap).await });
                let monitor = cx.monitor(child.pid());
                log.lock()
                    .unwrap()
                    .monitors
                    .insert(monitor, (child.pid(), Vec::new()));
            }
        }
        let pause = Duration::from_millis(1 + rng.below(40));
        drain_downs(&cx, pause, &log).await;
    }
    // Heal: no more chaos; the supervisor brings every child back. (The
    // workers still crash on their own, so count the running ones.)
    drain_downs(&cx, SETTLE, &log).await;
    let children = supervisor.which_children(&cx).await.unwrap_or_default();
    log.lock().unwrap().restored = Some(children.iter().filter(|c| c.pid.is_some()).count());
    // End: stop the tree; every watched process is then gone, so every
    // monitor must have had its `Down`.
    let _ = supervisor.stop(&cx).await;
    drain_downs(&cx, SETTLE, &log).await;
    log.lock().unwrap().done = true;
}

/// A random running child of `supervisor`, if any.
async fn random_child(
    cx: &Context<()>,
    supervisor: &foundation::supervision::SupervisorRef,
    rng: &mut SimRng,
) -> Option<Pid> {
    let running: Vec<Pid> = supervisor
        .which_children(cx)
        .await
        .ok()?
        .into_iter()
        .filter_map(|child| child.pid)
        .collect();
    (!running.is_empty()).then(|| running[rng.below(running.len() as u64) as usize])
}

/// Receives for `pause`, logging every `Down`; a second `Down` for one
/// monitor, or one for a monitor never taken, is a violation at once.
async fn drain_downs(cx: &Context<()>, pause: Duration, log: &Mutex<Log>) {
    let until = cx.now() + pause;
    while cx.now() < until {
        let left = until - cx.now();
        let Some(envelope) = cx.recv_timeout(left).await else {
            return;
        };
        if let Envelope::Down(down) = envelope {
            let mut log = log.lock().unwrap();
            let violation = match log.monitors.get_mut(&down.monitor) {
                Some((_, downs)) if !downs.is_empty() => {
                    Some(format!("a second Down for {:?}", down.monitor))
                }
                Some((_, downs)) => {
                    downs.push(down.pid);
                    None
                }
                None => Some(format!("a Down for unknown monitor {:?}", down.monitor)),
            };
            log.violations.extend(violation);
        }
    }
}
