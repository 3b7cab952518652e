//! Ecosystems whose workers run on other nodes: placed over the cluster or
//! over named nodes, by a worker kind each node's process factory starts;
//! a worker whose node crashes is replaced on a node that is up.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::cluster::config;
use common::PATIENCE;
use foundation::ecosystem::{
    spawn_ecosystem, Distribution, Ecosystem, EcosystemError, EcosystemSpec, PlacementStrategy,
    WorkerEvent,
};
use foundation::node::Node;
use foundation::{Context, Envelope, ExitReason, NodeId};

/// Nodes `ids`, joined, each able to start the `worker` kind.
fn cluster(ids: &[u16]) -> Vec<Node> {
    let configs = ids
        .iter()
        .map(|&id| config(id, "ecosystem-tests"))
        .collect();
    let nodes = common::cluster::cluster(configs);
    for node in &nodes {
        node.dist()
            .factory()
            .register("worker", |cx: Context<()>, (): ()| async move {
                while let Envelope::Msg(()) = cx.recv().await {}
            });
    }
    nodes
}

/// The nodes an ecosystem's workers run on.
async fn placed<M: Send + 'static>(
    ecosystem: &Ecosystem<WorkerEvent, ()>,
    cx: &Context<M>,
) -> Vec<NodeId> {
    let workers = ecosystem.workers(cx).await.expect("the manager answers");
    workers.iter().map(|worker| worker.pid().node()).collect()
}

/// A coordinator that reports what the manager tells it.
fn coordinator(
    events: mpsc::Sender<WorkerEvent>,
) -> impl Fn(Context<WorkerEvent>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
       + Clone
       + Send
       + Sync
       + 'static {
    let events = std::sync::Arc::new(std::sync::Mutex::new(events));
    move |cx: Context<WorkerEvent>| {
        let events = events.clone();
        Box::pin(async move {
            while let Envelope::Msg(event) = cx.recv().await {
                let _ = events.lock().unwrap().send(event);
            }
        })
    }
}

/// The nodes an ecosystem's workers run on, counted per node id.
fn spread(nodes: &[NodeId]) -> Vec<(u16, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for node in nodes {
        *counts.entry(node.0).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

#[test]
fn workers_spread_over_the_cluster_and_move_off_a_crashed_node() {
    let mut nodes = cluster(&[401, 402, 403]);
    let (events_tx, events) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let (crash_tx, crash) = mpsc::channel::<()>();
    let (crashed_tx, crashed) = mpsc::channel::<()>();
    let placement = Distribution::ClusterWide {
        placement: PlacementStrategy::RoundRobin,
    };
    let spec = EcosystemSpec::<WorkerEvent, ()>::with_worker_kind(
        coordinator(events_tx),
        "worker",
        &(),
        6,
    )
    .expect("the arguments archive")
    .distribution(placement);
    nodes[0]
        .runtime()
        .spawn(move |cx: Context<()>| async move {
            let ecosystem = spawn_ecosystem(&cx, spec).expect("a distributed ecosystem starts");
            let before = placed(&ecosystem, &cx).await;
            done_tx.send(before).unwrap();
            crash.recv().unwrap();
            crashed_tx.send(()).unwrap();
            // Let the replacements start, then look again.
            cx.sleep(Duration::from_millis(200)).await;
            loop {
                let now = placed(&ecosystem, &cx).await;
                if !now.contains(&NodeId(403)) {
                    done_tx.send(now).unwrap();
                    break;
                }
                cx.sleep(Duration::from_millis(50)).await;
            }
            ecosystem.stop(&cx).await.unwrap();
        })
        .unwrap();
    let before = done.recv_timeout(PATIENCE).expect("the workers start");
    assert_eq!(spread(&before), vec![(401, 2), (402, 2), (403, 2)]);
    let doomed = nodes.pop().expect("three nodes");
    doomed.crash();
    crash_tx.send(()).unwrap();
    crashed.recv_timeout(PATIENCE).unwrap();
    let after = done.recv_timeout(PATIENCE).expect("the workers move");
    assert_eq!(after.len(), 6);
    assert!(after.iter().all(|node| node.0 == 401 || node.0 == 402));
    let lost: Vec<_> = events
        .try_iter()
        .filter(|event| matches!(event, WorkerEvent::Exited { reason, .. } if *reason == ExitReason::NoConnection))
        .collect();
    assert_eq!(lost.len(), 2, "{lost:?}");
    for node in nodes {
        node.stop();
    }
}

#[test]
fn explicit_nodes_take_every_worker_and_functions_cannot_travel() {
    let nodes = cluster(&[411, 412]);
    let outcome = nodes[0]
        .runtime()
        .block_on(|cx: Context<()>| async move {
            let (events, _) = mpsc::channel();
            let only_412 = Distribution::ExplicitNodes {
                nodes: vec![NodeId(412), NodeId(419)],
                placement: PlacementStrategy::LeastLoaded,
            };
            let spec = EcosystemSpec::<WorkerEvent, ()>::with_worker_kind(
                coordinator(events.clone()),
                "worker",
                &(),
                3,
            )
            .unwrap()
            .distribution(only_412.clone());
            let ecosystem = spawn_ecosystem(&cx, spec).unwrap();
            let placed = placed(&ecosystem, &cx).await;
            ecosystem.stop(&cx).await.unwrap();
            let by_function = EcosystemSpec::<WorkerEvent, ()>::new(
                coordinator(events),
                |cx: Context<()>| async move { while let Envelope::Msg(()) = cx.recv().await {} },
                3,
            )
            .distribution(only_412);
            let refused = spawn_ecosystem(&cx, by_function).map(drop);
            (placed, refused)
        })
        .unwrap();
    assert_eq!(spread(&outcome.0), vec![(412, 3)]);
    assert!(matches!(outcome.1, Err(EcosystemError::Unsupported(_))));
    for node in nodes {
        node.stop();
    }
}

/// Workers started by kind need a node with distribution: on a bare
/// runtime the ecosystem is refused at once, with why.
#[test]
fn workers_by_kind_need_distribution() {
    let runtime = foundation::Runtime::builder().shards(1).build().unwrap();
    let refused = runtime
        .block_on(|cx: Context<()>| async move {
            let (events, _) = mpsc::channel();
            let spec = EcosystemSpec::<WorkerEvent, ()>::with_worker_kind(
                coordinator(events),
                "worker",
                &(),
                2,
            )
            .unwrap();
            spawn_ecosystem(&cx, spec).map(drop)
        })
        .unwrap();
    assert_eq!(refused, Err(EcosystemError::NotDistributed));
    runtime.shutdown();
}
