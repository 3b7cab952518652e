//! Wall-clock timing and the few statistics the harness needs.
//!
//! This is the one module of the bench that reads the wall clock: a benchmark
//! measures wall time by definition, so it allows the `Instant::now` that the
//! workspace's `clippy.toml` keeps out of runtime code.

use std::time::{Duration, Instant};

/// A running wall-clock timer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch {
    started: Instant,
}

impl Stopwatch {
    /// Starts timing now.
    #[allow(
        clippy::disallowed_methods,
        reason = "a benchmark reads the wall clock"
    )]
    pub(crate) fn start() -> Self {
        Self {
            started: Instant::now(),
        }
    }

    /// Time since [`Stopwatch::start`].
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Nanoseconds since [`Stopwatch::start`], saturating at `u64::MAX`.
    pub(crate) fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Round-trip latency of a ping-pong run, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RoundTrips {
    /// Median round trip.
    pub(crate) p50_ns: f64,
    /// 99th percentile round trip.
    pub(crate) p99_ns: f64,
    /// Mean round trip.
    pub(crate) mean_ns: f64,
}

impl RoundTrips {
    /// Summarises one run's round-trip samples (nanoseconds each).
    ///
    /// Returns NaN figures for an empty run.
    pub(crate) fn from_samples(mut samples: Vec<u64>) -> Self {
        if samples.is_empty() {
            return Self {
                p50_ns: f64::NAN,
                p99_ns: f64::NAN,
                mean_ns: f64::NAN,
            };
        }
        samples.sort_unstable();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            p50_ns: percentile_of_sorted(&samples, 50.0) as f64,
            p99_ns: percentile_of_sorted(&samples, 99.0) as f64,
            mean_ns: sum as f64 / samples.len() as f64,
        }
    }
}

/// Median of `values`, ignoring NaNs; NaN when none is left.
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Messages per second for `msgs` messages moved in `elapsed`.
pub(crate) fn rate(msgs: u64, elapsed: Duration) -> f64 {
    msgs as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Round trips to run untimed before sampling, so caches, allocator pools and
/// thread wake-ups have settled.
pub(crate) fn warm_up_rounds(rounds: u64) -> u64 {
    (rounds / 10).min(1_000)
}

/// Nearest-rank percentile of an ascending slice (`pct` in 0..=100).
fn percentile_of_sorted(sorted: &[u64], pct: f64) -> u64 {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median([]).is_nan());
        assert_eq!(median([f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let trips = RoundTrips::from_samples((1..=100).rev().collect());
        assert_eq!(trips.p50_ns, 50.0);
        assert_eq!(trips.p99_ns, 99.0);
        assert_eq!(trips.mean_ns, 50.5);
    }
}
