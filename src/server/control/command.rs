//! Requests to the control thread from the operator's side (control socket, metrics, SIGHUP),
//! each with its own reply channel: the control thread owns the peers, so nobody else touches
//! them.

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
