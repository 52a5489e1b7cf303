//! Segmentation and coalescing offload between a `IFF_VNET_HDR` TUN device and the data plane.
//!
//! With `TUNSETOFFLOAD` (CSUM, TSO4, TSO6, USO4, USO6) the kernel hands us TCP/UDP
//! "super-packets" of up to 64 KiB behind a [`VirtioNetHdr`], with a partial L4 checksum; we
//! [`split`] them into MTU-sized packets before encryption. In the other direction the
//! [`Coalescer`] merges decrypted packets of one flow back into a super-packet so the kernel
//! handles one GRO'ed skb instead of dozens.
//!
//! Everything here is pure: no allocation, no `unsafe`, no I/O; all output goes into
//! caller-provided buffers. The rules follow the kernel's own GSO/GRO (`tcp_gso_segment`,
//! `__udp_gso_segment`, `tcp_gro_receive`, `inet_gro_receive`) as also applied by
//! wireguard-go's `tun/offload_linux.go`. IP headers are read and rewritten through
//! [`IpPacket`](crate::proto::wire::IpPacket), checksums computed with
//! [`wire::checksum`](crate::proto::wire::checksum).
#![forbid(unsafe_code)]

pub mod coalesce;
mod fuzz;
pub mod split;
pub mod vnet;

#[cfg(test)]
pub(crate) mod tests;

use crate::proto::wire::IpError;
pub use coalesce::{Coalesced, Coalescer, GsoTypes, Push};
pub use split::{complete_checksum, split_into, Segmenter};
pub use vnet::*;

/// Why a super-packet (or its virtio header) was rejected. Inputs come from the kernel or from
/// the network and are treated as untrusted: every inconsistency is an error, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The packet ends inside a header it claims to have.
    #[error("packet truncated")]
    Truncated,
    /// `gso_type` is not a value defined in `virtio_net.h`.
    #[error("unknown virtio GSO type {0:#x}")]
    UnknownGsoType(u8),
    /// A defined GSO type we do not handle (UFO: `VIRTIO_NET_HDR_GSO_UDP`).
    #[error("unsupported virtio GSO type {0:#x}")]
    UnsupportedGsoType(u8),
    /// The IP version nibble is neither 4 nor 6, or does not match the GSO type.
    #[error("IP version does not match the GSO type")]
    IpVersionMismatch,
    /// Malformed IP header (IHL below 5, ...).
    #[error("malformed IP header")]
    BadIpHeader,
    /// An IPv4 fragment (MF set or non-zero offset), or an IPv6 fragment header.
    #[error("fragmented packet cannot be segmented")]
    Fragmented,
    /// An IPv6 extension header we do not walk, or too many of them.
    #[error("unsupported IPv6 extension header {0}")]
    UnsupportedExtensionHeader(u8),
    /// The L4 protocol does not match the GSO type.
    #[error("L4 protocol does not match the GSO type")]
    ProtocolMismatch,
    /// TCP data offset outside 20..=60 bytes.
    #[error("invalid TCP header length")]
    BadTcpHeaderLen,
    /// `csum_start`/`csum_offset` point outside the packet or disagree with the parsed headers.
    #[error("checksum start/offset inconsistent with the packet")]
    BadChecksumOffset,
    /// `hdr_len` is beyond the end of the packet.
    #[error("hdr_len beyond the end of the packet")]
    HdrLenBeyondPacket,
    /// A GSO packet with `gso_size` 0.
    #[error("gso_size is zero")]
    ZeroGsoSize,
    /// A GSO packet without payload.
    #[error("GSO packet without payload")]
    EmptyPayload,
    /// A segment would be larger than the MTU (or than 65535 bytes).
    #[error("segment of {needed} bytes exceeds the MTU {mtu}")]
    ExceedsMtu {
        /// Size of the largest segment.
        needed: usize,
        /// The limit it exceeds.
        mtu: usize,
    },
    /// More segments than output buffers.
    #[error("{needed} segments but only {available} output buffers")]
    TooManySegments {
        /// Segments the packet splits into.
        needed: usize,
        /// Buffers provided.
        available: usize,
    },
    /// An output buffer is too small for its segment.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// Segment index past the last segment.
    #[error("segment index out of range")]
    SegmentIndex,
}

impl From<IpError> for OffloadError {
    fn from(e: IpError) -> Self {
        match e {
            IpError::Truncated | IpError::LengthBeyondBuffer { .. } => OffloadError::Truncated,
            IpError::UnknownVersion(_) => OffloadError::IpVersionMismatch,
            IpError::HeaderTooShort(_) | IpError::LengthBelowHeader { .. } => {
                OffloadError::BadIpHeader
            }
            IpError::Fragmented => OffloadError::Fragmented,
            IpError::UnsupportedExtensionHeader(next) => {
                OffloadError::UnsupportedExtensionHeader(next)
            }
        }
    }
}

/// Reads a big-endian u16 at `i` of an L4 header (caller guarantees bounds).
pub(crate) fn be16(p: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([p[i], p[i + 1]])
}

/// Reads a big-endian u32 at `i` of an L4 header (caller guarantees bounds).
pub(crate) fn be32(p: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]])
}

/// Never panics, whatever `data` is; meant to be driven by a fuzzer (`fuzz/` can call it).
///
/// `data` is read as a 10-byte virtio header, one byte of MTU selector, then a packet. The
/// packet is split; the segments are pushed through a [`Coalescer`]; and the super-packet is
/// split again. Invariants that must hold for any input are asserted, so an assertion failure
/// here is a bug in this module. `data` is also pushed raw into a coalescer, in chunks.
pub fn fuzz_roundtrip(data: &[u8]) {
    fuzz::roundtrip(data)
}
