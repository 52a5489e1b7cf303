//! Operating the headend: the control socket (`show`, `peer add/remove`, `reload`), the
//! Prometheus metrics endpoint, the latency interval logs, and what they share.
//!
//! Every operator request that touches peers goes to the control thread as a
//! [`Command`](crate::server::control::command::Command) with a reply channel; counters and histograms are
//! read directly from the workers' shared copies.
#![forbid(unsafe_code)]

pub mod frontdoor;
pub mod latency_log;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod show;
pub mod socket;
pub mod uapi;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::config::ServerConfig;
use crate::proto::handshake::FailureReason;
use crate::proto::keys::PublicKey;
use crate::proto::time::Instant;
use crate::server::control::command::{
    AddPeer, Added, Addressing, Command, KeyedSnapshot, ReloadReport, RunningPeers, Snapshot,
};
use crate::server::control::reload;
use crate::server::control::HandshakeStats;
use crate::server::dataplane::stats::{Counters, SharedCounters};
use crate::server::latency::SharedLatency;
use crate::sys::clock::monotonic_now;

/// How long an operator request waits for the control thread.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Peers logged one by one per kind of change on a reload; the rest are counted in one line.
const RELOAD_LOG_PEERS: usize = 20;

/// Everything the operator's side reads, shared by the socket, metrics and log threads.
pub struct Ops {
    /// The TUN interface's name.
    pub interface: String,
    /// The server's public key.
    pub public_key: PublicKey,
    /// The UDP port.
    pub listen_port: u16,
    /// Where the configuration is read from on reload.
    pub config_path: PathBuf,
    /// The configuration the server started with (for what a reload cannot change).
    pub running: ServerConfig,
    /// Per-worker counters.
    pub counters: Vec<Arc<SharedCounters>>,
    /// Per-worker latency histograms.
    pub latencies: Vec<Arc<SharedLatency>>,
    /// Handshake counters and latency.
    pub handshakes: Arc<HandshakeStats>,
    /// The control thread's command queue.
    pub commands: Sender<Command>,
    /// When the server started.
    pub started: Instant,
    /// The fleet registry's thread, when the server has one: peer changes go to etcd.
    pub registry: Option<registry::RegistryHandle>,
    rates: Mutex<Rates>,
    reload_lock: Mutex<()>,
}

/// The server's handshake counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeCounts {
    /// Handshakes completed.
    pub completed: u64,
    /// Cookie replies sent (the control thread's and the workers').
    pub cookie_replies: u64,
    /// Initiations refused, whatever the reason.
    pub failed: u64,
    /// Refusals by reason.
    pub by_reason: [(FailureReason, u64); FailureReason::ALL.len()],
}

/// Counters at the previous rate sample.
struct Rates {
    at: Instant,
    counters: Vec<Counters>,
    /// Packets per second over the last sample period, per worker: udp rx, udp tx, tun rx, tun tx.
    last: Vec<[f64; 4]>,
}

/// Rates are recomputed when the previous sample is at least this old.
const MIN_RATE_PERIOD: Duration = Duration::from_millis(500);

impl Ops {
    /// Shared state for a server that started at `started`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        interface: String,
        config_path: PathBuf,
        running: ServerConfig,
        counters: Vec<Arc<SharedCounters>>,
        latencies: Vec<Arc<SharedLatency>>,
        handshakes: Arc<HandshakeStats>,
        commands: Sender<Command>,
    ) -> Self {
        let started = monotonic_now();
        let workers = counters.len();
        Ops {
            interface,
            public_key: running.public_key,
            listen_port: running.listen_port,
            config_path,
            running,
            counters,
            latencies,
            handshakes,
            commands,
            started,
            registry: None,
            rates: Mutex::new(Rates {
                at: started,
                counters: vec![Counters::default(); workers],
                last: vec![[0.0; 4]; workers],
            }),
            reload_lock: Mutex::new(()),
        }
    }

    /// The operator's side of a running `engine`, whose configuration is `running`, read
    /// again from `config_path` on reload.
    pub fn for_engine(
        engine: &crate::server::engine::Engine,
        config_path: PathBuf,
        running: ServerConfig,
    ) -> Self {
        Ops::new(
            engine.interface().to_string(),
            config_path,
            running,
            engine.counters().to_vec(),
            engine.latencies().to_vec(),
            engine.handshake_stats(),
            engine.commands(),
        )
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.commands
            .send(make(tx))
            .map_err(|_| "the control thread is gone".to_string())?;
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| "the control thread did not answer in time".to_string())
    }

    /// Every peer, from the control thread.
    pub fn snapshot(&self) -> Result<Snapshot, String> {
        self.ask(Command::Snapshot)
    }

    /// With a fleet registry, peer changes go to etcd through its thread.
    pub fn with_registry(mut self, registry: registry::RegistryHandle) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The running peers (only `key`), with their keys and push settings.
    pub fn running_peers(&self, key: Option<PublicKey>) -> Result<RunningPeers, String> {
        self.ask(|tx| Command::Peers(key, tx))?
    }

    /// Adds a peer live (to the fleet's registry, when there is one).
    pub fn add_peer(&self, req: AddPeer) -> Result<Added, String> {
        match &self.registry {
            Some(r) => r.add_peer(req),
            None => self.ask(|tx| Command::AddPeer(req, tx))?,
        }
    }

    /// Removes a peer live (from the fleet's registry, when there is one).
    pub fn remove_peer(&self, key: PublicKey) -> Result<(), String> {
        match &self.registry {
            Some(r) => r.remove_peer(key),
            None => self.ask(|tx| Command::RemovePeer(key, tx))?,
        }
    }

    fn registry(&self) -> Result<&registry::RegistryHandle, String> {
        self.registry.as_ref().ok_or_else(|| {
            "this server has no [registry]: it is not part of a fleet (see \
             docs/operations.md, \"Running a fleet\")"
                .to_string()
        })
    }

    /// The live headends of the fleet.
    pub fn fleet(&self) -> Result<protocol::FleetReply, String> {
        let r = self.registry()?;
        let mut headends = r.fleet()?;
        headends.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(protocol::FleetReply {
            fleet: r.report().fleet,
            headends,
        })
    }

    /// Moves peers into the fleet's registry.
    pub fn registry_import(
        &self,
        peers: Vec<registry::ImportPeer>,
    ) -> Result<registry::ImportReport, String> {
        self.registry()?.import(peers)
    }

    /// Every peer with its pre-shared key (for the UAPI's `get`).
    pub fn keyed_snapshot(&self) -> Result<KeyedSnapshot, String> {
        self.ask(Command::KeyedSnapshot)
    }

    /// Re-reads the configuration file and applies the differences in peers. A file with
    /// problems changes nothing and returns them all.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (new, warnings) = ServerConfig::load(&self.config_path).map_err(|e| e.to_string())?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        if let Some(why) = reload::refuse(&self.running, &new) {
            return Err(why);
        }
        let restart_needed = reload::restart_only(&self.running, &new);
        // Peers get the running MTU: a new `mtu` waits for the restart like the TUN's.
        let mut specs = reload::peer_specs(&new);
        for s in &mut specs {
            s.assignment.mtu = self.running.mtu;
        }
        let mut addressing = Addressing::of(&new);
        addressing.mtu = self.running.mtu;
        let mut report = match &self.registry {
            // The peers are etcd's: they run again under the new push settings.
            Some(r) => r.readdress(addressing)?,
            None => self.ask(|tx| Command::SetPeers(specs, Box::new(addressing), tx))?,
        };
        report.restart_needed = restart_needed;
        tracing::info!(
            added = report.added.len(),
            removed = report.removed.len(),
            changed = report.changed.len(),
            unchanged = report.unchanged,
            restart_needed = ?report.restart_needed,
            "configuration reloaded"
        );
        // One line per peer, up to a bound: a reload of 10 000 peers would otherwise flood the
        // log. The full lists are in the reply (`concentrator reload` prints them).
        for k in report.added.iter().take(RELOAD_LOG_PEERS) {
            tracing::info!(peer = %k, "peer added (reload)");
        }
        for k in report.removed.iter().take(RELOAD_LOG_PEERS) {
            tracing::info!(peer = %k, "peer removed (reload)");
        }
        for (k, what) in report.changed.iter().take(RELOAD_LOG_PEERS) {
            tracing::info!(peer = %k, changed = ?what, "peer changed (reload)");
        }
        // The route problems were logged one by one by the control thread.
        let unlisted = [
            report.added.len(),
            report.removed.len(),
            report.changed.len(),
        ]
        .iter()
        .map(|n| n.saturating_sub(RELOAD_LOG_PEERS))
        .sum::<usize>();
        if unlisted > 0 {
            tracing::info!(
                unlisted,
                "more peers changed than are logged one by one (see the reload reply)"
            );
        }
        Ok(report)
    }

    /// Per-worker counters now, and packets per second since the previous sample (kept for at
    /// least [`MIN_RATE_PERIOD`], so two quick `show`s agree).
    pub fn counters_and_rates(&self) -> (Vec<Counters>, Vec<[f64; 4]>) {
        let now = monotonic_now();
        let current: Vec<Counters> = self.counters.iter().map(|c| c.snapshot()).collect();
        let mut r = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let dt = (now - r.at).as_secs_f64();
        if now - r.at >= MIN_RATE_PERIOD {
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
            r.last = current
                .iter()
                .zip(&r.counters)
                .map(|(c, p)| {
                    [
                        rate(c.udp_rx_packets, p.udp_rx_packets),
                        rate(c.udp_tx_packets, p.udp_tx_packets),
                        rate(c.tun_rx_packets, p.tun_rx_packets),
                        rate(c.tun_tx_packets, p.tun_tx_packets),
                    ]
                })
                .collect();
            r.at = now;
            r.counters = current.clone();
        }
        (current, r.last.clone())
    }

    /// Peers with a usable session.
    pub fn sessions(snapshot: &Snapshot) -> usize {
        snapshot
            .peers
            .iter()
            .filter(|p| p.session.current(snapshot.now).is_some())
            .count()
    }

    /// Handshake counters: completed, cookie replies (the control thread's and the workers'),
    /// and failures by reason.
    pub fn handshake_counts(&self) -> HandshakeCounts {
        let h = &self.handshakes;
        let by_reason =
            FailureReason::ALL.map(|r| (r, h.failed[r as usize].load(Ordering::Relaxed)));
        HandshakeCounts {
            completed: h.completed.load(Ordering::Relaxed),
            cookie_replies: h.cookie_replies.load(Ordering::Relaxed)
                + self
                    .counters
                    .iter()
                    .map(|c| c.snapshot().cookie_replies)
                    .sum::<u64>(),
            failed: by_reason.iter().map(|(_, n)| n).sum(),
            by_reason,
        }
    }
}
