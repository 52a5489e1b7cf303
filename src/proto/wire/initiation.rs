//! Handshake initiation (type 1, 148 bytes).

use super::{
    array, array_mut, check_exact_len, check_header, read_u32, write_header, MessageType,
    WireError, INITIATION_LEN, INITIATION_NOISE_LEN, MAC_LEN,
};

mod field {
    use core::ops::Range;
    pub const SENDER_INDEX: Range<usize> = 4..8;
    pub const NOISE: Range<usize> = 8..116;
    pub const MAC1: Range<usize> = 116..132;
    pub const MAC2: Range<usize> = 132..148;
}

/// A zero-copy view of a handshake initiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiation<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Initiation<T> {
    /// Wraps a buffer without checking it. Accessors panic if it is shorter than
    /// [`INITIATION_LEN`]; use [`Initiation::new_checked`] for anything received.
    pub const fn new_unchecked(buffer: T) -> Self {
        Initiation { buffer }
    }

    /// Wraps a buffer of exactly [`INITIATION_LEN`] bytes. Only the length is checked (as in
    /// smoltcp); [`InitiationRepr::parse`] or [`super::message_type`] check the header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_exact_len(buffer.as_ref(), INITIATION_LEN)?;
        Ok(Initiation { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The initiator's receiver index for this handshake.
    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SENDER_INDEX.start)
    }

    /// Noise message 1 (`e, es, s, ss`), bytes 8..116.
    pub fn noise_message(&self) -> &[u8; INITIATION_NOISE_LEN] {
        array(self.buffer.as_ref(), field::NOISE.start)
    }

    /// mac1, bytes 116..132.
    pub fn mac1(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), field::MAC1.start)
    }

    /// mac2, bytes 132..148 (zeros when the initiator holds no cookie).
    pub fn mac2(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), field::MAC2.start)
    }

    /// Whether the initiator sent a cookie: mac2 is all zeros when its jar was empty.
    pub fn has_cookie(&self) -> bool {
        self.mac2().iter().any(|&b| b != 0)
    }

    /// The bytes mac1 covers, 0..116.
    pub fn mac1_covered(&self) -> &[u8] {
        &self.buffer.as_ref()[..field::MAC1.start]
    }

    /// The bytes mac2 covers, 0..132.
    pub fn mac2_covered(&self) -> &[u8] {
        &self.buffer.as_ref()[..field::MAC2.start]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Initiation<T> {
    /// Writes the type, zeroes the reserved bytes and writes the sender index.
    pub fn fill_header(&mut self, sender_index: u32) {
        let b = self.buffer.as_mut();
        write_header(b, MessageType::Initiation);
        b[field::SENDER_INDEX].copy_from_slice(&sender_index.to_le_bytes());
    }

    /// Noise message 1, for the handshake to write into.
    pub fn noise_message_mut(&mut self) -> &mut [u8; INITIATION_NOISE_LEN] {
        array_mut(self.buffer.as_mut(), field::NOISE.start)
    }

    /// mac1, for writing.
    pub fn mac1_mut(&mut self) -> &mut [u8; MAC_LEN] {
        array_mut(self.buffer.as_mut(), field::MAC1.start)
    }

    /// mac2, for writing.
    pub fn mac2_mut(&mut self) -> &mut [u8; MAC_LEN] {
        array_mut(self.buffer.as_mut(), field::MAC2.start)
    }
}

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
    /// Parses a checked view, rejecting a wrong type byte or non-zero reserved bytes.
    pub fn parse<T: AsRef<[u8]>>(packet: &Initiation<T>) -> Result<Self, WireError> {
        check_exact_len(packet.buffer.as_ref(), INITIATION_LEN)?;
        check_header(packet.buffer.as_ref(), MessageType::Initiation)?;
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
        *packet.noise_message_mut() = self.noise_message;
        *packet.mac1_mut() = self.mac1;
        *packet.mac2_mut() = self.mac2;
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
