//! Fixtures shared by the fuzz targets and the seed-corpus generator: fixed keys, a server that
//! knows one peer, a client for that peer, and helpers that complete a real handshake in memory
//! (the same way `tests/proto_pair.rs` drives the sans-IO core); and a worker's session table
//! and gate for the per-datagram decision.
//!
//! Everything is deterministic except the Noise ephemeral keys, which snow draws from the OS;
//! so a genuine message made here is valid for these static keys but differs from run to run.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use concentrator::proto::client::{Client, ClientEvent, ClientParams};
use concentrator::proto::cookie::{self, CookieSecrets, MacKeys, ServerMacKeys};
use concentrator::proto::keypair::Keypair;
use concentrator::proto::keys::{PresharedKey, PublicKey, StaticSecret};
use concentrator::proto::rng::{Random, SeededRandom};
use concentrator::proto::server::{HandshakeReply, PeerConfig, Server};
use concentrator::proto::session::Session;
use concentrator::proto::time::Instant;
use concentrator::proto::wire::{
    self, AddressAssignment, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_HEADER_LEN,
};
use concentrator::server::decision::{Gate, GateConfig, GateRole};
use concentrator::server::handoff::LoadSignal;
use concentrator::server::session_table::{PeerEntry, SessionTable};
use zeroize::Zeroizing;

/// The simulated clock at which every fixture starts.
pub const START: Instant = Instant::from_nanos(1_000_000_000);

/// The server's static secret.
pub fn server_secret_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    SeededRandom(0x5e4e).fill(&mut b);
    b
}

/// The one known peer's static secret.
pub fn client_secret_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    SeededRandom(0xc11e).fill(&mut b);
    b
}

/// The server's public key.
pub fn server_public() -> PublicKey {
    StaticSecret::from_bytes(server_secret_bytes()).public_key()
}

/// The known peer's public key.
pub fn client_public() -> PublicKey {
    StaticSecret::from_bytes(client_secret_bytes()).public_key()
}

/// What the server assigns the known peer.
pub fn assignment() -> AddressAssignment {
    AddressAssignment {
        ipv4: Ipv4Addr::new(10, 66, 0, 7),
        ipv4_prefix: 16,
        ipv6: Some(("fd00:66::7".parse().expect("literal"), 64)),
        mtu: 1420,
    }
}

/// The suite whose mac1 an initiation to the server carries, if either.
pub fn server_suite_of(msg: &[u8]) -> Option<concentrator::proto::suite::Suite> {
    ServerMacKeys::new(server_public().as_bytes()).suite_of(msg)
}

/// The mac1 keys of the server (what initiations to it carry).
pub fn server_mac_keys() -> MacKeys {
    MacKeys::new(server_public().as_bytes())
}

/// The mac1 keys of the client (what responses to it carry).
pub fn client_mac_keys() -> MacKeys {
    MacKeys::new(client_public().as_bytes())
}

/// A server with the fixed key and the known peer.
pub fn server() -> Server {
    let mut server = Server::new(
        StaticSecret::from_bytes(server_secret_bytes()),
        START,
        &mut SeededRandom(99),
    );
    server.add_peer(PeerConfig {
        public_key: client_public(),
        psk: PresharedKey::zero(),
        assignment: assignment(),
        allowed_ips: Vec::new(),
        suite: concentrator::proto::suite::Suite::Native,
    });
    server
}

/// A client for the known peer.
pub fn client() -> Client {
    client_with_secret(client_secret_bytes())
}

/// A client with another static key: a peer the server does not know.
pub fn stranger() -> Client {
    let mut b = [0u8; 32];
    SeededRandom(0x57a4).fill(&mut b);
    client_with_secret(b)
}

fn client_with_secret(secret: [u8; 32]) -> Client {
    Client::new(
        ClientParams {
            secret: StaticSecret::from_bytes(secret),
            server: server_public(),
            psk: PresharedKey::zero(),
            persistent_keepalive: None,
        },
        START,
        Duration::from_secs(1_700_000_000),
    )
}

/// The underlay address handshakes come from.
pub fn client_udp() -> SocketAddr {
    "192.0.2.10:40000".parse().expect("literal")
}

/// A client that has sent its first initiation (returned) and waits for the response.
pub fn client_with_initiation(rng: &mut SeededRandom) -> (Client, [u8; INITIATION_LEN]) {
    initiate(client(), rng)
}

/// Has `client` send its first initiation; returns it with the client.
pub fn initiate(mut client: Client, rng: &mut SeededRandom) -> (Client, [u8; INITIATION_LEN]) {
    let mut out = [0u8; 256];
    let n = client
        .poll_transmit(START, rng, &mut out)
        .expect("a new client sends an initiation");
    assert_eq!(n, INITIATION_LEN);
    let mut init = [0u8; INITIATION_LEN];
    init.copy_from_slice(&out[..n]);
    (client, init)
}

/// Messages of a completed, confirmed handshake, and both ends.
pub struct Established {
    /// The server (the peer's session has the new keypair as current).
    pub server: Server,
    /// The connected client.
    pub client: Client,
    /// The server side's session.
    pub server_session: Arc<Session>,
    /// The receiver index the client sends to.
    pub server_index: u32,
    /// The initiation sent.
    pub initiation: [u8; INITIATION_LEN],
    /// The response received.
    pub response: [u8; RESPONSE_LEN],
    /// The client's confirming keepalive.
    pub keepalive: Vec<u8>,
}

/// Runs a whole handshake between [`client`] and [`server`] and confirms it with the client's
/// keepalive, so that the server's session has a current keypair.
pub fn establish(rng: &mut SeededRandom) -> Established {
    let mut server = server();
    let (mut client, initiation) = client_with_initiation(rng);
    let mut response = [0u8; RESPONSE_LEN];
    let reply = server
        .handle_initiation(&initiation, client_udp(), START, false, rng, &mut response)
        .expect("genuine initiation");
    let HandshakeReply::Established(est) = reply else {
        panic!("not under load: no cookie expected");
    };
    let mut buf = response.to_vec();
    assert!(matches!(
        client.receive(&mut buf, START),
        ClientEvent::Connected(_)
    ));
    let mut out = [0u8; 256];
    let n = client
        .poll_transmit(START, rng, &mut out)
        .expect("the client confirms with a keepalive");
    let keepalive = out[..n].to_vec();
    let mut k = keepalive.clone();
    let received = est
        .session
        .decrypt(est.local_index, &mut k, START)
        .expect("genuine keepalive");
    assert!(received.confirmed_next && received.plaintext.is_empty());
    Established {
        server,
        client,
        server_session: est.session,
        server_index: est.local_index,
        initiation,
        response,
        keepalive,
    }
}

/// Pads with zeros or truncates to exactly `len` bytes.
pub fn sized(data: &[u8], len: usize) -> Vec<u8> {
    let mut v = data[..data.len().min(len)].to_vec();
    v.resize(len, 0);
    v
}

/// A responder target's input: byte 0 = flags (bit 0: under load; bits 1-2: mode), bytes 1-2
/// = source port, the rest the message.
pub struct ResponderInput<'a> {
    /// Whether the server answers as under load.
    pub under_load: bool,
    /// Which way the target feeds the message in (0 to 3).
    pub mode: u8,
    /// Where the message comes from: [`client_udp`]'s address at the input's port.
    pub src: SocketAddr,
    /// Bit 0 set: mode 3 leaves the transport header as it is.
    pub keep_header: bool,
    /// The message.
    pub message: &'a [u8],
}

impl<'a> ResponderInput<'a> {
    /// Splits `data`, or `None` if it is shorter than the three leading bytes.
    pub fn split(data: &'a [u8]) -> Option<Self> {
        let (&[flags, p0, p1], message) = data.split_first_chunk::<3>()?;
        Some(ResponderInput {
            under_load: flags & 1 != 0,
            mode: (flags >> 1) & 3,
            src: SocketAddr::new(client_udp().ip(), u16::from_le_bytes([p0, p1])),
            keep_header: p0 & 1 != 0,
            message,
        })
    }
}

/// Mode 3 of the responder targets: the message to `session`'s `decrypt`; when long enough
/// (and not `keep_header`), with the header rewritten to type 4 and receiver index `index` so
/// that it reaches the replay window and the AEAD. Panics if the garbage decrypts.
pub fn assert_garbage_does_not_decrypt(
    session: &Session,
    index: u32,
    message: &[u8],
    keep_header: bool,
) {
    let mut buf = message.to_vec();
    if buf.len() >= TRANSPORT_HEADER_LEN && !keep_header {
        let counter = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
        let header: &mut [u8; TRANSPORT_HEADER_LEN] =
            (&mut buf[..TRANSPORT_HEADER_LEN]).try_into().expect("16");
        wire::write_transport_header(header, index, counter);
    }
    let index = wire::transport_receiver_index(&buf).unwrap_or(index);
    let result = session.decrypt(index, &mut buf, START);
    assert!(result.is_err(), "garbage decrypted: {result:?}");
}

/// `data` framed as an initiation: sized to [`INITIATION_LEN`], type 1, reserved zero (mac1 is
/// the caller's, in its suite).
pub fn framed_initiation(data: &[u8]) -> Vec<u8> {
    let mut m = sized(data, INITIATION_LEN);
    m[..4].copy_from_slice(&[1, 0, 0, 0]);
    m
}

/// `genuine` XOR `data` (sized to [`INITIATION_LEN`]): a near-valid initiation (mac1 is the
/// caller's, in its suite).
pub fn xored_initiation(genuine: &[u8; INITIATION_LEN], data: &[u8]) -> Vec<u8> {
    let x = sized(data, INITIATION_LEN);
    genuine.iter().zip(&x).map(|(g, x)| g ^ x).collect()
}

/// Checks the server's cookie reply `reply` to `msg`: sent only under load, only to a valid
/// mac1 (whose suite it returns), and a whole cookie reply.
pub fn check_cookie_reply(
    msg: &[u8],
    reply: &[u8],
    under_load: bool,
) -> concentrator::proto::suite::Suite {
    assert!(under_load, "cookie reply while not under load");
    let suite = server_suite_of(msg).expect("a cookie reply to a valid mac1");
    assert_eq!(reply.len(), wire::COOKIE_REPLY_LEN);
    assert_eq!(
        wire::message_type(reply),
        Ok(wire::MessageType::CookieReply)
    );
    suite
}

/// Checks a handshake the server completed with `msg`: only `genuine`'s Noise message can do
/// that (the header's sender index and mac2 are not authenticated by it; the committed seeds
/// hold no other initiation of the known peer, see examples/gen_corpus.rs, so any other
/// completion is a forgery), and only for the known peer.
pub fn check_completed_by_genuine(msg: &[u8], genuine: &[u8; INITIATION_LEN], peer: &PublicKey) {
    assert_eq!(
        msg[8..116],
        genuine[8..116],
        "a handshake completed with a forged initiation"
    );
    assert_eq!(*peer, client_public());
}

/// Recomputes mac1 of a whole initiation or response in place.
pub fn fix_mac1(keys: &MacKeys, msg: &mut [u8]) {
    cookie::write_mac1(keys, msg);
}

/// The second peer's address: packets to it are relayed (with `client_to_client`).
pub const OTHER_PEER_V4: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 8);

/// A worker's view for `Gate::decide`: a session table with the known peer and a second one,
/// both with a live keypair, and the sessions of their own ends (to seal what the known peer
/// sends and open what the second one is sent). Fixed keys stand in for a handshake, so a fresh
/// one per input costs four AES key schedules, not Diffie-Hellmans.
pub struct DecisionFixture {
    /// The server's table: the known peer under [`KNOWN_PEER_INDEX`] and [`assignment`], the
    /// second peer under [`OTHER_PEER_INDEX`] and [`OTHER_PEER_V4`].
    pub table: SessionTable,
    /// The known peer's end: seals as the known peer.
    pub known_peer: Session,
    /// The second peer's end: opens what the server sealed for it.
    pub other_peer: Session,
}

/// The receiver index of the known peer's keypair on the server.
pub const KNOWN_PEER_INDEX: u32 = 0x0101_0101;
/// The receiver index of the second peer's keypair on the server.
pub const OTHER_PEER_INDEX: u32 = 0x0202_0202;

/// A session holding one keypair of `suite`, current at [`START`].
fn live_session_of(
    suite: concentrator::proto::suite::Suite,
    send: u8,
    receive: u8,
    local: u32,
    remote: u32,
) -> Session {
    let session = Session::new();
    let keypair = Keypair::for_suite(
        suite,
        &Zeroizing::new([send; 32]),
        &Zeroizing::new([receive; 32]),
        local,
        remote,
        START,
        true, // current at once, without a confirming packet
    );
    session.install(Arc::new(keypair), START);
    session
}

impl DecisionFixture {
    /// The table and both ends, native.
    pub fn new() -> Self {
        Self::of_suite(concentrator::proto::suite::Suite::Native)
    }

    /// The table and both ends, with keys of `suite`.
    pub fn of_suite(suite: concentrator::proto::suite::Suite) -> Self {
        let table = SessionTable::new();
        let peers = [
            (client_public(), assignment(), KNOWN_PEER_INDEX, 1u8),
            (
                stranger_public(),
                AddressAssignment {
                    ipv4: OTHER_PEER_V4,
                    ipv4_prefix: 16,
                    ipv6: None,
                    mtu: 1420,
                },
                OTHER_PEER_INDEX,
                3u8,
            ),
        ];
        for (key, assignment, index, k) in peers {
            let session = Arc::new(live_session_of(suite, k, k + 1, index, !index));
            let entry = Arc::new(PeerEntry::new(key, session, assignment));
            table.insert_peer(&entry);
            table.insert_index(index, &entry);
        }
        DecisionFixture {
            table,
            known_peer: live_session_of(suite, 2, 1, !KNOWN_PEER_INDEX, KNOWN_PEER_INDEX),
            other_peer: live_session_of(suite, 4, 3, !OTHER_PEER_INDEX, OTHER_PEER_INDEX),
        }
    }
}

impl Default for DecisionFixture {
    fn default() -> Self {
        Self::new()
    }
}

/// The public key of [`stranger`].
pub fn stranger_public() -> PublicKey {
    let mut b = [0u8; 32];
    SeededRandom(0x57a4).fill(&mut b);
    StaticSecret::from_bytes(b).public_key()
}

/// A worker's gate for [`server`], under load or not.
pub fn gate(client_to_client: bool, under_load: bool) -> Gate {
    let load = Arc::new(LoadSignal::default());
    if under_load {
        load.publish(Some(Instant::from_nanos(u64::MAX)));
    }
    let config = GateConfig {
        role: GateRole::Server,
        mac_keys: Arc::new(ServerMacKeys::new(server_public().as_bytes())),
        load,
        cookie_secrets: Arc::new(ArcSwap::new(server_cookie_secrets())),
        client_to_client,
        mss_clamp: None,
    };
    Gate::new(config, &mut SeededRandom(0x9a7e))
}

/// The cookie secrets of [`server`] (made once: a server costs a Diffie-Hellman key).
fn server_cookie_secrets() -> Arc<CookieSecrets> {
    static SECRETS: std::sync::OnceLock<Arc<CookieSecrets>> = std::sync::OnceLock::new();
    SECRETS
        .get_or_init(|| server().cookie_secrets().clone())
        .clone()
}

/// A server with the fixed key and the known peer, configured for `suite`.
pub fn server_with_suite(suite: concentrator::proto::suite::Suite) -> Server {
    let mut server = server();
    server.add_peer(PeerConfig {
        public_key: client_public(),
        psk: PresharedKey::zero(),
        assignment: assignment(),
        allowed_ips: Vec::new(),
        suite,
    });
    server
}

/// A genuine WireGuard initiation from the known peer to the server (as a stock client makes
/// it: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s with WireGuard's identifier as prologue, a TAI64N
/// timestamp `seconds` past the TAI64 epoch label, WireGuard's mac1), with the handshake state
/// that reads the response.
pub fn wireguard_initiation(
    sender_index: u32,
    seconds: u64,
) -> (snow::HandshakeState, [u8; INITIATION_LEN]) {
    use concentrator::proto::constants::{WG_IDENTIFIER, WG_NOISE_PARAMS};
    use concentrator::proto::wireguard;
    let secret = client_secret_bytes();
    let server = server_public();
    let mut state = snow::Builder::new(WG_NOISE_PARAMS.parse().expect("valid parameters"))
        .prologue(WG_IDENTIFIER)
        .and_then(|b| b.local_private_key(&secret))
        .and_then(|b| b.remote_public_key(server.as_bytes()))
        .and_then(|b| b.psk(2, &[0u8; 32]))
        .and_then(|b| b.build_initiator())
        .expect("keys of the right length");
    let mut timestamp = [0u8; 12];
    timestamp[..8].copy_from_slice(&((1u64 << 62) + 10 + seconds).to_be_bytes());
    let mut m = [0u8; INITIATION_LEN];
    m[0] = 1;
    m[4..8].copy_from_slice(&sender_index.to_le_bytes());
    state
        .write_message(&timestamp, &mut m[8..116])
        .expect("frame sized for message 1");
    wireguard::write_mac1(
        &wireguard::WgMacKeys::new(server_public().as_bytes()),
        &mut m,
    );
    (state, m)
}
