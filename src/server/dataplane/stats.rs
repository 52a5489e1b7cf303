//! Per-worker counters: the worker counts in plain integers and publishes them once per batch
//! into atomics that the control thread and `show` read.

use std::sync::atomic::{AtomicU64, Ordering};

/// The reasons are the decision's ([`crate::server::decision`]), counted here.
pub use crate::server::decision::DropReason;

/// A worker's counters as plain numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Packets read from the TUN queue.
    pub tun_rx_packets: u64,
    /// Bytes read from the TUN queue.
    pub tun_rx_bytes: u64,
    /// Packets written to the TUN queue.
    pub tun_tx_packets: u64,
    /// Bytes written to the TUN queue.
    pub tun_tx_bytes: u64,
    /// Datagrams received on the UDP sockets.
    pub udp_rx_packets: u64,
    /// Bytes received on the UDP sockets.
    pub udp_rx_bytes: u64,
    /// Datagrams sent.
    pub udp_tx_packets: u64,
    /// Bytes sent.
    pub udp_tx_bytes: u64,
    /// Client-to-client packets relayed without the TUN.
    pub relayed_packets: u64,
    /// Handshake messages passed to the control thread.
    pub handshakes_forwarded: u64,
    /// Cookie replies sent by the worker itself (under load).
    pub cookie_replies: u64,
    /// Drops, indexed by [`DropReason`].
    pub drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    /// Counts one drop.
    pub fn drop(&mut self, why: DropReason) {
        self.drops[why as usize] += 1;
    }

    /// Sum of all drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Counters of [`Counters`] before the drops.
const PLAIN_COUNTERS: usize = 11;

/// The published copy, one per worker (on its own cache lines).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct SharedCounters {
    values: [AtomicU64; PLAIN_COUNTERS + DropReason::ALL.len()],
}

impl SharedCounters {
    /// Publishes `c` (only the owning worker writes).
    pub fn publish(&self, c: &Counters) {
        let plain = [
            c.tun_rx_packets,
            c.tun_rx_bytes,
            c.tun_tx_packets,
            c.tun_tx_bytes,
            c.udp_rx_packets,
            c.udp_rx_bytes,
            c.udp_tx_packets,
            c.udp_tx_bytes,
            c.relayed_packets,
            c.handshakes_forwarded,
            c.cookie_replies,
        ];
        for (slot, v) in self.values.iter().zip(plain.iter().chain(c.drops.iter())) {
            slot.store(*v, Ordering::Relaxed);
        }
    }

    /// Reads the last published values.
    pub fn snapshot(&self) -> Counters {
        let v: Vec<u64> = self
            .values
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let mut c = Counters {
            tun_rx_packets: v[0],
            tun_rx_bytes: v[1],
            tun_tx_packets: v[2],
            tun_tx_bytes: v[3],
            udp_rx_packets: v[4],
            udp_rx_bytes: v[5],
            udp_tx_packets: v[6],
            udp_tx_bytes: v[7],
            relayed_packets: v[8],
            handshakes_forwarded: v[9],
            cookie_replies: v[10],
            ..Counters::default()
        };
        c.drops.copy_from_slice(&v[PLAIN_COUNTERS..]);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_snapshot_round_trips() {
        let mut c = Counters {
            tun_rx_packets: 3,
            udp_tx_bytes: 99,
            relayed_packets: 2,
            ..Default::default()
        };
        c.drop(DropReason::SpoofedSource);
        c.drop(DropReason::SpoofedSource);
        c.drop(DropReason::IoError);
        let shared = SharedCounters::default();
        shared.publish(&c);
        assert_eq!(shared.snapshot(), c);
        assert_eq!(c.total_drops(), 3);
    }
}
