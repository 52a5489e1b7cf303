//! IPv6 end to end: the real binary in network namespaces (see `tests/common`) with IPv6 in the
//! tunnel (`address6`) over an IPv4 and over an IPv6 underlay, with offloads on and off; a full
//! tunnel of both families; a client on an IPv6 underlay that roams to a new source port;
//! NAT66 (`nat6`) and plain routing.
//!
//! They need root (network namespaces, TUN, nftables) and print `SKIPPED <name>: ...`
//! otherwise. Each test builds its own lab; `E2E_PARALLEL` limits how many exist at once.
//! No speed is asserted; UDP loss is printed and only bounded loosely.

mod common;

use std::net::Ipv6Addr;
use std::time::Duration;

use common::net::{
    assert_forwarding_on_only_while_running, assert_full_tunnel_client_leaves_no_trace,
    assert_masqueraded_then_table_gone, count_input, forwarding, no_route_back_and_nat_counters,
    route_dev, routes_of_both_families,
};
use common::traffic::{
    csum_errors, iperf3_bytes, iperf3_client_to, transfer_sha256_bytes, tun_kernel_packets,
    uso_transfer_buffers, Transfer,
};
use common::*;

/// Bytes of each TCP transfer checked by sha256.
const TRANSFER_BYTES: usize = 4 * 1024 * 1024;
/// USO buffers (40 datagrams of 1200 bytes each) per UDP transfer: about 4.8 MB.
const USO_BUFFERS: u32 = 100;
/// Seconds per iperf3 run.
const IPERF_SECS: u64 = 2;

/// Waits for client `i`'s tunnel and returns its IPv6 address, which must be in the subnet.
fn tunnel_addr6(lab: &mut Lab, i: usize) -> Ipv6Addr {
    lab.wait_tunnel(i);
    let a6 = lab
        .client_tun_addr6(i)
        .unwrap_or_else(|| panic!("client {} has no IPv6 address on its TUN", i + 1));
    let subnet: ipnet::Ipv6Net = CLIENT_SUBNET6.parse().unwrap();
    assert!(
        subnet.contains(&a6),
        "client got {a6}, outside {CLIENT_SUBNET6}"
    );
    a6
}

/// The server's view of peer `public_key`'s endpoint (`show --json`).
fn endpoint_of(lab: &Lab, public_key: &str) -> String {
    let show = lab.show_json();
    show["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["public_key"] == public_key))
        .and_then(|p| p["endpoint"].as_str())
        .unwrap_or_else(|| panic!("no endpoint for {public_key} in {show}"))
        .to_string()
}

/// `<underlay address>:` as an endpoint string starts for client `i`: `10.0.0.11:` or
/// `[fd00::11]:`.
fn endpoint_prefix(lab: &Lab, i: usize) -> String {
    match lab.client_underlay(i) {
        (_, Some(v6)) => format!("[{v6}]:"),
        (v4, None) => format!("{v4}:"),
    }
}

/// Packet counters that tell whether traffic crossed the TUNs as super-packets: the kernel's
/// per-TUN packet counts (one per read or write) and the server's segment counts.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    /// Server TUN (kernel): (rx = writes by the server, tx = reads by the server).
    server_tun: (u64, u64),
    /// Client TUN (kernel): (rx = writes by the client, tx = reads by the client).
    client_tun: (u64, u64),
    /// The server's worker counters, summed: segments and datagrams.
    tun_rx: u64,
    tun_tx: u64,
    udp_rx: u64,
    udp_tx: u64,
}

impl Counts {
    fn take(lab: &Lab) -> Counts {
        // Workers publish their counters at least every 100 ms: let the last batch show.
        std::thread::sleep(Duration::from_millis(300));
        let show = lab.show_json();
        let workers = show["workers"].as_array().expect("show --json has workers");
        let sum = |k: &str| -> u64 { workers.iter().filter_map(|w| w[k].as_u64()).sum() };
        Counts {
            server_tun: tun_kernel_packets(lab, &lab.server_ns, SERVER_TUN),
            client_tun: tun_kernel_packets(lab, &lab.client_ns[0], CLIENT_TUN),
            tun_rx: sum("tun_rx_packets"),
            tun_tx: sum("tun_tx_packets"),
            udp_rx: sum("udp_rx_packets"),
            udp_tx: sum("udp_tx_packets"),
        }
    }
}

/// Segments per TUN read (split) and per TUN write (coalesce) on the sending and the receiving
/// side of a transfer between `before` and `after`; `to_client` says its direction.
fn ratios(before: Counts, after: Counts, to_client: bool) -> [(&'static str, f64); 2] {
    type Counter = fn(&Counts) -> u64;
    // Each side: its name, its segments (a server counter) and its TUN reads or writes (a
    // kernel counter).
    let sides: [(&'static str, Counter, Counter); 2] = if to_client {
        [
            ("server TUN reads (split)", |c| c.tun_rx, |c| c.server_tun.1),
            (
                "client TUN writes (coalesce)",
                |c| c.udp_tx,
                |c| c.client_tun.0,
            ),
        ]
    } else {
        [
            ("client TUN reads (split)", |c| c.udp_rx, |c| c.client_tun.1),
            (
                "server TUN writes (coalesce)",
                |c| c.tun_tx,
                |c| c.server_tun.0,
            ),
        ]
    };
    let grew = |count: Counter| count(&after).saturating_sub(count(&before));
    sides.map(|(side, segments, io)| (side, grew(segments) as f64 / grew(io).max(1) as f64))
}

/// Checks what `ratios` says: with offloads, bulk data crosses each TUN as super-packets
/// (a bulk TCP read or write carries 15-25 segments, a USO buffer 40), so at least 2 segments
/// per read or write; without, one packet per read or write (give or take keepalives, IPv6
/// noise and losses).
fn check_ratios(what: &str, offloads: bool, ratios: [(&str, f64); 2]) {
    eprintln!("{what}: segments per TUN read/write: {ratios:?}");
    for (side, r) in ratios {
        if offloads {
            assert!(
                r >= 2.0,
                "{what}: {side}: only {r:.2} segments per read/write: no super-packets?"
            );
        } else {
            assert!(
                r < 2.0,
                "{what}: {side}: {r:.2} segments per read/write with --no-offloads"
            );
        }
    }
}

/// The TSO/USO flags the server's start line names (`offloads=csum,tso4,...`).
fn server_offloads(log: &str) -> Vec<String> {
    let up = common::start_line(log);
    up.split_whitespace()
        .find_map(|kv| kv.strip_prefix("offloads="))
        .unwrap_or_else(|| panic!("no offloads= in the start line: {up}"))
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Declares one `#[test]` per underlay family and offload mode, each calling
/// `case(underlay6, offloads, name)`.
macro_rules! underlays_and_offloads {
    ($case:ident: $v4_on:ident, $v4_off:ident, $v6_on:ident, $v6_off:ident) => {
        #[test]
        fn $v4_on() {
            $case(false, true, stringify!($v4_on));
        }
        #[test]
        fn $v4_off() {
            $case(false, false, stringify!($v4_off));
        }
        #[test]
        fn $v6_on() {
            $case(true, true, stringify!($v6_on));
        }
        #[test]
        fn $v6_off() {
            $case(true, false, stringify!($v6_off));
        }
    };
}

// ---------------------------------------------------------------------------------------------
// IPv6 in the tunnel: ping6, iperf3 TCP and UDP, sha256 over TCP, USO6 datagrams

fn inner6_traffic(underlay6: bool, offloads: bool, test: &str) {
    if !lab_or_skip(test) || !tools_or_skip(test, &["iperf3", "ss"]) {
        return;
    }
    let m = format!(
        "[{} underlay, offloads {}]",
        if underlay6 { "IPv6" } else { "IPv4" },
        if offloads { "on" } else { "off" }
    );
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        inner6: true,
        underlay6,
        offloads,
        ..Default::default()
    });
    lab.start_server();
    lab.start_client(0);
    let a6 = tunnel_addr6(&mut lab, 0).to_string();
    let (b, c1) = (lab.backend_ns.clone(), lab.client_ns[0].clone());
    // The tunnel runs over the underlay family asked for.
    let endpoint = endpoint_of(&lab, &lab.client_pubkeys[0].clone());
    assert!(
        endpoint.starts_with(&endpoint_prefix(&lab, 0)),
        "{m} the server sees the client at {endpoint}"
    );
    assert_eq!(
        route_dev(&lab, &c1, BACKEND6),
        CLIENT_TUN,
        "{m} split route"
    );

    // Plain routing: the backend sees the client's own IPv6 address.
    let from_client = format!("ip6 saddr {a6}");
    count_input(&lab, &b, "ctre_v6", &[("from_client", &from_client)]);
    lab.ping_ok(&c1, BACKEND6, 5);
    lab.ping_ok(&b, &a6, 5);
    lab.ping_ok(&c1, SERVER_VIRTUAL6, 3);
    // IPv4 still runs next to it.
    lab.ping_ok(&c1, BACKEND, 3);
    assert!(
        lab.nft_counter(&b, "ctre_v6", "from_client") >= 5,
        "{m} the backend did not see the client's own IPv6 address"
    );

    for (port, reverse) in [(5201, false), (5202, true)] {
        let extra: &[&str] = if reverse { &["-R"] } else { &[] };
        let v = iperf3_client_to(&mut lab, 0, BACKEND6, port, IPERF_SECS, extra);
        let (sent, received) = iperf3_bytes(&v);
        eprintln!("{m} iperf3 TCP6 reverse={reverse}: sent {sent} received {received} bytes");
        assert!(received > 0, "{m} TCP6 reverse={reverse}: nothing received");
        // The receiver stops counting at the deadline with data in flight: received <= sent.
        assert!(
            received <= sent,
            "{m} TCP6 reverse={reverse}: received {received} > sent {sent}"
        );
    }
    for (port, reverse) in [(5203, false), (5204, true)] {
        let mut extra = vec!["-u", "-b", "50M", "-l", "1200"];
        if reverse {
            extra.push("-R");
        }
        let v = iperf3_client_to(&mut lab, 0, BACKEND6, port, IPERF_SECS, &extra);
        // For UDP, `end.sum` is what the receiving side saw (iperf3 3.x).
        let sum = &v["end"]["sum"];
        let packets = sum["packets"].as_u64().expect("end.sum.packets");
        let lost = sum["lost_packets"].as_u64().expect("end.sum.lost_packets");
        let lost_percent = sum["lost_percent"].as_f64().unwrap_or(0.0);
        eprintln!(
            "{m} iperf3 UDP6 reverse={reverse}: {packets} datagrams sent, {lost} lost \
             ({lost_percent:.2}%)"
        );
        assert!(
            packets > lost,
            "{m} UDP6 reverse={reverse}: the receiver got nothing: {sum}"
        );
        assert!(
            lost_percent < 50.0,
            "{m} UDP6 reverse={reverse}: {lost_percent:.1}% lost at 50 Mbit/s: {sum}"
        );
    }

    // Byte-exact TCP both ways, then USO6 datagrams both ways; each time, did the data cross
    // the TUNs as super-packets (TSO6/USO6 and coalescing) or, without offloads, one by one?
    for (port, to_client) in [(5300, false), (5301, true)] {
        let (from, to, addr) = if to_client {
            (&b, &c1, a6.as_str())
        } else {
            (&c1, &b, BACKEND6)
        };
        let what = format!("{m} TCP6 sha256 to_client={to_client}");
        let before = Counts::take(&lab);
        let Transfer { sent, got, elapsed } =
            transfer_sha256_bytes(&lab, from, to, addr, port, TRANSFER_BYTES, Some(&what));
        eprintln!("{what}: {TRANSFER_BYTES} bytes in {elapsed:?}");
        assert!(
            sent.starts_with(&format!("{TRANSFER_BYTES} ")),
            "{what}: {sent}"
        );
        assert_eq!(
            got, sent,
            "{what}: length and sha256 differ at the receiver"
        );
        let after = Counts::take(&lab);
        check_ratios(&what, offloads, ratios(before, after, to_client));
    }
    let uso = offloads && {
        let log = lab.server.as_ref().expect("server running").stderr();
        server_offloads(&log).iter().any(|f| f == "uso6")
    };
    for (port, to_client) in [(5400, false), (5401, true)] {
        let (from, to, addr) = if to_client {
            (&b, &c1, a6.as_str())
        } else {
            (&c1, &b, BACKEND6)
        };
        let what = format!("{m} UDP6 USO to_client={to_client}");
        let before = Counts::take(&lab);
        uso_transfer_buffers(&lab, from, to, addr, port, USO_BUFFERS, &what);
        let r = ratios(before, Counts::take(&lab), to_client);
        if uso || !offloads {
            check_ratios(&what, offloads, r);
        } else {
            eprintln!("{what}: the kernel has no USO6 on TUN; segments per read/write: {r:?}");
        }
    }
    for ns in [&c1, &b] {
        assert_eq!(
            csum_errors(&lab, ns),
            (0, 0),
            "{m} {ns}: (TCP, UDP) packets with a bad checksum arrived"
        );
    }

    let (_, client_log) = lab.stop_client(0);
    let log = lab.stop_server();
    let flags = server_offloads(&log);
    if offloads {
        assert!(
            flags.iter().any(|f| f == "tso6"),
            "{m} the server runs without TSO6: {flags:?}"
        );
    } else {
        assert_eq!(
            flags,
            ["off"],
            "{m} --no-offloads, but the server says {flags:?}"
        );
    }
    assert!(
        client_log.contains(&format!("offloads={offloads}")),
        "{m} the client log does not say offloads={offloads}:\n{client_log}"
    );
    let c = parse_counters(&log);
    eprintln!("{m} server counters: {c:?}");
    assert_eq!(
        c.iter().map(|c| c.dropped("malformed")).sum::<u64>(),
        0,
        "{m} the server dropped packets as malformed: {c:?}"
    );
}

underlays_and_offloads!(inner6_traffic:
    inner6_v4_underlay_offloads_on,
    inner6_v4_underlay_offloads_off,
    inner6_v6_underlay_offloads_on,
    inner6_v6_underlay_offloads_off
);

// ---------------------------------------------------------------------------------------------
// Full tunnel for both families

/// Puts client `i` behind a gateway on its underlay, as a real client is: its underlay
/// address becomes a host address (no on-link prefix) and the server's underlay address is
/// reached only through the default route via the server's bridge (`fe80::1` for IPv6, the
/// bridge's IPv4 address "onlink" for IPv4). So nothing more specific than the full tunnel's
/// /1 routes covers the server: only the pinned host route keeps the tunnel out of itself.
fn behind_gateway(lab: &Lab, i: usize, underlay6: bool) {
    let (s, c) = (lab.server_ns.clone(), lab.client_ns[i].clone());
    let link = lab.client_links[i].clone();
    let (v4, v6) = lab.client_underlay(i);
    if underlay6 {
        let v6 = v6.expect("an IPv6 underlay");
        lab.add_addr(&s, "fe80::1/64", &lab.bridge);
        lab.ip(&c, &["addr", "del", &format!("{v6}/64"), "dev", &link]);
        lab.add_addr(&c, &format!("{v6}/128"), &link);
        lab.ip(
            &c,
            &[
                "-6", "route", "add", "default", "via", "fe80::1", "dev", &link,
            ],
        );
        // IPv4 keeps its on-link underlay; a default route as on any host.
        lab.ip(&c, &["route", "add", "default", "via", SERVER_UNDERLAY]);
    } else {
        lab.ip(&c, &["addr", "del", &format!("{v4}/24"), "dev", &link]);
        lab.add_addr(&c, &format!("{v4}/32"), &link);
        lab.ip(
            &c,
            &[
                "route",
                "add",
                "default",
                "via",
                SERVER_UNDERLAY,
                "dev",
                &link,
                "onlink",
            ],
        );
    }
    let server = lab.server_underlay();
    let out = lab.ip(&c, &["route", "get", server]);
    assert!(
        out.contains(" via "),
        "client {} should reach {server} through a gateway: {out}",
        i + 1
    );
    lab.ping_ok(&c, server, 2);
}

fn full_tunnel(underlay6: bool, test: &str) {
    if !lab_or_skip(test) {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        full_tunnel: true,
        inner6: true,
        underlay6,
        ..Default::default()
    });
    let (b, c1) = (lab.backend_ns.clone(), lab.client_ns[0].clone());
    let link = lab.client_links[0].clone();
    behind_gateway(&lab, 0, underlay6);
    let routes_before = routes_of_both_families(&lab, &c1);
    lab.start_server();
    lab.start_client(0);
    let a6 = tunnel_addr6(&mut lab, 0);
    let a4 = lab.client_tun_addr(0).expect("an IPv4 address on the TUN");

    // The server's underlay address is pinned to the path it had, via the gateway.
    let server = lab.server_underlay();
    assert_eq!(
        route_dev(&lab, &c1, server),
        link,
        "the server's underlay address must not go into the tunnel"
    );
    let family = if underlay6 { "-6" } else { "-4" };
    let host = if underlay6 { "128" } else { "32" };
    let pinned = lab.ip(&c1, &[family, "route", "show", &format!("{server}/{host}")]);
    let gateway = if underlay6 {
        "fe80::1"
    } else {
        SERVER_UNDERLAY
    };
    assert!(
        pinned.contains(&format!("via {gateway} dev {link}")),
        "no host route to {server} via {gateway}: {pinned:?}"
    );
    // Everything else of both families goes into the tunnel.
    for dst in [BACKEND, "192.0.2.1", BACKEND6, "2001:db8::1", "fd00::99"] {
        assert_eq!(
            route_dev(&lab, &c1, dst),
            CLIENT_TUN,
            "{dst} not routed into the tunnel"
        );
    }
    count_input(
        &lab,
        &b,
        "ctre_ft",
        &[
            ("tunneled4", &format!("ip saddr {a4}")),
            ("tunneled6", &format!("ip6 saddr {a6}")),
        ],
    );
    lab.ping_ok(&c1, BACKEND6, 5);
    lab.ping_ok(&c1, BACKEND, 5);
    assert!(
        lab.nft_counter(&b, "ctre_ft", "tunneled6") >= 5,
        "IPv6 pings did not come out of the tunnel"
    );
    assert!(
        lab.nft_counter(&b, "ctre_ft", "tunneled4") >= 5,
        "IPv4 pings did not come out of the tunnel"
    );
    let Transfer { sent, got, .. } = transfer_sha256_bytes(
        &lab,
        &c1,
        &b,
        BACKEND6,
        5300,
        TRANSFER_BYTES,
        Some("full tunnel TCP6"),
    );
    assert_eq!(got, sent, "full tunnel TCP6: sha256 differs at the backend");

    assert_full_tunnel_client_leaves_no_trace(&mut lab, 0, routes_before);
}

#[test]
fn full_tunnel_both_families_over_v6_underlay() {
    full_tunnel(true, "full_tunnel_both_families_over_v6_underlay");
}

#[test]
fn full_tunnel_both_families_over_v4_underlay() {
    full_tunnel(false, "full_tunnel_both_families_over_v4_underlay");
}

// ---------------------------------------------------------------------------------------------
// Roaming

/// The local port of client `i`'s UDP socket towards the server (`ss` in its namespace).
fn client_udp_port(lab: &Lab, i: usize) -> u16 {
    let port = PORT.to_string();
    let out = lab.exec_ok(
        &lab.client_ns[i],
        &[
            "ss",
            "-Hun",
            "state",
            "all",
            "dport",
            "=",
            &format!(":{port}"),
        ],
        Duration::from_secs(5),
    );
    // `ESTAB 0 0 [fd00::11]:43125 [fd00::1]:51820`: the local address is the fourth column.
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|local| local.rsplit(':').next()?.parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no UDP socket towards port {port} in:\n{out}"))
}

fn roam_to_new_port(underlay6: bool, test: &str) {
    if !lab_or_skip(test) || !tools_or_skip(test, &["ss"]) {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        inner6: true,
        underlay6,
        ..Default::default()
    });
    lab.start_server();
    lab.start_client(0);
    let a6 = tunnel_addr6(&mut lab, 0).to_string();
    let (b, c1) = (lab.backend_ns.clone(), lab.client_ns[0].clone());
    let key = lab.client_pubkeys[0].clone();
    lab.ping_ok(&c1, BACKEND6, 3);
    let old = client_udp_port(&lab, 0);
    let prefix = endpoint_prefix(&lab, 0);
    assert_eq!(endpoint_of(&lab, &key), format!("{prefix}{old}"));

    // A NAT in front of the client rebinds it to a new port: its datagrams leave from `new`,
    // the server's answers to `new` reach the socket, and nothing reaches it at the old port
    // any more. Stateless rewrites (no conntrack), before anything else sees the packets.
    let new = if old == 40_000 { 40_001 } else { 40_000 };
    let (family, server) = if underlay6 {
        ("ip6", SERVER_UNDERLAY6)
    } else {
        ("ip", SERVER_UNDERLAY)
    };
    lab.nft(
        &c1,
        &format!(
            "table inet ctre_roam {{\n\
               counter to_old_port {{}}\n\
               counter to_new_port {{}}\n\
               chain ctre_out {{ type filter hook output priority raw; policy accept;\n\
                 {family} daddr {server} udp sport {old} udp dport {PORT} udp sport set {new}\n\
               }}\n\
               chain ctre_pre {{ type filter hook prerouting priority raw; policy accept;\n\
                 {family} saddr {server} udp sport {PORT} udp dport {old} counter name to_old_port drop\n\
                 {family} saddr {server} udp sport {PORT} udp dport {new} counter name to_new_port udp dport set {old}\n\
               }}\n\
             }}\n"
        ),
    );
    // The client speaks first (its ping); the server follows it to the new port.
    lab.ping_ok(&c1, BACKEND6, 5);
    assert_eq!(
        endpoint_of(&lab, &key),
        format!("{prefix}{new}"),
        "the server did not follow the client to its new port"
    );
    lab.ping_ok(&b, &a6, 5);
    let Transfer { sent, got, .. } = transfer_sha256_bytes(
        &lab,
        &b,
        &c1,
        &a6,
        5300,
        TRANSFER_BYTES,
        Some("after roaming, TCP6 to the client"),
    );
    assert_eq!(got, sent, "after roaming: sha256 differs at the client");
    let to_new = lab.nft_counter(&c1, "ctre_roam", "to_new_port");
    let to_old = lab.nft_counter(&c1, "ctre_roam", "to_old_port");
    eprintln!("after roaming: {to_new} datagrams to the new port, {to_old} to the old one");
    assert!(to_new >= 10, "only {to_new} datagrams came to the new port");
    // The client still runs on its first session: no new tunnel was needed.
    let client_log = lab.clients[0].as_ref().unwrap().stderr();
    assert_eq!(
        client_log.matches("tunnel up").count(),
        1,
        "the client rebuilt its tunnel:\n{client_log}"
    );
}

#[test]
fn roaming_v6_underlay_new_source_port() {
    roam_to_new_port(true, "roaming_v6_underlay_new_source_port");
}

#[test]
fn roaming_v4_underlay_new_source_port() {
    roam_to_new_port(false, "roaming_v4_underlay_new_source_port");
}

// ---------------------------------------------------------------------------------------------
// Clients on both underlay families at once

/// One server listening on `0.0.0.0` and `::` (two sockets per worker; the other IPv6-underlay
/// labs listen on `::` alone); client 1 comes over IPv4, client 2 over IPv6; both reach the
/// backend over IPv6 in the tunnel, and each other through the server's relay
/// (`client_to_client`), which seals for one family's socket what came in on the other's.
#[test]
fn mixed_underlays_relay_between_clients() {
    let test = "mixed_underlays_relay_between_clients";
    if !lab_or_skip(test) {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        clients: 2,
        inner6: true,
        underlay6: true,
        client_to_client: true,
        ..Default::default()
    });
    let server_config = lab.server_config_path();
    let text = std::fs::read_to_string(&server_config).unwrap();
    let v6_only = "listen_addresses = [\"::\"]";
    assert!(text.contains(v6_only), "{text}");
    std::fs::write(
        &server_config,
        text.replace(v6_only, "listen_addresses = [\"0.0.0.0\", \"::\"]"),
    )
    .unwrap();
    let c1_config = lab.dir().join("c1.toml");
    let text = std::fs::read_to_string(&c1_config).unwrap();
    let v6_endpoint = format!("[{SERVER_UNDERLAY6}]:{PORT}");
    assert!(text.contains(&v6_endpoint), "{text}");
    std::fs::write(
        &c1_config,
        text.replace(&v6_endpoint, &format!("{SERVER_UNDERLAY}:{PORT}")),
    )
    .unwrap();
    lab.start_server();
    lab.start_client(0);
    lab.start_client(1);
    let a = [tunnel_addr6(&mut lab, 0), tunnel_addr6(&mut lab, 1)];
    let keys = lab.client_pubkeys.clone();
    let e1 = endpoint_of(&lab, &keys[0]);
    let e2 = endpoint_of(&lab, &keys[1]);
    assert!(e1.starts_with("10.0.0.11:"), "client 1 at {e1}");
    assert!(e2.starts_with("[fd00::12]:"), "client 2 at {e2}");
    let (c1, c2) = (lab.client_ns[0].clone(), lab.client_ns[1].clone());
    lab.ping_ok(&c1, BACKEND6, 3);
    lab.ping_ok(&c2, BACKEND6, 3);
    lab.ping_ok(&c1, &a[1].to_string(), 5);
    lab.ping_ok(&c2, &a[0].to_string(), 5);
    // Ten pings each way, each a request and a reply: all relayed by the workers.
    let show = lab.show_json();
    let relayed: u64 = show["workers"]
        .as_array()
        .expect("show --json has workers")
        .iter()
        .filter_map(|w| w["relayed_packets"].as_u64())
        .sum();
    assert!(
        relayed >= 20,
        "the server relayed only {relayed} packets: {show}"
    );
}

// ---------------------------------------------------------------------------------------------
// Forwarding, NAT66

/// With `address6` the server turns IPv6 forwarding on, as it does IPv4's, and puts both back
/// as it found them when it stops.
#[test]
fn forwarding_of_both_families_on_while_running() {
    let test = "forwarding_of_both_families_on_while_running";
    if !lab_or_skip(test) {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        inner6: true,
        ..Default::default()
    });
    let s = lab.server_ns.clone();
    let off = ("0".to_string(), "0".to_string());
    assert_eq!(forwarding(&lab, &s), off, "a new namespace forwards");
    assert_forwarding_on_only_while_running(&mut lab, ("0", "0"));
}

/// `nat6`: the IPv6 client subnet leaves behind the server's backend-facing address, so a
/// backend with no route back to the clients still answers; the `ip6` table goes on exit.
#[test]
fn nat66_masquerade() {
    let test = "nat66_masquerade";
    if !lab_or_skip(test) {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        inner6: true,
        underlay6: true,
        nat6: true,
        backend_route: false,
        ..Default::default()
    });
    lab.start_server();
    lab.start_client(0);
    let a6 = tunnel_addr6(&mut lab, 0);
    let (s, b, c1) = (
        lab.server_ns.clone(),
        lab.backend_ns.clone(),
        lab.client_ns[0].clone(),
    );
    let table = format!("table ip6 concentrator_{}", lab.server_pid());
    let tables = lab.nft_tables(&s);
    assert!(
        tables.contains(&table),
        "no {table} while running:\n{tables}"
    );
    assert!(
        !tables.contains("table ip concentrator_"),
        "an IPv4 masquerade without `nat`:\n{tables}"
    );
    // No way back to the client subnet from the backend...
    no_route_back_and_nat_counters(&lab, a6.into());
    // ...so answers arrive only thanks to the masquerade.
    lab.ping_ok(&c1, BACKEND6, 5);
    let Transfer { sent, got, .. } = transfer_sha256_bytes(
        &lab,
        &c1,
        &b,
        BACKEND6,
        5300,
        TRANSFER_BYTES,
        Some("TCP6 through NAT66"),
    );
    assert_eq!(
        got, sent,
        "TCP6 through NAT66: sha256 differs at the backend"
    );
    assert_masqueraded_then_table_gone(&mut lab, &table);
}
