//! Foundation's transport: bytes between nodes.
//!
//! A [`Transport`] connects one node's runtime to its peers over TCP. It is
//! built from the pieces the architecture (`DESIGN.md`, *transport*) names:
//!
//! - **Backends** ([`Backend`]): io_uring, one ring per shard, or epoll
//!   through `mio`; the shard's driver *is* the reactor, so a shard parks in
//!   one wait for I/O, cross-shard messages and timers. `sys/mod.rs`
//!   documents the contract both implement.
//! - **Frames** ([`frame`]): a 48-byte little-endian header and an rkyv
//!   payload at 16-byte alignment, validated before delivery and read in
//!   place by the receiver ([`Remote`]).
//! - **Handshake**: protocol version, node name and id, and a cookie proved
//!   by HMAC challenge-response; a mismatch is a typed [`HandshakeError`] on
//!   both sides.
//! - **Connections to this host** take the TCP congestion control `cubic`
//!   ([`TransportConfig::loopback_congestion_control`]): a pacing one such
//!   as `bbr`, without the `fq` queueing discipline, paces every loopback
//!   connection with timers that make room for nothing.
//! - **Channels** ([`ChannelSpec`]): named, prioritized, each with its own
//!   connections (*parallelism* of them per peer), delivery guarantee,
//!   maximum frame and credit window. Defaults: `control`, `data`,
//!   `gossip`, `bulk`. A channel's connection processes run at its process
//!   priority ([`ChannelSpec::process_priority`]): each shard's run queue
//!   is the priority-ordered send scheduler, so a control frame is written
//!   and read before the bulk traffic queued on the same shard, and sends
//!   and receives go in slices (receives of at most 256 KiB, sends as the
//!   channel says) between which the shard looks at its run queue again.
//! - **Backpressure**: credit per (peer, channel, lane), granted back as the
//!   receiving processes drop what they received; [`Transport::try_send`]
//!   says [`SendError::WouldBlock`], [`Transport::send`] waits. Beside
//!   credit, a lane holds at most 256 KiB of frames its connection has not
//!   taken yet (eight frames, up to 1 MiB, when they are large), as a
//!   socket's send buffer would: a sender far ahead of its connection would
//!   otherwise fill the whole window with frames that are out of the cache
//!   by the time they are written. Below the lane, the kernel holds at most
//!   16 KiB unsent per connection of `control`, `data` and `gossip`
//!   ([`ChannelSpec::unsent_low_water`](ChannelSpec#structfield.unsent_low_water)),
//!   so what waits, waits in the lane, under credit.
//! - **Batching**: a process's messages to one lane within one poll after
//!   the first are staged on its shard and handed to the lane together
//!   when the poll ends, under room reserved in advance, so a process
//!   sending small messages in a loop takes the lane's lock once per poll
//!   rather than per message; backpressure is the same as unstaged. Frames
//!   above 16 KiB are not staged: each is encoded straight onto the lane,
//!   so it is written once on its way to the socket, and a sender that
//!   finds no room for it waits before encoding it, not after.
//! - **Large messages** are cut into chunk frames of the channel's maximum
//!   and reassembled before delivery. Once a lane has carried one, the
//!   next of its size is serialized straight into chunk frames on the
//!   lane, all at once, if it takes at most half the window (larger ones
//!   go chunk by chunk as credit returns). They travel on the channel they
//!   were sent on, which keeps that channel's order (a small message sent
//!   after a large one does not overtake it); large payloads belong on
//!   `bulk`, whose frames are 1 MiB and whose connections run at low
//!   priority.
//! - **Bad input** closes only the connection it came on, with a typed
//!   [`ConnectionError`] in the log, in [`Transport::recent_errors`] and in
//!   a counter ([`TransportStats`]). A frame whose source names another
//!   node's process closes it too: a node speaks only for its own. A sound
//!   frame whose payload is not what its process takes is dropped and
//!   reported the same way, and the connection stays.
//!
//! # Example
//!
//! Two nodes in one process, one message from a process on the first to a
//! process on the second:
//!
//! ```
//! use foundation_sched::{Context, NodeId, Runtime};
//! use foundation_transport::{ChannelId, Cookie, Remote, Transport, TransportConfig};
//!
//! let start = |node: u16| {
//!     let builder = Runtime::builder().shards(1).node(NodeId(node));
//!     let config = TransportConfig::new(format!("node-{node}"), Cookie::new("secret"));
//!     Transport::start(builder, config).unwrap()
//! };
//! let (runtime_a, a) = start(1);
//! let (runtime_b, b) = start(2);
//! a.add_peer(NodeId(2), b.local_addr()).unwrap();
//!
//! // A process on node 2 that receives a `String` from afar.
//! let (tx, rx) = std::sync::mpsc::channel();
//! let receiver = runtime_b
//!     .spawn(move |cx: Context<Remote<String>>| async move {
//!         let message = cx.recv().await.into_msg().unwrap();
//!         tx.send(message.as_str().to_owned()).unwrap();
//!     })
//!     .unwrap();
//! b.register(&receiver);
//!
//! let sender = a.clone();
//! runtime_a
//!     .spawn(move |cx: Context<()>| async move {
//!         let hello = String::from("hello from node 1");
//!         sender.send(cx.pid(), receiver.pid(), ChannelId::DATA, &hello).await.unwrap();
//!     })
//!     .unwrap();
//! assert_eq!(rx.recv().unwrap(), "hello from node 1");
//! # a.stop(); b.stop();
//! # runtime_a.shutdown(); runtime_b.shutdown();
//! ```

#![deny(unsafe_code)]

mod block;
mod channel;
mod connection;
pub mod fault;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod inbound;
mod lane;
mod route;
mod stage;
mod sys;

pub use channel::{
    ChannelId, ChannelSpec, ConfigError, Delivery, ReceiveBuffers, WhenDisconnected,
};
pub use handshake::{Cookie, HandshakeError, PROTOCOL_VERSION};
pub use inbound::Remote;
pub use sys::{sim, Backend, BackendError, IoOptions, BACKEND_ENV};

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Poll, Waker};
use std::time::Duration;

use foundation_sched::{
    coop, Addr, Builder, Context, Handle, NodeId, Pid, Placement, Runtime, ShardId, SpawnOptions,
};

use crate::block::Block;
use crate::fault::Faults;
use crate::frame::{FrameError, FrameHeader, FrameKind, Wire, HEADER_LEN};
use crate::handshake::{Accepted, Entropy, Identity};
use crate::inbound::{EndpointCache, Endpoints, Received};
use crate::lane::{Encoded, Lane, Push};
use crate::stage::Route;
use crate::sys::{Bound, Reactor};

/// How a node's transport is set up.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The node's name, shown to peers.
    pub name: String,
    /// The cluster's shared secret.
    pub cookie: Cookie,
    /// Where to listen (default `127.0.0.1:0`: loopback, any free port).
    pub listen: SocketAddr,
    /// The channels, in [`ChannelId`] order (default
    /// [`ChannelSpec::defaults`]).
    pub channels: Vec<ChannelSpec>,
    /// The I/O backend; `None` chooses with [`Backend::select`].
    pub backend: Option<Backend>,
    /// Backend tuning.
    pub io: IoOptions,
    /// First wait before dialling a lost peer again (default 20 ms),
    /// doubled per failure up to `reconnect_max` (default 2 s).
    pub reconnect_min: Duration,
    /// Longest wait between dials.
    pub reconnect_max: Duration,
    /// Time a handshake may take (default 5 s).
    pub handshake_timeout: Duration,
    /// Seeds the transport's random choices: what fault rules draw
    /// ([`fault`]), handshake nonces and the node's incarnation. `None`
    /// (the default) takes them from the OS. A simulation sets it so that
    /// its runs replay; a real cluster should not, or its handshake
    /// challenges would repeat.
    pub seed: Option<u64>,
    /// The TCP congestion control, by name, of the connections this node
    /// dials to a loopback address (a node on this host); `None` keeps the
    /// system's (`net.ipv4.tcp_congestion_control`). Default
    /// [`LOOPBACK_CONGESTION_CONTROL`].
    ///
    /// On loopback there is no bottleneck to find, and a congestion
    /// control that paces, as `bbr` does, on a host without the `fq`
    /// queueing discipline paces every connection with a timer of its
    /// own: sends wait for timers that make room for nothing. (The dialler
    /// sends a lane's frames; the end that accepts sends only credit and
    /// acknowledgements.) If the kernel does not have the one named, or
    /// does not let this process choose it
    /// (`net.ipv4.tcp_allowed_congestion_control`), the transport says so
    /// in one log line at start and keeps the system's.
    pub loopback_congestion_control: Option<String>,
}

impl TransportConfig {
    /// The defaults, with a name and a cookie.
    pub fn new(name: impl Into<String>, cookie: Cookie) -> TransportConfig {
        TransportConfig {
            name: name.into(),
            cookie,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            channels: ChannelSpec::defaults(),
            backend: None,
            io: IoOptions::default(),
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            seed: None,
            loopback_congestion_control: Some(LOOPBACK_CONGESTION_CONTROL.to_owned()),
        }
    }

    /// The congestion control to give a connection this node dials to
    /// `addr`: [`TransportConfig::loopback_congestion_control`] if `addr`
    /// is a loopback address; the system's (`None`) otherwise.
    pub(crate) fn congestion_control_for(&self, addr: SocketAddr) -> Option<&str> {
        self.loopback_congestion_control
            .as_deref()
            .filter(|_| addr.ip().is_loopback())
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.channels.is_empty() {
            return Err(ConfigError::NoChannels);
        }
        for (i, channel) in self.channels.iter().enumerate() {
            channel.check()?;
            if self.channels[..i].iter().any(|c| c.name == channel.name) {
                return Err(ConfigError::DuplicateChannel(channel.name.clone()));
            }
        }
        if let Some(name) = &self.loopback_congestion_control {
            // The kernel's names are at most 15 bytes (`TCP_CA_NAME_MAX`
            // with its terminating zero).
            if name.is_empty() || name.len() > 15 || name.contains('\0') {
                return Err(ConfigError::CongestionControl(name.clone()));
            }
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err(ConfigError::Backoff {
                min: self.reconnect_min,
                max: self.reconnect_max,
            });
        }
        Ok(())
    }
}

/// The TCP congestion control a transport gives the connections it dials to
/// a node on its own host, unless configured otherwise
/// ([`TransportConfig::loopback_congestion_control`]): `cubic`, which
/// paces nothing.
pub const LOOPBACK_CONGESTION_CONTROL: &str = "cubic";

/// Why a transport could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration contradicts itself.
    Config(ConfigError),
    /// No usable I/O backend.
    Backend(BackendError),
    /// The runtime could not be built.
    Runtime(foundation_sched::BuildError),
    /// The listen address could not be bound.
    Listen(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(error) => write!(f, "bad transport configuration: {error}"),
            StartError::Backend(error) => write!(f, "{error}"),
            StartError::Runtime(error) => write!(f, "cannot build the runtime: {error}"),
            StartError::Listen(error) => write!(f, "cannot listen: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Why a send failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The destination's node is not a peer ([`Transport::add_peer`]).
    UnknownPeer(NodeId),
    /// No such channel.
    UnknownChannel(ChannelId),
    /// Out of credit, or of queue room while disconnected: nothing was
    /// sent; try again later (or use [`Transport::send`], which waits).
    WouldBlock,
    /// The channel has no connection to the peer and fails sends while
    /// disconnected.
    NotConnected,
    /// Larger than the channel's maximum message.
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The channel's maximum.
        max: usize,
    },
    /// The message could not be encoded.
    Encode(FrameError),
    /// The transport stopped.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownPeer(node) => write!(f, "node {} is not a peer", node.0),
            SendError::UnknownChannel(channel) => write!(f, "no {channel}"),
            SendError::WouldBlock => f.write_str("out of credit"),
            SendError::NotConnected => f.write_str("not connected"),
            SendError::TooLarge { size, max } => {
                write!(f, "message of {size} bytes over the channel's {max}")
            }
            SendError::Encode(error) => write!(f, "{error}"),
            SendError::Closed => f.write_str("transport stopped"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why a peer could not be added.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerError {
    /// That node is this one.
    IsSelf,
    /// That node is a peer already.
    AlreadyPeer(NodeId),
    /// The transport stopped.
    Closed,
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::IsSelf => f.write_str("a node cannot be its own peer"),
            PeerError::AlreadyPeer(node) => write!(f, "node {} is a peer already", node.0),
            PeerError::Closed => f.write_str("transport stopped"),
        }
    }
}

impl std::error::Error for PeerError {}

/// Why a connection ended or could not be made. Logged, counted and kept
/// in [`Transport::recent_errors`]; the node carries on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionError {
    /// A socket error.
    Io(io::ErrorKind, String),
    /// The handshake failed.
    Handshake(HandshakeError),
    /// A malformed frame (bad magic or version, oversized, truncated).
    Frame(FrameError),
    /// A frame of a kind that has no business on this connection.
    UnexpectedFrame(FrameKind),
    /// A frame for another channel.
    WrongChannel(u16),
    /// A frame skipped ahead on an acknowledged channel.
    SequenceGap {
        /// The sequence number due.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// A chunked message over the channel's maximum.
    MessageTooLarge(usize),
    /// The handshake took too long.
    TimedOut,
    /// A newer connection of the same lane took over.
    Superseded,
    /// The peer closed the connection.
    PeerClosed,
    /// The transport or lane closed.
    Closed,
    /// The process runs on a shard without an I/O reactor.
    NoReactor,
    /// Cut on purpose by a fault rule ([`fault`]): a partition, or a
    /// message lost on an acknowledged channel.
    FaultInjected,
    /// A frame claimed to come from a process of another node than the
    /// one at the other end: a node speaks only for its own processes.
    Impersonation {
        /// The node at the other end.
        peer: NodeId,
        /// The node the frame named.
        claimed: NodeId,
    },
    /// A well-framed message whose payload is not what its process takes,
    /// dropped (the connection stays).
    MessageRefused(FrameError),
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::Io(_, error) => write!(f, "{error}"),
            ConnectionError::Handshake(error) => write!(f, "handshake: {error}"),
            ConnectionError::Frame(error) => write!(f, "{error}"),
            ConnectionError::UnexpectedFrame(kind) => write!(f, "unexpected {kind:?} frame"),
            ConnectionError::WrongChannel(channel) => {
                write!(
                    f,
                    "frame for channel {channel} on another channel's connection"
                )
            }
            ConnectionError::SequenceGap { expected, got } => {
                write!(f, "sequence gap: expected {expected}, got {got}")
            }
            ConnectionError::MessageTooLarge(size) => {
                write!(f, "chunked message of {size} bytes over the maximum")
            }
            ConnectionError::TimedOut => f.write_str("handshake timed out"),
            ConnectionError::Superseded => f.write_str("superseded by a newer connection"),
            ConnectionError::PeerClosed => f.write_str("closed by the peer"),
            ConnectionError::Closed => f.write_str("closed"),
            ConnectionError::NoReactor => f.write_str("no I/O reactor on this shard"),
            ConnectionError::FaultInjected => f.write_str("cut by a fault rule"),
            ConnectionError::Impersonation { peer, claimed } => write!(
                f,
                "node {} sent a frame from a process of node {}",
                peer.0, claimed.0
            ),
            ConnectionError::MessageRefused(error) => write!(f, "message dropped: {error}"),
        }
    }
}

impl std::error::Error for ConnectionError {}

/// Counters of a transport since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Outbound connections established.
    pub connections: u64,
    /// Inbound connections accepted (before their handshake).
    pub accepted: u64,
    /// Inbound connections refused by the handshake.
    pub refused: u64,
    /// Connections that ended with an error (each also logged).
    pub connection_errors: u64,
    /// Of those, ended by a malformed frame.
    pub frame_errors: u64,
    /// Messages delivered to local processes.
    pub delivered: u64,
    /// Messages for local processes that are not registered.
    pub undeliverable: u64,
}

/// Who listens at an address, as [`Transport::identify`] found out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node id.
    pub node: NodeId,
    /// Its node's name.
    pub name: String,
}

/// A node's transport: its listener, its peers and their lanes.
///
/// Cheap to clone; every clone is the same transport.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Distinguishes this transport in the threads' route caches.
    id: u64,
    handle: Handle,
    config: TransportConfig,
    identity: Identity,
    channels: Vec<ChannelSpec>,
    backend: Backend,
    local_addr: SocketAddr,
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
    endpoints: Endpoints,
    inbound: Mutex<HashMap<(NodeId, u16, u16), Arc<InboundLane>>>,
    counters: Counters,
    recent_errors: Mutex<VecDeque<ConnectionError>>,
    closed: AtomicBool,
    faults: Faults,
    entropy: Entropy,
    /// What the blocks of messages delivered on this node (no connection,
    /// no credit) report their consumption to.
    here: Arc<inbound::Feedback>,
}

/// The error for a backend that needs the other way of starting: a real
/// one inside a simulation, or the simulated one outside.
fn not_simulated(backend: Backend) -> StartError {
    let error = io::Error::new(
        io::ErrorKind::Unsupported,
        "the simulated network is reached only through Transport::start_simulated, \
         on a node whose driver is a simulated network's host",
    );
    StartError::Backend(BackendError::Unavailable { backend, error })
}

/// Errors kept for [`Transport::recent_errors`].
const RECENT_ERRORS: usize = 64;

impl Transport {
    /// Builds the runtime from `builder` with this transport's I/O backend
    /// as every shard's driver, binds the listen address and starts
    /// accepting. Returns the runtime and the transport.
    pub fn start(
        builder: Builder,
        mut config: TransportConfig,
    ) -> Result<(Runtime, Transport), StartError> {
        config.check().map_err(StartError::Config)?;
        if let Some(name) = &config.loopback_congestion_control {
            if let Err(error) = sys::congestion_control_available(name) {
                tracing::warn!(
                    "TCP congestion control {name:?} unavailable ({error}); \
                     loopback connections keep the system's"
                );
                config.loopback_congestion_control = None;
            }
        }
        let backend = match config.backend {
            Some(backend) => {
                backend.probe(&config.io).map_err(|error| {
                    StartError::Backend(BackendError::Unavailable { backend, error })
                })?;
                backend
            }
            None => Backend::select(&config.io).map_err(StartError::Backend)?,
        };
        let drivers = backend
            .driver_factory(config.io.clone())
            .ok_or_else(|| not_simulated(backend))?;
        let listener = std::net::TcpListener::bind(config.listen).map_err(StartError::Listen)?;
        listener.set_nonblocking(true).map_err(StartError::Listen)?;
        let local_addr = listener.local_addr().map_err(StartError::Listen)?;
        let runtime = builder
            .driver(drivers)
            .build()
            .map_err(StartError::Runtime)?;
        // Every shard accepts on its own descriptor of the one socket.
        let listeners = (0..runtime.shard_count())
            .map(|_| listener.try_clone().map(Bound::Tcp))
            .collect::<io::Result<Vec<_>>>()
            .map_err(StartError::Listen)?;
        let transport =
            Transport::launch(runtime.handle(), config, backend, local_addr, listeners)?;
        Ok((runtime, transport))
    }

    /// Starts a transport on a node of a [`Simulation`] whose driver is a
    /// host of a simulated network ([`sim::Network::driver`]), listening
    /// on `config.listen` of that host (a loopback or unspecified address
    /// stands for the host's own). Call it inside the node: in
    /// [`SimNode::enter`] or in the boot of a restartable node, which then
    /// starts its transport again at every restart. Set `config.seed` for
    /// runs that replay.
    ///
    /// [`Simulation`]: foundation_sched::sim::Simulation
    /// [`SimNode::enter`]: foundation_sched::sim::SimNode::enter
    pub fn start_simulated(
        handle: &Handle,
        config: TransportConfig,
    ) -> Result<Transport, StartError> {
        config.check().map_err(StartError::Config)?;
        let reactor = Reactor::current();
        let Some(Reactor::Sim(host)) = reactor.as_deref() else {
            return Err(not_simulated(Backend::Simulated));
        };
        let listener = host.bind(config.listen).map_err(StartError::Listen)?;
        let local_addr = listener.local_addr();
        let listeners = vec![Bound::Sim(listener)];
        Transport::launch(handle, config, Backend::Simulated, local_addr, listeners)
    }

    /// Starts the transport of the runtime `handle` belongs to: one
    /// listener process per shard, on `listeners` (one per shard, in shard
    /// order).
    fn launch(
        handle: &Handle,
        config: TransportConfig,
        backend: Backend,
        local_addr: SocketAddr,
        listeners: Vec<Bound>,
    ) -> Result<Transport, StartError> {
        let entropy = Entropy::new(config.seed);
        let identity = Identity {
            name: config.name.clone(),
            node: handle.node(),
            incarnation: entropy.incarnation(handle.now()),
            cookie: config.cookie.clone(),
            channels: channel::digest(&config.channels),
            lanes: config.channels.iter().map(|c| c.parallelism).collect(),
        };
        let inner = Arc::new(Inner {
            id: route::transport_id(),
            handle: handle.clone(),
            channels: config.channels.clone(),
            faults: Faults::new(entropy.fault_seed()),
            entropy,
            config,
            identity,
            backend,
            local_addr,
            peers: RwLock::new(HashMap::new()),
            endpoints: Endpoints::default(),
            inbound: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            recent_errors: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            here: inbound::Feedback::new(u64::MAX, 0),
        });
        for (shard, listener) in listeners.into_iter().enumerate() {
            let accept = inner.clone();
            let options = SpawnOptions::new().placement(Placement::Shard(ShardId(shard as u8)));
            handle
                .spawn_with(options, move |cx: Context<()>| {
                    connection::listen(cx, accept, listener)
                })
                .map_err(|error| StartError::Listen(io::Error::other(error.to_string())))?;
        }
        Ok(Transport { inner })
    }

    /// This start's incarnation: a number drawn when the transport
    /// started (from its seed, in a simulation), which peers use to tell a
    /// restarted node from a reconnecting one.
    pub fn incarnation(&self) -> u64 {
        self.inner.identity.incarnation
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.identity.name
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The I/O backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.inner.identity.node
    }

    /// The channels, in [`ChannelId`] order.
    pub fn channels(&self) -> &[ChannelSpec] {
        &self.inner.channels
    }

    /// This node's fault rules ([`fault`]): what it receives, and the
    /// connections it makes and accepts, obey them.
    ///
    /// ```no_run
    /// # use foundation_transport::{fault::{Fault, FaultRule}, Transport};
    /// # use foundation_sched::NodeId;
    /// # fn cut_off(transport: &Transport) {
    /// // Hear nothing from node 3 until the rule goes.
    /// let rule = transport.faults().add(FaultRule::new(Fault::Partition).from(NodeId(3)));
    /// // ...
    /// transport.faults().remove(rule);
    /// # }
    /// ```
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Makes `node`, listening at `addr`, a peer: one dialer process per
    /// lane of every channel connects to it, and reconnects with backoff
    /// whenever the connection fails. Sends to it may start at once; they
    /// queue (or fail) per channel until connected.
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) -> Result<(), PeerError> {
        if node == self.node() {
            return Err(PeerError::IsSelf);
        }
        if self.inner.is_closed() {
            return Err(PeerError::Closed);
        }
        let peer = {
            let mut peers = self
                .inner
                .peers
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if peers.contains_key(&node) {
                return Err(PeerError::AlreadyPeer(node));
            }
            let lanes = self
                .inner
                .channels
                .iter()
                .map(|spec| {
                    (0..spec.parallelism)
                        .map(|_| Arc::new(Lane::new(spec)))
                        .collect()
                })
                .collect();
            let peer = Arc::new(Peer {
                node,
                addr,
                lanes,
                removed: AtomicBool::new(false),
            });
            peers.insert(node, peer.clone());
            peer
        };
        let shards = self.inner.handle.shard_count();
        let mut next_shard = usize::from(node.0);
        for (channel, spec) in self.inner.channels.iter().enumerate() {
            for lane in 0..spec.parallelism {
                let (inner, peer) = (self.inner.clone(), peer.clone());
                let channel = channel as u16;
                // Spread the lanes over the shards.
                let shard = foundation_sched::ShardId((next_shard % shards) as u8);
                next_shard += 1;
                let options = SpawnOptions::new()
                    .placement(foundation_sched::Placement::Shard(shard))
                    .priority(spec.process_priority());
                let spawned = self
                    .inner
                    .handle
                    .spawn_with(options, move |cx: Context<()>| {
                        connection::dial(cx, inner, peer, channel, lane)
                    });
                if spawned.is_err() {
                    return Err(PeerError::Closed);
                }
            }
        }
        Ok(())
    }

    /// Asks whoever listens at `addr` who it is, as a node joining through a
    /// seed address must before it can make the seed a peer. The whole
    /// handshake runs (a node with another cookie is refused with
    /// [`HandshakeError::Cookie`]) on a connection of its own, which then
    /// closes; no lane or peer is made. Call it from a process of this
    /// transport's node.
    ///
    /// ```no_run
    /// # use foundation_sched::Context;
    /// # use foundation_transport::Transport;
    /// # async fn join(cx: Context<()>, transport: Transport) {
    /// let seed = "10.0.0.7:4370".parse().unwrap();
    /// let found = transport.identify(&cx, seed).await.unwrap();
    /// transport.add_peer(found.node, seed).unwrap();
    /// # }
    /// ```
    pub async fn identify<M: Send + 'static>(
        &self,
        cx: &Context<M>,
        addr: SocketAddr,
    ) -> Result<PeerInfo, ConnectionError> {
        if self.inner.is_closed() {
            return Err(ConnectionError::Closed);
        }
        let established = connection::identify(cx, &self.inner, addr).await?;
        let (me, peer) = (self.node(), established.peer);
        let control = ChannelId::CONTROL;
        if self.inner.faults.partitioned(me, peer, control)
            || self.inner.faults.partitioned(peer, me, control)
        {
            return Err(ConnectionError::FaultInjected);
        }
        Ok(PeerInfo {
            node: peer,
            name: established.peer_name,
        })
    }

    /// The peers, in node order.
    pub fn peers(&self) -> Vec<NodeId> {
        let peers = self
            .inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut nodes: Vec<_> = peers.keys().copied().collect();
        nodes.sort();
        nodes
    }

    /// Stops dialling `node` and closes its lanes; frames not yet written
    /// are dropped.
    pub fn remove_peer(&self, node: NodeId) -> bool {
        let removed = self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&node);
        if let Some(peer) = &removed {
            peer.removed.store(true, Ordering::Release);
            peer.lanes.iter().flatten().for_each(|lane| lane.close());
            // This thread's next send to it looks it up, and fails.
            stage::forget_route();
        }
        removed.is_some()
    }

    /// Whether every lane of `channel` to `node` is connected.
    pub fn is_connected(&self, node: NodeId, channel: ChannelId) -> bool {
        self.inner
            .peer(node)
            .and_then(|peer| {
                let lanes = peer.lanes.get(usize::from(channel.0))?;
                Some(lanes.iter().all(|lane| lane.is_connected()))
            })
            .unwrap_or(false)
    }

    /// Makes the local process `addr` reachable from peers: frames for its
    /// pid are validated as `T` and delivered as [`Remote<T>`]. It stays
    /// registered until it exits.
    pub fn register<T: Wire + 'static>(&self, addr: &Addr<Remote<T>>) {
        self.register_as(addr.pid(), addr);
    }

    /// Makes the local process `addr` reachable from peers at `alias` as
    /// well as at its own pid, as [`Transport::register`] does: a
    /// well-known address on this node (a service every node runs, such as
    /// its peer service) that peers can send to without learning the
    /// process's pid first. The alias goes when the process exits, unless
    /// another process took it over by then.
    pub fn register_as<T: Wire + 'static>(&self, alias: Pid, addr: &Addr<Remote<T>>) {
        self.inner.endpoints.insert_as(alias, addr);
        let inner = Arc::downgrade(&self.inner);
        let pid = addr.pid();
        self.inner.handle.on_exit(
            pid,
            Box::new(move |_reason| {
                if let Some(inner) = inner.upgrade() {
                    inner.endpoints.remove_alias(alias, pid);
                }
            }),
        );
    }

    /// Hands every message for `alias` to `handler`, on the thread that
    /// receives it, as it is delivered: before any message delivered after
    /// it from the same connection reaches its process. For a node's own
    /// services whose input must keep its place among other deliveries
    /// (the signals of distribution); the handler must be quick and must
    /// not wait. It stays until [`Transport::unregister`].
    pub fn register_handler<T, F>(&self, alias: Pid, handler: F)
    where
        T: Wire + 'static,
        F: Fn(Remote<T>) + Send + Sync + 'static,
    {
        let endpoint = inbound::HandlerEndpoint {
            alias,
            handler,
            message: std::marker::PhantomData,
        };
        self.inner.endpoints.insert(alias, Arc::new(endpoint));
    }

    /// Removes what [`Transport::register_handler`] registered at `alias`.
    pub fn unregister(&self, alias: Pid) {
        self.inner.endpoints.remove_alias(alias, alias);
    }

    /// Sends `message` from local process `from` to `to` on another node,
    /// on `channel`, without waiting: [`SendError::WouldBlock`] when the
    /// lane is out of credit, holds as much unsent as it takes (256 KiB,
    /// more for large frames; see *Backpressure* in the crate docs), or is
    /// busy with another process's message that is going out in chunks.
    /// Order is kept per (from, to, channel).
    ///
    /// A `to` on this node gets the message as a peer's would be delivered
    /// (encoded, validated, a [`Remote`]) without a socket, so a process
    /// reached by pid need not care where its senders run.
    pub fn try_send<T: Wire>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        message: &T,
    ) -> Result<(), SendError> {
        if to.node() == self.node() {
            return self.inner.deliver_here(from, to, channel, message);
        }
        let max_frame = self.inner.max_frame(channel);
        let encoded = match self.inner.try_stage(from, to, channel, message, max_frame) {
            Some(encoded) => encoded,
            None => self.inner.with_lane(from, to, channel, |lane| {
                // Without room for a frame the size of the lane's last,
                // this one may still fit: the general way tells.
                let pushed = self
                    .inner
                    .try_push(from, to, channel, message, lane, max_frame);
                if let Encoded::Pushed(encoded) = pushed {
                    return Ok(encoded);
                }
                self.inner
                    .with_encoded(from, to, channel, message, |scratch, header| {
                        // All chunks at once, or none.
                        let frames = scratch.frames(header, max_frame)?;
                        stage::push(lane, frames).map_err(SendError::from)?;
                        Ok(frames.len())
                    })
            })?,
        };
        // Counted, so the sender's next receive or checkpoint yields once
        // it has done a poll's worth of work.
        coop::charge(coop::reductions_for(encoded));
        Ok(())
    }

    /// Sends like [`Transport::try_send`], waiting for credit (and, while
    /// disconnected, for queue room) instead of failing. A message larger
    /// than the channel's frame goes out in chunks: all at once, or (more
    /// than half the window, or the first of its size on the lane) chunk by
    /// chunk as credit returns, the sender yielding to the rest of its
    /// shard between chunks.
    pub async fn send<T: Wire>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        message: &T,
    ) -> Result<(), SendError> {
        if to.node() == self.node() {
            return self.inner.deliver_here(from, to, channel, message);
        }
        let max_frame = self.inner.max_frame(channel);
        loop {
            // Most sends of a process sending many end here, staged.
            if let Some(encoded) = self.inner.try_stage(from, to, channel, message, max_frame) {
                coop::consume(coop::reductions_for(encoded)).await;
                return Ok(());
            }
            let (encoded, rest) = self.inner.with_lane(from, to, channel, |lane| {
                // A large frame goes straight onto the lane, or waits for
                // room to. Otherwise (a small frame, a large one that
                // changed size, in chunks or failing) encode into the
                // thread's scratch and try at once; only a send that must
                // wait copies its frame out.
                match self
                    .inner
                    .try_push(from, to, channel, message, lane, max_frame)
                {
                    Encoded::Pushed(encoded) => return Ok((encoded, Rest::Nothing)),
                    Encoded::NoRoom => return Ok((0, Rest::Room(lane.clone()))),
                    Encoded::Declined => {}
                }
                self.inner
                    .with_encoded(from, to, channel, message, |scratch, header| {
                        let frame = &mut scratch.message;
                        let encoded = frame.len();
                        let rest = if header.length as usize > max_frame {
                            let large = std::mem::take(frame);
                            Rest::Chunks(Box::new(Large(lane.clone(), header, large)))
                        } else {
                            match stage::push(lane, frame) {
                                Ok(()) => Rest::Nothing,
                                Err(Push::WouldBlock) => Rest::Frame(lane.clone(), frame.to_vec()),
                                Err(error) => return Err(SendError::from(error)),
                            }
                        };
                        Ok((encoded, rest))
                    })
            })?;
            match rest {
                Rest::Nothing => {
                    // A process sending in a loop yields to the rest of its
                    // shard (the transport's own connections among them)
                    // once it has done a poll's worth of copying.
                    coop::consume(coop::reductions_for(encoded)).await;
                    return Ok(());
                }
                // Then the loop encodes the frame onto the lane.
                Rest::Room(lane) => poll_fn(|task| lane.poll_room(task, max_frame)).await,
                Rest::Frame(lane, frame) => {
                    return poll_fn(|task| match lane.push(&frame, false, Some(task)) {
                        Ok(_) => Poll::Ready(Ok(())),
                        Err(Push::WouldBlock) => Poll::Pending,
                        Err(error) => Poll::Ready(Err(SendError::from(error))),
                    })
                    .await
                }
                // Boxed: the future of every send stays as small as a small
                // message's needs.
                Rest::Chunks(large) => return Box::pin(send_chunks(*large, max_frame)).await,
            }
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        TransportStats {
            connections: c.connections.get(),
            accepted: c.accepted.get(),
            refused: c.refused.get(),
            connection_errors: c.connection_errors.get(),
            frame_errors: c.frame_errors.get(),
            delivered: c.delivered.get(),
            undeliverable: c.undeliverable.get(),
        }
    }

    /// The last connection errors, oldest first (at most 64).
    pub fn recent_errors(&self) -> Vec<ConnectionError> {
        self.inner.recent().iter().cloned().collect()
    }

    /// Bytes held for `node` on `channel`: frames not yet written, and
    /// written but not yet acknowledged.
    pub fn held_bytes(&self, node: NodeId, channel: ChannelId) -> usize {
        self.inner
            .peer(node)
            .and_then(|peer| peer.lanes.get(usize::from(channel.0)).cloned())
            .map_or(0, |lanes| lanes.iter().map(|lane| lane.held_bytes()).sum())
    }

    /// Stops the transport: lanes close, dialers stop, sends fail with
    /// [`SendError::Closed`]. Connections end as their processes notice;
    /// shutting the runtime down ends them all.
    pub fn stop(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let mut peers: Vec<_> = self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, peer)| peer)
            .collect();
        // In node order: the map's own order differs from run to run,
        // and a simulation must replay.
        peers.sort_by_key(|peer| peer.node);
        for peer in peers {
            peer.removed.store(true, Ordering::Release);
            peer.lanes.iter().flatten().for_each(|lane| lane.close());
        }
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("node", &self.node())
            .field("listen", &self.inner.local_addr)
            .field("backend", &self.inner.backend)
            .finish()
    }
}

impl From<Push> for SendError {
    fn from(push: Push) -> SendError {
        match push {
            Push::WouldBlock => SendError::WouldBlock,
            Push::NotConnected => SendError::NotConnected,
            Push::Closed => SendError::Closed,
        }
    }
}

/// One message encoded on the sending thread.
#[derive(Default)]
struct Scratch {
    /// The message as one frame.
    message: Vec<u8>,
    /// Its chunk frames, when it is larger than a frame.
    frames: Vec<u8>,
}

impl Scratch {
    /// What goes on the lane for the message (`header` is its frame's):
    /// the frame itself or, above `max_frame`, its payload cut into
    /// chunk frames.
    fn frames(&mut self, header: FrameHeader, max_frame: usize) -> Result<&[u8], SendError> {
        let length = header.length as usize;
        if length <= max_frame {
            return Ok(&self.message);
        }
        self.frames.clear();
        let payload = &self.message[HEADER_LEN..HEADER_LEN + length];
        for (piece, flags) in chunks(payload, max_frame) {
            let chunk = FrameHeader {
                flags,
                kind: FrameKind::Chunk,
                ..header
            };
            frame::encode_raw(chunk, piece, &mut self.frames).map_err(SendError::Encode)?;
        }
        Ok(&self.frames)
    }
}

/// The header of a message frame from `from` to `to` on `channel`, its
/// length to be set when it is encoded.
fn message_header(from: Pid, to: Pid, channel: ChannelId) -> FrameHeader {
    FrameHeader {
        flags: 0,
        channel: channel.0,
        kind: FrameKind::Message,
        length: 0,
        source: from,
        destination: to,
        trace_id: 0,
        sequence: 0,
    }
}

/// What is left of a send after its first try.
enum Rest {
    Nothing,
    /// A large frame, not encoded yet: to try again once the lane has
    /// room for it.
    Room(Arc<Lane>),
    /// The frame, waiting for credit.
    Frame(Arc<Lane>, Vec<u8>),
    /// A frame too large for the channel, to go as chunks.
    Chunks(Box<Large>),
}

/// A frame too large for its channel, taken out of the scratch: the lane,
/// the frame's header, the frame.
struct Large(Arc<Lane>, FrameHeader, Vec<u8>);

/// The pieces of `payload` cut at `max_frame`, each with its chunk flags.
fn chunks(payload: &[u8], max_frame: usize) -> impl Iterator<Item = (&[u8], u8)> {
    let count = payload.len().div_ceil(max_frame);
    payload
        .chunks(max_frame)
        .enumerate()
        .map(move |(i, piece)| {
            let mut flags = 0;
            if i == 0 {
                flags |= frame::FIRST_CHUNK;
            }
            if i + 1 == count {
                flags |= frame::LAST_CHUNK;
            }
            (piece, flags)
        })
}

/// Sends the payload of a large frame as chunk frames on its lane, each as
/// credit allows, yielding between chunks once a poll's worth of copying
/// is done; then gives the frame's buffer back to the scratch.
async fn send_chunks(large: Large, max_frame: usize) -> Result<(), SendError> {
    let Large(lane, header, frame) = large;
    // What this process staged for the lane goes before the chunks.
    stage::commit(&lane);
    let payload = &frame[HEADER_LEN..HEADER_LEN + header.length as usize];
    // The lane is held from the first chunk to the last (released early
    // if this send ends before), so the message's chunks are contiguous on
    // it: an acknowledged channel must not count a later message as
    // delivered while this one is half-way, or a reconnect would resend
    // only its tail.
    let _hold = lane.hold_for(header.source);
    let mut spanned = 0;
    for (piece, flags) in chunks(payload, max_frame) {
        let chunk = FrameHeader {
            flags,
            kind: FrameKind::Chunk,
            ..header
        };
        poll_fn(|task| match lane.push_chunk(chunk, piece, Some(task)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(Push::WouldBlock) => Poll::Pending,
            Err(error) => Poll::Ready(Err(SendError::from(error))),
        })
        .await?;
        spanned += frame::padded_len(piece.len());
        coop::consume(coop::reductions_for(piece.len())).await;
    }
    // The next message of this size goes in chunks encoded straight onto
    // the lane, if the window allows it at once.
    lane.sent_in_chunks(spanned);
    give_back(frame);
    Ok(())
}

/// Returns a large message's buffer to this thread's scratch, so the next
/// large send does not allocate (and fault in) another.
fn give_back(mut frame: Vec<u8>) {
    SCRATCH.with(|scratch| {
        if let Ok(mut scratch) = scratch.try_borrow_mut() {
            if scratch.message.capacity() < frame.capacity() {
                frame.clear();
                scratch.message = frame;
            }
        }
    });
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn peer(&self, node: NodeId) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .cloned()
    }

    /// Calls `f` with the lane a message from `from` to `to` on `channel`
    /// travels on.
    ///
    /// This, [`route::with_peer`], `with_encoded`, `encode` and
    /// [`frame::encode`] are the layers of every send, and always inlined
    /// into it: called, each handed its result (a header, a `Result` with
    /// an error that holds a `String`) back through memory, to be read
    /// back at once, which cost the sender of 64-byte messages more than
    /// the encoding itself (`remote` 64 B 13.3 -> 15.3 M msgs/s).
    #[inline(always)]
    fn with_lane<R>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        f: impl FnOnce(&Arc<Lane>) -> Result<R, SendError>,
    ) -> Result<R, SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.with_route(from, to, channel, |lane| {
            f(lane.ok_or(SendError::UnknownChannel(channel))?)
        })
        .unwrap_or(Err(SendError::UnknownPeer(to.node())))
    }

    /// Calls `f` with the lane that carries what `from` sends to `to` on
    /// `channel` (`None` if there is no such channel), through this
    /// thread's routes; `None` if `to`'s node is not a peer.
    #[inline(always)]
    fn with_route<R>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        f: impl FnOnce(Option<&Arc<Lane>>) -> R,
    ) -> Option<R> {
        let node = to.node();
        route::with_peer(
            self.id,
            node,
            || self.peer(node),
            |peer| f(peer.lane_for(channel, from, to)),
        )
    }

    /// Encodes `message` straight onto this poll's stage for its lane, if
    /// it has one and the frame fits ([`stage::Stages::encode`]): the
    /// stage the thread's last send found, if this one takes the same
    /// route, else its lane's. The frame's length, or `None` for a send
    /// that must go the general way (which also reports errors). Every
    /// result fits in registers: a send that returns through memory reads
    /// it back at once, and on this path that read waited for the stage's
    /// stores to reach the cache.
    #[inline(always)]
    fn try_stage<T: Wire>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        message: &T,
        max_frame: usize,
    ) -> Option<usize> {
        if self.is_closed() {
            return None;
        }
        stage::with_open(|stages| {
            let route = Route {
                transport: self.id,
                from,
                to,
                channel,
            };
            let stage = match stages.remembered(route) {
                Some(stage) => stage,
                None => self
                    .with_route(from, to, channel, |lane| stages.remember(route, lane?))
                    .flatten()?,
            };
            stages.encode(stage, max_frame, |out| {
                self.encode(from, to, channel, message, out).ok()
            })
        })
    }

    /// Encodes `message` straight onto `lane` if its frames are large,
    /// after what this poll staged for it ([`stage::push_encoded`]).
    #[inline(always)]
    fn try_push<T: Wire>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        message: &T,
        lane: &Arc<Lane>,
        max_frame: usize,
    ) -> Encoded {
        stage::push_encoded(lane, max_frame, |out, chunked| {
            if chunked {
                self.encode_chunks(from, to, channel, message, max_frame, out)
                    .ok()
            } else {
                let header = self.encode(from, to, channel, message, out).ok()?;
                Some(header.length as usize)
            }
        })
    }

    /// Encodes `message` into this thread's scratch and hands `f` the
    /// scratch and the frame's header.
    #[inline(always)]
    fn with_encoded<T: Wire, R>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        message: &T,
        f: impl FnOnce(&mut Scratch, FrameHeader) -> Result<R, SendError>,
    ) -> Result<R, SendError> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.message.clear();
            let header = self.encode(from, to, channel, message, &mut scratch.message)?;
            f(&mut scratch, header)
        })
    }

    /// Appends `message` as one frame to `out`, whatever its size, and
    /// returns its header.
    #[inline(always)]
    fn encode<T: Wire>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        message: &T,
        out: &mut Vec<u8>,
    ) -> Result<FrameHeader, SendError> {
        let header = message_header(from, to, channel);
        let header = frame::encode(header, message, out).map_err(SendError::Encode)?;
        self.within_max_message(channel, header.length as usize)?;
        Ok(header)
    }

    /// Encodes `message` as chunk frames with up to `max_frame` bytes each
    /// ([`frame::encode_chunks`]), appended to `out`; the archive's length.
    fn encode_chunks<T: Wire>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        message: &T,
        max_frame: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, SendError> {
        let header = message_header(from, to, channel);
        let length =
            frame::encode_chunks(header, message, max_frame, out).map_err(SendError::Encode)?;
        self.within_max_message(channel, length)?;
        Ok(length)
    }

    /// `TooLarge` if a message of `size` bytes is over `channel`'s maximum.
    fn within_max_message(&self, channel: ChannelId, size: usize) -> Result<(), SendError> {
        let max = self.channels[usize::from(channel.0)].max_message;
        if size > max {
            return Err(SendError::TooLarge { size, max });
        }
        Ok(())
    }

    /// The largest payload of one frame on `channel`.
    fn max_frame(&self, channel: ChannelId) -> usize {
        self.channels
            .get(usize::from(channel.0))
            .map_or(usize::MAX, |spec| spec.max_frame as usize)
    }

    /// Delivers `run`, received messages for one process (payloads in
    /// `batch` unless they have their own block), to its local endpoint,
    /// found through `endpoints`; `false` if it has none. Messages that are
    /// not what the process takes go to `refused`.
    fn deliver(
        &self,
        endpoints: &mut EndpointCache,
        batch: &Block,
        run: &[Received],
        refused: &mut dyn FnMut(FrameError),
    ) -> bool {
        let Some(first) = run.first() else {
            return true;
        };
        let Some(endpoint) = endpoints.get(&self.endpoints, first.header.destination) else {
            return false;
        };
        endpoint.deliver(&self.handle, batch, run, refused);
        true
    }

    /// Delivers a message for a process of this node as a frame from a
    /// peer would be: encoded, validated and handed over as a [`Remote`],
    /// so that a process reached by pid need not know where its sender is.
    /// No socket is involved and no credit is held; a message for no
    /// registered process is counted as undeliverable.
    fn deliver_here<T: Wire>(
        &self,
        from: Pid,
        to: Pid,
        channel: ChannelId,
        message: &T,
    ) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        if usize::from(channel.0) >= self.channels.len() {
            return Err(SendError::UnknownChannel(channel));
        }
        let (header, payload) =
            self.with_encoded(from, to, channel, message, |scratch, header| {
                let frame = &scratch.message;
                let mut payload = rkyv::util::AlignedVec::with_capacity(header.length as usize);
                payload.extend_from_slice(&frame[HEADER_LEN..HEADER_LEN + header.length as usize]);
                Ok((header, payload))
            })?;
        coop::charge(coop::reductions_for(payload.len()));
        let len = payload.len();
        let block = Block::new(payload, 0, self.here.clone());
        let Some(endpoint) = self.endpoints.get(to) else {
            self.counters.undeliverable.increment();
            return Ok(());
        };
        let message = Received {
            header,
            own: None,
            payload: 0..len,
        };
        let mut refused = None;
        endpoint.deliver(&self.handle, &block, &[message], &mut |error| {
            refused = Some(error);
        });
        match refused {
            Some(error) => Err(SendError::Encode(error)),
            None => {
                self.counters.delivered.increment();
                Ok(())
            }
        }
    }

    /// The receive state of a dialer's lane.
    fn inbound_lane(&self, hello: &Accepted) -> Arc<InboundLane> {
        let mut inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        let lane = inbound
            .entry((hello.peer, hello.channel, hello.lane))
            .or_insert_with(|| Arc::new(InboundLane::default()))
            .clone();
        drop(inbound);
        lane.meet(hello.incarnation);
        lane
    }

    fn recent(&self) -> MutexGuard<'_, VecDeque<ConnectionError>> {
        self.recent_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs, counts and keeps a message dropped because its payload is not
    /// what its process takes.
    fn message_refused(&self, peer: NodeId, error: FrameError) {
        self.counters.frame_errors.increment();
        tracing::warn!("message from node {} dropped: {error}", peer.0);
        self.remember(ConnectionError::MessageRefused(error));
    }

    /// Keeps `error` for [`Transport::recent_errors`].
    fn remember(&self, error: ConnectionError) {
        let mut recent = self.recent();
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(error);
    }

    /// Logs, counts and keeps a connection's end.
    fn connection_failed(&self, peer: Option<NodeId>, addr: SocketAddr, error: ConnectionError) {
        if self.is_closed() {
            return;
        }
        self.counters.connection_errors.increment();
        if matches!(error, ConnectionError::Frame(_)) {
            self.counters.frame_errors.increment();
        }
        // Bad input and refusals are news; a peer that went away, and the
        // dialer's retries while it is gone, are the weather.
        let routine = matches!(
            error,
            ConnectionError::Io(..)
                | ConnectionError::PeerClosed
                | ConnectionError::Superseded
                | ConnectionError::Closed
                | ConnectionError::FaultInjected
        );
        match (peer, routine) {
            (Some(peer), false) => {
                tracing::warn!("connection with node {} ({addr}): {error}", peer.0)
            }
            (None, false) => tracing::warn!("connection from {addr}: {error}"),
            (Some(peer), true) => {
                tracing::info!("connection with node {} ({addr}): {error}", peer.0)
            }
            (None, true) => tracing::info!("connection from {addr}: {error}"),
        }
        self.remember(error);
    }
}

/// A peer node and its outbound lanes, by channel then lane.
pub(crate) struct Peer {
    node: NodeId,
    addr: SocketAddr,
    lanes: Vec<Vec<Arc<Lane>>>,
    removed: AtomicBool,
}

impl Peer {
    fn lane(&self, channel: u16, lane: u16) -> &Arc<Lane> {
        &self.lanes[usize::from(channel)][usize::from(lane)]
    }

    /// The lane of `channel` that carries what `from` sends to `to`: the
    /// same one every time, so their order holds. `None` for a channel
    /// this node does not have.
    #[inline(always)]
    fn lane_for(&self, channel: ChannelId, from: Pid, to: Pid) -> Option<&Arc<Lane>> {
        let lanes = self.lanes.get(usize::from(channel.0))?;
        let mix =
            (from.to_bits() ^ to.to_bits().rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // The high 32 bits of the mix scaled to the lane count: a multiply
        // where `%` would divide on every send.
        let lane = ((mix >> 32) * lanes.len() as u64) >> 32;
        lanes.get(lane as usize)
    }

    fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// What this node knows of one dialer's lane, across its connections: the
/// dialer's incarnation, how far its acknowledged frames were delivered,
/// and which connection currently owns it.
#[derive(Default)]
pub(crate) struct InboundLane {
    state: Mutex<InboundState>,
}

#[derive(Default)]
pub(crate) struct InboundState {
    incarnation: u64,
    delivered: u64,
    generation: u64,
    /// The reader of the connection that owns the lane, woken when a newer
    /// one takes it over: its connection may be half-open (its peer gone
    /// silent behind a partition), and nothing else would end it.
    reader: Option<Waker>,
}

impl InboundLane {
    /// A hello from `incarnation`: a restarted dialer numbers afresh.
    fn meet(&self, incarnation: u64) {
        let mut state = self.lock();
        if state.incarnation != incarnation {
            state.incarnation = incarnation;
            state.delivered = 0;
        }
    }

    fn delivered(&self) -> u64 {
        self.lock().delivered
    }

    /// A new connection takes the lane over: older readers stop delivering,
    /// and the current one is woken to end its connection.
    fn claim(&self) -> (u64, u64) {
        let mut state = self.lock();
        state.generation += 1;
        let superseded = state.reader.take();
        let claimed = (state.generation, state.delivered);
        drop(state);
        if let Some(reader) = superseded {
            reader.wake();
        }
        claimed
    }

    /// Whether connection `generation` still owns the lane; if it does,
    /// `waker` is woken when it no longer does.
    fn owned_by(&self, generation: u64, waker: &Waker) -> bool {
        let mut state = self.lock();
        let owned = state.generation == generation;
        if owned && !state.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            state.reader = Some(waker.clone());
        }
        owned
    }

    fn lock(&self) -> MutexGuard<'_, InboundState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl InboundState {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn set_delivered(&mut self, delivered: u64) {
        self.delivered = delivered;
    }
}

#[derive(Default)]
struct Counters {
    connections: Counter,
    accepted: Counter,
    refused: Counter,
    connection_errors: Counter,
    frame_errors: Counter,
    delivered: Counter,
    undeliverable: Counter,
}

#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn increment(&self) {
        self.add(1);
    }

    fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TransportConfig {
        let mut config = TransportConfig::new("config-test", Cookie::new("secret"));
        config.backend = Some(Backend::Epoll);
        config
    }

    #[test]
    fn connections_to_this_host_take_the_loopback_congestion_control() {
        let config = config();
        let here = SocketAddr::from(([127, 0, 0, 2], 4000));
        let there = SocketAddr::from(([10, 0, 0, 2], 4000));
        assert_eq!(config.congestion_control_for(here), Some("cubic"));
        assert_eq!(
            config.congestion_control_for("[::1]:4000".parse().unwrap()),
            Some("cubic")
        );
        assert_eq!(config.congestion_control_for(there), None);
        let system = TransportConfig {
            loopback_congestion_control: None,
            ..config
        };
        assert_eq!(system.congestion_control_for(here), None);
    }

    #[test]
    fn a_name_no_congestion_control_could_have_is_refused() {
        for name in ["", "sixteen-letters!", "cu\0bic"] {
            let config = TransportConfig {
                loopback_congestion_control: Some(name.to_owned()),
                ..config()
            };
            let started = Transport::start(foundation_sched::Runtime::builder(), config);
            assert!(
                matches!(
                    started,
                    Err(StartError::Config(ConfigError::CongestionControl(ref refused)))
                        if refused == name
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_congestion_control_the_kernel_lacks_leaves_the_systems() {
        let config = TransportConfig {
            loopback_congestion_control: Some("no-such-cc".to_owned()),
            ..config()
        };
        let builder = foundation_sched::Runtime::builder().shards(1);
        let (_runtime, transport) = Transport::start(builder, config).expect("a node");
        assert_eq!(transport.inner.config.loopback_congestion_control, None);
        transport.stop();
    }
}
