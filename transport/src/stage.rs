//! The shard's stage: small frames a process sends during one poll,
//! gathered per lane without the lane's lock and handed to the lane in one
//! piece when the poll ends.
//!
//! A lane is shared by every shard, so appending to it takes its mutex: two
//! atomic instructions per message, each of which waits for the sender's
//! earlier stores to drain. A process that sends many messages in one poll
//! pays that once per poll instead:
//!
//! - its first send to a lane in the poll goes to the lane directly, as a
//!   lone message (a request, an answer) should;
//! - the next ones are appended to the lane's stage on this thread, within
//!   a [`Grant`] of credit and pending room taken from the lane in advance
//!   (one lock per [`GRANT`] bytes), so backpressure holds exactly as if
//!   each frame had been pushed: a frame the grant cannot cover, and the
//!   lane will not grant more for, is refused like a push. A frame is
//!   encoded straight onto the stage ([`Stages::encode`]) rather than into
//!   a scratch buffer and copied, when the grant covers one the size of
//!   the process's last;
//! - frames larger than [`STAGED_FRAME_MAX`] (to a lane whose last frame
//!   was that large) are neither staged nor encoded into a scratch
//!   buffer, the poll's first included, but encoded straight onto the
//!   lane under its lock ([`push_encoded`]): a frame staged behind frames
//!   already pending is copied again when the stage is committed, and one
//!   encoded into scratch when it is pushed, which costs a large frame
//!   more than the lock;
//! - when the poll ends ([`coop::at_poll_end`]) every stage is committed:
//!   its frames go to the lane in order, usually by handing over the staged
//!   buffer as the next batch (the connection took the previous one), and
//!   the unused part of the grant returns.
//!
//! A staged send that takes the same route as the one before it on this
//! thread in the same poll (transport, sender, receiver, channel) goes to
//! the stage that one found, without looking up its peer, its lane and the
//! stage again: for 64-byte messages those lookups were about a third of
//! the sending shard's time in user space.
//!
//! Order per (sender, receiver, channel) holds because a process's frames
//! to a lane either all go through its stage during a poll or the stage is
//! committed before any other way to the lane is taken (a large frame, a
//! chunked message, a send that must wait for credit). Outside a process
//! (a plain thread calling `try_send`) nothing is staged.

use std::cell::RefCell;
use std::sync::Arc;

use foundation_sched::{coop, Pid};

use crate::channel::ChannelId;
use crate::frame::{self, FrameHeader};
use crate::lane::{Encoded, Grant, Lane, Push, Tentative};

/// Credit a stage asks for at once beyond what its next frame needs: 256
/// frames of a 64-byte message.
const GRANT: usize = 32 * 1024;

/// Emptied buffers kept for the next stages.
const SPARES: usize = 4;

/// The largest frame staged: larger ones go straight onto the lane
/// ([`push_encoded`]). A frame staged behind frames already pending is
/// copied again when the stage is committed; for a small frame that
/// costs less than the lock it spares, for a large one the copy is what
/// costs.
const STAGED_FRAME_MAX: usize = 16 * 1024;

/// Frames staged for one lane.
struct Stage {
    lane: Arc<Lane>,
    grant: Grant,
    frames: Vec<u8>,
    /// Bytes of the last frame the process sent to the lane in this poll.
    last_frame: usize,
}

/// Where a send goes: the transport (by its id), the sending and the
/// receiving process, and the channel. The same route always takes the
/// same lane while the peer stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) transport: u64,
    pub(crate) from: Pid,
    pub(crate) to: Pid,
    pub(crate) channel: ChannelId,
}

/// An open stage, by its place among this poll's stages (which only grow
/// until the poll ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StageId(usize);

/// This thread's stages for the running poll.
#[derive(Default)]
pub(crate) struct Stages {
    open: Vec<Stage>,
    spare: Vec<Vec<u8>>,
    /// The route of the last send staged in this poll, and its stage.
    ///
    /// It is trusted without asking whether the peer is still there: sends
    /// to a peer removed on another thread meanwhile get, until this poll
    /// ends, what a send racing the removal gets anyway (frames staged for
    /// a closed lane, which its commit drops). A removal on this thread
    /// forgets it ([`forget_route`]).
    last_route: Option<(Route, StageId)>,
}

thread_local! {
    static STAGES: RefCell<Stages> = RefCell::new(Stages::default());
}

impl Stages {
    /// Where the open stage for `lane` is, if there is one.
    fn position(&self, lane: &Arc<Lane>) -> Option<usize> {
        self.open
            .iter()
            .position(|stage| Arc::ptr_eq(&stage.lane, lane))
    }

    /// The open stage for `lane`, if there is one.
    fn find(&mut self, lane: &Arc<Lane>) -> Option<&mut Stage> {
        let index = self.position(lane)?;
        self.open.get_mut(index)
    }

    /// The stage the last send found, if this one takes its route.
    pub(crate) fn remembered(&self, route: Route) -> Option<StageId> {
        self.last_route
            .filter(|(last, _)| *last == route)
            .map(|(_, stage)| stage)
    }

    /// The open stage for `lane`, if there is one, remembered as the one
    /// for `route` (which takes `lane`).
    pub(crate) fn remember(&mut self, route: Route, lane: &Arc<Lane>) -> Option<StageId> {
        let index = self.position(lane)?;
        self.last_route = Some((route, StageId(index)));
        Some(StageId(index))
    }

    /// After a frame of `last_frame` bytes went to `lane` directly: the
    /// next frames to the lane in this poll are staged, if the poll's end
    /// can commit them.
    fn open_after(&mut self, lane: &Arc<Lane>, last_frame: usize) {
        if let Some(stage) = self.find(lane) {
            stage.last_frame = last_frame;
            return;
        }
        if self.open.is_empty() && !coop::at_poll_end(commit_all) {
            return;
        }
        let buffer = self.spare.pop().unwrap_or_default();
        self.open.push(Stage {
            lane: lane.clone(),
            grant: Grant::default(),
            frames: buffer,
            last_frame,
        });
    }
}

impl Stage {
    /// Hands what is staged to the lane and gives back what the grant did
    /// not use; the stage stays open, with nothing granted.
    fn commit(&mut self) {
        let grant = std::mem::take(&mut self.grant);
        self.lane.commit(grant, &mut self.frames);
    }
}

/// Appends `frames` (whole encoded frames, all or none) for `lane`, as
/// [`Lane::push`] would without `partial`, but on this thread's stage when
/// the running process already sent to the lane in this poll.
pub(crate) fn push(lane: &Arc<Lane>, frames: &[u8]) -> Result<(), Push> {
    STAGES.with(|stages| {
        let Ok(mut stages) = stages.try_borrow_mut() else {
            return lane.push(frames, false, None).map(drop);
        };
        let Some(stage) = stages.find(lane) else {
            lane.push(frames, false, None)?;
            stages.open_after(lane, frames.len());
            return Ok(());
        };
        stage.last_frame = frames.len();
        let staged = stage.frames.len() + frames.len();
        if covers(lane, &mut stage.grant, staged) {
            stage.frames.extend_from_slice(frames);
            return Ok(());
        }
        // No room for these: what is staged goes first, then the lane
        // decides (and counts the sender among those waiting, if it waits).
        stage.commit();
        lane.push(frames, false, None).map(drop)
    })
}

/// Encodes a message with `encode` straight onto `lane`, in one frame or
/// in chunks ([`Lane::push_encoded`]), after whatever this poll staged for
/// the lane, when the lane's frames are larger than [`STAGED_FRAME_MAX`].
/// [`Encoded::Declined`] (smaller frames among them: they are encoded off
/// the lane's lock, and staged after the poll's first) leaves the message
/// to the general way.
pub(crate) fn push_encoded(
    lane: &Arc<Lane>,
    max_frame: usize,
    encode: impl FnOnce(&mut Vec<u8>, bool) -> Option<usize>,
) -> Encoded {
    if lane.frame_hint() <= STAGED_FRAME_MAX {
        return Encoded::Declined;
    }
    STAGES.with(|stages| {
        let Ok(mut stages) = stages.try_borrow_mut() else {
            return lane.push_encoded(max_frame, encode);
        };
        if let Some(stage) = stages.find(lane) {
            stage.commit();
        }
        let encoded = lane.push_encoded(max_frame, encode);
        if let Encoded::Pushed(len) = encoded {
            stages.open_after(lane, len);
        }
        encoded
    })
}

/// Calls `f` with this thread's stages if any is open, as
/// [`Stages::encode`] needs one: a send that finds none (a process's first
/// in a poll, a lone request or answer) need not look up its lane for it.
pub(crate) fn with_open<R>(f: impl FnOnce(&mut Stages) -> Option<R>) -> Option<R> {
    STAGES.with(|stages| {
        let mut stages = stages.try_borrow_mut().ok()?;
        if stages.open.is_empty() {
            return None;
        }
        f(&mut stages)
    })
}

impl Stages {
    /// Encodes a frame with `encode` straight onto `stage` (the running
    /// process already sent to its lane in this poll), when the grant
    /// covers another frame the size of its last. Returns the frame's
    /// length, or `None` when nothing was staged: the last frame was
    /// larger than [`STAGED_FRAME_MAX`], `encode` failed, the frame's
    /// payload is larger than `max_frame`, or the grant cannot cover it.
    /// The caller then sends it another way: straight onto the lane if it
    /// is large ([`push_encoded`]), else the general way, which encodes it
    /// again and reports what went wrong ([`push`], chunks, errors).
    ///
    /// Encoding in place spares a copy, and more: the frame's header and
    /// the archive's small fields are written by narrow stores, and
    /// copying them at once reads them back with wide loads, which the CPU
    /// cannot serve from its store buffer; each such load waits for every
    /// earlier store to reach the cache, including the previous frames'
    /// stores to the stage.
    pub(crate) fn encode(
        &mut self,
        stage: StageId,
        max_frame: usize,
        encode: impl FnOnce(&mut Vec<u8>) -> Option<FrameHeader>,
    ) -> Option<usize> {
        let Stage {
            lane,
            grant,
            frames,
            last_frame,
        } = self.open.get_mut(stage.0)?;
        let start = frames.len();
        // The frame is likely the size of the process's last one to this
        // lane: a large one goes straight onto the lane, and one that would
        // go in chunks, or that the grant will not cover, is not encoded
        // only to be taken back and encoded again.
        if *last_frame > STAGED_FRAME_MAX.min(frame::padded_len(max_frame))
            || !covers(lane, grant, start + *last_frame)
        {
            return None;
        }
        // Until it is known to stay, the frame is taken back off the
        // stage however this ends.
        let tentative = Tentative::new(frames);
        let header = encode(tentative.frames)?;
        let staged = tentative.frames.len();
        *last_frame = staged - start;
        if header.length as usize > max_frame || !covers(lane, grant, staged) {
            return None;
        }
        tentative.keep();
        Some(staged - start)
    }
}

/// Whether `staged` bytes for `lane` are within `grant`, extended if need
/// be.
fn covers(lane: &Lane, grant: &mut Grant, staged: usize) -> bool {
    staged <= grant.bytes() || lane.extend_grant(grant, staged, GRANT)
}

/// Commits this thread's stage for `lane`, if it has one, before a frame
/// goes to the lane another way (chunk by chunk, or after waiting).
pub(crate) fn commit(lane: &Arc<Lane>) {
    STAGES.with(|stages| {
        let Ok(mut stages) = stages.try_borrow_mut() else {
            return;
        };
        if let Some(stage) = stages.find(lane) {
            stage.commit();
        }
    });
}

/// Forgets the route this thread's last staged send took, so that the
/// next send looks its peer up again.
pub(crate) fn forget_route() {
    STAGES.with(|stages| {
        if let Ok(mut stages) = stages.try_borrow_mut() {
            stages.last_route = None;
        }
    });
}

/// Commits every stage: the end of the poll that opened them.
fn commit_all() {
    STAGES.with(|stages| {
        let mut stages = stages.borrow_mut();
        let Stages {
            open,
            spare,
            last_route,
        } = &mut *stages;
        *last_route = None;
        for mut stage in open.drain(..) {
            stage.commit();
            if spare.len() < SPARES {
                spare.push(stage.frames);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::task::{Context as TaskContext, Poll, Waker};

    use foundation_sched::{Context, NodeId, Pid, Runtime, ShardId};

    use crate::channel::ChannelSpec;
    use crate::frame::{self, FrameKind};

    fn encode_message<T: frame::Wire>(
        value: T,
    ) -> impl FnOnce(&mut Vec<u8>) -> Option<FrameHeader> {
        move |out| {
            let source = Pid::new(NodeId(1), ShardId(0), 1, 1);
            let header = FrameHeader {
                flags: 0,
                channel: 0,
                kind: FrameKind::Message,
                length: 0,
                source,
                destination: source,
                trace_id: 0,
                sequence: 0,
            };
            frame::encode(header, &value, out).ok()
        }
    }

    fn route() -> Route {
        let pid = Pid::new(NodeId(1), ShardId(0), 1, 1);
        Route {
            transport: 1,
            from: pid,
            to: pid,
            channel: ChannelId(0),
        }
    }

    fn stage_encode(
        lane: &Arc<Lane>,
        max_frame: usize,
        encode: impl FnOnce(&mut Vec<u8>) -> Option<FrameHeader>,
    ) -> Option<usize> {
        with_open(|stages| {
            let stage = stages.remember(route(), lane)?;
            stages.encode(stage, max_frame, encode)
        })
    }

    fn frame_of(value: u64) -> Vec<u8> {
        let mut frame = Vec::new();
        encode_message(value)(&mut frame).unwrap();
        frame
    }

    /// A frame encoded onto a stage stays there only if it is whole, fits
    /// in a frame and is granted: one whose encoding fails or panics, or
    /// that is too large, leaves the stage as it was. What stays reaches
    /// the lane when the poll ends, after the poll's first frame.
    #[test]
    fn only_whole_frames_that_fit_stay_on_the_stage() {
        let lane = Arc::new(Lane::new(&ChannelSpec::new("test")));
        lane.connected(1, 0);
        let staging = lane.clone();
        let runtime = Runtime::builder().shards(1).build().unwrap();
        runtime
            .block_on(move |cx: Context<()>| async move {
                let lane = staging;
                let frame = frame_of(0).len();
                assert_eq!(
                    stage_encode(&lane, 1 << 20, encode_message(1_u64)),
                    None,
                    "no stage"
                );
                push(&lane, &frame_of(1)).unwrap(); // Goes to the lane; opens a stage.
                assert_eq!(
                    stage_encode(&lane, 1 << 20, encode_message(2_u64)),
                    Some(frame)
                );
                let failed = |out: &mut Vec<u8>| {
                    out.extend_from_slice(&[9; 40]);
                    None
                };
                assert_eq!(stage_encode(&lane, 1 << 20, failed), None);
                let panicking = |out: &mut Vec<u8>| -> Option<FrameHeader> {
                    out.extend_from_slice(&[9; 40]);
                    panic!("a Serialize that panics");
                };
                let panicked = catch_unwind(AssertUnwindSafe(|| {
                    stage_encode(&lane, 1 << 20, panicking);
                }));
                assert!(panicked.is_err());
                assert_eq!(
                    stage_encode(&lane, 4, encode_message(3_u64)),
                    None,
                    "above max_frame"
                );
                assert_eq!(
                    stage_encode(&lane, 1 << 20, encode_message(4_u64)),
                    Some(frame)
                );
                cx.yield_now().await; // The poll ends: the stage is committed.
            })
            .unwrap();
        runtime.shutdown();

        let mut task = TaskContext::from_waker(Waker::noop());
        let Poll::Ready(Some(batch)) = lane.poll_batch(&mut task) else {
            panic!("a batch is pending");
        };
        assert_eq!(batch, [frame_of(1), frame_of(2), frame_of(4)].concat());
    }

    /// The stage a route found is remembered until the poll ends or the
    /// thread forgets it: in the next poll the same place among the stages
    /// may hold another lane's.
    #[test]
    fn a_route_is_remembered_only_within_its_poll() {
        let first = Arc::new(Lane::new(&ChannelSpec::new("first")));
        let second = Arc::new(Lane::new(&ChannelSpec::new("second")));
        first.connected(1, 0);
        second.connected(1, 0);
        let remembered = || with_open(|stages| stages.remembered(route()));
        let runtime = Runtime::builder().shards(1).build().unwrap();
        runtime
            .block_on(move |cx: Context<()>| async move {
                push(&first, &frame_of(1)).unwrap(); // Opens the first stage.
                let found = with_open(|stages| stages.remember(route(), &first));
                assert!(found.is_some());
                assert_eq!(remembered(), found);
                forget_route();
                assert_eq!(remembered(), None, "forgotten");
                with_open(|stages| stages.remember(route(), &first));
                cx.yield_now().await; // The poll ends.
                push(&second, &frame_of(2)).unwrap(); // Takes the first place.
                assert_eq!(remembered(), None, "a new poll");
                assert_eq!(stage_encode(&first, 1 << 20, encode_message(3_u64)), None);
            })
            .unwrap();
        runtime.shutdown();
    }

    /// A frame the size of the last that the grant cannot cover, or that
    /// would go in chunks, is not encoded at all: it would only be taken
    /// back off the stage and encoded again the general way.
    #[test]
    fn a_frame_that_cannot_stay_is_not_encoded_onto_the_stage() {
        let frame = frame_of(0).len();
        // Credit for two frames: the one pushed and one staged.
        let spec = ChannelSpec::new("test").credit_window(2 * frame as u32);
        let lane = Arc::new(Lane::new(&spec));
        lane.connected(1, 0);
        let runtime = Runtime::builder().shards(1).build().unwrap();
        runtime
            .block_on(move |cx: Context<()>| async move {
                let encodes = std::cell::Cell::new(0);
                let counted = |value| {
                    encodes.set(encodes.get() + 1);
                    encode_message(value)
                };
                push(&lane, &frame_of(1)).unwrap();
                assert_eq!(stage_encode(&lane, 1 << 20, counted(2_u64)), Some(frame));
                let skipped = |out: &mut Vec<u8>| {
                    encodes.set(encodes.get() + 1);
                    encode_message(3_u64)(out)
                };
                assert_eq!(stage_encode(&lane, 1 << 20, skipped), None, "no credit");
                assert_eq!(encodes.get(), 1);
                cx.yield_now().await;
            })
            .unwrap();
        runtime.shutdown();
    }

    /// A frame encoded straight onto the lane (its frames are large: here
    /// another shard's process pushed one) goes after what the process
    /// staged earlier in its poll, which is committed first.
    #[test]
    fn a_frame_encoded_onto_the_lane_goes_after_what_the_poll_staged() {
        let lane = Arc::new(Lane::new(&ChannelSpec::new("test")));
        lane.connected(1, 0);
        let large = |value: u8| {
            let mut frame = Vec::new();
            encode_message(vec![value; 2 * STAGED_FRAME_MAX])(&mut frame).unwrap();
            frame
        };
        let staging = lane.clone();
        let runtime = Runtime::builder().shards(1).build().unwrap();
        runtime
            .block_on(move |cx: Context<()>| async move {
                let lane = staging;
                push(&lane, &frame_of(1)).unwrap();
                assert!(stage_encode(&lane, 1 << 20, encode_message(2_u64)).is_some());
                lane.push(&large(3), false, None).unwrap();
                let mine = large(4);
                let encoded = push_encoded(&lane, 1 << 20, |out, _| {
                    out.extend_from_slice(&mine);
                    let header = FrameHeader::parse(&mine, u32::MAX).ok()?;
                    Some(header.length as usize)
                });
                assert_eq!(encoded, Encoded::Pushed(mine.len()));
                cx.yield_now().await;
            })
            .unwrap();
        runtime.shutdown();

        let mut task = TaskContext::from_waker(Waker::noop());
        let Poll::Ready(Some(batch)) = lane.poll_batch(&mut task) else {
            panic!("a batch is pending");
        };
        assert!(batch == [frame_of(1), large(3), frame_of(2), large(4)].concat());
    }
}
