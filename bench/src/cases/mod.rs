//! Benchmark cases: each measures Foundation and its peers and returns
//! [`Measurement`]s.
//!
//! A case builds, per metric, a list of [`Trial`]s — Foundation's and each
//! in-process peer's — and hands them to [`Context::interleave`], which runs
//! them round-robin for `reps` repetitions and keeps every sample; the case
//! then reports medians. Erlang runs in its own VM, which repeats on its own,
//! so it is called once per configuration and its medians are added beside.
//!
//! A trial that fails (a panic, e.g. the `todo!()` of an unwritten subject,
//! or an error from a child process) is dropped from the remaining
//! repetitions; its figure shows as missing, with the reason in the note.

pub(crate) mod dist;
pub(crate) mod ecosystem;
pub(crate) mod local;
pub(crate) mod remote;
pub(crate) mod restart;
pub(crate) mod sim;
pub(crate) mod spawn;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::progress::Progress;
use crate::report::{Measurement, FOUNDATION};

/// The benchmark cases, in the order `quick` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    /// Spawn time and memory per idle process.
    Spawn,
    /// Local messaging: one-to-one, ping-pong, fan-in.
    Local,
    /// Restart latency of a supervised worker.
    Restart,
    /// Spawning and scaling an ecosystem of idle workers.
    Ecosystem,
    /// One-direction throughput between two nodes.
    Remote,
    /// Round trips between two nodes.
    Latency,
    /// Control round trips under a saturated bulk channel.
    Hol,
    /// A simulated cluster on virtual time.
    Sim,
    /// Remote spawns between two nodes.
    RemoteSpawn,
    /// Failure detection in a 3-node cluster.
    Detect,
}

impl Case {
    /// Every case.
    pub(crate) const ALL: &'static [Case] = &[
        Case::Spawn,
        Case::Local,
        Case::Restart,
        Case::Ecosystem,
        Case::Remote,
        Case::Latency,
        Case::Hol,
        Case::Sim,
        Case::RemoteSpawn,
        Case::Detect,
    ];

    /// Name used in tables, JSON (`case`) and chart file names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Case::Spawn => spawn::CASE,
            Case::Local => local::CASE,
            Case::Restart => restart::CASE,
            Case::Ecosystem => ecosystem::CASE,
            Case::Remote => remote::REMOTE,
            Case::Latency => remote::LATENCY,
            Case::Hol => remote::HOL,
            Case::Sim => sim::CASE,
            Case::RemoteSpawn => dist::REMOTE_SPAWN,
            Case::Detect => dist::DETECT,
        }
    }

    /// Measures the case.
    pub(crate) fn run(self, context: &Context) -> Vec<Measurement> {
        match self {
            Case::Spawn => spawn::run(context),
            Case::Local => local::run(context),
            Case::Restart => restart::run(context),
            Case::Ecosystem => ecosystem::run(context),
            Case::Remote => remote::run_remote(context),
            Case::Latency => remote::run_latency(context),
            Case::Hol => remote::run_hol(context),
            Case::Sim => sim::run(context),
            Case::RemoteSpawn => dist::run_remote_spawn(context),
            Case::Detect => dist::run_detect(context),
        }
    }
}

/// How much work each figure does.
#[derive(Debug, Clone)]
pub(crate) struct Scale {
    /// Repetitions per figure; the median is reported.
    pub(crate) reps: usize,
    /// Processes per spawn repetition (time and memory).
    pub(crate) spawn_count: usize,
    /// Messages per one-to-one repetition; fan-in sends as many in total.
    pub(crate) msgs: u64,
    /// Round trips per ping-pong repetition.
    pub(crate) rounds: u64,
    /// Senders in the fan-in case.
    pub(crate) senders: usize,
    /// Timed restarts per restart repetition.
    pub(crate) restarts: u64,
    /// Workers of the ecosystem case (scaled down to a tenth and back).
    pub(crate) ecosystem_workers: usize,
    /// Message sizes of the remote throughput case.
    pub(crate) remote_sizes: Vec<usize>,
    /// Nodes of the simulated cluster.
    pub(crate) sim_nodes: usize,
    /// Virtual seconds the simulated cluster runs.
    pub(crate) sim_seconds: u64,
    /// Remote spawns per repetition.
    pub(crate) remote_spawns: u64,
}

impl Scale {
    /// Figures worth quoting (ratios): a few minutes in all.
    pub(crate) fn full() -> Self {
        Self {
            reps: 5,
            spawn_count: 1_000_000,
            msgs: 2_000_000,
            rounds: 100_000,
            senders: 4,
            restarts: 10_000,
            ecosystem_workers: 100_000,
            remote_sizes: remote::SIZES.to_vec(),
            sim_nodes: 1000,
            sim_seconds: 60,
            remote_spawns: 200_000,
        }
    }

    /// A smoke run of every case, well under a minute in all.
    pub(crate) fn quick() -> Self {
        Self {
            reps: 3,
            spawn_count: 100_000,
            msgs: 500_000,
            rounds: 20_000,
            senders: 4,
            restarts: 2_000,
            ecosystem_workers: 20_000,
            remote_sizes: remote::SIZES.to_vec(),
            sim_nodes: 100,
            sim_seconds: 10,
            remote_spawns: 20_000,
        }
    }
}

/// What every case needs: the scale and the progress display.
#[derive(Debug)]
pub(crate) struct Context {
    /// How much work each figure does.
    pub(crate) scale: Scale,
    /// Where to say what is being measured.
    pub(crate) progress: Progress,
}

/// One subject's way to produce one sample of a figure.
pub(crate) struct Trial<'a, T> {
    name: &'static str,
    run: Box<dyn FnMut() -> Result<T, String> + 'a>,
}

impl<'a, T> Trial<'a, T> {
    /// A trial that cannot fail other than by panicking.
    pub(crate) fn new(name: &'static str, mut run: impl FnMut() -> T + 'a) -> Self {
        Self {
            name,
            run: Box::new(move || Ok(run())),
        }
    }

    /// A trial that reports its failures.
    pub(crate) fn fallible(
        name: &'static str,
        run: impl FnMut() -> Result<T, String> + 'a,
    ) -> Self {
        Self {
            name,
            run: Box::new(run),
        }
    }
}

/// Every sample of every trial of one figure, and the reason of each failure.
#[derive(Debug)]
pub(crate) struct Samples<T> {
    samples: BTreeMap<&'static str, Vec<T>>,
    failures: BTreeMap<&'static str, String>,
}

impl<T> Samples<T> {
    /// Median of `figure` over the samples of the trial `name`.
    pub(crate) fn median(&self, name: &str, figure: impl Fn(&T) -> f64) -> Option<f64> {
        let samples = self.samples.get(name).filter(|s| !s.is_empty())?;
        Some(crate::stats::median(samples.iter().map(figure))).filter(|v| !v.is_nan())
    }

    /// `a / b` of `figure`, paired repetition by repetition (the trials
    /// ran in turns, so each pair shared a moment of the machine).
    pub(crate) fn paired_ratio(
        &self,
        a: &str,
        b: &str,
        figure: impl Fn(&T) -> f64,
    ) -> Option<crate::stats::PairedRatio> {
        let figures = |name: &str| -> Vec<f64> {
            self.samples
                .get(name)
                .map(|samples| samples.iter().map(&figure).collect())
                .unwrap_or_default()
        };
        crate::stats::PairedRatio::of(&figures(a), &figures(b))
    }

    /// Fills `measurement` with the median of `figure`: Foundation's trial
    /// becomes the value, every other trial a peer, every failure a note.
    pub(crate) fn fill(&self, measurement: &mut Measurement, figure: impl Fn(&T) -> f64) {
        for &name in self.samples.keys() {
            let median = self.median(name, &figure);
            if name == FOUNDATION {
                measurement.value = median.unwrap_or(f64::NAN);
            } else {
                measurement.peer(name, median);
            }
        }
        for (name, why) in &self.failures {
            measurement.note(&format!("{name} not measured: {why}."));
        }
    }
}

impl Context {
    /// A context for a run at `scale`.
    pub(crate) fn new(scale: Scale, progress: Progress) -> Self {
        Self { scale, progress }
    }

    /// Runs `trials` round-robin for `scale.reps` repetitions (Foundation,
    /// peer, peer, Foundation, …) so that a noisy moment of the machine hits
    /// each subject alike. A failed trial is not run again.
    pub(crate) fn interleave<T>(&self, figure: &str, mut trials: Vec<Trial<'_, T>>) -> Samples<T> {
        let mut samples: BTreeMap<&'static str, Vec<T>> =
            trials.iter().map(|t| (t.name, Vec::new())).collect();
        let mut failures = BTreeMap::new();
        let reps = self.scale.reps;
        for rep in 1..=reps {
            for trial in &mut trials {
                if failures.contains_key(trial.name) {
                    continue;
                }
                self.progress
                    .step(format!("{figure}: {} (rep {rep}/{reps})", trial.name));
                match catch_quietly(&mut trial.run) {
                    Ok(Ok(sample)) => samples.entry(trial.name).or_default().push(sample),
                    Ok(Err(why)) | Err(why) => {
                        failures.insert(trial.name, why);
                    }
                }
            }
        }
        Samples { samples, failures }
    }
}

/// Runs `f`, turning a panic on this thread into `Err(message)` without the
/// panic hook's report on stderr (the message goes into the measurement's
/// note instead). Panics on other threads are reported as usual.
fn catch_quietly<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    thread_local! {
        static CATCHING: Cell<bool> = const { Cell::new(false) };
        static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!(" ({}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                let message = format!("{}{location}", payload_message(info.payload()));
                CAUGHT.with(|caught| *caught.borrow_mut() = Some(message));
            } else {
                previous(info);
            }
        }));
    });
    CATCHING.with(|catching| catching.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|catching| catching.set(false));
    result.map_err(|payload| {
        CAUGHT
            .with(RefCell::take)
            .unwrap_or_else(|| payload_message(&*payload))
    })
}

fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context running `reps` repetitions, with no progress display.
    fn quiet_context(reps: usize) -> Context {
        Context::new(
            Scale {
                reps,
                ..Scale::quick()
            },
            Progress::new(false),
        )
    }

    #[test]
    fn trials_pair_up_by_repetition() {
        let context = quiet_context(4);
        // Ratios 3, 1/2, 2 and 1 by repetition. Their geometric mean is
        // the same in any pairing; the error is not.
        let (a, b) = ([3.0, 1.0, 4.0, 1.0], [1.0, 2.0, 2.0, 1.0]);
        let (mut i, mut j) = (0, 0);
        let samples = context.interleave(
            "figure",
            vec![
                Trial::new("a", || {
                    i += 1;
                    a[i - 1]
                }),
                Trial::new("b", || {
                    j += 1;
                    b[j - 1]
                }),
            ],
        );
        let paired = samples.paired_ratio("a", "b", |v| *v).unwrap();
        let expected = crate::stats::PairedRatio::of(&a, &b).unwrap();
        assert_eq!(paired, expected);
        assert_eq!(paired.pairs, 4);
        let mut sorted = (a, b);
        sorted.0.sort_by(f64::total_cmp);
        sorted.1.sort_by(f64::total_cmp);
        let unpaired = crate::stats::PairedRatio::of(&sorted.0, &sorted.1).unwrap();
        assert!((paired.error - unpaired.error).abs() > 0.1);
        assert_eq!(samples.paired_ratio("a", "missing", |v| *v), None);
    }

    #[test]
    fn a_trial_that_failed_pairs_the_repetitions_it_ran() {
        let context = quiet_context(4);
        let mut runs = 0;
        let samples = context.interleave(
            "figure",
            vec![
                Trial::new("a", || 2.0),
                Trial::fallible("b", || {
                    runs += 1;
                    match runs {
                        1 => Ok(1.0),
                        2 => Ok(4.0),
                        _ => Err("gone".to_owned()),
                    }
                }),
            ],
        );
        let paired = samples.paired_ratio("a", "b", |v| *v).unwrap();
        assert_eq!(paired.pairs, 2);
        assert!((paired.ratio - 1.0).abs() < 1e-12, "2/1 and 2/4");
    }

    #[test]
    fn interleave_drops_failed_trials_and_keeps_the_rest() {
        let context = quiet_context(3);
        let mut calls = 0;
        let samples = context.interleave(
            "figure",
            vec![
                Trial::new(FOUNDATION, || -> f64 { todo!("foundation subject") }),
                Trial::new("peer", || {
                    calls += 1;
                    f64::from(calls)
                }),
                Trial::fallible("child", || Err("no child".to_owned())),
            ],
        );
        let mut measurement =
            Measurement::new("case", "figure", "unit", crate::report::Better::Lower);
        samples.fill(&mut measurement, |v| *v);
        assert!(measurement.value.is_nan());
        assert_eq!(measurement.peers.get("peer"), Some(&2.0));
        assert!(!measurement.peers.contains_key("child"));
        let note = measurement.note.unwrap_or_default();
        assert!(
            note.contains("not yet implemented: foundation subject"),
            "{note}"
        );
        assert!(note.contains("no child"), "{note}");
    }
}
