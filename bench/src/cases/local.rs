//! `local`: messages between processes of one node.
//!
//! | metric | Foundation | peers |
//! |---|---|---|
//! | `one_to_one_same_shard` | 1 sender → 1 receiver, one shard | tokio current-thread mpsc; Erlang `+S 1` |
//! | `one_to_one_cross_shard` | sender and receiver on two shards | crossbeam bounded and unbounded between two threads; tokio multi-thread mpsc; Erlang on two schedulers |
//! | `ping_pong_same_shard_p50`/`_p99` | round trip, one shard | tokio current-thread; Erlang `+S 1` |
//! | `ping_pong_cross_shard_p50`/`_p99` | round trip across two shards | crossbeam between two threads; tokio multi-thread; Erlang on two schedulers |
//! | `fan_in` | N senders over the shards → 1 receiver | tokio multi-thread; crossbeam, N threads; Erlang on two schedulers |
//!
//! Every message is 64 bytes. Ping-pong samples each round trip and reports
//! the median of the per-repetition p50 and p99; the means go in the note.

use super::{Context, Samples, Trial};
use crate::peers::crossbeam::{self, Capacity};
use crate::peers::erlang::{self, Figures};
use crate::peers::tokio::{self, Flavor};
use crate::report::{Better, Measurement, FOUNDATION};
use crate::stats::RoundTrips;
use crate::subject;

/// Name of the case.
pub(crate) const CASE: &str = "local";

/// Shards (and Erlang schedulers) used by the cross-shard figures.
const CROSS_SHARDS: usize = 2;

/// Measures one-to-one throughput, ping-pong latency and fan-in.
pub(crate) fn run(context: &Context) -> Vec<Measurement> {
    let scale = &context.scale;
    let (msgs, rounds, senders) = (scale.msgs, scale.rounds, scale.senders);
    let per_sender = (msgs / senders as u64).max(1);

    let same_shard_rate = context.interleave(
        "one_to_one_same_shard",
        vec![
            Trial::new(FOUNDATION, move || subject::one_to_one(msgs, false)),
            Trial::new("tokio-current-thread", move || {
                tokio::one_to_one(Flavor::CurrentThread, msgs)
            }),
        ],
    );
    let cross_shard_rate = context.interleave(
        "one_to_one_cross_shard",
        vec![
            Trial::new(FOUNDATION, move || subject::one_to_one(msgs, true)),
            Trial::new("crossbeam-bounded", move || {
                crossbeam::one_to_one(Capacity::Bounded, msgs)
            }),
            Trial::new("crossbeam-unbounded", move || {
                crossbeam::one_to_one(Capacity::Unbounded, msgs)
            }),
            Trial::new("tokio-multi-thread", move || {
                tokio::one_to_one(Flavor::MultiThread, msgs)
            }),
        ],
    );
    let same_shard_trips = context.interleave(
        "ping_pong_same_shard",
        vec![
            Trial::new(FOUNDATION, move || subject::ping_pong(rounds, false)),
            Trial::new("tokio-current-thread", move || {
                tokio::ping_pong(Flavor::CurrentThread, rounds)
            }),
        ],
    );
    let cross_shard_trips = context.interleave(
        "ping_pong_cross_shard",
        vec![
            Trial::new(FOUNDATION, move || subject::ping_pong(rounds, true)),
            Trial::new("crossbeam", move || crossbeam::ping_pong(rounds)),
            Trial::new("tokio-multi-thread", move || {
                tokio::ping_pong(Flavor::MultiThread, rounds)
            }),
        ],
    );
    let fan_in_rate = context.interleave(
        "fan_in",
        vec![
            Trial::new(FOUNDATION, move || subject::fan_in(senders, per_sender)),
            Trial::new("tokio-multi-thread", move || {
                tokio::fan_in(Flavor::MultiThread, senders, per_sender)
            }),
            Trial::new("crossbeam", move || {
                crossbeam::fan_in(Capacity::Bounded, senders, per_sender)
            }),
        ],
    );

    context.progress.step("local: erlang, one scheduler");
    let erlang_one = erlang::local(&context.progress, 1, msgs, rounds, senders, scale.reps);
    context
        .progress
        .step(format!("local: erlang, {CROSS_SHARDS} schedulers"));
    let erlang_cross = erlang::local(
        &context.progress,
        CROSS_SHARDS,
        msgs,
        rounds,
        senders,
        scale.reps,
    );

    let mut out = Vec::new();

    let mut m = Measurement::new(CASE, "one_to_one_same_shard", "msgs/s", Better::Higher);
    same_shard_rate.fill(&mut m, |rate| *rate);
    add_erlang(&mut m, erlang_one.as_ref(), "send");
    m.note(&format!("{msgs} messages of 64 bytes per repetition."));
    out.push(m);

    let mut m = Measurement::new(CASE, "one_to_one_cross_shard", "msgs/s", Better::Higher);
    cross_shard_rate.fill(&mut m, |rate| *rate);
    add_erlang(&mut m, erlang_cross.as_ref(), "send");
    m.note("tokio-multi-thread: tokio places the two tasks, often on one worker.");
    out.push(m);

    out.extend(latency(
        "ping_pong_same_shard",
        &same_shard_trips,
        erlang_one.as_ref(),
        rounds,
    ));
    out.extend(latency(
        "ping_pong_cross_shard",
        &cross_shard_trips,
        erlang_cross.as_ref(),
        rounds,
    ));

    let mut m = Measurement::new(CASE, "fan_in", "msgs/s", Better::Higher);
    fan_in_rate.fill(&mut m, |rate| *rate);
    add_erlang(&mut m, erlang_cross.as_ref(), "fan_in");
    m.note(&format!(
        "{senders} senders x {per_sender} messages into one receiver."
    ));
    out.push(m);

    for m in &mut out {
        let (erlang, placement) = if m.metric.contains("same_shard") {
            (&erlang_one, "")
        } else {
            (&erlang_cross, ", processes pinned to schedulers")
        };
        if let Some(erlang) = erlang.as_ref().filter(|_| m.peers.contains_key("erlang")) {
            m.note(&format!("erlang: {}{placement}.", erlang.describe()));
        }
    }
    out
}

/// The p50 and p99 measurements of a ping-pong figure, means in the note.
fn latency(
    metric: &str,
    samples: &Samples<RoundTrips>,
    erlang: Option<&Figures>,
    rounds: u64,
) -> [Measurement; 2] {
    let mut p50 = Measurement::new(CASE, &format!("{metric}_p50"), "ns", Better::Lower);
    samples.fill(&mut p50, |trips| trips.p50_ns);
    add_erlang(&mut p50, erlang, "ping_pong_p50");

    let mut p99 = Measurement::new(CASE, &format!("{metric}_p99"), "ns", Better::Lower);
    samples.fill(&mut p99, |trips| trips.p99_ns);
    add_erlang(&mut p99, erlang, "ping_pong_p99");

    let mut means: Vec<String> = Vec::new();
    if let Some(mean) = samples.median(FOUNDATION, |trips| trips.mean_ns) {
        means.push(format!("{FOUNDATION} {mean:.0}"));
    }
    for peer in p50.peers.keys() {
        let mean = match erlang.filter(|_| peer == "erlang") {
            Some(erlang) => erlang.median("ping_pong_mean"),
            None => samples.median(peer, |trips| trips.mean_ns),
        };
        if let Some(mean) = mean {
            means.push(format!("{peer} {mean:.0}"));
        }
    }
    p50.note(&format!(
        "{rounds} round trips per repetition; mean ns: {}.",
        means.join(", ")
    ));
    [p50, p99]
}

fn add_erlang(measurement: &mut Measurement, erlang: Option<&Figures>, key: &str) {
    if let Some(erlang) = erlang {
        measurement.peer("erlang", erlang.median(key));
    }
}
