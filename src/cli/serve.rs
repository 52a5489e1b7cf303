//! The server: `concentrator --config server.toml [--workers N]`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

use concentrator::config::ServerConfig;
use concentrator::control::command::Addressing;
use concentrator::control::{Control, HandshakeStats, HANDSHAKE_QUEUE};
use concentrator::dataplane::stats::{SharedCounters, SharedLatency};
use concentrator::dataplane::worker::{self, WorkerContext};
use concentrator::offload::vnet::VNET_HDR_LEN;
use concentrator::ops::{self, latency_log, latency_log::LatencyLog, socket::ControlSocket, Ops};
use concentrator::proto::keys::StaticSecret;
use concentrator::proto::rng::OsRandom;
use concentrator::proto::server::Server;
use concentrator::session_table::SessionTable;
use concentrator::sys::{clock, link, nft, notify, privs, signals, tun::Tun, udp};

/// Options from the command line that override the file.
pub struct ServeOptions {
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--no-offloads`: the kill switch for TUN and UDP offloads, whatever the file says.
    pub no_offloads: bool,
}

/// What the server set up and must take down again, in reverse order.
struct Setup {
    /// The masquerade rules of `nat` (IPv4) and `nat6` (IPv6).
    masquerade: Option<nft::Masquerade>,
    masquerade6: Option<nft::Masquerade>,
    /// IPv4 and IPv6 forwarding as found, when the server turned it on.
    previous_forwarding: Option<bool>,
    previous_forwarding6: Option<bool>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for m in [self.masquerade.take(), self.masquerade6.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = m.remove() {
                tracing::warn!(error = %e, "could not remove the NAT rules");
            }
        }
        if self.previous_forwarding == Some(false) {
            let _ = link::set_ip_forward(true, false);
        }
        if self.previous_forwarding6 == Some(false) {
            let _ = link::set_ip_forward(false, false);
        }
    }
}

fn bind_sockets(config: &ServerConfig, workers: usize) -> Result<Vec<Vec<UdpSocket>>> {
    let addrs: Vec<SocketAddr> = config
        .listen_addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, config.listen_port))
        .collect();
    // SO_REUSEPORT would silently share the port with another instance of ours: probe first
    // with a plain bind, which fails if anyone holds the port.
    // A process killed a moment ago may still hold the port while the kernel tears down its
    // io_uring, so a port in use is retried for a few seconds before it is an error.
    for addr in &addrs {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            match UdpSocket::bind(addr) {
                Ok(_) => break,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                    "UDP port {} is already in use on {}: stop the other process or change \
                     listen_port",
                    addr.port(),
                    addr.ip()
                ),
                Err(e) => bail!("cannot bind UDP {addr}: {e}"),
            }
        }
    }
    (0..workers)
        .map(|_| {
            addrs
                .iter()
                .map(|a| udp::bind_reuseport(*a).with_context(|| format!("binding UDP {a}")))
                .collect()
        })
        .collect()
}

/// `reason=count` for every non-zero drop counter.
fn drop_summary(c: &concentrator::dataplane::stats::Counters) -> String {
    use concentrator::dataplane::stats::DropReason;
    DropReason::ALL
        .iter()
        .filter(|r| c.drops[**r as usize] > 0)
        .map(|r| format!("{}={}", r.name(), c.drops[*r as usize]))
        .collect::<Vec<_>>()
        .join(",")
}

/// Names the offloads in force, for the start-up log.
fn offload_names(enabled: bool, tun_flags: u32) -> String {
    use concentrator::sys::tun::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
    if !enabled {
        return "off".into();
    }
    let names = [
        (TUN_F_CSUM, "csum"),
        (TUN_F_TSO4, "tso4"),
        (TUN_F_TSO6, "tso6"),
        (TUN_F_USO4, "uso4"),
        (TUN_F_USO6, "uso6"),
    ];
    let mut parts: Vec<&str> = names
        .iter()
        .filter(|(f, _)| tun_flags & f != 0)
        .map(|(_, n)| *n)
        .collect();
    parts.extend(["udp-gro", "udp-gso"]);
    parts.join(",")
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(config_path: &Path, options: ServeOptions) -> Result<()> {
    let (config, warnings) = ServerConfig::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let workers = options.workers.unwrap_or(config.workers);
    if workers == 0 || workers > 1024 {
        bail!("--workers must be between 1 and 1024 (got {workers})");
    }
    signals::block();

    let offloads = config.offloads && !options.no_offloads;
    if !config.tun_name.contains('%')
        && !link::wait_until_gone(&config.tun_name, Duration::from_secs(3))
    {
        bail!(
            "interface {} already exists: is another concentrator running with this tun_name? \
             Stop it, or choose another tun_name",
            config.tun_name
        );
    }
    let mut tun =
        Tun::open(&config.tun_name, workers, offloads).context("creating the TUN device")?;
    let tun_offloads = if offloads {
        tun.set_vnet_hdr_size(VNET_HDR_LEN as i32)
            .context("setting the TUN virtio header size")?;
        tun.enable_offloads()
    } else {
        0
    };
    let dev = tun.name().to_string();
    link::add_address(&dev, IpNet::V4(config.address)).context("setting the TUN address")?;
    if let Some(a6) = config.address6 {
        link::add_address(&dev, IpNet::V6(a6)).context("setting the TUN IPv6 address")?;
    }
    link::set_up(&dev, config.mtu as u32).context("bringing the TUN up")?;

    let mut setup = Setup {
        masquerade: None,
        masquerade6: None,
        previous_forwarding: None,
        previous_forwarding6: None,
    };
    // Clients reach hosts behind the server, so the kernel must forward.
    setup.previous_forwarding =
        Some(link::set_ip_forward(true, true).context("enabling IPv4 forwarding")?);
    if config.address6.is_some() {
        setup.previous_forwarding6 =
            Some(link::set_ip_forward(false, true).context("enabling IPv6 forwarding")?);
    }
    if let Some(iface) = &config.nat {
        let subnet = IpNet::V4(config.address.trunc());
        setup.masquerade =
            Some(nft::Masquerade::install(subnet, iface).context("installing the NAT rule")?);
    }
    if let (Some(iface), Some(a6)) = (&config.nat6, config.address6) {
        setup.masquerade6 = Some(
            nft::Masquerade::install(IpNet::V6(a6.trunc()), iface)
                .context("installing the NAT66 rule")?,
        );
    }

    let sockets = bind_sockets(&config, workers)?;
    if offloads {
        for socket in sockets.iter().flatten() {
            if let Err(e) = udp::set_udp_gro(socket.as_fd(), true) {
                tracing::warn!(error = %e, "UDP GRO unavailable; receiving datagram by datagram");
            }
        }
    }
    let reply_sockets = sockets[0]
        .iter()
        .map(|s| s.try_clone())
        .collect::<std::io::Result<Vec<_>>>()?;

    let now = clock::monotonic_now();
    let mut server = Server::new(
        StaticSecret::from_bytes(*config.private_key.to_bytes()),
        now,
        &mut OsRandom,
    );
    let table = Arc::new(SessionTable::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (hs_tx, hs_rx) = crossbeam_channel::bounded(HANDSHAKE_QUEUE);
    let hs_stats = Arc::new(HandshakeStats::default());
    let _ = &mut server;
    let mut control = Control::new(
        server,
        table.clone(),
        hs_rx,
        reply_sockets,
        hs_stats.clone(),
        stop.clone(),
    );
    for peer in concentrator::control::reload::peer_specs(&config) {
        control.add_peer(peer);
    }
    // Operator's side: commands to the control thread, the control socket, the metrics port.
    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(64);
    let load = Arc::new(concentrator::control::LoadSignal::default());
    let mut control = control.with_commands(cmd_rx).with_load_signal(load.clone());
    control.set_addressing(Addressing::of(&config));
    let socket_path = config
        .control_socket
        .clone()
        .unwrap_or_else(|| ops::socket::default_path(&dev));
    let control_socket = Arc::new(ControlSocket::bind(&socket_path)?);
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr).with_context(|| format!("binding metrics_listen {addr}"))?,
        ),
        None => None,
    };
    if let Some(dir) = &config.latency_log_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating latency_log_dir {}", dir.display()))?;
    }
    // Drop root before any thread exists: threads inherit the capabilities of this one.
    if let Some(user) = &config.user {
        let (uid, gid) = privs::lookup(user)?;
        control_socket
            .chown(uid, gid)
            .context("handing the control socket to the user")?;
        if let Some(dir) = &config.latency_log_dir {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .context("handing latency_log_dir to the user")?;
        }
        privs::drop_to(uid, gid).with_context(|| format!("dropping privileges to {user}"))?;
        tracing::info!(user = %user, uid, gid, "running as an unprivileged user with CAP_NET_ADMIN");
    }

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mac_keys = Arc::new(concentrator::proto::cookie::MacKeys::new(
        config.private_key.public_key().as_bytes(),
    ));
    let counters: Vec<Arc<SharedCounters>> = (0..workers)
        .map(|_| Arc::new(SharedCounters::default()))
        .collect();
    let latencies: Vec<Arc<SharedLatency>> = (0..workers)
        .map(|_| Arc::new(SharedLatency::default()))
        .collect();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    for ((id, queue), socks) in tun.take_queues().into_iter().enumerate().zip(sockets) {
        let ctx = WorkerContext {
            id,
            core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
            tun: queue,
            sockets: socks,
            table: table.clone(),
            handshakes: hs_tx.clone(),
            counters: counters[id].clone(),
            latency: latencies[id].clone(),
            stop: stop.clone(),
            client_to_client: config.client_to_client,
            mac_keys: mac_keys.clone(),
            load: load.clone(),
            cookie_secrets: control.shared_cookie_secrets(),
            offloads,
        };
        let ready = ready_tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || worker::run(ctx, ready))?,
        );
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(anyhow::Error::new(e).context("starting a worker")),
            Err(_) => failure = Some(anyhow::anyhow!("a worker thread died during start-up")),
        }
    }
    if let Some(e) = failure {
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }
    drop(hs_tx);
    threads.push(
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control.run())?,
    );

    let listen_port = config.listen_port;
    let peer_count = config.peers.len();
    let per_peer = config.metrics_per_peer;
    let latency_log = config
        .latency_log_dir
        .clone()
        .map(|d| (d, config.latency_log_keep, config.latency_log_interval));
    let ops = Arc::new(Ops::new(
        dev.clone(),
        config_path.to_path_buf(),
        config,
        counters.clone(),
        latencies.clone(),
        hs_stats.clone(),
        cmd_tx,
    ));
    threads.push(ops::socket::spawn(
        control_socket.clone(),
        ops.clone(),
        stop.clone(),
    )?);
    if let Some(listener) = metrics_listener {
        let (ops, stop) = (ops.clone(), stop.clone());
        tracing::info!(address = %listener.local_addr()?, "metrics at http://<address>/metrics");
        threads.push(
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || ops::metrics::serve(listener, ops, per_peer, stop))?,
        );
    }
    let latency_logger = match latency_log {
        Some((dir, keep, interval)) => {
            let mut sources: Vec<(String, latency_log::Source)> = latencies
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("worker-{i}"), latency_log::source(l.clone())))
                .collect();
            let hs = hs_stats.clone();
            sources.push(("handshake".into(), Box::new(move || hs.latency.snapshot())));
            let log = LatencyLog::new(&dir, keep, sources)
                .with_context(|| format!("opening latency_log_dir {}", dir.display()))?;
            let stop = stop.clone();
            Some(
                std::thread::Builder::new()
                    .name("latency-log".into())
                    .spawn(move || log.run(Duration::from_secs(interval), stop))?,
            )
        }
        None => None,
    };

    tracing::info!(
        interface = %dev,
        port = listen_port,
        workers,
        peers = peer_count,
        offloads = %offload_names(offloads, tun_offloads),
        control_socket = %control_socket.path().display(),
        "concentrator is up"
    );
    let _ = notify::notify("READY=1");
    while !stop.load(Ordering::Relaxed) {
        match signals::wait(Duration::from_millis(200)) {
            Some(signals::Signal::Stop) => break,
            Some(signals::Signal::Reload) => {
                tracing::info!("SIGHUP: reloading the configuration");
                if let Err(e) = ops.reload() {
                    tracing::error!("reload refused, the running configuration stays:\n{e}");
                }
            }
            None => {}
        }
    }
    let _ = notify::notify("STOPPING=1");
    tracing::info!("stopping");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    if let Some(logger) = latency_logger {
        // The workers have merged their last records: write the final, partial interval.
        if let Ok(mut log) = logger.join() {
            if let Err(e) = log.write_interval() {
                tracing::warn!(error = %e, "could not write the last latency log interval");
            }
        }
    }
    drop(control_socket);
    for (id, c) in counters.iter().enumerate() {
        let c = c.snapshot();
        tracing::info!(
            worker = id,
            tun_rx = c.tun_rx_packets,
            tun_tx = c.tun_tx_packets,
            udp_rx = c.udp_rx_packets,
            udp_tx = c.udp_tx_packets,
            drops = c.total_drops(),
            drop_reasons = %drop_summary(&c),
            "worker counters"
        );
    }
    if let Some(path) = std::env::var_os(LATENCY_DUMP_ENV) {
        match write_latency_dump(Path::new(&path), &latencies) {
            Ok(()) => {
                tracing::info!(path = %Path::new(&path).display(), "wrote latency histograms")
            }
            Err(e) => tracing::warn!(error = %e, "could not write the latency histograms"),
        }
    }
    drop(setup);
    drop(tun);
    Ok(())
}

/// Names a file that receives the workers' latency histograms when the server stops.
pub const LATENCY_DUMP_ENV: &str = "CONCENTRATOR_LATENCY_DUMP";

/// Writes one line per worker, `<worker id> <HdrHistogram V2, base64>` (nanoseconds, batch
/// received to sent), readable by any HdrHistogram implementation.
fn write_latency_dump(path: &Path, latencies: &[Arc<SharedLatency>]) -> Result<()> {
    use base64::Engine as _;
    use hdrhistogram::serialization::{Serializer as _, V2Serializer};
    let mut text = String::new();
    for (id, l) in latencies.iter().enumerate() {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&l.snapshot(), &mut bytes)
            .map_err(|e| anyhow::anyhow!("serializing worker {id}'s histogram: {e:?}"))?;
        text += &format!(
            "{id} {}\n",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
