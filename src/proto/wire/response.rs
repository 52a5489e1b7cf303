//! Handshake response (type 2, 116 bytes): the shared handshake view with the native Noise
//! message 2 (`e, ee, se, psk` and the sealed address assignment, bytes 12..84).

use super::handshake::{HandshakeMessage, HandshakeResponseRepr, ResponseLayout};
use super::{RESPONSE_LEN, RESPONSE_NOISE_LEN};

/// A zero-copy view of a handshake response: sender index (4..8), receiver index (8..12),
/// Noise message 2 (12..84), mac1 (84..100), mac2 (100..116).
pub type Response<T> = HandshakeMessage<T, ResponseLayout, RESPONSE_NOISE_LEN>;

/// A parsed handshake response.
pub type ResponseRepr = HandshakeResponseRepr<RESPONSE_NOISE_LEN>;

// The shared layout adds up to the length the spec gives.
const _: () = assert!(Response::<&[u8]>::LEN == RESPONSE_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::WireError;

    fn sample() -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        b[0] = 2;
        b[4..8].copy_from_slice(&[1, 0, 0, 0]);
        b[8..12].copy_from_slice(&[0xef, 0xbe, 0xad, 0xde]);
        for (i, x) in b[12..].iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn accessors_read_their_fields() {
        let b = sample();
        let p = Response::new_checked(&b[..]).unwrap();
        assert_eq!(p.sender_index(), 1);
        assert_eq!(p.receiver_index(), 0xdead_beef);
        assert_eq!(p.noise_message()[0], 0);
        assert_eq!(p.noise_message()[71], 71);
        assert_eq!(p.mac1()[0], 72);
        assert_eq!(p.mac2()[0], 88);
        assert_eq!(p.mac2()[15], 103);
        assert_eq!(p.mac1_covered(), &b[..84]);
        assert_eq!(p.mac2_covered(), &b[..100]);
    }

    #[test]
    fn new_checked_wants_exact_length() {
        let b = [0u8; 148];
        for len in [0, 4, 115, 117, 148] {
            assert_eq!(
                Response::new_checked(&b[..len]),
                Err(WireError::WrongLength {
                    expected: 116,
                    got: len
                })
            );
        }
        assert!(Response::new_checked(&b[..116]).is_ok());
    }

    #[test]
    fn parse_checks_header() {
        let mut b = sample();
        b[0] = 1;
        assert_eq!(
            ResponseRepr::parse(&Response::new_unchecked(&b[..])),
            Err(WireError::UnknownType(1))
        );
        let mut b = sample();
        b[1] = 0x80;
        assert_eq!(
            ResponseRepr::parse(&Response::new_unchecked(&b[..])),
            Err(WireError::ReservedNotZero)
        );
        assert!(ResponseRepr::parse(&Response::new_unchecked(&b[..10])).is_err());
    }

    #[test]
    fn repr_round_trips() {
        let b = sample();
        let repr = ResponseRepr::parse(&Response::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(repr.buffer_len(), RESPONSE_LEN);
        let mut out = [0x55u8; RESPONSE_LEN];
        repr.emit(&mut Response::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
    }

    #[test]
    fn fill_header_writes_both_indices() {
        let mut out = [0xffu8; RESPONSE_LEN];
        let mut p = Response::new_checked(&mut out[..]).unwrap();
        p.fill_header(0x0102_0304, 0x0a0b_0c0d);
        p.noise_message_mut().fill(3);
        p.mac1_mut().fill(1);
        p.mac2_mut().fill(0);
        assert_eq!(
            &out[..12],
            &[2, 0, 0, 0, 4, 3, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a]
        );
        assert!(out[12..84].iter().all(|&x| x == 3));
        assert!(out[84..100].iter().all(|&x| x == 1));
        assert!(out[100..].iter().all(|&x| x == 0));
    }
}
