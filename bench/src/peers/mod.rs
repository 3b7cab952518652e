//! The peers Foundation is measured against.
//!
//! Each module measures one implementation the way its own users would use
//! it, with the same message (64 bytes, [`Message`]) and the same counts as
//! the Foundation side, and returns plain figures (messages per second,
//! nanoseconds, [`RoundTrips`](crate::stats::RoundTrips)). The cases decide
//! which peer sits beside which Foundation figure.

pub(crate) mod crossbeam;
pub(crate) mod erlang;
pub(crate) mod tokio;

/// The message every throughput and latency figure moves: 64 bytes, copied
/// by value, as a small Erlang binary is copied into the receiver's heap.
pub(crate) type Message = [u8; 64];

/// Capacity of the bounded channels (tokio mpsc, crossbeam `bounded`): large
/// enough that a sender rarely waits on a receiver that keeps up, small
/// enough to stay in cache (64 KiB of messages).
pub(crate) const CHANNEL_CAPACITY: usize = 1024;

/// Cores available to this process (workers of multi-threaded peers).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}
