//! crossbeam-channel peers: messages between OS threads.
//!
//! No scheduler sits between sender and receiver here, only the channel and
//! the kernel's thread parking, so these figures are the floor (throughput)
//! and the parking cost (latency) of moving a message across cores. The
//! threads are not pinned; with two cores the kernel keeps them apart.

use std::sync::Barrier;
use std::thread;

use crossbeam_channel::{Receiver, Sender};

use super::{Message, CHANNEL_CAPACITY};
use crate::stats::{self, RoundTrips, Stopwatch};

/// Which crossbeam channel carries the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capacity {
    /// `bounded(CHANNEL_CAPACITY)`: the sender blocks when it is full.
    Bounded,
    /// `unbounded()`: the sender never blocks, the queue grows.
    Unbounded,
}

/// Messages per second, `msgs` 64-byte messages from one thread to another.
pub(crate) fn one_to_one(capacity: Capacity, msgs: u64) -> f64 {
    fan_in(capacity, 1, msgs)
}

/// Messages per second into the receiving thread from `senders` threads,
/// each sending `msgs_per_sender` 64-byte messages through one channel.
///
/// The clock starts when every thread is up (a barrier), so thread creation
/// is not counted.
pub(crate) fn fan_in(capacity: Capacity, senders: usize, msgs_per_sender: u64) -> f64 {
    let (tx, rx) = channel(capacity);
    let start = Barrier::new(senders + 1);
    let total = msgs_per_sender * senders as u64;
    let elapsed = thread::scope(|scope| {
        for sender in 0..senders {
            let tx = tx.clone();
            let start = &start;
            scope.spawn(move || {
                start.wait();
                let mut message: Message = [sender as u8; 64];
                for i in 0..msgs_per_sender {
                    message[1] = i as u8;
                    if tx.send(message).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        start.wait();
        let clock = Stopwatch::start();
        let mut received = 0u64;
        let mut checksum = 0u64;
        for message in rx.iter() {
            checksum = checksum.wrapping_add(u64::from(message[0]));
            received += 1;
        }
        let elapsed = clock.elapsed();
        std::hint::black_box(checksum);
        assert_eq!(received, total, "messages lost");
        elapsed
    });
    stats::rate(total, elapsed)
}

/// Round trips of a 64-byte message between this thread and another over two
/// `bounded(1)` channels; this thread times each round.
pub(crate) fn ping_pong(rounds: u64) -> RoundTrips {
    let (ping_tx, ping_rx) = crossbeam_channel::bounded::<Message>(1);
    let (pong_tx, pong_rx) = crossbeam_channel::bounded::<Message>(1);
    thread::scope(|scope| {
        scope.spawn(move || {
            for message in ping_rx.iter() {
                if pong_tx.send(message).is_err() {
                    break;
                }
            }
        });
        let warm_up = stats::warm_up_rounds(rounds);
        let mut samples = Vec::with_capacity(rounds as usize);
        let mut message: Message = [0; 64];
        for round in 0..warm_up + rounds {
            message[0] = round as u8;
            let clock = Stopwatch::start();
            ping_tx.send(message).expect("ponger gone");
            message = pong_rx.recv().expect("ponger gone");
            if round >= warm_up {
                samples.push(clock.elapsed_ns());
            }
        }
        drop(ping_tx);
        RoundTrips::from_samples(samples)
    })
}

fn channel(capacity: Capacity) -> (Sender<Message>, Receiver<Message>) {
    match capacity {
        Capacity::Bounded => crossbeam_channel::bounded(CHANNEL_CAPACITY),
        Capacity::Unbounded => crossbeam_channel::unbounded(),
    }
}
