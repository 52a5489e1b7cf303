//! What the kernel of a lab namespace says: routes, forwarding switches, links; the `ping` that
//! timestamps its replies; the counters of a masquerade test.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{Lab, CLIENT_SUBNET, CLIENT_SUBNET6, SERVER_BACKEND, SERVER_BACKEND6};

/// The device `ip route get DST` picks in `ns`.
pub fn route_dev(lab: &Lab, ns: &str, dst: &str) -> String {
    let out = lab.ip(ns, &["route", "get", dst]);
    out.split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no dev in route get {dst}: {out}"))
        .to_string()
}

/// `(IPv4, IPv6)` forwarding switches in `ns`: `net.ipv4.ip_forward` and
/// `net.ipv6.conf.all.forwarding`.
pub fn forwarding(lab: &Lab, ns: &str) -> (String, String) {
    let read = |path: &str| {
        lab.exec_ok(ns, &["cat", path], Duration::from_secs(5))
            .trim()
            .to_string()
    };
    (
        read("/proc/sys/net/ipv4/ip_forward"),
        read("/proc/sys/net/ipv6/conf/all/forwarding"),
    )
}

/// Starts the lab's server and stops it: while it runs, both forwarding switches of its
/// namespace are on; after it stops, they are back at `before` (`(IPv4, IPv6)`).
pub fn assert_forwarding_on_only_while_running(lab: &mut Lab, before: (&str, &str)) {
    let s = lab.server_ns.clone();
    lab.start_server();
    assert_eq!(
        forwarding(lab, &s),
        ("1".to_string(), "1".to_string()),
        "forwarding (IPv4, IPv6) while the server runs"
    );
    lab.stop_server();
    assert_eq!(
        forwarding(lab, &s),
        (before.0.to_string(), before.1.to_string()),
        "forwarding (IPv4, IPv6) after the server stopped, as before its start"
    );
}

/// Waits until link `dev` is gone from `ns`; panics when it is still there after `limit`
/// (counted from `since`, the moment `what` happened). Returns how long after `since` it went.
pub fn wait_link_gone(
    lab: &Lab,
    ns: &str,
    dev: &str,
    since: Instant,
    limit: Duration,
    what: &str,
) -> Duration {
    while lab
        .exec(ns, &["ip", "link", "show", dev], Duration::from_secs(5))
        .ok()
    {
        assert!(
            since.elapsed() < limit,
            "{dev} still there {limit:?} after {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    since.elapsed()
}

/// argv of a `ping` of `dst` ten times a second for `seconds` that prints each reply's
/// wall-clock time (`-D`, read by [`super::reply_times`]) and waits 1 s at most for each.
pub fn timestamped_ping<'a>(seconds: &'a str, dst: &'a str) -> [&'a str; 10] {
    [
        "ping", "-n", "-D", "-i", "0.1", "-W", "1", "-w", seconds, dst,
    ]
}

/// The start of a masquerade test: asserts that the backend has no route back to `client` (so
/// answers can come only through the masquerade), then adds nft table `ctre_nat` in the
/// backend, whose counter `from_server` counts echo requests from the server's backend-facing
/// address and `from_client` packets from the client subnet, both of `client`'s family.
pub fn no_route_back_and_nat_counters(lab: &Lab, client: IpAddr) {
    let (family, server, subnet, icmp) = if client.is_ipv6() {
        ("ip6", SERVER_BACKEND6, CLIENT_SUBNET6, "icmpv6")
    } else {
        ("ip", SERVER_BACKEND, CLIENT_SUBNET, "icmp")
    };
    let b = &lab.backend_ns;
    let to_client = client.to_string();
    let back = lab.exec(
        b,
        &["ip", "route", "get", &to_client],
        Duration::from_secs(5),
    );
    assert!(
        !back.ok(),
        "backend unexpectedly has a route to {client}: {}",
        back.stdout
    );
    count_input(
        lab,
        b,
        "ctre_nat",
        &[
            (
                "from_server",
                &format!("{family} saddr {server} {icmp} type echo-request"),
            ),
            ("from_client", &format!("{family} saddr {subnet}")),
        ],
    );
}

/// Adds nft table `table` (family inet) in `ns` that counts the packets `ns` receives: for each
/// `(name, rule)`, counter `name` counts what `rule` matches (`ip saddr 10.66.0.2`, say).
/// [`Lab::nft_counter`] reads them.
pub fn count_input(lab: &Lab, ns: &str, table: &str, counters: &[(&str, &str)]) {
    let mut script = format!("table inet {table} {{\n");
    for (name, _) in counters {
        script += &format!("  counter {name} {{}}\n");
    }
    script += "  chain ctre_input { type filter hook input priority 0; policy accept;\n";
    for (name, rule) in counters {
        script += &format!("    {rule} counter name {name}\n");
    }
    script += "  }\n}\n";
    lab.nft(ns, &script);
}

/// The end of a masquerade test started with [`no_route_back_and_nat_counters`], after at
/// least 5 pings from a client: the backend saw them from the server's address and nothing
/// from the client subnet; once the server stops, its nft `table` is gone.
pub fn assert_masqueraded_then_table_gone(lab: &mut Lab, table: &str) {
    let b = lab.backend_ns.clone();
    assert!(lab.nft_counter(&b, "ctre_nat", "from_server") >= 5);
    assert_eq!(
        lab.nft_counter(&b, "ctre_nat", "from_client"),
        0,
        "unmasqueraded packets from the client subnet"
    );
    lab.stop_server();
    let tables = lab.nft_tables(&lab.server_ns);
    assert!(
        !tables.contains(table),
        "nft {table} left after exit:\n{tables}"
    );
}

/// The IPv4 and the IPv6 routes of `ns`, as `ip route show` lists them.
pub fn routes_of_both_families(lab: &Lab, ns: &str) -> (String, String) {
    (
        lab.ip(ns, &["-4", "route", "show"]),
        lab.ip(ns, &["-6", "route", "show"]),
    )
}

/// Stops full-tunnel client `i`, which must exit cleanly and leave its namespace as it was
/// before it ran: no half of the IPv4 default route left, the routes `before` (from
/// [`routes_of_both_families`]) and no TUN.
pub fn assert_full_tunnel_client_leaves_no_trace(
    lab: &mut Lab,
    i: usize,
    before: (String, String),
) {
    let (st, log) = lab.stop_client(i);
    assert!(
        st.is_some_and(|s| s.success()),
        "client did not exit cleanly ({st:?}):\n{log}"
    );
    let ns = lab.client_ns[i].clone();
    let after = routes_of_both_families(lab, &ns);
    for r in ["0.0.0.0/1", "128.0.0.0/1"] {
        assert!(!after.0.contains(r), "{r} left behind:\n{}", after.0);
    }
    assert_eq!(after, before, "routes differ from before the client ran");
    let tun = lab.exec(
        &ns,
        &["ip", "link", "show", super::CLIENT_TUN],
        Duration::from_secs(5),
    );
    assert!(!tun.ok(), "TUN left behind after exit");
}
