//! WireGuard's cross-platform userspace API (<https://www.wireguard.com/xplatform/>): the
//! `get=1` / `set=1` text protocol on `/var/run/wireguard/<interface>.sock`, so that stock
//! `wg show`, `wg showconf`, `wg set` and exporters built on them work against the server.
//!
//! [`protocol`] parses and formats the text without I/O; [`server`] serves the socket, one
//! thread per connection; this module carries a parsed operation out through the same
//! control-thread commands as `concentrator show` and `peer add/remove`.
//!
//! What the server does with each key (docs/operations.md has the operator's view):
//! - interface keys: `private_key` and `listen_port` equal to the running ones and `fwmark=0`
//!   are accepted (as `wg setconf`/`syncconf` send them); another key or port, a mark, or
//!   `replace_peers` are refused before any peer is touched (`-EINVAL` for the key and
//!   `replace_peers`, `-EADDRINUSE` for the port and the mark, the codes wireguard-go gives
//!   when it cannot apply them), with a log line saying why;
//! - a peer's `endpoint` is checked and ignored (the server learns endpoints from
//!   authenticated packets and never initiates), and so is `persistent_keepalive_interval`
//!   (clients keep their NAT mappings open; `get` reports 0);
//! - peers are applied in order; the first refused one ends the operation with `-EINVAL` and
//!   the peers before it stay applied, as in wireguard-go.

pub mod protocol;
pub mod server;

use std::sync::atomic::Ordering::Relaxed;

use zeroize::Zeroizing;

use self::protocol::{
    format_get, AllowedIpEdit, DeviceState, Errno, PeerChange, PeerState, SetRequest, UapiError,
};
use super::Ops;
use crate::proto::keys::PresharedKey;
use crate::proto::suite::Suite;
use crate::server::control::command::{Command, NetworkEdit, PeerSet, SetPeer};
use crate::sys::clock::wall_clock;

/// The `get` answer (without its status line): the interface, then every peer in address
/// order, each with its own addresses and then its networks as `allowed_ip`.
pub fn get(ops: &Ops) -> Result<Zeroizing<String>, UapiError> {
    let keyed = ops.keyed_snapshot().map_err(|e| UapiError {
        errno: Errno::Io,
        message: e,
    })?;
    let now = keyed.snapshot.now;
    let wall_now = wall_clock();
    let mut entries = keyed.snapshot.peers;
    entries.sort_unstable_by_key(|p| (p.assignment.ipv4, p.public_key));
    let peers: Vec<PeerState> = entries
        .iter()
        .map(|p| {
            let own = [
                Some(ipnet::IpNet::from(std::net::IpAddr::V4(p.assignment.ipv4))),
                p.assignment
                    .ipv6
                    .map(|(a, _)| ipnet::IpNet::from(std::net::IpAddr::V6(a))),
            ];
            PeerState {
                public_key: p.public_key,
                preshared_key: keyed
                    .psks
                    .get(&p.public_key)
                    .cloned()
                    .unwrap_or_else(PresharedKey::zero),
                endpoint: p.endpoint(),
                // Monotonic age of the handshake, taken from the wall clock now.
                last_handshake: p
                    .session
                    .last_handshake()
                    .and_then(|h| wall_now.checked_sub(now - h)),
                rx_bytes: p.rx_bytes.load(Relaxed),
                tx_bytes: p.tx_bytes.load(Relaxed),
                persistent_keepalive_interval: 0,
                allowed_ips: own
                    .into_iter()
                    .flatten()
                    .chain(p.allowed_ips().iter().copied())
                    .collect(),
            }
        })
        .collect();
    let device = DeviceState {
        private_key: ops.running.private_key.to_bytes(),
        listen_port: ops.listen_port,
        fwmark: 0,
    };
    Ok(format_get(&device, &peers))
}

/// Carries out a `set`: the interface keys are checked first (a refused one changes nothing),
/// then the peers are applied in order.
pub fn set(ops: &Ops, request: SetRequest) -> Result<(), UapiError> {
    check_interface(ops, &request)?;
    for peer in request.peers {
        set_peer(ops, peer)?;
    }
    Ok(())
}

/// Refuses what the running server cannot change. The messages never hold a key.
fn check_interface(ops: &Ops, request: &SetRequest) -> Result<(), UapiError> {
    if let Some(key) = &request.private_key {
        if *key.0 != *ops.running.private_key.to_bytes() {
            return Err(UapiError::invalid(
                "private_key: the server's key cannot change while it runs; change \
                 private_key_file and restart the server",
            ));
        }
    }
    if let Some(port) = request.listen_port {
        if port != ops.listen_port {
            return Err(UapiError {
                errno: Errno::PortInUse,
                message: format!(
                    "listen_port: the server listens on {} and cannot move to {port} while \
                     it runs; change listen_port in the configuration and restart",
                    ops.listen_port
                ),
            });
        }
    }
    if request.fwmark.is_some_and(|mark| mark != 0) {
        return Err(UapiError {
            errno: Errno::PortInUse,
            message: "fwmark: the server does not mark its packets; mark them with an \
                      nftables rule on its port instead"
                .into(),
        });
    }
    if request.replace_peers {
        return Err(UapiError::invalid(
            "replace_peers: the server does not replace all its peers through the UAPI (`wg \
             setconf`); use `wg syncconf`, `wg set`, or edit the configuration and \
             `concentrator reload`",
        ));
    }
    Ok(())
}

/// Applies one peer's lines through the control thread.
fn set_peer(ops: &Ops, peer: PeerChange) -> Result<(), UapiError> {
    let key = peer.public_key;
    if key == ops.public_key {
        // The reference ignores a peer with the interface's own key.
        return Ok(());
    }
    if let Some(endpoint) = peer.endpoint {
        tracing::debug!(peer = %key, %endpoint, "UAPI endpoint ignored: the server learns endpoints from authenticated packets");
    }
    let req = SetPeer {
        public_key: key,
        remove: peer.remove,
        update_only: peer.update_only,
        psk: peer.preshared_key,
        allowed_ips: peer
            .allowed_ips
            .iter()
            .map(|edit| match *edit {
                AllowedIpEdit::Clear => NetworkEdit::Clear,
                AllowedIpEdit::Add(p) => NetworkEdit::Add(p),
                AllowedIpEdit::Remove(p) => NetworkEdit::Remove(p),
            })
            .collect(),
        suite: Suite::WireGuard,
    };
    let outcome = ops
        .ask(|tx| Command::SetPeer(req, tx))
        .map_err(|e| UapiError {
            errno: Errno::Io,
            message: e,
        })?
        .map_err(UapiError::invalid)?;
    let warnings = match outcome {
        PeerSet::Added(added) => added.warnings,
        PeerSet::Changed { warnings } => warnings,
        PeerSet::Removed | PeerSet::Absent => Vec::new(),
    };
    for w in warnings {
        tracing::warn!(peer = %key, "{w}");
    }
    Ok(())
}
