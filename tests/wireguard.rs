//! End-to-end with a stock WireGuard client: wireguard-go (Debian's package), configured with
//! `wg` and `ip` only, connects to the server in namespaces beside a native client
//! (`concentrator connect`) on the same UDP port.
//!
//! Needs root and `wireguard-go` and `wg` on the path (`apt-get install wireguard-go
//! wireguard-tools`); prints `SKIPPED <name>: ...` otherwise.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// The WireGuard client's address: fixed in its peer entry, set on its interface by `ip`.
const WG_CLIENT_ADDRESS: &str = "10.66.0.200";

/// Removes wireguard-go's UAPI socket, which lives outside the namespace (in
/// /var/run/wireguard, shared by all namespaces), should the process not remove it itself.
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn wireguard_go_client_and_native_client_on_one_server() {
    let name = "wireguard_go_client_and_native_client_on_one_server";
    if !lab_or_skip(name) || !tools_or_skip(name, &["wireguard-go", "wg"]) {
        return;
    }
    let mut lab = Lab::new(LabConfig::with_clients(2));
    // Client 2 is the stock WireGuard client: its peer (the last in the file) speaks the
    // WireGuard suite and gets a fixed address, which the handshake does not carry.
    let config = lab.server_config_path();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!("protocol = \"wireguard\"\naddress = \"{WG_CLIENT_ADDRESS}\"\n");
    std::fs::write(&config, text).unwrap();

    lab.start_server();
    lab.start_client(0);
    let native_address = lab.wait_tunnel(0);

    // wireguard-go in client 2's namespace. Its interface name carries the PID and lab id: the
    // UAPI socket directory is not per namespace.
    let ns = lab.client_ns[1].clone();
    let dev = format!("cwg{:x}-{}", std::process::id(), lab.id);
    let socket = PathBuf::from(format!("/var/run/wireguard/{dev}.sock"));
    let _socket_guard = SocketGuard(socket.clone());
    let wg = lab.spawn_proc_env(
        &ns,
        "wireguard-go",
        &["wireguard-go", "-f", &dev],
        &[("LOG_LEVEL".into(), "error".into())],
    );
    lab.others.push(wg);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "wireguard-go did not create {}:\n{}",
            socket.display(),
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let key = lab.dir().join("c2.key").to_string_lossy().into_owned();
    let endpoint = format!("{SERVER_UNDERLAY}:{PORT}");
    let server_key = lab.server_pubkey.clone();
    lab.exec_ok(
        &ns,
        &[
            "wg",
            "set",
            &dev,
            "private-key",
            &key,
            "peer",
            &server_key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            &format!("{CLIENT_SUBNET},10.1.0.0/24"),
        ],
        Duration::from_secs(10),
    );
    lab.ip(
        &ns,
        &[
            "addr",
            "add",
            &format!("{WG_CLIENT_ADDRESS}/16"),
            "dev",
            &dev,
        ],
    );
    lab.ip(&ns, &["link", "set", "mtu", "1420", "up", "dev", &dev]);
    lab.ip(&ns, &["route", "add", "10.1.0.0/24", "dev", &dev]);

    // The first packets start the handshake (wireguard-go queues them meanwhile); then
    // every ping must come back.
    let _ = lab.ping(&ns, BACKEND, 3, &[]);
    lab.ping_ok(&ns, BACKEND, 5);
    lab.ping_ok(&ns, SERVER_VIRTUAL, 3);
    let backend = lab.backend_ns.clone();
    lab.ping_ok(&backend, WG_CLIENT_ADDRESS, 5);
    // The native client on the same port at the same time.
    let c1 = lab.client_ns[0].clone();
    lab.ping_ok(&c1, BACKEND, 3);
    lab.ping_ok(&backend, &native_address.to_string(), 3);

    let handshakes = lab.exec_ok(&ns, &["wg", "show", &dev, "latest-handshakes"], SHORT_WAIT);
    let latest: u64 = handshakes
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(latest > 0, "wireguard-go saw no handshake: {handshakes}");

    let show = lab.show_json();
    assert_eq!(show["sessions"].as_u64(), Some(2), "show --json: {show}");
    let peers = show["peers"].as_array().expect("peers");
    let protocol_of = |key: &str| {
        peers
            .iter()
            .find(|p| p["public_key"] == key)
            .map(|p| p["protocol"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        protocol_of(&lab.client_pubkeys[1]).as_deref(),
        Some("wireguard"),
        "{show}"
    );
    assert_eq!(
        protocol_of(&lab.client_pubkeys[0]).as_deref(),
        Some("native"),
        "{show}"
    );
    let wg_peer = peers
        .iter()
        .find(|p| p["public_key"] == lab.client_pubkeys[1].as_str())
        .unwrap();
    assert_eq!(wg_peer["address"], WG_CLIENT_ADDRESS, "{show}");
    assert!(wg_peer["rx_bytes"].as_u64() > Some(0), "{show}");

    let log = lab.stop_server();
    let counters = parse_counters(&log);
    assert!(
        counters.iter().all(|c| c.dropped("authentication") == 0),
        "{counters:?}"
    );
}

const SHORT_WAIT: Duration = Duration::from_secs(10);
