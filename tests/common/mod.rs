//! Harness for the root-only end-to-end tests: a lab of network namespaces with the real
//! binary running in them.
//!
//! Topology (all names carry the test process's PID and a counter, so tests can run in
//! parallel and next to other test processes):
//!
//! ```text
//!   c1 (10.0.0.11/24) ─┐
//!   c2 (10.0.0.12/24) ─┼─ bridge in server ns (10.0.0.1/24) ── server ── 10.1.0.1/24 ─ backend 10.1.0.2/24
//!   cN (10.0.0.1N/24) ─┘                                        (TUN 10.66.0.1/16)
//! ```
//!
//! Clients have no route to 10.1.0.0/24 except through the tunnel. The backend has a default
//! route via the server unless [`LabConfig::backend_route`] is off (the NAT test).
//!
//! With [`LabConfig::underlay6`] the underlay also carries IPv6 (bridge `fd00::1/64`, client N
//! `fd00::1N/64`), the server listens on `::` and the clients reach it at `[fd00::1]:51820`; with
//! [`LabConfig::inner6`] the tunnel carries IPv6 too (server `address6 = "fd66::1/64"`, backend
//! link `fd01::1/64` ── `fd01::2/64`, clients route `fd01::/64` into the tunnel). IPv6 addresses
//! skip duplicate address detection, so they are usable at once.
//! Everything is removed on drop, also when the test panics; on panic the logs of the server and
//! the clients are printed first.

#![allow(dead_code)]

pub mod cmd;
pub mod ctl;
pub mod net;
pub mod setup;
pub mod stock;
pub mod traffic;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub use cmd::{Output, Proc};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_concentrator");
pub const SERVER_UNDERLAY: &str = "10.0.0.1";
pub const SERVER_BACKEND: &str = "10.1.0.1";
pub const BACKEND: &str = "10.1.0.2";
pub const SERVER_VIRTUAL: &str = "10.66.0.1";
pub const CLIENT_SUBNET: &str = "10.66.0.0/16";
pub const PORT: u16 = 51820;
pub const SERVER_TUN: &str = "ctrs0";
pub const CLIENT_TUN: &str = "ctrc0";
/// The IPv6 counterparts, used by labs with [`LabConfig::underlay6`] or [`LabConfig::inner6`].
pub const SERVER_UNDERLAY6: &str = "fd00::1";
pub const SERVER_BACKEND6: &str = "fd01::1";
pub const BACKEND6: &str = "fd01::2";
pub const BACKEND_NET6: &str = "fd01::/64";
pub const SERVER_VIRTUAL6: &str = "fd66::1";
pub const CLIENT_SUBNET6: &str = "fd66::/64";
/// How long to wait for a client's tunnel to come up.
pub const TUNNEL_DEADLINE: Duration = Duration::from_secs(15);
const SHORT: Duration = Duration::from_secs(10);

/// True when running as root; otherwise prints the skip line and returns false.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED {test}: needs root (network namespaces)");
    }
    root
}

/// True when every program in `tools` is on PATH; otherwise prints the skip line.
pub fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED {test}: missing tools {missing:?} (`sudo scripts/deps.sh tests` installs them)");
    }
    missing.is_empty()
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Both checks every lab test starts with.
pub fn lab_or_skip(test: &str) -> bool {
    root_or_skip(test) && tools_or_skip(test, &["ip", "nft", "ping", "python3"])
}

/// A new private key from `concentrator genkey` (as printed) and its public key from
/// `concentrator pubkey` (trimmed).
pub fn keypair() -> (String, String) {
    let key = cmd::run_ok(&[BIN, "genkey"], None, SHORT);
    let public = cmd::run_ok(&[BIN, "pubkey"], Some(key.as_bytes()), SHORT)
        .trim()
        .to_string();
    (key, public)
}

/// Wall-clock seconds, comparable with the timestamps `ping -D` prints.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// The timestamps (wall-clock seconds) of the replies in `ping -D` output.
pub fn reply_times(ping_output: &str) -> Vec<f64> {
    ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// How long after `since` (wall-clock seconds) the first reply in `ping -D` output came;
/// replies within 50 ms of `since` are taken as answers sent before it.
pub fn first_reply_after(ping_output: &str, since: f64) -> Option<Duration> {
    reply_times(ping_output)
        .into_iter()
        .find(|t| *t > since + 0.05)
        .map(|t| Duration::from_secs_f64(t - since))
}

/// A bare network namespace, deleted on drop.
pub struct TempNs(pub String);

impl TempNs {
    /// `ip netns add name`, which must succeed.
    pub fn add(name: String) -> TempNs {
        cmd::run_ok(&["ip", "netns", "add", &name], None, SHORT);
        TempNs(name)
    }
}

impl Drop for TempNs {
    fn drop(&mut self) {
        let _ = cmd::run(&["ip", "netns", "del", &self.0], None, SHORT);
    }
}

/// What the lab looks like.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Number of client namespaces (1..=9).
    pub clients: usize,
    /// Worker threads, passed as `--workers`.
    pub workers: usize,
    pub client_to_client: bool,
    /// Masquerade behind the server's backend-facing link.
    pub nat: bool,
    /// Give the backend a default route via the server.
    pub backend_route: bool,
    /// Clients route everything through the tunnel.
    pub full_tunnel: bool,
    pub keepalive: u16,
    /// Client indices (0-based) whose key is not in the server's config.
    pub unknown_clients: Vec<usize>,
    /// IPv6 enabled in the namespaces. Off, the TUNs send no IPv6 noise (router solicitations,
    /// MLD), which the server counts as drops: for tests that count drops exactly.
    pub ipv6: bool,
    /// TUN/UDP offloads (the default). Off, the server and the clients run with
    /// `--no-offloads`.
    pub offloads: bool,
    /// Environment variables added for the server (fault injection).
    pub server_env: Vec<(String, String)>,
    /// IPv6 on the underlay: the server listens on `::` (only) and the clients'
    /// `server_endpoint` is `[fd00::1]:51820`.
    pub underlay6: bool,
    /// IPv6 in the tunnel: the server has `address6`, the backend an IPv6 address (and a route
    /// back via the server when [`LabConfig::backend_route`]), the clients a route to it.
    pub inner6: bool,
    /// Masquerade the IPv6 client subnet behind the server's backend-facing link (`nat6`;
    /// needs [`LabConfig::inner6`]).
    pub nat6: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            clients: 2,
            workers: 1,
            client_to_client: false,
            nat: false,
            backend_route: true,
            full_tunnel: false,
            keepalive: 25,
            unknown_clients: Vec::new(),
            ipv6: true,
            offloads: true,
            server_env: Vec::new(),
            underlay6: false,
            inner6: false,
            nat6: false,
        }
    }
}

impl LabConfig {
    /// The defaults with `clients` client namespaces.
    pub fn with_clients(clients: usize) -> LabConfig {
        LabConfig {
            clients,
            ..Default::default()
        }
    }
}

/// Per-worker counters from the server's exit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    pub worker: u64,
    pub tun_rx: u64,
    pub tun_tx: u64,
    pub udp_rx: u64,
    pub udp_tx: u64,
    pub drops: u64,
    /// `drop_reasons=a=1,b=2`, when the line has it.
    pub drop_reasons: std::collections::BTreeMap<String, u64>,
}

impl WorkerCounters {
    /// Drops for one reason (0 when not listed).
    pub fn dropped(&self, reason: &str) -> u64 {
        self.drop_reasons.get(reason).copied().unwrap_or(0)
    }
}

/// The server's start line (`concentrator is up ...`) in its log; panics, with the log, when
/// there is none.
pub fn start_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("concentrator is up"))
        .unwrap_or_else(|| panic!("no start line in the server log:\n{log}"))
}

/// Parses the `worker counters worker=0 tun_rx=.. tun_tx=.. udp_rx=.. udp_tx=.. drops=..
/// [drop_reasons=a=1,b=2]` lines.
pub fn parse_counters(log: &str) -> Vec<WorkerCounters> {
    log.lines()
        .filter(|l| l.contains("worker counters"))
        .map(|l| {
            let mut c = WorkerCounters::default();
            for kv in l.split_whitespace() {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                if k == "drop_reasons" {
                    for r in v.split(',').filter(|r| !r.is_empty()) {
                        if let Some((name, n)) = r.split_once('=') {
                            c.drop_reasons
                                .insert(name.to_string(), n.parse().unwrap_or(0));
                        }
                    }
                    continue;
                }
                let Ok(v) = v.parse::<u64>() else {
                    continue;
                };
                match k {
                    "worker" => c.worker = v,
                    "tun_rx" => c.tun_rx = v,
                    "tun_tx" => c.tun_tx = v,
                    "udp_rx" => c.udp_rx = v,
                    "udp_tx" => c.udp_tx = v,
                    "drops" => c.drops = v,
                    _ => {}
                }
            }
            c
        })
        .collect()
}

#[test]
fn parses_counter_lines() {
    let log = "2026-01-01T00:00:00Z  INFO concentrator::cli::serve: worker counters worker=1 \
               tun_rx=5 tun_tx=3 udp_rx=10 udp_tx=8 drops=3 drop_reasons=no_peer=1,spoofed_source=2\n\
               x worker counters worker=0 tun_rx=0 tun_tx=0 udp_rx=0 udp_tx=0 drops=0 drop_reasons=\n";
    let c = parse_counters(log);
    assert_eq!(c.len(), 2);
    assert_eq!(
        (c[0].worker, c[0].tun_rx, c[0].udp_tx, c[0].drops),
        (1, 5, 8, 3)
    );
    assert_eq!(c[0].dropped("spoofed_source"), 2);
    assert_eq!(c[1].dropped("no_peer"), 0);
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// At most `E2E_PARALLEL` (default 3) labs exist at once in this process, whatever
/// `--test-threads` says: the timing-sensitive tests (restart) stay far from their limits.
static LABS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// A slot among the labs allowed at once; given back on drop.
struct LabPermit;

impl LabPermit {
    fn acquire() -> LabPermit {
        let max = std::env::var("E2E_PARALLEL")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(3);
        let (lock, cv) = &LABS;
        let mut n = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= max {
            n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        LabPermit
    }
}

impl Drop for LabPermit {
    fn drop(&mut self) {
        let (lock, cv) = &LABS;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cv.notify_one();
    }
}

/// A lab: namespaces, links, keys, configs and the processes running in them.
pub struct Lab {
    pub cfg: LabConfig,
    pub id: u32,
    pub dir: PathBuf,
    /// Namespace names.
    pub server_ns: String,
    pub backend_ns: String,
    pub client_ns: Vec<String>,
    /// The server's link towards the backend (the `nat` egress interface).
    pub server_backend_link: String,
    /// The bridge in the server namespace that the clients' links are attached to.
    pub bridge: String,
    pub client_links: Vec<String>,
    pub server_pubkey: String,
    pub client_pubkeys: Vec<String>,
    namespaces: Vec<String>,
    pub server: Option<Proc>,
    pub clients: Vec<Option<Proc>>,
    /// Other processes started in the lab (iperf3 servers, listeners); stopped on drop.
    pub others: Vec<Proc>,
    server_runs: u32,
    client_runs: u32,
    /// Declared last: given back after everything else is torn down.
    _permit: LabPermit,
}

impl Lab {
    /// Builds the topology and writes keys and configs; starts nothing.
    pub fn new(cfg: LabConfig) -> Lab {
        assert!((1..=9).contains(&cfg.clients));
        assert!(
            cfg.ipv6 || !(cfg.underlay6 || cfg.inner6),
            "IPv6 addresses need IPv6 enabled"
        );
        assert!(cfg.inner6 || !cfg.nat6, "nat6 needs inner6");
        let permit = LabPermit::acquire();
        let pid = std::process::id();
        let id = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ctr-e2e-{pid}-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create lab dir");
        let ns = |role: &str| format!("ctre-{pid}-{id}-{role}");
        // Link names: at most 1 + 6 + 1 + 2 + 2 = 12 characters.
        let link = |role: &str| format!("v{pid:x}-{id:x}{role}");
        let mut lab = Lab {
            server_ns: ns("srv"),
            backend_ns: ns("bk"),
            client_ns: (1..=cfg.clients).map(|i| ns(&format!("c{i}"))).collect(),
            server_backend_link: link("sb"),
            bridge: link("br"),
            client_links: (1..=cfg.clients).map(|i| link(&format!("c{i}"))).collect(),
            server_pubkey: String::new(),
            client_pubkeys: Vec::new(),
            namespaces: Vec::new(),
            server: None,
            clients: (0..cfg.clients).map(|_| None).collect(),
            others: Vec::new(),
            server_runs: 0,
            client_runs: 0,
            _permit: permit,
            cfg,
            id,
            dir,
        };
        lab.build_topology(&lab.bridge.clone(), &link("bs"));
        lab.write_configs();
        lab
    }

    fn add_ns(&mut self, name: &str) {
        cmd::run_ok(&["ip", "netns", "add", name], None, SHORT);
        self.namespaces.push(name.to_string());
        if !self.cfg.ipv6 {
            for key in [
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ] {
                cmd::run_ok(
                    &["ip", "netns", "exec", name, "sysctl", "-q", "-w", key],
                    None,
                    SHORT,
                );
            }
        }
        if self.cfg.underlay6 || self.cfg.inner6 {
            // Duplicate address detection would keep new addresses (link-local ones included)
            // tentative for a second or two; every address in a lab is unique by construction.
            for key in [
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ] {
                cmd::run_ok(
                    &["ip", "netns", "exec", name, "sysctl", "-q", "-w", key],
                    None,
                    SHORT,
                );
            }
        }
        self.ip(name, &["link", "set", "lo", "up"]);
    }

    /// Adds a namespace for `role` (a few letters) to the lab, set up like the others and
    /// removed with the lab; returns its name.
    pub fn add_namespace(&mut self, role: &str) -> String {
        let name = format!("ctre-{}-{}-{role}", std::process::id(), self.id);
        self.add_ns(&name);
        name
    }

    /// A veth pair from `ns_a` to `ns_b` (both down, no addresses), named after the lab and
    /// `role` (two characters) with `a` and `b` appended; returns the two names. It goes with
    /// the namespaces when the lab is dropped.
    pub fn add_veth(&self, role: &str, ns_a: &str, ns_b: &str) -> (String, String) {
        let base = format!("v{:x}-{:x}{role}", std::process::id(), self.id);
        let (a, b) = (format!("{base}a"), format!("{base}b"));
        cmd::run_ok(
            &[
                "ip", "link", "add", &a, "netns", ns_a, "type", "veth", "peer", "name", &b,
                "netns", ns_b,
            ],
            None,
            SHORT,
        );
        (a, b)
    }

    /// `ip addr add addr dev dev` in `ns`, with `nodad` for IPv6 addresses.
    pub fn add_addr(&self, ns: &str, addr: &str, dev: &str) {
        let mut args = vec!["addr", "add", addr, "dev", dev];
        if addr.contains(':') {
            args.push("nodad");
        }
        self.ip(ns, &args);
    }

    /// Client `i`'s (0-based) underlay addresses: IPv4, and IPv6 when the underlay has it.
    pub fn client_underlay(&self, i: usize) -> (String, Option<String>) {
        (
            format!("10.0.0.{}", 11 + i),
            self.cfg.underlay6.then(|| format!("fd00::{}", 11 + i)),
        )
    }

    /// The server's underlay address that the clients use (`server_endpoint` without port).
    pub fn server_underlay(&self) -> &'static str {
        if self.cfg.underlay6 {
            SERVER_UNDERLAY6
        } else {
            SERVER_UNDERLAY
        }
    }

    /// `ip -n NS args...`, which must succeed.
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend_from_slice(args);
        cmd::run_ok(&argv, None, SHORT)
    }

    fn build_topology(&mut self, bridge: &str, backend_link: &str) {
        let (s, b) = (self.server_ns.clone(), self.backend_ns.clone());
        self.add_ns(&s);
        self.add_ns(&b);
        for c in self.client_ns.clone() {
            self.add_ns(&c);
        }
        self.ip(&s, &["link", "add", bridge, "type", "bridge"]);
        // Where br_netfilter is loaded on the host, frames crossing the bridge would also go
        // through the IP netfilter hooks in bridge context (a sixth of a core at 50 000
        // datagrams/s): a test bridge stands in for a NIC, which has no such cost. Per
        // namespace since Linux 5.3; absent when the module is not loaded.
        for key in ["iptables", "ip6tables", "arptables"] {
            let path = format!("/proc/sys/net/bridge/bridge-nf-call-{key}");
            let script = format!("[ ! -e {path} ] || echo 0 > {path}");
            cmd::run_ok(
                &["ip", "netns", "exec", &s, "sh", "-c", &script],
                None,
                SHORT,
            );
        }
        self.ip(
            &s,
            &[
                "addr",
                "add",
                &format!("{SERVER_UNDERLAY}/24"),
                "dev",
                bridge,
            ],
        );
        if self.cfg.underlay6 {
            self.add_addr(&s, &format!("{SERVER_UNDERLAY6}/64"), bridge);
        }
        self.ip(&s, &["link", "set", bridge, "up"]);
        for (i, (c, l)) in self.client_ns.iter().zip(&self.client_links).enumerate() {
            let peer = format!("{l}s");
            cmd::run_ok(
                &[
                    "ip", "link", "add", l, "netns", c, "type", "veth", "peer", "name", &peer,
                    "netns", &s,
                ],
                None,
                SHORT,
            );
            self.ip(&s, &["link", "set", &peer, "master", bridge, "up"]);
            let (v4, v6) = self.client_underlay(i);
            self.add_addr(c, &format!("{v4}/24"), l);
            if let Some(v6) = v6 {
                self.add_addr(c, &format!("{v6}/64"), l);
            }
            self.ip(c, &["link", "set", l, "up"]);
        }
        let sb = self.server_backend_link.clone();
        cmd::run_ok(
            &[
                "ip",
                "link",
                "add",
                &sb,
                "netns",
                &s,
                "type",
                "veth",
                "peer",
                "name",
                backend_link,
                "netns",
                &b,
            ],
            None,
            SHORT,
        );
        self.ip(
            &s,
            &["addr", "add", &format!("{SERVER_BACKEND}/24"), "dev", &sb],
        );
        self.ip(&s, &["link", "set", &sb, "up"]);
        self.ip(
            &b,
            &["addr", "add", &format!("{BACKEND}/24"), "dev", backend_link],
        );
        self.ip(&b, &["link", "set", backend_link, "up"]);
        if self.cfg.backend_route {
            self.ip(&b, &["route", "add", "default", "via", SERVER_BACKEND]);
        }
        if self.cfg.inner6 {
            self.add_addr(&s, &format!("{SERVER_BACKEND6}/64"), &sb);
            self.add_addr(&b, &format!("{BACKEND6}/64"), backend_link);
            if self.cfg.backend_route {
                self.ip(
                    &b,
                    &["-6", "route", "add", "default", "via", SERVER_BACKEND6],
                );
            }
        }
    }

    fn genkey(&self, name: &str) -> String {
        let (key, public) = keypair();
        let path = self.dir.join(name);
        std::fs::write(&path, &key).expect("write key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        public
    }

    fn write_configs(&mut self) {
        self.server_pubkey = self.genkey("server.key");
        self.client_pubkeys = (1..=self.cfg.clients)
            .map(|i| self.genkey(&format!("c{i}.key")))
            .collect();
        let listen = if self.cfg.underlay6 {
            "\"::\"".to_string()
        } else {
            format!("\"{SERVER_UNDERLAY}\"")
        };
        let mut server = format!(
            "private_key_file = \"server.key\"\n\
             listen_port = {PORT}\n\
             listen_addresses = [{listen}]\n\
             address = \"{SERVER_VIRTUAL}/16\"\n\
             mtu = 1420\n\
             workers = 1\n\
             client_to_client = {}\n\
             tun_name = \"{SERVER_TUN}\"\n\
             control_socket = \"{sock}\"\n",
            self.cfg.client_to_client,
            sock = self.control_socket().display(),
        );
        if self.cfg.nat {
            server += &format!("nat = \"{}\"\n", self.server_backend_link);
        }
        if self.cfg.inner6 {
            server += &format!("address6 = \"{SERVER_VIRTUAL6}/64\"\n");
        }
        if self.cfg.nat6 {
            server += &format!("nat6 = \"{}\"\n", self.server_backend_link);
        }
        for (i, k) in self.client_pubkeys.iter().enumerate() {
            if !self.cfg.unknown_clients.contains(&i) {
                server += &format!("\n[[peer]]\npublic_key = \"{k}\"\n");
            }
        }
        std::fs::write(self.dir.join("server.toml"), server).expect("write server.toml");
        for i in 0..self.cfg.clients {
            let routes = if self.cfg.full_tunnel {
                "full_tunnel = true".to_string()
            } else if self.cfg.inner6 {
                format!("routes = [\"10.1.0.0/24\", \"{BACKEND_NET6}\"]")
            } else {
                "routes = [\"10.1.0.0/24\"]".to_string()
            };
            let endpoint = if self.cfg.underlay6 {
                format!("[{SERVER_UNDERLAY6}]:{PORT}")
            } else {
                format!("{SERVER_UNDERLAY}:{PORT}")
            };
            let text = format!(
                "private_key_file = \"c{n}.key\"\n\
                 server_public_key = \"{spk}\"\n\
                 server_endpoint = \"{endpoint}\"\n\
                 {routes}\n\
                 persistent_keepalive = {ka}\n\
                 tun_name = \"{CLIENT_TUN}\"\n",
                n = i + 1,
                spk = self.server_pubkey,
                ka = self.cfg.keepalive,
            );
            std::fs::write(self.dir.join(format!("c{}.toml", i + 1)), text)
                .expect("write client config");
        }
    }

    /// The server's control socket (one per lab: the default path is shared by all namespaces).
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// `concentrator show --json` against the running server, parsed.
    pub fn show_json(&self) -> serde_json::Value {
        let sock = self.control_socket();
        let out = cmd::run_ok(
            &[BIN, "show", "--json", "--socket", sock.to_str().unwrap()],
            None,
            SHORT,
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("show --json: {e}: {out}"))
    }

    pub fn server_config_path(&self) -> PathBuf {
        self.dir.join("server.toml")
    }

    /// Adds a peer speaking the WireGuard suite, with `public_key` and the fixed `address`, to
    /// the server's configuration (a stock client whose key is not the lab's).
    pub fn add_wireguard_peer(&self, public_key: &str, address: &str) {
        let path = self.server_config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = format!(
            "{text}\n[[peer]]\npublic_key = \"{public_key}\"\nprotocol = \"wireguard\"\n\
             address = \"{address}\"\n"
        );
        std::fs::write(&path, text).unwrap();
    }

    /// Adds `settings` (TOML lines) to the server's configuration, before its peers.
    pub fn add_server_settings(&self, settings: &str) {
        let path = self.server_config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let (top, peers) = match text.find("[[peer]]") {
            Some(i) => text.split_at(i),
            None => (text.as_str(), ""),
        };
        std::fs::write(&path, format!("{top}{settings}\n{peers}")).unwrap();
    }

    fn log_env() -> Vec<(&'static str, String)> {
        // No NO_COLOR: logs to a pipe come without colour by themselves (tests/logging.rs).
        vec![(
            "CONCENTRATOR_LOG",
            std::env::var("E2E_LOG").unwrap_or_else(|_| "info".to_string()),
        )]
    }

    /// Starts a background process inside `ns`; it is stopped when the lab is dropped.
    pub fn spawn_in(&mut self, ns: &str, name: &str, argv: &[&str]) -> &mut Proc {
        let p = self.spawn_proc(ns, name, argv);
        self.others.push(p);
        self.others.last_mut().unwrap()
    }

    /// Starts a background process inside `ns`, owned by the caller.
    pub fn spawn_proc(&self, ns: &str, name: &str, argv: &[&str]) -> Proc {
        self.spawn_proc_env(ns, name, argv, &[])
    }

    /// [`Lab::spawn_proc`] with `extra` environment variables.
    pub fn spawn_proc_env(
        &self,
        ns: &str,
        name: &str,
        argv: &[&str],
        extra: &[(String, String)],
    ) -> Proc {
        let full = cmd::in_netns(ns, argv);
        let env = Self::log_env();
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        Proc::spawn(name, &full, &env, &self.dir)
    }

    /// `ip netns exec NS argv...` with a deadline.
    pub fn exec(&self, ns: &str, argv: &[&str], timeout: Duration) -> Output {
        self.exec_stdin(ns, argv, None, timeout)
    }

    pub fn exec_stdin(
        &self,
        ns: &str,
        argv: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Output {
        let full = cmd::in_netns(ns, argv);
        cmd::run(&full, stdin, timeout)
    }

    /// Like [`Lab::exec`], panicking unless it succeeds; returns stdout.
    pub fn exec_ok(&self, ns: &str, argv: &[&str], timeout: Duration) -> String {
        let out = self.exec(ns, argv, timeout);
        assert!(
            out.ok(),
            "in {ns}: {argv:?} failed ({:?})\nstdout: {}\nstderr: {}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// Starts the server (`--workers N`) and waits until it logs that it is up.
    pub fn start_server(&mut self) {
        assert!(self.server.is_none(), "server already running");
        self.server_runs += 1;
        let name = format!("server{}", self.server_runs);
        let workers = self.cfg.workers.to_string();
        let config = self.server_config_path();
        let mut argv = vec![
            BIN,
            "--config",
            config.to_str().unwrap(),
            "--workers",
            &workers,
        ];
        if !self.cfg.offloads {
            argv.push("--no-offloads");
        }
        let p = self.spawn_proc_env(&self.server_ns, &name, &argv, &self.cfg.server_env);
        self.server = Some(p);
        let deadline = Instant::now() + SHORT;
        loop {
            let srv = self.server.as_mut().unwrap();
            if srv.stderr().contains("concentrator is up") {
                return;
            }
            if let Some(st) = srv.exited() {
                panic!("server exited early ({st}):\n{}", srv.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "server not up after {SHORT:?}:\n{}",
                srv.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server with SIGTERM and returns its stderr (with the counters).
    pub fn stop_server(&mut self) -> String {
        let mut srv = self.server.take().expect("server running");
        let st = srv.stop(Duration::from_secs(10));
        let log = srv.stderr();
        assert!(
            st.is_some(),
            "server did not exit within 10 s of SIGTERM:\n{log}"
        );
        log
    }

    /// Kills the server with SIGKILL.
    pub fn kill_server(&mut self) {
        let mut srv = self.server.take().expect("server running");
        srv.kill();
    }

    pub fn server_pid(&self) -> u32 {
        self.server.as_ref().expect("server running").pid()
    }

    /// Starts client `i` (0-based) without waiting.
    pub fn start_client(&mut self, i: usize) {
        assert!(self.clients[i].is_none(), "client {i} already running");
        self.client_runs += 1;
        let name = format!("client{}-{}", i + 1, self.client_runs);
        let config = self.dir.join(format!("c{}.toml", i + 1));
        let mut argv = vec![BIN, "connect", "--config", config.to_str().unwrap()];
        if !self.cfg.offloads {
            argv.push("--no-offloads");
        }
        let p = self.spawn_proc(&self.client_ns[i].clone(), &name, &argv);
        self.clients[i] = Some(p);
    }

    /// Stops client `i` with SIGTERM; returns its exit status (None if it had to be killed)
    /// and its log.
    pub fn stop_client(&mut self, i: usize) -> (Option<std::process::ExitStatus>, String) {
        let mut c = self.clients[i].take().expect("client running");
        let st = c.stop(Duration::from_secs(10));
        (st, c.stderr())
    }

    /// The IPv4 address on the client's TUN, if any.
    pub fn client_tun_addr(&self, i: usize) -> Option<Ipv4Addr> {
        self.client_tun_addr_of(i, "-4", "inet", &[])
    }

    /// The global IPv6 address on the client's TUN, if any.
    pub fn client_tun_addr6(&self, i: usize) -> Option<std::net::Ipv6Addr> {
        self.client_tun_addr_of(i, "-6", "inet6", &["scope", "global"])
    }

    /// The address after `word` (`inet`, `inet6`) in `ip <family> -o addr show dev TUN
    /// <filter>` in client `i`'s namespace, parsed.
    fn client_tun_addr_of<A: std::str::FromStr>(
        &self,
        i: usize,
        family: &str,
        word: &str,
        filter: &[&str],
    ) -> Option<A> {
        let ns = self.client_ns[i].as_str();
        let mut argv = vec![
            "ip", "-n", ns, family, "-o", "addr", "show", "dev", CLIENT_TUN,
        ];
        argv.extend_from_slice(filter);
        let out = cmd::run(&argv, None, SHORT);
        if !out.ok() {
            return None;
        }
        out.stdout
            .split_whitespace()
            .skip_while(|w| *w != word)
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
    }

    /// Waits for client `i`'s TUN to have its address; returns it.
    pub fn wait_tunnel(&mut self, i: usize) -> Ipv4Addr {
        let deadline = Instant::now() + TUNNEL_DEADLINE;
        loop {
            // The address appears before the routes; the client logs "tunnel up" after both.
            let logged_up = self.clients[i]
                .as_ref()
                .is_some_and(|c| c.stderr().contains("tunnel up"));
            if logged_up {
                if let Some(a) = self.client_tun_addr(i) {
                    return a;
                }
            }
            let c = self.clients[i].as_mut().expect("client running");
            if let Some(st) = c.exited() {
                panic!(
                    "client {} exited ({st}) before its tunnel came up:\n{}",
                    i + 1,
                    c.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "client {} tunnel not up after {TUNNEL_DEADLINE:?}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the server and every client; returns the clients' virtual addresses.
    pub fn up(&mut self) -> Vec<Ipv4Addr> {
        self.start_server();
        for i in 0..self.cfg.clients {
            self.start_client(i);
        }
        (0..self.cfg.clients).map(|i| self.wait_tunnel(i)).collect()
    }

    /// `ping -c count` from `ns` to `dst` (extra args go before the destination). Exits 0
    /// when at least one reply came back.
    pub fn ping(&self, ns: &str, dst: &str, count: u32, extra: &[&str]) -> Output {
        let count = count.to_string();
        let deadline = (count.parse::<u64>().unwrap() + 3).to_string();
        let mut argv = vec![
            "ping", "-n", "-c", &count, "-i", "0.2", "-W", "1", "-w", &deadline,
        ];
        argv.extend_from_slice(extra);
        argv.push(dst);
        self.exec(
            ns,
            &argv,
            Duration::from_secs(count.parse::<u64>().unwrap() + 10),
        )
    }

    /// Pings and requires every reply ("0% packet loss"), with the output on failure.
    pub fn ping_ok(&self, ns: &str, dst: &str, count: u32) {
        let out = self.ping(ns, dst, count, &[]);
        assert!(
            out.ok() && out.stdout.contains(" 0% packet loss"),
            "ping {dst} from {ns} failed:\n{}{}\n{}",
            out.stdout,
            out.stderr,
            self.logs()
        );
    }

    /// Runs an nft script (`nft -f -`) in `ns`.
    pub fn nft(&self, ns: &str, script: &str) {
        let out = self.exec_stdin(ns, &["nft", "-f", "-"], Some(script.as_bytes()), SHORT);
        assert!(
            out.ok(),
            "nft in {ns} failed: {}\nscript:\n{script}",
            out.stderr
        );
    }

    /// Packets of the named counter `inet <table> <name>` in `ns`.
    pub fn nft_counter(&self, ns: &str, table: &str, name: &str) -> u64 {
        self.nft_counter_of(ns, "inet", table, name)
    }

    /// Packets of the named counter `<family> <table> <name>` in `ns`.
    pub fn nft_counter_of(&self, ns: &str, family: &str, table: &str, name: &str) -> u64 {
        let out = self.exec_ok(
            ns,
            &["nft", "-j", "list", "counter", family, table, name],
            SHORT,
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("nft -j output is JSON");
        v["nftables"]
            .as_array()
            .and_then(|a| a.iter().find_map(|o| o["counter"]["packets"].as_u64()))
            .unwrap_or_else(|| panic!("no counter {table}/{name} in {out}"))
    }

    /// nft table names (`family name`) in `ns`.
    pub fn nft_tables(&self, ns: &str) -> String {
        self.exec_ok(ns, &["nft", "list", "tables"], SHORT)
    }

    /// The logs of the server and clients, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".err") || name.ends_with(".out") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                s += &format!("----- {name} (last {} lines) -----\n", tail.len());
                for l in tail.iter().rev() {
                    s += l;
                    s.push('\n');
                }
            }
        }
        s
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== lab {} logs =====\n{}", self.id, self.logs());
        }
        // Stop everything by PID: SIGTERM to all first, then wait, then SIGKILL.
        let mut procs: Vec<Proc> = self.others.drain(..).collect();
        procs.extend(self.clients.iter_mut().filter_map(Option::take));
        procs.extend(self.server.take());
        for p in &mut procs {
            p.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut procs {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.wait(left).is_none() {
                p.kill();
            }
        }
        drop(procs);
        for ns in self.namespaces.iter().rev() {
            let _ = cmd::run(&["ip", "netns", "del", ns], None, SHORT);
        }
        if !std::thread::panicking() || std::env::var_os("E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
