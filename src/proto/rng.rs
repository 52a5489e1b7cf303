//! Randomness as a parameter, so tests can be deterministic.

/// A source of random bytes. The engine passes [`OsRandom`]; tests may pass a seeded generator.
pub trait Random {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]);

    /// A random `u32`.
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        u32::from_le_bytes(b)
    }

    /// A random `u64`.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

/// The operating system's generator (`getrandom`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        // getrandom only fails when the kernel has no entropy source at all, which no supported
        // system lacks; continuing with predictable keys would be worse than stopping.
        getrandom::getrandom(dest).expect("the operating system's random generator failed");
    }
}

/// A fast generator for values that must be unpredictable and never repeat but are not keys
/// (the nonces of the cookie replies a worker writes): HMAC-SHA256 under a secret seed, over a
/// counter (a pseudorandom function in counter mode, as HMAC_DRBG without reseeding). Two SHA-256
/// blocks per 32 bytes, against a `getrandom` system call per nonce.
pub struct PrfRandom {
    key: ring::hmac::Key,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl std::fmt::Debug for PrfRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the seed or output not yet handed out.
        f.debug_struct("PrfRandom")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl PrfRandom {
    /// A generator seeded with 32 bytes from `seed` (the operating system's generator, once).
    pub fn new(seed: &mut impl Random) -> Self {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        seed.fill(key.as_mut());
        PrfRandom {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_ref()),
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }
}

impl Random for PrfRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        for byte in dest {
            if self.used == self.block.len() {
                let tag = ring::hmac::sign(&self.key, &self.counter.to_le_bytes());
                self.block.copy_from_slice(tag.as_ref());
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            // Handed out once: erase it from the buffer.
            self.block[self.used] = 0;
            self.used += 1;
        }
    }
}

/// A small deterministic generator (SplitMix64) for tests and simulations. Not for keys.
#[derive(Debug, Clone)]
pub struct SeededRandom(pub u64);

impl Random for SeededRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            // SplitMix64 (Steele, Lea, Flood 2014).
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prf_random_never_repeats_and_depends_on_its_seed() {
        let mut a = PrfRandom::new(&mut SeededRandom(1));
        let mut b = PrfRandom::new(&mut SeededRandom(2));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let mut nonce = [0u8; 24];
            a.fill(&mut nonce);
            assert!(seen.insert(nonce), "a nonce repeated");
        }
        let (mut x, mut y) = ([0u8; 24], [0u8; 24]);
        PrfRandom::new(&mut SeededRandom(1)).fill(&mut x);
        b.fill(&mut y);
        assert_ne!(x, y, "different seeds, same output");
        // Output is HMAC-SHA256(seed, counter) in order, split across calls as asked.
        let mut whole = [0u8; 64];
        PrfRandom::new(&mut SeededRandom(3)).fill(&mut whole);
        let mut split = PrfRandom::new(&mut SeededRandom(3));
        let mut parts = [0u8; 64];
        split.fill(&mut parts[..7]);
        split.fill(&mut parts[7..40]);
        split.fill(&mut parts[40..]);
        assert_eq!(whole, parts);
        let mut seed = [0u8; 32];
        SeededRandom(3).fill(&mut seed);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed);
        assert_eq!(
            whole[..32],
            *ring::hmac::sign(&key, &0u64.to_le_bytes()).as_ref()
        );
        assert_eq!(
            whole[32..],
            *ring::hmac::sign(&key, &1u64.to_le_bytes()).as_ref()
        );
    }
}
