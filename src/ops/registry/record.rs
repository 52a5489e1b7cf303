//! The JSON records the fleet keeps in etcd (see [`layout`](super::layout) for where).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One peer, at `peers/<public key>`. Its addresses are the leases it owns
/// (`leases/v4/<ip>` and `leases/v6/<ip>`), written in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The protocol it speaks (`native` or `wireguard`).
    pub protocol: String,
    /// The IPv4 address the operator fixed, if any (otherwise its lease came from the pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The IPv6 address the operator fixed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    /// Networks behind the peer, routed to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<IpNet>,
    /// Its pre-shared key sealed with the fleet key ([`seal`](super::seal)), never in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
}

/// One live headend, at `headends/<name>`, under an etcd lease that ends with the headend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadendRecord {
    /// Where clients reach it (`registry.endpoint`).
    pub endpoint: String,
    /// Clients it carries (peers with a live session there).
    pub clients: u64,
    /// Its version of concentrator.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_plain_json_and_optional_fields_may_be_left_out() {
        let r = PeerRecord {
            protocol: "native".into(),
            address: Some(Ipv4Addr::new(10, 66, 0, 9)),
            address6: None,
            allowed_ips: vec!["10.99.0.0/24".parse().unwrap()],
            psk: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"protocol":"native","address":"10.66.0.9","allowed_ips":["10.99.0.0/24"]}"#
        );
        assert_eq!(serde_json::from_str::<PeerRecord>(&text).unwrap(), r);
        let bare: PeerRecord = serde_json::from_str(r#"{"protocol":"native"}"#).unwrap();
        assert_eq!(
            (bare.address, bare.psk, bare.allowed_ips.len()),
            (None, None, 0)
        );
        let h = HeadendRecord {
            endpoint: "a:51820".into(),
            clients: 3,
            version: "0.1.0".into(),
        };
        let back: HeadendRecord =
            serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }
}
