//! The full-mesh peer service: the process that runs a node's [`Swim`]
//! over its transport.
//!
//! Every member is a transport peer of every other: a member becomes a
//! peer when SWIM first talks to it (a seed, or a member learned from
//! gossip), stops being one when it goes down, and is dialled again only
//! to announce this node to it while SWIM remembers it
//! ([`FailureDetector::forget_after`]). The service is two processes,
//! linked: the service itself, whose mailbox takes local commands and its
//! own timers, and an *inbox* registered at the node's well-known
//! peer-service address, which hands what peers send to the service. Both
//! run under the node's supervisor. A restarted service rejoins under a
//! later boot stamp, which its peers take as the node started again, and
//! reports every member of its last view down, then up again as it meets
//! them: what happened meanwhile is unknown, so relations end on both
//! sides.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use foundation_sched::{
    oneshot, Addr, Context, Envelope, Handle, MonitorRef, NodeId, Pid, Runtime,
};
use foundation_transport::{
    ChannelId, ConnectionError, Cookie, PeerError, Remote, SendError, StartError, Transport,
    TransportConfig,
};
use rkyv::{Archive, Deserialize, Serialize};

use super::swim::{Output, Swim, SwimTimer, MAX_PACKET};
use super::{DownReason, FailureDetector, Listener, Member, MemberEvent, PeerService};
use crate::dist::{well_known, Service};
use crate::supervision::ChildSpec;

/// What peer services send each other. Variants are only ever appended,
/// so that a node can tell a newer peer's message it does not know from
/// garbage (it fails validation either way, and closes that connection).
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) enum PeerMessage {
    /// A SWIM packet (on `gossip`).
    Swim(Vec<u8>),
    /// The sender leaves the cluster (on `control`, acknowledged).
    Leaving,
    /// A client asks for the members up; the answer goes to the asking
    /// process, whose node listens at `reply_to` (on `control`).
    MembersQuery {
        /// The client's listen address.
        reply_to: String,
    },
    /// The answer to a [`PeerMessage::MembersQuery`]: the answering node
    /// first, then the members it sees up, in node order.
    Members(Vec<WireMember>),
}

/// A [`Member`] on the wire.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct WireMember {
    pub(crate) node: u16,
    pub(crate) name: String,
    pub(crate) addr: String,
}

impl From<&Member> for WireMember {
    fn from(member: &Member) -> WireMember {
        WireMember {
            node: member.node.0,
            name: member.name.clone(),
            addr: member.addr.to_string(),
        }
    }
}

impl ArchivedWireMember {
    /// The member, if its address parses.
    pub(crate) fn member(&self) -> Option<Member> {
        Some(Member {
            node: NodeId(self.node.to_native()),
            name: self.name.as_str().to_owned(),
            addr: self.addr.as_str().parse().ok()?,
        })
    }
}

/// Why joining could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// The failure detector's timings do not fit together.
    Timings(String),
    /// Node id 0 belongs to clients ([`query_members`]), never to a member.
    ReservedNode,
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Timings(problem) => write!(f, "failure detector: {problem}"),
            JoinError::ReservedNode => f.write_str("node id 0 is for clients, not members"),
        }
    }
}

impl std::error::Error for JoinError {}

/// The default peer service: every node connected to every other, SWIM
/// failure detection. Cheap to clone; every clone is the same service.
///
/// ```no_run
/// use foundation::membership::{FailureDetector, FullMesh, PeerService};
/// use foundation::supervision::{Strategy, SupervisorSpec};
/// # fn run(runtime: foundation::Runtime, transport: foundation::transport::Transport) {
/// let seeds = vec!["10.0.0.7:4370".parse().unwrap()];
/// let mesh = FullMesh::new(runtime.handle(), transport, seeds, FailureDetector::default()).unwrap();
/// SupervisorSpec::new(Strategy::OneForOne)
///     .child(mesh.child_spec())
///     .start(runtime.handle())
///     .unwrap();
/// // ... later
/// for member in mesh.members() {
///     println!("{member}");
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct FullMesh {
    shared: Arc<Shared>,
}

struct Shared {
    handle: Handle,
    transport: Transport,
    me: Member,
    seeds: Vec<SocketAddr>,
    timings: FailureDetector,
    /// Boot stamp of the first start; each restart of the service adds one.
    boot: u64,
    starts: AtomicU64,
    /// Seeds SWIM's random draws.
    seed: u64,
    view: RwLock<BTreeMap<NodeId, Member>>,
    subscribers: Mutex<Vec<Addr<MemberEvent>>>,
    listeners: Mutex<Vec<Listener>>,
    service: Mutex<Option<Addr<Command>>>,
    left: AtomicBool,
}

/// The service's mailbox.
enum Command {
    /// A packet from a peer's service.
    Packet(Vec<u8>),
    /// A peer said it leaves.
    Leaving(NodeId),
    /// A client asks for the members; answer `client` at `reply_to`.
    Query { client: Pid, reply_to: SocketAddr },
    /// A SWIM timer came due.
    Timer(SwimTimer),
    /// Time to ask the seeds again (while no member is up).
    Rejoin,
    /// A seed answered who it is.
    Found(Member),
    /// Events from now on go to this process too.
    Subscribe(Addr<MemberEvent>),
    /// Leave the cluster, then answer.
    Leave(oneshot::Sender<()>),
}

/// How often a node with no member up asks its seeds again.
const REJOIN_INTERVAL: Duration = Duration::from_millis(500);

/// How long a leaving node waits for its peers to acknowledge its word.
const LEAVE_GRACE: Duration = Duration::from_secs(1);

impl FullMesh {
    /// The peer service of the node whose transport is `transport`,
    /// joining through `seeds` (none for the first node of a cluster).
    /// It runs once [`FullMesh::child_spec`] is started under a supervisor.
    pub fn new(
        handle: &Handle,
        transport: Transport,
        seeds: Vec<SocketAddr>,
        timings: FailureDetector,
    ) -> Result<FullMesh, JoinError> {
        let (advertise, boot) = (transport.local_addr(), boot_stamp());
        FullMesh::with_boot(handle, transport, advertise, seeds, timings, boot, boot)
    }

    /// As [`FullMesh::new`], with the address peers dial (`advertise`),
    /// the boot stamp (larger for every start of the node; [`FullMesh::new`]
    /// takes the calendar's microseconds) and the seed of SWIM's random
    /// draws given — as a simulation gives them, to replay.
    pub fn with_boot(
        handle: &Handle,
        transport: Transport,
        advertise: SocketAddr,
        seeds: Vec<SocketAddr>,
        timings: FailureDetector,
        boot: u64,
        seed: u64,
    ) -> Result<FullMesh, JoinError> {
        timings.check().map_err(JoinError::Timings)?;
        if transport.node() == CLIENT {
            return Err(JoinError::ReservedNode);
        }
        let me = Member {
            node: transport.node(),
            name: transport.name().to_owned(),
            addr: advertise,
        };
        Ok(FullMesh {
            shared: Arc::new(Shared {
                handle: handle.clone(),
                transport,
                me,
                seeds,
                timings,
                boot,
                starts: AtomicU64::new(0),
                seed,
                view: RwLock::new(BTreeMap::new()),
                subscribers: Mutex::new(Vec::new()),
                listeners: Mutex::new(Vec::new()),
                service: Mutex::new(None),
                left: AtomicBool::new(false),
            }),
        })
    }

    /// The service as a supervised child (`peer_service`), restarted if it
    /// fails.
    pub fn child_spec(&self) -> ChildSpec {
        let shared = self.shared.clone();
        ChildSpec::worker("peer_service", move |cx: Context<Command>| {
            run(cx, shared.clone())
        })
    }

    /// This node as the cluster knows it.
    pub fn me(&self) -> &Member {
        &self.shared.me
    }

    /// Leaves the cluster: tells every member, on the acknowledged
    /// `control` channel, then lets SWIM spread the news. The answer comes
    /// once the members acknowledged the word (or after a second); stop the
    /// transport after it. A service that is not running answers at once.
    pub fn leave(&self) -> oneshot::Receiver<()> {
        let (reply, answer) = oneshot::channel();
        self.shared.left.store(true, Ordering::Release);
        match self.shared.service() {
            Some(service) => self.shared.handle.send(&service, Command::Leave(reply)),
            None => reply.send(()),
        }
        answer
    }
}

impl PeerService for FullMesh {
    fn members(&self) -> Vec<Member> {
        let view = self
            .shared
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        view.values().cloned().collect()
    }

    fn subscribe(&self, subscriber: Addr<MemberEvent>) {
        // The service sends the members up now, then the changes; until it
        // runs, the subscription waits in the shared list. The list's lock
        // is held while the service is looked up, as the service holds it
        // while it takes the list over: none falls in between.
        let mut subscribers = self.shared.subscribers();
        match self.shared.service() {
            Some(service) => self
                .shared
                .handle
                .send(&service, Command::Subscribe(subscriber)),
            None => subscribers.push(subscriber),
        }
    }

    fn listen(&self, listener: Listener) {
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    fn is_up(&self, node: NodeId) -> bool {
        let view = self
            .shared
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        view.contains_key(&node)
    }
}

impl Shared {
    fn service(&self) -> Option<Addr<Command>> {
        *self.service.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<Addr<MemberEvent>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A stamp that grows with every start of a node, across OS processes:
/// microseconds of the calendar clock. Read once, at start-up, outside the
/// protocol; SWIM takes a later stamp as a restart of the same node.
#[allow(clippy::disallowed_methods)] // Start-up, not protocol: see above.
pub(crate) fn boot_stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_micros() as u64)
}

/// The service process.
async fn run(cx: Context<Command>, shared: Arc<Shared>) {
    let me = cx.addr();
    let inbox = cx.spawn_link(move |inbox: Context<Remote<PeerMessage>>| async move {
        while let Envelope::Msg(message) = inbox.recv().await {
            let from = message.source().node();
            let command = match &*message {
                ArchivedPeerMessage::Swim(packet) => Command::Packet(packet.to_vec()),
                ArchivedPeerMessage::Leaving => Command::Leaving(from),
                ArchivedPeerMessage::MembersQuery { reply_to } => match reply_to.parse() {
                    Ok(reply_to) => Command::Query {
                        client: message.source(),
                        reply_to,
                    },
                    Err(_) => continue,
                },
                // Answers are for clients; a service asks nothing.
                ArchivedPeerMessage::Members(_) => continue,
            };
            inbox.send(&me, command);
        }
    });
    shared
        .transport
        .register_as(well_known(shared.me.node, Service::PeerService), &inbox);
    let start = shared.starts.fetch_add(1, Ordering::Relaxed);
    // A restart of the service is a restart of the node for the cluster:
    // a later boot, which its peers take as its old start gone (their
    // relations with its processes end, as they end here). SWIM draws from
    // a new stream.
    let mut service = Mesh {
        swim: Swim::new(
            &shared.me,
            shared.boot + start,
            &shared.timings,
            shared.seed.wrapping_add(start),
        ),
        peers: BTreeMap::new(),
        subscribers: Vec::new(),
        shared: shared.clone(),
    };
    // From now on subscriptions come by mail; those made before, or kept
    // from the service's last run, are taken over.
    let waiting: Vec<_> = {
        let mut subscribers = shared.subscribers();
        *shared
            .service
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cx.addr());
        subscribers.drain(..).collect()
    };
    for subscriber in waiting {
        service.subscribe(&cx, subscriber);
    }
    // What the last run saw up is unknown now: down, until met again, so
    // that relations with nodes that died meanwhile end too.
    let known: Vec<_> = {
        let view = shared.view.read().unwrap_or_else(PoisonError::into_inner);
        view.values().cloned().collect()
    };
    for member in known {
        service.publish(&cx, MemberEvent::Down(member, DownReason::Failed));
    }
    // The last run's transport peers, unknown to this one: made again as
    // they are met.
    if start > 0 {
        for node in shared.transport.peers() {
            shared.transport.remove_peer(node);
        }
    }
    // The first timers: SWIM's probe cycle starts with the first member.
    if !shared.left.load(Ordering::Acquire) {
        cx.send(&cx.addr(), Command::Rejoin);
    }
    loop {
        match cx.recv().await {
            Envelope::Msg(command) => service.handle(&cx, command).await,
            Envelope::Down(down) => service.unsubscribe(down.monitor),
            Envelope::Exit(_) => {}
        }
    }
}

/// The service's state while it runs.
struct Mesh {
    swim: Swim,
    /// Transport peers made, and the address each was made with.
    peers: BTreeMap<NodeId, SocketAddr>,
    subscribers: Vec<(MonitorRef, Addr<MemberEvent>)>,
    shared: Arc<Shared>,
}

impl Mesh {
    async fn handle(&mut self, cx: &Context<Command>, command: Command) {
        let left = self.shared.left.load(Ordering::Acquire);
        let output = match command {
            Command::Packet(packet) => {
                let (output, taken) = self.swim.on_packet(&packet);
                if let Err(error) = taken {
                    tracing::debug!("peer service: packet refused: {}", error.0);
                }
                output
            }
            Command::Leaving(node) => self.swim.on_leaving(node),
            Command::Query { client, reply_to } => {
                self.answer(cx, client, reply_to);
                return;
            }
            Command::Timer(timer) => self.swim.on_timer(timer),
            Command::Rejoin if left => return,
            Command::Rejoin => {
                if !self.swim.has_joined() || self.swim.members().next().is_none() {
                    self.ask_seeds(cx);
                }
                self.forget_peers();
                cx.send_after(&cx.addr(), Command::Rejoin, REJOIN_INTERVAL);
                return;
            }
            Command::Found(_) if left => return,
            Command::Found(seed) => {
                self.make_peer(&seed);
                self.swim.announce(&seed)
            }
            Command::Subscribe(subscriber) => {
                self.subscribe(cx, subscriber);
                return;
            }
            Command::Leave(reply) => {
                self.leave(cx).await;
                reply.send(());
                return;
            }
        };
        self.apply(cx, output);
    }

    /// Asks each seed who it is; each that answers gets an announcement.
    fn ask_seeds(&self, cx: &Context<Command>) {
        for &addr in &self.shared.seeds {
            let (transport, service, me) = (
                self.shared.transport.clone(),
                cx.addr(),
                self.shared.me.node,
            );
            cx.spawn(move |cx: Context<()>| async move {
                match transport.identify(&cx, addr).await {
                    Ok(found) if found.node != me => {
                        let member = Member {
                            node: found.node,
                            name: found.name,
                            addr,
                        };
                        cx.send(&service, Command::Found(member));
                    }
                    Ok(_) => {} // A seed list may name this node itself.
                    Err(error) => tracing::debug!("seed {addr}: {error}"),
                }
            });
        }
    }

    /// Answers a client's query for the members. The client's node is no
    /// member: it is made a peer for the answer and dropped again once the
    /// answer is acknowledged (or after [`LEAVE_GRACE`]).
    fn answer(&self, cx: &Context<Command>, client: Pid, reply_to: SocketAddr) {
        let transport = self.shared.transport.clone();
        let node = client.node();
        // Only a client, never a member (whose peer this would redirect);
        // a second client asking at the same time is not answered.
        if node != CLIENT || transport.add_peer(node, reply_to).is_err() {
            tracing::debug!("peer service: no answer to node {} at {reply_to}", node.0);
            return;
        }
        let members = std::iter::once(self.shared.me.clone())
            .chain(self.swim.members())
            .map(|member| WireMember::from(&member))
            .collect();
        let answer = PeerMessage::Members(members);
        let from = cx.pid();
        cx.spawn(move |cx: Context<()>| async move {
            if transport
                .send(from, client, ChannelId::CONTROL, &answer)
                .await
                .is_ok()
            {
                acknowledged(&cx, &transport, &[node]).await;
            }
            transport.remove_peer(node);
        });
    }

    /// Carries out what SWIM asked for: the membership changes first, so
    /// that the packets of the same step go to the peers as they are now
    /// (a node that rejoins drops and remakes its peers, and its packets
    /// announcing the rejoin must not go down with the old ones).
    fn apply(&mut self, cx: &Context<Command>, output: Output) {
        let Output {
            sends,
            timers,
            events,
        } = output;
        for event in events {
            self.publish(cx, event);
        }
        for (to, packet) in sends {
            self.send_packet(cx.pid(), &to, packet);
        }
        for (after, timer) in timers {
            cx.send_after(&cx.addr(), Command::Timer(timer), after);
        }
    }

    fn send_packet(&mut self, from: Pid, to: &Member, packet: Vec<u8>) {
        debug_assert!(packet.len() <= MAX_PACKET);
        self.make_peer(to);
        let transport = &self.shared.transport;
        let target = well_known(to.node, Service::PeerService);
        // SWIM expects loss: a packet that finds no room is dropped.
        match transport.try_send(from, target, ChannelId::GOSSIP, &PeerMessage::Swim(packet)) {
            Ok(()) | Err(SendError::WouldBlock | SendError::NotConnected) => {}
            Err(error) => tracing::debug!("peer service: to {to}: {error}"),
        }
    }

    /// Makes `member` a transport peer at its address, if it is not one
    /// there already.
    fn make_peer(&mut self, member: &Member) {
        let transport = &self.shared.transport;
        match self.peers.get(&member.node) {
            Some(addr) if *addr == member.addr => return,
            Some(_) => {
                transport.remove_peer(member.node);
            }
            None => {}
        }
        let added = match transport.add_peer(member.node, member.addr) {
            // Made by this service's last run, at an address unknown now.
            Err(PeerError::AlreadyPeer(_)) => {
                transport.remove_peer(member.node);
                transport.add_peer(member.node, member.addr)
            }
            added => added,
        };
        match added {
            Ok(()) => {
                self.peers.insert(member.node, member.addr);
            }
            Err(error) => tracing::debug!("peer service: peer {member}: {error}"),
        }
    }

    /// Drops the transport peers of nodes SWIM no longer remembers: made
    /// again to announce this node to a member it holds for down, they
    /// would otherwise be dialled for ever.
    fn forget_peers(&mut self) {
        let forgotten: Vec<NodeId> = self
            .peers
            .keys()
            .copied()
            .filter(|&node| !self.swim.remembers(node))
            .collect();
        for node in forgotten {
            self.peers.remove(&node);
            self.shared.transport.remove_peer(node);
        }
    }

    /// Updates the shared view and tells the subscribers.
    fn publish(&mut self, cx: &Context<Command>, event: MemberEvent) {
        match &event {
            MemberEvent::Up(member) => {
                self.make_peer(member);
                self.shared
                    .view
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(member.node, member.clone());
            }
            MemberEvent::Down(member, _) => {
                if self.peers.remove(&member.node).is_some() {
                    self.shared.transport.remove_peer(member.node);
                }
                self.shared
                    .view
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&member.node);
            }
            MemberEvent::Suspect(_) | MemberEvent::Trusted(_) => {}
        }
        tracing::debug!("{}: {event:?}", self.shared.me.name);
        let listeners = self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for listener in listeners {
            listener(&event);
        }
        for (_, subscriber) in &self.subscribers {
            cx.send(subscriber, event.clone());
        }
    }

    fn subscribe(&mut self, cx: &Context<Command>, subscriber: Addr<MemberEvent>) {
        for member in self.swim.members() {
            cx.send(&subscriber, MemberEvent::Up(member));
        }
        let monitor = cx.monitor(subscriber.pid());
        self.subscribers.push((monitor, subscriber));
        // Kept for a restarted service.
        self.shared.subscribers().push(subscriber);
    }

    fn unsubscribe(&mut self, monitor: MonitorRef) {
        if let Some(at) = self.subscribers.iter().position(|(m, _)| *m == monitor) {
            let (_, gone) = self.subscribers.swap_remove(at);
            self.shared
                .subscribers()
                .retain(|kept| kept.pid() != gone.pid());
        }
    }

    /// Says goodbye on `control` to every member up, waits (a bounded
    /// time) for them to acknowledge, and leaves SWIM.
    async fn leave(&mut self, cx: &Context<Command>) {
        let transport = self.shared.transport.clone();
        let members: Vec<_> = self.swim.members().collect();
        for member in &members {
            let target = well_known(member.node, Service::PeerService);
            let said =
                transport.try_send(cx.pid(), target, ChannelId::CONTROL, &PeerMessage::Leaving);
            if let Err(error) = said {
                tracing::debug!("peer service: leaving, to {member}: {error}");
            }
        }
        let output = self.swim.leave();
        self.apply(cx, output);
        let nodes: Vec<_> = members.iter().map(|member| member.node).collect();
        acknowledged(cx, &transport, &nodes).await;
    }
}

/// Waits until `nodes` acknowledged everything sent to them on `control`,
/// for at most [`LEAVE_GRACE`].
async fn acknowledged<M: Send + 'static>(cx: &Context<M>, transport: &Transport, nodes: &[NodeId]) {
    let deadline = cx.now() + LEAVE_GRACE;
    while cx.now() < deadline
        && nodes
            .iter()
            .any(|&node| transport.held_bytes(node, ChannelId::CONTROL) > 0)
    {
        cx.sleep(Duration::from_millis(2)).await;
    }
}

/// Why [`query_members`] found no answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueryError {
    /// The client's own node could not start (node id 0 is taken in this
    /// process by another query, for one).
    Start(StartError),
    /// The node could not be reached, or refused us (another cookie).
    Unreachable(ConnectionError),
    /// The query could not be sent.
    Send(SendError),
    /// No answer in time.
    TimedOut,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Start(error) => write!(f, "cannot start the client: {error}"),
            QueryError::Unreachable(error) => write!(f, "cannot reach the node: {error}"),
            QueryError::Send(error) => write!(f, "cannot send the query: {error}"),
            QueryError::TimedOut => f.write_str("no answer in time"),
        }
    }
}

impl std::error::Error for QueryError {}

/// Asks the node listening at `at` for its view of the cluster, as a
/// *client*: a node of its own (id 0, which no member has) that proves the
/// cookie but never joins. Returns the answering node first, then the
/// members it sees up. Blocks the calling thread for at most `timeout`
/// past the connection.
///
/// This is what `foundation-node members` runs.
pub fn query_members(
    at: SocketAddr,
    cookie: Cookie,
    timeout: Duration,
) -> Result<Vec<Member>, QueryError> {
    let mut config = TransportConfig::new("client", cookie);
    config.listen = SocketAddr::new(local_ip_towards(at), 0);
    let builder = Runtime::builder().node(CLIENT).shards(1);
    let (runtime, transport) = Transport::start(builder, config).map_err(QueryError::Start)?;
    let asking = transport.clone();
    let answer = runtime.block_on(move |cx: Context<Remote<PeerMessage>>| async move {
        asking.register(&cx.addr());
        let node = asking
            .identify(&cx, at)
            .await
            .map_err(QueryError::Unreachable)?
            .node;
        let _ = asking.add_peer(node, at);
        let reply_to = asking.local_addr().to_string();
        let query = PeerMessage::MembersQuery { reply_to };
        let to = well_known(node, Service::PeerService);
        asking
            .send(cx.pid(), to, ChannelId::CONTROL, &query)
            .await
            .map_err(QueryError::Send)?;
        let deadline = cx.now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(cx.now());
            let Some(envelope) = cx.recv_timeout(left).await else {
                return Err(QueryError::TimedOut);
            };
            if let Envelope::Msg(message) = envelope {
                if let ArchivedPeerMessage::Members(members) = &*message {
                    return Ok(members.iter().filter_map(|m| m.member()).collect());
                }
            }
        }
    });
    transport.stop();
    runtime.shutdown();
    answer.unwrap_or(Err(QueryError::TimedOut))
}

/// The node id of a client ([`query_members`]): never a member's.
const CLIENT: NodeId = NodeId(0);

/// The address of this host that traffic to `peer` leaves from: where a
/// node at `peer` can dial us back. Found by connecting a UDP socket, which
/// sends nothing.
fn local_ip_towards(peer: SocketAddr) -> IpAddr {
    let unspecified: IpAddr = if peer.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    std::net::UdpSocket::bind((unspecified, 0))
        .and_then(|socket| {
            socket.connect(peer)?;
            socket.local_addr()
        })
        .map_or(unspecified, |local| local.ip())
}
