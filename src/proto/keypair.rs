//! One pair of transport keys, sealing and opening in place, with the send counter and the replay
//! window. The suite picks the AEAD when the keypair is made (AES-256-GCM for the native suite,
//! ChaCha20-Poly1305 for WireGuard, both ring's `LessSafeKey`) and, per packet, the associated
//! data and the message limits: a branch on a field, the same for every packet of a keypair.
//! A WireGuard keypair on a CPU with AVX-512 IFMA also seals trains of messages (the segments of
//! one super-packet) several at a time (`chachapoly_batch`); the bytes are the same.

use std::sync::atomic::{AtomicU64, Ordering};

use chachapoly_batch::{BatchKey, Insert, OpenJob, SealJob, LANES};
use ring::aead::{Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use zeroize::Zeroizing;

use super::constants::{
    MESSAGE_BYTES, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    WG_REJECT_AFTER_MESSAGES, WG_REKEY_AFTER_MESSAGES,
};
use super::replay::{ReplayError, ReplayWindow};
use super::suite::Suite;
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
    /// This key has sealed or opened as many messages as its suite allows.
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

/// One message of a train ([`Keypair::seal_train`]): its plaintext's length, and the part of
/// the plaintext that is not in the train's buffer, if any (a segment's payload, sealed from
/// the super-packet it was read into rather than copied first).
#[derive(Debug, Clone, Copy)]
pub struct TrainMessage<'s> {
    /// Bytes of plaintext.
    pub len: usize,
    /// Plaintext bytes `at..at + bytes.len()` (within `len`), read from `bytes`.
    pub insert: Option<(usize, &'s [u8])>,
}

/// The keys of one completed handshake, shared by every worker that sends or receives for it.
///
/// All methods take `&self`: the send counter is an atomic `fetch_add`, so several threads can
/// seal at once and no nonce is ever used twice; the replay window is lock-free.
pub struct Keypair {
    sealing: LessSafeKey,
    /// The sealing key again, for trains sealed [`LANES`] messages at a time: WireGuard's
    /// ChaCha20-Poly1305 where the CPU runs `chachapoly_batch` (it erases itself on drop).
    train_sealing: Option<BatchKey>,
    opening: LessSafeKey,
    /// The opening key again, for the datagrams of a GRO receive opened [`LANES`] at a time
    /// (the same condition as `train_sealing`).
    train_opening: Option<BatchKey>,
    /// The protocol the keys were made by: it picks the AAD and the limits.
    suite: Suite,
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
            .field("suite", &self.suite)
            .field("created", &self.created)
            .field("sent", &self.messages_sent())
            .finish()
    }
}

/// The nonce: 32 zero bits followed by the 64-bit counter, little-endian, for both suites
/// (docs/protocol.md; WireGuard whitepaper section 5.4.6).
fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

fn nonce_for(counter: u64) -> Nonce {
    Nonce::assume_unique_for_key(nonce_bytes(counter))
}

fn aead_key(algorithm: &'static Algorithm, bytes: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is exactly what AES-256-GCM and ChaCha20-Poly1305 take: this cannot fail.
    LessSafeKey::new(UnboundKey::new(algorithm, bytes).expect("AEAD key is 32 bytes"))
}

/// How this CPU seals and opens the WireGuard suite's trains (a super-packet's segments, a
/// GRO receive's datagrams), for the start-up log: the batch where the CPU has AVX-512
/// F/BW/IFMA, else ring one message at a time. A download's server CPU depends on it
/// (docs/benchmarks.md measures both).
pub fn wireguard_train_cipher() -> &'static str {
    if BatchKey::is_supported() {
        "chacha20-poly1305, eight messages at a time (avx512 ifma)"
    } else {
        "chacha20-poly1305, one message at a time (ring; no avx512 ifma on this cpu)"
    }
}

/// The transport AEAD of a suite.
fn algorithm(suite: Suite) -> &'static Algorithm {
    match suite {
        Suite::Native => &AES_256_GCM,
        // WireGuard whitepaper section 5.4.6: ChaCha20-Poly1305 (RFC 7539).
        Suite::WireGuard => &CHACHA20_POLY1305,
    }
}

impl Drop for Keypair {
    fn drop(&mut self) {
        // ring keeps the expanded AES key schedule and the GHASH key (or the ChaCha20 key)
        // inside `LessSafeKey` and does not erase them. Overwriting each key in place with one
        // made from an all-zero key of the same algorithm replaces every secret byte with public
        // ones; `black_box` keeps the compiler from dropping the stores as dead.
        let zero = [0u8; 32];
        let algorithm = algorithm(self.suite);
        self.sealing = aead_key(algorithm, &zero);
        self.opening = aead_key(algorithm, &zero);
        std::hint::black_box((&self.sealing, &self.opening));
    }
}

impl Keypair {
    /// Builds a native-suite keypair from the raw keys of the Noise split. The raw bytes are the
    /// caller's to zeroize (they come wrapped in `Zeroizing`).
    pub fn new(
        send_key: &Zeroizing<[u8; 32]>,
        recv_key: &Zeroizing<[u8; 32]>,
        local_index: u32,
        remote_index: u32,
        created: Instant,
        is_initiator: bool,
    ) -> Self {
        Self::for_suite(
            Suite::Native,
            send_key,
            recv_key,
            local_index,
            remote_index,
            created,
            is_initiator,
        )
    }

    /// [`Keypair::new`] for the keys of a handshake of `suite`.
    pub fn for_suite(
        suite: Suite,
        send_key: &Zeroizing<[u8; 32]>,
        recv_key: &Zeroizing<[u8; 32]>,
        local_index: u32,
        remote_index: u32,
        created: Instant,
        is_initiator: bool,
    ) -> Self {
        let algorithm = algorithm(suite);
        let (train_sealing, train_opening) = match suite {
            Suite::WireGuard => (BatchKey::new(send_key), BatchKey::new(recv_key)),
            Suite::Native => (None, None),
        };
        Keypair {
            sealing: aead_key(algorithm, send_key),
            train_sealing,
            opening: aead_key(algorithm, recv_key),
            train_opening,
            suite,
            send_counter: AtomicU64::new(0),
            replay: ReplayWindow::with_limit(reject_after_messages(suite)),
            local_index,
            remote_index,
            created,
            is_initiator,
        }
    }

    /// The protocol these keys belong to.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// How many counters have been taken for sending.
    pub fn messages_sent(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// True once the keypair may no longer be used (age or message count).
    pub fn is_expired(&self, now: Instant) -> bool {
        now - self.created >= REJECT_AFTER_TIME
            || self.messages_sent() >= reject_after_messages(self.suite)
    }

    /// True once the initiator should start a new handshake because of this keypair's use:
    /// either direction's counter passed `REKEY_AFTER_MESSAGES` (the initiator sees the
    /// responder's counter in what it receives, so only the initiator needs to act).
    pub fn wants_rekey_by_count(&self) -> bool {
        let rekey_after = match self.suite {
            Suite::Native => REKEY_AFTER_MESSAGES,
            Suite::WireGuard => WG_REKEY_AFTER_MESSAGES,
        };
        self.messages_sent() >= rekey_after
            || self.replay.highest().is_some_and(|c| c >= rekey_after)
    }

    /// Seals in place. `buf[16..16 + payload_len]` holds the plaintext; `buf` must have room
    /// for the header before and the tag after. Returns the length of the whole message.
    ///
    /// Native suite: a message of more than [`MESSAGE_BYTES`] (header and plaintext) takes one
    /// counter per started [`MESSAGE_BYTES`] and is sealed under the first: the count behind
    /// [`REJECT_AFTER_MESSAGES`] and rekeying is then one of 2 KiB messages whatever the sizes.
    /// The receiver's replay window takes the gap. WireGuard: one counter per message, as its
    /// peers expect (ChaCha20-Poly1305 has no such size-dependent limit).
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
    /// same counter, same keys; the type byte in the AAD keeps the two apart. Native suite
    /// only: a WireGuard peer knows no type 5 (the caller never pushes to one).
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
        let counter = self.take_counters(self.charge(payload_len), 1)?;
        self.seal_at(ty, counter, buf, payload_len)?;
        Ok(total)
    }

    /// Counters one message of `payload_len` bytes takes. Native suite: one per started
    /// [`MESSAGE_BYTES`] (see [`Keypair::seal`]); WireGuard: one.
    #[inline]
    fn charge(&self, payload_len: usize) -> u64 {
        match self.suite {
            Suite::Native => (TRANSPORT_HEADER_LEN + payload_len).div_ceil(MESSAGE_BYTES) as u64,
            Suite::WireGuard => 1,
        }
    }

    /// Takes `charged` counters for each of `messages` messages and returns the first.
    #[inline]
    fn take_counters(&self, charged: u64, messages: usize) -> Result<u64, TransportError> {
        let total = charged * messages as u64;
        let counter = self.send_counter.fetch_add(total, Ordering::Relaxed);
        let limit = reject_after_messages(self.suite);
        // The WireGuard limit is near u64::MAX, and the counter keeps growing on failures.
        if counter.saturating_add(total) > limit {
            // Leave it at the limit, so it cannot wrap around to a used nonce.
            self.send_counter.store(limit, Ordering::Relaxed);
            return Err(TransportError::KeyExhausted);
        }
        Ok(counter)
    }

    /// Writes the header and seals `buf[16..16 + payload_len]` under `counter`, taken already.
    #[inline]
    fn seal_at(
        &self,
        ty: MessageType,
        counter: u64,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<(), TransportError> {
        let (header, rest) = buf.split_at_mut(TRANSPORT_HEADER_LEN);
        let header: &mut [u8; TRANSPORT_HEADER_LEN] = header.try_into().expect("split at 16");
        wire::write_sealed_header(header, ty, self.remote_index, counter);
        let (payload, tag_space) = rest.split_at_mut(payload_len);
        let tag = self
            .sealing
            .seal_in_place_separate_tag(nonce_for(counter), self.aad(header), payload)
            .map_err(|_| TransportError::BufferTooSmall)?;
        tag_space[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals a train of `count` transport messages in place: message i starts at
    /// `buf[i * stride]`, its plaintext is the `message(i).len` bytes after its header (but
    /// for what `message(i).insert` gives), and header, plaintext and tag fit in `stride`
    /// bytes (the last in what `buf` has left). Takes consecutive counters, as `count` calls of
    /// [`Keypair::seal`] would, and returns where the last message ends. Nothing is sealed and
    /// no counter taken if a message does not fit.
    ///
    /// WireGuard on a CPU with AVX-512 IFMA: [`LANES`] messages at a time, inserts copied as
    /// they are encrypted (the remainder of fewer than half as many one at a time, where that
    /// is faster). Elsewhere inserts are copied in first, then each message sealed alone.
    pub fn seal_train<'s>(
        &self,
        buf: &mut [u8],
        stride: usize,
        count: usize,
        message: impl Fn(usize) -> TrainMessage<'s>,
        now: Instant,
    ) -> Result<usize, TransportError> {
        if count == 0 {
            return Ok(0);
        }
        let overhead = TRANSPORT_HEADER_LEN + TAG_LEN;
        let fits = |i: usize| {
            let m = message(i);
            let insert_fits = m
                .insert
                .is_none_or(|(at, bytes)| at.saturating_add(bytes.len()) <= m.len);
            insert_fits && (i + 1 == count || m.len + overhead <= stride)
        };
        let end = (count - 1) * stride + message(count - 1).len + overhead;
        if !(0..count).all(fits) || end > buf.len() {
            return Err(TransportError::BufferTooSmall);
        }
        if now - self.created >= REJECT_AFTER_TIME {
            return Err(TransportError::KeyExpired);
        }
        let Some(batch) = self.train_sealing.as_ref() else {
            for i in 0..count {
                let m = message(i);
                let counter = self.take_counters(self.charge(m.len), 1)?;
                self.seal_copied(buf, stride, i, m, counter)?;
            }
            return Ok(end);
        };
        let first = self.take_counters(1, count)?;
        // Below half a batch, one at a time is faster (benches in chachapoly-batch).
        let batched = if count % LANES >= LANES / 2 {
            count
        } else {
            count - count % LANES
        };
        let messages = buf[..end].chunks_mut(stride).take(batched).enumerate();
        let jobs = messages.map(|(i, datagram)| {
            let counter = first + i as u64;
            let TrainMessage { len, insert } = message(i);
            let (header, rest) = datagram.split_at_mut(TRANSPORT_HEADER_LEN);
            let header: &mut [u8; TRANSPORT_HEADER_LEN] = header.try_into().expect("split at 16");
            wire::write_sealed_header(header, MessageType::Transport, self.remote_index, counter);
            let (payload, rest) = rest.split_at_mut(len);
            let tag: &mut [u8; TAG_LEN] = (&mut rest[..TAG_LEN]).try_into().expect("16 bytes");
            SealJob {
                nonce: nonce_bytes(counter),
                in_out: payload,
                insert: insert.map(|(at, bytes)| Insert { at, bytes }),
                tag,
            }
        });
        // Lengths and inserts were checked above (a datagram is far below the length limit).
        batch
            .seal(jobs)
            .map_err(|_| TransportError::BufferTooSmall)?;
        for i in batched..count {
            self.seal_copied(buf, stride, i, message(i), first + i as u64)?;
        }
        Ok(end)
    }

    /// Message `i` of a train alone: its insert copied in, then sealed under `counter`.
    fn seal_copied(
        &self,
        buf: &mut [u8],
        stride: usize,
        i: usize,
        message: TrainMessage<'_>,
        counter: u64,
    ) -> Result<(), TransportError> {
        let at = i * stride;
        if let Some((offset, bytes)) = message.insert {
            let start = at + TRANSPORT_HEADER_LEN + offset;
            buf[start..start + bytes.len()].copy_from_slice(bytes);
        }
        self.seal_at(MessageType::Transport, counter, &mut buf[at..], message.len)
    }

    /// The associated data of a message with this header: the header itself (native, so that
    /// type and indexes are authenticated), nothing (WireGuard whitepaper section 5.4.6:
    /// `AEAD(key, counter, P, ε)`).
    #[inline]
    fn aad<'h>(&self, header: &'h [u8; TRANSPORT_HEADER_LEN]) -> Aad<&'h [u8]> {
        match self.suite {
            Suite::Native => Aad::from(&header[..]),
            Suite::WireGuard => Aad::from(&[][..]),
        }
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
                self.aad(&header),
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

    /// Opens a train of transport messages in place, as a GRO receive lays them out: message
    /// i is `buf[i * stride..]`, `stride` bytes long (the last one what `buf` has left), and
    /// tells `verdict` what [`Keypair::open`] would have said of each, in order. Each counter
    /// is checked against the replay window before any opening and recorded only once its
    /// message authenticated, as with `open`; a counter twice in one train opens once.
    ///
    /// WireGuard on a CPU with AVX-512 IFMA: [`LANES`] messages at a time (a group with fewer
    /// than half as many left to open goes one at a time, where that is faster). Elsewhere
    /// one by one with `open`.
    pub fn open_train(
        &self,
        buf: &mut [u8],
        stride: usize,
        now: Instant,
        mut verdict: impl FnMut(usize, Result<(u64, std::ops::Range<usize>), TransportError>),
    ) {
        let (Some(batch), true) = (self.train_opening.as_ref(), stride > 0) else {
            for (i, message) in buf.chunks_mut(stride.max(1)).enumerate() {
                verdict(i, self.open(message, now));
            }
            return;
        };
        let expired = now - self.created >= REJECT_AFTER_TIME;
        let mut messages = buf.chunks_mut(stride);
        let mut first = 0;
        loop {
            // The next group, by position: what passed the checks that need no key, and why
            // the others did not.
            let mut group: [Option<(u64, &mut [u8])>; LANES] = Default::default();
            let mut refused: [Option<TransportError>; LANES] = [None; LANES];
            let mut taken = 0;
            for (at, message) in messages.by_ref().take(LANES).enumerate() {
                taken += 1;
                if message.len() < TRANSPORT_MIN_LEN {
                    refused[at] = Some(TransportError::Malformed);
                } else if expired {
                    refused[at] = Some(TransportError::KeyExpired);
                } else {
                    let counter = u64::from_le_bytes(message[8..16].try_into().expect("8 bytes"));
                    match self.replay.check(counter) {
                        Ok(()) => group[at] = Some((counter, message)),
                        Err(e) => refused[at] = Some(e.into()),
                    }
                }
            }
            if taken == 0 {
                return;
            }
            let ready = group.iter().flatten().count();
            let mut authentic = [false; LANES];
            let jobs = group.iter_mut().flatten().map(|(counter, message)| {
                let (_, rest) = message.split_at_mut(TRANSPORT_HEADER_LEN);
                let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
                OpenJob {
                    nonce: nonce_bytes(*counter),
                    in_out: ciphertext,
                    tag: (&*tag).try_into().expect("TAG_LEN bytes"),
                }
            });
            // Fewer than half a batch go one at a time, as does a group the batch refuses (a
            // datagram is far below its message length limit, its only refusal).
            let batched = ready >= LANES / 2 && batch.open(jobs, |j, ok| authentic[j] = ok).is_ok();
            let mut job = 0;
            for (at, (entry, why)) in group.into_iter().zip(refused).take(taken).enumerate() {
                let result = match (entry, why) {
                    (_, Some(why)) => Err(why),
                    (None, None) => Err(TransportError::Malformed),
                    (Some((_, message)), None) if !batched => self.open(message, now),
                    (Some((counter, message)), None) => {
                        job += 1;
                        if !authentic[job - 1] {
                            Err(TransportError::Authentication)
                        } else {
                            self.replay.update(counter).map_err(Into::into).map(|()| {
                                let end = message.len() - TAG_LEN;
                                (counter, TRANSPORT_HEADER_LEN..end)
                            })
                        }
                    }
                };
                verdict(first + at, result);
            }
            first += taken;
        }
    }
}

/// The suite's `Reject-After-Messages`.
fn reject_after_messages(suite: Suite) -> u64 {
    match suite {
        Suite::Native => REJECT_AFTER_MESSAGES,
        Suite::WireGuard => WG_REJECT_AFTER_MESSAGES,
    }
}

#[cfg(test)]
mod open_train_tests;

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

    #[test]
    fn the_logged_train_cipher_is_the_one_a_wireguard_keypair_uses() {
        let (tx, _) = pair_of(Suite::WireGuard);
        let batched = tx.train_sealing.is_some();
        assert_eq!(batched, BatchKey::is_supported());
        assert_eq!(wireguard_train_cipher().contains("eight"), batched);
        let (native, _) = pair_of(Suite::Native);
        assert!(
            native.train_sealing.is_none(),
            "AES-GCM trains go through ring"
        );
    }

    /// Seals `payload_len` bytes; returns the sealed length and the counter it used.
    fn seal(k: &Keypair, payload_len: usize) -> Result<(Vec<u8>, u64), TransportError> {
        let mut buf = vec![0x5a; TRANSPORT_HEADER_LEN + payload_len + TAG_LEN];
        let n = k.seal(&mut buf, payload_len, Instant::from_nanos(2))?;
        buf.truncate(n);
        let counter = u64::from_le_bytes(buf[8..16].try_into().unwrap());
        Ok((buf, counter))
    }

    /// Two keypairs of `suite` on the same keys: sender and receiver.
    fn pair_of(suite: Suite) -> (Keypair, Keypair) {
        let (a, b) = (Zeroizing::new([3u8; 32]), Zeroizing::new([4u8; 32]));
        let t = Instant::from_nanos(1);
        (
            Keypair::for_suite(suite, &a, &b, 1, 2, t, true),
            Keypair::for_suite(suite, &b, &a, 2, 1, t, false),
        )
    }

    #[test]
    fn a_train_is_sealed_as_one_message_at_a_time_would_seal_it() {
        let now = Instant::from_nanos(2);
        let stride = TRANSPORT_HEADER_LEN + 1408 + TAG_LEN;
        for suite in [Suite::WireGuard, Suite::Native] {
            for (count, inserted) in (1..=20).flat_map(|n| [(n, false), (n, true)]) {
                // All of one length but the last, which is shorter (a TSO train's shape).
                let len = |i: usize| if i + 1 == count { 17 + 3 * count } else { 1408 };
                let (train_tx, rx) = pair_of(suite);
                let (single_tx, _) = pair_of(suite);
                if suite == Suite::WireGuard {
                    assert_eq!(train_tx.train_sealing.is_some(), BatchKey::is_supported());
                }
                let plain: Vec<u8> = (0..count * stride).map(|i| (i % 251) as u8).collect();
                // Inserted: a 52-byte head in place, the rest of the plaintext from a copy,
                // junk where it would go.
                let head = 52;
                let mut train = plain.clone();
                let source = plain.clone();
                if inserted {
                    for i in 0..count {
                        let at = i * stride + TRANSPORT_HEADER_LEN;
                        train[at + head.min(len(i))..at + len(i)].fill(0xee);
                    }
                }
                let message = |i: usize| {
                    let at = i * stride + TRANSPORT_HEADER_LEN;
                    let from = head.min(len(i));
                    TrainMessage {
                        len: len(i),
                        insert: inserted.then(|| (from, &source[at + from..at + len(i)])),
                    }
                };
                let end = train_tx
                    .seal_train(&mut train, stride, count, message, now)
                    .unwrap();
                assert_eq!(end, (count - 1) * stride + len(count - 1) + 32);
                let mut single = plain.clone();
                for i in 0..count {
                    single_tx
                        .seal(&mut single[i * stride..], len(i), now)
                        .unwrap();
                }
                assert_eq!(train, single, "{suite:?}, {count} messages, {inserted}");
                assert_eq!(train_tx.messages_sent(), single_tx.messages_sent());
                for i in 0..count {
                    let at = i * stride;
                    let message = &mut train[at..at + len(i) + 32];
                    let (counter, opened) = rx.open(message, now).unwrap();
                    assert_eq!(counter, i as u64 * train_tx.charge(len(0)));
                    assert_eq!(&message[opened], &plain[at + 16..at + 16 + len(i)]);
                }
            }
        }
    }

    #[test]
    fn a_train_with_a_message_too_long_for_its_stride_is_refused_whole() {
        let whole = |len: usize| TrainMessage { len, insert: None };
        let source = [7u8; 300];
        for suite in [Suite::WireGuard, Suite::Native] {
            let (tx, _) = pair_of(suite);
            let mut buf = vec![0u8; 10 * 200];
            let now = Instant::from_nanos(2);
            let too_long = |i: usize| whole(if i == 4 { 200 - 31 } else { 100 });
            assert_eq!(
                tx.seal_train(&mut buf, 200, 10, too_long, now),
                Err(TransportError::BufferTooSmall)
            );
            // The last one beyond the buffer.
            let last_too_long = |i: usize| whole(if i == 9 { 200 - 32 + 1 } else { 100 });
            assert_eq!(
                tx.seal_train(&mut buf, 200, 10, last_too_long, now),
                Err(TransportError::BufferTooSmall)
            );
            // An insert beyond its message.
            let insert_too_long = |i: usize| TrainMessage {
                len: 100,
                insert: (i == 9).then_some((50, &source[..51])),
            };
            assert_eq!(
                tx.seal_train(&mut buf, 200, 10, insert_too_long, now),
                Err(TransportError::BufferTooSmall)
            );
            assert_eq!(tx.messages_sent(), 0, "no counter taken");
            assert!(buf.iter().all(|&b| b == 0), "nothing written");
        }
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

    fn wireguard_pair() -> (Keypair, Keypair) {
        let (a, b) = (Zeroizing::new([1u8; 32]), Zeroizing::new([2u8; 32]));
        let t = Instant::from_nanos(1);
        (
            Keypair::for_suite(Suite::WireGuard, &a, &b, 1, 2, t, true),
            Keypair::for_suite(Suite::WireGuard, &b, &a, 2, 1, t, false),
        )
    }

    #[test]
    fn wireguard_transport_is_chacha20_poly1305_without_aad() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let (tx, rx) = wireguard_pair();
        let plain = b"an inner packet".to_vec();
        for expected_counter in 0..3u64 {
            let (mut sealed, counter) = seal(&tx, plain.len()).unwrap();
            assert_eq!(counter, expected_counter, "one counter per message");
            // An independent ChaCha20-Poly1305 (RFC 7539) opens it: nonce = 4 zero bytes and
            // the little-endian counter, no associated data (whitepaper section 5.4.6).
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_le_bytes());
            let cipher = chacha20poly1305::ChaCha20Poly1305::new(&[1u8; 32].into());
            let opened = cipher
                .decrypt(
                    &nonce.into(),
                    Payload {
                        msg: &sealed[TRANSPORT_HEADER_LEN..],
                        aad: &[],
                    },
                )
                .expect("opens as WireGuard transport data");
            assert_eq!(opened, vec![0x5a; plain.len()]);
            let (c, range) = rx.open(&mut sealed, Instant::from_nanos(3)).unwrap();
            assert_eq!(c, counter);
            assert_eq!(range.len(), plain.len());
        }
        // Large messages are not charged by size in this suite.
        seal(&tx, 60_000).unwrap();
        assert_eq!(tx.messages_sent(), 4);
        assert_eq!(tx.suite(), Suite::WireGuard);
    }

    #[test]
    fn wireguard_keys_do_not_open_native_packets() {
        let (native_tx, _) = pair();
        let (_, wg_rx) = wireguard_pair();
        let (mut sealed, _) = seal(&native_tx, 40).unwrap();
        assert_eq!(
            wg_rx.open(&mut sealed, Instant::from_nanos(3)),
            Err(TransportError::Authentication)
        );
    }

    #[test]
    fn wireguard_limits_are_its_own_and_the_counter_never_wraps() {
        let (tx, _) = wireguard_pair();
        // Native limits do not apply.
        tx.send_counter
            .store(REJECT_AFTER_MESSAGES + 5, Ordering::Relaxed);
        seal(&tx, 100).unwrap();
        assert!(!tx.wants_rekey_by_count());
        tx.send_counter
            .store(WG_REKEY_AFTER_MESSAGES, Ordering::Relaxed);
        assert!(tx.wants_rekey_by_count());
        tx.send_counter
            .store(WG_REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        let (_, last) = seal(&tx, 100).unwrap();
        assert_eq!(last, WG_REJECT_AFTER_MESSAGES - 1);
        for _ in 0..3 {
            assert_eq!(seal(&tx, 100).err(), Some(TransportError::KeyExhausted));
        }
        assert!(tx.is_expired(Instant::from_nanos(2)));
        tx.send_counter.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(
            seal(&tx, 100).err(),
            Some(TransportError::KeyExhausted),
            "a counter at the top does not wrap to a used nonce"
        );
        assert_eq!(tx.messages_sent(), WG_REJECT_AFTER_MESSAGES);
    }
}
