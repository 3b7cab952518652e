//! The epoll backend, through `mio`: readiness, then a non-blocking
//! syscall.
//!
//! mio's readiness is edge-triggered: an event says "something changed", so
//! a source is marked readable (writable) when an event arrives and
//! unmarked only when a syscall returns `WouldBlock`; a `poll_*` that finds
//! it unmarked stores its waker and waits for the next event. Every source
//! belongs to one shard and is touched only on that shard's thread, so the
//! marks need no synchronisation.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use foundation_sched::coop;
use foundation_sched::driver::{Driver, Unpark};
use mio::{Events, Interest, Token};

use super::Reactor as AnyReactor;
use crate::channel::{DEFAULT_SEND_SLICE, MAX_SEND_SLICE};

/// The token of the driver's own waker.
const WAKE: Token = Token(usize::MAX);

/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// Checks that epoll can be set up.
pub(crate) fn probe() -> io::Result<()> {
    mio::Poll::new().map(drop)
}

/// A shard driver that waits in `epoll_wait`.
pub(crate) struct EpollDriver {
    poll: Option<mio::Poll>,
    unpark: Arc<MioUnpark>,
}

struct MioUnpark(mio::Waker);

impl Unpark for MioUnpark {
    fn unpark(&self) {
        // A failed wake (the eventfd counter is full) means a wake is
        // already pending: nothing is lost.
        let _ = self.0.wake();
    }
}

impl EpollDriver {
    /// A driver with its own epoll instance.
    pub(crate) fn new() -> io::Result<EpollDriver> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE)?;
        Ok(EpollDriver {
            poll: Some(poll),
            unpark: Arc::new(MioUnpark(waker)),
        })
    }
}

impl Driver for EpollDriver {
    fn enter(&mut self) {
        if let Some(poll) = self.poll.take() {
            super::enter(AnyReactor::Epoll(Reactor {
                poll: RefCell::new(poll),
                events: RefCell::new(Events::with_capacity(EVENTS)),
                sources: RefCell::new(Sources::default()),
            }));
        }
    }

    fn poll(&mut self) -> bool {
        super::with_reactor(|reactor| match reactor {
            AnyReactor::Epoll(reactor) => reactor.turn(Some(Duration::ZERO)),
            _ => false,
        })
        .unwrap_or(false)
    }

    fn park(&mut self, timeout: Option<Duration>) {
        super::with_reactor(|reactor| match reactor {
            AnyReactor::Epoll(reactor) => reactor.turn(timeout),
            _ => false,
        });
    }

    fn unparker(&self) -> Arc<dyn Unpark> {
        self.unpark.clone()
    }
}

/// A shard's epoll instance and the readiness of its sources.
pub(crate) struct Reactor {
    poll: RefCell<mio::Poll>,
    events: RefCell<Events>,
    sources: RefCell<Sources>,
}

/// Readiness and waiting tasks per source, indexed by token.
#[derive(Default)]
struct Sources {
    slots: Vec<Option<Source>>,
    free: Vec<usize>,
}

#[derive(Default)]
struct Source {
    readable: bool,
    writable: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Reactor {
    /// Waits up to `timeout` for events and wakes the tasks they concern.
    /// Returns whether it woke any.
    fn turn(&self, timeout: Option<Duration>) -> bool {
        let mut events = self.events.borrow_mut();
        if let Err(error) = self.poll.borrow_mut().poll(&mut events, timeout) {
            if error.kind() != io::ErrorKind::Interrupted {
                tracing::error!("epoll_wait failed: {error}");
            }
            return false;
        }
        let mut woke = false;
        let mut wakers = Vec::new();
        {
            let mut sources = self.sources.borrow_mut();
            for event in events.iter() {
                let Some(Some(source)) = sources.slots.get_mut(event.token().0) else {
                    continue; // The waker's token, or a source closed since.
                };
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    source.readable = true;
                    wakers.extend(source.reader.take());
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    source.writable = true;
                    wakers.extend(source.writer.take());
                }
            }
        }
        for waker in wakers {
            woke = true;
            waker.wake();
        }
        woke
    }

    fn register(&self, source: &mut impl mio::event::Source) -> io::Result<Token> {
        let mut sources = self.sources.borrow_mut();
        let index = match sources.free.pop() {
            Some(index) => index,
            None => {
                sources.slots.push(None);
                sources.slots.len() - 1
            }
        };
        let token = Token(index);
        if let Err(error) = self.poll.borrow().registry().register(
            source,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            sources.free.push(index);
            return Err(error);
        }
        sources.slots[index] = Some(Source::default());
        Ok(token)
    }

    fn deregister(&self, source: &mut impl mio::event::Source, token: Token) {
        let _ = self.poll.borrow().registry().deregister(source);
        let mut sources = self.sources.borrow_mut();
        sources.slots[token.0] = None;
        sources.free.push(token.0);
    }

    /// Runs `io` while `token` is marked ready in `direction`; on
    /// `WouldBlock` unmarks it and parks the task's waker.
    fn drive<T>(
        &self,
        token: Token,
        direction: Direction,
        cx: &mut Context<'_>,
        mut io: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            {
                let mut sources = self.sources.borrow_mut();
                let Some(Some(source)) = sources.slots.get_mut(token.0) else {
                    return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
                };
                let (ready, waiter) = match direction {
                    Direction::Read => (&mut source.readable, &mut source.reader),
                    Direction::Write => (&mut source.writable, &mut source.writer),
                };
                if !*ready {
                    *waiter = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            match io() {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let mut sources = self.sources.borrow_mut();
                    if let Some(Some(source)) = sources.slots.get_mut(token.0) {
                        match direction {
                            Direction::Read => source.readable = false,
                            Direction::Write => source.writable = false,
                        }
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                result => return Poll::Ready(result),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

fn this(reactor: &AnyReactor) -> &Reactor {
    match reactor {
        AnyReactor::Epoll(reactor) => reactor,
        _ => unreachable!("an epoll socket on a shard of another backend"),
    }
}

/// A listening socket registered with a shard's epoll.
pub(crate) struct Listener {
    reactor: Rc<AnyReactor>,
    listener: mio::net::TcpListener,
    token: Token,
}

impl Listener {
    pub(crate) fn new(
        reactor: Rc<AnyReactor>,
        listener: std::net::TcpListener,
    ) -> io::Result<Listener> {
        let mut listener = mio::net::TcpListener::from_std(listener);
        let token = this(&reactor).register(&mut listener)?;
        Ok(Listener {
            reactor,
            listener,
            token,
        })
    }

    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(std::net::TcpStream, SocketAddr)>> {
        this(&self.reactor).drive(self.token, Direction::Read, cx, || {
            let (stream, addr) = self.listener.accept()?;
            Ok((std::net::TcpStream::from(stream), addr))
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        this(&self.reactor).deregister(&mut self.listener, self.token);
    }
}

/// A TCP stream registered with a shard's epoll.
pub(crate) struct Stream {
    reactor: Rc<AnyReactor>,
    stream: RefCell<mio::net::TcpStream>,
    token: Token,
    /// The send in flight and how much of it is written.
    send: RefCell<Option<(Vec<u8>, usize)>>,
    /// How the connect ended, once it has (`SO_ERROR` reads only once).
    connected: Cell<Option<Result<(), i32>>>,
    /// Most bytes written per poll ([`Stream::set_send_slice`]).
    send_slice: Cell<usize>,
}

impl Stream {
    pub(crate) fn new(reactor: Rc<AnyReactor>, stream: std::net::TcpStream) -> io::Result<Stream> {
        let mut stream = mio::net::TcpStream::from_std(stream);
        let token = this(&reactor).register(&mut stream)?;
        Ok(Stream {
            reactor,
            stream: RefCell::new(stream),
            token,
            send: RefCell::new(None),
            connected: Cell::new(None),
            send_slice: Cell::new(DEFAULT_SEND_SLICE as usize),
        })
    }

    pub(crate) fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(outcome) = self.connected.get() {
            return Poll::Ready(outcome.map_err(io::Error::from_raw_os_error));
        }
        let outcome = this(&self.reactor).drive(self.token, Direction::Write, cx, || {
            let stream = self.stream.borrow();
            if let Some(error) = stream.take_error()? {
                return Err(error);
            }
            match stream.peer_addr() {
                Ok(_) => Ok(()),
                // Not connected yet: wait for the next writable event.
                Err(error) if error.kind() == io::ErrorKind::NotConnected => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Err(error) => Err(error),
            }
        });
        if let Poll::Ready(outcome) = &outcome {
            let code = |error: &io::Error| error.raw_os_error().unwrap_or(libc::EIO);
            self.connected
                .set(Some(outcome.as_ref().map(|_| ()).map_err(code)));
        }
        outcome
    }

    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        this(&self.reactor).drive(self.token, Direction::Read, cx, || {
            self.stream.borrow_mut().read(dst)
        })
    }

    pub(crate) fn start_send(&self, buf: Vec<u8>) {
        let previous = self.send.borrow_mut().replace((buf, 0));
        debug_assert!(previous.is_none(), "one send in flight per stream");
    }

    pub(crate) fn set_send_slice(&self, bytes: usize) {
        self.send_slice.set(bytes.clamp(1, MAX_SEND_SLICE as usize));
    }

    /// Runs `f` on the stream's socket.
    pub(crate) fn with_socket<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> R {
        f(self.stream.borrow().as_fd())
    }

    pub(crate) fn sending(&self) -> bool {
        self.send.borrow().is_some()
    }

    pub(crate) fn shutdown(&self) -> io::Result<()> {
        self.stream.borrow().shutdown(std::net::Shutdown::Both)
    }

    pub(crate) fn poll_sent(&self, cx: &mut Context<'_>) -> Poll<(Vec<u8>, io::Result<()>)> {
        let result = this(&self.reactor).drive(self.token, Direction::Write, cx, || {
            let mut send = self.send.borrow_mut();
            let Some((buf, written)) = send.as_mut() else {
                return Ok(true);
            };
            let mut this_call = 0;
            let result = loop {
                if *written == buf.len() {
                    break Ok(true);
                }
                let slice = self.send_slice.get();
                if this_call >= slice {
                    break Ok(false);
                }
                let end = buf.len().min(*written + slice);
                match self.stream.borrow_mut().write(&buf[*written..end]) {
                    Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        *written += n;
                        this_call += n;
                    }
                    Err(error) => break Err(error),
                }
            };
            // The copy into the socket is work done on the shard's thread
            // for the process that drives the stream: charged to its
            // budget, so a long send lets the shard look at I/O sooner.
            if this_call > 0 {
                coop::charge(coop::reductions_for(this_call));
            }
            result
        });
        match result {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(false)) => {
                // A slice went out and the socket may take more: come back
                // after the shard's other processes had their turn.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(result) => {
                let result = result.map(drop);
                let buf = self
                    .send
                    .borrow_mut()
                    .take()
                    .map_or_else(Vec::new, |(buf, _)| buf);
                Poll::Ready((buf, result))
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        this(&self.reactor).deregister(self.stream.get_mut(), self.token);
    }
}
