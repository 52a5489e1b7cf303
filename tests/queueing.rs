//! The egress queues (per-flow fair queue with CoDel) in the real binary: a UDP flood through
//! a tunnel whose underlay is slower than the tunnel can go builds a backlog in the queue, not
//! in the kernel, and the queue marks CE (CoDel) or drops; never marks packets that are not
//! ECN-capable.
//! Not timing: the counters say whether the queue acted.
//!
//! They need root (network namespaces, TUN, tc) and print `SKIPPED <name>: ...` otherwise.

mod common;

use std::time::Duration;

use common::net::route_dev;
use common::traffic::iperf3_client;
use common::*;

const SHORT: Duration = Duration::from_secs(20);

/// Limits what `ns` sends towards `dst` to 50 Mbit/s (tbf), with room in the qdisc for more
/// than a socket's send buffer: the tunnel's sends then wait for room in their socket, and
/// its backlog has to stand in the product's queue.
fn slow_underlay(lab: &Lab, ns: &str, dst: &str) {
    let dev = route_dev(lab, ns, dst);
    lab.exec_ok(
        ns,
        &[
            "tc", "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", "50mbit", "burst",
            "64kb", "limit", "16mb",
        ],
        SHORT,
    );
}

/// A lab of one client with the fair queue on at both ends (it is off by default).
fn lab_with_fair_queues() -> Lab {
    let mut lab = Lab::new(LabConfig::with_clients(1));
    lab.add_server_settings("fair_queue = true");
    let client = lab.dir().join("c1.toml");
    let text = std::fs::read_to_string(&client).expect("client config");
    std::fs::write(&client, format!("{text}fair_queue = true\n")).expect("client config");
    lab.up();
    lab
}

/// A worker's egress-queue counter from `show --json`, summed over the workers.
fn queue(show: &serde_json::Value, name: &str) -> u64 {
    show["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in {show}"))
        .iter()
        .map(|w| {
            w["queue"][name]
                .as_u64()
                .unwrap_or_else(|| panic!("no queue.{name} in {w}"))
        })
        .sum()
}

#[test]
fn a_download_flood_stands_in_the_servers_queue_and_is_marked_or_dropped() {
    let name = "a_download_flood_stands_in_the_servers_queue_and_is_marked_or_dropped";
    if !lab_or_skip(name) || !tools_or_skip(name, &["iperf3", "tc"]) {
        return;
    }
    let mut lab = lab_with_fair_queues();
    let srv = lab.server_ns.clone();
    slow_underlay(&lab, &srv, &lab.client_underlay(0).0);

    // The sender is the backend (-R), a UDP flood a little faster than the underlay (a standing queue, not a queue overflowing all the time, whose head drops would hide the delay): ECT(0)
    // first (`--tos 2`), so CoDel marks.
    let flood = |tos: &'static str| ["-u", "-b", "55M", "-l", "1300", "--tos", tos, "-R"];
    let before = lab.show_json();
    iperf3_client(&mut lab, 0, 5201, 3, &flood("2"));
    let ecn = lab.show_json();
    let delta = |after: &serde_json::Value, before: &serde_json::Value, n: &str| {
        queue(after, n) - queue(before, n)
    };
    eprintln!("ECT(0) download: {}", ecn["workers"][0]["queue"]);
    assert!(
        delta(&ecn, &before, "queued_packets") > 0,
        "nothing went through the queue"
    );
    // The queue acted on it: CoDel's marks, or, when the backlog overflows the queue's
    // buffers before its delay has stood above the target for CoDel's interval, the
    // overflow's drops from the fattest flow's head; never CoDel's drops.
    assert!(
        delta(&ecn, &before, "ce_marks") + delta(&ecn, &before, "overflow_drops") > 0,
        "an ECN-capable flood over a slow underlay was neither marked nor dropped: {}",
        ecn["workers"]
    );
    assert_eq!(
        delta(&ecn, &before, "aqm_drops"),
        0,
        "ECN-capable packets dropped by CoDel"
    );

    // Not ECN-capable: CoDel drops instead.
    iperf3_client(&mut lab, 0, 5202, 3, &flood("0"));
    let plain = lab.show_json();
    eprintln!("Not-ECT download: {}", plain["workers"][0]["queue"]);
    assert!(
        delta(&plain, &ecn, "aqm_drops") + delta(&plain, &ecn, "overflow_drops") > 0,
        "a flood that is not ECN-capable was never dropped: {}",
        plain["workers"]
    );
    assert_eq!(
        delta(&plain, &ecn, "ce_marks"),
        0,
        "packets that are not ECN-capable were marked"
    );
}

/// The `key=value` field of the client's "upload queue" log line.
fn upload_field(log: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("upload queue"))
        .unwrap_or_else(|| panic!("no upload queue line in the client's log:\n{log}"));
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    line[at + key.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number in {line}"))
}

#[test]
fn an_upload_flood_stands_in_the_clients_queue_and_is_marked_or_dropped() {
    let name = "an_upload_flood_stands_in_the_clients_queue_and_is_marked_or_dropped";
    if !lab_or_skip(name) || !tools_or_skip(name, &["iperf3", "tc"]) {
        return;
    }
    let mut lab = lab_with_fair_queues();
    let client = lab.client_ns[0].clone();
    slow_underlay(&lab, &client, lab.server_underlay());
    let flood = ["-u", "-b", "55M", "-l", "1300", "--tos", "2"];
    iperf3_client(&mut lab, 0, 5201, 3, &flood);
    let (_, log) = lab.stop_client(0);
    let (queued, marks, overflows, aqm_drops) = (
        upload_field(&log, "queued_packets"),
        upload_field(&log, "ce_marks"),
        upload_field(&log, "overflow_drops"),
        upload_field(&log, "aqm_drops"),
    );
    eprintln!("ECN-capable upload: {queued} queued, {marks} marked, {overflows} overflowed");
    assert!(queued > 0, "nothing went through the upload queue:\n{log}");
    // The client's queue is the server's worker's: judged as the download above.
    assert!(
        marks + overflows > 0,
        "an ECN-capable bulk upload over a slow underlay was neither marked nor dropped:\n{log}"
    );
    assert_eq!(aqm_drops, 0, "ECN-capable packets dropped by CoDel:\n{log}");
}
