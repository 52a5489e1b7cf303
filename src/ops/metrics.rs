//! Prometheus metrics in the text exposition format, served by a tiny HTTP/1.1 server
//! (`GET /metrics`) on a thread of its own.
//!
//! Every series starts with `concentrator_`; counters end in `_total`; sizes are in bytes and
//! times in seconds. Per-peer series only with `metrics_per_peer = true`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Ops;
use crate::server::dataplane::stats::DropReason;

/// Upper bounds of the latency histograms' buckets, in nanoseconds: 1, 2.5 and 5 per decade
/// from 1 us to 10 s. Classic Prometheus buckets, because quantiles of per-worker summaries
/// cannot be added across workers or headends and buckets can (`sum by (le)`). The text
/// exposition format has no native histograms (only the protobuf format carries them).
const BUCKET_BOUNDS_NS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP concentrator_{name} {help}");
        let _ = writeln!(self.0, "# TYPE concentrator_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "concentrator_{name} {value}");
        } else {
            let _ = writeln!(self.0, "concentrator_{name}{{{labels}}} {value}");
        }
    }

    /// One sample of `name` per worker, path and direction: `of` gives a worker's values for
    /// udp rx, udp tx, tun rx and tun tx, in that order.
    fn per_path_and_direction(
        &mut self,
        name: &str,
        counters: &[crate::server::dataplane::stats::Counters],
        of: impl Fn(&crate::server::dataplane::stats::Counters) -> [u64; 4],
    ) {
        const PATHS_AND_DIRECTIONS: [(&str, &str); 4] =
            [("udp", "rx"), ("udp", "tx"), ("tun", "rx"), ("tun", "tx")];
        for (w, c) in counters.iter().enumerate() {
            for ((path, dir), v) in PATHS_AND_DIRECTIONS.into_iter().zip(of(c)) {
                let labels = format!("worker=\"{w}\",path=\"{path}\",direction=\"{dir}\"");
                self.sample(name, &labels, v);
            }
        }
    }

    /// `h` (nanoseconds) as a Prometheus histogram in seconds: cumulative `_bucket` series,
    /// `_sum` and `_count`. HdrHistogram keeps 3 significant digits, so a value within 0.1%
    /// of a bound may be counted on either side of it.
    fn histogram(&mut self, name: &str, labels: &str, h: &hdrhistogram::Histogram<u64>) {
        let sep = if labels.is_empty() { "" } else { "," };
        let bucket = format!("{name}_bucket");
        for bound in BUCKET_BOUNDS_NS {
            let le = bound as f64 / 1e9;
            let count = if h.is_empty() {
                0
            } else {
                h.count_between(0, bound)
            };
            self.sample(&bucket, &format!("{labels}{sep}le=\"{le}\""), count);
        }
        self.sample(&bucket, &format!("{labels}{sep}le=\"+Inf\""), h.len());
        let sum = h.mean() * h.len() as f64 / 1e9;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, h.len());
    }
}

/// The workers' egress queues (downloads): what went through, CoDel's marks and drops, the
/// overflow drops, the backlog, and the queue delay as a histogram over the queue's
/// power-of-two buckets.
fn queue_metrics(o: &mut Out, counters: &[crate::server::dataplane::stats::Counters]) {
    o.head(
        "egress_queue_packets_total",
        "counter",
        "TUN reads (packets or super-packets) queued in a worker's egress queue.",
    );
    for (w, c) in counters.iter().enumerate() {
        o.sample(
            "egress_queue_packets_total",
            &format!("worker=\"{w}\""),
            c.queue.enqueued_packets,
        );
    }
    o.head(
        "egress_queue_bytes_total",
        "counter",
        "Bytes queued in a worker's egress queue.",
    );
    for (w, c) in counters.iter().enumerate() {
        o.sample(
            "egress_queue_bytes_total",
            &format!("worker=\"{w}\""),
            c.queue.enqueued_bytes,
        );
    }
    o.head(
        "egress_queue_ce_marks_total",
        "counter",
        "Packets CoDel marked CE instead of dropping them (ECN-capable flows).",
    );
    for (w, c) in counters.iter().enumerate() {
        o.sample(
            "egress_queue_ce_marks_total",
            &format!("worker=\"{w}\""),
            c.queue.ce_marks,
        );
    }
    o.head(
        "egress_queue_drops_total",
        "counter",
        "Packets the egress queue dropped: aqm (CoDel: the queue delay stayed above target) \
         or overflow (the queue was full).",
    );
    for (w, c) in counters.iter().enumerate() {
        for (cause, v) in [
            ("aqm", c.queue.aqm_drops),
            ("overflow", c.queue.overflow_drops),
        ] {
            o.sample(
                "egress_queue_drops_total",
                &format!("worker=\"{w}\",cause=\"{cause}\""),
                v,
            );
        }
    }
    o.head(
        "egress_queue_backlog_bytes",
        "gauge",
        "Bytes in a worker's egress queue now.",
    );
    for (w, c) in counters.iter().enumerate() {
        o.sample(
            "egress_queue_backlog_bytes",
            &format!("worker=\"{w}\""),
            c.queue.backlog_bytes,
        );
    }
    o.head(
        "egress_queue_delay_seconds",
        "histogram",
        "Time packets spent in a worker's egress queue, enqueue to dequeue.",
    );
    for (w, c) in counters.iter().enumerate() {
        let labels = format!("worker=\"{w}\"");
        let s = &c.queue.sojourn;
        let mut cumulative = 0;
        // Bucket i holds delays below 2^i µs; the last one has no bound (+Inf below).
        for (i, n) in s.buckets.iter().enumerate().take(s.buckets.len() - 1) {
            cumulative += n;
            let le = (1u64 << i) as f64 / 1e6;
            o.sample(
                "egress_queue_delay_seconds_bucket",
                &format!("{labels},le=\"{le}\""),
                cumulative,
            );
        }
        o.sample(
            "egress_queue_delay_seconds_bucket",
            &format!("{labels},le=\"+Inf\""),
            s.count,
        );
        o.sample(
            "egress_queue_delay_seconds_sum",
            &labels,
            s.total_nanos as f64 / 1e9,
        );
        o.sample("egress_queue_delay_seconds_count", &labels, s.count);
    }
}

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics page.
pub fn render(ops: &Ops, per_peer: bool) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    o.head(
        "info",
        "gauge",
        "Always 1; labels name the interface and the server's public key.",
    );
    o.sample(
        "info",
        &format!(
            "interface=\"{}\",public_key=\"{}\",version=\"{}\"",
            esc(&ops.interface),
            ops.public_key,
            env!("CARGO_PKG_VERSION")
        ),
        1,
    );
    o.head(
        "uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    o.sample(
        "uptime_seconds",
        "",
        (crate::sys::clock::monotonic_now() - ops.started).as_secs_f64(),
    );

    let (counters, _) = ops.counters_and_rates();
    o.head(
        "packets_total",
        "counter",
        "Packets per worker, path (udp: the encrypted side; tun: the plain side) and direction.",
    );
    o.per_path_and_direction("packets_total", &counters, |c| {
        [
            c.udp_rx_packets,
            c.udp_tx_packets,
            c.tun_rx_packets,
            c.tun_tx_packets,
        ]
    });
    o.head(
        "bytes_total",
        "counter",
        "Bytes per worker, path and direction.",
    );
    o.per_path_and_direction("bytes_total", &counters, |c| {
        [
            c.udp_rx_bytes,
            c.udp_tx_bytes,
            c.tun_rx_bytes,
            c.tun_tx_bytes,
        ]
    });
    o.head(
        "udp_sends_total",
        "counter",
        "UDP send operations per worker: with UDP_SEGMENT one carries several of the datagrams \
         counted in packets_total{path=\"udp\",direction=\"tx\"}.",
    );
    for (w, c) in counters.iter().enumerate() {
        o.sample(
            "udp_sends_total",
            &format!("worker=\"{w}\""),
            c.udp_tx_sends,
        );
    }
    o.head(
        "ecn_alarms_total",
        "counter",
        "Packets per worker that arrived with an outer and inner ECN combination RFC 6040 \
         section 4.2 marks as an alarm (something on the path rewrites ECN).",
    );
    for (w, c) in counters.iter().enumerate() {
        o.sample("ecn_alarms_total", &format!("worker=\"{w}\""), c.ecn_alarms);
    }
    o.head(
        "relayed_packets_total",
        "counter",
        "Client-to-client packets relayed inside a worker.",
    );
    for (w, c) in counters.iter().enumerate() {
        o.sample(
            "relayed_packets_total",
            &format!("worker=\"{w}\""),
            c.relayed_packets,
        );
    }
    o.head(
        "drops_total",
        "counter",
        "Packets dropped, per worker and reason.",
    );
    for (w, c) in counters.iter().enumerate() {
        for d in DropReason::ALL {
            o.sample(
                "drops_total",
                &format!("worker=\"{w}\",reason=\"{}\"", d.name()),
                c.drops[d as usize],
            );
        }
    }
    queue_metrics(&mut o, &counters);
    o.head(
        "packet_latency_seconds",
        "histogram",
        "Per-packet processing latency in a worker: batch received to its sends submitted.",
    );
    // In a fleet the latency histograms carry the headend's name from the registry, so that
    // one query adds them up over every worker of every headend.
    let headend = ops
        .registry
        .as_ref()
        .map(|r| format!("headend=\"{}\"", esc(&r.report().name)));
    let with_headend = |labels: String| match (&headend, labels.is_empty()) {
        (Some(h), true) => h.clone(),
        (Some(h), false) => format!("{h},{labels}"),
        (None, _) => labels,
    };
    for (w, l) in ops.latencies.iter().enumerate() {
        o.histogram(
            "packet_latency_seconds",
            &with_headend(format!("worker=\"{w}\"")),
            &l.snapshot(),
        );
    }

    let counts = ops.handshake_counts();
    o.head(
        "handshakes_completed_total",
        "counter",
        "Handshakes completed.",
    );
    o.sample("handshakes_completed_total", "", counts.completed);
    o.head(
        "handshakes_failed_total",
        "counter",
        "Handshake initiations refused, by reason.",
    );
    for (reason, n) in counts.by_reason {
        o.sample(
            "handshakes_failed_total",
            &format!("reason=\"{}\"", reason.name()),
            n,
        );
    }
    o.head(
        "cookie_replies_total",
        "counter",
        "Cookie replies sent (under load).",
    );
    o.sample("cookie_replies_total", "", counts.cookie_replies);
    o.head(
        "handshake_latency_seconds",
        "histogram",
        "Handshake latency: initiation received by a worker to the reply sent.",
    );
    o.histogram(
        "handshake_latency_seconds",
        &with_headend(String::new()),
        &ops.handshakes.latency.snapshot(),
    );

    if let Some(r) = &ops.registry {
        registry_series(&mut o, &r.report(), &ops.handshakes);
    }
    match ops.snapshot() {
        Ok(snap) => {
            o.head("peers", "gauge", "Configured peers.");
            o.sample("peers", "", snap.peers.len());
            o.head("sessions", "gauge", "Peers with a usable session.");
            o.sample("sessions", "", Ops::sessions(&snap));
            if per_peer {
                peer_series(&mut o, &snap);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: no peer snapshot"),
    }
    o.0
}

/// The fleet registry's state: connected, revision, age, refusals.
fn registry_series(
    o: &mut Out,
    r: &super::registry::RegistryReport,
    handshakes: &crate::server::control::HandshakeStats,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let labels = format!("fleet=\"{}\",headend=\"{}\"", esc(&r.fleet), esc(&r.name));
    o.head(
        "registry_connected",
        "gauge",
        "1 while the fleet registry follows etcd, 0 while it serves its last known copy.",
    );
    o.sample("registry_connected", &labels, u8::from(r.connected));
    o.head(
        "registry_revision",
        "gauge",
        "The etcd revision of this headend's copy of the registry.",
    );
    o.sample("registry_revision", &labels, r.revision);
    o.head(
        "registry_age_seconds",
        "gauge",
        "Seconds since the registry copy was last known to be in sync (-1: never loaded).",
    );
    o.sample("registry_age_seconds", &labels, r.age_secs.unwrap_or(-1.0));
    o.head(
        "registry_refusing_handshakes",
        "gauge",
        "1 while new handshakes are refused because the registry is older than stale_after.",
    );
    o.sample(
        "registry_refusing_handshakes",
        &labels,
        u8::from(r.refusing_handshakes),
    );
    o.head(
        "registry_stale_refusals_total",
        "counter",
        "Initiations refused because the registry was older than stale_after.",
    );
    o.sample(
        "registry_stale_refusals_total",
        &labels,
        handshakes.refused_stale.load(Relaxed),
    );
}

fn peer_series(o: &mut Out, snap: &crate::server::control::command::Snapshot) {
    use std::sync::atomic::Ordering::Relaxed;
    let wall = crate::sys::clock::wall_clock().as_secs_f64();
    o.head(
        "peer_rx_bytes_total",
        "counter",
        "Inner bytes received from a peer.",
    );
    for p in &snap.peers {
        o.sample(
            "peer_rx_bytes_total",
            &format!("public_key=\"{}\"", p.public_key),
            p.rx_bytes.load(Relaxed),
        );
    }
    o.head(
        "peer_tx_bytes_total",
        "counter",
        "Inner bytes sent to a peer.",
    );
    for p in &snap.peers {
        o.sample(
            "peer_tx_bytes_total",
            &format!("public_key=\"{}\"", p.public_key),
            p.tx_bytes.load(Relaxed),
        );
    }
    o.head(
        "peer_last_handshake_timestamp_seconds",
        "gauge",
        "Unix time of a peer's latest handshake (0: never).",
    );
    for p in &snap.peers {
        let t = p
            .session
            .last_handshake()
            .map(|h| (wall - (snap.now - h).as_secs_f64()).max(0.0))
            .unwrap_or(0.0);
        o.sample(
            "peer_last_handshake_timestamp_seconds",
            &format!("public_key=\"{}\"", p.public_key),
            t,
        );
    }
}

/// Longest one metrics connection may take, from accept to the last byte of the answer: a
/// scraper sends its request at once and reads the page in milliseconds, so only a client that
/// dribbles its request (or reads the answer a byte at a time) meets this; it is cut off.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once, each on a thread of its own: a few scrapers with room to
/// spare. Past it, a new connection gets a 503 and is closed.
const MAX_CONNECTIONS: usize = 8;

/// Counts a connection being served until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `GET /metrics` on `listener` until `stop`: each connection on a thread of its own
/// (at most [`MAX_CONNECTIONS`]) and within [`CONNECTION_DEADLINE`], so that a slow client
/// cannot hold the endpoint.
pub fn serve(listener: TcpListener, ops: Arc<Ops>, per_peer: bool, stop: Arc<AtomicBool>) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "metrics listener unusable");
        return;
    }
    let busy = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, from)) => {
                if busy.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    tracing::debug!(%from, "metrics: too many connections; refused");
                    refuse(stream);
                    continue;
                }
                busy.fetch_add(1, Ordering::Relaxed);
                let slot = Slot(busy.clone());
                let ops = ops.clone();
                let deadline = Instant::now() + CONNECTION_DEADLINE;
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(e) = answer(stream, &ops, per_peer, deadline) {
                            tracing::debug!(%from, error = %e, "metrics request failed");
                        }
                    });
                // On failure the closure, and with it the slot and the stream, is dropped.
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "metrics: cannot start a connection thread");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Tells a connection over the limit to come back later, without waiting for it.
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

/// Time left until `deadline`, or a timeout error once it has passed.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "connection deadline passed")
        })
}

fn answer(
    mut stream: TcpStream,
    ops: &Ops,
    per_peer: bool,
    deadline: Instant,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        stream.set_read_timeout(Some(left(deadline)?))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(ops, per_peer),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    for mut part in [head.as_bytes(), body.as_bytes()] {
        while !part.is_empty() {
            stream.set_write_timeout(Some(left(deadline)?))?;
            match stream.write(part) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => part = &part[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{key_file, temp_dir};
    use crate::config::ServerConfig;

    /// The `_bucket` values of `name` in `text`, in order.
    fn buckets(text: &str, name: &str) -> Vec<(String, u64)> {
        let prefix = format!("concentrator_{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|rest| {
                let (le, value) = rest.split_once("\"} ").expect("a bucket line");
                (le.to_string(), value.parse().expect("a count"))
            })
            .collect()
    }

    #[test]
    fn latencies_are_cumulative_histogram_buckets_that_add_up_to_the_count() {
        let mut h = crate::server::latency::latency_histogram();
        h.record_n(700, 3).unwrap(); // under 1 us
        h.record_n(40_000, 2).unwrap(); // 25..50 us
        h.record_n(2_000_000_000, 1).unwrap(); // 1..2.5 s
        h.record_n(30_000_000_000, 1).unwrap(); // past the last bound: only in +Inf
        let mut o = Out(String::new());
        o.histogram("x_seconds", "", &h);
        let b = buckets(&o.0, "x_seconds");
        assert_eq!(b.len(), BUCKET_BOUNDS_NS.len() + 1);
        let at = |le: &str| b.iter().find(|(l, _)| l == le).unwrap().1;
        assert_eq!(at("0.000001"), 3);
        assert_eq!(at("0.000025"), 3);
        assert_eq!(at("0.00005"), 5);
        assert_eq!(at("1"), 5);
        assert_eq!(at("2.5"), 6);
        assert_eq!(at("10"), 6);
        assert_eq!(at("+Inf"), 7);
        assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative: {b:?}");
        assert!(o.0.contains("concentrator_x_seconds_count 7\n"), "{}", o.0);
        let empty = crate::server::latency::latency_histogram();
        let mut o = Out(String::new());
        o.histogram("y_seconds", "worker=\"0\"", &empty);
        assert!(o
            .0
            .contains("concentrator_y_seconds_bucket{worker=\"0\",le=\"+Inf\"} 0"));
    }

    fn ops() -> Arc<Ops> {
        let dir = temp_dir("metrics");
        key_file(&dir, "server.key", &[7; 32]);
        let text = "private_key_file = \"server.key\"\naddress = \"10.66.0.1/24\"\n";
        let (config, _) = ServerConfig::from_toml_str(text, &dir).unwrap();
        let (commands, _) = crossbeam_channel::bounded(1);
        Arc::new(Ops::new(
            "ctr-test".into(),
            dir.join("server.toml"),
            config,
            vec![Arc::default()],
            vec![Arc::default()],
            Arc::default(),
            commands,
        ))
    }

    /// Dribbles a never-ending request, a byte every 500 ms; returns how long after `connected`
    /// the server closed the connection (None: still open after 20 s).
    fn slow_loris(mut stream: TcpStream, connected: Instant) -> Option<Duration> {
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if stream.write_all(&[*byte]).is_err() {
                return Some(connected.elapsed());
            }
            match stream.read(&mut [0u8; 64]) {
                Ok(0) => return Some(connected.elapsed()),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                // An answer or a reset: the server is done with it.
                Ok(_) | Err(_) => return Some(connected.elapsed()),
            }
            if connected.elapsed() > Duration::from_secs(20) {
                return None;
            }
        }
        unreachable!("the request never ends")
    }

    #[test]
    fn a_slow_client_neither_blocks_a_scrape_nor_keeps_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (ops, stop) = (ops(), stop.clone());
            std::thread::spawn(move || serve(listener, ops, false, stop))
        };
        let connected = Instant::now();
        let loris = TcpStream::connect(addr).unwrap();
        let loris = std::thread::spawn(move || slow_loris(loris, connected));
        // The server is busy with the slow client by now.
        std::thread::sleep(Duration::from_millis(300));
        let mut scrape = TcpStream::connect(addr).unwrap();
        scrape
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        scrape.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        let read = scrape.read_to_string(&mut answer);
        assert!(
            read.is_ok()
                && answer.starts_with("HTTP/1.1 200 OK")
                && answer.contains("concentrator_uptime_seconds"),
            "scrape not answered within 3 s next to a slow client: {read:?} {answer:?}"
        );
        let closed = loris.join().unwrap();
        assert!(
            closed.is_some_and(|after| after <= Duration::from_secs(8)),
            "the slow client's connection was still open {closed:?} after it connected"
        );
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    }

    #[test]
    fn connections_past_the_limit_are_refused_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (ops, stop) = (ops(), stop.clone());
            std::thread::spawn(move || serve(listener, ops, false, stop))
        };
        // Connections that send nothing hold every place until the deadline.
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut answer = String::new();
        let read = extra.read_to_string(&mut answer);
        assert!(
            read.is_ok() && answer.starts_with("HTTP/1.1 503"),
            "{read:?} {answer:?}"
        );
        drop(held);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    }
}
