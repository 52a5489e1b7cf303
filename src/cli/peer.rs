//! `concentrator peer add|remove`: change peers live, without touching any other session.
//! Live changes are not written to the config file: add the peer there too, or the next
//! reload removes it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context, Result};
use ipnet::IpNet;

use concentrator::config::ServerConfig;
use concentrator::ops::protocol::{PeerAdded, PeerRemoved, Request};
use concentrator::ops::registry::{import_peers, ImportReport};

/// `peer add`.
pub fn add(
    socket: Option<&Path>,
    public_key: &str,
    (address, address6): (Option<Ipv4Addr>, Option<Ipv6Addr>),
    allowed_ips: Vec<IpNet>,
    psk_file: Option<&Path>,
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
