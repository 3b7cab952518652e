//! What the `sim_*` suites share.

use std::time::Duration;

use foundation::sim::SimRng;
use foundation::supervision::{ChildSpec, Strategy, SupervisorSpec};
use foundation::{Context, ExitReason};

/// A `one_for_one` supervisor (intensity `max_restarts` a second) of
/// `workers` workers, each of which crashes after a life drawn from `rng`
/// between `shortest` and `shortest + spread`, every time it is started.
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
                cx.sleep(life).await;
                ExitReason::error("worn out")
            },
        ));
    }
    spec
}
