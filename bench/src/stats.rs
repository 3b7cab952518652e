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

    /// How long after `earlier` this one started (zero if before).
    pub(crate) fn since(&self, earlier: &Stopwatch) -> Duration {
        self.started.saturating_duration_since(earlier.started)
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
    /// 99.9th percentile round trip: the tail a thousandth of the calls see,
    /// where head-of-line blocking and scheduler hiccups show first.
    pub(crate) p999_ns: f64,
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
                p999_ns: f64::NAN,
                mean_ns: f64::NAN,
            };
        }
        samples.sort_unstable();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            p50_ns: percentile_of_sorted(&samples, 500) as f64,
            p99_ns: percentile_of_sorted(&samples, 990) as f64,
            p999_ns: percentile_of_sorted(&samples, 999) as f64,
            mean_ns: sum as f64 / samples.len() as f64,
        }
    }
}

/// Throughput of a run that moved messages of one size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Throughput {
    /// Messages per second.
    pub(crate) msgs_per_s: f64,
    /// Megabytes (10^6 bytes) of payload per second; length prefixes,
    /// headers and other framing are not counted.
    pub(crate) mb_per_s: f64,
}

impl Throughput {
    /// The throughput of `msgs` messages of `size` payload bytes each moved
    /// in `elapsed`.
    pub(crate) fn new(msgs: u64, size: usize, elapsed: Duration) -> Self {
        let msgs_per_s = rate(msgs, elapsed);
        Self {
            msgs_per_s,
            mb_per_s: msgs_per_s * size as f64 / 1e6,
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

/// A ratio of two subjects measured side by side, repetition by
/// repetition: how far apart they are, and how sure that is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PairedRatio {
    /// Geometric mean of the repetitions' ratios.
    pub(crate) ratio: f64,
    /// Its standard error. With many pairs, about two of them either side
    /// hold the ratio of the machine as it was during the run; with three
    /// pairs, it takes about four.
    pub(crate) error: f64,
    /// Repetitions paired.
    pub(crate) pairs: usize,
}

impl PairedRatio {
    /// `a[i] / b[i]` over the repetitions both have (a subject that failed
    /// has fewer; its samples are still the first repetitions), in log
    /// space, where a ratio and its inverse are equally far from one.
    /// `None` with fewer than two usable pairs.
    pub(crate) fn of(a: &[f64], b: &[f64]) -> Option<PairedRatio> {
        let logs: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a / b).ln())
            .filter(|log| log.is_finite())
            .collect();
        let pairs = logs.len();
        if pairs < 2 {
            return None;
        }
        let n = pairs as f64;
        let mean = logs.iter().sum::<f64>() / n;
        let variance = logs.iter().map(|log| (log - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let ratio = mean.exp();
        Some(PairedRatio {
            ratio,
            error: ratio * (variance / n).sqrt(),
            pairs,
        })
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

/// Nearest-rank percentile of a non-empty ascending slice, the percentile
/// given in thousandths (`999` is p99.9).
///
/// The rank is computed in integers: in floating point `0.999 * 1000` is
/// `999.0000000000001`, whose ceiling would pick the maximum instead.
fn percentile_of_sorted(sorted: &[u64], permille: u64) -> u64 {
    let len = sorted.len() as u64;
    let rank = (permille * len).div_ceil(1000);
    sorted[rank.clamp(1, len) as usize - 1]
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
    fn a_paired_ratio_is_the_geometric_mean_of_the_pairs() {
        let paired = PairedRatio::of(&[2.0, 8.0], &[1.0, 8.0]).unwrap();
        assert!((paired.ratio - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(paired.pairs, 2);
        // ln 2 and 0: standard deviation ln 2 / sqrt 2, over sqrt 2.
        assert!((paired.error - paired.ratio * 2f64.ln() / 2.0).abs() < 1e-12);
        let even = PairedRatio::of(&[3.0, 5.0, 7.0], &[3.0, 5.0, 7.0]).unwrap();
        assert_eq!((even.ratio, even.error), (1.0, 0.0));
    }

    #[test]
    fn a_paired_ratio_needs_two_pairs_of_real_figures() {
        assert_eq!(PairedRatio::of(&[1.0], &[1.0]), None);
        assert_eq!(PairedRatio::of(&[1.0, f64::NAN], &[1.0, 2.0]), None);
        assert_eq!(PairedRatio::of(&[1.0, 2.0, 3.0], &[1.0, 0.0]), None);
        // A subject that failed after two repetitions still pairs those.
        assert_eq!(
            PairedRatio::of(&[1.0, 1.0, 1.0], &[1.0, 1.0])
                .unwrap()
                .pairs,
            2
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let trips = RoundTrips::from_samples((1..=100).rev().collect());
        assert_eq!(trips.p50_ns, 50.0);
        assert_eq!(trips.p99_ns, 99.0);
        assert_eq!(trips.p999_ns, 100.0);
        assert_eq!(trips.mean_ns, 50.5);
    }

    #[test]
    fn throughput_counts_payload_megabytes() {
        let t = Throughput::new(2_000_000, 64, Duration::from_secs(2));
        assert_eq!(t.msgs_per_s, 1_000_000.0);
        assert_eq!(t.mb_per_s, 64.0);
    }

    #[test]
    fn p999_is_exact_at_round_counts() {
        for len in [1_000u64, 2_000, 10_000, 100_000] {
            let trips = RoundTrips::from_samples((1..=len).collect());
            assert_eq!(trips.p999_ns, (len * 999 / 1000) as f64, "{len} samples");
            assert_eq!(trips.p99_ns, (len * 99 / 100) as f64, "{len} samples");
        }
        let one = RoundTrips::from_samples(vec![7]);
        assert_eq!((one.p50_ns, one.p99_ns, one.p999_ns), (7.0, 7.0, 7.0));
        assert!(RoundTrips::from_samples(Vec::new()).p999_ns.is_nan());
    }
}
