//! The fair queue's behaviour: interleaving, DRR fairness, CoDel's marks and drops, limits,
//! and (property tests) conservation and per-flow order against a plain model.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;

use super::codel::{INTERVAL, TARGET};
use super::*;

const MTU: u32 = 1500;
const SUPER_PACKET: u32 = 65_536;

fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

fn queue(packet_limit: u32, byte_limit: u64) -> FairQueue {
    FairQueue::new(FqConfig::new(packet_limit, byte_limit, MTU)).unwrap()
}

/// A handle numbered `slot` of the flow hashed `flow`.
fn packet(slot: u32, flow: u32, len: u32, ecn_capable: bool) -> Packet {
    Packet {
        slot,
        len,
        flow_hash: flow,
        ecn_capable,
    }
}

/// Flow hashes that land in distinct buckets of a 1024-bucket queue.
fn flow(n: u32) -> u32 {
    n << 22
}

fn no_drops(d: Dropped) {
    panic!("unexpected drop of {d:?}");
}

#[test]
fn a_sparse_flow_passes_the_bulk_backlog() {
    let mut q = queue(4096, 32 << 20);
    let mut slot = 0;
    // Four bulk flows with 40 super-packets each queued.
    for _ in 0..40 {
        for f in 1..=4 {
            q.enqueue(
                packet(slot, flow(f), SUPER_PACKET, false),
                ms(0),
                &mut no_drops,
            );
            slot += 1;
        }
    }
    // The bulk flows have started: each sent its first packet and is on the old flows.
    for _ in 0..4 {
        q.dequeue(ms(0), &mut no_drops).unwrap();
    }
    let mut bulk_since_ping = 0;
    for round in 0..20u32 {
        // A ping and, every other time, a small burst of the same sparse flow.
        let burst = if round % 2 == 0 { 1 } else { 3 };
        let first_ping = 100_000 + round * 10;
        for i in 0..burst {
            q.enqueue(
                packet(first_ping + i, flow(9), 84, false),
                ms(0),
                &mut no_drops,
            );
        }
        for i in 0..burst {
            let out = q.dequeue(ms(0), &mut no_drops).unwrap();
            assert_eq!(
                out.packet.slot,
                first_ping + i,
                "the sparse flow's packets come out next, ahead of {} queued bytes of bulk",
                q.backlog_bytes()
            );
        }
        // Some bulk between pings.
        for _ in 0..3 {
            let out = q.dequeue(ms(0), &mut no_drops).unwrap();
            assert_eq!(out.packet.len, SUPER_PACKET);
            bulk_since_ping += 1;
        }
    }
    assert_eq!(bulk_since_ping, 60);
    assert!(q.stats().new_flows >= 20, "each ping found its flow idle");
}

/// Dequeues `count` packets from bulk flows kept backlogged (refilled from `sizes`, one flow
/// per size), checking after each that no flow got more than `bound` bytes more than another.
fn check_drr_fairness(sizes: &[u32], count: usize, bound: u64) -> Vec<u64> {
    let mut q = queue(8192, 64 << 20);
    let mut slot = 0;
    let mut refill = |q: &mut FairQueue, f: usize| {
        for _ in 0..8 {
            q.enqueue(
                packet(slot, flow(f as u32), sizes[f], false),
                ms(0),
                &mut no_drops,
            );
            slot += 1;
        }
    };
    for f in 0..sizes.len() {
        refill(&mut q, f);
    }
    let mut sent = vec![0u64; sizes.len()];
    let mut queued = vec![8u32; sizes.len()];
    for _ in 0..count {
        let out = q.dequeue(ms(0), &mut no_drops).unwrap();
        let f = (out.packet.flow_hash >> 22) as usize;
        sent[f] += u64::from(out.packet.len);
        queued[f] -= 1;
        if queued[f] < 4 {
            refill(&mut q, f);
            queued[f] += 8;
        }
        let (min, max) = (sent.iter().min().unwrap(), sent.iter().max().unwrap());
        assert!(max - min <= bound, "sent {sent:?}: spread above {bound}");
    }
    sent
}

#[test]
fn drr_shares_bytes_fairly_among_bulk_flows() {
    // Different packet sizes, equal bytes: within a quantum and a packet of each other.
    let sizes = [64, 576, 1000, 1500];
    let bound = u64::from(DEFAULT_QUANTUM + 1500);
    let sent = check_drr_fairness(&sizes, 20_000, bound);
    assert!(sent.iter().all(|&s| s > 1_000_000));
    // Super-packets against full-size packets: still bytes, not packets.
    let sent = check_drr_fairness(
        &[SUPER_PACKET, 1500, 1500],
        5_000,
        u64::from(DEFAULT_QUANTUM + SUPER_PACKET),
    );
    assert!(sent[0] > 1_000_000 && sent[1] > 1_000_000);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Mark,
    Drop,
}

/// One flow through a link that sends one packet per millisecond: two arrive per millisecond
/// for `overload` ms (its queue delay grows), then one while it drains three per millisecond
/// (the delay falls below the target while packets are still queued), then one in, one out. Returns CoDel's signals with their times, and
/// the first time a packet left with a sojourn time at or above the target.
fn codel_run(
    ecn_capable: bool,
    ecn: bool,
    overload: u64,
) -> (Vec<(Instant, Signal, Duration)>, Instant, Instant) {
    let mut config = FqConfig::new(8192, 64 << 20, MTU);
    config.codel.ecn = ecn;
    let mut q = FairQueue::new(config).unwrap();
    let mut signals = Vec::new();
    let mut first_above = None;
    let mut below_again = None;
    let mut slot = 0;
    for t in 0..overload + 1500 {
        let now = ms(t);
        let (arrivals, departures) = if t < overload {
            (2, 1)
        } else if t < overload + 1000 {
            (1, 3)
        } else {
            (1, 1)
        };
        for _ in 0..arrivals {
            q.enqueue(packet(slot, flow(1), MTU, ecn_capable), now, &mut no_drops);
            slot += 1;
        }
        for _ in 0..departures {
            let mut drop = |d: Dropped| {
                assert_eq!(d.cause, DropCause::Aqm);
                signals.push((now, Signal::Drop, Duration::ZERO));
            };
            let Some(out) = q.dequeue(now, &mut drop) else {
                break;
            };
            if out.sojourn >= TARGET && first_above.is_none() {
                first_above = Some(now);
            }
            if out.sojourn < TARGET && t >= overload && below_again.is_none() {
                below_again = Some(now);
            }
            if out.mark_ce {
                signals.push((now, Signal::Mark, out.sojourn));
            }
        }
    }
    (signals, first_above.unwrap(), below_again.unwrap())
}

fn check_codel_schedule(
    signals: &[(Instant, Signal, Duration)],
    kind: Signal,
    first_above: Instant,
    below_again: Instant,
) {
    assert!(signals.len() > 10, "{signals:?}");
    assert!(signals.iter().all(|s| s.1 == kind));
    // The first signal an interval after the delay went above the target (1 ms ticks).
    let first = signals[0].0;
    assert!(
        first >= first_above + INTERVAL,
        "{first:?} vs {first_above:?}"
    );
    assert!(first <= first_above + INTERVAL + Duration::from_millis(1));
    // Then spaced by the control law: interval / sqrt(count) after the count-th.
    for (k, pair) in signals.windows(2).enumerate() {
        let gap = pair[1].0 - pair[0].0;
        let law = INTERVAL.as_secs_f64() / ((k + 1) as f64).sqrt();
        assert!(
            (gap.as_secs_f64() - law).abs() <= 0.001 + 1e-9,
            "gap {} after signal {}: {gap:?}, control law {law}",
            k + 2,
            k + 1
        );
    }
    // None once the delay fell below the target again.
    assert!(signals.iter().all(|s| s.0 < below_again), "{below_again:?}");
}

#[test]
fn codel_marks_ecn_capable_packets_when_the_delay_stays_above_target() {
    let (signals, first_above, below_again) = codel_run(true, true, 1000);
    check_codel_schedule(&signals, Signal::Mark, first_above, below_again);
    assert!(
        signals.iter().all(|s| s.2 >= TARGET),
        "only late packets are marked"
    );
}

#[test]
fn codel_drops_packets_that_are_not_ecn_capable() {
    let (signals, first_above, below_again) = codel_run(false, true, 1000);
    check_codel_schedule(&signals, Signal::Drop, first_above, below_again);
}

#[test]
fn codel_drops_ecn_capable_packets_when_ecn_is_off() {
    let (signals, _, _) = codel_run(true, false, 1000);
    assert!(signals.len() > 10 && signals.iter().all(|s| s.1 == Signal::Drop));
}

#[test]
fn a_delay_above_target_for_less_than_an_interval_is_left_alone() {
    // 2 in, 1 out for 60 ms: the delay passes 5 ms after ~10 ms, and drains before 100 ms more.
    let (signals, _, _) = codel_run(true, true, 60);
    assert!(signals.is_empty(), "{signals:?}");
}

#[test]
fn the_byte_limit_holds_and_drops_come_from_the_fattest_flow() {
    let limit = 1 << 20;
    let mut q = queue(4096, limit);
    let mut bytes: HashMap<u32, u64> = HashMap::new();
    let mut drops = 0;
    for slot in 0..400u32 {
        // Flow 1 sends super-packets, flows 2 to 5 full-size packets.
        let (f, len) = if slot % 5 == 0 {
            (1, SUPER_PACKET)
        } else {
            (2 + slot % 4, MTU)
        };
        *bytes.entry(f).or_default() += u64::from(len);
        let fattest = *bytes.iter().max_by_key(|(_, b)| **b).unwrap().0;
        q.enqueue(
            packet(slot, flow(f), len, false),
            ms(0),
            &mut |d: Dropped| {
                assert_eq!(d.cause, DropCause::Overflow);
                assert_eq!(
                    d.packet.flow_hash,
                    flow(fattest),
                    "dropped from the fattest flow"
                );
                *bytes.get_mut(&fattest).unwrap() -= u64::from(d.packet.len);
                drops += 1;
            },
        );
        assert!(q.backlog_bytes() <= limit);
        assert_eq!(q.backlog_bytes(), bytes.values().sum::<u64>());
    }
    assert!(drops > 0);
    // The small flows kept their packets: only the fat one lost any.
    assert_eq!(bytes[&2], 80 * u64::from(MTU));
}

#[test]
fn the_packet_limit_holds_and_oversized_packets_are_refused() {
    let mut q = queue(16, 100_000);
    let mut dropped = Vec::new();
    for slot in 0..100 {
        q.enqueue(packet(slot, flow(slot % 3), 100, false), ms(0), &mut |d| {
            dropped.push(d)
        });
        assert!(q.len() <= 16);
    }
    assert_eq!(q.len() + dropped.len(), 100);
    q.enqueue(packet(500, flow(1), 100_001, false), ms(0), &mut |d| {
        dropped.push(d)
    });
    assert_eq!(dropped.last().unwrap().packet.slot, 500);
    assert_eq!(q.stats().overflow_drops as usize, dropped.len());
}

#[test]
fn bad_configurations_are_refused() {
    let good = FqConfig::new(16, 1000, MTU);
    let cases = [
        (FqConfig { buckets: 0, ..good }, FqConfigError::Buckets),
        (FqConfig { quantum: 0, ..good }, FqConfigError::Quantum),
        (
            FqConfig {
                packet_limit: 0,
                ..good
            },
            FqConfigError::PacketLimit,
        ),
        (
            FqConfig {
                byte_limit: 0,
                ..good
            },
            FqConfigError::ByteLimit,
        ),
    ];
    for (config, error) in cases {
        assert_eq!(FairQueue::new(config).err(), Some(error));
    }
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        flow: u32,
        len: u32,
        ecn: bool,
        after_ms: u64,
    },
    Dequeue {
        after_ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..12, prop_oneof![1u32..1600, 1u32..70_000], any::<bool>(), 0u64..30)
            .prop_map(|(flow, len, ecn, after_ms)| Op::Enqueue { flow, len, ecn, after_ms }),
        2 => (0u64..30).prop_map(|after_ms| Op::Dequeue { after_ms }),
    ]
}

/// The model: each flow hash's outstanding handles in order.
#[derive(Default)]
struct Model {
    flows: HashMap<u32, VecDeque<Packet>>,
    bytes: u64,
    packets: usize,
    /// What went wrong inside the drop callback.
    errors: Vec<String>,
}

impl Model {
    /// A packet left the queue (sent or dropped): it must be the oldest of its flow.
    fn remove(&mut self, p: Packet) -> Result<(), TestCaseError> {
        let fifo = self.flows.get_mut(&p.flow_hash);
        let head = fifo.and_then(|f| f.pop_front());
        prop_assert_eq!(head, Some(p), "not the head of its flow");
        self.bytes -= u64::from(p.len);
        self.packets -= 1;
        Ok(())
    }

    fn dropped(&mut self, d: Dropped) {
        if d.cause == DropCause::Aqm && d.packet.ecn_capable {
            self.errors
                .push(format!("ECN-capable packet dropped by the AQM: {d:?}"));
        }
        if let Err(e) = self.remove(d.packet) {
            self.errors.push(format!("{e}: {d:?}"));
        }
    }
}

fn run_model(ops: Vec<Op>, buckets: u32) -> Result<(), TestCaseError> {
    let mut config = FqConfig::new(24, 400_000, MTU);
    config.buckets = buckets;
    let mut q = FairQueue::new(config).unwrap();
    let mut model = Model::default();
    let mut now = ms(0);
    for (slot, op) in ops.into_iter().enumerate() {
        match op {
            Op::Enqueue {
                flow,
                len,
                ecn,
                after_ms,
            } => {
                now = now + Duration::from_millis(after_ms);
                let p = packet(slot as u32, flow.wrapping_mul(0x9e37_79b9), len, ecn);
                model.flows.entry(p.flow_hash).or_default().push_back(p);
                model.bytes += u64::from(len);
                model.packets += 1;
                q.enqueue(p, now, &mut |d| model.dropped(d));
            }
            Op::Dequeue { after_ms } => {
                now = now + Duration::from_millis(after_ms);
                if let Some(out) = q.dequeue(now, &mut |d| model.dropped(d)) {
                    prop_assert!(!out.mark_ce || out.packet.ecn_capable);
                    model.remove(out.packet)?;
                }
            }
        }
        prop_assert_eq!(&model.errors, &Vec::<String>::new());
        prop_assert_eq!(q.backlog_bytes(), model.bytes);
        prop_assert_eq!(q.len(), model.packets);
        prop_assert!(q.backlog_bytes() <= 400_000 && q.len() <= 24);
    }
    // Drained: every handle came out once, sent or dropped.
    while let Some(out) = q.dequeue(now, &mut |d| model.dropped(d)) {
        model.remove(out.packet)?;
        now = now + Duration::from_millis(1);
    }
    prop_assert_eq!(&model.errors, &Vec::<String>::new());
    prop_assert!(model.flows.values().all(|f| f.is_empty()));
    prop_assert_eq!((model.packets, model.bytes, q.len()), (0, 0, 0));
    let s = q.stats();
    prop_assert_eq!(
        s.enqueued_packets,
        s.dequeued_packets + s.aqm_drops + s.overflow_drops
    );
    prop_assert_eq!(
        s.enqueued_bytes,
        s.dequeued_bytes + s.aqm_drop_bytes + s.overflow_drop_bytes
    );
    prop_assert_eq!((s.backlog_bytes, s.backlog_packets), (0, 0));
    prop_assert_eq!(s.sojourn.count, s.dequeued_packets);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Conservation, byte accounting and per-flow FIFO order, with distinct buckets per flow
    /// and with many flows sharing few buckets.
    #[test]
    fn every_packet_leaves_once_in_its_flows_order(
        ops in proptest::collection::vec(op(), 1..400),
        buckets in prop_oneof![Just(1024u32), 1u32..6],
    ) {
        run_model(ops, buckets)?;
    }
}
