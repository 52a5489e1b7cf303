//! The server as a library: an `Engine` started in-process (no binary), inside a lab's server
//! namespace, carries a real client's traffic, answers a peer command, and tears down.
//!
//! Needs root (namespaces, TUN); prints `SKIPPED <name>: ...` otherwise.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use concentrator::config::ServerConfig;
use concentrator::server::control::command::Command;
use concentrator::server::dataplane::stats::Counters;
use concentrator::server::engine::{Engine, EngineOptions};
use concentrator::sys::netns;

/// What the engine's thread reports when the test lets it stop.
struct Finished {
    interface: String,
    peers: usize,
    counters: Counters,
}

/// Starts an engine for `config_path` inside `ns` on its own thread (its workers and control
/// thread inherit the namespace); tells `up` the interface once running, stops when `stop`
/// says so.
fn run_engine(
    ns: String,
    config_path: std::path::PathBuf,
    up: mpsc::Sender<Result<String, String>>,
    stop: mpsc::Receiver<()>,
) -> Result<Finished, String> {
    let started = (|| -> Result<Engine, String> {
        netns::enter(&ns).map_err(|e| e.to_string())?;
        let (config, _) = ServerConfig::load(&config_path).map_err(|e| e.to_string())?;
        let options = EngineOptions {
            workers: 2,
            offloads: true,
        };
        let prepared = Engine::prepare(&config, options).map_err(|e| format!("{e:#}"))?;
        prepared.start(&config).map_err(|e| format!("{e:#}"))
    })();
    let mut engine = match started {
        Ok(engine) => engine,
        Err(e) => {
            let _ = up.send(Err(e.clone()));
            return Err(e);
        }
    };
    let interface = engine.interface().to_string();
    let _ = up.send(Ok(interface.clone()));
    let _ = stop.recv_timeout(Duration::from_secs(120));
    // A command through the handle, as the control socket would send it.
    let (tx, rx) = crossbeam_channel::bounded(1);
    engine
        .commands()
        .send(Command::Snapshot(tx))
        .map_err(|e| e.to_string())?;
    let peers = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?
        .peers
        .len();
    let counters =
        engine
            .counters()
            .iter()
            .map(|c| c.snapshot())
            .fold(Counters::default(), |mut sum, c| {
                sum.udp_rx_packets += c.udp_rx_packets;
                sum.tun_tx_packets += c.tun_tx_packets;
                sum.tun_rx_packets += c.tun_rx_packets;
                sum.udp_tx_packets += c.udp_tx_packets;
                sum
            });
    engine.stop().map_err(|e| format!("{e:#}"))?;
    drop(engine);
    Ok(Finished {
        interface,
        peers,
        counters,
    })
}

#[test]
fn an_engine_from_the_library_carries_a_client_and_tears_down() {
    let name = "an_engine_from_the_library_carries_a_client_and_tears_down";
    if !lab_or_skip(name) {
        return;
    }
    let mut lab = Lab::new(LabConfig::with_clients(1));
    let (up_tx, up_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let (ns, config_path) = (lab.server_ns.clone(), lab.server_config_path());
    let engine = std::thread::spawn(move || run_engine(ns, config_path, up_tx, stop_rx));
    let interface = match up_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(interface)) => interface,
        Ok(Err(e)) => panic!("the engine did not start: {e}"),
        Err(e) => panic!("the engine did not report its start: {e}"),
    };
    assert_eq!(interface, SERVER_TUN);

    lab.start_client(0);
    let addr = lab.wait_tunnel(0);
    let client_ns = lab.client_ns[0].clone();
    lab.ping_ok(&client_ns, BACKEND, 5);
    lab.ping_ok(&lab.backend_ns.clone(), &addr.to_string(), 3);

    stop_tx.send(()).expect("engine thread alive");
    let finished = engine
        .join()
        .expect("engine thread panicked")
        .expect("engine ran and stopped");
    assert_eq!(finished.interface, SERVER_TUN);
    assert_eq!(finished.peers, 1, "the configured peer");
    let c = &finished.counters;
    assert!(
        c.udp_rx_packets >= 8 && c.tun_tx_packets >= 5 && c.tun_rx_packets >= 3,
        "the workers carried the pings: {c:?}"
    );
    // Dropped, the engine closed its TUN queues; the kernel removes the device once their
    // io_uring references are released too, which may take a moment.
    let server_ns = lab.server_ns.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let links = lab.ip(&server_ns, &["-o", "link", "show"]);
        if !links.contains(SERVER_TUN) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the TUN device outlived the engine by 10 s:\n{links}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
