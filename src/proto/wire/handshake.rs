//! What the handshake messages (the initiation and the response of either suite) have in
//! common: a 4-byte header, the sender index, for a response the receiver index, the Noise
//! message, then mac1 and mac2 at the end. One zero-copy view serves all three; the layout
//! (which message, so where the Noise message starts) is a type parameter and the Noise
//! message's length a const parameter, so each file keeps only what differs.

use core::marker::PhantomData;

use super::{
    array, array_mut, check_exact_len, check_header, read_u32, write_header, MessageType,
    WireError, HEADER_LEN, MAC_LEN,
};

/// Where the sender index sits in every handshake message: right after the header.
const SENDER_INDEX: usize = HEADER_LEN;

/// Which handshake message a [`HandshakeMessage`] is: its type byte and where its Noise
/// message starts. Implemented by [`InitiationLayout`] and [`ResponseLayout`].
pub trait HandshakeLayout {
    /// The type byte.
    const TYPE: MessageType;
    /// The first byte of the Noise message: after the sender index, and after the receiver
    /// index in a response.
    const NOISE_START: usize;
}

/// A handshake initiation (type 1): header, sender index, Noise message 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitiationLayout;

impl HandshakeLayout for InitiationLayout {
    const TYPE: MessageType = MessageType::Initiation;
    const NOISE_START: usize = SENDER_INDEX + 4;
}

/// A handshake response (type 2) of either suite: header, sender index, receiver index,
/// Noise message 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLayout;

impl HandshakeLayout for ResponseLayout {
    const TYPE: MessageType = MessageType::Response;
    const NOISE_START: usize = SENDER_INDEX + 8;
}

/// A zero-copy view of a handshake message laid out as `L`, whose Noise message is
/// `NOISE_LEN` bytes long. Used through [`super::Initiation`], [`super::Response`] and
/// [`super::WgResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeMessage<T: AsRef<[u8]>, L, const NOISE_LEN: usize> {
    buffer: T,
    layout: PhantomData<L>,
}

impl<T: AsRef<[u8]>, L: HandshakeLayout, const NOISE_LEN: usize> HandshakeMessage<T, L, NOISE_LEN> {
    /// The whole message's length: everything up to the Noise message, the Noise message,
    /// mac1 and mac2.
    pub const LEN: usize = L::NOISE_START + NOISE_LEN + 2 * MAC_LEN;
    const MAC1_START: usize = L::NOISE_START + NOISE_LEN;
    const MAC2_START: usize = Self::MAC1_START + MAC_LEN;

    /// Wraps a buffer without checking it. Accessors panic if it is shorter than
    /// [`Self::LEN`]; use [`Self::new_checked`] for anything received.
    pub const fn new_unchecked(buffer: T) -> Self {
        HandshakeMessage {
            buffer,
            layout: PhantomData,
        }
    }

    /// Wraps a buffer of exactly [`Self::LEN`] bytes. Only the length is checked (as in
    /// smoltcp); the `Repr`'s `parse` or [`super::message_type`] check the header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_exact_len(buffer.as_ref(), Self::LEN)?;
        Ok(Self::new_unchecked(buffer))
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Fails unless the buffer is exactly [`Self::LEN`] long and its header is `L`'s type
    /// with the reserved bytes zero: what a `Repr`'s `parse` checks before reading.
    pub(super) fn check(&self) -> Result<(), WireError> {
        check_exact_len(self.buffer.as_ref(), Self::LEN)?;
        check_header(self.buffer.as_ref(), L::TYPE)
    }

    /// The sender's receiver index for this handshake.
    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), SENDER_INDEX)
    }

    /// The Noise message.
    pub fn noise_message(&self) -> &[u8; NOISE_LEN] {
        array(self.buffer.as_ref(), L::NOISE_START)
    }

    /// mac1, the 16 bytes after the Noise message.
    pub fn mac1(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), Self::MAC1_START)
    }

    /// mac2, the last 16 bytes (zeros when the sender holds no cookie; always in a response,
    /// since initiators never send cookies).
    pub fn mac2(&self) -> &[u8; MAC_LEN] {
        array(self.buffer.as_ref(), Self::MAC2_START)
    }

    /// The bytes mac1 covers: everything before it.
    pub fn mac1_covered(&self) -> &[u8] {
        &self.buffer.as_ref()[..Self::MAC1_START]
    }

    /// The bytes mac2 covers: everything before it.
    pub fn mac2_covered(&self) -> &[u8] {
        &self.buffer.as_ref()[..Self::MAC2_START]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>, L: HandshakeLayout, const NOISE_LEN: usize>
    HandshakeMessage<T, L, NOISE_LEN>
{
    /// Writes the type, zeroes the reserved bytes and writes the sender index.
    fn fill_type_and_sender(&mut self, sender_index: u32) {
        let b = self.buffer.as_mut();
        write_header(b, L::TYPE);
        b[SENDER_INDEX..SENDER_INDEX + 4].copy_from_slice(&sender_index.to_le_bytes());
    }

    /// The Noise message, for the handshake to write into.
    pub fn noise_message_mut(&mut self) -> &mut [u8; NOISE_LEN] {
        array_mut(self.buffer.as_mut(), L::NOISE_START)
    }

    /// mac1, for writing.
    pub fn mac1_mut(&mut self) -> &mut [u8; MAC_LEN] {
        array_mut(self.buffer.as_mut(), Self::MAC1_START)
    }

    /// mac2, for writing.
    pub fn mac2_mut(&mut self) -> &mut [u8; MAC_LEN] {
        array_mut(self.buffer.as_mut(), Self::MAC2_START)
    }

    /// Writes the Noise message, mac1 and mac2 (the header is the caller's).
    pub(super) fn emit_body(
        &mut self,
        noise_message: &[u8; NOISE_LEN],
        mac1: &[u8; MAC_LEN],
        mac2: &[u8; MAC_LEN],
    ) {
        *self.noise_message_mut() = *noise_message;
        *self.mac1_mut() = *mac1;
        *self.mac2_mut() = *mac2;
    }
}

impl<T: AsRef<[u8]>, const NOISE_LEN: usize> HandshakeMessage<T, InitiationLayout, NOISE_LEN> {
    /// Whether the initiator sent a cookie: mac2 is all zeros when its jar was empty.
    pub fn has_cookie(&self) -> bool {
        self.mac2().iter().any(|&b| b != 0)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>, const NOISE_LEN: usize>
    HandshakeMessage<T, InitiationLayout, NOISE_LEN>
{
    /// Writes the type, zeroes the reserved bytes and writes the sender index.
    pub fn fill_header(&mut self, sender_index: u32) {
        self.fill_type_and_sender(sender_index);
    }
}

/// Where the receiver index sits in a response: after the sender index.
const RECEIVER_INDEX: usize = SENDER_INDEX + 4;

impl<T: AsRef<[u8]>, const NOISE_LEN: usize> HandshakeMessage<T, ResponseLayout, NOISE_LEN> {
    /// The initiator's sender index, echoed.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), RECEIVER_INDEX)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>, const NOISE_LEN: usize>
    HandshakeMessage<T, ResponseLayout, NOISE_LEN>
{
    /// Writes the type, zeroes the reserved bytes and writes both indices.
    pub fn fill_header(&mut self, sender_index: u32, receiver_index: u32) {
        self.fill_type_and_sender(sender_index);
        self.buffer.as_mut()[RECEIVER_INDEX..RECEIVER_INDEX + 4]
            .copy_from_slice(&receiver_index.to_le_bytes());
    }
}

/// A parsed handshake response of either suite (the suites differ only in the Noise message's
/// length). Used through [`super::ResponseRepr`] and [`super::WgResponseRepr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponseRepr<const NOISE_LEN: usize> {
    /// The responder's receiver index.
    pub sender_index: u32,
    /// The initiator's sender index, echoed.
    pub receiver_index: u32,
    /// Noise message 2.
    pub noise_message: [u8; NOISE_LEN],
    /// mac1.
    pub mac1: [u8; MAC_LEN],
    /// mac2.
    pub mac2: [u8; MAC_LEN],
}

/// A response view whose Noise message is `NOISE_LEN` bytes long.
type ResponseView<T, const NOISE_LEN: usize> = HandshakeMessage<T, ResponseLayout, NOISE_LEN>;

impl<const NOISE_LEN: usize> HandshakeResponseRepr<NOISE_LEN> {
    /// Parses a view, rejecting a wrong length, type byte or non-zero reserved bytes.
    pub fn parse<T: AsRef<[u8]>>(packet: &ResponseView<T, NOISE_LEN>) -> Result<Self, WireError> {
        packet.check()?;
        Ok(HandshakeResponseRepr {
            sender_index: packet.sender_index(),
            receiver_index: packet.receiver_index(),
            noise_message: *packet.noise_message(),
            mac1: *packet.mac1(),
            mac2: *packet.mac2(),
        })
    }

    /// Writes every byte of the message.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ResponseView<T, NOISE_LEN>) {
        packet.fill_header(self.sender_index, self.receiver_index);
        packet.emit_body(&self.noise_message, &self.mac1, &self.mac2);
    }

    /// The length of the emitted message.
    pub const fn buffer_len(&self) -> usize {
        ResponseView::<&'static [u8], NOISE_LEN>::LEN
    }
}
