//! `bench-harness run`: builds the lab, runs every scenario over every system, writes
//! `results.json` and `report.md`.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use concentrator::proto::keys::StaticSecret;
use concentrator::proto::rng::OsRandom;

use crate::lab::{
    self, check_interrupted, Lab, Proc, BACKEND, BACKEND6, BACKEND_NET, BACKEND_NET6,
    SERVER_UNDERLAY, SERVER_UNDERLAY6,
};
use crate::report::{self, Metric, Percentiles};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub peers: bool,
    pub profile: bool,
    pub out: PathBuf,
    /// The `concentrator` binary (release build).
    pub concentrator: PathBuf,
    /// Seconds per throughput test.
    pub seconds: u64,
    /// Latency probes per run (1 ms apart).
    pub probes: u64,
    pub loadgen_clients: Vec<usize>,
    pub workers: Vec<usize>,
    pub loadgen_seconds: u64,
    pub handshake_seconds: u64,
    /// When not empty: only these tunnels beside plain routing, and no headend-alone runs.
    pub only: Vec<String>,
    /// Only the headend-alone data blasts: no tunnels, no handshake runs.
    pub headend_only: bool,
    /// How the headend-alone blasts generate load (each runs the whole matrix).
    pub blasts: Vec<crate::Blast>,
    /// IP packet sizes of the pre-sealed blasts.
    pub packet_bytes: Vec<usize>,
    /// Open-loop pacing of the pre-sealed blasts (none: as fast as the kernel takes them).
    pub blast_rate_pps: Option<u64>,
    /// Nice level of the load generator in the headend-alone blasts.
    pub generator_nice: Option<i32>,
}

impl Plan {
    pub fn new(
        quick: bool,
        peers: bool,
        profile: bool,
        out: PathBuf,
        concentrator: PathBuf,
    ) -> Plan {
        Plan {
            quick,
            peers,
            profile,
            out,
            concentrator,
            seconds: if quick { 3 } else { 10 },
            probes: if quick { 1000 } else { 5000 },
            loadgen_clients: if quick {
                vec![1, 100]
            } else {
                vec![1, 100, 10_000]
            },
            workers: vec![1, 2],
            loadgen_seconds: if quick { 3 } else { 8 },
            handshake_seconds: if quick { 3 } else { 8 },
            only: Vec::new(),
            headend_only: false,
            blasts: vec![crate::Blast::PresealedMmsg],
            packet_bytes: if quick { vec![64] } else { vec![64, 1420] },
            blast_rate_pps: None,
            generator_nice: None,
        }
    }
}

const WG_PORT: u16 = 51821;
pub(crate) const CTR_PORT: u16 = 51820;
const PINGPONG_PORT: u16 = 7777;
pub(crate) const SINK_PORT: u16 = 9000;
const MTU: &str = "1420";

pub(crate) fn progress(msg: &str) {
    eprintln!("[bench {}] {msg}", chrono_now());
}

fn chrono_now() -> String {
    let out = std::process::Command::new("date").arg("+%H:%M:%S").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn write_secret(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

pub(crate) fn self_exe() -> Result<String> {
    Ok(std::env::current_exe()?.to_string_lossy().into_owned())
}

/// One tunnel (or none), set up in the lab; torn down on drop.
struct System {
    name: &'static str,
    procs: Vec<Proc>,
    /// Routes added in the client namespace for plain routing.
    plain_route: bool,
    client_ns: String,
    /// Concentrator: the server process index in `procs` and its latency dump.
    latency_dump: Option<PathBuf>,
}

impl System {
    fn server_pid(&self) -> Option<u32> {
        self.procs.first().and_then(|p| p.pid())
    }

    /// Stops everything: servers with SIGINT (so the concentrator writes its histograms).
    fn stop(&mut self) -> Vec<String> {
        let mut logs = Vec::new();
        for mut p in self.procs.drain(..).rev() {
            p.stop_with(libc::SIGINT);
            logs.push(p.stderr());
        }
        if self.plain_route {
            for net in [BACKEND_NET, BACKEND_NET6] {
                let _ = lab::run(
                    &["ip", "-n", &self.client_ns, "route", "del", net],
                    Duration::from_secs(5),
                );
            }
            self.plain_route = false;
        }
        logs
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Keys {
    server: StaticSecret,
    client: StaticSecret,
}

fn setup_plain(lab: &Lab) -> Result<System> {
    lab.ip(
        &lab.client,
        &["route", "add", BACKEND_NET, "via", SERVER_UNDERLAY],
    )?;
    lab.ip(
        &lab.client,
        &["route", "add", BACKEND_NET6, "via", SERVER_UNDERLAY6],
    )?;
    Ok(System {
        name: "plain",
        procs: Vec::new(),
        plain_route: true,
        client_ns: lab.client.clone(),
        latency_dump: None,
    })
}

/// How long each server start had to wait for the port (see `start_concentrator_server`).
static PORT_WAITS_MS: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn start_concentrator_server(
    lab: &Lab,
    plan: &Plan,
    config: &Path,
    workers: usize,
    dump: &Path,
    name: &str,
    offloads: bool,
) -> Result<Proc> {
    // A server that just exited can hold its UDP port (and TUN) for a while: its io_uring
    // is torn down asynchronously by the kernel. Wait for the port instead of failing.
    let t = Instant::now();
    loop {
        let ss = lab.exec(
            &lab.server,
            &["ss", "-Hun", "sport", "=", &format!(":{CTR_PORT}")],
            Duration::from_secs(5),
        )?;
        if ss.stdout.trim().is_empty() {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("UDP port {CTR_PORT} still held 30 s after the previous server exited");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if t.elapsed() > Duration::from_millis(50) {
        progress(&format!(
            "  (waited {} ms for the previous server's UDP port to be released)",
            t.elapsed().as_millis()
        ));
        PORT_WAITS_MS
            .lock()
            .unwrap()
            .push(t.elapsed().as_millis() as u64);
    }
    let bin = plan.concentrator.to_string_lossy().into_owned();
    let cfg = config.to_string_lossy().into_owned();
    let w = workers.to_string();
    let dump_s = dump.to_string_lossy().into_owned();
    let mut argv = vec![bin.as_str(), "--config", &cfg, "--workers", &w];
    if !offloads {
        argv.push("--no-offloads");
    }
    let mut p = lab.spawn(
        &lab.server,
        name,
        &argv,
        &[
            ("NO_COLOR", "1"),
            ("CONCENTRATOR_LOG", "info"),
            ("CONCENTRATOR_LATENCY_DUMP", &dump_s),
        ],
    )?;
    if !p.wait_for_log("concentrator is up", Duration::from_secs(60)) {
        bail!("concentrator server did not come up:\n{}", p.stderr());
    }
    Ok(p)
}

/// Writes the server's config (one peer: the client's key, plus `peer_extra` lines) and starts
/// the concentrator server as `name`.
fn concentrator_server(
    lab: &Lab,
    plan: &Plan,
    keys: &Keys,
    name: &str,
    offloads: bool,
    peer_extra: &str,
) -> Result<Proc> {
    let dir = &lab.dir;
    write_secret(&dir.join("ctr-server.key"), &keys.server.to_base64())?;
    let workers = *plan.workers.iter().max().unwrap_or(&2);
    let server_toml = report::server_config(
        &report::ServerToml {
            private_key_file: "ctr-server.key",
            listen: SERVER_UNDERLAY.parse()?,
            port: CTR_PORT,
            tun_name: &lab.link_name("t"),
            workers,
        },
        &[keys.client.public_key().to_string()],
    );
    // IPv6 in the tunnel too, for the tcp6 figure (top-level keys go before the [[peer]]s).
    let server_toml = format!("address6 = \"fd66::1/64\"\n{server_toml}{peer_extra}");
    std::fs::write(dir.join("ctr-server.toml"), server_toml)?;
    let dump = plan.out.join(format!("{name}-e2e-latency.hdr"));
    start_concentrator_server(
        lab,
        plan,
        &dir.join("ctr-server.toml"),
        workers,
        &dump,
        &format!("{name}-server"),
        offloads,
    )
}

/// The concentrator, with offloads (`offloads`) or with the kill switch thrown on both sides.
fn setup_concentrator(lab: &Lab, plan: &Plan, keys: &Keys, offloads: bool) -> Result<System> {
    let name = if offloads {
        "concentrator"
    } else {
        "concentrator-no-offloads"
    };
    let dir = &lab.dir;
    write_secret(&dir.join("ctr-client.key"), &keys.client.to_base64())?;
    let client_toml = format!(
        "private_key_file = \"ctr-client.key\"\nserver_public_key = \"{}\"\n\
         server_endpoint = \"{SERVER_UNDERLAY}:{CTR_PORT}\"\n\
         routes = [\"{BACKEND_NET}\", \"{BACKEND_NET6}\"]\n\
         persistent_keepalive = 25\ntun_name = \"{}\"\n",
        keys.server.public_key(),
        lab.link_name("tc"),
    );
    std::fs::write(dir.join("ctr-client.toml"), client_toml)?;
    let dump = plan.out.join(format!("{name}-e2e-latency.hdr"));
    let server = concentrator_server(lab, plan, keys, name, offloads, "")?;
    let bin = plan.concentrator.to_string_lossy().into_owned();
    let ccfg = dir.join("ctr-client.toml").to_string_lossy().into_owned();
    let mut client_argv = vec![bin.as_str(), "connect", "--config", &ccfg];
    if !offloads {
        client_argv.push("--no-offloads");
    }
    let client = lab.spawn(
        &lab.client,
        &format!("{name}-client"),
        &client_argv,
        &[("NO_COLOR", "1"), ("CONCENTRATOR_LOG", "info")],
    )?;
    Ok(System {
        name,
        procs: vec![server, client],
        plain_route: false,
        client_ns: lab.client.clone(),
        latency_dump: Some(dump),
    })
}

/// Starts a stock WireGuard endpoint, wireguard-go or boringtun-cli, on interface `dev` in
/// `ns` and waits for its UAPI socket (both are configured with `wg`).
fn start_stock(lab: &Lab, which: &str, ns: &str, dev: &str) -> Result<Proc> {
    let argv: Vec<&str> = match which {
        "boringtun" => vec![
            "boringtun-cli",
            "--foreground",
            "--disable-drop-privileges",
            "--threads",
            "2",
            dev,
        ],
        _ => vec!["wireguard-go", "-f", dev],
    };
    let env = [("LOG_LEVEL", "error"), ("WG_SUDO", "1")];
    let p = lab.spawn(ns, &format!("{which}-{dev}"), &argv, &env)?;
    let sock = PathBuf::from(format!("/var/run/wireguard/{dev}.sock"));
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > end {
            bail!("{which} did not create {}: {}", sock.display(), p.stderr());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(p)
}

/// A stock client's side of the tunnel.
struct StockClient<'a> {
    dev: &'a str,
    key_file: &'a Path,
    server_public: String,
    endpoint: String,
    /// Its tunnel addresses, with prefix lengths.
    address: String,
    address6: String,
    /// What it sends into the tunnel (besides the backend networks).
    tunnel_nets: String,
}

/// Configures a started stock client with `wg set` and `ip`: its key, the server as its one
/// peer, its addresses and the routes to the backend.
fn configure_stock_client(lab: &Lab, c: &StockClient) -> Result<()> {
    let key = c.key_file.to_string_lossy().into_owned();
    let allowed = format!("{BACKEND_NET},{BACKEND_NET6},{}", c.tunnel_nets);
    let argv = [
        "wg",
        "set",
        c.dev,
        "private-key",
        &key,
        "peer",
        &c.server_public,
        "endpoint",
        &c.endpoint,
        "allowed-ips",
        &allowed,
        "persistent-keepalive",
        "25",
    ];
    lab.exec_ok(&lab.client, &argv, Duration::from_secs(10))?;
    lab.ip(&lab.client, &["addr", "add", &c.address, "dev", c.dev])?;
    lab.ip(
        &lab.client,
        &["addr", "add", &c.address6, "dev", c.dev, "nodad"],
    )?;
    lab.ip(&lab.client, &["link", "set", c.dev, "mtu", MTU, "up"])?;
    lab.ip(&lab.client, &["route", "add", BACKEND_NET, "dev", c.dev])?;
    lab.ip(&lab.client, &["route", "add", BACKEND_NET6, "dev", c.dev])?;
    Ok(())
}

/// wireguard-go or boringtun-cli on both ends.
fn setup_wg(lab: &Lab, keys: &Keys, which: &'static str) -> Result<System> {
    let dir = &lab.dir;
    let (sname, cname, net, net6) = match which {
        "wireguard-go" => (lab.link_name("gs"), lab.link_name("gc"), "10.67.0", "fd67:"),
        _ => (lab.link_name("rs"), lab.link_name("rc"), "10.68.0", "fd68:"),
    };
    write_secret(&dir.join("wg-server.key"), &keys.server.to_base64())?;
    write_secret(&dir.join("wg-client.key"), &keys.client.to_base64())?;
    let procs = vec![
        start_stock(lab, which, &lab.server, &sname)?,
        start_stock(lab, which, &lab.client, &cname)?,
    ];
    let sk = dir.join("wg-server.key").to_string_lossy().into_owned();
    let port = WG_PORT.to_string();
    let cpub = keys.client.public_key().to_string();
    let t = Duration::from_secs(10);
    lab.exec_ok(
        &lab.server,
        &[
            "wg",
            "set",
            &sname,
            "private-key",
            &sk,
            "listen-port",
            &port,
            "peer",
            &cpub,
            "allowed-ips",
            &format!("{net}.2/32,{net6}:2/128"),
        ],
        t,
    )?;
    lab.ip(
        &lab.server,
        &["addr", "add", &format!("{net}.1/24"), "dev", &sname],
    )?;
    lab.ip(
        &lab.server,
        &[
            "addr",
            "add",
            &format!("{net6}:1/64"),
            "dev",
            &sname,
            "nodad",
        ],
    )?;
    lab.ip(&lab.server, &["link", "set", &sname, "mtu", MTU, "up"])?;
    configure_stock_client(
        lab,
        &StockClient {
            dev: &cname,
            key_file: &dir.join("wg-client.key"),
            server_public: keys.server.public_key().to_string(),
            endpoint: format!("{SERVER_UNDERLAY}:{port}"),
            address: format!("{net}.2/24"),
            address6: format!("{net6}:2/64"),
            tunnel_nets: format!("{net}.0/24,{net6}:/64"),
        },
    )?;
    Ok(System {
        name: which,
        procs,
        plain_route: false,
        client_ns: lab.client.clone(),
        latency_dump: None,
    })
}

/// The concentrator serving a stock wireguard-go client in its WireGuard mode: the same
/// client as the wireguard-go system's, so the two servers compare side by side.
fn setup_concentrator_wg(lab: &Lab, plan: &Plan, keys: &Keys) -> Result<System> {
    let name = "concentrator-wg";
    let dir = &lab.dir;
    let address = report::peer_address(0);
    let address6 = "fd66::a";
    let peer_extra = format!("protocol = \"wireguard\"\naddress6 = \"{address6}\"\n");
    let server = concentrator_server(lab, plan, keys, name, true, &peer_extra)?;
    write_secret(&dir.join("wg-client.key"), &keys.client.to_base64())?;
    let cname = lab.link_name("wc");
    let client = start_stock(lab, "wireguard-go", &lab.client, &cname)?;
    let system = System {
        name,
        procs: vec![server, client],
        plain_route: false,
        client_ns: lab.client.clone(),
        latency_dump: Some(plan.out.join(format!("{name}-e2e-latency.hdr"))),
    };
    configure_stock_client(
        lab,
        &StockClient {
            dev: &cname,
            key_file: &dir.join("wg-client.key"),
            server_public: keys.server.public_key().to_string(),
            endpoint: format!("{SERVER_UNDERLAY}:{CTR_PORT}"),
            address: format!("{address}/16"),
            address6: format!("{address6}/64"),
            tunnel_nets: "10.66.0.0/16,fd66::/64".into(),
        },
    )?;
    Ok(system)
}

fn pingpong(lab: &Lab, count: u64, timeout_ms: u64) -> Result<Value> {
    let exe = self_exe()?;
    let c = count.to_string();
    let to = timeout_ms.to_string();
    let target = format!("{BACKEND}:{PINGPONG_PORT}");
    let max = (count / 1000 + 30).to_string();
    let out = lab.exec(
        &lab.client,
        &[
            &exe,
            "pingpong",
            "--client",
            "--target",
            &target,
            "--count",
            &c,
            "--interval-us",
            "1000",
            "--timeout-ms",
            &to,
            "--max-seconds",
            &max,
        ],
        Duration::from_secs(count / 1000 + 60),
    )?;
    if !out.ok() {
        bail!("pingpong client failed: {}", out.stderr);
    }
    Ok(serde_json::from_str(out.stdout.trim())?)
}

/// Waits until a probe goes through the tunnel.
fn wait_ready(lab: &Lab, sys: &System) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        check_interrupted()?;
        if let Ok(v) = pingpong(lab, 3, 300) {
            if v["received"].as_u64().unwrap_or(0) > 0 {
                return Ok(());
            }
        }
    }
    let logs: Vec<String> = sys
        .procs
        .iter()
        .map(|p| format!("{}:\n{}", p.name, p.stderr()))
        .collect();
    bail!(
        "{}: no round trip through the tunnel within 20 s\n{}",
        sys.name,
        logs.join("\n")
    )
}

struct Iperf<'a> {
    lab: &'a Lab,
    port: u16,
}

impl Iperf<'_> {
    /// A one-shot iperf3 server on the backend, bound to its address `bind`.
    fn start_server(&mut self, bind: &str) -> Result<(Proc, String)> {
        self.port += 1;
        let port = self.port.to_string();
        let mut p = self.lab.spawn(
            &self.lab.backend,
            &format!("iperf3-s-{port}"),
            &["iperf3", "-s", "-1", "-B", bind, "-p", &port],
            &[],
        )?;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let ss = self.lab.exec(
                &self.lab.backend,
                &["ss", "-Hltn", "sport", "=", &format!(":{port}")],
                Duration::from_secs(5),
            )?;
            if ss.stdout.contains("LISTEN") {
                break;
            }
            if Instant::now() > end || !p.running() {
                bail!("iperf3 server not listening: {}", p.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((p, port))
    }

    /// Runs a client towards the backend's IPv4 address; returns its JSON.
    fn client(&mut self, extra: &[&str], seconds: u64) -> Result<Value> {
        self.client_to(BACKEND, extra, seconds)
    }

    /// Runs a client towards the backend's address `dst`; returns its JSON.
    fn client_to(&mut self, dst: &str, extra: &[&str], seconds: u64) -> Result<Value> {
        let (mut server, port) = self.start_server(dst)?;
        let t = seconds.to_string();
        let mut argv = vec!["iperf3", "-c", dst, "-p", &port, "-t", &t, "-J"];
        argv.extend_from_slice(extra);
        let out = self
            .lab
            .exec(&self.lab.client, &argv, Duration::from_secs(seconds + 30))?;
        server.wait(Duration::from_secs(5));
        let v: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("iperf3 {extra:?} printed no JSON: {}", out.stderr))?;
        if let Some(e) = v.get("error") {
            bail!("iperf3 {extra:?}: {e}");
        }
        Ok(v)
    }

    /// An iperf3 TCP client in the background for `seconds`, with `extra` arguments (`-P 4`
    /// streams, `-R` for a download).
    fn background_client(&mut self, seconds: u64, extra: &[&str]) -> Result<(Proc, Proc)> {
        let (server, port) = self.start_server(BACKEND)?;
        let t = seconds.to_string();
        let mut args = vec!["iperf3", "-c", BACKEND, "-p", &port, "-t", &t, "-J"];
        args.extend_from_slice(extra);
        let c = self
            .lab
            .spawn(&self.lab.client, &format!("iperf3-load-{port}"), &args, &[])?;
        Ok((server, c))
    }
}

fn latency_metrics(metrics: &mut Vec<Metric>, label: &str, system: &str, p: &Percentiles) {
    for (name, v) in p.named() {
        metrics.push(Metric::new(
            &format!("{label} {name}"),
            system,
            v,
            "µs",
            false,
        ));
    }
}

fn percentiles_from(v: &Value) -> Result<(Percentiles, hdrhistogram::Histogram<u64>)> {
    let h = report::histogram_from_base64(v["histogram_v2"].as_str().context("no histogram")?)?;
    Ok((report::percentiles(&h), h))
}

/// The end-to-end scenarios over one system.
fn e2e(
    lab: &Lab,
    plan: &Plan,
    sys: &System,
    iperf: &mut Iperf,
    metrics: &mut Vec<Metric>,
    extra: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let s = sys.name;
    let secs = plan.seconds;
    for (label, dst, args) in [
        ("tcp 1 stream up", BACKEND, vec![]),
        // IPv6 inside the tunnel (still over the IPv4 underlay), next to the IPv4 figure.
        ("tcp6 1 stream up", BACKEND6, vec![]),
        ("tcp 1 stream down", BACKEND, vec!["-R"]),
        ("tcp 4 streams up", BACKEND, vec!["-P", "4"]),
        ("tcp 4 streams down", BACKEND, vec!["-P", "4", "-R"]),
    ] {
        check_interrupted()?;
        progress(&format!("{s}: {label} ({secs} s)"));
        let cpu_before = sys.server_pid().and_then(cpu_seconds);
        let v = iperf.client_to(dst, &args, secs)?;
        let cpu = cpu_before.zip(sys.server_pid().and_then(cpu_seconds));
        let bps = report::iperf_tcp_bps(&v).context("no TCP result")?;
        metrics.push(Metric::new(label, s, bps / 1e9, "Gbit/s", true));
        if let Some((before, after)) = cpu {
            // CPU seconds of the server process per gigabit carried (user + system, every
            // thread; softirq work the kernel does in other contexts is not in it).
            let gigabits = bps * secs as f64 / 1e9;
            metrics.push(Metric::new(
                &format!("server cpu per Gbit, {label}"),
                s,
                (after - before) / gigabits.max(1e-9),
                "cpu s/Gbit",
                false,
            ));
        }
        let retr = v["end"]["sum_sent"]["retransmits"].as_u64();
        extra.insert(format!("{s}/{label}/retransmits"), json!(retr));
    }
    check_interrupted()?;
    progress(&format!("{s}: udp 64-byte packets, -b 0 ({secs} s)"));
    let cpu_before = sys.server_pid().and_then(cpu_seconds);
    let v = iperf.client(&["-u", "-l", "64", "-b", "0"], secs)?;
    let cpu = cpu_before.zip(sys.server_pid().and_then(cpu_seconds));
    let u = report::iperf_udp(&v).context("no UDP result")?;
    if let Some((before, after)) = cpu {
        let packets = u.received_pps * secs as f64;
        metrics.push(Metric::new(
            "server cpu per packet, udp 64 B",
            s,
            (after - before) * 1e6 / packets.max(1.0),
            "µs",
            false,
        ));
    }
    metrics.push(Metric::new(
        "udp 64 B received",
        s,
        u.received_pps / 1e3,
        "kpps",
        true,
    ));
    metrics.push(Metric::new(
        "udp 64 B sent",
        s,
        u.sent_pps / 1e3,
        "kpps",
        true,
    ));
    metrics.push(Metric::new("udp 64 B loss", s, u.loss_percent, "%", false));

    check_interrupted()?;
    progress(&format!("{s}: latency, idle ({} probes)", plan.probes));
    let v = pingpong(lab, plan.probes, 1000)?;
    let (p, h) = percentiles_from(&v)?;
    latency_metrics(metrics, "rtt idle", s, &p);
    extra.insert(format!("{s}/rtt idle"), json!({"percentiles": p.to_json(), "lost": v["lost"], "histogram_v2": report::histogram_to_base64(&h)}));

    // Round-trip latency while TCP streams fill the tunnel one way or the other: the queues
    // in the path show here (a bulk flow's backlog in front of the probes).
    for (label, what, args) in [
        ("rtt loaded", "1 stream up", &[][..]),
        ("rtt loaded 4 up", "4 streams up", &["-P", "4"][..]),
        ("rtt loaded 1 down", "1 stream down", &["-R"][..]),
        (
            "rtt loaded 4 down",
            "4 streams down",
            &["-P", "4", "-R"][..],
        ),
    ] {
        check_interrupted()?;
        progress(&format!(
            "{s}: latency under load (iperf3 TCP {what} meanwhile)"
        ));
        let load_secs = plan.probes / 1000 + 3;
        let (mut srv, mut load) = iperf.background_client(load_secs, args)?;
        std::thread::sleep(Duration::from_millis(1000));
        let v = pingpong(lab, plan.probes, 1000)?;
        load.wait(Duration::from_secs(load_secs + 20));
        srv.wait(Duration::from_secs(5));
        let (p, h) = percentiles_from(&v)?;
        latency_metrics(metrics, label, s, &p);
        extra.insert(format!("{s}/{label}"), json!({"percentiles": p.to_json(), "lost": v["lost"], "histogram_v2": report::histogram_to_base64(&h)}));
    }
    Ok(())
}

/// User plus system CPU time of process `pid` (all its threads) so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    crate::cpu::process_cpu(pid).map(|(user, system)| user + system)
}

/// Records a CPU profile of the server process during a TCP upload.
fn profile(
    lab: &Lab,
    plan: &Plan,
    sys: &System,
    iperf: &mut Iperf,
    download: bool,
) -> Result<Value> {
    let pid = sys.server_pid().context("no server pid")?.to_string();
    let tag = if download {
        format!("{}-down", sys.name)
    } else {
        sys.name.to_string()
    };
    let data = plan.out.join(format!("perf-{tag}.data"));
    let data_s = data.to_string_lossy().into_owned();
    let secs = plan.seconds.min(5);
    progress(&format!(
        "{}: perf record -g of the server during a TCP {} ({secs} s)",
        sys.name,
        if download { "download" } else { "upload" }
    ));
    let mut rec = Proc::spawn(
        &format!("perf-{}", sys.name),
        &[
            "perf",
            "record",
            "-g",
            "-F",
            "999",
            "-p",
            &pid,
            "-o",
            &data_s,
            "--",
            "sleep",
            &(secs + 1).to_string(),
        ],
        &[],
        &lab.dir,
    )?;
    let v = iperf.client(if download { &["-R"] } else { &[] }, secs)?;
    rec.wait(Duration::from_secs(secs + 20));
    let bps = report::iperf_tcp_bps(&v).unwrap_or(0.0);
    let out = lab::run(
        &[
            "perf",
            "report",
            "-i",
            &data_s,
            "--stdio",
            "--no-children",
            "--percent-limit",
            "1",
            "-g",
            "none",
            "--sort",
            "sym",
        ],
        Duration::from_secs(120),
    )?;
    let txt = plan.out.join(format!("perf-{tag}.txt"));
    std::fs::write(&txt, &out.stdout)?;
    let children = lab::run(
        &[
            "perf",
            "report",
            "-i",
            &data_s,
            "--stdio",
            "--children",
            "--percent-limit",
            "5",
            "-g",
            "none",
            "--sort",
            "sym",
        ],
        Duration::from_secs(120),
    )?;
    std::fs::write(
        plan.out.join(format!("perf-{tag}-children.txt")),
        &children.stdout,
    )?;
    let top: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(25)
        .map(|l| l.trim().to_string())
        .collect();
    Ok(
        json!({"system": sys.name, "direction": if download { "down" } else { "up" }, "tcp_gbps_during_profile": bps / 1e9, "top_self": top,
              "report": txt.file_name().map(|f| f.to_string_lossy().into_owned())}),
    )
}

/// The `Udp:` counters of /proc/net/snmp inside `ns` (the receive-buffer drops show where
/// a tunnel loses packets).
pub(crate) fn udp_snmp(lab: &Lab, ns: &str) -> std::collections::BTreeMap<String, i64> {
    let text = lab
        .exec(ns, &["cat", "/proc/net/snmp"], Duration::from_secs(5))
        .map(|o| o.stdout)
        .unwrap_or_default();
    let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let mut m = std::collections::BTreeMap::new();
    if udp.len() >= 2 {
        for (k, v) in udp[0]
            .split_whitespace()
            .zip(udp[1].split_whitespace())
            .skip(1)
        {
            if let Ok(v) = v.parse() {
                m.insert(k.to_string(), v);
            }
        }
    }
    m
}

pub(crate) fn snmp_delta(
    before: &std::collections::BTreeMap<String, i64>,
    after: &std::collections::BTreeMap<String, i64>,
) -> Value {
    let keep = [
        "InDatagrams",
        "InErrors",
        "RcvbufErrors",
        "SndbufErrors",
        "NoPorts",
    ];
    json!(after
        .iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), json!(v - before.get(k).copied().unwrap_or(0))))
        .collect::<serde_json::Map<_, _>>())
}

/// Milliseconds until the server's TUN device disappeared after the server exited (at most
/// 5 s; `None` when it was still there then).
pub(crate) fn link_gone_after(lab: &Lab) -> Option<u64> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let out = lab
            .ip(&lab.server, &["-o", "link", "show", "type", "tun"])
            .unwrap_or_default();
        if out.trim().is_empty() {
            return Some(t.elapsed().as_millis() as u64);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub(crate) fn gen_keys(n: usize) -> Vec<StaticSecret> {
    (0..n)
        .map(|_| StaticSecret::generate(&mut OsRandom))
        .collect()
}

/// Counters from the server's exit log (`worker counters worker=0 tun_rx=...`).
pub(crate) fn parse_counters(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.contains("worker counters"))
        .map(|l| {
            let mut m = serde_json::Map::new();
            for kv in l.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    if let Ok(n) = v.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u64>() {
                        m.insert(k.to_string(), json!(n));
                    }
                }
            }
            Value::Object(m)
        })
        .collect()
}

pub(crate) fn dump_summary(path: &Path) -> Value {
    let Ok(text) = std::fs::read_to_string(path) else {
        return json!({"error": "no dump written"});
    };
    match report::parse_latency_dump(&text) {
        Ok(hs) => {
            let mut all = concentrator::server::latency::latency_histogram();
            let mut per = Vec::new();
            for (id, h) in &hs {
                let _ = all.add(h);
                per.push(json!({"worker": id, "percentiles": report::percentiles(h).to_json()}));
            }
            json!({"workers": per, "all": report::percentiles(&all).to_json()})
        }
        Err(e) => json!({"error": e.to_string()}),
    }
}

fn version_of(argv: &[&str]) -> String {
    lab::run(argv, Duration::from_secs(10))
        .map(|o| {
            format!("{}{}", o.stdout, o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "not available".into())
}

fn machine(plan: &Plan) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let conc = plan.concentrator.to_string_lossy().into_owned();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "kernel": version_of(&["uname", "-sr"]),
        "loadavg_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "versions": {
            "concentrator": format!("{} ({})", version_of(&[&conc, "--version"]), version_of(&["git", "rev-parse", "--short", "HEAD"])),
            "wireguard-go": version_of(&["wireguard-go", "--version"]),
            "boringtun-cli": version_of(&["boringtun-cli", "--version"]),
            "wg": version_of(&["wg", "--version"]),
            "iperf3": version_of(&["iperf3", "--version"]),
        },
    })
}

/// The headend-alone runs, which the caller supplies (main passes the headend module's):
/// they use this module's lab helpers, so this module does not name them.
pub type HeadendRuns = fn(&Lab, &Plan, &mut serde_json::Map<String, Value>) -> Result<()>;

pub fn run(plan: Plan, headend_runs: HeadendRuns) -> Result<()> {
    lab::install_signal_handlers();
    let started = Instant::now();
    std::fs::create_dir_all(&plan.out)?;
    // For scripts/bench.sh, to remove our namespaces should we be killed outright.
    std::fs::write(plan.out.join("harness.pid"), std::process::id().to_string())?;
    for tool in ["ip", "iperf3", "ss"] {
        if lab::run(&["which", tool], Duration::from_secs(5))
            .map(|o| !o.ok())
            .unwrap_or(true)
        {
            bail!("{tool} is missing (apt-get install iproute2 iperf3)");
        }
    }
    let mut systems: Vec<&'static str> = vec!["plain", "concentrator"];
    if !plan.quick {
        // The offload kill switch thrown: what the super-packet paths are worth, same run.
        systems.push("concentrator-no-offloads");
    }
    if plan.peers {
        // The same wireguard-go client against the concentrator's WireGuard mode and against
        // a wireguard-go server.
        systems.push("concentrator-wg");
        systems.push("wireguard-go");
        systems.push("boringtun");
    }
    if plan.headend_only {
        systems.clear();
    }
    if !plan.only.is_empty() {
        for wanted in &plan.only {
            if !report::SYSTEMS.contains(&wanted.as_str()) {
                bail!(
                    "unknown system {wanted:?}; the systems are {:?}",
                    report::SYSTEMS
                );
            }
        }
        systems = report::SYSTEMS
            .iter()
            .copied()
            .filter(|s| *s == "plain" || plan.only.iter().any(|o| o == s))
            .collect();
    }
    let work = std::env::temp_dir().join(format!("ctrb-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _cleanup = DirGuard(work.clone());
    let mut results = serde_json::Map::new();
    results.insert("machine".into(), machine(&plan));
    results.insert(
        "params".into(),
        json!({
            "quick": plan.quick, "peers": plan.peers, "systems": systems,
            "tcp_udp_seconds": plan.seconds, "latency_probes": plan.probes, "probe_interval_ms": 1,
            "loadgen_clients": plan.loadgen_clients, "workers": plan.workers,
            "loadgen_seconds": plan.loadgen_seconds, "handshake_seconds": plan.handshake_seconds,
            "concentrator_workers_e2e": plan.workers.iter().max(),
            "boringtun_threads": 2, "mtu": 1420,
            "udp_payload_bytes": 64,
            "headend_only": plan.headend_only,
            "blasts": plan.blasts.iter().map(|b| b.name()).collect::<Vec<_>>(),
            "blast_packet_bytes": plan.packet_bytes,
            "blast_rate_pps": plan.blast_rate_pps, "generator_nice": plan.generator_nice,
        }),
    );
    progress(&format!("output in {}", plan.out.display()));
    let lab = Lab::new(&work)?;
    let exe = self_exe()?;
    let pp_deadline = "3600";
    let _pp = lab.spawn(
        &lab.backend,
        "pingpong-server",
        &[
            &exe,
            "pingpong",
            "--server",
            "--bind",
            &format!("0.0.0.0:{PINGPONG_PORT}"),
            "--deadline-s",
            pp_deadline,
        ],
        &[],
    )?;
    let keys = Keys {
        server: StaticSecret::generate(&mut OsRandom),
        client: StaticSecret::generate(&mut OsRandom),
    };
    let mut metrics: Vec<Metric> = Vec::new();
    let mut extra = serde_json::Map::new();
    let mut errors = serde_json::Map::new();
    let mut profiles = Vec::new();
    let mut iperf = Iperf {
        lab: &lab,
        port: 5200,
    };
    for s in &systems {
        check_interrupted()?;
        progress(&format!("== {s} =="));
        let setup = match *s {
            "plain" => setup_plain(&lab),
            "concentrator" => setup_concentrator(&lab, &plan, &keys, true),
            "concentrator-no-offloads" => setup_concentrator(&lab, &plan, &keys, false),
            "concentrator-wg" => setup_concentrator_wg(&lab, &plan, &keys),
            other => setup_wg(&lab, &keys, other),
        };
        let mut sys = match setup {
            Ok(sys) => sys,
            Err(e) => {
                progress(&format!("{s}: setup failed: {e:#}"));
                errors.insert(s.to_string(), json!(format!("{e:#}")));
                continue;
            }
        };
        let snmp_before: Vec<_> = [&lab.client, &lab.server, &lab.backend]
            .iter()
            .map(|n| udp_snmp(&lab, n))
            .collect();
        let r = wait_ready(&lab, &sys)
            .and_then(|_| e2e(&lab, &plan, &sys, &mut iperf, &mut metrics, &mut extra));
        for (i, role) in ["client", "server", "backend"].iter().enumerate() {
            let ns = [&lab.client, &lab.server, &lab.backend][i];
            extra.insert(
                format!("{s}/udp_counters/{role}"),
                snmp_delta(&snmp_before[i], &udp_snmp(&lab, ns)),
            );
        }
        if let Err(e) = r {
            progress(&format!("{s}: failed: {e:#}"));
            errors.insert(s.to_string(), json!(format!("{e:#}")));
        }
        if plan.profile && *s != "plain" && check_interrupted().is_ok() {
            for download in [false, true] {
                match profile(&lab, &plan, &sys, &mut iperf, download) {
                    Ok(p) => profiles.push(p),
                    Err(e) => progress(&format!("{s}: profile failed: {e:#}")),
                }
            }
        }
        let logs = sys.stop();
        if let Some(d) = &sys.latency_dump {
            extra.insert("concentrator/server_worker_latency".into(), dump_summary(d));
            extra.insert(
                "concentrator/server_counters".into(),
                json!(parse_counters(
                    logs.last().map(|s| s.as_str()).unwrap_or("")
                )),
            );
        }
        drop(sys);
    }
    if !plan.only.is_empty() {
        progress("headend-alone runs skipped (--systems)");
    } else if let Err(e) = headend_runs(&lab, &plan, &mut results) {
        progress(&format!("headend: failed: {e:#}"));
        errors.insert("headend".into(), json!(format!("{e:#}")));
    }
    drop(_pp);
    drop(lab);
    results.insert(
        "metrics".into(),
        Value::Array(metrics.iter().map(Metric::to_json).collect()),
    );
    results.insert("details".into(), Value::Object(extra));
    results.insert("profiles".into(), Value::Array(profiles));
    results.insert("errors".into(), Value::Object(errors));
    results.insert("elapsed_s".into(), json!(started.elapsed().as_secs_f64()));
    results.insert(
        "concentrator_port_release_waits_ms".into(),
        json!(*PORT_WAITS_MS.lock().unwrap()),
    );
    if let Some(m) = results.get_mut("machine").and_then(Value::as_object_mut) {
        m.insert(
            "loadavg_end".into(),
            json!(std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()),
        );
    }
    let results = Value::Object(results);
    std::fs::write(
        plan.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let md = crate::render::report_markdown(&results);
    let mut f = std::fs::File::create(plan.out.join("report.md"))?;
    f.write_all(md.as_bytes())?;
    progress(&format!(
        "done in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        plan.out.join("report.md").display()
    ));
    Ok(())
}

struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
