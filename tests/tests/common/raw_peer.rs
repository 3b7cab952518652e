//! A peer played by hand over a plain `std::net::TcpStream`: it writes
//! whatever bytes a test wants a node to receive, and speaks as much of the
//! handshake as the test needs — with or without the cookie, with any
//! protocol version or channel list — so that the suites can reach every
//! way a connection can go wrong, before and after it is authenticated.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

use foundation::transport::frame::{self, FrameHeader, FrameKind, Wire, HEADER_LEN};
use foundation::transport::fuzzing::{channel_digest, HandshakeMessage as Handshake};
use foundation::transport::{ChannelSpec, PROTOCOL_VERSION};
use foundation::{NodeId, Pid, ShardId};
use hmac::{Hmac, Mac};
use rkyv::util::AlignedVec;
use sha2::Sha256;

use super::transport::Node;
use super::PATIENCE;

/// The node id a raw peer claims: one no test runtime uses.
pub(crate) const RAW_NODE: NodeId = NodeId(900);

/// A raw connection to a node.
pub(crate) struct RawPeer {
    socket: TcpStream,
}

impl RawPeer {
    /// Connects to `node`'s listen address. Reads give up after
    /// [`PATIENCE`] instead of hanging.
    pub(crate) fn connect(node: &Node) -> RawPeer {
        let socket = TcpStream::connect(node.local_addr()).expect("connect to the node");
        socket
            .set_read_timeout(Some(PATIENCE))
            .expect("set a read timeout");
        RawPeer { socket }
    }

    /// Writes `bytes`. The node may have closed the connection already
    /// (that is what most tests provoke), so a failed write is no error.
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        let _ = self.socket.write_all(bytes);
    }

    /// Writes a frame with `header` and `value` as its payload.
    pub(crate) fn send_frame<T: Wire>(&mut self, header: FrameHeader, value: &T) {
        let mut bytes = Vec::new();
        frame::encode(header, value, &mut bytes).expect("encode the frame");
        self.send(&bytes);
    }

    /// Writes a frame with `header` and `payload` as it is.
    pub(crate) fn send_raw_frame(&mut self, header: FrameHeader, payload: &[u8]) {
        let mut bytes = Vec::new();
        frame::encode_raw(header, payload, &mut bytes).expect("encode the frame");
        self.send(&bytes);
    }

    /// Writes a handshake message.
    pub(crate) fn send_handshake(&mut self, message: &Handshake) {
        self.send_frame(
            header(FrameKind::Handshake, 0, Pid::from_bits(0), 0),
            message,
        );
    }

    /// Writes a hello for `channel`'s `lane`, speaking `protocol` and
    /// declaring `channels`; returns the nonce it challenged with.
    pub(crate) fn hello(
        &mut self,
        protocol: u16,
        channels: &[ChannelSpec],
        channel: u16,
        lane: u16,
    ) -> [u8; 32] {
        let nonce = [0x5a; 32];
        self.send_handshake(&Handshake::Hello {
            protocol,
            name: "raw-peer".into(),
            node: RAW_NODE.0,
            incarnation: 0x00c0_ffee,
            channel,
            lane,
            channels: channel_digest(channels),
            nonce,
        });
        nonce
    }

    /// Completes a handshake for `channel`'s `lane`, proving `cookie`.
    /// Returns how far the node says it delivered the lane, or what it
    /// answered instead of a welcome (`None`: it closed the connection).
    pub(crate) fn handshake(
        &mut self,
        cookie: &str,
        channels: &[ChannelSpec],
        channel: u16,
        lane: u16,
    ) -> Result<u64, Option<Handshake>> {
        let ours = self.hello(PROTOCOL_VERSION, channels, channel, lane);
        let (theirs, delivered) = match self.read_handshake() {
            Some(Handshake::Challenge {
                nonce,
                mac: proof,
                delivered,
                ..
            }) => {
                assert_eq!(
                    proof,
                    mac(cookie, b"listener", &ours, &nonce),
                    "the node proves it knows the cookie"
                );
                (nonce, delivered)
            }
            other => return Err(other),
        };
        self.send_handshake(&Handshake::Proof {
            mac: mac(cookie, b"dialer", &theirs, &ours),
        });
        match self.read_handshake() {
            Some(Handshake::Welcome) => Ok(delivered),
            other => Err(other),
        }
    }

    /// Reads the next frame: its header and the whole frame, padding
    /// included, 16-byte aligned. `None` once the node closed the
    /// connection.
    pub(crate) fn read_frame(&mut self) -> Option<(FrameHeader, AlignedVec<16>)> {
        let mut bytes = AlignedVec::<16>::new();
        bytes.resize(HEADER_LEN, 0);
        self.read_exact(&mut bytes[..]).ok()?;
        let header = FrameHeader::parse(&bytes, u32::MAX).expect("the node sends valid headers");
        bytes.resize(header.frame_len(), 0);
        self.read_exact(&mut bytes[HEADER_LEN..]).ok()?;
        Some((header, bytes))
    }

    /// Reads the next frame as a handshake message; `None` once the node
    /// closed the connection.
    pub(crate) fn read_handshake(&mut self) -> Option<Handshake> {
        let (header, bytes) = self.read_frame()?;
        assert_eq!(header.kind, FrameKind::Handshake, "a handshake frame");
        let payload = &bytes[HEADER_LEN..HEADER_LEN + header.length as usize];
        let archived = rkyv::access::<rkyv::Archived<Handshake>, rkyv::rancor::Error>(payload)
            .expect("the node sends valid handshake messages");
        Some(rkyv::deserialize::<Handshake, rkyv::rancor::Error>(archived).expect("deserialize"))
    }

    /// Closes the writing half: the node sees the end of the stream.
    pub(crate) fn finish(&self) {
        let _ = self.socket.shutdown(Shutdown::Write);
    }

    /// Reads until the node closes the connection (end of stream, or a
    /// reset); returns the bytes that came before. Panics if the node
    /// keeps it open for [`PATIENCE`].
    pub(crate) fn read_until_closed(&mut self) -> Vec<u8> {
        let mut received = Vec::new();
        let mut buffer = [0; 4096];
        loop {
            match self.socket.read(&mut buffer) {
                Ok(0) => return received,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("the node kept the connection open for {PATIENCE:?}")
                }
                Err(_) => return received, // Reset: closed with our bytes unread.
            }
        }
    }

    /// Reads exactly `buffer.len()` bytes; an error at the end of the
    /// stream, and a panic if nothing comes for [`PATIENCE`].
    fn read_exact(&mut self, buffer: &mut [u8]) -> io::Result<()> {
        match self.socket.read_exact(buffer) {
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the node sent nothing for {PATIENCE:?}")
            }
            result => result,
        }
    }
}

/// A frame header from the raw peer: `kind` on `channel` to `destination`,
/// with `sequence`; the length is filled in by the encoder.
pub(crate) fn header(
    kind: FrameKind,
    channel: u16,
    destination: Pid,
    sequence: u64,
) -> FrameHeader {
    FrameHeader {
        flags: 0,
        channel,
        kind,
        length: 0,
        source: Pid::new(RAW_NODE, ShardId(0), 1, 1),
        destination,
        trace_id: 0,
        sequence,
    }
}

/// HMAC-SHA256 keyed by `cookie` over `label`, `first` and `second`: the
/// handshake's proof of the cookie.
pub(crate) fn mac(cookie: &str, label: &[u8], first: &[u8; 32], second: &[u8; 32]) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(cookie.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.update(first);
    mac.update(second);
    mac.finalize().into_bytes().into()
}
