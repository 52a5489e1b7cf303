//! The sans-IO protocol core.
//!
//! Nothing in here opens a socket, spawns a thread, reads a clock or uses `unsafe`: the caller
//! passes the current time ([`time::Instant`]) and the buffers, and gets back what to send and what
//! to deliver. The wire format is specified in `docs/protocol.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod client;
pub mod constants;
pub mod cookie;
pub mod handshake;
pub mod keypair;
pub mod keys;
pub mod padding;
pub mod ratelimit;
pub mod replay;
pub mod rng;
pub mod server;
pub mod session;
pub mod suite;
pub mod time;
pub mod wire;
pub mod wireguard;
