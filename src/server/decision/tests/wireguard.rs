//! The gate with WireGuard peers beside native ones in one table: boringtun's sans-IO `Tunn`
//! plays the stock client. Initiations are told apart by mac1, cookie replies come in the
//! initiation's suite, and the data path (open, roam, relay) is the same for both.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use super::*;
use crate::proto::padding::Padding;
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
        let public_key = StaticSecret::from_bytes(bytes).public_key();
        self.add_peer(n, public_key, Suite::WireGuard);
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
        let (response, done) = self.accept(&initiation, udp);
        let response_len = done.len;
        let entry = self.publish(done, assignment(n), Suite::WireGuard);
        let mut keepalive = match to_wg_client(&mut tunn, &response[..response_len]) {
            Some(TunnOutput::Network(k)) => k,
            other => panic!("boringtun sent no keepalive after the response: {other:?}"),
        };
        // A stock client takes the answer to its keepalive as any keepalive.
        self.confirm(&mut keepalive, udp);
        initiation.clear();
        WgConnected { tunn, entry, udp }
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
    assert_to_tun_from(&mut h, &a.entry, &mut datagram, &packet, roamed);
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

    // Native to WireGuard: sealed again under the WireGuard peer's ChaCha20-Poly1305 keys,
    // unpadded: the native datagram has no room for padding (`relay_padding`).
    let packet = ipv4_packet(client_address(2), client_address(3));
    let mut datagram = seal(&mut native.client, &packet, T0);
    let relayed_to_wg = relayed(&mut h, &mut datagram, native.udp, 3, packet.len());
    match to_wg_client(&mut tunn, &relayed_to_wg) {
        Some(TunnOutput::Tunnel(p)) => assert_eq!(p, packet),
        other => panic!("boringtun did not deliver the relayed packet: {other:?}"),
    }

    // WireGuard to native: sealed again under the native peer's AES-256-GCM keys.
    let packet = ipv4_packet(client_address(3), client_address(2));
    let mut datagram = wg_seal(&mut tunn, &packet);
    let relayed_to_native = relayed(&mut h, &mut datagram, wg.udp, 2, packet.len());
    assert_eq!(
        opened_by(&mut native.client, relayed_to_native, "the native client"),
        packet
    );
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

/// `packet` followed by zeros to WireGuard's padded length under a 1420 MTU, as wireguard-go
/// seals it (boringtun itself does not pad).
fn padded_as_wireguard_go(packet: &[u8]) -> Vec<u8> {
    let mut padded = packet.to_vec();
    padded.resize(
        crate::proto::padding::wireguard_padded_len(packet.len(), 1420),
        0,
    );
    padded
}

#[test]
fn a_padded_wireguard_packet_goes_to_the_tun_without_its_padding() {
    let mut h = Headend::new(false);
    let a = h.connect_wireguard(2, udp("192.0.2.2:4000"));
    let mut tunn = a.tunn;
    let packet = ipv4_packet(client_address(2), BACKEND);
    let padded = padded_as_wireguard_go(&packet);
    assert_eq!(padded.len(), 48);
    let mut datagram = wg_seal(&mut tunn, &padded);
    assert_to_tun_from(&mut h, &a.entry, &mut datagram, &packet, a.udp);
}

#[test]
fn a_relay_to_a_wireguard_peer_is_padded_and_one_to_a_native_peer_is_not() {
    let mut h = Headend::new(true);
    let mut native = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let wg = h.connect_wireguard(3, udp("192.0.2.3:4000"));
    let other_wg = h.connect_wireguard(4, udp("192.0.2.4:4000"));
    let (mut tunn, mut other_tunn) = (wg.tunn, other_wg.tunn);

    // WireGuard to WireGuard: the sender's padding is room for the receiver's.
    let packet = ipv4_packet(client_address(3), client_address(4));
    let mut stale_padding = padded_as_wireguard_go(&packet);
    stale_padding[packet.len()..].fill(0xee);
    let mut datagram = wg_seal(&mut tunn, &stale_padding);
    let padded_len = TRANSPORT_HEADER_LEN + 48 + TAG_LEN;
    assert_eq!(
        h.decide(&mut datagram, wg.udp, T0),
        Outcome::Relay {
            len: padded_len,
            to: client_address(4),
            outer_tos: 0,
        }
    );
    assert_eq!(other_wg.entry.padding, Padding::WireGuard { mtu: 1420 });
    match to_wg_client(&mut other_tunn, &datagram[..padded_len]) {
        Some(TunnOutput::Tunnel(p)) => assert_eq!(p, packet),
        other => panic!("boringtun did not deliver the relayed packet: {other:?}"),
    }
    // The padding is zeros whatever the sender's was: `Session::encrypt_padded` (its tests).

    // WireGuard to native: sealed without padding.
    let packet = ipv4_packet(client_address(3), client_address(2));
    let mut datagram = wg_seal(&mut tunn, &padded_as_wireguard_go(&packet));
    let relayed_to_native = relayed(&mut h, &mut datagram, wg.udp, 2, packet.len());
    assert_eq!(
        opened_by(&mut native.client, relayed_to_native, "the native client"),
        packet
    );
}

impl Headend {
    /// Runs `datagrams`, one GRO receive (`stride` bytes each, the last what is left), from
    /// `src` through [`Gate::open_train`] and [`Gate::decide_opened`], as the worker does; `None`
    /// where the gate takes them one by one instead.
    fn decide_train(
        &mut self,
        datagrams: &mut [u8],
        stride: usize,
        src: SocketAddr,
    ) -> Option<Vec<Outcome>> {
        let snapshot = self.table.snapshot();
        let guard = snapshot.guard();
        let mut train = self
            .gate
            .open_train(datagrams, stride, T0, &snapshot, &guard)?;
        let outcomes = datagrams.chunks_mut(stride).enumerate().map(|(i, d)| {
            let arrival = Arrival {
                src,
                outer_ecn: Ecn::NotEct,
                now: T0,
            };
            let decision =
                self.gate
                    .decide_opened(Some(&mut train), i, d, arrival, &snapshot, &guard);
            Outcome::of(decision)
        });
        Some(outcomes.collect())
    }
}

#[test]
fn a_receive_of_one_peer_is_opened_as_a_train_and_each_datagram_decided_as_alone() {
    let mut h = Headend::new(true);
    let mut native = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let wg = h.connect_wireguard(3, udp("192.0.2.3:4000"));
    let mut tunn = wg.tunn;
    // Twelve datagrams of one size, as a GRO receive brings them: to the backend, but one
    // from an address the peer does not own, one to the native client, one tampered with.
    let packets: Vec<Vec<u8>> = (0..12)
        .map(|i| match i {
            4 => ipv4_packet(client_address(9), BACKEND),
            7 => ipv4_packet(client_address(3), client_address(2)),
            _ => ipv4_packet(client_address(3), BACKEND),
        })
        .collect();
    let sealed: Vec<Vec<u8>> = packets.iter().map(|p| wg_seal(&mut tunn, p)).collect();
    let stride = sealed[0].len();
    assert!(sealed.iter().all(|d| d.len() == stride), "padded alike");
    let mut train = sealed.concat();
    train[9 * stride + 30] ^= 1;
    let roamed = udp("198.51.100.9:5000");
    let outcomes = h
        .decide_train(&mut train, stride, roamed)
        .expect("one peer's receive is a train");
    assert_eq!(outcomes.len(), 12);
    let inner = TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + 36;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let datagram = &train[i * stride..(i + 1) * stride];
        match i {
            4 => assert_eq!(outcome, Outcome::Drop(DropReason::SpoofedSource)),
            9 => assert_eq!(outcome, Outcome::Drop(DropReason::Authentication)),
            7 => {
                let len = TRANSPORT_HEADER_LEN + 36 + TAG_LEN;
                let to = client_address(2);
                let outer_tos = 0;
                assert_eq!(outcome, Outcome::Relay { len, to, outer_tos });
                let relayed = datagram[..len].to_vec();
                assert_eq!(opened_by(&mut native.client, relayed, "native"), packets[7]);
            }
            _ => {
                assert_eq!(outcome, Outcome::ToTun(inner.clone()), "datagram {i}");
                assert_eq!(&datagram[inner.clone()], &packets[i][..], "opened in place");
            }
        }
    }
    assert_eq!(wg.entry.endpoint(), Some(roamed), "roamed with the train");
    // The same receive untouched: replays all, but the one that was tampered with before.
    let again = h
        .decide_train(&mut sealed.concat(), stride, roamed)
        .unwrap();
    for (i, outcome) in again.into_iter().enumerate() {
        let expected = match i {
            9 => Outcome::ToTun(inner.clone()),
            _ => Outcome::Drop(DropReason::Replay),
        };
        assert_eq!(outcome, expected, "datagram {i} again");
    }
    // A receive that mixes peers, or holds one datagram, is not a train.
    let mixed = [
        wg_seal(&mut tunn, &packets[0]),
        seal(
            &mut native.client,
            &ipv4_packet(client_address(2), BACKEND),
            T0,
        ),
    ];
    assert!(h
        .decide_train(&mut mixed.concat(), stride, roamed)
        .is_none());
    let mut one = wg_seal(&mut tunn, &packets[0]);
    assert!(h.decide_train(&mut one, stride, roamed).is_none());
}

#[test]
fn a_native_peers_receive_is_a_train_too() {
    let mut h = Headend::new(false);
    let mut native = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let packet = ipv4_packet(client_address(2), BACKEND);
    let mut train: Vec<u8> = (0..6)
        .flat_map(|_| seal(&mut native.client, &packet, T0))
        .collect();
    let stride = train.len() / 6;
    let outcomes = h.decide_train(&mut train, stride, native.udp).unwrap();
    let inner = TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + packet.len();
    assert!(outcomes.len() == 6 && outcomes.iter().all(|o| *o == Outcome::ToTun(inner.clone())));
    assert!(train.chunks(stride).all(|d| d[inner.clone()] == packet[..]));
}
