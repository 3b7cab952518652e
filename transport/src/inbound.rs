//! The receiving side: receive blocks, in-place messages and endpoints.
//!
//! A connection reads into a *block* ([`crate::block`]), an aligned buffer
//! that becomes immutable and shared once the frames in it are parsed. Each
//! message delivered from it is a [`Remote<T>`]: a reference to the block
//! and the payload's place in it, through which the receiving process reads
//! the archived value in place — no copy, no deserialization. When the last
//! message of a block is dropped the block is freed, and its bytes are
//! reported to the connection as *consumed*: that is the credit the sender
//! is granted back. A process that stops reading therefore stops its
//! senders, and the memory held for it stays within the channel's window.
//!
//! Payloads are validated (`rkyv::access`, bytecheck) once, when the frame
//! is delivered to an [`Endpoint`] that knows its type. A payload that is
//! not a valid `T` is dropped and reported
//! ([`ConnectionError::MessageRefused`](crate::ConnectionError)); the
//! connection stays, since its frames were sound and, on an acknowledged
//! channel, closing it would bring the same message back forever.

#![allow(unsafe_code)] // One block: re-reading a validated archive in place.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::Waker;

use foundation_sched::{Addr, Handle, Pid};
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rustc_hash::FxHashMap;

use crate::block::{Block, Shares};
use crate::channel::ChannelId;
use crate::frame::{FrameError, FrameHeader, Wire, PAYLOAD_ALIGN};

/// A message that arrived from another node, read in place from the
/// receive buffer it landed in. Dereferences to the archived `T`.
///
/// ```no_run
/// # use foundation_transport::Remote;
/// # fn show(message: Remote<String>) {
/// let text: &str = message.as_str(); // rkyv's ArchivedString, in place
/// println!("{text} from {}", message.source());
/// # }
/// ```
pub struct Remote<T: Wire> {
    block: Block,
    // Only what a receiver asks of the header: a `Remote` is moved
    // through the mailbox, so every byte of it is copied a few times.
    source: Pid,
    trace_id: u64,
    /// Where the payload lies in the block.
    start: u32,
    len: u32,
    channel: u16,
    message: PhantomData<fn() -> T>,
}

impl<T: Wire> Remote<T> {
    /// The sending process.
    pub fn source(&self) -> Pid {
        self.source
    }

    /// The channel it came on.
    pub fn channel(&self) -> ChannelId {
        ChannelId(self.channel)
    }

    /// The sender's trace id (zero when untraced).
    pub fn trace_id(&self) -> u64 {
        self.trace_id
    }

    /// The archived bytes, for forwarding or storing as they are.
    pub fn bytes(&self) -> &[u8] {
        let start = self.start as usize;
        &self.block.bytes()[start..start + self.len as usize]
    }

    /// Deserializes an owned `T`.
    pub fn to_owned_value(&self) -> T
    where
        T::Archived: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    {
        rkyv::deserialize::<T, rancor::Error>(&**self).expect("a validated archive deserializes")
    }
}

impl<T: Wire> std::ops::Deref for Remote<T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        let bytes = self.bytes();
        // SAFETY: `Remote` is only built by `TypedEndpoint::deliver`, after
        // `rkyv::access::<T::Archived>` accepted exactly these bytes. The
        // block is immutable once shared (its only owner wrote it before
        // wrapping it in an `Arc`), so they are the same bytes at the same
        // (16-byte aligned) address.
        unsafe { rkyv::access_unchecked::<T::Archived>(bytes) }
    }
}

impl<T: Wire> fmt::Debug for Remote<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("source", &self.source)
            .field("channel", &self.channel)
            .field("bytes", &self.len)
            .finish()
    }
}

/// Spare receive buffers a connection keeps for reuse.
const MAX_SPARE_BLOCKS: usize = 4;

/// What a connection's reader owes its sender: credit for consumed bytes.
/// Blocks dropped on any shard add to it; the reader is woken once enough
/// has accumulated to be worth a credit frame.
///
/// It also takes back the receive buffers of dropped blocks, for the
/// reader to fill again: a fresh buffer of a few hundred kilobytes comes
/// from `mmap` and costs a page fault per page on first touch, which over
/// loopback took a quarter of the receiving shard's time.
pub(crate) struct Feedback {
    consumed: AtomicU64,
    granted: AtomicU64,
    threshold: u64,
    reader: Mutex<Option<Waker>>,
    /// Length of the buffers worth keeping: the reader's block size.
    block_bytes: usize,
    spare: Mutex<Vec<AlignedVec<PAYLOAD_ALIGN>>>,
}

impl Feedback {
    pub(crate) fn new(threshold: u64, block_bytes: usize) -> Arc<Feedback> {
        Arc::new(Feedback {
            consumed: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            threshold: threshold.max(1),
            reader: Mutex::new(None),
            block_bytes,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// A buffer of the block size, full length, contents unspecified.
    pub(crate) fn block_buffer(&self) -> AlignedVec<PAYLOAD_ALIGN> {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        spare.unwrap_or_else(|| {
            let mut bytes = AlignedVec::with_capacity(self.block_bytes);
            bytes.resize(self.block_bytes, 0);
            bytes
        })
    }

    /// Keeps `bytes` for [`Feedback::block_buffer`] if it is a block
    /// buffer and there is room.
    pub(crate) fn recycle(&self, bytes: AlignedVec<PAYLOAD_ALIGN>) {
        if bytes.len() != self.block_bytes {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < MAX_SPARE_BLOCKS {
            spare.push(bytes);
        }
    }

    /// Bytes consumed on this connection so far.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Acquire)
    }

    pub(crate) fn consume(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let consumed = self.consumed.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if consumed - self.granted.load(Ordering::Acquire) >= self.threshold {
            let reader = self
                .reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(reader) = reader {
                reader.wake();
            }
        }
    }

    /// Whether enough is consumed to grant; if not, registers `waker`.
    pub(crate) fn due(&self, waker: &Waker) -> Option<u64> {
        *self.reader.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
        let consumed = self.consumed();
        (consumed - self.granted.load(Ordering::Acquire) >= self.threshold).then_some(consumed)
    }

    /// Consumed bytes not yet granted, if any.
    pub(crate) fn ungranted(&self) -> Option<u64> {
        let consumed = self.consumed();
        (consumed > self.granted.load(Ordering::Acquire)).then_some(consumed)
    }

    /// Of `bytes` counted on this connection, those beyond what was
    /// granted.
    pub(crate) fn beyond_granted(&self, bytes: u64) -> u64 {
        bytes.saturating_sub(self.granted.load(Ordering::Acquire))
    }

    pub(crate) fn granted(&self, consumed: u64) {
        self.granted.fetch_max(consumed, Ordering::AcqRel);
    }
}

/// A received message to deliver: its frame's header and where its
/// payload lies, in the batch of frames it came in or, reassembled from
/// chunks, in a block of its own.
#[derive(Clone)]
pub(crate) struct Received {
    pub(crate) header: FrameHeader,
    pub(crate) own: Option<Block>,
    pub(crate) payload: Range<usize>,
}

impl Received {
    /// Makes the message a [`Remote<T>`], if its payload is a valid `T`,
    /// with a reference from `batch` unless it has its own block.
    ///
    /// Inlined into the delivery loop, with nothing but the verdict coming
    /// back from the validation: a `Remote` returned through memory was
    /// read back at once, in wider loads than its fields were written
    /// with, and each such read waited for the stores to reach the cache
    /// (a tenth of a receiving shard's time at 64-byte messages).
    #[inline(always)]
    fn remote<T: Wire>(&self, batch: &mut Shares<'_>) -> Result<Remote<T>, FrameError> {
        let block = self.own.as_ref().unwrap_or(batch.block());
        validate::<T>(block, self.payload.clone())?;
        // A block (a batch of frames, or a message reassembled from chunks
        // within the channel's maximum message) is far below 4 GiB.
        let (Ok(start), Ok(len)) = (
            u32::try_from(self.payload.start),
            u32::try_from(self.payload.len()),
        ) else {
            return Err(FrameError::Oversized {
                length: u32::MAX,
                max: u32::MAX,
            });
        };
        Ok(Remote {
            block: match &self.own {
                Some(own) => own.clone(),
                None => batch.take(),
            },
            source: self.header.source,
            trace_id: self.header.trace_id,
            start,
            len,
            channel: self.header.channel,
            message: PhantomData,
        })
    }
}

/// Where frames for a local process go: validates the payload as the
/// process's message type and delivers it.
pub(crate) trait Endpoint: Send + Sync {
    /// The process delivered to.
    fn pid(&self) -> Pid;

    /// Delivers `run`, messages for this endpoint in order whose payloads
    /// lie in `batch` unless they have their own block. A payload that is
    /// not the process's message type is left out and its error handed to
    /// `refused`.
    fn deliver(
        &self,
        handle: &Handle,
        batch: &Block,
        run: &[Received],
        refused: &mut dyn FnMut(FrameError),
    );
}

struct TypedEndpoint<T: Wire> {
    addr: Addr<Remote<T>>,
}

impl<T: Wire + 'static> Endpoint for TypedEndpoint<T> {
    fn pid(&self) -> Pid {
        self.addr.pid()
    }

    fn deliver(
        &self,
        handle: &Handle,
        batch: &Block,
        run: &[Received],
        refused: &mut dyn FnMut(FrameError),
    ) {
        // Into the mailbox together: the process is looked up and woken
        // once per run rather than per message, and the run's references
        // to the batch are taken at once.
        let mut shares = batch.share(run.len());
        let remotes = run
            .iter()
            .filter_map(|delivery| delivery.remote(&mut shares).map_err(&mut *refused).ok());
        handle.send_all(&self.addr, remotes);
    }
}

/// Validates the payload at `payload` of `block` as a `T`. Out of line,
/// so that the delivery loop around it stays small; what it returns is
/// read back as it was written (the verdict's tag).
#[inline(never)]
fn validate<T: Wire>(block: &Block, payload: Range<usize>) -> Result<(), FrameError> {
    rkyv::access::<T::Archived, rancor::Error>(&block.bytes()[payload])
        .map_err(|error| FrameError::InvalidPayload(error.to_string()))?;
    Ok(())
}

/// Frames for an alias that a function takes on the receiving thread, as
/// they are delivered ([`Transport::register_handler`](crate::Transport::register_handler)).
pub(crate) struct HandlerEndpoint<T: Wire, F> {
    pub(crate) alias: Pid,
    pub(crate) handler: F,
    pub(crate) message: PhantomData<fn(T)>,
}

impl<T, F> Endpoint for HandlerEndpoint<T, F>
where
    T: Wire + 'static,
    F: Fn(Remote<T>) + Send + Sync + 'static,
{
    fn pid(&self) -> Pid {
        self.alias
    }

    fn deliver(
        &self,
        _: &Handle,
        batch: &Block,
        run: &[Received],
        refused: &mut dyn FnMut(FrameError),
    ) {
        let mut shares = batch.share(run.len());
        for delivery in run {
            match delivery.remote(&mut shares) {
                Ok(remote) => (self.handler)(remote),
                Err(error) => refused(error),
            }
        }
    }
}

/// The processes of this node that receive remote messages, by pid.
#[derive(Default)]
pub(crate) struct Endpoints {
    by_pid: RwLock<HashMap<Pid, Arc<dyn Endpoint>>>,
    /// Changes with every insert and removal, so that readers know when
    /// their [`EndpointCache`] is stale.
    epoch: AtomicU64,
}

impl Endpoints {
    /// Delivers frames for `alias` to `addr`.
    pub(crate) fn insert_as<T: Wire + 'static>(&self, alias: Pid, addr: &Addr<Remote<T>>) {
        self.insert(alias, Arc::new(TypedEndpoint { addr: *addr }));
    }

    /// Delivers frames for `alias` to `endpoint`.
    pub(crate) fn insert(&self, alias: Pid, endpoint: Arc<dyn Endpoint>) {
        let mut by_pid = self.by_pid.write().unwrap_or_else(PoisonError::into_inner);
        by_pid.insert(alias, endpoint);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Removes `alias` if it still leads to process `pid`.
    pub(crate) fn remove_alias(&self, alias: Pid, pid: Pid) {
        let mut by_pid = self.by_pid.write().unwrap_or_else(PoisonError::into_inner);
        if by_pid
            .get(&alias)
            .is_some_and(|endpoint| endpoint.pid() == pid)
        {
            by_pid.remove(&alias);
            self.epoch.fetch_add(1, Ordering::Release);
        }
    }

    pub(crate) fn get(&self, pid: Pid) -> Option<Arc<dyn Endpoint>> {
        self.by_pid
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .cloned()
    }
}

/// A reader's own copy of the endpoints it delivered to, so that a frame
/// finds its process without the shared lock, a SipHash and a reference
/// count round trip. The whole copy is dropped when [`Endpoints`] changed
/// since it was taken ([`EndpointCache::refresh`], once per batch).
#[derive(Default)]
pub(crate) struct EndpointCache {
    epoch: u64,
    by_pid: FxHashMap<Pid, Arc<dyn Endpoint>>,
}

impl EndpointCache {
    /// Forgets everything if `endpoints` changed since the last refresh.
    pub(crate) fn refresh(&mut self, endpoints: &Endpoints) {
        let epoch = endpoints.epoch.load(Ordering::Acquire);
        if epoch != self.epoch {
            self.by_pid.clear();
            self.epoch = epoch;
        }
    }

    /// The endpoint of `pid`, if it is registered.
    pub(crate) fn get(&mut self, endpoints: &Endpoints, pid: Pid) -> Option<&Arc<dyn Endpoint>> {
        match self.by_pid.entry(pid) {
            Entry::Occupied(entry) => Some(entry.into_mut()),
            Entry::Vacant(entry) => Some(entry.insert(endpoints.get(pid)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_blocks_give_their_buffers_back_for_reuse() {
        const BLOCK: usize = 4096;
        let feedback = Feedback::new(1, BLOCK);
        let buffers: Vec<_> = (0..MAX_SPARE_BLOCKS + 2)
            .map(|_| feedback.block_buffer())
            .collect();
        assert!(buffers.iter().all(|buffer| buffer.len() == BLOCK));
        let addresses: Vec<_> = buffers.iter().map(|buffer| buffer.as_ptr()).collect();
        for buffer in buffers {
            drop(Block::new(buffer, 10, feedback.clone()));
        }
        // A reassembled message's buffer is not of the block size: not kept.
        let mut message = AlignedVec::new();
        message.extend_from_slice(&[1; 100]);
        drop(Block::new(message, 10, feedback.clone()));
        assert_eq!(feedback.consumed(), 10 * (MAX_SPARE_BLOCKS as u64 + 3));
        let spare = feedback.spare.lock().unwrap().len();
        assert_eq!(spare, MAX_SPARE_BLOCKS, "kept up to the limit");
        let reused = feedback.block_buffer();
        assert_eq!(reused.len(), BLOCK);
        assert!(
            addresses.contains(&reused.as_ptr()),
            "a kept buffer comes back"
        );
    }
}
