//! The staging slots' bookkeeping: which slot is being filled in this batch, where to look for
//! an idle one, and how the datagrams staged in it are grouped into sends. `gather` fills
//! and flushes them.

use std::net::SocketAddr;

use super::slots::{STAGING_BYTES, STAGING_SENDS};
use crate::tunnel::train::TrainBuilder;

/// The staging slots and what the one being filled holds.
pub(super) struct Staging {
    /// The first staging slot (they are the ring's last).
    pub(super) first: u32,
    /// How many (0: no gathering, with the egress queue or without offloads).
    pub(super) count: u32,
    /// The slot being filled in this batch.
    pub(super) filling: Option<u32>,
    /// Where to look for an idle one next.
    pub(super) next: u32,
    /// How what is staged in it leaves: the sends, and where each datagram lies.
    pub(super) trains: TrainBuilder<SocketAddr, STAGING_SENDS>,
}

impl Staging {
    /// `count` staging slots from slot `first`.
    pub(super) fn new(first: u32, count: u32) -> Staging {
        Staging {
            first,
            count,
            filling: None,
            next: 0,
            trains: TrainBuilder::new(STAGING_BYTES),
        }
    }

    /// Whether the worker gathers at all.
    pub(super) fn enabled(&self) -> bool {
        self.count > 0
    }
}
