//! The headend, started from a validated configuration: [`Engine::prepare`] does what needs
//! privileges (TUN, forwarding, NAT, sockets), [`Prepared::start`] starts the workers and the
//! control thread, and the [`Engine`] handle stops them, reads their counters and carries the
//! operator's peer commands. The binary adds only option parsing, the privilege drop, the
//! operations threads and signals around it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::control::command::{Addressing, Command};
use super::control::routes::{DeviceRoutes, KernelRoutes};
use super::control::{reload, Control, HandshakeStats};
use super::dataplane::stats::{Counters, DropReason, SharedCounters};
use super::dataplane::worker::{self, InjectedPanic, WorkerContext};
pub use super::error::{EngineError, MAX_WORKERS};
use super::handoff::{LoadSignal, WorkerRole, HANDSHAKE_QUEUE};
use super::host::Host;
use super::latency::SharedLatency;
use super::session_table::SessionTable;
use super::threads::Essential;
use crate::config::ServerConfig;
use crate::offload::coalesce::GsoTypes;
use crate::proto::cookie::ServerMacKeys;
use crate::proto::keys::StaticSecret;
use crate::proto::rng::OsRandom;
use crate::proto::server::Server;
use crate::sys::clock;

/// How to run a configuration.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Worker threads, one TUN queue and one socket per listen address each.
    pub workers: usize,
    /// TUN and UDP offloads (the configuration's `offloads` unless overridden).
    pub offloads: bool,
}

/// A server whose host side is set up and whose threads have not started yet.
pub struct Prepared {
    options: EngineOptions,
    host: Host,
}

/// A running server.
pub struct Engine {
    host: Host,
    threads: Essential,
    stop: Arc<AtomicBool>,
    commands: Sender<Command>,
    counters: Vec<Arc<SharedCounters>>,
    latencies: Vec<Arc<SharedLatency>>,
    handshakes: Arc<HandshakeStats>,
    offload_names: String,
}

impl Engine {
    /// Sets up the host for `config`: everything that needs privileges, so that the caller can
    /// drop them before [`Prepared::start`] creates any thread.
    pub fn prepare(config: &ServerConfig, options: EngineOptions) -> Result<Prepared, EngineError> {
        if options.workers == 0 || options.workers > MAX_WORKERS {
            return Err(EngineError::Workers(options.workers));
        }
        let host = Host::set_up(config, options.workers, options.offloads)?;
        Ok(Prepared { options, host })
    }
}

impl Prepared {
    /// The TUN device's name.
    pub fn interface(&self) -> &str {
        self.host.interface()
    }

    /// Starts the workers, waits until each has its ring, then starts the control thread, for
    /// the `config` this was prepared with.
    pub fn start(self, config: &ServerConfig) -> Result<Engine, EngineError> {
        let Prepared { options, host } = self;
        let injected_panic = InjectedPanic::from_env()?;
        if let Some(fault) = injected_panic {
            tracing::warn!(
                worker = fault.worker,
                after_packets = fault.after_packets,
                "FAULT INJECTION: {} is set, this worker will panic (a knob for tests only)",
                worker::INJECT_PANIC_ENV
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (control, wiring) = build_control(config, &host, stop.clone())?;
        let mut engine = Engine {
            offload_names: host.offload_names(options.offloads),
            threads: Essential::new(stop.clone()),
            stop,
            commands: wiring.commands.clone(),
            counters: (0..options.workers).map(|_| Arc::default()).collect(),
            latencies: (0..options.workers).map(|_| Arc::default()).collect(),
            handshakes: wiring.handshakes.clone(),
            host,
        };
        engine.start_workers(config, options, &wiring, injected_panic)?;
        drop(wiring);
        engine
            .threads
            .spawn("control".into(), "the control thread".into(), move || {
                control.run()
            })
            .map_err(|source| EngineError::Io {
                what: "starting the control thread".into(),
                source,
            })?;
        Ok(engine)
    }
}

/// What the control thread shares with the workers and the operator.
struct Wiring {
    handshakes_tx: Sender<super::handoff::HandshakeMessage>,
    commands: Sender<Command>,
    handshakes: Arc<HandshakeStats>,
    load: Arc<LoadSignal>,
    cookie_secrets: super::handoff::SharedCookieSecrets,
    mac_keys: Arc<ServerMacKeys>,
    table: Arc<SessionTable>,
}

/// The control thread with the configured peers, and what it shares.
fn build_control(
    config: &ServerConfig,
    host: &Host,
    stop: Arc<AtomicBool>,
) -> Result<(Control, Wiring), EngineError> {
    let reply_sockets = host.sockets[0]
        .iter()
        .map(|s| s.try_clone())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|source| EngineError::Io {
            what: "duplicating a socket for the control thread".into(),
            source,
        })?;
    let server = Server::new(
        StaticSecret::from_bytes(*config.private_key.to_bytes()),
        clock::monotonic_now(),
        &mut OsRandom,
    );
    let table = Arc::new(SessionTable::new());
    let (handshakes_tx, handshakes_rx) = crossbeam_channel::bounded(HANDSHAKE_QUEUE);
    let (commands, commands_rx) = crossbeam_channel::bounded(64);
    let handshakes = Arc::new(HandshakeStats::default());
    let load = Arc::new(LoadSignal::default());
    let mut control = Control::new(
        server,
        table.clone(),
        handshakes_rx,
        reply_sockets,
        handshakes.clone(),
        stop,
    );
    control.set_kernel_routes(KernelRoutes::new(Box::new(DeviceRoutes {
        dev: host.interface().to_string(),
    })));
    for peer in reload::peer_specs(config) {
        control.add_peer(peer);
    }
    // Problems are logged; a route the host already had does not stop the start.
    control.flush_routes();
    let mut control = control
        .with_commands(commands_rx)
        .with_load_signal(load.clone());
    control.set_addressing(Addressing::of(config));
    let wiring = Wiring {
        handshakes_tx,
        commands,
        handshakes,
        load,
        cookie_secrets: control.shared_cookie_secrets(),
        mac_keys: Arc::new(ServerMacKeys::new(
            config.private_key.public_key().as_bytes(),
        )),
        table,
    };
    Ok((control, wiring))
}

impl Engine {
    /// One worker per TUN queue, each pinned to a core; returns once every ring is set up.
    fn start_workers(
        &mut self,
        config: &ServerConfig,
        options: EngineOptions,
        wiring: &Wiring,
        injected_panic: Option<InjectedPanic>,
    ) -> Result<(), EngineError> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let sockets = std::mem::take(&mut self.host.sockets);
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        for ((id, queue), sockets) in self
            .host
            .tun
            .take_queues()
            .into_iter()
            .enumerate()
            .zip(sockets)
        {
            let ctx = WorkerContext {
                id,
                core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
                tun: queue,
                sockets,
                table: wiring.table.clone(),
                handshakes: wiring.handshakes_tx.clone(),
                role: WorkerRole::Server,
                counters: self.counters[id].clone(),
                latency: self.latencies[id].clone(),
                stop: self.stop.clone(),
                client_to_client: config.client_to_client,
                mss_clamp: config.mss_clamp.then_some(config.mtu),
                mac_keys: wiring.mac_keys.clone(),
                load: wiring.load.clone(),
                cookie_secrets: wiring.cookie_secrets.clone(),
                offloads: options.offloads,
                fair_queue: config.fair_queue,
                gso_types: GsoTypes::from_tun_offloads(self.host.tun_offloads),
                panic_after_packets: injected_panic
                    .filter(|fault| fault.worker == id)
                    .map(|fault| fault.after_packets),
            };
            let ready = ready_tx.clone();
            self.threads
                .spawn(format!("worker-{id}"), format!("worker {id}"), move || {
                    worker::run(ctx, ready)
                })
                .map_err(|source| EngineError::Io {
                    what: format!("starting worker {id}"),
                    source,
                })?;
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..options.workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(EngineError::WorkerStart(e)),
                Err(_) => failure = Some(EngineError::WorkerLost),
            }
        }
        match failure {
            Some(e) => {
                self.threads.stop_and_join();
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// The TUN device's name.
    pub fn interface(&self) -> &str {
        self.host.interface()
    }

    /// The offloads in force, by name ("off" without).
    pub fn offload_names(&self) -> &str {
        &self.offload_names
    }

    /// The flag every thread of the server watches; set by [`Engine::stop`] and by a thread
    /// that dies. Threads started beside the engine (operations) watch it too.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Whether the server is stopping (asked to, or a thread died).
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether an essential thread died.
    pub fn thread_died(&self) -> bool {
        self.threads.any_died()
    }

    /// The queue of commands to the control thread (peers, snapshots, reloads).
    pub fn commands(&self) -> Sender<Command> {
        self.commands.clone()
    }

    /// Per-worker published counters.
    pub fn counters(&self) -> &[Arc<SharedCounters>] {
        &self.counters
    }

    /// Per-worker latency histograms.
    pub fn latencies(&self) -> &[Arc<SharedLatency>] {
        &self.latencies
    }

    /// The handshake counters and latency.
    pub fn handshake_stats(&self) -> Arc<HandshakeStats> {
        self.handshakes.clone()
    }

    /// Stops every thread and waits for them; logs the workers' counters. The host side (TUN,
    /// NAT, forwarding) is undone when the engine is dropped. An error when a thread had died.
    pub fn stop(&mut self) -> Result<(), EngineError> {
        let deaths = self.threads.stop_and_join();
        for (id, c) in self.counters.iter().enumerate() {
            log_counters(id, &c.snapshot());
        }
        if deaths.is_empty() {
            Ok(())
        } else {
            Err(EngineError::ThreadsDied(deaths))
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.threads.stop_and_join();
    }
}

fn log_counters(worker: usize, c: &Counters) {
    let reasons = DropReason::ALL
        .iter()
        .filter(|r| c.drops[**r as usize] > 0)
        .map(|r| format!("{}={}", r.name(), c.drops[*r as usize]))
        .collect::<Vec<_>>()
        .join(",");
    tracing::info!(
        worker,
        tun_rx = c.tun_rx_packets,
        tun_tx = c.tun_tx_packets,
        udp_rx = c.udp_rx_packets,
        udp_tx = c.udp_tx_packets,
        udp_sends = c.udp_tx_sends,
        drops = c.total_drops(),
        drop_reasons = %reasons,
        "worker counters"
    );
}
