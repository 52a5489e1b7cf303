//! A per-flow fair queue with CoDel, as Linux's `fq_codel` (RFC 8290): packets are hashed by
//! their flow into a fixed number of buckets, each a FIFO with its own CoDel (RFC 8289); the
//! buckets are served by deficit round robin with a byte quantum, flows that just became
//! active first (the new-flows list), so a sparse flow (a ping, a DNS query, a voice call)
//! passes a bulk flow's backlog instead of waiting behind it.
//!
//! Sans-IO and allocation-free per packet: the queue holds [`Packet`] handles to buffers the
//! caller owns, in entries allocated once; the caller passes the time, supplies the flow hash,
//! and gets back, through a callback, every handle the queue drops, and in [`Dequeued`]
//! whether to mark the packet CE (see [`crate::tunnel::ecn::mark_ce`]) before sending it.
//! Limits are in bytes as well as packets, since a 64 KB super-packet counts as one packet.

pub mod codel;
mod flows;
pub mod stats;
#[cfg(test)]
mod tests;

use std::time::Duration;

use self::codel::{Codel, CodelParams, Released, Source};
use self::flows::{Flow, FlowList, Membership, PacketList, Slab};
pub use self::stats::{FqStats, SojournSummary};
use crate::proto::time::Instant;

/// Buckets flows are hashed into: 1024 (RFC 8290 §5.2.5).
pub const DEFAULT_BUCKETS: u32 = 1024;
/// Bytes a flow may send per round: an Ethernet MTU with its header, 1514 (RFC 8290 §5.2.4).
pub const DEFAULT_QUANTUM: u32 = 1514;
/// At most this many packets dropped from the fattest flow per overflow, to spread the scan
/// for it over several drops (Linux `sch_fq_codel.c`, `drop_batch_size`).
pub const OVERFLOW_DROP_BATCH: u32 = 64;

/// A packet in a buffer the caller owns, as the queue knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Which buffer (the caller's slot index).
    pub slot: u32,
    /// Its bytes (what the byte limit and the quantum count).
    pub len: u32,
    /// The caller's hash of the inner 5-tuple: packets with equal hashes share a flow queue.
    pub flow_hash: u32,
    /// ECT(0), ECT(1) or CE: CoDel marks it instead of dropping it.
    pub ecn_capable: bool,
}

/// A packet as queued: the handle and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Queued {
    pub packet: Packet,
    pub enqueued: Instant,
}

/// A packet the queue lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dequeued {
    pub packet: Packet,
    /// Time it spent queued.
    pub sojourn: Duration,
    /// Set CE in its IP header before sending it (CoDel marked it instead of dropping it).
    pub mark_ce: bool,
}

/// Why the queue dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// CoDel: its flow's queue delay stayed above the target.
    Aqm,
    /// The queue was over its byte or packet limit; dropped from the fattest flow's head.
    Overflow,
}

/// A packet the queue dropped: its buffer is the caller's again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub packet: Packet,
    pub cause: DropCause,
}

/// The fair queue's sizes and CoDel's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FqConfig {
    /// Flow buckets; see [`DEFAULT_BUCKETS`].
    pub buckets: u32,
    /// DRR quantum in bytes; see [`DEFAULT_QUANTUM`].
    pub quantum: u32,
    /// Packets the queue holds at most (its entries, allocated once): at most the caller's
    /// buffers that can be queued.
    pub packet_limit: u32,
    /// Bytes the queue holds at most (RFC 8290 §4.1's limit, in bytes: with 64 KB
    /// super-packets a limit in packets bounds nothing).
    pub byte_limit: u64,
    pub codel: CodelParams,
}

impl FqConfig {
    /// The RFC 8290 defaults with the given limits; CoDel's `max_packet` is `mtu`.
    pub fn new(packet_limit: u32, byte_limit: u64, mtu: u32) -> Self {
        FqConfig {
            buckets: DEFAULT_BUCKETS,
            quantum: DEFAULT_QUANTUM,
            packet_limit,
            byte_limit,
            codel: CodelParams {
                target: codel::TARGET,
                interval: codel::INTERVAL,
                max_packet: u64::from(mtu),
                ecn: true,
            },
        }
    }
}

/// A configuration the queue cannot work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FqConfigError {
    #[error("the fair queue needs at least one flow bucket and at most 2^31")]
    Buckets,
    #[error("the fair queue's quantum must be at least one byte")]
    Quantum,
    #[error("the fair queue's packet limit must be at least 1 and below 2^32 - 1")]
    PacketLimit,
    #[error("the fair queue's byte limit must be at least 1")]
    ByteLimit,
}

/// The fair queue; see the module documentation.
pub struct FairQueue {
    config: FqConfig,
    slab: Slab,
    flows: Vec<Flow>,
    new_flows: FlowList,
    old_flows: FlowList,
    stats: FqStats,
}

impl FairQueue {
    /// A queue with everything it will need allocated now.
    pub fn new(config: FqConfig) -> Result<Self, FqConfigError> {
        if config.buckets == 0 || config.buckets > 1 << 31 {
            return Err(FqConfigError::Buckets);
        }
        if config.quantum == 0 {
            return Err(FqConfigError::Quantum);
        }
        if config.packet_limit == 0 || config.packet_limit == u32::MAX {
            return Err(FqConfigError::PacketLimit);
        }
        if config.byte_limit == 0 {
            return Err(FqConfigError::ByteLimit);
        }
        Ok(FairQueue {
            config,
            slab: Slab::new(config.packet_limit),
            flows: vec![Flow::default(); config.buckets as usize],
            new_flows: FlowList::default(),
            old_flows: FlowList::default(),
            stats: FqStats::default(),
        })
    }

    /// The counters and the current backlog.
    pub fn stats(&self) -> &FqStats {
        &self.stats
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.slab.used() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.slab.used() == 0
    }

    /// Bytes queued.
    pub fn backlog_bytes(&self) -> u64 {
        self.stats.backlog_bytes
    }

    /// The bucket of a flow hash: the hash scaled to the bucket count (Linux's
    /// `reciprocal_scale`, no division).
    pub fn bucket_of(&self, flow_hash: u32) -> u32 {
        ((u64::from(flow_hash) * u64::from(self.config.buckets)) >> 32) as u32
    }

    /// Queues `packet`, arrived at `now`. Over a limit, packets are dropped from the head of
    /// the flow with the most bytes queued (RFC 8290 §4.1), which may be this packet's own
    /// flow; each drop goes to `dropped`. A packet larger than the byte limit is dropped at once.
    pub fn enqueue(&mut self, packet: Packet, now: Instant, dropped: &mut impl FnMut(Dropped)) {
        let len = u64::from(packet.len);
        self.stats.enqueued_packets += 1;
        self.stats.enqueued_bytes += len;
        if len > self.config.byte_limit {
            self.count_overflow(packet, dropped);
            return;
        }
        if self.slab.is_full() {
            self.drop_from_fattest(dropped);
        }
        let bucket = self.bucket_of(packet.flow_hash);
        let flow = &mut self.flows[bucket as usize];
        let queued = Queued {
            packet,
            enqueued: now,
        };
        if flow.queue.push(&mut self.slab, queued).is_err() {
            // Unreachable while the fattest flow holds a packet whenever the slab is full.
            self.count_overflow(packet, dropped);
            return;
        }
        self.stats.backlog_packets += 1;
        self.stats.backlog_bytes += len;
        if flow.membership == Membership::Idle {
            flow.deficit = i64::from(self.config.quantum);
            self.new_flows
                .push_back(&mut self.flows, bucket, Membership::New);
            self.stats.new_flows += 1;
        }
        while self.stats.backlog_bytes > self.config.byte_limit {
            self.drop_from_fattest(dropped);
        }
        self.stats.peak_backlog_bytes = self.stats.peak_backlog_bytes.max(self.stats.backlog_bytes);
    }

    /// The next packet to send at `now`, by DRR over the new flows, then the old ones (RFC 8290
    /// §4.2), through its flow's CoDel; packets CoDel drops go to `dropped`. `None` when empty.
    pub fn dequeue(&mut self, now: Instant, dropped: &mut impl FnMut(Dropped)) -> Option<Dequeued> {
        loop {
            let (from_new, bucket) = match self.new_flows.front() {
                Some(bucket) => (true, bucket),
                None => (false, self.old_flows.front()?),
            };
            if self.flows[bucket as usize].deficit <= 0 {
                // Its round's bytes are spent: a quantum more, at the end of the old flows.
                self.flows[bucket as usize].deficit += i64::from(self.config.quantum);
                self.pop_front(from_new);
                self.old_flows
                    .push_back(&mut self.flows, bucket, Membership::Old);
                continue;
            }
            let Some(released) = self.codel_dequeue(bucket, now, dropped) else {
                self.pop_front(from_new);
                // A new flow that emptied goes through the old flows once before it may be new
                // again, so that flows alternating empty and not cannot starve the old ones.
                if from_new && !self.old_flows.is_empty() {
                    self.old_flows
                        .push_back(&mut self.flows, bucket, Membership::Old);
                }
                continue;
            };
            let packet = released.packet.packet;
            self.flows[bucket as usize].deficit -= i64::from(packet.len);
            let sojourn = now - released.packet.enqueued;
            self.stats.dequeued_packets += 1;
            self.stats.dequeued_bytes += u64::from(packet.len);
            self.stats.ce_marks += u64::from(released.mark_ce);
            self.stats.sojourn.record(sojourn);
            return Some(Dequeued {
                packet,
                sojourn,
                mark_ce: released.mark_ce,
            });
        }
    }

    fn pop_front(&mut self, from_new: bool) {
        let list = if from_new {
            &mut self.new_flows
        } else {
            &mut self.old_flows
        };
        list.pop_front(&mut self.flows);
    }

    /// The next packet of the flow in `bucket` past its CoDel.
    fn codel_dequeue(
        &mut self,
        bucket: u32,
        now: Instant,
        dropped: &mut impl FnMut(Dropped),
    ) -> Option<Released> {
        let Flow { queue, codel, .. } = &mut self.flows[bucket as usize];
        let mut source = FlowSource {
            queue,
            slab: &mut self.slab,
            stats: &mut self.stats,
            dropped,
        };
        Codel::dequeue(codel, &mut source, now, &self.config.codel)
    }

    /// Drops from the head of the flow with the most bytes queued: up to half its bytes, at
    /// most [`OVERFLOW_DROP_BATCH`] packets, at least one (Linux `fq_codel_drop`).
    fn drop_from_fattest(&mut self, dropped: &mut impl FnMut(Dropped)) {
        let fattest = self
            .flows
            .iter_mut()
            .filter(|f| f.queue.packets > 0)
            .max_by_key(|f| f.queue.bytes);
        let Some(flow) = fattest else {
            return;
        };
        let keep = flow.queue.bytes / 2;
        for _ in 0..OVERFLOW_DROP_BATCH {
            let Some(queued) = flow.queue.pop(&mut self.slab) else {
                break;
            };
            self.stats.backlog_packets -= 1;
            self.stats.backlog_bytes -= u64::from(queued.packet.len);
            self.stats.overflow_drops += 1;
            self.stats.overflow_drop_bytes += u64::from(queued.packet.len);
            dropped(Dropped {
                packet: queued.packet,
                cause: DropCause::Overflow,
            });
            if flow.queue.bytes <= keep {
                break;
            }
        }
    }

    fn count_overflow(&mut self, packet: Packet, dropped: &mut impl FnMut(Dropped)) {
        self.stats.overflow_drops += 1;
        self.stats.overflow_drop_bytes += u64::from(packet.len);
        dropped(Dropped {
            packet,
            cause: DropCause::Overflow,
        });
    }
}

/// One flow's queue as CoDel sees it.
struct FlowSource<'a, F> {
    queue: &'a mut PacketList,
    slab: &'a mut Slab,
    stats: &'a mut FqStats,
    dropped: &'a mut F,
}

impl<F: FnMut(Dropped)> Source for FlowSource<'_, F> {
    fn pop(&mut self) -> Option<Queued> {
        let queued = self.queue.pop(self.slab)?;
        self.stats.backlog_packets -= 1;
        self.stats.backlog_bytes -= u64::from(queued.packet.len);
        Some(queued)
    }

    fn backlog_bytes(&self) -> u64 {
        self.queue.bytes
    }

    fn drop_popped(&mut self, queued: Queued) {
        self.stats.aqm_drops += 1;
        self.stats.aqm_drop_bytes += u64::from(queued.packet.len);
        (self.dropped)(Dropped {
            packet: queued.packet,
            cause: DropCause::Aqm,
        });
    }
}
