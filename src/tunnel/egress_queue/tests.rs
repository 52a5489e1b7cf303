use super::*;
use crate::proto::wire::checksum;
use crate::tunnel::fq::codel::{INTERVAL, TARGET};
use crate::tunnel::fq::DropCause;

/// An IPv4 TCP packet from port `sport` to 4433, `len` bytes in all, with TOS `tos`.
fn tcp4(sport: u16, tos: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(40)];
    p[0] = 0x45;
    p[1] = tos;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 1, 0, 2]);
    p[16..20].copy_from_slice(&[10, 66, 0, 2]);
    let c = checksum::checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&4433u16.to_be_bytes());
    p
}

fn udp6(sport: u16, tclass: u8) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 0x60 | (tclass >> 4);
    p[1] = tclass << 4;
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p[40..42].copy_from_slice(&sport.to_be_bytes());
    p[42..44].copy_from_slice(&53u16.to_be_bytes());
    p
}

const ECT0: u8 = 0b10;
const SEED: u32 = 0x1234_5678;

fn limits(max_bytes: u64, max_sends: u32) -> EgressLimits {
    EgressLimits {
        queued_packets: 64,
        queued_bytes: 64 * 65_536,
        max_packet: 1500,
        budget: SendBudget {
            max_bytes,
            max_sends,
        },
    }
}

fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

#[test]
fn the_budget_bounds_bytes_and_sends_but_always_lets_one_through() {
    let b = SendBudget {
        max_bytes: 100_000,
        max_sends: 4,
    };
    assert!(b.allows(0, 0));
    assert!(
        b.allows(10_000_000, 0),
        "nothing in flight: even a huge send"
    );
    assert!(b.allows(99_999, 3));
    assert!(!b.allows(100_000, 1), "the byte bound");
    assert!(!b.allows(10, 4), "the send bound");
}

#[test]
fn flows_are_told_apart_by_their_five_tuple_and_ecn_read_from_the_header() {
    let a = classify(&tcp4(1000, 0, 60), SEED);
    assert_eq!(
        a,
        classify(&tcp4(1000, 0, 1400), SEED),
        "length is not the flow"
    );
    assert_ne!(a.flow_hash, classify(&tcp4(1001, 0, 60), SEED).flow_hash);
    assert_ne!(
        a.flow_hash,
        classify(&tcp4(1000, 0, 60), SEED + 1).flow_hash,
        "the seed perturbs"
    );
    assert!(!a.ecn_capable);
    assert!(classify(&tcp4(1000, ECT0, 60), SEED).ecn_capable);
    assert!(classify(&tcp4(1000, 0b01, 60), SEED).ecn_capable);
    assert!(classify(&tcp4(1000, 0b11, 60), SEED).ecn_capable);
    let v6 = classify(&udp6(5000, ECT0), SEED);
    assert!(v6.ecn_capable);
    assert_ne!(v6.flow_hash, classify(&udp6(5001, ECT0), SEED).flow_hash);
    assert!(!classify(&udp6(5000, 0), SEED).ecn_capable);
    assert!(!classify(&[0u8; 3], SEED).ecn_capable);
}

#[test]
fn fragments_of_one_datagram_share_a_flow() {
    let mut first = tcp4(1000, 0, 60);
    first[6] = 0x20; // MF
    let mut later = tcp4(2000, 0, 60); // its "ports" are payload bytes
    later[7] = 0x10; // offset non-zero
    assert_eq!(classify(&first, SEED), classify(&later, SEED));
}

/// Enqueues `packet` in `slot` with `len` bytes, panicking on any drop.
fn put(q: &mut EgressQueue, slot: u32, packet: &[u8], len: u32, now: Instant) {
    q.enqueue(slot, packet, len, now, &mut |d| {
        panic!("unexpected drop {d:?}")
    });
}

#[test]
fn a_small_flow_passes_a_bulk_flows_backlog() {
    let mut q = EgressQueue::new(limits(u64::MAX, u32::MAX), SEED).unwrap();
    let bulk = tcp4(1000, 0, 1500);
    for slot in 0..20 {
        put(&mut q, slot, &bulk, 65_000, ms(0));
    }
    put(&mut q, 99, &tcp4(2000, 0, 60), 60, ms(0));
    let order: Vec<u32> = std::iter::from_fn(|| q.dequeue(ms(1), &mut |_| {}))
        .map(|d| d.packet.slot)
        .collect();
    assert_eq!(order.len(), 21);
    let small_at = order.iter().position(|&s| s == 99).unwrap();
    assert!(small_at <= 1, "the small flow left {small_at}th: {order:?}");
    let bulk_order: Vec<u32> = order.iter().copied().filter(|&s| s != 99).collect();
    assert_eq!(
        bulk_order,
        (0..20).collect::<Vec<_>>(),
        "one flow stays in order"
    );
}

#[test]
fn two_bulk_flows_alternate() {
    let mut q = EgressQueue::new(limits(u64::MAX, u32::MAX), SEED).unwrap();
    let (a, b) = (tcp4(1000, 0, 1500), tcp4(3000, 0, 1500));
    for i in 0..10 {
        put(&mut q, i, &a, 1500, ms(0));
    }
    for i in 10..20 {
        put(&mut q, i, &b, 1500, ms(0));
    }
    let order: Vec<bool> = std::iter::from_fn(|| q.dequeue(ms(1), &mut |_| {}))
        .map(|d| d.packet.slot < 10)
        .collect();
    assert_eq!(order.len(), 20);
    // After the first round, no flow sends twice in a row while the other has packets.
    let runs = order.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(runs <= 2, "flows did not interleave: {order:?}");
}

#[test]
fn the_budget_holds_packets_back_until_sends_complete() {
    let mut q = EgressQueue::new(limits(100_000, 8), SEED).unwrap();
    let p = tcp4(1000, 0, 1500);
    for slot in 0..4 {
        put(&mut q, slot, &p, 60_000, ms(0));
    }
    let first = q.dequeue(ms(0), &mut |_| {}).unwrap();
    q.sent(60_000);
    let second = q.dequeue(ms(0), &mut |_| {}).unwrap();
    q.sent(60_000);
    assert_ne!(first.packet.slot, second.packet.slot);
    assert!(q.dequeue(ms(0), &mut |_| {}).is_none(), "120 kB in flight");
    assert!(!q.needs_service(), "completions will wake the caller");
    q.completed(60_000);
    q.completed(60_000);
    assert!(q.needs_service());
    assert!(q.dequeue(ms(0), &mut |_| {}).is_some());
}

/// Keeps one flow's queue `delay` old for `for_ms` milliseconds, one packet in and one out per
/// millisecond, and returns (marks, AQM drops).
fn standing_queue(tos: u8, delay_ms: u64, for_ms: u64) -> (u64, u64) {
    let mut q = EgressQueue::new(limits(u64::MAX, u32::MAX), SEED).unwrap();
    let p = tcp4(1000, tos, 1500);
    let mut slot = 0;
    for t in 0..delay_ms {
        put(&mut q, slot, &p, 1500, ms(t));
        slot += 1;
    }
    let (mut marks, mut drops) = (0, 0);
    for t in delay_ms..delay_ms + for_ms {
        put(&mut q, slot, &p, 1500, ms(t));
        slot = (slot + 1) % 60;
        let mut count = |d: Dropped| {
            assert_eq!(d.cause, DropCause::Aqm);
            drops += 1;
        };
        if let Some(d) = q.dequeue(ms(t), &mut count) {
            marks += u64::from(d.mark_ce);
        }
    }
    assert_eq!(q.stats().ce_marks, marks);
    assert_eq!(q.stats().aqm_drops, drops);
    (marks, drops)
}

#[test]
fn a_standing_queue_above_target_is_marked_when_ecn_capable_and_dropped_otherwise() {
    let delay = (4 * TARGET).as_millis() as u64;
    let long = 5 * INTERVAL.as_millis() as u64;
    let (marks, drops) = standing_queue(ECT0, delay, long);
    assert!(marks > 0 && drops == 0, "ECT: {marks} marks, {drops} drops");
    let (marks, drops) = standing_queue(0, delay, long);
    assert!(
        marks == 0 && drops > 0,
        "not ECT: {marks} marks, {drops} drops"
    );
}

#[test]
fn a_queue_below_target_is_left_alone() {
    let below = (TARGET / 2).as_millis() as u64;
    let (marks, drops) = standing_queue(ECT0, below.max(1), 5 * INTERVAL.as_millis() as u64);
    assert_eq!((marks, drops), (0, 0));
}

#[test]
fn marking_sets_ce_and_keeps_the_ipv4_checksum_valid() {
    let mut p = tcp4(1000, ECT0 | 0xb8, 60);
    assert!(mark(&mut p));
    assert_eq!(p[1], 0xbb, "DSCP kept, ECN CE");
    assert_eq!(checksum::checksum(&p[..20], 0), 0);
    let mut not_ect = tcp4(1000, 0, 60);
    assert!(!mark(&mut not_ect));
    assert_eq!(not_ect, tcp4(1000, 0, 60));
}
