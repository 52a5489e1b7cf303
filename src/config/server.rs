//! The server's configuration (`config/server.toml`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::{
    check_ifname, int_in_range, parse_toml, read_file, read_key_file, resolve, AddressPool,
    AddressPool6, ConfigError, Problems, STRING_SOURCE,
};
use crate::proto::constants::{MAX_MTU, MIN_MTU};
use crate::proto::keys::{PresharedKey, PublicKey, StaticSecret};
use crate::proto::suite::Suite;
use crate::proto::wire::PushConfig;

/// Default UDP port, WireGuard's.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// Default inner MTU: 1500 less the outer IPv6, UDP and transport headers, as WireGuard.
pub const DEFAULT_MTU: u16 = 1420;
/// Default TUN name; the kernel replaces `%d` by the first free number.
pub const DEFAULT_SERVER_TUN_NAME: &str = "ctr%d";
/// Most worker threads accepted.
pub const MAX_WORKERS: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    private_key_file: Option<String>,
    listen_port: Option<i64>,
    listen_addresses: Option<Vec<String>>,
    address: Option<String>,
    address6: Option<String>,
    mtu: Option<i64>,
    push_routes: Option<Vec<String>>,
    push_dns: Option<Vec<String>>,
    workers: Option<i64>,
    client_to_client: Option<bool>,
    nat: Option<String>,
    nat6: Option<String>,
    offloads: Option<bool>,
    fair_queue: Option<bool>,
    mss_clamp: Option<bool>,
    tun_name: Option<String>,
    control_socket: Option<String>,
    metrics_listen: Option<String>,
    metrics_per_peer: Option<bool>,
    uapi: Option<bool>,
    latency_log_dir: Option<String>,
    latency_log_interval: Option<i64>,
    latency_log_keep: Option<i64>,
    user: Option<String>,
    public_endpoint: Option<String>,
    registry: Option<super::registry::RawRegistry>,
    #[serde(default)]
    peer: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    public_key: Option<String>,
    preshared_key_file: Option<String>,
    push_routes: Option<Vec<String>>,
    push_dns: Option<Vec<String>>,
    address: Option<String>,
    address6: Option<String>,
    allowed_ips: Option<Vec<String>>,
    protocol: Option<String>,
}

/// One `[[peer]]`, resolved.
#[derive(Debug)]
pub struct PeerSection {
    /// The client's static public key.
    pub public_key: PublicKey,
    /// The pre-shared key, when `preshared_key_file` is set.
    pub preshared_key: Option<PresharedKey>,
    /// Where the pre-shared key was read from (absolute or relative to the working directory).
    pub preshared_key_file: Option<PathBuf>,
    /// What this peer is pushed: the top-level `push_routes` and `push_dns`, then its own.
    pub push: PushConfig,
    /// The client's virtual IPv4 address: fixed in the file, or assigned from the pool.
    pub address: Ipv4Addr,
    /// Whether `address` was fixed in the file.
    pub fixed_address: bool,
    /// The client's virtual IPv6 address, when the server has `address6`.
    pub address6: Option<Ipv6Addr>,
    /// Whether `address6` was fixed in the file.
    pub fixed_address6: bool,
    /// Networks behind the client (`allowed_ips`), normalized, in file order: routed to it
    /// and accepted as sources from it besides its addresses.
    pub allowed_ips: Vec<IpNet>,
    /// The protocol the peer speaks (`protocol`, default `native`).
    pub protocol: Suite,
}

/// The server's configuration, resolved and validated.
#[derive(Debug)]
pub struct ServerConfig {
    /// The server's static private key, read from `private_key_file`.
    pub private_key: StaticSecret,
    /// Where the private key was read from.
    pub private_key_file: PathBuf,
    /// The server's public key (derived from `private_key`).
    pub public_key: PublicKey,
    /// UDP port.
    pub listen_port: u16,
    /// Underlay addresses to bind (at least one).
    pub listen_addresses: Vec<IpAddr>,
    /// The server's virtual IPv4 address and the client subnet.
    pub address: Ipv4Net,
    /// The server's virtual IPv6 address and the client subnet, if any.
    pub address6: Option<Ipv6Net>,
    /// Inner MTU, within `MIN_MTU..=MAX_MTU`.
    pub mtu: u16,
    /// What every peer is pushed (top-level `push_routes` and `push_dns`); a peer's own come
    /// after these ([`PeerSection::push`]).
    pub push: PushConfig,
    /// Worker threads, `1..=MAX_WORKERS`.
    pub workers: usize,
    /// Whether `workers` was in the file; otherwise it is the number of cores at loading.
    pub workers_from_file: bool,
    /// Whether clients may reach each other through the server.
    pub client_to_client: bool,
    /// Egress interface to masquerade the IPv4 client subnet behind, if any.
    pub nat: Option<String>,
    /// Egress interface to masquerade the IPv6 client subnet behind (NAT66), if any; without
    /// it, IPv6 from clients is routed with their own addresses.
    pub nat6: Option<String>,
    /// Whether TUN/UDP offloads may be used (false is the kill switch).
    pub offloads: bool,
    /// Whether TUN reads go through the per-flow fair queue with CoDel before they are sealed
    /// (`tunnel::egress_queue`); off, they are sealed in arrival order (the kernel's TUN ring
    /// is the only queue). Default off: see docs/benchmarks.md.
    pub fair_queue: bool,
    /// Whether the MSS option of TCP SYNs crossing the tunnel is lowered to fit the MTU.
    pub mss_clamp: bool,
    /// TUN interface name (may hold one `%d`).
    pub tun_name: String,
    /// The operator's control socket; `None`: `/run/concentrator/<interface>.sock`.
    pub control_socket: Option<PathBuf>,
    /// Where the Prometheus metrics are served (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether the metrics include one series per peer.
    pub metrics_per_peer: bool,
    /// Serve WireGuard's userspace API on `/var/run/wireguard/<interface>.sock` (`wg show`,
    /// `wg set`); off by default (see config/server.toml).
    pub uapi: bool,
    /// Where HdrHistogram interval logs of the latencies go, if anywhere.
    pub latency_log_dir: Option<PathBuf>,
    /// Seconds covered by one latency log file.
    pub latency_log_interval: u64,
    /// How many latency log files to keep.
    pub latency_log_keep: usize,
    /// The user to run as after setup (keeping CAP_NET_ADMIN), if any.
    pub user: Option<String>,
    /// Where clients reach the server, `host:port` (`public_endpoint`): the `Endpoint` of the
    /// client configs `concentrator peer config` prints. Not used to listen.
    pub public_endpoint: Option<String>,
    /// The peers, in file order, each with its address assigned.
    pub peers: Vec<PeerSection>,
    /// The IPv4 pool with the server's and every peer's address taken, for live changes.
    pub pool: AddressPool,
    /// The IPv6 pool, when `address6` is set.
    pub pool6: Option<AddressPool6>,
    /// The fleet registry (`[registry]`): peers come from etcd, not from the file.
    pub registry: Option<super::RegistryConfig>,
}

impl ServerConfig {
    /// Loads and validates `path`. Relative key paths are relative to the file's directory.
    /// Returns the config and its warnings, or every problem found.
    pub fn load(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let (text, dir) = read_file(path)?;
        Self::parse(&text, &dir, path, false)
    }

    /// Loads `path` for `concentrator registry import`: like [`ServerConfig::load`], but
    /// `[[peer]]` entries are accepted beside a `[registry]` table (they are what is moved).
    pub fn load_for_import(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let (text, dir) = read_file(path)?;
        Self::parse(&text, &dir, path, true)
    }

    /// Parses and validates `text`; relative key paths are resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        Self::parse(text, base_dir, Path::new(STRING_SOURCE), false)
    }

    fn parse(
        text: &str,
        base_dir: &Path,
        file: &Path,
        importing: bool,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut raw: RawServer = parse_toml(text, file)?;
        let mut problems = Problems::default();
        let mut warnings = Vec::new();
        if raw.registry.is_some() && !raw.peer.is_empty() && !importing {
            problems.push(
                "peer",
                format!(
                    "{} [[peer]] entries beside [registry]: with a registry, the peers live in \
                     etcd; move them there once with `concentrator registry import {}`, then \
                     delete them from this file",
                    raw.peer.len(),
                    file.display()
                ),
            );
            raw.peer.clear();
        }
        match validate(raw, base_dir, &mut problems, &mut warnings) {
            Some(cfg) if problems.is_empty() => Ok((cfg, warnings)),
            _ => Err(problems.into_error(file)),
        }
    }

    /// The peer with this public key.
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerSection> {
        self.peers.iter().find(|p| p.public_key == *key)
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_WORKERS)
}

fn validate(
    mut raw: RawServer,
    base_dir: &Path,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<ServerConfig> {
    let ops = operations(&raw, base_dir, problems, warnings);
    let registry = raw.registry.take();
    let (private_key, private_key_file) = match &raw.private_key_file {
        None => {
            problems.push(
                "private_key_file",
                "missing; add `private_key_file = \"/etc/concentrator/server.key\"`, a file \
                 holding the server's base64 X25519 private key",
            );
            (None, PathBuf::new())
        }
        Some(p) => {
            let path = resolve(base_dir, p);
            let key = read_key_file(
                &path,
                "private_key_file",
                "X25519 private key (`concentrator genkey` or `wg genkey`)",
                StaticSecret::from_base64,
                problems,
                warnings,
            );
            (key, path)
        }
    };

    let listen_port = int_in_range(
        raw.listen_port,
        i64::from(DEFAULT_LISTEN_PORT),
        1..=65535,
        "listen_port",
        "0 is not a usable port; WireGuard's default is 51820",
        problems,
    ) as u16;

    let listen_addresses = listen_addresses(raw.listen_addresses, problems);
    let address = server_address(raw.address.as_deref(), problems);
    let address6 = raw
        .address6
        .as_deref()
        .and_then(|a| server_address6(a, problems));

    let mtu = int_in_range(
        raw.mtu,
        i64::from(DEFAULT_MTU),
        i64::from(MIN_MTU)..=i64::from(MAX_MTU),
        "mtu",
        "1420 suits a 1500-byte underlay",
        problems,
    ) as u16;
    let push = super::push::parse(
        raw.push_routes.as_deref(),
        raw.push_dns.as_deref(),
        "",
        problems,
        warnings,
    );
    super::push::warn_without_ipv6(&push, "", raw.address6.is_some(), warnings);
    let workers = int_in_range(
        raw.workers,
        default_workers() as i64,
        1..=MAX_WORKERS as i64,
        "workers",
        "leave it out to use one per core",
        problems,
    ) as usize;

    if let Some(nat) = &raw.nat {
        check_ifname(nat, false, "nat", problems);
    }
    if let Some(nat6) = &raw.nat6 {
        check_ifname(nat6, false, "nat6", problems);
        if raw.address6.is_none() {
            problems.push(
                "nat6",
                "masquerades the IPv6 client subnet, but the server has none; add \
                 `address6 = \"fd66::1/64\"` or remove nat6",
            );
        }
    }
    let tun_name = raw
        .tun_name
        .unwrap_or_else(|| DEFAULT_SERVER_TUN_NAME.to_string());
    check_ifname(&tun_name, true, "tun_name", problems);

    let registry = registry
        .and_then(|r| super::registry::validate(r, base_dir, listen_port, problems, warnings));
    let server_key = private_key.as_ref().map(StaticSecret::public_key);
    let peers = peers(
        raw.peer, base_dir, server_key, address, address6, problems, warnings,
    );

    let address = address?;
    let (pool, pool6, mut peers) = assign(address, address6, peers, problems);
    for (i, p) in peers.iter_mut().flatten().enumerate() {
        let prefix = format!("peer[{i}].");
        super::push::warn_without_ipv6(&p.push, &prefix, address6.is_some(), warnings);
        p.push = super::push::for_peer(&push, &p.push, &prefix, problems, warnings);
    }
    Some(ServerConfig {
        private_key: private_key?,
        private_key_file,
        public_key: server_key?,
        listen_port,
        listen_addresses,
        address,
        address6,
        mtu,
        push,
        workers,
        workers_from_file: raw.workers.is_some(),
        client_to_client: raw.client_to_client.unwrap_or(false),
        nat: raw.nat,
        nat6: raw.nat6,
        offloads: raw.offloads.unwrap_or(true),
        fair_queue: raw.fair_queue.unwrap_or(false),
        mss_clamp: raw.mss_clamp.unwrap_or(false),
        tun_name,
        control_socket: ops.control_socket,
        metrics_listen: ops.metrics_listen,
        metrics_per_peer: ops.metrics_per_peer,
        uapi: ops.uapi,
        latency_log_dir: ops.latency_log_dir,
        latency_log_interval: ops.latency_log_interval,
        latency_log_keep: ops.latency_log_keep,
        user: ops.user,
        public_endpoint: raw
            .public_endpoint
            .as_deref()
            .and_then(|e| match public_endpoint(e) {
                Ok(e) => Some(e),
                Err(why) => {
                    problems.push("public_endpoint", why);
                    None
                }
            }),
        peers: peers?,
        pool,
        pool6,
        registry,
    })
}

/// Checks `public_endpoint`: a DNS name, an IPv4 address or a bracketed IPv6 address, then
/// `:port`; returns it trimmed, or why not.
pub fn public_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let example = "write it as clients reach the server, e.g. \"vpn.example.com:51820\", \
                   \"203.0.113.7:51820\" or \"[2001:db8::7]:51820\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port; {example}"));
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(format!(
                "{text:?}: {port:?} is not a port (1-65535); {example}"
            ))
        }
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<Ipv6Addr>().is_ok())
    } else if host.parse::<Ipv4Addr>().is_ok() {
        true
    } else {
        // A DNS name (RFC 1123 labels); a bare IPv6 address lands here and is refused.
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            // All digits and dots would be a mistyped IPv4 address, not a name.
            && !host.chars().all(|c| c.is_ascii_digit() || c == '.')
    };
    if !host_ok {
        return Err(format!(
            "{text:?}: {host:?} is not a host name, IPv4 address or [IPv6] address; {example}"
        ));
    }
    Ok(text.to_string())
}

/// The operations fields: control socket, metrics, latency logs, user.
struct Operations {
    control_socket: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    metrics_per_peer: bool,
    uapi: bool,
    latency_log_dir: Option<PathBuf>,
    latency_log_interval: u64,
    latency_log_keep: usize,
    user: Option<String>,
}

/// Default seconds per latency log file.
pub const DEFAULT_LATENCY_LOG_INTERVAL: u64 = 10;
/// Default number of latency log files kept (an hour at the default interval).
pub const DEFAULT_LATENCY_LOG_KEEP: usize = 360;

fn operations(
    raw: &RawServer,
    base_dir: &Path,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Operations {
    let control_socket = raw.control_socket.as_deref().and_then(|p| {
        if p.trim().is_empty() {
            problems.push(
                "control_socket",
                "is empty; give a path such as \"/run/concentrator/ctr0.sock\", or leave the \
                 field out for /run/concentrator/<interface>.sock",
            );
            None
        } else {
            Some(resolve(base_dir, p))
        }
    });
    let metrics_listen =
        raw.metrics_listen
            .as_deref()
            .and_then(|a| match a.trim().parse::<SocketAddr>() {
                Ok(addr) => {
                    if !addr.ip().is_loopback() {
                        warnings.push(format!(
                            "metrics_listen: {addr} is not a loopback address, so anyone who can \
                         reach it can read the metrics (peer keys and endpoints with \
                         metrics_per_peer); prefer \"127.0.0.1:9586\" behind a proxy or firewall"
                        ));
                    }
                    Some(addr)
                }
                Err(_) => {
                    problems.push(
                        "metrics_listen",
                        format!(
                            "{a:?} is not an address and port; write e.g. \"127.0.0.1:9586\" or \
                         \"[::1]:9586\""
                        ),
                    );
                    None
                }
            });
    let latency_log_dir = raw.latency_log_dir.as_deref().map(|p| resolve(base_dir, p));
    let latency_log_interval = int_in_range(
        raw.latency_log_interval,
        DEFAULT_LATENCY_LOG_INTERVAL as i64,
        1..=86_400,
        "latency_log_interval",
        "seconds per latency log file; 10 is the default",
        problems,
    ) as u64;
    let latency_log_keep = int_in_range(
        raw.latency_log_keep,
        DEFAULT_LATENCY_LOG_KEEP as i64,
        1..=1_000_000,
        "latency_log_keep",
        "how many latency log files to keep; 360 is an hour at 10 s",
        problems,
    ) as usize;
    let user = raw.user.as_deref().and_then(|u| {
        let ok = !u.is_empty()
            && u.len() <= 32
            && u
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Some(u.to_string())
        } else {
            problems.push(
                "user",
                format!("{u:?} is not a user name; write e.g. \"concentrator\" (create it with `useradd --system concentrator`)"),
            );
            None
        }
    });
    Operations {
        control_socket,
        metrics_listen,
        metrics_per_peer: raw.metrics_per_peer.unwrap_or(false),
        uapi: raw.uapi.unwrap_or(false),
        latency_log_dir,
        latency_log_interval,
        latency_log_keep,
        user,
    }
}

fn listen_addresses(raw: Option<Vec<String>>, problems: &mut Problems) -> Vec<IpAddr> {
    let Some(raw) = raw else {
        return vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ];
    };
    if raw.is_empty() {
        problems.push(
            "listen_addresses",
            "is empty, so the server could not receive anything; list at least one address, \
             e.g. [\"0.0.0.0\", \"::\"], or leave the field out for both",
        );
    }
    let mut out = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let field = format!("listen_addresses[{i}]");
        match a.trim().parse::<IpAddr>() {
            Ok(ip) if out.contains(&ip) => {
                problems.push(field, format!("{ip} is listed twice; remove one"))
            }
            Ok(ip) => out.push(ip),
            Err(_) => problems.push(
                field,
                format!("{a:?} is not an IP address; write e.g. \"0.0.0.0\", \"::\" or \"192.0.2.1\" (no port: that is listen_port)"),
            ),
        }
    }
    out
}

fn server_address(raw: Option<&str>, problems: &mut Problems) -> Option<Ipv4Net> {
    let Some(raw) = raw else {
        problems.push(
            "address",
            "missing; add the server's virtual address with the client subnet's prefix, \
             e.g. `address = \"10.66.0.1/16\"`",
        );
        return None;
    };
    let net: Ipv4Net = match raw.trim().parse() {
        Ok(n) => n,
        Err(_) => {
            let hint = if raw.trim().parse::<Ipv4Addr>().is_ok() {
                format!(
                    "the prefix length is missing; write e.g. \"{}/16\"",
                    raw.trim()
                )
            } else {
                "write an IPv4 address with the subnet's prefix, e.g. \"10.66.0.1/16\" \
                 (IPv6 goes in address6)"
                    .to_string()
            };
            problems.push("address", format!("{raw:?} is not valid; {hint}"));
            return None;
        }
    };
    if net.prefix_len() > 30 {
        problems.push(
            "address",
            format!(
                "the /{} subnet leaves no room for clients; use a prefix of /30 or shorter, \
                 e.g. \"{}/16\"",
                net.prefix_len(),
                net.addr()
            ),
        );
        return None;
    }
    if net.addr() == net.network() || net.addr() == net.broadcast() {
        problems.push(
            "address",
            format!(
                "{} is the network or broadcast address of {}; give the server a host \
                 address, e.g. \"{}/{}\"",
                net.addr(),
                net.trunc(),
                Ipv4Addr::from(u32::from(net.network()) + 1),
                net.prefix_len()
            ),
        );
        return None;
    }
    Some(net)
}

fn server_address6(raw: &str, problems: &mut Problems) -> Option<Ipv6Net> {
    let net: Ipv6Net = match raw.trim().parse() {
        Ok(n) => n,
        Err(_) => {
            problems.push(
                "address6",
                format!("{raw:?} is not valid; write an IPv6 address with the subnet's prefix, e.g. \"fd66::1/64\""),
            );
            return None;
        }
    };
    if net.prefix_len() > 126 {
        problems.push(
            "address6",
            format!(
                "the /{} subnet leaves no room for clients; use /64 (or at most /126)",
                net.prefix_len()
            ),
        );
        return None;
    }
    if net.addr() == net.network() || net.addr() == net.broadcast() {
        problems.push(
            "address6",
            format!(
                "{} is the first or last address of {}; give the server another, e.g. \"{}/{}\"",
                net.addr(),
                net.trunc(),
                Ipv6Addr::from(u128::from(net.network()) + 1),
                net.prefix_len()
            ),
        );
        return None;
    }
    Some(net)
}

/// A peer parsed from the file, before address assignment. `None` key: the key was bad.
struct Parsed {
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    preshared_key_file: Option<PathBuf>,
    /// Its own push settings (the top-level ones are added after assignment).
    push: PushConfig,
    address: Option<Ipv4Addr>,
    address6: Option<Ipv6Addr>,
    /// Each valid network of `allowed_ips`, with its index in the file's list.
    allowed_ips: Vec<(usize, IpNet)>,
    protocol: Suite,
}

fn peers(
    raw: Vec<RawPeer>,
    base_dir: &Path,
    server_key: Option<PublicKey>,
    net: Option<Ipv4Net>,
    net6: Option<Ipv6Net>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Vec<Parsed> {
    let mut keys: HashMap<PublicKey, usize> = HashMap::new();
    let mut addrs: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut addrs6: HashMap<Ipv6Addr, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let f = |name: &str| format!("peer[{i}].{name}");
        let public_key = match p.public_key.as_deref() {
            None => {
                problems.push(
                    f("public_key"),
                    "missing; add the client's base64 public key (`concentrator pubkey < client.key` or `wg pubkey`)",
                );
                None
            }
            Some(text) => {
                match PublicKey::from_base64(text) {
                    Err(e) => {
                        problems.push(f("public_key"), e.to_string());
                        None
                    }
                    Ok(k) if *k.as_bytes() == [0; 32] => {
                        problems.push(
                            f("public_key"),
                            "is all zeros, not a real key; paste the client's public key",
                        );
                        None
                    }
                    Ok(k) if Some(k) == server_key => {
                        problems.push(
                            f("public_key"),
                            "is the server's own public key; use the client's public key",
                        );
                        None
                    }
                    Ok(k) => match keys.get(&k) {
                        Some(first) => {
                            problems.push(
                            f("public_key"),
                            format!("same key as peer[{first}]; remove one of the two [[peer]] blocks"),
                        );
                            None
                        }
                        None => {
                            keys.insert(k, i);
                            Some(k)
                        }
                    },
                }
            }
        };
        let (preshared_key, preshared_key_file) = match &p.preshared_key_file {
            None => (None, None),
            Some(path) => {
                let path = resolve(base_dir, path);
                let key = read_key_file(
                    &path,
                    &f("preshared_key_file"),
                    "pre-shared key (`concentrator genkey` or `wg genpsk`)",
                    PresharedKey::from_base64,
                    problems,
                    warnings,
                );
                (key, Some(path))
            }
        };
        let push = super::push::parse(
            p.push_routes.as_deref(),
            p.push_dns.as_deref(),
            &f(""),
            problems,
            warnings,
        );
        let address = p
            .address
            .as_deref()
            .and_then(|a| peer_address(a, net, &f("address"), &mut addrs, i, problems));
        let address6 = p
            .address6
            .as_deref()
            .and_then(|a| peer_address6(a, net6, &f("address6"), &mut addrs6, i, problems));
        let allowed_ips = peer_allowed_ips(
            p.allowed_ips.as_deref().unwrap_or_default(),
            &f("allowed_ips"),
            net,
            net6,
            problems,
            warnings,
        );
        let protocol = match p.protocol.as_deref() {
            None => Suite::Native,
            Some(name) => Suite::from_name(name).unwrap_or_else(|| {
                problems.push(
                    f("protocol"),
                    format!(
                        "unknown protocol {name:?}: use \"native\" (the default) or \"wireguard\""
                    ),
                );
                Suite::Native
            }),
        };
        out.push(Parsed {
            public_key,
            preshared_key,
            preshared_key_file,
            push,
            address,
            address6,
            allowed_ips,
            protocol,
        });
    }
    one_holder_per_prefix(&out, problems);
    out
}

/// Parses one peer's `allowed_ips` (`field` is `peer[i].allowed_ips`): networks, or single
/// addresses as host prefixes, normalized, each checked with [`allowed_ip_problem`]; each with
/// its index in the list.
fn peer_allowed_ips(
    raw: &[String],
    field: &str,
    net: Option<Ipv4Net>,
    net6: Option<Ipv6Net>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Vec<(usize, IpNet)> {
    let mut out: Vec<(usize, IpNet)> = Vec::with_capacity(raw.len());
    for (k, text) in raw.iter().enumerate() {
        let field = format!("{field}[{k}]");
        let text = text.trim();
        let Ok(prefix) = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        else {
            problems.push(
                field,
                format!("{text:?} is not a network; write e.g. \"10.99.0.0/24\" or \"fd99::/48\""),
            );
            continue;
        };
        let normal = prefix.trunc();
        if normal != prefix {
            warnings.push(format!(
                "{field}: {prefix} has host bits set; it is taken as {normal}"
            ));
        }
        if out.iter().any(|(_, p)| *p == normal) {
            warnings.push(format!("{field}: {normal} is listed twice; remove one"));
            continue;
        }
        // The server's address is wrong: reported there.
        let Some(net) = net else { continue };
        match allowed_ip_problem(normal, net, net6) {
            Some(why) => problems.push(field, why),
            None => out.push((k, normal)),
        }
    }
    out
}

/// Every prefix in at most one peer's `allowed_ips`: a second holder is a problem on its
/// field, naming both peers (by index and public key).
fn one_holder_per_prefix(peers: &[Parsed], problems: &mut Problems) {
    let name = |i: usize| match peers[i].public_key {
        Some(k) => format!("peer[{i}] (public key {k})"),
        None => format!("peer[{i}]"),
    };
    let mut holders: HashMap<IpNet, usize> = HashMap::new();
    for (j, p) in peers.iter().enumerate() {
        for (k, prefix) in &p.allowed_ips {
            match holders.get(prefix) {
                Some(&i) => {
                    problems.push(
                        format!("peer[{j}].allowed_ips[{k}]"),
                        format!(
                            "{prefix} is also in the allowed_ips of {} and of {}: a network \
                             can be routed to one peer only; remove it from one of them (a \
                             longer prefix inside it may go to another peer)",
                            name(i),
                            name(j)
                        ),
                    );
                }
                None => {
                    holders.insert(*prefix, j);
                }
            }
        }
    }
}

/// Ranges no peer may hold, whatever the server's subnets.
const NEVER_ROUTED: [(&str, &str); 6] = [
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// Why `prefix` (normalized) cannot be in a peer's `allowed_ips` on a server whose client
/// subnets are those of `address` and `address6`, if it cannot: a default route, a network that
/// overlaps a client subnet (contains it or lies inside it: the server hands out addresses
/// from it and routes it itself, and a peer holding part of it could send from addresses that
/// belong, or will belong, to other clients), IPv6 on a server without `address6`, or a
/// loopback, link-local or multicast range. Shared by the file's checks and `peer add`.
pub fn allowed_ip_problem(
    prefix: IpNet,
    address: Ipv4Net,
    address6: Option<Ipv6Net>,
) -> Option<String> {
    if prefix.prefix_len() == 0 {
        return Some(format!(
            "{prefix} is a default route: every packet the host sends would go into the tunnel, \
             the server's own traffic included; list the networks behind the peer instead"
        ));
    }
    let subnet = match prefix {
        IpNet::V4(_) => IpNet::V4(address.trunc()),
        IpNet::V6(_) => match address6 {
            Some(a6) => IpNet::V6(a6.trunc()),
            None => {
                return Some(format!(
                    "{prefix} is IPv6, but the server has no IPv6 in the tunnel; add \
                     `address6 = \"fd66::1/64\"` at the top of the file, or remove it"
                ))
            }
        },
    };
    let overlaps = |other: &IpNet| prefix.contains(other) || other.contains(&prefix);
    if overlaps(&subnet) {
        return Some(format!(
            "{prefix} overlaps the client subnet {subnet}, which the server hands out and routes \
             itself; give the network behind the peer a prefix outside {subnet}"
        ));
    }
    NEVER_ROUTED.iter().find_map(|(range, what)| {
        let range: IpNet = range.parse().ok()?;
        overlaps(&range).then(|| {
            format!("{prefix} overlaps {range} ({what} addresses), which is never routed to a peer")
        })
    })
}

/// Parses `a` (optionally with `/32`), checks it against the subnet and earlier peers.
fn peer_address(
    a: &str,
    net: Option<Ipv4Net>,
    field: &str,
    seen: &mut HashMap<Ipv4Addr, usize>,
    i: usize,
    problems: &mut Problems,
) -> Option<Ipv4Addr> {
    let a = a.trim();
    let ip = match a.strip_suffix("/32").unwrap_or(a).parse::<Ipv4Addr>() {
        Ok(ip) => ip,
        Err(_) => {
            problems.push(field, format!("{a:?} is not an IPv4 address; write one address of the subnet, e.g. \"10.66.0.7\", or leave the field out to assign one"));
            return None;
        }
    };
    let net = net?; // The server's address is wrong: reported there.
    let sub = net.trunc();
    if !sub.contains(&ip) {
        problems.push(field, format!("{ip} is outside the client subnet {sub}; pick an address inside it or leave the field out"));
    } else if ip == sub.network() || ip == sub.broadcast() {
        problems.push(field, format!("{ip} is the network or broadcast address of {sub}; pick a host address or leave the field out"));
    } else if ip == net.addr() {
        problems.push(
            field,
            format!("{ip} is the server's own address; pick another or leave the field out"),
        );
    } else if let Some(first) = seen.get(&ip) {
        problems.push(
            field,
            format!("{ip} is already peer[{first}]'s address; give each peer its own"),
        );
    } else {
        seen.insert(ip, i);
        return Some(ip);
    }
    None
}

fn peer_address6(
    a: &str,
    net: Option<Ipv6Net>,
    field: &str,
    seen: &mut HashMap<Ipv6Addr, usize>,
    i: usize,
    problems: &mut Problems,
) -> Option<Ipv6Addr> {
    let a = a.trim();
    let ip = match a.strip_suffix("/128").unwrap_or(a).parse::<Ipv6Addr>() {
        Ok(ip) => ip,
        Err(_) => {
            problems.push(field, format!("{a:?} is not an IPv6 address; write one address of the subnet, e.g. \"fd66::7\", or leave the field out"));
            return None;
        }
    };
    let Some(net) = net else {
        problems.push(field, "the server has no IPv6 subnet; add `address6 = \"fd66::1/64\"` at the top of the file, or remove this field");
        return None;
    };
    let sub = net.trunc();
    if !sub.contains(&ip) {
        problems.push(field, format!("{ip} is outside the client subnet {sub}; pick an address inside it or leave the field out"));
    } else if ip == sub.network() || ip == sub.broadcast() {
        problems.push(
            field,
            format!(
                "{ip} is the first or last address of {sub}; pick another or leave the field out"
            ),
        );
    } else if ip == net.addr() {
        problems.push(
            field,
            format!("{ip} is the server's own address; pick another or leave the field out"),
        );
    } else if let Some(first) = seen.get(&ip) {
        problems.push(
            field,
            format!("{ip} is already peer[{first}]'s address; give each peer its own"),
        );
    } else {
        seen.insert(ip, i);
        return Some(ip);
    }
    None
}

/// Assigns addresses: fixed ones first, then the others in public-key order, so that the same
/// set of peers always gets the same addresses whatever their order in the file. `None` peers
/// when any peer could not be completed (its problem is already reported).
fn assign(
    net: Ipv4Net,
    net6: Option<Ipv6Net>,
    parsed: Vec<Parsed>,
    problems: &mut Problems,
) -> (AddressPool, Option<AddressPool6>, Option<Vec<PeerSection>>) {
    let mut pool = AddressPool::new(net);
    let mut pool6 = net6.map(AddressPool6::new);
    for p in &parsed {
        if let Some(a) = p.address {
            pool.reserve(a);
        }
        if let (Some(a), Some(pool6)) = (p.address6, pool6.as_mut()) {
            pool6.reserve(a);
        }
    }
    let mut order: Vec<(usize, PublicKey)> = parsed
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.public_key.map(|k| (i, k)))
        .collect();
    order.sort_by_key(|&(_, k)| k);

    let mut v4: Vec<Option<Ipv4Addr>> = parsed.iter().map(|p| p.address).collect();
    let mut v6: Vec<Option<Ipv6Addr>> = parsed.iter().map(|p| p.address6).collect();
    let mut full_reported = false;
    for (i, key) in order {
        if v4[i].is_none() {
            v4[i] = pool.allocate(key.as_bytes());
            if v4[i].is_none() && !full_reported {
                full_reported = true;
                problems.push(
                    format!("peer[{i}].address"),
                    format!(
                        "no free address left: the client subnet {} has {} host addresses, \
                         one is the server's, and there are {} peers; use a larger subnet in \
                         `address` (a shorter prefix, e.g. /16) or remove peers",
                        pool.network(),
                        pool.usable(),
                        parsed.len()
                    ),
                );
            }
        }
        if let Some(pool6) = pool6.as_mut() {
            if v6[i].is_none() {
                v6[i] = pool6.allocate(key.as_bytes());
            }
        }
    }

    let mut peers = Vec::with_capacity(parsed.len());
    for (i, p) in parsed.into_iter().enumerate() {
        let (Some(public_key), Some(address)) = (p.public_key, v4[i]) else {
            return (pool, pool6, None);
        };
        if p.preshared_key_file.is_some() && p.preshared_key.is_none() {
            return (pool, pool6, None);
        }
        peers.push(PeerSection {
            public_key,
            preshared_key: p.preshared_key,
            preshared_key_file: p.preshared_key_file,
            push: p.push,
            address,
            fixed_address: p.address.is_some(),
            address6: v6[i],
            fixed_address6: p.address6.is_some(),
            allowed_ips: p.allowed_ips.into_iter().map(|(_, p)| p).collect(),
            protocol: p.protocol,
        });
    }
    (pool, pool6, Some(peers))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{b64, key_file, set_mode, temp_dir};
    use super::*;
    use std::time::Duration;

    fn key(i: u8) -> [u8; 32] {
        let mut k = [i; 32];
        k[31] = 0x40;
        k
    }

    /// A valid config (server key in a temp dir) with `top` fields and then `peers`.
    fn cfg(top: &str, peers: &str) -> (String, PathBuf) {
        let dir = temp_dir("server");
        key_file(&dir, "server.key", &key(200));
        let text = format!(
            "private_key_file = \"server.key\"\naddress = \"10.66.0.1/24\"\n{top}\n{peers}"
        );
        (text, dir)
    }

    fn load(top: &str, peers: &str) -> Result<(ServerConfig, Vec<String>), ConfigError> {
        let (text, dir) = cfg(top, peers);
        ServerConfig::from_toml_str(&text, &dir)
    }

    fn peer(i: u8) -> String {
        format!("[[peer]]\npublic_key = \"{}\"\n", b64(&key(i)))
    }

    fn peer_at(i: u8, addr: &str) -> String {
        format!("{}address = \"{addr}\"\n", peer(i))
    }

    #[track_caller]
    fn fails_on(top: &str, peers: &str, field: &str) -> ConfigError {
        let err = load(top, peers).expect_err("must fail");
        assert!(err.has_field(field), "no problem for {field}: {err}");
        err
    }

    /// A `[registry]` table with a fleet key file in `dir`, and `extra` lines.
    fn registry(dir: &Path, extra: &str) -> String {
        key_file(dir, "fleet.key", &key(150));
        format!(
            "[registry]\netcd = [\"http://10.1.0.1:2379\", \"http://10.1.0.2:2379\"]\n\
             fleet = \"eu\"\nname = \"a\"\nfleet_key_file = \"fleet.key\"\n{extra}\n"
        )
    }

    fn load_registry(extra: &str, peers: &str) -> Result<ServerConfig, ConfigError> {
        let (text, dir) = cfg("", "");
        let text = format!("{text}{}{peers}", registry(&dir, extra));
        ServerConfig::from_toml_str(&text, &dir).map(|(c, _)| c)
    }

    #[test]
    fn registry_table_is_validated() {
        let c = load_registry("stale_after = 30", "").unwrap();
        let r = c.registry.expect("registry");
        assert_eq!(r.etcd.len(), 2);
        assert_eq!((r.fleet.as_str(), r.name.as_str()), ("eu", "a"));
        assert_eq!(r.endpoint, "a:51820");
        assert_eq!(*r.fleet_key, key(150));
        assert_eq!(r.stale_after, Some(Duration::from_secs(30)));
        assert!(
            !format!("{r:?}").contains("fleet_key"),
            "the key stays out of Debug"
        );
        // Off by default, and 0 means off.
        assert_eq!(
            load_registry("", "").unwrap().registry.unwrap().stale_after,
            None
        );
        assert_eq!(
            load_registry("stale_after = 0", "")
                .unwrap()
                .registry
                .unwrap()
                .stale_after,
            None
        );
        for (extra, field) in [
            ("stale_after = -1", "registry.stale_after"),
            ("user = \"root\"", "registry.user"),
            ("ca_file = \"missing.pem\"", "registry.ca_file"),
            ("cert_file = \"fleet.key\"", "registry.cert_file"),
        ] {
            let err = load_registry(extra, "").expect_err(extra);
            assert!(err.has_field(field), "{extra}: {err}");
        }
    }

    #[test]
    fn registry_needs_urls_a_fleet_and_a_fleet_key() {
        let (text, dir) = cfg("", "");
        let text = format!("{text}[registry]\netcd = [\"10.1.0.1:2379\"]\nfleet = \"a/b\"\n");
        let err = ServerConfig::from_toml_str(&text, &dir).expect_err("must fail");
        for field in [
            "registry.etcd[0]",
            "registry.fleet",
            "registry.fleet_key_file",
        ] {
            assert!(err.has_field(field), "no problem for {field}: {err}");
        }
        let (text, dir) = cfg("", "");
        let text = format!(
            "{text}{}",
            registry(&dir, "").replace("http://10.1.0.2", "https://10.1.0.2")
        );
        let err = ServerConfig::from_toml_str(&text, &dir).expect_err("mixed schemes");
        assert!(err.has_field("registry.etcd"), "{err}");
    }

    #[test]
    fn peers_beside_a_registry_are_refused_except_for_import() {
        let err = load_registry("", &peer(1)).expect_err("peers with a registry");
        assert!(err.has_field("peer"), "{err}");
        assert!(
            err.to_string().contains("concentrator registry import"),
            "{err}"
        );
        let (text, dir) = cfg("", "");
        let path = dir.join("server.toml");
        std::fs::write(&path, format!("{text}{}{}", registry(&dir, ""), peer(1))).unwrap();
        let (c, _) = ServerConfig::load_for_import(&path).unwrap();
        assert_eq!(c.peers.len(), 1);
        assert!(c.registry.is_some());
    }

    #[test]
    fn public_endpoint_is_a_host_and_port() {
        assert_eq!(load("", "").unwrap().0.public_endpoint, None);
        for good in [
            "vpn.example.com:51820",
            "203.0.113.7:51820",
            "[2001:db8::7]:443",
            "localhost:1",
        ] {
            let top = format!("public_endpoint = \"{good}\"");
            let (c, _) = load(&top, "").unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(c.public_endpoint.as_deref(), Some(good));
        }
        for bad in [
            "vpn.example.com",
            "vpn.example.com:0",
            "vpn.example.com:65536",
            ":51820",
            "2001:db8::7:51820",
            "[2001:db8::zz]:51820",
            "bad_name.example:51820",
            "-vpn.example.com:51820",
            "203.0.113:51820",
        ] {
            let top = format!("public_endpoint = \"{bad}\"");
            let err = fails_on(&top, "", "public_endpoint");
            assert!(err.to_string().contains("vpn.example.com:51820"), "{err}");
        }
    }

    #[test]
    fn protocol_per_peer_defaults_to_native_takes_wireguard_and_refuses_unknown_names() {
        let (c, _) = load("", &peer(1)).unwrap();
        assert_eq!(c.peers[0].protocol, Suite::Native);
        let peers = format!("{}{}protocol = \"native\"\n", peer(1), peer(2));
        assert_eq!(load("", &peers).unwrap().0.peers[1].protocol, Suite::Native);
        let peers = format!("{}{}protocol = \"wireguard\"\n", peer(1), peer(2));
        let (c, _) = load("", &peers).unwrap();
        assert_eq!(c.peers[0].protocol, Suite::Native);
        assert_eq!(c.peers[1].protocol, Suite::WireGuard);
        let peers = format!("{}protocol = \"wg\"\n", peer(1));
        let err = fails_on("", &peers, "peer[0].protocol");
        assert!(err.to_string().contains("\"wireguard\""), "{err}");
    }

    #[test]
    fn operations_fields() {
        let (c, w) = load("", &peer(1)).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert!(c.control_socket.is_none() && c.metrics_listen.is_none() && c.user.is_none());
        assert!(!c.metrics_per_peer && c.latency_log_dir.is_none());
        assert!(!c.uapi, "the UAPI is off unless asked for");
        assert_eq!(c.latency_log_interval, 10);
        let (c, w) = load(
            "control_socket = \"ctl.sock\"\nmetrics_listen = \"127.0.0.1:9586\"\n\
             metrics_per_peer = true\nuapi = true\nlatency_log_dir = \"lat\"\nlatency_log_interval = 5\n\
             latency_log_keep = 3\nuser = \"concentrator\"",
            &peer(1),
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert!(c.control_socket.unwrap().is_absolute());
        assert_eq!(c.metrics_listen.unwrap().port(), 9586);
        assert!(c.metrics_per_peer);
        assert!(c.uapi);
        assert!(c.latency_log_dir.unwrap().ends_with("lat"));
        assert_eq!((c.latency_log_interval, c.latency_log_keep), (5, 3));
        assert_eq!(c.user.as_deref(), Some("concentrator"));
        let (_, w) = load("metrics_listen = \"0.0.0.0:9586\"", &peer(1)).unwrap();
        assert!(w.iter().any(|w| w.starts_with("metrics_listen")), "{w:?}");
        fails_on("metrics_listen = \"9586\"", &peer(1), "metrics_listen");
        fails_on("latency_log_interval = 0", &peer(1), "latency_log_interval");
        fails_on("user = \"a b\"", &peer(1), "user");
        fails_on("control_socket = \"\"", &peer(1), "control_socket");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let (c, w) = load("", &peer(1)).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.listen_port, 51820);
        assert_eq!(c.listen_addresses.len(), 2);
        assert_eq!(c.mtu, 1420);
        assert!(c.workers >= 1);
        assert!(!c.client_to_client && c.offloads && !c.fair_queue);
        assert_eq!(c.tun_name, "ctr%d");
        assert!(c.private_key_file.is_absolute());
        assert_eq!(*c.private_key.to_bytes(), key(200));
        assert_eq!(c.peers[0].public_key.as_bytes(), &key(1));
        assert!(c.pool.is_taken(c.peers[0].address));
    }

    #[test]
    fn debug_hides_secrets() {
        let (text, dir) = cfg(
            "",
            &format!("{}preshared_key_file = \"peer.psk\"\n", peer(1)),
        );
        key_file(&dir, "peer.psk", &key(77));
        let (c, _) = ServerConfig::from_toml_str(&text, &dir).unwrap();
        assert_eq!(
            c.peers[0].preshared_key.as_ref().unwrap().as_bytes(),
            &key(77)
        );
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains(&b64(&key(200))) && !dbg.contains(&b64(&key(77))),
            "{dbg}"
        );
        assert!(
            !dbg.contains("200, 200") && !dbg.contains("77, 77"),
            "{dbg}"
        );
    }

    #[test]
    fn missing_required_fields() {
        let err = ServerConfig::from_toml_str("", Path::new("/tmp")).unwrap_err();
        assert!(
            err.has_field("private_key_file") && err.has_field("address"),
            "{err}"
        );
        let err = fails_on("", "[[peer]]\n", "peer[0].public_key");
        assert!(err.problems[0].message.contains("missing"));
    }

    #[test]
    fn private_key_file_missing_or_bad() {
        let err = ServerConfig::from_toml_str(
            "private_key_file = \"nope.key\"\naddress = \"10.66.0.1/24\"",
            &temp_dir("nokey"),
        )
        .unwrap_err();
        assert!(err.has_field("private_key_file"), "{err}");
        let dir = temp_dir("badkey");
        std::fs::write(dir.join("k"), "hello").unwrap();
        let err = ServerConfig::from_toml_str(
            "private_key_file = \"k\"\naddress = \"10.66.0.1/24\"",
            &dir,
        )
        .unwrap_err();
        assert!(err.has_field("private_key_file"), "{err}");
    }

    #[test]
    fn permission_warning() {
        let (text, dir) = cfg("", "");
        set_mode(&dir.join("server.key"), 0o644);
        let (_, w) = ServerConfig::from_toml_str(&text, &dir).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("private_key_file") && w[0].contains("chmod 600"),
            "{w:?}"
        );
    }

    #[test]
    fn bad_public_key() {
        fails_on("", "[[peer]]\npublic_key = \"abc\"\n", "peer[0].public_key");
        fails_on(
            "",
            &format!("{}[[peer]]\npublic_key = \"AAAA\"\n", peer(1)),
            "peer[1].public_key",
        );
        fails_on(
            "",
            &format!("[[peer]]\npublic_key = \"{}\"\n", b64(&[0; 32])),
            "peer[0].public_key",
        );
    }

    #[test]
    fn peer_with_server_key() {
        let own = StaticSecret::from_bytes(key(200)).public_key();
        let p = format!("[[peer]]\npublic_key = \"{own}\"\n");
        let err = fails_on("", &p, "peer[0].public_key");
        assert!(err.problems[0].message.contains("server's own"), "{err}");
        assert_eq!(load("", "").unwrap().0.public_key, own);
    }

    #[test]
    fn duplicate_public_key() {
        let err = fails_on(
            "",
            &format!("{}{}{}", peer(1), peer(2), peer(1)),
            "peer[2].public_key",
        );
        assert!(err.problems[0].message.contains("peer[0]"), "{err}");
    }

    #[test]
    fn bad_preshared_key_file() {
        fails_on(
            "",
            &format!("{}preshared_key_file = \"missing.psk\"\n", peer(1)),
            "peer[0].preshared_key_file",
        );
    }

    #[test]
    fn address_rules() {
        let (_, dir) = cfg("", "");
        let with = |addr: &str| {
            let text = format!("private_key_file = \"server.key\"\naddress = \"{addr}\"\n");
            ServerConfig::from_toml_str(&text, &dir).map(|_| ())
        };
        for bad in [
            "10.66.0.1/31",
            "10.66.0.1/32",
            "10.66.0.1",
            "10.66.0.0/24",
            "10.66.0.255/24",
            "fd00::1/64",
            "x",
        ] {
            let err = with(bad).expect_err(bad);
            assert!(err.has_field("address"), "{bad}: {err}");
        }
        with("10.66.0.1/30").unwrap();
        assert!(with("10.66.0.1").unwrap_err().problems[0]
            .message
            .contains("prefix length is missing"));
    }

    #[test]
    fn address6_rules() {
        fails_on("address6 = \"fd66::1/127\"", "", "address6");
        fails_on("address6 = \"fd66::/64\"", "", "address6");
        fails_on("address6 = \"10.0.0.1/24\"", "", "address6");
        let (c, _) = load("address6 = \"fd66::1/64\"", &peer(1)).unwrap();
        let a6 = c.peers[0].address6.unwrap();
        assert!(c.address6.unwrap().trunc().contains(&a6));
    }

    #[test]
    fn mtu_range() {
        fails_on("mtu = 1279", "", "mtu");
        fails_on("mtu = 9000", "", "mtu");
        assert_eq!(load("mtu = 1280", "").unwrap().0.mtu, 1280);
    }

    #[test]
    fn workers_range() {
        fails_on("workers = 0", "", "workers");
        fails_on("workers = 1025", "", "workers");
        assert_eq!(load("workers = 3", "").unwrap().0.workers, 3);
    }

    #[test]
    fn listen_port_nonzero() {
        fails_on("listen_port = 0", "", "listen_port");
        fails_on("listen_port = 65536", "", "listen_port");
    }

    #[test]
    fn listen_addresses_rules() {
        let err = fails_on("listen_addresses = []", "", "listen_addresses");
        assert!(err.problems[0].message.contains("empty"));
        fails_on(
            "listen_addresses = [\"0.0.0.0\", \"nope\"]",
            "",
            "listen_addresses[1]",
        );
        fails_on(
            "listen_addresses = [\"::\", \"::\"]",
            "",
            "listen_addresses[1]",
        );
        let (c, _) = load("listen_addresses = [\"127.0.0.1\"]", "").unwrap();
        assert_eq!(c.listen_addresses, vec![IpAddr::from([127, 0, 0, 1])]);
    }

    #[test]
    fn interface_names() {
        fails_on("tun_name = \"this-name-is-too-long\"", "", "tun_name");
        fails_on("nat = \"eth 0\"", "", "nat");
        assert_eq!(
            load("nat = \"eth0\"", "").unwrap().0.nat.as_deref(),
            Some("eth0")
        );
        fails_on("address6 = \"fd66::1/64\"\nnat6 = \"eth 0\"", "", "nat6");
        let c = load("address6 = \"fd66::1/64\"\nnat6 = \"eth1\"", "")
            .unwrap()
            .0;
        assert_eq!((c.nat, c.nat6.as_deref()), (None, Some("eth1")));
    }

    #[test]
    fn nat6_needs_address6() {
        let err = fails_on("nat6 = \"eth0\"", "", "nat6").to_string();
        assert!(err.contains("address6"), "{err}");
    }

    #[test]
    fn peer_fixed_address_rules() {
        fails_on("", &peer_at(1, "10.67.0.5"), "peer[0].address");
        fails_on("", &peer_at(1, "10.66.0.0"), "peer[0].address");
        fails_on("", &peer_at(1, "10.66.0.255"), "peer[0].address");
        fails_on("", &peer_at(1, "10.66.0.1"), "peer[0].address");
        fails_on("", &peer_at(1, "banana"), "peer[0].address");
        let err = fails_on(
            "",
            &format!("{}{}", peer_at(1, "10.66.0.9"), peer_at(2, "10.66.0.9")),
            "peer[1].address",
        );
        assert!(err.problems[0].message.contains("peer[0]"));
        let (c, _) = load("", &peer_at(1, "10.66.0.9/32")).unwrap();
        assert_eq!(c.peers[0].address, Ipv4Addr::new(10, 66, 0, 9));
        assert!(c.peers[0].fixed_address);
    }

    #[test]
    fn peer_address6_needs_server_address6() {
        let p = format!("{}address6 = \"fd66::7\"\n", peer(1));
        fails_on("", &p, "peer[0].address6");
        fails_on(
            "address6 = \"fd66::1/64\"",
            &format!("{}address6 = \"fd67::7\"\n", peer(1)),
            "peer[0].address6",
        );
        let (c, _) = load("address6 = \"fd66::1/64\"", &p).unwrap();
        assert_eq!(c.peers[0].address6, Some("fd66::7".parse().unwrap()));
    }

    fn peer_with_networks(i: u8, networks: &str) -> String {
        format!("{}allowed_ips = [{networks}]\n", peer(i))
    }

    #[test]
    fn allowed_ips_are_parsed_and_normalized() {
        let p = peer_with_networks(1, r#""10.99.0.0/24", "fd99::/48", "192.0.2.7""#);
        let (c, w) = load("address6 = \"fd66::1/64\"", &p).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let nets: Vec<IpNet> = ["10.99.0.0/24", "fd99::/48", "192.0.2.7/32"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(c.peers[0].allowed_ips, nets);
        let p = peer_with_networks(1, r#""10.99.0.7/24", "10.99.0.0/24""#);
        let (c, w) = load("", &p).unwrap();
        assert_eq!(
            c.peers[0].allowed_ips,
            vec!["10.99.0.0/24".parse().unwrap()]
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("host bits") && w[1].contains("twice"),
            "{w:?}"
        );
        assert!(load("", &peer(1)).unwrap().0.peers[0]
            .allowed_ips
            .is_empty());
    }

    #[test]
    fn allowed_ips_that_no_peer_may_hold_are_refused() {
        let six = "address6 = \"fd66::1/64\"";
        for (top, bad, says) in [
            ("", "banana", "not a network"),
            ("", "0.0.0.0/0", "default route"),
            (six, "::/0", "default route"),
            // The client subnet 10.66.0.0/24: inside it, equal, containing it.
            ("", "10.66.0.128/25", "10.66.0.0/24"),
            ("", "10.66.0.5", "10.66.0.0/24"),
            ("", "10.66.0.0/24", "10.66.0.0/24"),
            ("", "10.0.0.0/8", "10.66.0.0/24"),
            ("", "fd99::/48", "address6"),
            (six, "fd66::/80", "fd66::/64"),
            ("", "127.0.0.0/16", "loopback"),
            ("", "169.254.1.0/24", "link-local"),
            ("", "224.0.0.0/24", "multicast"),
            (six, "fe80::/64", "link-local"),
        ] {
            let err = fails_on(
                top,
                &peer_with_networks(1, &format!("\"{bad}\"")),
                "peer[0].allowed_ips[0]",
            );
            assert!(err.problems[0].message.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_same_network_on_two_peers_is_refused_naming_both() {
        let peers = format!(
            "{}{}",
            peer_with_networks(1, r#""10.99.0.0/24""#),
            peer_with_networks(2, r#""172.16.99.0/24", "10.99.0.9/24""#)
        );
        let err = fails_on("", &peers, "peer[1].allowed_ips[1]");
        let message = &err.problems[0].message;
        assert!(
            message.contains("10.99.0.0/24")
                && message.contains(&b64(&key(1)))
                && message.contains(&b64(&key(2)))
                && message.contains("peer[0]"),
            "{err}"
        );
        // Nested networks on two peers are fine: the longer prefix wins.
        let peers = format!(
            "{}{}",
            peer_with_networks(1, r#""172.16.0.0/12""#),
            peer_with_networks(2, r#""172.16.99.0/24""#)
        );
        assert_eq!(load("", &peers).unwrap().0.peers[1].allowed_ips.len(), 1);
    }

    #[test]
    fn mss_clamp_is_off_unless_asked() {
        assert!(!load("", "").unwrap().0.mss_clamp);
        assert!(load("mss_clamp = true", "").unwrap().0.mss_clamp);
        fails_on("mss_clamp = 1380", "", "mss_clamp");
    }

    #[test]
    fn many_problems_reported_together() {
        let peers = format!(
            "{}{}[[peer]]\npublic_key = \"bad\"\naddress = \"10.99.0.1\"\n",
            peer(1),
            peer(1)
        );
        let (text, dir) = cfg(
            "mtu = 10\nworkers = 0\nlisten_port = 0\nlisten_addresses = []\ntun_name = \"a b\"",
            &peers,
        );
        let err = ServerConfig::from_toml_str(&text, &dir).unwrap_err();
        for f in [
            "mtu",
            "workers",
            "listen_port",
            "listen_addresses",
            "tun_name",
            "peer[1].public_key",
            "peer[2].public_key",
            "peer[2].address",
        ] {
            assert!(err.has_field(f), "missing {f}: {err}");
        }
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), err.problems.len());
        assert!(
            shown.lines().all(|l| l.starts_with("<string>: ")),
            "{shown}"
        );
    }

    #[test]
    fn addresses_are_stable_and_order_independent() {
        let peers: Vec<String> = (1..=20).map(peer).collect();
        let forward = peers.concat();
        let backward: String = peers.iter().rev().cloned().collect();
        let fixed = peer_at(50, "10.66.0.100");
        let assign = |p: &str| {
            let (c, _) = load("", p).unwrap();
            let mut v: Vec<(PublicKey, Ipv4Addr)> =
                c.peers.iter().map(|p| (p.public_key, p.address)).collect();
            v.sort();
            v
        };
        let a = assign(&format!("{forward}{fixed}"));
        assert_eq!(a, assign(&format!("{forward}{fixed}")));
        assert_eq!(a, assign(&format!("{fixed}{backward}")));
        let unique: std::collections::HashSet<_> = a.iter().map(|x| x.1).collect();
        assert_eq!(unique.len(), 21);
        // A key keeps its address when unrelated peers come and go (barring collisions).
        let alone = assign(&peer(7));
        assert_eq!(
            alone[0],
            *a.iter().find(|x| x.0.as_bytes() == &key(7)).unwrap()
        );
    }

    #[test]
    fn push_settings_global_and_per_peer() {
        let (c, w) = load(
            "push_routes = [\"10.98.0.0/24\"]\npush_dns = [\"10.1.0.53\"]",
            &format!(
                "{}push_routes = [\"10.97.0.0/24\"]\npush_dns = [\"10.1.0.54\"]\n{}",
                peer(1),
                peer(2)
            ),
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        assert_eq!(c.push.routes(), &[net("10.98.0.0/24")]);
        assert_eq!(
            c.peers[0].push.routes(),
            &[net("10.98.0.0/24"), net("10.97.0.0/24")],
            "a peer's own come after the global ones"
        );
        assert_eq!(c.peers[0].push.dns().len(), 2);
        assert_eq!(
            c.peers[1].push, c.push,
            "a peer without its own gets the global ones"
        );
        let (c, _) = load("", &peer(1)).unwrap();
        assert!(c.push.is_empty() && c.peers[0].push.is_empty());
    }

    #[test]
    fn push_settings_errors_name_the_field() {
        fails_on("push_routes = [\"10.98.0.1/24\"]", "", "push_routes[0]");
        fails_on("push_routes = [\"0.0.0.0/0\"]", "", "push_routes[0]");
        fails_on("push_dns = [\"dns.example\"]", "", "push_dns[0]");
        fails_on(
            "",
            &format!("{}push_routes = [\"x\"]\n", peer(1)),
            "peer[0].push_routes[0]",
        );
        let dns: Vec<String> = (1..=3).map(|i| format!("\"10.1.0.{i}\"")).collect();
        let err = fails_on(
            &format!("push_dns = [{}]", dns.join(", ")),
            &format!(
                "{}{}push_dns = [\"10.2.0.1\", \"10.2.0.2\"]\n",
                peer(1),
                peer(2)
            ),
            "peer[1].push_dns",
        );
        assert!(err.to_string().contains("at most 4"), "{err}");
        let (_, w) = load("push_routes = [\"fd98::/64\"]", "").unwrap();
        assert!(w.iter().any(|w| w.contains("address6")), "{w:?}");
    }

    #[test]
    fn slash29_fills_and_seventh_peer_is_an_error() {
        // A /29 has 6 host addresses, one of them the server's: 5 peers fit.
        let (text, dir) = cfg("", "");
        let text = text.replace("10.66.0.1/24", "10.66.0.1/29");
        let five: String = (1..=5).map(peer).collect();
        let (c, _) = ServerConfig::from_toml_str(&format!("{text}{five}"), &dir).unwrap();
        let mut got: Vec<Ipv4Addr> = c.peers.iter().map(|p| p.address).collect();
        got.sort();
        assert_eq!(
            got,
            (2..=6)
                .map(|h| Ipv4Addr::new(10, 66, 0, h))
                .collect::<Vec<_>>()
        );
        let six: String = (1..=6).map(peer).collect();
        let err = ServerConfig::from_toml_str(&format!("{text}{six}"), &dir).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].field.starts_with("peer[")
                && err.problems[0].field.ends_with("].address"),
            "{err}"
        );
        assert!(
            err.problems[0].message.contains("no free address")
                && err.problems[0].message.contains("10.66.0.0/29"),
            "{err}"
        );
    }
}
