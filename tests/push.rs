//! Routes and DNS servers pushed by the server (`push_routes`, `push_dns`), end to end: the real
//! binary in network namespaces (see `tests/common`). Needs root; prints `SKIPPED` otherwise.

mod common;

use std::time::{Duration, Instant};

use common::net::route_dev;
use common::*;

/// Pushed to every peer: a network behind the server, in both families.
const PUSHED: &str = "10.98.0.0/24";
const PUSHED_HOST: &str = "10.98.0.2";
const PUSHED6: &str = "fd98::/64";
const PUSHED_HOST6: &str = "fd98::2";
/// Pushed to the one peer only: another network, and one that contains the server's
/// underlay address (10.0.0.1), more specific than the client's connected /24.
const OWN: &str = "10.97.0.0/24";
const OVER_SERVER: &str = "10.0.0.0/25";
const DNS: &str = "10.1.0.53";
const WAIT: Duration = Duration::from_secs(10);

/// True when pushed DNS servers would reach the host's resolver: resolvectl talks to the
/// host's systemd-resolved and resolvconf writes the host's files, whatever the namespace.
fn host_resolver_tools() -> bool {
    on_path("resolvectl") || on_path("resolvconf")
}

/// A one-client lab with IPv6 in the tunnel, a host on the pushed networks behind the server
/// (on the backend's loopback, routed by the server), and the push settings in server.toml.
fn lab_with_pushes(dns: bool) -> Lab {
    let lab = Lab::new(LabConfig {
        clients: 1,
        inner6: true,
        ..Default::default()
    });
    let (s, b) = (lab.server_ns.clone(), lab.backend_ns.clone());
    lab.ip(
        &b,
        &["addr", "add", &format!("{PUSHED_HOST}/32"), "dev", "lo"],
    );
    lab.ip(
        &b,
        &["addr", "add", &format!("{PUSHED_HOST6}/128"), "dev", "lo"],
    );
    lab.ip(&s, &["route", "add", PUSHED, "via", BACKEND]);
    lab.ip(&s, &["-6", "route", "add", PUSHED6, "via", BACKEND6]);
    let dns = if dns {
        format!("push_dns = [\"{DNS}\"]")
    } else {
        String::new()
    };
    lab.add_server_settings(&format!(
        "push_routes = [\"{PUSHED}\", \"{PUSHED6}\"]\n{dns}"
    ));
    let path = lab.server_config_path();
    let key = &lab.client_pubkeys[0];
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("public_key = \"{key}\"\n"),
        &format!("public_key = \"{key}\"\npush_routes = [\"{OWN}\", \"{OVER_SERVER}\"]\n"),
    );
    std::fs::write(&path, text).unwrap();
    lab
}

/// The routes of `ns` for one family (`-4` or `-6`).
fn routes(lab: &Lab, ns: &str, family: &str) -> String {
    lab.ip(ns, &[family, "route", "show"])
}

/// Waits until `ip route show NET` in `ns` says `want` (present through the TUN, or absent).
fn wait_route(lab: &Lab, ns: &str, net: &str, present: bool) {
    let family = if net.contains(':') { "-6" } else { "-4" };
    let deadline = Instant::now() + WAIT;
    loop {
        let shown = lab.ip(ns, &[family, "route", "show", net]);
        let through_tun = shown.contains(&format!("dev {CLIENT_TUN}"));
        if through_tun == present && (present || shown.trim().is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "route {net} in {ns}: wanted present={present}, got {shown:?}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pushed_routes_appear_on_the_client_and_go_on_exit() {
    if !lab_or_skip("pushed_routes_appear_on_the_client_and_go_on_exit") {
        return;
    }
    let push_dns = !host_resolver_tools();
    if !push_dns {
        eprintln!(
            "pushed_routes_appear_on_the_client_and_go_on_exit: resolvectl or resolvconf is \
             installed, so no DNS server is pushed (it would change the host's resolver)"
        );
    }
    let mut lab = lab_with_pushes(push_dns);
    let c1 = lab.client_ns[0].clone();
    let before = (routes(&lab, &c1, "-4"), routes(&lab, &c1, "-6"));
    lab.up();
    for net in [PUSHED, PUSHED6, OWN, OVER_SERVER] {
        wait_route(&lab, &c1, net, true);
    }
    // The route over the server's address came with a host route to the server outside it.
    assert_eq!(
        route_dev(&lab, &c1, SERVER_UNDERLAY),
        lab.client_links[0],
        "the server's underlay address must not go into the tunnel"
    );
    assert_eq!(route_dev(&lab, &c1, PUSHED_HOST), CLIENT_TUN);
    // Traffic to the pushed networks goes through the tunnel (the client has no other way
    // there), and the tunnel still works with a route over the server's address.
    lab.ping_ok(&c1, PUSHED_HOST, 3);
    lab.ping_ok(&c1, PUSHED_HOST6, 3);
    lab.ping_ok(&c1, BACKEND, 3);
    let log = lab.clients[0].as_ref().unwrap().stderr();
    assert!(log.contains("pushed routes installed"), "{log}");
    if push_dns {
        assert!(
            log.contains("the server pushed DNS servers, but neither resolvectl")
                && log.contains(DNS),
            "no warning about the DNS servers it could not apply:\n{log}"
        );
    }

    let (st, log) = lab.stop_client(0);
    assert!(
        st.is_some_and(|s| s.success()),
        "client did not exit cleanly ({st:?}):\n{log}"
    );
    let after = (routes(&lab, &c1, "-4"), routes(&lab, &c1, "-6"));
    assert_eq!(after, before, "routes differ from before the client ran");
}

#[test]
fn a_reload_changes_the_pushed_routes_of_a_connected_client() {
    if !lab_or_skip("a_reload_changes_the_pushed_routes_of_a_connected_client") {
        return;
    }
    let mut lab = lab_with_pushes(false);
    let c1 = lab.client_ns[0].clone();
    lab.up();
    wait_route(&lab, &c1, PUSHED, true);
    let handshakes = |lab: &Lab| lab.show_json()["handshakes"]["completed"].as_u64();
    let before = handshakes(&lab);
    let path = lab.server_config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(PUSHED, "10.96.0.0/24")).unwrap();
    let sock = lab.control_socket();
    cmd::run_ok(
        &[BIN, "reload", "--socket", sock.to_str().unwrap()],
        None,
        WAIT,
    );
    // At once, not at the next handshake (two minutes away).
    wait_route(&lab, &c1, "10.96.0.0/24", true);
    wait_route(&lab, &c1, PUSHED, false);
    wait_route(&lab, &c1, OWN, true);
    // (A rekey is due only every two minutes.)
    assert_eq!(
        handshakes(&lab),
        before,
        "the change needed no new handshake"
    );
    lab.ping_ok(&c1, BACKEND, 2);
}
