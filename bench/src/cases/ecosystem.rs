//! `ecosystem`: starting, shrinking and growing a large group of supervised
//! workers.
//!
//! | metric | Foundation | Erlang |
//! |---|---|---|
//! | `ecosystem_spawn_100k` | `spawn_ecosystem` with the workers, until `stats` answers | `supervisor:start_child` once per worker on a `simple_one_for_one` supervisor |
//! | `ecosystem_scale_down` | `scale` to a tenth, until every stopped worker has ended | `supervisor:terminate_child` for nine workers in ten |
//! | `ecosystem_scale_up` | `scale` back to the full count, until the call returns | `supervisor:start_child` for as many |
//!
//! Workers are idle: each waits on its mailbox. Foundation's ecosystem has a
//! coordinator that drains the manager's worker events, and lives on the
//! shard of the process measuring it. The manager answers `stats` only
//! after its `init` has started every worker, so `spawn` is timed up to
//! that answer. `scale` down tells the stopped workers to stop without
//! waiting for them, while `terminate_child` waits for each child to end, so
//! Foundation's figure runs until every stopped worker is gone (the `scale`
//! call alone is in the note). A supervisor's `start_child` returns once the
//! child is spawned, as the ecosystem's `scale` up does.
//!
//! Full runs use 100,000 workers; `quick` uses 20,000 and says so in the
//! notes, keeping the metric names. Erlang runs on its default schedulers
//! with `+P` raised. There is no tokio or crossbeam peer: neither has
//! supervision.

use super::{Context, Trial};
use crate::peers::erlang;
use crate::report::{Better, Measurement, FOUNDATION};
use crate::subject::{self, EcosystemFigures};

/// Name of the case.
pub(crate) const CASE: &str = "ecosystem";

/// Nanoseconds per millisecond.
const NS_PER_MS: f64 = 1e6;

/// Measures spawning and scaling an ecosystem of idle workers.
pub(crate) fn run(context: &Context) -> Vec<Measurement> {
    let workers = context.scale.ecosystem_workers;
    let low = (workers / 10).max(1);
    let samples = context.interleave(
        "ecosystem",
        vec![Trial::new(FOUNDATION, move || subject::ecosystem(workers))],
    );
    context.progress.step(format!(
        "ecosystem: erlang ({workers} workers x {})",
        context.scale.reps
    ));
    let erlang = erlang::ecosystem(&context.progress, workers, context.scale.reps);

    let ms = |ns: u64| ns as f64 / NS_PER_MS;
    let measure = |metric: &str, erlang_key: &str, figure: fn(&EcosystemFigures) -> u64| {
        let mut m = Measurement::new(CASE, metric, "ms", Better::Lower);
        samples.fill(&mut m, |f| ms(figure(f)));
        if let Some(erlang) = &erlang {
            m.peer("erlang", erlang.median(erlang_key));
        }
        m
    };
    let size = if workers == 100_000 {
        ""
    } else {
        " (not the 100,000 the metric name says)"
    };

    let mut spawn = measure("ecosystem_spawn_100k", "ecosystem_spawn_ms", |f| f.spawn_ns);
    spawn.note(&format!(
        "{workers} idle workers{size}, until stats answers; target <= 100 ms for 100,000."
    ));

    let mut down = measure("ecosystem_scale_down", "ecosystem_scale_down_ms", |f| {
        f.scale_down_ns
    });
    let call = samples
        .median(FOUNDATION, |f| ms(f.scale_down_call_ns))
        .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} ms"));
    down.note(&format!(
        "{workers} -> {low} workers{size}, until every stopped worker has ended (foundation's scale call alone: {call})."
    ));

    let mut up = measure("ecosystem_scale_up", "ecosystem_scale_up_ms", |f| {
        f.scale_up_ns
    });
    up.note(&format!(
        "{low} -> {workers} workers{size}, until scale returns."
    ));

    let mut out = vec![spawn, down, up];
    if let Some(erlang) = &erlang {
        for m in &mut out {
            m.note(&format!(
                "erlang: simple_one_for_one supervisor, start_child/terminate_child per worker, {}.",
                erlang.describe()
            ));
        }
    }
    out
}
