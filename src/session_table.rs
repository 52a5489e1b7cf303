//! The server's lock-free session table: who is behind a receiver index, who owns a virtual
//! address, and where each peer's packets go.
//!
//! Written only by the control thread, read by every worker on every packet without a lock
//! (papaya's concurrent map: readers never block and never wait for the writer). A worker pins a
//! [`TableGuard`] once per batch of completions and looks up as often as it likes under it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

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
        crate::proto::ip::source_allowed(&self.assignment, inner_source)
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

/// Lookups by receiver index and by virtual address.
#[derive(Default)]
pub struct SessionTable {
    map: papaya::HashMap<Key, Arc<PeerEntry>>,
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> Self {
        SessionTable::default()
    }

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
        self.map.get(&Key::Index(index), guard)
    }

    /// The peer whose virtual address is `addr`.
    pub fn by_address<'g>(
        &self,
        addr: IpAddr,
        guard: &'g TableGuard<'_>,
    ) -> Option<&'g Arc<PeerEntry>> {
        self.map.get(&Key::Address(addr), guard)
    }

    /// Publishes a peer under its virtual addresses (replacing any previous entry for them).
    pub fn insert_peer(&self, entry: &Arc<PeerEntry>) {
        let map = self.map.pin();
        map.insert(
            Key::Address(IpAddr::V4(entry.assignment.ipv4)),
            entry.clone(),
        );
        if let Some((v6, _)) = entry.assignment.ipv6 {
            map.insert(Key::Address(IpAddr::V6(v6)), entry.clone());
        }
    }

    /// Publishes receiver index `index` for `entry`.
    pub fn insert_index(&self, index: u32, entry: &Arc<PeerEntry>) {
        self.map.pin().insert(Key::Index(index), entry.clone());
    }

    /// Forgets receiver index `index`.
    pub fn remove_index(&self, index: u32) {
        self.map.pin().remove(&Key::Index(index));
    }

    /// Forgets a peer's addresses (its indexes are removed with `remove_index`).
    pub fn remove_peer(&self, entry: &PeerEntry) {
        let map = self.map.pin();
        map.remove(&Key::Address(IpAddr::V4(entry.assignment.ipv4)));
        if let Some((v6, _)) = entry.assignment.ipv6 {
            map.remove(&Key::Address(IpAddr::V6(v6)));
        }
    }

    /// Number of entries (indexes and addresses).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is published.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
