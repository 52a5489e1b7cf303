//! The worker's handshake gate ([`HandshakeGate::vet`]) and the control thread's responder
//! behind it, without io_uring: a simulated clock, a client and an attacker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::proto::client::{Client, ClientEvent, ClientParams};
use crate::proto::constants::REKEY_TIMEOUT;
use crate::proto::cookie::{self, MacKeys};
use crate::proto::keys::{PresharedKey, StaticSecret};
use crate::proto::rng::{PrfRandom, Random, SeededRandom};
use crate::proto::server::{HandshakeReply, PeerConfig, Server};
use crate::proto::wire::AddressAssignment;
use crate::server::handoff::LoadSignal;

const LATENCY: Duration = Duration::from_millis(10);

/// A worker's gate in front of a server, as the engine wires them: what the gate queues goes
/// to `Server::handle_initiation` with `under_load` set.
struct Headend {
    server: Server,
    queue: crossbeam_channel::Sender<HandshakeMessage>,
    queued: crossbeam_channel::Receiver<HandshakeMessage>,
    mac_keys: MacKeys,
    load: LoadSignal,
    cookie_secrets: arc_swap::ArcSwap<crate::proto::cookie::CookieSecrets>,
    nonces: PrfRandom,
    admission: Admission<SlotLimiter>,
    counters: crate::server::dataplane::stats::Counters,
}

impl Headend {
    fn new(server: Server, rng: &mut SeededRandom) -> Self {
        let (queue, queued) = crossbeam_channel::bounded(crate::server::handoff::HANDSHAKE_QUEUE);
        let load = LoadSignal::default();
        // Under load for the whole test.
        load.publish(Some(Instant::from_nanos(u64::MAX)));
        Headend {
            mac_keys: MacKeys::new(server.public_key().as_bytes()),
            cookie_secrets: arc_swap::ArcSwap::new(server.cookie_secrets().clone()),
            server,
            queue,
            queued,
            load,
            nonces: PrfRandom::new(rng),
            admission: super::super::worker::worker_admission(),
            counters: Default::default(),
        }
    }

    /// One datagram from `src`: what goes back to `src`, if anything.
    fn receive(
        &mut self,
        datagram: &[u8],
        src: SocketAddr,
        now: Instant,
        rng: &mut SeededRandom,
    ) -> Option<Vec<u8>> {
        let mut buf = datagram.to_vec();
        let mut gate = HandshakeGate {
            queue: &self.queue,
            mac_keys: &self.mac_keys,
            load: &self.load,
            admission: &mut self.admission,
            cookie_secrets: &self.cookie_secrets,
            nonces: &mut self.nonces,
        };
        match gate.vet(&mut buf, src, now, &mut self.counters) {
            Ok(Delivery::Reply { len }) => return Some(buf[..len].to_vec()),
            Ok(_) => {}
            Err(why) => self.counters.drop(why),
        }
        let msg = self.queued.try_recv().ok()?;
        let mut out = [0u8; 148];
        match self
            .server
            .handle_initiation(&msg.bytes, msg.src, now, true, rng, &mut out)
        {
            Ok(HandshakeReply::Cookie(n)) => Some(out[..n].to_vec()),
            Ok(HandshakeReply::Established(done)) => Some(out[..done.len].to_vec()),
            Err(_) => None,
        }
    }
}

/// Initiations with a valid mac1 for `server` and random bodies (nobody's handshake): what
/// anyone holding the server's public key (every client config) can make at no cost. Every
/// other one carries a random mac2 instead of zeros.
fn junk(mac_keys: &MacKeys, k: u64, rng: &mut SeededRandom) -> [u8; INITIATION_LEN] {
    let mut m = [0u8; INITIATION_LEN];
    rng.fill(&mut m[4..116]);
    m[0] = 1;
    cookie::write_mac1(mac_keys, &mut m);
    if k % 2 == 1 {
        rng.fill(&mut m[132..]);
    }
    m
}

enum Event {
    Junk(u64),
    ToServer(Vec<u8>),
    ToClient(Vec<u8>),
}

#[test]
fn junk_from_the_victims_address_does_not_lock_it_out_under_load() {
    let mut rng = SeededRandom(2024);
    let mut key = || {
        let mut b = [0u8; 32];
        rng.fill(&mut b);
        StaticSecret::from_bytes(b)
    };
    let (server_secret, client_secret) = (key(), key());
    let server_public = server_secret.public_key();
    let t0 = Instant::from_nanos(1_000_000_000);
    let mut server = Server::new(server_secret, t0, &mut rng);
    server.add_peer(PeerConfig {
        public_key: client_secret.public_key(),
        psk: PresharedKey::zero(),
        assignment: AddressAssignment {
            ipv4: "10.66.0.2".parse().unwrap(),
            ipv4_prefix: 16,
            ipv6: None,
            mtu: 1420,
        },
        allowed_ips: Vec::new(),
    });
    let mut headend = Headend::new(server, &mut rng);
    let victim: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    // The client's first initiation lands between two junk datagrams, not on one.
    let start = t0 + Duration::from_micros(1_234);
    let mut client = Client::new(
        ClientParams {
            secret: client_secret,
            server: server_public,
            psk: PresharedKey::zero(),
            persistent_keepalive: None,
        },
        start,
        Duration::from_secs(1_700_000_000),
    );
    // Ten times the rate the old per-source buckets allowed one source (40 initiations/s, in
    // the workers' shedder and the responder's cookie-reply limiter, both charged before mac2
    // proved anything), all from the victim's address: a third from its very port.
    let junk_every = Duration::from_nanos(1_000_000_000 / (10 * 40));
    let deadline = start + REKEY_TIMEOUT + Duration::from_secs(2);
    let mut events: BTreeMap<(Instant, u64), Event> = BTreeMap::new();
    let mut seq = 0u64;
    let mut schedule = |events: &mut BTreeMap<(Instant, u64), Event>, at: Instant, e: Event| {
        seq += 1;
        events.insert((at, seq), e);
    };
    schedule(&mut events, t0, Event::Junk(0));
    let mut now = start;
    let mut next_poll = start;
    let mut initiations = 0;
    let mut connected_at = None;
    let mut junk_sent = 0u64;
    let mut buf = [0u8; 256];
    while now < deadline && connected_at.is_none() {
        if events
            .first_key_value()
            .is_none_or(|(&(at, _), _)| at > next_poll)
        {
            now = next_poll;
            while let Some(n) = client.poll_transmit(now, &mut rng, &mut buf) {
                if wire::message_type(&buf[..n]) == Ok(MessageType::Initiation) {
                    initiations += 1;
                }
                schedule(
                    &mut events,
                    now + LATENCY,
                    Event::ToServer(buf[..n].to_vec()),
                );
            }
            next_poll = client.next_timeout(now);
            continue;
        }
        let ((at, _), event) = events.pop_first().expect("checked above");
        now = at;
        match event {
            Event::Junk(k) => {
                let m = junk(&headend.mac_keys, k, &mut rng);
                let port = if k % 3 == 0 {
                    victim.port()
                } else {
                    1024 + (rng.next_u32() % 60_000) as u16
                };
                let from = SocketAddr::new(victim.ip(), port);
                junk_sent += 1;
                if let Some(answer) = headend.receive(&m, from, now, &mut rng) {
                    if from == victim {
                        schedule(&mut events, now + LATENCY, Event::ToClient(answer));
                    }
                }
                schedule(&mut events, now + junk_every, Event::Junk(k + 1));
            }
            Event::ToServer(m) => {
                if let Some(answer) = headend.receive(&m, victim, now, &mut rng) {
                    schedule(&mut events, now + LATENCY, Event::ToClient(answer));
                }
            }
            Event::ToClient(mut m) => {
                if let ClientEvent::Connected(_) = client.receive(&mut m, now) {
                    connected_at = Some(now);
                }
                next_poll = now;
            }
        }
    }
    assert!(junk_sent > 2_000, "only {junk_sent} junk datagrams");
    let Some(connected_at) = connected_at else {
        panic!(
            "the victim did not connect within {:?} ({initiations} initiations) under {junk_sent} \
             junk datagrams from its address; drops: shed {}, bad mac {}; cookie replies {}",
            deadline - start,
            headend.counters.drops[DropReason::HandshakeShed as usize],
            headend.counters.drops[DropReason::BadMac as usize],
            headend.counters.cookie_replies,
        )
    };
    // The cookie round trip, then the retransmission with mac2.
    assert_eq!(initiations, 2, "connected at {:?}", connected_at - start);
}
