//! Why a server did not start, or stopped on its own: the errors of `engine` and of the host
//! set-up it runs first (`host`).

use std::net::SocketAddr;

use super::threads::ThreadDeath;
use crate::server::dataplane::worker::BadInjectedPanic;
use crate::sys::error::SysError;

/// Most workers a server runs.
pub const MAX_WORKERS: usize = 1024;

/// Why a server did not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A set-up step failed in the kernel.
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: SysError,
    },
    /// A set-up step failed with an I/O error.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A worker's socket could not be bound.
    #[error("binding UDP {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: SysError,
    },
    /// The TUN device's name is taken.
    #[error(
        "interface {0} already exists: is another concentrator running with this tun_name? \
         Stop it, or choose another tun_name"
    )]
    InterfaceExists(String),
    /// Someone holds the UDP port.
    #[error(
        "UDP port {} is already in use on {}: stop the other process or change listen_port",
        .0.port(), .0.ip()
    )]
    PortInUse(SocketAddr),
    /// The worker count is out of range.
    #[error("--workers must be between 1 and {MAX_WORKERS} (got {0})")]
    Workers(usize),
    /// A worker could not set up its ring.
    #[error("starting a worker")]
    WorkerStart(#[source] SysError),
    /// A worker thread ended during its set-up.
    #[error("a worker thread died during start-up")]
    WorkerLost,
    /// The fault-injection knob is malformed.
    #[error(transparent)]
    FaultInjection(#[from] BadInjectedPanic),
    /// Essential threads died while the server ran.
    #[error(
        "{}. The server stopped so that its service manager restarts it (left running, it \
         would drop a share of the traffic)",
        describe(.0)
    )]
    ThreadsDied(Vec<ThreadDeath>),
}

fn describe(deaths: &[ThreadDeath]) -> String {
    deaths
        .iter()
        .map(|d| format!("{} died ({})", d.thread, d.reason))
        .collect::<Vec<_>>()
        .join("; ")
}
