//! Split/coalesce tests: segments are checked with `etherparse` (an independent parser and
//! checksum implementation), and `coalesce(split(x))` is compared with `x`.
//!
//! What "`coalesce(split(x)) == x`" means here: for a kernel-style super-packet `x` (IPv4 total
//! length / IPv6 payload length / UDP length covering the whole packet, valid IPv4 header
//! checksum, L4 checksum field holding the folded pseudo-header sum over the full L4 length,
//! exact `hdr_len`, TCP flags ACK or ACK|PSH, no GSO_ECN bit) that splits into two or more
//! segments, the coalesced output is byte-for-byte equal to `x` and its virtio header is equal
//! field by field. Exceptions by design: `x` that fits one segment comes back as that single
//! packet with `VirtioNetHdr::NONE` and a completed checksum; and the kernel's `hdr_len`, which
//! we never trust, is normalised to the real header length.

use super::*;
use crate::proto::wire::checksum;
use etherparse::{
    IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, NetSlice, SlicedPacket, TcpHeader,
    TcpOptionElement, TransportSlice, UdpHeader,
};
use proptest::prelude::*;

const SRC4: [u8; 4] = [10, 1, 2, 3];
const DST4: [u8; 4] = [10, 9, 8, 7];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const ID0: u16 = 0xfffe; // wraps during the split
const SEQ0: u32 = 0xffff_f000; // wraps during the split
const MTU: usize = 1500;

/// A super-packet to build ([`super_packet`]); the egress tests build theirs here too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) v6: bool,
    pub(crate) tcp: bool,
    pub(crate) payload: usize,
    pub(crate) gso: u16,
    /// TCP flags in addition to ACK.
    pub(crate) flags: u8,
    /// TCP options: two NOPs and a timestamp (12 bytes).
    pub(crate) options: bool,
}

fn payload_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn ip_header(v6: bool, proto: IpNumber, l4_len: usize) -> Vec<u8> {
    if v6 {
        Ipv6Header {
            traffic_class: 0x28,
            flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
            payload_length: l4_len as u16,
            next_header: proto,
            hop_limit: 61,
            source: SRC6,
            destination: DST6,
        }
        .to_bytes()
        .to_vec()
    } else {
        let mut h = Ipv4Header::new(l4_len as u16, 63, proto, SRC4, DST4).unwrap();
        h.identification = ID0;
        h.dont_fragment = true;
        h.header_checksum = h.calc_header_checksum();
        h.to_bytes().to_vec()
    }
}

/// Builds a super-packet the way the kernel hands it to us: lengths over the whole packet and
/// the L4 checksum field holding the folded pseudo-header sum (`CHECKSUM_PARTIAL`).
pub(crate) fn super_packet(s: Spec) -> (VirtioNetHdr, Vec<u8>) {
    let payload = payload_bytes(s.payload);
    let (l4, proto, csum_offset) = if s.tcp {
        let mut t = TcpHeader::new(40000, 443, SEQ0, 501);
        t.ack = true;
        t.acknowledgment_number = 0x0102_0304;
        t.psh = s.flags & 0x08 != 0;
        t.fin = s.flags & 0x01 != 0;
        t.cwr = s.flags & 0x80 != 0;
        if s.options {
            t.set_options(&[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(0x1111_2222, 0x3333_4444),
            ])
            .unwrap();
        }
        (t.to_bytes().to_vec(), IpNumber::TCP, 16u16)
    } else {
        let u = UdpHeader {
            source_port: 5353,
            destination_port: 4433,
            length: (8 + s.payload) as u16,
            checksum: 0,
        };
        (u.to_bytes().to_vec(), IpNumber::UDP, 6u16)
    };
    let l4_len = l4.len() + s.payload;
    let mut p = ip_header(s.v6, proto, l4_len);
    let l4_off = p.len();
    p.extend_from_slice(&l4);
    p.extend_from_slice(&payload);
    let pseudo = if s.v6 {
        checksum::pseudo_header_v6(&SRC6, &DST6, proto.0, l4_len as u32)
    } else {
        checksum::pseudo_header_v4(SRC4, DST4, proto.0, l4_len as u16)
    };
    let at = l4_off + usize::from(csum_offset);
    p[at..at + 2].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    let gso_type = match (s.tcp, s.v6) {
        (false, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
        (true, false) => VIRTIO_NET_HDR_GSO_TCPV4,
        (true, true) => VIRTIO_NET_HDR_GSO_TCPV6,
    };
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: (l4_off + l4.len()) as u16,
        gso_size: s.gso,
        csum_start: l4_off as u16,
        csum_offset,
    };
    (hdr, p)
}

/// Splits with `split_into` into 2048-byte slots at offset 16, like the data plane.
fn split_vec(hdr: &VirtioNetHdr, p: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, OffloadError> {
    let n = p.len() + 1;
    let mut slots = vec![[0u8; 2048]; n.min(4096)];
    let mut lens = vec![0usize; slots.len()];
    let k = split_into(hdr, p, mtu, &mut slots, 16, &mut lens)?;
    Ok((0..k)
        .map(|i| slots[i][16..16 + lens[i]].to_vec())
        .collect())
}

/// Checks every segment with etherparse against the original super-packet.
fn verify_segments(s: Spec, segs: &[Vec<u8>], mtu: usize) {
    let payload = payload_bytes(s.payload);
    let gso = usize::from(s.gso);
    assert_eq!(segs.len(), s.payload.div_ceil(gso));
    let last = segs.len() - 1;
    for (i, seg) in segs.iter().enumerate() {
        assert!(seg.len() <= mtu, "segment {i} is {} > mtu {mtu}", seg.len());
        let chunk = &payload[i * gso..((i + 1) * gso).min(s.payload)];
        let sp = SlicedPacket::from_ip(seg).expect("etherparse parses the segment");
        let (v4, v6) = match sp.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => {
                let h = ip.header();
                assert_eq!(usize::from(h.total_len()), seg.len());
                assert_eq!(h.identification(), ID0.wrapping_add(i as u16));
                assert!(h.dont_fragment());
                assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                (Some(h.to_header()), None)
            }
            NetSlice::Ipv6(ip) => {
                let h = ip.header();
                assert_eq!(usize::from(h.payload_length()), seg.len() - 40);
                assert_eq!(h.traffic_class(), 0x28);
                (None, Some(h.to_header()))
            }
        };
        assert_eq!(v6.is_some(), s.v6);
        match sp.transport.expect("transport") {
            TransportSlice::Tcp(t) => {
                assert!(s.tcp);
                assert_eq!(t.payload(), chunk);
                assert_eq!(t.sequence_number(), SEQ0.wrapping_add((i * gso) as u32));
                assert_eq!(t.acknowledgment_number(), 0x0102_0304);
                assert!(t.ack());
                assert_eq!(t.psh(), s.flags & 0x08 != 0 && i == last, "psh on {i}");
                assert_eq!(t.fin(), s.flags & 0x01 != 0 && i == last, "fin on {i}");
                assert_eq!(t.cwr(), s.flags & 0x80 != 0 && i == 0, "cwr on {i}");
                assert_eq!(t.options().len(), if s.options { 12 } else { 0 });
                let h = t.to_header();
                let want = match (&v4, &v6) {
                    (Some(ip), _) => h.calc_checksum_ipv4(ip, chunk).unwrap(),
                    (_, Some(ip)) => h.calc_checksum_ipv6(ip, chunk).unwrap(),
                    _ => unreachable!(),
                };
                assert_eq!(t.checksum(), want, "tcp checksum of segment {i}");
            }
            TransportSlice::Udp(u) => {
                assert!(!s.tcp);
                assert_eq!(u.payload(), chunk);
                assert_eq!(usize::from(u.length()), 8 + chunk.len());
                let h = u.to_header();
                let want = match (&v4, &v6) {
                    (Some(ip), _) => h.calc_checksum_ipv4(ip, chunk).unwrap(),
                    (_, Some(ip)) => h.calc_checksum_ipv6(ip, chunk).unwrap(),
                    _ => unreachable!(),
                };
                assert_eq!(u.checksum(), want, "udp checksum of segment {i}");
            }
            other => panic!("unexpected transport {other:?}"),
        }
    }
}

/// Coalesces `segs`; returns every emitted (header, packet, segment count).
fn coalesce_all(segs: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>, usize)> {
    let mut buf = vec![0u8; VNET_HDR_LEN + 65535];
    let mut c = Coalescer::new(&mut buf, GsoTypes::ALL);
    let mut out = Vec::new();
    for s in segs {
        match c.try_push(s) {
            Push::Started | Push::Merged => {}
            Push::Rejected => {
                let f = c.finish().unwrap();
                out.push((f.hdr, f.packet().to_vec(), f.segments));
                assert_eq!(c.try_push(s), Push::Started);
            }
            Push::TooLarge => panic!("too large"),
        }
    }
    if let Some(f) = c.finish() {
        assert_eq!(&f.frame[..VNET_HDR_LEN], &f.hdr.to_bytes());
        out.push((f.hdr, f.packet().to_vec(), f.segments));
    }
    assert!(c.finish().is_none());
    out
}

fn roundtrip(s: Spec) {
    let (hdr, x) = super_packet(s);
    let segs = split_vec(&hdr, &x, MTU).unwrap();
    verify_segments(s, &segs, MTU);
    let out = coalesce_all(&segs);
    if s.flags & !0x08 != 0 {
        // FIN/CWR segments are never merged.
        assert!(out.len() > 1 || segs.len() == 1);
        return;
    }
    assert_eq!(out.len(), 1, "one super-packet back");
    let (h, p, n) = &out[0];
    assert_eq!(*n, segs.len());
    if segs.len() == 1 {
        assert_eq!(*h, VirtioNetHdr::NONE);
        assert_eq!(p, &segs[0]);
    } else {
        assert_eq!(*h, hdr);
        assert_eq!(p, &x);
    }
}

const BASE: Spec = Spec {
    v6: false,
    tcp: true,
    payload: 10_000,
    gso: 1400,
    flags: 0,
    options: false,
};

#[test]
fn tcp4_split_and_back() {
    roundtrip(BASE);
    roundtrip(Spec {
        flags: 0x08,
        ..BASE
    });
    roundtrip(Spec {
        options: true,
        gso: 1388,
        ..BASE
    });
    // Exactly divisible, and the 64 KiB maximum.
    roundtrip(Spec {
        payload: 1400 * 7,
        ..BASE
    });
    roundtrip(Spec {
        payload: 65535 - 20 - 32,
        options: true,
        gso: 1448,
        ..BASE
    });
}

#[test]
fn tcp6_split_and_back() {
    let s = Spec { v6: true, ..BASE };
    roundtrip(s);
    roundtrip(Spec {
        options: true,
        flags: 0x08,
        gso: 1428,
        ..s
    });
}

#[test]
fn udp_split_and_back() {
    let s = Spec {
        tcp: false,
        payload: 9000,
        gso: 1200,
        ..BASE
    };
    roundtrip(s);
    roundtrip(Spec { v6: true, ..s });
    roundtrip(Spec {
        payload: 1200 * 3,
        ..s
    });
}

#[test]
fn tcp_fin_psh_cwr_placement() {
    // FIN|PSH|CWR on the super-packet: FIN/PSH only on the last segment, CWR only on the first.
    let s = Spec {
        flags: 0x01 | 0x08 | 0x80,
        ..BASE
    };
    let mut hdr = super_packet(s).0;
    hdr.gso_type |= VIRTIO_NET_HDR_GSO_ECN;
    let x = super_packet(s).1;
    let segs = split_vec(&hdr, &x, MTU).unwrap();
    verify_segments(s, &segs, MTU);
    // First (CWR) and last (FIN) are not mergeable; the middle ones are.
    let out = coalesce_all(&segs);
    assert_eq!(out.len(), 3);
    assert_eq!(out[1].2, segs.len() - 2);
}

#[test]
fn single_segment_gets_complete_checksum() {
    for s in [
        Spec {
            payload: 1000,
            ..BASE
        },
        Spec {
            payload: 1000,
            tcp: false,
            v6: true,
            ..BASE
        },
    ] {
        roundtrip(s);
        let (hdr, x) = super_packet(s);
        let segs = split_vec(&hdr, &x, MTU).unwrap();
        assert_eq!(segs.len(), 1);
        // The same packet as GSO_NONE + NEEDS_CSUM, completed in place, is identical.
        let none = VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_NONE,
            gso_size: 0,
            ..hdr
        };
        let mut y = x.clone();
        complete_checksum(&none, &mut y).unwrap();
        assert_eq!(y, segs[0]);
        assert_eq!(split_vec(&none, &x, MTU).unwrap(), vec![y]);
    }
}

#[test]
fn gso_none_without_csum_is_copied() {
    let (_, x) = super_packet(Spec {
        payload: 100,
        ..BASE
    });
    assert_eq!(
        split_vec(&VirtioNetHdr::NONE, &x, MTU).unwrap(),
        vec![x.clone()]
    );
    let mut y = x.clone();
    complete_checksum(&VirtioNetHdr::NONE, &mut y).unwrap();
    assert_eq!(y, x);
}

#[test]
fn untrusted_hdr_len_is_ignored() {
    // The forward path reports the whole linear part as hdr_len.
    let (mut hdr, x) = super_packet(BASE);
    hdr.hdr_len = 1500;
    let segs = split_vec(&hdr, &x, MTU).unwrap();
    verify_segments(BASE, &segs, MTU);
}

#[test]
fn mtu_is_respected() {
    let (hdr, x) = super_packet(BASE);
    // 20 + 20 + 1400 = 1440.
    assert!(split_vec(&hdr, &x, 1440).is_ok());
    assert_eq!(
        split_vec(&hdr, &x, 1439),
        Err(OffloadError::ExceedsMtu {
            needed: 1440,
            mtu: 1439
        })
    );
    assert!(matches!(
        split_vec(&VirtioNetHdr::NONE, &x, 1500),
        Err(OffloadError::ExceedsMtu { .. })
    ));
}

#[test]
fn rejects_inconsistent_input() {
    let (hdr, x) = super_packet(BASE);
    let (hdr6, x6) = super_packet(Spec { v6: true, ..BASE });
    let (hdru, xu) = super_packet(Spec { tcp: false, ..BASE });
    let e = |h: VirtioNetHdr, p: &[u8]| Segmenter::new(&h, p, MTU).map(|_| ()).unwrap_err();
    use OffloadError::*;
    assert_eq!(
        e(
            VirtioNetHdr {
                hdr_len: x.len() as u16 + 1,
                ..hdr
            },
            &x
        ),
        HdrLenBeyondPacket
    );
    assert_eq!(
        e(
            VirtioNetHdr {
                csum_start: 21,
                ..hdr
            },
            &x
        ),
        BadChecksumOffset
    );
    assert_eq!(
        e(
            VirtioNetHdr {
                csum_offset: 6,
                ..hdr
            },
            &x
        ),
        BadChecksumOffset
    );
    assert_eq!(
        e(VirtioNetHdr { gso_type: 2, ..hdr }, &x),
        UnknownGsoType(2)
    );
    assert_eq!(
        e(
            VirtioNetHdr {
                gso_type: 0x7f,
                ..hdr
            },
            &x
        ),
        UnknownGsoType(0x7f)
    );
    assert_eq!(
        e(
            VirtioNetHdr {
                gso_type: VIRTIO_NET_HDR_GSO_UDP,
                ..hdr
            },
            &x
        ),
        UnsupportedGsoType(3)
    );
    assert_eq!(e(hdr6, &x), IpVersionMismatch);
    assert_eq!(e(hdr, &x6), IpVersionMismatch);
    assert_eq!(e(hdru, &x), ProtocolMismatch);
    assert_eq!(e(hdr, &xu), ProtocolMismatch);
    assert_eq!(e(VirtioNetHdr { gso_size: 0, ..hdr }, &x), ZeroGsoSize);
    assert_eq!(e(hdr, &x[..40]), EmptyPayload);
    // hdr_len is only bounds-checked; with it out of the way the packet's own bounds apply.
    let h0 = VirtioNetHdr { hdr_len: 0, ..hdr };
    let h60 = VirtioNetHdr { hdr_len: 0, ..hdr6 };
    assert_eq!(e(hdr, &x[..30]), HdrLenBeyondPacket);
    assert_eq!(e(h0, &x[..30]), Truncated);
    assert_eq!(e(h0, &[]), Truncated);
    assert_eq!(e(h0, &x6[..30]), Truncated);
    assert_eq!(e(h60, &x6[..39]), Truncated);
    assert_eq!(e(h60, &x6[..50]), Truncated);
    let mut bad = x.clone();
    bad[0] = 0x44;
    assert_eq!(e(hdr, &bad), BadIpHeader);
    bad[0] = 0x75;
    assert_eq!(e(hdr, &bad), IpVersionMismatch);
    let mut frag = x.clone();
    frag[6] |= 0x20;
    assert_eq!(e(hdr, &frag), Fragmented);
    let mut doff = x.clone();
    doff[20 + 12] = 0x40;
    assert_eq!(e(hdr, &doff), BadTcpHeaderLen);
    doff[20 + 12] = 0xf0;
    assert_eq!(e(h0, &doff[..70]), Truncated);
    // GSO_NONE with a checksum field past the end.
    let none = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 90,
        csum_offset: 16,
        ..VirtioNetHdr::NONE
    };
    assert_eq!(e(none, &x[..107]), BadChecksumOffset);
    assert!(Segmenter::new(&none, &x[..108], MTU).is_ok());
    assert_eq!(
        complete_checksum(&hdr, &mut x.clone()),
        Err(UnsupportedGsoType(1))
    );
}

#[test]
fn output_capacity_errors_write_nothing() {
    let (hdr, x) = super_packet(BASE); // 8 segments
    let mut slots = vec![[0xaau8; 2048]; 7];
    let mut lens = [0usize; 8];
    assert_eq!(
        split_into(&hdr, &x, MTU, &mut slots, 16, &mut lens),
        Err(OffloadError::TooManySegments {
            needed: 8,
            available: 7
        })
    );
    let mut small = vec![[0xaau8; 1455]; 8];
    assert_eq!(
        split_into(&hdr, &x, MTU, &mut small, 16, &mut lens),
        Err(OffloadError::BufferTooSmall)
    );
    assert!(small.iter().all(|s| s.iter().all(|&b| b == 0xaa)));
    let seg = Segmenter::new(&hdr, &x, MTU).unwrap();
    assert_eq!(seg.segment_count(), 8);
    assert_eq!(seg.segment_len(7), 40 + 10_000 - 7 * 1400);
    assert_eq!(seg.segment_len(8), 0);
    assert_eq!(
        seg.write_segment(8, &mut [0; 2048]),
        Err(OffloadError::SegmentIndex)
    );
    assert_eq!(
        seg.write_segment(0, &mut [0; 1439]),
        Err(OffloadError::BufferTooSmall)
    );
}

/// Three TCPv4 segments of one flow, split from BASE.
fn tcp_segments() -> Vec<Vec<u8>> {
    let (hdr, x) = super_packet(Spec {
        payload: 3000,
        gso: 1000,
        ..BASE
    });
    split_vec(&hdr, &x, MTU).unwrap()
}

fn refresh_tcp4(p: &mut [u8]) {
    p[10] = 0;
    p[11] = 0;
    let c = checksum::checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[36] = 0;
    p[37] = 0;
    let ps = checksum::pseudo_header_v4(SRC4, DST4, 6, (p.len() - 20) as u16);
    let c = checksum::checksum(&p[20..], ps);
    p[36..38].copy_from_slice(&c.to_be_bytes());
}

/// Pushes `a` then `b` into a fresh coalescer and returns the second outcome.
fn push_pair(a: &[u8], b: &[u8]) -> Push {
    let mut buf = vec![0u8; VNET_HDR_LEN + 65535];
    let mut c = Coalescer::new(&mut buf, GsoTypes::ALL);
    assert_eq!(c.try_push(a), Push::Started);
    c.try_push(b)
}

#[test]
fn coalesce_rejections() {
    let segs = tcp_segments();
    assert_eq!(push_pair(&segs[0], &segs[1]), Push::Merged);
    // Out of order.
    assert_eq!(push_pair(&segs[0], &segs[2]), Push::Rejected);
    assert_eq!(push_pair(&segs[1], &segs[0]), Push::Rejected);
    let mutate = |i: usize, f: &dyn Fn(&mut Vec<u8>), refresh: bool| {
        let mut b = segs[1].clone();
        f(&mut b);
        if refresh {
            refresh_tcp4(&mut b);
        }
        let _ = i;
        push_pair(&segs[0], &b)
    };
    // Different port, ack, window, TTL, TOS, IP ID, options-free flags.
    assert_eq!(mutate(0, &|b| b[21] ^= 1, true), Push::Rejected);
    assert_eq!(mutate(0, &|b| b[31] ^= 1, true), Push::Rejected);
    assert_eq!(mutate(0, &|b| b[35] ^= 1, true), Push::Rejected);
    assert_eq!(mutate(0, &|b| b[8] ^= 1, true), Push::Rejected);
    assert_eq!(mutate(0, &|b| b[1] ^= 1, true), Push::Rejected);
    assert_eq!(mutate(0, &|b| b[5] ^= 1, true), Push::Rejected);
    for flag in [0x01u8, 0x02, 0x04, 0x20, 0x40, 0x80] {
        assert_eq!(
            mutate(0, &|b| b[33] |= flag, true),
            Push::Rejected,
            "flag {flag:#x}"
        );
    }
    assert_eq!(mutate(0, &|b| b[33] = 0x08, true), Push::Rejected); // PSH without ACK
                                                                    // Corrupted payload (checksum no longer valid), corrupted IPv4 header checksum.
    assert_eq!(mutate(0, &|b| b[100] ^= 1, false), Push::Rejected);
    assert_eq!(mutate(0, &|b| b[10] ^= 1, false), Push::Rejected);
    // Still fine after a refresh: the mutation tools are sound.
    assert_eq!(mutate(0, &|_| {}, true), Push::Merged);
    // Larger after smaller; anything after a short one; anything after PSH.
    let mut short = segs[1].clone();
    short.truncate(short.len() - 10);
    let l = short.len() as u16;
    short[2..4].copy_from_slice(&l.to_be_bytes());
    refresh_tcp4(&mut short);
    assert_eq!(push_pair(&short, &segs[2]), Push::Rejected);
    let mut buf = vec![0u8; VNET_HDR_LEN + 65535];
    let mut c = Coalescer::new(&mut buf, GsoTypes::ALL);
    assert_eq!(c.try_push(&segs[0]), Push::Started);
    assert_eq!(c.try_push(&short), Push::Merged);
    assert_eq!(c.try_push(&segs[2]), Push::Rejected);
    let mut psh = segs[0].clone();
    psh[33] |= 0x08;
    refresh_tcp4(&mut psh);
    assert_eq!(push_pair(&psh, &segs[1]), Push::Rejected);
    // Non-candidates stay alone and unchanged.
    let mut icmp = segs[0].clone();
    icmp[9] = 1;
    refresh_tcp4(&mut icmp);
    assert_eq!(push_pair(&icmp, &segs[1]), Push::Rejected);
    let mut c = Coalescer::new(&mut buf, GsoTypes::ALL);
    assert_eq!(c.try_push(&icmp), Push::Started);
    let f = c.finish().unwrap();
    assert_eq!(f.hdr, VirtioNetHdr::NONE);
    assert_eq!(f.packet(), &icmp[..]);
    // Trailing padding (WireGuard pads plaintext to 16 bytes) is trimmed, then merged.
    let mut padded = segs[1].clone();
    padded.extend_from_slice(&[0; 12]);
    assert_eq!(push_pair(&segs[0], &padded), Push::Merged);
    // A too-small buffer.
    let mut tiny = [0u8; 100];
    let mut c = Coalescer::new(&mut tiny, GsoTypes::ALL);
    assert_eq!(c.try_push(&segs[0]), Push::TooLarge);
    assert!(c.is_empty());
    let mut none = [0u8; 5];
    assert_eq!(
        Coalescer::new(&mut none, GsoTypes::ALL).try_push(&[]),
        Push::TooLarge
    );
}

#[test]
fn coalesce_size_limits() {
    // 65535 total: 20 + 20 + 46 * 1424 = 65544 > 65535, so the 46th segment starts anew.
    let s = Spec {
        payload: 1424 * 50,
        gso: 1424,
        ..BASE
    };
    let (mut hdr, mut x) = super_packet(Spec { payload: 0, ..s });
    x.extend(payload_bytes(1424 * 50));
    hdr.hdr_len = 40;
    let segs = split_vec(&hdr, &x, MTU).unwrap();
    assert_eq!(segs.len(), 50);
    let out = coalesce_all(&segs);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].2, 45);
    assert_eq!(out[0].1.len(), 40 + 45 * 1424);
    // A coalescer buffer of 3 segments.
    let mut buf = vec![0u8; VNET_HDR_LEN + 40 + 3 * 1424];
    let mut c = Coalescer::new(&mut buf, GsoTypes::ALL);
    assert_eq!(c.try_push(&segs[0]), Push::Started);
    assert_eq!(c.try_push(&segs[1]), Push::Merged);
    assert_eq!(c.try_push(&segs[2]), Push::Merged);
    assert_eq!(c.segments(), 3);
    assert_eq!(c.try_push(&segs[3]), Push::Rejected);
}

#[test]
fn udp_coalesce_rules() {
    let (hdr, x) = super_packet(Spec {
        tcp: false,
        payload: 3000,
        gso: 1000,
        ..BASE
    });
    let segs = split_vec(&hdr, &x, MTU).unwrap();
    assert_eq!(push_pair(&segs[0], &segs[1]), Push::Merged);
    let mut zero = segs[1].clone();
    zero[26] = 0;
    zero[27] = 0;
    assert_eq!(push_pair(&segs[0], &zero), Push::Rejected);
    let mut port = segs[1].clone();
    port[23] ^= 1;
    assert_eq!(push_pair(&segs[0], &port), Push::Rejected);
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        any::<bool>(),
        1usize..20_000,
        64u16..1400,
        prop_oneof![Just(0u8), Just(0x08)],
        any::<bool>(),
    )
        .prop_map(|(v6, tcp, payload, gso, flags, options)| Spec {
            v6,
            tcp,
            payload,
            gso,
            flags,
            options,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn prop_split_verify_and_coalesce_back(s in spec_strategy()) {
        roundtrip(s);
    }

    #[test]
    fn prop_fuzz_roundtrip_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        fuzz_roundtrip(&data);
    }

    #[test]
    fn prop_fuzz_roundtrip_mutated_super_packets(
        s in spec_strategy(),
        mtu_sel in any::<u8>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    ) {
        let (hdr, x) = super_packet(Spec { payload: s.payload.min(4000), ..s });
        let mut data = hdr.to_bytes().to_vec();
        data.push(mtu_sel);
        data.extend_from_slice(&x);
        fuzz_roundtrip(&data);
        for (at, v) in flips {
            let at = at % data.len();
            data[at] ^= v;
        }
        fuzz_roundtrip(&data);
    }
}

/// Coalesces `segs` in order with only `accepted` GSO types: (header, segments) per write.
fn coalesce_with(segs: &[Vec<u8>], accepted: GsoTypes) -> Vec<(VirtioNetHdr, usize)> {
    let mut buf = vec![0u8; VNET_HDR_LEN + 65535];
    let mut c = Coalescer::new(&mut buf, accepted);
    let mut out = Vec::new();
    for s in segs {
        loop {
            match c.try_push(s) {
                Push::Started | Push::Merged => break,
                Push::Rejected => {
                    let f = c.finish().unwrap();
                    if f.segments == 1 {
                        // A packet written alone goes out unchanged.
                        assert!(segs.iter().any(|p| p[..] == *f.packet()));
                    }
                    out.push((f.hdr, f.segments));
                }
                Push::TooLarge => panic!("too large"),
            }
        }
    }
    if let Some(f) = c.finish() {
        out.push((f.hdr, f.segments));
    }
    out
}

/// Four segments of one flow of each kind: (name, segments, its GSO type).
fn flows_of_every_kind() -> Vec<(&'static str, Vec<Vec<u8>>, u8)> {
    [(false, true), (true, true), (false, false), (true, false)]
        .into_iter()
        .map(|(v6, tcp)| {
            let (hdr, x) = super_packet(Spec {
                v6,
                tcp,
                payload: 4000,
                gso: 1000,
                ..BASE
            });
            let name = match (tcp, v6) {
                (true, false) => "tcp4",
                (true, true) => "tcp6",
                (false, false) => "udp4",
                (false, true) => "udp6",
            };
            (name, split_vec(&hdr, &x, MTU).unwrap(), hdr.gso_type)
        })
        .collect()
}

#[test]
fn coalescing_follows_the_gso_types_the_tun_accepted() {
    use crate::sys::tun::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
    let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    // What `Tun::enable_offloads` may end with: everything, no USO (kernels before 6.2),
    // checksum only, nothing; and single families.
    let cases: [(u32, &[&str]); 6] = [
        (
            tso | TUN_F_USO4 | TUN_F_USO6,
            &["tcp4", "tcp6", "udp4", "udp6"],
        ),
        (tso, &["tcp4", "tcp6"]),
        (TUN_F_CSUM, &[]),
        (0, &[]),
        (TUN_F_CSUM | TUN_F_TSO6 | TUN_F_USO4, &["tcp6", "udp4"]),
        // Segmentation without the partial checksum every super-packet carries.
        (TUN_F_TSO4 | TUN_F_USO4, &[]),
    ];
    for (flags, coalesced) in cases {
        let accepted = GsoTypes::from_tun_offloads(flags);
        for (name, segs, gso_type) in flows_of_every_kind() {
            assert_eq!(segs.len(), 4);
            let out = coalesce_with(&segs, accepted);
            if coalesced.contains(&name) {
                assert_eq!(
                    out.len(),
                    1,
                    "{name} with flags {flags:#x}: one super-packet"
                );
                assert_eq!((out[0].0.gso_type, out[0].1), (gso_type, 4), "{name}");
            } else {
                assert_eq!(
                    out.len(),
                    4,
                    "{name} with flags {flags:#x}: packet by packet"
                );
                for (hdr, segments) in out {
                    assert_eq!((hdr, segments), (VirtioNetHdr::NONE, 1), "{name}");
                }
            }
        }
    }
}
