//! Interoperability of the WireGuard suite with an independent implementation, in memory:
//! boringtun's sans-IO `noise::Tunn` as the initiator (the role of every stock client) against
//! this crate's sans-IO server. Handshake, transport both ways, a cookie reply under load, a
//! second handshake (rekey), and the suite check (a peer configured native cannot handshake as
//! WireGuard).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use concentrator::proto::handshake::HandshakeError;
use concentrator::proto::keys::{PresharedKey, PublicKey, StaticSecret};
use concentrator::proto::rng::SeededRandom;
use concentrator::proto::server::{HandshakeReply, PeerConfig, Server};
use concentrator::proto::session::Session;
use concentrator::proto::suite::Suite;
use concentrator::proto::time::Instant;
use concentrator::proto::wire::{
    AddressAssignment, COOKIE_REPLY_LEN, RESPONSE_LEN, TAG_LEN, TRANSPORT_HEADER_LEN,
    WG_RESPONSE_LEN,
};

const T0: Instant = Instant::from_nanos(1_000_000_000);
const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const PSK: [u8; 32] = [0x5c; 32];

fn src() -> SocketAddr {
    "192.0.2.10:51820".parse().unwrap()
}

/// An IPv4/UDP packet from `from` to `to` carrying `payload`.
fn ipv4_packet(from: Ipv4Addr, to: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&from.octets());
    p[16..20].copy_from_slice(&to.octets());
    p[28..].copy_from_slice(payload);
    p
}

struct Pair {
    server: Server,
    rng: SeededRandom,
    tunn: Tunn,
    client_public: PublicKey,
    now: Instant,
}

fn pair(configured_suite: Suite) -> Pair {
    let mut rng = SeededRandom(0x3c);
    let server_secret = StaticSecret::from_bytes([0x11; 32]);
    let server = Server::new(server_secret, T0, &mut rng);
    let client_bytes = [0x22u8; 32];
    let client_public = StaticSecret::from_bytes(client_bytes).public_key();
    let mut pair = Pair {
        tunn: Tunn::new(
            x25519::StaticSecret::from(client_bytes),
            x25519::PublicKey::from(*server.public_key().as_bytes()),
            Some(PSK),
            None,
            7,
            None,
        ),
        server,
        rng,
        client_public,
        now: T0,
    };
    pair.server.add_peer(PeerConfig {
        public_key: client_public,
        psk: PresharedKey::from_bytes(PSK),
        assignment: AddressAssignment {
            ipv4: CLIENT_ADDRESS,
            ipv4_prefix: 16,
            ipv6: None,
            mtu: 1420,
        },
        allowed_ips: Vec::new(),
        suite: configured_suite,
    });
    pair
}

impl Pair {
    /// boringtun's next initiation (forced, as its timers would after a rekey interval).
    fn initiation(&mut self) -> Vec<u8> {
        // Its TAI64N timestamp has nanoseconds; a little time keeps each newer than the last.
        std::thread::sleep(Duration::from_millis(2));
        let mut buf = [0u8; 256];
        match self.tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("boringtun made no initiation: {other:?}"),
        }
    }

    /// Our server answers `initiation`.
    fn answer(
        &mut self,
        initiation: &[u8],
        under_load: bool,
    ) -> Result<(HandshakeReply, Vec<u8>), HandshakeError> {
        let mut out = [0u8; RESPONSE_LEN];
        let reply = self.server.handle_initiation(
            initiation,
            src(),
            self.now,
            under_load,
            &mut self.rng,
            &mut out,
        )?;
        let len = match &reply {
            HandshakeReply::Cookie(len) => *len,
            HandshakeReply::Established(done) => done.len,
        };
        Ok((reply, out[..len].to_vec()))
    }

    /// Feeds a datagram from the server to boringtun; returns what it writes to the network
    /// (a keepalive after a response) or to its tunnel.
    fn deliver_to_client(&mut self, datagram: &[u8]) -> ClientOutput {
        let mut dst = vec![0u8; 2048];
        let server_ip = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)));
        match self.tunn.decapsulate(server_ip, datagram, &mut dst) {
            TunnResult::WriteToNetwork(m) => ClientOutput::Network(m.to_vec()),
            TunnResult::WriteToTunnelV4(p, from) => ClientOutput::Tunnel(p.to_vec(), from),
            TunnResult::Done => ClientOutput::Nothing,
            other => panic!("boringtun refused the server's datagram: {other:?}"),
        }
    }

    fn session(&self) -> std::sync::Arc<Session> {
        self.server.session(&self.client_public).unwrap().clone()
    }

    /// A full handshake; returns the server's new receiver index.
    fn handshake(&mut self) -> u32 {
        let initiation = self.initiation();
        let (reply, response) = self.answer(&initiation, false).expect("accepted");
        let HandshakeReply::Established(done) = reply else {
            panic!("a cookie reply while not under load");
        };
        assert_eq!(
            response.len(),
            WG_RESPONSE_LEN,
            "WireGuard's response is 92 bytes"
        );
        self.confirm(&response, done.local_index);
        done.local_index
    }

    /// boringtun takes the response and confirms with a keepalive, which opens on our side.
    fn confirm(&mut self, response: &[u8], local_index: u32) {
        let ClientOutput::Network(mut keepalive) = self.deliver_to_client(response) else {
            panic!("boringtun sent no keepalive after the response");
        };
        assert_eq!(keepalive.len(), TRANSPORT_HEADER_LEN + TAG_LEN);
        let received = self
            .session()
            .decrypt(local_index, &mut keepalive, self.now)
            .expect("boringtun's keepalive opens under the new keys");
        assert!(received.plaintext.is_empty());
        assert!(
            received.confirmed_next,
            "the keepalive confirms the new keypair"
        );
    }

    /// A packet each way under the current keys.
    fn exchange(&mut self, local_index: u32, tag: &[u8]) {
        // Client to server.
        let inner = ipv4_packet(CLIENT_ADDRESS, BACKEND, tag);
        let mut dst = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(sealed) = self.tunn.encapsulate(&inner, &mut dst) else {
            panic!("boringtun has no session to send with");
        };
        assert_eq!(
            u32::from_le_bytes(sealed[4..8].try_into().unwrap()),
            local_index
        );
        let mut sealed = sealed.to_vec();
        let received = self
            .session()
            .decrypt(local_index, &mut sealed, self.now)
            .expect("boringtun's data opens");
        assert_eq!(
            &sealed[received.plaintext.clone()][..inner.len()],
            &inner[..]
        );

        // Server to client.
        let reply = ipv4_packet(BACKEND, CLIENT_ADDRESS, tag);
        let mut buf = vec![0u8; TRANSPORT_HEADER_LEN + reply.len() + TAG_LEN];
        buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + reply.len()].copy_from_slice(&reply);
        let len = self
            .session()
            .encrypt(&mut buf, reply.len(), self.now)
            .unwrap();
        match self.deliver_to_client(&buf[..len]) {
            ClientOutput::Tunnel(packet, from) => {
                assert_eq!(packet, reply);
                assert_eq!(from, BACKEND);
            }
            other => panic!("boringtun did not deliver the server's packet: {other:?}"),
        }
    }
}

#[derive(Debug)]
enum ClientOutput {
    Network(Vec<u8>),
    Tunnel(Vec<u8>, Ipv4Addr),
    Nothing,
}

#[test]
fn boringtun_handshakes_and_exchanges_data_both_ways() {
    let mut p = pair(Suite::WireGuard);
    let index = p.handshake();
    for i in 0..20u8 {
        p.exchange(index, &[i; 100]);
    }
    // A passive keepalive from the server (an empty transport message) is taken by boringtun.
    let mut buf = [0u8; TRANSPORT_HEADER_LEN + TAG_LEN];
    let len = p.session().encrypt(&mut buf, 0, p.now).unwrap();
    assert!(matches!(
        p.deliver_to_client(&buf[..len]),
        ClientOutput::Nothing
    ));
}

#[test]
fn cookie_reply_under_load_then_handshake_with_mac2() {
    let mut p = pair(Suite::WireGuard);
    let first = p.initiation();
    let (reply, cookie_reply) = p.answer(&first, true).expect("answered with a cookie");
    assert!(matches!(reply, HandshakeReply::Cookie(COOKIE_REPLY_LEN)));
    assert_eq!(cookie_reply[0], 3, "a cookie reply");
    // boringtun opens our XChaCha20-Poly1305 cookie and keeps it.
    assert!(matches!(
        p.deliver_to_client(&cookie_reply),
        ClientOutput::Nothing
    ));
    // Its next initiation carries mac2 under that cookie, which our server accepts under load.
    let second = p.initiation();
    assert_ne!(&second[132..148], &[0u8; 16], "mac2 is set");
    let (reply, response) = p.answer(&second, true).expect("mac2 verified under load");
    let HandshakeReply::Established(done) = reply else {
        panic!("a second cookie reply although mac2 is valid");
    };
    p.confirm(&response, done.local_index);
    p.exchange(done.local_index, b"after the cookie");
}

#[test]
fn a_second_handshake_rekeys_and_traffic_continues() {
    let mut p = pair(Suite::WireGuard);
    let first = p.handshake();
    p.exchange(first, b"first keys");
    p.now = T0 + Duration::from_secs(121);
    let second = p.handshake();
    assert_ne!(first, second, "the new keypair has its own receiver index");
    for i in 0..5u8 {
        p.exchange(second, &[i; 64]);
    }
}

#[test]
fn a_peer_configured_native_cannot_handshake_as_wireguard() {
    let mut p = pair(Suite::Native);
    let initiation = p.initiation();
    assert_eq!(
        p.answer(&initiation, false).err(),
        Some(HandshakeError::WrongSuite)
    );
    assert!(p.session().newest(p.now).is_none(), "no keys were made");
}

#[test]
fn an_initiation_with_a_bad_wireguard_mac1_is_refused() {
    let mut p = pair(Suite::WireGuard);
    let mut initiation = p.initiation();
    initiation[120] ^= 1;
    assert_eq!(
        p.answer(&initiation, false).err(),
        Some(HandshakeError::BadMac)
    );
}

#[test]
fn a_wireguard_peer_is_never_sent_a_push_message() {
    use concentrator::proto::server::PUSH_BUFFER_LEN;
    use concentrator::proto::wire::PushConfig;
    let mut p = pair(Suite::WireGuard);
    let push = PushConfig::new(
        vec!["10.1.0.0/16".parse().unwrap()],
        vec!["10.1.0.53".parse().unwrap()],
    )
    .unwrap();
    let key = p.client_public;
    p.server.set_push(&key, push, p.now);
    let index = p.handshake();
    let mut out = [0u8; PUSH_BUFFER_LEN];
    for step in 0..5u64 {
        let now = T0 + Duration::from_secs(step);
        let report = p.server.tick(now);
        assert!(
            report.pushes.is_empty(),
            "no push is due for a WireGuard peer"
        );
        assert_eq!(p.server.write_push(&key, now, &mut out), None);
    }
    p.exchange(index, b"still connected");
}

#[test]
fn a_native_client_cannot_handshake_with_a_peer_configured_wireguard() {
    use concentrator::proto::client::{Client, ClientParams};
    let mut p = pair(Suite::WireGuard);
    let mut client = Client::new(
        ClientParams {
            secret: StaticSecret::from_bytes([0x22; 32]),
            server: *p.server.public_key(),
            psk: PresharedKey::from_bytes(PSK),
            persistent_keepalive: None,
        },
        T0,
        Duration::from_secs(1_700_000_000),
    );
    let mut buf = [0u8; 256];
    let len = client
        .poll_transmit(T0, &mut p.rng, &mut buf)
        .expect("the client initiates");
    assert_eq!(
        p.answer(&buf[..len], false).err(),
        Some(HandshakeError::WrongSuite)
    );
}
