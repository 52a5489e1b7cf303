//! The layout of a worker's I/O slots, which the worker (arming reads and receives) and the
//! packet paths (slicing what completed) must agree on.

use crate::tunnel::egress_queue::EgressLimits;
/// Bytes of one region of an offload slot (input: a TUN read or a GRO receive; output: the
/// sealed segments or the coalesced frames).
pub use crate::tunnel::REGION;
/// Operations one offload slot may have in flight (sends or TUN writes): a GRO receive holds at
/// most 64 datagrams (UDP_GRO_CNT_MAX, net/ipv4/udp_offload.c), and in the worst case each
/// becomes its own write or relay.
pub const OPS_PER_SLOT: usize = 64;

/// Reads kept in flight on the TUN queue at least (with offloads each may carry 64 KB); the
/// worker has more TUN slots, for what the egress queue and the sends hold
/// ([`tun_slot_count`]).
pub const TUN_READS_IN_FLIGHT: usize = 32;

/// TUN slots of a worker: the reads kept armed, plus what the queue and the sends may hold,
/// so that at least [`TUN_READS_IN_FLIGHT`] reads stay armed however full the queue is.
/// Without the queue, only the reads.
pub fn tun_slot_count(offloads: bool, fair_queue: bool) -> usize {
    if !fair_queue {
        return TUN_READS_IN_FLIGHT;
    }
    let l = EgressLimits::for_reads(offloads);
    TUN_READS_IN_FLIGHT + l.queued_packets as usize + l.budget.max_sends as usize
}

/// Staging slots of a worker without the egress queue: the single datagrams sealed from one
/// batch of TUN reads are copied into one, back to back, and leave in as few `UDP_SEGMENT`
/// sends as their destinations, TOS and lengths allow ([`crate::tunnel::train`]). A slot is
/// busy until its sends complete; the next batch takes another.
pub const STAGING_SLOTS: usize = 4;
/// Bytes of a staging slot: the datagrams of a whole batch, at most [`TUN_READS_IN_FLIGHT`]
/// of at most `MAX_MTU` (1920) + 32 bytes each.
pub const STAGING_BYTES: usize = 64 << 10;
/// Sends from one staging slot at most: one per datagram of a batch in the worst case.
pub const STAGING_SENDS: usize = TUN_READS_IN_FLIGHT;

const _: () = assert!(
    TUN_READS_IN_FLIGHT
        * (crate::proto::constants::MAX_MTU as usize
            + crate::proto::wire::TRANSPORT_HEADER_LEN
            + crate::proto::wire::TAG_LEN)
        <= STAGING_BYTES
);
