//! The end-to-end benchmark suite (see `scripts/bench.sh` and `docs/benchmarks.md`).
//!
//! `run` builds the namespace lab and drives everything; `pingpong`, `sink` and `loadgen` are
//! the small tools it starts inside the namespaces; `report` re-renders `report.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use concentrator::proto::keys::{PublicKey, StaticSecret};

mod blast;
mod cpu;
mod headend;
mod lab;
mod mmsg;
mod render;
mod report;
mod run;
mod tools;

#[derive(Parser)]
#[command(name = "bench-harness")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the suite (root: network namespaces).
    Run {
        /// Short durations, K up to 100 (under 2 minutes).
        #[arg(long)]
        quick: bool,
        /// Also wireguard-go and boringtun-cli, and the concentrator in WireGuard mode with a
        /// wireguard-go client.
        #[arg(long)]
        peers: bool,
        /// perf record the server of each tunnel during a TCP upload.
        #[arg(long)]
        profile: bool,
        /// Only these tunnels (comma-separated, e.g. `concentrator-wg,wireguard-go`) beside
        /// plain routing, and no headend-alone runs: a quick side-by-side comparison.
        #[arg(long, value_delimiter = ',')]
        systems: Vec<String>,
        /// Only the headend-alone runs (loadgen data blasts and handshakes): no tunnels, no
        /// iperf3.
        #[arg(long, conflicts_with = "systems")]
        headend_only: bool,
        /// How the headend-alone blasts generate load (comma-separated: each one runs the
        /// whole matrix).
        #[arg(long, value_delimiter = ',', default_value = "presealed-mmsg")]
        blast: Vec<Blast>,
        /// IP packet sizes of the headend-alone blasts (pre-sealed modes; comma-separated;
        /// default: 64 with --quick, 64,1420 without).
        #[arg(long, value_delimiter = ',')]
        packet_bytes: Vec<usize>,
        /// Emulated clients of the headend-alone blasts (comma-separated; default: 1,100 with
        /// --quick, 1,100,10000 without).
        #[arg(long, value_delimiter = ',')]
        clients: Vec<usize>,
        /// Seconds per headend-alone blast (default: 3 with --quick, 8 without).
        #[arg(long)]
        blast_seconds: Option<u64>,
        /// Open-loop pacing of the pre-sealed blasts, datagrams per second (default: as fast
        /// as the kernel takes them).
        #[arg(long)]
        blast_rate_pps: Option<u64>,
        /// Runs the load generator of the headend-alone blasts at this nice level (e.g. 19):
        /// where it shares cores with the server, the server gets them first.
        #[arg(long, allow_hyphen_values = true)]
        generator_nice: Option<i32>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The concentrator binary (a release build).
        #[arg(long)]
        concentrator: PathBuf,
    },
    /// UDP ping-pong: `--server` echoes, `--client` measures round trips.
    Pingpong {
        #[arg(long, conflicts_with = "client")]
        server: bool,
        #[arg(long)]
        client: bool,
        #[arg(long, default_value = "0.0.0.0:7777")]
        bind: SocketAddr,
        #[arg(long, default_value = "600")]
        deadline_s: u64,
        #[arg(long, required_if_eq("client", "true"))]
        target: Option<SocketAddr>,
        #[arg(long, default_value = "1000")]
        count: u64,
        #[arg(long, default_value = "1000")]
        interval_us: u64,
        #[arg(long, default_value = "1000")]
        timeout_ms: u64,
        #[arg(long, default_value = "60")]
        max_seconds: u64,
    },
    /// Counts (and echoes) UDP datagrams.
    Sink {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        echo: bool,
        #[arg(long, default_value = "60")]
        deadline_s: u64,
        #[arg(long, default_value = "1500")]
        idle_ms: u64,
        /// When the socket is empty, sleep this long instead of waiting in poll (0: poll).
        /// A sink asleep in poll is woken by every datagram, and that wake-up is charged to
        /// whoever delivers the datagram: through a TUN and a veth, the server under test.
        #[arg(long, default_value = "0")]
        nap_us: u64,
    },
    /// Emulated clients speaking the protocol (concentrator::proto::client::Client).
    Loadgen {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        server_key: String,
        /// File with one base64 private key per line.
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        backend: SocketAddr,
        #[arg(long, default_value = "16")]
        sockets: usize,
        #[arg(long, default_value = "5")]
        duration_s: u64,
        #[arg(long, default_value = "60")]
        connect_timeout_s: u64,
        /// Handshake mode with this many handshakes in flight.
        #[arg(long)]
        handshakes_in_flight: Option<usize>,
        /// The server's PID: its CPU time (user and system) during the blast is reported.
        #[arg(long)]
        server_pid: Option<u32>,
        /// The backend sink's PID: its CPU time during the blast is reported.
        #[arg(long)]
        sink_pid: Option<u32>,
        /// How the blast seals and sends.
        #[arg(long, value_enum, default_value = "presealed-mmsg")]
        blast: Blast,
        /// IP packet length (pre-sealed modes; 28 to 1420).
        #[arg(long, default_value = "64")]
        packet_bytes: usize,
        /// Most memory for the pre-sealed datagrams (MiB).
        #[arg(long, default_value = "1024")]
        pool_mib: usize,
        /// Open-loop pacing, datagrams per second in all (pre-sealed modes; default: as fast
        /// as the kernel takes them).
        #[arg(long)]
        rate_pps: Option<u64>,
    },
    /// Re-renders report.md from a results directory.
    Report { dir: PathBuf },
}

/// How `loadgen` generates data load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Blast {
    /// Sealed ahead with consecutive counters, sent with `sendmmsg` (1024 per call), no echo.
    PresealedMmsg,
    /// Sealed ahead, sent as `UDP_SEGMENT` runs of up to 64 datagrams, no echo.
    PresealedGso,
    /// The first generator: 64-byte payloads sealed one by one in the timed loop, sent 64
    /// per call, echoed by the backend and decrypted.
    SealEach,
}

impl Blast {
    pub fn name(self) -> &'static str {
        match self {
            Blast::PresealedMmsg => "presealed-mmsg",
            Blast::PresealedGso => "presealed-gso",
            Blast::SealEach => "seal-each",
        }
    }

    pub fn load_mode(self) -> tools::LoadMode {
        match self {
            Blast::PresealedMmsg => tools::LoadMode::Presealed(blast::SendMode::Mmsg),
            Blast::PresealedGso => tools::LoadMode::Presealed(blast::SendMode::Gso),
            Blast::SealEach => tools::LoadMode::SealEach,
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Run {
            quick,
            peers,
            profile,
            systems,
            headend_only,
            blast,
            packet_bytes,
            clients,
            blast_seconds,
            blast_rate_pps,
            generator_nice,
            out,
            concentrator,
        } => {
            let mut plan = run::Plan::new(quick, peers, profile, out, concentrator);
            plan.only = systems;
            plan.headend_only = headend_only;
            plan.blasts = blast;
            if !packet_bytes.is_empty() {
                plan.packet_bytes = packet_bytes;
            }
            if !clients.is_empty() {
                plan.loadgen_clients = clients;
            }
            plan.blast_rate_pps = blast_rate_pps;
            plan.generator_nice = generator_nice;
            if let Some(s) = blast_seconds {
                plan.loadgen_seconds = s;
            }
            run::run(plan, headend::headend)
        }
        Cmd::Pingpong {
            server,
            bind,
            deadline_s,
            target,
            count,
            interval_us,
            timeout_ms,
            max_seconds,
            ..
        } => {
            if server {
                tools::pingpong_server(bind, Duration::from_secs(deadline_s))
            } else {
                tools::pingpong_client(
                    target.context("--target")?,
                    count,
                    Duration::from_micros(interval_us),
                    Duration::from_millis(timeout_ms),
                    Duration::from_secs(max_seconds),
                )
            }
        }
        Cmd::Sink {
            bind,
            echo,
            deadline_s,
            idle_ms,
            nap_us,
        } => tools::sink(
            bind,
            echo,
            Duration::from_secs(deadline_s),
            Duration::from_millis(idle_ms),
            Duration::from_micros(nap_us),
        ),
        Cmd::Loadgen {
            server,
            server_key,
            keys,
            backend,
            sockets,
            duration_s,
            connect_timeout_s,
            handshakes_in_flight,
            server_pid,
            sink_pid,
            blast,
            packet_bytes,
            pool_mib,
            rate_pps,
        } => {
            let text = std::fs::read_to_string(&keys)
                .with_context(|| format!("reading {}", keys.display()))?;
            let keys = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    StaticSecret::from_base64(l.trim()).map_err(|e| anyhow::anyhow!("bad key: {e}"))
                })
                .collect::<Result<Vec<_>>>()?;
            tools::loadgen(tools::LoadgenOptions {
                server,
                server_key: PublicKey::from_base64(&server_key)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                keys,
                backend,
                sockets,
                duration: Duration::from_secs(duration_s),
                handshakes_in_flight,
                connect_timeout: Duration::from_secs(connect_timeout_s),
                server_pid,
                sink_pid,
                mode: blast.load_mode(),
                packet_bytes,
                pool_mib,
                rate_pps,
            })
        }
        Cmd::Report { dir } => {
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?)?;
            std::fs::write(dir.join("report.md"), render::report_markdown(&r))?;
            Ok(())
        }
    }
}
