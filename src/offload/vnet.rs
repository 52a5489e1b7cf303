//! `struct virtio_net_hdr`: the per-packet offload header that a TUN device opened with
//! `IFF_VNET_HDR` puts in front of every packet it reads and expects in front of every packet
//! written to it.
//!
//! Source of the layout and constants: Linux `include/uapi/linux/virtio_net.h` (`struct
//! virtio_net_hdr`, `VIRTIO_NET_HDR_F_*`, `VIRTIO_NET_HDR_GSO_*`) and the virtio specification
//! v1.2, §5.1.6 "Device Operation". We use the 10-byte legacy header without `num_buffers`: the
//! TUN default (`TUNSETVNETHDRSZ` unset) is `sizeof(struct virtio_net_hdr)` = 10, and
//! `num_buffers` only exists with `VIRTIO_NET_F_MRG_RXBUF`, which TUN does not use.
//!
//! Byte order: the TUN vnet header is in the host's byte order unless `TUNSETVNETLE`/
//! `TUNSETVNETBE` says otherwise; virtio 1.x fixes it to little-endian. We encode and decode
//! little-endian, which is both on the x86-64 and aarch64 hosts we target.

/// Size in bytes of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial. The checksum field at
/// `csum_start + csum_offset` holds the folded (not inverted) pseudo-header sum; whoever
/// completes it sums from `csum_start` to the end and stores the inverted result there.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum has been verified (`CHECKSUM_UNNECESSARY`).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`: TCP over IPv4, segmented by `gso_size` (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`: UDP fragmentation offload (UFO, IP fragments). Not supported here:
/// we never enable `TUN_F_UFO`.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`: TCP over IPv6, segmented by `gso_size` (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP segmentation (USO), each segment its own datagram.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: flag bit OR'ed into `gso_type`; the TCP stream uses ECN and the
/// first segment may carry CWR (only the first one keeps it after segmentation).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Decoded `struct virtio_net_hdr` (Linux `include/uapi/linux/virtio_net.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, possibly with [`VIRTIO_NET_HDR_GSO_ECN`].
    pub gso_type: u8,
    /// Length of the L3+L4 headers. Advisory only: on the forward path the kernel reports the
    /// whole linear part here, so readers must derive the real value from the packet.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Offset from the start of the IP packet where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// The header for a plain packet: no GSO, no checksum work requested or promised.
    pub const NONE: Self = Self {
        flags: 0,
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Decodes the first [`VNET_HDR_LEN`] bytes of `b`; `None` if `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Encodes into the first [`VNET_HDR_LEN`] bytes of `out`; `None` if `out` is shorter.
    pub fn emit(&self, out: &mut [u8]) -> Option<()> {
        let out = out.get_mut(..VNET_HDR_LEN)?;
        out.copy_from_slice(&self.to_bytes());
        Some(())
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// `gso_type` without the [`VIRTIO_NET_HDR_GSO_ECN`] bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !VIRTIO_NET_HDR_GSO_ECN
    }

    /// Whether [`VIRTIO_NET_HDR_F_NEEDS_CSUM`] is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_layout() {
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 0x81, 2, 1, 0xa8, 0x05, 20, 0, 16, 0]);
        assert_eq!(VirtioNetHdr::parse(&b), Some(h));
        assert_eq!(h.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
        assert!(h.needs_csum());
        assert_eq!(VirtioNetHdr::parse(&b[..9]), None);
        let mut out = [0u8; 12];
        assert_eq!(h.emit(&mut out), Some(()));
        assert_eq!(&out[..10], &b);
        assert_eq!(h.emit(&mut out[..9]), None);
        assert_eq!(VirtioNetHdr::NONE.to_bytes(), [0; 10]);
    }
}
