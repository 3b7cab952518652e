//! Distribution: how the engine's processes on one node reach those on
//! another.
//!
//! Every node runs a few *well-known services* — its peer service today;
//! its process factory and name registry as remote spawn and remote names
//! land — that peers must reach before they know any pid on the node. Each
//! is registered with the transport at a [`well_known`] alias: a pid on
//! shard 255, which no runtime has (a runtime has at most 255 shards,
//! numbered from 0), so an alias never names a real process. Slot 0 of
//! that shard is the runtime's own "outside" sender; the services take the
//! slots after it.

use foundation_sched::{NodeId, Pid, ShardId};

/// A service every node runs at a fixed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Service {
    /// The peer service: membership and failure detection.
    PeerService = 1,
}

/// Where `service` of `node` is reached.
pub(crate) fn well_known(node: NodeId, service: Service) -> Pid {
    Pid::new(node, ShardId(u8::MAX), service as u32, 0)
}
