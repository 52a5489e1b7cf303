//! What the data-plane workers and the control thread hand each other, and nothing else: the
//! two never name each other, only this module (and the session table, and the layers below).
//!
//! - workers → control thread: [`HandshakeMessage`]s over a bounded channel of
//!   [`HANDSHAKE_QUEUE`] (a full queue drops the message at the worker); a client's worker
//!   passes its server's handshake messages and pushes as [`ServerMessage`]s instead
//!   ([`WorkerRole::Client`]);
//! - control thread → workers: the under-load state ([`LoadSignal`]) and the cookie secrets
//!   ([`SharedCookieSecrets`]), both read lock-free per initiation;
//! - both publish latency histograms ([`crate::server::latency`]) that the operations threads read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::proto::cookie::CookieSecrets;
use crate::proto::time::Instant;
use crate::proto::wire::{INITIATION_LEN, MAX_PUSH_PAYLOAD_LEN, RESPONSE_LEN, TRANSPORT_MIN_LEN};

/// Capacity of the queue of handshake messages from the workers.
pub const HANDSHAKE_QUEUE: usize = 4096;

/// A handshake message for the control thread.
#[derive(Debug, Clone)]
pub struct HandshakeMessage {
    /// The message (an initiation is the only kind a server receives).
    pub bytes: [u8; INITIATION_LEN],
    /// Who sent it.
    pub src: SocketAddr,
    /// When the worker received it (for the handshake latency histogram).
    pub received: Instant,
}

/// Capacity of a client's queue of [`ServerMessage`]s: a handshake's response, a push and a
/// few cookie replies at a time; more waiting means the control thread is stuck.
pub const SERVER_MESSAGE_QUEUE: usize = 64;

/// Longest datagram a client's worker passes to its control thread: a push message with the
/// most routes and DNS servers a push may carry (longer than a response or a cookie reply).
pub const MAX_SERVER_MESSAGE_LEN: usize = TRANSPORT_MIN_LEN + MAX_PUSH_PAYLOAD_LEN;
const _: () = assert!(MAX_SERVER_MESSAGE_LEN >= RESPONSE_LEN);

/// A datagram from the server that a client's worker passes to the client's control thread
/// (a handshake response, a cookie reply or a push), whole.
#[derive(Debug, Clone)]
pub struct ServerMessage {
    bytes: [u8; MAX_SERVER_MESSAGE_LEN],
    len: usize,
    /// Who sent it.
    pub src: SocketAddr,
    /// When the worker received it.
    pub received: Instant,
}

impl ServerMessage {
    /// A copy of `datagram`, or `None` when it is longer than [`MAX_SERVER_MESSAGE_LEN`].
    pub fn new(datagram: &[u8], src: SocketAddr, received: Instant) -> Option<Self> {
        let mut bytes = [0u8; MAX_SERVER_MESSAGE_LEN];
        bytes.get_mut(..datagram.len())?.copy_from_slice(datagram);
        Some(ServerMessage {
            bytes,
            len: datagram.len(),
            src,
            received,
        })
    }

    /// The datagram, to open in place.
    pub fn datagram_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

/// Which end of the tunnels a worker serves, and where its handshake traffic goes.
#[derive(Debug, Clone)]
pub enum WorkerRole {
    /// A headend's worker: initiations go to the control thread as [`HandshakeMessage`]s.
    Server,
    /// A client's worker: its server's responses, cookie replies and pushes go here.
    Client(Sender<ServerMessage>),
}

/// The control thread's "under load" state, published for the workers: while it holds, they
/// answer initiations without a valid mac2 with cookie replies themselves.
#[derive(Debug, Default)]
pub struct LoadSignal {
    /// Under load until this monotonic time, in nanoseconds (0: never).
    until_nanos: AtomicU64,
}

impl LoadSignal {
    /// Whether the control thread requires cookies at `now`.
    pub fn under_load(&self, now: Instant) -> bool {
        now.as_nanos() < self.until_nanos.load(Ordering::Relaxed)
    }

    /// Publishes "under load until `until`" (`None`: not under load).
    pub fn publish(&self, until: Option<Instant>) {
        let nanos = until.map_or(0, Instant::as_nanos);
        if self.until_nanos.load(Ordering::Relaxed) != nanos {
            self.until_nanos.store(nanos, Ordering::Relaxed);
        }
    }
}

/// The responder's cookie secrets, replaced by the control thread after each rotation and read
/// by the workers that answer cookie-less initiations under load.
pub type SharedCookieSecrets = Arc<arc_swap::ArcSwap<CookieSecrets>>;
