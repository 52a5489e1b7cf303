//! Longest-prefix routing for per-peer `allowed_ips` (cryptokey routing): which peer gets a
//! packet for an address, and which peer may send from a source address.
//!
//! [`PrefixTable`] maps IPv4 and IPv6 prefixes to a value (a peer) and answers the longest
//! prefix containing an address: with a hub on 10.0.0.0/8 and a site on 10.99.0.0/24,
//! 10.99.0.5 goes to the site and 10.1.2.3 to the hub. A prefix belongs to one owner at most
//! ([`PrefixTable::insert`] refuses the same prefix for another owner with a [`Conflict`]).
//! Prefixes are normalized: host bits are zeroed, so 10.99.0.7/24 is 10.99.0.0/24 (what
//! WireGuard does with `allowed-ips`); [`normalize`] tells the configuration layer what a
//! prefix will be stored as. IPv4 and IPv6 are separate: an IPv4-mapped IPv6 address is looked
//! up among the IPv6 prefixes.
//!
//! # How a lookup works, and why
//!
//! One hash map per prefix length present, probed from the longest length to the shortest
//! with the address masked to that length; the first hit is the longest match. The cost is one
//! hash probe per *length present*, whatever the number of prefixes: a realistic table (client
//! /32 or /128 host routes, some /24, /16 or /48, /56 sites, a hub) has 3 to 6 lengths, and the
//! worst case is 33 probes for IPv4 and 129 for IPv6 (every length present, an address that
//! matches nothing). A binary trie would walk up to 32 (IPv4) or 128 (IPv6) dependent nodes
//! for a host route, path compression still around log2(n) of them, each a likely cache miss
//! at 100 000 prefixes; a probe here is one or two. Measured (docs/benchmarks.md, "Prefix
//! table"; a shared, loaded 2-vCPU VM): criterion medians of 17-40 ns per lookup for both
//! families from 10 to 100 000 prefixes of `benches/prefix_table.rs`'s headend mix, 49-69 ns
//! for an address no prefix covers (four lengths probed). In one throwaway loop (minimum of 30
//! rounds, same mix, not kept) a plain binary trie, one node per bit, took 110-230 ns (IPv4)
//! and 560-1 100 ns (IPv6) where this table took 7-14 ns.
//!
//! # Readers never wait
//!
//! Workers look up on every packet while the control thread changes routes. A table is never
//! changed where readers can see it: [`SharedPrefixTable`] publishes immutable tables through
//! an [`ArcSwap`]; a write copies the current table, changes the copy and swaps it in, and a
//! worker takes the current table once per batch ([`SharedPrefixTable::snapshot`]). A batch of
//! changes ([`SharedPrefixTable::update`]) is published whole or not at all, so a prefix moved
//! from one peer to another is never seen unrouted or on both.
//!
//! Copying a table of 100 000 prefixes on every peer change would cost milliseconds of the
//! control thread (which also answers every handshake) and free a whole table per change on
//! whichever worker lets go of it last. So the copy shares structure: each length's map is
//! split into shards of at most ~1 024 prefixes on average, behind their own `Arc`; a copy clones only the
//! pointers of the lengths, and a change copies the one shard it touches and that length's list
//! of shard pointers (`Arc::make_mut`). Measured with 100 000 prefixes present, one change
//! published (copy, change, swap, free the old): 26-33 µs with `Arc` values (mostly the
//! reference counts of the ~700 entries of the copied shard and of the freed one), 6-7 µs
//! with peer ids; a flat copy of the 100 000 host routes instead: 2.4-4.7 ms with `Arc`
//! values, 0.09-0.13 ms with ids; building the table anew: 28-43 ms. The price: a lookup
//! reads one more pointer (the shard), and one insert in about every `n / 2` of one length
//! redistributes that length's shards (a copy of the length, amortized constant). Whoever
//! lets go of an old table last (often a worker, at the end of its batch) frees only what a
//! change replaced: a shard and a list of shard pointers, not a table.

#![forbid(unsafe_code)]

mod family;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use family::{Family, KeyHash};

/// `prefix` as the table stores it: host bits zeroed (10.99.0.7/24 is 10.99.0.0/24).
pub fn normalize(prefix: IpNet) -> IpNet {
    prefix.trunc()
}

/// Whether two values name the same owner (peer). Inserting a prefix its owner already holds
/// changes nothing; one held by another owner is a [`Conflict`].
pub trait Owner {
    /// True when `self` and `other` are the same owner.
    fn same_owner(&self, other: &Self) -> bool;
}

/// Shared entries are the same owner when they are the same allocation (a peer's
/// `Arc<PeerEntry>`): no comparison of their contents.
impl<T: ?Sized> Owner for Arc<T> {
    fn same_owner(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

macro_rules! owner_by_value {
    ($($t:ty),*) => {$(
        impl Owner for $t {
            fn same_owner(&self, other: &Self) -> bool {
                self == other
            }
        }
    )*};
}

// Peer ids and public keys.
owner_by_value!(u8, u16, u32, u64, usize, crate::proto::keys::PublicKey);

/// A prefix that already belongs to another owner. The message names the prefix; the caller,
/// which knows both owners, names the peers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{prefix} is already routed to another peer: a prefix can belong to one peer only \
     (remove it from one of them; a longer prefix inside it may go to another peer)"
)]
pub struct Conflict<V> {
    /// The prefix, normalized.
    pub prefix: IpNet,
    /// Its current owner.
    pub holder: V,
}

/// Prefixes of both families, each mapped to one value; longest prefix wins.
///
/// Cloning is cheap (it shares every map) and a change copies only what it touches, which is
/// what [`SharedPrefixTable`] relies on; on its own the table is a plain value with `&mut`
/// writes.
#[derive(Clone)]
pub struct PrefixTable<V> {
    v4: Family<u32, V>,
    v6: Family<u128, V>,
    hash: KeyHash,
}

impl<V> Default for PrefixTable<V> {
    fn default() -> Self {
        PrefixTable {
            v4: Family::default(),
            v6: Family::default(),
            hash: KeyHash::random(),
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for PrefixTable<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> PrefixTable<V> {
    /// An empty table.
    pub fn new() -> Self {
        PrefixTable::default()
    }

    /// Number of prefixes, both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of the longest prefix containing `addr`. No allocation, no lock.
    ///
    /// Inlined, so that the caller's address is read where it lies (a copy of an `IpAddr`
    /// passed behind a pointer stalled every lookup on store forwarding in the bench).
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<&V> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// [`lookup`](Self::lookup) for an IPv4 address.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<&V> {
        self.v4.longest_match(u32::from(addr)).map(|(_, v)| v)
    }

    /// [`lookup`](Self::lookup) for an IPv6 address.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<&V> {
        self.v6.longest_match(u128::from(addr)).map(|(_, v)| v)
    }

    /// The longest prefix containing `addr` and its value (what [`lookup`](Self::lookup)
    /// found, with the prefix that matched).
    pub fn longest_match(&self, addr: IpAddr) -> Option<(IpNet, &V)> {
        match addr {
            IpAddr::V4(a) => {
                let key = u32::from(a);
                let (len, v) = self.v4.longest_match(key)?;
                Some((normalize(IpNet::new_assert(addr, len)), v))
            }
            IpAddr::V6(a) => {
                let key = u128::from(a);
                let (len, v) = self.v6.longest_match(key)?;
                Some((normalize(IpNet::new_assert(addr, len)), v))
            }
        }
    }

    /// The value of exactly `prefix` (normalized first), not of a shorter one containing it.
    pub fn lookup_exact(&self, prefix: IpNet) -> Option<&V> {
        match normalize(prefix) {
            IpNet::V4(p) => self.v4.get(u32::from(p.addr()), p.prefix_len()),
            IpNet::V6(p) => self.v6.get(u128::from(p.addr()), p.prefix_len()),
        }
    }

    /// Every (prefix, value): IPv4 then IPv6, longest prefixes first, in no particular order
    /// within one length.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &V)> + '_ {
        self.v4.iter().chain(self.v6.iter())
    }
}

impl<V: Clone> PrefixTable<V> {
    /// Routes `prefix` (normalized first) to `value`. Refused with a [`Conflict`] naming the
    /// current holder when another owner already has exactly this prefix; nothing changes
    /// when `value`'s owner already has it. Overlapping prefixes of different lengths are
    /// fine: the longest wins.
    pub fn insert(&mut self, prefix: IpNet, value: V) -> Result<(), Conflict<V>>
    where
        V: Owner,
    {
        let prefix = normalize(prefix);
        if let Some(holder) = self.lookup_exact(prefix) {
            return if holder.same_owner(&value) {
                Ok(())
            } else {
                Err(Conflict {
                    prefix,
                    holder: holder.clone(),
                })
            };
        }
        self.replace(prefix, value);
        Ok(())
    }

    /// Routes `prefix` (normalized first) to `value`, taking it from whoever had it (what
    /// `wg set ... allowed-ips` does); returns the previous value.
    pub fn replace(&mut self, prefix: IpNet, value: V) -> Option<V> {
        match normalize(prefix) {
            IpNet::V4(p) => self
                .v4
                .set(u32::from(p.addr()), p.prefix_len(), value, self.hash),
            IpNet::V6(p) => self
                .v6
                .set(u128::from(p.addr()), p.prefix_len(), value, self.hash),
        }
    }

    /// Removes `prefix` (normalized first); returns its value if it was present.
    pub fn remove(&mut self, prefix: IpNet) -> Option<V> {
        self.remove_if(prefix, |_| true)
    }

    /// Removes `prefix` (normalized first) only if `pred` accepts its current value, e.g.
    /// `|v| v.same_owner(&old_peer)` so that a reload removing a peer's prefix does not take
    /// it from the peer it has just moved to. Returns the removed value.
    pub fn remove_if(&mut self, prefix: IpNet, pred: impl FnOnce(&V) -> bool) -> Option<V> {
        match normalize(prefix) {
            IpNet::V4(p) => self.v4.remove_if(u32::from(p.addr()), p.prefix_len(), pred),
            IpNet::V6(p) => self
                .v6
                .remove_if(u128::from(p.addr()), p.prefix_len(), pred),
        }
    }
}

/// A [`PrefixTable`] that workers read without locks while the control thread changes it.
///
/// Readers take the current table with [`snapshot`](Self::snapshot) (one atomic increment,
/// once per batch) and look up in it as often as they like; writers publish a changed copy
/// with [`update`](Self::update). Writers take a mutex among themselves (so two writers
/// cannot lose each other's change); readers never touch it.
pub struct SharedPrefixTable<V> {
    current: ArcSwap<PrefixTable<V>>,
    writer: Mutex<()>,
}

impl<V> Default for SharedPrefixTable<V> {
    fn default() -> Self {
        SharedPrefixTable::from_table(PrefixTable::new())
    }
}

impl<V> SharedPrefixTable<V> {
    /// An empty table.
    pub fn new() -> Self {
        SharedPrefixTable::default()
    }

    /// Publishes `table` as it is.
    pub fn from_table(table: PrefixTable<V>) -> Self {
        SharedPrefixTable {
            current: ArcSwap::from_pointee(table),
            writer: Mutex::new(()),
        }
    }

    /// The current table: hold it for a batch of lookups. Changes published meanwhile are
    /// seen at the next snapshot.
    pub fn snapshot(&self) -> Arc<PrefixTable<V>> {
        self.current.load_full()
    }

    /// The current table without touching its reference count (arc-swap's per-thread debt
    /// slots, so workers do not contend on one counter); for a short batch, like
    /// [`snapshot`](Self::snapshot) otherwise.
    pub fn load(&self) -> arc_swap::Guard<Arc<PrefixTable<V>>> {
        self.current.load()
    }
}

impl<V: Clone> SharedPrefixTable<V> {
    /// Applies `change` to a copy of the current table and publishes the copy if `change`
    /// returns `Ok`; readers see all of a batch's changes or none. On `Err` (e.g. a
    /// [`Conflict`] halfway through a reload) nothing is published.
    pub fn update<R, E>(
        &self,
        change: impl FnOnce(&mut PrefixTable<V>) -> Result<R, E>,
    ) -> Result<R, E> {
        // The mutex guards no data, only the load-change-store sequence: a panic in another
        // writer's `change` published nothing, so a poisoned lock is safe to take.
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = PrefixTable::clone(&self.current.load());
        let result = change(&mut next)?;
        self.current.store(Arc::new(next));
        Ok(result)
    }
}
