//! mac1, mac2 and cookie replies (`docs/protocol.md`, "Cookie reply").
//!
//! mac1 proves the sender knows the recipient's static public key, so a responder can drop junk
//! before any Diffie-Hellman. Under load the responder also asks for mac2, keyed by a cookie
//! that only the owner of a source address and port can have received: the cookie reply.
//!
//! `MAC(key, x)` is the first 16 bytes of HMAC-SHA256; `HASH` is SHA-256.

use std::net::SocketAddr;
use std::sync::Arc;

use ring::{aead, digest, hmac};
use zeroize::Zeroizing;

use super::constants::{COOKIE_LIFETIME, COOKIE_SECRET_LIFETIME};
use super::rng::Random;
use super::suite::Suite;
use super::time::Instant;
use super::wire::{mac_offsets, verify_mac, write_mac, MacSlot};
use super::wire::{
    CookieReply, CookieReplyRepr, Initiation, WireError, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN,
    ENCRYPTED_COOKIE_LEN, MAC_LEN,
};
use super::wireguard::{self, WgMacKeys};

/// Domain separation label for the mac1 key.
const LABEL_MAC1: &[u8; 8] = b"mac1----";
/// Domain separation label for the cookie sealing key.
const LABEL_COOKIE: &[u8; 8] = b"cookie--";

/// Why a cookie reply was not accepted or could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// The message has the wrong length or header.
    #[error("malformed message: {0}")]
    Malformed(#[from] WireError),
    /// No initiation was stamped since the last accepted reply, so there is nothing a reply
    /// could answer.
    #[error("no mac1 sent that a cookie reply could answer")]
    NoPendingMac1,
    /// The sealed cookie did not open: tampered, or made for another mac1.
    #[error("cookie reply does not authenticate")]
    Open,
}

/// The mac1 and cookie keys derived from one static public key.
#[derive(Debug, Clone)]
pub struct MacKeys {
    /// HMAC key `HASH("mac1----" ‖ public)`.
    mac1: hmac::Key,
    /// `HASH("cookie--" ‖ public)`, the HMAC key that derives each reply's sealing key.
    cookie: hmac::Key,
}

impl MacKeys {
    /// Derives the keys for messages addressed to the owner of `public`.
    pub fn new(public: &[u8; 32]) -> Self {
        MacKeys {
            mac1: hmac::Key::new(hmac::HMAC_SHA256, &labelled_hash(LABEL_MAC1, public)),
            cookie: hmac::Key::new(hmac::HMAC_SHA256, &labelled_hash(LABEL_COOKIE, public)),
        }
    }

    /// `MAC(mac1 key, covered)`.
    pub fn mac1(&self, covered: &[u8]) -> [u8; MAC_LEN] {
        truncate(hmac::sign(&self.mac1, covered))
    }

    /// The one-use AES-256-GCM key that seals the cookie of a reply with this `nonce`.
    fn sealing_key(&self, nonce: &[u8; COOKIE_NONCE_LEN]) -> aead::LessSafeKey {
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(hmac::sign(&self.cookie, nonce).as_ref());
        // AES-256 takes any 32-byte key and HMAC-SHA256 gives exactly 32 bytes.
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, k.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC-SHA256 output is an AES-256 key"));
        aead::LessSafeKey::new(unbound)
    }
}

/// The server's mac keys for both suites, derived from its one static public key: an
/// initiation is of the suite whose mac1 verifies.
#[derive(Debug, Clone)]
pub struct ServerMacKeys {
    /// The native suite's (HMAC-SHA256).
    pub native: MacKeys,
    /// The WireGuard suite's (keyed BLAKE2s).
    pub wireguard: WgMacKeys,
}

impl ServerMacKeys {
    /// Derives both suites' keys for messages addressed to the owner of `public`.
    pub fn new(public: &[u8; 32]) -> Self {
        ServerMacKeys {
            native: MacKeys::new(public),
            wireguard: WgMacKeys::new(public),
        }
    }

    /// The suite whose mac1 a full initiation carries: native first (its clients are checked
    /// at the cost of one HMAC, as before), then WireGuard; `None` when neither verifies.
    pub fn suite_of(&self, msg: &[u8]) -> Option<Suite> {
        if verify_mac1(&self.native, msg) {
            Some(Suite::Native)
        } else if wireguard::verify_mac1(&self.wireguard, msg) {
            Some(Suite::WireGuard)
        } else {
            None
        }
    }
}

/// `HASH(label ‖ public)`.
fn labelled_hash(label: &[u8; 8], public: &[u8; 32]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(label);
    ctx.update(public);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The first 16 bytes of an HMAC-SHA256 tag.
fn truncate(tag: hmac::Tag) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    out
}

/// Writes mac1 into a full initiation or response: it sits at `len-32..len-16` and covers
/// `0..len-32`. Does nothing to a buffer shorter than 32 bytes.
pub fn write_mac1(keys: &MacKeys, msg: &mut [u8]) {
    write_mac(msg, MacSlot::Mac1, |covered| keys.mac1(covered));
}

/// Whether mac1 of a full initiation or response is valid under `keys` (false if too short).
pub fn verify_mac1(keys: &MacKeys, msg: &[u8]) -> bool {
    verify_mac(msg, MacSlot::Mac1, |covered| keys.mac1(covered))
}

/// `MAC(cookie, covered)`.
fn mac2_of(cookie: &[u8; MAC_LEN], covered: &[u8]) -> [u8; MAC_LEN] {
    truncate(hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, cookie),
        covered,
    ))
}

/// Writes mac2 (the last 16 bytes, covering everything before them) of a full initiation or
/// response. Does nothing to a buffer shorter than 32 bytes.
pub fn write_mac2(cookie: &[u8; MAC_LEN], msg: &mut [u8]) {
    write_mac(msg, MacSlot::Mac2, |covered| mac2_of(cookie, covered));
}

/// Zeroes mac2, as the spec asks of a sender without a cookie.
pub fn clear_mac2(msg: &mut [u8]) {
    if let Some((_, at)) = mac_offsets(msg.len()) {
        msg[at..].fill(0);
    }
}

/// Whether mac2 of a full message is valid under `cookie` (false if too short).
pub fn verify_mac2(cookie: &[u8; MAC_LEN], msg: &[u8]) -> bool {
    verify_mac(msg, MacSlot::Mac2, |covered| mac2_of(cookie, covered))
}

/// The cookie secrets R of one period: the current one and, after an on-time replacement, the
/// previous one. Immutable: a rotation makes a new set, so the data-plane workers can share it
/// behind an `Arc` and answer cookie-less initiations themselves, without the control thread.
pub struct CookieSecrets {
    current: hmac::Key,
    previous: Option<hmac::Key>,
    /// The WireGuard suite's secrets (keys of its BLAKE2s MAC), replaced with the native ones.
    wg_current: Zeroizing<[u8; 32]>,
    wg_previous: Option<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for CookieSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("CookieSecrets")
            .field("has_previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl CookieSecrets {
    fn new(rng: &mut impl Random, previous: Option<(hmac::Key, Zeroizing<[u8; 32]>)>) -> Self {
        let mut fresh = Zeroizing::new([0u8; 32]);
        rng.fill(fresh.as_mut());
        let mut wg_current = Zeroizing::new([0u8; 32]);
        rng.fill(wg_current.as_mut());
        let (previous, wg_previous) = match previous {
            Some((native, wg)) => (Some(native), Some(wg)),
            None => (None, None),
        };
        CookieSecrets {
            current: hmac::Key::new(hmac::HMAC_SHA256, fresh.as_ref()),
            previous,
            wg_current,
            wg_previous,
        }
    }

    /// Whether mac2 of an initiation of `suite` is valid under a cookie for `src` made with the
    /// current or previous secret.
    pub fn check_mac2_for(&self, suite: Suite, msg: &[u8], src: SocketAddr) -> bool {
        match suite {
            Suite::Native => self.check_mac2(msg, src),
            Suite::WireGuard => {
                wireguard::verify_mac2(&wireguard::cookie_for(&self.wg_current, src), msg)
                    || self.wg_previous.as_ref().is_some_and(|previous| {
                        wireguard::verify_mac2(&wireguard::cookie_for(previous, src), msg)
                    })
            }
        }
    }

    /// Writes the cookie reply to an initiation of `suite` (see
    /// [`CookieSecrets::write_cookie_reply`]; the WireGuard one seals with XChaCha20-Poly1305).
    pub fn write_cookie_reply_for(
        &self,
        suite: Suite,
        keys: &ServerMacKeys,
        initiation: &[u8],
        src: SocketAddr,
        rng: &mut impl Random,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        match suite {
            Suite::Native => self.write_cookie_reply(&keys.native, initiation, src, rng, out),
            Suite::WireGuard => {
                let Ok(initiation) = Initiation::new_checked(initiation) else {
                    out.fill(0);
                    return;
                };
                let cookie = wireguard::cookie_for(&self.wg_current, src);
                let mac1 = *initiation.mac1();
                let mut reply = CookieReply::new_unchecked(&mut out[..]);
                reply.fill_header(initiation.sender_index());
                rng.fill(reply.nonce_mut());
                let nonce = *reply.nonce();
                *reply.encrypted_cookie_mut() =
                    wireguard::seal_cookie(&keys.wireguard, &nonce, &cookie, &mac1);
            }
        }
    }

    /// Whether mac2 is valid under a cookie for `src` made with the current or previous secret.
    pub fn check_mac2(&self, msg: &[u8], src: SocketAddr) -> bool {
        verify_mac2(&cookie_with(&self.current, src), msg)
            || self
                .previous
                .as_ref()
                .is_some_and(|previous| verify_mac2(&cookie_with(previous, src), msg))
    }

    /// Writes the cookie reply to `initiation` (a full initiation, whose header the caller has
    /// checked) received from `src`, sealed with the mac keys `keys` of the responder. If
    /// `initiation` is not [`INITIATION_LEN`] bytes long there is nothing to answer: `out` is
    /// zeroed, which every receiver drops as type 0. `rng` only makes the reply's nonce, which
    /// must never repeat but need not come from the operating system.
    ///
    /// [`INITIATION_LEN`]: super::wire::INITIATION_LEN
    pub fn write_cookie_reply(
        &self,
        keys: &MacKeys,
        initiation: &[u8],
        src: SocketAddr,
        rng: &mut impl Random,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        let Ok(initiation) = Initiation::new_checked(initiation) else {
            out.fill(0);
            return;
        };
        let cookie = cookie_with(&self.current, src);
        let mac1 = *initiation.mac1();
        let sender = initiation.sender_index();
        let mut reply = CookieReply::new_unchecked(&mut out[..]);
        reply.fill_header(sender);
        rng.fill(reply.nonce_mut());
        let nonce = *reply.nonce();
        *reply.encrypted_cookie_mut() = seal_cookie(keys, &nonce, &cookie, &mac1);
    }
}

/// The responder's side: checks mac1 and mac2 and writes cookie replies.
///
/// The secret R is replaced every [`COOKIE_SECRET_LIFETIME`], when next used or by
/// [`CookieChecker::rotate`]; cookies made under the previous secret stay valid until the next
/// replacement, so a client that just got a cookie is not refused at a rotation.
pub struct CookieChecker {
    keys: ServerMacKeys,
    secrets: Arc<CookieSecrets>,
    born: Instant,
}

impl std::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("CookieChecker")
            .field("born", &self.born)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl CookieChecker {
    /// A checker for messages addressed to `own_public`, with a fresh secret born `now`.
    pub fn new(own_public: &[u8; 32], now: Instant, rng: &mut impl Random) -> Self {
        CookieChecker {
            keys: ServerMacKeys::new(own_public),
            secrets: Arc::new(CookieSecrets::new(rng, None)),
            born: now,
        }
    }

    /// The mac1 keys of this responder, for both suites.
    pub fn keys(&self) -> &ServerMacKeys {
        &self.keys
    }

    /// The secrets in use; a new `Arc` after each rotation.
    pub fn secrets(&self) -> &Arc<CookieSecrets> {
        &self.secrets
    }

    /// Whether mac1 is valid: the sender knows our public key.
    pub fn check_mac1(&self, msg: &[u8]) -> bool {
        verify_mac1(&self.keys.native, msg)
    }

    /// Whether mac2 is valid under a cookie for `src` made with the current or previous secret.
    pub fn check_mac2(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
        rng: &mut impl Random,
    ) -> bool {
        self.rotate(now, rng);
        self.secrets.check_mac2(msg, src)
    }

    /// Writes the cookie reply to `initiation` received from `src` (see
    /// [`CookieSecrets::write_cookie_reply`]).
    pub fn write_cookie_reply(
        &mut self,
        initiation: &[u8],
        src: SocketAddr,
        now: Instant,
        rng: &mut impl Random,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        self.write_cookie_reply_for(Suite::Native, initiation, src, now, rng, out);
    }

    /// Writes the cookie reply to an initiation of `suite` (see
    /// [`CookieSecrets::write_cookie_reply_for`]).
    pub fn write_cookie_reply_for(
        &mut self,
        suite: Suite,
        initiation: &[u8],
        src: SocketAddr,
        now: Instant,
        rng: &mut impl Random,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        self.rotate(now, rng);
        self.secrets
            .write_cookie_reply_for(suite, &self.keys, initiation, src, rng, out);
    }

    /// Replaces the secret once it is [`COOKIE_SECRET_LIFETIME`] old. The old one is kept as
    /// `previous` only if it was replaced on time: after a long idle spell, cookies made from it
    /// are older than any client keeps them. Whoever shares the secrets must call this
    /// regularly (the workers only read them).
    pub fn rotate(&mut self, now: Instant, rng: &mut impl Random) {
        let age = now.saturating_duration_since(self.born);
        if age < COOKIE_SECRET_LIFETIME {
            return;
        }
        let previous = (age < 2 * COOKIE_SECRET_LIFETIME).then(|| {
            (
                self.secrets.current.clone(),
                self.secrets.wg_current.clone(),
            )
        });
        self.secrets = Arc::new(CookieSecrets::new(rng, previous));
        self.born = now;
    }
}

/// cookie = MAC(R, source IP address bytes ‖ source UDP port, big-endian). IPv4-mapped IPv6
/// addresses count as IPv4, so a dual-stack socket gives the same cookie as an IPv4 one.
fn cookie_with(secret: &hmac::Key, src: SocketAddr) -> Zeroizing<[u8; MAC_LEN]> {
    let mut ctx = hmac::Context::with_key(secret);
    match src.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => ctx.update(&ip.octets()),
        std::net::IpAddr::V6(ip) => ctx.update(&ip.octets()),
    }
    ctx.update(&src.port().to_be_bytes());
    Zeroizing::new(truncate(ctx.sign()))
}

/// Seals a cookie: AES-256-GCM under the reply's one-use key, all-zero nonce, AAD = mac1.
fn seal_cookie(
    keys: &MacKeys,
    nonce: &[u8; COOKIE_NONCE_LEN],
    cookie: &[u8; MAC_LEN],
    mac1: &[u8; MAC_LEN],
) -> [u8; ENCRYPTED_COOKIE_LEN] {
    let mut out = [0u8; ENCRYPTED_COOKIE_LEN];
    let (text, tag_out) = out.split_at_mut(MAC_LEN);
    text.copy_from_slice(cookie);
    // The zero nonce is safe: the key is fresh for each random reply nonce.
    let tag = keys
        .sealing_key(nonce)
        .seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::from(mac1),
            text,
        )
        .unwrap_or_else(|_| unreachable!("AES-GCM seals 16 bytes"));
    tag_out.copy_from_slice(tag.as_ref());
    out
}

/// Opens a sealed cookie, or `None` if it does not authenticate under `mac1`.
fn open_cookie(
    keys: &MacKeys,
    nonce: &[u8; COOKIE_NONCE_LEN],
    sealed: &[u8; ENCRYPTED_COOKIE_LEN],
    mac1: &[u8; MAC_LEN],
) -> Option<Zeroizing<[u8; MAC_LEN]>> {
    let mut buf = Zeroizing::new(*sealed);
    let plain = keys
        .sealing_key(nonce)
        .open_in_place(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::from(mac1),
            buf.as_mut(),
        )
        .ok()?;
    let mut cookie = Zeroizing::new([0u8; MAC_LEN]);
    cookie.copy_from_slice(plain);
    Some(cookie)
}

/// The initiator's side: stamps mac1/mac2 on its initiations and keeps the server's cookie.
pub struct CookieJar {
    keys: MacKeys,
    cookie: Option<(Zeroizing<[u8; MAC_LEN]>, Instant)>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the cookie.
        f.debug_struct("CookieJar")
            .field("cookie_received", &self.cookie.as_ref().map(|(_, at)| *at))
            .field("mac1_pending", &self.last_mac1.is_some())
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// A jar for messages to the server whose static public key is `server_public`.
    pub fn new(server_public: &[u8; 32]) -> Self {
        CookieJar {
            keys: MacKeys::new(server_public),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Whether a cookie younger than [`COOKIE_LIFETIME`] is held.
    pub fn has_cookie(&self, now: Instant) -> bool {
        self.fresh_cookie(now).is_some()
    }

    fn fresh_cookie(&self, now: Instant) -> Option<&[u8; MAC_LEN]> {
        match &self.cookie {
            Some((cookie, at)) if now.saturating_duration_since(*at) < COOKIE_LIFETIME => {
                Some(cookie)
            }
            _ => None,
        }
    }

    /// Writes mac1, and mac2 while the cookie is fresh (zeros otherwise), into a full outgoing
    /// message, and remembers mac1 for the cookie reply that may answer it. Does nothing to a
    /// buffer shorter than 32 bytes.
    pub fn stamp(&mut self, msg: &mut [u8], now: Instant) {
        let Some((at, end)) = mac_offsets(msg.len()) else {
            return;
        };
        write_mac1(&self.keys, msg);
        let mut mac1 = [0u8; MAC_LEN];
        mac1.copy_from_slice(&msg[at..end]);
        self.last_mac1 = Some(mac1);
        match self.fresh_cookie(now) {
            Some(cookie) => write_mac2(cookie, msg),
            None => {
                self.cookie = None;
                clear_mac2(msg);
            }
        }
    }

    /// Opens a cookie reply to the last stamped message and keeps its cookie. A reply is used
    /// at most once: after success, another reply needs another stamped message.
    pub fn accept_cookie_reply(&mut self, reply: &[u8], now: Instant) -> Result<(), CookieError> {
        let repr = CookieReplyRepr::parse(&CookieReply::new_checked(reply)?)?;
        let mac1 = self.last_mac1.as_ref().ok_or(CookieError::NoPendingMac1)?;
        let cookie = open_cookie(&self.keys, &repr.nonce, &repr.encrypted_cookie, mac1)
            .ok_or(CookieError::Open)?;
        self.cookie = Some((cookie, now));
        self.last_mac1 = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rng::SeededRandom;
    use crate::proto::wire::{ct_eq, INITIATION_LEN, RESPONSE_LEN};

    const SERVER_PUB: [u8; 32] = [7; 32];

    fn pub_0_to_31() -> [u8; 32] {
        core::array::from_fn(|i| i as u8)
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn initiation(seed: u8) -> [u8; INITIATION_LEN] {
        let mut m = [0u8; INITIATION_LEN];
        m[0] = 1;
        for (i, x) in m[4..116].iter_mut().enumerate() {
            *x = seed.wrapping_add(i as u8);
        }
        m
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Instant {
        Instant::from_nanos(s * 1_000_000_000)
    }

    /// Known answers computed with Python's hashlib/hmac and `cryptography` (AESGCM).
    #[test]
    fn mac1_known_answer() {
        let keys = MacKeys::new(&pub_0_to_31());
        let mut msg = [0u8; INITIATION_LEN];
        msg[0] = 1;
        for (i, x) in msg.iter_mut().enumerate().take(116).skip(4) {
            *x = (i * 7) as u8;
        }
        write_mac1(&keys, &mut msg);
        assert_eq!(msg[116..132], hex("1ead463512c8c56dc0518eacfc8d9afe")[..]);
        assert!(verify_mac1(&keys, &msg));
    }

    #[test]
    fn cookie_sealing_known_answer() {
        let keys = MacKeys::new(&pub_0_to_31());
        let nonce: [u8; 24] = core::array::from_fn(|i| 0x40 + i as u8);
        let cookie: [u8; 16] = core::array::from_fn(|i| 0xc0 + i as u8);
        let sealed = seal_cookie(&keys, &nonce, &cookie, &[0x11; 16]);
        assert_eq!(
            sealed[..],
            hex("9a70be5867cc41dd1ef0239271b355e46adac8eade08b0626de1d6f122171e35")[..]
        );
        assert_eq!(
            *open_cookie(&keys, &nonce, &sealed, &[0x11; 16]).unwrap(),
            cookie
        );
        assert!(open_cookie(&keys, &nonce, &sealed, &[0x12; 16]).is_none());
    }

    #[test]
    fn cookie_value_known_answer() {
        let cookie_for =
            |secret: &[u8; 32], src| cookie_with(&hmac::Key::new(hmac::HMAC_SHA256, secret), src);
        let cookie = cookie_for(&[0x22; 32], addr("192.0.2.1:51820"));
        assert_eq!(cookie[..], hex("7078ddbb792b4947089ed818b9c4025b")[..]);
        // The same peer seen through a dual-stack socket gets the same cookie.
        let mapped = cookie_for(&[0x22; 32], addr("[::ffff:192.0.2.1]:51820"));
        assert_eq!(*cookie, *mapped);
    }

    #[test]
    fn mac1_round_trips_on_both_handshake_messages() {
        let keys = MacKeys::new(&SERVER_PUB);
        let mut init = initiation(3);
        write_mac1(&keys, &mut init);
        assert!(verify_mac1(&keys, &init));
        let mut resp = [9u8; RESPONSE_LEN];
        write_mac1(&keys, &mut resp);
        assert!(verify_mac1(&keys, &resp));
        assert!(!verify_mac1(&MacKeys::new(&[8; 32]), &resp));
    }

    #[test]
    fn any_tampered_byte_before_mac2_fails_mac1() {
        let keys = MacKeys::new(&SERVER_PUB);
        let mut msg = initiation(0);
        write_mac1(&keys, &mut msg);
        for i in 0..132 {
            let mut t = msg;
            t[i] ^= 0x01;
            assert!(!verify_mac1(&keys, &t), "byte {i}");
        }
        // mac2 is outside mac1's coverage.
        let mut t = msg;
        t[140] ^= 0xff;
        assert!(verify_mac1(&keys, &t));
    }

    #[test]
    fn mac2_round_trip_and_clear() {
        let cookie = [5u8; 16];
        let mut msg = initiation(1);
        write_mac2(&cookie, &mut msg);
        assert!(verify_mac2(&cookie, &msg));
        assert!(!verify_mac2(&[6; 16], &msg));
        msg[0] ^= 1;
        assert!(!verify_mac2(&cookie, &msg));
        clear_mac2(&mut msg);
        assert_eq!(msg[132..], [0; 16]);
    }

    #[test]
    fn truncated_inputs_never_panic() {
        let keys = MacKeys::new(&SERVER_PUB);
        let mut rng = SeededRandom(1);
        let mut checker = CookieChecker::new(&SERVER_PUB, secs(0), &mut rng);
        let mut jar = CookieJar::new(&SERVER_PUB);
        let src = addr("192.0.2.1:1000");
        let mut out = [0u8; 64];
        for len in 0..=200 {
            let mut buf = vec![1u8; len];
            write_mac1(&keys, &mut buf);
            write_mac2(&[0; 16], &mut buf);
            clear_mac2(&mut buf);
            jar.stamp(&mut buf, secs(0));
            let short = len < 32;
            assert!(!verify_mac1(&keys, &buf) || !short);
            assert!(!checker.check_mac1(&buf) || !short);
            assert!(!checker.check_mac2(&buf, src, secs(0), &mut rng) || !short);
            checker.write_cookie_reply(&buf, src, secs(0), &mut rng, &mut out);
            assert_eq!(out[0] == 3, len == INITIATION_LEN);
            let _ = jar.accept_cookie_reply(&buf, secs(0));
        }
    }

    /// The whole exchange: no cookie, cookie reply, then a valid mac2.
    #[test]
    fn cookie_flow() {
        let mut rng = SeededRandom(42);
        let mut checker = CookieChecker::new(&SERVER_PUB, secs(0), &mut rng);
        let mut jar = CookieJar::new(&SERVER_PUB);
        let src = addr("198.51.100.7:40000");

        let mut first = initiation(1);
        jar.stamp(&mut first, secs(1));
        assert!(checker.check_mac1(&first));
        assert_eq!(first[132..], [0; 16]);
        assert!(!checker.check_mac2(&first, src, secs(1), &mut rng));

        let mut reply = [0u8; 64];
        checker.write_cookie_reply(&first, src, secs(1), &mut rng, &mut reply);
        assert_eq!(reply[..8], [3, 0, 0, 0, 1, 2, 3, 4]); // sender index of `first`
        jar.accept_cookie_reply(&reply, secs(1)).unwrap();
        assert!(jar.has_cookie(secs(1)));

        let mut second = initiation(2);
        jar.stamp(&mut second, secs(2));
        assert!(checker.check_mac1(&second));
        assert_ne!(second[132..], [0; 16]);
        assert!(checker.check_mac2(&second, src, secs(2), &mut rng));
    }

    /// A jar holding a cookie for `src` under the checker's current secret, and the checker.
    fn cookie_for_src(src: SocketAddr, now: Instant) -> (CookieChecker, CookieJar, SeededRandom) {
        let mut rng = SeededRandom(7);
        let mut checker = CookieChecker::new(&SERVER_PUB, now, &mut rng);
        let mut jar = CookieJar::new(&SERVER_PUB);
        let mut m = initiation(9);
        jar.stamp(&mut m, now);
        let mut reply = [0u8; 64];
        checker.write_cookie_reply(&m, src, now, &mut rng, &mut reply);
        jar.accept_cookie_reply(&reply, now).unwrap();
        (checker, jar, rng)
    }

    #[test]
    fn mac2_only_valid_from_same_address_and_port() {
        let src = addr("198.51.100.7:40000");
        let (mut checker, mut jar, mut rng) = cookie_for_src(src, secs(0));
        let mut m = initiation(4);
        jar.stamp(&mut m, secs(1));
        assert!(checker.check_mac2(&m, src, secs(1), &mut rng));
        for other in [
            "198.51.100.7:40001",
            "198.51.100.8:40000",
            "[2001:db8::1]:40000",
        ] {
            assert!(
                !checker.check_mac2(&m, addr(other), secs(1), &mut rng),
                "{other}"
            );
        }
    }

    #[test]
    fn ipv6_sources_work() {
        let src = addr("[2001:db8::5]:443");
        let (mut checker, mut jar, mut rng) = cookie_for_src(src, secs(0));
        let mut m = initiation(4);
        jar.stamp(&mut m, secs(1));
        assert!(checker.check_mac2(&m, src, secs(1), &mut rng));
        assert!(!checker.check_mac2(&m, addr("[2001:db8::6]:443"), secs(1), &mut rng));
    }

    #[test]
    fn previous_secret_accepted_after_one_rotation_not_two() {
        let src = addr("192.0.2.9:5000");
        let (mut checker, mut jar, mut rng) = cookie_for_src(src, secs(0));
        let mut m = initiation(4);
        jar.stamp(&mut m, secs(100));
        // First rotation at 130 s: the cookie's secret becomes the previous one.
        assert!(checker.check_mac2(&m, src, secs(130), &mut rng));
        // Second rotation at 260 s: it is gone.
        assert!(!checker.check_mac2(&m, src, secs(260), &mut rng));
    }

    #[test]
    fn shared_secrets_answer_as_the_checker_checks_across_a_rotation() {
        // A worker answers with a copy of the secrets taken before the checker rotates.
        let mut rng = SeededRandom(11);
        let mut checker = CookieChecker::new(&SERVER_PUB, secs(0), &mut rng);
        let shared = checker.secrets().clone();
        let mut nonces = crate::proto::rng::PrfRandom::new(&mut rng);
        let src = addr("203.0.113.4:7000");
        let cookie_from_worker =
            |jar: &mut CookieJar, nonces: &mut crate::proto::rng::PrfRandom| {
                let mut m = initiation(1);
                jar.stamp(&mut m, secs(100));
                let mut reply = [0u8; 64];
                shared.write_cookie_reply(&MacKeys::new(&SERVER_PUB), &m, src, nonces, &mut reply);
                jar.accept_cookie_reply(&reply, secs(100)).unwrap();
                let mut retry = initiation(2);
                jar.stamp(&mut retry, secs(100));
                retry
            };
        let mut jar = CookieJar::new(&SERVER_PUB);
        let retry = cookie_from_worker(&mut jar, &mut nonces);
        assert!(checker.check_mac2(&retry, src, secs(100), &mut rng));
        assert!(!checker.check_mac2(&retry, addr("203.0.113.5:7000"), secs(100), &mut rng));
        // Rotated once (the worker's copy is now the previous secret): still accepted.
        checker.rotate(secs(130), &mut rng);
        assert!(!Arc::ptr_eq(&shared, checker.secrets()));
        assert!(checker.check_mac2(&retry, src, secs(130), &mut rng));
        // Rotated twice: refused; a worker must have been handed the new secrets by then.
        checker.rotate(secs(250), &mut rng);
        assert!(!checker.check_mac2(&retry, src, secs(250), &mut rng));
    }

    #[test]
    fn previous_secret_dropped_after_long_idle() {
        let src = addr("192.0.2.9:5000");
        let (mut checker, mut jar, mut rng) = cookie_for_src(src, secs(0));
        let mut m = initiation(4);
        jar.stamp(&mut m, secs(100));
        // No use for more than two lifetimes: the old secret is not kept as previous.
        assert!(!checker.check_mac2(&m, src, secs(241), &mut rng));
    }

    #[test]
    fn no_rotation_before_lifetime() {
        let src = addr("192.0.2.9:5000");
        let (mut checker, mut jar, mut rng) = cookie_for_src(src, secs(0));
        let mut m = initiation(4);
        jar.stamp(&mut m, secs(119));
        assert!(checker.check_mac2(&m, src, secs(119), &mut rng));
        assert!(checker.secrets.previous.is_none());
        assert_eq!(checker.born, secs(0));
    }

    #[test]
    fn jar_stops_using_an_expired_cookie() {
        let src = addr("192.0.2.9:5000");
        let (_, mut jar, _) = cookie_for_src(src, secs(10));
        let expiry = secs(10) + COOKIE_LIFETIME;
        assert!(jar.has_cookie(Instant::from_nanos(expiry.as_nanos() - 1)));
        let mut m = initiation(4);
        jar.stamp(&mut m, expiry);
        assert_eq!(m[132..], [0; 16]);
        assert!(!jar.has_cookie(secs(10)));
    }

    #[test]
    fn reply_for_another_mac1_is_rejected() {
        let mut rng = SeededRandom(3);
        let mut checker = CookieChecker::new(&SERVER_PUB, secs(0), &mut rng);
        let mut jar = CookieJar::new(&SERVER_PUB);
        let src = addr("192.0.2.1:1");

        // A reply made for an initiation the jar did not send (another mac1).
        let mut foreign = initiation(50);
        write_mac1(&checker.keys().native, &mut foreign);
        let mut reply = [0u8; 64];
        checker.write_cookie_reply(&foreign, src, secs(0), &mut rng, &mut reply);
        assert_eq!(
            jar.accept_cookie_reply(&reply, secs(0)),
            Err(CookieError::NoPendingMac1)
        );
        let mut mine = initiation(51);
        jar.stamp(&mut mine, secs(0));
        assert_eq!(
            jar.accept_cookie_reply(&reply, secs(0)),
            Err(CookieError::Open)
        );
        assert!(!jar.has_cookie(secs(0)));
    }

    #[test]
    fn reply_is_used_once() {
        let mut rng = SeededRandom(3);
        let mut checker = CookieChecker::new(&SERVER_PUB, secs(0), &mut rng);
        let mut jar = CookieJar::new(&SERVER_PUB);
        let mut m = initiation(1);
        jar.stamp(&mut m, secs(0));
        let mut reply = [0u8; 64];
        checker.write_cookie_reply(&m, addr("192.0.2.1:1"), secs(0), &mut rng, &mut reply);
        assert_eq!(jar.accept_cookie_reply(&reply, secs(0)), Ok(()));
        assert_eq!(
            jar.accept_cookie_reply(&reply, secs(0)),
            Err(CookieError::NoPendingMac1)
        );
    }

    #[test]
    fn tampered_reply_is_rejected() {
        let mut rng = SeededRandom(3);
        let mut checker = CookieChecker::new(&SERVER_PUB, secs(0), &mut rng);
        let mut m = initiation(1);
        let mut jar = CookieJar::new(&SERVER_PUB);
        jar.stamp(&mut m, secs(0));
        let mut reply = [0u8; 64];
        checker.write_cookie_reply(&m, addr("192.0.2.1:1"), secs(0), &mut rng, &mut reply);
        for i in 8..64 {
            let mut t = reply;
            t[i] ^= 0x80;
            assert_eq!(
                jar.accept_cookie_reply(&t, secs(0)),
                Err(CookieError::Open),
                "byte {i}"
            );
        }
        let mut t = reply;
        t[1] = 1;
        assert_eq!(
            jar.accept_cookie_reply(&t, secs(0)),
            Err(CookieError::Malformed(WireError::ReservedNotZero))
        );
        // A reply sealed for another server's public key does not open either.
        let mut other = CookieChecker::new(&[1; 32], secs(0), &mut rng);
        other.write_cookie_reply(&m, addr("192.0.2.1:1"), secs(0), &mut rng, &mut reply);
        assert_eq!(
            jar.accept_cookie_reply(&reply, secs(0)),
            Err(CookieError::Open)
        );
    }

    #[test]
    fn replies_use_fresh_nonces() {
        let mut rng = SeededRandom(3);
        let mut checker = CookieChecker::new(&SERVER_PUB, secs(0), &mut rng);
        let m = initiation(1);
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        let src = addr("192.0.2.1:1");
        checker.write_cookie_reply(&m, src, secs(0), &mut rng, &mut a);
        checker.write_cookie_reply(&m, src, secs(0), &mut rng, &mut b);
        assert_ne!(a[8..32], b[8..32]);
        assert_ne!(a[32..], b[32..]);
    }

    #[test]
    fn ct_eq_compares_lengths_and_bytes() {
        assert!(ct_eq(&[1, 2], &[1, 2]));
        assert!(!ct_eq(&[1, 2], &[1, 3]));
        assert!(!ct_eq(&[1, 2], &[1, 2, 3]));
        assert!(ct_eq(&[], &[]));
    }
}
