//! The frame: what one message looks like on the wire.
//!
//! ```text
//!  0       4   5   6       8   9      12      16              24              32              40       48
//! +-------+---+---+-------+---+------+-------+---------------+---------------+---------------+--------+
//! | magic |ver|flg|channel|knd| zero | length|    source     |  destination  |   trace id    |  seq   |
//! +-------+---+---+-------+---+------+-------+---------------+---------------+---------------+--------+
//! | rkyv payload, `length` bytes, starting 16-byte aligned ...
//! ```
//!
//! Every field is little-endian. The header is 48 bytes so that the payload
//! of a frame that starts on a 16-byte boundary starts on one too: rkyv
//! archives are read in place, and in-place reads need aligned bytes.
//!
//! Parse, don't validate: [`Frame::parse`] checks the header (magic,
//! version, known kind, length against the receiver's maximum, reserved
//! bytes zero) and then the payload with `rkyv::access` (bytecheck), and
//! only then hands out a [`Frame`] — a type that cannot hold unchecked
//! bytes. Every way a frame can be wrong is a [`FrameError`] variant, so a
//! connection that receives one can be closed with a precise reason while
//! the node carries on.

use std::fmt;

use foundation_sched::Pid;
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::{Archive, Portable, Serialize};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"FDN\x01";
/// The frame format this build speaks.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 48;
/// Alignment of the payload, given a frame that starts this aligned.
pub const PAYLOAD_ALIGN: usize = 16;

/// Flag of a [`FrameKind::Chunk`] frame: the first piece of its message.
/// A chunk without it continues the message its sender began with one; if
/// that beginning never came (lost with a connection, on a best-effort
/// channel), the receiver drops the rest instead of completing a message
/// that lacks its start.
pub const FIRST_CHUNK: u8 = 2;

/// Flag of a [`FrameKind::Chunk`] frame: the last piece of its message.
pub const LAST_CHUNK: u8 = 1;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// A message for a process.
    Message = 1,
    /// A signal between processes (link, exit, monitor, down).
    Signal = 2,
    /// Part of the connection handshake.
    Handshake = 3,
    /// Flow-control credit granted by a receiver.
    Credit = 4,
    /// Acknowledgement of frames on an acknowledged channel.
    Ack = 5,
    /// One piece of a payload larger than a frame.
    Chunk = 6,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            1 => FrameKind::Message,
            2 => FrameKind::Signal,
            3 => FrameKind::Handshake,
            4 => FrameKind::Credit,
            5 => FrameKind::Ack,
            6 => FrameKind::Chunk,
            _ => return None,
        })
    }
}

/// The fixed part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Per-kind flags.
    pub flags: u8,
    /// The channel the frame travels on.
    pub channel: u16,
    /// What the payload is.
    pub kind: FrameKind,
    /// Payload bytes.
    pub length: u32,
    /// The sending process.
    pub source: Pid,
    /// The receiving process.
    pub destination: Pid,
    /// Trace context carried across nodes; zero when untraced.
    pub trace_id: u64,
    /// Position of the frame on its connection's lane, counted from 1, on
    /// an acknowledged channel (the receiver acknowledges and de-duplicates
    /// by it); zero elsewhere.
    pub sequence: u64,
}

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the header, or than the header says follow.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes there.
        got: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    BadMagic([u8; 4]),
    /// A frame format this build does not speak.
    UnsupportedVersion(u8),
    /// A frame kind this build does not know.
    UnknownKind(u8),
    /// Reserved header bytes are not zero.
    Reserved,
    /// The payload is longer than the receiver accepts.
    Oversized {
        /// Its length.
        length: u32,
        /// The receiver's maximum.
        max: u32,
    },
    /// The payload bytes do not start on a [`PAYLOAD_ALIGN`] boundary.
    Misaligned,
    /// The payload is not a valid archive of the expected type.
    InvalidPayload(String),
    /// The value could not be serialized.
    Encode(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated { needed, got } => {
                write!(f, "truncated frame: {got} of {needed} bytes")
            }
            FrameError::BadMagic(magic) => write!(f, "bad magic {magic:02x?}"),
            FrameError::UnsupportedVersion(version) => {
                write!(f, "unsupported frame version {version}")
            }
            FrameError::UnknownKind(kind) => write!(f, "unknown frame kind {kind}"),
            FrameError::Reserved => f.write_str("reserved header bytes are not zero"),
            FrameError::Oversized { length, max } => {
                write!(f, "payload of {length} bytes over the maximum of {max}")
            }
            FrameError::Misaligned => f.write_str("payload not 16-byte aligned"),
            FrameError::InvalidPayload(why) => write!(f, "invalid payload: {why}"),
            FrameError::Encode(why) => write!(f, "cannot encode payload: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameHeader {
    /// The header as wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4] = VERSION;
        bytes[5] = self.flags;
        bytes[6..8].copy_from_slice(&self.channel.to_le_bytes());
        bytes[8] = self.kind as u8;
        bytes[12..16].copy_from_slice(&self.length.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.source.to_bits().to_le_bytes());
        bytes[24..32].copy_from_slice(&self.destination.to_bits().to_le_bytes());
        bytes[32..40].copy_from_slice(&self.trace_id.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.sequence.to_le_bytes());
        bytes
    }

    /// Reads and checks a header, refusing payloads over `max_payload`.
    pub fn parse(bytes: &[u8], max_payload: u32) -> Result<FrameHeader, FrameError> {
        let Some(bytes) = bytes.get(..HEADER_LEN) else {
            return Err(FrameError::Truncated {
                needed: HEADER_LEN,
                got: bytes.len(),
            });
        };
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if bytes[4] != VERSION {
            return Err(FrameError::UnsupportedVersion(bytes[4]));
        }
        let kind = FrameKind::from_byte(bytes[8]).ok_or(FrameError::UnknownKind(bytes[8]))?;
        if bytes[9..12].iter().any(|&b| b != 0) {
            return Err(FrameError::Reserved);
        }
        let length = u32::from_le_bytes(field(bytes, 12));
        if length > max_payload {
            return Err(FrameError::Oversized {
                length,
                max: max_payload,
            });
        }
        Ok(FrameHeader {
            flags: bytes[5],
            channel: u16::from_le_bytes(field(bytes, 6)),
            kind,
            length,
            source: Pid::from_bits(u64::from_le_bytes(field(bytes, 16))),
            destination: Pid::from_bits(u64::from_le_bytes(field(bytes, 24))),
            trace_id: u64::from_le_bytes(field(bytes, 32)),
            sequence: u64::from_le_bytes(field(bytes, 40)),
        })
    }

    /// Bytes the frame spans on the wire: header, payload and the padding
    /// that keeps the next frame aligned.
    pub fn frame_len(&self) -> usize {
        padded_len(self.length as usize)
    }
}

/// A checked frame whose payload is an archived `A`, read in place.
#[derive(Debug)]
pub struct Frame<'a, A> {
    /// The header.
    pub header: FrameHeader,
    /// The payload, validated.
    pub payload: &'a A,
}

impl<'a, A> Frame<'a, A>
where
    A: Portable + for<'v> CheckBytes<HighValidator<'v, rancor::Error>>,
{
    /// Checks the frame at the start of `bytes` (which must start on a
    /// [`PAYLOAD_ALIGN`] boundary) and returns it with the number of bytes
    /// it spans.
    pub fn parse(bytes: &'a [u8], max_payload: u32) -> Result<(Frame<'a, A>, usize), FrameError> {
        let header = FrameHeader::parse(bytes, max_payload)?;
        let end = header.frame_len();
        if bytes.len() < end {
            return Err(FrameError::Truncated {
                needed: end,
                got: bytes.len(),
            });
        }
        let payload = &bytes[HEADER_LEN..HEADER_LEN + header.length as usize];
        if payload.as_ptr().align_offset(PAYLOAD_ALIGN) != 0 {
            return Err(FrameError::Misaligned);
        }
        let payload = rkyv::access::<A, rancor::Error>(payload)
            .map_err(|error| FrameError::InvalidPayload(error.to_string()))?;
        Ok((Frame { header, payload }, end))
    }
}

/// A value that can travel in a frame: serialized with rkyv straight into a
/// send buffer, and validated with bytecheck on arrival.
pub trait Wire:
    Archive<Archived: Portable + for<'v> CheckBytes<HighValidator<'v, rancor::Error>>>
    + for<'a, 'b> Serialize<HighSerializer<&'a mut Vec<u8>, ArenaHandle<'b>, rancor::Error>>
    + for<'a, 'b> Serialize<HighSerializer<ChunkWriter<'a>, ArenaHandle<'b>, rancor::Error>>
{
}

impl<T> Wire for T where
    T: Archive<Archived: Portable + for<'v> CheckBytes<HighValidator<'v, rancor::Error>>>
        + for<'a, 'b> Serialize<HighSerializer<&'a mut Vec<u8>, ArenaHandle<'b>, rancor::Error>>
        + for<'a, 'b> Serialize<HighSerializer<ChunkWriter<'a>, ArenaHandle<'b>, rancor::Error>>
{
}

/// Where a message sent in chunks is serialized: it appends the archive
/// to a buffer as chunk frames, a header before every `max_frame` bytes.
/// Positions are the archive's own, not the buffer's, so the payloads of
/// the chunks put end to end are the archive. Public only because [`Wire`]
/// names it.
pub struct ChunkWriter<'a> {
    out: &'a mut Vec<u8>,
    /// The message's header, for every chunk's.
    header: FrameHeader,
    max_frame: usize,
    /// Archive bytes written.
    pos: usize,
    /// Where the open chunk's header is in `out`.
    chunk_at: usize,
    /// Archive bytes in the open chunk.
    in_chunk: usize,
}

impl ChunkWriter<'_> {
    /// Starts a chunk, its header to be written when it is closed.
    fn open(&mut self) {
        self.chunk_at = self.out.len();
        self.out.extend_from_slice(&[0; HEADER_LEN]);
        self.in_chunk = 0;
    }

    /// Writes the open chunk's header and pads it to alignment.
    fn close(&mut self, last: bool) {
        let first = self.pos == self.in_chunk;
        let header = FrameHeader {
            flags: if first { FIRST_CHUNK } else { 0 } | if last { LAST_CHUNK } else { 0 },
            kind: FrameKind::Chunk,
            // At most `max_frame`, a `u32`.
            length: self.in_chunk as u32,
            ..self.header
        };
        self.out[self.chunk_at..self.chunk_at + HEADER_LEN].copy_from_slice(&header.to_bytes());
        let end = self.out.len().next_multiple_of(PAYLOAD_ALIGN);
        self.out.resize(end, 0);
    }
}

impl rkyv::ser::Positional for ChunkWriter<'_> {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E> rkyv::ser::Writer<E> for ChunkWriter<'_> {
    fn write(&mut self, mut bytes: &[u8]) -> Result<(), E> {
        while !bytes.is_empty() {
            if self.in_chunk == self.max_frame {
                self.close(false);
                self.open();
            }
            let take = bytes.len().min(self.max_frame - self.in_chunk);
            self.out.extend_from_slice(&bytes[..take]);
            self.in_chunk += take;
            self.pos += take;
            bytes = &bytes[take..];
        }
        Ok(())
    }
}

/// Encodes `value` as the chunk frames of a message with `header`, each
/// with up to `max_frame` bytes of the archive, appended to `out` (whole
/// frames only, as [`encode`]); returns the archive's length. The archive
/// is written once, straight into the chunks, where cutting an encoded
/// frame into chunks copies it again. On error `out` is left as it was.
pub(crate) fn encode_chunks<T: Wire>(
    header: FrameHeader,
    value: &T,
    max_frame: usize,
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    assert!(max_frame > 0, "chunks carry bytes");
    let start = out.len();
    let mut writer = ChunkWriter {
        out,
        header,
        max_frame,
        pos: 0,
        chunk_at: start,
        in_chunk: 0,
    };
    writer.open();
    match rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, writer) {
        Ok(mut writer) => {
            writer.close(true);
            Ok(writer.pos)
        }
        Err(error) => {
            out.truncate(start);
            Err(FrameError::Encode(error.to_string()))
        }
    }
}

/// Encodes `value` as a frame with `header` (whose `length` is set to the
/// payload's), appended to `out`, and returns the header as written. The value is serialized in place, after the header, without an
/// intermediate buffer. `out` must hold whole frames only, so that this
/// one's payload starts at an offset that is a multiple of 16: rkyv lays the
/// archive out relative to the start of `out`, so the payload reads in
/// place wherever the receiver puts it on a 16-byte boundary. On error
/// `out` is left as it was.
#[inline(always)]
pub fn encode<T: Wire>(
    mut header: FrameHeader,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<FrameHeader, FrameError> {
    debug_assert_eq!(
        out.len() % PAYLOAD_ALIGN,
        0,
        "frames are padded to alignment"
    );
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(error) = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, &mut *out) {
        out.resize(start, 0);
        return Err(FrameError::Encode(error.to_string()));
    }
    let payload = out.len() - start - HEADER_LEN;
    let Ok(length) = u32::try_from(payload) else {
        out.resize(start, 0);
        return Err(FrameError::Encode(format!("payload of {payload} bytes")));
    };
    header.length = length;
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    // Pad so the next frame starts aligned.
    let end = out.len().next_multiple_of(PAYLOAD_ALIGN);
    out.resize(end, 0);
    Ok(header)
}

/// Serializes `value` on its own, without a frame: an archive carried as
/// bytes inside another message (the reply to a remote call, the arguments
/// of a remote spawn). Read it back with [`unarchive`].
pub fn archive<T: Wire>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, &mut out)
        .map_err(|error| FrameError::Encode(error.to_string()))?;
    Ok(out)
}

/// Validates and deserializes an archive made by [`archive`], wherever its
/// bytes lie: they are copied to an aligned buffer first.
pub fn unarchive<T: Wire>(bytes: &[u8]) -> Result<T, FrameError>
where
    T::Archived: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let mut aligned = rkyv::util::AlignedVec::<PAYLOAD_ALIGN>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned)
        .map_err(|error| FrameError::InvalidPayload(error.to_string()))
}

/// Appends a frame whose payload is `payload` as it is (a chunk of a larger
/// archive, which is validated once reassembled), padded like [`encode`]'s.
pub fn encode_raw(
    mut header: FrameHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<std::ops::Range<usize>, FrameError> {
    header.length = u32::try_from(payload.len())
        .map_err(|_| FrameError::Encode(format!("payload of {} bytes", payload.len())))?;
    let start = out.len();
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    let end = out.len().next_multiple_of(PAYLOAD_ALIGN);
    out.resize(end, 0);
    Ok(start..end)
}

/// Bytes a frame with a payload of `length` bytes spans on the wire,
/// padding included.
pub fn padded_len(length: usize) -> usize {
    (HEADER_LEN + length).next_multiple_of(PAYLOAD_ALIGN)
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut field = [0; N];
    field.copy_from_slice(&bytes[at..at + N]);
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks encoded in place are byte for byte the frame's payload cut
    /// into pieces of `max_frame` (whatever its alignment), each behind a
    /// chunk header with the message's fields, first and last flagged.
    #[test]
    fn chunks_encoded_in_place_are_the_frame_cut_in_pieces() {
        let header = FrameHeader {
            flags: 0,
            channel: 3,
            kind: FrameKind::Message,
            length: 0,
            source: Pid::from_bits(11),
            destination: Pid::from_bits(12),
            trace_id: 13,
            sequence: 0,
        };
        let value = (7_u64, vec![5_u8; 2500], String::from("end"));
        let mut whole = Vec::new();
        let header = encode(header, &value, &mut whole).unwrap();
        let payload = &whole[HEADER_LEN..HEADER_LEN + header.length as usize];
        for max_frame in [1000, 1024, 4096] {
            let mut cut = vec![1; 16];
            let pieces = payload.len().div_ceil(max_frame);
            for (at, piece) in payload.chunks(max_frame).enumerate() {
                let first = if at == 0 { FIRST_CHUNK } else { 0 };
                let last = if at + 1 == pieces { LAST_CHUNK } else { 0 };
                let chunk = FrameHeader {
                    flags: first | last,
                    kind: FrameKind::Chunk,
                    ..header
                };
                encode_raw(chunk, piece, &mut cut).unwrap();
            }
            let mut chunks = vec![1; 16];
            let length = encode_chunks(header, &value, max_frame, &mut chunks).unwrap();
            assert_eq!(length, payload.len());
            assert!(chunks == cut, "max_frame {max_frame}");
        }
        // A message within one frame is one chunk, first and last.
        let mut one = Vec::new();
        encode_chunks(header, &value, 1 << 20, &mut one).unwrap();
        let chunk = FrameHeader::parse(&one, u32::MAX).unwrap();
        assert_eq!(chunk.flags, FIRST_CHUNK | LAST_CHUNK);
        assert!(one[HEADER_LEN..HEADER_LEN + chunk.length as usize] == *payload);
    }

    #[test]
    fn an_archive_reads_back_from_unaligned_bytes_and_garbage_is_refused() {
        let value = (7u64, String::from("seven"));
        let mut bytes = vec![0u8];
        bytes.extend(archive(&value).unwrap());
        assert_eq!(unarchive::<(u64, String)>(&bytes[1..]), Ok(value));
        assert!(matches!(
            unarchive::<(u64, String)>(&[0xff; 5]),
            Err(FrameError::InvalidPayload(_))
        ));
    }
    use foundation_sched::{NodeId, ShardId};
    use rkyv::util::AlignedVec;
    use rkyv::{Archive, Deserialize, Serialize};

    #[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
    struct Greeting {
        from: String,
        count: u64,
        tags: Vec<u32>,
    }

    fn header() -> FrameHeader {
        FrameHeader {
            flags: 3,
            channel: 7,
            kind: FrameKind::Message,
            length: 0,
            source: Pid::new(NodeId(1), ShardId(0), 5, 2),
            destination: Pid::new(NodeId(2), ShardId(1), 9, 1),
            trace_id: 0xdead_beef,
            sequence: 0,
        }
    }

    fn greeting() -> Greeting {
        Greeting {
            from: "node-a".into(),
            count: 42,
            tags: vec![1, 2, 3],
        }
    }

    /// `bytes` copied to a 16-byte aligned buffer, as a receiver holds
    /// them.
    fn aligned(bytes: &[u8]) -> AlignedVec<PAYLOAD_ALIGN> {
        let mut out = AlignedVec::new();
        out.extend_from_slice(bytes);
        out
    }

    fn encoded() -> AlignedVec<PAYLOAD_ALIGN> {
        let mut out = Vec::new();
        encode(header(), &greeting(), &mut out).unwrap();
        aligned(&out)
    }

    #[test]
    fn a_frame_round_trips_and_is_read_in_place() {
        let bytes = encoded();
        let (frame, len) = Frame::<ArchivedGreeting>::parse(&bytes, 1 << 20).unwrap();
        assert_eq!(len, frame.header.frame_len());
        assert_eq!(frame.header.channel, 7);
        assert_eq!(frame.header.source, header().source);
        assert_eq!(frame.header.destination, header().destination);
        assert_eq!(frame.header.trace_id, 0xdead_beef);
        assert_eq!(frame.payload.from.as_str(), "node-a");
        assert_eq!(frame.payload.count.to_native(), 42);
        assert_eq!(frame.payload.tags.len(), 3);
        // In place: the archived value lies inside the receive buffer.
        let range = bytes.as_ptr_range();
        assert!(range.contains(&(frame.payload as *const ArchivedGreeting as *const u8)));
    }

    #[test]
    fn consecutive_frames_stay_aligned() {
        let mut wire = Vec::new();
        for count in 0..5 {
            let value = Greeting {
                from: "x".repeat(count as usize * 3),
                count,
                tags: vec![],
            };
            encode(header(), &value, &mut wire).unwrap();
        }
        let bytes = aligned(&wire);
        let mut at = 0;
        for count in 0..5 {
            let (frame, len) = Frame::<ArchivedGreeting>::parse(&bytes[at..], 1 << 20).unwrap();
            assert_eq!(frame.payload.count.to_native(), count);
            at += len;
        }
        assert_eq!(at, bytes.len());
    }

    #[test]
    fn every_malformed_header_is_a_typed_error() {
        let good = encoded();
        let parse = |bytes: &[u8]| Frame::<ArchivedGreeting>::parse(bytes, 1 << 20).map(|_| ());

        assert!(matches!(
            parse(&good[..10]),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&good[..good.len() - 40]),
            Err(FrameError::Truncated { .. })
        ));

        let mut bytes = good.clone();
        bytes[0] = b'X';
        assert!(matches!(parse(&bytes), Err(FrameError::BadMagic(_))));

        let mut bytes = good.clone();
        bytes[4] = 9;
        assert_eq!(parse(&bytes), Err(FrameError::UnsupportedVersion(9)));

        let mut bytes = good.clone();
        bytes[8] = 200;
        assert_eq!(parse(&bytes), Err(FrameError::UnknownKind(200)));

        let mut bytes = good.clone();
        bytes[10] = 1;
        assert_eq!(parse(&bytes), Err(FrameError::Reserved));

        let length = FrameHeader::parse(&good, u32::MAX).unwrap().length;
        assert_eq!(
            Frame::<ArchivedGreeting>::parse(&good, length - 1).map(|_| ()),
            Err(FrameError::Oversized {
                length,
                max: length - 1
            })
        );
    }

    #[test]
    fn a_corrupted_payload_is_refused_not_read() {
        let good = encoded();
        let length = FrameHeader::parse(&good, u32::MAX).unwrap().length as usize;
        // Point the string's relative pointer far outside the buffer by
        // overwriting the payload with 0xff, and every byte in turn: no
        // corruption may panic, and at least the wholesale one is refused.
        let mut bytes = good.clone();
        for byte in &mut bytes[HEADER_LEN..HEADER_LEN + length] {
            *byte = 0xff;
        }
        assert!(matches!(
            Frame::<ArchivedGreeting>::parse(&bytes, 1 << 20),
            Err(FrameError::InvalidPayload(_))
        ));
        for at in HEADER_LEN..HEADER_LEN + length {
            let mut bytes = good.clone();
            bytes[at] ^= 0xa5;
            let _ = Frame::<ArchivedGreeting>::parse(&bytes, 1 << 20);
        }
    }

    #[test]
    fn a_misaligned_payload_is_refused() {
        let good = encoded();
        let mut shifted = AlignedVec::<PAYLOAD_ALIGN>::new();
        shifted.push(0);
        shifted.extend_from_slice(&good);
        assert_eq!(
            Frame::<ArchivedGreeting>::parse(&shifted[1..], 1 << 20).map(|_| ()),
            Err(FrameError::Misaligned)
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut bytes = AlignedVec::<PAYLOAD_ALIGN>::new();
        for round in 0..2000 {
            bytes.clear();
            let len = (round % 200) + 1;
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            if round % 2 == 0 && bytes.len() >= HEADER_LEN {
                // Give half of them a valid header so the payload check runs.
                let mut h = header();
                h.length = (bytes.len() - HEADER_LEN) as u32;
                bytes[..HEADER_LEN].copy_from_slice(&h.to_bytes());
            }
            let _ = Frame::<ArchivedGreeting>::parse(&bytes, 1 << 20);
        }
    }
}
