//! Fixtures shared by the fuzz targets and the seed-corpus generator: fixed keys, a server that
//! knows one peer, a client for that peer, and helpers that complete a real handshake in memory
//! (the same way `tests/proto_pair.rs` drives the sans-IO core).
//!
//! Everything is deterministic except the Noise ephemeral keys, which snow draws from the OS;
//! so a genuine message made here is valid for these static keys but differs from run to run.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use concentrator::proto::client::{Client, ClientEvent, ClientParams};
use concentrator::proto::cookie::{self, MacKeys};
use concentrator::proto::keys::{PresharedKey, PublicKey, StaticSecret};
use concentrator::proto::rng::{Random, SeededRandom};
use concentrator::proto::server::{HandshakeReply, PeerConfig, Server};
use concentrator::proto::session::Session;
use concentrator::proto::time::Instant;
use concentrator::proto::wire::{AddressAssignment, INITIATION_LEN, RESPONSE_LEN};

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

/// Recomputes mac1 of a whole initiation or response in place.
pub fn fix_mac1(keys: &MacKeys, msg: &mut [u8]) {
    cookie::write_mac1(keys, msg);
}
