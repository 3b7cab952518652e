//! Process memory: the `max_heap_bytes` limit on arena and mailbox, arena
//! chunks going back to their shard's pool on every way a process can end,
//! and what `process_info` reports.

mod common;

use std::future::pending;
use std::sync::mpsc;
use std::time::Duration;

use common::{down_reason, eventually, Where, PATIENCE};
use foundation::{
    Context, Envelope, ExitReason, Pid, Placement, Runtime, ShardId, SpawnOptions, Status,
};

// ---- heap limit ----------------------------------------------------------

#[test]
fn an_arena_growing_past_max_heap_bytes_ends_the_process_with_heap_limit() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reason = runtime
            .block_on(move |cx: Context<()>| async move {
                let options = SpawnOptions::new()
                    .monitor()
                    .max_heap_bytes(64 * 1024)
                    .placement(place.placement(&cx));
                let grower = cx
                    .spawn_with(options, |cx: Context<()>| async move {
                        // 1 MiB in all, far past the limit; returning would
                        // mean the limit was not enforced.
                        for _ in 0..1024 {
                            cx.alloc_slice_copy(&[7u8; 1024]);
                            cx.checkpoint().await;
                        }
                    })
                    .await
                    .unwrap();
                down_reason(&cx, grower.monitor.unwrap()).await
            })
            .unwrap();
        assert_eq!(reason, ExitReason::HeapLimit, "{place:?}");
    }
}

#[test]
fn a_mailbox_growing_past_max_heap_bytes_ends_the_process_with_heap_limit() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reason = runtime
            .block_on(move |cx: Context<()>| async move {
                let options = SpawnOptions::new()
                    .monitor()
                    .max_heap_bytes(4096)
                    .placement(place.placement(&cx));
                // It never receives.
                let hoarder = cx
                    .spawn_with(options, |_: Context<u64>| pending::<()>())
                    .await
                    .unwrap();
                for n in 0..10_000u64 {
                    cx.send(&hoarder.addr, n);
                }
                down_reason(&cx, hoarder.monitor.unwrap()).await
            })
            .unwrap();
        assert_eq!(reason, ExitReason::HeapLimit, "{place:?}");
    }
}

#[test]
fn a_process_within_max_heap_bytes_runs_to_its_end() {
    let runtime = runtime();
    let reason = runtime
        .block_on(|cx: Context<()>| async move {
            let options = SpawnOptions::new().monitor().max_heap_bytes(1 << 20);
            let modest = cx
                .spawn_with(options, |cx: Context<u64>| async move {
                    for _ in 0..16 {
                        cx.alloc_slice_copy(&[1u8; 1024]);
                    }
                    cx.send(&cx.addr(), 1);
                    cx.recv().await;
                })
                .await
                .unwrap();
            down_reason(&cx, modest.monitor.unwrap()).await
        })
        .unwrap();
    assert_eq!(reason, ExitReason::Normal);
}

#[test]
fn heap_limit_travels_along_links() {
    let runtime = runtime();
    let exit = runtime
        .block_on(|cx: Context<()>| async move {
            cx.trap_exit(true);
            let options = SpawnOptions::new()
                .link()
                .max_heap_bytes(16 * 1024)
                .placement(Where::Other.placement(&cx));
            cx.spawn_with(options, grow_forever).await.unwrap();
            common::exit_signal(&cx).await.reason
        })
        .unwrap();
    assert_eq!(exit, ExitReason::HeapLimit);
}

// ---- the chunk pool ------------------------------------------------------

/// What a holder in [`arena_chunks_return_to_the_pool_on_every_exit_path`]
/// is told to do.
#[derive(Debug)]
enum Holder {
    Return,
    Panic,
    Grow,
}

#[test]
fn arena_chunks_return_to_the_pool_on_every_exit_path() {
    const PER_PATH: usize = 20;
    let runtime = runtime();
    let (ready_tx, ready) = mpsc::channel();
    let mut holders = Vec::new();
    for index in 0..PER_PATH * 5 {
        let ready_tx = ready_tx.clone();
        let options = SpawnOptions::new()
            .placement(Placement::Shard(ShardId((index % 2) as u8)))
            .max_heap_bytes(256 * 1024);
        let holder = runtime
            .spawn_with(options, move |cx: Context<Holder>| async move {
                // Several chunks, and one allocation bigger than a chunk.
                for _ in 0..20 {
                    cx.alloc_slice_copy(&[3u8; 1024]);
                }
                cx.alloc_slice_copy(&[5u8; 64 * 1024]);
                ready_tx.send(()).unwrap();
                match cx.recv().await {
                    Envelope::Msg(Holder::Return) => {}
                    Envelope::Msg(Holder::Panic) => panic!("holder told to panic"),
                    Envelope::Msg(Holder::Grow) => {
                        for _ in 0..1024 {
                            cx.alloc_slice_copy(&[9u8; 1024]);
                            cx.checkpoint().await;
                        }
                    }
                    Envelope::Down(_) | Envelope::Exit(_) => {}
                }
            })
            .unwrap();
        holders.push(holder);
    }
    for _ in &holders {
        ready
            .recv_timeout(PATIENCE)
            .expect("every holder allocates");
    }

    let stats = runtime.shard_stats();
    let total: usize = stats.iter().map(|s| s.pool.chunks_total).sum();
    let free: usize = stats.iter().map(|s| s.pool.chunks_free).sum();
    let large: usize = stats.iter().map(|s| s.pool.large_allocs_live).sum();
    assert!(total > 0, "the holders took chunks");
    assert!(free < total, "chunks in use are not free: {stats:?}");
    assert!(
        large >= holders.len(),
        "one large allocation each: {stats:?}"
    );

    // End them every way there is: return, panic, heap limit, exit signal,
    // kill.
    for (index, holder) in holders.iter().enumerate() {
        match index % 5 {
            0 => runtime.send(holder, Holder::Return),
            1 => runtime.send(holder, Holder::Panic),
            2 => runtime.send(holder, Holder::Grow),
            3 => runtime.exit(holder.pid(), ExitReason::error("told to")),
            _ => runtime.kill(holder.pid()),
        }
    }
    eventually("every holder has ended", || {
        runtime.shard_stats().iter().all(|s| s.processes == 0)
    });
    for stats in runtime.shard_stats() {
        assert_eq!(stats.pool.chunks_free, stats.pool.chunks_total, "{stats:?}");
        assert_eq!(stats.pool.large_allocs_live, 0, "{stats:?}");
    }
}

// ---- process_info ----------------------------------------------------------

#[test]
fn process_info_reports_mailbox_arena_reductions_relations_and_status() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (child, waiting, info, own, after) = runtime
            .block_on(move |cx: Context<()>| async move {
                let me = cx.addr();
                let options = SpawnOptions::new()
                    .link()
                    .monitor()
                    .trap_exit()
                    .placement(place.placement(&cx));
                let child = cx
                    .spawn_with(options, move |cx: Context<u32>| async move {
                        cx.alloc_slice_copy(&[1u8; 1024]);
                        cx.send(&me, ());
                        // Waits without receiving, so messages pile up.
                        cx.sleep(Duration::from_secs(3600)).await;
                    })
                    .await
                    .unwrap();
                cx.recv().await;
                let waiting = cx.process_info(child.addr.pid()).await.unwrap().status;
                // Each arrival wakes it, but it goes back to sleep without
                // receiving.
                for n in 0..3 {
                    cx.send(&child.addr, n);
                }
                let info = cx.process_info(child.addr.pid()).await.unwrap();
                let own = cx.process_info(cx.pid()).await.unwrap();
                // Unlinked first, so that its `Killed` does not end this
                // process too.
                cx.unlink(child.addr.pid());
                cx.kill(child.addr.pid());
                down_reason(&cx, child.monitor.unwrap()).await;
                let after = cx.process_info(child.addr.pid()).await;
                (child.addr.pid(), waiting, info, own, after)
            })
            .unwrap();
        assert_eq!(info.pid, child);
        assert_eq!(waiting, Status::Waiting, "{place:?}");
        assert_eq!(info.mailbox_len, 3, "{place:?}");
        assert!(info.mailbox_bytes > 0, "{info:?}");
        assert!(info.arena_bytes >= 1024, "{info:?}");
        assert_eq!(info.heap_bytes, info.arena_bytes + info.mailbox_bytes);
        assert!(info.reductions >= 1, "it sent a message: {info:?}");
        assert_eq!((info.links, info.monitors, info.monitored_by), (1, 0, 1));
        assert!(info.trap_exit);

        assert_eq!(own.status, Status::Running, "asking about itself");
        assert_eq!((own.links, own.monitors), (1, 1), "{own:?}");
        assert!(!own.trap_exit);
        assert_eq!(after, None, "a dead process has no info ({place:?})");
        assert_eq!(runtime.process_info(child), None);
    }
}

#[test]
fn process_info_sees_runnable_and_exiting_processes() {
    let runtime = runtime();
    let (runnable, exiting, reason) = runtime
        .block_on(|cx: Context<()>| async move {
            let (child, monitor) = cx.spawn_monitor(|_: Context<()>| pending::<()>());
            // It cannot have run yet: this process holds the shard.
            let runnable = cx.process_info(child.pid()).await.unwrap().status;
            cx.exit(child.pid(), ExitReason::error("go"));
            let exiting = cx.process_info(child.pid()).await.unwrap().status;
            (runnable, exiting, down_reason(&cx, monitor).await)
        })
        .unwrap();
    assert_eq!(runnable, Status::Runnable);
    assert_eq!(exiting, Status::Exiting);
    assert_eq!(reason, ExitReason::error("go"));
}

#[test]
fn process_info_from_outside_the_runtime() {
    let runtime = runtime();
    let (tx, rx) = mpsc::channel();
    let process = runtime
        .spawn(move |cx: Context<u8>| async move {
            cx.alloc_str("some text in the arena");
            tx.send(()).unwrap();
            cx.recv_match(|_| false).await;
        })
        .unwrap();
    rx.recv_timeout(PATIENCE).unwrap();
    let waiting = runtime.process_info(process.pid()).unwrap();
    assert_eq!(waiting.status, Status::Waiting);
    runtime.send(&process, 1);
    runtime.send(&process, 2);
    // Sends from this thread are in order with this query's packet.
    let info = runtime.process_info(process.pid()).unwrap();
    assert_eq!(info.pid, process.pid());
    assert_eq!(info.mailbox_len, 2);
    assert!(info.arena_bytes > 0, "{info:?}");
    assert_eq!((info.links, info.monitors, info.monitored_by), (0, 0, 0));

    runtime.kill(process.pid());
    eventually("the killed process is gone", || {
        runtime.process_info(process.pid()).is_none()
    });
    let never = Pid::new(runtime.node(), ShardId(1), Pid::MAX_SLOTS - 1, 0);
    assert_eq!(runtime.process_info(never), None);
}

#[test]
fn process_info_of_a_pid_on_a_shard_that_does_not_exist_is_none() {
    let runtime = runtime();
    let nowhere = Pid::new(runtime.node(), ShardId(9), 0, 0);
    let inside = runtime
        .block_on(move |cx: Context<()>| async move { cx.process_info(nowhere).await })
        .unwrap();
    assert_eq!(inside, None);
    assert_eq!(runtime.process_info(nowhere), None);
}

// ---- helpers ---------------------------------------------------------------

fn runtime() -> Runtime {
    Runtime::builder().shards(2).build().unwrap()
}

/// Allocates until something ends the process.
async fn grow_forever(cx: Context<()>) {
    loop {
        cx.alloc_slice_copy(&[0u64; 512]);
        cx.checkpoint().await;
    }
}
