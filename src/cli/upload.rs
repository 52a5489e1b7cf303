//! The client's upload path: packets (or super-packets) read from the TUN are queued in the
//! egress queue the server's workers use (`tunnel::egress_queue`: per-flow fair queue with
//! CoDel), then sealed (`tunnel::egress`) and sent in its order. Each round drains what the
//! TUN holds into the queue first, then seals and sends a bounded amount, so a ping or a small
//! flow waits behind at most one round of a bulk flow's super-packets, not the whole backlog.

use std::net::UdpSocket;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concentrator::offload::vnet::VNET_HDR_LEN;
use concentrator::proto::constants::MAX_MTU;
use concentrator::proto::padding::Padding;
use concentrator::proto::rng::{OsRandom, Random};
use concentrator::proto::session::Session;
use concentrator::proto::time::Instant;
use concentrator::proto::wire::{TAG_LEN, TRANSPORT_HEADER_LEN};
use concentrator::sys::cmsg::SendControl;
use concentrator::sys::{clock, poll, tun, udp};
use concentrator::tunnel::egress_queue::{self, EgressLimits, EgressQueue};
use concentrator::tunnel::fq::{Dropped, FqStats};
use concentrator::tunnel::{ecn, egress, REGION};

/// How long the reader waits for the TUN when nothing is queued, so it notices `stop`.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// The reader's buffers: two more than the queue holds, so a read always has one to land in
/// (the queue drops from its fattest flow to make room when full) while a sealed one waits.
struct Pool {
    bytes: Vec<u8>,
    size: usize,
    free: Vec<u32>,
}

impl Pool {
    fn new(buffers: usize, size: usize) -> Self {
        Pool {
            bytes: vec![0u8; buffers * size],
            size,
            free: (0..buffers as u32).rev().collect(),
        }
    }

    fn buffer(&mut self, index: u32) -> &mut [u8] {
        let at = index as usize * self.size;
        &mut self.bytes[at..at + self.size]
    }
}

/// Where a read lands in its buffer and how much it may bring.
struct Layout {
    offloads: bool,
    read_at: usize,
    read_room: usize,
}

impl Layout {
    fn new(offloads: bool) -> Self {
        if offloads {
            Layout {
                offloads,
                read_at: 0,
                read_room: REGION,
            }
        } else {
            // Read where it is sealed, after the transport header's room.
            Layout {
                offloads,
                read_at: TRANSPORT_HEADER_LEN,
                read_room: MAX_MTU as usize,
            }
        }
    }

    fn buffer_size(&self) -> usize {
        if self.offloads {
            REGION
        } else {
            TRANSPORT_HEADER_LEN + MAX_MTU as usize + TAG_LEN
        }
    }

    /// The IP packet of a read of `n` bytes in its buffer.
    fn packet(&self, n: usize) -> std::ops::Range<usize> {
        if self.offloads {
            VNET_HDR_LEN.min(n)..n
        } else {
            self.read_at..self.read_at + n
        }
    }
}

/// The TUN reader thread: TUN reads into the egress queue, out to the server.
pub(crate) fn read_tun(
    queue: OwnedFd,
    socket: UdpSocket,
    session: Arc<Session>,
    offloads: bool,
    fair_queue: bool,
    stop: Arc<AtomicBool>,
    sent_bytes: Arc<AtomicU64>,
) {
    let limits = EgressLimits::for_reads(offloads);
    let mut egress = match EgressQueue::new(limits, OsRandom.next_u32()) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(error = %e, "the upload queue cannot be built; nothing is sent");
            return;
        }
    };
    let layout = Layout::new(offloads);
    // One buffer more than the queue holds, for the read in hand, and one for a sealed
    // datagram waiting for room in the socket. Without the fair queue, one read per round:
    // each is sealed and sent before the next, and the kernel's TUN ring is the only queue.
    let (buffers, reads_per_round) = if fair_queue {
        let buffers = limits.queued_packets as usize + 2;
        (buffers, buffers)
    } else {
        (3, 1)
    };
    let mut pool = Pool::new(buffers, layout.buffer_size());
    let mut output = vec![0u8; REGION];
    let mut dropped: Vec<Dropped> = Vec::with_capacity(buffers + 1);
    let mut sender = Sender {
        socket: &socket,
        ipv6: socket.local_addr().is_ok_and(|a| a.is_ipv6()),
        session: &session,
        output: &mut output,
        sent_bytes: &sent_bytes,
        unsent: None,
    };
    while !stop.load(Ordering::Relaxed) {
        if sender.unsent.is_some() {
            // Wait for room in the socket, reading the TUN meanwhile.
            let _ = poll::readable_or_writable(queue.as_fd(), socket.as_fd(), IDLE_WAIT);
        }
        let reads = Reads {
            most: reads_per_round,
            waiting: sender.unsent.is_some(),
        };
        drain_tun(&queue, &mut pool, &layout, &mut egress, &mut dropped, reads);
        if !sender.flush(&mut pool) {
            continue;
        }
        egress.all_completed();
        let now = clock::monotonic_now();
        while let Some(d) = egress.dequeue(now, &mut |d| dropped.push(d)) {
            pool.free.extend(dropped.drain(..).map(|d| d.packet.slot));
            let (index, n) = (d.packet.slot, d.packet.len as usize);
            let buf = pool.buffer(index);
            if d.mark_ce && !egress_queue::mark(&mut buf[layout.packet(n)]) {
                pool.free.push(index);
                continue;
            }
            let bytes = sender.seal(buf, index, n, &layout, now);
            egress.sent(bytes as u64);
            if !sender.flush(&mut pool) {
                break;
            }
        }
        pool.free.extend(dropped.drain(..).map(|d| d.packet.slot));
    }
    log_queue(egress.stats());
}

/// How [`drain_tun`] reads in a round.
struct Reads {
    /// At most this many.
    most: usize,
    /// A sealed datagram waits for room in the socket: do not wait for the TUN.
    waiting: bool,
}

/// Reads what the TUN holds into the queue: waits for a first packet only when nothing is
/// queued or waiting, and reads at most a pool's worth per round so that the queue gets
/// sent from too.
fn drain_tun(
    queue: &OwnedFd,
    pool: &mut Pool,
    layout: &Layout,
    egress: &mut EgressQueue,
    dropped: &mut Vec<Dropped>,
    reads: Reads,
) {
    let mut wait = if egress.is_empty() && !reads.waiting {
        IDLE_WAIT
    } else {
        Duration::ZERO
    };
    for _ in 0..reads.most {
        let Some(index) = pool.free.pop() else { break };
        let room = &mut pool.buffer(index)[layout.read_at..layout.read_at + layout.read_room];
        let n = match tun::read_timeout(queue.as_fd(), room, Some(wait)) {
            Ok(Some(n)) if n > 0 => n,
            Ok(_) => {
                pool.free.push(index);
                break;
            }
            Err(e) => {
                pool.free.push(index);
                tracing::warn!(error = %e, "TUN read failed");
                std::thread::sleep(Duration::from_millis(50));
                break;
            }
        };
        wait = Duration::ZERO;
        let now = clock::monotonic_now();
        let packet = &pool.buffer(index)[layout.packet(n)];
        egress.enqueue(index, packet, n as u32, now, &mut |d| dropped.push(d));
        pool.free.extend(dropped.drain(..).map(|d| d.packet.slot));
    }
}

/// Sends of sealed datagrams not yet taken by the socket: from the pool buffer they were
/// sealed in (without offloads) or from the output buffer (a train), the next one first.
struct Unsent {
    /// The pool buffer holding them, or the one to free once they are sent.
    buffer: u32,
    /// They are in the pool buffer, not in the output.
    in_buffer: bool,
    sends: [Option<egress::GsoSend>; MAX_SENDS_PER_TRAIN],
    next: usize,
}

/// Sends one train needs at most: a 64 KiB super-packet cut into at most 128 segments
/// (`tunnel::REGION`), at most 64 per send (`egress::SEGMENTS_PER_SEND`), or 64 KiB per send.
const MAX_SENDS_PER_TRAIN: usize = 4;

/// Seals and sends what the queue lets out.
struct Sender<'a> {
    socket: &'a UdpSocket,
    /// The socket is IPv6 (the outer TOS goes in `IPV6_TCLASS`, else `IP_TOS`).
    ipv6: bool,
    session: &'a Session,
    output: &'a mut [u8],
    sent_bytes: &'a AtomicU64,
    unsent: Option<Unsent>,
}

impl Sender<'_> {
    /// Seals the read of `n` bytes in pool buffer `index` (`buf`) into sends waiting in
    /// [`Sender::unsent`]; the bytes sealed.
    fn seal(
        &mut self,
        buf: &mut [u8],
        index: u32,
        n: usize,
        layout: &Layout,
        now: Instant,
    ) -> usize {
        let mut unsent = Unsent {
            buffer: index,
            in_buffer: !layout.offloads,
            sends: [None; MAX_SENDS_PER_TRAIN],
            next: 0,
        };
        if !layout.offloads {
            // RFC 6040 §4.1: the outer ECN field from the inner packet's, read before sealing.
            let tos = ecn::outer_tos_for(&buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n]);
            let Ok(len) = self.session.encrypt(buf, n, now) else {
                self.unsent = Some(unsent);
                return 0;
            };
            unsent.sends[0] = Some(egress::GsoSend {
                offset: 0,
                len,
                segment: None,
                datagrams: 1,
                tos,
            });
            self.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.unsent = Some(unsent);
            return len;
        }
        // The client speaks the native suite only, which is not padded.
        let padding = Padding::None;
        if let Ok(train) =
            egress::seal_super_packet(&buf[..n], self.output, self.session, padding, now)
        {
            for (slot, send) in unsent.sends.iter_mut().zip(train.sends(0)) {
                *slot = Some(send);
            }
            self.sent_bytes
                .fetch_add(train.plaintext as u64, Ordering::Relaxed);
            self.unsent = Some(unsent);
            return train.end;
        }
        self.unsent = Some(unsent);
        0
    }

    /// Sends what waits; true when nothing is left (its buffer back in the pool), false when
    /// the socket's buffer is full (the rest waits for room; the queue keeps the backlog, where
    /// CoDel sees it).
    fn flush(&mut self, pool: &mut Pool) -> bool {
        let Some(unsent) = self.unsent.as_mut() else {
            return true;
        };
        let fd = self.socket.as_fd();
        while let Some(send) = unsent.sends.get(unsent.next).copied().flatten() {
            let bytes = if unsent.in_buffer {
                &pool.buffer(unsent.buffer)[send.offset..send.offset + send.len]
            } else {
                &self.output[send.offset..send.offset + send.len]
            };
            let control = SendControl {
                segment_size: send.segment,
                tos: Some(send.tos),
            };
            match udp::send_with_control(fd, bytes, control, self.ipv6) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => tracing::debug!(error = %e, "send to server failed"),
            }
            unsent.next += 1;
        }
        pool.free.push(unsent.buffer);
        self.unsent = None;
        true
    }
}

fn log_queue(q: &FqStats) {
    tracing::info!(
        queued_packets = q.enqueued_packets,
        queued_bytes = q.enqueued_bytes,
        ce_marks = q.ce_marks,
        aqm_drops = q.aqm_drops,
        overflow_drops = q.overflow_drops,
        mean_delay_us = q.sojourn.mean().as_micros() as u64,
        max_delay_us = q.sojourn.max_nanos / 1000,
        "upload queue"
    );
}
