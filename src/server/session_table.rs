//! The server's lock-free session table: who is behind a receiver index, which peer an address
//! is routed to (its own virtual addresses and its `allowed_ips`, longest prefix first), and
//! where each peer's packets go.
//!
//! Written only by the control thread, read by every worker on every packet without a lock:
//! receiver indexes in papaya's concurrent map (readers never block and never wait for the
//! writer), addresses in a [`SharedPrefixTable`] (immutable tables published through an
//! `ArcSwap`). A worker takes a [`TableSnapshot`] and pins a [`TableGuard`] once per batch of
//! completions and looks up as often as it likes under it.

use crate::proto::padding::Padding;
use crate::proto::suite::Suite;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use ipnet::IpNet;

use crate::proto::keys::PublicKey;
use crate::proto::session::Session;
use crate::proto::wire::AddressAssignment;
use crate::route::{self, PrefixTable, SharedPrefixTable};

/// One peer as the data plane sees it.
#[derive(Debug)]
pub struct PeerEntry {
    /// Its static public key.
    pub public_key: PublicKey,
    /// Its keypairs and timers.
    pub session: Arc<Session>,
    /// Its virtual addresses.
    pub assignment: AddressAssignment,
    /// The protocol it speaks (for `show`, fixed for the entry's life; the data path needs none:
    /// its keypairs know).
    pub suite: Suite,
    /// How what is sealed for it is padded: its suite's rule under its assignment's MTU (the
    /// tunnel's), fixed with the suite ([`PeerEntry::with_suite`]).
    pub padding: Padding,
    /// The networks routed to it besides its addresses (`allowed_ips`), normalized; written by
    /// the control thread with the table ([`SessionTable::set_allowed_ips`]), never read on
    /// the data path (the table answers there).
    allowed_ips: ArcSwap<Vec<IpNet>>,
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
            suite: Suite::Native,
            padding: Padding::for_suite(Suite::Native, assignment.mtu),
            allowed_ips: ArcSwap::from_pointee(Vec::new()),
            endpoint: ArcSwapOption::empty(),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        }
    }

    /// The same entry for a peer of `suite`.
    pub fn with_suite(mut self, suite: Suite) -> Self {
        self.suite = suite;
        self.padding = Padding::for_suite(suite, self.assignment.mtu);
        self
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

    /// The same peer with `allowed_ips` (before it is published).
    pub fn with_allowed_ips(self, allowed_ips: Vec<IpNet>) -> Self {
        self.allowed_ips.store(Arc::new(normalized(allowed_ips)));
        self
    }

    /// The networks routed to the peer besides its own addresses.
    pub fn allowed_ips(&self) -> Arc<Vec<IpNet>> {
        self.allowed_ips.load_full()
    }

    /// The prefixes the peer is published under: its addresses as host prefixes, then its
    /// `allowed_ips`.
    fn prefixes(&self) -> impl Iterator<Item = IpNet> {
        let own = [
            Some(IpAddr::V4(self.assignment.ipv4)),
            self.assignment.ipv6.map(|(a, _)| IpAddr::V6(a)),
        ];
        let allowed = self.allowed_ips();
        own.into_iter()
            .flatten()
            .map(IpNet::from)
            .chain((0..allowed.len()).map(move |i| allowed[i]))
    }

    /// True when packets from `inner_source` may come from this peer (cryptokey routing): the
    /// longest prefix of `table` containing it is the peer's, one of its addresses or of its
    /// `allowed_ips`. A source inside a peer's network but in a longer prefix of another peer
    /// is the other peer's, as a packet to it would go there.
    pub fn owns_source(&self, inner_source: IpAddr, table: &TableSnapshot) -> bool {
        // The peer's own address is a host prefix, the longest there is, and nobody else's:
        // no lookup for a client's own packets.
        let own = match inner_source {
            IpAddr::V4(a) => a == self.assignment.ipv4,
            IpAddr::V6(a) => self.assignment.ipv6.is_some_and(|(own, _)| own == a),
        };
        own || table
            .routes
            .lookup(inner_source)
            .is_some_and(|owner| std::ptr::eq(Arc::as_ptr(owner), self))
    }
}

/// `prefixes` with host bits zeroed and duplicates gone, in their order.
fn normalized(prefixes: Vec<IpNet>) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::with_capacity(prefixes.len());
    for p in prefixes.into_iter().map(route::normalize) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// A pinned read view: hold one per batch.
pub type TableGuard<'a> = papaya::LocalGuard<'a>;

/// Receiver indexes to peers.
type Map = papaya::HashMap<u32, Arc<PeerEntry>, KeyHasherBuilder>;

/// Addresses and networks to peers, longest prefix first.
type Routes = PrefixTable<Arc<PeerEntry>>;

/// A keyed hash for the receiver indexes, cheaper than std's SipHash (which cost ~3% of a busy
/// worker). Only the control thread inserts, and it picks the keys (random receiver indexes),
/// so an attacker cannot choose keys that collide; lookups with forged indexes only probe. The random seed keeps even that from being predictable.
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

/// Lookups by receiver index and by address (longest prefix).
///
/// papaya never gives back a table's room after removals, so after thousands of clients leave,
/// the control thread rebuilds the index map ([`SessionTable::compact_if_sparse`]) and swaps it
/// in; workers pick up the new map at their next batch ([`SessionTable::snapshot`]).
pub struct SessionTable {
    map: ArcSwap<Map>,
    routes: SharedPrefixTable<Arc<PeerEntry>>,
    /// Index entries now, and the most since the map was last built (kept by the only writer).
    entries: AtomicUsize,
    peak: AtomicUsize,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable {
            map: ArcSwap::from_pointee(Map::with_hasher(KeyHasherBuilder::random())),
            routes: SharedPrefixTable::new(),
            entries: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }
}

/// The table as it was when a worker's batch began: hold it for the batch, look up under a
/// [`TableGuard`] pinned from it.
pub struct TableSnapshot {
    map: Arc<Map>,
    routes: Arc<Routes>,
}

impl TableSnapshot {
    /// Pins a read view for a batch of lookups.
    pub fn guard(&self) -> TableGuard<'_> {
        self.map.guard()
    }

    /// The peer that receives packets for receiver index `index`.
    pub fn by_index<'g>(
        &self,
        index: u32,
        guard: &'g TableGuard<'_>,
    ) -> Option<&'g Arc<PeerEntry>> {
        self.map.get(&index, guard)
    }

    /// The peer that packets for `addr` go to: the holder of the longest prefix containing
    /// it (a peer's own address, or a network of its `allowed_ips`). The prefixes live in the
    /// snapshot itself; the guard is taken so that both lookups read alike.
    pub fn by_address<'g>(
        &'g self,
        addr: IpAddr,
        _guard: &'g TableGuard<'_>,
    ) -> Option<&'g Arc<PeerEntry>> {
        self.routes.lookup(addr)
    }

    /// The peer holding exactly `prefix` (normalized), if any: who is in the way of another
    /// peer that wants it.
    pub fn holder_of(&self, prefix: IpNet) -> Option<&Arc<PeerEntry>> {
        self.routes.lookup_exact(prefix)
    }
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> Self {
        SessionTable::default()
    }

    /// The current table, for one batch of lookups.
    pub fn snapshot(&self) -> TableSnapshot {
        TableSnapshot {
            map: self.map.load_full(),
            routes: self.routes.snapshot(),
        }
    }

    /// Publishes a peer under its addresses and its `allowed_ips` (taking them from any peer
    /// that had them: a reload that moves them publishes the new holder first), in one change
    /// that workers see whole.
    pub fn insert_peer(&self, entry: &Arc<PeerEntry>) {
        self.change_routes(|t| {
            for prefix in entry.prefixes() {
                t.replace(prefix, entry.clone());
            }
        });
    }

    /// Publishes a changed copy of the routes (a change that cannot fail).
    fn change_routes(&self, change: impl FnOnce(&mut Routes)) {
        let published: Result<(), std::convert::Infallible> = self.routes.update(|t| {
            change(t);
            Ok(())
        });
        match published {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }

    /// Publishes receiver index `index` for `entry`.
    pub fn insert_index(&self, index: u32, entry: &Arc<PeerEntry>) {
        if self.map.load().pin().insert(index, entry.clone()).is_none() {
            let now = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Forgets receiver index `index`.
    pub fn remove_index(&self, index: u32) {
        if self.map.load().pin().remove(&index).is_some() {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets a peer's addresses and `allowed_ips` (its indexes are removed with
    /// `remove_index`). A prefix that another peer has taken over meanwhile (a reload that
    /// swaps or moves addresses or networks inserts the new holder before the old one is
    /// removed) stays with that peer.
    pub fn remove_peer(&self, entry: &PeerEntry) {
        self.change_routes(|t| {
            for prefix in entry.prefixes() {
                remove_if_held_by(t, prefix, entry);
            }
        });
    }

    /// Replaces the `allowed_ips` of a published peer, in one change that workers see whole:
    /// its old networks go (those still its own), the new ones are routed to it.
    pub fn set_allowed_ips(&self, entry: &Arc<PeerEntry>, allowed_ips: Vec<IpNet>) {
        let old = entry.allowed_ips();
        let new = Arc::new(normalized(allowed_ips));
        self.change_routes(|t| {
            for prefix in old.iter().filter(|p| !new.contains(p)) {
                remove_if_held_by(t, *prefix, entry);
            }
            for prefix in new.iter() {
                t.replace(*prefix, entry.clone());
            }
        });
        entry.allowed_ips.store(new);
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

    /// Number of entries (receiver indexes and prefixes).
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed) + self.routes.snapshot().len()
    }

    /// True when nothing is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes `prefix` from `table` only while `entry` holds it.
fn remove_if_held_by(table: &mut Routes, prefix: IpNet, entry: &PeerEntry) {
    table.remove_if(prefix, |holder| std::ptr::eq(Arc::as_ptr(holder), entry));
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

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The public key's first byte of the peer packets for `addr` go to.
    fn routed_to(table: &SessionTable, addr: &str) -> Option<u8> {
        let snapshot = table.snapshot();
        let g = snapshot.guard();
        snapshot
            .by_address(ip(addr), &g)
            .map(|e| e.public_key.as_bytes()[0])
    }

    #[test]
    fn networks_route_by_longest_prefix_and_sources_follow_them() {
        let table = SessionTable::new();
        // A hub with 172.16.0.0/12, a site inside it, and a peer without networks.
        let hub = Arc::new(
            Arc::into_inner(entry(1))
                .unwrap()
                .with_allowed_ips(vec![net("172.16.0.0/12"), net("fd99::/16")]),
        );
        let site = Arc::new(
            Arc::into_inner(entry(2))
                .unwrap()
                .with_allowed_ips(vec![net("172.16.99.7/24"), net("fd99:1::/48")]),
        );
        let plain = entry(3);
        for e in [&hub, &site, &plain] {
            table.insert_peer(e);
        }
        assert_eq!(
            *site.allowed_ips(),
            vec![net("172.16.99.0/24"), net("fd99:1::/48")]
        );
        assert_eq!(routed_to(&table, "172.16.99.5"), Some(2));
        assert_eq!(routed_to(&table, "172.16.5.1"), Some(1));
        assert_eq!(routed_to(&table, "fd99:1::5"), Some(2));
        assert_eq!(routed_to(&table, "fd99:2::5"), Some(1));
        assert_eq!(routed_to(&table, "10.66.0.3"), Some(3));
        assert_eq!(routed_to(&table, "10.66.0.4"), None);
        assert_eq!(routed_to(&table, "192.0.2.1"), None);
        let snapshot = table.snapshot();
        // Each peer may send from its own address and networks...
        assert!(hub.owns_source(ip("10.66.0.1"), &snapshot));
        assert!(hub.owns_source(ip("172.31.255.1"), &snapshot));
        assert!(site.owns_source(ip("172.16.99.5"), &snapshot));
        assert!(site.owns_source(ip("fd99:1::5"), &snapshot));
        assert!(plain.owns_source(ip("10.66.0.3"), &snapshot));
        // ...not from another's, nor from a network inside its own that another holds.
        assert!(!hub.owns_source(ip("172.16.99.5"), &snapshot));
        assert!(!hub.owns_source(ip("fd99:1::5"), &snapshot));
        assert!(!site.owns_source(ip("172.16.5.1"), &snapshot));
        assert!(!site.owns_source(ip("10.66.0.3"), &snapshot));
        assert!(!plain.owns_source(ip("10.66.0.1"), &snapshot));
        assert!(!plain.owns_source(ip("192.0.2.1"), &snapshot));
        // 2 peers' own addresses... 3 of them, and 4 networks.
        assert_eq!(table.len(), 7);
        table.remove_peer(&site);
        assert_eq!(routed_to(&table, "172.16.99.5"), Some(1));
        assert!(hub.owns_source(ip("172.16.99.5"), &table.snapshot()));
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn changing_and_swapping_networks_leaves_each_with_its_new_holder() {
        let table = SessionTable::new();
        let (a, b) = (entry(1), entry(2));
        table.insert_peer(&a);
        table.insert_peer(&b);
        table.set_allowed_ips(&a, vec![net("10.99.0.0/24"), net("10.98.0.0/24")]);
        table.set_allowed_ips(&b, vec![net("10.97.0.0/24")]);
        let before = table.snapshot();
        // A reload swaps 10.99 and 10.97 between them, in this order of peers: a takes 10.97
        // from b before b lets go of it, b takes 10.99 after a dropped it.
        table.set_allowed_ips(&a, vec![net("10.97.0.0/24"), net("10.98.0.0/24")]);
        table.set_allowed_ips(&b, vec![net("10.99.0.0/24")]);
        assert_eq!(routed_to(&table, "10.97.0.1"), Some(1));
        assert_eq!(routed_to(&table, "10.98.0.1"), Some(1));
        assert_eq!(routed_to(&table, "10.99.0.1"), Some(2));
        // And back, in the other order of peers.
        table.set_allowed_ips(&b, vec![net("10.97.0.0/24")]);
        table.set_allowed_ips(&a, vec![net("10.99.0.0/24")]);
        assert_eq!(routed_to(&table, "10.97.0.1"), Some(2));
        assert_eq!(routed_to(&table, "10.98.0.1"), None);
        assert_eq!(routed_to(&table, "10.99.0.1"), Some(1));
        // A worker still holding the old snapshot sees the old routes, whole.
        let g = before.guard();
        let first = |addr| {
            before
                .by_address(ip(addr), &g)
                .map(|e| e.public_key.as_bytes()[0])
        };
        assert_eq!((first("10.99.0.1"), first("10.97.0.1")), (Some(1), Some(2)));
        // A peer replaced by a new entry (a new address) that keeps a network: removing the
        // old entry leaves the network with the new one.
        let a2 = Arc::new(
            PeerEntry::new(a.public_key, Arc::new(Session::new()), entry(7).assignment)
                .with_allowed_ips(vec![net("10.99.0.0/24")]),
        );
        table.insert_peer(&a2);
        table.remove_peer(&a);
        assert_eq!(routed_to(&table, "10.99.0.1"), Some(1));
        assert_eq!(routed_to(&table, "10.66.0.7"), Some(1));
        assert_eq!(routed_to(&table, "10.66.0.1"), None);
        table.remove_peer(&a2);
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
        for i in 0..8192u32 {
            let h = b.hash_one(i << 19);
            low.insert(h & 0xfff);
            high.insert(h >> 57);
        }
        // 8 192 random values in 4 096 slots fill ~3 540 of them.
        assert!(low.len() > 3300, "{} of 4096 low-bit values", low.len());
        assert_eq!(high.len(), 128, "all 7-bit tags seen");
    }
}
