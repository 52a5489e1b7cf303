//! The worker's egress queue (downloads): a TUN read that completes is not sealed at once in
//! arrival order but queued ([`crate::tunnel::egress_queue`]: per-flow fair queue, CoDel); after
//! each batch of completions the worker seals and sends from the queue in its order while the
//! sends in flight stay under the budget. Reads stay armed on every TUN slot the queue and the
//! sends do not hold, so the kernel's TUN ring keeps being drained into the queue, where flows
//! are kept apart and CoDel acts, instead of standing in the kernel's FIFO.

use crate::offload::vnet::VNET_HDR_LEN;
use crate::proto::time::Instant;
use crate::proto::wire::TRANSPORT_HEADER_LEN;
use crate::server::session_table::{TableGuard, TableSnapshot};
use crate::tunnel::egress_queue;
use crate::tunnel::fq::{DropCause, Dropped};

use super::stats::DropReason;
use super::worker::{Outcome, Worker};

impl Worker {
    /// A TUN read completed into `slot` with `n` bytes: queued.
    pub(super) fn queue_tun_read(&mut self, slot: u32, n: usize, now: Instant) {
        let range = self.packet_range(n);
        let Some(buf) = self.ring.buffer(slot) else {
            self.counters.drop(DropReason::IoError);
            return;
        };
        let packet = buf.get(range).unwrap_or(&[]);
        let dropped = &mut self.queue_dropped;
        self.egress_queue
            .enqueue(slot, packet, n as u32, now, &mut |d: Dropped| {
                dropped.push(d)
            });
        self.give_back_dropped();
    }

    /// Seals and sends from the queue, in its order, while the send budget allows; `now` is
    /// the time after the batch's completions (the queue's sojourn times end there).
    pub(super) fn drain_egress_queue(
        &mut self,
        now: Instant,
        table: &TableSnapshot,
        guard: &TableGuard<'_>,
    ) {
        if self.egress_queue.is_empty() {
            return;
        }
        loop {
            let dropped = &mut self.queue_dropped;
            let next = self
                .egress_queue
                .dequeue(now, &mut |d: Dropped| dropped.push(d));
            self.give_back_dropped();
            let Some(d) = next else { break };
            let (slot, n) = (d.packet.slot, d.packet.len as usize);
            if d.mark_ce && !self.mark_ce(slot, n) {
                self.counters.drop(DropReason::Malformed);
                self.rearm(slot);
                continue;
            }
            match self.egress(slot, n, now, table, guard) {
                Ok(Outcome::Queued) => {
                    self.send_bytes[slot as usize] = n as u64;
                    self.egress_queue.sent(n as u64);
                }
                Ok(Outcome::Consumed) => self.rearm(slot),
                Err(why) => {
                    self.counters.drop(why);
                    self.rearm(slot);
                }
            }
        }
    }

    /// The sends of TUN slot `slot` all completed: the budget gets their bytes back.
    pub(super) fn tun_sends_done(&mut self, slot: u32) {
        if let Some(bytes) = self.send_bytes.get_mut(slot as usize) {
            if *bytes > 0 {
                self.egress_queue.completed(*bytes);
                *bytes = 0;
            }
        }
    }

    /// Sets CE on the packet in TUN slot `slot` (CoDel's mark instead of a drop).
    fn mark_ce(&mut self, slot: u32, n: usize) -> bool {
        let range = self.packet_range(n);
        match self.ring.buffer(slot).and_then(|b| b.get_mut(range)) {
            Some(packet) => egress_queue::mark(packet),
            None => false,
        }
    }

    /// Where the IP packet of a TUN read of `n` bytes is in its slot: after the virtio header
    /// with offloads, after the transport header's room without.
    fn packet_range(&self, n: usize) -> std::ops::Range<usize> {
        if self.offloads {
            VNET_HDR_LEN.min(n)..n
        } else {
            TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n
        }
    }

    /// Re-arms the reads of the slots the queue dropped (their counts are the queue's).
    fn give_back_dropped(&mut self) {
        while let Some(d) = self.queue_dropped.pop() {
            debug_assert!(matches!(d.cause, DropCause::Aqm | DropCause::Overflow));
            self.rearm(d.packet.slot);
        }
    }
}
