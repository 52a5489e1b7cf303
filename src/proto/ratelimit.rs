//! Token buckets for handshake initiations: per source, and one for everything.
//!
//! A handshake costs the responder Diffie-Hellman operations, so under load each source that
//! proved its address (a valid mac2, see [`crate::proto::admission`]) may start only a few per
//! second. Time comes from the caller; memory is bounded by
//! `max_sources` entries.
//!
//! When the table is full, entries whose bucket has refilled completely are swept first (they
//! carry no state a fresh entry would not have). If it is still full, new sources are refused:
//! the limiter fails closed, because failing open would let an attacker who cycles through
//! many addresses switch it off. Sources already in the table keep their own buckets, so
//! established clients are not starved by the flood.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use super::time::Instant;

/// Initiations per second a source may sustain. WireGuard's ratelimiter
/// (`drivers/net/wireguard/ratelimiter.c`, `PACKETS_PER_SECOND`).
pub const DEFAULT_PACKETS_PER_SECOND: u32 = 20;
/// Initiations a quiet source may send at once. WireGuard's ratelimiter (`PACKETS_BURSTABLE`).
pub const DEFAULT_BURST: u32 = 5;
/// Sources tracked at most: about 64 bytes each with the table's overhead, so 4 MiB. WireGuard
/// sizes its table from RAM and caps it at 8 x 8192 = 65536 entries.
pub const DEFAULT_MAX_SOURCES: usize = 65_536;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What a source is keyed by: an IPv4 address, or the /64 of an IPv6 address, since one host
/// usually owns a whole /64 and could otherwise use 2^64 keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl SourceKey {
    fn of(src: IpAddr) -> Self {
        // IPv4-mapped IPv6 (from a dual-stack socket) is the IPv4 host it maps.
        match src.to_canonical() {
            IpAddr::V4(ip) => SourceKey::V4(ip.octets()),
            IpAddr::V6(ip) => {
                let o = ip.octets();
                SourceKey::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        }
    }
}

/// One source's bucket. Tokens are counted in nanoseconds of refill time, so refilling is
/// one saturating addition and no floating point is needed.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    last: Instant,
}

/// Per-source token-bucket limiter for handshake initiations.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Refill time of one token, in nanoseconds.
    cost: u64,
    /// Bucket size, in nanoseconds: `cost * burst`.
    capacity: u64,
    max_sources: usize,
    /// std's `HashMap` hashes with a random SipHash key, so an attacker cannot pick sources
    /// that collide.
    buckets: HashMap<SourceKey, Bucket>,
    /// No entry can be fully refilled before this, so a sweep earlier would be wasted work.
    next_sweep: Instant,
}

impl Default for RateLimiter {
    /// WireGuard's limits: [`DEFAULT_PACKETS_PER_SECOND`], [`DEFAULT_BURST`],
    /// [`DEFAULT_MAX_SOURCES`].
    fn default() -> Self {
        RateLimiter::new(
            DEFAULT_PACKETS_PER_SECOND,
            DEFAULT_BURST,
            DEFAULT_MAX_SOURCES,
        )
    }
}

impl RateLimiter {
    /// A limiter letting each source send `burst` initiations at once and `packets_per_second`
    /// sustained, tracking at most `max_sources` sources. Zero rates are raised to one (a
    /// limiter that refuses everything is not a rate limit); `max_sources` of zero refuses all.
    pub fn new(packets_per_second: u32, burst: u32, max_sources: usize) -> Self {
        let cost = (NANOS_PER_SEC / u64::from(packets_per_second.max(1))).max(1);
        RateLimiter {
            cost,
            capacity: cost.saturating_mul(u64::from(burst.max(1))),
            max_sources,
            buckets: HashMap::new(),
            next_sweep: Instant::default(),
        }
    }

    /// Whether `src` may start a handshake `now`; takes a token if so. Refuses sources not yet
    /// tracked while the table is full of active ones.
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        let key = SourceKey::of(src);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            refill(bucket, self.capacity, now);
            return match bucket.tokens.checked_sub(self.cost) {
                Some(left) => {
                    bucket.tokens = left;
                    true
                }
                None => false,
            };
        }
        if self.buckets.len() >= self.max_sources {
            if now >= self.next_sweep {
                self.sweep(now);
            }
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        // A new source starts with a full bucket, minus this packet.
        self.buckets.insert(
            key,
            Bucket {
                tokens: self.capacity - self.cost,
                last: now,
            },
        );
        true
    }

    /// Forgets every source whose bucket has refilled completely by `now`. Called by
    /// [`RateLimiter::allow`] when the table is full; a caller may also call it from a timer to
    /// give memory back.
    pub fn sweep(&mut self, now: Instant) {
        let capacity = self.capacity;
        let mut soonest_full = u64::MAX;
        self.buckets.retain(|_, bucket| {
            refill(bucket, capacity, now);
            let missing = capacity - bucket.tokens;
            if missing > 0 {
                soonest_full = soonest_full.min(missing);
            }
            missing > 0
        });
        // Taking tokens only delays refilling, so nothing frees up before the soonest entry.
        self.next_sweep = now + Duration::from_nanos(soonest_full);
    }

    /// Number of sources tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Adds the tokens earned since the bucket was last seen. A `now` earlier than that earns
/// nothing, so a clock stepping back cannot mint tokens.
fn refill(bucket: &mut Bucket, capacity: u64, now: Instant) {
    let earned = now.as_nanos().saturating_sub(bucket.last.as_nanos());
    bucket.tokens = bucket.tokens.saturating_add(earned).min(capacity);
    bucket.last = bucket.last.max(now);
}

/// Per-source token buckets in a fixed table of hashed slots: no allocation after creation,
/// constant memory, constant time. Approximate: each source maps to [`SLOT_CHOICES`] slots (the
/// hash is keyed at random), and passes while any of them has a token, taking one from each that
/// has. A heavy source that shares one slot with a quiet one therefore cannot lock it out: the
/// quiet source would have to share every one of its slots with heavy ones (with 256 heavy
/// sources in 4 096 slots, 1 in 150 quiet sources does; with a single slot, 1 in 6 would).
/// Workers use it for the per-source rate of initiations with a valid mac2 (see
/// [`crate::proto::admission`]) before they reach the control thread, whose exact
/// [`RateLimiter`] still decides.
#[derive(Debug, Clone)]
pub struct SlotLimiter {
    cost: u64,
    capacity: u64,
    hasher: std::collections::hash_map::RandomState,
    slots: Box<[Bucket]>,
}

/// Slots per source in a [`SlotLimiter`].
pub const SLOT_CHOICES: usize = 3;

impl SlotLimiter {
    /// `slots` (rounded up to a power of two, at most 2^21) buckets of `burst` tokens refilled
    /// at `packets_per_second` each.
    pub fn new(packets_per_second: u32, burst: u32, slots: usize) -> Self {
        let cost = (NANOS_PER_SEC / u64::from(packets_per_second.max(1))).max(1);
        let empty = Bucket {
            tokens: 0,
            last: Instant::default(),
        };
        SlotLimiter {
            cost,
            capacity: cost.saturating_mul(u64::from(burst.max(1))),
            hasher: std::collections::hash_map::RandomState::new(),
            slots: vec![empty; slots.clamp(1, 1 << 21).next_power_of_two()].into_boxed_slice(),
        }
    }

    /// Whether `src` may have one more `now`. A slot never used before starts full (its `last`
    /// is the clock's origin).
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        use std::hash::BuildHasher;
        // One 64-bit hash gives the slot numbers, 21 bits each.
        let hash = self.hasher.hash_one(SourceKey::of(src));
        let mask = self.slots.len() - 1;
        let mut allowed = false;
        for choice in 0..SLOT_CHOICES {
            let bucket = &mut self.slots[(hash >> (21 * choice)) as usize & mask];
            refill(bucket, self.capacity, now);
            if let Some(left) = bucket.tokens.checked_sub(self.cost) {
                bucket.tokens = left;
                allowed = true;
            }
        }
        allowed
    }
}

/// One token bucket for everything, with no per-source state: caps the total rate of some work
/// (a gate's cookie replies) whatever the number of sources it is spread over.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    cost: u64,
    capacity: u64,
    bucket: Bucket,
}

impl TokenBucket {
    /// `burst` tokens, refilled at `per_second`; starts full.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let cost = (NANOS_PER_SEC / u64::from(per_second.max(1))).max(1);
        let capacity = cost.saturating_mul(u64::from(burst.max(1)));
        TokenBucket {
            cost,
            capacity,
            bucket: Bucket {
                tokens: capacity,
                last: Instant::default(),
            },
        }
    }

    /// Whether one more is allowed `now`; takes a token if so.
    pub fn allow(&mut self, now: Instant) -> bool {
        refill(&mut self.bucket, self.capacity, now);
        match self.bucket.tokens.checked_sub(self.cost) {
            Some(left) => {
                self.bucket.tokens = left;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn drain(rl: &mut RateLimiter, src: IpAddr, now: Instant) -> usize {
        (0..100).take_while(|_| rl.allow(src, now)).count()
    }

    #[test]
    fn burst_then_refuse() {
        let mut rl = RateLimiter::default();
        assert_eq!(drain(&mut rl, ip("192.0.2.1"), ms(0)), 5);
        assert!(!rl.allow(ip("192.0.2.1"), ms(0)));
    }

    #[test]
    fn refills_at_the_configured_rate() {
        let mut rl = RateLimiter::new(20, 5, 16);
        let src = ip("192.0.2.1");
        assert_eq!(drain(&mut rl, src, ms(0)), 5);
        // One token every 50 ms.
        assert!(!rl.allow(src, ms(49)));
        assert!(rl.allow(src, ms(50)));
        assert!(!rl.allow(src, ms(50)));
        assert!(rl.allow(src, ms(100)));
        // Sustained: one second gives 20, not more.
        let mut allowed = 0;
        for t in (101..=1101).step_by(5) {
            allowed += usize::from(rl.allow(src, ms(t)));
        }
        assert_eq!(allowed, 20);
    }

    #[test]
    fn bucket_caps_at_burst() {
        let mut rl = RateLimiter::new(20, 5, 16);
        let src = ip("192.0.2.1");
        assert!(rl.allow(src, ms(0)));
        // An hour of silence still only allows a burst.
        assert_eq!(drain(&mut rl, src, ms(3_600_000)), 5);
    }

    #[test]
    fn sources_are_independent() {
        let mut rl = RateLimiter::new(1, 2, 16);
        assert_eq!(drain(&mut rl, ip("192.0.2.1"), ms(0)), 2);
        assert_eq!(drain(&mut rl, ip("192.0.2.2"), ms(0)), 2);
        assert_eq!(drain(&mut rl, ip("2001:db8::1"), ms(0)), 2);
        assert_eq!(rl.len(), 3);
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let mut rl = RateLimiter::new(1, 3, 16);
        assert!(rl.allow(ip("2001:db8:0:1::1"), ms(0)));
        assert!(rl.allow(ip("2001:db8:0:1:ffff::2"), ms(0)));
        assert!(rl.allow(ip("2001:db8:0:1::3"), ms(0)));
        assert!(!rl.allow(ip("2001:db8:0:1:dead:beef::"), ms(0)));
        // The next /64 is another source.
        assert!(rl.allow(ip("2001:db8:0:2::1"), ms(0)));
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn ipv4_mapped_counts_as_ipv4() {
        let mut rl = RateLimiter::new(1, 1, 16);
        assert!(rl.allow(ip("192.0.2.7"), ms(0)));
        assert!(!rl.allow(ip("::ffff:192.0.2.7"), ms(0)));
        assert_eq!(rl.len(), 1);
    }

    #[test]
    fn full_table_fails_closed_for_new_sources() {
        let mut rl = RateLimiter::new(20, 5, 2);
        assert!(rl.allow(ip("192.0.2.1"), ms(0)));
        assert!(rl.allow(ip("192.0.2.2"), ms(0)));
        assert!(!rl.allow(ip("192.0.2.3"), ms(0)));
        assert!(!rl.allow(ip("2001:db8::1"), ms(10)));
        // Known sources keep their buckets.
        assert!(rl.allow(ip("192.0.2.1"), ms(10)));
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn full_table_sweeps_refilled_entries() {
        let mut rl = RateLimiter::new(20, 5, 2);
        assert!(rl.allow(ip("192.0.2.1"), ms(0)));
        assert!(rl.allow(ip("192.0.2.2"), ms(20)));
        // 192.0.2.1 is full again after 50 ms; 192.0.2.2 only at 70 ms.
        assert!(!rl.allow(ip("192.0.2.3"), ms(49)));
        assert!(rl.allow(ip("192.0.2.3"), ms(50)));
        assert_eq!(rl.len(), 2);
        // The swept source starts over with a full burst.
        assert!(rl.allow(ip("192.0.2.2"), ms(70)));
        assert!(!rl.allow(ip("192.0.2.1"), ms(70)));
    }

    #[test]
    fn sweeps_are_skipped_until_something_can_be_freed() {
        let mut rl = RateLimiter::new(20, 5, 1);
        assert!(rl.allow(ip("192.0.2.1"), ms(0)));
        assert!(!rl.allow(ip("192.0.2.2"), ms(1)));
        // The sweep at 1 ms learnt that nothing refills before 50 ms.
        assert_eq!(rl.next_sweep, ms(50));
        assert!(!rl.allow(ip("192.0.2.2"), ms(30)));
        assert_eq!(rl.next_sweep, ms(50));
        assert!(rl.allow(ip("192.0.2.2"), ms(50)));
    }

    #[test]
    fn explicit_sweep_frees_memory() {
        let mut rl = RateLimiter::new(20, 5, 16);
        for i in 0..10 {
            assert!(rl.allow(IpAddr::from([10, 0, 0, i]), ms(0)));
        }
        assert!(rl.allow(ip("10.0.0.1"), ms(40)));
        rl.sweep(ms(60));
        assert_eq!(rl.len(), 1);
        rl.sweep(ms(100));
        assert!(rl.is_empty());
    }

    #[test]
    fn zero_sources_refuses_everything() {
        let mut rl = RateLimiter::new(20, 5, 0);
        assert!(!rl.allow(ip("192.0.2.1"), ms(0)));
        assert!(!rl.allow(ip("192.0.2.1"), ms(1_000_000)));
    }

    #[test]
    fn zero_rates_are_raised_to_one() {
        let mut rl = RateLimiter::new(0, 0, 4);
        let src = ip("192.0.2.1");
        assert_eq!(drain(&mut rl, src, ms(0)), 1);
        assert!(!rl.allow(src, ms(999)));
        assert!(rl.allow(src, ms(1000)));
    }

    #[test]
    fn extreme_rates_and_times_do_not_overflow() {
        let mut rl = RateLimiter::new(u32::MAX, u32::MAX, 4);
        let src = ip("192.0.2.1");
        assert!(rl.allow(src, Instant::from_nanos(u64::MAX)));
        assert!(rl.allow(src, Instant::from_nanos(0)));
        rl.sweep(Instant::from_nanos(u64::MAX));
    }

    #[test]
    fn clock_stepping_back_mints_no_tokens() {
        let mut rl = RateLimiter::new(20, 1, 4);
        let src = ip("192.0.2.1");
        assert!(rl.allow(src, ms(1000)));
        assert!(!rl.allow(src, ms(0)));
        assert!(!rl.allow(src, ms(1049)));
        assert!(rl.allow(src, ms(1050)));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood() {
        let mut rl = RateLimiter::new(20, 5, 100);
        for i in 0..10_000u32 {
            let _ = rl.allow(IpAddr::from(i.to_be_bytes()), ms(u64::from(i / 100)));
        }
        assert!(rl.len() <= 100);
    }

    #[test]
    fn slot_limiter_gives_each_source_its_burst_then_its_rate() {
        let mut l = SlotLimiter::new(40, 10, 4096);
        let t0 = ms(10_000);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..100).filter(|_| l.allow(a, t0)).count();
        assert_eq!(
            allowed, 10,
            "burst (its slots are fresh, none shared: 1 source)"
        );
        assert!(!l.allow(a, t0 + Duration::from_millis(24)));
        assert!(
            l.allow(a, t0 + Duration::from_millis(25)),
            "one token per 25 ms"
        );
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b2: IpAddr = "2001:db8::2".parse().unwrap();
        let first = (0..100).filter(|_| l.allow(b, t0)).count();
        let more = (0..100).filter(|_| l.allow(b2, t0)).count();
        assert_eq!(first + more, 10, "the /64 shares one budget");
    }

    #[test]
    fn slot_limiter_sheds_heavy_sources_without_locking_out_quiet_ones() {
        // 256 sources each at 200/s (5x their rate) for 2 s, in 4 096 slots; then 2 000 quiet
        // sources send one each. A fresh random key every run: the margins are wide.
        let mut l = SlotLimiter::new(40, 10, 4096);
        let t0 = ms(10_000);
        let mut heavy_passed = 0;
        for i in 0..102_400u64 {
            let at = t0 + Duration::from_micros(i * 2_000_000 / 102_400);
            let src = IpAddr::from([10, 2, 0, (i % 256) as u8]);
            heavy_passed += usize::from(l.allow(src, at));
        }
        // Each heavy source gets its rate (a bit more where its slots are shared with quiet
        // ones): far below what it sent.
        assert!(
            heavy_passed < 256 * 90 * 2,
            "{heavy_passed} of 102 400 passed"
        );
        let end = t0 + Duration::from_secs(2);
        let quiet_passed = (0..2000u32)
            .filter(|i| l.allow(IpAddr::from([172, 16, (i >> 8) as u8, *i as u8]), end))
            .count();
        assert!(
            quiet_passed >= 1940,
            "only {quiet_passed} of 2 000 quiet sources passed"
        );
    }

    #[test]
    fn token_bucket_caps_the_total_rate() {
        let mut bucket = TokenBucket::new(1000, 10);
        let start = ms(5_000);
        // The burst at once, then one per millisecond.
        assert_eq!((0..100).take_while(|_| bucket.allow(start)).count(), 10);
        assert!(!bucket.allow(start));
        let mut allowed = 0;
        for step in 1..=2_000u64 {
            // Four tries every quarter of a millisecond for 500 ms: 8 000 asked, 500 earned.
            let now = Instant::from_nanos(start.as_nanos() + step * 250_000);
            allowed += (0..4).filter(|_| bucket.allow(now)).count();
        }
        assert_eq!(allowed, 500);
        // A clock stepping back mints nothing.
        assert!(!bucket.allow(start));
    }
}
