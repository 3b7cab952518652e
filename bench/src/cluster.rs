//! Foundation nodes as a cluster: the subject of the `remote_spawn` and
//! `detect` cases.
//!
//! Each node but the one a figure runs on is this binary re-executed as
//! `foundation-bench child dist-node ID [SEED]`: a whole
//! [`Node`] with one shard, default failure
//! detection, and a process kind `noop` (a process that ends at once) in
//! its factory. It prints `ready ADDR`, then a line per membership event
//! (`up ID` or `down ID left|failed`), and leaves the cluster when its
//! stdin closes. The parent stamps each line with its own clock as it
//! reads it: a pipe adds microseconds to figures of milliseconds.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use foundation::dist;
use foundation::membership::{DownReason, MemberEvent, PeerService};
use foundation::node::{Node, NodeConfig};
use foundation::{Context, Envelope, NodeId};

use crate::stats::Stopwatch;

/// The cookie of the benchmark clusters.
const COOKIE: &str = "foundation-bench-cluster";

/// How long a step that must happen may take.
const PATIENCE: Duration = Duration::from_secs(60);

/// The process kind every benchmark node can spawn for others.
pub(crate) const NOOP: &str = "noop";

/// A node's configuration in a benchmark cluster.
/// Node `id` runs on core `id - 1` (modulo the cores this process may
/// use), as the two nodes of the `remote` cases do.
fn config(id: u16, seed: Option<SocketAddr>) -> NodeConfig {
    let core = usize::from(id - 1) % crate::peers::cores();
    let mut config = NodeConfig::new(format!("bench-{id}"), COOKIE)
        .id(id)
        .shards(1)
        .cores(vec![core]);
    config.seeds.extend(seed);
    config
}

/// Starts a node of a benchmark cluster in this process.
pub(crate) fn local_node(id: u16, seed: Option<SocketAddr>) -> Result<Node, String> {
    let node = Node::start(config(id, seed)).map_err(|e| e.to_string())?;
    node.dist()
        .factory()
        .register(NOOP, |_: Context<()>, (): ()| async {});
    Ok(node)
}

/// `child dist-node`: runs a node until stdin closes.
pub(crate) fn run_node(id: u16, seed: Option<SocketAddr>) -> ExitCode {
    let node = match local_node(id, seed) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("dist-node {id}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let printer = node.runtime().spawn(|cx: Context<MemberEvent>| async move {
        while let Envelope::Msg(event) = cx.recv().await {
            let line = match event {
                MemberEvent::Up(member) => format!("up {}", member.node.0),
                MemberEvent::Down(member, DownReason::Failed) => {
                    format!("down {} failed", member.node.0)
                }
                MemberEvent::Down(member, DownReason::Left) => {
                    format!("down {} left", member.node.0)
                }
                _ => continue,
            };
            say(&line);
        }
    });
    match printer {
        Ok(printer) => node.membership().subscribe(printer),
        Err(error) => {
            eprintln!("dist-node {id}: {error}");
            return ExitCode::FAILURE;
        }
    }
    say(&format!("ready {}", node.addr()));
    // Until the parent closes our stdin (or kills us).
    let _ = std::io::stdin().lines().count();
    node.stop();
    ExitCode::SUCCESS
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// A node in a child process, and the lines it prints with when they came.
pub(crate) struct ChildNode {
    pub(crate) id: u16,
    pub(crate) addr: SocketAddr,
    child: Child,
    lines: mpsc::Receiver<(Stopwatch, String)>,
}

impl ChildNode {
    /// Starts node `id` in a child process, joining through `seed`.
    pub(crate) fn start(id: u16, seed: Option<SocketAddr>) -> Result<ChildNode, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        command.args(["child", "dist-node", &id.to_string()]);
        if let Some(seed) = seed {
            command.arg(seed.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send((Stopwatch::start(), line)).is_err() {
                    return;
                }
            }
        });
        let mut node = ChildNode {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            lines,
        };
        let (_, ready) = node.wait_for(|line| line.starts_with("ready "))?;
        node.addr = ready["ready ".len()..]
            .parse()
            .map_err(|e| format!("node {id} said {ready:?}: {e}"))?;
        Ok(node)
    }

    /// Waits for a line that `matches`; returns when it came, and it.
    pub(crate) fn wait_for(
        &mut self,
        matches: impl Fn(&str) -> bool,
    ) -> Result<(Stopwatch, String), String> {
        let waiting = Stopwatch::start();
        loop {
            let left = PATIENCE.saturating_sub(waiting.elapsed());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if matches(&line) => return Ok((at, line)),
                Ok(_) => {}
                Err(_) => return Err(format!("node {} went quiet", self.id)),
            }
        }
    }

    /// SIGKILL: no goodbye.
    pub(crate) fn kill(mut self) -> Stopwatch {
        let at = Stopwatch::start();
        let _ = self.child.kill();
        let _ = self.child.wait();
        at
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        // Closing stdin asks the node to leave and stop; one that has not
        // within a few seconds is killed.
        drop(self.child.stdin.take());
        for _ in 0..500 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `count` child nodes (ids from `first`), each joining through
/// the first, and waits until every one has seen every other up.
pub(crate) fn child_cluster(first: u16, count: u16) -> Result<Vec<ChildNode>, String> {
    let seed = ChildNode::start(first, None)?;
    let at = Some(seed.addr);
    let mut nodes = vec![seed];
    for id in first + 1..first + count {
        nodes.push(ChildNode::start(id, at)?);
    }
    let ids: Vec<u16> = nodes.iter().map(|node| node.id).collect();
    for node in &mut nodes {
        let me = node.id;
        for other in ids.iter().filter(|&&other| other != me) {
            let up = format!("up {other}");
            node.wait_for(|line| line == up)?;
        }
    }
    Ok(nodes)
}

/// Time from a SIGKILL of one node of a 3-node cluster until both others
/// print its down: the later of the two.
pub(crate) fn detect(first: u16) -> Result<Duration, String> {
    let mut nodes = child_cluster(first, 3)?;
    let victim = nodes.pop().expect("three nodes");
    let down = format!("down {} failed", victim.id);
    let killed = victim.kill();
    let mut slowest = Duration::ZERO;
    for node in &mut nodes {
        let (at, _) = node.wait_for(|line| line == down)?;
        slowest = slowest.max(at.since(&killed));
    }
    Ok(slowest)
}

/// Remote spawns per second: `spawners` processes on a node in this
/// process each spawn `count / spawners` `noop` processes on a node in a
/// child process, one after another.
pub(crate) fn remote_spawn(first: u16, count: u64, spawners: u64) -> Result<f64, String> {
    let mut far = ChildNode::start(first + 1, None)?;
    let near = local_node(first, Some(far.addr))?;
    let far_id = NodeId(far.id);
    let joined = far.wait_for(|line| line == format!("up {first}"));
    let seen = wait_until(|| near.membership().members().iter().any(|m| m.node == far_id));
    let result = joined.and(seen).and_then(|()| {
        let each = count / spawners;
        let (done, finished) = mpsc::channel();
        let clock = Stopwatch::start();
        for _ in 0..spawners {
            let done = done.clone();
            near.runtime()
                .spawn(move |cx: Context<()>| async move {
                    let mut failed = None;
                    for _ in 0..each {
                        let spawned =
                            dist::spawn(&cx, far_id, NOOP, &(), Duration::from_secs(10)).await;
                        if let Err(error) = spawned {
                            failed = Some(error.to_string());
                            break;
                        }
                    }
                    let _ = done.send(failed);
                })
                .map_err(|e| e.to_string())?;
        }
        for _ in 0..spawners {
            match finished.recv_timeout(PATIENCE) {
                Ok(None) => {}
                Ok(Some(error)) => return Err(format!("a remote spawn failed: {error}")),
                Err(_) => return Err("the spawners did not finish".into()),
            }
        }
        Ok(crate::stats::rate(each * spawners, clock.elapsed()))
    });
    near.stop();
    drop(far);
    result
}

fn wait_until(mut condition: impl FnMut() -> bool) -> Result<(), String> {
    let waiting = Stopwatch::start();
    while !condition() {
        if waiting.elapsed() > PATIENCE {
            return Err("the nodes did not meet".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
