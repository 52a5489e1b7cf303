//! The client's tunnel: its TUN device, addresses and routes, what the server pushed, and the
//! data plane running on it; all removed when it drops.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use concentrator::client::dataplane::{ClientDataplane, DataplaneOptions};
use concentrator::config::ClientConfig;
use concentrator::offload::coalesce::GsoTypes;
use concentrator::offload::vnet::VNET_HDR_LEN;
use concentrator::proto::client::Client;
use concentrator::proto::wire::{AddressAssignment, PushConfig};
use concentrator::server::dataplane::stats::Counters;
use concentrator::server::handoff::ServerMessage;
use concentrator::sys::dns::{DnsError, DnsGuard};
use concentrator::sys::link::{self, RouteGuard};
use concentrator::sys::tun;
use concentrator::tunnel::egress_queue;

/// The tunnel's TUN, routes and data plane; all removed on drop (worker, routes, device).
/// Fields drop in order: what the server pushed goes first (its routes before the host route
/// to the server that kept the server out of them), then the configuration's routes while the
/// device still exists, then the last queue closes and the kernel removes the device.
pub(super) struct Tunnel {
    pub(super) assignment: AddressAssignment,
    pub(super) dataplane: ClientDataplane,
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
pub(super) struct DataplaneLink<'a> {
    pub(super) socket: &'a UdpSocket,
    pub(super) client: &'a Client,
    pub(super) endpoint: SocketAddr,
    pub(super) to_control: &'a Sender<ServerMessage>,
}

/// Creates the TUN for assignment `a`, its addresses and routes, and starts its data plane.
pub(super) fn bring_up(
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
    pub(super) fn apply_push(&mut self, config: &ClientConfig, push: &PushConfig) {
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

/// Logs what the data plane moved and dropped, and what went through its egress queue.
fn log_counters(c: &Counters) {
    tracing::info!(
        sent_bytes = c.tun_rx_bytes,
        received_bytes = c.tun_tx_bytes,
        sent_datagrams = c.udp_tx_packets,
        sends = c.udp_tx_sends,
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

/// How long a closed TUN may linger before the client gives up waiting for it.
const TUN_LINGER: Duration = Duration::from_secs(3);

/// Removes `tunnel` and waits for its device to be gone: the worker's ring releases its
/// registered TUN queue asynchronously, and until then the device and its routes remain.
pub(super) fn tear_down(tunnel: Tunnel) {
    let name = tunnel.name.clone();
    drop(tunnel);
    if !link::wait_until_gone(&name, TUN_LINGER) {
        tracing::warn!(interface = %name, "the TUN device is still there after the tunnel closed");
    }
}
