//! A peer's transport state: up to three keypairs (previous, current, next) and activity times,
//! shared lock-free between the control thread and every worker.
//!
//! The responder's new keypair waits in `next` until the initiator proves it has it (its first
//! transport packet under it); only then does it become `current`, and the old current stays as
//! `previous` for packets still in flight. So a rekey loses nothing in either direction.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::constants::{KEEPALIVE_TIMEOUT, ZERO_KEYS_AFTER};
use super::keypair::{Keypair, TransportError};
use super::time::Instant;

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

/// A peer's keypairs and timers (nanosecond atomics; 0 = never).
#[derive(Default)]
pub struct Session {
    previous: ArcSwapOption<Keypair>,
    current: ArcSwapOption<Keypair>,
    next: ArcSwapOption<Keypair>,
    last_handshake: AtomicU64,
    last_sent: AtomicU64,
    last_received: AtomicU64,
    last_received_data: AtomicU64,
    /// The oldest packet sent since anything was last received (0 = none): after
    /// `NEW_HANDSHAKE_AFTER_SILENCE` without an answer the initiator starts a new handshake.
    unanswered_since: AtomicU64,
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
                &self.current.load().as_ref().map(|k| k.local_index),
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

    /// Installs the keypair of a handshake just completed. The initiator's keypair is usable at
    /// once and becomes current; the responder's waits in `next` until confirmed. Returns the
    /// local indexes of keypairs this dropped (to be forgotten by whoever maps indexes).
    pub fn install(&self, keypair: Arc<Keypair>, now: Instant) -> Vec<u32> {
        stamp(&self.last_handshake, now);
        // A completed handshake is an answer.
        self.unanswered_since.store(0, Ordering::Relaxed);
        let mut dropped = Vec::new();
        if keypair.is_initiator {
            if let Some(old) = self.previous.swap(self.current.swap(Some(keypair))) {
                dropped.push(old.local_index);
            }
            if let Some(old) = self.next.swap(None) {
                dropped.push(old.local_index);
            }
        } else if let Some(old) = self.next.swap(Some(keypair)) {
            dropped.push(old.local_index);
        }
        dropped
    }

    /// The keypair used for sending, if it is still valid.
    pub fn current(&self, now: Instant) -> Option<Arc<Keypair>> {
        self.current.load_full().filter(|k| !k.is_expired(now))
    }

    /// Local indexes of every keypair held (for index tables).
    pub fn local_indexes(&self) -> Vec<u32> {
        [&self.previous, &self.current, &self.next]
            .iter()
            .filter_map(|slot| slot.load().as_ref().map(|k| k.local_index))
            .collect()
    }

    /// Seals `buf[16..16 + payload_len]` with the current keypair.
    pub fn encrypt(
        &self,
        buf: &mut [u8],
        payload_len: usize,
        now: Instant,
    ) -> Result<usize, SessionError> {
        let guard = self.current.load();
        let keypair = guard.as_ref().ok_or(SessionError::NoKeypair)?;
        let len = keypair.seal(buf, payload_len, now)?;
        self.note_sent(now, payload_len > 0);
        Ok(len)
    }

    /// Opens a transport message addressed to `local_index` with whichever keypair holds that
    /// index; a packet under `next` confirms it and rotates the slots.
    pub fn decrypt(
        &self,
        local_index: u32,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<Received, SessionError> {
        for (slot, is_next) in [
            (&self.current, false),
            (&self.next, true),
            (&self.previous, false),
        ] {
            let guard = slot.load();
            let Some(keypair) = guard.as_ref().filter(|k| k.local_index == local_index) else {
                continue;
            };
            let (_, plaintext) = keypair.open(buf, now)?;
            stamp(&self.last_received, now);
            self.unanswered_since.store(0, Ordering::Relaxed);
            if !plaintext.is_empty() {
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

    /// Promotes `confirmed` from next to current, once, even if several workers race here.
    fn confirm_next(&self, confirmed: &Arc<Keypair>) -> bool {
        let prev = self
            .next
            .compare_and_swap(&Some(confirmed.clone()), None::<Arc<Keypair>>);
        if !prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, confirmed)) {
            return false; // another worker promoted it first
        }
        self.previous
            .store(self.current.swap(Some(confirmed.clone())));
        true
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

    /// Drops every keypair (their keys are erased as they drop) and returns their indexes.
    pub fn clear(&self) -> Vec<u32> {
        [&self.previous, &self.current, &self.next]
            .iter()
            .filter_map(|slot| slot.swap(None).map(|k| k.local_index))
            .collect()
    }
}
