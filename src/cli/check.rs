//! `concentrator check --config server.toml` and `concentrator check --client client.toml`:
//! validate a configuration with the same loaders the server and the client use, and print the
//! settings as they would take effect, without touching the system (no TUN device, no socket,
//! no sysctl, no nftables). Key files are read and parsed; private keys are never printed.
//!
//! Exit status 0 when the file is valid, 1 with every problem listed when it is not: for CI
//! pipelines and before `systemctl reload`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Result};

use concentrator::config::{ClientConfig, ConfigError, ServerConfig};
use concentrator::ops::socket::default_path;
use concentrator::sys::privs;
use concentrator::tunnel::mss::mss_limit;

/// Lines of `label: value`, printed with the values aligned.
#[derive(Default)]
struct Report {
    rows: Vec<(&'static str, String)>,
}

impl Report {
    fn row(&mut self, label: &'static str, value: impl Into<String>) {
        self.rows.push((label, value.into()));
    }

    fn render(&self) -> String {
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
        let mut out = String::new();
        for (label, value) in &self.rows {
            let _ = writeln!(out, "  {:<width$} {value}", format!("{label}:"));
        }
        out
    }
}

/// The error for an invalid file: how many problems, then each on its own line.
fn invalid(kind: &str, e: ConfigError) -> anyhow::Error {
    let n = e.problems.len();
    anyhow!(
        "{} is not a valid {kind} configuration ({n} problem{}):\n{e}",
        e.file.display(),
        if n == 1 { "" } else { "s" }
    )
}

fn warnings_section(warnings: &[String]) -> String {
    let mut out = String::new();
    if !warnings.is_empty() {
        out.push_str("warnings (the file is usable, but look at these):\n");
        for w in warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

/// The routes and DNS servers pushed to every peer, and how many peers add their own.
fn describe_push(c: &ServerConfig) -> String {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let own = c.peers.iter().filter(|p| p.push != c.push).count();
    format!(
        "routes {}, DNS servers {} to every peer; {own} peer(s) add their own",
        list(c.push.routes().iter().map(|r| r.to_string()).collect()),
        list(c.push.dns().iter().map(|d| d.to_string()).collect()),
    )
}

/// What `check --config` reports for a valid server configuration. `cores`: what the number of
/// cores is now (shown when `workers` is not in the file); `user_exists` and `interface_exists`
/// look the user and an interface up (read-only), as notes.
fn describe_server(
    path: &Path,
    c: &ServerConfig,
    warnings: &[String],
    user_exists: impl Fn(&str) -> bool,
    interface_exists: impl Fn(&str) -> bool,
) -> String {
    let mut r = Report::default();
    r.row(
        "private key",
        format!(
            "{} (read and parsed; public key {})",
            c.private_key_file.display(),
            c.public_key
        ),
    );
    let interface = if c.tun_name.contains('%') {
        format!(
            "{} (the kernel replaces %d by the first free number at start)",
            c.tun_name
        )
    } else {
        c.tun_name.clone()
    };
    r.row("interface", interface);
    let listen: Vec<String> = c
        .listen_addresses
        .iter()
        .map(|ip| std::net::SocketAddr::new(*ip, c.listen_port).to_string())
        .collect();
    r.row("listen (UDP)", listen.join(", "));
    let fixed = c.peers.iter().filter(|p| p.fixed_address).count();
    r.row(
        "address",
        format!(
            "{} (client subnet {}: {} client addresses, {} left after the peers)",
            c.address,
            c.pool.network(),
            c.pool.usable().saturating_sub(1),
            c.pool.usable().saturating_sub(c.pool.taken() as u128)
        ),
    );
    r.row(
        "address6",
        match (c.address6, &c.pool6) {
            (Some(a6), Some(pool6)) => format!("{a6} (client subnet {})", pool6.network()),
            (Some(a6), None) => a6.to_string(),
            _ => "none (IPv4 only inside the tunnel)".into(),
        },
    );
    r.row("mtu", c.mtu.to_string());
    r.row("push", describe_push(c));
    r.row(
        "workers",
        if c.workers_from_file {
            format!("{} (from the file; --workers overrides it)", c.workers)
        } else {
            format!(
                "number of cores at start ({} on this machine now); --workers overrides it",
                c.workers
            )
        },
    );
    r.row(
        "offloads",
        if c.offloads {
            "requested (TUN checksum/TSO/USO, UDP GSO/GRO); which ones the kernel accepts only \
             the TUN probe at start can tell: see `offloads=` in the \"concentrator is up\" log \
             line; --no-offloads turns them off"
                .to_string()
        } else {
            "off (offloads = false)".to_string()
        },
    );
    let nat = match &c.nat {
        Some(iface) => {
            let mut s = format!(
                "masquerade {} behind {iface} (nftables table concentrator_<pid>)",
                c.pool.network()
            );
            if !interface_exists(iface) {
                s.push_str(&format!(
                    "; note: no interface {iface} on this machine now, where the NAT rule would \
                     match nothing"
                ));
            }
            s
        }
        None => "off".into(),
    };
    r.row("nat", nat);
    r.row(
        "client_to_client",
        if c.client_to_client {
            "on: the server relays between clients itself"
        } else {
            "off: traffic between clients goes through the kernel's forwarding (the host \
             firewall decides)"
        },
    );
    r.row(
        "ip forwarding",
        "enabled at start (IPv4, and IPv6 with address6), restored at stop",
    );
    if let Some(reg) = &c.registry {
        r.row(
            "registry",
            format!(
                "fleet {} as {} (endpoint {}) on etcd {}; the peers come from etcd{}",
                reg.fleet,
                reg.name,
                reg.endpoint,
                reg.etcd.join(", "),
                match reg.stale_after {
                    Some(d) => format!(
                        "; new handshakes refused once out of sync for {} s",
                        d.as_secs()
                    ),
                    None => String::new(),
                }
            ),
        );
    }
    let psk = c.peers.iter().filter(|p| p.preshared_key.is_some()).count();
    r.row(
        "peers",
        format!(
            "{} ({fixed} with a fixed address, {psk} with a pre-shared key)",
            c.peers.len()
        ),
    );
    let networks: usize = c.peers.iter().map(|p| p.allowed_ips.len()).sum();
    let sites = c.peers.iter().filter(|p| !p.allowed_ips.is_empty()).count();
    r.row(
        "allowed_ips",
        if networks == 0 {
            "none (each peer is routed its own addresses only)".to_string()
        } else {
            format!(
                "{networks} network{} on {sites} peer{}, routed into the TUN at start \
                 (ip route ... dev <interface>)",
                if networks == 1 { "" } else { "s" },
                if sites == 1 { "" } else { "s" }
            )
        },
    );
    r.row(
        "mss_clamp",
        if c.mss_clamp {
            format!(
                "on: TCP SYNs crossing the tunnel announce at most MSS {} (IPv4) or {} (IPv6)",
                mss_limit(false, c.mtu),
                mss_limit(true, c.mtu)
            )
        } else {
            "off".to_string()
        },
    );
    let socket = match &c.control_socket {
        Some(p) => p.display().to_string(),
        None if c.tun_name.contains('%') => format!(
            "{} with the interface's name, e.g. {} (default)",
            default_path("<interface>").display(),
            default_path(&c.tun_name.replace("%d", "0")).display()
        ),
        None => format!("{} (default)", default_path(&c.tun_name).display()),
    };
    r.row("control socket", socket);
    r.row(
        "WireGuard UAPI",
        if c.uapi {
            format!(
                "{} (`wg show`, `wg set`)",
                concentrator::ops::uapi::server::socket_path(&c.tun_name).display()
            )
        } else {
            "off".into()
        },
    );
    r.row(
        "public endpoint",
        c.public_endpoint
            .clone()
            .unwrap_or_else(|| "not set (`peer config` needs it)".into()),
    );
    r.row(
        "metrics",
        match c.metrics_listen {
            Some(a) => format!(
                "http://{a}/metrics (per-peer series {})",
                if c.metrics_per_peer { "on" } else { "off" }
            ),
            None => "off".into(),
        },
    );
    r.row(
        "latency logs",
        match &c.latency_log_dir {
            Some(d) => format!(
                "{} (one file per {} s, the newest {} kept)",
                d.display(),
                c.latency_log_interval,
                c.latency_log_keep
            ),
            None => "off".into(),
        },
    );
    r.row(
        "user",
        match &c.user {
            Some(u) if user_exists(u) => {
                format!("{u} (privileges dropped after set-up, keeping CAP_NET_ADMIN)")
            }
            Some(u) => format!(
                "{u}; note: no such user on this machine now, so the server would not start here"
            ),
            None => "none (runs as started)".into(),
        },
    );
    format!(
        "{}: valid server configuration\n{}{}only the start can tell: whether the kernel \
         accepts the offloads (TUN probe), whether the UDP port and the control socket are free, \
         whether the NAT rule installs.\n",
        path.display(),
        r.render(),
        warnings_section(warnings)
    )
}

/// What `check --client` reports for a valid client configuration.
fn describe_client(path: &Path, c: &ClientConfig, warnings: &[String]) -> String {
    let mut r = Report::default();
    r.row(
        "private key",
        format!(
            "{} (read and parsed; public key {})",
            c.private_key_file.display(),
            c.private_key.public_key()
        ),
    );
    let servers: Vec<String> = c.server_endpoints.iter().map(|e| e.to_string()).collect();
    r.row(
        "server",
        if servers.len() > 1 {
            format!(
                "{} (public key {}; the next takes over within seconds when one stops answering)",
                servers.join(", "),
                c.server_public_key
            )
        } else {
            format!("{} (public key {})", c.server_endpoint, c.server_public_key)
        },
    );
    r.row(
        "pre-shared key",
        match &c.preshared_key_file {
            Some(p) => format!("{} (read and parsed)", p.display()),
            None => "none".into(),
        },
    );
    r.row(
        "address",
        "assigned by the server in the handshake (with the tunnel's MTU)",
    );
    r.row(
        "full tunnel",
        if c.full_tunnel {
            format!(
                "yes: everything through the tunnel, a host route to {} over the current path",
                c.server_endpoints
                    .iter()
                    .map(|e| e.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "no (split tunnel)".into()
        },
    );
    let routes: Vec<String> = c.tunnel_routes().iter().map(|n| n.to_string()).collect();
    r.row(
        "routes",
        if routes.is_empty() {
            "none (only the tunnel's own subnet)".into()
        } else {
            routes.join(", ")
        },
    );
    r.row(
        "keepalive",
        match c.persistent_keepalive {
            Some(d) => format!("every {} s", d.as_secs()),
            None => "off".into(),
        },
    );
    r.row(
        "interface",
        if c.tun_name.contains('%') {
            format!(
                "{} (the kernel replaces %d by the first free number)",
                c.tun_name
            )
        } else {
            c.tun_name.clone()
        },
    );
    r.row(
        "offloads",
        if c.offloads {
            "requested; which ones the kernel accepts only the TUN probe at connect can tell \
             (the \"tunnel up\" log line); --no-offloads turns them off"
        } else {
            "off (offloads = false)"
        },
    );
    format!(
        "{}: valid client configuration\n{}{}only connecting can tell: whether the server \
         answers, and whether the kernel accepts the offloads (TUN probe).\n",
        path.display(),
        r.render(),
        warnings_section(warnings)
    )
}

/// `check --config`: validates a server configuration and prints its effective settings.
pub fn server(path: &Path) -> Result<()> {
    let (config, warnings) = ServerConfig::load(path).map_err(|e| invalid("server", e))?;
    print!(
        "{}",
        describe_server(
            path,
            &config,
            &warnings,
            |u| privs::lookup(u).is_ok(),
            |iface| Path::new("/sys/class/net").join(iface).exists(),
        )
    );
    Ok(())
}

/// `check --client`: validates a client configuration and prints its effective settings.
pub fn client(path: &Path) -> Result<()> {
    let (config, warnings) = ClientConfig::load(path).map_err(|e| invalid("client", e))?;
    print!("{}", describe_client(path, &config, &warnings));
    Ok(())
}
