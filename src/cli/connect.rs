//! The client: `concentrator connect --config client.toml`.
//!
//! This thread is the control thread: it drives the protocol's client (handshakes, rekeys,
//! keepalives, failover between server endpoints) and sets up the tunnel (TUN, addresses,
//! routes, pushed routes and DNS). Before the first handshake it speaks to the server on the
//! socket itself; once connected, the data plane (`concentrator::client::dataplane`, the
//! server's io_uring worker on this TUN and socket) carries every packet both ways and hands
//! this thread only the server's handshake messages and pushes.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use concentrator::client::dataplane::{self, ClientDataplane, DataplaneOptions};
use concentrator::config::ClientConfig;
use concentrator::offload::coalesce::GsoTypes;
use concentrator::offload::vnet::VNET_HDR_LEN;
use concentrator::proto::client::{Client, ClientDrop, ClientEvent, ClientParams};
use concentrator::proto::constants::LIVENESS_PROBE_INTERVAL;
use concentrator::proto::keys::{PresharedKey, StaticSecret};
use concentrator::proto::rng::OsRandom;
use concentrator::proto::wire::{AddressAssignment, PushConfig};
use concentrator::server::dataplane::stats::Counters;
use concentrator::server::handoff::ServerMessage;
use concentrator::sys::dns::{DnsError, DnsGuard};
use concentrator::sys::link::{self, RouteGuard};
use concentrator::sys::{clock, poll, signals, tun, udp};
use concentrator::tunnel::egress_queue;

/// Datagrams read from the socket before the tunnel is up, per wake-up.
const BURST: usize = 64;
/// Longest wait for a message or a timer, so that a stop signal is seen this soon.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

/// The tunnel's TUN, routes and data plane; all removed on drop (worker, routes, device).
/// Fields drop in order: what the server pushed goes first (its routes before the host route
/// to the server that kept the server out of them), then the configuration's routes while the
/// device still exists, then the last queue closes and the kernel removes the device.
struct Tunnel {
    assignment: AddressAssignment,
    dataplane: ClientDataplane,
    pushed: Pushed,
    routes: RouteGuard,
    /// The TUN's name.
    name: String,
    /// Whether `routes` holds a host route to the server along its path outside the tunnel.
    server_pinned: bool,
    _tun: tun::Tun,
    /// A duplicate of the worker's queue, so that the device outlives the routes above.
    _queue: OwnedFd,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.dataplane.stop();
        log_counters(&self.dataplane.counters());
    }
}

/// What the tunnel's data plane needs from the control thread.
struct DataplaneLink<'a> {
    socket: &'a UdpSocket,
    client: &'a Client,
    endpoint: SocketAddr,
    to_control: &'a Sender<ServerMessage>,
}

fn bring_up(
    config: &ClientConfig,
    a: &AddressAssignment,
    offloads: bool,
    plane: DataplaneLink<'_>,
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
    let worker_queue = queue.try_clone().context("duplicating the TUN queue")?;
    let dataplane = ClientDataplane::start(
        worker_queue,
        plane.socket,
        plane.client.session().clone(),
        config.server_public_key,
        plane.endpoint,
        DataplaneOptions {
            offloads,
            gso_types,
            fair_queue: config.fair_queue,
        },
        plane.to_control.clone(),
    )?;
    tracing::info!(interface = %name, address = %v4, mtu = a.mtu, full_tunnel = config.full_tunnel, offloads, "tunnel up");
    Ok(Tunnel {
        assignment: *a,
        dataplane,
        pushed: Pushed::default(),
        routes,
        name,
        server_pinned,
        _tun: dev,
        _queue: queue,
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

/// Logs what the data plane moved and dropped, and what went through its egress queue.
fn log_counters(c: &Counters) {
    tracing::info!(
        sent_bytes = c.tun_rx_bytes,
        received_bytes = c.tun_tx_bytes,
        sent_datagrams = c.udp_tx_packets,
        received_datagrams = c.udp_rx_packets,
        drops = c.total_drops(),
        "data plane"
    );
    let q = &c.queue;
    if q.enqueued_packets > 0 {
        tracing::info!(
            queued_packets = q.enqueued_packets,
            queued_bytes = q.enqueued_bytes,
            ce_marks = q.ce_marks,
            aqm_drops = q.aqm_drops,
            overflow_drops = q.overflow_drops,
            mean_delay_us = q.sojourn.mean().as_micros() as u64,
            max_delay_us = q.sojourn.max_nanos / 1000,
            "upload queue"
        );
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
    if config.server_endpoints.len() > 1 {
        client.set_liveness_probe(Some(LIVENESS_PROBE_INTERVAL));
    }
    let (to_control, from_dataplane) = dataplane::server_messages();
    let mut control = Control {
        config: &config,
        offloads,
        socket: &socket,
        client,
        endpoint: 0,
        tunnel: None,
        to_control,
    };
    tracing::info!(server = %config.server_endpoint, endpoints = config.server_endpoints.len(), "connecting");
    let result = control.run(&from_dataplane);
    tracing::info!("disconnecting");
    if let Some(t) = control.tunnel.take() {
        tear_down(t);
    }
    result
}

/// How long a closed TUN may linger before the client gives up waiting for it.
const TUN_LINGER: Duration = Duration::from_secs(3);

/// Removes `tunnel` and waits for its device to be gone: the worker's ring releases its
/// registered TUN queue asynchronously, and until then the device and its routes remain.
fn tear_down(tunnel: Tunnel) {
    let name = tunnel.name.clone();
    drop(tunnel);
    if !link::wait_until_gone(&name, TUN_LINGER) {
        tracing::warn!(interface = %name, "the TUN device is still there after the tunnel closed");
    }
}

/// The control thread's state.
struct Control<'a> {
    config: &'a ClientConfig,
    offloads: bool,
    socket: &'a UdpSocket,
    client: Client,
    /// Which of the configuration's server endpoints is in use.
    endpoint: usize,
    tunnel: Option<Tunnel>,
    /// A sender for the data plane's queue of server messages (each data plane gets a clone).
    to_control: Sender<ServerMessage>,
}

impl Control<'_> {
    /// Runs until a stop signal, or an error that ends the client.
    fn run(&mut self, from_dataplane: &Receiver<ServerMessage>) -> Result<()> {
        let mut buf = vec![0u8; concentrator::tunnel::REGION];
        let mut small = [0u8; 256];
        loop {
            if let Some(signals::Signal::Stop) = signals::wait(Duration::ZERO) {
                return Ok(());
            }
            let now = clock::monotonic_now();
            if self.client.server_silent(now) {
                self.next_server(now)?;
            }
            while let Some(n) = self.client.poll_transmit(now, &mut OsRandom, &mut small) {
                if let Err(e) = self.socket.send(&small[..n]) {
                    tracing::debug!(error = %e, "send to server failed");
                }
            }
            // Timers may have dropped keypairs (stale keys, an abandoned handshake).
            if let Some(t) = self.tunnel.as_mut() {
                t.dataplane.sync_indexes();
                if t.dataplane.died() {
                    anyhow::bail!(
                        "the data plane stopped (see the error above); restart the client"
                    );
                }
            }
            let wait = (self.client.next_timeout(now) - now).min(SIGNAL_CHECK);
            if self.tunnel.is_some() {
                self.receive_from_dataplane(from_dataplane, wait)?;
            } else {
                self.receive_from_socket(&mut buf, wait)?;
            }
        }
    }

    /// Moves to the next server endpoint (the silent one stopped answering); the same key,
    /// and with a shared registry the same address.
    fn next_server(&mut self, now: concentrator::proto::time::Instant) -> Result<()> {
        let endpoints = &self.config.server_endpoints;
        let silent = endpoints[self.endpoint];
        self.endpoint = (self.endpoint + 1) % endpoints.len();
        let next = endpoints[self.endpoint];
        self.socket
            .connect(next)
            .with_context(|| format!("setting the server address {next}"))?;
        self.client.switch_server(now);
        if let Some(t) = self.tunnel.as_mut() {
            t.dataplane.set_endpoint(next);
            t.dataplane.sync_indexes();
        }
        tracing::warn!(%silent, %next, "the server stopped answering; moving to the next");
        Ok(())
    }

    /// With the tunnel up: waits up to `wait` for what the data plane passes on (the server's
    /// handshake messages and pushes) and handles all of it.
    fn receive_from_dataplane(
        &mut self,
        from_dataplane: &Receiver<ServerMessage>,
        wait: Duration,
    ) -> Result<()> {
        let mut message = match from_dataplane.recv_timeout(wait) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => return Ok(()),
            // This thread holds a sender: never.
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        loop {
            let now = clock::monotonic_now();
            let event = self.client.receive(message.datagram_mut(), now);
            self.handle(event)?;
            match from_dataplane.try_recv() {
                Ok(next) => message = next,
                Err(_) => return Ok(()),
            }
        }
    }

    /// Before the tunnel is up: waits up to `wait` for datagrams from the server on the socket
    /// and handles them (a handshake response, cookie replies, a push).
    fn receive_from_socket(&mut self, buf: &mut [u8], wait: Duration) -> Result<()> {
        let [readable] = poll::readable([self.socket.as_fd()], wait)?;
        if !readable {
            return Ok(());
        }
        for _ in 0..BURST {
            let (n, segment) = match udp::recv_gro(self.socket.as_fd(), buf) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "receive failed");
                    break;
                }
            };
            let segment = segment.map_or(n, usize::from).max(1);
            for start in (0..n).step_by(segment) {
                let end = (start + segment).min(n);
                let now = clock::monotonic_now();
                let event = self.client.receive(&mut buf[start..end], now);
                self.handle(event)?;
            }
            if self.tunnel.is_some() {
                // The data plane receives from now on (what is left in the socket included).
                break;
            }
        }
        Ok(())
    }

    /// Acts on what a datagram from the server was.
    fn handle(&mut self, event: ClientEvent) -> Result<()> {
        match event {
            ClientEvent::Connected(a) => self.connected(a)?,
            ClientEvent::Pushed(push) => {
                tracing::info!(
                    routes = push.routes().len(),
                    dns = push.dns().len(),
                    "the server pushed routes and DNS servers"
                );
                if let Some(t) = self.tunnel.as_mut() {
                    t.apply_push(self.config, &push);
                }
            }
            ClientEvent::Dropped(ClientDrop::BadPush) => tracing::warn!(
                "the server pushed routes or DNS servers this client cannot read \
                 (malformed, or a newer format); ignored"
            ),
            ClientEvent::CookieReceived => {
                tracing::info!("server under load: the next initiation carries its cookie")
            }
            // Packets come through the data plane once the tunnel is up; before, there is no
            // TUN to write them to.
            ClientEvent::Packet(_)
            | ClientEvent::Keepalive
            | ClientEvent::PushRepeated
            | ClientEvent::Dropped(_) => {}
        }
        Ok(())
    }

    /// A handshake completed with assignment `a`: the tunnel is built (or rebuilt, for a new
    /// address), and the data plane learns the new keypair's index.
    fn connected(&mut self, a: AddressAssignment) -> Result<()> {
        if self.tunnel.as_ref().is_some_and(|t| t.assignment != a) {
            tracing::info!("the server assigned a new address; rebuilding the tunnel");
            if let Some(t) = self.tunnel.take() {
                tear_down(t);
            }
        }
        if let Some(t) = self.tunnel.as_mut() {
            t.dataplane.sync_indexes();
            return Ok(());
        }
        let plane = DataplaneLink {
            socket: self.socket,
            client: &self.client,
            endpoint: self.config.server_endpoints[self.endpoint],
            to_control: &self.to_control,
        };
        let mut t = bring_up(self.config, &a, self.offloads, plane)?;
        // A rebuilt tunnel keeps what the server pushed before (it pushes again after this
        // handshake, and only a change is reported).
        if !self.client.pushed().is_empty() {
            t.apply_push(self.config, self.client.pushed());
        }
        self.tunnel = Some(t);
        Ok(())
    }
}
