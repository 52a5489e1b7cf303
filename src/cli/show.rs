//! `concentrator show`: like `wg show`, from the server's control socket.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use concentrator::ops::protocol::{FleetReply, LatencySummary, Request, ShowReply};

/// Prints the server's state: summary plus `limit` peers from `offset`.
pub fn run(socket: Option<&Path>, json_out: bool, offset: usize, limit: usize) -> Result<()> {
    let reply: ShowReply = super::ctl::request(socket, &Request::Show { offset, limit })?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render(&reply));
    }
    Ok(())
}

/// Prints the fleet's live headends.
pub fn fleet(socket: Option<&Path>, json_out: bool) -> Result<()> {
    let reply: FleetReply = super::ctl::request(socket, &Request::Fleet)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    println!(
        "fleet {}: {} live headends",
        reply.fleet,
        reply.headends.len()
    );
    println!(
        "{:<20} {:<32} {:>8}  version",
        "name", "endpoint", "clients"
    );
    for h in &reply.headends {
        println!(
            "{:<20} {:<32} {:>8}  {}",
            h.name, h.endpoint, h.clients, h.version
        );
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

fn ns(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n}ns"),
        10_000..=9_999_999 => format!("{:.1}µs", n as f64 / 1e3),
        _ => format!("{:.1}ms", n as f64 / 1e6),
    }
}

fn latency(l: &LatencySummary) -> String {
    match l.quantiles {
        Some(q) if l.count > 0 => format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
            ns(q.p50_ns),
            ns(q.p90_ns),
            ns(q.p99_ns),
            ns(q.p999_ns),
            ns(q.max_ns),
            l.count
        ),
        _ => "no samples yet".into(),
    }
}

fn ago(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s} seconds ago"),
        (0, _) => format!("{m} minutes, {s} seconds ago"),
        _ => format!("{h} hours, {m} minutes ago"),
    }
}

fn nonzero(map: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The text form of a `show` answer.
pub fn render(v: &ShowReply) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "interface: {}", v.interface);
    let _ = writeln!(o, "  public key: {}", v.public_key);
    let _ = writeln!(o, "  listening port: {}", v.listen_port);
    let _ = writeln!(
        o,
        "  uptime: {}",
        ago(v.uptime_secs).trim_end_matches(" ago")
    );
    let _ = writeln!(
        o,
        "  peers: {} ({} with a session)",
        v.peers_total, v.sessions
    );
    for w in &v.workers {
        let _ = writeln!(
            o,
            "\nworker {}: in {} pkt/s, out {} pkt/s; tun in {} pkt/s, out {} pkt/s",
            w.worker, w.udp_rx_pps, w.udp_tx_pps, w.tun_rx_pps, w.tun_tx_pps
        );
        let _ = writeln!(
            o,
            "  total: {} received ({} packets), {} sent ({} packets in {} sends)",
            bytes(w.udp_rx_bytes),
            w.udp_rx_packets,
            bytes(w.udp_tx_bytes),
            w.udp_tx_packets,
            w.udp_tx_sends
        );
        let _ = writeln!(o, "  drops: {}{}", w.drops_total, nonzero(&w.drops));
        if w.ecn_alarms > 0 {
            let _ = writeln!(
                o,
                "  ecn alarms: {} (outer and inner ECN that RFC 6040 says no tunnel sends)",
                w.ecn_alarms
            );
        }
        let _ = writeln!(o, "  latency: {}", latency(&w.latency));
        let q = &w.queue;
        let _ = writeln!(
            o,
            "  queue: {} queued ({}), {} marked CE, {} dropped by AQM, {} by overflow; \
             delay mean {} p99 < {} max {}; backlog {} ({} packets), peak {}",
            q.queued_packets,
            bytes(q.queued_bytes),
            q.ce_marks,
            q.aqm_drops,
            q.overflow_drops,
            ns(q.delay_mean_ns),
            ns(q.delay_p99_ns),
            ns(q.delay_max_ns),
            bytes(q.backlog_bytes),
            q.backlog_packets,
            bytes(q.peak_backlog_bytes)
        );
    }
    if let Some(r) = &v.registry {
        let state = if r.connected {
            "connected"
        } else {
            "NOT CONNECTED to etcd (serving the last known registry)"
        };
        let age = r
            .age_secs
            .map(|a| format!("in sync {a:.1} s ago"))
            .unwrap_or_else(|| "never loaded".into());
        let _ = writeln!(
            o,
            "  registry: fleet {} as {}: {state}, revision {}, {} peers, {age}",
            r.fleet, r.name, r.revision, r.peers
        );
        if r.refusing_handshakes {
            let _ = writeln!(
                o,
                "  registry: older than stale_after: new handshakes are refused"
            );
        }
        if let (false, Some(e)) = (r.connected, &r.last_error) {
            let _ = writeln!(o, "  registry: last error: {e}");
        }
    }
    let h = &v.handshakes;
    let _ = writeln!(
        o,
        "\nhandshakes: {} completed, {} cookie replies, {} failed{}",
        h.completed,
        h.cookie_replies,
        h.failed,
        nonzero(&h.failed_by_reason)
    );
    let _ = writeln!(o, "  latency: {}", latency(&h.latency));
    for p in &v.peers {
        let _ = writeln!(o, "\npeer: {}", p.public_key);
        if !p.protocol.is_empty() {
            let _ = writeln!(o, "  protocol: {}", p.protocol);
        }
        if let Some(e) = &p.endpoint {
            let _ = writeln!(o, "  endpoint: {e}");
        }
        let mut addr = p.address.clone();
        if let Some(a6) = &p.address6 {
            addr += &format!(", {a6}");
        }
        let _ = writeln!(o, "  address: {addr}");
        if !p.allowed_ips.is_empty() {
            let _ = writeln!(o, "  allowed ips: {}", p.allowed_ips.join(", "));
        }
        // Said only when it is not the default, as in the config file.
        if p.protocol != concentrator::proto::suite::Suite::Native.name() {
            let _ = writeln!(o, "  protocol: {}", p.protocol);
        }
        if let Some(secs) = p.latest_handshake_secs_ago {
            let _ = writeln!(o, "  latest handshake: {}", ago(secs));
        }
        if p.rx_bytes + p.tx_bytes > 0 {
            let _ = writeln!(
                o,
                "  transfer: {} received, {} sent",
                bytes(p.rx_bytes),
                bytes(p.tx_bytes)
            );
        }
    }
    let (offset, total, shown) = (v.offset, v.peers_total, v.peers.len());
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
