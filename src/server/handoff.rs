//! What the data-plane workers and the control thread hand each other, and nothing else: the
//! two never name each other, only this module (and the session table, and the layers below).
//!
//! - workers → control thread: [`HandshakeMessage`]s over a bounded channel of
//!   [`HANDSHAKE_QUEUE`] (a full queue drops the message at the worker);
//! - control thread → workers: the under-load state ([`LoadSignal`]) and the cookie secrets
//!   ([`SharedCookieSecrets`]), both read lock-free per initiation;
//! - both publish latency histograms ([`crate::server::latency`]) that the operations threads read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::proto::cookie::CookieSecrets;
use crate::proto::time::Instant;
use crate::proto::wire::INITIATION_LEN;

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
