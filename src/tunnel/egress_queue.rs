//! The egress queue both ends put between their TUN reads and their sends: TUN reads are
//! classified (inner flow, ECN capability) and queued in the per-flow fair queue with CoDel
//! ([`super::fq`]); packets leave in the fair queue's order, only while the bytes handed to the
//! socket and not yet completed stay under a bound, so the standing queue forms here, where
//! flows are kept apart and CoDel acts, not in the kernel's FIFOs behind it.
//!
//! Sans-IO: the caller owns the buffers (the server's io_uring slots, the client's pool), reads
//! and sends; it tells the queue when a send is handed to the kernel and when it completes.

use super::ecn;
use super::fq::{Dequeued, Dropped, FairQueue, FqConfig, FqConfigError, FqStats, Packet};
use crate::proto::time::Instant;

/// The TUN's `txqueuelen` the product sets: the kernel's ring of packets waiting for our reads,
/// a plain FIFO in front of the fair queue. Its default, 500, is 750 KB of 1500-byte packets
/// and up to 32 MB of 64 KB super-packets; since both ends keep reads armed and drain it into
/// the fair queue each round, it only needs to absorb what arrives during one round of sealing
/// (a few hundred microseconds): 256 is 384 KB of full-size packets, about 3 ms at 1 Gbit/s.
/// Past it the kernel drops at the tail, which the senders see as loss, as from any router.
pub const TUN_TX_QUEUE_LEN: u32 = 256;

/// The underlay socket's send buffer with the fair queue (`SO_SNDBUF`; the kernel doubles it
/// for its bookkeeping, socket(7)): what the socket path may hold below the queue (the qdisc,
/// the device, across a veth up to the receiver) until transmitted, in bytes. With the
/// default 4 MiB (8 MiB of buffers), a slow underlay keeps a standing queue of seconds there,
/// where the fair queue cannot act; with this one, sends wait for room and the backlog stays
/// in the fair queue. 512 KiB of buffers are 0.4 ms at 10 Gbit/s, 40 ms at 100 Mbit/s.
pub const SOCKET_SEND_BUFFER: i32 = 256 << 10;

/// What the egress queue may hold and what may be in flight behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressLimits {
    /// TUN reads queued at most (buffers the queue may hold).
    pub queued_packets: u32,
    /// Bytes queued at most.
    pub queued_bytes: u64,
    /// The largest packet a read brings (a super-packet with offloads): a flow holding no
    /// more than this behind its head has no standing queue (CoDel's `max_packet`).
    pub max_packet: u32,
    /// How much may be handed to the socket and not yet completed.
    pub budget: SendBudget,
}

/// The bound on sends handed to the kernel and not yet completed: in bytes (a 64 KiB
/// super-packet and a 60-byte ACK are not the same load) and in sends (each holds a buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendBudget {
    pub max_bytes: u64,
    pub max_sends: u32,
}

impl SendBudget {
    /// Whether one more packet may leave the queue now, with `bytes` in `sends` sends still in
    /// flight: at least one send may always be in flight, however large, so a packet larger
    /// than the byte bound still leaves.
    pub const fn allows(&self, bytes: u64, sends: u32) -> bool {
        sends == 0 || (bytes < self.max_bytes && sends < self.max_sends)
    }
}

/// With offloads, TUN reads queued at most (each a buffer of a 64 KiB super-packet's size):
/// 96. Small packets (UDP is not merged into super-packets) take a buffer each too, and the
/// queue must hold enough of them for CoDel to see a standing delay before it overflows (an
/// overflow drops the oldest, which hides the delay): 96 packets of 1300 bytes are 50 ms at
/// 20 Mbit/s.
const QUEUED_SUPER_PACKETS: u32 = 96;
/// Without offloads, TUN reads queued at most (one packet each, 2 KiB slots).
const QUEUED_PACKETS: u32 = 256;
/// Bytes queued at most: about 16 ms at 1 Gbit/s. CoDel keeps the standing delay near its 5 ms
/// target; this bound only caps a burst (RFC 8290 §4.1 bounds the queue in memory, not packets).
const QUEUED_BYTES: u64 = 2 << 20;
/// Bytes handed to the sockets and not yet completed at most: four super-packets. A send that
/// the socket's buffer cannot take yet stays in flight; past this, packets wait in the fair
/// queue instead of behind the socket. It also bounds the sealing done between two looks at
/// the TUN reads that completed.
const SEND_BYTES_IN_FLIGHT: u64 = 256 << 10;
/// Slots with sends in flight at most: with offloads 16, without 64 (each send a packet).
const SENDS_WITH_OFFLOADS: u32 = 16;
const SENDS_WITHOUT_OFFLOADS: u32 = 64;

impl EgressLimits {
    /// The limits for TUN reads with offloads (super-packets) or without (one packet each).
    pub fn for_reads(offloads: bool) -> EgressLimits {
        let (queued_packets, max_sends) = if offloads {
            (QUEUED_SUPER_PACKETS, SENDS_WITH_OFFLOADS)
        } else {
            (QUEUED_PACKETS, SENDS_WITHOUT_OFFLOADS)
        };
        // CoDel's "no standing queue below one packet behind the head" uses the MTU, also with
        // super-packets: a queue of small packets must not pass for a short one until it holds
        // a super-packet's bytes, and a super-packet behind the head is a standing queue.
        let max_packet = u32::from(crate::proto::constants::MAX_MTU);
        EgressLimits {
            queued_packets,
            queued_bytes: QUEUED_BYTES,
            max_packet,
            budget: SendBudget {
                max_bytes: SEND_BYTES_IN_FLIGHT,
                max_sends,
            },
        }
    }
}

/// How the queue sees one TUN read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// Hash of the inner 5-tuple (or of the addresses, for packets without ports).
    pub flow_hash: u32,
    /// ECT(0), ECT(1) or CE: CoDel marks it rather than drops it.
    pub ecn_capable: bool,
}

/// IP protocol numbers whose first four payload bytes are the ports (IANA: TCP 6, UDP 17,
/// SCTP 132, UDP-Lite 136).
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132 | 136)
}

/// Classifies an IP packet (the inner packet, or the first of a super-packet: its segments
/// share the header) under `seed`, a per-queue random value so that flows cannot be made to
/// collide on purpose (Linux `fq_codel` perturbs its hash the same way). Not IP: one flow
/// for all such packets, not ECN-capable.
pub fn classify(packet: &[u8], seed: u32) -> Classified {
    let ecn_capable = ecn::packet_ecn(packet).is_some_and(|e| e.is_ecn_capable());
    let mut h = FlowHasher::new(seed);
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let header = usize::from(packet[0] & 0x0f) * 4;
            let protocol = packet[9];
            h.word(&packet[12..16]);
            h.word(&packet[16..20]);
            h.add(u32::from(protocol));
            // Only the first fragment (offset 0, RFC 791) carries the ports; a fragmented
            // datagram's pieces all hash by addresses then (MF set or offset non-zero).
            let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
            if has_ports(protocol) && !fragment {
                if let Some(ports) = packet.get(header..header + 4) {
                    h.word(ports);
                }
            }
        }
        Some(6) if packet.len() >= 40 => {
            for chunk in packet[8..40].chunks(4) {
                h.word(chunk);
            }
            let next = packet[6];
            h.add(u32::from(next));
            // The flow label (RFC 6437) names the flow when set; the ports, when the
            // transport header follows the fixed header directly.
            h.add(u32::from_be_bytes([
                0,
                packet[1] & 0x0f,
                packet[2],
                packet[3],
            ]));
            if has_ports(next) {
                if let Some(ports) = packet.get(40..44) {
                    h.word(ports);
                }
            }
        }
        _ => {}
    }
    Classified {
        flow_hash: h.finish(),
        ecn_capable,
    }
}

/// A small multiplicative hash over 32-bit words (not cryptographic: the seed keeps it from
/// being steered, the fair queue only needs an even spread).
struct FlowHasher(u64);

impl FlowHasher {
    fn new(seed: u32) -> Self {
        FlowHasher(u64::from(seed) ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn add(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x0000_0100_0000_01b3) ^ (self.0 >> 29);
    }

    fn word(&mut self, bytes: &[u8]) {
        let mut w = [0u8; 4];
        w[..bytes.len().min(4)].copy_from_slice(&bytes[..bytes.len().min(4)]);
        self.add(u32::from_ne_bytes(w));
    }

    fn finish(&self) -> u32 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x as u32
    }
}

/// The fair queue with the send budget in front of it.
pub struct EgressQueue {
    fq: FairQueue,
    budget: SendBudget,
    seed: u32,
    in_flight_bytes: u64,
    in_flight_sends: u32,
}

impl EgressQueue {
    /// A queue with everything allocated now; `seed` perturbs the flow hash.
    pub fn new(limits: EgressLimits, seed: u32) -> Result<Self, FqConfigError> {
        let config = FqConfig::new(
            limits.queued_packets,
            limits.queued_bytes,
            limits.max_packet,
        );
        Ok(EgressQueue {
            fq: FairQueue::new(config)?,
            budget: limits.budget,
            seed,
            in_flight_bytes: 0,
            in_flight_sends: 0,
        })
    }

    /// Queues the TUN read in buffer `slot`: `packet` is its IP packet (after any virtio
    /// header), `len` the bytes the queue counts for it. Buffers the queue drops to make room
    /// (possibly this one) go to `dropped`.
    pub fn enqueue(
        &mut self,
        slot: u32,
        packet: &[u8],
        len: u32,
        now: Instant,
        dropped: &mut impl FnMut(Dropped),
    ) {
        let class = classify(packet, self.seed);
        let packet = Packet {
            slot,
            len,
            flow_hash: class.flow_hash,
            ecn_capable: class.ecn_capable,
        };
        self.fq.enqueue(packet, now, dropped);
    }

    /// The next packet to send, if the send budget allows one and the queue holds one; packets
    /// CoDel drops on the way go to `dropped`. A packet with [`Dequeued::mark_ce`] must be
    /// marked ([`mark`]) before it is sealed.
    pub fn dequeue(&mut self, now: Instant, dropped: &mut impl FnMut(Dropped)) -> Option<Dequeued> {
        if !self
            .budget
            .allows(self.in_flight_bytes, self.in_flight_sends)
        {
            return None;
        }
        self.fq.dequeue(now, dropped)
    }

    /// A send of `bytes` was handed to the kernel.
    pub fn sent(&mut self, bytes: u64) {
        self.in_flight_bytes += bytes;
        self.in_flight_sends += 1;
    }

    /// A send of `bytes` [`EgressQueue::sent`] counted completed.
    pub fn completed(&mut self, bytes: u64) {
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(bytes);
        self.in_flight_sends = self.in_flight_sends.saturating_sub(1);
    }

    /// Every send [`EgressQueue::sent`] counted completed: for a caller whose sends complete
    /// as they are made (blocking `sendmsg`), which counts a round's sends as in flight until
    /// it has looked at the TUN again, so a round seals a bounded amount.
    pub fn all_completed(&mut self) {
        self.in_flight_bytes = 0;
        self.in_flight_sends = 0;
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.fq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fq.is_empty()
    }

    /// Sends in flight.
    pub fn sends_in_flight(&self) -> u32 {
        self.in_flight_sends
    }

    /// Packets waiting with nothing in flight to wake the caller when it completes: it must
    /// come back for them without waiting on its I/O.
    pub fn needs_service(&self) -> bool {
        !self.is_empty()
            && self
                .budget
                .allows(self.in_flight_bytes, self.in_flight_sends)
    }

    pub fn stats(&self) -> &FqStats {
        self.fq.stats()
    }
}

/// Carries out CoDel's mark on the dequeued `packet` (its IP header): CE set, the IPv4 header
/// checksum updated. False if it cannot carry the mark (not ECN-capable after all): the
/// caller drops it then, as CoDel would have.
pub fn mark(packet: &mut [u8]) -> bool {
    ecn::mark_ce(packet)
}

#[cfg(test)]
mod tests;
