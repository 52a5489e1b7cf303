//! ECN at decapsulation: the outer header's ECN field applied to the opened inner packet as
//! RFC 6040 §4.2 says, for every pair of outer and inner codepoints, on IPv4 and IPv6, to the
//! TUN and relayed to another client.

use std::net::Ipv6Addr;

use super::*;
use crate::proto::wire::checksum::{fold, sum};
use crate::tunnel::ecn::{packet_ecn, Ecn};

/// DSCP EF (46, RFC 3246) in the inner header: only the two ECN bits may change.
const DSCP: u8 = 46 << 2;

/// Client `n`'s IPv6 address.
fn client_address6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x66, 0, 0, 0, 0, 0, u16::from(n))
}

/// The inner field RFC 6040 §4.2 (Figure 4) forwards for `inner` under `outer`; `None`: the
/// packet is dropped. Written out from the RFC's table, not from the code under test.
fn figure_4(inner: Ecn, outer: Ecn) -> Option<Ecn> {
    match (inner, outer) {
        (Ecn::NotEct, Ecn::Ce) => None,
        (Ecn::NotEct, _) => Some(Ecn::NotEct),
        (_, Ecn::Ce) => Some(Ecn::Ce),
        (Ecn::Ect0, Ecn::Ect1) => Some(Ecn::Ect1),
        (inner, _) => Some(inner),
    }
}

/// Whether RFC 6040 §4.2 (Figure 4) marks the arrival of `inner` under `outer` "(!!!)":
/// currently unused combinations the decapsulator should log as an alarm.
fn figure_4_alarm(inner: Ecn, outer: Ecn) -> bool {
    matches!(
        (inner, outer),
        (Ecn::NotEct, Ecn::Ect0 | Ecn::Ect1) | (Ecn::Ce, Ecn::Ect1)
    )
}

/// `packet` with traffic class `DSCP | ecn` (IPv4 header checksum filled in).
fn with_tos(mut packet: Vec<u8>, ecn: Ecn) -> Vec<u8> {
    let tos = DSCP | ecn.bits();
    if packet[0] >> 4 == 4 {
        packet[1] = tos;
        packet[10..12].fill(0);
        let c = !fold(sum(&packet[..20]));
        packet[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        packet[0] = 0x60 | (tos >> 4);
        packet[1] = (tos << 4) | (packet[1] & 0x0f);
    }
    packet
}

/// An IPv6/UDP packet from `src` to `dst` with an 8-byte payload and a flow label: 56 bytes.
fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut p = vec![0u8; 56];
    p[0] = 0x60;
    p[1..4].copy_from_slice(&[0x0a, 0xbc, 0xde]);
    p[4..6].copy_from_slice(&16u16.to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..42].copy_from_slice(&4000u16.to_be_bytes());
    p[42..44].copy_from_slice(&53u16.to_be_bytes());
    p[44..46].copy_from_slice(&16u16.to_be_bytes());
    p[48..56].copy_from_slice(b"decision");
    p
}

/// Peer `n` connected from `udp` with an IPv6 address too, its keys confirmed.
fn connect_dual_stack(h: &mut Headend, n: u8, udp: SocketAddr) -> Connected {
    let mut client = h.client(n);
    let initiation = transmit(&mut client, T0, &mut h.rng);
    let (mut response, done) = h.accept(&initiation, udp);
    let ClientEvent::Connected(mut assignment) = client.receive(&mut response, T0) else {
        panic!("the server's response does not connect the client");
    };
    assignment.ipv6 = Some((client_address6(n), 64));
    let entry = h.publish(done, assignment, Suite::Native);
    let mut keepalive = transmit(&mut client, T0, &mut h.rng);
    h.confirm(&mut keepalive, udp);
    Connected { client, entry, udp }
}

/// What is left of `packet` once the ECN bits (and the IPv4 checksum they change) are masked:
/// everything else must arrive as it was sent.
fn without_ecn(packet: &[u8]) -> Vec<u8> {
    let mut p = packet.to_vec();
    if p[0] >> 4 == 4 {
        p[1] &= !0b11;
        p[10..12].fill(0);
    } else {
        p[1] &= !0b0011_0000;
    }
    p
}

fn ipv4_checksum_ok(packet: &[u8]) -> bool {
    fold(sum(&packet[..20])) == 0xffff
}

#[test]
fn every_pair_of_outer_and_inner_ecn_reaches_the_tun_as_rfc_6040_says() {
    let mut h = Headend::new(false);
    let mut a = connect_dual_stack(&mut h, 2, udp("192.0.2.2:4000"));
    let backend6 = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
    let plain = [
        ipv4_packet(client_address(2), BACKEND),
        ipv6_packet(client_address6(2), backend6),
    ];
    for original in plain {
        for inner in Ecn::ALL {
            for outer in Ecn::ALL {
                let packet = with_tos(original.clone(), inner);
                let mut datagram = seal(&mut a.client, &packet, T0);
                let got = h.decide_marked(&mut datagram, a.udp, outer, T0);
                let case = format!("IPv{}, inner {inner:?}, outer {outer:?}", packet[0] >> 4);
                let alarms = h.gate.take_ecn_alarms();
                assert_eq!(alarms, u64::from(figure_4_alarm(inner, outer)), "{case}");
                let Some(expected) = figure_4(inner, outer) else {
                    assert_eq!(got, Outcome::Drop(DropReason::CongestedNotEct), "{case}");
                    continue;
                };
                let Outcome::ToTun(range) = got else {
                    panic!("{case}: {got:?}");
                };
                let delivered = &datagram[range];
                assert_eq!(packet_ecn(delivered), Some(expected), "{case}");
                assert_eq!(without_ecn(delivered), without_ecn(&packet), "{case}");
                if delivered[0] >> 4 == 4 {
                    assert!(ipv4_checksum_ok(delivered), "{case}");
                    assert_eq!(delivered[1] >> 2, DSCP >> 2, "{case}");
                }
            }
        }
    }
}

#[test]
fn congestion_on_a_packet_that_cannot_carry_it_is_a_drop_and_nothing_is_delivered() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let packet = with_tos(ipv4_packet(client_address(2), BACKEND), Ecn::NotEct);
    let mut datagram = seal(&mut a.client, &packet, T0);
    assert_eq!(
        h.decide_marked(&mut datagram, a.udp, Ecn::Ce, T0),
        Outcome::Drop(DropReason::CongestedNotEct)
    );
    assert_eq!(a.entry.rx_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(DropReason::CongestedNotEct.name(), "congested_not_ect");
}

#[test]
fn a_relayed_packet_leaves_with_the_ecn_field_it_was_decapsulated_to() {
    let mut h = Headend::new(true);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    let mut b = h.connect_confirmed(3, udp("192.0.2.3:4000"));
    let original = ipv4_packet(client_address(2), client_address(3));
    for (inner, outer, relayed_as) in [
        (Ecn::Ect0, Ecn::Ce, Ecn::Ce),
        (Ecn::Ect1, Ecn::Ce, Ecn::Ce),
        (Ecn::Ect0, Ecn::Ect1, Ecn::Ect1),
        (Ecn::Ect0, Ecn::NotEct, Ecn::Ect0),
        (Ecn::NotEct, Ecn::NotEct, Ecn::NotEct),
    ] {
        let packet = with_tos(original.clone(), inner);
        let mut datagram = seal(&mut a.client, &packet, T0);
        let Outcome::Relay { len, to, outer_tos } =
            h.decide_marked(&mut datagram, a.udp, outer, T0)
        else {
            panic!("not relayed: inner {inner:?}, outer {outer:?}");
        };
        assert_eq!(to, client_address(3));
        // RFC 6040 §4.1 on the way out again: the outer field copies the inner one, DSCP 0.
        assert_eq!(
            outer_tos,
            relayed_as.bits(),
            "inner {inner:?}, outer {outer:?}"
        );
        let opened = opened_by(&mut b.client, datagram[..len].to_vec(), "the other client");
        assert_eq!(packet_ecn(&opened), Some(relayed_as));
        assert!(ipv4_checksum_ok(&opened));
    }
    let packet = with_tos(original, Ecn::NotEct);
    let mut datagram = seal(&mut a.client, &packet, T0);
    assert_eq!(
        h.decide_marked(&mut datagram, a.udp, Ecn::Ce, T0),
        Outcome::Drop(DropReason::CongestedNotEct),
        "a Not-ECT packet under CE is dropped, not relayed"
    );
}

#[test]
fn what_carries_no_inner_packet_ignores_the_outer_ecn_field() {
    let mut h = Headend::new(false);
    let mut a = h.connect_confirmed(2, udp("192.0.2.2:4000"));
    // A keepalive (empty plaintext) under CE is still a keepalive.
    let mut keepalive = seal(&mut a.client, &[], T0);
    assert_eq!(
        h.decide_marked(&mut keepalive, a.udp, Ecn::Ce, T0),
        Outcome::Keepalive
    );
    // An initiation under CE is still queued.
    let mut client = h.client(4);
    let mut initiation = transmit(&mut client, T0, &mut h.rng);
    assert_eq!(
        h.decide_marked(&mut initiation, udp("192.0.2.4:4000"), Ecn::Ce, T0),
        Outcome::QueueHandshake
    );
}
