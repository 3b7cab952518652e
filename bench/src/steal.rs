//! How much of the machine its host took while a case ran.
//!
//! On a virtual machine the host may run other work on the cores this
//! guest believes it has. The guest's kernel counts the time it was ready
//! to run but was not given as *steal* (`/proc/stat`). A case measured
//! while the host took a share of the cores measured a slower machine, and
//! an uneven one: the subject whose repetitions fell into the busy moments
//! looks worse than a peer that ran in the quiet ones. So every case
//! reports the share stolen while it ran, and a reader can tell a figure
//! that moved with the code from one that moved with the neighbours.

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`,
/// in clock ticks summed over all CPUs. On a machine with more cores than
/// a case keeps busy, the idle ones dilute the share the busy ones lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// All accounted time: user, nice, system, idle, iowait, irq, softirq
    /// and steal (guest time is already inside user and nice).
    total: u64,
    /// Time the host kept this guest's CPUs from running when they could.
    steal: u64,
}

impl CpuTimes {
    /// Reads the counters now; `None` where `/proc/stat` is missing or
    /// does not count steal (kernels before 2.6.11).
    pub(crate) fn read() -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|line| line.starts_with("cpu "))?;
        let fields = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|field| field.parse::<u64>().ok())
            .collect::<Option<Vec<u64>>>()?;
        let steal = *fields.get(7)?;
        Some(CpuTimes {
            total: fields.iter().sum(),
            steal,
        })
    }

    /// The share of CPU time stolen between `earlier` and these counters,
    /// in percent; `None` if no time passed or the counters went back.
    pub(crate) fn stolen_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let steal = self.steal.checked_sub(earlier.steal)?;
        (total > 0).then(|| 100.0 * steal as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str =
        "cpu  100 0 200 600 10 0 40 50 7 0\ncpu0 50 0 100 300 5 0 20 25 0 0\nintr 1\n";
    const AFTER: &str =
        "cpu  150 0 300 1300 10 0 90 150 9 0\ncpu0 75 0 150 650 5 0 45 75 0 0\nintr 2\n";

    #[test]
    fn the_share_stolen_is_steal_over_all_time() {
        let before = CpuTimes::parse(BEFORE).unwrap();
        let after = CpuTimes::parse(AFTER).unwrap();
        assert_eq!(before.total, 1000);
        assert_eq!(before.steal, 50);
        // 1000 more ticks, of which 100 stolen; guest time is not counted
        // twice.
        assert_eq!(after.stolen_since(&before), Some(10.0));
        assert_eq!(before.stolen_since(&before), None);
    }

    #[test]
    fn a_kernel_without_steal_gives_nothing() {
        assert_eq!(CpuTimes::parse("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(CpuTimes::parse("intr 1\n"), None);
    }

    #[test]
    fn this_machine_counts_steal() {
        assert!(CpuTimes::read().is_some());
    }
}
