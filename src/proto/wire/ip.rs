//! IPv4 and IPv6 headers: the one view of an IP packet, shared by the data plane (routing and
//! cryptokey checks on every packet) and the offloads (segmentation and coalescing).
//!
//! [`IpPacket::new_checked`] validates the version, the header length and the stated total
//! length once, so that afterwards no accessor can panic and [`IpPacket::total_len`] never
//! exceeds the buffer. Where the L4 header starts ([`IpPacket::layout`]) is a separate step:
//! only the offloads need it, and it fails on what they cannot segment or merge (fragments,
//! unknown IPv6 extension headers), which the data plane forwards as any other packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{array, checksum};

/// IANA protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 header without options (RFC 791 §3.1: IHL counts 32-bit words and is at least 5).
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// IPv6 fixed header (RFC 8200 §3).
pub const IPV6_HEADER_LEN: usize = 40;

/// IPv6 extension headers (RFC 8200 §4). Hop-by-hop, routing and destination options share the
/// layout "next header, length in 8-octet units not counting the first 8", so the walk can skip
/// them; a fragment header ends it.
const V6_HOP_BY_HOP: u8 = 0;
const V6_ROUTING: u8 = 43;
const V6_FRAGMENT: u8 = 44;
const V6_DEST_OPTS: u8 = 60;
/// Bound on the extension header walk, so hostile input costs a constant amount of work: this
/// many next-header fields are read, so at most one fewer extension headers are skipped.
const V6_MAX_EXT_HEADERS: usize = 8;

mod field {
    // IPv4, RFC 791 §3.1.
    pub const V4_TOTAL_LEN: usize = 2;
    pub const V4_IDENT: usize = 4;
    pub const V4_FLAGS_FRAGMENT: usize = 6;
    pub const V4_PROTOCOL: usize = 9;
    pub const V4_CHECKSUM: usize = 10;
    pub const V4_SRC: usize = 12;
    pub const V4_DST: usize = 16;
    // IPv6, RFC 8200 §3.
    pub const V6_PAYLOAD_LEN: usize = 4;
    pub const V6_NEXT_HEADER: usize = 6;
    pub const V6_SRC: usize = 8;
    pub const V6_DST: usize = 24;
}

/// Why bytes are not an IP packet this view accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    /// The buffer ends inside a header the packet claims to have.
    #[error("IP packet truncated inside its headers")]
    Truncated,
    /// The version nibble is neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    UnknownVersion(u8),
    /// IPv4 IHL below 5.
    #[error("IPv4 header length of {0} bytes is below the minimum of 20")]
    HeaderTooShort(usize),
    /// The stated total length is more than the buffer holds.
    #[error("IP total length {stated} exceeds the {available} bytes at hand")]
    LengthBeyondBuffer {
        /// The length the header states.
        stated: usize,
        /// The bytes in the buffer.
        available: usize,
    },
    /// The stated total length does not even cover the header.
    #[error("IP total length {stated} is shorter than the {header}-byte header")]
    LengthBelowHeader {
        /// The length the header states.
        stated: usize,
        /// The header's own length.
        header: usize,
    },
    /// An IPv4 fragment (MF set or a non-zero offset) or an IPv6 fragment header: the L4
    /// header is absent or incomplete.
    #[error("IP fragment: no complete L4 header")]
    Fragmented,
    /// An IPv6 extension header the walk does not know, or more than it follows.
    #[error("unsupported IPv6 extension header {0}, or too many of them")]
    UnsupportedExtensionHeader(u8),
}

/// Where a packet's L4 header starts and which protocol it is: what segmentation and
/// coalescing need beyond the fixed IP header. From [`IpPacket::layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpLayout {
    /// IPv6; otherwise IPv4.
    pub v6: bool,
    /// Offset of the L4 header: the IPv4 header length, or past the IPv6 extension headers.
    pub l4_offset: usize,
    /// The L4 protocol number, e.g. [`IPPROTO_TCP`].
    pub protocol: u8,
}

/// A zero-copy view of an IPv4 or IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPacket<T: AsRef<[u8]>> {
    buffer: T,
    /// The packet's length, never more than the buffer's: the stated total length for
    /// [`IpPacket::new_checked`], the buffer's length otherwise.
    len: usize,
    /// Read from the first byte once, not by every accessor.
    header_len: usize,
    v6: bool,
}

impl<T: AsRef<[u8]>> IpPacket<T> {
    /// Wraps a buffer without checking it; the packet is the whole buffer. Accessors panic if
    /// it is shorter than the header its first byte announces. For buffers the caller has just
    /// filled from a checked packet; use [`IpPacket::new_checked`] for anything received.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        let bytes = buffer.as_ref();
        let (v6, header_len) = match bytes.first() {
            Some(first) if first >> 4 == 6 => (true, IPV6_HEADER_LEN),
            Some(first) => (false, usize::from(first & 0x0f) * 4),
            None => (false, 0),
        };
        IpPacket {
            len: bytes.len(),
            buffer,
            header_len,
            v6,
        }
    }

    /// Wraps a buffer holding an IPv4 or IPv6 packet: the version is 4 or 6, the header
    /// (IPv4 options included) is within the buffer, and the stated total length covers the
    /// header and fits the buffer. Bytes after the stated length (padding) are not part of
    /// the packet.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, IpError> {
        let bytes = buffer.as_ref();
        let (v6, header) = check_header(bytes)?;
        let stated = if v6 {
            IPV6_HEADER_LEN + usize::from(read_u16(bytes, field::V6_PAYLOAD_LEN))
        } else {
            usize::from(read_u16(bytes, field::V4_TOTAL_LEN))
        };
        if stated > bytes.len() {
            return Err(IpError::LengthBeyondBuffer {
                stated,
                available: bytes.len(),
            });
        }
        if stated < header {
            return Err(IpError::LengthBelowHeader { stated, header });
        }
        Ok(IpPacket {
            buffer,
            len: stated,
            header_len: header,
            v6,
        })
    }

    /// Checks what [`IpPacket::new_checked`] checks except the stated total length: the packet
    /// is the whole buffer, whatever its length field says.
    ///
    /// For the TUN's GSO super-packets only. Their length is the buffer's (the kernel's own
    /// segmentation goes by the skb's length, and BIG TCP leaves an IPv4 total length of 0,
    /// see `iph_totlen()` in include/net/ip.h); the splitter writes every segment's length
    /// itself and never reads the original's.
    #[inline]
    pub fn new_checked_ignoring_length(buffer: T) -> Result<Self, IpError> {
        let (v6, header_len) = check_header(buffer.as_ref())?;
        Ok(IpPacket {
            len: buffer.as_ref().len(),
            buffer,
            header_len,
            v6,
        })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IPv6; otherwise IPv4.
    #[inline]
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Length of the IP header: IPv4 with options; IPv6 without extension headers (those are
    /// payload to IPv6, and [`IpPacket::layout`] walks them).
    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The packet's length, checked against the buffer: the stated total length (IPv6: 40 plus
    /// the payload length), or the buffer's length for a view that ignores the length field.
    #[inline]
    pub fn total_len(&self) -> usize {
        self.len
    }

    /// The packet: the buffer up to [`IpPacket::total_len`], without any padding after it.
    #[inline]
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.len]
    }

    /// The IP header ([`IpPacket::header_len`] bytes).
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len]
    }

    /// Source address.
    #[inline]
    pub fn src(&self) -> IpAddr {
        let b = self.buffer.as_ref();
        if self.is_v6() {
            IpAddr::V6(Ipv6Addr::from(*array::<16>(b, field::V6_SRC)))
        } else {
            IpAddr::V4(Ipv4Addr::from(*array::<4>(b, field::V4_SRC)))
        }
    }

    /// Destination address.
    #[inline]
    pub fn dst(&self) -> IpAddr {
        let b = self.buffer.as_ref();
        if self.is_v6() {
            IpAddr::V6(Ipv6Addr::from(*array::<16>(b, field::V6_DST)))
        } else {
            IpAddr::V4(Ipv4Addr::from(*array::<4>(b, field::V4_DST)))
        }
    }

    /// The IPv4 identification field; 0 for IPv6, which has none outside a fragment header.
    #[inline]
    pub fn ident(&self) -> u16 {
        if self.is_v6() {
            0
        } else {
            read_u16(self.buffer.as_ref(), field::V4_IDENT)
        }
    }

    /// Whether the IPv4 header checksum is valid; always true for IPv6, which has none.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        self.v6 || checksum::fold(checksum::sum(self.header())) == 0xffff
    }

    /// Where the L4 header starts and its protocol, after any IPv6 extension headers
    /// (hop-by-hop, routing, destination options; at most 7, within the packet). Fails on
    /// fragments, whose L4 header is absent or incomplete.
    #[inline]
    pub fn layout(&self) -> Result<IpLayout, IpError> {
        let b = self.packet();
        if !self.is_v6() {
            // RFC 791 §3.1: flags bit MF (0x20) and the 13-bit fragment offset.
            let flags = b[field::V4_FLAGS_FRAGMENT];
            if flags & 0x20 != 0 || flags & 0x1f != 0 || b[field::V4_FLAGS_FRAGMENT + 1] != 0 {
                return Err(IpError::Fragmented);
            }
            return Ok(IpLayout {
                v6: false,
                l4_offset: self.header_len(),
                protocol: b[field::V4_PROTOCOL],
            });
        }
        let mut next = b[field::V6_NEXT_HEADER];
        let mut offset = IPV6_HEADER_LEN;
        for _ in 0..V6_MAX_EXT_HEADERS {
            match next {
                V6_HOP_BY_HOP | V6_ROUTING | V6_DEST_OPTS => {
                    let ext = b.get(offset..offset + 2).ok_or(IpError::Truncated)?;
                    next = ext[0];
                    offset += (usize::from(ext[1]) + 1) * 8;
                    if offset > b.len() {
                        return Err(IpError::Truncated);
                    }
                }
                V6_FRAGMENT => return Err(IpError::Fragmented),
                protocol => {
                    return Ok(IpLayout {
                        v6: true,
                        l4_offset: offset,
                        protocol,
                    })
                }
            }
        }
        Err(IpError::UnsupportedExtensionHeader(next))
    }

    /// Unfolded sum of the TCP/UDP pseudo-header (RFC 9293 §3.1 and RFC 768 for IPv4,
    /// RFC 8200 §8.1 for IPv6) over this packet's addresses, for `l4_len` bytes of `protocol`.
    #[inline]
    pub fn pseudo_header_sum(&self, protocol: u8, l4_len: usize) -> u64 {
        let b = self.buffer.as_ref();
        if self.is_v6() {
            checksum::pseudo_header_v6(
                array(b, field::V6_SRC),
                array(b, field::V6_DST),
                protocol,
                l4_len as u32,
            )
        } else {
            // The field is 16 bits, as is IPv4's total length: an L4 length never exceeds it.
            checksum::pseudo_header_v4(
                *array(b, field::V4_SRC),
                *array(b, field::V4_DST),
                protocol,
                l4_len as u16,
            )
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IpPacket<T> {
    /// Sets the length field for a packet of `total` bytes (IPv6: the payload length, which
    /// counts extension headers, RFC 8200 §3), and makes it [`IpPacket::total_len`]. IPv4's
    /// header checksum is stale afterwards: see [`IpPacket::fill_checksum`].
    ///
    /// Panics if `total` is beyond the buffer or (IPv6) shorter than the fixed header.
    pub fn set_total_len(&mut self, total: usize) {
        assert!(
            total <= self.buffer.as_ref().len(),
            "IP length beyond the buffer"
        );
        let (at, value) = if self.is_v6() {
            (field::V6_PAYLOAD_LEN, total - IPV6_HEADER_LEN)
        } else {
            (field::V4_TOTAL_LEN, total)
        };
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&(value as u16).to_be_bytes());
        self.len = total;
    }

    /// Sets the IPv4 identification field; does nothing for IPv6, which has none.
    pub fn set_ident(&mut self, ident: u16) {
        if !self.is_v6() {
            let at = field::V4_IDENT;
            self.buffer.as_mut()[at..at + 2].copy_from_slice(&ident.to_be_bytes());
        }
    }

    /// Recomputes the IPv4 header checksum (RFC 791 §3.1); does nothing for IPv6, which has
    /// none.
    pub fn fill_checksum(&mut self) {
        if self.is_v6() {
            return;
        }
        let header_len = self.header_len();
        let header = &mut self.buffer.as_mut()[..header_len];
        header[field::V4_CHECKSUM..field::V4_CHECKSUM + 2].fill(0);
        let sum = checksum::checksum(header, 0);
        header[field::V4_CHECKSUM..field::V4_CHECKSUM + 2].copy_from_slice(&sum.to_be_bytes());
    }
}

/// Checks the version and that the header is within `bytes`; returns whether it is IPv6, and
/// the header length.
#[inline]
fn check_header(bytes: &[u8]) -> Result<(bool, usize), IpError> {
    let first = *bytes.first().ok_or(IpError::Truncated)?;
    let (v6, header) = match first >> 4 {
        4 => {
            if bytes.len() < IPV4_MIN_HEADER_LEN {
                return Err(IpError::Truncated);
            }
            let header = usize::from(first & 0x0f) * 4;
            if header < IPV4_MIN_HEADER_LEN {
                return Err(IpError::HeaderTooShort(header));
            }
            (false, header)
        }
        6 => (true, IPV6_HEADER_LEN),
        version => return Err(IpError::UnknownVersion(version)),
    };
    if bytes.len() < header {
        return Err(IpError::Truncated);
    }
    Ok((v6, header))
}

/// A big-endian `u16` at `start`.
fn read_u16(bytes: &[u8], start: usize) -> u16 {
    u16::from_be_bytes(*array(bytes, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4, IHL 5, total length 28, ident 0x1234, DF, TTL 64, UDP, header checksum 0x149b,
    /// 10.0.0.1 -> 10.0.0.2; then UDP 12345 -> 443, length 8, no checksum.
    const V4_UDP: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, //
        0x12, 0x34, 0x40, 0x00, //
        0x40, 0x11, 0x14, 0x9b, //
        10, 0, 0, 1, //
        10, 0, 0, 2, //
        0x30, 0x39, 0x01, 0xbb, 0x00, 0x08, 0x00, 0x00,
    ];

    /// IPv6, payload length 8, next header UDP, hop limit 64, fd00::1 -> fd00::2; then UDP.
    const V6_UDP: [u8; 48] = [
        0x60, 0x00, 0x00, 0x00, //
        0x00, 0x08, 17, 64, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, //
        0x30, 0x39, 0x01, 0xbb, 0x00, 0x08, 0x00, 0x00,
    ];

    fn v6_with(next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = V6_UDP[..40].to_vec();
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = next_header;
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn reads_an_ipv4_packet() {
        let ip = IpPacket::new_checked(&V4_UDP[..]).unwrap();
        assert!(!ip.is_v6());
        assert_eq!(ip.src(), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ip.dst(), "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.total_len(), 28);
        assert_eq!(ip.ident(), 0x1234);
        assert!(ip.verify_checksum());
        assert_eq!(
            ip.layout(),
            Ok(IpLayout {
                v6: false,
                l4_offset: 20,
                protocol: IPPROTO_UDP
            })
        );
    }

    #[test]
    fn reads_an_ipv6_packet() {
        let ip = IpPacket::new_checked(&V6_UDP[..]).unwrap();
        assert!(ip.is_v6());
        assert_eq!(ip.src(), "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(ip.dst(), "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(ip.header_len(), 40);
        assert_eq!(ip.total_len(), 48);
        assert_eq!(ip.ident(), 0);
        assert!(ip.verify_checksum());
        assert_eq!(
            ip.layout(),
            Ok(IpLayout {
                v6: true,
                l4_offset: 40,
                protocol: IPPROTO_UDP
            })
        );
    }

    #[test]
    fn padding_after_the_stated_length_is_not_part_of_the_packet() {
        let mut padded = V4_UDP.to_vec();
        padded.extend_from_slice(&[0xee; 4]);
        let ip = IpPacket::new_checked(&padded[..]).unwrap();
        assert_eq!(ip.total_len(), 28);
        assert_eq!(ip.packet(), &V4_UDP[..]);
        let mut padded = V6_UDP.to_vec();
        padded.push(0xee);
        assert_eq!(IpPacket::new_checked(&padded[..]).unwrap().total_len(), 48);
    }

    #[test]
    fn rejects_truncated_headers() {
        assert_eq!(IpPacket::new_checked(&[][..]), Err(IpError::Truncated));
        assert_eq!(
            IpPacket::new_checked(&V4_UDP[..19]),
            Err(IpError::Truncated)
        );
        assert_eq!(
            IpPacket::new_checked(&V6_UDP[..39]),
            Err(IpError::Truncated)
        );
        // IHL 15 (60 bytes) in a 28-byte buffer.
        let mut long_header = V4_UDP;
        long_header[0] = 0x4f;
        assert_eq!(
            IpPacket::new_checked(&long_header[..]),
            Err(IpError::Truncated)
        );
    }

    #[test]
    fn rejects_unknown_versions() {
        assert_eq!(
            IpPacket::new_checked(&[0x75; 60][..]),
            Err(IpError::UnknownVersion(7))
        );
        assert_eq!(
            IpPacket::new_checked(&[0x00][..]),
            Err(IpError::UnknownVersion(0))
        );
    }

    #[test]
    fn rejects_an_ihl_below_five() {
        let mut p = V4_UDP;
        p[0] = 0x44;
        assert_eq!(
            IpPacket::new_checked(&p[..]),
            Err(IpError::HeaderTooShort(16))
        );
        assert_eq!(
            IpPacket::new_checked_ignoring_length(&p[..]),
            Err(IpError::HeaderTooShort(16))
        );
    }

    #[test]
    fn rejects_a_stated_length_beyond_the_buffer() {
        let mut p = V4_UDP;
        p[2..4].copy_from_slice(&29u16.to_be_bytes());
        assert_eq!(
            IpPacket::new_checked(&p[..]),
            Err(IpError::LengthBeyondBuffer {
                stated: 29,
                available: 28
            })
        );
        assert_eq!(
            IpPacket::new_checked(&V6_UDP[..47]),
            Err(IpError::LengthBeyondBuffer {
                stated: 48,
                available: 47
            })
        );
    }

    #[test]
    fn rejects_a_stated_length_shorter_than_the_header() {
        let mut p = V4_UDP;
        p[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            IpPacket::new_checked(&p[..]),
            Err(IpError::LengthBelowHeader {
                stated: 19,
                header: 20
            })
        );
        // With options (IHL 6, 24 bytes) the bound is the header with options.
        p[0] = 0x46;
        p[2..4].copy_from_slice(&22u16.to_be_bytes());
        assert_eq!(
            IpPacket::new_checked(&p[..]),
            Err(IpError::LengthBelowHeader {
                stated: 22,
                header: 24
            })
        );
        // A header-only packet is fine.
        p[2..4].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(IpPacket::new_checked(&p[..]).unwrap().total_len(), 24);
    }

    #[test]
    fn ipv4_options_move_the_l4_header() {
        let mut p = V4_UDP;
        p[0] = 0x46;
        let ip = IpPacket::new_checked(&p[..]).unwrap();
        assert_eq!(ip.header_len(), 24);
        assert_eq!(ip.layout().unwrap().l4_offset, 24);
    }

    #[test]
    fn ipv4_fragments_have_no_layout_but_still_route() {
        for (byte6, byte7) in [(0x20, 0x00), (0x00, 0x01), (0x01, 0x00), (0x3f, 0xff)] {
            let mut p = V4_UDP;
            p[6] = byte6;
            p[7] = byte7;
            let ip = IpPacket::new_checked(&p[..]).unwrap();
            assert_eq!(ip.dst(), "10.0.0.2".parse::<IpAddr>().unwrap());
            assert_eq!(
                ip.layout(),
                Err(IpError::Fragmented),
                "{byte6:#x} {byte7:#x}"
            );
        }
        // DF alone is not a fragment.
        assert!(IpPacket::new_checked(&V4_UDP[..]).unwrap().layout().is_ok());
    }

    #[test]
    fn walks_ipv6_extension_headers() {
        let p = v6_with(
            V6_HOP_BY_HOP,
            &[
                V6_DEST_OPTS,
                0,
                1,
                4,
                0,
                0,
                0,
                0, // hop-by-hop, 8 bytes: PadN
                V6_ROUTING,
                1,
                1,
                12,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0, // dest opts, 16 bytes
                IPPROTO_TCP,
                0,
                0,
                0,
                0,
                0,
                0,
                0, // routing, 8 bytes
                0x30,
                0x39,
                0x01,
                0xbb, // the TCP header's ports
            ],
        );
        let ip = IpPacket::new_checked(&p[..]).unwrap();
        assert_eq!(ip.header_len(), 40);
        assert_eq!(
            ip.layout(),
            Ok(IpLayout {
                v6: true,
                l4_offset: 72,
                protocol: IPPROTO_TCP
            })
        );
    }

    #[test]
    fn ipv6_fragment_header_is_a_fragment() {
        let p = v6_with(V6_FRAGMENT, &[IPPROTO_UDP, 0, 0, 1, 0, 0, 0, 7]);
        let ip = IpPacket::new_checked(&p[..]).unwrap();
        assert_eq!(ip.layout(), Err(IpError::Fragmented));
        // Also behind another extension header.
        let p = v6_with(
            V6_DEST_OPTS,
            &[
                V6_FRAGMENT,
                0,
                1,
                4,
                0,
                0,
                0,
                0,
                IPPROTO_UDP,
                0,
                0,
                1,
                0,
                0,
                0,
                7,
            ],
        );
        let ip = IpPacket::new_checked(&p[..]).unwrap();
        assert_eq!(ip.layout(), Err(IpError::Fragmented));
    }

    #[test]
    fn ipv6_extension_headers_must_end_within_the_packet() {
        // Claims 16 bytes, has 8.
        let p = v6_with(V6_HOP_BY_HOP, &[IPPROTO_UDP, 1, 1, 4, 0, 0, 0, 0]);
        let ip = IpPacket::new_checked(&p[..]).unwrap();
        assert_eq!(ip.layout(), Err(IpError::Truncated));
        // Its next-header byte is missing.
        let p = v6_with(V6_HOP_BY_HOP, &[]);
        assert_eq!(
            IpPacket::new_checked(&p[..]).unwrap().layout(),
            Err(IpError::Truncated)
        );
        // Within the buffer but past the stated length (in the padding): truncated as well.
        let mut p = v6_with(V6_HOP_BY_HOP, &[IPPROTO_UDP, 1, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&[0; 8]);
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        let ip = IpPacket::new_checked(&p[..]).unwrap();
        assert_eq!(ip.total_len(), 48);
        assert_eq!(ip.layout(), Err(IpError::Truncated));
        // The view that takes the whole buffer does find it.
        let ip = IpPacket::new_checked_ignoring_length(&p[..]).unwrap();
        assert_eq!(ip.layout().unwrap().l4_offset, 56);
    }

    #[test]
    fn the_extension_header_walk_is_bounded() {
        let mut chain = Vec::new();
        for _ in 0..V6_MAX_EXT_HEADERS {
            chain.extend_from_slice(&[V6_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]);
        }
        let p = v6_with(V6_DEST_OPTS, &chain);
        assert_eq!(
            IpPacket::new_checked(&p[..]).unwrap().layout(),
            Err(IpError::UnsupportedExtensionHeader(V6_DEST_OPTS))
        );
        // One fewer and the last one names the L4 protocol.
        let n = chain.len();
        chain[n - 16] = IPPROTO_UDP;
        let p = v6_with(V6_DEST_OPTS, &chain[..n - 8]);
        assert_eq!(
            IpPacket::new_checked(&p[..]).unwrap().layout(),
            Ok(IpLayout {
                v6: true,
                l4_offset: 40 + 8 * (V6_MAX_EXT_HEADERS - 1),
                protocol: IPPROTO_UDP
            })
        );
    }

    #[test]
    fn ignoring_the_length_takes_the_whole_buffer() {
        // A super-packet whose IPv4 total length is 0 (BIG TCP), or anything else.
        for stated in [0u16, 28, 128, 200] {
            let mut p = V4_UDP.to_vec();
            p.extend_from_slice(&[0; 100]);
            p[2..4].copy_from_slice(&stated.to_be_bytes());
            let ip = IpPacket::new_checked_ignoring_length(&p[..]).unwrap();
            assert_eq!(ip.total_len(), 128);
            assert_eq!(ip.layout().unwrap().l4_offset, 20);
        }
        let mut p = V4_UDP;
        p[2..4].fill(0);
        assert_eq!(
            IpPacket::new_checked(&p[..]),
            Err(IpError::LengthBelowHeader {
                stated: 0,
                header: 20
            })
        );
        // The header itself is still checked.
        assert_eq!(
            IpPacket::new_checked_ignoring_length(&V6_UDP[..39]),
            Err(IpError::Truncated)
        );
        assert_eq!(
            IpPacket::new_checked_ignoring_length(&[0x55][..]),
            Err(IpError::UnknownVersion(5))
        );
    }

    #[test]
    fn setting_the_length_and_checksum_writes_the_fields() {
        let mut p = V4_UDP;
        p[2..4].fill(0);
        p[10..12].fill(0xaa);
        let mut ip = IpPacket::new_unchecked(&mut p[..]);
        ip.set_total_len(28);
        ip.fill_checksum();
        assert_eq!(ip.total_len(), 28);
        assert_eq!(p, V4_UDP);

        let mut ip = IpPacket::new_unchecked(&mut p[..]);
        ip.set_ident(0x1235);
        ip.fill_checksum();
        assert_eq!(&p[4..6], &[0x12, 0x35]);
        assert_eq!(&p[10..12], &[0x14, 0x9a]);

        let mut p = V6_UDP;
        p[4..6].fill(0);
        let mut ip = IpPacket::new_unchecked(&mut p[..]);
        ip.set_total_len(48);
        ip.set_ident(7);
        ip.fill_checksum();
        assert_eq!(p, V6_UDP);
    }

    #[test]
    #[should_panic(expected = "beyond the buffer")]
    fn setting_a_length_beyond_the_buffer_panics() {
        let mut p = V4_UDP;
        IpPacket::new_unchecked(&mut p[..]).set_total_len(29);
    }

    #[test]
    fn a_bad_ipv4_header_checksum_is_detected() {
        let mut p = V4_UDP;
        p[8] = 63; // TTL changed, checksum not updated
        assert!(!IpPacket::new_checked(&p[..]).unwrap().verify_checksum());
    }

    #[test]
    fn pseudo_header_sums_the_addresses() {
        let ip = IpPacket::new_checked(&V4_UDP[..]).unwrap();
        assert_eq!(
            ip.pseudo_header_sum(IPPROTO_UDP, 8),
            checksum::pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 17, 8)
        );
        let ip = IpPacket::new_checked(&V6_UDP[..]).unwrap();
        let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
        src[0] = 0xfd;
        src[15] = 1;
        dst[0] = 0xfd;
        dst[15] = 2;
        assert_eq!(
            ip.pseudo_header_sum(IPPROTO_UDP, 8),
            checksum::pseudo_header_v6(&src, &dst, 17, 8)
        );
    }

    #[test]
    fn no_accessor_panics_on_a_checked_view() {
        let ext = v6_with(V6_HOP_BY_HOP, &[IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        for template in [&V4_UDP[..], &V6_UDP[..], &ext[..]] {
            for len in 0..=template.len() {
                for at in 0..len.min(8) {
                    for value in [
                        0x00, 0x01, 0x05, 0x0f, 0x20, 0x2c, 0x3c, 0x46, 0x4f, 0x65, 0xff,
                    ] {
                        let mut p = template[..len].to_vec();
                        p[at] = value;
                        let views = [
                            IpPacket::new_checked(&p[..]),
                            IpPacket::new_checked_ignoring_length(&p[..]),
                        ];
                        for ip in views.into_iter().flatten() {
                            assert!(ip.total_len() <= p.len());
                            assert!(ip.header_len() <= ip.total_len());
                            assert_eq!(ip.src().is_ipv6(), ip.is_v6());
                            assert_eq!(ip.dst().is_ipv6(), ip.is_v6());
                            let _ = (ip.ident(), ip.verify_checksum(), ip.packet(), ip.header());
                            let _ = ip.pseudo_header_sum(IPPROTO_UDP, 8);
                            if let Ok(layout) = ip.layout() {
                                assert!(layout.l4_offset <= ip.total_len());
                                assert_eq!(layout.v6, ip.is_v6());
                            }
                        }
                    }
                }
            }
        }
    }
}
