//! Links, monitors and exit signals between nodes.
//!
//! The runtime hands every signal for a process on another node to
//! [`Dist`](super::Dist) (it is the runtime's
//! [`Distribution`](foundation_sched::remote::Distribution)); the node's
//! *signal service* sends it on the acknowledged `control` channel to the
//! other node's signal service, which hands it in to the target. Both ends
//! keep the [`Relations`] between their processes and the other node's, so
//! that when membership declares a node down every local process linked to
//! one of its processes gets an exit signal, and every local monitor on
//! one a `Down`, with reason `noconnection` — once: the runtime drops a
//! second `Down` for a monitor, or an exit for a link, that is gone.

use std::collections::{BTreeMap, BTreeSet};

use foundation_sched::remote::{ExitKind, Signal};
use foundation_sched::{Down, ExitReason, MonitorRef, NodeId, Pid};
use rkyv::{Archive, Deserialize, Serialize};

/// The links and monitors between this node's processes and other nodes'.
#[derive(Default)]
pub(crate) struct Relations {
    /// (remote, local) pairs of linked processes.
    links: BTreeSet<(Pid, Pid)>,
    /// Monitors of local watchers on remote targets: (watcher, target).
    watching: BTreeMap<MonitorRef, (Pid, Pid)>,
    /// Monitors of remote watchers on local targets: (watcher, target).
    watched: BTreeMap<MonitorRef, (Pid, Pid)>,
}

impl Relations {
    /// Notes what `signal`, from a local process to remote process `to`,
    /// changes.
    pub(crate) fn sent(&mut self, to: Pid, signal: &Signal) {
        match signal {
            Signal::Link { from } => {
                self.links.insert((to, *from));
            }
            Signal::Unlink { from }
            | Signal::Exit {
                from,
                kind: ExitKind::Link,
                ..
            } => {
                self.links.remove(&(to, *from));
            }
            Signal::Exit { .. } => {}
            Signal::Monitor { from, monitor } => {
                self.watching.insert(*monitor, (*from, to));
            }
            Signal::Demonitor { monitor } => {
                self.watching.remove(monitor);
            }
            Signal::Down(down) => {
                self.watched.remove(&down.monitor);
            }
        }
    }

    /// Notes what `signal`, from a remote process to local process `to`,
    /// changes.
    pub(crate) fn received(&mut self, to: Pid, signal: &Signal) {
        match signal {
            Signal::Link { from } => {
                self.links.insert((*from, to));
            }
            Signal::Unlink { from }
            | Signal::Exit {
                from,
                kind: ExitKind::Link,
                ..
            } => {
                self.links.remove(&(*from, to));
            }
            Signal::Exit { .. } => {}
            Signal::Monitor { from, monitor } => {
                self.watched.insert(*monitor, (*from, to));
            }
            Signal::Demonitor { monitor } => {
                self.watched.remove(monitor);
            }
            Signal::Down(down) => {
                self.watching.remove(&down.monitor);
            }
        }
    }

    /// Whether `signal`, from `node` for local process `to`, fits the
    /// relations: a `Down` must answer a monitor a local process holds on
    /// the process that ended; a `Demonitor` must end a monitor a process
    /// of `node` holds on `to`. Anything else may come unasked.
    pub(crate) fn expects(&self, node: NodeId, to: Pid, signal: &Signal) -> bool {
        match signal {
            Signal::Down(down) => self.watching.get(&down.monitor) == Some(&(to, down.pid)),
            Signal::Demonitor { monitor } => self
                .watched
                .get(monitor)
                .is_some_and(|&(watcher, target)| target == to && watcher.node() == node),
            _ => true,
        }
    }

    /// Forgets every relation with a process of `node`, and returns the
    /// signals that end them locally: exits for links and `Down`s for
    /// monitors with `noconnection`, and demonitors for the monitors its
    /// processes held here. Each as (local process, signal).
    pub(crate) fn node_down(&mut self, node: NodeId) -> Vec<(Pid, Signal)> {
        let mut ends = Vec::new();
        let on = |pid: &Pid| pid.node() == node;
        let links: Vec<_> = self
            .links
            .iter()
            .filter(|(remote, _)| on(remote))
            .copied()
            .collect();
        for (remote, local) in links {
            self.links.remove(&(remote, local));
            let exit = Signal::Exit {
                from: remote,
                reason: ExitReason::NoConnection,
                kind: ExitKind::Link,
            };
            ends.push((local, exit));
        }
        self.watching.retain(|&monitor, &mut (watcher, target)| {
            if !on(&target) {
                return true;
            }
            let down = Down {
                monitor,
                pid: target,
                reason: ExitReason::NoConnection,
            };
            ends.push((watcher, Signal::Down(down)));
            false
        });
        self.watched.retain(|&monitor, &mut (watcher, target)| {
            if !on(&watcher) {
                return true;
            }
            ends.push((target, Signal::Demonitor { monitor }));
            false
        });
        ends
    }

    /// How many relations are held (for tests and leak checks).
    pub(crate) fn len(&self) -> usize {
        self.links.len() + self.watching.len() + self.watched.len()
    }
}

/// A signal on the wire: the target pid with the signal.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct WireSignal {
    to: u64,
    signal: WireSignalKind,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
enum WireSignalKind {
    Link {
        from: u64,
    },
    Unlink {
        from: u64,
    },
    Exit {
        from: u64,
        reason: WireReason,
        kind: u8,
    },
    Monitor {
        from: u64,
        monitor: u64,
    },
    Demonitor {
        monitor: u64,
    },
    Down {
        monitor: u64,
        pid: u64,
        reason: WireReason,
    },
}

/// An [`ExitReason`] on the wire.
#[derive(Archive, Serialize, Deserialize, Debug)]
enum WireReason {
    Normal,
    Shutdown,
    Killed,
    Panic(String),
    HeapLimit,
    NoProc,
    NoConnection,
    Error(String),
}

impl WireSignal {
    pub(crate) fn new(to: Pid, signal: &Signal) -> WireSignal {
        let signal = match signal {
            Signal::Link { from } => WireSignalKind::Link {
                from: from.to_bits(),
            },
            Signal::Unlink { from } => WireSignalKind::Unlink {
                from: from.to_bits(),
            },
            Signal::Exit { from, reason, kind } => WireSignalKind::Exit {
                from: from.to_bits(),
                reason: WireReason::from(reason),
                kind: match kind {
                    ExitKind::Link => 0,
                    ExitKind::Signal => 1,
                    ExitKind::Kill => 2,
                },
            },
            Signal::Monitor { from, monitor } => WireSignalKind::Monitor {
                from: from.to_bits(),
                monitor: monitor.to_bits(),
            },
            Signal::Demonitor { monitor } => WireSignalKind::Demonitor {
                monitor: monitor.to_bits(),
            },
            Signal::Down(down) => WireSignalKind::Down {
                monitor: down.monitor.to_bits(),
                pid: down.pid.to_bits(),
                reason: WireReason::from(&down.reason),
            },
        };
        WireSignal {
            to: to.to_bits(),
            signal,
        }
    }
}

/// Why a signal from a peer was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BadSignal {
    /// It names a target on another node than this one.
    NotForUs(Pid),
    /// Its sender (or the process whose end it reports) is not on the
    /// node it came from: a node may speak only for its own processes.
    Impersonation(Pid),
    /// An exit kind this build does not know.
    UnknownKind(u8),
}

impl ArchivedWireSignal {
    /// The target and the signal, if `node` (the sender's node) may send
    /// it to a process of `me`.
    pub(crate) fn decode(&self, node: NodeId, me: NodeId) -> Result<(Pid, Signal), BadSignal> {
        let pid = |bits: &rkyv::rend::u64_le| Pid::from_bits(bits.to_native());
        let to = pid(&self.to);
        if to.node() != me {
            return Err(BadSignal::NotForUs(to));
        }
        let theirs = |pid: Pid| {
            if pid.node() == node {
                Ok(pid)
            } else {
                Err(BadSignal::Impersonation(pid))
            }
        };
        let monitor = |bits: &rkyv::rend::u64_le| MonitorRef::from_bits(bits.to_native());
        let signal = match &self.signal {
            ArchivedWireSignalKind::Link { from } => Signal::Link {
                from: theirs(pid(from))?,
            },
            ArchivedWireSignalKind::Unlink { from } => Signal::Unlink {
                from: theirs(pid(from))?,
            },
            ArchivedWireSignalKind::Exit { from, reason, kind } => Signal::Exit {
                from: theirs(pid(from))?,
                reason: reason.reason(),
                kind: match kind {
                    0 => ExitKind::Link,
                    1 => ExitKind::Signal,
                    2 => ExitKind::Kill,
                    other => return Err(BadSignal::UnknownKind(*other)),
                },
            },
            ArchivedWireSignalKind::Monitor { from, monitor: m } => Signal::Monitor {
                from: theirs(pid(from))?,
                monitor: monitor(m),
            },
            ArchivedWireSignalKind::Demonitor { monitor: m } => Signal::Demonitor {
                monitor: monitor(m),
            },
            ArchivedWireSignalKind::Down {
                monitor: m,
                pid: ended,
                reason,
            } => Signal::Down(Down {
                monitor: monitor(m),
                pid: theirs(pid(ended))?,
                reason: reason.reason(),
            }),
        };
        Ok((to, signal))
    }
}

impl From<&ExitReason> for WireReason {
    fn from(reason: &ExitReason) -> WireReason {
        match reason {
            ExitReason::Normal => WireReason::Normal,
            ExitReason::Shutdown => WireReason::Shutdown,
            ExitReason::Killed => WireReason::Killed,
            ExitReason::Panic(message) => WireReason::Panic(message.to_string()),
            ExitReason::HeapLimit => WireReason::HeapLimit,
            ExitReason::NoProc => WireReason::NoProc,
            ExitReason::NoConnection => WireReason::NoConnection,
            ExitReason::Error(reason) => WireReason::Error(reason.to_string()),
            other => WireReason::Error(other.to_string()),
        }
    }
}

impl ArchivedWireReason {
    fn reason(&self) -> ExitReason {
        match self {
            ArchivedWireReason::Normal => ExitReason::Normal,
            ArchivedWireReason::Shutdown => ExitReason::Shutdown,
            ArchivedWireReason::Killed => ExitReason::Killed,
            ArchivedWireReason::Panic(message) => ExitReason::Panic(message.as_str().into()),
            ArchivedWireReason::HeapLimit => ExitReason::HeapLimit,
            ArchivedWireReason::NoProc => ExitReason::NoProc,
            ArchivedWireReason::NoConnection => ExitReason::NoConnection,
            ArchivedWireReason::Error(reason) => ExitReason::error(reason.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foundation_sched::ShardId;

    fn pid(node: u16, slot: u32) -> Pid {
        Pid::new(NodeId(node), ShardId(0), slot, 1)
    }

    #[test]
    fn a_node_going_down_ends_each_relation_with_it_once() {
        let mut relations = Relations::default();
        let (local, other, remote, elsewhere) = (pid(1, 1), pid(1, 2), pid(2, 1), pid(3, 1));
        let m = |n: u64| MonitorRef::from_bits(n);
        relations.sent(remote, &Signal::Link { from: local });
        relations.sent(
            remote,
            &Signal::Monitor {
                from: local,
                monitor: m(1),
            },
        );
        relations.received(
            other,
            &Signal::Monitor {
                from: remote,
                monitor: m(2),
            },
        );
        relations.received(other, &Signal::Link { from: remote });
        relations.sent(
            elsewhere,
            &Signal::Monitor {
                from: local,
                monitor: m(3),
            },
        );
        // A monitor already answered is not answered again.
        relations.sent(
            remote,
            &Signal::Monitor {
                from: other,
                monitor: m(4),
            },
        );
        let down = Down {
            monitor: m(4),
            pid: remote,
            reason: ExitReason::Normal,
        };
        relations.received(other, &Signal::Down(down));
        assert_eq!(relations.len(), 5);

        let mut ends = relations.node_down(NodeId(2));
        ends.sort_by_key(|(to, signal)| (*to, format!("{signal:?}")));
        let noconnection = |from| Signal::Exit {
            from,
            reason: ExitReason::NoConnection,
            kind: ExitKind::Link,
        };
        let lost = Signal::Down(Down {
            monitor: m(1),
            pid: remote,
            reason: ExitReason::NoConnection,
        });
        assert_eq!(
            ends,
            vec![
                (local, lost),
                (local, noconnection(remote)),
                (other, Signal::Demonitor { monitor: m(2) }),
                (other, noconnection(remote)),
            ]
        );
        assert_eq!(relations.len(), 1, "only node 3's monitor is left");
        assert!(relations.node_down(NodeId(2)).is_empty(), "once");
    }

    #[test]
    fn signals_round_trip_and_a_node_speaks_only_for_its_own() {
        let (local, remote) = (pid(1, 7), pid(2, 9));
        let signals = [
            Signal::Link { from: remote },
            Signal::Exit {
                from: remote,
                reason: ExitReason::error("why"),
                kind: ExitKind::Kill,
            },
            Signal::Monitor {
                from: remote,
                monitor: MonitorRef::from_bits(77),
            },
            Signal::Down(Down {
                monitor: MonitorRef::from_bits(78),
                pid: remote,
                reason: ExitReason::Panic("boom".into()),
            }),
        ];
        for signal in signals {
            let bytes =
                rkyv::to_bytes::<rkyv::rancor::Error>(&WireSignal::new(local, &signal)).unwrap();
            let archived = rkyv::access::<ArchivedWireSignal, rkyv::rancor::Error>(&bytes).unwrap();
            assert_eq!(
                archived.decode(NodeId(2), NodeId(1)),
                Ok((local, signal.clone()))
            );
            assert!(matches!(
                archived.decode(NodeId(3), NodeId(1)),
                Err(BadSignal::Impersonation(_))
            ));
            assert_eq!(
                archived.decode(NodeId(2), NodeId(4)),
                Err(BadSignal::NotForUs(local))
            );
        }
    }
}
