//! `foundation-node` processes on loopback: a cluster joins and converges,
//! a node killed with SIGKILL is declared failed by every peer exactly
//! once and rejoins when started again, a node stopped with SIGTERM is
//! seen to leave, and a node with the wrong cookie stays out.
//!
//! These tests live beside the binary because only its own package's
//! tests are given its path (`CARGO_BIN_EXE_foundation-node`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a line that must come may take.
const PATIENCE: Duration = Duration::from_secs(15);

/// A `foundation-node start` process and the lines it prints.
struct NodeProcess {
    id: u16,
    addr: SocketAddr,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines read so far, after the start line.
    seen: Vec<String>,
}

impl NodeProcess {
    /// Starts node `id` with `cookie`, joining through `seeds`.
    fn start(id: u16, cookie: &Cookie, seeds: &[SocketAddr]) -> NodeProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_foundation-node"));
        command
            .args([
                "start",
                "--name",
                &format!("n{id}"),
                "--id",
                &id.to_string(),
            ])
            .args(["--listen", "127.0.0.1:0", "--shards", "1"])
            .arg("--cookie-file")
            .arg(&cookie.0);
        for seed in seeds {
            command.arg("--join").arg(seed.to_string());
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("foundation-node starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines.recv_timeout(PATIENCE).expect("the start line");
        // started n1 id 1 at 127.0.0.1:40000
        let addr = first
            .rsplit(' ')
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("a start line, not {first:?}"));
        assert_eq!(first, format!("started n{id} id {id} at {addr}"));
        NodeProcess {
            id,
            addr,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that starts with `prefix`; returns it.
    fn expect(&mut self, prefix: &str) -> String {
        if let Some(line) = self.seen.iter().find(|line| line.starts_with(prefix)) {
            return line.clone();
        }
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "node {} printed no {prefix:?} within {PATIENCE:?}; it printed {:?}",
                    self.id, self.seen
                ),
            }
        }
    }

    /// Every line printed so far (waiting `quiet` for more) that starts
    /// with `prefix`.
    fn all(&mut self, prefix: &str, quiet: Duration) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            self.seen.push(line);
        }
        self.seen
            .iter()
            .filter(|line| line.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// SIGKILL: no goodbye, sockets closed by the kernel.
    fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, and the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.expect("kill runs").success());
        self.expect("stopped");
        self.child.wait().expect("reaped")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cookie file, removed with the test.
struct Cookie(PathBuf);

impl Cookie {
    fn new(test: &str, secret: &str) -> Cookie {
        let path = std::env::temp_dir().join(format!(
            "foundation-node-{test}-{}-{secret}",
            std::process::id()
        ));
        std::fs::write(&path, format!("{secret}\n")).expect("write the cookie file");
        Cookie(path)
    }
}

impl Drop for Cookie {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `foundation-node members` against `addr`: the ids it prints.
fn members(addr: SocketAddr, cookie: &Cookie) -> Result<Vec<u16>, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_foundation-node"))
        .args(["members", "--node", &addr.to_string()])
        .arg("--cookie-file")
        .arg(&cookie.0)
        .output()
        .expect("foundation-node members runs");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split(' ').next().unwrap().parse().unwrap())
        .collect())
}

/// Polls `condition` every 10 ms for at most [`PATIENCE`].
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let tries = PATIENCE.as_millis() / 10;
    for _ in 0..tries {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("not within {PATIENCE:?}: {what}");
}

/// Waits until every node printed `up` for every other.
fn converge(nodes: &mut [NodeProcess]) {
    let ids: Vec<u16> = nodes.iter().map(|node| node.id).collect();
    for node in nodes.iter_mut() {
        let me = node.id;
        for &other in ids.iter().filter(|&&other| other != me) {
            node.expect(&format!("up {other} "));
        }
    }
}

#[test]
fn a_killed_node_is_down_at_every_peer_once_and_rejoins_when_restarted() {
    let cookie = Cookie::new("kill", "secret");
    let seed = NodeProcess::start(1, &cookie, &[]);
    let at = [seed.addr];
    let mut nodes = vec![seed];
    for id in 2..=4 {
        nodes.push(NodeProcess::start(id, &cookie, &at));
    }
    converge(&mut nodes);
    assert_eq!(members(nodes[0].addr, &cookie), Ok(vec![1, 2, 3, 4]));

    let victim = nodes.remove(2);
    assert_eq!(victim.id, 3);
    victim.kill();
    for node in nodes.iter_mut() {
        let down = node.expect("down 3 ");
        assert!(down.ends_with(" failed"), "{down}");
    }
    for node in nodes.iter_mut() {
        let downs = node.all("down 3 ", Duration::from_millis(300));
        assert_eq!(downs.len(), 1, "node {}: {downs:?}", node.id);
    }
    assert_eq!(members(nodes[0].addr, &cookie), Ok(vec![1, 2, 4]));

    // Started again, with the same id on another port.
    let again = NodeProcess::start(3, &cookie, &at);
    let new_addr = again.addr;
    for node in nodes.iter_mut() {
        // The second "up 3" line, with the new address.
        let up = format!("up 3 n3 {new_addr}");
        node.expect(&up);
    }
    nodes.push(again);
    nodes.sort_by_key(|node| node.id);
    converge(&mut nodes);
    assert_eq!(members(nodes[3].addr, &cookie), Ok(vec![4, 1, 2, 3]));
}

#[test]
fn a_node_stopped_with_sigterm_leaves() {
    let cookie = Cookie::new("term", "secret");
    let seed = NodeProcess::start(11, &cookie, &[]);
    let at = [seed.addr];
    let mut nodes = vec![
        seed,
        NodeProcess::start(12, &cookie, &at),
        NodeProcess::start(13, &cookie, &at),
    ];
    converge(&mut nodes);
    let leaver = nodes.pop().expect("three nodes");
    let status = leaver.terminate();
    assert!(status.success(), "{status}");
    for node in nodes.iter_mut() {
        let down = node.expect("down 13 ");
        assert!(down.ends_with(" left"), "{down}");
    }
}

#[test]
fn a_node_with_the_wrong_cookie_is_refused_and_the_cluster_carries_on() {
    let cookie = Cookie::new("cookie", "secret");
    let seed = NodeProcess::start(21, &cookie, &[]);
    let at = [seed.addr];
    let mut nodes = vec![seed, NodeProcess::start(22, &cookie, &at)];
    converge(&mut nodes);

    let wrong = Cookie::new("cookie", "guess");
    let mut stranger = NodeProcess::start(23, &wrong, &at);
    assert!(
        members(nodes[0].addr, &wrong).is_err(),
        "a client with the wrong cookie is refused"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stranger.all("up ", Duration::from_millis(100)),
        Vec::<String>::new()
    );
    assert_eq!(members(nodes[0].addr, &cookie), Ok(vec![21, 22]));
    for node in nodes.iter_mut() {
        assert_eq!(
            node.all("down ", Duration::from_millis(100)),
            Vec::<String>::new()
        );
    }
}

/// Processes on a node-process that is then killed with SIGKILL, watched
/// from a node in this test: every monitor fires `noconnection`, once.
#[test]
fn monitors_of_processes_on_a_killed_node_fire_noconnection_once() {
    use foundation::membership::PeerService;
    use foundation::{dist, node, Context, Envelope, ExitReason, NodeId};

    let cookie = Cookie::new("monitors", "secret");
    let seed = NodeProcess::start(31, &cookie, &[]);
    let at = [seed.addr];
    let mut nodes = vec![seed, NodeProcess::start(32, &cookie, &at)];
    converge(&mut nodes);
    let here = node::Node::start(
        node::NodeConfig::new("watcher", "secret")
            .id(34)
            .shards(1)
            .seed(at[0]),
    )
    .expect("the watching node starts");
    let victim = NodeProcess::start(33, &cookie, &at);
    eventually("the watcher sees the three others", || {
        here.membership().members().len() == 3
    });
    let (tx, downs) = mpsc::channel();
    let (watching_tx, watching) = mpsc::channel();
    here.runtime()
        .spawn(move |cx: Context<()>| async move {
            for _ in 0..2 {
                let pid = dist::spawn(&cx, NodeId(33), "idle", &(), PATIENCE)
                    .await
                    .expect("an idle process is spawned there");
                cx.monitor(pid);
            }
            watching_tx.send(()).unwrap();
            while let Envelope::Down(down) = cx.recv().await {
                if tx.send(down.reason).is_err() {
                    return;
                }
            }
        })
        .unwrap();
    watching.recv_timeout(PATIENCE).expect("both are watched");
    eventually("both monitors are known", || here.dist().relations() == 2);
    victim.kill();
    for _ in 0..2 {
        let reason = downs.recv_timeout(PATIENCE).expect("a Down");
        assert_eq!(reason, ExitReason::NoConnection);
    }
    assert!(
        downs.recv_timeout(Duration::from_millis(500)).is_err(),
        "each monitor fires once"
    );
    assert_eq!(here.dist().relations(), 0);
    here.stop();
}
