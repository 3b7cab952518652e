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
//!   lane will not grant more for, is refused like a push;
//! - when the poll ends ([`coop::at_poll_end`]) every stage is committed:
//!   its frames go to the lane in order, usually by handing over the staged
//!   buffer as the next batch (the connection took the previous one), and
//!   the unused part of the grant returns.
//!
//! Order per (sender, receiver, channel) holds because a process's frames
//! to a lane either all go through its stage during a poll or the stage is
//! committed before any other way to the lane is taken (a chunked
//! message, a send that must wait for credit). Outside a process (a plain
//! thread calling `try_send`) nothing is staged.

use std::cell::RefCell;
use std::sync::Arc;

use foundation_sched::coop;

use crate::lane::{Grant, Lane, Push};

/// Credit a stage asks for at once beyond what its next frame needs: 256
/// frames of a 64-byte message.
const GRANT: usize = 32 * 1024;

/// Emptied buffers kept for the next stages.
const SPARES: usize = 4;

/// Frames staged for one lane.
struct Stage {
    lane: Arc<Lane>,
    grant: Grant,
    frames: Vec<u8>,
}

/// This thread's stages for the running poll.
#[derive(Default)]
struct Stages {
    open: Vec<Stage>,
    spare: Vec<Vec<u8>>,
}

thread_local! {
    static STAGES: RefCell<Stages> = RefCell::new(Stages::default());
}

impl Stages {
    /// The open stage for `lane`, if there is one.
    fn find(&mut self, lane: &Arc<Lane>) -> Option<&mut Stage> {
        self.open
            .iter_mut()
            .find(|stage| Arc::ptr_eq(&stage.lane, lane))
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
            // The next frame to this lane in this poll is staged, if the
            // poll's end can commit it.
            if stages.open.is_empty() && !coop::at_poll_end(commit_all) {
                return Ok(());
            }
            let buffer = stages.spare.pop().unwrap_or_default();
            stages.open.push(Stage {
                lane: lane.clone(),
                grant: Grant::default(),
                frames: buffer,
            });
            return Ok(());
        };
        let staged = stage.frames.len() + frames.len();
        if staged <= stage.grant.bytes() || lane.extend_grant(&mut stage.grant, staged, GRANT) {
            stage.frames.extend_from_slice(frames);
            return Ok(());
        }
        // No room for these: what is staged goes first, then the lane
        // decides (and counts the sender among those waiting, if it waits).
        stage.commit();
        lane.push(frames, false, None).map(drop)
    })
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

/// Commits every stage: the end of the poll that opened them.
fn commit_all() {
    STAGES.with(|stages| {
        let mut stages = stages.borrow_mut();
        let Stages { open, spare } = &mut *stages;
        for mut stage in open.drain(..) {
            stage.commit();
            if spare.len() < SPARES {
                spare.push(stage.frames);
            }
        }
    });
}
