//! The client: `concentrator connect --config client.toml`.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use concentrator::config::ClientConfig;
use concentrator::proto::client::{Client, ClientConfig as ProtoClientConfig, ClientEvent};
use concentrator::proto::keys::{PresharedKey, StaticSecret};
use concentrator::proto::rng::OsRandom;
use concentrator::proto::wire::{AddressAssignment, TAG_LEN, TRANSPORT_HEADER_LEN};
use concentrator::sys::link::{self, RouteGuard};
use concentrator::sys::{clock, poll, signals, tun};

const BUF: usize = 2048;
/// Most packets handled from one descriptor before looking at the other.
const BURST: usize = 64;

/// The tunnel's TUN and routes; removed on drop (routes first, then the device).
struct Tunnel {
    routes: RouteGuard,
    queue: OwnedFd,
    _tun: tun::Tun,
}

fn bring_up(config: &ClientConfig, a: &AddressAssignment) -> Result<Tunnel> {
    let mut dev = tun::Tun::open(&config.tun_name, 1, false).context("creating the TUN device")?;
    let name = dev.name().to_string();
    let v4 = Ipv4Net::new(a.ipv4, a.ipv4_prefix).context("server sent a bad IPv4 prefix")?;
    link::add_address(&name, IpNet::V4(v4))?;
    if let Some((v6, prefix)) = a.ipv6 {
        link::add_address(
            &name,
            IpNet::V6(Ipv6Net::new(v6, prefix).context("server sent a bad IPv6 prefix")?),
        )?;
    }
    link::set_up(&name, a.mtu as u32)?;
    let mut routes = RouteGuard::new();
    if config.full_tunnel {
        // Keep the tunnel's own packets on the path they use now, before the /1 routes win.
        let server = config.server_endpoint.ip();
        let via = link::route_get(server).context("finding the current route to the server")?;
        routes
            .add_host_route_via(server, &via)
            .context("adding the host route to the server")?;
    }
    for net in config.tunnel_routes() {
        if net.addr().is_ipv6() && a.ipv6.is_none() && !config.full_tunnel {
            tracing::warn!(%net, "the server gave no IPv6 address; routing this network anyway");
        }
        routes
            .add_route(net, &name)
            .with_context(|| format!("adding route {net} via {name}"))?;
    }
    let queue = dev
        .take_queues()
        .pop()
        .context("TUN device without a queue")?;
    tracing::info!(interface = %name, address = %v4, mtu = a.mtu, full_tunnel = config.full_tunnel, "tunnel up");
    Ok(Tunnel {
        routes,
        queue,
        _tun: dev,
    })
}

fn underlay_socket(server: SocketAddr) -> Result<UdpSocket> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(bind).context("creating the UDP socket")?;
    s.connect(server)
        .with_context(|| format!("setting the server address {server}"))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Runs the client until SIGINT or SIGTERM.
pub fn run(config_path: &Path) -> Result<()> {
    let (config, warnings) = ClientConfig::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    signals::block();
    let socket = underlay_socket(config.server_endpoint)?;
    let now = clock::monotonic_now();
    let mut client = Client::new(
        ProtoClientConfig {
            secret: StaticSecret::from_bytes(*config.private_key.to_bytes()),
            server: config.server_public_key,
            psk: config
                .preshared_key
                .as_ref()
                .map(|k| PresharedKey::from_bytes(*k.as_bytes()))
                .unwrap_or_else(PresharedKey::zero),
            persistent_keepalive: config.persistent_keepalive,
        },
        now,
        clock::wall_clock(),
    );
    let mut rng = OsRandom;
    let mut tunnel: Option<Tunnel> = None;
    let mut buf = vec![0u8; BUF];
    tracing::info!(server = %config.server_endpoint, "connecting");
    loop {
        if let Some(signals::Signal::Stop) = signals::wait(Duration::ZERO) {
            break;
        }
        let now = clock::monotonic_now();
        while let Some(n) = client.poll_transmit(now, &mut rng, &mut buf) {
            if let Err(e) = socket.send(&buf[..n]) {
                tracing::debug!(error = %e, "send to server failed");
            }
        }
        let wait = (client.next_timeout(now) - now).min(Duration::from_millis(200));
        let ready = match &tunnel {
            Some(t) => poll::readable([socket.as_fd(), t.queue.as_fd()], wait)?,
            None => {
                let [udp] = poll::readable([socket.as_fd()], wait)?;
                [udp, false]
            }
        };
        if ready[0] {
            for _ in 0..BURST {
                let n = match socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "receive failed");
                        break;
                    }
                };
                let now = clock::monotonic_now();
                match client.receive(&mut buf[..n], now) {
                    ClientEvent::Packet(range) => {
                        if let Some(t) = &tunnel {
                            let _ = tun::write(t.queue.as_fd(), &buf[range]);
                        }
                    }
                    ClientEvent::Connected(a) => {
                        if tunnel.is_none() {
                            tunnel = Some(bring_up(&config, &a)?);
                        } else {
                            tracing::debug!("rekeyed");
                        }
                    }
                    ClientEvent::CookieReceived => {
                        tracing::info!("server under load: retrying with a cookie")
                    }
                    ClientEvent::Keepalive | ClientEvent::Dropped(_) => {}
                }
            }
        }
        if let (true, Some(t)) = (ready[1], &tunnel) {
            for _ in 0..BURST {
                let room = BUF - TRANSPORT_HEADER_LEN - TAG_LEN;
                let n = match tun::read_timeout(
                    t.queue.as_fd(),
                    &mut buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + room],
                    Some(Duration::ZERO),
                )? {
                    Some(n) if n > 0 => n,
                    _ => break,
                };
                let now = clock::monotonic_now();
                if let Ok(len) = client.encrypt(&mut buf, n, now) {
                    let _ = socket.send(&buf[..len]);
                }
            }
        }
    }
    tracing::info!("disconnecting");
    if let Some(t) = tunnel {
        drop(t.routes);
    }
    Ok(())
}
