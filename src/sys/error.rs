//! The error type of the kernel edge.

use std::io;
use std::net::SocketAddr;

/// What went wrong at the kernel edge, phrased so that an operator knows what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// `/dev/net/tun` does not exist.
    #[error("/dev/net/tun not found: load the tun module (modprobe tun)")]
    TunMissing,
    /// The kernel refused an operation for lack of privileges.
    #[error("permission denied {what}: run as root or with CAP_NET_ADMIN")]
    PermissionDenied {
        /// What was being attempted, e.g. "opening /dev/net/tun".
        what: String,
    },
    /// A UDP port is already taken by a socket without `SO_REUSEPORT` (or of another user).
    #[error(
        "UDP port {} already in use (binding {addr}): stop the other process or choose another port",
        addr.port()
    )]
    AddrInUse {
        /// The address that could not be bound.
        addr: SocketAddr,
    },
    /// An external program is not installed.
    #[error("`{program}` not found: install {package}")]
    ToolMissing {
        /// The program that was run, e.g. `nft`.
        program: &'static str,
        /// The distribution package that provides it.
        package: &'static str,
    },
    /// An external program exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line that was run.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// The output of a program or a kernel file could not be understood.
    #[error("could not parse {what}: {detail}")]
    Parse {
        /// What was being parsed.
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// A caller passed a value the kernel cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Any other system call failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being attempted.
        what: String,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
}

impl SysError {
    /// Wraps an OS error, turning `EPERM`/`EACCES` into [`SysError::PermissionDenied`].
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        let what = what.into();
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => SysError::PermissionDenied { what },
            _ => SysError::Io { what, source },
        }
    }

    /// The last OS error (`errno`), wrapped as by [`SysError::io`].
    pub fn last_os_error(what: impl Into<String>) -> Self {
        Self::io(what, io::Error::last_os_error())
    }
}
