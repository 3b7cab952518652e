//! The io_uring backend: one ring per shard, completion-based.
//!
//! Where epoll says "this socket is ready, now make the syscall", io_uring
//! is handed the whole operation and says "done" later. That changes who
//! owns memory: a buffer the kernel writes into or reads from must stay put
//! until its completion arrives, whatever happened to the future that asked
//! for it. So every operation in flight, with the buffer it uses, belongs to
//! the shard's [`Reactor`], not to the [`Stream`] or the future:
//!
//! - **Operations** live in a table ([`Ops`]) whose key, with a generation,
//!   is the request's `user_data`; a completion whose key names no live
//!   operation (a freed slot, or a reused one with another generation) is
//!   recognised and ignored. An entry is freed on the operation's *last*
//!   completion: the one without `IORING_CQE_F_MORE`, and for a zero-copy
//!   send the notification that follows it.
//! - **Sources** (one per socket) hold what the handles see: received
//!   chunks, the finished send, the wakers. A dropped [`Stream`] or
//!   [`Listener`] marks its source closed, cancels its operations
//!   (`ASYNC_CANCEL` by descriptor) and leaves the socket to the source,
//!   which closes it once no request on it is left in the kernel. A
//!   zero-copy send may still await its notification then: its operation
//!   keeps the buffer until it arrives, but not the socket, whose unsent
//!   data is what the notification may be waiting for.
//! - **Receive** has two modes ([`ReceiveBuffers`]). *In place*: each
//!   [`Stream::poll_recv`] that finds nothing received lends
//!   the caller's buffer to a one-shot `RECV` into the asked range; the
//!   operation owns the buffer until its completion, and the next call
//!   hands it back with the bytes in it. *Shared*: one multishot `RECV`
//!   per stream, armed at its first `poll_recv`, reading into the shard's
//!   provided-buffer ring ([`buf_ring`]). Each completion queues (buffer
//!   id, length) on the stream; `poll_recv` copies out of the queue and
//!   gives each buffer back as soon as it is used up. When the ring runs
//!   dry the kernel ends the multishot with `ENOBUFS`: the stream waits in
//!   a list and is re-armed as soon as any buffer comes back. A stream
//!   that holds more than a quarter of the buffers (its reader is slow)
//!   has its receive cancelled until it drains, so one slow reader cannot
//!   starve the shard's other streams.
//!   A switch to in place cancels the multishot receive; what it received
//!   is read first. An *adaptive* stream starts in place and switches by
//!   itself: to shared when [`SMALL_READS_TO_SHARE`] reads in place in a
//!   row find less than an eighth of a buffer waiting, back in place when
//!   a multishot completion fills a whole buffer.
//! - **Send** is one request per stream at a time, for a slice of the
//!   owned buffer ([`Stream::set_send_slice`]); the next slice is submitted
//!   when the previous one's result arrives. The kernel makes a request's
//!   first attempt inside the submitting `io_uring_enter`, on the shard's
//!   thread, so the slice bounds how long that holds the shard. `SEND` below
//!   [`IoOptions::send_zc_threshold`] and `SEND_ZC` from it up; the buffer
//!   goes back to the stream once every slice's zero-copy notification is
//!   in. Those wait for the peer's acknowledgement, which a peer may delay
//!   by 40 ms, so the writer is done with its send as soon as the last
//!   slice's result is in: it gets a copy of its buffer, or an empty one if
//!   it does not read what it sent ([`Stream::set_sent_unread`], the
//!   best-effort lanes), while the operation keeps the buffer for the
//!   kernel. A notification may report that the kernel copied the data anyway
//!   (always over loopback, and on devices that cannot send from user
//!   pages): then zero-copy only costs pinning pages and waiting for
//!   notifications, so that stream sends with plain `SEND` from then on,
//!   as the kernel's `MSG_ZEROCOPY` guide advises. A kernel that rejects
//!   the usage report (before 6.2) gets plain sends too.
//!   A background stream's sends ([`Stream::set_background`]) go to
//!   the kernel's worker threads (`IOSQE_ASYNC`) while the shard has
//!   foreground traffic, and the shard puts those threads in the
//!   `SCHED_IDLE` class; so do its receives in place.
//! - **Connect and accept** wait with a one-shot `POLL_ADD`, then make the
//!   non-blocking syscall, as epoll does.
//! - **Submission** is batched: operations queue entries as processes poll,
//!   and the driver submits once per pass ([`Driver::poll`]) or when it
//!   parks ([`Driver::park`], one `io_uring_enter` that submits and waits
//!   with a timeout). A send that finds no other send queued is
//!   submitted (with the receives queued) and reaped at once instead: it
//!   would go alone anyway, its writer gets the buffer back within the
//!   same poll, and an echo's receive and answer share one call (completions
//!   reaped that way keep the next wait from sleeping until their wakers
//!   have run). A full submission queue is submitted on the spot; if
//!   the kernel will not take entries even then, they wait in a backlog, in
//!   order. A full completion queue is no loss: the kernel keeps the
//!   overflow (`IORING_FEAT_NODROP`) and we keep reaping.
//! - **Unpark** writes an eventfd on which the ring always has a `READ`
//!   outstanding, so a wake-up from another thread completes that read and
//!   ends the shard's wait.
//! - **Teardown**: when the reactor goes (the shard thread ends, after its
//!   processes), everything still in flight is cancelled and waited for; if
//!   the kernel does not finish in time, the memory it might still use is
//!   leaked rather than freed.
//!
//! The reactor is shard-local (a `RefCell` in a thread-local), like the
//! epoll one.

// Pushing a submission entry hands the kernel raw pointers to memory it
// will use after the call returns; the provided-buffer ring shares memory
// with the kernel. Each unsafe block says which invariant keeps that sound.
#![allow(unsafe_code)]

mod buf_ring;

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use foundation_sched::driver::{Driver, Unpark};
use foundation_sched::time::{Clock, Instant, SystemClock};
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use self::buf_ring::BufRing;
use super::{IoOptions, Reactor as AnyReactor, ReceiveBuffers, RecvBuf};
use crate::channel::{DEFAULT_SEND_SLICE, MAX_SEND_SLICE};

/// The buffer group of the shard's provided-buffer ring.
const GROUP: u16 = 0;

/// `user_data` of the eventfd read.
const WAKE: u64 = u64::MAX;

/// `user_data` of requests whose completion needs no handling (cancels).
const UNTRACKED: u64 = u64::MAX - 1;

/// The source of an operation whose source is gone: a zero-copy send
/// waiting for its notification after its stream closed.
const DETACHED: u32 = u32::MAX;

/// Milliseconds the SQPOLL thread spins without work before it sleeps.
const SQPOLL_IDLE_MS: u32 = 100;

/// `IORING_SEND_ZC_REPORT_USAGE` (a `SEND_ZC` flag, Linux 6.2): the
/// notification says whether the kernel had to copy the data after all.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

/// `IORING_NOTIF_USAGE_ZC_COPIED`: in a notification's result, the kernel
/// copied the data instead of sending it from our pages.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// How long after the last foreground completion a background stream's
/// requests still go to the kernel's worker threads: a lone urgent message
/// after a quiet spell waits behind at most one inline slice, and the
/// next ones find the way clear.
const FOREGROUND_RECENT: Duration = Duration::from_millis(10);

/// How often, while background requests go out, the shard looks for new
/// io_uring worker threads to put in the idle class: rarely, as the look
/// (a read of `/proc/self/task`) takes tens of microseconds of the shard,
/// and the kernel keeps a busy worker.
const WORKER_SCAN: Duration = Duration::from_millis(100);

/// How soon the shard looks again after finding no worker: soon, as the
/// first background request starts one, but not on every request, which
/// a kernel that names its workers otherwise would make pay for a look.
const WORKER_RETRY: Duration = Duration::from_millis(1);

/// Reads in place in a row that find little waiting before an adaptive
/// stream goes back to shared buffers. One is not enough: a stream of
/// large messages leaves a short segment at the end of each of the
/// sender's writes, and when a read finds only that one, a switch on it
/// sent the next several hundred kilobytes through shared buffers (one
/// more copy each) until a full one switched back. With 64 KiB messages
/// that happened about 2,000 times a second, and the stream ran 5 %
/// slower than one kept in place (`remote`, 6.15 against 6.50 GB/s).
pub(crate) const SMALL_READS_TO_SHARE: u8 = 4;

/// The longest single wait in the kernel.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Completions copied out of the ring at a time.
const CQE_BATCH: usize = 256;

/// A dying reactor waits for the kernel to finish cancelled requests in
/// waits of up to this long...
const TEARDOWN_WAIT: Duration = Duration::from_millis(50);

/// ...and once this many of them in a row brought no completion of an
/// operation (two seconds), leaks their memory instead.
const TEARDOWN_ROUNDS: u32 = 40;

/// Checks that io_uring can be set up here with `options`: a ring of that
/// size (and SQPOLL if asked), the opcodes this backend uses, the features
/// it relies on, and a provided-buffer ring of `options.recv_buffers`.
pub(crate) fn probe(options: &IoOptions) -> io::Result<()> {
    let ring = build_ring(options)?;
    check_support(&ring)?;
    // Mapping the buffers is cheap: no page is touched but the ring's own.
    let bufs = BufRing::new(options.recv_buffers, options.recv_buffer_size)?;
    // SAFETY: no request is ever submitted on this ring, so the kernel never
    // selects one of the buffers, whenever `bufs` drops.
    unsafe { bufs.register(&ring.submitter(), GROUP)? };
    ring.submitter().unregister_buf_ring(GROUP)?;
    Ok(())
}

/// A shard driver that waits in `io_uring_enter`.
pub(crate) struct UringDriver {
    /// The ring and its state until [`Driver::enter`] makes them the
    /// shard's reactor.
    state: Option<State>,
    unpark: Arc<EventFd>,
}

impl UringDriver {
    /// A driver with its own ring, provided-buffer ring and eventfd. All of
    /// it is set up here, on the building thread, so that a failure is
    /// reported while the runtime can still choose epoll for this shard.
    pub(crate) fn new(options: &IoOptions) -> io::Result<UringDriver> {
        let unpark = Arc::new(EventFd::new()?);
        let state = State::new(options, unpark.clone())?;
        Ok(UringDriver {
            state: Some(state),
            unpark,
        })
    }
}

impl Driver for UringDriver {
    fn enter(&mut self) {
        if let Some(mut state) = self.state.take() {
            state.arm_wake();
            super::enter(AnyReactor::Uring(Reactor {
                state: Box::new(RefCell::new(state)),
            }));
        }
    }

    fn poll(&mut self) -> bool {
        super::with_reactor(|reactor| match reactor {
            AnyReactor::Uring(reactor) => reactor.turn(Wait::No),
            _ => false,
        })
        .unwrap_or(false)
    }

    fn park(&mut self, timeout: Option<Duration>) {
        super::with_reactor(|reactor| match reactor {
            AnyReactor::Uring(reactor) => reactor.turn(Wait::For(timeout)),
            _ => false,
        });
    }

    fn unparker(&self) -> Arc<dyn Unpark> {
        self.unpark.clone()
    }
}

/// The eventfd other threads write to wake the shard.
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> io::Result<EventFd> {
        // Blocking on purpose: io_uring completes a read of a non-blocking
        // descriptor with EAGAIN instead of waiting for it.
        // SAFETY: plain syscall with no pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just opened and own alone.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl Unpark for EventFd {
    fn unpark(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to a descriptor owned by
        // `self`. A failure (the counter is full) means a wake-up is
        // already pending: nothing is lost.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                std::ptr::addr_of!(one).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

/// A shard's ring and everything in flight on it.
pub(crate) struct Reactor {
    /// Boxed: the ring's handles make `State` large, and the shard's
    /// reactor is an enum of backends.
    state: Box<RefCell<State>>,
}

/// How long [`Reactor::turn`] may wait.
#[derive(Clone, Copy)]
enum Wait {
    No,
    For(Option<Duration>),
}

impl Reactor {
    /// Submits what is queued, waits as `wait` says for a completion, and
    /// handles every completion there is, waking the tasks they concern.
    /// Returns whether it woke any.
    fn turn(&self, wait: Wait) -> bool {
        let mut wakers = {
            let mut state = self.state.borrow_mut();
            match wait {
                // Completions reaped since the last turn (by an eager
                // send) have wakers waiting: do not sleep on top of them.
                Wait::For(timeout) if state.wakers.is_empty() => state.submit_and_wait(timeout),
                Wait::No | Wait::For(_) => state.submit(),
            }
            state.reap();
            std::mem::take(&mut state.wakers)
        };
        let woke = !wakers.is_empty();
        for waker in wakers.drain(..) {
            waker.wake();
        }
        // Keep the vector's capacity for the next turn.
        self.state.borrow_mut().wakers = wakers;
        woke
    }
}

// ---- handles ---------------------------------------------------------------

fn this(reactor: &AnyReactor) -> &Reactor {
    match reactor {
        AnyReactor::Uring(reactor) => reactor,
        _ => unreachable!("an io_uring socket on a shard of another backend"),
    }
}

/// A listening socket on a shard's ring.
pub(crate) struct Listener {
    reactor: Rc<AnyReactor>,
    key: u32,
}

impl Listener {
    pub(crate) fn new(
        reactor: Rc<AnyReactor>,
        listener: std::net::TcpListener,
    ) -> io::Result<Listener> {
        let key = this(&reactor)
            .state
            .borrow_mut()
            .sources
            .insert(Source::new(Socket::Listener(listener)));
        Ok(Listener { reactor, key })
    }

    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(std::net::TcpStream, SocketAddr)>> {
        let mut state = this(&self.reactor).state.borrow_mut();
        let Some(source) = state.sources.get_mut(self.key) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let Socket::Listener(listener) = &source.socket else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        loop {
            match listener.accept() {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                result => return Poll::Ready(result),
            }
        }
        // Nothing to accept: wait until the socket is readable. A
        // connection that arrived since the attempt completes the poll at
        // once.
        store_waker(&mut source.poller, cx);
        state.arm_poll(self.key, libc::POLLIN);
        Poll::Pending
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let leftovers = this(&self.reactor).state.borrow_mut().close(self.key);
        drop(leftovers); // After the borrow: a waker's drop may run anything.
    }
}

/// A TCP stream on a shard's ring.
pub(crate) struct Stream {
    reactor: Rc<AnyReactor>,
    key: u32,
    /// How the connect ended, once it has (an errno if it failed).
    connected: Cell<Option<Result<(), i32>>>,
}

impl Stream {
    pub(crate) fn new(reactor: Rc<AnyReactor>, stream: std::net::TcpStream) -> io::Result<Stream> {
        let key = this(&reactor)
            .state
            .borrow_mut()
            .sources
            .insert(Source::new(Socket::Stream(stream)));
        Ok(Stream {
            reactor,
            key,
            connected: Cell::new(None),
        })
    }

    pub(crate) fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(outcome) = self.connected.get() {
            return Poll::Ready(outcome.map_err(io::Error::from_raw_os_error));
        }
        let mut state = this(&self.reactor).state.borrow_mut();
        let Some(source) = state.sources.get_mut(self.key) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let Socket::Stream(stream) = &source.socket else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let outcome = match stream.take_error() {
            Ok(Some(error)) | Err(error) => Err(error),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(error)
                    if error.kind() == io::ErrorKind::NotConnected
                        && !source.polled.is_some_and(|revents| {
                            revents & (libc::POLLHUP | libc::POLLERR) as u32 != 0
                        }) =>
                {
                    // Still connecting: wait until it is writable (or
                    // failed). A socket that hung up without an error and
                    // without a peer was never connecting: that is the
                    // error.
                    store_waker(&mut source.poller, cx);
                    state.arm_poll(self.key, libc::POLLOUT);
                    return Poll::Pending;
                }
                Err(error) => Err(error),
            },
        };
        self.connected.set(Some(
            outcome
                .as_ref()
                .map(|_| ())
                .map_err(|error| error.raw_os_error().unwrap_or(libc::EIO)),
        ));
        Poll::Ready(outcome)
    }

    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut RecvBuf,
        range: Range<usize>,
    ) -> Poll<io::Result<usize>> {
        this(&self.reactor)
            .state
            .borrow_mut()
            .poll_recv(self.key, cx, buf, range)
    }

    pub(crate) fn set_receive_buffers(&self, buffers: ReceiveBuffers) {
        let mut state = this(&self.reactor).state.borrow_mut();
        let Some(source) = state.sources.get_mut(self.key) else {
            return;
        };
        source.adaptive = buffers == ReceiveBuffers::Adaptive;
        // An adaptive stream starts in place, ready for a connection that
        // opens with a flood (see `ReceiveBuffers::Adaptive`).
        let shared = buffers == ReceiveBuffers::Shared;
        state.receive_shared(self.key, shared);
    }

    /// Whether the stream's next receive goes straight into the reader's
    /// buffer (for tests of the adaptive mode).
    #[cfg(test)]
    pub(crate) fn receives_in_place(&self) -> bool {
        self.source_is(|source| !source.shared_buffers)
    }

    /// Whether the stream's source is there and passes `test`.
    fn source_is(&self, test: impl FnOnce(&Source) -> bool) -> bool {
        let state = this(&self.reactor).state.borrow();
        state.sources.get(self.key).is_some_and(test)
    }

    pub(crate) fn start_send(&self, buf: Vec<u8>) {
        this(&self.reactor)
            .state
            .borrow_mut()
            .start_send(self.key, buf);
    }

    pub(crate) fn set_send_slice(&self, bytes: usize) {
        let mut state = this(&self.reactor).state.borrow_mut();
        if let Some(source) = state.sources.get_mut(self.key) {
            source.send_slice = bytes.clamp(1, MAX_SEND_SLICE as usize);
        }
    }

    /// Runs `f` on the stream's socket (always there while the handle
    /// lives).
    pub(crate) fn with_socket<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        let state = this(&self.reactor).state.borrow();
        match state.sources.get(self.key).map(|source| &source.socket) {
            Some(Socket::Stream(stream)) => Some(f(stream.as_fd())),
            _ => None,
        }
    }

    pub(crate) fn set_background(&self, background: bool) {
        let mut state = this(&self.reactor).state.borrow_mut();
        if let Some(source) = state.sources.get_mut(self.key) {
            source.background = background;
        }
    }

    pub(crate) fn set_sent_unread(&self, unread: bool) {
        let mut state = this(&self.reactor).state.borrow_mut();
        if let Some(source) = state.sources.get_mut(self.key) {
            source.sent_unread = unread;
        }
    }

    pub(crate) fn sending(&self) -> bool {
        self.source_is(|source| source.send_op.is_some() || source.sent.is_some())
    }

    #[cfg(test)]
    pub(crate) fn in_background(&self) -> bool {
        let state = this(&self.reactor).state.borrow();
        state.in_background(self.key)
    }

    #[cfg(test)]
    pub(crate) fn sends_zero_copy(&self) -> bool {
        self.source_is(|source| !source.copies)
    }

    pub(crate) fn shutdown(&self) -> io::Result<()> {
        let state = this(&self.reactor).state.borrow();
        match state.sources.get(self.key).map(|source| &source.socket) {
            Some(Socket::Stream(stream)) => stream.shutdown(std::net::Shutdown::Both),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub(crate) fn poll_sent(&self, cx: &mut Context<'_>) -> Poll<(Vec<u8>, io::Result<()>)> {
        this(&self.reactor)
            .state
            .borrow_mut()
            .poll_sent(self.key, cx)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let leftovers = this(&self.reactor).state.borrow_mut().close(self.key);
        drop(leftovers); // After the borrow: a waker's drop may run anything.
    }
}

// ---- set-up -----------------------------------------------------------------

/// A ring with the options' size and SQPOLL setting. Without SQPOLL, also
/// asks for cooperative task running (completions are run when the shard
/// next enters the kernel, without an interrupt), if the kernel has it.
fn build_ring(options: &IoOptions) -> io::Result<IoUring> {
    let entries = options.ring_entries.max(1);
    let mut builder = IoUring::builder();
    builder
        .setup_clamp()
        .setup_cqsize(entries.saturating_mul(4));
    if options.sqpoll {
        builder.setup_sqpoll(SQPOLL_IDLE_MS);
        return builder.build(entries);
    }
    let plain = builder.clone();
    builder.setup_coop_taskrun().setup_taskrun_flag();
    match builder.build(entries) {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => plain.build(entries),
        result => result,
    }
}

/// Checks the opcodes and features this backend uses.
fn check_support(ring: &IoUring) -> io::Result<()> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    // Multishot receive (6.0) has no opcode of its own; SEND_ZC came in the
    // same release, so a kernel that has it has multishot receive too.
    let needed = [
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("SEND_ZC", opcode::SendZc::CODE),
        ("POLL_ADD", opcode::PollAdd::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
        ("READ", opcode::Read::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks {name}"),
            ));
        }
    }
    let params = ring.params();
    if !params.is_feature_nodrop() || !params.is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks IORING_FEAT_NODROP or IORING_FEAT_EXT_ARG",
        ));
    }
    Ok(())
}

// ---- the shard's state ------------------------------------------------------

/// The ring, the operations in flight and the sockets they concern.
struct State {
    ring: IoUring,
    /// Registered as buffer group [`GROUP`] of `ring`. Dropped (or leaked)
    /// by `State`'s drop, once the kernel is done with it.
    bufs: ManuallyDrop<BufRing>,
    ops: Ops,
    sources: Sources,
    /// Entries the submission queue had no room for, in order.
    backlog: VecDeque<squeue::Entry>,
    /// Streams whose multishot receive ended for want of buffers.
    starved: Vec<u32>,
    /// Target of the eventfd read; written by the kernel while `wake_armed`.
    /// Dropped (or leaked) like `bufs`.
    wake_buf: ManuallyDrop<Box<UnsafeCell<u64>>>,
    wake_armed: bool,
    unpark: Arc<EventFd>,
    sqpoll: bool,
    zc_threshold: usize,
    /// Chunks a stream may queue before its receive is paused.
    recv_cap: usize,
    /// A completion for a foreground stream (one that is not
    /// background) was handled in the current reap...
    foreground_busy: bool,
    /// ...and when the last reap that had one ended.
    foreground_seen: Option<Instant>,
    /// A real ring runs on the wall clock.
    clock: SystemClock,
    /// A send request is in the submission queue, not yet submitted.
    send_queued: bool,
    /// When the worker threads are next looked for ([`State::idle_workers`]).
    next_worker_scan: Option<Instant>,
    /// Set once teardown begins: nothing is armed any more.
    tearing_down: bool,
    /// Wakers collected while handling completions, woken after.
    wakers: Vec<Waker>,
    cqes: Vec<(u64, i32, u32)>,
}

impl State {
    fn new(options: &IoOptions, unpark: Arc<EventFd>) -> io::Result<State> {
        let ring = build_ring(options)?;
        check_support(&ring)?;
        let bufs = BufRing::new(options.recv_buffers, options.recv_buffer_size)?;
        // SAFETY: `bufs` goes into the `State` built right below, whose drop
        // frees it only once no request that may select a buffer is in
        // flight, and leaks it otherwise. Should this function fail before
        // that, no request has been submitted.
        unsafe { bufs.register(&ring.submitter(), GROUP)? };
        Ok(State {
            ring,
            bufs: ManuallyDrop::new(bufs),
            ops: Ops::default(),
            sources: Sources::default(),
            backlog: VecDeque::new(),
            starved: Vec::new(),
            wake_buf: ManuallyDrop::new(Box::new(UnsafeCell::new(0))),
            wake_armed: false,
            unpark,
            sqpoll: options.sqpoll,
            zc_threshold: options.send_zc_threshold,
            recv_cap: (usize::from(options.recv_buffers) / 4).max(2),
            foreground_busy: false,
            foreground_seen: None,
            clock: SystemClock::new(),
            send_queued: false,
            next_worker_scan: None,
            tearing_down: false,
            wakers: Vec::new(),
            cqes: Vec::with_capacity(CQE_BATCH),
        })
    }

    // ---- submission ------------------------------------------------------

    /// Queues `entry` for the next submission: on the submission queue,
    /// submitting at once if it is full, or in the backlog if the kernel
    /// will not take entries even then.
    ///
    /// # Safety
    ///
    /// Whatever memory `entry` points to must stay valid, and be neither
    /// read nor written by us in a way that conflicts with the kernel's use,
    /// until the request's last completion has been reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            for _ in 0..2 {
                // SAFETY: forwarded from this function's contract.
                if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                    return;
                }
                self.enter_submit();
                if self.sqpoll {
                    // The SQPOLL thread consumes the queue on its own time.
                    let _ = self.ring.submitter().squeue_wait();
                }
            }
        }
        self.backlog.push_back(entry);
    }

    /// Moves the backlog onto the submission queue, as far as it fits.
    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            // SAFETY: each backlogged entry met `push`'s contract when it was
            // queued, and its request has not started since.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.enter_submit();
                // SAFETY: as above.
                if unsafe { self.ring.submission().push(&entry) }.is_err() {
                    self.backlog.push_front(entry);
                    return;
                }
            }
        }
    }

    /// Submits what is queued without waiting, if there is anything to
    /// submit or the kernel has completions to post.
    fn submit(&mut self) {
        self.flush_backlog();
        let pending = {
            let sq = self.ring.submission();
            !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
        };
        if pending {
            self.enter_submit();
        }
    }

    fn enter_submit(&mut self) {
        self.send_queued = false;
        if let Err(error) = self.ring.submit() {
            report_enter_error(&error);
        }
    }

    /// Submits what is queued and waits up to `timeout` for at least one
    /// completion (not at all if one is already there).
    fn submit_and_wait(&mut self, timeout: Option<Duration>) {
        self.flush_backlog();
        if timeout == Some(Duration::ZERO) || !self.ring.completion().is_empty() {
            self.enter_submit();
            return;
        }
        self.send_queued = false;
        let submitter = self.ring.submitter();
        let result = match timeout {
            Some(timeout) => {
                // Spurious returns are allowed; an absurd timeout is not.
                let timespec = Timespec::from(timeout.min(MAX_WAIT));
                let args = SubmitArgs::new().timespec(&timespec);
                submitter.submit_with_args(1, &args)
            }
            None => submitter.submit_and_wait(1),
        };
        if let Err(error) = result {
            report_enter_error(&error);
        }
    }

    // ---- completion ------------------------------------------------------

    /// Handles every completion there is.
    fn reap(&mut self) {
        loop {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .take(CQE_BATCH)
                    .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
            );
            let full = cqes.len() == CQE_BATCH;
            for &(user_data, result, flags) in &cqes {
                self.complete(user_data, result, flags);
            }
            self.cqes = cqes;
            if std::mem::take(&mut self.foreground_busy) {
                self.foreground_seen = Some(self.clock.now());
            }
            if self.ring.submission().cq_overflow() {
                // The kernel holds completions that did not fit; entering
                // the kernel moves them into the queue we just drained.
                self.enter_submit();
            } else if !full {
                break;
            }
        }
        // Completions for closed streams may have given buffers back.
        self.resume_starved();
    }

    fn complete(&mut self, user_data: u64, result: i32, flags: u32) {
        match user_data {
            WAKE => {
                self.wake_armed = false;
                if result < 0 && result != -libc::ECANCELED && result != -libc::EINTR {
                    tracing::error!(
                        "io_uring eventfd read failed: {}",
                        io::Error::from_raw_os_error(-result)
                    );
                }
                self.arm_wake();
            }
            UNTRACKED => {}
            _ => match self.ops.get(user_data).map(|op| {
                if !matches!(op.kind, OpKind::Poll) {
                    self.foreground_busy |= self
                        .sources
                        .get(op.source)
                        .is_some_and(|source| !source.background);
                }
                &op.kind
            }) {
                Some(OpKind::Recv) => self.recv_done(user_data, result, flags),
                Some(OpKind::RecvInto(_)) => self.recv_into_done(user_data, result),
                Some(OpKind::Poll) => self.poll_done(user_data, result),
                Some(OpKind::Send(_)) => self.send_done(user_data, result, flags),
                None => {
                    tracing::trace!(user_data, result, "stale io_uring completion ignored");
                }
            },
        }
    }

    /// Keeps a read outstanding on the eventfd, so that an unpark ends a
    /// wait.
    fn arm_wake(&mut self) {
        if self.wake_armed || self.tearing_down {
            return;
        }
        self.wake_armed = true;
        let entry = opcode::Read::new(
            Fd(self.unpark.0.as_raw_fd()),
            self.wake_buf.get().cast::<u8>(),
            std::mem::size_of::<u64>() as u32,
        )
        .build()
        .user_data(WAKE);
        // SAFETY: `wake_buf` is a heap cell owned by `self`, read by no one,
        // freed only after this read completes (`wake_armed` false) or
        // leaked (`Drop`). The eventfd is kept open by `self.unpark`.
        unsafe { self.push(entry) }
    }

    fn recv_done(&mut self, user_data: u64, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        let Some(key) = self.ops.get(user_data).map(|op| op.source) else {
            return;
        };
        let Some(source) = self.sources.get_mut(key) else {
            tracing::error!("io_uring receive completion for a freed source");
            return;
        };
        let mut wake = false;
        let mut behind = false;
        match (result, cqueue::buffer_select(flags)) {
            (len @ 1.., Some(id)) => match self.bufs.take(id, len as usize) {
                Ok(()) if source.open => {
                    source.chunks.push_back(Chunk {
                        id,
                        start: 0,
                        end: len as usize,
                    });
                    wake = true;
                    // A whole buffer's worth was waiting: an adaptive
                    // stream is behind, and goes in place.
                    behind = source.adaptive && len as usize == self.bufs.buffer_size();
                }
                Ok(()) => self.bufs.give_back(id),
                Err(_) => {
                    tracing::error!(id, len, "io_uring reported a bad provided buffer");
                    source.end.get_or_insert(End::Error(libc::EIO));
                    wake = true;
                }
            },
            (1.., None) => {
                tracing::error!("io_uring receive completed without a buffer");
                source.end.get_or_insert(End::Error(libc::EIO));
                wake = true;
            }
            (error, id) => {
                if let Some(id) = id {
                    // A buffer with no data in it: straight back.
                    if self.bufs.take(id, 0).is_ok() {
                        self.bufs.give_back(id);
                    }
                }
                match -error {
                    0 => {
                        source.end.get_or_insert(End::Eof);
                        wake = true;
                    }
                    libc::ENOBUFS | libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
                    code => {
                        source.end.get_or_insert(End::Error(code));
                        wake = true;
                    }
                }
            }
        }
        if wake {
            self.wakers.extend(source.reader.take());
        }
        if behind && source.shared_buffers {
            self.receive_shared(key, false);
            if more {
                return;
            }
        }
        let Some(source) = self.sources.get_mut(key) else {
            return;
        };
        if more {
            if source.open && !source.paused && source.chunks.len() >= self.recv_cap {
                // A slow reader: stop filling buffers for it until it drains.
                source.paused = true;
                self.cancel(CancelBuilder::user_data(user_data));
            }
            return;
        }
        // The multishot receive is over.
        self.ops.remove(user_data);
        source.recv_op = None;
        if !source.open {
            drop(self.release_if_idle(key));
        } else if !source.shared_buffers {
            // It was cancelled for a switch to receiving in place, which
            // the reader now starts.
            self.wakers.extend(source.reader.take());
        } else if source.end.is_none() && !source.paused && !self.tearing_down {
            if result == -libc::ENOBUFS && self.bufs.available() == 0 {
                source.starved = true;
                self.starved.push(key);
            } else {
                self.arm_recv(key);
            }
        }
    }

    /// Switches stream `key` to receiving into shared buffers or in
    /// place. A multishot receive in flight goes on filling shared buffers
    /// until its cancellation lands; what it delivered is still read
    /// first.
    fn receive_shared(&mut self, key: u32, shared: bool) {
        let Some(source) = self.sources.get_mut(key) else {
            return;
        };
        source.shared_buffers = shared;
        let multishot = source.recv_op.filter(|&user_data| {
            matches!(
                self.ops.get(user_data),
                Some(Op {
                    kind: OpKind::Recv,
                    ..
                })
            )
        });
        if let (false, Some(user_data)) = (shared, multishot) {
            self.cancel(CancelBuilder::user_data(user_data));
        }
    }

    fn recv_into_done(&mut self, user_data: u64, result: i32) {
        let Some(key) = self.ops.get(user_data).map(|op| op.source) else {
            return;
        };
        let live = self.sources.get(key).is_some_and(|source| source.open) && !self.tearing_down;
        if live && (result == -libc::EAGAIN || result == -libc::EINTR) {
            self.submit_recv_into(user_data);
            return;
        }
        let Some(Op {
            kind: OpKind::RecvInto(recv),
            ..
        }) = self.ops.remove(user_data)
        else {
            return;
        };
        let Some(source) = self.sources.get_mut(key) else {
            return;
        };
        source.recv_op = None;
        if !source.open {
            drop(self.release_if_idle(key));
            return;
        }
        let outcome = match result {
            0 => {
                source.end = Some(End::Eof);
                Ok(0)
            }
            1.. => {
                // An adaptive stream whose reads keep finding little
                // waiting has caught up: back to the armed multishot
                // receive.
                let len = result as usize;
                if source.adaptive {
                    let small = len < recv.range.len() && len < self.bufs.buffer_size() / 8;
                    source.small_reads = if small { source.small_reads + 1 } else { 0 };
                    if source.small_reads == SMALL_READS_TO_SHARE {
                        source.shared_buffers = true;
                        source.small_reads = 0;
                    }
                }
                Ok(len)
            }
            _ => {
                source.end = Some(End::Error(-result));
                Err(io::Error::from_raw_os_error(-result))
            }
        };
        source.received = Some((recv.buf, outcome));
        self.wakers.extend(source.reader.take());
    }

    fn poll_done(&mut self, user_data: u64, result: i32) {
        let Some(op) = self.ops.remove(user_data) else {
            return;
        };
        if let Some(source) = self.sources.get_mut(op.source) {
            source.poll_op = None;
            source.polled = u32::try_from(result).ok();
            self.wakers.extend(source.poller.take());
            if !source.open {
                drop(self.release_if_idle(op.source));
            }
        }
    }

    fn send_done(&mut self, user_data: u64, result: i32, flags: u32) {
        let Some(Op {
            source: key,
            kind: OpKind::Send(send),
        }) = self.ops.get_mut(user_data)
        else {
            return;
        };
        let key = *key;
        if cqueue::notif(flags) {
            send.notifs_pending = send.notifs_pending.saturating_sub(1);
            if result as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                self.sources.copies(key);
            }
        } else {
            send.result_pending = false;
            if send.zc && cqueue::more(flags) {
                send.notifs_pending += 1;
            }
            let live =
                self.sources.get(key).is_some_and(|source| source.open) && !self.tearing_down;
            if send.zc && result == -libc::EINVAL && live {
                // No usage report here (or no zero-copy for this socket):
                // send this slice again, copied.
                send.zc = false;
                self.sources.copies(key);
                self.submit_send(user_data, key);
                return;
            }
            match result {
                0 => send.error = Some(io::ErrorKind::WriteZero.into()),
                1.. => send.written += result as usize,
                _ if result == -libc::EINTR || result == -libc::EAGAIN => {}
                _ => send.error = Some(io::Error::from_raw_os_error(-result)),
            }
            // The next slice goes out at once: it reads other bytes of the
            // buffer than the slices whose notifications are still due.
            if live && send.error.is_none() && send.written < send.buf.len() {
                self.submit_send(user_data, key);
                return;
            }
        }
        if send.result_pending {
            return;
        }
        if send.notifs_pending > 0 {
            // Only zero-copy notifications are due. They come once the
            // peer has acknowledged the bytes, which a peer that delays its
            // acknowledgements holds back for tens of milliseconds (40 ms
            // over loopback, on a new connection's first burst). The
            // writer has its outcome now: a new buffer to fill if it does
            // not read what it sent, else a copy of its own. This one
            // stays with the operation until the kernel lets go of it. If
            // the stream is gone, its socket may close now all the same.
            if send.handed_back {
                drop(self.release_if_idle(key));
                return;
            }
            send.handed_back = true;
            let outcome = send.outcome();
            let copy = self
                .sources
                .get(key)
                .is_some_and(|source| source.open && !source.sent_unread);
            let buf = if copy { send.buf.clone() } else { Vec::new() };
            self.hand_back(key, buf, outcome);
            return;
        }
        let Some(Op {
            kind: OpKind::Send(mut send),
            ..
        }) = self.ops.remove(user_data)
        else {
            return;
        };
        if !send.handed_back {
            let outcome = send.outcome();
            self.hand_back(key, send.buf, outcome);
        }
    }

    /// Gives stream `key`'s writer the outcome of its send, and `buf` to
    /// write the next one in; a closed stream is released instead.
    fn hand_back(&mut self, key: u32, buf: Vec<u8>, outcome: io::Result<()>) {
        let Some(source) = self.sources.get_mut(key) else {
            return;
        };
        source.send_op = None;
        if source.open {
            source.sent = Some((buf, outcome));
            self.wakers.extend(source.writer.take());
        } else {
            drop(self.release_if_idle(key));
        }
    }

    // ---- operations ------------------------------------------------------

    fn arm_recv(&mut self, key: u32) {
        let Some(source) = self.sources.get_mut(key) else {
            return;
        };
        if source.recv_op.is_some() || !source.open || self.tearing_down {
            return;
        }
        source.starved = false;
        let user_data = self.ops.insert(Op {
            source: key,
            kind: OpKind::Recv,
        });
        source.recv_op = Some(user_data);
        let entry = opcode::RecvMulti::new(Fd(source.socket.fd()), GROUP)
            .build()
            .user_data(user_data);
        // SAFETY: the entry carries no pointer. The buffers it fills come
        // from the provided-buffer ring, which outlives every request
        // (`State`'s drop) and hands out only buffers we do not hold.
        unsafe { self.push(entry) }
    }

    fn arm_poll(&mut self, key: u32, events: i16) {
        let Some(source) = self.sources.get_mut(key) else {
            return;
        };
        if source.poll_op.is_some() || self.tearing_down {
            return;
        }
        let user_data = self.ops.insert(Op {
            source: key,
            kind: OpKind::Poll,
        });
        source.poll_op = Some(user_data);
        source.polled = None;
        let entry = opcode::PollAdd::new(Fd(source.socket.fd()), events as u16 as u32)
            .build()
            .user_data(user_data);
        // SAFETY: a poll carries no pointer.
        unsafe { self.push(entry) }
    }

    /// Submits (the rest of) the send `user_data` of source `key`.
    fn submit_send(&mut self, user_data: u64, key: u32) {
        let Some((fd, slice)) = self
            .sources
            .get(key)
            .map(|source| (source.socket.fd(), source.send_slice))
        else {
            return;
        };
        let Some(Op {
            kind: OpKind::Send(send),
            ..
        }) = self.ops.get_mut(user_data)
        else {
            return;
        };
        let rest = &send.buf[send.written.min(send.buf.len())..];
        let len = rest.len().min(slice) as u32;
        let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
        let entry = if send.zc {
            opcode::SendZc::new(Fd(fd), rest.as_ptr(), len)
                .flags(flags)
                .zc_flags(SEND_ZC_REPORT_USAGE)
                .build()
        } else {
            opcode::Send::new(Fd(fd), rest.as_ptr(), len)
                .flags(flags)
                .build()
        };
        send.result_pending = true;
        self.send_queued = true;
        let entry = self.placed(key, entry.user_data(user_data));
        // SAFETY: the bytes belong to the `Vec` owned by this operation in
        // the reactor's table. Its heap block does not move when the table
        // does, and it is neither written nor freed before the request's
        // result and, for a zero-copy send, its notification have been
        // reaped (`send_done`, or teardown, which leaks it otherwise).
        unsafe { self.push(entry) }
    }

    /// `entry`, a send or an in-place receive of stream `key`, marked to
    /// run on the kernel's worker threads if it goes to the background now
    /// ([`State::in_background`]), in which case the workers are put in
    /// the idle class.
    fn placed(&mut self, key: u32, entry: squeue::Entry) -> squeue::Entry {
        if !self.in_background(key) {
            return entry;
        }
        self.idle_workers();
        entry.flags(squeue::Flags::ASYNC)
    }

    /// Whether a send or an in-place receive of stream `key` goes to the
    /// kernel's worker threads now: only a background stream's, and only
    /// while there is foreground traffic for it to make way for; otherwise
    /// the hand-off costs and buys nothing.
    fn in_background(&self, key: u32) -> bool {
        self.sources
            .get(key)
            .is_some_and(|source| source.background)
            && self
                .foreground_seen
                .is_some_and(|seen| self.clock.now() - seen < FOREGROUND_RECENT)
    }

    /// Puts this shard's io_uring worker threads (`iou-wrk-<shard tid>`,
    /// which the kernel starts as background requests need them) in the
    /// `SCHED_IDLE` class, at most every [`WORKER_SCAN`]: a background
    /// request then runs when the core has nothing more urgent to do,
    /// instead of taking turns with the shard it was meant to make way
    /// for. Until the first worker is found (it starts with the first
    /// background request), the shard looks every [`WORKER_RETRY`].
    fn idle_workers(&mut self) {
        let now = self.clock.now();
        if self.next_worker_scan.is_some_and(|next| now < next) {
            return;
        }
        let workers = ring_workers();
        let wait = match workers.is_empty() {
            true => WORKER_RETRY,
            false => WORKER_SCAN,
        };
        self.next_worker_scan = Some(now + wait);
        for tid in workers {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is valid for the call; `tid` is a thread of
            // this process, whose class any thread may lower.
            if unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) } != 0 {
                let error = io::Error::last_os_error();
                tracing::debug!(tid, "io_uring worker stays at its priority: {error}");
            }
        }
    }

    /// Queues an `ASYNC_CANCEL`.
    fn cancel(&mut self, target: CancelBuilder) {
        let entry = opcode::AsyncCancel2::new(target)
            .build()
            .user_data(UNTRACKED);
        // SAFETY: a cancel carries no pointer.
        unsafe { self.push(entry) }
    }

    fn start_send(&mut self, key: u32, buf: Vec<u8>) {
        let Some(source) = self.sources.get_mut(key) else {
            return;
        };
        if source.send_op.is_some() || source.sent.is_some() {
            debug_assert!(false, "one send in flight per stream");
            if source.sent.is_none() {
                let error = io::Error::other("a send is already in flight");
                source.sent = Some((buf, Err(error)));
            }
            return;
        }
        if buf.is_empty() {
            source.sent = Some((buf, Ok(())));
            return;
        }
        let zc = buf.len() >= self.zc_threshold && !source.copies;
        let user_data = self.ops.insert(Op {
            source: key,
            kind: OpKind::Send(SendOp {
                buf,
                written: 0,
                zc,
                result_pending: false,
                notifs_pending: 0,
                error: None,
                handed_back: false,
            }),
        });
        source.send_op = Some(user_data);
        let alone = !self.send_queued && self.backlog.is_empty();
        self.submit_send(user_data, key);
        // The only send in the queue gains nothing by waiting for the
        // driver's next poll: submit it now (with whatever receives are
        // queued) and take its result (a plain send to a socket with room
        // completes inside the submitting call), so the writer has its
        // buffer back within its own poll and sends the next batch at
        // once, as with epoll's synchronous writes. Sends queued together
        // are submitted together, one system call for all.
        if alone {
            self.submit();
            self.reap();
        }
    }

    /// After buffers went back on the ring: resumes streams that were
    /// waiting for one.
    fn resume_starved(&mut self) {
        if self.starved.is_empty() || self.bufs.available() == 0 {
            return;
        }
        for key in std::mem::take(&mut self.starved) {
            let Some(source) = self.sources.get_mut(key) else {
                continue;
            };
            // A stale entry (the slot was reused) is not starved.
            if source.starved && source.end.is_none() && !source.paused {
                self.arm_recv(key);
            }
        }
    }

    fn poll_recv(
        &mut self,
        key: u32,
        cx: &mut Context<'_>,
        buf: &mut RecvBuf,
        range: Range<usize>,
    ) -> Poll<io::Result<usize>> {
        let Some(source) = self.sources.get_mut(key) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some((owned, outcome)) = source.received.take() {
            *buf = owned;
            return Poll::Ready(outcome);
        }
        let receiving_in_place = source.recv_op.is_some_and(|user_data| {
            matches!(
                self.ops.get(user_data),
                Some(Op {
                    kind: OpKind::RecvInto(_),
                    ..
                })
            )
        });
        if receiving_in_place {
            store_waker(&mut source.reader, cx);
            return Poll::Pending;
        }
        if range.is_empty() || range.end > buf.len() {
            return Poll::Ready(Err(io::ErrorKind::InvalidInput.into()));
        }
        // Bytes already in shared buffers come first, whatever the mode.
        if source.shared_buffers || source.recv_op.is_some() || !source.chunks.is_empty() {
            return self.copy_received(key, cx, &mut buf[range]);
        }
        match source.end {
            Some(End::Eof) => return Poll::Ready(Ok(0)),
            Some(End::Error(code)) => return Poll::Ready(Err(io::Error::from_raw_os_error(code))),
            None => {}
        }
        store_waker(&mut source.reader, cx);
        if !source.open || self.tearing_down {
            return Poll::Pending;
        }
        let user_data = self.ops.insert(Op {
            source: key,
            kind: OpKind::RecvInto(RecvIntoOp {
                buf: std::mem::take(buf),
                range,
            }),
        });
        source.recv_op = Some(user_data);
        self.submit_recv_into(user_data);
        Poll::Pending
    }

    /// Submits (again) the receive in place `user_data`.
    fn submit_recv_into(&mut self, user_data: u64) {
        let Some(Op {
            source: key,
            kind: OpKind::RecvInto(recv),
        }) = self.ops.get_mut(user_data)
        else {
            return;
        };
        let key = *key;
        let fd = source_fd(&self.sources, key);
        let target = &mut recv.buf[recv.range.clone()];
        let entry = opcode::Recv::new(Fd(fd), target.as_mut_ptr(), target.len() as u32)
            .build()
            .user_data(user_data);
        let entry = self.placed(key, entry);
        // SAFETY: the bytes belong to the buffer owned by this operation in
        // the reactor's table; its heap block does not move when the table
        // does, and nothing reads, writes or frees it before the request's
        // completion has been reaped (`recv_into_done`, or teardown, which
        // leaks it otherwise).
        unsafe { self.push(entry) }
    }

    /// Copies what the multishot receive put in shared buffers into `dst`,
    /// arming the receive if it is not.
    fn copy_received(
        &mut self,
        key: u32,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let Some(source) = self.sources.get_mut(key) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let mut copied = 0;
        let mut gave_back = false;
        while copied < dst.len() {
            let Some(chunk) = source.chunks.front_mut() else {
                break;
            };
            if let Some(bytes) = self.bufs.bytes(chunk.id, chunk.start, chunk.end) {
                let n = bytes.len().min(dst.len() - copied);
                dst[copied..copied + n].copy_from_slice(&bytes[..n]);
                copied += n;
                chunk.start += n;
            } else {
                tracing::error!("a received chunk names a buffer we do not hold");
                chunk.start = chunk.end;
            }
            if chunk.start == chunk.end {
                let id = chunk.id;
                source.chunks.pop_front();
                self.bufs.give_back(id);
                gave_back = true;
            }
        }
        if source.paused && source.chunks.len() * 2 < self.recv_cap {
            source.paused = false;
            if source.recv_op.is_none() && source.end.is_none() && source.shared_buffers {
                self.arm_recv(key);
            }
        }
        if gave_back {
            self.resume_starved();
        }
        if copied > 0 || dst.is_empty() {
            return Poll::Ready(Ok(copied));
        }
        let Some(source) = self.sources.get_mut(key) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        match source.end {
            Some(End::Eof) => return Poll::Ready(Ok(0)),
            Some(End::Error(code)) => return Poll::Ready(Err(io::Error::from_raw_os_error(code))),
            None => {}
        }
        store_waker(&mut source.reader, cx);
        let starved = source.starved && self.bufs.available() == 0;
        if source.recv_op.is_none() && !starved && !source.paused && source.shared_buffers {
            self.arm_recv(key);
        }
        Poll::Pending
    }

    fn poll_sent(&mut self, key: u32, cx: &mut Context<'_>) -> Poll<(Vec<u8>, io::Result<()>)> {
        let Some(source) = self.sources.get_mut(key) else {
            return Poll::Ready((Vec::new(), Err(io::ErrorKind::NotConnected.into())));
        };
        if let Some(sent) = source.sent.take() {
            return Poll::Ready(sent);
        }
        if source.send_op.is_none() {
            return Poll::Ready((Vec::new(), Ok(())));
        }
        store_waker(&mut source.writer, cx);
        Poll::Pending
    }

    // ---- sources ---------------------------------------------------------

    /// The handle of `key` is gone: cancel what it has in flight and close
    /// the socket once nothing is. What the handle leaves (wakers, a
    /// finished send, the source itself) is returned for the caller to drop
    /// after its borrow of the state ends.
    fn close(&mut self, key: u32) -> Leftovers {
        let Some(source) = self.sources.get_mut(key) else {
            return Leftovers::default();
        };
        source.open = false;
        for chunk in source.chunks.drain(..) {
            self.bufs.give_back(chunk.id);
        }
        let mut leftovers = Leftovers {
            _wakers: [
                source.reader.take(),
                source.writer.take(),
                source.poller.take(),
            ],
            _sent: source.sent.take(),
            _received: source.received.take(),
            _source: None,
        };
        if self.requests_in_flight(key) {
            let fd = source_fd(&self.sources, key);
            self.cancel(CancelBuilder::fd(Fd(fd)).all());
        } else {
            leftovers._source = self.release_if_idle(key);
        }
        self.resume_starved();
        leftovers
    }

    /// Whether nothing is in flight.
    fn idle(&self) -> bool {
        self.ops.is_empty() && !self.wake_armed
    }

    /// Frees closed source `key`, returning it for its socket to be closed,
    /// once no request on it is in the kernel any more.
    fn release_if_idle(&mut self, key: u32) -> Option<Source> {
        let closed = self.sources.get(key).is_some_and(|source| !source.open);
        if !closed || self.requests_in_flight(key) {
            return None;
        }
        let source = self.sources.remove(key)?;
        // Sends with only zero-copy notifications due (in flight, or
        // handed back to the writer): the socket may close, each buffer
        // stays with its operation until then. (Kept open, the socket
        // would hold the very data whose release the notification waits
        // for, as long as the peer does not read.) Detached, their
        // notifications touch no stream that takes the key next.
        self.ops.detach_sends_of(key);
        Some(source)
    }

    /// Whether a request on source `key` is in the kernel (a send whose
    /// only pending completion is its zero-copy notification is not).
    fn requests_in_flight(&self, key: u32) -> bool {
        let Some(source) = self.sources.get(key) else {
            return false;
        };
        let sending = source.send_op.is_some_and(|user_data| {
            matches!(
                self.ops.get(user_data),
                Some(Op { kind: OpKind::Send(send), .. }) if send.result_pending
            )
        });
        source.recv_op.is_some() || source.poll_op.is_some() || sending
    }
}

fn source_fd(sources: &Sources, key: u32) -> RawFd {
    sources.get(key).map_or(-1, |source| source.socket.fd())
}

impl Drop for State {
    /// Cancels everything in flight and waits for the kernel to finish with
    /// it; what it does not finish in time is leaked, never freed under it.
    fn drop(&mut self) {
        self.tearing_down = true;
        // Entries never submitted start no request: forget their operations.
        for entry in std::mem::take(&mut self.backlog) {
            match entry.get_user_data() {
                WAKE => self.wake_armed = false,
                UNTRACKED => {}
                user_data => drop(self.ops.remove(user_data)),
            }
        }
        if !self.idle() {
            self.cancel(CancelBuilder::any());
        }
        let mut rounds_without_progress = 0;
        while !self.idle() && rounds_without_progress < TEARDOWN_ROUNDS {
            let before = self.ops.len();
            self.submit_and_wait(Some(TEARDOWN_WAIT));
            self.reap();
            self.wakers.clear();
            if self.ops.len() >= before {
                rounds_without_progress += 1;
            }
        }
        if self.idle() {
            let _ = self.ring.submitter().unregister_buf_ring(GROUP);
            // SAFETY: no request is in flight, so the kernel uses neither
            // the buffers nor the read target any more, and neither field is
            // touched again: this is `drop`.
            unsafe {
                ManuallyDrop::drop(&mut self.bufs);
                ManuallyDrop::drop(&mut self.wake_buf);
            }
            return;
        }
        // Requests still in flight may use the receive buffers, the send
        // buffers their operations own and the eventfd read's target. The
        // ring closes as the fields drop and the kernel cancels what is left
        // on its own time, so none of that may be freed: `bufs` and
        // `wake_buf` are left undropped, and the operations are forgotten.
        tracing::error!(
            in_flight = self.ops.len(),
            "io_uring requests outlived their cancellation; leaking their memory"
        );
        std::mem::forget(std::mem::take(&mut self.ops));
    }
}

/// The io_uring worker threads the kernel started for the calling thread's
/// ring: the threads of this process named `iou-wrk-<caller's tid>`.
pub(crate) fn ring_workers() -> Vec<libc::pid_t> {
    // "<pid>/task/<tid>"
    let Ok(me) = std::fs::read_link("/proc/thread-self") else {
        return Vec::new();
    };
    let Some(tid) = me.file_name() else {
        return Vec::new();
    };
    let worker = format!("iou-wrk-{}", tid.to_string_lossy());
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == worker)
        })
        .filter_map(|task| task.file_name().to_string_lossy().parse().ok())
        .collect()
}

fn report_enter_error(error: &io::Error) {
    match error.raw_os_error() {
        // Interrupted, timed out, or the kernel is short of room for
        // completions or memory: the next turn tries again.
        Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN) => {}
        _ => tracing::error!("io_uring_enter failed: {error}"),
    }
}

fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

// ---- the operation table ---------------------------------------------------

/// Operations in flight, keyed by their `user_data`: slot index in the low
/// 32 bits, the slot's generation in the high 32.
#[derive(Default)]
struct Ops {
    slots: Vec<OpSlot>,
    free: Vec<u32>,
    len: usize,
}

#[derive(Default)]
struct OpSlot {
    generation: u32,
    op: Option<Op>,
}

struct Op {
    /// The source (socket) it works on.
    source: u32,
    kind: OpKind,
}

enum OpKind {
    /// The multishot receive of a stream, into shared buffers.
    Recv,
    /// A receive straight into the reader's buffer.
    RecvInto(RecvIntoOp),
    /// A one-shot poll, for connect or accept.
    Poll,
    Send(SendOp),
}

/// A receive in place in flight: the buffer is the kernel's to write
/// (at `range`) until its completion.
struct RecvIntoOp {
    buf: RecvBuf,
    range: Range<usize>,
}

/// A send in flight: the buffer is the kernel's to read while a result or
/// a zero-copy notification is pending.
struct SendOp {
    buf: Vec<u8>,
    written: usize,
    zc: bool,
    result_pending: bool,
    /// Zero-copy notifications still due, one per slice that asked for one.
    notifs_pending: u32,
    error: Option<io::Error>,
    /// The writer has had its outcome: only notifications were due, and
    /// the buffer stays here until they are in.
    handed_back: bool,
}

impl SendOp {
    /// What the writer is told once the kernel has taken all it will.
    fn outcome(&mut self) -> io::Result<()> {
        match self.error.take() {
            Some(error) => Err(error),
            None if self.written >= self.buf.len() => Ok(()),
            None => Err(io::ErrorKind::Interrupted.into()),
        }
    }
}

impl Ops {
    fn insert(&mut self, op: Op) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(OpSlot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.op = Some(op);
        self.len += 1;
        (u64::from(slot.generation) << 32) | u64::from(index)
    }

    fn slot(&self, user_data: u64) -> Option<&OpSlot> {
        let slot = self.slots.get((user_data & u64::from(u32::MAX)) as usize)?;
        (u64::from(slot.generation) == user_data >> 32).then_some(slot)
    }

    fn get(&self, user_data: u64) -> Option<&Op> {
        self.slot(user_data)?.op.as_ref()
    }

    fn get_mut(&mut self, user_data: u64) -> Option<&mut Op> {
        self.slot(user_data)?;
        self.slots[(user_data & u64::from(u32::MAX)) as usize]
            .op
            .as_mut()
    }

    fn remove(&mut self, user_data: u64) -> Option<Op> {
        self.slot(user_data)?;
        let index = (user_data & u64::from(u32::MAX)) as u32;
        let op = self.slots[index as usize].op.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(op)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Detaches the sends of source `key` from it.
    fn detach_sends_of(&mut self, key: u32) {
        for op in self.slots.iter_mut().filter_map(|slot| slot.op.as_mut()) {
            if op.source == key && matches!(op.kind, OpKind::Send(_)) {
                op.source = DETACHED;
            }
        }
    }
}

// ---- sources ---------------------------------------------------------------

#[derive(Default)]
struct Sources {
    slots: Vec<Option<Source>>,
    free: Vec<u32>,
}

impl Sources {
    fn insert(&mut self, source: Source) -> u32 {
        match self.free.pop() {
            Some(key) => {
                self.slots[key as usize] = Some(source);
                key
            }
            None => {
                self.slots.push(Some(source));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn get(&self, key: u32) -> Option<&Source> {
        self.slots.get(key as usize)?.as_ref()
    }

    fn get_mut(&mut self, key: u32) -> Option<&mut Source> {
        self.slots.get_mut(key as usize)?.as_mut()
    }

    /// The kernel copies what stream `key` sends with zero-copy: its later
    /// sends use plain `SEND`.
    fn copies(&mut self, key: u32) {
        if let Some(source) = self.get_mut(key) {
            source.copies = true;
        }
    }

    fn remove(&mut self, key: u32) -> Option<Source> {
        let source = self.slots.get_mut(key as usize)?.take()?;
        self.free.push(key);
        Some(source)
    }
}

/// A socket and what its operations produced.
struct Source {
    /// Owned here, not by the handle, so that it stays open until the last
    /// operation on it has completed.
    socket: Socket,
    /// The handle is alive.
    open: bool,
    poll_op: Option<u64>,
    /// What the last poll reported (`revents`), if it succeeded.
    polled: Option<u32>,
    poller: Option<Waker>,
    /// The receive in flight: multishot into shared buffers or, for a
    /// stream that receives in place, one read into the reader's buffer.
    recv_op: Option<u64>,
    /// Receives go to the shard's shared buffers, not straight into the
    /// reader's ([`Stream::set_receive_buffers`]).
    shared_buffers: bool,
    /// `shared_buffers` follows the traffic ([`ReceiveBuffers::Adaptive`]).
    adaptive: bool,
    /// Reads in place in a row that found little waiting.
    small_reads: u8,
    /// The finished receive in place: the reader's buffer and how many
    /// bytes landed in it.
    received: Option<(RecvBuf, io::Result<usize>)>,
    /// Received bytes, in order, in shared buffers we hold.
    chunks: VecDeque<Chunk>,
    /// How the byte stream ended, once it has: reported after `chunks`.
    end: Option<End>,
    /// The multishot receive ended with `ENOBUFS`; in `State::starved`.
    starved: bool,
    /// The receive is cancelled until the reader drains `chunks`.
    paused: bool,
    reader: Option<Waker>,
    send_op: Option<u64>,
    /// The finished send, for `poll_sent`.
    sent: Option<(Vec<u8>, io::Result<()>)>,
    writer: Option<Waker>,
    /// Zero-copy sends on this socket were copied by the kernel (or
    /// refused): it sends with plain `SEND` only.
    copies: bool,
    /// Most bytes one send request carries ([`Stream::set_send_slice`]).
    send_slice: usize,
    /// Sends and in-place receives run on the kernel's worker threads
    /// (`IOSQE_ASYNC`) rather than inline in the submitting call
    /// ([`Stream::set_background`]).
    background: bool,
    /// The writer does not read what it sent ([`Stream::set_sent_unread`]).
    sent_unread: bool,
}

impl Source {
    fn new(socket: Socket) -> Source {
        Source {
            socket,
            open: true,
            poll_op: None,
            polled: None,
            poller: None,
            recv_op: None,
            shared_buffers: false,
            adaptive: false,
            small_reads: 0,
            received: None,
            chunks: VecDeque::new(),
            end: None,
            starved: false,
            send_slice: DEFAULT_SEND_SLICE as usize,
            background: false,
            sent_unread: false,
            paused: false,
            reader: None,
            send_op: None,
            sent: None,
            writer: None,
            copies: false,
        }
    }
}

enum Socket {
    Stream(std::net::TcpStream),
    Listener(std::net::TcpListener),
}

impl Socket {
    fn fd(&self) -> RawFd {
        match self {
            Socket::Stream(stream) => stream.as_raw_fd(),
            Socket::Listener(listener) => listener.as_raw_fd(),
        }
    }
}

/// What a closed handle leaves behind, held only to be dropped; see
/// [`State::close`].
#[derive(Default)]
struct Leftovers {
    _wakers: [Option<Waker>; 3],
    _sent: Option<(Vec<u8>, io::Result<()>)>,
    _received: Option<(RecvBuf, io::Result<usize>)>,
    /// The source, if nothing was in flight on it (dropping it closes the
    /// socket).
    _source: Option<Source>,
}

/// Bytes `start..end` of buffer `id`, not yet read.
struct Chunk {
    id: u16,
    start: usize,
    end: usize,
}

#[derive(Clone, Copy)]
enum End {
    Eof,
    /// An errno.
    Error(i32),
}
