//! Sites behind clients: a network in its own namespace behind client B, routed by the server
//! through B's `allowed_ips` (see `tests/common` for the lab).
//!
//! ```text
//!   client A ─┐                                   backend 10.1.0.2
//!             ├─ server (TUN ctrs0, kernel routes for allowed_ips) ─┘
//!   client B ─┘
//!     └── veth ── site 10.99.0.2/24 (and 10.98.0.2/24, a network B may not send from)
//!         B: 10.99.0.1/24, forwarding on; the site's default route goes via B
//! ```
//!
//! They need root and print `SKIPPED <name>: ...` otherwise, except the configuration check at
//! the end, which needs nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::traffic::{transfer_sha256_bytes, Transfer, CONNECT};
use common::*;

/// The site behind client B, and its host.
const SITE_NET: &str = "10.99.0.0/24";
const SITE_GW: &str = "10.99.0.1";
const SITE_HOST: &str = "10.99.0.2";
/// A second network at the site that is not in B's `allowed_ips`.
const OUTSIDE_HOST: &str = "10.98.0.2";
/// The site's IPv6 network, host and gateway (labs with `inner6`).
const SITE_NET6: &str = "fd99::/48";
const SITE_GW6: &str = "fd99::1";
const SITE_HOST6: &str = "fd99::2";
/// Bytes of the SHA-256 transfers (smaller than the default: the point is integrity).
const TRANSFER: usize = 4 * 1024 * 1024;
const SHORT: Duration = Duration::from_secs(10);

/// A lab whose client B (index 1) has a site behind it.
struct SiteLab {
    lab: Lab,
    /// The site's namespace.
    site: String,
    /// B's link to the site, and the site's end of it.
    to_site: String,
    at_site: String,
}

impl SiteLab {
    /// Builds the lab, the site namespace and its link; gives B `b_allowed` as `allowed_ips`
    /// and client A the extra `a_routes`; starts nothing.
    fn new(cfg: LabConfig, b_allowed: &[&str], a_routes: &[&str]) -> SiteLab {
        let mut lab = Lab::new(LabConfig { clients: 2, ..cfg });
        let site = lab.add_namespace("st");
        let b = lab.client_ns[1].clone();
        let (to_site, at_site) = lab.add_veth("s", &b, &site);
        lab.add_addr(&b, &format!("{SITE_GW}/24"), &to_site);
        lab.add_addr(&site, &format!("{SITE_HOST}/24"), &at_site);
        lab.add_addr(&site, &format!("{OUTSIDE_HOST}/24"), &at_site);
        lab.ip(&b, &["link", "set", &to_site, "up"]);
        lab.ip(&site, &["link", "set", &at_site, "up"]);
        lab.ip(&site, &["route", "add", "default", "via", SITE_GW]);
        // B forwards between its site and the tunnel, and passes the site's packets from the
        // network it may not send from (so that the server is the one that drops them).
        let mut sysctls = vec![
            "net.ipv4.ip_forward=1".to_string(),
            "net.ipv4.conf.all.rp_filter=0".to_string(),
            format!("net.ipv4.conf.{to_site}.rp_filter=0"),
        ];
        if lab.cfg.inner6 {
            lab.add_addr(&b, &format!("{SITE_GW6}/64"), &to_site);
            lab.add_addr(&site, &format!("{SITE_HOST6}/64"), &at_site);
            lab.ip(&site, &["-6", "route", "add", "default", "via", SITE_GW6]);
            sysctls.push("net.ipv6.conf.all.forwarding=1".to_string());
        }
        for s in &sysctls {
            lab.exec_ok(&b, &["sysctl", "-q", "-w", s], SHORT);
        }
        let lab = SiteLab {
            lab,
            site,
            to_site,
            at_site,
        };
        lab.set_allowed_ips(1, b_allowed);
        lab.add_client_routes(0, a_routes);
        lab
    }

    /// For `test`: a lab without IPv6 whose site's one network is all B may send from, with
    /// the server and both clients up; `None` (after the skip line) when lab tests cannot run.
    fn one_network_up_or_skip(test: &str) -> Option<SiteLab> {
        if !lab_or_skip(test) {
            return None;
        }
        let mut s = SiteLab::new(LabConfig::without_ipv6(2), &[SITE_NET], &[]);
        s.lab.up();
        Some(s)
    }

    /// Sets peer `i`'s `allowed_ips` in the server's file (replacing what it had).
    fn set_allowed_ips(&self, i: usize, prefixes: &[&str]) {
        let path = self.lab.server_config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let key_line = format!("public_key = \"{}\"\n", self.lab.client_pubkeys[i]);
        let start = text.find(&key_line).expect("peer in the server's file") + key_line.len();
        let rest = &text[start..];
        let rest = match rest.strip_prefix("allowed_ips = ") {
            Some(r) => &r[r.find('\n').map_or(r.len(), |n| n + 1)..],
            None => rest,
        };
        let line = if prefixes.is_empty() {
            String::new()
        } else {
            format!("allowed_ips = [{}]\n", quoted(prefixes))
        };
        let text = format!("{}{line}{rest}", &text[..start]);
        std::fs::write(&path, text).unwrap();
    }

    /// Adds `routes` to client `i`'s `routes`.
    fn add_client_routes(&self, i: usize, routes: &[&str]) {
        if routes.is_empty() {
            return;
        }
        let path = self.lab.dir().join(format!("c{}.toml", i + 1));
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replacen("routes = [", &format!("routes = [{}, ", quoted(routes)), 1);
        std::fs::write(&path, text).unwrap();
    }

    /// Kernel routes for `prefix` in the server's namespace (`ip route show`, either family).
    fn server_routes(&self, prefix: &str) -> String {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        self.lab
            .ip(&self.lab.server_ns, &[family, "route", "show", prefix])
    }

    /// Drops of `reason` summed over the server's workers, from `show --json`.
    fn drops(&self, reason: &str) -> u64 {
        let show = self.lab.show_json();
        show["workers"]
            .as_array()
            .expect("workers in show --json")
            .iter()
            .map(|w| w["drops"][reason].as_u64().unwrap_or(0))
            .sum()
    }

    /// `concentrator peer ...` against the lab's server.
    fn peer_command(&self, args: &[&str]) -> Output {
        let sock = self.lab.control_socket();
        let mut argv = vec![BIN, "peer", "--socket", sock.to_str().unwrap()];
        argv.extend_from_slice(args);
        cmd::run(&argv, None, SHORT)
    }
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[track_caller]
fn assert_same_transfer(t: &Transfer, what: &str) {
    assert!(!t.sent.is_empty(), "{what}: sender printed nothing");
    assert_eq!(
        t.sent, t.got,
        "{what}: received bytes differ from those sent"
    );
}

/// A one-shot iperf3 server in `server_ns` at `addr:port`, then `iperf3 -c` from `client_ns`
/// for 2 s; asserts that bytes arrived.
fn iperf3_between(lab: &mut Lab, server_ns: &str, addr: &str, client_ns: &str, port: u16) {
    let port_s = port.to_string();
    lab.spawn_in(
        server_ns,
        &format!("iperf3-s-{port}"),
        &["iperf3", "-s", "-1", "-B", addr, "-p", &port_s],
    );
    let deadline = std::time::Instant::now() + SHORT;
    while !lab
        .exec(
            server_ns,
            &["ss", "-Hltn", "sport", "=", &format!(":{port}")],
            SHORT,
        )
        .stdout
        .contains("LISTEN")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "iperf3 server not listening"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = lab.exec(
        client_ns,
        &["iperf3", "-c", addr, "-p", &port_s, "-t", "2", "-J"],
        Duration::from_secs(40),
    );
    assert!(
        out.ok(),
        "iperf3 to {addr} from {client_ns} failed: {}{}\n{}",
        out.stdout,
        out.stderr,
        lab.logs()
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("iperf3 -J prints JSON");
    let received = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(received > 0, "iperf3 to {addr}: nothing received: {v}");
}

/// The site is reachable from the backend and from client A (ping, iperf3, SHA-256 both
/// ways), and its host reaches the backend.
fn site_reachable(client_to_client: bool) {
    let test = format!("site_reachable_client_to_client_{client_to_client}");
    if !lab_or_skip(&test) || !tools_or_skip(&test, &["iperf3", "ss"]) {
        return;
    }
    let cfg = LabConfig {
        client_to_client,
        ..LabConfig::without_ipv6(2)
    };
    let mut s = SiteLab::new(cfg, &[SITE_NET], &[SITE_NET]);
    s.lab.up();
    let (a, backend, site) = (
        s.lab.client_ns[0].clone(),
        s.lab.backend_ns.clone(),
        s.site.clone(),
    );
    assert!(
        s.server_routes(SITE_NET)
            .contains(&format!("dev {SERVER_TUN}")),
        "no kernel route for the site: {}",
        s.server_routes(SITE_NET)
    );
    s.lab.ping_ok(&backend, SITE_HOST, 5);
    s.lab.ping_ok(&site, BACKEND, 3);
    s.lab.ping_ok(&a, SITE_HOST, 5);
    s.lab
        .ping_ok(&site, &s.lab.client_tun_addr(0).unwrap().to_string(), 3);

    iperf3_between(&mut s.lab, &site, SITE_HOST, &backend, 5301);
    iperf3_between(&mut s.lab, &site, SITE_HOST, &a, 5302);
    let t = transfer_sha256_bytes(
        &s.lab,
        &backend,
        &site,
        SITE_HOST,
        5401,
        TRANSFER,
        Some("backend to site"),
    );
    assert_same_transfer(&t, "backend to site");
    let t = transfer_sha256_bytes(
        &s.lab,
        &site,
        &backend,
        BACKEND,
        5402,
        TRANSFER,
        Some("site to backend"),
    );
    assert_same_transfer(&t, "site to backend");
    let t = transfer_sha256_bytes(
        &s.lab,
        &a,
        &site,
        SITE_HOST,
        5403,
        TRANSFER,
        Some("client A to site"),
    );
    assert_same_transfer(&t, "client A to site");
    let a_addr = s.lab.client_tun_addr(0).unwrap().to_string();
    let t = transfer_sha256_bytes(
        &s.lab,
        &site,
        &a,
        &a_addr,
        5404,
        TRANSFER,
        Some("site to client A"),
    );
    assert_same_transfer(&t, "site to client A");

    let show = s.lab.show_json();
    let relayed: u64 = show["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["relayed_packets"].as_u64().unwrap_or(0))
        .sum();
    if client_to_client {
        assert!(
            relayed > 0,
            "client A and the site talked without the relay: {show}"
        );
    } else {
        assert_eq!(
            relayed, 0,
            "relayed although client_to_client is off: {show}"
        );
    }
    assert_eq!(s.drops("spoofed_source"), 0, "{show}");
}

#[test]
fn site_reachable_with_client_to_client() {
    site_reachable(true);
}

#[test]
fn site_reachable_without_client_to_client() {
    site_reachable(false);
}

#[test]
fn site_sources_outside_the_allowed_networks_are_dropped() {
    let test = "site_sources_outside_the_allowed_networks_are_dropped";
    let Some(s) = SiteLab::one_network_up_or_skip(test) else {
        return;
    };
    let site = s.site.clone();
    // The site's own network passes...
    s.lab.ping_ok(&site, BACKEND, 3);
    assert_eq!(s.drops("spoofed_source"), 0);
    // ...a second network at the site that B may not send from does not.
    let out = s.lab.ping(&site, BACKEND, 4, &["-I", OUTSIDE_HOST]);
    assert!(
        out.stdout.contains("100% packet loss"),
        "pings from {OUTSIDE_HOST} got through:\n{}",
        out.stdout
    );
    let dropped = s.drops("spoofed_source");
    assert!(
        dropped >= 4,
        "{dropped} spoofed_source drops for 4 pings from {OUTSIDE_HOST}: {}",
        s.lab.show_json()
    );
}

#[test]
fn the_more_specific_prefix_wins() {
    let test = "the_more_specific_prefix_wins";
    if !lab_or_skip(test) {
        return;
    }
    // A hub (client A) holds 172.16.0.0/12 with a host of it on its loopback; the site behind
    // B holds 172.16.99.0/24, inside the hub's network.
    let s = SiteLab::new(LabConfig::without_ipv6(2), &["172.16.99.0/24"], &[]);
    s.set_allowed_ips(0, &["172.16.0.0/12"]);
    let (a, b, site, backend) = (
        s.lab.client_ns[0].clone(),
        s.lab.client_ns[1].clone(),
        s.site.clone(),
        s.lab.backend_ns.clone(),
    );
    s.lab.add_addr(&a, "172.16.5.1/32", "lo");
    // An address of the site's network on the hub: the hub may not send from it.
    s.lab.add_addr(&a, "172.16.99.9/32", "lo");
    s.lab.add_addr(&b, "172.16.99.1/24", &s.to_site);
    s.lab.add_addr(&site, "172.16.99.2/24", &s.at_site);
    let mut s = s;
    s.lab.up();
    for prefix in ["172.16.0.0/12", "172.16.99.0/24"] {
        assert!(
            s.server_routes(prefix).contains(SERVER_TUN),
            "no kernel route for {prefix}"
        );
    }
    // 172.16.99.2 is in both networks: it goes to the site (B), 172.16.5.1 to the hub (A).
    s.lab.ping_ok(&backend, "172.16.99.2", 3);
    s.lab.ping_ok(&backend, "172.16.5.1", 3);
    let out = s.lab.ping(&a, BACKEND, 3, &["-I", "172.16.99.9"]);
    assert!(
        out.stdout.contains("100% packet loss"),
        "the hub sent from the site's network:\n{}",
        out.stdout
    );
    assert!(s.drops("spoofed_source") >= 3, "{}", s.lab.show_json());
}

#[test]
fn kernel_routes_follow_the_peers() {
    let test = "kernel_routes_follow_the_peers";
    if !lab_or_skip(test) {
        return;
    }
    let cfg = LabConfig {
        inner6: true,
        ..Default::default()
    };
    let mut s = SiteLab::new(cfg, &[SITE_NET, SITE_NET6], &[]);
    // A route for a network of client A that the host already has: not ours to take or remove.
    let foreign = "10.97.0.0/24";
    s.lab.ip(
        &s.lab.server_ns.clone(),
        &["route", "add", foreign, "via", BACKEND],
    );
    s.set_allowed_ips(0, &[foreign]);
    s.lab.up();
    let tun = format!("dev {SERVER_TUN}");
    assert!(
        s.server_routes(SITE_NET).contains(&tun),
        "{}",
        s.server_routes(SITE_NET)
    );
    assert!(
        s.server_routes(SITE_NET6).contains(&tun),
        "{}",
        s.server_routes(SITE_NET6)
    );
    let backend = s.lab.backend_ns.clone();
    s.lab.ping_ok(&backend, SITE_HOST6, 3);
    assert!(
        s.server_routes(foreign).contains(&format!("via {BACKEND}"))
            && !s.server_routes(foreign).contains(SERVER_TUN),
        "{}",
        s.server_routes(foreign)
    );
    let log = s.lab.server.as_ref().unwrap().stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(foreign) && l.contains("already")),
        "no warning about the route that was there before:\n{log}"
    );

    // Removing B takes its routes away; adding it back live brings them back.
    let b_key = s.lab.client_pubkeys[1].clone();
    let out = s.peer_command(&["remove", &b_key]);
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    assert_eq!(s.server_routes(SITE_NET), "");
    assert_eq!(s.server_routes(SITE_NET6), "");
    let both = format!("{SITE_NET},{SITE_NET6}");
    let out = s.peer_command(&["add", "--public-key", &b_key, "--allowed-ips", &both]);
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(SITE_NET), "{}", out.stdout);
    assert!(s.server_routes(SITE_NET).contains(&tun));
    assert!(s.server_routes(SITE_NET6).contains(&tun));
    // The removal erased B's keys; a restarted client handshakes at once.
    s.lab.stop_client(1);
    s.lab.start_client(1);
    s.lab.wait_tunnel(1);

    // A reload that drops the IPv6 network from B takes only that route away.
    s.set_allowed_ips(1, &[SITE_NET]);
    let sock = s.lab.control_socket();
    let out = cmd::run(
        &[BIN, "reload", "--json", "--socket", sock.to_str().unwrap()],
        None,
        SHORT,
    );
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    let reply: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let changed = &reply["changed"];
    assert!(
        changed
            .as_array()
            .is_some_and(|c| c.iter().any(|p| p["public_key"] == b_key.as_str()
                && p["what"] == serde_json::json!(["allowed_ips"]))),
        "{reply}"
    );
    assert!(s.server_routes(SITE_NET).contains(&tun));
    assert_eq!(s.server_routes(SITE_NET6), "");
    s.lab.ping_ok(&backend, SITE_HOST, 3);

    // At exit every route of ours goes, and the one that was there before stays.
    let log = s.lab.stop_server();
    assert_eq!(s.server_routes(SITE_NET), "");
    assert!(s.server_routes(foreign).contains(&format!("via {BACKEND}")));
    assert!(
        !log.contains("could not remove"),
        "route removal failed at exit:\n{log}"
    );
}

#[test]
fn the_same_prefix_on_two_peers_is_refused_live() {
    let test = "the_same_prefix_on_two_peers_is_refused_live";
    let Some(s) = SiteLab::one_network_up_or_skip(test) else {
        return;
    };
    let b_key = s.lab.client_pubkeys[1].clone();
    let (_, newcomer) = keypair();
    let out = s.peer_command(&["add", "--public-key", &newcomer, "--allowed-ips", SITE_NET]);
    assert!(
        !out.ok(),
        "a second owner for {SITE_NET} was accepted: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains(SITE_NET)
            && out.stderr.contains(&b_key)
            && out.stderr.contains(&newcomer),
        "the refusal must name the prefix and both peers:\n{}",
        out.stderr
    );
    // Inside the client subnet: refused too.
    let out = s.peer_command(&[
        "add",
        "--public-key",
        &newcomer,
        "--allowed-ips",
        "10.66.7.0/24",
    ]);
    assert!(
        !out.ok() && out.stderr.contains(CLIENT_SUBNET),
        "{}",
        out.stderr
    );
    // Nothing of the refused peer stayed: it can be added with a prefix of its own.
    assert_eq!(s.lab.show_json()["peers_total"].as_u64(), Some(2));
    let out = s.peer_command(&[
        "add",
        "--public-key",
        &newcomer,
        "--allowed-ips",
        "10.96.0.0/16",
    ]);
    assert!(out.ok(), "{}{}", out.stdout, out.stderr);
    assert!(s.server_routes("10.96.0.0/16").contains(SERVER_TUN));
    // The site still belongs to B.
    s.lab.ping_ok(&s.lab.backend_ns.clone(), SITE_HOST, 3);
}

/// `mss_clamp`: a SYN from the backend to the site (through the server's TUN read) and the
/// site's SYN-ACK back (through the server's TUN write) arrive with the MSS lowered to what
/// fits the tunnel, and without it they keep the 1500-byte links' MSS.
fn mss(clamp: bool, offloads: bool) {
    let test = format!("mss_clamp_{clamp}_offloads_{offloads}");
    if !lab_or_skip(&test) {
        return;
    }
    let cfg = LabConfig {
        offloads,
        ..LabConfig::without_ipv6(2)
    };
    let mut s = SiteLab::new(cfg, &[SITE_NET], &[]);
    if clamp {
        s.lab.add_server_settings("mss_clamp = true");
    }
    s.lab.up();
    // The MSS each end uses (TCP_MAXSEG of the connected socket): the MSS the other side
    // announced, less 12 bytes of timestamps, capped by its own link (1500 - 40 - 12 = 1448).
    let listener = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
s.settimeout(20)
c, _ = s.accept()
print(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), flush=True)
c.settimeout(20)
c.recv(1)
"#;
    let connector = format!(
        "{CONNECT}{}",
        r#"
s = connect(sys.argv[1], sys.argv[2])
print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), flush=True)
s.close()
"#
    );
    let site = s.site.clone();
    let backend = s.lab.backend_ns.clone();
    let mut rx = s.lab.spawn_proc(
        &site,
        "mss-listener",
        &["python3", "-c", listener, SITE_HOST, "5501"],
    );
    let deadline = std::time::Instant::now() + SHORT;
    while !rx.stdout().starts_with("ready") {
        assert!(rx.exited().is_none(), "listener exited: {}", rx.stderr());
        assert!(std::time::Instant::now() < deadline, "listener not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let tx = s.lab.exec_ok(
        &backend,
        &["python3", "-c", &connector, SITE_HOST, "5501"],
        SHORT,
    );
    assert!(
        rx.wait(SHORT).is_some_and(|st| st.success()),
        "{}",
        rx.stderr()
    );
    let at_backend: u16 = tx.trim().parse().expect("the connector prints its MSS");
    let at_site: u16 = rx
        .stdout()
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("the listener prints its MSS");
    // MTU 1420: 1380 announced, 1368 with timestamps.
    let fits = |mss: u16| mss <= 1420 - 40;
    eprintln!("{test}: MSS at the backend {at_backend}, at the site {at_site}");
    assert_eq!(
        fits(at_site),
        clamp,
        "the site uses MSS {at_site} (SYN through the TUN read)"
    );
    assert_eq!(
        fits(at_backend),
        clamp,
        "the backend uses MSS {at_backend} (SYN-ACK through the TUN write)"
    );
    // Clamped or not, the connection's data went through.
    s.lab.ping_ok(&backend, SITE_HOST, 2);
}

#[test]
fn mss_clamp_lowers_the_mss_of_syns_crossing_the_tunnel() {
    mss(true, true);
    mss(true, false);
}

#[test]
fn without_mss_clamp_the_mss_of_syns_is_left_alone() {
    mss(false, true);
}

/// Writes a server configuration with two peers whose `allowed_ips` share a prefix and
/// returns the output of `concentrator check --config` on it.
fn check_two_owners(dir: &Path) -> (Output, String, String) {
    let (server_key, _) = keypair();
    let (_, first) = keypair();
    let (_, second) = keypair();
    let key_path = dir.join("server.key");
    std::fs::write(&key_path, server_key).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "private_key_file = \"server.key\"\naddress = \"10.66.0.1/16\"\n\n\
         [[peer]]\npublic_key = \"{first}\"\nallowed_ips = [\"10.99.0.0/24\", \"10.0.0.0/8\"]\n\n\
         [[peer]]\npublic_key = \"{second}\"\nallowed_ips = [\"10.99.0.7/24\"]\n"
    );
    let config = dir.join("server.toml");
    std::fs::write(&config, text).unwrap();
    let out = cmd::run(
        &[BIN, "check", "--config", config.to_str().unwrap()],
        None,
        SHORT,
    );
    (out, first, second)
}

#[test]
fn the_same_prefix_on_two_peers_is_refused_at_load() {
    let dir = std::env::temp_dir().join(format!("ctr-sites-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (out, first, second) = check_two_owners(&dir);
    // The same file with the conflict and the overlap taken out is valid, and says so.
    let config = dir.join("server.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(r#", "10.0.0.0/8""#, "")
        .replace("10.99.0.7/24", "172.16.99.0/24")
        .replace("address = ", "mss_clamp = true\naddress = ");
    std::fs::write(&config, text).unwrap();
    let valid = cmd::run(
        &[BIN, "check", "--config", config.to_str().unwrap()],
        None,
        SHORT,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(valid.ok(), "{}{}", valid.stdout, valid.stderr);
    assert!(
        valid.stdout.contains("2 networks on 2 peers")
            && valid
                .stdout
                .contains("at most MSS 1380 (IPv4) or 1360 (IPv6)"),
        "{}",
        valid.stdout
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{text}");
    // 10.99.0.7/24 is 10.99.0.0/24 once its host bits go: the same prefix as the first peer's.
    let line = text
        .lines()
        .find(|l| l.contains("peer[1].allowed_ips[0]"))
        .unwrap_or_else(|| panic!("no problem for peer[1].allowed_ips[0]:\n{text}"));
    assert!(
        line.contains("10.99.0.0/24") && line.contains(&first) && line.contains(&second),
        "the problem must name the prefix and both peers' keys: {line}"
    );
    // 10.0.0.0/8 contains the client subnet 10.66.0.0/16: refused on its own.
    assert!(
        text.lines()
            .any(|l| l.contains("peer[0].allowed_ips[1]") && l.contains("10.66.0.0/16")),
        "{text}"
    );
}
