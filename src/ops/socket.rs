//! The control socket: a unix stream socket (directory 0700, socket 0600) answering one JSON
//! request per connection with one JSON line. The messages are the typed ones of
//! [`protocol`](super::protocol), e.g.:
//! - `{"cmd":"show","offset":0,"limit":50}`
//! - `{"cmd":"peer_add","public_key":"<base64>","address":"10.66.0.9","address6":null,"psk":"<base64>"}`
//! - `{"cmd":"peer_remove","public_key":"<base64>"}`
//! - `{"cmd":"reload"}`
//! - `{"cmd":"peers","public_key":"<base64>"}` (every peer without `public_key`; with their
//!   pre-shared keys, for `save` and `peer config`)
//!
//! Every answer has `"ok"`; failures carry `"error"`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::protocol::{
    decode_answer, encode_error, encode_ok, ChangedPeer, PeerAdded, PeerDetail, PeerRemoved,
    PeersReply, ReloadReply, Request,
};
use super::show::show;
use super::Ops;
use crate::proto::keys::{PresharedKey, PublicKey};
use crate::proto::suite::Suite;
use crate::server::control::command::{AddPeer, ReloadReport};

/// Largest request accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// The default socket path for interface `dev`.
pub fn default_path(dev: &str) -> PathBuf {
    PathBuf::from(format!("/run/concentrator/{dev}.sock"))
}

/// The bound socket; its file is removed on drop.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Whether we created the socket's directory (only then is it ours to hand over).
    created_dir: bool,
}

impl ControlSocket {
    /// Binds `path`: creates its directory (0700) if missing, refuses a socket another process
    /// still answers on and anything that is not a socket, replaces a stale socket, and makes
    /// the socket 0600.
    pub fn bind(path: &Path) -> Result<Self> {
        let (listener, created_dir) = bind_private(path, "set control_socket to another path")?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            created_dir,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the socket (and its directory, when we created it or it is /run/concentrator) to
    /// `uid:gid`, so the server can still remove it after dropping privileges. A directory that
    /// is not ours (say /tmp) keeps its owner: removing the socket on exit may then fail, and
    /// the next start replaces the stale file.
    pub fn chown(&self, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))?;
        if let Some(dir) = self.path.parent() {
            if self.created_dir || dir == Path::new("/run/concentrator") {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    /// Answers requests until `stop`. Runs on its own thread; the file stays until drop.
    pub fn serve(&self, ops: &Ops, stop: &AtomicBool) {
        if let Err(e) = self.listener.set_nonblocking(true) {
            tracing::error!(error = %e, "control socket unusable");
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = answer(stream, ops) {
                        tracing::debug!(error = %e, "control request failed");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Binds a unix stream socket at `path` for root's eyes only: creates its directory (0700)
/// if missing, refuses a socket another process still answers on and anything that is not a
/// socket (`fix` says what else the operator can do), replaces a stale socket, and makes the
/// socket 0600. Returns the listener and whether the directory was created.
pub(crate) fn bind_private(path: &Path, fix: &str) -> Result<(UnixListener, bool)> {
    let mut created_dir = false;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            created_dir = true;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    // Not following a symbolic link: what sits at the path itself is what would be removed.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket: remove it or {fix} (the server only replaces a \
                 socket left behind by a stopped process)",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use by another running process; stop it or {fix}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, created_dir))
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts the socket thread.
pub fn spawn(
    socket: Arc<ControlSocket>,
    ops: Arc<Ops>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("control-socket".into())
        .spawn(move || socket.serve(&ops, &stop))
}

fn answer(stream: UnixStream, ops: &Ops) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(ops, req),
        Err(e) => encode_error(&format!(
            "bad request: {e}; commands are show, peer_add, peer_remove, reload, peers, fleet and registry_import"
        )),
    };
    (&stream).write_all(&reply)
}

fn parse_key<T: std::str::FromStr<Err = E>, E: std::fmt::Display>(
    field: &str,
    text: &str,
) -> Result<T, String> {
    text.trim().parse().map_err(|e| format!("{field}: {e}"))
}

/// The answer to a reload report.
pub fn reload_reply(r: ReloadReport) -> ReloadReply {
    ReloadReply {
        added: r.added,
        removed: r.removed,
        changed: r
            .changed
            .into_iter()
            .map(|(public_key, what)| ChangedPeer {
                public_key,
                what: what.into_iter().map(str::to_string).collect(),
            })
            .collect(),
        unchanged: r.unchanged,
        restart_needed: r.restart_needed.into_iter().map(str::to_string).collect(),
        warnings: r.warnings,
    }
}

/// Answers one request with its JSON line.
pub fn handle(ops: &Ops, req: Request) -> Vec<u8> {
    let answer = match req {
        Request::Show { offset, limit } => show(ops, offset, limit).map(|r| encode_ok(&r)),
        Request::PeerAdd {
            public_key,
            address,
            address6,
            psk,
            allowed_ips,
            protocol,
        } => add_peer(
            ops,
            &public_key,
            (address, address6),
            psk.as_deref(),
            allowed_ips,
            protocol.as_deref(),
        )
        .map(|r| encode_ok(&r)),
        Request::PeerRemove { public_key } => parse_key::<PublicKey, _>("public_key", &public_key)
            .and_then(|key| {
                ops.remove_peer(key)?;
                Ok(encode_ok(&PeerRemoved {
                    public_key: key.to_string(),
                }))
            }),
        Request::Reload => ops.reload().map(|r| encode_ok(&reload_reply(r))),
        Request::Peers { public_key } => peers(ops, public_key.as_deref()).map(|r| encode_ok(&r)),
        Request::Fleet => ops.fleet().map(|r| encode_ok(&r)),
        Request::RegistryImport { peers } => ops.registry_import(peers).map(|r| encode_ok(&r)),
    };
    answer.unwrap_or_else(|e| encode_error(&e))
}

/// The suite a `peer_add` asks for (none: native).
fn requested_suite(protocol: Option<&str>) -> Result<Suite, String> {
    match protocol.map(str::trim) {
        None => Ok(Suite::Native),
        Some(name) => match Suite::from_name(name) {
            Some(suite) => Ok(suite),
            None => Err(format!(
                "unknown protocol {name:?}: use \"native\" (the default) or \"wireguard\""
            )),
        },
    }
}

fn add_peer(
    ops: &Ops,
    public_key: &str,
    (address, address6): (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>),
    psk: Option<&str>,
    allowed_ips: Vec<ipnet::IpNet>,
    protocol: Option<&str>,
) -> Result<PeerAdded, String> {
    let public_key: PublicKey = parse_key("public_key", public_key)?;
    if public_key == ops.public_key {
        return Err("that is the server's own public key".into());
    }
    let suite = requested_suite(protocol)?;
    let psk = psk
        .map(|t| PresharedKey::from_base64(t.trim()).map_err(|e| format!("psk: {e}")))
        .transpose()?;
    let added = ops.add_peer(AddPeer {
        public_key,
        psk,
        address,
        address6,
        allowed_ips,
        suite,
    })?;
    let spec = added.config;
    Ok(PeerAdded {
        public_key: spec.public_key.to_string(),
        address: spec.assignment.ipv4.to_string(),
        address6: spec.assignment.ipv6.map(|(a, _)| a.to_string()),
        allowed_ips: spec.allowed_ips.iter().map(|p| p.to_string()).collect(),
        warnings: added.warnings,
    })
}

/// The running peers (only `public_key` when given), with their pre-shared keys.
fn peers(ops: &Ops, public_key: Option<&str>) -> Result<PeersReply, String> {
    let key = public_key
        .map(|k| parse_key::<PublicKey, _>("public_key", k))
        .transpose()?;
    let running = ops.running_peers(key)?;
    let mut peers: Vec<PeerDetail> = running
        .peers
        .into_iter()
        .map(|p| {
            let c = p.config;
            PeerDetail {
                public_key: c.public_key.to_string(),
                address: c.assignment.ipv4,
                address6: c.assignment.ipv6.map(|(a, _)| a),
                allowed_ips: c.allowed_ips,
                protocol: c.suite.name().to_string(),
                psk: (!c.psk.is_zero()).then(|| c.psk.to_base64().to_string()),
                push_routes: p.push.routes().to_vec(),
                push_dns: p.push.dns().to_vec(),
            }
        })
        .collect();
    peers.sort_unstable_by(|a, b| (a.address, &a.public_key).cmp(&(b.address, &b.public_key)));
    // Relative to the server's working directory, which the asking command does not share.
    let config_file = std::env::current_dir()
        .map(|d| d.join(&ops.config_path))
        .unwrap_or_else(|_| ops.config_path.clone());
    Ok(PeersReply {
        public_key: ops.public_key.to_string(),
        config_file,
        public_endpoint: running.public_endpoint,
        subnets: running.subnets,
        peers,
    })
}

/// Client side: sends `req` to the socket at `path` and returns the typed answer.
pub fn request<T: serde::de::DeserializeOwned>(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<T> {
    let stream = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to {}: is the server running (as root, or is --socket right)?",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut out = String::new();
    BufReader::new(&stream)
        .read_line(&mut out)
        .context("reading the answer")?;
    Ok(decode_answer(&out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::temp_dir;

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = temp_dir("control-socket");
        let path = dir.join("control.sock");
        std::fs::write(&path, "an operator's file\n").unwrap();
        let err = ControlSocket::bind(&path).err().expect("bind must refuse");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("not a socket"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "an operator's file\n"
        );
        // Nor a symbolic link, whatever it points to.
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(ControlSocket::bind(&link).is_err());
        assert!(std::fs::symlink_metadata(&link).is_ok());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = temp_dir("control-socket");
        let path = dir.join("control.sock");
        // A socket nobody listens on any more (a server killed without cleaning up).
        drop(UnixListener::bind(&path).unwrap());
        let live = ControlSocket::bind(&path).unwrap();
        let err = ControlSocket::bind(&path).err().expect("in use");
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
        drop(live);
        assert!(!path.exists(), "removed on drop");
    }
}
