//! The connection handshake, as a sans-IO state machine.
//!
//! ```text
//! dialer                                   listener
//!   Hello { protocol, name, node, incarnation, channel, lane,
//!           channel digest, nonce_d }  ------------>
//!                                          checks protocol, digest
//!   <------------  Challenge { protocol, name, node, nonce_l,
//!                              mac_l = HMAC(cookie, "listener" | nonce_d | nonce_l),
//!                              delivered, incarnation }
//! checks mac_l
//!   Proof { mac_d = HMAC(cookie, "dialer" | nonce_l | nonce_d) }  --->
//!                                          checks mac_d
//!   <------------  Welcome
//! ```
//!
//! Both sides prove that they know the cookie without sending it: each
//! answers the other's fresh nonce with an HMAC-SHA256 keyed by the cookie,
//! and each checks the other's answer in constant time. A mismatch of
//! protocol version, channel list or cookie is refused with a typed
//! [`HandshakeError`] on both sides: the listener sends `Refuse` with the
//! reason before it closes, so the dialer can tell "wrong cookie" from
//! "network trouble" and does not hammer a peer that will never accept it.
//!
//! `delivered` (in the challenge) is how far the listener has delivered
//! this dialer's acknowledged lane, so that after a reconnect the dialer
//! resends only what was lost. `incarnation` tells a restarted node from a
//! reconnecting one, both ways: a listener meeting a new incarnation of a
//! dialer expects its sequence numbers from 1 again (hello), and a dialer
//! meeting a new incarnation of a listener numbers from 1 again
//! (challenge).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use foundation_sched::sim::SimRng;
use foundation_sched::time::Instant;
use foundation_sched::{NodeId, Pid};
use hmac::{Hmac, Mac};
use rkyv::{Archive, Deserialize, Serialize};
use sha2::Sha256;

use crate::frame::{self, Frame, FrameError, FrameHeader, FrameKind};

/// The handshake protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// The channel a hello names to ask only who the listener is
/// ([`Transport::identify`](crate::Transport::identify)): the handshake runs
/// in full, both sides proving the cookie, and the connection then closes.
/// No lane is involved on either side.
pub(crate) const IDENTIFY_CHANNEL: u16 = u16::MAX;

/// The largest handshake frame payload accepted.
pub(crate) const MAX_HANDSHAKE_PAYLOAD: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret that admits a node to the cluster. It never leaves the
/// node: the handshake proves knowledge of it with HMAC.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(Vec<u8>);

impl Cookie {
    /// A cookie from its secret bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Cookie {
        Cookie(secret.into())
    }

    fn mac(&self, label: &[u8], first: &[u8; 32], second: &[u8; 32]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label);
        mac.update(first);
        mac.update(second);
        mac
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<secret>)")
    }
}

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The two sides speak different protocol versions.
    Protocol {
        /// This node's version.
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// A side failed to prove it knows the cookie.
    Cookie,
    /// The two nodes declare different channel lists.
    Channels,
    /// The dialer asked for a channel or lane that does not exist.
    UnknownChannel(u16),
    /// The listener is not the node the dialer meant to reach.
    UnexpectedNode {
        /// The node dialled.
        expected: NodeId,
        /// The node that answered.
        got: NodeId,
    },
    /// A frame that is not a valid handshake message.
    Malformed(FrameError),
    /// A valid message at the wrong step.
    OutOfOrder,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Protocol { ours, theirs } => {
                write!(f, "protocol version mismatch: ours {ours}, theirs {theirs}")
            }
            HandshakeError::Cookie => f.write_str("cookie mismatch"),
            HandshakeError::Channels => f.write_str("channel lists differ"),
            HandshakeError::UnknownChannel(channel) => write!(f, "unknown channel {channel}"),
            HandshakeError::UnexpectedNode { expected, got } => {
                write!(f, "dialled node {} but node {} answered", expected.0, got.0)
            }
            HandshakeError::Malformed(error) => write!(f, "malformed handshake: {error}"),
            HandshakeError::OutOfOrder => f.write_str("handshake message out of order"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Who this node is, as the handshake presents it.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) node: NodeId,
    /// Random per start of the transport.
    pub(crate) incarnation: u64,
    pub(crate) cookie: Cookie,
    pub(crate) channels: u64,
    /// How many channels, and the lanes of each.
    pub(crate) lanes: Vec<u16>,
}

/// A handshake message (the payload of a `Handshake` frame).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Message {
    /// The dialer's opening.
    Hello {
        /// Its protocol version.
        protocol: u16,
        /// Its node's name.
        name: String,
        /// Its node id.
        node: u16,
        /// Its transport's incarnation.
        incarnation: u64,
        /// The channel this connection is for.
        channel: u16,
        /// The lane of that channel.
        lane: u16,
        /// The digest of its channel names.
        channels: u64,
        /// Its challenge to the listener.
        nonce: [u8; 32],
    },
    /// The listener's answer and challenge.
    Challenge {
        /// Its protocol version.
        protocol: u16,
        /// Its node's name.
        name: String,
        /// Its node id.
        node: u16,
        /// Its challenge to the dialer.
        nonce: [u8; 32],
        /// Its answer to the dialer's challenge.
        mac: [u8; 32],
        /// How far it delivered this lane.
        delivered: u64,
        /// Its transport's incarnation.
        incarnation: u64,
    },
    /// The dialer's answer to the listener's challenge.
    Proof {
        /// The answer.
        mac: [u8; 32],
    },
    /// The listener accepts.
    Welcome,
    /// One side refuses, and says why.
    Refuse {
        /// Why.
        reason: Refusal,
        /// The refusing side's protocol version.
        protocol: u16,
    },
}

/// Why one side refused the other. The listener refuses a hello or a
/// proof; the dialer refuses a challenge whose proof is wrong.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another protocol version.
    Protocol,
    /// The other side could not prove it knows the cookie.
    Cookie,
    /// Another channel list.
    Channels,
    /// No such channel or lane.
    UnknownChannel,
}

impl Refusal {
    /// What the side that receives this refusal reports; `protocol` is
    /// the refusing side's version.
    fn error(self, protocol: u16) -> HandshakeError {
        match self {
            Refusal::Protocol => HandshakeError::Protocol {
                ours: PROTOCOL_VERSION,
                theirs: protocol,
            },
            Refusal::Cookie => HandshakeError::Cookie,
            Refusal::Channels => HandshakeError::Channels,
            Refusal::UnknownChannel => HandshakeError::UnknownChannel(u16::MAX),
        }
    }
}

/// Writes a refusal, which the caller sends before closing.
fn refuse(reason: Refusal, out: &mut Vec<u8>) {
    write(
        &Message::Refuse {
            reason,
            protocol: PROTOCOL_VERSION,
        },
        out,
    );
}

/// A dialer's view of an established connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Established {
    pub(crate) peer_name: String,
    pub(crate) peer: NodeId,
    /// Highest sequence number the listener delivered on this lane.
    pub(crate) delivered: u64,
    /// The listener's incarnation.
    pub(crate) incarnation: u64,
}

/// A listener's view of an established connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) peer_name: String,
    pub(crate) peer: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) channel: u16,
    pub(crate) lane: u16,
}

/// The dialing side.
pub(crate) struct Dialer {
    identity: Identity,
    /// The node meant to answer; `None` when identifying whoever does.
    expected: Option<NodeId>,
    nonce: [u8; 32],
    established: Option<Established>,
}

impl Dialer {
    /// Starts a handshake on `channel`'s `lane` towards `expected` (any
    /// node, if `None`), writing the hello into `out`.
    pub(crate) fn start(
        identity: Identity,
        expected: Option<NodeId>,
        channel: u16,
        lane: u16,
        nonce: [u8; 32],
        out: &mut Vec<u8>,
    ) -> Dialer {
        let hello = Message::Hello {
            protocol: PROTOCOL_VERSION,
            name: identity.name.clone(),
            node: identity.node.0,
            incarnation: identity.incarnation,
            channel,
            lane,
            channels: identity.channels,
            nonce,
        };
        write(&hello, out);
        Dialer {
            identity,
            expected,
            nonce,
            established: None,
        }
    }

    /// Takes the next frame from the listener; writes any answer into
    /// `out`. Returns the connection once welcomed.
    pub(crate) fn on_frame(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Established>, HandshakeError> {
        match read(bytes)? {
            Message::Challenge {
                protocol,
                name,
                node,
                nonce,
                mac,
                delivered,
                incarnation,
            } if self.established.is_none() => {
                if protocol != PROTOCOL_VERSION {
                    return Err(HandshakeError::Protocol {
                        ours: PROTOCOL_VERSION,
                        theirs: protocol,
                    });
                }
                if let Some(expected) = self.expected.filter(|&id| id != NodeId(node)) {
                    return Err(HandshakeError::UnexpectedNode {
                        expected,
                        got: NodeId(node),
                    });
                }
                let verified = self
                    .identity
                    .cookie
                    .mac(b"listener", &self.nonce, &nonce)
                    .verify_slice(&mac);
                if verified.is_err() {
                    refuse(Refusal::Cookie, out);
                    return Err(HandshakeError::Cookie);
                }
                let proof = self.identity.cookie.mac(b"dialer", &nonce, &self.nonce);
                write(
                    &Message::Proof {
                        mac: proof.finalize().into_bytes().into(),
                    },
                    out,
                );
                self.established = Some(Established {
                    peer_name: name,
                    peer: NodeId(node),
                    delivered,
                    incarnation,
                });
                Ok(None)
            }
            Message::Welcome => self
                .established
                .take()
                .map(Some)
                .ok_or(HandshakeError::OutOfOrder),
            Message::Refuse { reason, protocol } => Err(reason.error(protocol)),
            _ => Err(HandshakeError::OutOfOrder),
        }
    }
}

/// The listening side.
pub(crate) struct Listener {
    identity: Identity,
    nonce: [u8; 32],
    pending: Option<(Accepted, [u8; 32])>,
}

impl Listener {
    /// Waits for a hello; `nonce` is this side's challenge.
    pub(crate) fn new(identity: Identity, nonce: [u8; 32]) -> Listener {
        Listener {
            identity,
            nonce,
            pending: None,
        }
    }

    /// Takes the next frame from the dialer; writes the answer into `out`
    /// (a refusal too, which the caller sends before closing). `delivered`
    /// says how far a dialer's lane was delivered, given its node,
    /// incarnation, channel and lane.
    pub(crate) fn on_frame(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        delivered: impl FnOnce(&Accepted) -> u64,
    ) -> Result<Option<Accepted>, HandshakeError> {
        match read(bytes)? {
            Message::Hello {
                protocol,
                name,
                node,
                incarnation,
                channel,
                lane,
                channels,
                nonce,
            } if self.pending.is_none() => {
                if protocol != PROTOCOL_VERSION {
                    refuse(Refusal::Protocol, out);
                    return Err(HandshakeError::Protocol {
                        ours: PROTOCOL_VERSION,
                        theirs: protocol,
                    });
                }
                if channels != self.identity.channels {
                    refuse(Refusal::Channels, out);
                    return Err(HandshakeError::Channels);
                }
                let identifying = channel == IDENTIFY_CHANNEL && lane == 0;
                let lanes = self.identity.lanes.get(usize::from(channel)).copied();
                if !identifying && lanes.is_none_or(|lanes| lane >= lanes) {
                    refuse(Refusal::UnknownChannel, out);
                    return Err(HandshakeError::UnknownChannel(channel));
                }
                let accepted = Accepted {
                    peer_name: name,
                    peer: NodeId(node),
                    incarnation,
                    channel,
                    lane,
                };
                let mac = self.identity.cookie.mac(b"listener", &nonce, &self.nonce);
                write(
                    &Message::Challenge {
                        protocol: PROTOCOL_VERSION,
                        name: self.identity.name.clone(),
                        node: self.identity.node.0,
                        nonce: self.nonce,
                        mac: mac.finalize().into_bytes().into(),
                        delivered: if identifying { 0 } else { delivered(&accepted) },
                        incarnation: self.identity.incarnation,
                    },
                    out,
                );
                self.pending = Some((accepted, nonce));
                Ok(None)
            }
            Message::Proof { mac } => {
                let Some((accepted, their_nonce)) = self.pending.take() else {
                    return Err(HandshakeError::OutOfOrder);
                };
                let proof = self
                    .identity
                    .cookie
                    .mac(b"dialer", &self.nonce, &their_nonce);
                if proof.verify_slice(&mac).is_err() {
                    refuse(Refusal::Cookie, out);
                    return Err(HandshakeError::Cookie);
                }
                write(&Message::Welcome, out);
                Ok(Some(accepted))
            }
            // The dialer found our proof wrong (a cookie mismatch).
            Message::Refuse { reason, protocol } => Err(reason.error(protocol)),
            _ => Err(HandshakeError::OutOfOrder),
        }
    }
}

/// A fresh random nonce from the OS.
pub(crate) fn nonce() -> [u8; 32] {
    let mut nonce = [0; 32];
    getrandom::getrandom(&mut nonce).expect("the OS random source");
    nonce
}

/// Where a transport's random numbers come from: the OS, or streams of a
/// seed ([`crate::TransportConfig::seed`]) so that a simulation replays.
pub(crate) struct Entropy {
    seeded: Option<(u64, Mutex<SimRng>)>,
}

/// Streams of a transport's seed.
const NONCE_STREAM: u64 = 1;
const INCARNATION_STREAM: u64 = 2;
const FAULT_STREAM: u64 = 3;

impl Entropy {
    pub(crate) fn new(seed: Option<u64>) -> Entropy {
        Entropy {
            seeded: seed.map(|seed| (seed, Mutex::new(SimRng::new(seed, NONCE_STREAM)))),
        }
    }

    /// A handshake nonce.
    pub(crate) fn nonce(&self) -> [u8; 32] {
        let Some((_, rng)) = &self.seeded else {
            return nonce();
        };
        let mut rng = rng.lock().unwrap_or_else(PoisonError::into_inner);
        let mut nonce = [0; 32];
        for word in nonce.chunks_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        nonce
    }

    /// The incarnation of a transport started at `now`: a seeded node that
    /// restarts (at a later virtual time) is a new incarnation to its
    /// peers, as a restarted process with fresh OS randomness is.
    pub(crate) fn incarnation(&self, now: Instant) -> u64 {
        // Two starts at one instant (a crash and a restart at once) differ
        // by their place in this process's count of starts.
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let start = STARTS.fetch_add(1, Ordering::Relaxed);
        match &self.seeded {
            Some((seed, _)) => {
                SimRng::new(seed ^ now.as_nanos(), INCARNATION_STREAM ^ (start << 8)).next_u64()
            }
            None => u64::from_le_bytes(nonce()[..8].try_into().expect("8 bytes")),
        }
    }

    /// The seed of the fault rules' draws.
    pub(crate) fn fault_seed(&self) -> u64 {
        match &self.seeded {
            Some((seed, _)) => SimRng::new(*seed, FAULT_STREAM).next_u64(),
            None => u64::from_le_bytes(nonce()[..8].try_into().expect("8 bytes")),
        }
    }
}

fn write(message: &Message, out: &mut Vec<u8>) {
    let header = FrameHeader {
        flags: 0,
        channel: 0,
        kind: FrameKind::Handshake,
        length: 0,
        source: Pid::from_bits(0),
        destination: Pid::from_bits(0),
        trace_id: 0,
        sequence: 0,
    };
    frame::encode(header, message, out).expect("handshake messages are small");
}

fn read(bytes: &[u8]) -> Result<Message, HandshakeError> {
    let (frame, _) = Frame::<ArchivedMessage>::parse(bytes, MAX_HANDSHAKE_PAYLOAD)
        .map_err(HandshakeError::Malformed)?;
    if frame.header.kind != FrameKind::Handshake {
        return Err(HandshakeError::OutOfOrder);
    }
    rkyv::deserialize::<Message, rkyv::rancor::Error>(frame.payload)
        .map_err(|error| HandshakeError::Malformed(FrameError::InvalidPayload(error.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PAYLOAD_ALIGN;
    use rkyv::util::AlignedVec;

    /// What the other side receives: the bytes, 16-byte aligned.
    fn wire(bytes: &[u8]) -> AlignedVec<PAYLOAD_ALIGN> {
        let mut out = AlignedVec::new();
        out.extend_from_slice(bytes);
        out
    }

    fn identity(name: &str, node: u16, cookie: &str) -> Identity {
        Identity {
            name: name.into(),
            node: NodeId(node),
            incarnation: 7,
            cookie: Cookie::new(cookie),
            channels: 42,
            lanes: vec![1, 2],
        }
    }

    /// Runs a whole handshake between two identities; returns each side's
    /// result.
    fn run(
        dialer: Identity,
        listener: Identity,
    ) -> (
        Result<Option<Established>, HandshakeError>,
        Result<Option<Accepted>, HandshakeError>,
    ) {
        let expected = Some(listener.node);
        let mut hello = Vec::new();
        let mut d = Dialer::start(dialer, expected, 1, 1, nonce(), &mut hello);
        let mut l = Listener::new(listener, nonce());
        let mut answer = Vec::new();
        let accepted = l.on_frame(&wire(&hello), &mut answer, |_| 5);
        if accepted.is_err() {
            return (d.on_frame(&wire(&answer), &mut Vec::new()), accepted);
        }
        let mut proof = Vec::new();
        let established = d.on_frame(&wire(&answer), &mut proof);
        if established.is_err() {
            return (established, accepted);
        }
        let mut welcome = Vec::new();
        let accepted = l.on_frame(&wire(&proof), &mut welcome, |_| 5);
        (d.on_frame(&wire(&welcome), &mut Vec::new()), accepted)
    }

    #[test]
    fn matching_cookies_establish_both_sides() {
        let (dialer, listener) = run(identity("a", 1, "s3cret"), identity("b", 2, "s3cret"));
        let established = dialer.unwrap().unwrap();
        assert_eq!(established.peer, NodeId(2));
        assert_eq!(established.peer_name, "b");
        assert_eq!(established.delivered, 5);
        let accepted = listener.unwrap().unwrap();
        assert_eq!(
            (accepted.peer, accepted.channel, accepted.lane),
            (NodeId(1), 1, 1)
        );
    }

    #[test]
    fn a_wrong_cookie_is_refused_on_both_sides() {
        let mut hello = Vec::new();
        let mut d = Dialer::start(
            identity("a", 1, "one"),
            Some(NodeId(2)),
            0,
            0,
            nonce(),
            &mut hello,
        );
        let mut l = Listener::new(identity("b", 2, "two"), nonce());
        let mut challenge = Vec::new();
        assert_eq!(l.on_frame(&wire(&hello), &mut challenge, |_| 0), Ok(None));
        // The dialer sees the listener's proof fail first, and says so.
        let mut refusal = Vec::new();
        assert_eq!(
            d.on_frame(&wire(&challenge), &mut refusal),
            Err(HandshakeError::Cookie)
        );
        assert_eq!(
            l.on_frame(&wire(&refusal), &mut Vec::new(), |_| 0),
            Err(HandshakeError::Cookie)
        );
    }

    #[test]
    fn a_dialer_without_the_cookie_is_refused_with_a_reason() {
        // The dialer skips its own check (as an attacker would) and sends a
        // bad proof: the listener refuses and says why.
        let mut hello = Vec::new();
        let _ = Dialer::start(
            identity("a", 1, "x"),
            Some(NodeId(2)),
            0,
            0,
            nonce(),
            &mut hello,
        );
        let mut l = Listener::new(identity("b", 2, "y"), nonce());
        let mut answer = Vec::new();
        assert_eq!(l.on_frame(&wire(&hello), &mut answer, |_| 0), Ok(None));
        let mut proof = Vec::new();
        write(&Message::Proof { mac: [0; 32] }, &mut proof);
        let mut refusal = Vec::new();
        assert_eq!(
            l.on_frame(&wire(&proof), &mut refusal, |_| 0),
            Err(HandshakeError::Cookie)
        );
        assert!(matches!(
            read(&wire(&refusal)),
            Ok(Message::Refuse {
                reason: Refusal::Cookie,
                ..
            })
        ));
    }

    #[test]
    fn channel_lists_and_lanes_must_match() {
        let mut other = identity("b", 2, "s");
        other.channels = 43;
        let (dialer, listener) = run(identity("a", 1, "s"), other);
        assert_eq!(dialer, Err(HandshakeError::Channels));
        assert_eq!(listener, Err(HandshakeError::Channels));

        let mut narrow = identity("b", 2, "s");
        narrow.lanes = vec![1, 1];
        let (_, listener) = run(identity("a", 1, "s"), narrow);
        assert_eq!(listener, Err(HandshakeError::UnknownChannel(1)));
    }

    #[test]
    fn identifying_proves_the_cookie_and_touches_no_lane() {
        let identify = |cookie: &str| {
            let mut hello = Vec::new();
            let mut d = Dialer::start(
                identity("a", 1, "s"),
                None,
                IDENTIFY_CHANNEL,
                0,
                nonce(),
                &mut hello,
            );
            let mut l = Listener::new(identity("b", 2, cookie), nonce());
            let mut answer = Vec::new();
            let no_lane = |_: &Accepted| -> u64 { panic!("identifying asked for a lane") };
            assert_eq!(l.on_frame(&wire(&hello), &mut answer, no_lane), Ok(None));
            let mut proof = Vec::new();
            let established = d.on_frame(&wire(&answer), &mut proof)?;
            assert_eq!(established, None);
            let mut welcome = Vec::new();
            let accepted = l.on_frame(&wire(&proof), &mut welcome, no_lane)?;
            assert_eq!(accepted.map(|a| a.channel), Some(IDENTIFY_CHANNEL));
            d.on_frame(&wire(&welcome), &mut Vec::new())
        };
        let established = identify("s").unwrap().unwrap();
        assert_eq!(
            (established.peer, established.peer_name.as_str()),
            (NodeId(2), "b")
        );
        assert_eq!(identify("other"), Err(HandshakeError::Cookie));
    }

    #[test]
    fn the_wrong_node_is_detected_by_the_dialer() {
        let mut hello = Vec::new();
        let mut d = Dialer::start(
            identity("a", 1, "s"),
            Some(NodeId(9)),
            0,
            0,
            nonce(),
            &mut hello,
        );
        let mut l = Listener::new(identity("b", 2, "s"), nonce());
        let mut answer = Vec::new();
        l.on_frame(&wire(&hello), &mut answer, |_| 0).unwrap();
        assert_eq!(
            d.on_frame(&wire(&answer), &mut Vec::new()),
            Err(HandshakeError::UnexpectedNode {
                expected: NodeId(9),
                got: NodeId(2)
            })
        );
    }

    #[test]
    fn garbage_and_out_of_order_messages_are_errors() {
        let mut l = Listener::new(identity("b", 2, "s"), nonce());
        assert!(matches!(
            l.on_frame(&[0; 64], &mut Vec::new(), |_| 0),
            Err(HandshakeError::Malformed(_))
        ));
        let mut welcome = Vec::new();
        write(&Message::Welcome, &mut welcome);
        assert_eq!(
            l.on_frame(&wire(&welcome), &mut Vec::new(), |_| 0),
            Err(HandshakeError::OutOfOrder)
        );
    }
}
