//! The stall watchdog: reports a process that keeps its shard busy longer
//! than the threshold in one poll (a blocking call, a long loop without
//! `.await`).
//!
//! Each shard bumps a counter before and after every poll (odd while a poll
//! runs) and publishes the pid it polls: two relaxed stores, no clock read
//! on the hot path. The watchdog thread samples the counters every half
//! threshold with the runtime's clock. A counter that stays on the same odd
//! value for at least the threshold is one poll that long: it is reported
//! once, with its pid, in a log line and in [`Handle::stalls`](crate::Handle::stalls).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::pid::{Pid, ShardId};
use crate::scheduler::shared::Shared;
use crate::time::Instant;

/// A poll that blocked its shard for longer than the stall threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The process being polled.
    pub pid: Pid,
    /// Its shard.
    pub shard: ShardId,
    /// How long the poll had run when it was reported (at least the
    /// threshold).
    pub blocked_for: Duration,
}

/// Starts the watchdog thread; it ends when the runtime shuts down.
pub(crate) fn spawn_watchdog(shared: Arc<Shared>, threshold: Duration) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("foundation-stall-watchdog".into())
        .spawn(move || watch(&shared, threshold))
        .expect("the stall watchdog thread starts")
}

/// What the watchdog last saw of one shard.
#[derive(Clone, Copy)]
struct Sample {
    polls: u64,
    since: Instant,
    reported: bool,
}

fn watch(shared: &Shared, threshold: Duration) {
    let period = (threshold / 2).max(Duration::from_millis(1));
    let start = shared.clock.now();
    let mut samples = vec![
        Sample {
            polls: 0,
            since: start,
            reported: false,
        };
        shared.shards.len()
    ];
    while !shared.shutdown.load(Ordering::Acquire) {
        thread::park_timeout(period);
        let now = shared.clock.now();
        for (index, (shard, sample)) in shared.shards.iter().zip(&mut samples).enumerate() {
            let polls = shard.polls.load(Ordering::Acquire);
            let pid = Pid::from_bits(shard.polling.load(Ordering::Relaxed));
            if polls != sample.polls || polls % 2 == 0 {
                *sample = Sample {
                    polls,
                    since: now,
                    reported: false,
                };
                continue;
            }
            let blocked_for = now - sample.since;
            if !sample.reported && blocked_for >= threshold {
                sample.reported = true;
                tracing::warn!(%pid, shard = index, ?blocked_for, "process stalled its shard");
                shared.record_stall(Stall {
                    pid,
                    shard: ShardId(index as u8),
                    blocked_for,
                });
            }
        }
    }
}
