//! `report.md` from `results.json` (also `bench-harness report DIR` to redo it).

use serde_json::Value;

use crate::report::{metrics_table, rows_table, Metric};

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

pub fn metrics_from(results: &Value) -> Vec<Metric> {
    results["metrics"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    Some(Metric::new(
                        m["scenario"].as_str()?,
                        m["system"].as_str()?,
                        m["value"].as_f64()?,
                        m["unit"].as_str()?,
                        m["higher_is_better"].as_bool()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn percentile_row(label: &str, p: &Value) -> Vec<String> {
    vec![
        label.to_string(),
        p["count"].to_string(),
        f(&p["p50_us"], 1),
        f(&p["p90_us"], 1),
        f(&p["p99_us"], 1),
        f(&p["p99_9_us"], 1),
        f(&p["max_us"], 1),
    ]
}

pub fn report_markdown(r: &Value) -> String {
    let m = &r["machine"];
    let p = &r["params"];
    let mut out = String::from("# concentrator benchmark report\n\n");
    out += &format!(
        "- machine: {} × {}, kernel {}\n- load average at start / end: {} / {}\n- versions: {}\n- parameters: {}\n- elapsed: {} s\n\n",
        m["nproc"], m["cpu_model"].as_str().unwrap_or("?"), m["kernel"].as_str().unwrap_or("?"),
        m["loadavg_start"].as_str().unwrap_or("?"), m["loadavg_end"].as_str().unwrap_or("?"),
        m["versions"], p, f(&r["elapsed_s"], 0),
    );
    out +=
        "Everything (client, tunnel ends, backend, load tools) shares the same cores: figures are \
            relative, not what the same software does on separate hosts.\n\n";
    out += "## End to end (client ns → server ns → backend ns)\n\n";
    out +=
        "`plain` is routing without a tunnel: the ceiling. Throughput is iperf3's receiver side; \
            UDP is 64-byte payloads at `-b 0`; round trips are one 64-byte UDP probe at a time, \
            1 ms apart, `rtt loaded` with an iperf3 TCP upload running meanwhile.\n\n";
    out += &metrics_table(&metrics_from(r));
    if let Some(w) = r["details"].get("concentrator/server_worker_latency") {
        out += "\n### concentrator workers' own latency (batch received → sent, whole e2e run)\n\n";
        let mut rows = Vec::new();
        if let Some(ws) = w["workers"].as_array() {
            for x in ws {
                rows.push(percentile_row(
                    &format!("worker {}", x["worker"]),
                    &x["percentiles"],
                ));
            }
        }
        rows.push(percentile_row("all", &w["all"]));
        out += &rows_table(
            &[
                "",
                "packets",
                "p50 µs",
                "p90 µs",
                "p99 µs",
                "p99.9 µs",
                "max µs",
            ],
            &rows,
        );
    }
    if let Some(runs) = r["loadgen"].as_array() {
        out += "\n## Headend alone: emulated clients (bench-harness loadgen)\n\n";
        out += "Each emulated client seals 64-byte-payload UDP/IPv4 packets to the backend, which \
                echoes them; the load generator decrypts the echoes. One load-generator thread.\n\n";
        let mut rows = Vec::new();
        for x in runs {
            let lg = &x["loadgen"];
            let sk = &x["backend_sink"];
            let wl = &x["server_worker_latency"]["all"];
            let kpps = |v: &Value| {
                v.as_f64()
                    .map(|v| format!("{:.1}", v / 1e3))
                    .unwrap_or("–".into())
            };
            rows.push(vec![
                x["clients"].to_string(),
                x["workers"].to_string(),
                f(&lg["connect_s"], 2),
                kpps(&lg["sent_pps"]),
                kpps(&sk["pps"]),
                kpps(&lg["echo_pps"]),
                f(&wl["p50_us"], 1),
                f(&wl["p99_us"], 1),
                f(&wl["p99_9_us"], 1),
                f(&x["server_cpu_per_packet_us"]["total"], 2),
                f(&x["server_cpu_per_packet_us"]["user"], 2),
                f(&x["server_cpu_per_packet_us"]["system"], 2),
            ]);
        }
        out += &rows_table(
            &[
                "clients",
                "workers",
                "connect all (s)",
                "sent kpps",
                "backend received kpps",
                "echoes decrypted kpps",
                "worker p50 µs",
                "worker p99 µs",
                "worker p99.9 µs",
                "server cpu µs/packet",
                "user",
                "system",
            ],
            &rows,
        );
        out +=
            "\nServer CPU per packet: the server process's own CPU time (every thread, user and \
                system; kernel work done in other contexts, such as softirqs on other cores, is \
                not in it) during the blast, divided by the packets it carried both ways (those \
                the backend received plus the echoes the generator decrypted).\n";
    }
    if let Some(runs) = r["handshakes"].as_array() {
        out += "\n## Handshakes per second\n\n";
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|x| {
                let lg = &x["loadgen"];
                vec![
                    x["keys"].to_string(),
                    x["in_flight"].to_string(),
                    x["workers"].to_string(),
                    f(&lg["handshakes_per_s"], 0),
                    lg["initiations"].to_string(),
                    lg["cookie_replies"].to_string(),
                    lg["timeouts"].to_string(),
                ]
            })
            .collect();
        out += &rows_table(
            &[
                "keys",
                "in flight",
                "workers",
                "handshakes/s",
                "initiations",
                "cookie replies",
                "timeouts (1 s)",
            ],
            &rows,
        );
    }
    if let Some(ps) = r["profiles"].as_array().filter(|a| !a.is_empty()) {
        out += "\n## CPU profiles of the server during a TCP upload and download (perf, self time)\n\n";
        for x in ps {
            out += &format!(
                "### {}, {} ({} Gbit/s while profiled)\n\n```\n",
                x["system"].as_str().unwrap_or("?"),
                x["direction"].as_str().unwrap_or("up"),
                f(&x["tcp_gbps_during_profile"], 2)
            );
            if let Some(lines) = x["top_self"].as_array() {
                for l in lines {
                    out += l.as_str().unwrap_or("");
                    out.push('\n');
                }
            }
            out += "```\n\n";
        }
    }
    if let Some(e) = r["errors"].as_object().filter(|e| !e.is_empty()) {
        out += "\n## Errors\n\n";
        for (k, v) in e {
            out += &format!("- {k}: {}\n", v.as_str().unwrap_or(""));
        }
    }
    out += "\n## Plots\n\n![latency](latency.png)\n![throughput](throughput.png)\n![pps](pps.png)\n![loadgen](loadgen.png)\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn report_renders_every_section() {
        let r = json!({
            "machine": {"nproc": 2, "cpu_model": "x", "kernel": "Linux", "versions": {}},
            "params": {"quick": true},
            "metrics": [
                {"scenario": "tcp 1 stream up", "system": "plain", "value": 10.0, "unit": "Gbit/s", "higher_is_better": true},
                {"scenario": "tcp 1 stream up", "system": "concentrator", "value": 5.0, "unit": "Gbit/s", "higher_is_better": true},
            ],
            "loadgen": [{"clients": 100, "workers": 2, "loadgen": {"sent_pps": 2000.0, "echo_pps": 1000.0, "connect_s": 0.5},
                         "backend_sink": {"pps": 1500.0}, "server_worker_latency": {"all": {"p50_us": 10.0}}}],
            "handshakes": [{"keys": 100, "in_flight": 64, "workers": 2, "loadgen": {"handshakes_per_s": 1234.0}}],
            "errors": {"boringtun": "not installed"},
        });
        let md = report_markdown(&r);
        assert!(md.contains("5.00 (0.50× of plain)"), "{md}");
        assert!(
            md.contains("| 100 | 2 | 0.50 | 2.0 | 1.5 | 1.0 | 10.0 | – | – |"),
            "{md}"
        );
        assert!(md.contains("| 1234 |"), "{md}");
        assert!(md.contains("- boringtun: not installed"), "{md}");
    }
}
