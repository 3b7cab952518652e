//! How a send finds its lane without taking a shared lock.
//!
//! The peers of a transport live in one map behind a `RwLock`, changed
//! only when a peer is added or removed. A send looked its peer up there
//! every time: a read lock, a SipHash of the node id and two reference
//! count round trips, all on cache lines shared with every other shard —
//! for 64-byte messages more than the rest of the send together. Each
//! thread now keeps its own map from (transport, node) to the peer; a hit
//! costs a thread-local access and an integer hash. An entry is trusted
//! only while its peer is not removed ([`Peer::is_removed`]), so a removed
//! peer, or one added again under the same node id, is looked up afresh.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use foundation_sched::NodeId;
use rustc_hash::FxHashMap;

use crate::Peer;

/// Entries a thread keeps before it starts over (peers of stopped
/// transports are never looked up again, so the map would only grow).
const MAX_ROUTES: usize = 4096;

/// Transport ids: the key that keeps two transports in one process apart
/// (an address could be reused by a later transport; an id is not).
static NEXT_TRANSPORT: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static ROUTES: RefCell<FxHashMap<(u64, NodeId), Arc<Peer>>> =
        RefCell::new(FxHashMap::default());
}

/// A fresh transport id.
pub(crate) fn transport_id() -> u64 {
    NEXT_TRANSPORT.fetch_add(1, Ordering::Relaxed)
}

/// Calls `f` with the peer `node` of transport `transport`, found in this
/// thread's routes or, on a miss, by `lookup` (and then remembered).
/// `None` if there is no such peer.
#[inline(always)]
pub(crate) fn with_peer<R>(
    transport: u64,
    node: NodeId,
    lookup: impl FnOnce() -> Option<Arc<Peer>>,
    f: impl FnOnce(&Peer) -> R,
) -> Option<R> {
    ROUTES.with(|routes| {
        // A send made while another is in `f` on this thread (a waker that
        // sends) goes the slow way instead of borrowing twice.
        let Ok(mut routes) = routes.try_borrow_mut() else {
            return lookup().map(|peer| f(&peer));
        };
        let key = (transport, node);
        match routes.get(&key) {
            Some(peer) if !peer.is_removed() => return Some(f(peer)),
            // Let a removed peer (and the buffers of its lanes) go.
            Some(_) => drop(routes.remove(&key)),
            None => {}
        }
        let peer = lookup()?;
        if routes.len() >= MAX_ROUTES {
            routes.clear();
        }
        Some(f(routes.entry(key).insert_entry(peer).into_mut()))
    })
}
