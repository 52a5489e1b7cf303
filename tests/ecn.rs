//! ECN across the tunnel in the real binaries, as RFC 6040 says: the outer header of a datagram
//! carries its inner packet's ECN field (§4.1), and congestion marked on the outer header on
//! the way reaches the inner packet, or drops it when its transport is not ECN-capable (§4.2).
//! nftables counts the codepoints on the underlay and where the inner packets arrive, and marks
//! the outer headers CE on the way (`ip ecn set ce`), as a congested router would. Not timing:
//! counters only.
//!
//! Needs root (network namespaces, TUN, nftables) and prints `SKIPPED <name>: ...` otherwise.

mod common;

use common::*;

/// Pings per phase.
const PINGS: u32 = 5;
/// `ping -Q` value that makes the echo requests ECT(0) (TOS 0x02: DSCP 0, ECN 10).
const ECT0: &str = "2";

/// Adds nft table `table` (family inet) in `ns`: a counter per `(name, rule)` in the input
/// hook, and `marks` (rules with `ip ecn set ce`) in the `hook` given with them.
fn ecn_table(lab: &Lab, ns: &str, table: &str, counters: &[(&str, &str)], marks: &[(&str, &str)]) {
    let mut script = format!("table inet {table} {{\n");
    for (name, _) in counters {
        script += &format!("  counter {name} {{}}\n");
    }
    script += "  chain input { type filter hook input priority 0; policy accept;\n";
    for (name, rule) in counters {
        script += &format!("    {rule} counter name {name}\n");
    }
    script += "  }\n";
    for (hook, rule) in marks {
        script += &format!(
            "  chain mark_{hook} {{ type filter hook {hook} priority mangle; policy accept;\n    {rule}\n  }}\n"
        );
    }
    script += "}\n";
    lab.nft(ns, &script);
}

/// Drops for `reason` in a `show --json` answer, over the workers.
fn drops(show: &serde_json::Value, reason: &str) -> u64 {
    show["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in {show}"))
        .iter()
        .map(|w| {
            w["drops"][reason]
                .as_u64()
                .unwrap_or_else(|| panic!("no drops.{reason} in {w}"))
        })
        .sum()
}

/// `ecn_alarms` in a `show --json` answer, over the workers.
fn ecn_alarms(show: &serde_json::Value) -> u64 {
    show["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in {show}"))
        .iter()
        .map(|w| {
            w["ecn_alarms"]
                .as_u64()
                .unwrap_or_else(|| panic!("no ecn_alarms in {w}"))
        })
        .sum()
}

/// Deletes nft table `inet table` in `ns`.
fn drop_table(lab: &Lab, ns: &str, table: &str) {
    lab.exec_ok(
        ns,
        &["nft", "delete", "table", "inet", table],
        std::time::Duration::from_secs(10),
    );
}

/// Pings `dst` from `ns` (`PINGS` echo requests) with `extra` arguments; the replies may not
/// come back (a drop is what some phases test).
fn pings(lab: &Lab, ns: &str, dst: &str, extra: &[&str]) {
    let out = lab.ping(ns, dst, PINGS, extra);
    eprintln!("ping {extra:?} {dst} from {ns}: {}", out.stdout.trim_end());
}

#[test]
fn ecn_travels_between_inner_and_outer_headers_as_rfc_6040_says() {
    ecn_travels(
        false,
        "ecn_travels_between_inner_and_outer_headers_as_rfc_6040_says",
    );
}

/// The same over an IPv6 underlay: the outer field is the traffic class (`IPV6_TCLASS`).
#[test]
fn ecn_travels_in_the_traffic_class_of_an_ipv6_underlay() {
    ecn_travels(true, "ecn_travels_in_the_traffic_class_of_an_ipv6_underlay");
}

/// Pings through a lab of one client over an IPv6 underlay if `underlay6`, else IPv4, with
/// the outer headers counted and marked as the module docs say.
fn ecn_travels(underlay6: bool, name: &str) {
    if !lab_or_skip(name) {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        underlay6,
        ..LabConfig::with_clients(1)
    });
    let client_tun = lab.up()[0].to_string();
    let (srv, bk, cl) = (
        lab.server_ns.clone(),
        lab.backend_ns.clone(),
        lab.client_ns[0].clone(),
    );
    let (client_underlay, client_underlay6) = lab.client_underlay(0);
    // The outer header's family: its addresses and its ECN field in nft's terms.
    let (ip, client_underlay) = match client_underlay6 {
        Some(address) if underlay6 => ("ip6", address),
        _ => ("ip", client_underlay),
    };
    let server_underlay = lab.server_underlay();
    let from_server = format!("{ip} saddr {server_underlay} udp sport {PORT}");
    let request = "icmp type echo-request";
    let tunnel_in = format!("iifname \"{CLIENT_TUN}\" {request}");
    // Counted on the client: the outer datagrams from the server, and the inner echo requests
    // its TUN delivers.
    ecn_table(
        &lab,
        &cl,
        "ctre_ecn_c",
        &[
            ("outer_ect0", &format!("{from_server} {ip} ecn ect0")),
            ("outer_not_ect", &format!("{from_server} {ip} ecn not-ect")),
            ("inner_ce", &format!("{tunnel_in} ip ecn ce")),
            ("inner_not_ect", &format!("{tunnel_in} ip ecn not-ect")),
        ],
        &[],
    );
    // Counted on the backend: the inner echo requests the server forwards.
    ecn_table(
        &lab,
        &bk,
        "ctre_ecn_b",
        &[
            ("inner_ce", &format!("{request} ip ecn ce")),
            ("inner_ect0", &format!("{request} ip ecn ect0")),
            ("inner_not_ect", &format!("{request} ip ecn not-ect")),
        ],
        &[],
    );
    let count = |ns: &str, table: &str, counter: &str| lab.nft_counter(ns, table, counter);

    // 1. The server builds the outer header: ECT(0) inside, ECT(0) outside (§4.1)...
    let before = count(&cl, "ctre_ecn_c", "outer_ect0");
    pings(&lab, &bk, &client_tun, &["-Q", ECT0]);
    let ect0 = count(&cl, "ctre_ecn_c", "outer_ect0") - before;
    assert!(
        ect0 >= u64::from(PINGS),
        "{ect0} ECT(0) datagrams from the server for {PINGS} ECT(0) echo requests\n{}",
        lab.logs()
    );
    // ... and Not-ECT inside, Not-ECT outside.
    let (ect0_before, plain_before) = (
        count(&cl, "ctre_ecn_c", "outer_ect0"),
        count(&cl, "ctre_ecn_c", "outer_not_ect"),
    );
    pings(&lab, &bk, &client_tun, &[]);
    let plain = count(&cl, "ctre_ecn_c", "outer_not_ect") - plain_before;
    assert!(
        plain >= u64::from(PINGS),
        "{plain} Not-ECT datagrams for {PINGS} Not-ECT echo requests"
    );
    assert_eq!(
        count(&cl, "ctre_ecn_c", "outer_ect0"),
        ect0_before,
        "an echo request that is not ECN-capable went out ECN-capable"
    );

    // 2. A congested path towards the server marks the outer headers CE: the server marks the
    // ECT(0) packets CE when it opens them, and drops the Not-ECT ones (§4.2).
    ecn_table(
        &lab,
        &srv,
        "ctre_ecn_s",
        &[],
        &[(
            "prerouting",
            &format!("{ip} saddr {client_underlay} udp dport {PORT} {ip} ecn set ce"),
        )],
    );
    let ce_before = count(&bk, "ctre_ecn_b", "inner_ce");
    pings(&lab, &cl, BACKEND, &["-Q", ECT0]);
    let ce = count(&bk, "ctre_ecn_b", "inner_ce") - ce_before;
    assert!(
        ce >= u64::from(PINGS),
        "{ce} CE echo requests at the backend for {PINGS} ECT(0) ones under outer CE\n{}",
        lab.logs()
    );
    assert_eq!(
        count(&bk, "ctre_ecn_b", "inner_ect0"),
        0,
        "an ECT(0) packet under outer CE arrived unmarked"
    );
    let dropped_before = drops(&lab.show_json(), "congested_not_ect");
    let plain_before = count(&bk, "ctre_ecn_b", "inner_not_ect");
    pings(&lab, &cl, BACKEND, &[]);
    let dropped = drops(&lab.show_json(), "congested_not_ect") - dropped_before;
    assert!(
        dropped >= u64::from(PINGS),
        "{dropped} congested_not_ect drops for {PINGS} Not-ECT echo requests under outer CE: {}",
        lab.show_json()["workers"]
    );
    assert_eq!(
        count(&bk, "ctre_ecn_b", "inner_not_ect"),
        plain_before,
        "a Not-ECT packet under outer CE was delivered"
    );
    drop_table(&lab, &srv, "ctre_ecn_s");

    // 2b. A node on the path that makes the outer headers ECT(1), the packets inside not
    // being ECN-capable: RFC 6040 §4.2 forwards them as they are and calls the combination an
    // alarm ("(!!!)"); the server counts it.
    ecn_table(
        &lab,
        &srv,
        "ctre_ecn_s3",
        &[],
        &[(
            "prerouting",
            &format!("{ip} saddr {client_underlay} udp dport {PORT} {ip} ecn set ect1"),
        )],
    );
    let alarms_before = ecn_alarms(&lab.show_json());
    let plain_before = count(&bk, "ctre_ecn_b", "inner_not_ect");
    pings(&lab, &cl, BACKEND, &[]);
    let alarms = ecn_alarms(&lab.show_json()) - alarms_before;
    assert!(
        alarms >= u64::from(PINGS),
        "{alarms} ECN alarms for {PINGS} Not-ECT echo requests under outer ECT(1): {}",
        lab.show_json()["workers"]
    );
    let delivered = count(&bk, "ctre_ecn_b", "inner_not_ect") - plain_before;
    assert!(
        delivered >= u64::from(PINGS),
        "{delivered} of {PINGS} Not-ECT echo requests under outer ECT(1) delivered"
    );
    drop_table(&lab, &srv, "ctre_ecn_s3");

    // 3. The same towards the client, which opens what the server sends.
    ecn_table(
        &lab,
        &srv,
        "ctre_ecn_s2",
        &[],
        &[(
            "postrouting",
            &format!("{ip} daddr {client_underlay} udp sport {PORT} {ip} ecn set ce"),
        )],
    );
    let ce_before = count(&cl, "ctre_ecn_c", "inner_ce");
    pings(&lab, &bk, &client_tun, &["-Q", ECT0]);
    let ce = count(&cl, "ctre_ecn_c", "inner_ce") - ce_before;
    assert!(
        ce >= u64::from(PINGS),
        "{ce} CE echo requests at the client for {PINGS} ECT(0) ones under outer CE\n{}",
        lab.logs()
    );
    let plain_before = count(&cl, "ctre_ecn_c", "inner_not_ect");
    pings(&lab, &bk, &client_tun, &[]);
    assert_eq!(
        count(&cl, "ctre_ecn_c", "inner_not_ect"),
        plain_before,
        "the client delivered a Not-ECT packet under outer CE"
    );
}
