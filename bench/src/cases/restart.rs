//! `restart`: how long a supervised worker is gone after it crashes.
//!
//! `restart_latency_p50`/`_p99` time one restart: from an observer killing
//! the worker (an exit signal with an error reason) until the replacement
//! the supervisor started runs and has told the observer so, i.e. is
//! running and accepting messages. Each repetition times `restarts`
//! restarts (after a tenth as many, at most 1,000, untimed) and reports its
//! p50 and p99; the figure is the median over the repetitions, the means go
//! in the note.
//!
//! - Foundation: a `one_for_one` [`SupervisorSpec`] with one permanent
//!   worker and an intensity that never trips (`u32::MAX` restarts in a
//!   second); the observer, the supervisor and the worker share one shard.
//! - Erlang: the same tree with OTP's `supervisor` (`one_for_one`, one
//!   permanent worker started with `spawn_link`, which sends `{up, self()}`
//!   to the observer) on `+S 1:1`, timed around `exit(Pid, crash)` with
//!   `erlang:monotonic_time(nanosecond)`. Crash logging is off, as
//!   Foundation's supervisor does not log, and a fresh supervisor serves
//!   every [`RESTART_BATCH`] restarts (see there why).
//!
//! There is no tokio or crossbeam peer: neither has supervision.
//!
//! [`SupervisorSpec`]: foundation::supervision::SupervisorSpec
//! [`RESTART_BATCH`]: crate::peers::erlang::RESTART_BATCH

use super::{Context, Trial};
use crate::peers::erlang::{self, RESTART_BATCH};
use crate::report::{Better, Measurement, FOUNDATION};
use crate::subject;

/// Name of the case.
pub(crate) const CASE: &str = "restart";

/// Measures the restart latency of a supervised worker.
pub(crate) fn run(context: &Context) -> Vec<Measurement> {
    let restarts = context.scale.restarts;
    let samples = context.interleave(
        "restart_latency",
        vec![Trial::new(FOUNDATION, move || subject::restart(restarts))],
    );
    context.progress.step(format!(
        "restart: erlang ({restarts} restarts x {})",
        context.scale.reps
    ));
    let erlang = erlang::restart(&context.progress, restarts, context.scale.reps);

    let mut p50 = Measurement::new(CASE, "restart_latency_p50", "ns", Better::Lower);
    samples.fill(&mut p50, |trips| trips.p50_ns);
    let mut p99 = Measurement::new(CASE, "restart_latency_p99", "ns", Better::Lower);
    samples.fill(&mut p99, |trips| trips.p99_ns);

    let mut means = Vec::new();
    if let Some(mean) = samples.median(FOUNDATION, |trips| trips.mean_ns) {
        means.push(format!("{FOUNDATION} {mean:.0}"));
    }
    if let Some(erlang) = &erlang {
        p50.peer("erlang", erlang.median("restart_p50"));
        p99.peer("erlang", erlang.median("restart_p99"));
        if let Some(mean) = erlang.median("restart_mean") {
            means.push(format!("erlang {mean:.0}"));
        }
    }
    p50.note(&format!(
        "{restarts} restarts per repetition, crash to replacement running; target p50 <= 5 us, p99 <= 50 us; mean ns: {}.",
        means.join(", ")
    ));
    if let Some(erlang) = &erlang {
        for m in [&mut p50, &mut p99] {
            m.note(&format!(
                "erlang: {}, crash logging off, a fresh supervisor every {RESTART_BATCH} restarts.",
                erlang.describe()
            ));
        }
    }
    vec![p50, p99]
}
