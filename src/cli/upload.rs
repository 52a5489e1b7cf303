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
use concentrator::proto::rng::{OsRandom, Random};
use concentrator::proto::session::Session;
use concentrator::proto::time::Instant;
use concentrator::proto::wire::{TAG_LEN, TRANSPORT_HEADER_LEN};
use concentrator::sys::{clock, tun, udp};
use concentrator::tunnel::egress_queue::{self, EgressLimits, EgressQueue};
use concentrator::tunnel::fq::{Dropped, FqStats};
use concentrator::tunnel::{egress, REGION};

/// How long the reader waits for the TUN when nothing is queued, so it notices `stop`.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How long a send waits for room in the socket's buffer before the datagram is dropped.
const SEND_WAIT: Duration = Duration::from_millis(100);

/// The reader's buffers: one more than the queue holds, so a read always has one to land in
/// (the queue drops from its fattest flow to make room when full).
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
    let buffers = limits.queued_packets as usize + 1;
    let mut pool = Pool::new(buffers, layout.buffer_size());
    let mut output = vec![0u8; REGION];
    let mut dropped: Vec<Dropped> = Vec::with_capacity(buffers + 1);
    let mut sender = Sender {
        socket: &socket,
        session: &session,
        output: &mut output,
        sent_bytes: &sent_bytes,
    };
    while !stop.load(Ordering::Relaxed) {
        drain_tun(&queue, &mut pool, &layout, &mut egress, &mut dropped);
        egress.all_completed();
        let now = clock::monotonic_now();
        while let Some(d) = egress.dequeue(now, &mut |d| dropped.push(d)) {
            pool.free.extend(dropped.drain(..).map(|d| d.packet.slot));
            let (index, n) = (d.packet.slot, d.packet.len as usize);
            let buf = pool.buffer(index);
            let marked = !d.mark_ce || egress_queue::mark(&mut buf[layout.packet(n)]);
            if marked {
                let bytes = sender.seal_and_send(buf, n, &layout, now);
                egress.sent(bytes as u64);
            }
            pool.free.push(index);
        }
        pool.free.extend(dropped.drain(..).map(|d| d.packet.slot));
    }
    log_queue(egress.stats());
}

/// Reads what the TUN holds into the queue: waits for a first packet only when nothing is
/// queued, and reads at most a pool's worth per round so that the queue gets sent from too.
fn drain_tun(
    queue: &OwnedFd,
    pool: &mut Pool,
    layout: &Layout,
    egress: &mut EgressQueue,
    dropped: &mut Vec<Dropped>,
) {
    let mut wait = if egress.is_empty() {
        IDLE_WAIT
    } else {
        Duration::ZERO
    };
    for _ in 0..pool.bytes.len() / pool.size {
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

/// Seals and sends what the queue lets out.
struct Sender<'a> {
    socket: &'a UdpSocket,
    session: &'a Session,
    output: &'a mut [u8],
    sent_bytes: &'a AtomicU64,
}

impl Sender<'_> {
    /// Seals the read of `n` bytes in `buf` and sends it; the bytes handed to the socket.
    fn seal_and_send(&mut self, buf: &mut [u8], n: usize, layout: &Layout, now: Instant) -> usize {
        if !layout.offloads {
            let Ok(len) = self.session.encrypt(buf, n, now) else {
                return 0;
            };
            self.send(&buf[..len], None);
            self.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
            return len;
        }
        let Ok(train) = egress::seal_super_packet(&buf[..n], self.output, self.session, now) else {
            return 0;
        };
        self.sent_bytes
            .fetch_add(train.plaintext as u64, Ordering::Relaxed);
        for send in train.sends(0) {
            let bytes = &self.output[send.offset..send.offset + send.len];
            self.send(bytes, send.segment);
        }
        train.end
    }

    /// One send; when the socket's buffer is full, waits for room a while (the queue in front
    /// keeps the backlog, where CoDel sees it), then gives up on the datagram.
    fn send(&self, bytes: &[u8], segment: Option<u16>) {
        let fd = self.socket.as_fd();
        for _ in 0..2 {
            match udp::send_segments(fd, bytes, segment) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = tun::poll_fd(fd, libc::POLLOUT, Some(SEND_WAIT));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "send to server failed");
                    return;
                }
            }
        }
        tracing::debug!("the socket's send buffer stayed full; datagram dropped");
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
