//! Transport data (type 4, 32 + n bytes).

use super::{
    array, array_mut, check_header, read_u32, MessageType, WireError, TAG_LEN,
    TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN,
};

mod field {
    use core::ops::Range;
    pub const RECEIVER_INDEX: Range<usize> = 4..8;
    pub const COUNTER: Range<usize> = 8..16;
    pub const PAYLOAD: usize = 16;
}

/// A zero-copy view of a transport message: header, ciphertext, tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Transport<T> {
    /// Wraps a buffer without checking it. Accessors panic if it is shorter than
    /// [`TRANSPORT_MIN_LEN`]; use [`Transport::new_checked`] for anything received.
    pub const fn new_unchecked(buffer: T) -> Self {
        Transport { buffer }
    }

    /// Wraps a buffer of at least [`TRANSPORT_MIN_LEN`] bytes. Only the length is checked;
    /// [`Transport::check_header`] or [`super::message_type`] check the header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < TRANSPORT_MIN_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Transport { buffer })
    }

    /// Fails unless the type byte is 4 and the reserved bytes are zero.
    pub fn check_header(&self) -> Result<(), WireError> {
        check_header(self.buffer.as_ref(), MessageType::Transport)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The recipient's index for this keypair.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RECEIVER_INDEX.start)
    }

    /// The message counter (the AES-GCM nonce's low 64 bits).
    pub fn counter(&self) -> u64 {
        u64::from_le_bytes(*array(self.buffer.as_ref(), field::COUNTER.start))
    }

    /// The 16-byte header, which is the AEAD's associated data.
    pub fn header(&self) -> &[u8; TRANSPORT_HEADER_LEN] {
        array(self.buffer.as_ref(), 0)
    }

    /// The ciphertext between header and tag (empty for a keepalive).
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[field::PAYLOAD..b.len() - TAG_LEN]
    }

    /// The AES-GCM tag, the last 16 bytes.
    pub fn tag(&self) -> &[u8; TAG_LEN] {
        let b = self.buffer.as_ref();
        array(b, b.len() - TAG_LEN)
    }

    /// Ciphertext and tag together (everything after the header), as opened in place.
    pub fn sealed(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Transport<T> {
    /// Writes the type, zeroes the reserved bytes and writes receiver index and counter.
    pub fn fill_header(&mut self, receiver_index: u32, counter: u64) {
        write_transport_header(array_mut(self.buffer.as_mut(), 0), receiver_index, counter);
    }

    /// The payload, for sealing in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let b = self.buffer.as_mut();
        let end = b.len() - TAG_LEN;
        &mut b[field::PAYLOAD..end]
    }

    /// The tag, for writing.
    pub fn tag_mut(&mut self) -> &mut [u8; TAG_LEN] {
        let b = self.buffer.as_mut();
        let start = b.len() - TAG_LEN;
        array_mut(b, start)
    }

    /// Ciphertext and tag together, for opening in place.
    pub fn sealed_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }

    /// The header (read-only, the AAD) and the payload and tag (writable) at once, so a
    /// sealer can borrow both without copying the header.
    pub fn split_mut(&mut self) -> (&[u8; TRANSPORT_HEADER_LEN], &mut [u8], &mut [u8; TAG_LEN]) {
        let (header, rest) = self.buffer.as_mut().split_at_mut(field::PAYLOAD);
        let (payload, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        (array(header, 0), payload, array_mut(tag, 0))
    }
}

/// Writes a transport header: type 4, reserved zero, receiver index, counter.
#[inline]
pub fn write_transport_header(
    buf: &mut [u8; TRANSPORT_HEADER_LEN],
    receiver_index: u32,
    counter: u64,
) {
    write_sealed_header(buf, MessageType::Transport, receiver_index, counter);
}

/// Writes the header of a message sealed under a session's keys (transport data, type 4, or
/// a push message, type 5: the same 16 bytes, which are the AAD, so one cannot pass for the
/// other).
#[inline]
pub fn write_sealed_header(
    buf: &mut [u8; TRANSPORT_HEADER_LEN],
    ty: MessageType,
    receiver_index: u32,
    counter: u64,
) {
    buf[0] = ty as u8;
    buf[1..4].fill(0);
    buf[field::RECEIVER_INDEX].copy_from_slice(&receiver_index.to_le_bytes());
    buf[field::COUNTER].copy_from_slice(&counter.to_le_bytes());
}

/// The receiver index of a transport message, or `None` if `bytes` is not one (wrong type,
/// non-zero reserved bytes, or shorter than [`TRANSPORT_MIN_LEN`]). For the hot path, which only
/// needs the index to find the session.
#[inline]
pub fn transport_receiver_index(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < TRANSPORT_MIN_LEN {
        return None;
    }
    let head = bytes.first_chunk::<8>()?;
    if head[..4] != [MessageType::Transport as u8, 0, 0, 0] {
        return None;
    }
    Some(u32::from_le_bytes([head[4], head[5], head[6], head[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEPALIVE: [u8; 32] = [
        4, 0, 0, 0, 0x44, 0x33, 0x22, 0x11, 8, 7, 6, 5, 4, 3, 2, 1, // header
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae,
        0xaf, // tag
    ];

    #[test]
    fn keepalive_fields() {
        let p = Transport::new_checked(&KEEPALIVE[..]).unwrap();
        assert!(p.check_header().is_ok());
        assert_eq!(p.receiver_index(), 0x1122_3344);
        assert_eq!(p.counter(), 0x0102_0304_0506_0708);
        assert_eq!(p.header(), &KEEPALIVE[..16]);
        assert!(p.payload().is_empty());
        assert_eq!(p.tag()[0], 0xa0);
        assert_eq!(p.tag()[15], 0xaf);
        assert_eq!(p.sealed(), &KEEPALIVE[16..]);
    }

    #[test]
    fn payload_sits_between_header_and_tag() {
        let mut b = KEEPALIVE.to_vec();
        b.splice(16..16, [1, 2, 3]);
        let p = Transport::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), &[1, 2, 3]);
        assert_eq!(p.tag()[0], 0xa0);
        assert_eq!(p.sealed().len(), 19);
    }

    #[test]
    fn new_checked_wants_32_bytes() {
        for len in 0..32 {
            assert_eq!(
                Transport::new_checked(&KEEPALIVE[..len]),
                Err(WireError::Truncated)
            );
        }
    }

    #[test]
    fn check_header_rejects_bad_type_and_reserved() {
        let mut b = KEEPALIVE;
        b[0] = 1;
        assert_eq!(
            Transport::new_checked(&b[..]).unwrap().check_header(),
            Err(WireError::UnknownType(1))
        );
        let mut b = KEEPALIVE;
        b[1] = 1;
        assert_eq!(
            Transport::new_checked(&b[..]).unwrap().check_header(),
            Err(WireError::ReservedNotZero)
        );
    }

    #[test]
    fn header_writer_matches_reader() {
        let mut h = [0xffu8; 16];
        write_transport_header(&mut h, 0x1122_3344, 0x0102_0304_0506_0708);
        assert_eq!(h, KEEPALIVE[..16]);
    }

    #[test]
    fn fill_and_mut_accessors() {
        let mut b = [0xffu8; 35];
        let mut p = Transport::new_checked(&mut b[..]).unwrap();
        p.fill_header(5, u64::MAX);
        p.payload_mut().copy_from_slice(&[1, 2, 3]);
        p.tag_mut().fill(9);
        {
            let (header, payload, tag) = p.split_mut();
            assert_eq!(header[0], 4);
            assert_eq!(payload, &mut [1, 2, 3]);
            assert_eq!(tag, &mut [9; 16]);
        }
        assert_eq!(p.sealed_mut().len(), 19);
        assert_eq!(p.counter(), u64::MAX);
        assert_eq!(&b[..8], &[4, 0, 0, 0, 5, 0, 0, 0]);
    }

    #[test]
    fn hot_path_index() {
        assert_eq!(transport_receiver_index(&KEEPALIVE), Some(0x1122_3344));
        assert_eq!(transport_receiver_index(&KEEPALIVE[..31]), None);
        assert_eq!(transport_receiver_index(&[]), None);
        let mut b = KEEPALIVE;
        b[0] = 2;
        assert_eq!(transport_receiver_index(&b), None);
        let mut b = KEEPALIVE;
        b[3] = 1;
        assert_eq!(transport_receiver_index(&b), None);
    }
}
