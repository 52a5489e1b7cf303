//! The client: `concentrator connect --config client.toml`.
//!
//! This thread is the control thread: it drives the protocol's client (handshakes, rekeys,
//! keepalives, failover between server endpoints) and sets up the tunnel (TUN, addresses,
//! routes, pushed routes and DNS). Before the first handshake it speaks to the server on the
//! socket itself; once connected, the data plane (`concentrator::client::dataplane`, the
//! server's io_uring worker on this TUN and socket) carries every packet both ways and hands
//! this thread only the server's handshake messages and pushes.

mod tunnel;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use concentrator::client::dataplane;
use concentrator::config::ClientConfig;
use concentrator::proto::client::{Client, ClientDrop, ClientEvent, ClientParams};
use concentrator::proto::constants::LIVENESS_PROBE_INTERVAL;
use concentrator::proto::keys::{PresharedKey, StaticSecret};
use concentrator::proto::rng::OsRandom;
use concentrator::proto::wire::AddressAssignment;
use concentrator::server::handoff::ServerMessage;
use concentrator::sys::{clock, poll, signals, udp};
use concentrator::tunnel::egress_queue;

use tunnel::{bring_up, tear_down, DataplaneLink, Tunnel};

/// Datagrams read from the socket before the tunnel is up, per wake-up.
const BURST: usize = 64;
/// Longest wait for a message or a timer, so that a stop signal is seen this soon.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

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
