//! Hostile input, floods and faults against the real server in network namespaces (root only;
//! each test prints `SKIPPED <name>: ...` otherwise).
//!
//! - `garbage_never_reaches_the_tun`: random, truncated, oversized, wrong-length and
//!   wrong-type datagrams, forged transport packets for real receiver indexes, replays of
//!   captured transport packets and of a captured initiation, unpaced for a few seconds while a
//!   legitimate client pings the backend.
//! - `handshake_flood_engages_cookies`: a raw-socket flood of initiations (valid mac1, one in
//!   ten bad) from many source addresses while a client runs iperf3 and a new client connects.
//! - `session_churn_returns_to_baseline`: rounds of emulated protocol clients that handshake,
//!   send one datagram and vanish, with live `peer_add`/`peer_remove`.
//! - faults: `client_restart_replaces_session`, `server_sigkill_clients_resume`,
//!   `worker_panic_stops_the_server_and_tears_down`, `underlay_blackout_then_loss`.
//!
//! Sizes come from environment variables with CI-sized defaults; `scripts/hostile.sh` runs
//! the full sizes in release mode and prints the `FIGURE` lines that docs/security.md quotes.

mod common;
#[path = "common/hostile.rs"]
mod hostile_tools;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::net::wait_link_gone;
use common::traffic::iperf3_client;
use common::*;
use concentrator::proto::keys::PublicKey;
use hostile_tools::*;
use serde_json::json;

fn server_addr() -> SocketAddr {
    format!("{SERVER_UNDERLAY}:{PORT}").parse().unwrap()
}

/// The server namespace's bridge (named by the harness as `v<pid>-<id>br`).
fn bridge(lab: &Lab) -> String {
    format!("v{:x}-{:x}br", std::process::id(), lab.id)
}

/// Starts a one-off iperf3 server on the backend and runs `secs` of TCP from client `i`;
/// returns the received bits per second.
fn iperf3_bps(lab: &mut Lab, i: usize, port: u16, secs: u64) -> f64 {
    iperf3_client(lab, i, port, secs, &[])["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("end.sum_received.bits_per_second")
}

/// Pings `dst` from `ns` `count` times, 0.1 s apart; returns (sent, received).
fn ping_count(lab: &Lab, ns: &str, dst: &str, count: u32) -> (u64, u64) {
    let out = lab.ping(ns, dst, count, &["-i", "0.1"]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("")
        .to_string();
    let nums: Vec<u64> = line
        .split(',')
        .filter_map(|p| p.split_whitespace().next().and_then(|n| n.parse().ok()))
        .collect();
    (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    )
}

fn handshakes(show: &serde_json::Value, field: &str) -> u64 {
    show["handshakes"][field].as_u64().unwrap_or(0)
}

fn failed_by(show: &serde_json::Value, reason: &str) -> u64 {
    show["handshakes"]["failed_by_reason"][reason]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn garbage_never_reaches_the_tun() {
    let name = "garbage_never_reaches_the_tun";
    if !lab_or_skip(name) {
        return;
    }
    let secs = env_or("HOSTILE_GARBAGE_SECS", 5);
    // c1: the legitimate client; c2: the attacker (its client never runs).
    let mut lab = Lab::new(LabConfig {
        clients: 2,
        ipv6: false,
        ..Default::default()
    });
    lab.start_server();
    let (s, b) = (lab.server_ns.clone(), lab.backend_ns.clone());
    let (c1, c2) = (lab.client_ns[0].clone(), lab.client_ns[1].clone());
    // Capture everything c1 sends to the server, starting before its handshake.
    let stop_sniff = Arc::new(AtomicBool::new(false));
    let sniffer = sniff(
        &s,
        &bridge(&lab),
        Ipv4Addr::new(10, 0, 0, 11),
        PORT,
        stop_sniff.clone(),
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(200));
    lab.start_client(0);
    let legit = lab.wait_tunnel(0).to_string();
    lab.ping_ok(&c1, BACKEND, 5);
    stop_sniff.store(true, Ordering::Relaxed);
    let cap = sniffer.join().expect("sniffer");
    assert!(
        !cap.initiations.is_empty() && cap.transports.len() >= 5,
        "captured {} initiations, {} transport packets",
        cap.initiations.len(),
        cap.transports.len()
    );
    // Anything that leaves the server's TUN, or reaches the backend, from anyone but the
    // legitimate client (or the server's own backend address) is counted.
    lab.nft(
        &s,
        &format!(
            "table inet hostile {{\n counter foreign {{}}\n chain pre {{ type filter hook prerouting priority -300; \
             iifname \"{SERVER_TUN}\" ip saddr != {legit} counter name foreign; \
             iifname \"{SERVER_TUN}\" meta nfproto ipv6 counter name foreign; }}\n}}\n"
        ),
    );
    lab.nft(
        &b,
        &format!(
            "table inet hostile {{\n counter foreign {{}}\n chain in {{ type filter hook prerouting priority -300; \
             ip saddr != {{ {legit}, {SERVER_BACKEND} }} counter name foreign; }}\n}}\n"
        ),
    );
    let before = lab.show_json();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = garbage_flood(
        &c2,
        Ipv4Addr::new(10, 0, 0, 12),
        server_addr(),
        cap.clone(),
        Duration::from_secs(secs),
        stop.clone(),
    );
    // The legitimate client keeps pinging through the flood.
    let count = (secs * 10) as u32;
    let (p_sent, p_recv) = ping_count(&lab, &c1, BACKEND, count);
    stop.store(true, Ordering::Relaxed);
    let report = flood.join().expect("garbage flood");
    std::thread::sleep(Duration::from_millis(500));
    let after = lab.show_json();
    let tun_foreign = lab.nft_counter(&s, "hostile", "foreign");
    let backend_foreign = lab.nft_counter(&b, "hostile", "foreign");
    let d = |r: &str| drops(&after, r) - drops(&before, r);
    let replayed = failed_by(&after, "replayed") - failed_by(&before, "replayed");
    eprintln!(
        "FIGURE garbage: sent {} datagrams in {:.1} s ({:.0}/s) by kind {:?}",
        report.total,
        report.seconds,
        report.rate(),
        report.sent
    );
    eprintln!(
        "FIGURE garbage: server udp_rx {} during the run; drops {}; handshake replayed {replayed}; \
         reached TUN {tun_foreign}, reached backend {backend_foreign}; legit ping {p_recv}/{p_sent}",
        worker_sum(&after, "udp_rx_packets") - worker_sum(&before, "udp_rx_packets"),
        drop_summary(&after),
    );
    assert_eq!(tun_foreign, 0, "forged packets left the server's TUN");
    assert_eq!(backend_foreign, 0, "forged packets reached the backend");
    for reason in [
        "malformed",
        "unknown_index",
        "authentication",
        "replay",
        "unexpected_type",
    ] {
        assert!(
            d(reason) > 0,
            "no {reason} drops counted: {}",
            drop_summary(&after)
        );
    }
    assert!(
        replayed > 0,
        "the replayed initiation was not refused as replayed"
    );
    // At least half: the flood is unpaced, so in a debug build its rate (66 000 to 157 000/s
    // seen) follows how much of the shared machine the attacker gets, and the one worker it
    // shares with the ping loses a quarter of the pings at the fast end, the same before and
    // after the WireGuard suite (50/61 to 50/68 both, side by side). The release figures of
    // scripts/hostile.sh (50/50) are in docs/security.md.
    assert!(
        p_recv * 2 >= p_sent,
        "legitimate ping through the flood: only {p_recv}/{p_sent} answered"
    );
    // The replays did not move the client's endpoint.
    let peers = after["peers"].as_array().cloned().unwrap_or_default();
    let ep = peers
        .iter()
        .find(|p| p["address"] == legit.as_str())
        .and_then(|p| p["endpoint"].as_str())
        .unwrap_or("")
        .to_string();
    assert!(
        ep.starts_with("10.0.0.11:"),
        "client endpoint moved to {ep}"
    );
    lab.ping_ok(&c1, BACKEND, 3);
}

#[test]
fn handshake_flood_engages_cookies() {
    let name = "handshake_flood_engages_cookies";
    if !lab_or_skip(name) || !tools_or_skip(name, &["iperf3", "ss"]) {
        return;
    }
    // CI default 20k/s (a debug server on a shared 2-core box); scripts/hostile.sh: 50k/s.
    let rate = env_or("HOSTILE_FLOOD_RATE", 20_000);
    let sources = env_or("HOSTILE_FLOOD_SOURCES", 256) as usize;
    let secs = env_or("HOSTILE_IPERF_SECS", 3);
    // c1: established client; c2: attacker; c3: a client that connects during the flood.
    // One worker by default: all of the flood lands on the tunnel's worker. The product's
    // default is one per core (HOSTILE_FLOOD_WORKERS=2 here), which spreads the flood's sources.
    let workers = env_or("HOSTILE_FLOOD_WORKERS", 1) as usize;
    let mut lab = Lab::new(LabConfig {
        clients: 3,
        ipv6: false,
        workers,
        ..Default::default()
    });
    lab.start_server();
    lab.start_client(0);
    lab.wait_tunnel(0);
    let (s, c2, c3) = (
        lab.server_ns.clone(),
        lab.client_ns[1].clone(),
        lab.client_ns[2].clone(),
    );
    // Answers to the flood's sources leave the server through its bridge port towards the
    // attacker and are dropped there, at that port's egress hook: on the internet they would
    // leave through a NIC, and the server's cost ends at the device (the IP stack, routing,
    // the bridge standing in for the driver). Delivering them into the attacker's namespace
    // would charge this shared box for the receiving side's work too (a third of the cost of
    // each reply).
    lab.ip(&s, &["route", "add", "10.2.0.0/16", "via", "10.0.0.12"]);
    let attacker_port = format!("{}s", lab.client_links[1]);
    lab.nft(
        &s,
        &format!(
            "table netdev flood_sink {{\n counter replies {{ }}\n chain out {{ type filter hook egress \
             device \"{attacker_port}\" priority 0; ip daddr 10.2.0.0/16 counter name replies drop; }}\n}}\n"
        ),
    );
    // The attacker's frames go straight to the server's MAC on the shared segment.
    let interface = lab.client_links[1].clone();
    lab.exec_ok(
        &c2,
        &["ping", "-c", "1", "-W", "2", SERVER_UNDERLAY],
        Duration::from_secs(5),
    );
    let link = FloodLink {
        own_mac: mac_after(
            &lab.ip(&c2, &["link", "show", "dev", &interface]),
            "link/ether",
        )
        .expect("attacker MAC"),
        next_hop_mac: mac_after(&lab.ip(&c2, &["neigh", "show", SERVER_UNDERLAY]), "lladdr")
            .expect("server MAC (neighbour entry after a ping)"),
        interface,
    };
    let pid = lab.server_pid();
    let (rss0, _) = memory_kib(pid);
    let before = lab.show_json();
    let server_key = PublicKey::from_base64(&lab.server_pubkey).unwrap();
    // Stop the flood whatever happens below.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    // What the flood alone costs: CPU over a quiet spell, then over as long a spell of flood
    // with the tunnel idle (cores: CPU seconds per second).
    let cpu_over = |secs: f64| {
        let (p0, m0) = cpu_seconds(pid);
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (p1, m1) = cpu_seconds(pid);
        ((p1 - p0) / secs, (m1 - m0) / secs)
    };
    // Starts the flood; it stops when `stop` is set or the guard is dropped, whatever happens.
    let start_flood = || {
        let stop = Arc::new(AtomicBool::new(false));
        let guard = StopOnDrop(stop.clone());
        let flood = initiation_flood(
            &c2,
            link.clone(),
            server_key,
            SocketAddrV4::new(SERVER_UNDERLAY.parse().unwrap(), PORT),
            sources,
            rate,
            Duration::from_secs(60),
            stop.clone(),
        );
        (stop, guard, flood)
    };
    let quiet = cpu_over(2.0);
    let flood_cost = {
        let (stop, _guard, flood) = start_flood();
        std::thread::sleep(Duration::from_secs(1));
        let cost = cpu_over(2.0);
        stop.store(true, Ordering::Relaxed);
        flood.join().expect("flood");
        cost
    };
    std::thread::sleep(Duration::from_millis(500));
    // Undisturbed and flooded runs alternate (pairs), so that a change in the shared machine's
    // load during the test weighs on both sides alike.
    let pairs = env_or("HOSTILE_FLOOD_PAIRS", 2).max(1);
    let (mut undisturbed, mut flooded) = (0.0, 0.0);
    let mut report = FloodReport::default();
    let mut connect_time = Duration::ZERO;
    let mut mid = before.clone();
    for pair in 0..pairs {
        let port = 5301 + 2 * pair as u16;
        undisturbed += iperf3_bps(&mut lab, 0, port, secs);
        let (stop, _guard, flood) = start_flood();
        std::thread::sleep(Duration::from_secs(1));
        flooded += iperf3_bps(&mut lab, 0, port + 1, secs);
        if pair + 1 == pairs {
            // A new legitimate client connects during the flood.
            let t0 = Instant::now();
            lab.start_client(2);
            while lab.client_tun_addr(2).is_none() {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "a new client did not connect within 30 s under {rate} initiations/s\n{}",
                    drop_summary(&lab.show_json())
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            connect_time = t0.elapsed();
            // Its traffic flows through the flood. Not every ping need come back: the flood
            // saturates the one worker this client shares with it (a debug build on a shared
            // 2-core machine), so a probe can be lost in the queue right after the handshake.
            let ping = lab.ping(&c3, BACKEND, 5, &[]);
            assert!(
                ping.ok(),
                "no ping from the client that connected during the flood:\n{}{}",
                ping.stdout,
                ping.stderr
            );
            mid = lab.show_json();
        }
        stop.store(true, Ordering::Relaxed);
        let r = flood.join().expect("flood");
        report.sent += r.sent;
        report.good_mac1 += r.good_mac1;
        report.bad_mac1 += r.bad_mac1;
        report.seconds += r.seconds;
        report.sources = r.sources;
    }
    let (undisturbed, flooded) = (undisturbed / pairs as f64, flooded / pairs as f64);
    std::thread::sleep(Duration::from_millis(500));
    let after = lab.show_json();
    let (rss1, hwm) = memory_kib(pid);
    let cookies = handshakes(&after, "cookie_replies") - handshakes(&before, "cookie_replies");
    let on_wire = lab.nft_counter_of(&s, "netdev", "flood_sink", "replies");
    let kept = flooded / undisturbed.max(1.0);
    eprintln!(
        "FIGURE flood: sent {} initiations ({} valid mac1, {} bad) from {} sources in {:.1} s = {:.0}/s (target {rate}/s)",
        report.sent, report.good_mac1, report.bad_mac1, report.sources, report.seconds, report.rate()
    );
    eprintln!(
        "FIGURE flood: server udp_rx {}, cookie replies {cookies} ({on_wire} left its port towards the attacker), handshakes failed {} by reason {}, \
         completed {}; drops {}",
        worker_sum(&after, "udp_rx_packets") - worker_sum(&before, "udp_rx_packets"),
        handshakes(&after, "failed") - handshakes(&before, "failed"),
        after["handshakes"]["failed_by_reason"],
        handshakes(&after, "completed"),
        drop_summary(&after),
    );
    eprintln!(
        "FIGURE flood: iperf3 undisturbed {:.1} Mbit/s, under flood {:.1} Mbit/s (means of {pairs} alternating pairs) = {:.0}% kept; \
         new client connected in {:.1} s; server VmRSS {rss0} -> {rss1} KiB, VmHWM {hwm} KiB",
        undisturbed / 1e6,
        flooded / 1e6,
        kept * 100.0,
        connect_time.as_secs_f64()
    );
    eprintln!(
        "FIGURE flood: CPU with the tunnel idle (cores): server {:.2}, machine {:.2} under the flood alone; \
         server {:.2}, machine {:.2} quiet",
        flood_cost.0, flood_cost.1, quiet.0, quiet.1
    );
    assert!(
        handshakes(&mid, "cookie_replies") > handshakes(&before, "cookie_replies"),
        "cookie mode never engaged (no cookie replies) at {:.0} initiations/s",
        report.rate()
    );
    // Workers check mac1 before queuing (drop reason `bad_mac`); the control thread counts
    // any that still reach it.
    let bad_mac = |show: &serde_json::Value| failed_by(show, "bad_mac") + drops(show, "bad_mac");
    assert!(
        bad_mac(&after) > bad_mac(&before),
        "bad mac1 initiations not counted"
    );
    // Functional checks only, not speed thresholds: the figure (target: 80% kept) is printed
    // above and quoted in docs/security.md; on a shared 2-core box it varies a lot.
    assert!(
        flooded > 0.0,
        "the established client's iperf3 moved nothing under the flood"
    );
    if kept < 0.8 {
        eprintln!(
            "NOTE flood: the established client kept {:.0}% of its throughput (target 80%)",
            kept * 100.0
        );
    }
    assert!(
        hwm < 512 * 1024,
        "server peak RSS {hwm} KiB under the flood: not bounded"
    );
    lab.ping_ok(&lab.client_ns[0].clone(), BACKEND, 3);
}

#[test]
fn session_churn_returns_to_baseline() {
    let name = "session_churn_returns_to_baseline";
    if !lab_or_skip(name) {
        return;
    }
    let k = env_or("HOSTILE_CHURN_K", 1000) as usize;
    let rounds = env_or("HOSTILE_CHURN_ROUNDS", 4) as usize;
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        ipv6: false,
        ..Default::default()
    });
    lab.start_server();
    let (c1, b) = (lab.client_ns[0].clone(), lab.backend_ns.clone());
    lab.nft(
        &b,
        "table inet churn {\n counter data {}\n chain in { type filter hook prerouting priority -300; \
         ip saddr 10.66.0.0/16 udp dport 9 counter name data; }\n}\n",
    );
    let sock = lab.control_socket();
    let pid = lab.server_pid();
    let server_key = PublicKey::from_base64(&lab.server_pubkey).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (rss_cold, _) = memory_kib(pid);
    // Bulk changes go through the config file and `reload` (one request for K peers; the
    // control socket takes one request per connection).
    let config_path = lab.server_config_path();
    let base_config = std::fs::read_to_string(&config_path).unwrap();
    let reload = |pubs: &[PublicKey]| -> serde_json::Value {
        let t = Instant::now();
        let mut text = base_config.clone();
        for p in pubs {
            text += &format!("\n[[peer]]\npublic_key = \"{p}\"\n");
        }
        std::fs::write(&config_path, text).unwrap();
        let v = control(&sock, &json!({"cmd": "reload"}));
        assert_eq!(v["ok"], true, "reload: {v}");
        eprintln!(
            "FIGURE churn: reload to {} extra peers in {:.2} s",
            pubs.len(),
            t.elapsed().as_secs_f64()
        );
        v
    };
    let add = |pubs: &[PublicKey]| {
        reload(pubs);
    };
    let remove = |_pubs: &[PublicKey]| {
        reload(&[]);
    };
    // Warm-up: 100 clients come and go first, so that the baseline is a server that has run
    // (code paths paged in, every thread's allocator arena set up), not one that never did.
    let (keys_w, pubs_w) = gen_keys(100);
    add(&pubs_w);
    let warm = churn_round(
        &c1,
        server_addr(),
        server_key,
        keys_w,
        SocketAddrV4::new(BACKEND.parse().unwrap(), 9),
        64,
        4,
        Duration::from_secs(30),
    )
    .join()
    .expect("warm-up round");
    assert_eq!(warm.connected, 100, "warm-up: not every client connected");
    remove(&pubs_w);
    std::thread::sleep(Duration::from_secs(4));
    let base = lab.show_json();
    let (rss_base, _) = memory_kib(pid);
    eprintln!(
        "FIGURE churn: VmRSS {rss_cold} KiB cold, {rss_base} KiB after the warm-up (baseline)"
    );
    let base_peers = base["peers_total"].as_u64().unwrap();
    let base_sessions = base["sessions"].as_u64().unwrap();
    let (keys_a, pubs_a) = gen_keys(k);
    let mut addr_a: Vec<Option<Ipv4Addr>> = Vec::new();
    let mut data_total = 0u64;
    let mut rss_after_rounds = Vec::new();
    for r in 0..rounds {
        // Round 0: new keys A. 1: A reconnect (still peers; the server replaces sessions),
        // then A removed. 2: new keys B, removed. 3: A added again (same addresses), removed.
        let (keys, pubs, label) = match r % 4 {
            0 => {
                add(&pubs_a);
                (keys_a.clone(), pubs_a.clone(), "new keys A")
            }
            1 => (keys_a.clone(), pubs_a.clone(), "A reconnecting"),
            2 => {
                let (kb, pb) = gen_keys(k);
                add(&pb);
                (kb, pb, "new keys B")
            }
            _ => {
                add(&pubs_a);
                (keys_a.clone(), pubs_a.clone(), "A added again")
            }
        };
        let t = Instant::now();
        let round = churn_round(
            &c1,
            server_addr(),
            server_key,
            keys,
            SocketAddrV4::new(BACKEND.parse().unwrap(), 9),
            256,
            16,
            Duration::from_secs(60),
        )
        .join()
        .expect("churn round");
        let during = lab.show_json();
        let (rss_peak, hwm) = memory_kib(pid);
        if r % 4 != 0 {
            remove(&pubs);
        }
        let rss = if r % 4 != 0 {
            settled_rss(
                pid,
                (rss_base as f64 * 1.10) as u64,
                Duration::from_secs(10),
            )
        } else {
            std::thread::sleep(Duration::from_secs(2));
            memory_kib(pid).0
        };
        let settled = lab.show_json();
        rss_after_rounds.push(rss);
        let data = lab.nft_counter(&b, "churn", "data");
        eprintln!(
            "FIGURE churn round {r} ({label}): {}/{} connected, {} data sent, {} initiations, {:.1} s ({:.0} handshakes/s); \
             sessions during {}; after removal peers {} sessions {}; VmRSS {rss_peak} KiB during, {rss} KiB settled, \
             VmHWM {hwm} KiB; backend got {} datagrams so far; total {:.1} s",
            round.connected,
            round.clients,
            round.data_sent,
            round.initiations,
            round.seconds,
            round.connected as f64 / round.seconds.max(1e-9),
            during["sessions"],
            settled["peers_total"],
            settled["sessions"],
            data,
            t.elapsed().as_secs_f64()
        );
        data_total = data;
        match r % 4 {
            0 => addr_a = round.addresses.clone(),
            1 | 3 => assert_eq!(
                round.addresses, addr_a,
                "round {r}: keys A were not given their addresses again"
            ),
            _ => {}
        }
        assert_eq!(round.connected, k, "round {r}: not every client connected");
        assert!(
            during["sessions"].as_u64().unwrap() <= base_sessions + k as u64,
            "round {r}: more sessions than peers"
        );
    }
    if rounds % 4 == 1 {
        remove(&pubs_a);
    }
    let limit = rss_base as f64 * 1.10;
    // The server hands freed memory back a few seconds after peers go (see TRIM_DELAY in
    // src/control/mod.rs): wait for it, up to a bound.
    let rss_end = settled_rss(pid, limit as u64, Duration::from_secs(10));
    let end = lab.show_json();
    let (_, hwm) = memory_kib(pid);
    eprintln!(
        "FIGURE churn: {rounds} rounds of {k}; VmRSS baseline {rss_base} KiB, after each round {rss_after_rounds:?} KiB, \
         end {rss_end} KiB ({:+.1}% vs baseline), VmHWM {hwm} KiB; peers {} -> {}, sessions {} -> {}; \
         datagrams at backend {data_total}",
        (rss_end as f64 / rss_base as f64 - 1.0) * 100.0,
        base_peers,
        end["peers_total"],
        base_sessions,
        end["sessions"],
    );
    assert_eq!(
        end["peers_total"].as_u64().unwrap(),
        base_peers,
        "peers left behind"
    );
    assert_eq!(
        end["sessions"].as_u64().unwrap(),
        base_sessions,
        "sessions left behind"
    );
    assert!(
        data_total >= (k * rounds) as u64 * 9 / 10,
        "only {data_total} of {} datagrams reached the backend",
        k * rounds
    );
    // No growth from round to round (a leak grows with every round).
    if rss_after_rounds.len() >= 3 {
        let first = rss_after_rounds[1] as f64;
        let last = *rss_after_rounds.last().unwrap() as f64;
        assert!(
            last <= first * 1.10 + 2048.0,
            "RSS keeps growing across churn rounds: {rss_after_rounds:?} KiB"
        );
    }
    // The server shrinks its maps, rebuilds the session table and trims the allocator after
    // peers go (src/control/mod.rs); HOSTILE_CHURN_STRICT_RSS=0 turns this into a note.
    if env_or("HOSTILE_CHURN_STRICT_RSS", 1) == 1 {
        assert!(
            rss_end as f64 <= limit,
            "VmRSS {rss_end} KiB not back within 10% of the baseline {rss_base} KiB"
        );
    } else if (rss_end as f64) > limit {
        eprintln!(
            "NOTE churn: VmRSS {rss_end} KiB is more than 10% above the baseline {rss_base} KiB"
        );
    }
}

#[test]
fn client_restart_replaces_session() {
    let name = "client_restart_replaces_session";
    if !lab_or_skip(name) {
        return;
    }
    let mut lab = Lab::new(LabConfig::with_clients(1));
    lab.up();
    let c1 = lab.client_ns[0].clone();
    lab.ping_ok(&c1, BACKEND, 3);
    let before = lab.show_json();
    // SIGKILL: the client forgets everything without a word to the server.
    lab.clients[0].take().unwrap().kill();
    let t0 = Instant::now();
    // Its TUN goes with the process; wait for it so the new client can create it again.
    while lab.client_tun_addr(0).is_some() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.start_client(0);
    lab.wait_tunnel(0);
    lab.ping_ok(&c1, BACKEND, 3);
    let elapsed = t0.elapsed();
    let after = lab.show_json();
    eprintln!(
        "FIGURE client restart: new session and ping after {:.1} s; handshakes {} -> {}, sessions {} -> {}",
        elapsed.as_secs_f64(),
        handshakes(&before, "completed"),
        handshakes(&after, "completed"),
        before["sessions"],
        after["sessions"]
    );
    assert!(handshakes(&after, "completed") > handshakes(&before, "completed"));
    assert_eq!(after["sessions"], 1, "the old session was not replaced");
    assert_eq!(after["peers_total"], 1);
    let hs = after["peers"][0]["latest_handshake_secs_ago"]
        .as_u64()
        .unwrap();
    assert!(hs <= elapsed.as_secs() + 1, "latest handshake {hs} s ago");
}

#[test]
fn server_sigkill_clients_resume() {
    let name = "server_sigkill_clients_resume";
    if !lab_or_skip(name) {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        clients: 2,
        keepalive: 5,
        ..Default::default()
    });
    lab.up();
    let cs = lab.client_ns.clone();
    for c in &cs {
        lab.ping_ok(c, BACKEND, 2);
    }
    lab.kill_server();
    let t0 = Instant::now();
    lab.start_server();
    // Every client keeps sending meanwhile (each notices on its own), as real clients would.
    let lab_ref = &lab;
    let resumed: Vec<Duration> = std::thread::scope(|scope| {
        let pingers: Vec<_> = cs
            .iter()
            .map(|c| {
                scope.spawn(move || loop {
                    if lab_ref.ping(c, BACKEND, 1, &[]).ok() {
                        return t0.elapsed();
                    }
                    assert!(
                        t0.elapsed() < Duration::from_secs(25),
                        "{c}: no ping 25 s after the restart\n{}",
                        lab_ref.logs()
                    );
                })
            })
            .collect();
        pingers.into_iter().map(|p| p.join().unwrap()).collect()
    });
    eprintln!(
        "FIGURE server SIGKILL+restart: clients resumed after {:?} (target 15 s)",
        resumed
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    // The protocol's bound: a client notices after NEW_HANDSHAKE_AFTER_SILENCE (12 s) from
    // its first unanswered data packet, then handshakes at once.
    for d in &resumed {
        assert!(
            *d < Duration::from_secs(15),
            "resume took {d:?} (target: within 15 s)"
        );
    }
}

#[test]
fn worker_panic_stops_the_server_and_tears_down() {
    let name = "worker_panic_stops_the_server_and_tears_down";
    if !lab_or_skip(name) {
        return;
    }
    use concentrator::server::dataplane::worker::INJECT_PANIC_ENV;
    // Worker 0 (the only one) panics after 40 packets: the handshake and a few pings.
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        nat: true,
        server_env: vec![(INJECT_PANIC_ENV.to_string(), "0:40".to_string())],
        ..Default::default()
    });
    lab.up();
    let s = lab.server_ns.clone();
    let table = format!("concentrator_{}", lab.server_pid());
    assert!(lab.nft_tables(&s).contains(&table), "no nft table {table}");
    let c1 = lab.client_ns[0].clone();
    lab.spawn_in(
        &c1,
        "ping",
        &["ping", "-n", "-i", "0.1", "-c", "300", BACKEND],
    );
    let mut server = lab.server.take().expect("server running");
    let status = server.wait(Duration::from_secs(30));
    let log = server.stderr();
    let status = status
        .unwrap_or_else(|| panic!("server still running 30 s after its worker's fault:\n{log}"));
    eprintln!("FIGURE worker panic: server exited with {status}");
    assert!(
        !status.success(),
        "a dead worker must make the exit code non-zero:\n{log}"
    );
    assert!(
        log.contains("error: worker 0 died (panicked: injected fault"),
        "the log names the worker and its panic:\n{log}"
    );
    // The TUN goes with the last queue closed (the kernel may take a moment after the exit).
    let limit = Duration::from_secs(5);
    wait_link_gone(&lab, &s, SERVER_TUN, Instant::now(), limit, "the exit");
    let tables = lab.nft_tables(&s);
    assert!(
        !tables.contains(&table),
        "nft table {table} left after exit:\n{tables}"
    );
}

#[test]
fn underlay_blackout_then_loss() {
    let name = "underlay_blackout_then_loss";
    if !lab_or_skip(name) || !tools_or_skip(name, &["iperf3", "ss"]) {
        return;
    }
    let loss = env_or("HOSTILE_LOSS_PERCENT", 15);
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        ipv6: false,
        ..Default::default()
    });
    let s = lab.server_ns.clone();
    let c1 = lab.client_ns[0].clone();
    lab.start_server();
    // 100% of the underlay dropped on the way in for 12 s while the client starts.
    lab.nft(
        &s,
        &format!(
            "table inet blackout {{\n counter inits {{}}\n counter others {{}}\n chain in {{ type filter hook prerouting priority -300; \
             udp dport {PORT} udp length 156 counter name inits drop; udp dport {PORT} counter name others drop; }}\n}}\n"
        ),
    );
    lab.start_client(0);
    std::thread::sleep(Duration::from_secs(12));
    let inits = lab.nft_counter(&s, "blackout", "inits");
    assert!(
        lab.client_tun_addr(0).is_none(),
        "tunnel up through a 100% blackout"
    );
    lab.nft(&s, "delete table inet blackout\n");
    let t0 = Instant::now();
    lab.wait_tunnel(0);
    let recovered = t0.elapsed();
    lab.ping_ok(&c1, BACKEND, 2);
    eprintln!(
        "FIGURE blackout: {inits} initiations dropped in 12 s (retries every 5 s); tunnel up {:.1} s after the drop ended",
        recovered.as_secs_f64()
    );
    assert!(
        inits >= 2,
        "the client did not retry its handshake ({inits} initiations)"
    );
    // Random loss both ways.
    lab.nft(
        &s,
        &format!(
            "table inet loss {{\n counter dropped {{}}\n \
             chain in {{ type filter hook prerouting priority -300; udp dport {PORT} numgen random mod 100 < {loss} counter name dropped drop; }}\n \
             chain out {{ type filter hook output priority -300; udp sport {PORT} numgen random mod 100 < {loss} counter name dropped drop; }}\n}}\n"
        ),
    );
    let (sent, recv) = ping_count(&lab, &c1, BACKEND, 50);
    let bps = iperf3_bps(&mut lab, 0, 5311, 3);
    let dropped = lab.nft_counter(&s, "loss", "dropped");
    eprintln!(
        "FIGURE loss {loss}% each way: ping {recv}/{sent}, iperf3 {:.1} Mbit/s, {dropped} packets dropped by nft",
        bps / 1e6
    );
    assert!(dropped > 0);
    assert!(recv * 2 >= sent, "ping through {loss}% loss: {recv}/{sent}");
    assert!(bps > 0.0);
}

/// Sans-IO: a server with static secret `ss` and one peer, the client with static secret `cs`.
fn recording_server(
    ss: [u8; 32],
    cs: [u8; 32],
    now: concentrator::proto::time::Instant,
    rng: &mut concentrator::proto::rng::SeededRandom,
) -> concentrator::proto::server::Server {
    use concentrator::proto::keys::{PresharedKey, StaticSecret};
    use concentrator::proto::server::{PeerConfig, Server};
    use concentrator::proto::wire::AddressAssignment;
    let mut server = Server::new(StaticSecret::from_bytes(ss), now, rng);
    server.add_peer(PeerConfig {
        public_key: StaticSecret::from_bytes(cs).public_key(),
        psk: PresharedKey::zero(),
        assignment: AddressAssignment {
            ipv4: Ipv4Addr::new(10, 66, 0, 7),
            ipv4_prefix: 16,
            ipv6: None,
            mtu: 1420,
        },
        allowed_ips: Vec::new(),
        suite: concentrator::proto::suite::Suite::Native,
    });
    server
}

/// Sans-IO: a handshake between a client and a [`recording_server`] with fixed static secrets.
struct FixedKeyHandshake {
    /// The server's and the client's static secrets.
    ss: [u8; 32],
    cs: [u8; 32],
    now: concentrator::proto::time::Instant,
    /// The client, connected.
    client: concentrator::proto::client::Client,
    /// What went on the wire: the client's initiation and the server's response.
    initiation: Vec<u8>,
    response: Vec<u8>,
    /// The server's side of the handshake.
    established: concentrator::proto::server::Established,
}

/// Runs a [`FixedKeyHandshake`] with randomness from `seed`; the client must connect.
fn fixed_key_handshake(seed: u64) -> FixedKeyHandshake {
    use concentrator::proto::client::{Client, ClientEvent, ClientParams};
    use concentrator::proto::keys::{PresharedKey, StaticSecret};
    use concentrator::proto::rng::SeededRandom;
    use concentrator::proto::server::HandshakeReply;
    use concentrator::proto::time::Instant as PInstant;
    let (ss, cs) = ([0x11u8; 32], [0x22u8; 32]);
    let now = PInstant::from_nanos(1_000_000_000);
    let mut rng = SeededRandom(seed);
    let mut server = recording_server(ss, cs, now, &mut rng);
    let mut client = Client::new(
        ClientParams {
            secret: StaticSecret::from_bytes(cs),
            server: StaticSecret::from_bytes(ss).public_key(),
            psk: PresharedKey::zero(),
            persistent_keepalive: None,
        },
        now,
        Duration::from_secs(1_700_000_000),
    );
    let mut out = [0u8; 256];
    let n = client.poll_transmit(now, &mut rng, &mut out).unwrap();
    let initiation = out[..n].to_vec();
    let src: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let mut resp = [0u8; 256];
    let Ok(HandshakeReply::Established(established)) =
        server.handle_initiation(&initiation, src, now, false, &mut rng, &mut resp)
    else {
        panic!("handshake failed");
    };
    let response = resp[..established.len].to_vec();
    assert!(matches!(
        client.receive(&mut response.clone(), now),
        ClientEvent::Connected(_)
    ));
    FixedKeyHandshake {
        ss,
        cs,
        now,
        client,
        initiation,
        response,
        established,
    }
}

/// Sans-IO, no root: a client and a server with fixed keys; returns (server static, client
/// static, the client's initiation, one data packet the client sealed for the server).
fn recorded_session() -> ([u8; 32], [u8; 32], Vec<u8>, Vec<u8>) {
    let FixedKeyHandshake {
        ss,
        cs,
        now,
        mut client,
        initiation,
        established: est,
        ..
    } = fixed_key_handshake(5);
    let mut buf = vec![0u8; 256];
    let secret = b"the plaintext an eavesdropper wants";
    buf[16..16 + secret.len()].copy_from_slice(secret);
    let m = client.encrypt(&mut buf, secret.len(), now).unwrap();
    let packet = buf[..m].to_vec();
    let mut check = packet.clone();
    est.session
        .decrypt(est.local_index, &mut check, now)
        .unwrap();
    (ss, cs, initiation, packet)
}

#[test]
fn identity_is_not_on_the_wire() {
    use concentrator::proto::keys::StaticSecret;
    let (_, cs, initiation, packet) = recorded_session();
    let public = StaticSecret::from_bytes(cs).public_key();
    let pk = public.as_bytes();
    for (what, bytes) in [("initiation", &initiation), ("transport", &packet)] {
        assert!(
            !bytes.windows(32).any(|w| w == pk),
            "the client's static public key is visible in the {what}"
        );
    }
}

#[test]
fn a_responses_mac1_tells_which_known_client_it_answers() {
    // A limit of identity hiding, not a defect of the code: the response's mac1 is keyed by
    // HASH("mac1----" || client static public), so whoever holds a list of candidate client
    // public keys (from a config, `show`, per-peer metrics, logs) can tell, from one
    // response on the wire, which of them the handshake was for: one HMAC per candidate.
    use concentrator::proto::cookie::{self, MacKeys};
    use concentrator::proto::keys::StaticSecret;
    let FixedKeyHandshake { cs, response, .. } = fixed_key_handshake(6);
    let candidates: Vec<_> = (0u8..50)
        .map(|i| StaticSecret::from_bytes([0x30 + i; 32]).public_key())
        .chain([StaticSecret::from_bytes(cs).public_key()])
        .collect();
    let matching: Vec<_> = candidates
        .iter()
        .filter(|k| cookie::verify_mac1(&MacKeys::new(k.as_bytes()), &response))
        .collect();
    assert_eq!(
        matching,
        vec![&StaticSecret::from_bytes(cs).public_key()],
        "the response's mac1 names its client among the candidates"
    );
}

#[test]
fn recorded_traffic_stays_secret_when_static_keys_leak() {
    use concentrator::proto::rng::SeededRandom;
    use concentrator::proto::server::HandshakeReply;
    use concentrator::proto::time::Instant as PInstant;
    // The attacker recorded the initiation and a data packet, and later learns BOTH static
    // private keys. Re-running the responder on the recording gives other session keys (the
    // ephemeral secrets are gone), which do not open the recorded packet.
    let (ss, cs, initiation, packet) = recorded_session();
    let now = PInstant::from_nanos(2_000_000_000);
    let mut rng = SeededRandom(99);
    let mut server = recording_server(ss, cs, now, &mut rng);
    let src: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let mut resp = [0u8; 256];
    let Ok(HandshakeReply::Established(est)) =
        server.handle_initiation(&initiation, src, now, false, &mut rng, &mut resp)
    else {
        panic!("the recorded initiation is accepted by a fresh server (documented)");
    };
    let mut p = packet.clone();
    // Address the packet to the new keypair's index so the session tries its keys.
    p[4..8].copy_from_slice(&est.local_index.to_le_bytes());
    assert!(
        est.session.decrypt(est.local_index, &mut p, now).is_err(),
        "recorded traffic decrypted with keys re-derived from the static secrets"
    );
    assert!(
        !p.windows(10).any(|w| w == b"the plaint"),
        "plaintext recovered"
    );
}
