//! `concentrator`: a userspace VPN headend.
//!
//! Layers, from the wire up:
//! - [`proto`]: the sans-IO protocol core (messages, handshake, transport keys, replay window,
//!   timers). No sockets, no threads, no clock reads, no `unsafe`.
//! - [`config`]: the TOML configuration and its validation.
//! - [`sys`]: the kernel edge (TUN, UDP sockets, routes, nftables); the only place with `unsafe`.
//! - [`session_table`], [`dataplane`], [`control`]: the server's engine.

pub mod config;
pub mod control;
pub mod dataplane;
pub mod offload;
pub mod ops;
pub mod proto;
pub mod route;
pub mod session_table;
pub mod sys;
