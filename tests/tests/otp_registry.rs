//! Names and process groups (`foundation::registry`).

use std::time::Duration;

use foundation::registry::{self, Name, RegistryError};
use foundation::{Context, Envelope, ExitReason, Pid, Placement, Runtime, ShardId, SpawnOptions};

fn runtime() -> Runtime {
    Runtime::builder().shards(2).build().unwrap()
}

/// Waits, boundedly, until `done` holds.
async fn eventually<M: Send + 'static>(cx: &Context<M>, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if done() {
            return true;
        }
        cx.sleep(Duration::from_millis(1)).await;
    }
    false
}

async fn idle(cx: Context<u32>) {
    while let Envelope::Msg(_) = cx.recv().await {}
}

#[test]
fn a_name_finds_its_process_typed_and_a_wrong_type_is_refused() {
    let runtime = runtime();
    let (found, wrong, missing) = runtime
        .block_on(|cx: Context<()>| async move {
            let server = cx.spawn(idle);
            registry::register(&cx, Name::local("server"), &server).unwrap();
            let found = registry::whereis::<u32, _>(&cx, &Name::local("server")).map(|a| a.pid());
            let wrong =
                registry::whereis::<String, _>(&cx, &Name::local("server")).map(|a| a.pid());
            let missing = registry::whereis::<u32, _>(&cx, &Name::local("nobody")).map(|a| a.pid());
            assert_eq!(found, Ok(server.pid()));
            (found, wrong, missing)
        })
        .unwrap();
    assert!(found.is_ok());
    assert_eq!(wrong, Err(RegistryError::WrongType(Name::local("server"))));
    assert_eq!(
        missing,
        Err(RegistryError::NotRegistered(Name::local("nobody")))
    );
}

#[test]
fn a_taken_name_and_a_second_name_are_refused() {
    let runtime = runtime();
    runtime
        .block_on(|cx: Context<()>| async move {
            let first = cx.spawn(idle);
            let second = cx.spawn(idle);
            registry::register(&cx, Name::local("db"), &first).unwrap();
            assert_eq!(
                registry::register(&cx, Name::local("db"), &second),
                Err(RegistryError::NameTaken {
                    name: Name::local("db"),
                    holder: first.pid()
                })
            );
            assert_eq!(
                registry::register(&cx, Name::local("other"), &first),
                Err(RegistryError::AlreadyNamed {
                    pid: first.pid(),
                    name: Name::local("db")
                })
            );
            assert!(registry::unregister(&cx, &Name::local("db")));
            assert!(!registry::unregister(&cx, &Name::local("db")));
            registry::register(&cx, Name::local("db"), &second).unwrap();
            assert_eq!(
                registry::whereis_pid(&cx, &Name::local("db")),
                Some(second.pid())
            );
        })
        .unwrap();
}

#[test]
fn a_name_is_removed_when_its_process_ends_on_either_shard() {
    let runtime = runtime();
    runtime
        .block_on(|cx: Context<()>| async move {
            for shard in [cx.shard(), ShardId(1 - cx.shard().0)] {
                let options = SpawnOptions::new().placement(Placement::Shard(shard));
                let worker = cx.spawn_with(options, idle).await.unwrap().addr;
                let name = Name::local(format!("worker-{}", shard.0));
                registry::register(&cx, name.clone(), &worker).unwrap();
                cx.exit(worker.pid(), ExitReason::error("done"));
                let gone = eventually(&cx, || registry::whereis_pid(&cx, &name).is_none()).await;
                assert!(gone, "the name outlived its process on shard {}", shard.0);
                assert!(!registry::registered(&cx).contains(&name));
            }
        })
        .unwrap();
}

#[test]
fn the_exit_of_an_old_holder_does_not_remove_a_new_holders_name() {
    let runtime = runtime();
    runtime
        .block_on(|cx: Context<()>| async move {
            let old = cx.spawn(idle);
            let new = cx.spawn(idle);
            registry::register(&cx, Name::local("svc"), &old).unwrap();
            registry::unregister(&cx, &Name::local("svc"));
            registry::register(&cx, Name::local("svc"), &new).unwrap();
            cx.kill(old.pid());
            cx.sleep(Duration::from_millis(20)).await;
            assert_eq!(
                registry::whereis_pid(&cx, &Name::local("svc")),
                Some(new.pid())
            );
        })
        .unwrap();
}

#[test]
fn groups_hold_members_of_any_type_and_lose_them_when_they_end() {
    let runtime = runtime();
    runtime
        .block_on(|cx: Context<()>| async move {
            let group = Name::local("workers");
            let a = cx.spawn(idle).pid();
            let b = cx
                .spawn_with(
                    SpawnOptions::new().placement(Placement::Shard(ShardId(1 - cx.shard().0))),
                    |cx: Context<String>| async move { while let Envelope::Msg(_) = cx.recv().await {} },
                )
                .await
                .unwrap()
                .addr
                .pid();
            registry::join(&cx, group.clone(), a);
            registry::join(&cx, group.clone(), b);
            registry::join(&cx, group.clone(), b);
            let mut expected: Vec<Pid> = vec![a, b];
            expected.sort();
            assert_eq!(registry::members(&cx, &group), expected);

            assert!(registry::leave(&cx, &group, a));
            assert!(!registry::leave(&cx, &group, a));
            assert_eq!(registry::members(&cx, &group), vec![b]);

            cx.kill(b);
            let empty = eventually(&cx, || registry::members(&cx, &group).is_empty()).await;
            assert!(empty, "a dead member stayed in its group");
        })
        .unwrap();
}

#[test]
fn registering_a_dead_process_leaves_no_name() {
    let runtime = runtime();
    runtime
        .block_on(|cx: Context<()>| async move {
            let worker = cx.spawn(|_: Context<u32>| async {});
            cx.sleep(Duration::from_millis(10)).await;
            registry::register(&cx, Name::local("ghost"), &worker).unwrap();
            let gone = eventually(&cx, || {
                registry::whereis_pid(&cx, &Name::local("ghost")).is_none()
            })
            .await;
            assert!(gone);
        })
        .unwrap();
}
