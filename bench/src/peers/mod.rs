//! The peers Foundation is measured against.
//!
//! Each module measures one implementation the way its own users would use
//! it, with the same message (64 bytes, [`Message`]) and the same counts as
//! the Foundation side, and returns plain figures (messages per second,
//! nanoseconds, [`RoundTrips`]). The cases decide
//! which peer sits beside which Foundation figure.
//!
//! Between nodes, the peers are raw TCP between two processes ([`tcp`], the
//! floor) and distributed Erlang between two VMs ([`erlang`], the reference).
//!
//! Any peer can be run by hand, without its case, with the hidden
//! `foundation-bench child peer …` ([`Check`]), e.g.
//!
//! ```text
//! foundation-bench child peer tcp-stream 64 --msgs 2000000 --reps 3
//! foundation-bench child peer erlang-hol --rounds 2000
//! ```

pub(crate) mod crossbeam;
pub(crate) mod erlang;
pub(crate) mod placement;
pub(crate) mod tcp;
pub(crate) mod tokio;

use std::process::ExitCode;

use clap::Subcommand;

use self::placement::Placement;
use crate::progress::Progress;
use crate::stats::{self, RoundTrips, Throughput};

/// The message every throughput and latency figure moves: 64 bytes, copied
/// by value, as a small Erlang binary is copied into the receiver's heap.
pub(crate) type Message = [u8; 64];

/// Capacity of the bounded channels (tokio mpsc, crossbeam `bounded`): large
/// enough that a sender rarely waits on a receiver that keeps up, small
/// enough to stay in cache (64 KiB of messages).
pub(crate) const CHANNEL_CAPACITY: usize = 1024;

/// Cores available to this process (workers of multi-threaded peers).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Whether `program` is an executable file in a directory of the `PATH`.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// One peer figure run by hand (`foundation-bench child peer <figure>`),
/// printed per repetition and as the median; counts come from the global
/// `--msgs`, `--rounds` and `--reps`.
#[derive(Debug, Subcommand)]
pub(crate) enum Check {
    /// Raw TCP, one direction: messages of `size` bytes ([`tcp::stream`]).
    TcpStream {
        /// Payload bytes per message.
        size: usize,
        /// Cores of the two ends.
        #[arg(long, value_enum, default_value_t = Placement::Any)]
        placement: Placement,
    },
    /// Raw TCP, 64-byte round trips ([`tcp::ping_pong`]).
    TcpPingPong {
        /// Cores of the two ends.
        #[arg(long, value_enum, default_value_t = Placement::Any)]
        placement: Placement,
    },
    /// sockperf's 64-byte TCP round trips ([`tcp::sockperf_ping_pong`]).
    Sockperf {
        /// Seconds per repetition.
        seconds: u32,
        /// Cores of the two ends.
        #[arg(long, value_enum, default_value_t = Placement::Any)]
        placement: Placement,
    },
    /// Distributed Erlang, one direction: binaries of `size` bytes
    /// ([`erlang::remote`]).
    ErlangRemote {
        /// Bytes per binary.
        size: usize,
        /// Cores of the two nodes.
        #[arg(long, value_enum, default_value_t = Placement::Any)]
        placement: Placement,
    },
    /// Distributed Erlang, 64-byte round trips ([`erlang::latency`]).
    ErlangLatency {
        /// Cores of the two nodes.
        #[arg(long, value_enum, default_value_t = Placement::Any)]
        placement: Placement,
    },
    /// Distributed Erlang, round trips idle and behind 1 MiB bulk sends
    /// ([`erlang::hol`]).
    ErlangHol {
        /// Cores of the two nodes.
        #[arg(long, value_enum, default_value_t = Placement::Any)]
        placement: Placement,
    },
}

impl Check {
    /// Runs the figure `reps` times with `msgs` messages or `rounds` round
    /// trips and prints it.
    pub(crate) fn run(&self, reps: usize, msgs: u64, rounds: u64) -> ExitCode {
        let progress = Progress::new(false);
        let ok = match self {
            Check::TcpStream { size, placement } => {
                println!("tcp-stream: {msgs} messages of {size} bytes, {placement:?}");
                print_reps(
                    reps,
                    || tcp::stream(*size, msgs, *placement),
                    print_throughput,
                )
            }
            Check::TcpPingPong { placement } => {
                println!("tcp-ping-pong: {rounds} round trips of 64 bytes, {placement:?}");
                print_reps(reps, || tcp::ping_pong(rounds, *placement), print_trips)
            }
            Check::Sockperf { seconds, placement } => {
                println!("sockperf: {seconds} s of 64-byte TCP round trips, {placement:?}");
                tcp::sockperf_available()
                    && print_reps(
                        reps,
                        || tcp::sockperf_ping_pong(*seconds, *placement),
                        print_trips,
                    )
            }
            Check::ErlangRemote { size, placement } => {
                println!("erlang-remote: {msgs} binaries of {size} bytes, {placement:?}");
                print_figures(erlang::remote(&progress, *size, msgs, reps, *placement))
            }
            Check::ErlangLatency { placement } => {
                println!("erlang-latency: {rounds} round trips of 64 bytes, {placement:?}");
                print_figures(erlang::latency(&progress, rounds, reps, *placement))
            }
            Check::ErlangHol { placement } => {
                println!(
                    "erlang-hol: {rounds} round trips idle, then behind 1 MiB sends, {placement:?}"
                );
                print_figures(erlang::hol(&progress, rounds, reps, *placement))
            }
        };
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// Runs `sample` `reps` times, printing each; then the medians of every
/// figure (`print` gives a sample's figures by name). False on a failure.
fn print_reps<T>(
    reps: usize,
    mut sample: impl FnMut() -> Result<T, String>,
    print: impl Fn(&T) -> Vec<(&'static str, f64)>,
) -> bool {
    let mut all: Vec<Vec<(&'static str, f64)>> = Vec::new();
    for rep in 1..=reps {
        match sample() {
            Ok(figures) => {
                let figures = print(&figures);
                println!("  rep {rep}: {}", describe(&figures));
                all.push(figures);
            }
            Err(why) => {
                eprintln!("  rep {rep} failed: {why}");
                return false;
            }
        }
    }
    let Some(first) = all.first() else {
        return false;
    };
    let medians: Vec<(&'static str, f64)> = first
        .iter()
        .enumerate()
        .map(|(i, &(name, _))| (name, stats::median(all.iter().map(|f| f[i].1))))
        .collect();
    println!("  median: {}", describe(&medians));
    true
}

fn print_throughput(t: &Throughput) -> Vec<(&'static str, f64)> {
    vec![("msgs/s", t.msgs_per_s), ("MB/s", t.mb_per_s)]
}

fn print_trips(t: &RoundTrips) -> Vec<(&'static str, f64)> {
    vec![
        ("p50 ns", t.p50_ns),
        ("p99 ns", t.p99_ns),
        ("p99.9 ns", t.p999_ns),
        ("mean ns", t.mean_ns),
    ]
}

fn describe(figures: &[(&'static str, f64)]) -> String {
    figures
        .iter()
        .map(|(name, value)| format!("{value:.0} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints every key an Erlang run printed: its median and repetitions.
fn print_figures(figures: Option<erlang::Figures>) -> bool {
    let Some(figures) = figures else {
        return false;
    };
    println!("  {}", figures.describe());
    for key in figures.keys() {
        if let Some(median) = figures.median(key) {
            let reps: Vec<String> = figures
                .samples(key)
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect();
            println!("  {key}: median {median:.0} (reps {})", reps.join(", "));
        }
    }
    true
}
