//! Erlang/OTP peer: green processes on the BEAM, when `erl` is on the PATH.
//!
//! The measuring code is an Erlang module, `fbench.erl` (beside this file,
//! embedded in the binary). It is written to `<target>/bench-erlang/`,
//! compiled once per run with `erl`'s own `compile:file/2`, and then run in a
//! fresh VM per configuration:
//!
//! - `spawn`: default schedulers (one per core), `+P` raised to fit the
//!   processes; each repetition reports time per spawn, growth of
//!   `erlang:memory(processes)` per process and resident-set growth per
//!   process;
//! - `local` on `+S 1:1` (everything on one scheduler, the match for one
//!   shard) and on `+S 2:2` with sender and receiver, pinger and ponger pinned
//!   to different schedulers (the match for across shards): one-to-one rate,
//!   ping-pong p50/p99/mean, fan-in rate;
//! - `restart` on `+S 1:1` (observer, supervisor and worker on one
//!   scheduler, as on one shard): a `one_for_one` supervisor (`fbench` is
//!   its callback module too) restarting a worker the observer kills; p50,
//!   p99 and mean of crash → replacement running;
//! - `ecosystem`: default schedulers, `+P` raised; a `simple_one_for_one`
//!   supervisor given its workers with `supervisor:start_child`, nine in ten
//!   taken away with `supervisor:terminate_child`, then started again.
//!
//! The VM does its own repetitions and prints every one; [`Figures::median`]
//! takes the median, as for every other figure. Without `erl` every function
//! returns `None` and a note is printed once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::progress::Progress;

/// The Erlang module the VM runs.
const SOURCE: &str = include_str!("fbench.erl");

/// Repeated figures printed by one VM run, by key.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    values: BTreeMap<String, Vec<f64>>,
}

impl Figures {
    /// Median over the repetitions of `key`, if the VM printed it.
    pub(crate) fn median(&self, key: &str) -> Option<f64> {
        let values = self.values.get(key)?;
        Some(crate::stats::median(values.iter().copied())).filter(|v| !v.is_nan())
    }

    /// A description of the VM for notes: "OTP 25, 2 schedulers".
    pub(crate) fn describe(&self) -> String {
        let otp = self
            .median("otp_release")
            .map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"));
        let schedulers = self
            .median("schedulers")
            .map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"));
        format!("OTP {otp}, {schedulers} scheduler(s)")
    }

    fn parse(stdout: &str) -> Self {
        let mut figures = Self::default();
        for line in stdout.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("fbench") {
                continue;
            }
            if let (Some(key), Some(Ok(value))) =
                (words.next(), words.next().map(str::parse::<f64>))
            {
                figures
                    .values
                    .entry(key.to_owned())
                    .or_default()
                    .push(value);
            }
        }
        figures
    }
}

/// The spawn figures of `reps` repetitions of `n` processes each: keys
/// `spawn_ns`, `spawn_bytes`, `spawn_rss_bytes`.
pub(crate) fn spawn(progress: &Progress, n: usize, reps: usize) -> Option<Figures> {
    let max_processes = n
        .saturating_mul(2)
        .saturating_add(100_000)
        .clamp(1 << 20, 134_217_727);
    let args = [
        "spawn".to_owned(),
        n.to_string(),
        reps.to_string(),
        crate::rss::page_size().to_string(),
    ];
    run(progress, &["+P", &max_processes.to_string()], &args)
}

/// The local messaging figures on `schedulers` schedulers: keys `send`,
/// `ping_pong_p50`, `ping_pong_p99`, `ping_pong_mean`, `fan_in`.
pub(crate) fn local(
    progress: &Progress,
    schedulers: usize,
    msgs: u64,
    rounds: u64,
    senders: usize,
    reps: usize,
) -> Option<Figures> {
    let schedulers = format!("{schedulers}:{schedulers}");
    let args = [
        "local".to_owned(),
        msgs.to_string(),
        rounds.to_string(),
        senders.to_string(),
        reps.to_string(),
    ];
    run(progress, &["+S", &schedulers], &args)
}

/// The supervisor's restarts one supervisor serves before a fresh one takes
/// over (untimed). OTP's supervisor keeps its restarts of the last `period`
/// (at least a second) in a list it walks on every restart, so thousands of
/// restarts in one supervisor measure that walk rather than a restart: 50
/// keeps it short enough not to show (measured on OTP 25: p50 2.2 µs at 10
/// or 50 per supervisor, 6.6 µs at 1,000, 58 µs at 12,000).
pub(crate) const RESTART_BATCH: u64 = 50;

/// The restart figures of `reps` repetitions of `restarts` timed restarts
/// each, on one scheduler: keys `restart_p50`, `restart_p99`,
/// `restart_mean`.
pub(crate) fn restart(progress: &Progress, restarts: u64, reps: usize) -> Option<Figures> {
    let args = [
        "restart".to_owned(),
        restarts.to_string(),
        RESTART_BATCH.to_string(),
        reps.to_string(),
    ];
    run(progress, &["+S", "1:1"], &args)
}

/// The ecosystem figures of `reps` repetitions with `workers` workers:
/// keys `ecosystem_spawn_ms`, `ecosystem_scale_down_ms`,
/// `ecosystem_scale_up_ms`.
pub(crate) fn ecosystem(progress: &Progress, workers: usize, reps: usize) -> Option<Figures> {
    let max_processes = workers
        .saturating_mul(2)
        .saturating_add(100_000)
        .clamp(1 << 20, 134_217_727);
    let args = [
        "ecosystem".to_owned(),
        workers.to_string(),
        reps.to_string(),
    ];
    run(progress, &["+P", &max_processes.to_string()], &args)
}

/// Runs `fbench:main(Args)` in a fresh VM with `vm_flags`; `None` (with a
/// note) when Erlang is unavailable or the run failed.
fn run(progress: &Progress, vm_flags: &[&str], args: &[String]) -> Option<Figures> {
    let dir = compiled(progress)?;
    let output = Command::new("erl")
        .arg("-noshell")
        .args(vm_flags)
        .arg("-pa")
        .arg(dir)
        .args(["-run", "fbench", "main"])
        .args(args)
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) => {
            progress.note(&format!("erlang: could not run erl: {error}"));
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        progress.note(&format!(
            "erlang: `erl … fbench main {}` failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            tail(&stdout),
            tail(&stderr)
        ));
        return None;
    }
    Some(Figures::parse(&stdout))
}

/// The directory holding the compiled `fbench.beam`, compiling it on first
/// use. `None` when `erl` is absent or compiling failed; says why once.
fn compiled(progress: &Progress) -> Option<&'static Path> {
    static COMPILED: OnceLock<Option<PathBuf>> = OnceLock::new();
    COMPILED
        .get_or_init(|| match compile() {
            Ok(dir) => Some(dir),
            Err(why) => {
                progress.note(&format!("note: no Erlang peer: {why}"));
                None
            }
        })
        .as_deref()
}

fn compile() -> Result<PathBuf, String> {
    if !on_path("erl") {
        return Err("`erl` is not on the PATH (apt-get install erlang-base)".to_owned());
    }
    let dir = crate::report::target_dir().join("bench-erlang");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let source = dir.join("fbench.erl");
    std::fs::write(&source, SOURCE).map_err(|e| format!("writing {}: {e}", source.display()))?;
    let eval = format!(
        "case compile:file(\"{}\", [{{outdir, \"{}\"}}, report]) of {{ok, _}} -> halt(0); _ -> halt(1) end.",
        erlang_string(&source),
        erlang_string(&dir)
    );
    let output = Command::new("erl")
        .args(["-noshell", "-eval", &eval])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running erl: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "compiling {} failed:\n{}{}",
            source.display(),
            tail(&String::from_utf8_lossy(&output.stdout)),
            tail(&String::from_utf8_lossy(&output.stderr))
        ));
    }
    Ok(dir)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `path` as the inside of an Erlang string literal.
fn erlang_string(path: &Path) -> String {
    path.to_string_lossy()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// The last few lines of a process's output, for error notes.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(8);
    lines[start..]
        .iter()
        .map(|line| format!("  {line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_keys() {
        let figures = Figures::parse(
            "noise\nfbench send 3.0\nfbench send 1.0\nfbench send 2.0\nfbench otp_release 25.000\n",
        );
        assert_eq!(figures.median("send"), Some(2.0));
        assert_eq!(figures.median("fan_in"), None);
        assert_eq!(figures.describe(), "OTP 25, ? scheduler(s)");
    }
}
