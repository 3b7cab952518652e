//! Time, as the runtime sees it.
//!
//! All runtime logic reads time through a [`Clock`], never through
//! `std::time` directly, so that a simulated clock can replace the wall
//! clock and a whole cluster can run on virtual time. Timers live in one
//! hierarchical wheel per shard (`wheel`), at 1 ms resolution.

mod clock;
pub(crate) mod wheel;

pub use clock::{Clock, Instant, SystemClock, VirtualClock};
