//! WireGuard's handshake response (type 2, 92 bytes): the native response less the address
//! assignment, since WireGuard's message 2 carries an empty payload. WireGuard whitepaper
//! section 5.4.3; wireguard-go `device/noise-protocol.go` `MessageResponseSize`.

use super::handshake::{HandshakeMessage, HandshakeResponseRepr, ResponseLayout};
use super::TAG_LEN;

/// Length of a WireGuard handshake response: type and reserved (4), sender (4), receiver (4),
/// ephemeral (32), empty payload's tag (16), mac1 (16), mac2 (16). WireGuard whitepaper
/// section 5.4.3; wireguard-go `device/noise-protocol.go` `MessageResponseSize` (92).
pub const WG_RESPONSE_LEN: usize = 92;
/// Length of Noise message 2 inside a WireGuard response (bytes 12..60): `e` and the tag of
/// the empty payload.
pub const WG_RESPONSE_NOISE_LEN: usize = 32 + TAG_LEN;

/// A zero-copy view of a WireGuard handshake response: sender index (4..8), receiver index
/// (8..12), Noise message 2 (12..60), mac1 (60..76), mac2 (76..92).
pub type WgResponse<T> = HandshakeMessage<T, ResponseLayout, WG_RESPONSE_NOISE_LEN>;

/// A parsed WireGuard handshake response.
pub type WgResponseRepr = HandshakeResponseRepr<WG_RESPONSE_NOISE_LEN>;

// The shared layout adds up to the length WireGuard gives.
const _: () = assert!(WgResponse::<&[u8]>::LEN == WG_RESPONSE_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{WireError, MAC_LEN};

    fn sample() -> [u8; WG_RESPONSE_LEN] {
        let mut b = [0u8; WG_RESPONSE_LEN];
        b[0] = 2;
        b[4..8].copy_from_slice(&[1, 0, 0, 0]);
        b[8..12].copy_from_slice(&[0xef, 0xbe, 0xad, 0xde]);
        for (i, x) in b[12..].iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn lengths_add_up() {
        assert_eq!(WG_RESPONSE_LEN, 12 + WG_RESPONSE_NOISE_LEN + 2 * MAC_LEN);
    }

    #[test]
    fn accessors_read_their_fields() {
        let b = sample();
        let p = WgResponse::new_checked(&b[..]).unwrap();
        assert_eq!(p.sender_index(), 1);
        assert_eq!(p.receiver_index(), 0xdead_beef);
        assert_eq!(p.noise_message()[47], 47);
        assert_eq!(p.mac1()[0], 48);
        assert_eq!(p.mac2()[0], 64);
        assert_eq!(p.mac2()[15], 79);
    }

    #[test]
    fn new_checked_wants_exact_length_and_parse_the_header() {
        let b = [0u8; 148];
        for len in [0, 91, 93, 116] {
            assert_eq!(
                WgResponse::new_checked(&b[..len]),
                Err(WireError::WrongLength {
                    expected: 92,
                    got: len
                })
            );
        }
        let mut b = sample();
        b[0] = 1;
        assert_eq!(
            WgResponseRepr::parse(&WgResponse::new_unchecked(&b[..])),
            Err(WireError::UnknownType(1))
        );
        let mut b = sample();
        b[3] = 1;
        assert_eq!(
            WgResponseRepr::parse(&WgResponse::new_unchecked(&b[..])),
            Err(WireError::ReservedNotZero)
        );
    }

    #[test]
    fn repr_round_trips() {
        let b = sample();
        let repr = WgResponseRepr::parse(&WgResponse::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(repr.buffer_len(), WG_RESPONSE_LEN);
        let mut out = [0x55u8; WG_RESPONSE_LEN];
        repr.emit(&mut WgResponse::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
    }
}
