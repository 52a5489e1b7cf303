//! `show`: the interface, workers, handshakes, latencies and a page of peers.
//!
//! With 100 000 peers the answer stays small: a summary plus one page of peers (50 by default,
//! at most [`MAX_PAGE`]), sorted by virtual address so pages are stable.

use super::protocol::{
    HandshakeReport, LatencySummary, PeerReport, QueueReport, ShowReply, WorkerReport, MAX_PAGE,
};
use super::Ops;
use crate::server::dataplane::stats::DropReason;
use crate::server::session_table::PeerEntry;

fn peer_report(p: &PeerEntry, now: crate::proto::time::Instant) -> PeerReport {
    use std::sync::atomic::Ordering::Relaxed;
    PeerReport {
        public_key: p.public_key.to_string(),
        protocol: p.suite.name().to_string(),
        endpoint: p.endpoint().map(|e| e.to_string()),
        address: p.assignment.ipv4.to_string(),
        address6: p.assignment.ipv6.map(|(a, _)| a.to_string()),
        allowed_ips: p.allowed_ips().iter().map(|n| n.to_string()).collect(),
        latest_handshake_secs_ago: p.session.last_handshake().map(|h| (now - h).as_secs()),
        rx_bytes: p.rx_bytes.load(Relaxed),
        tx_bytes: p.tx_bytes.load(Relaxed),
    }
}

/// The `show` answer: summary and peers `offset..offset + limit` in address order.
pub fn show(ops: &Ops, offset: usize, limit: usize) -> Result<ShowReply, String> {
    let limit = limit.min(MAX_PAGE);
    let snap = ops.snapshot()?;
    let sessions = Ops::sessions(&snap);
    let mut peers = snap.peers;
    let total = peers.len();
    peers.sort_unstable_by_key(|p| (p.assignment.ipv4, p.public_key));
    let page = peers
        .iter()
        .skip(offset)
        .take(limit)
        .map(|p| peer_report(p, snap.now))
        .collect();

    let (counters, rates) = ops.counters_and_rates();
    let workers = counters
        .iter()
        .zip(&rates)
        .zip(&ops.latencies)
        .enumerate()
        .map(|(i, ((c, r), lat))| WorkerReport {
            worker: i,
            udp_rx_pps: r[0].round(),
            udp_tx_pps: r[1].round(),
            tun_rx_pps: r[2].round(),
            tun_tx_pps: r[3].round(),
            udp_rx_packets: c.udp_rx_packets,
            udp_rx_bytes: c.udp_rx_bytes,
            udp_tx_packets: c.udp_tx_packets,
            udp_tx_bytes: c.udp_tx_bytes,
            udp_tx_sends: c.udp_tx_sends,
            ecn_alarms: c.ecn_alarms,
            tun_rx_packets: c.tun_rx_packets,
            tun_rx_bytes: c.tun_rx_bytes,
            tun_tx_packets: c.tun_tx_packets,
            tun_tx_bytes: c.tun_tx_bytes,
            relayed_packets: c.relayed_packets,
            drops_total: c.total_drops(),
            drops: DropReason::ALL
                .iter()
                .map(|d| (d.name().to_string(), c.drops[*d as usize]))
                .collect(),
            latency: LatencySummary::of(&lat.snapshot()),
            queue: queue_report(&c.queue),
        })
        .collect();
    let counts = ops.handshake_counts();
    Ok(ShowReply {
        interface: ops.interface.clone(),
        public_key: ops.public_key.to_string(),
        listen_port: ops.listen_port,
        uptime_secs: (snap.now - ops.started).as_secs(),
        workers,
        handshakes: HandshakeReport {
            completed: counts.completed,
            cookie_replies: counts.cookie_replies,
            failed: counts.failed,
            failed_by_reason: counts
                .by_reason
                .iter()
                .map(|(reason, n)| (reason.name().to_string(), *n))
                .collect(),
            latency: LatencySummary::of(&ops.handshakes.latency.snapshot()),
        },
        peers_total: total,
        sessions,
        offset,
        limit,
        peers: page,
        registry: ops.registry.as_ref().map(|r| r.report()),
    })
}

/// The egress queue's counters as `show` reports them.
fn queue_report(q: &crate::tunnel::fq::FqStats) -> QueueReport {
    QueueReport {
        queued_packets: q.enqueued_packets,
        queued_bytes: q.enqueued_bytes,
        sent_packets: q.dequeued_packets,
        ce_marks: q.ce_marks,
        aqm_drops: q.aqm_drops,
        overflow_drops: q.overflow_drops,
        backlog_packets: q.backlog_packets,
        backlog_bytes: q.backlog_bytes,
        peak_backlog_bytes: q.peak_backlog_bytes,
        delay_mean_ns: q.sojourn.mean().as_nanos() as u64,
        delay_p99_ns: q.sojourn.quantile_upper_bound(0.99).as_nanos() as u64,
        delay_max_ns: q.sojourn.max_nanos,
    }
}
