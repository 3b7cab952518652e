//! Bad input closes only the connection it came on, on each backend.
//!
//! Each test puts a misbehaving peer beside a working pair of nodes (A, a
//! peer of B): a raw socket that writes bytes that are not frames, frames
//! that are malformed, a handshake that is wrong, or — once properly
//! authenticated — frames that break the connection's rules; or a node
//! with the wrong cookie or channel list. Every time, B closes that
//! connection, shows the typed error in `recent_errors` and its counters,
//! delivers nothing from it, and still serves A.

mod common;

use std::sync::mpsc;

use common::raw_peer::{self, RawPeer};
use common::transport::{config, on_each_backend, Node, Numbered, Seen, ARRIVAL, COOKIE};
use common::{eventually, QUIET};
use foundation::transport::frame::{self, FrameError, FrameHeader, FrameKind, HEADER_LEN, VERSION};
use foundation::transport::fuzzing::{channel_digest, HandshakeMessage as Handshake, Refusal};
use foundation::transport::{
    Backend, ChannelId, ChannelSpec, ConnectionError, Cookie, HandshakeError, Remote,
    TransportConfig, TransportStats, PROTOCOL_VERSION,
};
use foundation::{Addr, NodeId, Pid, ShardId};

on_each_backend!(
    bytes_that_are_not_a_frame_are_a_bad_magic,
    garbage_is_a_frame_error,
    another_frame_version_is_unsupported,
    a_frame_cut_short_by_the_close_is_truncated,
    an_oversized_length_is_refused_before_reading_the_payload,
    a_silent_connection_times_out,
    a_data_frame_before_the_handshake_is_refused_and_not_delivered,
    another_protocol_version_is_refused_with_a_reason,
    a_hello_for_a_channel_that_does_not_exist_is_refused,
    a_proof_without_the_cookie_is_refused,
    a_node_with_another_cookie_is_refused_on_both_sides,
    a_node_with_another_channel_list_is_refused_on_both_sides,
    a_payload_that_is_not_the_destinations_type_is_dropped_and_the_connection_stays,
    a_frame_from_another_nodes_process_closes_the_connection,
    a_frame_for_another_channel_closes_the_connection,
    feedback_and_handshake_frames_after_the_handshake_close_the_connection,
    an_oversized_frame_after_the_handshake_closes_the_connection,
    a_sequence_gap_on_an_acknowledged_channel_closes_the_connection,
    chunks_over_the_maximum_message_close_the_connection,
    chunks_without_their_first_are_dropped,
);

/// An HTTP request where B expects a frame.
fn bytes_that_are_not_a_frame_are_a_bad_magic(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let request = b"GET / HTTP/1.1\r\nHost: foundation\r\nAccept: */*\r\n\r\n";
    assert!(request.len() >= HEADER_LEN, "long enough to be a header");
    let mut raw = RawPeer::connect(&cluster.b);
    raw.send(request);
    raw.read_until_closed();
    let error = cluster.b.expect_error("a bad magic", |error| {
        matches!(error, ConnectionError::Frame(FrameError::BadMagic(_)))
    });
    assert_eq!(
        error,
        ConnectionError::Frame(FrameError::BadMagic(*b"GET "))
    );
    cluster.assert_counted(before, Counted::FRAME_ERROR);
    cluster.assert_still_served();
}

/// Random bytes.
fn garbage_is_a_frame_error(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let mut raw = RawPeer::connect(&cluster.b);
    raw.send(&garbage);
    raw.read_until_closed();
    cluster.b.expect_error("a frame error", |error| {
        matches!(error, ConnectionError::Frame(_))
    });
    cluster.assert_counted(before, Counted::FRAME_ERROR);
    cluster.assert_still_served();
}

/// A well-formed hello in a frame whose version byte is not this build's.
fn another_frame_version_is_unsupported(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let mut hello = hello_frame(PROTOCOL_VERSION);
    hello[4] = VERSION + 1;
    let mut raw = RawPeer::connect(&cluster.b);
    raw.send(&hello);
    raw.read_until_closed();
    let error = cluster.b.expect_error("an unsupported version", |error| {
        matches!(
            error,
            ConnectionError::Frame(FrameError::UnsupportedVersion(_))
        )
    });
    assert_eq!(
        error,
        ConnectionError::Frame(FrameError::UnsupportedVersion(VERSION + 1))
    );
    cluster.assert_counted(before, Counted::FRAME_ERROR);
    cluster.assert_still_served();
}

/// The first part of a hello, then the end of the stream: the frame the
/// header announced never comes whole.
fn a_frame_cut_short_by_the_close_is_truncated(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let hello = hello_frame(PROTOCOL_VERSION);
    let mut raw = RawPeer::connect(&cluster.b);
    raw.send(&hello[..hello.len() / 2]);
    raw.finish();
    raw.read_until_closed();
    cluster.b.expect_error("a truncated frame", |error| {
        matches!(error, ConnectionError::Frame(FrameError::Truncated { .. }))
    });
    cluster.assert_counted(before, Counted::FRAME_ERROR);
    cluster.assert_still_served();
}

/// A header that announces a gigabyte: refused from the header alone,
/// without waiting for (or allocating) the payload.
fn an_oversized_length_is_refused_before_reading_the_payload(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let mut header = raw_peer::header(FrameKind::Handshake, 0, Pid::from_bits(0), 0);
    header.length = 1 << 30;
    let mut raw = RawPeer::connect(&cluster.b);
    raw.send(&header.to_bytes());
    raw.read_until_closed();
    let error = cluster.b.expect_error("an oversized frame", |error| {
        matches!(error, ConnectionError::Frame(FrameError::Oversized { .. }))
    });
    assert!(
        matches!(error, ConnectionError::Frame(FrameError::Oversized { length, .. }) if length == 1 << 30),
        "{error:?}"
    );
    cluster.assert_counted(before, Counted::FRAME_ERROR);
    cluster.assert_still_served();
}

/// A connection that sends half a hello and then nothing is closed when
/// the handshake's time is up.
fn a_silent_connection_times_out(backend: Backend) {
    let mut b_config = config(backend);
    b_config.handshake_timeout = std::time::Duration::from_millis(200);
    let mut cluster = Cluster::start(b_config);
    let before = cluster.b.stats();
    let hello = hello_frame(PROTOCOL_VERSION);
    let mut raw = RawPeer::connect(&cluster.b);
    raw.send(&hello[..HEADER_LEN + 8]);
    raw.read_until_closed();
    cluster.b.expect_error("a handshake timeout", |error| {
        *error == ConnectionError::TimedOut
    });
    let after = cluster.b.stats();
    assert_eq!(after.connection_errors - before.connection_errors, 1);
    assert_eq!(after.frame_errors, before.frame_errors);
    cluster.assert_still_served();
}

/// A message for a registered process, sent before any handshake, and
/// another sent after a hello instead of the proof: both connections are
/// refused, and neither message is delivered.
fn a_data_frame_before_the_handshake_is_refused_and_not_delivered(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let to = cluster.receiver.pid();
    let message = Numbered::new(9, 0, 8);

    let mut raw = RawPeer::connect(&cluster.b);
    raw.send_frame(raw_peer::header(FrameKind::Message, 1, to, 0), &message);
    raw.read_until_closed();

    let mut raw = RawPeer::connect(&cluster.b);
    raw.hello(PROTOCOL_VERSION, &ChannelSpec::defaults(), 1, 0);
    assert!(matches!(
        raw.read_handshake(),
        Some(Handshake::Challenge { .. })
    ));
    raw.send_frame(raw_peer::header(FrameKind::Message, 1, to, 0), &message);
    raw.read_until_closed();

    eventually("both connections are refused", || {
        cluster.b.stats().refused - before.refused == 2
    });
    cluster.b.expect_error("a refused handshake", |error| {
        matches!(
            error,
            ConnectionError::Handshake(HandshakeError::Malformed(_) | HandshakeError::OutOfOrder)
        )
    });
    cluster.assert_counted(before, Counted::refused(2));
    assert_eq!(cluster.b.stats().delivered, before.delivered);
    assert!(cluster.rx.recv_timeout(QUIET).is_err(), "nothing delivered");
    cluster.assert_still_served();
}

/// A hello speaking the next protocol version: B answers with a refusal
/// that says why, and closes.
fn another_protocol_version_is_refused_with_a_reason(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let mut raw = RawPeer::connect(&cluster.b);
    raw.hello(PROTOCOL_VERSION + 1, &ChannelSpec::defaults(), 0, 0);
    assert_eq!(
        raw.read_handshake(),
        Some(Handshake::Refuse {
            reason: Refusal::Protocol,
            protocol: PROTOCOL_VERSION
        })
    );
    raw.read_until_closed();
    let error = cluster.b.expect_error("a protocol mismatch", |error| {
        matches!(
            error,
            ConnectionError::Handshake(HandshakeError::Protocol { .. })
        )
    });
    assert_eq!(
        error,
        ConnectionError::Handshake(HandshakeError::Protocol {
            ours: PROTOCOL_VERSION,
            theirs: PROTOCOL_VERSION + 1
        })
    );
    cluster.assert_counted(before, Counted::refused(1));
    cluster.assert_still_served();
}

/// A hello for channel 7 of four, and one for a lane past `data`'s two.
fn a_hello_for_a_channel_that_does_not_exist_is_refused(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    for (channel, lane) in [(7, 0), (ChannelId::DATA.0, 2)] {
        let mut raw = RawPeer::connect(&cluster.b);
        raw.hello(PROTOCOL_VERSION, &ChannelSpec::defaults(), channel, lane);
        assert!(
            matches!(
                raw.read_handshake(),
                Some(Handshake::Refuse {
                    reason: Refusal::UnknownChannel,
                    ..
                })
            ),
            "channel {channel} lane {lane} refused"
        );
        raw.read_until_closed();
        cluster.b.expect_error("an unknown channel", |error| {
            *error == ConnectionError::Handshake(HandshakeError::UnknownChannel(channel))
        });
    }
    cluster.assert_counted(before, Counted::refused(2));
    cluster.assert_still_served();
}

/// A dialer that cannot answer the challenge (it does not know the
/// cookie): B refuses it with the reason.
fn a_proof_without_the_cookie_is_refused(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let mut raw = RawPeer::connect(&cluster.b);
    let ours = raw.hello(PROTOCOL_VERSION, &ChannelSpec::defaults(), 1, 0);
    let Some(Handshake::Challenge { nonce, .. }) = raw.read_handshake() else {
        panic!("no challenge");
    };
    raw.send_handshake(&Handshake::Proof {
        mac: raw_peer::mac("not the cookie", b"dialer", &nonce, &ours),
    });
    assert!(matches!(
        raw.read_handshake(),
        Some(Handshake::Refuse {
            reason: Refusal::Cookie,
            ..
        })
    ));
    raw.read_until_closed();
    cluster.b.expect_error("a cookie mismatch", |error| {
        *error == ConnectionError::Handshake(HandshakeError::Cookie)
    });
    cluster.assert_counted(before, Counted::refused(1));
    cluster.assert_still_served();
}

/// A proper node whose cookie is another: neither side connects, both
/// show `Handshake(Cookie)`, nothing it sends is delivered, and A and B go
/// on as before.
fn a_node_with_another_cookie_is_refused_on_both_sides(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let mut stranger_config = config(backend);
    stranger_config.cookie = Cookie::new("another cookie");
    let stranger = Node::start(stranger_config);
    stranger.connect_to(&cluster.b);
    let to = cluster.receiver.pid();
    let queued = stranger.run(move |cx, transport| async move {
        transport.try_send(cx.pid(), to, ChannelId::DATA, &Numbered::new(9, 0, 8))
    });
    assert_eq!(queued, Ok(()), "queued while not connected");

    stranger.expect_error("a cookie mismatch on the stranger", |error| {
        *error == ConnectionError::Handshake(HandshakeError::Cookie)
    });
    assert_eq!(stranger.stats().connections, 0);
    assert!(!stranger.is_connected(cluster.b.node(), ChannelId::DATA));
    cluster.assert_still_served();
    assert_eq!(cluster.a.stats().connection_errors, 0);

    cluster.b.expect_error("a cookie mismatch on B", |error| {
        *error == ConnectionError::Handshake(HandshakeError::Cookie)
    });
    assert!(cluster.b.stats().refused > before.refused);
    assert!(
        cluster
            .b
            .recent_errors()
            .iter()
            .all(|error| matches!(error, ConnectionError::Handshake(HandshakeError::Cookie))),
        "every error on B is the stranger's cookie: {:?}",
        cluster.b.recent_errors()
    );
    cluster.assert_still_served();
}

/// A proper node that declares one channel more: refused on both sides
/// with `Handshake(Channels)`.
fn a_node_with_another_channel_list_is_refused_on_both_sides(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    let mut other_config = config(backend);
    other_config
        .channels
        .push(ChannelSpec::new("extra").priority(4));
    let other = Node::start(other_config);
    other.connect_to(&cluster.b);

    other.expect_error("a channel mismatch on the other node", |error| {
        *error == ConnectionError::Handshake(HandshakeError::Channels)
    });
    cluster.b.expect_error("a channel mismatch on B", |error| {
        *error == ConnectionError::Handshake(HandshakeError::Channels)
    });
    assert_eq!(other.stats().connections, 0);
    let after = cluster.b.stats();
    assert!(after.refused > before.refused);
    assert_eq!(
        after.refused - before.refused,
        after.connection_errors - before.connection_errors
    );
    assert_eq!(after.frame_errors, before.frame_errors);
    cluster.assert_still_served();
}

/// An authenticated peer sends a registered process a payload that is
/// A well-framed message whose payload is not the destination's type, on
/// the acknowledged channel: dropped, counted and reported, and the
/// connection carries on — closing it would only bring the message back,
/// resent after the reconnect, forever.
fn a_payload_that_is_not_the_destinations_type_is_dropped_and_the_connection_stays(
    backend: Backend,
) {
    let mut cluster = Cluster::start(config(backend));
    let mut raw = cluster.authenticated(ChannelId::CONTROL);
    let before = cluster.b.stats();
    let to = cluster.receiver.pid();
    let control = ChannelId::CONTROL.0;
    raw.send_frame(raw_peer::header(FrameKind::Message, control, to, 2), &7_u8);
    raw.send_frame(
        raw_peer::header(FrameKind::Message, control, to, 3),
        &Numbered::new(9, 1, 8),
    );
    let seen = cluster
        .rx
        .recv_timeout(ARRIVAL)
        .expect("the next message arrives");
    assert_eq!((seen.seq, seen.intact), (1, true));
    cluster.b.expect_error("a refused message", |error| {
        matches!(
            error,
            ConnectionError::MessageRefused(FrameError::InvalidPayload(_))
        )
    });
    let frame_error = Counted {
        connection_errors: 0,
        frame_errors: 1,
        refused: 0,
    };
    cluster.assert_counted(before, frame_error);
    cluster.assert_still_served();
}

/// A frame whose source pid names another node than the one that
/// handshook: a node speaks only for its own processes.
fn a_frame_from_another_nodes_process_closes_the_connection(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let mut raw = cluster.authenticated(ChannelId::DATA);
    let before = cluster.b.stats();
    let mut header = raw_peer::header(FrameKind::Message, 1, cluster.receiver.pid(), 0);
    let claimed = NodeId(header.source.node().0 + 1);
    header.source = Pid::new(claimed, ShardId(0), 1, 1);
    raw.send_frame(header, &Numbered::new(9, 1, 8));
    raw.read_until_closed();
    cluster.b.expect_error(
        "an impersonation",
        |error| matches!(error, ConnectionError::Impersonation { claimed: c, .. } if *c == claimed),
    );
    cluster.assert_counted(before, Counted::ERROR);
    assert!(cluster.rx.recv_timeout(QUIET).is_err(), "nothing delivered");
    cluster.assert_still_served();
}

/// A frame that names `gossip` on a `data` connection.
fn a_frame_for_another_channel_closes_the_connection(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let mut raw = cluster.authenticated(ChannelId::DATA);
    let before = cluster.b.stats();
    let to = cluster.receiver.pid();
    let header = raw_peer::header(FrameKind::Message, ChannelId::GOSSIP.0, to, 0);
    raw.send_frame(header, &Numbered::new(9, 1, 8));
    raw.read_until_closed();
    cluster
        .b
        .expect_error("a frame for another channel", |error| {
            *error == ConnectionError::WrongChannel(ChannelId::GOSSIP.0)
        });
    cluster.assert_counted(before, Counted::ERROR);
    assert!(cluster.rx.recv_timeout(QUIET).is_err(), "nothing delivered");
    cluster.assert_still_served();
}

/// Credit frames go from receiver to sender, handshake frames before the
/// handshake ends: from an authenticated sender, both are out of place.
fn feedback_and_handshake_frames_after_the_handshake_close_the_connection(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let before = cluster.b.stats();
    for kind in [FrameKind::Credit, FrameKind::Handshake] {
        let mut raw = cluster.authenticated(ChannelId::DATA);
        raw.send_frame(raw_peer::header(kind, 1, Pid::from_bits(0), 0), &0_u64);
        raw.read_until_closed();
        cluster.b.expect_error("an unexpected frame", |error| {
            *error == ConnectionError::UnexpectedFrame(kind)
        });
    }
    cluster.assert_counted(before, Counted::errors(2));
    cluster.assert_still_served();
}

/// A frame over `data`'s maximum frame, after the handshake.
fn an_oversized_frame_after_the_handshake_closes_the_connection(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let max = cluster.b.channels()[usize::from(ChannelId::DATA.0)].max_frame;
    let mut raw = cluster.authenticated(ChannelId::DATA);
    let before = cluster.b.stats();
    let mut header = raw_peer::header(FrameKind::Message, 1, cluster.receiver.pid(), 0);
    header.length = max + 1;
    raw.send(&header.to_bytes());
    raw.read_until_closed();
    let error = cluster.b.expect_error("an oversized frame", |error| {
        matches!(error, ConnectionError::Frame(FrameError::Oversized { .. }))
    });
    assert_eq!(
        error,
        ConnectionError::Frame(FrameError::Oversized {
            length: max + 1,
            max
        })
    );
    cluster.assert_counted(before, Counted::FRAME_ERROR);
    cluster.assert_still_served();
}

/// On `control` (acknowledged), a frame sent again is dropped, and one
/// that skips ahead closes the connection; the next connection of the
/// same lane resumes after what was delivered.
fn a_sequence_gap_on_an_acknowledged_channel_closes_the_connection(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let mut raw = cluster.authenticated(ChannelId::CONTROL);
    let before = cluster.b.stats();
    let to = cluster.receiver.pid();
    let control = ChannelId::CONTROL.0;
    // The first message (sequence 1) was delivered by `authenticated`.
    raw.send_frame(
        raw_peer::header(FrameKind::Message, control, to, 1),
        &Numbered::new(9, 0, 8),
    );
    raw.send_frame(
        raw_peer::header(FrameKind::Message, control, to, 3),
        &Numbered::new(9, 2, 8),
    );
    raw.read_until_closed();
    cluster.b.expect_error("a sequence gap", |error| {
        *error
            == ConnectionError::SequenceGap {
                expected: 2,
                got: 3,
            }
    });
    cluster.assert_counted(before, Counted::ERROR);
    assert!(
        cluster.rx.recv_timeout(QUIET).is_err(),
        "no duplicate, no gap"
    );

    let mut again = RawPeer::connect(&cluster.b);
    let delivered = again.handshake(COOKIE, &ChannelSpec::defaults(), control, 0);
    assert_eq!(delivered, Ok(1), "the lane resumes after sequence 1");
    again.send_frame(
        raw_peer::header(FrameKind::Message, control, to, 2),
        &Numbered::new(9, 1, 8),
    );
    let seen = cluster
        .rx
        .recv_timeout(ARRIVAL)
        .expect("sequence 2 arrives");
    assert_eq!((seen.sender, seen.seq), (9, 1));
    cluster.assert_still_served();
}

/// Chunks of one message that add up to more than the channel's maximum
/// message, never finished.
fn chunks_over_the_maximum_message_close_the_connection(backend: Backend) {
    const MAX_MESSAGE: usize = 256 * 1024;
    let small = |mut config: TransportConfig| {
        let data = &mut config.channels[usize::from(ChannelId::DATA.0)];
        *data = data.clone().max_message(MAX_MESSAGE);
        config
    };
    let mut cluster = Cluster::start_with(small(config(backend)), small(config(backend)));
    let max_frame = cluster.b.channels()[usize::from(ChannelId::DATA.0)].max_frame as usize;
    let mut raw = cluster.authenticated(ChannelId::DATA);
    let before = cluster.b.stats();
    let piece = vec![0xab; max_frame];
    for i in 0..MAX_MESSAGE / max_frame + 1 {
        let mut header = raw_peer::header(FrameKind::Chunk, 1, cluster.receiver.pid(), 0);
        if i == 0 {
            header.flags = frame::FIRST_CHUNK;
        }
        raw.send_raw_frame(header, &piece);
    }
    raw.read_until_closed();
    cluster.b.expect_error(
        "a message over the maximum",
        |error| matches!(error, ConnectionError::MessageTooLarge(size) if *size > MAX_MESSAGE),
    );
    cluster.assert_counted(before, Counted::ERROR);
    assert!(cluster.rx.recv_timeout(QUIET).is_err(), "nothing delivered");
    cluster.assert_still_served();
}

/// The tail of a message whose first chunk never came (lost with an
/// earlier connection on a best-effort channel) is dropped, not delivered
/// as a message; the connection carries on, and a whole message after it
/// arrives.
fn chunks_without_their_first_are_dropped(backend: Backend) {
    let mut cluster = Cluster::start(config(backend));
    let mut raw = cluster.authenticated(ChannelId::DATA);
    let to = cluster.receiver.pid();
    let mut tail = raw_peer::header(FrameKind::Chunk, 1, to, 0);
    tail.flags = frame::LAST_CHUNK;
    raw.send_raw_frame(tail, &[0xab; 64]);
    assert!(cluster.rx.recv_timeout(QUIET).is_err(), "no half message");
    raw.send_frame(
        raw_peer::header(FrameKind::Message, 1, to, 0),
        &Numbered::new(0, 7, 8),
    );
    let seen = cluster.rx.recv_timeout(ARRIVAL).expect("the next message");
    assert_eq!((seen.seq, seen.intact), (7, true));
    assert!(
        cluster.b.recent_errors().is_empty(),
        "{:?}",
        cluster.b.recent_errors()
    );
}

/// Node A, a peer of node B, and a process on B that receives
/// [`Numbered`] messages and reports them.
struct Cluster {
    a: Node,
    b: Node,
    receiver: Addr<Remote<Numbered>>,
    rx: mpsc::Receiver<Seen>,
    /// Messages A sent the receiver so far.
    sent: u64,
}

/// How many connection errors, frame errors and refusals a test expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counted {
    connection_errors: u64,
    frame_errors: u64,
    refused: u64,
}

impl Counted {
    const ERROR: Counted = Counted::errors(1);
    const FRAME_ERROR: Counted = Counted {
        connection_errors: 1,
        frame_errors: 1,
        refused: 0,
    };

    const fn errors(connection_errors: u64) -> Counted {
        Counted {
            connection_errors,
            frame_errors: 0,
            refused: 0,
        }
    }

    const fn refused(refused: u64) -> Counted {
        Counted {
            connection_errors: refused,
            frame_errors: 0,
            refused,
        }
    }
}

impl Cluster {
    /// A with the test defaults, B with `b_config`; A's first message has
    /// arrived.
    fn start(b_config: TransportConfig) -> Cluster {
        let a_config = config(b_config.backend.expect("the test's backend"));
        Cluster::start_with(a_config, b_config)
    }

    fn start_with(a_config: TransportConfig, b_config: TransportConfig) -> Cluster {
        let a = Node::start(a_config);
        let b = Node::start(b_config);
        a.connect_to(&b);
        let (receiver, rx) = b.receiver(Seen::of);
        let mut cluster = Cluster {
            a,
            b,
            receiver,
            rx,
            sent: 0,
        };
        cluster.assert_still_served();
        cluster
    }

    /// A's next message to the receiver arrives, and nothing else before
    /// it.
    fn assert_still_served(&mut self) {
        let message = Numbered::new(0, self.sent, 8);
        let sent = self
            .a
            .sender(self.receiver.pid(), vec![(ChannelId::DATA, message)]);
        sent.recv_timeout(ARRIVAL)
            .expect("the sender finishes")
            .expect("the send is taken");
        let seen = self.rx.recv_timeout(ARRIVAL).unwrap_or_else(|_| {
            panic!(
                "A's message {} did not arrive; B: {:?} {:?}",
                self.sent,
                self.b.stats(),
                self.b.recent_errors()
            )
        });
        assert_eq!(
            (seen.sender, seen.seq),
            (0, self.sent),
            "A's message, and only it"
        );
        assert!(seen.intact);
        self.sent += 1;
    }

    /// A raw peer authenticated on `channel`'s first lane, whose first
    /// message (sequence 1 on an acknowledged channel) has arrived.
    fn authenticated(&mut self, channel: ChannelId) -> RawPeer {
        let mut raw = RawPeer::connect(&self.b);
        let delivered = raw.handshake(COOKIE, &ChannelSpec::defaults(), channel.0, 0);
        assert_eq!(delivered, Ok(0), "the raw peer is admitted");
        let header = raw_peer::header(FrameKind::Message, channel.0, self.receiver.pid(), 1);
        raw.send_frame(header, &Numbered::new(9, 0, 8));
        let seen = self
            .rx
            .recv_timeout(ARRIVAL)
            .expect("the raw peer's message arrives");
        assert_eq!((seen.sender, seen.seq, seen.intact), (9, 0, true));
        assert_eq!(seen.source, header.source);
        raw
    }

    /// B's counters grew by `expected` since `before`.
    fn assert_counted(&self, before: TransportStats, expected: Counted) {
        let after = self.b.stats();
        let counted = Counted {
            connection_errors: after.connection_errors - before.connection_errors,
            frame_errors: after.frame_errors - before.frame_errors,
            refused: after.refused - before.refused,
        };
        assert_eq!(
            counted,
            expected,
            "B's errors: {:?}",
            self.b.recent_errors()
        );
    }
}

/// A well-formed hello frame for `data`'s first lane, speaking
/// `protocol`.
fn hello_frame(protocol: u16) -> Vec<u8> {
    let hello = Handshake::Hello {
        protocol,
        name: "raw-peer".into(),
        node: raw_peer::RAW_NODE.0,
        incarnation: 1,
        channel: ChannelId::DATA.0,
        lane: 0,
        channels: channel_digest(&ChannelSpec::defaults()),
        nonce: [1; 32],
    };
    let mut bytes = Vec::new();
    let header: FrameHeader = raw_peer::header(FrameKind::Handshake, 0, Pid::from_bits(0), 0);
    frame::encode(header, &hello, &mut bytes).expect("encode the hello");
    bytes
}
