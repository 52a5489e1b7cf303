//! The layout of a worker's I/O slots, which the worker (arming reads and receives) and the
//! packet paths (slicing what completed) must agree on.

/// Bytes of one region of an offload slot (input: a TUN read or a GRO receive; output: the
/// sealed segments or the coalesced frames).
pub use crate::tunnel::REGION;
/// Operations one offload slot may have in flight (sends or TUN writes): a GRO receive holds at
/// most 64 datagrams (UDP_GRO_CNT_MAX, net/ipv4/udp_offload.c), and in the worst case each
/// becomes its own write or relay.
pub const OPS_PER_SLOT: usize = 64;
