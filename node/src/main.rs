//! `foundation-node`: a Foundation node as a program.
//!
//! ```text
//! foundation-node start --config node.toml
//! foundation-node start --name alpha --listen 127.0.0.1:4370 --cookie-file cookie
//! foundation-node start --name beta --cookie-file cookie --join 127.0.0.1:4370
//! foundation-node members --node 127.0.0.1:4370 --cookie-file cookie
//! ```
//!
//! `start` reads the configuration file ([`NodeConfig`]'s TOML), if any,
//! then applies the flags over it; it prints one line with the node's
//! name, id and address, then one line per membership event, and stops in
//! order (leaving the cluster first) on SIGTERM or SIGINT:
//!
//! ```text
//! started alpha id 7 at 127.0.0.1:4370
//! up 9 beta 127.0.0.1:4371
//! suspect 9 beta 127.0.0.1:4371
//! down 9 beta 127.0.0.1:4371 failed
//! stopped alpha
//! ```
//!
//! Other nodes may spawn one kind of process here through the node's
//! process factory (unless the configuration's `spawn_allow` leaves it
//! out): `idle`, a process that waits until its node stops — for checking
//! remote spawn, links and monitors against a running cluster.
//!
//! `members` asks a running node for its view of the cluster, proving the
//! cookie as any node does, and prints the node first, then each member up,
//! one per line: `id name address`.
//!
//! Logs go to stderr; `RUST_LOG` filters them (default `warn`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use foundation::membership::{query_members, DownReason, Member, MemberEvent, PeerService};
use foundation::node::{Node, NodeConfig};
use foundation::transport::Cookie;
use foundation::{Context, Envelope};
use signal_hook::consts::{SIGINT, SIGTERM};

#[derive(Parser)]
#[command(name = "foundation-node", version, about = "Runs a Foundation node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Starts a node and runs it until SIGTERM or SIGINT.
    Start(Start),
    /// Prints the cluster as a running node sees it.
    Members(Members),
}

#[derive(Args)]
struct Start {
    /// A TOML configuration file; the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's name.
    #[arg(long)]
    name: Option<String>,
    /// The node's id (1-65535); derived from the name when absent.
    #[arg(long)]
    id: Option<u16>,
    /// Where to listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The address peers dial, if not the listen address.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// A file holding the cluster's secret.
    #[arg(long)]
    cookie_file: Option<PathBuf>,
    /// A node of the cluster to join through (repeatable).
    #[arg(long = "join")]
    join: Vec<SocketAddr>,
    /// Shards (threads).
    #[arg(long)]
    shards: Option<usize>,
    /// The data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct Members {
    /// The node to ask.
    #[arg(long)]
    node: SocketAddr,
    /// A file holding the cluster's secret.
    #[arg(long)]
    cookie_file: PathBuf,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Start(start) => run(start),
        Command::Members(members) => print_members(members),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("foundation-node: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The process kind every `foundation-node` lets others spawn.
const IDLE: &str = "idle";

/// What the main thread waits for.
enum Wake {
    Event(MemberEvent),
    /// SIGTERM or SIGINT.
    Stop,
}

fn run(start: Start) -> Result<(), String> {
    let config = configure(start)?;
    let (wake, woken) = mpsc::channel();
    // Signals first, so no thread the node starts can catch them instead.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| e.to_string())?;
    let on_signal = wake.clone();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = on_signal.send(Wake::Stop);
        }
    });
    let node = Node::start(config).map_err(|e| e.to_string())?;
    node.dist()
        .factory()
        .register(IDLE, |cx: Context<()>, (): ()| async move {
            while let Envelope::Msg(()) = cx.recv().await {}
        });
    let subscriber = node
        .runtime()
        .spawn(move |cx: Context<MemberEvent>| async move {
            while let Envelope::Msg(event) = cx.recv().await {
                if wake.send(Wake::Event(event)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    node.membership().subscribe(subscriber);
    say(&format!(
        "started {} id {} at {}",
        node.name(),
        node.id().0,
        node.addr()
    ));
    for woke in woken {
        match woke {
            Wake::Event(event) => say(&describe(&event)),
            Wake::Stop => break,
        }
    }
    let name = node.name().to_owned();
    node.stop();
    say(&format!("stopped {name}"));
    Ok(())
}

/// The configuration file, if any, with the flags over it.
fn configure(start: Start) -> Result<NodeConfig, String> {
    let mut config = match &start.config {
        Some(path) => NodeConfig::load(path).map_err(|e| e.to_string())?,
        None => {
            let name = start.name.clone().ok_or("give --name or --config")?;
            let mut config = NodeConfig::new(name, "");
            config.cookie = None;
            config
        }
    };
    if let Some(name) = start.name {
        config.name = name;
    }
    if let Some(id) = start.id {
        config.id = Some(id);
    }
    if let Some(listen) = start.listen {
        config.listen = listen;
    }
    if let Some(advertise) = start.advertise {
        config.advertise = Some(advertise);
    }
    if let Some(path) = start.cookie_file {
        config.cookie = None;
        config.cookie_file = Some(path);
    }
    config.seeds.extend(start.join);
    if let Some(shards) = start.shards {
        config.shards = Some(shards);
    }
    if let Some(dir) = start.data_dir {
        config.data_dir = Some(dir);
    }
    Ok(config)
}

fn print_members(members: Members) -> Result<(), String> {
    let secret = std::fs::read_to_string(&members.cookie_file)
        .map_err(|e| format!("{}: {e}", members.cookie_file.display()))?;
    let cookie = Cookie::new(secret.trim());
    let timeout = Duration::from_millis(members.timeout_ms);
    let view = query_members(members.node, cookie, timeout).map_err(|e| e.to_string())?;
    for member in view {
        say(&format!(
            "{} {} {}",
            member.node.0, member.name, member.addr
        ));
    }
    Ok(())
}

/// One line per event: what happened, then the member.
fn describe(event: &MemberEvent) -> String {
    let line = |what: &str, member: &Member| {
        format!("{what} {} {} {}", member.node.0, member.name, member.addr)
    };
    match event {
        MemberEvent::Up(member) => line("up", member),
        MemberEvent::Suspect(member) => line("suspect", member),
        MemberEvent::Trusted(member) => line("trusted", member),
        MemberEvent::Down(member, DownReason::Left) => line("down", member) + " left",
        MemberEvent::Down(member, DownReason::Failed) => line("down", member) + " failed",
    }
}

/// Prints a line to stdout at once, for whoever reads it through a pipe.
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
