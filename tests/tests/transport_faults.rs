//! Interposition (`foundation::transport::fault`), on each backend: fault
//! rules lose, double and partition traffic as they say, and acknowledged
//! channels keep their promise through them (no loss, no duplicate, in
//! order).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::transport::{collect, config, on_each_backend, Node, Numbered, Seen, ARRIVAL};
use common::{eventually, QUIET};
use foundation::transport::fault::{Fault, FaultRule};
use foundation::transport::{Backend, ChannelId, SendError, TransportConfig};

on_each_backend!(
    a_partition_holds_traffic_until_it_heals,
    lost_messages_on_best_effort_are_gone_and_the_rest_in_order,
    losses_on_an_acknowledged_channel_are_sent_again,
    duplicated_messages_arrive_twice_in_order,
    delayed_messages_arrive_late_and_in_order,
);

/// While node B partitions itself from A, nothing A sends arrives; once
/// the rule goes, everything A sent on `control` arrives, once and in
/// order.
fn a_partition_holds_traffic_until_it_heals(backend: Backend) {
    const COUNT: u64 = 200;
    let (a, b) = pair(backend);
    let (receiver, rx) = b.receiver(Seen::of);
    let to = receiver.pid();
    // Connected first, so the partition cuts live connections.
    eventually("A reaches B", || a.fully_connected(b.node()));
    let rule = b
        .faults()
        .add(FaultRule::new(Fault::Partition).from(a.node()));
    let sent = a.sender(
        to,
        (0..COUNT)
            .map(|seq| (ChannelId::CONTROL, Numbered::new(0, seq, 8)))
            .collect(),
    );
    assert!(
        rx.recv_timeout(QUIET).is_err(),
        "nothing crosses a partition"
    );
    assert!(b.faults().injected() > 0, "the partition cut something");
    assert!(b.faults().remove(rule));
    expect_exactly_once_in_order(&rx, &sent, COUNT);
}

/// Half of what A sends on `data` (best effort) is lost at B: the other
/// half arrives in order, none twice.
fn lost_messages_on_best_effort_are_gone_and_the_rest_in_order(backend: Backend) {
    const COUNT: u64 = 2000;
    let (a, b) = pair(backend);
    let (receiver, rx) = b.receiver(Seen::of);
    b.faults().add(
        FaultRule::new(Fault::Drop(0.5))
            .from(a.node())
            .channel(ChannelId::DATA),
    );
    let messages = (0..COUNT)
        .map(|seq| (ChannelId::DATA, Numbered::new(0, seq, 8)))
        .collect();
    a.sender(receiver.pid(), messages)
        .recv_timeout(ARRIVAL)
        .expect("the sender finishes")
        .expect("every send is taken");
    eventually("every message is delivered or lost", || {
        b.stats().delivered + b.faults().injected() == COUNT
    });
    let mut seen = Vec::new();
    while let Ok(message) = rx.recv_timeout(QUIET) {
        seen.push(message);
    }
    let data: Vec<u64> = seen
        .iter()
        .filter(|s| s.channel == ChannelId::DATA.0)
        .map(|s| s.seq)
        .collect();
    assert!(data.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    let lost = COUNT - data.len() as u64;
    assert!(
        (COUNT / 4..COUNT * 3 / 4).contains(&lost),
        "{lost} of {COUNT} lost at 50 %"
    );
    assert_eq!(b.faults().injected(), lost, "every loss counted");
    assert!(seen.iter().all(|s| s.intact));
}

/// Losses on `control` (acknowledged) cut the connection instead: every
/// message still arrives, once and in order.
fn losses_on_an_acknowledged_channel_are_sent_again(backend: Backend) {
    const COUNT: u64 = 500;
    let (a, b) = pair(backend);
    let (receiver, rx) = b.receiver(Seen::of);
    b.faults().add(
        FaultRule::new(Fault::Drop(0.02))
            .from(a.node())
            .channel(ChannelId::CONTROL),
    );
    let sent = a.sender(
        receiver.pid(),
        (0..COUNT)
            .map(|seq| (ChannelId::CONTROL, Numbered::new(0, seq, 16)))
            .collect(),
    );
    expect_exactly_once_in_order(&rx, &sent, COUNT);
    assert!(b.faults().injected() > 0, "some connections were cut");
}

/// Every message A sends on `data` arrives twice at B, in order.
fn duplicated_messages_arrive_twice_in_order(backend: Backend) {
    const COUNT: u64 = 100;
    let (a, b) = pair(backend);
    let (receiver, rx) = b.receiver(Seen::of);
    b.faults()
        .add(FaultRule::new(Fault::Duplicate(1.0)).channel(ChannelId::DATA));
    a.sender(
        receiver.pid(),
        (0..COUNT)
            .map(|seq| (ChannelId::DATA, Numbered::new(0, seq, 8)))
            .collect(),
    );
    let seen = collect(&rx, 2 * COUNT as usize);
    for (i, seen) in seen.iter().enumerate() {
        assert_eq!(seen.seq, i as u64 / 2, "each twice, in order");
    }
    assert!(rx.recv_timeout(QUIET).is_err(), "no third copy");
}

/// Everything A sends on `data` is held at B for 300–400 ms: none arrives
/// sooner, all arrive, in order.
fn delayed_messages_arrive_late_and_in_order(backend: Backend) {
    const COUNT: u64 = 50;
    let (a, b) = pair(backend);
    let (receiver, rx) = b.receiver(Seen::of);
    let (min, max) = (Duration::from_millis(300), Duration::from_millis(400));
    b.faults()
        .add(FaultRule::new(Fault::Delay { min, max }).channel(ChannelId::DATA));
    let sent = a.sender(
        receiver.pid(),
        (0..COUNT)
            .map(|seq| (ChannelId::DATA, Numbered::new(0, seq, 8)))
            .collect(),
    );
    assert!(
        rx.recv_timeout(min - Duration::from_millis(50)).is_err(),
        "nothing before the shortest delay"
    );
    expect_exactly_once_in_order(&rx, &sent, COUNT);
}

/// Waits for `count` messages on `rx`: numbers `0..count`, in order,
/// intact, none twice; and for the sender to report every send taken.
fn expect_exactly_once_in_order(
    rx: &mpsc::Receiver<Seen>,
    sent: &mpsc::Receiver<Result<(), SendError>>,
    count: u64,
) {
    let seen = collect(rx, count as usize);
    for (seq, seen) in seen.iter().enumerate() {
        assert_eq!(seen.seq, seq as u64, "in order, none lost");
        assert!(seen.intact);
    }
    sent.recv_timeout(ARRIVAL)
        .expect("the sender finishes")
        .expect("every send is taken");
    assert!(rx.recv_timeout(QUIET).is_err(), "none arrives twice");
}

/// Two nodes, A a peer of B, faults drawn from a fixed seed.
fn pair(backend: Backend) -> (Node, Node) {
    let seeded = |seed| TransportConfig {
        seed: Some(seed),
        ..config(backend)
    };
    let a = Node::start(seeded(1));
    let b = Node::start(seeded(2));
    a.connect_to(&b);
    (a, b)
}
