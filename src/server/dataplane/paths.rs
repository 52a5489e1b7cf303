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
use super::worker::{session_drop, Outcome, Worker};
use crate::offload::coalesce::{Coalescer, Push};
use crate::offload::vnet::{VirtioNetHdr, VNET_HDR_LEN};
use crate::proto::admission::{Admission, Verdict};
use crate::proto::ip;
use crate::proto::ratelimit::SlotLimiter;
use crate::proto::time::Instant;
use crate::proto::wire::{
    self, MessageType, COOKIE_REPLY_LEN, INITIATION_LEN, TAG_LEN, TRANSPORT_HEADER_LEN,
};
use crate::server::handoff::HandshakeMessage;
use crate::server::session_table::{PeerEntry, TableGuard, TableSnapshot};
use crate::sys::uring::FileIndex;
use crate::tunnel::{egress, mss};

/// Bytes of one region of an offload slot (input: a TUN read or a GRO receive; output: the
/// sealed segments or the coalesced frames).
pub use crate::tunnel::REGION;
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
        file: FileIndex,
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

/// The socket for `dest`'s address family (`families[i]`: socket `i` is IPv4).
fn socket_for(families: &[bool], dest: &SocketAddr) -> Option<FileIndex> {
    families
        .iter()
        .position(|is_v4| *is_v4 == dest.is_ipv4())
        .map(FileIndex::socket)
}

/// The drop reason of a TUN read the egress path refused.
fn egress_drop(e: egress::EgressError) -> DropReason {
    match e {
        egress::EgressError::Session(e) => session_drop(e),
        egress::EgressError::Malformed(_)
        | egress::EgressError::NoRoom
        | egress::EgressError::Empty => DropReason::Malformed,
    }
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
        let (_, dst) = ip::addresses(packet).ok_or(DropReason::Malformed)?;
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
        let mss_clamp = self.mss_clamp;
        let buf = self.ring.buffer(slot).ok_or(DropReason::IoError)?;
        let (input, output) = buf.split_at_mut(REGION);
        if let (Some(mtu), Some(frame)) = (mss_clamp, input.get_mut(..n)) {
            mss::clamp_mss_after_vnet_header(frame, mtu);
        }
        let packet = input.get(VNET_HDR_LEN..n).ok_or(DropReason::Malformed)?;
        let (_, dst) = ip::addresses(packet).ok_or(DropReason::Malformed)?;
        let peer = table.by_address(dst, guard).ok_or(DropReason::NoPeer)?;
        let endpoint = peer.endpoint().ok_or(DropReason::NoEndpoint)?;
        let train = egress::seal_super_packet(&input[..n], output, &peer.session, now)
            .map_err(egress_drop)?;
        peer.tx_bytes
            .fetch_add(train.plaintext as u64, Ordering::Relaxed);
        self.counters.tun_rx_packets += train.count as u64 - 1;
        let file = socket_for(&self.socket_families, &endpoint).ok_or(DropReason::NoEndpoint)?;
        let mut ops = PendingOps::new();
        for send in train.sends(REGION) {
            ops.push(Pending::Send {
                offset: send.offset,
                len: send.len,
                dest: endpoint,
                file,
                segment: send.segment,
                segments: send.datagrams as u64,
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
                (client_to_client, self.mss_clamp),
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

/// Opens one datagram in place and decides where its packet goes. With `mss_clamp` (the MTU),
/// a TCP SYN's MSS is lowered to fit it, whether the packet goes to the TUN or is relayed.
#[allow(clippy::too_many_arguments)]
fn open_datagram<'t>(
    datagram: &mut [u8],
    src: SocketAddr,
    now: Instant,
    table: &'t TableSnapshot,
    guard: &'t TableGuard<'_>,
    (client_to_client, mss_clamp): (bool, Option<u16>),
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
    let (inner_src, inner_dst) = ip::addresses(packet).ok_or(DropReason::Malformed)?;
    if !peer.owns_source(inner_src, table) {
        return Err(DropReason::SpoofedSource);
    }
    let len = ip::stated_len(packet).ok_or(DropReason::Malformed)?;
    peer.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
    if let Some(mtu) = mss_clamp {
        let packet = &mut datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
        mss::clamp_mss(packet, mtu, mss::ChecksumState::Complete);
    }
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
