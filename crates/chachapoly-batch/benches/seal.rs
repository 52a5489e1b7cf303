//! Sealing and opening a train of 1420-byte messages (one super-packet's segments): the
//! batches against ring one message at a time. `cargo bench -p chachapoly-batch`. Each figure
//! is the fastest of several alternated rounds: on a shared machine the minimum is the one
//! least disturbed by others. `TRAIN=n` sets the messages per train (default 44: a 64 KB
//! TCP super-packet).

use std::hint::black_box;
use std::time::Instant;

use chachapoly_batch::{BatchKey, Insert, OpenJob, SealJob, TAG_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

const MESSAGE: usize = 1420;
/// An IPv4 and TCP header with timestamps.
const HEADER: usize = 52;
const ROUNDS: usize = 2_000;
const REPEATS: usize = 15;

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// Nanoseconds per message of the round that began at `started`, kept if the fastest yet.
fn record(best: &mut f64, started: Instant, train: usize) {
    let per = started.elapsed().as_nanos() as f64 / (ROUNDS * train) as f64;
    *best = best.min(per);
}

fn report(what: &str, per: f64) {
    let gbps = (MESSAGE * 8) as f64 / per;
    println!("{what:<28} {per:8.1} ns per {MESSAGE}-byte message, {gbps:5.2} Gbit/s");
}

fn main() {
    #[allow(non_snake_case)]
    let TRAIN: usize = std::env::var("TRAIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(44);
    let key = [9u8; 32];
    let mut texts = vec![vec![0x5au8; MESSAGE]; TRAIN];
    let mut tags = vec![[0u8; TAG_LEN]; TRAIN];
    let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
    let mut best = [f64::MAX; 6];
    for _ in 0..REPEATS {
        let started = Instant::now();
        for round in 0..ROUNDS {
            for (i, text) in texts.iter_mut().enumerate() {
                let n = Nonce::assume_unique_for_key(nonce((round * TRAIN + i) as u64));
                let tag = ring_key
                    .seal_in_place_separate_tag(n, Aad::empty(), text)
                    .unwrap();
                tags[i].copy_from_slice(tag.as_ref());
            }
            black_box(&tags);
        }
        record(&mut best[0], started, TRAIN);
        let Some(batch) = BatchKey::new(&key) else {
            println!("no AVX-512F/AVX-512BW here: no batches");
            return;
        };
        let started = Instant::now();
        for round in 0..ROUNDS {
            let jobs = texts
                .iter_mut()
                .zip(tags.iter_mut())
                .enumerate()
                .map(|(i, (text, tag))| SealJob {
                    nonce: nonce((round * TRAIN + i) as u64),
                    in_out: text,
                    insert: None,
                    tag,
                });
            batch.seal(jobs).unwrap();
            black_box(&tags);
        }
        record(&mut best[4], started, TRAIN);
        // A segmenter's way: a 52-byte header in place, the payload inserted from the read.
        let payloads = vec![vec![0x3cu8; MESSAGE - HEADER]; TRAIN];
        let started = Instant::now();
        for round in 0..ROUNDS {
            let jobs = texts
                .iter_mut()
                .zip(tags.iter_mut())
                .zip(payloads.iter())
                .enumerate()
                .map(|(i, ((text, tag), payload))| SealJob {
                    nonce: nonce((round * TRAIN + i) as u64),
                    in_out: text,
                    insert: Some(Insert {
                        at: HEADER,
                        bytes: payload,
                    }),
                    tag,
                });
            batch.seal(jobs).unwrap();
            black_box(&tags);
        }
        record(&mut best[5], started, TRAIN);
        // The same with the payload copied first, then sealed in place.
        let started = Instant::now();
        for round in 0..ROUNDS {
            for (text, payload) in texts.iter_mut().zip(payloads.iter()) {
                text[HEADER..].copy_from_slice(payload);
            }
            let jobs = texts
                .iter_mut()
                .zip(tags.iter_mut())
                .enumerate()
                .map(|(i, (text, tag))| SealJob {
                    nonce: nonce((round * TRAIN + i) as u64),
                    in_out: text,
                    insert: None,
                    tag,
                });
            batch.seal(jobs).unwrap();
            black_box(&tags);
        }
        record(&mut best[1], started, TRAIN);
        // Open what the last round sealed, again and again (the verdicts must all be good).
        let sealed = texts.clone();
        let sealed_tags = tags.clone();
        let last = ROUNDS - 1;
        let started = Instant::now();
        let mut good = 0usize;
        for _ in 0..ROUNDS {
            texts.clone_from(&sealed);
            let jobs =
                texts
                    .iter_mut()
                    .zip(sealed_tags.iter())
                    .enumerate()
                    .map(|(i, (text, tag))| OpenJob {
                        nonce: nonce((last * TRAIN + i) as u64),
                        in_out: text,
                        tag: *tag,
                    });
            batch.open(jobs, |_, ok| good += usize::from(ok)).unwrap();
        }
        assert_eq!(good, ROUNDS * TRAIN);
        record(&mut best[2], started, TRAIN);
        let started = Instant::now();
        for _ in 0..ROUNDS {
            texts.clone_from(&sealed);
            for (i, text) in texts.iter_mut().enumerate() {
                let n = Nonce::assume_unique_for_key(nonce((last * TRAIN + i) as u64));
                let mut whole = std::mem::take(text);
                whole.extend_from_slice(&sealed_tags[i]);
                ring_key.open_in_place(n, Aad::empty(), &mut whole).unwrap();
                whole.truncate(MESSAGE);
                *text = whole;
            }
        }
        record(&mut best[3], started, TRAIN);
    }
    report("ring, one at a time: seal", best[0]);
    report("batch: seal", best[4]);
    report("batch: seal, payload inserted", best[5]);
    report("batch: copy payload, seal", best[1]);
    report("batch: open (+ a copy)", best[2]);
    report("ring: open (+ a copy)", best[3]);
}
