//! The backend contract (this module's parent documents it), checked the
//! same way on every backend.
//!
//! Each case runs once per backend in a fresh two-shard runtime whose
//! shards drive that backend: io_uring (skipped, with a note on stderr,
//! where its probe fails) and epoll. Connections cross shards where they
//! can, so that each end is served by a different reactor. Every case has a
//! time limit: a hang fails the test instead of stalling the suite.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::task::Poll;
use std::time::Duration;

use foundation_sched::{oneshot, Context, Placement, Runtime, ShardId, SpawnOptions};

use super::{Backend, Bound, IoOptions, Listener, Reactor, ReceiveBuffers, RecvBuf, Stream};

/// How long one case may take on one backend.
const PATIENCE: Duration = Duration::from_secs(120);

const BIG: usize = 8 << 20;

// ---- the cases -------------------------------------------------------------

#[test]
fn a_connect_is_accepted_across_shards() {
    on_every_backend(
        "connect+accept",
        IoOptions::default(),
        |backend, runtime| {
            let (peer, greeting) = runtime
                .block_on(move |cx: Context<()>| async move {
                    let (listener, addr) = listen(backend)?;
                    let client = spawn_on(&cx, other_shard(&cx), move || async move {
                        let stream = connect(backend, addr).await?;
                        // Established streams stay established.
                        poll_fn(|cx| stream.poll_connected(cx)).await?;
                        send(&stream, b"hello".to_vec()).await?;
                        Ok::<_, io::Error>(())
                    })
                    .await;
                    let (stream, peer) = accept(backend, &listener).await?;
                    // An accepted stream is connected at once.
                    poll_fn(|cx| stream.poll_connected(cx)).await?;
                    let greeting = recv_exact(&stream, 5, 64).await?;
                    client.await.expect("the client reports")?;
                    Ok::<_, io::Error>((peer, greeting))
                })
                .expect("the process returns")
                .expect("no I/O error");
            assert!(peer.ip().is_loopback(), "{peer}");
            assert_ne!(peer.port(), 0);
            assert_eq!(greeting, b"hello");
        },
    );
}

#[test]
fn small_messages_echo() {
    on_every_backend("echo", IoOptions::default(), echo_case);
}

#[test]
fn small_messages_echo_with_zero_copy_sends_and_tiny_buffers() {
    let options = IoOptions {
        send_zc_threshold: 1,
        recv_buffers: 4,
        recv_buffer_size: 64,
        ..IoOptions::default()
    };
    on_every_backend("echo, zero-copy, tiny buffers", options, echo_case);
}

fn echo_case(backend: Io, runtime: &Runtime) {
    const MESSAGES: usize = 500;
    let echoed = runtime
        .block_on(move |cx: Context<()>| async move {
            let (listener, addr) = listen(backend)?;
            let client = spawn_on(&cx, other_shard(&cx), move || async move {
                let stream = connect(backend, addr).await?;
                for i in 0..MESSAGES {
                    let message = pattern(i, 1 + (i * 37) % 300);
                    send(&stream, message.clone()).await?;
                    let echo = recv_exact(&stream, message.len(), 97).await?;
                    assert_eq!(echo, message, "message {i}");
                }
                Ok::<_, io::Error>(())
            })
            .await;
            let (stream, _) = accept(backend, &listener).await?;
            let mut echoed = 0;
            let mut buf = recv_buf(1024);
            loop {
                let n = recv(&stream, &mut buf).await?;
                if n == 0 {
                    break;
                }
                echoed += n;
                send(&stream, buf[..n].to_vec()).await?;
            }
            client.await.expect("the client reports")?;
            Ok::<_, io::Error>(echoed)
        })
        .expect("the process returns")
        .expect("no I/O error");
    let expected: usize = (0..MESSAGES).map(|i| 1 + (i * 37) % 300).sum();
    assert_eq!(echoed, expected);
}

#[test]
fn a_receive_fills_only_its_range_of_the_buffer() {
    on_every_backend("receive range", IoOptions::default(), |backend, runtime| {
        let buf = runtime
            .block_on(move |cx: Context<()>| async move {
                let (listener, addr) = listen(backend)?;
                let client = spawn_on(&cx, other_shard(&cx), move || async move {
                    let stream = connect(backend, addr).await?;
                    send(&stream, b"hello".to_vec()).await?;
                    // Until the other end has read.
                    let mut buf = recv_buf(1);
                    recv(&stream, &mut buf).await
                })
                .await;
                let (stream, _) = accept(backend, &listener).await?;
                let mut buf = recv_buf(64);
                buf.fill(0xee);
                let mut got = 0;
                while got < 5 {
                    let range = 16 + got..32;
                    got += poll_fn(|cx| stream.poll_recv(cx, &mut buf, range.clone())).await?;
                }
                drop(stream);
                client.await.expect("the client reports")?;
                Ok::<_, io::Error>(buf)
            })
            .expect("the process returns")
            .expect("no I/O error");
        assert_eq!(buf.len(), 64, "the buffer comes back whole");
        assert_eq!(&buf[16..21], b"hello");
        assert!(buf[..16].iter().chain(&buf[21..]).all(|&b| b == 0xee));
    });
}

#[test]
fn a_receive_into_no_room_is_refused() {
    on_every_backend(
        "receive without room",
        IoOptions::default(),
        |backend, runtime| {
            let refusals = runtime
                .block_on(move |cx: Context<()>| async move {
                    let (listener, addr) = listen(backend)?;
                    let client = spawn_on(&cx, other_shard(&cx), move || async move {
                        connect(backend, addr).await.map(drop)
                    })
                    .await;
                    let (stream, _) = accept(backend, &listener).await?;
                    let mut buf = recv_buf(16);
                    let mut refusals = Vec::new();
                    for range in [4..4, 8..17, 20..30] {
                        let refused = poll_once(|cx| stream.poll_recv(cx, &mut buf, range.clone()))
                            .await
                            .map(|result| result.map_err(|error| error.kind()));
                        refusals.push(refused);
                    }
                    assert_eq!(buf.len(), 16, "the buffer stays the caller's");
                    client.await.expect("the client reports")?;
                    Ok::<_, io::Error>(refusals)
                })
                .expect("the process returns")
                .expect("no I/O error");
            for refused in refusals {
                assert_eq!(refused, Some(Err(io::ErrorKind::InvalidInput)));
            }
        },
    );
}

#[test]
fn switching_where_a_stream_receives_loses_and_reorders_nothing() {
    on_every_backend(
        "receive mode switches",
        IoOptions::default(),
        |backend, runtime| {
            const LEN: usize = 4 << 20;
            let received = runtime
                .block_on(move |cx: Context<()>| async move {
                    let (listener, addr) = listen(backend)?;
                    let client = spawn_on(&cx, other_shard(&cx), move || async move {
                        let stream = connect(backend, addr).await?;
                        send(&stream, pattern(3, LEN)).await
                    })
                    .await;
                    let (stream, _) = accept(backend, &listener).await?;
                    let mut received = Vec::new();
                    // Shared first, so a multishot receive is armed and
                    // filling buffers when the switch comes.
                    let modes = [ReceiveBuffers::Shared, ReceiveBuffers::InPlace];
                    for (i, &mode) in modes.iter().cycle().enumerate() {
                        if received.len() >= LEN {
                            break;
                        }
                        stream.set_receive_buffers(mode);
                        let piece = (LEN - received.len()).min(100_003 + i);
                        received.extend(recv_exact(&stream, piece, 65_536).await?);
                    }
                    client.await.expect("the client reports")?;
                    Ok::<_, io::Error>(received)
                })
                .expect("the process returns")
                .expect("no I/O error");
            assert!(received == pattern(3, LEN), "the bytes arrive in order");
        },
    );
}

#[test]
fn an_adaptive_stream_receives_in_place_from_its_start_and_shared_once_its_reads_stay_small() {
    on_every_backend(
        "adaptive receives",
        IoOptions::default(),
        |backend, runtime| {
            const LEN: usize = 1 << 20;
            // Small reads in a row that take an adaptive stream back.
            const SMALL_ROUNDS: usize = super::uring::SMALL_READS_TO_SHARE as usize;
            let (at_start, behind, in_place) = runtime
                .block_on(move |cx: Context<()>| async move {
                    let (listener, addr) = listen(backend)?;
                    let client = spawn_on(&cx, other_shard(&cx), move || async move {
                        let stream = connect(backend, addr).await?;
                        send(&stream, pattern(5, LEN)).await?;
                        recv_exact(&stream, 1, 1).await?;
                        for _ in 0..SMALL_ROUNDS {
                            send(&stream, pattern(6, 100)).await?;
                            recv_exact(&stream, 1, 1).await?;
                        }
                        Ok::<_, io::Error>(())
                    })
                    .await;
                    let (stream, _) = accept(backend, &listener).await?;
                    let at_start = stream.receives_in_place();
                    // Let the megabyte pile up in the socket.
                    recv_exact(&stream, 1, 1).await?;
                    cx.sleep(Duration::from_millis(50)).await;
                    let mut received = vec![pattern(5, 1)[0]];
                    let mut behind = false;
                    while received.len() < LEN {
                        let piece = (64 << 10).min(LEN - received.len());
                        received.extend(recv_exact(&stream, piece, piece).await?);
                        behind |= stream.receives_in_place();
                    }
                    assert!(received == pattern(5, LEN), "the bytes arrive in order");
                    send(&stream, vec![1]).await?;
                    // Round trips: reads with room for more than arrives.
                    let mut in_place = Vec::new();
                    for _ in 0..SMALL_ROUNDS {
                        let (mut small, mut buf) = (Vec::new(), recv_buf(4096));
                        while small.len() < 100 {
                            let n = recv(&stream, &mut buf).await?;
                            small.extend_from_slice(&buf[..n]);
                        }
                        assert_eq!(small, pattern(6, 100));
                        in_place.push(stream.receives_in_place());
                        send(&stream, vec![1]).await?;
                    }
                    client.await.expect("the client reports")?;
                    Ok::<_, io::Error>((at_start, behind, in_place))
                })
                .expect("the process returns")
                .expect("no I/O error");
            let caught_up = in_place.last() == Some(&false);
            match (backend.kind, backend.receive) {
                (Backend::IoUring, ReceiveBuffers::Adaptive) => {
                    assert!(at_start, "in place before anything arrived");
                    assert!(behind, "in place while a megabyte waits");
                    assert!(
                        in_place[..SMALL_ROUNDS - 1].iter().all(|&yes| yes),
                        "a few small reads do not make a stream caught up: {in_place:?}"
                    );
                    assert!(caught_up, "shared again after {SMALL_ROUNDS} small reads");
                }
                (Backend::IoUring, ReceiveBuffers::Shared) => {
                    assert!(!at_start && !behind && caught_up);
                }
                _ => assert!(at_start && behind && !caught_up, "in place throughout"),
            }
        },
    );
}

#[test]
fn eight_mebibytes_arrive_exactly_both_ways() {
    on_every_backend("8 MiB", IoOptions::default(), big_transfer_case);
}

#[test]
fn eight_mebibytes_arrive_exactly_through_four_small_buffers() {
    // Four 4 KiB buffers: the multishot receive runs dry (ENOBUFS) and is
    // paused and re-armed over and over.
    let options = IoOptions {
        recv_buffers: 4,
        recv_buffer_size: 4096,
        ..IoOptions::default()
    };
    on_every_backend("8 MiB, 4 buffers", options, big_transfer_case);
}

#[test]
fn eight_mebibytes_arrive_exactly_without_zero_copy() {
    let options = IoOptions {
        send_zc_threshold: usize::MAX,
        ..IoOptions::default()
    };
    on_every_backend("8 MiB, plain send", options, big_transfer_case);
}

#[test]
fn eight_mebibytes_arrive_exactly_with_a_polling_submission_thread() {
    let options = IoOptions {
        sqpoll: true,
        ..IoOptions::default()
    };
    on_every_backend("8 MiB, SQPOLL", options, big_transfer_case);
}

#[test]
fn eight_mebibytes_arrive_exactly_in_small_background_slices() {
    on_every_backend(
        "8 MiB, background",
        IoOptions::default(),
        |backend, runtime| {
            let background = |stream: &Stream| {
                stream.set_background(true);
                stream.set_send_slice(16 * 1024);
            };
            transfer(backend, runtime, background);
        },
    );
}

#[test]
fn eight_mebibytes_arrive_exactly_with_little_unsent_in_the_kernel() {
    // Each send runs into the cap many times: epoll's writes come back
    // short, io_uring's requests wait for room and go on.
    on_every_backend(
        "8 MiB, 16 KiB unsent",
        IoOptions::default(),
        |backend, runtime| {
            let capped = |stream: &Stream| {
                assert_eq!(stream.unsent_low_water().map(Result::ok), Some(Some(0)));
                stream
                    .set_unsent_low_water(16 * 1024)
                    .expect("a TCP socket");
                let cap = stream.unsent_low_water().map(Result::ok);
                assert_eq!(cap, Some(Some(16 * 1024)));
            };
            transfer(backend, runtime, capped);
        },
    );
}

/// Each end sends 8 MiB in one buffer while it receives the other's 8 MiB,
/// reading in odd-sized pieces, then both check every byte.
fn big_transfer_case(backend: Io, runtime: &Runtime) {
    transfer(backend, runtime, |_| {});
}

/// [`big_transfer_case`], with both streams set up by `setup` first.
fn transfer(backend: Io, runtime: &Runtime, setup: fn(&Stream)) {
    runtime
        .block_on(move |cx: Context<()>| async move {
            let (listener, addr) = listen(backend)?;
            let client = spawn_on(&cx, other_shard(&cx), move || async move {
                let stream = connect(backend, addr).await?;
                setup(&stream);
                exchange(&stream, 1, 2).await
            })
            .await;
            let (stream, _) = accept(backend, &listener).await?;
            setup(&stream);
            exchange(&stream, 2, 1).await?;
            client.await.expect("the client reports")
        })
        .expect("the process returns")
        .expect("no I/O error");
}

async fn exchange(stream: &Stream, mine: usize, theirs: usize) -> io::Result<()> {
    let outgoing = pattern(mine, BIG);
    let (sent, received) = join(send(stream, outgoing), recv_exact(stream, BIG, 10_007)).await;
    let sent = sent?;
    assert_eq!(sent.len(), BIG, "the buffer comes back whole");
    let received = received?;
    if let Some(at) = received
        .iter()
        .zip(pattern(theirs, BIG))
        .position(|(a, b)| *a != b)
    {
        panic!("byte {at} differs");
    }
    Ok(())
}

/// How long a test waits for a zero-copy send's notifications, in
/// milliseconds: far longer than a round trip over loopback, even with a
/// delayed acknowledgement.
const NOTIFICATION_WAIT_MS: u32 = 5_000;

#[test]
fn zero_copy_sends_the_kernel_copies_become_plain_sends() {
    on_every_backend("zero-copy copied", zero_copy(), |backend, runtime| {
        let (before, after) = runtime
            .block_on(move |cx: Context<()>| async move {
                let (listener, addr) = listen(backend)?;
                let client = spawn_on(&cx, other_shard(&cx), move || async move {
                    let stream = connect(backend, addr).await?;
                    recv_exact(&stream, 2 * BIG, 65_536).await
                })
                .await;
                let (stream, _) = accept(backend, &listener).await?;
                let before = stream.sends_zero_copy();
                send(&stream, pattern(1, BIG)).await?;
                // The kernel says it copied in the send's notifications,
                // which come once the peer has acknowledged the bytes:
                // possibly after the send is done for its writer.
                for _ in 0..NOTIFICATION_WAIT_MS {
                    if !stream.sends_zero_copy() {
                        break;
                    }
                    cx.sleep(Duration::from_millis(1)).await;
                }
                let after = stream.sends_zero_copy();
                // Still every byte, in order, after the switch.
                send(&stream, pattern(2, BIG)).await?;
                let received = client.await.expect("the client reports")?;
                assert!(received[..BIG] == pattern(1, BIG)[..], "first half differs");
                assert!(
                    received[BIG..] == pattern(2, BIG)[..],
                    "second half differs"
                );
                Ok::<_, io::Error>((before, after))
            })
            .expect("the process returns")
            .expect("no I/O error");
        // Loopback delivers to a local socket, so the kernel copies.
        let zero_copy = backend.kind == Backend::IoUring;
        assert_eq!(before, zero_copy, "before the first send");
        assert!(!after, "after a send over loopback");
    });
}

/// A zero-copy send is done for its writer once the kernel has taken all
/// its bytes, not once the peer has acknowledged them (which its
/// notifications wait for, and a peer may delay by tens of
/// milliseconds); the writer gets a copy of its buffer meanwhile. Here the
/// peer reads nothing until the sends are done: its window closes with
/// most of the bytes still queued in the sending socket, so on io_uring no
/// notification can come before it reads.
#[test]
fn a_zero_copy_send_is_done_before_the_peer_reads() {
    on_every_backend("zero-copy done early", zero_copy(), |backend, runtime| {
        done_before_the_peer_reads(backend, runtime, false);
    });
}

/// As [`a_zero_copy_send_is_done_before_the_peer_reads`], for a writer
/// that does not read what it sent: it gets an empty buffer instead of a
/// copy.
#[test]
fn a_writer_that_does_not_read_what_it_sent_gets_no_copy() {
    on_every_backend("zero-copy unread", zero_copy(), |backend, runtime| {
        done_before_the_peer_reads(backend, runtime, true);
    });
}

fn done_before_the_peer_reads(backend: Io, runtime: &Runtime, unread: bool) {
    const LEN: usize = 1 << 20;
    runtime
        .block_on(move |cx: Context<()>| async move {
            let (listener, addr) = listen(backend)?;
            let (go, start) = oneshot::channel::<()>();
            let client = spawn_on(&cx, other_shard(&cx), move || async move {
                let stream = connect(backend, addr).await?;
                let _ = start.await;
                recv_exact(&stream, 2 * LEN, 65_536).await
            })
            .await;
            let (stream, _) = accept(backend, &listener).await?;
            // Room in the sending socket for what the peer's window will
            // not take.
            stream.set_send_buffer(4 * LEN as u32).transpose()?;
            stream.set_sent_unread(unread);
            let zero_copy = stream.sends_zero_copy();
            let sends = async {
                let first = send(&stream, pattern(1, LEN)).await?;
                send(&stream, pattern(2, LEN)).await?;
                Ok::<_, io::Error>(first)
            };
            let done = select(sends, cx.sleep(Duration::from_secs(2))).await;
            go.send(());
            let first = done.expect("the sends are done before the peer reads")?;
            if unread && zero_copy {
                // The buffer the kernel may still read stays with the send.
                assert!(first.is_empty(), "the zero-copy send's buffer came back");
            } else {
                assert!(first == pattern(1, LEN), "the writer's bytes came back");
            }
            let received = client.await.expect("the client reports")?;
            assert!(received[..LEN] == pattern(1, LEN)[..], "first send differs");
            assert!(
                received[LEN..] == pattern(2, LEN)[..],
                "second send differs"
            );
            Ok::<_, io::Error>(())
        })
        .expect("the process returns")
        .expect("no I/O error");
}

#[test]
fn background_sends_leave_the_shard_only_beside_foreground_traffic() {
    on_every_backend(
        "background sends",
        IoOptions::default(),
        |backend, runtime| {
            let (alone, after_own_send, beside_foreground, workers_idle) = runtime
                .block_on(move |cx: Context<()>| async move {
                    let (listener, addr) = listen(backend)?;
                    let client = spawn_on(&cx, other_shard(&cx), move || async move {
                        let bulk = connect(backend, addr).await?;
                        let urgent = connect(backend, addr).await?;
                        bulk.set_background(true);
                        let alone = bulk.in_background();
                        send(&bulk, pattern(1, 64 << 10)).await?;
                        let after_own_send = bulk.in_background();
                        // Round trips on the other stream are foreground
                        // traffic on the same shard. (Retried: a round trip
                        // counts for a few milliseconds only, and a loaded
                        // machine may hold this process longer than that.)
                        let mut beside_foreground = false;
                        let mut workers_idle = false;
                        for round in 0..100 {
                            send(&urgent, pattern(round, 64)).await?;
                            recv_exact(&urgent, 64, 64).await?;
                            beside_foreground = bulk.in_background();
                            if beside_foreground {
                                // A send in the background, on a worker
                                // thread the shard puts in the idle class.
                                send(&bulk, pattern(round, 64 << 10)).await?;
                                workers_idle = shard_workers_idle() == Some(true);
                                if workers_idle {
                                    break;
                                }
                            }
                        }
                        Ok::<_, io::Error>((alone, after_own_send, beside_foreground, workers_idle))
                    })
                    .await;
                    let (bulk, _) = accept(backend, &listener).await?;
                    let (urgent, _) = accept(backend, &listener).await?;
                    let drain = async {
                        let mut buf = recv_buf(64 << 10);
                        while let Ok(1..) = recv(&bulk, &mut buf).await {}
                    };
                    join(echo(&urgent), drain).await;
                    client.await.expect("the client reports")
                })
                .expect("the process returns")
                .expect("no I/O error");
            assert!(!alone, "nothing to make way for yet");
            assert!(!after_own_send, "its own traffic is not foreground");
            let io_uring = backend.kind == Backend::IoUring;
            assert_eq!(beside_foreground, io_uring, "beside foreground traffic");
            assert_eq!(workers_idle, io_uring, "the workers run in the idle class");
        },
    );
}

#[test]
fn background_receives_in_place_leave_the_shard_beside_foreground_traffic() {
    on_every_backend(
        "background receives",
        IoOptions::default(),
        |backend, runtime| {
            let workers_idle = runtime
                .block_on(move |cx: Context<()>| async move {
                    let (listener, addr) = listen(backend)?;
                    let client = spawn_on(&cx, other_shard(&cx), move || async move {
                        let bulk = connect(backend, addr).await?;
                        let urgent = connect(backend, addr).await?;
                        bulk.set_background(true);
                        // This shard only receives on `bulk`: a worker
                        // thread can only have come from a receive.
                        for round in 0..100 {
                            send(&urgent, pattern(round, 64)).await?;
                            recv_exact(&urgent, 64, 64).await?;
                            if bulk.in_background() {
                                recv_exact(&bulk, 64 << 10, 64 << 10).await?;
                                if shard_workers_idle() == Some(true) {
                                    return Ok::<_, io::Error>(true);
                                }
                            }
                        }
                        Ok(false)
                    })
                    .await;
                    let (bulk, _) = accept(backend, &listener).await?;
                    let (urgent, _) = accept(backend, &listener).await?;
                    // Until the client hangs up.
                    let flood = async { while send(&bulk, pattern(0, 64 << 10)).await.is_ok() {} };
                    join(echo(&urgent), flood).await;
                    client.await.expect("the client reports")
                })
                .expect("the process returns")
                .expect("no I/O error");
            // A multishot receive into shared buffers stays on the shard;
            // an adaptive one goes in place under the flood.
            let in_place =
                backend.kind == Backend::IoUring && backend.receive != ReceiveBuffers::Shared;
            assert_eq!(workers_idle, in_place, "received on idle workers");
        },
    );
}

/// Whether the io_uring worker threads of this thread's ring all run in
/// the `SCHED_IDLE` class; `None` if it has none.
fn shard_workers_idle() -> Option<bool> {
    let mut idle = None;
    for tid in super::uring::ring_workers() {
        // The scheduling policy is the 41st field of `stat`, the 39th
        // after the name in parentheses.
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        let (_, after_name) = stat.rsplit_once(')')?;
        let policy: i32 = after_name.split_whitespace().nth(38)?.parse().ok()?;
        idle = Some(idle.unwrap_or(true) && policy == libc::SCHED_IDLE);
    }
    idle
}

#[test]
fn a_peer_close_reads_as_zero() {
    on_every_backend("peer close", IoOptions::default(), |backend, runtime| {
        let (data, ends) = runtime
            .block_on(move |cx: Context<()>| async move {
                let (listener, addr) = listen(backend)?;
                let server = spawn_on(&cx, other_shard(&cx), move || async move {
                    let stream = connect(backend, addr).await?;
                    send(&stream, b"bye".to_vec()).await?;
                    drop(stream);
                    Ok::<_, io::Error>(())
                })
                .await;
                let (stream, _) = accept(backend, &listener).await?;
                server.await.expect("the peer reports")?;
                let data = recv_exact(&stream, 3, 64).await?;
                let mut buf = recv_buf(16);
                let first = recv(&stream, &mut buf).await?;
                let second = recv(&stream, &mut buf).await?;
                Ok::<_, io::Error>((data, [first, second]))
            })
            .expect("the process returns")
            .expect("no I/O error");
        assert_eq!(data, b"bye");
        assert_eq!(ends, [0, 0], "end of stream, and it stays ended");
    });
}

#[test]
fn a_reset_reads_as_an_error_and_fails_sends() {
    on_every_backend("reset", IoOptions::default(), |backend, runtime| {
        let (read, write) = runtime
            .block_on(move |cx: Context<()>| async move {
                let (listener, addr) = listen(backend)?;
                let client = spawn_on(&cx, other_shard(&cx), move || async move {
                    let stream = connect(backend, addr).await?;
                    send(&stream, vec![7; 1000]).await?;
                    let mut buf = recv_buf(16);
                    let read = recv(&stream, &mut buf).await.map_err(|error| error.kind());
                    let write = send(&stream, vec![8; 1000])
                        .await
                        .map_err(|error| error.kind());
                    Ok::<_, io::Error>((read, write.map(|_| ())))
                })
                .await;
                let (stream, _) = accept(backend, &listener).await?;
                // Closed with the client's bytes unread, the connection is
                // reset rather than shut down.
                cx.sleep(Duration::from_millis(100)).await;
                drop(stream);
                client.await.expect("the client reports")
            })
            .expect("the process returns")
            .expect("no I/O error before the reset");
        assert_eq!(read, Err(io::ErrorKind::ConnectionReset));
        assert!(
            matches!(
                write,
                Err(io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
            ),
            "{write:?}"
        );
    });
}

#[test]
fn a_connect_to_a_closed_port_fails() {
    on_every_backend("closed port", IoOptions::default(), |backend, runtime| {
        let addr = {
            let listener = std::net::TcpListener::bind(localhost()).expect("bind");
            listener.local_addr().expect("local address")
        }; // Closed again: nothing listens there now.
        let outcome = runtime
            .block_on(move |_: Context<()>| async move {
                let stream = reactor(backend).connect(addr, None)?;
                let first = poll_fn(|cx| stream.poll_connected(cx)).await;
                // The outcome stays: asking again does not wait for an
                // event that will never come.
                let again = poll_fn(|cx| stream.poll_connected(cx)).await;
                Ok::<_, io::Error>((first, again))
            })
            .expect("the process returns")
            .expect("the connect starts");
        for error in [outcome.0, outcome.1].map(|outcome| outcome.expect_err("nothing listens")) {
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
        }
    });
}

#[test]
fn a_stream_dialled_with_a_congestion_control_has_it() {
    on_every_backend(
        "congestion control",
        IoOptions::default(),
        |backend, runtime| {
            let name = runtime
                .block_on(move |_: Context<()>| async move {
                    let (listener, addr) = listen(backend)?;
                    let dialled = reactor(backend).connect(addr, Some("reno"))?;
                    poll_fn(|cx| dialled.poll_connected(cx)).await?;
                    let _accepted = accept(backend, &listener).await?;
                    dialled.congestion_control().expect("a TCP socket")
                })
                .expect("the process returns")
                .expect("the stream connects");
            assert_eq!(name, "reno");
        },
    );
}

#[test]
fn dropping_streams_and_listeners_with_operations_in_flight_is_safe() {
    on_every_backend("drop in flight", IoOptions::default(), drop_case);
}

#[test]
fn dropping_streams_with_plain_sends_in_flight_is_safe() {
    let options = IoOptions {
        send_zc_threshold: usize::MAX,
        ..IoOptions::default()
    };
    on_every_backend("drop in flight, plain send", options, drop_case);
}

/// A peer that never reads; streams dropped with a send in flight (at once,
/// or once it is in the kernel), with a receive armed, listeners dropped
/// with an accept pending; then the shards still work, and a runtime shut
/// down with sends in flight stops cleanly.
fn drop_case(backend: Io, runtime: &Runtime) {
    const ROUNDS: usize = 40;
    runtime
        .block_on(move |cx: Context<()>| async move {
            let (listener, addr) = listen(backend)?;
            // This process's shard accepts and holds every connection,
            // reading nothing.
            let (stop, stopped) = oneshot::channel::<()>();
            let held = Rc::new(RefCell::new(Vec::new()));
            let acceptor = {
                let held = held.clone();
                cx.spawn(move |_: Context<()>| async move {
                    let accepting = async {
                        loop {
                            let (stream, _) = accept(backend, &listener).await.expect("accept");
                            held.borrow_mut().push(stream);
                        }
                    };
                    let _: Option<()> = select(accepting, stopped).await;
                })
            };
            let _ = acceptor;
            let rounds = spawn_on(&cx, other_shard(&cx), move || async move {
                for round in 0..ROUNDS {
                    let stream = connect(backend, addr).await?;
                    stream.start_send(pattern(round, if round % 3 == 0 { BIG } else { 64 << 10 }));
                    match round % 4 {
                        0 => {} // Dropped before the send was even submitted.
                        1 => yield_a_while().await,
                        2 => {
                            // A receive armed too.
                            let mut buf = recv_buf(16);
                            let pending =
                                poll_once(|cx| stream.poll_recv(cx, &mut buf, 0..16)).await;
                            assert!(pending.is_none(), "the sink sends nothing");
                            yield_a_while().await;
                        }
                        _ => {
                            let pending = poll_once(|cx| stream.poll_sent(cx)).await;
                            drop(pending);
                        }
                    }
                    drop(stream);
                    // A listener dropped with an accept pending.
                    let (listener, _) = listen(backend)?;
                    assert!(poll_once(|cx| listener.poll_accept(cx)).await.is_none());
                    drop(listener);
                }
                Ok::<_, io::Error>(())
            })
            .await;
            rounds.await.expect("the rounds report")?;
            stop.send(());
            held.borrow_mut().clear();
            Ok::<_, io::Error>(())
        })
        .expect("the process returns")
        .expect("no I/O error");
    // The shards still serve I/O.
    echo_once(backend, runtime);
    // Sends in flight to a peer that never reads when the runtime stops:
    // the reactor's teardown must cancel and wait for them.
    let (ready, is_ready) = oneshot::channel();
    runtime
        .spawn(move |cx: Context<()>| async move {
            let (listener, addr) = listen(backend).expect("listen");
            let _client = cx.spawn(move |_: Context<()>| async move {
                let stream = connect(backend, addr).await.expect("connect");
                stream.start_send(pattern(0, BIG));
                std::future::pending::<()>().await;
            });
            let (stream, _) = accept(backend, &listener).await.expect("accept");
            stream.start_send(pattern(1, BIG));
            ready.send(());
            std::future::pending::<()>().await;
        })
        .expect("spawn");
    is_ready.blocking_recv().expect("the process is ready");
}

fn echo_once(backend: Io, runtime: &Runtime) {
    let echo = runtime
        .block_on(move |cx: Context<()>| async move {
            let (listener, addr) = listen(backend)?;
            let client = spawn_on(&cx, other_shard(&cx), move || async move {
                let stream = connect(backend, addr).await?;
                send(&stream, b"ping".to_vec()).await?;
                recv_exact(&stream, 4, 64).await
            })
            .await;
            let (stream, _) = accept(backend, &listener).await?;
            let ping = recv_exact(&stream, 4, 64).await?;
            send(&stream, ping).await?;
            client.await.expect("the client reports")
        })
        .expect("the process returns")
        .expect("no I/O error");
    assert_eq!(echo, b"ping");
}

#[test]
fn many_streams_at_once() {
    on_every_backend("many streams", IoOptions::default(), many_streams_case);
}

#[test]
fn many_streams_through_a_tiny_ring() {
    // Eight submission entries and 32 completion entries for 400 sockets:
    // the submission queue fills up and completions overflow.
    let options = IoOptions {
        ring_entries: 8,
        ..IoOptions::default()
    };
    on_every_backend("many streams, tiny ring", options, many_streams_case);
}

fn many_streams_case(backend: Io, runtime: &Runtime) {
    const STREAMS: usize = 200;
    let total = runtime
        .block_on(move |cx: Context<()>| async move {
            let (listener, addr) = listen(backend)?;
            // Clients on both shards, each its own process.
            let mut clients = Vec::new();
            for i in 0..STREAMS {
                let shard = if i % 2 == 0 {
                    other_shard(&cx)
                } else {
                    cx.shard()
                };
                clients.push(
                    spawn_on(&cx, shard, move || async move {
                        let stream = connect(backend, addr).await?;
                        let message = pattern(i, 1000 + i);
                        send(&stream, message.clone()).await?;
                        let echo = recv_exact(&stream, message.len(), 333).await?;
                        assert_eq!(echo, message, "stream {i}");
                        Ok::<_, io::Error>(echo.len())
                    })
                    .await,
                );
            }
            // One echo process per accepted stream: most on this shard, every
            // third adopted by the other one.
            for i in 0..STREAMS {
                let (socket, _) = poll_fn(|cx| listener.poll_accept(cx)).await?;
                if i % 3 == 0 {
                    drop(
                        spawn_on(&cx, other_shard(&cx), move || async move {
                            let stream = reactor(backend).adopt(socket)?;
                            echo(&stream).await;
                            Ok::<_, io::Error>(())
                        })
                        .await,
                    );
                } else {
                    let stream = reactor(backend).adopt(socket)?;
                    cx.spawn(move |_: Context<()>| async move { echo(&stream).await });
                }
            }
            let mut total = 0;
            for client in clients {
                total += client.await.expect("the client reports")?;
            }
            Ok::<_, io::Error>(total)
        })
        .expect("the process returns")
        .expect("no I/O error");
    assert_eq!(total, (0..STREAMS).map(|i| 1000 + i).sum::<usize>());
}

/// Sends back what it receives until the peer closes.
async fn echo(stream: &Stream) {
    let mut buf = recv_buf(4096);
    loop {
        match recv(stream, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if send(stream, buf[..n].to_vec()).await.is_err() {
                    break;
                }
            }
        }
    }
}

// ---- harness ---------------------------------------------------------------

/// What a case runs on: a backend and, on io_uring, where its streams
/// receive.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Io {
    kind: Backend,
    receive: ReceiveBuffers,
}

impl std::fmt::Display for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Backend::IoUring => write!(f, "{} receiving {:?}", self.kind, self.receive),
            kind => write!(f, "{kind}"),
        }
    }
}

/// Options under which io_uring sends every byte with `SEND_ZC` (until
/// it finds the kernel copies).
fn zero_copy() -> IoOptions {
    IoOptions {
        send_zc_threshold: 1,
        ..IoOptions::default()
    }
}

/// Runs `case` on every backend available here (io_uring in each receive
/// mode), each in its own runtime
/// and within [`PATIENCE`].
fn on_every_backend(name: &str, options: IoOptions, case: fn(Io, &Runtime)) {
    let every = [
        (Backend::IoUring, ReceiveBuffers::InPlace),
        (Backend::IoUring, ReceiveBuffers::Shared),
        (Backend::IoUring, ReceiveBuffers::Adaptive),
        (Backend::Epoll, ReceiveBuffers::InPlace),
    ];
    for (kind, receive) in every {
        let backend = Io { kind, receive };
        if let Err(error) = kind.probe(&options) {
            eprintln!("note: {name}: skipped on {backend}, whose probe failed: {error}");
            continue;
        }
        let options = options.clone();
        let (done, finished) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            // No idle spin: an idle shard parks in its driver at once, so
            // every wake-up the cases need goes through the driver's wait
            // (the integration suites cover the spinning shard).
            let runtime = Runtime::builder()
                .shards(2)
                .idle_spin(Duration::ZERO)
                .driver(kind.driver_factory(options).expect("a real backend"))
                .build()
                .expect("the runtime builds");
            case(backend, &runtime);
            runtime.shutdown();
            let _ = done.send(());
        });
        match finished.recv_timeout(PATIENCE) {
            Ok(()) => thread.join().expect("the case thread ends"),
            Err(RecvTimeoutError::Disconnected) => {
                if let Err(panic) = thread.join() {
                    eprintln!("{name} failed on {backend}");
                    std::panic::resume_unwind(panic);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("{name} on {backend}: not done after {PATIENCE:?}")
            }
        }
    }
}

/// This shard's reactor, checked to be of the backend under test (a shard
/// whose ring could not be set up falls back to epoll).
fn reactor(backend: Io) -> Rc<Reactor> {
    let reactor = Reactor::current().expect("the shard has a transport reactor");
    let running = match *reactor {
        Reactor::Uring(_) => Backend::IoUring,
        Reactor::Epoll(_) => Backend::Epoll,
        Reactor::Sim(_) => Backend::Simulated,
    };
    assert_eq!(
        running, backend.kind,
        "the shard runs the backend under test"
    );
    reactor
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn other_shard<M: Send + 'static>(cx: &Context<M>) -> ShardId {
    ShardId(1 - cx.shard().0)
}

/// Runs `body` in a new process on `shard`; its result arrives through the
/// returned receiver.
async fn spawn_on<M, T, F, Fut>(cx: &Context<M>, shard: ShardId, body: F) -> oneshot::Receiver<T>
where
    M: Send + 'static,
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let (result, receiver) = oneshot::channel();
    cx.spawn_with(
        SpawnOptions::new().placement(Placement::Shard(shard)),
        move |_: Context<()>| async move { result.send(body().await) },
    )
    .await
    .expect("spawn");
    receiver
}

/// A listener on a free port of the loopback interface, and its address.
fn listen(backend: Io) -> io::Result<(Listener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(localhost())?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((reactor(backend).listener(Bound::Tcp(listener))?, addr))
}

/// The next connection, adopted by this shard.
async fn accept(backend: Io, listener: &Listener) -> io::Result<(Stream, SocketAddr)> {
    let (stream, addr) = poll_fn(|cx| listener.poll_accept(cx)).await?;
    let stream = reactor(backend).adopt(stream)?;
    stream.set_receive_buffers(backend.receive);
    Ok((stream, addr))
}

async fn connect(backend: Io, addr: SocketAddr) -> io::Result<Stream> {
    let stream = reactor(backend).connect(addr, None)?;
    stream.set_receive_buffers(backend.receive);
    poll_fn(|cx| stream.poll_connected(cx)).await?;
    Ok(stream)
}

/// Sends all of `buf`; gives it back.
async fn send(stream: &Stream, buf: Vec<u8>) -> io::Result<Vec<u8>> {
    assert!(!stream.sending());
    stream.start_send(buf);
    assert!(stream.sending());
    let (buf, result) = poll_fn(|cx| stream.poll_sent(cx)).await;
    assert!(!stream.sending());
    result.map(|()| buf)
}

/// Receives into all of `buf`.
async fn recv(stream: &Stream, buf: &mut RecvBuf) -> io::Result<usize> {
    let range = 0..buf.len();
    poll_fn(|cx| stream.poll_recv(cx, buf, range.clone())).await
}

/// A receive buffer of `len` zeros.
fn recv_buf(len: usize) -> RecvBuf {
    let mut buf = RecvBuf::new();
    buf.resize(len, 0);
    buf
}

/// Receives exactly `len` bytes, `piece` at most at a time.
async fn recv_exact(stream: &Stream, len: usize, piece: usize) -> io::Result<Vec<u8>> {
    let mut received = Vec::with_capacity(len);
    let mut buf = recv_buf(piece);
    while received.len() < len {
        let want = piece.min(len - received.len());
        let n = poll_fn(|cx| stream.poll_recv(cx, &mut buf, 0..want)).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&buf[..n]);
    }
    Ok(received)
}

/// `len` bytes that differ with `seed` and with position.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    let mut state = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Polls `poll` once: `Some` if it was ready.
async fn poll_once<T>(mut poll: impl FnMut(&mut std::task::Context<'_>) -> Poll<T>) -> Option<T> {
    poll_fn(|cx| {
        Poll::Ready(match poll(cx) {
            Poll::Ready(value) => Some(value),
            Poll::Pending => None,
        })
    })
    .await
}

/// Lets the shard run its other processes and its driver a few times.
async fn yield_a_while() {
    for _ in 0..3 {
        let mut yielded = false;
        poll_fn(|cx| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
    }
}

/// Runs both futures to completion.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = Box::pin(a);
    let mut b = Box::pin(b);
    let (mut out_a, mut out_b) = (None, None);
    poll_fn(|cx| {
        if out_a.is_none() {
            if let Poll::Ready(value) = a.as_mut().poll(cx) {
                out_a = Some(value);
            }
        }
        if out_b.is_none() {
            if let Poll::Ready(value) = b.as_mut().poll(cx) {
                out_b = Some(value);
            }
        }
        match (out_a.take(), out_b.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                out_a = a;
                out_b = b;
                Poll::Pending
            }
        }
    })
    .await
}

/// Runs both futures until the first ends; `None` if that was `b`.
async fn select<A: Future, B: Future>(a: A, b: B) -> Option<A::Output> {
    let mut a: Pin<Box<A>> = Box::pin(a);
    let mut b: Pin<Box<B>> = Box::pin(b);
    poll_fn(|cx| {
        if let Poll::Ready(value) = a.as_mut().poll(cx) {
            return Poll::Ready(Some(value));
        }
        if b.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}
