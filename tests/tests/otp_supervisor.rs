//! Supervisors (`foundation::supervision`), checked against OTP's documented
//! `supervisor` behaviour (supervisor(3) and the *Supervisor Behaviour*
//! design principles): restart strategies, restart types, restart
//! intensity and escalation, ordered shutdown, nested trees, child queries
//! and dynamic children.
//!
//! Every change a test provokes is observed by asking the supervisor again
//! (`which_children`) or by a monitor, within a bound: nothing here assumes
//! that a restart is immediate, and nothing asserts how long one took.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{down_reason, exit_signal, PATIENCE};
use foundation::supervision::{
    ChildInfo, ChildKind, ChildSpec, Counts, Restart, Shutdown, Strategy, SupervisorError,
    SupervisorRef, SupervisorSpec, INTENSITY_EXCEEDED,
};
use foundation::{Addr, Context, Envelope, ExitReason, Pid, Runtime};

/// A restart budget no test exhausts by accident: the tests that are not
/// about intensity use it, so that OTP's default (1 in 5 s) does not end a
/// supervisor that a test crashes more than once.
const ROOMY: (u32, Duration) = (10, Duration::from_secs(60));

// ---- strategies ------------------------------------------------------------

#[test]
fn one_for_one_restarts_only_the_child_that_ended() {
    let (before, after) = run(|cx: Context<()>| async move {
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::worker("1", idle))
            .child(ChildSpec::worker("2", idle))
            .child(ChildSpec::worker("3", idle))
            .start_link(&cx);
        let before = which_children(&cx, &supervisor).await;
        cx.exit(pid_of(&before, "2"), ExitReason::error("crash"));
        let after = replaced(&cx, &supervisor, "2", pid_of(&before, "2")).await;
        (before, after)
    });
    assert_eq!(ids(&after), ["1", "2", "3"], "start order is kept");
    assert_ne!(pid_of(&after, "2"), pid_of(&before, "2"));
    assert_eq!(pid_of(&after, "1"), pid_of(&before, "1"), "1 kept its pid");
    assert_eq!(pid_of(&after, "3"), pid_of(&before, "3"), "3 kept its pid");
}

#[test]
fn one_for_all_stops_the_others_with_shutdown_and_restarts_all() {
    let (before, after, reasons) = run(|cx: Context<()>| async move {
        let supervisor = SupervisorSpec::new(Strategy::OneForAll)
            .child(ChildSpec::worker("1", idle))
            .child(ChildSpec::worker("2", idle))
            .child(ChildSpec::worker("3", idle))
            .start_link(&cx);
        let before = which_children(&cx, &supervisor).await;
        let monitors = ["1", "2", "3"].map(|id| cx.monitor(pid_of(&before, id)));
        cx.kill(pid_of(&before, "2"));
        let after = replaced(&cx, &supervisor, "2", pid_of(&before, "2")).await;
        let mut reasons = Vec::new();
        for monitor in monitors {
            reasons.push(down_reason(&cx, monitor).await);
        }
        (before, after, reasons)
    });
    assert_eq!(ids(&after), ["1", "2", "3"], "start order is kept");
    for id in ["1", "2", "3"] {
        assert_ne!(pid_of(&after, id), pid_of(&before, id), "{id} restarted");
    }
    assert_eq!(
        reasons,
        [
            ExitReason::Shutdown,
            ExitReason::Killed,
            ExitReason::Shutdown
        ],
        "the siblings of the killed child were stopped with Shutdown"
    );
}

#[test]
fn rest_for_one_restarts_the_child_and_those_started_after_it() {
    let (before, after, third) = run(|cx: Context<()>| async move {
        let supervisor = SupervisorSpec::new(Strategy::RestForOne)
            .child(ChildSpec::worker("1", idle))
            .child(ChildSpec::worker("2", idle))
            .child(ChildSpec::worker("3", idle))
            .start_link(&cx);
        let before = which_children(&cx, &supervisor).await;
        let third = cx.monitor(pid_of(&before, "3"));
        cx.exit(pid_of(&before, "2"), ExitReason::error("crash"));
        let after = replaced(&cx, &supervisor, "2", pid_of(&before, "2")).await;
        (before, after, down_reason(&cx, third).await)
    });
    assert_eq!(ids(&after), ["1", "2", "3"], "start order is kept");
    assert_eq!(pid_of(&after, "1"), pid_of(&before, "1"), "1 kept its pid");
    assert_ne!(pid_of(&after, "2"), pid_of(&before, "2"), "2 restarted");
    assert_ne!(pid_of(&after, "3"), pid_of(&before, "3"), "3 restarted");
    assert_eq!(third, ExitReason::Shutdown, "3 was stopped with Shutdown");
}

// ---- restart types ---------------------------------------------------------

#[test]
fn a_permanent_child_restarts_even_after_a_normal_exit() {
    let (ended, before, after) = run(|cx: Context<()>| async move {
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::worker("permanent", obedient))
            .start_link(&cx);
        let before = pid_of(&which_children(&cx, &supervisor).await, "permanent");
        let monitor = cx.monitor(before);
        trapping(&cx, before).await;
        cx.exit(before, ExitReason::Normal);
        let ended = down_reason(&cx, monitor).await;
        let after = replaced(&cx, &supervisor, "permanent", before).await;
        (ended, before, pid_of(&after, "permanent"))
    });
    assert_eq!(ended, ExitReason::Normal, "the child ended normally");
    assert_ne!(after, before, "and was restarted");
}

#[test]
fn a_transient_child_restarts_only_after_an_abnormal_exit() {
    let (crashed, returned, shut_down, counts) = run(|cx: Context<()>| async move {
        let (max, period) = ROOMY;
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(max, period)
            .child(ChildSpec::worker("t", obedient).restart(Restart::Transient))
            .child(ChildSpec::worker("s", obedient).restart(Restart::Transient))
            .start_link(&cx);
        let first = which_children(&cx, &supervisor).await;

        // Abnormal: restarted.
        let t = pid_of(&first, "t");
        cx.exit(t, ExitReason::error("crash"));
        let crashed = replaced(&cx, &supervisor, "t", t).await;

        // Normal: not restarted, but the spec is kept.
        let t = pid_of(&crashed, "t");
        trapping(&cx, t).await;
        cx.exit(t, ExitReason::Normal);
        let returned = settled(&cx, &supervisor, "t", t).await;

        // Shutdown counts as a normal end too.
        let s = pid_of(&first, "s");
        trapping(&cx, s).await;
        cx.exit(s, ExitReason::Shutdown);
        let shut_down = settled(&cx, &supervisor, "s", s).await;

        let counts = supervisor.count_children(&cx).await.unwrap();
        (crashed, returned, shut_down, counts)
    });
    assert!(
        entry(&crashed, "t").pid.is_some(),
        "restarted after a crash: {crashed:?}"
    );
    assert_eq!(
        entry(&returned, "t").pid,
        None,
        "not restarted after a normal exit, spec kept"
    );
    assert_eq!(
        entry(&shut_down, "s").pid,
        None,
        "not restarted after a Shutdown exit, spec kept"
    );
    assert_eq!(
        counts,
        Counts {
            specs: 2,
            active: 0,
            supervisors: 0,
            workers: 2
        }
    );
}

#[test]
fn a_temporary_child_is_never_restarted_and_is_forgotten() {
    let (children, counts) = run(|cx: Context<()>| async move {
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::worker("anchor", idle))
            .child(ChildSpec::worker("crashes", obedient).restart(Restart::Temporary))
            .child(ChildSpec::worker("returns", obedient).restart(Restart::Temporary))
            .start_link(&cx);
        let first = which_children(&cx, &supervisor).await;
        cx.exit(pid_of(&first, "crashes"), ExitReason::error("crash"));
        trapping(&cx, pid_of(&first, "returns")).await;
        cx.exit(pid_of(&first, "returns"), ExitReason::Normal);
        settled(&cx, &supervisor, "crashes", pid_of(&first, "crashes")).await;
        let children = settled(&cx, &supervisor, "returns", pid_of(&first, "returns")).await;
        let counts = supervisor.count_children(&cx).await.unwrap();
        (children, counts)
    });
    assert_eq!(
        ids(&children),
        ["anchor"],
        "temporary children are dropped whether they crash or return"
    );
    assert_eq!(
        counts,
        Counts {
            specs: 1,
            active: 1,
            supervisors: 0,
            workers: 1
        }
    );
}

/// supervisor(3): a temporary child "is never restarted (even when the
/// supervisor's restart strategy is `rest_for_one` or `one_for_all` and a
/// sibling's death causes the temporary process to be terminated)".
#[test]
fn a_temporary_sibling_stopped_by_a_group_restart_is_not_restarted() {
    let mut seen = Vec::new();
    for strategy in [Strategy::OneForAll, Strategy::RestForOne] {
        let (children, stopped) = run(move |cx: Context<()>| async move {
            let supervisor = SupervisorSpec::new(strategy)
                .child(ChildSpec::worker("permanent", idle))
                .child(ChildSpec::worker("temporary", idle).restart(Restart::Temporary))
                .start_link(&cx);
            let before = which_children(&cx, &supervisor).await;
            let temporary = cx.monitor(pid_of(&before, "temporary"));
            let permanent = pid_of(&before, "permanent");
            cx.exit(permanent, ExitReason::error("crash"));
            let children = replaced(&cx, &supervisor, "permanent", permanent).await;
            (children, down_reason(&cx, temporary).await)
        });
        seen.push((strategy, stopped, ids(&children).join(",")));
    }
    // The temporary sibling was stopped, and only the permanent child came
    // back, under either strategy.
    assert_eq!(
        seen,
        [
            (
                Strategy::OneForAll,
                ExitReason::Shutdown,
                "permanent".into()
            ),
            (
                Strategy::RestForOne,
                ExitReason::Shutdown,
                "permanent".into()
            ),
        ]
    );
}

// ---- restart intensity -----------------------------------------------------

#[test]
fn a_restart_beyond_the_intensity_ends_the_supervisor_and_its_children() {
    let (alive_after_three, down, link, bystander) = run(|cx: Context<()>| async move {
        cx.trap_exit(true);
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(60))
            .child(ChildSpec::worker("crasher", idle))
            .child(ChildSpec::worker("bystander", idle))
            .start_link(&cx);
        let watch = cx.monitor(supervisor.pid());
        let mut children = which_children(&cx, &supervisor).await;
        let bystander = cx.monitor(pid_of(&children, "bystander"));
        for _ in 0..3 {
            let crasher = pid_of(&children, "crasher");
            cx.exit(crasher, ExitReason::error("crash"));
            children = replaced(&cx, &supervisor, "crasher", crasher).await;
        }
        let alive_after_three = supervisor.count_children(&cx).await.is_ok();
        cx.exit(pid_of(&children, "crasher"), ExitReason::error("crash"));
        let down = down_reason(&cx, watch).await;
        let link = exit_signal(&cx).await;
        let link = (link.from == supervisor.pid(), link.reason);
        (
            alive_after_three,
            down,
            link,
            down_reason(&cx, bystander).await,
        )
    });
    let exceeded = ExitReason::error(INTENSITY_EXCEEDED);
    assert!(alive_after_three, "three restarts are within the intensity");
    assert_eq!(down, exceeded, "the fourth crash ends the supervisor");
    assert_eq!(
        link,
        (true, exceeded),
        "its parent is told through the link"
    );
    assert_eq!(
        bystander,
        ExitReason::Shutdown,
        "a supervisor that gives up stops its other children first"
    );
}

#[test]
fn a_crash_storm_ends_the_supervisor_instead_of_looping() {
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let reason = run(move |cx: Context<()>| async move {
        cx.trap_exit(true);
        let storm = ChildSpec::worker("storm", move |cx: Context<()>| {
            panics_on_start(cx, counted.clone())
        });
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(60))
            .child(storm)
            .start_link(&cx);
        let watch = cx.monitor(supervisor.pid());
        down_reason(&cx, watch).await
    });
    assert_eq!(reason, ExitReason::error(INTENSITY_EXCEEDED));
    assert_eq!(
        starts.load(Ordering::SeqCst),
        4,
        "the first start and three restarts, then the supervisor gave up"
    );
}

#[test]
fn a_crash_storm_escalates_through_a_nested_supervisor_to_the_root() {
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let reason = run(move |cx: Context<()>| async move {
        cx.trap_exit(true);
        let storm = ChildSpec::worker("storm", move |cx: Context<()>| {
            panics_on_start(cx, counted.clone())
        });
        let inner = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(1, Duration::from_secs(60))
            .child(storm);
        let outer = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(1, Duration::from_secs(60))
            .child(ChildSpec::supervisor("inner", inner))
            .start_link(&cx);
        let watch = cx.monitor(outer.pid());
        down_reason(&cx, watch).await
    });
    assert_eq!(reason, ExitReason::error(INTENSITY_EXCEEDED));
    assert_eq!(
        starts.load(Ordering::SeqCst),
        4,
        "two inner supervisors, each starting the worker twice before giving up"
    );
}

#[test]
fn restarts_older_than_the_period_no_longer_count() {
    let (first, second) = run(|cx: Context<()>| async move {
        let period = Duration::from_millis(100);
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(1, period)
            .child(ChildSpec::worker("crasher", idle))
            .start_link(&cx);
        let before = pid_of(&which_children(&cx, &supervisor).await, "crasher");
        cx.exit(before, ExitReason::error("crash"));
        let first = pid_of(
            &replaced(&cx, &supervisor, "crasher", before).await,
            "crasher",
        );
        // Once the first restart is older than the period, a second one is
        // again the only one in the window.
        cx.sleep(period * 2).await;
        cx.exit(first, ExitReason::error("crash"));
        let second = pid_of(
            &replaced(&cx, &supervisor, "crasher", first).await,
            "crasher",
        );
        (first, second)
    });
    assert_ne!(first, second, "the second crash was restarted too");
}

// ---- shutdown --------------------------------------------------------------

#[test]
fn a_stopped_supervisor_stops_its_children_in_reverse_start_order() {
    let log = ShutdownLog::default();
    let children_log = log.clone();
    let (down, link) = run(move |cx: Context<()>| async move {
        cx.trap_exit(true);
        let mut spec = SupervisorSpec::new(Strategy::OneForOne);
        for id in ["a", "b", "c", "d"] {
            spec = spec.child(records_shutdown(id, &children_log));
        }
        let supervisor = spec.start_link(&cx);
        children_log.all_trapping(&cx, 4).await;
        let watch = cx.monitor(supervisor.pid());
        cx.exit(supervisor.pid(), ExitReason::Shutdown);
        let down = down_reason(&cx, watch).await;
        (down, exit_signal(&cx).await.reason)
    });
    assert_eq!(
        down,
        ExitReason::Shutdown,
        "the supervisor ends with Shutdown"
    );
    assert_eq!(link, ExitReason::Shutdown, "and its parent is told so");
    assert_eq!(log.order(), ["d", "c", "b", "a"]);
}

#[test]
fn a_stopped_tree_stops_depth_first_in_reverse_start_order() {
    let log = ShutdownLog::default();
    let children_log = log.clone();
    let down = run(move |cx: Context<()>| async move {
        cx.trap_exit(true);
        let inner = SupervisorSpec::new(Strategy::OneForOne)
            .child(records_shutdown("inner-x", &children_log))
            .child(records_shutdown("inner-y", &children_log));
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .child(records_shutdown("a", &children_log))
            .child(ChildSpec::supervisor("inner", inner))
            .child(records_shutdown("b", &children_log))
            .start_link(&cx);
        children_log.all_trapping(&cx, 4).await;
        let watch = cx.monitor(supervisor.pid());
        cx.exit(supervisor.pid(), ExitReason::Shutdown);
        down_reason(&cx, watch).await
    });
    assert_eq!(down, ExitReason::Shutdown);
    assert_eq!(
        log.order(),
        ["b", "inner-y", "inner-x", "a"],
        "the inner supervisor stops its own children before the outer goes on"
    );
}

#[test]
fn a_child_that_ignores_shutdown_is_killed_after_its_timeout_and_brutal_kill_kills() {
    let (trapped_tx, trapped) = mpsc::channel();
    let (polite, stubborn, brutal, supervisor) = run(move |cx: Context<()>| async move {
        cx.trap_exit(true);
        let stubborn = ChildSpec::worker("stubborn", move |cx: Context<()>| {
            ignores_exits(cx, trapped_tx.clone())
        })
        .shutdown(Shutdown::Timeout(Duration::from_millis(50)));
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::worker("polite", idle))
            .child(stubborn)
            .child(ChildSpec::worker("brutal", idle).shutdown(Shutdown::BrutalKill))
            .start_link(&cx);
        let children = which_children(&cx, &supervisor).await;
        trapping(&cx, pid_of(&children, "stubborn")).await;
        let [polite, stubborn, brutal] =
            ["polite", "stubborn", "brutal"].map(|id| cx.monitor(pid_of(&children, id)));
        let watch = cx.monitor(supervisor.pid());
        cx.exit(supervisor.pid(), ExitReason::Shutdown);
        (
            down_reason(&cx, polite).await,
            down_reason(&cx, stubborn).await,
            down_reason(&cx, brutal).await,
            down_reason(&cx, watch).await,
        )
    });
    assert_eq!(
        trapped.try_iter().collect::<Vec<_>>(),
        [ExitReason::Shutdown],
        "the stubborn child was asked to shut down first"
    );
    assert_eq!(
        stubborn,
        ExitReason::Killed,
        "then killed after its timeout"
    );
    assert_eq!(brutal, ExitReason::Killed, "brutal kill is a kill");
    assert_eq!(
        polite,
        ExitReason::Shutdown,
        "a child that does not trap ends with Shutdown"
    );
    assert_eq!(supervisor, ExitReason::Shutdown);
}

// ---- nested supervisors ----------------------------------------------------

#[test]
fn an_inner_supervisor_restarts_its_own_children_and_is_restarted_when_it_gives_up() {
    let (workers, inner_before, inner_kept, inner_alive, inner_down, inner_after) =
        run(|cx: Context<Started>| async move {
            let inner = SupervisorSpec::new(Strategy::OneForOne)
                .intensity(1, Duration::from_secs(60))
                .child(announcing("w", cx.addr()));
            let outer = SupervisorSpec::new(Strategy::OneForOne)
                .child(ChildSpec::supervisor("inner", inner))
                .start_link(&cx);
            let first = next_start(&cx, "w").await;
            let inner_before = pid_of(&which_children(&cx, &outer).await, "inner");
            let watch_inner = cx.monitor(inner_before);

            // Within the inner's intensity: the inner handles it alone.
            cx.exit(first, ExitReason::error("crash"));
            let second = next_start(&cx, "w").await;
            let inner_kept = pid_of(&which_children(&cx, &outer).await, "inner");
            let inner_alive = cx.process_info(inner_before).await.is_some();

            // Beyond it: the inner gives up and the outer restarts it.
            cx.exit(second, ExitReason::error("crash"));
            let inner_down = down_reason(&cx, watch_inner).await;
            let third = next_start(&cx, "w").await;
            let inner_after = replaced(&cx, &outer, "inner", inner_before).await;
            (
                [first, second, third],
                inner_before,
                inner_kept,
                inner_alive,
                inner_down,
                pid_of(&inner_after, "inner"),
            )
        });
    let [first, second, third] = workers;
    assert!(
        first != second && second != third && first != third,
        "each start is a new worker: {workers:?}"
    );
    assert_eq!(
        inner_kept, inner_before,
        "the outer did not restart the inner for a crash it handled"
    );
    assert!(
        inner_alive,
        "the inner supervisor survived its child's crash"
    );
    assert_eq!(inner_down, ExitReason::error(INTENSITY_EXCEEDED));
    assert_ne!(inner_after, inner_before, "the outer restarted the inner");
}

// ---- queries ---------------------------------------------------------------

#[test]
fn which_children_and_count_children_describe_a_mixed_tree() {
    let (children, counts) = run(|cx: Context<()>| async move {
        let inner = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::worker("inner-1", idle))
            .child(ChildSpec::worker("inner-2", idle));
        let supervisor = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::worker("worker", idle))
            .child(ChildSpec::supervisor("inner", inner))
            .child(ChildSpec::worker("done", returns).restart(Restart::Transient))
            .child(ChildSpec::worker("once", returns).restart(Restart::Temporary))
            .start_link(&cx);
        let children = children_when(
            &cx,
            &supervisor,
            "the transient child shows as ended and the temporary one is gone",
            |children| {
                children.iter().all(|child| &*child.id != "once")
                    && children
                        .iter()
                        .any(|child| &*child.id == "done" && child.pid.is_none())
            },
        )
        .await;
        (children, supervisor.count_children(&cx).await.unwrap())
    });
    let described: Vec<_> = children
        .iter()
        .map(|child| (&*child.id, child.kind, child.pid.is_some()))
        .collect();
    assert_eq!(
        described,
        [
            ("worker", ChildKind::Worker, true),
            ("inner", ChildKind::Supervisor, true),
            ("done", ChildKind::Worker, false),
        ]
    );
    assert_eq!(
        counts,
        Counts {
            specs: 3,
            active: 2,
            supervisors: 1,
            workers: 2
        }
    );
}

// ---- dynamic children ------------------------------------------------------

#[test]
fn a_dynamic_supervisor_starts_restarts_and_terminates_children() {
    let outcome = run(|cx: Context<()>| async move {
        let supervisor = SupervisorSpec::new(Strategy::Dynamic).start_link(&cx);
        let empty = supervisor.count_children(&cx).await.unwrap();
        let a = supervisor
            .start_child(&cx, ChildSpec::worker("a", idle))
            .await
            .unwrap();
        let b = supervisor
            .start_child(&cx, ChildSpec::worker("b", idle))
            .await
            .unwrap();
        let listed = which_children(&cx, &supervisor).await;

        cx.exit(a, ExitReason::error("crash"));
        let restarted = replaced(&cx, &supervisor, "a", a).await;

        let watch = cx.monitor(pid_of(&restarted, "a"));
        let terminated = supervisor.terminate_child(&cx, "a").await;
        let stopped = down_reason(&cx, watch).await;
        let left = which_children(&cx, &supervisor).await;
        let counts = supervisor.count_children(&cx).await.unwrap();
        Dynamic {
            empty,
            started: (a, b),
            listed,
            restarted,
            terminated,
            stopped,
            left,
            counts,
        }
    });
    let (a, b) = outcome.started;
    assert_eq!(
        outcome.empty,
        Counts::default(),
        "a dynamic supervisor starts empty"
    );
    assert_eq!(
        outcome
            .listed
            .iter()
            .map(|child| (&*child.id, child.pid))
            .collect::<Vec<_>>(),
        [("a", Some(a)), ("b", Some(b))],
        "start_child returns the pids which_children lists"
    );
    assert_ne!(
        pid_of(&outcome.restarted, "a"),
        a,
        "a crashed child restarts"
    );
    assert_eq!(pid_of(&outcome.restarted, "b"), b, "one at a time");
    assert_eq!(outcome.terminated, Ok(()));
    assert_eq!(
        outcome.stopped,
        ExitReason::Shutdown,
        "terminate_child stops it"
    );
    assert_eq!(ids(&outcome.left), ["b"], "and forgets it");
    assert_eq!(
        outcome.counts,
        Counts {
            specs: 1,
            active: 1,
            supervisors: 0,
            workers: 1
        }
    );
}

#[test]
fn a_dynamic_supervisor_refuses_a_taken_id_and_an_unknown_one() {
    let (duplicate, unknown, counts) = run(|cx: Context<()>| async move {
        let supervisor = SupervisorSpec::new(Strategy::Dynamic).start_link(&cx);
        supervisor
            .start_child(&cx, ChildSpec::worker("taken", idle))
            .await
            .unwrap();
        let duplicate = supervisor
            .start_child(&cx, ChildSpec::worker("taken", idle))
            .await;
        let unknown = supervisor.terminate_child(&cx, "unknown").await;
        (
            duplicate,
            unknown,
            supervisor.count_children(&cx).await.unwrap(),
        )
    });
    assert_eq!(
        duplicate,
        Err(SupervisorError::AlreadyPresent("taken".into()))
    );
    assert_eq!(unknown, Err(SupervisorError::NotFound("unknown".into())));
    assert_eq!(counts.specs, 1, "the refused start started nothing");
    assert_eq!(counts.active, 1);
}

// ---- helpers ---------------------------------------------------------------

/// What [`a_dynamic_supervisor_starts_restarts_and_terminates_children`]
/// saw, step by step.
struct Dynamic {
    empty: Counts,
    started: (Pid, Pid),
    listed: Vec<ChildInfo>,
    restarted: Vec<ChildInfo>,
    terminated: Result<(), SupervisorError>,
    stopped: ExitReason,
    left: Vec<ChildInfo>,
    counts: Counts,
}

/// What an [`announcing`] child tells the test process when it starts: its
/// id and pid.
type Started = (&'static str, Pid);

/// How often a test asks a supervisor again while it waits for a change.
const STEP: Duration = Duration::from_millis(5);

/// Runs `scenario` as the root process of a fresh two-shard runtime and
/// returns what it returns.
fn run<M, T, F, Fut>(scenario: F) -> T
where
    M: Send + 'static,
    T: Send + 'static,
    F: FnOnce(Context<M>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let runtime = Runtime::builder().shards(2).build().unwrap();
    runtime
        .block_on(scenario)
        .unwrap_or_else(|error| panic!("the test process did not finish: {error}"))
}

/// The supervisor's children, which it must be able to tell.
async fn which_children<M: Send + 'static>(
    cx: &Context<M>,
    supervisor: &SupervisorRef,
) -> Vec<ChildInfo> {
    supervisor
        .which_children(cx)
        .await
        .unwrap_or_else(|error| panic!("which_children failed: {error}"))
}

/// Asks `supervisor` for its children until `done` holds of them, for at
/// most [`PATIENCE`]; panics with `what` and the last answer if it never
/// does.
async fn children_when<M: Send + 'static>(
    cx: &Context<M>,
    supervisor: &SupervisorRef,
    what: &str,
    mut done: impl FnMut(&[ChildInfo]) -> bool,
) -> Vec<ChildInfo> {
    let steps = PATIENCE.as_millis() / STEP.as_millis();
    for _ in 0..steps {
        let children = which_children(cx, supervisor).await;
        if done(&children) {
            return children;
        }
        cx.sleep(STEP).await;
    }
    let children = which_children(cx, supervisor).await;
    assert!(
        done(&children),
        "never happened within {PATIENCE:?}: {what}; children: {children:?}"
    );
    children
}

/// Waits until child `id` runs again with a pid other than `old`.
async fn replaced<M: Send + 'static>(
    cx: &Context<M>,
    supervisor: &SupervisorRef,
    id: &str,
    old: Pid,
) -> Vec<ChildInfo> {
    children_when(cx, supervisor, &format!("{id} restarted"), |children| {
        children
            .iter()
            .any(|child| &*child.id == id && child.pid.is_some_and(|pid| pid != old))
    })
    .await
}

/// Waits until the supervisor has dealt with the end of child `id`, which
/// ran as `old`: it no longer lists `old` for it, whether the child is now
/// listed without a pid, with a new one, or not at all. The caller asserts
/// which.
async fn settled<M: Send + 'static>(
    cx: &Context<M>,
    supervisor: &SupervisorRef,
    id: &str,
    old: Pid,
) -> Vec<ChildInfo> {
    children_when(
        cx,
        supervisor,
        &format!("the end of {id} handled"),
        |children| {
            !children
                .iter()
                .any(|child| &*child.id == id && child.pid == Some(old))
        },
    )
    .await
}

/// Child `id` as listed; panics if it is not.
fn entry<'a>(children: &'a [ChildInfo], id: &str) -> &'a ChildInfo {
    children
        .iter()
        .find(|child| &*child.id == id)
        .unwrap_or_else(|| panic!("no child {id} in {children:?}"))
}

/// The pid of child `id`, which must be running.
fn pid_of(children: &[ChildInfo], id: &str) -> Pid {
    entry(children, id)
        .pid
        .unwrap_or_else(|| panic!("child {id} is not running: {children:?}"))
}

/// The ids listed, in order.
fn ids(children: &[ChildInfo]) -> Vec<&str> {
    children.iter().map(|child| &*child.id).collect()
}

/// Waits until `pid` traps exits, so that an exit signal sent to it
/// arrives as a message (a `Normal` one would otherwise be ignored).
async fn trapping<M: Send + 'static>(cx: &Context<M>, pid: Pid) {
    let steps = PATIENCE.as_millis() / STEP.as_millis();
    for _ in 0..steps {
        if cx
            .process_info(pid)
            .await
            .is_some_and(|info| info.trap_exit)
        {
            return;
        }
        cx.sleep(STEP).await;
    }
    panic!("{pid} does not trap exits after {PATIENCE:?}");
}

/// Waits for the next start of the [`announcing`] child `id`.
async fn next_start(cx: &Context<Started>, id: &'static str) -> Pid {
    let started = cx
        .recv_match_timeout(
            |envelope| matches!(envelope, Envelope::Msg((started, _)) if *started == id),
            PATIENCE,
        )
        .await;
    match started {
        Some(Envelope::Msg((_, pid))) => pid,
        Some(_) => unreachable!("the predicate only matches starts of {id}"),
        None => panic!("{id} did not start within {PATIENCE:?}"),
    }
}

/// A child that tells `to` its id and pid each time it starts, then idles.
fn announcing(id: &'static str, to: Addr<Started>) -> ChildSpec {
    ChildSpec::worker(id, move |cx: Context<()>| announces(cx, id, to))
}

async fn announces(cx: Context<()>, id: &'static str, to: Addr<Started>) {
    cx.send(&to, (id, cx.pid()));
    idle(cx).await;
}

/// Where [`records_shutdown`] children write: their ids, in the order they
/// were told to shut down, and how many of them trap exits so far.
#[derive(Clone, Default)]
struct ShutdownLog {
    order: Arc<Mutex<Vec<&'static str>>>,
    trapping: Arc<AtomicUsize>,
}

impl ShutdownLog {
    /// The ids recorded so far.
    fn order(&self) -> Vec<&'static str> {
        self.order.lock().unwrap().clone()
    }

    /// Waits until `count` children trap exits, so that none can miss its
    /// `Shutdown` by ending before it traps.
    async fn all_trapping<M: Send + 'static>(&self, cx: &Context<M>, count: usize) {
        let steps = PATIENCE.as_millis() / STEP.as_millis();
        for _ in 0..steps {
            if self.trapping.load(Ordering::SeqCst) >= count {
                return;
            }
            cx.sleep(STEP).await;
        }
        let trapping = self.trapping.load(Ordering::SeqCst);
        assert!(
            trapping >= count,
            "only {trapping} of {count} children trap exits after {PATIENCE:?}"
        );
    }
}

/// A child that traps exits and, when it receives `Shutdown`, appends its
/// id to `log` and returns.
fn records_shutdown(id: &'static str, log: &ShutdownLog) -> ChildSpec {
    let log = log.clone();
    ChildSpec::worker(id, move |cx: Context<()>| {
        let log = log.clone();
        async move {
            cx.trap_exit(true);
            log.trapping.fetch_add(1, Ordering::SeqCst);
            loop {
                if let Envelope::Exit(exit) = cx.recv().await {
                    if exit.reason == ExitReason::Shutdown {
                        log.order.lock().unwrap().push(id);
                        return;
                    }
                }
            }
        }
    })
}

/// Receives forever, ignoring what arrives; ends only by an exit signal.
async fn idle(cx: Context<()>) {
    loop {
        cx.recv().await;
    }
}

/// Returns at once.
async fn returns(_: Context<()>) {}

/// Traps exits and ends with the reason of the first exit signal it
/// receives: `cx.exit(pid, ExitReason::Normal)` makes it end normally.
async fn obedient(cx: Context<()>) -> ExitReason {
    cx.trap_exit(true);
    loop {
        if let Envelope::Exit(exit) = cx.recv().await {
            return exit.reason;
        }
    }
}

/// Traps exits, reports each reason on `trapped`, and carries on: only a
/// kill ends it.
async fn ignores_exits(cx: Context<()>, trapped: mpsc::Sender<ExitReason>) {
    cx.trap_exit(true);
    loop {
        if let Envelope::Exit(exit) = cx.recv().await {
            // The test may be done listening; the child carries on anyway.
            let _ = trapped.send(exit.reason);
        }
    }
}

/// Counts a start in `starts`, then panics.
async fn panics_on_start(_cx: Context<()>, starts: Arc<AtomicUsize>) {
    starts.fetch_add(1, Ordering::SeqCst);
    panic!("crash storm");
}

#[test]
fn a_root_supervisor_stops_on_request_after_its_children() {
    let runtime = Runtime::builder().shards(2).build().unwrap();
    let spec = SupervisorSpec::new(Strategy::OneForOne).child(ChildSpec::worker(
        "idle",
        |cx: Context<()>| async move {
            cx.recv().await;
        },
    ));
    let supervisor = spec.start(runtime.handle()).unwrap();
    let (child_reason, supervisor_reason) = runtime
        .block_on(move |cx: Context<()>| async move {
            let child = supervisor.which_children(&cx).await.unwrap()[0]
                .pid
                .unwrap();
            let child_monitor = cx.monitor(child);
            let monitor = cx.monitor(supervisor.pid());
            supervisor.stop(&cx).await.unwrap();
            let mut reasons = (None, None);
            while reasons.0.is_none() || reasons.1.is_none() {
                match cx.recv_timeout(Duration::from_secs(10)).await {
                    Some(Envelope::Down(down)) if down.monitor == child_monitor => {
                        reasons.0 = Some(down.reason)
                    }
                    Some(Envelope::Down(down)) if down.monitor == monitor => {
                        reasons.1 = Some(down.reason)
                    }
                    Some(_) => {}
                    None => panic!("the supervisor did not stop: {reasons:?}"),
                }
            }
            reasons
        })
        .unwrap();
    assert_eq!(child_reason, Some(ExitReason::Shutdown));
    assert_eq!(supervisor_reason, Some(ExitReason::Shutdown));
}
