//! A shard's run queue: runnable processes in priority order.
//!
//! Three FIFO queues, one per [`Priority`], as in Erlang: a `High` process
//! runs before any `Normal` or `Low` one, so work that must not wait — the
//! transport's control channel, a supervisor's bookkeeping — is not queued
//! behind a backlog of ordinary processes. `Low` processes are not starved
//! by `Normal` ones: while both have work, every [`LOW_EVERY`]th pick is a
//! `Low` one. `High` processes *do* starve the others while they stay
//! runnable, which is what they are for; they should run briefly.

use std::collections::VecDeque;

use crate::process::Priority;

/// While `Normal` and `Low` processes both wait, one pick in this many
/// takes a `Low` one.
const LOW_EVERY: u32 = 8;

/// Slots of runnable processes, by priority.
#[derive(Default)]
pub(crate) struct RunQueue {
    high: VecDeque<u32>,
    normal: VecDeque<u32>,
    low: VecDeque<u32>,
    /// `Normal` picks since the last `Low` one.
    normal_streak: u32,
}

impl RunQueue {
    pub(crate) fn push(&mut self, slot: u32, priority: Priority) {
        match priority {
            Priority::High => self.high.push_back(slot),
            Priority::Normal => self.normal.push_back(slot),
            Priority::Low => self.low.push_back(slot),
        }
    }

    /// The next process to run.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<u32> {
        if let Some(slot) = self.high.pop_front() {
            return Some(slot);
        }
        if self.low.is_empty() {
            return self.normal.pop_front();
        }
        if self.normal_streak < LOW_EVERY {
            if let Some(slot) = self.normal.pop_front() {
                self.normal_streak += 1;
                return Some(slot);
            }
        }
        self.normal_streak = 0;
        self.low.pop_front()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.high.is_empty() && self.normal.is_empty() && self.low.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.high.len() + self.normal.len() + self.low.len()
    }

    pub(crate) fn clear(&mut self) {
        self.high.clear();
        self.normal.clear();
        self.low.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut RunQueue) -> Vec<u32> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn high_goes_first_and_each_level_is_fifo() {
        let mut queue = RunQueue::default();
        queue.push(1, Priority::Normal);
        queue.push(2, Priority::High);
        queue.push(3, Priority::Normal);
        queue.push(4, Priority::High);
        assert_eq!(queue.len(), 4);
        assert_eq!(drain(&mut queue), [2, 4, 1, 3]);
        assert!(queue.is_empty());
    }

    #[test]
    fn low_runs_once_per_streak_of_normal() {
        let mut queue = RunQueue::default();
        for slot in 0..20 {
            queue.push(slot, Priority::Normal);
        }
        queue.push(100, Priority::Low);
        queue.push(101, Priority::Low);
        let order = drain(&mut queue);
        let first_low = order.iter().position(|&slot| slot == 100).unwrap();
        let second_low = order.iter().position(|&slot| slot == 101).unwrap();
        assert_eq!(first_low, LOW_EVERY as usize);
        assert_eq!(second_low, 2 * LOW_EVERY as usize + 1);
        assert_eq!(order.len(), 22);
    }

    #[test]
    fn low_alone_runs() {
        let mut queue = RunQueue::default();
        queue.push(7, Priority::Low);
        queue.push(8, Priority::Low);
        assert_eq!(drain(&mut queue), [7, 8]);
    }
}
