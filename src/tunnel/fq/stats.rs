//! The fair queue's counters: plain numbers, summed over queues with [`FqStats::merge`], for
//! `show` and the metrics to read.

use std::time::Duration;

/// Buckets of the sojourn summary: below 1 µs, then one per power of two of microseconds up
/// to 2^22 µs (~4.2 s), and a last one for anything longer.
pub const SOJOURN_BUCKETS: usize = 24;

/// The distribution of queue delays (sojourn times, enqueue to dequeue) of the packets let
/// through, in power-of-two buckets: a fixed array, one increment per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SojournSummary {
    /// Packets recorded.
    pub count: u64,
    /// Sum of their sojourn times, in nanoseconds.
    pub total_nanos: u64,
    /// The longest.
    pub max_nanos: u64,
    /// `buckets[0]`: below 1 µs; `buckets[i]`: [2^(i-1), 2^i) µs; the last also holds
    /// everything longer.
    pub buckets: [u64; SOJOURN_BUCKETS],
}

impl SojournSummary {
    /// Counts one sojourn time.
    pub fn record(&mut self, sojourn: Duration) {
        let nanos = u64::try_from(sojourn.as_nanos()).unwrap_or(u64::MAX);
        self.count += 1;
        self.total_nanos = self.total_nanos.saturating_add(nanos);
        self.max_nanos = self.max_nanos.max(nanos);
        self.buckets[Self::bucket_of(nanos)] += 1;
    }

    fn bucket_of(nanos: u64) -> usize {
        let micros = nanos / 1000;
        ((u64::BITS - micros.leading_zeros()) as usize).min(SOJOURN_BUCKETS - 1)
    }

    /// The upper bound of bucket `i` (the last has none: the maximum seen stands for it).
    fn bucket_limit(&self, i: usize) -> Duration {
        if i + 1 == SOJOURN_BUCKETS {
            Duration::from_nanos(self.max_nanos)
        } else {
            Duration::from_micros(1 << i)
        }
    }

    /// The mean sojourn time; zero with nothing recorded.
    pub fn mean(&self) -> Duration {
        Duration::from_nanos(self.total_nanos.checked_div(self.count).unwrap_or(0))
    }

    /// An upper bound of the `q` quantile (0 to 1): the top of the bucket it falls in, never
    /// above the maximum seen; zero with nothing recorded.
    pub fn quantile_upper_bound(&self, q: f64) -> Duration {
        let wanted = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= wanted && self.count > 0 {
                return self
                    .bucket_limit(i)
                    .min(Duration::from_nanos(self.max_nanos));
            }
        }
        Duration::ZERO
    }

    /// Adds `other`'s packets to these.
    pub fn merge(&mut self, other: &SojournSummary) {
        self.count += other.count;
        self.total_nanos = self.total_nanos.saturating_add(other.total_nanos);
        self.max_nanos = self.max_nanos.max(other.max_nanos);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
    }
}

/// A fair queue's counters since it was made, and its current backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FqStats {
    /// Packets and bytes offered to the queue.
    pub enqueued_packets: u64,
    pub enqueued_bytes: u64,
    /// Packets and bytes let through (marked ones included).
    pub dequeued_packets: u64,
    pub dequeued_bytes: u64,
    /// Dropped by CoDel: their queue's delay stayed above the target.
    pub aqm_drops: u64,
    pub aqm_drop_bytes: u64,
    /// Let through marked CE by CoDel instead of dropped.
    pub ce_marks: u64,
    /// Dropped because the queue was over its byte or packet limit.
    pub overflow_drops: u64,
    pub overflow_drop_bytes: u64,
    /// Times a flow with nothing queued got a packet and so the new flows' priority.
    pub new_flows: u64,
    /// Bytes and packets queued now.
    pub backlog_bytes: u64,
    pub backlog_packets: u64,
    /// The most bytes ever queued at once.
    pub peak_backlog_bytes: u64,
    /// Queue delays of the packets let through.
    pub sojourn: SojournSummary,
}

impl FqStats {
    /// Adds `other` (another queue's counters) to these; backlogs add up, peaks take the larger.
    pub fn merge(&mut self, other: &FqStats) {
        self.enqueued_packets += other.enqueued_packets;
        self.enqueued_bytes += other.enqueued_bytes;
        self.dequeued_packets += other.dequeued_packets;
        self.dequeued_bytes += other.dequeued_bytes;
        self.aqm_drops += other.aqm_drops;
        self.aqm_drop_bytes += other.aqm_drop_bytes;
        self.ce_marks += other.ce_marks;
        self.overflow_drops += other.overflow_drops;
        self.overflow_drop_bytes += other.overflow_drop_bytes;
        self.new_flows += other.new_flows;
        self.backlog_bytes += other.backlog_bytes;
        self.backlog_packets += other.backlog_packets;
        self.peak_backlog_bytes = self.peak_backlog_bytes.max(other.peak_backlog_bytes);
        self.sojourn.merge(&other.sojourn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sojourn_buckets_are_powers_of_two_of_microseconds() {
        let mut s = SojournSummary::default();
        for micros in [0u64, 1, 3, 900, 5_000, 5_000, 10_000_000] {
            s.record(Duration::from_micros(micros));
        }
        assert_eq!(s.count, 7);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1, "1 µs is in [1, 2)");
        assert_eq!(s.buckets[2], 1, "3 µs is in [2, 4)");
        assert_eq!(s.buckets[10], 1, "900 µs is in [512, 1024)");
        assert_eq!(s.buckets[13], 2, "5 ms is in [4096, 8192) µs");
        assert_eq!(s.buckets[SOJOURN_BUCKETS - 1], 1, "10 s is beyond");
        assert_eq!(s.max_nanos, 10_000_000_000);
        assert_eq!(s.quantile_upper_bound(0.5), Duration::from_micros(1024));
        assert_eq!(s.quantile_upper_bound(0.8), Duration::from_micros(8192));
        assert_eq!(s.quantile_upper_bound(1.0), Duration::from_secs(10));
        assert_eq!(
            SojournSummary::default().quantile_upper_bound(0.5),
            Duration::ZERO
        );
    }

    #[test]
    fn merging_adds_counts_and_keeps_the_larger_peak() {
        let mut a = FqStats {
            aqm_drops: 2,
            peak_backlog_bytes: 10,
            backlog_bytes: 4,
            ..FqStats::default()
        };
        let mut b = FqStats {
            aqm_drops: 3,
            peak_backlog_bytes: 7,
            backlog_bytes: 5,
            ..FqStats::default()
        };
        b.sojourn.record(Duration::from_millis(2));
        a.merge(&b);
        assert_eq!(
            (a.aqm_drops, a.peak_backlog_bytes, a.backlog_bytes),
            (5, 10, 9)
        );
        assert_eq!(a.sojourn.count, 1);
        assert_eq!(a.sojourn.mean(), Duration::from_millis(2));
    }
}
