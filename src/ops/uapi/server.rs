//! The UAPI socket: `/var/run/wireguard/<interface>.sock` (directory 0700 if created, socket
//! 0600), where `wg` looks for userspace interfaces. Every connection gets its own thread, up
//! to [`MAX_CONNECTIONS`] at once, and may carry several operations; a client that sends
//! nothing for [`IDLE_TIMEOUT`], or takes longer than [`REQUEST_TIMEOUT`] over one request,
//! is dropped. So a slow or stuck client holds one thread for a bounded time and never the
//! accept loop, the other clients or the control thread.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::protocol::{self, format_status, frame, parse_set, Errno, Framed, MAX_REQUEST};
use super::Ops;
use crate::ops::socket::bind_private;

/// Where `wg` looks for userspace interfaces (wireguard-tools `ipc-uapi-unix.h`: `SOCK_PATH`
/// is `RUNSTATEDIR "/wireguard/"`).
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Connections served at once; one more is closed at once (its client sees the connection
/// end and can retry).
pub const MAX_CONNECTIONS: usize = 16;
/// A connection that sends nothing this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most one request may take to arrive once it has begun.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most writing one answer may take (a client that does not read).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read at a time.
const READ_CHUNK: usize = 64 * 1024;

/// The socket path of interface `interface`.
pub fn socket_path(interface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{interface}.sock"))
}

/// The bound UAPI socket; its file is removed on drop.
pub struct UapiSocket {
    listener: UnixListener,
    path: PathBuf,
    created_dir: bool,
}

impl UapiSocket {
    /// Binds `path` (see [`bind_private`]): a live socket there (another WireGuard
    /// implementation or server with this interface name) is refused, a stale one replaced.
    pub fn bind(path: &Path) -> Result<Self> {
        let (listener, created_dir) = bind_private(
            path,
            "set uapi = false (or another tun_name) in server.toml",
        )?;
        Ok(UapiSocket {
            listener,
            path: path.to_path_buf(),
            created_dir,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the socket (and its directory when this server created it) to `uid:gid`, so the
    /// server can still remove it after dropping privileges.
    pub fn chown(&self, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))?;
        if let (true, Some(dir)) = (self.created_dir, self.path.parent()) {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Accepts connections until `stop`, each served on its own thread.
    pub fn serve(&self, ops: &Arc<Ops>, stop: &AtomicBool) {
        if let Err(e) = self.listener.set_nonblocking(true) {
            tracing::error!(error = %e, "UAPI socket unusable");
            return;
        }
        let active = Arc::new(AtomicUsize::new(0));
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => self.start_connection(stream, ops, &active),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "UAPI socket accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn start_connection(&self, stream: UnixStream, ops: &Arc<Ops>, active: &Arc<AtomicUsize>) {
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "UAPI connection refused: too many at once"
            );
            return;
        }
        let (ops, held) = (ops.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("uapi-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &ops) {
                    tracing::debug!(error = %e, "UAPI connection ended");
                }
                held.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            // The closure (and the stream) are gone with the failed spawn.
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "UAPI connection dropped: no thread for it");
        }
    }
}

impl Drop for UapiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts the accept thread.
pub fn spawn(
    socket: Arc<UapiSocket>,
    ops: Arc<Ops>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("uapi".into())
        .spawn(move || socket.serve(&ops, &stop))
}

/// Serves one connection's operations until it closes, misbehaves or times out.
fn serve_connection(mut stream: UnixStream, ops: &Ops) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut scanned = 0;
    // When the request now in the buffer began (None: nothing buffered).
    let mut begun: Option<Instant> = None;
    loop {
        let (answer, consumed) = match frame(&buf, scanned) {
            Framed::NeedMore => {
                if buf.len() >= MAX_REQUEST {
                    tracing::warn!(
                        limit = MAX_REQUEST,
                        "UAPI request too large; connection closed"
                    );
                    return stream.write_all(format_status(Err(Errno::Invalid)).as_bytes());
                }
                let timeout = match begun {
                    None => IDLE_TIMEOUT,
                    Some(t) => match REQUEST_TIMEOUT.checked_sub(t.elapsed()) {
                        Some(left) if !left.is_zero() => left.min(IDLE_TIMEOUT),
                        _ => return Err(std::io::ErrorKind::TimedOut.into()),
                    },
                };
                stream.set_read_timeout(Some(timeout))?;
                scanned = buf.len();
                let mut chunk = vec![0u8; READ_CHUNK.min(MAX_REQUEST - buf.len())];
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                begun.get_or_insert_with(Instant::now);
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Framed::Unknown => {
                tracing::debug!("invalid UAPI operation; connection closed");
                return Ok(());
            }
            Framed::Get { consumed } => (answer_get(ops), consumed),
            Framed::GetTrailing { consumed } => {
                tracing::warn!("UAPI get: trailing characters after get=1");
                (format_status(Err(Errno::Invalid)).into(), consumed)
            }
            Framed::Set { body, consumed } => {
                let status = parse_set(body).and_then(|r| super::set(ops, r));
                (answer_status(status, "set"), consumed)
            }
        };
        stream.write_all(answer.as_bytes())?;
        buf.drain(..consumed);
        scanned = 0;
        begun = (!buf.is_empty()).then(Instant::now);
    }
}

/// The `get` answer with its status line.
fn answer_get(ops: &Ops) -> zeroize::Zeroizing<String> {
    match super::get(ops) {
        Ok(mut text) => {
            text.push_str(&format_status(Ok(())));
            text
        }
        Err(e) => answer_status(Err(e), "get"),
    }
}

/// The status line of an operation, logging a failure.
fn answer_status(
    status: Result<(), protocol::UapiError>,
    operation: &str,
) -> zeroize::Zeroizing<String> {
    let status = status.map_err(|e| {
        tracing::warn!(
            operation,
            errno = e.errno.code(),
            "UAPI {operation} refused: {}",
            e.message
        );
        e.errno
    });
    format_status(status).into()
}
