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
        out += "Each emulated client sends UDP/IPv4 packets of the given size to the backend. \
                `presealed-*`: every datagram sealed before the timed loop with consecutive \
                counters, sent with sendmmsg (`-mmsg`, 1024 per call) or UDP_SEGMENT (`-gso`); \
                the backend only counts. `seal-each` (the first generator): sealed one by one, \
                64 per call, the backend echoes and the generator decrypts the echoes. One \
                load-generator thread.\n\n";
        let mut rows = Vec::new();
        let kpps = |v: &Value| {
            v.as_f64()
                .map(|v| format!("{:.1}", v / 1e3))
                .unwrap_or("–".into())
        };
        for x in runs {
            let lg = &x["loadgen"];
            let sk = &x["backend_sink"];
            let per = &x["cpu_per_packet_us"];
            rows.push(vec![
                x["blast"].as_str().unwrap_or("seal-each").to_string(),
                // Runs from before the size was a parameter: 64-byte UDP payloads.
                x["packet_bytes"].as_u64().unwrap_or(92).to_string(),
                x["clients"].to_string(),
                x["workers"].to_string(),
                f(&lg["connect_s"], 2),
                kpps(&lg["sent_pps"]),
                kpps(&sk["pps"]),
                kpps(&lg["echo_pps"]),
                f(&per["server"]["total"], 2),
                f(&per["server"]["user"], 2),
                f(&per["server"]["system"], 2),
                f(&lg["server_cpu"]["cores"], 2),
                f(&lg["server_threads"]["waiting_cores"], 2),
                f(&lg["generator_cpu"]["cores"], 2),
                f(&lg["sink_cpu"]["cores"], 2),
                f(&x["other_cores"], 2),
                f(&per["generator"]["total"], 2),
            ]);
        }
        out += &rows_table(
            &[
                "blast",
                "IP bytes",
                "clients",
                "workers",
                "connect all (s)",
                "offered kpps",
                "backend received kpps",
                "echoes kpps",
                "server µs/packet",
                "user",
                "system",
                "server cores",
                "server waiting",
                "generator cores",
                "sink cores",
                "other cores",
                "generator µs/sent",
            ],
            &rows,
        );
        out += "\nServer µs/packet: the server process's own CPU time (every thread, user and \
                system; kernel work done in other contexts, such as the receive softirq of the \
                generator's sends, is not in it) during the blast, divided by the packets it \
                carried (those the backend received, plus the echoes). Cores: CPU seconds per \
                second of the blast, per process; server waiting: cores' worth of time its threads \
                were runnable but waited for a CPU (schedstat); other cores: the rest of the machine's busy \
                time (softirq threads, anything else running). A server using fewer cores than \
                it has workers is starved, not saturated: its rate is then set by its share of \
                the shared cores, and its µs/packet is the figure to compare.\n";
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
                         "backend_sink": {"pps": 1500.0}, "server_worker_latency": {"all": {"p50_us": 10.0}}},
                        {"blast": "presealed-mmsg", "packet_bytes": 1420, "clients": 1, "workers": 1,
                         "loadgen": {"sent_pps": 300000.0, "connect_s": 0.25,
                                     "server_cpu": {"cores": 0.9}, "generator_cpu": {"cores": 0.5},
                                     "server_threads": {"waiting_cores": 0.4},
                                     "sink_cpu": {"cores": 0.25}},
                         "other_cores": 0.35,
                         "backend_sink": {"pps": 200000.0},
                         "cpu_per_packet_us": {"server": {"total": 4.5, "user": 1.5, "system": 3.0},
                                               "generator": {"total": 1.25}}}],
            "handshakes": [{"keys": 100, "in_flight": 64, "workers": 2, "loadgen": {"handshakes_per_s": 1234.0}}],
            "errors": {"boringtun": "not installed"},
        });
        let md = report_markdown(&r);
        assert!(md.contains("5.00 (0.50× of plain)"), "{md}");
        assert!(
            md.contains("| seal-each | 92 | 100 | 2 | 0.50 | 2.0 | 1.5 | 1.0 | – | – | – |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| presealed-mmsg | 1420 | 1 | 1 | 0.25 | 300.0 | 200.0 | – | 4.50 | 1.50 | 3.00 \
                 | 0.90 | 0.40 | 0.50 | 0.25 | 0.35 | 1.25 |"
            ),
            "{md}"
        );
        assert!(md.contains("| 1234 |"), "{md}");
        assert!(md.contains("- boringtun: not installed"), "{md}");
    }
}
