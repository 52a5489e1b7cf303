//! The push message (type 5): routes and DNS servers the server pushes to a client, sealed like
//! transport data under the session's keys. Layout in `docs/protocol.md`, "Push message".
//!
//! The handshake response stays byte for byte what it was (a client of the first release
//! requires exactly 116 bytes and a 24-byte assignment), so pushed settings travel in a message
//! of their own, which such a client drops as an unknown type.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{MessageType, WireError, TRANSPORT_MIN_LEN};

/// The payload version this implementation writes and reads. A change that older readers
/// could misread takes a new version (which they drop); additions are new entry kinds, which
/// they skip.
pub const PUSH_VERSION: u8 = 1;
/// Most pushed routes per address family. With [`MAX_PUSH_DNS_PER_FAMILY`] the largest push
/// message is 961 bytes, so it crosses any IPv6 path in one datagram (RFC 8200 section 5: a
/// 1280-byte minimum MTU leaves 1232 bytes above the IPv6 and UDP headers).
pub const MAX_PUSH_ROUTES_PER_FAMILY: usize = 32;
/// Most pushed DNS servers per address family (resolv.conf itself uses only three).
pub const MAX_PUSH_DNS_PER_FAMILY: usize = 4;
// The largest push message fits in one datagram on any IPv6 path (see the limits above).
const _: () = assert!(TRANSPORT_MIN_LEN + MAX_PUSH_PAYLOAD_LEN <= 1280 - 40 - 8);

/// Smallest push message: header, the version byte, tag.
pub const PUSH_MIN_LEN: usize = TRANSPORT_MIN_LEN + 1;

/// Entry kinds of the payload.
mod kind {
    pub const ROUTE4: u8 = 1;
    pub const ROUTE6: u8 = 2;
    pub const DNS4: u8 = 3;
    pub const DNS6: u8 = 4;
}

/// Bytes of an entry's kind and length.
const ENTRY_HEADER_LEN: usize = 2;
/// Value lengths of the known kinds: prefix length and network, or one address.
const ROUTE4_LEN: usize = 1 + 4;
const ROUTE6_LEN: usize = 1 + 16;
const DNS4_LEN: usize = 4;
const DNS6_LEN: usize = 16;

/// The largest payload [`PushConfig::emit`] writes (every family at its limits).
pub const MAX_PUSH_PAYLOAD_LEN: usize = 1
    + MAX_PUSH_ROUTES_PER_FAMILY * (2 * ENTRY_HEADER_LEN + ROUTE4_LEN + ROUTE6_LEN)
    + MAX_PUSH_DNS_PER_FAMILY * (2 * ENTRY_HEADER_LEN + DNS4_LEN + DNS6_LEN);

/// Why a route or DNS server cannot be pushed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// A /0 would replace the client's default route; push both halves instead.
    #[error("{0} has prefix length 0, which would replace the client's default route; push 0.0.0.0/1 and 128.0.0.0/1 (or ::/1 and 8000::/1) instead")]
    WholeFamily(IpNet),
    /// Host bits set: the route the client installs would not be what was written.
    #[error("{net} has host bits set; write {}", net.trunc())]
    HostBits {
        /// The route as written.
        net: IpNet,
    },
    /// Not an address a resolver can be asked.
    #[error("{0} is not a usable DNS server address (unspecified, multicast or broadcast)")]
    BadDnsServer(IpAddr),
    /// The same route or server twice.
    #[error("{0} is listed twice")]
    Duplicate(String),
    /// Over the per-family limit.
    #[error("more than {max} {what} ({family}); a push message carries at most {max} per address family")]
    TooMany {
        /// "routes" or "DNS servers".
        what: &'static str,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The limit.
        max: usize,
    },
}

/// Routes and DNS servers for a client, as the server pushes them: every route has a prefix
/// length of at least 1 and no host bits, no entry is listed twice, and each family stays
/// within [`MAX_PUSH_ROUTES_PER_FAMILY`] and [`MAX_PUSH_DNS_PER_FAMILY`]. Only
/// [`PushConfig::new`] and [`PushConfig::parse`] make one, so every value holds to that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PushConfig {
    routes: Vec<IpNet>,
    dns: Vec<IpAddr>,
}

/// Checks one route.
pub fn check_route(net: IpNet) -> Result<(), PushError> {
    if net.prefix_len() == 0 {
        return Err(PushError::WholeFamily(net));
    }
    if net.trunc() != net {
        return Err(PushError::HostBits { net });
    }
    Ok(())
}

/// Checks one DNS server address.
pub fn check_dns_server(ip: IpAddr) -> Result<(), PushError> {
    let bad = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if bad {
        return Err(PushError::BadDnsServer(ip));
    }
    Ok(())
}

fn family(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

impl PushConfig {
    /// Validates `routes` and `dns` (see the type's rules).
    pub fn new(routes: Vec<IpNet>, dns: Vec<IpAddr>) -> Result<Self, PushError> {
        for (i, net) in routes.iter().enumerate() {
            check_route(*net)?;
            if routes[..i].contains(net) {
                return Err(PushError::Duplicate(net.to_string()));
            }
        }
        for (i, ip) in dns.iter().enumerate() {
            check_dns_server(*ip)?;
            if dns[..i].contains(ip) {
                return Err(PushError::Duplicate(ip.to_string()));
            }
        }
        for v4 in [true, false] {
            let n = routes
                .iter()
                .filter(|r| matches!(r, IpNet::V4(_)) == v4)
                .count();
            if n > MAX_PUSH_ROUTES_PER_FAMILY {
                return Err(PushError::TooMany {
                    what: "routes",
                    family: family(v4),
                    max: MAX_PUSH_ROUTES_PER_FAMILY,
                });
            }
            let n = dns.iter().filter(|d| d.is_ipv4() == v4).count();
            if n > MAX_PUSH_DNS_PER_FAMILY {
                return Err(PushError::TooMany {
                    what: "DNS servers",
                    family: family(v4),
                    max: MAX_PUSH_DNS_PER_FAMILY,
                });
            }
        }
        Ok(PushConfig { routes, dns })
    }

    /// This configuration followed by what `more` adds to it (entries already here are not
    /// repeated), within the same limits.
    pub fn merged(&self, more: &PushConfig) -> Result<PushConfig, PushError> {
        let mut routes = self.routes.clone();
        routes.extend(more.routes.iter().filter(|r| !self.routes.contains(r)));
        let mut dns = self.dns.clone();
        dns.extend(more.dns.iter().filter(|d| !self.dns.contains(d)));
        PushConfig::new(routes, dns)
    }

    /// The routes, in the order given.
    pub fn routes(&self) -> &[IpNet] {
        &self.routes
    }

    /// The DNS servers, in the order given (the order a resolver tries them).
    pub fn dns(&self) -> &[IpAddr] {
        &self.dns
    }

    /// True when nothing is pushed.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.dns.is_empty()
    }

    /// Parses a payload: the version, then entries of kind, length and value until the end.
    /// Unknown kinds are skipped (a later server may add some); a known kind with another
    /// length, a truncated entry, a value out of range, a duplicate or a family over its limit
    /// fails the whole payload. Although it arrives authenticated, a buggy or hostile server
    /// must not make the client install a /0 route.
    pub fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let (&version, mut rest) = payload.split_first().ok_or(WireError::Truncated)?;
        if version != PUSH_VERSION {
            return Err(WireError::BadField("push version"));
        }
        let mut routes = Vec::new();
        let mut dns = Vec::new();
        while !rest.is_empty() {
            let [kind, len, ..] = *rest else {
                return Err(WireError::Truncated);
            };
            let len = usize::from(len);
            let value = rest
                .get(ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + len)
                .ok_or(WireError::Truncated)?;
            rest = &rest[ENTRY_HEADER_LEN + len..];
            match kind {
                kind::ROUTE4 => routes.push(parse_route4(value)?),
                kind::ROUTE6 => routes.push(parse_route6(value)?),
                kind::DNS4 => dns.push(IpAddr::V4(Ipv4Addr::from(
                    <[u8; DNS4_LEN]>::try_from(value).map_err(|_| bad_length())?,
                ))),
                kind::DNS6 => dns.push(IpAddr::V6(Ipv6Addr::from(
                    <[u8; DNS6_LEN]>::try_from(value).map_err(|_| bad_length())?,
                ))),
                _ => {} // an extension this version does not know
            }
        }
        PushConfig::new(routes, dns).map_err(|e| {
            WireError::BadField(match e {
                PushError::WholeFamily(_) | PushError::HostBits { .. } => "push route",
                PushError::BadDnsServer(_) => "push dns",
                PushError::Duplicate(_) => "push duplicate",
                PushError::TooMany { .. } => "push count",
            })
        })
    }

    /// The length [`PushConfig::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        let routes: usize = self
            .routes
            .iter()
            .map(|r| {
                ENTRY_HEADER_LEN
                    + match r {
                        IpNet::V4(_) => ROUTE4_LEN,
                        IpNet::V6(_) => ROUTE6_LEN,
                    }
            })
            .sum();
        let dns: usize = self
            .dns
            .iter()
            .map(|d| ENTRY_HEADER_LEN + if d.is_ipv4() { DNS4_LEN } else { DNS6_LEN })
            .sum();
        1 + routes + dns
    }

    /// Writes the payload into `out` (at least [`PushConfig::buffer_len`] bytes, which
    /// [`MAX_PUSH_PAYLOAD_LEN`] always is) and returns its length: the version, the routes,
    /// then the DNS servers, each in the order given.
    pub fn emit(&self, out: &mut [u8]) -> usize {
        out[0] = PUSH_VERSION;
        let mut at = 1;
        let mut put = |kind: u8, value: &[u8]| {
            out[at] = kind;
            out[at + 1] = value.len() as u8;
            out[at + ENTRY_HEADER_LEN..at + ENTRY_HEADER_LEN + value.len()].copy_from_slice(value);
            at += ENTRY_HEADER_LEN + value.len();
        };
        for route in &self.routes {
            match route {
                IpNet::V4(n) => {
                    let mut v = [0u8; ROUTE4_LEN];
                    v[0] = n.prefix_len();
                    v[1..].copy_from_slice(&n.network().octets());
                    put(kind::ROUTE4, &v);
                }
                IpNet::V6(n) => {
                    let mut v = [0u8; ROUTE6_LEN];
                    v[0] = n.prefix_len();
                    v[1..].copy_from_slice(&n.network().octets());
                    put(kind::ROUTE6, &v);
                }
            }
        }
        for server in &self.dns {
            match server {
                IpAddr::V4(a) => put(kind::DNS4, &a.octets()),
                IpAddr::V6(a) => put(kind::DNS6, &a.octets()),
            }
        }
        at
    }
}

fn bad_length() -> WireError {
    WireError::BadField("push entry length")
}

fn parse_route4(value: &[u8]) -> Result<IpNet, WireError> {
    let v: [u8; ROUTE4_LEN] = value.try_into().map_err(|_| bad_length())?;
    let addr = Ipv4Addr::new(v[1], v[2], v[3], v[4]);
    Ipv4Net::new(addr, v[0])
        .map(IpNet::V4)
        .map_err(|_| WireError::BadField("push route prefix"))
}

fn parse_route6(value: &[u8]) -> Result<IpNet, WireError> {
    let v: [u8; ROUTE6_LEN] = value.try_into().map_err(|_| bad_length())?;
    let addr = Ipv6Addr::from(<[u8; 16]>::try_from(&v[1..]).map_err(|_| bad_length())?);
    Ipv6Net::new(addr, v[0])
        .map(IpNet::V6)
        .map_err(|_| WireError::BadField("push route prefix"))
}

/// The receiver index of a push message, or `None` if `bytes` is not one (wrong type,
/// non-zero reserved bytes, or shorter than [`PUSH_MIN_LEN`]).
pub fn push_receiver_index(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < PUSH_MIN_LEN {
        return None;
    }
    let head = bytes.first_chunk::<8>()?;
    if head[..4] != [MessageType::Push as u8, 0, 0, 0] {
        return None;
    }
    Some(u32::from_le_bytes([head[4], head[5], head[6], head[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// 10.98.0.0/24, fd98::/64, DNS 10.1.0.53 and fd01::53.
    const BOTH: [u8; 1 + 7 + 19 + 6 + 18] = [
        1, // version
        1, 5, 24, 10, 98, 0, 0, // route4
        2, 17, 64, 0xfd, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // route6
        3, 4, 10, 1, 0, 53, // dns4
        4, 16, 0xfd, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53, // dns6
    ];

    fn both() -> PushConfig {
        PushConfig::new(
            vec![net("10.98.0.0/24"), net("fd98::/64")],
            vec![ip("10.1.0.53"), ip("fd01::53")],
        )
        .unwrap()
    }

    #[test]
    fn parses_and_emits_the_documented_bytes() {
        assert_eq!(PushConfig::parse(&BOTH), Ok(both()));
        let mut out = [0xeeu8; MAX_PUSH_PAYLOAD_LEN];
        let n = both().emit(&mut out);
        assert_eq!(n, both().buffer_len());
        assert_eq!(&out[..n], &BOTH[..]);
    }

    #[test]
    fn the_example_of_the_protocol_document() {
        let bytes = [1, 1, 5, 24, 10, 98, 0, 0, 3, 4, 10, 1, 0, 53];
        let push = PushConfig::new(vec![net("10.98.0.0/24")], vec![ip("10.1.0.53")]).unwrap();
        assert_eq!(PushConfig::parse(&bytes), Ok(push.clone()));
        let mut out = [0u8; 14];
        assert_eq!(push.emit(&mut out), 14);
        assert_eq!(out, bytes);
    }

    #[test]
    fn empty_is_the_version_alone() {
        let mut out = [0u8; 4];
        assert_eq!(PushConfig::default().emit(&mut out), 1);
        assert_eq!(out[0], PUSH_VERSION);
        assert_eq!(PushConfig::parse(&[1]), Ok(PushConfig::default()));
        assert!(PushConfig::default().is_empty());
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        // A later server's entry of kind 9 (say, a search domain) between known ones.
        let mut bytes = BOTH[..8].to_vec();
        bytes.extend([9, 11]);
        bytes.extend(b"example.com");
        bytes.extend(&BOTH[8..]);
        bytes.extend([200, 0]); // an empty one at the end
        assert_eq!(PushConfig::parse(&bytes), Ok(both()));
    }

    #[test]
    fn other_versions_are_refused() {
        let mut b = BOTH;
        for v in [0u8, 2, 255] {
            b[0] = v;
            assert_eq!(
                PushConfig::parse(&b),
                Err(WireError::BadField("push version"))
            );
        }
    }

    #[test]
    fn truncated_and_malformed_entries_are_refused() {
        assert_eq!(PushConfig::parse(&[]), Err(WireError::Truncated));
        // Every cut inside an entry.
        for cut in 2..BOTH.len() {
            let boundaries = [1usize, 8, 27, 33, 51];
            if boundaries.contains(&cut) {
                continue;
            }
            assert!(PushConfig::parse(&BOTH[..cut]).is_err(), "cut at {cut}");
        }
        // A known kind with another length.
        assert_eq!(
            PushConfig::parse(&[1, 1, 4, 24, 10, 98, 0]),
            Err(WireError::BadField("push entry length"))
        );
        assert_eq!(
            PushConfig::parse(&[1, 3, 5, 10, 1, 0, 53, 0]),
            Err(WireError::BadField("push entry length"))
        );
        // Prefix length past the family's.
        assert_eq!(
            PushConfig::parse(&[1, 1, 5, 33, 10, 98, 0, 0]),
            Err(WireError::BadField("push route prefix"))
        );
    }

    #[test]
    fn values_out_of_range_are_refused() {
        let cases: [(&[u8], &str); 5] = [
            (&[1, 1, 5, 0, 0, 0, 0, 0], "push route"),    // 0.0.0.0/0
            (&[1, 1, 5, 24, 10, 98, 0, 1], "push route"), // host bits
            (&[1, 3, 4, 0, 0, 0, 0], "push dns"),         // 0.0.0.0
            (&[1, 3, 4, 224, 0, 0, 1], "push dns"),       // multicast
            (
                &[1, 3, 4, 10, 1, 0, 53, 3, 4, 10, 1, 0, 53],
                "push duplicate",
            ),
        ];
        for (bytes, field) in cases {
            assert_eq!(
                PushConfig::parse(bytes),
                Err(WireError::BadField(field)),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn limits_per_family() {
        let v4 = |n: usize| -> Vec<IpNet> {
            (0..n)
                .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, i as u8, 0, 0), 16).unwrap()))
                .collect()
        };
        let v6 =
            |n: usize| -> Vec<IpNet> { (0..n).map(|i| net(&format!("fd{i:02x}::/64"))).collect() };
        let max = MAX_PUSH_ROUTES_PER_FAMILY;
        let dns4: Vec<IpAddr> = (1..=4).map(|i| ip(&format!("10.1.0.{i}"))).collect();
        let dns6: Vec<IpAddr> = (1..=4).map(|i| ip(&format!("fd01::{i}"))).collect();
        let full = PushConfig::new(
            [v4(max), v6(max)].concat(),
            [dns4.clone(), dns6.clone()].concat(),
        )
        .unwrap();
        assert_eq!(full.buffer_len(), MAX_PUSH_PAYLOAD_LEN);
        let mut out = vec![0u8; MAX_PUSH_PAYLOAD_LEN];
        let n = full.emit(&mut out);
        assert_eq!(PushConfig::parse(&out[..n]), Ok(full));

        let too_many = PushConfig::new(v4(max + 1), Vec::new()).unwrap_err();
        assert_eq!(
            too_many,
            PushError::TooMany {
                what: "routes",
                family: "IPv4",
                max
            }
        );
        assert!(PushConfig::new(v6(max + 1), Vec::new()).is_err());
        let five: Vec<IpAddr> = (1..=5).map(|i| ip(&format!("fd01::{i}"))).collect();
        assert!(PushConfig::new(Vec::new(), five)
            .unwrap_err()
            .to_string()
            .contains("IPv6"));
        // Over the limit on the wire too: 33 IPv4 routes.
        let mut bytes = vec![1u8];
        for r in v4(max + 1) {
            let IpNet::V4(n) = r else { unreachable!() };
            bytes.extend([1, 5, n.prefix_len()]);
            bytes.extend(n.network().octets());
        }
        assert_eq!(
            PushConfig::parse(&bytes),
            Err(WireError::BadField("push count"))
        );
    }

    #[test]
    fn new_refuses_what_cannot_be_pushed() {
        let err = PushConfig::new(vec![net("0.0.0.0/0")], Vec::new()).unwrap_err();
        assert!(err.to_string().contains("0.0.0.0/1"), "{err}");
        let err = PushConfig::new(vec![net("10.98.0.1/24")], Vec::new()).unwrap_err();
        assert!(err.to_string().contains("write 10.98.0.0/24"), "{err}");
        assert!(PushConfig::new(vec![net("::/0")], Vec::new()).is_err());
        assert!(PushConfig::new(Vec::new(), vec![ip("255.255.255.255")]).is_err());
        assert!(PushConfig::new(Vec::new(), vec![ip("::")]).is_err());
        assert!(PushConfig::new(vec![net("10.0.0.0/8"), net("10.0.0.0/8")], Vec::new()).is_err());
    }

    #[test]
    fn merged_adds_without_repeating() {
        let global = PushConfig::new(vec![net("10.98.0.0/24")], vec![ip("10.1.0.53")]).unwrap();
        let own = PushConfig::new(
            vec![net("10.97.0.0/24"), net("10.98.0.0/24")],
            vec![ip("10.1.0.54")],
        )
        .unwrap();
        let m = global.merged(&own).unwrap();
        assert_eq!(m.routes(), &[net("10.98.0.0/24"), net("10.97.0.0/24")]);
        assert_eq!(m.dns(), &[ip("10.1.0.53"), ip("10.1.0.54")]);
        let many: Vec<IpAddr> = (1..=4).map(|i| ip(&format!("10.2.0.{i}"))).collect();
        let own = PushConfig::new(Vec::new(), many).unwrap();
        assert!(global.merged(&own).is_err(), "5 IPv4 DNS servers together");
    }

    #[test]
    fn receiver_index_only_for_push_messages() {
        let mut m = [0u8; PUSH_MIN_LEN];
        m[0] = 5;
        m[4..8].copy_from_slice(&0x0a0b_0c0du32.to_le_bytes());
        assert_eq!(push_receiver_index(&m), Some(0x0a0b_0c0d));
        assert_eq!(push_receiver_index(&m[..PUSH_MIN_LEN - 1]), None);
        let mut t = m;
        t[0] = 4;
        assert_eq!(push_receiver_index(&t), None);
        let mut r = m;
        r[2] = 1;
        assert_eq!(push_receiver_index(&r), None);
    }
}
