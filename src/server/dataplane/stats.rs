//! Per-worker counters: the worker counts in plain integers and publishes them once per batch
//! into atomics that the control thread and `show` read.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::tunnel::fq::stats::SOJOURN_BUCKETS;
use crate::tunnel::fq::FqStats;

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
    /// Sends that carried them (a `UDP_SEGMENT` send carries several datagrams).
    pub udp_tx_sends: u64,
    /// Packets that arrived with an ECN combination RFC 6040 §4.2 marks "(!!!)".
    pub ecn_alarms: u64,
    /// Client-to-client packets relayed without the TUN.
    pub relayed_packets: u64,
    /// Handshake messages passed to the control thread.
    pub handshakes_forwarded: u64,
    /// Cookie replies sent by the worker itself (under load).
    pub cookie_replies: u64,
    /// Drops, indexed by [`DropReason`].
    pub drops: [u64; DropReason::ALL.len()],
    /// The egress queue's (TUN reads waiting to be sealed and sent): what went through it,
    /// its marks and drops, its backlog and the queue delays.
    pub queue: FqStats,
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
const PLAIN_COUNTERS: usize = 13;

/// Numbers of [`FqStats`] published, before its sojourn buckets.
const QUEUE_COUNTERS: usize = 16;
/// Where the queue's numbers start in the published values.
const QUEUE_AT: usize = PLAIN_COUNTERS + DropReason::ALL.len();
const VALUES: usize = QUEUE_AT + QUEUE_COUNTERS + SOJOURN_BUCKETS;

/// The published copy, one per worker (on its own cache lines).
#[derive(Debug)]
#[repr(align(128))]
pub struct SharedCounters {
    values: [AtomicU64; VALUES],
}

impl Default for SharedCounters {
    fn default() -> Self {
        SharedCounters {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The queue's counters in publishing order.
fn queue_values(q: &FqStats) -> [u64; QUEUE_COUNTERS] {
    [
        q.enqueued_packets,
        q.enqueued_bytes,
        q.dequeued_packets,
        q.dequeued_bytes,
        q.aqm_drops,
        q.aqm_drop_bytes,
        q.ce_marks,
        q.overflow_drops,
        q.overflow_drop_bytes,
        q.new_flows,
        q.backlog_bytes,
        q.backlog_packets,
        q.peak_backlog_bytes,
        q.sojourn.count,
        q.sojourn.total_nanos,
        q.sojourn.max_nanos,
    ]
}

/// [`queue_values`] read back.
fn queue_from(v: &[u64]) -> FqStats {
    let mut q = FqStats {
        enqueued_packets: v[0],
        enqueued_bytes: v[1],
        dequeued_packets: v[2],
        dequeued_bytes: v[3],
        aqm_drops: v[4],
        aqm_drop_bytes: v[5],
        ce_marks: v[6],
        overflow_drops: v[7],
        overflow_drop_bytes: v[8],
        new_flows: v[9],
        backlog_bytes: v[10],
        backlog_packets: v[11],
        peak_backlog_bytes: v[12],
        ..FqStats::default()
    };
    q.sojourn.count = v[13];
    q.sojourn.total_nanos = v[14];
    q.sojourn.max_nanos = v[15];
    q.sojourn
        .buckets
        .copy_from_slice(&v[QUEUE_COUNTERS..QUEUE_COUNTERS + SOJOURN_BUCKETS]);
    q
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
            c.udp_tx_sends,
            c.ecn_alarms,
        ];
        let queue = queue_values(&c.queue);
        let all = plain
            .iter()
            .chain(c.drops.iter())
            .chain(queue.iter())
            .chain(c.queue.sojourn.buckets.iter());
        for (slot, v) in self.values.iter().zip(all) {
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
            udp_tx_sends: v[11],
            ecn_alarms: v[12],
            ..Counters::default()
        };
        c.drops.copy_from_slice(&v[PLAIN_COUNTERS..QUEUE_AT]);
        c.queue = queue_from(&v[QUEUE_AT..]);
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
            udp_tx_sends: 4,
            ecn_alarms: 5,
            relayed_packets: 2,
            ..Default::default()
        };
        c.drop(DropReason::SpoofedSource);
        c.drop(DropReason::SpoofedSource);
        c.drop(DropReason::IoError);
        c.queue.ce_marks = 5;
        c.queue.backlog_bytes = 7;
        c.queue.sojourn.record(std::time::Duration::from_millis(3));
        let shared = SharedCounters::default();
        shared.publish(&c);
        assert_eq!(shared.snapshot(), c);
        assert_eq!(c.total_drops(), 3);
    }
}
