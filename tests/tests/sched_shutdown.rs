//! Shutdown: every live process is stopped with its destructors run, every
//! message still held anywhere is dropped, and no thread is left behind.
//!
//! It counts the threads of the whole OS process, so it is the only test in
//! its binary: other tests running beside it would start and stop threads
//! of their own.

mod common;

use std::future::pending;
use std::sync::mpsc;
use std::time::Duration;

use common::{eventually, DropCounter, DropGuard, PATIENCE};
use foundation::{Context, Placement, Runtime, ShardId, SpawnOptions};

#[test]
fn shutdown_stops_every_process_drops_every_message_and_leaves_no_thread() {
    let threads_before = threads();

    // Which shard stops first, and what the other is doing then, varies
    // from run to run: several rounds give each interleaving its chance.
    for round in 0..ROUNDS {
        shutdown_round(round, threads_before);
    }

    let (ready_tx, ready) = mpsc::channel::<()>();
    // ---- dropping the runtime does the same --------------------------------
    let runtime = Runtime::builder().shards(2).build().unwrap();
    let dropped_with_runtime = DropCounter::default();
    for index in 0..10u8 {
        let guard = dropped_with_runtime.guard();
        let ready_tx = ready_tx.clone();
        runtime
            .spawn_with(
                SpawnOptions::new().placement(on(index % 2)),
                move |_: Context<()>| async move {
                    let _guard = guard;
                    ready_tx.send(()).unwrap();
                    pending::<()>().await;
                },
            )
            .unwrap();
    }
    for _ in 0..10 {
        ready.recv_timeout(PATIENCE).expect("every process starts");
    }
    drop(runtime);
    assert_eq!(dropped_with_runtime.dropped(), 10);
    eventually("every runtime thread has ended", || {
        threads() == threads_before
    });
}

/// Rounds of [`shutdown_round`].
const ROUNDS: usize = 20;

/// Builds a runtime full of processes and messages, shuts it down, and
/// checks that everything was stopped, dropped and joined.
fn shutdown_round(round: usize, threads_before: usize) {
    let runtime = Runtime::builder()
        .shards(2)
        .stall_threshold(Some(Duration::from_millis(50)))
        .build()
        .unwrap();
    assert!(threads() > threads_before, "the runtime has threads");
    let processes = DropCounter::default();
    let messages = DropCounter::default();
    let (ready_tx, ready) = mpsc::channel::<()>();
    let mut waiting_for = 0;
    let mut live = 0;
    let mut hoarders = Vec::new();

    // Processes waiting in every way there is, on both shards.
    for index in 0..40u8 {
        let guard = processes.guard();
        let ready_tx = ready_tx.clone();
        let options = SpawnOptions::new().placement(on(index % 2));
        let kind = index % 4;
        let options = if kind == 2 {
            options.trap_exit()
        } else {
            options
        };
        let addr = runtime
            .spawn_with(options, move |cx: Context<DropGuard>| async move {
                let _guard = guard;
                ready_tx.send(()).unwrap();
                match kind {
                    0 => hoard(&cx).await,
                    1 => cx.sleep(Duration::from_secs(3600)).await,
                    2 => receive_forever(&cx).await,
                    _ => pending::<()>().await,
                }
            })
            .unwrap();
        if kind == 0 {
            hoarders.push(addr);
        }
        waiting_for += 1;
        live += 1;
    }

    // Linked families across the shards.
    for index in 0..4u8 {
        let guards = [processes.guard(), processes.guard(), processes.guard()];
        let ready_tx = ready_tx.clone();
        let other = on((index + 1) % 2);
        runtime
            .spawn_with(
                SpawnOptions::new().placement(on(index % 2)),
                move |cx: Context<()>| async move {
                    let [own, local, remote] = guards;
                    let _guard = own;
                    cx.spawn_link(move |_: Context<()>| async move {
                        let _guard = local;
                        pending::<()>().await;
                    });
                    let options = SpawnOptions::new().link().placement(other);
                    cx.spawn_with(options, move |_: Context<()>| async move {
                        let _guard = remote;
                        pending::<()>().await;
                    })
                    .await
                    .unwrap();
                    ready_tx.send(()).unwrap();
                    pending::<()>().await;
                },
            )
            .unwrap();
        waiting_for += 1;
        live += 3;
    }

    // Messages that are never received: some in mailboxes, and a burst
    // across shards that may still be in a ring or waiting for room in one
    // when the shutdown comes.
    for hoarder in hoarders.iter().take(10) {
        runtime.send(hoarder, messages.guard());
    }
    let sink_guard = processes.guard();
    let sink = runtime
        .spawn_with(
            SpawnOptions::new().placement(on(1)),
            move |cx: Context<DropGuard>| async move {
                let _guard = sink_guard;
                hoard(&cx).await;
            },
        )
        .unwrap();
    live += 1;
    let burst_guard = processes.guard();
    let burst_messages = messages.clone();
    let burst_ready = ready_tx.clone();
    runtime
        .spawn_with(
            SpawnOptions::new().placement(on(0)),
            move |cx: Context<()>| async move {
                let _guard = burst_guard;
                for _ in 0..5000 {
                    cx.send(&sink, burst_messages.guard());
                }
                burst_ready.send(()).unwrap();
                pending::<()>().await;
            },
        )
        .unwrap();
    waiting_for += 1;
    live += 1;

    for _ in 0..waiting_for {
        ready.recv_timeout(PATIENCE).expect("every process starts");
    }

    // One more that may not have run yet when the shutdown comes.
    let late_guard = processes.guard();
    runtime
        .spawn(move |_: Context<()>| async move {
            let _guard = late_guard;
            pending::<()>().await;
        })
        .unwrap();
    live += 1;

    let report = runtime.shutdown();
    let outcome = (
        processes.made(),
        processes.dropped(),
        report.processes_stopped,
        messages.made(),
        messages.dropped(),
    );
    assert_eq!(
        outcome,
        (live, live, live, 5010, 5010),
        "round {round}: (processes spawned, process destructors run, processes_stopped, \
         messages sent, messages dropped)"
    );
    eventually("every runtime thread has ended", || {
        threads() == threads_before
    });
}

/// Threads of this OS process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Shard `shard`, as a placement.
fn on(shard: u8) -> Placement {
    Placement::Shard(ShardId(shard))
}

/// Waits forever without taking a message out of the mailbox.
async fn hoard<M: Send + 'static>(cx: &Context<M>) {
    cx.recv_match(|_| false).await;
}

/// Receives forever, ignoring what arrives.
async fn receive_forever<M: Send + 'static>(cx: &Context<M>) {
    loop {
        cx.recv().await;
    }
}
