//! CoDel (RFC 8289) for one queue: the dequeue-side state machine of RFC 8289 §5.5, in the
//! variant Linux runs and RFC 8290 uses per flow, with ECN marking in place of drops for
//! ECN-capable packets (RFC 8290 §5.2.6; Linux's `codel_dequeue`).

use std::time::Duration;

use super::Queued;
use crate::proto::time::Instant;

/// Acceptable standing queue delay: 5 ms (RFC 8289 §5.3; RFC 8290 §5.2.2).
pub const TARGET: Duration = Duration::from_millis(5);
/// Time the delay must stay above the target before the first drop, and the base of the
/// control law's spacing: 100 ms (RFC 8289 §5.3; RFC 8290 §5.2.1).
pub const INTERVAL: Duration = Duration::from_millis(100);
/// A dropping state re-entered within this many intervals of the last one resumes near its
/// old drop rate (RFC 8289 §5.5, the Linux variant it gives).
const RESUME_WITHIN_INTERVALS: u32 = 16;

/// CoDel's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodelParams {
    /// See [`TARGET`].
    pub target: Duration,
    /// See [`INTERVAL`].
    pub interval: Duration,
    /// A queue holding at most this many bytes behind the head is never dropped from: it
    /// cannot be a standing queue (RFC 8289 §5.3 `maxpacket`, one MTU).
    pub max_packet: u64,
    /// Mark ECN-capable packets CE instead of dropping them (RFC 8290 §5.2.6).
    pub ecn: bool,
}

/// The queue CoDel takes its packets from.
pub(super) trait Source {
    /// Takes the head packet off the queue.
    fn pop(&mut self) -> Option<Queued>;
    /// Bytes still queued.
    fn backlog_bytes(&self) -> u64;
    /// Drops a packet [`Source::pop`] returned (CoDel's drop).
    fn drop_popped(&mut self, packet: Queued);
}

/// A packet CoDel lets through.
#[derive(Debug, Clone, Copy)]
pub(super) struct Released {
    pub packet: Queued,
    /// Deliver it marked CE instead of having dropped it.
    pub mark_ce: bool,
}

/// One queue's CoDel state (RFC 8289 §5.2).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Codel {
    /// When the delay, above the target since, will have been so for an interval.
    first_above: Option<Instant>,
    /// When the next drop is due while dropping.
    drop_next: Instant,
    /// Drops (and marks) since entering the dropping state.
    count: u32,
    /// `count` when the last dropping state was entered.
    last_count: u32,
    dropping: bool,
}

impl Codel {
    /// The next packet of `queue` CoDel lets through at `now`, having dropped those it must
    /// (through [`Source::drop_popped`]); `None` once the queue is empty.
    pub fn dequeue(
        &mut self,
        queue: &mut impl Source,
        now: Instant,
        params: &CodelParams,
    ) -> Option<Released> {
        let (mut head, ok_to_drop) = self.pop_and_judge(queue, now, params);
        if self.dropping {
            if !ok_to_drop {
                // Below the target again: leave the dropping state.
                self.dropping = false;
            }
            // A large backlog may make the next drop due at once, hence a loop.
            while self.dropping && now >= self.drop_next {
                let packet = head?;
                self.count = self.count.saturating_add(1);
                if params.ecn && packet.packet.ecn_capable {
                    self.drop_next = control_law(self.drop_next, self.count, params);
                    return Some(Released {
                        packet,
                        mark_ce: true,
                    });
                }
                queue.drop_popped(packet);
                let ok_to_drop;
                (head, ok_to_drop) = self.pop_and_judge(queue, now, params);
                if ok_to_drop {
                    self.drop_next = control_law(self.drop_next, self.count, params);
                } else {
                    self.dropping = false;
                }
            }
        } else if ok_to_drop {
            let packet = head?;
            let mark_ce = params.ecn && packet.packet.ecn_capable;
            if !mark_ce {
                queue.drop_popped(packet);
                (head, _) = self.pop_and_judge(queue, now, params);
            }
            self.enter_dropping(now, params);
            if mark_ce {
                return Some(Released {
                    packet,
                    mark_ce: true,
                });
            }
        }
        head.map(|packet| Released {
            packet,
            mark_ce: false,
        })
    }

    /// Enters the dropping state at `now`. If the last one ended recently, the drop rate that
    /// controlled the queue then is a good start (RFC 8289 §5.5).
    fn enter_dropping(&mut self, now: Instant, params: &CodelParams) {
        self.dropping = true;
        let delta = self.count.wrapping_sub(self.last_count);
        let recent = now - self.drop_next < params.interval * RESUME_WITHIN_INTERVALS;
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.last_count = self.count;
        self.drop_next = control_law(now, self.count, params);
    }

    /// Takes the head off `queue` and says whether it may be dropped: its sojourn time, and
    /// those before it, above the target for at least an interval (RFC 8289 §5.5 `dodequeue`).
    fn pop_and_judge(
        &mut self,
        queue: &mut impl Source,
        now: Instant,
        params: &CodelParams,
    ) -> (Option<Queued>, bool) {
        let Some(head) = queue.pop() else {
            self.first_above = None;
            return (None, false);
        };
        let sojourn = now - head.enqueued;
        if sojourn < params.target || queue.backlog_bytes() <= params.max_packet {
            self.first_above = None;
            return (Some(head), false);
        }
        match self.first_above {
            None => {
                self.first_above = Some(now + params.interval);
                (Some(head), false)
            }
            Some(at) => (Some(head), now >= at),
        }
    }
}

/// When the next drop is due after one at `t`, the `count`-th: `t + interval / sqrt(count)`
/// (RFC 8289 §5.6 `control_law`): the drop rate grows with the square root of the drops,
/// since a TCP flow's throughput falls with the square root of its loss rate.
fn control_law(t: Instant, count: u32, params: &CodelParams) -> Instant {
    let spacing = params.interval.as_nanos() as f64 / f64::from(count.max(1)).sqrt();
    t + Duration::from_nanos(spacing as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::fq::Packet;
    use std::collections::VecDeque;

    /// A plain FIFO with its drops recorded.
    #[derive(Default)]
    struct Fifo {
        packets: VecDeque<Queued>,
        dropped: Vec<(u32, Instant)>,
        now: Instant,
    }

    impl Source for Fifo {
        fn pop(&mut self) -> Option<Queued> {
            self.packets.pop_front()
        }
        fn backlog_bytes(&self) -> u64 {
            self.packets.iter().map(|p| u64::from(p.packet.len)).sum()
        }
        fn drop_popped(&mut self, packet: Queued) {
            self.dropped.push((packet.packet.slot, self.now));
        }
    }

    const PARAMS: CodelParams = CodelParams {
        target: TARGET,
        interval: INTERVAL,
        max_packet: 1500,
        ecn: true,
    };

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn queued(slot: u32, at: Instant, ecn_capable: bool) -> Queued {
        Queued {
            packet: Packet {
                slot,
                len: 1000,
                flow_hash: 0,
                ecn_capable,
            },
            enqueued: at,
        }
    }

    #[test]
    fn the_control_law_spaces_drops_by_interval_over_root_count() {
        let t = ms(1000);
        assert_eq!(control_law(t, 1, &PARAMS) - t, INTERVAL);
        assert_eq!(control_law(t, 4, &PARAMS) - t, INTERVAL / 2);
        assert_eq!(control_law(t, 100, &PARAMS) - t, INTERVAL / 10);
    }

    #[test]
    fn a_short_queue_is_never_dropped_from_however_old() {
        let mut codel = Codel::default();
        let mut q = Fifo::default();
        // One packet behind the head at most: never more than max_packet bytes left.
        for i in 0..400u64 {
            q.packets.push_back(queued(i as u32, ms(i), false));
            q.packets.push_back(queued(i as u32 + 1000, ms(i), false));
            let now = ms(i + 500);
            q.now = now;
            let got = codel.dequeue(&mut q, now, &PARAMS).unwrap();
            assert!(!got.mark_ce);
            q.packets.pop_front();
        }
        assert!(q.dropped.is_empty());
    }
}
