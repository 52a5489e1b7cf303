//! `concentrator peer add|remove`: change peers live, without touching any other session.
//! Live changes are not written to the config file until `concentrator save`; the next
//! reload removes a peer that is not there.
//!
//! `concentrator peer config`: a wg-quick client config for a peer, as text or QR code.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

use concentrator::config::ServerConfig;
use concentrator::ops::protocol::{PeerAdded, PeerDetail, PeerRemoved, PeersReply, Request};
use concentrator::ops::registry::{import_peers, ImportReport};
use concentrator::proto::keys::{PublicKey, StaticSecret};
use concentrator::proto::suite::Suite;

use super::args::PeerProtocol;

/// The keepalive of generated client configs: what the WireGuard apps suggest for a client
/// behind NAT (wg(8), PersistentKeepalive: "a sensible interval ... is 25").
const CLIENT_KEEPALIVE_SECS: u16 = 25;
/// Stands in for the client's private key, which the server never has.
const PRIVATE_KEY_PLACEHOLDER: &str = "<REPLACE WITH THE CLIENT'S PRIVATE KEY>";

/// `peer add`.
pub fn add(
    socket: Option<&Path>,
    public_key: &str,
    (address, address6): (Option<Ipv4Addr>, Option<Ipv6Addr>),
    allowed_ips: Vec<IpNet>,
    psk_file: Option<&Path>,
    protocol: PeerProtocol,
) -> Result<()> {
    let psk = match psk_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let added: PeerAdded = super::ctl::request(
        socket,
        &Request::PeerAdd {
            public_key: public_key.trim().to_string(),
            address,
            address6,
            psk,
            allowed_ips,
            // Left out for the default, so that a server without suites understands it.
            protocol: (protocol != PeerProtocol::Native).then(|| protocol.name().to_string()),
        },
    )?;
    let mut addr = added.address;
    if let Some(a6) = added.address6 {
        addr += &format!(", {a6}");
    }
    if added.allowed_ips.is_empty() {
        println!("added peer {} with address {addr}", added.public_key);
    } else {
        println!(
            "added peer {} with address {addr} and allowed ips {}",
            added.public_key,
            added.allowed_ips.join(", ")
        );
    }
    for w in &added.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// `peer remove`.
pub fn remove(socket: Option<&Path>, public_key: &str) -> Result<()> {
    let removed: PeerRemoved = super::ctl::request(
        socket,
        &Request::PeerRemove {
            public_key: public_key.trim().to_string(),
        },
    )?;
    println!("removed peer {}", removed.public_key);
    Ok(())
}

/// `peer config`: prints the wg-quick config (or its QR code) for the peer `public_key`.
pub fn config(
    socket: Option<&Path>,
    public_key: &str,
    qr: bool,
    private_key_file: Option<&Path>,
) -> Result<()> {
    let key: PublicKey = public_key
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{public_key:?} is not a public key: {e}"))?;
    let reply: PeersReply = super::ctl::request(
        socket,
        &Request::Peers {
            public_key: Some(key.to_string()),
        },
    )?;
    let peer = reply
        .peers
        .iter()
        .find(|p| p.public_key == key.to_string())
        .with_context(|| format!("the server did not return peer {key}"))?;
    let private_key = match private_key_file {
        Some(f) => Some(client_private_key(f, &key)?),
        None => None,
    };
    let text = wg_quick_config(&reply, peer, private_key.as_ref().map(|k| k.as_str()))?;
    if peer.protocol != Suite::WireGuard.name() {
        eprintln!(
            "warning: peer {key} speaks the {} suite: a stock WireGuard client reaches it only \
             once the peer has `protocol = \"wireguard\"` (peer add --protocol wireguard)",
            peer.protocol
        );
    }
    if private_key.is_none() {
        eprintln!(
            "note: PrivateKey is a placeholder (the server never has the client's key): replace \
             it, or give --private-key-file"
        );
    }
    if qr {
        println!("{}", qr_code(&text)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// Reads the client's private key from `file` and checks that it belongs to `peer`.
fn client_private_key(file: &Path, peer: &PublicKey) -> Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
    );
    let secret = StaticSecret::from_base64(text.trim())
        .map_err(|e| anyhow::anyhow!("{}: not a private key: {e}", file.display()))?;
    let public = secret.public_key();
    if public != *peer {
        bail!(
            "the private key in {} is not peer {peer}'s (its public key is {public}); give the \
             file of that peer's client",
            file.display()
        );
    }
    Ok(secret.to_base64())
}

/// The wg-quick config of `peer`: its addresses, the DNS servers it is pushed, the server's key
/// and public endpoint, AllowedIPs from the routes it is pushed (else the client subnets).
pub fn wg_quick_config(
    reply: &PeersReply,
    peer: &PeerDetail,
    private_key: Option<&str>,
) -> Result<String> {
    let Some(endpoint) = &reply.public_endpoint else {
        bail!(
            "the server has no public_endpoint, so a client config would not say where to \
             connect: add `public_endpoint = \"vpn.example.com:51820\"` (the name or address \
             and port clients reach the server at) at the top of {}, then `concentrator reload`",
            reply.config_file.display()
        );
    };
    let mut t = String::new();
    let _ = writeln!(t, "# wg-quick config for peer {}", peer.public_key);
    let _ = writeln!(t, "[Interface]");
    match private_key {
        Some(k) => {
            let _ = writeln!(t, "PrivateKey = {k}");
        }
        None => {
            let _ = writeln!(
                t,
                "# The server never has this: put the client's private key here."
            );
            let _ = writeln!(t, "PrivateKey = {PRIVATE_KEY_PLACEHOLDER}");
        }
    }
    let mut addresses = vec![format!("{}/32", peer.address)];
    if let Some(a6) = peer.address6 {
        addresses.push(format!("{a6}/128"));
    }
    let _ = writeln!(t, "Address = {}", addresses.join(", "));
    if !peer.push_dns.is_empty() {
        let dns: Vec<String> = peer.push_dns.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(t, "DNS = {}", dns.join(", "));
    }
    let _ = writeln!(t, "\n[Peer]");
    let _ = writeln!(t, "PublicKey = {}", reply.public_key);
    if let Some(psk) = &peer.psk {
        let _ = writeln!(t, "PresharedKey = {psk}");
    }
    let _ = writeln!(t, "Endpoint = {endpoint}");
    let routes = if peer.push_routes.is_empty() {
        &reply.subnets
    } else {
        &peer.push_routes
    };
    let routes: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
    let _ = writeln!(t, "AllowedIPs = {}", routes.join(", "));
    let _ = writeln!(t, "PersistentKeepalive = {CLIENT_KEEPALIVE_SECS}");
    Ok(t)
}

/// `text` as a QR code of Unicode half blocks (two modules per character cell), drawn light on
/// dark: a light module is a block, so on the usual dark terminal the code reads as dark on
/// light, with its quiet zone, the way phone scanners expect it.
pub fn qr_code(text: &str) -> Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code =
        qrcode::QrCode::new(text.as_bytes()).context("the config is too long for a QR code")?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// `registry import FILE`: the file's peers, with the addresses it gives them, into etcd
/// through the running headend (which seals their pre-shared keys).
pub fn import(socket: Option<&Path>, file: &Path) -> Result<()> {
    let (config, warnings) =
        ServerConfig::load_for_import(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let peers = import_peers(&config);
    if peers.is_empty() {
        anyhow::bail!(
            "{} has no [[peer]] entries: nothing to import",
            file.display()
        );
    }
    let report: ImportReport = super::ctl::request(socket, &Request::RegistryImport { peers })?;
    println!("imported {} peers", report.imported);
    for s in &report.skipped {
        eprintln!("skipped {s}");
    }
    if report.imported > 0 {
        println!(
            "now delete the [[peer]] entries from {} (the headend refuses them beside [registry])",
            file.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(endpoint: Option<&str>) -> (PeersReply, PeerDetail) {
        let peer = PeerDetail {
            public_key: "cGVlcg==".into(),
            address: "10.66.0.7".parse().unwrap(),
            address6: Some("fd66::7".parse().unwrap()),
            allowed_ips: Vec::new(),
            protocol: "wireguard".into(),
            psk: Some("cHNr".into()),
            push_routes: Vec::new(),
            push_dns: vec!["10.1.0.53".parse().unwrap()],
        };
        let reply = PeersReply {
            public_key: "c2VydmVy".into(),
            config_file: "/etc/concentrator/ctr.toml".into(),
            public_endpoint: endpoint.map(str::to_string),
            subnets: vec![
                "10.66.0.0/16".parse().unwrap(),
                "fd66::/64".parse().unwrap(),
            ],
            peers: vec![peer.clone()],
        };
        (reply, peer)
    }

    #[test]
    fn the_client_config_has_every_field_wg_quick_needs() {
        let (r, p) = reply(Some("vpn.example.com:51820"));
        let text = wg_quick_config(&r, &p, None).unwrap();
        for line in [
            "[Interface]",
            &format!("PrivateKey = {PRIVATE_KEY_PLACEHOLDER}"),
            "Address = 10.66.0.7/32, fd66::7/128",
            "DNS = 10.1.0.53",
            "[Peer]",
            "PublicKey = c2VydmVy",
            "PresharedKey = cHNr",
            "Endpoint = vpn.example.com:51820",
            "AllowedIPs = 10.66.0.0/16, fd66::/64",
            "PersistentKeepalive = 25",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        // With pushed routes, those are what the client routes into the tunnel.
        let mut p = p;
        p.push_routes = vec!["10.1.0.0/24".parse().unwrap()];
        p.psk = None;
        let text = wg_quick_config(&r, &p, Some("a2V5")).unwrap();
        assert!(text.contains("\nAllowedIPs = 10.1.0.0/24\n"), "{text}");
        assert!(text.contains("\nPrivateKey = a2V5\n"), "{text}");
        assert!(
            !text.contains("PresharedKey") && !text.contains("REPLACE"),
            "{text}"
        );
    }

    #[test]
    fn without_public_endpoint_it_says_what_to_set() {
        let (r, p) = reply(None);
        let err = wg_quick_config(&r, &p, None).unwrap_err().to_string();
        assert!(
            err.contains("public_endpoint = \"vpn.example.com:51820\"")
                && err.contains("/etc/concentrator/ctr.toml"),
            "{err}"
        );
    }
}
