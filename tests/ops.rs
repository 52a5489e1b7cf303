//! End-to-end tests of operating the headend: the control socket (`show`, `peer add/remove`,
//! `reload`, SIGHUP), the Prometheus metrics (checked by `promtool`), the latency interval logs
//! (read back with Python's `hdrh`), and `show` with 100 000 peers.
//!
//! Root-only, in network namespaces (see `tests/common`); they print `SKIPPED <name>: ...`
//! otherwise. Traffic stays inside the lab's namespaces; the metrics port is the server
//! namespace's own loopback.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::ctl::{cli, cli_ok};
use common::setup::new_lab_or_skip;
use common::*;

fn show_json(lab: &Lab, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["show", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&cli_ok(lab, &args)).expect("show --json prints JSON")
}

/// A ping running in the background from `ns` to `dst`, `count` packets 0.1 s apart.
fn background_ping(lab: &Lab, ns: &str, dst: &str, count: u32, name: &str) -> Proc {
    let count = count.to_string();
    lab.spawn_proc(
        ns,
        name,
        &["ping", "-n", "-c", &count, "-i", "0.1", "-W", "1", dst],
    )
}

/// Waits for a background ping and requires that every echo was answered.
fn assert_no_loss(lab: &Lab, mut ping: Proc, what: &str) {
    let st = ping.wait(Duration::from_secs(60));
    let out = ping.stdout();
    assert!(
        st.is_some_and(|s| s.success()) && out.contains(" 0% packet loss"),
        "{what}: the other peer's ping lost packets ({st:?}):\n{out}\n{}",
        lab.logs()
    );
    eprintln!("{what}: {}", out.lines().rev().nth(1).unwrap_or(""));
}

fn peer_keys(show: &serde_json::Value) -> Vec<String> {
    show["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["public_key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn live_peer_add_and_remove_while_another_peer_pings() {
    let test = "live_peer_add_and_remove_while_another_peer_pings";
    // Client 2's key is not in the file: it is added live.
    let Some(mut lab) = new_lab_or_skip(test, LabConfig::second_client_unknown()) else {
        return;
    };
    lab.start_server();
    let socket_mode = std::fs::metadata(lab.control_socket()).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(socket_mode.unwrap(), 0o600, "control socket must be 0600");
    lab.start_client(0);
    lab.wait_tunnel(0);
    let (c1, c2) = (lab.client_ns[0].clone(), lab.client_ns[1].clone());
    let k2 = lab.client_pubkeys[1].clone();
    lab.ping_ok(&c1, BACKEND, 2);
    let ping = background_ping(&lab, &c1, BACKEND, 120, "ping-c1");

    let out = cli_ok(&lab, &["peer", "add", "--public-key", &k2]);
    assert!(out.contains("added peer") && out.contains(&k2), "{out}");
    let again = cli(&lab, &["peer", "add", "--public-key", &k2]);
    assert!(
        !again.ok() && again.stderr.contains("already a peer"),
        "{again:?}"
    );
    lab.start_client(1);
    let a2 = lab.wait_tunnel(1);
    assert!(
        out.contains(&a2.to_string()),
        "client got {a2}, peer add said: {out}"
    );
    lab.ping_ok(&c2, BACKEND, 3);
    let show = show_json(&lab, &[]);
    assert_eq!(show["peers_total"], 2, "{show}");
    assert!(peer_keys(&show).contains(&k2));

    cli_ok(&lab, &["peer", "remove", &k2]);
    let out = lab.ping(&c2, BACKEND, 3, &[]);
    assert!(
        out.stdout.contains("100% packet loss"),
        "a removed peer still gets through:\n{}",
        out.stdout
    );
    let show = show_json(&lab, &[]);
    assert_eq!(show["peers_total"], 1, "{show}");
    assert!(!peer_keys(&show).contains(&k2));
    assert_no_loss(&lab, ping, "peer add/remove");

    let log = lab.stop_server();
    assert!(
        log.contains("peer added") && log.contains("peer removed"),
        "{log}"
    );
    assert!(
        !lab.control_socket().exists(),
        "the control socket is removed on exit"
    );
}

#[test]
fn reload_changes_one_peer_while_another_peer_pings() {
    let test = "reload_changes_one_peer_while_another_peer_pings";
    let Some(mut lab) = new_lab_or_skip(test, LabConfig::with_clients(2)) else {
        return;
    };
    lab.up();
    let (c1, k1, k2) = (
        lab.client_ns[0].clone(),
        lab.client_pubkeys[0].clone(),
        lab.client_pubkeys[1].clone(),
    );
    lab.ping_ok(&c1, BACKEND, 2);
    let ping = background_ping(&lab, &c1, BACKEND, 120, "ping-c1");
    let path = lab.server_config_path();
    let original = std::fs::read_to_string(&path).unwrap();

    // 1. Peer 2 gets a fixed address: one change, peer 1 untouched.
    let changed = original.replace(
        &format!("public_key = \"{k2}\"\n"),
        &format!("public_key = \"{k2}\"\naddress = \"10.66.200.200\"\n"),
    );
    std::fs::write(&path, &changed).unwrap();
    let out = cli_ok(&lab, &["reload", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["changed"][0]["public_key"], k2, "{r}");
    assert_eq!(r["changed"][0]["what"][0], "address", "{r}");
    assert_eq!(r["unchanged"], 1, "{r}");
    assert!(
        r["added"].as_array().unwrap().is_empty() && r["removed"].as_array().unwrap().is_empty()
    );
    let show = show_json(&lab, &["--limit", "10"]);
    let p2 = show["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["public_key"] == k2.as_str())
        .expect("peer 2 still there");
    assert_eq!(p2["address"], "10.66.200.200");

    // 2. A broken file is refused with its problems; nothing changes.
    std::fs::write(
        &path,
        changed.replace("address = \"10.66.200.200\"", "address = \"nope\""),
    )
    .unwrap();
    let bad = cli(&lab, &["reload"]);
    assert!(
        !bad.ok() && bad.stderr.contains("peer[1].address"),
        "{bad:?}"
    );
    assert_eq!(show_json(&lab, &[])["peers_total"], 2);

    // 3. SIGHUP: peer 2 removed from the file.
    let without2: String = original
        .split("\n[[peer]]")
        .filter(|block| !block.contains(&k2))
        .collect::<Vec<_>>()
        .join("\n[[peer]]");
    std::fs::write(&path, &without2).unwrap();
    let pid = lab.server_pid();
    // SAFETY: kill(2) on the PID of the server this test started (still running: server_pid
    // panics otherwise).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let show = show_json(&lab, &[]);
        if show["peers_total"] == 1 {
            assert_eq!(peer_keys(&show), vec![k1.clone()]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP reload did not remove peer 2: {show}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_no_loss(&lab, ping, "reload");
    let log = lab.stop_server();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(
        log.contains("reload refused") || !log.contains("panicked"),
        "{log}"
    );
}

/// The value of the sample `series` (name and labels) in a scraped exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// GET http://127.0.0.1:PORT/metrics inside the server's namespace.
fn scrape(lab: &Lab, port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let script = format!(
        "import urllib.request,sys;r=urllib.request.urlopen('{url}',timeout=10);\
         assert r.headers.get_content_type()=='text/plain';sys.stdout.write(r.read().decode())"
    );
    lab.exec_ok(
        &lab.server_ns.clone(),
        &["python3", "-c", &script],
        Duration::from_secs(20),
    )
}

#[test]
fn metrics_pass_promtool() {
    let Some(mut lab) = new_lab_or_skip("metrics_pass_promtool", LabConfig::with_clients(1)) else {
        return;
    };
    lab.add_server_settings(
        "metrics_listen = \"127.0.0.1:9586\"\nmetrics_per_peer = true\nfair_queue = true",
    );
    lab.up();
    let c1 = lab.client_ns[0].clone();
    lab.ping_ok(&c1, BACKEND, 5);
    std::thread::sleep(Duration::from_millis(300)); // counters publish per batch
    let text = scrape(&lab, 9586);
    for series in [
        "concentrator_packets_total{worker=\"0\",path=\"udp\",direction=\"rx\"}",
        "concentrator_bytes_total{worker=\"0\",path=\"tun\",direction=\"tx\"}",
        "concentrator_drops_total{worker=\"0\",reason=\"replay\"}",
        "concentrator_handshakes_completed_total 1",
        "concentrator_handshakes_failed_total{reason=\"unknown_peer\"} 0",
        "concentrator_cookie_replies_total",
        "concentrator_sessions 1",
        "concentrator_peers 1",
        "concentrator_packet_latency_seconds_bucket{worker=\"0\",le=\"0.001\"}",
        "concentrator_handshake_latency_seconds_count 1",
        "concentrator_peer_rx_bytes_total{public_key=",
        "concentrator_egress_queue_drops_total{worker=\"0\",cause=\"aqm\"}",
        "concentrator_egress_queue_ce_marks_total{worker=\"0\"}",
        "concentrator_egress_queue_delay_seconds_bucket{worker=\"0\",le=\"0.001024\"}",
        "concentrator_udp_sends_total{worker=\"0\"}",
        "concentrator_ecn_alarms_total{worker=\"0\"} 0",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    let udp_rx = sample(
        &text,
        "concentrator_packets_total{worker=\"0\",path=\"udp\",direction=\"rx\"}",
    );
    assert!(udp_rx >= 5.0, "{text}");
    // The echo replies came out of the TUN, so through the worker's egress queue.
    let queued = sample(
        &text,
        "concentrator_egress_queue_packets_total{worker=\"0\"}",
    );
    assert!(queued >= 5.0, "{text}");
    // Each echo reply left in a send of its own (they are a ping interval apart).
    let sends = sample(&text, "concentrator_udp_sends_total{worker=\"0\"}");
    assert!(sends >= 5.0, "{text}");
    if tools_or_skip("metrics_pass_promtool (promtool part)", &["promtool"]) {
        let out = cmd::run(
            &["promtool", "check", "metrics"],
            Some(text.as_bytes()),
            Duration::from_secs(30),
        );
        assert!(
            out.ok(),
            "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
            out.stdout,
            out.stderr
        );
    }
    // Anything but GET /metrics is refused.
    let script = "import urllib.request,urllib.error\ntry:\n urllib.request.urlopen('http://127.0.0.1:9586/x',timeout=10)\nexcept urllib.error.HTTPError as e:\n print(e.code)";
    let code = lab.exec_ok(
        &lab.server_ns.clone(),
        &["python3", "-c", script],
        Duration::from_secs(20),
    );
    assert_eq!(code.trim(), "404");
}

/// Sums the interval histograms of every latency log in `dir`, per tag, with Python's hdrh.
fn hdrh_totals(lab: &Lab, dir: &Path) -> Option<serde_json::Value> {
    let probe = cmd::run(
        &["python3", "-c", "import hdrh"],
        None,
        Duration::from_secs(20),
    );
    if !probe.ok() {
        eprintln!("SKIPPED latency_log_reads_back_with_hdrh (hdrh part): python3 -c 'import hdrh' failed; pip install hdrhistogram");
        return None;
    }
    let script = r#"
import glob, json, sys
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
totals, files = {}, sorted(glob.glob(sys.argv[1] + "/latency-*.hlog"))
for f in files:
    reader = HistogramLogReader(f, HdrHistogram(1, 60 * 10**9, 3))
    while True:
        h = reader.get_next_interval_histogram()
        if h is None:
            break
        tag = h.get_tag() or "untagged"
        totals[tag] = totals.get(tag, 0) + h.get_total_count()
totals["files"] = len(files)
print(json.dumps(totals))
"#;
    let out = lab.exec_ok(
        &lab.server_ns.clone(),
        &["python3", "-c", script, dir.to_str().unwrap()],
        Duration::from_secs(60),
    );
    Some(serde_json::from_str(&out).expect("script prints JSON"))
}

#[test]
fn latency_log_reads_back_with_hdrh() {
    let test = "latency_log_reads_back_with_hdrh";
    let Some(mut lab) = new_lab_or_skip(test, LabConfig::with_clients(1)) else {
        return;
    };
    let dir = lab.dir().join("latency");
    lab.add_server_settings(&format!(
        "latency_log_dir = \"{}\"\nlatency_log_interval = 1\nlatency_log_keep = 1000",
        dir.display()
    ));
    lab.up();
    let c1 = lab.client_ns[0].clone();
    lab.ping_ok(&c1, BACKEND, 15);
    let log = lab.stop_server();
    let counters = parse_counters(&log);
    assert_eq!(counters.len(), 1, "{log}");
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert!(files >= 2, "expected one file per second, found {files}");
    let Some(totals) = hdrh_totals(&lab, &dir) else {
        return;
    };
    eprintln!("hdrh totals: {totals}, exit counters: {:?}", counters[0]);
    // The worker records one latency sample per packet it received (`tun_rx` + `udp_rx`, each
    // segment and each datagram of a batch), so the log's count equals its own counters.
    let processed = counters[0].tun_rx + counters[0].udp_rx;
    let samples = totals["worker-0"].as_u64().expect("a worker-0 histogram");
    assert_eq!(
        samples, processed,
        "latency log samples vs packets the worker received: {totals}\n{log}"
    );
    assert!(totals["handshake"].as_u64().unwrap_or(0) >= 1, "{totals}");
}

#[test]
fn show_with_100k_peers_is_paged_and_bounded() {
    const PEERS: u32 = 100_000;
    let test = "show_with_100k_peers_is_paged_and_bounded";
    let Some(mut lab) = new_lab_or_skip(test, LabConfig::with_clients(1)) else {
        return;
    };
    // A /10 client subnet holds 100k peers; keys are arbitrary distinct 32-byte strings.
    let mut text = format!(
        "private_key_file = \"server.key\"\nlisten_port = {PORT}\nlisten_addresses = [\"{SERVER_UNDERLAY}\"]\n\
         address = \"10.64.0.1/10\"\nworkers = 1\ntun_name = \"{SERVER_TUN}\"\ncontrol_socket = \"{}\"\n",
        lab.control_socket().display()
    );
    use base64::Engine as _;
    for i in 0..PEERS {
        let mut k = [0x5au8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(k);
        text += &format!("[[peer]]\npublic_key = \"{b64}\"\n");
    }
    std::fs::write(lab.server_config_path(), text).unwrap();
    // Started by hand: loading 100k peers (a debug build) may take longer than the harness
    // waits.
    let started = Instant::now();
    let config = lab.server_config_path();
    let ns = lab.server_ns.clone();
    let server = lab.spawn_proc(
        &ns,
        "server-100k",
        &[BIN, "--config", config.to_str().unwrap()],
    );
    lab.server = Some(server);
    loop {
        let srv = lab.server.as_mut().unwrap();
        if srv.stderr().contains("concentrator is up") {
            break;
        }
        assert!(srv.exited().is_none(), "server exited:\n{}", srv.stderr());
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "server not up after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "note: server with {PEERS} peers up in {:?}",
        started.elapsed()
    );

    let t = Instant::now();
    let out = cli_ok(&lab, &["show", "--json"]);
    let first = t.elapsed();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["peers_total"], PEERS);
    assert_eq!(v["peers"].as_array().unwrap().len(), 50);
    assert!(out.len() < 64 * 1024, "default show is {} bytes", out.len());

    let t = Instant::now();
    let out = cli_ok(
        &lab,
        &["show", "--json", "--offset", "99990", "--limit", "100"],
    );
    let last = t.elapsed();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["peers"].as_array().unwrap().len(), 10);

    let out = cli_ok(&lab, &["show", "--limit", "100000"]);
    let peers = out.lines().filter(|l| l.starts_with("peer: ")).count();
    assert_eq!(peers, 10_000, "a page holds at most 10000 peers");
    let text = cli_ok(&lab, &["show"]);
    assert!(
        text.contains("peers: 100000") && text.contains("--offset 50"),
        "{}",
        &text[..text.len().min(2000)]
    );
    eprintln!(
        "note: show with {PEERS} peers answered in {first:?} (first page) and {last:?} (last page)"
    );
    lab.stop_server();
}

#[test]
fn user_drop_keeps_cap_net_admin_and_cleans_up_nat() {
    let test = "user_drop_keeps_cap_net_admin_and_cleans_up_nat";
    let Some(mut lab) = new_lab_or_skip(test, LabConfig::masqueraded(1)) else {
        return;
    };
    lab.add_server_settings("user = \"nobody\"");
    // The unprivileged server must still read its config on reload.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(lab.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    lab.up();
    let c1 = lab.client_ns[0].clone();
    lab.ping_ok(&c1, BACKEND, 3);
    let status = std::fs::read_to_string(format!("/proc/{}/status", lab.server_pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_string()
    };
    assert!(field("Uid:").contains("65534"), "{}", field("Uid:"));
    let eff = u64::from_str_radix(field("CapEff:").split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(eff, 1 << 12, "only CAP_NET_ADMIN stays effective");
    let server_ns = lab.server_ns.clone();
    let before = lab.nft_tables(&server_ns);
    assert!(!before.trim().is_empty(), "NAT table installed");
    // show works against the socket handed to the user.
    assert_eq!(show_json(&lab, &[])["peers_total"], 1);
    let log = lab.stop_server();
    assert!(log.contains("running as an unprivileged user"), "{log}");
    let after = lab.nft_tables(&server_ns);
    assert!(
        after.trim().is_empty(),
        "NAT rules left behind after an unprivileged exit:\n{after}\n{log}"
    );
}
