//! Named channels and their options.
//!
//! A channel is a class of traffic between two nodes with its own TCP
//! connections, so that one class never waits behind another in a socket
//! buffer: membership and supervision signals on `control` are not stuck
//! behind a megabyte on `bulk`. Partisan's insight is that a channel may
//! also use several connections at once (*parallelism*); a message's lane
//! is chosen by hashing its sender and receiver, which keeps the order of
//! every (sender, receiver, channel) triple.
//!
//! Every node of a cluster must declare the same channels in the same
//! order: the handshake compares a digest of their names and refuses a
//! connection on mismatch ([`crate::HandshakeError::Channels`]).

use std::fmt;
use std::time::Duration;

use foundation_sched::Priority;

/// A channel's index in the transport's channel list, as carried in frame
/// headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u16);

impl ChannelId {
    /// The default `control` channel.
    pub const CONTROL: ChannelId = ChannelId(0);
    /// The default `data` channel.
    pub const DATA: ChannelId = ChannelId(1);
    /// The default `gossip` channel.
    pub const GOSSIP: ChannelId = ChannelId(2);
    /// The default `bulk` channel.
    pub const BULK: ChannelId = ChannelId(3);
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "channel {}", self.0)
    }
}

/// What a channel promises about delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Frames written to a connection that then fails may be lost.
    BestEffort,
    /// Frames carry sequence numbers; the receiver acknowledges them, the
    /// sender keeps them until acknowledged and sends them again on the
    /// next connection, and the receiver drops the ones it already
    /// delivered. Nothing is lost or duplicated while the sending node
    /// lives.
    Acknowledged,
}

/// What a send does while the channel has no connection to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenDisconnected {
    /// Keep up to this many bytes of frames for when it connects; beyond,
    /// a send waits (or `try_send` says `WouldBlock`).
    Queue {
        /// Most bytes kept.
        max_bytes: usize,
    },
    /// Refuse the send with [`crate::SendError::NotConnected`].
    Fail,
}

/// Where an io_uring stream's received bytes land. (The epoll backend
/// always reads straight into the reader's buffer.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiveBuffers {
    /// Straight in the reader's own buffer: one `RECV` request per read,
    /// the kernel's copy the only one.
    InPlace,
    /// In the shard's provided-buffer ring, through one multishot `RECV`
    /// that stays armed, then copied into the reader's buffer: a request
    /// serves many reads and a stream holds no ring memory between them,
    /// for a second copy of every byte.
    Shared,
    /// Shared while the stream's reads are small, in place while bytes
    /// arrive faster than it reads them (`data`'s choice). A stream starts
    /// in place, goes shared when four reads in place in a row bring less
    /// than an eighth of a provided buffer without filling what they asked
    /// for (it has caught up; one such read is only the short segment that
    /// ends a sender's write), and back in place when one multishot
    /// completion fills a whole buffer (a buffer's worth was waiting in the
    /// socket). So a ping-pong keeps its armed multishot receive (p50 15.3
    /// µs on the bench's `latency`, against 16.0 µs in place), and a stream
    /// of small messages has each byte copied once and lands in the
    /// reader's own, cache-warm buffer instead of a ring of buffers that
    /// cycles through 16 MiB (1 KiB messages on the bench's `remote`:
    /// 4.1–4.8 M msgs/s against 3.2 M shared).
    ///
    /// It starts in place, so that a connection that opens with a flood
    /// has each byte copied once from its first read; one that opens with
    /// small messages goes shared after four reads. Starting shared
    /// measures about the same on the bench's `remote` (16 B, 1 KiB and
    /// 64 KiB, within 4 %, either way).
    Adaptive,
}

/// The least and the most [`ChannelSpec::send_slice`](ChannelSpec#structfield.send_slice)
/// may be: below, system calls would cost more than the copying; above,
/// a send into a socket with room would hold its shard for too long.
const MIN_SEND_SLICE: u32 = 4 * 1024;
pub(crate) const MAX_SEND_SLICE: u32 = 1024 * 1024;

/// [`ChannelSpec::send_slice`](ChannelSpec#structfield.send_slice) unless
/// set, and the slice of a connection's handshake.
pub(crate) const DEFAULT_SEND_SLICE: u32 = 256 * 1024;

/// The default channels' unsent bytes in the kernel, but `bulk`'s
/// ([`ChannelSpec::unsent_low_water`](ChannelSpec#structfield.unsent_low_water)).
const UNSENT_LOW_WATER: u32 = 16 * 1024;

/// A channel's name and options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The channel's name.
    pub name: String,
    /// Lower is more urgent; `control` is 0. The channel's connection
    /// processes (the writer of each outbound lane, the reader of each
    /// inbound one) run at the matching process priority
    /// ([`ChannelSpec::process_priority`]), so each shard serves its
    /// urgent channels' sockets first.
    pub priority: u8,
    /// Connections per peer.
    pub parallelism: u16,
    /// Best-effort or acknowledged.
    pub delivery: Delivery,
    /// Largest frame payload; larger messages travel as chunks.
    pub max_frame: u32,
    /// Largest message accepted (reassembled from chunks).
    pub max_message: usize,
    /// Bytes a sender may have in flight to one peer's lane before the
    /// receiver grants more (as its processes drain what they received).
    pub credit_window: u32,
    /// What a send does while disconnected.
    pub when_disconnected: WhenDisconnected,
    /// Most bytes one send of the channel's connections hands the kernel
    /// at once (one `write` or io_uring request; 4 KiB to 1 MiB, default
    /// 256 KiB). A send of that size over loopback takes tens of
    /// microseconds of its shard's time, during which a more urgent
    /// channel's traffic on that shard waits; smaller slices cut the wait
    /// and cost throughput. Measured with `foundation-bench hol` and
    /// `remote` on a 2-core machine, `bulk` at 64 KiB instead of 256:
    /// control round trips under a saturated `bulk` p99 643 → 262 µs on
    /// io_uring (epoll 175 → 118 µs), 1 MiB messages on `bulk`
    /// 2.5 → 1.6 GB/s.
    ///
    /// With the kernel's unsent bytes capped
    /// ([`ChannelSpec::unsent_low_water`](ChannelSpec#structfield.unsent_low_water)),
    /// one call copies at most about the cap and one segment, whatever
    /// the slice: the slice then only says how often the connection takes
    /// its buffer back. On io_uring each slice is a request whose result
    /// comes back through the shard's next turn, and the socket waits for
    /// the next one meanwhile: `control`, `data` and `gossip`, capped, go
    /// in 1 MiB slices (`remote`, 64 KiB messages, medians of fifteen
    /// repetitions: io_uring 5.6 → 6.1 GB/s, epoll 6.5 → 6.9; `hol`
    /// unchanged).
    pub send_slice: u32,
    /// The channel is background traffic: while its shard also carries
    /// other channels' traffic (within the last 10 ms), its sends and its
    /// in-place receives ([`ReceiveBuffers::InPlace`]) run on the kernel's
    /// worker threads (io_uring's `IOSQE_ASYNC`; epoll ignores it) instead
    /// of inline on the shard's thread, so the copies between the socket
    /// and the process's memory — over loopback, the other side's work as
    /// well — do not hold up the more urgent traffic. Costs a thread
    /// hand-off per request, which is why a shard with nothing else to
    /// serve stays inline; a lone urgent message after a quiet spell waits
    /// behind at most one inline slice. The worker threads run in the
    /// `SCHED_IDLE` class: they use the core when the shard leaves it idle,
    /// and a sustained foreground load on the same core leaves background
    /// traffic very little of it. Default off; on for `bulk`. Measured with
    /// `foundation-bench hol` and `remote` on a 2-core machine (the
    /// workers share the shard's core there): control round trip under a
    /// saturated `bulk` p50 280 → 19 µs, p99 471 → 286 µs (background
    /// sends against inline ones), with idle-class workers p99 36–42 µs,
    /// and with background receives as well 25–41 µs (median 29; 0.9–1.8×
    /// idle over twelve runs, median 1.15×); 1 MiB messages on `bulk` with
    /// no other traffic 2.48 GB/s (inline: 2.44; always in the
    /// background: 1.74).
    pub background: bool,
    /// Where the channel's connections receive on io_uring (epoll reads
    /// into the reader's buffer regardless). [`ReceiveBuffers::Shared`],
    /// the default, keeps a multishot receive armed on the shard's
    /// provided buffers: no request per read, which a round trip feels; it
    /// suits `control` and `gossip`, whose messages are small and few.
    /// [`ReceiveBuffers::Adaptive`], for `data`, does the same while its
    /// reads are small and receives in place while bytes stream in.
    /// [`ReceiveBuffers::InPlace`], for `bulk`, has the kernel write
    /// straight into the reader's buffer, one request of at most 256 KiB
    /// at a time: each byte is copied once instead of twice, and one
    /// request's copying is all a bulk stream adds to its shard's turn
    /// (control round trips under a saturated `bulk`, `foundation-bench
    /// hol` on a 2-core machine: p99 351 → 279 µs).
    pub receive_buffers: ReceiveBuffers,
    /// The most unsent bytes the kernel holds for one of the channel's
    /// connections before it takes no more from the writer
    /// (`TCP_NOTSENT_LOWAT`); `None`, the default, leaves the system's
    /// setting (`net.ipv4.tcp_notsent_lowat`, unlimited unless tuned). The
    /// socket still holds every byte sent and not yet acknowledged; this
    /// bounds only the queue behind them. Frames the kernel has not taken
    /// stay in the lane, where credit counts them and the channel's
    /// senders take turns, instead of in a send buffer that grows to
    /// megabytes.
    ///
    /// It also lets the socket run dry now and then, which TCP's BBR needs
    /// to tell a sender that cannot fill the path from a full path. With
    /// the send buffer always full, BBR on a 2-core VM's loopback left its
    /// start-up phase and paced every 64 KiB segment with a timer (BBR
    /// paces per socket unless the `fq` queueing discipline does it, and
    /// loopback has none), and the timers cost more than the spacing they
    /// asked for: 3.2 GB/s with both cores mostly idle, against 6 GB/s
    /// when it did not pace.
    ///
    /// 16 KiB on `control`, `data` and `gossip`. `foundation-bench remote`
    /// on io_uring, medians of fifteen repetitions without and with it:
    /// 64 KiB messages 3.5 → 5.3 GB/s (epoll 3.8 → 6.2), 1 KiB 5.5 → 5.8
    /// M msgs/s, 64 B unchanged. `bulk` keeps the system's setting: its
    /// 1 MiB messages went from 2.8–3.0 to 2.5–2.7 GB/s with it.
    pub unsent_low_water: Option<u32>,
}

impl ChannelSpec {
    /// A best-effort channel named `name`, priority 1, one connection,
    /// 128 KiB frames, a 4 MiB window, queueing up to one window while
    /// disconnected.
    ///
    /// The frame is 128 KiB rather than 64 so that a 64 KiB payload — with
    /// the few bytes its archive adds — still travels as one frame and is
    /// read in place; a chunked message costs the receiver a copy into a
    /// buffer of its own.
    pub fn new(name: impl Into<String>) -> ChannelSpec {
        ChannelSpec {
            name: name.into(),
            priority: 1,
            parallelism: 1,
            delivery: Delivery::BestEffort,
            max_frame: 128 * 1024,
            max_message: 256 * 1024 * 1024,
            credit_window: 4 * 1024 * 1024,
            when_disconnected: WhenDisconnected::Queue {
                max_bytes: 4 * 1024 * 1024,
            },
            send_slice: DEFAULT_SEND_SLICE,
            background: false,
            receive_buffers: ReceiveBuffers::Shared,
            unsent_low_water: None,
        }
    }

    /// Sets the priority (lower is more urgent).
    pub fn priority(mut self, priority: u8) -> ChannelSpec {
        self.priority = priority;
        self
    }

    /// The priority of the channel's connection processes on their shard:
    /// channel priority 0 runs `High` (before any other process), 1 and 2
    /// `Normal`, 3 and above `Low` (after `Normal` processes, never
    /// starved). With the defaults: `control` high, `data` and `gossip`
    /// normal, `bulk` low.
    pub fn process_priority(&self) -> Priority {
        match self.priority {
            0 => Priority::High,
            1 | 2 => Priority::Normal,
            _ => Priority::Low,
        }
    }

    /// Sets the connections per peer (at least one).
    pub fn parallelism(mut self, connections: u16) -> ChannelSpec {
        self.parallelism = connections;
        self
    }

    /// Sets the delivery guarantee.
    pub fn delivery(mut self, delivery: Delivery) -> ChannelSpec {
        self.delivery = delivery;
        self
    }

    /// Sets the most bytes one send hands the kernel at once
    /// ([`ChannelSpec::send_slice`](ChannelSpec#structfield.send_slice)).
    pub fn send_slice(mut self, bytes: u32) -> ChannelSpec {
        self.send_slice = bytes;
        self
    }

    /// Sets whether the channel is background traffic
    /// ([`ChannelSpec::background`](ChannelSpec#structfield.background)).
    pub fn background(mut self, background: bool) -> ChannelSpec {
        self.background = background;
        self
    }

    /// Sets where the channel's connections receive
    /// ([`ChannelSpec::receive_buffers`](ChannelSpec#structfield.receive_buffers)).
    pub fn receive_buffers(mut self, buffers: ReceiveBuffers) -> ChannelSpec {
        self.receive_buffers = buffers;
        self
    }

    /// Sets the most unsent bytes the kernel holds per connection
    /// ([`ChannelSpec::unsent_low_water`](ChannelSpec#structfield.unsent_low_water)).
    pub fn unsent_low_water(mut self, bytes: u32) -> ChannelSpec {
        self.unsent_low_water = Some(bytes);
        self
    }

    /// Sets the largest frame payload.
    pub fn max_frame(mut self, bytes: u32) -> ChannelSpec {
        self.max_frame = bytes;
        self
    }

    /// Sets the largest message.
    pub fn max_message(mut self, bytes: usize) -> ChannelSpec {
        self.max_message = bytes;
        self
    }

    /// Sets the credit window.
    pub fn credit_window(mut self, bytes: u32) -> ChannelSpec {
        self.credit_window = bytes;
        self
    }

    /// Sets what a send does while disconnected.
    pub fn when_disconnected(mut self, when: WhenDisconnected) -> ChannelSpec {
        self.when_disconnected = when;
        self
    }

    /// The four default channels, in [`ChannelId`] order:
    ///
    /// | name | priority | connections | delivery | max frame | window | sends | send slice | receives | unsent in the kernel |
    /// |---|---|---|---|---|---|---|---|---|---|
    /// | `control` | 0 | 1 | acknowledged | 128 KiB | 1 MiB | inline | 1 MiB | shared | 16 KiB |
    /// | `data` | 1 | 2 | best effort | 128 KiB | 1 MiB | inline | 1 MiB | adaptive | 16 KiB |
    /// | `gossip` | 2 | 1 | best effort | 128 KiB | 1 MiB | inline | 1 MiB | shared | 16 KiB |
    /// | `bulk` | 3 | 1 | best effort | 1 MiB | 16 MiB | background | 256 KiB | in place | the system's |
    pub fn defaults() -> Vec<ChannelSpec> {
        vec![
            ChannelSpec::new("control")
                .priority(0)
                .delivery(Delivery::Acknowledged)
                .credit_window(1024 * 1024)
                .unsent_low_water(UNSENT_LOW_WATER)
                .send_slice(MAX_SEND_SLICE),
            // A window the receiving socket holds without closing its own:
            // beyond it, TCP's flow control took over from credit, and on
            // one host the window updates made the receiver's core carry
            // the sender's transmits, slowing the side that already limited
            // (`remote` 64 B 14.5 M msgs/s with 4 MiB, 20 M with 1 MiB; 64
            // KiB unchanged).
            ChannelSpec::new("data")
                .priority(1)
                .parallelism(2)
                .credit_window(1024 * 1024)
                .receive_buffers(ReceiveBuffers::Adaptive)
                .unsent_low_water(UNSENT_LOW_WATER)
                .send_slice(MAX_SEND_SLICE),
            ChannelSpec::new("gossip")
                .priority(2)
                .credit_window(1024 * 1024)
                .unsent_low_water(UNSENT_LOW_WATER)
                .send_slice(MAX_SEND_SLICE),
            ChannelSpec::new("bulk")
                .priority(3)
                .max_frame(1024 * 1024)
                .credit_window(16 * 1024 * 1024)
                .background(true)
                .receive_buffers(ReceiveBuffers::InPlace)
                .when_disconnected(WhenDisconnected::Queue {
                    max_bytes: 16 * 1024 * 1024,
                }),
        ]
    }

    /// Checks the options make sense together.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let problem = if self.name.is_empty() {
            "has no name"
        } else if self.parallelism == 0 {
            "has no connections (parallelism 0)"
        } else if self.max_frame < 64 {
            "has a max frame under 64 bytes"
        } else if (self.credit_window as usize) < crate::frame::padded_len(self.max_frame as usize)
        {
            "has a credit window smaller than one frame"
        } else if !(MIN_SEND_SLICE..=MAX_SEND_SLICE).contains(&self.send_slice) {
            "has a send slice outside 4 KiB to 1 MiB"
        } else if self.unsent_low_water == Some(0) {
            "has an unsent low water of 0 (None leaves the system's setting)"
        } else {
            return Ok(());
        };
        Err(ConfigError::Channel {
            name: self.name.clone(),
            problem,
        })
    }
}

/// A transport configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No channels.
    NoChannels,
    /// Two channels share a name.
    DuplicateChannel(String),
    /// A channel's options contradict each other.
    Channel {
        /// The channel.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Reconnect backoff: the minimum is zero or above the maximum.
    Backoff {
        /// The minimum.
        min: Duration,
        /// The maximum.
        max: Duration,
    },
    /// Not a name the kernel could have for a congestion control: empty,
    /// longer than 15 bytes, or with a zero byte.
    CongestionControl(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoChannels => f.write_str("no channels"),
            ConfigError::DuplicateChannel(name) => write!(f, "two channels named {name:?}"),
            ConfigError::Channel { name, problem } => write!(f, "channel {name:?} {problem}"),
            ConfigError::Backoff { min, max } => {
                write!(f, "reconnect backoff {min:?}..{max:?} is empty")
            }
            ConfigError::CongestionControl(name) => {
                write!(f, "{name:?} is not a TCP congestion control's name")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A digest of the channel names, compared in the handshake (FNV-1a: the
/// aim is to catch a misconfiguration, not an adversary — the cookie does
/// that).
pub fn digest(channels: &[ChannelSpec]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for channel in channels {
        for byte in channel.name.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_in_id_order() {
        let channels = ChannelSpec::defaults();
        let names: Vec<_> = channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["control", "data", "gossip", "bulk"]);
        let priorities: Vec<_> = channels.iter().map(ChannelSpec::process_priority).collect();
        assert_eq!(
            priorities,
            [
                Priority::High,
                Priority::Normal,
                Priority::Normal,
                Priority::Low
            ]
        );
        for channel in &channels {
            channel.check().unwrap();
        }
        assert_eq!(channels[ChannelId::CONTROL.0 as usize].priority, 0);
    }

    #[test]
    fn contradictory_options_are_refused() {
        let bad = ChannelSpec::new("x").parallelism(0);
        assert!(matches!(bad.check(), Err(ConfigError::Channel { .. })));
        let bad = ChannelSpec::new("x")
            .max_frame(1 << 20)
            .credit_window(1 << 10);
        assert!(matches!(bad.check(), Err(ConfigError::Channel { .. })));
    }

    #[test]
    fn the_digest_tells_channel_lists_apart() {
        let a = ChannelSpec::defaults();
        let mut b = a.clone();
        b.swap(1, 2);
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(digest(&a), digest(&ChannelSpec::defaults()));
    }

    #[test]
    fn a_send_slice_outside_its_range_is_refused() {
        for bytes in [0, 4095, 1024 * 1024 + 1] {
            let spec = ChannelSpec::new("x").send_slice(bytes);
            assert!(
                matches!(spec.check(), Err(ConfigError::Channel { .. })),
                "{bytes}"
            );
        }
        for bytes in [4096, 64 * 1024, 1024 * 1024] {
            assert_eq!(ChannelSpec::new("x").send_slice(bytes).check(), Ok(()));
        }
    }

    #[test]
    fn an_unsent_low_water_of_zero_is_refused() {
        let spec = ChannelSpec::new("x").unsent_low_water(0);
        assert!(matches!(spec.check(), Err(ConfigError::Channel { .. })));
        assert_eq!(ChannelSpec::new("x").unsent_low_water(1).check(), Ok(()));
        assert_eq!(ChannelSpec::new("x").check(), Ok(()));
    }
}
