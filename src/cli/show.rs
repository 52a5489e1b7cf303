//! `concentrator show`: like `wg show`, from the server's control socket.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

/// Prints the server's state: summary plus `limit` peers from `offset`.
pub fn run(socket: Option<&Path>, json_out: bool, offset: usize, limit: usize) -> Result<()> {
    let v = super::ctl::request(
        socket,
        &json!({"cmd": "show", "offset": offset, "limit": limit}),
    )?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(())
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn ns(v: &Value) -> String {
    let n = v.as_u64().unwrap_or(0);
    match n {
        0..=9_999 => format!("{n}ns"),
        10_000..=9_999_999 => format!("{:.1}µs", n as f64 / 1e3),
        _ => format!("{:.1}ms", n as f64 / 1e6),
    }
}

fn latency(l: &Value) -> String {
    if l["count"].as_u64().unwrap_or(0) == 0 {
        return "no samples yet".into();
    }
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
        ns(&l["p50_ns"]),
        ns(&l["p90_ns"]),
        ns(&l["p99_ns"]),
        ns(&l["p999_ns"]),
        ns(&l["max_ns"]),
        l["count"]
    )
}

fn ago(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s} seconds ago"),
        (0, _) => format!("{m} minutes, {s} seconds ago"),
        _ => format!("{h} hours, {m} minutes ago"),
    }
}

fn nonzero(map: &Value) -> String {
    let parts: Vec<String> = map
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The text form of a `show` answer.
pub fn render(v: &Value) -> String {
    let mut o = String::new();
    let s = |x: &Value| x.as_str().unwrap_or("").to_string();
    let _ = writeln!(o, "interface: {}", s(&v["interface"]));
    let _ = writeln!(o, "  public key: {}", s(&v["public_key"]));
    let _ = writeln!(o, "  listening port: {}", v["listen_port"]);
    let _ = writeln!(
        o,
        "  uptime: {}",
        ago(v["uptime_secs"].as_u64().unwrap_or(0)).trim_end_matches(" ago")
    );
    let _ = writeln!(
        o,
        "  peers: {} ({} with a session)",
        v["peers_total"], v["sessions"]
    );
    for w in v["workers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "\nworker {}: in {} pkt/s, out {} pkt/s; tun in {} pkt/s, out {} pkt/s",
            w["worker"], w["udp_rx_pps"], w["udp_tx_pps"], w["tun_rx_pps"], w["tun_tx_pps"]
        );
        let _ = writeln!(
            o,
            "  total: {} received ({} packets), {} sent ({} packets)",
            bytes(w["udp_rx_bytes"].as_u64().unwrap_or(0)),
            w["udp_rx_packets"],
            bytes(w["udp_tx_bytes"].as_u64().unwrap_or(0)),
            w["udp_tx_packets"]
        );
        let _ = writeln!(o, "  drops: {}{}", w["drops_total"], nonzero(&w["drops"]));
        let _ = writeln!(o, "  latency: {}", latency(&w["latency"]));
    }
    let h = &v["handshakes"];
    let _ = writeln!(
        o,
        "\nhandshakes: {} completed, {} cookie replies, {} failed{}",
        h["completed"],
        h["cookie_replies"],
        h["failed"],
        nonzero(&h["failed_by_reason"])
    );
    let _ = writeln!(o, "  latency: {}", latency(&h["latency"]));
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    for p in &peers {
        let _ = writeln!(o, "\npeer: {}", s(&p["public_key"]));
        if let Some(e) = p["endpoint"].as_str() {
            let _ = writeln!(o, "  endpoint: {e}");
        }
        let mut addr = s(&p["address"]);
        if let Some(a6) = p["address6"].as_str() {
            addr += &format!(", {a6}");
        }
        let _ = writeln!(o, "  address: {addr}");
        if let Some(secs) = p["latest_handshake_secs_ago"].as_u64() {
            let _ = writeln!(o, "  latest handshake: {}", ago(secs));
        }
        let (rx, tx) = (
            p["rx_bytes"].as_u64().unwrap_or(0),
            p["tx_bytes"].as_u64().unwrap_or(0),
        );
        if rx + tx > 0 {
            let _ = writeln!(o, "  transfer: {} received, {} sent", bytes(rx), bytes(tx));
        }
    }
    let (offset, total) = (
        v["offset"].as_u64().unwrap_or(0),
        v["peers_total"].as_u64().unwrap_or(0),
    );
    let shown = peers.len() as u64;
    if shown < total {
        let _ = writeln!(
            o,
            "\n(peers {}..{} of {total} by address; --offset {} --limit N for more)",
            offset + 1.min(shown),
            offset + shown,
            offset + shown
        );
    }
    o
}
