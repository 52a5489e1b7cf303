//! Gathering small sends (with offloads, without the egress queue): a TUN read that sealed to
//! a single datagram is copied into the worker's staging slot (`staging`) instead of being sent
//! from its own slot, which goes back to reading at once; at the end of the batch of
//! completions (before the worker waits again, so nothing waits longer than it would have) the
//! staged datagrams leave in the `UDP_SEGMENT` sends `tunnel::train::TrainBuilder` grouped
//! them into: one per run of datagrams to one endpoint with one TOS and one length.

use std::net::SocketAddr;
use std::ops::Range;

use super::paths::{send_control, socket_for};
use super::slots::STAGING_BYTES;
use super::stats::DropReason;
use super::worker::Worker;

impl Worker {
    /// Copies the sealed datagram at `range` of TUN slot `from`, to `dest` with outer TOS
    /// `tos`, into the staging slot, to leave at the end of the batch; false when no staging
    /// slot is idle (the caller sends it from its slot).
    pub(super) fn stage(
        &mut self,
        from: u32,
        range: Range<usize>,
        dest: SocketAddr,
        tos: u8,
    ) -> bool {
        for _ in 0..2 {
            let Some(to) = self.staging_slot() else {
                return false;
            };
            let Some((src, dst)) = self.ring.buffer_pair(from, to) else {
                return false;
            };
            let (Some(datagram), len) = (src.get(range.clone()), range.len()) else {
                return false;
            };
            if dst.len() < STAGING_BYTES {
                return false;
            }
            if let Some(at) = self.staging.trains.place(dest, len, tos) {
                dst[at..at + len].copy_from_slice(datagram);
                return true;
            }
            // The slot is full: send what it holds, and fill the next.
            self.flush_staged();
        }
        false
    }

    /// The staging slot being filled, or an idle one to start filling.
    fn staging_slot(&mut self) -> Option<u32> {
        let s = &mut self.staging;
        if s.filling.is_some() || s.count == 0 {
            return s.filling;
        }
        for i in 0..s.count {
            let slot = s.first + (s.next + i) % s.count;
            if self.ring.buffer(slot).is_some() {
                s.next = (slot - s.first + 1) % s.count;
                s.filling = Some(slot);
                return Some(slot);
            }
        }
        None
    }

    /// Queues the sends of what was staged (they reach the kernel with the next wait).
    pub(super) fn flush_staged(&mut self) {
        let Some(slot) = self.staging.filling.take() else {
            return;
        };
        for (op, train) in self.staging.trains.trains().enumerate() {
            let datagrams = train.datagrams as u64;
            let sent = socket_for(&self.socket_families, &train.dest).is_some_and(|file| {
                let control = send_control(train.segment_size(), Some(train.tos));
                let (at, len) = (train.offset, train.len);
                self.ring
                    .send(slot, op as u16, file, at, len, train.dest, control)
                    .is_ok()
            });
            if sent {
                self.counters.udp_tx_packets += datagrams;
                self.counters.udp_tx_bytes += train.len as u64;
                self.counters.udp_tx_sends += 1;
            } else {
                self.counters.drops[DropReason::IoError as usize] += datagrams;
            }
        }
        self.staging.trains.clear();
    }
}
