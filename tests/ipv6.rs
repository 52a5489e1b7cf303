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

/// The device `ip route get DST` picks in `ns`.
fn route_dev(lab: &Lab, ns: &str, dst: &str) -> String {
    let out = lab.ip(ns, &["route", "get", dst]);
    out.split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no dev in route get {dst}: {out}"))
        .to_string()
}

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
    let d = |a: u64, b: u64| a.saturating_sub(b);
    let r = |segments: u64, io: u64| segments as f64 / io.max(1) as f64;
    if to_client {
        [
            (
                "server TUN reads (split)",
                r(
                    d(after.tun_rx, before.tun_rx),
                    d(after.server_tun.1, before.server_tun.1),
                ),
            ),
            (
                "client TUN writes (coalesce)",
                r(
                    d(after.udp_tx, before.udp_tx),
                    d(after.client_tun.0, before.client_tun.0),
                ),
            ),
        ]
    } else {
        [
            (
                "client TUN reads (split)",
                r(
                    d(after.udp_rx, before.udp_rx),
                    d(after.client_tun.1, before.client_tun.1),
                ),
            ),
            (
                "server TUN writes (coalesce)",
                r(
                    d(after.tun_tx, before.tun_tx),
                    d(after.server_tun.0, before.server_tun.0),
                ),
            ),
        ]
    }
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
    let clean = strip_ansi(log);
    let up = clean
        .lines()
        .find(|l| l.contains("concentrator is up"))
        .unwrap_or_else(|| panic!("no start line in the server log:\n{log}"));
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
    lab.nft(
        &b,
        &format!(
            "table inet ctre_v6 {{\n\
               counter from_client {{}}\n\
               chain ctre_input {{ type filter hook input priority 0; policy accept;\n\
                 ip6 saddr {a6} counter name from_client\n\
               }}\n\
             }}\n"
        ),
    );
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
        eprintln!("{what}: before {before:?} after {after:?}");
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
        strip_ansi(&client_log).contains(&format!("offloads={offloads}")),
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
