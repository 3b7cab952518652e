//! Receiving: selective receive, timeouts, `try_recv`, message order
//! between one sender and one receiver, the reduction budget, and timers
//! (`send_after`, `cancel_timer`, `sleep`).

mod common;

use std::future::pending;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{down_reason, eventually, exit_signal, Where, PATIENCE, QUIET};
use foundation::{
    Context, Envelope, Exit, ExitReason, Placement, Runtime, ShardId, SpawnOptions, TimerRef,
};

// ---- selective receive -----------------------------------------------------

#[test]
fn recv_match_takes_the_first_match_and_keeps_the_rest_in_order() {
    let runtime = runtime();
    let (matched, rest) = runtime
        .block_on(|cx: Context<u32>| async move {
            for n in 1..=6 {
                cx.send(&cx.addr(), n);
            }
            let mut matched = Vec::new();
            for _ in 0..2 {
                let envelope = cx
                    .recv_match(|envelope| matches!(envelope, Envelope::Msg(n) if n % 3 == 0))
                    .await;
                matched.push(envelope.into_msg().unwrap());
            }
            (matched, drain(&cx))
        })
        .unwrap();
    assert_eq!(matched, [3, 6]);
    assert_eq!(rest, [1, 2, 4, 5]);
}

#[test]
fn recv_match_waits_for_a_match_that_arrives_after_other_messages() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (matched, rest) = runtime
            .block_on(move |cx: Context<u32>| async move {
                let me = cx.addr();
                // Each message arrives on its own, so the receive is woken
                // by non-matching ones before the match comes.
                let options = SpawnOptions::new().placement(place.placement(&cx));
                cx.spawn_with(options, move |cx: Context<()>| async move {
                    for n in [1, 2, 30, 4] {
                        cx.send(&me, n);
                        cx.sleep(Duration::from_millis(2)).await;
                    }
                })
                .await
                .unwrap();
                let matched = cx
                    .recv_match(|envelope| matches!(envelope, Envelope::Msg(30)))
                    .await
                    .into_msg();
                let mut rest = Vec::new();
                for _ in 0..3 {
                    rest.push(cx.recv().await.into_msg().unwrap());
                }
                (matched, rest)
            })
            .unwrap();
        assert_eq!(matched, Some(30), "{place:?}");
        assert_eq!(rest, [1, 2, 4], "{place:?}");
    }
}

#[test]
fn recv_match_can_pick_a_down_from_behind_messages() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (reason, rest) = runtime
            .block_on(move |cx: Context<u32>| async move {
                let me = cx.addr();
                let options = SpawnOptions::new()
                    .monitor()
                    .placement(place.placement(&cx));
                let child = cx
                    .spawn_with(options, move |cx: Context<()>| async move {
                        cx.send(&me, 1);
                        cx.send(&me, 2);
                    })
                    .await
                    .unwrap();
                let reason = down_reason(&cx, child.monitor.unwrap()).await;
                (reason, drain(&cx))
            })
            .unwrap();
        assert_eq!(reason, ExitReason::Normal, "{place:?}");
        assert_eq!(
            rest,
            [1, 2],
            "messages sent before the end stay ({place:?})"
        );
    }
}

#[test]
fn recv_match_timeout_gives_up_and_leaves_the_mailbox_alone() {
    let runtime = runtime();
    let (found, rest) = runtime
        .block_on(|cx: Context<u32>| async move {
            for n in [1, 2, 3] {
                cx.send(&cx.addr(), n);
            }
            let found = cx
                .recv_match_timeout(
                    |envelope| matches!(envelope, Envelope::Msg(9)),
                    Duration::from_millis(20),
                )
                .await;
            (found.is_some(), drain(&cx))
        })
        .unwrap();
    assert!(!found);
    assert_eq!(rest, [1, 2, 3]);
}

// ---- timeouts and try_recv -------------------------------------------------

#[test]
fn recv_timeout_returns_none_after_the_timeout_with_an_empty_mailbox() {
    let runtime = runtime();
    let timeout = Duration::from_millis(20);
    let (received, waited, leftover) = runtime
        .block_on(move |cx: Context<u32>| async move {
            let start = cx.now();
            let received = cx.recv_timeout(timeout).await;
            (
                received.is_some(),
                cx.now() - start,
                cx.try_recv().is_some(),
            )
        })
        .unwrap();
    assert!(!received);
    assert!(waited >= timeout, "a timeout never fires early: {waited:?}");
    assert!(!leftover);
}

#[test]
fn recv_timeout_returns_a_message_that_arrives_in_time() {
    for place in Where::BOTH {
        let runtime = runtime();
        let received = runtime
            .block_on(move |cx: Context<u32>| async move {
                let me = cx.addr();
                let options = SpawnOptions::new().placement(place.placement(&cx));
                cx.spawn_with(options, move |cx: Context<()>| async move {
                    cx.sleep(Duration::from_millis(10)).await;
                    cx.send(&me, 5);
                })
                .await
                .unwrap();
                cx.recv_timeout(PATIENCE).await.and_then(Envelope::into_msg)
            })
            .unwrap();
        assert_eq!(received, Some(5), "{place:?}");
        // The receive's timer went with it.
        eventually("every process has ended", || processes(&runtime) == 0);
        let timers: usize = runtime.shard_stats().iter().map(|s| s.timers).sum();
        assert_eq!(timers, 0, "{place:?}");
    }
}

#[test]
fn try_recv_takes_what_is_there_without_waiting() {
    let runtime = runtime();
    let (empty, taken, reason, after) = runtime
        .block_on(|cx: Context<u32>| async move {
            let empty = cx.try_recv().is_none();
            cx.send(&cx.addr(), 1);
            cx.send(&cx.addr(), 2);
            let taken = [cx.try_recv(), cx.try_recv()].map(|e| e.and_then(Envelope::into_msg));
            cx.trap_exit(true);
            cx.exit(cx.pid(), ExitReason::error("note"));
            let reason = match cx.try_recv() {
                Some(Envelope::Exit(exit)) => Some(exit.reason),
                _ => None,
            };
            (empty, taken, reason, cx.try_recv().is_none())
        })
        .unwrap();
    assert!(empty);
    assert_eq!(taken, [Some(1), Some(2)]);
    assert_eq!(reason, Some(ExitReason::error("note")));
    assert!(after);
}

// ---- order -----------------------------------------------------------------

#[test]
fn messages_from_one_sender_arrive_in_order() {
    const COUNT: u64 = 100_000;
    for place in Where::BOTH {
        let runtime = runtime();
        let (received, first_out_of_order) = runtime
            .block_on(move |cx: Context<u64>| async move {
                let me = cx.addr();
                let options = SpawnOptions::new().placement(place.placement(&cx));
                cx.spawn_with(options, move |cx: Context<()>| async move {
                    for n in 0..COUNT {
                        cx.send(&me, n);
                    }
                })
                .await
                .unwrap();
                let mut first_out_of_order = None;
                for expected in 0..COUNT {
                    let n = cx.recv().await.into_msg().unwrap();
                    if n != expected && first_out_of_order.is_none() {
                        first_out_of_order = Some((expected, n));
                    }
                }
                (COUNT, first_out_of_order)
            })
            .unwrap();
        assert_eq!(received, COUNT);
        assert_eq!(first_out_of_order, None, "(expected, got) for {place:?}");
    }
}

#[test]
fn messages_overflowing_a_small_ring_arrive_in_order() {
    // Four packets fit in a ring; the rest wait in the sender's overflow
    // queue until the receiving shard makes room.
    const COUNT: u64 = 20_000;
    let runtime = Runtime::builder()
        .shards(2)
        .ring_capacity(4)
        .build()
        .unwrap();
    let first_out_of_order = runtime
        .block_on(|cx: Context<u64>| async move {
            let me = cx.addr();
            let options = SpawnOptions::new().placement(Where::Other.placement(&cx));
            cx.spawn_with(options, move |cx: Context<()>| async move {
                for n in 0..COUNT {
                    cx.send(&me, n);
                    if n % 1000 == 0 {
                        cx.yield_now().await;
                    }
                }
            })
            .await
            .unwrap();
            let mut first_out_of_order = None;
            for expected in 0..COUNT {
                match cx.recv_timeout(PATIENCE).await {
                    Some(Envelope::Msg(n)) if n == expected => {}
                    other => {
                        first_out_of_order = Some((expected, other.and_then(Envelope::into_msg)));
                        break;
                    }
                }
            }
            first_out_of_order
        })
        .unwrap();
    assert_eq!(first_out_of_order, None, "(expected, got)");
}

#[test]
fn messages_from_outside_arrive_in_order() {
    const COUNT: u64 = 20_000;
    let runtime = runtime();
    let (tx, rx) = mpsc::channel();
    let receiver = runtime
        .spawn(move |cx: Context<u64>| async move {
            let mut out_of_order = None;
            for expected in 0..COUNT {
                let n = cx.recv().await.into_msg().unwrap();
                if n != expected && out_of_order.is_none() {
                    out_of_order = Some((expected, n));
                }
            }
            tx.send(out_of_order).unwrap();
        })
        .unwrap();
    for n in 0..COUNT {
        runtime.send(&receiver, n);
    }
    assert_eq!(rx.recv_timeout(PATIENCE), Ok(None));
}

/// `Handle::send_all` delivers a batch in order, whether the receiver is
/// on the sender's shard (one mailbox append), on another shard or
/// reached from outside the runtime; a batch for a process that is gone
/// is counted as undelivered, message by message.
#[test]
fn a_batch_sent_at_once_arrives_in_order_wherever_it_comes_from() {
    const BATCH: u64 = 1000;
    let runtime = runtime();
    let (tx, rx) = mpsc::channel();
    let on = |shard| SpawnOptions::new().placement(Placement::Shard(ShardId(shard)));
    let receiver = runtime
        .spawn_with(on(0), move |cx: Context<u64>| async move {
            let mut seen = Vec::new();
            while seen.len() < 3 * BATCH as usize {
                seen.push(cx.recv().await.into_msg().unwrap());
            }
            tx.send(seen).unwrap();
        })
        .unwrap();
    // Batch 0 from the receiver's shard, 1 from the other, 2 from outside.
    for shard in [0, 1] {
        runtime
            .spawn_with(on(shard), move |cx: Context<()>| async move {
                let first = BATCH * u64::from(shard);
                cx.runtime().send_all(&receiver, first..first + BATCH);
            })
            .unwrap();
    }
    runtime.handle().send_all(&receiver, 2 * BATCH..3 * BATCH);
    let seen = rx.recv_timeout(PATIENCE).unwrap();
    for batch in 0..3 {
        let range = batch * BATCH..(batch + 1) * BATCH;
        let arrived = seen.iter().copied().filter(|n| range.contains(n));
        assert!(
            arrived.eq(range.clone()),
            "batch {batch} whole and in order"
        );
    }

    eventually("the receiver ends", || {
        runtime.process_info(receiver.pid()).is_none()
    });
    let before = runtime.undelivered();
    runtime.handle().send_all(&receiver, 0..10);
    runtime
        .block_on(move |cx: Context<()>| async move {
            cx.runtime().send_all(&receiver, 0..5);
        })
        .unwrap();
    eventually("each lost message is counted", || {
        runtime.undelivered() == before + 15
    });
}

#[test]
fn messages_then_the_exit_signal_of_one_sender_arrive_in_order() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (messages, exit) = runtime
            .block_on(move |cx: Context<u32>| async move {
                cx.trap_exit(true);
                let me = cx.addr();
                let options = SpawnOptions::new().link().placement(place.placement(&cx));
                let sender = cx
                    .spawn_with(options, move |cx: Context<()>| async move {
                        for n in 0..1000 {
                            cx.send(&me, n);
                        }
                        ExitReason::error("done")
                    })
                    .await
                    .unwrap()
                    .addr;
                let mut messages = Vec::new();
                let exit = loop {
                    match cx.recv_timeout(PATIENCE).await {
                        Some(Envelope::Msg(n)) => messages.push(n),
                        Some(Envelope::Exit(exit)) => break Some((sender.pid(), exit)),
                        _ => break None,
                    }
                };
                (messages, exit)
            })
            .unwrap();
        assert_eq!(messages, (0..1000).collect::<Vec<_>>(), "{place:?}");
        let (sender, exit) = exit.expect("the exit signal arrives");
        assert_eq!(
            exit,
            Exit {
                from: sender,
                reason: ExitReason::error("done")
            }
        );
    }
}

// ---- fairness --------------------------------------------------------------

#[test]
fn a_full_mailbox_does_not_keep_other_processes_from_running() {
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let ran_meanwhile = runtime
        .block_on(|cx: Context<u32>| async move {
            for n in 0..10_000 {
                cx.send(&cx.addr(), n);
            }
            let ran = Arc::new(AtomicBool::new(false));
            let flag = ran.clone();
            cx.spawn(move |_: Context<()>| async move { flag.store(true, Ordering::SeqCst) });
            // Every message is ready at once; the budget still makes the
            // receiving loop yield to the sibling.
            for _ in 0..10_000 {
                cx.recv().await;
            }
            ran.load(Ordering::SeqCst)
        })
        .unwrap();
    assert!(ran_meanwhile);
}

#[test]
fn checkpoints_let_other_processes_run() {
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let ran_meanwhile = runtime
        .block_on(|cx: Context<()>| async move {
            let ran = Arc::new(AtomicBool::new(false));
            let flag = ran.clone();
            cx.spawn(move |_: Context<()>| async move { flag.store(true, Ordering::SeqCst) });
            for _ in 0..10_000 {
                cx.checkpoint().await;
            }
            ran.load(Ordering::SeqCst)
        })
        .unwrap();
    assert!(ran_meanwhile);
}

// ---- timers ----------------------------------------------------------------

#[test]
fn send_after_delivers_exactly_once() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (first, second) = runtime
            .block_on(move |cx: Context<u32>| async move {
                // The timer is set here and fires to a forwarder placed
                // where `place` says.
                let me = cx.addr();
                let options = SpawnOptions::new().placement(place.placement(&cx));
                let forwarder = cx
                    .spawn_with(options, move |cx: Context<u32>| async move {
                        while let Envelope::Msg(n) = cx.recv().await {
                            cx.send(&me, n);
                        }
                    })
                    .await
                    .unwrap()
                    .addr;
                cx.send_after(&forwarder, 7, Duration::from_millis(5));
                let first = cx.recv_timeout(PATIENCE).await.and_then(Envelope::into_msg);
                let second = cx.recv_timeout(QUIET).await.is_some();
                (first, second)
            })
            .unwrap();
        assert_eq!(first, Some(7), "{place:?}");
        assert!(!second, "delivered twice ({place:?})");
    }
}

#[test]
fn send_after_with_no_delay_still_delivers() {
    let runtime = runtime();
    let received = runtime
        .block_on(|cx: Context<u32>| async move {
            cx.send_after(&cx.addr(), 4, Duration::ZERO);
            cx.recv_timeout(PATIENCE).await.and_then(Envelope::into_msg)
        })
        .unwrap();
    assert_eq!(received, Some(4));
}

#[test]
fn a_cancelled_timer_never_delivers() {
    let runtime = runtime();
    let (cancelled, again, received, leftover) = runtime
        .block_on(|cx: Context<u32>| async move {
            let timer = cx.send_after(&cx.addr(), 1, Duration::from_millis(20));
            let cancelled = cx.cancel_timer(timer);
            let again = cx.cancel_timer(timer);
            // A later timer shows when the cancelled one would have fired.
            cx.send_after(&cx.addr(), 2, Duration::from_millis(60));
            let received = cx.recv().await.into_msg();
            (cancelled, again, received, cx.try_recv().is_some())
        })
        .unwrap();
    assert!(cancelled, "the timer was pending");
    assert!(!again, "a timer is cancelled once");
    assert_eq!(received, Some(2));
    assert!(!leftover);
}

#[test]
fn cancel_after_firing_returns_false_and_touches_no_other_timer() {
    let runtime = runtime();
    let (first, cancelled, second) = runtime
        .block_on(|cx: Context<u32>| async move {
            let fired = cx.send_after(&cx.addr(), 1, Duration::from_millis(1));
            let first = cx.recv().await.into_msg();
            // The next timer may reuse the fired one's slot in the wheel.
            cx.send_after(&cx.addr(), 2, Duration::from_millis(10));
            let cancelled = cx.cancel_timer(fired);
            let second = cx.recv_timeout(PATIENCE).await.and_then(Envelope::into_msg);
            (first, cancelled, second)
        })
        .unwrap();
    assert_eq!(first, Some(1));
    assert!(!cancelled);
    assert_eq!(second, Some(2), "a stale cancel hit a newer timer");
}

#[test]
fn a_timer_cannot_be_cancelled_from_another_shard() {
    let runtime = runtime();
    let (cancelled, delivered) = runtime
        .block_on(|cx: Context<u32>| async move {
            let me = cx.addr();
            let timer = cx.send_after(&me, 3, Duration::from_millis(20));
            let options = SpawnOptions::new()
                .monitor()
                .placement(Where::Other.placement(&cx));
            let other = cx
                .spawn_with(options, move |cx: Context<TimerRef>| async move {
                    let timer = cx.recv().await.into_msg().unwrap();
                    if cx.cancel_timer(timer) {
                        ExitReason::error("cancelled a timer of another shard")
                    } else {
                        ExitReason::Normal
                    }
                })
                .await
                .unwrap();
            cx.send(&other.addr, timer);
            let cancelled = down_reason(&cx, other.monitor.unwrap()).await;
            (cancelled, cx.recv().await.into_msg())
        })
        .unwrap();
    assert_eq!(cancelled, ExitReason::Normal);
    assert_eq!(delivered, Some(3));
}

#[test]
fn sleep_waits_at_least_its_duration_and_keeps_arrivals() {
    let runtime = runtime();
    let nap = Duration::from_millis(30);
    let (slept, kept) = runtime
        .block_on(move |cx: Context<u32>| async move {
            let me = cx.addr();
            cx.spawn(move |cx: Context<()>| async move { cx.send(&me, 9) });
            let start = cx.now();
            cx.sleep(nap).await;
            (cx.now() - start, drain(&cx))
        })
        .unwrap();
    assert!(slept >= nap, "a sleep never ends early: {slept:?}");
    assert_eq!(kept, [9], "a message does not end a sleep, and stays");
}

#[test]
fn a_killed_sleeper_leaves_no_timer_behind() {
    let runtime = runtime();
    let reason = runtime
        .block_on(|cx: Context<()>| async move {
            let (sleeper, monitor) = cx.spawn_monitor(|cx: Context<()>| async move {
                cx.sleep(Duration::from_secs(3600)).await;
            });
            cx.yield_now().await; // let it arm its timer
            cx.kill(sleeper.pid());
            down_reason(&cx, monitor).await
        })
        .unwrap();
    assert_eq!(reason, ExitReason::Killed);
    eventually("every process has ended", || processes(&runtime) == 0);
    let timers: usize = runtime.shard_stats().iter().map(|s| s.timers).sum();
    assert_eq!(timers, 0);
}

#[test]
fn a_trapped_exit_wakes_a_receive() {
    let runtime = runtime();
    let exit = runtime
        .block_on(|cx: Context<()>| async move {
            cx.trap_exit(true);
            let me = cx.pid();
            cx.spawn(move |cx: Context<()>| async move {
                cx.exit(me, ExitReason::error("wake up"));
                pending::<()>().await;
            });
            exit_signal(&cx).await.reason
        })
        .unwrap();
    assert_eq!(exit, ExitReason::error("wake up"));
}

// ---- helpers ---------------------------------------------------------------

fn runtime() -> Runtime {
    Runtime::builder().shards(2).build().unwrap()
}

/// Takes every message left in the mailbox, in order.
fn drain(cx: &Context<u32>) -> Vec<u32> {
    std::iter::from_fn(|| cx.try_recv())
        .filter_map(Envelope::into_msg)
        .collect()
}

/// Live processes across the runtime.
fn processes(runtime: &Runtime) -> usize {
    runtime.shard_stats().iter().map(|s| s.processes).sum()
}
