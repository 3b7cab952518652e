//! The runtimes alive in this OS process, by node id.
//!
//! Node ids must be unique among them: a pid names its node, and a waker
//! fired on a thread outside every runtime finds its runtime here.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::pid::NodeId;
use crate::scheduler::shared::Shared;

static RUNTIMES: Mutex<Vec<(NodeId, Weak<Shared>)>> = Mutex::new(Vec::new());

/// Claims `node` (or, when `None`, the lowest free id from 1) for a new
/// runtime. Returns `None` if `node` is taken.
pub(crate) fn claim(node: Option<NodeId>) -> Option<NodeId> {
    let mut runtimes = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner);
    let taken = |id: NodeId| runtimes.iter().any(|(claimed, _)| *claimed == id);
    let id = match node {
        Some(id) if taken(id) => return None,
        Some(id) => id,
        None => (1..=u16::MAX).map(NodeId).find(|&id| !taken(id))?,
    };
    runtimes.push((id, Weak::new()));
    Some(id)
}

/// Binds a claimed id to its runtime's shared state.
pub(crate) fn bind(node: NodeId, shared: &Arc<Shared>) {
    let mut runtimes = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(entry) = runtimes.iter_mut().find(|(id, _)| *id == node) {
        entry.1 = Arc::downgrade(shared);
    }
}

/// Gives `node` back.
pub(crate) fn release(node: NodeId) {
    let mut runtimes = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner);
    runtimes.retain(|(id, _)| *id != node);
}

/// The runtime with id `node`, if it is alive.
pub(crate) fn lookup(node: NodeId) -> Option<Arc<Shared>> {
    let runtimes = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner);
    runtimes
        .iter()
        .find(|(id, _)| *id == node)
        .and_then(|(_, shared)| shared.upgrade())
}
