//! WireGuard's handshake response (type 2, 92 bytes): the native response less the address
//! assignment, since WireGuard's message 2 carries an empty payload. WireGuard whitepaper
//! section 5.4.3; wireguard-go `device/noise-protocol.go` `MessageResponseSize`.

use super::{
    array, array_mut, check_exact_len, check_header, read_u32, write_header, MessageType,
    WireError, MAC_LEN, TAG_LEN,
};

/// Length of a WireGuard handshake response: type and reserved (4), sender (4), receiver (4),
/// ephemeral (32), empty payload's tag (16), mac1 (16), mac2 (16). WireGuard whitepaper
/// section 5.4.3; wireguard-go `device/noise-protocol.go` `MessageResponseSize` (92).
pub const WG_RESPONSE_LEN: usize = 92;
/// Length of Noise message 2 inside a WireGuard response (bytes 12..60): `e` and the tag of
/// the empty payload.
pub const WG_RESPONSE_NOISE_LEN: usize = 32 + TAG_LEN;

mod field {
    use core::ops::Range;
    pub const SENDER_INDEX: Range<usize> = 4..8;
    pub const RECEIVER_INDEX: Range<usize> = 8..12;
    pub const NOISE: Range<usize> = 12..60;
    pub const MAC1: Range<usize> = 60..76;
    pub const MAC2: Range<usize> = 76..92;
}

/// A zero-copy view of a WireGuard handshake response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgResponse<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> WgResponse<T> {
    /// Wraps a buffer without checking it. Accessors panic if it is shorter than
    /// [`WG_RESPONSE_LEN`]; use [`WgResponse::new_checked`] for anything received.
    pub const fn new_unchecked(buffer: T) -> Self {
        WgResponse { buffer }
    }

    /// Wraps a buffer of exactly [`WG_RESPONSE_LEN`] bytes. Only the length is checked;
    /// [`WgResponseRepr::parse`] checks the header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_exact_len(buffer.as_ref(), WG_RESPONSE_LEN)?;
        Ok(WgResponse { buffer })
    }

    /// The responder's receiver index.
    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SENDER_INDEX.start)
    }

    /// The initiator's sender index, echoed.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RECEIVER_INDEX.start)
    }

    /// Noise message 2 (`e, ee, se, psk` and the empty payload's tag), bytes 12..60.
    pub fn noise_message(&self) -> &[u8; WG_RESPONSE_NOISE_LEN] {
        array(self.buffer.as_ref(), field::NOISE.start)
    }

    /// mac1, bytes 60..76.
    pub fn mac1(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), field::MAC1.start)
    }

    /// mac2, bytes 76..92.
    pub fn mac2(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), field::MAC2.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> WgResponse<T> {
    /// Writes the type, zeroes the reserved bytes and writes both indices.
    pub fn fill_header(&mut self, sender_index: u32, receiver_index: u32) {
        let b = self.buffer.as_mut();
        write_header(b, MessageType::Response);
        b[field::SENDER_INDEX].copy_from_slice(&sender_index.to_le_bytes());
        b[field::RECEIVER_INDEX].copy_from_slice(&receiver_index.to_le_bytes());
    }

    /// Noise message 2, for the handshake to write into.
    pub fn noise_message_mut(&mut self) -> &mut [u8; WG_RESPONSE_NOISE_LEN] {
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

/// A parsed WireGuard handshake response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgResponseRepr {
    /// The responder's receiver index.
    pub sender_index: u32,
    /// The initiator's sender index, echoed.
    pub receiver_index: u32,
    /// Noise message 2.
    pub noise_message: [u8; WG_RESPONSE_NOISE_LEN],
    /// mac1.
    pub mac1: [u8; MAC_LEN],
    /// mac2.
    pub mac2: [u8; MAC_LEN],
}

impl WgResponseRepr {
    /// Parses a view, rejecting a wrong length, type byte or non-zero reserved bytes.
    pub fn parse<T: AsRef<[u8]>>(packet: &WgResponse<T>) -> Result<Self, WireError> {
        check_exact_len(packet.buffer.as_ref(), WG_RESPONSE_LEN)?;
        check_header(packet.buffer.as_ref(), MessageType::Response)?;
        Ok(WgResponseRepr {
            sender_index: packet.sender_index(),
            receiver_index: packet.receiver_index(),
            noise_message: *packet.noise_message(),
            mac1: *packet.mac1(),
            mac2: *packet.mac2(),
        })
    }

    /// Writes every byte of the message.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut WgResponse<T>) {
        packet.fill_header(self.sender_index, self.receiver_index);
        *packet.noise_message_mut() = self.noise_message;
        *packet.mac1_mut() = self.mac1;
        *packet.mac2_mut() = self.mac2;
    }

    /// The length of the emitted message.
    pub const fn buffer_len(&self) -> usize {
        WG_RESPONSE_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
