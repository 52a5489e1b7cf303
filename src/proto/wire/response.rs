//! Handshake response (type 2, 116 bytes).

use super::{
    array, array_mut, check_exact_len, check_header, read_u32, write_header, MessageType,
    WireError, MAC_LEN, RESPONSE_LEN, RESPONSE_NOISE_LEN,
};

mod field {
    use core::ops::Range;
    pub const SENDER_INDEX: Range<usize> = 4..8;
    pub const RECEIVER_INDEX: Range<usize> = 8..12;
    pub const NOISE: Range<usize> = 12..84;
    pub const MAC1: Range<usize> = 84..100;
    pub const MAC2: Range<usize> = 100..116;
}

/// A zero-copy view of a handshake response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Response<T> {
    /// Wraps a buffer without checking it. Accessors panic if it is shorter than
    /// [`RESPONSE_LEN`]; use [`Response::new_checked`] for anything received.
    pub const fn new_unchecked(buffer: T) -> Self {
        Response { buffer }
    }

    /// Wraps a buffer of exactly [`RESPONSE_LEN`] bytes. Only the length is checked;
    /// [`ResponseRepr::parse`] or [`super::message_type`] check the header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_exact_len(buffer.as_ref(), RESPONSE_LEN)?;
        Ok(Response { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The responder's receiver index.
    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SENDER_INDEX.start)
    }

    /// The initiator's sender index, echoed.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RECEIVER_INDEX.start)
    }

    /// Noise message 2 (`e, ee, se, psk`), bytes 12..84.
    pub fn noise_message(&self) -> &[u8; RESPONSE_NOISE_LEN] {
        array(self.buffer.as_ref(), field::NOISE.start)
    }

    /// mac1, bytes 84..100.
    pub fn mac1(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), field::MAC1.start)
    }

    /// mac2, bytes 100..116 (zeros: initiators never send cookies).
    pub fn mac2(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), field::MAC2.start)
    }

    /// The bytes mac1 covers, 0..84.
    pub fn mac1_covered(&self) -> &[u8] {
        &self.buffer.as_ref()[..field::MAC1.start]
    }

    /// The bytes mac2 covers, 0..100.
    pub fn mac2_covered(&self) -> &[u8] {
        &self.buffer.as_ref()[..field::MAC2.start]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Response<T> {
    /// Writes the type, zeroes the reserved bytes and writes both indices.
    pub fn fill_header(&mut self, sender_index: u32, receiver_index: u32) {
        let b = self.buffer.as_mut();
        write_header(b, MessageType::Response);
        b[field::SENDER_INDEX].copy_from_slice(&sender_index.to_le_bytes());
        b[field::RECEIVER_INDEX].copy_from_slice(&receiver_index.to_le_bytes());
    }

    /// Noise message 2, for the handshake to write into.
    pub fn noise_message_mut(&mut self) -> &mut [u8; RESPONSE_NOISE_LEN] {
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

/// A parsed handshake response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRepr {
    /// The responder's receiver index.
    pub sender_index: u32,
    /// The initiator's sender index, echoed.
    pub receiver_index: u32,
    /// Noise message 2.
    pub noise_message: [u8; RESPONSE_NOISE_LEN],
    /// mac1.
    pub mac1: [u8; MAC_LEN],
    /// mac2.
    pub mac2: [u8; MAC_LEN],
}

impl ResponseRepr {
    /// Parses a view, rejecting a wrong length, type byte or non-zero reserved bytes.
    pub fn parse<T: AsRef<[u8]>>(packet: &Response<T>) -> Result<Self, WireError> {
        check_exact_len(packet.buffer.as_ref(), RESPONSE_LEN)?;
        check_header(packet.buffer.as_ref(), MessageType::Response)?;
        Ok(ResponseRepr {
            sender_index: packet.sender_index(),
            receiver_index: packet.receiver_index(),
            noise_message: *packet.noise_message(),
            mac1: *packet.mac1(),
            mac2: *packet.mac2(),
        })
    }

    /// Writes every byte of the message.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Response<T>) {
        packet.fill_header(self.sender_index, self.receiver_index);
        *packet.noise_message_mut() = self.noise_message;
        *packet.mac1_mut() = self.mac1;
        *packet.mac2_mut() = self.mac2;
    }

    /// The length of the emitted message.
    pub const fn buffer_len(&self) -> usize {
        RESPONSE_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
