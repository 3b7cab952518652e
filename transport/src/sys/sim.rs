//! The simulated backend: a network of hosts on a simulation's virtual
//! clock, under the transport's frame layer.
//!
//! A [`Network`] stands for the wires and the kernels' TCP stacks between
//! the nodes of a [`Simulation`]. Each node's driver is one of its hosts
//! ([`Network::driver`], an IP address); the node's transport binds,
//! accepts, connects, sends and receives through it exactly as through
//! io_uring or epoll (the same backend contract), so everything above the
//! sockets — handshakes, frames and their validation, lanes, credit,
//! acknowledgements, reconnects — is the real code.
//!
//! What the network models, per direction between two hosts ([`Link`]):
//!
//! - **latency**: a base plus a uniformly drawn jitter per send, so two
//!   connections between the same hosts reorder against each other; within
//!   one connection bytes arrive in order, as TCP keeps them;
//! - **loss**: a lost segment is retransmitted, as TCP does, so it (and
//!   everything behind it on its connection) arrives a retransmission
//!   timeout late;
//! - **partitions** ([`Network::partition`], one way or
//!   [`Network::partition_both`]): a send into a partition fails its
//!   connection, a connect started across one never completes (the
//!   dialer's own timeout ends it), and nothing else crosses it either
//!   (FINs, resets, connect answers), as on a cut cable.
//!
//! Message-level faults — dropping, doubling or delaying particular
//! messages of a channel — are the transport's fault rules
//! ([`crate::fault`]), which apply unchanged on top.
//!
//! Every delivery is an event on the receiving host's queue, handled by
//! its driver inside that node's turn; the sender sets the receiving
//! node's [`Alarm`] for when it is due, so the simulation visits that node
//! then, and its driver's [`Driver::next_event`] says it has it: no waker
//! is ever woken from another node's turn, and time jumps straight to the
//! next arrival. All
//! randomness comes from one stream of the simulation's seed, drawn in the
//! (deterministic) order of the sends, so a run replays exactly.
//!
//! A crashed node's sockets close as a killed process's do: its peers read
//! end of stream, and its listening address is free for its restart.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use foundation_sched::driver::{Driver, DriverFactory, Unpark};
use foundation_sched::sim::{Alarm, SimRng, Simulation};
use foundation_sched::time::{Clock, Instant, VirtualClock};
use rustc_hash::{FxHashMap, FxHashSet};

use super::Reactor as AnyReactor;

/// The random stream of the simulation that the network draws from.
const NETWORK_STREAM: u64 = u64::from_le_bytes(*b"network\0");

/// The first port handed out for connections and `:0` binds.
const EPHEMERAL_PORTS: u16 = 32768;

/// How one direction between two hosts behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// The least time a send takes to arrive.
    pub latency: Duration,
    /// Up to this much more, drawn uniformly per send.
    pub jitter: Duration,
    /// Probability that a send is lost once and retransmitted.
    pub loss: f64,
    /// How much later a retransmitted send arrives.
    pub retransmit: Duration,
}

impl Default for Link {
    /// A data-centre link: 50–100 µs one way, no loss, a 200 ms
    /// retransmission timeout (Linux's least).
    fn default() -> Link {
        Link {
            latency: Duration::from_micros(50),
            jitter: Duration::from_micros(50),
            loss: 0.0,
            retransmit: Duration::from_millis(200),
        }
    }
}

/// The simulated network of a [`Simulation`]. Cheap to clone; every clone
/// is the same network.
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use foundation_sched::sim::Simulation;
/// use foundation_sched::Runtime;
/// use foundation_transport::sim::Network;
///
/// let mut sim = Simulation::new(7);
/// let network = Network::new(&sim);
/// let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
/// let node = sim.add_node(Runtime::builder().driver(network.driver(ip))).unwrap();
/// // Inside the node, `Transport::start_simulated` listens on `ip`.
/// # let _ = node;
/// ```
#[derive(Clone)]
pub struct Network {
    net: Arc<Mutex<Net>>,
}

impl Network {
    /// A network on `simulation`'s clock, drawing from its seed, with
    /// [`Link::default`] between every two hosts.
    pub fn new(simulation: &Simulation) -> Network {
        Network {
            net: Arc::new(Mutex::new(Net {
                clock: simulation.clock(),
                rng: simulation.rng(NETWORK_STREAM),
                default_link: Link::default(),
                links: FxHashMap::default(),
                cut: FxHashSet::default(),
                hosts: FxHashMap::default(),
                listeners: FxHashMap::default(),
                connections: FxHashMap::default(),
                orphans: BinaryHeap::new(),
                next_connection: 0,
                next_event: 0,
            })),
        }
    }

    /// The driver factory of host `ip`: a node built with it reaches the
    /// network as `ip` (one shard; a simulated node has one).
    pub fn driver(&self, ip: IpAddr) -> DriverFactory {
        let network = self.clone();
        Arc::new(move |_shard| -> Box<dyn Driver> {
            network.lock().host(ip).drivers += 1;
            Box::new(SimDriver {
                host: Host {
                    network: network.clone(),
                    ip,
                },
            })
        })
    }

    /// Sets how every link without one of its own behaves.
    pub fn set_default_link(&self, link: Link) {
        self.lock().default_link = link;
    }

    /// Sets how sends from `from` to `to` behave.
    pub fn set_link(&self, from: IpAddr, to: IpAddr, link: Link) {
        self.lock().links.insert((from, to), link);
    }

    /// Cuts the direction from `from` to `to`: sends that way fail their
    /// connections, connects either way between the two never complete
    /// (a connection needs both directions).
    pub fn partition(&self, from: IpAddr, to: IpAddr) {
        self.lock().cut.insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition_both(&self, a: IpAddr, b: IpAddr) {
        let mut net = self.lock();
        net.cut.insert((a, b));
        net.cut.insert((b, a));
    }

    /// Restores both directions between `a` and `b`.
    pub fn heal(&self, a: IpAddr, b: IpAddr) {
        let mut net = self.lock();
        net.cut.remove(&(a, b));
        net.cut.remove(&(b, a));
    }

    /// Restores every direction.
    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }

    /// Connections some end of which is still open (for leak checks).
    pub fn open_connections(&self) -> usize {
        self.lock().connections.len()
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net = self.lock();
        f.debug_struct("Network")
            .field("hosts", &net.hosts.len())
            .field("connections", &net.connections.len())
            .finish()
    }
}

/// A host of the network: what a node's driver and sockets know of it.
#[derive(Clone)]
struct Host {
    network: Network,
    ip: IpAddr,
}

/// The network's state: links, listeners, connections and, per host, the
/// deliveries on their way to it.
struct Net {
    clock: Arc<VirtualClock>,
    rng: SimRng,
    default_link: Link,
    links: FxHashMap<(IpAddr, IpAddr), Link>,
    /// Directions that are partitioned.
    cut: FxHashSet<(IpAddr, IpAddr)>,
    hosts: FxHashMap<IpAddr, HostState>,
    listeners: FxHashMap<SocketAddr, Backlog>,
    connections: FxHashMap<u64, Connection>,
    /// Arrivals at hosts whose node is down: handled by any node's driver
    /// (the host's kernel answers for its dead process: a connect is
    /// refused, bytes for a closed socket reset), unless the host is up
    /// again by then.
    orphans: BinaryHeap<Reverse<Arrival>>,
    next_connection: u64,
    /// Orders events due at the same instant by when they were sent.
    next_event: u64,
}

struct HostState {
    arrivals: BinaryHeap<Reverse<Arrival>>,
    /// Live drivers of this host: 0 while its node is down.
    drivers: usize,
    /// Tells the simulation when an arrival here is due.
    alarm: Option<Alarm>,
    /// Ports bound by listeners or held by connections.
    ports: FxHashSet<u16>,
    next_port: u16,
}

/// An event on its way to a host.
struct Arrival {
    at: Instant,
    order: u64,
    to: IpAddr,
    event: Event,
}

impl PartialEq for Arrival {
    fn eq(&self, other: &Arrival) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Arrival {}

impl PartialOrd for Arrival {
    fn partial_cmp(&self, other: &Arrival) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Arrival {
    fn cmp(&self, other: &Arrival) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

enum Event {
    /// A connect reaches the listener it is for.
    Syn {
        connection: u64,
        to: SocketAddr,
    },
    /// The listener's answer reaches the dialer.
    Established {
        connection: u64,
    },
    /// Nobody listens where the dialer connected.
    Refused {
        connection: u64,
    },
    Data {
        connection: u64,
        to: Side,
        bytes: Vec<u8>,
    },
    Fin {
        connection: u64,
        to: Side,
    },
    Reset {
        connection: u64,
        to: Side,
    },
}

/// The two ends of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Dialer = 0,
    Acceptor = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Dialer => Side::Acceptor,
            Side::Acceptor => Side::Dialer,
        }
    }
}

struct Backlog {
    ready: VecDeque<u64>,
    waker: Option<Waker>,
}

struct Connection {
    ends: [End; 2],
}

struct End {
    addr: SocketAddr,
    /// A socket owns this end (or, for an acceptor, will once accepted).
    open: bool,
    /// How the connect ended, for a dialer; `Ok` for an acceptor.
    connected: Option<Result<(), io::ErrorKind>>,
    inbox: VecDeque<u8>,
    /// The other end closed or shut its side: reads end once the inbox is.
    fin: bool,
    reset: bool,
    /// This end shut its own side: sends fail.
    shut: bool,
    /// When the last byte sent from this end arrives: later sends arrive
    /// no earlier, as TCP keeps order.
    sent_until: Instant,
    waker: Option<Waker>,
}

impl End {
    fn new(addr: SocketAddr) -> End {
        End {
            addr,
            open: true,
            connected: None,
            inbox: VecDeque::new(),
            fin: false,
            reset: false,
            shut: false,
            sent_until: Instant::default(),
            waker: None,
        }
    }
}

impl End {
    /// Hands over the waiting task's waker, if a socket owns this end.
    fn wake(&mut self, wakers: &mut Vec<Waker>) {
        if self.open {
            wakers.extend(self.waker.take());
        }
    }
}

impl Connection {
    fn end(&mut self, side: Side) -> &mut End {
        &mut self.ends[side as usize]
    }
}

impl Net {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn host(&mut self, ip: IpAddr) -> &mut HostState {
        self.hosts.entry(ip).or_insert_with(|| HostState {
            arrivals: BinaryHeap::new(),
            drivers: 0,
            alarm: None,
            ports: FxHashSet::default(),
            next_port: EPHEMERAL_PORTS,
        })
    }

    fn is_cut(&self, from: IpAddr, to: IpAddr) -> bool {
        self.cut.contains(&(from, to))
    }

    /// When a send from `from` to `to` made now arrives.
    fn arrival(&mut self, from: IpAddr, to: IpAddr) -> Instant {
        let link = self
            .links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_link);
        let jitter = u64::try_from(link.jitter.as_nanos()).unwrap_or(u64::MAX);
        let mut at = self.now() + link.latency + Duration::from_nanos(self.rng.below(jitter + 1));
        if link.loss > 0.0 && self.rng.chance(link.loss) {
            at = at + link.retransmit;
        }
        at
    }

    fn schedule(&mut self, to: IpAddr, at: Instant, event: Event) {
        let order = self.next_event;
        self.next_event += 1;
        self.arrive(Arrival {
            at,
            order,
            to,
            event,
        });
    }

    /// Queues `arrival` at its host, or with the orphans while the host is
    /// down, and sets the alarm of the node that will handle it.
    fn arrive(&mut self, arrival: Arrival) {
        let at = arrival.at;
        let host = self.host(arrival.to);
        if host.drivers == 0 {
            self.orphan(arrival);
        } else {
            host.arrivals.push(Reverse(arrival));
            if let Some(alarm) = &host.alarm {
                alarm.at(at);
            }
        }
    }

    /// Keeps `arrival`, for a host that is down, for the first live host
    /// (by address) to handle when it is due.
    fn orphan(&mut self, arrival: Arrival) {
        if let Some(alarm) = self.keeper() {
            alarm.at(arrival.at);
        }
        self.orphans.push(Reverse(arrival));
    }

    /// The alarm of the live host that looks after the orphans.
    fn keeper(&self) -> Option<&Alarm> {
        self.hosts
            .iter()
            .filter(|(_, host)| host.drivers > 0)
            .min_by_key(|(ip, _)| **ip)
            .and_then(|(_, host)| host.alarm.as_ref())
    }

    /// When the next arrival for `ip`'s driver is due: its own, or an
    /// orphan's.
    fn next_arrival(&mut self, ip: IpAddr) -> Option<Instant> {
        let own = self.host(ip).arrivals.peek().map(|Reverse(a)| a.at);
        let orphan = self.orphans.peek().map(|Reverse(a)| a.at);
        own.into_iter().chain(orphan).min()
    }

    /// Takes `port` of `ip`, or a free port if it is 0.
    fn take_port(&mut self, ip: IpAddr, port: u16) -> io::Result<u16> {
        let host = self.host(ip);
        if port != 0 {
            return match host.ports.insert(port) {
                true => Ok(port),
                false => Err(io::ErrorKind::AddrInUse.into()),
            };
        }
        for _ in 0..=u16::MAX - EPHEMERAL_PORTS {
            let port = host.next_port;
            host.next_port = port.checked_add(1).unwrap_or(EPHEMERAL_PORTS);
            if host.ports.insert(port) {
                return Ok(port);
            }
        }
        Err(io::ErrorKind::AddrInUse.into())
    }

    fn release_port(&mut self, addr: SocketAddr) {
        self.host(addr.ip()).ports.remove(&addr.port());
    }

    /// Sends `event` from `side` of `connection` to its other end, after
    /// what that side sent before; lost if the way there is cut.
    fn send_from(&mut self, connection: u64, side: Side, event: Event) {
        let Some(conn) = self.connections.get_mut(&connection) else {
            return;
        };
        let from = conn.end(side).addr.ip();
        let to = conn.end(side.other()).addr.ip();
        let sent_until = conn.end(side).sent_until;
        if self.is_cut(from, to) {
            return;
        }
        let at = self.arrival(from, to).max(sent_until);
        if let Some(conn) = self.connections.get_mut(&connection) {
            conn.end(side).sent_until = at;
        }
        self.schedule(to, at, event);
    }

    /// Forgets `connection` once no socket owns either end.
    fn forget_if_closed(&mut self, connection: u64) {
        let closed = self
            .connections
            .get(&connection)
            .is_some_and(|conn| conn.ends.iter().all(|end| !end.open));
        if closed {
            if let Some(conn) = self.connections.remove(&connection) {
                self.release_port(conn.ends[Side::Dialer as usize].addr);
            }
        }
    }

    /// Handles what is due at `ip` by now, and the orphans due; collects
    /// the wakers to wake (all of them `ip`'s: an orphan wakes nobody, as
    /// no process of a down host waits).
    fn deliver_due(&mut self, ip: IpAddr, wakers: &mut Vec<Waker>) -> bool {
        let now = self.now();
        let due = |queue: &BinaryHeap<Reverse<Arrival>>| {
            queue
                .peek()
                .is_some_and(|Reverse(arrival)| arrival.at <= now)
        };
        let mut any = false;
        loop {
            if due(&self.host(ip).arrivals) {
                if let Some(Reverse(arrival)) = self.host(ip).arrivals.pop() {
                    self.handle(arrival.event, wakers);
                }
            } else if due(&self.orphans) {
                if let Some(Reverse(orphan)) = self.orphans.pop() {
                    if self.host(orphan.to).drivers == 0 {
                        self.handle(orphan.event, wakers);
                    } else {
                        // Its host is up again: its own driver takes it.
                        self.arrive(orphan);
                    }
                }
            } else {
                // Whoever handled orphans looks after the next one too.
                if let Some(Reverse(next)) = self.orphans.peek() {
                    let at = next.at;
                    if let Some(alarm) = &self.host(ip).alarm {
                        alarm.at(at);
                    }
                }
                return any;
            }
            any = true;
        }
    }

    fn handle(&mut self, event: Event, wakers: &mut Vec<Waker>) {
        match event {
            Event::Syn { connection, to } => {
                let listening = match self.listeners.get_mut(&to) {
                    Some(backlog) => {
                        backlog.ready.push_back(connection);
                        wakers.extend(backlog.waker.take());
                        true
                    }
                    None => false,
                };
                if listening {
                    self.send_from(
                        connection,
                        Side::Acceptor,
                        Event::Established { connection },
                    );
                } else {
                    if let Some(conn) = self.connections.get_mut(&connection) {
                        conn.end(Side::Acceptor).open = false;
                    }
                    self.send_from(connection, Side::Acceptor, Event::Refused { connection });
                }
            }
            Event::Established { connection } | Event::Refused { connection } => {
                let refused = matches!(event, Event::Refused { .. });
                if let Some(conn) = self.connections.get_mut(&connection) {
                    let end = conn.end(Side::Dialer);
                    if end.connected.is_none() {
                        end.connected = Some(if refused {
                            Err(io::ErrorKind::ConnectionRefused)
                        } else {
                            Ok(())
                        });
                    }
                    end.wake(wakers);
                }
                self.forget_if_closed(connection);
            }
            Event::Data {
                connection,
                to,
                bytes,
            } => {
                let Some(conn) = self.connections.get_mut(&connection) else {
                    return;
                };
                let end = conn.end(to);
                if end.open && !end.reset {
                    end.inbox.extend(&bytes);
                    end.wake(wakers);
                } else if !end.open {
                    // Bytes for a closed socket: its kernel resets.
                    self.send_from(
                        connection,
                        to,
                        Event::Reset {
                            connection,
                            to: to.other(),
                        },
                    );
                }
            }
            Event::Fin { connection, to } | Event::Reset { connection, to } => {
                let reset = matches!(event, Event::Reset { .. });
                if let Some(conn) = self.connections.get_mut(&connection) {
                    let end = conn.end(to);
                    end.fin = true;
                    end.reset |= reset;
                    end.wake(wakers);
                }
            }
        }
    }
}

/// A node's driver: its host's deliveries, handled in the node's turns.
struct SimDriver {
    host: Host,
}

impl Driver for SimDriver {
    fn enter(&mut self) {
        self.host.network.lock().host(self.host.ip).alarm = Alarm::current();
    }

    fn resume(&mut self) {
        super::enter(AnyReactor::Sim(Reactor {
            host: self.host.clone(),
        }));
    }

    fn suspend(&mut self) {
        super::leave();
    }

    fn poll(&mut self) -> bool {
        let mut wakers = Vec::new();
        let any = self
            .host
            .network
            .lock()
            .deliver_due(self.host.ip, &mut wakers);
        wakers.into_iter().for_each(Waker::wake);
        any
    }

    fn park(&mut self, _timeout: Option<Duration>) {
        // A simulation never parks a node: it moves the clock instead.
        self.poll();
    }

    fn unparker(&self) -> Arc<dyn Unpark> {
        Arc::new(NoUnpark)
    }

    fn next_event(&self) -> Option<Instant> {
        self.host.network.lock().next_arrival(self.host.ip)
    }
}

impl Drop for SimDriver {
    fn drop(&mut self) {
        // The node is down: what is on its way to it becomes an orphan.
        let mut net = self.host.network.lock();
        let host = net.host(self.host.ip);
        host.drivers -= 1;
        if host.drivers == 0 {
            host.alarm = None;
            let arrivals = std::mem::take(&mut host.arrivals);
            for Reverse(arrival) in arrivals {
                net.orphan(arrival);
            }
            // This host may have kept the orphans: hand them on.
            let next = net.orphans.peek().map(|Reverse(next)| next.at);
            if let (Some(at), Some(keeper)) = (next, net.keeper()) {
                keeper.at(at);
            }
        }
    }
}

/// A simulated node never parks, so there is nothing to wake.
struct NoUnpark;

impl Unpark for NoUnpark {
    fn unpark(&self) {}
}

/// The current node's host, as its transport reaches it.
pub(crate) struct Reactor {
    host: Host,
}

impl Reactor {
    /// Listens on `addr`: a loopback or unspecified address means this
    /// host's own, port 0 any free port.
    pub(crate) fn bind(&self, addr: SocketAddr) -> io::Result<Listener> {
        let ip = self.host.ip;
        if !(addr.ip().is_loopback() || addr.ip().is_unspecified() || addr.ip() == ip) {
            return Err(io::ErrorKind::AddrNotAvailable.into());
        }
        let mut net = self.host.network.lock();
        let addr = SocketAddr::new(ip, net.take_port(ip, addr.port())?);
        net.listeners.insert(
            addr,
            Backlog {
                ready: VecDeque::new(),
                waker: None,
            },
        );
        Ok(Listener {
            network: self.host.network.clone(),
            addr,
        })
    }

    /// Starts connecting to `to`.
    pub(crate) fn connect(&self, to: SocketAddr) -> io::Result<Stream> {
        let ip = self.host.ip;
        let network = self.host.network.clone();
        let mut net = network.lock();
        let port = net.take_port(ip, 0)?;
        let connection = net.next_connection;
        net.next_connection += 1;
        let mut acceptor = End::new(to);
        acceptor.connected = Some(Ok(()));
        net.connections.insert(
            connection,
            Connection {
                ends: [End::new(SocketAddr::new(ip, port)), acceptor],
            },
        );
        // A SYN into a cut is lost (this model does not send it again):
        // the connect hangs until the dialer gives up, and its next try
        // after the heal goes through. Nobody is at the other end.
        if net.is_cut(ip, to.ip()) || net.is_cut(to.ip(), ip) {
            if let Some(conn) = net.connections.get_mut(&connection) {
                conn.end(Side::Acceptor).open = false;
            }
        } else {
            net.send_from(connection, Side::Dialer, Event::Syn { connection, to });
        }
        drop(net);
        Ok(Stream::new(network, connection, Side::Dialer))
    }
}

/// A listening address of a host.
pub(crate) struct Listener {
    network: Network,
    addr: SocketAddr,
}

impl Listener {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Stream, SocketAddr)>> {
        let mut net = self.network.lock();
        let Some(backlog) = net.listeners.get_mut(&self.addr) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let Some(connection) = backlog.ready.pop_front() else {
            backlog.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let peer = net
            .connections
            .get_mut(&connection)
            .map(|conn| conn.end(Side::Dialer).addr);
        drop(net);
        let stream = Stream::new(self.network.clone(), connection, Side::Acceptor);
        match peer {
            Some(peer) => Poll::Ready(Ok((stream, peer))),
            None => Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into())),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut net = self.network.lock();
        let Some(backlog) = net.listeners.remove(&self.addr) else {
            return;
        };
        net.release_port(self.addr);
        // Connections nobody accepted are reset, as the kernel does.
        for connection in backlog.ready {
            if let Some(conn) = net.connections.get_mut(&connection) {
                conn.end(Side::Acceptor).open = false;
            }
            let reset = Event::Reset {
                connection,
                to: Side::Dialer,
            };
            net.send_from(connection, Side::Acceptor, reset);
            net.forget_if_closed(connection);
        }
    }
}

/// One end of a simulated connection.
pub(crate) struct Stream {
    network: Network,
    connection: u64,
    side: Side,
    /// The send in flight: its buffer and outcome (a simulated send is
    /// taken by the network at once).
    sent: RefCell<Option<(Vec<u8>, io::Result<()>)>>,
}

impl Stream {
    fn new(network: Network, connection: u64, side: Side) -> Stream {
        Stream {
            network,
            connection,
            side,
            sent: RefCell::new(None),
        }
    }

    /// Runs `f` on this stream's end, or says the connection is gone.
    fn with_end<R>(&self, f: impl FnOnce(&mut End) -> R) -> Option<R> {
        let mut net = self.network.lock();
        let conn = net.connections.get_mut(&self.connection)?;
        Some(f(conn.end(self.side)))
    }

    pub(crate) fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = self.with_end(|end| match end.connected {
            Some(outcome) => Some(outcome),
            None if end.reset => Some(Err(io::ErrorKind::ConnectionReset)),
            None => {
                end.waker = Some(cx.waker().clone());
                None
            }
        });
        match outcome.unwrap_or(Some(Err(io::ErrorKind::NotConnected))) {
            Some(outcome) => Poll::Ready(outcome.map_err(io::Error::from)),
            None => Poll::Pending,
        }
    }

    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let read = self.with_end(|end| {
            if !end.inbox.is_empty() {
                let n = dst.len().min(end.inbox.len());
                for (to, from) in dst.iter_mut().zip(end.inbox.drain(..n)) {
                    *to = from;
                }
                Poll::Ready(Ok(n))
            } else if end.reset {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            } else if end.fin {
                Poll::Ready(Ok(0))
            } else {
                end.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        read.unwrap_or(Poll::Ready(Err(io::ErrorKind::NotConnected.into())))
    }

    pub(crate) fn start_send(&self, buf: Vec<u8>) {
        let outcome = self.send(&buf);
        let previous = self.sent.borrow_mut().replace((buf, outcome));
        debug_assert!(previous.is_none(), "one send in flight per stream");
    }

    /// Puts `bytes` on the wire to the other end.
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut net = self.network.lock();
        let Some(conn) = net.connections.get_mut(&self.connection) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let (from, to) = (
            conn.end(self.side).addr.ip(),
            conn.end(self.side.other()).addr.ip(),
        );
        let end = conn.end(self.side);
        if end.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if end.shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if net.is_cut(from, to) {
            // Its segments are never acknowledged: the connection times
            // out. The other end hears nothing, as across a cut cable.
            if let Some(conn) = net.connections.get_mut(&self.connection) {
                conn.end(self.side).reset = true;
            }
            return Err(io::ErrorKind::TimedOut.into());
        }
        let data = Event::Data {
            connection: self.connection,
            to: self.side.other(),
            bytes: bytes.to_vec(),
        };
        net.send_from(self.connection, self.side, data);
        Ok(())
    }

    pub(crate) fn sending(&self) -> bool {
        self.sent.borrow().is_some()
    }

    pub(crate) fn poll_sent(&self, _cx: &mut Context<'_>) -> Poll<(Vec<u8>, io::Result<()>)> {
        let sent = self.sent.borrow_mut().take();
        Poll::Ready(sent.unwrap_or_else(|| (Vec::new(), Ok(()))))
    }

    pub(crate) fn shutdown(&self) -> io::Result<()> {
        let mut net = self.network.lock();
        let Some(conn) = net.connections.get_mut(&self.connection) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let end = conn.end(self.side);
        let first = !end.shut;
        end.shut = true;
        end.fin = true;
        let waker = end.waker.take();
        if first {
            let fin = Event::Fin {
                connection: self.connection,
                to: self.side.other(),
            };
            net.send_from(self.connection, self.side, fin);
        }
        drop(net);
        waker.into_iter().for_each(Waker::wake);
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut net = self.network.lock();
        let Some(conn) = net.connections.get_mut(&self.connection) else {
            return;
        };
        let end = conn.end(self.side);
        end.open = false;
        end.waker = None;
        let tell = !(end.shut || end.reset);
        if tell {
            let fin = Event::Fin {
                connection: self.connection,
                to: self.side.other(),
            };
            net.send_from(self.connection, self.side, fin);
        }
        net.forget_if_closed(self.connection);
    }
}
