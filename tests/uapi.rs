//! WireGuard's userspace API against a running server, with the stock `wg` tool: `wg show
//! dump` agrees with `concentrator show --json` field by field, `wg set` adds, changes (moving
//! a network from the peer that had it) and removes peers live, `wg showconf` parses and
//! `wg syncconf` with it is accepted, a stuck client does not block `wg show`, and the socket
//! is refused while live, replaced when stale and removed on exit.
//!
//! Root only (namespaces); skipped with a message without root or without `wg`. The socket
//! directory (/var/run/wireguard) is not per network namespace, so every lab's interface name
//! carries the test process's PID.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const WG_DEADLINE: Duration = Duration::from_secs(10);

/// A lab whose server serves the UAPI under an interface name unique to this test.
fn uapi_lab(clients: usize) -> (Lab, String) {
    let lab = Lab::new(LabConfig::with_clients(clients));
    let interface = format!("wu{:x}x{}", std::process::id(), lab.id);
    let path = lab.server_config_path();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("tun_name = \"{SERVER_TUN}\""),
        &format!("tun_name = \"{interface}\""),
    );
    std::fs::write(&path, text).unwrap();
    lab.add_server_settings("uapi = true");
    (lab, interface)
}

fn socket_path(interface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{interface}.sock"))
}

fn wg(args: &[&str]) -> Output {
    let mut argv = vec!["wg"];
    argv.extend_from_slice(args);
    cmd::run(&argv, None, WG_DEADLINE)
}

fn wg_ok(args: &[&str]) -> String {
    let out = wg(args);
    assert!(
        out.ok(),
        "wg {args:?} failed ({:?}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// One peer line of `wg show IF dump`.
#[derive(Debug, PartialEq)]
struct DumpPeer {
    preshared_key: String,
    endpoint: String,
    allowed_ips: Vec<String>,
    latest_handshake: u64,
    rx: u64,
    tx: u64,
    keepalive: String,
}

/// `wg show IF dump`: the interface line (private key, public key, port, fwmark) and the
/// peers by public key.
fn dump(interface: &str) -> (Vec<String>, BTreeMap<String, DumpPeer>) {
    let text = wg_ok(&["show", interface, "dump"]);
    let mut lines = text.lines();
    let head: Vec<String> = lines
        .next()
        .expect("interface line")
        .split('\t')
        .map(str::to_string)
        .collect();
    let peers = lines
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 8, "peer line {line:?}");
            let allowed_ips = match f[3] {
                "(none)" => Vec::new(),
                list => list.split(',').map(str::to_string).collect(),
            };
            let peer = DumpPeer {
                preshared_key: f[1].to_string(),
                endpoint: f[2].to_string(),
                allowed_ips,
                latest_handshake: f[4].parse().unwrap(),
                rx: f[5].parse().unwrap(),
                tx: f[6].parse().unwrap(),
                keepalive: f[7].to_string(),
            };
            (f[0].to_string(), peer)
        })
        .collect();
    (head, peers)
}

fn show_peers(lab: &Lab) -> Vec<serde_json::Value> {
    lab.show_json()["peers"].as_array().unwrap().clone()
}

fn show_peer(lab: &Lab, key: &str) -> Option<serde_json::Value> {
    show_peers(lab)
        .into_iter()
        .find(|p| p["public_key"].as_str() == Some(key))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `wg show dump` and `concentrator show --json` taken while nothing moved (the same `show`
/// before and after the dump), compared field by field.
fn dump_agrees_with_show(lab: &Lab, interface: &str) {
    for _ in 0..10 {
        let before = show_peers(lab);
        let (_, peers) = dump(interface);
        let after = show_peers(lab);
        let counters = |v: &[serde_json::Value]| -> Vec<(u64, u64)> {
            v.iter()
                .map(|p| {
                    (
                        p["rx_bytes"].as_u64().unwrap(),
                        p["tx_bytes"].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        if counters(&before) != counters(&after) {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert_eq!(peers.len(), after.len(), "dump {peers:?}\nshow {after:?}");
        for p in &after {
            let key = p["public_key"].as_str().unwrap();
            let d = peers
                .get(key)
                .unwrap_or_else(|| panic!("{key} not in the dump {peers:?}"));
            let endpoint = p["endpoint"].as_str().unwrap_or("(none)");
            assert_eq!(d.endpoint, endpoint, "{key}");
            let mut expected = vec![format!("{}/32", p["address"].as_str().unwrap())];
            if let Some(a6) = p["address6"].as_str() {
                expected.push(format!("{a6}/128"));
            }
            if let Some(nets) = p["allowed_ips"].as_array() {
                expected.extend(nets.iter().map(|n| n.as_str().unwrap().to_string()));
            }
            assert_eq!(d.allowed_ips, expected, "{key}");
            assert_eq!(d.rx, p["rx_bytes"].as_u64().unwrap(), "{key} rx");
            assert_eq!(d.tx, p["tx_bytes"].as_u64().unwrap(), "{key} tx");
            assert_eq!(d.preshared_key, "(none)", "{key}");
            assert_eq!(d.keepalive, "off", "{key}");
            match p["latest_handshake_secs_ago"].as_u64() {
                None => assert_eq!(d.latest_handshake, 0, "{key}: never"),
                Some(ago) => {
                    let expected = unix_now() - ago;
                    assert!(
                        d.latest_handshake.abs_diff(expected) <= 2,
                        "{key}: handshake at {} vs {expected} ({ago} s ago)",
                        d.latest_handshake
                    );
                }
            }
        }
        return;
    }
    panic!("the counters never stood still long enough to compare");
}

#[test]
fn wg_show_set_and_showconf_work_against_the_server() {
    let test = "wg_show_set_and_showconf_work_against_the_server";
    if !lab_or_skip(test) || !tools_or_skip(test, &["wg"]) {
        return;
    }
    let (mut lab, interface) = uapi_lab(2);
    lab.up();
    for ns in lab.client_ns.clone() {
        lab.ping_ok(&ns, SERVER_VIRTUAL, 3);
    }
    let socket = socket_path(&interface);
    let mode = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    assert!(mode.file_type().is_socket());
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);

    // The interface line: the server's keys and port, no mark.
    let (head, peers) = dump(&interface);
    let private = std::fs::read_to_string(lab.dir().join("server.key")).unwrap();
    assert_eq!(head[0], private.trim());
    assert_eq!(head[1], lab.server_pubkey);
    assert_eq!(head[2], PORT.to_string());
    assert_eq!(head[3], "off");
    assert_eq!(peers.len(), 2);
    for key in &lab.client_pubkeys {
        let p = &peers[key];
        assert!(p.rx > 0 && p.tx > 0, "{key}: {p:?}");
        assert!(p.latest_handshake > 0, "{key}: {p:?}");
    }
    dump_agrees_with_show(&lab, &interface);

    // A stuck client (half a request) and an idle one do not block `wg show`.
    let idle = UnixStream::connect(&socket).unwrap();
    let mut stuck = UnixStream::connect(&socket).unwrap();
    stuck.write_all(b"set=1\npublic_key=").unwrap();
    let started = Instant::now();
    wg_ok(&["show", &interface, "dump"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "wg show waited behind the stuck connections"
    );

    // `wg set` adds a peer live, with a network.
    let (_, new_key) = keypair();
    wg_ok(&[
        "set",
        &interface,
        "peer",
        &new_key,
        "allowed-ips",
        "10.99.0.0/24",
    ]);
    let added = show_peer(&lab, &new_key).expect("the new peer in show");
    assert_eq!(added["allowed_ips"], serde_json::json!(["10.99.0.0/24"]));
    assert_eq!(lab.show_json()["peers_total"].as_u64(), Some(3));
    dump_agrees_with_show(&lab, &interface);

    // Giving the network to client 1 takes it from the new peer (WireGuard's semantics).
    let c1 = lab.client_pubkeys[0].clone();
    wg_ok(&[
        "set",
        &interface,
        "peer",
        &c1,
        "allowed-ips",
        "10.99.0.0/24",
    ]);
    let moved = show_peer(&lab, &c1).unwrap();
    assert_eq!(moved["allowed_ips"], serde_json::json!(["10.99.0.0/24"]));
    let left = show_peer(&lab, &new_key).unwrap();
    assert!(left.get("allowed_ips").is_none(), "{left}");
    let routes = lab.ip(&lab.server_ns.clone(), &["route", "show", "10.99.0.0/24"]);
    assert!(routes.contains(&interface), "kernel route kept: {routes}");
    dump_agrees_with_show(&lab, &interface);

    // `wg set ... remove` removes it.
    wg_ok(&["set", &interface, "peer", &new_key, "remove"]);
    assert!(show_peer(&lab, &new_key).is_none());
    assert_eq!(lab.show_json()["peers_total"].as_u64(), Some(2));

    // What the server cannot change is refused with the reference's errno.
    let port = wg(&["set", &interface, "listen-port", "1"]);
    assert!(!port.ok(), "a new listen port must be refused");
    assert!(port.stderr.contains("in use"), "{}", port.stderr);
    wg_ok(&["set", &interface, "listen-port", &PORT.to_string()]);

    // `wg showconf` parses, and feeding it back with `wg syncconf` changes nothing.
    let conf = wg_ok(&["showconf", &interface]);
    let mut sections = Vec::new();
    for line in conf.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with('[') {
            assert!(line == "[Interface]" || line == "[Peer]", "{line}");
            sections.push((line.to_string(), BTreeMap::new()));
            continue;
        }
        let (k, v) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("not `Key = value`: {line:?}"));
        sections
            .last_mut()
            .expect("a section first")
            .1
            .insert(k.to_string(), v.to_string());
    }
    assert_eq!(sections[0].0, "[Interface]");
    assert_eq!(sections[0].1["ListenPort"], PORT.to_string());
    assert_eq!(sections[0].1["PrivateKey"], private.trim());
    let peer_keys: Vec<&String> = sections[1..].iter().map(|s| &s.1["PublicKey"]).collect();
    assert_eq!(peer_keys.len(), 2, "{conf}");
    for key in &lab.client_pubkeys {
        assert!(peer_keys.contains(&key), "{key} not in {conf}");
    }
    let conf_path = lab.dir().join("showconf.conf");
    std::fs::write(&conf_path, &conf).unwrap();
    wg_ok(&["syncconf", &interface, conf_path.to_str().unwrap()]);
    assert_eq!(lab.show_json()["peers_total"].as_u64(), Some(2));
    assert_eq!(
        show_peer(&lab, &c1).unwrap()["allowed_ips"],
        serde_json::json!(["10.99.0.0/24"])
    );
    // Both were dropped by the server after their idle time, with no answer.
    for (name, mut stream) in [("idle", idle), ("stuck", stuck)] {
        use std::io::Read;
        stream
            .set_read_timeout(Some(Duration::from_secs(40)))
            .unwrap();
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        assert!(
            matches!(read, Ok(0)),
            "the {name} connection should have been closed: {read:?}"
        );
    }

    // Stopped, the server removes its socket.
    lab.stop_server();
    assert!(!socket.exists(), "{} left behind", socket.display());
}

#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let test = "a_live_socket_is_refused_and_a_stale_one_replaced";
    if !lab_or_skip(test) || !tools_or_skip(test, &["wg"]) {
        return;
    }
    let (mut lab, interface) = uapi_lab(1);
    let socket = socket_path(&interface);
    // As the server would create it (root's only).
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(socket.parent().unwrap());
    // Someone answers on the socket: the server must not start.
    let live = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let config = lab.server_config_path();
    let mut server = lab.spawn_proc(
        &lab.server_ns.clone(),
        "refused",
        &[BIN, "--config", config.to_str().unwrap()],
    );
    let status = server.wait(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the server must refuse a live socket: {}",
        server.stderr()
    );
    assert!(
        server.stderr().contains("in use"),
        "the reason names the socket: {}",
        server.stderr()
    );
    // The listener goes, its file stays: stale. The server replaces it and answers on it.
    drop(live);
    assert!(socket.exists());
    lab.up();
    let (head, peers) = dump(&interface);
    assert_eq!(head[1], lab.server_pubkey);
    assert_eq!(peers.len(), 1);
    lab.stop_server();
    assert!(!socket.exists());
}
