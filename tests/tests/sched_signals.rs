//! Links, exit signals, monitors and panics, checked against the rules of
//! Erlang's reference manual (*Processes*) that `foundation::exit` adopts.
//! Where placement could matter, each case runs with the peer on the same
//! shard and on the other one.

mod common;

use std::future::pending;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{down, down_reason, exit_signal, DropCounter, Where, PATIENCE, QUIET};
use foundation::{
    Addr, BlockOnError, Context, Envelope, Exit, ExitReason, Pid, Runtime, ShardId, SpawnOptions,
};

// ---- links ---------------------------------------------------------------

#[test]
fn abnormal_exit_propagates_along_a_link() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reason = runtime
            .block_on(move |cx: Context<()>| async move {
                let crasher =
                    ends_when_told(&cx, SpawnOptions::new(), place, ExitReason::error("boom"))
                        .await
                        .addr;
                // The victim links first, then triggers the crash; its link
                // signal travels ahead of the message.
                let victim = cx
                    .spawn_with(
                        SpawnOptions::new().monitor(),
                        move |cx: Context<()>| async move {
                            cx.link(crasher.pid());
                            cx.send(&crasher, ());
                            pending::<()>().await;
                        },
                    )
                    .await
                    .unwrap();
                down_reason(&cx, victim.monitor.unwrap()).await
            })
            .unwrap();
        assert_eq!(reason, ExitReason::error("boom"), "crasher {place:?}");
    }
}

#[test]
fn abnormal_exit_propagates_along_a_chain_of_three() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reasons = runtime
            .block_on(move |cx: Context<(Pid, Addr<()>)>| async move {
                // a — b — c, with b on the other shard in the cross-shard run.
                let me = cx.addr();
                let home = cx.shard();
                let b_place = place.placement(&cx);
                let a = cx
                    .spawn_with(
                        SpawnOptions::new().monitor(),
                        move |cx: Context<()>| async move {
                            let b_options = SpawnOptions::new().link().placement(b_place);
                            cx.spawn_with(b_options, move |cx: Context<()>| async move {
                                let c_options = SpawnOptions::new()
                                    .link()
                                    .placement(foundation::Placement::Shard(home));
                                let c = cx
                                    .spawn_with(c_options, |cx: Context<()>| async move {
                                        cx.recv().await;
                                        ExitReason::error("chain")
                                    })
                                    .await
                                    .unwrap();
                                cx.send(&me, (cx.pid(), c.addr));
                                pending::<()>().await;
                            })
                            .await
                            .unwrap();
                            pending::<()>().await;
                        },
                    )
                    .await
                    .unwrap();
                let (b, c) = cx.recv().await.into_msg().unwrap();
                let b_monitor = cx.monitor(b);
                let c_monitor = cx.monitor(c.pid());
                cx.send(&c, ());
                (
                    down_reason(&cx, c_monitor).await,
                    down_reason(&cx, b_monitor).await,
                    down_reason(&cx, a.monitor.unwrap()).await,
                )
            })
            .unwrap();
        let chain = ExitReason::error("chain");
        assert_eq!(reasons, (chain.clone(), chain.clone(), chain), "{place:?}");
    }
}

#[test]
fn normal_exit_leaves_a_linked_process_alive() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (reason, links) = runtime
            .block_on(move |cx: Context<()>| async move {
                let options = SpawnOptions::new().link().monitor();
                let child = ends_when_told(&cx, options, place, ExitReason::Normal).await;
                cx.send(&child.addr, ());
                // The exit signal comes before the Down: if it were going to
                // end this process, this would never return.
                let reason = down_reason(&cx, child.monitor.unwrap()).await;
                let links = cx.process_info(cx.pid()).await.unwrap().links;
                (reason, links)
            })
            .unwrap();
        assert_eq!(reason, ExitReason::Normal, "{place:?}");
        assert_eq!(links, 0, "a link ends with its process ({place:?})");
    }
}

#[test]
fn trapping_process_receives_exit_signals_as_messages() {
    for place in Where::BOTH {
        for reason in [ExitReason::error("trapped"), ExitReason::Normal] {
            let runtime = runtime();
            let expected = reason.clone();
            let (child, exit, previous) = runtime
                .block_on(move |cx: Context<()>| async move {
                    let previous = cx.trap_exit(true);
                    let child = ends_when_told(&cx, SpawnOptions::new().link(), place, reason)
                        .await
                        .addr;
                    cx.send(&child, ());
                    let exit = cx.recv_timeout(PATIENCE).await;
                    (child.pid(), exit, previous)
                })
                .unwrap();
            assert!(!previous, "processes start without trapping exits");
            match exit {
                Some(Envelope::Exit(exit)) => assert_eq!(
                    exit,
                    Exit {
                        from: child,
                        reason: expected
                    },
                    "{place:?}"
                ),
                other => panic!("expected an Exit message, got {other:?} ({place:?})"),
            }
        }
    }
}

#[test]
fn unlink_stops_propagation() {
    for place in Where::BOTH {
        let runtime = runtime();
        let outcome = runtime
            .block_on(move |cx: Context<()>| async move {
                let options = SpawnOptions::new().link().monitor();
                let child = ends_when_told(&cx, options, place, ExitReason::error("x")).await;
                cx.unlink(child.addr.pid());
                cx.send(&child.addr, ());
                let reason = down_reason(&cx, child.monitor.unwrap()).await;
                (reason, cx.process_info(cx.pid()).await.unwrap().links)
            })
            .unwrap();
        assert_eq!(outcome, (ExitReason::error("x"), 0), "{place:?}");
    }
}

#[test]
fn unlink_leaves_no_exit_message_for_a_trapping_process() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (reason, leftover) = runtime
            .block_on(move |cx: Context<()>| async move {
                cx.trap_exit(true);
                let options = SpawnOptions::new().link().monitor();
                let child = ends_when_told(&cx, options, place, ExitReason::error("x")).await;
                cx.unlink(child.addr.pid());
                cx.send(&child.addr, ());
                let reason = down_reason(&cx, child.monitor.unwrap()).await;
                // An exit signal would have come before the Down.
                (reason, cx.try_recv())
            })
            .unwrap();
        assert_eq!(reason, ExitReason::error("x"), "{place:?}");
        assert!(leftover.is_none(), "{place:?}: got {leftover:?}");
    }
}

#[test]
fn unlink_by_the_other_side_removes_the_link_both_ways() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reason = runtime
            .block_on(move |cx: Context<()>| async move {
                let parent = cx.pid();
                let options = SpawnOptions::new()
                    .link()
                    .monitor()
                    .placement(place.placement(&cx));
                let child = cx
                    .spawn_with(options, move |cx: Context<()>| async move {
                        cx.unlink(parent);
                        ExitReason::error("after unlink")
                    })
                    .await
                    .unwrap();
                down_reason(&cx, child.monitor.unwrap()).await
            })
            .unwrap();
        assert_eq!(reason, ExitReason::error("after unlink"), "{place:?}");
    }
}

#[test]
fn link_to_a_missing_process_ends_a_non_trapping_caller_with_noproc() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reasons = runtime
            .block_on(move |cx: Context<()>| async move {
                let dead = dead_process(&cx, place).await;
                let never = never_spawned(&cx, place.shard(&cx));
                let mut reasons = Vec::new();
                for missing in [dead, never] {
                    let (_, monitor) = cx.spawn_monitor(move |cx: Context<()>| async move {
                        cx.link(missing);
                        pending::<()>().await;
                    });
                    reasons.push(down_reason(&cx, monitor).await);
                }
                reasons
            })
            .unwrap();
        assert_eq!(
            reasons,
            [ExitReason::NoProc, ExitReason::NoProc],
            "{place:?}"
        );
    }
}

#[test]
fn link_to_a_missing_process_sends_noproc_to_a_trapping_caller() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (expected, exits) = runtime
            .block_on(move |cx: Context<()>| async move {
                cx.trap_exit(true);
                let dead = dead_process(&cx, place).await;
                let never = never_spawned(&cx, place.shard(&cx));
                let mut exits = Vec::new();
                for missing in [dead, never] {
                    cx.link(missing);
                    exits.push(exit_signal(&cx).await);
                }
                ([dead, never], exits)
            })
            .unwrap();
        let expected: Vec<_> = expected
            .into_iter()
            .map(|from| Exit {
                from,
                reason: ExitReason::NoProc,
            })
            .collect();
        assert_eq!(exits, expected, "{place:?}");
    }
}

#[test]
fn link_to_a_pid_on_a_shard_that_does_not_exist_is_noproc() {
    let runtime = runtime();
    let exit = runtime
        .block_on(|cx: Context<()>| async move {
            cx.trap_exit(true);
            let nowhere = never_spawned(&cx, ShardId(9));
            cx.link(nowhere);
            (nowhere, cx.recv_timeout(PATIENCE).await)
        })
        .unwrap();
    match exit {
        (nowhere, Some(Envelope::Exit(exit))) => assert_eq!(
            exit,
            Exit {
                from: nowhere,
                reason: ExitReason::NoProc
            }
        ),
        (_, other) => panic!("expected an Exit with NoProc, got {other:?}"),
    }
}

#[test]
fn spawn_link_kills_the_parent_when_the_child_fails() {
    let runtime = runtime();
    let reason = runtime
        .block_on(|cx: Context<()>| async move {
            let (_, monitor) = cx.spawn_monitor(|cx: Context<()>| async move {
                cx.spawn_link(|_: Context<()>| async { ExitReason::error("child failed") });
                pending::<()>().await;
            });
            down_reason(&cx, monitor).await
        })
        .unwrap();
    assert_eq!(reason, ExitReason::error("child failed"));
}

#[test]
fn spawn_link_delivers_the_childs_exit_to_a_trapping_parent() {
    let runtime = runtime();
    let (child, exit) = runtime
        .block_on(|cx: Context<()>| async move {
            cx.trap_exit(true);
            let child = cx.spawn_link(|_: Context<()>| async { ExitReason::error("oops") });
            (child.pid(), exit_signal(&cx).await)
        })
        .unwrap();
    assert_eq!(
        exit,
        Exit {
            from: child,
            reason: ExitReason::error("oops")
        }
    );
}

#[test]
fn a_child_that_fails_at_once_across_shards_still_kills_its_linked_parent() {
    let runtime = runtime();
    let reason = runtime
        .block_on(|cx: Context<()>| async move {
            let other = Where::Other.placement(&cx);
            let (_, monitor) = cx.spawn_monitor(move |cx: Context<()>| async move {
                let options = SpawnOptions::new().link().placement(other);
                let _ = cx
                    .spawn_with(options, |_: Context<()>| async {
                        ExitReason::error("at once")
                    })
                    .await;
                pending::<()>().await;
            });
            down_reason(&cx, monitor).await
        })
        .unwrap();
    assert_eq!(reason, ExitReason::error("at once"));
}

#[test]
fn a_failing_parent_kills_its_linked_child() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reasons = runtime
            .block_on(move |cx: Context<Pid>| async move {
                let me = cx.addr();
                let child_place = place.placement(&cx);
                let parent = cx
                    .spawn_with(
                        SpawnOptions::new().monitor(),
                        move |cx: Context<()>| async move {
                            let options = SpawnOptions::new().link().placement(child_place);
                            let child = cx
                                .spawn_with(options, |_: Context<()>| pending::<()>())
                                .await
                                .unwrap();
                            cx.send(&me, child.addr.pid());
                            cx.recv().await;
                            ExitReason::error("parent failed")
                        },
                    )
                    .await
                    .unwrap();
                let child = cx.recv().await.into_msg().unwrap();
                let child_monitor = cx.monitor(child);
                cx.send(&parent.addr, ());
                (
                    down_reason(&cx, parent.monitor.unwrap()).await,
                    down_reason(&cx, child_monitor).await,
                )
            })
            .unwrap();
        let failed = ExitReason::error("parent failed");
        assert_eq!(reasons, (failed.clone(), failed), "{place:?}");
    }
}

#[test]
fn a_linked_child_does_not_outlive_a_parent_killed_during_the_spawn() {
    let runtime = runtime();
    let child_gone = runtime
        .block_on(|cx: Context<()>| async move {
            let child = DropCounter::default();
            let guard = child.guard();
            let other = Where::Other.placement(&cx);
            let (parent, monitor) = cx.spawn_monitor(move |cx: Context<()>| async move {
                let options = SpawnOptions::new().link().placement(other);
                let _ = cx
                    .spawn_with(options, move |_: Context<()>| async move {
                        let _guard = guard;
                        pending::<()>().await;
                    })
                    .await;
                pending::<()>().await;
            });
            // Let the parent ask for the spawn, then kill it while it waits
            // for the answer.
            cx.yield_now().await;
            cx.kill(parent.pid());
            assert_eq!(down_reason(&cx, monitor).await, ExitReason::Killed);
            // The child may never have run; its destructor shows it is gone.
            for _ in 0..PATIENCE.as_millis() {
                if child.dropped() == 1 {
                    break;
                }
                cx.sleep(Duration::from_millis(1)).await;
            }
            child.dropped() == 1
        })
        .unwrap();
    assert!(child_gone, "the linked child outlived its parent");
}

#[test]
fn trapping_exits_can_be_turned_off_again() {
    let runtime = runtime();
    let (was_trapping, result) = runtime
        .block_on(|cx: Context<()>| async move {
            cx.trap_exit(true);
            let was_trapping = cx.trap_exit(false);
            let (_, monitor) = cx.spawn_monitor(|cx: Context<()>| async move {
                cx.trap_exit(true);
                cx.trap_exit(false);
                cx.spawn_link(|_: Context<()>| async { ExitReason::error("no trap") });
                pending::<()>().await;
            });
            (was_trapping, down_reason(&cx, monitor).await)
        })
        .unwrap();
    assert!(was_trapping);
    assert_eq!(result, ExitReason::error("no trap"));
}

// ---- exit signals ----------------------------------------------------------

#[test]
fn exit_with_a_reason_ends_a_non_trapping_target_with_that_reason() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reason = runtime
            .block_on(move |cx: Context<()>| async move {
                let options = SpawnOptions::new()
                    .monitor()
                    .placement(place.placement(&cx));
                let target = cx
                    .spawn_with(options, |_: Context<()>| pending::<()>())
                    .await
                    .unwrap();
                cx.exit(target.addr.pid(), ExitReason::error("x"));
                down_reason(&cx, target.monitor.unwrap()).await
            })
            .unwrap();
        assert_eq!(reason, ExitReason::error("x"), "{place:?}");
    }
}

#[test]
fn exit_reaches_a_trapping_target_as_a_message() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (me, exits, alive) = runtime
            .block_on(move |cx: Context<Exit>| async move {
                let me = cx.addr();
                let options = SpawnOptions::new()
                    .trap_exit()
                    .placement(place.placement(&cx));
                let target = cx
                    .spawn_with(options, move |cx: Context<()>| forward_exits(cx, me))
                    .await
                    .unwrap()
                    .addr;
                cx.exit(target.pid(), ExitReason::error("x"));
                cx.exit(target.pid(), ExitReason::Normal);
                let first = cx.recv().await.into_msg().unwrap();
                let second = cx.recv().await.into_msg().unwrap();
                let alive = cx.process_info(target.pid()).await.is_some();
                (cx.pid(), vec![first, second], alive)
            })
            .unwrap();
        let expected = vec![
            Exit {
                from: me,
                reason: ExitReason::error("x"),
            },
            Exit {
                from: me,
                reason: ExitReason::Normal,
            },
        ];
        assert_eq!(exits, expected, "{place:?}");
        assert!(
            alive,
            "a trapping process survives exit signals ({place:?})"
        );
    }
}

#[test]
fn exit_normal_is_ignored_by_a_non_trapping_target() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (reply, status) = runtime
            .block_on(move |cx: Context<u32>| async move {
                let me = cx.addr();
                let options = SpawnOptions::new().placement(place.placement(&cx));
                let echo = cx
                    .spawn_with(options, move |cx: Context<u32>| async move {
                        while let Envelope::Msg(n) = cx.recv().await {
                            cx.send(&me, n + 1);
                        }
                    })
                    .await
                    .unwrap()
                    .addr;
                cx.exit(echo.pid(), ExitReason::Normal);
                cx.send(&echo, 1);
                let reply = cx.recv_timeout(PATIENCE).await.and_then(Envelope::into_msg);
                let status = cx.process_info(echo.pid()).await.map(|info| info.status);
                (reply, status)
            })
            .unwrap();
        assert_eq!(reply, Some(2), "{place:?}");
        assert_eq!(status, Some(foundation::Status::Waiting), "{place:?}");
    }
}

#[test]
fn exit_normal_to_itself_ends_the_caller() {
    let runtime = runtime();
    let result = runtime.block_on(|cx: Context<()>| async move {
        cx.exit(cx.pid(), ExitReason::Normal);
        cx.yield_now().await;
        "still running"
    });
    assert_eq!(result, Err(BlockOnError::Exited(ExitReason::Normal)));

    let result = runtime.block_on(|cx: Context<()>| async move {
        cx.exit(cx.pid(), ExitReason::error("self"));
        cx.recv().await;
        "still running"
    });
    assert_eq!(result, Err(BlockOnError::Exited(ExitReason::error("self"))));
}

#[test]
fn kill_ends_even_a_trapping_target_with_killed() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reason = runtime
            .block_on(move |cx: Context<()>| async move {
                let options = SpawnOptions::new()
                    .trap_exit()
                    .monitor()
                    .placement(place.placement(&cx));
                let target = cx
                    // Trapping: exit signals become messages, and it keeps
                    // receiving them.
                    .spawn_with(options, receive_forever)
                    .await
                    .unwrap();
                cx.exit(target.addr.pid(), ExitReason::error("trapped"));
                cx.kill(target.addr.pid());
                down_reason(&cx, target.monitor.unwrap()).await
            })
            .unwrap();
        assert_eq!(reason, ExitReason::Killed, "{place:?}");
    }
}

#[test]
fn links_of_a_killed_process_see_killed_and_may_trap_it() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (victim, exit, bystander) = runtime
            .block_on(move |cx: Context<Pid>| async move {
                cx.trap_exit(true);
                let me = cx.addr();
                // The victim traps exits too, and has a non-trapping
                // bystander linked on its own shard.
                let options = SpawnOptions::new()
                    .link()
                    .trap_exit()
                    .placement(place.placement(&cx));
                let victim = cx
                    .spawn_with(options, move |cx: Context<()>| async move {
                        let bystander = cx.spawn_link(|_: Context<()>| pending::<()>());
                        cx.send(&me, bystander.pid());
                        pending::<()>().await;
                    })
                    .await
                    .unwrap()
                    .addr;
                let bystander = cx.recv().await.into_msg().unwrap();
                let bystander_monitor = cx.monitor(bystander);
                cx.kill(victim.pid());
                let exit = exit_signal(&cx).await;
                (
                    victim.pid(),
                    exit,
                    down_reason(&cx, bystander_monitor).await,
                )
            })
            .unwrap();
        assert_eq!(
            exit,
            Exit {
                from: victim,
                reason: ExitReason::Killed
            },
            "a trapping link receives Killed as a message ({place:?})"
        );
        assert_eq!(bystander, ExitReason::Killed, "{place:?}");
    }
}

/// What the watcher in [`exit_and_kill_from_outside_the_runtime`] reports.
#[derive(Debug, PartialEq)]
enum Report {
    Targets {
        plain: Pid,
        trapping: Pid,
        killable: Pid,
    },
    Trapped(ExitReason),
    Down(Pid, ExitReason),
}

#[test]
fn exit_and_kill_from_outside_the_runtime() {
    let runtime = runtime();
    let (tx, rx) = mpsc::channel();
    runtime
        .spawn(move |cx: Context<()>| async move {
            let (plain, _) = cx.spawn_monitor(|_: Context<()>| pending::<()>());
            let trapped = tx.clone();
            let trapping = cx
                .spawn_with(
                    SpawnOptions::new().trap_exit().monitor(),
                    move |cx: Context<()>| report_exits(cx, trapped),
                )
                .await
                .unwrap()
                .addr;
            let killable = cx
                .spawn_with(
                    SpawnOptions::new().trap_exit().monitor(),
                    |_: Context<()>| pending::<()>(),
                )
                .await
                .unwrap()
                .addr;
            tx.send(Report::Targets {
                plain: plain.pid(),
                trapping: trapping.pid(),
                killable: killable.pid(),
            })
            .unwrap();
            report_downs(&cx, &tx).await;
        })
        .unwrap();
    let Ok(Report::Targets {
        plain,
        trapping,
        killable,
    }) = rx.recv_timeout(PATIENCE)
    else {
        panic!("the watcher did not report its targets");
    };

    runtime.exit(plain, ExitReason::Normal); // ignored: not trapping
    runtime.exit(plain, ExitReason::error("outside"));
    runtime.exit(trapping, ExitReason::error("polite"));
    runtime.kill(killable);

    let mut reports: Vec<Report> = (0..3)
        .map(|_| rx.recv_timeout(PATIENCE).expect("a report"))
        .collect();
    reports.sort_by_key(|report| format!("{report:?}"));
    let mut expected = vec![
        Report::Down(plain, ExitReason::error("outside")),
        Report::Trapped(ExitReason::error("polite")),
        Report::Down(killable, ExitReason::Killed),
    ];
    expected.sort_by_key(|report| format!("{report:?}"));
    assert_eq!(reports, expected);
    assert!(runtime.process_info(trapping).is_some());
    assert!(rx.recv_timeout(QUIET).is_err(), "nothing else happened");
}

// ---- monitors --------------------------------------------------------------

#[test]
fn two_monitors_give_two_downs_with_different_refs() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (child, monitors, downs, extra) = runtime
            .block_on(move |cx: Context<()>| async move {
                let child = ends_when_told(&cx, SpawnOptions::new(), place, ExitReason::Normal)
                    .await
                    .addr;
                let first = cx.monitor(child.pid());
                let second = cx.monitor(child.pid());
                cx.send(&child, ());
                let mut downs = Vec::new();
                for _ in 0..2 {
                    match cx.recv_timeout(PATIENCE).await {
                        Some(Envelope::Down(down)) => downs.push(down),
                        other => panic!("expected a Down, got {other:?}"),
                    }
                }
                let extra = cx.recv_timeout(QUIET).await;
                (child.pid(), [first, second], downs, extra)
            })
            .unwrap();
        assert_ne!(monitors[0], monitors[1], "{place:?}");
        let mut refs: Vec<_> = downs.iter().map(|down| down.monitor).collect();
        refs.sort();
        let mut expected = monitors.to_vec();
        expected.sort();
        assert_eq!(refs, expected, "one Down per monitor ({place:?})");
        for down in &downs {
            assert_eq!((down.pid, &down.reason), (child, &ExitReason::Normal));
        }
        assert!(extra.is_none(), "{place:?}: a third envelope {extra:?}");
    }
}

#[test]
fn down_carries_the_exit_reason() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reasons = runtime
            .block_on(move |cx: Context<()>| async move {
                let options = || {
                    SpawnOptions::new()
                        .monitor()
                        .placement(place.placement(&cx))
                };
                let normal = cx.spawn_with(options(), |_: Context<()>| async {});
                let normal = normal.await.unwrap();
                let panicked = cx
                    .spawn_with(options(), |_: Context<()>| panics_with_code("boom", 7))
                    .await
                    .unwrap();
                let failed = cx
                    .spawn_with(options(), |_: Context<()>| async {
                        ExitReason::error("bad input")
                    })
                    .await
                    .unwrap();
                let returned_err = cx
                    .spawn_with(options(), |_: Context<()>| async {
                        Err::<(), _>(ExitReason::Shutdown)
                    })
                    .await
                    .unwrap();
                let mut reasons = Vec::new();
                for spawned in [normal, panicked, failed, returned_err] {
                    reasons.push(down_reason(&cx, spawned.monitor.unwrap()).await);
                }
                reasons
            })
            .unwrap();
        assert_eq!(
            reasons,
            [
                ExitReason::Normal,
                ExitReason::Panic(Arc::from("boom 7")),
                ExitReason::error("bad input"),
                ExitReason::Shutdown,
            ],
            "{place:?}"
        );
    }
}

#[test]
fn monitor_of_a_missing_process_is_down_with_noproc_at_once() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (missing, downs) = runtime
            .block_on(move |cx: Context<()>| async move {
                let missing = [
                    dead_process(&cx, place).await,
                    never_spawned(&cx, place.shard(&cx)),
                ];
                let mut downs = Vec::new();
                for pid in missing {
                    let monitor = cx.monitor(pid);
                    let down = down(&cx, monitor).await;
                    downs.push((down.pid, down.reason));
                }
                (missing, downs)
            })
            .unwrap();
        assert_eq!(
            downs,
            [
                (missing[0], ExitReason::NoProc),
                (missing[1], ExitReason::NoProc)
            ],
            "{place:?}"
        );
    }
}

#[test]
fn monitor_of_a_pid_on_a_shard_that_does_not_exist_is_noproc() {
    let runtime = runtime();
    let down = runtime
        .block_on(|cx: Context<()>| async move {
            let nowhere = never_spawned(&cx, ShardId(9));
            let monitor = cx.monitor(nowhere);
            let down = cx.recv_timeout(PATIENCE).await;
            (nowhere, monitor, down)
        })
        .unwrap();
    match down {
        (nowhere, monitor, Some(Envelope::Down(down))) => {
            assert_eq!(
                (down.monitor, down.pid, down.reason),
                (monitor, nowhere, ExitReason::NoProc)
            );
        }
        (_, _, other) => panic!("expected a Down with NoProc, got {other:?}"),
    }
}

#[test]
fn demonitor_before_the_exit_means_no_down_ever() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (active, again, second_reason, leftover) = runtime
            .block_on(move |cx: Context<()>| async move {
                let child = ends_when_told(&cx, SpawnOptions::new(), place, ExitReason::Normal)
                    .await
                    .addr;
                let first = cx.monitor(child.pid());
                let active = cx.demonitor(first);
                let again = cx.demonitor(first);
                // A second monitor tells when the child has ended; a Down
                // for the first would have been sent at the same moment.
                let second = cx.monitor(child.pid());
                cx.send(&child, ());
                let second_reason = down_reason(&cx, second).await;
                (active, again, second_reason, cx.recv_timeout(QUIET).await)
            })
            .unwrap();
        assert!(active, "the monitor was active ({place:?})");
        assert!(!again, "a monitor is removed once ({place:?})");
        assert_eq!(second_reason, ExitReason::Normal, "{place:?}");
        assert!(leftover.is_none(), "{place:?}: got {leftover:?}");
    }
}

#[test]
fn demonitor_flushes_a_down_already_in_the_mailbox() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (active, first, rest) = runtime
            .block_on(move |cx: Context<u32>| async move {
                let child = ends_when_told(&cx, SpawnOptions::new(), place, ExitReason::Normal)
                    .await
                    .addr;
                let monitor = cx.monitor(child.pid());
                cx.send(&cx.addr(), 1);
                cx.send(&child, ());
                // Wait, without receiving, until the Down is in the mailbox.
                let mut arrived = false;
                for _ in 0..PATIENCE.as_millis() {
                    if cx.process_info(cx.pid()).await.unwrap().mailbox_len == 2 {
                        arrived = true;
                        break;
                    }
                    cx.sleep(Duration::from_millis(1)).await;
                }
                assert!(arrived, "the Down never arrived");
                let active = cx.demonitor(monitor);
                let first = cx.try_recv().and_then(Envelope::into_msg);
                (active, first, cx.try_recv())
            })
            .unwrap();
        assert!(!active, "the monitor fired, so it was no longer active");
        assert_eq!(first, Some(1), "other envelopes stay ({place:?})");
        assert!(rest.is_none(), "{place:?}: the Down stayed: {rest:?}");
    }
}

#[test]
fn spawn_monitor_watches_from_the_first_instant() {
    for place in Where::BOTH {
        let runtime = runtime();
        let reasons = runtime
            .block_on(move |cx: Context<()>| async move {
                // Children that end before the spawner runs again must not
                // be reported as NoProc.
                let (_, local) = cx.spawn_monitor(|_: Context<()>| async {});
                let options = SpawnOptions::new()
                    .monitor()
                    .placement(place.placement(&cx));
                let placed = cx
                    .spawn_with(options, |_: Context<()>| async {
                        ExitReason::error("quick")
                    })
                    .await
                    .unwrap();
                (
                    down_reason(&cx, local).await,
                    down_reason(&cx, placed.monitor.unwrap()).await,
                )
            })
            .unwrap();
        assert_eq!(
            reasons,
            (ExitReason::Normal, ExitReason::error("quick")),
            "{place:?}"
        );
    }
}

#[test]
fn a_monitor_ends_with_the_process_that_held_it() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (while_watched, after) = runtime
            .block_on(move |cx: Context<()>| async move {
                let me = cx.addr();
                let options = SpawnOptions::new().placement(place.placement(&cx));
                let target = cx
                    .spawn_with(options, |_: Context<()>| pending::<()>())
                    .await
                    .unwrap()
                    .addr;
                let (watcher, watcher_monitor) =
                    cx.spawn_monitor(move |cx: Context<()>| async move {
                        cx.monitor(target.pid());
                        cx.send(&me, ());
                        cx.recv().await;
                    });
                cx.recv().await;
                let while_watched = cx.process_info(target.pid()).await.unwrap().monitored_by;
                cx.send(&watcher, ());
                down_reason(&cx, watcher_monitor).await;
                let after = cx.process_info(target.pid()).await.unwrap().monitored_by;
                (while_watched, after)
            })
            .unwrap();
        assert_eq!((while_watched, after), (1, 0), "{place:?}");
    }
}

// ---- panics ----------------------------------------------------------------

#[test]
fn a_panic_ends_only_its_own_process() {
    let runtime = Runtime::builder().shards(1).build().unwrap();
    let (reason, echoed) = runtime
        .block_on(|cx: Context<u32>| async move {
            let me = cx.addr();
            let sibling = cx.spawn(move |cx: Context<u32>| async move {
                while let Envelope::Msg(n) = cx.recv().await {
                    cx.send(&me, n * 10);
                }
            });
            let (_, monitor) = cx.spawn_monitor(|_: Context<()>| panics_with_code("kaboom", 42));
            let reason = down_reason(&cx, monitor).await;
            cx.send(&sibling, 4);
            let echoed = cx.recv_timeout(PATIENCE).await.and_then(Envelope::into_msg);
            (reason, echoed)
        })
        .unwrap();
    assert_eq!(reason, ExitReason::Panic(Arc::from("kaboom 42")));
    assert_eq!(echoed, Some(40), "the sibling on the shard still runs");
}

#[test]
fn a_panic_with_a_non_string_payload_is_still_a_panic() {
    let runtime = runtime();
    let result = runtime.block_on(|_: Context<()>| async {
        std::panic::panic_any(17_u32);
    });
    assert!(
        matches!(result, Err(BlockOnError::Exited(ExitReason::Panic(_)))),
        "{result:?}"
    );
}

#[test]
fn the_panic_reason_travels_along_links() {
    for place in Where::BOTH {
        let runtime = runtime();
        let (child, trapped, linked_reason) = runtime
            .block_on(move |cx: Context<()>| async move {
                let other = place.placement(&cx);
                // A trapping link receives the panic as an Exit message...
                cx.trap_exit(true);
                let child = cx
                    .spawn_with(
                        SpawnOptions::new().link().placement(other),
                        |_: Context<()>| panics_with_code("linked panic", 1),
                    )
                    .await
                    .unwrap()
                    .addr;
                let trapped = exit_signal(&cx).await;
                // ...and a non-trapping one ends with it.
                let (_, monitor) = cx.spawn_monitor(move |cx: Context<()>| async move {
                    let options = SpawnOptions::new().link().placement(other);
                    let _ = cx
                        .spawn_with(options, |_: Context<()>| {
                            panics_with_code("linked panic", 1)
                        })
                        .await;
                    pending::<()>().await;
                });
                (child.pid(), trapped, down_reason(&cx, monitor).await)
            })
            .unwrap();
        let panic = ExitReason::Panic(Arc::from("linked panic 1"));
        assert_eq!(
            trapped,
            Exit {
                from: child,
                reason: panic.clone()
            },
            "{place:?}"
        );
        assert_eq!(linked_reason, panic, "{place:?}");
    }
}

// ---- helpers ---------------------------------------------------------------

fn runtime() -> Runtime {
    Runtime::builder().shards(2).build().unwrap()
}

/// A pid on `shard` of `cx`'s node that no process has ever had: the last
/// slot of the table, far beyond anything a test spawns.
fn never_spawned<M: Send + 'static>(cx: &Context<M>, shard: ShardId) -> Pid {
    Pid::new(cx.pid().node(), shard, Pid::MAX_SLOTS - 1, 0)
}

/// Spawns, where `place` says, a process that ends at once, waits for its
/// `Down`, and returns its (now dead) pid.
async fn dead_process<M: Send + 'static>(cx: &Context<M>, place: Where) -> Pid {
    let options = SpawnOptions::new().monitor().placement(place.placement(cx));
    let spawned = cx
        .spawn_with(options, |_: Context<()>| async {})
        .await
        .unwrap();
    let reason = down_reason(cx, spawned.monitor.unwrap()).await;
    assert_eq!(reason, ExitReason::Normal);
    spawned.addr.pid()
}

/// Spawns, where `place` says, a process that waits for one message and
/// then ends with `reason`.
async fn ends_when_told<M: Send + 'static>(
    cx: &Context<M>,
    options: SpawnOptions,
    place: Where,
    reason: ExitReason,
) -> foundation::Spawned<()> {
    let options = options.placement(place.placement(cx));
    cx.spawn_with(options, move |cx: Context<()>| async move {
        cx.recv().await;
        reason
    })
    .await
    .unwrap()
}

/// Panics with `what` and `code` in a formatted message.
async fn panics_with_code(what: &'static str, code: u32) {
    panic!("{what} {code}");
}

/// Receives forever, ignoring what arrives.
async fn receive_forever(cx: Context<()>) {
    loop {
        cx.recv().await;
    }
}

/// Forwards every trapped exit signal to `to`.
async fn forward_exits(cx: Context<()>, to: Addr<Exit>) {
    loop {
        if let Envelope::Exit(exit) = cx.recv().await {
            cx.send(&to, exit);
        }
    }
}

/// Reports the reason of every trapped exit signal on `to`.
async fn report_exits(cx: Context<()>, to: mpsc::Sender<Report>) {
    loop {
        if let Envelope::Exit(exit) = cx.recv().await {
            to.send(Report::Trapped(exit.reason)).unwrap();
        }
    }
}

/// Reports every `Down` on `to`.
async fn report_downs(cx: &Context<()>, to: &mpsc::Sender<Report>) {
    loop {
        if let Envelope::Down(down) = cx.recv().await {
            to.send(Report::Down(down.pid, down.reason)).unwrap();
        }
    }
}
