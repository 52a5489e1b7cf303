//! `Keypair::open_train` against `Keypair::open` one message at a time: the same verdicts,
//! the same plaintexts and the same replay window afterwards, for both suites (the batch for
//! WireGuard where the CPU has it, one by one elsewhere).

use super::*;
use std::ops::Range;

/// A sender and two receivers on the same keys: one opens trains, one opens singly.
fn three(suite: Suite) -> (Keypair, Keypair, Keypair) {
    let (a, b) = (Zeroizing::new([5u8; 32]), Zeroizing::new([6u8; 32]));
    let t = Instant::from_nanos(1);
    (
        Keypair::for_suite(suite, &a, &b, 1, 2, t, true),
        Keypair::for_suite(suite, &b, &a, 2, 1, t, false),
        Keypair::for_suite(suite, &b, &a, 2, 1, t, false),
    )
}

type Verdict = Result<(u64, Range<usize>), TransportError>;

/// What each receiver says of `buf` laid out with `stride`, and the buffers afterwards.
fn both_ways(
    train_rx: &Keypair,
    single_rx: &Keypair,
    buf: &[u8],
    stride: usize,
    now: Instant,
) -> (Vec<Verdict>, Vec<u8>, Vec<Verdict>, Vec<u8>) {
    let mut train = buf.to_vec();
    let mut train_verdicts = Vec::new();
    train_rx.open_train(&mut train, stride, now, |i, v| {
        assert_eq!(i, train_verdicts.len(), "verdicts in order, one each");
        train_verdicts.push(v);
    });
    let mut single = buf.to_vec();
    let single_verdicts = single
        .chunks_mut(stride)
        .map(|m| single_rx.open(m, now))
        .collect();
    (train_verdicts, train, single_verdicts, single)
}

/// Plaintexts of the messages that opened, where they lie.
fn opened(verdicts: &[Verdict], buf: &[u8], stride: usize) -> Vec<Vec<u8>> {
    verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.as_ref()
                .ok()
                .map(|(_, r)| buf[i * stride..][r.clone()].to_vec())
        })
        .collect()
}

/// `count` messages sealed back to back, `stride` apart, the last one shorter.
fn sealed_train(tx: &Keypair, count: usize, stride: usize, now: Instant) -> Vec<u8> {
    let len = |i: usize| {
        if i + 1 == count {
            11 + 7 * count
        } else {
            stride - 32
        }
    };
    let mut buf: Vec<u8> = (0..count * stride).map(|i| (i % 253) as u8).collect();
    for i in 0..count {
        tx.seal(&mut buf[i * stride..], len(i), now).unwrap();
    }
    buf.truncate((count - 1) * stride + len(count - 1) + 32);
    buf
}

#[test]
fn a_train_opens_as_its_messages_open_one_at_a_time() {
    let now = Instant::from_nanos(2);
    let stride = 16 + 1420 + 16;
    for suite in [Suite::WireGuard, Suite::Native] {
        for count in 1..=20 {
            // What can be wrong with a message of the train, at the middle one.
            for flaw in [
                "none",
                "tampered",
                "counter twice",
                "seen before",
                "cut short",
            ] {
                let (tx, train_rx, single_rx) = three(suite);
                if suite == Suite::WireGuard {
                    assert_eq!(train_rx.train_opening.is_some(), BatchKey::is_supported());
                }
                let mut buf = sealed_train(&tx, count, stride, now);
                let k = count / 2;
                match flaw {
                    "tampered" => {
                        let at = k * stride + 40.min(buf.len() - k * stride - 1);
                        buf[at] ^= 1;
                    }
                    "counter twice" if k + 1 < count => {
                        let first = buf[..stride].to_vec();
                        buf[k * stride..(k + 1) * stride].copy_from_slice(&first);
                    }
                    "seen before" => {
                        for rx in [&train_rx, &single_rx] {
                            let mut copy = buf[k * stride..].to_vec();
                            copy.truncate(stride.min(copy.len()));
                            rx.open(&mut copy, now).unwrap();
                        }
                    }
                    "cut short" => buf.truncate((count - 1) * stride + 20),
                    _ => {}
                }
                let (tv, tb, sv, sb) = both_ways(&train_rx, &single_rx, &buf, stride, now);
                let what = format!("{suite:?}, {count} messages, {flaw}");
                assert_eq!(tv, sv, "{what}");
                assert_eq!(opened(&tv, &tb, stride), opened(&sv, &sb, stride), "{what}");
                if flaw == "none" {
                    assert!(tv.iter().all(Result::is_ok), "{what}");
                } else if flaw != "counter twice" || (k > 0 && k + 1 < count) {
                    assert!(tv.iter().any(Result::is_err), "{what}: the flaw was found");
                }
                // The same window afterwards: everything again is refused by both alike.
                let (again_t, _, again_s, _) = both_ways(&train_rx, &single_rx, &buf, stride, now);
                assert_eq!(again_t, again_s, "{what}, again");
                assert!(again_t.iter().all(Result::is_err), "{what}, again");
            }
        }
    }
}

#[test]
fn an_expired_keypair_opens_no_train() {
    let (tx, train_rx, single_rx) = three(Suite::WireGuard);
    let sealed_at = Instant::from_nanos(2);
    let buf = sealed_train(&tx, 9, 200, sealed_at);
    let late = sealed_at + REJECT_AFTER_TIME;
    let (tv, _, sv, _) = both_ways(&train_rx, &single_rx, &buf, 200, late);
    assert_eq!(tv, sv);
    assert!(tv.iter().all(|v| *v == Err(TransportError::KeyExpired)));
}
