use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn longest_prefix_wins_hub_and_site() {
    let mut t = PrefixTable::new();
    t.insert(net("10.0.0.0/8"), 1u32).unwrap();
    t.insert(net("10.99.0.0/24"), 2).unwrap();
    assert_eq!(t.lookup(ip("10.99.0.5")), Some(&2));
    assert_eq!(t.lookup(ip("10.1.2.3")), Some(&1));
    assert_eq!(t.lookup(ip("10.99.1.5")), Some(&1), "just outside the site");
    assert_eq!(t.lookup(ip("11.0.0.1")), None);
    assert_eq!(
        t.longest_match(ip("10.99.0.5")),
        Some((net("10.99.0.0/24"), &2))
    );
    assert_eq!(
        t.longest_match(ip("10.1.2.3")),
        Some((net("10.0.0.0/8"), &1))
    );
    // Removing the site's prefix hands its addresses back to the hub.
    assert_eq!(t.remove(net("10.99.0.0/24")), Some(2));
    assert_eq!(t.lookup(ip("10.99.0.5")), Some(&1));
    assert_eq!(t.len(), 1);
    assert_eq!(t.v4.lengths_present(), 1, "an emptied length is not probed");
}

#[test]
fn default_and_host_routes_stay_in_their_family() {
    let mut t = PrefixTable::new();
    t.insert(net("0.0.0.0/0"), 1u32).unwrap();
    t.insert(net("10.0.0.1/32"), 2).unwrap();
    t.insert(net("::/0"), 3).unwrap();
    t.insert(net("fd00::1/128"), 4).unwrap();
    assert_eq!(t.lookup(ip("10.0.0.1")), Some(&2));
    assert_eq!(t.lookup(ip("10.0.0.2")), Some(&1));
    assert_eq!(t.lookup(ip("255.255.255.255")), Some(&1));
    assert_eq!(t.lookup(ip("fd00::1")), Some(&4));
    assert_eq!(t.lookup(ip("fd00::2")), Some(&3));
    assert_eq!(
        t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
        Some(&3)
    );
    assert_eq!(t.lookup_v4(Ipv4Addr::new(10, 0, 0, 1)), Some(&2));
    assert_eq!(
        t.lookup_v6("fd00::1".parse::<Ipv6Addr>().unwrap()),
        Some(&4)
    );

    t.remove(net("0.0.0.0/0"));
    assert_eq!(t.lookup(ip("10.0.0.2")), None, "::/0 must not match IPv4");
    // An IPv4-mapped IPv6 address is an IPv6 address here.
    assert_eq!(t.lookup(ip("::ffff:10.0.0.1")), Some(&3));
    t.remove(net("::/0"));
    assert_eq!(t.lookup(ip("fd00::2")), None);
    assert_eq!(t.lookup(ip("::ffff:10.0.0.1")), None);
    assert_eq!(t.len(), 2);
}

#[test]
fn prefixes_are_stored_with_host_bits_zeroed() {
    assert_eq!(normalize(net("10.99.0.7/24")), net("10.99.0.0/24"));
    assert_eq!(normalize(net("fd99::1/48")), net("fd99::/48"));
    let mut t = PrefixTable::new();
    t.insert(net("10.99.0.7/24"), 1u32).unwrap();
    t.insert(net("fd99::1/48"), 2).unwrap();
    assert_eq!(t.lookup_exact(net("10.99.0.0/24")), Some(&1));
    assert_eq!(t.lookup_exact(net("10.99.0.200/24")), Some(&1));
    assert_eq!(
        t.lookup_exact(net("10.99.0.0/25")),
        None,
        "exact means exact"
    );
    let mut all: Vec<_> = t.iter().map(|(p, v)| (p, *v)).collect();
    all.sort();
    assert_eq!(all, vec![(net("10.99.0.0/24"), 1), (net("fd99::/48"), 2)]);
    assert_eq!(t.remove(net("10.99.0.9/24")), Some(1));
}

#[test]
fn the_same_prefix_for_another_owner_is_refused() {
    let mut t = PrefixTable::new();
    t.insert(net("10.99.0.0/24"), 1u32).unwrap();
    let err = t.insert(net("10.99.0.9/24"), 2).unwrap_err();
    assert_eq!(
        err,
        Conflict {
            prefix: net("10.99.0.0/24"),
            holder: 1
        }
    );
    assert!(
        err.to_string()
            .starts_with("10.99.0.0/24 is already routed"),
        "{err}"
    );
    assert_eq!(t.lookup(ip("10.99.0.1")), Some(&1), "the holder keeps it");
    // The owner inserting its own prefix again changes nothing.
    t.insert(net("10.99.0.0/24"), 1).unwrap();
    assert_eq!(t.len(), 1);
    // Overlaps of another length are not conflicts.
    t.insert(net("10.99.0.0/25"), 2).unwrap();
    t.insert(net("10.99.0.0/23"), 3).unwrap();
    assert_eq!(t.len(), 3);
}

#[test]
fn shared_entries_are_owners_by_identity() {
    let a = Arc::new(String::from("peer"));
    let twin = Arc::new(String::from("peer"));
    let mut t = PrefixTable::new();
    t.insert(net("fd99::/48"), a.clone()).unwrap();
    t.insert(net("fd99::/48"), a.clone()).unwrap();
    let err = t.insert(net("fd99::/48"), twin).unwrap_err();
    assert!(Arc::ptr_eq(&err.holder, &a), "equal contents, other peer");
}

#[test]
fn remove_if_leaves_a_prefix_that_moved_to_another_peer() {
    let mut t = PrefixTable::new();
    let prefix = net("10.99.0.0/24");
    t.insert(prefix, 1u32).unwrap();
    // A reload moves the prefix from peer 1 to peer 2, then retires peer 1's old prefixes.
    assert_eq!(t.replace(prefix, 2), Some(1));
    assert_eq!(t.remove_if(prefix, |v| v.same_owner(&1)), None);
    assert_eq!(t.lookup(ip("10.99.0.1")), Some(&2));
    assert_eq!(t.remove_if(prefix, |v| v.same_owner(&2)), Some(2));
    assert!(t.is_empty());
    assert_eq!(t.remove(prefix), None);
    assert_eq!(t.remove_if(net("10.0.0.0/8"), |_| true), None);
}

#[test]
fn copies_stay_as_they_were_while_shards_multiply() {
    // Far past one shard at /32 (4 prefixes in tests, 1024 otherwise), so the length's shard
    // count doubles many times while older copies still share the shards.
    const N: u32 = 6000;
    let host = |i: u32| IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + i)));
    let mut t = PrefixTable::new();
    t.insert(net("10.0.0.0/8"), u32::MAX).unwrap();
    let mut copies = Vec::new();
    for i in 0..N {
        if i % 1500 == 0 {
            copies.push((i, t.clone()));
        }
        t.insert(host(i), i).unwrap();
    }
    // Change every prefix of the newest table: the copies must not notice.
    for i in 0..N {
        if i % 2 == 0 {
            assert_eq!(t.remove(host(i)), Some(i));
        } else {
            assert_eq!(t.replace(host(i), i + N), Some(i));
        }
    }
    assert_eq!(t.len(), 1 + N as usize / 2);
    for (taken_at, copy) in &copies {
        assert_eq!(copy.len(), 1 + *taken_at as usize);
        for i in 0..N {
            let expected = if i < *taken_at { i } else { u32::MAX };
            assert_eq!(
                copy.lookup(host(i).addr()),
                Some(&expected),
                "copy at {taken_at}"
            );
        }
    }
    for i in 0..N {
        let expected = if i % 2 == 0 { u32::MAX } else { i + N };
        assert_eq!(t.lookup(host(i).addr()), Some(&expected));
    }
}

#[test]
fn a_batch_is_published_whole_or_not_at_all() {
    let shared = SharedPrefixTable::new();
    shared
        .update(|t| {
            t.insert(net("10.0.0.0/8"), 1u32)?;
            t.insert(net("10.99.0.0/24"), 2)
        })
        .unwrap();
    let before = shared.snapshot();
    let err = shared
        .update(|t| {
            t.insert(net("10.98.0.0/24"), 3)?;
            t.insert(net("10.99.0.0/24"), 3)
        })
        .unwrap_err();
    assert_eq!(err.holder, 2);
    let after = shared.snapshot();
    assert_eq!(
        after.lookup_exact(net("10.98.0.0/24")),
        None,
        "half a batch"
    );
    assert_eq!(after.len(), 2);

    shared
        .update(|t| -> Result<(), Conflict<u32>> {
            t.remove(net("10.99.0.0/24"));
            Ok(())
        })
        .unwrap();
    assert_eq!(shared.snapshot().lookup(ip("10.99.0.1")), Some(&1));
    assert_eq!(shared.load().lookup(ip("10.99.0.1")), Some(&1));
    assert_eq!(
        before.lookup(ip("10.99.0.1")),
        Some(&2),
        "a held snapshot stays"
    );
}

#[test]
fn readers_never_see_a_moving_prefix_unrouted() {
    // The hub (0) must never answer for the site's address: each move of the site's prefix
    // from peer 1 to peer 2 and back is one batch.
    let shared = Arc::new(SharedPrefixTable::new());
    shared
        .update(|t| {
            t.insert(net("10.0.0.0/8"), 0u32)?;
            t.insert(net("10.99.0.0/24"), 1)
        })
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicU64::new(0));
    let reader = {
        let (shared, done, lookups) = (shared.clone(), done.clone(), lookups.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                let batch = shared.snapshot();
                for _ in 0..64 {
                    let got = batch.lookup(ip("10.99.0.5")).copied();
                    assert!(matches!(got, Some(1 | 2)), "saw {got:?}");
                }
                lookups.fetch_add(64, Ordering::Relaxed);
            }
        })
    };
    for round in 0..2000u32 {
        let (from, to) = if round % 2 == 0 { (1, 2) } else { (2, 1) };
        shared
            .update(|t| {
                assert_eq!(t.remove_if(net("10.99.0.0/24"), |v| *v == from), Some(from));
                t.insert(net("10.99.0.0/24"), to)
            })
            .unwrap();
    }
    done.store(true, Ordering::Relaxed);
    reader
        .join()
        .expect("the reader saw the site's prefix unrouted");
    assert!(lookups.load(Ordering::Relaxed) > 0);
}

/// The naive model: a list of (normalized prefix, owner), longest match by scanning.
#[derive(Clone, Debug, Default)]
struct Model(Vec<(IpNet, u8)>);

impl Model {
    fn position(&self, prefix: IpNet) -> Option<usize> {
        self.0.iter().position(|(p, _)| *p == prefix.trunc())
    }

    fn insert(&mut self, prefix: IpNet, value: u8) -> Result<(), Conflict<u8>> {
        match self.position(prefix) {
            Some(i) if self.0[i].1 == value => Ok(()),
            Some(i) => Err(Conflict {
                prefix: prefix.trunc(),
                holder: self.0[i].1,
            }),
            None => {
                self.0.push((prefix.trunc(), value));
                Ok(())
            }
        }
    }

    fn replace(&mut self, prefix: IpNet, value: u8) -> Option<u8> {
        match self.position(prefix) {
            Some(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            None => {
                self.0.push((prefix.trunc(), value));
                None
            }
        }
    }

    fn remove_if(&mut self, prefix: IpNet, pred: impl FnOnce(&u8) -> bool) -> Option<u8> {
        let i = self.position(prefix)?;
        pred(&self.0[i].1).then(|| self.0.swap_remove(i).1)
    }

    fn longest_match(&self, addr: IpAddr) -> Option<(IpNet, &u8)> {
        self.0
            .iter()
            .filter(|(p, _)| p.contains(&addr))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(p, v)| (*p, v))
    }

    fn sorted(&self) -> Vec<(IpNet, u8)> {
        let mut all = self.0.clone();
        all.sort();
        all
    }
}

fn sorted(t: &PrefixTable<u8>) -> Vec<(IpNet, u8)> {
    let mut all: Vec<_> = t.iter().map(|(p, v)| (p, *v)).collect();
    all.sort();
    all
}

/// Addresses crowded into a few bits, so that prefixes overlap and collide often, plus any
/// address at all.
fn v4_addr() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => (0u32..4, 0u32..4, 0u32..4)
            .prop_map(|(a, b, c)| 0x0a00_0000 | a << 16 | b << 8 | c),
        1 => any::<u32>(),
    ]
}

fn v6_addr() -> impl Strategy<Value = u128> {
    prop_oneof![
        3 => (0u128..4, 0u128..4, 0u128..4)
            .prop_map(|(a, b, c)| 0xfd00u128 << 112 | a << 80 | b << 64 | c),
        1 => any::<u128>(),
    ]
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        v4_addr().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        v6_addr().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn prefix() -> impl Strategy<Value = IpNet> {
    let v4_len = prop_oneof![Just(0u8), Just(32), Just(24), 0u8..=32];
    let v6_len = prop_oneof![Just(0u8), Just(128), Just(48), Just(64), 0u8..=128];
    // Host bits are left set on purpose: the table must normalize.
    prop_oneof![
        (v4_addr(), v4_len).prop_map(|(a, len)| IpNet::new_assert(Ipv4Addr::from(a).into(), len)),
        (v6_addr(), v6_len).prop_map(|(a, len)| IpNet::new_assert(Ipv6Addr::from(a).into(), len)),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Insert(IpNet, u8),
    Replace(IpNet, u8),
    Remove(IpNet),
    RemoveIf(IpNet, u8),
    Lookup(IpAddr),
    Exact(IpNet),
    Copy,
}

fn op() -> impl Strategy<Value = Op> {
    // Few owners, so that the same prefix often comes from another owner.
    let owner = 0u8..4;
    prop_oneof![
        4 => (prefix(), owner.clone()).prop_map(|(p, v)| Op::Insert(p, v)),
        1 => (prefix(), owner.clone()).prop_map(|(p, v)| Op::Replace(p, v)),
        1 => prefix().prop_map(Op::Remove),
        1 => (prefix(), owner).prop_map(|(p, v)| Op::RemoveIf(p, v)),
        4 => addr().prop_map(Op::Lookup),
        1 => prefix().prop_map(Op::Exact),
        1 => Just(Op::Copy),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn table_follows_the_naive_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut table = PrefixTable::new();
        let mut model = Model::default();
        let mut copies = Vec::new();
        for op in ops {
            match op {
                Op::Insert(p, v) => prop_assert_eq!(table.insert(p, v), model.insert(p, v)),
                Op::Replace(p, v) => prop_assert_eq!(table.replace(p, v), model.replace(p, v)),
                Op::Remove(p) => prop_assert_eq!(table.remove(p), model.remove_if(p, |_| true)),
                Op::RemoveIf(p, v) => prop_assert_eq!(
                    table.remove_if(p, |x| *x == v),
                    model.remove_if(p, |x| *x == v)
                ),
                Op::Lookup(a) => {
                    prop_assert_eq!(table.longest_match(a), model.longest_match(a));
                    prop_assert_eq!(table.lookup(a), model.longest_match(a).map(|(_, v)| v));
                }
                Op::Exact(p) => prop_assert_eq!(
                    table.lookup_exact(p),
                    model.position(p).map(|i| &model.0[i].1)
                ),
                Op::Copy => copies.push((table.clone(), model.clone())),
            }
            prop_assert_eq!(table.len(), model.0.len());
        }
        prop_assert_eq!(sorted(&table), model.sorted());
        // Copies share structure with the table that changed after them: they must not have
        // changed with it.
        for (copy, then) in &copies {
            prop_assert_eq!(sorted(copy), then.sorted());
            for (p, v) in &then.0 {
                prop_assert_eq!(copy.lookup(p.network()), then.longest_match(p.network()).map(|(_, v)| v));
                prop_assert_eq!(copy.lookup_exact(*p), Some(v));
            }
        }
    }
}
