//! End-to-end tests: the real binary in network namespaces (see `tests/common`).
//!
//! They need root (network namespaces, TUN, nftables) and print `SKIPPED <name>: ...` otherwise.
//! Each test builds its own lab with unique names, so they may run in parallel.
//! `E2E_LOG=debug` raises the product's log level; `E2E_KEEP=1` keeps a failed lab's logs.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::net::{
    assert_forwarding_on_only_while_running, assert_full_tunnel_client_leaves_no_trace,
    assert_masqueraded_then_table_gone, count_input, no_route_back_and_nat_counters, route_dev,
    routes_of_both_families, wait_link_gone,
};
use common::setup::new_lab_or_skip;
use common::traffic::{iperf3_bytes, iperf3_client, transfer_sha256, Transfer};
use common::*;

fn sum(c: &[WorkerCounters], f: impl Fn(&WorkerCounters) -> u64) -> u64 {
    c.iter().map(f).sum()
}

#[test]
fn ping_both_directions() {
    let Some(mut lab) = new_lab_or_skip("ping_both_directions", LabConfig::with_clients(1)) else {
        return;
    };
    let addr = lab.up()[0];
    let subnet: ipnet::Ipv4Net = CLIENT_SUBNET.parse().unwrap();
    assert!(
        subnet.contains(&addr),
        "client got {addr}, outside {CLIENT_SUBNET}"
    );
    let c1 = lab.client_ns[0].clone();
    let backend = lab.backend_ns.clone();
    assert_eq!(
        route_dev(&lab, &c1, BACKEND),
        CLIENT_TUN,
        "split route not via the TUN"
    );

    lab.ping_ok(&c1, BACKEND, 5);
    lab.ping_ok(&backend, &addr.to_string(), 5);
    lab.ping_ok(&c1, SERVER_VIRTUAL, 3);
    let show = lab.show_json();
    assert_eq!(show["sessions"].as_u64(), Some(1), "show --json: {show}");
    assert!(
        show["handshakes"]["completed"].as_u64() >= Some(1),
        "{show}"
    );

    let log = lab.stop_server();
    let c = parse_counters(&log);
    assert_eq!(c.len(), 1, "expected one worker counter line:\n{log}");
    assert!(c[0].udp_rx >= 10 && c[0].tun_tx >= 10, "{c:?}");
    assert!(c[0].tun_rx >= 10 && c[0].udp_tx >= 10, "{c:?}");
    // Nothing dropped: neither TUN sends the kernel's IPv6 housekeeping (router solicitations
    // from a link-local address) into the tunnel.
    assert_eq!(c[0].drops, 0, "{c:?}");
}

#[test]
fn iperf3_tcp_both_directions() {
    if !lab_or_skip("iperf3_tcp_both_directions")
        || !tools_or_skip("iperf3_tcp_both_directions", &["iperf3", "ss"])
    {
        return;
    }
    let mut lab = Lab::new(LabConfig::with_clients(1));
    lab.up();
    for (port, reverse) in [(5201, false), (5202, true)] {
        let extra: &[&str] = if reverse { &["-R"] } else { &[] };
        let (sent, received) = iperf3_bytes(&iperf3_client(&mut lab, 0, port, 3, extra));
        eprintln!("iperf3 reverse={reverse}: sent {sent} received {received} bytes");
        assert!(received > 0, "reverse={reverse}: nothing received");
        // iperf3's receiver stops counting when the 3 s are over, with data still in flight, so
        // `received` may be a little less than `sent` on any link (seen on veth without the
        // tunnel too). Byte-exact delivery is checked by `transfer_20mb_sha256`.
        assert!(
            received <= sent,
            "reverse={reverse}: received {received} > sent {sent}"
        );
    }
}

#[test]
fn transfer_20mb_sha256() {
    let Some(mut lab) = new_lab_or_skip("transfer_20mb_sha256", LabConfig::with_clients(1)) else {
        return;
    };
    lab.up();
    let backend = lab.backend_ns.clone();
    let c1 = lab.client_ns[0].clone();
    let Transfer { sent, got, .. } = transfer_sha256(&lab, &c1, &backend, BACKEND, 5300, None);
    assert!(sent.starts_with("20971520 "), "{sent}");
    assert_eq!(
        got, sent,
        "length and sha256 at the backend differ from the client's"
    );
}

/// A forward-chain drop rule for client-to-client traffic, with a counter.
fn add_forward_drop(lab: &Lab) {
    lab.nft(
        &lab.server_ns,
        &format!(
            "table inet ctre_fw {{\n\
               counter dropped {{}}\n\
               chain ctre_forward {{ type filter hook forward priority 0; policy accept;\n\
                 ip saddr {CLIENT_SUBNET} ip daddr {CLIENT_SUBNET} counter name dropped drop\n\
               }}\n\
             }}\n"
        ),
    );
}

/// For the client-to-client tests: two clients, relayed by the server itself when
/// `client_to_client`, all up; with the clients' addresses. `None` when lab tests cannot run.
fn two_clients_up_or_skip(test: &str, client_to_client: bool) -> Option<(Lab, Vec<Ipv4Addr>)> {
    let cfg = LabConfig {
        client_to_client,
        ..LabConfig::with_clients(2)
    };
    let mut lab = new_lab_or_skip(test, cfg)?;
    let addrs = lab.up();
    Some((lab, addrs))
}

#[test]
fn client_to_client_enabled() {
    let Some((lab, a)) = two_clients_up_or_skip("client_to_client_enabled", true) else {
        return;
    };
    let (c1, c2) = (lab.client_ns[0].clone(), lab.client_ns[1].clone());
    lab.ping_ok(&c1, &a[1].to_string(), 5);
    lab.ping_ok(&c2, &a[0].to_string(), 3);
    // With client_to_client the server relays between peers itself: the kernel's forward
    // path (and its firewall) is not involved.
    add_forward_drop(&lab);
    lab.ping_ok(&c1, &a[1].to_string(), 5);
    assert_eq!(lab.nft_counter(&lab.server_ns, "ctre_fw", "dropped"), 0);
}

#[test]
fn client_to_client_disabled_goes_through_kernel() {
    let test = "client_to_client_disabled_goes_through_kernel";
    let Some((lab, a)) = two_clients_up_or_skip(test, false) else {
        return;
    };
    let c1 = lab.client_ns[0].clone();
    // Forwarding is on (the server enables it), so the kernel routes c1 -> TUN -> c2.
    lab.ping_ok(&c1, &a[1].to_string(), 5);
    add_forward_drop(&lab);
    let out = lab.ping(&c1, &a[1].to_string(), 5, &[]);
    assert!(
        !out.ok(),
        "ping between clients still works with a forward drop rule:\n{}",
        out.stdout
    );
    assert!(
        lab.nft_counter(&lab.server_ns, "ctre_fw", "dropped") > 0,
        "the drop rule never matched"
    );
    // The backend is unaffected.
    lab.ping_ok(&c1, BACKEND, 3);
}

#[test]
fn nat_masquerade() {
    let Some(mut lab) = new_lab_or_skip("nat_masquerade", LabConfig::masqueraded(1)) else {
        return;
    };
    let addr = lab.up()[0];
    let (s, c1) = (lab.server_ns.clone(), lab.client_ns[0].clone());
    let table = format!("concentrator_{}", lab.server_pid());
    let tables = lab.nft_tables(&s);
    assert!(
        tables.contains(&table),
        "no nft table {table} while running:\n{tables}"
    );
    // No way back to the client subnet from the backend...
    no_route_back_and_nat_counters(&lab, addr.into());
    // ...so replies arrive only thanks to the masquerade.
    lab.ping_ok(&c1, BACKEND, 5);
    assert_masqueraded_then_table_gone(&mut lab, &table);
}

#[test]
fn forwarding_is_restored_on_exit() {
    let test = "forwarding_is_restored_on_exit";
    let Some(mut lab) = new_lab_or_skip(test, LabConfig::with_clients(1)) else {
        return;
    };
    // With an IPv6 subnet the server forwards IPv6 too.
    lab.add_server_settings("address6 = \"fd00:66::1/64\"");
    let s = lab.server_ns.clone();
    for before in ["0", "1"] {
        lab.exec_ok(
            &s,
            &[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.ip_forward={before}"),
                &format!("net.ipv6.conf.all.forwarding={before}"),
            ],
            Duration::from_secs(5),
        );
        assert_forwarding_on_only_while_running(&mut lab, (before, before));
    }
}

#[test]
fn two_workers_both_busy() {
    if !lab_or_skip("two_workers_both_busy") {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        clients: 4,
        workers: 2,
        ..Default::default()
    });
    let backend = lab.backend_ns.clone();
    let mut last = Vec::new();
    // Which worker a client lands on depends on the SO_REUSEPORT hash of its (random) source
    // port: with 4 clients all land on one worker with probability 1/8, so retry with fresh
    // clients (fresh ports) up to 4 times.
    for attempt in 1..=4 {
        let addrs = lab.up();
        for (i, a) in addrs.iter().enumerate() {
            let c = lab.client_ns[i].clone();
            lab.ping_ok(&c, BACKEND, 5);
            lab.ping_ok(&backend, &a.to_string(), 3);
        }
        let log = lab.stop_server();
        for i in 0..addrs.len() {
            lab.stop_client(i);
        }
        last = parse_counters(&log);
        assert_eq!(last.len(), 2, "expected two worker counter lines:\n{log}");
        eprintln!("attempt {attempt}: {last:?}");
        if last.iter().all(|c| c.tun_rx > 0 && c.udp_rx > 0) {
            assert!(sum(&last, |c| c.udp_rx) >= 40, "{last:?}");
            return;
        }
    }
    panic!("a worker stayed idle in 4 attempts: {last:?}");
}

#[test]
fn unknown_key_gets_no_answer() {
    // c2's key is not in the server config.
    let cfg = LabConfig::second_client_unknown();
    let Some(mut lab) = new_lab_or_skip("unknown_key_gets_no_answer", cfg) else {
        return;
    };
    lab.start_server();
    let s = lab.server_ns.clone();
    lab.nft(
        &s,
        &format!(
            "table inet ctre_udp {{\n\
               counter replies {{}}\n\
               counter requests {{}}\n\
               chain ctre_output {{ type filter hook output priority 0; policy accept; udp sport {PORT} counter name replies; }}\n\
               chain ctre_input {{ type filter hook input priority 0; policy accept; udp dport {PORT} counter name requests; }}\n\
             }}\n"
        ),
    );
    lab.start_client(1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lab.client_tun_addr(1),
        None,
        "the unknown client got a tunnel"
    );
    let c2_tun = lab.exec(
        &lab.client_ns[1],
        &["ip", "link", "show", CLIENT_TUN],
        Duration::from_secs(5),
    );
    assert!(!c2_tun.ok(), "the unknown client created its TUN");
    assert!(
        lab.nft_counter(&s, "ctre_udp", "requests") >= 1,
        "no initiation reached the server"
    );
    assert_eq!(
        lab.nft_counter(&s, "ctre_udp", "replies"),
        0,
        "the server answered an unknown key"
    );
    // The counter does count: a known client gets answers.
    lab.start_client(0);
    lab.wait_tunnel(0);
    assert!(lab.nft_counter(&s, "ctre_udp", "replies") >= 1);
    assert_eq!(lab.client_tun_addr(1), None);
    // The server's own counters (control socket) show the unknown peer.
    let show = lab.show_json();
    let hs = &show["handshakes"];
    assert!(
        hs["failed_by_reason"]["unknown_peer"].as_u64().unwrap_or(0) >= 1,
        "show --json does not count the unknown peer: {hs}"
    );
    assert_eq!(show["sessions"].as_u64(), Some(1), "{show}");
}

#[test]
fn spoofed_inner_source_dropped() {
    let cfg = LabConfig::without_ipv6(1);
    let Some(mut lab) = new_lab_or_skip("spoofed_inner_source_dropped", cfg) else {
        return;
    };
    let addr = lab.up()[0];
    let (b, c1) = (lab.backend_ns.clone(), lab.client_ns[0].clone());
    // Another address of the client subnet (one that is not ours), as if impersonating a peer.
    let spoof = if addr == Ipv4Addr::new(10, 66, 200, 200) {
        "10.66.200.201"
    } else {
        "10.66.200.200"
    };
    lab.ip(
        &c1,
        &["addr", "add", &format!("{spoof}/32"), "dev", CLIENT_TUN],
    );
    count_input(
        &lab,
        &b,
        "ctre_spoof",
        &[
            ("spoofed", &format!("ip saddr {spoof}")),
            ("legit", &format!("ip saddr {addr}")),
        ],
    );
    let before = lab.ping(&c1, BACKEND, 3, &[]);
    assert!(before.ok(), "legit ping failed:\n{}", before.stdout);
    let out = lab.ping(&c1, BACKEND, 5, &["-I", spoof]);
    assert!(!out.ok(), "spoofed ping got answers:\n{}", out.stdout);
    assert_eq!(
        lab.nft_counter(&b, "ctre_spoof", "spoofed"),
        0,
        "spoofed packets reached the backend"
    );
    lab.ping_ok(&c1, BACKEND, 3);
    assert!(lab.nft_counter(&b, "ctre_spoof", "legit") >= 3);
    let log = lab.stop_server();
    let c = parse_counters(&log);
    // With IPv6 off nothing else is dropped: one drop per spoofed packet.
    let spoofed: u64 = out
        .stdout
        .split(" packets transmitted")
        .next()
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transmit count in:\n{}", out.stdout));
    assert!(spoofed >= 5, "ping sent only {spoofed} packets");
    assert_eq!(
        sum(&c, |c| c.drops),
        spoofed,
        "drops != spoofed packets sent: {c:?}\n{log}"
    );
    if c.iter().any(|c| !c.drop_reasons.is_empty()) {
        assert_eq!(
            sum(&c, |c| c.dropped("spoofed_source")),
            spoofed,
            "drop_reasons: {c:?}"
        );
    }
}

/// Pings the backend from client 0 once a second until it answers; panics after `limit`.
fn wait_ping_resumes(lab: &Lab, since: Instant, limit: Duration) {
    let c1 = lab.client_ns[0].clone();
    loop {
        let out = lab.ping(&c1, BACKEND, 1, &[]);
        if out.ok() {
            eprintln!("ping resumed {:?} after the restart", since.elapsed());
            return;
        }
        assert!(
            since.elapsed() < limit,
            "no ping through the tunnel {limit:?} after the server restart\n{}",
            lab.logs()
        );
    }
}

/// For the restart tests: one client up, its pings reaching the backend. `None` when lab
/// tests cannot run here.
fn one_client_through_or_skip(test: &str) -> Option<Lab> {
    let mut lab = new_lab_or_skip(test, LabConfig::with_clients(1))?;
    lab.up();
    let c1 = lab.client_ns[0].clone();
    lab.ping_ok(&c1, BACKEND, 3);
    Some(lab)
}

#[test]
fn server_restart_client_resumes() {
    let Some(mut lab) = one_client_through_or_skip("server_restart_client_resumes") else {
        return;
    };
    lab.kill_server();
    // The old TUN outlives the killed process for a moment (see
    // `server_restart_right_after_sigkill`); wait for it so that this test is about the client.
    let s = lab.server_ns.clone();
    let limit = Duration::from_secs(10);
    let gone = wait_link_gone(&lab, &s, SERVER_TUN, Instant::now(), limit, "SIGKILL");
    eprintln!("old {SERVER_TUN} gone {gone:?} after SIGKILL");
    lab.start_server();
    wait_ping_resumes(&lab, Instant::now(), Duration::from_secs(20));
    assert!(
        lab.clients[0].as_mut().unwrap().exited().is_none(),
        "client exited"
    );
}

#[test]
fn server_restart_right_after_sigkill() {
    let Some(mut lab) = one_client_through_or_skip("server_restart_right_after_sigkill") else {
        return;
    };
    // What a supervisor does: restart at once with the same config.
    lab.kill_server();
    lab.start_server();
    wait_ping_resumes(&lab, Instant::now(), Duration::from_secs(20));
}

#[test]
fn a_new_address_after_a_server_restart_rebuilds_the_tunnel() {
    let Some(mut lab) =
        one_client_through_or_skip("a_new_address_after_a_server_restart_rebuilds_the_tunnel")
    else {
        return;
    };
    lab.kill_server();
    // The restarted server gives the client a fixed address of its own, not the one it had.
    let path = lab.server_config_path();
    let text = std::fs::read_to_string(&path).expect("server config");
    let fixed = "10.66.250.9";
    let text = text.replacen(
        "[[peer]]\n",
        &format!("[[peer]]\naddress = \"{fixed}\"\n"),
        1,
    );
    std::fs::write(&path, text).expect("server config");
    let s = lab.server_ns.clone();
    wait_link_gone(
        &lab,
        &s,
        SERVER_TUN,
        Instant::now(),
        Duration::from_secs(10),
        "SIGKILL",
    );
    lab.start_server();
    wait_ping_resumes(&lab, Instant::now(), Duration::from_secs(25));
    let (status, log) = lab.stop_client(0);
    assert!(
        status.is_some_and(|s| s.success()),
        "client did not exit cleanly ({status:?}):\n{log}"
    );
    assert!(
        log.contains("rebuilding the tunnel") && log.contains(&format!("address={fixed}/")),
        "the client did not rebuild its tunnel with the new address:\n{log}"
    );
}

#[test]
fn full_tunnel_routes_and_clean_exit() {
    if !lab_or_skip("full_tunnel_routes_and_clean_exit") {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        full_tunnel: true,
        ..Default::default()
    });
    let c1 = lab.client_ns[0].clone();
    // A real client has a default route over its underlay; the server is its gateway here.
    lab.ip(&c1, &["route", "add", "default", "via", SERVER_UNDERLAY]);
    let routes_before = routes_of_both_families(&lab, &c1);
    let addr = lab.up()[0];
    assert_eq!(
        route_dev(&lab, &c1, BACKEND),
        CLIENT_TUN,
        "backend not routed into the tunnel"
    );
    assert_eq!(
        route_dev(&lab, &c1, "192.0.2.1"),
        CLIENT_TUN,
        "default not routed into the tunnel"
    );
    let to_server = route_dev(&lab, &c1, SERVER_UNDERLAY);
    assert_eq!(
        to_server, lab.client_links[0],
        "the server's underlay address must not go into the tunnel"
    );
    let b = lab.backend_ns.clone();
    let from_client = format!("ip saddr {addr}");
    count_input(&lab, &b, "ctre_ft", &[("tunneled", &from_client)]);
    lab.ping_ok(&c1, BACKEND, 5);
    assert!(
        lab.nft_counter(&b, "ctre_ft", "tunneled") >= 5,
        "pings did not come out of the tunnel"
    );
    assert_full_tunnel_client_leaves_no_trace(&mut lab, 0, routes_before);
}

/// Writes `text` as a config and runs the server (or client) on it. As root it runs inside a
/// throwaway namespace `ns`, so that a config wrongly accepted cannot touch the host's network.
fn run_with_config(
    dir: &std::path::Path,
    ns: Option<&str>,
    name: &str,
    text: &str,
    client: bool,
) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    let mut argv: Vec<&str> = match ns {
        Some(ns) => vec!["ip", "netns", "exec", ns],
        None => vec![],
    };
    if client {
        argv.extend([BIN, "connect", "--config", p]);
    } else {
        argv.extend([BIN, "--config", p]);
    }
    cmd::run(&argv, None, Duration::from_secs(10))
}

#[test]
fn config_errors_name_the_field() {
    // No root needed: configs are checked before anything touches the system.
    let dir = std::env::temp_dir().join(format!("ctr-e2e-cfg-{}", std::process::id()));
    // SAFETY: geteuid has no preconditions.
    let ns = (unsafe { libc::geteuid() } == 0)
        .then(|| TempNs::add(format!("ctre-{}-cfg", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, pubkey) = keypair();
    std::fs::write(dir.join("k.key"), &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("k.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, peer) = keypair();
    let (pubkey, peer) = (pubkey.as_str(), peer.as_str());

    let server_ok = format!(
        "private_key_file = \"k.key\"\nlisten_port = 51820\naddress = \"10.66.0.1/16\"\n\n[[peer]]\npublic_key = \"{peer}\"\n"
    );
    let cases: Vec<(&str, String, &str, bool)> = vec![
        ("bad_address", server_ok.replace("10.66.0.1/16", "10.66.0.1/40"), "address", false),
        ("bad_port", server_ok.replace("51820", "70000"), "listen_port", false),
        ("typo", format!("{server_ok}\n").replace("listen_port", "listen_prot"), "listen_prot", false),
        ("no_key", server_ok.replace("k.key", "missing.key"), "private_key_file", false),
        (
            "bad_peer_key",
            server_ok.replace(peer, "not-base64!"),
            "public_key",
            false,
        ),
        (
            "client_endpoint",
            format!("private_key_file = \"k.key\"\nserver_public_key = \"{pubkey}\"\nserver_endpoint = \"vpn.example:51820\"\nroutes = [\"10.1.0.0/24\"]\n"),
            "server_endpoint",
            true,
        ),
        (
            "client_route",
            format!("private_key_file = \"k.key\"\nserver_public_key = \"{pubkey}\"\nserver_endpoint = \"10.0.0.1:51820\"\nroutes = [\"10.1.0.0/99\"]\n"),
            "routes",
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, field, client) in &cases {
        let out = run_with_config(
            &dir,
            ns.as_ref().map(|n| n.0.as_str()),
            &format!("{name}.toml"),
            text,
            *client,
        );
        let msg = &out.stderr;
        if out.ok() || out.timed_out() || !msg.contains(field) {
            failures.push(format!(
                "{name}: status {:?}, expected a message naming {field:?}:\n{msg}",
                out.status
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
