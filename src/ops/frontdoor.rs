//! The operator's doors to a running engine: the control socket, the metrics port and the
//! latency-log directory. Bound before the privilege drop (a socket in /run, a low port), served
//! by their own threads once the engine runs, and closed after its workers have stopped (so the
//! last latency interval holds their last records).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use super::latency_log::{self, LatencyLog};
use super::socket::{self, ControlSocket};
use super::uapi::server::{self as uapi, UapiSocket};
use super::Ops;
use crate::config::ServerConfig;
use crate::server::engine::Engine;

/// The bound doors, not yet served.
pub struct FrontDoor {
    control_socket: Arc<ControlSocket>,
    uapi_socket: Option<Arc<UapiSocket>>,
    metrics: Option<TcpListener>,
    latency_log_dir: Option<PathBuf>,
}

/// The doors being served.
pub struct Served {
    threads: Vec<JoinHandle<()>>,
    latency_log: Option<JoinHandle<LatencyLog>>,
    control_socket: Arc<ControlSocket>,
    uapi_socket: Option<Arc<UapiSocket>>,
}

impl FrontDoor {
    /// Binds the control socket (by default `/run/concentrator/<interface>.sock`), the UAPI
    /// socket (`/var/run/wireguard/<interface>.sock`, with `uapi = true`) and the metrics
    /// port, and creates the latency-log directory, as `config` says.
    pub fn bind(config: &ServerConfig, interface: &str) -> Result<Self> {
        let path = config
            .control_socket
            .clone()
            .unwrap_or_else(|| socket::default_path(interface));
        let control_socket = Arc::new(ControlSocket::bind(&path)?);
        let uapi_socket = if config.uapi {
            let path = uapi::socket_path(interface);
            Some(Arc::new(UapiSocket::bind(&path).context(
                "the WireGuard UAPI socket (uapi = true) cannot be opened",
            )?))
        } else {
            None
        };
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .with_context(|| format!("binding metrics_listen {addr}"))?,
            ),
            None => None,
        };
        if let Some(dir) = &config.latency_log_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating latency_log_dir {}", dir.display()))?;
        }
        Ok(FrontDoor {
            control_socket,
            uapi_socket,
            metrics,
            latency_log_dir: config.latency_log_dir.clone(),
        })
    }

    /// The control socket's path.
    pub fn control_socket_path(&self) -> &Path {
        self.control_socket.path()
    }

    /// The UAPI socket's path, when it is served.
    pub fn uapi_socket_path(&self) -> Option<&Path> {
        self.uapi_socket.as_deref().map(UapiSocket::path)
    }

    /// Hands what was created as root to `uid:gid`, so the server can still use and remove it
    /// after dropping privileges.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<()> {
        self.control_socket
            .chown(uid, gid)
            .context("handing the control socket to the user")?;
        if let Some(uapi) = &self.uapi_socket {
            uapi.chown(uid, gid)
                .context("handing the UAPI socket to the user")?;
        }
        if let Some(dir) = &self.latency_log_dir {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .context("handing latency_log_dir to the user")?;
        }
        Ok(())
    }

    /// Serves the doors for `engine` until its stop flag is set.
    pub fn serve(self, engine: &Engine, ops: Arc<Ops>) -> Result<Served> {
        let stop = engine.stop_flag();
        let mut threads = vec![socket::spawn(
            self.control_socket.clone(),
            ops.clone(),
            stop.clone(),
        )?];
        if let Some(uapi_socket) = &self.uapi_socket {
            threads.push(uapi::spawn(uapi_socket.clone(), ops.clone(), stop.clone())?);
        }
        if let Some(listener) = self.metrics {
            let (ops, stop) = (ops.clone(), stop.clone());
            let per_peer = ops.running.metrics_per_peer;
            tracing::info!(address = %listener.local_addr()?, "metrics at http://<address>/metrics");
            threads.push(
                std::thread::Builder::new()
                    .name("metrics".into())
                    .spawn(move || super::metrics::serve(listener, ops, per_peer, stop))?,
            );
        }
        let latency_log = match &self.latency_log_dir {
            Some(dir) => Some(spawn_latency_log(dir, engine, &ops, stop)?),
            None => None,
        };
        Ok(Served {
            threads,
            latency_log,
            control_socket: self.control_socket,
            uapi_socket: self.uapi_socket,
        })
    }
}

/// The latency-log writer: one file per interval with every worker's and the handshakes'
/// histograms.
fn spawn_latency_log(
    dir: &Path,
    engine: &Engine,
    ops: &Ops,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<LatencyLog>> {
    let mut sources: Vec<(String, latency_log::Source)> = engine
        .latencies()
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("worker-{i}"), latency_log::source(l.clone())))
        .collect();
    let handshakes = engine.handshake_stats();
    sources.push((
        "handshake".into(),
        Box::new(move || handshakes.latency.snapshot()),
    ));
    let log = LatencyLog::new(dir, ops.running.latency_log_keep, sources)
        .with_context(|| format!("opening latency_log_dir {}", dir.display()))?;
    let interval = Duration::from_secs(ops.running.latency_log_interval);
    Ok(std::thread::Builder::new()
        .name("latency-log".into())
        .spawn(move || log.run(interval, stop))?)
}

impl Served {
    /// Waits for the doors' threads (the engine's stop flag must be set), writes the last,
    /// partial latency interval and removes the control and UAPI sockets.
    pub fn close(self) {
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(logger) = self.latency_log {
            if let Ok(mut log) = logger.join() {
                if let Err(e) = log.write_interval() {
                    tracing::warn!(error = %e, "could not write the last latency log interval");
                }
            }
        }
        drop(self.control_socket);
        drop(self.uapi_socket);
    }
}
