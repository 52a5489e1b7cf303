//! The fleet registry: peers and their addresses shared by several headends through etcd.
//!
//! One thread per headend (`registry`) runs the etcd client on a tokio runtime of its own
//! (current-thread: the rest of the server stays synchronous). It loads the fleet's keys at
//! start, follows a watch from the loaded revision (a full re-list when the watch is compacted
//! or broken) and hands the control thread the whole desired peer set through the reload path
//! ([`Command::SetPeers`]), which touches only the peers that changed. The data plane never
//! waits on it: with etcd unreachable the headend serves its last known registry, and the
//! thread retries with backoff. Operator writes (`peer add/remove`, `registry import`) go to
//! etcd through this thread and come back through the watch like everyone else's; with etcd
//! unreachable they fail at once.
//!
//! The pure parts: [`layout`] (key names), [`record`] (JSON values), [`seal`] (PSKs under the
//! fleet key), [`mirror`] (the copy of the registry and the peer set it implies).

mod etcd;
pub mod layout;
pub mod mirror;
pub mod record;
pub mod seal;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::RegistryConfig;
use crate::proto::keys::{PresharedKey, PublicKey};
use crate::proto::suite::Suite;
use crate::server::control::command::{AddPeer, Added, Addressing, Command, ReloadReport};
use crate::server::control::HandshakeStats;
use crate::sys::clock::monotonic_now;

/// How long an operator's request waits for the registry thread (which bounds each etcd call
/// itself by [`etcd::CALL_TIMEOUT`], and an add by a few of them).
const REQUEST_WAIT: Duration = Duration::from_secs(20);

/// The registry's state, shared with `show` and the metrics.
#[derive(Debug, Default)]
pub struct RegistryStatus {
    connected: AtomicBool,
    revision: AtomicI64,
    /// Monotonic nanoseconds when the registry was last known to be in sync (0: never).
    synced_at: AtomicU64,
    peers: AtomicUsize,
    refusing: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// The registry's state at one moment (`show`, `show --json`, the metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryReport {
    /// The fleet's name.
    pub fleet: String,
    /// This headend's name in the fleet.
    pub name: String,
    /// Whether the registry thread follows etcd now.
    pub connected: bool,
    /// The etcd revision this headend's copy is at.
    pub revision: i64,
    /// Seconds since the copy was last known to be in sync; none: never loaded.
    pub age_secs: Option<f64>,
    /// Peers in the registry.
    pub peers: usize,
    /// Whether new handshakes are refused (`stale_after` passed).
    pub refusing_handshakes: bool,
    /// Why etcd was last unreachable, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl RegistryStatus {
    /// Seconds since the last sync, if any.
    fn age(&self) -> Option<Duration> {
        match self.synced_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_nanos(
                monotonic_now().as_nanos().saturating_sub(at),
            )),
        }
    }

    fn synced(&self, revision: i64, peers: usize) {
        self.revision.store(revision, Ordering::Relaxed);
        self.peers.store(peers, Ordering::Relaxed);
        self.synced_at
            .store(monotonic_now().as_nanos().max(1), Ordering::Relaxed);
    }

    fn set_connected(&self, connected: bool, error: Option<String>) {
        self.connected.store(connected, Ordering::Relaxed);
        if error.is_some() || connected {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A peer to move into etcd with `registry import`: its addresses as the file gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportPeer {
    /// Base64 public key.
    pub public_key: String,
    /// Base64 pre-shared key, if any (sealed before it reaches etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
    /// Its IPv4 address (kept in the fleet).
    pub address: Ipv4Addr,
    /// Whether the file fixed it (else the pool gave it).
    pub fixed_address: bool,
    /// Its IPv6 address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    /// Whether the file fixed it.
    #[serde(default)]
    pub fixed_address6: bool,
    /// Networks behind it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<IpNet>,
    /// Its protocol name.
    pub protocol: String,
}

/// What `registry import` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Peers written to etcd.
    pub imported: usize,
    /// Peers left out, with why (one line each).
    pub skipped: Vec<String>,
}

/// One live headend, for `show --fleet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetMember {
    /// Its name.
    pub name: String,
    /// Where clients reach it.
    pub endpoint: String,
    /// Clients it carries.
    pub clients: u64,
    /// Its version.
    pub version: String,
}

/// What the operator's side asks the registry thread.
#[derive(Debug)]
enum Request {
    Add(AddPeer, Sender<Result<Added, String>>),
    Remove(PublicKey, Sender<Result<(), String>>),
    Import(Vec<ImportPeer>, Sender<Result<ImportReport, String>>),
    Fleet(Sender<Result<Vec<FleetMember>, String>>),
    Readdress(Box<Addressing>, Sender<Result<ReloadReport, String>>),
}

/// The operator's side of the registry thread.
pub struct RegistryHandle {
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    status: Arc<RegistryStatus>,
    fleet: String,
    name: String,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl RegistryHandle {
    fn ask<T>(&self, make: impl FnOnce(Sender<Result<T, String>>) -> Request) -> Result<T, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.requests
            .send(make(tx))
            .map_err(|_| "the registry thread is gone".to_string())?;
        rx.recv_timeout(REQUEST_WAIT)
            .map_err(|_| "the registry thread did not answer in time".to_string())?
    }

    /// Adds a peer to the fleet (written to etcd; this headend applies it from the watch).
    pub fn add_peer(&self, req: AddPeer) -> Result<Added, String> {
        self.ask(|tx| Request::Add(req, tx))
    }

    /// Removes a peer from the fleet.
    pub fn remove_peer(&self, key: PublicKey) -> Result<(), String> {
        self.ask(|tx| Request::Remove(key, tx))
    }

    /// Moves peers into etcd (each once: a peer already there is skipped).
    pub fn import(&self, peers: Vec<ImportPeer>) -> Result<ImportReport, String> {
        self.ask(|tx| Request::Import(peers, tx))
    }

    /// The live headends.
    pub fn fleet(&self) -> Result<Vec<FleetMember>, String> {
        self.ask(Request::Fleet)
    }

    /// New push settings and MTU from a reload: the registry's peers run again under them.
    pub fn readdress(&self, addressing: Addressing) -> Result<ReloadReport, String> {
        self.ask(|tx| Request::Readdress(Box::new(addressing), tx))
    }

    /// The registry's state now.
    pub fn report(&self) -> RegistryReport {
        let s = &self.status;
        RegistryReport {
            fleet: self.fleet.clone(),
            name: self.name.clone(),
            connected: s.connected.load(Ordering::Relaxed),
            revision: s.revision.load(Ordering::Relaxed),
            age_secs: s.age().map(|d| d.as_secs_f64()),
            peers: s.peers.load(Ordering::Relaxed),
            refusing_handshakes: s.refusing.load(Ordering::Relaxed),
            last_error: s.last_error(),
        }
    }

    /// Waits for the thread (the stop flag must be set).
    pub fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// What the registry thread works with.
pub struct RegistryContext {
    /// The `[registry]` table.
    pub config: RegistryConfig,
    /// Pools, prefixes, MTU and push settings of the running server.
    pub addressing: Addressing,
    /// The control thread's command queue.
    pub commands: Sender<Command>,
    /// The handshake statistics, whose `registry_stale` flag this thread sets.
    pub handshakes: Arc<HandshakeStats>,
    /// The server's stop flag.
    pub stop: Arc<AtomicBool>,
    /// The server's public key (refused as a peer).
    pub server_key: PublicKey,
}

/// Starts the registry thread.
pub fn spawn(ctx: RegistryContext) -> std::io::Result<RegistryHandle> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let status = Arc::new(RegistryStatus::default());
    let (fleet, name) = (ctx.config.fleet.clone(), ctx.config.name.clone());
    let shared = status.clone();
    let thread = std::thread::Builder::new()
        .name("registry".into())
        .spawn(move || etcd::run(ctx, shared, rx))?;
    Ok(RegistryHandle {
        requests: tx,
        status,
        fleet,
        name,
        thread: Mutex::new(Some(thread)),
    })
}

/// The peers of a loaded file as `registry import` sends them.
pub fn import_peers(config: &crate::config::ServerConfig) -> Vec<ImportPeer> {
    config
        .peers
        .iter()
        .map(|p| ImportPeer {
            public_key: p.public_key.to_string(),
            psk: p.preshared_key.as_ref().map(psk_base64),
            address: p.address,
            fixed_address: p.fixed_address,
            address6: p.address6,
            fixed_address6: p.fixed_address6,
            allowed_ips: p.allowed_ips.clone(),
            protocol: p.protocol.name().to_string(),
        })
        .collect()
}

fn psk_base64(k: &PresharedKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k.as_bytes())
}

/// The suite of a protocol name from a request.
fn suite(name: &str) -> Result<Suite, String> {
    Suite::from_name(name)
        .ok_or_else(|| format!("unknown protocol {name:?}: use \"native\" or \"wireguard\""))
}
