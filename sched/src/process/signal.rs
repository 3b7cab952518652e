//! Links, monitors and exit signals, with Erlang's semantics (see the
//! `exit` module docs for the rules).
//!
//! A signal to a process on the same shard is handled at once; one to
//! another shard travels in that shard's inbound ring, in order with the
//! messages from the same sender. Handling a signal never ends a process on
//! the spot: it marks the process as exiting and queues it, and the shard
//! tears it down between polls. So a chain of linked processes dies one
//! step per teardown, with no recursion however long the chain.

use crate::exit::{Down, Exit, ExitReason, MonitorRef};
use crate::pid::Pid;
use crate::process::Process;
use crate::scheduler::Shard;

/// A signal between processes: what links, monitors and exit signals are
/// made of. Distribution carries these between nodes
/// ([`remote`](crate::remote)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `from` linked to the receiver.
    Link {
        /// The linking process.
        from: Pid,
    },
    /// `from` removed its link to the receiver.
    Unlink {
        /// The unlinking process.
        from: Pid,
    },
    /// An exit signal from `from`.
    Exit {
        /// The sender: the linked process that ended, or the process
        /// that called `exit` or `kill`.
        from: Pid,
        /// Why.
        reason: ExitReason,
        /// How it was sent.
        kind: ExitKind,
    },
    /// `from` monitors the receiver under `monitor`.
    Monitor {
        /// The watching process.
        from: Pid,
        /// The monitor.
        monitor: MonitorRef,
    },
    /// The monitor `monitor` on the receiver is gone.
    Demonitor {
        /// The monitor.
        monitor: MonitorRef,
    },
    /// A process the receiver monitors has ended.
    Down(Down),
}

impl Signal {
    /// What this signal, aimed at `to`, is answered with when `to` is not
    /// there or cannot be reached (`reason`): a link with an exit signal,
    /// a monitor with a `Down`, each for its sender, as `(sender, answer)`.
    /// Other signals get no answer.
    pub fn answer_absent(self, to: Pid, reason: ExitReason) -> Option<(Pid, Signal)> {
        match self {
            Signal::Link { from } => Some((
                from,
                Signal::Exit {
                    from: to,
                    reason,
                    kind: ExitKind::Link,
                },
            )),
            Signal::Monitor { from, monitor } => Some((
                from,
                Signal::Down(Down {
                    monitor,
                    pid: to,
                    reason,
                }),
            )),
            Signal::Unlink { .. }
            | Signal::Exit { .. }
            | Signal::Demonitor { .. }
            | Signal::Down(_) => None,
        }
    }
}

/// How an exit signal was sent, which decides how it may be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// A linked process ended; ignored if the link is already gone.
    Link,
    /// Sent with `exit/2`.
    Signal,
    /// Sent with `kill`: untrappable.
    Kill,
}

impl Shard {
    /// Applies `signal` to the process `to`, which lives on this shard.
    pub(crate) fn handle_signal(&self, to: Pid, signal: Signal) {
        let mut table = self.table.borrow_mut();
        let Some(process) = table.get_mut(to.slot(), to.generation()) else {
            drop(table);
            self.answer_for_missing(to, signal);
            return;
        };
        let priority = process.priority;
        let runnable = match signal {
            Signal::Link { from } => {
                process.relations().links.insert(from);
                false
            }
            Signal::Unlink { from } => {
                process.relations().links.remove(&from);
                false
            }
            Signal::Exit { from, reason, kind } => self.receive_exit(process, from, reason, kind),
            Signal::Monitor { from, monitor } => {
                process.relations().monitored_by.insert(monitor, from);
                false
            }
            Signal::Demonitor { monitor } => {
                process.relations().monitored_by.remove(&monitor);
                false
            }
            Signal::Down(down) => {
                let planted_loss = || {
                    self.shared
                        .simulated
                        .as_ref()
                        .is_some_and(|simulated| simulated.loses_down())
                };
                if process.relations().monitors.remove(&down.monitor).is_none() || planted_loss() {
                    false
                } else {
                    process.cell.push_down(down);
                    self.after_delivery(process)
                }
            }
        };
        if runnable {
            self.enqueue(to.slot(), priority);
        }
    }

    /// Erlang's rules for an exit signal reaching a live process. Returns
    /// whether the process must be queued.
    fn receive_exit(
        &self,
        process: &mut Process,
        from: Pid,
        reason: ExitReason,
        kind: ExitKind,
    ) -> bool {
        if kind == ExitKind::Link {
            let linked = process
                .relations
                .as_mut()
                .is_some_and(|relations| relations.links.remove(&from));
            if !linked {
                return false;
            }
        }
        if kind == ExitKind::Kill {
            return self.mark_exit(process, ExitReason::Killed);
        }
        if process.trap_exit {
            process.cell.push_exit(Exit { from, reason });
            return self.after_delivery(process);
        }
        if reason.is_normal() && from != process.pid {
            return false;
        }
        self.mark_exit(process, reason)
    }

    /// A link or monitor aimed at a process that is gone answers with
    /// `NoProc`; other signals to it are dropped.
    pub(crate) fn answer_for_missing(&self, to: Pid, signal: Signal) {
        self.answer_absent(to, signal, ExitReason::NoProc);
    }

    /// A link or monitor aimed at a process that cannot be reached answers
    /// with `reason`; other signals to it are dropped.
    pub(crate) fn answer_absent(&self, to: Pid, signal: Signal, reason: ExitReason) {
        if let Some((sender, answer)) = signal.answer_absent(to, reason) {
            self.send_signal(sender, answer);
        }
    }

    /// Marks `process` as exiting with `reason`. The first reason wins,
    /// except that a kill overrides. Returns whether it must be queued.
    pub(crate) fn mark_exit(&self, process: &mut Process, reason: ExitReason) -> bool {
        match &process.exit {
            None => process.exit = Some(reason),
            Some(_) if reason == ExitReason::Killed => process.exit = Some(reason),
            Some(_) => {}
        }
        if process.running {
            self.set_running_exiting();
        }
        self.wake_process(process)
    }

    /// After an envelope went into `process`'s mailbox: checks the heap
    /// limit and wakes it. Returns whether it must be queued.
    #[inline]
    pub(crate) fn after_delivery(&self, process: &mut Process) -> bool {
        if process.heap_limited && process.cell.over_heap_limit() {
            return self.mark_exit(process, ExitReason::HeapLimit);
        }
        self.wake_process(process)
    }

    /// Records on `me` (a live process of this shard) a link to `other`.
    pub(crate) fn add_link(&self, me: Pid, other: Pid) {
        self.with_process(me, |process| {
            process.relations().links.insert(other);
        });
    }

    /// Removes from `me` its link to `other`.
    pub(crate) fn remove_link(&self, me: Pid, other: Pid) {
        self.with_process(me, |process| {
            process.relations().links.remove(&other);
        });
    }

    /// Records on `me` that it monitors `target` under `monitor`.
    pub(crate) fn add_monitor(&self, me: Pid, monitor: MonitorRef, target: Pid) {
        self.with_process(me, |process| {
            process.relations().monitors.insert(monitor, target);
        });
    }

    /// Points `me`'s monitor `monitor` at `target`, once its pid is known.
    pub(crate) fn retarget_monitor(&self, me: Pid, monitor: MonitorRef, target: Pid) {
        self.with_process(me, |process| {
            if let Some(entry) = process.relations().monitors.get_mut(&monitor) {
                *entry = target;
            }
        });
    }

    /// Removes `me`'s monitor `monitor`, returning the monitored pid if it
    /// was still active.
    pub(crate) fn forget_monitor(&self, me: Pid, monitor: MonitorRef) -> Option<Pid> {
        self.with_process(me, |process| process.relations().monitors.remove(&monitor))
            .flatten()
    }

    /// Attaches `hook` to `pid`, wherever it runs in this runtime; runs it
    /// at once with `NoProc` if the process does not exist.
    pub(crate) fn on_exit(&self, pid: Pid, hook: crate::process::ExitHook) {
        if pid.node() != self.node || usize::from(pid.shard().0) >= self.shared.shards.len() {
            hook(&ExitReason::NoProc);
        } else if pid.shard() == self.id {
            let mut hook = Some(hook);
            self.with_process(pid, |process| {
                if let Some(hook) = hook.take() {
                    process.relations().exit_hooks.push(hook);
                }
            });
            if let Some(hook) = hook {
                hook(&ExitReason::NoProc);
            }
        } else {
            self.push_run(pid.shard(), Box::new(move |shard| shard.on_exit(pid, hook)));
        }
    }

    /// Sets `me`'s `trap_exit`, returning the previous value.
    pub(crate) fn set_trap_exit(&self, me: Pid, trap: bool) -> bool {
        self.with_process(me, |process| {
            std::mem::replace(&mut process.trap_exit, trap)
        })
        .unwrap_or(false)
    }

    /// Sends the exit signals and `Down`s of a process that ended, and
    /// withdraws the monitors it held.
    pub(crate) fn announce_exit(
        &self,
        pid: Pid,
        reason: &ExitReason,
        relations: crate::process::Relations,
    ) {
        for hook in relations.exit_hooks {
            hook(reason);
        }
        for linked in relations.links {
            self.send_signal(
                linked,
                Signal::Exit {
                    from: pid,
                    reason: reason.clone(),
                    kind: ExitKind::Link,
                },
            );
        }
        for (monitor, watcher) in relations.monitored_by {
            self.send_signal(
                watcher,
                Signal::Down(Down {
                    monitor,
                    pid,
                    reason: reason.clone(),
                }),
            );
        }
        for (monitor, target) in relations.monitors {
            if target != pid {
                self.send_signal(target, Signal::Demonitor { monitor });
            }
        }
    }
}
