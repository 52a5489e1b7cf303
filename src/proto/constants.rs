//! Timers and limits. Each names where it comes from.

use std::time::Duration;

/// Noise protocol name. Noise spec rev. 34, section 8 (naming) and 9 (the `psk2` modifier).
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_AESGCM_SHA256";
/// Prologue mixed into every handshake hash: binds both sides to this protocol and version
/// (Noise spec section 6: "prologue").
pub const NOISE_PROLOGUE: &[u8] = b"concentrator v1";

/// Initiate a new handshake once the current keypair is this old. WireGuard whitepaper
/// section 6.1 (`Rekey-After-Time`).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Never use a keypair older than this. WireGuard whitepaper section 6.1 (`Reject-After-Time`).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Keep retrying a handshake for at most this long before giving up. WireGuard whitepaper
/// section 6.1 (`Rekey-Attempt-Time`).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retry an unanswered initiation after this long (plus jitter). WireGuard whitepaper
/// section 6.1 (`Rekey-Timeout`).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Up to this much random jitter is added to each retry, so that many clients restarted at once
/// do not retry in lockstep. WireGuard whitepaper section 6.1 (jitter of up to 333 ms).
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Send a keepalive when data was received but nothing sent for this long. WireGuard whitepaper
/// section 6.1 (`Keepalive-Timeout`).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A server answers a keepalive with one of its own when it has sent that peer nothing for
/// this long. Our own rule, not WireGuard's (whose keepalives are never answered): a client
/// with several servers (`server_endpoints`) probes a server that stopped answering its data
/// with a keepalive every [`LIVENESS_PROBE_INTERVAL`], and needs an answer from a live one
/// within that interval. Half of it: whatever the server sent in the last half interval is
/// already an answer on its way.
pub const KEEPALIVE_ANSWER_AFTER: Duration = Duration::from_millis(500);
/// How long a client with several servers waits for an answer to its data before it probes
/// (and as long again for the probe's answer before it moves to the next server): our own
/// choice, so that a client resumes through another headend within 3 s of a headend's death
/// (2 intervals, a handshake and the first packet's round trip).
pub const LIVENESS_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Zero all keys of a peer after this long without a new handshake. WireGuard whitepaper
/// section 6.3 (`Reject-After-Time` x 3).
pub const ZERO_KEYS_AFTER: Duration = Duration::from_secs(180 * 3);
/// The cookie secret is replaced this often. WireGuard whitepaper section 5.4.7 (two minutes).
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// An initiator keeps a received cookie this long. WireGuard whitepaper section 5.4.7.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);

/// Rekey after this many messages under one key (native suite): half of
/// [`REJECT_AFTER_MESSAGES`].
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 27;
/// Refuse to send or receive under a key after this many messages: the AES-GCM
/// confidentiality limit for small packets. RFC 9001 section 6.6 sets 2^23 packets for
/// AES-128-GCM and AES-256-GCM, assuming packets of up to 2^16 bytes, and allows endpoints
/// that limit packet size to use the higher limits of appendix B. Appendix B.1.1 bounds the
/// attacker's distinguishing advantage by its dominant term `2 * (q * l)^2 / 2^128`, with `q`
/// packets per key of `l` 16-byte blocks of associated data plus plaintext; for a target of
/// 2^-57 that gives `q <= 2^35 / l`, so 2^28 packets when packets are at most 2^11 bytes
/// (`l = 2^7`). Ours are: 16 bytes of header (the AAD) plus at most [`MAX_MTU`] bytes of
/// plaintext is 1936 bytes, 121 blocks. (The appendix's integrity limit for the same size,
/// 2^57 forgery attempts, is not counted: it cannot be reached within [`REJECT_AFTER_TIME`].)
pub const REJECT_AFTER_MESSAGES: u64 = 1 << 28;
/// The message size [`REJECT_AFTER_MESSAGES`] assumes (2^11 bytes of AAD and plaintext). A
/// larger message, which only a relayed super-packet in offload mode can be, is charged as
/// `ceil(len / MESSAGE_BYTES)` messages: the bound of RFC 9001 appendix B.1.1 depends on `q`
/// and `l` only through `q * l`, the AES blocks sealed under the key, so charging by size keeps
/// those within the 2^35 the limit allows.
pub const MESSAGE_BYTES: usize = 1 << 11;

/// Width of the replay window in counters, for both suites: as large as the Linux kernel's
/// WireGuard (`drivers/net/wireguard/messages.h`: `COUNTER_BITS_TOTAL` 8192, of which
/// `COUNTER_WINDOW_SIZE = COUNTER_BITS_TOTAL - BITS_PER_LONG` = 8128 are usable). RFC 6479 style;
/// must be at least 2048 (our own requirement, so that reordering across workers and queues
/// does not drop packets).
pub const REPLAY_WINDOW: u64 = 8192 - 64;

/// Noise protocol name of the WireGuard suite, its `CONSTRUCTION`. WireGuard whitepaper
/// section 5.4 ("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"); wireguard-go `device/noise-protocol.go`
/// `NoiseConstruction`.
pub const WG_NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's `IDENTIFIER`, mixed into the hash right after the construction: exactly Noise's
/// prologue (`h = HASH(HASH(CONSTRUCTION) || IDENTIFIER)`). WireGuard whitepaper section 5.4.2;
/// wireguard-go `device/noise-protocol.go` `WGIdentifier`.
pub const WG_IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// WireGuard's `Rekey-After-Messages` (2^60). WireGuard whitepaper section 6.1;
/// wireguard-go `device/constants.go` `RekeyAfterMessages`.
pub const WG_REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// WireGuard's `Reject-After-Messages` (2^64 - 2^13 - 1: the counter space less the replay
/// window). WireGuard whitepaper section 6.1; wireguard-go `device/constants.go`
/// `RejectAfterMessages`.
pub const WG_REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Largest inner MTU the handshake may assign: keeps every sealed packet under 2^7 AES blocks,
/// the assumption behind [`REJECT_AFTER_MESSAGES`].
pub const MAX_MTU: u16 = 1920;
/// Smallest inner MTU: IPv4 requires every link to carry 576-byte datagrams (RFC 791); we use
/// the IPv6 minimum, 1280 (RFC 8200 section 5), so that IPv6 inside always works.
pub const MIN_MTU: u16 = 1280;
