//! The runtime's seam for distribution: signals for processes on other
//! nodes go to the installed `Distribution`, or are answered with
//! `NoConnection` when there is none; signals handed in from another node
//! keep Erlang's guarantees (one `Down` per monitor).

mod common;

use std::sync::{Arc, Mutex};

use foundation::remote::{Distribution, ExitKind, Signal};
use foundation::{Context, Down, Envelope, ExitReason, NodeId, Pid, Runtime, ShardId};

/// A distribution that keeps what it is asked to carry.
#[derive(Default)]
struct Recorder(Mutex<Vec<(Pid, Signal)>>);

impl Distribution for Recorder {
    fn signal(&self, to: Pid, signal: Signal) {
        self.0.lock().unwrap().push((to, signal));
    }
}

fn elsewhere() -> Pid {
    Pid::new(NodeId(60_001), ShardId(0), 5, 1)
}

#[test]
fn without_distribution_another_node_is_unreachable() {
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let (down, exit) = runtime
        .block_on(|cx: Context<()>| async move {
            cx.trap_exit(true);
            let monitor = cx.monitor(elsewhere());
            let down = cx.recv().await;
            cx.link(elsewhere());
            let exit = cx.recv().await;
            (matches!(down, Envelope::Down(d) if d.monitor == monitor && d.reason == ExitReason::NoConnection),
             matches!(exit, Envelope::Exit(e) if e.from == elsewhere() && e.reason == ExitReason::NoConnection))
        })
        .unwrap();
    assert!(down, "the monitor is answered with noconnection");
    assert!(exit, "the link is answered with noconnection");
}

#[test]
fn signals_for_another_node_go_to_the_distribution_and_downs_come_back_once() {
    let runtime = Runtime::builder().shards(2).build().unwrap();
    let recorder = Arc::new(Recorder::default());
    assert!(runtime.set_distribution(recorder.clone()));
    assert!(
        !runtime.set_distribution(recorder.clone()),
        "installed once"
    );
    let handle = runtime.handle().clone();
    let carried = recorder.clone();
    let seen = runtime
        .block_on(move |cx: Context<()>| async move {
            let monitor = cx.monitor(elsewhere());
            cx.link(elsewhere());
            cx.exit(elsewhere(), ExitReason::error("go"));
            let expected = vec![
                (
                    elsewhere(),
                    Signal::Monitor {
                        from: cx.pid(),
                        monitor,
                    },
                ),
                (elsewhere(), Signal::Link { from: cx.pid() }),
                (
                    elsewhere(),
                    Signal::Exit {
                        from: cx.pid(),
                        reason: ExitReason::error("go"),
                        kind: ExitKind::Signal,
                    },
                ),
            ];
            assert_eq!(*carried.0.lock().unwrap(), expected);
            // The other node answers twice (say, noconnection, then the
            // real reason after a partition heals): one Down arrives.
            for reason in [ExitReason::NoConnection, ExitReason::Killed] {
                let down = Down {
                    monitor,
                    pid: elsewhere(),
                    reason,
                };
                handle.deliver_signal(cx.pid(), Signal::Down(down));
            }
            let first = cx.recv().await;
            let second = cx.recv_timeout(std::time::Duration::from_millis(50)).await;
            (first, second.is_none())
        })
        .unwrap();
    assert!(matches!(seen.0, Envelope::Down(d) if d.reason == ExitReason::NoConnection));
    assert!(seen.1, "no second Down");
}

#[test]
fn a_signal_from_afar_for_no_process_is_answered_through_the_distribution() {
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let recorder = Arc::new(Recorder::default());
    runtime.set_distribution(recorder.clone());
    let me = runtime.node();
    let monitor = runtime
        .block_on(|cx: Context<()>| async move { cx.monitor(cx.pid()) })
        .unwrap();
    for missing in [
        Pid::new(me, ShardId(0), 999, 3),
        Pid::new(me, ShardId(200), 1, 1),
    ] {
        runtime.deliver_signal(
            missing,
            Signal::Monitor {
                from: elsewhere(),
                monitor,
            },
        );
    }
    common::eventually("both monitors are answered", || {
        recorder.0.lock().unwrap().len() == 2
    });
    for (to, signal) in recorder.0.lock().unwrap().iter() {
        assert_eq!(*to, elsewhere());
        assert!(
            matches!(signal, Signal::Down(d) if d.reason == ExitReason::NoProc && d.monitor == monitor)
        );
    }
}
