//! UDP control messages (`cmsghdr`) as plain bytes: the UDP_SEGMENT size a send carries and the
//! UDP_GRO size a receive reports. Used by the blocking socket helpers (`udp`) and by the
//! io_uring arena (`uring`) alike.

/// SOL_UDP and its options (linux/udp.h): segmentation offload on send, GRO on receive.
pub const SOL_UDP: libc::c_int = 17;
pub const UDP_SEGMENT: libc::c_int = 103;
pub const UDP_GRO: libc::c_int = 104;

/// Room for one control message carrying a u16/int (UDP_SEGMENT, UDP_GRO), 8-byte aligned.
pub const CMSG_SPACE: usize = 32;

/// Writes a `cmsghdr` for UDP_SEGMENT with `size` into `space`; returns the bytes used.
pub fn write_segment_cmsg(space: &mut [u64; CMSG_SPACE / 8], size: u16) -> usize {
    let header = std::mem::size_of::<libc::cmsghdr>();
    let len = header + std::mem::size_of::<u16>();
    let mut bytes = [0u8; CMSG_SPACE];
    bytes[..8].copy_from_slice(&(len as u64).to_ne_bytes()); // cmsg_len (size_t)
    bytes[8..12].copy_from_slice(&SOL_UDP.to_ne_bytes()); // cmsg_level
    bytes[12..16].copy_from_slice(&UDP_SEGMENT.to_ne_bytes()); // cmsg_type
    bytes[header..header + 2].copy_from_slice(&size.to_ne_bytes());
    for (word, chunk) in space.iter_mut().zip(bytes.chunks(8)) {
        *word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
    }
    // CMSG_SPACE: the length rounded up to the alignment of size_t.
    len.div_ceil(8) * 8
}

/// Finds a UDP_GRO control message in `control` and returns its segment size.
pub fn parse_gro_cmsg(control: &[u8]) -> Option<u16> {
    let header = std::mem::size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + header <= control.len() {
        let len = u64::from_ne_bytes(control[at..at + 8].try_into().ok()?) as usize;
        let level = i32::from_ne_bytes(control[at + 8..at + 12].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[at + 12..at + 16].try_into().ok()?);
        if len < header || at + len > control.len() {
            return None;
        }
        if level == SOL_UDP && kind == UDP_GRO && len >= header + 4 {
            let size = i32::from_ne_bytes(control[at + header..at + header + 4].try_into().ok()?);
            return u16::try_from(size).ok();
        }
        at += len.div_ceil(8) * 8;
    }
    None
}
