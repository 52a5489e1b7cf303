//! `concentrator`: a userspace VPN headend.
//!
//! Layers, from the wire up:
//! - [`proto`]: the sans-IO protocol core (messages, handshake, transport keys, replay window,
//!   timers). No sockets, no threads, no clock reads, no `unsafe`.
//! - [`config`]: the TOML configuration and its validation.
//! - [`sys`]: the kernel edge (TUN, UDP sockets, routes, nftables); the only place with `unsafe`.
//! - [`offload`]: pure segmentation, coalescing and checksums for TUN/UDP offloads.
//! - [`route`]: the longest-prefix table for per-peer `allowed_ips`.
//! - [`tunnel`]: the egress and ingress packet paths the server and the client share.
//! - [`server`]: the headend as a library (engine, data plane, control thread, session table).
//! - [`client`]: the client's data plane: the server's worker, run on the client's TUN.
//! - [`ops`]: the operator's side (control socket, metrics, latency logs).
// `unsafe` is refused everywhere but in `sys`, including in modules added later; the other
// modules also forbid it themselves, so no inner `allow` can bring it back.
#![deny(unsafe_code)]

pub mod client;
pub mod config;
pub mod offload;
pub mod ops;
pub mod proto;
pub mod route;
pub mod server;
#[allow(unsafe_code)]
pub mod sys;
pub mod tunnel;
