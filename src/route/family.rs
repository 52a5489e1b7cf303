//! One address family's prefixes: one hash map per prefix length present, probed from the
//! longest length to the shortest; each map split into shards behind their own `Arc`, so that
//! a copy of the table shares everything and a change copies only what it touches.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hashbrown::hash_table::{Entry, HashTable};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A shard holds at most this many prefixes on average before its length's map doubles its
/// shard count. A change copies one shard and the length's list of shard pointers, so the
/// cost of a write with n prefixes of one length is about SHARD_MAX + n / SHARD_MAX element
/// copies (minimal near SHARD_MAX = √n); 1024 keeps both terms under ~1000 up to a million
/// prefixes (measured in benches/prefix_table.rs, "write": a few µs with 100 000 present).
#[cfg(not(test))]
const SHARD_MAX: usize = 1024;
/// Tiny in tests, so that the model test's small tables split and double their shards too.
#[cfg(test)]
const SHARD_MAX: usize = 4;

/// The shard index comes from these hash bits: above the low bits a shard's hash table uses
/// for its bucket index and below the top 7 it uses as tags, so a shard's keys (which share
/// these bits) still spread over its buckets.
const SHARD_SHIFT: u32 = 40;

/// An address as an integer of its width (u32 for IPv4, u128 for IPv6).
pub(super) trait AddressBits: Copy + Eq + std::fmt::Debug {
    /// The address width, also the longest prefix.
    const WIDTH: u8;

    /// The mask keeping the first `len` bits (`len` ≤ `WIDTH`).
    fn mask(len: u8) -> Self;

    /// `self` with only the bits of `mask` kept.
    fn and(self, mask: Self) -> Self;

    /// The prefix of `len` bits starting at `self` (already masked).
    fn to_net(self, len: u8) -> IpNet;

    /// Feeds the address to `eat` as 64-bit words (for hashing).
    fn for_each_word(self, eat: impl FnMut(u64));
}

impl AddressBits for u32 {
    const WIDTH: u8 = 32;

    fn mask(len: u8) -> u32 {
        // A shift by the full width is not defined; it means "keep nothing" (/0).
        u32::MAX
            .checked_shl(u32::from(Self::WIDTH.saturating_sub(len)))
            .unwrap_or(0)
    }

    fn and(self, mask: u32) -> u32 {
        self & mask
    }

    fn to_net(self, len: u8) -> IpNet {
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(self), len))
    }

    fn for_each_word(self, mut eat: impl FnMut(u64)) {
        eat(u64::from(self));
    }
}

impl AddressBits for u128 {
    const WIDTH: u8 = 128;

    fn mask(len: u8) -> u128 {
        u128::MAX
            .checked_shl(u32::from(Self::WIDTH.saturating_sub(len)))
            .unwrap_or(0)
    }

    fn and(self, mask: u128) -> u128 {
        self & mask
    }

    fn to_net(self, len: u8) -> IpNet {
        IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from(self), len))
    }

    fn for_each_word(self, mut eat: impl FnMut(u64)) {
        eat(self as u64);
        eat((self >> 64) as u64);
    }
}

/// A seeded hash for the table's integer keys, computed once per probe: its middle bits pick
/// the shard, its low bits the bucket and its top 7 bits the tag inside the shard (hashbrown's
/// `HashTable` takes the hash as given). Only the configuration chooses the keys stored, so
/// an attacker cannot fill a bucket; addresses from packets only probe. The random seed keeps
/// even the layout unpredictable.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeyHash {
    seed: u64,
}

impl KeyHash {
    pub(super) fn random() -> Self {
        let mut seed = [0u8; 8];
        // The same source as every key of the server; without it there is no server.
        getrandom::getrandom(&mut seed).expect("the operating system's random generator failed");
        KeyHash {
            seed: u64::from_ne_bytes(seed),
        }
    }

    /// Multiply-rotate per 64-bit word, SplitMix64's finalizer at the end, so that every
    /// output bit depends on every input bit (the session table's hash, for these keys).
    #[inline]
    fn of<K: AddressBits>(self, key: K) -> u64 {
        let mut state = self.seed;
        key.for_each_word(|word| {
            state = (state ^ word)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        });
        // SplitMix64 (Steele, Lea, Flood 2014) finalizer.
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A shard: (masked address, value) pairs.
type Shard<K, V> = HashTable<(K, V)>;

/// Which of `count` shards (a power of two) holds the key of hash `hash`.
fn shard_index(hash: u64, count: usize) -> usize {
    (hash >> SHARD_SHIFT) as usize & (count - 1)
}

/// The prefixes of one length, keyed by their (masked) address.
#[derive(Clone)]
struct LengthMap<K, V> {
    /// A power of two of shards; a key's shard comes from its hash.
    shards: Vec<Arc<Shard<K, V>>>,
    entries: usize,
    hash: KeyHash,
}

impl<K: AddressBits, V> LengthMap<K, V> {
    fn new(hash: KeyHash) -> Self {
        LengthMap {
            shards: vec![Arc::new(Shard::new())],
            entries: 0,
            hash,
        }
    }

    #[inline]
    fn get(&self, key: K) -> Option<&V> {
        let hash = self.hash.of(key);
        let shard = self.shards.get(shard_index(hash, self.shards.len()))?;
        shard.find(hash, |(k, _)| *k == key).map(|(_, v)| v)
    }

    fn iter(&self) -> impl Iterator<Item = (K, &V)> + '_ {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(k, v)| (*k, v)))
    }
}

impl<K: AddressBits, V: Clone> LengthMap<K, V> {
    /// The shard of the key of hash `hash`, copied first if a published table still shares it.
    fn shard_mut(&mut self, hash: u64) -> &mut Shard<K, V> {
        let i = shard_index(hash, self.shards.len());
        Arc::make_mut(&mut self.shards[i])
    }

    /// Inserts or overwrites; returns the previous value.
    fn set(&mut self, key: K, value: V) -> Option<V> {
        let (hash, key_hash) = (self.hash.of(key), self.hash);
        let shard = self.shard_mut(hash);
        match shard.entry(hash, |(k, _)| *k == key, |(k, _)| key_hash.of(*k)) {
            Entry::Occupied(mut held) => {
                return Some(std::mem::replace(&mut held.get_mut().1, value));
            }
            Entry::Vacant(room) => {
                room.insert((key, value));
            }
        }
        self.entries += 1;
        if self.entries > self.shards.len() * SHARD_MAX {
            self.double_shards();
        }
        None
    }

    fn remove(&mut self, key: K) -> Option<V> {
        let hash = self.hash.of(key);
        let ((_, removed), _) = self
            .shard_mut(hash)
            .find_entry(hash, |(k, _)| *k == key)
            .ok()?
            .remove();
        self.entries -= 1;
        Some(removed)
    }

    /// Redistributes the entries over twice as many shards: one write in about every
    /// `entries / 2` pays a copy of the whole length (amortized constant per insert).
    fn double_shards(&mut self) {
        let count = self.shards.len() * 2;
        let per_shard = self.entries / count + 1;
        let mut fresh: Vec<Shard<K, V>> = (0..count)
            .map(|_| Shard::with_capacity(per_shard))
            .collect();
        let key_hash = self.hash;
        for shard in std::mem::take(&mut self.shards) {
            // Moves the entries out of a shard no other table shares, copies them otherwise.
            for (key, value) in Arc::unwrap_or_clone(shard) {
                let hash = key_hash.of(key);
                fresh[shard_index(hash, count)]
                    .insert_unique(hash, (key, value), |(k, _)| key_hash.of(*k));
            }
        }
        self.shards = fresh.into_iter().map(Arc::new).collect();
    }
}

/// One length present in a family.
#[derive(Clone)]
struct Level<K, V> {
    len: u8,
    mask: K,
    map: Arc<LengthMap<K, V>>,
}

/// The prefixes of one address family.
#[derive(Clone)]
pub(super) struct Family<K, V> {
    /// The lengths present, longest first: a lookup probes only these, in order.
    levels: Vec<Level<K, V>>,
    entries: usize,
}

impl<K, V> Default for Family<K, V> {
    fn default() -> Self {
        Family {
            levels: Vec::new(),
            entries: 0,
        }
    }
}

impl<K: AddressBits, V> Family<K, V> {
    pub(super) fn len(&self) -> usize {
        self.entries
    }

    /// How many lengths a lookup may probe.
    #[cfg(test)]
    pub(super) fn lengths_present(&self) -> usize {
        self.levels.len()
    }

    /// The longest prefix containing `addr`, as (length, value). One hash probe per length
    /// present, longest first; no allocation.
    #[inline]
    pub(super) fn longest_match(&self, addr: K) -> Option<(u8, &V)> {
        self.levels.iter().find_map(|level| {
            level
                .map
                .get(addr.and(level.mask))
                .map(|value| (level.len, value))
        })
    }

    fn level(&self, len: u8) -> Result<usize, usize> {
        // Sorted by descending length.
        self.levels.binary_search_by(|level| len.cmp(&level.len))
    }

    /// The value of exactly the prefix `key`/`len` (`key` already masked).
    pub(super) fn get(&self, key: K, len: u8) -> Option<&V> {
        let i = self.level(len).ok()?;
        self.levels[i].map.get(key)
    }

    /// Every (prefix, value), longest prefixes first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (IpNet, &V)> + '_ {
        self.levels.iter().flat_map(|level| {
            level
                .map
                .iter()
                .map(move |(key, value)| (key.to_net(level.len), value))
        })
    }
}

impl<K: AddressBits, V: Clone> Family<K, V> {
    /// Inserts or overwrites the prefix `key`/`len` (`key` already masked); returns the
    /// previous value.
    pub(super) fn set(&mut self, key: K, len: u8, value: V, hash: KeyHash) -> Option<V> {
        let i = match self.level(len) {
            Ok(i) => i,
            Err(i) => {
                self.levels.insert(
                    i,
                    Level {
                        len,
                        mask: K::mask(len),
                        map: Arc::new(LengthMap::new(hash)),
                    },
                );
                i
            }
        };
        let previous = Arc::make_mut(&mut self.levels[i].map).set(key, value);
        if previous.is_none() {
            self.entries += 1;
        }
        previous
    }

    /// Removes the prefix `key`/`len` if it is present and `pred` accepts its value.
    /// Copies nothing when there is nothing to remove.
    pub(super) fn remove_if(
        &mut self,
        key: K,
        len: u8,
        pred: impl FnOnce(&V) -> bool,
    ) -> Option<V> {
        let i = self.level(len).ok()?;
        if !pred(self.levels[i].map.get(key)?) {
            return None;
        }
        let map = Arc::make_mut(&mut self.levels[i].map);
        let removed = map.remove(key);
        if removed.is_some() {
            self.entries -= 1;
            if map.entries == 0 {
                // A lookup must not probe an empty length.
                self.levels.remove(i);
            }
        }
        removed
    }
}
