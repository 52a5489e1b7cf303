//! TCP MSS clamping: hosts in a network behind a client (a site) or behind the server do not
//! know the tunnel's MTU, so each side of a TCP connection between them announces the MSS of
//! its own 1500-byte link and sends segments the tunnel cannot carry whole (they then depend
//! on ICMP "fragmentation needed" reaching them, which firewalls often drop). Lowering the MSS
//! option of the SYN and SYN-ACK as they cross the tunnel makes both ends send segments that
//! fit, as `iptables -j TCPMSS --clamp-mss-to-pmtu` does on a router.
//!
//! [`clamp_mss`] is pure and works in place; it looks at nothing but the IP version, the
//! protocol and the TCP flags of a packet that is not a SYN, so the data path can call it on
//! every packet.

use crate::offload::vnet::{VirtioNetHdr, VIRTIO_NET_HDR_GSO_NONE, VNET_HDR_LEN};
use crate::proto::wire::checksum::update16;

/// The IPv4 header (20 bytes without options) and the TCP header (20 bytes without options)
/// that a segment carries besides its payload: MSS = MTU - 40 (RFC 9293 §3.7.1, RFC 6691 §2).
pub const IPV4_TCP_OVERHEAD: u16 = 40;
/// The IPv6 header (40 bytes, RFC 8200 §3) and the TCP header (20 bytes): MSS = MTU - 60.
pub const IPV6_TCP_OVERHEAD: u16 = 60;

/// IP protocol number of TCP (IANA).
const PROTO_TCP: u8 = 6;
/// The SYN bit of the TCP flags byte (RFC 9293 §3.1).
const TCP_SYN: u8 = 0x02;
/// TCP option kinds (RFC 9293 §3.2): end of option list, no-operation, maximum segment size.
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
/// Length of the MSS option: kind, length, 16-bit value.
const OPT_MSS_LEN: u8 = 4;
/// Offset of the checksum in the TCP header.
const TCP_CHECKSUM_AT: usize = 16;
/// Shortest TCP header (data offset 5).
const TCP_MIN_HEADER: usize = 20;

/// What the packet's TCP checksum field holds, which decides whether it must follow the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumState {
    /// A complete checksum over the segment: updated incrementally (RFC 1624).
    Complete,
    /// Only the pseudo-header's sum, to be completed over the segment later (a TUN read with
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`): left alone, since the completion will sum the new bytes.
    Partial,
}

/// The largest MSS a segment in a packet of this IP version may announce to fit `mtu`.
pub fn mss_limit(ipv6: bool, mtu: u16) -> u16 {
    let overhead = if ipv6 {
        IPV6_TCP_OVERHEAD
    } else {
        IPV4_TCP_OVERHEAD
    };
    mtu.saturating_sub(overhead)
}

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) in `packet` (an IPv4 or IPv6 packet) to
/// what fits `mtu`, fixing the checksum as `checksum` says; returns whether it changed the
/// packet. Anything else (not TCP, not a SYN, a later fragment, an IPv6 packet with extension
/// headers before TCP, no MSS option, an MSS already small enough, a malformed header) is left
/// as it is. Never raises an MSS.
pub fn clamp_mss(packet: &mut [u8], mtu: u16, checksum: ChecksumState) -> bool {
    let Some((tcp, end, ipv6)) = tcp_syn_bounds(packet) else {
        return false;
    };
    let Some(value_at) = mss_option_value(&packet[tcp..end]).map(|at| tcp + at) else {
        return false;
    };
    let old = u16::from_be_bytes([packet[value_at], packet[value_at + 1]]);
    let new = mss_limit(ipv6, mtu);
    if old <= new {
        return false;
    }
    packet[value_at..value_at + 2].copy_from_slice(&new.to_be_bytes());
    if checksum == ChecksumState::Complete {
        let at = tcp + TCP_CHECKSUM_AT;
        let csum = u16::from_be_bytes([packet[at], packet[at + 1]]);
        // The sum runs over 16-bit words from the TCP header's start: a value at an odd offset
        // straddles two words, its high byte low in one and its low byte high in the next, so
        // it enters the sum byte-swapped.
        let (old, new) = if (value_at - tcp) % 2 == 0 {
            (old, new)
        } else {
            (old.swap_bytes(), new.swap_bytes())
        };
        packet[at..at + 2].copy_from_slice(&update16(csum, old, new).to_be_bytes());
    }
    true
}

/// [`clamp_mss`] for a TUN read that starts with a virtio-net header: a super-packet (TSO) is
/// left alone, since a SYN is never part of one, and a checksum the kernel left partial
/// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) stays partial.
pub fn clamp_mss_after_vnet_header(frame: &mut [u8], mtu: u16) -> bool {
    let Some(header) = frame.get(..VNET_HDR_LEN).and_then(VirtioNetHdr::parse) else {
        return false;
    };
    if header.gso_kind() != VIRTIO_NET_HDR_GSO_NONE {
        return false;
    }
    let checksum = if header.needs_csum() {
        ChecksumState::Partial
    } else {
        ChecksumState::Complete
    };
    clamp_mss(&mut frame[VNET_HDR_LEN..], mtu, checksum)
}

/// Where the TCP header of a SYN starts, where the packet's data ends (the stated length,
/// within `packet`), and whether it is IPv6; `None` for anything that is not a TCP SYN with a
/// whole header. The protocol and flag checks come first: they are all most packets see.
fn tcp_syn_bounds(packet: &[u8]) -> Option<(usize, usize, bool)> {
    let (tcp, end, ipv6) = match packet.first()? >> 4 {
        4 => {
            if *packet.get(9)? != PROTO_TCP {
                return None;
            }
            let header = usize::from(packet[0] & 0x0f) * 4;
            let fragment_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
            if header < 20 || fragment_offset != 0 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            (header, total.min(packet.len()), false)
        }
        6 => {
            // A next header other than TCP (an extension header): not looked into; a SYN
            // almost never carries one.
            if *packet.get(6)? != PROTO_TCP || packet.len() < 40 {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            (40, (40 + payload).min(packet.len()), true)
        }
        _ => return None,
    };
    let flags = *packet.get(tcp + 13)?;
    if flags & TCP_SYN == 0 || tcp + TCP_MIN_HEADER > end {
        return None;
    }
    Some((tcp, end, ipv6))
}

/// The offset in `segment` (a TCP header and what follows) of the MSS option's value, if the
/// options hold a well-formed one.
fn mss_option_value(segment: &[u8]) -> Option<usize> {
    let header = usize::from(segment[12] >> 4) * 4;
    if header < TCP_MIN_HEADER || header > segment.len() {
        return None;
    }
    let mut at = TCP_MIN_HEADER;
    while at < header {
        match segment[at] {
            OPT_END => return None,
            OPT_NOP => at += 1,
            kind => {
                let len = usize::from(*segment.get(at + 1).filter(|_| at + 1 < header)?);
                if len < 2 || at + len > header {
                    return None;
                }
                if kind == OPT_MSS {
                    return (len == usize::from(OPT_MSS_LEN)).then_some(at + 2);
                }
                at += len;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::checksum::{fold, pseudo_header_v4, pseudo_header_v6, sum};

    /// 10.99.0.5:40000 -> 10.1.0.2:5201, SYN, MSS 1460, SACK permitted, timestamps, NOP,
    /// window scale 7; both checksums valid.
    const SYN4_MSS1460: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x14, 0x1e, 0x0a, 0x63, 0x00,
        0x05, 0x0a, 0x01, 0x00, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x11, 0x22, 0x33, 0x44, 0x00, 0x00,
        0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x33, 0xad, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04,
        0x02, 0x08, 0x0a, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];
    /// The same SYN with MSS 1368 (MTU 1408 - 40) and its checksum recomputed from scratch.
    const SYN4_MSS1368: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x14, 0x1e, 0x0a, 0x63, 0x00,
        0x05, 0x0a, 0x01, 0x00, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x11, 0x22, 0x33, 0x44, 0x00, 0x00,
        0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x34, 0x09, 0x00, 0x00, 0x02, 0x04, 0x05, 0x58, 0x04,
        0x02, 0x08, 0x0a, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];
    /// [fd99::5]:5201 -> [fd01::2]:40000, SYN-ACK; options NOP, MSS 1440, NOP x3: the MSS
    /// value sits at an odd offset of the TCP header (23).
    const SYNACK6_MSS1440: [u8; 68] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x06, 0x40, 0xfd, 0x99, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0xfd, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x14, 0x51, 0x9c, 0x40, 0x11,
        0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x70, 0x12, 0xfa, 0xf0, 0x32, 0x47, 0x00, 0x00,
        0x01, 0x02, 0x04, 0x05, 0xa0, 0x01, 0x01, 0x01,
    ];
    /// The same SYN-ACK with MSS 1360 (MTU 1420 - 60), checksum recomputed from scratch.
    const SYNACK6_MSS1360: [u8; 68] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x06, 0x40, 0xfd, 0x99, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0xfd, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x14, 0x51, 0x9c, 0x40, 0x11,
        0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x70, 0x12, 0xfa, 0xf0, 0x82, 0x47, 0x00, 0x00,
        0x01, 0x02, 0x04, 0x05, 0x50, 0x01, 0x01, 0x01,
    ];

    /// Whether the TCP checksum of an IPv4 or IPv6 packet without options/extensions checks
    /// out: the sum over pseudo-header and segment folds to all ones.
    fn tcp_checksum_ok(p: &[u8]) -> bool {
        let (pseudo, segment) = if p[0] >> 4 == 4 {
            let seg = &p[20..];
            let src = p[12..16].try_into().unwrap();
            let dst = p[16..20].try_into().unwrap();
            (pseudo_header_v4(src, dst, 6, seg.len() as u16), seg)
        } else {
            let seg = &p[40..];
            let src = p[8..24].try_into().unwrap();
            let dst = p[24..40].try_into().unwrap();
            (pseudo_header_v6(src, dst, 6, seg.len() as u32), seg)
        };
        fold(pseudo + sum(segment)) == 0xffff
    }

    #[test]
    fn the_vectors_have_valid_checksums() {
        for p in [
            &SYN4_MSS1460[..],
            &SYN4_MSS1368,
            &SYNACK6_MSS1440,
            &SYNACK6_MSS1360,
        ] {
            assert!(tcp_checksum_ok(p));
        }
    }

    #[test]
    fn an_ipv4_syn_is_clamped_to_mtu_minus_40() {
        let mut p = SYN4_MSS1460;
        assert!(clamp_mss(&mut p, 1408, ChecksumState::Complete));
        assert_eq!(p, SYN4_MSS1368);
        // Clamping again changes nothing: the MSS already fits.
        assert!(!clamp_mss(&mut p, 1408, ChecksumState::Complete));
        assert_eq!(p, SYN4_MSS1368);
    }

    #[test]
    fn an_ipv6_syn_ack_with_the_mss_at_an_odd_offset_is_clamped_to_mtu_minus_60() {
        let mut p = SYNACK6_MSS1440;
        assert!(clamp_mss(&mut p, 1420, ChecksumState::Complete));
        assert_eq!(p, SYNACK6_MSS1360);
    }

    #[test]
    fn a_small_enough_mss_is_never_raised() {
        let mut p = SYN4_MSS1368;
        assert!(!clamp_mss(&mut p, 1500, ChecksumState::Complete));
        assert_eq!(p, SYN4_MSS1368);
    }

    #[test]
    fn a_partial_checksum_is_left_for_its_completion() {
        let mut p = SYN4_MSS1460;
        assert!(clamp_mss(&mut p, 1408, ChecksumState::Partial));
        assert_eq!(&p[42..44], &[0x05, 0x58]);
        assert_eq!(
            &p[36..38],
            &SYN4_MSS1460[36..38],
            "checksum field untouched"
        );
    }

    #[test]
    fn packets_that_are_not_tcp_syns_are_left_alone() {
        // An ACK (flags 0x10) that carries the same bytes.
        let mut ack = SYN4_MSS1460;
        ack[33] = 0x10;
        // UDP.
        let mut udp = SYN4_MSS1460;
        udp[9] = 17;
        // A later fragment of a TCP packet.
        let mut fragment = SYN4_MSS1460;
        fragment[6..8].copy_from_slice(&[0x00, 0x10]);
        // IPv6 with a hop-by-hop header first.
        let mut hop = SYNACK6_MSS1440;
        hop[6] = 0;
        for mut p in [ack.to_vec(), udp.to_vec(), fragment.to_vec(), hop.to_vec()] {
            let before = p.clone();
            assert!(!clamp_mss(&mut p, 1280, ChecksumState::Complete));
            assert_eq!(p, before);
        }
    }

    #[test]
    fn malformed_options_and_truncated_headers_are_left_alone() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // An option before the MSS whose length runs past the header.
            ("overrun", {
                let mut p = SYN4_MSS1460.to_vec();
                p[40..42].copy_from_slice(&[8, 40]);
                p
            }),
            // An option length of zero (would loop forever if trusted).
            ("zero length", {
                let mut p = SYN4_MSS1460.to_vec();
                p[40..42].copy_from_slice(&[8, 0]);
                p
            }),
            // An MSS option of the wrong length.
            ("mss length 3", {
                let mut p = SYN4_MSS1460.to_vec();
                p[41] = 3;
                p
            }),
            // End of options before the MSS.
            ("end first", {
                let mut p = SYNACK6_MSS1440.to_vec();
                p[60] = 0;
                p
            }),
            // A data offset beyond the packet.
            ("data offset", {
                let mut p = SYN4_MSS1460.to_vec();
                p[32] = 0xf0;
                p
            }),
            // Cut inside the TCP header, inside the options, and an IPv4 header length of 4.
            ("cut header", SYN4_MSS1460[..30].to_vec()),
            ("cut options", SYN4_MSS1460[..42].to_vec()),
            ("cut v6", SYNACK6_MSS1440[..39].to_vec()),
            ("ihl", {
                let mut p = SYN4_MSS1460.to_vec();
                p[0] = 0x41;
                p
            }),
            ("empty", Vec::new()),
        ];
        for (what, mut p) in cases {
            let before = p.clone();
            assert!(!clamp_mss(&mut p, 1280, ChecksumState::Complete), "{what}");
            assert_eq!(p, before, "{what}");
        }
    }

    #[test]
    fn after_a_virtio_header_partial_checksums_stay_partial_and_super_packets_alone() {
        use crate::offload::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
        let frame = |hdr: VirtioNetHdr| {
            let mut f = hdr.to_bytes().to_vec();
            f.extend_from_slice(&SYN4_MSS1460);
            f
        };
        let mut complete = frame(VirtioNetHdr::NONE);
        assert!(clamp_mss_after_vnet_header(&mut complete, 1408));
        assert_eq!(&complete[VNET_HDR_LEN..], &SYN4_MSS1368);
        let partial_header = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VirtioNetHdr::NONE
        };
        let mut partial = frame(partial_header);
        assert!(clamp_mss_after_vnet_header(&mut partial, 1408));
        let checksum_at = VNET_HDR_LEN + 36;
        assert_eq!(
            &partial[checksum_at..checksum_at + 2],
            &SYN4_MSS1460[36..38]
        );
        let tso = VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1368,
            ..partial_header
        };
        let mut super_packet = frame(tso);
        assert!(!clamp_mss_after_vnet_header(&mut super_packet, 1408));
        assert_eq!(super_packet, frame(tso));
        assert!(!clamp_mss_after_vnet_header(&mut [0u8; 4], 1408));
    }

    #[test]
    fn limits_follow_the_ip_version() {
        assert_eq!(mss_limit(false, 1420), 1380);
        assert_eq!(mss_limit(true, 1420), 1360);
        assert_eq!(mss_limit(true, 40), 0);
    }
}
