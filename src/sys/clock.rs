//! Clocks: the engine reads time here and hands it to the sans-IO core.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto::time::Instant;

/// The current `CLOCK_MONOTONIC` time as a [`proto::time::Instant`](Instant) (nanoseconds
/// since boot, not counting suspend).
pub fn monotonic_now() -> Instant {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on
    // Linux, so the call cannot fail.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    let nanos = (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64);
    Instant::from_nanos(nanos)
}

/// Wall-clock time since the UNIX epoch (zero if the clock is set before 1970).
pub fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_advances() {
        let a = monotonic_now();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_now();
        assert!(b - a >= Duration::from_millis(2));
    }

    #[test]
    fn wall_clock_is_after_2020() {
        assert!(wall_clock() > Duration::from_secs(1_577_836_800));
    }
}
