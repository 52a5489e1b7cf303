//! The server's handshake side, sans-IO: the responder plus the peers it knows, their last
//! accepted timestamps, their sessions and the receiver indexes in use.
//!
//! The engine's control thread owns one `Server`; workers only ever see the `Arc<Session>`s it
//! hands out (and publish them in their lock-free tables by index and by address).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::handshake::{HandshakeError, Responder, ResponderAction};
use super::keys::{PresharedKey, PublicKey, StaticSecret};
use super::rng::Random;
use super::session::Session;
use super::suite::Suite;
use super::time::{Instant, Tai64N};
use super::wire::{
    AddressAssignment, PushConfig, MAX_PUSH_PAYLOAD_LEN, RESPONSE_LEN, TAG_LEN,
    TRANSPORT_HEADER_LEN, WG_RESPONSE_LEN,
};

/// How many times a push message goes out after each handshake (or change) when it pushes
/// something: it is not acknowledged, so it is repeated in case one is lost (and the first
/// may overtake the response it follows). An empty one, sent only to withdraw what an earlier
/// server may have pushed, goes once. Every handshake (`REKEY_AFTER_TIME`) sends it again.
pub const PUSH_SENDS: u8 = 3;
/// Time between two sends of the same push message.
pub const PUSH_RESEND_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// Room for a push message: header, the largest payload, tag.
pub const PUSH_BUFFER_LEN: usize = TRANSPORT_HEADER_LEN + MAX_PUSH_PAYLOAD_LEN + TAG_LEN;

/// A peer the server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its static public key.
    pub public_key: PublicKey,
    /// Its pre-shared key ([`PresharedKey::zero`] when none).
    pub psk: PresharedKey,
    /// The address (and MTU) it is told in every handshake response (native suite); a
    /// WireGuard peer is told nothing (it sets its own address), but the server routes this
    /// address to it all the same.
    pub assignment: AddressAssignment,
    /// Networks behind the peer (`allowed_ips`): routed to it, and accepted as sources from it,
    /// besides its assigned addresses. The handshake does not use them; the server's routing
    /// does.
    pub allowed_ips: Vec<IpNet>,
    /// The protocol it speaks.
    pub suite: Suite,
}

struct Peer {
    config: PeerConfig,
    last_timestamp: Option<Tai64N>,
    session: Arc<Session>,
    push: PushState,
}

/// What a peer is pushed and when it is due again.
#[derive(Default)]
struct PushState {
    config: PushConfig,
    /// Sends left of the current round.
    sends_left: u8,
    /// When the next one is due.
    due: Option<Instant>,
}

impl PushState {
    /// Starts a round of sends, the first at `now`; none for a WireGuard peer, which knows no
    /// push message (type 5).
    fn start_round(&mut self, now: Instant, suite: Suite) {
        if suite == Suite::WireGuard {
            self.sends_left = 0;
            self.due = None;
            return;
        }
        self.sends_left = if self.config.is_empty() {
            1
        } else {
            PUSH_SENDS
        };
        self.due = Some(now);
    }

    fn is_due(&self, now: Instant) -> bool {
        self.sends_left > 0 && self.due.is_some_and(|t| now >= t)
    }
}

/// The result of a handshake message the server answered.
#[derive(Debug)]
pub enum HandshakeReply {
    /// A cookie reply of this length was written; nothing else changed.
    Cookie(usize),
    /// A new session keypair: a response of this length was written.
    Established(Established),
}

/// A completed handshake.
#[derive(Debug)]
pub struct Established {
    /// Length of the response written.
    pub len: usize,
    /// Who.
    pub peer: PublicKey,
    /// Its session (with the new keypair waiting as `next`).
    pub session: Arc<Session>,
    /// The receiver index of the new keypair.
    pub local_index: u32,
    /// Receiver indexes no longer in use (replaced unconfirmed keypairs).
    pub retired_indexes: Vec<u32>,
}

/// What a periodic [`Server::tick`] found.
#[derive(Debug, Default)]
pub struct TickReport {
    /// Peers that should get a keepalive now.
    pub keepalives: Vec<PublicKey>,
    /// Receiver indexes that no keypair holds any more: remove them from index tables.
    pub retired_indexes: Vec<u32>,
    /// Peers due a push message ([`Server::write_push`]).
    pub pushes: Vec<PublicKey>,
}

/// The server's protocol state.
pub struct Server {
    responder: Responder,
    peers: HashMap<PublicKey, Peer>,
    /// Which peer owns each receiver index in use; indexes are never reused while held.
    index_owner: HashMap<u32, PublicKey>,
}

impl Server {
    /// A server with the static key `secret` and no peers.
    pub fn new(secret: StaticSecret, now: Instant, rng: &mut impl Random) -> Self {
        Server {
            responder: Responder::new(secret, now, rng),
            peers: HashMap::new(),
            index_owner: HashMap::new(),
        }
    }

    /// Our static public key.
    pub fn public_key(&self) -> &PublicKey {
        self.responder.public_key()
    }

    /// The cookie secrets in use (see [`Responder::cookie_secrets`]).
    pub fn cookie_secrets(&self) -> &std::sync::Arc<crate::proto::cookie::CookieSecrets> {
        self.responder.cookie_secrets()
    }

    /// Rotates the cookie secret if due (see [`Responder::rotate_cookie_secret`]).
    pub fn rotate_cookie_secret(&mut self, now: Instant, rng: &mut impl Random) {
        self.responder.rotate_cookie_secret(now, rng);
    }

    /// Adds (or replaces the configuration of) a peer; returns its session. A replaced peer
    /// keeps its session and timestamp, unless its suite changed: then its keys are erased
    /// (they are of the other suite's handshake, which it may no longer make).
    pub fn add_peer(&mut self, config: PeerConfig) -> Arc<Session> {
        match self.peers.get_mut(&config.public_key) {
            Some(peer) => {
                if peer.config.suite != config.suite {
                    peer.session.clear();
                    peer.push.sends_left = 0;
                }
                peer.config = config;
                peer.session.clone()
            }
            None => {
                let session = Arc::new(Session::new());
                let key = config.public_key;
                self.peers.insert(
                    key,
                    Peer {
                        config,
                        last_timestamp: None,
                        session: session.clone(),
                        push: PushState::default(),
                    },
                );
                session
            }
        }
    }

    /// Gives back the room of maps that many departed peers left nearly empty, so that memory
    /// returns to where it was after a churn of thousands of clients.
    pub fn shrink_if_sparse(&mut self) {
        shrink_if_sparse(&mut self.peers);
        shrink_if_sparse(&mut self.index_owner);
    }

    /// Removes a peer, erases its keys and returns the receiver indexes its keypairs held. Any
    /// other index still listed for it (its keys were erased since the last tick) is retired
    /// by the next [`Server::tick`], which forgets indexes whose owner is gone; so removing
    /// many peers costs no scan of every index per peer.
    pub fn remove_peer(&mut self, key: &PublicKey) -> Option<Vec<u32>> {
        let peer = self.peers.remove(key)?;
        let held = peer.session.local_indexes();
        peer.session.clear();
        for index in &held {
            if self.index_owner.get(index) == Some(key) {
                self.index_owner.remove(index);
            }
        }
        Some(held)
    }

    /// Sets what a peer is pushed; false when it is unknown or nothing changed. A change
    /// reaches a peer with keys at once (the next [`Server::tick`] lists it in
    /// [`TickReport::pushes`]); the others get it with their next handshake.
    pub fn set_push(&mut self, key: &PublicKey, config: PushConfig, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(key) else {
            return false;
        };
        if peer.push.config == config {
            return false;
        }
        peer.push.config = config;
        if peer.session.newest(now).is_some() {
            peer.push.start_round(now, peer.config.suite);
        }
        true
    }

    /// What a peer is pushed.
    pub fn push(&self, key: &PublicKey) -> Option<&PushConfig> {
        self.peers.get(key).map(|p| &p.push.config)
    }

    /// Writes the push message due for `key` into `out` (at least [`PUSH_BUFFER_LEN`] bytes),
    /// sealed under its newest keys, and returns its length; `None` when none is due or it
    /// has no usable keys. Call it right after sending a handshake response, and for every peer
    /// in [`TickReport::pushes`].
    pub fn write_push(&mut self, key: &PublicKey, now: Instant, out: &mut [u8]) -> Option<usize> {
        let room = out.get_mut(..PUSH_BUFFER_LEN)?;
        let peer = self.peers.get_mut(key)?;
        // Never to a WireGuard peer: it knows no type 5 (its round never starts; this holds
        // even if its suite changed since).
        if !peer.push.is_due(now) || peer.config.suite == Suite::WireGuard {
            return None;
        }
        let Some(keypair) = peer.session.newest(now) else {
            peer.push.sends_left = 0;
            return None;
        };
        peer.push.sends_left -= 1;
        peer.push.due = Some(now + PUSH_RESEND_AFTER);
        let payload_len = peer.push.config.emit(&mut room[TRANSPORT_HEADER_LEN..]);
        let len = keypair.seal_push(room, payload_len, now).ok()?;
        // Like a keepalive: it tells the peer we are alive but expects no answer.
        peer.session.note_sent(now, false);
        Some(len)
    }

    /// A peer's configuration as it runs.
    pub fn peer_config(&self, key: &PublicKey) -> Option<&PeerConfig> {
        self.peers.get(key).map(|p| &p.config)
    }

    /// The session of a configured peer.
    pub fn session(&self, key: &PublicKey) -> Option<&Arc<Session>> {
        self.peers.get(key).map(|p| &p.session)
    }

    /// The peer and session holding receiver index `index`.
    pub fn by_index(&self, index: u32) -> Option<(PublicKey, Arc<Session>)> {
        let key = self.index_owner.get(&index)?;
        Some((*key, self.peers.get(key)?.session.clone()))
    }

    /// Number of configured peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    fn allocate_index(&mut self, owner: PublicKey, rng: &mut impl Random) -> u32 {
        loop {
            let index = rng.next_u32();
            if let std::collections::hash_map::Entry::Vacant(slot) = self.index_owner.entry(index) {
                slot.insert(owner);
                return index;
            }
        }
    }

    /// Handles a handshake initiation from `src`; see [`Responder::handle_initiation`] for
    /// what `under_load` changes. Unknown peers and replayed initiations create nothing and get
    /// no answer.
    pub fn handle_initiation(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
        under_load: bool,
        rng: &mut impl Random,
        out: &mut [u8],
    ) -> Result<HandshakeReply, HandshakeError> {
        let verified = match self
            .responder
            .handle_initiation(msg, src, now, under_load, rng, out)?
        {
            ResponderAction::CookieReply(len) => return Ok(HandshakeReply::Cookie(len)),
            ResponderAction::Verified(v) => v,
        };
        let peer = self
            .peers
            .get(&verified.peer)
            .ok_or(HandshakeError::UnknownPeer)?;
        // A peer handshakes only with the suite it is configured for.
        if peer.config.suite != verified.suite {
            return Err(HandshakeError::WrongSuite);
        }
        if peer
            .last_timestamp
            .is_some_and(|last| verified.timestamp <= last)
        {
            return Err(HandshakeError::Replayed);
        }
        let key = verified.peer;
        let timestamp = verified.timestamp;
        let local_index = self.allocate_index(key, rng);
        let peer = self.peers.get_mut(&key).expect("looked up above");
        let responded = match verified.suite {
            Suite::Native => out
                .get_mut(..RESPONSE_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(HandshakeError::Malformed)
                .and_then(|response| {
                    verified.respond(
                        &peer.config.psk,
                        &peer.config.assignment,
                        local_index,
                        now,
                        response,
                    )
                })
                .map(|keypair| (keypair, RESPONSE_LEN)),
            Suite::WireGuard => out
                .get_mut(..WG_RESPONSE_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(HandshakeError::Malformed)
                .and_then(|response| {
                    verified.respond_wireguard(&peer.config.psk, local_index, now, response)
                })
                .map(|keypair| (keypair, WG_RESPONSE_LEN)),
        };
        let (keypair, len) = match responded {
            Ok(k) => k,
            Err(e) => {
                self.index_owner.remove(&local_index);
                return Err(e);
            }
        };
        peer.last_timestamp = Some(timestamp);
        peer.push.start_round(now, peer.config.suite);
        let session = peer.session.clone();
        let retired_indexes = session.install(Arc::new(keypair), now);
        for index in &retired_indexes {
            self.index_owner.remove(index);
        }
        Ok(HandshakeReply::Established(Established {
            len,
            peer: key,
            session,
            local_index,
            retired_indexes,
        }))
    }

    /// Periodic housekeeping (call about once a second): erases the keys of sessions without a
    /// handshake for `ZERO_KEYS_AFTER`, forgets indexes no keypair holds, lists peers due a
    /// passive keepalive.
    pub fn tick(&mut self, now: Instant) -> TickReport {
        let mut report = TickReport::default();
        for (key, peer) in &self.peers {
            if peer.session.last_handshake().is_some() && peer.session.is_stale(now) {
                peer.session.clear();
            } else if peer.session.needs_keepalive(now) {
                report.keepalives.push(*key);
            }
            if peer.push.is_due(now) {
                report.pushes.push(*key);
            }
        }
        let peers = &self.peers;
        self.index_owner.retain(|index, owner| {
            let held = peers
                .get(owner)
                .is_some_and(|p| p.session.holds_local_index(*index));
            if !held {
                report.retired_indexes.push(*index);
            }
            held
        });
        report
    }
}

/// Shrinks `map` when it uses under a quarter of its capacity: a `HashMap` keeps its largest
/// size otherwise. Small maps are left alone (shrinking them gains nothing).
pub fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}
