//! Just enough of IPv4/IPv6 headers for routing decisions on the hot path, and cryptokey
//! routing: a peer may only send packets from the addresses it was assigned.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::AddressAssignment;

/// True when `source` is one of the addresses `assignment` gave the peer. A decrypted packet
/// with any other source is dropped: the tunnel authenticates the peer, this binds the peer to
/// its addresses so it cannot impersonate another client or a host behind the server.
pub fn source_allowed(assignment: &AddressAssignment, source: IpAddr) -> bool {
    match source {
        IpAddr::V4(a) => a == assignment.ipv4,
        IpAddr::V6(a) => assignment.ipv6.is_some_and(|(own, _)| own == a),
    }
}

/// Source and destination of an IP packet, or `None` if it is not a well-formed IPv4/IPv6
/// header whose stated length fits in `packet`.
pub fn addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let total = u16::from_be_bytes([packet[2], packet[3]]) as usize;
            if total < 20 || total > packet.len() {
                return None;
            }
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            let dst: [u8; 4] = packet[16..20].try_into().ok()?;
            Some((
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
            ))
        }
        6 if packet.len() >= 40 => {
            let payload = u16::from_be_bytes([packet[4], packet[5]]) as usize;
            if 40 + payload > packet.len() {
                return None;
            }
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            Some((
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
            ))
        }
        _ => None,
    }
}

/// The packet's length as its own header states it (decryption hands us exactly the packet,
/// but a TUN write must not carry trailing bytes).
pub fn stated_len(packet: &[u8]) -> Option<usize> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(u16::from_be_bytes([packet[2], packet[3]]) as usize),
        6 if packet.len() >= 40 => Some(40 + u16::from_be_bytes([packet[4], packet[5]]) as usize),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], total: u16) -> Vec<u8> {
        let mut p = vec![0u8; total as usize];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn parses_ipv4() {
        let p = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 28);
        assert_eq!(
            addresses(&p),
            Some((
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
            ))
        );
        assert_eq!(stated_len(&p), Some(28));
    }

    #[test]
    fn rejects_lengths_that_lie() {
        let mut p = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 28);
        p[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(addresses(&p), None);
        p[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(addresses(&p), None);
        assert_eq!(addresses(&[0x45; 19]), None);
        assert_eq!(addresses(&[]), None);
        assert_eq!(addresses(&[0x75; 60]), None);
    }

    #[test]
    fn only_assigned_sources_are_allowed() {
        let a = AddressAssignment {
            ipv4: Ipv4Addr::new(10, 66, 0, 7),
            ipv4_prefix: 16,
            ipv6: Some(("fd66::7".parse().unwrap(), 64)),
            mtu: 1420,
        };
        assert!(source_allowed(&a, "10.66.0.7".parse().unwrap()));
        assert!(!source_allowed(&a, "10.66.0.8".parse().unwrap()));
        assert!(source_allowed(&a, "fd66::7".parse().unwrap()));
        assert!(!source_allowed(&a, "fd66::8".parse().unwrap()));
        let no_v6 = AddressAssignment { ipv6: None, ..a };
        assert!(!source_allowed(&no_v6, "fd66::7".parse().unwrap()));
    }

    #[test]
    fn parses_ipv6() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[8] = 0xfd;
        p[24] = 0xfe;
        let (s, d) = addresses(&p).unwrap();
        assert!(matches!(s, IpAddr::V6(a) if a.octets()[0] == 0xfd));
        assert!(matches!(d, IpAddr::V6(a) if a.octets()[0] == 0xfe));
        assert_eq!(stated_len(&p), Some(48));
    }
}
