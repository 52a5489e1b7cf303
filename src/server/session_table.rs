//! The server's lock-free session table: who is behind a receiver index, who owns a virtual
//! address, and where each peer's packets go.
//!
//! Written only by the control thread, read by every worker on every packet without a lock
//! (papaya's concurrent map: readers never block and never wait for the writer). A worker takes a
//! [`TableSnapshot`] and pins a [`TableGuard`] once per batch of completions and looks up as
//! often as it likes under it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::proto::keys::PublicKey;
use crate::proto::session::Session;
use crate::proto::wire::AddressAssignment;

/// One peer as the data plane sees it.
#[derive(Debug)]
pub struct PeerEntry {
    /// Its static public key.
    pub public_key: PublicKey,
    /// Its keypairs and timers.
    pub session: Arc<Session>,
    /// Its virtual addresses: the only inner source addresses accepted from it.
    pub assignment: AddressAssignment,
    /// Its current underlay endpoint: follows the latest authenticated packet (roaming).
    endpoint: ArcSwapOption<SocketAddr>,
    /// Bytes of inner packets received from the peer (after decryption).
    pub rx_bytes: AtomicU64,
    /// Bytes of inner packets sent to the peer (before encryption).
    pub tx_bytes: AtomicU64,
}

impl PeerEntry {
    /// A peer with no endpoint yet.
    pub fn new(
        public_key: PublicKey,
        session: Arc<Session>,
        assignment: AddressAssignment,
    ) -> Self {
        PeerEntry {
            public_key,
            session,
            assignment,
            endpoint: ArcSwapOption::empty(),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        }
    }

    /// Where to send the peer's packets, if known.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint.load().as_deref().copied()
    }

    /// Records `from` as the endpoint after an authenticated packet; allocates only when the
    /// peer actually moved.
    pub fn roam_to(&self, from: SocketAddr) {
        if self.endpoint.load().as_deref() != Some(&from) {
            self.endpoint.store(Some(Arc::new(from)));
        }
    }

    /// True when `inner_source` is one of the peer's own addresses (cryptokey routing).
    pub fn owns_source(&self, inner_source: IpAddr) -> bool {
        self.assignment.assigns(inner_source)
    }
}

/// A pinned read view: hold one per batch.
pub type TableGuard<'a> = papaya::LocalGuard<'a>;

/// Both kinds of key live in one map, so a worker needs a single guard for both lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Index(u32),
    Address(IpAddr),
}

type Map = papaya::HashMap<Key, Arc<PeerEntry>, KeyHasherBuilder>;

/// A keyed hash for the table's small keys, cheaper than std's SipHash (which cost ~3% of a
/// busy worker). Only the control thread inserts, and it picks both kinds of key (random receiver
/// indexes, assigned addresses), so an attacker cannot choose keys that collide; lookups with
/// forged indexes only probe. The random seed keeps even that from being predictable.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasherBuilder {
    seed: u64,
}

impl KeyHasherBuilder {
    fn random() -> Self {
        let mut seed = [0u8; 8];
        // The same source as every other key of the server; without it there is no server.
        getrandom::getrandom(&mut seed).expect("the operating system's random generator failed");
        KeyHasherBuilder {
            seed: u64::from_ne_bytes(seed),
        }
    }
}

impl std::hash::BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

/// Multiply-rotate per word, SplitMix64's finalizer at the end (every output bit depends on
/// every input bit, which papaya's probing and metadata bits need).
#[derive(Debug)]
pub struct KeyHasher {
    state: u64,
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.state = (self.state ^ i)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        // SplitMix64 (Steele, Lea, Flood 2014) finalizer.
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A rebuild is worth it only for a table that was at least this large (entries).
const COMPACT_MIN_PEAK: usize = 1024;

/// Lookups by receiver index and by virtual address.
///
/// papaya never gives back a table's room after removals, so after thousands of clients leave,
/// the control thread rebuilds the map ([`SessionTable::compact_if_sparse`]) and swaps it in;
/// workers pick up the new map at their next batch ([`SessionTable::snapshot`]).
pub struct SessionTable {
    map: ArcSwap<Map>,
    /// Entries now, and the most since the map was last built (kept by the only writer).
    entries: AtomicUsize,
    peak: AtomicUsize,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable {
            map: ArcSwap::from_pointee(Map::with_hasher(KeyHasherBuilder::random())),
            entries: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }
}

/// The map as it was when a worker's batch began: hold it for the batch, look up under a
/// [`TableGuard`] pinned from it.
pub struct TableSnapshot(Arc<Map>);

impl TableSnapshot {
    /// Pins a read view for a batch of lookups.
    pub fn guard(&self) -> TableGuard<'_> {
        self.0.guard()
    }

    /// The peer that receives packets for receiver index `index`.
    pub fn by_index<'g>(
        &self,
        index: u32,
        guard: &'g TableGuard<'_>,
    ) -> Option<&'g Arc<PeerEntry>> {
        self.0.get(&Key::Index(index), guard)
    }

    /// The peer whose virtual address is `addr`.
    pub fn by_address<'g>(
        &self,
        addr: IpAddr,
        guard: &'g TableGuard<'_>,
    ) -> Option<&'g Arc<PeerEntry>> {
        self.0.get(&Key::Address(addr), guard)
    }
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> Self {
        SessionTable::default()
    }

    /// The current map, for one batch of lookups.
    pub fn snapshot(&self) -> TableSnapshot {
        TableSnapshot(self.map.load_full())
    }

    fn insert(&self, key: Key, entry: &Arc<PeerEntry>) {
        if self.map.load().pin().insert(key, entry.clone()).is_none() {
            let now = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn remove(&self, key: Key) {
        if self.map.load().pin().remove(&key).is_some() {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Publishes a peer under its virtual addresses (replacing any previous entry for them).
    pub fn insert_peer(&self, entry: &Arc<PeerEntry>) {
        self.insert(Key::Address(IpAddr::V4(entry.assignment.ipv4)), entry);
        if let Some((v6, _)) = entry.assignment.ipv6 {
            self.insert(Key::Address(IpAddr::V6(v6)), entry);
        }
    }

    /// Publishes receiver index `index` for `entry`.
    pub fn insert_index(&self, index: u32, entry: &Arc<PeerEntry>) {
        self.insert(Key::Index(index), entry);
    }

    /// Forgets receiver index `index`.
    pub fn remove_index(&self, index: u32) {
        self.remove(Key::Index(index));
    }

    /// Removes `key` only while it still maps to `entry`.
    fn remove_if_owned_by(&self, key: Key, entry: &PeerEntry) {
        let map = self.map.load();
        let owned = map
            .pin()
            .remove_if(&key, |_, owner| std::ptr::eq(Arc::as_ptr(owner), entry))
            .is_ok_and(|removed| removed.is_some());
        if owned {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets a peer's addresses (its indexes are removed with `remove_index`). An address
    /// that another peer has taken over meanwhile (a reload that swaps or moves addresses
    /// inserts the new owner before the old one is removed) stays with that peer.
    pub fn remove_peer(&self, entry: &PeerEntry) {
        self.remove_if_owned_by(Key::Address(IpAddr::V4(entry.assignment.ipv4)), entry);
        if let Some((v6, _)) = entry.assignment.ipv6 {
            self.remove_if_owned_by(Key::Address(IpAddr::V6(v6)), entry);
        }
    }

    /// Rebuilds the map when it holds under a quarter of its peak (and the peak was large):
    /// the old map, with its room, is freed once the last worker's batch lets go of it. Only
    /// the control thread (the only writer) may call this; returns whether it rebuilt.
    pub fn compact_if_sparse(&self) -> bool {
        let entries = self.entries.load(Ordering::Relaxed);
        if self.peak.load(Ordering::Relaxed) < COMPACT_MIN_PEAK
            || entries * 4 > self.peak.load(Ordering::Relaxed)
        {
            return false;
        }
        let old = self.map.load_full();
        let fresh = Map::with_hasher(KeyHasherBuilder::random());
        {
            let (from, to) = (old.pin(), fresh.pin());
            for (key, entry) in from.iter() {
                to.insert(*key, entry.clone());
            }
        }
        self.map.store(Arc::new(fresh));
        self.peak.store(entries, Ordering::Relaxed);
        true
    }

    /// Number of entries (indexes and addresses).
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// True when nothing is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::AddressAssignment;
    use std::net::Ipv4Addr;

    fn entry(i: u32) -> Arc<PeerEntry> {
        let ip = Ipv4Addr::from(0x0a42_0000 + i);
        Arc::new(PeerEntry::new(
            PublicKey::from_bytes([i as u8; 32]),
            Arc::new(Session::new()),
            AddressAssignment {
                ipv4: ip,
                ipv4_prefix: 16,
                ipv6: None,
                mtu: 1420,
            },
        ))
    }

    #[test]
    fn compaction_keeps_every_entry_and_old_snapshots_keep_working() {
        let table = SessionTable::new();
        let peers: Vec<_> = (1..=3000).map(entry).collect();
        for (i, p) in peers.iter().enumerate() {
            table.insert_peer(p);
            table.insert_index(i as u32 * 7, p);
        }
        assert_eq!(table.len(), 6000);
        assert!(
            !table.compact_if_sparse(),
            "a full table must not be rebuilt"
        );
        let before = table.snapshot();
        for (i, p) in peers.iter().enumerate().skip(100) {
            table.remove_peer(p);
            table.remove_index(i as u32 * 7);
        }
        assert_eq!(table.len(), 200);
        assert!(table.compact_if_sparse());
        assert!(!table.compact_if_sparse(), "peak resets with the rebuild");
        let after = table.snapshot();
        let (g_before, g_after) = (before.guard(), after.guard());
        for (i, p) in peers.iter().enumerate() {
            let ip = IpAddr::V4(p.assignment.ipv4);
            let kept = i < 100;
            assert_eq!(after.by_address(ip, &g_after).is_some(), kept, "peer {i}");
            assert_eq!(
                after.by_index(i as u32 * 7, &g_after).is_some(),
                kept,
                "index {i}"
            );
            if kept {
                assert!(Arc::ptr_eq(after.by_address(ip, &g_after).unwrap(), p));
                // A worker still on the old map sees the same peers.
                assert!(Arc::ptr_eq(before.by_address(ip, &g_before).unwrap(), p));
            }
        }
        // Writes after the rebuild land in the new map.
        table.insert_index(999_999, &peers[0]);
        let now = table.snapshot();
        assert!(now.by_index(999_999, &now.guard()).is_some());
        assert_eq!(table.len(), 201);
    }

    #[test]
    fn removing_a_peer_leaves_its_old_address_to_whoever_has_it_now() {
        let table = SessionTable::new();
        let a = entry(2);
        table.insert_peer(&a);
        // Another peer now owns the same address (an address moved in a reload).
        let b = Arc::new(PeerEntry::new(
            PublicKey::from_bytes([9; 32]),
            Arc::new(Session::new()),
            a.assignment,
        ));
        table.insert_peer(&b);
        table.remove_peer(&a);
        let snapshot = table.snapshot();
        let g = snapshot.guard();
        let owner = snapshot.by_address(IpAddr::V4(a.assignment.ipv4), &g);
        assert!(owner.is_some_and(|e| Arc::ptr_eq(e, &b)));
        assert_eq!(table.len(), 1);
        table.remove_peer(&b);
        assert!(table.is_empty());
    }

    #[test]
    fn key_hash_spreads_keys_that_differ_only_in_high_bits() {
        use std::hash::BuildHasher;
        let b = KeyHasherBuilder::random();
        // Low bits pick the slot, high bits are papaya's metadata: both must vary, also for keys
        // whose own low bits are all equal (a weak hash would put these in one slot).
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        for i in 0..4096u32 {
            let addr = IpAddr::from([(i >> 4) as u8, (i & 15) as u8, 0, 1]);
            for key in [Key::Index(i << 20), Key::Address(addr)] {
                let h = b.hash_one(key);
                low.insert(h & 0xfff);
                high.insert(h >> 57);
            }
        }
        // 8 192 random values in 4 096 slots fill ~3 540 of them.
        assert!(low.len() > 3300, "{} of 4096 low-bit values", low.len());
        assert_eq!(high.len(), 128, "all 7-bit tags seen");
        assert_ne!(
            b.hash_one(Key::Index(1)),
            b.hash_one(Key::Address(IpAddr::from([0, 0, 0, 1])))
        );
    }
}
