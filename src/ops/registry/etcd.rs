//! The registry thread: the etcd client on a current-thread tokio runtime, its session loop
//! (list, register, watch, keep alive) and the operator's writes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout, Instant as TokioInstant};

use super::layout::Layout;
use super::mirror::{Change, Mirror};
use super::record::{HeadendRecord, PeerRecord};
use super::{
    seal, suite, FleetMember, ImportPeer, ImportReport, RegistryContext, RegistryStatus, Request,
};
use crate::proto::keys::{PresharedKey, PublicKey};
use crate::proto::server::PeerConfig;
use crate::proto::wire::AddressAssignment;
use crate::server::control::command::{AddPeer, Added, Command, ReloadReport};

/// Bound on one unary etcd call (get, put, txn, lease): past it etcd counts as unreachable.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on connecting to a member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on the connection, so that a watch on a dead connection ends.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// The headend's registration lives this long without a keep-alive.
const HEADEND_TTL_SECS: i64 = 10;
/// Keep-alive of the registration (also the health check of the connection), in ticks.
const KEEPALIVE_TICKS: u32 = 2;
/// The registration's client count is refreshed this often, in ticks.
const LOAD_TICKS: u32 = 5;
/// One tick of the session loop.
const TICK: Duration = Duration::from_secs(1);
/// Reconnection backoff: from this, doubling up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Addresses tried for one `peer add` before giving up (others may take them concurrently).
const ADD_ATTEMPTS: usize = 64;
/// How long the thread waits for the control thread to apply a peer set.
const APPLY_WAIT: Duration = Duration::from_secs(5);

type Fallible<T> = Result<T, String>;

/// Runs the registry thread until the server's stop flag is set.
pub(super) fn run(
    ctx: RegistryContext,
    status: Arc<RegistryStatus>,
    requests: UnboundedReceiver<Request>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "registry: cannot start its runtime; peers stay as they are");
            return;
        }
    };
    let layout = Layout::new(&ctx.config.fleet);
    // Headends start on different members, so that a fleet spreads over the cluster.
    let member = ctx.config.name.bytes().map(usize::from).sum::<usize>() % ctx.config.etcd.len();
    let mut thread = Registry {
        ctx,
        status,
        layout,
        mirror: None,
        lease: None,
        was_stale: false,
        member,
    };
    runtime.block_on(thread.run(requests));
}

struct Registry {
    ctx: RegistryContext,
    status: Arc<RegistryStatus>,
    layout: Layout,
    /// The last known registry (kept while etcd is unreachable).
    mirror: Option<Mirror>,
    /// The etcd lease of this headend's registration.
    lease: Option<i64>,
    was_stale: bool,
    /// The member to connect to next (index in `etcd`): one member per session, the next one
    /// after a failure. (The client's own balancing over every member kept sending calls to
    /// a dead member instead of failing over.)
    member: usize,
}

/// Why a session ended.
enum End {
    Stopped,
    Lost(String),
}

impl Registry {
    async fn run(&mut self, mut requests: UnboundedReceiver<Request>) {
        let mut backoff = MIN_BACKOFF;
        let members = self.ctx.config.etcd.len();
        // Members tried since the last session that worked.
        let mut tried = 0;
        while !self.stopping() {
            let error = match self.session(&mut requests).await {
                End::Stopped => break,
                End::Lost(e) => e,
            };
            self.member = (self.member + 1) % members;
            tried += 1;
            if self.status.connected.load(Ordering::Relaxed) {
                backoff = MIN_BACKOFF;
                tried = 1;
                tracing::warn!(
                    error = %error,
                    "registry: lost etcd; serving the last known registry, retrying"
                );
            } else {
                tracing::debug!(error = %error, "registry: etcd unreachable");
            }
            self.status.set_connected(false, Some(error.clone()));
            self.lease = None;
            // The next member at once; the backoff once every member has failed in a row.
            let pause = if tried < members {
                Duration::from_millis(50)
            } else {
                tried = 0;
                let b = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                b
            };
            let until = TokioInstant::now() + pause;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    req = requests.recv() => match req {
                        // A reload's new settings apply to the last known registry at once.
                        Some(Request::Readdress(addressing, reply)) => {
                            self.ctx.addressing = *addressing;
                            let _ = reply.send(self.apply().ok_or_else(|| {
                                "the control thread did not answer".to_string()
                            }));
                        }
                        Some(req) => refuse(req, &error),
                        None => return,
                    },
                    _ = tick.tick() => {
                        self.check_stale();
                        if self.stopping() {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        self.ctx.stop.load(Ordering::Relaxed)
    }

    /// Refuses new handshakes once the registry is older than `stale_after`.
    fn check_stale(&mut self) {
        let Some(limit) = self.ctx.config.stale_after else {
            return;
        };
        let stale = self.status.age().is_none_or(|age| age > limit);
        self.status.refusing.store(stale, Ordering::Relaxed);
        self.ctx
            .handshakes
            .registry_stale
            .store(stale, Ordering::Relaxed);
        if stale != self.was_stale {
            self.was_stale = stale;
            if stale {
                tracing::warn!(
                    stale_after_secs = limit.as_secs(),
                    "registry: not in sync for longer than stale_after; refusing new handshakes"
                );
            } else {
                tracing::info!("registry: in sync again; accepting handshakes");
            }
        }
    }

    /// One connection to etcd: list, apply, register, then follow the watch until it breaks.
    async fn session(&mut self, requests: &mut UnboundedReceiver<Request>) -> End {
        let mut reload = None;
        let started = {
            let start = self.start();
            tokio::pin!(start);
            // Writes asked for while connecting fail at once too; a reload waits for the end.
            loop {
                tokio::select! {
                    r = &mut start => break r,
                    req = requests.recv() => match req {
                        Some(Request::Readdress(a, reply)) => reload = Some((a, reply)),
                        Some(req) => refuse(req, "not connected: connecting to a member"),
                        None => return End::Stopped,
                    },
                }
            }
        };
        if let Some((addressing, reply)) = reload {
            self.ctx.addressing = *addressing;
            let _ = reply.send(
                self.apply()
                    .ok_or_else(|| "the control thread did not answer".to_string()),
            );
        }
        let (mut client, mut watch) = match started {
            Ok(x) => x,
            Err(e) => return End::Lost(e),
        };
        let lease = self.lease.unwrap_or_default();
        let (mut keeper, mut keepalives) = match client.lease_keep_alive(lease).await {
            Ok(x) => x,
            Err(e) => return End::Lost(format!("lease keep-alive: {e}")),
        };
        let mut tick = tokio::time::interval(TICK);
        let mut ticks: u32 = 0;
        let mut clients = u64::MAX;
        loop {
            tokio::select! {
                msg = watch.message() => {
                    if let Err(e) = self.on_watch(msg, &mut watch).await {
                        return End::Lost(e);
                    }
                }
                req = requests.recv() => match req {
                    Some(req) => self.handle(&mut client, req).await,
                    None => return End::Stopped,
                },
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if self.stopping() {
                        self.unregister(&mut client).await;
                        return End::Stopped;
                    }
                    if ticks.is_multiple_of(KEEPALIVE_TICKS) {
                        let alive = async {
                            keeper.keep_alive().await.map_err(|e| e.to_string())?;
                            match keepalives.message().await {
                                Ok(Some(r)) if r.ttl() > 0 => Ok(()),
                                Ok(_) => Err("the registration's lease expired".to_string()),
                                Err(e) => Err(e.to_string()),
                            }
                        };
                        match timeout(CALL_TIMEOUT, alive).await {
                            Ok(Ok(())) => {
                                let (rev, peers) = self.mirror_state();
                                self.status.synced(rev, peers);
                            }
                            Ok(Err(e)) => return End::Lost(format!("keep-alive: {e}")),
                            Err(_) => return End::Lost("keep-alive: no answer in time".into()),
                        }
                    }
                    if ticks.is_multiple_of(LOAD_TICKS) {
                        let now = self.clients_carried();
                        if now != clients && self.register(&mut client, lease, now).await.is_ok() {
                            clients = now;
                        }
                    }
                    self.check_stale();
                }
            }
        }
    }

    fn mirror_state(&self) -> (i64, usize) {
        self.mirror
            .as_ref()
            .map(|m| (m.revision, m.peer_count()))
            .unwrap_or_default()
    }

    /// Connects, lists the fleet, applies it, registers this headend and starts the watch.
    async fn start(&mut self) -> Fallible<(Client, WatchStream)> {
        let endpoint = &self.ctx.config.etcd[self.member % self.ctx.config.etcd.len()];
        let mut client = connect(&self.ctx.config, endpoint).await?;
        let prefix = self.layout.prefix().to_string();
        let listing =
            call(client.get(prefix.clone(), Some(GetOptions::new().with_prefix()))).await?;
        let revision = listing.header().map(|h| h.revision()).unwrap_or_default();
        let mut mirror = Mirror::at(revision);
        for kv in listing.kvs() {
            mirror.apply(&self.layout, Change::Put(kv.key(), kv.value()));
        }
        self.mirror = Some(mirror);
        self.apply();
        let lease = call(client.lease_grant(HEADEND_TTL_SECS, None)).await?;
        self.lease = Some(lease.id());
        let clients = self.clients_carried();
        self.register(&mut client, lease.id(), clients).await?;
        let watch = client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(|e| format!("watch: {e}"))?;
        let peers = self.mirror_state().1;
        self.status.synced(revision, peers);
        self.status.set_connected(true, None);
        tracing::info!(
            revision,
            peers,
            "registry: loaded from etcd, following its changes"
        );
        Ok((client, watch))
    }

    /// Writes this headend's registration under its lease.
    async fn register(&self, client: &mut Client, lease: i64, clients: u64) -> Fallible<()> {
        let record = HeadendRecord {
            endpoint: self.ctx.config.endpoint.clone(),
            clients,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        call(client.put(
            self.layout.headend(&self.ctx.config.name),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ))
        .await?;
        Ok(())
    }

    /// Ends this headend's registration at once (a stop), rather than after its TTL.
    async fn unregister(&mut self, client: &mut Client) {
        if let Some(lease) = self.lease.take() {
            let _ = timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
        }
    }

    /// One watch message: its events, and any others already waiting, then one apply.
    async fn on_watch(
        &mut self,
        msg: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
        watch: &mut WatchStream,
    ) -> Fallible<()> {
        let mut changed = self.absorb(msg)?;
        // A burst (a thousand adds) becomes one peer set for the control thread, not one each.
        while let Ok(more) = timeout(Duration::ZERO, watch.message()).await {
            changed |= self.absorb(more)?;
        }
        if changed {
            self.apply();
        }
        let (rev, peers) = self.mirror_state();
        self.status.synced(rev, peers);
        Ok(())
    }

    fn absorb(
        &mut self,
        msg: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    ) -> Fallible<bool> {
        let resp = msg
            .map_err(|e| format!("watch: {e}"))?
            .ok_or("watch: the stream ended")?;
        if resp.compact_revision() > 0 {
            return Err(format!(
                "watch: revision compacted (to {}); listing again",
                resp.compact_revision()
            ));
        }
        if resp.canceled() {
            return Err(format!("watch cancelled: {}", resp.cancel_reason()));
        }
        let Some(mirror) = self.mirror.as_mut() else {
            return Err("watch before the listing".into());
        };
        let mut changed = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let change = match ev.event_type() {
                EventType::Put => Change::Put(kv.key(), kv.value()),
                EventType::Delete => Change::Delete(kv.key()),
            };
            changed |= mirror.apply(&self.layout, change);
            mirror.revision = mirror.revision.max(kv.mod_revision());
        }
        if let Some(h) = resp.header() {
            mirror.revision = mirror.revision.max(h.revision());
        }
        Ok(changed)
    }

    /// Hands the control thread the peer set the registry implies.
    fn apply(&self) -> Option<ReloadReport> {
        let mirror = self.mirror.as_ref()?;
        let (specs, problems) = mirror.desired(&self.ctx.config.fleet_key, &self.ctx.addressing);
        for p in problems.iter().take(20) {
            tracing::warn!("registry: {p}");
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let addressing = Box::new(self.ctx.addressing.clone());
        self.ctx
            .commands
            .send(Command::SetPeers(specs, addressing, tx))
            .ok()?;
        // A blocking wait on this thread only; the control thread answers between handshakes.
        let report = rx.recv_timeout(APPLY_WAIT).ok()?;
        if !(report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty()) {
            tracing::info!(
                added = report.added.len(),
                removed = report.removed.len(),
                changed = report.changed.len(),
                revision = mirror.revision,
                "registry: peers applied"
            );
        }
        Some(report)
    }

    /// Peers with a usable session here, from the control thread.
    fn clients_carried(&self) -> u64 {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.ctx.commands.send(Command::Snapshot(tx)).is_err() {
            return 0;
        }
        rx.recv_timeout(Duration::from_secs(1))
            .map(|s| {
                s.peers
                    .iter()
                    .filter(|p| p.session.current(s.now).is_some())
                    .count() as u64
            })
            .unwrap_or(0)
    }

    async fn handle(&mut self, client: &mut Client, req: Request) {
        match req {
            Request::Add(add, reply) => {
                let _ = reply.send(self.add(client, add).await);
            }
            Request::Remove(key, reply) => {
                let _ = reply.send(self.remove(client, key).await);
            }
            Request::Import(peers, reply) => {
                let _ = reply.send(Ok(self.import(client, peers).await));
            }
            Request::Fleet(reply) => {
                let _ = reply.send(self.fleet(client).await);
            }
            Request::Readdress(addressing, reply) => {
                self.ctx.addressing = *addressing;
                let _ = reply.send(
                    self.apply()
                        .ok_or_else(|| "the control thread did not answer".to_string()),
                );
            }
        }
    }

    /// `peer add`: a compare-and-swap on the peer's record and on its address leases, trying
    /// the next free address when another headend took one first.
    async fn add(&mut self, client: &mut Client, req: AddPeer) -> Fallible<Added> {
        let key = req.public_key;
        if key == self.ctx.server_key {
            return Err("that is the server's own public key".into());
        }
        let mirror = self
            .mirror
            .as_ref()
            .ok_or("the registry is not loaded yet")?;
        if mirror.peer(&key).is_some() {
            return Err(format!(
                "{key} is already a peer of the fleet; remove it first to change it"
            ));
        }
        let a = &self.ctx.addressing;
        let subnet6 = a.pool6.as_ref().map(|p| p.network());
        for prefix in req.allowed_ips.iter().map(|p| p.trunc()) {
            if let Some(why) = crate::config::allowed_ip_problem(prefix, a.pool.network(), subnet6)
            {
                return Err(format!("allowed_ips: {why}"));
            }
            if let Some(holder) = mirror.holder_of(prefix) {
                return Err(format!(
                    "allowed_ips: {prefix} is already routed to peer {holder}: a network can \
                     be routed to one peer only; remove it from the first"
                ));
            }
        }
        let (mut pool, mut pool6) = mirror.pools(&a.pool, a.pool6.as_ref());
        let (routes_networks, checked_at) = (!req.allowed_ips.is_empty(), mirror.revision);
        if let Some(ip) = req.address {
            if !pool.is_host(ip) || pool.is_taken(ip) {
                return Err(format!(
                    "{ip} is not a free host address of the client subnet {}",
                    pool.network()
                ));
            }
        }
        if req.address6.is_some() && pool6.is_none() {
            return Err("the server has no address6, so a peer cannot have one".into());
        }
        let sealed = req
            .psk
            .as_ref()
            .map(|psk| seal::seal(&self.ctx.config.fleet_key, &key, psk, seal::random_nonce()));
        let record = PeerRecord {
            protocol: req.suite.name().to_string(),
            address: req.address,
            address6: req.address6,
            allowed_ips: req.allowed_ips.clone(),
            psk: sealed,
        };
        let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        for _ in 0..ADD_ATTEMPTS {
            let ipv4 = match req.address {
                Some(ip) => ip,
                None => pool
                    .allocate(key.as_bytes())
                    .ok_or_else(|| format!("no free address left in {}", pool.network()))?,
            };
            let ipv6 = match (req.address6, pool6.as_mut()) {
                (Some(ip), _) => Some(ip),
                (None, Some(p6)) => p6.allocate(key.as_bytes()),
                (None, None) => None,
            };
            let peer_key = self.layout.peer(&key);
            let lease4 = self.layout.lease4(ipv4);
            let mut when = vec![
                Compare::version(peer_key.clone(), CompareOp::Equal, 0),
                Compare::version(lease4.clone(), CompareOp::Equal, 0),
            ];
            let mut then = vec![
                TxnOp::put(peer_key.clone(), value.clone(), None),
                TxnOp::put(lease4, key.to_string(), None),
            ];
            if let Some(ip) = ipv6 {
                let lease6 = self.layout.lease6(ip);
                when.push(Compare::version(lease6.clone(), CompareOp::Equal, 0));
                then.push(TxnOp::put(lease6, key.to_string(), None));
            }
            let mut otherwise = vec![TxnOp::get(peer_key, None)];
            if routes_networks {
                // The overlap check above read our copy at `checked_at`: the add holds only if
                // no peer record was written since, on any headend (else two headends could
                // give one network to two peers at the same moment).
                when.push(
                    Compare::mod_revision(self.layout.peers(), CompareOp::Less, checked_at + 1)
                        .with_range(self.layout.peers_end()),
                );
                otherwise.push(TxnOp::get(
                    self.layout.peers(),
                    Some(
                        GetOptions::new()
                            .with_range(self.layout.peers_end())
                            .with_min_mod_revision(checked_at + 1)
                            .with_count_only(),
                    ),
                ));
            }
            let txn = Txn::new().when(when).and_then(then).or_else(otherwise);
            let resp = call(client.txn(txn)).await.map_err(|e| {
                format!("etcd: {e}; the peer was not added (nothing is queued: try again)")
            })?;
            if resp.succeeded() {
                tracing::info!(peer = %key, address = %ipv4, "registry: peer added to the fleet");
                let a = &self.ctx.addressing;
                return Ok(Added {
                    config: PeerConfig {
                        public_key: key,
                        psk: req.psk.clone().unwrap_or_else(PresharedKey::zero),
                        assignment: AddressAssignment {
                            ipv4,
                            ipv4_prefix: a.prefix,
                            ipv6: ipv6.zip(a.prefix6),
                            mtu: a.mtu,
                        },
                        allowed_ips: req.allowed_ips,
                        suite: req.suite,
                    },
                    warnings: Vec::new(),
                });
            }
            let gets: Vec<_> = resp
                .op_responses()
                .into_iter()
                .filter_map(|r| match r {
                    TxnOpResponse::Get(g) => Some(g),
                    _ => None,
                })
                .collect();
            if gets.first().is_some_and(|g| !g.kvs().is_empty()) {
                return Err(format!(
                    "{key} is already a peer of the fleet (added meanwhile)"
                ));
            }
            if gets.get(1).is_some_and(|g| g.count() > 0) {
                return Err(
                    "another peer was added to the fleet at the same moment, and \
                            allowed_ips are checked against a settled registry only: run the \
                            command again"
                        .into(),
                );
            }
            if req.address.is_some() || req.address6.is_some() {
                return Err("the fixed address was taken meanwhile by another peer".into());
            }
            // Another headend leased it first: take it out of our pools and try the next.
            pool.reserve(ipv4);
            if let (Some(p6), Some(ip)) = (pool6.as_mut(), ipv6) {
                p6.reserve(ip);
            }
        }
        Err(format!(
            "no address could be leased after {ADD_ATTEMPTS} tries (other headends kept taking \
             them); try again"
        ))
    }

    /// `peer remove`: the record and its leases, in one transaction.
    async fn remove(&mut self, client: &mut Client, key: PublicKey) -> Fallible<()> {
        let peer_key = self.layout.peer(&key);
        let (v4, v6) = self
            .mirror
            .as_ref()
            .map(|m| m.addresses_of(&key))
            .unwrap_or_default();
        let mut then = vec![TxnOp::delete(peer_key.clone(), None)];
        let mut when = vec![Compare::version(peer_key, CompareOp::Greater, 0)];
        for lease in v4
            .map(|ip| self.layout.lease4(ip))
            .into_iter()
            .chain(v6.map(|ip| self.layout.lease6(ip)))
        {
            when.push(Compare::value(
                lease.clone(),
                CompareOp::Equal,
                key.to_string(),
            ));
            then.push(TxnOp::delete(lease, None));
        }
        let resp = call(client.txn(Txn::new().when(when).and_then(then)))
            .await
            .map_err(|e| {
                format!("etcd: {e}; the peer was not removed (nothing is queued: try again)")
            })?;
        if resp.succeeded() {
            tracing::info!(peer = %key, "registry: peer removed from the fleet");
            Ok(())
        } else {
            Err(format!(
                "{key} is not a peer of the fleet (or its leases changed meanwhile: try again)"
            ))
        }
    }

    /// `registry import`: each peer once, with the addresses the file gave it.
    async fn import(&mut self, client: &mut Client, peers: Vec<ImportPeer>) -> ImportReport {
        let mut report = ImportReport::default();
        for p in peers {
            match self.import_one(client, &p).await {
                Ok(()) => report.imported += 1,
                Err(why) => report.skipped.push(format!("{}: {why}", p.public_key)),
            }
        }
        tracing::info!(
            imported = report.imported,
            skipped = report.skipped.len(),
            "registry: peers imported"
        );
        report
    }

    async fn import_one(&mut self, client: &mut Client, p: &ImportPeer) -> Fallible<()> {
        let key: PublicKey = p.public_key.trim().parse().map_err(|e| format!("{e}"))?;
        suite(&p.protocol)?;
        let psk = p
            .psk
            .as_deref()
            .map(|t| PresharedKey::from_base64(t.trim()).map_err(|e| format!("psk: {e}")))
            .transpose()?;
        let record = PeerRecord {
            protocol: p.protocol.clone(),
            address: p.fixed_address.then_some(p.address),
            address6: p.address6.filter(|_| p.fixed_address6),
            allowed_ips: p.allowed_ips.clone(),
            psk: psk
                .as_ref()
                .map(|k| seal::seal(&self.ctx.config.fleet_key, &key, k, seal::random_nonce())),
        };
        let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        let peer_key = self.layout.peer(&key);
        let lease4 = self.layout.lease4(p.address);
        let mut when = vec![
            Compare::version(peer_key.clone(), CompareOp::Equal, 0),
            Compare::version(lease4.clone(), CompareOp::Equal, 0),
        ];
        let mut then = vec![
            TxnOp::put(peer_key, value, None),
            TxnOp::put(lease4, key.to_string(), None),
        ];
        if let Some(ip) = p.address6 {
            let lease6 = self.layout.lease6(ip);
            when.push(Compare::version(lease6.clone(), CompareOp::Equal, 0));
            then.push(TxnOp::put(lease6, key.to_string(), None));
        }
        let resp = call(client.txn(Txn::new().when(when).and_then(then))).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(format!(
                "already in the registry, or {} is leased to another peer",
                p.address
            ))
        }
    }

    /// `show --fleet`: the headends registered now.
    async fn fleet(&self, client: &mut Client) -> Fallible<Vec<FleetMember>> {
        let resp = call(client.get(
            self.layout.headends(),
            Some(GetOptions::new().with_prefix()),
        ))
        .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let Some(super::layout::Key::Headend(name)) = self.layout.parse(kv.key()) else {
                continue;
            };
            if let Ok(r) = serde_json::from_slice::<HeadendRecord>(kv.value()) {
                out.push(FleetMember {
                    name,
                    endpoint: r.endpoint,
                    clients: r.clients,
                    version: r.version,
                });
            }
        }
        Ok(out)
    }
}

/// Answers a request while etcd is unreachable: at once, nothing queued.
fn refuse(req: Request, error: &str) {
    let why = format!(
        "etcd is unreachable ({error}); nothing was changed and nothing is queued: try again \
         when the registry is connected (`concentrator show` says when)"
    );
    match req {
        Request::Add(_, r) => {
            let _ = r.send(Err(why));
        }
        Request::Remove(_, r) => {
            let _ = r.send(Err(why));
        }
        Request::Import(_, r) => {
            let _ = r.send(Err(why));
        }
        Request::Fleet(r) => {
            let _ = r.send(Err(why));
        }
        Request::Readdress(_, r) => {
            let _ = r.send(Err(why));
        }
    }
}

/// One etcd call, bounded by [`CALL_TIMEOUT`].
async fn call<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Fallible<T> {
    match timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
    }
}

/// Connects to the cluster with the configured TLS and credentials.
async fn connect(config: &crate::config::RegistryConfig, endpoint: &str) -> Fallible<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(PING_INTERVAL, CALL_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if let Some(ca) = &config.ca_file {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.with_user(user.clone(), password.as_str());
    }
    match timeout(
        CONNECT_TIMEOUT + CALL_TIMEOUT,
        Client::connect([endpoint], Some(options)),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connecting to {endpoint}: {e}")),
        Err(_) => Err(format!("connecting to {endpoint}: no answer in time")),
    }
}
