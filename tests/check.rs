//! `concentrator check`: valid and invalid server and client configurations, checked without
//! touching the system (no root needed; as root too nothing is created).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{cmd, keypair, BIN};

const DEADLINE: Duration = Duration::from_secs(20);

/// A directory for one test's files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ctr-check-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Writes `text` to `name` with mode 0600 and returns the path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check(flag: &str, path: &Path) -> cmd::Output {
    cmd::run(
        &[BIN, "check", flag, path.to_str().unwrap()],
        None,
        DEADLINE,
    )
}

#[track_caller]
fn assert_status(out: &cmd::Output, code: i32) {
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(code),
        "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

/// The value printed for `label` (`  label: value`).
#[track_caller]
fn value<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{label}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{report}"))
}

#[test]
fn valid_server_config_prints_its_effective_settings_and_no_secret() {
    let s = Scratch::new("server-ok");
    let (server_key, server_pub) = keypair();
    s.write("server.key", &server_key);
    let (psk, _) = keypair();
    s.write("peer.psk", &psk);
    let (_, peer1) = keypair();
    let (_, peer2) = keypair();
    let socket = s.0.join("control.sock");
    let tun = format!("ctk{}", std::process::id() % 100_000);
    let config = s.write(
        "server.toml",
        &format!(
            "private_key_file = \"server.key\"\nlisten_port = 51999\naddress = \"10.77.0.1/24\"\n\
             tun_name = \"{tun}\"\ncontrol_socket = \"{}\"\nnat = \"ctr-no-such-if\"\n\
             client_to_client = true\npush_routes = [\"10.98.0.0/24\"]\n\n\
             [[peer]]\npublic_key = \"{peer1}\"\naddress = \"10.77.0.9\"\n\
             preshared_key_file = \"peer.psk\"\npush_dns = [\"10.1.0.53\"]\n\n\
             [[peer]]\npublic_key = \"{peer2}\"\n",
            socket.display()
        ),
    );
    let out = check("--config", &config);
    assert_status(&out, 0);
    let r = &out.stdout;
    println!("{r}");
    assert!(r.contains("valid server configuration"), "{r}");
    assert_eq!(value(r, "interface"), tun);
    assert!(value(r, "listen (UDP)").contains(":51999"), "{r}");
    // A /24: 254 hosts, 253 for clients, the server and two peers taken.
    let address = value(r, "address");
    assert!(address.starts_with("10.77.0.1/24"), "{address}");
    assert!(
        address.contains("253 client addresses, 251 left"),
        "{address}"
    );
    assert!(
        value(r, "workers").starts_with("number of cores at start"),
        "{r}"
    );
    let offloads = value(r, "offloads");
    assert!(
        offloads.starts_with("requested") && offloads.contains("TUN probe"),
        "{offloads}"
    );
    let nat = value(r, "nat");
    assert!(
        nat.contains("10.77.0.0/24 behind ctr-no-such-if") && nat.contains("no interface"),
        "{nat}"
    );
    assert!(value(r, "client_to_client").starts_with("on"), "{r}");
    assert_eq!(
        value(r, "peers"),
        "2 (1 with a fixed address, 1 with a pre-shared key)"
    );
    assert_eq!(
        value(r, "push"),
        "routes 10.98.0.0/24, DNS servers none to every peer; 1 peer(s) add their own"
    );
    assert_eq!(value(r, "control socket"), socket.display().to_string());
    assert_eq!(value(r, "metrics"), "off");
    assert!(value(r, "private key").contains(&server_pub), "{r}");
    for secret in [server_key.trim(), psk.trim()] {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "a secret key was printed"
        );
    }
    // Nothing was set up: no device, no control socket.
    assert!(!Path::new("/sys/class/net").join(&tun).exists());
    assert!(!socket.exists());
}

#[test]
fn workers_from_the_file_and_the_default_socket() {
    let s = Scratch::new("server-workers");
    let (key, _) = keypair();
    s.write("server.key", &key);
    let config = s.write(
        "server.toml",
        "private_key_file = \"server.key\"\naddress = \"10.77.0.1/16\"\nworkers = 3\n\
         tun_name = \"ctrq7\"\noffloads = false\nmetrics_listen = \"127.0.0.1:9586\"\n",
    );
    let out = check("--config", &config);
    assert_status(&out, 0);
    let r = &out.stdout;
    assert!(value(r, "workers").starts_with("3 (from the file"), "{r}");
    assert_eq!(value(r, "offloads"), "off (offloads = false)");
    assert_eq!(
        value(r, "control socket"),
        "/run/concentrator/ctrq7.sock (default)"
    );
    assert_eq!(
        value(r, "peers"),
        "0 (0 with a fixed address, 0 with a pre-shared key)"
    );
    assert!(
        value(r, "metrics").starts_with("http://127.0.0.1:9586/metrics"),
        "{r}"
    );
}

#[test]
fn invalid_server_config_lists_every_problem_and_exits_1() {
    let s = Scratch::new("server-bad");
    // Not a key; its text must not be echoed.
    s.write("server.key", "SECRET-NOT-A-KEY\n");
    let config = s.write(
        "server.toml",
        "private_key_file = \"server.key\"\naddress = \"10.77.0.1/31\"\nmtu = 9000\n\
         [[peer]]\npublic_key = \"not base64\"\n",
    );
    let out = check("--config", &config);
    assert_status(&out, 1);
    let e = &out.stderr;
    assert!(
        e.contains("not a valid server configuration (4 problems)"),
        "{e}"
    );
    for field in ["private_key_file", "address", "mtu", "peer[0].public_key"] {
        assert!(
            e.contains(&format!(": {field}: ")),
            "no problem for {field}:\n{e}"
        );
    }
    assert!(!e.contains("SECRET-NOT-A-KEY") && !out.stdout.contains("SECRET"));
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn missing_file_is_a_problem_not_a_crash() {
    let s = Scratch::new("missing");
    let out = check("--config", &s.0.join("nope.toml"));
    assert_status(&out, 1);
    assert!(out.stderr.contains("(file): cannot read"), "{}", out.stderr);
}

#[test]
fn valid_client_config() {
    let s = Scratch::new("client-ok");
    let (key, public) = keypair();
    s.write("client.key", &key);
    let (_, server_pub) = keypair();
    let config = s.write(
        "client.toml",
        &format!(
            "private_key_file = \"client.key\"\nserver_public_key = \"{server_pub}\"\n\
             server_endpoint = \"192.0.2.1:51820\"\nroutes = [\"10.70.0.0/24\", \"10.71.0.0/16\"]\n\
             persistent_keepalive = 15\n"
        ),
    );
    let out = check("--client", &config);
    assert_status(&out, 0);
    let r = &out.stdout;
    println!("{r}");
    assert!(r.contains("valid client configuration"), "{r}");
    assert_eq!(
        value(r, "server"),
        format!("192.0.2.1:51820 (public key {server_pub})")
    );
    assert_eq!(value(r, "routes"), "10.70.0.0/24, 10.71.0.0/16");
    assert_eq!(value(r, "full tunnel"), "no (split tunnel)");
    assert_eq!(value(r, "keepalive"), "every 15 s");
    assert!(value(r, "private key").contains(&public), "{r}");
    assert!(!r.contains(key.trim()) && !out.stderr.contains(key.trim()));

    let full = s.write(
        "full.toml",
        &format!(
            "private_key_file = \"client.key\"\nserver_public_key = \"{server_pub}\"\n\
             server_endpoint = \"192.0.2.1:51820\"\nfull_tunnel = true\npersistent_keepalive = 0\n"
        ),
    );
    let out = check("--client", &full);
    assert_status(&out, 0);
    let r = &out.stdout;
    assert!(value(r, "full tunnel").starts_with("yes"), "{r}");
    assert_eq!(value(r, "routes"), "0.0.0.0/1, 128.0.0.0/1, ::/1, 8000::/1");
    assert_eq!(value(r, "keepalive"), "off");
}

#[test]
fn invalid_client_config_lists_every_problem_and_exits_1() {
    let s = Scratch::new("client-bad");
    let config = s.write(
        "client.toml",
        "private_key_file = \"missing.key\"\nserver_public_key = \"short\"\n\
         server_endpoint = \"vpn.example.com:51820\"\nroutes = [\"10.70.0.0/33\"]\n",
    );
    let out = check("--client", &config);
    assert_status(&out, 1);
    let e = &out.stderr;
    assert!(
        e.contains("not a valid client configuration (4 problems)"),
        "{e}"
    );
    for field in [
        "private_key_file",
        "server_public_key",
        "server_endpoint",
        "routes[0]",
    ] {
        assert!(
            e.contains(&format!(": {field}: ")),
            "no problem for {field}:\n{e}"
        );
    }
}

#[test]
fn a_server_file_is_not_a_client_file() {
    let s = Scratch::new("swapped");
    let (key, _) = keypair();
    s.write("server.key", &key);
    let config = s.write(
        "server.toml",
        "private_key_file = \"server.key\"\naddress = \"10.77.0.1/16\"\n",
    );
    let out = check("--client", &config);
    assert_status(&out, 1);
    assert!(
        out.stderr.contains("unknown field `address`"),
        "{}",
        out.stderr
    );
}
