//! Session table lookup cost by receiver index and by virtual address, at 1, 100, 10 000 and
//! 100 000 sessions, and with sites: one peer in 100 (at least one) also holds a /24
//! (`allowed_ips`), looked up at an address of a site (`by_address_site`), and the inner-source
//! check for a client's own address and for a site's host (`owns_source_own`,
//! `owns_source_site`). Run: `cargo bench --bench session_table -- --warm-up-time 1
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
use ipnet::{IpNet, Ipv4Net};

const SIZES: [usize; 4] = [1, 100, 10_000, 100_000];
const PROBES: usize = 4096;

fn address(i: usize) -> Ipv4Addr {
    // 10.64.0.0/10 holds 4M addresses: plenty.
    Ipv4Addr::from(0x0a40_0000u32 + i as u32)
}

/// Peer `i`'s site when it has one (every 100th peer): 172.16.0.0/12 holds 4096 /24s.
fn site(i: usize) -> Option<Ipv4Net> {
    i.is_multiple_of(100).then(|| {
        let base = 0xac10_0000u32 + ((i / 100) as u32 % 4096) * 256;
        Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap()
    })
}

/// A table of `n` peers, each with one address and one receiver index, every 100th also with a
/// site; returns the peers and their indexes.
fn table(n: usize, rng: &mut SeededRandom) -> (SessionTable, Vec<Arc<PeerEntry>>, Vec<u32>) {
    let t = SessionTable::new();
    let mut indexes = Vec::with_capacity(n);
    let mut peers = Vec::with_capacity(n);
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
        if let Some(net) = site(i) {
            t.set_allowed_ips(&entry, vec![IpNet::V4(net)]);
        }
        let index = rng.next_u32();
        t.insert_index(index, &entry);
        indexes.push(index);
        peers.push(entry);
    }
    (t, peers, indexes)
}

fn lookups(c: &mut Criterion) {
    let mut rng = SeededRandom(3);
    let mut group = c.benchmark_group("session_table");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let (t, peers, indexes) = table(n, &mut rng);
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
        // Hosts .1 to .254 of the sites, with the peer holding each.
        let sites: Vec<(usize, IpAddr)> = picks
            .iter()
            .map(|&i| {
                let p = (i / 100) * 100;
                let host = 1 + (i % 254) as u32;
                let net = site(p).expect("every 100th peer has a site");
                (
                    p,
                    IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) + host)),
                )
            })
            .collect();
        let site_addrs: Vec<IpAddr> = sites.iter().map(|&(_, a)| a).collect();
        group.bench_with_input(
            BenchmarkId::new("by_address_site", n),
            &site_addrs,
            |b, keys| {
                let snapshot = t.snapshot();
                let guard = snapshot.guard();
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % PROBES;
                    black_box(snapshot.by_address(black_box(keys[i]), &guard).is_some())
                });
            },
        );
        let own: Vec<(usize, IpAddr)> =
            picks.iter().map(|&i| (i, IpAddr::V4(address(i)))).collect();
        for (name, sources) in [("owns_source_own", &own), ("owns_source_site", &sites)] {
            group.bench_with_input(BenchmarkId::new(name, n), sources, |b, sources| {
                let snapshot = t.snapshot();
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % PROBES;
                    let (peer, src) = sources[i];
                    black_box(peers[peer].owns_source(black_box(src), &snapshot))
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
