//! Every outcome of [`Gate::decide`], without I/O: a server and real clients of the sans-IO
//! core complete their handshakes in memory, the server's sessions go into a session table,
//! and the clients' datagrams go through the gate on a simulated clock.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::proto::admission::COOKIE_REPLY_BUDGET_BURST;
use crate::proto::client::{Client, ClientEvent, ClientParams};
use crate::proto::constants::{KEEPALIVE_ANSWER_AFTER, REJECT_AFTER_TIME};
use crate::proto::cookie::CookieJar;
use crate::proto::keys::{PresharedKey, PublicKey, StaticSecret};
use crate::proto::rng::SeededRandom;
use crate::proto::server::{Established, HandshakeReply, PeerConfig, Server};
use crate::proto::suite::Suite;
use crate::proto::wire::{AddressAssignment, INITIATION_LEN, RESPONSE_LEN};
use crate::server::session_table::SessionTable;

mod client;
mod ecn;
mod flood;
mod wireguard;

const T0: Instant = Instant::from_nanos(1_000_000_000);
/// A host behind the server, where clients send their packets.
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

fn udp(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

/// Client `n`'s virtual address.
fn client_address(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 66, 0, n)
}

/// An IPv4/UDP packet from `src` to `dst` with an 8-byte payload: 36 bytes.
fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 36];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&36u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[28..36].copy_from_slice(b"decision");
    p
}

/// A server, its session table and a worker's gate in front of it.
struct Headend {
    server: Server,
    table: SessionTable,
    gate: Gate,
    load: Arc<LoadSignal>,
    rng: SeededRandom,
}

/// A client connected through the [`Headend`], and its peer entry in the table.
struct Connected {
    client: Client,
    entry: Arc<PeerEntry>,
    /// Where its datagrams come from.
    udp: SocketAddr,
}

impl Headend {
    fn new(client_to_client: bool) -> Self {
        let mut rng = SeededRandom(13);
        let server = Server::new(secret(&mut rng), T0, &mut rng);
        let load = Arc::new(LoadSignal::default());
        let config = GateConfig {
            role: GateRole::Server,
            mac_keys: Arc::new(crate::proto::cookie::ServerMacKeys::new(
                server.public_key().as_bytes(),
            )),
            load: load.clone(),
            cookie_secrets: Arc::new(arc_swap::ArcSwap::new(server.cookie_secrets().clone())),
            client_to_client,
            mss_clamp: None,
        };
        Headend {
            gate: Gate::new(config, &mut rng),
            server,
            table: SessionTable::new(),
            load,
            rng,
        }
    }

    /// Everything the gate decides from now on is decided under load.
    fn under_load(&self) {
        self.load.publish(Some(Instant::from_nanos(u64::MAX)));
    }

    /// Runs `datagram` from `src` through the gate, arrived with a Not-ECT outer header; the
    /// decision, with anything it borrows from the table resolved to an owned value, and the
    /// datagram as the gate left it.
    fn decide(&mut self, datagram: &mut [u8], src: SocketAddr, now: Instant) -> Outcome {
        self.decide_marked(datagram, src, Ecn::NotEct, now)
    }

    /// [`Headend::decide`] for a datagram whose outer header arrived with `outer_ecn`.
    fn decide_marked(
        &mut self,
        datagram: &mut [u8],
        src: SocketAddr,
        outer_ecn: Ecn,
        now: Instant,
    ) -> Outcome {
        let snapshot = self.table.snapshot();
        let guard = snapshot.guard();
        let arrival = Arrival {
            src,
            outer_ecn,
            now,
        };
        Outcome::of(self.gate.decide(datagram, arrival, &snapshot, &guard))
    }

    /// Configures peer `n` at 10.66.0.n with `public_key`, speaking `suite`.
    fn add_peer(&mut self, n: u8, public_key: PublicKey, suite: Suite) {
        self.server.add_peer(PeerConfig {
            public_key,
            psk: PresharedKey::zero(),
            assignment: assignment(n),
            allowed_ips: Vec::new(),
            suite,
        });
    }

    /// Has the server answer a genuine `initiation` from `udp` (not under load): the response
    /// it wrote (in a buffer of the native length, the longer one) and the handshake's result.
    fn accept(&mut self, initiation: &[u8], udp: SocketAddr) -> ([u8; RESPONSE_LEN], Established) {
        let mut response = [0u8; RESPONSE_LEN];
        let reply = self
            .server
            .handle_initiation(initiation, udp, T0, false, &mut self.rng, &mut response)
            .expect("a genuine initiation");
        let HandshakeReply::Established(done) = reply else {
            panic!("not under load, so no cookie reply");
        };
        (response, done)
    }

    /// Publishes a completed handshake as the control thread does: the peer of `suite` with
    /// `assignment` in the table, its session under its receiver index.
    fn publish(
        &mut self,
        done: Established,
        assignment: AddressAssignment,
        suite: Suite,
    ) -> Arc<PeerEntry> {
        let entry = Arc::new(PeerEntry::new(done.peer, done.session, assignment).with_suite(suite));
        self.table.insert_peer(&entry);
        self.table.insert_index(done.local_index, &entry);
        entry
    }

    /// Runs the keepalive that confirms a new peer's keys through the gate: the server has
    /// sent it nothing yet, so it is answered.
    fn confirm(&mut self, keepalive: &mut [u8], udp: SocketAddr) {
        assert_eq!(
            self.decide(keepalive, udp, T0),
            Outcome::KeepaliveReply {
                len: TRANSPORT_MIN_LEN
            }
        );
    }

    /// A client for a new peer `n` at 10.66.0.n, not yet connected.
    fn client(&mut self, n: u8) -> Client {
        let secret = secret(&mut self.rng);
        self.add_peer(n, secret.public_key(), Suite::Native);
        Client::new(
            ClientParams {
                secret,
                server: *self.server.public_key(),
                psk: PresharedKey::zero(),
                persistent_keepalive: None,
            },
            T0,
            Duration::from_secs(1_700_000_000),
        )
    }

    /// Peer `n` connected from `udp`, as the control thread publishes a handshake: the
    /// initiation answered, the session under its receiver index in the table. Its first
    /// datagram (the keepalive that confirms the keys) is not sent yet.
    fn connect(&mut self, n: u8, udp: SocketAddr) -> Connected {
        let mut client = self.client(n);
        let initiation = transmit(&mut client, T0, &mut self.rng);
        let (mut response, done) = self.accept(&initiation, udp);
        let ClientEvent::Connected(assignment) = client.receive(&mut response, T0) else {
            panic!("the server's response does not connect the client");
        };
        let entry = self.publish(done, assignment, Suite::Native);
        Connected { client, entry, udp }
    }

    /// Peer `n` connected and its keys confirmed by its keepalive through the gate.
    fn connect_confirmed(&mut self, n: u8, udp: SocketAddr) -> Connected {
        let mut peer = self.connect(n, udp);
        let mut keepalive = transmit(&mut peer.client, T0, &mut self.rng);
        self.confirm(&mut keepalive, udp);
        peer
    }
}

/// [`Decision`] with the relay's peer named by its address, so that tests can compare.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    ToTun(Range<usize>),
    Relay {
        len: usize,
        to: Ipv4Addr,
        outer_tos: u8,
    },
    QueueHandshake,
    PassToControl,
    CookieReply {
        len: usize,
    },
    Keepalive,
    KeepaliveReply {
        len: usize,
    },
    Drop(DropReason),
}

impl Outcome {
    /// What a test compares of a decision (the relay's peer by its address).
    fn of(decision: Decision<'_>) -> Outcome {
        match decision {
            Decision::ToTun(range) => Outcome::ToTun(range),
            Decision::Relay {
                len,
                peer,
                outer_tos,
            } => Outcome::Relay {
                len,
                to: peer.assignment.ipv4,
                outer_tos,
            },
            Decision::QueueHandshake => Outcome::QueueHandshake,
            Decision::PassToControl => Outcome::PassToControl,
            Decision::CookieReply { len } => Outcome::CookieReply { len },
            Decision::Keepalive => Outcome::Keepalive,
            Decision::KeepaliveReply { len } => Outcome::KeepaliveReply { len },
            Decision::Drop(why) => Outcome::Drop(why),
        }
    }
}

fn secret(rng: &mut SeededRandom) -> StaticSecret {
    let mut b = [0u8; 32];
    rng.fill(&mut b);
    StaticSecret::from_bytes(b)
}

/// The next datagram `client` wants to send at `now`.
fn transmit(client: &mut Client, now: Instant, rng: &mut SeededRandom) -> Vec<u8> {
    let mut out = [0u8; 256];
    let n = client
        .poll_transmit(now, rng, &mut out)
        .expect("the client has something to send");
    out[..n].to_vec()
}

/// `packet` sealed by `client`.
fn seal(client: &mut Client, packet: &[u8], now: Instant) -> Vec<u8> {
    let mut buf = vec![0u8; TRANSPORT_HEADER_LEN + packet.len() + TAG_LEN];
    buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + packet.len()].copy_from_slice(packet);
    let n = client
        .encrypt(&mut buf, packet.len(), now)
        .expect("a connected client seals");
    buf.truncate(n);
    buf
}

/// Client `n`'s address assignment: 10.66.0.n/16.
fn assignment(n: u8) -> AddressAssignment {
    AddressAssignment {
        ipv4: client_address(n),
        ipv4_prefix: 16,
        ipv6: None,
        mtu: 1420,
    }
}

/// Runs `datagram`, sealing `packet` for the peer of `entry`, through the gate from `roamed`:
/// it goes to the TUN opened in place, the peer's endpoint follows it and its bytes count.
fn assert_to_tun_from(
    h: &mut Headend,
    entry: &PeerEntry,
    datagram: &mut [u8],
    packet: &[u8],
    roamed: SocketAddr,
) {
    let Outcome::ToTun(range) = h.decide(datagram, roamed, T0) else {
        panic!("not to the TUN");
    };
    assert_eq!(&datagram[range], packet, "the plaintext, opened in place");
    assert_eq!(entry.endpoint(), Some(roamed));
    assert_eq!(entry.rx_bytes.load(Ordering::Relaxed), packet.len() as u64);
}

/// Runs `datagram`, sealing a packet of `packet_len` bytes, through the gate from `src`; it
/// must be relayed to client `to`. What the relay sends that client.
fn relayed(
    h: &mut Headend,
    datagram: &mut [u8],
    src: SocketAddr,
    to: u8,
    packet_len: usize,
) -> Vec<u8> {
    let len = TRANSPORT_HEADER_LEN + packet_len + TAG_LEN;
    assert_eq!(
        h.decide(datagram, src, T0),
        Outcome::Relay {
            len,
            to: client_address(to),
            outer_tos: 0,
        }
    );
    datagram[..len].to_vec()
}

/// What native `client` opens from a relayed datagram; `who` names it if it does not open.
fn opened_by(client: &mut Client, mut relayed: Vec<u8>, who: &str) -> Vec<u8> {
    let ClientEvent::Packet(range) = client.receive(&mut relayed, T0) else {
        panic!("the relayed datagram does not open for {who}");
    };
    relayed[range].to_vec()
}

#[test]
fn a_packet_from_a_client_goes_to_the_tun_and_its_endpoint_follows_it() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let packet = ipv4_packet(client_address(2), BACKEND);
    let mut datagram = seal(&mut a.client, &packet, T0);
    let roamed = udp("198.51.100.9:5000");
    assert_to_tun_from(&mut h, &a.entry, &mut datagram, &packet, roamed);
}

#[test]
fn trailing_bytes_after_the_stated_length_stay_out_of_the_tun() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let packet = ipv4_packet(client_address(2), BACKEND);
    let mut padded = packet.clone();
    padded.extend_from_slice(&[0; 12]);
    let mut datagram = seal(&mut a.client, &padded, T0);
    let Outcome::ToTun(range) = h.decide(&mut datagram, a.udp, T0) else {
        panic!("not to the TUN");
    };
    assert_eq!(&datagram[range], &packet[..]);
}

#[test]
fn a_keepalive_is_delivered_nowhere_and_confirms_the_keys() {
    let mut h = Headend::new(false);
    let mut a = h.connect(2, udp("192.0.2.2:4000"));
    assert_eq!(a.entry.endpoint(), None, "nothing authenticated yet");
    let mut keepalive = transmit(&mut a.client, T0, &mut h.rng);
    let len = TRANSPORT_MIN_LEN;
    assert_eq!(
        h.decide(&mut keepalive, a.udp, T0),
        Outcome::KeepaliveReply { len }
    );
    assert_eq!(a.entry.endpoint(), Some(a.udp));
    assert!(a.entry.session.current(T0).is_some(), "confirmed: current");
    assert_eq!(a.entry.rx_bytes.load(Ordering::Relaxed), 0);
    // The answer is a keepalive under the confirmed keys.
    assert_eq!(
        a.client.receive(&mut keepalive[..len], T0),
        ClientEvent::Keepalive
    );
}

/// A client that probes a silent server (several servers configured) gets an answer from a
/// live one; one the server has just sent to needs none, so keepalives do not ping-pong.
#[test]
fn a_keepalive_is_answered_only_when_the_server_has_been_silent_towards_its_peer() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let just_after = T0 + Duration::from_millis(100);
    let mut probe = seal(&mut a.client, &[], just_after);
    assert_eq!(
        h.decide(&mut probe, a.udp, just_after),
        Outcome::Keepalive,
        "the server answered the confirmation 100 ms ago"
    );
    let later = T0 + KEEPALIVE_ANSWER_AFTER;
    let mut probe = seal(&mut a.client, &[], later);
    let Outcome::KeepaliveReply { len } = h.decide(&mut probe, a.udp, later) else {
        panic!("a keepalive after {KEEPALIVE_ANSWER_AFTER:?} of silence is not answered");
    };
    assert_eq!(
        a.client.receive(&mut probe[..len], later),
        ClientEvent::Keepalive
    );
    assert_eq!(a.entry.session.last_sent(), Some(later));
}

#[test]
fn with_client_to_client_a_packet_for_another_client_is_sealed_for_it() {
    let mut h = Headend::new(true);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let mut b = h.connect_confirmed(3, udp("192.0.2.3:4000"));
    let packet = ipv4_packet(client_address(2), client_address(3));
    let mut datagram = seal(&mut a.client, &packet, T0);
    let relayed = relayed(&mut h, &mut datagram, a.udp, 3, packet.len());
    // What the other client gets is the packet, under its own keys.
    assert_eq!(opened_by(&mut b.client, relayed, "its client"), packet);
    assert_eq!(
        b.entry.tx_bytes.load(Ordering::Relaxed),
        packet.len() as u64
    );
}

/// A packet a client addresses to itself comes back to it, as the kernel's route into the TUN
/// would also bring it back: the fuzz target once assumed a relay is always for someone else.
#[test]
fn with_client_to_client_a_packet_to_the_senders_own_address_comes_back_to_it() {
    let mut h = Headend::new(true);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let packet = ipv4_packet(client_address(2), client_address(2));
    let mut datagram = seal(&mut a.client, &packet, T0);
    let relayed = relayed(&mut h, &mut datagram, a.udp, 2, packet.len());
    assert_eq!(opened_by(&mut a.client, relayed, "its sender"), packet);
}

#[test]
fn without_client_to_client_a_packet_for_another_client_goes_to_the_tun() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let b = h.connect_confirmed(3, udp("192.0.2.3:4000"));
    let packet = ipv4_packet(client_address(2), client_address(3));
    let mut datagram = seal(&mut a.client, &packet, T0);
    let Outcome::ToTun(range) = h.decide(&mut datagram, a.udp, T0) else {
        panic!("not to the TUN");
    };
    assert_eq!(&datagram[range], &packet[..]);
    assert_eq!(b.entry.tx_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_relay_to_a_client_without_keys_is_dropped() {
    let mut h = Headend::new(true);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let b = h.connect_confirmed(3, udp("192.0.2.3:4000"));
    b.entry.session.clear();
    let packet = ipv4_packet(client_address(2), client_address(3));
    let mut datagram = seal(&mut a.client, &packet, T0);
    assert_eq!(
        h.decide(&mut datagram, a.udp, T0),
        Outcome::Drop(DropReason::NoKeypair)
    );
}

#[test]
fn a_packet_from_an_address_the_client_does_not_own_is_dropped() {
    let mut h = Headend::new(true);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let _b = h.connect_confirmed(3, udp("192.0.2.3:4000"));
    // Posing as another client, and as a host behind the server.
    for spoofed in [client_address(3), BACKEND] {
        let packet = ipv4_packet(spoofed, client_address(3));
        let mut datagram = seal(&mut a.client, &packet, T0);
        assert_eq!(
            h.decide(&mut datagram, a.udp, T0),
            Outcome::Drop(DropReason::SpoofedSource),
            "from {spoofed}"
        );
    }
    assert_eq!(a.entry.rx_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_plaintext_that_is_no_ip_packet_is_dropped_as_malformed() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let mut too_long = ipv4_packet(client_address(2), BACKEND);
    too_long[2..4].copy_from_slice(&100u16.to_be_bytes());
    for plaintext in [vec![0x45; 8], vec![0x00; 40], too_long] {
        let mut datagram = seal(&mut a.client, &plaintext, T0);
        assert_eq!(
            h.decide(&mut datagram, a.udp, T0),
            Outcome::Drop(DropReason::Malformed),
            "{plaintext:02x?}"
        );
    }
}

#[test]
fn a_message_for_an_index_nobody_holds_is_dropped() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let mut datagram = seal(&mut a.client, &ipv4_packet(client_address(2), BACKEND), T0);
    let index = u32::from_le_bytes(datagram[4..8].try_into().expect("4 bytes"));
    datagram[4..8].copy_from_slice(&index.wrapping_add(1).to_le_bytes());
    let from = udp("203.0.113.1:1");
    assert_eq!(
        h.decide(&mut datagram, from, T0),
        Outcome::Drop(DropReason::UnknownIndex)
    );
    assert_eq!(
        a.entry.endpoint(),
        Some(a.udp),
        "no roaming without authentication"
    );
}

#[test]
fn a_replayed_message_is_dropped() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let datagram = seal(&mut a.client, &ipv4_packet(client_address(2), BACKEND), T0);
    assert!(matches!(
        h.decide(&mut datagram.clone(), a.udp, T0),
        Outcome::ToTun(_)
    ));
    let from = udp("203.0.113.1:1");
    assert_eq!(
        h.decide(&mut datagram.clone(), from, T0),
        Outcome::Drop(DropReason::Replay)
    );
    assert_eq!(
        a.entry.endpoint(),
        Some(a.udp),
        "a replay does not move the peer"
    );
}

#[test]
fn a_tampered_message_fails_authentication() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let mut datagram = seal(&mut a.client, &ipv4_packet(client_address(2), BACKEND), T0);
    datagram[TRANSPORT_HEADER_LEN + 3] ^= 1;
    let from = udp("203.0.113.1:1");
    assert_eq!(
        h.decide(&mut datagram, from, T0),
        Outcome::Drop(DropReason::Authentication)
    );
    assert_eq!(a.entry.endpoint(), Some(a.udp));
}

#[test]
fn a_message_under_expired_keys_is_dropped() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let mut datagram = seal(&mut a.client, &ipv4_packet(client_address(2), BACKEND), T0);
    assert_eq!(
        h.decide(&mut datagram, a.udp, T0 + REJECT_AFTER_TIME),
        Outcome::Drop(DropReason::KeyExpired)
    );
}

#[test]
fn what_is_no_message_of_ours_is_malformed_and_what_a_server_never_receives_unexpected() {
    let mut h = Headend::new(false);
    let from = udp("203.0.113.1:1");
    let mut short_transport = vec![4, 0, 0, 0];
    short_transport.resize(TRANSPORT_HEADER_LEN + TAG_LEN - 1, 0);
    let mut reserved_set = vec![4, 0, 1, 0];
    reserved_set.resize(64, 0);
    let mut unknown_type = vec![9, 0, 0, 0];
    unknown_type.resize(64, 0);
    let mut long_initiation = vec![1, 0, 0, 0];
    long_initiation.resize(INITIATION_LEN + 1, 0);
    for bytes in [
        vec![],
        vec![4],
        short_transport,
        reserved_set,
        unknown_type,
        long_initiation,
    ] {
        let mut datagram = bytes.clone();
        assert_eq!(
            h.decide(&mut datagram, from, T0),
            Outcome::Drop(DropReason::Malformed),
            "{bytes:02x?}"
        );
    }
    let mut response = vec![2, 0, 0, 0];
    response.resize(RESPONSE_LEN, 0);
    let mut cookie_reply = vec![3, 0, 0, 0];
    cookie_reply.resize(COOKIE_REPLY_LEN, 0);
    for mut datagram in [response, cookie_reply] {
        assert_eq!(
            h.decide(&mut datagram, from, T0),
            Outcome::Drop(DropReason::UnexpectedType),
            "type {}",
            datagram[0]
        );
    }
}

#[test]
fn an_initiation_is_queued_unchanged_when_not_under_load() {
    let mut h = Headend::new(false);
    let mut client = h.client(2);
    let initiation = transmit(&mut client, T0, &mut h.rng);
    let mut datagram = initiation.clone();
    assert_eq!(
        h.decide(&mut datagram, udp("192.0.2.2:4000"), T0),
        Outcome::QueueHandshake
    );
    assert_eq!(datagram, initiation);
}

#[test]
fn an_initiation_with_a_bad_mac1_is_dropped_loaded_or_not() {
    let mut h = Headend::new(false);
    let mut client = h.client(2);
    let mut initiation = transmit(&mut client, T0, &mut h.rng);
    initiation[116] ^= 1; // the first byte of mac1
    let src = udp("192.0.2.2:4000");
    assert_eq!(
        h.decide(&mut initiation.clone(), src, T0),
        Outcome::Drop(DropReason::BadMac)
    );
    h.under_load();
    assert_eq!(
        h.decide(&mut initiation.clone(), src, T0),
        Outcome::Drop(DropReason::BadMac)
    );
}

#[test]
fn under_load_an_initiation_without_mac2_gets_a_cookie_then_one_with_it_is_queued() {
    let mut h = Headend::new(false);
    h.under_load();
    let mut client = h.client(2);
    let src = udp("192.0.2.2:4000");
    let mut datagram = transmit(&mut client, T0, &mut h.rng);
    let Outcome::CookieReply { len } = h.decide(&mut datagram, src, T0) else {
        panic!("no cookie reply under load");
    };
    assert_eq!(len, COOKIE_REPLY_LEN);
    // The reply, written over the initiation, is genuine for the client.
    assert_eq!(
        client.receive(&mut datagram[..len], T0),
        ClientEvent::CookieReceived
    );
    // The retransmission carries mac2, which holds for `src` alone.
    let (later, retry) = retransmission(&mut client, &mut h.rng);
    let elsewhere = udp("192.0.2.2:4001");
    assert!(matches!(
        h.decide(&mut retry.clone(), elsewhere, later),
        Outcome::CookieReply { .. }
    ));
    assert_eq!(
        h.decide(&mut retry.clone(), src, later),
        Outcome::QueueHandshake
    );
}

/// When the client retransmits its initiation, and the initiation.
fn retransmission(client: &mut Client, rng: &mut SeededRandom) -> (Instant, Vec<u8>) {
    let mut now = T0;
    let mut out = [0u8; 256];
    loop {
        now = client.next_timeout(now);
        if let Some(n) = client.poll_transmit(now, rng, &mut out) {
            assert_eq!(n, INITIATION_LEN);
            return (now, out[..n].to_vec());
        }
    }
}

#[test]
fn under_load_initiations_past_the_cookie_reply_budget_are_shed() {
    let mut h = Headend::new(false);
    h.under_load();
    let mut client = h.client(2);
    let initiation = transmit(&mut client, T0, &mut h.rng);
    // No per-source limit: the budget is all, whoever asks.
    for i in 0..COOKIE_REPLY_BUDGET_BURST {
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 1 + i as u16);
        assert_eq!(
            h.decide(&mut initiation.clone(), from, T0),
            Outcome::CookieReply {
                len: COOKIE_REPLY_LEN
            },
            "reply {i}"
        );
    }
    assert_eq!(
        h.decide(&mut initiation.clone(), udp("198.51.100.1:1"), T0),
        Outcome::Drop(DropReason::HandshakeShed)
    );
}

#[test]
fn under_load_initiations_with_mac2_past_their_sources_rate_are_shed() {
    let mut h = Headend::new(false);
    h.under_load();
    let src = udp("192.0.2.2:4000");
    let mut jar = CookieJar::new(h.server.public_key().as_bytes());
    let mut first = stamped(&mut jar, &mut h.rng);
    let Outcome::CookieReply { len } = h.decide(&mut first, src, T0) else {
        panic!("no cookie reply under load");
    };
    jar.accept_cookie_reply(&first[..len], T0)
        .expect("the gate's cookie reply");
    let mut queued = 0;
    let outcome = loop {
        let mut m = stamped(&mut jar, &mut h.rng);
        match h.decide(&mut m, src, T0) {
            Outcome::QueueHandshake => queued += 1,
            other => break other,
        }
    };
    assert_eq!(outcome, Outcome::Drop(DropReason::HandshakeShed));
    assert_eq!(queued, crate::proto::ratelimit::DEFAULT_BURST);
}

/// An initiation with a random body and valid macs from `jar` (mac2 once it holds a cookie).
fn stamped(jar: &mut CookieJar, rng: &mut SeededRandom) -> [u8; INITIATION_LEN] {
    let mut m = [0u8; INITIATION_LEN];
    rng.fill(&mut m[4..116]);
    m[0] = 1;
    jar.stamp(&mut m, T0);
    m
}
