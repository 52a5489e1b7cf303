//! The control socket's protocol: one JSON request per connection, one JSON line back, typed on
//! both ends (the server's `socket` module and the CLI share these types).
//!
//! Requests carry `"cmd"` (`show`, `peer_add`, `peer_remove`, `reload`, `peers`, `fleet`,
//! `registry_import`); every answer carries
//! `"ok"`, and a failure `"error"` with what went wrong. Keys travel as base64 text, addresses as
//! text, so the JSON stays readable for scripts that talk to the socket directly.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Peers in one `show` page by default.
pub const DEFAULT_PAGE: usize = 50;
/// Most peers in one `show` page.
pub const MAX_PAGE: usize = 10_000;

fn default_page() -> usize {
    DEFAULT_PAGE
}

/// What the operator asks the running server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The summary and one page of peers, in address order.
    Show {
        /// Peers to skip.
        #[serde(default)]
        offset: usize,
        /// Peers in the page (at most [`MAX_PAGE`]).
        #[serde(default = "default_page")]
        limit: usize,
    },
    /// Add a peer live.
    PeerAdd {
        /// Its base64 public key.
        public_key: String,
        /// A fixed IPv4 address; none: from the pool.
        #[serde(default)]
        address: Option<Ipv4Addr>,
        /// A fixed IPv6 address; none: from the pool when the server has IPv6.
        #[serde(default)]
        address6: Option<Ipv6Addr>,
        /// Its base64 pre-shared key.
        #[serde(default)]
        psk: Option<String>,
        /// Networks behind the peer, routed to it (`allowed_ips` of the config file). Left
        /// out of the JSON when empty, so a server without sites understands the request.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        allowed_ips: Vec<IpNet>,
        /// The protocol it speaks (`native` or `wireguard`); none: native. Left out of the
        /// JSON when none, so an older server understands the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
    },
    /// Remove a peer live.
    PeerRemove {
        /// Its base64 public key.
        public_key: String,
    },
    /// Re-read the configuration file and apply the peer differences.
    Reload,
    /// Every running peer (or only `public_key`) as it runs, pre-shared keys included: for
    /// `concentrator save` and `concentrator peer config`. The socket is the root's (0600).
    Peers {
        /// Only this peer (an unknown key is refused).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        public_key: Option<String>,
    },
    /// The live headends of the fleet (`show --fleet`).
    Fleet,
    /// Move peers into the fleet's registry (`registry import`).
    RegistryImport {
        /// The peers, with the addresses their file gave them.
        peers: Vec<crate::ops::registry::ImportPeer>,
    },
}

/// Latency percentiles of a histogram, in nanoseconds (only `count` when it is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// The percentiles, when there are samples.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub quantiles: Option<Quantiles>,
}

/// Percentiles and maximum of a non-empty histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantiles {
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl LatencySummary {
    /// The summary of `h`.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            quantiles: Some(Quantiles {
                p50_ns: h.value_at_quantile(0.5),
                p90_ns: h.value_at_quantile(0.9),
                p99_ns: h.value_at_quantile(0.99),
                p999_ns: h.value_at_quantile(0.999),
                max_ns: h.max(),
            }),
        }
    }
}

/// One worker's counters, rates and latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub worker: usize,
    pub udp_rx_pps: f64,
    pub udp_tx_pps: f64,
    pub tun_rx_pps: f64,
    pub tun_tx_pps: f64,
    pub udp_rx_packets: u64,
    pub udp_rx_bytes: u64,
    pub udp_tx_packets: u64,
    pub udp_tx_bytes: u64,
    /// Sends that carried the datagrams sent (a `UDP_SEGMENT` send carries several); an older
    /// server leaves it out.
    #[serde(default)]
    pub udp_tx_sends: u64,
    /// Packets that arrived with an ECN combination RFC 6040 §4.2 marks "(!!!)": something on
    /// the path rewrites ECN; an older server leaves it out.
    #[serde(default)]
    pub ecn_alarms: u64,
    pub tun_rx_packets: u64,
    pub tun_rx_bytes: u64,
    pub tun_tx_packets: u64,
    pub tun_tx_bytes: u64,
    pub relayed_packets: u64,
    pub drops_total: u64,
    /// Drops by reason name (every reason, zeros included).
    pub drops: BTreeMap<String, u64>,
    pub latency: LatencySummary,
    /// The egress queue (downloads: TUN reads waiting to be sealed and sent); an older server
    /// leaves it out.
    #[serde(default)]
    pub queue: QueueReport,
}

/// A worker's egress queue: per-flow fair queue with CoDel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// TUN reads (packets or super-packets) queued, and their bytes.
    pub queued_packets: u64,
    pub queued_bytes: u64,
    /// Let through (marked ones included).
    pub sent_packets: u64,
    /// Marked CE by CoDel instead of dropped (ECN-capable flows).
    pub ce_marks: u64,
    /// Dropped by CoDel: the flow's queue delay stayed above the target.
    pub aqm_drops: u64,
    /// Dropped because the queue was full (bytes or packets).
    pub overflow_drops: u64,
    /// Queued now.
    pub backlog_packets: u64,
    pub backlog_bytes: u64,
    /// The most bytes queued at once.
    pub peak_backlog_bytes: u64,
    /// Queue delay of the packets let through: mean, an upper bound of the 99th percentile
    /// (power-of-two buckets), maximum, in nanoseconds.
    pub delay_mean_ns: u64,
    pub delay_p99_ns: u64,
    pub delay_max_ns: u64,
}

/// The handshake counters of the whole server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeReport {
    pub completed: u64,
    /// Cookie replies sent, by the control thread and by the workers.
    pub cookie_replies: u64,
    pub failed: u64,
    /// Failures by reason name (every reason, zeros included).
    pub failed_by_reason: BTreeMap<String, u64>,
    pub latency: LatencySummary,
}

/// One peer as `show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    pub public_key: String,
    /// The protocol it speaks: "native" or "wireguard" (`proto::suite::Suite::name`); an
    /// older server leaves it out: native.
    #[serde(default = "native")]
    pub protocol: String,
    pub endpoint: Option<String>,
    pub address: String,
    pub address6: Option<String>,
    /// Networks routed to the peer besides its addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
    pub latest_handshake_secs_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The answer to [`Request::Show`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShowReply {
    pub interface: String,
    pub public_key: String,
    pub listen_port: u16,
    pub uptime_secs: u64,
    pub workers: Vec<WorkerReport>,
    pub handshakes: HandshakeReport,
    pub peers_total: usize,
    /// Peers with a usable session.
    pub sessions: usize,
    pub offset: usize,
    pub limit: usize,
    pub peers: Vec<PeerReport>,
    /// The fleet registry's state, when the server has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<crate::ops::registry::RegistryReport>,
}

/// The answer to [`Request::Fleet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReply {
    /// The fleet's name.
    pub fleet: String,
    /// The headends registered now, by name.
    pub headends: Vec<crate::ops::registry::FleetMember>,
}

/// The answer to [`Request::PeerAdd`]: the peer and the addresses it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAdded {
    pub public_key: String,
    pub address: String,
    pub address6: Option<String>,
    /// Networks routed to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
    /// What did not go as it should, one line each (a kernel route the host already had);
    /// the peer was added all the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn native() -> String {
    crate::proto::suite::Suite::Native.name().to_string()
}

/// One peer of a [`PeersReply`]: all a config file or a client config needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDetail {
    pub public_key: String,
    /// Its IPv4 address (fixed or from the pool).
    pub address: Ipv4Addr,
    /// Its IPv6 address, when the server has IPv6.
    pub address6: Option<Ipv6Addr>,
    /// Networks routed to it besides its addresses.
    #[serde(default)]
    pub allowed_ips: Vec<IpNet>,
    /// `native` or `wireguard`.
    pub protocol: String,
    /// Its base64 pre-shared key, when it has one.
    #[serde(default)]
    pub psk: Option<String>,
    /// The routes it is pushed (top-level `push_routes`, then its own).
    #[serde(default)]
    pub push_routes: Vec<IpNet>,
    /// The DNS servers it is pushed.
    #[serde(default)]
    pub push_dns: Vec<std::net::IpAddr>,
}

/// The answer to [`Request::Peers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersReply {
    /// The server's public key.
    pub public_key: String,
    /// The configuration file the server reloads from (absolute).
    pub config_file: std::path::PathBuf,
    /// Where clients reach the server (`public_endpoint`), if the config says.
    pub public_endpoint: Option<String>,
    /// The client subnets: IPv4, then IPv6 when the server has it.
    pub subnets: Vec<IpNet>,
    /// In address order.
    pub peers: Vec<PeerDetail>,
}

/// The answer to [`Request::PeerRemove`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRemoved {
    pub public_key: String,
}

/// A peer a reload changed, and what changed (`psk`, `address`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedPeer {
    pub public_key: String,
    pub what: Vec<String>,
}

/// The answer to [`Request::Reload`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<ChangedPeer>,
    pub unchanged: usize,
    /// Settings that differ from the running ones but take effect only after a restart.
    pub restart_needed: Vec<String>,
    /// Problems with kernel routes, one line each (the peers were changed all the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Every answer on the wire: `"ok"`, then either the answer's own fields or `"error"`.
#[derive(Debug, Serialize)]
struct Envelope<'a, T: Serialize> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    body: Option<&'a T>,
}

/// The JSON line of a successful answer.
pub fn encode_ok<T: Serialize>(body: &T) -> Vec<u8> {
    encode(&Envelope {
        ok: true,
        error: None,
        body: Some(body),
    })
}

/// The JSON line of a refusal.
pub fn encode_error(error: &str) -> Vec<u8> {
    encode(&Envelope::<()> {
        ok: false,
        error: Some(error),
        body: None,
    })
}

fn encode<T: Serialize>(envelope: &Envelope<'_, T>) -> Vec<u8> {
    // Serializing these plain structs cannot fail (string keys, no maps with other keys).
    let mut line = serde_json::to_vec(envelope)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"answer not serializable"}"#.to_vec());
    line.push(b'\n');
    line
}

/// Why an answer could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    /// The server refused the request and said why.
    #[error("{0}")]
    Refused(String),
    /// The answer is not what this request expects (a server of another version?).
    #[error(
        "the server's answer is not understood ({0}); are the CLI and the server the same version?"
    )]
    Malformed(String),
}

/// Reads an answer line: the body when `"ok"` is true, the server's reason otherwise.
pub fn decode_answer<T: DeserializeOwned>(line: &str) -> Result<T, AnswerError> {
    #[derive(Deserialize)]
    struct Status {
        ok: bool,
        #[serde(default)]
        error: Option<String>,
    }
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| AnswerError::Malformed(e.to_string()))?;
    let status: Status =
        serde_json::from_value(value.clone()).map_err(|e| AnswerError::Malformed(e.to_string()))?;
    if !status.ok {
        return Err(AnswerError::Refused(
            status.error.unwrap_or_else(|| "request failed".into()),
        ));
    }
    serde_json::from_value(value).map_err(|e| AnswerError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_wire_names() {
        let show: Request = serde_json::from_str(r#"{"cmd":"show"}"#).unwrap();
        assert_eq!(
            show,
            Request::Show {
                offset: 0,
                limit: DEFAULT_PAGE
            }
        );
        let add: Request = serde_json::from_str(
            r#"{"cmd":"peer_add","public_key":"k","address":"10.66.0.9","address6":null}"#,
        )
        .unwrap();
        assert_eq!(
            add,
            Request::PeerAdd {
                public_key: "k".into(),
                address: Some(Ipv4Addr::new(10, 66, 0, 9)),
                address6: None,
                psk: None,
                allowed_ips: Vec::new(),
                protocol: None,
            }
        );
        let add: Request = serde_json::from_str(
            r#"{"cmd":"peer_add","public_key":"k","allowed_ips":["10.99.0.0/24","fd99::/48"]}"#,
        )
        .unwrap();
        let Request::PeerAdd { allowed_ips, .. } = &add else {
            panic!("{add:?}");
        };
        assert_eq!(allowed_ips.len(), 2);
        let text = serde_json::to_string(&add).unwrap();
        assert!(
            text.contains(r#""allowed_ips":["10.99.0.0/24","fd99::/48"]"#),
            "{text}"
        );
        let text = serde_json::to_string(&Request::Reload).unwrap();
        assert_eq!(text, r#"{"cmd":"reload"}"#);
        let text = serde_json::to_string(&Request::PeerRemove {
            public_key: "k".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"cmd":"peer_remove","public_key":"k"}"#);
        let peers: Request = serde_json::from_str(r#"{"cmd":"peers"}"#).unwrap();
        assert_eq!(peers, Request::Peers { public_key: None });
        let add: Request =
            serde_json::from_str(r#"{"cmd":"peer_add","public_key":"k","protocol":"wireguard"}"#)
                .unwrap();
        let Request::PeerAdd { protocol, .. } = &add else {
            panic!("{add:?}");
        };
        assert_eq!(protocol.as_deref(), Some("wireguard"));
    }

    #[test]
    fn unknown_commands_and_fields_are_refused() {
        let e = serde_json::from_str::<Request>(r#"{"cmd":"shutdown"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        let e = serde_json::from_str::<Request>(r#"{"cmd":"show","limt":5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = serde_json::from_str::<Request>(
            r#"{"cmd":"peer_add","public_key":"k","address":"10.66.0"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("IP"), "{e}");
    }

    #[test]
    fn answers_round_trip_through_the_envelope() {
        let added = PeerAdded {
            public_key: "k".into(),
            address: "10.66.0.9".into(),
            address6: None,
            allowed_ips: Vec::new(),
            warnings: Vec::new(),
        };
        let line = encode_ok(&added);
        assert_eq!(line.last(), Some(&b'\n'));
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.starts_with(r#"{"ok":true,"public_key":"k""#), "{text}");
        assert_eq!(decode_answer::<PeerAdded>(text).unwrap(), added);
    }

    #[test]
    fn refusals_carry_the_servers_reason() {
        let line = encode_error("no such peer");
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(text, "{\"ok\":false,\"error\":\"no such peer\"}\n");
        assert_eq!(
            decode_answer::<PeerRemoved>(text),
            Err(AnswerError::Refused("no such peer".into()))
        );
        assert!(matches!(
            decode_answer::<PeerRemoved>(r#"{"ok":true}"#),
            Err(AnswerError::Malformed(_))
        ));
        assert!(matches!(
            decode_answer::<PeerRemoved>("not json"),
            Err(AnswerError::Malformed(_))
        ));
    }

    #[test]
    fn an_empty_histogram_shows_only_its_count() {
        let h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let text = serde_json::to_string(&LatencySummary::of(&h)).unwrap();
        assert_eq!(text, r#"{"count":0}"#);
        let mut h = h;
        h.record(1000).unwrap();
        let summary = LatencySummary::of(&h);
        let back: LatencySummary =
            serde_json::from_str(&serde_json::to_string(&summary).unwrap()).unwrap();
        assert_eq!(back, summary);
        assert_eq!(back.quantiles.map(|q| q.max_ns >= 1000), Some(true));
    }
}
