//! Padding of transport plaintext, per suite. WireGuard zero-pads the inner packet to a
//! multiple of 16 bytes before sealing (whitepaper section 5.4.6, "P is padded"), never beyond
//! the tunnel's MTU; the receiver finds the packet's end in its IP header and ignores the
//! zeros. The native suite does not pad: it costs up to 15 bytes a packet and the suite never
//! promised to hide lengths (`docs/protocol.md`, "What is not protected").

use super::suite::Suite;

/// Plaintext is padded to a multiple of this many bytes. WireGuard whitepaper section 5.4.6;
/// wireguard-go `device/constants.go` `PaddingMultiple`.
pub const PADDING_MULTIPLE: usize = 16;

/// How the plaintext of a peer's transport messages is padded: fixed for the peer's life, so
/// the data path branches on it and calls nothing dynamic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Sealed as it is (native suite).
    #[default]
    None,
    /// WireGuard's rule ([`wireguard_padded_len`]) under the tunnel MTU `mtu`.
    WireGuard {
        /// The inner MTU the padding never crosses.
        mtu: u16,
    },
}

impl Padding {
    /// The padding of a peer of `suite` on a tunnel of inner MTU `mtu`.
    pub fn for_suite(suite: Suite, mtu: u16) -> Padding {
        match suite {
            // Not padded: see the module's documentation.
            Suite::Native => Padding::None,
            Suite::WireGuard => Padding::WireGuard { mtu },
        }
    }

    /// The plaintext length a packet of `len` bytes is sealed with: `len` and then zeros.
    /// Never less than `len`; 0 (a keepalive) stays 0.
    #[inline]
    pub fn padded_len(self, len: usize) -> usize {
        match self {
            Padding::None => len,
            Padding::WireGuard { mtu } => wireguard_padded_len(len, usize::from(mtu)),
        }
    }
}

/// `len` plus wireguard-go's `calculatePaddingSize(len, mtu)` (`device/send.go`): round up to
/// a multiple of [`PADDING_MULTIPLE`] but not beyond `mtu`; a packet longer than `mtu` has
/// only its last `len % mtu` bytes rounded so (within the next `mtu`); `mtu` 0 rounds without
/// a cap.
#[inline]
pub fn wireguard_padded_len(len: usize, mtu: usize) -> usize {
    let round_up = |n: usize| n.next_multiple_of(PADDING_MULTIPLE);
    if mtu == 0 {
        return round_up(len);
    }
    let last_unit = if len > mtu { len % mtu } else { len };
    len + round_up(last_unit).min(mtu) - last_unit
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wireguard-go's `calculatePaddingSize`, transcribed line by line, to test against.
    fn calculate_padding_size(packet_size: usize, mtu: usize) -> usize {
        let mut last_unit = packet_size;
        if mtu == 0 {
            return ((last_unit + PADDING_MULTIPLE - 1) & !(PADDING_MULTIPLE - 1)) - last_unit;
        }
        if last_unit > mtu {
            last_unit %= mtu;
        }
        let mut padded_size = (last_unit + PADDING_MULTIPLE - 1) & !(PADDING_MULTIPLE - 1);
        if padded_size > mtu {
            padded_size = mtu;
        }
        padded_size - last_unit
    }

    #[test]
    fn wireguard_padding_at_the_edges_of_a_1420_mtu() {
        let padding = Padding::for_suite(Suite::WireGuard, 1420);
        for (len, padded) in [
            (0, 0),
            (1, 16),
            (15, 16),
            (16, 16),
            (17, 32),
            (1408, 1408),
            // 1409 and 1419 round to 1424, past the MTU: capped at 1420.
            (1409, 1420),
            (1419, 1420),
            (1420, 1420),
            // Longer than the MTU: the last 1 byte is rounded, to 16.
            (1421, 1436),
            (2840, 2840),
        ] {
            assert_eq!(padding.padded_len(len), padded, "len {len}");
        }
    }

    #[test]
    fn wireguard_padding_under_an_mtu_that_is_not_a_multiple_of_16() {
        let padding = Padding::WireGuard { mtu: 1419 };
        for (len, padded) in [
            (0, 0),
            (1, 16),
            (15, 16),
            (16, 16),
            (17, 32),
            (1408, 1408),
            (1409, 1419),
            (1418, 1419),
            (1419, 1419),
            (1420, 1420 + 15),
        ] {
            assert_eq!(padding.padded_len(len), padded, "len {len}");
        }
    }

    #[test]
    fn wireguard_padding_is_wireguard_gos_for_every_length() {
        for mtu in [0, 1, 16, 1280, 1419, 1420, 1500, 1920] {
            for len in 0..=4 * 1920 {
                let padded = wireguard_padded_len(len, mtu);
                assert_eq!(
                    padded - len,
                    calculate_padding_size(len, mtu),
                    "len {len} mtu {mtu}"
                );
                if len <= mtu || mtu == 0 {
                    let within = if mtu == 0 { usize::MAX } else { mtu };
                    assert!(
                        padded.is_multiple_of(PADDING_MULTIPLE) || padded == within,
                        "len {len} mtu {mtu}: {padded}"
                    );
                }
            }
            // Never shorter for a longer packet: a train's first segment, the longest, has
            // the longest padded length.
            for len in 1..=4 * 1920 {
                assert!(wireguard_padded_len(len - 1, mtu) <= wireguard_padded_len(len, mtu));
            }
        }
    }

    #[test]
    fn the_native_suite_is_not_padded() {
        let padding = Padding::for_suite(Suite::Native, 1420);
        assert_eq!(padding, Padding::None);
        for len in [0, 1, 15, 17, 1419, 1420, 1421] {
            assert_eq!(padding.padded_len(len), len);
        }
    }
}
