//! Time as the caller tells it: the core never reads a clock.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A monotonic instant, in nanoseconds since an epoch the caller chooses (the engine uses
/// `CLOCK_MONOTONIC`, tests start at zero). Only differences between instants mean anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// The instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// A TAI64N wall-clock timestamp (12 bytes, big-endian, so byte order is time order), carried
/// encrypted in each handshake initiation. The caller builds it from its wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    /// TAI64 labels seconds from 2^62 (<https://cr.yp.to/libtai/tai64.html>).
    const TAI64_BASE: u64 = 1 << 62;

    /// The timestamp for `since_unix_epoch` (wall-clock time since 1970-01-01 UTC).
    pub fn from_unix(since_unix_epoch: Duration) -> Self {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&(Self::TAI64_BASE + since_unix_epoch.as_secs()).to_be_bytes());
        out[8..].copy_from_slice(&since_unix_epoch.subsec_nanos().to_be_bytes());
        Tai64N(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tai64n_orders_like_time() {
        let a = Tai64N::from_unix(Duration::new(100, 999_999_999));
        let b = Tai64N::from_unix(Duration::new(101, 0));
        assert!(a < b);
        assert_eq!(&a.0[..8], &((1u64 << 62) + 100).to_be_bytes());
    }

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant::from_nanos(5);
        assert_eq!(t - Instant::from_nanos(10), Duration::ZERO);
        assert_eq!((t + Duration::from_secs(1)).as_nanos(), 1_000_000_005);
    }
}
