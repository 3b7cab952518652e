//! The runtime as a whole: scale, the stall watchdog, build and spawn
//! errors, placement, undelivered messages, foreign wakers, and handles
//! that outlive their runtime. Shutdown has its own suite
//! (`sched_shutdown.rs`), since it counts the threads of the OS process.

mod common;

use std::future::{pending, Future};
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{self, Poll, Waker};
use std::time::Duration;

use common::{down_reason, eventually, Where, PATIENCE, QUIET};
use foundation::{
    Addr, BlockOnError, BuildError, Context, Envelope, ExitReason, NodeId, Pid, Placement, Runtime,
    ShardId, SpawnError, SpawnOptions,
};

// ---- scale -----------------------------------------------------------------

#[test]
fn a_million_processes_each_receive_once_and_reply() {
    const TOTAL: usize = 1_000_000;
    const SHARDS: usize = 2;
    const BATCH: usize = 10_000;
    let runtime = Runtime::builder().shards(SHARDS).build().unwrap();
    let replies = runtime
        .block_on(|cx: Context<usize>| async move {
            let me = cx.addr();
            for shard in 0..SHARDS {
                let options = SpawnOptions::new().placement(Placement::Shard(ShardId(shard as u8)));
                cx.spawn_with(options, move |cx: Context<u32>| async move {
                    cx.send(&me, spawn_and_ask(&cx, TOTAL / SHARDS, BATCH).await);
                })
                .await
                .unwrap();
            }
            let mut replies = 0;
            for _ in 0..SHARDS {
                replies += cx.recv().await.into_msg().unwrap();
            }
            replies
        })
        .unwrap();
    assert_eq!(replies, TOTAL);
    eventually("every process has ended", || {
        runtime.shard_stats().iter().all(|s| s.processes == 0)
    });
}

// ---- the stall watchdog ----------------------------------------------------

#[test]
fn the_watchdog_reports_the_process_that_blocks_its_shard() {
    let threshold = Duration::from_millis(50);
    let runtime = Runtime::builder()
        .shards(2)
        .stall_threshold(Some(threshold))
        .build()
        .unwrap();
    let blocker = runtime
        .spawn(|_: Context<()>| async {
            std::thread::sleep(Duration::from_millis(300));
        })
        .unwrap();
    eventually("a stall is reported", || !runtime.stalls().is_empty());
    let stalls = runtime.stalls();
    let stall = stalls
        .iter()
        .find(|stall| stall.pid == blocker.pid())
        .unwrap_or_else(|| panic!("the blocker is not among {stalls:?}"));
    assert_eq!(stall.shard, blocker.pid().shard());
    assert!(stall.blocked_for >= threshold, "{stall:?}");
}

#[test]
fn without_a_watchdog_nothing_is_reported() {
    let runtime = Runtime::builder()
        .shards(1)
        .stall_threshold(None)
        .build()
        .unwrap();
    runtime
        .block_on(|_: Context<()>| async {
            std::thread::sleep(Duration::from_millis(100));
        })
        .unwrap();
    assert!(runtime.stalls().is_empty());
}

// ---- build errors ----------------------------------------------------------

#[test]
fn build_refuses_a_bad_shard_count_or_chunk_size() {
    assert!(matches!(
        Runtime::builder().shards(0).build(),
        Err(BuildError::ShardCount(0))
    ));
    assert!(matches!(
        Runtime::builder().shards(256).build(),
        Err(BuildError::ShardCount(256))
    ));
    assert!(matches!(
        Runtime::builder().shards(1).arena_chunk_bytes(1000).build(),
        Err(BuildError::ArenaChunkBytes(1000))
    ));
}

#[test]
fn node_ids_are_unique_among_live_runtimes() {
    let node = NodeId(4242);
    let first = Runtime::builder().shards(1).node(node).build().unwrap();
    assert_eq!(first.node(), node);
    assert!(matches!(
        Runtime::builder().shards(1).node(node).build(),
        Err(BuildError::NodeIdInUse(taken)) if taken == node
    ));
    // Default ids skip the ones in use.
    let a = Runtime::builder().shards(1).build().unwrap();
    let b = Runtime::builder().shards(1).build().unwrap();
    assert_ne!(a.node(), b.node());
    assert_ne!(a.node(), node);
    // A shut-down runtime gives its id back.
    first.shutdown();
    let again = Runtime::builder().shards(1).node(node).build().unwrap();
    assert_eq!(again.node(), node);
}

// ---- spawning --------------------------------------------------------------

#[test]
fn spawn_on_a_shard_that_does_not_exist_fails() {
    let runtime = runtime();
    let nowhere = Placement::Shard(ShardId(9));
    let outside = runtime.spawn_with(SpawnOptions::new().placement(nowhere), noop);
    assert_eq!(outside.unwrap_err(), SpawnError::NoSuchShard(ShardId(9)));

    let (inside, monitors) = runtime
        .block_on(move |cx: Context<()>| async move {
            let options = SpawnOptions::new().monitor().link().placement(nowhere);
            let inside = cx.spawn_with(options, noop).await.map(|_| ());
            let info = cx.process_info(cx.pid()).await.unwrap();
            (inside, (info.monitors, info.links))
        })
        .unwrap();
    assert_eq!(inside, Err(SpawnError::NoSuchShard(ShardId(9))));
    assert_eq!(monitors, (0, 0), "a failed spawn leaves no relation");
}

#[test]
fn link_and_monitor_need_a_spawning_process() {
    let runtime = runtime();
    for options in [SpawnOptions::new().link(), SpawnOptions::new().monitor()] {
        let spawned = runtime.spawn_with(options, noop);
        assert_eq!(spawned.unwrap_err(), SpawnError::NotInProcess);
    }
}

#[test]
fn spawns_from_outside_go_to_the_least_loaded_shard() {
    let runtime = runtime();
    let on = |shard: u8| SpawnOptions::new().placement(Placement::Shard(ShardId(shard)));
    let first = runtime.spawn_with(on(0), idle).unwrap();
    assert_eq!(first.pid().shard(), ShardId(0));
    let least = runtime.spawn(idle).unwrap();
    assert_eq!(least.pid().shard(), ShardId(1));
    runtime.spawn_with(on(1), idle).unwrap();
    runtime.spawn_with(on(1), idle).unwrap();
    // From outside, `Current` means least loaded too.
    let current = runtime.spawn_with(SpawnOptions::new(), idle).unwrap();
    assert_eq!(current.pid().shard(), ShardId(0));
}

#[test]
fn block_on_returns_the_value_or_how_the_process_ended() {
    let runtime = runtime();
    assert_eq!(runtime.block_on(|_: Context<()>| async { 7 }), Ok(7));
    assert_eq!(
        runtime.block_on(|cx: Context<()>| async move {
            cx.kill(cx.pid());
            cx.yield_now().await;
        }),
        Err(BlockOnError::Exited(ExitReason::Killed))
    );
    assert_eq!(
        runtime.block_on(|_: Context<()>| panics("in block_on")),
        Err::<(), _>(BlockOnError::Exited(ExitReason::Panic(
            "in block_on".into()
        )))
    );
}

// ---- undelivered messages ----------------------------------------------------

#[test]
fn messages_to_dead_processes_are_dropped_and_counted() {
    let runtime = runtime();
    let before = runtime.undelivered();
    let dead_here = runtime
        .block_on(|cx: Context<()>| async move {
            let dead_here = dead_process(&cx, Where::Same).await;
            let dead_there = dead_process(&cx, Where::Other).await;
            cx.send(&dead_here, 1);
            cx.send(&dead_there, 2);
            cx.send_after(&dead_there, 3, Duration::from_millis(1));
            dead_here
        })
        .unwrap();
    runtime.send(&dead_here, 4);
    eventually("four messages are counted", || {
        runtime.undelivered() >= before + 4
    });
    assert_eq!(runtime.undelivered(), before + 4);
}

#[test]
fn a_stale_pid_never_reaches_the_new_occupant_of_its_slot() {
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let (reused, leaked) = runtime
        .block_on(|cx: Context<u32>| async move {
            let me = cx.addr();
            let dead = dead_process(&cx, Where::Same).await;
            // Spawn until a process takes the dead one's slot.
            let mut successor = None;
            for _ in 0..1000 {
                let candidate = cx.spawn(move |cx: Context<u32>| async move {
                    while let Envelope::Msg(n) = cx.recv().await {
                        cx.send(&me, n);
                    }
                });
                if candidate.pid().slot() == dead.pid().slot() {
                    successor = Some(candidate);
                    break;
                }
            }
            let Some(successor) = successor else {
                return (false, None);
            };
            assert_ne!(successor.pid(), dead.pid());
            cx.send(&dead, 13);
            (
                true,
                cx.recv_timeout(QUIET).await.and_then(Envelope::into_msg),
            )
        })
        .unwrap();
    assert!(reused, "no process reused the slot, so nothing was tested");
    assert_eq!(
        leaked, None,
        "a message for the dead process reached its successor"
    );
    assert_eq!(runtime.undelivered(), 1);
}

// ---- wakers ------------------------------------------------------------------

#[test]
fn a_process_awaits_a_future_woken_from_a_thread_outside_the_runtime() {
    let runtime = runtime();
    let slot = Slot::default();
    let setter = slot.clone();
    let thread = std::thread::spawn(move || {
        eventually("the process waits", || setter.has_waker());
        setter.fill(41);
    });
    let value = runtime
        .block_on(move |_: Context<()>| async move { slot.wait().await + 1 })
        .unwrap();
    thread.join().unwrap();
    assert_eq!(value, 42);
}

#[test]
fn a_process_awaits_a_future_woken_from_another_shard() {
    let runtime = runtime();
    let (value, reason) = runtime
        .block_on(|cx: Context<()>| async move {
            let slot = Slot::default();
            let setter = slot.clone();
            let options = SpawnOptions::new()
                .monitor()
                .placement(Where::Other.placement(&cx));
            let waker = cx
                .spawn_with(options, move |cx: Context<()>| async move {
                    while !setter.has_waker() {
                        cx.sleep(Duration::from_millis(1)).await;
                    }
                    setter.fill(8);
                })
                .await
                .unwrap();
            let value = slot.wait().await;
            (value, down_reason(&cx, waker.monitor.unwrap()).await)
        })
        .unwrap();
    assert_eq!((value, reason), (8, ExitReason::Normal));
}

#[test]
fn waking_a_dead_process_is_harmless() {
    let runtime = runtime();
    let slot = Slot::default();
    let watched = slot.clone();
    let reason = runtime
        .block_on(move |cx: Context<()>| async move {
            let (waiter, monitor) = cx.spawn_monitor(move |_: Context<()>| async move {
                watched.wait().await;
            });
            while !slot.has_waker() {
                cx.yield_now().await;
            }
            cx.kill(waiter.pid());
            let reason = down_reason(&cx, monitor).await;
            slot.fill(1); // wakes a process that is gone
            cx.sleep(Duration::from_millis(5)).await;
            reason
        })
        .unwrap();
    assert_eq!(reason, ExitReason::Killed);
    assert_eq!(runtime.block_on(|_: Context<()>| async { 5 }), Ok(5));
}

// ---- handles that outlive their runtime ----------------------------------------

#[test]
fn a_handle_used_after_shutdown_answers_instead_of_blocking() {
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let handle = runtime.handle().clone();
    let some_pid = Pid::new(handle.node(), ShardId(0), 0, 0);
    runtime.shutdown();

    // Each call runs on its own thread, all at once, so that one that
    // blocks does not hide what the others do.
    let (tx, answers) = mpsc::channel();
    let mut expected = Vec::new();
    let ask = |name: &'static str, expect: String, call: Box<dyn FnOnce() -> String + Send>| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((name, call()));
        });
        (name, expect)
    };
    let h = handle.clone();
    expected.push(ask(
        "spawn",
        format!("{:?}", Err::<(), _>(SpawnError::ShuttingDown)),
        Box::new(move || format!("{:?}", h.spawn(noop).map(|_| ()))),
    ));
    let h = handle.clone();
    expected.push(ask(
        "process_info",
        "None".into(),
        Box::new(move || format!("{:?}", h.process_info(some_pid))),
    ));
    let h = handle.clone();
    expected.push(ask(
        "shard_stats",
        "[]".into(),
        Box::new(move || format!("{:?}", h.shard_stats())),
    ));
    let h = handle.clone();
    expected.push(ask(
        "block_on",
        format!(
            "{:?}",
            Err::<u32, _>(BlockOnError::Spawn(SpawnError::ShuttingDown))
        ),
        Box::new(move || format!("{:?}", h.block_on(|_: Context<()>| async { 1u32 }))),
    ));
    let mut got = Vec::new();
    let step = Duration::from_millis(2);
    for _ in 0..PATIENCE.as_millis() / step.as_millis() {
        if got.len() == expected.len() {
            break;
        }
        if let Ok(answer) = answers.recv_timeout(step) {
            got.push(answer);
        }
    }
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(
            |(name, expect)| match got.iter().find(|(answered, _)| answered == name) {
                Some((_, answer)) if answer == expect => None,
                Some((_, answer)) => Some(format!("{name} gave {answer}, not {expect}")),
                None => Some(format!("{name} blocked")),
            },
        )
        .collect();
    assert!(wrong.is_empty(), "Handle after shutdown: {wrong:?}");
}

// ---- helpers -----------------------------------------------------------------

fn runtime() -> Runtime {
    Runtime::builder().shards(2).build().unwrap()
}

/// A process that ends at once.
async fn noop(_: Context<()>) {}

/// Panics with `message`.
async fn panics(message: &'static str) {
    panic!("{message}");
}

/// A process that waits forever.
async fn idle(_: Context<()>) {
    pending::<()>().await;
}

/// Spawns `total` processes in batches of `batch`; each is sent one number
/// and replies with the next. Returns how many replied.
async fn spawn_and_ask(cx: &Context<u32>, total: usize, batch: usize) -> usize {
    let me = cx.addr();
    let mut replies = 0;
    for _ in 0..total / batch {
        for _ in 0..batch {
            let child = cx.spawn(move |cx: Context<u32>| async move {
                if let Envelope::Msg(n) = cx.recv().await {
                    cx.send(&me, n + 1);
                }
            });
            cx.send(&child, 1);
        }
        for _ in 0..batch {
            match cx.recv_timeout(PATIENCE).await {
                Some(Envelope::Msg(2)) => replies += 1,
                Some(_) => {}
                None => return replies,
            }
        }
    }
    replies
}

/// Spawns, where `place` says, a process that ends at once, and returns
/// its address once its `Down` has come.
async fn dead_process<M: Send + 'static>(cx: &Context<M>, place: Where) -> Addr<u32> {
    let options = SpawnOptions::new().monitor().placement(place.placement(cx));
    let spawned = cx
        .spawn_with(options, |_: Context<u32>| async {})
        .await
        .unwrap();
    assert_eq!(
        down_reason(cx, spawned.monitor.unwrap()).await,
        ExitReason::Normal
    );
    spawned.addr
}

/// A value filled in later by anyone, awaited with an ordinary `Waker`: a
/// future from outside the runtime.
#[derive(Clone, Default)]
struct Slot(Arc<Mutex<(Option<u32>, Option<Waker>)>>);

impl Slot {
    fn wait(&self) -> Wait {
        Wait(self.clone())
    }

    fn has_waker(&self) -> bool {
        self.0.lock().unwrap().1.is_some()
    }

    fn fill(&self, value: u32) {
        let waker = {
            let mut state = self.0.lock().unwrap();
            state.0 = Some(value);
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Resolves to the value of a [`Slot`].
struct Wait(Slot);

impl Future for Wait {
    type Output = u32;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<u32> {
        let mut state = (self.0).0.lock().unwrap();
        match state.0.take() {
            Some(value) => Poll::Ready(value),
            None => {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
