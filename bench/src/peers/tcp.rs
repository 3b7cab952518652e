//! Raw TCP peers: what the kernel alone charges for a message crossing a
//! loopback connection between two OS processes.
//!
//! Foundation's remote figures move messages between two nodes over TCP.
//! Whatever it does above the socket — framing, encoding, scheduling,
//! mailboxes — comes on top of what the socket itself costs, and these peers
//! measure that cost alone, written as a careful hand-rolled framed protocol
//! would be. They are the floor a transport can approach, not beat:
//!
//! - [`stream`]: one direction, length-prefixed messages (a 4-byte
//!   little-endian length, then the payload). The sender encodes messages
//!   into a batch of at least [`BATCH_BYTES`] and writes it with one
//!   `write_all`; the receiver reads [`READ_BUFFER`] bytes at a time and
//!   walks every length prefix, so it delimits messages as a framed protocol
//!   must, but it neither copies payloads out nor hands them to anyone. A
//!   transport that delivers each message to a process does strictly more.
//! - [`ping_pong`]: 64-byte round trips on blocking sockets with
//!   `TCP_NODELAY`, the pinging side timing each round: the floor of a
//!   remote request and its reply.
//! - [`sockperf_ping_pong`]: the same round trip measured by `sockperf`
//!   (Debian package `sockperf`), a standard tool, when it is on the PATH. It
//!   checks that [`ping_pong`]'s figures are what the kernel gives and not an
//!   artefact of this harness; the case leaves it out when
//!   [`sockperf_available`] says no.
//!
//! The two ends live in two OS processes, because two nodes share no address
//! space, allocator or scheduler, and a wake-up across processes costs what
//! it costs between two nodes on one machine. The far end is this binary
//! re-executed with a hidden subcommand ([`TcpChild`]), as [`crate::rss`]
//! does for memory: the parent listens on an ephemeral loopback port, starts
//! `foundation-bench child tcp-sink <addr> <messages>` or `child tcp-echo
//! <addr>`, accepts its connection and then times everything on its own
//! clock: a stream from the first write until the sink's acknowledgement of
//! the last message arrives, a round trip from its write to its reply.
//!
//! Each call is one sample in a fresh pair of processes, so the cases can
//! interleave TCP with Foundation's repetitions like any other peer
//! ([`crate::cases::Trial::fallible`]).
//!
//! Where the two ends run decides the figures on a small VM, so every
//! figure takes a [`Placement`] (see there): one core, two cores, or
//! wherever the kernel puts them.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use clap::Subcommand;
use foundation::transport::LOOPBACK_CONGESTION_CONTROL;

use super::placement::{Pinned, Placement};
use super::Message;
use crate::stats::{self, RoundTrips, Stopwatch, Throughput};

/// Bytes of encoded messages the stream sender collects before one
/// `write_all` (a batch may exceed it by less than one message).
pub(crate) const BATCH_BYTES: usize = 256 * 1024;

/// Bytes the stream receiver asks for in one `read`.
pub(crate) const READ_BUFFER: usize = 256 * 1024;

/// Largest payload a length prefix may announce (64 MiB): a larger one is a
/// corrupt stream, not a message.
const MAX_PAYLOAD: u32 = 64 << 20;

/// How long the parent waits for its child to connect, and for it to exit
/// once the run is over.
const CHILD_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a socket read or write may block before the run is abandoned: a
/// hung far end must not hang the whole bench.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Byte every payload is filled with (not zero, so no layer can treat the
/// payload as a run of zeros).
const PAYLOAD_BYTE: u8 = 0xA5;

/// The far ends of the TCP figures, run by the parent as
/// `foundation-bench child tcp-sink …` or `child tcp-echo …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TcpChild {
    /// Connects to `addr`, reads `messages` length-prefixed messages, then
    /// acknowledges with the messages and payload bytes it counted (two
    /// little-endian u64).
    TcpSink {
        /// The parent's listening address.
        addr: SocketAddr,
        /// Messages to read before acknowledging.
        messages: u64,
    },
    /// Connects to `addr` and echoes 64-byte messages until the parent
    /// closes the connection.
    TcpEcho {
        /// The parent's listening address.
        addr: SocketAddr,
    },
}

impl TcpChild {
    /// Runs this far end in the current (child) process.
    pub(crate) fn run(&self) -> ExitCode {
        let result = match self {
            TcpChild::TcpSink { addr, messages } => sink(*addr, *messages),
            TcpChild::TcpEcho { addr } => echo(*addr),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                let name = match self {
                    TcpChild::TcpSink { .. } => "tcp-sink",
                    TcpChild::TcpEcho { .. } => "tcp-echo",
                };
                eprintln!("{name}: {error}");
                ExitCode::FAILURE
            }
        }
    }
}

/// One sample of one-direction throughput: `msgs` messages of `size`
/// payload bytes each, length-prefixed, from this process to a sink child
/// over loopback TCP, the two placed by `placement`.
///
/// Timed from the first write until the sink's acknowledgement of the last
/// message arrives (one small message's latency on top of the stream, which
/// is noise next to any run worth timing). The connection is set up before
/// the clock starts.
pub(crate) fn stream(size: usize, msgs: u64, placement: Placement) -> Result<Throughput, String> {
    let prefix = u32::try_from(size)
        .ok()
        .filter(|&len| len <= MAX_PAYLOAD)
        .ok_or_else(|| format!("{size}-byte messages exceed the {MAX_PAYLOAD}-byte limit"))?
        .to_le_bytes();
    let listener = listen()?;
    let addr = local_addr(&listener)?;
    let (mut far, _pinned) = FarEnd::start_placed(
        placement,
        "tcp-sink",
        &[&addr.to_string(), &msgs.to_string()],
    )?;
    let mut socket = far.accept(&listener)?;

    let payload = vec![PAYLOAD_BYTE; size];
    let frame = size + prefix.len();
    let per_batch = BATCH_BYTES.div_ceil(frame);
    let mut batch = Vec::with_capacity(per_batch * frame);
    let mut ack = [0u8; 16];
    let clock = Stopwatch::start();
    let mut left = msgs;
    while left > 0 {
        let n = left.min(per_batch as u64);
        batch.clear();
        for _ in 0..n {
            batch.extend_from_slice(&prefix);
            batch.extend_from_slice(&payload);
        }
        if let Err(error) = socket.write_all(&batch) {
            return Err(far.explain("writing the stream", &error));
        }
        left -= n;
    }
    if let Err(error) = socket.read_exact(&mut ack) {
        return Err(far.explain("reading the sink's acknowledgement", &error));
    }
    let elapsed = clock.elapsed();

    let (counted, bytes) = split_ack(&ack);
    let sent_bytes = msgs.saturating_mul(size as u64);
    if (counted, bytes) != (msgs, sent_bytes) {
        return Err(format!(
            "the sink counted {counted} messages and {bytes} payload bytes of {msgs} and {sent_bytes} sent"
        ));
    }
    drop(socket);
    far.finish()?;
    Ok(Throughput::new(msgs, size, elapsed))
}

/// One sample of `rounds` timed round trips of a 64-byte message between
/// this process and an echo child over loopback TCP, the two placed by
/// `placement`, after [`stats::warm_up_rounds`] untimed ones.
pub(crate) fn ping_pong(rounds: u64, placement: Placement) -> Result<RoundTrips, String> {
    let listener = listen()?;
    let addr = local_addr(&listener)?;
    let (mut far, _pinned) = FarEnd::start_placed(placement, "tcp-echo", &[&addr.to_string()])?;
    let mut socket = far.accept(&listener)?;

    let warm_up = stats::warm_up_rounds(rounds);
    let mut samples = Vec::with_capacity(rounds as usize);
    let mut ping: Message = [PAYLOAD_BYTE; 64];
    let mut pong: Message = [0; 64];
    for round in 0..warm_up + rounds {
        ping[0] = round as u8;
        let clock = Stopwatch::start();
        let trip = socket
            .write_all(&ping)
            .and_then(|()| socket.read_exact(&mut pong));
        let ns = clock.elapsed_ns();
        if let Err(error) = trip {
            return Err(far.explain("ping-pong", &error));
        }
        if pong != ping {
            return Err(format!("round {round}: the echo differs from the ping"));
        }
        if round >= warm_up {
            samples.push(ns);
        }
    }
    drop(socket);
    far.finish()?;
    Ok(RoundTrips::from_samples(samples))
}

/// Whether `sockperf` is on the PATH (Debian package `sockperf`).
pub(crate) fn sockperf_available() -> bool {
    super::on_path("sockperf")
}

/// One sample of 64-byte TCP round trips over loopback measured by
/// `sockperf ping-pong --full-rtt` for `seconds` seconds (sockperf runs for
/// a time, not a count; it warms up on its own), against a `sockperf server`
/// started for the run and stopped after it, the two placed by `placement`.
///
/// sockperf prints percentiles, not samples: p50, p99, p99.9 and the mean
/// come from its summary.
pub(crate) fn sockperf_ping_pong(seconds: u32, placement: Placement) -> Result<RoundTrips, String> {
    let port = free_port()?;
    let port_arg = port.to_string();
    let (mut server, pinned) = placement.start(|| {
        let server = Command::new("sockperf")
            .args(["server", "--tcp", "-i", "127.0.0.1", "-p", &port_arg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting sockperf server: {e}"))?;
        Ok(FarEnd {
            name: "sockperf server",
            child: server,
        })
    })?;
    server.wait_listening(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    let output = Command::new("sockperf")
        .args(["ping-pong", "--tcp", "-i", "127.0.0.1", "-p", &port_arg])
        .args(["-m", "64", "-t", &seconds.max(1).to_string(), "--full-rtt"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running sockperf ping-pong: {e}"))?;
    drop(server);
    drop(pinned);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "sockperf ping-pong failed ({}): {}",
            output.status,
            crate::rss::failure_reason(&format!("{stdout}\n{stderr}"))
        ));
    }
    parse_sockperf(&stdout).ok_or_else(|| "sockperf printed no percentiles".to_owned())
}

/// A corrupt stream, seen by the receiver's [`Deframer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameError {
    /// A length prefix announced more than [`MAX_PAYLOAD`] bytes.
    TooLong {
        /// The announced payload length.
        len: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { len } => write!(
                f,
                "a length prefix announced {len} bytes, over the {MAX_PAYLOAD}-byte limit"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Splits a byte stream into length-prefixed messages as its bytes arrive,
/// in chunks cut anywhere (inside a prefix, inside a payload), counting the
/// messages and their payload bytes without copying payloads.
#[derive(Debug, Default)]
struct Deframer {
    /// Bytes of a length prefix cut by the end of the previous chunk.
    prefix: [u8; 4],
    /// How many of `prefix` are filled.
    prefix_len: usize,
    /// Payload bytes of the current message still to come; 0 between
    /// messages.
    payload_left: usize,
    /// Complete messages so far.
    messages: u64,
    /// Payload bytes of the complete messages.
    payload_bytes: u64,
}

impl Deframer {
    /// Consumes the next chunk of the stream.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len());
                self.payload_left -= take;
                bytes = &bytes[take..];
                if self.payload_left == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let take = (self.prefix.len() - self.prefix_len).min(bytes.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&bytes[..take]);
            self.prefix_len += take;
            bytes = &bytes[take..];
            if self.prefix_len < self.prefix.len() {
                break;
            }
            self.prefix_len = 0;
            let len = u32::from_le_bytes(self.prefix);
            if len > MAX_PAYLOAD {
                return Err(FrameError::TooLong { len });
            }
            self.payload_bytes += u64::from(len);
            // `len <= MAX_PAYLOAD` fits any usize this code runs on.
            self.payload_left = len as usize;
            if len == 0 {
                self.messages += 1;
            }
        }
        Ok(())
    }
}

/// The child that is the far end of a figure, killed if the figure fails
/// before it exits.
#[derive(Debug)]
struct FarEnd {
    name: &'static str,
    child: Child,
}

impl FarEnd {
    /// Starts `foundation-bench child <name> <args>`.
    fn start(name: &'static str, args: &[&str]) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
        let child = Command::new(exe)
            .args(["child", name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the {name} child: {e}"))?;
        Ok(Self { name, child })
    }

    /// Starts `foundation-bench child <name> <args>` placed by `placement`:
    /// the calling thread is pinned to the child's core while it starts the
    /// child (which inherits its mask), then to its own core until the
    /// returned guard is dropped.
    fn start_placed(
        placement: Placement,
        name: &'static str,
        args: &[&str],
    ) -> Result<(Self, Option<Pinned>), String> {
        placement.start(|| Self::start(name, args))
    }

    /// Accepts this child's connection on `listener`, giving up if the
    /// child exits or takes longer than [`CHILD_TIMEOUT`].
    fn accept(&mut self, listener: &TcpListener) -> Result<TcpStream, String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("setting the listener non-blocking: {e}"))?;
        let clock = Stopwatch::start();
        loop {
            match listener.accept() {
                Ok((socket, _)) => {
                    configure(&socket).map_err(|e| format!("configuring the socket: {e}"))?;
                    return Ok(socket);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(self.failure(status));
                    }
                    if clock.elapsed() > CHILD_TIMEOUT {
                        return Err(format!(
                            "the {} child did not connect within {CHILD_TIMEOUT:?}",
                            self.name
                        ));
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(format!("accepting the {} child: {error}", self.name)),
            }
        }
    }

    /// Waits until something accepts connections on `addr` (a server child
    /// that takes its own time to listen).
    fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), String> {
        let clock = Stopwatch::start();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failure(status));
            }
            if clock.elapsed() > CHILD_TIMEOUT {
                return Err(format!(
                    "{} did not listen on {addr} within {CHILD_TIMEOUT:?}",
                    self.name
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the child to exit (the parent has closed its end) and
    /// reports a failed exit.
    fn finish(mut self) -> Result<(), String> {
        match self.wait(CHILD_TIMEOUT) {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(self.failure(status)),
            None => Err(format!(
                "the {} child did not exit within {CHILD_TIMEOUT:?}",
                self.name
            )),
        }
    }

    /// Describes an I/O `error` of the parent during `what`, by the child's
    /// own complaint when it has failed (its failure is usually the cause).
    fn explain(&mut self, what: &str, error: &io::Error) -> String {
        match self.wait(Duration::from_millis(500)) {
            Some(status) if !status.success() => self.failure(status),
            _ => format!("{what}: {error}"),
        }
    }

    /// The child's exit status and the gist of its stderr.
    fn failure(&mut self, status: ExitStatus) -> String {
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        format!(
            "the {} child failed ({status}): {}",
            self.name,
            crate::rss::failure_reason(&stderr)
        )
    }

    /// The child's exit status if it exits within `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let clock = Stopwatch::start();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if clock.elapsed() < timeout => thread::sleep(Duration::from_millis(1)),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

impl Drop for FarEnd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The sink child: counts `count` messages, then acknowledges.
fn sink(addr: SocketAddr, count: u64) -> io::Result<()> {
    let mut socket = connect(addr)?;
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut deframer = Deframer::default();
    while deframer.messages < count {
        let n = match socket.read(&mut buffer) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the stream ended after {} of {count} messages",
                        deframer.messages
                    ),
                ))
            }
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        deframer
            .feed(&buffer[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    let mut ack = [0u8; 16];
    ack[..8].copy_from_slice(&deframer.messages.to_le_bytes());
    ack[8..].copy_from_slice(&deframer.payload_bytes.to_le_bytes());
    socket.write_all(&ack)
}

/// The echo child: returns every 64-byte message until the parent closes.
fn echo(addr: SocketAddr) -> io::Result<()> {
    let mut socket = connect(addr)?;
    let mut message: Message = [0; 64];
    loop {
        let n = match socket.read(&mut message) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        socket.read_exact(&mut message[n..])?;
        socket.write_all(&message)?;
    }
}

/// `(messages, payload bytes)` of a sink's acknowledgement.
fn split_ack(ack: &[u8; 16]) -> (u64, u64) {
    let mut messages = [0u8; 8];
    let mut bytes = [0u8; 8];
    messages.copy_from_slice(&ack[..8]);
    bytes.copy_from_slice(&ack[8..]);
    (u64::from_le_bytes(messages), u64::from_le_bytes(bytes))
}

/// A loopback listener whose connections take the congestion control
/// Foundation gives the connections it dials to its own host
/// ([`LOOPBACK_CONGESTION_CONTROL`]), so that this process's end (the
/// stream's sender, the ping-pong's pinging end) is paced, or not, as
/// Foundation's senders are. Where the kernel lacks it, Foundation keeps
/// the system's, and so does this peer.
fn listen() -> Result<TcpListener, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("listening on loopback: {e}"))?;
    let _ = rustix::net::sockopt::set_tcp_congestion(&listener, LOOPBACK_CONGESTION_CONTROL);
    Ok(listener)
}

/// Whether this process may give its sockets
/// [`LOOPBACK_CONGESTION_CONTROL`], as Foundation's connections to its own
/// host take it: the Erlang peer asks for it only then, as a refused socket
/// option would fail its connections.
pub(crate) fn loopback_congestion_control_available() -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).is_ok_and(|listener| {
        rustix::net::sockopt::set_tcp_congestion(&listener, LOOPBACK_CONGESTION_CONTROL).is_ok()
    })
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, String> {
    listener
        .local_addr()
        .map_err(|e| format!("reading the listening address: {e}"))
}

/// A loopback port free a moment ago, for a server that binds it itself
/// (a short race with other programs, acceptable on a bench machine).
pub(crate) fn free_port() -> Result<u16, String> {
    let listener = listen()?;
    Ok(local_addr(&listener)?.port())
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpStream::connect_timeout(&addr, CHILD_TIMEOUT)?;
    configure(&socket)?;
    Ok(socket)
}

/// Both ends alike: blocking, `TCP_NODELAY` (a framed protocol's last small
/// write must not wait for an acknowledgement), bounded waits.
fn configure(socket: &TcpStream) -> io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))
}

/// p50, p99, p99.9 and mean round trip (ns) from `sockperf ping-pong
/// --full-rtt` output, which gives them in microseconds:
///
/// ```text
/// sockperf: ====> avg-rtt=63.705 (std-dev=14.546)
/// sockperf: ---> percentile 99.900 =  105.819
/// ```
fn parse_sockperf(stdout: &str) -> Option<RoundTrips> {
    let mut mean = None;
    let (mut p50, mut p99, mut p999) = (None, None, None);
    for line in stdout.lines() {
        if let Some((_, rest)) = line.split_once("avg-rtt=") {
            let number: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            mean = number.parse::<f64>().ok();
        } else if let Some((_, rest)) = line.split_once("---> percentile ") {
            let Some((pct, value)) = rest.split_once('=') else {
                continue;
            };
            let value = value.trim().parse::<f64>().ok();
            match pct.trim() {
                "50.000" => p50 = value,
                "99.000" => p99 = value,
                "99.900" => p999 = value,
                _ => {}
            }
        }
    }
    let us_to_ns = |us: f64| us * 1_000.0;
    Some(RoundTrips {
        p50_ns: us_to_ns(p50?),
        p99_ns: us_to_ns(p99?),
        p999_ns: us_to_ns(p999?),
        mean_ns: us_to_ns(mean?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(sizes: &[usize]) -> Vec<u8> {
        let mut stream = Vec::new();
        for &size in sizes {
            stream.extend_from_slice(&(size as u32).to_le_bytes());
            stream.extend(std::iter::repeat_n(PAYLOAD_BYTE, size));
        }
        stream
    }

    #[test]
    fn deframer_counts_messages_cut_anywhere() {
        let sizes = [16, 0, 64, 1, 300, 0, 7];
        let stream = frames(&sizes);
        let total: usize = sizes.iter().sum();
        for chunk in 1..=stream.len() {
            let mut deframer = Deframer::default();
            for piece in stream.chunks(chunk) {
                deframer.feed(piece).expect("valid stream");
            }
            assert_eq!(deframer.messages, sizes.len() as u64, "chunks of {chunk}");
            assert_eq!(deframer.payload_bytes, total as u64, "chunks of {chunk}");
            assert_eq!((deframer.prefix_len, deframer.payload_left), (0, 0));
        }
    }

    #[test]
    fn deframer_holds_an_unfinished_message() {
        let stream = frames(&[10, 10]);
        let mut deframer = Deframer::default();
        deframer.feed(&stream[..stream.len() - 1]).expect("valid");
        assert_eq!(deframer.messages, 1);
        deframer.feed(&stream[stream.len() - 1..]).expect("valid");
        assert_eq!(deframer.messages, 2);
    }

    #[test]
    fn deframer_rejects_an_oversized_prefix() {
        let mut deframer = Deframer::default();
        let len = MAX_PAYLOAD + 1;
        assert_eq!(
            deframer.feed(&len.to_le_bytes()),
            Err(FrameError::TooLong { len })
        );
    }

    #[test]
    fn ack_round_trips() {
        let mut ack = [0u8; 16];
        ack[..8].copy_from_slice(&7u64.to_le_bytes());
        ack[8..].copy_from_slice(&448u64.to_le_bytes());
        assert_eq!(split_ack(&ack), (7, 448));
    }

    #[test]
    fn parses_sockperf_summary() {
        let stdout = "\
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=24302; ReceivedMessages=24302
sockperf: \x1b[2;35m====> avg-rtt=63.705 (std-dev=14.546)\x1b[0m
sockperf: Summary: Round trip is 63.705 usec
sockperf: ---> <MAX> observation = 1477.852
sockperf: ---> percentile 99.999 = 1477.852
sockperf: ---> percentile 99.990 =  652.461
sockperf: ---> percentile 99.900 =  105.819
sockperf: ---> percentile 99.000 =   86.460
sockperf: ---> percentile 50.000 =   63.016
sockperf: ---> <MIN> observation =   14.856
";
        let trips = parse_sockperf(stdout).expect("parsed");
        assert_eq!(trips.p50_ns, 63.016 * 1_000.0);
        assert_eq!(trips.p99_ns, 86.46 * 1_000.0);
        assert_eq!(trips.p999_ns, 105.819 * 1_000.0);
        assert_eq!(trips.mean_ns, 63.705 * 1_000.0);
        assert_eq!(parse_sockperf("sockperf: Test ended\n"), None);
    }

    /// The sink and echo ends against this process's own sender and
    /// pinger, on threads (the real runs put them in a child process).
    #[test]
    fn sink_and_echo_serve_their_parent() {
        let listener = listen().expect("listen");
        let addr = local_addr(&listener).expect("addr");
        let sink_end = thread::spawn(move || sink(addr, 3));
        let (mut socket, _) = listener.accept().expect("accept");
        socket.write_all(&frames(&[5, 0, 70_000])).expect("write");
        let mut ack = [0u8; 16];
        socket.read_exact(&mut ack).expect("ack");
        assert_eq!(split_ack(&ack), (3, 70_005));
        sink_end.join().expect("sink thread").expect("sink");

        let echo_end = thread::spawn(move || echo(addr));
        let (mut socket, _) = listener.accept().expect("accept");
        let ping: Message = [9; 64];
        let mut pong: Message = [0; 64];
        socket.write_all(&ping).expect("write");
        socket.read_exact(&mut pong).expect("read");
        assert_eq!(pong, ping);
        drop(socket);
        echo_end.join().expect("echo thread").expect("echo");
    }
}
