//! Messages between nodes over the transport, on each backend: order per
//! (sender, receiver, channel), messages cut into chunks, acknowledged
//! delivery across cut connections, and messages for processes that are
//! not there.

mod common;

use std::collections::BTreeMap;
use std::sync::mpsc;

use common::proxy::Proxy;
use common::transport::{collect, config, on_each_backend, Node, Numbered, Seen, ARRIVAL};
use common::{eventually, QUIET};
use foundation::transport::{
    Backend, ChannelId, ConnectionError, HandshakeError, Remote, SendError,
};
use foundation::{Context, Pid, ShardId};

on_each_backend!(
    a_message_crosses_to_another_node,
    each_senders_order_is_kept,
    chunked_messages_arrive_intact_and_in_order,
    messages_of_every_size_arrive_in_order,
    try_send_takes_a_chunked_message_whole,
    acknowledged_delivery_survives_cut_connections,
    chunked_messages_on_an_acknowledged_channel_survive_cuts,
    a_message_for_no_process_is_counted_and_the_connection_stays,
    identify_names_the_node_at_an_address_and_makes_no_lane,
    a_message_to_an_alias_reaches_its_process_until_it_ends,
    a_message_for_this_node_is_delivered_without_a_connection,
);

/// One `String` from a process on one node to a process on another.
fn a_message_crosses_to_another_node(backend: Backend) {
    let (a, b) = pair(backend);
    let (receiver, rx) = b.receiver(|message: &Remote<String>| {
        (
            message.as_str().to_owned(),
            message.source(),
            message.channel(),
        )
    });
    let to = receiver.pid();
    let from = a.run(move |cx, transport| async move {
        let hello = String::from("hello");
        transport
            .send(cx.pid(), to, ChannelId::DATA, &hello)
            .await
            .map(|()| cx.pid())
    });
    let from = from.expect("the send is taken");
    let (text, source, channel) = rx.recv_timeout(ARRIVAL).expect("the message arrives");
    assert_eq!(text, "hello");
    assert_eq!(source, from);
    assert_eq!(channel, ChannelId::DATA);
    eventually("the delivery is counted", || b.stats().delivered == 1);
    assert!(a.stats().connections >= 1);
    assert_eq!(b.stats().undeliverable, 0);
}

/// Several processes on one node send numbered messages to one process on
/// another, on `data` (two lanes by default, so the senders spread over
/// both): each sender's messages arrive complete and in order.
fn each_senders_order_is_kept(backend: Backend) {
    const SENDERS: u32 = 6;
    const COUNT: u64 = 300;
    let (a, b) = pair(backend);
    assert!(a.channels()[usize::from(ChannelId::DATA.0)].parallelism > 1);
    let (receiver, rx) = b.receiver(Seen::of);
    let seen = send_from_each(&a, receiver.pid(), &rx, SENDERS, COUNT, |_| 16);
    assert_each_sender_in_order(&seen, SENDERS, |_| COUNT, |_, _| 16);
    assert!(rx.recv_timeout(QUIET).is_err(), "no message arrives twice");
    eventually("every delivery is counted", || {
        b.stats().delivered == u64::from(SENDERS) * COUNT
    });
}

/// Messages larger than `data`'s 128 KiB frame travel as chunks: they
/// arrive intact, in their sender's order among the small messages sent
/// before and after them.
fn chunked_messages_arrive_intact_and_in_order(backend: Backend) {
    const SENDERS: u32 = 3;
    const COUNT: u64 = 40;
    let (a, b) = pair(backend);
    let max_frame = a.channels()[usize::from(ChannelId::DATA.0)].max_frame as usize;
    assert!(len_of(20) > 4 * max_frame && len_of(2) > max_frame);
    let (receiver, rx) = b.receiver(Seen::of);
    let seen = send_from_each(&a, receiver.pid(), &rx, SENDERS, COUNT, len_of);
    assert_each_sender_in_order(&seen, SENDERS, |_| COUNT, |_, seq| len_of(seq));
    assert!(rx.recv_timeout(QUIET).is_err(), "no message arrives twice");

    /// Message 20 is 600 KiB (five chunks), every fifth from 2 on is
    /// 140 KiB (two chunks, the second small), the rest are small.
    fn len_of(seq: u64) -> usize {
        match seq {
            20 => 600 * 1024,
            seq if seq % 5 == 2 => 140 * 1024,
            _ => 32,
        }
    }
}

/// Senders whose messages change size from one to the next, across the
/// ways a frame reaches the lane (staged when small, encoded straight onto
/// the lane when large, in chunks above the frame): each sender's messages
/// arrive intact and in order, however the ways interleave.
fn messages_of_every_size_arrive_in_order(backend: Backend) {
    const SENDERS: u32 = 3;
    const COUNT: u64 = 200;
    let (a, b) = pair(backend);
    let (receiver, rx) = b.receiver(Seen::of);
    let seen = send_from_each(&a, receiver.pid(), &rx, SENDERS, COUNT, len_of);
    assert_each_sender_in_order(&seen, SENDERS, |_| COUNT, |_, seq| len_of(seq));
    assert!(rx.recv_timeout(QUIET).is_err(), "no message arrives twice");

    /// Runs of small and of large messages, single ones of each between
    /// them, and now and then one in chunks.
    fn len_of(seq: u64) -> usize {
        const SIZES: [usize; 16] = [
            32,
            32,
            32,
            64 << 10,
            64 << 10,
            64 << 10,
            32,
            20 << 10,
            32,
            16 << 10,
            100 << 10,
            32,
            200 << 10,
            64 << 10,
            32,
            8 << 10,
        ];
        SIZES[seq as usize % SIZES.len()]
    }
}

/// `try_send` of a message larger than a frame puts all its chunks on the
/// lane at once (or none): it arrives intact, between the small messages
/// sent before and after it.
fn try_send_takes_a_chunked_message_whole(backend: Backend) {
    let (a, b) = pair(backend);
    let max_frame = a.channels()[usize::from(ChannelId::DATA.0)].max_frame as usize;
    let (receiver, rx) = b.receiver(Seen::of);
    let to = receiver.pid();
    let lens = [16, 3 * max_frame + 5, 16];
    a.run(move |cx, transport| async move {
        for (seq, len) in lens.into_iter().enumerate() {
            let message = Numbered::new(0, seq as u64, len);
            // Connected and idle: the window has room for all of it.
            while let Err(error) = transport.try_send(cx.pid(), to, ChannelId::DATA, &message) {
                assert_eq!(error, SendError::WouldBlock, "message {seq}");
                cx.sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    });
    let seen = collect(&rx, lens.len());
    for (seq, (seen, len)) in seen.iter().zip(lens).enumerate() {
        assert_eq!((seen.seq, seen.len), (seq as u64, len));
        assert!(seen.intact, "message {seq} arrives intact");
    }
    assert!(rx.recv_timeout(QUIET).is_err(), "no message arrives twice");
}

/// A proxy between two nodes cuts all their connections several times,
/// in the middle of frames, while one process streams numbered messages on
/// `control` (acknowledged) and another on `data` (best effort): every
/// `control` message arrives exactly once and in order; `data` messages
/// may be lost in the cuts, but none arrives twice or out of order.
fn acknowledged_delivery_survives_cut_connections(backend: Backend) {
    const COUNT: u64 = 3000;
    // Bytes towards the receiving node (over all connections) at which the
    // proxy cuts: all well within what the `control` stream alone sends.
    const CUTS: [u64; 5] = [20_000, 50_000, 90_000, 130_000, 170_000];
    let (a, b, proxy) = pair_through_proxy(backend, &CUTS);
    let (receiver, rx) = b.receiver(Seen::of);
    let to = receiver.pid();

    let control = a.sender(
        to,
        (0..COUNT)
            .map(|seq| (ChannelId::CONTROL, Numbered::new(0, seq, 8)))
            .collect(),
    );
    // The `data` stream ends with one more message once the cuts are over,
    // so that the test knows when everything that survived has arrived.
    let (data_tx, data) = mpsc::channel();
    let transport = a.transport();
    let data_sender = a
        .runtime
        .spawn(move |cx: Context<()>| async move {
            let mut result = Ok(());
            for seq in 0..COUNT {
                let message = Numbered::new(1, seq, 8);
                result = transport
                    .send(cx.pid(), to, ChannelId::DATA, &message)
                    .await;
                if result.is_err() {
                    break;
                }
            }
            let _ = data_tx.send(result);
            let _ = cx.recv().await;
            let last = Numbered::new(1, COUNT, 8);
            let _ = data_tx.send(transport.send(cx.pid(), to, ChannelId::DATA, &last).await);
        })
        .expect("spawn the data sender");

    let mut by_channel = ByChannel::new();
    let mut receive = |until: &dyn Fn(&ByChannel) -> bool| {
        while !until(&by_channel) {
            match rx.recv_timeout(ARRIVAL) {
                Ok(seen) => by_channel.entry(seen.channel).or_default().push(seen),
                Err(_) => panic!(
                    "stuck after {} control and {} data messages, {} cuts, with {} \
                     control bytes held, channels connected {:?}; A: {:?} {:?}; B: {:?} {:?}",
                    by_channel.get(&ChannelId::CONTROL.0).map_or(0, Vec::len),
                    by_channel.get(&ChannelId::DATA.0).map_or(0, Vec::len),
                    proxy.cuts(),
                    a.held_bytes(b.node(), ChannelId::CONTROL),
                    (0..4)
                        .map(|channel| a.is_connected(b.node(), ChannelId(channel)))
                        .collect::<Vec<_>>(),
                    a.stats(),
                    a.recent_errors(),
                    b.stats(),
                    b.recent_errors(),
                ),
            }
        }
    };
    receive(&|seen| seen.get(&ChannelId::CONTROL.0).map_or(0, Vec::len) as u64 >= COUNT);
    control
        .recv_timeout(ARRIVAL)
        .expect("the control sender finishes")
        .expect("every control send is taken");
    data.recv_timeout(ARRIVAL)
        .expect("the data sender finishes")
        .expect("every data send is taken");
    // The last cut may fall on a `data` connection whose pump has yet to
    // shut the links after forwarding the bytes before the cut point.
    eventually("the proxy cut at every point", || {
        proxy.cuts() == CUTS.len()
    });

    a.runtime.send(&data_sender, ());
    receive(&|seen| {
        seen.get(&ChannelId::DATA.0)
            .and_then(|data| data.last())
            .is_some_and(|last| last.seq == COUNT)
    });
    data.recv_timeout(ARRIVAL)
        .expect("the last data send finishes")
        .expect("the last data send is taken");
    // Whatever still comes is a duplicate.
    while let Ok(seen) = rx.recv_timeout(QUIET) {
        by_channel.entry(seen.channel).or_default().push(seen);
    }

    let control = &by_channel[&ChannelId::CONTROL.0];
    let numbers: Vec<u64> = control.iter().map(|seen| seen.seq).collect();
    assert_eq!(
        numbers,
        (0..COUNT).collect::<Vec<_>>(),
        "control: exactly once, in order"
    );
    let data = &by_channel[&ChannelId::DATA.0];
    for pair in data.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "data: {} then {}: a duplicate or a reordering",
            pair[0].seq,
            pair[1].seq
        );
    }
    assert!(control.iter().chain(data).all(|seen| seen.intact));
    assert!(
        a.stats().connections > a.channels().len() as u64,
        "the cuts made the lanes reconnect: {:?}",
        a.stats()
    );
}

/// On `control` (acknowledged), one process sends messages large enough to
/// go in chunks while another sends small ones, and a proxy cuts the
/// connection several times, mid-chunk: every message of both arrives
/// whole, once, in its sender's order (the chunks of one message are not
/// interleaved with other messages, so a reconnect resends all of them).
fn chunked_messages_on_an_acknowledged_channel_survive_cuts(backend: Backend) {
    const LARGE: u64 = 12;
    const SMALL: u64 = 400;
    const CUTS: [u64; 5] = [150_000, 600_000, 1_100_000, 1_600_000, 2_100_000];
    let (a, b, proxy) = pair_through_proxy(backend, &CUTS);
    let (receiver, rx) = b.receiver(Seen::of);
    let max_frame = a.channels()[usize::from(ChannelId::CONTROL.0)].max_frame as usize;
    let large_len = 2 * max_frame + 1000;
    let large = a.sender(
        receiver.pid(),
        (0..LARGE)
            .map(|seq| (ChannelId::CONTROL, Numbered::new(0, seq, large_len)))
            .collect(),
    );
    let small = a.sender(
        receiver.pid(),
        (0..SMALL)
            .map(|seq| (ChannelId::CONTROL, Numbered::new(1, seq, 16)))
            .collect(),
    );
    let seen = collect(&rx, (LARGE + SMALL) as usize);
    for sent in [large, small] {
        sent.recv_timeout(ARRIVAL)
            .expect("the sender finishes")
            .expect("every send is taken");
    }
    assert_each_sender_in_order(
        &seen,
        2,
        |sender| if sender == 0 { LARGE } else { SMALL },
        |sender, _| if sender == 0 { large_len } else { 16 },
    );
    assert!(rx.recv_timeout(QUIET).is_err(), "no message arrives twice");
    eventually("the proxy cut at every point", || {
        proxy.cuts() == CUTS.len()
    });
}

/// Messages for a pid that never existed and for a registered process
/// that ended are counted as undeliverable; the connections they came on
/// stay up and keep delivering.
fn a_message_for_no_process_is_counted_and_the_connection_stays(backend: Backend) {
    let (a, b) = pair(backend);
    let (receiver, rx) = b.receiver(Seen::of);
    eventually("every lane connects", || a.fully_connected(b.node()));
    let connections = a.stats().connections;

    // A process that was registered, received one message and ended.
    let (gone_tx, gone_rx) = mpsc::channel();
    let gone = b
        .runtime
        .spawn(move |cx: Context<Remote<Numbered>>| async move {
            let message = cx.recv().await.into_msg();
            let _ = gone_tx.send(message.map(|message| Seen::of(&message)));
        })
        .expect("spawn");
    b.register(&gone);
    let first = a.sender(gone.pid(), vec![(ChannelId::DATA, Numbered::new(0, 0, 8))]);
    first.recv_timeout(ARRIVAL).unwrap().unwrap();
    assert!(gone_rx.recv_timeout(ARRIVAL).unwrap().is_some());
    eventually("the process ends", || {
        b.runtime.process_info(gone.pid()).is_none()
    });

    let nobody = Pid::new(b.node(), ShardId(1), 12_345, 3);
    let messages = vec![
        (nobody, ChannelId::DATA),
        (nobody, ChannelId::DATA),
        (gone.pid(), ChannelId::DATA),
        (nobody, ChannelId::CONTROL),
        (gone.pid(), ChannelId::CONTROL),
    ];
    let undeliverable = messages.len() as u64;
    let sent = a.run(move |cx, transport| async move {
        for (seq, (to, channel)) in messages.into_iter().enumerate() {
            let message = Numbered::new(0, seq as u64, 8);
            transport.send(cx.pid(), to, channel, &message).await?;
        }
        Ok::<_, foundation::transport::SendError>(())
    });
    sent.expect("every send is taken");
    eventually("the messages for no process are counted", || {
        b.stats().undeliverable == undeliverable
    });

    // The same connections still deliver.
    let after = a.sender(
        receiver.pid(),
        vec![
            (ChannelId::DATA, Numbered::new(1, 0, 8)),
            (ChannelId::CONTROL, Numbered::new(2, 0, 8)),
        ],
    );
    after.recv_timeout(ARRIVAL).unwrap().unwrap();
    let seen = collect(&rx, 2);
    assert!(seen.iter().all(|seen| seen.intact));
    assert_eq!(b.stats().connection_errors, 0, "{:?}", b.recent_errors());
    assert_eq!(a.stats().connection_errors, 0, "{:?}", a.recent_errors());
    assert_eq!(a.stats().connections, connections, "no lane reconnected");
    assert!(a.fully_connected(b.node()));
}

/// What a receiver saw, by channel.
type ByChannel = BTreeMap<u16, Vec<Seen>>;

/// Two nodes, A a peer of B through a proxy that cuts every connection
/// when the bytes towards B reach each of `cuts`.
fn pair_through_proxy(backend: Backend, cuts: &[u64]) -> (Node, Node, Proxy) {
    let a = Node::start(config(backend));
    let b = Node::start(config(backend));
    let proxy = Proxy::new(b.local_addr());
    proxy.cut_at(cuts);
    a.add_peer(b.node(), proxy.addr()).expect("a new peer");
    (a, b, proxy)
}

/// A node that knows only an address learns who listens there, as a node
/// joining through a seed does; a node with another cookie is refused, and
/// neither side is left with a lane, a peer or a counted error.
fn identify_names_the_node_at_an_address_and_makes_no_lane(backend: Backend) {
    let a = Node::start(config(backend));
    let mut named = config(backend);
    named.name = "the-seed".into();
    let b = Node::start(named);
    let at = b.local_addr();
    let found = a.run(move |cx, transport| async move { transport.identify(&cx, at).await });
    let found = found.expect("the seed answers");
    assert_eq!((found.node, found.name.as_str()), (b.node(), "the-seed"));

    let mut stranger = config(backend);
    stranger.cookie = foundation::transport::Cookie::new("another cluster");
    let c = Node::start(stranger);
    let refused = c.run(move |cx, transport| async move { transport.identify(&cx, at).await });
    assert_eq!(
        refused,
        Err(ConnectionError::Handshake(HandshakeError::Cookie))
    );

    assert_eq!(a.stats().connections, 0, "no lane was connected");
    assert!(!a.is_connected(b.node(), ChannelId::CONTROL));
    eventually("the seed counts the stranger's refusal", || {
        b.stats().connection_errors == 1
    });
    assert_eq!(a.recent_errors(), Vec::new());
}

/// A process registered at an alias receives what peers send to the
/// alias; once it ends, the alias leads nowhere and a message for it is
/// counted as undeliverable.
fn a_message_to_an_alias_reaches_its_process_until_it_ends(backend: Backend) {
    let (a, b) = pair(backend);
    let alias = Pid::new(b.node(), ShardId(u8::MAX), 1, 0);
    let (tx, rx) = mpsc::channel();
    let service = b
        .runtime
        .spawn(move |cx: Context<Remote<Numbered>>| async move {
            let message = cx.recv().await.into_msg().map(|m| Seen::of(&m));
            let _ = tx.send(message);
        })
        .expect("spawn");
    b.register_as(alias, &service);
    let sent = a.sender(alias, vec![(ChannelId::DATA, Numbered::new(0, 0, 8))]);
    sent.recv_timeout(ARRIVAL).unwrap().unwrap();
    let seen = rx.recv_timeout(ARRIVAL).unwrap().expect("a message");
    assert_eq!((seen.seq, seen.intact), (0, true));
    eventually("the process ends", || {
        b.runtime.process_info(service.pid()).is_none()
    });
    let again = a.sender(alias, vec![(ChannelId::DATA, Numbered::new(0, 1, 8))]);
    again.recv_timeout(ARRIVAL).unwrap().unwrap();
    eventually("the message for the alias is counted", || {
        b.stats().undeliverable == 1
    });
}

/// A send to a process of the sender's own node arrives as a `Remote`, in
/// order, with no connection made; one for no process is counted.
fn a_message_for_this_node_is_delivered_without_a_connection(backend: Backend) {
    let a = Node::start(config(backend));
    let (receiver, rx) = a.receiver(Seen::of);
    let to = receiver.pid();
    let nobody = Pid::new(a.node(), ShardId(0), 77_777, 1);
    let from = a.run(move |cx, transport| async move {
        for seq in 0..3 {
            let message = Numbered::new(0, seq, 32);
            transport
                .send(cx.pid(), to, ChannelId::DATA, &message)
                .await?;
        }
        transport.try_send(cx.pid(), nobody, ChannelId::DATA, &Numbered::new(0, 9, 8))?;
        Ok::<_, SendError>(cx.pid())
    });
    let from = from.expect("the sends are taken");
    let seen = collect(&rx, 3);
    assert!(seen.iter().all(|s| s.intact && s.source == from));
    assert_eq!(
        seen.iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(a.stats().connections, 0);
    eventually("the message for nobody is counted", || {
        a.stats().undeliverable == 1 && a.stats().delivered == 3
    });
}

/// Two nodes, the first a peer of the second.
fn pair(backend: Backend) -> (Node, Node) {
    let a = Node::start(config(backend));
    let b = Node::start(config(backend));
    a.connect_to(&b);
    (a, b)
}

/// Starts `senders` processes on `node`, each sending `count` numbered
/// messages on `data` to `to`, message `seq` with a body of `len(seq)`
/// bytes; waits until every send is taken and returns what `rx` saw.
fn send_from_each(
    node: &Node,
    to: Pid,
    rx: &mpsc::Receiver<Seen>,
    senders: u32,
    count: u64,
    len: impl Fn(u64) -> usize,
) -> Vec<Seen> {
    let senders_done: Vec<_> = (0..senders)
        .map(|sender| {
            let messages = (0..count)
                .map(|seq| (ChannelId::DATA, Numbered::new(sender, seq, len(seq))))
                .collect();
            node.sender(to, messages)
        })
        .collect();
    for done in senders_done {
        done.recv_timeout(ARRIVAL)
            .expect("the sender finishes")
            .expect("every send is taken");
    }
    collect(rx, (u64::from(senders) * count) as usize)
}

/// Checks that `seen` holds, for each of `senders`, its messages `0..count`
/// in order, from one process per sender, each with the body length
/// `len(sender, seq)` and intact.
fn assert_each_sender_in_order(
    seen: &[Seen],
    senders: u32,
    count: impl Fn(u32) -> u64,
    len: impl Fn(u32, u64) -> usize,
) {
    let mut sources = Vec::new();
    for sender in 0..senders {
        let mine: Vec<&Seen> = seen.iter().filter(|seen| seen.sender == sender).collect();
        let numbers: Vec<u64> = mine.iter().map(|seen| seen.seq).collect();
        assert_eq!(
            numbers,
            (0..count(sender)).collect::<Vec<_>>(),
            "sender {sender}'s messages, in order"
        );
        for seen in &mine {
            assert_eq!(seen.len, len(sender, seen.seq), "{seen:?}");
            assert!(seen.intact, "{seen:?} arrived corrupted");
            assert_eq!(seen.source, mine[0].source, "one process per sender");
        }
        sources.push(mine[0].source);
    }
    sources.sort_unstable();
    sources.dedup();
    assert_eq!(sources.len(), senders as usize, "one process per sender");
}
