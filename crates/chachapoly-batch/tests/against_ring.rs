//! The batches against ring's ChaCha20-Poly1305, one message at a time: same ciphertext, same
//! tag, for any mix of lengths, nonces and batch sizes; opening accepts exactly what was sealed.

use chachapoly_batch::{BatchError, BatchKey, Insert, OpenJob, SealJob, LANES, TAG_LEN};
use proptest::prelude::*;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

fn supported() -> bool {
    if BatchKey::is_supported() {
        return true;
    }
    eprintln!("skipped: this CPU has no AVX-512F/AVX-512BW");
    false
}

fn ring_seal(key: &[u8; 32], nonce: [u8; 12], plaintext: &[u8]) -> (Vec<u8>, [u8; TAG_LEN]) {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
    let mut bytes = plaintext.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut bytes,
        )
        .unwrap();
    (bytes, tag.as_ref().try_into().unwrap())
}

/// Seals `messages` in one batch; returns ciphertexts and tags.
fn batch_seal(
    key: &[u8; 32],
    nonces: &[[u8; 12]],
    messages: &[Vec<u8>],
) -> (Vec<Vec<u8>>, Vec<[u8; TAG_LEN]>) {
    let batch = BatchKey::new(key).unwrap();
    let mut texts = messages.to_vec();
    let mut tags = vec![[0u8; TAG_LEN]; messages.len()];
    batch
        .seal(
            texts
                .iter_mut()
                .zip(tags.iter_mut())
                .zip(nonces)
                .map(|((text, tag), nonce)| SealJob {
                    nonce: *nonce,
                    in_out: text,
                    insert: None,
                    tag,
                }),
        )
        .unwrap();
    (texts, tags)
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

#[test]
fn every_length_up_to_three_blocks_and_a_mtu_matches_ring() {
    if !supported() {
        return;
    }
    let key = [0x42u8; 32];
    // Every length around the 16- and 64-byte boundaries, in batches that mix them.
    let lengths: Vec<usize> = (0..=200)
        .chain([1419, 1420, 1436, 1500, 9000, 65_000])
        .collect();
    let messages: Vec<Vec<u8>> = lengths
        .iter()
        .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
        .collect();
    let nonces: Vec<[u8; 12]> = (0..messages.len() as u64)
        .map(|c| nonce(c + 1000))
        .collect();
    let (texts, tags) = batch_seal(&key, &nonces, &messages);
    for (i, message) in messages.iter().enumerate() {
        let (expected, expected_tag) = ring_seal(&key, nonces[i], message);
        assert_eq!(
            texts[i],
            expected,
            "ciphertext of a {}-byte message",
            message.len()
        );
        assert_eq!(
            tags[i],
            expected_tag,
            "tag of a {}-byte message",
            message.len()
        );
    }
}

#[test]
fn open_accepts_what_was_sealed_and_refuses_any_flipped_bit() {
    if !supported() {
        return;
    }
    let key = [7u8; 32];
    let batch = BatchKey::new(&key).unwrap();
    let messages: Vec<Vec<u8>> = (0..2 * LANES + 3).map(|n| vec![n as u8; 37 * n]).collect();
    let nonces: Vec<[u8; 12]> = (0..messages.len() as u64).map(nonce).collect();
    let (sealed, tags) = batch_seal(&key, &nonces, &messages);
    for flipped in [None, Some(0usize), Some(5), Some(LANES + 1)] {
        let mut texts = sealed.clone();
        let mut tags = tags.clone();
        if let Some(i) = flipped {
            if texts[i].is_empty() {
                tags[i][3] ^= 0x10;
            } else {
                let at = texts[i].len() / 2;
                texts[i][at] ^= 0x01;
            }
        }
        let mut verdicts = vec![None; texts.len()];
        batch
            .open(
                texts
                    .iter_mut()
                    .zip(tags.iter())
                    .zip(nonces.iter())
                    .map(|((text, tag), nonce)| OpenJob {
                        nonce: *nonce,
                        in_out: text,
                        tag: *tag,
                    }),
                |i, ok| verdicts[i] = Some(ok),
            )
            .unwrap();
        for (i, verdict) in verdicts.iter().enumerate() {
            let tampered = flipped == Some(i);
            assert_eq!(*verdict, Some(!tampered), "verdict of message {i}");
            if tampered {
                assert_eq!(
                    texts[i],
                    sealed_copy(&sealed, i, flipped),
                    "a refused message is left as it came"
                );
            } else {
                assert_eq!(texts[i], messages[i], "message {i} opened");
            }
        }
    }
}

/// The ciphertext message `i` was opened from, with the bit the test flipped.
fn sealed_copy(sealed: &[Vec<u8>], i: usize, flipped: Option<usize>) -> Vec<u8> {
    let mut text = sealed[i].clone();
    if flipped == Some(i) && !text.is_empty() {
        let at = text.len() / 2;
        text[at] ^= 0x01;
    }
    text
}

#[test]
fn an_empty_batch_does_nothing() {
    if !supported() {
        return;
    }
    let batch = BatchKey::new(&[1; 32]).unwrap();
    batch.seal(std::iter::empty()).unwrap();
    let mut called = false;
    batch
        .open(std::iter::empty(), |_, _| called = true)
        .unwrap();
    assert!(!called);
}

#[test]
fn an_insert_beyond_its_message_is_refused_and_nothing_sealed() {
    if !supported() {
        return;
    }
    let batch = BatchKey::new(&[2; 32]).unwrap();
    let mut text = vec![0u8; 100];
    let mut tag = [0u8; TAG_LEN];
    let job = SealJob {
        nonce: nonce(1),
        in_out: &mut text,
        insert: Some(Insert {
            at: 90,
            bytes: &[1; 11],
        }),
        tag: &mut tag,
    };
    assert_eq!(batch.seal([job]), Err(BatchError::InsertOutOfRange));
    assert_eq!((text, tag), (vec![0u8; 100], [0; TAG_LEN]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Messages whose plaintext is partly read from elsewhere seal as the whole plaintext
    /// would: a header in place, a payload inserted (anywhere, any length, across blocks).
    #[test]
    fn inserted_plaintext_seals_as_if_it_were_in_place(
        key in any::<[u8; 32]>(),
        messages in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..1600), any::<prop::sample::Index>(), any::<prop::sample::Index>()),
            1..20,
        ),
    ) {
        if !BatchKey::is_supported() {
            return Ok(());
        }
        let batch = BatchKey::new(&key).unwrap();
        // Each message: the plaintext, and where its inserted part is (start, end).
        let parts: Vec<(Vec<u8>, usize, usize)> = messages
            .into_iter()
            .map(|(plain, a, b)| {
                let (a, b) = (a.index(plain.len() + 1), b.index(plain.len() + 1));
                (plain, a.min(b), a.max(b))
            })
            .collect();
        // In place: the plaintext with the inserted part overwritten by junk (ignored).
        let mut texts: Vec<Vec<u8>> = parts
            .iter()
            .map(|(plain, from, to)| {
                let mut t = plain.clone();
                t[*from..*to].fill(0xee);
                t
            })
            .collect();
        let mut tags = vec![[0u8; TAG_LEN]; parts.len()];
        let jobs = texts.iter_mut().zip(tags.iter_mut()).zip(&parts).enumerate().map(
            |(i, ((text, tag), (plain, from, to)))| SealJob {
                nonce: nonce(i as u64),
                in_out: text,
                insert: Some(Insert { at: *from, bytes: &plain[*from..*to] }),
                tag,
            },
        );
        batch.seal(jobs).unwrap();
        for (i, (plain, _, _)) in parts.iter().enumerate() {
            let (expected, expected_tag) = ring_seal(&key, nonce(i as u64), plain);
            prop_assert_eq!(&texts[i], &expected);
            prop_assert_eq!(tags[i], expected_tag);
        }
    }

    #[test]
    fn any_batch_matches_ring(
        key in any::<[u8; 32]>(),
        first_counter in any::<u64>(),
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1600), 0..20),
    ) {
        if !BatchKey::is_supported() {
            return Ok(());
        }
        let nonces: Vec<[u8; 12]> = (0..messages.len() as u64)
            .map(|i| nonce(first_counter.wrapping_add(i)))
            .collect();
        let (texts, tags) = batch_seal(&key, &nonces, &messages);
        for (i, message) in messages.iter().enumerate() {
            let (expected, expected_tag) = ring_seal(&key, nonces[i], message);
            prop_assert_eq!(&texts[i], &expected);
            prop_assert_eq!(tags[i], expected_tag);
        }
    }
}
