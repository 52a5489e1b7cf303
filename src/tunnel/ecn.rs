//! ECN across the tunnel, as RFC 6040 says for IP-in-IP tunnels (RFC 9601 extends it to
//! tunnels with a shim header between the two IP headers, as our UDP and transport headers
//! are). Pure mappings over the two-bit ECN field and in-place rewrites of an inner IPv4 or
//! IPv6 header.
//!
//! The outer header is the kernel's, built for our UDP socket: the sender sets the outer ECN
//! field per datagram (`IP_TOS` / `IPV6_TCLASS` control message or socket option) to
//! [`outer_ecn_for`] the inner packet, and the receiver reads it (`IP_RECVTOS` /
//! `IPV6_RECVTCLASS`) and hands it to [`decapsulate`] with the opened inner packet.

use crate::proto::wire::checksum::update16;

/// The ECN field's mask in the IPv4 TOS byte and the IPv6 traffic class (RFC 3168 §5).
pub const ECN_MASK: u8 = 0b11;

/// The codepoints of the two-bit ECN field (RFC 3168 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ecn {
    /// 00: the transport is not ECN-capable.
    NotEct,
    /// 01: ECN-capable transport, codepoint 1.
    Ect1,
    /// 10: ECN-capable transport, codepoint 0.
    Ect0,
    /// 11: congestion experienced.
    Ce,
}

impl Ecn {
    /// Every codepoint, in bit order.
    pub const ALL: [Ecn; 4] = [Ecn::NotEct, Ecn::Ect1, Ecn::Ect0, Ecn::Ce];

    /// The codepoint in the low two bits of `tos` (an IPv4 TOS byte or IPv6 traffic class).
    pub const fn from_tos(tos: u8) -> Ecn {
        match tos & ECN_MASK {
            0b00 => Ecn::NotEct,
            0b01 => Ecn::Ect1,
            0b10 => Ecn::Ect0,
            _ => Ecn::Ce,
        }
    }

    /// The two bits of the codepoint.
    pub const fn bits(self) -> u8 {
        match self {
            Ecn::NotEct => 0b00,
            Ecn::Ect1 => 0b01,
            Ecn::Ect0 => 0b10,
            Ecn::Ce => 0b11,
        }
    }

    /// Whether a router may mark the packet CE instead of dropping it: ECT(0), ECT(1), or
    /// already CE (RFC 3168 §5).
    pub const fn is_ecn_capable(self) -> bool {
        !matches!(self, Ecn::NotEct)
    }
}

/// The outer header's ECN field for an inner packet with `inner`: RFC 6040 §4.1, normal mode,
/// copies it (CE included), so congestion marked before the tunnel stays visible on the
/// outer header and ECN-capable transports stay ECN-capable across the tunnel.
pub const fn outer_ecn_for(inner: Ecn) -> Ecn {
    inner
}

/// The `IP_TOS` / `IPV6_TCLASS` value to send an inner packet's datagram with: the ECN field
/// per [`outer_ecn_for`], DSCP zero (RFC 6040 governs ECN only; the inner DSCP is not copied
/// out: RFC 2983 leaves that to the tunnel's policy). Not-ECT for a packet that is not IP.
pub fn outer_tos_for(inner_packet: &[u8]) -> u8 {
    packet_ecn(inner_packet)
        .map_or(Ecn::NotEct, outer_ecn_for)
        .bits()
}

/// How unusual an arriving combination of outer and inner ECN is (RFC 6040 §4.2, the marks
/// in its decapsulation table): a combination no compliant tunnel ingress produces may show
/// a misbehaving node on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusual {
    /// An expected combination.
    No,
    /// "(!)": currently unused; the decapsulator MAY log it.
    MayLog,
    /// "(!!!)": currently unused; the decapsulator SHOULD log it (an alarm).
    ShouldLog,
}

/// What decapsulation makes of the inner packet's ECN field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decapsulated {
    /// The field the forwarded inner packet carries.
    pub inner: Ecn,
    /// Whether the combination should be logged.
    pub unusual: Unusual,
}

/// Why decapsulation refused an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// The outer header says CE but the inner transport cannot understand it: the packet must
    /// be dropped, the only way left to signal the congestion (RFC 6040 §4.2).
    #[error("congestion experienced on the outer header of a packet that is not ECN-capable: drop it (RFC 6040 section 4.2)")]
    CongestedNotEct,
    /// The inner packet does not start with a whole IPv4 or IPv6 header.
    #[error("the inner packet has no whole IPv4 or IPv6 header")]
    NotIp,
}

/// The decapsulation table of RFC 6040 §4.2 (Figure 4): the inner ECN field to forward, from
/// the arriving inner (`inner`) and outer (`outer`) fields, or a drop.
pub const fn decapsulated_ecn(outer: Ecn, inner: Ecn) -> Result<Decapsulated, DecapError> {
    use Ecn::*;
    let (inner, unusual) = match (inner, outer) {
        (NotEct, NotEct) => (NotEct, Unusual::No),
        (NotEct, Ect0 | Ect1) => (NotEct, Unusual::ShouldLog),
        (NotEct, Ce) => return Err(DecapError::CongestedNotEct),
        (Ect0, NotEct | Ect0) => (Ect0, Unusual::No),
        (Ect0, Ect1) => (Ect1, Unusual::No),
        (Ect1, NotEct | Ect1) => (Ect1, Unusual::No),
        (Ect1, Ect0) => (Ect1, Unusual::MayLog),
        (Ect0 | Ect1, Ce) => (Ce, Unusual::No),
        (Ce, Ect1) => (Ce, Unusual::ShouldLog),
        (Ce, NotEct | Ect0 | Ce) => (Ce, Unusual::No),
    };
    Ok(Decapsulated { inner, unusual })
}

/// Applies [`decapsulated_ecn`] to the opened `inner_packet` in place (the IPv4 header
/// checksum updated incrementally, RFC 1624). On an error the packet is left as it was; the
/// caller drops it.
pub fn decapsulate(outer: Ecn, inner_packet: &mut [u8]) -> Result<Decapsulated, DecapError> {
    let inner = packet_ecn(inner_packet).ok_or(DecapError::NotIp)?;
    let result = decapsulated_ecn(outer, inner)?;
    if result.inner != inner {
        set_ecn(inner_packet, result.inner);
    }
    Ok(result)
}

/// The ECN field of an IPv4 or IPv6 packet; `None` if it has no whole header of either.
pub fn packet_ecn(packet: &[u8]) -> Option<Ecn> {
    match ip_version(packet)? {
        4 => Some(Ecn::from_tos(packet[1])),
        _ => Some(Ecn::from_tos(ipv6_traffic_class(packet))),
    }
}

/// Marks an ECN-capable packet CE in place (an AQM's mark instead of a drop, RFC 3168 §5);
/// false, and the packet untouched, if it is not ECN-capable or not IP (drop it instead).
pub fn mark_ce(packet: &mut [u8]) -> bool {
    match packet_ecn(packet) {
        Some(ecn) if ecn.is_ecn_capable() => set_ecn(packet, Ecn::Ce),
        _ => false,
    }
}

/// Sets the ECN field of an IPv4 or IPv6 packet in place, keeping the rest of the TOS byte or
/// traffic class (DSCP) and, for IPv4, a valid header checksum; false if it is not IP.
pub fn set_ecn(packet: &mut [u8], ecn: Ecn) -> bool {
    match ip_version(packet) {
        Some(4) => {
            let old_word = u16::from_be_bytes([packet[0], packet[1]]);
            packet[1] = (packet[1] & !ECN_MASK) | ecn.bits();
            let new_word = u16::from_be_bytes([packet[0], packet[1]]);
            let csum = u16::from_be_bytes([packet[10], packet[11]]);
            let csum = update16(csum, old_word, new_word);
            packet[10..12].copy_from_slice(&csum.to_be_bytes());
            true
        }
        Some(_) => {
            // The traffic class straddles bytes 0 and 1 (RFC 8200 §3): its ECN bits are bits
            // 4 and 5 of byte 1.
            packet[1] = (packet[1] & !(ECN_MASK << 4)) | (ecn.bits() << 4);
            true
        }
        None => false,
    }
}

/// Bytes of the fixed IPv4 header (RFC 791 §3.1).
const IPV4_MIN_HEADER: usize = 20;
/// Bytes of the IPv6 header (RFC 8200 §3).
const IPV6_HEADER: usize = 40;

/// 4 or 6 if `packet` starts with a whole header of that version.
fn ip_version(packet: &[u8]) -> Option<u8> {
    let version = packet.first()? >> 4;
    let whole = match version {
        4 => packet.len() >= IPV4_MIN_HEADER && usize::from(packet[0] & 0x0f) * 4 >= 20,
        6 => packet.len() >= IPV6_HEADER,
        _ => false,
    };
    whole.then_some(version)
}

fn ipv6_traffic_class(packet: &[u8]) -> u8 {
    (packet[0] << 4) | (packet[1] >> 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::checksum::{fold, sum};
    use proptest::prelude::*;
    use Ecn::*;

    /// RFC 6040 §4.2, Figure 4, row by row (arriving inner header), columns by arriving outer
    /// header Not-ECT, ECT(0), ECT(1), CE. `None` is a drop.
    /// What one cell of the table says: the inner field forwarded and how unusual, or a drop.
    type Cell = Option<(Ecn, Unusual)>;
    const FIGURE_4: [(Ecn, [Cell; 4]); 4] = [
        (
            NotEct,
            [
                Some((NotEct, Unusual::No)),
                Some((NotEct, Unusual::ShouldLog)),
                Some((NotEct, Unusual::ShouldLog)),
                None,
            ],
        ),
        (
            Ect0,
            [
                Some((Ect0, Unusual::No)),
                Some((Ect0, Unusual::No)),
                Some((Ect1, Unusual::No)),
                Some((Ce, Unusual::No)),
            ],
        ),
        (
            Ect1,
            [
                Some((Ect1, Unusual::No)),
                Some((Ect1, Unusual::MayLog)),
                Some((Ect1, Unusual::No)),
                Some((Ce, Unusual::No)),
            ],
        ),
        (
            Ce,
            [
                Some((Ce, Unusual::No)),
                Some((Ce, Unusual::No)),
                Some((Ce, Unusual::ShouldLog)),
                Some((Ce, Unusual::No)),
            ],
        ),
    ];
    const OUTER_COLUMNS: [Ecn; 4] = [NotEct, Ect0, Ect1, Ce];

    /// A 20-byte IPv4 header with TOS `tos` and a valid checksum.
    fn ipv4(tos: u8) -> Vec<u8> {
        let mut p = vec![
            0x45, tos, 0x00, 0x54, 0xab, 0xcd, 0x40, 0x00, 0x40, 0x01, 0, 0, 10, 66, 0, 2, 10, 1,
            0, 9,
        ];
        let c = !fold(sum(&p));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// A 40-byte IPv6 header with traffic class `tc` and flow label 0xabcde.
    fn ipv6(tc: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60 | (tc >> 4);
        p[1] = (tc << 4) | 0x0a;
        p[2..4].copy_from_slice(&[0xbc, 0xde]);
        p[6] = 58;
        p[7] = 64;
        p
    }

    fn ipv4_checksum_ok(p: &[u8]) -> bool {
        fold(sum(&p[..20])) == 0xffff
    }

    #[test]
    fn encapsulation_in_normal_mode_copies_every_codepoint() {
        // RFC 6040 §4.1, Figure 3, normal mode column.
        for (inner, outer) in [(NotEct, NotEct), (Ect0, Ect0), (Ect1, Ect1), (Ce, Ce)] {
            assert_eq!(outer_ecn_for(inner), outer);
            assert_eq!(outer_tos_for(&ipv4(0xb8 | inner.bits())), outer.bits());
            assert_eq!(outer_tos_for(&ipv6(0xb8 | inner.bits())), outer.bits());
        }
        assert_eq!(outer_tos_for(&[0x45, 0x03]), 0, "not a whole header");
    }

    #[test]
    fn decapsulation_follows_figure_4_for_every_combination() {
        for (inner, row) in FIGURE_4 {
            for (outer, expected) in OUTER_COLUMNS.into_iter().zip(row) {
                let got = decapsulated_ecn(outer, inner);
                match expected {
                    Some((ecn, unusual)) => assert_eq!(
                        got,
                        Ok(Decapsulated {
                            inner: ecn,
                            unusual
                        }),
                        "inner {inner:?}, outer {outer:?}"
                    ),
                    None => assert_eq!(got, Err(DecapError::CongestedNotEct)),
                }
            }
        }
    }

    #[test]
    fn decapsulation_rewrites_real_headers_and_keeps_the_rest() {
        for (inner, row) in FIGURE_4 {
            for (outer, expected) in OUTER_COLUMNS.into_iter().zip(row) {
                // DSCP EF (46) around the ECN bits must survive.
                let tos = (46 << 2) | inner.bits();
                for original in [ipv4(tos), ipv6(tos)] {
                    let mut p = original.clone();
                    let got = decapsulate(outer, &mut p);
                    let Some((ecn, _)) = expected else {
                        assert_eq!(got, Err(DecapError::CongestedNotEct));
                        assert_eq!(p, original, "a dropped packet is left alone");
                        continue;
                    };
                    assert_eq!(got.map(|d| d.inner), Ok(ecn));
                    assert_eq!(packet_ecn(&p), Some(ecn));
                    if p[0] >> 4 == 4 {
                        assert!(ipv4_checksum_ok(&p), "inner {inner:?}, outer {outer:?}");
                        assert_eq!(p[1] >> 2, 46);
                        assert_eq!((&p[..1], &p[2..10]), (&original[..1], &original[2..10]));
                        assert_eq!(&p[12..], &original[12..]);
                    } else {
                        assert_eq!(ipv6_traffic_class(&p) >> 2, 46);
                        assert_eq!(p[1] & 0x0f, original[1] & 0x0f, "flow label");
                        assert_eq!(&p[2..], &original[2..]);
                    }
                }
            }
        }
    }

    #[test]
    fn congestion_on_the_outer_path_reaches_the_inner_header_and_nothing_else_changes() {
        for inner in Ecn::ALL {
            for congested in [false, true] {
                let mut outer = outer_ecn_for(inner);
                // A router on the path marks an ECN-capable outer header (RFC 3168 §5); it
                // would drop a Not-ECT one instead, so that one never arrives marked.
                if congested && outer.is_ecn_capable() {
                    outer = Ce;
                }
                let mut p = ipv4(inner.bits());
                let got = decapsulate(outer, &mut p).unwrap();
                let expected = if congested && inner.is_ecn_capable() {
                    Ce
                } else {
                    inner
                };
                assert_eq!(got.inner, expected, "{inner:?}, congested {congested}");
                assert_eq!(
                    got.unusual,
                    Unusual::No,
                    "a compliant path is never unusual"
                );
                assert_eq!(packet_ecn(&p), Some(expected));
                assert!(ipv4_checksum_ok(&p));
            }
        }
    }

    #[test]
    fn a_packet_that_is_not_ip_is_refused() {
        for mut p in [
            vec![],
            vec![0x45; 19],
            vec![0x60; 39],
            vec![0x44; 20],
            vec![0x20; 64],
        ] {
            assert_eq!(decapsulate(Ce, &mut p), Err(DecapError::NotIp));
            assert!(!mark_ce(&mut p));
        }
    }

    #[test]
    fn only_ecn_capable_packets_are_marked() {
        for ecn in Ecn::ALL {
            let mut p = ipv4(ecn.bits());
            assert_eq!(mark_ce(&mut p), ecn != NotEct);
            let after = if ecn == NotEct { NotEct } else { Ce };
            assert_eq!(packet_ecn(&p), Some(after));
            assert!(ipv4_checksum_ok(&p));
            let mut p = ipv6(ecn.bits());
            assert_eq!(mark_ce(&mut p), ecn != NotEct);
            assert_eq!(packet_ecn(&p), Some(after));
        }
    }

    proptest! {
        /// Any IPv4 header (options included) with a valid checksum keeps it valid, and every
        /// byte but the ECN bits and the checksum, through any ECN rewrite.
        #[test]
        fn ipv4_rewrites_keep_the_checksum_valid(
            mut header in proptest::collection::vec(any::<u8>(), 60),
            ihl in 5u8..=15,
            to in 0u8..4,
        ) {
            let len = usize::from(ihl) * 4;
            header.truncate(len);
            header[0] = 0x40 | ihl;
            header[10..12].fill(0);
            let c = !fold(sum(&header));
            header[10..12].copy_from_slice(&c.to_be_bytes());
            let before = header.clone();
            prop_assert!(set_ecn(&mut header, Ecn::from_tos(to)));
            prop_assert_eq!(fold(sum(&header)), 0xffff);
            prop_assert_eq!(header[1] & !ECN_MASK, before[1] & !ECN_MASK);
            prop_assert_eq!(packet_ecn(&header), Some(Ecn::from_tos(to)));
            prop_assert_eq!(&header[2..10], &before[2..10]);
            prop_assert_eq!(&header[12..], &before[12..]);
        }
    }
}
