//! Session table lookup cost by receiver index and by virtual address, at 1, 100, 10 000 and
//! 100 000 sessions. Run: `cargo bench --bench session_table -- --warm-up-time 1
//! --measurement-time 3`. Results: docs/benchmarks.md, "Micro-benchmarks (criterion)".
//!
//! Each iteration looks up one key from a fixed pseudo-random sequence of 4096 keys present in
//! the table (not the same key over and over), under one guard pinned outside the loop, as a
//! worker pins one per batch.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use concentrator::proto::keys::PublicKey;
use concentrator::proto::rng::{Random, SeededRandom};
use concentrator::proto::session::Session;
use concentrator::proto::wire::AddressAssignment;
use concentrator::server::session_table::{PeerEntry, SessionTable};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 4] = [1, 100, 10_000, 100_000];
const PROBES: usize = 4096;

fn address(i: usize) -> Ipv4Addr {
    // 10.64.0.0/10 holds 4M addresses: plenty.
    Ipv4Addr::from(0x0a40_0000u32 + i as u32)
}

/// A table of `n` peers, each with one address and one receiver index; returns the indexes.
fn table(n: usize, rng: &mut SeededRandom) -> (SessionTable, Vec<u32>) {
    let t = SessionTable::new();
    let mut indexes = Vec::with_capacity(n);
    for i in 0..n {
        let mut key = [0u8; 32];
        rng.fill(&mut key);
        let entry = Arc::new(PeerEntry::new(
            PublicKey::from_bytes(key),
            Arc::new(Session::new()),
            AddressAssignment {
                ipv4: address(i),
                ipv4_prefix: 10,
                ipv6: None,
                mtu: 1420,
            },
        ));
        t.insert_peer(&entry);
        let index = rng.next_u32();
        t.insert_index(index, &entry);
        indexes.push(index);
    }
    (t, indexes)
}

fn lookups(c: &mut Criterion) {
    let mut rng = SeededRandom(3);
    let mut group = c.benchmark_group("session_table");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let (t, indexes) = table(n, &mut rng);
        let picks: Vec<usize> = (0..PROBES)
            .map(|_| (rng.next_u64() % n as u64) as usize)
            .collect();
        let by_index: Vec<u32> = picks.iter().map(|&i| indexes[i]).collect();
        let by_addr: Vec<IpAddr> = picks.iter().map(|&i| IpAddr::V4(address(i))).collect();
        group.bench_with_input(BenchmarkId::new("by_index", n), &by_index, |b, keys| {
            let snapshot = t.snapshot();
            let guard = snapshot.guard();
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % PROBES;
                black_box(snapshot.by_index(black_box(keys[i]), &guard).is_some())
            });
        });
        group.bench_with_input(BenchmarkId::new("by_address", n), &by_addr, |b, keys| {
            let snapshot = t.snapshot();
            let guard = snapshot.guard();
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % PROBES;
                black_box(snapshot.by_address(black_box(keys[i]), &guard).is_some())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
