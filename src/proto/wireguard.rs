//! The WireGuard suite's message authentication: mac1 and mac2 with keyed BLAKE2s-128, its
//! cookies and its XChaCha20-Poly1305 cookie replies (WireGuard whitepaper section 5.4.4 and
//! 5.4.7; wireguard-go `device/cookie.go`; the kernel's `drivers/net/wireguard/cookie.c`).
//!
//! The layout is the native suite's (`super::cookie`): mac1 and mac2 are the last 32 bytes of
//! an initiation or response, a cookie reply is 64 bytes; only the primitives differ. Its
//! handshake is Noise with other parameters (`super::handshake`), its transport a keypair of
//! the WireGuard suite (`super::keypair`).

use std::net::{IpAddr, SocketAddr};

use blake2::digest::consts::U16;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::XChaCha20Poly1305;
use zeroize::Zeroizing;

use super::wire::{
    verify_mac, write_mac, MacSlot, COOKIE_NONCE_LEN, ENCRYPTED_COOKIE_LEN, MAC_LEN, TAG_LEN,
};

/// Domain separation label of the mac1 key. WireGuard whitepaper section 5.4.4 (`LABEL-MAC1`);
/// wireguard-go `device/noise-protocol.go` `WGLabelMAC1`.
pub const LABEL_MAC1: &[u8; 8] = b"mac1----";
/// Domain separation label of the cookie key. WireGuard whitepaper section 5.4.4
/// (`LABEL-COOKIE`); wireguard-go `device/noise-protocol.go` `WGLabelCookie`.
pub const LABEL_COOKIE: &[u8; 8] = b"cookie--";

/// `HASH(label ‖ public)`: BLAKE2s-256 (whitepaper section 5.4, `HASH`).
fn labelled_hash(label: &[u8; 8], public: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut hash = Blake2s256::new();
    hash.update(label);
    hash.update(public);
    Zeroizing::new(hash.finalize().into())
}

/// `MAC(key, parts)`: keyed BLAKE2s with a 16-byte output (whitepaper section 5.4, `MAC`).
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    // Keys are 16 or 32 bytes, both within BLAKE2s's 1..=32.
    let mut state = <Blake2sMac<U16> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("BLAKE2s takes keys of 1 to 32 bytes"));
    for part in parts {
        state.update(part);
    }
    state.finalize().into_bytes().into()
}

/// The mac1 and cookie keys derived from one static public key.
#[derive(Clone)]
pub struct WgMacKeys {
    /// `HASH("mac1----" ‖ public)`.
    mac1: Zeroizing<[u8; 32]>,
    /// `HASH("cookie--" ‖ public)`, the XChaCha20-Poly1305 key of cookie replies.
    cookie: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for WgMacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Derived from a public key only, but no reason to print them.
        f.debug_struct("WgMacKeys").finish_non_exhaustive()
    }
}

impl WgMacKeys {
    /// Derives the keys for messages addressed to the owner of `public`.
    pub fn new(public: &[u8; 32]) -> Self {
        WgMacKeys {
            mac1: labelled_hash(LABEL_MAC1, public),
            cookie: labelled_hash(LABEL_COOKIE, public),
        }
    }

    /// `MAC(HASH("mac1----" ‖ public), covered)`.
    pub fn mac1(&self, covered: &[u8]) -> [u8; MAC_LEN] {
        mac(self.mac1.as_ref(), &[covered])
    }
}

/// Writes mac1 into a full initiation or response (at `len-32..len-16`, covering `0..len-32`).
/// Does nothing to a buffer shorter than 32 bytes.
pub fn write_mac1(keys: &WgMacKeys, msg: &mut [u8]) {
    write_mac(msg, MacSlot::Mac1, |covered| keys.mac1(covered));
}

/// Whether mac1 of a full initiation or response is valid under `keys` (false if too short).
pub fn verify_mac1(keys: &WgMacKeys, msg: &[u8]) -> bool {
    verify_mac(msg, MacSlot::Mac1, |covered| keys.mac1(covered))
}

/// Writes mac2 = `MAC(cookie, everything before mac2)` into a full message.
pub fn write_mac2(cookie: &[u8; MAC_LEN], msg: &mut [u8]) {
    write_mac(msg, MacSlot::Mac2, |covered| mac(cookie, &[covered]));
}

/// Whether mac2 of a full message is valid under `cookie` (false if too short).
pub fn verify_mac2(cookie: &[u8; MAC_LEN], msg: &[u8]) -> bool {
    verify_mac(msg, MacSlot::Mac2, |covered| mac(cookie, &[covered]))
}

/// The cookie of `src`: `MAC(R, source IP address bytes ‖ source UDP port)` (whitepaper
/// section 5.4.7), the port big-endian as the kernel hashes it (`cookie.c` `make_cookie`; the
/// value only needs to be the same each time this server computes it). IPv4-mapped IPv6
/// addresses count as IPv4.
pub fn cookie_for(secret: &[u8; 32], src: SocketAddr) -> Zeroizing<[u8; MAC_LEN]> {
    let port = src.port().to_be_bytes();
    Zeroizing::new(match src.ip().to_canonical() {
        IpAddr::V4(ip) => mac(secret, &[&ip.octets(), &port]),
        IpAddr::V6(ip) => mac(secret, &[&ip.octets(), &port]),
    })
}

/// Seals a cookie: `XAEAD(HASH("cookie--" ‖ public), nonce, cookie, mac1)` (whitepaper
/// section 5.4.7; XChaCha20-Poly1305 with the reply's random 24-byte nonce).
pub fn seal_cookie(
    keys: &WgMacKeys,
    nonce: &[u8; COOKIE_NONCE_LEN],
    cookie: &[u8; MAC_LEN],
    mac1: &[u8; MAC_LEN],
) -> [u8; ENCRYPTED_COOKIE_LEN] {
    let mut out = [0u8; ENCRYPTED_COOKIE_LEN];
    let (text, tag_out) = out.split_at_mut(MAC_LEN);
    text.copy_from_slice(cookie);
    let tag = XChaCha20Poly1305::new(keys.cookie.as_ref().into())
        .encrypt_in_place_detached(nonce.into(), mac1, text)
        .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 seals 16 bytes"));
    tag_out.copy_from_slice(&tag);
    out
}

/// Opens a sealed cookie, or `None` if it does not authenticate under `mac1` (the initiator's
/// side; the server only seals, tests and fuzzing open).
pub fn open_cookie(
    keys: &WgMacKeys,
    nonce: &[u8; COOKIE_NONCE_LEN],
    sealed: &[u8; ENCRYPTED_COOKIE_LEN],
    mac1: &[u8; MAC_LEN],
) -> Option<Zeroizing<[u8; MAC_LEN]>> {
    let mut cookie = Zeroizing::new([0u8; MAC_LEN]);
    cookie.copy_from_slice(&sealed[..MAC_LEN]);
    let tag: &[u8; TAG_LEN] = sealed[MAC_LEN..].try_into().ok()?;
    XChaCha20Poly1305::new(keys.cookie.as_ref().into())
        .decrypt_in_place_detached(nonce.into(), mac1, cookie.as_mut(), tag.into())
        .ok()?;
    Some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac1_verifies_only_under_its_key_and_covers_the_message() {
        let keys = WgMacKeys::new(&[7; 32]);
        let mut msg = [0x42u8; 148];
        write_mac1(&keys, &mut msg);
        assert!(verify_mac1(&keys, &msg));
        assert!(!verify_mac1(&WgMacKeys::new(&[8; 32]), &msg));
        // Not the native suite's HMAC-SHA256 either.
        assert!(!crate::proto::cookie::verify_mac1(
            &crate::proto::cookie::MacKeys::new(&[7; 32]),
            &msg
        ));
        msg[5] ^= 1;
        assert!(!verify_mac1(&keys, &msg));
        assert!(!verify_mac1(&keys, &msg[..31]));
    }

    #[test]
    fn mac_is_keyed_blake2s_128() {
        // BLAKE2s-128 keyed with 32 zero bytes over the empty message is not the unkeyed hash,
        // and the key changes it.
        let a = mac(&[0; 32], &[b""]);
        let b = mac(&[1; 32], &[b""]);
        assert_ne!(a, b);
        // Parts are concatenated.
        assert_eq!(mac(&[3; 16], &[b"ab", b"c"]), mac(&[3; 16], &[b"abc"]));
    }

    #[test]
    fn mac2_round_trips_under_the_cookie_of_the_source() {
        let secret = [9u8; 32];
        let src: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let cookie = cookie_for(&secret, src);
        let mut msg = [1u8; 148];
        write_mac2(&cookie, &mut msg);
        assert!(verify_mac2(&cookie, &msg));
        let other = cookie_for(&secret, "192.0.2.7:5001".parse().unwrap());
        assert!(!verify_mac2(&other, &msg));
        let mapped = cookie_for(&secret, "[::ffff:192.0.2.7]:5000".parse().unwrap());
        assert_eq!(*mapped, *cookie, "IPv4-mapped counts as IPv4");
    }

    #[test]
    fn cookie_seals_and_opens_only_with_its_mac1() {
        let keys = WgMacKeys::new(&[5; 32]);
        let nonce = [3u8; COOKIE_NONCE_LEN];
        let cookie = [0xaa; MAC_LEN];
        let sealed = seal_cookie(&keys, &nonce, &cookie, &[1; MAC_LEN]);
        assert_eq!(
            open_cookie(&keys, &nonce, &sealed, &[1; MAC_LEN]).as_deref(),
            Some(&cookie)
        );
        assert!(open_cookie(&keys, &nonce, &sealed, &[2; MAC_LEN]).is_none());
        assert!(open_cookie(&WgMacKeys::new(&[6; 32]), &nonce, &sealed, &[1; MAC_LEN]).is_none());
    }
}
