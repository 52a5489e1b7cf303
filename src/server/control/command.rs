//! Requests to the control thread from the operator's side (control socket, UAPI socket,
//! metrics, SIGHUP), each with its own reply channel: the control thread owns the peers, so
//! nobody else touches them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crossbeam_channel::Sender;
use ipnet::IpNet;

use crate::config::{AddressPool, AddressPool6};
use crate::proto::keys::{PresharedKey, PublicKey};
use crate::proto::server::PeerConfig;
use crate::proto::time::Instant;
use crate::proto::wire::PushConfig;
use crate::server::session_table::PeerEntry;

/// What the operator asks.
#[derive(Debug)]
pub enum Command {
    /// Every peer, for `show` and the metrics.
    Snapshot(Sender<Snapshot>),
    /// `peer add`.
    AddPeer(AddPeer, Sender<Result<Added, String>>),
    /// `peer remove`.
    RemovePeer(PublicKey, Sender<Result<(), String>>),
    /// Make the peers exactly these (a reload); `addressing` replaces the pools.
    SetPeers(Vec<PeerConfig>, Box<Addressing>, Sender<ReloadReport>),
    /// Create, change or remove one peer with WireGuard's semantics (the UAPI's `set`).
    SetPeer(SetPeer, Sender<Result<PeerSet, String>>),
    /// Every peer with its pre-shared key and suite (the UAPI's `get`).
    KeyedSnapshot(Sender<KeyedSnapshot>),
    /// The running peers with their keys and push settings (only this one when given; an
    /// unknown key is an error), for `save` and `peer config`.
    Peers(Option<PublicKey>, Sender<Result<RunningPeers, String>>),
}

/// One peer of a UAPI `set`: what WireGuard's `wg set IF peer KEY ...` asks.
#[derive(Debug)]
pub struct SetPeer {
    /// Its public key.
    pub public_key: PublicKey,
    /// Remove it (everything else is then ignored); a peer that does not exist is no error.
    pub remove: bool,
    /// Change it only if it exists; never create it.
    pub update_only: bool,
    /// A new pre-shared key (all zeros: none).
    pub psk: Option<PresharedKey>,
    /// Edits of its networks, in order. A network another peer holds moves to this one,
    /// as WireGuard's `allowed_ip` does.
    pub allowed_ips: Vec<NetworkEdit>,
    /// The suite of a peer this creates (an existing peer keeps its own).
    pub suite: crate::proto::suite::Suite,
}

/// One edit of a peer's networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkEdit {
    /// Drop every network it has (its own addresses stay: they are assigned, not edited).
    Clear,
    /// Route this network to it.
    Add(IpNet),
    /// Stop routing this network to it.
    Remove(IpNet),
}

/// What a [`SetPeer`] did.
#[derive(Debug)]
pub enum PeerSet {
    /// The peer was created, with these addresses and networks.
    Added(Added),
    /// The peer existed and was changed (or left as it was).
    Changed {
        /// Route problems, one line each (the peer was changed all the same).
        warnings: Vec<String>,
    },
    /// The peer was removed.
    Removed,
    /// Nothing to do: removing or updating (`update_only`) a peer that does not exist.
    Absent,
}

/// The peers at one moment, with what the UAPI's `get` also lists.
#[derive(Debug)]
pub struct KeyedSnapshot {
    /// The peers.
    pub snapshot: Snapshot,
    /// Pre-shared keys of the peers that have one.
    pub psks: HashMap<PublicKey, PresharedKey>,
}

/// A peer as it runs: its configuration (with the addresses the pools gave it and its
/// pre-shared key) and what it is pushed.
#[derive(Debug, Clone)]
pub struct RunningPeer {
    pub config: PeerConfig,
    pub push: PushConfig,
}

/// The answer to [`Command::Peers`].
#[derive(Debug, Clone)]
pub struct RunningPeers {
    pub peers: Vec<RunningPeer>,
    /// Where clients reach the server (`public_endpoint`), if the file says.
    pub public_endpoint: Option<String>,
    /// The client subnets (IPv4, then IPv6 when the server has it).
    pub subnets: Vec<IpNet>,
}

/// A peer to add live.
#[derive(Debug)]
pub struct AddPeer {
    /// Its public key.
    pub public_key: PublicKey,
    /// Its pre-shared key, if any.
    pub psk: Option<PresharedKey>,
    /// A fixed IPv4 address; `None`: from the pool.
    pub address: Option<Ipv4Addr>,
    /// A fixed IPv6 address; `None`: from the pool, when the server has IPv6.
    pub address6: Option<Ipv6Addr>,
    /// Networks behind the peer (`allowed_ips`).
    pub allowed_ips: Vec<IpNet>,
    /// The protocol it speaks.
    pub suite: crate::proto::suite::Suite,
}

/// A peer added live, and what did not go as it should (a route the host already had).
#[derive(Debug)]
pub struct Added {
    /// The peer as it runs (with the addresses the pools gave it).
    pub config: PeerConfig,
    /// Problems with its kernel routes, one line each; the peer is added all the same.
    pub warnings: Vec<String>,
}

/// The peers at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// Every peer (cheap: shared entries).
    pub peers: Vec<Arc<PeerEntry>>,
    /// When the snapshot was taken (monotonic).
    pub now: Instant,
}

/// What clients are told besides their keys: where the addresses of live-added peers come
/// from, the MTU, and the routes and DNS servers every peer is pushed.
#[derive(Debug, Clone)]
pub struct Addressing {
    /// IPv4 pool, with every running peer's address taken.
    pub pool: AddressPool,
    /// IPv6 pool, when the server has `address6`.
    pub pool6: Option<AddressPool6>,
    /// The client subnet's prefix length.
    pub prefix: u8,
    /// The IPv6 client subnet's prefix length.
    pub prefix6: Option<u8>,
    /// The inner MTU told to clients.
    pub mtu: u16,
    /// The routes and DNS servers pushed to clients.
    pub push: PushPolicy,
    /// Where clients reach the server (`public_endpoint`), for generated client configs.
    pub public_endpoint: Option<String>,
}

/// Who is pushed what.
#[derive(Debug, Clone, Default)]
pub struct PushPolicy {
    /// Every peer, live-added ones included (top-level `push_routes` and `push_dns`).
    pub global: PushConfig,
    /// The peers of the file: the global settings and then their own.
    pub peers: HashMap<PublicKey, PushConfig>,
}

impl PushPolicy {
    /// What `key` is pushed.
    pub fn for_peer(&self, key: &PublicKey) -> &PushConfig {
        self.peers.get(key).unwrap_or(&self.global)
    }
}

impl Addressing {
    /// The addressing of a loaded configuration.
    pub fn of(config: &crate::config::ServerConfig) -> Self {
        Addressing {
            pool: config.pool.clone(),
            pool6: config.pool6.clone(),
            prefix: config.address.prefix_len(),
            prefix6: config.address6.map(|n| n.prefix_len()),
            mtu: config.mtu,
            public_endpoint: config.public_endpoint.clone(),
            push: PushPolicy {
                global: config.push.clone(),
                peers: config
                    .peers
                    .iter()
                    .map(|p| (p.public_key, p.push.clone()))
                    .collect(),
            },
        }
    }
}

/// What a reload did, by public key (base64).
#[derive(Debug, Default, Clone)]
pub struct ReloadReport {
    /// Peers added.
    pub added: Vec<String>,
    /// Peers removed.
    pub removed: Vec<String>,
    /// Peers changed, each with what changed (`psk`, `address`, `allowed_ips`, `protocol`).
    pub changed: Vec<(String, Vec<&'static str>)>,
    /// Peers left alone.
    pub unchanged: usize,
    /// Fields that differ but need a restart.
    pub restart_needed: Vec<&'static str>,
    /// Problems with kernel routes, one line each (the peers are changed all the same).
    pub warnings: Vec<String>,
}
