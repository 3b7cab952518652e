//! Cross-shard rings: how packets travel between shards.
//!
//! Every ordered pair of shards (source, destination) has one bounded
//! single-producer single-consumer ring ([`spsc`]). Only the source shard's
//! thread pushes and only the destination's pops, so a push or a pop is a
//! plain store plus one release/acquire pair, with no compare-and-swap and no
//! lock. The destination drains each inbound ring in batches.
//!
//! Messages are typed for the processes that exchange them, but a ring
//! carries packets of every type. [`erased`] stores a message of any type in
//! a fixed-size inline slot (boxing only messages larger than the slot), so
//! a cross-shard send does not allocate for small messages, and no memory
//! is freed on a thread other than the one that allocated it.
//!
//! These two modules hold the crate's lock-free unsafe code. Their tests run
//! under Miri, and [`spsc`] also has a loom model (`RUSTFLAGS="--cfg loom"`).

pub(crate) mod erased;
pub(crate) mod spsc;
mod sync;
