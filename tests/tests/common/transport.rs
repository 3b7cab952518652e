//! What the `transport_*` suites share: one test per backend, nodes that
//! stop with the test, the messages they exchange, and a receiver process
//! that reports to the test thread. A peer that is not a proper node is
//! in [`super::raw_peer`].

use std::ops::Deref;
use std::sync::mpsc;
use std::time::Duration;

use foundation::transport::{
    Backend, ChannelId, ConnectionError, Cookie, IoOptions, Remote, SendError, Transport,
    TransportConfig, BACKEND_ENV,
};
use foundation::{Addr, Context, Envelope, NodeId, Pid, Runtime};
use rkyv::{Archive, Deserialize, Serialize};

/// The cookie of the cluster every test builds.
pub(crate) const COOKIE: &str = "foundation-tests";

/// How long the test thread waits for a message that must arrive: only a
/// bound, so that a lost message fails the test instead of hanging it.
pub(crate) const ARRIVAL: Duration = Duration::from_secs(20);

/// Generates, for each named test body `fn(Backend)`, a module of two
/// `#[test]`s, `io_uring` and `epoll`, that run it on that backend (see
/// [`run_on`]).
#[allow(unused_macros, reason = "only the transport suites use it")]
macro_rules! on_each_backend {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use foundation::transport::Backend;

            #[test]
            fn io_uring() {
                $crate::common::transport::run_on(Backend::IoUring, super::$case);
            }

            #[test]
            fn epoll() {
                $crate::common::transport::run_on(Backend::Epoll, super::$case);
            }
        }
    )*};
}
#[allow(unused_imports, reason = "only the transport suites use it")]
pub(crate) use on_each_backend;

/// Runs `test` on `backend`, or says why it is skipped: the kernel refuses
/// the backend (io_uring in a container), or `FOUNDATION_BACKEND` forces
/// the other one (CI re-runs the suite with `FOUNDATION_BACKEND=epoll`).
pub(crate) fn run_on(backend: Backend, test: fn(Backend)) {
    if let Ok(forced) = std::env::var(BACKEND_ENV) {
        if backend_named(&forced).is_some_and(|forced| forced != backend) {
            eprintln!("skipped on {backend}: {BACKEND_ENV}={forced}");
            return;
        }
    }
    if let Err(error) = backend.probe(&IoOptions::default()) {
        eprintln!("skipped on {backend}: unavailable here ({error})");
        return;
    }
    test(backend);
}

/// The backend `FOUNDATION_BACKEND` names, spelled as `Backend::select`
/// accepts it.
fn backend_named(name: &str) -> Option<Backend> {
    match name {
        "io_uring" | "uring" | "io-uring" => Some(Backend::IoUring),
        "epoll" => Some(Backend::Epoll),
        _ => None,
    }
}

/// A test node's configuration: the default channels, this test's
/// backend, and a short reconnect backoff so that a test that cuts
/// connections does not wait seconds for the redial.
pub(crate) fn config(backend: Backend) -> TransportConfig {
    let mut config = TransportConfig::new("test-node", Cookie::new(COOKIE));
    config.backend = Some(backend);
    config.reconnect_max = Duration::from_millis(200);
    config
}

/// A runtime of two shards with a transport, stopped when dropped (also
/// when the test fails, so a failed test does not leave threads behind).
/// The node id is the lowest free one in this OS process: the tests of a
/// suite run in parallel, and ids must be unique among live runtimes.
pub(crate) struct Node {
    /// The node's runtime.
    pub(crate) runtime: Runtime,
    transport: Transport,
}

impl Node {
    /// Starts a node with `config`.
    pub(crate) fn start(config: TransportConfig) -> Node {
        let backend = config.backend;
        let (runtime, transport) =
            Transport::start(Runtime::builder().shards(2), config).expect("the node starts");
        if let Some(backend) = backend {
            assert_eq!(transport.backend(), backend);
        }
        Node { runtime, transport }
    }

    /// A clone of the node's transport, to move into a process.
    pub(crate) fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Whether every lane of every channel to `peer` is connected.
    pub(crate) fn fully_connected(&self, peer: NodeId) -> bool {
        (0..self.channels().len() as u16).all(|channel| self.is_connected(peer, ChannelId(channel)))
    }

    /// Makes `other` a peer of this node, at its listen address.
    pub(crate) fn connect_to(&self, other: &Node) {
        self.add_peer(other.node(), other.local_addr())
            .expect("a new peer");
    }

    /// Spawns a process that receives `Remote<T>` and hands each message to
    /// `forward`, with the test thread at the other end of the returned
    /// channel; registers it with the transport.
    pub(crate) fn receiver<T, R>(
        &self,
        forward: impl Fn(&Remote<T>) -> R + Send + 'static,
    ) -> (Addr<Remote<T>>, mpsc::Receiver<R>)
    where
        T: foundation::transport::frame::Wire + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let addr = self
            .runtime
            .spawn(move |cx: Context<Remote<T>>| async move {
                while let Envelope::Msg(message) = cx.recv().await {
                    if tx.send(forward(&message)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the receiver");
        self.register(&addr);
        (addr, rx)
    }

    /// Spawns a process on this node that sends `messages` in order to
    /// `to`, each on its channel, with [`Transport::send`]; it reports to
    /// the returned channel the first error, or `Ok` once all were taken.
    pub(crate) fn sender(
        &self,
        to: Pid,
        messages: Vec<(ChannelId, Numbered)>,
    ) -> mpsc::Receiver<Result<(), SendError>> {
        let (tx, rx) = mpsc::channel();
        let transport = self.transport();
        self.runtime
            .spawn(move |cx: Context<()>| async move {
                for (channel, message) in &messages {
                    if let Err(error) = transport.send(cx.pid(), to, *channel, message).await {
                        let _ = tx.send(Err(error));
                        return;
                    }
                }
                let _ = tx.send(Ok(()));
            })
            .expect("spawn the sender");
        rx
    }

    /// Runs `sends` as a process on this node and waits for its result.
    pub(crate) fn run<T, F, Fut>(&self, sends: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Context<()>, Transport) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        let transport = self.transport.clone();
        self.runtime
            .block_on(move |cx: Context<()>| sends(cx, transport))
            .expect("the process ends normally")
    }

    /// Polls from the test thread until this node's recent errors hold one
    /// that `matches`, for at most [`super::PATIENCE`]; panics with `what`
    /// and the errors there are if none does.
    pub(crate) fn expect_error(
        &self,
        what: &str,
        matches: impl Fn(&ConnectionError) -> bool,
    ) -> ConnectionError {
        let mut found = None;
        let _ = super::within_patience(|| {
            found = self.recent_errors().into_iter().find(&matches);
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no {what} within {:?}; recent errors {:?}, {:?}",
                super::PATIENCE,
                self.recent_errors(),
                self.stats()
            )
        })
    }
}

impl Deref for Node {
    type Target = Transport;

    fn deref(&self) -> &Transport {
        &self.transport
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.transport.stop();
    }
}

/// A message with its sender's index and its place in the sender's
/// sequence, and a body whose bytes follow from both (see [`body`]).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Numbered {
    /// Which sender of the test sent it.
    pub(crate) sender: u32,
    /// Its place in that sender's sequence, from 0.
    pub(crate) seq: u64,
    /// [`body`]`(sender, seq, len)`.
    pub(crate) body: Vec<u8>,
}

impl Numbered {
    /// Message `seq` of `sender`, with a body of `len` bytes.
    pub(crate) fn new(sender: u32, seq: u64, len: usize) -> Numbered {
        Numbered {
            sender,
            seq,
            body: body(sender, seq, len),
        }
    }
}

/// What a receiver saw of one [`Numbered`]: who sent it, its number, and
/// whether its body arrived intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The sending process.
    pub(crate) source: Pid,
    /// The sender's index.
    pub(crate) sender: u32,
    /// Its number.
    pub(crate) seq: u64,
    /// The body's length.
    pub(crate) len: usize,
    /// Whether the body holds the bytes it was sent with.
    pub(crate) intact: bool,
    /// The channel it came on.
    pub(crate) channel: u16,
}

impl Seen {
    /// Reads a received [`Numbered`] in place.
    pub(crate) fn of(message: &Remote<Numbered>) -> Seen {
        let sender = message.sender.to_native();
        let seq = message.seq.to_native();
        let len = message.body.len();
        Seen {
            source: message.source(),
            sender,
            seq,
            len,
            intact: message.body.as_slice() == body(sender, seq, len).as_slice(),
            channel: message.channel().0,
        }
    }
}

/// The bytes of a [`Numbered`] body: a pattern that differs per sender
/// and message, so that a chunk put in the wrong place shows.
pub(crate) fn body(sender: u32, seq: u64, len: usize) -> Vec<u8> {
    let start = (seq as u32).wrapping_mul(31).wrapping_add(sender * 7);
    (0..len as u32)
        .map(|i| (start.wrapping_add(i) % 251) as u8)
        .collect()
}

/// Receives `count` values from `rx`, each within [`ARRIVAL`]; panics with
/// what arrived so far when one does not come.
pub(crate) fn collect<R: std::fmt::Debug>(rx: &mpsc::Receiver<R>, count: usize) -> Vec<R> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        match rx.recv_timeout(ARRIVAL) {
            Ok(value) => seen.push(value),
            Err(error) => panic!(
                "{error:?} after {} of {count} (last: {:?})",
                seen.len(),
                seen.last()
            ),
        }
    }
    seen
}
