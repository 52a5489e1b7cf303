//! The kernel routes for the peers' `allowed_ips`: `ip route add PREFIX dev <tun>` for every
//! network some peer holds, so that hosts behind the server (and the server itself) send
//! packets for a site into the TUN, where the workers pick the peer by longest prefix.
//!
//! The control thread owns the peers, so it owns this too. A route only says "into the TUN",
//! whichever peer holds the prefix, so a prefix that moves between peers in a reload keeps its
//! route; the routes are changed in one `ip -batch` when a peer command or a reload is done
//! ([`KernelRoutes::flush`]). A route the host already had (`File exists`) is reported and
//! left alone, never removed; ours are removed when no peer holds them any more and when the
//! control thread ends (the kernel would drop them with the TUN anyway).

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use crate::sys::link::{self, RouteChange, RouteOutcome};

/// Carries out route changes; the TUN in the server, a recorder in tests.
pub trait RouteInstaller: Send {
    /// Applies `changes` in order and says what became of each.
    fn apply(&mut self, changes: &[RouteChange]) -> Vec<RouteOutcome>;
}

/// Routes through a device with `ip`.
pub struct DeviceRoutes {
    /// The TUN's name.
    pub dev: String,
}

impl RouteInstaller for DeviceRoutes {
    fn apply(&mut self, changes: &[RouteChange]) -> Vec<RouteOutcome> {
        link::change_routes(&self.dev, changes).unwrap_or_else(|e| {
            let why = e.to_string();
            changes
                .iter()
                .map(|_| RouteOutcome::Failed(why.clone()))
                .collect()
        })
    }
}

/// The routes wanted (a count of the peers holding each prefix: one, except for a moment in a
/// reload) and the routes this server added.
#[derive(Default)]
pub struct KernelRoutes {
    installer: Option<Box<dyn RouteInstaller>>,
    holders: HashMap<IpNet, u32>,
    ours: HashSet<IpNet>,
    /// Prefixes whose holders changed since the last flush.
    dirty: Vec<IpNet>,
}

impl KernelRoutes {
    /// Routes applied through `installer`; without one ([`Default`]) nothing reaches the
    /// kernel (a control thread without a TUN, in tests).
    pub fn new(installer: Box<dyn RouteInstaller>) -> Self {
        KernelRoutes {
            installer: Some(installer),
            holders: HashMap::new(),
            ours: HashSet::new(),
            dirty: Vec::new(),
        }
    }

    /// A peer now holds `prefix`.
    pub fn hold(&mut self, prefix: IpNet) {
        *self.holders.entry(prefix).or_default() += 1;
        self.dirty.push(prefix);
    }

    /// A peer no longer holds `prefix`.
    pub fn release(&mut self, prefix: IpNet) {
        if let Some(n) = self.holders.get_mut(&prefix) {
            *n -= 1;
            if *n == 0 {
                self.holders.remove(&prefix);
            }
            self.dirty.push(prefix);
        }
    }

    /// Brings the kernel's routes in line with the held prefixes; returns a line for each
    /// route that could not be added or removed (also logged).
    pub fn flush(&mut self) -> Vec<String> {
        let mut seen = HashSet::new();
        let changes: Vec<RouteChange> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter(|p| seen.insert(*p))
            .filter_map(
                |p| match (self.holders.contains_key(&p), self.ours.contains(&p)) {
                    (true, false) => Some(RouteChange::Add(p)),
                    (false, true) => Some(RouteChange::Delete(p)),
                    _ => None,
                },
            )
            .collect();
        if changes.is_empty() {
            return Vec::new();
        }
        let Some(installer) = self.installer.as_mut() else {
            return Vec::new();
        };
        let outcomes = installer.apply(&changes);
        let mut problems = Vec::new();
        for (change, outcome) in changes.iter().zip(outcomes) {
            if let Some(problem) = self.note(*change, outcome) {
                tracing::warn!("{problem}");
                problems.push(problem);
            }
        }
        problems
    }

    /// Records what became of one change; a problem to report, if any.
    fn note(&mut self, change: RouteChange, outcome: RouteOutcome) -> Option<String> {
        match (change, outcome) {
            (RouteChange::Add(p), RouteOutcome::Done) => {
                self.ours.insert(p);
                None
            }
            (RouteChange::Add(p), RouteOutcome::AlreadyPresent) => Some(format!(
                "a route to {p} was already on this host (not added by concentrator): it stays \
                 as it is and is never removed by this server, and the host sends packets for \
                 {p} where it says, not necessarily into the tunnel; delete it \
                 (`ip route del {p}`) and reload to route {p} to its peer"
            )),
            (RouteChange::Add(p), RouteOutcome::Failed(why) | RouteOutcome::Absent(why)) => {
                Some(format!(
                    "could not add the route to {p} into the TUN ({why}): hosts behind this \
                     server will not reach that network"
                ))
            }
            (RouteChange::Delete(p), RouteOutcome::Done | RouteOutcome::Absent(_)) => {
                self.ours.remove(&p);
                None
            }
            (RouteChange::Delete(p), outcome) => {
                self.ours.remove(&p);
                Some(format!(
                    "could not remove the route to {p} from the TUN ({}); it goes with the TUN \
                     when the server stops",
                    outcome.describe()
                ))
            }
        }
    }

    /// The routes this server added and has not removed.
    pub fn ours(&self) -> impl Iterator<Item = &IpNet> {
        self.ours.iter()
    }
}

impl Drop for KernelRoutes {
    fn drop(&mut self) {
        self.holders.clear();
        self.dirty = self.ours.iter().copied().collect();
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the changes and answers with what the "host" has: `present` are routes the
    /// host had before (an add fails with `File exists`).
    #[derive(Clone, Default)]
    struct Recorder {
        log: Arc<Mutex<Vec<RouteChange>>>,
        present: Arc<Mutex<HashSet<IpNet>>>,
    }

    impl RouteInstaller for Recorder {
        fn apply(&mut self, changes: &[RouteChange]) -> Vec<RouteOutcome> {
            let mut present = self.present.lock().unwrap();
            self.log.lock().unwrap().extend_from_slice(changes);
            changes
                .iter()
                .map(|c| match *c {
                    RouteChange::Add(p) if !present.insert(p) => RouteOutcome::AlreadyPresent,
                    RouteChange::Delete(p) if !present.remove(&p) => {
                        RouteOutcome::Absent("No such process".into())
                    }
                    _ => RouteOutcome::Done,
                })
                .collect()
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn routes() -> (KernelRoutes, Recorder) {
        let rec = Recorder::default();
        (KernelRoutes::new(Box::new(rec.clone())), rec)
    }

    fn taken(rec: &Recorder) -> Vec<RouteChange> {
        std::mem::take(&mut *rec.log.lock().unwrap())
    }

    #[test]
    fn routes_follow_holders_and_a_moved_prefix_keeps_its_route() {
        let (mut r, rec) = routes();
        r.hold(net("10.99.0.0/24"));
        r.hold(net("fd99::/48"));
        assert!(r.flush().is_empty());
        assert_eq!(
            taken(&rec),
            vec![
                RouteChange::Add(net("10.99.0.0/24")),
                RouteChange::Add(net("fd99::/48"))
            ]
        );
        // A reload moves 10.99.0.0/24 from one peer to another, in either order: no change.
        r.hold(net("10.99.0.0/24"));
        r.release(net("10.99.0.0/24"));
        r.release(net("fd99::/48"));
        r.hold(net("fd99::/48"));
        assert!(r.flush().is_empty());
        assert!(taken(&rec).is_empty());
        r.release(net("10.99.0.0/24"));
        r.flush();
        assert_eq!(taken(&rec), vec![RouteChange::Delete(net("10.99.0.0/24"))]);
        assert_eq!(
            r.ours().copied().collect::<Vec<_>>(),
            vec![net("fd99::/48")]
        );
        drop(r);
        assert_eq!(taken(&rec), vec![RouteChange::Delete(net("fd99::/48"))]);
    }

    #[test]
    fn a_route_the_host_had_is_reported_and_never_removed() {
        let (mut r, rec) = routes();
        rec.present.lock().unwrap().insert(net("10.97.0.0/24"));
        r.hold(net("10.97.0.0/24"));
        let problems = r.flush();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("10.97.0.0/24") && problems[0].contains("already"),
            "{problems:?}"
        );
        assert_eq!(r.ours().count(), 0);
        r.release(net("10.97.0.0/24"));
        r.flush();
        drop(r);
        // Only the failed add was ever tried: no delete, now or at the end.
        assert_eq!(taken(&rec), vec![RouteChange::Add(net("10.97.0.0/24"))]);
        assert!(rec.present.lock().unwrap().contains(&net("10.97.0.0/24")));
    }

    #[test]
    fn without_an_installer_nothing_is_applied() {
        let mut r = KernelRoutes::default();
        r.hold(net("10.99.0.0/24"));
        assert!(r.flush().is_empty());
        assert_eq!(r.ours().count(), 0);
    }
}
