//! The headend alone: loadgen blasts (K emulated clients × workers × packet sizes, with the
//! CPU of server, generator and sink) and handshake rates, inside the namespace lab.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use concentrator::proto::keys::StaticSecret;
use concentrator::proto::rng::OsRandom;

use crate::lab::{check_interrupted, Lab, BACKEND, SERVER_UNDERLAY};
use crate::report;
use crate::run::{
    dump_summary, gen_keys, link_gone_after, parse_counters, progress, self_exe, snmp_delta,
    start_concentrator_server, udp_snmp, write_secret, Plan, CTR_PORT, SINK_PORT,
};

/// CPU time per packet during a loadgen blast, in µs: the server's (total, user, system) per
/// packet it carried (each packet crosses it once towards the backend and each echo once
/// back), the generator's per datagram it sent, the sink's per datagram it received.
fn cpu_per_packet(run: &Value) -> Value {
    let lg = &run["loadgen"];
    // Every packet the sink counted crossed the server during the blast (or while it drained
    // its socket at the very end, a few ms of packets at most).
    let at_backend = run["backend_sink"]["received"].as_f64().unwrap_or(0.0);
    let carried = at_backend + lg["echoes"].as_f64().unwrap_or(0.0);
    let sent = lg["sent"].as_f64().unwrap_or(0.0);
    let per = |cpu: &Value, packets: f64| {
        let (Some(user), Some(system)) = (cpu["user_s"].as_f64(), cpu["system_s"].as_f64()) else {
            return Value::Null;
        };
        if packets < 1.0 {
            return Value::Null;
        }
        json!({
            "total": (user + system) * 1e6 / packets,
            "user": user * 1e6 / packets,
            "system": system * 1e6 / packets,
        })
    };
    json!({
        "server": per(&lg["server_cpu"], carried),
        "generator": per(&lg["generator_cpu"], sent),
        "sink": per(&lg["sink_cpu"], at_backend),
    })
}

/// How long the counting sink sleeps when its socket is empty: at 500 kpps about 250 datagrams
/// arrive meanwhile, far below what its 8 MiB receive buffer holds.
const SINK_NAP_US: &str = "500";

/// One headend-alone blast: a fresh server with `k` peers and `w` workers, a sink on the
/// backend (echoing for the first generator only), loadgen in the client namespace.
#[allow(clippy::type_complexity)]
fn loadgen_run(
    lab: &Lab,
    plan: &Plan,
    exe: &str,
    server: &StaticSecret,
    write_cfg: &dyn Fn(usize, usize) -> Result<(PathBuf, PathBuf)>,
    (blast, bytes, k, w): (crate::Blast, usize, usize, usize),
) -> Result<Value> {
    let echo = blast == crate::Blast::SealEach;
    let tag = format!("{}-b{bytes}-k{k}-w{w}", blast.name());
    progress(&format!(
        "loadgen {}: {k} clients, {w} worker(s), {bytes}-byte packets: handshake all, then blast for {} s",
        blast.name(),
        plan.loadgen_seconds
    ));
    let (cfg, kf) = write_cfg(k, w)?;
    let dump = plan
        .out
        .join(format!("concentrator-loadgen-{tag}-latency.hdr"));
    let mut srv =
        start_concentrator_server(lab, plan, &cfg, w, &dump, &format!("lg-server-{tag}"), true)?;
    let connect_timeout = 30 + k as u64 / 100;
    // Sealing ahead takes a few seconds at most (bounded by --pool-mib).
    let budget = connect_timeout + plan.loadgen_seconds + 20;
    let bind = format!("{BACKEND}:{SINK_PORT}");
    let deadline = budget.to_string();
    let mut sink_argv = vec![exe, "sink", "--bind", &bind, "--deadline-s", &deadline];
    sink_argv.extend(["--idle-ms", "1500"]);
    if echo {
        sink_argv.push("--echo");
    } else {
        // Only counting: nap instead of poll, so the server's forwarding of each packet into
        // the backend does not also pay for waking the sink (a real backend sits behind a
        // NIC, whose receive side is not the headend's work).
        sink_argv.extend(["--nap-us", SINK_NAP_US]);
    }
    let mut sink = lab.spawn(&lab.backend, &format!("sink-{tag}"), &sink_argv, &[])?;
    std::thread::sleep(Duration::from_millis(200));
    let backend_before = udp_snmp(lab, &lab.backend);
    let server_before = udp_snmp(lab, &lab.server);
    let rate = plan.blast_rate_pps.map(|r| r.to_string());
    let server_addr = format!("{SERVER_UNDERLAY}:{CTR_PORT}");
    let server_key = server.public_key().to_string();
    let keys_file = kf.to_string_lossy().into_owned();
    let sockets = k.min(16).to_string();
    let seconds = plan.loadgen_seconds.to_string();
    let connect_s = connect_timeout.to_string();
    let server_pid = srv.pid().map(|p| p.to_string()).unwrap_or_default();
    let sink_pid = sink.pid().map(|p| p.to_string()).unwrap_or_default();
    let bytes_s = bytes.to_string();
    let nice = plan.generator_nice.map(|n| n.to_string());
    let mut argv: Vec<&str> = match &nice {
        Some(n) => vec!["nice", "-n", n],
        None => Vec::new(),
    };
    argv.extend([
        exe,
        "loadgen",
        "--server",
        &server_addr,
        "--server-key",
        &server_key,
        "--keys",
        &keys_file,
        "--backend",
        &bind,
        "--sockets",
        &sockets,
        "--duration-s",
        &seconds,
        "--connect-timeout-s",
        &connect_s,
        "--server-pid",
        &server_pid,
        "--sink-pid",
        &sink_pid,
        "--blast",
        blast.name(),
        "--packet-bytes",
        &bytes_s,
    ]);
    if let Some(rate) = &rate {
        argv.extend(["--rate-pps", rate]);
    }
    let out = lab.exec(&lab.client, &argv, Duration::from_secs(budget + 10))?;
    sink.wait(Duration::from_secs(budget + 5));
    srv.stop_with(libc::SIGINT);
    let tun_gone = link_gone_after(lab);
    let lg: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|_| json!({"error": out.stderr.clone()}));
    let sk: Value = serde_json::from_str(sink.stdout().trim())
        .unwrap_or_else(|_| json!({"error": sink.stderr()}));
    let mut run = json!({
        "blast": blast.name(), "packet_bytes": bytes,
        "clients": k, "workers": w,
        "loadgen": lg, "backend_sink": sk,
        "server_counters": parse_counters(&srv.stderr()),
        "server_tun_gone_after_exit_ms": tun_gone,
        "backend_udp_counters": snmp_delta(&backend_before, &udp_snmp(lab, &lab.backend)),
        "server_udp_counters": snmp_delta(&server_before, &udp_snmp(lab, &lab.server)),
        "server_worker_latency": dump_summary(&dump),
    });
    let per_packet = cpu_per_packet(&run);
    let cores = |who: &str| run["loadgen"][who]["cores"].as_f64().unwrap_or(f64::NAN);
    let (server_cores, generator_cores, sink_cores) = (
        cores("server_cpu"),
        cores("generator_cpu"),
        cores("sink_cpu"),
    );
    let busy = run["loadgen"]["machine_cpu_share"]["busy_cores"]
        .as_f64()
        .unwrap_or(f64::NAN);
    // Softirqs in ksoftirqd, and anything else running on the machine.
    let others = busy - server_cores - generator_cores - sink_cores;
    run["other_cores"] = json!(others);
    progress(&format!(
        "  -> offered {:.0} kpps, backend received {:.0} kpps, echoes {:.0} kpps; server µs/packet {:.2} (user {:.2}, system {:.2}); cores used: server {:.2} (waiting for a CPU {:.2}), generator {:.2}, sink {:.2}, others {others:.2}",
        run["loadgen"]["sent_pps"].as_f64().unwrap_or(0.0) / 1e3,
        run["backend_sink"]["pps"].as_f64().unwrap_or(0.0) / 1e3,
        run["loadgen"]["echo_pps"].as_f64().unwrap_or(0.0) / 1e3,
        per_packet["server"]["total"].as_f64().unwrap_or(f64::NAN),
        per_packet["server"]["user"].as_f64().unwrap_or(f64::NAN),
        per_packet["server"]["system"].as_f64().unwrap_or(f64::NAN),
        server_cores,
        run["loadgen"]["server_threads"]["waiting_cores"]
            .as_f64()
            .unwrap_or(f64::NAN),
        generator_cores,
        sink_cores,
    ));
    run["cpu_per_packet_us"] = per_packet;
    Ok(run)
}

/// Loadgen runs: data (K clients × workers) and handshakes.
pub fn headend(lab: &Lab, plan: &Plan, results: &mut serde_json::Map<String, Value>) -> Result<()> {
    let kmax = *plan.loadgen_clients.iter().max().unwrap_or(&1);
    progress(&format!("loadgen: generating {kmax} client keys"));
    let keys = gen_keys(kmax);
    let server = StaticSecret::generate(&mut OsRandom);
    write_secret(&lab.dir.join("lg-server.key"), &server.to_base64())?;
    let exe = self_exe()?;
    let run_no = std::cell::Cell::new(0u32);
    let mut runs = Vec::new();
    // A new TUN name per server start: see `link_gone_after`.
    let write_cfg = |k: usize, workers: usize| -> Result<(PathBuf, PathBuf)> {
        let tun = lab.link_name(&format!("l{}", run_no.get()));
        run_no.set(run_no.get() + 1);
        let pubs: Vec<String> = keys[..k]
            .iter()
            .map(|s| s.public_key().to_string())
            .collect();
        let toml = report::server_config(
            &report::ServerToml {
                private_key_file: "lg-server.key",
                listen: SERVER_UNDERLAY.parse()?,
                port: CTR_PORT,
                tun_name: &tun,
                workers,
            },
            &pubs,
        );
        let cfg = lab.dir.join(format!("lg-server-{k}.toml"));
        std::fs::write(&cfg, toml)?;
        let kf = lab.dir.join(format!("lg-keys-{k}.txt"));
        let text: String = keys[..k]
            .iter()
            .map(|s| format!("{}\n", &*s.to_base64()))
            .collect();
        write_secret(&kf, &text)?;
        Ok((cfg, kf))
    };
    // Every (blast, size) pair: the first generator has one size of its own.
    let mut shapes: Vec<(crate::Blast, usize)> = Vec::new();
    for &blast in &plan.blasts {
        match blast {
            crate::Blast::SealEach => shapes.push((blast, 20 + 8 + 64)),
            _ => shapes.extend(plan.packet_bytes.iter().map(|&b| (blast, b))),
        }
    }
    for &(blast, bytes) in &shapes {
        for &k in &plan.loadgen_clients {
            for &w in &plan.workers {
                check_interrupted()?;
                let run = loadgen_run(lab, plan, &exe, &server, &write_cfg, (blast, bytes, k, w))?;
                runs.push(run);
            }
        }
    }
    results.insert("loadgen".into(), Value::Array(runs));

    if plan.headend_only {
        return Ok(());
    }
    let mut hs_runs = Vec::new();
    let in_flights: Vec<usize> = if plan.quick {
        vec![128]
    } else {
        vec![128, 2048]
    };
    for inflight in in_flights {
        let w = *plan.workers.iter().max().unwrap_or(&2);
        check_interrupted()?;
        progress(&format!(
            "handshakes: {kmax} keys, {inflight} in flight, {w} workers, {} s",
            plan.handshake_seconds
        ));
        let (cfg, kf) = write_cfg(kmax, w)?;
        let dump = plan
            .out
            .join(format!("concentrator-handshake-{inflight}-latency.hdr"));
        let mut srv = start_concentrator_server(
            lab,
            plan,
            &cfg,
            w,
            &dump,
            &format!("hs-server-{inflight}"),
            true,
        )?;
        let out = lab.exec(
            &lab.client,
            &[
                &exe,
                "loadgen",
                "--server",
                &format!("{SERVER_UNDERLAY}:{CTR_PORT}"),
                "--server-key",
                &server.public_key().to_string(),
                "--keys",
                &kf.to_string_lossy(),
                "--backend",
                &format!("{BACKEND}:{SINK_PORT}"),
                "--sockets",
                "16",
                "--duration-s",
                &plan.handshake_seconds.to_string(),
                "--handshakes-in-flight",
                &inflight.to_string(),
            ],
            Duration::from_secs(plan.handshake_seconds + 30),
        )?;
        srv.stop_with(libc::SIGINT);
        let v: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|_| json!({"error": out.stderr.clone()}));
        progress(&format!(
            "  -> {:.0} handshakes/s",
            v["handshakes_per_s"].as_f64().unwrap_or(0.0)
        ));
        hs_runs.push(json!({"keys": kmax, "workers": w, "in_flight": inflight, "loadgen": v}));
    }
    results.insert("handshakes".into(), Value::Array(hs_runs));
    Ok(())
}
