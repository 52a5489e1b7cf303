//! `show`: the interface, workers, handshakes, latencies and a page of peers, as JSON.
//!
//! With 100 000 peers the answer stays small: a summary plus one page of peers (50 by default,
//! at most [`MAX_PAGE`]), sorted by virtual address so pages are stable.

use serde_json::{json, Value};

use super::Ops;
use crate::dataplane::stats::DropReason;
use crate::session_table::PeerEntry;

/// Peers in one page by default.
pub const DEFAULT_PAGE: usize = 50;
/// Most peers in one page.
pub const MAX_PAGE: usize = 10_000;

/// Latency percentiles of a histogram (nanoseconds).
pub fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50_ns": h.value_at_quantile(0.5),
        "p90_ns": h.value_at_quantile(0.9),
        "p99_ns": h.value_at_quantile(0.99),
        "p999_ns": h.value_at_quantile(0.999),
        "max_ns": h.max(),
    })
}

fn peer_json(p: &PeerEntry, now: crate::proto::time::Instant) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "public_key": p.public_key.to_string(),
        "endpoint": p.endpoint().map(|e| e.to_string()),
        "address": p.assignment.ipv4.to_string(),
        "address6": p.assignment.ipv6.map(|(a, _)| a.to_string()),
        "latest_handshake_secs_ago": p.session.last_handshake().map(|h| (now - h).as_secs()),
        "rx_bytes": p.rx_bytes.load(Relaxed),
        "tx_bytes": p.tx_bytes.load(Relaxed),
    })
}

/// The `show` answer: summary and peers `offset..offset + limit` in address order.
pub fn show(ops: &Ops, offset: usize, limit: usize) -> Result<Value, String> {
    let limit = limit.min(MAX_PAGE);
    let snap = ops.snapshot()?;
    let sessions = Ops::sessions(&snap);
    let mut peers = snap.peers;
    let total = peers.len();
    peers.sort_unstable_by_key(|p| (p.assignment.ipv4, p.public_key));
    let page: Vec<Value> = peers
        .iter()
        .skip(offset)
        .take(limit)
        .map(|p| peer_json(p, snap.now))
        .collect();

    let (counters, rates) = ops.counters_and_rates();
    let workers: Vec<Value> = counters
        .iter()
        .zip(&rates)
        .zip(&ops.latencies)
        .enumerate()
        .map(|(i, ((c, r), lat))| {
            let drops: serde_json::Map<String, Value> = DropReason::ALL
                .iter()
                .map(|d| (d.name().to_string(), json!(c.drops[*d as usize])))
                .collect();
            json!({
                "worker": i,
                "udp_rx_pps": r[0].round(),
                "udp_tx_pps": r[1].round(),
                "tun_rx_pps": r[2].round(),
                "tun_tx_pps": r[3].round(),
                "udp_rx_packets": c.udp_rx_packets,
                "udp_rx_bytes": c.udp_rx_bytes,
                "udp_tx_packets": c.udp_tx_packets,
                "udp_tx_bytes": c.udp_tx_bytes,
                "tun_rx_packets": c.tun_rx_packets,
                "tun_rx_bytes": c.tun_rx_bytes,
                "tun_tx_packets": c.tun_tx_packets,
                "tun_tx_bytes": c.tun_tx_bytes,
                "relayed_packets": c.relayed_packets,
                "drops_total": c.total_drops(),
                "drops": drops,
                "latency": percentiles(&lat.snapshot()),
            })
        })
        .collect();
    let (completed, cookies, failed, reasons) = ops.handshake_counts();
    let failed_by: serde_json::Map<String, Value> = reasons
        .iter()
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    Ok(json!({
        "ok": true,
        "interface": ops.interface,
        "public_key": ops.public_key.to_string(),
        "listen_port": ops.listen_port,
        "uptime_secs": (snap.now - ops.started).as_secs(),
        "workers": workers,
        "handshakes": {
            "completed": completed,
            "cookie_replies": cookies,
            "failed": failed,
            "failed_by_reason": failed_by,
            "latency": percentiles(&ops.handshakes.latency.snapshot()),
        },
        "peers_total": total,
        "sessions": sessions,
        "offset": offset,
        "limit": limit,
        "peers": page,
    }))
}
