//! Interposition: faults injected on purpose, for tests and chaos runs.
//!
//! This machine's kernel has no `netem`, and a kernel-level fault cannot
//! tell channels apart anyway; so the transport carries its own layer.
//! Each node's [`Faults`] holds rules — by (sending node, receiving node,
//! channel), each field optional — and applies them to the messages it
//! receives and to the connections it makes and accepts:
//!
//! - [`Fault::Drop`]: a matching message is lost, with a probability. On
//!   an acknowledged channel a lost message would break the channel's
//!   promise, so there the connection is cut instead, before the message
//!   is delivered: the sender sends it again on the next connection, as it
//!   would after a real failure.
//! - [`Fault::Duplicate`]: a matching message is delivered twice, with a
//!   probability. Best-effort channels only: an acknowledged channel
//!   de-duplicates, and a rule does not make it lie.
//! - [`Fault::Delay`]: what arrives is held for a random time in a range
//!   before it is delivered, a received batch at a time and in order (the
//!   connection reads nothing meanwhile, so the sender feels it as a slow
//!   link).
//! - [`Fault::Partition`]: no traffic. Connections that match are cut at
//!   their next frame (received here) or batch (sent from here), and none
//!   is made or accepted until the rule is removed.
//!
//! Every decision draws from one seeded random stream
//! ([`foundation_sched::sim::SimRng`]), so that a simulation, which seeds
//! it from its own seed, replays the same faults.
//!
//! ```
//! use foundation_sched::NodeId;
//! use foundation_transport::fault::{Fault, FaultRule};
//! use foundation_transport::ChannelId;
//!
//! // Lose a tenth of what node 2 sends this node on `data`.
//! let rule = FaultRule::new(Fault::Drop(0.1))
//!     .from(NodeId(2))
//!     .channel(ChannelId::DATA);
//! assert!(rule.matches(NodeId(2), NodeId(1), ChannelId::DATA));
//! assert!(!rule.matches(NodeId(3), NodeId(1), ChannelId::DATA));
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use foundation_sched::sim::SimRng;
use foundation_sched::NodeId;

use crate::channel::ChannelId;

/// What a rule does to the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// Each message is lost with this probability (`0.0..=1.0`); on an
    /// acknowledged channel the connection is cut instead.
    Drop(f64),
    /// Each message is delivered twice with this probability
    /// (best-effort channels).
    Duplicate(f64),
    /// What arrives is held back for a time drawn evenly from `min..=max`.
    Delay {
        /// The shortest hold.
        min: Duration,
        /// The longest hold.
        max: Duration,
    },
    /// No traffic, and no connection.
    Partition,
}

/// A fault and the traffic it applies to: messages from `from` to `to` on
/// `channel`, where a field left `None` matches anything.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultRule {
    /// The sending node.
    pub from: Option<NodeId>,
    /// The receiving node.
    pub to: Option<NodeId>,
    /// The channel.
    pub channel: Option<ChannelId>,
    /// What happens to what matches.
    pub fault: Fault,
}

impl FaultRule {
    /// `fault` on all traffic; narrow it with the other methods.
    pub fn new(fault: Fault) -> FaultRule {
        FaultRule {
            from: None,
            to: None,
            channel: None,
            fault,
        }
    }

    /// Only traffic sent by `node`.
    pub fn from(mut self, node: NodeId) -> FaultRule {
        self.from = Some(node);
        self
    }

    /// Only traffic sent to `node`.
    pub fn to(mut self, node: NodeId) -> FaultRule {
        self.to = Some(node);
        self
    }

    /// Only traffic on `channel`.
    pub fn channel(mut self, channel: ChannelId) -> FaultRule {
        self.channel = Some(channel);
        self
    }

    /// Whether traffic from `from` to `to` on `channel` matches.
    pub fn matches(&self, from: NodeId, to: NodeId, channel: ChannelId) -> bool {
        self.from.is_none_or(|node| node == from)
            && self.to.is_none_or(|node| node == to)
            && self.channel.is_none_or(|c| c == channel)
    }
}

/// Names a rule in [`Faults`], to remove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(u64);

/// What to do with one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Deliver,
    /// Lost (best effort) or the connection cut (acknowledged).
    Drop,
    Duplicate,
    Partition,
}

/// A node's fault rules and the random stream they draw from.
#[derive(Debug)]
pub struct Faults {
    /// Whether any rule is set: the check every message makes.
    active: AtomicBool,
    rules: Mutex<Vec<(RuleId, FaultRule)>>,
    rng: Mutex<SimRng>,
    next_id: AtomicU64,
    /// Faults applied so far.
    injected: AtomicU64,
}

impl Faults {
    /// No rules; decisions drawn from stream `seed`.
    pub(crate) fn new(seed: u64) -> Faults {
        Faults {
            active: AtomicBool::new(false),
            rules: Mutex::new(Vec::new()),
            rng: Mutex::new(SimRng::new(seed, 0)),
            next_id: AtomicU64::new(1),
            injected: AtomicU64::new(0),
        }
    }

    /// Adds `rule`; rules apply in the order they were added, the first
    /// one that matches deciding.
    pub fn add(&self, rule: FaultRule) -> RuleId {
        let id = RuleId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut rules = self.lock();
        rules.push((id, rule));
        self.active.store(true, Ordering::Release);
        id
    }

    /// Removes rule `id`; `false` if there is none.
    pub fn remove(&self, id: RuleId) -> bool {
        let mut rules = self.lock();
        let before = rules.len();
        rules.retain(|(rule, _)| *rule != id);
        self.active.store(!rules.is_empty(), Ordering::Release);
        rules.len() < before
    }

    /// Removes every rule.
    pub fn clear(&self) {
        let mut rules = self.lock();
        rules.clear();
        self.active.store(false, Ordering::Release);
    }

    /// The rules, in the order they apply.
    pub fn rules(&self) -> Vec<(RuleId, FaultRule)> {
        self.lock().clone()
    }

    /// Faults applied so far: messages lost or doubled, connections cut
    /// or refused.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// What happens to a message from `from` to `to` on `channel`.
    pub(crate) fn verdict(&self, from: NodeId, to: NodeId, channel: ChannelId) -> Verdict {
        if !self.active.load(Ordering::Acquire) {
            return Verdict::Deliver;
        }
        // Delays apply to batches ([`Faults::delay`]), not here.
        let fault = self
            .lock()
            .iter()
            .filter(|(_, rule)| !matches!(rule.fault, Fault::Delay { .. }))
            .find(|(_, rule)| rule.matches(from, to, channel))
            .map(|(_, rule)| rule.fault);
        let verdict = match fault {
            None | Some(Fault::Delay { .. }) => Verdict::Deliver,
            Some(Fault::Partition) => Verdict::Partition,
            Some(Fault::Drop(p)) if self.draw(p) => Verdict::Drop,
            Some(Fault::Duplicate(p)) if self.draw(p) => Verdict::Duplicate,
            Some(_) => Verdict::Deliver,
        };
        if verdict != Verdict::Deliver {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// Whether traffic from `from` to `to` on `channel` is partitioned
    /// (counted as a fault when it is).
    pub(crate) fn partitioned(&self, from: NodeId, to: NodeId, channel: ChannelId) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let partitioned = self
            .lock()
            .iter()
            .any(|(_, rule)| rule.fault == Fault::Partition && rule.matches(from, to, channel));
        if partitioned {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        partitioned
    }

    /// How long to hold a batch that arrived from `from` at `to` on
    /// `channel`, if a delay rule matches.
    pub(crate) fn delay(&self, from: NodeId, to: NodeId, channel: ChannelId) -> Option<Duration> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let (min, max) = self.lock().iter().find_map(|(_, rule)| match rule.fault {
            Fault::Delay { min, max } if rule.matches(from, to, channel) => Some((min, max)),
            _ => None,
        })?;
        let spread = max.saturating_sub(min).as_nanos() as u64;
        let extra = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .below(spread.saturating_add(1));
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(min + Duration::from_nanos(extra))
    }

    fn draw(&self, probability: f64) -> bool {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .chance(probability)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(RuleId, FaultRule)>> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_decides() {
        let faults = Faults::new(1);
        let (a, b) = (NodeId(1), NodeId(2));
        assert_eq!(faults.verdict(a, b, ChannelId::DATA), Verdict::Deliver);
        let partition = faults.add(FaultRule::new(Fault::Partition).from(a).to(b));
        faults.add(FaultRule::new(Fault::Drop(1.0)));
        assert_eq!(faults.verdict(a, b, ChannelId::DATA), Verdict::Partition);
        assert!(faults.partitioned(a, b, ChannelId::CONTROL));
        // The other way is not partitioned: the catch-all drop applies.
        assert!(!faults.partitioned(b, a, ChannelId::CONTROL));
        assert_eq!(faults.verdict(b, a, ChannelId::DATA), Verdict::Drop);
        assert!(faults.remove(partition));
        assert!(!faults.remove(partition), "removed once");
        assert_eq!(faults.verdict(a, b, ChannelId::DATA), Verdict::Drop);
        faults.clear();
        assert_eq!(faults.verdict(a, b, ChannelId::DATA), Verdict::Deliver);
        assert_eq!(faults.injected(), 4);
    }

    #[test]
    fn probabilities_hold_and_replay_from_the_seed() {
        let draws = |seed| {
            let faults = Faults::new(seed);
            faults.add(FaultRule::new(Fault::Duplicate(0.25)).channel(ChannelId::DATA));
            (0..10_000)
                .map(|_| faults.verdict(NodeId(1), NodeId(2), ChannelId::DATA))
                .collect::<Vec<_>>()
        };
        let first = draws(7);
        assert_eq!(first, draws(7), "the same seed, the same faults");
        assert_ne!(first, draws(8));
        let faults = Faults::new(3);
        assert_eq!(faults.delay(NodeId(1), NodeId(2), ChannelId::DATA), None);
        let (min, max) = (Duration::from_millis(5), Duration::from_millis(9));
        faults.add(FaultRule::new(Fault::Delay { min, max }));
        for _ in 0..100 {
            let delay = faults.delay(NodeId(1), NodeId(2), ChannelId::DATA);
            assert!(delay.is_some_and(|d| (min..=max).contains(&d)), "{delay:?}");
        }
        // A delay rule decides no message's fate.
        assert_eq!(
            faults.verdict(NodeId(1), NodeId(2), ChannelId::DATA),
            Verdict::Deliver
        );
        let doubled = first.iter().filter(|v| **v == Verdict::Duplicate).count();
        assert!(
            (2_000..3_000).contains(&doubled),
            "{doubled} of 10,000 at 25 %"
        );
    }
}
