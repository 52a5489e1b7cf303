//! Micro-benchmarks of the offload hot path: splitting a TUN super-packet into segments,
//! coalescing decrypted segments back into one, and reading a packet's IP header the way the
//! data plane does for every packet. Run:
//! `cargo bench --bench offload -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::IpAddr;

use concentrator::offload::{
    split_into, Coalescer, GsoTypes, VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP_L4, VNET_HDR_LEN,
};
use concentrator::proto::wire::{checksum, IpPacket};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Segments per super-packet and payload bytes per segment: about what a TCP sender hands a
/// TUN with TSO (~56 KB).
const SEGMENTS: usize = 40;
const GSO_SIZE: usize = 1400;
/// Room in front of each segment, as the data plane leaves for the transport header.
const OFFSET: usize = 16;

const SRC4: [u8; 4] = [10, 1, 2, 3];
const DST4: [u8; 4] = [10, 9, 8, 7];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn payload(len: usize) -> impl Iterator<Item = u8> {
    (0..len).map(|i| (i * 7 + 3) as u8)
}

/// A TCP/IPv4 super-packet as the kernel hands it over: lengths over the whole packet, valid
/// IPv4 header checksum, the TCP checksum field holding the folded pseudo-header sum.
fn tcp4_super_packet() -> (VirtioNetHdr, Vec<u8>) {
    let l4_len = 20 + SEGMENTS * GSO_SIZE;
    let mut p = vec![0u8; 20 + 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&SRC4);
    p[16..20].copy_from_slice(&DST4);
    let ip_csum = checksum::checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&443u16.to_be_bytes());
    p[24..28].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    p[28..32].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x10; // ACK
    p[34..36].copy_from_slice(&501u16.to_be_bytes());
    let pseudo = checksum::pseudo_header_v4(SRC4, DST4, 6, l4_len as u16);
    p[36..38].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    p.extend(payload(SEGMENTS * GSO_SIZE));
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: GSO_SIZE as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, p)
}

/// A UDP/IPv6 super-packet (USO), built the same way.
fn udp6_super_packet() -> (VirtioNetHdr, Vec<u8>) {
    let l4_len = 8 + SEGMENTS * GSO_SIZE;
    let mut p = vec![0u8; 40 + 8];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&SRC6);
    p[24..40].copy_from_slice(&DST6);
    p[40..42].copy_from_slice(&5353u16.to_be_bytes());
    p[42..44].copy_from_slice(&4433u16.to_be_bytes());
    p[44..46].copy_from_slice(&(l4_len as u16).to_be_bytes());
    let pseudo = checksum::pseudo_header_v6(&SRC6, &DST6, 17, l4_len as u32);
    p[46..48].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    p.extend(payload(SEGMENTS * GSO_SIZE));
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
        hdr_len: 48,
        gso_size: GSO_SIZE as u16,
        csum_start: 40,
        csum_offset: 6,
    };
    (hdr, p)
}

fn cases() -> [(&'static str, (VirtioNetHdr, Vec<u8>)); 2] {
    [("tcp4", tcp4_super_packet()), ("udp6", udp6_super_packet())]
}

fn split(c: &mut Criterion) {
    let mut group = c.benchmark_group("split");
    for (name, (hdr, packet)) in cases() {
        let mut slots = vec![[0u8; 2048]; SEGMENTS];
        let mut lens = [0usize; SEGMENTS];
        group.throughput(Throughput::Bytes(packet.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let n = split_into(
                    &hdr,
                    black_box(&packet),
                    1500,
                    &mut slots,
                    OFFSET,
                    &mut lens,
                )
                .unwrap();
                black_box(n)
            })
        });
    }
    group.finish();
}

fn coalesce(c: &mut Criterion) {
    let mut group = c.benchmark_group("coalesce");
    for (name, (hdr, packet)) in cases() {
        let mut slots = vec![[0u8; 2048]; SEGMENTS];
        let mut lens = [0usize; SEGMENTS];
        let n = split_into(&hdr, &packet, 1500, &mut slots, OFFSET, &mut lens).unwrap();
        let segments: Vec<&[u8]> = (0..n)
            .map(|i| &slots[i][OFFSET..OFFSET + lens[i]])
            .collect();
        let mut buf = vec![0u8; VNET_HDR_LEN + 65535];
        group.throughput(Throughput::Bytes(packet.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut c = Coalescer::new(&mut buf, GsoTypes::ALL);
                for s in &segments {
                    black_box(c.try_push(black_box(s)));
                }
                black_box(c.finish().map(|done| done.segments))
            })
        });
    }
    group.finish();
}

/// What the data plane reads from every packet: both addresses and the checked length.
fn ip_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("ip_header");
    group.throughput(Throughput::Elements(1));
    for (name, (_, mut packet)) in cases() {
        // One 1420-byte packet with correct length fields.
        packet.truncate(1420);
        if packet[0] >> 4 == 4 {
            packet[2..4].copy_from_slice(&1420u16.to_be_bytes());
        } else {
            packet[4..6].copy_from_slice(&1380u16.to_be_bytes());
        }
        group.bench_function(name, |b| {
            b.iter(|| black_box(addresses_and_len(black_box(&packet))))
        });
    }
    group.finish();
}

fn addresses_and_len(packet: &[u8]) -> Option<(IpAddr, IpAddr, usize)> {
    let ip = IpPacket::new_checked(packet).ok()?;
    Some((ip.src(), ip.dst(), ip.total_len()))
}

criterion_group!(benches, split, coalesce, ip_header);
criterion_main!(benches);
