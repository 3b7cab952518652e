//! Servers: call and cast, and how calls fail (`foundation::server`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foundation::server::{CallError, Server, ServerContext, ServerRef};
use foundation::{Context, Envelope, ExitReason, Placement, Runtime, ShardId, SpawnOptions};

const LONG: Duration = Duration::from_secs(10);

/// Answers calls; a call of `Stall` never answers, `Crash` panics,
/// `Stop` stops the server with an error, `Sleep` answers late.
struct Echo {
    terminated: Arc<AtomicBool>,
}

#[derive(Debug)]
enum Ask {
    Echo(u64),
    Stall,
    Crash,
    Stop,
    Sleep(Duration),
}

impl Server for Echo {
    type Call = Ask;
    type Reply = u64;
    type Cast = u64;
    type Info = ();

    async fn handle_call(
        &mut self,
        request: Ask,
        cx: &ServerContext<Self>,
    ) -> Result<u64, ExitReason> {
        match request {
            Ask::Echo(n) => Ok(n),
            Ask::Stall => std::future::pending().await,
            Ask::Crash => panic!("echo crashed"),
            Ask::Stop => Err(ExitReason::error("asked to stop")),
            Ask::Sleep(duration) => {
                cx.sleep(duration).await;
                Ok(0)
            }
        }
    }

    async fn terminate(&mut self, _: &ExitReason, _: &ServerContext<Self>) {
        self.terminated.store(true, Ordering::SeqCst);
    }
}

fn echo() -> (Echo, Arc<AtomicBool>) {
    let terminated = Arc::new(AtomicBool::new(false));
    (
        Echo {
            terminated: terminated.clone(),
        },
        terminated,
    )
}

fn runtime() -> Runtime {
    Runtime::builder().shards(2).build().unwrap()
}

#[test]
fn a_call_returns_the_answer_and_casts_arrive_in_order_with_calls() {
    /// Sums casts; a call answers the sum so far.
    struct Sum(u64);
    impl Server for Sum {
        type Call = ();
        type Reply = u64;
        type Cast = u64;
        type Info = ();
        async fn handle_call(&mut self, _: (), _: &ServerContext<Self>) -> Result<u64, ExitReason> {
            Ok(self.0)
        }
        async fn handle_cast(&mut self, n: u64, _: &ServerContext<Self>) -> Result<(), ExitReason> {
            self.0 += n;
            Ok(())
        }
    }
    let runtime = runtime();
    let sums = runtime
        .block_on(|cx: Context<()>| async move {
            let sum = ServerRef::start(&cx, Sum(0));
            let mut seen = Vec::new();
            for n in 1..=10 {
                sum.cast(&cx, n);
                seen.push(sum.call(&cx, (), LONG).await.unwrap());
            }
            seen
        })
        .unwrap();
    assert_eq!(sums, vec![1, 3, 6, 10, 15, 21, 28, 36, 45, 55]);
}

#[test]
fn a_call_to_a_server_on_another_shard_is_answered() {
    let runtime = runtime();
    let answer = runtime
        .block_on(|cx: Context<()>| async move {
            let other = ShardId(1 - cx.shard().0);
            let (server, _) = echo();
            let spawned = cx
                .spawn_with(
                    SpawnOptions::new().placement(Placement::Shard(other)),
                    move |cx| foundation::server::serve(server, cx),
                )
                .await
                .unwrap();
            let echo = ServerRef::<Echo>::from_addr(spawned.addr);
            echo.call(&cx, Ask::Echo(7), LONG).await
        })
        .unwrap();
    assert_eq!(answer, Ok(7));
}

#[test]
fn a_call_to_a_dead_server_fails_at_once_with_noproc() {
    let runtime = runtime();
    let outcome = runtime
        .block_on(|cx: Context<()>| async move {
            let (server, _) = echo();
            let echo = ServerRef::start(&cx, server);
            cx.kill(echo.pid());
            // Wait until it is gone, then call: the monitor answers NoProc,
            // long before the (long) timeout.
            let monitor = cx.monitor(echo.pid());
            cx.recv_match(|e| matches!(e, Envelope::Down(d) if d.monitor == monitor))
                .await;
            echo.call(&cx, Ask::Echo(1), LONG).await
        })
        .unwrap();
    assert_eq!(outcome, Err(CallError::Exited(ExitReason::NoProc)));
}

#[test]
fn a_server_that_dies_mid_call_fails_the_call_with_its_reason() {
    let runtime = runtime();
    let (crashed, stopped) = runtime
        .block_on(|cx: Context<()>| async move {
            let (server, _) = echo();
            let crashed = ServerRef::start(&cx, server)
                .call(&cx, Ask::Crash, LONG)
                .await;
            let (server, _) = echo();
            let stalled = ServerRef::start(&cx, server);
            // A third process ends the server while the call waits for an
            // answer that will never come.
            let target = stalled.pid();
            cx.spawn(move |killer: Context<()>| async move {
                killer.sleep(Duration::from_millis(20)).await;
                killer.exit(target, ExitReason::error("cut short"));
            });
            let stopped = stalled.call(&cx, Ask::Stall, LONG).await;
            (crashed, stopped)
        })
        .unwrap();
    assert_eq!(
        crashed,
        Err(CallError::Exited(ExitReason::Panic("echo crashed".into())))
    );
    assert_eq!(
        stopped,
        Err(CallError::Exited(ExitReason::error("cut short")))
    );
}

#[test]
fn a_callback_error_stops_the_server_after_terminate() {
    let runtime = runtime();
    let (server, terminated) = echo();
    let outcome = runtime
        .block_on(move |cx: Context<()>| async move {
            let echo = ServerRef::start(&cx, server);
            echo.call(&cx, Ask::Stop, LONG).await
        })
        .unwrap();
    assert_eq!(
        outcome,
        Err(CallError::Exited(ExitReason::error("asked to stop")))
    );
    assert!(
        terminated.load(Ordering::SeqCst),
        "terminate ran before the end"
    );
}

#[test]
fn a_timed_out_call_leaves_nothing_in_the_callers_mailbox() {
    let runtime = runtime();
    let (outcome, leftover, still_works) = runtime
        .block_on(|cx: Context<u64>| async move {
            let (server, _) = echo();
            let echo = ServerRef::start(&cx, server);
            let outcome = echo
                .call(
                    &cx,
                    Ask::Sleep(Duration::from_millis(50)),
                    Duration::from_millis(1),
                )
                .await;
            // Let the late answer come and go, then look at the mailbox.
            cx.sleep(Duration::from_millis(100)).await;
            let leftover = cx.try_recv().map(|e| format!("{e:?}"));
            let still_works = echo.call(&cx, Ask::Echo(3), LONG).await;
            (outcome, leftover, still_works)
        })
        .unwrap();
    assert_eq!(outcome, Err(CallError::Timeout));
    assert_eq!(leftover, None);
    assert_eq!(still_works, Ok(3));
}

#[test]
fn a_successful_call_leaves_no_down_behind_even_if_the_server_then_dies() {
    let runtime = runtime();
    let leftover = runtime
        .block_on(|cx: Context<u64>| async move {
            let (server, _) = echo();
            let echo = ServerRef::start(&cx, server);
            assert_eq!(echo.call(&cx, Ask::Echo(1), LONG).await, Ok(1));
            cx.kill(echo.pid());
            cx.sleep(Duration::from_millis(20)).await;
            cx.try_recv().map(|e| format!("{e:?}"))
        })
        .unwrap();
    assert_eq!(leftover, None);
}
