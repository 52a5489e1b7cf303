//! The Noise IKpsk2 handshake, framed as in docs/protocol.md.
//!
//! [`InitiatorHandshake`] is the client's half; [`Responder`] the server's. Neither keeps peers: the
//! responder verifies a message up to the point where it knows who sent it and hands back a
//! [`VerifiedInitiation`], so the caller can look the peer up, check the timestamp and decide.

use std::net::SocketAddr;
use std::sync::Arc;

use snow::{Builder, HandshakeState};
use zeroize::Zeroizing;

use super::admission::{Admission, Verdict};
use super::constants::{NOISE_PARAMS, NOISE_PROLOGUE, WG_IDENTIFIER, WG_NOISE_PARAMS};
use super::cookie::{self, CookieChecker, CookieJar, CookieSecrets, MacKeys};
use super::keypair::Keypair;
use super::keys::{PresharedKey, PublicKey, StaticSecret};
use super::ratelimit::RateLimiter;
use super::rng::Random;
use super::suite::Suite;
use super::time::{Instant, Tai64N};
use super::wire::{
    self, AddressAssignment, MessageType, ASSIGNMENT_LEN, INITIATION_LEN, RESPONSE_LEN, TAG_LEN,
    WG_RESPONSE_LEN,
};
use super::wireguard::{self as wg, WgMacKeys};

/// Why a handshake message was not accepted. None of these is answered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Wrong type, length or reserved bytes.
    #[error("malformed handshake message")]
    Malformed,
    /// mac1 did not match: not meant for this key, or altered.
    #[error("bad mac1")]
    BadMac,
    /// The Noise message did not decrypt or authenticate.
    #[error("handshake decryption failed")]
    Decryption,
    /// The initiator's static key belongs to no configured peer.
    #[error("unknown peer")]
    UnknownPeer,
    /// The timestamp is not newer than the last accepted from that peer.
    #[error("replayed initiation")]
    Replayed,
    /// The source sent too many initiations.
    #[error("rate limited")]
    RateLimited,
    /// The response answers no initiation of ours.
    #[error("unexpected response")]
    Unexpected,
    /// The assignment inside the response is out of range.
    #[error("invalid address assignment")]
    BadAssignment,
    /// The initiation is of the other suite than the one its peer is configured with.
    #[error("initiation of a suite its peer is not configured for")]
    WrongSuite,
}

/// How an initiation failure is counted and logged: the few kinds an operator tells apart,
/// with names that stay stable in logs, `show` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The initiator's static key belongs to no configured peer.
    UnknownPeer,
    /// A timestamp not newer than the last accepted one from that peer.
    Replayed,
    /// mac1 did not match.
    BadMac,
    /// The source sent too many initiations.
    RateLimited,
    /// Anything else (malformed, did not decrypt, ...).
    Other,
}

impl FailureReason {
    /// Every reason, in the order of their counters.
    pub const ALL: [FailureReason; 5] = [
        FailureReason::UnknownPeer,
        FailureReason::Replayed,
        FailureReason::BadMac,
        FailureReason::RateLimited,
        FailureReason::Other,
    ];

    /// The stable name (log field, `show` key, metrics label).
    pub fn name(self) -> &'static str {
        match self {
            FailureReason::UnknownPeer => "unknown_peer",
            FailureReason::Replayed => "replayed",
            FailureReason::BadMac => "bad_mac",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::Other => "other",
        }
    }
}

impl HandshakeError {
    /// The reason this failure is counted under.
    pub fn reason(self) -> FailureReason {
        match self {
            // No peer with this key is configured for this suite.
            HandshakeError::UnknownPeer | HandshakeError::WrongSuite => FailureReason::UnknownPeer,
            HandshakeError::Replayed => FailureReason::Replayed,
            HandshakeError::BadMac => FailureReason::BadMac,
            HandshakeError::RateLimited => FailureReason::RateLimited,
            HandshakeError::Malformed
            | HandshakeError::Decryption
            | HandshakeError::Unexpected
            | HandshakeError::BadAssignment => FailureReason::Other,
        }
    }
}

fn noise_builder() -> Builder<'static> {
    suite_builder(Suite::Native)
}

/// The Noise builder of a suite. WireGuard's construction is Noise's with the identifier as the
/// prologue: Noise hashes the 37-byte protocol name (longer than `HASHLEN`) into `h`, sets
/// `ck = h` and mixes the prologue into `h`, which is WireGuard's `C = HASH(CONSTRUCTION)`,
/// `H = HASH(C ‖ IDENTIFIER)` (whitepaper section 5.4.2); the interoperability test with
/// boringtun checks it.
fn suite_builder(suite: Suite) -> Builder<'static> {
    let (params, prologue) = match suite {
        Suite::Native => (NOISE_PARAMS, NOISE_PROLOGUE),
        Suite::WireGuard => (WG_NOISE_PARAMS, WG_IDENTIFIER),
    };
    // Both names are constants known to parse (with snow's BLAKE2s and ChaChaPoly enabled).
    Builder::new(params.parse().expect("valid Noise parameters"))
        .prologue(prologue)
        .expect("prologue set once")
}

/// Splits the finished handshake into (initiator-to-responder, responder-to-initiator) keys.
fn split(state: &mut HandshakeState) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let (a, b) = state.dangerously_get_raw_split();
    (Zeroizing::new(a), Zeroizing::new(b))
}

/// The keys an initiator needs.
#[derive(Clone, Copy)]
pub struct InitiatorKeys<'a> {
    /// Our static key.
    pub own: &'a StaticSecret,
    /// The responder's static public key.
    pub server: &'a PublicKey,
    /// The pre-shared key ([`PresharedKey::zero`] when none).
    pub psk: &'a PresharedKey,
}

/// A sent initiation waiting for its response (client side).
pub struct InitiatorHandshake {
    state: HandshakeState,
    /// The index we told the server to use for us.
    pub local_index: u32,
    /// When this initiation was sent.
    pub sent_at: Instant,
}

impl InitiatorHandshake {
    /// Writes a handshake initiation into `out` and returns the state that waits for the
    /// response. `cookies` stamps mac1 (and mac2 while it holds a fresh cookie).
    pub fn start(
        keys: InitiatorKeys<'_>,
        local_index: u32,
        timestamp: Tai64N,
        cookies: &mut CookieJar,
        now: Instant,
        out: &mut [u8; INITIATION_LEN],
    ) -> InitiatorHandshake {
        let secret = keys.own.to_bytes();
        let mut state = noise_builder()
            .local_private_key(&secret[..])
            .and_then(|b| b.remote_public_key(keys.server.as_bytes()))
            .and_then(|b| b.psk(2, keys.psk.as_bytes()))
            .and_then(|b| b.build_initiator())
            .expect("keys of the right length");
        out.fill(0);
        let mut packet = wire::Initiation::new_unchecked(&mut out[..]);
        packet.fill_header(local_index);
        // 108 bytes = 32 (e) + 48 (s) + 28 (timestamp): exactly the room in the frame.
        state
            .write_message(&timestamp.0, packet.noise_message_mut())
            .expect("frame sized for message 1");
        cookies.stamp(&mut out[..], now);
        InitiatorHandshake {
            state,
            local_index,
            sent_at: now,
        }
    }

    /// Consumes the server's response: checks its mac1 (keyed by our own public key), finishes
    /// the handshake and returns the new keypair and the address the server assigned us.
    pub fn finish(
        mut self,
        response: &[u8],
        own_mac_keys: &MacKeys,
        now: Instant,
    ) -> Result<(Keypair, AddressAssignment), HandshakeError> {
        let packet =
            wire::Response::new_checked(response).map_err(|_| HandshakeError::Malformed)?;
        if packet.receiver_index() != self.local_index {
            return Err(HandshakeError::Unexpected);
        }
        if !cookie::verify_mac1(own_mac_keys, response) {
            return Err(HandshakeError::BadMac);
        }
        let mut payload = [0u8; ASSIGNMENT_LEN + TAG_LEN];
        let n = self
            .state
            .read_message(packet.noise_message(), &mut payload)
            .map_err(|_| HandshakeError::Decryption)?;
        let assignment =
            AddressAssignment::parse(&payload[..n]).map_err(|_| HandshakeError::BadAssignment)?;
        let (send, recv) = split(&mut self.state);
        let keypair = Keypair::new(
            &send,
            &recv,
            self.local_index,
            packet.sender_index(),
            now,
            true,
        );
        Ok((keypair, assignment))
    }
}

/// An initiation whose mac1 (and mac2 when needed) checked out and which decrypted: we know
/// who claims to have sent it, but nothing is answered or stored yet.
pub struct VerifiedInitiation {
    state: HandshakeState,
    /// The suite the initiation was made for (its mac1 told).
    pub suite: Suite,
    /// The initiator's static public key (authenticated by the `ss` token).
    pub peer: PublicKey,
    /// The initiator's timestamp, to compare with the last one accepted from that peer.
    pub timestamp: Tai64N,
    /// The index the initiator wants us to use.
    pub initiator_index: u32,
}

/// What the responder made of a handshake initiation.
pub enum ResponderAction {
    /// Under load and without a valid mac2: a cookie reply was written into `out[..len]`.
    CookieReply(usize),
    /// Ready for the caller's peer lookup, then [`VerifiedInitiation::respond`].
    Verified(Box<VerifiedInitiation>),
}

/// The server's side of the handshake: its static key, cookie secrets and the under-load
/// check (its cookie-reply budget and its per-source limit for initiations with a valid mac2).
pub struct Responder {
    secret: StaticSecret,
    public: PublicKey,
    cookies: CookieChecker,
    admission: Admission<RateLimiter>,
}

impl Responder {
    /// A responder for the static key `secret`.
    pub fn new(secret: StaticSecret, now: Instant, rng: &mut impl Random) -> Self {
        let public = secret.public_key();
        Responder {
            cookies: CookieChecker::new(public.as_bytes(), now, rng),
            admission: Admission::new(RateLimiter::default()),
            secret,
            public,
        }
    }

    /// Our static public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The cookie secrets in use, for whoever answers cookie-less initiations elsewhere (the
    /// data-plane workers); a new `Arc` after each rotation.
    pub fn cookie_secrets(&self) -> &Arc<CookieSecrets> {
        self.cookies.secrets()
    }

    /// Rotates the cookie secret if it is due. Needed when others answer with the shared
    /// secrets: this responder may then see no initiation for a long time.
    pub fn rotate_cookie_secret(&mut self, now: Instant, rng: &mut impl Random) {
        self.cookies.rotate(now, rng);
    }

    /// Handles a handshake initiation from `src`.
    ///
    /// The check before any Diffie-Hellman is [`Admission::check`], the same as the
    /// data-plane workers': mac1 (a failure gets no answer); when the caller says it is
    /// `under_load`, an initiation without a valid mac2 for `src` gets a cookie reply (written
    /// to `out`) within a global budget and no Diffie-Hellman either, and only sources that
    /// prove their address with mac2 are rate limited. Over the budget or the rate:
    /// [`HandshakeError::RateLimited`].
    pub fn handle_initiation(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
        under_load: bool,
        rng: &mut impl Random,
        out: &mut [u8],
    ) -> Result<ResponderAction, HandshakeError> {
        if wire::message_type(msg) != Ok(MessageType::Initiation) {
            return Err(HandshakeError::Malformed);
        }
        if under_load {
            // A secret past its lifetime is replaced before it is read, as on every use.
            self.cookies.rotate(now, rng);
        }
        let verdict = self.admission.check(
            self.cookies.keys(),
            self.cookies.secrets(),
            msg,
            src,
            now,
            under_load,
        );
        let suite = match verdict {
            Verdict::Proceed(suite) => suite,
            Verdict::BadMac => return Err(HandshakeError::BadMac),
            Verdict::OverReplyBudget | Verdict::RateLimited => {
                return Err(HandshakeError::RateLimited)
            }
            Verdict::CookieReply(suite) => {
                let reply: &mut [u8; wire::COOKIE_REPLY_LEN] = out
                    .get_mut(..wire::COOKIE_REPLY_LEN)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(HandshakeError::Malformed)?;
                self.cookies
                    .write_cookie_reply_for(suite, msg, src, now, rng, reply);
                return Ok(ResponderAction::CookieReply(wire::COOKIE_REPLY_LEN));
            }
        };
        let packet = wire::Initiation::new_checked(msg).map_err(|_| HandshakeError::Malformed)?;
        let secret = self.secret.to_bytes();
        let mut state = suite_builder(suite)
            .local_private_key(&secret[..])
            // The peer's PSK is only known once its static key is; psk2 is mixed in after
            // message 1 is read, so a placeholder is replaced in `respond`.
            .and_then(|b| b.psk(2, &[0u8; 32]))
            .and_then(|b| b.build_responder())
            .expect("keys of the right length");
        let mut timestamp = [0u8; 12 + TAG_LEN];
        let n = state
            .read_message(packet.noise_message(), &mut timestamp)
            .map_err(|_| HandshakeError::Decryption)?;
        if n != 12 {
            return Err(HandshakeError::Malformed);
        }
        let peer_bytes: [u8; 32] = state
            .get_remote_static()
            .and_then(|s| s.try_into().ok())
            .ok_or(HandshakeError::Decryption)?;
        Ok(ResponderAction::Verified(Box::new(VerifiedInitiation {
            state,
            suite,
            peer: PublicKey::from_bytes(peer_bytes),
            timestamp: Tai64N(timestamp[..12].try_into().expect("12 bytes")),
            initiator_index: packet.sender_index(),
        })))
    }
}

impl VerifiedInitiation {
    /// Completes the handshake for a known peer: writes the response (with `assignment`
    /// encrypted inside and mac1 keyed by the peer's public key) into `out` and returns the
    /// responder's keypair, to be confirmed by the initiator's first transport packet.
    pub fn respond(
        mut self,
        psk: &PresharedKey,
        assignment: &AddressAssignment,
        local_index: u32,
        now: Instant,
        out: &mut [u8; RESPONSE_LEN],
    ) -> Result<Keypair, HandshakeError> {
        if self.suite != Suite::Native {
            return Err(HandshakeError::WrongSuite);
        }
        self.state
            .set_psk(2, psk.as_bytes())
            .map_err(|_| HandshakeError::Decryption)?;
        let mut payload = [0u8; ASSIGNMENT_LEN];
        assignment.emit(&mut payload);
        out.fill(0);
        let mut packet = wire::Response::new_unchecked(&mut out[..]);
        packet.fill_header(local_index, self.initiator_index);
        // 72 bytes = 32 (e) + 24 + 16 (assignment and tag): exactly the room in the frame.
        self.state
            .write_message(&payload, packet.noise_message_mut())
            .map_err(|_| HandshakeError::Decryption)?;
        cookie::write_mac1(&MacKeys::new(self.peer.as_bytes()), &mut out[..]);
        let (recv, send) = split(&mut self.state);
        Ok(Keypair::new(
            &send,
            &recv,
            local_index,
            self.initiator_index,
            now,
            false,
        ))
    }

    /// Completes a WireGuard handshake for a known peer: writes WireGuard's 92-byte response
    /// (empty payload, mac1 keyed by the peer's public key with keyed BLAKE2s, mac2 zero) into
    /// `out` and returns the responder's keypair (ChaCha20-Poly1305), to be confirmed by the
    /// initiator's first transport packet. WireGuard whitepaper section 5.4.3.
    pub fn respond_wireguard(
        mut self,
        psk: &PresharedKey,
        local_index: u32,
        now: Instant,
        out: &mut [u8; WG_RESPONSE_LEN],
    ) -> Result<Keypair, HandshakeError> {
        if self.suite != Suite::WireGuard {
            return Err(HandshakeError::WrongSuite);
        }
        self.state
            .set_psk(2, psk.as_bytes())
            .map_err(|_| HandshakeError::Decryption)?;
        out.fill(0);
        let mut packet = wire::WgResponse::new_unchecked(&mut out[..]);
        packet.fill_header(local_index, self.initiator_index);
        // 48 bytes = 32 (e) + 16 (the empty payload's tag): exactly the room in the frame.
        self.state
            .write_message(&[], packet.noise_message_mut())
            .map_err(|_| HandshakeError::Decryption)?;
        wg::write_mac1(&WgMacKeys::new(self.peer.as_bytes()), &mut out[..]);
        let (recv, send) = split(&mut self.state);
        Ok(Keypair::for_suite(
            Suite::WireGuard,
            &send,
            &recv,
            local_index,
            self.initiator_index,
            now,
            false,
        ))
    }
}
