//! Memory per process, measured as resident-set growth in a fresh process.
//!
//! Allocators keep what they once got: after one subject has spawned and
//! freed a million tasks, the next subject's allocations land in pages that
//! are already resident and look free. So each subject's memory is measured
//! in a child of its own: the parent re-executes this binary as
//! `foundation-bench child spawn-rss <subject> <n>`; the child reads its
//! resident set (`/proc/self/statm`), spawns `n` idle processes and keeps
//! them alive, reads it again, prints one JSON line and exits without
//! tearing anything down. Bytes per process is the growth divided by `n`;
//! runtime start-up is inside the growth, and a large `n` amortises it.

use std::io;
use std::process::{Command, ExitCode, Stdio};

use clap::{Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::{peers, subject};

/// Hidden `child` subcommands, run by the parent in a fresh process.
#[derive(Debug, Subcommand)]
pub(crate) enum ChildCommand {
    /// Spawn `n` idle processes of `subject` and print the RSS growth as one
    /// JSON line.
    SpawnRss {
        /// Whose processes to spawn.
        subject: RssSubject,
        /// How many.
        n: usize,
    },
}

/// Subjects whose spawn memory a child can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RssSubject {
    /// Foundation processes (`subject::spawn_rss`).
    Foundation,
    /// Tokio tasks, each waiting on its own unbounded mpsc receiver.
    Tokio,
}

/// What a `spawn-rss` child prints.
#[derive(Debug, Serialize, Deserialize)]
struct SpawnRss {
    subject: String,
    processes: usize,
    rss_before_bytes: u64,
    rss_after_bytes: u64,
}

/// Bytes of resident memory per idle process of `subject`, measured in a
/// fresh child process spawning `n` of them.
pub(crate) fn bytes_per_process(subject: RssSubject, n: usize) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let name = subject
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    let output = Command::new(exe)
        .args(["child", "spawn-rss", &name, &n.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("starting the child: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "child for {name} failed ({}): {}",
            output.status,
            failure_reason(&stderr)
        ));
    }
    let report: SpawnRss = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| format!("child for {name} printed no report"))?;
    let growth = report
        .rss_after_bytes
        .saturating_sub(report.rss_before_bytes);
    Ok(growth as f64 / report.processes.max(1) as f64)
}

/// The gist of a failed child's stderr: the message of its panic if it
/// panicked (the line after "panicked at"), else its last line.
pub(crate) fn failure_reason(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let after_panic = lines
        .iter()
        .position(|line| line.contains("panicked at"))
        .and_then(|at| lines.get(at + 1));
    after_panic
        .or(lines.last())
        .copied()
        .unwrap_or("no output")
        .trim_end_matches('.')
}

/// Runs a hidden child command in this (fresh) process.
pub(crate) fn run_child(command: &ChildCommand) -> ExitCode {
    match command {
        ChildCommand::SpawnRss { subject, n } => match spawn_rss_child(*subject, *n) {
            Ok(report) => {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("spawn-rss: reading /proc/self/statm: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

fn spawn_rss_child(subject: RssSubject, n: usize) -> io::Result<SpawnRss> {
    let rss_before_bytes = resident_bytes()?;
    let name = match subject {
        RssSubject::Foundation => {
            subject::spawn_rss(n);
            "foundation"
        }
        RssSubject::Tokio => {
            peers::tokio::spawn_rss(n);
            "tokio"
        }
    };
    let rss_after_bytes = resident_bytes()?;
    Ok(SpawnRss {
        subject: name.to_owned(),
        processes: n,
        rss_before_bytes,
        rss_after_bytes,
    })
}

/// This process's resident set in bytes (second field of `/proc/self/statm`,
/// in pages).
pub(crate) fn resident_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/statm"))?;
    Ok(pages * page_size() as u64)
}

/// The kernel's page size in bytes.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value; it has no
    // preconditions and touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reason_is_the_panic_message() {
        let stderr = "\nthread 'main' panicked at bench/src/subject.rs:27:5:\nnot yet implemented: foundation subject\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            failure_reason(stderr),
            "not yet implemented: foundation subject"
        );
        assert_eq!(failure_reason("a\nlast words.\n"), "last words");
    }

    #[test]
    fn resident_set_is_readable() {
        let bytes = resident_bytes().expect("statm");
        assert!(bytes > 0);
        assert_eq!(bytes % page_size() as u64, 0);
    }
}
