//! The client: `concentrator connect --config client.toml`.
//!
//! Two threads: this one receives from the server (opening, coalescing, writing to the TUN) and
//! runs the protocol's timers; a second one reads the TUN (cutting super-packets into segments,
//! sealing, sending them as one UDP_SEGMENT batch). They share the session, whose sealing is
//! lock-free.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use concentrator::config::ClientConfig;
use concentrator::offload::coalesce::GsoTypes;
use concentrator::offload::vnet::VNET_HDR_LEN;
use concentrator::proto::client::{Client, ClientDrop, ClientEvent, ClientParams};
use concentrator::proto::constants::LIVENESS_PROBE_INTERVAL;
use concentrator::proto::keys::{PresharedKey, StaticSecret};
use concentrator::proto::rng::OsRandom;
use concentrator::proto::session::Session;
use concentrator::proto::wire::{AddressAssignment, PushConfig};
use concentrator::sys::dns::{DnsError, DnsGuard};
use concentrator::sys::link::{self, RouteGuard};
use concentrator::sys::{clock, poll, signals, tun, udp};
use concentrator::tunnel::ecn::{self, Ecn};
use concentrator::tunnel::ingress::{self, Offered, TunBatch};
use concentrator::tunnel::{egress_queue, REGION};

/// Reads from one descriptor before looking at the other.
const BURST: usize = 64;

/// The tunnel's TUN, routes and reader thread; all removed on drop (thread, routes, device).
/// Fields drop in order: what the server pushed goes first (its routes before the host route
/// to the server that kept the server out of them), then the configuration's routes while the
/// device still exists, then the last queue closes and the kernel removes the device.
struct Tunnel {
    assignment: AddressAssignment,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    pushed: Pushed,
    routes: RouteGuard,
    /// The TUN's name.
    name: String,
    /// Whether `routes` holds a host route to the server along its path outside the tunnel.
    server_pinned: bool,
    _tun: tun::Tun,
    queue: OwnedFd,
    /// The super-packets the TUN takes in writes (the offloads it accepted).
    gso_types: GsoTypes,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn bring_up(
    config: &ClientConfig,
    a: &AddressAssignment,
    offloads: bool,
    socket: &UdpSocket,
    session: Arc<Session>,
    sent_bytes: Arc<AtomicU64>,
) -> Result<Tunnel> {
    // A device of this name still being torn down (a previous client's) would be joined and
    // then vanish: wait for it first.
    if !config.tun_name.contains('%')
        && !link::wait_until_gone(&config.tun_name, Duration::from_secs(3))
    {
        anyhow::bail!(
            "interface {} already exists: is another client running with this tun_name?",
            config.tun_name
        );
    }
    let mut dev =
        tun::Tun::open(&config.tun_name, 1, offloads).context("creating the TUN device")?;
    let gso_types = if offloads {
        dev.set_vnet_hdr_size(VNET_HDR_LEN as i32)?;
        GsoTypes::from_tun_offloads(dev.enable_offloads())
    } else {
        GsoTypes::NONE
    };
    let name = dev.name().to_string();
    let v4 = Ipv4Net::new(a.ipv4, a.ipv4_prefix).context("server sent a bad IPv4 prefix")?;
    link::add_address(&name, IpNet::V4(v4))?;
    if let Some((v6, prefix)) = a.ipv6 {
        let net = Ipv6Net::new(v6, prefix).context("server sent a bad IPv6 prefix")?;
        link::add_address(&name, IpNet::V6(net))?;
    }
    link::set_up(&name, a.mtu as u32)?;
    if config.fair_queue {
        link::set_tx_queue_len(&name, egress_queue::TUN_TX_QUEUE_LEN)?;
    }
    let mut routes = RouteGuard::new();
    let server_pinned = config.covers_server(&config.tunnel_routes());
    if server_pinned {
        // Keep the tunnel's own packets on the path they use now, before the /1 routes (or a
        // route covering the server) win.
        pin_server_routes(&mut routes, config, &name)?;
    }
    for net in config.tunnel_routes() {
        routes
            .add_route(net, &name)
            .with_context(|| format!("adding route {net} via {name}"))?;
    }
    let queue = dev
        .take_queues()
        .pop()
        .context("TUN device without a queue")?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let queue = queue.try_clone().context("duplicating the TUN queue")?;
        let socket = socket.try_clone().context("duplicating the UDP socket")?;
        let stop = stop.clone();
        let fair_queue = config.fair_queue;
        std::thread::Builder::new()
            .name("tun-reader".into())
            .spawn(move || {
                super::upload::read_tun(
                    queue, socket, session, offloads, fair_queue, stop, sent_bytes,
                )
            })?
    };
    tracing::info!(interface = %name, address = %v4, mtu = a.mtu, full_tunnel = config.full_tunnel, offloads, "tunnel up");
    Ok(Tunnel {
        assignment: *a,
        queue,
        stop,
        reader: Some(reader),
        pushed: Pushed::default(),
        routes,
        name,
        server_pinned,
        _tun: dev,
        gso_types,
    })
}

/// [`pin_server_route`] for every server endpoint of `config`.
fn pin_server_routes(routes: &mut RouteGuard, config: &ClientConfig, tun: &str) -> Result<()> {
    for server in &config.server_endpoints {
        pin_server_route(routes, server.ip(), tun)?;
    }
    Ok(())
}

/// Adds a host route to `server` along the path the kernel takes to it now, unless that path
/// already goes into the tunnel `tun` (nothing to keep then).
fn pin_server_route(routes: &mut RouteGuard, server: IpAddr, tun: &str) -> Result<()> {
    let via = link::route_get(server).context("finding the current route to the server")?;
    if via.dev == tun {
        tracing::warn!(%server, "the route to the server already goes into the tunnel");
        return Ok(());
    }
    routes
        .add_host_route_via(server, &via)
        .context("adding the host route to the server")
}

/// What the server pushed, as installed on the tunnel: routes through the TUN and the DNS
/// servers of its link. Removed on drop.
#[derive(Default)]
struct Pushed {
    routes: RouteGuard,
    dns: Option<DnsGuard>,
    dns_servers: Vec<IpAddr>,
}

impl Tunnel {
    /// Makes the pushed routes and DNS servers exactly those of `push` (merged with the
    /// configuration's routes: one it routes already is not added twice). A route that would
    /// take the server's address into the tunnel gets a host route to the server first. A
    /// route or DNS server that cannot be set is reported and left out; the tunnel stays up.
    fn apply_push(&mut self, config: &ClientConfig, push: &PushConfig) {
        let wanted = config.pushed_routes(push, &self.assignment);
        let installed: Vec<IpNet> = self.pushed.routes.routes().iter().map(|r| r.0).collect();
        let stale: Vec<IpNet> = installed
            .iter()
            .filter(|r| !wanted.contains(r))
            .copied()
            .collect();
        for net in &stale {
            if let Err(e) = self.pushed.routes.remove_route(*net, &self.name) {
                tracing::warn!(route = %net, error = %e, "could not remove a pushed route");
            }
        }
        let mut new: Vec<IpNet> = wanted
            .into_iter()
            .filter(|r| !installed.contains(r))
            .collect();
        if !self.server_pinned && config.covers_server(&new) {
            match pin_server_routes(&mut self.routes, config, &self.name) {
                Ok(()) => self.server_pinned = true,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "pushed routes that contain a server's address are left out, or the tunnel would loop");
                    new.retain(|r| !config.covers_server(&[*r]));
                }
            }
        }
        for net in &new {
            if let Err(e) = self.pushed.routes.add_route(*net, &self.name) {
                tracing::warn!(route = %net, error = %e, "could not add a pushed route");
            }
        }
        if !stale.is_empty() || !new.is_empty() {
            let routes: Vec<String> = self
                .pushed
                .routes
                .routes()
                .iter()
                .map(|r| r.0.to_string())
                .collect();
            tracing::info!(interface = %self.name, routes = %routes.join(","), "pushed routes installed");
        }
        self.apply_pushed_dns(push.dns());
    }

    fn apply_pushed_dns(&mut self, servers: &[IpAddr]) {
        if self.pushed.dns_servers == servers {
            return;
        }
        self.pushed.dns_servers = servers.to_vec();
        let list: Vec<String> = servers.iter().map(IpAddr::to_string).collect();
        let list = list.join(",");
        if servers.is_empty() {
            // Dropping the guard takes the servers back.
            self.pushed.dns = None;
            return;
        }
        if let Some(guard) = self.pushed.dns.as_mut() {
            match guard.replace(servers) {
                Ok(()) => {
                    tracing::info!(interface = %self.name, dns = %list, tool = guard.tool().program(), "pushed DNS servers set")
                }
                Err(e) => {
                    tracing::warn!(dns = %list, error = %e, "could not set the pushed DNS servers")
                }
            }
            return;
        }
        match DnsGuard::set(&self.name, servers) {
            Ok(guard) => {
                tracing::info!(interface = %self.name, dns = %list, tool = guard.tool().program(), "pushed DNS servers set");
                self.pushed.dns = Some(guard);
            }
            Err(e @ DnsError::NoTool) => {
                tracing::warn!(dns = %list, "the server pushed DNS servers, but {e}")
            }
            Err(e) => {
                tracing::warn!(dns = %list, error = %e, "could not set the pushed DNS servers")
            }
        }
    }
}

fn underlay_socket(server: SocketAddr, offloads: bool, fair_queue: bool) -> Result<UdpSocket> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(bind).context("creating the UDP socket")?;
    s.connect(server)
        .with_context(|| format!("setting the server address {server}"))?;
    s.set_nonblocking(true)?;
    // The default receive buffer (rmem_default, ~208 KiB) overflows under a burst from the
    // server (a GSO train or a TUN batch): raise it as the server does for its sockets.
    udp::raise_buffers(&s);
    // The outer ECN field of each datagram, for decapsulation (RFC 6040 §4.2).
    udp::set_receive_tos(&s, server.is_ipv6()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if fair_queue {
        udp::set_send_buffer(&s, egress_queue::SOCKET_SEND_BUFFER);
    }
    if offloads {
        if let Err(e) = udp::set_udp_gro(s.as_fd(), true) {
            tracing::warn!(error = %e, "UDP GRO unavailable");
        }
    }
    Ok(s)
}

/// Writes a frame the ingress path completed to the TUN.
fn write_frame(queue: &OwnedFd, frame: &[u8]) {
    if let Err(e) = tun::write(queue.as_fd(), frame) {
        tracing::debug!(error = %e, "TUN write failed");
    }
}

/// Runs the client until SIGINT or SIGTERM.
pub fn run(config_path: &Path, no_offloads: bool) -> Result<()> {
    let (config, warnings) = ClientConfig::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let offloads = config.offloads && !no_offloads;
    signals::block();
    let socket = underlay_socket(config.server_endpoint, offloads, config.fair_queue)?;
    let now = clock::monotonic_now();
    let psk = config
        .preshared_key
        .as_ref()
        .map(|k| PresharedKey::from_bytes(*k.as_bytes()))
        .unwrap_or_else(PresharedKey::zero);
    let mut client = Client::new(
        ClientParams {
            secret: StaticSecret::from_bytes(*config.private_key.to_bytes()),
            server: config.server_public_key,
            psk,
            persistent_keepalive: config.persistent_keepalive,
        },
        now,
        clock::wall_clock(),
    );
    let endpoints = &config.server_endpoints;
    let mut endpoint = 0;
    if endpoints.len() > 1 {
        client.set_liveness_probe(Some(LIVENESS_PROBE_INTERVAL));
    }
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let mut received_bytes = 0u64;
    let mut rng = OsRandom;
    let mut tunnel: Option<Tunnel> = None;
    let mut buf = vec![0u8; REGION];
    let mut coalesce_buf = vec![0u8; REGION];
    let mut small = [0u8; 256];
    tracing::info!(server = %config.server_endpoint, endpoints = endpoints.len(), "connecting");
    loop {
        if let Some(signals::Signal::Stop) = signals::wait(Duration::ZERO) {
            break;
        }
        let now = clock::monotonic_now();
        if client.server_silent(now) {
            // Only with several endpoints: the next one takes over (same key, and with a
            // shared registry the same address).
            let silent = endpoints[endpoint];
            endpoint = (endpoint + 1) % endpoints.len();
            socket
                .connect(endpoints[endpoint])
                .with_context(|| format!("setting the server address {}", endpoints[endpoint]))?;
            client.switch_server(now);
            tracing::warn!(%silent, next = %endpoints[endpoint], "the server stopped answering; moving to the next");
        }
        while let Some(n) = client.poll_transmit(now, &mut rng, &mut small) {
            if let Err(e) = socket.send(&small[..n]) {
                tracing::debug!(error = %e, "send to server failed");
            }
        }
        let wait = (client.next_timeout(now) - now).min(Duration::from_millis(200));
        let [readable] = poll::readable([socket.as_fd()], wait)?;
        if !readable {
            continue;
        }
        for _ in 0..BURST {
            let (n, control) = match udp::recv_with_control(socket.as_fd(), &mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "receive failed");
                    break;
                }
            };
            let segment = control.gro_segment_size.map_or(n, usize::from).max(1);
            // One value for a whole GRO receive: the kernel merges only equal TOS bytes.
            let outer_ecn = Ecn::from_tos(control.tos.unwrap_or(0));
            let now = clock::monotonic_now();
            let gso_types = tunnel.as_ref().map_or(GsoTypes::NONE, |t| t.gso_types);
            let mut batch = TunBatch::new(&mut coalesce_buf, gso_types);
            for start in (0..n).step_by(segment) {
                let end = (start + segment).min(n);
                match client.receive(&mut buf[start..end], now) {
                    ClientEvent::Packet(range) => {
                        received_bytes += range.len() as u64;
                        let Some(t) = &tunnel else { continue };
                        let at = start + range.start..start + range.end;
                        if ecn::decapsulate(outer_ecn, &mut buf[at.clone()]).is_err() {
                            // CE on a packet that is not ECN-capable: a drop (RFC 6040 §4.2).
                            continue;
                        }
                        if !offloads {
                            write_frame(&t.queue, &buf[at]);
                            continue;
                        }
                        let mut write = |f: ingress::TunFrame<'_>| write_frame(&t.queue, f.bytes);
                        if batch.offer(&buf[at.clone()], &mut write) == Offered::WriteAlone {
                            // The transport header's room before the packet takes its header.
                            if let Some(frame) = ingress::frame_in_place(&mut buf, at) {
                                write_frame(&t.queue, &buf[frame]);
                            }
                        }
                    }
                    ClientEvent::Connected(a) => {
                        if tunnel.as_ref().is_some_and(|t| t.assignment != a) {
                            tracing::info!(
                                "the server assigned a new address; rebuilding the tunnel"
                            );
                            tunnel = None;
                        }
                        if tunnel.is_none() {
                            let mut t = bring_up(
                                &config,
                                &a,
                                offloads,
                                &socket,
                                client.session().clone(),
                                sent_bytes.clone(),
                            )?;
                            // A rebuilt tunnel keeps what the server pushed before (it pushes
                            // again after this handshake, and only a change is reported).
                            if !client.pushed().is_empty() {
                                t.apply_push(&config, client.pushed());
                            }
                            tunnel = Some(t);
                        }
                    }
                    ClientEvent::Pushed(push) => {
                        tracing::info!(
                            routes = push.routes().len(),
                            dns = push.dns().len(),
                            "the server pushed routes and DNS servers"
                        );
                        if let Some(t) = tunnel.as_mut() {
                            t.apply_push(&config, &push);
                        }
                    }
                    ClientEvent::Dropped(ClientDrop::BadPush) => tracing::warn!(
                        "the server pushed routes or DNS servers this client cannot read \
                         (malformed, or a newer format); ignored"
                    ),
                    ClientEvent::CookieReceived => {
                        tracing::info!("server under load: the next initiation carries its cookie")
                    }
                    ClientEvent::Keepalive
                    | ClientEvent::PushRepeated
                    | ClientEvent::Dropped(_) => {}
                }
            }
            if let Some(t) = &tunnel {
                batch.flush(&mut |f| write_frame(&t.queue, f.bytes));
            }
        }
    }
    tracing::info!(
        sent_bytes = sent_bytes.load(Ordering::Relaxed),
        received_bytes,
        "disconnecting"
    );
    drop(tunnel);
    Ok(())
}
