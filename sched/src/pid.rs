//! Process identifiers.
//!
//! A [`Pid`] is one `u64` that packs the node, the shard, the slot in that
//! shard's process table and the slot's generation:
//!
//! ```text
//!  63        48 47    40 39                  16 15          0
//! +------------+--------+----------------------+-------------+
//! |    node    | shard  |         slot         | generation  |
//! +------------+--------+----------------------+-------------+
//! ```
//!
//! The generation is what keeps a stale pid away from a reused slot: every
//! time a slot is freed its generation moves on, and a slot whose generation
//! would wrap is retired instead of reused. So a message, link or monitor
//! addressed to a dead process can never land on a newer process that
//! happens to occupy the same slot.

use std::fmt;

/// Identifies a node (one runtime) in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u16);

/// Identifies one shard (one pinned OS thread) of a runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u8);

/// The identity of a process: node, shard, slot and generation in one word.
///
/// Pids are cheap to copy, compare and hash, and print as Erlang does:
/// `<node.shard.slot.generation>`.
///
/// ```
/// use foundation_sched::{NodeId, Pid, ShardId};
///
/// let pid = Pid::new(NodeId(3), ShardId(1), 42, 7);
/// assert_eq!(pid.node(), NodeId(3));
/// assert_eq!(pid.shard(), ShardId(1));
/// assert_eq!(pid.to_string(), "<3.1.42.7>");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(u64);

impl Pid {
    /// Slots per shard: 2^24, about 16.7 million processes.
    pub const MAX_SLOTS: u32 = 1 << SLOT_BITS;
    /// The largest generation a slot reaches before it is retired.
    pub const MAX_GENERATION: u16 = u16::MAX;

    /// Packs a pid. `slot` must be below [`Pid::MAX_SLOTS`].
    ///
    /// # Panics
    /// When `slot` does not fit in 24 bits.
    pub fn new(node: NodeId, shard: ShardId, slot: u32, generation: u16) -> Pid {
        assert!(slot < Self::MAX_SLOTS, "slot {slot} does not fit in a pid");
        Pid(((node.0 as u64) << NODE_SHIFT)
            | ((shard.0 as u64) << SHARD_SHIFT)
            | ((slot as u64) << SLOT_SHIFT)
            | generation as u64)
    }

    /// Rebuilds a pid from [`Pid::to_bits`].
    pub fn from_bits(bits: u64) -> Pid {
        Pid(bits)
    }

    /// The packed representation, for the wire and for wakers.
    pub fn to_bits(self) -> u64 {
        self.0
    }

    /// The node the process runs on.
    pub fn node(self) -> NodeId {
        NodeId((self.0 >> NODE_SHIFT) as u16)
    }

    /// The shard the process runs on.
    pub fn shard(self) -> ShardId {
        ShardId((self.0 >> SHARD_SHIFT) as u8)
    }

    /// The slot in the shard's process table.
    pub fn slot(self) -> u32 {
        ((self.0 >> SLOT_SHIFT) as u32) & (Self::MAX_SLOTS - 1)
    }

    /// The slot's generation when the process was spawned.
    pub fn generation(self) -> u16 {
        self.0 as u16
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<{}.{}.{}.{}>",
            self.node().0,
            self.shard().0,
            self.slot(),
            self.generation()
        )
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

const SLOT_BITS: u32 = 24;
const SLOT_SHIFT: u32 = 16;
const SHARD_SHIFT: u32 = 40;
const NODE_SHIFT: u32 = 48;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_at_their_limits() {
        let pid = Pid::new(
            NodeId(u16::MAX),
            ShardId(u8::MAX),
            Pid::MAX_SLOTS - 1,
            u16::MAX,
        );
        assert_eq!(pid.node(), NodeId(u16::MAX));
        assert_eq!(pid.shard(), ShardId(u8::MAX));
        assert_eq!(pid.slot(), Pid::MAX_SLOTS - 1);
        assert_eq!(pid.generation(), u16::MAX);
        assert_eq!(Pid::from_bits(pid.to_bits()), pid);

        let zero = Pid::new(NodeId(0), ShardId(0), 0, 0);
        assert_eq!(zero.to_bits(), 0);
    }

    #[test]
    fn generation_distinguishes_reuse_of_a_slot() {
        let old = Pid::new(NodeId(1), ShardId(0), 9, 1);
        let new = Pid::new(NodeId(1), ShardId(0), 9, 2);
        assert_ne!(old, new);
        assert_eq!(old.slot(), new.slot());
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn oversized_slot_is_refused() {
        Pid::new(NodeId(0), ShardId(0), Pid::MAX_SLOTS, 0);
    }
}
