//! Pre-shared keys in etcd are sealed with the fleet key (AES-256-GCM, the peer's public key as
//! associated data, so a sealed PSK cannot be moved to another peer's record): whoever reads
//! etcd without the fleet key learns nothing of them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::proto::keys::{PresharedKey, PublicKey};

/// Tells sealed PSKs apart from anything else sealed with the same key, and versions the format.
const CONTEXT: &[u8] = b"concentrator registry psk v1";

/// Why a sealed PSK could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Not base64 of nonce, key and tag.
    #[error("the sealed pre-shared key is not well formed")]
    Malformed,
    /// Another fleet key sealed it, or it belongs to another peer, or it was altered.
    #[error(
        "the sealed pre-shared key does not open with this headend's fleet key (another fleet \
         key sealed it, or it was altered); give every headend the same fleet_key_file"
    )]
    WrongKey,
}

fn aad(peer: &PublicKey) -> Vec<u8> {
    let mut aad = CONTEXT.to_vec();
    aad.extend_from_slice(peer.as_bytes());
    aad
}

fn cipher(fleet_key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, fleet_key).expect("a 32-byte AES-256 key"))
}

/// Seals `psk` of `peer` under `fleet_key` with a fresh `nonce` (random: never reuse one):
/// base64 of nonce, ciphertext and tag.
pub fn seal(
    fleet_key: &[u8; 32],
    peer: &PublicKey,
    psk: &PresharedKey,
    nonce: [u8; NONCE_LEN],
) -> String {
    let mut data = psk.as_bytes().to_vec();
    cipher(fleet_key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(peer)),
            &mut data,
        )
        .expect("sealing 32 bytes cannot fail");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    STANDARD.encode(out)
}

/// Opens what [`seal`] made for `peer`.
pub fn open(
    fleet_key: &[u8; 32],
    peer: &PublicKey,
    sealed: &str,
) -> Result<PresharedKey, SealError> {
    let bytes = STANDARD
        .decode(sealed.trim())
        .map_err(|_| SealError::Malformed)?;
    if bytes.len() != NONCE_LEN + 32 + AES_256_GCM.tag_len() {
        return Err(SealError::Malformed);
    }
    let (nonce, rest) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
    let mut rest = rest.to_vec();
    let plain = cipher(fleet_key)
        .open_in_place(nonce, Aad::from(aad(peer)), &mut rest)
        .map_err(|_| SealError::WrongKey)?;
    let key: [u8; 32] = plain.try_into().map_err(|_| SealError::Malformed)?;
    Ok(PresharedKey::from_bytes(key))
}

/// A fresh random nonce.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut n).expect("the OS random source");
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_psk_opens_only_with_its_fleet_key_and_peer() {
        let fleet = [7u8; 32];
        let (a, b) = (PublicKey::from([1; 32]), PublicKey::from([2; 32]));
        let psk = PresharedKey::from_bytes([42; 32]);
        let sealed = seal(&fleet, &a, &psk, [9; NONCE_LEN]);
        // Never in the clear: neither the bytes nor their base64 appear in the sealed text.
        assert!(!sealed.contains(&STANDARD.encode([42u8; 32])));
        assert_eq!(open(&fleet, &a, &sealed).unwrap().as_bytes(), &[42; 32]);
        assert_eq!(open(&[8; 32], &a, &sealed), Err(SealError::WrongKey));
        assert_eq!(open(&fleet, &b, &sealed), Err(SealError::WrongKey));
        assert_eq!(open(&fleet, &a, "not base64!"), Err(SealError::Malformed));
        assert_eq!(
            open(&fleet, &a, &STANDARD.encode([0u8; 20])),
            Err(SealError::Malformed)
        );
        // Fresh nonces: the same PSK seals differently each time.
        let (x, y) = (
            seal(&fleet, &a, &psk, random_nonce()),
            seal(&fleet, &a, &psk, random_nonce()),
        );
        assert_ne!(x, y);
        assert_eq!(open(&fleet, &a, &y).unwrap().as_bytes(), &[42; 32]);
    }
}
