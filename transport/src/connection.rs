//! The connection processes: one *dialer* per outbound lane, one *reader*
//! per accepted connection, and the *listener* that accepts them.
//!
//! Each TCP connection carries one lane in one direction: the dialer
//! writes the lane's frames and reads back credit and acknowledgements; the
//! reader (on the peer) reads frames, delivers them and writes credit and
//! acknowledgements. Two nodes that talk both ways hold one connection per
//! lane per direction. That costs a socket, and buys simplicity: no race
//! between two nodes dialling each other at once, and every connection has
//! one writer of data.
//!
//! They are ordinary processes, so they run under the shard's reduction
//! budget beside everything else, and a failure in one (an error from a
//! peer, a malformed frame) ends only that connection.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use foundation_sched::{coop, Context, NodeId, Pid, Sleep};
use rkyv::util::AlignedVec;

use crate::block::Block;
use crate::channel::ChannelId;
use crate::fault::Verdict;
use crate::frame::{
    self, FrameError, FrameHeader, FrameKind, FIRST_CHUNK, HEADER_LEN, LAST_CHUNK, PAYLOAD_ALIGN,
};
use crate::handshake::{
    self, Dialer, Established, HandshakeError, IDENTIFY_CHANNEL, MAX_HANDSHAKE_PAYLOAD,
};
use crate::inbound::{EndpointCache, Feedback, Received};
use crate::lane::Lane;
use crate::sys::{Bound, Listener, Reactor, ReceiveBuffers, Socket, Stream};
use crate::{ConnectionError, Inner, Peer};

/// Size of a reader's receive block, unless the channel's frames need more.
const BLOCK_BYTES: usize = 256 * 1024;

/// Read at least this much free room per receive.
const MIN_READ_ROOM: usize = 16 * 1024;

/// Frames' worth of consumed bytes below which a reader that found nothing
/// new grants nothing, unless its sender may be short of credit
/// ([`Reader::idle_grant`]). A grant at every such pass, as before, sent
/// twice as many credit frames as epoll's reader on io_uring, where each
/// read ends a pass: with 64 KiB messages, one per three, which the
/// sender, the slower side, had to read (`remote` 64 KiB on io_uring
/// 5.6 -> 5.9 and 6.3 GB/s in two runs, epoll unchanged). With small
/// frames a pass consumes far more than eight, so they are granted as
/// before.
const IDLE_GRANT_FRAMES: u64 = 8;

/// Most bytes one receive copies: a burst is read in slices, and the
/// reader yields to its shard once a slice has used up its budget.
const FILL_SLICE: usize = 256 * 1024;

/// Accepts connections and gives each to a reader process on this shard.
/// Every shard runs one, on its own descriptor of the same listening
/// socket, so connections spread over the shards as they arrive.
pub(crate) async fn listen(cx: Context<()>, inner: Arc<Inner>, listener: Bound) {
    let Some(reactor) = Reactor::current() else {
        tracing::error!("transport listener on a shard without an I/O reactor");
        return;
    };
    let listener: Listener = match reactor.listener(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!("transport listener: {error}");
            return;
        }
    };
    loop {
        let accepted = poll_fn(|task| listener.poll_accept(task)).await;
        if inner.is_closed() {
            return;
        }
        match accepted {
            Ok((socket, addr)) => {
                let inner = inner.clone();
                cx.spawn(move |cx: Context<()>| serve(cx, inner, socket, addr));
            }
            Err(error) => {
                tracing::warn!("accept failed: {error}");
                cx.sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Keeps one outbound lane connected: dials, handshakes, writes the lane's
/// frames until the connection fails, and dials again with backoff.
pub(crate) async fn dial(
    cx: Context<()>,
    inner: Arc<Inner>,
    peer: Arc<Peer>,
    channel: u16,
    lane_index: u16,
) {
    let lane = peer.lane(channel, lane_index).clone();
    let me = inner.identity.node;
    let partitioned = || inner.faults.partitioned(me, peer.node, ChannelId(channel));
    let mut backoff = inner.config.reconnect_min;
    while !inner.is_closed() && !peer.is_removed() {
        if partitioned() {
            // No connection while a fault rule cuts this way off.
            cx.sleep(backoff).await;
            backoff = (backoff * 2).min(inner.config.reconnect_max);
            continue;
        }
        match connect(&cx, &inner, peer.addr, Some(peer.node), channel, lane_index).await {
            Ok((stream, established)) => {
                backoff = inner.config.reconnect_min;
                let spec = &inner.channels[usize::from(channel)];
                stream.set_send_slice(spec.send_slice as usize);
                if let Some(bytes) = spec.unsent_low_water {
                    if let Err(error) = stream.set_unsent_low_water(bytes) {
                        tracing::debug!(channel = %spec.name, "unsent bytes not capped: {error}");
                    }
                }
                stream.set_background(spec.background);
                // A best-effort lane reuses a sent batch's buffer without
                // reading it; an acknowledged one keeps the frames.
                stream.set_sent_unread(spec.delivery == crate::Delivery::BestEffort);
                // The writer reads only credit and acknowledgements.
                stream.set_receive_buffers(ReceiveBuffers::Shared);
                lane.connected(established.incarnation, established.delivered);
                inner.counters.connections.increment();
                let error = write_lane(&lane, &stream, &partitioned).await;
                take_back_unsent(&lane, &stream).await;
                lane.disconnected();
                if !inner.is_closed() && !peer.is_removed() {
                    inner.connection_failed(Some(peer.node), peer.addr, error);
                }
            }
            Err(error) => inner.connection_failed(Some(peer.node), peer.addr, error),
        }
        cx.sleep(backoff).await;
        backoff = (backoff * 2).min(inner.config.reconnect_max);
    }
}

/// Asks whoever listens at `addr` who it is: a whole handshake (the cookie
/// proved both ways) on no lane, after which the connection closes.
pub(crate) async fn identify<M: Send + 'static>(
    cx: &Context<M>,
    inner: &Arc<Inner>,
    addr: SocketAddr,
) -> Result<Established, ConnectionError> {
    let (_stream, established) = connect(cx, inner, addr, None, IDENTIFY_CHANNEL, 0).await?;
    Ok(established)
}

/// Connects to `addr` and handshakes as the dialer, expecting node
/// `expected` (any node, if `None`); returns the stream and what the
/// handshake told of the peer (its name and id, its incarnation, how far it
/// delivered this lane).
async fn connect<M: Send + 'static>(
    cx: &Context<M>,
    inner: &Arc<Inner>,
    addr: SocketAddr,
    expected: Option<NodeId>,
    channel: u16,
    lane: u16,
) -> Result<(Stream, Established), ConnectionError> {
    let reactor = Reactor::current().ok_or(ConnectionError::NoReactor)?;
    let congestion = inner.config.congestion_control_for(addr);
    let stream = reactor
        .connect(addr, congestion)
        .map_err(ConnectionError::io)?;
    let handshake = async {
        poll_fn(|task| stream.poll_connected(task))
            .await
            .map_err(ConnectionError::io)?;
        let mut out = Vec::new();
        let mut dialer = Dialer::start(
            inner.identity.clone(),
            expected,
            channel,
            lane,
            inner.entropy.nonce(),
            &mut out,
        );
        send_all(&stream, &mut out).await?;
        let mut buffer = FrameBuffer::new(4096);
        loop {
            let frame = buffer.next_frame(&stream, MAX_HANDSHAKE_PAYLOAD).await?;
            let step = dialer.on_frame(buffer.frame(frame.clone()), &mut out);
            buffer.consume(frame.end);
            // Send the answer, a refusal included, before acting on the step.
            let sent = send_all(&stream, &mut out).await;
            if let Some(established) = step? {
                return Ok(established);
            }
            sent?;
        }
    };
    let established = within(cx, inner.config.handshake_timeout, handshake).await?;
    Ok((stream, established))
}

/// Writes the lane's batches and applies the credit and acknowledgements
/// that come back, until the connection fails, the lane closes or a fault
/// rule cuts it (`partitioned`, asked before each batch).
async fn write_lane(
    lane: &Lane,
    stream: &Stream,
    partitioned: &dyn Fn() -> bool,
) -> ConnectionError {
    let mut feedback = FrameBuffer::new(4096);
    poll_fn(|task| loop {
        let mut progress = false;
        if !stream.sending() && partitioned() {
            return Poll::Ready(ConnectionError::FaultInjected);
        }
        if stream.sending() {
            if let Poll::Ready((batch, result)) = stream.poll_sent(task) {
                lane.written(batch);
                if let Err(error) = result {
                    return Poll::Ready(ConnectionError::io(error));
                }
                progress = true;
            }
        } else {
            match lane.poll_batch(task) {
                Poll::Ready(Some(batch)) => {
                    stream.start_send(batch);
                    progress = true;
                }
                Poll::Ready(None) => return Poll::Ready(ConnectionError::Closed),
                Poll::Pending => {}
            }
        }
        match feedback.poll_fill(task, stream) {
            Poll::Ready(Ok(_)) => {
                progress = true;
                while let Some(frame) = feedback.complete_frame(64) {
                    let Framed { header, range } = match frame {
                        Ok(frame) => frame,
                        Err(error) => return Poll::Ready(ConnectionError::Frame(error)),
                    };
                    match (header.kind, read_counter(feedback.frame(range.clone()))) {
                        (FrameKind::Credit, Ok(consumed)) => lane.credit(consumed),
                        (FrameKind::Ack, Ok(delivered)) => lane.acknowledged(delivered),
                        (_, Err(error)) => return Poll::Ready(ConnectionError::Frame(error)),
                        (kind, _) => return Poll::Ready(ConnectionError::UnexpectedFrame(kind)),
                    }
                    feedback.consume(range.end);
                }
            }
            Poll::Ready(Err(error)) => return Poll::Ready(error),
            Poll::Pending => {}
        }
        // A stream charges the copying it does on this thread itself.
        if !progress || out_of_budget(task, 0) {
            return Poll::Pending;
        }
    })
    .await
}

/// Charges one round of a connection loop, `bytes` of it copied; when the
/// poll's budget is used up, arranges to run again after the shard's other
/// processes (so a busy connection does not hold its shard).
fn out_of_budget(task: &mut std::task::Context<'_>, bytes: usize) -> bool {
    let used_up = coop::charge(coop::reductions_for(bytes));
    if used_up {
        task.waker().wake_by_ref();
    }
    used_up
}

/// After the connection failed: a batch still being written comes back to
/// the lane, so that an acknowledged lane keeps it for the next connection
/// (it may or may not have reached the peer; the peer de-duplicates).
async fn take_back_unsent(lane: &Lane, stream: &Stream) {
    if stream.sending() {
        stream.shutdown();
        let (batch, _) = poll_fn(|task| stream.poll_sent(task)).await;
        lane.written(batch);
    }
}

/// Serves one accepted connection: the listener's handshake, then frames
/// until it closes.
async fn serve(cx: Context<()>, inner: Arc<Inner>, socket: Socket, addr: SocketAddr) {
    let Some(reactor) = Reactor::current() else {
        tracing::error!("transport reader on a shard without an I/O reactor");
        return;
    };
    let stream = match reactor.adopt(socket) {
        Ok(stream) => stream,
        Err(error) => return inner.connection_failed(None, addr, ConnectionError::io(error)),
    };
    inner.counters.accepted.increment();
    let accepted = within(&cx, inner.config.handshake_timeout, accept(&inner, &stream)).await;
    let (peer, mut reader) = match accepted {
        Ok(Some(accepted)) => accepted,
        // A dialer that only asked who we are, and now knows.
        Ok(None) => return,
        Err(error) => {
            if matches!(error, ConnectionError::Handshake(_)) {
                inner.counters.refused.increment();
            }
            return inner.connection_failed(None, addr, error);
        }
    };
    if inner
        .faults
        .partitioned(peer, inner.identity.node, ChannelId(reader.channel))
    {
        return; // Cut off by a fault rule: close at once.
    }
    let spec = &inner.channels[usize::from(reader.channel)];
    cx.set_priority(spec.process_priority());
    stream.set_receive_buffers(spec.receive_buffers);
    // Background both ways: the lane's bytes it receives in place, and
    // the credit frames it sends back.
    stream.set_background(spec.background);
    let error = reader.run(&cx, &inner, &stream).await;
    if !inner.is_closed() {
        inner.connection_failed(Some(peer), addr, error);
    }
}

/// The listener's side of the handshake: the dialer's node and the reader
/// of its lane, or `None` for a dialer that only identified this node.
async fn accept(
    inner: &Arc<Inner>,
    stream: &Stream,
) -> Result<Option<(NodeId, Reader)>, ConnectionError> {
    let mut listener = handshake::Listener::new(inner.identity.clone(), inner.entropy.nonce());
    let mut buffer = FrameBuffer::new(4096);
    let mut out = Vec::new();
    loop {
        let frame = buffer.next_frame(stream, MAX_HANDSHAKE_PAYLOAD).await?;
        let step = listener.on_frame(buffer.frame(frame.clone()), &mut out, |hello| {
            inner.inbound_lane(hello).delivered()
        });
        buffer.consume(frame.end);
        // Send the answer, a refusal included, before acting on the step.
        let sent = send_all(stream, &mut out).await;
        let Some(accepted) = step? else {
            sent?;
            continue;
        };
        sent?;
        if accepted.channel == IDENTIFY_CHANNEL {
            return Ok(None);
        }
        let lane = inner.inbound_lane(&accepted);
        let (generation, delivered) = lane.claim();
        let spec = &inner.channels[usize::from(accepted.channel)];
        let window = u64::from(spec.credit_window);
        let frame_max = frame::padded_len(spec.max_frame as usize) as u64;
        let threshold = (window / 4).min(window.saturating_sub(frame_max));
        let block_bytes = BLOCK_BYTES.max(2 * frame_max as usize);
        let mut reader = Reader {
            peer: accepted.peer,
            channel: accepted.channel,
            max_frame: spec.max_frame,
            max_message: spec.max_message,
            acknowledged: spec.delivery == crate::Delivery::Acknowledged,
            lane,
            generation,
            received: delivered,
            delivered,
            acked: delivered,
            feedback: Feedback::new(threshold, block_bytes),
            buffer: FrameBuffer::new(block_bytes),
            reassembly: std::collections::HashMap::new(),
            chunk_budget: window.saturating_sub(frame_max),
            chunk_held: 0,
            received_bytes: 0,
            last_frame: 0,
            sender_low_above: window.saturating_sub(frame_max),
            endpoints: EndpointCache::default(),
            deliveries: Vec::new(),
        };
        // Bytes after the handshake already belong to the lane.
        reader.buffer.take_from(&mut buffer);
        reader.received_bytes = reader.buffer.filled as u64;
        return Ok(Some((accepted.peer, reader)));
    }
}

/// The reading end of one connection.
struct Reader {
    /// The node at the other end.
    peer: NodeId,
    channel: u16,
    max_frame: u32,
    max_message: usize,
    acknowledged: bool,
    lane: Arc<crate::InboundLane>,
    generation: u64,
    /// Highest sequence number received (acknowledged channels).
    received: u64,
    /// Highest sequence number delivered: a message, or the last chunk of
    /// one. A message in chunks counts as delivered only once whole, so a
    /// reconnect in its middle sends all its chunks again.
    delivered: u64,
    /// Highest sequence number acknowledged to the sender.
    acked: u64,
    feedback: Arc<Feedback>,
    buffer: FrameBuffer,
    /// Messages arriving in chunks, by (source, destination): bytes so
    /// far and the frame bytes whose credit they hold.
    reassembly: std::collections::HashMap<(Pid, Pid), (AlignedVec<PAYLOAD_ALIGN>, u64)>,
    /// Most credit the partial messages in `reassembly` may hold together:
    /// the window less one frame, so the sender can always send the next
    /// chunk and a message larger than the window still completes.
    chunk_budget: u64,
    /// Credit the partial messages hold now.
    chunk_held: u64,
    /// Bytes read from the stream: once nothing is on the way, at least
    /// what the sender counts as in flight.
    received_bytes: u64,
    /// Bytes of the last frame delivered.
    last_frame: u64,
    /// Bytes received and not granted above which the sender may lack
    /// credit for its next frame: the window less one frame.
    sender_low_above: u64,
    endpoints: EndpointCache,
    /// The messages of the batch being delivered, in arrival order.
    deliveries: Vec<Received>,
}

impl Reader {
    async fn run(
        &mut self,
        cx: &Context<()>,
        inner: &Arc<Inner>,
        stream: &Stream,
    ) -> ConnectionError {
        let mut out: Vec<u8> = Vec::new();
        let me = inner.identity.node;
        // While a delay rule holds back what was received, this sleep runs
        // and nothing more is read.
        let mut held: Option<Pin<Box<Sleep<'_, ()>>>> = None;
        poll_fn(|task| loop {
            if !self.lane.owned_by(self.generation, task.waker()) {
                return Poll::Ready(ConnectionError::Superseded);
            }
            let mut progress = false;
            // Credit and acknowledgements back to the sender.
            if stream.sending() {
                if let Poll::Ready((batch, result)) = stream.poll_sent(task) {
                    out = batch;
                    out.clear();
                    if let Err(error) = result {
                        return Poll::Ready(ConnectionError::io(error));
                    }
                    progress = true;
                }
            }
            if !stream.sending() {
                if let Some(consumed) = self
                    .feedback
                    .due(task.waker())
                    .or_else(|| (!progress).then(|| self.idle_grant()).flatten())
                {
                    write_counter(&mut out, FrameKind::Credit, self.channel, consumed);
                    self.feedback.granted(consumed);
                }
                if self.delivered > self.acked {
                    write_counter(&mut out, FrameKind::Ack, self.channel, self.delivered);
                    self.acked = self.delivered;
                }
                if !out.is_empty() {
                    stream.start_send(std::mem::take(&mut out));
                    progress = true;
                }
            }
            let mut received = 0;
            let mut deliver = false;
            if let Some(hold) = held.as_mut() {
                if hold.as_mut().poll(task).is_ready() {
                    held = None;
                    deliver = true;
                }
            } else {
                match self.buffer.poll_fill(task, stream) {
                    Poll::Ready(Ok(bytes)) => {
                        progress = true;
                        received = bytes;
                        self.received_bytes += bytes as u64;
                        let channel = ChannelId(self.channel);
                        match inner.faults.delay(self.peer, me, channel) {
                            Some(delay) => held = Some(Box::pin(cx.sleep(delay))),
                            None => deliver = true,
                        }
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(error),
                    Poll::Pending => {}
                }
            }
            if deliver {
                progress = true;
                if let Err(error) = self.deliver_frames(inner) {
                    return Poll::Ready(error);
                }
            }
            if !progress || out_of_budget(task, received) {
                return Poll::Pending;
            }
        })
        .await
    }

    /// What to grant when a pass of the reader found nothing new, below
    /// the threshold: what was consumed, if that is [`IDLE_GRANT_FRAMES`]
    /// frames' worth or the sender may be short of credit
    /// ([`Reader::sender_low`]). The first keeps the grants of small
    /// frames coming at the pace they are consumed, which the sender
    /// needs while part of its window is still on the way: granting only
    /// when the sender may be short cost 1 KiB messages 5 %.
    fn idle_grant(&self) -> Option<u64> {
        let consumed = self.feedback.ungranted()?;
        let worth = self.feedback.beyond_granted(consumed) >= IDLE_GRANT_FRAMES * self.last_frame;
        (worth || self.sender_low()).then_some(consumed)
    }

    /// Whether the sender may be out of credit for its next frame: more
    /// than the window less one frame received and not granted. Once all
    /// it sent has arrived, it has room for any frame unless that holds,
    /// so a small window is not stuck below the threshold.
    fn sender_low(&self) -> bool {
        self.feedback.beyond_granted(self.received_bytes) > self.sender_low_above
    }

    /// Delivers every complete frame in the buffer, checking each header
    /// as it goes: one pass over the frames, which a run of small messages
    /// feels.
    fn deliver_frames(&mut self, inner: &Inner) -> Result<(), ConnectionError> {
        let start = self.buffer.start;
        if self
            .buffer
            .complete_frame_at(start, self.max_frame)
            .is_none()
        {
            return Ok(());
        }
        let mut deliveries = std::mem::take(&mut self.deliveries);
        deliveries.clear();
        let mut released = 0;
        let mut held = 0;
        let mut end = start;
        let mut last_frame = 0;
        // The lane's state is locked while this batch is delivered, so a
        // newer connection of the same lane cannot read a stale
        // `delivered` in between.
        let inbound = self.lane.clone();
        let mut lane = inbound.lock();
        if lane.generation() != self.generation {
            return Err(ConnectionError::Superseded);
        }
        // A fault rule may cut the connection at a message: the ones
        // before it are delivered, it and the rest are not.
        let mut cut = false;
        while let Some(frame) = self.buffer.complete_frame_at(end, self.max_frame) {
            let Framed { header, range } = frame.map_err(ConnectionError::Frame)?;
            end = range.end;
            let len = range.len();
            last_frame = len;
            // Where the payload will be in the frames taken out below.
            let at = range.start - start + HEADER_LEN;
            let payload = at..at + header.length as usize;
            if header.channel != self.channel {
                return Err(ConnectionError::WrongChannel(header.channel));
            }
            if header.source.node() != self.peer {
                // A node speaks only for its own processes.
                return Err(ConnectionError::Impersonation {
                    peer: self.peer,
                    claimed: header.source.node(),
                });
            }
            if self.acknowledged {
                if header.sequence <= self.received {
                    released += len as u64; // Sent again after a reconnect.
                    continue;
                }
                if header.sequence != self.received + 1 {
                    return Err(ConnectionError::SequenceGap {
                        expected: self.received + 1,
                        got: header.sequence,
                    });
                }
                self.received = header.sequence;
            }
            match header.kind {
                FrameKind::Message => {
                    let message = Received {
                        header,
                        own: None,
                        payload,
                    };
                    match self.interpose(inner, message, &mut deliveries) {
                        Interposed::Delivered => held += len as u64,
                        Interposed::Lost => released += len as u64,
                        Interposed::Cut => {
                            cut = true;
                            break;
                        }
                    }
                }
                FrameKind::Chunk => {
                    let key = (header.source, header.destination);
                    if header.flags & FIRST_CHUNK != 0 {
                        // A message its sender gave up on (it ended
                        // mid-message) gives way to the next one.
                        if let Some((_, abandoned)) = self.reassembly.remove(&key) {
                            self.chunk_held -= abandoned;
                            released += abandoned;
                        }
                        self.reassembly.insert(key, Default::default());
                    }
                    let Some((message, held_credit)) = self.reassembly.get_mut(&key) else {
                        // Its first chunk never came: nothing to add to.
                        released += len as u64;
                        continue;
                    };
                    let from = range.start + HEADER_LEN;
                    message.extend_from_slice(self.buffer.frame(from..from + payload.len()));
                    if message.len() > self.max_message {
                        return Err(ConnectionError::MessageTooLarge(message.len()));
                    }
                    // The chunk's bytes are copied out, so its credit may
                    // go back now; it is held (until the whole message is
                    // dropped) only while the budget allows.
                    if self.chunk_held + len as u64 <= self.chunk_budget {
                        *held_credit += len as u64;
                        self.chunk_held += len as u64;
                    } else {
                        released += len as u64;
                    }
                    if header.flags & LAST_CHUNK != 0 {
                        let (message, held_credit) =
                            self.reassembly.remove(&key).unwrap_or_default();
                        self.chunk_held -= held_credit;
                        let len = message.len();
                        let message = Received {
                            header,
                            own: Some(Block::new(message, held_credit, self.feedback.clone())),
                            payload: 0..len,
                        };
                        if self.interpose(inner, message, &mut deliveries) == Interposed::Cut {
                            cut = true;
                            break;
                        }
                    }
                }
                kind => return Err(ConnectionError::UnexpectedFrame(kind)),
            }
        }
        self.last_frame = last_frame as u64;
        let bytes = self.buffer.split_off_frames(end, &self.feedback);
        // Delivered in arrival order, so a message that was reassembled
        // does not overtake the ones sent before it.
        let batch = Block::new(bytes, held, self.feedback.clone());
        self.endpoints.refresh(&inner.endpoints);
        let attempted = deliveries.len() as u64;
        let mut delivered = 0;
        let mut refused = Vec::new();
        // Consecutive messages for one process go to it together.
        for run in deliveries.chunk_by(|a, b| a.header.destination == b.header.destination) {
            let found = inner.deliver(&mut self.endpoints, &batch, run, &mut |error| {
                refused.push(error);
            });
            if found {
                delivered += run.len() as u64;
            }
        }
        // A well-framed message that is not what its process takes (a
        // caller's mistake, or a newer peer's message this build does not
        // know) is dropped and reported; closing the connection would only
        // bring it back, forever, on an acknowledged channel.
        delivered -= refused.len() as u64;
        for error in refused {
            inner.message_refused(self.peer, error);
        }
        deliveries.clear();
        inner.counters.delivered.add(delivered);
        inner.counters.undeliverable.add(attempted - delivered);
        self.deliveries = deliveries;
        if self.acknowledged {
            lane.set_delivered(self.delivered);
        }
        drop(lane);
        // Duplicates were dropped and chunks copied out: their bytes are
        // consumed already.
        self.feedback.consume(released);
        if cut {
            return Err(ConnectionError::FaultInjected);
        }
        Ok(())
    }

    /// Applies this node's fault rules to a whole message that arrived:
    /// queues it for delivery (twice, if a rule duplicates it), or loses
    /// it, or says the connection is to be cut before it.
    fn interpose(
        &mut self,
        inner: &Inner,
        message: Received,
        deliveries: &mut Vec<Received>,
    ) -> Interposed {
        let verdict = inner
            .faults
            .verdict(self.peer, inner.identity.node, ChannelId(self.channel));
        match verdict {
            // An acknowledged channel keeps its promise: what it loses is
            // sent again on the next connection, and it never doubles.
            Verdict::Partition => return Interposed::Cut,
            Verdict::Drop if self.acknowledged => return Interposed::Cut,
            Verdict::Drop => return Interposed::Lost,
            Verdict::Duplicate if !self.acknowledged => {
                deliveries.push(message.clone());
            }
            Verdict::Duplicate | Verdict::Deliver => {}
        }
        self.delivered = message.header.sequence;
        deliveries.push(message);
        Interposed::Delivered
    }
}

/// What the fault rules made of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interposed {
    Delivered,
    Lost,
    Cut,
}

/// A complete frame in a [`FrameBuffer`]: its checked header and where it
/// lies.
struct Framed {
    header: FrameHeader,
    range: std::ops::Range<usize>,
}

/// A receive buffer that yields whole frames, aligned.
struct FrameBuffer {
    bytes: AlignedVec<PAYLOAD_ALIGN>,
    /// Bytes received.
    filled: usize,
    /// Bytes at the front already consumed.
    start: usize,
    capacity: usize,
    /// The range a receive is pending for: `bytes` is lent to the stream.
    receiving: Option<std::ops::Range<usize>>,
}

impl FrameBuffer {
    fn new(capacity: usize) -> FrameBuffer {
        FrameBuffer {
            bytes: AlignedVec::new(),
            filled: 0,
            start: 0,
            capacity,
            receiving: None,
        }
    }

    /// Receives more bytes; `Ready(Ok(n))` when `n` arrived.
    fn poll_fill(
        &mut self,
        task: &mut std::task::Context<'_>,
        stream: &Stream,
    ) -> Poll<Result<usize, ConnectionError>> {
        let range = match self.receiving.clone() {
            // The buffer is lent to the stream: nothing may touch it.
            Some(range) => range,
            None => {
                if self.start > 0 && self.capacity - self.filled < MIN_READ_ROOM {
                    // Move the partial frame to the front.
                    self.bytes.copy_within(self.start..self.filled, 0);
                    self.filled -= self.start;
                    self.start = 0;
                }
                if self.bytes.len() < self.capacity {
                    self.bytes.resize(self.capacity, 0);
                }
                if self.filled == self.capacity {
                    return Poll::Ready(Err(ConnectionError::Frame(FrameError::Oversized {
                        length: self.capacity as u32,
                        max: self.capacity as u32,
                    })));
                }
                self.filled..self.capacity.min(self.filled + FILL_SLICE)
            }
        };
        let received = stream.poll_recv(task, &mut self.bytes, range.clone());
        self.receiving = received.is_pending().then_some(range);
        match received {
            Poll::Ready(Ok(0)) if self.filled > self.start => {
                // Closed in the middle of a frame.
                let got = self.filled - self.start;
                let needed = FrameHeader::parse(&self.bytes[self.start..self.filled], u32::MAX)
                    .map_or(HEADER_LEN, |header| header.frame_len());
                Poll::Ready(Err(ConnectionError::Frame(FrameError::Truncated {
                    needed,
                    got,
                })))
            }
            Poll::Ready(Ok(0)) => Poll::Ready(Err(ConnectionError::PeerClosed)),
            Poll::Ready(Ok(n)) => {
                self.filled += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(ConnectionError::io(error))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next complete frame, as a range of the buffer, waiting for it.
    async fn next_frame(
        &mut self,
        stream: &Stream,
        max_payload: u32,
    ) -> Result<std::ops::Range<usize>, ConnectionError> {
        loop {
            if let Some(frame) = self.complete_frame(max_payload) {
                return frame
                    .map(|frame| frame.range)
                    .map_err(ConnectionError::Frame);
            }
            poll_fn(|task| self.poll_fill(task, stream)).await?;
        }
    }

    /// The complete frame at the front, if there is one; an error if the
    /// header is bad.
    fn complete_frame(&self, max_payload: u32) -> Option<Result<Framed, FrameError>> {
        self.complete_frame_at(self.start, max_payload)
    }

    fn complete_frame_at(&self, at: usize, max_payload: u32) -> Option<Result<Framed, FrameError>> {
        let at = at.max(self.start);
        let available = &self.bytes[at..self.filled];
        if available.len() < HEADER_LEN {
            return None;
        }
        match FrameHeader::parse(available, max_payload) {
            Err(error) => Some(Err(error)),
            Ok(header) if header.frame_len() <= available.len() => Some(Ok(Framed {
                header,
                range: at..at + header.frame_len(),
            })),
            Ok(header) if header.frame_len() > self.capacity => Some(Err(FrameError::Oversized {
                length: header.length,
                max: max_payload,
            })),
            Ok(_) => None,
        }
    }

    fn frame(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.bytes[range]
    }

    fn consume(&mut self, end: usize) {
        self.start = end;
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        }
    }

    /// Takes the complete frames `[start, end)` out as their own aligned
    /// buffer, keeping the rest. A large run takes the buffer itself (no
    /// copy; the frames are at its front, the bytes after them are not
    /// theirs) and continues in a block buffer from `blocks`; a small run
    /// is copied, so a few small messages never pin a whole block.
    fn split_off_frames(&mut self, end: usize, blocks: &Feedback) -> AlignedVec<PAYLOAD_ALIGN> {
        let frames = end - self.start;
        let taken;
        if self.start == 0 && frames >= self.capacity / 4 && self.bytes.len() == self.capacity {
            let mut rest = blocks.block_buffer();
            let tail = self.filled - end;
            rest[..tail].copy_from_slice(&self.bytes[end..self.filled]);
            self.filled = tail;
            taken = std::mem::replace(&mut self.bytes, rest);
        } else {
            let mut copy = AlignedVec::with_capacity(frames);
            copy.extend_from_slice(&self.bytes[self.start..end]);
            taken = copy;
            self.start = end;
        }
        self.consume(self.start);
        taken
    }

    /// Takes over what `other` received beyond its consumed frames.
    fn take_from(&mut self, other: &mut FrameBuffer) {
        self.bytes.clear();
        self.bytes
            .extend_from_slice(&other.bytes[other.start..other.filled]);
        self.filled = other.filled - other.start;
        self.start = 0;
    }
}

/// Writes all of `out` and clears it.
async fn send_all(stream: &Stream, out: &mut Vec<u8>) -> Result<(), ConnectionError> {
    if out.is_empty() {
        return Ok(());
    }
    stream.start_send(std::mem::take(out));
    let (mut buffer, result) = poll_fn(|task| stream.poll_sent(task)).await;
    buffer.clear();
    *out = buffer;
    result.map_err(ConnectionError::io)
}

/// Runs `future` for at most `timeout`.
async fn within<M: Send + 'static, T>(
    cx: &Context<M>,
    timeout: Duration,
    future: impl Future<Output = Result<T, ConnectionError>>,
) -> Result<T, ConnectionError> {
    let mut future = pin!(future);
    let mut sleep = pin!(cx.sleep(timeout));
    poll_fn(|task| {
        if let Poll::Ready(result) = future.as_mut().poll(task) {
            return Poll::Ready(result);
        }
        if sleep.as_mut().poll(task).is_ready() {
            return Poll::Ready(Err(ConnectionError::TimedOut));
        }
        Poll::Pending
    })
    .await
}

/// Appends a credit or acknowledgement frame carrying `value`.
fn write_counter(out: &mut Vec<u8>, kind: FrameKind, channel: u16, value: u64) {
    let header = FrameHeader {
        flags: 0,
        channel,
        kind,
        length: 0,
        source: Pid::from_bits(0),
        destination: Pid::from_bits(0),
        trace_id: 0,
        sequence: 0,
    };
    frame::encode(header, &value, out).expect("a u64 encodes");
}

/// Reads the value of a credit or acknowledgement frame.
fn read_counter(bytes: &[u8]) -> Result<u64, FrameError> {
    let (frame, _) = frame::Frame::<rkyv::Archived<u64>>::parse(bytes, 64)?;
    Ok(frame.payload.to_native())
}

impl ConnectionError {
    pub(crate) fn io(error: io::Error) -> ConnectionError {
        ConnectionError::Io(error.kind(), error.to_string())
    }
}

impl From<HandshakeError> for ConnectionError {
    fn from(error: HandshakeError) -> ConnectionError {
        ConnectionError::Handshake(error)
    }
}
