//! `concentrator peer add|remove`: change peers live, without touching any other session.
//! Live changes are not written to the config file: add the peer there too, or the next
//! reload removes it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

/// `peer add`.
pub fn add(
    socket: Option<&Path>,
    public_key: &str,
    address: Option<Ipv4Addr>,
    address6: Option<Ipv6Addr>,
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
    let v = super::ctl::request(
        socket,
        &json!({
            "cmd": "peer_add",
            "public_key": public_key.trim(),
            "address": address.map(|a| a.to_string()),
            "address6": address6.map(|a| a.to_string()),
            "psk": psk,
        }),
    )?;
    let mut addr = v["address"].as_str().unwrap_or("").to_string();
    if let Some(a6) = v["address6"].as_str() {
        addr += &format!(", {a6}");
    }
    println!(
        "added peer {} with address {addr}",
        v["public_key"].as_str().unwrap_or("")
    );
    Ok(())
}

/// `peer remove`.
pub fn remove(socket: Option<&Path>, public_key: &str) -> Result<()> {
    let v = super::ctl::request(
        socket,
        &json!({"cmd": "peer_remove", "public_key": public_key.trim()}),
    )?;
    println!("removed peer {}", v["public_key"].as_str().unwrap_or(""));
    Ok(())
}
