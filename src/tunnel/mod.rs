//! The packet paths the server and the client share: one segment-and-seal egress routine (a TUN
//! read, possibly a TSO/USO super-packet, into sealed datagrams ready for `UDP_SEGMENT` sends),
//! the gathering of single sealed datagrams into `UDP_SEGMENT` sends (`train`), and one
//! coalescing ingress routine (opened packets into as few TUN writes as the device's offloads
//! allow), and TCP MSS clamping for packets that cross the tunnel (`mss`); a per-flow fair queue
//! with CoDel (`fq`) and ECN across the tunnel's headers (`ecn`). Pure computation on
//! caller-provided buffers: no sockets, no allocation per packet; the server's io_uring workers
//! and the client's threads only carry out the writes and sends.
#![forbid(unsafe_code)]

pub mod ecn;
pub mod egress;
pub mod egress_queue;
pub mod fq;
pub mod ingress;
pub mod mss;
pub mod train;

/// Bytes of one offload region: the largest IP packet plus a virtio header, with room for the
/// per-segment transport header and tag of up to 128 segments (a 64 KiB super-packet cut at a
/// small MSS).
pub const REGION: usize = 65_536 + 128 * 48;
