//! The runtime's clock: the one place that reads the wall clock.

use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A point on the runtime's monotonic clock: nanoseconds since the clock's
/// own origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The instant `nanos` nanoseconds after the clock's origin.
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant(nanos)
    }

    /// Nanoseconds since the clock's origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, rhs: Duration) -> Instant {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }
}

impl Sub for Instant {
    type Output = Duration;

    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

/// A monotonic clock. The real runtime uses [`SystemClock`]; a simulator
/// supplies a virtual one.
pub trait Clock: Send + Sync + 'static {
    /// The current instant. Never goes backward.
    fn now(&self) -> Instant;
}

/// The wall clock: `std::time::Instant` measured from the clock's creation.
#[derive(Debug)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    #[allow(clippy::disallowed_methods)] // The one sanctioned wall-clock read.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        let nanos = self.origin.elapsed().as_nanos();
        Instant(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to: the simulator's. Time jumps from
/// one event to the next, so an hour of timers passes in as long as their
/// handlers take to run.
///
/// ```
/// use foundation_sched::time::{Clock, Instant, VirtualClock};
/// use std::time::Duration;
///
/// let clock = VirtualClock::new();
/// assert_eq!(clock.now(), Instant::from_nanos(0));
/// clock.advance(Duration::from_secs(3600));
/// assert_eq!(clock.now().as_nanos(), 3_600_000_000_000);
/// clock.advance_to(Instant::from_nanos(5)); // never backward
/// assert_eq!(clock.now().as_nanos(), 3_600_000_000_000);
/// ```
#[derive(Debug, Default)]
pub struct VirtualClock {
    nanos: AtomicU64,
}

impl VirtualClock {
    /// A clock at its origin.
    pub fn new() -> VirtualClock {
        VirtualClock::default()
    }

    /// Moves the clock to `instant`, if that is later than now.
    pub fn advance_to(&self, instant: Instant) {
        self.nanos.fetch_max(instant.as_nanos(), Ordering::AcqRel);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.advance_to(self.now() + by);
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Instant {
        Instant(self.nanos.load(Ordering::Acquire))
    }
}
