//! The client: `concentrator connect --config client.toml`.
//!
//! Two threads: this one receives from the server (opening, coalescing, writing to the TUN) and
//! runs the protocol's timers; a second one reads the TUN (cutting super-packets into segments,
//! sealing, sending them as one UDP_SEGMENT batch). They share the session, whose sealing is
//! lock-free.

use std::net::{SocketAddr, UdpSocket};
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
use concentrator::proto::client::{Client, ClientEvent, ClientParams};
use concentrator::proto::keys::{PresharedKey, StaticSecret};
use concentrator::proto::rng::OsRandom;
use concentrator::proto::session::Session;
use concentrator::proto::wire::{AddressAssignment, TAG_LEN, TRANSPORT_HEADER_LEN};
use concentrator::sys::link::{self, RouteGuard};
use concentrator::sys::{clock, poll, signals, tun, udp};
use concentrator::tunnel::ingress::{self, Offered, TunBatch};
use concentrator::tunnel::{egress, REGION};

/// Reads from one descriptor before looking at the other.
const BURST: usize = 64;

/// The tunnel's TUN, routes and reader thread; all removed on drop (thread, routes, device).
/// Fields drop in order: routes go while the device still exists, then the last queue closes
/// and the kernel removes the device.
struct Tunnel {
    assignment: AddressAssignment,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    _routes: RouteGuard,
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
        std::thread::Builder::new()
            .name("tun-reader".into())
            .spawn(move || read_tun(queue, socket, session, offloads, stop, sent_bytes))?
    };
    tracing::info!(interface = %name, address = %v4, mtu = a.mtu, full_tunnel = config.full_tunnel, offloads, "tunnel up");
    Ok(Tunnel {
        assignment: *a,
        queue,
        stop,
        reader: Some(reader),
        _routes: routes,
        _tun: dev,
        gso_types,
    })
}

/// The TUN reader: packets (or super-packets) out to the server, through the egress path the
/// server uses too (`tunnel::egress`).
fn read_tun(
    queue: OwnedFd,
    socket: UdpSocket,
    session: Arc<Session>,
    offloads: bool,
    stop: Arc<AtomicBool>,
    sent_bytes: Arc<AtomicU64>,
) {
    let mut input = vec![0u8; REGION];
    let mut output = vec![0u8; REGION];
    // Without offloads a packet is read where it is sealed, after the transport header's room.
    let read_at = if offloads { 0 } else { TRANSPORT_HEADER_LEN };
    let read_room = if offloads {
        REGION
    } else {
        REGION - TRANSPORT_HEADER_LEN - TAG_LEN
    };
    while !stop.load(Ordering::Relaxed) {
        let buf = if offloads { &mut input } else { &mut output };
        let room = &mut buf[read_at..read_at + read_room];
        let n = match tun::read_timeout(queue.as_fd(), room, Some(Duration::from_millis(200))) {
            Ok(Some(n)) if n > 0 => n,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "TUN read failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let now = clock::monotonic_now();
        if !offloads {
            if let Ok(len) = session.encrypt(&mut output, n, now) {
                let _ = udp::send_segments(socket.as_fd(), &output[..len], None);
                sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            continue;
        }
        let Ok(train) = egress::seal_super_packet(&input[..n], &mut output, &session, now) else {
            continue;
        };
        sent_bytes.fetch_add(train.plaintext as u64, Ordering::Relaxed);
        for send in train.sends(0) {
            let bytes = &output[send.offset..send.offset + send.len];
            if let Err(e) = udp::send_segments(socket.as_fd(), bytes, send.segment) {
                tracing::debug!(error = %e, "send to server failed");
            }
        }
    }
}

fn underlay_socket(server: SocketAddr, offloads: bool) -> Result<UdpSocket> {
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
    let socket = underlay_socket(config.server_endpoint, offloads)?;
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
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let mut received_bytes = 0u64;
    let mut rng = OsRandom;
    let mut tunnel: Option<Tunnel> = None;
    let mut buf = vec![0u8; REGION];
    let mut coalesce_buf = vec![0u8; REGION];
    let mut small = [0u8; 256];
    tracing::info!(server = %config.server_endpoint, "connecting");
    loop {
        if let Some(signals::Signal::Stop) = signals::wait(Duration::ZERO) {
            break;
        }
        let now = clock::monotonic_now();
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
            let (n, segment) = match udp::recv_gro(socket.as_fd(), &mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "receive failed");
                    break;
                }
            };
            let segment = segment.map_or(n, usize::from).max(1);
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
                            tunnel = Some(bring_up(
                                &config,
                                &a,
                                offloads,
                                &socket,
                                client.session().clone(),
                                sent_bytes.clone(),
                            )?);
                        }
                    }
                    ClientEvent::CookieReceived => {
                        tracing::info!("server under load: the next initiation carries its cookie")
                    }
                    ClientEvent::Keepalive | ClientEvent::Dropped(_) => {}
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
