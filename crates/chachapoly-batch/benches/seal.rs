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

/// The fastest nanoseconds per message yet, for each variant.
struct Fastest {
    train: usize,
    per_message: Vec<f64>,
}

impl Fastest {
    /// Runs `round` ROUNDS times (given the round's number) and keeps the time per message
    /// for `variant` if it is the fastest yet.
    fn time(&mut self, variant: usize, mut round: impl FnMut(usize)) {
        let started = Instant::now();
        for r in 0..ROUNDS {
            round(r);
        }
        let per = started.elapsed().as_nanos() as f64 / (ROUNDS * self.train) as f64;
        self.per_message[variant] = self.per_message[variant].min(per);
    }
}

/// Seals the train with the batch under counters from `first`; with `payloads`, each
/// message's bytes after its header inserted from there instead of being in place.
fn batch_seal(
    batch: &BatchKey,
    texts: &mut [Vec<u8>],
    tags: &mut [[u8; TAG_LEN]],
    first: u64,
    payloads: Option<&[Vec<u8>]>,
) {
    let jobs = texts
        .iter_mut()
        .zip(tags.iter_mut())
        .enumerate()
        .map(|(i, (text, tag))| SealJob {
            nonce: nonce(first + i as u64),
            in_out: text,
            insert: payloads.map(|p| Insert {
                at: HEADER,
                bytes: &p[i],
            }),
            tag,
        });
    batch.seal(jobs).unwrap();
}

const VARIANTS: [&str; 6] = [
    "ring, one at a time: seal",
    "batch: seal",
    "batch: seal, payload inserted",
    "batch: copy payload, seal",
    "batch: open (+ a copy)",
    "ring: open (+ a copy)",
];

fn main() {
    let train: usize = std::env::var("TRAIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(44);
    let key = [9u8; 32];
    let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
    let Some(batch) = BatchKey::new(&key) else {
        println!("no AVX-512F/BW/IFMA here: no batches");
        return;
    };
    let mut texts = vec![vec![0x5au8; MESSAGE]; train];
    let mut tags = vec![[0u8; TAG_LEN]; train];
    let payloads = vec![vec![0x3cu8; MESSAGE - HEADER]; train];
    let mut fastest = Fastest {
        train,
        per_message: vec![f64::MAX; VARIANTS.len()],
    };
    for _ in 0..REPEATS {
        fastest.time(0, |round| {
            for (i, text) in texts.iter_mut().enumerate() {
                let n = Nonce::assume_unique_for_key(nonce((round * train + i) as u64));
                let tag = ring_key
                    .seal_in_place_separate_tag(n, Aad::empty(), text)
                    .unwrap();
                tags[i].copy_from_slice(tag.as_ref());
            }
            black_box(&tags);
        });
        fastest.time(1, |round| {
            batch_seal(&batch, &mut texts, &mut tags, (round * train) as u64, None);
            black_box(&tags);
        });
        // A segmenter's way: the header in place, the payload inserted from the read.
        fastest.time(2, |round| {
            let first = (round * train) as u64;
            batch_seal(&batch, &mut texts, &mut tags, first, Some(&payloads));
            black_box(&tags);
        });
        // The same with the payload copied first, then sealed in place.
        fastest.time(3, |round| {
            for (text, payload) in texts.iter_mut().zip(payloads.iter()) {
                text[HEADER..].copy_from_slice(payload);
            }
            batch_seal(&batch, &mut texts, &mut tags, (round * train) as u64, None);
            black_box(&tags);
        });
        // Open what the last round sealed, again and again (every verdict must be good).
        let (sealed, sealed_tags) = (texts.clone(), tags.clone());
        let last = ((ROUNDS - 1) * train) as u64;
        let mut good = 0usize;
        fastest.time(4, |_| {
            texts.clone_from(&sealed);
            let jobs =
                texts
                    .iter_mut()
                    .zip(sealed_tags.iter())
                    .enumerate()
                    .map(|(i, (text, tag))| OpenJob {
                        nonce: nonce(last + i as u64),
                        in_out: text,
                        tag: *tag,
                    });
            batch.open(jobs, |_, ok| good += usize::from(ok)).unwrap();
        });
        assert_eq!(good, ROUNDS * train);
        fastest.time(5, |_| {
            texts.clone_from(&sealed);
            for (i, text) in texts.iter_mut().enumerate() {
                let n = Nonce::assume_unique_for_key(nonce(last + i as u64));
                let mut whole = std::mem::take(text);
                whole.extend_from_slice(&sealed_tags[i]);
                ring_key.open_in_place(n, Aad::empty(), &mut whole).unwrap();
                whole.truncate(MESSAGE);
                *text = whole;
            }
        });
    }
    for (what, per) in VARIANTS.iter().zip(&fastest.per_message) {
        let gbps = (MESSAGE * 8) as f64 / per;
        println!("{what:<30} {per:8.1} ns per {MESSAGE}-byte message, {gbps:5.2} Gbit/s");
    }
}
