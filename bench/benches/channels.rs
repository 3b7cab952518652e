//! Criterion micro-benchmarks of the peers' channels: the cost of one
//! message through a queue, with no thread hand-off or wake-up in the way.
//!
//! Each iteration sends one 64-byte message and receives it on the same
//! thread, so the figure is the queue's own cost (enqueue, dequeue, the
//! copy). Foundation's mailbox and cross-shard ring join here beside them.
//!
//! ```text
//! cargo bench -p foundation-bench --bench channels
//! ```

use criterion::Criterion;

/// The message size every foundation-bench figure uses.
type Message = [u8; 64];

/// crossbeam-channel send then recv on one thread, bounded and unbounded.
fn crossbeam(c: &mut Criterion) {
    let mut group = c.benchmark_group("crossbeam");
    let (tx, rx) = crossbeam_channel::bounded::<Message>(1024);
    group.bench_function("bounded_send_recv", |b| {
        let mut message: Message = [0; 64];
        b.iter(|| {
            message[0] = message[0].wrapping_add(1);
            tx.send(std::hint::black_box(message))
                .expect("receiver alive");
            std::hint::black_box(rx.recv().expect("sender alive"))
        });
    });
    let (tx, rx) = crossbeam_channel::unbounded::<Message>();
    group.bench_function("unbounded_send_recv", |b| {
        let mut message: Message = [0; 64];
        b.iter(|| {
            message[0] = message[0].wrapping_add(1);
            tx.send(std::hint::black_box(message))
                .expect("receiver alive");
            std::hint::black_box(rx.recv().expect("sender alive"))
        });
    });
    group.finish();
}

/// tokio mpsc try_send then try_recv on one thread, bounded and unbounded.
fn tokio_mpsc(c: &mut Criterion) {
    let mut group = c.benchmark_group("tokio_mpsc");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(1024);
    group.bench_function("bounded_try_send_try_recv", |b| {
        let mut message: Message = [0; 64];
        b.iter(|| {
            message[0] = message[0].wrapping_add(1);
            tx.try_send(std::hint::black_box(message))
                .expect("room in channel");
            std::hint::black_box(rx.try_recv().expect("message queued"))
        });
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
    group.bench_function("unbounded_send_try_recv", |b| {
        let mut message: Message = [0; 64];
        b.iter(|| {
            message[0] = message[0].wrapping_add(1);
            tx.send(std::hint::black_box(message))
                .expect("receiver alive");
            std::hint::black_box(rx.try_recv().expect("message queued"))
        });
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out: the
// macros generate an undocumented `pub fn`, which the workspace lints reject.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    crossbeam(&mut criterion);
    tokio_mpsc(&mut criterion);
    criterion.final_summary();
}
