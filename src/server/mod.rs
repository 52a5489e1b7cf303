//! The headend as a library: [`engine::Engine`] starts a server from a validated configuration
//! and hands back a handle to stop it, read its counters and command it.
//!
//! Inside, from the top: `engine` wires the threads; `dataplane` (the io_uring workers) and
//! `control` (handshakes, timers, operator commands) never name each other, they meet only
//! through [`handoff`], the [`session_table`] and the [`latency`] histograms; [`decision`]
//! holds what the workers decide about a datagram as pure functions.
#![forbid(unsafe_code)]

pub mod control;
pub mod dataplane;
pub mod decision;
pub mod engine;
pub mod error;
pub mod handoff;
pub mod host;
pub mod latency;
pub mod session_table;
pub mod threads;
