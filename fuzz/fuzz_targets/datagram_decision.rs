//! Arbitrary datagrams from arbitrary sources through a worker's `Gate::decide`, with a session
//! table holding the known peer and a second one, both with a live keypair (fresh per input, so
//! runs are reproducible).
//!
//! Input: byte 0 = flags (bit 0: under load; bit 1: client_to_client; bits 2-3: mode), bytes
//! 1-2 = source port, byte 3 = source address (bit 0: IPv6), the rest the message. Modes, so
//! that the fuzzer gets past the cheap checks:
//! - 0: the bytes as they are;
//! - 1: the bytes framed as a transport message to the known peer's receiver index, so they
//!   reach the replay window and AES-GCM;
//! - 2: the bytes sealed by the known peer as the plaintext of a transport message: genuine,
//!   so they reach the inner header checks, the relay and the TUN range;
//! - 3: the bytes framed as an initiation (148 bytes, type 1, reserved zero) with a valid mac1,
//!   so they reach the under-load check and the cookie reply.
//!
//! Invariants: nothing panics; a range for the TUN lies within the datagram and holds the
//! sealed plaintext's packet; a relay opens for the peer it is for; nothing forged (modes 0, 1,
//! 3) is delivered; cookie replies only under load, handshakes only with a valid mac1.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use concentrator::proto::wire::{
    self, COOKIE_REPLY_LEN, INITIATION_LEN, TAG_LEN, TRANSPORT_HEADER_LEN,
};
use concentrator::server::decision::{Arrival, Decision};
use concentrator::tunnel::ecn::Ecn;
use concentrator_fuzz as fx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, p0, p1, addr], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let under_load = flags & 1 != 0;
    let mode = (flags >> 2) & 3;
    let ip = if addr & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, addr))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(addr)))
    };
    let src = SocketAddr::new(ip, u16::from_le_bytes([p0, p1]));
    let fixture = fx::DecisionFixture::new();
    let mut gate = fx::gate(flags & 2 != 0, under_load);
    let mut datagram = match mode {
        0 => rest.to_vec(),
        1 => {
            let mut m = rest.to_vec();
            if m.len() >= TRANSPORT_HEADER_LEN {
                m[..4].copy_from_slice(&[4, 0, 0, 0]);
                m[4..8].copy_from_slice(&fx::KNOWN_PEER_INDEX.to_le_bytes());
            }
            m
        }
        2 => {
            let mut m = vec![0u8; TRANSPORT_HEADER_LEN + rest.len() + TAG_LEN];
            m[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + rest.len()].copy_from_slice(rest);
            let n = fixture
                .known_peer
                .encrypt(&mut m, rest.len(), fx::START)
                .expect("a live keypair seals");
            m.truncate(n);
            m
        }
        _ => {
            let mut m = fx::sized(rest, INITIATION_LEN);
            m[..4].copy_from_slice(&[1, 0, 0, 0]);
            fx::fix_mac1(&fx::server_mac_keys(), &mut m);
            m
        }
    };
    let received = datagram.clone();
    let snapshot = fixture.table.snapshot();
    let guard = snapshot.guard();
    // A Not-ECT outer header leaves the inner packet as it was (RFC 6040 §4.2), so a genuine
    // packet arrives unchanged.
    let arrival = Arrival {
        src,
        outer_ecn: Ecn::NotEct,
        now: fx::START,
    };
    let decision = gate.decide(&mut datagram, arrival, &snapshot, &guard);
    let genuine = mode == 2;
    match decision {
        Decision::ToTun(range) => {
            assert!(
                genuine,
                "forged datagram delivered to the TUN: {received:02x?}"
            );
            assert!(
                range.start <= range.end && range.end <= datagram.len(),
                "{range:?} outside a datagram of {}",
                datagram.len()
            );
            assert_eq!(range.start, TRANSPORT_HEADER_LEN);
            assert_eq!(&datagram[range.clone()], &rest[..range.len()]);
        }
        Decision::Relay { len, peer, .. } => {
            assert!(genuine, "forged datagram relayed: {received:02x?}");
            assert!(
                len <= datagram.len(),
                "relay of {len} from {}",
                datagram.len()
            );
            // The destination's owner: the other peer, or the sender itself when the packet
            // is addressed to one of its own addresses (a hairpin, as the kernel's route back
            // into the TUN would also send it).
            let receiver = if peer.assignment.ipv4 == fx::OTHER_PEER_V4 {
                &fixture.other_peer
            } else {
                assert_eq!(
                    peer.assignment,
                    fx::assignment(),
                    "relay to an unknown peer"
                );
                &fixture.known_peer
            };
            let mut relayed = datagram[..len].to_vec();
            let index = wire::transport_receiver_index(&relayed).expect("a transport message");
            let opened = receiver
                .decrypt(index, &mut relayed, fx::START)
                .expect("a relay opens for its peer");
            let packet = &relayed[opened.plaintext];
            assert_eq!(packet, &rest[..packet.len()]);
        }
        Decision::Keepalive => {
            assert!(
                genuine && rest.is_empty(),
                "forged keepalive: {received:02x?}"
            );
        }
        Decision::KeepaliveReply { len } => {
            assert!(
                genuine && rest.is_empty(),
                "a forged keepalive answered: {received:02x?}"
            );
            let mut answer = datagram[..len].to_vec();
            let index = wire::transport_receiver_index(&answer).expect("a transport message");
            let opened = fixture
                .known_peer
                .decrypt(index, &mut answer, fx::START)
                .expect("the answer opens for the peer that sent the keepalive");
            assert!(opened.plaintext.is_empty(), "the answer is a keepalive");
        }
        Decision::CookieReply { len } => {
            assert!(under_load, "cookie reply while not under load");
            assert_eq!(len, COOKIE_REPLY_LEN);
            assert_eq!(
                wire::message_type(&datagram[..len]),
                Ok(wire::MessageType::CookieReply)
            );
            assert!(fx::server_suite_of(&received).is_some());
        }
        Decision::QueueHandshake => {
            assert_eq!(received.len(), INITIATION_LEN);
            assert!(fx::server_suite_of(&received).is_some());
            assert_eq!(datagram, received, "a queued initiation is left as it came");
        }
        Decision::PassToControl => {
            panic!("a server's gate passed a datagram to a client's control")
        }
        Decision::Drop(_) => {}
    }
});
