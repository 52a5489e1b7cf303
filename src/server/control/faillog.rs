//! Rate-limited logging of handshake failures: at most one line per reason per window, carrying
//! how many failures it stands for. An attacker spraying initiations cannot flood the log.

use std::time::Duration;

use crate::proto::handshake::FailureReason;
use crate::proto::time::Instant;

/// Window of the failure log.
pub const FAILURE_LOG_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    last_logged: Option<Instant>,
    pending: u64,
}

/// Per-reason counts since the last line.
#[derive(Debug, Default)]
pub struct FailureLog {
    slots: [Slot; FailureReason::ALL.len()],
}

impl FailureLog {
    /// Counts a failure of reason `reason`. Returns the count to log now, if a line is due: the
    /// first failure at once, then at most once per window.
    pub fn note(&mut self, reason: FailureReason, now: Instant) -> Option<u64> {
        let slot = &mut self.slots[reason as usize];
        slot.pending += 1;
        Self::due(slot, now)
    }

    fn due(slot: &mut Slot, now: Instant) -> Option<u64> {
        let due = slot.pending > 0
            && slot
                .last_logged
                .is_none_or(|t| now - t >= FAILURE_LOG_WINDOW);
        if !due {
            return None;
        }
        slot.last_logged = Some(now);
        Some(std::mem::take(&mut slot.pending))
    }

    /// Lines due without a new failure (counts held back whose window has passed).
    pub fn flush(&mut self, now: Instant) -> Vec<(FailureReason, u64)> {
        let mut out = Vec::new();
        for (reason, slot) in FailureReason::ALL.into_iter().zip(&mut self.slots) {
            if let Some(n) = Self::due(slot, now) {
                out.push((reason, n));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_window_with_the_count() {
        let mut log = FailureLog::default();
        let t0 = Instant::from_nanos(1_000_000_000);
        let unknown = FailureReason::UnknownPeer;
        assert_eq!(log.note(unknown, t0), Some(1));
        for i in 1..=99 {
            assert_eq!(log.note(unknown, t0 + Duration::from_millis(i * 10)), None);
        }
        // Another reason has its own window.
        assert_eq!(
            log.note(FailureReason::Replayed, t0 + Duration::from_secs(1)),
            Some(1)
        );
        assert!(log.flush(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(log.flush(t0 + Duration::from_secs(10)), vec![(unknown, 99)]);
        assert!(log.flush(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(log.note(unknown, t0 + Duration::from_secs(31)), Some(1));
    }
}
