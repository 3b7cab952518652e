//! Cluster membership between nodes in this OS process, over the real
//! transport: joining through a seed, convergence, failure detection, a
//! leave told apart from a failure, a restart, and a node with the wrong
//! cookie kept out. (The multi-process suite, with `kill -9`, starts
//! `foundation-node` processes.)

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use common::{eventually, PATIENCE};
use foundation::membership::{
    query_members, DownReason, Member, MemberEvent, PeerService, QueryError,
};
use foundation::node::{FaultConfig, Node, NodeConfig};
use foundation::transport::{ConnectionError, Cookie, HandshakeError};
use foundation::{Context, Envelope, NodeId};

/// A node of a test cluster: ids are given per test (tests run in
/// parallel in this process, and node ids must differ among live
/// runtimes), and one shard keeps the suite light.
fn config(id: u16, seeds: &[SocketAddr]) -> NodeConfig {
    let mut config = NodeConfig::new(format!("node-{id}"), "membership-tests")
        .id(id)
        .shards(1);
    config.seeds = seeds.to_vec();
    config
}

/// A process on `node` that forwards every membership event to the test.
fn subscribe(node: &Node) -> mpsc::Receiver<MemberEvent> {
    let (tx, rx) = mpsc::channel();
    let subscriber = node
        .runtime()
        .spawn(move |cx: Context<MemberEvent>| async move {
            while let Envelope::Msg(event) = cx.recv().await {
                if tx.send(event).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the subscriber");
    node.membership().subscribe(subscriber);
    rx
}

/// Waits for the first event that `matches`, returning it with the events
/// before it; panics when none comes for [`PATIENCE`].
fn wait_for(
    events: &mpsc::Receiver<MemberEvent>,
    what: &str,
    matches: impl Fn(&MemberEvent) -> bool,
) -> Vec<MemberEvent> {
    let mut seen = Vec::new();
    loop {
        match events.recv_timeout(PATIENCE) {
            Ok(event) => {
                let found = matches(&event);
                seen.push(event);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no {what} within {PATIENCE:?} of the last event; saw {seen:?}"),
        }
    }
}

fn ids(members: &[Member]) -> Vec<u16> {
    members.iter().map(|member| member.node.0).collect()
}

fn converged(nodes: &[&Node]) -> bool {
    nodes.iter().all(|node| {
        let expected: Vec<_> = nodes
            .iter()
            .map(|other| other.id().0)
            .filter(|&id| id != node.id().0)
            .collect();
        ids(&node.membership().members()) == expected
    })
}

/// Three nodes joining through the first see each other, and each sees
/// every other come up exactly once.
#[test]
fn nodes_joining_through_one_seed_converge() {
    let a = Node::start(config(101, &[])).unwrap();
    let events = subscribe(&a);
    let b = Node::start(config(102, &[a.addr()])).unwrap();
    let c = Node::start(config(103, &[a.addr()])).unwrap();
    eventually("the membership converges", || converged(&[&a, &b, &c]));
    let members = c.membership().members();
    assert_eq!(members[0].name, "node-101");
    assert_eq!(members[0].addr, a.addr());
    let mut ups: Vec<_> = events
        .try_iter()
        .filter_map(|event| match event {
            MemberEvent::Up(member) => Some(member.node.0),
            _ => None,
        })
        .collect();
    ups.sort_unstable();
    assert_eq!(ups, vec![102, 103]);
    for node in [c, b, a] {
        node.stop();
    }
}

/// A node that crashes is declared down, as failed, by every peer, once;
/// a node that stops is down as left, once.
#[test]
fn a_failure_and_a_leave_are_told_apart() {
    let a = Node::start(config(111, &[])).unwrap();
    let b = Node::start(config(112, &[a.addr()])).unwrap();
    let c = Node::start(config(113, &[a.addr()])).unwrap();
    let d = Node::start(config(114, &[a.addr()])).unwrap();
    eventually("the membership converges", || converged(&[&a, &b, &c, &d]));
    let (at_a, at_b) = (subscribe(&a), subscribe(&b));

    c.crash();
    for events in [&at_a, &at_b] {
        let seen = wait_for(
            events,
            "a down for node 113",
            |event| matches!(event, MemberEvent::Down(m, _) if m.node == NodeId(113)),
        );
        assert!(
            matches!(seen.last(), Some(MemberEvent::Down(_, DownReason::Failed))),
            "{seen:?}"
        );
    }
    assert_eq!(ids(&a.membership().members()), vec![112, 114]);

    d.stop();
    for events in [&at_a, &at_b] {
        let seen = wait_for(
            events,
            "a down for node 114",
            |event| matches!(event, MemberEvent::Down(m, _) if m.node == NodeId(114)),
        );
        assert!(
            matches!(seen.last(), Some(MemberEvent::Down(_, DownReason::Left))),
            "{seen:?}"
        );
    }
    // Nothing more about either: each down came once.
    std::thread::sleep(Duration::from_millis(500));
    for events in [&at_a, &at_b] {
        let later: Vec<_> = events
            .try_iter()
            .filter(|event| matches!(event, MemberEvent::Down(..) | MemberEvent::Up(_)))
            .collect();
        assert!(later.is_empty(), "{later:?}");
    }
    assert_eq!(ids(&b.membership().members()), vec![111]);
    b.stop();
    a.stop();
}

/// A crashed node started again (same id, another port) comes back up at
/// every peer, which dial its new address.
#[test]
fn a_restarted_node_rejoins() {
    let a = Node::start(config(121, &[])).unwrap();
    let b = Node::start(config(122, &[a.addr()])).unwrap();
    let c = Node::start(config(123, &[a.addr()])).unwrap();
    eventually("the membership converges", || converged(&[&a, &b, &c]));
    let events = subscribe(&b);
    c.crash();
    wait_for(
        &events,
        "the crash detected",
        |event| matches!(event, MemberEvent::Down(m, DownReason::Failed) if m.node == NodeId(123)),
    );
    let c = Node::start(config(123, &[a.addr()])).unwrap();
    let seen = wait_for(
        &events,
        "the restarted node up",
        |event| matches!(event, MemberEvent::Up(m) if m.node == NodeId(123)),
    );
    let Some(MemberEvent::Up(member)) = seen.last() else {
        unreachable!()
    };
    assert_eq!(member.addr, c.addr());
    eventually("the membership converges again", || {
        converged(&[&a, &b, &c])
    });
    for node in [c, b, a] {
        node.stop();
    }
}

/// A node with another cookie cannot join: the seed refuses it, and the
/// cluster carries on as it was.
#[test]
fn a_node_with_the_wrong_cookie_stays_out() {
    let a = Node::start(config(131, &[])).unwrap();
    let b = Node::start(config(132, &[a.addr()])).unwrap();
    eventually("the membership converges", || converged(&[&a, &b]));
    let mut stranger = config(133, &[a.addr()]);
    stranger.cookie = Some("another cluster".into());
    let stranger = Node::start(stranger).unwrap();
    eventually("the seed refuses the stranger", || {
        a.transport().stats().refused > 0
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(stranger.membership().members().is_empty());
    assert!(converged(&[&a, &b]));
    stranger.stop();
    b.stop();
    a.stop();
}

/// A client asks a node for its view, as `foundation-node members` does:
/// the node itself first, then its members; a client with another cookie
/// is refused. The client never shows up as a member.
#[test]
fn a_client_asks_a_node_for_its_members() {
    let a = Node::start(config(141, &[])).unwrap();
    let b = Node::start(config(142, &[a.addr()])).unwrap();
    eventually("the membership converges", || converged(&[&a, &b]));
    let asked = query_members(b.addr(), Cookie::new("membership-tests"), PATIENCE);
    let members = asked.expect("an answer");
    assert_eq!(ids(&members), vec![142, 141]);
    assert_eq!(members[1].addr, a.addr());

    let refused = query_members(b.addr(), Cookie::new("another cluster"), PATIENCE);
    assert!(
        matches!(
            refused,
            Err(QueryError::Unreachable(ConnectionError::Handshake(
                HandshakeError::Cookie
            )))
        ),
        "{refused:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(converged(&[&a, &b]), "the client never joined");
    b.stop();
    a.stop();
}

/// A partition rule in a node's configuration (as `foundation-node` reads
/// it) cuts it off from the node it names: it cannot join through it, and
/// the others carry on.
#[test]
fn a_partition_rule_from_the_configuration_keeps_a_node_out() {
    let a = Node::start(config(151, &[])).unwrap();
    let b = Node::start(config(152, &[a.addr()])).unwrap();
    eventually("the membership converges", || converged(&[&a, &b]));
    let cut = FaultConfig {
        fault: "partition".into(),
        probability: None,
        min_ms: None,
        max_ms: None,
        from: Some(151),
        to: None,
        channel: None,
    };
    let c = Node::start(config(153, &[a.addr()]).fault(cut)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(c.membership().members().is_empty());
    assert!(converged(&[&a, &b]));
    assert!(
        c.transport().faults().injected() > 0,
        "the rule was applied"
    );
    for node in [c, b, a] {
        node.stop();
    }
}

/// A node with a data directory keeps its synced state across a restart.
#[test]
fn a_node_keeps_its_synced_state_in_its_data_directory() {
    let dir = std::env::temp_dir().join(format!("foundation-node-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let node = Node::start(config(161, &[]).data_dir(&dir)).unwrap();
    let disk = node.disk().expect("a data directory gives a disk");
    disk.put(b"kept", b"yes");
    disk.sync().unwrap();
    disk.put(b"lost", b"never synced");
    node.crash();
    let again = Node::start(config(161, &[]).data_dir(&dir)).unwrap();
    let disk = again.disk().expect("the same disk");
    assert_eq!(disk.get(b"kept").unwrap().as_deref(), Some(&b"yes"[..]));
    assert_eq!(disk.get(b"lost").unwrap(), None);
    again.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
