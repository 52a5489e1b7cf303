//! A rekey under load with a stock WireGuard client: a session kept busy past
//! REKEY_AFTER_TIME (120 s) loses, duplicates and reorders nothing across the new handshake.
//!
//! A stock client (wireguard-go, boringtun-cli) connects to the server in a lab; then
//! sequence-numbered UDP datagrams flow at a steady rate both ways at once (client → backend
//! and backend → client) for longer than REKEY_AFTER_TIME, so the client starts a new
//! handshake in the middle of the stream. The receivers count every sequence number: the
//! links are veth pairs in network namespaces, which lose nothing, so any missing or
//! duplicate datagram is the tunnel's. `wg show dump` (latest handshake) and the server's
//! `show --json` (`latest_handshake_secs_ago`) must both show the new handshake.
//!
//! Asserted: no duplicate; nothing missing from 3 s before to 10 s after the new handshake;
//! and nothing missing at all, except datagrams the kernel counted as dropped in an overflowing
//! queue (the server's TUN, a socket buffer) away from the rekey: on a loaded machine a starved
//! process misses some, which says nothing about the rekey (printed as a `NOTE`).
//!
//! Long (about 2.5 min each), so skipped unless `HOSTILE_REKEY=1` (`scripts/hostile.sh` sets
//! it). `HOSTILE_REKEY_SECS` (default 150) and `HOSTILE_REKEY_RATE` (datagrams per second
//! each way, default 1000) size it. Needs root, `wg` and the client program; prints
//! `SKIPPED <name>: ...` otherwise.

mod common;
#[path = "common/hostile.rs"]
mod hostile_tools;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::stock::{StockEndpoint, StockKind};
use common::*;
use hostile_tools::{drop_summary, env_or, in_netns};

/// The stock client's tunnel address: fixed in its peer entry (the handshake carries none).
const WG_CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 200);
/// The UDP port both receivers listen on.
const STREAM_PORT: u16 = 7300;
/// Bytes per datagram: the sequence number (8 bytes, big endian) and padding.
const DATAGRAM_LEN: usize = 64;
/// The WireGuard whitepaper's REKEY_AFTER_TIME (section 6.1, also
/// `concentrator::proto::constants::REKEY_AFTER_TIME`): the stream must outlast it.
const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// The stretch of the run, around the first new handshake as the server saw it (whole
/// seconds), in which no datagram may be missing: from before the client's initiation until
/// the server has moved to the new keypair and the old one has drained.
const REKEY_WINDOW_BEFORE: f64 = 3.0;
const REKEY_WINDOW_AFTER: f64 = 10.0;
/// How long a receiver waits for stragglers after its sender stopped.
const DRAIN: Duration = Duration::from_secs(2);

/// What a receiver counted.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    duplicates: u64,
    /// Datagrams that arrived after a higher sequence number.
    reordered: u64,
    /// The first few of them: (sequence number, the highest seen before it).
    reordered_first: Vec<(u64, u64)>,
    /// Sequence numbers never received, as ranges `start..end`.
    missing: Vec<(u64, u64)>,
}

/// What a sender did.
#[derive(Debug, Default)]
struct Sent {
    sent: u64,
    send_errors: u64,
}

/// Sends `rate` datagrams per second to `to` for `duration`, numbered from 0, from a thread in
/// namespace `ns` bound to `from` (so the tunnel carries them).
fn sender(
    ns: &str,
    from: Ipv4Addr,
    to: SocketAddrV4,
    rate: u64,
    duration: Duration,
) -> JoinHandle<Sent> {
    in_netns(ns, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(from, 0))
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        let total = rate * duration.as_secs();
        let mut out = Sent::default();
        let mut buf = [0u8; DATAGRAM_LEN];
        let start = Instant::now();
        let mut seq = 0;
        while seq < total {
            // Paced in small bursts: whatever is due by now, then a millisecond's sleep.
            let due = (start.elapsed().as_nanos() as u64 * rate / 1_000_000_000).min(total);
            while seq < due {
                buf[..8].copy_from_slice(&seq.to_be_bytes());
                match sock.send_to(&buf, to) {
                    Ok(_) => out.sent += 1,
                    Err(_) => out.send_errors += 1,
                }
                seq += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    })
}

/// Binds `at` in namespace `ns`, reports that it is listening on `ready`, then counts
/// sequence numbers until `stop` is set and nothing came for [`DRAIN`], or at the latest
/// after `lifetime` (should the test fail before it sets `stop`).
fn receiver(
    ns: &str,
    at: SocketAddrV4,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<()>,
    lifetime: Duration,
) -> JoinHandle<Tally> {
    in_netns(ns, move || {
        let sock = UdpSocket::bind(at).unwrap_or_else(|e| panic!("bind {at}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        ready.send(()).unwrap();
        let born = Instant::now();
        let mut seen: Vec<bool> = Vec::new();
        let mut tally = Tally::default();
        let mut highest: Option<u64> = None;
        let mut buf = [0u8; 2048];
        let mut last_rx = Instant::now();
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if n >= 8 => {
                    last_rx = Instant::now();
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                    let i = seq as usize;
                    if i >= seen.len() {
                        seen.resize(i + 1, false);
                    }
                    if seen[i] {
                        tally.duplicates += 1;
                        continue;
                    }
                    seen[i] = true;
                    tally.received += 1;
                    if let Some(h) = highest.filter(|h| seq < *h) {
                        tally.reordered += 1;
                        if tally.reordered_first.len() < 10 {
                            tally.reordered_first.push((seq, h));
                        }
                    }
                    highest = Some(highest.map_or(seq, |h| h.max(seq)));
                }
                Ok(_) => {}
                Err(_) => {
                    let drained = stop.load(Ordering::Relaxed) && last_rx.elapsed() >= DRAIN;
                    if drained || born.elapsed() > lifetime {
                        break;
                    }
                }
            }
        }
        let mut i = 0;
        while i < seen.len() {
            if !seen[i] {
                let start = i;
                while i < seen.len() && !seen[i] {
                    i += 1;
                }
                tally.missing.push((start as u64, i as u64));
            } else {
                i += 1;
            }
        }
        tally
    })
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The server's `latest_handshake_secs_ago` for the peer `public_key`.
fn server_handshake_age(lab: &Lab, public_key: &str) -> Option<u64> {
    let show = lab.show_json();
    show["peers"]
        .as_array()?
        .iter()
        .find(|p| p["public_key"] == public_key)?["latest_handshake_secs_ago"]
        .as_u64()
}

/// The namespace's UDP `RcvbufErrors` (/proc/net/snmp): datagrams a full socket buffer
/// dropped, to tell a slow receiver from a loss in the tunnel.
fn udp_rcvbuf_errors(lab: &Lab, ns: &str) -> u64 {
    let snmp = lab.exec_ok(ns, &["cat", "/proc/net/snmp"], Duration::from_secs(10));
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no Udp RcvbufErrors in /proc/net/snmp of {ns}:\n{snmp}"))
}

/// Packets the kernel dropped on TUN `dev` in `ns` on their way to the process that reads it
/// (the reader was too slow: the queue was full).
fn tun_tx_dropped(lab: &Lab, ns: &str, dev: &str) -> u64 {
    let out = lab.ip(ns, &["-s", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j prints JSON");
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stats64.tx.dropped in {out}"))
}

/// One line on a direction's counts, with the missing ranges placed in time (seconds into
/// the run they were sent at), to set them against the rekey.
fn summary(direction: &str, sent: &Sent, tally: &Tally, rate: u64) -> String {
    let gaps: Vec<String> = tally
        .missing
        .iter()
        .take(20)
        .map(|(a, b)| format!("{a}..{b} (at {:.2} s)", *a as f64 / rate as f64))
        .collect();
    let late: Vec<String> = tally
        .reordered_first
        .iter()
        .map(|(seq, after)| {
            format!(
                "{seq} after {after} (at {:.2} s)",
                *seq as f64 / rate as f64
            )
        })
        .collect();
    format!(
        "{direction}: sent {}, received {}, lost {}, duplicates {}, reordered {}{}, send errors {}{}",
        sent.sent,
        tally.received,
        sent.sent.saturating_sub(tally.received),
        tally.duplicates,
        tally.reordered,
        if late.is_empty() {
            String::new()
        } else {
            format!(" (first: {})", late.join(", "))
        },
        sent.send_errors,
        if gaps.is_empty() {
            String::new()
        } else {
            format!(", missing {}", gaps.join(", "))
        }
    )
}

fn rekey_under_load(kind: StockKind, name: &str) {
    if std::env::var("HOSTILE_REKEY").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED {name}: takes about 2.5 min; set HOSTILE_REKEY=1 to run it (scripts/hostile.sh does)"
        );
        return;
    }
    if !lab_or_skip(name) || !tools_or_skip(name, &[kind.program(), "wg"]) {
        return;
    }
    let secs = env_or("HOSTILE_REKEY_SECS", 150);
    let rate = env_or("HOSTILE_REKEY_RATE", 1000);
    assert!(
        Duration::from_secs(secs) > REKEY_AFTER_TIME,
        "HOSTILE_REKEY_SECS={secs} must exceed REKEY_AFTER_TIME ({REKEY_AFTER_TIME:?})"
    );

    // Two workers by default: the datagrams of one session may be opened and sealed on
    // either, so the promotion of the new keypair is exercised across workers.
    let workers = env_or("HOSTILE_REKEY_WORKERS", 2) as usize;
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        workers,
        ..Default::default()
    });
    let config = lab.server_config_path();
    let mut text = std::fs::read_to_string(&config).unwrap();
    // The client's peer is the last in the file.
    text += &format!("protocol = \"wireguard\"\naddress = \"{WG_CLIENT_ADDRESS}\"\n");
    std::fs::write(&config, text).unwrap();
    lab.start_server();

    let ns = lab.client_ns[0].clone();
    let backend = lab.backend_ns.clone();
    let client_public = lab.client_pubkeys[0].clone();
    let server_public = lab.server_pubkey.clone();
    let ep = StockEndpoint::start(kind, &ns, lab.dir());
    let key = lab.dir().join("c1.key").to_string_lossy().into_owned();
    ep.wg_set(&[
        "private-key",
        &key,
        "peer",
        &server_public,
        "endpoint",
        &format!("{SERVER_UNDERLAY}:{PORT}"),
        "allowed-ips",
        &format!("{CLIENT_SUBNET},10.1.0.0/24"),
    ]);
    ep.up(&[&format!("{WG_CLIENT_ADDRESS}/16")], 1420);
    ep.route("10.1.0.0/24");
    // The first pings start the handshake (the client queues them meanwhile).
    let _ = lab.ping(&ns, BACKEND, 3, &[]);
    lab.ping_ok(&ns, BACKEND, 3);
    ep.wait_handshake(&server_public, Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let backend_at = SocketAddrV4::new(BACKEND.parse().unwrap(), STREAM_PORT);
    let client_at = SocketAddrV4::new(WG_CLIENT_ADDRESS, STREAM_PORT);
    let duration = Duration::from_secs(secs);
    let lifetime = duration + Duration::from_secs(60);
    let at_backend = receiver(
        &backend,
        backend_at,
        stop.clone(),
        ready_tx.clone(),
        lifetime,
    );
    let at_client = receiver(&ns, client_at, stop.clone(), ready_tx, lifetime);
    for _ in 0..2 {
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("both receivers listening");
    }
    let start = Instant::now();
    let upstream = sender(&ns, WG_CLIENT_ADDRESS, backend_at, rate, duration);
    let downstream = sender(
        &backend,
        BACKEND.parse().unwrap(),
        client_at,
        rate,
        duration,
    );

    // Once a second, the age of the latest handshake as the client and as the server see it:
    // an age that goes down is a new handshake, made `at - age` seconds into the run.
    let mut client_handshakes: Vec<u64> = Vec::new(); // seconds into the run
    let mut server_handshakes: Vec<u64> = Vec::new(); // seconds into the run
    let mut last_client_age: Option<u64> = None;
    let mut client_ages: Vec<Option<u64>> = Vec::new();
    let mut last_server_age: Option<u64> = None;
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1));
        let at = start.elapsed().as_secs();
        let client_age = ep
            .dump()
            .peer(&server_public)
            .and_then(|p| p.latest_handshake)
            .map(|h| kind.handshake_age(h, epoch_secs()));
        if let (Some(before), Some(now)) = (last_client_age, client_age) {
            if now < before {
                client_handshakes.push(at.saturating_sub(now));
            }
        }
        // boringtun-cli reports no handshake for a moment right after a rekey: compare with
        // the last age it reported.
        last_client_age = client_age.or(last_client_age);
        client_ages.push(client_age);
        let server_age = server_handshake_age(&lab, &client_public);
        if let (Some(before), Some(now)) = (last_server_age, server_age) {
            if now < before {
                server_handshakes.push(at.saturating_sub(now));
            }
        }
        last_server_age = server_age.or(last_server_age);
    }
    let upstream = upstream.join().expect("client sender");
    let downstream = downstream.join().expect("backend sender");
    stop.store(true, Ordering::Relaxed);
    let at_backend = at_backend.join().expect("backend receiver");
    let at_client = at_client.join().expect("client receiver");

    eprintln!(
        "FIGURE rekey {}: {secs} s at {rate}/s each way, {workers} server worker(s); new handshakes \
         {client_handshakes:?} s into the run (client's view), {server_handshakes:?} s (server's view)",
        kind.program(),
    );
    let results = [
        ("client -> backend", &upstream, &at_backend, &backend),
        ("backend -> client", &downstream, &at_client, &ns),
    ];
    let lines: Vec<String> = results
        .iter()
        .map(|(direction, sent, tally, receiver_ns)| {
            format!(
                "{}; receiver's UDP RcvbufErrors {}",
                summary(direction, sent, tally, rate),
                udp_rcvbuf_errors(&lab, receiver_ns)
            )
        })
        .collect();
    for line in &lines {
        eprintln!("FIGURE rekey {}: {line}", kind.program());
    }
    // Where the kernel drops datagrams on their way when a process is too slow to read them:
    // the TUN queues (the server's, the stock client's), and full socket buffers (the
    // server's, the stock client's and the receivers').
    let tun_dropped =
        tun_tx_dropped(&lab, &lab.server_ns, SERVER_TUN) + tun_tx_dropped(&lab, &ns, &ep.iface);
    let rcvbuf_dropped: u64 = [&lab.server_ns, &ns, &backend]
        .iter()
        .map(|n| udp_rcvbuf_errors(&lab, n))
        .sum();
    let queue_drops = tun_dropped + rcvbuf_dropped;
    let server_side = format!(
        "kernel queue overflows: TUNs {tun_dropped}, UDP socket buffers {rcvbuf_dropped}; \
         server drops: {}",
        drop_summary(&lab.show_json())
    );
    eprintln!("FIGURE rekey {}: {server_side}", kind.program());
    assert!(
        !client_handshakes.is_empty(),
        "{} made no new handshake in {secs} s; its handshake ages, once a second: {client_ages:?}\n{}",
        kind.program(),
        ep.log()
    );
    assert!(
        !server_handshakes.is_empty(),
        "the server's latest_handshake_secs_ago never went down in {secs} s: {}",
        lab.show_json()
    );
    // The rekey as the server saw it: the first new handshake, in seconds into the run. No
    // datagram sent from shortly before it until well after it may be missing.
    let rekey_at = server_handshakes[0] as f64;
    let window = (
        rekey_at - REKEY_WINDOW_BEFORE,
        rekey_at + REKEY_WINDOW_AFTER,
    );
    let mut lost_total = 0;
    for ((_, sent, tally, _), line) in results.iter().zip(&lines) {
        assert_eq!(sent.send_errors, 0, "{line}");
        assert_eq!(tally.duplicates, 0, "duplicates: {line}");
        let around_rekey: Vec<&(u64, u64)> = tally
            .missing
            .iter()
            .filter(|(a, b)| {
                let (from, to) = (*a as f64 / rate as f64, *b as f64 / rate as f64);
                from < window.1 && to > window.0
            })
            .collect();
        assert!(
            around_rekey.is_empty(),
            "datagrams lost around the rekey ({:.0}..{:.0} s): {around_rekey:?}; {line}; {server_side}",
            window.0,
            window.1
        );
        lost_total += sent.sent - tally.received;
    }
    // A veth link loses nothing: every datagram sent must arrive. The one exception is a
    // process starved of CPU on a loaded machine (its queue overflows, and the kernel counts
    // it); a loss the kernel did not count happened in a tunnel endpoint.
    if lost_total > 0 {
        assert!(
            lost_total <= queue_drops,
            "{lost_total} datagrams lost, of which only {queue_drops} in kernel queues: {lines:?}; {server_side}"
        );
        eprintln!(
            "NOTE rekey {}: {lost_total} datagrams lost away from the rekey, all in kernel queues \
             that overflowed (a process starved of CPU; load average {})",
            kind.program(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
    }
    drop(ep);
    let log = lab.stop_server();
    let counters = parse_counters(&log);
    assert!(
        counters.iter().all(|c| c.dropped("authentication") == 0),
        "{counters:?}"
    );
}

#[test]
fn wireguard_go_rekey_under_load_loses_nothing() {
    rekey_under_load(
        StockKind::WireguardGo,
        "wireguard_go_rekey_under_load_loses_nothing",
    );
}

#[test]
fn boringtun_rekey_under_load_loses_nothing() {
    rekey_under_load(
        StockKind::Boringtun,
        "boringtun_rekey_under_load_loses_nothing",
    );
}
