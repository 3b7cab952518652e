//! `foundation-bench`: Foundation measured against its peers, in one run.
//!
//! # Why peers run in the same run
//!
//! The machines this project runs on are small and shared: two cores, other
//! builds and tests next door, frequency scaling, noisy neighbours. An
//! absolute figure ("12 M msgs/s") taken on Monday says little on Tuesday.
//! What holds is a *ratio* against a well-known implementation measured a
//! moment earlier on the same machine under the same noise. So every case
//! measures Foundation (the `subject`) and its peers side by side:
//!
//! - **tokio** tasks and `tokio::sync::mpsc`, on the current-thread runtime
//!   (the fair match for one shard) and on the multi-thread runtime with one
//!   worker per core (the fair match for work across shards);
//! - **crossbeam-channel** between OS threads (the floor for a message
//!   crossing cores without any scheduler in the way);
//! - **Erlang/OTP** processes when `erl` is on the `PATH` (the reference for
//!   what a green process costs); without it the Erlang column is left out
//!   and a note says so once.
//!
//! Repetitions are interleaved (foundation, peer 1, peer 2, foundation, …)
//! so that a slow moment of the machine hits every subject alike, and every
//! figure — ours and the peers' — is the median of the repetitions
//! (`--reps`, 5 by default, 3 under `quick`).
//!
//! Interleaving evens out a slow moment, not a slow run: on a virtual
//! machine whose host is busy with other guests, every subject is slower
//! and the spread between repetitions grows. Each case therefore records
//! the share of CPU time the host took while it ran (steal, from
//! `/proc/stat`), and its table says so from 1 %.
//!
//! # Cases
//!
//! - `spawn`: nanoseconds to spawn an idle process (one waiting on its own
//!   mailbox) and bytes of memory it holds. Memory is measured as growth of
//!   the resident set (`/proc/self/statm`) in a fresh child process per
//!   subject (the binary re-executes itself with a hidden `child`
//!   subcommand), so one subject's allocator state never colours another's.
//!   Erlang reports `erlang:memory(processes)` growth instead, plus its own
//!   resident set growth as `erlang-rss`.
//! - `local`: messages on one node — 64-byte messages one-to-one on one shard
//!   and across shards, ping-pong round trips (p50 and p99) on one shard and
//!   across shards, and N-to-1 fan-in.
//! - `restart`: restart latency (p50 and p99) of a worker under a
//!   `one_for_one` supervisor, from its crash to its replacement running;
//!   Erlang's `supervisor` beside it.
//! - `ecosystem`: milliseconds to spawn an ecosystem of 100,000 idle
//!   workers (20,000 under `quick`), to scale it down to a tenth and back
//!   up; Erlang's `simple_one_for_one` supervisor with
//!   `start_child`/`terminate_child` beside it.
//! - `remote`, `latency`, `hol`: two nodes as two OS processes on
//!   loopback, on io_uring and on epoll: one-direction throughput for
//!   messages of 16 B to 1 MiB (`--sizes` picks some), 64-byte ping-pong
//!   percentiles, and control round trips idle and under a saturated bulk
//!   channel; against a raw TCP stream and ping-pong written in the bench
//!   and distributed Erlang. `remote`'s note also gives io_uring / epoll
//!   paired repetition by repetition, with its standard error: on a shared
//!   machine one repetition spreads too widely for a few-percent
//!   difference to show in a ratio of medians.
//! - `remote_spawn`, `detect`: Foundation nodes as a cluster: remote spawns
//!   per second between two nodes (against distributed Erlang's
//!   `spawn/4`), and the time from `kill -9` of one of three nodes to its
//!   down at the other two.
//! - `sim`: the simulator's speed: a cluster of 1,000 nodes (each a
//!   supervisor of crashing workers and a timed ping-pong) for 60 virtual
//!   seconds on one thread; wall time and events per second.
//! - `quick`: every case with small counts and 3 repetitions; well under a
//!   minute, for a smoke check rather than for figures to quote.
//!
//! # Output
//!
//! By default a table per case: metric, unit, which direction is better,
//! Foundation's value, then one row per peer with its value, the ratio
//! `foundation / peer` and a verdict ("1.8x better"). With `--json`, one JSON
//! object per line instead:
//!
//! ```json
//! {"case":"local","metric":"ping_pong_same_shard_p50","unit":"ns","value":400.0,"better":"lower","peers":{"erlang":506.0,"tokio-current-thread":243.0},"note":"…","stolen":0.0}
//! ```
//!
//! `value` is `null` when Foundation's side could not be measured (the note
//! says why); a peer that could not be measured is absent from `peers`.
//! `stolen` is the steal of the case, in percent, where the kernel counts
//! it.
//!
//! Unless `--no-plots` is given, one SVG bar chart per case is written to
//! `<target dir>/bench-report/<case>.svg`, where the target directory is
//! `CARGO_TARGET_DIR` or the one this executable was built into.
//!
//! A progress spinner appears on stderr for runs longer than about a second,
//! only when stderr is a terminal and `--json` is off.
//!
//! # Running
//!
//! ```text
//! cargo run --release -p foundation-bench -- quick
//! cargo run --release -p foundation-bench -- local --rounds 200000
//! cargo run --release -p foundation-bench -- --json spawn --count 1000000
//! cargo run --release -p foundation-bench -- restart --restarts 50000
//! cargo run --release -p foundation-bench -- ecosystem --workers 100000
//! cargo run --release -p foundation-bench -- remote --sizes 64,65536
//! ```
//!
//! Criterion micro-benchmarks of the channels live in `bench/benches/`
//! (`cargo bench -p foundation-bench`).

mod cases;
mod cluster;
mod peers;
mod progress;
mod remote;
mod report;
mod rss;
mod stats;
mod steal;
mod subject;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::cases::{Context, Scale};
use crate::progress::Progress;
use crate::report::Report;

/// Command line of `foundation-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "foundation-bench",
    version,
    about = "Foundation measured against tokio, crossbeam and Erlang in the same run"
)]
struct Cli {
    /// Print one JSON object per measurement and line instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Do not write SVG charts to `<target>/bench-report/`.
    #[arg(long, global = true)]
    no_plots: bool,
    #[command(flatten)]
    knobs: Knobs,
    #[command(subcommand)]
    command: Command,
}

/// Scale knobs; each overrides the default of the chosen command.
#[derive(Debug, Args)]
struct Knobs {
    /// Repetitions per figure; the median is reported.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..))]
    reps: Option<u32>,
    /// Processes spawned per repetition in the `spawn` case.
    #[arg(long, global = true)]
    count: Option<usize>,
    /// Messages per one-to-one repetition (fan-in sends as many in total).
    #[arg(long, global = true)]
    msgs: Option<u64>,
    /// Round trips per ping-pong repetition.
    #[arg(long, global = true)]
    rounds: Option<u64>,
    /// Senders in the fan-in case.
    #[arg(long, global = true)]
    senders: Option<usize>,
    /// Timed restarts per repetition in the `restart` case.
    #[arg(long, global = true)]
    restarts: Option<u64>,
    /// Workers in the `ecosystem` case (scaled down to a tenth and back).
    #[arg(long, global = true)]
    workers: Option<usize>,
    /// Message sizes in bytes of the `remote` case, comma-separated
    /// (default: 16,64,1024,65536,1048576).
    #[arg(long, global = true, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    sizes: Option<Vec<u32>>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Spawn cost: time and memory per idle process.
    Spawn,
    /// Local messaging: one-to-one, ping-pong and fan-in on one node.
    Local,
    /// Supervision: restart latency of a crashed worker.
    Restart,
    /// Ecosystems: spawning 100,000 workers, scaling down and back up.
    Ecosystem,
    /// Two nodes: one-direction throughput, 16 B to 1 MiB messages.
    Remote,
    /// Two nodes: 64-byte ping-pong.
    Latency,
    /// Two nodes: control round trips under a saturated bulk channel.
    Hol,
    /// A simulated cluster: 1,000 nodes for 60 virtual seconds on one thread.
    Sim,
    /// Two nodes: remote spawns per second.
    RemoteSpawn,
    /// Three nodes: time from kill -9 of one to its down at the others.
    Detect,
    /// Every case, short: a smoke run in well under a minute.
    Quick,
    /// Internal: measurements that need a fresh process of their own.
    #[command(hide = true, subcommand)]
    Child(Child),
}

/// The hidden `child` subcommands: the far ends of measurements that need a
/// process of their own, and peers run by hand.
#[derive(Debug, Subcommand)]
enum Child {
    #[command(flatten)]
    Rss(rss::ChildCommand),
    #[command(flatten)]
    Tcp(peers::tcp::TcpChild),
    /// Runs one peer figure by hand and prints it.
    #[command(subcommand)]
    Peer(peers::Check),
    /// A node of the cluster cases: runs until stdin closes.
    DistNode {
        /// Its node id.
        id: u16,
        /// A node to join through.
        seed: Option<std::net::SocketAddr>,
    },
    /// Node 2 of the remote cases: serves until stdin closes.
    TransportNode {
        /// `io_uring` or `epoll`.
        backend: String,
        /// Node 1's listen address.
        peer: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (scale, cases): (Scale, &[cases::Case]) = match &cli.command {
        Command::Spawn => (Scale::full(), &[cases::Case::Spawn]),
        Command::Local => (Scale::full(), &[cases::Case::Local]),
        Command::Restart => (Scale::full(), &[cases::Case::Restart]),
        Command::Ecosystem => (Scale::full(), &[cases::Case::Ecosystem]),
        Command::Remote => (Scale::full(), &[cases::Case::Remote]),
        Command::Latency => (Scale::full(), &[cases::Case::Latency]),
        Command::Hol => (Scale::full(), &[cases::Case::Hol]),
        Command::Sim => (Scale::full(), &[cases::Case::Sim]),
        Command::RemoteSpawn => (Scale::full(), &[cases::Case::RemoteSpawn]),
        Command::Detect => (Scale::full(), &[cases::Case::Detect]),
        Command::Quick => (Scale::quick(), cases::Case::ALL),
        Command::Child(Child::Rss(child)) => return rss::run_child(child),
        Command::Child(Child::Tcp(child)) => return child.run(),
        Command::Child(Child::DistNode { id, seed }) => return cluster::run_node(*id, *seed),
        Command::Child(Child::TransportNode { backend, peer }) => {
            return remote::run_node(backend, *peer)
        }
        Command::Child(Child::Peer(check)) => {
            let scale = Scale::quick().with_overrides(&cli.knobs);
            return check.run(scale.reps, scale.msgs, scale.rounds);
        }
    };
    let scale = scale.with_overrides(&cli.knobs);
    let progress = Progress::new(!cli.json);
    let mut report = Report::new(cli.json, !cli.no_plots);
    let context = Context::new(scale, progress);
    for case in cases {
        let before = steal::CpuTimes::read();
        let mut measurements = case.run(&context);
        let stolen = before
            .zip(steal::CpuTimes::read())
            .and_then(|(before, after)| after.stolen_since(&before));
        for measurement in &mut measurements {
            measurement.stolen = stolen;
        }
        if let Err(error) = context
            .progress
            .suspend(|| report.case(case.name(), &measurements))
        {
            eprintln!("foundation-bench: writing the report failed: {error}");
            return ExitCode::FAILURE;
        }
    }
    context.progress.finish();
    report.finish();
    ExitCode::SUCCESS
}

impl Scale {
    /// Applies the command-line overrides to this scale.
    fn with_overrides(mut self, knobs: &Knobs) -> Self {
        if let Some(reps) = knobs.reps {
            self.reps = reps as usize;
        }
        if let Some(count) = knobs.count {
            self.spawn_count = count.max(1);
        }
        if let Some(msgs) = knobs.msgs {
            self.msgs = msgs.max(1);
        }
        if let Some(rounds) = knobs.rounds {
            self.rounds = rounds.max(1);
        }
        if let Some(senders) = knobs.senders {
            self.senders = senders.max(1);
        }
        if let Some(restarts) = knobs.restarts {
            self.restarts = restarts.max(1);
        }
        if let Some(workers) = knobs.workers {
            self.ecosystem_workers = workers.max(1);
        }
        if let Some(sizes) = &knobs.sizes {
            self.remote_sizes = sizes.iter().map(|&size| size as usize).collect();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A child's positional arguments must not share a name with a global
    /// knob (`--count`, `--msgs`, …): clap would read them as the knob.
    #[test]
    fn child_arguments_reach_the_child() {
        let cli =
            Cli::try_parse_from(["foundation-bench", "child", "tcp-sink", "127.0.0.1:9", "5"])
                .expect("parses");
        match cli.command {
            Command::Child(Child::Tcp(peers::tcp::TcpChild::TcpSink { addr, messages })) => {
                assert_eq!((addr.port(), messages), (9, 5));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["foundation-bench", "child", "spawn-rss", "tokio", "7"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Child(Child::Rss(rss::ChildCommand::SpawnRss { n: 7, .. }))
        ));
    }
}
