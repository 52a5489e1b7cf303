//! Virtual address pools: stable, deterministic addresses for peers without a fixed one.
//!
//! A peer's address starts at `hash(public key) mod (usable hosts)`, with a fixed hash (the first
//! 8 bytes of SHA-256, never std's randomised hasher), and probes linearly past taken addresses.
//! The network address and the all-ones address (IPv4 broadcast; skipped in IPv6 too, to keep
//! the two families alike) are never handed out, nor is the server's own address.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Where a key's probe starts: the first 8 bytes of SHA-256 of the key, big-endian.
fn key_hash(key: &[u8; 32]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Family-independent core: host offsets `1..=usable` within the subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Core {
    usable: u128,
    taken: BTreeSet<u128>,
}

impl Core {
    fn new(host_bits: u32) -> Self {
        let usable = if host_bits >= 128 {
            u128::MAX - 1
        } else {
            (1u128 << host_bits).saturating_sub(2)
        };
        Self {
            usable,
            taken: BTreeSet::new(),
        }
    }

    fn is_host(&self, off: u128) -> bool {
        (1..=self.usable).contains(&off)
    }

    fn reserve(&mut self, off: u128) -> bool {
        self.is_host(off) && self.taken.insert(off)
    }

    fn allocate(&mut self, key: &[u8; 32]) -> Option<u128> {
        if self.usable == 0 || self.taken.len() as u128 >= self.usable {
            return None;
        }
        // At most `taken.len() + 1` probes: each miss is a taken offset.
        let mut idx = u128::from(key_hash(key)) % self.usable;
        loop {
            let off = idx + 1;
            if self.taken.insert(off) {
                return Some(off);
            }
            idx = if idx + 1 == self.usable { 0 } else { idx + 1 };
        }
    }
}

/// The IPv4 client pool of the server's subnet (`address = "10.66.0.1/16"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPool {
    net: Ipv4Net,
    server: Ipv4Addr,
    core: Core,
}

impl AddressPool {
    /// A pool over `server`'s subnet, with the server's own address already taken.
    pub fn new(server: Ipv4Net) -> Self {
        let net = server.trunc();
        let mut pool = Self {
            net,
            server: server.addr(),
            core: Core::new(32 - u32::from(net.prefix_len())),
        };
        if let Some(off) = pool.offset(server.addr()) {
            pool.core.reserve(off);
        }
        pool
    }

    fn offset(&self, addr: Ipv4Addr) -> Option<u128> {
        self.net
            .contains(&addr)
            .then(|| u128::from(u32::from(addr).wrapping_sub(u32::from(self.net.network()))))
    }

    /// The subnet (host bits cleared).
    pub fn network(&self) -> Ipv4Net {
        self.net
    }

    /// How many addresses can ever be handed out (hosts, less network and broadcast).
    pub fn usable(&self) -> u128 {
        self.core.usable
    }

    /// How many addresses are taken, the server's included.
    pub fn taken(&self) -> usize {
        self.core.taken.len()
    }

    /// Whether `addr` is a host address of the subnet (not the network or broadcast address).
    pub fn is_host(&self, addr: Ipv4Addr) -> bool {
        self.offset(addr).is_some_and(|o| self.core.is_host(o))
    }

    /// Whether `addr` is already taken (the server's address always is).
    pub fn is_taken(&self, addr: Ipv4Addr) -> bool {
        self.offset(addr)
            .is_some_and(|o| self.core.taken.contains(&o))
    }

    /// Takes a fixed address. False when it is outside the subnet, not a host address, or taken.
    pub fn reserve(&mut self, addr: Ipv4Addr) -> bool {
        self.offset(addr).is_some_and(|o| self.core.reserve(o))
    }

    /// The stable address for `key`: its hash's slot, or the next free one. `None` when full.
    pub fn allocate(&mut self, key: &[u8; 32]) -> Option<Ipv4Addr> {
        let off = self.core.allocate(key)?;
        // `off` < 2^32: it is at most the host count of an IPv4 subnet.
        Some(Ipv4Addr::from(
            u32::from(self.net.network()).wrapping_add(off as u32),
        ))
    }

    /// Gives `addr` back. The server's own address is never released.
    pub fn release(&mut self, addr: Ipv4Addr) {
        if addr != self.server {
            if let Some(off) = self.offset(addr) {
                self.core.taken.remove(&off);
            }
        }
    }
}

/// The IPv6 client pool (`address6 = "fd66::1/64"`): same hashing and probing as IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPool6 {
    net: Ipv6Net,
    server: Ipv6Addr,
    core: Core,
}

impl AddressPool6 {
    /// A pool over `server`'s subnet, with the server's own address already taken.
    pub fn new(server: Ipv6Net) -> Self {
        let net = server.trunc();
        let mut pool = Self {
            net,
            server: server.addr(),
            core: Core::new(128 - u32::from(net.prefix_len())),
        };
        if let Some(off) = pool.offset(server.addr()) {
            pool.core.reserve(off);
        }
        pool
    }

    fn offset(&self, addr: Ipv6Addr) -> Option<u128> {
        self.net
            .contains(&addr)
            .then(|| u128::from(addr).wrapping_sub(u128::from(self.net.network())))
    }

    /// The subnet (host bits cleared).
    pub fn network(&self) -> Ipv6Net {
        self.net
    }

    /// Whether `addr` is a host address of the subnet (not the first or the last address).
    pub fn is_host(&self, addr: Ipv6Addr) -> bool {
        self.offset(addr).is_some_and(|o| self.core.is_host(o))
    }

    /// Whether `addr` is already taken (the server's address always is).
    pub fn is_taken(&self, addr: Ipv6Addr) -> bool {
        self.offset(addr)
            .is_some_and(|o| self.core.taken.contains(&o))
    }

    /// Takes a fixed address. False when it is outside the subnet, not a host address, or taken.
    pub fn reserve(&mut self, addr: Ipv6Addr) -> bool {
        self.offset(addr).is_some_and(|o| self.core.reserve(o))
    }

    /// The stable address for `key`: its hash's slot, or the next free one. `None` when full.
    pub fn allocate(&mut self, key: &[u8; 32]) -> Option<Ipv6Addr> {
        let off = self.core.allocate(key)?;
        Some(Ipv6Addr::from(
            u128::from(self.net.network()).wrapping_add(off),
        ))
    }

    /// Gives `addr` back. The server's own address is never released.
    pub fn release(&mut self, addr: Ipv6Addr) {
        if addr != self.server {
            if let Some(off) = self.offset(addr) {
                self.core.taken.remove(&off);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn hash_is_fixed() {
        // SHA-256 of 32 zero bytes starts with 66687aadf862bd77.
        assert_eq!(key_hash(&[0; 32]), 0x6668_7aad_f862_bd77);
    }

    #[test]
    fn slash29_has_six_hosts_and_fills() {
        let mut pool = AddressPool::new(net("10.0.0.1/29"));
        assert_eq!(pool.usable(), 6);
        let mut got = Vec::new();
        for i in 0..5u8 {
            got.push(pool.allocate(&[i; 32]).unwrap());
        }
        assert_eq!(pool.allocate(&[9; 32]), None);
        got.sort();
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 0, 0, h)).collect();
        assert_eq!(got, want);
        pool.release(Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(pool.allocate(&[9; 32]), Some(Ipv4Addr::new(10, 0, 0, 4)));
        // The server's address is never released.
        pool.release(Ipv4Addr::new(10, 0, 0, 1));
        assert!(pool.is_taken(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn reserve_rejects_specials_and_outsiders() {
        let mut pool = AddressPool::new(net("10.0.0.1/24"));
        assert!(!pool.reserve(Ipv4Addr::new(10, 0, 0, 0)));
        assert!(!pool.reserve(Ipv4Addr::new(10, 0, 0, 255)));
        assert!(!pool.reserve(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!pool.reserve(Ipv4Addr::new(10, 0, 1, 1)));
        assert!(pool.reserve(Ipv4Addr::new(10, 0, 0, 7)));
        assert!(!pool.reserve(Ipv4Addr::new(10, 0, 0, 7)));
    }

    #[test]
    fn same_key_same_address() {
        let mut a = AddressPool::new(net("10.66.0.1/16"));
        let mut b = AddressPool::new(net("10.66.0.1/16"));
        assert_eq!(a.allocate(&[42; 32]), b.allocate(&[42; 32]));
    }

    #[test]
    fn ipv6_allocates_inside() {
        let server: Ipv6Net = "fd66::1/64".parse().unwrap();
        let mut pool = AddressPool6::new(server);
        let a = pool.allocate(&[1; 32]).unwrap();
        assert!(server.trunc().contains(&a));
        assert!(pool.is_host(a) && pool.is_taken(a));
        assert_ne!(a, server.addr());
        assert_eq!(AddressPool6::new(server).allocate(&[1; 32]), Some(a));
        pool.release(a);
        assert!(!pool.is_taken(a));
    }
}
