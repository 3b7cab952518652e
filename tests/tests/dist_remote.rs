//! Messages, calls and spawns between nodes (in this OS process, over the
//! real transport): by pid and by name, a call answered, a call whose
//! server ends or whose node dies before answering, and remote spawn
//! allowed, unknown, denied and with bad arguments.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{eventually, PATIENCE};
use foundation::dist::{self, Call, CallError, SpawnError};
use foundation::node::{Node, NodeConfig};
use foundation::transport::Remote;
use foundation::{Context, Envelope, ExitReason, NodeId, Pid, ShardId};

fn config(id: u16) -> NodeConfig {
    common::cluster::config(id, "remote-tests")
}

/// Two nodes, joined.
fn pair(a: NodeConfig, b: NodeConfig) -> (Node, Node) {
    let mut nodes = common::cluster::cluster(vec![a, b]);
    let b = nodes.pop().expect("two nodes");
    (nodes.pop().expect("two nodes"), b)
}

/// Runs `body` as a process on `node` and returns its result.
fn run<T, F, Fut>(node: &Node, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce(Context<()>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    node.runtime().block_on(body).expect("the process returns")
}

/// A process on `node` that takes `Remote<String>` and reports each with
/// its sender.
fn listener(node: &Node) -> (Pid, mpsc::Receiver<(String, Pid)>) {
    let (tx, rx) = mpsc::channel();
    let addr = node
        .runtime()
        .spawn(move |cx: Context<Remote<String>>| async move {
            while let Envelope::Msg(message) = cx.recv().await {
                let _ = tx.send((message.as_str().to_owned(), message.source()));
            }
        })
        .unwrap();
    node.transport().register(&addr);
    (addr.pid(), rx)
}

#[test]
fn messages_reach_a_process_by_pid_and_by_name_from_any_node() {
    let (a, b) = pair(config(301), config(302));
    let (pid, heard) = listener(&b);
    let named = b
        .runtime()
        .block_on(move |cx: Context<()>| async move {
            let addr = foundation::Addr::<Remote<String>>::from_pid(pid);
            dist::register(&cx, "greeter", &addr)
        })
        .unwrap();
    named.expect("the name is free");
    let from_a = run(&a, move |cx| async move {
        dist::send(&cx, pid, &String::from("by pid")).await.unwrap();
        dist::send_named(&cx, NodeId(302), "greeter", &String::from("by name"))
            .await
            .unwrap();
        // A name nobody holds: dropped, as Erlang drops it.
        dist::send_named(&cx, NodeId(302), "nobody", &String::from("lost"))
            .await
            .unwrap();
        cx.pid()
    });
    let from_b = run(&b, move |cx| async move {
        dist::send(&cx, pid, &String::from("from home"))
            .await
            .unwrap();
        cx.pid()
    });
    let mut got: Vec<_> = (0..3)
        .map(|_| heard.recv_timeout(PATIENCE).unwrap())
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("by name".to_owned(), from_a),
            ("by pid".to_owned(), from_a),
            ("from home".to_owned(), from_b),
        ]
    );
    assert!(heard.recv_timeout(Duration::from_millis(200)).is_err());
    eventually("the lost message is counted", || {
        b.transport().stats().undeliverable == 1
    });
    b.stop();
    a.stop();
}

/// A server on `node` that doubles what it is asked, ends with an error on
/// 13, and never answers 7.
fn doubler(node: &Node) -> Pid {
    let addr = node
        .runtime()
        .spawn(|cx: Context<Remote<Call<u64>>>| async move {
            while let Envelope::Msg(call) = cx.recv().await {
                match call.request.to_native() {
                    13 => return Err(ExitReason::error("unlucky")),
                    7 => continue,
                    n => {
                        dist::reply(&cx, &call, &(n * 2)).await.unwrap();
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    node.transport().register(&addr);
    addr.pid()
}

#[test]
fn a_call_is_answered_or_fails_with_the_servers_reason() {
    let (a, b) = pair(config(311), config(312));
    let server = doubler(&b);
    let local_server = doubler(&a);
    let nobody = Pid::new(NodeId(312), ShardId(0), 31_337, 2);
    let results = run(&a, move |cx| async move {
        let patience = Duration::from_secs(5);
        let answered: Result<u64, _> = dist::call(&cx, server, 21u64, patience).await;
        let at_home: Result<u64, _> = dist::call(&cx, local_server, 4u64, patience).await;
        let ignored: Result<u64, _> =
            dist::call(&cx, server, 7u64, Duration::from_millis(100)).await;
        let crashed: Result<u64, _> = dist::call(&cx, server, 13u64, patience).await;
        let gone: Result<u64, _> = dist::call(&cx, server, 1u64, patience).await;
        let never: Result<u64, _> = dist::call(&cx, nobody, 1u64, patience).await;
        let stray = cx.try_recv().is_none();
        (answered, at_home, ignored, crashed, gone, never, stray)
    });
    assert_eq!(results.0, Ok(42));
    assert_eq!(results.1, Ok(8));
    assert_eq!(results.2, Err(CallError::Timeout));
    assert_eq!(
        results.3,
        Err(CallError::Exited(ExitReason::error("unlucky")))
    );
    assert_eq!(results.4, Err(CallError::Exited(ExitReason::NoProc)));
    assert_eq!(results.5, Err(CallError::Exited(ExitReason::NoProc)));
    assert!(results.6, "nothing is left in the caller's mailbox");
    assert_eq!(a.dist().pending(), 0);
    eventually("no relation is left", || a.dist().relations() == 0);
    b.stop();
    a.stop();
}

#[test]
fn a_call_to_a_node_that_dies_mid_call_fails_with_noconnection() {
    let (a, b) = pair(config(321), config(322));
    let server = doubler(&b);
    let (asked_tx, asked) = mpsc::channel();
    let (result_tx, result) = mpsc::channel();
    a.runtime()
        .spawn(move |cx: Context<()>| async move {
            asked_tx.send(()).unwrap();
            // 7 is never answered: the server's node dies first.
            let outcome: Result<u64, _> =
                dist::call(&cx, server, 7u64, Duration::from_secs(30)).await;
            result_tx.send(outcome).unwrap();
        })
        .unwrap();
    asked.recv_timeout(PATIENCE).unwrap();
    eventually("the call waits", || a.dist().pending() == 1);
    b.crash();
    let outcome = result.recv_timeout(PATIENCE).expect("the call ends");
    assert_eq!(outcome, Err(CallError::Exited(ExitReason::NoConnection)));
    assert_eq!(a.dist().pending(), 0);
    a.stop();
}

/// Arguments of the `reporter` kind: where to report, and what.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone)]
struct Report {
    to: u64,
    text: String,
}

#[test]
fn remote_spawn_is_allowed_refused_or_failed_with_a_typed_error() {
    let (a, b) = pair(config(331), config(332).spawn_allow(["reporter"]));
    b.dist()
        .factory()
        .register("reporter", |cx: Context<()>, report: Report| async move {
            let to = Pid::from_bits(report.to);
            dist::send(&cx, to, &report.text).await.unwrap();
        });
    b.dist()
        .factory()
        .register("forbidden", |_: Context<()>, _: u32| async {});
    let (home, heard) = listener(&a);
    let outcomes = run(&a, move |cx| async move {
        let patience = Duration::from_secs(5);
        let report = Report {
            to: home.to_bits(),
            text: "spawned far away".into(),
        };
        let node = NodeId(332);
        (
            dist::spawn(&cx, node, "reporter", &report, patience).await,
            dist::spawn(&cx, node, "nothing", &report, patience).await,
            dist::spawn(&cx, node, "forbidden", &3u32, patience).await,
            dist::spawn(&cx, node, "reporter", &3u32, patience).await,
            dist::spawn(&cx, NodeId(339), "reporter", &report, patience).await,
        )
    });
    let spawned = outcomes.0.expect("the reporter is spawned");
    assert_eq!(spawned.node(), NodeId(332));
    let (text, from) = heard.recv_timeout(PATIENCE).unwrap();
    assert_eq!((text.as_str(), from), ("spawned far away", spawned));
    assert_eq!(outcomes.1, Err(SpawnError::Unknown("nothing".into())));
    assert_eq!(outcomes.2, Err(SpawnError::Denied("forbidden".into())));
    assert!(
        matches!(outcomes.3, Err(SpawnError::BadArguments(_))),
        "{:?}",
        outcomes.3
    );
    assert_eq!(outcomes.4, Err(SpawnError::NodeDown));
    assert_eq!(a.dist().pending(), 0);
    b.stop();
    a.stop();
}

/// A process spawned linked on another node is linked before it runs:
/// its end reaches the trapping caller, and the caller's end takes it
/// down.
#[test]
fn a_process_spawned_linked_is_linked_both_ways() {
    let (a, b) = pair(config(341), config(342));
    b.dist()
        .factory()
        .register("crasher", |_: Context<()>, (): ()| async move {
            Err::<(), _>(ExitReason::error("bye"))
        });
    b.dist()
        .factory()
        .register("waiter", |cx: Context<()>, (): ()| async move {
            while let Envelope::Msg(()) = cx.recv().await {}
        });
    let (seen_tx, seen) = mpsc::channel();
    a.runtime()
        .spawn(move |cx: Context<()>| async move {
            cx.trap_exit(true);
            let patience = Duration::from_secs(5);
            let crasher = dist::spawn_link(&cx, NodeId(342), "crasher", &(), patience)
                .await
                .expect("spawned");
            if let Envelope::Exit(exit) = cx.recv().await {
                seen_tx.send((exit.from == crasher, exit.reason)).unwrap();
            }
            // This process's end must take a linked waiter down with it.
            let waiter = dist::spawn_link(&cx, NodeId(342), "waiter", &(), patience)
                .await
                .expect("spawned");
            let watching = cx.spawn(move |cx: Context<()>| async move {
                cx.monitor(waiter);
                if let Envelope::Down(down) = cx.recv().await {
                    let _ = seen_tx.send((true, down.reason));
                }
            });
            let _ = watching;
            cx.sleep(Duration::from_millis(50)).await;
            Err::<(), _>(ExitReason::error("caller gone"))
        })
        .unwrap();
    assert_eq!(
        seen.recv_timeout(PATIENCE).unwrap(),
        (true, ExitReason::error("bye"))
    );
    assert_eq!(
        seen.recv_timeout(PATIENCE).unwrap(),
        (true, ExitReason::error("caller gone"))
    );
    b.stop();
    a.stop();
}
