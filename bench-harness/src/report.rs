//! The pure parts: metrics, ratios, percentiles, iperf3 JSON, the server config for K peers
//! and the Markdown report. No I/O here, so all of it is unit-tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The systems, in report order. `plain` is the ceiling (routing, no tunnel).
pub const SYSTEMS: [&str; 6] = [
    "plain",
    "concentrator",
    "concentrator-no-offloads",
    // The concentrator's WireGuard mode, with the same wireguard-go client as "wireguard-go".
    "concentrator-wg",
    "wireguard-go",
    "boringtun",
];

/// One measured figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// What was measured, e.g. "tcp 1 stream up".
    pub scenario: String,
    /// One of [`SYSTEMS`].
    pub system: String,
    pub value: f64,
    pub unit: String,
    /// True for throughput-like figures, false for latencies and loss.
    pub higher_is_better: bool,
}

impl Metric {
    pub fn new(scenario: &str, system: &str, value: f64, unit: &str, higher: bool) -> Metric {
        Metric {
            scenario: scenario.to_string(),
            system: system.to_string(),
            value,
            unit: unit.to_string(),
            higher_is_better: higher,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "system": self.system,
            "value": self.value,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
        })
    }
}

/// `value / base`, or `None` when the base is zero or either is not finite.
pub fn ratio(value: f64, base: f64) -> Option<f64> {
    (base != 0.0 && value.is_finite() && base.is_finite()).then(|| value / base)
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// Percentiles of a histogram of nanoseconds.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let us = |ns: u64| ns as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        mean_us: h.mean() / 1000.0,
    }
}

impl Percentiles {
    /// The named percentiles, in report order.
    pub fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("p50", self.p50_us),
            ("p90", self.p90_us),
            ("p99", self.p99_us),
            ("p99.9", self.p999_us),
            ("max", self.max_us),
        ]
    }

    pub fn to_json(self) -> Value {
        json!({
            "count": self.count, "p50_us": self.p50_us, "p90_us": self.p90_us,
            "p99_us": self.p99_us, "p99_9_us": self.p999_us, "max_us": self.max_us,
            "mean_us": self.mean_us,
        })
    }
}

/// A histogram as HdrHistogram V2, base64 (the format of `CONCENTRATOR_LATENCY_DUMP`).
pub fn histogram_to_base64(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn histogram_from_base64(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim())?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("bad HdrHistogram V2: {e:?}"))
}

/// Parses the server's `CONCENTRATOR_LATENCY_DUMP` file: `<worker> <base64>` per line.
pub fn parse_latency_dump(text: &str) -> anyhow::Result<Vec<(usize, Histogram<u64>)>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (id, b64) = l
                .trim()
                .split_once(' ')
                .ok_or_else(|| anyhow::anyhow!("bad dump line {l:?}"))?;
            Ok((id.parse()?, histogram_from_base64(b64)?))
        })
        .collect()
}

/// TCP result of an `iperf3 -J` client run: receiver-side bits per second.
pub fn iperf_tcp_bps(v: &Value) -> Option<f64> {
    let end = v.get("end")?;
    end.get("sum_received")
        .and_then(|s| s.get("bits_per_second"))
        .and_then(Value::as_f64)
}

/// UDP result of an `iperf3 -u -J` client run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpResult {
    pub sent_pps: f64,
    pub received_pps: f64,
    pub loss_percent: f64,
}

/// iperf3 3.12 puts the receiver's view in `end.sum` (newer ones also in `end.sum_received`).
pub fn iperf_udp(v: &Value) -> Option<UdpResult> {
    let end = v.get("end")?;
    let sum = end.get("sum_received").or_else(|| end.get("sum"))?;
    let seconds = sum.get("seconds").and_then(Value::as_f64)?;
    let packets = sum.get("packets").and_then(Value::as_f64)?;
    let lost = sum
        .get("lost_packets")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    if seconds <= 0.0 {
        return None;
    }
    let sent = end
        .get("sum_sent")
        .and_then(|s| s.get("packets"))
        .and_then(Value::as_f64)
        .unwrap_or(packets);
    Some(UdpResult {
        sent_pps: sent / seconds,
        received_pps: (packets - lost).max(0.0) / seconds,
        loss_percent: if packets > 0.0 {
            100.0 * lost / packets
        } else {
            0.0
        },
    })
}

/// The fixed tunnel address of emulated client `i` (0-based): 10.66.0.10 upwards, so
/// 10 000 clients fit the /16 with the server at 10.66.0.1.
pub fn peer_address(i: usize) -> Ipv4Addr {
    let n = u32::from(Ipv4Addr::new(10, 66, 0, 0)) + 10 + i as u32;
    assert!(
        n < u32::from(Ipv4Addr::new(10, 66, 255, 255)),
        "too many peers"
    );
    Ipv4Addr::from(n)
}

/// What goes into the benchmark server's TOML.
pub struct ServerToml<'a> {
    pub private_key_file: &'a str,
    pub listen: Ipv4Addr,
    pub port: u16,
    pub tun_name: &'a str,
    pub workers: usize,
}

/// A server config with one `[[peer]]` per public key, peer `i` at [`peer_address`]`(i)`.
pub fn server_config(s: &ServerToml, peer_public_keys: &[String]) -> String {
    let mut out = format!(
        "private_key_file = \"{}\"\nlisten_port = {}\nlisten_addresses = [\"{}\"]\n\
         address = \"10.66.0.1/16\"\nmtu = 1420\nworkers = {}\ntun_name = \"{}\"\n",
        s.private_key_file, s.port, s.listen, s.workers, s.tun_name
    );
    for (i, key) in peer_public_keys.iter().enumerate() {
        let _ = write!(
            out,
            "\n[[peer]]\npublic_key = \"{key}\"\naddress = \"{}\"\n",
            peer_address(i)
        );
    }
    out
}

/// An IPv4/UDP packet of `payload` bytes from `src` to `dst:port` written at `out[..]`;
/// returns its length. The UDP checksum is left 0 (allowed for IPv4).
pub fn ipv4_udp_packet(
    out: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: usize,
) -> usize {
    let total = 20 + 8 + payload;
    let p = &mut out[..total];
    p.fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let csum = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    total
}

/// The Internet checksum of an IPv4 header whose checksum field is zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn fmt_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into())
}

/// Table of every scenario (rows) by system (columns): the value, then its ratio to plain
/// routing; followed by a table of ratios of each tunnel to the others.
pub fn metrics_table(metrics: &[Metric]) -> String {
    let mut scenarios: Vec<(String, String, bool)> = Vec::new();
    let mut by: BTreeMap<(String, String), f64> = BTreeMap::new();
    for m in metrics {
        if !scenarios.iter().any(|(s, _, _)| *s == m.scenario) {
            scenarios.push((m.scenario.clone(), m.unit.clone(), m.higher_is_better));
        }
        by.insert((m.scenario.clone(), m.system.clone()), m.value);
    }
    let systems: Vec<&str> = SYSTEMS
        .iter()
        .copied()
        .filter(|s| metrics.iter().any(|m| m.system == *s))
        .collect();
    let mut out = String::new();
    let _ = write!(out, "| scenario | unit |");
    for s in &systems {
        let _ = write!(out, " {s} |");
    }
    out.push('\n');
    out.push_str(&"|---".repeat(2 + systems.len()));
    out.push_str("|\n");
    for (sc, unit, _) in &scenarios {
        let _ = write!(out, "| {sc} | {unit} |");
        let base = by.get(&(sc.clone(), "plain".to_string())).copied();
        for s in &systems {
            match by.get(&(sc.clone(), s.to_string())) {
                Some(v) if *s != "plain" && base.is_some() => {
                    let _ = write!(
                        out,
                        " {} ({} of plain) |",
                        fmt_value(*v),
                        fmt_ratio(ratio(*v, base.unwrap()))
                    );
                }
                Some(v) => {
                    let _ = write!(out, " {} |", fmt_value(*v));
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    let tunnels: Vec<&str> = systems.iter().copied().filter(|s| *s != "plain").collect();
    if tunnels.len() >= 2 {
        let pairs: Vec<(&str, &str)> = tunnels
            .iter()
            .enumerate()
            .flat_map(|(i, a)| tunnels[i + 1..].iter().map(move |b| (*a, *b)))
            .collect();
        out.push_str("\nRatios between tunnels (first ÷ second; for latency and loss, lower is better):\n\n| scenario |");
        for (a, b) in &pairs {
            let _ = write!(out, " {a} ÷ {b} |");
        }
        out.push('\n');
        out.push_str(&"|---".repeat(1 + pairs.len()));
        out.push_str("|\n");
        for (sc, _, _) in &scenarios {
            let _ = write!(out, "| {sc} |");
            for (a, b) in &pairs {
                let va = by.get(&(sc.clone(), a.to_string()));
                let vb = by.get(&(sc.clone(), b.to_string()));
                let r = va.zip(vb).and_then(|(x, y)| ratio(*x, *y));
                let _ = write!(out, " {} |", fmt_ratio(r));
            }
            out.push('\n');
        }
    }
    out
}

/// A generic table from rows of (column, value) pairs.
pub fn rows_table(columns: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", columns.join(" | "));
    out.push_str(&"|---".repeat(columns.len()));
    out.push_str("|\n");
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_handles_zero_and_nan() {
        assert_eq!(ratio(5.0, 10.0), Some(0.5));
        assert_eq!(ratio(5.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn percentiles_of_a_known_histogram() {
        let mut h = concentrator::server::latency::latency_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1..1000 µs
        }
        let p = percentiles(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_us - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p90_us - 900.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() <= 1.0, "{p:?}");
        assert!((p.p999_us - 999.0).abs() <= 1.0, "{p:?}");
        assert!((p.max_us - 1000.0).abs() <= 1.0, "{p:?}");
    }

    #[test]
    fn latency_dump_round_trips() {
        let mut a = concentrator::server::latency::latency_histogram();
        a.record(1234).unwrap();
        let mut b = concentrator::server::latency::latency_histogram();
        b.record_n(99_000, 3).unwrap();
        let text = format!(
            "0 {}\n1 {}\n",
            histogram_to_base64(&a),
            histogram_to_base64(&b)
        );
        let parsed = parse_latency_dump(&text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0, 0);
        assert_eq!(parsed[1].1.len(), 3);
        assert_eq!(parsed[0].1.max(), a.max());
        assert!(parse_latency_dump("0 not-base64!").is_err());
    }

    #[test]
    fn server_config_for_k_peers_loads() {
        let dir = std::env::temp_dir().join(format!("bench-harness-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        use concentrator::proto::keys::StaticSecret;
        use concentrator::proto::rng::SeededRandom;
        let mut rng = SeededRandom(7);
        let server = StaticSecret::generate(&mut rng);
        std::fs::write(dir.join("server.key"), server.to_base64().as_bytes()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let keys: Vec<String> = (0..300)
            .map(|_| StaticSecret::generate(&mut rng).public_key().to_string())
            .collect();
        let text = server_config(
            &ServerToml {
                private_key_file: "server.key",
                listen: Ipv4Addr::new(10, 0, 0, 1),
                port: 51820,
                tun_name: "ctrbench0",
                workers: 2,
            },
            &keys,
        );
        std::fs::write(dir.join("server.toml"), &text).unwrap();
        let loaded = concentrator::config::ServerConfig::load(&dir.join("server.toml"));
        let _ = std::fs::remove_dir_all(&dir);
        let (cfg, _warnings) = loaded.map_err(|e| e.to_string()).unwrap();
        assert_eq!(cfg.peers.len(), 300);
        assert_eq!(cfg.peers[0].address, peer_address(0));
        assert_eq!(peer_address(0), Ipv4Addr::new(10, 66, 0, 10));
        assert_eq!(peer_address(9_999), Ipv4Addr::new(10, 66, 39, 25));
        assert_eq!(cfg.peers[299].public_key.to_string(), keys[299]);
    }

    #[test]
    fn udp_packet_is_valid_ipv4() {
        let mut buf = [0u8; 128];
        let n = ipv4_udp_packet(
            &mut buf,
            Ipv4Addr::new(10, 66, 0, 10),
            Ipv4Addr::new(10, 1, 0, 2),
            1000,
            9000,
            64,
        );
        assert_eq!(n, 92);
        assert_eq!(
            ipv4_checksum(&buf[..20]),
            0,
            "checksum over a valid header is 0"
        );
        let ip = concentrator::proto::wire::IpPacket::new_checked(&buf[..n]).unwrap();
        let (src, dst) = (ip.src(), ip.dst());
        assert_eq!(src.to_string(), "10.66.0.10");
        assert_eq!(dst.to_string(), "10.1.0.2");
    }

    #[test]
    fn iperf_json_parsing() {
        let tcp: Value = serde_json::from_str(
            r#"{"end":{"sum_sent":{"bits_per_second":2e9},"sum_received":{"bits_per_second":1.5e9}}}"#,
        )
        .unwrap();
        assert_eq!(iperf_tcp_bps(&tcp), Some(1.5e9));
        let udp: Value = serde_json::from_str(
            r#"{"end":{"sum":{"seconds":2.0,"packets":1000,"lost_packets":100,"lost_percent":10.0}}}"#,
        )
        .unwrap();
        let u = iperf_udp(&udp).unwrap();
        assert_eq!(u.received_pps, 450.0);
        assert_eq!(u.sent_pps, 500.0);
        assert_eq!(u.loss_percent, 10.0);
        assert_eq!(iperf_udp(&json!({"error": "x"})), None);
    }

    #[test]
    fn table_has_ratios_to_plain_and_between_tunnels() {
        let m = vec![
            Metric::new("tcp up", "plain", 10.0, "Gbit/s", true),
            Metric::new("tcp up", "concentrator", 2.0, "Gbit/s", true),
            Metric::new("tcp up", "wireguard-go", 4.0, "Gbit/s", true),
            Metric::new("rtt p50", "concentrator", 50.0, "µs", false),
        ];
        let t = metrics_table(&m);
        assert!(
            t.contains(
                "| tcp up | Gbit/s | 10.00 | 2.00 (0.20× of plain) | 4.00 (0.40× of plain) |"
            ),
            "{t}"
        );
        assert!(t.contains("concentrator ÷ wireguard-go"), "{t}");
        assert!(t.contains("| tcp up | 0.50× |"), "{t}");
        assert!(t.contains("| rtt p50 | µs | – | 50.00 | – |"), "{t}");
    }
}
