//! Foundation between two nodes: the subject of the `remote`, `latency` and
//! `hol` cases.
//!
//! Node 1 lives in this process, node 2 in a child process (this binary
//! re-executed as `foundation-bench child transport-node`), each with one
//! shard, so that the two nodes share no allocator, scheduler or address
//! space, as two nodes on one machine do not. The child starts its
//! transport on the backend it is told, prints its listen address and the
//! pids of its two processes, and serves until its stdin closes:
//!
//! - the **sink** (`Remote<Vec<u8>>`) counts what it receives and reads the
//!   length of each message in place; an empty message asks it to answer
//!   the sender with its count, on the channel the request came on;
//! - the **echo** (`Remote<[u8; 64]>`) sends each message back to its
//!   sender on the channel it came on.
//!
//! Every figure is timed on this process's clock.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use foundation::transport::{Backend, ChannelId, Cookie, Remote, Transport, TransportConfig};
use foundation::{Context, NodeId, Pid, Priority, Runtime, SpawnOptions};

use crate::stats::{RoundTrips, Stopwatch};

/// The cluster cookie of the benchmark nodes.
const COOKIE: &str = "foundation-bench";

/// How long a figure may take before it is given up.
const PATIENCE: Duration = Duration::from_secs(120);

/// Two nodes: this process's and the child's.
pub(crate) struct Pair {
    runtime: Option<Runtime>,
    transport: Transport,
    child: Child,
    sink: Pid,
    echo: Pid,
}

impl Pair {
    /// Starts node 1 here and node 2 in a child process, on `backend`,
    /// connected both ways.
    pub(crate) fn start(backend: Backend) -> Result<Pair, String> {
        let (runtime, transport) = node(1, backend)?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(["child", "transport-node", backend.name()])
            .arg(transport.local_addr().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start node 2: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [addr, sink, echo] = fields[..] else {
            let _ = child.kill();
            return Err(format!("node 2 said {line:?}"));
        };
        let parse = |s: &str| {
            s.parse::<u64>()
                .map(Pid::from_bits)
                .map_err(|e| e.to_string())
        };
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        transport
            .add_peer(NodeId(2), addr)
            .map_err(|e| e.to_string())?;
        Ok(Pair {
            runtime: Some(runtime),
            transport,
            sink: parse(sink)?,
            echo: parse(echo)?,
            child,
        })
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("running until dropped")
    }

    /// Sends `msgs` messages of `size` bytes one way on `channel`, and
    /// returns messages per second, timed until the sink confirms the
    /// count.
    pub(crate) fn stream(&self, size: usize, msgs: u64, channel: ChannelId) -> Result<f64, String> {
        let transport = self.transport.clone();
        let sink = self.sink;
        let (done, finished) = mpsc::channel();
        self.runtime()
            .spawn(move |cx: Context<Remote<u64>>| async move {
                transport.register(&cx.addr());
                let payload = vec![0xa5_u8; size];
                // Warm the connection and learn the count so far.
                let before = count(&cx, &transport, sink, channel).await;
                let clock = Stopwatch::start();
                for _ in 0..msgs {
                    if transport
                        .send(cx.pid(), sink, channel, &payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let after = count(&cx, &transport, sink, channel).await;
                let _ = done.send((after.saturating_sub(before), clock.elapsed()));
            })
            .map_err(|e| e.to_string())?;
        let (received, elapsed) = finished
            .recv_timeout(PATIENCE)
            .map_err(|_| "the stream did not finish".to_owned())?;
        if received != msgs {
            return Err(format!("{received} of {msgs} messages arrived"));
        }
        Ok(crate::stats::rate(msgs, elapsed))
    }

    /// `rounds` 64-byte round trips to the echo on `channel`, after
    /// `warm_up` untimed ones.
    pub(crate) fn ping_pong(&self, rounds: u64, channel: ChannelId) -> Result<RoundTrips, String> {
        let transport = self.transport.clone();
        let echo = self.echo;
        let (done, finished) = mpsc::channel();
        self.runtime()
            .spawn_with(
                latency_bound(),
                move |cx: Context<Remote<[u8; 64]>>| async move {
                    transport.register(&cx.addr());
                    let ball = [7_u8; 64];
                    let warm_up = crate::stats::warm_up_rounds(rounds);
                    let mut samples = Vec::with_capacity(rounds as usize);
                    for round in 0..warm_up + rounds {
                        let clock = Stopwatch::start();
                        if transport
                            .send(cx.pid(), echo, channel, &ball)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let _ = cx.recv().await;
                        if round >= warm_up {
                            samples.push(clock.elapsed_ns());
                        }
                    }
                    let _ = done.send(RoundTrips::from_samples(samples));
                },
            )
            .map_err(|e| e.to_string())?;
        finished
            .recv_timeout(PATIENCE)
            .map_err(|_| "the ping-pong did not finish".to_owned())
    }

    /// Control-channel round trips while another process keeps the bulk
    /// channel full of 1 MiB messages to the sink.
    pub(crate) fn ping_pong_under_bulk(&self, rounds: u64) -> Result<RoundTrips, String> {
        let transport = self.transport.clone();
        let sink = self.sink;
        let (stop, stopped) = mpsc::channel::<()>();
        let (flooding, flood_started) = mpsc::channel();
        self.runtime()
            .spawn(move |cx: Context<()>| async move {
                let payload = vec![0x5a_u8; 1024 * 1024];
                let _ = flooding.send(());
                while stopped.try_recv().is_err() {
                    if transport
                        .send(cx.pid(), sink, ChannelId::BULK, &payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let _ = flood_started.recv_timeout(PATIENCE);
        let trips = self.ping_pong(rounds, ChannelId::CONTROL);
        drop(stop);
        trips
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.transport.stop();
        // Closing stdin tells node 2 to stop.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown();
        }
    }
}

/// Asks the sink for its count, on `channel` (so that it arrives after
/// everything sent before it on that channel).
async fn count(
    cx: &Context<Remote<u64>>,
    transport: &Transport,
    sink: Pid,
    channel: ChannelId,
) -> u64 {
    if transport
        .send(cx.pid(), sink, channel, &Vec::<u8>::new())
        .await
        .is_err()
    {
        return 0;
    }
    match cx.recv_timeout(PATIENCE).await {
        Some(message) => message.into_msg().map_or(0, |count| count.to_native()),
        None => 0,
    }
}

/// How the ping-pong's two ends run: at `High` priority, as a service
/// runs its latency-bound processes, so that on a shard also busy with
/// bulk traffic they go first. (The Erlang peer's ends run at `high`
/// priority too.)
fn latency_bound() -> SpawnOptions {
    SpawnOptions::new().priority(Priority::High)
}

/// Node `id` with one shard: node 1 on the first core, node 2 on the
/// second (when there is one), so the two ends run at once.
fn node(id: u16, backend: Backend) -> Result<(Runtime, Transport), String> {
    let core = usize::from(id - 1) % crate::peers::cores();
    let builder = Runtime::builder()
        .shards(1)
        .cores(vec![core])
        .node(NodeId(id));
    let mut config = TransportConfig::new(format!("bench-{id}"), Cookie::new(COOKIE));
    config.backend = Some(backend);
    Transport::start(builder, config).map_err(|e| e.to_string())
}

/// The child side: node 2, serving until stdin closes.
pub(crate) fn run_node(backend: &str, peer: SocketAddr) -> ExitCode {
    let backend = match backend {
        "io_uring" => Backend::IoUring,
        _ => Backend::Epoll,
    };
    let (runtime, transport) = match node(2, backend) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("node 2: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = transport.add_peer(NodeId(1), peer) {
        eprintln!("node 2: {error}");
        return ExitCode::FAILURE;
    }
    let sink_transport = transport.clone();
    let sink = runtime.spawn(move |cx: Context<Remote<Vec<u8>>>| async move {
        let mut count = 0_u64;
        loop {
            let Some(message) = cx.recv().await.into_msg() else {
                break;
            };
            if message.is_empty() {
                let from = message.source();
                let channel = message.channel();
                drop(message);
                let _ = sink_transport.send(cx.pid(), from, channel, &count).await;
            } else {
                count += 1;
            }
        }
    });
    let echo_transport = transport.clone();
    let echo = runtime.spawn_with(
        latency_bound(),
        move |cx: Context<Remote<[u8; 64]>>| async move {
            loop {
                let Some(message) = cx.recv().await.into_msg() else {
                    break;
                };
                let (from, channel, ball) = (message.source(), message.channel(), *message);
                drop(message);
                let _ = echo_transport.send(cx.pid(), from, channel, &ball).await;
            }
        },
    );
    let (Ok(sink), Ok(echo)) = (sink, echo) else {
        return ExitCode::FAILURE;
    };
    transport.register(&sink);
    transport.register(&echo);
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "{} {} {}",
        transport.local_addr(),
        sink.pid().to_bits(),
        echo.pid().to_bits()
    );
    let _ = stdout.flush();
    // Serve until the parent closes our stdin.
    let _ = std::io::stdin().read_line(&mut String::new());
    transport.stop();
    runtime.shutdown();
    ExitCode::SUCCESS
}
