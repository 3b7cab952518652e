//! The backend contract: how bytes move between a shard and the kernel.
//!
//! A backend is a per-shard *reactor* plus the socket types it drives. The
//! reactor is created on the shard's own thread (in [`Driver::enter`]) and
//! lives in a thread-local, so the connection processes of that shard reach
//! it with [`Reactor::current`] and never share it with another thread. The
//! same object is the shard's [`Driver`]: the shard parks in it, so I/O
//! completions, cross-shard wake-ups and the next timer share one wait, and
//! a busy shard calls [`Driver::poll`] once per pass so that I/O is served
//! under load too.
//!
//! Every backend provides exactly this, with the same semantics:
//!
//! - **[`Reactor::listener`]** takes a bound, listening socket ([`Bound`]);
//!   **[`Listener::poll_accept`]** yields accepted sockets (for TCP
//!   non-blocking, `TCP_NODELAY` set), which the process that will own
//!   them adopts on its own shard ([`Reactor::adopt`]).
//! - **[`Reactor::connect`]** starts a non-blocking connect;
//!   **[`Stream::poll_connected`]** completes when it is established or
//!   failed.
//! - **[`Stream::poll_recv`]** receives bytes into a range of the caller's
//!   buffer and returns how many (`0` means the peer closed). The buffer is
//!   owned, and lent to the backend while a receive is pending, so that a
//!   completion-based backend may have the kernel write into it directly,
//!   and the future around the call may still be dropped at any time.
//! - **[`Stream::start_send`]** hands the backend an owned buffer, and
//!   **[`Stream::poll_sent`]** gives it back once *all* of it is written (or
//!   the stream failed). One send is in flight per stream. The buffer is
//!   owned so that a completion-based backend may keep writing from it (or,
//!   with zero-copy send, keep the kernel reading from it) after the future
//!   that asked for it is gone.
//! - Dropping a [`Stream`] or [`Listener`] closes it; a backend that still
//!   has operations in flight on it keeps their buffers alive until the
//!   kernel is done with them, and closes the descriptor after.
//! - Wakers: a pending `poll_*` stores the task's waker and the reactor wakes
//!   it from [`Driver::poll`] or [`Driver::park`] on the same thread.
//!
//! Backends:
//!
//! - [`uring`]: io_uring, one ring per shard, multishot receive into a
//!   provided-buffer ring, batched submission, `SEND_ZC` above a tunable size,
//!   SQPOLL as an option;
//! - [`epoll`]: `mio`, readiness-based, the fallback where io_uring cannot
//!   be set up;
//! - [`sim`]: a simulated network on a simulation's virtual clock, for
//!   whole clusters on one thread (`Transport::start_simulated`).
//!
//! [`Backend::select`] chooses one at start-up: `FOUNDATION_BACKEND`
//! (`io_uring` or `epoll`) forces it; otherwise io_uring is probed and, if
//! the kernel refuses it (EPERM in a container, ENOSYS, ENOMEM from the
//! locked-memory limit), epoll is used and one log line says why.

#[cfg(test)]
mod contract_tests;
pub(crate) mod epoll;
pub mod sim;
mod sockopt;
pub(crate) mod uring;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use foundation_sched::driver::{Driver, DriverFactory};

pub(crate) use crate::channel::ReceiveBuffers;
use crate::frame::PAYLOAD_ALIGN;
pub(crate) use sockopt::congestion_control_available;

/// The environment variable that forces a backend: `io_uring` or `epoll`.
pub const BACKEND_ENV: &str = "FOUNDATION_BACKEND";

/// An I/O backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Linux io_uring.
    IoUring,
    /// epoll, through `mio`.
    Epoll,
    /// The simulated network of a simulation ([`sim::Network`]): never
    /// chosen or probed, only reached through
    /// `Transport::start_simulated` on a node whose driver is a simulated
    /// host.
    Simulated,
}

/// Why a backend could not be chosen.
#[derive(Debug)]
#[non_exhaustive]
pub enum BackendError {
    /// `FOUNDATION_BACKEND` names no backend.
    UnknownBackend(String),
    /// io_uring was asked for and the kernel refused it.
    Unavailable {
        /// The backend asked for.
        backend: Backend,
        /// What the kernel said.
        error: io::Error,
    },
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::UnknownBackend(name) => write!(
                f,
                "{BACKEND_ENV}={name:?} names no backend (io_uring or epoll)"
            ),
            BackendError::Unavailable { backend, error } => {
                write!(f, "{backend} is unavailable: {error}")
            }
        }
    }
}

impl std::error::Error for BackendError {}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Backend {
    /// The backend's name, as `FOUNDATION_BACKEND` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
            Backend::Simulated => "simulated",
        }
    }

    /// Chooses the backend for this process: the one `FOUNDATION_BACKEND`
    /// names (an error if it cannot be used), or io_uring if the kernel
    /// allows it, else epoll with one log line saying why.
    pub fn select(options: &IoOptions) -> Result<Backend, BackendError> {
        match std::env::var(BACKEND_ENV) {
            Ok(name) => {
                let backend = match name.as_str() {
                    "io_uring" | "uring" | "io-uring" => Backend::IoUring,
                    "epoll" => Backend::Epoll,
                    _ => return Err(BackendError::UnknownBackend(name)),
                };
                backend
                    .probe(options)
                    .map_err(|error| BackendError::Unavailable { backend, error })?;
                Ok(backend)
            }
            Err(_) => match Backend::IoUring.probe(options) {
                Ok(()) => Ok(Backend::IoUring),
                Err(error) => {
                    tracing::warn!("io_uring unavailable ({error}); using epoll");
                    Ok(Backend::Epoll)
                }
            },
        }
    }

    /// Checks that this backend can be set up here, with `options`.
    pub fn probe(self, options: &IoOptions) -> io::Result<()> {
        match self {
            Backend::IoUring => uring::probe(options),
            Backend::Epoll => epoll::probe(),
            Backend::Simulated => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated network exists only inside a simulation",
            )),
        }
    }

    /// A factory of shard drivers for this backend, for
    /// [`foundation_sched::Builder::driver`]; `None` for
    /// [`Backend::Simulated`], whose drivers are a network's hosts
    /// ([`sim::Network::driver`]).
    pub(crate) fn driver_factory(self, options: IoOptions) -> Option<DriverFactory> {
        let epoll = || Box::new(epoll::EpollDriver::new().expect("epoll set-up"));
        match self {
            Backend::IoUring => Some(Arc::new(move |_shard| -> Box<dyn Driver> {
                match uring::UringDriver::new(&options) {
                    Ok(driver) => Box::new(driver),
                    Err(error) => {
                        tracing::warn!("io_uring ring set-up failed ({error}); shard uses epoll");
                        epoll()
                    }
                }
            })),
            Backend::Epoll => Some(Arc::new(move |_shard| -> Box<dyn Driver> { epoll() })),
            Backend::Simulated => None,
        }
    }
}

/// Tuning of the I/O backends.
#[derive(Clone, Debug)]
pub struct IoOptions {
    /// Sends of at least this many bytes use io_uring's zero-copy send
    /// (`SEND_ZC`). Default 16 KiB.
    pub send_zc_threshold: usize,
    /// Run an io_uring submission-queue polling thread (SQPOLL). Off by
    /// default: it spends a core.
    pub sqpoll: bool,
    /// Submission queue entries per ring. Default 1024.
    pub ring_entries: u32,
    /// Buffers in each shard's provided-buffer ring (a power of two).
    /// Default 256.
    pub recv_buffers: u16,
    /// Size of each provided buffer. Default 64 KiB.
    pub recv_buffer_size: u32,
}

impl Default for IoOptions {
    fn default() -> IoOptions {
        IoOptions {
            send_zc_threshold: 16 * 1024,
            sqpoll: false,
            ring_entries: 1024,
            recv_buffers: 256,
            recv_buffer_size: 64 * 1024,
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

/// The reactor of the current shard.
pub(crate) enum Reactor {
    Uring(uring::Reactor),
    Epoll(epoll::Reactor),
    Sim(sim::Reactor),
}

/// A bound, listening socket, before a shard's reactor drives it.
pub(crate) enum Bound {
    /// A TCP socket, non-blocking; each shard drives its own clone.
    Tcp(std::net::TcpListener),
    /// An address on a simulated network.
    Sim(sim::Listener),
}

/// An accepted connection on its way to the process that will own it.
pub(crate) enum Socket {
    Tcp(std::net::TcpStream),
    Sim(sim::Stream),
}

impl Reactor {
    /// The reactor of the shard this thread runs, if the shard's driver is
    /// a transport backend.
    pub(crate) fn current() -> Option<Rc<Reactor>> {
        CURRENT.with(|current| current.borrow().clone())
    }

    /// Drives `listener` from this reactor.
    pub(crate) fn listener(self: &Rc<Reactor>, listener: Bound) -> io::Result<Listener> {
        match (&**self, listener) {
            (Reactor::Uring(_), Bound::Tcp(listener)) => {
                uring::Listener::new(self.clone(), listener).map(Listener::Uring)
            }
            (Reactor::Epoll(_), Bound::Tcp(listener)) => {
                epoll::Listener::new(self.clone(), listener).map(Listener::Epoll)
            }
            (Reactor::Sim(_), Bound::Sim(listener)) => Ok(Listener::Sim(listener)),
            _ => Err(other_backend()),
        }
    }

    /// Starts connecting to `addr`, over TCP with the congestion control
    /// `congestion` (the system's if `None`); see
    /// [`Stream::poll_connected`].
    pub(crate) fn connect(
        self: &Rc<Reactor>,
        addr: SocketAddr,
        congestion: Option<&str>,
    ) -> io::Result<Stream> {
        if let Reactor::Sim(reactor) = &**self {
            return reactor.connect(addr).map(Stream::Sim);
        }
        let stream = sockopt::connect(addr, |socket| match congestion {
            Some(name) => sockopt::set_congestion_control(socket, name),
            None => Ok(()),
        })?;
        stream.set_nodelay(true)?;
        self.adopt(Socket::Tcp(stream))
    }

    /// Makes a connected (or connecting, for TCP non-blocking) socket a
    /// [`Stream`] of this reactor.
    pub(crate) fn adopt(self: &Rc<Reactor>, socket: Socket) -> io::Result<Stream> {
        match (&**self, socket) {
            (Reactor::Uring(_), Socket::Tcp(stream)) => {
                uring::Stream::new(self.clone(), stream).map(Stream::Uring)
            }
            (Reactor::Epoll(_), Socket::Tcp(stream)) => {
                epoll::Stream::new(self.clone(), stream).map(Stream::Epoll)
            }
            (Reactor::Sim(_), Socket::Sim(stream)) => Ok(Stream::Sim(stream)),
            _ => Err(other_backend()),
        }
    }
}

/// A socket of one backend handed to another's reactor.
fn other_backend() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "a socket of another I/O backend",
    )
}

/// A listening socket.
pub(crate) enum Listener {
    Uring(uring::Listener),
    Epoll(epoll::Listener),
    Sim(sim::Listener),
}

impl Listener {
    /// The next accepted connection, not yet bound to a reactor (for TCP
    /// non-blocking with `TCP_NODELAY` set): the process that will own it
    /// adopts it on its own shard with [`Reactor::adopt`].
    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Socket, SocketAddr)>> {
        let (stream, addr) = std::task::ready!(match self {
            Listener::Uring(listener) => listener.poll_accept(cx),
            Listener::Epoll(listener) => listener.poll_accept(cx),
            Listener::Sim(listener) => {
                return listener
                    .poll_accept(cx)
                    .map_ok(|(stream, addr)| (Socket::Sim(stream), addr));
            }
        })?;
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Poll::Ready(Ok((Socket::Tcp(stream), addr)))
    }
}

/// The buffer a stream receives into: aligned for the frames read in place
/// from it.
pub(crate) type RecvBuf = rkyv::util::AlignedVec<PAYLOAD_ALIGN>;

/// A TCP stream driven by the current shard's reactor.
pub(crate) enum Stream {
    Uring(uring::Stream),
    Epoll(epoll::Stream),
    Sim(sim::Stream),
}

impl Stream {
    /// Ready once a connect started by [`Reactor::connect`] has finished;
    /// ready at once for an accepted stream. The outcome stays: every
    /// later call returns it again.
    pub(crate) fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Uring(stream) => stream.poll_connected(cx),
            Stream::Epoll(stream) => stream.poll_connected(cx),
            Stream::Sim(stream) => stream.poll_connected(cx),
        }
    }

    /// Receives bytes into `buf[range]` and returns how many arrived there;
    /// `Ready(Ok(0))` means the peer closed its side. `range` must be a
    /// non-empty range of `buf`.
    ///
    /// The buffer is lent, not borrowed: a backend that receives in place
    /// may take it (leaving `buf` empty) while the receive is pending.
    /// Until this returns `Ready`, call it again with the same `buf` and
    /// `range` and neither read nor change `buf` in between; it comes back
    /// with the bytes at `range` and the rest as it was. Dropping the
    /// stream instead is fine: the backend keeps the buffer until the
    /// kernel is done with it.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut RecvBuf,
        range: Range<usize>,
    ) -> Poll<io::Result<usize>> {
        match self {
            // It checks the range itself: while it holds the buffer, the
            // caller's is empty.
            Stream::Uring(stream) => stream.poll_recv(cx, buf, range),
            Stream::Epoll(stream) => stream.poll_recv(cx, receive_range(buf, range)?),
            Stream::Sim(stream) => stream.poll_recv(cx, receive_range(buf, range)?),
        }
    }

    /// Where this stream's bytes are received: see [`ReceiveBuffers`].
    /// Only io_uring has a choice; the others read into the caller's
    /// buffer.
    pub(crate) fn set_receive_buffers(&self, buffers: ReceiveBuffers) {
        if let Stream::Uring(stream) = self {
            stream.set_receive_buffers(buffers);
        }
    }

    /// Whether the stream's next receive goes straight into the reader's
    /// buffer: always on epoll, as [`ReceiveBuffers`] says on io_uring.
    #[cfg(test)]
    pub(crate) fn receives_in_place(&self) -> bool {
        match self {
            Stream::Uring(stream) => stream.receives_in_place(),
            Stream::Epoll(_) | Stream::Sim(_) => true,
        }
    }

    /// Starts writing all of `buf`. One send at a time: call only when no
    /// send is in flight (after [`Stream::poll_sent`] returned).
    pub(crate) fn start_send(&self, buf: Vec<u8>) {
        match self {
            Stream::Uring(stream) => stream.start_send(buf),
            Stream::Epoll(stream) => stream.start_send(buf),
            Stream::Sim(stream) => stream.start_send(buf),
        }
    }

    /// Sends go out at most `bytes` at a time (one system call or request
    /// each; default 256 KiB, at most 1 MiB), with the shard's other work in
    /// between: smaller slices for low-priority bulk traffic let a
    /// high-priority connection's send or receive in sooner.
    pub(crate) fn set_send_slice(&self, bytes: usize) {
        match self {
            Stream::Uring(stream) => stream.set_send_slice(bytes),
            Stream::Epoll(stream) => stream.set_send_slice(bytes),
            // The simulated network takes a send whole, at once.
            Stream::Sim(_) => {}
        }
    }

    /// The kernel holds at most `bytes` of this stream's unsent data
    /// ([`ChannelSpec::unsent_low_water`](crate::ChannelSpec#structfield.unsent_low_water));
    /// the simulated network has no such queue.
    pub(crate) fn set_unsent_low_water(&self, bytes: u32) -> io::Result<()> {
        self.with_socket(|socket| sockopt::set_unsent_low_water(socket, bytes))
            .unwrap_or(Ok(()))
    }

    /// The stream's `TCP_NOTSENT_LOWAT` (0: the system's), if it has a
    /// socket.
    #[cfg(test)]
    pub(crate) fn unsent_low_water(&self) -> Option<io::Result<u32>> {
        self.with_socket(sockopt::unsent_low_water)
    }

    /// The stream's TCP congestion control, if it has a socket.
    #[cfg(test)]
    pub(crate) fn congestion_control(&self) -> Option<io::Result<String>> {
        self.with_socket(sockopt::congestion_control)
    }

    /// Sets the stream's socket send buffer (`SO_SNDBUF`).
    #[cfg(test)]
    pub(crate) fn set_send_buffer(&self, bytes: u32) -> Option<io::Result<()>> {
        self.with_socket(|socket| sockopt::set_send_buffer(socket, bytes))
    }

    /// Runs `f` on the stream's socket; `None` on the simulated network.
    fn with_socket<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        match self {
            Stream::Uring(stream) => stream.with_socket(f),
            Stream::Epoll(stream) => Some(stream.with_socket(f)),
            Stream::Sim(_) => None,
        }
    }

    /// The stream is background traffic: its sends and in-place receives
    /// run on the kernel's worker threads instead of the shard's
    /// (io_uring's `IOSQE_ASYNC`) while the shard has foreground traffic —
    /// a completion on a stream that is not background, in the last few
    /// milliseconds. The copies between the socket and the stream's
    /// buffers (over loopback, the other side's work too) then leave the
    /// shard free for it, for a hand-off per request; with nothing to make
    /// way for, they stay inline. The shard puts its worker threads in the
    /// `SCHED_IDLE` class, so that on a shared core they run when the shard
    /// has nothing to do rather than taking turns with it. A multishot
    /// receive into shared buffers stays on the shard, as do epoll's and
    /// the simulated network's reads and writes.
    pub(crate) fn set_background(&self, background: bool) {
        if let Stream::Uring(stream) = self {
            stream.set_background(background);
        }
    }

    /// The writer does not read or keep what it sent. A send is done for
    /// its writer as soon as the kernel has taken all the bytes, but
    /// io_uring keeps a zero-copy send's buffer until the kernel's
    /// notifications are in, which wait for the peer's acknowledgement (a
    /// peer may delay that by tens of milliseconds): meanwhile the writer
    /// gets a copy of its buffer, or with this an empty one, saving the
    /// copy. Off by default (an acknowledged channel keeps the frames it
    /// sent until the peer acknowledges them). Epoll and the simulated
    /// network give the buffer itself back at once anyway.
    pub(crate) fn set_sent_unread(&self, unread: bool) {
        if let Stream::Uring(stream) = self {
            stream.set_sent_unread(unread);
        }
    }

    /// Whether a send is in flight.
    pub(crate) fn sending(&self) -> bool {
        match self {
            Stream::Uring(stream) => stream.sending(),
            Stream::Epoll(stream) => stream.sending(),
            Stream::Sim(stream) => stream.sending(),
        }
    }

    /// The buffer of the send in flight, once all of it is written or the
    /// stream failed; a copy, or an empty one with
    /// [`Stream::set_sent_unread`], while the kernel may still read it.
    pub(crate) fn poll_sent(&self, cx: &mut Context<'_>) -> Poll<(Vec<u8>, io::Result<()>)> {
        match self {
            Stream::Uring(stream) => stream.poll_sent(cx),
            Stream::Epoll(stream) => stream.poll_sent(cx),
            Stream::Sim(stream) => stream.poll_sent(cx),
        }
    }

    /// Whether this stream's next send or in-place receive would run on
    /// the kernel's worker threads (see [`Stream::set_background`]); never
    /// on epoll.
    #[cfg(test)]
    pub(crate) fn in_background(&self) -> bool {
        match self {
            Stream::Uring(stream) => stream.in_background(),
            Stream::Epoll(_) | Stream::Sim(_) => false,
        }
    }

    /// Whether this stream's sends from the zero-copy threshold up still go
    /// out zero-copy: on io_uring until the kernel reports that it copied
    /// one (as it does over loopback); never on epoll.
    #[cfg(test)]
    pub(crate) fn sends_zero_copy(&self) -> bool {
        match self {
            Stream::Uring(stream) => stream.sends_zero_copy(),
            Stream::Epoll(_) | Stream::Sim(_) => false,
        }
    }

    /// Shuts the connection down both ways: a send in flight ends (its
    /// buffer comes back through [`Stream::poll_sent`] with an error or
    /// fully written), receives see end of stream.
    pub(crate) fn shutdown(&self) {
        let result = match self {
            Stream::Uring(stream) => stream.shutdown(),
            Stream::Epoll(stream) => stream.shutdown(),
            Stream::Sim(stream) => stream.shutdown(),
        };
        // Not connected (any more) is as shut down as it gets.
        drop(result);
    }
}

/// `buf[range]`, if that is a non-empty range of it.
fn receive_range(buf: &mut RecvBuf, range: Range<usize>) -> io::Result<&mut [u8]> {
    match buf.get_mut(range) {
        Some(dst) if !dst.is_empty() => Ok(dst),
        _ => Err(io::ErrorKind::InvalidInput.into()),
    }
}

/// Installs `reactor` as this thread's: a driver's `enter`.
fn enter(reactor: Reactor) {
    CURRENT.with(|current| *current.borrow_mut() = Some(Rc::new(reactor)));
}

/// Uninstalls this thread's reactor: a simulated node's driver between its
/// turns.
fn leave() {
    CURRENT.with(|current| current.borrow_mut().take());
}

/// Runs `f` on this thread's reactor, if it has one: a driver's `poll` and
/// `park`.
fn with_reactor<R>(f: impl FnOnce(&Reactor) -> R) -> Option<R> {
    let reactor = Reactor::current()?;
    Some(f(&reactor))
}
