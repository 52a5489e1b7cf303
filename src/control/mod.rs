//! The control thread: answers handshakes, runs the timers, and publishes sessions in the
//! table the workers read.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::dataplane::worker::HandshakeMessage;
use crate::proto::handshake::HandshakeError;
use crate::proto::keys::PublicKey;
use crate::proto::rng::OsRandom;
use crate::proto::server::{HandshakeReply, PeerConfig, Server};
use crate::proto::time::Instant;
use crate::proto::wire::TRANSPORT_MIN_LEN;
use crate::session_table::{PeerEntry, SessionTable};
use crate::sys::clock::monotonic_now;

/// Capacity of the queue of handshake messages from the workers.
pub const HANDSHAKE_QUEUE: usize = 4096;
/// The responder is "under load" (cookies required) when the queue holds this many: WireGuard
/// uses an eighth of its queue (`MAX_QUEUED_INCOMING_HANDSHAKES / 8`, device/receive.go).
pub const UNDER_LOAD_THRESHOLD: usize = HANDSHAKE_QUEUE / 8;
/// Period of the housekeeping tick.
const TICK: Duration = Duration::from_millis(500);

/// Handshake counters, read by `show` and the metrics.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    /// Handshakes completed.
    pub completed: AtomicU64,
    /// Cookie replies sent.
    pub cookie_replies: AtomicU64,
    /// Initiations refused (any reason).
    pub failed: AtomicU64,
    /// Of those: unknown static key.
    pub unknown_peer: AtomicU64,
    /// Of those: replayed timestamp.
    pub replayed: AtomicU64,
    /// Of those: bad mac1.
    pub bad_mac: AtomicU64,
    /// Of those: rate limited.
    pub rate_limited: AtomicU64,
}

/// The control thread's state.
pub struct Control {
    server: Server,
    table: Arc<SessionTable>,
    entries: HashMap<PublicKey, Arc<PeerEntry>>,
    handshakes: Receiver<HandshakeMessage>,
    /// One socket per underlay family (duplicates of a worker's socket, same port).
    reply_sockets: Vec<UdpSocket>,
    stats: Arc<HandshakeStats>,
    stop: Arc<AtomicBool>,
    rng: OsRandom,
}

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
            server,
            table,
            entries: HashMap::new(),
            handshakes,
            reply_sockets,
            stats,
            stop,
            rng: OsRandom,
        }
    }

    /// Adds a peer and publishes its addresses.
    pub fn add_peer(&mut self, config: PeerConfig) {
        let key = config.public_key;
        let assignment = config.assignment;
        let session = self.server.add_peer(config);
        let entry = Arc::new(PeerEntry::new(key, session, assignment));
        self.table.insert_peer(&entry);
        if let Some(old) = self.entries.insert(key, entry) {
            if old.assignment != assignment {
                self.table.remove_peer(&old);
                self.table.insert_peer(&self.entries[&key]);
            }
        }
    }

    /// Removes a peer: its addresses and indexes vanish from the table, its keys are erased.
    pub fn remove_peer(&mut self, key: &PublicKey) -> bool {
        let Some(entry) = self.entries.remove(key) else {
            return false;
        };
        self.table.remove_peer(&entry);
        for index in self.server.remove_peer(key).unwrap_or_default() {
            self.table.remove_index(index);
        }
        true
    }

    /// The published peers.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<PeerEntry>> {
        self.entries.values()
    }

    fn send(&self, bytes: &[u8], to: SocketAddr) {
        let socket = self.reply_sockets.iter().find(|s| {
            s.local_addr()
                .map(|a| a.is_ipv4() == to.is_ipv4())
                .unwrap_or(false)
        });
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
        let under_load = self.handshakes.len() >= UNDER_LOAD_THRESHOLD;
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
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let counter = match e {
                    HandshakeError::UnknownPeer => Some(&self.stats.unknown_peer),
                    HandshakeError::Replayed => Some(&self.stats.replayed),
                    HandshakeError::BadMac => Some(&self.stats.bad_mac),
                    HandshakeError::RateLimited => Some(&self.stats.rate_limited),
                    _ => None,
                };
                if let Some(c) = counter {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Timers: keepalives, key erasure, index retirement.
    pub fn tick(&mut self, now: Instant) {
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
            let mut buf = [0u8; TRANSPORT_MIN_LEN];
            if let Ok(n) = entry.session.encrypt(&mut buf, 0, now) {
                self.send(&buf[..n], endpoint);
            }
        }
    }

    /// Runs until `stop` is set.
    pub fn run(mut self) {
        let mut next_tick = monotonic_now() + TICK;
        while !self.stop.load(Ordering::Relaxed) {
            match self.handshakes.recv_timeout(TICK) {
                Ok(msg) => self.handle(&msg, monotonic_now()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = monotonic_now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
        }
    }
}
