//! Criterion micro-benchmarks of the wire format: what encoding a message
//! as a frame, and checking and reading one received, cost per message on
//! one thread, without a socket or a scheduler in the way. The `remote`
//! case's 64-byte figure is bounded by the sender's per-message work, of
//! which this is one part.
//!
//! ```text
//! cargo bench -p foundation-bench --bench frames
//! ```

use criterion::Criterion;
use foundation::transport::frame::{self, Frame, FrameHeader, FrameKind};
use foundation::{NodeId, Pid, ShardId};

/// The header every frame here carries: node 1's process to node 2's.
fn header() -> FrameHeader {
    FrameHeader {
        flags: 0,
        channel: 1,
        kind: FrameKind::Message,
        length: 0,
        source: Pid::new(NodeId(1), ShardId(0), 1, 1),
        destination: Pid::new(NodeId(2), ShardId(0), 1, 1),
        trace_id: 0,
        sequence: 0,
    }
}

/// Encoding a message of 64 bytes and of 1 KiB (`Vec<u8>`, as the `remote`
/// case sends) appended to a buffer of frames, which is emptied each time
/// it holds 256 KiB, as a lane's batch is.
fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_encode");
    for size in [64_usize, 1024] {
        let message = vec![0xa5_u8; size];
        let mut out = Vec::with_capacity(512 * 1024);
        group.bench_function(format!("vec_{size}B"), |b| {
            b.iter(|| {
                if out.len() >= 256 * 1024 {
                    out.clear();
                }
                frame::encode(header(), std::hint::black_box(&message), &mut out).expect("encodes")
            });
        });
    }
    group.finish();
}

/// Parsing and validating a received 64-byte message's frame in place.
fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_decode");
    let mut bytes = Vec::new();
    frame::encode(header(), &vec![0xa5_u8; 64], &mut bytes).expect("encodes");
    // Received frames start on a 16-byte boundary.
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    group.bench_function("vec_64B", |b| {
        b.iter(|| {
            let (frame, len) =
                Frame::<rkyv::Archived<Vec<u8>>>::parse(std::hint::black_box(&aligned), u32::MAX)
                    .expect("a whole frame");
            (frame.payload.len(), len)
        });
    });
    group.finish();
}

// `criterion_group!` would generate an undocumented `pub fn`, which the
// workspace lints reject (see `channels.rs`).
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    encode(&mut criterion);
    decode(&mut criterion);
    criterion.final_summary();
}
