//! Cluster membership: which nodes are in the cluster, and which of them
//! are up.
//!
//! A *peer service* keeps a node's view of the cluster and tells
//! subscribers when a node comes up, is suspected, is trusted again or
//! goes down — and whether it went down by leaving or by failing. The
//! interface is the [`PeerService`] trait; [`FullMesh`] implements it the
//! way distributed Erlang connects nodes (every node a transport peer of
//! every other, made transitively as nodes learn of each other), with SWIM
//! failure detection. HyParView, for clusters of thousands, will implement
//! the same trait.
//!
//! # How a node joins and how failures are found
//!
//! A node joins through *seeds*, addresses of nodes already in the
//! cluster: it asks each who it is ([`Transport::identify`], which proves
//! the cookie both ways) and announces itself to it. From then on SWIM
//! spreads membership by gossip: each member probes a random
//! other member every [`FailureDetector::probe_period`], asks
//! [`FailureDetector::indirect_probes`] others to probe it when it does
//! not answer within [`FailureDetector::probe_timeout`], and suspects it
//! when none of them can reach it either. A suspected member that does not
//! refute the suspicion within [`FailureDetector::suspicion_timeout`] is
//! declared down by the whole cluster. SWIM packets travel on the `gossip`
//! channel; a node that leaves says so first on the acknowledged `control`
//! channel, so that its peers tell [`DownReason::Left`] from
//! [`DownReason::Failed`].
//!
//! [`Transport::identify`]: foundation_transport::Transport::identify

mod full_mesh;
pub(crate) mod swim;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use foundation_sched::{Addr, NodeId};
use serde::{Deserialize, Serialize};

pub(crate) use full_mesh::boot_stamp;
pub use full_mesh::{query_members, FullMesh, JoinError, QueryError};

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// Its id, unique in the cluster.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Where its transport listens.
    pub addr: SocketAddr,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (node {}, {})", self.name, self.node.0, self.addr)
    }
}

/// A change in the cluster as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A node joined, or this node learned of it.
    Up(Member),
    /// A node did not answer probes, directly or through others; it counts
    /// as up until it is declared down or refutes the suspicion.
    Suspect(Member),
    /// A suspected node refuted the suspicion.
    Trusted(Member),
    /// A node is no longer in the cluster.
    Down(Member, DownReason),
}

/// Why a node went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// It left the cluster on purpose (an orderly stop).
    Left,
    /// It failed: crashed, or cut off from the cluster long enough to be
    /// declared down.
    Failed,
}

/// The timings of SWIM failure detection.
///
/// The defaults suit a LAN or one machine: a node killed without a word is
/// seen as down by every peer within about half a second. A killed node is
/// found by the first member to probe it; that takes up to a probe period
/// per live member in turn, so larger clusters find it sooner, and the
/// suspicion timeout is what dominates. Raise `suspicion_timeout` where
/// pauses (GC-free as we are, a loaded host) could outlast it, since a
/// node declared down by mistake must rejoin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureDetector {
    /// How often each member probes another (default 100 ms).
    #[serde(with = "millis")]
    pub probe_period: Duration,
    /// How long a probe waits for its answer before asking others to probe
    /// (default 40 ms; must be below the probe period).
    #[serde(with = "millis")]
    pub probe_timeout: Duration,
    /// How many others are asked to probe a member that did not answer
    /// (default 3).
    pub indirect_probes: usize,
    /// How long a suspected member has to refute the suspicion before it
    /// is declared down (default 250 ms).
    #[serde(with = "millis")]
    pub suspicion_timeout: Duration,
    /// How long a member declared down is remembered (default 10 min):
    /// announced to now and then, so that two sides of a partition that
    /// healed find each other again, and dialled meanwhile. After that it
    /// is forgotten; a node gone for good costs nothing more.
    #[serde(with = "millis")]
    pub forget_after: Duration,
}

impl Default for FailureDetector {
    fn default() -> FailureDetector {
        FailureDetector {
            probe_period: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(40),
            indirect_probes: 3,
            suspicion_timeout: Duration::from_millis(250),
            forget_after: Duration::from_secs(600),
        }
    }
}

impl FailureDetector {
    /// Checks the timings fit together.
    pub fn check(&self) -> Result<(), String> {
        if self.probe_period.is_zero() || self.suspicion_timeout.is_zero() {
            return Err("the probe period and suspicion timeout must be positive".into());
        }
        if self.probe_timeout.is_zero() || self.probe_timeout >= self.probe_period {
            return Err("the probe timeout must be positive and below the probe period".into());
        }
        if self.indirect_probes == 0 {
            return Err("at least one indirect probe".into());
        }
        if self.forget_after < self.suspicion_timeout {
            return Err("members must be remembered longer than they are suspected".into());
        }
        Ok(())
    }
}

/// A node's view of the cluster, kept by a process of the node.
///
/// [`FullMesh`] is the default implementation; HyParView will be another.
pub trait PeerService: Send + Sync {
    /// The members up, this node excluded, in node order.
    fn members(&self) -> Vec<Member>;

    /// Sends `subscriber` an [`MemberEvent::Up`] for each member up now,
    /// then every change as it happens, until the subscriber ends.
    fn subscribe(&self, subscriber: Addr<MemberEvent>);

    /// Whether `node` is up: one of [`PeerService::members`], answered
    /// without building the list.
    fn is_up(&self, node: NodeId) -> bool;

    /// Calls `listener` with every change, in order, as the peer service
    /// makes it: on the peer service's own process, after its view changed
    /// and before subscribers hear of it. For the engine's own services
    /// whose state must follow the view step by step (distribution ends a
    /// node's relations before the node can be up again); `listener` must
    /// be quick and must not wait.
    fn listen(&self, listener: Listener);
}

/// What [`PeerService::listen`] calls with each change.
pub type Listener = Arc<dyn Fn(&MemberEvent) + Send + Sync>;

/// Durations in a configuration file, as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(duration: &Duration, to: S) -> Result<S::Ok, S::Error> {
        to.serialize_u64(duration.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<Duration, D::Error> {
        u64::deserialize(from).map(Duration::from_millis)
    }
}
