//! The gate with WireGuard peers beside native ones in one table: boringtun's sans-IO `Tunn`
//! plays the stock client. Initiations are told apart by mac1, cookie replies come in the
//! initiation's suite, and the data path (open, roam, relay) is the same for both.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use super::*;
use crate::proto::suite::Suite;

/// A WireGuard client (boringtun) connected through the [`Headend`], and its peer entry.
struct WgConnected {
    tunn: Tunn,
    entry: Arc<PeerEntry>,
    udp: SocketAddr,
}

impl Headend {
    /// boringtun for a new WireGuard peer `n` at 10.66.0.n, not yet connected.
    fn wireguard_client(&mut self, n: u8) -> Tunn {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes);
        self.server.add_peer(PeerConfig {
            public_key: StaticSecret::from_bytes(bytes).public_key(),
            psk: PresharedKey::zero(),
            assignment: AddressAssignment {
                ipv4: client_address(n),
                ipv4_prefix: 16,
                ipv6: None,
                mtu: 1420,
            },
            allowed_ips: Vec::new(),
            suite: Suite::WireGuard,
        });
        Tunn::new(
            x25519::StaticSecret::from(bytes),
            x25519::PublicKey::from(*self.server.public_key().as_bytes()),
            None,
            None,
            u32::from(n),
            None,
        )
    }

    /// WireGuard peer `n` connected from `udp` through the gate and the server, its keys
    /// confirmed by boringtun's keepalive through the gate.
    fn connect_wireguard(&mut self, n: u8, udp: SocketAddr) -> WgConnected {
        let mut tunn = self.wireguard_client(n);
        let mut initiation = wg_initiation(&mut tunn);
        assert_eq!(
            self.decide(&mut initiation.clone(), udp, T0),
            Outcome::QueueHandshake,
            "the gate passes a WireGuard initiation by its mac1"
        );
        let mut response = [0u8; RESPONSE_LEN];
        let reply = self
            .server
            .handle_initiation(&initiation, udp, T0, false, &mut self.rng, &mut response)
            .expect("a genuine WireGuard initiation");
        let HandshakeReply::Established(done) = reply else {
            panic!("not under load, so no cookie reply");
        };
        let entry = Arc::new(
            PeerEntry::new(done.peer, done.session, assignment(n)).with_suite(Suite::WireGuard),
        );
        self.table.insert_peer(&entry);
        self.table.insert_index(done.local_index, &entry);
        let mut keepalive = match to_wg_client(&mut tunn, &response[..done.len]) {
            Some(TunnOutput::Network(k)) => k,
            other => panic!("boringtun sent no keepalive after the response: {other:?}"),
        };
        // The server has sent it nothing yet, so its keepalive is answered (a stock client
        // takes the answer as any keepalive).
        assert_eq!(
            self.decide(&mut keepalive, udp, T0),
            Outcome::KeepaliveReply {
                len: TRANSPORT_MIN_LEN
            }
        );
        initiation.clear();
        WgConnected { tunn, entry, udp }
    }
}

fn assignment(n: u8) -> AddressAssignment {
    AddressAssignment {
        ipv4: client_address(n),
        ipv4_prefix: 16,
        ipv6: None,
        mtu: 1420,
    }
}

fn wg_initiation(tunn: &mut Tunn) -> Vec<u8> {
    // boringtun's TAI64N timestamps have nanoseconds; keep each newer than the last.
    std::thread::sleep(Duration::from_millis(2));
    let mut buf = [0u8; 256];
    match tunn.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        other => panic!("boringtun made no initiation: {other:?}"),
    }
}

#[derive(Debug)]
enum TunnOutput {
    Network(Vec<u8>),
    Tunnel(Vec<u8>),
}

/// A datagram from the server into boringtun: what it sends back or delivers, if anything.
fn to_wg_client(tunn: &mut Tunn, datagram: &[u8]) -> Option<TunnOutput> {
    let mut dst = vec![0u8; 2048];
    match tunn.decapsulate(None, datagram, &mut dst) {
        TunnResult::WriteToNetwork(m) => Some(TunnOutput::Network(m.to_vec())),
        TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
            Some(TunnOutput::Tunnel(p.to_vec()))
        }
        TunnResult::Done => None,
        TunnResult::Err(e) => panic!("boringtun refused the datagram: {e:?}"),
    }
}

/// `packet` sealed by boringtun.
fn wg_seal(tunn: &mut Tunn, packet: &[u8]) -> Vec<u8> {
    let mut dst = vec![0u8; 2048];
    match tunn.encapsulate(packet, &mut dst) {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        other => panic!("boringtun has no session: {other:?}"),
    }
}

#[test]
fn a_wireguard_packet_goes_to_the_tun_and_its_endpoint_follows_it() {
    let mut h = Headend::new(false);
    let a = h.connect_wireguard(2, udp("192.0.2.2:4000"));
    let mut tunn = a.tunn;
    let packet = ipv4_packet(client_address(2), BACKEND);
    let mut datagram = wg_seal(&mut tunn, &packet);
    let roamed = udp("198.51.100.9:5000");
    let Outcome::ToTun(range) = h.decide(&mut datagram, roamed, T0) else {
        panic!("not to the TUN");
    };
    assert_eq!(&datagram[range], &packet[..]);
    assert_eq!(a.entry.endpoint(), Some(roamed));
    assert_eq!(
        a.entry.rx_bytes.load(Ordering::Relaxed),
        packet.len() as u64
    );
    // A replay of it is dropped, as for a native peer.
    let mut again = wg_seal(&mut tunn, &packet);
    let copy = again.clone();
    assert!(matches!(
        h.decide(&mut again, roamed, T0),
        Outcome::ToTun(_)
    ));
    assert_eq!(
        h.decide(&mut copy.clone(), roamed, T0),
        Outcome::Drop(DropReason::Replay)
    );
    // One it does not own as a source is dropped.
    let mut spoofed = wg_seal(&mut tunn, &ipv4_packet(client_address(9), BACKEND));
    assert_eq!(
        h.decide(&mut spoofed, a.udp, T0),
        Outcome::Drop(DropReason::SpoofedSource)
    );
}

#[test]
fn native_and_wireguard_clients_in_one_table_reach_each_other_through_the_relay() {
    let mut h = Headend::new(true);
    let mut native = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let wg = h.connect_wireguard(3, udp("192.0.2.3:4000"));
    let mut tunn = wg.tunn;

    // Native to WireGuard: sealed again under the WireGuard peer's ChaCha20-Poly1305 keys.
    let packet = ipv4_packet(client_address(2), client_address(3));
    let mut datagram = seal(&mut native.client, &packet, T0);
    let len = TRANSPORT_HEADER_LEN + packet.len() + TAG_LEN;
    assert_eq!(
        h.decide(&mut datagram, native.udp, T0),
        Outcome::Relay {
            len,
            to: client_address(3)
        }
    );
    match to_wg_client(&mut tunn, &datagram[..len]) {
        Some(TunnOutput::Tunnel(p)) => assert_eq!(p, packet),
        other => panic!("boringtun did not deliver the relayed packet: {other:?}"),
    }

    // WireGuard to native: sealed again under the native peer's AES-256-GCM keys.
    let packet = ipv4_packet(client_address(3), client_address(2));
    let mut datagram = wg_seal(&mut tunn, &packet);
    assert_eq!(
        h.decide(&mut datagram, wg.udp, T0),
        Outcome::Relay {
            len,
            to: client_address(2)
        }
    );
    let mut relayed = datagram[..len].to_vec();
    let ClientEvent::Packet(range) = native.client.receive(&mut relayed, T0) else {
        panic!("the relayed datagram does not open for the native client");
    };
    assert_eq!(&relayed[range], &packet[..]);
}

#[test]
fn under_load_a_wireguard_initiation_gets_a_wireguard_cookie_reply_then_is_queued_with_mac2() {
    let mut h = Headend::new(false);
    // A native peer too: its initiation under load still gets the native reply.
    let mut native = h.client(2);
    let mut tunn = h.wireguard_client(3);
    h.under_load();
    let src = udp("192.0.2.3:4000");
    let mut datagram = wg_initiation(&mut tunn);
    let Outcome::CookieReply { len } = h.decide(&mut datagram, src, T0) else {
        panic!("no cookie reply under load");
    };
    assert_eq!(len, COOKIE_REPLY_LEN);
    // boringtun opens the XChaCha20-Poly1305 cookie and keeps it.
    assert!(to_wg_client(&mut tunn, &datagram[..len]).is_none());
    let retry = wg_initiation(&mut tunn);
    assert!(matches!(
        h.decide(&mut retry.clone(), udp("192.0.2.3:4001"), T0),
        Outcome::CookieReply { .. }
    ));
    assert_eq!(
        h.decide(&mut retry.clone(), src, T0),
        Outcome::QueueHandshake,
        "mac2 under the WireGuard cookie verifies for its source"
    );

    let native_src = udp("192.0.2.2:4000");
    let mut datagram = transmit(&mut native, T0, &mut h.rng);
    let Outcome::CookieReply { len } = h.decide(&mut datagram, native_src, T0) else {
        panic!("no cookie reply under load");
    };
    assert_eq!(
        native.receive(&mut datagram[..len], T0),
        ClientEvent::CookieReceived
    );
}
