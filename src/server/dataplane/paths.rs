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

use crossbeam_channel::TrySendError;

use super::stats::DropReason;
use super::worker::{session_drop, Outcome, Worker, TUN_FILE};
use crate::offload::coalesce::{Coalescer, Push};
use crate::offload::split::Segmenter;
use crate::offload::vnet::{VirtioNetHdr, VNET_HDR_LEN};
use crate::proto::admission::{Admission, Verdict};
use crate::proto::constants::MAX_MTU;
use crate::proto::ratelimit::SlotLimiter;
use crate::proto::time::Instant;
use crate::proto::wire::{
    self, IpPacket, MessageType, COOKIE_REPLY_LEN, INITIATION_LEN, TAG_LEN, TRANSPORT_HEADER_LEN,
};
use crate::server::handoff::HandshakeMessage;
use crate::server::session_table::{PeerEntry, TableGuard, TableSnapshot};

/// Bytes of one region of an offload slot: the largest IP packet plus a virtio header, with room
/// for the per-segment transport header and tag of up to 128 segments.
pub const REGION: usize = 65_536 + 128 * 48;
/// Segments per UDP_SEGMENT send: the kernel's UDP_MAX_SEGMENTS is 64 on older kernels
/// (include/linux/udp.h), so stay at that.
const SEGMENTS_PER_SEND: usize = 64;
/// Bytes of UDP payload one UDP_SEGMENT send may carry: the whole batch is built as one IP
/// datagram first, so it must fit a 16-bit IP length with the IPv6 (40) and UDP (8) headers.
const BYTES_PER_SEND: usize = 65_535 - 40 - 8;
/// Operations one offload slot may have in flight (sends or TUN writes): a GRO receive holds at
/// most 64 datagrams (UDP_GRO_CNT_MAX, net/ipv4/udp_offload.c), and in the worst case each
/// becomes its own write or relay.
pub const OPS_PER_SLOT: usize = 64;

/// A queued send or write, issued once the slot's buffer is no longer borrowed.
#[derive(Clone, Copy)]
enum Pending {
    Send {
        offset: usize,
        len: usize,
        dest: SocketAddr,
        file: u8,
        segment: Option<u16>,
        segments: u64,
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

    /// Queues one datagram, `len` bytes from `offset`, to `dest` on the socket of its family.
    fn push_datagram(
        &mut self,
        families: &[bool],
        offset: usize,
        len: usize,
        dest: SocketAddr,
    ) -> bool {
        socket_for(families, &dest).is_some_and(|file| {
            self.push(Pending::Send {
                offset,
                len,
                dest,
                file,
                segment: None,
                segments: 1,
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

/// Where an opened datagram's plaintext goes.
enum Delivery<'t> {
    /// To the TUN: the plaintext is at this range of the datagram's buffer.
    Tun(std::ops::Range<usize>),
    /// To another client (relay), already sealed for it in place: `len` bytes from the
    /// datagram's start.
    Relay { len: usize, peer: &'t PeerEntry },
    /// Back to the sender (a cookie reply), written in place: `len` bytes from the datagram's
    /// start.
    Reply { len: usize },
    /// Nothing to deliver (keepalive, handshake passed on).
    Nothing,
}

/// The registered file of the socket for `dest`'s address family (`families[i]`: socket `i`
/// is IPv4; file indexes start at 1, after the TUN).
fn socket_for(families: &[bool], dest: &SocketAddr) -> Option<u8> {
    families
        .iter()
        .position(|is_v4| *is_v4 == dest.is_ipv4())
        .map(|i| (i + 1) as u8)
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
        let buf = self.ring.buffer(slot).ok_or(DropReason::IoError)?;
        let packet = &buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n];
        let dst = IpPacket::new_checked(packet)
            .map_err(|_| DropReason::Malformed)?
            .dst();
        let peer = table.by_address(dst, guard).ok_or(DropReason::NoPeer)?;
        let endpoint = peer.endpoint().ok_or(DropReason::NoEndpoint)?;
        let file = socket_for(&self.socket_families, &endpoint).ok_or(DropReason::NoEndpoint)?;
        let len = peer.session.encrypt(buf, n, now).map_err(session_drop)?;
        peer.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        let mut ops = PendingOps::new();
        ops.push(Pending::Send {
            offset: 0,
            len,
            dest: endpoint,
            file,
            segment: None,
            segments: 1,
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
        let buf = self.ring.buffer(slot).ok_or(DropReason::IoError)?;
        let (input, output) = buf.split_at_mut(REGION);
        let hdr = VirtioNetHdr::parse(&input[..n]).ok_or(DropReason::Malformed)?;
        let packet = &input[VNET_HDR_LEN..n];
        let dst = IpPacket::new_checked(packet)
            .map_err(|_| DropReason::Malformed)?
            .dst();
        let peer = table.by_address(dst, guard).ok_or(DropReason::NoPeer)?;
        let endpoint = peer.endpoint().ok_or(DropReason::NoEndpoint)?;
        let segments =
            Segmenter::new(&hdr, packet, MAX_MTU as usize).map_err(|_| DropReason::Malformed)?;
        let count = segments.segment_count();
        let stride = segments.segment_len(0) + TRANSPORT_HEADER_LEN + TAG_LEN;
        if count == 0 || count * stride > output.len() {
            return Err(DropReason::Malformed);
        }
        let mut end = 0;
        for i in 0..count {
            let at = i * stride;
            let room = &mut output[at + TRANSPORT_HEADER_LEN..at + stride - TAG_LEN];
            let len = segments
                .write_segment(i, room)
                .map_err(|_| DropReason::Malformed)?;
            let sealed = peer
                .session
                .encrypt(&mut output[at..at + stride], len, now)
                .map_err(session_drop)?;
            peer.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
            end = at + sealed;
        }
        self.counters.tun_rx_packets += count as u64 - 1;
        let file = socket_for(&self.socket_families, &endpoint).ok_or(DropReason::NoEndpoint)?;
        let mut ops = PendingOps::new();
        let per_send = (BYTES_PER_SEND / stride).clamp(1, SEGMENTS_PER_SEND);
        for first in (0..count).step_by(per_send) {
            let last = (first + per_send).min(count);
            let len = if last == count {
                end - first * stride
            } else {
                (last - first) * stride
            };
            ops.push(Pending::Send {
                offset: REGION + first * stride,
                len,
                dest: endpoint,
                file,
                // All datagrams but the last are exactly `stride` bytes, as UDP_SEGMENT needs.
                segment: (last - first > 1).then_some(stride as u16),
                segments: (last - first) as u64,
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
                } => self
                    .ring
                    .send(slot, op_index, file, offset, len, dest, segment)
                    .map(|()| {
                        self.counters.udp_tx_packets += segments;
                        self.counters.udp_tx_bytes += len as u64;
                    }),
                Pending::Write {
                    offset,
                    len,
                    packets,
                } => self
                    .ring
                    .write(slot, op_index, TUN_FILE, offset, len)
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
    /// each `segment` bytes but the last.
    pub(super) fn ingress(
        &mut self,
        slot: u32,
        n: usize,
        now: Instant,
        table: &TableSnapshot,
        guard: &TableGuard<'_>,
    ) -> Result<Outcome, DropReason> {
        let src = self.ring.source(slot).ok_or(DropReason::Malformed)?;
        let segment = match self.ring.gro_segment_size(slot) {
            Some(size) if size > 0 => usize::from(size),
            _ => n,
        };
        let offloads = self.offloads;
        let receive_len = self.receive_len;
        let gso_types = self.gso_types;
        let client_to_client = self.client_to_client;
        let mut gate = HandshakeGate {
            queue: &self.ctx.handshakes,
            mac_keys: &self.ctx.mac_keys,
            load: &self.ctx.load,
            admission: &mut self.admission,
            cookie_secrets: &self.ctx.cookie_secrets,
            nonces: &mut self.nonces,
        };
        let mut ops = PendingOps::new();
        let buf = self.ring.buffer(slot).ok_or(DropReason::IoError)?;
        // The receive was given exactly this much room (`Worker::receive_len`); the check
        // keeps a kernel that reported more from panicking the worker.
        let (input, output) = buf.split_at_mut(receive_len.min(buf.len()));
        if n > input.len() {
            return Err(DropReason::Malformed);
        }
        let mut out_pos = 0;
        let mut coalescer = Coalescer::new(&mut output[..], gso_types);
        let mut start = 0;
        let mut first_error = None;
        while start < n {
            let end = (start + segment).min(n);
            self.counters.udp_rx_packets += 1;
            self.counters.udp_rx_bytes += (end - start) as u64;
            let datagram = &mut input[start..end];
            let delivery = open_datagram(
                datagram,
                src,
                now,
                table,
                guard,
                client_to_client,
                &mut gate,
                &mut self.counters,
            );
            match delivery {
                Err(why) => {
                    self.counters.drop(why);
                    first_error.get_or_insert(why);
                }
                Ok(Delivery::Nothing) => {}
                Ok(Delivery::Relay { len, peer }) => {
                    let Some(endpoint) = peer.endpoint() else {
                        self.counters.drop(DropReason::NoEndpoint);
                        start = end;
                        continue;
                    };
                    self.counters.relayed_packets += 1;
                    if !ops.push_datagram(&self.socket_families, start, len, endpoint) {
                        self.counters.drop(DropReason::IoError);
                    }
                }
                Ok(Delivery::Reply { len }) => {
                    if !ops.push_datagram(&self.socket_families, start, len, src) {
                        self.counters.drop(DropReason::IoError);
                    }
                }
                Ok(Delivery::Tun(range)) if !offloads => {
                    let len = range.len();
                    if !ops.push(Pending::Write {
                        offset: start + range.start,
                        len,
                        packets: 1,
                    }) {
                        self.counters.drop(DropReason::IoError);
                    }
                }
                Ok(Delivery::Tun(range)) => {
                    let packet_at = start + range.start;
                    loop {
                        match coalescer.try_push(&input[packet_at..start + range.end]) {
                            Push::Started | Push::Merged => break,
                            Push::Rejected => {
                                let done = coalescer.finish().map(|c| (c.frame.len(), c.segments));
                                if let Some((len, packets)) = done {
                                    if !ops.push(Pending::Write {
                                        offset: REGION + out_pos,
                                        len,
                                        packets: packets as u64,
                                    }) {
                                        self.counters.drop(DropReason::IoError);
                                    }
                                    out_pos += len;
                                }
                                coalescer = Coalescer::new(&mut output[out_pos..], gso_types);
                            }
                            Push::TooLarge => {
                                // Write it alone, its virtio header in the transport header's place.
                                let hdr_at = packet_at - VNET_HDR_LEN;
                                VirtioNetHdr::NONE.emit(&mut input[hdr_at..packet_at]);
                                if !ops.push(Pending::Write {
                                    offset: hdr_at,
                                    len: VNET_HDR_LEN + range.len(),
                                    packets: 1,
                                }) {
                                    self.counters.drop(DropReason::IoError);
                                }
                                break;
                            }
                        }
                    }
                }
            }
            start = end;
        }
        if let Some(c) = coalescer.finish() {
            let (len, packets) = (c.frame.len(), c.segments as u64);
            if !ops.push(Pending::Write {
                offset: REGION + out_pos,
                len,
                packets,
            }) {
                self.counters.drop(DropReason::IoError);
            }
        }
        if ops.len == 0 {
            // Every datagram was dropped (counted above) or needed nothing.
            return Ok(Outcome::Consumed);
        }
        Ok(self.submit(slot, &ops))
    }
}

/// What a worker needs to vet handshake initiations, and to answer them with a cookie reply
/// under load, before anything reaches the control thread.
struct HandshakeGate<'a> {
    queue: &'a crossbeam_channel::Sender<HandshakeMessage>,
    mac_keys: &'a crate::proto::cookie::MacKeys,
    load: &'a crate::server::handoff::LoadSignal,
    admission: &'a mut Admission<SlotLimiter>,
    cookie_secrets: &'a arc_swap::ArcSwap<crate::proto::cookie::CookieSecrets>,
    nonces: &'a mut crate::proto::rng::PrfRandom,
}

impl HandshakeGate<'_> {
    /// Decides what becomes of an initiation (`datagram`, checked to be one) from `src`, with
    /// the responder's own check ([`Admission::check`]): a bad mac1 is dropped; under load,
    /// one without a valid mac2 is answered here with a cookie reply, written over it in place
    /// and sent back from the same slot (no Diffie-Hellman, no state, no trip through the
    /// control thread), within the worker's budget and with no per-source limit; one with a
    /// valid mac2 is queued while its source is within its handshake rate. So the control
    /// thread gets only what carries a valid mac1 and, under load, a valid mac2.
    fn vet(
        &mut self,
        datagram: &mut [u8],
        src: SocketAddr,
        now: Instant,
        counters: &mut super::stats::Counters,
    ) -> Result<Delivery<'static>, DropReason> {
        let under_load = self.load.under_load(now);
        let secrets = self.cookie_secrets.load();
        match self
            .admission
            .check(self.mac_keys, &secrets, datagram, src, now, under_load)
        {
            Verdict::Proceed => {}
            Verdict::BadMac => return Err(DropReason::BadMac),
            Verdict::OverReplyBudget | Verdict::RateLimited => {
                return Err(DropReason::HandshakeShed)
            }
            Verdict::CookieReply => {
                let mut reply = [0u8; COOKIE_REPLY_LEN];
                secrets.write_cookie_reply(self.mac_keys, datagram, src, self.nonces, &mut reply);
                datagram[..COOKIE_REPLY_LEN].copy_from_slice(&reply);
                counters.cookie_replies += 1;
                return Ok(Delivery::Reply {
                    len: COOKIE_REPLY_LEN,
                });
            }
        }
        let mut bytes = [0u8; INITIATION_LEN];
        bytes.copy_from_slice(datagram);
        match self.queue.try_send(HandshakeMessage {
            bytes,
            src,
            received: now,
        }) {
            Ok(()) => {
                counters.handshakes_forwarded += 1;
                Ok(Delivery::Nothing)
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                Err(DropReason::HandshakeQueueFull)
            }
        }
    }
}

/// Opens one datagram in place and decides where its packet goes.
#[allow(clippy::too_many_arguments)]
fn open_datagram<'t>(
    datagram: &mut [u8],
    src: SocketAddr,
    now: Instant,
    table: &'t TableSnapshot,
    guard: &'t TableGuard<'_>,
    client_to_client: bool,
    gate: &mut HandshakeGate<'_>,
    counters: &mut super::stats::Counters,
) -> Result<Delivery<'t>, DropReason> {
    match wire::message_type(datagram) {
        Ok(MessageType::Transport) => {}
        Ok(MessageType::Initiation) => return gate.vet(datagram, src, now, counters),
        Ok(_) => return Err(DropReason::UnexpectedType),
        Err(_) => return Err(DropReason::Malformed),
    }
    let index = wire::transport_receiver_index(datagram).ok_or(DropReason::Malformed)?;
    let peer = table
        .by_index(index, guard)
        .ok_or(DropReason::UnknownIndex)?;
    let received = peer
        .session
        .decrypt(index, datagram, now)
        .map_err(session_drop)?;
    // Authenticated: the peer's endpoint follows it (roaming).
    peer.roam_to(src);
    if received.plaintext.is_empty() {
        return Ok(Delivery::Nothing); // keepalive
    }
    let packet = &datagram[received.plaintext.clone()];
    let inner = IpPacket::new_checked(packet).map_err(|_| DropReason::Malformed)?;
    if !peer.owns_source(inner.src()) {
        return Err(DropReason::SpoofedSource);
    }
    let (inner_dst, len) = (inner.dst(), inner.total_len());
    peer.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
    if client_to_client {
        if let Some(other) = table.by_address(inner_dst, guard) {
            // The plaintext sits between the old header's and the old tag's room: seal it there.
            let sealed = other
                .session
                .encrypt(
                    &mut datagram[..TRANSPORT_HEADER_LEN + len + TAG_LEN],
                    len,
                    now,
                )
                .map_err(session_drop)?;
            other.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
            return Ok(Delivery::Relay {
                len: sealed,
                peer: other,
            });
        }
    }
    Ok(Delivery::Tun(
        TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len,
    ))
}

#[cfg(test)]
mod tests;
