//! X25519 keys and the optional pre-shared key, with WireGuard-style base64 text forms.
//!
//! Secret material lives in types that are zeroized on drop and never print their bytes.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use thiserror::Error;
use zeroize::Zeroizing;

use super::rng::Random;

/// Length of every key in bytes: X25519 scalars and points (RFC 7748 section 5) and the Noise
/// PSK (Noise spec section 9.1, 32 bytes).
pub const KEY_LEN: usize = 32;

/// Length of a key in standard padded base64: 4 * ceil(32 / 3) = 44 characters.
pub const KEY_BASE64_LEN: usize = 44;

/// Why a key could not be parsed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The text was empty (or only whitespace).
    #[error(
        "the key is empty: a key is 44 base64 characters (32 bytes); \
         generate one with `concentrator genkey`"
    )]
    Empty,
    /// The text is not standard padded base64. Deliberately says nothing about which character
    /// was wrong: the text may be a mistyped secret key, and errors end up in logs.
    #[error(
        "the key is not valid base64: a key is 44 characters of standard base64 \
         (A-Z a-z 0-9 + /, ending in '='); generate one with `concentrator genkey`"
    )]
    NotBase64,
    /// The base64 decoded to the wrong number of bytes.
    #[error(
        "the key decodes to {found} bytes, but a key is exactly 32 bytes \
         (44 base64 characters); generate one with `concentrator genkey`"
    )]
    WrongLength {
        /// How many bytes the text decoded to.
        found: usize,
    },
}

/// Decodes a 32-byte key from base64, ignoring surrounding ASCII whitespace (key files end in a
/// newline) and nothing else.
fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    // Decode into a zeroized buffer: the text may be a secret key.
    let decoded = Zeroizing::new(STANDARD.decode(text).map_err(|_| KeyError::NotBase64)?);
    if decoded.len() != KEY_LEN {
        return Err(KeyError::WrongLength {
            found: decoded.len(),
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&decoded);
    Ok(key)
}

/// An X25519 public key (a peer's or our own static key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw key bytes. Every 32-byte string is accepted, as X25519 does (RFC 7748
    /// section 5: implementations must accept non-canonical values).
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses the base64 form (as printed by `concentrator pubkey` or `wg pubkey`).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(|k| Self(*k))
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for PublicKey {
    /// Standard padded base64, 44 characters, like WireGuard.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// Our X25519 static private key. Zeroized on drop; `Debug` never shows it.
#[derive(Clone)]
pub struct StaticSecret(x25519_dalek::StaticSecret);

impl StaticSecret {
    /// Generates a new key from `rng`, clamped as X25519 does (RFC 7748 section 5), so the
    /// stored bytes are the scalar actually used, like `wg genkey` output.
    pub fn generate(rng: &mut impl Random) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill(&mut bytes[..]);
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Self(x25519_dalek::StaticSecret::from(*bytes))
    }

    /// Wraps raw key bytes. Any 32 bytes are a valid key: X25519 clamps on use.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    /// Parses the base64 form (as written by `concentrator genkey` or `wg genkey`).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(|k| Self::from_bytes(*k))
    }

    /// The base64 form, for `concentrator genkey`. Zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_bytes()))
    }

    /// The raw key bytes (the Noise library needs them). Zeroized when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(*self.0.as_bytes())
    }

    /// The matching public key (X25519 with the base point 9, RFC 7748 section 6.1).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticSecret(<redacted>)")
    }
}

/// The Noise `psk2` pre-shared key. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey(Zeroizing<[u8; KEY_LEN]>);

impl PresharedKey {
    /// The all-zero PSK used when none is configured (docs/protocol.md, "Cryptographic
    /// primitives"; WireGuard does the same).
    pub fn zero() -> Self {
        Self(Zeroizing::new([0u8; KEY_LEN]))
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Parses the base64 form (any 32 random bytes, e.g. `concentrator genkey` output).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// True for [`PresharedKey::zero`], the "no pre-shared key" value.
    pub fn is_zero(&self) -> bool {
        *self.0 == [0u8; KEY_LEN]
    }

    /// The base64 form (for `concentrator save` and client configs). Zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(*self.0))
    }
}

impl Default for PresharedKey {
    fn default() -> Self {
        Self::zero()
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rng::SeededRandom;

    fn unhex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn rfc7748_section_6_1_alice() {
        let alice = StaticSecret::from_bytes(unhex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let expected = unhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(alice.public_key().as_bytes(), &expected);
        // Bob, same section.
        let bob = StaticSecret::from_bytes(unhex(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        let expected = unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        assert_eq!(bob.public_key().as_bytes(), &expected);
    }

    #[test]
    fn base64_round_trips() {
        let secret = StaticSecret::generate(&mut SeededRandom(7));
        let text = secret.to_base64();
        assert_eq!(text.len(), KEY_BASE64_LEN);
        let again = StaticSecret::from_base64(&text).unwrap();
        assert_eq!(*again.to_bytes(), *secret.to_bytes());

        let public = secret.public_key();
        let shown = public.to_string();
        assert_eq!(shown.len(), KEY_BASE64_LEN);
        assert_eq!(shown.parse::<PublicKey>().unwrap(), public);
        // Key files end in a newline; surrounding whitespace is ignored.
        assert_eq!(
            PublicKey::from_base64(&format!("  {shown}\r\n")).unwrap(),
            public
        );

        let psk = PresharedKey::from_base64(&format!("{}\n", &*text)).unwrap();
        assert_eq!(psk.as_bytes(), &*secret.to_bytes());
    }

    #[test]
    fn known_base64_text() {
        let public = PublicKey::from_bytes(unhex(
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        ));
        assert_eq!(
            public.to_string(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn generate_clamps() {
        for seed in 0..32 {
            let k = StaticSecret::generate(&mut SeededRandom(seed)).to_bytes();
            assert_eq!(k[0] & 7, 0);
            assert_eq!(k[31] & 0xc0, 0x40);
        }
    }

    #[test]
    fn errors() {
        assert_eq!(PublicKey::from_base64(""), Err(KeyError::Empty));
        assert_eq!(PublicKey::from_base64(" \n"), Err(KeyError::Empty));
        assert_eq!(
            PublicKey::from_base64("not base64 at all!"),
            Err(KeyError::NotBase64)
        );
        // Inner whitespace is not trimmed.
        assert_eq!(
            PublicKey::from_base64("hSDwCYkwp1R0i33ctD73Wg2/ Og0mOBr066SpjqqbTmo="),
            Err(KeyError::NotBase64)
        );
        // Missing padding is rejected (standard, padded base64 only).
        assert_eq!(
            PublicKey::from_base64("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo"),
            Err(KeyError::NotBase64)
        );
        assert_eq!(
            PublicKey::from_base64("AAAA"),
            Err(KeyError::WrongLength { found: 3 })
        );
        assert_eq!(
            StaticSecret::from_base64(&STANDARD.encode([1u8; 33])).unwrap_err(),
            KeyError::WrongLength { found: 33 }
        );
        let msg = KeyError::WrongLength { found: 3 }.to_string();
        assert!(msg.contains("3 bytes") && msg.contains("32 bytes") && msg.contains("44"));
        assert!(msg.contains("concentrator genkey"));
        assert!(KeyError::NotBase64
            .to_string()
            .contains("concentrator genkey"));
    }

    #[test]
    fn debug_is_redacted() {
        let secret = StaticSecret::from_bytes([0x41; 32]);
        assert_eq!(format!("{secret:?}"), "StaticSecret(<redacted>)");
        let psk = PresharedKey::from_bytes([0x41; 32]);
        assert_eq!(format!("{psk:?}"), "PresharedKey(<redacted>)");
        assert_eq!(PresharedKey::zero().as_bytes(), &[0u8; 32]);
    }
}
