//! The receive-side replay window, lock-free so several workers may receive for one session.
//!
//! Design after RFC 6479 ("IPsec Anti-Replay Algorithm without Bit Shifting"): the window is a
//! ring of `SLOTS` (256) blocks of `BLOCK_BITS` (32) counters each. Instead of clearing a block when
//! the window slides (which needs a lock or a multi-word update), every slot carries the number
//! of the block it describes in its high 32 bits (a tag, the block number modulo 2^32, compared
//! in serial-number arithmetic so that 64-bit counters fit); a slot whose tag is older than the
//! block wanted, or which has no bit set, is simply treated as empty and replaced in one
//! compare-exchange.
//!
//! Acceptance rule (the same as a `BTreeSet` of seen counters plus the highest one): counter `c`
//! is accepted iff `c < limit` (the suite's `Reject-After-Messages`), and nothing was seen yet or
//! `c + REPLAY_WINDOW > max`, and `c` was not seen before.
//!
//! Why the 32-bit tag is enough for 64-bit counters: every counter that passes the window rule
//! is in a block at most `SLOTS` blocks from the newest, and a slot only ever holds blocks that
//! were the newest or within the window when written. A slot's tag can only be mistaken for
//! another block's after the slot went unwritten for 2^31 blocks (2^36 counters) while the
//! window moved on: then a packet may be dropped as a duplicate or too old, never accepted
//! twice (a duplicate has the same block as its slot, which compares equal exactly). An honest
//! sender cannot get there: 2^36 messages within `REJECT_AFTER_TIME` (180 s) would be 380
//! million per second.

use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use super::constants::{REJECT_AFTER_MESSAGES, REPLAY_WINDOW};
use std::cmp::Ordering as Order;

/// Counters per block: one slot's low 32 bits.
const BLOCK_BITS: u64 = 32;
/// log2 of [`BLOCK_BITS`].
const BLOCK_SHIFT: u32 = 5;
/// Number of blocks in the ring. One block is always partly ahead of the window (it holds the
/// highest counter), so the window covers `SLOTS - 1` whole blocks, as in RFC 6479 section 2.
const SLOTS: usize = 256;
/// The low bits of a slot: which counters of its block were seen.
const BITS_MASK: u64 = (1 << BLOCK_BITS) - 1;

// The window must fit in the ring minus the block being filled, or two live blocks could share
// a slot.
const _: () = assert!(REPLAY_WINDOW <= (SLOTS as u64 - 1) * BLOCK_BITS);
const _: () = assert!(1 << BLOCK_SHIFT == BLOCK_BITS);

/// How the block in a slot compares with `block`: by the 32-bit tag in serial-number arithmetic
/// (RFC 1982); a slot with no bit set is empty whatever its tag (the initial state).
fn compare_slot(slot: u64, block: u64) -> Order {
    if slot & BITS_MASK == 0 {
        return Order::Less;
    }
    // Truncation to 32 bits is the point: the tag is the block number modulo 2^32.
    let distance = ((slot >> 32) as u32).wrapping_sub(block as u32) as i32;
    distance.cmp(&0)
}

/// Why a counter was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This counter was already received (a replay or a duplicated packet).
    #[error("duplicate counter (replayed or duplicated packet)")]
    Duplicate,
    /// This counter is too far behind the highest one received to be tracked any more.
    #[error("counter is older than the replay window")]
    TooOld,
    /// The counter is at or above the per-key message limit; the key must not be used for it.
    #[error("counter is at or beyond the per-key message limit")]
    LimitReached,
}

/// The replay window of one receiving keypair. All methods take `&self` and are lock-free.
pub struct ReplayWindow {
    /// Slot `b % SLOTS` describes block `b` (counters `32b .. 32b+31`): high 32 bits = `b`,
    /// low 32 bits = which of its counters were seen.
    slots: [AtomicU64; SLOTS],
    /// Highest counter accepted plus one; 0 means nothing accepted yet.
    max: AtomicU64,
    /// Counters at or above this are refused: the suite's `Reject-After-Messages`.
    limit: u64,
}

impl ReplayWindow {
    /// An empty window for the native suite: every counter below [`REJECT_AFTER_MESSAGES`] is
    /// acceptable.
    pub const fn new() -> Self {
        Self::with_limit(REJECT_AFTER_MESSAGES)
    }

    /// An empty window that refuses counters at or above `limit`, which must leave room for the
    /// window below `u64::MAX` (both suites' limits do).
    pub const fn with_limit(limit: u64) -> Self {
        assert!(limit <= u64::MAX - REPLAY_WINDOW);
        Self {
            slots: [const { AtomicU64::new(0) }; SLOTS],
            max: AtomicU64::new(0),
            limit,
        }
    }

    /// The highest counter accepted so far, if any.
    pub fn highest(&self) -> Option<u64> {
        self.max.load(Ordering::Acquire).checked_sub(1)
    }

    /// Cheap pre-check before decrypting: would `counter` be accepted now? Changes nothing;
    /// call [`update`](Self::update) once the packet has authenticated.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let (block, bit) = self.locate(counter)?;
        let slot = self.slot(block).load(Ordering::Acquire);
        match compare_slot(slot, block) {
            Order::Equal if slot & bit != 0 => Err(ReplayError::Duplicate),
            // A newer block owns the slot, so a counter at least a whole ring ahead was seen.
            Order::Greater => Err(ReplayError::TooOld),
            _ => Ok(()),
        }
    }

    /// Marks `counter` as received, after its packet authenticated. Exactly one of several
    /// concurrent calls with the same counter succeeds.
    ///
    /// Why this is correct under concurrency: duplicate detection rests only on the slot's
    /// compare-exchange, never on `max`. A slot's tag only grows, and a slot is only replaced
    /// by a block at least `SLOTS` blocks newer; every counter of the replaced block is then
    /// more than [`REPLAY_WINDOW`] behind the new counter, so outside the window anyway. A
    /// racing call for such an old counter either loses the compare-exchange or sees the newer
    /// tag and gets [`ReplayError::TooOld`], even before `max` catches up. `max` is only the
    /// fast early rejection and is raised with `fetch_max`, so it never goes backwards.
    pub fn update(&self, counter: u64) -> Result<(), ReplayError> {
        let (block, bit) = self.locate(counter)?;
        let slot = self.slot(block);
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let next = match compare_slot(current, block) {
                Order::Equal if current & bit != 0 => return Err(ReplayError::Duplicate),
                Order::Equal => current | bit,
                // The slot holds a block out of the window (or never used): start afresh.
                Order::Less => (block << 32) | bit,
                Order::Greater => return Err(ReplayError::TooOld),
            };
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        // counter < limit <= u64::MAX - REPLAY_WINDOW, so + 1 cannot overflow.
        self.max.fetch_max(counter + 1, Ordering::AcqRel);
        Ok(())
    }

    /// Applies the limit and the window rule, and returns (block number, bit within the block).
    fn locate(&self, counter: u64) -> Result<(u64, u64), ReplayError> {
        if counter >= self.limit {
            return Err(ReplayError::LimitReached);
        }
        let max_plus_one = self.max.load(Ordering::Acquire);
        // counter < limit <= u64::MAX - REPLAY_WINDOW, so the sum cannot overflow. `counter + W <= max` means too old.
        if max_plus_one != 0 && counter + REPLAY_WINDOW < max_plus_one {
            return Err(ReplayError::TooOld);
        }
        Ok((counter >> BLOCK_SHIFT, 1u64 << (counter & (BLOCK_BITS - 1))))
    }

    fn slot(&self, block: u64) -> &AtomicU64 {
        // The modulo keeps the index in range; `as usize` is exact because it is < SLOTS.
        &self.slots[(block % SLOTS as u64) as usize]
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rng::{Random, SeededRandom};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const W: u64 = REPLAY_WINDOW;
    const LIMIT: u64 = REJECT_AFTER_MESSAGES;
    use crate::proto::constants::WG_REJECT_AFTER_MESSAGES;

    /// check, then update; asserts they agree (single-threaded).
    fn deliver(w: &ReplayWindow, c: u64) -> Result<(), ReplayError> {
        let checked = w.check(c);
        let updated = w.update(c);
        assert_eq!(checked, updated, "check and update disagree for {c}");
        updated
    }

    #[test]
    fn first_packet_zero_and_duplicate() {
        let w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        assert_eq!(deliver(&w, 0), Ok(()));
        assert_eq!(w.highest(), Some(0));
        assert_eq!(deliver(&w, 0), Err(ReplayError::Duplicate));
        assert_eq!(deliver(&w, 1), Ok(()));
        assert_eq!(deliver(&w, 1), Err(ReplayError::Duplicate));
    }

    #[test]
    fn first_packet_anywhere() {
        let w = ReplayWindow::new();
        assert_eq!(deliver(&w, 100_000), Ok(()));
        assert_eq!(deliver(&w, 100_000 - (W - 1)), Ok(()));
        assert_eq!(deliver(&w, 100_000 - W), Err(ReplayError::TooOld));
    }

    #[test]
    fn window_edge() {
        let w = ReplayWindow::new();
        let top = 10 * W + 17;
        assert_eq!(deliver(&w, top), Ok(()));
        // W - 1 behind is the oldest acceptable, W behind is out.
        assert_eq!(deliver(&w, top - (W - 1)), Ok(()));
        assert_eq!(deliver(&w, top - (W - 1)), Err(ReplayError::Duplicate));
        assert_eq!(deliver(&w, top - W), Err(ReplayError::TooOld));
        assert_eq!(deliver(&w, 0), Err(ReplayError::TooOld));
    }

    #[test]
    fn far_jump_forgets_old_blocks() {
        let w = ReplayWindow::new();
        for c in 0..64 {
            assert_eq!(deliver(&w, c), Ok(()));
        }
        // Jump by exactly one ring: block 128 reuses slot 0.
        let jump = (SLOTS as u64) * BLOCK_BITS;
        assert_eq!(deliver(&w, jump), Ok(()));
        assert_eq!(deliver(&w, 5), Err(ReplayError::TooOld));
        assert_eq!(deliver(&w, jump + 1), Ok(()));
        assert_eq!(deliver(&w, jump), Err(ReplayError::Duplicate));
        // Unseen counters in the window, in slots that still hold older blocks, are fine.
        assert_eq!(deliver(&w, jump - 100), Ok(()));
        // A huge jump.
        assert_eq!(deliver(&w, 50_000_000), Ok(()));
        assert_eq!(deliver(&w, jump + 2), Err(ReplayError::TooOld));
        assert_eq!(deliver(&w, 50_000_000 - 1), Ok(()));
    }

    #[test]
    fn sliding_in_order_and_reordered() {
        let w = ReplayWindow::new();
        for c in 0..20_000u64 {
            // Deliver pairs swapped: 1, 0, 3, 2, ...
            let c = c ^ 1;
            assert_eq!(deliver(&w, c), Ok(()), "counter {c}");
        }
        for c in (20_000 - W)..20_000 {
            assert_eq!(deliver(&w, c), Err(ReplayError::Duplicate), "counter {c}");
        }
        assert_eq!(deliver(&w, 20_000 - W - 1), Err(ReplayError::TooOld));
    }

    #[test]
    fn limits() {
        let w = ReplayWindow::new();
        assert_eq!(deliver(&w, LIMIT - 1), Ok(()));
        assert_eq!(deliver(&w, LIMIT - 1), Err(ReplayError::Duplicate));
        assert_eq!(deliver(&w, LIMIT), Err(ReplayError::LimitReached));
        assert_eq!(deliver(&w, LIMIT + 1), Err(ReplayError::LimitReached));
        assert_eq!(deliver(&w, u64::MAX), Err(ReplayError::LimitReached));
        assert_eq!(deliver(&w, u64::MAX - W), Err(ReplayError::LimitReached));
        assert_eq!(w.highest(), Some(LIMIT - 1));

        let fresh = ReplayWindow::new();
        assert_eq!(deliver(&fresh, u64::MAX), Err(ReplayError::LimitReached));
        assert_eq!(fresh.highest(), None);
    }

    /// The naive reference: the same rule over a set.
    struct Model {
        seen: BTreeSet<u64>,
        max: Option<u64>,
        limit: u64,
    }

    impl Model {
        fn new(limit: u64) -> Self {
            Model {
                seen: BTreeSet::new(),
                max: None,
                limit,
            }
        }

        fn deliver(&mut self, c: u64) -> Result<(), ReplayError> {
            if c >= self.limit {
                return Err(ReplayError::LimitReached);
            }
            if let Some(m) = self.max {
                if c + W <= m {
                    return Err(ReplayError::TooOld);
                }
            }
            if !self.seen.insert(c) {
                return Err(ReplayError::Duplicate);
            }
            self.max = Some(self.max.map_or(c, |m| m.max(c)));
            Ok(())
        }
    }

    /// Turns (kind, value) pairs into counters around a moving cursor, so that sequences have
    /// dense runs, window-edge hits, jumps and repeats.
    fn counters(ops: &[(u8, u64)]) -> Vec<u64> {
        counters_from(ops, 0, LIMIT, true)
    }

    /// [`counters`] with the cursor starting at `start`, for a window refusing from `limit`;
    /// without `far_jumps`, "anywhere" means within 2^35 of `start` (an honest sender's reach
    /// within `REJECT_AFTER_TIME`, see the module comment).
    fn counters_from(ops: &[(u8, u64)], start: u64, limit: u64, far_jumps: bool) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::with_capacity(ops.len());
        let mut cursor = start;
        for &(kind, v) in ops {
            let c = match kind {
                // Near the cursor, either side.
                0..=3 => (cursor + v % 96).saturating_sub(48),
                // Forward jump, sometimes across whole rings.
                4 => {
                    cursor += v % (3 * SLOTS as u64 * BLOCK_BITS);
                    cursor
                }
                // Repeat an earlier counter.
                5 if !out.is_empty() => out[(v % out.len() as u64) as usize],
                // Around the window's trailing edge.
                6 => (cursor + v % 4).saturating_sub(W + 1),
                // Near or beyond the limit, or anywhere at all.
                7 if far_jumps => match v % 4 {
                    0 => limit - 1 - v % 3,
                    1 => limit + v % 3,
                    2 => v,
                    _ => v % limit,
                },
                7 => match v % 2 {
                    0 => limit + v % 3,
                    _ => start + v % (1 << 35),
                },
                _ => cursor,
            };
            out.push(c);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn matches_model(ops in prop::collection::vec((0u8..9, any::<u64>()), 1..600)) {
            let w = ReplayWindow::new();
            let mut model = Model::new(LIMIT);
            for c in counters(&ops) {
                let expected = model.deliver(c);
                prop_assert_eq!(w.check(c), expected, "check({})", c);
                prop_assert_eq!(w.update(c), expected, "update({})", c);
                prop_assert_eq!(w.highest(), model.max);
            }
        }

        /// WireGuard's limit and 64-bit counters: blocks past 2^32, where the tag wraps.
        #[test]
        fn matches_model_with_wireguard_counters(
            ops in prop::collection::vec((0u8..9, any::<u64>()), 1..600),
            start in (1u64 << 37)..(1u64 << 63),
        ) {
            let w = ReplayWindow::with_limit(WG_REJECT_AFTER_MESSAGES);
            let mut model = Model::new(WG_REJECT_AFTER_MESSAGES);
            for c in counters_from(&ops, start, WG_REJECT_AFTER_MESSAGES, false) {
                let expected = model.deliver(c);
                prop_assert_eq!(w.check(c), expected, "check({})", c);
                prop_assert_eq!(w.update(c), expected, "update({})", c);
                prop_assert_eq!(w.highest(), model.max);
            }
        }
    }

    #[test]
    fn wireguard_limit_is_the_last_counter_accepted() {
        let w = ReplayWindow::with_limit(WG_REJECT_AFTER_MESSAGES);
        let last = WG_REJECT_AFTER_MESSAGES - 1;
        assert_eq!(deliver(&w, last - 5), Ok(()));
        assert_eq!(deliver(&w, last), Ok(()));
        assert_eq!(deliver(&w, last), Err(ReplayError::Duplicate));
        assert_eq!(deliver(&w, last - 5), Err(ReplayError::Duplicate));
        assert_eq!(deliver(&w, last - 4), Ok(()));
        assert_eq!(deliver(&w, last + 1), Err(ReplayError::LimitReached));
        assert_eq!(deliver(&w, u64::MAX), Err(ReplayError::LimitReached));
        assert_eq!(deliver(&w, last - W), Err(ReplayError::TooOld));
        assert_eq!(w.highest(), Some(last));
    }

    #[test]
    fn concurrent_each_counter_accepted_once() {
        const N: u64 = 60_000;
        // Reordering stays within chunks, well inside the window, so the first delivery of
        // every counter is acceptable no matter how the threads interleave.
        const CHUNK: usize = 1024;
        let w = ReplayWindow::new();
        let accepted: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    let w = &w;
                    s.spawn(move || {
                        let mut rng = SeededRandom(0xC0FFEE + t);
                        // Every counter twice, shuffled within its chunk.
                        let mut list: Vec<u64> = (0..N).flat_map(|c| [c, c]).collect();
                        for chunk in list.chunks_mut(CHUNK) {
                            for i in (1..chunk.len()).rev() {
                                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                                chunk.swap(i, j);
                            }
                        }
                        let mut mine = Vec::new();
                        for c in list {
                            if w.check(c).is_ok() && w.update(c).is_ok() {
                                mine.push(c);
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = accepted.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all.len() as u64, N, "some counter accepted twice or never");
        assert!(all.iter().copied().eq(0..N));
        assert_eq!(w.highest(), Some(N - 1));
    }
}
