//! Handshake initiation (type 1, 148 bytes): the shared handshake view with Noise message 1.

use super::handshake::{HandshakeMessage, InitiationLayout};
use super::{WireError, INITIATION_LEN, INITIATION_NOISE_LEN, MAC_LEN};

/// A zero-copy view of a handshake initiation: sender index (4..8), Noise message 1
/// (`e, es, s, ss`, 8..116), mac1 (116..132), mac2 (132..148).
pub type Initiation<T> = HandshakeMessage<T, InitiationLayout, INITIATION_NOISE_LEN>;

// The shared layout adds up to the length the spec gives.
const _: () = assert!(Initiation::<&[u8]>::LEN == INITIATION_LEN);

/// A parsed handshake initiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiationRepr {
    /// The initiator's receiver index for this handshake.
    pub sender_index: u32,
    /// Noise message 1.
    pub noise_message: [u8; INITIATION_NOISE_LEN],
    /// mac1.
    pub mac1: [u8; MAC_LEN],
    /// mac2.
    pub mac2: [u8; MAC_LEN],
}

impl InitiationRepr {
    /// Parses a view, rejecting a wrong length, type byte or non-zero reserved bytes.
    pub fn parse<T: AsRef<[u8]>>(packet: &Initiation<T>) -> Result<Self, WireError> {
        packet.check()?;
        Ok(InitiationRepr {
            sender_index: packet.sender_index(),
            noise_message: *packet.noise_message(),
            mac1: *packet.mac1(),
            mac2: *packet.mac2(),
        })
    }

    /// Writes every byte of the message.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Initiation<T>) {
        packet.fill_header(self.sender_index);
        packet.emit_body(&self.noise_message, &self.mac1, &self.mac2);
    }

    /// The length of the emitted message.
    pub const fn buffer_len(&self) -> usize {
        INITIATION_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> [u8; INITIATION_LEN] {
        let mut b = [0u8; INITIATION_LEN];
        b[0] = 1;
        b[4..8].copy_from_slice(&[0x78, 0x56, 0x34, 0x12]);
        for (i, x) in b[8..].iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn accessors_read_their_fields() {
        let b = sample();
        let p = Initiation::new_checked(&b[..]).unwrap();
        assert_eq!(p.sender_index(), 0x1234_5678);
        assert_eq!(p.noise_message()[0], 0);
        assert_eq!(p.noise_message()[107], 107);
        assert_eq!(p.mac1()[0], 108);
        assert_eq!(p.mac2()[0], 124);
        assert_eq!(p.mac2()[15], 139);
        assert_eq!(p.mac1_covered().len(), 116);
        assert_eq!(p.mac2_covered().len(), 132);
        assert_eq!(p.mac2_covered(), &b[..132]);
    }

    #[test]
    fn new_checked_wants_exact_length() {
        let b = [0u8; 149];
        assert_eq!(
            Initiation::new_checked(&b[..147]),
            Err(WireError::WrongLength {
                expected: 148,
                got: 147
            })
        );
        assert_eq!(
            Initiation::new_checked(&b[..]),
            Err(WireError::WrongLength {
                expected: 148,
                got: 149
            })
        );
        assert!(Initiation::new_checked(&b[..148]).is_ok());
        assert!(Initiation::new_checked(&b[..0]).is_err());
    }

    #[test]
    fn parse_checks_header() {
        let mut b = sample();
        b[0] = 2;
        assert_eq!(
            InitiationRepr::parse(&Initiation::new_unchecked(&b[..])),
            Err(WireError::UnknownType(2))
        );
        let mut b = sample();
        b[3] = 1;
        assert_eq!(
            InitiationRepr::parse(&Initiation::new_unchecked(&b[..])),
            Err(WireError::ReservedNotZero)
        );
    }

    #[test]
    fn parse_of_unchecked_short_buffer_fails_instead_of_panicking() {
        let b = [1u8, 0, 0, 0];
        assert!(InitiationRepr::parse(&Initiation::new_unchecked(&b[..])).is_err());
    }

    #[test]
    fn repr_round_trips() {
        let b = sample();
        let repr = InitiationRepr::parse(&Initiation::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(repr.buffer_len(), INITIATION_LEN);
        let mut out = [0xaau8; INITIATION_LEN];
        repr.emit(&mut Initiation::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
    }

    #[test]
    fn fill_header_writes_type_reserved_and_index() {
        let mut out = [0xffu8; INITIATION_LEN];
        let mut p = Initiation::new_checked(&mut out[..]).unwrap();
        p.fill_header(7);
        p.mac1_mut().fill(1);
        p.mac2_mut().fill(2);
        p.noise_message_mut().fill(3);
        let out = p.into_inner();
        assert_eq!(&out[..8], &[1, 0, 0, 0, 7, 0, 0, 0]);
        assert!(out[8..116].iter().all(|&x| x == 3));
        assert!(out[116..132].iter().all(|&x| x == 1));
        assert!(out[132..].iter().all(|&x| x == 2));
    }

    #[test]
    fn works_over_owned_buffers() {
        let p = Initiation::new_checked(sample().to_vec()).unwrap();
        assert_eq!(p.sender_index(), 0x1234_5678);
        assert_eq!(p.into_inner().len(), INITIATION_LEN);
    }
}
