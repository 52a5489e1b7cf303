//! A worker's gate in front of the control thread's responder under a flood of junk from a
//! victim's own address: a simulated clock, the victim's client and the attacker, no I/O.

use std::collections::BTreeMap;

use super::*;
use crate::proto::constants::REKEY_TIMEOUT;
use crate::proto::cookie::{self, MacKeys};
use crate::proto::wire::MessageType;

const LATENCY: Duration = Duration::from_millis(10);

/// The gate in front of the server, as the engine wires them: what the gate queues goes to
/// `Server::handle_initiation` with `under_load` set.
struct Guarded {
    headend: Headend,
    mac_keys: MacKeys,
    /// Drops by the gate: initiations shed, and with a bad mac1.
    shed: u64,
    bad_mac: u64,
    /// Cookie replies the gate wrote.
    cookie_replies: u64,
}

impl Guarded {
    /// One datagram from `src`: what goes back to `src`, if anything.
    fn receive(&mut self, datagram: &[u8], src: SocketAddr, now: Instant) -> Option<Vec<u8>> {
        let mut buf = datagram.to_vec();
        match self.headend.decide(&mut buf, src, now) {
            Outcome::CookieReply { len } => {
                self.cookie_replies += 1;
                return Some(buf[..len].to_vec());
            }
            Outcome::QueueHandshake => {}
            Outcome::Drop(DropReason::HandshakeShed) => {
                self.shed += 1;
                return None;
            }
            Outcome::Drop(DropReason::BadMac) => {
                self.bad_mac += 1;
                return None;
            }
            other => panic!("an initiation decided as {other:?}"),
        }
        let h = &mut self.headend;
        let mut out = [0u8; INITIATION_LEN];
        match h
            .server
            .handle_initiation(&buf, src, now, true, &mut h.rng, &mut out)
        {
            Ok(HandshakeReply::Cookie(n)) => Some(out[..n].to_vec()),
            Ok(HandshakeReply::Established(done)) => Some(out[..done.len].to_vec()),
            Err(_) => None,
        }
    }
}

/// Initiations with a valid mac1 for the server and random bodies (nobody's handshake): what
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

/// The victim's client and the attacker, their datagrams on a simulated clock.
struct Flood {
    guarded: Guarded,
    client: Client,
    victim: SocketAddr,
    /// Time between two junk initiations.
    junk_every: Duration,
    events: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    next_poll: Instant,
    /// Initiations the client sent.
    initiations: u32,
    junk_sent: u64,
}

impl Flood {
    /// Under load for the whole run; the client's first initiation at `start`, the junk from
    /// `T0` on, `per_second` of it.
    fn new(start: Instant, per_second: u32) -> Self {
        let mut headend = Headend::new(false);
        headend.under_load();
        let client = headend.client(2);
        let mac_keys = MacKeys::new(headend.server.public_key().as_bytes());
        let mut flood = Flood {
            guarded: Guarded {
                headend,
                mac_keys,
                shed: 0,
                bad_mac: 0,
                cookie_replies: 0,
            },
            client,
            victim: udp("192.0.2.7:40000"),
            junk_every: Duration::from_secs(1) / per_second,
            events: BTreeMap::new(),
            seq: 0,
            next_poll: start,
            initiations: 0,
            junk_sent: 0,
        };
        flood.schedule(T0, Event::Junk(0));
        flood
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    /// Runs until the client connects (returns when) or `deadline` passes.
    fn run(&mut self, deadline: Instant) -> Option<Instant> {
        loop {
            let next_event = self.events.first_key_value().map(|(&(at, _), _)| at);
            if next_event.is_none_or(|at| at > self.next_poll) {
                if self.next_poll >= deadline {
                    return None;
                }
                self.poll_client();
                continue;
            }
            let ((now, _), event) = self.events.pop_first().expect("checked above");
            if now >= deadline {
                return None;
            }
            if self.deliver(now, event) {
                return Some(now);
            }
        }
    }

    /// Sends what the client wants to send at its next timeout.
    fn poll_client(&mut self) {
        let now = self.next_poll;
        let mut buf = [0u8; 256];
        while let Some(n) = self
            .client
            .poll_transmit(now, &mut self.guarded.headend.rng, &mut buf)
        {
            if wire::message_type(&buf[..n]) == Ok(MessageType::Initiation) {
                self.initiations += 1;
            }
            let datagram = buf[..n].to_vec();
            self.schedule(now + LATENCY, Event::ToServer(datagram));
        }
        self.next_poll = self.client.next_timeout(now);
    }

    /// Delivers one datagram at `now`; true when that connected the client.
    fn deliver(&mut self, now: Instant, event: Event) -> bool {
        match event {
            Event::Junk(k) => {
                let rng = &mut self.guarded.headend.rng;
                let m = junk(&self.guarded.mac_keys, k, rng);
                // A third from the victim's very port.
                let port = match k % 3 {
                    0 => self.victim.port(),
                    _ => 1024 + (rng.next_u32() % 60_000) as u16,
                };
                let from = SocketAddr::new(self.victim.ip(), port);
                self.junk_sent += 1;
                if let Some(answer) = self.guarded.receive(&m, from, now) {
                    if from == self.victim {
                        self.schedule(now + LATENCY, Event::ToClient(answer));
                    }
                }
                self.schedule(now + self.junk_every, Event::Junk(k + 1));
                false
            }
            Event::ToServer(m) => {
                if let Some(answer) = self.guarded.receive(&m, self.victim, now) {
                    self.schedule(now + LATENCY, Event::ToClient(answer));
                }
                false
            }
            Event::ToClient(mut m) => {
                self.next_poll = now;
                matches!(self.client.receive(&mut m, now), ClientEvent::Connected(_))
            }
        }
    }
}

#[test]
fn junk_from_the_victims_address_does_not_lock_it_out_under_load() {
    // The client's first initiation lands between two junk datagrams, not on one.
    let start = T0 + Duration::from_micros(1_234);
    // Ten times the rate the old per-source buckets allowed one source (40 initiations/s, in
    // the workers' shedder and the responder's cookie-reply limiter, both charged before mac2
    // proved anything), all from the victim's address.
    let mut flood = Flood::new(start, 10 * 40);
    let deadline = start + REKEY_TIMEOUT + Duration::from_secs(2);
    let connected_at = flood.run(deadline);
    assert!(
        flood.junk_sent > 2_000,
        "only {} junk datagrams",
        flood.junk_sent
    );
    let Some(connected_at) = connected_at else {
        let g = &flood.guarded;
        panic!(
            "the victim did not connect within {:?} ({} initiations) under {} junk datagrams \
             from its address; drops: shed {}, bad mac {}; cookie replies {}",
            deadline - start,
            flood.initiations,
            flood.junk_sent,
            g.shed,
            g.bad_mac,
            g.cookie_replies,
        )
    };
    // The cookie round trip, then the retransmission with mac2.
    assert_eq!(
        flood.initiations,
        2,
        "connected at {:?}",
        connected_at - start
    );
}
