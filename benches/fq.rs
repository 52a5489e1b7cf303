//! The fair queue's cost per packet: one enqueue and one dequeue, in a steady state where the
//! queue holds a backlog (so the DRR and CoDel paths run, not an empty-queue shortcut).
//! Run: `cargo bench --bench fq -- --warm-up-time 1 --measurement-time 3`.
//!
//! - `one_flow`: 1500-byte packets of one flow, 64 queued.
//! - `flows/N`: 1500-byte packets over N flows (round robin), 4 queued per flow.
//! - `super_packets/4`: 64 KiB packets of 4 flows (the default 1514-byte quantum makes each
//!   flow wait ~43 rounds between packets: the DRR loop's worst case).
//! - `sparse_and_bulk`: 4 bulk flows of 64 KiB packets and one 100-byte packet per dequeue of
//!   a sparse flow, so half the dequeues take the new-flows path.
//!
//! Time advances 1 µs per packet, so sojourn times stay below CoDel's target (no drops: the
//! cost measured is the scheduling and accounting, the common case).

use std::hint::black_box;

use concentrator::proto::time::Instant;
use concentrator::tunnel::fq::{Dropped, FairQueue, FqConfig, Packet};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Packets per timed iteration.
const BATCH: u64 = 1000;

fn ignore(_: Dropped) {}

/// Flow `i`'s hash, spread over the 32-bit range like a real hash.
fn hash(i: u32) -> u32 {
    i.wrapping_mul(0x9e37_79b9)
}

/// A queue holding `per_flow` packets of `len` bytes in each of `flows` flows, and the clock.
fn primed(flows: u32, per_flow: u32, len: u32) -> (FairQueue, u64) {
    let mut q = FairQueue::new(FqConfig::new(1 << 16, 1 << 30, 1500)).unwrap();
    let mut slot = 0;
    for _ in 0..per_flow {
        for f in 0..flows {
            let p = Packet {
                slot,
                len,
                flow_hash: hash(f),
                ecn_capable: true,
            };
            q.enqueue(p, Instant::from_nanos(0), &mut ignore);
            slot += 1;
        }
    }
    (q, 0)
}

/// `BATCH` times: enqueue the next packet (flows in turn), dequeue one.
fn steady(q: &mut FairQueue, clock: &mut u64, flows: u32, len: u32, next: &mut u32) {
    for _ in 0..BATCH {
        *clock += 1000;
        let now = Instant::from_nanos(*clock);
        let p = Packet {
            slot: *next,
            len,
            flow_hash: hash(*next % flows),
            ecn_capable: true,
        };
        *next = next.wrapping_add(1);
        q.enqueue(p, now, &mut ignore);
        black_box(q.dequeue(now, &mut ignore));
    }
}

fn fair_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("fq");
    group.throughput(Throughput::Elements(BATCH));
    let (mut q, mut clock) = primed(1, 64, 1500);
    let mut next = 0;
    group.bench_function("one_flow", |b| {
        b.iter(|| steady(&mut q, &mut clock, 1, 1500, &mut next))
    });
    for flows in [16u32, 1024] {
        let (mut q, mut clock) = primed(flows, 4, 1500);
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("flows", flows), &flows, |b, &n| {
            b.iter(|| steady(&mut q, &mut clock, n, 1500, &mut next))
        });
    }
    let (mut q, mut clock) = primed(4, 16, 65_536);
    let mut next = 0;
    group.bench_with_input(BenchmarkId::new("super_packets", 4), &4, |b, &n| {
        b.iter(|| steady(&mut q, &mut clock, n, 65_536, &mut next))
    });
    let (mut q, mut clock) = primed(4, 16, 65_536);
    let mut next = 0u32;
    group.bench_function("sparse_and_bulk", |b| {
        b.iter(|| {
            for _ in 0..BATCH / 2 {
                clock += 1000;
                let now = Instant::from_nanos(clock);
                let bulk = Packet {
                    slot: next,
                    len: 65_536,
                    flow_hash: hash(next % 4),
                    ecn_capable: true,
                };
                let sparse = Packet {
                    slot: next.wrapping_add(1),
                    len: 100,
                    flow_hash: hash(99),
                    ecn_capable: false,
                };
                next = next.wrapping_add(2);
                q.enqueue(bulk, now, &mut ignore);
                q.enqueue(sparse, now, &mut ignore);
                black_box(q.dequeue(now, &mut ignore));
                black_box(q.dequeue(now, &mut ignore));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, fair_queue);
criterion_main!(benches);
