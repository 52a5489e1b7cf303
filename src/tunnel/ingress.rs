//! Ingress: opened packets gathered into as few TUN writes as the device allows. Consecutive
//! segments of one TCP or UDP flow become one super-packet with a virtio header (when the TUN
//! accepted that GSO type); any other packet closes the pending one and starts the next. The
//! frames are built one after another in an output buffer; the caller is told each frame as it
//! completes, with its offset there, and writes it (a plain `write`, or an io_uring write of
//! the same memory).

use std::ops::Range;

use crate::offload::coalesce::{Coalescer, GsoTypes, Push};
use crate::offload::vnet::{VirtioNetHdr, VNET_HDR_LEN};

/// A TUN write that is due.
#[derive(Debug, PartialEq, Eq)]
pub struct TunFrame<'b> {
    /// Where the frame starts in the output buffer.
    pub offset: usize,
    /// The frame: virtio header, then a packet or a super-packet.
    pub bytes: &'b [u8],
    /// Packets it carries.
    pub packets: usize,
}

/// What became of a packet offered to a [`TunBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Taken into the pending frame.
    Taken,
    /// Too large for the output buffer: write it alone (see [`frame_in_place`]).
    WriteAlone,
}

/// Frames built one after another in an output buffer.
pub struct TunBatch<'o> {
    coalescer: Coalescer<'o>,
    /// Where the coalescer's buffer starts in the output buffer.
    base: usize,
    accepted: GsoTypes,
}

impl<'o> TunBatch<'o> {
    /// Frames in `output`, coalesced into the GSO types in `accepted` (the TUN's offloads).
    pub fn new(output: &'o mut [u8], accepted: GsoTypes) -> Self {
        TunBatch {
            coalescer: Coalescer::new(output, accepted),
            base: 0,
            accepted,
        }
    }

    /// Offers one opened IP packet; a frame it completes goes to `write` first.
    pub fn offer(&mut self, packet: &[u8], write: &mut impl FnMut(TunFrame<'_>)) -> Offered {
        loop {
            match self.coalescer.try_push(packet) {
                Push::Started | Push::Merged => return Offered::Taken,
                Push::TooLarge => return Offered::WriteAlone,
                Push::Rejected => {
                    if !self.flush(write) {
                        // Nothing was pending, so nothing to make room for: write it alone.
                        return Offered::WriteAlone;
                    }
                }
            }
        }
    }

    /// Completes the pending frame, if any, hands it to `write` and moves past it; false when
    /// nothing was pending.
    pub fn flush(&mut self, write: &mut impl FnMut(TunFrame<'_>)) -> bool {
        let Some(done) = self.coalescer.finish() else {
            return false;
        };
        let len = done.frame.len();
        write(TunFrame {
            offset: self.base,
            bytes: done.frame,
            packets: done.segments,
        });
        let rest = std::mem::replace(&mut self.coalescer, Coalescer::new(&mut [], self.accepted))
            .into_buffer();
        self.coalescer = Coalescer::new(&mut rest[len..], self.accepted);
        self.base += len;
        true
    }
}

/// Writes a "no offload" virtio header in the `VNET_HDR_LEN` bytes before `packet` in `buf`
/// (the transport header's room, free once the packet is opened) and returns the frame's range.
/// None if there is no room before it.
pub fn frame_in_place(buf: &mut [u8], packet: Range<usize>) -> Option<Range<usize>> {
    let start = packet.start.checked_sub(VNET_HDR_LEN)?;
    VirtioNetHdr::NONE.emit(buf.get_mut(start..packet.start)?)?;
    Some(start..packet.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::checksum;

    /// A UDP/IPv4 packet of flow `port` with `payload` bytes and IP ID `id`, checksums complete.
    fn udp4(port: u16, id: u16, payload: usize) -> Vec<u8> {
        let total = 20 + 8 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 66, 0, 2]);
        p[16..20].copy_from_slice(&[10, 1, 0, 2]);
        let c = checksum::checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&port.to_be_bytes());
        p[22..24].copy_from_slice(&4433u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        for (i, b) in p[28..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let pseudo =
            checksum::pseudo_header_v4([10, 66, 0, 2], [10, 1, 0, 2], 17, (8 + payload) as u16);
        let c = checksum::checksum(&p[20..], pseudo);
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn frames(packets: &[Vec<u8>], accepted: GsoTypes, room: usize) -> Vec<(usize, usize, usize)> {
        let mut out = vec![0u8; room];
        let mut batch = TunBatch::new(&mut out, accepted);
        let mut seen = Vec::new();
        let mut write = |f: TunFrame<'_>| seen.push((f.offset, f.bytes.len(), f.packets));
        for p in packets {
            assert_eq!(batch.offer(p, &mut write), Offered::Taken);
        }
        batch.flush(&mut write);
        seen
    }

    #[test]
    fn one_flow_becomes_one_frame_and_another_flow_the_next() {
        let a: Vec<Vec<u8>> = (0..3).map(|i| udp4(1000, i, 500)).collect();
        let b = udp4(2000, 9, 300);
        let packets = [a.clone(), vec![b.clone()]].concat();
        let seen = frames(&packets, GsoTypes::ALL, 64 * 1024);
        let first_len = VNET_HDR_LEN + 28 + 3 * 500;
        assert_eq!(
            seen,
            vec![(0, first_len, 3), (first_len, VNET_HDR_LEN + b.len(), 1)]
        );
    }

    #[test]
    fn without_the_gso_type_every_packet_is_its_own_frame() {
        let packets: Vec<Vec<u8>> = (0..3).map(|i| udp4(1000, i, 500)).collect();
        let seen = frames(&packets, GsoTypes::NONE, 64 * 1024);
        let len = VNET_HDR_LEN + packets[0].len();
        assert_eq!(seen, vec![(0, len, 1), (len, len, 1), (2 * len, len, 1)]);
    }

    #[test]
    fn a_congestion_mark_is_never_merged_away() {
        use crate::tunnel::ecn::{packet_ecn, set_ecn, Ecn};
        // The coalescer merges only packets whose TOS byte (IPv6: traffic class) is equal, as
        // the kernel's GRO does, so a CE mark set at decapsulation (RFC 6040 §4.2) stays on
        // its own packet instead of taking the first packet's header.
        let mut packets: Vec<Vec<u8>> = (0..3).map(|i| udp4(1000, i, 500)).collect();
        for (p, ecn) in packets.iter_mut().zip([Ecn::Ect0, Ecn::Ce, Ecn::Ect0]) {
            assert!(set_ecn(p, ecn));
        }
        let mut out = vec![0u8; 64 * 1024];
        let mut batch = TunBatch::new(&mut out, GsoTypes::ALL);
        let mut seen = Vec::new();
        let mut write = |f: TunFrame<'_>| {
            seen.push((f.packets, packet_ecn(&f.bytes[VNET_HDR_LEN..])));
        };
        for p in &packets {
            assert_eq!(batch.offer(p, &mut write), Offered::Taken);
        }
        batch.flush(&mut write);
        assert_eq!(
            seen,
            vec![
                (1, Some(Ecn::Ect0)),
                (1, Some(Ecn::Ce)),
                (1, Some(Ecn::Ect0))
            ]
        );
        // Equal marks merge, and the merged header carries them.
        let mut marked: Vec<Vec<u8>> = (0..3).map(|i| udp4(1000, i, 500)).collect();
        for p in &mut marked {
            assert!(set_ecn(p, Ecn::Ce));
        }
        let mut out = vec![0u8; 64 * 1024];
        let mut batch = TunBatch::new(&mut out, GsoTypes::ALL);
        let mut merged = Vec::new();
        let mut write = |f: TunFrame<'_>| {
            merged.push((f.packets, packet_ecn(&f.bytes[VNET_HDR_LEN..])));
        };
        for p in &marked {
            assert_eq!(batch.offer(p, &mut write), Offered::Taken);
        }
        batch.flush(&mut write);
        assert_eq!(merged, vec![(3, Some(Ecn::Ce))]);
    }

    #[test]
    fn a_packet_larger_than_the_room_is_written_alone() {
        let mut out = vec![0u8; 100];
        let mut batch = TunBatch::new(&mut out, GsoTypes::ALL);
        let mut write = |_: TunFrame<'_>| panic!("nothing is due");
        assert_eq!(
            batch.offer(&udp4(1, 1, 500), &mut write),
            Offered::WriteAlone
        );
    }

    #[test]
    fn a_frame_in_place_takes_the_room_before_the_packet() {
        let mut buf = vec![0xaau8; 16 + 40];
        assert_eq!(frame_in_place(&mut buf, 16..56), Some(6..56));
        assert_eq!(&buf[6..16], &VirtioNetHdr::NONE.to_bytes()[..]);
        assert_eq!(frame_in_place(&mut buf, 4..56), None);
    }
}
