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
    let mut chunk = vec![0u8; READ_CHUNK];
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
                let room = READ_CHUNK.min(MAX_REQUEST - buf.len());
                let n = stream.read(&mut chunk[..room])?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{key_file, temp_dir};
    use crate::config::ServerConfig;
    use crate::server::control::command::{Command, KeyedSnapshot, PeerSet, Snapshot};
    use std::io::BufRead;

    /// Operations state whose control thread answers every `get` with no peers and every
    /// peer of a `set` with "absent"; it ends with the returned `Ops`.
    fn ops() -> Arc<Ops> {
        let dir = temp_dir("uapi-ops");
        key_file(&dir, "server.key", &[7; 32]);
        let text = "private_key_file = \"server.key\"\naddress = \"10.66.0.1/24\"\n";
        let (config, _) = ServerConfig::from_toml_str(text, &dir).unwrap();
        let (commands, control) = crossbeam_channel::bounded(4);
        std::thread::spawn(move || {
            for command in control {
                match command {
                    Command::KeyedSnapshot(reply) => {
                        let _ = reply.send(KeyedSnapshot {
                            snapshot: Snapshot {
                                peers: Vec::new(),
                                now: crate::sys::clock::monotonic_now(),
                            },
                            psks: Default::default(),
                        });
                    }
                    Command::SetPeer(_, reply) => {
                        let _ = reply.send(Ok(PeerSet::Absent));
                    }
                    _ => {}
                }
            }
        });
        Arc::new(Ops::new(
            "ctr-test".into(),
            dir.join("server.toml"),
            config,
            vec![Arc::default()],
            vec![Arc::default()],
            Arc::default(),
            commands,
        ))
    }

    /// Sends `request` and reads the answer up to its blank line.
    fn ask(stream: &mut std::io::BufReader<UnixStream>, request: &str) -> String {
        stream.get_mut().write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        loop {
            let mut line = String::new();
            assert!(stream.read_line(&mut line).unwrap() > 0, "closed: {answer}");
            if line == "\n" {
                return answer;
            }
            answer.push_str(&line);
        }
    }

    #[test]
    fn stuck_clients_do_not_block_others_and_each_answer_carries_its_errno() {
        let ops = ops();
        let dir = temp_dir("uapi-socket");
        let path = dir.join("wg-test.sock");
        let socket = Arc::new(UapiSocket::bind(&path).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let stop = Arc::new(AtomicBool::new(false));
        let server = spawn(socket.clone(), ops.clone(), stop.clone()).unwrap();

        let _idle = UnixStream::connect(&path).unwrap();
        let mut stuck = UnixStream::connect(&path).unwrap();
        stuck.write_all(b"set=1\nlisten_port=5").unwrap();
        let client = UnixStream::connect(&path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut client = std::io::BufReader::new(client);
        let private = ops.running.private_key.to_bytes();
        let private_hex: String = private.iter().map(|b| format!("{b:02x}")).collect();
        let answer = ask(&mut client, "get=1\n\n");
        assert_eq!(
            answer,
            format!("private_key={private_hex}\nlisten_port=51820\nerrno=0\n")
        );
        // Several operations on one connection, each with its status.
        let cases = [
            ("set=1\nlisten_port=51821\n\n", "errno=-98\n"),
            ("set=1\nfwmark=1\n\n", "errno=-98\n"),
            (
                &*format!("set=1\nprivate_key={}\n\n", "ab".repeat(32)),
                "errno=-22\n",
            ),
            ("set=1\nreplace_peers=true\n\n", "errno=-22\n"),
            ("set=1\nmtu=1420\n\n", "errno=-22\n"),
            ("set=1\nlisten_port\n\n", "errno=-71\n"),
            (
                &*format!(
                    "set=1\nprivate_key={private_hex}\nlisten_port=51820\nfwmark=0\n\
                     public_key={}\nallowed_ip=10.99.0.0/24\n\n",
                    "cd".repeat(32)
                ),
                "errno=0\n",
            ),
            ("get=1\nx", "errno=-22\n"),
        ];
        for (request, status) in cases {
            assert_eq!(ask(&mut client, request), status, "{request:?}");
        }
        // An unknown operation ends the connection without an answer, as the reference does.
        client.get_mut().write_all(b"del=1\n\n").unwrap();
        let mut rest = String::new();
        assert_eq!(client.read_line(&mut rest).unwrap(), 0, "{rest}");

        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        drop(socket);
        assert!(!path.exists(), "the socket goes with the server");
    }

    #[test]
    fn an_oversized_request_is_refused_and_the_connection_closed() {
        let ops = ops();
        let path = temp_dir("uapi-socket").join("wg-big.sock");
        let socket = Arc::new(UapiSocket::bind(&path).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let server = spawn(socket.clone(), ops, stop.clone()).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // A valid line repeated past the limit, never ending the request.
        let line = b"listen_port=51820\n";
        let mut request = b"set=1\n".to_vec();
        while request.len() <= MAX_REQUEST {
            request.extend_from_slice(line);
        }
        let writer = {
            let mut client = client.try_clone().unwrap();
            // The server stops reading at the limit: the rest may not be taken.
            std::thread::spawn(move || drop(client.write_all(&request)))
        };
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        assert_eq!(answer, "errno=-22\n\n");
        writer.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    }
}
