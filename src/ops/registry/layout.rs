//! Where things live in etcd, under one prefix per fleet (`/concentrator/<fleet>/`):
//!
//! - `peers/<public key>`: a [`PeerRecord`](super::record::PeerRecord) (JSON);
//! - `leases/v4/<address>`, `leases/v6/<address>`: the owner's public key (base64), one key per
//!   address handed out, so that a compare-and-swap on it gives an address to one peer only;
//! - `headends/<name>`: a [`HeadendRecord`](super::record::HeadendRecord) under an etcd lease.
//!
//! Public keys in key names are in URL-safe base64 (RFC 4648 section 5: `-` and `_` instead of
//! `+` and `/`), since `/` separates the segments.

use std::net::{Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;

use crate::proto::keys::PublicKey;

/// The keys of one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

/// What one etcd key under the fleet's prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `peers/<public key>`.
    Peer(PublicKey),
    /// `leases/v4/<address>`.
    Lease4(Ipv4Addr),
    /// `leases/v6/<address>`.
    Lease6(Ipv6Addr),
    /// `headends/<name>`.
    Headend(String),
}

impl Layout {
    /// The keys of the fleet `fleet` (a name checked by the configuration).
    pub fn new(fleet: &str) -> Self {
        Layout {
            prefix: format!("/concentrator/{fleet}/"),
        }
    }

    /// Everything of the fleet.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every peer record.
    pub fn peers(&self) -> String {
        format!("{}peers/", self.prefix)
    }

    /// The end of the range of every peer record (etcd ranges are `[key, end)`): the peers'
    /// prefix with its last byte, `/`, raised by one.
    pub fn peers_end(&self) -> String {
        format!("{}peers0", self.prefix)
    }

    /// One peer's record.
    pub fn peer(&self, key: &PublicKey) -> String {
        format!("{}peers/{}", self.prefix, URL_SAFE.encode(key.as_bytes()))
    }

    /// The lease of one IPv4 address.
    pub fn lease4(&self, ip: Ipv4Addr) -> String {
        format!("{}leases/v4/{ip}", self.prefix)
    }

    /// The lease of one IPv6 address.
    pub fn lease6(&self, ip: Ipv6Addr) -> String {
        format!("{}leases/v6/{ip}", self.prefix)
    }

    /// Every live headend.
    pub fn headends(&self) -> String {
        format!("{}headends/", self.prefix)
    }

    /// One headend's registration.
    pub fn headend(&self, name: &str) -> String {
        format!("{}headends/{name}", self.prefix)
    }

    /// What `key` is, if it is one of the fleet's keys.
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(&self.prefix)?;
        if let Some(k) = rest.strip_prefix("peers/") {
            let bytes: [u8; 32] = URL_SAFE.decode(k).ok()?.try_into().ok()?;
            return Some(Key::Peer(PublicKey::from(bytes)));
        }
        if let Some(ip) = rest.strip_prefix("leases/v4/") {
            return ip.parse().ok().map(Key::Lease4);
        }
        if let Some(ip) = rest.strip_prefix("leases/v6/") {
            return ip.parse().ok().map(Key::Lease6);
        }
        rest.strip_prefix("headends/")
            .filter(|n| !n.is_empty())
            .map(|n| Key::Headend(n.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_stay_under_the_fleet() {
        let l = Layout::new("eu");
        // 0xfb.. encodes to '+' and '/' in standard base64: the key name must not hold a '/'.
        let key = PublicKey::from([0xfb; 32]);
        let name = l.peer(&key);
        assert!(name.starts_with("/concentrator/eu/peers/"));
        assert!(
            !name["/concentrator/eu/peers/".len()..].contains('/'),
            "{name}"
        );
        assert_eq!(l.parse(name.as_bytes()), Some(Key::Peer(key)));
        let ip = Ipv4Addr::new(10, 66, 0, 7);
        assert_eq!(l.lease4(ip), "/concentrator/eu/leases/v4/10.66.0.7");
        assert_eq!(l.parse(l.lease4(ip).as_bytes()), Some(Key::Lease4(ip)));
        let ip6: Ipv6Addr = "fd66::7".parse().unwrap();
        assert_eq!(l.parse(l.lease6(ip6).as_bytes()), Some(Key::Lease6(ip6)));
        assert_eq!(
            l.parse(l.headend("a").as_bytes()),
            Some(Key::Headend("a".into()))
        );
        // Another fleet's keys, and junk, are not ours.
        assert_eq!(Layout::new("us").parse(name.as_bytes()), None);
        assert_eq!(l.parse(b"/concentrator/eu/peers/short"), None);
        assert_eq!(l.parse(b"/concentrator/eu/leases/v4/10.66.0"), None);
        assert_eq!(l.parse(b"/concentrator/eu/headends/"), None);
        assert!(l.peers().starts_with(l.prefix()) && l.headends().starts_with(l.prefix()));
        // Every peer record sorts inside [peers, peers_end), and nothing else of the fleet.
        let (start, end) = (l.peers(), l.peers_end());
        for k in [
            PublicKey::from([0x00; 32]),
            PublicKey::from([0xff; 32]),
            key,
        ] {
            let n = l.peer(&k);
            assert!(start <= n && n < end, "{n}");
        }
        for other in [l.lease4(ip), l.headend("a"), l.headends()] {
            assert!(!(start <= other && other < end), "{other}");
        }
    }
}
