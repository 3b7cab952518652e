//! Restart intensity: how many restarts a supervisor accepts in a period
//! before it gives up.

use std::collections::VecDeque;
use std::time::Duration;

use foundation_sched::time::Instant;
use foundation_sched::ExitReason;

use super::INTENSITY_EXCEEDED;

/// A sliding window of recent restarts.
#[derive(Clone, Debug)]
pub(crate) struct RestartIntensity {
    max_restarts: u32,
    period: Duration,
    /// When recent restarts happened, oldest first.
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    /// At most `max_restarts` restarts within any `period`.
    pub(crate) fn new(max_restarts: u32, period: Duration) -> RestartIntensity {
        RestartIntensity {
            max_restarts,
            period,
            recent: VecDeque::new(),
        }
    }

    /// Counts a restart at `now`; an [`INTENSITY_EXCEEDED`] error when it is
    /// one too many.
    pub(crate) fn record(&mut self, now: Instant) -> Result<(), ExitReason> {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) > self.period)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > self.max_restarts as usize {
            Err(ExitReason::error(INTENSITY_EXCEEDED))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn one_restart_too_many_within_the_period_is_refused() {
        let mut intensity = RestartIntensity::new(2, Duration::from_millis(100));
        assert!(intensity.record(at(0)).is_ok());
        assert!(intensity.record(at(10)).is_ok());
        assert!(intensity.record(at(20)).is_err());
    }

    #[test]
    fn restarts_older_than_the_period_stop_counting() {
        let mut intensity = RestartIntensity::new(1, Duration::from_millis(100));
        assert!(intensity.record(at(0)).is_ok());
        assert!(intensity.record(at(150)).is_ok());
        assert!(intensity.record(at(300)).is_ok());
        assert!(intensity.record(at(310)).is_err());
    }
}
