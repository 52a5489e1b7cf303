//! UDP control messages (`cmsghdr`) as plain bytes: what a send carries (the UDP_SEGMENT size,
//! the outer header's TOS or traffic class) and what a receive reports (the UDP_GRO size, the
//! TOS or traffic class the datagram arrived with). Used by the blocking socket helpers (`udp`)
//! and by the io_uring arena (`uring`) alike.

/// SOL_UDP and its options (linux/udp.h): segmentation offload on send, GRO on receive.
pub const SOL_UDP: libc::c_int = 17;
pub const UDP_SEGMENT: libc::c_int = 103;
pub const UDP_GRO: libc::c_int = 104;

/// Room for the control messages of one send or receive, 8-byte aligned: a UDP_SEGMENT or
/// UDP_GRO message and an IP_TOS or IPV6_TCLASS one, each `CMSG_SPACE(sizeof(int))` = 24
/// bytes on 64-bit Linux (cmsg(3)), with room to spare.
pub const CMSG_SPACE: usize = 64;
/// [`CMSG_SPACE`] in the u64 words that keep it aligned for `cmsghdr`.
pub const CMSG_WORDS: usize = CMSG_SPACE / 8;

/// Bytes of a `cmsghdr` on 64-bit Linux: `cmsg_len` (size_t), `cmsg_level`, `cmsg_type`.
const HEADER: usize = std::mem::size_of::<libc::cmsghdr>();

/// What a send asks of the kernel besides the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendControl {
    /// Cut the send into datagrams of this size (UDP_SEGMENT; the last may be shorter).
    pub segment_size: Option<u16>,
    /// The TOS byte (IPv4, `IP_TOS`) or traffic class (IPv6, `IPV6_TCLASS`) of every datagram
    /// of the send; `None`: the socket's default (0).
    pub tos: Option<u8>,
}

/// What a receive reported besides the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceivedControl {
    /// UDP GRO merged several datagrams of this size (each but the last).
    pub gro_segment_size: Option<u16>,
    /// The TOS byte or traffic class the datagram arrived with (`IP_RECVTOS` /
    /// `IPV6_RECVTCLASS` on). GRO merges only datagrams whose TOS and traffic class are equal
    /// (`inet_gro_receive` and `ipv6_gro_receive` flush on a difference), so one value holds
    /// for every datagram of a merged receive.
    pub tos: Option<u8>,
}

/// Writes the control messages of `control` into `space`, for a socket of IPv6 (`ipv6`) or
/// IPv4; returns the bytes used (0: none).
pub fn write_send_cmsgs(space: &mut [u64; CMSG_WORDS], control: SendControl, ipv6: bool) -> usize {
    let mut bytes = [0u8; CMSG_SPACE];
    let mut used = 0;
    if let Some(size) = control.segment_size {
        used = put_cmsg(&mut bytes, used, SOL_UDP, UDP_SEGMENT, &size.to_ne_bytes());
    }
    if let Some(tos) = control.tos {
        // Both take an int (ip(7) IP_TOS, ipv6(7) IPV6_TCLASS); the kernel also takes a single
        // byte for IP_TOS, but an int is accepted by every version.
        let (level, kind) = if ipv6 {
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
        } else {
            (libc::IPPROTO_IP, libc::IP_TOS)
        };
        used = put_cmsg(&mut bytes, used, level, kind, &i32::from(tos).to_ne_bytes());
    }
    for (word, chunk) in space.iter_mut().zip(bytes.chunks(8)) {
        *word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
    }
    used
}

/// Writes a UDP_SEGMENT message with `size` alone into `space`; returns the bytes used.
pub fn write_segment_cmsg(space: &mut [u64; CMSG_WORDS], size: u16) -> usize {
    let control = SendControl {
        segment_size: Some(size),
        tos: None,
    };
    write_send_cmsgs(space, control, false)
}

/// Puts one control message with `data` at `at` of `bytes`; returns where the next starts
/// (`CMSG_SPACE`: the length rounded up to the alignment of size_t).
fn put_cmsg(
    bytes: &mut [u8; CMSG_SPACE],
    at: usize,
    level: libc::c_int,
    kind: libc::c_int,
    data: &[u8],
) -> usize {
    let len = HEADER + data.len();
    bytes[at..at + 8].copy_from_slice(&(len as u64).to_ne_bytes()); // cmsg_len (size_t)
    bytes[at + 8..at + 12].copy_from_slice(&level.to_ne_bytes()); // cmsg_level
    bytes[at + 12..at + 16].copy_from_slice(&kind.to_ne_bytes()); // cmsg_type
    bytes[at + HEADER..at + len].copy_from_slice(data);
    at + len.div_ceil(8) * 8
}

/// The control messages of a receive in `control` (the bytes the kernel wrote); a malformed
/// one ends the parse with what was found before it.
pub fn parse_received_cmsgs(control: &[u8]) -> ReceivedControl {
    let mut found = ReceivedControl::default();
    let mut at = 0;
    while at + HEADER <= control.len() {
        let word = |from: usize| -> [u8; 4] { control[from..from + 4].try_into().expect("4") };
        let len_bytes: [u8; 8] = control[at..at + 8].try_into().expect("8 bytes");
        let len = u64::from_ne_bytes(len_bytes) as usize;
        let level = i32::from_ne_bytes(word(at + 8));
        let kind = i32::from_ne_bytes(word(at + 12));
        if len < HEADER || len > control.len() - at {
            break;
        }
        let data = &control[at + HEADER..at + len];
        match (level, kind) {
            (SOL_UDP, UDP_GRO) if data.len() >= 4 => {
                let size = i32::from_ne_bytes(data[..4].try_into().expect("4 bytes"));
                found.gro_segment_size = u16::try_from(size).ok();
            }
            // ip(7): IP_TOS arrives as one byte.
            (libc::IPPROTO_IP, libc::IP_TOS) if !data.is_empty() => found.tos = Some(data[0]),
            // ipv6(7): IPV6_TCLASS arrives as an int.
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) if data.len() >= 4 => {
                let class = i32::from_ne_bytes(data[..4].try_into().expect("4 bytes"));
                found.tos = u8::try_from(class).ok();
            }
            _ => {}
        }
        at += len.div_ceil(8) * 8;
    }
    found
}

/// Finds a UDP_GRO control message in `control` and returns its segment size.
pub fn parse_gro_cmsg(control: &[u8]) -> Option<u16> {
    parse_received_cmsgs(control).gro_segment_size
}

/// The bytes of a control buffer kept as aligned words.
pub fn control_bytes(space: &[u64; CMSG_WORDS]) -> [u8; CMSG_SPACE] {
    let mut bytes = [0u8; CMSG_SPACE];
    for (chunk, word) in bytes.chunks_mut(8).zip(space.iter()) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A received control message as the kernel lays it out.
    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let len = HEADER + data.len();
        let mut m = vec![0u8; len.div_ceil(8) * 8];
        m[..8].copy_from_slice(&(len as u64).to_ne_bytes());
        m[8..12].copy_from_slice(&level.to_ne_bytes());
        m[12..16].copy_from_slice(&kind.to_ne_bytes());
        m[HEADER..len].copy_from_slice(data);
        m
    }

    /// The messages in `bytes`, as (level, type, data).
    fn messages(bytes: &[u8]) -> Vec<(i32, i32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + HEADER <= bytes.len() {
            let len = u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            let level = i32::from_ne_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            let kind = i32::from_ne_bytes(bytes[at + 12..at + 16].try_into().unwrap());
            out.push((level, kind, bytes[at + HEADER..at + len].to_vec()));
            at += len.div_ceil(8) * 8;
        }
        out
    }

    #[test]
    fn a_send_carries_the_segment_size_and_the_tos_of_its_family() {
        let mut space = [0u64; CMSG_WORDS];
        let control = SendControl {
            segment_size: Some(1452),
            tos: Some(0x02),
        };
        let used = write_send_cmsgs(&mut space, control, false);
        assert_eq!(used, 48, "two messages of 24 bytes");
        assert_eq!(
            messages(&control_bytes(&space)[..used]),
            vec![
                (SOL_UDP, UDP_SEGMENT, 1452u16.to_ne_bytes().to_vec()),
                (libc::IPPROTO_IP, libc::IP_TOS, 2i32.to_ne_bytes().to_vec()),
            ]
        );
        let used = write_send_cmsgs(&mut space, control, true);
        assert_eq!(
            messages(&control_bytes(&space)[..used])[1],
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_TCLASS,
                2i32.to_ne_bytes().to_vec()
            )
        );
    }

    #[test]
    fn a_send_without_tos_or_segments_carries_only_what_it_has() {
        let mut space = [0u64; CMSG_WORDS];
        let tos_only = SendControl {
            segment_size: None,
            tos: Some(0x03),
        };
        let used = write_send_cmsgs(&mut space, tos_only, true);
        assert_eq!(used, 24);
        assert_eq!(
            messages(&control_bytes(&space)[..used]),
            vec![(
                libc::IPPROTO_IPV6,
                libc::IPV6_TCLASS,
                3i32.to_ne_bytes().to_vec()
            )]
        );
        assert_eq!(
            write_send_cmsgs(&mut space, SendControl::default(), false),
            0
        );
        let used = write_segment_cmsg(&mut space, 1200);
        assert_eq!(
            messages(&control_bytes(&space)[..used]),
            vec![(SOL_UDP, UDP_SEGMENT, 1200u16.to_ne_bytes().to_vec())]
        );
    }

    #[test]
    fn a_receive_reports_gro_and_the_tos_in_either_order_and_family() {
        let gro = cmsg(SOL_UDP, UDP_GRO, &1432i32.to_ne_bytes());
        let tos4 = cmsg(libc::IPPROTO_IP, libc::IP_TOS, &[0x03]);
        let tclass = cmsg(
            libc::IPPROTO_IPV6,
            libc::IPV6_TCLASS,
            &0x02i32.to_ne_bytes(),
        );
        let both = ReceivedControl {
            gro_segment_size: Some(1432),
            tos: Some(0x03),
        };
        assert_eq!(
            parse_received_cmsgs(&[gro.clone(), tos4.clone()].concat()),
            both
        );
        assert_eq!(
            parse_received_cmsgs(&[tos4.clone(), gro.clone()].concat()),
            both
        );
        assert_eq!(
            parse_received_cmsgs(&tclass),
            ReceivedControl {
                gro_segment_size: None,
                tos: Some(0x02)
            }
        );
        assert_eq!(parse_gro_cmsg(&[tclass, gro].concat()), Some(1432));
        assert_eq!(parse_received_cmsgs(&tos4).gro_segment_size, None);
    }

    #[test]
    fn malformed_control_messages_report_nothing_past_them() {
        assert_eq!(parse_received_cmsgs(&[]), ReceivedControl::default());
        let mut long = cmsg(libc::IPPROTO_IP, libc::IP_TOS, &[0x03]);
        long[..8].copy_from_slice(&200u64.to_ne_bytes());
        assert_eq!(parse_received_cmsgs(&long), ReceivedControl::default());
        let mut short = cmsg(libc::IPPROTO_IP, libc::IP_TOS, &[0x03]);
        short[..8].copy_from_slice(&4u64.to_ne_bytes());
        assert_eq!(parse_received_cmsgs(&short), ReceivedControl::default());
        // A traffic class too short to hold its int, and one out of range, are ignored.
        let cut = cmsg(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &[2, 0]);
        assert_eq!(parse_received_cmsgs(&cut).tos, None);
        let wide = cmsg(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &300i32.to_ne_bytes());
        assert_eq!(parse_received_cmsgs(&wide).tos, None);
    }
}
