//! WireGuard's cross-platform configuration protocol, sans I/O: framing of the byte stream into
//! `get=1` / `set=1` operations, parsing of a `set` body into typed changes, and formatting of
//! the `get` answer and of the `errno=` status line. Described at
//! <https://www.wireguard.com/xplatform/#configuration-protocol>; the behaviour follows the
//! reference implementation (wireguard-go, `device/uapi.go`) where the text is silent.
//!
//! Keys are lowercase hex on the wire. Values are checked as strictly as the reference does:
//! a bad value is `EINVAL`, a line without `=` is `EPROTO`, an unknown key is `EINVAL`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use zeroize::Zeroizing;

use crate::proto::keys::{PresharedKey, PublicKey};

/// Largest request (operation line and `set` body) read from one client: 4 MiB holds a
/// `set` of some 20 000 peers with a few networks each, and bounds the memory one
/// connection can hold.
pub const MAX_REQUEST: usize = 4 << 20;
/// Longest line of a request: the longest valid one (`allowed_ip=-` with an IPv6 prefix, or
/// an endpoint with a scoped IPv6 address) is well under 100 bytes.
pub const MAX_LINE: usize = 512;

/// Key length in bytes (X25519 and the pre-shared key).
const KEY_LEN: usize = 32;

/// The status codes of the reference implementation (`ipc/uapi_unix.go`): negative errno
/// values, written as they are after `errno=`; `wg` turns them back into an error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    /// `-EIO`: reading or writing failed.
    Io,
    /// `-EPROTO`: a line is not `key=value`.
    Protocol,
    /// `-EINVAL`: an unknown key or a bad value.
    Invalid,
    /// `-EADDRINUSE`: the listening port (or the mark of its socket) cannot be changed.
    PortInUse,
}

impl Errno {
    /// The number after `errno=`.
    pub fn code(self) -> i64 {
        match self {
            Errno::Io => -5,
            Errno::Protocol => -71,
            Errno::Invalid => -22,
            Errno::PortInUse => -98,
        }
    }
}

/// Why an operation failed: the status to answer and what to log (never a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (errno {})", errno.code())]
pub struct UapiError {
    /// The status answered.
    pub errno: Errno,
    /// What was wrong, for the log.
    pub message: String,
}

impl UapiError {
    /// An `EINVAL` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        UapiError {
            errno: Errno::Invalid,
            message: message.into(),
        }
    }

    fn protocol(message: impl Into<String>) -> Self {
        UapiError {
            errno: Errno::Protocol,
            message: message.into(),
        }
    }
}

/// The next operation in a client's byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// Not complete yet: read more (unless the buffer is at [`MAX_REQUEST`]).
    NeedMore,
    /// `get=1` and its blank line; `consumed` bytes belong to it.
    Get { consumed: usize },
    /// `get=1` followed by something other than the blank line: answered with `EINVAL`, as
    /// the reference does (which then drops the connection at the next line).
    GetTrailing { consumed: usize },
    /// `set=1` with its body (the lines before the blank line, without it).
    Set { body: &'a [u8], consumed: usize },
    /// Neither: the reference closes the connection without an answer.
    Unknown,
}

/// Frames the operation at the start of `buf`. `scanned` is how many bytes of `buf` earlier
/// calls saw without finding the end (0 the first time): the search for the end of a long
/// `set` resumes there instead of starting over at every read.
pub fn frame(buf: &[u8], scanned: usize) -> Framed<'_> {
    const GET: &[u8] = b"get=1\n";
    const SET: &[u8] = b"set=1\n";
    let prefix_len = GET.len();
    if buf.len() < prefix_len {
        return if GET.starts_with(buf) || SET.starts_with(buf) {
            Framed::NeedMore
        } else {
            Framed::Unknown
        };
    }
    match &buf[..prefix_len] {
        GET => match buf.get(prefix_len) {
            None => Framed::NeedMore,
            Some(b'\n') => Framed::Get {
                consumed: prefix_len + 1,
            },
            Some(_) => Framed::GetTrailing {
                consumed: prefix_len + 1,
            },
        },
        SET => {
            let body = &buf[prefix_len..];
            // The body ends at the first empty line: right at its start, or after a '\n'.
            if body.first() == Some(&b'\n') {
                return Framed::Set {
                    body: &body[..0],
                    consumed: prefix_len + 1,
                };
            }
            let from = scanned.saturating_sub(prefix_len + 1);
            match body[from.min(body.len())..]
                .windows(2)
                .position(|w| w == b"\n\n")
            {
                Some(at) => {
                    let end = from + at + 1;
                    Framed::Set {
                        body: &body[..end],
                        consumed: prefix_len + end + 1,
                    }
                }
                None => Framed::NeedMore,
            }
        }
        _ => Framed::Unknown,
    }
}

/// One edit of a peer's networks, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowedIpEdit {
    /// `replace_allowed_ips=true`: drop every network given so far and held before.
    Clear,
    /// `allowed_ip=PREFIX`.
    Add(IpNet),
    /// `allowed_ip=-PREFIX`.
    Remove(IpNet),
}

/// What a `set` says about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    /// `public_key=`.
    pub public_key: PublicKey,
    /// `remove=true`.
    pub remove: bool,
    /// `update_only=true`: change the peer only if it exists.
    pub update_only: bool,
    /// `preshared_key=` (all zeros: none).
    pub preshared_key: Option<PresharedKey>,
    /// `endpoint=`.
    pub endpoint: Option<SocketAddr>,
    /// `persistent_keepalive_interval=`, seconds (0: off).
    pub persistent_keepalive_interval: Option<u16>,
    /// `replace_allowed_ips=true` and `allowed_ip=` lines, in order.
    pub allowed_ips: Vec<AllowedIpEdit>,
}

impl PeerChange {
    /// A change of `public_key` that changes nothing yet.
    pub fn new(public_key: PublicKey) -> Self {
        PeerChange {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive_interval: None,
            allowed_ips: Vec::new(),
        }
    }
}

/// A private key as a request carries it: wiped on drop, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(..)")
    }
}

/// A parsed `set` operation: interface settings, then peers in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `private_key=` (hex decoded; all zeros means "no key").
    pub private_key: Option<SecretBytes>,
    /// `listen_port=`.
    pub listen_port: Option<u16>,
    /// `fwmark=` (0: none).
    pub fwmark: Option<u32>,
    /// `replace_peers=true`.
    pub replace_peers: bool,
    /// The peers, in the order given (a key may appear twice).
    pub peers: Vec<PeerChange>,
}

/// Parses the body of a `set` (its lines, without the final blank line).
pub fn parse_set(body: &[u8]) -> Result<SetRequest, UapiError> {
    if body.len() > MAX_REQUEST {
        return Err(UapiError::invalid(format!(
            "request of {} bytes is over the limit of {MAX_REQUEST}",
            body.len()
        )));
    }
    let mut request = SetRequest::default();
    for line in body.split(|&b| b == b'\n') {
        if line.is_empty() {
            // Only the last split piece (after the final '\n') may be empty: an empty line
            // ends the body, so `frame` never leaves one inside it.
            continue;
        }
        if line.len() > MAX_LINE {
            return Err(UapiError::protocol(format!(
                "a line of {} bytes is over the limit of {MAX_LINE}",
                line.len()
            )));
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| UapiError::protocol("a line is not UTF-8 text"))?;
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiError::protocol(format!(
                "failed to parse line {:?}: no '='",
                truncated(line)
            )));
        };
        if key == "public_key" {
            let public_key = PublicKey::from(*parse_key("public_key", value)?);
            request.peers.push(PeerChange::new(public_key));
            continue;
        }
        match request.peers.last_mut() {
            None => device_line(&mut request, key, value)?,
            Some(peer) => peer_line(peer, key, value)?,
        }
    }
    Ok(request)
}

fn device_line(request: &mut SetRequest, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "private_key" => request.private_key = Some(SecretBytes(parse_key("private_key", value)?)),
        "listen_port" => request.listen_port = Some(parse_decimal("listen_port", value)?),
        "fwmark" => request.fwmark = Some(parse_decimal("fwmark", value)?),
        "replace_peers" => request.replace_peers = parse_true("replace_peers", value)?,
        _ => {
            return Err(UapiError::invalid(format!(
                "invalid UAPI device key: {}",
                truncated(key)
            )))
        }
    }
    Ok(())
}

fn peer_line(peer: &mut PeerChange, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "update_only" => peer.update_only = parse_true("update_only", value)?,
        "remove" => peer.remove = parse_true("remove", value)?,
        "preshared_key" => {
            peer.preshared_key = Some(PresharedKey::from_bytes(*parse_key(
                "preshared_key",
                value,
            )?))
        }
        "endpoint" => {
            peer.endpoint = Some(value.parse().map_err(|_| {
                UapiError::invalid(format!(
                    "failed to set endpoint {:?}: not an IP address and port",
                    truncated(value)
                ))
            })?)
        }
        "persistent_keepalive_interval" => {
            peer.persistent_keepalive_interval =
                Some(parse_decimal("persistent_keepalive_interval", value)?)
        }
        "replace_allowed_ips" => {
            parse_true("replace_allowed_ips", value)?;
            peer.allowed_ips.push(AllowedIpEdit::Clear);
        }
        "allowed_ip" => {
            let (remove, text) = match value.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, value),
            };
            let prefix: IpNet = text.parse().map_err(|_| {
                UapiError::invalid(format!(
                    "failed to set allowed ip {:?}: not an address/prefix length",
                    truncated(value)
                ))
            })?;
            peer.allowed_ips.push(if remove {
                AllowedIpEdit::Remove(prefix)
            } else {
                AllowedIpEdit::Add(prefix)
            });
        }
        "protocol_version" => {
            if value != "1" {
                return Err(UapiError::invalid(format!(
                    "invalid protocol version: {}",
                    truncated(value)
                )));
            }
        }
        _ => {
            return Err(UapiError::invalid(format!(
                "invalid UAPI peer key: {}",
                truncated(key)
            )))
        }
    }
    Ok(())
}

/// At most 64 characters of `text`, for messages (a long line stays out of the log).
fn truncated(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// Exactly 64 hex digits (either case, as Go's `hex.DecodeString`). The message never
/// repeats the value: it may be a key.
fn parse_key(field: &str, value: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, UapiError> {
    let bad = || {
        UapiError::invalid(format!(
            "failed to set {field}: not {} hex digits",
            2 * KEY_LEN
        ))
    };
    let digits = value.as_bytes();
    if digits.len() != 2 * KEY_LEN {
        return Err(bad());
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let high = hex_digit(pair[0]).ok_or_else(bad)?;
        let low = hex_digit(pair[1]).ok_or_else(bad)?;
        *byte = high << 4 | low;
    }
    Ok(key)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A decimal number of type `T`, digits only (Go's `strconv.ParseUint` takes no sign).
fn parse_decimal<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, UapiError> {
    let bad = || {
        UapiError::invalid(format!(
            "failed to parse {field}: {:?} is not a number in range",
            truncated(value)
        ))
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// The only value a flag takes.
fn parse_true(field: &str, value: &str) -> Result<bool, UapiError> {
    if value == "true" {
        Ok(true)
    } else {
        Err(UapiError::invalid(format!(
            "failed to set {field}, invalid value: {}",
            truncated(value)
        )))
    }
}

/// The interface as `get` reports it.
pub struct DeviceState {
    /// The static private key.
    pub private_key: Zeroizing<[u8; KEY_LEN]>,
    /// The UDP port.
    pub listen_port: u16,
    /// The socket mark (0: none, and not reported).
    pub fwmark: u32,
}

/// One peer as `get` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// Its public key.
    pub public_key: PublicKey,
    /// Its pre-shared key (all zeros: none).
    pub preshared_key: PresharedKey,
    /// Where its packets go.
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the latest handshake since the UNIX epoch (`None`: never).
    pub last_handshake: Option<Duration>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Seconds between keepalives it is sent when idle (0: off).
    pub persistent_keepalive_interval: u16,
    /// Every network routed to it.
    pub allowed_ips: Vec<IpNet>,
}

/// The `get` answer without its status line, in the reference's order of keys.
pub fn format_get(device: &DeviceState, peers: &[PeerState]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(128 + peers.len() * 400));
    if device.private_key.iter().any(|&b| b != 0) {
        push_key(&mut out, "private_key", &device.private_key);
    }
    if device.listen_port != 0 {
        let _ = writeln!(out, "listen_port={}", device.listen_port);
    }
    if device.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", device.fwmark);
    }
    for peer in peers {
        push_key(&mut out, "public_key", peer.public_key.as_bytes());
        push_key(&mut out, "preshared_key", peer.preshared_key.as_bytes());
        out.push_str("protocol_version=1\n");
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let handshake = peer.last_handshake.unwrap_or_default();
        let _ = writeln!(out, "last_handshake_time_sec={}", handshake.as_secs());
        let _ = writeln!(out, "last_handshake_time_nsec={}", handshake.subsec_nanos());
        let _ = writeln!(out, "tx_bytes={}", peer.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", peer.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive_interval
        );
        for prefix in &peer.allowed_ips {
            let _ = writeln!(out, "allowed_ip={prefix}");
        }
    }
    out
}

/// The status line that ends every answer, with its blank line.
pub fn format_status(result: Result<(), Errno>) -> String {
    match result {
        Ok(()) => "errno=0\n\n".to_string(),
        Err(errno) => format!("errno={}\n\n", errno.code()),
    }
}

fn push_key(out: &mut String, name: &str, key: &[u8; KEY_LEN]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(name.len() + 2 + 2 * KEY_LEN);
    out.push_str(name);
    out.push('=');
    for &b in key {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out.push('\n');
}

/// A `set` request's text as a client writes it (`set=1`, the lines, the blank line): the
/// counterpart of [`parse_set`], for clients and tests.
pub fn format_set(request: &SetRequest) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::from("set=1\n"));
    if let Some(key) = &request.private_key {
        push_key(&mut out, "private_key", &key.0);
    }
    if let Some(port) = request.listen_port {
        let _ = writeln!(out, "listen_port={port}");
    }
    if let Some(mark) = request.fwmark {
        let _ = writeln!(out, "fwmark={mark}");
    }
    if request.replace_peers {
        out.push_str("replace_peers=true\n");
    }
    for peer in &request.peers {
        push_key(&mut out, "public_key", peer.public_key.as_bytes());
        if peer.remove {
            out.push_str("remove=true\n");
        }
        if peer.update_only {
            out.push_str("update_only=true\n");
        }
        if let Some(psk) = &peer.preshared_key {
            push_key(&mut out, "preshared_key", psk.as_bytes());
        }
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        if let Some(interval) = peer.persistent_keepalive_interval {
            let _ = writeln!(out, "persistent_keepalive_interval={interval}");
        }
        for edit in &peer.allowed_ips {
            match edit {
                AllowedIpEdit::Clear => out.push_str("replace_allowed_ips=true\n"),
                AllowedIpEdit::Add(p) => {
                    let _ = writeln!(out, "allowed_ip={p}");
                }
                AllowedIpEdit::Remove(p) => {
                    let _ = writeln!(out, "allowed_ip=-{p}");
                }
            }
        }
    }
    out.push('\n');
    out
}

/// A `get` answer read back (for clients and tests): the interface's `key=value` pairs and
/// each peer's, in order, and the status. Unknown keys are kept as they are.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GetAnswer {
    /// Lines before the first `public_key`.
    pub device: Vec<(String, String)>,
    /// Per peer, its lines starting with `public_key`.
    pub peers: Vec<Vec<(String, String)>>,
    /// The `errno=` value.
    pub errno: i64,
}

/// Reads a `get` answer up to its blank line.
pub fn parse_get(text: &str) -> Result<GetAnswer, UapiError> {
    let mut answer = GetAnswer::default();
    let mut errno = None;
    for line in text.split('\n') {
        if line.is_empty() {
            break;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| UapiError::protocol(format!("no '=' in {:?}", truncated(line))))?;
        let pair = (key.to_string(), value.to_string());
        if key == "errno" {
            errno = Some(
                value
                    .parse()
                    .map_err(|_| UapiError::protocol("bad errno"))?,
            );
        } else if key == "public_key" {
            answer.peers.push(vec![pair]);
        } else if let Some(peer) = answer.peers.last_mut() {
            peer.push(pair);
        } else {
            answer.device.push(pair);
        }
    }
    answer.errno = errno.ok_or_else(|| UapiError::protocol("no errno line"))?;
    Ok(answer)
}

#[cfg(test)]
mod tests;
