//! What the `sim_*` suites share.

use std::time::Duration;

use foundation::sim::SimRng;
use foundation::supervision::{ChildSpec, Strategy, SupervisorSpec};
use foundation::{Context, ExitReason};

/// A `one_for_one` supervisor (intensity `max_restarts` a second) of
/// `workers` workers, each of which keeps some state in its arena (so that
/// leak checks have memory to find) and crashes after a life drawn from
/// `rng` between `shortest` and `shortest + spread`, every time it is
/// started.
pub(crate) fn crashing_workers(
    rng: &mut SimRng,
    workers: usize,
    shortest: Duration,
    spread: Duration,
    max_restarts: u32,
) -> SupervisorSpec {
    let mut spec =
        SupervisorSpec::new(Strategy::OneForOne).intensity(max_restarts, Duration::from_secs(1));
    for worker in 0..workers {
        let life = shortest + Duration::from_millis(rng.below(spread.as_millis() as u64));
        spec = spec.child(ChildSpec::worker(
            format!("worker-{worker}"),
            move |cx: Context<()>| async move {
                let state = cx.alloc_slice_copy(&[worker as u8; 512]);
                cx.sleep(life).await;
                ExitReason::error(format!("worn out after {} bytes", state.len()))
            },
        ));
    }
    spec
}

/// The seeds a randomized suite runs: `FOUNDATION_SIM_SEED` alone, or
/// `0..FOUNDATION_SIM_SEEDS` (default `default`).
pub(crate) fn seeds(default: u64) -> Vec<u64> {
    let number = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
    };
    match number("FOUNDATION_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..number("FOUNDATION_SIM_SEEDS").unwrap_or(default)).collect(),
    }
}

/// Runs `scenario` for every seed of [`seeds`]`(default)`; the first that
/// fails panics with its seed, what failed, and the command that replays it
/// alone: `FOUNDATION_SIM_SEED=<seed> cargo test -p foundation-tests
/// --test <suite> <test>`.
pub(crate) fn every_seed(
    default: u64,
    suite: &str,
    test: &str,
    scenario: impl Fn(u64) -> Result<(), String>,
) {
    for seed in seeds(default) {
        if let Err(failure) = scenario(seed) {
            panic!(
                "seed {seed}: {failure}\nreplay: FOUNDATION_SIM_SEED={seed} cargo test \
                 -p foundation-tests --test {suite} {test}"
            );
        }
    }
}
