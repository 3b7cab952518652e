//! The Foundation side of every case.
//!
//! Each function runs one repetition of one figure and returns it; the cases
//! call it as many times as `--reps` asks, interleaved with the peers, and
//! report the median. A panic here is caught by the case: the figure shows as
//! `n/a` and the peers are still measured.
//!
//! Every case runs on a runtime of two pinned shards, as the peers run on
//! two threads or workers. Messages are 64 bytes, like the peers'.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use foundation::ecosystem::{spawn_ecosystem, EcosystemSpec, WorkerEvent};
use foundation::supervision::{ChildSpec, Strategy, SupervisorSpec};
use foundation::{
    Addr, Context, Envelope, ExitReason, Pid, Placement, Runtime, ShardId, SpawnOptions,
};

use crate::stats::{self, RoundTrips, Stopwatch};

/// The message every throughput and latency case moves.
type Payload = [u8; 64];

/// Figures of one spawn repetition.
pub(crate) struct SpawnFigures {
    /// Wall time per spawned process, in nanoseconds.
    pub(crate) ns_per_spawn: f64,
}

/// Spawns `n` idle processes (each waiting on its mailbox) from a process on
/// one shard, and times until every one has been polled once, as the tokio
/// peer times its tasks. Stopping them is not timed.
pub(crate) fn spawn_idle(n: usize) -> SpawnFigures {
    let runtime = runtime();
    let elapsed_ns = runtime
        .block_on(move |cx: Context<()>| async move {
            let (elapsed, _) = spawn_idle_children(&cx, n).await;
            elapsed
        })
        .expect("the spawning process finishes");
    SpawnFigures {
        ns_per_spawn: elapsed_ns as f64 / n as f64,
    }
}

/// Spawns `n` idle processes and keeps them alive on return.
///
/// Called in a fresh child process after a baseline RSS reading; the child
/// reads RSS again after this returns, then exits. The runtime is leaked on
/// purpose so that its processes are still alive at that reading.
pub(crate) fn spawn_rss(n: usize) {
    let runtime = runtime();
    runtime
        .block_on(move |cx: Context<()>| async move {
            let (_, children) = spawn_idle_children(&cx, n).await;
            // Keep the children alive after this process returns: they are
            // not linked, so they outlive it.
            drop(children);
        })
        .expect("the spawning process finishes");
    std::mem::forget(runtime);
}

/// Messages per second from one sender process to one receiver, `msgs`
/// messages of 64 bytes, on one shard or (`cross_shard`) across two.
pub(crate) fn one_to_one(msgs: u64, cross_shard: bool) -> f64 {
    let runtime = runtime();
    let receiver_shard = ShardId(u8::from(cross_shard));
    let (done_tx, done) = mpsc::channel();
    let receiver = spawn_counter(&runtime, receiver_shard, msgs, done_tx);
    let clock = Stopwatch::start();
    spawn_senders(&runtime, receiver, &[ShardId(0)], msgs);
    done.recv().expect("the receiver reports");
    stats::rate(msgs, clock.elapsed())
}

/// `rounds` round trips between two processes on one shard or
/// (`cross_shard`) on two, each round timed.
pub(crate) fn ping_pong(rounds: u64, cross_shard: bool) -> RoundTrips {
    let runtime = runtime();
    let ponger = runtime
        .spawn_with(
            SpawnOptions::new().placement(Placement::Shard(ShardId(u8::from(cross_shard)))),
            |cx: Context<(Addr<Payload>, Payload)>| async move {
                while let Envelope::Msg((reply, payload)) = cx.recv().await {
                    cx.send(&reply, payload);
                }
            },
        )
        .expect("spawn the ponger");
    let (samples_tx, samples) = mpsc::channel();
    runtime
        .spawn_with(
            SpawnOptions::new().placement(Placement::Shard(ShardId(0))),
            move |cx: Context<Payload>| async move {
                let me = cx.addr();
                let warm_up = stats::warm_up_rounds(rounds);
                let mut samples = Vec::with_capacity(rounds as usize);
                for round in 0..warm_up + rounds {
                    let clock = Stopwatch::start();
                    cx.send(&ponger, (me, [0; 64]));
                    cx.recv().await;
                    if round >= warm_up {
                        samples.push(clock.elapsed_ns());
                    }
                }
                let _ = samples_tx.send(samples);
            },
        )
        .expect("spawn the pinger");
    let samples = samples.recv().expect("the pinger reports");
    RoundTrips::from_samples(samples)
}

/// Messages per second into one receiver from `senders` processes spread
/// over the shards, each sending `msgs_per_sender` 64-byte messages.
pub(crate) fn fan_in(senders: usize, msgs_per_sender: u64) -> f64 {
    let runtime = runtime();
    let total = senders as u64 * msgs_per_sender;
    let (done_tx, done) = mpsc::channel();
    let receiver = spawn_counter(&runtime, ShardId(0), total, done_tx);
    let shards: Vec<ShardId> = (0..senders)
        .map(|sender| ShardId((sender % runtime.shard_count()) as u8))
        .collect();
    let clock = Stopwatch::start();
    spawn_senders(&runtime, receiver, &shards, msgs_per_sender);
    done.recv().expect("the receiver reports");
    stats::rate(total, clock.elapsed())
}

/// `restarts` restarts of a supervised worker, each timed from the crash to
/// the replacement running.
///
/// An observer process starts a `one_for_one` supervisor with one permanent
/// worker (restart intensity `u32::MAX` in a second: it never gives up).
/// The worker, when it starts, sends its pid to the observer and waits on
/// its mailbox. The observer times each round: it kills the current worker
/// (`exit` with an error reason), then waits for the replacement's pid.
/// Observer, supervisor and worker share one shard.
pub(crate) fn restart(restarts: u64) -> RoundTrips {
    let runtime = runtime();
    let samples = runtime
        .block_on(move |cx: Context<Pid>| async move {
            let observer = cx.addr();
            let worker = ChildSpec::worker("worker", move |cx: Context<()>| async move {
                cx.send(&observer, cx.pid());
                while let Envelope::Msg(()) = cx.recv().await {}
            });
            let supervisor = SupervisorSpec::new(Strategy::OneForOne)
                .intensity(u32::MAX, Duration::from_secs(1))
                .child(worker)
                .start_link(&cx);
            let mut current = next_started(&cx).await;
            let warm_up = stats::warm_up_rounds(restarts);
            let mut samples = Vec::with_capacity(restarts as usize);
            for round in 0..warm_up + restarts {
                let clock = Stopwatch::start();
                cx.exit(current, ExitReason::error("crash"));
                let started = next_started(&cx).await;
                if round >= warm_up {
                    samples.push(clock.elapsed_ns());
                }
                assert_ne!(started, current, "the replacement is a new process");
                current = started;
            }
            let children = supervisor
                .which_children(&cx)
                .await
                .expect("the supervisor answers");
            assert_eq!(children[0].pid, Some(current), "the supervisor's worker");
            samples
        })
        .expect("the observer finishes");
    RoundTrips::from_samples(samples)
}

/// The pid the next started worker sends to the observer.
async fn next_started(cx: &Context<Pid>) -> Pid {
    loop {
        if let Envelope::Msg(pid) = cx.recv().await {
            return pid;
        }
    }
}

/// Figures of one ecosystem repetition, in nanoseconds.
pub(crate) struct EcosystemFigures {
    /// `spawn_ecosystem` with every worker until `stats` answers.
    pub(crate) spawn_ns: u64,
    /// Scaling down to a tenth until every stopped worker has ended.
    pub(crate) scale_down_ns: u64,
    /// Scaling down to a tenth until the `scale` call returns (the workers
    /// are told to stop, not waited for).
    pub(crate) scale_down_call_ns: u64,
    /// Scaling back up until the `scale` call returns.
    pub(crate) scale_up_ns: u64,
}

/// The coordinator's messages: only what the manager tells it.
enum Coordination {
    /// A worker started or ended.
    Worker,
}

impl From<WorkerEvent> for Coordination {
    fn from(_: WorkerEvent) -> Self {
        Coordination::Worker
    }
}

/// An ecosystem of `workers` idle workers (each waiting on its mailbox) and
/// a coordinator that drains the manager's worker events: spawned, scaled
/// down to a tenth and back up, from a process on the manager's shard.
pub(crate) fn ecosystem(workers: usize) -> EcosystemFigures {
    let runtime = runtime();
    let low = (workers / 10).max(1);
    runtime
        .block_on(move |cx: Context<()>| async move {
            let spec = EcosystemSpec::new(
                |cx: Context<Coordination>| async move {
                    while let Envelope::Msg(Coordination::Worker) = cx.recv().await {}
                },
                |cx: Context<()>| async move { while let Envelope::Msg(()) = cx.recv().await {} },
                workers,
            );

            let clock = Stopwatch::start();
            let ecosystem = spawn_ecosystem(&cx, spec).expect("a local ecosystem");
            let spawned = ecosystem.stats(&cx).await.expect("the manager answers");
            let spawn_ns = clock.elapsed_ns();
            assert_eq!(spawned.workers, workers, "workers after spawn_ecosystem");

            // The manager stops the newest workers first; which ones does not
            // matter to the wait below, only to how soon it finds them gone.
            let stopping: Vec<Pid> = ecosystem.workers(&cx).await.expect("the manager answers")
                [low..]
                .iter()
                .map(Addr::pid)
                .collect();
            let clock = Stopwatch::start();
            ecosystem.scale(&cx, low).await.expect("scale down");
            let scale_down_call_ns = clock.elapsed_ns();
            for &pid in &stopping {
                while cx.process_info(pid).await.is_some() {
                    cx.yield_now().await;
                }
            }
            let scale_down_ns = clock.elapsed_ns();

            let clock = Stopwatch::start();
            ecosystem.scale(&cx, workers).await.expect("scale up");
            let scale_up_ns = clock.elapsed_ns();

            let scaled = ecosystem.stats(&cx).await.expect("the manager answers");
            assert_eq!(scaled.workers, workers, "workers after scaling back up");
            ecosystem.stop(&cx).await.expect("stop the ecosystem");
            EcosystemFigures {
                spawn_ns,
                scale_down_ns,
                scale_down_call_ns,
                scale_up_ns,
            }
        })
        .expect("the measuring process finishes")
}

fn runtime() -> Runtime {
    Runtime::builder()
        .shards(2)
        .build()
        .expect("start a two-shard runtime")
}

/// Spawns `n` children that wait on their mailboxes, and waits until every
/// one has been polled once. Returns the time that took and the children.
async fn spawn_idle_children(cx: &Context<()>, n: usize) -> (u64, Vec<Addr<Payload>>) {
    let started = Rc::new(Cell::new(0usize));
    let mut children = Vec::with_capacity(n);
    let clock = Stopwatch::start();
    for _ in 0..n {
        let started = started.clone();
        children.push(cx.spawn(move |cx: Context<Payload>| async move {
            started.set(started.get() + 1);
            drop(started);
            cx.recv().await;
        }));
    }
    while started.get() < n {
        cx.yield_now().await;
    }
    (clock.elapsed_ns(), children)
}

/// A process on `shard` that counts `expected` messages, then reports.
fn spawn_counter(
    runtime: &Runtime,
    shard: ShardId,
    expected: u64,
    done: mpsc::Sender<()>,
) -> Addr<Payload> {
    runtime
        .spawn_with(
            SpawnOptions::new().placement(Placement::Shard(shard)),
            move |cx: Context<Payload>| async move {
                let mut received = 0;
                while received < expected {
                    if let Envelope::Msg(_) = cx.recv().await {
                        received += 1;
                    }
                }
                let _ = done.send(());
            },
        )
        .expect("spawn the receiver")
}

/// One sender process on each of `shards`, each sending `msgs` messages to
/// `receiver`, yielding whenever its reduction budget is used up.
fn spawn_senders(runtime: &Runtime, receiver: Addr<Payload>, shards: &[ShardId], msgs: u64) {
    for &shard in shards {
        runtime
            .spawn_with(
                SpawnOptions::new().placement(Placement::Shard(shard)),
                move |cx: Context<()>| async move {
                    for i in 0..msgs {
                        cx.send(&receiver, [i as u8; 64]);
                        cx.checkpoint().await;
                    }
                },
            )
            .expect("spawn a sender");
    }
}
