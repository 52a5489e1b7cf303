//! Coalescing decrypted packets of one flow into a super-packet for a `IFF_VNET_HDR` TUN write
//! (the inverse of [`split`](super::split)): software GRO.
//!
//! Merge rules follow the kernel's GRO (`tcp_gro_receive`, `inet_gro_receive`,
//! `udp_gro_receive_segment`) so that the kernel can later resegment the result to exactly the
//! packets we merged:
//! - IPv4 without options (the kernel's GRO only takes IHL 5), not a fragment, valid header
//!   checksum; IPv6 without extension headers. Trailing bytes after the IP length (WireGuard's
//!   padding) are dropped.
//! - All IP header fields equal except the length, the checksum and the IPv4 ID, which must be
//!   the previous one plus one (what segmentation produces).
//! - TCP: everything in the TCP header equal (ports, ack, data offset, window, urgent pointer,
//!   options) except the sequence number, which must continue the previous segment, the
//!   checksum, and PSH. Flags must be exactly ACK or ACK|PSH: SYN/FIN/RST/URG/CWR/ECE packets are
//!   never merged (they change connection state). PSH ends the super-packet.
//! - UDP: equal ports; the UDP length must match the IP length; a zero (absent) checksum is not
//!   merged, because merging would invent a checksum for unverified data.
//! - Every merged packet's L4 checksum must verify: the super-packet goes to the kernel with
//!   `NEEDS_CSUM` and the kernel would compute a fresh, valid checksum over corrupted data.
//! - Only the kinds of super-packet the TUN device accepted ([`GsoTypes`]): a kernel that
//!   refused USO fails every `GSO_UDP_L4` write.
//! - Every payload is as large as the first (that size becomes `gso_size`), except a smaller
//!   last one, which ends the super-packet; the total stays within 65535 bytes.

use super::split::{
    MAX_IP_PACKET, TCP_ACK, TCP_CSUM, TCP_DOFF, TCP_FLAGS, TCP_MAX_HDR, TCP_MIN_HDR, TCP_PSH,
    TCP_SEQ, UDP_CSUM, UDP_HDR, UDP_LEN,
};
use super::vnet::*;
use super::{be16, be32};
use crate::proto::wire::{
    checksum, IpLayout, IpPacket, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN,
};

/// Outcome of [`Coalescer::try_push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The coalescer was empty; the packet starts a new super-packet (or stays alone, if it is
    /// not a merge candidate).
    Started,
    /// The packet was appended to the current super-packet.
    Merged,
    /// The packet does not continue the current super-packet; nothing was copied. The caller
    /// must [`finish`](Coalescer::finish), write that out, and push the packet again (it will
    /// then be [`Started`](Push::Started) or [`TooLarge`](Push::TooLarge)).
    Rejected,
    /// The coalescer is empty but the packet does not fit its buffer; write it directly with
    /// [`VirtioNetHdr::NONE`].
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Not a merge candidate (ICMP, SYN, bad checksum, ...): emitted alone, unchanged.
    Single,
    Tcp,
    Udp,
}

/// The parsed facts about a merge candidate.
#[derive(Debug, Clone, Copy)]
struct Cand {
    kind: Kind,
    l3: IpLayout,
    /// IP length (bytes after it are padding).
    total: usize,
    hdr_len: usize,
    payload: usize,
    seq: u32,
    id: u16,
    psh: bool,
}

/// State of the super-packet being built.
#[derive(Debug, Clone, Copy)]
struct Flow {
    kind: Kind,
    l3: IpLayout,
    hdr_len: usize,
    gso_size: usize,
    segments: usize,
    next_seq: u32,
    last_id: u16,
    /// Nothing more may be appended (PSH seen, short segment seen, or a `Single`).
    closed: bool,
}

/// A finished super-packet (or single packet), ready for one TUN write.
#[derive(Debug, Clone, Copy)]
pub struct Coalesced<'b> {
    /// The virtio header, already encoded at the start of `frame`.
    pub hdr: VirtioNetHdr,
    /// How many packets were merged (1: `hdr` is [`VirtioNetHdr::NONE`], packet unchanged).
    pub segments: usize,
    /// Virtio header followed by the IP packet: exactly what to `write(2)` to the TUN fd.
    pub frame: &'b [u8],
}

impl<'b> Coalesced<'b> {
    /// The IP packet without the virtio header.
    pub fn packet(&self) -> &'b [u8] {
        &self.frame[VNET_HDR_LEN..]
    }
}

/// The GSO types a TUN device accepts in writes: those it negotiated with `TUNSETOFFLOAD`.
/// A kernel that refused USO (before 6.2) fails every `GSO_UDP_L4` write, so the coalescer
/// builds only the kinds of super-packet listed here and writes everything else packet by
/// packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GsoTypes {
    /// TCP over IPv4 (`VIRTIO_NET_HDR_GSO_TCPV4`).
    pub tcp4: bool,
    /// TCP over IPv6 (`VIRTIO_NET_HDR_GSO_TCPV6`).
    pub tcp6: bool,
    /// UDP over IPv4 (`VIRTIO_NET_HDR_GSO_UDP_L4`).
    pub udp4: bool,
    /// UDP over IPv6 (`VIRTIO_NET_HDR_GSO_UDP_L4`).
    pub udp6: bool,
}

impl GsoTypes {
    /// Every type this coalescer can build.
    pub const ALL: Self = Self {
        tcp4: true,
        tcp6: true,
        udp4: true,
        udp6: true,
    };
    /// None: every packet is written alone.
    pub const NONE: Self = Self {
        tcp4: false,
        tcp6: false,
        udp4: false,
        udp6: false,
    };

    fn allows(&self, kind: Kind, v6: bool) -> bool {
        match (kind, v6) {
            (Kind::Tcp, false) => self.tcp4,
            (Kind::Tcp, true) => self.tcp6,
            (Kind::Udp, false) => self.udp4,
            (Kind::Udp, true) => self.udp6,
            (Kind::Single, _) => false,
        }
    }

    /// The types a TUN device takes given the `TUN_F_*` flags it accepted
    /// ([`Tun::enable_offloads`](crate::sys::tun::Tun::enable_offloads)). Each needs the
    /// partial checksum too (`TUN_F_CSUM`): every super-packet goes out with `NEEDS_CSUM`.
    pub fn from_tun_offloads(flags: u32) -> Self {
        use crate::sys::tun::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
        let has = |flag: u32| flags & TUN_F_CSUM != 0 && flags & flag != 0;
        Self {
            tcp4: has(TUN_F_TSO4),
            tcp6: has(TUN_F_TSO6),
            udp4: has(TUN_F_USO4),
            udp6: has(TUN_F_USO6),
        }
    }
}

/// Builds one super-packet at a time in a caller-provided buffer.
///
/// The first [`VNET_HDR_LEN`] bytes of the buffer are reserved for the virtio header so that
/// [`Coalesced::frame`] is contiguous. A buffer of `VNET_HDR_LEN + 65535` bytes holds any
/// super-packet; a smaller one simply rejects merges that would not fit.
#[derive(Debug)]
pub struct Coalescer<'a> {
    buf: &'a mut [u8],
    /// Bytes of IP packet in `buf[VNET_HDR_LEN..]`.
    len: usize,
    flow: Option<Flow>,
    /// The kinds of super-packet the device takes; other packets are written alone.
    accepted: GsoTypes,
}

impl<'a> Coalescer<'a> {
    /// A coalescer writing into `buf`, building only super-packets of the types in `accepted`.
    pub fn new(buf: &'a mut [u8], accepted: GsoTypes) -> Self {
        Self {
            buf,
            len: 0,
            flow: None,
            accepted,
        }
    }

    /// Gives the buffer back (a pending super-packet is dropped: [`Coalescer::finish`] first).
    pub fn into_buffer(self) -> &'a mut [u8] {
        self.buf
    }

    /// Whether no packet is pending.
    pub fn is_empty(&self) -> bool {
        self.flow.is_none()
    }

    /// Number of packets in the pending super-packet.
    pub fn segments(&self) -> usize {
        self.flow.map_or(0, |f| f.segments)
    }

    /// Offers `packet` (one decrypted IP packet) to the pending super-packet.
    pub fn try_push(&mut self, packet: &[u8]) -> Push {
        let Some(mut f) = self.flow else {
            return self.start(packet);
        };
        if f.closed {
            return Push::Rejected;
        }
        let Some(c) = classify(packet) else {
            return Push::Rejected;
        };
        if c.kind != f.kind || c.l3 != f.l3 || c.hdr_len != f.hdr_len || c.payload > f.gso_size {
            return Push::Rejected;
        }
        let new_len = self.len + c.payload;
        if new_len > MAX_IP_PACKET || VNET_HDR_LEN + new_len > self.buf.len() {
            return Push::Rejected;
        }
        let pkt = &packet[..c.total];
        let first = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + f.hdr_len];
        if !same_ip_header(first, pkt, &f.l3, c.id, f.last_id) {
            return Push::Rejected;
        }
        let l4 = f.l3.l4_offset;
        let l4_ok = match f.kind {
            Kind::Tcp => {
                c.seq == f.next_seq
                    // ports
                    && first[l4..l4 + TCP_SEQ] == pkt[l4..l4 + TCP_SEQ]
                    // ack number and data offset
                    && first[l4 + 8..l4 + TCP_FLAGS] == pkt[l4 + 8..l4 + TCP_FLAGS]
                    // flags (both are ACK or ACK|PSH; the first is not PSH since it is open)
                    && first[l4 + TCP_FLAGS] == pkt[l4 + TCP_FLAGS] & !TCP_PSH
                    // window
                    && first[l4 + 14..l4 + TCP_CSUM] == pkt[l4 + 14..l4 + TCP_CSUM]
                    // urgent pointer and options
                    && first[l4 + 18..f.hdr_len] == pkt[l4 + 18..f.hdr_len]
            }
            Kind::Udp => first[l4..l4 + 4] == pkt[l4..l4 + 4],
            Kind::Single => false,
        };
        if !l4_ok {
            return Push::Rejected;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + c.payload].copy_from_slice(&pkt[c.hdr_len..]);
        self.len = new_len;
        f.segments += 1;
        f.next_seq = c.seq.wrapping_add(c.payload as u32);
        f.last_id = c.id;
        if c.payload < f.gso_size {
            f.closed = true;
        }
        if c.psh {
            // PSH belongs on the last segment; resegmentation keeps it there.
            self.buf[VNET_HDR_LEN + l4 + TCP_FLAGS] |= TCP_PSH;
            f.closed = true;
        }
        self.flow = Some(f);
        Push::Merged
    }

    fn start(&mut self, packet: &[u8]) -> Push {
        let cand = classify(packet);
        let data = match &cand {
            Some(c) => &packet[..c.total],
            None => packet,
        };
        // A kind the device does not take stays a single packet (its padding trimmed).
        let cand = cand.filter(|c| self.accepted.allows(c.kind, c.l3.v6));
        if self.buf.len() < VNET_HDR_LEN || data.len() > self.buf.len() - VNET_HDR_LEN {
            return Push::TooLarge;
        }
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + data.len()].copy_from_slice(data);
        self.len = data.len();
        self.flow = Some(match cand {
            Some(c) => Flow {
                kind: c.kind,
                l3: c.l3,
                hdr_len: c.hdr_len,
                gso_size: c.payload,
                segments: 1,
                next_seq: c.seq.wrapping_add(c.payload as u32),
                last_id: c.id,
                closed: c.psh,
            },
            None => Flow {
                kind: Kind::Single,
                l3: IpLayout {
                    v6: false,
                    l4_offset: 0,
                    protocol: 0,
                },
                hdr_len: 0,
                gso_size: 0,
                segments: 1,
                next_seq: 0,
                last_id: 0,
                closed: true,
            },
        });
        Push::Started
    }

    /// Completes the pending super-packet and empties the coalescer; `None` if it was empty.
    ///
    /// With two or more packets: IP length (and IPv4 header checksum) and UDP length cover the
    /// whole super-packet, the L4 checksum field holds the folded pseudo-header sum over the
    /// full L4 length, and the header says `NEEDS_CSUM` with `csum_start`/`csum_offset` pointing
    /// at it, plus the GSO type, `gso_size` (first payload) and `hdr_len` (IP + L4 headers).
    /// That is the kernel's contract for `CHECKSUM_PARTIAL` GSO skbs. With one packet: header
    /// [`VirtioNetHdr::NONE`] and the packet unchanged (its checksum is already complete; the
    /// kernel verifies it as for any received packet).
    pub fn finish(&mut self) -> Option<Coalesced<'_>> {
        let f = self.flow.take()?;
        let len = core::mem::take(&mut self.len);
        let (hdr_bytes, rest) = self.buf.split_at_mut(VNET_HDR_LEN);
        let p = &mut rest[..len];
        let hdr = if f.segments < 2 {
            VirtioNetHdr::NONE
        } else {
            let l4 = f.l3.l4_offset;
            let mut ip = IpPacket::new_unchecked(&mut *p);
            ip.set_total_len(len);
            ip.fill_checksum();
            let pseudo = ip.pseudo_header_sum(f.l3.protocol, len - l4);
            let (gso_type, field) = match (f.kind, f.l3.v6) {
                (Kind::Udp, _) => {
                    let ulen = (len - l4) as u16;
                    p[l4 + UDP_LEN..l4 + UDP_LEN + 2].copy_from_slice(&ulen.to_be_bytes());
                    (VIRTIO_NET_HDR_GSO_UDP_L4, UDP_CSUM)
                }
                (_, false) => (VIRTIO_NET_HDR_GSO_TCPV4, TCP_CSUM),
                (_, true) => (VIRTIO_NET_HDR_GSO_TCPV6, TCP_CSUM),
            };
            let partial = checksum::fold(pseudo);
            p[l4 + field..l4 + field + 2].copy_from_slice(&partial.to_be_bytes());
            VirtioNetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type,
                hdr_len: f.hdr_len as u16,
                gso_size: f.gso_size as u16,
                csum_start: l4 as u16,
                csum_offset: field as u16,
            }
        };
        hdr_bytes.copy_from_slice(&hdr.to_bytes());
        Some(Coalesced {
            hdr,
            segments: f.segments,
            frame: &self.buf[..VNET_HDR_LEN + len],
        })
    }
}

/// IP header equality for merging: see the module docs. `first` is the pending super-packet's
/// header, `pkt` the candidate with IPv4 ID `id`; both are at least `l3.l4_offset` long.
fn same_ip_header(first: &[u8], pkt: &[u8], l3: &IpLayout, id: u16, last_id: u16) -> bool {
    if l3.v6 {
        // version/traffic class/flow label; next header, hop limit, addresses
        first[0..4] == pkt[0..4] && first[6..IPV6_HEADER_LEN] == pkt[6..IPV6_HEADER_LEN]
    } else {
        // version/IHL/TOS; flags+offset, TTL, protocol; addresses
        first[0..2] == pkt[0..2]
            && id == last_id.wrapping_add(1)
            && first[6..10] == pkt[6..10]
            && first[12..IPV4_MIN_HEADER_LEN] == pkt[12..IPV4_MIN_HEADER_LEN]
    }
}

/// Parses `p` as a merge candidate; `None` if it is not one (see the module docs).
fn classify(p: &[u8]) -> Option<Cand> {
    let ip = IpPacket::new_checked(p).ok()?;
    let l3 = ip.layout().ok()?;
    let plain_header = if l3.v6 {
        IPV6_HEADER_LEN
    } else {
        IPV4_MIN_HEADER_LEN
    };
    if l3.l4_offset != plain_header || !ip.verify_checksum() {
        return None;
    }
    let total = ip.total_len();
    let p = ip.packet();
    let l4 = l3.l4_offset;
    let (kind, hdr_len, seq, psh) = match l3.protocol {
        IPPROTO_TCP => {
            let thl = usize::from(*p.get(l4 + TCP_DOFF)? >> 4) * 4;
            if !(TCP_MIN_HDR..=TCP_MAX_HDR).contains(&thl) || l4 + thl > total {
                return None;
            }
            let flags = p[l4 + TCP_FLAGS];
            if flags != TCP_ACK && flags != TCP_ACK | TCP_PSH {
                return None;
            }
            (
                Kind::Tcp,
                l4 + thl,
                be32(p, l4 + TCP_SEQ),
                flags & TCP_PSH != 0,
            )
        }
        IPPROTO_UDP => {
            if l4 + UDP_HDR > total
                || usize::from(be16(p, l4 + UDP_LEN)) != total - l4
                || be16(p, l4 + UDP_CSUM) == 0
            {
                return None;
            }
            (Kind::Udp, l4 + UDP_HDR, 0, false)
        }
        _ => return None,
    };
    let payload = total - hdr_len;
    if payload == 0 {
        return None;
    }
    let s = checksum::add(
        ip.pseudo_header_sum(l3.protocol, total - l4),
        checksum::sum(&p[l4..]),
    );
    if checksum::fold(s) != 0xffff {
        return None;
    }
    Some(Cand {
        kind,
        l3,
        total,
        hdr_len,
        payload,
        seq,
        id: ip.ident(),
        psh,
    })
}
