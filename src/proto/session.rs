//! A peer's transport state: up to three keypairs (previous, current, next) and activity times,
//! shared lock-free between the control thread and every worker.
//!
//! The responder's new keypair waits in `next` until the initiator proves it has it (its first
//! transport packet under it); only then does it become `current`, and the old current stays as
//! `previous` for packets still in flight. So a rekey loses nothing in either direction.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::constants::{KEEPALIVE_TIMEOUT, ZERO_KEYS_AFTER};
use super::keypair::{Keypair, TrainMessage, TransportError};
use super::padding::Padding;
use super::time::Instant;
use super::wire::TRANSPORT_HEADER_LEN;

/// The most messages [`Session::decrypt_train`] opens under one lookup: a UDP GRO receive
/// holds at most 64 datagrams (`UDP_GRO_CNT_MAX`, include/net/udp.h); longer trains are
/// taken in parts.
pub const MAX_TRAIN: usize = 64;

/// Why a packet could not be sent or received on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No usable keypair: a handshake is needed.
    #[error("no valid keypair")]
    NoKeypair,
    /// The receiver index names none of this session's keypairs.
    #[error("unknown receiver index")]
    UnknownIndex,
    /// The transport layer refused the packet.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What `decrypt` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Plaintext range within the buffer; empty for a keepalive.
    pub plaintext: Range<usize>,
    /// The packet confirmed the `next` keypair, which is now current.
    pub confirmed_next: bool,
}

/// The three keypair slots of a session, only ever replaced as a whole.
#[derive(Default)]
struct Slots {
    previous: Option<Arc<Keypair>>,
    current: Option<Arc<Keypair>>,
    next: Option<Arc<Keypair>>,
}

impl Slots {
    fn all(&self) -> [&Option<Arc<Keypair>>; 3] {
        [&self.previous, &self.current, &self.next]
    }

    fn local_indexes(&self) -> Vec<u32> {
        self.all()
            .iter()
            .filter_map(|slot| slot.as_ref().map(|k| k.local_index))
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.all().iter().all(|slot| slot.is_none())
    }
}

/// A peer's keypairs and timers (nanosecond atomics; 0 = never).
#[derive(Default)]
pub struct Session {
    /// All three slots behind one pointer. A promotion reads `next` and `current` and writes
    /// all three; with one pointer per slot, a `clear` landing between those writes was undone
    /// (the erased keypair came back as `current` and kept sealing). Here every change builds
    /// a new triple from the one it read and publishes it with one compare-and-swap, which
    /// fails, and is retried on what is there now, if anything changed in between: a clear
    /// can never be undone. Readers take one snapshot per packet, lock-free; the writers
    /// (handshakes, promotions, clears) allocate one small triple per change.
    slots: ArcSwap<Slots>,
    last_handshake: AtomicU64,
    last_sent: AtomicU64,
    last_received: AtomicU64,
    last_received_data: AtomicU64,
    /// The oldest packet sent since anything was last received (0 = none): after
    /// `NEW_HANDSHAKE_AFTER_SILENCE` without an answer the initiator starts a new handshake.
    unanswered_since: AtomicU64,
    /// Tests only: called inside a promotion of `next`, between deciding to promote and the
    /// promotion taking effect, so a test can land a concurrent `clear` exactly there.
    #[cfg(test)]
    promote_pause: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

fn stamp(at: &AtomicU64, now: Instant) {
    // +1 keeps 0 free to mean "never", even for a caller whose epoch starts at zero.
    at.store(now.as_nanos() + 1, Ordering::Relaxed);
}

fn read(at: &AtomicU64) -> Option<Instant> {
    match at.load(Ordering::Relaxed) {
        0 => None,
        n => Some(Instant::from_nanos(n - 1)),
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field(
                "current",
                &self.slots.load().current.as_ref().map(|k| k.local_index),
            )
            .field("last_handshake", &self.last_handshake())
            .finish()
    }
}

impl Session {
    /// An empty session.
    pub fn new() -> Self {
        Session::default()
    }

    /// Replaces the slots with `change(slots)` in one step, or leaves them when `change`
    /// returns `None`. Another thread's change in between makes the swap fail, and `change` is
    /// asked again about what is there now. Returns the slots replaced.
    fn update(&self, mut change: impl FnMut(&Slots) -> Option<Slots>) -> Option<Arc<Slots>> {
        let mut seen = self.slots.load_full();
        loop {
            let changed = Arc::new(change(&seen)?);
            let found = self.slots.compare_and_swap(&seen, changed);
            // `seen` is held, so its address cannot have been reused by another triple.
            if Arc::ptr_eq(&found, &seen) {
                return Some(seen);
            }
            seen = Guard::into_inner(found);
        }
    }

    /// Installs the keypair of a handshake just completed. The initiator's keypair is usable at
    /// once and becomes current; the responder's waits in `next` until confirmed. Returns the
    /// local indexes of keypairs this dropped (to be forgotten by whoever maps indexes).
    pub fn install(&self, keypair: Arc<Keypair>, now: Instant) -> Vec<u32> {
        stamp(&self.last_handshake, now);
        // A completed handshake is an answer.
        self.unanswered_since.store(0, Ordering::Relaxed);
        let initiator = keypair.is_initiator;
        let replaced = self
            .update(|old| {
                Some(if initiator {
                    Slots {
                        previous: old.current.clone(),
                        current: Some(keypair.clone()),
                        next: None,
                    }
                } else {
                    Slots {
                        previous: old.previous.clone(),
                        current: old.current.clone(),
                        next: Some(keypair.clone()),
                    }
                })
            })
            .expect("an install always changes the slots");
        let dropped = if initiator {
            [&replaced.previous, &replaced.next]
        } else {
            [&replaced.next, &None]
        };
        dropped
            .iter()
            .filter_map(|slot| slot.as_ref().map(|k| k.local_index))
            .collect()
    }

    /// The keypair used for sending, if it is still valid.
    pub fn current(&self, now: Instant) -> Option<Arc<Keypair>> {
        self.slots
            .load()
            .current
            .clone()
            .filter(|k| !k.is_expired(now))
    }

    /// The keypair of the latest handshake: `next` while unconfirmed (the initiator already
    /// uses it), else `current`; for messages that must reach the peer under the keys it holds
    /// right after a handshake (push messages).
    pub fn newest(&self, now: Instant) -> Option<Arc<Keypair>> {
        let slots = self.slots.load();
        slots
            .next
            .clone()
            .or_else(|| slots.current.clone())
            .filter(|k| !k.is_expired(now))
    }

    /// Local indexes of every keypair held (for index tables).
    pub fn local_indexes(&self) -> Vec<u32> {
        self.slots.load().local_indexes()
    }

    /// Whether a keypair held has local index `index` (what [`Session::local_indexes`]
    /// answers, without building the list: the responder asks it for every index it maps,
    /// at every tick).
    pub fn holds_local_index(&self, index: u32) -> bool {
        self.slots
            .load()
            .all()
            .iter()
            .any(|slot| slot.as_ref().is_some_and(|k| k.local_index == index))
    }

    /// Seals `buf[16..16 + payload_len]` with the current keypair, unpadded.
    #[inline]
    pub fn encrypt(
        &self,
        buf: &mut [u8],
        payload_len: usize,
        now: Instant,
    ) -> Result<usize, SessionError> {
        self.encrypt_padded(buf, payload_len, Padding::None, now)
    }

    /// Seals `buf[16..16 + payload_len]` with the current keypair, padded with zeros after it
    /// as `padding` says: `buf` must have room for the header, the padded plaintext
    /// ([`Padding::padded_len`]) and the tag. Returns the length of the whole message.
    #[inline]
    pub fn encrypt_padded(
        &self,
        buf: &mut [u8],
        payload_len: usize,
        padding: Padding,
        now: Instant,
    ) -> Result<usize, SessionError> {
        let slots = self.slots.load();
        let keypair = slots.current.as_ref().ok_or(SessionError::NoKeypair)?;
        let padded_len = padding.padded_len(payload_len);
        let zeros = TRANSPORT_HEADER_LEN + payload_len..TRANSPORT_HEADER_LEN + padded_len;
        // Without room for them, `seal` refuses the message (before taking a counter).
        if let Some(padding_bytes) = buf.get_mut(zeros) {
            padding_bytes.fill(0);
        }
        let len = keypair.seal(buf, padded_len, now)?;
        self.note_sent(now, payload_len > 0);
        Ok(len)
    }

    /// Seals a train of `count` messages in place with the current keypair
    /// ([`Keypair::seal_train`]): message i at `buf[i * stride]`, its `message(i).len` bytes
    /// padded with zeros after them as `padding` says; each padded message with header and tag
    /// must fit in `stride` (the last in what `buf` has left). Returns where the last ends.
    pub fn encrypt_train<'s>(
        &self,
        buf: &mut [u8],
        stride: usize,
        count: usize,
        padding: Padding,
        message: impl Fn(usize) -> TrainMessage<'s>,
        now: Instant,
    ) -> Result<usize, SessionError> {
        let slots = self.slots.load();
        let keypair = slots.current.as_ref().ok_or(SessionError::NoKeypair)?;
        let mut carries_data = false;
        for i in 0..count {
            let len = message(i).len;
            carries_data |= len > 0;
            let zeros = i * stride + TRANSPORT_HEADER_LEN + len
                ..i * stride + TRANSPORT_HEADER_LEN + padding.padded_len(len);
            // Without room for them, `seal_train` refuses the train (before taking a counter).
            if let Some(padding_bytes) = buf.get_mut(zeros) {
                padding_bytes.fill(0);
            }
        }
        let padded = |i| {
            let m = message(i);
            TrainMessage {
                len: padding.padded_len(m.len),
                ..m
            }
        };
        let end = keypair.seal_train(buf, stride, count, padded, now)?;
        self.note_sent(now, carries_data);
        Ok(end)
    }

    /// Opens a transport message addressed to `local_index` with whichever keypair holds that
    /// index; a packet under `next` confirms it and rotates the slots.
    #[inline]
    pub fn decrypt(
        &self,
        local_index: u32,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<Received, SessionError> {
        self.open(local_index, buf, now, true)
    }

    /// Decrypts a train of transport messages for `local_index`, laid out as a GRO receive
    /// lays its datagrams out (message i at `buf[i * stride..]`, `stride` bytes, the last one
    /// what is left), as that many calls of [`Session::decrypt`] would, and tells `each` what
    /// each one gave, in order: the keypair is looked up once and the messages opened several
    /// at a time where the suite and the CPU allow ([`Keypair::open_train`]).
    pub fn decrypt_train(
        &self,
        local_index: u32,
        buf: &mut [u8],
        stride: usize,
        now: Instant,
        mut each: impl FnMut(usize, Result<Received, SessionError>),
    ) {
        if stride == 0 {
            each(0, self.decrypt(local_index, buf, now));
            return;
        }
        for (part, messages) in buf.chunks_mut(stride * MAX_TRAIN).enumerate() {
            let first = part * MAX_TRAIN;
            let count = messages.len().div_ceil(stride);
            let slots = self.slots.load();
            let found = [
                (&slots.current, false),
                (&slots.next, true),
                (&slots.previous, false),
            ]
            .into_iter()
            .find_map(|(slot, is_next)| {
                slot.as_ref()
                    .filter(|k| k.local_index == local_index)
                    .map(|k| (k, is_next))
            });
            let Some((keypair, is_next)) = found else {
                (0..count).for_each(|i| each(first + i, Err(SessionError::UnknownIndex)));
                continue;
            };
            let mut results: [Option<Result<Range<usize>, TransportError>>; MAX_TRAIN] =
                std::array::from_fn(|_| None);
            keypair.open_train(messages, stride, now, |i, r| {
                results[i] = Some(r.map(|(_, plaintext)| plaintext));
            });
            let opened = || results.iter().flatten().filter_map(|r| r.as_ref().ok());
            if opened().next().is_some() {
                stamp(&self.last_received, now);
                self.unanswered_since.store(0, Ordering::Relaxed);
                if opened().any(|plaintext| !plaintext.is_empty()) {
                    stamp(&self.last_received_data, now);
                }
            }
            // The promotion is reported on the first message that opened, as `decrypt` would.
            let mut confirmed_next =
                is_next && opened().next().is_some() && self.confirm_next(keypair);
            for (i, result) in results.into_iter().take(count).enumerate() {
                let result = result.unwrap_or(Err(TransportError::Malformed));
                each(
                    first + i,
                    result
                        .map(|plaintext| Received {
                            plaintext,
                            confirmed_next: std::mem::take(&mut confirmed_next),
                        })
                        .map_err(SessionError::from),
                );
            }
        }
    }

    /// Opens a push message as [`Session::decrypt`] opens transport data, except that its
    /// payload does not count as data: it asks for no passive keepalive in return.
    pub fn decrypt_push(
        &self,
        local_index: u32,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<Received, SessionError> {
        self.open(local_index, buf, now, false)
    }

    #[inline]
    fn open(
        &self,
        local_index: u32,
        buf: &mut [u8],
        now: Instant,
        carries_data: bool,
    ) -> Result<Received, SessionError> {
        let slots = self.slots.load();
        for (slot, is_next) in [
            (&slots.current, false),
            (&slots.next, true),
            (&slots.previous, false),
        ] {
            let Some(keypair) = slot.as_ref().filter(|k| k.local_index == local_index) else {
                continue;
            };
            let (_, plaintext) = keypair.open(buf, now)?;
            stamp(&self.last_received, now);
            self.unanswered_since.store(0, Ordering::Relaxed);
            if carries_data && !plaintext.is_empty() {
                stamp(&self.last_received_data, now);
            }
            let confirmed_next = is_next && self.confirm_next(keypair);
            return Ok(Received {
                plaintext,
                confirmed_next,
            });
        }
        Err(SessionError::UnknownIndex)
    }

    /// Promotes `confirmed` from next to current, once, even if several workers race here, and
    /// never after a clear (or a newer handshake) replaced it: the promotion is one swap of the
    /// whole triple, from a triple whose `next` is `confirmed`.
    fn confirm_next(&self, confirmed: &Arc<Keypair>) -> bool {
        self.update(|old| {
            if !old.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, confirmed)) {
                return None; // promoted by another worker, replaced, or cleared
            }
            #[cfg(test)]
            if let Some(pause) = self.promote_pause.get() {
                pause();
            }
            Some(Slots {
                previous: old.current.clone(),
                current: Some(confirmed.clone()),
                next: None,
            })
        })
        .is_some()
    }

    /// When the last handshake completed.
    pub fn last_handshake(&self) -> Option<Instant> {
        read(&self.last_handshake)
    }

    /// When anything was last sent.
    pub fn last_sent(&self) -> Option<Instant> {
        read(&self.last_sent)
    }

    /// When anything authenticated was last received.
    pub fn last_received(&self) -> Option<Instant> {
        read(&self.last_received)
    }

    /// Records that a packet was sent (done by [`Session::encrypt`]; call it for packets sealed
    /// otherwise). Only data (not keepalives) expects an answer: WireGuard whitepaper section
    /// 6.5, the new-handshake timer is armed by sending data.
    pub fn note_sent(&self, now: Instant, carries_data: bool) {
        stamp(&self.last_sent, now);
        if carries_data && self.unanswered_since.load(Ordering::Relaxed) == 0 {
            // Only the first unanswered send counts; a race between two senders is harmless.
            let _ = self.unanswered_since.compare_exchange(
                0,
                now.as_nanos() + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// The oldest packet sent that nothing received has followed yet.
    pub fn unanswered_since(&self) -> Option<Instant> {
        read(&self.unanswered_since)
    }

    /// True when the peer should get a keepalive: it sent us data after our last packet to it,
    /// and we have been silent for `KEEPALIVE_TIMEOUT` (WireGuard whitepaper section 6.5,
    /// passive keepalive). This lets a peer that only sends tell that we are alive; keepalives
    /// are not answered, so two idle peers stay silent.
    pub fn needs_keepalive(&self, now: Instant) -> bool {
        let Some(received) = read(&self.last_received_data) else {
            return false;
        };
        if self.current(now).is_none() {
            return false;
        }
        match self.last_sent() {
            None => true,
            Some(sent) => received > sent && now - sent >= KEEPALIVE_TIMEOUT,
        }
    }

    /// True when no handshake completed for `ZERO_KEYS_AFTER`: time to erase every key.
    pub fn is_stale(&self, now: Instant) -> bool {
        self.last_handshake()
            .is_none_or(|h| now - h >= ZERO_KEYS_AFTER)
    }

    /// Forgets that sent data is waiting for an answer (a client that moves to another server
    /// starts counting afresh there).
    pub fn forget_unanswered(&self) {
        self.unanswered_since.store(0, Ordering::Relaxed);
    }

    /// Drops every keypair (their keys are erased as they drop) and returns their indexes.
    pub fn clear(&self) -> Vec<u32> {
        // Nothing is swapped (or allocated) when there is nothing to drop: callers clear stale
        // sessions on every tick.
        self.update(|old| (!old.is_empty()).then(Slots::default))
            .map(|replaced| replaced.local_indexes())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::constants::REJECT_AFTER_TIME;
    use std::sync::Barrier;
    use zeroize::Zeroizing;

    fn t(ms: u64) -> Instant {
        Instant::from_nanos(1_000_000_000 + ms * 1_000_000)
    }

    /// The server's keypair (`local_index`) and the client's twin that seals for it.
    fn responder_pair(seed: u8, local_index: u32) -> (Arc<Keypair>, Keypair) {
        let (a, b) = (
            Zeroizing::new([seed; 32]),
            Zeroizing::new([seed ^ 0xff; 32]),
        );
        let server = Keypair::new(&b, &a, local_index, 100 + local_index, t(0), false);
        let client = Keypair::new(&a, &b, 100 + local_index, local_index, t(0), true);
        (Arc::new(server), client)
    }

    fn sealed_by(client: &Keypair) -> Vec<u8> {
        let mut buf = vec![0u8; 16 + 4 + 16];
        buf[16..20].copy_from_slice(b"ping");
        let n = client.seal(&mut buf, 4, t(1)).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn padded_plaintext_is_zeros_after_the_packet_and_needs_room() {
        use crate::proto::padding::Padding;
        use crate::proto::wire::TAG_LEN;
        let session = Session::new();
        // The client's keypair seals for the server's twin.
        let (server, client) = responder_pair(7, 1);
        session.install(Arc::new(client), t(0));
        let padding = Padding::WireGuard { mtu: 1420 };
        // Room for 16 bytes of plaintext, 3 of them the packet, the rest stale bytes.
        let mut buf = vec![0xee; TRANSPORT_HEADER_LEN + 16 + TAG_LEN];
        buf[16..19].copy_from_slice(b"abc");
        let short = &mut buf[..TRANSPORT_HEADER_LEN + 15 + TAG_LEN];
        assert_eq!(
            session.encrypt_padded(short, 3, padding, t(1)),
            Err(SessionError::Transport(TransportError::BufferTooSmall))
        );
        let n = session.encrypt_padded(&mut buf, 3, padding, t(1)).unwrap();
        assert_eq!(n, TRANSPORT_HEADER_LEN + 16 + TAG_LEN);
        let (counter, plain) = server.open(&mut buf[..n], t(2)).unwrap();
        assert_eq!(counter, 0, "the refused message took no counter");
        assert_eq!(&buf[plain], b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0");
        // A keepalive stays empty.
        let mut keepalive = vec![0xee; 64];
        let n = session.encrypt_padded(&mut keepalive, 0, padding, t(1));
        assert_eq!(n, Ok(TRANSPORT_HEADER_LEN + TAG_LEN));
    }

    #[test]
    fn a_clear_during_a_promotion_is_not_undone() {
        // current = 1, next = 2; a worker's packet under 2 promotes it while the control
        // thread clears the session (the peer was removed, or its keys went stale).
        let session = Arc::new(Session::new());
        let (first, first_client) = responder_pair(1, 1);
        session.install(first, t(0));
        let confirmed = session.decrypt(1, &mut sealed_by(&first_client), t(1));
        assert!(confirmed.unwrap().confirmed_next);
        let (next, client) = responder_pair(2, 2);
        session.install(next, t(1));
        let barrier = Arc::new(Barrier::new(2));
        let pause = barrier.clone();
        let _ = session.promote_pause.set(Box::new(move || {
            pause.wait(); // the promotion is under way
            pause.wait(); // the clear is done
        }));
        let mut packet = sealed_by(&client);
        let worker = {
            let session = session.clone();
            std::thread::spawn(move || session.decrypt(2, &mut packet, t(1)).map(|r| r.plaintext))
        };
        barrier.wait();
        let erased = session.clear();
        barrier.wait();
        let opened = worker.join().unwrap();
        assert_eq!(opened, Ok(16..20), "the packet itself was genuine");
        assert!(
            erased.contains(&1),
            "the clear erased `current`: {erased:?}"
        );
        assert_eq!(
            session.local_indexes(),
            Vec::<u32>::new(),
            "the promotion brought a cleared keypair back"
        );
        assert!(session.current(t(2)).is_none());
        let mut out = [0u8; 48];
        assert_eq!(
            session.encrypt(&mut out, 0, t(2)),
            Err(SessionError::NoKeypair),
            "a cleared session still seals"
        );
    }

    #[test]
    fn a_train_confirms_next_once_and_opens_as_its_datagrams_would() {
        use crate::proto::suite::Suite;
        for suite in [Suite::Native, Suite::WireGuard] {
            let session = Session::new();
            let keys = |seed: u8| (Zeroizing::new([seed; 32]), Zeroizing::new([!seed; 32]));
            let pair = |seed: u8, index: u32| {
                let (a, b) = keys(seed);
                let server = Keypair::for_suite(suite, &b, &a, index, 100 + index, t(0), false);
                let client = Keypair::for_suite(suite, &a, &b, 100 + index, index, t(0), true);
                (Arc::new(server), client)
            };
            let (first, _) = pair(1, 1);
            session.install(first, t(0));
            let (second, second_client) = pair(2, 2);
            session.install(second, t(0));
            assert_eq!(session.current(t(1)).map(|k| k.local_index), None);
            // Ten pings under the new keypair, as one GRO receive lays them out.
            let train: Vec<u8> = (0..10).flat_map(|_| sealed_by(&second_client)).collect();
            let mut buf = train.clone();
            let mut seen = Vec::new();
            session.decrypt_train(2, &mut buf, 36, t(2), |i, r| seen.push((i, r)));
            let expected: Vec<_> = (0..10)
                .map(|i| {
                    let received = Received {
                        plaintext: 16..20,
                        confirmed_next: i == 0,
                    };
                    (i, Ok(received))
                })
                .collect();
            assert_eq!(seen, expected, "{suite:?}");
            assert!(buf.chunks(36).all(|d| &d[16..20] == b"ping"));
            assert_eq!(session.current(t(2)).map(|k| k.local_index), Some(2));
            assert_eq!(session.last_received(), Some(t(2)));
            // Again: every one replayed; an index of no keypair: every one unknown.
            let mut seen = Vec::new();
            session.decrypt_train(2, &mut train.clone(), 36, t(3), |_, r| seen.push(r));
            assert_eq!(seen.len(), 10);
            assert!(seen
                .iter()
                .all(|r| matches!(r, Err(SessionError::Transport(_)))));
            let mut seen = Vec::new();
            session.decrypt_train(9, &mut train.clone(), 36, t(3), |_, r| seen.push(r));
            assert_eq!(seen, vec![Err(SessionError::UnknownIndex); 10]);
        }
    }

    #[test]
    fn newest_is_next_until_confirmed_then_current() {
        let session = Session::new();
        assert!(session.newest(t(0)).is_none());
        let (first, first_client) = responder_pair(1, 1);
        session.install(first, t(0));
        assert_eq!(session.newest(t(0)).map(|k| k.local_index), Some(1));
        session
            .decrypt(1, &mut sealed_by(&first_client), t(1))
            .unwrap();
        let (second, _) = responder_pair(2, 2);
        session.install(second, t(1));
        assert_eq!(session.newest(t(1)).map(|k| k.local_index), Some(2));
        assert_eq!(session.current(t(1)).map(|k| k.local_index), Some(1));
        // Expired keys are nobody's newest.
        assert!(session.newest(t(0) + REJECT_AFTER_TIME).is_none());
    }

    /// What the slots should hold: local indexes.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    struct Model {
        previous: Option<u32>,
        current: Option<u32>,
        next: Option<u32>,
    }

    impl Model {
        fn indexes(&self) -> Vec<u32> {
            [self.previous, self.current, self.next]
                .into_iter()
                .flatten()
                .collect()
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        /// A handshake completed as responder (the server).
        InstallResponder,
        /// A handshake completed as initiator (the client).
        InstallInitiator,
        /// A packet under the keypair in slot 0 (previous), 1 (current) or 2 (next).
        Receive(u8),
        /// A packet under `next`, with a clear landing inside the promotion it causes.
        ReceiveWhileCleared,
        Clear,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Op::InstallResponder),
            Just(Op::InstallInitiator),
            (0u8..3).prop_map(Op::Receive),
            Just(Op::ReceiveWhileCleared),
            Just(Op::Clear),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any sequence of installs, packets, promotions and clears (some landing inside a
        /// promotion, through the pause point) leaves the slots the model says, and a clear
        /// is never undone.
        #[test]
        fn slots_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            use std::sync::atomic::AtomicBool;
            let session = Arc::new(Session::new());
            let clear_inside = Arc::new(AtomicBool::new(false));
            {
                let (weak, flag) = (Arc::downgrade(&session), clear_inside.clone());
                let _ = session.promote_pause.set(Box::new(move || {
                    if flag.swap(false, Ordering::Relaxed) {
                        if let Some(session) = weak.upgrade() {
                            session.clear();
                        }
                    }
                }));
            }
            let mut model = Model::default();
            let mut twins = std::collections::HashMap::new();
            let mut next_index = 1u32;
            for op in ops {
                match op {
                    Op::InstallResponder | Op::InstallInitiator => {
                        let index = next_index;
                        next_index += 1;
                        let (mut ours, twin) = responder_pair(index as u8, index);
                        let initiator = matches!(op, Op::InstallInitiator);
                        Arc::get_mut(&mut ours).unwrap().is_initiator = initiator;
                        twins.insert(index, twin);
                        let dropped = session.install(ours, t(1));
                        let expected = if initiator {
                            let dropped = [model.previous, model.next];
                            model = Model { previous: model.current, current: Some(index), next: None };
                            dropped
                        } else {
                            let dropped = [model.next, None];
                            model.next = Some(index);
                            dropped
                        };
                        let expected: Vec<u32> = expected.into_iter().flatten().collect();
                        proptest::prop_assert_eq!(dropped, expected);
                    }
                    Op::Receive(slot) => {
                        let index = [model.previous, model.current, model.next][slot as usize];
                        let Some(index) = index else { continue };
                        let received = session
                            .decrypt(index, &mut sealed_by(&twins[&index]), t(1))
                            .unwrap();
                        proptest::prop_assert_eq!(received.confirmed_next, slot == 2);
                        if slot == 2 {
                            model = Model { previous: model.current, current: Some(index), next: None };
                        }
                    }
                    Op::ReceiveWhileCleared => {
                        let Some(index) = model.next else { continue };
                        clear_inside.store(true, Ordering::Relaxed);
                        let received = session
                            .decrypt(index, &mut sealed_by(&twins[&index]), t(1))
                            .unwrap();
                        proptest::prop_assert!(!received.confirmed_next);
                        model = Model::default();
                    }
                    Op::Clear => {
                        let erased = session.clear();
                        proptest::prop_assert_eq!(erased, model.indexes());
                        model = Model::default();
                    }
                }
                proptest::prop_assert_eq!(session.local_indexes(), model.indexes());
                for index in 0..=next_index {
                    proptest::prop_assert_eq!(
                        session.holds_local_index(index),
                        model.indexes().contains(&index)
                    );
                }
                proptest::prop_assert_eq!(
                    session.current(t(1)).map(|k| k.local_index),
                    model.current
                );
            }
        }
    }
}
