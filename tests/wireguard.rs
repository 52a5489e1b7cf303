//! End-to-end with stock WireGuard clients as the far end: wireguard-go (Debian's package) and
//! boringtun-cli (`cargo install`), configured with `wg setconf` / `wg set` and `ip` only
//! (tests/common/stock.rs), against the server in namespaces, beside a native client
//! (`concentrator connect`) on the same UDP port.
//!
//! Per client kind (one test each, so the two run in parallel): handshake, ping both ways,
//! iperf3 TCP both ways, a SHA-256-checked transfer both ways, the native client at the same
//! time, roaming (the client's source port changes) and a server restart the client survives.
//! And the live path: a peer added with `wg set` on the server's UAPI connects, is kept by
//! `concentrator save` and `reload`, is cut off by `wg set ... remove`, and comes back when
//! added again.
//!
//! Needs root, `wireguard-go`, `boringtun-cli`, `wg` and `iperf3` on the path (`sudo
//! scripts/deps.sh tests`); prints `SKIPPED <name>: ...` otherwise.

mod common;

use std::time::{Duration, Instant};

use common::ctl::cli_ok;
use common::stock::{wg_keypair, StockConfig, StockEndpoint, StockKind, StockPeer};
use common::traffic::{iperf3_bytes, iperf3_client, transfer_sha256_bytes};
use common::*;

/// The stock client's address: fixed in its `[[peer]]` (the handshake carries none), set on
/// its interface by `ip`.
const STOCK_ADDRESS: &str = "10.66.0.200";
/// The stock client's listen port, and the one it roams to.
const STOCK_PORT: u16 = 51900;
const STOCK_PORT_ROAMED: u16 = 51901;
/// The backend's network, routed into the tunnel by the client.
const BACKEND_NET: &str = "10.1.0.0/24";
/// For a handshake, or for the server to see a new endpoint.
const DEADLINE: Duration = Duration::from_secs(15);
/// For traffic to flow again after a server restart. A stock client starts a new handshake
/// only after its data went unanswered for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s,
/// WireGuard paper section 6.2), so this leaves it twice that.
const RESUME_DEADLINE: Duration = Duration::from_secs(30);
/// Bytes of each checksummed transfer: enough for many full-size packets, quick in a debug
/// build.
const TRANSFER_BYTES: usize = 4 * 1024 * 1024;
/// Seconds of each iperf3 run.
const IPERF_SECS: u64 = 2;

/// How the server is stopped before it is started again.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Sigterm,
    Sigkill,
}

/// The tools every test here needs.
fn tools(name: &str) -> bool {
    lab_or_skip(name)
        && tools_or_skip(name, common::stock::TOOLS)
        && tools_or_skip(name, &["iperf3"])
}

/// Starts `kind` in `ns` with `private_key`, the server as its one peer (routing the client
/// subnet and the backend's network), `address`/16 on its interface and MTU 1420, as an
/// operator would with `wg setconf` and `ip`.
fn start_stock(
    lab: &Lab,
    kind: StockKind,
    ns: &str,
    private_key: String,
    address: &str,
) -> StockEndpoint {
    let stock = StockEndpoint::start(kind, ns, lab.dir());
    stock.setconf(&StockConfig {
        private_key,
        listen_port: Some(STOCK_PORT),
        peers: vec![StockPeer {
            public_key: lab.server_pubkey.clone(),
            preshared_key: None,
            endpoint: Some(format!("{SERVER_UNDERLAY}:{PORT}")),
            allowed_ips: vec![CLIENT_SUBNET.to_string(), BACKEND_NET.to_string()],
            persistent_keepalive: None,
        }],
    });
    stock.up(&[&format!("{address}/16")], 1420);
    stock.route(BACKEND_NET);
    stock
}

/// The peer `key` in `show --json`, if it runs.
fn show_peer(lab: &Lab, key: &str) -> Option<serde_json::Value> {
    lab.show_json()["peers"]
        .as_array()
        .expect("peers in show --json")
        .iter()
        .find(|p| p["public_key"] == key)
        .cloned()
}

/// Waits until the server's `show --json` says peer `key` is at `endpoint`.
fn wait_endpoint(lab: &Lab, key: &str, endpoint: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        let peer = show_peer(lab, key).expect("the stock peer in show --json");
        if peer["endpoint"] == endpoint {
            return;
        }
        assert!(
            Instant::now() < end,
            "the server did not follow the client to {endpoint} within {DEADLINE:?}: {peer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pings `dst` from `ns` once at a time until a reply comes back; returns how long it took.
fn ping_until_reply(lab: &Lab, ns: &str, dst: &str, deadline: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if lab.ping(ns, dst, 1, &[]).ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < deadline,
            "no reply from {dst} in {ns} within {deadline:?}\n{}",
            lab.logs()
        );
    }
}

/// Asserts a ping from `ns` to `dst` gets no reply at all.
fn ping_fails(lab: &Lab, ns: &str, dst: &str) {
    let out = lab.ping(ns, dst, 3, &[]);
    assert!(
        !out.ok() && out.stdout.contains("100% packet loss"),
        "{dst} still answers from {ns}:\n{}{}",
        out.stdout,
        out.stderr
    );
}

/// The whole end-to-end run with one stock client kind, stopping the server with `stop` for
/// the restart.
fn stock_client_end_to_end(name: &str, kind: StockKind, stop: Stop) {
    if !tools(name) {
        return;
    }
    // Client 1 runs `concentrator connect`; client 2's namespace holds the stock client, whose
    // key is not the lab's: its peer is written here, with the WireGuard suite.
    let mut lab = Lab::new(LabConfig::second_client_unknown());
    let (stock_private, stock_public) = wg_keypair();
    lab.add_wireguard_peer(&stock_public, STOCK_ADDRESS);
    lab.start_server();
    lab.start_client(0);
    let native_address = lab.wait_tunnel(0).to_string();
    let (native_ns, stock_ns) = (lab.client_ns[0].clone(), lab.client_ns[1].clone());
    let (backend, server) = (lab.backend_ns.clone(), lab.server_ns.clone());

    // Declared after the lab: stopped before its namespaces go.
    let stock = start_stock(&lab, kind, &stock_ns, stock_private, STOCK_ADDRESS);
    // The first packet starts the handshake (both clients queue it meanwhile).
    let first_reply = ping_until_reply(&lab, &stock_ns, BACKEND, DEADLINE);
    eprintln!("{name}: first reply through the tunnel after {first_reply:?}");
    // boringtun's UAPI gives the handshake's age where `wg` expects its time, so its dump shows
    // one only a second after the handshake: waited for, not assumed.
    let dump = stock.wait_handshake(&lab.server_pubkey, DEADLINE);
    let server_seen = dump.peer(&lab.server_pubkey).unwrap();
    assert_eq!(
        server_seen.endpoint,
        Some(format!("{SERVER_UNDERLAY}:{PORT}").parse().unwrap())
    );

    // Ping both ways: to the backend and the server's tunnel address, and back from both.
    lab.ping_ok(&stock_ns, BACKEND, 5);
    lab.ping_ok(&stock_ns, SERVER_VIRTUAL, 3);
    lab.ping_ok(&backend, STOCK_ADDRESS, 5);
    lab.ping_ok(&server, STOCK_ADDRESS, 3);
    // The native client on the same port at the same time.
    lab.ping_ok(&native_ns, BACKEND, 3);
    lab.ping_ok(&backend, &native_address, 3);
    let show = lab.show_json();
    assert_eq!(show["sessions"].as_u64(), Some(2), "show --json: {show}");
    let stock_peer = show_peer(&lab, &stock_public).unwrap();
    assert_eq!(stock_peer["protocol"], "wireguard", "{stock_peer}");
    assert_eq!(stock_peer["address"], STOCK_ADDRESS, "{stock_peer}");
    assert_eq!(
        stock_peer["endpoint"],
        format!("10.0.0.12:{STOCK_PORT}"),
        "{stock_peer}"
    );
    assert!(
        stock_peer["latest_handshake_secs_ago"].as_u64().is_some(),
        "the server saw no handshake: {stock_peer}"
    );
    let native_peer = show_peer(&lab, &lab.client_pubkeys[0]).unwrap();
    assert_eq!(native_peer["protocol"], "native", "{native_peer}");

    // iperf3 TCP from the client to the backend and back (-R): data flowed both ways.
    for (port, extra) in [(5201, &[][..]), (5202, &["-R"][..])] {
        let run = iperf3_client(&mut lab, 1, port, IPERF_SECS, extra);
        let (sent, received) = iperf3_bytes(&run);
        assert!(
            sent > 0 && received > 0,
            "iperf3 {extra:?}: sent {sent}, received {received}"
        );
        eprintln!("{name}: iperf3 {extra:?}: {sent} bytes sent, {received} received");
    }

    // A transfer checked by SHA-256 at both ends, each way.
    for (from, to, addr, port) in [
        (&stock_ns, &backend, BACKEND, 7001),
        (&backend, &stock_ns, STOCK_ADDRESS, 7002),
    ] {
        let what = format!("{from} -> {addr}");
        let t = transfer_sha256_bytes(&lab, from, to, addr, port, TRANSFER_BYTES, Some(&what));
        assert_eq!(t.sent, t.got, "{what}: the receiver got other bytes");
        assert!(
            t.sent.starts_with(&format!("{TRANSFER_BYTES} ")),
            "{what}: {}",
            t.sent
        );
        eprintln!(
            "{name}: {what}: {TRANSFER_BYTES} bytes, sha256 equal, {:?}",
            t.elapsed
        );
    }

    // Roaming: the client's source port changes (a NAT remapping it looks the same). Its next
    // packets come from there; the server follows and answers there.
    stock.set_listen_port(STOCK_PORT_ROAMED);
    lab.ping_ok(&stock_ns, BACKEND, 3);
    wait_endpoint(
        &lab,
        &stock_public,
        &format!("10.0.0.12:{STOCK_PORT_ROAMED}"),
    );
    lab.ping_ok(&backend, STOCK_ADDRESS, 3);

    // A server restart with the same config: the client keeps its session until its data goes
    // unanswered, then handshakes again.
    let stopped = Instant::now();
    match stop {
        Stop::Sigterm => {
            lab.stop_server();
        }
        Stop::Sigkill => lab.kill_server(),
    }
    lab.start_server();
    let resumed = ping_until_reply(&lab, &stock_ns, BACKEND, RESUME_DEADLINE);
    eprintln!(
        "{name}: traffic resumed {resumed:?} after the restart ({:?} after the {stop:?})",
        stopped.elapsed()
    );
    lab.ping_ok(&stock_ns, BACKEND, 3);
    lab.ping_ok(&backend, STOCK_ADDRESS, 3);
    let after = show_peer(&lab, &stock_public).unwrap();
    assert_eq!(after["address"], STOCK_ADDRESS, "{after}");
    assert_eq!(
        after["endpoint"],
        format!("10.0.0.12:{STOCK_PORT_ROAMED}"),
        "{after}"
    );

    let log = lab.stop_server();
    let counters = parse_counters(&log);
    assert!(
        counters.iter().all(|c| c.dropped("authentication") == 0),
        "{counters:?}"
    );
    check_train_cipher_logged(&log);
    drop(stock);
}

/// The start line names how WireGuard trains are sealed (`wireguard_trains=`), and what it
/// says agrees with the CPU's flags as the kernel lists them: the batch needs AVX-512
/// F, BW and IFMA.
fn check_train_cipher_logged(log: &str) {
    let up = common::start_line(log);
    let said = up
        .split("wireguard_trains=")
        .nth(1)
        .unwrap_or_else(|| panic!("no wireguard_trains= in the start line: {up}"));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let has_batch = ["avx512f", "avx512bw", "avx512ifma"]
        .iter()
        .all(|f| flags.contains(f));
    assert_eq!(
        said.starts_with("\"chacha20-poly1305, eight"),
        has_batch,
        "the start line says {said}, the CPU's flags say AVX-512 F/BW/IFMA: {has_batch}"
    );
}

#[test]
fn wireguard_go_client_end_to_end() {
    stock_client_end_to_end(
        "wireguard_go_client_end_to_end",
        StockKind::WireguardGo,
        Stop::Sigterm,
    );
}

#[test]
fn boringtun_client_end_to_end() {
    stock_client_end_to_end(
        "boringtun_client_end_to_end",
        StockKind::Boringtun,
        Stop::Sigkill,
    );
}

/// `wg ARGS...` against the server's UAPI socket (in the file system, so from any namespace),
/// which must succeed.
fn wg_ok(args: &[&str]) -> String {
    let mut argv = vec!["wg"];
    argv.extend_from_slice(args);
    let out = cmd::run(&argv, None, Duration::from_secs(10));
    assert!(out.ok(), "wg {args:?} failed: {}{}", out.stdout, out.stderr);
    out.stdout
}

#[test]
fn a_peer_added_with_wg_set_connects_is_saved_kept_and_removed() {
    let name = "a_peer_added_with_wg_set_connects_is_saved_kept_and_removed";
    if !tools(name) {
        return;
    }
    // Client 1's peer is in the file (and stays idle); client 2's namespace holds the stock
    // client, whose peer only `wg set` adds.
    let mut lab = Lab::new(LabConfig::second_client_unknown());
    // The UAPI socket is named after the interface, in a directory all namespaces share.
    let interface = format!("wl{:x}x{}", std::process::id(), lab.id);
    let config = lab.server_config_path();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("tun_name = \"{SERVER_TUN}\""),
        &format!("tun_name = \"{interface}\""),
    );
    std::fs::write(&config, text).unwrap();
    lab.add_server_settings("uapi = true");
    lab.start_server();
    let (stock_ns, backend) = (lab.client_ns[1].clone(), lab.backend_ns.clone());

    const LIVE_ADDRESS: &str = "10.66.0.201";
    let (stock_private, stock_public) = wg_keypair();
    let live_ips = format!("{LIVE_ADDRESS}/32");
    let add_stock_peer: [&str; 6] = [
        "set",
        &interface,
        "peer",
        &stock_public,
        "allowed-ips",
        &live_ips,
    ];
    wg_ok(&add_stock_peer);
    let added = show_peer(&lab, &stock_public).expect("the peer `wg set` added");
    assert_eq!(added["protocol"], "wireguard", "{added}");
    assert_eq!(added["address"], LIVE_ADDRESS, "{added}");

    let stock = start_stock(
        &lab,
        StockKind::WireguardGo,
        &stock_ns,
        stock_private,
        LIVE_ADDRESS,
    );
    let _ = lab.ping(&stock_ns, BACKEND, 1, &[]);
    stock.wait_handshake(&lab.server_pubkey, DEADLINE);
    lab.ping_ok(&stock_ns, BACKEND, 3);
    lab.ping_ok(&backend, LIVE_ADDRESS, 3);

    // `concentrator save` writes it into the file.
    let out = cli_ok(&lab, &["save", "--config", config.to_str().unwrap()]);
    assert!(out.contains("1 added, 0 removed"), "{out}");
    let saved = std::fs::read_to_string(&config).unwrap();
    let entry = saved
        .split("[[peer]]")
        .find(|p| p.contains(&stock_public))
        .unwrap_or_else(|| panic!("the live peer is not in the saved file:\n{saved}"));
    assert!(entry.contains("protocol = \"wireguard\""), "{saved}");
    assert!(
        entry.contains(&format!("address = \"{LIVE_ADDRESS}\"")),
        "{saved}"
    );

    // A reload keeps it: same address, same session (no new handshake), traffic flows.
    let handshake = stock
        .dump()
        .peer(&lab.server_pubkey)
        .unwrap()
        .latest_handshake;
    let r: serde_json::Value = serde_json::from_str(&cli_ok(&lab, &["reload", "--json"])).unwrap();
    for list in ["added", "removed", "changed"] {
        assert!(r[list].as_array().unwrap().is_empty(), "{list}: {r}");
    }
    let kept = show_peer(&lab, &stock_public).expect("the peer after the reload");
    assert_eq!(kept["address"], LIVE_ADDRESS, "{kept}");
    assert_eq!(kept["protocol"], "wireguard", "{kept}");
    lab.ping_ok(&stock_ns, BACKEND, 3);
    lab.ping_ok(&backend, LIVE_ADDRESS, 3);
    assert_eq!(
        stock
            .dump()
            .peer(&lab.server_pubkey)
            .unwrap()
            .latest_handshake,
        handshake,
        "the reload cost the client its session"
    );

    // `wg set ... remove` removes it, and its traffic stops both ways.
    wg_ok(&["set", &interface, "peer", &stock_public, "remove"]);
    assert!(show_peer(&lab, &stock_public).is_none());
    ping_fails(&lab, &stock_ns, BACKEND);
    ping_fails(&lab, &backend, LIVE_ADDRESS);

    // Added again, it gets the same address, and the client is back once it handshakes anew
    // (as after a restart: when its data has gone unanswered long enough).
    wg_ok(&add_stock_peer);
    let again = show_peer(&lab, &stock_public).expect("the peer added again");
    assert_eq!(again["address"], LIVE_ADDRESS, "{again}");
    let resumed = ping_until_reply(&lab, &stock_ns, BACKEND, RESUME_DEADLINE);
    eprintln!("{name}: traffic resumed {resumed:?} after the peer was added again");
    lab.ping_ok(&backend, LIVE_ADDRESS, 3);
    lab.stop_server();
    drop(stock);
}
