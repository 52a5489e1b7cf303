//! Minimal IPv4/IPv6 header parsing shared by the splitter and the coalescer.

use super::OffloadError;
use crate::proto::wire::checksum;

/// IANA protocol number for TCP.
pub(crate) const PROTO_TCP: u8 = 6;
/// IANA protocol number for UDP.
pub(crate) const PROTO_UDP: u8 = 17;
/// IPv6 extension headers we can skip over (RFC 8200 §4): hop-by-hop, routing, destination
/// options. All three share the "next header, length in 8-octet units minus one" layout.
const V6_HOP_BY_HOP: u8 = 0;
const V6_ROUTING: u8 = 43;
const V6_FRAGMENT: u8 = 44;
const V6_DEST_OPTS: u8 = 60;
/// Bound on the extension header walk so hostile input costs a constant amount of work.
const V6_MAX_EXT_HEADERS: usize = 8;

/// IPv4 header length without options.
pub(crate) const IPV4_MIN_HDR: usize = 20;
/// IPv6 fixed header length.
pub(crate) const IPV6_HDR: usize = 40;

/// What the splitter and the coalescer need from the network layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct L3 {
    pub v6: bool,
    /// Offset of the L4 header (IPv4 IHL*4, or after the IPv6 extension headers).
    pub l4_off: usize,
    /// L4 protocol number.
    pub proto: u8,
}

/// Parses the IP header(s) of `p`. Rejects fragments: a fragment cannot be segmented or merged.
/// Does not look at the length fields (the caller decides what they must be).
pub(crate) fn parse_l3(p: &[u8]) -> Result<L3, OffloadError> {
    let first = *p.first().ok_or(OffloadError::Truncated)?;
    match first >> 4 {
        4 => {
            if p.len() < IPV4_MIN_HDR {
                return Err(OffloadError::Truncated);
            }
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < IPV4_MIN_HDR {
                return Err(OffloadError::BadIpHeader);
            }
            if p.len() < ihl {
                return Err(OffloadError::Truncated);
            }
            // RFC 791: flags bit 2 (0x20 of byte 6) is MF; the low 13 bits are the offset.
            if p[6] & 0x20 != 0 || (p[6] & 0x1f) != 0 || p[7] != 0 {
                return Err(OffloadError::Fragmented);
            }
            Ok(L3 {
                v6: false,
                l4_off: ihl,
                proto: p[9],
            })
        }
        6 => {
            if p.len() < IPV6_HDR {
                return Err(OffloadError::Truncated);
            }
            let mut next = p[6];
            let mut off = IPV6_HDR;
            for _ in 0..V6_MAX_EXT_HEADERS {
                match next {
                    V6_HOP_BY_HOP | V6_ROUTING | V6_DEST_OPTS => {
                        let h = p.get(off..off + 2).ok_or(OffloadError::Truncated)?;
                        next = h[0];
                        off += (usize::from(h[1]) + 1) * 8;
                        if off > p.len() {
                            return Err(OffloadError::Truncated);
                        }
                    }
                    V6_FRAGMENT => return Err(OffloadError::Fragmented),
                    proto => {
                        return Ok(L3 {
                            v6: true,
                            l4_off: off,
                            proto,
                        })
                    }
                }
            }
            Err(OffloadError::UnsupportedExtensionHeader(next))
        }
        _ => Err(OffloadError::IpVersionMismatch),
    }
}

/// Unfolded pseudo-header sum for an L4 segment of `l4_len` bytes, using the addresses in `p`.
/// `p` must hold at least the fixed IP header (guaranteed after [`parse_l3`]).
pub(crate) fn pseudo_sum(p: &[u8], l3: &L3, l4_len: usize) -> u64 {
    if l3.v6 {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&p[8..24]);
        dst.copy_from_slice(&p[24..40]);
        checksum::pseudo_header_v6(&src, &dst, l3.proto, l4_len as u32)
    } else {
        let src = [p[12], p[13], p[14], p[15]];
        let dst = [p[16], p[17], p[18], p[19]];
        // Truncation cannot happen for lengths we produce (<= 65535); the pseudo-header field is
        // 16 bits by definition.
        checksum::pseudo_header_v4(src, dst, l3.proto, l4_len as u16)
    }
}

/// Rewrites the IP length field(s) of the header at `p[..l3.l4_off]` for a packet of `total`
/// bytes, and for IPv4 recomputes the header checksum.
pub(crate) fn set_ip_len(p: &mut [u8], l3: &L3, total: usize) {
    if l3.v6 {
        // RFC 8200: payload length counts the extension headers too.
        let pl = (total - IPV6_HDR) as u16;
        p[4..6].copy_from_slice(&pl.to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        set_ipv4_checksum(&mut p[..l3.l4_off]);
    }
}

/// Recomputes the IPv4 header checksum over `hdr` (RFC 791).
pub(crate) fn set_ipv4_checksum(hdr: &mut [u8]) {
    hdr[10] = 0;
    hdr[11] = 0;
    let c = checksum::checksum(hdr, 0);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Reads a big-endian u16 at `i` (caller guarantees bounds).
pub(crate) fn be16(p: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([p[i], p[i + 1]])
}

/// Reads a big-endian u32 at `i` (caller guarantees bounds).
pub(crate) fn be32(p: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]])
}
