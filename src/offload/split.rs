//! Splitting a TUN read (virtio header + super-packet) into MTU-sized IP packets.
//!
//! The per-segment rules are those of the kernel's software GSO (`tcp_gso_segment`,
//! `__udp_gso_segment`, `inet_gso_segment`, `ipv6_gso_segment`):
//! - every segment carries a copy of the IP and L4 headers;
//! - IPv4: total length set, ID incremented by the segment index (wrapping), header checksum
//!   recomputed; IPv6: payload length set (it counts extension headers);
//! - TCP: sequence number advanced by `index * gso_size`; FIN and PSH only on the last segment,
//!   CWR only on the first (RFC 3168 §6.1.2: CWR is set on one segment only);
//! - UDP (USO): each segment is its own datagram with its own length;
//! - the L4 checksum is computed in full (pseudo-header + header + payload); the partial
//!   checksum the kernel left in the field is ignored.
//!
//! The kernel's `hdr_len` is not trusted (on the forward path it is the whole linear part of the
//! skb, not the header length): it is only bounds-checked, and the header length is derived from
//! the packet itself, as wireguard-go's `handleVirtioRead` does. Nor are the super-packet's IP
//! length fields: its length is the buffer's, and each segment gets its own.

use super::vnet::*;
use super::{be16, be32, OffloadError};
use crate::proto::wire::{checksum, IpLayout, IpPacket, IPPROTO_TCP, IPPROTO_UDP};

/// TCP header field offsets and flag bits (RFC 9293 §3.1; CWR/ECE from RFC 3168 §6.1).
pub(crate) const TCP_SEQ: usize = 4;
pub(crate) const TCP_DOFF: usize = 12;
pub(crate) const TCP_FLAGS: usize = 13;
pub(crate) const TCP_CSUM: usize = 16;
pub(crate) const TCP_MIN_HDR: usize = 20;
pub(crate) const TCP_MAX_HDR: usize = 60;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;
pub(crate) const TCP_CWR: u8 = 0x80;
/// UDP header layout (RFC 768).
pub(crate) const UDP_LEN: usize = 4;
pub(crate) const UDP_CSUM: usize = 6;
pub(crate) const UDP_HDR: usize = 8;
/// Largest IP packet whose length fits the IPv4 total-length field; we also cap IPv6 segments
/// here so one limit holds for both.
pub(crate) const MAX_IP_PACKET: usize = 65535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Not GSO: one segment, the packet itself, with the checksum completed if asked.
    Plain {
        /// `(csum_start, csum_start + csum_offset)` when `NEEDS_CSUM` is set.
        csum: Option<(usize, usize)>,
    },
    Tcp,
    Udp,
}

/// A validated super-packet, ready to be written out segment by segment.
///
/// All checks happen in [`Segmenter::new`], so the caller learns how many segments (and how many
/// output buffers) it needs before anything is written, and [`Segmenter::write_segment`] can only
/// fail on a too-small output buffer or index.
#[derive(Debug, Clone, Copy)]
pub struct Segmenter<'p> {
    packet: &'p [u8],
    kind: Kind,
    l3: IpLayout,
    /// IP + L4 header length, derived from the packet (0 for `Plain`).
    hdr_len: usize,
    /// Payload bytes per segment (the whole packet for `Plain`).
    gso_size: usize,
    count: usize,
}

impl<'p> Segmenter<'p> {
    /// Validates `hdr` against `packet` (the bytes after the virtio header) and plans the split so
    /// that no segment exceeds `mtu` bytes (IP header included).
    pub fn new(hdr: &VirtioNetHdr, packet: &'p [u8], mtu: usize) -> Result<Self, OffloadError> {
        if usize::from(hdr.hdr_len) > packet.len() {
            return Err(OffloadError::HdrLenBeyondPacket);
        }
        let mtu = mtu.min(MAX_IP_PACKET);
        let gso = hdr.gso_kind();
        let (is_tcp, want_v6) = match gso {
            VIRTIO_NET_HDR_GSO_NONE => return Self::plain(hdr, packet, mtu),
            VIRTIO_NET_HDR_GSO_TCPV4 => (true, Some(false)),
            VIRTIO_NET_HDR_GSO_TCPV6 => (true, Some(true)),
            VIRTIO_NET_HDR_GSO_UDP_L4 => (false, None),
            VIRTIO_NET_HDR_GSO_UDP => return Err(OffloadError::UnsupportedGsoType(hdr.gso_type)),
            _ => return Err(OffloadError::UnknownGsoType(hdr.gso_type)),
        };
        let l3 = IpPacket::new_checked_ignoring_length(packet)?.layout()?;
        if want_v6.is_some_and(|v6| v6 != l3.v6) {
            return Err(OffloadError::IpVersionMismatch);
        }
        let (proto, csum_field) = if is_tcp {
            (IPPROTO_TCP, TCP_CSUM)
        } else {
            (IPPROTO_UDP, UDP_CSUM)
        };
        if l3.protocol != proto {
            return Err(OffloadError::ProtocolMismatch);
        }
        if hdr.needs_csum()
            && (usize::from(hdr.csum_start) != l3.l4_offset
                || usize::from(hdr.csum_offset) != csum_field)
        {
            return Err(OffloadError::BadChecksumOffset);
        }
        let l4_len = if is_tcp {
            let doff = packet
                .get(l3.l4_offset + TCP_DOFF)
                .ok_or(OffloadError::Truncated)?;
            let thl = usize::from(doff >> 4) * 4;
            if !(TCP_MIN_HDR..=TCP_MAX_HDR).contains(&thl) {
                return Err(OffloadError::BadTcpHeaderLen);
            }
            thl
        } else {
            UDP_HDR
        };
        let hdr_len = l3.l4_offset + l4_len;
        if hdr_len > packet.len() {
            return Err(OffloadError::Truncated);
        }
        let gso_size = usize::from(hdr.gso_size);
        if gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let payload = packet.len() - hdr_len;
        if payload == 0 {
            return Err(OffloadError::EmptyPayload);
        }
        let largest = hdr_len + gso_size.min(payload);
        if largest > mtu {
            return Err(OffloadError::ExceedsMtu {
                needed: largest,
                mtu,
            });
        }
        Ok(Self {
            packet,
            kind: if is_tcp { Kind::Tcp } else { Kind::Udp },
            l3,
            hdr_len,
            gso_size,
            count: payload.div_ceil(gso_size),
        })
    }

    fn plain(hdr: &VirtioNetHdr, packet: &'p [u8], mtu: usize) -> Result<Self, OffloadError> {
        if packet.len() > mtu {
            return Err(OffloadError::ExceedsMtu {
                needed: packet.len(),
                mtu,
            });
        }
        let csum = if hdr.needs_csum() {
            Some(csum_location(hdr, packet.len())?)
        } else {
            None
        };
        Ok(Self {
            packet,
            kind: Kind::Plain { csum },
            l3: IpLayout {
                v6: false,
                l4_offset: 0,
                protocol: 0,
            },
            hdr_len: 0,
            gso_size: packet.len(),
            count: 1,
        })
    }

    /// Number of segments the packet splits into (at least 1).
    pub fn segment_count(&self) -> usize {
        self.count
    }

    /// Length in bytes of segment `i` (a full IP packet); 0 if `i` is out of range.
    pub fn segment_len(&self, i: usize) -> usize {
        if i >= self.count {
            return 0;
        }
        let payload = self.packet.len() - self.hdr_len;
        self.hdr_len + (payload - i * self.gso_size).min(self.gso_size)
    }

    /// The payload of segment `i` (after its IP and L4 headers), where it is in the
    /// super-packet; empty for a packet that is not cut (not GSO) or an index out of range.
    pub fn segment_payload(&self, i: usize) -> &'p [u8] {
        if i >= self.count || matches!(self.kind, Kind::Plain { .. }) {
            return &[];
        }
        let start = self.hdr_len + i * self.gso_size;
        &self.packet[start..start + (self.segment_len(i) - self.hdr_len)]
    }

    /// Writes segment `i` to the start of `out` and returns its length.
    pub fn write_segment(&self, i: usize, out: &mut [u8]) -> Result<usize, OffloadError> {
        let (head, payload) = self.write_segment_head(i, out)?;
        out[head..head + payload.len()].copy_from_slice(payload);
        Ok(head + payload.len())
    }

    /// Writes segment `i`'s headers (IP and L4, checksum included) to the start of `out` and
    /// returns their length and the payload that follows them in the segment, where it is in
    /// the super-packet: a caller that copies it anyway (sealing it, say) need not copy it
    /// first. `out` must have room for the whole segment. A packet that is not cut
    /// (not GSO) is all head.
    pub fn write_segment_head(
        &self,
        i: usize,
        out: &mut [u8],
    ) -> Result<(usize, &'p [u8]), OffloadError> {
        if i >= self.count {
            return Err(OffloadError::SegmentIndex);
        }
        let seg_len = self.segment_len(i);
        let out = out.get_mut(..seg_len).ok_or(OffloadError::BufferTooSmall)?;
        let (is_tcp, csum_field) = match self.kind {
            Kind::Plain { csum } => {
                out.copy_from_slice(self.packet);
                if let Some((start, field)) = csum {
                    finish_partial(out, start, field);
                }
                return Ok((seg_len, &[]));
            }
            Kind::Tcp => (true, TCP_CSUM),
            Kind::Udp => (false, UDP_CSUM),
        };
        let h = self.hdr_len;
        let l4 = self.l3.l4_offset;
        let payload = self.segment_payload(i);
        out[..h].copy_from_slice(&self.packet[..h]);

        // The header was copied from the checked packet; `out` has the segment's length (the
        // payload's part of it not written yet), which the IP length fields are checked against.
        let mut ip = IpPacket::new_unchecked(&mut *out);
        // inet_gso_segment: consecutive IPv4 IDs unless the skb is SKB_GSO_TCP_FIXEDID, which
        // virtio cannot express.
        ip.set_ident(ip.ident().wrapping_add(i as u16));
        ip.set_total_len(seg_len);
        ip.fill_checksum();
        let pseudo = ip.pseudo_header_sum(self.l3.protocol, seg_len - l4);

        if is_tcp {
            // i * gso_size < 65536, so the cast is exact; sequence space wraps (RFC 9293 §3.4).
            let seq = be32(out, l4 + TCP_SEQ).wrapping_add((i * self.gso_size) as u32);
            out[l4 + TCP_SEQ..l4 + TCP_SEQ + 4].copy_from_slice(&seq.to_be_bytes());
            let mut flags = out[l4 + TCP_FLAGS];
            if i + 1 != self.count {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i != 0 {
                flags &= !TCP_CWR;
            }
            out[l4 + TCP_FLAGS] = flags;
        } else {
            let ulen = (seg_len - l4) as u16;
            out[l4 + UDP_LEN..l4 + UDP_LEN + 2].copy_from_slice(&ulen.to_be_bytes());
        }

        out[l4 + csum_field] = 0;
        out[l4 + csum_field + 1] = 0;
        // The payload summed where it is: the L4 header's length is even (TCP: a multiple
        // of 4, UDP: 8), so its words line up as they would after the header.
        let initial = checksum::add(pseudo, checksum::sum(payload));
        let mut c = checksum::checksum(&out[l4..h], initial);
        if !is_tcp && c == 0 {
            // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
            c = 0xffff;
        }
        out[l4 + csum_field..l4 + csum_field + 2].copy_from_slice(&c.to_be_bytes());
        Ok((h, payload))
    }
}

/// Validates `csum_start`/`csum_offset` for a packet of `len` bytes; returns the checksum start
/// and the checksum field's offset.
fn csum_location(hdr: &VirtioNetHdr, len: usize) -> Result<(usize, usize), OffloadError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > len {
        return Err(OffloadError::BadChecksumOffset);
    }
    Ok((start, field))
}

/// Completes a `NEEDS_CSUM` partial checksum in place: the field holds the pseudo-header sum,
/// the rest is summed from `start` to the end (the kernel's `skb_checksum_help`).
fn finish_partial(p: &mut [u8], start: usize, field: usize) {
    let initial = u64::from(be16(p, field));
    p[field] = 0;
    p[field + 1] = 0;
    // A zero result is stored as 0xffff, like skb_checksum_help (CSUM_MANGLED_0): the same value
    // in ones' complement for TCP, and the only correct encoding for UDP.
    let c = match checksum::checksum(&p[start..], initial) {
        0 => 0xffff,
        c => c,
    };
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Completes the checksum of a non-GSO packet in place (the common case, without a copy).
/// A no-op unless `NEEDS_CSUM` is set. GSO packets must go through [`Segmenter`].
pub fn complete_checksum(hdr: &VirtioNetHdr, packet: &mut [u8]) -> Result<(), OffloadError> {
    if hdr.gso_kind() != VIRTIO_NET_HDR_GSO_NONE {
        return Err(OffloadError::UnsupportedGsoType(hdr.gso_type));
    }
    if hdr.needs_csum() {
        let (start, field) = csum_location(hdr, packet.len())?;
        finish_partial(packet, start, field);
    }
    Ok(())
}

/// Splits `packet` into `bufs[i][offset..]`, one segment per buffer, recording each segment's
/// length in `lens[i]`; returns the number of segments.
///
/// Everything is checked before the first byte is written: on error no buffer has been touched.
/// Typical use: `bufs` are the data plane's 2048-byte slots and `offset` leaves room in front of
/// each segment for the transport header that encryption adds.
pub fn split_into<B: AsMut<[u8]>>(
    hdr: &VirtioNetHdr,
    packet: &[u8],
    mtu: usize,
    bufs: &mut [B],
    offset: usize,
    lens: &mut [usize],
) -> Result<usize, OffloadError> {
    let seg = Segmenter::new(hdr, packet, mtu)?;
    let n = seg.segment_count();
    let available = bufs.len().min(lens.len());
    if n > available {
        return Err(OffloadError::TooManySegments {
            needed: n,
            available,
        });
    }
    for (i, b) in bufs[..n].iter_mut().enumerate() {
        if b.as_mut().len() < offset.saturating_add(seg.segment_len(i)) {
            return Err(OffloadError::BufferTooSmall);
        }
    }
    for (i, (b, len)) in bufs[..n].iter_mut().zip(lens.iter_mut()).enumerate() {
        *len = seg.write_segment(i, &mut b.as_mut()[offset..])?;
    }
    Ok(n)
}
