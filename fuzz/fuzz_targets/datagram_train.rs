//! One GRO receive of the known peer's datagrams through `Gate::open_train` and
//! `Gate::decide_opened`, against the same datagrams through `Gate::decide` one by one on an
//! identical fixture: the decisions and what they deliver must be the same.
//!
//! Input: byte 0 = flags (bit 0: WireGuard keys, opened eight at a time where the CPU can;
//! bit 1: client_to_client; bit 2: the last datagram cut short), byte 1 = how many datagrams
//! (2 to 16), bytes 2-3 = which are genuine (bit i: datagram i sealed by the known peer; the
//! others the same bytes framed as a transport message to its index, unsealed), bytes 4-5 =
//! how far the last one is cut, the rest the plaintext every datagram carries.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use concentrator::proto::suite::Suite;
use concentrator::proto::wire::{TAG_LEN, TRANSPORT_HEADER_LEN};
use concentrator::server::decision::{Arrival, Decision};
use concentrator::tunnel::ecn::Ecn;
use concentrator_fuzz as fx;
use libfuzzer_sys::fuzz_target;

/// What a decision comes to, comparable across two fixtures: the delivered bytes, not ranges.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    ToTun(Vec<u8>),
    Relay(Vec<u8>, Ipv4Addr),
    Other(String),
}

fn outcome(decision: Decision<'_>, datagram: &[u8]) -> Outcome {
    match decision {
        Decision::ToTun(range) => Outcome::ToTun(datagram[range].to_vec()),
        Decision::Relay { len, peer, .. } => {
            Outcome::Relay(datagram[..len].to_vec(), peer.assignment.ipv4)
        }
        other => Outcome::Other(format!("{other:?}")),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, count, g0, g1, c0, c1], plaintext)) = data.split_first_chunk::<6>() else {
        return;
    };
    let suite = if flags & 1 != 0 {
        Suite::WireGuard
    } else {
        Suite::Native
    };
    let client_to_client = flags & 2 != 0;
    let count = 2 + usize::from(count % 15);
    let genuine = u16::from_le_bytes([g0, g1]);
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 4000);
    let one_by_one = fx::DecisionFixture::of_suite(suite);
    let as_train = fx::DecisionFixture::of_suite(suite);
    let stride = TRANSPORT_HEADER_LEN + plaintext.len() + TAG_LEN;
    let mut receive = Vec::with_capacity(count * stride);
    for i in 0..count {
        let mut m = vec![0u8; stride];
        m[TRANSPORT_HEADER_LEN..stride - TAG_LEN].copy_from_slice(plaintext);
        if genuine & (1 << i) != 0 {
            one_by_one
                .known_peer
                .encrypt(&mut m, plaintext.len(), fx::START)
                .expect("a live keypair seals");
        } else {
            m[..4].copy_from_slice(&[4, 0, 0, 0]);
            m[4..8].copy_from_slice(&fx::KNOWN_PEER_INDEX.to_le_bytes());
            m[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        }
        receive.extend_from_slice(&m);
    }
    if flags & 4 != 0 {
        let cut = usize::from(u16::from_le_bytes([c0, c1])) % stride;
        receive.truncate(receive.len() - cut);
    }

    let arrival = Arrival {
        src,
        outer_ecn: Ecn::NotEct,
        now: fx::START,
    };
    let mut gate = fx::gate(client_to_client, false);
    let snapshot = one_by_one.table.snapshot();
    let guard = snapshot.guard();
    let mut alone = receive.clone();
    let expected: Vec<Outcome> = alone
        .chunks_mut(stride)
        .map(|d| {
            let decision = gate.decide(d, arrival, &snapshot, &guard);
            outcome(decision, d)
        })
        .collect();

    let mut gate = fx::gate(client_to_client, false);
    let snapshot = as_train.table.snapshot();
    let guard = snapshot.guard();
    let mut together = receive.clone();
    let Some(mut train) = gate.open_train(&mut together, stride, fx::START, &snapshot, &guard)
    else {
        // Only a receive whose every datagram names the known peer's index is a train.
        let all_transport = receive.chunks(stride).all(|d| d.len() >= 32);
        assert!(
            !all_transport,
            "a receive of one index was not opened as a train"
        );
        return;
    };
    let got: Vec<Outcome> = together
        .chunks_mut(stride)
        .enumerate()
        .map(|(i, d)| {
            let decision = gate.decide_opened(Some(&mut train), i, d, arrival, &snapshot, &guard);
            outcome(decision, d)
        })
        .collect();
    assert_eq!(
        got, expected,
        "a train decided otherwise than its datagrams alone"
    );
});
