//! Backpressure and sends that cannot go out, on each backend: credit
//! bounds what a sender may have in flight to a receiver that does not
//! read, the queue bounds what waits for a connection, and a send that
//! cannot go anywhere says why.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::proxy::Proxy;
use common::transport::{collect, config, on_each_backend, Node, Numbered, Seen, ARRIVAL};
use common::{eventually, QUIET};
use foundation::transport::frame::{self, FrameHeader, FrameKind};
use foundation::transport::{
    Backend, ChannelId, ChannelSpec, Remote, SendError, TransportConfig, WhenDisconnected,
};
use foundation::{Context, Envelope, NodeId, Pid, ShardId};

on_each_backend!(
    a_receiver_that_does_not_read_stops_its_sender_at_the_window,
    a_message_larger_than_the_window_arrives,
    a_message_larger_than_the_window_arrives_in_small_chunks,
    a_channel_that_fails_while_disconnected_says_not_connected,
    a_channel_that_queues_while_disconnected_is_bounded_then_delivered,
    sends_that_cannot_go_anywhere_are_typed_errors,
    a_peer_removed_in_the_middle_of_a_poll_refuses_the_sends_after,
);

/// `data`'s credit window in these tests.
const WINDOW: u32 = 256 * 1024;

/// Body bytes of the messages that fill windows and queues.
const BODY: usize = 1000;

/// A receiver that does not read its mailbox: the sender's `try_send`
/// stops with `WouldBlock` once a window's worth is in flight, the
/// receiving node holds no more than that, and a `send` waits; once the
/// receiver reads, the waiting send completes and everything arrives, in
/// order.
fn a_receiver_that_does_not_read_stops_its_sender_at_the_window(backend: Backend) {
    const MORE: u64 = 300;
    let a = Node::start(with_data(backend, |data| data));
    let b = Node::start(with_data(backend, |data| data));
    a.connect_to(&b);
    eventually("data connects", || {
        a.is_connected(b.node(), ChannelId::DATA)
    });
    let (receiver, drain, rx) = lazy_receiver(&b);

    let script = fill_then_send(&a, receiver.pid(), MORE);
    let Filled { accepted, stopped } = script.filled();
    assert_eq!(stopped, SendError::WouldBlock);
    let frame = frame_len(BODY);
    assert!(
        accepted * frame <= WINDOW as usize && (accepted + 1) * frame > WINDOW as usize,
        "{accepted} messages of {frame} bytes taken for a window of {WINDOW}"
    );
    assert!(a.held_bytes(b.node(), ChannelId::DATA) <= WINDOW as usize);
    eventually("what was taken reaches the receiver's mailbox", || {
        b.stats().delivered == accepted as u64
    });
    assert!(
        script.events.recv_timeout(QUIET).is_err(),
        "a send waits while the window is full"
    );
    assert_eq!(
        b.stats().delivered,
        accepted as u64,
        "no more than the window"
    );
    assert!(rx.try_recv().is_err(), "the receiver has not read");

    drain.store(true, Ordering::SeqCst);
    script.sent_and_done();
    script.all_arrived_in_order(&rx, accepted);
    eventually("the lane holds nothing", || {
        a.held_bytes(b.node(), ChannelId::DATA) == 0
    });
}

/// A message four times `data`'s window goes out as credit returns, chunk
/// by chunk, and arrives whole, before the small one sent after it.
fn a_message_larger_than_the_window_arrives(backend: Backend) {
    larger_than_the_window_arrives(backend, |data| data);
}

/// The same with chunks of a quarter of the grant threshold: the message
/// holds all of the window but one chunk while it is reassembled, so each
/// chunk released beyond that must be granted as soon as the reader has
/// nothing more to read, below the threshold, or the sender could not
/// send the next.
fn a_message_larger_than_the_window_arrives_in_small_chunks(backend: Backend) {
    larger_than_the_window_arrives(backend, |data| data.max_frame(WINDOW / 16));
}

fn larger_than_the_window_arrives(backend: Backend, data: fn(ChannelSpec) -> ChannelSpec) {
    let a = Node::start(with_data(backend, data));
    let b = Node::start(with_data(backend, data));
    a.connect_to(&b);
    let (receiver, rx) = b.receiver(Seen::of);
    let large = 4 * WINDOW as usize;
    let sent = a.sender(
        receiver.pid(),
        vec![
            (ChannelId::DATA, Numbered::new(0, 0, large)),
            (ChannelId::DATA, Numbered::new(0, 1, 8)),
        ],
    );
    let seen: Vec<Seen> = (0..2)
        .map(|_| {
            rx.recv_timeout(ARRIVAL).unwrap_or_else(|_| {
                panic!(
                    "stuck with {} bytes held for B; B: {:?} {:?}",
                    a.held_bytes(b.node(), ChannelId::DATA),
                    b.stats(),
                    b.recent_errors()
                )
            })
        })
        .collect();
    assert_eq!(
        seen.iter()
            .map(|seen| (seen.seq, seen.len, seen.intact))
            .collect::<Vec<_>>(),
        [(0, large, true), (1, 8, true)]
    );
    sent.recv_timeout(ARRIVAL)
        .expect("the sender finishes")
        .expect("both sends are taken");
}

/// With `WhenDisconnected::Fail`, sends to a peer that cannot be reached
/// fail with `NotConnected` and hold nothing; once the peer is reachable
/// they go through. Other channels still queue meanwhile.
fn a_channel_that_fails_while_disconnected_says_not_connected(backend: Backend) {
    let fail = |data: ChannelSpec| data.when_disconnected(WhenDisconnected::Fail);
    let a = Node::start(with_data(backend, fail));
    let b = Node::start(with_data(backend, fail));
    let proxy = Proxy::new(b.local_addr());
    proxy.close();
    a.add_peer(b.node(), proxy.addr()).expect("a new peer");
    let (receiver, rx) = b.receiver(Seen::of);
    let to = receiver.pid();

    let (tried, sent, queued) = a.run(move |cx, transport| async move {
        let message = Numbered::new(0, 0, 8);
        let tried = transport.try_send(cx.pid(), to, ChannelId::DATA, &message);
        let sent = transport
            .send(cx.pid(), to, ChannelId::DATA, &message)
            .await;
        let control = Numbered::new(1, 0, 8);
        let queued = transport.try_send(cx.pid(), to, ChannelId::CONTROL, &control);
        (tried, sent, queued)
    });
    assert_eq!(tried, Err(SendError::NotConnected));
    assert_eq!(sent, Err(SendError::NotConnected));
    assert_eq!(queued, Ok(()), "control queues while disconnected");
    assert_eq!(a.held_bytes(b.node(), ChannelId::DATA), 0);
    assert!(!a.is_connected(b.node(), ChannelId::DATA));

    proxy.open();
    eventually("data connects", || {
        a.is_connected(b.node(), ChannelId::DATA)
    });
    let sent = a.sender(to, vec![(ChannelId::DATA, Numbered::new(0, 1, 8))]);
    sent.recv_timeout(ARRIVAL)
        .unwrap()
        .expect("taken once connected");
    let mut seen: Vec<(u32, u64)> = collect(&rx, 2)
        .iter()
        .map(|seen| (seen.sender, seen.seq))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [(0, 1), (1, 0)],
        "the queued control message and the data one"
    );
}

/// With `WhenDisconnected::Queue`, sends to a peer that cannot be reached
/// are kept up to the bound, then `try_send` says `WouldBlock` and `send`
/// waits; once the peer is reachable, everything kept and the waiting
/// send arrive, in order.
fn a_channel_that_queues_while_disconnected_is_bounded_then_delivered(backend: Backend) {
    const QUEUE: usize = 64 * 1024;
    const MORE: u64 = 20;
    let queue =
        |data: ChannelSpec| data.when_disconnected(WhenDisconnected::Queue { max_bytes: QUEUE });
    let a = Node::start(with_data(backend, queue));
    let b = Node::start(with_data(backend, queue));
    let proxy = Proxy::new(b.local_addr());
    proxy.close();
    a.add_peer(b.node(), proxy.addr()).expect("a new peer");
    let (receiver, rx) = b.receiver(Seen::of);

    let script = fill_then_send(&a, receiver.pid(), MORE);
    let Filled { accepted, stopped } = script.filled();
    assert_eq!(stopped, SendError::WouldBlock);
    let frame = frame_len(BODY);
    assert!(
        accepted > 0 && accepted * frame <= QUEUE && (accepted + 1) * frame > QUEUE,
        "{accepted} messages of {frame} bytes queued for a bound of {QUEUE}"
    );
    assert_eq!(a.held_bytes(b.node(), ChannelId::DATA), accepted * frame);
    assert!(
        script.events.recv_timeout(QUIET).is_err(),
        "a send waits while the queue is full"
    );
    assert!(rx.try_recv().is_err(), "nothing went out");

    proxy.open();
    script.sent_and_done();
    script.all_arrived_in_order(&rx, accepted);
}

/// A node that was never added, a channel that does not exist, a message
/// over the channel's maximum, a stopped transport: each a typed error,
/// from `try_send` and `send` alike.
fn sends_that_cannot_go_anywhere_are_typed_errors(backend: Backend) {
    const MAX_MESSAGE: usize = 64 * 1024;
    let a = Node::start(with_data(backend, |data| data.max_message(MAX_MESSAGE)));
    let b = Node::start(with_data(backend, |data| data.max_message(MAX_MESSAGE)));
    a.connect_to(&b);
    let (receiver, rx) = b.receiver(Seen::of);
    let to = receiver.pid();
    let stranger = NodeId(4000);
    let nowhere = Pid::new(stranger, ShardId(0), 1, 1);
    let myself = Pid::new(a.node(), ShardId(0), 1, 1);

    let results = a.run(move |cx, transport| async move {
        let small = Numbered::new(0, 0, 8);
        let large = Numbered::new(0, 1, 2 * MAX_MESSAGE);
        let from = cx.pid();
        vec![
            transport.try_send(from, nowhere, ChannelId::DATA, &small),
            transport.send(from, nowhere, ChannelId::DATA, &small).await,
            transport.try_send(from, myself, ChannelId::DATA, &small),
            transport.try_send(from, to, ChannelId(9), &small),
            transport.send(from, to, ChannelId(9), &small).await,
            transport.try_send(from, to, ChannelId::DATA, &large),
            transport.send(from, to, ChannelId::DATA, &large).await,
        ]
    });
    let too_large = |result: &Result<(), SendError>| matches!(result, Err(SendError::TooLarge { size, max }) if *size > MAX_MESSAGE && *max == MAX_MESSAGE);
    assert_eq!(results[0], Err(SendError::UnknownPeer(stranger)));
    assert_eq!(results[1], Err(SendError::UnknownPeer(stranger)));
    // A pid of the sender's own node is delivered here, without a peer:
    // to nobody, which is counted.
    assert_eq!(results[2], Ok(()));
    assert_eq!(results[3], Err(SendError::UnknownChannel(ChannelId(9))));
    assert_eq!(results[4], Err(SendError::UnknownChannel(ChannelId(9))));
    assert!(too_large(&results[5]), "{:?}", results[5]);
    assert!(too_large(&results[6]), "{:?}", results[6]);
    assert_eq!(a.held_bytes(b.node(), ChannelId::DATA), 0);
    assert_eq!(a.held_bytes(stranger, ChannelId::DATA), 0);

    a.stop();
    let stopped = a.run(move |cx, transport| async move {
        let small = Numbered::new(0, 2, 8);
        (
            transport.try_send(cx.pid(), to, ChannelId::DATA, &small),
            transport.send(cx.pid(), to, ChannelId::DATA, &small).await,
        )
    });
    assert_eq!(stopped, (Err(SendError::Closed), Err(SendError::Closed)));
    assert!(rx.recv_timeout(QUIET).is_err(), "nothing was sent");
}

/// A process sending a run of messages in one poll stages them, and its
/// sends after the first skip the peer's lookup. Once it removes the peer,
/// its next send looks the peer up again and fails, in the same poll.
fn a_peer_removed_in_the_middle_of_a_poll_refuses_the_sends_after(backend: Backend) {
    let a = Node::start(config(backend));
    let b = Node::start(config(backend));
    a.connect_to(&b);
    let (receiver, _rx) = b.receiver(Seen::of);
    let to = receiver.pid();
    let peer = b.node();

    let (before, removed, after) = a.run(move |cx, transport| async move {
        let small = Numbered::new(0, 0, 8);
        let send = || transport.try_send(cx.pid(), to, ChannelId::DATA, &small);
        // The first goes to the lane, the next ones onto the stage.
        let before: Vec<_> = (0..4).map(|_| send()).collect();
        let removed = transport.remove_peer(peer);
        (before, removed, send())
    });
    assert!(before.iter().all(Result::is_ok), "{before:?}");
    assert!(removed);
    assert_eq!(after, Err(SendError::UnknownPeer(peer)));
}

/// The test configuration with `data` replaced by a one-lane channel with
/// a [`WINDOW`] credit window, as `options` further sets it.
fn with_data(
    backend: Backend,
    options: impl FnOnce(ChannelSpec) -> ChannelSpec,
) -> TransportConfig {
    let mut config = config(backend);
    let data = ChannelSpec::new("data").priority(1).credit_window(WINDOW);
    config.channels[usize::from(ChannelId::DATA.0)] = options(data);
    config
}

/// Bytes a [`Numbered`] with `body` bytes spans on the wire.
fn frame_len(body: usize) -> usize {
    let header = FrameHeader {
        flags: 0,
        channel: ChannelId::DATA.0,
        kind: FrameKind::Message,
        length: 0,
        source: Pid::from_bits(0),
        destination: Pid::from_bits(0),
        trace_id: 0,
        sequence: 0,
    };
    let mut bytes = Vec::new();
    frame::encode(header, &Numbered::new(0, 0, body), &mut bytes).expect("encode");
    bytes.len()
}

/// Spawns a registered process on `node` that does not read its mailbox
/// until the returned flag is set, then reports every message.
fn lazy_receiver(
    node: &Node,
) -> (
    foundation::Addr<Remote<Numbered>>,
    Arc<AtomicBool>,
    mpsc::Receiver<Seen>,
) {
    let drain = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let flag = drain.clone();
    let receiver = node
        .runtime
        .spawn(move |cx: Context<Remote<Numbered>>| async move {
            while !flag.load(Ordering::SeqCst) {
                cx.sleep(Duration::from_millis(2)).await;
            }
            while let Envelope::Msg(message) = cx.recv().await {
                if tx.send(Seen::of(&message)).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the receiver");
    node.register(&receiver);
    (receiver, drain, rx)
}

/// What a [`fill_then_send`] process reports.
#[derive(Debug)]
enum Event {
    /// `try_send` took this many messages, then said this.
    Filled(Filled),
    /// The `send` after them finished.
    Sent(Result<(), SendError>),
    /// The sends after that finished.
    Done(Result<(), SendError>),
}

#[derive(Debug)]
struct Filled {
    accepted: usize,
    stopped: SendError,
}

/// A process's reports to the test thread.
struct Script {
    events: mpsc::Receiver<Event>,
    /// Sends after the one that waits.
    more: u64,
}

impl Script {
    fn filled(&self) -> Filled {
        match self.events.recv_timeout(ARRIVAL) {
            Ok(Event::Filled(filled)) => filled,
            other => panic!("expected the fill, got {other:?}"),
        }
    }

    fn sent_and_done(&self) {
        match self.events.recv_timeout(ARRIVAL) {
            Ok(Event::Sent(result)) => result.expect("the waiting send is taken"),
            other => panic!("expected the waiting send to finish, got {other:?}"),
        }
        match self.events.recv_timeout(ARRIVAL) {
            Ok(Event::Done(result)) => result.expect("the later sends are taken"),
            other => panic!("expected the later sends to finish, got {other:?}"),
        }
    }

    /// Checks that everything the script sent reached `rx`, whole and in
    /// order: the `accepted` sends, the one that waited and the `more`.
    fn all_arrived_in_order(&self, rx: &mpsc::Receiver<Seen>, accepted: usize) {
        let total = accepted as u64 + 1 + self.more;
        let seen = collect(rx, total as usize);
        let numbers: Vec<u64> = seen.iter().map(|seen| seen.seq).collect();
        assert_eq!(numbers, (0..total).collect::<Vec<_>>());
        assert!(seen.iter().all(|seen| seen.intact));
    }
}

/// Spawns a process on `node` that sends numbered messages of [`BODY`]
/// bytes to `to` on `data`: with `try_send` until it fails, then one with
/// `send` (which waits), then `more` with `send`, reporting each stage.
fn fill_then_send(node: &Node, to: Pid, more: u64) -> Script {
    let (tx, events) = mpsc::channel();
    let transport = node.transport();
    node.runtime
        .spawn(move |cx: Context<()>| async move {
            let mut seq = 0;
            let stopped = loop {
                let message = Numbered::new(0, seq, BODY);
                match transport.try_send(cx.pid(), to, ChannelId::DATA, &message) {
                    Ok(()) => seq += 1,
                    Err(error) => break error,
                }
            };
            let accepted = seq as usize;
            let _ = tx.send(Event::Filled(Filled { accepted, stopped }));
            let message = Numbered::new(0, seq, BODY);
            let sent = transport
                .send(cx.pid(), to, ChannelId::DATA, &message)
                .await;
            let _ = tx.send(Event::Sent(sent));
            let mut done = Ok(());
            for seq in seq + 1..=seq + more {
                let message = Numbered::new(0, seq, BODY);
                done = transport
                    .send(cx.pid(), to, ChannelId::DATA, &message)
                    .await;
                if done.is_err() {
                    break;
                }
            }
            let _ = tx.send(Event::Done(done));
        })
        .expect("spawn the sender");
    Script { events, more }
}
