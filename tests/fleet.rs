//! A fleet of three headends sharing one peer registry on a real three-member etcd cluster
//! (root only: network namespaces).
//!
//! ```text
//!   e1 10.9.0.11 ─┐                        ┌─ h1 "a" 10.9.0.21 (TUN 10.66.0.1/16) ── c2 (via a)
//!   e2 10.9.0.12 ─┼─ bridge in the hub ns ─┼─ h2 "b" 10.9.0.22
//!   e3 10.9.0.13 ─┘    (10.9.0.0/24)       ├─ h3 "c" 10.9.0.23 ─────────────────── c1 (via c)
//!                                          └─ c1 10.9.0.31, c2 10.9.0.32
//! ```
//!
//! The failover test has more clients (client `i` at 10.9.0.(31 + i)) and a backend namespace
//! with 10.7.0.1 on its loopback, linked to each headend over 10.8.i.0/24 (headend .1,
//! backend .2); each headend masquerades towards it (`nat`).
//!
//! Every name carries the test's PID; etcd's data directories are on tmpfs (/dev/shm); every
//! process is stopped by its PID and every namespace deleted on drop, also when the test fails.
//! The CI size (1 000 concurrent adds, an 8 s partition, a 5 s propagation bound) runs in well
//! under two minutes; `FLEET_FULL=1` runs the issue's 30 s partition and one-second bound,
//! and the failover with 10 clients held to the issue's 3 s instead of 3 clients and 10 s.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::cmd::{self, in_netns, Proc};
use common::ctl::{cli_at, cli_at_ok};
use common::net::timestamped_ping;
use common::{first_reply_after, keypair, reply_times, root_or_skip, tools_or_skip, unix_now, BIN};
use concentrator::ops::protocol::{FleetReply, PeerAdded, PeerRemoved, Request, ShowReply};

const SHORT: Duration = Duration::from_secs(10);
const ETCD: [&str; 3] = ["10.9.0.11", "10.9.0.12", "10.9.0.13"];
const HEADENDS: [(&str, &str); 3] = [("a", "10.9.0.21"), ("b", "10.9.0.22"), ("c", "10.9.0.23")];
/// Client namespaces unless a test asks for more: client `i` is 10.9.0.(31 + i).
const CLIENTS: usize = 2;
/// The backend behind the fleet (on its loopback), reached from each headend over its own
/// link 10.8.i.0/24 (headend .1, backend .2) when a test adds it.
const BACKEND: &str = "10.7.0.1";
const PORT: u16 = 51820;
const SERVER_VIRTUAL: &str = "10.66.0.1";

fn full_size() -> bool {
    std::env::var_os("FLEET_FULL").is_some_and(|v| v != "0")
}

/// The fleet: namespaces, etcd members, headends, clients; all stopped and removed on drop.
struct Fleet {
    /// The test process's PID and this fleet's number in it: in every name.
    tag: String,
    dir: PathBuf,
    hub: String,
    etcd_ns: Vec<String>,
    headend_ns: Vec<String>,
    client_ns: Vec<String>,
    /// The backend's namespace, once [`Fleet::add_backend`] made it.
    backend_ns: Option<String>,
    namespaces: Vec<String>,
    data_dirs: Vec<PathBuf>,
    etcd: Vec<Option<Proc>>,
    headends: Vec<Option<Proc>>,
    clients: Vec<Option<Proc>>,
    fleet_name: String,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== fleet logs =====\n{}", self.logs());
        }
        let mut procs: Vec<Proc> = self
            .clients
            .iter_mut()
            .chain(self.headends.iter_mut())
            .chain(self.etcd.iter_mut())
            .filter_map(Option::take)
            .collect();
        for p in &mut procs {
            p.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut procs {
            if p.wait(deadline.saturating_duration_since(Instant::now()))
                .is_none()
            {
                p.kill();
            }
        }
        drop(procs);
        for ns in self.namespaces.iter().rev() {
            let _ = cmd::run(&["ip", "netns", "del", ns], None, SHORT);
        }
        for d in &self.data_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fleet {
    fn new() -> Fleet {
        Fleet::with_clients(CLIENTS)
    }

    fn with_clients(clients: usize) -> Fleet {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Link names hold the tag: at most 1 + 6 + 1 + 4 characters with a 22-bit PID.
        let tag = format!(
            "{:x}{:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("ctr-fleet-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fleet dir");
        let ns = |role: &str| format!("ctrf-{tag}-{role}");
        let mut f = Fleet {
            tag: tag.clone(),
            hub: ns("hub"),
            etcd_ns: (1..=3).map(|i| ns(&format!("e{i}"))).collect(),
            headend_ns: HEADENDS.iter().map(|(n, _)| ns(&format!("h{n}"))).collect(),
            client_ns: (1..=clients).map(|i| ns(&format!("c{i}"))).collect(),
            backend_ns: None,
            namespaces: Vec::new(),
            data_dirs: Vec::new(),
            etcd: Vec::new(),
            headends: Vec::new(),
            clients: Vec::new(),
            fleet_name: format!("t{tag}"),
            dir,
        };
        f.topology();
        f
    }

    fn ip(&self, ns: &str, args: &[&str]) {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend_from_slice(args);
        cmd::run_ok(&argv, None, SHORT);
    }

    fn add_ns(&mut self, name: &str) {
        cmd::run_ok(&["ip", "netns", "add", name], None, SHORT);
        self.namespaces.push(name.to_string());
        self.ip(name, &["link", "set", "lo", "up"]);
    }

    /// Each namespace on the hub's bridge with one address of 10.9.0.0/24.
    fn topology(&mut self) {
        let hub = self.hub.clone();
        self.add_ns(&hub);
        let bridge = format!("f{}br", self.tag);
        self.ip(&hub, &["link", "add", &bridge, "type", "bridge"]);
        self.ip(&hub, &["link", "set", &bridge, "up"]);
        let members: Vec<(String, String)> = self
            .etcd_ns
            .iter()
            .zip(ETCD)
            .chain(self.headend_ns.iter().zip(HEADENDS.map(|(_, a)| a)))
            .map(|(n, a)| (n.clone(), a.to_string()))
            .chain(
                self.client_ns
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), client_address(i))),
            )
            .collect();
        for (i, (ns, addr)) in members.iter().enumerate() {
            self.add_ns(ns);
            let (inner, outer) = (format!("f{}-{i}", self.tag), format!("f{}-{i}h", self.tag));
            cmd::run_ok(
                &[
                    "ip", "link", "add", &inner, "netns", ns, "type", "veth", "peer", "name",
                    &outer, "netns", &hub,
                ],
                None,
                SHORT,
            );
            self.ip(&hub, &["link", "set", &outer, "master", &bridge, "up"]);
            self.ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", &inner]);
            self.ip(ns, &["link", "set", &inner, "up"]);
        }
    }

    /// The headend's link towards the backend (its `nat` egress interface).
    fn backend_link(&self, i: usize) -> String {
        format!("f{}-k{i}", self.tag)
    }

    /// A backend namespace with [`BACKEND`] on its loopback and one link to each headend,
    /// which routes [`BACKEND`] over it: each headend reaches the backend on its own, as
    /// headends in different places would.
    fn add_backend(&mut self) {
        let backend = format!("ctrf-{}-bk", self.tag);
        self.add_ns(&backend);
        self.ip(
            &backend,
            &["addr", "add", &format!("{BACKEND}/32"), "dev", "lo"],
        );
        for i in 0..HEADENDS.len() {
            let (link, peer) = (self.backend_link(i), format!("f{}-k{i}b", self.tag));
            let ns = self.headend_ns[i].clone();
            cmd::run_ok(
                &[
                    "ip", "link", "add", &link, "netns", &ns, "type", "veth", "peer", "name",
                    &peer, "netns", &backend,
                ],
                None,
                SHORT,
            );
            self.ip(
                &ns,
                &["addr", "add", &format!("10.8.{i}.1/24"), "dev", &link],
            );
            self.ip(&ns, &["link", "set", &link, "up"]);
            self.ip(
                &backend,
                &["addr", "add", &format!("10.8.{i}.2/24"), "dev", &peer],
            );
            self.ip(&backend, &["link", "set", &peer, "up"]);
            self.ip(
                &ns,
                &["route", "add", BACKEND, "via", &format!("10.8.{i}.2")],
            );
        }
        self.backend_ns = Some(backend);
    }

    fn endpoints(&self) -> String {
        ETCD.map(|a| format!("http://{a}:2379")).join(",")
    }

    /// Starts the three etcd members, tuned for a loaded two-core machine.
    fn start_etcd(&mut self) {
        let cluster = ETCD
            .iter()
            .enumerate()
            .map(|(i, a)| format!("e{}=http://{a}:2380", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        for (i, addr) in ETCD.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let data = PathBuf::from(format!("/dev/shm/ctr-fleet-{}-{name}", self.tag));
            let _ = std::fs::remove_dir_all(&data);
            self.data_dirs.push(data.clone());
            let (client, peer) = (format!("http://{addr}:2379"), format!("http://{addr}:2380"));
            let argv = in_netns(
                &self.etcd_ns[i],
                &[
                    "etcd",
                    "--name",
                    &name,
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &self.fleet_name,
                    "--heartbeat-interval",
                    "200",
                    "--election-timeout",
                    "2000",
                ],
            );
            self.etcd
                .push(Some(Proc::spawn(&name, &argv, &[], &self.dir)));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl(&["endpoint", "health"]);
            if out.ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy after 30 s: {}{}",
                out.stdout,
                out.stderr
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `etcdctl` from the client namespace c1 against every member.
    fn etcdctl(&self, args: &[&str]) -> common::Output {
        let endpoints = format!("--endpoints={}", self.endpoints());
        let mut all = vec![endpoints.as_str()];
        all.extend_from_slice(args);
        self.etcdctl_raw(&all)
    }

    /// `etcdctl` from the client namespace c1 with `args` only.
    fn etcdctl_raw(&self, args: &[&str]) -> common::Output {
        let mut argv = in_netns(
            &self.client_ns[0],
            &["etcdctl", "--command-timeout=5s", "--dial-timeout=2s"],
        );
        argv.extend_from_slice(args);
        cmd::run_env(&argv, &[("ETCDCTL_API", Some("3"))], None, SHORT)
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{}.sock", HEADENDS[i].0))
    }

    /// `concentrator peer add --public-key PUBLIC` on headend `i`'s command line, which must
    /// succeed; returns the address the peer got (from the registry).
    fn add_peer(&self, i: usize, public: &str) -> String {
        let out = cli_at_ok(&self.socket(i), &["peer", "add", "--public-key", public]);
        out.split("with address ")
            .nth(1)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("peer add said: {out}"))
    }

    /// Writes the shared keys and each headend's configuration.
    fn write_configs(&self) -> String {
        let (server_key, server_pub) = keypair();
        write_secret(&self.dir.join("server.key"), &server_key);
        let (fleet_key, _) = keypair();
        write_secret(&self.dir.join("fleet.key"), &fleet_key);
        let etcd = ETCD.map(|a| format!("\"http://{a}:2379\"")).join(", ");
        for (i, (name, addr)) in HEADENDS.iter().enumerate() {
            // Headend a refuses new handshakes once cut off from etcd for 3 s.
            let stale = if *name == "a" {
                "stale_after = 3\n"
            } else {
                ""
            };
            // With a backend, each headend masquerades towards it: replies to a client that
            // moved come back to the headend it is on now.
            let nat = if self.backend_ns.is_some() {
                format!("nat = \"{}\"\n", self.backend_link(i))
            } else {
                String::new()
            };
            let text = format!(
                "private_key_file = \"server.key\"\nlisten_port = {PORT}\n\
                 listen_addresses = [\"{addr}\"]\naddress = \"{SERVER_VIRTUAL}/16\"\nworkers = 1\n\
                 tun_name = \"ctrf0\"\ncontrol_socket = \"{sock}\"\n{nat}\n\
                 [registry]\netcd = [{etcd}]\nfleet = \"{fleet}\"\nname = \"{name}\"\n\
                 endpoint = \"{addr}:{PORT}\"\nfleet_key_file = \"fleet.key\"\n{stale}",
                sock = self.socket(i).display(),
                fleet = self.fleet_name,
            );
            std::fs::write(self.dir.join(format!("h{name}.toml")), text).expect("config");
        }
        server_pub
    }

    fn start_headend(&mut self, i: usize) {
        let config = self.dir.join(format!("h{}.toml", HEADENDS[i].0));
        let argv = in_netns(
            &self.headend_ns[i],
            &[BIN, "--config", config.to_str().unwrap()],
        );
        let name = format!("h{}", HEADENDS[i].0);
        let p = Proc::spawn(&name, &argv, &[("CONCENTRATOR_LOG", "info")], &self.dir);
        if self.headends.len() <= i {
            self.headends.resize_with(i + 1, || None);
        }
        self.headends[i] = Some(p);
        let deadline = Instant::now() + SHORT;
        loop {
            let h = self.headends[i].as_mut().unwrap();
            if h.stderr().contains("registry: loaded from etcd") {
                return;
            }
            if let Some(st) = h.exited() {
                panic!("headend {name} exited ({st}):\n{}", h.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "headend {name} did not load the registry"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn request<T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        req: &Request,
    ) -> anyhow::Result<T> {
        concentrator::ops::socket::request(&self.socket(i), req, Duration::from_secs(30))
    }

    fn show(&self, i: usize) -> ShowReply {
        self.request(
            i,
            &Request::Show {
                offset: 0,
                limit: 10_000,
            },
        )
        .expect("show")
    }

    fn add(&self, i: usize, public_key: &str) -> anyhow::Result<PeerAdded> {
        self.add_routing(i, public_key, &[])
    }

    /// [`Fleet::add`] of a peer with `networks` behind it.
    fn add_routing(
        &self,
        i: usize,
        public_key: &str,
        networks: &[&str],
    ) -> anyhow::Result<PeerAdded> {
        self.request(
            i,
            &Request::PeerAdd {
                public_key: public_key.to_string(),
                address: None,
                address6: None,
                psk: None,
                allowed_ips: networks
                    .iter()
                    .map(|n| n.parse().expect("network"))
                    .collect(),
                protocol: None,
            },
        )
    }

    /// Waits until headend `i` runs exactly the peers `want` (public key to address).
    fn wait_peers(&self, i: usize, want: &HashMap<String, String>, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let show = self.show(i);
            let have: HashMap<String, String> = show
                .peers
                .iter()
                .map(|p| (p.public_key.clone(), p.address.clone()))
                .collect();
            if &have == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "headend {} runs {} peers, expected {} after {within:?}",
                HEADENDS[i].0,
                have.len(),
                want.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_client(&mut self, c: usize, key_file: &Path, server_pub: &str, via: usize) {
        let endpoint = format!("server_endpoint = \"{}:{PORT}\"\n", HEADENDS[via].1);
        self.start_client_with(c, key_file, server_pub, &endpoint);
    }

    /// Starts client `c` with `settings` (its endpoints, routes) added to the common ones.
    fn start_client_with(&mut self, c: usize, key_file: &Path, server_pub: &str, settings: &str) {
        let config = self.dir.join(format!("c{}.toml", c + 1));
        std::fs::write(
            &config,
            format!(
                "private_key_file = \"{}\"\nserver_public_key = \"{server_pub}\"\n\
                 {settings}persistent_keepalive = 1\ntun_name = \"ctrfc0\"\n",
                key_file.display(),
            ),
        )
        .expect("client config");
        let argv = in_netns(
            &self.client_ns[c],
            &[BIN, "connect", "--config", config.to_str().unwrap()],
        );
        let p = Proc::spawn(&format!("c{}", c + 1), &argv, &[], &self.dir);
        if self.clients.len() <= c {
            self.clients.resize_with(c + 1, || None);
        }
        self.clients[c] = Some(p);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let p = self.clients[c].as_mut().unwrap();
            if p.stderr().contains("tunnel up") {
                return;
            }
            if let Some(st) = p.exited() {
                panic!("client {} exited ({st}):\n{}", c + 1, p.stderr());
            }
            assert!(Instant::now() < deadline, "client {} not up in 15 s", c + 1);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `count` pings from client `c` to the headend's TUN address through the tunnel; how many
    /// came back.
    fn pings(&self, c: usize, count: u32) -> u32 {
        let n = count.to_string();
        let deadline = (count + 3).to_string();
        let out = cmd::run(
            &in_netns(
                &self.client_ns[c],
                &[
                    "ping",
                    "-n",
                    "-c",
                    &n,
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "-w",
                    &deadline,
                    SERVER_VIRTUAL,
                ],
            ),
            None,
            Duration::from_secs(u64::from(count) + 10),
        );
        out.stdout
            .lines()
            .find_map(|l| {
                let (_, rest) = l.split_once(" packets transmitted, ")?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// The member that leads the cluster now (by index), from `etcdctl endpoint status`.
    fn leader(&self) -> usize {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        assert!(out.ok(), "endpoint status: {}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
        v.as_array()
            .expect("one status per member")
            .iter()
            .find_map(|s| {
                let leader = s["Status"]["leader"].as_u64()?;
                let me = s["Status"]["header"]["member_id"].as_u64()?;
                let ep = s["Endpoint"].as_str()?;
                (leader == me).then(|| ETCD.iter().position(|a| ep.contains(a)))?
            })
            .expect("a leader")
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for p in files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "err"))
        {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            s += &format!("----- {} -----\n", p.display());
            for l in tail.iter().rev() {
                s += l;
                s.push('\n');
            }
        }
        s
    }
}

fn client_address(i: usize) -> String {
    format!("10.9.0.{}", 31 + i)
}

fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A random 32-byte public key in base64 (a peer that never connects).
fn random_key() -> String {
    let mut k = [0u8; 32];
    getrandom::getrandom(&mut k).expect("random");
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// Writes a pre-fleet server file with three peers (one fixed address, one pre-shared key),
/// imports it through headend b twice; returns each peer's key, address and PSK.
fn import_file(fleet: &Fleet) -> Vec<(String, String, Option<String>)> {
    let (psk, _) = keypair();
    write_secret(&fleet.dir.join("old.psk"), &psk);
    let keys: Vec<String> = (0..3).map(|_| random_key()).collect();
    let text = format!(
        "private_key_file = \"server.key\"\naddress = \"{SERVER_VIRTUAL}/16\"\n\
         [[peer]]\npublic_key = \"{}\"\naddress = \"10.66.250.7\"\n\
         [[peer]]\npublic_key = \"{}\"\npreshared_key_file = \"old.psk\"\n\
         [[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.99.0.0/24\"]\n",
        keys[0], keys[1], keys[2]
    );
    let path = fleet.dir.join("old.toml");
    std::fs::write(&path, text).expect("old config");
    let (old, _) = concentrator::config::ServerConfig::load(&path).expect("the old file loads");
    let socket = fleet.socket(1);
    let import = |expect: &str| {
        let out = cli_at(&socket, &["registry", "import", path.to_str().unwrap()]);
        assert!(
            out.ok() && out.stdout.contains(expect),
            "import: {}{}",
            out.stdout,
            out.stderr
        );
        out
    };
    import("imported 3 peers");
    let again = import("imported 0 peers");
    assert_eq!(
        again.stderr.matches("skipped").count(),
        3,
        "{}",
        again.stderr
    );
    old.peers
        .iter()
        .map(|p| {
            let key = p.public_key.to_string();
            let psk = p.preshared_key.is_some().then(|| psk.clone());
            (key, p.address.to_string(), psk)
        })
        .collect()
}

/// Adds `count` peers spread over the three headends from `threads` threads at once; returns
/// each key with the address its add reply gave.
fn concurrent_adds(fleet: &Fleet, count: usize, threads: usize) -> HashMap<String, String> {
    let keys: Vec<String> = (0..count).map(|_| random_key()).collect();
    let results: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let keys = &keys;
                s.spawn(move || {
                    keys.iter()
                        .enumerate()
                        .filter(|(n, _)| n % threads == t)
                        .map(|(n, k)| {
                            let added = fleet
                                .add(n % 3, k)
                                .unwrap_or_else(|e| panic!("add {n} on headend {}: {e}", n % 3));
                            (k.clone(), added.address)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("adder"))
            .collect()
    });
    results.into_iter().collect()
}

#[test]
fn three_headends_share_one_registry_on_etcd() {
    let test = "three_headends_share_one_registry_on_etcd";
    if !root_or_skip(test) || !tools_or_skip(test, &["ip", "nft", "ping", "etcd", "etcdctl"]) {
        return;
    }
    let started = Instant::now();
    let full = full_size();
    let mut fleet = Fleet::new();
    fleet.start_etcd();
    let server_pub = fleet.write_configs();
    for i in 0..3 {
        fleet.start_headend(i);
    }
    eprintln!("fleet up in {:?}", started.elapsed());

    // Every headend is listed, with its endpoint.
    let listed: FleetReply = fleet.request(1, &Request::Fleet).expect("fleet");
    let names: Vec<&str> = listed.headends.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"], "{listed:?}");
    assert_eq!(
        listed.headends[2].endpoint,
        format!("{}:{PORT}", HEADENDS[2].1)
    );

    // 1. A peer added on A's command line is known to C at once, and connects through C.
    let (c1_key, c1_pub) = keypair();
    let c1_key_file = fleet.dir.join("c1.key");
    write_secret(&c1_key_file, &c1_key);
    let c1_addr = fleet.add_peer(0, &c1_pub);
    let added_at = Instant::now();
    let mut want: HashMap<String, String> = HashMap::from([(c1_pub.clone(), c1_addr.clone())]);
    let bound = if full {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    fleet.wait_peers(2, &want, bound);
    eprintln!("peer added on a known to c after {:?}", added_at.elapsed());
    fleet.start_client(0, &c1_key_file, &server_pub, 2);
    assert!(fleet.pings(0, 3) >= 2, "client through c: no traffic");
    let on_c = fleet.show(2);
    let c1 = on_c
        .peers
        .iter()
        .find(|p| p.public_key == c1_pub)
        .expect("c1 on c");
    assert_eq!(
        c1.address, c1_addr,
        "the address given on a is the one c hands out"
    );
    assert!(
        c1.latest_handshake_secs_ago.is_some(),
        "c1 handshook with c"
    );

    // A file's peers moved into etcd once, through B: every headend runs them with the
    // addresses the file gave them; the pre-shared key is sealed in etcd; a second import
    // skips them all.
    let imported = import_file(&fleet);
    want.extend(imported.iter().map(|(k, a, _)| (k.clone(), a.clone())));
    for i in 0..3 {
        fleet.wait_peers(i, &want, Duration::from_secs(5));
    }
    let (psk_peer, psk) = imported
        .iter()
        .find_map(|(k, _, psk)| psk.clone().map(|p| (k.clone(), p)))
        .expect("a peer with a psk");
    let url_key = base64::engine::general_purpose::URL_SAFE.encode(
        base64::engine::general_purpose::STANDARD
            .decode(&psk_peer)
            .expect("base64 key"),
    );
    let record = fleet.etcdctl(&[
        "get",
        "--print-value-only",
        &format!("/concentrator/{}/peers/{url_key}", fleet.fleet_name),
    ]);
    assert!(
        record.ok() && record.stdout.contains("\"psk\""),
        "{}",
        record.stdout
    );
    assert!(
        !record.stdout.contains(psk.trim()),
        "the psk is in etcd in the clear"
    );
    let listed = cli_at_ok(&fleet.socket(2), &["show", "--fleet"]);
    for (name, addr) in HEADENDS {
        assert!(
            listed.contains(name) && listed.contains(addr),
            "show --fleet: {listed}"
        );
    }

    // 2. Concurrent adds spread over the three headends: every address distinct, every
    // headend runs them all with the same addresses.
    // The issue's 1 000 take a few seconds here; FLEET_ADDS sets another count.
    let count = std::env::var("FLEET_ADDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let t = Instant::now();
    let added = concurrent_adds(&fleet, count, 12);
    let took = t.elapsed();
    let distinct: HashSet<&String> = added.values().collect();
    assert_eq!(added.len(), count);
    assert_eq!(distinct.len(), count, "two peers got one address");
    assert!(!distinct.contains(&c1_addr));
    want.extend(added);
    for i in 0..3 {
        fleet.wait_peers(i, &want, Duration::from_secs(20));
    }
    eprintln!("{count} concurrent adds over 3 headends in {took:?}, all distinct, all applied");

    // 2b. One network asked for through all three headends at the same moment, for nine
    // peers: exactly one gets it (each headend checks overlaps against its own copy, and etcd
    // refuses the adds whose copy was overtaken).
    for round in 0..5 {
        let network = format!("10.98.{round}.0/24");
        const ASKERS: usize = 9;
        let keys: Vec<String> = (0..ASKERS).map(|_| random_key()).collect();
        let barrier = std::sync::Barrier::new(ASKERS);
        let shared = &fleet;
        let results: Vec<anyhow::Result<PeerAdded>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..ASKERS)
                .map(|i| {
                    let (barrier, keys, network) = (&barrier, &keys, &network);
                    s.spawn(move || {
                        barrier.wait();
                        shared.add_routing(i % 3, &keys[i], &[network.as_str()])
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("adder"))
                .collect()
        });
        let winners: Vec<usize> = (0..ASKERS).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {network} given to {} peers: {results:?}",
            winners.len()
        );
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            let why = format!("{r:#}");
            assert!(
                why.contains("already routed") || why.contains("at the same moment"),
                "round {round}: refused for another reason: {why}"
            );
        }
        let winner = winners[0];
        let added = results.into_iter().nth(winner).unwrap().unwrap();
        want.insert(keys[winner].clone(), added.address);
        for i in 0..3 {
            fleet.wait_peers(i, &want, Duration::from_secs(10));
        }
    }
    eprintln!("one network asked for by 9 adds on three headends at once: given once, 5 rounds");

    // 3. The etcd leader killed: adds go on after the re-election.
    let leader = fleet.leader();
    fleet.etcd[leader].as_mut().expect("leader runs").kill();
    let killed_at = Instant::now();
    let mut after_kill = HashMap::new();
    for n in 0..6 {
        let key = random_key();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match fleet.add(n % 3, &key) {
                Ok(a) => {
                    after_kill.insert(key, a.address);
                    break;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "add {n} after the leader died: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    eprintln!(
        "etcd leader e{} killed; 6 adds done {:?} later",
        leader + 1,
        killed_at.elapsed()
    );
    want.extend(after_kill);
    for i in 0..3 {
        fleet.wait_peers(i, &want, Duration::from_secs(30));
    }

    // 4. Headend A cut off from etcd: its clients keep flowing; writes on A fail at once;
    // changes made through B meanwhile reach A when it is back.
    let (c2_key, c2_pub) = keypair();
    let c2_key_file = fleet.dir.join("c2.key");
    write_secret(&c2_key_file, &c2_key);
    let c2 = fleet.add(1, &c2_pub).expect("add c2 on b");
    want.insert(c2_pub.clone(), c2.address.clone());
    fleet.wait_peers(0, &want, Duration::from_secs(5));
    fleet.start_client(1, &c2_key_file, &server_pub, 0);
    assert!(fleet.pings(1, 3) >= 2, "client through a: no traffic");

    let cut = if full { 30 } else { 8 };
    let ns_a = fleet.headend_ns[0].clone();
    let rules = "table inet ctrfcut {\n\
                   chain out { type filter hook output priority 0; tcp dport 2379 drop; }\n\
                   chain in { type filter hook input priority 0; tcp sport 2379 drop; }\n\
                 }\n";
    let out = cmd::run(
        &in_netns(&ns_a, &["nft", "-f", "-"]),
        Some(rules.as_bytes()),
        SHORT,
    );
    assert!(out.ok(), "nft: {}", out.stderr);
    let cut_at = Instant::now();
    // Through B meanwhile: one peer added, one removed.
    let newcomer = random_key();
    let added_b = fleet.add(1, &newcomer).expect("add on b during the cut");
    let gone = want
        .keys()
        .find(|k| **k != c1_pub && **k != c2_pub)
        .cloned()
        .expect("a peer to remove");
    let _: PeerRemoved = fleet
        .request(
            1,
            &Request::PeerRemove {
                public_key: gone.clone(),
            },
        )
        .expect("remove on b during the cut");
    want.insert(newcomer.clone(), added_b.address);
    want.remove(&gone);
    // A's clients keep flowing through the cut: the data plane never waits on etcd.
    let pings = (cut * 5) as u32 - 10;
    let got = fleet.pings(1, pings);
    assert!(
        got + 2 >= pings,
        "client through a during the cut: {got}/{pings} replies"
    );
    let a_show = fleet.show(0);
    let reg = a_show.registry.expect("a has a registry");
    assert!(
        !reg.connected,
        "a still says connected during the cut: {reg:?}"
    );
    assert!(
        reg.refusing_handshakes && reg.age_secs.is_some_and(|a| a > 3.0),
        "a is past stale_after but does not refuse handshakes: {reg:?}"
    );
    assert!(
        a_show.peers.iter().any(|p| p.public_key == gone),
        "a keeps its last known registry"
    );
    let refused = fleet
        .add(0, &random_key())
        .expect_err("a write on a during the cut");
    assert!(
        refused.to_string().contains("etcd is unreachable"),
        "{refused}"
    );
    let remaining = Duration::from_secs(cut).saturating_sub(cut_at.elapsed());
    std::thread::sleep(remaining);
    cmd::run_ok(
        &in_netns(&ns_a, &["nft", "delete", "table", "inet", "ctrfcut"]),
        None,
        SHORT,
    );
    let healed = Instant::now();
    let took = fleet.wait_peers(0, &want, Duration::from_secs(30));
    eprintln!(
        "a cut off for {:?}; reconciled {took:?} after the cut ended",
        healed - cut_at
    );
    let reg = fleet.show(0).registry.expect("registry");
    assert!(reg.connected && !reg.refusing_handshakes, "{reg:?}");
    assert!(fleet.pings(1, 3) >= 2, "client through a after the cut");
    assert!(fleet.pings(0, 3) >= 2, "client through c after the cut");
    // A reload keeps the registry's peers (the file has none) and touches none of them.
    let reload: concentrator::ops::protocol::ReloadReply =
        fleet.request(1, &Request::Reload).expect("reload on b");
    assert!(reload.added.is_empty() && reload.removed.is_empty() && reload.changed.is_empty());
    assert_eq!(reload.unchanged, want.len(), "{reload:?}");
    fleet.wait_peers(1, &want, Duration::from_secs(2));
    eprintln!("fleet test done in {:?}", started.elapsed());
}

/// One etcd member serving TLS with client certificates and password authentication (the
/// headend's role may only touch its fleet's prefix), and one headend reaching it so.
#[test]
fn a_headend_reaches_etcd_over_tls_with_a_client_certificate_and_a_password() {
    let test = "a_headend_reaches_etcd_over_tls_with_a_client_certificate_and_a_password";
    if !root_or_skip(test) || !tools_or_skip(test, &["ip", "etcd", "etcdctl", "openssl"]) {
        return;
    }
    let mut fleet = Fleet::new();
    let dir = fleet.dir.clone();
    make_certificates(&dir);
    let addr = ETCD[0];
    let url = format!("https://{addr}:2379");
    let data = PathBuf::from(format!("/dev/shm/ctr-fleet-{}-tls", fleet.tag));
    let _ = std::fs::remove_dir_all(&data);
    fleet.data_dirs.push(data.clone());
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let (cert, key, ca) = (path("etcd.pem"), path("etcd.key"), path("ca.pem"));
    let argv = in_netns(
        &fleet.etcd_ns[0],
        &[
            "etcd",
            "--name",
            "e1",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "e1=http://127.0.0.1:2380",
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--client-cert-auth",
            "--trusted-ca-file",
            &ca,
        ],
    );
    fleet
        .etcd
        .push(Some(Proc::spawn("etcd-tls", &argv, &[], &dir)));
    let (client_cert, client_key) = (path("client.pem"), path("client.key"));
    let tls = [
        format!("--endpoints={url}"),
        format!("--cacert={ca}"),
        format!("--cert={client_cert}"),
        format!("--key={client_key}"),
    ];
    let ctl = |fleet: &Fleet, args: &[&str]| {
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        fleet.etcdctl_raw(&all)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctl(&fleet, &["endpoint", "health"]).ok() {
        assert!(Instant::now() < deadline, "etcd with TLS not healthy");
        std::thread::sleep(Duration::from_millis(200));
    }
    let prefix = format!("/concentrator/{}/", fleet.fleet_name);
    let root = ["--user", "root:rootpw"];
    for args in [
        vec!["user", "add", "root", "--new-user-password=rootpw"],
        vec!["auth", "enable"],
        [&root[..], &["role", "add", "fleet"]].concat(),
        [
            &root[..],
            &[
                "role",
                "grant-permission",
                "fleet",
                "--prefix=true",
                "readwrite",
                &prefix,
            ],
        ]
        .concat(),
        [
            &root[..],
            &["user", "add", "headend", "--new-user-password=secret"],
        ]
        .concat(),
        [&root[..], &["user", "grant-role", "headend", "fleet"]].concat(),
    ] {
        let out = ctl(&fleet, &args);
        assert!(out.ok(), "etcdctl {args:?}: {}{}", out.stdout, out.stderr);
    }

    fleet.write_configs();
    std::fs::write(dir.join("etcd.password"), "secret\n").expect("password");
    let config = dir.join("ha.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let registry = format!(
        "[registry]\netcd = [\"{url}\"]\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\n\
         key_file = \"client.key\"\nuser = \"headend\"\npassword_file = \"etcd.password\"\n"
    );
    let text = text
        .lines()
        .filter(|l| !l.starts_with("etcd = "))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("[registry]\n", &registry);
    std::fs::write(&config, text).expect("config");
    fleet.start_headend(0);
    let key = random_key();
    let added = fleet.add(0, &key).expect("add over TLS");
    let want = HashMap::from([(key, added.address)]);
    fleet.wait_peers(0, &want, Duration::from_secs(5));
    let reg = fleet.show(0).registry.expect("registry");
    assert!(reg.connected, "{reg:?}");
    // The headend's user may write only under its fleet's prefix: the role is in force.
    let denied = ctl(
        &fleet,
        &["--user", "headend:secret", "put", "/elsewhere", "x"],
    );
    assert!(!denied.ok(), "the headend's user wrote outside its prefix");
}

/// A CA, a certificate for the etcd member (its address in subjectAltName) and a client
/// certificate, with openssl. The client certificate's name is no etcd user, so only the
/// password makes the headend someone etcd lets in.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let mut argv = vec!["openssl"];
        argv.extend_from_slice(args);
        let out = cmd::run(&argv, None, SHORT);
        assert!(out.ok(), "openssl {args:?}: {}", out.stderr);
    };
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=fleet test CA",
        ],
    ]
    .concat());
    for (name, cn, ext) in [
        (
            "etcd",
            "e1",
            format!(
                "subjectAltName=IP:{}\nextendedKeyUsage=serverAuth\n",
                ETCD[0]
            ),
        ),
        (
            "client",
            "fleet-client",
            "extendedKeyUsage=clientAuth\n".to_string(),
        ),
    ] {
        let ext_file = p(&format!("{name}.ext"));
        std::fs::write(&ext_file, ext).expect("extensions");
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &p(&format!("{name}.key")),
                "-out",
                &p(&format!("{name}.csr")),
                "-subj",
                &format!("/CN={cn}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &p(&format!("{name}.csr")),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p(&format!("{name}.pem")),
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ]);
    }
    for f in ["etcd.key", "client.key"] {
        write_secret(
            &dir.join(f),
            &std::fs::read_to_string(dir.join(f)).expect("key"),
        );
    }
}

/// Which headend (by index) carries a session with `public_key` now, and the address it
/// gives it: a headend knows every peer of the fleet, but only the one the client handshook
/// with has a handshake time for it.
fn session_on(fleet: &Fleet, headends: &[usize], public_key: &str) -> Option<(usize, String)> {
    headends.iter().find_map(|&i| {
        fleet
            .show(i)
            .peers
            .into_iter()
            .find(|p| p.public_key == public_key && p.latest_handshake_secs_ago.is_some())
            .map(|p| (i, p.address))
    })
}

/// A client's iperf3 TCP upload to the backend; its JSON report's bytes sent, or why none.
fn iperf3_upload(fleet: &Fleet, c: usize, port: u16, seconds: u32) -> Result<u64, String> {
    let (port, secs) = (port.to_string(), seconds.to_string());
    let out = cmd::run(
        &in_netns(
            &fleet.client_ns[c],
            &[
                "iperf3",
                "-c",
                BACKEND,
                "-p",
                &port,
                "-t",
                &secs,
                "-b",
                "50M",
                "--connect-timeout",
                "3000",
                "-J",
            ],
        ),
        None,
        Duration::from_secs(u64::from(seconds) + 15),
    );
    let report: serde_json::Value =
        serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stderr))?;
    match report["end"]["sum_sent"]["bytes"].as_u64() {
        Some(bytes) if out.ok() => Ok(bytes),
        _ => Err(format!("iperf3 failed: {}", report["error"])),
    }
}

/// Headend A killed with SIGKILL while its clients ping the backend every 100 ms and one of
/// them uploads with iperf3: every client resumes through B or C with the address the fleet
/// gave it. The distribution of the resume times is printed; CI asserts 10 s, `FLEET_FULL=1`
/// (10 clients; `FLEET_FAILOVER_CLIENTS` sets another count) the issue's 3 s.
///
/// With `nat`, the backend sees the headend's address: an established TCP flow cannot survive
/// the move to another headend (the backend answers the new source address with a reset), so
/// what must work after the failover is a new connection, here a second iperf3 run.
#[test]
fn clients_of_a_killed_headend_resume_through_the_others_with_their_addresses() {
    let test = "clients_of_a_killed_headend_resume_through_the_others_with_their_addresses";
    if !root_or_skip(test) || !tools_or_skip(test, &["ip", "ping", "iperf3", "etcd", "etcdctl"]) {
        return;
    }
    let full = full_size();
    let clients: usize = std::env::var("FLEET_FAILOVER_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 10 } else { 3 });
    // What is asserted: the issue's target at full size; a generous bound on a busy CI machine.
    let limit = Duration::from_secs(if full { 3 } else { 10 });
    let started = Instant::now();
    let mut fleet = Fleet::with_clients(clients);
    fleet.add_backend();
    fleet.start_etcd();
    let server_pub = fleet.write_configs();
    for i in 0..3 {
        fleet.start_headend(i);
    }
    let cluster_up = Instant::now();
    eprintln!("fleet up in {:?}", started.elapsed());

    // Every client added through the registry on A's command line, and known to B and C.
    let mut peers = Vec::new();
    for c in 0..clients {
        let (key, public) = keypair();
        let key_file = fleet.dir.join(format!("c{}.key", c + 1));
        write_secret(&key_file, &key);
        let address = fleet.add_peer(0, &public);
        peers.push((key_file, public, address));
    }
    let want: HashMap<String, String> = peers
        .iter()
        .map(|(_, k, a)| (k.clone(), a.clone()))
        .collect();
    for i in 1..3 {
        fleet.wait_peers(i, &want, Duration::from_secs(5));
    }

    // Each client lists A first, then B and C, every other one C before B (so the two share
    // A's clients), and routes only the backend into the tunnel.
    for (c, (key_file, _, _)) in peers.iter().enumerate() {
        let order = if c % 2 == 0 { [0, 1, 2] } else { [0, 2, 1] };
        let endpoints = order
            .map(|i| format!("\"{}:{PORT}\"", HEADENDS[i].1))
            .join(", ");
        let settings = format!("server_endpoints = [{endpoints}]\nroutes = [\"{BACKEND}/32\"]\n");
        fleet.start_client_with(c, key_file, &server_pub, &settings);
    }
    for (public, address) in peers.iter().map(|(_, k, a)| (k, a)) {
        assert_eq!(
            session_on(&fleet, &[0], public),
            Some((0, address.clone())),
            "every client starts on a with the fleet's address"
        );
    }

    let backend = fleet.backend_ns.clone().expect("a backend");
    let iperf_server = |port: &str| {
        let argv = in_netns(&backend, &["iperf3", "-s", "-1", "-B", BACKEND, "-p", port]);
        Proc::spawn(&format!("iperf3-s{port}"), &argv, &[], &fleet.dir)
    };
    // One server for the upload cut by the failover, one for the run after it (the first may
    // still wait on its dead connection).
    let _servers = [iperf_server("5201"), iperf_server("5202")];
    std::thread::sleep(Duration::from_millis(300));
    let ping_secs = 2 + limit.as_secs() + 1;
    let upload = Proc::spawn(
        "iperf3-c1",
        &in_netns(
            &fleet.client_ns[0],
            &[
                "iperf3",
                "-c",
                BACKEND,
                "-p",
                "5201",
                "-t",
                &ping_secs.to_string(),
                "-b",
                "50M",
                "--connect-timeout",
                "3000",
            ],
        ),
        &[],
        &fleet.dir,
    );
    let mut pings: Vec<Proc> = (0..clients)
        .map(|c| {
            let ping_secs = ping_secs.to_string();
            let argv = in_netns(&fleet.client_ns[c], &timestamped_ping(&ping_secs, BACKEND));
            Proc::spawn(&format!("ping-c{}", c + 1), &argv, &[], &fleet.dir)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = unix_now();
    fleet.headends[0].as_mut().expect("a runs").kill();
    for p in &mut pings {
        p.wait(Duration::from_secs(ping_secs + 10));
    }

    let mut resumed = Vec::new();
    let mut carriers = [0usize; 3];
    for (c, (_, public, address)) in peers.iter().enumerate() {
        let output = pings[c].stdout();
        assert!(
            reply_times(&output).iter().any(|t| *t < killed_at),
            "client {} had no reply through a before the kill:\n{output}",
            c + 1
        );
        let Some(after) = first_reply_after(&output, killed_at) else {
            panic!(
                "client {} had no reply after a died:\n{output}\n{}",
                c + 1,
                fleet.logs()
            );
        };
        let (on, now) = session_on(&fleet, &[1, 2], public)
            .unwrap_or_else(|| panic!("client {} has a session on neither b nor c", c + 1));
        let next = if c % 2 == 0 { 1 } else { 2 };
        assert_eq!(on, next, "client {} moved to the next in its list", c + 1);
        assert_eq!(&now, address, "client {} changed address", c + 1);
        let tun = cmd::run_ok(
            &[
                "ip",
                "-n",
                &fleet.client_ns[c],
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                "ctrfc0",
            ],
            None,
            SHORT,
        );
        assert!(
            tun.contains(&format!(" {address}/")),
            "client {}'s tunnel: {tun}",
            c + 1
        );
        let log = fleet.clients[c].as_ref().expect("client runs").stderr();
        assert!(
            log.contains("moving to the next") && !log.contains("rebuilding the tunnel"),
            "client {} moved without rebuilding its tunnel:\n{log}",
            c + 1
        );
        eprintln!(
            "client {} ({address}) resumed through {} {after:?} after a died",
            c + 1,
            HEADENDS[on].0
        );
        assert!(
            after < limit,
            "client {} resumed only after {after:?} (bound {limit:?})\n{}",
            c + 1,
            fleet.logs()
        );
        carriers[on] += 1;
        resumed.push(after);
    }

    // The upload's connection did not survive the change of source address; a new one works.
    let mut upload = upload;
    let first_run = upload.wait(Duration::from_secs(5));
    let said = upload.stderr();
    eprintln!(
        "the upload running through the kill ended ({first_run:?}): {}",
        said.lines().last().unwrap_or("")
    );
    let sent = iperf3_upload(&fleet, 0, 5202, 2)
        .unwrap_or_else(|e| panic!("iperf3 after the failover: {e}\n{}", fleet.logs()));
    assert!(sent > 0, "iperf3 after the failover sent nothing");

    resumed.sort();
    eprintln!(
        "failover of {clients} clients: resumed min {:?}, median {:?}, max {:?} after a died \
         (b carries {}, c {}; bound {limit:?}, target 3 s); the test took {:?} after the \
         cluster was up",
        resumed[0],
        resumed[resumed.len() / 2],
        resumed[resumed.len() - 1],
        carriers[1],
        carriers[2],
        cluster_up.elapsed()
    );
}
