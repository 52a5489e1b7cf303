//! Wire formats, as specified byte by byte in `docs/protocol.md`, and the IP header view
//! ([`IpPacket`]) and Internet checksum ([`checksum`]) that the data plane and the offloads use
//! on the packets inside the tunnel.
//!
//! Modelled on smoltcp's `wire` module: each message has a zero-copy view over a buffer
//! (`Initiation<T: AsRef<[u8]>>` and friends) whose `new_checked` validates the length once, so
//! that no accessor can panic afterwards, and a `Repr` (an owned, parsed form) with
//! `parse`/`emit`/`buffer_len`. The handshake messages share one view, [`HandshakeMessage`],
//! laid out per message and suite.
//!
//! Receivers call [`message_type`] first: it checks the type byte, the reserved bytes and the
//! length for that type, the checks the spec asks for before anything else.

mod assignment;
pub mod checksum;
mod cookie_reply;
mod handshake;
mod initiation;
mod ip;
mod push;
mod response;
mod transport;
mod wg_response;

pub use assignment::AddressAssignment;
pub use cookie_reply::{CookieReply, CookieReplyRepr, COOKIE_NONCE_LEN, ENCRYPTED_COOKIE_LEN};
pub use handshake::{
    HandshakeLayout, HandshakeMessage, HandshakeResponseRepr, InitiationLayout, ResponseLayout,
};
pub use initiation::{Initiation, InitiationRepr};
pub use ip::{
    IpError, IpLayout, IpPacket, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN,
};
pub use push::{
    check_dns_server, check_route, push_receiver_index, PushConfig, PushError,
    MAX_PUSH_DNS_PER_FAMILY, MAX_PUSH_PAYLOAD_LEN, MAX_PUSH_ROUTES_PER_FAMILY, PUSH_MIN_LEN,
    PUSH_VERSION,
};
pub use response::{Response, ResponseRepr};
pub use transport::{
    transport_receiver_index, write_sealed_header, write_transport_header, Transport,
};
pub use wg_response::{WgResponse, WgResponseRepr, WG_RESPONSE_LEN, WG_RESPONSE_NOISE_LEN};

/// Length of a handshake initiation (type 1).
pub const INITIATION_LEN: usize = 148;
/// Length of a handshake response (type 2).
pub const RESPONSE_LEN: usize = 116;
/// Length of a cookie reply (type 3).
pub const COOKIE_REPLY_LEN: usize = 64;
/// Length of the transport header (type, reserved, receiver index, counter); it is the AAD.
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Smallest transport message: header and tag around an empty payload (a keepalive).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// Length of the address assignment payload carried in the response.
pub const ASSIGNMENT_LEN: usize = 24;
/// Length of mac1 and mac2.
pub const MAC_LEN: usize = 16;
/// Length of Noise message 1 inside an initiation (bytes 8..116).
pub const INITIATION_NOISE_LEN: usize = 108;
/// Length of Noise message 2 inside a response (bytes 12..84).
pub const RESPONSE_NOISE_LEN: usize = 72;
/// Length of the common header: type byte and three reserved bytes.
pub const HEADER_LEN: usize = 4;

/// Why bytes are not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the smallest message of its kind.
    #[error("message truncated")]
    Truncated,
    /// Not the exact length its type requires.
    #[error("wrong message length: expected {expected}, got {got}")]
    WrongLength {
        /// The length the type requires.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// The type byte names no message (or not the one expected).
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// One of the three reserved header bytes is not zero.
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    /// A field holds a value outside its range; names the field.
    #[error("field out of range: {0}")]
    BadField(&'static str),
}

/// The five message types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Handshake initiation, exactly [`INITIATION_LEN`] bytes.
    Initiation = 1,
    /// Handshake response, exactly [`RESPONSE_LEN`] bytes.
    Response = 2,
    /// Cookie reply, exactly [`COOKIE_REPLY_LEN`] bytes.
    CookieReply = 3,
    /// Transport data, at least [`TRANSPORT_MIN_LEN`] bytes.
    Transport = 4,
    /// Routes and DNS servers pushed by the server, sealed like transport data; at least
    /// [`PUSH_MIN_LEN`] bytes. Receivers that predate it drop it as an unknown type.
    Push = 5,
}

impl MessageType {
    /// The type for a type byte, if it names one.
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(MessageType::Initiation),
            2 => Some(MessageType::Response),
            3 => Some(MessageType::CookieReply),
            4 => Some(MessageType::Transport),
            5 => Some(MessageType::Push),
            _ => None,
        }
    }
}

/// Classifies a received datagram: checks the 4-byte header (a known type, reserved bytes zero)
/// and the exact (or, for transport and push, minimum) length for that type.
pub fn message_type(bytes: &[u8]) -> Result<MessageType, WireError> {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(WireError::Truncated);
    };
    let ty = MessageType::from_u8(header[0]).ok_or(WireError::UnknownType(header[0]))?;
    check_reserved(header)?;
    let got = bytes.len();
    let expected = match ty {
        MessageType::Initiation => INITIATION_LEN,
        MessageType::Response => RESPONSE_LEN,
        MessageType::CookieReply => COOKIE_REPLY_LEN,
        MessageType::Transport if got < TRANSPORT_MIN_LEN => return Err(WireError::Truncated),
        MessageType::Transport => return Ok(ty),
        MessageType::Push if got < PUSH_MIN_LEN => return Err(WireError::Truncated),
        MessageType::Push => return Ok(ty),
    };
    if got != expected {
        return Err(WireError::WrongLength { expected, got });
    }
    Ok(ty)
}

/// Fails unless the three reserved header bytes are zero.
fn check_reserved(header: &[u8; HEADER_LEN]) -> Result<(), WireError> {
    if header[1..] == [0, 0, 0] {
        Ok(())
    } else {
        Err(WireError::ReservedNotZero)
    }
}

/// Checks the header of an already length-checked buffer: type `ty` and reserved bytes zero.
fn check_header(bytes: &[u8], ty: MessageType) -> Result<(), WireError> {
    let header = bytes
        .first_chunk::<HEADER_LEN>()
        .ok_or(WireError::Truncated)?;
    if header[0] != ty as u8 {
        return Err(WireError::UnknownType(header[0]));
    }
    check_reserved(header)
}

/// Writes the type byte and zeroes the reserved bytes.
fn write_header(bytes: &mut [u8], ty: MessageType) {
    bytes[0] = ty as u8;
    bytes[1..HEADER_LEN].fill(0);
}

/// Fails with `WrongLength` unless `bytes` is exactly `expected` long.
fn check_exact_len(bytes: &[u8], expected: usize) -> Result<(), WireError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(WireError::WrongLength {
            expected,
            got: bytes.len(),
        })
    }
}

/// The `N` bytes at `start`. Only called with ranges inside a length-checked buffer.
fn array<const N: usize>(bytes: &[u8], start: usize) -> &[u8; N] {
    // The slice has exactly N bytes, so the conversion cannot fail; the indexing itself panics
    // only for buffers built with `new_unchecked` that are too short, as documented there.
    bytes[start..start + N]
        .try_into()
        .unwrap_or_else(|_| unreachable!())
}

/// Mutable form of [`array`].
fn array_mut<const N: usize>(bytes: &mut [u8], start: usize) -> &mut [u8; N] {
    (&mut bytes[start..start + N])
        .try_into()
        .unwrap_or_else(|_| unreachable!())
}

/// A little-endian `u32` at `start`.
fn read_u32(bytes: &[u8], start: usize) -> u32 {
    u32::from_le_bytes(*array(bytes, start))
}

/// Compares without an early exit, so timing does not reveal how many leading bytes matched
/// (ring's `constant_time` module is deprecated). For the MACs of both suites.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Offsets of mac1 and mac2 in a full initiation or response (of either suite: both end in
/// mac1 and mac2), or `None` if too short.
pub(crate) fn mac_offsets(len: usize) -> Option<(usize, usize)> {
    let mac1 = len.checked_sub(2 * MAC_LEN)?;
    Some((mac1, mac1 + MAC_LEN))
}

/// One of the two MACs that end every initiation and response (of either suite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MacSlot {
    /// mac1, `len-32..len-16`.
    Mac1,
    /// mac2, the last 16 bytes.
    Mac2,
}

/// Where the MAC in `slot` of a full initiation or response lies (it covers everything before
/// it), or `None` if too short.
fn mac_range(len: usize, slot: MacSlot) -> Option<core::ops::Range<usize>> {
    let (mac1, mac2) = mac_offsets(len)?;
    let start = match slot {
        MacSlot::Mac1 => mac1,
        MacSlot::Mac2 => mac2,
    };
    Some(start..start + MAC_LEN)
}

/// Writes `mac` of everything before `slot` into `slot`, in a suite's own MAC. Does nothing to
/// a buffer shorter than both MACs.
pub(crate) fn write_mac(msg: &mut [u8], slot: MacSlot, mac: impl FnOnce(&[u8]) -> [u8; MAC_LEN]) {
    if let Some(range) = mac_range(msg.len(), slot) {
        let tag = mac(&msg[..range.start]);
        msg[range].copy_from_slice(&tag);
    }
}

/// Whether `slot` holds `mac` of everything before it, compared in constant time (false if
/// the buffer is shorter than both MACs).
pub(crate) fn verify_mac(
    msg: &[u8],
    slot: MacSlot,
    mac: impl FnOnce(&[u8]) -> [u8; MAC_LEN],
) -> bool {
    match mac_range(msg.len(), slot) {
        Some(range) => ct_eq(&mac(&msg[..range.start]), &msg[range]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        if len > 0 {
            v[0] = ty;
        }
        v
    }

    #[test]
    fn classifies_each_type_at_its_length() {
        assert_eq!(message_type(&msg(1, 148)), Ok(MessageType::Initiation));
        assert_eq!(message_type(&msg(2, 116)), Ok(MessageType::Response));
        assert_eq!(message_type(&msg(3, 64)), Ok(MessageType::CookieReply));
        assert_eq!(message_type(&msg(4, 32)), Ok(MessageType::Transport));
        assert_eq!(message_type(&msg(4, 1500)), Ok(MessageType::Transport));
        assert_eq!(message_type(&msg(5, 33)), Ok(MessageType::Push));
        assert_eq!(message_type(&msg(5, 1000)), Ok(MessageType::Push));
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert_eq!(
            message_type(&msg(1, 147)),
            Err(WireError::WrongLength {
                expected: 148,
                got: 147
            })
        );
        assert_eq!(
            message_type(&msg(1, 149)),
            Err(WireError::WrongLength {
                expected: 148,
                got: 149
            })
        );
        assert_eq!(
            message_type(&msg(2, 148)),
            Err(WireError::WrongLength {
                expected: 116,
                got: 148
            })
        );
        assert_eq!(
            message_type(&msg(3, 65)),
            Err(WireError::WrongLength {
                expected: 64,
                got: 65
            })
        );
        assert_eq!(message_type(&msg(4, 31)), Err(WireError::Truncated));
        // A push message holds at least its version byte.
        assert_eq!(message_type(&msg(5, 32)), Err(WireError::Truncated));
    }

    #[test]
    fn rejects_short_headers() {
        for len in 0..4 {
            assert_eq!(message_type(&msg(4, len)), Err(WireError::Truncated));
        }
    }

    #[test]
    fn rejects_unknown_types() {
        assert_eq!(message_type(&msg(0, 148)), Err(WireError::UnknownType(0)));
        assert_eq!(message_type(&msg(6, 148)), Err(WireError::UnknownType(6)));
        assert_eq!(
            message_type(&msg(0xff, 32)),
            Err(WireError::UnknownType(0xff))
        );
    }

    #[test]
    fn rejects_nonzero_reserved_bytes() {
        for i in 1..4 {
            let mut m = msg(4, 32);
            m[i] = 1;
            assert_eq!(message_type(&m), Err(WireError::ReservedNotZero));
        }
    }

    #[test]
    fn message_type_never_panics() {
        for ty in 0..=6u8 {
            for len in 0..200 {
                let _ = message_type(&msg(ty, len));
            }
        }
    }

    #[test]
    fn lengths_add_up() {
        assert_eq!(INITIATION_LEN, 8 + INITIATION_NOISE_LEN + 2 * MAC_LEN);
        assert_eq!(RESPONSE_LEN, 12 + RESPONSE_NOISE_LEN + 2 * MAC_LEN);
        assert_eq!(RESPONSE_NOISE_LEN, 32 + ASSIGNMENT_LEN + TAG_LEN);
        assert_eq!(COOKIE_REPLY_LEN, 8 + 24 + MAC_LEN + TAG_LEN);
        assert_eq!(TRANSPORT_MIN_LEN, 32);
        assert_eq!(PUSH_MIN_LEN, TRANSPORT_MIN_LEN + 1);
    }

    #[test]
    fn from_u8_round_trips() {
        for ty in [
            MessageType::Initiation,
            MessageType::Response,
            MessageType::CookieReply,
            MessageType::Transport,
            MessageType::Push,
        ] {
            assert_eq!(MessageType::from_u8(ty as u8), Some(ty));
        }
        assert_eq!(MessageType::from_u8(0), None);
    }
}
