//! The control thread: answers handshakes, runs the timers, publishes sessions in the table the
//! workers read, and carries out the operator's commands (peer add/remove, reload, snapshots for
//! `show` and the metrics), which reach it over a channel with a reply channel each.

pub mod command;
pub mod faillog;
mod live;
pub mod reload;
pub mod routes;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_channel::{select, Receiver};
use ipnet::IpNet;

use self::command::{
    AddPeer, Added, Addressing, Command, ReloadReport, RunningPeer, RunningPeers, Snapshot,
};
use self::faillog::FailureLog;
use self::routes::KernelRoutes;
use crate::proto::handshake::FailureReason;
use crate::proto::keys::{PresharedKey, PublicKey};
use crate::proto::rng::OsRandom;
use crate::proto::server::{HandshakeReply, PeerConfig, Server, PUSH_BUFFER_LEN};
use crate::proto::time::Instant;
use crate::proto::wire::{AddressAssignment, TRANSPORT_MIN_LEN};
use crate::server::handoff::{HandshakeMessage, LoadSignal, SharedCookieSecrets, HANDSHAKE_QUEUE};
use crate::server::latency::{latency_histogram, record_latency, SharedLatency};
use crate::server::session_table::{PeerEntry, SessionTable};
use crate::sys::clock::monotonic_now;

/// The responder is "under load" (cookies required) when the queue holds this many: WireGuard
/// uses an eighth of its queue (`MAX_QUEUED_INCOMING_HANDSHAKES / 8`, device/receive.go).
pub const UNDER_LOAD_THRESHOLD: usize = HANDSHAKE_QUEUE / 8;
/// Once under load, stay so this long after the queue last reached the threshold, as
/// WireGuard does (`UnderLoadAfterTime`, device/constants.go): a flood arrives in bursts, and
/// every initiation let through to the Diffie-Hellman between bursts costs ~50 us of this thread.
pub const UNDER_LOAD_AFTER: Duration = Duration::from_secs(1);
/// Handshake messages handled in a row before commands and the tick get a look.
const DRAIN_AT_ONCE: usize = 1024;
/// Under load, the control thread naps this long when its queue runs empty: handshakes wait
/// at most this much longer, and the queue (HANDSHAKE_QUEUE) holds 80 ms of a 50 000/s flood.
const UNDER_LOAD_NAP: Duration = Duration::from_millis(1);
/// Period of the housekeeping tick.
const TICK: Duration = Duration::from_millis(500);

/// Handshake counters, read by `show` and the metrics.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    /// Handshakes completed.
    pub completed: AtomicU64,
    /// Cookie replies sent.
    pub cookie_replies: AtomicU64,
    /// Initiations refused, by [`FailureReason`] (indexed by `reason as usize`).
    pub failed: [AtomicU64; FailureReason::ALL.len()],
    /// Handshake latency: from the worker receiving the initiation to the control thread sending
    /// its answer (responses, and the cookie replies it writes), in ns. Cookie replies a worker
    /// writes itself are in that worker's per-packet latency instead.
    pub latency: SharedLatency,
    /// Set by the fleet registry while its copy is older than `stale_after`: initiations are
    /// refused (a headend cut off from etcd must not admit a revoked peer forever).
    pub registry_stale: AtomicBool,
    /// Initiations refused because the registry was stale.
    pub refused_stale: AtomicU64,
}

/// The control thread's state.
pub struct Control {
    server: Server,
    table: Arc<SessionTable>,
    entries: HashMap<PublicKey, Arc<PeerEntry>>,
    handshakes: Receiver<HandshakeMessage>,
    /// One socket per underlay family (duplicates of a worker's socket, same port).
    /// With whether each is IPv4 (looked up once, not per reply).
    reply_sockets: Vec<(UdpSocket, bool)>,
    stats: Arc<HandshakeStats>,
    stop: Arc<AtomicBool>,
    rng: OsRandom,
    commands: Receiver<Command>,
    addressing: Option<Addressing>,
    psks: HashMap<PublicKey, PresharedKey>,
    latency: hdrhistogram::Histogram<u64>,
    failures: FailureLog,
    /// Peers were removed at this time: give their memory back once the workers let go of it.
    trim_after: Option<Instant>,
    /// Cookies are required until then (see [`UNDER_LOAD_AFTER`]).
    under_load_until: Option<Instant>,
    /// The same, for the workers.
    load: Arc<LoadSignal>,
    /// The cookie secrets the workers answer cookie-less initiations with; replaced after
    /// each rotation (see [`Control::tick`]).
    cookie_secrets: SharedCookieSecrets,
    /// The kernel routes for the peers' `allowed_ips` (none reach the kernel unless
    /// [`Control::set_kernel_routes`] gave a device).
    routes: KernelRoutes,
}

/// How long after peers are removed their memory is handed back: the lock-free table frees
/// entries only once every worker has moved past them.
const TRIM_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

impl Control {
    /// A control thread for `server` publishing into `table`.
    pub fn new(
        server: Server,
        table: Arc<SessionTable>,
        handshakes: Receiver<HandshakeMessage>,
        reply_sockets: Vec<UdpSocket>,
        stats: Arc<HandshakeStats>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Control {
            table,
            entries: HashMap::new(),
            handshakes,
            reply_sockets: reply_sockets
                .into_iter()
                .map(|s| {
                    let v4 = s.local_addr().map(|a| a.is_ipv4()).unwrap_or(false);
                    (s, v4)
                })
                .collect(),
            stats,
            stop,
            rng: OsRandom,
            commands: crossbeam_channel::never(),
            addressing: None,
            psks: HashMap::new(),
            latency: latency_histogram(),
            failures: FailureLog::default(),
            trim_after: None,
            under_load_until: None,
            load: Arc::default(),
            cookie_secrets: Arc::new(ArcSwap::new(server.cookie_secrets().clone())),
            routes: KernelRoutes::default(),
            server,
        }
    }

    /// Installs the kernel routes of the peers' `allowed_ips` through `routes` (into the TUN)
    /// from now on. Call it before adding peers.
    pub fn set_kernel_routes(&mut self, routes: KernelRoutes) {
        self.routes = routes;
    }

    /// Applies the route changes of the peer changes made since the last call; returns the
    /// problems (also logged). Peer commands and reloads call it themselves; the engine calls
    /// it once after adding the configured peers.
    pub fn flush_routes(&mut self) -> Vec<String> {
        self.routes.flush()
    }

    /// Publishes the under-load state to `load` (shared with the workers).
    pub fn with_load_signal(mut self, load: Arc<LoadSignal>) -> Self {
        self.load = load;
        self
    }

    /// The cookie secrets in use, for the workers (kept current by the control thread).
    pub fn shared_cookie_secrets(&self) -> SharedCookieSecrets {
        self.cookie_secrets.clone()
    }

    /// Takes the operator's commands from `commands`.
    pub fn with_commands(mut self, commands: Receiver<Command>) -> Self {
        self.commands = commands;
        self
    }

    /// Sets the pools live-added peers get their addresses from (without it, `peer add` needs
    /// an explicit address and nothing is released on remove) and what every peer is pushed;
    /// returns how many peers' push settings changed (connected ones get them at once).
    pub fn set_addressing(&mut self, addressing: Addressing) -> usize {
        let now = monotonic_now();
        let changed = self
            .entries
            .keys()
            .filter(|key| {
                let push = addressing.push.for_peer(key).clone();
                self.server.set_push(key, push, now)
            })
            .count();
        self.addressing = Some(addressing);
        changed
    }

    /// Sends `key` the push message due, if any, to `to` (else to its endpoint).
    fn send_push(&mut self, key: &PublicKey, now: Instant, to: Option<SocketAddr>) {
        let Some(to) = to.or_else(|| self.entries.get(key).and_then(|e| e.endpoint())) else {
            return;
        };
        let mut buf = [0u8; PUSH_BUFFER_LEN];
        if let Some(n) = self.server.write_push(key, now, &mut buf) {
            self.send(&buf[..n], to);
        }
    }

    /// Adds a peer (or replaces its configuration) and publishes its addresses and
    /// `allowed_ips` (taking networks from peers that held them: the callers refuse or have
    /// refused conflicts). A replaced peer keeps its entry (endpoint, byte counts) when its
    /// addresses stay; when they change it gets a new entry under the new addresses and loses
    /// its keys, so that it handshakes again and learns them. Kernel routes follow at the next
    /// [`Control::flush_routes`].
    pub fn add_peer(&mut self, config: PeerConfig) {
        let key = config.public_key;
        let assignment = config.assignment;
        let suite = config.suite;
        let allowed_ips = config.allowed_ips.clone();
        self.psks.insert(key, config.psk.clone());
        let session = self.server.add_peer(config);
        match self.entries.get(&key).cloned() {
            // Another suite is another handshake: a new entry, like new addresses.
            Some(old) if old.assignment == assignment && old.suite == suite => {
                self.release_routes(&old);
                self.table.set_allowed_ips(&old, allowed_ips);
                self.hold_routes(&old);
            }
            Some(old) => {
                let entry = Arc::new(
                    PeerEntry::new(key, session, assignment)
                        .with_suite(suite)
                        .with_allowed_ips(allowed_ips),
                );
                if let Some(ep) = old.endpoint() {
                    entry.roam_to(ep);
                }
                entry
                    .rx_bytes
                    .store(old.rx_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
                entry
                    .tx_bytes
                    .store(old.tx_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
                // The new entry first, so that what both hold never goes unrouted; then what
                // only the old one still holds.
                self.table.insert_peer(&entry);
                self.table.remove_peer(&old);
                self.release_routes(&old);
                self.hold_routes(&entry);
                self.entries.insert(key, entry);
                // Keys made under the old assignment: erase them, so the client handshakes
                // again and is told its new address.
                for index in entry_indexes(&old) {
                    self.table.remove_index(index);
                }
                old.session.clear();
            }
            None => {
                let entry = Arc::new(
                    PeerEntry::new(key, session, assignment)
                        .with_suite(suite)
                        .with_allowed_ips(allowed_ips),
                );
                self.table.insert_peer(&entry);
                self.hold_routes(&entry);
                self.entries.insert(key, entry);
            }
        }
    }

    /// The kernel routes of `entry`'s networks are wanted.
    fn hold_routes(&mut self, entry: &PeerEntry) {
        for prefix in entry.allowed_ips().iter() {
            self.routes.hold(*prefix);
        }
    }

    /// `entry` no longer needs the kernel routes of its networks.
    fn release_routes(&mut self, entry: &PeerEntry) {
        for prefix in entry.allowed_ips().iter() {
            self.routes.release(*prefix);
        }
    }

    /// Gives back the room of maps left nearly empty by removed peers; true when the session
    /// table was rebuilt.
    fn shrink_if_sparse(&mut self) -> bool {
        use crate::proto::server::shrink_if_sparse;
        shrink_if_sparse(&mut self.entries);
        shrink_if_sparse(&mut self.psks);
        self.server.shrink_if_sparse();
        let rebuilt = self.table.compact_if_sparse();
        if rebuilt {
            tracing::debug!(
                entries = self.table.len(),
                "session table rebuilt after removals"
            );
        }
        rebuilt
    }

    /// Removes a peer: its addresses and indexes vanish from the table, its keys are erased.
    pub fn remove_peer(&mut self, key: &PublicKey) -> bool {
        self.trim_after
            .get_or_insert(crate::sys::clock::monotonic_now() + TRIM_DELAY);
        let Some(entry) = self.entries.remove(key) else {
            return false;
        };
        self.psks.remove(key);
        self.table.remove_peer(&entry);
        self.release_routes(&entry);
        for index in self.server.remove_peer(key).unwrap_or_default() {
            self.table.remove_index(index);
        }
        true
    }

    /// Adds a peer from the operator: addresses from the pools unless given.
    fn add_live(&mut self, req: AddPeer) -> Result<Added, String> {
        if self.entries.contains_key(&req.public_key) {
            return Err(format!(
                "{} is already a peer; remove it first to change it",
                req.public_key
            ));
        }
        self.check_allowed_ips(&req)?;
        let Some(a) = self.addressing.as_mut() else {
            return Err("this server has no address pool".into());
        };
        let ipv4 = match req.address {
            Some(ip) if !a.pool.is_host(ip) => {
                return Err(format!(
                    "{ip} is not a host address of the client subnet {}",
                    a.pool.network()
                ))
            }
            Some(ip) if !a.pool.reserve(ip) => {
                return Err(format!(
                    "{ip} is already taken (by another peer or the server)"
                ))
            }
            Some(ip) => ip,
            None => a
                .pool
                .allocate(req.public_key.as_bytes())
                .ok_or_else(|| format!("no free address left in {}", a.pool.network()))?,
        };
        let ipv6 = match (a.pool6.as_mut(), req.address6) {
            (None, Some(_)) => {
                a.pool.release(ipv4);
                return Err("the server has no address6, so a peer cannot have one".into());
            }
            (None, None) => None,
            (Some(p6), Some(ip)) => {
                if !p6.reserve(ip) {
                    a.pool.release(ipv4);
                    return Err(format!("{ip} is outside the IPv6 subnet or already taken"));
                }
                Some(ip)
            }
            (Some(p6), None) => p6.allocate(req.public_key.as_bytes()),
        };
        let spec = PeerConfig {
            public_key: req.public_key,
            psk: req.psk.unwrap_or_else(PresharedKey::zero),
            assignment: AddressAssignment {
                ipv4,
                ipv4_prefix: a.prefix,
                ipv6: ipv6.zip(a.prefix6),
                mtu: a.mtu,
            },
            allowed_ips: req.allowed_ips,
            suite: req.suite,
        };
        let push = a.push.global.clone();
        self.add_peer(spec.clone());
        self.server
            .set_push(&spec.public_key, push, monotonic_now());
        let warnings = self.routes.flush();
        tracing::info!(
            peer = %spec.public_key,
            address = %ipv4,
            allowed_ips = ?spec.allowed_ips,
            "peer added"
        );
        Ok(Added {
            config: spec,
            warnings,
        })
    }

    /// Refuses `allowed_ips` that no peer may have (see [`config::allowed_ip_problem`]) or
    /// that another peer has, naming both peers.
    ///
    /// [`config::allowed_ip_problem`]: crate::config::allowed_ip_problem
    fn check_allowed_ips(&self, req: &AddPeer) -> Result<(), String> {
        let Some(a) = self.addressing.as_ref() else {
            return Ok(());
        };
        let table = self.table.snapshot();
        for prefix in req.allowed_ips.iter().map(|p| p.trunc()) {
            let subnet6 = a.pool6.as_ref().map(|p| p.network());
            if let Some(why) = crate::config::allowed_ip_problem(prefix, a.pool.network(), subnet6)
            {
                return Err(format!("allowed_ips: {why}"));
            }
            if let Some(holder) = table.holder_of(prefix) {
                return Err(format!(
                    "allowed_ips: {prefix} is already routed to peer {}: a network can be \
                     routed to one peer only, so peer {} was not added; remove {prefix} from \
                     the first (or give the new peer a longer prefix inside it)",
                    holder.public_key, req.public_key
                ));
            }
        }
        Ok(())
    }

    /// Removes a peer for the operator and gives its addresses back to the pools.
    fn remove_live(&mut self, key: &PublicKey) -> Result<(), String> {
        let assignment = self.entries.get(key).map(|e| e.assignment);
        if !self.remove_peer(key) {
            return Err(format!("{key} is not a peer"));
        }
        self.routes.flush();
        if let (Some(a), Some(asg)) = (self.addressing.as_mut(), assignment) {
            a.pool.release(asg.ipv4);
            if let (Some(p6), Some((ip, _))) = (a.pool6.as_mut(), asg.ipv6) {
                p6.release(ip);
            }
        }
        tracing::info!(peer = %key, "peer removed");
        Ok(())
    }

    /// The running peers as specs (for reload diffs).
    pub fn peer_specs(&self) -> HashMap<PublicKey, PeerConfig> {
        self.entries
            .iter()
            .map(|(k, e)| (*k, self.spec_of(e)))
            .collect()
    }

    /// The spec a running peer runs with.
    fn spec_of(&self, e: &PeerEntry) -> PeerConfig {
        PeerConfig {
            public_key: e.public_key,
            psk: self
                .psks
                .get(&e.public_key)
                .cloned()
                .unwrap_or_else(PresharedKey::zero),
            assignment: e.assignment,
            allowed_ips: e.allowed_ips().to_vec(),
            suite: e.suite,
        }
    }

    /// The running peers (only `key` when given) with their keys and what they are pushed, for
    /// `concentrator save` and `peer config`.
    fn running_peers(&self, key: Option<&PublicKey>) -> Result<RunningPeers, String> {
        let entries: Vec<&Arc<PeerEntry>> = match key {
            Some(k) => vec![self
                .entries
                .get(k)
                .ok_or_else(|| format!("{k} is not a peer"))?],
            None => self.entries.values().collect(),
        };
        let peers = entries
            .into_iter()
            .map(|e| RunningPeer {
                config: self.spec_of(e),
                push: self.server.push(&e.public_key).cloned().unwrap_or_default(),
            })
            .collect();
        let a = self.addressing.as_ref();
        Ok(RunningPeers {
            peers,
            public_endpoint: a.and_then(|a| a.public_endpoint.clone()),
            subnets: a
                .map(|a| {
                    std::iter::once(IpNet::V4(a.pool.network()))
                        .chain(a.pool6.as_ref().map(|p| IpNet::V6(p.network())))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Makes the peers exactly `specs`, touching only those that differ.
    pub fn set_peers(&mut self, specs: Vec<PeerConfig>, addressing: Addressing) -> ReloadReport {
        let plan = reload::plan(&self.peer_specs(), specs);
        let mut report = ReloadReport {
            unchanged: plan.unchanged,
            ..Default::default()
        };
        for key in &plan.remove {
            self.remove_peer(key);
            report.removed.push(key.to_string());
        }
        for (spec, change) in plan.change {
            let mut what = Vec::new();
            if change.psk {
                what.push("psk");
            }
            if change.address {
                what.push("address");
            }
            if change.allowed_ips {
                what.push("allowed_ips");
            }
            if change.protocol {
                what.push("protocol");
            }
            report.changed.push((spec.public_key.to_string(), what));
            self.add_peer(spec);
        }
        for spec in plan.add {
            report.added.push(spec.public_key.to_string());
            self.add_peer(spec);
        }
        let pushes = self.set_addressing(addressing);
        if pushes > 0 {
            tracing::info!(
                peers = pushes,
                "push settings changed (sent at once to connected peers)"
            );
        }
        report.warnings = self.routes.flush();
        report
    }

    /// Carries out one operator command.
    pub fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Snapshot(reply) => {
                self.stats.latency.merge_from(&mut self.latency);
                let _ = reply.send(Snapshot {
                    peers: self.entries.values().cloned().collect(),
                    now: monotonic_now(),
                });
            }
            Command::AddPeer(req, reply) => {
                let _ = reply.send(self.add_live(req));
            }
            Command::RemovePeer(key, reply) => {
                let _ = reply.send(self.remove_live(&key));
            }
            Command::SetPeers(specs, addressing, reply) => {
                let _ = reply.send(self.set_peers(specs, *addressing));
            }
            Command::SetPeer(req, reply) => {
                let _ = reply.send(self.set_live(req));
            }
            Command::KeyedSnapshot(reply) => {
                let _ = reply.send(command::KeyedSnapshot {
                    snapshot: Snapshot {
                        peers: self.entries.values().cloned().collect(),
                        now: monotonic_now(),
                    },
                    psks: self.psks.clone(),
                });
            }
            Command::Peers(key, reply) => {
                let _ = reply.send(self.running_peers(key.as_ref()));
            }
        }
    }

    /// The published peers.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<PeerEntry>> {
        self.entries.values()
    }

    fn send(&self, bytes: &[u8], to: SocketAddr) {
        let socket = self
            .reply_sockets
            .iter()
            .find(|(_, v4)| *v4 == to.is_ipv4())
            .map(|(s, _)| s);
        match socket {
            Some(s) => {
                if let Err(e) = s.send_to(bytes, to) {
                    tracing::debug!(error = %e, %to, "control send failed");
                }
            }
            None => tracing::debug!(%to, "no socket for this address family"),
        }
    }

    /// Handles one initiation.
    pub fn handle(&mut self, msg: &HandshakeMessage, now: Instant) {
        if self.stats.registry_stale.load(Ordering::Relaxed) {
            self.stats.refused_stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let under_load = under_load(&mut self.under_load_until, self.handshakes.len(), now);
        self.load.publish(self.under_load_until);
        let mut out = [0u8; 148];
        match self.server.handle_initiation(
            &msg.bytes,
            msg.src,
            now,
            under_load,
            &mut self.rng,
            &mut out,
        ) {
            Ok(HandshakeReply::Cookie(len)) => {
                self.stats.cookie_replies.fetch_add(1, Ordering::Relaxed);
                self.send(&out[..len], msg.src);
                self.record_latency(msg);
            }
            Ok(HandshakeReply::Established(done)) => {
                let Some(entry) = self.entries.get(&done.peer) else {
                    return;
                };
                // Publish before answering, so the client's first packet finds its index.
                entry.roam_to(msg.src);
                self.table.insert_index(done.local_index, entry);
                for index in &done.retired_indexes {
                    self.table.remove_index(*index);
                }
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %done.peer, endpoint = %msg.src, "handshake completed");
                self.send(&out[..done.len], msg.src);
                self.record_latency(msg);
                // Right behind the response, under the keys it set up.
                self.send_push(&done.peer, now, Some(msg.src));
            }
            Err(e) => {
                let reason = e.reason();
                self.stats.failed[reason as usize].fetch_add(1, Ordering::Relaxed);
                if let Some(count) = self.failures.note(reason, now) {
                    tracing::warn!(
                        reason = reason.name(),
                        count,
                        last_source = %msg.src,
                        error = %e,
                        "handshake failures (at most one line per reason per 10 s)"
                    );
                }
            }
        }
    }

    fn record_latency(&mut self, msg: &HandshakeMessage) {
        let sent = monotonic_now();
        record_latency(
            &mut self.latency,
            (sent - msg.received).as_nanos() as u64,
            1,
        );
    }

    /// Timers: keepalives, key erasure, index retirement; publishes the handshake latency and
    /// logs held-back failure counts.
    pub fn tick(&mut self, now: Instant) {
        self.stats.latency.merge_from(&mut self.latency);
        for (reason, count) in self.failures.flush(now) {
            tracing::warn!(
                reason = reason.name(),
                count,
                "handshake failures (at most one line per reason per 10 s)"
            );
        }
        if self.trim_after.is_some_and(|t| now >= t) {
            self.trim_after = None;
            if self.shrink_if_sparse() {
                // The old session map is freed by whichever worker lets go of it last, after
                // this trim: hand that memory back too, once their batches are surely over.
                self.trim_after = Some(now + TRIM_DELAY);
            }
            crate::sys::mem::release_free_memory();
        }
        // Workers answer cookie-less initiations with the shared secrets, so this thread may
        // see none for a long time: rotate here rather than only when one arrives.
        self.server.rotate_cookie_secret(now, &mut self.rng);
        if !Arc::ptr_eq(&self.cookie_secrets.load(), self.server.cookie_secrets()) {
            self.cookie_secrets
                .store(self.server.cookie_secrets().clone());
        }
        let report = self.server.tick(now);
        for index in report.retired_indexes {
            self.table.remove_index(index);
        }
        for key in report.keepalives {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            let Some(endpoint) = entry.endpoint() else {
                continue;
            };
            // Empty, in either suite: WireGuard pads no keepalive (0 is a multiple of 16).
            let mut buf = [0u8; TRANSPORT_MIN_LEN];
            if let Ok(n) = entry.session.encrypt(&mut buf, 0, now) {
                self.send(&buf[..n], endpoint);
            }
        }
        for key in report.pushes {
            self.send_push(&key, now, None);
        }
    }

    /// Runs until `stop` is set: handshakes, commands and the tick, whichever comes first.
    pub fn run(mut self) {
        let handshakes = self.handshakes.clone();
        let mut commands = self.commands.clone();
        let ticker = crossbeam_channel::tick(TICK);
        let mut next_tick = monotonic_now() + TICK;
        while !self.stop.load(Ordering::Relaxed) {
            select! {
                recv(handshakes) -> msg => match msg {
                    Ok(msg) => {
                        self.handle(&msg, monotonic_now());
                        // Take what else is queued without another round through select!.
                        for msg in handshakes.try_iter().take(DRAIN_AT_ONCE) {
                            self.handle(&msg, monotonic_now());
                        }
                        if self.under_load_until.is_some_and(|t| monotonic_now() < t)
                            && handshakes.is_empty()
                        {
                            // Under a flood, let messages gather for a moment instead of
                            // having every one of them wake this thread (a futex wake and a
                            // context switch each, more than answering it costs).
                            std::thread::sleep(UNDER_LOAD_NAP);
                        }
                    }
                    Err(_) => break,
                },
                recv(commands) -> cmd => match cmd {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => commands = crossbeam_channel::never(),
                },
                recv(ticker) -> _ => {}
            }
            let now = monotonic_now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
        }
        self.stats.latency.merge_from(&mut self.latency);
    }
}

/// Whether cookies are required now, given `queued` handshake messages: from the moment the
/// queue reaches [`UNDER_LOAD_THRESHOLD`] until [`UNDER_LOAD_AFTER`] after it last did.
fn under_load(until: &mut Option<Instant>, queued: usize, now: Instant) -> bool {
    if queued >= UNDER_LOAD_THRESHOLD {
        *until = Some(now + UNDER_LOAD_AFTER);
    }
    until.is_some_and(|until| now < until)
}

/// Receiver indexes a peer's session holds.
fn entry_indexes(entry: &PeerEntry) -> Vec<u32> {
    entry.session.local_indexes()
}

#[cfg(test)]
mod tests {
    use super::command::PushPolicy;
    use super::*;
    use crate::config::AddressPool;
    use crate::proto::keys::StaticSecret;
    use std::net::Ipv4Addr;

    pub(super) fn control() -> (Control, Arc<SessionTable>) {
        let mut rng = OsRandom;
        let server = Server::new(
            StaticSecret::generate(&mut rng),
            Instant::from_nanos(1),
            &mut rng,
        );
        let table = Arc::new(SessionTable::new());
        let (tx, rx) = crossbeam_channel::bounded(1);
        // The workers' side stays open for the life of the test.
        std::mem::forget(tx);
        let mut c = Control::new(
            server,
            table.clone(),
            rx,
            Vec::new(),
            Arc::default(),
            Arc::default(),
        );
        c.set_addressing(addressing());
        (c, table)
    }

    fn addressing() -> Addressing {
        Addressing {
            pool: AddressPool::new("10.66.0.1/24".parse().unwrap()),
            pool6: None,
            prefix: 24,
            prefix6: None,
            mtu: 1420,
            push: PushPolicy::default(),
            public_endpoint: None,
        }
    }

    pub(super) fn key(i: u8) -> PublicKey {
        PublicKey::from([i; 32])
    }

    fn add(i: u8, address: Option<Ipv4Addr>) -> AddPeer {
        AddPeer {
            public_key: key(i),
            psk: None,
            address,
            address6: None,
            allowed_ips: Vec::new(),
            suite: crate::proto::suite::Suite::Native,
        }
    }

    fn lookup(table: &SessionTable, ip: Ipv4Addr) -> Option<Arc<PeerEntry>> {
        let snapshot = table.snapshot();
        let g = snapshot.guard();
        snapshot.by_address(ip.into(), &g).cloned()
    }

    #[test]
    fn a_stale_registry_refuses_initiations_before_looking_at_them() {
        let (mut c, _) = control();
        let msg = HandshakeMessage {
            bytes: [0u8; 148],
            src: "192.0.2.1:1".parse().unwrap(),
            received: Instant::from_nanos(1),
        };
        let failed = |c: &Control| -> u64 {
            c.stats
                .failed
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum()
        };
        c.stats.registry_stale.store(true, Ordering::Relaxed);
        c.handle(&msg, Instant::from_nanos(2));
        assert_eq!(c.stats.refused_stale.load(Ordering::Relaxed), 1);
        assert_eq!(failed(&c), 0, "refused before being checked");
        // In sync again: the same (bad) initiation is looked at, and fails on its merits.
        c.stats.registry_stale.store(false, Ordering::Relaxed);
        c.handle(&msg, Instant::from_nanos(3));
        assert_eq!(c.stats.refused_stale.load(Ordering::Relaxed), 1);
        assert_eq!(failed(&c), 1);
    }

    #[test]
    fn under_load_holds_for_a_second_after_the_queue_drains() {
        let t0 = Instant::from_nanos(1_000_000_000);
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut until = None;
        assert!(!under_load(&mut until, UNDER_LOAD_THRESHOLD - 1, t0));
        assert!(under_load(&mut until, UNDER_LOAD_THRESHOLD, ms(10)));
        // The queue drained between two bursts: still under load.
        assert!(under_load(&mut until, 0, ms(500)));
        assert!(under_load(&mut until, 3, ms(1009)));
        assert!(!under_load(&mut until, 3, ms(1010)));
        // A new burst re-arms it.
        assert!(under_load(&mut until, UNDER_LOAD_THRESHOLD + 5, ms(2000)));
        assert!(under_load(&mut until, 0, ms(2999)));
        assert!(!under_load(&mut until, 0, ms(3000)));
    }

    #[test]
    fn running_peers_carry_keys_suites_and_pushes() {
        use crate::proto::suite::Suite;
        use crate::proto::wire::PushConfig;
        let (mut c, _) = control();
        let mut a = c.addressing.clone().unwrap();
        a.public_endpoint = Some("vpn.example.com:51820".into());
        a.push.global = PushConfig::new(Vec::new(), vec!["10.1.0.53".parse().unwrap()]).unwrap();
        c.set_addressing(a);
        let mut req = add(1, None);
        req.psk = Some(PresharedKey::from_bytes([7; 32]));
        req.suite = Suite::WireGuard;
        let address = c.add_live(req).unwrap().config.assignment.ipv4;
        c.add_live(add(2, None)).unwrap();

        let all = c.running_peers(None).unwrap();
        assert_eq!(all.peers.len(), 2);
        assert_eq!(
            all.public_endpoint.as_deref(),
            Some("vpn.example.com:51820")
        );
        assert_eq!(all.subnets, ["10.66.0.0/24".parse::<IpNet>().unwrap()]);
        let one = c.running_peers(Some(&key(1))).unwrap();
        assert_eq!(one.peers.len(), 1);
        let p = &one.peers[0];
        assert_eq!(p.config.public_key, key(1));
        assert_eq!(p.config.assignment.ipv4, address);
        assert_eq!(p.config.psk, PresharedKey::from_bytes([7; 32]));
        assert_eq!(p.config.suite, Suite::WireGuard);
        assert_eq!(
            p.push.dns(),
            ["10.1.0.53".parse::<std::net::IpAddr>().unwrap()]
        );
        // The reload diff sees the suite too.
        assert_eq!(c.peer_specs()[&key(1)].suite, Suite::WireGuard);
        assert!(c
            .running_peers(Some(&key(3)))
            .unwrap_err()
            .contains("not a peer"));
    }

    #[test]
    fn live_add_and_remove_use_the_pool() {
        let (mut c, table) = control();
        let a = c.add_live(add(1, None)).unwrap().config.assignment.ipv4;
        assert!(c.addressing.as_ref().unwrap().pool.is_taken(a));
        assert_eq!(lookup(&table, a).unwrap().public_key, key(1));
        assert!(c
            .add_live(add(1, None))
            .unwrap_err()
            .contains("already a peer"));
        assert!(c.add_live(add(2, Some(a))).unwrap_err().contains("taken"));
        let fixed = Ipv4Addr::new(10, 66, 0, 200);
        assert_eq!(
            c.add_live(add(2, Some(fixed)))
                .unwrap()
                .config
                .assignment
                .ipv4,
            fixed
        );
        assert!(c
            .add_live(add(3, Some(Ipv4Addr::new(10, 67, 0, 2))))
            .unwrap_err()
            .contains("not a host address"));
        c.remove_live(&key(1)).unwrap();
        assert!(lookup(&table, a).is_none());
        assert!(!c.addressing.as_ref().unwrap().pool.is_taken(a));
        assert!(c.remove_live(&key(1)).is_err());
        assert_eq!(lookup(&table, fixed).unwrap().public_key, key(2));
    }

    #[test]
    fn a_peers_suite_is_kept_across_reloads_and_a_change_of_suite_is_a_change() {
        use crate::proto::suite::Suite;
        let (mut c, table) = control();
        let spec = |suite: Suite| PeerConfig {
            public_key: key(1),
            psk: PresharedKey::zero(),
            assignment: AddressAssignment {
                ipv4: Ipv4Addr::new(10, 66, 0, 2),
                ipv4_prefix: 24,
                ipv6: None,
                mtu: 1420,
            },
            allowed_ips: Vec::new(),
            suite,
        };
        c.set_peers(vec![spec(Suite::WireGuard)], addressing());
        assert_eq!(c.peer_specs()[&key(1)].suite, Suite::WireGuard);
        let entry = lookup(&table, Ipv4Addr::new(10, 66, 0, 2)).unwrap();
        assert_eq!(entry.suite, Suite::WireGuard);
        let r = c.set_peers(vec![spec(Suite::WireGuard)], addressing());
        assert_eq!(r.unchanged, 1, "the same WireGuard peer is not a change");
        assert!(r.changed.is_empty());
        let r = c.set_peers(vec![spec(Suite::Native)], addressing());
        assert_eq!(r.changed.len(), 1);
        assert_eq!(c.peer_specs()[&key(1)].suite, Suite::Native);
        let entry = lookup(&table, Ipv4Addr::new(10, 66, 0, 2)).unwrap();
        assert_eq!(entry.suite, Suite::Native, "show sees the new suite");
    }

    #[test]
    fn set_peers_touches_only_what_changed() {
        let (mut c, table) = control();
        let spec = |i: u8, psk: u8, host: u8| PeerConfig {
            public_key: key(i),
            psk: PresharedKey::from_bytes([psk; 32]),
            assignment: AddressAssignment {
                ipv4: Ipv4Addr::new(10, 66, 0, host),
                ipv4_prefix: 24,
                ipv6: None,
                mtu: 1420,
            },
            allowed_ips: Vec::new(),
            suite: crate::proto::suite::Suite::Native,
        };
        let r = c.set_peers(
            vec![spec(1, 0, 2), spec(2, 0, 3), spec(3, 0, 4)],
            addressing(),
        );
        assert_eq!(r.added.len(), 3);
        let e1 = lookup(&table, Ipv4Addr::new(10, 66, 0, 2)).unwrap();
        let e2 = lookup(&table, Ipv4Addr::new(10, 66, 0, 3)).unwrap();
        e2.roam_to("192.0.2.1:5000".parse().unwrap());
        e2.rx_bytes.store(7, Ordering::Relaxed);
        // 1 unchanged, 2 new psk, 3 moves to .9, 4 added; then 3 is gone from .4.
        let r = c.set_peers(
            vec![spec(1, 0, 2), spec(2, 5, 3), spec(3, 0, 9), spec(4, 0, 5)],
            addressing(),
        );
        assert_eq!(r.unchanged, 1);
        assert_eq!(r.added, vec![key(4).to_string()]);
        assert!(r.removed.is_empty());
        assert_eq!(r.changed.len(), 2);
        assert!(Arc::ptr_eq(
            &e1,
            &lookup(&table, Ipv4Addr::new(10, 66, 0, 2)).unwrap()
        ));
        let e2b = lookup(&table, Ipv4Addr::new(10, 66, 0, 3)).unwrap();
        assert!(Arc::ptr_eq(&e2, &e2b), "a psk change keeps the entry");
        assert!(lookup(&table, Ipv4Addr::new(10, 66, 0, 4)).is_none());
        assert_eq!(
            lookup(&table, Ipv4Addr::new(10, 66, 0, 9))
                .unwrap()
                .public_key,
            key(3)
        );
        assert_eq!(
            c.peer_specs()[&key(2)].psk,
            PresharedKey::from_bytes([5; 32])
        );
        let r = c.set_peers(vec![spec(2, 5, 3)], addressing());
        assert_eq!(r.removed.len(), 3);
        assert_eq!(c.peers().count(), 1);
        assert_eq!(e2b.rx_bytes.load(Ordering::Relaxed), 7);
    }

    fn host_spec(i: u8, host: u8) -> PeerConfig {
        PeerConfig {
            public_key: key(i),
            psk: PresharedKey::zero(),
            assignment: AddressAssignment {
                ipv4: Ipv4Addr::new(10, 66, 0, host),
                ipv4_prefix: 24,
                ipv6: None,
                mtu: 1420,
            },
            allowed_ips: Vec::new(),
            suite: crate::proto::suite::Suite::Native,
        }
    }

    /// Reloads `(peer, host)` pairs, then checks every address maps to its peer, and the
    /// addresses no peer has any more map to nobody.
    fn reload_and_check(c: &mut Control, table: &SessionTable, peers: &[(u8, u8)], freed: &[u8]) {
        let specs = peers.iter().map(|&(i, h)| host_spec(i, h)).collect();
        c.set_peers(specs, addressing());
        for &(i, host) in peers {
            let ip = Ipv4Addr::new(10, 66, 0, host);
            let found = lookup(table, ip).map(|e| e.public_key);
            assert_eq!(found, Some(key(i)), "{ip} should map to peer {i}");
            let entry = &c.entries[&key(i)];
            assert!(Arc::ptr_eq(entry, &lookup(table, ip).unwrap()));
        }
        for &host in freed {
            let ip = Ipv4Addr::new(10, 66, 0, host);
            assert!(lookup(table, ip).is_none(), "{ip} is nobody's any more");
        }
    }

    #[test]
    fn reload_that_swaps_two_peers_addresses_maps_both() {
        let (mut c, table) = control();
        reload_and_check(&mut c, &table, &[(1, 2), (2, 3)], &[]);
        // A .2 -> .3 while B .3 -> .2.
        reload_and_check(&mut c, &table, &[(1, 3), (2, 2)], &[]);
        // And back, in the other order of keys.
        reload_and_check(&mut c, &table, &[(2, 3), (1, 2)], &[]);
    }

    #[test]
    fn reload_that_moves_a_peer_to_a_free_address_frees_the_old_one() {
        let (mut c, table) = control();
        reload_and_check(&mut c, &table, &[(1, 2), (2, 4)], &[]);
        reload_and_check(&mut c, &table, &[(1, 3), (2, 4)], &[2]);
        // Onto the address a removed peer had, in the same reload.
        reload_and_check(&mut c, &table, &[(1, 4)], &[2, 3]);
    }

    #[test]
    fn reload_that_rotates_three_peers_addresses_maps_all() {
        let (mut c, table) = control();
        reload_and_check(&mut c, &table, &[(1, 2), (2, 3), (3, 4)], &[]);
        reload_and_check(&mut c, &table, &[(1, 3), (2, 4), (3, 2)], &[]);
        // The other direction.
        reload_and_check(&mut c, &table, &[(1, 4), (2, 2), (3, 3)], &[]);
        // Rotation plus a new peer taking a moved peer's old address.
        reload_and_check(&mut c, &table, &[(1, 5), (2, 4), (3, 3), (4, 2)], &[]);
    }

    /// A kernel's routes as the control thread changes them, with every change it was asked.
    #[derive(Clone, Default)]
    pub(super) struct FakeKernel {
        routes: Arc<std::sync::Mutex<std::collections::BTreeSet<ipnet::IpNet>>>,
        changes: Arc<std::sync::Mutex<Vec<crate::sys::link::RouteChange>>>,
    }

    impl routes::RouteInstaller for FakeKernel {
        fn apply(
            &mut self,
            changes: &[crate::sys::link::RouteChange],
        ) -> Vec<crate::sys::link::RouteOutcome> {
            use crate::sys::link::{RouteChange, RouteOutcome};
            self.changes.lock().unwrap().extend_from_slice(changes);
            let mut routes = self.routes.lock().unwrap();
            changes
                .iter()
                .map(|c| match *c {
                    RouteChange::Add(p) if !routes.insert(p) => RouteOutcome::AlreadyPresent,
                    RouteChange::Delete(p) if !routes.remove(&p) => {
                        RouteOutcome::Absent("No such process".into())
                    }
                    _ => RouteOutcome::Done,
                })
                .collect()
        }
    }

    impl FakeKernel {
        pub(super) fn routes(&self) -> Vec<String> {
            self.routes
                .lock()
                .unwrap()
                .iter()
                .map(|p| p.to_string())
                .collect()
        }

        pub(super) fn deletes(&self) -> usize {
            let changes = self.changes.lock().unwrap();
            changes
                .iter()
                .filter(|c| matches!(c, crate::sys::link::RouteChange::Delete(_)))
                .count()
        }
    }

    pub(super) fn with_kernel(c: &mut Control) -> FakeKernel {
        let kernel = FakeKernel::default();
        c.set_kernel_routes(KernelRoutes::new(Box::new(kernel.clone())));
        kernel
    }

    pub(super) fn nets(prefixes: &[&str]) -> Vec<ipnet::IpNet> {
        prefixes.iter().map(|p| p.parse().unwrap()).collect()
    }

    pub(super) fn holder(table: &SessionTable, ip: &str) -> Option<PublicKey> {
        let snapshot = table.snapshot();
        let g = snapshot.guard();
        snapshot
            .by_address(ip.parse().unwrap(), &g)
            .map(|e| e.public_key)
    }

    #[test]
    fn live_peers_route_their_networks_and_a_second_holder_is_refused() {
        let (mut c, table) = control();
        let kernel = with_kernel(&mut c);
        let with = |i: u8, prefixes: &[&str]| AddPeer {
            allowed_ips: nets(prefixes),
            ..add(i, None)
        };
        let added = c
            .add_live(with(1, &["10.99.0.0/24", "172.16.0.0/12"]))
            .unwrap();
        assert!(added.warnings.is_empty(), "{:?}", added.warnings);
        assert_eq!(kernel.routes(), ["10.99.0.0/24", "172.16.0.0/12"]);
        assert_eq!(holder(&table, "10.99.0.5"), Some(key(1)));
        let taken_before = c.addressing.as_ref().unwrap().pool.taken();
        let err = c.add_live(with(2, &["10.99.0.7/24"])).unwrap_err();
        assert!(
            err.contains("10.99.0.0/24")
                && err.contains(&key(1).to_string())
                && err.contains(&key(2).to_string()),
            "{err}"
        );
        let err = c.add_live(with(2, &["10.66.0.0/25"])).unwrap_err();
        assert!(err.contains("10.66.0.0/24"), "{err}");
        // Nothing of the refused peer stayed.
        assert!(!c.entries.contains_key(&key(2)));
        assert_eq!(c.addressing.as_ref().unwrap().pool.taken(), taken_before);
        // A longer prefix inside another peer's network is fine, and wins.
        c.add_live(with(2, &["172.16.99.0/24"])).unwrap();
        assert_eq!(holder(&table, "172.16.99.1"), Some(key(2)));
        assert_eq!(holder(&table, "172.16.5.1"), Some(key(1)));
        c.remove_live(&key(1)).unwrap();
        assert_eq!(holder(&table, "10.99.0.5"), None);
        assert_eq!(holder(&table, "172.16.5.1"), None);
        assert_eq!(kernel.routes(), ["172.16.99.0/24"]);
        drop(c);
        assert!(
            kernel.routes().is_empty(),
            "the routes go with the control thread"
        );
    }

    #[test]
    fn reload_moves_networks_between_peers_without_touching_their_routes() {
        let (mut c, table) = control();
        let kernel = with_kernel(&mut c);
        let spec = |i: u8, host: u8, prefixes: &[&str]| PeerConfig {
            allowed_ips: nets(prefixes),
            suite: crate::proto::suite::Suite::Native,
            ..host_spec(i, host)
        };
        c.set_peers(
            vec![spec(1, 2, &["10.99.0.0/24"]), spec(2, 3, &["10.98.0.0/24"])],
            addressing(),
        );
        assert_eq!(kernel.routes(), ["10.98.0.0/24", "10.99.0.0/24"]);
        // Swap the networks.
        let r = c.set_peers(
            vec![spec(1, 2, &["10.98.0.0/24"]), spec(2, 3, &["10.99.0.0/24"])],
            addressing(),
        );
        assert_eq!(r.changed.len(), 2);
        assert!(
            r.changed.iter().all(|(_, what)| what == &["allowed_ips"]),
            "{r:?}"
        );
        assert_eq!(holder(&table, "10.98.0.1"), Some(key(1)));
        assert_eq!(holder(&table, "10.99.0.1"), Some(key(2)));
        assert_eq!(kernel.deletes(), 0, "a moved network keeps its route");
        assert_eq!(c.peer_specs()[&key(1)].allowed_ips, nets(&["10.98.0.0/24"]));
        // Peer 1 moves to another address with its network; peer 2 leaves.
        let r = c.set_peers(vec![spec(1, 9, &["10.98.0.0/24"])], addressing());
        assert_eq!(r.removed, vec![key(2).to_string()]);
        assert_eq!(holder(&table, "10.98.0.1"), Some(key(1)));
        assert_eq!(holder(&table, "10.66.0.9"), Some(key(1)));
        assert_eq!(holder(&table, "10.66.0.2"), None);
        assert_eq!(holder(&table, "10.99.0.1"), None);
        assert_eq!(kernel.routes(), ["10.98.0.0/24"]);
    }

    #[test]
    fn peers_are_pushed_what_the_addressing_says() {
        use crate::proto::wire::PushConfig;
        let push = |routes: &[&str]| {
            PushConfig::new(
                routes.iter().map(|r| r.parse().unwrap()).collect(),
                Vec::new(),
            )
            .unwrap()
        };
        let (mut c, _) = control();
        let global = push(&["10.98.0.0/24"]);
        let own = push(&["10.98.0.0/24", "10.97.0.0/24"]);
        let mut a = addressing();
        a.push = PushPolicy {
            global: global.clone(),
            peers: [(key(1), own.clone())].into_iter().collect(),
        };
        c.set_peers(vec![host_spec(1, 2), host_spec(2, 3)], a.clone());
        assert_eq!(c.server.push(&key(1)), Some(&own));
        assert_eq!(c.server.push(&key(2)), Some(&global));
        c.add_live(add(3, None)).unwrap();
        assert_eq!(
            c.server.push(&key(3)),
            Some(&global),
            "live-added: the global ones"
        );
        assert_eq!(c.set_addressing(a.clone()), 0, "nothing changed");
        a.push.global = PushConfig::default();
        assert_eq!(
            c.set_addressing(a),
            2,
            "peers 2 and 3 lose theirs, 1 keeps its own"
        );
        assert_eq!(c.server.push(&key(1)), Some(&own));
        assert!(c.server.push(&key(3)).unwrap().is_empty());
    }

    #[test]
    fn commands_reach_the_running_thread() {
        let (c, _table) = control();
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = c.stop.clone();
        let c = c.with_commands(rx);
        let t = std::thread::spawn(move || c.run());
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        tx.send(Command::AddPeer(add(9, None), rtx)).unwrap();
        let spec = rrx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        let (stx, srx) = crossbeam_channel::bounded(1);
        tx.send(Command::Snapshot(stx)).unwrap();
        let snap = srx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(snap.peers.len(), 1);
        assert_eq!(snap.peers[0].assignment, spec.config.assignment);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
