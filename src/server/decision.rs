//! What a worker does with one received datagram, decided without I/O: [`Gate::decide`] takes
//! the bytes, their source, the time and the session table, and returns a [`Decision`] (write
//! to the TUN, relay to another client, queue a handshake, answer with a cookie, nothing for a
//! keepalive, pass to a client's control thread, or drop with a [`DropReason`]), as
//! boringtun's `Tunn` returns a `TunnResult`. The same gate serves a client's worker, in the
//! client role ([`GateRole`]).
//! The worker carries the decision out (writes, sends, the handshake queue, its counters).
//!
//! Deciding works on the datagram in place: a transport message is opened where it lies, and a
//! relayed one sealed again there for the other client; a cookie reply is written over the
//! initiation it answers. It also records what an authenticated packet proves, in the table's
//! shared entries: the peer's endpoint follows it (roaming), and the byte counters.
//!
//! Nothing here allocates, locks or reads a clock; the only state besides the table is the
//! gate's own (its under-load check and the nonces of its cookie replies), so every outcome is
//! a unit test and a fuzz target away.

use std::cell::Cell;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::proto::admission::{Admission, Verdict};
use crate::proto::constants::KEEPALIVE_ANSWER_AFTER;
use crate::proto::cookie::ServerMacKeys;
use crate::proto::padding::Padding;
use crate::proto::ratelimit::{SlotLimiter, DEFAULT_BURST, DEFAULT_PACKETS_PER_SECOND};
use crate::proto::rng::{PrfRandom, Random};
use crate::proto::session::Received;
use crate::proto::time::Instant;
use crate::proto::wire::{
    self, IpPacket, MessageType, COOKIE_REPLY_LEN, TAG_LEN, TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN,
};
use crate::server::handoff::{LoadSignal, SharedCookieSecrets, MAX_SERVER_MESSAGE_LEN};
use crate::server::session_table::{PeerEntry, TableGuard, TableSnapshot};
use crate::tunnel::ecn::{self, DecapError, Ecn, Unusual};
use crate::tunnel::mss;

mod drop_reason;
mod train;

pub use drop_reason::DropReason;
pub use train::OpenedTrain;

/// How a datagram arrived: what [`Gate::decide`] needs to know of it besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Its UDP source: a peer's endpoint follows it when it authenticates (roaming).
    pub src: SocketAddr,
    /// The ECN field of its outer IP header, for the decapsulation of RFC 6040 §4.2.
    pub outer_ecn: Ecn,
    /// When it was received.
    pub now: Instant,
}

/// What to do with a received datagram. Offsets and lengths are within the datagram as passed
/// to [`Gate::decide`], which has already rewritten it where a variant says so.
#[derive(Debug)]
pub enum Decision<'t> {
    /// Write the inner IP packet at this range to the TUN (exactly the length its header
    /// states).
    ToTun(Range<usize>),
    /// Send the first `len` bytes to `peer`'s endpoint: the packet, sealed for that other
    /// client (with `client_to_client` on).
    Relay {
        /// Bytes of the sealed transport message.
        len: usize,
        /// The client it is for.
        peer: &'t PeerEntry,
        /// The outer TOS byte / traffic class to send it with: the ECN field of the inner
        /// packet as decapsulated (RFC 6040 §4.1 again on the way out).
        outer_tos: u8,
    },
    /// An initiation that passed the gate: queue the datagram (all of it,
    /// [`wire::INITIATION_LEN`] bytes) for the control thread's Diffie-Hellman.
    QueueHandshake,
    /// Client role: a handshake response, cookie reply or push message from the server: pass
    /// the datagram (all of it, at most [`MAX_SERVER_MESSAGE_LEN`] bytes) to the client's
    /// control thread, which holds the handshake state and what the server pushed.
    PassToControl,
    /// Send the first `len` bytes back to the source: a cookie reply, written over the
    /// initiation it answers (under load, without a valid mac2).
    CookieReply {
        /// Bytes of the cookie reply.
        len: usize,
    },
    /// An authenticated keepalive: nothing to deliver.
    Keepalive,
    /// An authenticated keepalive from a peer the server has not sent anything to for
    /// [`KEEPALIVE_ANSWER_AFTER`]: send the first `len` bytes, a keepalive sealed for that
    /// peer and written over the one received, back to the source (a client's liveness probe).
    KeepaliveReply {
        /// Bytes of the sealed keepalive.
        len: usize,
    },
    /// Nothing to send or write, for this reason.
    Drop(DropReason),
}

/// Which end of the tunnels a gate stands at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRole {
    /// The headend: vets initiations (cookie replies under load), answers a client's
    /// keepalive after a silence, relays between clients; drops responses, cookie replies and
    /// pushes, which only a client receives.
    Server,
    /// A client, whose one peer is its server: passes responses, cookie replies and pushes to
    /// its control thread ([`Decision::PassToControl`]); drops initiations (a client answers
    /// none); sends nothing of its own (no cookie replies, no keepalive answers, no relay: its
    /// control thread sends its keepalives on its own timers).
    Client,
}

/// What a gate reads but does not own, fixed for its worker's life: its role, the server's
/// mac keys, the control thread's load signal and cookie secrets, and whether clients reach
/// each other through the server.
#[derive(Clone)]
pub struct GateConfig {
    /// Which end of the tunnels the gate stands at (a client's gate reads none of the
    /// server's fields below but `mss_clamp`).
    pub role: GateRole,
    /// The server's mac1 keys (both suites): initiations are checked before they are queued.
    pub mac_keys: Arc<ServerMacKeys>,
    /// The control thread's under-load state (while it holds, initiations need a valid mac2).
    pub load: Arc<LoadSignal>,
    /// The responder's cookie secrets, kept current by the control thread.
    pub cookie_secrets: SharedCookieSecrets,
    /// Relay packets between clients inside the worker (else they go to the TUN, and the
    /// host decides).
    pub client_to_client: bool,
    /// Lower the MSS of TCP SYNs crossing the tunnel to fit this MTU (`mss_clamp`).
    pub mss_clamp: Option<u16>,
}

/// A worker's gate for received datagrams: its configuration and its own handshake state.
pub struct Gate {
    config: GateConfig,
    /// The under-load check of initiations (the responder's, with a fixed table for the
    /// per-source limit of valid-mac2 initiations; the control thread's limiter is exact).
    admission: Admission<SlotLimiter>,
    /// Nonces of the cookie replies this gate writes.
    nonces: PrfRandom,
    /// Packets that arrived with an ECN combination RFC 6040 §4.2 marks "(!!!)" (no
    /// compliant ingress sends it: something on the path rewrites ECN), since the worker last
    /// took the count ([`Gate::take_ecn_alarms`]).
    ecn_alarms: Cell<u64>,
}

/// Slots of a gate's per-source limiter of valid-mac2 initiations: 16 384 x 16 bytes,
/// resident only as they are used. Only sources that received a cookie at their address get
/// there, so spoofed floods do not fill it; 256 busy sources occupy 768 (3 each), and a quiet
/// source has all three of its slots taken by busy ones about once in 10 000.
const PROVEN_SOURCE_SLOTS: usize = 16_384;

impl Gate {
    /// A gate with the responder's budget of cookie replies and WireGuard's per-source
    /// handshake rate for initiations with a valid mac2 (in a fixed table); `seed` seeds the
    /// nonces of its cookie replies (the operating system's generator, once).
    pub fn new(config: GateConfig, seed: &mut impl Random) -> Self {
        Gate {
            config,
            admission: Admission::new(SlotLimiter::new(
                DEFAULT_PACKETS_PER_SECOND,
                DEFAULT_BURST,
                PROVEN_SOURCE_SLOTS,
            )),
            nonces: PrfRandom::new(seed),
            ecn_alarms: Cell::new(0),
        }
    }

    /// The packets with an ECN combination RFC 6040 §4.2 says to log as an alarm "(!!!)" seen
    /// since the last call (forwarded as its table says; only counted).
    pub fn take_ecn_alarms(&self) -> u64 {
        self.ecn_alarms.replace(0)
    }

    /// Decides what becomes of `datagram`, which arrived as `arrival` says, with the peers of
    /// `table` (looked up under `guard`, which the returned decision borrows from). May
    /// rewrite the datagram in place (see [`Decision`]).
    pub fn decide<'t>(
        &mut self,
        datagram: &mut [u8],
        arrival: Arrival,
        table: &'t TableSnapshot,
        guard: &'t TableGuard<'_>,
    ) -> Decision<'t> {
        let result = match (wire::message_type(datagram), self.config.role) {
            (Ok(MessageType::Transport), _) => self.open_transport(datagram, arrival, table, guard),
            (Ok(MessageType::Initiation), GateRole::Server) => {
                Ok(self.vet_initiation(datagram, arrival.src, arrival.now))
            }
            (Ok(kind), GateRole::Client) => for_client_control(kind, datagram, table, guard),
            (Ok(_), GateRole::Server) => Err(DropReason::UnexpectedType),
            (Err(_), _) => Err(DropReason::Malformed),
        };
        result.unwrap_or_else(Decision::Drop)
    }

    /// An initiation (`datagram`, checked to be one) from `src`, with the responder's own
    /// check ([`Admission::check`]): a bad mac1 is dropped; under load, one without a valid
    /// mac2 is answered here with a cookie reply written over it (no Diffie-Hellman, no state,
    /// no trip through the control thread), within the gate's budget and with no per-source
    /// limit; one with a valid mac2 is queued while its source is within its handshake rate.
    /// So the control thread gets only what carries a valid mac1 and, under load, a valid mac2.
    fn vet_initiation(
        &mut self,
        datagram: &mut [u8],
        src: SocketAddr,
        now: Instant,
    ) -> Decision<'static> {
        let under_load = self.config.load.under_load(now);
        let secrets = self.config.cookie_secrets.load();
        let keys = &self.config.mac_keys;
        match self
            .admission
            .check(keys, &secrets, datagram, src, now, under_load)
        {
            // The control thread tells the suite again by mac1: a queued datagram is just bytes.
            Verdict::Proceed(_) => Decision::QueueHandshake,
            Verdict::BadMac => Decision::Drop(DropReason::BadMac),
            Verdict::OverReplyBudget | Verdict::RateLimited => {
                Decision::Drop(DropReason::HandshakeShed)
            }
            Verdict::CookieReply(suite) => {
                // The reply is made from the initiation's mac1, so not written over it directly.
                let mut reply = [0u8; COOKIE_REPLY_LEN];
                secrets.write_cookie_reply_for(
                    suite,
                    keys,
                    datagram,
                    src,
                    &mut self.nonces,
                    &mut reply,
                );
                datagram[..COOKIE_REPLY_LEN].copy_from_slice(&reply);
                Decision::CookieReply {
                    len: COOKIE_REPLY_LEN,
                }
            }
        }
    }

    /// A transport message: opened in place under the session its receiver index names;
    /// authenticated, it moves its peer's endpoint to `src`; its inner packet must come from
    /// one of the peer's addresses, takes the congestion mark of the outer header
    /// ([`decapsulate_ecn`]), and goes to the TUN, or sealed again to another client.
    fn open_transport<'t>(
        &self,
        datagram: &mut [u8],
        arrival: Arrival,
        table: &'t TableSnapshot,
        guard: &'t TableGuard<'_>,
    ) -> Result<Decision<'t>, DropReason> {
        let index = wire::transport_receiver_index(datagram).ok_or(DropReason::Malformed)?;
        let peer = table
            .by_index(index, guard)
            .ok_or(DropReason::UnknownIndex)?;
        let received = peer.session.decrypt(index, datagram, arrival.now)?;
        self.accept_opened(datagram, peer, received, arrival, table, guard)
    }

    /// A transport message `peer`'s session opened in place (`received`): the rest of
    /// [`Gate::open_transport`], for a message opened alone or in a train
    /// ([`Gate::open_train`]).
    fn accept_opened<'t>(
        &self,
        datagram: &mut [u8],
        peer: &'t PeerEntry,
        received: Received,
        arrival: Arrival,
        table: &'t TableSnapshot,
        guard: &'t TableGuard<'_>,
    ) -> Result<Decision<'t>, DropReason> {
        // Authenticated: the peer's endpoint follows it (roaming).
        peer.roam_to(arrival.src);
        if received.plaintext.is_empty() {
            return Ok(match self.config.role {
                GateRole::Server => answer_keepalive(datagram, peer, arrival.now),
                // The client's control thread keeps its side alive on its own timers.
                GateRole::Client => Decision::Keepalive,
            });
        }
        let packet = &datagram[received.plaintext.clone()];
        let inner = IpPacket::new_checked(packet).map_err(|_| DropReason::Malformed)?;
        if !peer.owns_source(inner.src(), table) {
            return Err(DropReason::SpoofedSource);
        }
        let (inner_dst, len) = (inner.dst(), inner.total_len());
        let packet = &mut datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
        let (outer_tos, unusual) = decapsulate_ecn(arrival.outer_ecn, packet)?;
        if unusual == Unusual::ShouldLog {
            self.ecn_alarms.set(self.ecn_alarms.get() + 1);
        }
        peer.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        if let Some(mtu) = self.config.mss_clamp {
            // A TCP SYN's MSS lowered to fit the tunnel, whether it goes to the TUN or is relayed.
            let packet = &mut datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
            mss::clamp_mss(packet, mtu, mss::ChecksumState::Complete);
        }
        if self.config.client_to_client && self.config.role == GateRole::Server {
            if let Some(other) = table.by_address(inner_dst, guard) {
                // The plaintext sits between the old header's and the old tag's room: seal it
                // there, padded for the other peer as far as that room goes.
                let padding = relay_padding(other, len, datagram.len());
                let room = TRANSPORT_HEADER_LEN + padding.padded_len(len) + TAG_LEN;
                let room = &mut datagram[..room];
                let sealed = other
                    .session
                    .encrypt_padded(room, len, padding, arrival.now)?;
                other.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                return Ok(Decision::Relay {
                    len: sealed,
                    peer: other,
                    outer_tos,
                });
            }
        }
        Ok(Decision::ToTun(
            TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len,
        ))
    }
}

/// How an inner packet of `len` bytes is padded when relayed to `to`, sealed in place in a
/// received datagram of `datagram_len` bytes: by `to`'s rule ([`PeerEntry::padding`]) when
/// the datagram has room for it, which is the room of the sender's plaintext: a WireGuard
/// sender padded it by the same rule (under its own MTU, normally the same); a native sender
/// did not, so what it sends to a WireGuard peer goes on unpadded (the receiver takes that:
/// it reads the packet's length from its IP header; and the length was on the wire unpadded
/// on the way in). The datagram cannot grow in place: in a GRO receive the next one follows
/// it.
fn relay_padding(to: &PeerEntry, len: usize, datagram_len: usize) -> Padding {
    let padded = TRANSPORT_HEADER_LEN + to.padding.padded_len(len) + TAG_LEN;
    if padded <= datagram_len {
        to.padding
    } else {
        Padding::None
    }
}

/// Applies the outer header's ECN field to the opened inner `packet` (RFC 6040 §4.2): CE on
/// the outer header of an ECN-capable packet marks it CE (its IPv4 checksum updated); on a
/// packet that is not ECN-capable it is a drop, the only congestion signal that transport
/// understands. Returns the outer TOS byte the packet would be sent on with (RFC 6040 §4.1),
/// and how unusual the arriving combination was.
fn decapsulate_ecn(outer: Ecn, packet: &mut [u8]) -> Result<(u8, Unusual), DropReason> {
    match ecn::decapsulate(outer, packet) {
        Ok(decapsulated) => Ok((
            ecn::outer_ecn_for(decapsulated.inner).bits(),
            decapsulated.unusual,
        )),
        Err(DecapError::CongestedNotEct) => Err(DropReason::CongestedNotEct),
        Err(DecapError::NotIp) => Err(DropReason::Malformed),
    }
}

/// What a client's gate does with a message of `kind` other than transport data: responses
/// and cookie replies (their lengths checked by [`wire::message_type`]) go to the control
/// thread, which alone can tell whether they answer its handshake; a push only under a
/// receiver index of the table (one of the client's keypairs) and within the longest push, so
/// junk of that type does not fill the control thread's queue; initiations are dropped.
fn for_client_control(
    kind: MessageType,
    datagram: &[u8],
    table: &TableSnapshot,
    guard: &TableGuard<'_>,
) -> Result<Decision<'static>, DropReason> {
    match kind {
        MessageType::Response | MessageType::CookieReply => Ok(Decision::PassToControl),
        MessageType::Push => {
            if datagram.len() > MAX_SERVER_MESSAGE_LEN {
                return Err(DropReason::Malformed);
            }
            let index = wire::push_receiver_index(datagram).ok_or(DropReason::Malformed)?;
            table
                .by_index(index, guard)
                .map(|_| Decision::PassToControl)
                .ok_or(DropReason::UnknownIndex)
        }
        MessageType::Initiation | MessageType::Transport => Err(DropReason::UnexpectedType),
    }
}

/// What a keepalive from `peer` calls for: an answer when the server has been silent towards
/// it for [`KEEPALIVE_ANSWER_AFTER`] (sealed over the datagram), else nothing.
fn answer_keepalive<'t>(datagram: &mut [u8], peer: &'t PeerEntry, now: Instant) -> Decision<'t> {
    let silent = peer
        .session
        .last_sent()
        .is_none_or(|sent| now - sent >= KEEPALIVE_ANSWER_AFTER);
    if !silent {
        return Decision::Keepalive;
    }
    // Empty, in either suite: WireGuard pads no keepalive.
    match peer
        .session
        .encrypt(&mut datagram[..TRANSPORT_MIN_LEN], 0, now)
    {
        Ok(len) => Decision::KeepaliveReply { len },
        // No keypair to seal with (not confirmed yet, or expired): nothing to answer with.
        Err(_) => Decision::Keepalive,
    }
}

#[cfg(test)]
mod tests;
