//! Process priorities: a shard runs its `High` processes first, then
//! `Normal` ones, with `Low` ones interleaved so they are never starved.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use foundation::{Context, Priority, Runtime, SpawnOptions};

/// Processes made runnable together run by priority, in spawn order
/// within a priority.
#[test]
fn runnable_processes_run_by_priority() {
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let order = runtime
        .block_on(|cx: Context<()>| async move {
            let log = Arc::new(Mutex::new(Vec::new()));
            let spawned = [
                ("normal 1", Priority::Normal),
                ("low", Priority::Low),
                ("high 1", Priority::High),
                ("normal 2", Priority::Normal),
                ("high 2", Priority::High),
            ];
            for (name, priority) in spawned {
                let log = log.clone();
                let options = SpawnOptions::new().priority(priority);
                // Spawned on this shard, so none runs before this process
                // waits: all five are runnable at once.
                cx.spawn_with(options, move |_: Context<()>| async move {
                    log.lock().unwrap().push(name);
                })
                .await
                .unwrap();
            }
            while log.lock().unwrap().len() < spawned.len() {
                cx.yield_now().await;
            }
            let order = log.lock().unwrap().clone();
            order
        })
        .unwrap();
    assert_eq!(order, ["high 1", "high 2", "normal 1", "normal 2", "low"]);
}

/// A `Low` process runs even while `Normal` ones never stop yielding: it
/// runs after a few of their polls, not once they are done.
#[test]
fn low_priority_is_not_starved_by_busy_normal_processes() {
    const BUSY: usize = 16;
    const YIELDS: usize = 10_000;
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let polls_before_low = runtime
        .block_on(|cx: Context<Option<usize>>| async move {
            let polls = Arc::new(AtomicUsize::new(0));
            for _ in 0..BUSY {
                let polls = polls.clone();
                cx.spawn(move |cx: Context<()>| async move {
                    for _ in 0..YIELDS {
                        polls.fetch_add(1, Ordering::Relaxed);
                        cx.yield_now().await;
                    }
                });
            }
            let low = SpawnOptions::new().priority(Priority::Low);
            let me = cx.addr();
            cx.spawn_with(low, move |cx: Context<()>| async move {
                cx.send(&me, Some(polls.load(Ordering::Relaxed)));
            })
            .await
            .unwrap();
            cx.recv().await.into_msg().flatten()
        })
        .unwrap();
    let polls_before_low = polls_before_low.expect("the low process reports");
    assert!(
        polls_before_low < BUSY * 2,
        "the low process ran after {polls_before_low} polls of busy ones"
    );
}

/// `set_priority` changes how the process is queued from then on, and
/// `process_info` reports it.
#[test]
fn a_process_can_change_its_priority() {
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let (before, after) = runtime
        .block_on(|cx: Context<()>| async move {
            let before = cx.set_priority(Priority::High);
            let after = cx.process_info(cx.pid()).await.map(|info| info.priority);
            (before, after)
        })
        .unwrap();
    assert_eq!(before, Priority::Normal);
    assert_eq!(after, Some(Priority::High));
}

/// A `Low` process's poll gets an eighth of the reduction budget, so a
/// bulk transfer yields its shard in shorter stretches; `Normal` and
/// `High` get all of it.
#[test]
fn a_low_priority_poll_has_an_eighth_of_the_budget() {
    const REDUCTIONS: u32 = 800;
    let runtime = Runtime::builder()
        .shards(1)
        .reductions(REDUCTIONS)
        .build()
        .unwrap();
    let charges_per_poll = |priority: Priority| {
        runtime
            .block_on(move |cx: Context<()>| async move {
                let (report, charges) = foundation::oneshot::channel();
                let options = SpawnOptions::new().priority(priority);
                cx.spawn_with(options, move |_: Context<()>| async move {
                    // One reduction at a time, until the poll's budget is
                    // used up.
                    let mut charged = 1;
                    while !foundation::coop::charge(1) {
                        charged += 1;
                    }
                    report.send(charged);
                })
                .await
                .unwrap();
                charges.await.unwrap()
            })
            .unwrap()
    };
    assert_eq!(charges_per_poll(Priority::Normal), REDUCTIONS);
    assert_eq!(charges_per_poll(Priority::High), REDUCTIONS);
    assert_eq!(charges_per_poll(Priority::Low), REDUCTIONS / 8);
}

thread_local! {
    /// What the poll-end hook saw: one entry per run.
    static HOOK_RUNS: std::cell::RefCell<Vec<&'static str>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn record_poll_end() {
    HOOK_RUNS.with(|runs| runs.borrow_mut().push("hook"));
}

/// A hook deferred with `coop::at_poll_end` runs once per deferral, on
/// the process's shard, after its poll and before it runs again; outside a
/// process nothing is deferred.
#[test]
fn a_poll_end_hook_runs_after_the_poll_that_deferred_it() {
    assert!(!foundation::coop::at_poll_end(record_poll_end));
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let runs = runtime
        .block_on(|cx: Context<()>| async move {
            let log = |event| HOOK_RUNS.with(|runs| runs.borrow_mut().push(event));
            assert!(foundation::coop::at_poll_end(record_poll_end));
            assert!(foundation::coop::at_poll_end(record_poll_end));
            log("poll 1");
            cx.yield_now().await;
            log("poll 2");
            assert!(foundation::coop::at_poll_end(record_poll_end));
            cx.yield_now().await;
            log("poll 3");
            cx.yield_now().await;
            HOOK_RUNS.with(|runs| runs.borrow().clone())
        })
        .unwrap();
    assert_eq!(runs, ["poll 1", "hook", "hook", "poll 2", "hook", "poll 3"]);
}
