//! The client's side of a tunnel, sans-IO: handshakes, rekeys, keepalives and retries, all
//! driven by the `now` the caller passes.
//!
//! The caller's loop: feed every datagram from the server to [`Client::receive`], seal every
//! packet from the TUN with [`Client::encrypt`], call [`Client::poll_transmit`] until it returns
//! `None` after each of those and whenever [`Client::next_timeout`] passes.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use super::constants::{
    KEEPALIVE_TIMEOUT, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
};
use super::cookie::{self, CookieJar, MacKeys};
use super::handshake::{HandshakeError, InitiatorHandshake, InitiatorKeys};
use super::keys::{PresharedKey, PublicKey, StaticSecret};
use super::rng::Random;
use super::session::{Session, SessionError};
use super::time::{Instant, Tai64N};
use super::wire::{
    self, AddressAssignment, MessageType, PushConfig, INITIATION_LEN, TRANSPORT_MIN_LEN,
};

/// Start a new handshake when data we sent has had no answer for this long. WireGuard
/// (whitepaper section 6.5) waits `Keepalive-Timeout + Rekey-Timeout` = 15 s. Here a live server
/// answers data within `KEEPALIVE_TIMEOUT` plus one housekeeping tick (its passive keepalive,
/// `Session::needs_keepalive`), so 2 s of margin over `KEEPALIVE_TIMEOUT` is enough, and a client
/// notices a restarted server 3 s sooner. A false alarm costs one handshake, never a packet.
pub const NEW_HANDSHAKE_AFTER_SILENCE: Duration =
    Duration::from_secs(KEEPALIVE_TIMEOUT.as_secs() + 2);

/// What the client needs to know to connect.
pub struct ClientParams {
    /// Our static key.
    pub secret: StaticSecret,
    /// The server's static public key.
    pub server: PublicKey,
    /// The pre-shared key, or [`PresharedKey::zero`].
    pub psk: PresharedKey,
    /// Send a keepalive after this long without sending anything (keeps NAT state alive and
    /// lets us notice a dead server); `None` = off.
    pub persistent_keepalive: Option<Duration>,
}

/// What a received datagram turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// An IP packet for the TUN, at this range of the buffer.
    Packet(Range<usize>),
    /// An authenticated keepalive.
    Keepalive,
    /// A handshake completed; the server assigned this address (same on every rekey).
    Connected(AddressAssignment),
    /// A cookie reply opened (the server is under load, or someone forged it): the next
    /// initiation, sent when the pending one is due for retransmission, carries the cookie.
    CookieReceived,
    /// The server pushed routes and DNS servers that differ from the last ones it pushed (the
    /// first push counts as a change unless it is empty). They replace the earlier ones.
    Pushed(PushConfig),
    /// A push message that repeats the last one: nothing to do.
    PushRepeated,
    /// Dropped, for this reason.
    Dropped(ClientDrop),
}

/// Why the client dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDrop {
    /// Not a message of ours, or malformed.
    Malformed,
    /// A handshake message that failed.
    Handshake(HandshakeError),
    /// A transport message that failed.
    Transport(SessionError),
    /// A cookie reply we cannot use.
    BadCookie,
    /// An authenticated push message whose payload is malformed or out of range (or of a
    /// version this client does not read).
    BadPush,
}

/// Counters for operators and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientStats {
    /// Initiations sent.
    pub initiations_sent: u64,
    /// Handshakes completed.
    pub handshakes_completed: u64,
    /// Handshake series abandoned after `REKEY_ATTEMPT_TIME`.
    pub handshakes_abandoned: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
}

/// The client's tunnel state.
pub struct Client {
    config: ClientParams,
    own_mac_keys: MacKeys,
    cookies: CookieJar,
    session: Arc<Session>,
    handshake: Option<InitiatorHandshake>,
    /// First initiation of the current series of attempts.
    series_started: Option<Instant>,
    /// When the next initiation is due (retry, or after an abandoned series).
    retry_at: Option<Instant>,
    /// The wall clock at `epoch`, to derive strictly increasing TAI64N timestamps.
    wall_at_epoch: Duration,
    epoch: Instant,
    last_timestamp: Tai64N,
    assignment: Option<AddressAssignment>,
    /// What the server pushed last (empty until it pushes anything).
    pushed: PushConfig,
    keepalive_pending: bool,
    /// Probe a silent server this often (several servers to fail over between); `None` = off.
    liveness_probe: Option<Duration>,
    /// When the last liveness probe went out.
    probe_sent: Option<Instant>,
    stats: ClientStats,
}

impl Client {
    /// A client that will connect at the first [`Client::poll_transmit`]. `wall_clock` is the
    /// time since the Unix epoch at `now`; it only seeds handshake timestamps.
    pub fn new(config: ClientParams, now: Instant, wall_clock: Duration) -> Self {
        let own_public = config.secret.public_key();
        Client {
            own_mac_keys: MacKeys::new(own_public.as_bytes()),
            cookies: CookieJar::new(config.server.as_bytes()),
            config,
            session: Arc::new(Session::new()),
            handshake: None,
            series_started: None,
            retry_at: Some(now),
            wall_at_epoch: wall_clock,
            epoch: now,
            last_timestamp: Tai64N::default(),
            assignment: None,
            pushed: PushConfig::default(),
            keepalive_pending: false,
            liveness_probe: None,
            probe_sent: None,
            stats: ClientStats::default(),
        }
    }

    /// Turns on fast detection of a dead server, for a client that has other servers to move
    /// to: when data it sent has had no answer for `interval`, it sends a keepalive (the server
    /// answers keepalives from a peer it has not sent to for a while), and when another
    /// `interval` passes without an answer, [`Client::server_silent`] says so. A pending
    /// handshake counts as silent after [`REKEY_TIMEOUT`] without a response.
    pub fn set_liveness_probe(&mut self, interval: Option<Duration>) {
        self.liveness_probe = interval;
    }

    /// With a liveness probe set: whether the server stopped answering (see
    /// [`Client::set_liveness_probe`]), so the caller should move to another server and call
    /// [`Client::switch_server`].
    pub fn server_silent(&self, now: Instant) -> bool {
        let Some(interval) = self.liveness_probe else {
            return false;
        };
        let data_unanswered = self
            .session
            .unanswered_since()
            .is_some_and(|t| now - t >= interval * 2);
        let handshake_unanswered = self.handshake.is_some()
            && self
                .series_started
                .is_some_and(|t| now - t >= REKEY_TIMEOUT);
        data_unanswered || handshake_unanswered
    }

    /// Forgets the current server's session and starts a handshake at once, for a new
    /// server endpoint (one that shares the old one's static key).
    pub fn switch_server(&mut self, now: Instant) {
        self.session.clear();
        self.session.forget_unanswered();
        self.handshake = None;
        self.series_started = None;
        self.retry_at = Some(now);
        self.probe_sent = None;
        self.keepalive_pending = false;
    }

    /// The session (shared with any thread that seals or opens for it).
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The address the server assigned, once connected.
    pub fn assignment(&self) -> Option<&AddressAssignment> {
        self.assignment.as_ref()
    }

    /// What the server pushed last (empty when it pushed nothing).
    pub fn pushed(&self) -> &PushConfig {
        &self.pushed
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Seals the IP packet at `buf[16..16 + len]`; returns the datagram length. Without a valid
    /// keypair the packet cannot go and a handshake is scheduled.
    pub fn encrypt(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Result<usize, SessionError> {
        match self.session.encrypt(buf, len, now) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.want_handshake(now);
                Err(e)
            }
        }
    }

    /// Handles one datagram from the server, decrypting in place.
    pub fn receive(&mut self, buf: &mut [u8], now: Instant) -> ClientEvent {
        match wire::message_type(buf) {
            Ok(MessageType::Transport) => self.receive_transport(buf, now),
            Ok(MessageType::Response) => self.receive_response(buf, now),
            Ok(MessageType::Push) => self.receive_push(buf, now),
            // The cookie only goes into the jar, for mac2 of the next initiation; the pending
            // handshake stays and is retransmitted on its normal timer, as WireGuard does. A
            // reply opens for anyone who knows the server's public key and saw our mac1, so
            // acting on it (a new initiation at once) would let an injector cancel every
            // handshake before the server's genuine response arrives.
            Ok(MessageType::CookieReply) => match self.cookies.accept_cookie_reply(buf, now) {
                Ok(()) => ClientEvent::CookieReceived,
                Err(_) => ClientEvent::Dropped(ClientDrop::BadCookie),
            },
            _ => ClientEvent::Dropped(ClientDrop::Malformed),
        }
    }

    fn receive_transport(&mut self, buf: &mut [u8], now: Instant) -> ClientEvent {
        let Some(index) = wire::transport_receiver_index(buf) else {
            return ClientEvent::Dropped(ClientDrop::Malformed);
        };
        match self.session.decrypt(index, buf, now) {
            Ok(received) => {
                if received.plaintext.is_empty() {
                    ClientEvent::Keepalive
                } else {
                    ClientEvent::Packet(received.plaintext)
                }
            }
            Err(e) => ClientEvent::Dropped(ClientDrop::Transport(e)),
        }
    }

    fn receive_push(&mut self, buf: &mut [u8], now: Instant) -> ClientEvent {
        let Some(index) = wire::push_receiver_index(buf) else {
            return ClientEvent::Dropped(ClientDrop::Malformed);
        };
        let received = match self.session.decrypt_push(index, buf, now) {
            Ok(received) => received,
            Err(e) => return ClientEvent::Dropped(ClientDrop::Transport(e)),
        };
        match PushConfig::parse(&buf[received.plaintext]) {
            Ok(config) if config == self.pushed => ClientEvent::PushRepeated,
            Ok(config) => {
                self.pushed = config.clone();
                ClientEvent::Pushed(config)
            }
            Err(_) => ClientEvent::Dropped(ClientDrop::BadPush),
        }
    }

    fn receive_response(&mut self, buf: &[u8], now: Instant) -> ClientEvent {
        let Some(pending) = self.handshake.take() else {
            return ClientEvent::Dropped(ClientDrop::Handshake(HandshakeError::Unexpected));
        };
        if wire::Response::new_checked(buf).map(|r| r.receiver_index()) != Ok(pending.local_index) {
            self.handshake = Some(pending);
            return ClientEvent::Dropped(ClientDrop::Handshake(HandshakeError::Unexpected));
        }
        // Check mac1 before the pending handshake is consumed, so that a forged response (its
        // index is visible on the wire) cannot make us drop the genuine one.
        if !cookie::verify_mac1(&self.own_mac_keys, buf) {
            self.handshake = Some(pending);
            return ClientEvent::Dropped(ClientDrop::Handshake(HandshakeError::BadMac));
        }
        match pending.finish(buf, &self.own_mac_keys, now) {
            Ok((keypair, assignment)) => {
                self.session.install(Arc::new(keypair), now);
                self.series_started = None;
                self.retry_at = None;
                // The server holds the new keys as `next` until it hears from us under them.
                self.keepalive_pending = true;
                self.stats.handshakes_completed += 1;
                self.assignment = Some(assignment);
                ClientEvent::Connected(assignment)
            }
            Err(e) => ClientEvent::Dropped(ClientDrop::Handshake(e)),
        }
    }

    fn want_handshake(&mut self, now: Instant) {
        if self.handshake.is_none() && self.retry_at.is_none() {
            self.retry_at = Some(now);
        }
    }

    fn timestamp(&mut self, now: Instant) -> Tai64N {
        let mut t = Tai64N::from_unix(self.wall_at_epoch + (now - self.epoch));
        if t <= self.last_timestamp {
            // Two initiations within one clock tick still get increasing timestamps.
            t = Tai64N::from_unix(self.last_unix() + Duration::from_nanos(1));
        }
        self.last_timestamp = t;
        t
    }

    fn last_unix(&self) -> Duration {
        let secs = u64::from_be_bytes(self.last_timestamp.0[..8].try_into().expect("8 bytes"));
        let nanos = u32::from_be_bytes(self.last_timestamp.0[8..].try_into().expect("4 bytes"));
        Duration::new(secs.saturating_sub(1 << 62), nanos)
    }

    /// True when the current keypair should be replaced (age, message counts, or silence).
    fn needs_rekey(&self, now: Instant) -> bool {
        let Some(current) = self.session.current(now) else {
            return true;
        };
        now - current.created >= REKEY_AFTER_TIME
            || current.wants_rekey_by_count()
            || self
                .session
                .unanswered_since()
                .is_some_and(|t| now - t >= NEW_HANDSHAKE_AFTER_SILENCE)
    }

    fn send_initiation(
        &mut self,
        now: Instant,
        rng: &mut impl Random,
        out: &mut [u8],
    ) -> Option<usize> {
        let out: &mut [u8; INITIATION_LEN] = out.get_mut(..INITIATION_LEN)?.try_into().ok()?;
        let series_started = *self.series_started.get_or_insert(now);
        if now - series_started >= REKEY_ATTEMPT_TIME {
            // Give up on this series: erase every key, pause, then start afresh.
            self.handshake = None;
            self.series_started = None;
            self.session.clear();
            self.stats.handshakes_abandoned += 1;
            self.retry_at = Some(now + REKEY_TIMEOUT);
            return None;
        }
        let timestamp = self.timestamp(now);
        // A fresh random index, never one a keypair of ours still answers to.
        let held = self.session.local_indexes();
        let index = loop {
            let candidate = rng.next_u32();
            if !held.contains(&candidate) {
                break candidate;
            }
        };
        let keys = InitiatorKeys {
            own: &self.config.secret,
            server: &self.config.server,
            psk: &self.config.psk,
        };
        let initiation =
            InitiatorHandshake::start(keys, index, timestamp, &mut self.cookies, now, out);
        self.handshake = Some(initiation);
        let jitter = rng.next_u64() % (REKEY_TIMEOUT_JITTER_MAX.as_nanos() as u64 + 1);
        self.retry_at = Some(now + REKEY_TIMEOUT + Duration::from_nanos(jitter));
        self.stats.initiations_sent += 1;
        Some(INITIATION_LEN)
    }

    fn send_keepalive(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        let n = self
            .session
            .encrypt(out.get_mut(..TRANSPORT_MIN_LEN)?, 0, now)
            .ok()?;
        self.stats.keepalives_sent += 1;
        Some(n)
    }

    /// Returns the next datagram the client wants sent (an initiation or a keepalive), written
    /// into `out` (at least 148 bytes). Call until it returns `None`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        rng: &mut impl Random,
        out: &mut [u8],
    ) -> Option<usize> {
        if self.session.is_stale(now) && self.session.last_handshake().is_some() {
            self.session.clear();
        }
        if self.handshake.is_none() && self.retry_at.is_none() && self.needs_rekey(now) {
            self.retry_at = Some(now);
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            if let Some(n) = self.send_initiation(now, rng, out) {
                return Some(n);
            }
        }
        let keepalive_due = self.keepalive_pending
            || self.session.needs_keepalive(now)
            || self.probe_due(now)
            || self
                .config
                .persistent_keepalive
                .is_some_and(|every| self.session.last_sent().is_none_or(|t| now - t >= every));
        if keepalive_due && self.session.current(now).is_some() {
            self.keepalive_pending = false;
            if self.liveness_probe.is_some() {
                self.probe_sent = Some(now);
            }
            let n = self.send_keepalive(now, out)?;
            // A keepalive expects an answer (the server's passive keepalive) like any packet.
            return Some(n);
        }
        None
    }

    /// Whether a liveness probe is due: data unanswered for the probe interval, and no probe
    /// sent since that data went out.
    fn probe_due(&self, now: Instant) -> bool {
        let (Some(interval), Some(unanswered)) =
            (self.liveness_probe, self.session.unanswered_since())
        else {
            return false;
        };
        now - unanswered >= interval && self.probe_sent.is_none_or(|p| p < unanswered)
    }

    /// The latest time by which [`Client::poll_transmit`] should be called again.
    pub fn next_timeout(&self, now: Instant) -> Instant {
        let mut next = now
            + self.liveness_probe.map_or(Duration::from_secs(1), |p| {
                (p / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
            });
        if let Some(t) = self.retry_at {
            next = next.min(t);
        }
        next.max(now)
    }
}
