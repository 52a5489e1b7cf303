//! Shorthands for how the lab tests begin: the skip check and the lab in one step, and the
//! lab shapes that several test files use.

use super::{lab_or_skip, Lab, LabConfig};

/// A new lab from `cfg` when lab tests can run here ([`lab_or_skip`]); otherwise `None`, after
/// the skip line for `test`.
pub fn new_lab_or_skip(test: &str, cfg: LabConfig) -> Option<Lab> {
    lab_or_skip(test).then(|| Lab::new(cfg))
}

impl LabConfig {
    /// `clients` clients masqueraded behind the server (`nat`): the backend has no route back
    /// to the client subnet.
    pub fn masqueraded(clients: usize) -> LabConfig {
        LabConfig {
            clients,
            nat: true,
            backend_route: false,
            ..Default::default()
        }
    }

    /// Two clients; the second one's key is not in the server's config (a peer added live, or
    /// a stranger).
    pub fn second_client_unknown() -> LabConfig {
        LabConfig {
            clients: 2,
            unknown_clients: vec![1],
            ..Default::default()
        }
    }

    /// `clients` clients, IPv6 off in the namespaces: no IPv6 noise, so drops count exactly.
    pub fn without_ipv6(clients: usize) -> LabConfig {
        LabConfig {
            clients,
            ipv6: false,
            ..Default::default()
        }
    }
}
