//! Configuration reload: what differs between the running peers and a newly read file.
//!
//! Pure functions, so the rules are unit-tested without a server: [`plan`] compares peer sets,
//! [`restart_only`] lists the fields that cannot change while running.

use std::collections::HashMap;

use ipnet::IpNet;

use crate::config::ServerConfig;
use crate::proto::keys::{PresharedKey, PublicKey};
use crate::proto::server::PeerConfig;
use crate::proto::wire::AddressAssignment;

/// What changed about a peer that stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerChange {
    /// Its pre-shared key changed.
    pub psk: bool,
    /// Its addresses (or MTU) changed.
    pub address: bool,
    /// Its `allowed_ips` changed (as a set: order and host bits do not count).
    pub allowed_ips: bool,
    /// Its protocol (suite) changed: its keys are erased, it handshakes anew in the new one.
    pub protocol: bool,
}

/// How to go from the running peers to the new file's.
#[derive(Debug, Default)]
pub struct Plan {
    /// Peers in the file only.
    pub add: Vec<PeerConfig>,
    /// Peers running only.
    pub remove: Vec<PublicKey>,
    /// Peers in both, with a different pre-shared key or address.
    pub change: Vec<(PeerConfig, PeerChange)>,
    /// Peers in both, identical: left alone.
    pub unchanged: usize,
}

/// Compares the running peers with the new ones. Sorted by key, so reports are stable.
pub fn plan(current: &HashMap<PublicKey, PeerConfig>, new: Vec<PeerConfig>) -> Plan {
    let mut p = Plan::default();
    let new_keys: std::collections::HashSet<PublicKey> = new.iter().map(|s| s.public_key).collect();
    for spec in new {
        match current.get(&spec.public_key) {
            None => p.add.push(spec),
            Some(old) => {
                let change = PeerChange {
                    psk: old.psk != spec.psk,
                    address: old.assignment != spec.assignment,
                    allowed_ips: prefix_set(&old.allowed_ips) != prefix_set(&spec.allowed_ips),
                    protocol: old.suite != spec.suite,
                };
                if change == PeerChange::default() {
                    p.unchanged += 1;
                } else {
                    p.change.push((spec, change));
                }
            }
        }
    }
    p.remove = current
        .keys()
        .filter(|k| !new_keys.contains(k))
        .copied()
        .collect();
    p.add.sort_by_key(|s| s.public_key);
    p.change.sort_by_key(|(s, _)| s.public_key);
    p.remove.sort();
    p
}

/// `prefixes` as a set: normalized, sorted, without duplicates.
fn prefix_set(prefixes: &[IpNet]) -> Vec<IpNet> {
    let mut set: Vec<IpNet> = prefixes.iter().map(|p| p.trunc()).collect();
    set.sort();
    set.dedup();
    set
}

/// The peers of `config` as the control thread runs them.
pub fn peer_specs(config: &ServerConfig) -> Vec<PeerConfig> {
    config
        .peers
        .iter()
        .map(|p| PeerConfig {
            public_key: p.public_key,
            psk: p
                .preshared_key
                .as_ref()
                .map(|k| PresharedKey::from_bytes(*k.as_bytes()))
                .unwrap_or_else(PresharedKey::zero),
            assignment: AddressAssignment {
                ipv4: p.address,
                ipv4_prefix: config.address.prefix_len(),
                ipv6: p.address6.zip(config.address6.map(|n| n.prefix_len())),
                mtu: config.mtu,
            },
            allowed_ips: p.allowed_ips.clone(),
            suite: p.protocol,
        })
        .collect()
}

/// Fields that differ between the running and the new configuration but only take effect on a
/// restart (the reload applies peers only). The subnets are not in this list: a reload that
/// changes them is refused (see [`refuse`]).
pub fn restart_only(running: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    check(
        "private_key_file",
        running.public_key != new.public_key || running.private_key_file != new.private_key_file,
    );
    check("listen_port", running.listen_port != new.listen_port);
    check(
        "listen_addresses",
        running.listen_addresses != new.listen_addresses,
    );
    check("mtu", running.mtu != new.mtu);
    check("workers", running.workers != new.workers);
    check(
        "client_to_client",
        running.client_to_client != new.client_to_client,
    );
    check("nat", running.nat != new.nat);
    check("nat6", running.nat6 != new.nat6);
    check("offloads", running.offloads != new.offloads);
    check("mss_clamp", running.mss_clamp != new.mss_clamp);
    check("tun_name", running.tun_name != new.tun_name);
    check(
        "control_socket",
        running.control_socket != new.control_socket,
    );
    check("uapi", running.uapi != new.uapi);
    check(
        "metrics_listen",
        running.metrics_listen != new.metrics_listen,
    );
    check(
        "metrics_per_peer",
        running.metrics_per_peer != new.metrics_per_peer,
    );
    check(
        "latency_log_dir",
        running.latency_log_dir != new.latency_log_dir
            || running.latency_log_interval != new.latency_log_interval
            || running.latency_log_keep != new.latency_log_keep,
    );
    check("user", running.user != new.user);
    check("registry", running.registry != new.registry);
    out
}

/// Why a new configuration cannot be applied live at all, if so.
pub fn refuse(running: &ServerConfig, new: &ServerConfig) -> Option<String> {
    if running.registry.is_some() != new.registry.is_some() {
        return Some(
            "[registry] was added or removed: where the peers come from (the file or etcd) \
             changes only on a restart; the running configuration stays"
                .to_string(),
        );
    }
    if running.address != new.address || running.address6 != new.address6 {
        return Some(format!(
            "address/address6 changed ({} -> {}): every peer's address depends on the subnet, \
             so this needs a restart; the running configuration stays",
            running.address, new.address
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn spec(i: u8, psk: u8, addr: u8) -> PeerConfig {
        PeerConfig {
            public_key: PublicKey::from([i; 32]),
            psk: PresharedKey::from_bytes([psk; 32]),
            assignment: AddressAssignment {
                ipv4: Ipv4Addr::new(10, 66, 0, addr),
                ipv4_prefix: 16,
                ipv6: None,
                mtu: 1420,
            },
            allowed_ips: Vec::new(),
            suite: crate::proto::suite::Suite::Native,
        }
    }

    #[test]
    fn plan_finds_added_removed_changed_and_unchanged() {
        let current: HashMap<PublicKey, PeerConfig> = [spec(1, 0, 2), spec(2, 0, 3), spec(3, 0, 4)]
            .into_iter()
            .map(|s| (s.public_key, s))
            .collect();
        // 1 unchanged, 2 new psk, 3 gone, 4 new, 5 new address... of a new peer.
        let p = plan(&current, vec![spec(1, 0, 2), spec(2, 9, 3), spec(4, 0, 5)]);
        assert_eq!(p.unchanged, 1);
        assert_eq!(p.add, vec![spec(4, 0, 5)]);
        assert_eq!(p.remove, vec![PublicKey::from([3; 32])]);
        assert_eq!(p.change.len(), 1);
        assert_eq!(p.change[0].0, spec(2, 9, 3));
        assert_eq!(
            p.change[0].1,
            PeerChange {
                psk: true,
                ..PeerChange::default()
            }
        );
        let p = plan(&current, vec![spec(1, 0, 9), spec(2, 0, 3), spec(3, 0, 4)]);
        assert_eq!((p.unchanged, p.add.len(), p.remove.len()), (2, 0, 0));
        assert_eq!(
            p.change[0].1,
            PeerChange {
                address: true,
                ..PeerChange::default()
            }
        );
    }

    #[test]
    fn allowed_ips_changes_are_found_as_sets() {
        let with = |prefixes: &[&str]| PeerConfig {
            allowed_ips: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            ..spec(1, 0, 2)
        };
        let current: HashMap<PublicKey, PeerConfig> = [with(&["10.99.0.0/24", "fd99::/48"])]
            .into_iter()
            .map(|s| (s.public_key, s))
            .collect();
        // Another order and host bits set: the same networks.
        let p = plan(&current, vec![with(&["fd99::/48", "10.99.0.7/24"])]);
        assert_eq!(p.unchanged, 1);
        let p = plan(&current, vec![with(&["10.99.0.0/24"])]);
        assert_eq!(
            p.change[0].1,
            PeerChange {
                allowed_ips: true,
                ..PeerChange::default()
            }
        );
    }

    #[test]
    fn identical_set_is_a_no_op() {
        let current: HashMap<PublicKey, PeerConfig> = [spec(1, 0, 2)]
            .into_iter()
            .map(|s| (s.public_key, s))
            .collect();
        let p = plan(&current, vec![spec(1, 0, 2)]);
        assert!(p.add.is_empty() && p.remove.is_empty() && p.change.is_empty());
        assert_eq!(p.unchanged, 1);
    }
}
