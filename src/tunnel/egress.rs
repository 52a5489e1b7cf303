//! Egress: a TUN read cut into segments of at most the tunnel's MTU, each sealed in place into
//! an output buffer, one datagram every `stride` bytes, and the `UDP_SEGMENT` sends that carry
//! them, each with the outer ECN field of its inner packets (RFC 6040 §4.1).

use std::ops::Range;

use crate::offload::split::Segmenter;
use crate::offload::vnet::{VirtioNetHdr, VNET_HDR_LEN};
use crate::offload::OffloadError;
use crate::proto::constants::MAX_MTU;
use crate::proto::keypair::TrainMessage;
use crate::proto::padding::Padding;
use crate::proto::session::{Session, SessionError};
use crate::proto::time::Instant;
use crate::proto::wire::{TAG_LEN, TRANSPORT_HEADER_LEN};
use crate::tunnel::ecn;

/// Datagrams per `UDP_SEGMENT` send: the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels
/// (include/linux/udp.h), so stay at that.
pub const SEGMENTS_PER_SEND: usize = 64;
/// Bytes of UDP payload one `UDP_SEGMENT` send may carry: the whole batch is built as one IP
/// datagram first, so it must fit a 16-bit IP length with the IPv6 (40) and UDP (8) headers.
pub const BYTES_PER_SEND: usize = 65_535 - 40 - 8;

/// Why a TUN read was not sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The virtio header or the packet cannot be cut (or the output is too small for it).
    #[error("malformed super-packet: {0}")]
    Malformed(#[from] OffloadError),
    /// The output buffer cannot hold every sealed segment.
    #[error("the output buffer is too small for the segments")]
    NoRoom,
    /// No segment at all.
    #[error("empty super-packet")]
    Empty,
    /// The session refused to seal (no keypair, key expired or exhausted).
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Sealed datagrams in an output buffer: `count` of them, the i-th at `i * stride`, all
/// `stride` bytes long but the last, which ends at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedTrain {
    /// Bytes from one datagram's start to the next's.
    pub stride: usize,
    /// Datagrams.
    pub count: usize,
    /// Where the last datagram ends.
    pub end: usize,
    /// Plaintext bytes sealed (the inner packets' lengths).
    pub plaintext: usize,
    /// The TOS byte / traffic class every datagram goes out with: the outer ECN field for
    /// the inner packets ([`ecn::outer_tos_for`]). One value for the whole train: every
    /// segment carries a copy of the super-packet's IP header, ECN field included.
    pub outer_tos: u8,
}

/// One send of a train: `len` bytes from `offset` in the output, cut by the kernel into
/// datagrams of `segment` bytes when there are several (`UDP_SEGMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoSend {
    /// Where the send's bytes start in the output buffer.
    pub offset: usize,
    /// Its bytes.
    pub len: usize,
    /// The `UDP_SEGMENT` size, when the send carries more than one datagram.
    pub segment: Option<u16>,
    /// Datagrams it carries.
    pub datagrams: usize,
    /// The TOS byte / traffic class of its datagrams ([`SealedTrain::outer_tos`]).
    pub tos: u8,
}

/// Cuts the TUN read in `input` (a virtio header, then an IP packet or a TSO/USO super-packet)
/// into segments of at most [`MAX_MTU`] bytes and seals each under `session` into `output`,
/// padded as `padding` says (the peer's suite).
///
/// The stride holds the first segment, the longest, padded: every other one, padded, fits
/// (padding never makes a shorter packet longer than a longer one's), so all datagrams but
/// the last are exactly `stride` bytes, as `UDP_SEGMENT` needs, and the last is padded too.
pub fn seal_super_packet(
    input: &[u8],
    output: &mut [u8],
    session: &Session,
    padding: Padding,
    now: Instant,
) -> Result<SealedTrain, EgressError> {
    let hdr = VirtioNetHdr::parse(input).ok_or(OffloadError::Truncated)?;
    let packet = &input[VNET_HDR_LEN..];
    let segments = Segmenter::new(&hdr, packet, MAX_MTU as usize)?;
    let count = segments.segment_count();
    if count == 0 {
        return Err(EgressError::Empty);
    }
    let stride = padding.padded_len(segments.segment_len(0)) + TRANSPORT_HEADER_LEN + TAG_LEN;
    if count * stride > output.len() {
        return Err(EgressError::NoRoom);
    }
    // Each segment's headers are written in place; its payload is sealed from the read,
    // copied as it is encrypted (`TrainMessage::insert`).
    let mut plaintext = 0;
    for i in 0..count {
        let at = i * stride;
        let room = &mut output[at + TRANSPORT_HEADER_LEN..at + stride - TAG_LEN];
        let (head, payload) = segments.write_segment_head(i, room)?;
        plaintext += head + payload.len();
    }
    let message = |i| {
        let payload = segments.segment_payload(i);
        TrainMessage {
            len: segments.segment_len(i),
            insert: Some((segments.segment_len(i) - payload.len(), payload)),
        }
    };
    // A segment longer than the first would not fit its stride padded: `encrypt_train`
    // refuses the train rather than write into the next datagram.
    let end = session.encrypt_train(output, stride, count, padding, message, now)?;
    Ok(SealedTrain {
        stride,
        count,
        end,
        plaintext,
        outer_tos: ecn::outer_tos_for(packet),
    })
}

impl SealedTrain {
    /// The sends that carry the train from `base` (the output buffer's offset in whatever
    /// the caller addresses): at most [`SEGMENTS_PER_SEND`] datagrams and [`BYTES_PER_SEND`]
    /// bytes each.
    pub fn sends(&self, base: usize) -> impl Iterator<Item = GsoSend> + '_ {
        let per_send = (BYTES_PER_SEND / self.stride).clamp(1, SEGMENTS_PER_SEND);
        (0..self.count).step_by(per_send).map(move |first| {
            let last = (first + per_send).min(self.count);
            let bytes: Range<usize> = first * self.stride..if last == self.count {
                self.end
            } else {
                last * self.stride
            };
            GsoSend {
                offset: base + bytes.start,
                len: bytes.len(),
                // All datagrams but the last are exactly `stride` bytes, as UDP_SEGMENT needs.
                segment: (last - first > 1).then_some(self.stride as u16),
                datagrams: last - first,
                tos: self.outer_tos,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keypair::Keypair;
    use crate::proto::suite::Suite;

    fn train(stride: usize, count: usize, last: usize) -> SealedTrain {
        SealedTrain {
            stride,
            count,
            end: (count - 1) * stride + last,
            plaintext: 0,
            outer_tos: 0x02,
        }
    }

    #[test]
    fn one_datagram_is_one_plain_send() {
        let sends: Vec<_> = train(1452, 1, 100).sends(7).collect();
        assert_eq!(
            sends,
            vec![GsoSend {
                offset: 7,
                len: 100,
                segment: None,
                datagrams: 1,
                tos: 0x02,
            }]
        );
    }

    #[test]
    fn a_train_is_cut_at_the_byte_and_segment_limits() {
        // 1452-byte datagrams: 45 fit in one 64 KiB send.
        let t = train(1452, 100, 500);
        let sends: Vec<_> = t.sends(0).collect();
        assert_eq!(sends.len(), 3);
        assert_eq!(sends.iter().map(|s| s.datagrams).sum::<usize>(), 100);
        for s in &sends {
            assert!(s.len <= BYTES_PER_SEND && s.datagrams <= SEGMENTS_PER_SEND);
            assert_eq!(s.segment, Some(1452));
            assert_eq!(s.tos, 0x02, "every send of a train has its ECN field");
        }
        assert_eq!(sends[1].offset, 45 * 1452);
        assert_eq!(sends.last().unwrap().len, 9 * 1452 + 500);
        // Small datagrams: the segment limit binds first.
        let small: Vec<_> = train(100, 130, 100).sends(0).collect();
        assert_eq!(
            small.iter().map(|s| s.datagrams).collect::<Vec<_>>(),
            vec![64, 64, 2]
        );
    }

    /// An IPv4/UDP super-packet of `payload` bytes with TOS `tos`, cut by USO into 100-byte
    /// payloads (checksum left partial, as the kernel hands it over), after its virtio header.
    fn uso_read(tos: u8, payload: usize) -> Vec<u8> {
        uso_read_cut(tos, payload, 100)
    }

    /// [`uso_read`] cut into `gso_size`-byte payloads.
    fn uso_read_cut(tos: u8, payload: usize, gso_size: u16) -> Vec<u8> {
        use crate::offload::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4};
        use crate::proto::wire::checksum;
        let total = 28 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[1] = tos;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 1, 0, 2]);
        p[16..20].copy_from_slice(&[10, 66, 0, 2]);
        let c = checksum::checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&6000u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        let pseudo =
            checksum::pseudo_header_v4([10, 1, 0, 2], [10, 66, 0, 2], 17, (8 + payload) as u16);
        p[26..28].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            hdr_len: 28,
            gso_size,
            csum_start: 20,
            csum_offset: 6,
        };
        read_of(hdr, &p)
    }

    /// A TUN read: the virtio header `hdr`, then `packet`.
    fn read_of(hdr: VirtioNetHdr, packet: &[u8]) -> Vec<u8> {
        let mut read = vec![0u8; VNET_HDR_LEN];
        hdr.emit(&mut read);
        read.extend_from_slice(packet);
        read
    }

    #[test]
    fn every_segment_and_send_of_a_train_carries_the_super_packets_ecn_field() {
        use crate::tunnel::ecn::{packet_ecn, Ecn};
        for ecn in Ecn::ALL {
            // DSCP AF41 on the inner packet: only the ECN bits go to the outer header.
            let read = uso_read((34 << 2) | ecn.bits(), 450);
            let hdr = VirtioNetHdr::parse(&read).unwrap();
            let segments = Segmenter::new(&hdr, &read[VNET_HDR_LEN..], 1420).unwrap();
            assert_eq!(segments.segment_count(), 5);
            for i in 0..5 {
                let mut out = [0u8; 256];
                let len = segments.write_segment(i, &mut out).unwrap();
                assert_eq!(packet_ecn(&out[..len]), Some(ecn), "segment {i}");
            }
            let session = keyed_session();
            let mut output = vec![0u8; 8 * 1024];
            let now = Instant::from_nanos(1);
            let train =
                seal_super_packet(&read, &mut output, &session, Padding::None, now).unwrap();
            assert_eq!((train.count, train.outer_tos), (5, ecn.bits()));
            assert!(train.sends(0).all(|send| send.tos == ecn.bits()));
        }
    }

    /// A session with a current keypair.
    fn keyed_session() -> Session {
        keyed_session_of(Suite::Native)
    }

    /// A session with a current keypair of `suite`, sealing under the key it opens with.
    fn keyed_session_of(suite: Suite) -> Session {
        let now = Instant::from_nanos(1);
        let session = Session::new();
        session.install(std::sync::Arc::new(twin_keypair(suite)), now);
        session
    }

    /// A keypair of `suite` with the same key both ways: it opens what [`keyed_session_of`]
    /// seals.
    fn twin_keypair(suite: Suite) -> Keypair {
        let key = zeroize::Zeroizing::new([3u8; 32]);
        Keypair::for_suite(suite, &key, &key, 1, 2, Instant::from_nanos(1), true)
    }

    /// The datagrams of `train` in `output`, each opened by a twin keypair of `suite`: its
    /// length on the wire and its plaintext.
    fn opened_datagrams(train: &SealedTrain, output: &[u8], suite: Suite) -> Vec<(usize, Vec<u8>)> {
        let opener = twin_keypair(suite);
        (0..train.count)
            .map(|i| {
                let at = i * train.stride;
                let end = if i + 1 == train.count {
                    train.end
                } else {
                    at + train.stride
                };
                let mut datagram = output[at..end].to_vec();
                let (_, plain) = opener.open(&mut datagram, Instant::from_nanos(2)).unwrap();
                (end - at, datagram[plain].to_vec())
            })
            .collect()
    }

    /// Segment `i` of `read` as the segmenter cuts it.
    fn segment(read: &[u8], i: usize) -> Vec<u8> {
        let hdr = VirtioNetHdr::parse(read).unwrap();
        let segments = Segmenter::new(&hdr, &read[VNET_HDR_LEN..], MAX_MTU as usize).unwrap();
        let mut out = vec![0u8; segments.segment_len(i)];
        segments.write_segment(i, &mut out).unwrap();
        out
    }

    #[test]
    fn a_wireguard_train_is_padded_to_16_within_the_mtu_and_keeps_its_stride() {
        let padding = Padding::WireGuard { mtu: 1420 };
        // (UDP payload per segment, super-packet payload, the datagrams' lengths): segments
        // of 129 bytes and a last one of 74, padded to 144 and 80; segments of 1419, capped
        // at the MTU, and a last one of 246, padded to 256.
        for (gso_size, payload, lengths) in [
            (101, 450, vec![176, 176, 176, 176, 112]),
            (1391, 3000, vec![1452, 1452, 288]),
        ] {
            let read = uso_read_cut(0, payload, gso_size);
            let session = keyed_session_of(Suite::WireGuard);
            // Stale bytes in the output: the padding must be zeros all the same.
            let mut output = vec![0xee; 8 * 1024];
            let now = Instant::from_nanos(1);
            let train = seal_super_packet(&read, &mut output, &session, padding, now).unwrap();
            assert_eq!(
                train.stride, lengths[0],
                "the stride holds a padded segment"
            );
            let opened = opened_datagrams(&train, &output, Suite::WireGuard);
            assert_eq!(opened.iter().map(|o| o.0).collect::<Vec<_>>(), lengths);
            for (i, (len, plain)) in opened.iter().enumerate() {
                let inner = len - TRANSPORT_HEADER_LEN - TAG_LEN;
                assert!(
                    inner.is_multiple_of(16) || inner == 1420,
                    "datagram {i}: {len} bytes"
                );
                let packet = segment(&read, i);
                assert_eq!(&plain[..packet.len()], &packet[..], "datagram {i}");
                assert!(
                    plain[packet.len()..].iter().all(|b| *b == 0),
                    "datagram {i}"
                );
            }
            assert_eq!(
                train.plaintext,
                payload + 28 * lengths.len(),
                "inner bytes only"
            );
            // UDP_SEGMENT: every send's datagrams but its last are exactly `stride` bytes.
            for send in train.sends(0) {
                if let Some(segment) = send.segment {
                    assert_eq!(usize::from(segment), train.stride);
                    assert!(send.len > (send.datagrams - 1) * train.stride);
                    assert!(send.len <= send.datagrams * train.stride);
                }
            }
        }
    }

    #[test]
    fn a_native_train_is_not_padded() {
        let read = uso_read_cut(0, 450, 101);
        let session = keyed_session();
        let mut output = vec![0u8; 8 * 1024];
        let now = Instant::from_nanos(1);
        let train = seal_super_packet(&read, &mut output, &session, Padding::None, now).unwrap();
        assert_eq!(train.stride, 129 + 32);
        let opened = opened_datagrams(&train, &output, Suite::Native);
        assert_eq!(
            opened.iter().map(|o| o.0).collect::<Vec<_>>(),
            vec![161, 161, 161, 161, 74 + 32]
        );
        for (i, (_, plain)) in opened.iter().enumerate() {
            assert_eq!(plain, &segment(&read, i), "datagram {i}");
        }
    }

    /// A TCP super-packet (IPv4 or IPv6, 12 bytes of options) of `payload` bytes cut by TSO
    /// into `gso_size`-byte payloads, checksum left partial, after its virtio header.
    fn tso_read(v6: bool, payload: usize, gso_size: u16) -> Vec<u8> {
        use crate::offload::split::TCP_PSH;
        use crate::offload::tests::{super_packet, Spec};
        let (hdr, packet) = super_packet(Spec {
            v6,
            tcp: true,
            payload,
            gso: gso_size,
            flags: TCP_PSH,
            options: true,
        });
        read_of(hdr, &packet)
    }

    /// TCP trains sealed in batches of eight and the rest one by one (WireGuard, where the CPU
    /// has the batch), or all one by one: every segment comes out as the segmenter writes it
    /// alone, and its TCP checksum verifies.
    #[test]
    fn tso_segments_are_sealed_with_their_checksums() {
        use crate::proto::wire::{checksum, IpPacket};
        for suite in [Suite::WireGuard, Suite::Native] {
            let padding = match suite {
                Suite::WireGuard => Padding::WireGuard { mtu: 1420 },
                Suite::Native => Padding::None,
            };
            // Trains of 1, 3, 12, 20 and 45 segments (45: a 64 KB read), odd last payloads.
            for (v6, payload, gso_size) in [
                (false, 1001, 1348),
                (true, 3 * 1328 - 7, 1328),
                (false, 12 * 1348 - 1, 1348),
                (true, 20 * 1328, 1328),
                (false, 65_000, 1348),
            ] {
                let read = tso_read(v6, payload, gso_size);
                let session = keyed_session_of(suite);
                let mut output = vec![0xee; 96 * 1024];
                let now = Instant::from_nanos(1);
                let train = seal_super_packet(&read, &mut output, &session, padding, now).unwrap();
                assert_eq!(train.count, payload.div_ceil(usize::from(gso_size)));
                for (i, (_, plain)) in opened_datagrams(&train, &output, suite).iter().enumerate() {
                    let packet = segment(&read, i);
                    let what = format!("{suite:?}, v6 {v6}, {payload} bytes, segment {i}");
                    assert_eq!(&plain[..packet.len()], &packet[..], "{what}");
                    let ip = IpPacket::new_unchecked(&packet[..]);
                    let l3 = if v6 { 40 } else { 20 };
                    let pseudo = ip.pseudo_header_sum(6, packet.len() - l3);
                    assert_eq!(checksum::checksum(&packet[l3..], pseudo), 0, "{what}");
                }
            }
        }
    }

    #[test]
    fn a_wireguard_train_that_does_not_fit_the_output_is_refused() {
        let read = uso_read_cut(0, 450, 101);
        let session = keyed_session_of(Suite::WireGuard);
        let padding = Padding::WireGuard { mtu: 1420 };
        // Room for the five datagrams unpadded (4 x 161 + 106), not padded (4 x 176 + 112).
        let mut output = vec![0u8; 4 * 176 + 111];
        let now = Instant::from_nanos(1);
        assert_eq!(
            seal_super_packet(&read, &mut output, &session, padding, now),
            Err(EgressError::NoRoom)
        );
    }

    #[test]
    fn a_truncated_read_is_malformed_and_seals_nothing() {
        let session = Session::new();
        let mut out = [0u8; 64];
        let now = Instant::from_nanos(1);
        assert_eq!(
            seal_super_packet(&[0u8; 4], &mut out, &session, Padding::None, now),
            Err(EgressError::Malformed(OffloadError::Truncated))
        );
    }

    #[test]
    fn without_a_keypair_nothing_is_sealed() {
        let session = Session::new();
        let mut input = vec![0u8; VNET_HDR_LEN + 28];
        VirtioNetHdr::NONE.emit(&mut input[..VNET_HDR_LEN]);
        let p = &mut input[VNET_HDR_LEN..];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[9] = 17;
        let mut out = vec![0u8; 256];
        let r = seal_super_packet(
            &input,
            &mut out,
            &session,
            Padding::None,
            Instant::from_nanos(1),
        );
        assert_eq!(r, Err(EgressError::Session(SessionError::NoKeypair)));
    }
}
