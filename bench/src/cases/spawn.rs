//! `spawn`: what an idle process costs — time to spawn one, memory it holds.
//!
//! An idle process is one waiting on its own mailbox, the commonest state of
//! a process in an actor system (a session, a connection, a cache entry).
//! Peers: a tokio task waiting on its own unbounded mpsc receiver, on the
//! current-thread and multi-thread runtimes, and an Erlang process in
//! `receive`.
//!
//! Time runs from the first spawn until every process has been polled once
//! and waits on its mailbox; stopping them is not timed. Memory is the
//! resident-set growth of a fresh child process per subject (see
//! [`crate::rss`]); Erlang reports `erlang:memory(processes)` growth as
//! `erlang` and its VM's resident-set growth as `erlang-rss`.

use super::{Context, Trial};
use crate::peers::tokio::Flavor;
use crate::peers::{erlang, tokio};
use crate::report::{Better, Measurement, FOUNDATION};
use crate::rss::{self, RssSubject};
use crate::subject;

/// Name of the case.
pub(crate) const CASE: &str = "spawn";

/// Measures spawn time and memory per process.
pub(crate) fn run(context: &Context) -> Vec<Measurement> {
    let n = context.scale.spawn_count;

    let time_samples = context.interleave(
        "spawn_time",
        vec![
            Trial::new(FOUNDATION, move || subject::spawn_idle(n).ns_per_spawn),
            Trial::new("tokio-current-thread", move || {
                tokio::spawn_idle(Flavor::CurrentThread, n)
            }),
            Trial::new("tokio-multi-thread", move || {
                tokio::spawn_idle(Flavor::MultiThread, n)
            }),
        ],
    );
    let memory_samples = context.interleave(
        "spawn_memory",
        vec![
            Trial::fallible(FOUNDATION, move || {
                rss::bytes_per_process(RssSubject::Foundation, n)
            }),
            Trial::fallible("tokio", move || {
                rss::bytes_per_process(RssSubject::Tokio, n)
            }),
        ],
    );
    context.progress.step(format!(
        "spawn: erlang ({n} processes x {})",
        context.scale.reps
    ));
    let erlang = erlang::spawn(&context.progress, n, context.scale.reps);

    let mut time = Measurement::new(CASE, "spawn_time", "ns/process", Better::Lower);
    time_samples.fill(&mut time, |ns| *ns);
    time.note(&format!(
        "{n} idle processes per repetition, timed until each waits on its mailbox; stopping is not timed."
    ));

    let mut memory = Measurement::new(CASE, "spawn_memory", "bytes/process", Better::Lower);
    memory_samples.fill(&mut memory, |bytes| *bytes);
    memory.note(&format!(
        "RSS growth over {n} idle processes in a fresh child process per subject."
    ));

    if let Some(erlang) = erlang {
        time.peer("erlang", erlang.median("spawn_ns"));
        memory
            .peer("erlang", erlang.median("spawn_bytes"))
            .peer("erlang-rss", erlang.median("spawn_rss_bytes"));
        time.note(&format!("erlang: {}.", erlang.describe()));
        memory.note("erlang: erlang:memory(processes) growth; erlang-rss: the VM's RSS growth.");
    }
    vec![time, memory]
}
