//! Process ecosystems: a coordinator and its workers as one unit
//! (`foundation::ecosystem`).

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::Duration;

use foundation::ecosystem::{
    spawn_ecosystem, Distribution, EcosystemError, EcosystemSpec, PlacementStrategy, WorkerEvent,
};
use foundation::{Context, Envelope, ExitReason, Pid, Runtime};

/// The coordinator's mailbox: only what the manager tells it.
#[derive(Debug)]
struct Event(WorkerEvent);

impl From<WorkerEvent> for Event {
    fn from(event: WorkerEvent) -> Event {
        Event(event)
    }
}

fn runtime() -> Runtime {
    Runtime::builder().shards(2).build().unwrap()
}

async fn crash_on_start(_: Context<u64>) {
    panic!("worker cannot start")
}

async fn idle_worker(cx: Context<u64>) {
    while let Envelope::Msg(_) = cx.recv().await {}
}

/// A coordinator that forwards every event it is told to `events`.
fn reporting_coordinator(
    events: mpsc::Sender<WorkerEvent>,
) -> impl Fn(Context<Event>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
       + Clone
       + Send
       + Sync
       + 'static {
    let events = std::sync::Arc::new(std::sync::Mutex::new(events));
    move |cx: Context<Event>| {
        let events = events.lock().unwrap().clone();
        Box::pin(async move {
            while let Envelope::Msg(Event(event)) = cx.recv().await {
                let _ = events.send(event);
            }
        })
    }
}

#[test]
fn workers_start_scale_down_and_up_and_stop() {
    let runtime = runtime();
    let (counts, manager_reason) = runtime
        .block_on(|cx: Context<()>| async move {
            cx.trap_exit(true);
            let spec = EcosystemSpec::new(
                |cx: Context<Event>| async move { while let Envelope::Msg(_) = cx.recv().await {} },
                idle_worker,
                1000,
            );
            let ecosystem = spawn_ecosystem(&cx, spec).unwrap();
            let mut counts = vec![ecosystem.stats(&cx).await.unwrap().workers];
            ecosystem.scale(&cx, 100).await.unwrap();
            counts.push(ecosystem.workers(&cx).await.unwrap().len());
            ecosystem.scale(&cx, 1500).await.unwrap();
            counts.push(ecosystem.stats(&cx).await.unwrap().workers);
            let monitor = cx.monitor(ecosystem.pid());
            ecosystem.stop(&cx).await.unwrap();
            let reason = loop {
                if let Envelope::Down(down) = cx.recv().await {
                    if down.monitor == monitor {
                        break down.reason;
                    }
                }
            };
            (counts, reason)
        })
        .unwrap();
    assert_eq!(counts, vec![1000, 100, 1500]);
    assert_eq!(manager_reason, ExitReason::Normal);
}

#[test]
fn killed_workers_are_replaced_and_the_coordinator_sees_every_exit() {
    let runtime = runtime();
    let (events_tx, events) = mpsc::channel();
    let (killed, counts) = runtime
        .block_on(move |cx: Context<()>| async move {
            let spec = EcosystemSpec::new(reporting_coordinator(events_tx), idle_worker, 50)
                .intensity(1000, Duration::from_secs(60));
            let ecosystem = spawn_ecosystem(&cx, spec).unwrap();
            let mut killed = Vec::new();
            let mut counts = Vec::new();
            let mut seed = 0x9e37_79b9_u64;
            for round in 0..20 {
                let workers = ecosystem.workers(&cx).await.unwrap();
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let victim = workers[(seed % workers.len() as u64) as usize].pid();
                cx.exit(victim, ExitReason::error(format!("kill {round}")));
                killed.push(victim);
                // Wait (boundedly) until the replacement is in.
                let mut restored = false;
                for _ in 0..1000 {
                    let now = ecosystem.workers(&cx).await.unwrap();
                    if now.len() == 50 && !now.iter().any(|w| w.pid() == victim) {
                        restored = true;
                        break;
                    }
                    cx.sleep(Duration::from_millis(1)).await;
                }
                assert!(restored, "round {round}: the worker count was not restored");
                counts.push(ecosystem.stats(&cx).await.unwrap().workers);
            }
            let restarts = ecosystem.stats(&cx).await.unwrap().restarts;
            assert_eq!(restarts, 20);
            (killed, counts)
        })
        .unwrap();
    assert!(counts.iter().all(|&count| count == 50), "{counts:?}");
    let mut exited = HashSet::new();
    let mut started = 0;
    while let Ok(event) = events.recv_timeout(Duration::from_secs(5)) {
        match event {
            WorkerEvent::Exited { pid, reason } => {
                assert!(matches!(reason, ExitReason::Error(_)), "{reason:?}");
                exited.insert(pid);
            }
            WorkerEvent::Started { .. } => started += 1,
        }
        if exited.len() == killed.len() && started == killed.len() {
            break;
        }
    }
    let killed: HashSet<Pid> = killed.into_iter().collect();
    assert_eq!(
        exited, killed,
        "the coordinator saw exactly the workers that were killed"
    );
    assert_eq!(started, 20, "the coordinator saw every replacement start");
}

#[test]
fn a_crashed_coordinator_is_restarted() {
    let runtime = runtime();
    let (before, after) = runtime
        .block_on(|cx: Context<()>| async move {
            let spec = EcosystemSpec::new(
                |cx: Context<Event>| async move { while let Envelope::Msg(_) = cx.recv().await {} },
                idle_worker,
                3,
            );
            let ecosystem = spawn_ecosystem(&cx, spec).unwrap();
            let before = ecosystem.coordinator(&cx).await.unwrap().pid();
            cx.exit(before, ExitReason::error("coordinator crash"));
            let mut after = before;
            for _ in 0..1000 {
                after = ecosystem.coordinator(&cx).await.unwrap().pid();
                if after != before {
                    break;
                }
                cx.sleep(Duration::from_millis(1)).await;
            }
            (before, after)
        })
        .unwrap();
    assert_ne!(before, after);
}

#[test]
fn a_crash_storm_ends_in_escalation() {
    let runtime = runtime();
    let reason = runtime
        .block_on(|cx: Context<()>| async move {
            cx.trap_exit(true);
            let spec = EcosystemSpec::new(
                |cx: Context<Event>| async move { while let Envelope::Msg(_) = cx.recv().await {} },
                crash_on_start,
                5,
            )
            .intensity(10, Duration::from_secs(60));
            let ecosystem = spawn_ecosystem(&cx, spec).unwrap();
            let monitor = cx.monitor(ecosystem.pid());
            match cx
                .recv_match_timeout(
                    |e| matches!(e, Envelope::Down(d) if d.monitor == monitor),
                    Duration::from_secs(10),
                )
                .await
            {
                Some(Envelope::Down(down)) => down.reason,
                other => panic!("the manager did not give up: {other:?}"),
            }
        })
        .unwrap();
    assert_eq!(
        reason,
        ExitReason::error(foundation::supervision::INTENSITY_EXCEEDED)
    );
}

#[test]
fn distribution_beyond_this_node_is_refused_with_a_typed_error() {
    let runtime = runtime();
    let refused = runtime
        .block_on(|cx: Context<()>| async move {
            let distribution = Distribution::ClusterWide {
                placement: PlacementStrategy::RoundRobin,
            };
            let spec = EcosystemSpec::new(
                |cx: Context<Event>| async move { while let Envelope::Msg(_) = cx.recv().await {} },
                idle_worker,
                3,
            )
            .distribution(distribution.clone());
            spawn_ecosystem(&cx, spec).err() == Some(EcosystemError::Unsupported(distribution))
        })
        .unwrap();
    assert!(refused);
}

#[test]
fn one_for_all_restarts_the_whole_unit_when_a_worker_ends() {
    let runtime = runtime();
    let (before, after) = runtime
        .block_on(|cx: Context<()>| async move {
            let spec = EcosystemSpec::new(
                |cx: Context<Event>| async move { while let Envelope::Msg(_) = cx.recv().await {} },
                idle_worker,
                5,
            )
            .strategy(foundation::supervision::Strategy::OneForAll);
            let ecosystem = spawn_ecosystem(&cx, spec).unwrap();
            let pids = |coordinator: Pid, workers: Vec<foundation::Addr<u64>>| {
                let mut all: Vec<Pid> = workers.iter().map(|w| w.pid()).collect();
                all.push(coordinator);
                all
            };
            let before = pids(
                ecosystem.coordinator(&cx).await.unwrap().pid(),
                ecosystem.workers(&cx).await.unwrap(),
            );
            cx.exit(before[0], ExitReason::error("one worker crashes"));
            let mut after = before.clone();
            for _ in 0..1000 {
                after = pids(
                    ecosystem.coordinator(&cx).await.unwrap().pid(),
                    ecosystem.workers(&cx).await.unwrap(),
                );
                if after.len() == before.len() && after.iter().all(|pid| !before.contains(pid)) {
                    break;
                }
                cx.sleep(Duration::from_millis(1)).await;
            }
            (before, after)
        })
        .unwrap();
    assert_eq!(after.len(), 6);
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "every process of the unit was replaced: {before:?} -> {after:?}"
    );
}

#[test]
fn an_ecosystem_runs_under_a_supervisor_that_restarts_its_manager() {
    use foundation::supervision::{Strategy, SupervisorSpec};
    let runtime = runtime();
    let (first, second, workers) = runtime
        .block_on(|cx: Context<()>| async move {
            let ecosystem = EcosystemSpec::new(
                |cx: Context<Event>| async move { while let Envelope::Msg(_) = cx.recv().await {} },
                idle_worker,
                7,
            );
            let supervisor = SupervisorSpec::new(Strategy::OneForOne)
                .child(ecosystem.into_child_spec("pool"))
                .start_link(&cx);
            let manager = || async {
                supervisor.which_children(&cx).await.unwrap()[0]
                    .pid
                    .unwrap()
            };
            let first = manager().await;
            cx.kill(first);
            let mut second = first;
            for _ in 0..1000 {
                second = manager().await;
                if second != first {
                    break;
                }
                cx.sleep(Duration::from_millis(1)).await;
            }
            let info = cx.process_info(second).await.unwrap();
            (first, second, info.links)
        })
        .unwrap();
    assert_ne!(first, second, "the supervisor restarted the manager");
    // The new manager is linked to its supervisor, its coordinator and its
    // seven workers.
    assert_eq!(workers, 9);
}
