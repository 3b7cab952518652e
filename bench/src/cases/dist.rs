//! `remote_spawn` and `detect`: Foundation nodes as a cluster on loopback
//! (see [`crate::cluster`]).
//!
//! - `remote_spawn`: spawns per second from a node in this process on a
//!   node in a child process, through the far node's process factory, by
//!   [`SPAWNERS`] processes at once, each waiting for its pid before the
//!   next; beside distributed Erlang's `spawn/4` between two nodes, as
//!   many spawners at once.
//! - `detect`: three nodes in child processes; one is killed with SIGKILL,
//!   and the figure is the time until both others report it down (the
//!   later of the two), with the default failure-detector timings. Target:
//!   under 1 s. No peer runs in the same run: distributed Erlang learns of
//!   a node killed *on the same host* from the kernel closing the TCP
//!   connection, at once, while its tick (`net_ticktime`, 60 s by default:
//!   45–75 s to notice) is what finds a node that stops answering without
//!   its connection closing — the case SWIM's probes are for.

use super::{Context, Trial};
use crate::cluster;
use crate::peers::erlang;
use crate::peers::placement::Placement;
use crate::report::{Better, Measurement, FOUNDATION};

/// Name of the remote spawn case.
pub(crate) const REMOTE_SPAWN: &str = "remote_spawn";
/// Name of the failure detection case.
pub(crate) const DETECT: &str = "detect";

/// Spawning processes at once in `remote_spawn`.
pub(crate) const SPAWNERS: u64 = 64;

/// Node ids of the benchmark clusters: each repetition's nodes differ from
/// the last's, so a late line of a stopped node is never mistaken.
fn first_id(rep: &std::cell::Cell<u16>) -> u16 {
    let id = rep.get();
    rep.set(id + 4);
    id
}

/// Remote spawns per second between two nodes.
pub(crate) fn run_remote_spawn(context: &Context) -> Vec<Measurement> {
    let count = context.scale.remote_spawns;
    let ids = std::cell::Cell::new(100);
    let samples = context.interleave(
        "remote_spawn",
        vec![Trial::fallible(FOUNDATION, || {
            cluster::remote_spawn(first_id(&ids), count, SPAWNERS)
        })],
    );
    context.progress.step(format!(
        "remote_spawn: erlang ({count} spawns x {})",
        context.scale.reps
    ));
    let erlang = erlang::remote_spawn(
        &context.progress,
        count,
        SPAWNERS,
        context.scale.reps,
        Placement::TwoCores,
    );
    let mut rate = Measurement::new(
        REMOTE_SPAWN,
        "remote_spawns_per_s",
        "spawns/s",
        Better::Higher,
    );
    samples.fill(&mut rate, |rate| *rate);
    if let Some(erlang) = &erlang {
        rate.peer("erlang", erlang.median("remote_spawns_per_s"));
    }
    rate.note(&format!(
        "{count} spawns per repetition by {SPAWNERS} spawners at once, each waiting for its pid; \
         the spawned process ends at once; two nodes on two cores; target >= 100,000/s."
    ));
    vec![rate]
}

/// Time from SIGKILL of a node to its down at every peer.
pub(crate) fn run_detect(context: &Context) -> Vec<Measurement> {
    let ids = std::cell::Cell::new(200);
    let samples = context.interleave(
        "detect",
        vec![Trial::fallible(FOUNDATION, || {
            cluster::detect(first_id(&ids)).map(|took| took.as_secs_f64() * 1e3)
        })],
    );
    let mut detect = Measurement::new(DETECT, "detect_killed_node", "ms", Better::Lower);
    samples.fill(&mut detect, |ms| *ms);
    detect.note(
        "3 nodes in 3 processes on loopback, default timings (probe 100 ms, probe timeout 40 ms, \
         suspicion 250 ms); from SIGKILL of one to the later of the two others' down events; \
         target < 1000 ms. Distributed Erlang is not run: see the case's docs.",
    );
    vec![detect]
}
