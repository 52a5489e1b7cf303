//! WireGuard's `set` of one peer (the UAPI, `wg set IF peer KEY ...`): create it, change its
//! networks and pre-shared key, or remove it, through the same steps as `peer add/remove`, so
//! that the session table, the kernel routes and the pools stay consistent.
//!
//! WireGuard's semantics, with what a headend that assigns addresses adds to them:
//! - a network given to a peer is taken from the peer that had it;
//! - a peer's own addresses (its `/32` and `/128`) are not networks it was given: they stay
//!   whatever its networks become. A new peer given a host prefix inside the client subnet
//!   gets it as its address (else one from the pool); an existing peer's address cannot move.

use std::collections::HashMap;

use ipnet::IpNet;

use super::command::{AddPeer, NetworkEdit, PeerSet, SetPeer};
use super::Control;
use crate::proto::keys::PublicKey;
use crate::proto::wire::AddressAssignment;

/// A peer's networks after `edits`, normalized, in order, without duplicates.
fn edit_networks(mut networks: Vec<IpNet>, edits: &[NetworkEdit]) -> Vec<IpNet> {
    for edit in edits {
        match *edit {
            NetworkEdit::Clear => networks.clear(),
            NetworkEdit::Add(p) => {
                let p = crate::route::normalize(p);
                if !networks.contains(&p) {
                    networks.push(p);
                }
            }
            NetworkEdit::Remove(p) => {
                let p = crate::route::normalize(p);
                networks.retain(|n| *n != p);
            }
        }
    }
    networks
}

/// What a request's prefixes mean for a peer: its own addresses, and its networks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    address: Option<std::net::Ipv4Addr>,
    address6: Option<std::net::Ipv6Addr>,
    networks: Vec<IpNet>,
}

impl Control {
    /// Carries out one peer of a UAPI `set`.
    pub(super) fn set_live(&mut self, req: SetPeer) -> Result<PeerSet, String> {
        let key = req.public_key;
        let existing = self.entries.get(&key).cloned();
        if req.remove {
            if existing.is_none() {
                return Ok(PeerSet::Absent);
            }
            self.remove_live(&key)?;
            return Ok(PeerSet::Removed);
        }
        let Some(entry) = existing else {
            if req.update_only {
                return Ok(PeerSet::Absent);
            }
            return self.create_live(req);
        };
        let networks = edit_networks(entry.allowed_ips().to_vec(), &req.allowed_ips);
        let split = self.split_addresses(&key, networks, Some(entry.assignment))?;
        let networks_changed = *entry.allowed_ips() != split.networks;
        self.take_networks(&key, split.networks);
        let psk_changed = req
            .psk
            .as_ref()
            .is_some_and(|psk| self.psks.get(&key) != Some(psk));
        if let (true, Some(mut config)) = (psk_changed, self.server.peer_config(&key).cloned()) {
            config.psk = req
                .psk
                .unwrap_or_else(crate::proto::keys::PresharedKey::zero);
            config.allowed_ips = entry.allowed_ips().to_vec();
            self.add_peer(config);
        }
        let warnings = self.routes.flush();
        // `wg syncconf` restates every peer: only a real change is worth a line.
        if networks_changed || psk_changed {
            tracing::info!(
                peer = %key,
                psk_changed,
                allowed_ips = ?entry.allowed_ips(),
                "peer changed (UAPI)"
            );
        }
        Ok(PeerSet::Changed { warnings })
    }

    /// Creates a peer for a UAPI `set`: its addresses from host prefixes in the client
    /// subnets or the pools, its networks taken from whoever had them.
    fn create_live(&mut self, req: SetPeer) -> Result<PeerSet, String> {
        let key = req.public_key;
        let networks = edit_networks(Vec::new(), &req.allowed_ips);
        let split = self.split_addresses(&key, networks, None)?;
        let mut added = self.add_live(AddPeer {
            public_key: key,
            psk: req.psk,
            address: split.address,
            address6: split.address6,
            allowed_ips: Vec::new(),
            suite: req.suite,
        })?;
        self.take_networks(&key, split.networks.clone());
        added.warnings.extend(self.routes.flush());
        added.config.allowed_ips = split.networks;
        Ok(PeerSet::Added(added))
    }

    /// Sorts `prefixes` into the peer's own addresses and its networks. Host prefixes inside
    /// the client subnets are addresses: `own` (an existing peer's) must match them, else
    /// they become the new peer's. Any other prefix must be one a peer may have.
    fn split_addresses(
        &self,
        key: &PublicKey,
        prefixes: Vec<IpNet>,
        own: Option<AddressAssignment>,
    ) -> Result<Split, String> {
        let Some(a) = self.addressing.as_ref() else {
            return Err("this server has no address pool".into());
        };
        let subnet = a.pool.network();
        let subnet6 = a.pool6.as_ref().map(|p| p.network());
        let mut split = Split::default();
        for prefix in prefixes {
            let address = match prefix {
                IpNet::V4(p) if p.prefix_len() == 32 && subnet.contains(&p.addr()) => {
                    Some(std::net::IpAddr::V4(p.addr()))
                }
                IpNet::V6(p)
                    if p.prefix_len() == 128 && subnet6.is_some_and(|s| s.contains(&p.addr())) =>
                {
                    Some(std::net::IpAddr::V6(p.addr()))
                }
                _ => None,
            };
            match (address, own) {
                (None, _) => {
                    if let Some(why) = crate::config::allowed_ip_problem(prefix, subnet, subnet6) {
                        return Err(format!("allowed_ip: {why}"));
                    }
                    split.networks.push(prefix);
                }
                (Some(ip), Some(own)) => {
                    let mine = match ip {
                        std::net::IpAddr::V4(v4) => v4 == own.ipv4,
                        std::net::IpAddr::V6(v6) => own.ipv6.is_some_and(|(o, _)| o == v6),
                    };
                    if !mine {
                        return Err(format!(
                            "allowed_ip: {prefix} is in the client subnet, but peer {key} has \
                             its own address there and it cannot change live; remove the peer \
                             and add it again with that address"
                        ));
                    }
                }
                (Some(std::net::IpAddr::V4(v4)), None) => {
                    if split.address.replace(v4).is_some_and(|old| old != v4) {
                        return Err(format!(
                            "allowed_ip: two addresses in the client subnet {subnet} for a new \
                             peer; give it one"
                        ));
                    }
                }
                (Some(std::net::IpAddr::V6(v6)), None) => {
                    if split.address6.replace(v6).is_some_and(|old| old != v6) {
                        return Err(
                            "allowed_ip: two addresses in the IPv6 client subnet for a new \
                             peer; give it one"
                                .into(),
                        );
                    }
                }
            }
        }
        Ok(split)
    }

    /// Makes `networks` exactly the networks of peer `key`, taking each from the peer that had
    /// it (WireGuard's `allowed_ip`). The new holder is published first, so a moved network
    /// is never unrouted; its kernel route stays (held by one peer, then by the other).
    fn take_networks(&mut self, key: &PublicKey, networks: Vec<IpNet>) {
        let Some(entry) = self.entries.get(key).cloned() else {
            return;
        };
        let mut losers: HashMap<PublicKey, Vec<IpNet>> = HashMap::new();
        {
            let table = self.table.snapshot();
            for prefix in &networks {
                if let Some(holder) = table.holder_of(*prefix) {
                    if holder.public_key != *key {
                        losers.entry(holder.public_key).or_default().push(*prefix);
                    }
                }
            }
        }
        self.release_routes(&entry);
        self.table.set_allowed_ips(&entry, networks);
        self.hold_routes(&entry);
        for (other, lost) in losers {
            let Some(other) = self.entries.get(&other).cloned() else {
                continue;
            };
            let kept = other
                .allowed_ips()
                .iter()
                .copied()
                .filter(|p| !lost.contains(p))
                .collect();
            self.release_routes(&other);
            self.table.set_allowed_ips(&other, kept);
            self.hold_routes(&other);
            tracing::info!(
                from = %other.public_key,
                to = %key,
                networks = ?lost,
                "networks moved to another peer (UAPI)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{control, holder, key, nets, with_kernel};
    use super::*;
    use crate::proto::keys::PresharedKey;
    use crate::proto::suite::Suite;

    fn set(i: u8, edits: &[NetworkEdit]) -> SetPeer {
        SetPeer {
            public_key: key(i),
            remove: false,
            update_only: false,
            psk: None,
            allowed_ips: edits.to_vec(),
            suite: Suite::WireGuard,
        }
    }

    fn add(prefix: &str) -> NetworkEdit {
        NetworkEdit::Add(prefix.parse().unwrap())
    }

    #[test]
    fn edits_apply_in_order() {
        let n = |p: &str| p.parse::<IpNet>().unwrap();
        let edited = edit_networks(
            vec![n("10.1.0.0/16")],
            &[
                add("10.2.0.0/16"),
                add("10.2.0.9/16"),
                NetworkEdit::Remove(n("10.1.0.0/16")),
            ],
        );
        assert_eq!(edited, vec![n("10.2.0.0/16")]);
        let edited = edit_networks(edited, &[NetworkEdit::Clear, add("10.3.0.0/16")]);
        assert_eq!(edited, vec![n("10.3.0.0/16")]);
    }

    #[test]
    fn a_set_creates_changes_moves_and_removes_like_wireguard() {
        let (mut c, table) = control();
        let kernel = with_kernel(&mut c);
        // Created with an address given as a host prefix, and a network.
        let PeerSet::Added(added) = c
            .set_live(set(1, &[add("10.66.0.50/32"), add("10.99.0.0/24")]))
            .unwrap()
        else {
            panic!("not added");
        };
        assert_eq!(added.config.assignment.ipv4.to_string(), "10.66.0.50");
        assert_eq!(added.config.allowed_ips, nets(&["10.99.0.0/24"]));
        assert_eq!(added.config.suite, Suite::WireGuard);
        assert_eq!(holder(&table, "10.99.0.7"), Some(key(1)));
        // Another peer takes the network: it moves, and its kernel route stays.
        let PeerSet::Added(_) = c.set_live(set(2, &[add("10.99.0.0/24")])).unwrap() else {
            panic!("not added");
        };
        assert_eq!(holder(&table, "10.99.0.7"), Some(key(2)));
        assert!(c.entries[&key(1)].allowed_ips().is_empty());
        assert_eq!(kernel.routes(), ["10.99.0.0/24"]);
        assert_eq!(kernel.deletes(), 0);
        // Changing peer 1: its own /32 is accepted and stays its address; a replace with a
        // new network; a new psk.
        let mut change = set(
            1,
            &[
                NetworkEdit::Clear,
                add("10.66.0.50/32"),
                add("10.98.0.0/24"),
            ],
        );
        change.psk = Some(PresharedKey::from_bytes([4; 32]));
        assert!(matches!(c.set_live(change), Ok(PeerSet::Changed { .. })));
        assert_eq!(holder(&table, "10.66.0.50"), Some(key(1)));
        assert_eq!(holder(&table, "10.98.0.1"), Some(key(1)));
        assert_eq!(c.psks[&key(1)], PresharedKey::from_bytes([4; 32]));
        assert_eq!(
            c.server.peer_config(&key(1)).map(|p| p.suite),
            Some(Suite::WireGuard)
        );
        // Its address cannot move; a network in the client subnet is refused.
        let err = c.set_live(set(1, &[add("10.66.0.51/32")])).unwrap_err();
        assert!(err.contains("cannot change live"), "{err}");
        assert!(c.set_live(set(1, &[add("10.66.0.0/25")])).is_err());
        // update_only does not create; remove of an unknown peer is no error.
        let mut only = set(3, &[]);
        only.update_only = true;
        assert!(matches!(c.set_live(only), Ok(PeerSet::Absent)));
        assert!(!c.entries.contains_key(&key(3)));
        let mut remove = set(3, &[]);
        remove.remove = true;
        assert!(matches!(c.set_live(remove), Ok(PeerSet::Absent)));
        let mut remove = set(2, &[]);
        remove.remove = true;
        assert!(matches!(c.set_live(remove), Ok(PeerSet::Removed)));
        assert_eq!(holder(&table, "10.99.0.7"), None);
        assert_eq!(kernel.routes(), ["10.98.0.0/24"]);
        let pool = &c.addressing.as_ref().unwrap().pool;
        assert!(pool.is_taken("10.66.0.50".parse().unwrap()));
    }
}
