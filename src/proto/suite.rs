//! Which protocol a peer speaks. One UDP port serves both: an initiation's mac1 tells which
//! suite it was made for, and every later message is found by its receiver index.

/// The handshake and transport construction a peer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Suite {
    /// This project's suite (`docs/protocol.md`): Noise_IKpsk2_25519_AESGCM_SHA256, AES-256-GCM
    /// transport, the server assigns the client's addresses in the handshake.
    #[default]
    Native,
    /// WireGuard as its whitepaper and the reference implementations define it:
    /// Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, ChaCha20-Poly1305 transport; clients set their
    /// own addresses.
    WireGuard,
}

impl Suite {
    /// The name used in configuration files, `show` and logs.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Native => "native",
            Suite::WireGuard => "wireguard",
        }
    }

    /// The suite a configuration name stands for.
    pub fn from_name(name: &str) -> Option<Suite> {
        match name {
            "native" => Some(Suite::Native),
            "wireguard" => Some(Suite::WireGuard),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for suite in [Suite::Native, Suite::WireGuard] {
            assert_eq!(Suite::from_name(suite.name()), Some(suite));
        }
        assert_eq!(Suite::from_name("WireGuard"), None);
        assert_eq!(Suite::from_name(""), None);
        assert_eq!(Suite::default(), Suite::Native);
    }
}
