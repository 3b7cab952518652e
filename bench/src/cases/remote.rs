//! `remote`, `latency` and `hol`: Foundation between two nodes (two OS
//! processes on loopback, see [`crate::remote`]), on each backend, beside a
//! raw TCP stream and ping-pong written in the bench
//! ([`crate::peers::tcp`]) and distributed Erlang.
//!
//! - `remote`: one direction, messages of 16 B to 1 MiB, messages per
//!   second and payload MB/s. Messages up to 64 KiB go on `data`, larger
//!   ones on `bulk` (chunked at its 1 MiB frame).
//! - `latency`: 64-byte round trips on `data`, p50, p99 and p99.9.
//! - `hol`: round trips on `control`, idle and while another process keeps
//!   `bulk` full of 1 MiB messages; the figure is the loaded p99 over the
//!   idle p99 (target ≤ 1.5).
//!
//! Every peer runs with the two ends on two cores, as the two nodes do.

use foundation::transport::{Backend, ChannelId, IoOptions, LOOPBACK_CONGESTION_CONTROL};

use super::{Context, Trial};
use crate::peers::erlang;
use crate::peers::placement::Placement;
use crate::peers::tcp;
use crate::remote::Pair;
use crate::report::{Better, Measurement, FOUNDATION};
use crate::stats::RoundTrips;

/// Name of the throughput case.
pub(crate) const REMOTE: &str = "remote";
/// Name of the latency case.
pub(crate) const LATENCY: &str = "latency";
/// Name of the head-of-line case.
pub(crate) const HOL: &str = "hol";

/// Message sizes of the throughput case, unless `--sizes` says otherwise.
pub(crate) const SIZES: [usize; 5] = [16, 64, 1024, 64 * 1024, 1024 * 1024];

/// Bytes one throughput repetition moves at most, per size: about half a
/// second at the large sizes, long enough for the connection to reach its
/// steady state (over loopback, 512 MiB took 0.1 s and repetitions varied
/// by a third).
const STREAM_BYTES: u64 = 2048 * 1024 * 1024;

/// The backends this machine offers, io_uring first.
fn backends() -> Vec<Backend> {
    [Backend::IoUring, Backend::Epoll]
        .into_iter()
        .filter(|backend| backend.probe(&IoOptions::default()).is_ok())
        .collect()
}

fn subject(backend: Backend) -> &'static str {
    match backend {
        Backend::IoUring => FOUNDATION,
        Backend::Epoll => "foundation-epoll",
        // Not measured here: the `sim` case is the simulated network's.
        _ => "foundation-simulated",
    }
}

/// The TCP congestion control of the connections measured, so that figures
/// from machines set up differently are not compared as like for like.
/// With `bbr` and no `fq` queueing discipline (loopback has none), TCP
/// paces each socket with its own timers, and on a 2-core VM that cost
/// every subject 30–40 % of its throughput at 1 KiB and 1 MiB against
/// `cubic`. So every subject's senders take the congestion control
/// Foundation gives its connections to its own host,
/// [`LOOPBACK_CONGESTION_CONTROL`], not the system's: Foundation's by
/// default, the raw TCP stream's and Erlang's distribution's as their peers
/// set them up.
fn congestion_control() -> String {
    let system = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map_or_else(|_| "unknown".to_owned(), |name| name.trim().to_owned());
    format!("{LOOPBACK_CONGESTION_CONTROL} (the system's: {system})")
}

/// Picks one figure out of a ping-pong's round trips.
type Figure = fn(&RoundTrips) -> f64;

/// One-direction throughput per message size.
pub(crate) fn run_remote(context: &Context) -> Vec<Measurement> {
    let mut measurements = Vec::new();
    let backends = backends();
    for &size in &context.scale.remote_sizes {
        let msgs = context.scale.msgs.min(STREAM_BYTES / size as u64).max(100);
        let channel = if size <= 64 * 1024 {
            ChannelId::DATA
        } else {
            ChannelId::BULK
        };
        let mut trials: Vec<Trial<'_, f64>> = backends
            .iter()
            .map(|&backend| {
                Trial::fallible(subject(backend), move || {
                    Pair::start(backend)?.stream(size, msgs, channel)
                })
            })
            .collect();
        trials.push(Trial::fallible("raw-tcp", move || {
            tcp::stream(size, msgs, Placement::TwoCores).map(|t| t.msgs_per_s)
        }));
        let samples = context.interleave(&format!("remote {size} B"), trials);
        context
            .progress
            .step(format!("remote {size} B: erlang ({msgs} msgs)"));
        let erlang = erlang::remote(
            &context.progress,
            size,
            msgs,
            context.scale.reps,
            Placement::TwoCores,
        );
        let mut rate = Measurement::new(REMOTE, &format!("msgs_{size}B"), "msgs/s", Better::Higher);
        samples.fill(&mut rate, |rate| *rate);
        let mut bandwidth =
            Measurement::new(REMOTE, &format!("mb_{size}B"), "MB/s", Better::Higher);
        samples.fill(&mut bandwidth, |rate| rate * size as f64 / 1e6);
        // One repetition spreads widely on a shared machine; the turns
        // pair each io_uring repetition with the epoll one next to it.
        if let Some(paired) =
            samples.paired_ratio(FOUNDATION, subject(Backend::Epoll), |rate| *rate)
        {
            rate.note(&format!(
                "io_uring / epoll repetition by repetition: {:.3} ± {:.3} (geometric mean ± standard error, {} pairs).",
                paired.ratio, paired.error, paired.pairs
            ));
        }
        if let Some(erlang) = &erlang {
            rate.peer("erlang", erlang.median("remote_msgs_per_s"));
            bandwidth.peer("erlang", erlang.median("remote_mb_per_s"));
        }
        rate.note(&format!(
            "{msgs} messages of {size} B one way per repetition, {} channel; {FOUNDATION} is io_uring; TCP congestion control {}; targets: 64 B >= 20M msgs/s, 64 KiB >= 80% of raw TCP MB/s.",
            if channel == ChannelId::DATA { "data" } else { "bulk" },
            congestion_control(),
        ));
        measurements.push(rate);
        measurements.push(bandwidth);
    }
    measurements
}

/// 64-byte ping-pong between the nodes.
pub(crate) fn run_latency(context: &Context) -> Vec<Measurement> {
    let rounds = context.scale.rounds;
    let mut trials: Vec<Trial<'_, RoundTrips>> = backends()
        .into_iter()
        .map(|backend| {
            Trial::fallible(subject(backend), move || {
                Pair::start(backend)?.ping_pong(rounds, ChannelId::DATA)
            })
        })
        .collect();
    trials.push(Trial::fallible("raw-tcp", move || {
        tcp::ping_pong(rounds, Placement::TwoCores)
    }));
    let samples = context.interleave("latency", trials);
    context.progress.step("latency: erlang");
    let erlang = erlang::latency(
        &context.progress,
        rounds,
        context.scale.reps,
        Placement::TwoCores,
    );
    let figures: [(&str, Figure, &str); 3] = [
        ("ping_pong_p50", |t| t.p50_ns, "latency_p50"),
        ("ping_pong_p99", |t| t.p99_ns, "latency_p99"),
        ("ping_pong_p999", |t| t.p999_ns, "latency_p999"),
    ];
    figures
        .into_iter()
        .map(|(metric, figure, erlang_key)| {
            let mut m = Measurement::new(LATENCY, metric, "ns", Better::Lower);
            samples.fill(&mut m, figure);
            if let Some(erlang) = &erlang {
                m.peer("erlang", erlang.median(erlang_key));
            }
            m.note(&format!(
                "{rounds} round trips of 64 B per repetition; target p50 and p99 <= 1.2x raw TCP."
            ));
            m
        })
        .collect()
}

/// Control round trips, idle and under a saturated bulk channel.
pub(crate) fn run_hol(context: &Context) -> Vec<Measurement> {
    let rounds = context.scale.rounds / 4;
    let trials: Vec<Trial<'_, (RoundTrips, RoundTrips)>> = backends()
        .into_iter()
        .map(|backend| {
            Trial::fallible(subject(backend), move || {
                let pair = Pair::start(backend)?;
                let idle = pair.ping_pong(rounds, ChannelId::CONTROL)?;
                let loaded = pair.ping_pong_under_bulk(rounds)?;
                Ok((idle, loaded))
            })
        })
        .collect();
    let samples = context.interleave("hol", trials);
    context.progress.step("hol: erlang");
    let erlang = erlang::hol(
        &context.progress,
        rounds,
        context.scale.reps,
        Placement::TwoCores,
    );
    let mut idle = Measurement::new(HOL, "control_p99_idle", "ns", Better::Lower);
    samples.fill(&mut idle, |(idle, _)| idle.p99_ns);
    let mut loaded = Measurement::new(HOL, "control_p99_under_bulk", "ns", Better::Lower);
    samples.fill(&mut loaded, |(_, loaded)| loaded.p99_ns);
    let mut loaded_p50 = Measurement::new(HOL, "control_p50_under_bulk", "ns", Better::Lower);
    samples.fill(&mut loaded_p50, |(_, loaded)| loaded.p50_ns);
    let mut ratio = Measurement::new(HOL, "control_p99_loaded_over_idle", "x", Better::Lower);
    samples.fill(&mut ratio, |(idle, loaded)| loaded.p99_ns / idle.p99_ns);
    if let Some(erlang) = &erlang {
        idle.peer("erlang", erlang.median("hol_idle_p99"));
        loaded.peer("erlang", erlang.median("hol_loaded_p99"));
        loaded_p50.peer("erlang", erlang.median("hol_loaded_p50"));
        let erlang_ratio = erlang
            .median("hol_loaded_p99")
            .zip(erlang.median("hol_idle_p99"))
            .map(|(loaded, idle)| loaded / idle);
        ratio.peer("erlang", erlang_ratio);
    }
    ratio.note(&format!(
        "{rounds} control round trips per phase; bulk: 1 MiB messages in a loop; target <= 1.5x."
    ));
    vec![idle, loaded, loaded_p50, ratio]
}
