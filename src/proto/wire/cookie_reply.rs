//! Cookie reply (type 3, 64 bytes).

use super::{
    array, array_mut, check_exact_len, check_header, read_u32, write_header, MessageType,
    WireError, COOKIE_REPLY_LEN, MAC_LEN, TAG_LEN,
};

/// Length of the cookie reply nonce.
pub const COOKIE_NONCE_LEN: usize = 24;
/// Length of the sealed cookie: the 16-byte cookie and its tag.
pub const ENCRYPTED_COOKIE_LEN: usize = MAC_LEN + TAG_LEN;

mod field {
    use core::ops::Range;
    pub const RECEIVER_INDEX: Range<usize> = 4..8;
    pub const NONCE: Range<usize> = 8..32;
    pub const COOKIE: Range<usize> = 32..64;
}

/// A zero-copy view of a cookie reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieReply<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// Wraps a buffer without checking it. Accessors panic if it is shorter than
    /// [`COOKIE_REPLY_LEN`]; use [`CookieReply::new_checked`] for anything received.
    pub const fn new_unchecked(buffer: T) -> Self {
        CookieReply { buffer }
    }

    /// Wraps a buffer of exactly [`COOKIE_REPLY_LEN`] bytes. Only the length is checked;
    /// [`CookieReplyRepr::parse`] or [`super::message_type`] check the header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_exact_len(buffer.as_ref(), COOKIE_REPLY_LEN)?;
        Ok(CookieReply { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The sender index of the initiation this answers.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RECEIVER_INDEX.start)
    }

    /// The random nonce, bytes 8..32.
    pub fn nonce(&self) -> &[u8; COOKIE_NONCE_LEN] {
        array(self.buffer.as_ref(), field::NONCE.start)
    }

    /// The sealed cookie and its tag, bytes 32..64.
    pub fn encrypted_cookie(&self) -> &[u8; ENCRYPTED_COOKIE_LEN] {
        array(self.buffer.as_ref(), field::COOKIE.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CookieReply<T> {
    /// Writes the type, zeroes the reserved bytes and writes the receiver index.
    pub fn fill_header(&mut self, receiver_index: u32) {
        let b = self.buffer.as_mut();
        write_header(b, MessageType::CookieReply);
        b[field::RECEIVER_INDEX].copy_from_slice(&receiver_index.to_le_bytes());
    }

    /// The nonce, for writing.
    pub fn nonce_mut(&mut self) -> &mut [u8; COOKIE_NONCE_LEN] {
        array_mut(self.buffer.as_mut(), field::NONCE.start)
    }

    /// The sealed cookie, for writing (or opening in place).
    pub fn encrypted_cookie_mut(&mut self) -> &mut [u8; ENCRYPTED_COOKIE_LEN] {
        array_mut(self.buffer.as_mut(), field::COOKIE.start)
    }
}

/// A parsed cookie reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieReplyRepr {
    /// The sender index of the initiation this answers.
    pub receiver_index: u32,
    /// The random nonce.
    pub nonce: [u8; COOKIE_NONCE_LEN],
    /// The sealed cookie and its tag.
    pub encrypted_cookie: [u8; ENCRYPTED_COOKIE_LEN],
}

impl CookieReplyRepr {
    /// Parses a view, rejecting a wrong length, type byte or non-zero reserved bytes.
    pub fn parse<T: AsRef<[u8]>>(packet: &CookieReply<T>) -> Result<Self, WireError> {
        check_exact_len(packet.buffer.as_ref(), COOKIE_REPLY_LEN)?;
        check_header(packet.buffer.as_ref(), MessageType::CookieReply)?;
        Ok(CookieReplyRepr {
            receiver_index: packet.receiver_index(),
            nonce: *packet.nonce(),
            encrypted_cookie: *packet.encrypted_cookie(),
        })
    }

    /// Writes every byte of the message.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut CookieReply<T>) {
        packet.fill_header(self.receiver_index);
        *packet.nonce_mut() = self.nonce;
        *packet.encrypted_cookie_mut() = self.encrypted_cookie;
    }

    /// The length of the emitted message.
    pub const fn buffer_len(&self) -> usize {
        COOKIE_REPLY_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> [u8; COOKIE_REPLY_LEN] {
        let mut b = [0u8; COOKIE_REPLY_LEN];
        b[0] = 3;
        b[4..8].copy_from_slice(&[9, 0, 0, 0]);
        for (i, x) in b[8..].iter_mut().enumerate() {
            *x = 100 + i as u8;
        }
        b
    }

    #[test]
    fn accessors_read_their_fields() {
        let b = sample();
        let p = CookieReply::new_checked(&b[..]).unwrap();
        assert_eq!(p.receiver_index(), 9);
        assert_eq!(p.nonce()[0], 100);
        assert_eq!(p.nonce()[23], 123);
        assert_eq!(p.encrypted_cookie()[0], 124);
        assert_eq!(p.encrypted_cookie()[31], 155);
    }

    #[test]
    fn new_checked_wants_exact_length() {
        let b = [0u8; 65];
        assert_eq!(
            CookieReply::new_checked(&b[..63]),
            Err(WireError::WrongLength {
                expected: 64,
                got: 63
            })
        );
        assert!(CookieReply::new_checked(&b[..]).is_err());
        assert!(CookieReply::new_checked(&b[..64]).is_ok());
    }

    #[test]
    fn parse_checks_header() {
        let mut b = sample();
        b[0] = 4;
        assert_eq!(
            CookieReplyRepr::parse(&CookieReply::new_unchecked(&b[..])),
            Err(WireError::UnknownType(4))
        );
        let mut b = sample();
        b[2] = 1;
        assert_eq!(
            CookieReplyRepr::parse(&CookieReply::new_unchecked(&b[..])),
            Err(WireError::ReservedNotZero)
        );
        assert!(CookieReplyRepr::parse(&CookieReply::new_unchecked(&b[..3])).is_err());
    }

    #[test]
    fn repr_round_trips() {
        let b = sample();
        let repr = CookieReplyRepr::parse(&CookieReply::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(repr.buffer_len(), COOKIE_REPLY_LEN);
        let mut out = [0xeeu8; COOKIE_REPLY_LEN];
        repr.emit(&mut CookieReply::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
    }

    #[test]
    fn fill_header_layout() {
        let mut out = [0xffu8; COOKIE_REPLY_LEN];
        let mut p = CookieReply::new_unchecked(&mut out[..]);
        p.fill_header(0x0403_0201);
        p.nonce_mut().fill(0);
        p.encrypted_cookie_mut().fill(7);
        assert_eq!(&out[..8], &[3, 0, 0, 0, 1, 2, 3, 4]);
        assert!(out[8..32].iter().all(|&x| x == 0));
        assert!(out[32..].iter().all(|&x| x == 7));
    }
}
