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
