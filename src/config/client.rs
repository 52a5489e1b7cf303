//! The client's configuration (`config/client.toml`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    check_ifname, int_in_range, parse_toml, read_file, read_key_file, resolve, ConfigError,
    Problems, STRING_SOURCE,
};
use crate::proto::keys::{PresharedKey, PublicKey, StaticSecret};
use crate::proto::wire::{AddressAssignment, PushConfig};

/// Default keepalive interval in seconds.
pub const DEFAULT_PERSISTENT_KEEPALIVE: u16 = 25;
/// Default TUN name; the kernel replaces `%d` by the first free number.
pub const DEFAULT_CLIENT_TUN_NAME: &str = "ctrc%d";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    private_key_file: Option<String>,
    server_public_key: Option<String>,
    server_endpoint: Option<String>,
    server_endpoints: Option<Vec<String>>,
    preshared_key_file: Option<String>,
    routes: Option<Vec<String>>,
    full_tunnel: Option<bool>,
    persistent_keepalive: Option<i64>,
    tun_name: Option<String>,
    offloads: Option<bool>,
    fair_queue: Option<bool>,
}

/// The client's configuration, resolved and validated.
#[derive(Debug)]
pub struct ClientConfig {
    /// The client's static private key, read from `private_key_file`.
    pub private_key: StaticSecret,
    /// Where the private key was read from.
    pub private_key_file: PathBuf,
    /// The server's static public key.
    pub server_public_key: PublicKey,
    /// The server's UDP address: the first of [`ClientConfig::server_endpoints`].
    pub server_endpoint: SocketAddr,
    /// Every server address the client may use, in order of preference (`server_endpoint`, or
    /// `server_endpoints`: headends that share one static key). With more than one, a server
    /// that stops answering is left for the next within seconds.
    pub server_endpoints: Vec<SocketAddr>,
    /// The pre-shared key, when `preshared_key_file` is set.
    pub preshared_key: Option<PresharedKey>,
    /// Where the pre-shared key was read from.
    pub preshared_key_file: Option<PathBuf>,
    /// The networks routed through the tunnel, as written (host bits cleared).
    pub routes: Vec<IpNet>,
    /// Route everything through the tunnel.
    pub full_tunnel: bool,
    /// Keepalive interval; `None` when off (`persistent_keepalive = 0`).
    pub persistent_keepalive: Option<Duration>,
    /// TUN interface name (may hold one `%d`).
    pub tun_name: String,
    /// Whether TUN/UDP offloads may be used (false is the kill switch).
    pub offloads: bool,
    /// Whether uploads go through the per-flow fair queue with CoDel (`tunnel::egress_queue`);
    /// off, each TUN read is sealed and sent before the next. Default off: see
    /// docs/benchmarks.md.
    pub fair_queue: bool,
}

/// The routes of a full tunnel: both halves of each address space, so they win over the default
/// route without replacing it. IPv6 is included so that it cannot leak around the tunnel.
pub fn full_tunnel_routes() -> Vec<IpNet> {
    ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"]
        .iter()
        .filter_map(|r| r.parse().ok())
        .collect()
}

impl ClientConfig {
    /// Loads and validates `path`. Relative key paths are relative to the file's directory.
    /// Returns the config and its warnings, or every problem found.
    pub fn load(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let (text, dir) = read_file(path)?;
        Self::parse(&text, &dir, path)
    }

    /// Parses and validates `text`; relative key paths are resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        Self::parse(text, base_dir, Path::new(STRING_SOURCE))
    }

    /// The routes to install through the tunnel: [`full_tunnel_routes`] in a full tunnel, else
    /// `routes`.
    pub fn tunnel_routes(&self) -> Vec<IpNet> {
        if self.full_tunnel {
            full_tunnel_routes()
        } else {
            self.routes.clone()
        }
    }

    /// The routes the server pushed that the client installs besides [`Self::tunnel_routes`]:
    /// those the configuration already routes, and the tunnel's own subnets (the kernel
    /// routes them with the address), are left out.
    pub fn pushed_routes(&self, push: &PushConfig, assignment: &AddressAssignment) -> Vec<IpNet> {
        let own = self.tunnel_routes();
        let mut subnets: Vec<IpNet> = Vec::new();
        if let Ok(net) = ipnet::Ipv4Net::new(assignment.ipv4, assignment.ipv4_prefix) {
            subnets.push(IpNet::V4(net.trunc()));
        }
        if let Some(Ok(net)) = assignment
            .ipv6
            .map(|(ip, prefix)| ipnet::Ipv6Net::new(ip, prefix))
        {
            subnets.push(IpNet::V6(net.trunc()));
        }
        push.routes()
            .iter()
            .filter(|r| !own.contains(r) && !subnets.contains(r))
            .copied()
            .collect()
    }

    /// Whether one of `routes` would take the server's own address into the tunnel: then a
    /// host route to the server along its current path must come first, or the tunnel's own
    /// packets would loop into it.
    pub fn covers_server(&self, routes: &[IpNet]) -> bool {
        self.server_endpoints
            .iter()
            .any(|server| routes.iter().any(|r| r.contains(&server.ip())))
    }

    fn parse(text: &str, base_dir: &Path, file: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let raw: RawClient = parse_toml(text, file)?;
        let mut problems = Problems::default();
        let mut warnings = Vec::new();
        match validate(raw, base_dir, &mut problems, &mut warnings) {
            Some(cfg) if problems.is_empty() => Ok((cfg, warnings)),
            _ => Err(problems.into_error(file)),
        }
    }
}

/// The server endpoints from `server_endpoint` or `server_endpoints` (exactly one of them):
/// addresses with ports, no duplicates, one address family (one socket serves them all).
fn server_endpoints(
    single: Option<&str>,
    several: Option<&[String]>,
    problems: &mut Problems,
) -> Option<Vec<SocketAddr>> {
    let texts: Vec<(String, &str)> = match (single, several) {
        (Some(_), Some(_)) => {
            problems.push(
                "server_endpoints",
                "set either server_endpoint (one server) or server_endpoints (several), not both",
            );
            return None;
        }
        (None, None) | (None, Some([])) => {
            problems.push(
                "server_endpoint",
                "missing; add the server's address and port, e.g. \"192.0.2.1:51820\" or \"[2001:db8::1]:51820\" (or server_endpoints = [...] for several headends that share one key)",
            );
            return None;
        }
        (Some(one), None) => vec![("server_endpoint".to_string(), one)],
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("server_endpoints[{i}]"), t.as_str()))
            .collect(),
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut ok = true;
    for (field, text) in texts {
        match parse_endpoint(text, &field, problems) {
            Some(a) if out.contains(&a) => {
                problems.push(field, format!("{a} is listed twice; remove one"));
                ok = false;
            }
            Some(a) if out.first().is_some_and(|f| f.is_ipv4() != a.is_ipv4()) => {
                problems.push(
                    field,
                    format!(
                        "{a} is of another address family than {}: the client uses one \
                         socket, so list only IPv4 or only IPv6 endpoints",
                        out[0]
                    ),
                );
                ok = false;
            }
            Some(a) => out.push(a),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// One server endpoint, `field` naming it in problems.
fn parse_endpoint(text: &str, field: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match text.trim().parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            problems.push(
                field,
                format!("{text:?} has port 0; use the server's listen_port, e.g. 51820"),
            );
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(
                field,
                format!(
                    "{text:?} is not an IP address with a port; write e.g. \"192.0.2.1:51820\" \
                     or \"[2001:db8::1]:51820\" (host names are not resolved)"
                ),
            );
            None
        }
    }
}

fn validate(
    raw: RawClient,
    base_dir: &Path,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<ClientConfig> {
    let (private_key, private_key_file) = match &raw.private_key_file {
        None => {
            problems.push(
                "private_key_file",
                "missing; add `private_key_file = \"client.key\"`, a file holding this \
                 client's base64 X25519 private key",
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

    let server_public_key = match raw.server_public_key.as_deref() {
        None => {
            problems.push(
                "server_public_key",
                "missing; add the server's base64 public key (`concentrator pubkey < server.key` on the server, or `wg pubkey`)",
            );
            None
        }
        Some(text) => match PublicKey::from_base64(text) {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push("server_public_key", e.to_string());
                None
            }
        },
    };

    let server_endpoints = server_endpoints(
        raw.server_endpoint.as_deref(),
        raw.server_endpoints.as_deref(),
        problems,
    );

    let (preshared_key, preshared_key_file) = match &raw.preshared_key_file {
        None => (None, None),
        Some(p) => {
            let path = resolve(base_dir, p);
            let key = read_key_file(
                &path,
                "preshared_key_file",
                "pre-shared key (`concentrator genkey` or `wg genpsk`)",
                PresharedKey::from_base64,
                problems,
                warnings,
            );
            (key, Some(path))
        }
    };

    let full_tunnel = raw.full_tunnel.unwrap_or(false);
    let mut routes: Vec<IpNet> = Vec::new();
    for (i, r) in raw.routes.iter().flatten().enumerate() {
        let field = format!("routes[{i}]");
        let r = r.trim();
        let net = r
            .parse::<IpNet>()
            .or_else(|_| r.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(n) if routes.contains(&n.trunc()) => warnings.push(format!(
                "{field}: {} is listed twice; remove one",
                n.trunc()
            )),
            Ok(n) => {
                if n.trunc() != n {
                    warnings.push(format!(
                        "{field}: {n} has host bits set; it is taken as {}",
                        n.trunc()
                    ));
                }
                routes.push(n.trunc());
            }
            Err(_) => problems.push(
                field,
                format!("{r:?} is not a network; write e.g. \"10.66.0.0/16\" or \"fd66::/64\""),
            ),
        }
    }
    if full_tunnel && !routes.is_empty() {
        warnings.push(
            "routes: redundant with full_tunnel = true, which routes everything; remove them"
                .to_string(),
        );
    }
    if !full_tunnel && raw.routes.as_ref().is_none_or(|r| r.is_empty()) {
        warnings.push(
            "routes: none, and full_tunnel is off, so only the tunnel's own subnet is reachable; \
             add routes or set full_tunnel = true"
                .to_string(),
        );
    }
    for ep in server_endpoints.iter().flatten() {
        if !full_tunnel {
            if let Some(r) = routes.iter().find(|r| r.contains(&ep.ip())) {
                warnings.push(format!(
                    "routes: {r} contains the server endpoint {}: a host route to it along \
                     today's path is added first so the tunnel does not loop, but if that path \
                     changes (another network) the tunnel breaks; exclude the endpoint from \
                     the routes",
                    ep.ip()
                ));
            }
        }
    }

    let persistent_keepalive = int_in_range(
        raw.persistent_keepalive,
        i64::from(DEFAULT_PERSISTENT_KEEPALIVE),
        0..=i64::from(u16::MAX),
        "persistent_keepalive",
        "seconds; 0 turns it off, 25 keeps most NATs open",
        problems,
    );
    let tun_name = raw
        .tun_name
        .unwrap_or_else(|| DEFAULT_CLIENT_TUN_NAME.to_string());
    check_ifname(&tun_name, true, "tun_name", problems);

    Some(ClientConfig {
        private_key: private_key?,
        private_key_file,
        server_public_key: server_public_key?,
        server_endpoint: *server_endpoints.as_ref()?.first()?,
        server_endpoints: server_endpoints?,
        preshared_key,
        preshared_key_file,
        routes,
        full_tunnel,
        persistent_keepalive: (persistent_keepalive > 0)
            .then(|| Duration::from_secs(persistent_keepalive as u64)),
        tun_name,
        offloads: raw.offloads.unwrap_or(true),
        fair_queue: raw.fair_queue.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{b64, key_file, set_mode, temp_dir};
    use super::*;

    fn load(fields: &str) -> Result<(ClientConfig, Vec<String>), ConfigError> {
        let dir = temp_dir("client");
        key_file(&dir, "client.key", &[5; 32]);
        key_file(&dir, "psk", &[6; 32]);
        let text = format!(
            "private_key_file = \"client.key\"\nserver_public_key = \"{}\"\n{fields}\n",
            b64(&[9; 32])
        );
        ClientConfig::from_toml_str(&text, &dir)
    }

    const EP: &str = "server_endpoint = \"192.0.2.1:51820\"";

    #[track_caller]
    fn fails_on(fields: &str, field: &str) -> ConfigError {
        let err = load(fields).expect_err("must fail");
        assert!(err.has_field(field), "no problem for {field}: {err}");
        err
    }

    #[test]
    fn minimal_with_defaults() {
        let (c, w) = load(&format!("{EP}\nroutes = [\"10.66.0.0/16\"]")).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.persistent_keepalive, Some(Duration::from_secs(25)));
        assert_eq!(c.tun_name, "ctrc%d");
        assert!(c.offloads && !c.fair_queue && !c.full_tunnel && c.preshared_key.is_none());
        assert_eq!(c.server_public_key.as_bytes(), &[9; 32]);
        assert_eq!(*c.private_key.to_bytes(), [5; 32]);
        assert_eq!(
            c.tunnel_routes(),
            vec!["10.66.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert!(!format!("{c:?}").contains(&b64(&[5; 32])));
    }

    #[test]
    fn endpoint_forms() {
        let (c, _) = load("server_endpoint = \"[2001:db8::1]:51820\"\nfull_tunnel = true").unwrap();
        assert_eq!(c.server_endpoint, "[2001:db8::1]:51820".parse().unwrap());
        fails_on(
            "server_endpoint = \"vpn.example.com:51820\"",
            "server_endpoint",
        );
        fails_on("server_endpoint = \"192.0.2.1\"", "server_endpoint");
        fails_on("server_endpoint = \"192.0.2.1:0\"", "server_endpoint");
        fails_on("", "server_endpoint");
    }

    #[test]
    fn several_server_endpoints() {
        let (c, _) = load(
            "server_endpoints = [\"192.0.2.1:51820\", \"192.0.2.2:51820\"]\nfull_tunnel = true",
        )
        .unwrap();
        assert_eq!(c.server_endpoint, "192.0.2.1:51820".parse().unwrap());
        assert_eq!(c.server_endpoints.len(), 2);
        assert!(c.covers_server(&["192.0.2.2/32".parse().unwrap()]));
        let (c, _) = load("server_endpoint = \"192.0.2.1:51820\"\nfull_tunnel = true").unwrap();
        assert_eq!(c.server_endpoints, [c.server_endpoint]);
        let err = fails_on(
            "server_endpoint = \"192.0.2.1:51820\"\nserver_endpoints = [\"192.0.2.2:51820\"]",
            "server_endpoints",
        );
        assert!(err.to_string().contains("not both"), "{err}");
        fails_on(
            "server_endpoints = [\"192.0.2.1:51820\", \"192.0.2.1:51820\"]",
            "server_endpoints[1]",
        );
        let err = fails_on(
            "server_endpoints = [\"192.0.2.1:51820\", \"[2001:db8::1]:51820\"]",
            "server_endpoints[1]",
        );
        assert!(err.to_string().contains("address family"), "{err}");
        fails_on("server_endpoints = [\"192.0.2.1\"]", "server_endpoints[0]");
        fails_on("server_endpoints = []", "server_endpoint");
    }

    #[test]
    fn server_public_key_rules() {
        let dir = temp_dir("client-nokey");
        key_file(&dir, "k", &[5; 32]);
        let err = ClientConfig::from_toml_str(&format!("private_key_file = \"k\"\n{EP}"), &dir)
            .unwrap_err();
        assert!(err.has_field("server_public_key"), "{err}");
        let err = ClientConfig::from_toml_str(
            &format!("private_key_file = \"k\"\n{EP}\nserver_public_key = \"zz\""),
            &dir,
        )
        .unwrap_err();
        assert!(err.has_field("server_public_key"), "{err}");
    }

    #[test]
    fn routes_parse() {
        fails_on(
            &format!("{EP}\nroutes = [\"10.0.0.0/8\", \"10.0.0.0/33\"]"),
            "routes[1]",
        );
        fails_on(&format!("{EP}\nroutes = [\"nope\"]"), "routes[0]");
        let (c, w) = load(&format!(
            "{EP}\nroutes = [\"10.1.2.3/16\", \"fd00::/8\", \"10.9.9.9\"]"
        ))
        .unwrap();
        assert_eq!(c.routes.len(), 3);
        assert_eq!(c.routes[0], "10.1.0.0/16".parse::<IpNet>().unwrap());
        assert!(
            w.iter()
                .any(|w| w.starts_with("routes[0]") && w.contains("host bits")),
            "{w:?}"
        );
    }

    #[test]
    fn full_tunnel_with_routes_warns() {
        let (c, w) = load(&format!(
            "{EP}\nfull_tunnel = true\nroutes = [\"10.66.0.0/16\"]"
        ))
        .unwrap();
        assert!(w.iter().any(|w| w.contains("redundant")), "{w:?}");
        assert_eq!(c.tunnel_routes().len(), 4);
        assert!(c
            .tunnel_routes()
            .iter()
            .any(|r| r.contains(&"8.8.8.8".parse::<IpAddr>().unwrap())));
    }

    #[test]
    fn endpoint_inside_routes_warns_loop() {
        let (_, w) = load(&format!("{EP}\nroutes = [\"192.0.2.0/24\"]")).unwrap();
        assert!(w.iter().any(|w| w.contains("loop")), "{w:?}");
        let (_, w) = load(&format!("{EP}\nroutes = [\"10.0.0.0/8\"]")).unwrap();
        assert!(!w.iter().any(|w| w.contains("loop")), "{w:?}");
    }

    #[test]
    fn pushed_routes_leave_out_what_is_routed_already() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let (c, _) = load(&format!("{EP}\nroutes = [\"10.1.0.0/24\"]")).unwrap();
        let a = AddressAssignment {
            ipv4: "10.66.0.7".parse().unwrap(),
            ipv4_prefix: 16,
            ipv6: Some(("fd66::7".parse().unwrap(), 64)),
            mtu: 1420,
        };
        let push = PushConfig::new(
            vec![
                net("10.98.0.0/24"),
                net("10.1.0.0/24"),
                net("10.66.0.0/16"),
                net("fd66::/64"),
                net("fd98::/64"),
            ],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(
            c.pushed_routes(&push, &a),
            vec![net("10.98.0.0/24"), net("fd98::/64")]
        );
        // A full tunnel's halves are its own too.
        let (full, _) = load(&format!("{EP}\nfull_tunnel = true")).unwrap();
        let halves =
            PushConfig::new(vec![net("0.0.0.0/1"), net("10.98.0.0/24")], Vec::new()).unwrap();
        assert_eq!(full.pushed_routes(&halves, &a), vec![net("10.98.0.0/24")]);
    }

    #[test]
    fn covers_server_finds_the_endpoint() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let (c, _) = load(&format!("{EP}\nfull_tunnel = true")).unwrap();
        assert!(c.covers_server(&[net("10.98.0.0/24"), net("192.0.2.0/25")]));
        assert!(!c.covers_server(&[net("10.98.0.0/24"), net("192.0.2.128/25")]));
        assert!(c.covers_server(&c.tunnel_routes()));
    }

    #[test]
    fn keepalive_range_and_off() {
        fails_on(
            &format!("{EP}\npersistent_keepalive = -1"),
            "persistent_keepalive",
        );
        fails_on(
            &format!("{EP}\npersistent_keepalive = 70000"),
            "persistent_keepalive",
        );
        let (c, _) = load(&format!(
            "{EP}\npersistent_keepalive = 0\nfull_tunnel = true"
        ))
        .unwrap();
        assert_eq!(c.persistent_keepalive, None);
    }

    #[test]
    fn preshared_key_and_permissions() {
        let (c, _) = load(&format!(
            "{EP}\nfull_tunnel = true\npreshared_key_file = \"psk\""
        ))
        .unwrap();
        assert_eq!(c.preshared_key.unwrap().as_bytes(), &[6; 32]);
        fails_on(
            &format!("{EP}\npreshared_key_file = \"nope\""),
            "preshared_key_file",
        );
        let dir = temp_dir("client-perm");
        let k = key_file(&dir, "client.key", &[5; 32]);
        set_mode(&k, 0o640);
        let text = format!("private_key_file = \"client.key\"\nserver_public_key = \"{}\"\n{EP}\nfull_tunnel = true", b64(&[9; 32]));
        let (_, w) = ClientConfig::from_toml_str(&text, &dir).unwrap();
        assert!(w.iter().any(|w| w.contains("chmod 600")), "{w:?}");
    }

    #[test]
    fn many_problems_together() {
        let err = ClientConfig::from_toml_str(
            "server_endpoint = \"x\"\nroutes = [\"y\"]\ntun_name = \"\"\npersistent_keepalive = -5",
            Path::new("/tmp"),
        )
        .unwrap_err();
        for f in [
            "private_key_file",
            "server_public_key",
            "server_endpoint",
            "routes[0]",
            "tun_name",
            "persistent_keepalive",
        ] {
            assert!(err.has_field(f), "missing {f}: {err}");
        }
    }

    #[test]
    fn unknown_field_rejected() {
        let err = fails_on(&format!("{EP}\nendpoint = \"x\""), "endpoint");
        assert!(err.problems[0].message.contains("line 4"), "{err}");
    }
}
