//! The headend's copy of the fleet's registry, kept from a full listing and the watch events
//! after it, and what the control thread should run from it. Pure: no etcd, no threads.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::layout::{Key, Layout};
use super::record::PeerRecord;
use super::seal;
use crate::config::{AddressPool, AddressPool6};
use crate::proto::keys::{PresharedKey, PublicKey};
use crate::proto::server::PeerConfig;
use crate::proto::suite::Suite;
use crate::proto::wire::AddressAssignment;
use crate::server::control::command::Addressing;

/// One change seen in etcd.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A key written, with its value.
    Put(&'a [u8], &'a [u8]),
    /// A key deleted.
    Delete(&'a [u8]),
}

/// The registry as last seen.
#[derive(Debug, Default, Clone)]
pub struct Mirror {
    /// The etcd revision this copy is at.
    pub revision: i64,
    peers: BTreeMap<PublicKey, PeerRecord>,
    leases4: HashMap<Ipv4Addr, PublicKey>,
    leases6: HashMap<Ipv6Addr, PublicKey>,
}

impl Mirror {
    /// An empty registry at `revision`.
    pub fn at(revision: i64) -> Self {
        Mirror {
            revision,
            ..Mirror::default()
        }
    }

    /// Applies one change; returns whether peers or leases changed (headends do not count).
    pub fn apply(&mut self, layout: &Layout, change: Change<'_>) -> bool {
        let (key, value) = match change {
            Change::Put(k, v) => (k, Some(v)),
            Change::Delete(k) => (k, None),
        };
        match (layout.parse(key), value) {
            (Some(Key::Peer(peer)), Some(v)) => match serde_json::from_slice::<PeerRecord>(v) {
                Ok(record) => self.peers.insert(peer, record.clone()) != Some(record),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "registry: unreadable peer record ignored");
                    self.peers.remove(&peer).is_some()
                }
            },
            (Some(Key::Peer(peer)), None) => self.peers.remove(&peer).is_some(),
            (Some(Key::Lease4(ip)), Some(v)) => match owner(v) {
                Some(o) => self.leases4.insert(ip, o) != Some(o),
                None => self.leases4.remove(&ip).is_some(),
            },
            (Some(Key::Lease4(ip)), None) => self.leases4.remove(&ip).is_some(),
            (Some(Key::Lease6(ip)), Some(v)) => match owner(v) {
                Some(o) => self.leases6.insert(ip, o) != Some(o),
                None => self.leases6.remove(&ip).is_some(),
            },
            (Some(Key::Lease6(ip)), None) => self.leases6.remove(&ip).is_some(),
            (Some(Key::Headend(_)), _) | (None, _) => false,
        }
    }

    /// How many peers the registry has.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// One peer's record.
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerRecord> {
        self.peers.get(key)
    }

    /// Who holds the IPv4 address `ip`.
    pub fn owner4(&self, ip: Ipv4Addr) -> Option<PublicKey> {
        self.leases4.get(&ip).copied()
    }

    /// The addresses `key` holds leases on.
    pub fn addresses_of(&self, key: &PublicKey) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        (
            self.leases4
                .iter()
                .find(|(_, o)| *o == key)
                .map(|(ip, _)| *ip),
            self.leases6
                .iter()
                .find(|(_, o)| *o == key)
                .map(|(ip, _)| *ip),
        )
    }

    /// The peer whose `allowed_ips` hold exactly `prefix` (normalized), if any.
    pub fn holder_of(&self, prefix: IpNet) -> Option<PublicKey> {
        self.peers
            .iter()
            .find(|(_, r)| r.allowed_ips.iter().any(|p| p.trunc() == prefix))
            .map(|(k, _)| *k)
    }

    /// `pool` and `pool6` with every leased address taken, to pick free ones from.
    pub fn pools(
        &self,
        pool: &AddressPool,
        pool6: Option<&AddressPool6>,
    ) -> (AddressPool, Option<AddressPool6>) {
        let mut pool = pool.clone();
        for ip in self.leases4.keys() {
            pool.reserve(*ip);
        }
        let pool6 = pool6.map(|p| {
            let mut p = p.clone();
            for ip in self.leases6.keys() {
                p.reserve(*ip);
            }
            p
        });
        (pool, pool6)
    }

    /// The peers the control thread should run, and why the others cannot run (one line each):
    /// a peer needs its IPv4 lease, a PSK that opens with `fleet_key`, a known protocol.
    pub fn desired(
        &self,
        fleet_key: &[u8; 32],
        addressing: &Addressing,
    ) -> (Vec<PeerConfig>, Vec<String>) {
        let mut v4: HashMap<PublicKey, Ipv4Addr> = HashMap::with_capacity(self.leases4.len());
        for (ip, owner) in &self.leases4 {
            v4.insert(*owner, *ip);
        }
        let mut v6: HashMap<PublicKey, Ipv6Addr> = HashMap::with_capacity(self.leases6.len());
        for (ip, owner) in &self.leases6 {
            v6.insert(*owner, *ip);
        }
        let (mut specs, mut problems) = (Vec::with_capacity(self.peers.len()), Vec::new());
        for (key, record) in &self.peers {
            let Some(&ipv4) = v4.get(key) else {
                problems.push(format!(
                    "peer {key}: no IPv4 lease in the registry; skipped"
                ));
                continue;
            };
            let psk = match &record.psk {
                None => PresharedKey::zero(),
                Some(sealed) => match seal::open(fleet_key, key, sealed) {
                    Ok(psk) => psk,
                    Err(e) => {
                        problems.push(format!("peer {key}: {e}; skipped"));
                        continue;
                    }
                },
            };
            let Some(suite) = Suite::from_name(&record.protocol) else {
                problems.push(format!(
                    "peer {key}: unknown protocol {:?}; skipped",
                    record.protocol
                ));
                continue;
            };
            specs.push(PeerConfig {
                public_key: *key,
                psk,
                assignment: AddressAssignment {
                    ipv4,
                    ipv4_prefix: addressing.prefix,
                    ipv6: v6.get(key).copied().zip(addressing.prefix6),
                    mtu: addressing.mtu,
                },
                allowed_ips: record.allowed_ips.clone(),
                suite,
            });
        }
        (specs, problems)
    }
}

/// The owner of a lease: a base64 public key.
fn owner(value: &[u8]) -> Option<PublicKey> {
    let text = std::str::from_utf8(value).ok()?;
    PublicKey::from_base64(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::control::command::PushPolicy;
    use crate::server::control::reload;

    fn addressing() -> Addressing {
        let net: ipnet::Ipv4Net = "10.66.0.1/16".parse().unwrap();
        Addressing {
            pool: AddressPool::new(net),
            pool6: None,
            prefix: 16,
            prefix6: None,
            mtu: 1420,
            push: PushPolicy::default(),
            public_endpoint: None,
        }
    }

    fn record(allowed: &[&str], psk: Option<String>) -> Vec<u8> {
        serde_json::to_vec(&PeerRecord {
            protocol: "native".into(),
            address: None,
            address6: None,
            allowed_ips: allowed.iter().map(|p| p.parse().unwrap()).collect(),
            psk,
        })
        .unwrap()
    }

    fn put_peer(m: &mut Mirror, l: &Layout, i: u8, host: u8, allowed: &[&str]) {
        let key = PublicKey::from([i; 32]);
        m.apply(
            l,
            Change::Put(l.peer(&key).as_bytes(), &record(allowed, None)),
        );
        let ip = Ipv4Addr::new(10, 66, 0, host);
        m.apply(
            l,
            Change::Put(l.lease4(ip).as_bytes(), key.to_string().as_bytes()),
        );
    }

    fn current(specs: &[PeerConfig]) -> HashMap<PublicKey, PeerConfig> {
        specs.iter().map(|s| (s.public_key, s.clone())).collect()
    }

    #[test]
    fn watch_changes_become_the_smallest_plan() {
        let l = Layout::new("eu");
        let fleet = [5u8; 32];
        let mut m = Mirror::at(10);
        put_peer(&mut m, &l, 1, 2, &[]);
        put_peer(&mut m, &l, 2, 3, &[]);
        put_peer(&mut m, &l, 3, 4, &[]);
        let (before, problems) = m.desired(&fleet, &addressing());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(before.len(), 3);
        assert_eq!(before[0].assignment.ipv4, Ipv4Addr::new(10, 66, 0, 2));

        // A peer added elsewhere, one removed (record and lease), one given a network; a
        // headend coming and going changes nothing.
        put_peer(&mut m, &l, 4, 5, &[]);
        let gone = PublicKey::from([3; 32]);
        assert!(m.apply(&l, Change::Delete(l.peer(&gone).as_bytes())));
        assert!(m.apply(
            &l,
            Change::Delete(l.lease4(Ipv4Addr::new(10, 66, 0, 4)).as_bytes())
        ));
        let two = PublicKey::from([2; 32]);
        assert!(m.apply(
            &l,
            Change::Put(l.peer(&two).as_bytes(), &record(&["10.99.0.0/24"], None))
        ));
        assert!(!m.apply(&l, Change::Put(l.headend("b").as_bytes(), b"{}")));
        // The same value again is no change.
        assert!(!m.apply(
            &l,
            Change::Put(l.peer(&two).as_bytes(), &record(&["10.99.0.0/24"], None))
        ));

        let (after, _) = m.desired(&fleet, &addressing());
        let plan = reload::plan(&current(&before), after);
        assert_eq!(plan.unchanged, 1, "peer 1's session is left alone");
        assert_eq!(plan.remove, vec![gone]);
        assert_eq!(plan.add.len(), 1);
        assert_eq!(plan.add[0].public_key, PublicKey::from([4; 32]));
        assert_eq!(plan.change.len(), 1);
        assert!(plan.change[0].1.allowed_ips && !plan.change[0].1.address);
        assert_eq!(m.holder_of("10.99.0.0/24".parse().unwrap()), Some(two));
        assert_eq!(
            m.addresses_of(&two),
            (Some(Ipv4Addr::new(10, 66, 0, 3)), None)
        );
    }

    #[test]
    fn peers_that_cannot_run_are_named_and_skipped() {
        let l = Layout::new("eu");
        let fleet = [5u8; 32];
        let mut m = Mirror::default();
        // No lease yet.
        let lonely = PublicKey::from([1; 32]);
        m.apply(
            &l,
            Change::Put(l.peer(&lonely).as_bytes(), &record(&[], None)),
        );
        // A PSK sealed with another fleet key.
        let other = PublicKey::from([2; 32]);
        let sealed = seal::seal(
            &[6; 32],
            &other,
            &PresharedKey::from_bytes([1; 32]),
            [0; 12],
        );
        put_peer(&mut m, &l, 2, 3, &[]);
        m.apply(
            &l,
            Change::Put(l.peer(&other).as_bytes(), &record(&[], Some(sealed))),
        );
        // A good one with a PSK.
        let good = PublicKey::from([3; 32]);
        put_peer(&mut m, &l, 3, 4, &[]);
        let sealed = seal::seal(&fleet, &good, &PresharedKey::from_bytes([9; 32]), [1; 12]);
        m.apply(
            &l,
            Change::Put(l.peer(&good).as_bytes(), &record(&[], Some(sealed))),
        );
        // Junk is ignored, not fatal.
        m.apply(&l, Change::Put(b"/concentrator/eu/peers/zzz", b"{"));
        m.apply(
            &l,
            Change::Put(l.lease4(Ipv4Addr::new(10, 66, 0, 9)).as_bytes(), b"nobody"),
        );

        let (specs, problems) = m.desired(&fleet, &addressing());
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].public_key, good);
        assert_eq!(specs[0].psk.as_bytes(), &[9; 32]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("no IPv4 lease")));
        assert!(problems.iter().any(|p| p.contains("fleet key")));
        // Leased addresses are taken in the pools handed out from.
        let (pool, _) = m.pools(&addressing().pool, None);
        assert!(pool.is_taken(Ipv4Addr::new(10, 66, 0, 4)));
        assert!(!pool.is_taken(Ipv4Addr::new(10, 66, 0, 9)));
        assert_eq!(m.owner4(Ipv4Addr::new(10, 66, 0, 4)), Some(good));
    }
}
