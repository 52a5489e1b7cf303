//! Prefix table (`route::PrefixTable`): lookup cost at 10, 1 000, 10 000 and 100 000 prefixes
//! of each family, and the cost of one published write with 100 000 present (next to what a
//! table without shared structure would pay for it). Run:
//! `cargo bench --bench prefix_table -- --warm-up-time 1 --measurement-time 2`. Results:
//! docs/benchmarks.md, "Prefix table".
//!
//! The mix is what a headend holds: mostly client host routes (/32, /128) under a hub prefix,
//! 8 % site networks (/24, /64), 1 % larger sites (/16, /48). Each lookup iteration takes the
//! next of 4096 pseudo-random addresses, each inside a pseudo-random prefix of the table (so
//! ~90 % end at the first length probed, the others after one to three misses); "miss" looks
//! up addresses no prefix covers (every length present probed).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use concentrator::proto::rng::{Random, SeededRandom};
use concentrator::route::{Conflict, Owner, PrefixTable, SharedPrefixTable};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];
const PROBES: usize = 4096;

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// The `i`-th prefix of a kind, all disjoint within a kind. Peers are numbered by prefix.
fn v4_prefix(kind: usize, i: usize) -> IpNet {
    let i = i as u32;
    let net = match kind {
        // Clients' addresses in 10.64.0.0/10, under the hub.
        0 => Ipv4Net::new(Ipv4Addr::from(0x0a40_0000 + i), 32),
        // Sites: /24s from 100.64.0.0, /16s from 172.0.0.0.
        1 => Ipv4Net::new(Ipv4Addr::from(0x6440_0000 + (i << 8)), 24),
        2 => Ipv4Net::new(Ipv4Addr::from(0xac00_0000 + (i << 16)), 16),
        _ => Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8),
    };
    net.unwrap().into()
}

fn v6_prefix(kind: usize, i: usize) -> IpNet {
    let i = i as u128;
    let net = match kind {
        0 => Ipv6Net::new(Ipv6Addr::from(0xfd66u128 << 112 | i), 128),
        1 => Ipv6Net::new(Ipv6Addr::from(0xfd20u128 << 112 | i << 64), 64),
        2 => Ipv6Net::new(Ipv6Addr::from(0xfd10u128 << 112 | i << 80), 48),
        _ => Ipv6Net::new(Ipv6Addr::from(0xfd66u128 << 112), 16),
    };
    net.unwrap().into()
}

/// `n` prefixes of `family` in the headend mix: 1 hub, 1 % large sites, 8 % sites, the rest
/// client hosts (at least one of each).
fn prefixes(family: Family, n: usize) -> Vec<IpNet> {
    let large = (n / 100).max(1);
    let sites = (n * 8 / 100).max(1);
    let hosts = n - 1 - large - sites;
    let make = |kind, i| match family {
        Family::V4 => v4_prefix(kind, i),
        Family::V6 => v6_prefix(kind, i),
    };
    let mut all = vec![make(3, 0)];
    all.extend((0..large).map(|i| make(2, i)));
    all.extend((0..sites).map(|i| make(1, i)));
    all.extend((0..hosts).map(|i| make(0, i)));
    all
}

/// The prefixes in a table, each to its own peer: `peer(i)` is the value of the `i`-th.
fn table_of<V: Clone + Owner + std::fmt::Debug>(
    prefixes: &[IpNet],
    peer: impl Fn(usize) -> V,
) -> PrefixTable<V> {
    let mut t = PrefixTable::new();
    for (i, p) in prefixes.iter().enumerate() {
        t.insert(*p, peer(i)).unwrap();
    }
    t
}

fn table(prefixes: &[IpNet]) -> PrefixTable<u32> {
    table_of(prefixes, |i| i as u32)
}

/// A pseudo-random address inside `prefix`.
fn inside(prefix: IpNet, rng: &mut SeededRandom) -> IpAddr {
    match prefix {
        IpNet::V4(p) => {
            let host = rng.next_u32() & !u32::from(p.netmask());
            IpAddr::V4(Ipv4Addr::from(u32::from(p.network()) | host))
        }
        IpNet::V6(p) => {
            let random = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
            let host = random & !u128::from(p.netmask());
            IpAddr::V6(Ipv6Addr::from(u128::from(p.network()) | host))
        }
    }
}

fn lookups(c: &mut Criterion) {
    let mut rng = SeededRandom(7);
    let mut group = c.benchmark_group("prefix_table");
    group.throughput(Throughput::Elements(1));
    for (family, name) in [(Family::V4, "v4"), (Family::V6, "v6")] {
        for n in SIZES {
            let all = prefixes(family, n);
            let t = table(&all);
            assert_eq!(t.len(), n);
            let probes: Vec<IpAddr> = (0..PROBES)
                .map(|_| inside(all[(rng.next_u64() % n as u64) as usize], &mut rng))
                .collect();
            group.bench_with_input(
                BenchmarkId::new(format!("lookup_{name}"), n),
                &probes,
                |b, probes| {
                    // The whole slice is opaque, not each address: `black_box(probes[i])`
                    // would write the address to the stack and read it back in pieces, a
                    // store-forwarding stall a packet's address read does not have.
                    let probes = black_box(probes.as_slice());
                    let mut i = 0;
                    b.iter(|| {
                        i = (i + 1) % PROBES;
                        black_box(t.lookup(probes[i]).is_some())
                    });
                },
            );
            if n == 100_000 {
                let misses: Vec<IpAddr> = (0..PROBES)
                    .map(|i| match family {
                        // 192.0.2.0/24 and 2001:db8::/32 (documentation): in no prefix.
                        Family::V4 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8)),
                        Family::V6 => {
                            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16))
                        }
                    })
                    .collect();
                group.bench_with_input(
                    BenchmarkId::new(format!("miss_{name}"), n),
                    &misses,
                    |b, probes| {
                        let probes = black_box(probes.as_slice());
                        let mut i = 0;
                        b.iter(|| {
                            i = (i + 1) % PROBES;
                            black_box(t.lookup(probes[i]).is_none())
                        });
                    },
                );
            }
        }
    }
    group.finish();
}

/// One peer's change, published: add a host route not in the table, then (next iteration)
/// remove it again, each one `update` (copy, change, swap, free the old).
fn publish_one<V: Clone + Owner + std::fmt::Debug>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    family: Family,
    peer: impl Fn(usize) -> V,
) {
    const N: usize = 100_000;
    let all = prefixes(family, N);
    let shared = SharedPrefixTable::from_table(table_of(&all, &peer));
    let extra = match family {
        Family::V4 => v4_prefix(0, N),
        Family::V6 => v6_prefix(0, N),
    };
    let value = peer(N);
    group.bench_function(BenchmarkId::new(name, N), |b| {
        let mut present = false;
        b.iter(|| {
            shared
                .update(|t| {
                    if present {
                        t.remove(extra);
                    } else {
                        t.insert(extra, value.clone())?;
                    }
                    Ok::<_, Conflict<V>>(())
                })
                .unwrap();
            present = !present;
        });
    });
}

fn writes(c: &mut Criterion) {
    const N: usize = 100_000;
    let mut group = c.benchmark_group("prefix_table_write");
    // The server's values are `Arc<PeerEntry>` (a copied entry costs a reference count, on
    // a cache line of its own) or a peer id (a plain copy).
    publish_one(&mut group, "publish_one_v4_arc", Family::V4, |i| {
        Arc::new(i as u32)
    });
    publish_one(&mut group, "publish_one_v6_arc", Family::V6, |i| {
        Arc::new(i as u32)
    });
    publish_one(&mut group, "publish_one_v4_id", Family::V4, |i| i as u32);
    publish_one(&mut group, "publish_one_v6_id", Family::V6, |i| i as u32);
    // What a table without shared structure would pay per published change instead: a copy
    // of one flat map of all the host routes (plus the change, and freeing the old one) ...
    group.sample_size(10);
    let flat: HashMap<u32, Arc<u32>> = (0..N as u32).map(|i| (i, Arc::new(i))).collect();
    group.bench_function(BenchmarkId::new("flat_copy_v4_arc", N), |b| {
        b.iter(|| {
            let mut copy = flat.clone();
            copy.insert(u32::MAX, Arc::new(0));
            black_box(copy.len())
        });
    });
    let flat: HashMap<u32, u32> = (0..N as u32).map(|i| (i, i)).collect();
    group.bench_function(BenchmarkId::new("flat_copy_v4_id", N), |b| {
        b.iter(|| {
            let mut copy = flat.clone();
            copy.insert(u32::MAX, 0);
            black_box(copy.len())
        });
    });
    // ... or building the whole table again from the configuration.
    let all = prefixes(Family::V4, N);
    group.bench_function(BenchmarkId::new("rebuild_v4", N), |b| {
        b.iter(|| black_box(table_of(&all, |i| Arc::new(i as u32)).len()));
    });
    group.finish();
}

criterion_group!(benches, lookups, writes);
criterion_main!(benches);
