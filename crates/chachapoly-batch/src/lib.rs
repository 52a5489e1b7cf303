//! ChaCha20-Poly1305 (RFC 8439) with empty associated data, for several messages under one key
//! at once.
//!
//! A VPN seals the segments of one super-packet back to back: dozens of ~1.4 KB messages, one
//! key, consecutive nonces. Sealed one at a time, each message's ChaCha20 blocks and Poly1305
//! blocks run one after another through one register's worth of state. Here the ChaCha20
//! blocks of up to [`LANES`] messages fill the sixteen 32-bit lanes of AVX-512 registers, and
//! each of the eight 64-bit lanes carries one message's Poly1305. The arithmetic is the
//! reference's (RFC 8439 §2.3 and §2.5; Poly1305 in limbs of 44 bits as poly1305-donna's 64-bit
//! code): no table lookups, no branch or address that depends on a key or a message byte.
//!
//! Only where the CPU has AVX-512F, AVX-512BW and AVX-512 IFMA: [`BatchKey::new`] returns
//! `None` elsewhere, and the caller seals one message at a time with another implementation. The output is
//! exactly RFC 8439's AEAD with empty associated data (WireGuard's transport data,
//! whitepaper §5.4.6), so either side may use either implementation.

#![deny(unsafe_op_in_unsafe_fn)]

use zeroize::Zeroize;

#[cfg(target_arch = "x86_64")]
mod x86;

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes of a nonce (RFC 8439 §2.8: 96 bits).
pub const NONCE_LEN: usize = 12;
/// Bytes of a tag (RFC 8439 §2.8: the 128-bit Poly1305 output).
pub const TAG_LEN: usize = 16;
/// Messages worked on together: one per 64-bit lane of a 512-bit register (Poly1305).
pub const LANES: usize = 8;
/// The longest message: ChaCha20's 32-bit block counter starts at 1 for the data (RFC 8439
/// §2.8, "P_MAX is 274,877,906,880 bytes, or nearly 256 GB").
pub const MAX_MESSAGE_LEN: u64 = 274_877_906_880;

/// One message to seal in place; its tag is written to `tag`.
pub struct SealJob<'a> {
    /// The message's nonce; never reuse one under a key.
    pub nonce: [u8; NONCE_LEN],
    /// Plaintext in (but for what `insert` gives), ciphertext out.
    pub in_out: &'a mut [u8],
    /// Part of the plaintext read from elsewhere, copied as it is encrypted: a packet's
    /// payload can be sealed from where it was read, its header built in `in_out`.
    pub insert: Option<Insert<'a>>,
    /// Where the tag goes.
    pub tag: &'a mut [u8; TAG_LEN],
}

/// Plaintext bytes of a [`SealJob`] that are not in its `in_out`.
#[derive(Debug, Clone, Copy)]
pub struct Insert<'a> {
    /// Where they belong in the message.
    pub at: usize,
    /// The bytes; what `in_out` holds there is ignored.
    pub bytes: &'a [u8],
}

/// One message to open in place.
pub struct OpenJob<'a> {
    /// The nonce it was sealed with.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext in, plaintext out (only if the tag is right; left as it was otherwise).
    pub in_out: &'a mut [u8],
    /// The tag it came with.
    pub tag: [u8; TAG_LEN],
}

/// Why a batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// A message is longer than [`MAX_MESSAGE_LEN`]; the group it was in was left untouched
    /// (earlier groups of [`LANES`] messages were already done).
    MessageTooLong,
    /// An [`Insert`] reaches beyond its message; the group it was in was left untouched.
    InsertOutOfRange,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BatchError::MessageTooLong => {
                "message longer than ChaCha20-Poly1305 allows (RFC 8439 P_MAX)"
            }
            BatchError::InsertOutOfRange => "inserted plaintext reaches beyond its message",
        })
    }
}

impl std::error::Error for BatchError {}

/// The next [`LANES`] jobs (fewer at the end), and how many there are.
fn next_group<J>(jobs: &mut impl Iterator<Item = J>) -> ([Option<J>; LANES], usize) {
    let mut group: [Option<J>; LANES] = [const { None }; LANES];
    let mut n = 0;
    for (slot, job) in group.iter_mut().zip(jobs) {
        *slot = Some(job);
        n += 1;
    }
    (group, n)
}

/// A message within [`MAX_MESSAGE_LEN`].
fn check_len(message: &[u8]) -> Result<(), BatchError> {
    if message.len() as u64 > MAX_MESSAGE_LEN {
        return Err(BatchError::MessageTooLong);
    }
    Ok(())
}

/// A ChaCha20-Poly1305 key ready for batches. Its bytes are erased when it is dropped.
pub struct BatchKey {
    /// The key as ChaCha20's eight little-endian state words (RFC 8439 §2.3).
    words: [u32; 8],
}

impl Drop for BatchKey {
    fn drop(&mut self) {
        self.words.zeroize();
    }
}

impl std::fmt::Debug for BatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("BatchKey")
    }
}

impl BatchKey {
    /// True when this CPU can run batches (x86-64 with AVX-512F, AVX-512BW and AVX-512 IFMA).
    pub fn is_supported() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512ifma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The key, or `None` when this CPU cannot run batches ([`BatchKey::is_supported`]).
    pub fn new(key: &[u8; KEY_LEN]) -> Option<Self> {
        if !Self::is_supported() {
            return None;
        }
        let mut words = [0u32; 8];
        for (word, bytes) in words.iter_mut().zip(key.chunks_exact(4)) {
            *word = u32::from_le_bytes(bytes.try_into().expect("chunks of 4"));
        }
        Some(BatchKey { words })
    }

    /// Seals every job in place, [`LANES`] at a time.
    pub fn seal<'a>(&self, jobs: impl IntoIterator<Item = SealJob<'a>>) -> Result<(), BatchError> {
        let mut jobs = jobs.into_iter();
        loop {
            let (mut group, n) = next_group(&mut jobs);
            if n == 0 {
                return Ok(());
            }
            for job in group.iter().flatten() {
                check_len(job.in_out)?;
                if let Some(insert) = job.insert {
                    if insert.at.saturating_add(insert.bytes.len()) > job.in_out.len() {
                        return Err(BatchError::InsertOutOfRange);
                    }
                }
            }
            self.seal_group(&mut group[..n]);
            if n < LANES {
                return Ok(());
            }
        }
    }

    /// Opens every job in place, [`LANES`] at a time, and tells `verdict` for each (its
    /// position in `jobs`) whether its tag was right. A job whose tag was wrong is left as it
    /// came.
    pub fn open<'a>(
        &self,
        jobs: impl IntoIterator<Item = OpenJob<'a>>,
        mut verdict: impl FnMut(usize, bool),
    ) -> Result<(), BatchError> {
        let mut jobs = jobs.into_iter();
        let mut first = 0;
        loop {
            let (mut group, n) = next_group(&mut jobs);
            if n == 0 {
                return Ok(());
            }
            for job in group.iter().flatten() {
                check_len(job.in_out)?;
            }
            let good = self.open_group(&mut group[..n]);
            for (i, ok) in good.iter().take(n).enumerate() {
                verdict(first + i, *ok);
            }
            first += n;
            if n < LANES {
                return Ok(());
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn seal_group(&self, group: &mut [Option<SealJob<'_>>]) {
        let mut lanes = x86::Lanes::default();
        for (i, job) in group.iter_mut().flatten().enumerate() {
            lanes.set(i, &job.nonce, &mut *job.in_out);
            if let Some(insert) = job.insert {
                lanes.insert(i, insert.at, insert.bytes);
            }
        }
        // SAFETY: a `BatchKey` exists only where `is_supported` found the three extensions.
        let tags = unsafe { x86::seal(&self.words, &mut lanes) };
        for (job, tag) in group.iter_mut().flatten().zip(tags.iter()) {
            *job.tag = *tag;
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn open_group(&self, group: &mut [Option<OpenJob<'_>>]) -> [bool; LANES] {
        let mut lanes = x86::Lanes::default();
        let mut tags = [[0u8; TAG_LEN]; LANES];
        for (i, job) in group.iter_mut().flatten().enumerate() {
            tags[i] = job.tag;
            lanes.set(i, &job.nonce, &mut *job.in_out);
        }
        // SAFETY: a `BatchKey` exists only where `is_supported` found the three extensions.
        unsafe { x86::open(&self.words, &mut lanes, &tags) }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn seal_group(&self, _group: &mut [Option<SealJob<'_>>]) {
        unreachable!("BatchKey::new returns None off x86-64")
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn open_group(&self, _group: &mut [Option<OpenJob<'_>>]) -> [bool; LANES] {
        unreachable!("BatchKey::new returns None off x86-64")
    }
}
