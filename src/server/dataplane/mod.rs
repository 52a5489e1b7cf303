//! The per-worker data plane: io_uring loops moving packets between a TUN queue and UDP
//! sockets, sealing and opening them in place.

mod gather;
mod paths;
mod queueing;
pub mod slots;
mod staging;
pub mod stats;
pub mod worker;
