//! What the server sets up on the host before any thread starts, all of it needing privileges:
//! the multi-queue TUN device with its addresses and offloads, forwarding, the NAT rule, and one
//! `SO_REUSEPORT` socket per listen address per worker. Undone in reverse on drop.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use ipnet::IpNet;

use super::error::EngineError;
use crate::config::ServerConfig;
use crate::offload::vnet::VNET_HDR_LEN;
use crate::sys::error::SysError;
use crate::sys::tun::{Tun, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
use crate::sys::{link, nft, udp};

/// How long a start waits for a TUN device or a UDP port still held by a server that just
/// stopped (the kernel tears down its io_uring and device asynchronously).
const LINGER: Duration = Duration::from_secs(3);

/// The host's side of a running server.
pub struct Host {
    /// The TUN device (its queues are taken by the workers).
    pub tun: Tun,
    /// The offloads the TUN accepted (`TUN_F_*`; 0 without offloads).
    pub tun_offloads: u32,
    /// Per worker, one socket per listen address.
    pub sockets: Vec<Vec<UdpSocket>>,
    /// Held for its `Drop`: the NAT rule and forwarding are put back when the host goes.
    _undo: Undo,
}

/// Host settings to put back on drop.
struct Undo {
    /// The masquerade rules of `nat` (IPv4) and `nat6` (IPv6).
    masquerade: Option<nft::Masquerade>,
    masquerade6: Option<nft::Masquerade>,
    /// The forwarding sysctls this server switched on (`true`: IPv4, `false`: IPv6): only
    /// those are switched off again.
    forwarding_switched_on: Vec<bool>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        for m in [self.masquerade.take(), self.masquerade6.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = m.remove() {
                tracing::warn!(error = %e, "could not remove the NAT rules");
            }
        }
        for &v4 in &self.forwarding_switched_on {
            if let Err(e) = link::set_ip_forward(v4, false) {
                tracing::warn!(error = %e, "could not switch forwarding back off");
            }
        }
    }
}

fn sys(what: &'static str) -> impl FnOnce(SysError) -> EngineError {
    move |source| EngineError::Sys { what, source }
}

impl Host {
    /// Sets the host up for `config` with `workers` queues and sockets.
    pub fn set_up(
        config: &ServerConfig,
        workers: usize,
        offloads: bool,
    ) -> Result<Host, EngineError> {
        if !config.tun_name.contains('%') && !link::wait_until_gone(&config.tun_name, LINGER) {
            return Err(EngineError::InterfaceExists(config.tun_name.clone()));
        }
        let tun = Tun::open(&config.tun_name, workers, offloads)
            .map_err(sys("creating the TUN device"))?;
        let tun_offloads = if offloads {
            tun.set_vnet_hdr_size(VNET_HDR_LEN as i32)
                .map_err(sys("setting the TUN virtio header size"))?;
            tun.enable_offloads()
        } else {
            0
        };
        let dev = tun.name().to_string();
        link::add_address(&dev, IpNet::V4(config.address))
            .map_err(sys("setting the TUN address"))?;
        if let Some(a6) = config.address6 {
            link::add_address(&dev, IpNet::V6(a6)).map_err(sys("setting the TUN IPv6 address"))?;
        }
        link::set_up(&dev, config.mtu as u32).map_err(sys("bringing the TUN up"))?;
        if config.fair_queue {
            link::set_tx_queue_len(&dev, crate::tunnel::egress_queue::TUN_TX_QUEUE_LEN)
                .map_err(sys("setting the TUN's queue length"))?;
        }
        let undo = Undo::apply(config)?;
        let sockets = bind_sockets(config, workers)?;
        if config.fair_queue {
            for socket in sockets.iter().flatten() {
                udp::set_send_buffer(socket, crate::tunnel::egress_queue::SOCKET_SEND_BUFFER);
            }
        }
        if offloads {
            for socket in sockets.iter().flatten() {
                if let Err(e) = udp::set_udp_gro(socket.as_fd(), true) {
                    tracing::warn!(error = %e, "UDP GRO unavailable; receiving datagram by datagram");
                }
            }
        }
        Ok(Host {
            tun,
            tun_offloads,
            sockets,
            _undo: undo,
        })
    }

    /// The TUN device's name.
    pub fn interface(&self) -> &str {
        self.tun.name()
    }

    /// The offloads in force, for the start-up log.
    pub fn offload_names(&self, enabled: bool) -> String {
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
            .filter(|(f, _)| self.tun_offloads & f != 0)
            .map(|(_, n)| *n)
            .collect();
        parts.extend(["udp-gro", "udp-gso"]);
        parts.join(",")
    }
}

impl Undo {
    /// Forwarding on (clients reach hosts behind the server) and the NAT rule, remembering what
    /// to put back.
    fn apply(config: &ServerConfig) -> Result<Undo, EngineError> {
        let mut undo = Undo {
            masquerade: None,
            masquerade6: None,
            forwarding_switched_on: Vec::new(),
        };
        if !link::set_ip_forward(true, true).map_err(sys("enabling IPv4 forwarding"))? {
            undo.forwarding_switched_on.push(true);
        }
        if config.address6.is_some()
            && !link::set_ip_forward(false, true).map_err(sys("enabling IPv6 forwarding"))?
        {
            undo.forwarding_switched_on.push(false);
        }
        if let Some(iface) = &config.nat {
            let subnet = IpNet::V4(config.address.trunc());
            undo.masquerade = Some(
                nft::Masquerade::install(subnet, iface).map_err(sys("installing the NAT rule"))?,
            );
        }
        if let (Some(iface), Some(a6)) = (&config.nat6, config.address6) {
            undo.masquerade6 = Some(
                nft::Masquerade::install(IpNet::V6(a6.trunc()), iface)
                    .map_err(sys("installing the NAT66 rule"))?,
            );
        }
        Ok(undo)
    }
}

/// One `SO_REUSEPORT` socket per listen address for each of `workers`.
fn bind_sockets(config: &ServerConfig, workers: usize) -> Result<Vec<Vec<UdpSocket>>, EngineError> {
    let addrs: Vec<SocketAddr> = config
        .listen_addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, config.listen_port))
        .collect();
    for addr in &addrs {
        probe_port_free(*addr)?;
    }
    (0..workers)
        .map(|_| {
            addrs
                .iter()
                .map(|a| {
                    udp::bind_reuseport(*a).map_err(|source| EngineError::Bind { addr: *a, source })
                })
                .collect()
        })
        .collect()
}

/// `SO_REUSEPORT` would silently share the port with another instance of ours: probe first
/// with a plain bind, which fails if anyone holds the port. A process killed a moment ago may
/// still hold it while the kernel tears down its io_uring, so a port in use is retried for
/// [`LINGER`] before it is an error.
fn probe_port_free(addr: SocketAddr) -> Result<(), EngineError> {
    let deadline = std::time::Instant::now() + LINGER;
    loop {
        match UdpSocket::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(EngineError::PortInUse(addr))
            }
            Err(source) => {
                return Err(EngineError::Io {
                    what: format!("cannot bind UDP {addr}"),
                    source,
                })
            }
        }
    }
}
