//! Why a packet was dropped: one reason per way a datagram or a TUN packet can fail, counted
//! per worker and published under stable names.

use crate::proto::keypair::TransportError;
use crate::proto::session::SessionError;

/// Why the data plane dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// A TUN packet for an address no peer owns.
    NoPeer,
    /// The peer has not been heard from yet, so we do not know where to send.
    NoEndpoint,
    /// The peer has no valid keypair.
    NoKeypair,
    /// A datagram that is no message of ours, or malformed.
    Malformed,
    /// A transport message for a receiver index nobody holds.
    UnknownIndex,
    /// A replayed or too old counter.
    Replay,
    /// Failed authentication (tampered, or wrong key).
    Authentication,
    /// A key past its time or message limit.
    KeyExpired,
    /// Decrypted fine but claims an inner source address the peer does not own.
    SpoofedSource,
    /// A handshake initiation whose mac1 is wrong (checked before it is queued, so junk cannot
    /// fill the control thread's queue).
    BadMac,
    /// A handshake message that found the control thread's queue full.
    HandshakeQueueFull,
    /// Under load, an initiation shed by the worker before it reaches the control thread:
    /// without a valid mac2 past the worker's cookie-reply budget, or with one past its
    /// source's handshake rate.
    HandshakeShed,
    /// A message type this end never receives: on the server responses, cookie replies and
    /// pushes; on a client initiations.
    UnexpectedType,
    /// The kernel refused a send or write.
    IoError,
    /// Congestion experienced (CE) on the outer header of a packet whose transport is not
    /// ECN-capable: dropped at decapsulation, as RFC 6040 §4.2 says (a drop is the only
    /// congestion signal that transport understands).
    CongestedNotEct,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 15] = [
        DropReason::NoPeer,
        DropReason::NoEndpoint,
        DropReason::NoKeypair,
        DropReason::Malformed,
        DropReason::UnknownIndex,
        DropReason::Replay,
        DropReason::Authentication,
        DropReason::KeyExpired,
        DropReason::SpoofedSource,
        DropReason::BadMac,
        DropReason::HandshakeQueueFull,
        DropReason::HandshakeShed,
        DropReason::UnexpectedType,
        DropReason::IoError,
        DropReason::CongestedNotEct,
    ];

    /// Stable snake_case name (metrics labels, JSON keys): never rename one.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoPeer => "no_peer",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NoKeypair => "no_keypair",
            DropReason::Malformed => "malformed",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::Replay => "replay",
            DropReason::Authentication => "authentication",
            DropReason::KeyExpired => "key_expired",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::BadMac => "bad_mac",
            DropReason::HandshakeQueueFull => "handshake_queue_full",
            DropReason::HandshakeShed => "handshake_shed",
            DropReason::UnexpectedType => "unexpected_type",
            DropReason::IoError => "io_error",
            DropReason::CongestedNotEct => "congested_not_ect",
        }
    }
}

/// Why sealing or opening under a peer's session failed, as a drop.
impl From<SessionError> for DropReason {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NoKeypair => DropReason::NoKeypair,
            SessionError::UnknownIndex => DropReason::UnknownIndex,
            SessionError::Transport(t) => match t {
                TransportError::Replay(_) => DropReason::Replay,
                TransportError::Authentication => DropReason::Authentication,
                TransportError::KeyExpired | TransportError::KeyExhausted => DropReason::KeyExpired,
                TransportError::BufferTooSmall | TransportError::Malformed => DropReason::Malformed,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_published_labels() {
        // Metrics labels and JSON keys: a rename breaks dashboards and alerts.
        let names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            [
                "no_peer",
                "no_endpoint",
                "no_keypair",
                "malformed",
                "unknown_index",
                "replay",
                "authentication",
                "key_expired",
                "spoofed_source",
                "bad_mac",
                "handshake_queue_full",
                "handshake_shed",
                "unexpected_type",
                "io_error",
                "congested_not_ect",
            ]
        );
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(
                *reason as usize, i,
                "{reason:?} is counted at its place in ALL"
            );
        }
    }
}
