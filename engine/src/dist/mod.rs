//! Distribution: processes on one node linking to, monitoring, calling and
//! spawning processes on another.
//!
//! A [`Pid`] names its node, so the runtime's own calls work across nodes
//! once a node runs [`Dist`]: `cx.link(pid)`, `cx.monitor(pid)`,
//! `cx.exit(pid, reason)` reach a process on another node as they reach a
//! local one, with Erlang's semantics; when the other node goes down (as
//! membership decides) every link to its processes delivers an exit
//! signal, and every monitor a `Down`, with reason
//! [`ExitReason::NoConnection`](foundation_sched::ExitReason), exactly
//! once. [`Node`](crate::node::Node) runs it; a simulation builds it with
//! [`Dist::new`].
//!
//! # Messages, calls and spawns
//!
//! A process that other nodes talk to receives
//! [`Remote<T>`](foundation_transport::Remote) messages: each is validated
//! on arrival and read in place. [`send`] reaches it by pid from any node,
//! its own included (a local send takes the same form, without a socket);
//! [`register`] gives it a name on its node, which [`send_named`] reaches
//! from anywhere. [`call`] sends a request and waits for the answer the
//! server gives with [`reply`], failing with the server's exit reason if
//! it ends first — `noconnection` if its node goes down. [`spawn`] asks a
//! node's process [`Factory`] to start a process of a kind registered
//! there, with typed arguments; [`spawn_link`] links it to the caller
//! before it runs.
//!
//! # Order
//!
//! Signals and calls travel on the acknowledged `control` channel, one
//! connection per peer, in the order their processes sent them: a monitor
//! reaches its target's node before the request that follows it, and an
//! answer reaches the caller's node before the `Down` of a server that
//! ended after answering. Messages sent with [`send`] travel on `data`;
//! unlike Erlang, which orders everything between two processes, a message
//! sent before an exit signal may arrive after it.
//!
//! # Well-known services
//!
//! Every node runs services that peers must reach before they know any pid
//! on the node: the peer service, and the distribution's own address,
//! which takes signals, answers to calls and spawn requests for the process
//! factory. Each is registered with the transport at a *well-known* alias:
//! a pid on shard 255, which no runtime has (a runtime has at most 255
//! shards, numbered from 0), so an alias never names a real process. Slot
//! 0 of that shard is the runtime's own "outside" sender; the services take
//! the slots after it, and registered names (hashed) the upper half.
//!
//! ```no_run
//! use foundation::{Context, Envelope, ExitReason, Pid};
//!
//! # async fn watch(cx: Context<()>, worker_on_another_node: Pid) {
//! let monitor = cx.monitor(worker_on_another_node);
//! if let Envelope::Down(down) = cx.recv().await {
//!     assert_eq!(down.monitor, monitor);
//!     if down.reason == ExitReason::NoConnection {
//!         // Its node went down (or was cut off): it may still run.
//!     }
//! }
//! # }
//! ```

mod calls;
mod factory;
mod signals;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use foundation_sched::remote::{Distribution, Signal};
use foundation_sched::{Addr, Context, ExitReason, Handle, NodeId, Pid, ShardId};
use foundation_transport::frame::Wire;
use foundation_transport::{ChannelId, Remote, SendError, Transport};
use rkyv::{Archive, Deserialize, Serialize};

use crate::membership::{MemberEvent, PeerService};
use crate::registry::{self, Name, RegistryError};
use crate::supervision::ChildSpec;
use calls::Pending;
use signals::{Relations, WireSignal};

pub use calls::{call, reply, Call, CallError};
pub(crate) use factory::spawn_archived;
use factory::Link;
pub use factory::{spawn, spawn_link, Factory, SpawnError};

/// A service every node runs at a fixed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Service {
    /// The peer service: membership and failure detection.
    PeerService = 1,
    /// The distribution service: signals, replies and spawn requests.
    Dist = 2,
}

/// Where `service` of `node` is reached.
pub(crate) fn well_known(node: NodeId, service: Service) -> Pid {
    Pid::new(node, ShardId(u8::MAX), service as u32, 0)
}

/// Where the process registered as `name` on `node` is reached: an alias
/// on shard 255 whose slot (top bit set, above every service's) and
/// generation hold 39 bits of the name's hash.
fn named(node: NodeId, name: &str) -> Pid {
    let hash = name_hash(name);
    let slot = (1 << 23) | (hash as u32 & 0x7f_ffff);
    Pid::new(node, ShardId(u8::MAX), slot, (hash >> 23) as u16)
}

/// A name's 64-bit FNV-1a hash: the same in every build and on every node,
/// as names on the wire need.
pub(crate) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What distribution services send each other: every variant goes to the
/// receiving node's [`Service::Dist`]. Variants are only appended.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) enum DistMessage {
    /// A signal for a process of the receiving node.
    Signal(WireSignal),
    /// The answer to a call or spawn the receiving node made.
    Reply {
        /// The call's id at the caller's node.
        id: u64,
        /// The answer, an archive of its own.
        body: Vec<u8>,
    },
    /// Spawn a process of a registered kind; answered with a `Reply`.
    Spawn {
        /// The call's id at the caller's node.
        id: u64,
        /// The kind's registered name.
        kind: String,
        /// The arguments, an archive of the kind's argument type.
        args: Vec<u8>,
    },
    /// Spawn as [`DistMessage::Spawn`], linked to `linker` (a process of
    /// the asking node) before the new process runs.
    SpawnLinked {
        /// The call's id at the caller's node.
        id: u64,
        /// The kind's registered name.
        kind: String,
        /// The arguments, an archive of the kind's argument type.
        args: Vec<u8>,
        /// The process to link to.
        linker: u64,
    },
}

/// A node's distribution: carries its processes' signals, calls and spawn
/// requests to other nodes, and theirs to it. Cheap to clone.
#[derive(Clone)]
pub struct Dist {
    shared: Arc<Shared>,
}

struct Shared {
    handle: Handle,
    transport: Transport,
    peers: Arc<dyn PeerService>,
    /// Nodes declared down and not up since, as the peer service's changes
    /// came.
    down: Mutex<HashSet<NodeId>>,
    relations: Mutex<Relations>,
    /// Messages for each node waiting for room on its lane, in order;
    /// while any wait, later ones queue behind them. The service sends
    /// them; a node declared down has its queue answered and dropped.
    backlog: Mutex<HashMap<NodeId, VecDeque<Queued>>>,
    pending: Pending,
    factory: Factory,
    /// The distribution service, while it runs.
    service: Mutex<Option<Addr<Wake>>>,
}

/// The distribution service's mailbox: a nudge that something was queued.
struct Wake;

/// A message that waits for room on its node's `control` lane.
enum Queued {
    /// A local process's signal for a process there.
    Signal(Pid, Signal),
    /// The answer to a spawn request it made.
    Answer(DistMessage),
}

/// Where a runtime keeps its node's [`Dist`], for the functions of this
/// module to find from a process.
#[derive(Default)]
struct Installed(OnceLock<Dist>);

/// Why a distribution call found no distribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotDistributed;

impl std::fmt::Display for NotDistributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this node runs no distribution")
    }
}

impl std::error::Error for NotDistributed {}

impl Dist {
    /// The distribution of the node whose runtime `handle` belongs to, over
    /// `transport`, ending relations with nodes that `peers` declares
    /// down. Installs itself as the runtime's [`Distribution`], as the
    /// receiver at the node's distribution address, and as what this
    /// module's functions use on that runtime: make one per runtime (a
    /// second takes the address over, while the functions keep the first).
    /// Signals go out at once; [`Dist::child_spec`] runs the service that
    /// sends those that find their lane out of credit. A link or monitor
    /// to a node that `peers` declared down (and not up since) is answered
    /// with `noconnection` at once, and what such a node sends is dropped:
    /// it ends its own relations when it learns it was declared down.
    pub fn new(handle: &Handle, transport: Transport, peers: Arc<dyn PeerService>) -> Dist {
        // Call ids of every start differ, so that an answer meant for a
        // call of this node's last run is never taken for one of this run.
        let first_call = transport.incarnation();
        let dist = Dist {
            shared: Arc::new(Shared {
                handle: handle.clone(),
                transport,
                peers: peers.clone(),
                down: Mutex::default(),
                relations: Mutex::new(Relations::default()),
                backlog: Mutex::default(),
                pending: Pending::starting_at(first_call),
                factory: Factory::default(),
                service: Mutex::new(None),
            }),
        };
        handle.set_distribution(Arc::new(Carrier(dist.shared.clone())));
        let receiving = Arc::downgrade(&dist.shared);
        let alias = well_known(handle.node(), Service::Dist);
        dist.shared
            .transport
            .register_handler(alias, move |message| {
                if let Some(shared) = receiving.upgrade() {
                    receive(&shared, message);
                }
            });
        let _ = handle.extension::<Installed>().0.set(dist.clone());
        dist.shared.watch(peers);
        dist
    }

    /// The distribution of the node `cx` runs on.
    pub fn of<M: Send + 'static>(cx: &Context<M>) -> Result<Dist, NotDistributed> {
        cx.runtime()
            .extension::<Installed>()
            .0
            .get()
            .cloned()
            .ok_or(NotDistributed)
    }

    /// The distribution service as a supervised child (`dist_service`).
    pub fn child_spec(&self) -> ChildSpec {
        let shared = self.shared.clone();
        ChildSpec::worker("dist_service", move |cx: Context<Wake>| {
            serve(cx, shared.clone())
        })
    }

    /// The nodes up, this one first, then its peer service's members in
    /// node order.
    pub fn nodes(&self) -> Vec<NodeId> {
        let me = self.shared.handle.node();
        std::iter::once(me)
            .chain(self.shared.peers.members().iter().map(|member| member.node))
            .collect()
    }

    /// The node's process factory: what other nodes may spawn here.
    pub fn factory(&self) -> &Factory {
        &self.shared.factory
    }

    /// The node's transport.
    pub fn transport(&self) -> &Transport {
        &self.shared.transport
    }

    /// How many links and monitors join this node's processes to other
    /// nodes' (a leak check for tests).
    pub fn relations(&self) -> usize {
        self.shared.relations().len()
    }

    /// How many calls and spawns wait for an answer from another node.
    pub fn pending(&self) -> usize {
        self.shared.pending.len()
    }
}

/// Sends `message` to process `to`, on any node (this one included), on
/// the `data` channel; `to` receives a [`Remote<T>`]. Waits while the
/// channel is out of credit. Order is kept per (sender, receiver).
pub async fn send<M: Send + 'static, T: Wire>(
    cx: &Context<M>,
    to: Pid,
    message: &T,
) -> Result<(), SendError> {
    send_on(cx, to, ChannelId::DATA, message).await
}

/// Sends like [`send`], on `channel`.
pub async fn send_on<M: Send + 'static, T: Wire>(
    cx: &Context<M>,
    to: Pid,
    channel: ChannelId,
    message: &T,
) -> Result<(), SendError> {
    let dist = Dist::of(cx).map_err(|_| SendError::Closed)?;
    dist.shared
        .transport
        .send(cx.pid(), to, channel, message)
        .await
}

/// Registers `addr` as `name` on this node ([`registry::register`]) and
/// makes it reachable by that name from other nodes ([`send_named`]). The
/// name goes when the process ends.
pub fn register<M: Send + 'static, T: Wire + 'static>(
    cx: &Context<M>,
    name: &str,
    addr: &Addr<Remote<T>>,
) -> Result<(), RegistryError> {
    let dist = Dist::of(cx).map_err(|_| RegistryError::NotDistributed(Name::local(name)))?;
    registry::register(cx, Name::local(name), addr)?;
    let alias = named(cx.runtime().node(), name);
    dist.shared.transport.register_as(alias, addr);
    Ok(())
}

/// Sends `message` to the process registered as `name` on `node` (this
/// one included), on the `data` channel. As Erlang's `{Name, Node} ! Msg`,
/// a message for a name nobody holds is dropped (and counted by the
/// receiving node's transport).
pub async fn send_named<M: Send + 'static, T: Wire>(
    cx: &Context<M>,
    node: NodeId,
    name: &str,
    message: &T,
) -> Result<(), SendError> {
    send(cx, named(node, name), message).await
}

/// What the runtime calls with signals for other nodes.
struct Carrier(Arc<Shared>);

impl Distribution for Carrier {
    /// Puts the signal straight on the `control` lane to its node, from
    /// the sending process's shard: so it goes out in order with what that
    /// process sends on `control` next (a call's request after the monitor
    /// that watches its server). Only a lane out of credit hands the signal
    /// to the distribution service, which waits for room.
    fn signal(&self, to: Pid, signal: Signal) {
        let shared = &self.0;
        if shared.down().contains(&to.node()) {
            // A node down: as Erlang answers for a node it cannot reach.
            return shared.unreachable(to, signal);
        }
        shared.relations().sent(to, &signal);
        let wire = DistMessage::Signal(WireSignal::new(to, &signal));
        let later = signal.clone();
        if shared
            .post(to.node(), wire, |_| Queued::Signal(to, later))
            .is_err()
        {
            shared.unreachable(to, signal);
        }
    }
}

impl Shared {
    fn relations(&self) -> std::sync::MutexGuard<'_, Relations> {
        self.relations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, VecDeque<Queued>>> {
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until nothing for `node` waits in the service for room, so
    /// that what the caller sends on `control` next keeps its place behind
    /// the signals its process sent before (a call's request behind the
    /// monitor of its server).
    async fn drained<M: Send + 'static>(&self, cx: &Context<M>, node: NodeId) {
        while self.backlog().contains_key(&node) {
            cx.sleep(std::time::Duration::from_micros(500)).await;
        }
    }

    fn service(&self) -> Option<Addr<Wake>> {
        *self.service.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows `peers`' changes step by step: a node that goes down has
    /// its relations ended before it can be up again.
    fn watch(self: &Arc<Self>, peers: Arc<dyn PeerService>) {
        let shared = Arc::downgrade(self);
        peers.listen(Arc::new(move |event| {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match event {
                MemberEvent::Down(member, _) => {
                    shared.down().insert(member.node);
                    shared.node_down(member.node);
                }
                MemberEvent::Up(member) => {
                    shared.down().remove(&member.node);
                }
                MemberEvent::Suspect(_) | MemberEvent::Trusted(_) => {}
            }
        }));
    }

    /// Nodes declared down and not up since.
    fn down(&self) -> std::sync::MutexGuard<'_, HashSet<NodeId>> {
        self.down.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `message` to `node`'s distribution service on `control`, from
    /// this thread; a lane out of credit hands `later(message)` to the
    /// distribution service instead, which waits for room.
    fn post(
        &self,
        node: NodeId,
        message: DistMessage,
        later: impl FnOnce(DistMessage) -> Queued,
    ) -> Result<(), SendError> {
        let me = well_known(self.handle.node(), Service::Dist);
        let to = well_known(node, Service::Dist);
        let mut backlog = self.backlog();
        // Behind what waits for room already, in order.
        if !backlog.contains_key(&node) {
            match self
                .transport
                .try_send(me, to, ChannelId::CONTROL, &message)
            {
                Err(SendError::WouldBlock) => {}
                sent => return sent,
            }
        }
        let service = self.service().ok_or(SendError::WouldBlock)?;
        backlog.entry(node).or_default().push_back(later(message));
        drop(backlog);
        self.handle.send(&service, Wake);
        Ok(())
    }

    /// Sends what waits for room, node by node, as far as each lane takes
    /// it; a node declared down has its queue answered as unreachable.
    /// Whether anything still waits.
    fn send_queued(&self) -> bool {
        let me = well_known(self.handle.node(), Service::Dist);
        let down = self.down().clone();
        let mut unreachable = Vec::new();
        let mut backlog = self.backlog();
        backlog.retain(|&node, queue| {
            let gone = down.contains(&node);
            while let Some(queued) = queue.front() {
                let sent = match (gone, queued) {
                    (true, _) => Err(SendError::Closed),
                    (false, Queued::Signal(to, signal)) => {
                        let wire = DistMessage::Signal(WireSignal::new(*to, signal));
                        let target = well_known(node, Service::Dist);
                        self.transport
                            .try_send(me, target, ChannelId::CONTROL, &wire)
                    }
                    (false, Queued::Answer(reply)) => {
                        let target = well_known(node, Service::Dist);
                        self.transport
                            .try_send(me, target, ChannelId::CONTROL, reply)
                    }
                };
                match sent {
                    Err(SendError::WouldBlock) => return true,
                    Ok(()) => drop(queue.pop_front()),
                    Err(error) => {
                        tracing::debug!("queued for node {}: {error}", node.0);
                        if let Some(Queued::Signal(to, signal)) = queue.pop_front() {
                            unreachable.push((to, signal));
                        }
                    }
                }
            }
            false
        });
        let waiting = !backlog.is_empty();
        drop(backlog);
        for (to, signal) in unreachable {
            self.unreachable(to, signal);
        }
        waiting
    }

    /// Spawns `kind` with `args` for node `from`, linked to `linker` if
    /// given, and answers call `id`.
    fn spawn_for(
        self: &Arc<Self>,
        from: NodeId,
        id: u64,
        kind: &str,
        args: &[u8],
        linker: Option<Pid>,
    ) {
        let answering = Arc::downgrade(self);
        let answer = move |body: Vec<u8>| {
            if let Some(shared) = answering.upgrade() {
                let reply = DistMessage::Reply { id, body };
                if let Err(error) = shared.post(from, reply, Queued::Answer) {
                    tracing::debug!("spawn answer for node {}: {error}", from.0);
                }
            }
        };
        let link = linker.map(|linker| Link {
            linker,
            answer: Box::new(answer.clone()),
        });
        if let Some(body) = self.factory.spawn(&self.handle, kind, args, link) {
            answer(body);
        }
    }

    /// Answers `signal` as a node that cannot be reached would, and
    /// forgets the relation it began.
    fn unreachable(&self, to: Pid, signal: Signal) {
        if let Some((local, answer)) = signal.answer_absent(to, ExitReason::NoConnection) {
            self.relations().received(local, &answer);
            self.handle.deliver_signal(local, answer);
        }
    }

    /// Ends every relation with `node`'s processes, and fails the calls
    /// and spawns waiting for it.
    fn node_down(&self, node: NodeId) {
        let ends = self.relations().node_down(node);
        for (local, signal) in ends {
            self.handle.deliver_signal(local, signal);
        }
        self.pending.node_down(node);
    }
}

/// Takes what other nodes' distribution services send this node, on the
/// thread that receives it, in arrival order: signals are handed in and
/// answers complete their calls there, so that a reply, or a `Down`, keeps
/// its place among the messages the same connection delivers; spawn
/// requests are answered there too. Only what finds its lane out of credit
/// goes to the distribution service, which may wait.
fn receive(shared: &Arc<Shared>, message: Remote<DistMessage>) {
    let from = message.source().node();
    if shared.down().contains(&from) {
        // A node this one holds for down: its relations here are ended,
        // and it ends its own when it learns it was declared down. (A node
        // not met yet is heard: it may have learned of this one first.)
        tracing::debug!("dropped a message from node {}, which is down", from.0);
        return;
    }
    match &*message {
        ArchivedDistMessage::Signal(signal) => match signal.decode(from, shared.handle.node()) {
            Ok((to, signal)) => {
                let mut relations = shared.relations();
                if !relations.expects(from, to, &signal) {
                    tracing::debug!("dropped a signal from node {} for no relation", from.0);
                    return;
                }
                relations.received(to, &signal);
                drop(relations);
                shared.handle.deliver_signal(to, signal);
            }
            Err(error) => tracing::warn!("signal from node {}: {error:?}", from.0),
        },
        ArchivedDistMessage::Reply { id, body } => {
            shared.pending.answer(from, id.to_native(), body)
        }
        ArchivedDistMessage::Spawn { id, kind, args } => {
            shared.spawn_for(from, id.to_native(), kind, args, None);
        }
        ArchivedDistMessage::SpawnLinked {
            id,
            kind,
            args,
            linker,
        } => {
            let linker = Pid::from_bits(linker.to_native());
            if linker.node() == from {
                shared.spawn_for(from, id.to_native(), kind, args, Some(linker));
            } else {
                tracing::warn!("node {} asked to link a spawn to {linker}", from.0);
            }
        }
    }
}

/// The distribution service: sends the signals and spawn answers that
/// found their lane out of credit, node by node as room comes, so that
/// one slow or dead node holds up no other.
async fn serve(cx: Context<Wake>, shared: Arc<Shared>) {
    *shared
        .service
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(cx.addr());
    let (gone, me) = (Arc::downgrade(&shared), cx.addr());
    cx.on_exit(
        cx.pid(),
        Box::new(move |_| {
            if let Some(shared) = gone.upgrade() {
                let mut service = shared
                    .service
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if service.is_some_and(|running| running.pid() == me.pid()) {
                    *service = None;
                }
            }
        }),
    );
    loop {
        if shared.send_queued() {
            // Room comes back with credit: look again soon.
            cx.sleep(std::time::Duration::from_millis(1)).await;
            while cx.try_recv().is_some() {}
        } else if cx.recv().await.into_msg().is_none() {
            return;
        }
    }
}
