//! Stock WireGuard endpoints for the tests: wireguard-go (Debian's package) or boringtun-cli
//! (`cargo install`), started inside a network namespace and configured only the way operators
//! configure them: `wg setconf` / `wg set` on their UAPI socket, and `ip addr/link/route`.
//!
//! Their UAPI socket (`/var/run/wireguard/IFACE.sock`) lives in the file system, which network
//! namespaces share: interface names are unique per test process (they carry the PID and a
//! counter). An endpoint is stopped by its PID and its interface removed on drop, also when the
//! test panics. `scripts/deps.sh tests` installs both programs and `wg`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::cmd::{self, Proc};

/// How long a command (`wg`, `ip`) may take, and how long an endpoint may take to come up.
const SHORT: Duration = Duration::from_secs(10);

/// The programs a test with stock endpoints needs (for [`super::tools_or_skip`]).
pub const TOOLS: &[&str] = &["wireguard-go", "boringtun-cli", "wg", "ip", "ping"];

/// Which stock implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockKind {
    /// `wireguard-go -f IFACE`.
    WireguardGo,
    /// `boringtun-cli --foreground --disable-drop-privileges IFACE`.
    Boringtun,
}

impl StockKind {
    /// The program's name.
    pub fn program(self) -> &'static str {
        match self {
            StockKind::WireguardGo => "wireguard-go",
            StockKind::Boringtun => "boringtun-cli",
        }
    }

    /// Seconds since the handshake whose `latest_handshake` (from `wg show dump`) is `latest`,
    /// at `now` (seconds since the epoch): wireguard-go reports a time, boringtun-cli already
    /// an age.
    pub fn handshake_age(self, latest: u64, now: u64) -> u64 {
        match self {
            StockKind::WireguardGo => now.saturating_sub(latest),
            StockKind::Boringtun => latest,
        }
    }

    /// Two letters for interface names.
    fn tag(self) -> &'static str {
        match self {
            StockKind::WireguardGo => "gg",
            StockKind::Boringtun => "bt",
        }
    }
}

/// One `[Peer]` of a generated `wg setconf` file.
#[derive(Debug, Clone, Default)]
pub struct StockPeer {
    /// Base64 public key.
    pub public_key: String,
    /// Base64 pre-shared key.
    pub preshared_key: Option<String>,
    /// `host:port` (IPv6 in brackets).
    pub endpoint: Option<String>,
    /// Prefixes, e.g. `10.66.0.0/16`.
    pub allowed_ips: Vec<String>,
    /// Seconds; `None` leaves it off.
    pub persistent_keepalive: Option<u16>,
}

/// The `[Interface]` and `[Peer]`s of a generated `wg setconf` file.
#[derive(Debug, Clone, Default)]
pub struct StockConfig {
    /// Base64 private key.
    pub private_key: String,
    /// `None`: a random port.
    pub listen_port: Option<u16>,
    pub peers: Vec<StockPeer>,
}

impl StockConfig {
    /// The text `wg setconf` reads.
    pub fn to_wg_conf(&self) -> String {
        let mut t = format!("[Interface]\nPrivateKey = {}\n", self.private_key);
        if let Some(port) = self.listen_port {
            let _ = writeln!(t, "ListenPort = {port}");
        }
        for p in &self.peers {
            let _ = write!(t, "\n[Peer]\nPublicKey = {}\n", p.public_key);
            if let Some(psk) = &p.preshared_key {
                let _ = writeln!(t, "PresharedKey = {psk}");
            }
            if let Some(ep) = &p.endpoint {
                let _ = writeln!(t, "Endpoint = {ep}");
            }
            if !p.allowed_ips.is_empty() {
                let _ = writeln!(t, "AllowedIPs = {}", p.allowed_ips.join(", "));
            }
            if let Some(ka) = p.persistent_keepalive {
                let _ = writeln!(t, "PersistentKeepalive = {ka}");
            }
        }
        t
    }
}

/// The interface line of `wg show IFACE dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpInterface {
    pub private_key: String,
    pub public_key: String,
    pub listen_port: u16,
}

/// A peer line of `wg show IFACE dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpPeer {
    pub public_key: String,
    /// `None` when the dump says `(none)`.
    pub preshared_key: Option<String>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<String>,
    /// Seconds since the epoch from wireguard-go; boringtun-cli reports the seconds since the
    /// handshake instead (its UAPI writes `time_since_last_handshake` there): see
    /// [`StockKind::handshake_age`]. `None` before the first handshake.
    pub latest_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<u16>,
}

/// `wg show IFACE dump`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDump {
    pub interface: DumpInterface,
    pub peers: Vec<DumpPeer>,
}

impl WgDump {
    /// Parses the tab-separated dump: the interface line (private key, public key, listen
    /// port, fwmark), then one line per peer (public key, preshared key, endpoint, allowed
    /// ips, latest handshake, rx, tx, persistent keepalive).
    pub fn parse(text: &str) -> Result<WgDump, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().ok_or("empty dump")?;
        let f: Vec<&str> = first.split('\t').collect();
        if f.len() != 4 {
            return Err(format!("interface line has {} fields: {first:?}", f.len()));
        }
        let interface = DumpInterface {
            private_key: f[0].to_string(),
            public_key: f[1].to_string(),
            listen_port: f[2]
                .parse()
                .map_err(|e| format!("listen port {:?}: {e}", f[2]))?,
        };
        let none = |s: &str| (s != "(none)" && s != "off").then(|| s.to_string());
        let mut peers = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 8 {
                return Err(format!("peer line has {} fields: {line:?}", f.len()));
            }
            let num = |i: usize| -> Result<u64, String> {
                f[i].parse()
                    .map_err(|e| format!("field {i} {:?}: {e}", f[i]))
            };
            peers.push(DumpPeer {
                public_key: f[0].to_string(),
                preshared_key: none(f[1]),
                endpoint: none(f[2])
                    .map(|e| e.parse().map_err(|x| format!("endpoint {e:?}: {x}")))
                    .transpose()?,
                allowed_ips: none(f[3])
                    .map(|a| a.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
                latest_handshake: Some(num(4)?).filter(|t| *t != 0),
                rx_bytes: num(5)?,
                tx_bytes: num(6)?,
                persistent_keepalive: none(f[7])
                    .map(|k| k.parse().map_err(|e| format!("keepalive {k:?}: {e}")))
                    .transpose()?,
            });
        }
        Ok(WgDump { interface, peers })
    }

    /// The peer with `public_key`.
    pub fn peer(&self, public_key: &str) -> Option<&DumpPeer> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

static NEXT_ENDPOINT: AtomicU32 = AtomicU32::new(0);

/// A running stock endpoint: its process and its interface in `ns`.
pub struct StockEndpoint {
    pub kind: StockKind,
    /// The network namespace it runs in.
    pub ns: String,
    /// Its interface (unique on the machine: carries the PID).
    pub iface: String,
    /// Where its config files and logs go.
    dir: PathBuf,
    proc: Option<Proc>,
}

/// A new private key from `wg genkey` and its public key from `wg pubkey`.
pub fn wg_keypair() -> (String, String) {
    let private = cmd::run_ok(&["wg", "genkey"], None, SHORT)
        .trim()
        .to_string();
    let public = cmd::run_ok(&["wg", "pubkey"], Some(private.as_bytes()), SHORT)
        .trim()
        .to_string();
    (private, public)
}

impl StockEndpoint {
    /// Starts `kind` in `ns` with a new interface and waits for its UAPI socket; logs and
    /// config files go to `dir`. The interface is down and has no address or peer yet.
    pub fn start(kind: StockKind, ns: &str, dir: &Path) -> StockEndpoint {
        let n = NEXT_ENDPOINT.fetch_add(1, Ordering::Relaxed);
        // At most 2 + 7 + 1 + 4 characters, within IFNAMSIZ (15 and the NUL).
        let iface = format!("{}{:x}-{n:x}", kind.tag(), std::process::id());
        assert!(
            iface.len() <= 15,
            "{iface} is too long for an interface name"
        );
        let mut argv = vec!["ip", "netns", "exec", ns, kind.program()];
        match kind {
            StockKind::WireguardGo => argv.extend(["-f", &iface]),
            // Root is needed to open the TUN and the socket; the privileges are kept so that
            // `wg set` can still change the listen port (a new socket) later.
            StockKind::Boringtun => argv.extend([
                "--foreground",
                "--disable-drop-privileges",
                "--threads",
                "1",
                &iface,
            ]),
        }
        // LOG_LEVEL quiets wireguard-go; WG_SUDO lets boringtun-cli run under sudo too.
        let env = [("LOG_LEVEL", "error"), ("WG_SUDO", "1")];
        let proc = Proc::spawn(&iface, &argv, &env, dir);
        let mut ep = StockEndpoint {
            kind,
            ns: ns.to_string(),
            iface,
            dir: dir.to_path_buf(),
            proc: Some(proc),
        };
        let sock = ep.uapi_socket();
        let deadline = Instant::now() + SHORT;
        while !sock.exists() {
            let p = ep.proc.as_mut().expect("just started");
            if let Some(st) = p.exited() {
                panic!(
                    "{} for {} exited ({st}) before creating {}:\n{}",
                    kind.program(),
                    ep.iface,
                    sock.display(),
                    p.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not create {} within {SHORT:?}:\n{}",
                kind.program(),
                sock.display(),
                p.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ep
    }

    /// Its UAPI socket.
    pub fn uapi_socket(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/wireguard/{}.sock", self.iface))
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").pid()
    }

    /// Its log (stderr).
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::stderr).unwrap_or_default()
    }

    /// `ip netns exec NS argv...`, which must succeed; returns stdout.
    fn exec_ok(&self, argv: &[&str]) -> String {
        let full = cmd::in_netns(&self.ns, argv);
        let out = cmd::run(&full, None, SHORT);
        assert!(
            out.ok(),
            "{argv:?} in {} failed ({:?}): {}{}\n{} log:\n{}",
            self.ns,
            out.status,
            out.stdout,
            out.stderr,
            self.kind.program(),
            self.log()
        );
        out.stdout
    }

    /// `wg setconf IFACE FILE` with `config` written to a file (0600) in the directory.
    pub fn setconf(&self, config: &StockConfig) {
        self.setconf_text(&config.to_wg_conf());
    }

    /// `wg setconf IFACE FILE` with `text` written to a file (0600) in the directory.
    pub fn setconf_text(&self, text: &str) {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.dir.join(format!("{}.conf", self.iface));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("writing the wg config");
        f.write_all(text.as_bytes()).expect("writing the wg config");
        drop(f);
        self.exec_ok(&["wg", "setconf", &self.iface, path.to_str().unwrap()]);
    }

    /// `wg set IFACE args...`.
    pub fn wg_set(&self, args: &[&str]) {
        let mut argv = vec!["wg", "set", &self.iface];
        argv.extend_from_slice(args);
        self.exec_ok(&argv);
    }

    /// Moves it to another listen port (what a client behind a NAT that remaps looks like).
    pub fn set_listen_port(&self, port: u16) {
        self.wg_set(&["listen-port", &port.to_string()]);
    }

    /// Gives the interface `addresses` (with prefix), sets `mtu` and brings it up.
    pub fn up(&self, addresses: &[&str], mtu: u16) {
        for a in addresses {
            let mut argv = vec!["ip", "addr", "add", a, "dev", &self.iface];
            if a.contains(':') {
                argv.push("nodad");
            }
            self.exec_ok(&argv);
        }
        self.exec_ok(&[
            "ip",
            "link",
            "set",
            &self.iface,
            "mtu",
            &mtu.to_string(),
            "up",
        ]);
    }

    /// `ip route add PREFIX dev IFACE`.
    pub fn route(&self, prefix: &str) {
        self.exec_ok(&["ip", "route", "add", prefix, "dev", &self.iface]);
    }

    /// `wg show IFACE dump`, parsed.
    pub fn dump(&self) -> WgDump {
        let text = self.exec_ok(&["wg", "show", &self.iface, "dump"]);
        WgDump::parse(&text).unwrap_or_else(|e| panic!("wg show dump: {e}:\n{text}"))
    }

    /// Waits until the peer `public_key` has a handshake; returns the dump then.
    pub fn wait_handshake(&self, public_key: &str, deadline: Duration) -> WgDump {
        let end = Instant::now() + deadline;
        loop {
            let dump = self.dump();
            if dump
                .peer(public_key)
                .is_some_and(|p| p.latest_handshake.is_some())
            {
                return dump;
            }
            assert!(
                Instant::now() < end,
                "no handshake with {public_key} on {} within {deadline:?}: {dump:#?}\nlog:\n{}",
                self.iface,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for StockEndpoint {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if std::thread::panicking() {
                eprintln!(
                    "===== {} {} log =====\n{}",
                    self.kind.program(),
                    self.iface,
                    p.stderr()
                );
            }
            // By PID: SIGTERM, SIGKILL after the grace period.
            p.stop(Duration::from_secs(3));
        }
        // Gone with the process normally; a killed one may leave both behind.
        let _ = cmd::run(
            &["ip", "-n", &self.ns, "link", "del", &self.iface],
            None,
            SHORT,
        );
        let _ = std::fs::remove_file(self.uapi_socket());
    }
}
