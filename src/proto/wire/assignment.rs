//! The address assignment payload (24 bytes), carried encrypted in the handshake response.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{array, WireError, ASSIGNMENT_LEN};
use crate::proto::constants::{MAX_MTU, MIN_MTU};

mod field {
    pub const IPV4: usize = 0;
    pub const IPV4_PREFIX: usize = 4;
    pub const IPV6_PREFIX: usize = 5;
    pub const MTU: usize = 6;
    pub const IPV6: usize = 8;
}

/// The addresses and MTU the server assigns to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressAssignment {
    /// The client's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its prefix length, 1..=32.
    pub ipv4_prefix: u8,
    /// The client's IPv6 address and prefix length (1..=128), if any.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// The inner MTU, [`MIN_MTU`]..=[`MAX_MTU`].
    pub mtu: u16,
}

impl AddressAssignment {
    /// Parses exactly [`ASSIGNMENT_LEN`] bytes, checking every range of the spec. Although the
    /// payload arrives authenticated, a buggy or hostile server must not make us configure a
    /// /0 route or an MTU that breaks the AES-GCM limits.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() != ASSIGNMENT_LEN {
            return Err(WireError::WrongLength {
                expected: ASSIGNMENT_LEN,
                got: bytes.len(),
            });
        }
        let ipv4 = Ipv4Addr::from(*array::<4>(bytes, field::IPV4));
        let ipv4_prefix = bytes[field::IPV4_PREFIX];
        if !(1..=32).contains(&ipv4_prefix) {
            return Err(WireError::BadField("ipv4_prefix"));
        }
        let mtu = u16::from_le_bytes(*array(bytes, field::MTU));
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(WireError::BadField("mtu"));
        }
        let ipv6_addr = Ipv6Addr::from(*array::<16>(bytes, field::IPV6));
        let ipv6 = match bytes[field::IPV6_PREFIX] {
            0 if ipv6_addr.is_unspecified() => None,
            0 => return Err(WireError::BadField("ipv6")),
            prefix @ 1..=128 => Some((ipv6_addr, prefix)),
            _ => return Err(WireError::BadField("ipv6_prefix")),
        };
        Ok(AddressAssignment {
            ipv4,
            ipv4_prefix,
            ipv6,
            mtu,
        })
    }

    /// Writes the payload. Does not validate: the server checks its configuration when it
    /// loads it, and [`AddressAssignment::parse`] rejects out-of-range values on the client.
    pub fn emit(&self, out: &mut [u8; ASSIGNMENT_LEN]) {
        out[field::IPV4..field::IPV4 + 4].copy_from_slice(&self.ipv4.octets());
        out[field::IPV4_PREFIX] = self.ipv4_prefix;
        let (v6, v6_prefix) = self.ipv6.unwrap_or((Ipv6Addr::UNSPECIFIED, 0));
        out[field::IPV6_PREFIX] = v6_prefix;
        out[field::MTU..field::MTU + 2].copy_from_slice(&self.mtu.to_le_bytes());
        out[field::IPV6..].copy_from_slice(&v6.octets());
    }

    /// The length of the emitted payload.
    pub const fn buffer_len(&self) -> usize {
        ASSIGNMENT_LEN
    }

    /// True when `address` is one this assignment gives the peer (cryptokey routing). A
    /// decrypted packet from any other source is dropped: the tunnel authenticates the peer,
    /// this binds the peer to its addresses so it cannot impersonate another client or a host
    /// behind the server.
    pub fn assigns(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(a) => a == self.ipv4,
            IpAddr::V6(a) => self.ipv6.is_some_and(|(own, _)| own == a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10.8.0.2/24, fd00::2/64, MTU 1420 (0x058c).
    const V4_V6: [u8; 24] = [
        10, 8, 0, 2, 24, 64, 0x8c, 0x05, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    ];
    /// 100.64.0.9/32, no IPv6, MTU 1280.
    const V4_ONLY: [u8; 24] = [
        100, 64, 0, 9, 32, 0, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn parses_dual_stack() {
        let a = AddressAssignment::parse(&V4_V6).unwrap();
        assert_eq!(a.ipv4, Ipv4Addr::new(10, 8, 0, 2));
        assert_eq!(a.ipv4_prefix, 24);
        assert_eq!(a.ipv6, Some(("fd00::2".parse().unwrap(), 64)));
        assert_eq!(a.mtu, 1420);
    }

    #[test]
    fn parses_v4_only() {
        let a = AddressAssignment::parse(&V4_ONLY).unwrap();
        assert_eq!(a.ipv4, Ipv4Addr::new(100, 64, 0, 9));
        assert_eq!(a.ipv4_prefix, 32);
        assert_eq!(a.ipv6, None);
        assert_eq!(a.mtu, 1280);
    }

    #[test]
    fn assigns_only_its_own_addresses() {
        let a = AddressAssignment::parse(&V4_V6).unwrap();
        assert!(a.assigns("10.8.0.2".parse().unwrap()));
        assert!(!a.assigns("10.8.0.3".parse().unwrap()));
        assert!(a.assigns("fd00::2".parse().unwrap()));
        assert!(!a.assigns("fd00::3".parse().unwrap()));
        // Not the IPv4 address written as IPv6, and no IPv6 address without an assignment.
        assert!(!a.assigns("::ffff:10.8.0.2".parse().unwrap()));
        let v4_only = AddressAssignment::parse(&V4_ONLY).unwrap();
        assert!(v4_only.assigns("100.64.0.9".parse().unwrap()));
        assert!(!v4_only.assigns("::".parse().unwrap()));
        assert!(!v4_only.assigns("fd00::2".parse().unwrap()));
    }

    #[test]
    fn round_trips() {
        for bytes in [V4_V6, V4_ONLY] {
            let a = AddressAssignment::parse(&bytes).unwrap();
            assert_eq!(a.buffer_len(), 24);
            let mut out = [0xffu8; 24];
            a.emit(&mut out);
            assert_eq!(out, bytes);
        }
    }

    #[test]
    fn rejects_wrong_length() {
        assert_eq!(
            AddressAssignment::parse(&V4_V6[..23]),
            Err(WireError::WrongLength {
                expected: 24,
                got: 23
            })
        );
        assert!(AddressAssignment::parse(&[]).is_err());
        assert!(AddressAssignment::parse(&[0; 25]).is_err());
    }

    #[test]
    fn ipv4_prefix_range() {
        for (prefix, ok) in [(0, false), (1, true), (32, true), (33, false), (255, false)] {
            let mut b = V4_ONLY;
            b[4] = prefix;
            assert_eq!(AddressAssignment::parse(&b).is_ok(), ok, "prefix {prefix}");
        }
        let mut b = V4_ONLY;
        b[4] = 0;
        assert_eq!(
            AddressAssignment::parse(&b),
            Err(WireError::BadField("ipv4_prefix"))
        );
    }

    #[test]
    fn ipv6_prefix_range() {
        for (prefix, ok) in [(1, true), (128, true), (129, false), (255, false)] {
            let mut b = V4_V6;
            b[5] = prefix;
            assert_eq!(AddressAssignment::parse(&b).is_ok(), ok, "prefix {prefix}");
        }
        let mut b = V4_V6;
        b[5] = 129;
        assert_eq!(
            AddressAssignment::parse(&b),
            Err(WireError::BadField("ipv6_prefix"))
        );
    }

    #[test]
    fn ipv6_address_must_be_zero_without_prefix() {
        let mut b = V4_V6;
        b[5] = 0;
        assert_eq!(
            AddressAssignment::parse(&b),
            Err(WireError::BadField("ipv6"))
        );
        let mut b = V4_ONLY;
        b[23] = 1;
        assert!(AddressAssignment::parse(&b).is_err());
    }

    #[test]
    fn mtu_range() {
        for (mtu, ok) in [
            (1279u16, false),
            (1280, true),
            (1500, true),
            (1920, true),
            (1921, false),
            (0, false),
            (u16::MAX, false),
        ] {
            let mut b = V4_ONLY;
            b[6..8].copy_from_slice(&mtu.to_le_bytes());
            assert_eq!(AddressAssignment::parse(&b).is_ok(), ok, "mtu {mtu}");
        }
        let mut b = V4_ONLY;
        b[6..8].copy_from_slice(&1921u16.to_le_bytes());
        assert_eq!(
            AddressAssignment::parse(&b),
            Err(WireError::BadField("mtu"))
        );
    }

    #[test]
    fn emit_without_ipv6_writes_zeros() {
        let a = AddressAssignment {
            ipv4: Ipv4Addr::new(192, 0, 2, 1),
            ipv4_prefix: 24,
            ipv6: None,
            mtu: 1400,
        };
        let mut out = [0xaau8; 24];
        a.emit(&mut out);
        assert_eq!(&out[..8], &[192, 0, 2, 1, 24, 0, 0x78, 0x05]);
        assert_eq!(&out[8..], &[0u8; 16]);
    }
}
