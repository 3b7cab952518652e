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
//! - distributed (`remote`, `latency`, `hol`): two VMs in two OS processes,
//!   nodes A and B, default schedulers (one per core), connected by
//!   Erlang's own distribution over loopback TCP — the peer of two
//!   Foundation nodes. A process on A sends binaries of one size to a
//!   process on B ([`remote`]), ping-pongs a 64-byte binary with one
//!   ([`latency`]), and ping-pongs again while another process on A sends
//!   1 MiB binaries to B as fast as the link takes them ([`hol`]: how long
//!   a small message waits behind bulk traffic on the one connection between
//!   two nodes). Distribution settings are OTP's defaults (among them the
//!   1 MiB distribution buffer busy limit, `+zdbbl`, and the 64 KiB
//!   fragments large messages are cut into). A [`Placement`] pins the two
//!   VMs to one core or to one core each, or leaves them to the kernel;
//!   a VM pinned to one core keeps a scheduler per core of the machine but
//!   brings only one online.
//!
//! The VM does its own repetitions and prints every one; [`Figures::median`]
//! takes the median, as for every other figure. Without `erl` every function
//! returns `None` and a note is printed once.
//!
//! # Two nodes
//!
//! Both nodes are named after this process (`fbench_a<pid>_<n>@127.0.0.1`,
//! `fbench_b…`), so concurrent runs never collide in epmd. Nothing of them
//! is reachable from outside the machine: `epmd` is started (if it is not
//! running already) with `ERL_EPMD_ADDRESS=127.0.0.1`, each node listens on
//! one free loopback port (`inet_dist_use_interface`,
//! `inet_dist_listen_min`/`max`), and the cookie is 96 random bits fresh
//! for each run (it shows in `ps` to local users for the run's duration).
//! Node B is started first, waits for A and halts as soon as A goes away;
//! the bench also kills it if it has not halted a few seconds after A, so
//! no VM outlives its figure, even when the figure fails. epmd itself is
//! left running, as the daemon is shared by every distributed node on the
//! machine.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use foundation::transport::LOOPBACK_CONGESTION_CONTROL;

use super::placement::Placement;
use crate::progress::Progress;
use crate::stats::Stopwatch;

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

    /// A description of the VM for notes: "OTP 25, 2 scheduler(s)", or
    /// "OTP 25, 2 scheduler(s), 1 online" when fewer are online (a VM
    /// pinned to fewer cores than the machine has).
    pub(crate) fn describe(&self) -> String {
        let otp = self
            .median("otp_release")
            .map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"));
        let schedulers = self.median("schedulers");
        let online = self
            .median("schedulers_online")
            .filter(|&online| Some(online) != schedulers)
            .map_or_else(String::new, |v| format!(", {v:.0} online"));
        let schedulers = schedulers.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"));
        format!("OTP {otp}, {schedulers} scheduler(s){online}")
    }

    /// Every repetition's value of `key`, in the order the VM printed them.
    pub(crate) fn samples(&self, key: &str) -> &[f64] {
        self.values.get(key).map_or(&[], Vec::as_slice)
    }

    /// Every key the VM printed, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
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

/// One-direction throughput between two nodes placed by `placement`, per
/// repetition: `msgs` binaries of `size` bytes from a process on node A to
/// a process on node B, timed until B has counted them all. Keys
/// `remote_msgs_per_s`, `remote_mb_per_s` (payload megabytes, 10^6 bytes).
pub(crate) fn remote(
    progress: &Progress,
    size: usize,
    msgs: u64,
    reps: usize,
    placement: Placement,
) -> Option<Figures> {
    let args = [size.to_string(), msgs.to_string(), reps.to_string()];
    run_distributed(progress, placement, "remote", &args)
}

/// Round trips of a 64-byte binary between a process on node A and one on
/// node B, the nodes placed by `placement`, `rounds` timed per repetition
/// after a warm-up. Keys `latency_p50`, `latency_p99`, `latency_p999`,
/// `latency_mean` (ns).
pub(crate) fn latency(
    progress: &Progress,
    rounds: u64,
    reps: usize,
    placement: Placement,
) -> Option<Figures> {
    let args = [rounds.to_string(), reps.to_string()];
    run_distributed(progress, placement, "latency", &args)
}

/// Head-of-line blocking between two nodes placed by `placement`: the round
/// trips of [`latency`] (`rounds` per phase and repetition) on an idle
/// link, then while another process on node A sends 1 MiB binaries to node
/// B in a loop. Keys `hol_idle_p50`/`_p99`/`_p999`/`_mean`,
/// `hol_loaded_p50`/`_p99`/`_p999`/`_mean` (ns) and `hol_bulk_mb_per_s`,
/// the bulk sender's rate meanwhile.
pub(crate) fn hol(
    progress: &Progress,
    rounds: u64,
    reps: usize,
    placement: Placement,
) -> Option<Figures> {
    let args = [rounds.to_string(), reps.to_string()];
    run_distributed(progress, placement, "hol", &args)
}

/// Remote spawns per second between two nodes placed by `placement`:
/// `spawners` processes on node A each spawn `count / spawners` processes
/// on node B with `spawn/4`, one after another. Key `remote_spawns_per_s`.
pub(crate) fn remote_spawn(
    progress: &Progress,
    count: u64,
    spawners: u64,
    reps: usize,
    placement: Placement,
) -> Option<Figures> {
    let args = [count.to_string(), spawners.to_string(), reps.to_string()];
    run_distributed(progress, placement, "remote_spawn", &args)
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

/// Runs `fbench:dist([Command, NodeB | Args])` on node A with node B beside
/// it (see the module docs); `None` (with a note) when Erlang is
/// unavailable or the run failed.
fn run_distributed(
    progress: &Progress,
    placement: Placement,
    command: &str,
    args: &[String],
) -> Option<Figures> {
    let dir = compiled(progress)?;
    match two_nodes(dir, placement, command, args) {
        Ok(figures) => Some(figures),
        Err(why) => {
            progress.note(&format!(
                "erlang: distributed `{command} {}` failed: {why}",
                args.join(" ")
            ));
            None
        }
    }
}

/// Loopback address epmd is told to listen on when this bench starts it.
const EPMD_ADDRESS: &str = "127.0.0.1";

/// How long node B may take to halt after node A has, before it is killed.
const NODE_B_GRACE: Duration = Duration::from_secs(5);

fn two_nodes(
    dir: &Path,
    placement: Placement,
    command: &str,
    args: &[String],
) -> Result<Figures, String> {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    start_epmd();
    let cookie = cookie()?;
    let tag = format!(
        "{}_{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let a = format!("fbench_a{tag}@127.0.0.1");
    let b = format!("fbench_b{tag}@127.0.0.1");
    let (mut node_b, pinned) = placement
        .start(|| NodeB::start(node(dir, &b, &cookie)?.args(["-run", "fbench", "serve", &a])))?;
    let output = node(dir, &a, &cookie)?
        .args(["-run", "fbench", "dist", command, &b])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running erl: {e}"))?;
    drop(pinned);
    let b_output = node_b.stop();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "node A exited with {}:\n{}{}node B:\n{}",
            output.status,
            tail(&stdout),
            tail(&stderr),
            tail(&b_output)
        ));
    }
    Ok(Figures::parse(&stdout))
}

/// An `erl` command for the distributed node `name`: loopback only, a free
/// port of its own, `cookie`, `fbench` on the code path, and the congestion
/// control Foundation gives its loopback connections
/// ([`LOOPBACK_CONGESTION_CONTROL`], as a raw `TCP_CONGESTION` option on
/// the sockets it dials and listens on, where the kernel has it), so that
/// both are paced alike.
fn node(dir: &Path, name: &str, cookie: &str) -> Result<Command, String> {
    let port = super::tcp::free_port()?.to_string();
    let mut command = Command::new("erl");
    command
        .env("ERL_EPMD_ADDRESS", EPMD_ADDRESS)
        .args(["-noshell", "-name", name, "-setcookie", cookie])
        .args(["-kernel", "inet_dist_use_interface", "{127,0,0,1}"])
        .args(["-kernel", "inet_dist_listen_min", &port])
        .args(["-kernel", "inet_dist_listen_max", &port]);
    if super::tcp::loopback_congestion_control_available() {
        // IPPROTO_TCP is 6 and TCP_CONGESTION 13 on Linux.
        let congestion = format!("[{{raw,6,13,<<\"{LOOPBACK_CONGESTION_CONTROL}\">>}}]");
        command
            .args(["-kernel", "inet_dist_connect_options", &congestion])
            .args(["-kernel", "inet_dist_listen_options", &congestion]);
    }
    command.arg("-pa").arg(dir);
    Ok(command)
}

/// Starts epmd on loopback unless one runs already (a second daemon finds
/// the port taken and exits quietly). Without an `epmd` on the PATH the
/// first node starts ERTS's own, as `erl -name` always does.
fn start_epmd() {
    let _ = Command::new("epmd")
        .arg("-daemon")
        .env("ERL_EPMD_ADDRESS", EPMD_ADDRESS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A fresh cookie: 96 bits from the kernel's random source, in hex.
fn cookie() -> Result<String, String> {
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|e| format!("reading /dev/urandom for a cookie: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Node B's VM, stopped (and reaped) at the latest when this is dropped.
#[derive(Debug)]
struct NodeB {
    vm: Option<Child>,
}

impl NodeB {
    fn start(command: &mut Command) -> Result<Self, String> {
        let vm = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting node B: {e}"))?;
        Ok(Self { vm: Some(vm) })
    }

    /// Waits up to [`NODE_B_GRACE`] for the VM to halt by itself (it does
    /// once node A is gone), kills it otherwise; returns what it printed.
    fn stop(&mut self) -> String {
        let Some(mut vm) = self.vm.take() else {
            return String::new();
        };
        let clock = Stopwatch::start();
        while matches!(vm.try_wait(), Ok(None)) {
            if clock.elapsed() > NODE_B_GRACE {
                let _ = vm.kill();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        match vm.wait_with_output() {
            Ok(output) => format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => format!("(waiting for node B: {error})"),
        }
    }
}

impl Drop for NodeB {
    fn drop(&mut self) {
        self.stop();
    }
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
    if !super::on_path("erl") {
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
        let pinned = Figures::parse(
            "fbench otp_release 25\nfbench schedulers 2\nfbench schedulers_online 1\n",
        );
        assert_eq!(pinned.describe(), "OTP 25, 2 scheduler(s), 1 online");
        let unpinned = Figures::parse("fbench schedulers 2\nfbench schedulers_online 2\n");
        assert_eq!(unpinned.describe(), "OTP ?, 2 scheduler(s)");
        assert_eq!(figures.keys().collect::<Vec<_>>(), ["otp_release", "send"]);
        assert_eq!(figures.samples("send"), [3.0, 1.0, 2.0]);
        assert!(figures.samples("fan_in").is_empty());
    }

    /// A figure that fails on node A still returns, with node B stopped
    /// (`NodeB::stop` reaps it before `two_nodes` returns). Needs `erl`;
    /// passes trivially without it.
    #[test]
    fn a_failed_distributed_figure_stops_both_nodes() {
        let Ok(dir) = compile() else {
            return;
        };
        let clock = Stopwatch::start();
        let result = two_nodes(&dir, Placement::OneCore, "no-such-figure", &[]);
        let why = result.expect_err("an unknown figure fails");
        assert!(why.contains("node A exited"), "{why}");
        assert!(clock.elapsed() < NODE_B_GRACE * 2, "{:?}", clock.elapsed());
    }

    #[test]
    fn cookies_are_fresh_hex() {
        let (one, two) = (cookie().expect("cookie"), cookie().expect("cookie"));
        assert_eq!(one.len(), 24);
        assert!(one.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(one, two);
    }
}
