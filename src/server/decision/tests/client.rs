//! The gate in the client role: a real server of the sans-IO core answers a real client, the
//! client's table holds one entry (its server, behind every address, under the client's own
//! session), and what the server sends goes through the client's gate.

use super::*;
use crate::proto::wire::PushConfig;
use ipnet::IpNet;

/// The server's underlay address, where all it sends comes from.
const SERVER_UDP: &str = "198.51.100.1:51820";
/// A host on the internet, behind the server as the client sees it.
const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);

/// A client's side of a tunnel: its gate, its table with the server's entry, and the server
/// it talks to (the sans-IO core's, for what it sends).
struct ClientEnd {
    gate: Gate,
    table: SessionTable,
    server_entry: Arc<PeerEntry>,
    client: Client,
    server: Server,
    /// The server's session for this client, once the handshake is done.
    server_session: Option<Arc<crate::proto::session::Session>>,
    client_key: PublicKey,
    rng: SeededRandom,
}

impl ClientEnd {
    /// A client not yet connected; `client_to_client` as a (misconfigured) server would have it.
    fn new(client_to_client: bool) -> Self {
        let mut rng = SeededRandom(29);
        let server = Server::new(secret(&mut rng), T0, &mut rng);
        let client_secret = secret(&mut rng);
        let client_key = client_secret.public_key();
        let client = Client::new(
            ClientParams {
                secret: client_secret,
                server: *server.public_key(),
                psk: PresharedKey::zero(),
                persistent_keepalive: None,
            },
            T0,
            Duration::from_secs(1_700_000_000),
        );
        let mut end = ClientEnd {
            gate: client_gate(&server, client_to_client, &mut rng),
            table: SessionTable::new(),
            server_entry: server_entry(&client, *server.public_key()),
            client,
            server,
            server_session: None,
            client_key,
            rng,
        };
        end.server.add_peer(PeerConfig {
            public_key: end.client_key,
            psk: PresharedKey::zero(),
            assignment: assignment(2),
            allowed_ips: Vec::new(),
            suite: Suite::Native,
        });
        end.table.insert_peer(&end.server_entry);
        end
    }

    fn decide(&mut self, datagram: &mut [u8], now: Instant) -> Outcome {
        let snapshot = self.table.snapshot();
        let guard = snapshot.guard();
        let arrival = Arrival {
            src: udp(SERVER_UDP),
            outer_ecn: Ecn::NotEct,
            now,
        };
        Outcome::of(self.gate.decide(datagram, arrival, &snapshot, &guard))
    }

    /// The server's response to the client's first initiation.
    fn response(&mut self) -> Vec<u8> {
        let initiation = transmit(&mut self.client, T0, &mut self.rng);
        let mut response = [0u8; RESPONSE_LEN];
        let reply = self
            .server
            .handle_initiation(
                &initiation,
                udp("192.0.2.2:4000"),
                T0,
                false,
                &mut self.rng,
                &mut response,
            )
            .expect("a genuine initiation");
        let HandshakeReply::Established(done) = reply else {
            panic!("not under load, so no cookie reply");
        };
        self.server_session = Some(done.session);
        response[..done.len].to_vec()
    }

    /// The response through the gate to the control thread, the client connected by it, its
    /// indexes published in its table (as its control thread does after each handshake
    /// event), and its first keepalive confirming the keys at the server.
    fn connect(&mut self) {
        let mut response = self.response();
        assert_eq!(self.decide(&mut response, T0), Outcome::PassToControl);
        let ClientEvent::Connected(_) = self.client.receive(&mut response, T0) else {
            panic!("the response passed on does not connect the client");
        };
        for index in self.client.session().local_indexes() {
            self.table.insert_index(index, &self.server_entry);
        }
        let mut keepalive = transmit(&mut self.client, T0, &mut self.rng);
        let index = wire::transport_receiver_index(&keepalive).expect("a transport message");
        self.server_session()
            .decrypt(index, &mut keepalive, T0)
            .expect("the server opens the client's keepalive");
    }

    fn server_session(&self) -> &crate::proto::session::Session {
        self.server_session.as_deref().expect("connected")
    }

    /// `packet` sealed by the server for the client.
    fn sealed_by_server(&self, packet: &[u8], now: Instant) -> Vec<u8> {
        let mut buf = vec![0u8; TRANSPORT_HEADER_LEN + packet.len() + TAG_LEN];
        buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + packet.len()].copy_from_slice(packet);
        let n = self
            .server_session()
            .encrypt(&mut buf, packet.len(), now)
            .expect("the server seals under confirmed keys");
        buf.truncate(n);
        buf
    }
}

/// A client's gate. The server's fields of its configuration hold the server's keys, which a
/// client's gate must never use.
fn client_gate(server: &Server, client_to_client: bool, rng: &mut SeededRandom) -> Gate {
    let config = GateConfig {
        role: GateRole::Client,
        mac_keys: Arc::new(crate::proto::cookie::ServerMacKeys::new(
            server.public_key().as_bytes(),
        )),
        load: Arc::new(LoadSignal::default()),
        cookie_secrets: Arc::new(arc_swap::ArcSwap::new(server.cookie_secrets().clone())),
        client_to_client,
        mss_clamp: None,
    };
    Gate::new(config, rng)
}

/// The client's entry for its server: its own session, every address behind it.
fn server_entry(client: &Client, server_key: PublicKey) -> Arc<PeerEntry> {
    let unspecified = AddressAssignment {
        ipv4: Ipv4Addr::UNSPECIFIED,
        ipv4_prefix: 0,
        ipv6: None,
        mtu: 1420,
    };
    let everything: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    let entry = PeerEntry::new(server_key, client.session().clone(), unspecified);
    Arc::new(entry.with_allowed_ips(everything))
}

#[test]
fn a_response_goes_to_the_control_thread_unchanged() {
    let mut end = ClientEnd::new(false);
    let response = end.response();
    let mut datagram = response.clone();
    assert_eq!(end.decide(&mut datagram, T0), Outcome::PassToControl);
    assert_eq!(datagram, response, "passed on as it came");
    assert_eq!(
        end.server_entry.endpoint(),
        None,
        "a response proves nothing"
    );
}

#[test]
fn a_packet_from_the_server_goes_to_the_tun_whatever_its_source() {
    let mut end = ClientEnd::new(false);
    end.connect();
    let packet = ipv4_packet(INTERNET_HOST, client_address(2));
    let mut datagram = end.sealed_by_server(&packet, T0);
    let Outcome::ToTun(range) = end.decide(&mut datagram, T0) else {
        panic!("not to the TUN");
    };
    assert_eq!(&datagram[range], &packet[..], "opened in place");
    assert_eq!(end.server_entry.endpoint(), Some(udp(SERVER_UDP)));
    assert_eq!(
        end.client.session().last_received(),
        Some(T0),
        "the client's timers see it"
    );
}

#[test]
fn a_packet_under_an_index_not_yet_published_is_dropped() {
    let mut end = ClientEnd::new(false);
    end.connect();
    for index in end.client.session().local_indexes() {
        end.table.remove_index(index);
    }
    let packet = ipv4_packet(INTERNET_HOST, client_address(2));
    let mut datagram = end.sealed_by_server(&packet, T0);
    assert_eq!(
        end.decide(&mut datagram, T0),
        Outcome::Drop(DropReason::UnknownIndex)
    );
}

#[test]
fn a_keepalive_from_the_server_is_never_answered() {
    let mut end = ClientEnd::new(false);
    end.connect();
    // Long after the client last sent anything: a server's gate would answer now.
    let later = T0 + KEEPALIVE_ANSWER_AFTER * 2;
    let mut keepalive = end.sealed_by_server(&[], later);
    assert_eq!(end.decide(&mut keepalive, later), Outcome::Keepalive);
    assert_eq!(end.client.session().last_received(), Some(later));
}

#[test]
fn a_client_never_relays_even_if_configured_as_a_server_would_be() {
    let mut end = ClientEnd::new(true);
    end.connect();
    // Addressed to a network the table routes to the server itself.
    let packet = ipv4_packet(INTERNET_HOST, Ipv4Addr::new(10, 9, 9, 9));
    let mut datagram = end.sealed_by_server(&packet, T0);
    assert!(
        matches!(end.decide(&mut datagram, T0), Outcome::ToTun(_)),
        "to the TUN, not sealed back to the server"
    );
}

#[test]
fn a_push_under_a_published_index_goes_to_the_control_thread() {
    let mut end = ClientEnd::new(false);
    end.connect();
    let push = PushConfig::new(vec!["10.20.0.0/16".parse().unwrap()], Vec::new()).unwrap();
    assert!(end.server.set_push(&end.client_key, push.clone(), T0));
    let mut out = [0u8; 1500];
    let n = end
        .server
        .write_push(&end.client_key, T0, &mut out)
        .expect("a push is due after set_push");
    let mut datagram = out[..n].to_vec();
    assert_eq!(end.decide(&mut datagram, T0), Outcome::PassToControl);
    assert_eq!(
        end.client.receive(&mut datagram, T0),
        ClientEvent::Pushed(push),
        "the control thread's client reads it"
    );
    // The same push once the client's keys are gone from its table.
    for index in end.client.session().local_indexes() {
        end.table.remove_index(index);
    }
    let mut datagram = out[..n].to_vec();
    assert_eq!(
        end.decide(&mut datagram, T0),
        Outcome::Drop(DropReason::UnknownIndex)
    );
}

#[test]
fn a_push_longer_than_any_push_is_dropped() {
    let mut end = ClientEnd::new(false);
    end.connect();
    let index = end.client.session().local_indexes()[0];
    let mut datagram = vec![5, 0, 0, 0];
    datagram.extend_from_slice(&index.to_le_bytes());
    datagram.resize(crate::server::handoff::MAX_SERVER_MESSAGE_LEN + 1, 0);
    assert_eq!(
        end.decide(&mut datagram, T0),
        Outcome::Drop(DropReason::Malformed)
    );
}

#[test]
fn cookie_replies_pass_and_initiations_are_dropped() {
    let mut end = ClientEnd::new(false);
    let mut cookie_reply = vec![3, 0, 0, 0];
    cookie_reply.resize(COOKIE_REPLY_LEN, 0);
    assert_eq!(end.decide(&mut cookie_reply, T0), Outcome::PassToControl);
    // A genuine initiation (the client's own, as a server would receive it).
    let mut initiation = transmit(&mut end.client, T0, &mut end.rng);
    assert_eq!(initiation.len(), INITIATION_LEN);
    assert_eq!(
        end.decide(&mut initiation, T0),
        Outcome::Drop(DropReason::UnexpectedType)
    );
    for bytes in [vec![], vec![2, 0, 0, 0], vec![9, 0, 0, 0, 0, 0, 0, 0]] {
        let mut datagram = bytes.clone();
        assert_eq!(
            end.decide(&mut datagram, T0),
            Outcome::Drop(DropReason::Malformed),
            "{bytes:02x?}"
        );
    }
}

/// `packet` sealed by the client's session at `now`, as its worker seals a TUN read.
fn sealed_by_client(end: &ClientEnd, packet: &[u8], now: Instant) -> Vec<u8> {
    let mut buf = vec![0u8; TRANSPORT_HEADER_LEN + packet.len() + TAG_LEN];
    buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + packet.len()].copy_from_slice(packet);
    let n = end
        .client
        .session()
        .encrypt(&mut buf, packet.len(), now)
        .expect("connected");
    buf.truncate(n);
    buf
}

#[test]
fn data_through_the_gate_drives_the_clients_keepalives_and_rekeys() {
    use crate::proto::constants::{KEEPALIVE_TIMEOUT, REKEY_AFTER_TIME};
    let mut end = ClientEnd::new(false);
    end.connect();
    let ms = Duration::from_millis;
    let sent_at = T0 + ms(10);
    sealed_by_client(
        &end,
        &ipv4_packet(client_address(2), INTERNET_HOST),
        sent_at,
    );
    assert_eq!(end.client.session().unanswered_since(), Some(sent_at));
    let answered_at = sent_at + ms(10);
    let answer = ipv4_packet(INTERNET_HOST, client_address(2));
    let mut datagram = end.sealed_by_server(&answer, answered_at);
    assert!(matches!(
        end.decide(&mut datagram, answered_at),
        Outcome::ToTun(_)
    ));
    assert_eq!(end.client.session().unanswered_since(), None, "answered");
    // Data came in and the client has sent nothing since: its passive keepalive is due.
    let quiet = sent_at + KEEPALIVE_TIMEOUT;
    let keepalive = transmit(&mut end.client, quiet, &mut end.rng);
    assert_eq!(keepalive.len(), TRANSPORT_MIN_LEN);
    // The keys age the same whichever thread seals and opens under them.
    let initiation = transmit(&mut end.client, T0 + REKEY_AFTER_TIME, &mut end.rng);
    assert_eq!(initiation.len(), INITIATION_LEN, "a rekey");
}

#[test]
fn a_server_that_answers_through_the_gate_is_not_silent() {
    use crate::proto::constants::LIVENESS_PROBE_INTERVAL;
    let mut end = ClientEnd::new(false);
    end.client.set_liveness_probe(Some(LIVENESS_PROBE_INTERVAL));
    end.connect();
    let sent_at = T0 + Duration::from_millis(10);
    sealed_by_client(
        &end,
        &ipv4_packet(client_address(2), INTERNET_HOST),
        sent_at,
    );
    let later = sent_at + LIVENESS_PROBE_INTERVAL * 2;
    assert!(end.client.server_silent(later), "data went unanswered");
    let answered_at = sent_at + Duration::from_millis(1);
    let answer = ipv4_packet(INTERNET_HOST, client_address(2));
    let mut datagram = end.sealed_by_server(&answer, answered_at);
    assert!(matches!(
        end.decide(&mut datagram, answered_at),
        Outcome::ToTun(_)
    ));
    assert!(
        !end.client.server_silent(later),
        "the answer opened at the gate counts"
    );
}
