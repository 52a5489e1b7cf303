//! The stock-endpoint harness (tests/common/stock.rs) proven against itself: wireguard-go in one
//! namespace and boringtun-cli in another, joined by a veth, configured only with `wg setconf`,
//! `wg set` and `ip`: they handshake, ping each other both ways, and keep talking when one of
//! them moves to another listen port (roaming). Root only.

mod common;

use std::time::Duration;

use common::stock::{wg_keypair, StockConfig, StockEndpoint, StockKind, StockPeer, WgDump};
use common::TempNs;

const DEADLINE: Duration = Duration::from_secs(15);
const UNDERLAY_A: &str = "10.76.0.1";
const UNDERLAY_B: &str = "10.76.0.2";
const TUNNEL_A: &str = "10.77.0.1";
const TUNNEL_B: &str = "10.77.0.2";
const PORT_A: u16 = 51001;
const PORT_B: u16 = 51002;
const PORT_A_MOVED: u16 = 51003;

fn ping_ok(ns: &str, dst: &str) {
    let out = common::cmd::run(
        &[
            "ip", "netns", "exec", ns, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-w", "10",
            dst,
        ],
        None,
        Duration::from_secs(15),
    );
    assert!(
        out.ok() && out.stdout.contains(" 0% packet loss"),
        "ping {dst} from {ns}:\n{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn wireguard_go_and_boringtun_handshake_ping_and_roam() {
    let name = "wireguard_go_and_boringtun_handshake_ping_and_roam";
    if !common::root_or_skip(name) || !common::tools_or_skip(name, common::stock::TOOLS) {
        return;
    }
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("ctr-stock-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ns_a = TempNs::add(format!("ctrk-{pid}-a"));
    let ns_b = TempNs::add(format!("ctrk-{pid}-b"));
    let (va, vb) = (format!("vk{pid:x}a"), format!("vk{pid:x}b"));
    common::cmd::run_ok(
        &[
            "ip", "link", "add", &va, "netns", &ns_a.0, "type", "veth", "peer", "name", &vb,
            "netns", &ns_b.0,
        ],
        None,
        DEADLINE,
    );
    for (ns, link, addr) in [(&ns_a.0, &va, UNDERLAY_A), (&ns_b.0, &vb, UNDERLAY_B)] {
        let ip = |args: &[&str]| {
            let mut argv = vec!["ip", "-n", ns];
            argv.extend_from_slice(args);
            common::cmd::run_ok(&argv, None, DEADLINE);
        };
        ip(&["link", "set", "lo", "up"]);
        ip(&["addr", "add", &format!("{addr}/24"), "dev", link]);
        ip(&["link", "set", link, "up"]);
    }

    // Declared after the namespaces: dropped (stopped) before them.
    let a = StockEndpoint::start(StockKind::WireguardGo, &ns_a.0, &dir);
    let b = StockEndpoint::start(StockKind::Boringtun, &ns_b.0, &dir);
    let (a_key, a_pub) = wg_keypair();
    let (b_key, b_pub) = wg_keypair();
    let (psk, _) = wg_keypair();
    a.setconf(&StockConfig {
        private_key: a_key,
        listen_port: Some(PORT_A),
        peers: vec![StockPeer {
            public_key: b_pub.clone(),
            preshared_key: Some(psk.clone()),
            endpoint: Some(format!("{UNDERLAY_B}:{PORT_B}")),
            allowed_ips: vec![format!("{TUNNEL_B}/32")],
            persistent_keepalive: Some(1),
        }],
    });
    // B learns A's endpoint from A's packets.
    b.setconf(&StockConfig {
        private_key: b_key,
        listen_port: Some(PORT_B),
        peers: vec![StockPeer {
            public_key: a_pub.clone(),
            preshared_key: Some(psk),
            endpoint: None,
            allowed_ips: vec![format!("{TUNNEL_A}/32")],
            persistent_keepalive: None,
        }],
    });
    a.up(&[&format!("{TUNNEL_A}/24")], 1420);
    b.up(&[&format!("{TUNNEL_B}/24")], 1420);

    // The dumps show what was configured.
    let dump_a = a.dump();
    assert_eq!(dump_a.interface.public_key, a_pub);
    assert_eq!(dump_a.interface.listen_port, PORT_A);
    let peer_b = dump_a.peer(&b_pub).expect("B in A's dump");
    assert_eq!(peer_b.allowed_ips, [format!("{TUNNEL_B}/32")]);
    assert_eq!(
        peer_b.endpoint,
        Some(format!("{UNDERLAY_B}:{PORT_B}").parse().unwrap())
    );
    assert_eq!(peer_b.persistent_keepalive, Some(1));
    assert!(peer_b.preshared_key.is_some());

    // Handshake (the keepalive starts it), then ping both ways.
    a.wait_handshake(&b_pub, DEADLINE);
    let dump_b = b.wait_handshake(&a_pub, DEADLINE);
    assert_eq!(
        dump_b.peer(&a_pub).unwrap().endpoint,
        Some(format!("{UNDERLAY_A}:{PORT_A}").parse().unwrap())
    );
    ping_ok(&a.ns, TUNNEL_B);
    ping_ok(&b.ns, TUNNEL_A);

    // Roaming: A moves to another port; its next packets (keepalives, pings) come from there,
    // B follows them, and traffic flows both ways again.
    a.set_listen_port(PORT_A_MOVED);
    assert_eq!(a.dump().interface.listen_port, PORT_A_MOVED);
    ping_ok(&a.ns, TUNNEL_B);
    let moved = format!("{UNDERLAY_A}:{PORT_A_MOVED}").parse().unwrap();
    let end = std::time::Instant::now() + DEADLINE;
    while b.dump().peer(&a_pub).unwrap().endpoint != Some(moved) {
        assert!(
            std::time::Instant::now() < end,
            "B did not follow A to {moved}: {:#?}",
            b.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ping_ok(&b.ns, TUNNEL_A);
    let dump_b = b.dump();
    let a_seen = dump_b.peer(&a_pub).unwrap();
    assert!(a_seen.rx_bytes > 0 && a_seen.tx_bytes > 0, "{dump_b:#?}");

    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dump parser, on the format `wg show IFACE dump` prints (no root needed).
#[test]
fn dumps_parse() {
    let text = "cHJpdg==\tcHVi\t51820\toff\n\
                cGVlcg==\t(none)\t10.0.0.2:4242\t10.77.0.2/32,fd77::2/128\t1700000000\t1234\t5678\t25\n\
                b3RoZXI=\tcHNr\t(none)\t(none)\t0\t0\t0\toff\n";
    let d = WgDump::parse(text).unwrap();
    assert_eq!(d.interface.listen_port, 51820);
    assert_eq!(d.peers.len(), 2);
    let p = &d.peers[0];
    assert_eq!(p.endpoint, Some("10.0.0.2:4242".parse().unwrap()));
    assert_eq!(p.allowed_ips, ["10.77.0.2/32", "fd77::2/128"]);
    assert_eq!(p.latest_handshake, Some(1_700_000_000));
    assert_eq!((p.rx_bytes, p.tx_bytes), (1234, 5678));
    assert_eq!(p.persistent_keepalive, Some(25));
    assert_eq!(p.preshared_key, None);
    let q = d.peer("b3RoZXI=").unwrap();
    assert_eq!(q.preshared_key.as_deref(), Some("cHNr"));
    assert_eq!((q.endpoint, q.latest_handshake), (None, None));
    assert!(q.allowed_ips.is_empty());
    assert!(WgDump::parse("a\tb\n").is_err());
}
