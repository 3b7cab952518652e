//! tokio peers: tasks and `tokio::sync::mpsc`.
//!
//! A tokio task with its own mpsc receiver is the closest tokio has to a
//! green process with a mailbox. Each figure is taken on a fresh runtime
//! (built outside the timed region):
//!
//! - [`Flavor::CurrentThread`] is one thread running every task, the match
//!   for one Foundation shard;
//! - [`Flavor::MultiThread`] has one worker per core (2 here) with work
//!   stealing. Tokio decides where a task runs: two tasks that talk often end
//!   up on one worker (the woken task goes into the waker's LIFO slot), so
//!   "across workers" is what tokio gives, not a pinned placement.
//!
//! Work starts from inside a spawned task, so spawns go through the worker's
//! local queue as they do in applications, not through the injection queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ::tokio::runtime::{Builder, Runtime};
use ::tokio::sync::mpsc;

use super::{Message, CHANNEL_CAPACITY};
use crate::stats::{self, RoundTrips, Stopwatch};

/// Which tokio scheduler to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// One thread runs every task.
    CurrentThread,
    /// One worker thread per core, with work stealing.
    MultiThread,
}

/// Nanoseconds per spawn of an idle task that waits on its own unbounded
/// mpsc receiver (the mailbox, see [`IdleMail`]), counted until every task has been polled once
/// and is parked on its receiver. Stopping them is not timed.
pub(crate) fn spawn_idle(flavor: Flavor, n: usize) -> f64 {
    let rt = runtime(flavor);
    let elapsed = rt.block_on(async move {
        ::tokio::spawn(async move {
            let live = Arc::new(AtomicUsize::new(0));
            let clock = Stopwatch::start();
            let senders = spawn_idle_tasks(n, &live);
            while live.load(Ordering::Acquire) < n {
                ::tokio::task::yield_now().await;
            }
            let elapsed = clock.elapsed();
            drop(senders);
            while live.load(Ordering::Acquire) > 0 {
                ::tokio::task::yield_now().await;
            }
            elapsed
        })
        .await
        .expect("spawning task panicked")
    });
    elapsed.as_nanos() as f64 / n.max(1) as f64
}

/// Spawns `n` idle tasks on a current-thread runtime and leaks the runtime,
/// the tasks and their senders, for an RSS reading of the child process.
pub(crate) fn spawn_rss(n: usize) {
    let rt = runtime(Flavor::CurrentThread);
    let kept = rt.block_on(async move {
        let live = Arc::new(AtomicUsize::new(0));
        let senders = spawn_idle_tasks(n, &live);
        while live.load(Ordering::Acquire) < n {
            ::tokio::task::yield_now().await;
        }
        senders
    });
    std::mem::forget(kept);
    std::mem::forget(rt);
}

/// Messages per second, `msgs` 64-byte messages from one task to another
/// through a bounded mpsc channel.
pub(crate) fn one_to_one(flavor: Flavor, msgs: u64) -> f64 {
    fan_in(flavor, 1, msgs)
}

/// Messages per second into one receiver task from `senders` tasks, each
/// sending `msgs_per_sender` 64-byte messages through one bounded mpsc
/// channel (cloned senders).
pub(crate) fn fan_in(flavor: Flavor, senders: usize, msgs_per_sender: u64) -> f64 {
    let rt = runtime(flavor);
    let total = msgs_per_sender * senders as u64;
    let elapsed = rt.block_on(async move {
        ::tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);
            let clock = Stopwatch::start();
            let receiver = ::tokio::spawn(async move {
                let mut received = 0u64;
                let mut checksum = 0u64;
                while let Some(message) = rx.recv().await {
                    checksum = checksum.wrapping_add(u64::from(message[0]));
                    received += 1;
                }
                std::hint::black_box(checksum);
                received
            });
            for sender in 0..senders {
                let tx = tx.clone();
                ::tokio::spawn(async move {
                    let mut message: Message = [sender as u8; 64];
                    for i in 0..msgs_per_sender {
                        message[1] = i as u8;
                        if tx.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let received = receiver.await.expect("receiver panicked");
            assert_eq!(received, total, "messages lost");
            clock.elapsed()
        })
        .await
        .expect("bench task panicked")
    });
    stats::rate(total, elapsed)
}

/// Round trips of a 64-byte message between two tasks over two mpsc
/// channels of capacity 1; the pinging task times each round.
pub(crate) fn ping_pong(flavor: Flavor, rounds: u64) -> RoundTrips {
    let rt = runtime(flavor);
    let samples = rt.block_on(async move {
        let (ping_tx, mut ping_rx) = mpsc::channel::<Message>(1);
        let (pong_tx, mut pong_rx) = mpsc::channel::<Message>(1);
        let ponger = ::tokio::spawn(async move {
            while let Some(message) = ping_rx.recv().await {
                if pong_tx.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pinger = ::tokio::spawn(async move {
            let warm_up = stats::warm_up_rounds(rounds);
            let mut samples = Vec::with_capacity(rounds as usize);
            let mut message: Message = [0; 64];
            for round in 0..warm_up + rounds {
                message[0] = round as u8;
                let clock = Stopwatch::start();
                ping_tx.send(message).await.expect("ponger gone");
                message = pong_rx.recv().await.expect("ponger gone");
                if round >= warm_up {
                    samples.push(clock.elapsed_ns());
                }
            }
            samples
        });
        let samples = pinger.await.expect("pinger panicked");
        let _ = ponger.await;
        samples
    });
    RoundTrips::from_samples(samples)
}

/// What an idle task's mailbox carries: a pointer to the message, as a
/// process mailbox holds pointers to messages. An unbounded tokio channel
/// allocates its first block of 32 slots up front, so the slot size is part
/// of what an idle task costs: 32 x 8 bytes here, where 32 inline 64-byte
/// messages would add 2 KiB to every task.
type IdleMail = Box<Message>;

fn runtime(flavor: Flavor) -> Runtime {
    let mut builder = match flavor {
        Flavor::CurrentThread => Builder::new_current_thread(),
        Flavor::MultiThread => {
            let mut builder = Builder::new_multi_thread();
            builder.worker_threads(super::cores());
            builder
        }
    };
    builder.build().expect("building a tokio runtime")
}

/// Spawns `n` tasks, each counting itself into `live` when first polled,
/// then waiting on its own unbounded receiver until its sender is dropped,
/// then counting itself out. Returns the senders (the mailboxes' addresses).
fn spawn_idle_tasks(n: usize, live: &Arc<AtomicUsize>) -> Vec<mpsc::UnboundedSender<IdleMail>> {
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, mut rx) = mpsc::unbounded_channel::<IdleMail>();
        let live = Arc::clone(live);
        ::tokio::spawn(async move {
            live.fetch_add(1, Ordering::Release);
            while rx.recv().await.is_some() {}
            live.fetch_sub(1, Ordering::Release);
        });
        senders.push(tx);
    }
    senders
}
