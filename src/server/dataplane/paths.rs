//! The two packet paths of a worker, in both modes: per packet, or with offloads (TUN
//! super-packets cut into segments on the way out, UDP GRO batches coalesced on the way in).
//!
//! Slot layouts. Without offloads a TUN slot reads a packet at offset 16 (room for the
//! transport header), seals it in place and sends it; a socket slot receives one datagram at 0,
//! opens it in place and writes the plaintext from offset 16. With offloads a slot has an input
//! region `[0, REGION)` and an output region `[REGION, 2 * REGION)`: a TUN read lands in the
//! input (virtio header + super-packet), its segments are written, sealed, into the output, one
//! datagram every `stride` bytes, and leave in one UDP_SEGMENT send; a GRO receive lands in the
//! input, each datagram is opened in place, and the plaintexts are coalesced into the output.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};

use super::stats::{Counters, DropReason};
use super::worker::{Outcome, Worker};
use crate::offload::vnet::VNET_HDR_LEN;
use crate::proto::time::Instant;
use crate::proto::wire::{IpPacket, INITIATION_LEN, TRANSPORT_HEADER_LEN};
use crate::server::decision::{Arrival, Decision};
use crate::server::handoff::{HandshakeMessage, ServerMessage, WorkerRole};
use crate::server::session_table::{PeerEntry, TableGuard, TableSnapshot};
use crate::sys::cmsg::SendControl;
use crate::sys::uring::FileIndex;
use crate::tunnel::ecn::{self, Ecn};
use crate::tunnel::ingress::{self, Offered, TunBatch, TunFrame};
use crate::tunnel::{egress, mss};

use super::slots::{OPS_PER_SLOT, REGION};

/// A queued send or write, issued once the slot's buffer is no longer borrowed.
#[derive(Clone, Copy)]
enum Pending {
    Send {
        offset: usize,
        len: usize,
        dest: SocketAddr,
        file: FileIndex,
        segment: Option<u16>,
        segments: u64,
        /// The outer TOS byte / traffic class (`None`: the socket's, 0, for what carries no
        /// inner packet).
        tos: Option<u8>,
    },
    Write {
        offset: usize,
        len: usize,
        packets: u64,
    },
}

/// Up to `OPS_PER_SLOT` operations, without allocating.
struct PendingOps {
    ops: [Option<Pending>; OPS_PER_SLOT],
    len: usize,
}

impl PendingOps {
    fn new() -> Self {
        PendingOps {
            ops: [None; OPS_PER_SLOT],
            len: 0,
        }
    }

    /// Queues one datagram, `len` bytes from `offset`, to `dest` on the socket of its family,
    /// with outer TOS `tos`.
    fn push_datagram(
        &mut self,
        families: &[bool],
        offset: usize,
        len: usize,
        dest: SocketAddr,
        tos: Option<u8>,
    ) -> bool {
        socket_for(families, &dest).is_some_and(|file| {
            self.push(Pending::Send {
                offset,
                len,
                dest,
                file,
                segment: None,
                segments: 1,
                tos,
            })
        })
    }

    fn push(&mut self, op: Pending) -> bool {
        match self.ops.get_mut(self.len) {
            Some(free) => {
                *free = Some(op);
                self.len += 1;
                true
            }
            None => false,
        }
    }
}

/// The socket for `dest`'s address family (`families[i]`: socket `i` is IPv4).
pub(super) fn socket_for(families: &[bool], dest: &SocketAddr) -> Option<FileIndex> {
    families
        .iter()
        .position(|is_v4| *is_v4 == dest.is_ipv4())
        .map(FileIndex::socket)
}

/// The control messages of a send: its UDP_SEGMENT size and its outer TOS byte.
pub(super) fn send_control(segment_size: Option<u16>, tos: Option<u8>) -> SendControl {
    SendControl { segment_size, tos }
}

/// The drop reason of a TUN read the egress path refused.
fn egress_drop(e: egress::EgressError) -> DropReason {
    match e {
        egress::EgressError::Session(e) => DropReason::from(e),
        egress::EgressError::Malformed(_)
        | egress::EgressError::NoRoom
        | egress::EgressError::Empty => DropReason::Malformed,
    }
}

/// The peer a packet read from the TUN goes to (the longest prefix holding its destination)
/// and where that peer is now.
fn destination<'t>(
    packet: &[u8],
    table: &'t TableSnapshot,
    guard: &'t TableGuard<'_>,
) -> Result<(&'t Arc<PeerEntry>, SocketAddr), DropReason> {
    let dst = IpPacket::new_checked(packet)
        .map_err(|_| DropReason::Malformed)?
        .dst();
    let peer = table.by_address(dst, guard).ok_or(DropReason::NoPeer)?;
    let endpoint = peer.endpoint().ok_or(DropReason::NoEndpoint)?;
    Ok((peer, endpoint))
}

impl Worker {
    /// A TUN read completed with `n` bytes.
    pub(super) fn egress(
        &mut self,
        slot: u32,
        n: usize,
        now: Instant,
        table: &TableSnapshot,
        guard: &TableGuard<'_>,
    ) -> Result<Outcome, DropReason> {
        if self.offloads {
            return self.egress_segments(slot, n, now, table, guard);
        }
        self.counters.tun_rx_packets += 1;
        self.counters.tun_rx_bytes += n as u64;
        let mss_clamp = self.mss_clamp;
        let buf = self.ring.buffer(slot).ok_or(DropReason::IoError)?;
        if let Some(mtu) = mss_clamp {
            let packet = &mut buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n];
            mss::clamp_mss(packet, mtu, mss::ChecksumState::Complete);
        }
        let packet = &buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n];
        let (peer, endpoint) = destination(packet, table, guard)?;
        let file = socket_for(&self.socket_families, &endpoint).ok_or(DropReason::NoEndpoint)?;
        // RFC 6040 §4.1: the outer ECN field from the inner packet's, read before sealing.
        let tos = ecn::outer_tos_for(packet);
        let len = peer.session.encrypt_padded(buf, n, peer.padding, now)?;
        peer.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if self.staging.enabled() && self.stage(slot, 0..len, endpoint, tos) {
            return Ok(Outcome::Consumed);
        }
        let mut ops = PendingOps::new();
        ops.push(Pending::Send {
            offset: 0,
            len,
            dest: endpoint,
            file,
            segment: None,
            segments: 1,
            tos: Some(tos),
        });
        Ok(self.submit(slot, &ops))
    }

    /// Offload mode: the read holds a virtio header and a (super-)packet.
    fn egress_segments(
        &mut self,
        slot: u32,
        n: usize,
        now: Instant,
        table: &TableSnapshot,
        guard: &TableGuard<'_>,
    ) -> Result<Outcome, DropReason> {
        // Counted as one packet now, so a super-packet dropped below still counts as received;
        // once cut, each further segment counts too.
        self.counters.tun_rx_packets += 1;
        self.counters.tun_rx_bytes += n.saturating_sub(VNET_HDR_LEN) as u64;
        let mss_clamp = self.mss_clamp;
        let buf = self.ring.buffer(slot).ok_or(DropReason::IoError)?;
        let (input, output) = buf.split_at_mut(REGION);
        if let (Some(mtu), Some(frame)) = (mss_clamp, input.get_mut(..n)) {
            mss::clamp_mss_after_vnet_header(frame, mtu);
        }
        let packet = input.get(VNET_HDR_LEN..n).ok_or(DropReason::Malformed)?;
        let (peer, endpoint) = destination(packet, table, guard)?;
        let train =
            egress::seal_super_packet(&input[..n], output, &peer.session, peer.padding, now)
                .map_err(egress_drop)?;
        peer.tx_bytes
            .fetch_add(train.plaintext as u64, Ordering::Relaxed);
        self.counters.tun_rx_packets += train.count as u64 - 1;
        let file = socket_for(&self.socket_families, &endpoint).ok_or(DropReason::NoEndpoint)?;
        if self.staging.enabled() {
            // A single datagram waits for others of the batch in the staging slot; a train
            // goes after what is staged, in the order the packets were read.
            let alone = REGION..REGION + train.end;
            if train.count == 1 && self.stage(slot, alone, endpoint, train.outer_tos) {
                return Ok(Outcome::Consumed);
            }
            self.flush_staged();
        }
        let mut ops = PendingOps::new();
        for send in train.sends(REGION) {
            ops.push(Pending::Send {
                offset: send.offset,
                len: send.len,
                dest: endpoint,
                file,
                segment: send.segment,
                segments: send.datagrams as u64,
                tos: Some(send.tos),
            });
        }
        Ok(self.submit(slot, &ops))
    }

    /// Issues the queued operations of `slot` and counts what they carry. [`Outcome::Queued`]
    /// when at least one is in flight (its completion gives the slot back); when none could be
    /// queued, [`Outcome::Consumed`], so the caller re-arms the slot instead of waiting for a
    /// completion that never comes.
    fn submit(&mut self, slot: u32, ops: &PendingOps) -> Outcome {
        let mut queued = false;
        for (op_index, op) in ops.ops[..ops.len].iter().flatten().enumerate() {
            let op_index = op_index as u16;
            let result = match *op {
                Pending::Send {
                    offset,
                    len,
                    dest,
                    file,
                    segment,
                    segments,
                    tos,
                } => self
                    .ring
                    .send(
                        slot,
                        op_index,
                        file,
                        offset,
                        len,
                        dest,
                        send_control(segment, tos),
                    )
                    .map(|()| {
                        self.counters.udp_tx_packets += segments;
                        self.counters.udp_tx_bytes += len as u64;
                        self.counters.udp_tx_sends += 1;
                    }),
                Pending::Write {
                    offset,
                    len,
                    packets,
                } => self
                    .ring
                    .write(slot, op_index, FileIndex::TUN, offset, len)
                    .map(|()| {
                        self.counters.tun_tx_packets += packets;
                        self.counters.tun_tx_bytes += len as u64;
                    }),
            };
            match result {
                Ok(()) => queued = true,
                Err(_) => self.counters.drop(DropReason::IoError),
            }
        }
        if queued {
            Outcome::Queued
        } else {
            Outcome::Consumed
        }
    }

    /// A receive completed with `n` bytes: one datagram, or with GRO several of one sender,
    /// each `segment` bytes but the last. Each goes through the gate ([`Gate::decide`]), and
    /// what it decides is gathered into the slot's operations.
    pub(super) fn ingress(
        &mut self,
        slot: u32,
        n: usize,
        now: Instant,
        table: &TableSnapshot,
        guard: &TableGuard<'_>,
    ) -> Result<Outcome, DropReason> {
        let src = self.ring.source(slot).ok_or(DropReason::Malformed)?;
        // One outer ECN field for every datagram of a GRO receive: the kernel's GRO merges
        // only datagrams whose TOS / traffic class is equal (inet_gro_receive and
        // ipv6_gro_receive flush on a difference).
        let arrival = Arrival {
            src,
            outer_ecn: Ecn::from_tos(self.ring.received_tos(slot).unwrap_or(0)),
            now,
        };
        let segment = match self.ring.gro_segment_size(slot) {
            Some(size) if size > 0 => usize::from(size),
            _ => n,
        };
        let buf = self.ring.buffer(slot).ok_or(DropReason::IoError)?;
        // The receive was given exactly this much room (`Worker::receive_len`); the check
        // keeps a kernel that reported more from panicking the worker.
        let (input, output) = buf.split_at_mut(self.receive_len.min(buf.len()));
        if n > input.len() {
            return Err(DropReason::Malformed);
        }
        let mut slot_ops = SlotOps {
            pending: PendingOps::new(),
            counters: &mut self.counters,
            socket_families: &self.socket_families,
            handshakes: &self.ctx.handshakes,
            role: &self.ctx.role,
        };
        // Output frames are written from the slot's output region, which starts at `REGION`.
        let mut batch = TunBatch::new(output, self.gso_types);
        // A GRO receive of one peer's datagrams is opened several at a time.
        let mut train = self
            .gate
            .open_train(&mut input[..n], segment, now, table, guard);
        let mut start = 0;
        while start < n {
            let end = (start + segment).min(n);
            slot_ops.counters.udp_rx_packets += 1;
            slot_ops.counters.udp_rx_bytes += (end - start) as u64;
            let datagram = &mut input[start..end];
            let (i, train) = (start / segment, train.as_mut());
            match self
                .gate
                .decide_opened(train, i, datagram, arrival, table, guard)
            {
                Decision::ToTun(range) if self.offloads => {
                    let packet = start + range.start..start + range.end;
                    let mut queue = |f: TunFrame<'_>| {
                        slot_ops.write(REGION + f.offset, f.bytes.len(), f.packets as u64)
                    };
                    if batch.offer(&input[packet.clone()], &mut queue) == Offered::WriteAlone {
                        // Written alone, its virtio header in the transport header's room.
                        match ingress::frame_in_place(input, packet) {
                            Some(frame) => slot_ops.write(frame.start, frame.len(), 1),
                            None => slot_ops.counters.drop(DropReason::Malformed),
                        }
                    }
                }
                decision => slot_ops.carry_out(decision, datagram, start, src, now),
            }
            start = end;
        }
        batch.flush(&mut |f: TunFrame<'_>| {
            slot_ops.write(REGION + f.offset, f.bytes.len(), f.packets as u64)
        });
        slot_ops.counters.ecn_alarms += self.gate.take_ecn_alarms();
        let pending = slot_ops.pending;
        if pending.len == 0 {
            // Every datagram was dropped (counted above) or needed nothing.
            return Ok(Outcome::Consumed);
        }
        Ok(self.submit(slot, &pending))
    }
}

/// The operations a received slot gathers, with the parts of the worker they need (apart
/// from its ring, which holds the slot's buffer meanwhile).
struct SlotOps<'w> {
    pending: PendingOps,
    counters: &'w mut Counters,
    socket_families: &'w [bool],
    handshakes: &'w Sender<HandshakeMessage>,
    role: &'w WorkerRole,
}

impl SlotOps<'_> {
    /// Carries out what the gate decided about `datagram`, at `at` of the slot, received from
    /// `src` at `now`; with offloads, the caller coalesces what goes to the TUN instead.
    fn carry_out(
        &mut self,
        decision: Decision<'_>,
        datagram: &[u8],
        at: usize,
        src: SocketAddr,
        now: Instant,
    ) {
        match decision {
            Decision::ToTun(range) => self.write(at + range.start, range.len(), 1),
            Decision::Relay {
                len,
                peer,
                outer_tos,
            } => match peer.endpoint() {
                Some(endpoint) => {
                    self.counters.relayed_packets += 1;
                    self.send(at, len, endpoint, Some(outer_tos));
                }
                None => self.counters.drop(DropReason::NoEndpoint),
            },
            Decision::CookieReply { len } => {
                self.counters.cookie_replies += 1;
                self.send(at, len, src, None);
            }
            Decision::QueueHandshake => self.queue_handshake(datagram, src, now),
            Decision::PassToControl => self.pass_to_control(datagram, src, now),
            Decision::KeepaliveReply { len } => self.send(at, len, src, None),
            Decision::Keepalive => {}
            Decision::Drop(why) => self.counters.drop(why),
        }
    }

    /// Passes an initiation that the gate let through to the control thread; a full queue
    /// drops it.
    fn queue_handshake(&mut self, datagram: &[u8], src: SocketAddr, now: Instant) {
        let Ok(bytes) = <[u8; INITIATION_LEN]>::try_from(datagram) else {
            // The gate passes only initiations, which have exactly this length.
            self.counters.drop(DropReason::Malformed);
            return;
        };
        let message = HandshakeMessage {
            bytes,
            src,
            received: now,
        };
        match self.handshakes.try_send(message) {
            Ok(()) => self.counters.handshakes_forwarded += 1,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.drop(DropReason::HandshakeQueueFull)
            }
        }
    }

    /// Passes a datagram from the server to a client's control thread; a full queue drops it.
    fn pass_to_control(&mut self, datagram: &[u8], src: SocketAddr, now: Instant) {
        let (WorkerRole::Client(control), Some(message)) =
            (self.role, ServerMessage::new(datagram, src, now))
        else {
            // Only a client's gate passes datagrams on, none longer than a message holds.
            self.counters.drop(DropReason::UnexpectedType);
            return;
        };
        match control.try_send(message) {
            Ok(()) => self.counters.handshakes_forwarded += 1,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.drop(DropReason::HandshakeQueueFull)
            }
        }
    }

    /// Queues a send of `len` bytes from `offset` to `dest`, with outer TOS `tos`.
    fn send(&mut self, offset: usize, len: usize, dest: SocketAddr, tos: Option<u8>) {
        if !self
            .pending
            .push_datagram(self.socket_families, offset, len, dest, tos)
        {
            self.counters.drop(DropReason::IoError);
        }
    }

    /// Queues a TUN write of `len` bytes from `offset`, carrying `packets` packets.
    fn write(&mut self, offset: usize, len: usize, packets: u64) {
        let write = Pending::Write {
            offset,
            len,
            packets,
        };
        if !self.pending.push(write) {
            self.counters.drop(DropReason::IoError);
        }
    }
}
