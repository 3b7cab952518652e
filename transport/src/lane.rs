//! The sending half of one lane: one TCP connection's worth of outbound
//! frames to one peer on one channel.
//!
//! Processes on any shard append encoded frames to the lane; the lane's
//! connection process (on one shard) takes them in batches and writes each
//! batch with one send. Appending is a short critical section (a copy of
//! already-encoded bytes), so a `Mutex` serves; the batching is what makes
//! small messages cheap on the wire, as one `send` carries hundreds of them.
//! A process sending many messages in one poll does not even take the lock
//! per message: its shard stages them under a [`Grant`] of room taken in
//! advance and commits them at once ([`crate::stage`]). Large frames are
//! the exception: each is encoded straight onto the lane under the lock
//! ([`Lane::push_encoded`]), so that it is written once on its way out.
//!
//! The lane also keeps the two promises of its channel:
//!
//! - **Credit.** `in_flight` counts the bytes appended since the current
//!   connection started (including what it must send again) minus what
//!   the receiver reported as consumed by its processes. A send that
//!   would push it past the channel's window waits (or gets
//!   [`Push::WouldBlock`]), so memory held for a slow peer stays bounded on
//!   both ends.
//! - **Unsent bytes.** Beside credit, a connected lane holds at most
//!   [`PENDING_LIMIT`] bytes of frames its connection has not taken yet
//!   (for large frames, [`PENDING_FRAMES`] of them up to
//!   [`MAX_PENDING_LIMIT`]; more only when one frame alone is larger
//!   still), as a socket's send buffer
//!   bounds what a writer may queue: the rest of the window lives in the
//!   kernel's socket buffers and the peer's. Frames are then copied into the
//!   socket while they are still in the cache they were encoded into. Without
//!   the bound, a sender ahead of its connection filled the whole window
//!   (then 4 MiB on `data`) before anything went out, and every byte was written
//!   to memory and read back after it had left the caches: 1 KiB messages
//!   went at 2.6 M msgs/s on io_uring and 3.1 M on epoll, against 3.2 M and
//!   4.8 M with it. A batch of a few large frames is another matter: each
//!   turn between sender and connection, and each send, then carries so
//!   few frames that their fixed costs show (64 KiB messages went at 2.7 GB/s
//!   in batches of three, 3.1 GB/s in batches of eight, with 1 KiB ones
//!   unchanged), so the limit grows with the frame.
//! - **Acknowledged delivery.** Frames get sequence numbers; buffers
//!   written to the socket stay in `unacked` until the receiver acknowledges
//!   their last frame; a new connection starts by sending again everything
//!   after what the receiver says it delivered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::channel::{ChannelSpec, Delivery, WhenDisconnected};
use foundation_sched::Pid;

use crate::frame::{self, FrameHeader, FIRST_CHUNK, HEADER_LEN, PAYLOAD_ALIGN};

/// Most bytes of frames a connected lane holds before its connection takes
/// them (see the module docs): the most one send request carries, so the
/// connection takes a batch about as large as it writes at once.
pub(crate) const PENDING_LIMIT: usize = 256 * 1024;

/// Frames of the size being appended that the limit on unsent bytes
/// always allows, up to [`MAX_PENDING_LIMIT`].
const PENDING_FRAMES: usize = 8;

/// The most the limit on unsent bytes grows to for large frames.
const MAX_PENDING_LIMIT: usize = 4 * PENDING_LIMIT;

/// Frames appended to a buffer on trial: taken off again when this is
/// dropped (a panic in a `Serialize` included) unless kept.
pub(crate) struct Tentative<'a> {
    pub(crate) frames: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Tentative<'a> {
    pub(crate) fn new(frames: &'a mut Vec<u8>) -> Tentative<'a> {
        let start = frames.len();
        Tentative { frames, start }
    }

    pub(crate) fn keep(mut self) {
        self.start = self.frames.len();
    }
}

impl Drop for Tentative<'_> {
    fn drop(&mut self) {
        self.frames.truncate(self.start);
    }
}

/// What became of a message offered to [`Lane::push_encoded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoded {
    /// Encoded onto the lane: its length.
    Pushed(usize),
    /// Not encoded: no room for a message the size of the lane's last.
    NoRoom,
    /// Not appended, to be sent the general way.
    Declined,
}

/// A message [`Lane::push_encoded`] would take now: the room, the size
/// expected (the lane's last message), and whether it goes in chunks.
struct Direct {
    room: u64,
    expected: usize,
    chunked: bool,
}

/// Why frames could not be appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Out of credit or pending room (or queue room while disconnected):
    /// try again later.
    WouldBlock,
    /// Disconnected, and the channel fails sends while disconnected.
    NotConnected,
    /// The transport stopped.
    Closed,
}

/// One lane's outbound state.
pub(crate) struct Lane {
    acknowledged: bool,
    window: u64,
    when_disconnected: WhenDisconnected,
    /// Bytes of the last frame pushed, or encoded onto the lane whether
    /// it stayed or not: what the next one is likely to take. Written
    /// under the lock, read without it.
    frame_hint: AtomicUsize,
    state: Mutex<State>,
}

struct State {
    /// Encoded frames not yet handed to the socket.
    pending: Vec<u8>,
    /// Acknowledged channels: the sequence number of the next frame.
    next_sequence: u64,
    /// Written buffers awaiting acknowledgement, oldest first, with the
    /// sequence number of each one's last frame.
    unacked: VecDeque<(u64, Vec<u8>)>,
    /// Bytes appended since the connection started, less those consumed.
    in_flight: u64,
    /// The receiver's consumed-bytes count on this connection, as last
    /// reported.
    consumed: u64,
    connected: bool,
    closed: bool,
    /// The incarnation of the peer's transport last connected to.
    peer_incarnation: Option<u64>,
    /// The connection process, waiting for frames.
    writer: Option<Waker>,
    /// Senders waiting for credit.
    blocked: Vec<Waker>,
    /// Emptied buffers, reused for the next batch.
    spare: Vec<Vec<u8>>,
    /// The process whose message is going on in chunks: until its hold
    /// ends, only its pushes are taken.
    held_by: Option<Pid>,
    /// Room granted to stages ([`crate::stage`]) and not yet committed,
    /// whatever connection it was granted under: counted against the
    /// pending limit (or the queue) as if it were pending, and keeps a
    /// chunked message from starting (its chunks must be contiguous).
    granted: u64,
    /// Counts connects and disconnects, each of which starts the credit
    /// count afresh: a grant from an earlier epoch is not in `in_flight`.
    epoch: u64,
    /// A chunked message waits for the grants out to be committed: no
    /// more are given meanwhile, so that stages on busy shards cannot keep
    /// it waiting for ever.
    chunks_waiting: bool,
}

/// Room a stage may fill without taking the lane's lock again: granted
/// credit (and pending room) as [`Lane::push`] would have taken it.
#[derive(Debug, Default)]
pub(crate) struct Grant {
    bytes: u64,
    epoch: u64,
}

impl Grant {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes as usize
    }
}

/// The lane held for one process's chunked message; released on drop.
pub(crate) struct Hold<'a> {
    lane: &'a Lane,
    holder: Pid,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut state = self.lane.state();
        // Taken or given up, the hold no longer waits.
        state.chunks_waiting = false;
        if state.held_by == Some(self.holder) {
            state.held_by = None;
            let blocked = std::mem::take(&mut state.blocked);
            drop(state);
            blocked.into_iter().for_each(Waker::wake);
        }
    }
}

impl Lane {
    pub(crate) fn new(spec: &ChannelSpec) -> Lane {
        Lane {
            acknowledged: spec.delivery == Delivery::Acknowledged,
            window: u64::from(spec.credit_window),
            when_disconnected: spec.when_disconnected,
            frame_hint: AtomicUsize::new(0),
            state: Mutex::new(State {
                pending: Vec::new(),
                next_sequence: 1,
                unacked: VecDeque::new(),
                in_flight: 0,
                consumed: 0,
                connected: false,
                closed: false,
                peer_incarnation: None,
                writer: None,
                blocked: Vec::new(),
                spare: Vec::new(),
                held_by: None,
                granted: 0,
                epoch: 0,
                chunks_waiting: false,
            }),
        }
    }

    /// Holds the lane for `holder`'s chunked message: once its first chunk
    /// is taken, other processes' pushes wait (or are `WouldBlock`) until
    /// the returned hold drops.
    pub(crate) fn hold_for(&self, holder: Pid) -> Hold<'_> {
        Hold { lane: self, holder }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends whole frames from the start of `frames` (contiguous encoded
    /// frames): all of them, or with `partial`, as many as fit (at least
    /// one). Returns the bytes taken. On `WouldBlock` with `cx`, the task
    /// is woken when credit returns.
    pub(crate) fn push(
        &self,
        frames: &[u8],
        partial: bool,
        cx: Option<&mut Context<'_>>,
    ) -> Result<usize, Push> {
        // Whole messages (or all chunks of one) wait while any process
        // holds the lane for its chunks.
        self.append(
            frames.len(),
            None,
            false,
            cx,
            |room| {
                if frames.len() as u64 <= room {
                    frames.len()
                } else if partial {
                    whole_frames_within(frames, room as usize)
                } else {
                    0
                }
            },
            |state, take| {
                state.pending.extend_from_slice(&frames[..take]);
                self.frame_hint.store(frames.len(), Ordering::Relaxed);
            },
        )
    }

    /// Appends one chunk frame: `header` (its length set here) and
    /// `piece`, written straight into the lane (a large message is not
    /// copied into chunk frames first). On `WouldBlock` with `cx`, the
    /// task is woken when credit returns.
    pub(crate) fn push_chunk(
        &self,
        mut header: FrameHeader,
        piece: &[u8],
        cx: Option<&mut Context<'_>>,
    ) -> Result<(), Push> {
        // Pieces are cut at the channel's maximum frame, a `u32`.
        header.length = u32::try_from(piece.len()).unwrap_or(u32::MAX);
        let head = header.to_bytes();
        let len = frame::padded_len(piece.len());
        // The first chunk takes the hold (see `hold_for`).
        let first = header.flags & FIRST_CHUNK != 0;
        self.append(
            len,
            Some(header.source),
            first,
            cx,
            |room| if len as u64 <= room { len } else { 0 },
            |state, _| {
                let pending = &mut state.pending;
                pending.extend_from_slice(&head);
                pending.extend_from_slice(piece);
                pending.resize(pending.len().next_multiple_of(PAYLOAD_ALIGN), 0);
            },
        )
        .map(drop)
    }

    /// Appends what `write` writes, `take(room)` bytes of whole frames
    /// (of about `frame` bytes each) given the room left in the window (or
    /// the queue); zero bytes is `WouldBlock`. Returns the bytes taken.
    fn append(
        &self,
        frame: usize,
        source: Option<Pid>,
        hold: bool,
        cx: Option<&mut Context<'_>>,
        take: impl FnOnce(u64) -> usize,
        write: impl FnOnce(&mut State, usize),
    ) -> Result<usize, Push> {
        let mut state = self.state();
        if state.closed {
            return Err(Push::Closed);
        }
        let granted_out = hold && state.granted > 0;
        if state.held_by.is_some_and(|holder| Some(holder) != source) || granted_out {
            // Another process's message is half-way on the lane, or (for a
            // first chunk) stages may still commit frames that would land
            // between the chunks.
            state.chunks_waiting |= granted_out;
            if let Some(cx) = cx {
                state.blocked.push(cx.waker().clone());
            }
            return Err(Push::WouldBlock);
        }
        let room = self.room(&state, frame)?;
        let take = take(room);
        if take == 0 {
            if let Some(cx) = cx {
                state.blocked.push(cx.waker().clone());
            }
            return Err(Push::WouldBlock);
        }
        if hold {
            state.held_by = source;
            state.chunks_waiting = false;
        }
        let start = state.pending.len();
        write(&mut state, take);
        debug_assert_eq!(state.pending.len(), start + take, "wrote what it took");
        self.appended(state, start);
        Ok(take)
    }

    /// Encodes one message with `encode` straight onto the pending frames:
    /// as one frame, or as its chunk frames when the lane's last message
    /// went in chunks (`encode` is told which, and returns the archive's
    /// length). A large message is then written once on its way to the
    /// socket, where encoding it elsewhere and pushing it (or committing
    /// it from a stage behind frames already pending, or cutting it into
    /// chunks) writes it twice: with 64 KiB messages the second copy took
    /// about 15 % of the sending core.
    ///
    /// Nothing is encoded when there is no room for a message the size of
    /// the lane's last ([`Encoded::NoRoom`]: a sender that may wait waits
    /// with [`Lane::poll_room`] and tries again, rather than encoding the
    /// message elsewhere and copying it out to wait). Nothing is appended
    /// ([`Encoded::Declined`]) when the lane is closed, failing sends while
    /// disconnected, or held for another process's chunks; when a message
    /// the size of its last would go in chunks taking more than half the
    /// window (they then go one by one, as credit returns); when `encode`
    /// fails; or when the message comes out larger than the room, or in one
    /// frame larger than `max_frame`, or in chunks no larger than one
    /// frame. The caller then sends it the general way ([`Lane::push`],
    /// chunks), which encodes it again and reports what went wrong.
    ///
    /// All of a message's chunks are appended at once, so they are
    /// contiguous on the lane without holding it.
    ///
    /// The lock is held while `encode` runs, as long as a push holds it to
    /// copy the same frames.
    pub(crate) fn push_encoded(
        &self,
        max_frame: usize,
        encode: impl FnOnce(&mut Vec<u8>, bool) -> Option<usize>,
    ) -> Encoded {
        let mut state = self.state();
        let Some(Direct {
            room,
            expected,
            chunked,
        }) = self.direct(&state, max_frame)
        else {
            return Encoded::Declined;
        };
        if room < expected as u64 {
            return Encoded::NoRoom;
        }
        let start = state.pending.len();
        let tentative = Tentative::new(&mut state.pending);
        let length = encode(tentative.frames, chunked);
        let len = tentative.frames.len() - start;
        self.frame_hint.store(len, Ordering::Relaxed);
        let fits = length.is_some_and(|length| (length > max_frame) == chunked);
        if !fits || len as u64 > room {
            return Encoded::Declined;
        }
        tentative.keep();
        self.appended(state, start);
        Encoded::Pushed(len)
    }

    /// Ready once [`Lane::push_encoded`] would find room for a message the
    /// size of the lane's last, or would decline it whatever the room;
    /// until then `cx` is woken when credit returns or the connection
    /// takes pending frames.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>, max_frame: usize) -> Poll<()> {
        let mut state = self.state();
        match self.direct(&state, max_frame) {
            Some(direct) if direct.room < direct.expected as u64 => {
                state.blocked.push(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// What [`Lane::push_encoded`] would do now, or `None` if it declines
    /// whatever the room.
    fn direct(&self, state: &State, max_frame: usize) -> Option<Direct> {
        let expected = self.frame_hint();
        let chunked = expected > frame::padded_len(max_frame);
        if state.closed || state.held_by.is_some() || chunked && expected as u64 > self.window / 2 {
            return None;
        }
        let room = self.room(state, expected).ok()?;
        Some(Direct {
            room,
            expected,
            chunked,
        })
    }

    /// A message went out in chunks spanning `bytes`: as with a frame
    /// pushed, the size the next is likely to take.
    pub(crate) fn sent_in_chunks(&self, bytes: usize) {
        self.frame_hint.store(bytes, Ordering::Relaxed);
    }

    /// Bytes of the last frame pushed or encoded onto the lane.
    pub(crate) fn frame_hint(&self) -> usize {
        self.frame_hint.load(Ordering::Relaxed)
    }

    /// After frames were appended at `start` of the pending ones: numbers
    /// them (acknowledged channels), counts them against the window, and
    /// wakes the connection if they are all it has to send.
    fn appended(&self, mut state: MutexGuard<'_, State>, start: usize) {
        if self.acknowledged {
            let mut sequence = state.next_sequence;
            number_frames(&mut state.pending[start..], &mut sequence);
            state.next_sequence = sequence;
        }
        if state.connected {
            state.in_flight += (state.pending.len() - start) as u64;
        }
        if start == 0 {
            if let Some(writer) = state.writer.take() {
                drop(state);
                writer.wake();
            }
        }
    }
    /// Bytes that may be appended now, for frames of about `frame` bytes:
    /// credit and pending room while connected, queue room while not.
    fn room(&self, state: &State, frame: usize) -> Result<u64, Push> {
        let unsent = state.pending.len() as u64 + state.granted;
        let limit = frame
            .saturating_mul(PENDING_FRAMES)
            .clamp(PENDING_LIMIT, MAX_PENDING_LIMIT) as u64;
        if state.connected {
            let credit = self.window.saturating_sub(state.in_flight);
            if unsent == 0 {
                // A frame larger than the limit goes alone.
                Ok(credit)
            } else {
                Ok(credit.min(limit.saturating_sub(unsent)))
            }
        } else {
            match self.when_disconnected {
                WhenDisconnected::Fail => Err(Push::NotConnected),
                WhenDisconnected::Queue { max_bytes } => {
                    Ok((max_bytes as u64).saturating_sub(unsent))
                }
            }
        }
    }

    /// Grows `grant` to cover at least `total` bytes, and by up to `more`
    /// beyond that as the room allows; `false` (and the grant as it was)
    /// when there is not room for `total`, the lane is held for a
    /// process's chunks or a chunked message waits to start, or the grant
    /// is from before a connect or disconnect.
    pub(crate) fn extend_grant(&self, grant: &mut Grant, total: usize, more: usize) -> bool {
        let need = (total as u64).saturating_sub(grant.bytes);
        let mut state = self.state();
        let stale = grant.bytes > 0 && grant.epoch != state.epoch;
        if state.closed || state.held_by.is_some() || state.chunks_waiting || stale {
            return false;
        }
        let Ok(room) = self.room(&state, need as usize) else {
            return false;
        };
        if room < need {
            return false;
        }
        let added = room.min(need + more as u64);
        state.granted += added;
        if state.connected {
            state.in_flight += added;
        }
        grant.bytes += added;
        grant.epoch = state.epoch;
        true
    }

    /// Appends `frames`, staged within `grant` (whole frames, at most the
    /// grant's bytes), and gives back what the grant did not use. `frames`
    /// is left empty: when the lane had nothing pending, the staged buffer
    /// itself becomes the pending batch and `frames` gets an empty one.
    /// Frames committed to a closed lane are dropped, as pushes to it
    /// fail.
    pub(crate) fn commit(&self, grant: Grant, frames: &mut Vec<u8>) {
        debug_assert!(
            frames.len() as u64 <= grant.bytes,
            "staged within the grant"
        );
        if grant.bytes == 0 {
            // Nothing was granted, so nothing was staged (a stage opened by
            // a process's lone send): the lock is not needed.
            return;
        }
        let mut state = self.state();
        let used = frames.len() as u64;
        state.granted -= grant.bytes;
        if grant.epoch == state.epoch {
            if state.connected {
                state.in_flight -= grant.bytes - used;
            }
        } else if state.connected {
            // Granted before the connection started: count it now, as
            // `connected` counted what was pending then.
            state.in_flight += used;
        }
        if state.closed {
            frames.clear();
            return;
        }
        if self.acknowledged {
            let mut sequence = state.next_sequence;
            number_frames(frames, &mut sequence);
            state.next_sequence = sequence;
        }
        let writer = if used == 0 {
            None
        } else if state.pending.is_empty() {
            std::mem::swap(&mut state.pending, frames);
            state.writer.take()
        } else {
            state.pending.extend_from_slice(frames);
            frames.clear();
            None
        };
        // Room the grant did not use is free again, and a chunked message
        // waiting for stages to commit may start.
        let blocked = std::mem::take(&mut state.blocked);
        drop(state);
        writer.into_iter().chain(blocked).for_each(Waker::wake);
    }

    /// The connection process takes the next batch to write, or registers
    /// to be woken when there is one. `Ready(None)` once the lane closed.
    pub(crate) fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let mut state = self.state();
        if state.closed {
            return Poll::Ready(None);
        }
        if state.pending.is_empty() {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let spare = state.spare.pop().unwrap_or_default();
        let batch = std::mem::replace(&mut state.pending, spare);
        // Senders waiting for room in the pending bytes have it now; those
        // out of credit are woken by the credit that comes back.
        let blocked = if state.in_flight < self.window {
            std::mem::take(&mut state.blocked)
        } else {
            Vec::new()
        };
        drop(state);
        blocked.into_iter().for_each(Waker::wake);
        Poll::Ready(Some(batch))
    }

    /// A batch from [`Lane::poll_batch`] was written.
    pub(crate) fn written(&self, mut batch: Vec<u8>) {
        let mut state = self.state();
        if self.acknowledged {
            let last = state.next_sequence - 1 - count_after(&state.pending);
            state.unacked.push_back((last, batch));
        } else {
            batch.clear();
            state.spare.push(batch);
        }
    }

    /// The receiver consumed `consumed` bytes so far on this connection.
    pub(crate) fn credit(&self, consumed: u64) {
        let mut state = self.state();
        let grant = consumed.saturating_sub(state.consumed);
        state.consumed = state.consumed.max(consumed);
        state.in_flight = state.in_flight.saturating_sub(grant);
        let blocked = std::mem::take(&mut state.blocked);
        drop(state);
        blocked.into_iter().for_each(Waker::wake);
    }

    /// The receiver delivered every frame up to `sequence`.
    pub(crate) fn acknowledged(&self, sequence: u64) {
        let mut state = self.state();
        while state
            .unacked
            .front()
            .is_some_and(|(last, _)| *last <= sequence)
        {
            if let Some((_, mut batch)) = state.unacked.pop_front() {
                batch.clear();
                state.spare.push(batch);
            }
        }
    }

    /// A connection was established to incarnation `peer_incarnation` of
    /// the peer's transport, which had delivered up to `delivered`.
    /// Everything unacknowledged after it goes out first.
    ///
    /// A peer that restarted (a new incarnation) has lost whatever its
    /// previous incarnation had not acknowledged, with the processes it
    /// was for, and numbers this lane from 1 again: the unacknowledged
    /// frames are dropped and the waiting ones numbered afresh.
    pub(crate) fn connected(&self, peer_incarnation: u64, delivered: u64) {
        let mut state = self.state();
        let restarted = state
            .peer_incarnation
            .is_some_and(|known| known != peer_incarnation);
        state.peer_incarnation = Some(peer_incarnation);
        if restarted && self.acknowledged {
            while let Some((_, mut lost)) = state.unacked.pop_front() {
                lost.clear();
                state.spare.push(lost);
            }
            let mut next = 1;
            number_frames(&mut state.pending, &mut next);
            state.next_sequence = next;
        }
        drop(state);
        self.acknowledged(delivered);
        let mut state = self.state();
        let mut resend: Vec<u8> = Vec::new();
        for (_, batch) in state.unacked.drain(..) {
            resend.extend_from_slice(&batch);
        }
        if !resend.is_empty() {
            resend.extend_from_slice(&state.pending);
            state.pending = resend;
        }
        state.in_flight = state.pending.len() as u64;
        state.consumed = 0;
        state.connected = true;
        state.epoch += 1;
        let blocked = std::mem::take(&mut state.blocked);
        drop(state);
        blocked.into_iter().for_each(Waker::wake);
    }

    /// The connection failed. A best-effort lane forgets what it wrote; an
    /// acknowledged one keeps it for the next connection.
    pub(crate) fn disconnected(&self) {
        let mut state = self.state();
        state.connected = false;
        state.in_flight = 0;
        state.epoch += 1;
        let blocked = std::mem::take(&mut state.blocked);
        drop(state);
        blocked.into_iter().for_each(Waker::wake);
    }

    /// Whether a connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.state().connected
    }

    /// Closes the lane: pushes fail, the connection process stops.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        let mut wakers = std::mem::take(&mut state.blocked);
        wakers.extend(state.writer.take());
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Bytes held: waiting to be written and written but unacknowledged.
    pub(crate) fn held_bytes(&self) -> usize {
        let state = self.state();
        state.pending.len() + state.unacked.iter().map(|(_, b)| b.len()).sum::<usize>()
    }
}

/// Length of the longest prefix of whole frames of `frames` within `limit`
/// bytes.
fn whole_frames_within(frames: &[u8], limit: usize) -> usize {
    let mut end = 0;
    while let Some(len) = frame_len_at(frames, end) {
        if end + len > limit {
            break;
        }
        end += len;
    }
    end
}

/// Writes consecutive sequence numbers into the headers of `frames`.
fn number_frames(frames: &mut [u8], next: &mut u64) {
    let mut at = 0;
    while let Some(len) = frame_len_at(frames, at) {
        frames[at + 40..at + HEADER_LEN].copy_from_slice(&next.to_le_bytes());
        *next += 1;
        at += len;
    }
}

/// Frames in `pending`.
fn count_after(pending: &[u8]) -> u64 {
    let mut count = 0;
    let mut at = 0;
    while let Some(len) = frame_len_at(pending, at) {
        count += 1;
        at += len;
    }
    count
}

/// The length of the frame at `at` in bytes we encoded ourselves.
fn frame_len_at(frames: &[u8], at: usize) -> Option<usize> {
    let header = FrameHeader::parse(frames.get(at..)?, u32::MAX).ok()?;
    Some(header.frame_len())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use foundation_sched::{NodeId, ShardId};

    use super::*;
    use crate::channel::ChannelSpec;
    use crate::frame::{FrameKind, LAST_CHUNK};

    fn header(source: Pid, kind: FrameKind, flags: u8) -> FrameHeader {
        FrameHeader {
            flags,
            channel: 0,
            kind,
            length: 0,
            source,
            destination: Pid::new(NodeId(2), ShardId(0), 1, 1),
            trace_id: 0,
            sequence: 0,
        }
    }

    /// `value` encoded as one message frame from `source`.
    fn message_from<T: frame::Wire>(source: Pid, value: &T) -> Vec<u8> {
        let mut frame = Vec::new();
        frame::encode(header(source, FrameKind::Message, 0), value, &mut frame).unwrap();
        frame
    }

    /// While one process's message goes on in chunks, another's waits: the
    /// chunks stay contiguous on the lane, and numbered in order.
    #[test]
    fn a_chunked_message_holds_the_lane_until_it_is_done() {
        let lane = Lane::new(&ChannelSpec::new("test").delivery(Delivery::Acknowledged));
        lane.connected(1, 0);
        let (a, b) = (
            Pid::new(NodeId(1), ShardId(0), 1, 1),
            Pid::new(NodeId(1), ShardId(0), 2, 1),
        );
        let small = message_from(b, &7_u64);

        let hold = lane.hold_for(a);
        // Before its first chunk, the lane is not held yet.
        assert_eq!(lane.push(&small, false, None), Ok(small.len()));
        lane.push_chunk(header(a, FrameKind::Chunk, FIRST_CHUNK), &[1; 40], None)
            .unwrap();
        assert_eq!(lane.push(&small, false, None), Err(Push::WouldBlock));
        lane.push_chunk(header(a, FrameKind::Chunk, LAST_CHUNK), &[2; 40], None)
            .unwrap();
        assert_eq!(lane.push(&small, false, None), Err(Push::WouldBlock));
        drop(hold);
        assert_eq!(lane.push(&small, false, None), Ok(small.len()));

        // On the wire: B's message, A's two chunks, B's message; numbered
        // 1 to 4.
        let mut state = lane.state();
        let pending = std::mem::take(&mut state.pending);
        let mut at = 0;
        let mut seen = Vec::new();
        while let Ok(header) = FrameHeader::parse(&pending[at..], u32::MAX) {
            seen.push((header.source, header.kind, header.sequence));
            at += header.frame_len();
            if at == pending.len() {
                break;
            }
        }
        assert_eq!(
            seen,
            [
                (b, FrameKind::Message, 1),
                (a, FrameKind::Chunk, 2),
                (a, FrameKind::Chunk, 3),
                (b, FrameKind::Message, 4),
            ]
        );
    }

    /// Counts its wake-ups.
    struct Counting(AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// With credit to spare, a connected lane still holds no more than
    /// `PENDING_LIMIT` unsent bytes; a sender that waits for room is woken
    /// when the connection takes the batch, and a frame larger than the
    /// limit goes when the lane is empty.
    #[test]
    fn unsent_bytes_stay_within_the_pending_limit() {
        let window = 8 * PENDING_LIMIT as u32;
        let lane = Lane::new(&ChannelSpec::new("test").credit_window(window));
        lane.connected(1, 0);
        let source = Pid::new(NodeId(1), ShardId(0), 1, 1);
        let message = message_from(source, &[7_u8; 1000]);
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let waker = Waker::from(counting.clone());
        let mut cx = Context::from_waker(&waker);

        let mut taken = 0;
        while lane.push(&message, false, Some(&mut cx)).is_ok() {
            taken += message.len();
        }
        assert!(taken <= PENDING_LIMIT, "{taken} bytes unsent");
        assert!(taken + message.len() > PENDING_LIMIT, "stopped early");
        assert_eq!(counting.0.load(Ordering::Relaxed), 0);

        let Poll::Ready(Some(batch)) = lane.poll_batch(&mut cx) else {
            panic!("a batch is pending");
        };
        assert_eq!(batch.len(), taken);
        assert_eq!(counting.0.load(Ordering::Relaxed), 1, "the sender is woken");
        assert_eq!(lane.push(&message, false, None), Ok(message.len()));
        lane.written(batch);

        let Poll::Ready(Some(batch)) = lane.poll_batch(&mut cx) else {
            panic!("a batch is pending");
        };
        lane.written(batch);
        let large = message_from(source, &vec![1_u8; 2 * PENDING_LIMIT]);
        assert_eq!(lane.push(&large, false, None), Ok(large.len()));
        assert_eq!(lane.push(&message, false, None), Err(Push::WouldBlock));
    }

    /// A grant is room taken in advance: it counts against the pending
    /// limit and the credit until committed, when what it did not use
    /// returns; staged frames become the pending batch as they are.
    #[test]
    fn a_grant_holds_room_until_its_frames_are_committed() {
        let lane = Lane::new(&ChannelSpec::new("test").credit_window(1 << 20));
        lane.connected(1, 0);
        let source = Pid::new(NodeId(1), ShardId(0), 1, 1);
        let message = message_from(source, &[7_u8; 64]);

        let mut grant = Grant::default();
        assert!(lane.extend_grant(&mut grant, message.len(), 4096));
        assert_eq!(grant.bytes(), message.len() + 4096);
        assert!(lane.extend_grant(&mut grant, 2 * message.len(), PENDING_LIMIT));
        assert_eq!(grant.bytes(), PENDING_LIMIT, "up to the pending limit");
        assert!(
            !lane.extend_grant(&mut grant, PENDING_LIMIT + message.len(), 0),
            "the pending limit counts what is granted"
        );
        assert_eq!(lane.push(&message, false, None), Err(Push::WouldBlock));

        let mut staged = message.repeat(3);
        let buffer = staged.as_ptr();
        lane.commit(grant, &mut staged);
        assert!(staged.is_empty());
        let state = lane.state();
        assert_eq!(state.pending.as_ptr(), buffer, "handed over, not copied");
        assert_eq!(
            state.in_flight,
            3 * message.len() as u64,
            "the rest returned"
        );
        assert_eq!(state.granted, 0);
    }

    /// A chunked message does not start while a stage could still commit
    /// frames into the middle of it, and no stage is granted more room
    /// while it waits, so busy stages cannot keep it out.
    #[test]
    fn a_chunked_message_waits_for_outstanding_grants() {
        let lane = Lane::new(&ChannelSpec::new("test"));
        lane.connected(1, 0);
        let source = Pid::new(NodeId(1), ShardId(0), 1, 1);
        let mut grant = Grant::default();
        assert!(lane.extend_grant(&mut grant, 64, 0));
        let first = header(source, FrameKind::Chunk, FIRST_CHUNK);
        assert_eq!(
            lane.push_chunk(first, &[1; 40], None),
            Err(Push::WouldBlock)
        );
        let mut busy = Grant::default();
        assert!(
            !lane.extend_grant(&mut busy, 64, 0),
            "no new grants while chunks wait"
        );
        lane.commit(grant, &mut Vec::new());
        assert_eq!(lane.push_chunk(first, &[1; 40], None), Ok(()));
        let mut late = Grant::default();
        assert!(!lane.extend_grant(&mut late, 64, 0), "held for the chunks");
    }

    /// Room granted before a disconnect was forgotten with the credit
    /// count: committed after the next connect, what was staged is counted
    /// in flight there and nothing is given back twice. Until then the
    /// grant still keeps a chunked message from starting.
    #[test]
    fn a_grant_from_an_earlier_connection_counts_what_it_staged() {
        let lane = Lane::new(&ChannelSpec::new("test").delivery(Delivery::Acknowledged));
        lane.connected(1, 0);
        let source = Pid::new(NodeId(1), ShardId(0), 1, 1);
        let message = message_from(source, &7_u64);
        let mut grant = Grant::default();
        assert!(lane.extend_grant(&mut grant, message.len(), 4096));
        lane.disconnected();
        lane.connected(1, 0);
        assert!(
            !lane.extend_grant(&mut grant, 2 * message.len(), 0),
            "a stale grant does not grow"
        );
        let chunker = Pid::new(NodeId(1), ShardId(1), 2, 1);
        let first = header(chunker, FrameKind::Chunk, FIRST_CHUNK);
        assert_eq!(
            lane.push_chunk(first, &[1; 40], None),
            Err(Push::WouldBlock),
            "the stale grant's frames could land between the chunks"
        );
        lane.commit(grant, &mut message.clone());
        let state = lane.state();
        assert_eq!(state.in_flight, message.len() as u64);
        assert_eq!(state.granted, 0);
        drop(state);
        assert_eq!(pending_sequences(&lane), [1], "numbered when committed");
        assert_eq!(lane.push_chunk(first, &[1; 40], None), Ok(()));
    }

    /// The limit on unsent bytes grows with the frames: eight 64 KiB frames
    /// wait unsent where only four would fit in the base limit.
    #[test]
    fn large_frames_get_a_larger_pending_limit() {
        let lane = Lane::new(&ChannelSpec::new("test").credit_window(16 << 20));
        lane.connected(1, 0);
        let source = Pid::new(NodeId(1), ShardId(0), 1, 1);
        let message = message_from(source, &vec![7_u8; 64 * 1024]);
        let mut taken = 0;
        while lane.push(&message, false, None).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, PENDING_FRAMES);
    }

    /// Sequence numbers of the frames waiting on `lane`.
    fn pending_sequences(lane: &Lane) -> Vec<u64> {
        let state = lane.state();
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some(len) = frame_len_at(&state.pending, at) {
            let header = FrameHeader::parse(&state.pending[at..], u32::MAX).unwrap();
            seen.push(header.sequence);
            at += len;
        }
        seen
    }

    /// A reconnect to the same incarnation resends what it did not
    /// acknowledge, with its numbers; a restarted peer gets none of what
    /// its previous incarnation lost, and the rest numbered from 1.
    #[test]
    fn a_restarted_peer_is_numbered_afresh() {
        let lane = Lane::new(&ChannelSpec::new("test").delivery(Delivery::Acknowledged));
        let source = Pid::new(NodeId(1), ShardId(0), 1, 1);
        let message = message_from(source, &7_u64);
        lane.connected(1, 0);
        // Frame 1 written alone, then frames 2 and 3; the peer
        // acknowledges 1.
        for frames in [1, 2] {
            for _ in 0..frames {
                lane.push(&message, false, None).unwrap();
            }
            let batch = std::mem::take(&mut lane.state().pending);
            lane.written(batch);
        }
        lane.acknowledged(1);
        lane.disconnected();
        lane.push(&message, false, None).unwrap();

        lane.connected(1, 1);
        assert_eq!(
            pending_sequences(&lane),
            [2, 3, 4],
            "resent, then the new one"
        );
        let batch = std::mem::take(&mut lane.state().pending);
        lane.written(batch);
        lane.disconnected();
        lane.push(&message, false, None).unwrap();

        lane.connected(2, 0);
        assert_eq!(
            pending_sequences(&lane),
            [1],
            "only what was never written, renumbered"
        );
        lane.push(&message, false, None).unwrap();
        assert_eq!(pending_sequences(&lane), [1, 2]);
    }

    /// A frame encoded straight onto the lane stays only if it is whole,
    /// fits in a frame and in the room; otherwise the lane is left as it
    /// was, a panic in the encoding included. A frame the size of the
    /// last that would not fit is not encoded at all: its sender waits for
    /// room, and is woken when credit returns.
    #[test]
    fn only_whole_frames_that_fit_are_encoded_onto_the_lane() {
        let source = Pid::new(NodeId(1), ShardId(0), 1, 1);
        let big = |byte: u8| message_from(source, &vec![byte; 1000]);
        let frame = big(0).len();
        // Room for three such frames.
        let spec = ChannelSpec::new("test")
            .delivery(Delivery::Acknowledged)
            .credit_window(3 * frame as u32);
        let lane = Lane::new(&spec);
        lane.connected(1, 0);
        let encodes = AtomicUsize::new(0);
        let encode = |byte: u8, max: usize| {
            let encodes = &encodes;
            move |out: &mut Vec<u8>, chunked: bool| {
                assert!(!chunked, "frames of 1000 bytes are not chunked");
                encodes.fetch_add(1, Ordering::Relaxed);
                let message = header(source, FrameKind::Message, 0);
                let header = frame::encode(message, &vec![byte; max], out).ok()?;
                Some(header.length as usize)
            }
        };
        assert_eq!(lane.push(&big(1), false, None), Ok(frame));
        assert_eq!(
            lane.push_encoded(1 << 20, encode(2, 1000)),
            Encoded::Pushed(frame)
        );

        let failed = |out: &mut Vec<u8>, _| {
            out.extend_from_slice(&[9; 40]);
            None
        };
        assert_eq!(lane.push_encoded(1 << 20, failed), Encoded::Declined);
        let panicking = |out: &mut Vec<u8>, _| -> Option<usize> {
            out.extend_from_slice(&[9; 40]);
            panic!("a Serialize that panics");
        };
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lane.push_encoded(1 << 20, panicking);
        }));
        assert!(panicked.is_err());
        assert_eq!(
            lane.push_encoded(1000, encode(3, 1000)),
            Encoded::Declined,
            "above max_frame"
        );
        assert_eq!(encodes.load(Ordering::Relaxed), 2);
        assert_eq!(
            lane.push_encoded(1 << 20, encode(3, 2000)),
            Encoded::Declined,
            "larger than the room"
        );
        assert_eq!(encodes.load(Ordering::Relaxed), 3);

        // Frame 3 fits again after the oversized attempts.
        assert_eq!(lane.push(&big(3), false, None), Ok(frame));
        assert_eq!(
            lane.push_encoded(1 << 20, encode(4, 1000)),
            Encoded::NoRoom,
            "no room for a frame the size of the last"
        );
        assert_eq!(encodes.load(Ordering::Relaxed), 3, "not encoded");

        // The sender waits until the receiver consumed a frame's worth.
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let waker = Waker::from(counting.clone());
        let mut task = Context::from_waker(&waker);
        assert!(lane.poll_room(&mut task, 1 << 20).is_pending());
        lane.credit(frame as u64 - 1);
        assert_eq!(counting.0.load(Ordering::Relaxed), 1, "woken by credit");
        assert!(
            lane.poll_room(&mut task, 1 << 20).is_pending(),
            "not enough"
        );
        lane.credit(frame as u64);
        assert!(lane.poll_room(&mut task, 1 << 20).is_ready());
        assert_eq!(
            lane.push_encoded(1 << 20, encode(4, 1000)),
            Encoded::Pushed(frame)
        );

        assert_eq!(pending_sequences(&lane), [1, 2, 3, 4], "numbered in order");
        let mut pending = std::mem::take(&mut lane.state().pending);
        for at in (0..pending.len()).step_by(frame) {
            pending[at + 40..at + HEADER_LEN].fill(0);
        }
        assert!(pending == [big(1), big(2), big(3), big(4)].concat());
    }

    /// After a message that went in chunks, the next of its size is
    /// encoded onto the lane in chunks, all at once: contiguous and
    /// numbered in order. One that comes out within a frame is taken off
    /// again (it goes as a plain frame), and chunks of more than half the
    /// window are not encoded at all (they go one by one as credit
    /// returns).
    #[test]
    fn a_message_in_chunks_is_encoded_onto_the_lane_at_once() {
        let source = Pid::new(NodeId(1), ShardId(0), 1, 1);
        let spec = ChannelSpec::new("test")
            .delivery(Delivery::Acknowledged)
            .max_frame(1000)
            .credit_window(64 * 1024);
        let lane = Lane::new(&spec);
        lane.connected(1, 0);
        let message = header(source, FrameKind::Message, 0);
        let chunks = |len: usize| {
            move |out: &mut Vec<u8>, chunked: bool| {
                assert!(chunked, "the last message went in chunks");
                frame::encode_chunks(message, &vec![3_u8; len], 1000, out).ok()
            }
        };
        let mut expected = Vec::new();
        frame::encode_chunks(message, &vec![3_u8; 2500], 1000, &mut expected).unwrap();
        number_frames(&mut expected, &mut 1);
        lane.sent_in_chunks(expected.len());

        assert_eq!(
            lane.push_encoded(1000, chunks(2500)),
            Encoded::Pushed(expected.len())
        );
        assert_eq!(
            lane.push_encoded(1000, chunks(500)),
            Encoded::Declined,
            "within one frame"
        );
        assert_eq!(pending_sequences(&lane), [1, 2, 3]);
        assert!(lane.state().pending == expected);

        lane.sent_in_chunks(40 * 1024);
        let not_encoded = |_: &mut Vec<u8>, _| -> Option<usize> { panic!("encoded") };
        assert_eq!(
            lane.push_encoded(1000, not_encoded),
            Encoded::Declined,
            "more than half the window"
        );
    }
}
