//! Links, monitors and exit signals between processes of different nodes
//! (nodes in this OS process, over the real transport): the real reason
//! when the process ends, `noconnection` exactly once when its node goes
//! down, `noproc` for a process that is not there, and nothing left behind.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::cluster::config;
use common::{eventually, PATIENCE};
use foundation::membership::PeerService;
use foundation::node::Node;
use foundation::{Addr, Context, Envelope, ExitReason, NodeId, Pid, ShardId};

/// Nodes `ids`, joined.
fn cluster(ids: &[u16]) -> Vec<Node> {
    common::cluster::cluster(ids.iter().map(|&id| config(id, "signal-tests")).collect())
}

/// A process on `node` that waits for a `String` and ends with it as an
/// error reason ("normal" ends normally).
fn worker(node: &Node) -> Addr<String> {
    node.runtime()
        .spawn(|cx: Context<String>| async move {
            match cx.recv().await.into_msg().as_deref() {
                Some("normal") | None => Ok(()),
                Some(reason) => Err(ExitReason::error(reason)),
            }
        })
        .expect("spawn a worker")
}

/// What a watcher saw: each `Down` and trapped `Exit`, as (pid, reason).
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Down(Pid, ExitReason),
    Exit(Pid, ExitReason),
}

/// A process on `node` that traps exits, monitors and links to each of
/// `targets` as told, and reports what it sees to the test.
fn watcher(node: &Node, monitors: Vec<Pid>, links: Vec<Pid>) -> mpsc::Receiver<Seen> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    node.runtime()
        .spawn(move |cx: Context<()>| async move {
            cx.trap_exit(true);
            for pid in monitors {
                cx.monitor(pid);
            }
            for pid in links {
                cx.link(pid);
            }
            ready_tx.send(()).unwrap();
            loop {
                let seen = match cx.recv().await {
                    Envelope::Down(down) => Seen::Down(down.pid, down.reason),
                    Envelope::Exit(exit) => Seen::Exit(exit.from, exit.reason),
                    Envelope::Msg(()) => return,
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the watcher");
    ready.recv_timeout(PATIENCE).unwrap();
    rx
}

fn next(seen: &mpsc::Receiver<Seen>) -> Seen {
    seen.recv_timeout(PATIENCE).expect("a signal arrives")
}

/// A remote monitor and a remote link see the process's own reason.
#[test]
fn a_remote_process_that_ends_is_seen_with_its_reason() {
    let nodes = cluster(&[201, 202]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (watched, linked) = (worker(b), worker(b));
    let seen = watcher(a, vec![watched.pid()], vec![linked.pid()]);
    // The link and monitor reached node 202 before the workers end: the
    // signal service sends in order, on the acknowledged channel.
    eventually("both relations are known at node 202", || {
        b.dist().relations() == 2
    });
    b.runtime().send(&watched, "disk full".to_owned());
    assert_eq!(
        next(&seen),
        Seen::Down(watched.pid(), ExitReason::error("disk full"))
    );
    b.runtime().send(&linked, "bad input".to_owned());
    assert_eq!(
        next(&seen),
        Seen::Exit(linked.pid(), ExitReason::error("bad input"))
    );
    eventually("no relation is left", || {
        a.dist().relations() == 0 && b.dist().relations() == 0
    });
    for node in nodes {
        node.stop();
    }
}

/// A local process linked to a remote one takes it down with it, as a
/// link does; the remote watcher of the local process sees it end.
#[test]
fn a_link_across_nodes_works_both_ways() {
    let nodes = cluster(&[211, 212]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let local = worker(a);
    let seen_at_b = watcher(b, vec![local.pid()], vec![local.pid()]);
    eventually("the relations are known at node 211", || {
        a.dist().relations() == 2
    });
    a.runtime().send(&local, "crashed".to_owned());
    let mut seen = vec![next(&seen_at_b), next(&seen_at_b)];
    seen.sort_by_key(|s| matches!(s, Seen::Exit(..)));
    assert_eq!(
        seen,
        vec![
            Seen::Down(local.pid(), ExitReason::error("crashed")),
            Seen::Exit(local.pid(), ExitReason::error("crashed")),
        ]
    );
    for node in nodes {
        node.stop();
    }
}

/// When a node crashes, every link to and monitor of its processes from
/// the other nodes fires `noconnection`, once each.
#[test]
fn a_crashed_node_fires_noconnection_once_per_link_and_monitor() {
    let mut nodes = cluster(&[221, 222, 223]);
    let doomed = nodes.pop().expect("three nodes");
    let (first, second) = (worker(&doomed), worker(&doomed));
    let targets = vec![first.pid(), second.pid()];
    let seen_at_a = watcher(&nodes[0], targets.clone(), targets.clone());
    let seen_at_b = watcher(&nodes[1], targets.clone(), vec![]);
    eventually("every relation is known at the doomed node", || {
        doomed.dist().relations() == 6
    });
    doomed.crash();
    for (seen, expected) in [(&seen_at_a, 4), (&seen_at_b, 2)] {
        let mut got: Vec<_> = (0..expected).map(|_| next(seen)).collect();
        got.sort_by_key(|s| format!("{s:?}"));
        let mut want: Vec<_> = targets
            .iter()
            .map(|&pid| Seen::Down(pid, ExitReason::NoConnection))
            .chain(
                targets
                    .iter()
                    .take(expected - 2)
                    .map(|&pid| Seen::Exit(pid, ExitReason::NoConnection)),
            )
            .collect();
        want.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(got, want);
        assert!(
            seen.recv_timeout(Duration::from_millis(500)).is_err(),
            "each fires once"
        );
    }
    for node in &nodes {
        assert_eq!(node.dist().relations(), 0, "node {}", node.id().0);
    }
    for node in nodes {
        node.stop();
    }
}

/// A monitor of a process that does not exist on a member node is
/// answered `noproc` by that node; of a process on a node outside the
/// cluster, `noconnection` at once.
#[test]
fn a_monitor_of_nobody_is_answered() {
    let nodes = cluster(&[231, 232]);
    let nobody = Pid::new(NodeId(232), ShardId(0), 4242, 9);
    let stranger = Pid::new(NodeId(239), ShardId(0), 1, 1);
    let seen = watcher(&nodes[0], vec![nobody, stranger], vec![]);
    let mut got = vec![next(&seen), next(&seen)];
    got.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        got,
        vec![
            Seen::Down(nobody, ExitReason::NoProc),
            Seen::Down(stranger, ExitReason::NoConnection),
        ]
    );
    eventually("no relation is left", || nodes[0].dist().relations() == 0);
    for node in nodes {
        node.stop();
    }
}

/// A node whose peer service crashes and restarts rejoins as a new start:
/// its peers end their relations with its processes, once, as it ends its
/// own with theirs.
#[test]
fn a_restarted_peer_service_ends_relations_on_both_sides() {
    let nodes = cluster(&[241, 242]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let far = worker(b);
    let seen_at_a = watcher(a, vec![far.pid()], vec![]);
    let near = worker(a);
    let seen_at_b = watcher(b, vec![near.pid()], vec![]);
    eventually("the monitors are known at both nodes", || {
        a.dist().relations() == 2 && b.dist().relations() == 2
    });
    let supervisor = b.supervisor();
    b.runtime()
        .block_on(move |cx: Context<()>| async move {
            let children = supervisor.which_children(&cx).await.unwrap();
            let service = children
                .iter()
                .find(|child| child.id.as_ref() == "peer_service")
                .and_then(|child| child.pid)
                .expect("the peer service runs");
            cx.kill(service);
        })
        .unwrap();
    assert_eq!(
        next(&seen_at_a),
        Seen::Down(far.pid(), ExitReason::NoConnection)
    );
    assert_eq!(
        next(&seen_at_b),
        Seen::Down(near.pid(), ExitReason::NoConnection)
    );
    eventually("the nodes see each other again", || {
        a.membership().is_up(b.id()) && b.membership().is_up(a.id())
    });
    for seen in [&seen_at_a, &seen_at_b] {
        assert!(
            seen.recv_timeout(Duration::from_millis(300)).is_err(),
            "once"
        );
    }
    for node in nodes {
        node.stop();
    }
}

/// While the `control` lane to a node is out of credit (a process there
/// sits on a megabyte of messages), signals for it wait in order and go
/// out as room comes back: the monitor taken meanwhile is in place before
/// its target ends, and sees the target's own reason.
#[test]
fn signals_wait_for_credit_and_then_go_in_order() {
    use foundation::transport::{ChannelId, Remote, SendError};

    let nodes = cluster(&[251, 252]);
    let (a, b) = (&nodes[0], &nodes[1]);
    // A sink that holds what it gets for a while before dropping it.
    let (release_tx, release) = mpsc::channel::<()>();
    let release = std::sync::Arc::new(std::sync::Mutex::new(release));
    let sink = b
        .runtime()
        .spawn(move |cx: Context<Remote<Vec<u8>>>| async move {
            let mut held = Vec::new();
            loop {
                match cx.recv_timeout(Duration::from_millis(10)).await {
                    Some(Envelope::Msg(message)) => held.push(message),
                    Some(_) => return,
                    None if release.lock().unwrap().try_recv().is_ok() => held.clear(),
                    None => {}
                }
            }
        })
        .unwrap();
    b.transport().register(&sink);
    let to = sink.pid();
    let filled = a
        .runtime()
        .block_on(move |cx: Context<()>| async move {
            let transport = foundation::dist::Dist::of(&cx).unwrap().transport().clone();
            // Big messages, then ever smaller ones, until not even the
            // smallest fits. A lane also says `WouldBlock` while it holds
            // as much unsent as it takes; that passes once its connection
            // has taken the batch, credit does not.
            for size in [64 * 1024, 1024, 0] {
                let chunk = vec![7u8; size];
                let mut sent = 0;
                let mut refused_in_a_row = 0;
                loop {
                    match transport.try_send(cx.pid(), to, ChannelId::CONTROL, &chunk) {
                        Ok(()) => {
                            sent += 1;
                            refused_in_a_row = 0;
                        }
                        Err(SendError::WouldBlock) if refused_in_a_row < 3 => {
                            refused_in_a_row += 1;
                            cx.sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                        Err(SendError::WouldBlock) => break,
                        Err(error) => panic!("{error}"),
                    }
                    if sent % 16 == 0 {
                        cx.sleep(Duration::from_micros(200)).await;
                    }
                    if sent > 100_000 {
                        return false;
                    }
                }
            }
            true
        })
        .unwrap();
    assert!(filled, "the control lane ran out of credit");
    let far = worker(b);
    let seen = watcher(a, vec![far.pid()], vec![]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.dist().relations(), 0, "the monitor waits for room");
    release_tx.send(()).unwrap();
    eventually("the monitor reaches its target's node", || {
        b.dist().relations() == 1
    });
    b.runtime().send(&far, "done waiting".to_owned());
    assert_eq!(
        next(&seen),
        Seen::Down(far.pid(), ExitReason::error("done waiting"))
    );
    for node in nodes {
        node.stop();
    }
}
