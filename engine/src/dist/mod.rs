//! Distribution: processes on one node linking to, monitoring, and talking
//! to processes on another.
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
//! # Well-known services
//!
//! Every node runs a few services that peers must reach before they know
//! any pid on the node: the peer service, the signal service, and (as they
//! land) the process factory and the name registry. Each is registered with
//! the transport at a *well-known* alias: a pid on shard 255, which no
//! runtime has (a runtime has at most 255 shards, numbered from 0), so an
//! alias never names a real process. Slot 0 of that shard is the runtime's
//! own "outside" sender; the services take the slots after it.
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

mod signals;

use std::sync::{Arc, Mutex, PoisonError};

use foundation_sched::remote::{Distribution, Signal};
use foundation_sched::{Addr, Context, Envelope, ExitReason, Handle, NodeId, Pid, ShardId};
use foundation_transport::{ChannelId, Remote, SendError, Transport};

use crate::membership::{MemberEvent, PeerService};
use crate::supervision::ChildSpec;
use signals::{ArchivedWireSignal, Relations, WireSignal};

/// A service every node runs at a fixed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Service {
    /// The peer service: membership and failure detection.
    PeerService = 1,
    /// The signal service: links, monitors and exit signals.
    Signals = 2,
}

/// Where `service` of `node` is reached.
pub(crate) fn well_known(node: NodeId, service: Service) -> Pid {
    Pid::new(node, ShardId(u8::MAX), service as u32, 0)
}

/// A node's distribution: carries its processes' signals to other nodes
/// and theirs to it. Cheap to clone.
#[derive(Clone)]
pub struct Dist {
    shared: Arc<Shared>,
}

struct Shared {
    handle: Handle,
    transport: Transport,
    relations: Mutex<Relations>,
    /// The signal service, while it runs.
    service: Mutex<Option<Addr<Command>>>,
}

/// The signal service's mailbox.
enum Command {
    /// A local process's signal for a process on another node.
    Send(Pid, Signal),
    /// A signal from another node for a local process.
    Deliver(Pid, Signal),
    /// Membership declared `node` down.
    NodeDown(NodeId),
}

impl Dist {
    /// The distribution of the node whose runtime `handle` belongs to, over
    /// `transport`, ending relations with nodes that `peers` declares
    /// down. Installs itself as the runtime's
    /// [`Distribution`]; it carries signals once [`Dist::child_spec`] runs
    /// under a supervisor (until then, and while the service restarts, a
    /// link or monitor to another node is answered with `noconnection`).
    pub fn new(handle: &Handle, transport: Transport, peers: Arc<dyn PeerService>) -> Dist {
        let dist = Dist {
            shared: Arc::new(Shared {
                handle: handle.clone(),
                transport,
                relations: Mutex::new(Relations::default()),
                service: Mutex::new(None),
            }),
        };
        handle.set_distribution(Arc::new(Carrier(dist.shared.clone())));
        dist.shared.watch(peers);
        dist
    }

    /// The signal service as a supervised child (`signal_service`).
    pub fn child_spec(&self) -> ChildSpec {
        let shared = self.shared.clone();
        ChildSpec::worker("signal_service", move |cx: Context<Command>| {
            serve(cx, shared.clone())
        })
    }

    /// How many links and monitors join this node's processes to other
    /// nodes' (a leak check for tests).
    pub fn relations(&self) -> usize {
        self.shared.relations().len()
    }
}

/// What the runtime calls with signals for other nodes.
struct Carrier(Arc<Shared>);

impl Distribution for Carrier {
    fn signal(&self, to: Pid, signal: Signal) {
        let shared = &self.0;
        shared.relations().sent(to, &signal);
        match shared.service() {
            Some(service) => shared.handle.send(&service, Command::Send(to, signal)),
            None => shared.unreachable(to, signal),
        }
    }
}

impl Shared {
    fn relations(&self) -> std::sync::MutexGuard<'_, Relations> {
        self.relations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn service(&self) -> Option<Addr<Command>> {
        *self.service.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes to `peers`' events through a process that turns downs
    /// into commands for the signal service.
    fn watch(self: &Arc<Self>, peers: Arc<dyn PeerService>) {
        let shared = self.clone();
        let watcher = self
            .handle
            .spawn(move |cx: Context<MemberEvent>| async move {
                while let Envelope::Msg(event) = cx.recv().await {
                    if let MemberEvent::Down(member, _) = event {
                        match shared.service() {
                            Some(service) => cx.send(&service, Command::NodeDown(member.node)),
                            None => shared.node_down(member.node),
                        }
                    }
                }
            });
        if let Ok(watcher) = watcher {
            peers.subscribe(watcher);
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

    /// Ends every relation with `node`'s processes.
    fn node_down(&self, node: NodeId) {
        let ends = self.relations().node_down(node);
        for (local, signal) in ends {
            self.handle.deliver_signal(local, signal);
        }
    }
}

/// The signal service: sends local processes' signals in order, hands in
/// those from other nodes, and ends relations with nodes that go down.
async fn serve(cx: Context<Command>, shared: Arc<Shared>) {
    let me = cx.addr();
    let node = shared.handle.node();
    let inbox = cx.spawn_link(move |inbox: Context<Remote<WireSignal>>| async move {
        while let Envelope::Msg(message) = inbox.recv().await {
            let from = message.source().node();
            let archived: &ArchivedWireSignal = &message;
            match archived.decode(from, node) {
                Ok((to, signal)) => inbox.send(&me, Command::Deliver(to, signal)),
                Err(error) => tracing::warn!("signal from node {}: {error:?}", from.0),
            }
        }
    });
    shared
        .transport
        .register_as(well_known(node, Service::Signals), &inbox);
    *shared
        .service
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(cx.addr());
    while let Envelope::Msg(command) = cx.recv().await {
        match command {
            Command::Send(to, signal) => {
                let target = well_known(to.node(), Service::Signals);
                let wire = WireSignal::new(to, &signal);
                let sent = shared
                    .transport
                    .send(cx.pid(), target, ChannelId::CONTROL, &wire)
                    .await;
                match sent {
                    Ok(()) => {}
                    Err(SendError::UnknownPeer(_) | SendError::Closed) => {
                        shared.unreachable(to, signal)
                    }
                    Err(error) => {
                        tracing::warn!("signal for {to}: {error}");
                        shared.unreachable(to, signal);
                    }
                }
            }
            Command::Deliver(to, signal) => {
                shared.relations().received(to, &signal);
                shared.handle.deliver_signal(to, signal);
            }
            Command::NodeDown(node) => shared.node_down(node),
        }
    }
}
