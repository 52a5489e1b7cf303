//! One pair of transport keys: AES-256-GCM in place, with the send counter and the replay window.

use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use super::constants::{
    MESSAGE_BYTES, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
};
use super::replay::{ReplayError, ReplayWindow};
use super::time::Instant;
use super::wire::{self, MessageType, TAG_LEN, TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN};

/// Why a transport packet could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The buffer cannot hold header, payload and tag.
    #[error("buffer too small for header, payload and tag")]
    BufferTooSmall,
    /// Shorter than a header and a tag, or not a transport message.
    #[error("malformed transport message")]
    Malformed,
    /// This key has sealed or opened as many messages as AES-GCM allows.
    #[error("key used for the maximum number of messages; a new handshake is needed")]
    KeyExhausted,
    /// The key is older than `REJECT_AFTER_TIME`.
    #[error("key expired; a new handshake is needed")]
    KeyExpired,
    /// The counter was seen already or is behind the window.
    #[error("replayed or too old: {0}")]
    Replay(#[from] ReplayError),
    /// Authentication failed: wrong key, or header, ciphertext or tag altered.
    #[error("authentication failed")]
    Authentication,
}

/// The keys of one completed handshake, shared by every worker that sends or receives for it.
///
/// All methods take `&self`: the send counter is an atomic `fetch_add`, so several threads can
/// seal at once and no nonce is ever used twice; the replay window is lock-free.
pub struct Keypair {
    sealing: LessSafeKey,
    opening: LessSafeKey,
    send_counter: AtomicU64,
    replay: ReplayWindow,
    /// The index peers put in packets sent to us under this keypair.
    pub local_index: u32,
    /// The index we put in packets we send under this keypair.
    pub remote_index: u32,
    /// When the handshake that made it completed.
    pub created: Instant,
    /// True on the side that sent the initiation.
    pub is_initiator: bool,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("created", &self.created)
            .field("sent", &self.messages_sent())
            .finish()
    }
}

/// The GCM nonce: 32 zero bits followed by the 64-bit counter, little-endian (docs/protocol.md).
fn nonce_for(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aes_key(bytes: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is exactly what AES-256-GCM takes, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256 key is 32 bytes"))
}

impl Drop for Keypair {
    fn drop(&mut self) {
        // ring keeps the expanded AES key schedule and the GHASH key inside `LessSafeKey` and
        // does not erase them. Overwriting each key in place with one made from an all-zero key
        // replaces every secret byte of the schedule with public ones; `black_box` keeps the
        // compiler from dropping the stores as dead.
        let zero = [0u8; 32];
        self.sealing = aes_key(&zero);
        self.opening = aes_key(&zero);
        std::hint::black_box((&self.sealing, &self.opening));
    }
}

impl Keypair {
    /// Builds a keypair from the raw keys of the Noise split. The raw bytes are the caller's to
    /// zeroize (they come wrapped in `Zeroizing`).
    pub fn new(
        send_key: &Zeroizing<[u8; 32]>,
        recv_key: &Zeroizing<[u8; 32]>,
        local_index: u32,
        remote_index: u32,
        created: Instant,
        is_initiator: bool,
    ) -> Self {
        Keypair {
            sealing: aes_key(send_key),
            opening: aes_key(recv_key),
            send_counter: AtomicU64::new(0),
            replay: ReplayWindow::new(),
            local_index,
            remote_index,
            created,
            is_initiator,
        }
    }

    /// How many counters have been taken for sending.
    pub fn messages_sent(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// True once the keypair may no longer be used (age or message count).
    pub fn is_expired(&self, now: Instant) -> bool {
        now - self.created >= REJECT_AFTER_TIME || self.messages_sent() >= REJECT_AFTER_MESSAGES
    }

    /// True once the initiator should start a new handshake because of this keypair's use:
    /// either direction's counter passed `REKEY_AFTER_MESSAGES` (the initiator sees the
    /// responder's counter in what it receives, so only the initiator needs to act).
    pub fn wants_rekey_by_count(&self) -> bool {
        self.messages_sent() >= REKEY_AFTER_MESSAGES
            || self
                .replay
                .highest()
                .is_some_and(|c| c >= REKEY_AFTER_MESSAGES)
    }

    /// Seals in place. `buf[16..16 + payload_len]` holds the plaintext; `buf` must have room
    /// for the header before and the tag after. Returns the length of the whole message.
    ///
    /// A message of more than [`MESSAGE_BYTES`] (header and plaintext) takes one counter per
    /// started [`MESSAGE_BYTES`] and is sealed under the first: the count behind
    /// [`REJECT_AFTER_MESSAGES`] and rekeying is then one of 2 KiB messages whatever the sizes.
    /// The receiver's replay window takes the gap.
    #[inline]
    pub fn seal(
        &self,
        buf: &mut [u8],
        payload_len: usize,
        now: Instant,
    ) -> Result<usize, TransportError> {
        self.seal_as(MessageType::Transport, buf, payload_len, now)
    }

    /// Seals a push message (type 5) in place, as [`Keypair::seal`] seals transport data:
    /// same counter, same keys; the type byte in the AAD keeps the two apart.
    pub fn seal_push(
        &self,
        buf: &mut [u8],
        payload_len: usize,
        now: Instant,
    ) -> Result<usize, TransportError> {
        self.seal_as(MessageType::Push, buf, payload_len, now)
    }

    #[inline]
    fn seal_as(
        &self,
        ty: MessageType,
        buf: &mut [u8],
        payload_len: usize,
        now: Instant,
    ) -> Result<usize, TransportError> {
        let total = TRANSPORT_HEADER_LEN + payload_len + TAG_LEN;
        if buf.len() < total {
            return Err(TransportError::BufferTooSmall);
        }
        if now - self.created >= REJECT_AFTER_TIME {
            return Err(TransportError::KeyExpired);
        }
        let charged = (TRANSPORT_HEADER_LEN + payload_len).div_ceil(MESSAGE_BYTES) as u64;
        let counter = self.send_counter.fetch_add(charged, Ordering::Relaxed);
        if counter + charged > REJECT_AFTER_MESSAGES {
            return Err(TransportError::KeyExhausted);
        }
        let (header, rest) = buf.split_at_mut(TRANSPORT_HEADER_LEN);
        let header: &mut [u8; TRANSPORT_HEADER_LEN] = header.try_into().expect("split at 16");
        wire::write_sealed_header(header, ty, self.remote_index, counter);
        let (payload, tag_space) = rest.split_at_mut(payload_len);
        let tag = self
            .sealing
            .seal_in_place_separate_tag(nonce_for(counter), Aad::from(&*header), payload)
            .map_err(|_| TransportError::BufferTooSmall)?;
        tag_space[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Opens a whole transport message in place and returns its counter and the plaintext
    /// range within `buf` (empty for a keepalive). The counter is recorded in the replay window
    /// only after the packet authenticated.
    pub fn open(
        &self,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<(u64, std::ops::Range<usize>), TransportError> {
        if buf.len() < TRANSPORT_MIN_LEN {
            return Err(TransportError::Malformed);
        }
        if now - self.created >= REJECT_AFTER_TIME {
            return Err(TransportError::KeyExpired);
        }
        let mut header = [0u8; TRANSPORT_HEADER_LEN];
        header.copy_from_slice(&buf[..TRANSPORT_HEADER_LEN]);
        let counter = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        self.replay.check(counter)?;
        let plain_len = self
            .opening
            .open_in_place(
                nonce_for(counter),
                Aad::from(&header),
                &mut buf[TRANSPORT_HEADER_LEN..],
            )
            .map_err(|_| TransportError::Authentication)?
            .len();
        self.replay.update(counter)?;
        Ok((
            counter,
            TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + plain_len,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::constants::MAX_MTU;

    /// A sending keypair and the peer's matching receiving one.
    fn pair() -> (Keypair, Keypair) {
        let (a, b) = (Zeroizing::new([1u8; 32]), Zeroizing::new([2u8; 32]));
        let t = Instant::from_nanos(1);
        (
            Keypair::new(&a, &b, 1, 2, t, true),
            Keypair::new(&b, &a, 2, 1, t, false),
        )
    }

    /// Seals `payload_len` bytes; returns the sealed length and the counter it used.
    fn seal(k: &Keypair, payload_len: usize) -> Result<(Vec<u8>, u64), TransportError> {
        let mut buf = vec![0x5a; TRANSPORT_HEADER_LEN + payload_len + TAG_LEN];
        let n = k.seal(&mut buf, payload_len, Instant::from_nanos(2))?;
        buf.truncate(n);
        let counter = u64::from_le_bytes(buf[8..16].try_into().unwrap());
        Ok((buf, counter))
    }

    #[test]
    fn messages_larger_than_2_kib_are_charged_by_size() {
        let (tx, rx) = pair();
        // Up to 2 KiB with the header (every packet of at most MAX_MTU): one message each.
        seal(&tx, 0).unwrap();
        seal(&tx, usize::from(MAX_MTU)).unwrap();
        seal(&tx, 2048 - TRANSPORT_HEADER_LEN).unwrap();
        assert_eq!(tx.messages_sent(), 3);
        // A relayed 60 000-byte super-packet is 60 016 bytes of AAD and plaintext: 30 times
        // the 2 KiB behind REJECT_AFTER_MESSAGES.
        let (big, counter) = seal(&tx, 60_000).unwrap();
        assert_eq!(counter, 3);
        assert_eq!(tx.messages_sent(), 3 + 30);
        let (small, next) = seal(&tx, 100).unwrap();
        assert_eq!(
            next, 33,
            "the next packet's counter follows the charged ones"
        );
        // The receiver takes the jump in counters.
        for mut packet in [big, small] {
            rx.open(&mut packet, Instant::from_nanos(3)).unwrap();
        }
    }

    #[test]
    fn a_push_message_opens_and_cannot_pass_for_transport_data() {
        let (tx, rx) = pair();
        let mut buf = vec![0u8; TRANSPORT_HEADER_LEN + 3 + TAG_LEN];
        buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + 3].copy_from_slice(&[1, 2, 3]);
        let n = tx.seal_push(&mut buf, 3, Instant::from_nanos(2)).unwrap();
        assert_eq!(buf[0], 5, "type byte");
        let mut relabelled = buf.clone();
        relabelled[0] = 4;
        assert_eq!(
            rx.open(&mut relabelled[..n], Instant::from_nanos(3)),
            Err(TransportError::Authentication),
            "the type byte is authenticated"
        );
        let (counter, plain) = rx.open(&mut buf[..n], Instant::from_nanos(3)).unwrap();
        assert_eq!(counter, 0);
        assert_eq!(&buf[plain], &[1, 2, 3]);
        // The same counter sequence as transport data.
        let (_, next) = seal(&tx, 10).unwrap();
        assert_eq!(next, 1);
    }

    #[test]
    fn a_large_message_past_the_limit_is_refused() {
        let (tx, _) = pair();
        tx.send_counter
            .store(REJECT_AFTER_MESSAGES - 10, Ordering::Relaxed);
        // Would take 30 messages' worth with 10 left.
        assert_eq!(seal(&tx, 60_000).err(), Some(TransportError::KeyExhausted));
        let (tx, _) = pair();
        tx.send_counter
            .store(REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        seal(&tx, 1000).unwrap();
        assert_eq!(seal(&tx, 1000).err(), Some(TransportError::KeyExhausted));
    }
}
