//! The AVX-512 kernels: ChaCha20 sixteen blocks at a time (one per 32-bit lane, any mix of
//! messages and block counters), Poly1305 eight messages at a time (one per 64-bit lane).
//!
//! Every function here needs AVX-512F (with AVX-512BW for the byte-masked loads and stores of
//! a message's last partial block, and AVX-512 IFMA for Poly1305's 52-bit multiplies); the
//! caller checked the CPU for all three.

use core::arch::x86_64::*;

use zeroize::Zeroize;

use crate::{LANES, NONCE_LEN, TAG_LEN};

/// ChaCha20's constant words, "expand 32-byte k" (RFC 8439 §2.3).
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
/// Bytes of one ChaCha20 block (RFC 8439 §2.3).
const BLOCK: usize = 64;
/// ChaCha20 blocks computed together: one per 32-bit lane of a 512-bit register.
const BLOCK_LANES: usize = 16;
/// Bytes of one Poly1305 block (RFC 8439 §2.5).
const POLY_BLOCK: usize = 16;
/// Poly1305's 130-bit accumulator in limbs of 44, 44 and 42 bits (poly1305-donna's 64-bit
/// radix), small enough for AVX-512 IFMA's 52-bit multiplies.
const LIMB_MASK: u64 = (1 << 44) - 1;
const TOP_LIMB_MASK: u64 = (1 << 42) - 1;
/// The 2^128 bit every full 16-byte block carries (RFC 8439 §2.5.1, "add one bit beyond the
/// number of octets"), as it falls in the top limb (bits 88..130).
const HIGH_BIT: u64 = 1 << 40;

/// The messages of one group: nonce and bytes per lane.
pub(crate) struct Lanes<'a> {
    /// Each lane's nonce as ChaCha20 state words 13..16 (RFC 8439 §2.3, little-endian).
    nonces: [[u32; 3]; LANES],
    data: [&'a mut [u8]; LANES],
    /// Plaintext of each lane read from elsewhere: where it belongs, and the bytes (empty:
    /// none); checked to lie within the lane's message.
    inserts: [(usize, &'a [u8]); LANES],
    count: usize,
}

impl Default for Lanes<'_> {
    fn default() -> Self {
        Lanes {
            nonces: [[0; 3]; LANES],
            data: [(); LANES].map(|_| <&mut [u8]>::default()),
            inserts: [(0, &[]); LANES],
            count: 0,
        }
    }
}

impl<'a> Lanes<'a> {
    /// Puts a message in lane `i`; lanes are filled from 0 without gaps.
    pub(crate) fn set(&mut self, i: usize, nonce: &[u8; NONCE_LEN], data: &'a mut [u8]) {
        for (word, bytes) in self.nonces[i].iter_mut().zip(nonce.chunks_exact(4)) {
            *word = u32::from_le_bytes(bytes.try_into().expect("chunks of 4"));
        }
        self.data[i] = data;
        self.count = self.count.max(i + 1);
    }

    /// Lane `i`'s plaintext at `at..at + bytes.len()` comes from `bytes`, which the caller
    /// checked to lie within the message.
    pub(crate) fn insert(&mut self, i: usize, at: usize, bytes: &'a [u8]) {
        self.inserts[i] = (at, bytes);
    }
}

/// Which ChaCha20 blocks a keystream pass makes, per lane: block 0 gives the Poly1305 key
/// (RFC 8439 §2.6), blocks 1.. encrypt the message (§2.8).
#[derive(Clone, Copy)]
enum Pass {
    /// Both, for sealing.
    KeysAndData,
    /// Only the Poly1305 keys, to check tags before decrypting.
    KeysOnly,
    /// Only the data, of the lanes marked.
    DataOnly([bool; LANES]),
}

/// Seals the messages in `lanes` in place and returns their tags.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX-512 IFMA.
#[target_feature(enable = "avx512f,avx512bw,avx512ifma")]
pub(crate) unsafe fn seal(key: &[u32; 8], lanes: &mut Lanes<'_>) -> [[u8; TAG_LEN]; LANES] {
    let mut poly_keys = [[0u8; 32]; LANES];
    keystream(key, lanes, Pass::KeysAndData, &mut poly_keys);
    let tags = poly1305(&poly_keys, lanes);
    poly_keys.zeroize();
    tags
}

/// Checks the tags of the messages in `lanes` and decrypts those whose tag was right.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX-512 IFMA.
#[target_feature(enable = "avx512f,avx512bw,avx512ifma")]
pub(crate) unsafe fn open(
    key: &[u32; 8],
    lanes: &mut Lanes<'_>,
    tags: &[[u8; TAG_LEN]; LANES],
) -> [bool; LANES] {
    let mut poly_keys = [[0u8; 32]; LANES];
    keystream(key, lanes, Pass::KeysOnly, &mut poly_keys);
    let computed = poly1305(&poly_keys, lanes);
    poly_keys.zeroize();
    let mut good = [false; LANES];
    for lane in 0..lanes.count {
        // Every byte compared whatever the first difference: no timing tells where it is.
        let difference = computed[lane]
            .iter()
            .zip(tags[lane].iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        good[lane] = std::hint::black_box(difference) == 0;
    }
    keystream(key, lanes, Pass::DataOnly(good), &mut poly_keys);
    good
}

/// Makes the blocks `pass` asks for, sixteen at a time: Poly1305 keys into `poly_keys`, data
/// blocks XORed into the lanes' bytes.
#[target_feature(enable = "avx512f,avx512bw")]
fn keystream(key: &[u32; 8], lanes: &mut Lanes<'_>, pass: Pass, poly_keys: &mut [[u8; 32]; LANES]) {
    let mut owner = [0usize; BLOCK_LANES];
    let mut counters = [0u32; BLOCK_LANES];
    let mut filled = 0;
    for lane in 0..lanes.count {
        // Data blocks have counters 1..=blocks; `MAX_MESSAGE_LEN` keeps them within 32 bits.
        let blocks = lanes.data[lane].len().div_ceil(BLOCK) as u32;
        let (first, last) = match pass {
            Pass::KeysAndData => (0, blocks),
            Pass::KeysOnly => (0, 0),
            Pass::DataOnly(which) if which[lane] => (1, blocks),
            Pass::DataOnly(_) => continue,
        };
        for counter in first..last.saturating_add(1) {
            owner[filled] = lane;
            counters[filled] = counter;
            filled += 1;
            if filled == BLOCK_LANES {
                run_blocks(key, lanes, &owner, &counters, filled, poly_keys);
                filled = 0;
            }
        }
    }
    if filled > 0 {
        run_blocks(key, lanes, &owner, &counters, filled, poly_keys);
    }
}

/// Computes the first `filled` blocks listed (lane, counter) and puts each where it belongs.
#[target_feature(enable = "avx512f,avx512bw")]
fn run_blocks(
    key: &[u32; 8],
    lanes: &mut Lanes<'_>,
    owner: &[usize; BLOCK_LANES],
    counters: &[u32; BLOCK_LANES],
    filled: usize,
    poly_keys: &mut [[u8; 32]; LANES],
) {
    let mut nonce_words = [[0u32; BLOCK_LANES]; 3];
    for (j, &lane) in owner.iter().enumerate().take(filled) {
        for (w, words) in nonce_words.iter_mut().enumerate() {
            words[j] = lanes.nonces[lane][w];
        }
    }
    let blocks = chacha20_x16(
        key,
        load_words(counters),
        load_words(&nonce_words[0]),
        load_words(&nonce_words[1]),
        load_words(&nonce_words[2]),
    );
    for j in 0..filled {
        let (lane, counter) = (owner[j], counters[j] as usize);
        if counter == 0 {
            let mut bytes = [0u8; BLOCK];
            // SAFETY: `bytes` is 64 bytes, the width of the store.
            unsafe { _mm512_storeu_si512(bytes.as_mut_ptr().cast(), blocks[j]) };
            poly_keys[lane].copy_from_slice(&bytes[..32]);
            bytes.zeroize();
            continue;
        }
        let at = (counter - 1) * BLOCK;
        let (insert_at, insert) = lanes.inserts[lane];
        let data = &mut *lanes.data[lane];
        let rest = &mut data[at..];
        let n = rest.len().min(BLOCK);
        // Bits 0..k of a byte mask.
        let below = |k: usize| if k >= BLOCK { !0u64 } else { (1u64 << k) - 1 };
        let block_mask: __mmask64 = below(n);
        // The block's bytes that come from the insert, as positions within the block.
        let from = insert_at.saturating_sub(at).min(n);
        let to = (insert_at + insert.len()).saturating_sub(at).min(n);
        let insert_mask: __mmask64 = below(to) & !below(from);
        let ptr = rest.as_mut_ptr();
        // The insert's bytes for this block start `at - insert_at` into it (before its start
        // when the block begins before it: those positions are masked off).
        let insert_ptr = insert.as_ptr().wrapping_add(at).wrapping_sub(insert_at);
        let text = if block_mask == !0 && insert_mask == 0 {
            // SAFETY: `rest` has 64 bytes from `ptr`, the width of the load.
            unsafe { _mm512_loadu_si512(ptr.cast()) }
        } else if block_mask == !0 && insert_mask == !0 {
            // SAFETY: all 64 positions are the insert's, which has them from `insert_ptr`.
            unsafe { _mm512_loadu_si512(insert_ptr.cast()) }
        } else {
            // SAFETY: the masks cover exactly the bytes `rest` has from `ptr` and `insert`
            // from `insert_ptr`; masked-off bytes are not accessed (and cannot fault).
            unsafe {
                _mm512_or_si512(
                    _mm512_maskz_loadu_epi8(block_mask & !insert_mask, ptr.cast()),
                    _mm512_maskz_loadu_epi8(insert_mask, insert_ptr.cast()),
                )
            }
        };
        let sealed = _mm512_xor_si512(text, blocks[j]);
        if block_mask == !0 {
            // SAFETY: `rest` has 64 bytes from `ptr`, the width of the store.
            unsafe { _mm512_storeu_si512(ptr.cast(), sealed) };
        } else {
            // SAFETY: the mask covers exactly the `n` bytes `rest` has from `ptr`.
            unsafe { _mm512_mask_storeu_epi8(ptr.cast(), block_mask, sealed) };
        }
    }
}

#[target_feature(enable = "avx512f")]
fn load_words(words: &[u32; BLOCK_LANES]) -> __m512i {
    // SAFETY: `words` is 64 bytes, the width of the load.
    unsafe { _mm512_loadu_si512(words.as_ptr().cast()) }
}

/// One ChaCha20 quarter round on four rows of the sixteen states (RFC 8439 §2.1).
macro_rules! quarter_round {
    ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
        $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm512_rol_epi32::<16>(_mm512_xor_si512($x[$d], $x[$a]));
        $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
        $x[$b] = _mm512_rol_epi32::<12>(_mm512_xor_si512($x[$b], $x[$c]));
        $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm512_rol_epi32::<8>(_mm512_xor_si512($x[$d], $x[$a]));
        $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
        $x[$b] = _mm512_rol_epi32::<7>(_mm512_xor_si512($x[$b], $x[$c]));
    };
}

/// Sixteen ChaCha20 blocks (RFC 8439 §2.3): lane j has block counter `counters[j]` and nonce
/// words `nonce0..2[j]`. Returns block j's 64 bytes in element j.
#[target_feature(enable = "avx512f")]
fn chacha20_x16(
    key: &[u32; 8],
    counters: __m512i,
    nonce0: __m512i,
    nonce1: __m512i,
    nonce2: __m512i,
) -> [__m512i; 16] {
    let splat = |w: u32| _mm512_set1_epi32(w as i32);
    let input = [
        splat(SIGMA[0]),
        splat(SIGMA[1]),
        splat(SIGMA[2]),
        splat(SIGMA[3]),
        splat(key[0]),
        splat(key[1]),
        splat(key[2]),
        splat(key[3]),
        splat(key[4]),
        splat(key[5]),
        splat(key[6]),
        splat(key[7]),
        counters,
        nonce0,
        nonce1,
        nonce2,
    ];
    let mut x = input;
    // 20 rounds: ten of a column round and a diagonal round (RFC 8439 §2.3).
    for _ in 0..10 {
        quarter_round!(x, 0, 4, 8, 12);
        quarter_round!(x, 1, 5, 9, 13);
        quarter_round!(x, 2, 6, 10, 14);
        quarter_round!(x, 3, 7, 11, 15);
        quarter_round!(x, 0, 5, 10, 15);
        quarter_round!(x, 1, 6, 11, 12);
        quarter_round!(x, 2, 7, 8, 13);
        quarter_round!(x, 3, 4, 9, 14);
    }
    for (word, start) in x.iter_mut().zip(input.iter()) {
        *word = _mm512_add_epi32(*word, *start);
    }
    transpose(x)
}

/// From "element i holds word i of sixteen blocks" to "element j holds block j".
#[target_feature(enable = "avx512f")]
fn transpose(x: [__m512i; 16]) -> [__m512i; 16] {
    let mut u = [_mm512_setzero_si512(); 16];
    // 4x4 transposes inside each 128-bit lane: u[4g + r], lane q, holds words 4g..4g+4 of
    // block 4q + r.
    for g in 0..4 {
        let (a0, a1, a2, a3) = (x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]);
        let t0 = _mm512_unpacklo_epi32(a0, a1);
        let t1 = _mm512_unpackhi_epi32(a0, a1);
        let t2 = _mm512_unpacklo_epi32(a2, a3);
        let t3 = _mm512_unpackhi_epi32(a2, a3);
        u[4 * g] = _mm512_unpacklo_epi64(t0, t2);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
    // Then the 128-bit lanes: block 4q + r gathers lane q of u[r], u[4 + r], u[8 + r], u[12 + r].
    let mut out = [_mm512_setzero_si512(); 16];
    for r in 0..4 {
        let (u0, u1, u2, u3) = (u[r], u[4 + r], u[8 + r], u[12 + r]);
        let v0 = _mm512_shuffle_i32x4::<0b01_00_01_00>(u0, u1);
        let v1 = _mm512_shuffle_i32x4::<0b11_10_11_10>(u0, u1);
        let v2 = _mm512_shuffle_i32x4::<0b01_00_01_00>(u2, u3);
        let v3 = _mm512_shuffle_i32x4::<0b11_10_11_10>(u2, u3);
        out[r] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v0, v2);
        out[4 + r] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v0, v2);
        out[8 + r] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v1, v3);
        out[12 + r] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v1, v3);
    }
    out
}

/// The Poly1305 tags (RFC 8439 §2.5) of the lanes' bytes as the AEAD frames them with empty
/// associated data (§2.8): the bytes, zero padding to 16, then 0 and the length as 64-bit
/// little-endian numbers. Lane k's key is `keys[k]`.
#[target_feature(enable = "avx512f,avx512ifma")]
fn poly1305(keys: &[[u8; 32]; LANES], lanes: &Lanes<'_>) -> [[u8; TAG_LEN]; LANES] {
    if lanes.count == 0 {
        return [[0u8; TAG_LEN]; LANES];
    }
    // r, clamped (RFC 8439 §2.5), in limbs, one lane per message; 2^130 = 5 (mod p), so a
    // product's part at 2^132 comes back times 20 (s = 20 r).
    let mut r = [[0u64; LANES]; 3];
    for (lane, key) in keys.iter().enumerate() {
        let clamped = u128::from_le_bytes(key[..16].try_into().expect("16 bytes"))
            & 0x0fff_fffc_0fff_fffc_0fff_fffc_0fff_ffff;
        r[0][lane] = clamped as u64 & LIMB_MASK;
        r[1][lane] = (clamped >> 44) as u64 & LIMB_MASK;
        r[2][lane] = (clamped >> 88) as u64;
    }
    let s = [r[1].map(|limb| limb * 20), r[2].map(|limb| limb * 20)];
    let key = Key {
        r: r.map(|limb| load_lanes(&limb)),
        s: s.map(|limb| load_lanes(&limb)),
    };

    // Lanes without a message repeat lane 0's; their sums are never read.
    let texts: [&[u8]; LANES] =
        core::array::from_fn(|k| &*lanes.data[if k < lanes.count { k } else { 0 }]);
    // Blocks per lane: the padded bytes, then the lengths block.
    let blocks: [usize; LANES] = texts.map(|t| t.len().div_ceil(POLY_BLOCK) + 1);
    let steps = blocks.iter().copied().max().unwrap_or(0);
    // While every lane has a whole block of its bytes, no lane needs padding or a mask.
    let whole = texts
        .iter()
        .map(|t| t.len() / POLY_BLOCK)
        .min()
        .unwrap_or(0);
    let mut h = [_mm512_setzero_si512(); 3];
    for step in 0..whole {
        let at = step * POLY_BLOCK;
        let rows = texts.map(|t| <&[u8; POLY_BLOCK]>::try_from(&t[at..at + POLY_BLOCK]).unwrap());
        h = absorb(h, message_limbs(rows), &key);
    }
    // The rest, lane by lane: a partial block padded with zeros, the lengths block, or
    // nothing (a lane whose message ended keeps its sum, by mask).
    let mut tail = [[0u8; POLY_BLOCK]; LANES];
    for step in whole..steps {
        let at = step * POLY_BLOCK;
        let mut active: __mmask8 = 0;
        for (lane, text) in texts.iter().enumerate() {
            if step < blocks[lane] {
                active |= 1 << lane;
            }
            tail[lane] = [0; POLY_BLOCK];
            if at + POLY_BLOCK <= text.len() {
                tail[lane].copy_from_slice(&text[at..at + POLY_BLOCK]);
            } else if at < text.len() {
                tail[lane][..text.len() - at].copy_from_slice(&text[at..]);
            } else if step == blocks[lane] - 1 {
                // RFC 8439 §2.8: le64(aad length) = 0, then le64(ciphertext length).
                tail[lane][8..].copy_from_slice(&(text.len() as u64).to_le_bytes());
            }
        }
        let next = absorb(h, message_limbs(tail.each_ref()), &key);
        for i in 0..3 {
            h[i] = _mm512_mask_blend_epi64(active, h[i], next[i]);
        }
    }
    let mut limbs = [[0u64; LANES]; 3];
    for (limb, vector) in limbs.iter_mut().zip(h.iter()) {
        // SAFETY: `limb` is 64 bytes, the width of the store.
        unsafe { _mm512_storeu_si512(limb.as_mut_ptr().cast(), *vector) };
    }
    let mut tags = [[0u8; TAG_LEN]; LANES];
    for lane in 0..lanes.count {
        let h = [limbs[0][lane], limbs[1][lane], limbs[2][lane]];
        tags[lane] = finish(h, keys[lane][16..].try_into().expect("16 bytes"));
    }
    tail.zeroize();
    tags
}

/// A lane-wise Poly1305 key: r in limbs, and 20 r for the limbs whose products wrap.
struct Key {
    r: [__m512i; 3],
    s: [__m512i; 2],
}

#[target_feature(enable = "avx512f")]
fn load_lanes(values: &[u64; LANES]) -> __m512i {
    // SAFETY: `values` is 64 bytes, the width of the load.
    unsafe { _mm512_loadu_si512(values.as_ptr().cast()) }
}

/// The eight lanes' 16-byte blocks (`rows[k]` for lane k) as limbs of 44, 44 and 42 bits,
/// with the 2^128 bit.
#[target_feature(enable = "avx512f")]
fn message_limbs(rows: [&[u8; POLY_BLOCK]; LANES]) -> [__m512i; 3] {
    // SAFETY: each row is 16 bytes, the width of the load.
    let load = |row: &[u8; POLY_BLOCK]| unsafe { _mm_loadu_si128(row.as_ptr().cast()) };
    let pack = |a: &[u8; POLY_BLOCK], b, c, d| {
        let ab = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(load(a)), load(b));
        _mm512_inserti32x4::<3>(_mm512_inserti32x4::<2>(ab, load(c)), load(d))
    };
    let first = pack(rows[0], rows[1], rows[2], rows[3]);
    let second = pack(rows[4], rows[5], rows[6], rows[7]);
    // Low and high 64 bits of each lane's block.
    let lo = _mm512_permutex2var_epi64(first, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), second);
    let hi = _mm512_permutex2var_epi64(first, _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), second);
    let mask = _mm512_set1_epi64(LIMB_MASK as i64);
    [
        _mm512_and_si512(lo, mask),
        _mm512_and_si512(
            _mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)),
            mask,
        ),
        _mm512_or_si512(
            _mm512_srli_epi64::<24>(hi),
            _mm512_set1_epi64(HIGH_BIT as i64),
        ),
    ]
}

/// (h + m) r mod 2^130 - 5, partly reduced: each limb of the result at most a few bits over
/// its width, so that the next h + m stays below IFMA's 52 bits.
#[target_feature(enable = "avx512f,avx512ifma")]
fn absorb(h: [__m512i; 3], m: [__m512i; 3], key: &Key) -> [__m512i; 3] {
    let a = [0, 1, 2].map(|i| _mm512_add_epi64(h[i], m[i]));
    let (r, s) = (&key.r, &key.s);
    let zero = _mm512_setzero_si512();
    // Each product's low 52 bits and the bits above them, summed per limb of the result.
    let lo = |x: [__m512i; 3]| {
        let t = _mm512_madd52lo_epu64(zero, a[0], x[0]);
        _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(t, a[1], x[1]), a[2], x[2])
    };
    let hi = |x: [__m512i; 3]| {
        let t = _mm512_madd52hi_epu64(zero, a[0], x[0]);
        _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(t, a[1], x[1]), a[2], x[2])
    };
    let d0 = [r[0], s[1], s[0]];
    let d1 = [r[1], r[0], s[1]];
    let d2 = [r[2], r[1], r[0]];
    let (lo0, hi0) = (lo(d0), hi(d0));
    let (lo1, hi1) = (lo(d1), hi(d1));
    let (lo2, hi2) = (lo(d2), hi(d2));
    let mask = _mm512_set1_epi64(LIMB_MASK as i64);
    let top_mask = _mm512_set1_epi64(TOP_LIMB_MASK as i64);
    // A high part is worth 2^52 = 2^8 of the next limb; the top limb's high part, 2^140,
    // is 2^10 times 2^130 = 5.
    let t1 = _mm512_add_epi64(lo1, _mm512_slli_epi64::<8>(hi0));
    let t2 = _mm512_add_epi64(lo2, _mm512_slli_epi64::<8>(hi1));
    let t1 = _mm512_add_epi64(t1, _mm512_srli_epi64::<44>(lo0));
    let t2 = _mm512_add_epi64(t2, _mm512_srli_epi64::<44>(t1));
    let over = _mm512_add_epi64(_mm512_srli_epi64::<42>(t2), _mm512_slli_epi64::<10>(hi2));
    // h0 + 5 over, as over + 4 over.
    let h0 = _mm512_add_epi64(
        _mm512_and_si512(lo0, mask),
        _mm512_add_epi64(over, _mm512_slli_epi64::<2>(over)),
    );
    [
        _mm512_and_si512(h0, mask),
        _mm512_add_epi64(_mm512_and_si512(t1, mask), _mm512_srli_epi64::<44>(h0)),
        _mm512_and_si512(t2, top_mask),
    ]
}

/// The tag from the accumulator: fully reduced mod 2^130 - 5, plus the key's second half
/// mod 2^128 (as poly1305-donna's 64-bit poly1305_finish; constant time).
fn finish(h: [u64; 3], pad: &[u8; 16]) -> [u8; TAG_LEN] {
    let [mut h0, mut h1, mut h2] = h;
    // Carry twice around: afterwards every limb is within its width, h < 2^130 + 2^88.
    for _ in 0..2 {
        h1 += h0 >> 44;
        h0 &= LIMB_MASK;
        h2 += h1 >> 44;
        h1 &= LIMB_MASK;
        h0 += (h2 >> 42) * 5;
        h2 &= TOP_LIMB_MASK;
    }
    h1 += h0 >> 44;
    h0 &= LIMB_MASK;
    h2 += h1 >> 44;
    h1 &= LIMB_MASK;

    // g = h + 5 - 2^130 = h - p; it is h mod p when it does not borrow.
    let mut g0 = h0 + 5;
    let mut g1 = h1 + (g0 >> 44);
    g0 &= LIMB_MASK;
    let g2 = (h2 + (g1 >> 44)).wrapping_sub(1 << 42);
    g1 &= LIMB_MASK;
    // All ones when g did not borrow: by masks, not branches.
    let use_g = (g2 >> 63).wrapping_sub(1);
    h0 = (h0 & !use_g) | (g0 & use_g);
    h1 = (h1 & !use_g) | (g1 & use_g);
    h2 = (h2 & !use_g) | (g2 & use_g);

    // h mod 2^128, plus the pad.
    let low = h0 | (h1 << 44);
    let high = (h1 >> 20) | (h2 << 24);
    let h = (u128::from(high) << 64) | u128::from(low);
    h.wrapping_add(u128::from_le_bytes(*pad)).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8439 §2.3.2: the block function's test vector, in every lane at once.
    #[test]
    fn block_function_matches_rfc_8439() {
        if !crate::BatchKey::is_supported() {
            eprintln!("skipped: this CPU has no AVX-512F/AVX-512BW");
            return;
        }
        let key: [u32; 8] = core::array::from_fn(|i| {
            u32::from_le_bytes([
                4 * i as u8,
                4 * i as u8 + 1,
                4 * i as u8 + 2,
                4 * i as u8 + 3,
            ])
        });
        let nonce = [0x0900_0000u32, 0x4a00_0000, 0];
        let expected: [u8; 64] = [
            0x10, 0xf1, 0xe7, 0xe4, 0xd1, 0x3b, 0x59, 0x15, 0x50, 0x0f, 0xdd, 0x1f, 0xa3, 0x20,
            0x71, 0xc4, 0xc7, 0xd1, 0xf4, 0xc7, 0x33, 0xc0, 0x68, 0x03, 0x04, 0x22, 0xaa, 0x9a,
            0xc3, 0xd4, 0x6c, 0x4e, 0xd2, 0x82, 0x64, 0x46, 0x07, 0x9f, 0xaa, 0x09, 0x14, 0xc2,
            0xd7, 0x05, 0xd9, 0x8b, 0x02, 0xa2, 0xb5, 0x12, 0x9c, 0xd1, 0xde, 0x16, 0x4e, 0xb9,
            0xcb, 0xd0, 0x83, 0xe8, 0xa2, 0x50, 0x3c, 0x4e,
        ];
        // SAFETY: the CPU has AVX-512F (checked above).
        let blocks = unsafe {
            chacha20_x16(
                &key,
                _mm512_set1_epi32(1),
                _mm512_set1_epi32(nonce[0] as i32),
                _mm512_set1_epi32(nonce[1] as i32),
                _mm512_set1_epi32(nonce[2] as i32),
            )
        };
        for block in blocks {
            let mut bytes = [0u8; 64];
            // SAFETY: 64 bytes, the width of the store; the CPU has AVX-512F.
            unsafe { _mm512_storeu_si512(bytes.as_mut_ptr().cast(), block) };
            assert_eq!(bytes, expected);
        }
    }

    /// The final reduction alone: h = p must give 0, h = p - 1 gives 2^128 - 6, and
    /// p + 2^44 (over p, with a limb one over its width) reduces to 2^44.
    #[test]
    fn finish_reduces_mod_the_prime() {
        let p = [LIMB_MASK - 4, LIMB_MASK, TOP_LIMB_MASK];
        assert_eq!(finish(p, &[0; 16]), [0; 16]);
        let p_minus_one = [LIMB_MASK - 5, LIMB_MASK, TOP_LIMB_MASK];
        let mut expected = [0xffu8; 16];
        expected[0] = 0xfa;
        assert_eq!(finish(p_minus_one, &[0; 16]), expected);
        let over = [LIMB_MASK - 4, LIMB_MASK + 1, TOP_LIMB_MASK];
        assert_eq!(finish(over, &[0; 16]), (1u128 << 44).to_le_bytes());
    }
}
