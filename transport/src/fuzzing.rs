//! Entry points for the fuzz targets in `transport/fuzz/` (cargo-fuzz) and
//! for the integration tests that play a peer over a raw socket. Not part
//! of the API: they exist so those can reach the decoder, the handshake
//! state machine and its messages, which are crate-private.

use foundation_sched::NodeId;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::frame::{Frame, FrameHeader, PAYLOAD_ALIGN};
use crate::handshake::{Cookie, Dialer, Identity, Listener};

pub use crate::channel::digest as channel_digest;
pub use crate::handshake::{Message as HandshakeMessage, Refusal};

/// A message type with every kind of archived field a validator must check:
/// strings, vectors, options and enums.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub enum Probe {
    /// Text and numbers.
    Text(String, Vec<u32>),
    /// Optional and nested.
    Nested(Option<Vec<String>>, [u8; 16]),
}

/// Decodes `data` as a run of frames carrying [`Probe`]s, reading back
/// whatever is accepted.
pub fn decode_frames(data: &[u8]) {
    let mut bytes = AlignedVec::<PAYLOAD_ALIGN>::new();
    bytes.extend_from_slice(data);
    let _ = FrameHeader::parse(&bytes, u32::MAX);
    let mut at = 0;
    while at < bytes.len() {
        match Frame::<ArchivedProbe>::parse(&bytes[at..], 1 << 20) {
            Ok((frame, len)) => {
                let probe: Probe = rkyv::deserialize::<_, rkyv::rancor::Error>(frame.payload)
                    .expect("a validated archive deserializes");
                std::hint::black_box(probe);
                at += len;
            }
            Err(_) => break,
        }
    }
}

/// Feeds `data`, cut into frames by two-byte length prefixes, to both sides
/// of a handshake. Panics if a side without the cookie is let in.
pub fn handshake(data: &[u8]) {
    let identity = |cookie: &str| Identity {
        name: "fuzz".into(),
        node: NodeId(1),
        incarnation: 1,
        cookie: Cookie::new(cookie),
        channels: 0,
        lanes: vec![1],
    };
    let mut listener = Listener::new(identity("secret"), [7; 32]);
    let mut out = Vec::new();
    let mut dialer = Dialer::start(identity("secret"), Some(NodeId(1)), 0, 0, [9; 32], &mut out);
    let mut rest = data;
    while let [a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        rest = tail;
        let mut bytes = AlignedVec::<PAYLOAD_ALIGN>::new();
        bytes.extend_from_slice(frame);
        out.clear();
        let accepted = listener.on_frame(&bytes, &mut out, |_| 0);
        assert!(
            !matches!(accepted, Ok(Some(_))),
            "the listener let in a dialer that never proved the cookie"
        );
        out.clear();
        let established = dialer.on_frame(&bytes, &mut out);
        assert!(
            !matches!(established, Ok(Some(_))),
            "the dialer accepted a listener that never proved the cookie"
        );
    }
}
