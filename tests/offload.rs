//! Offload end-to-end tests: the same traffic with TUN/UDP offloads on (the default: TSO/USO
//! super-packets split before sealing, UDP GRO and coalescing on receive) and off
//! (`--no-offloads`), in both directions, so that the server's and the client's split and
//! coalesce paths all carry data.
//!
//! Each case is two `#[test]`s, `..._offloads_on` and `..._offloads_off`, each with its own lab
//! (see `tests/common`). They need root and print `SKIPPED <name>: ...` otherwise. No speed is
//! asserted; UDP loss is printed and only bounded loosely.

mod common;

use std::sync::{Mutex, MutexGuard};

use common::traffic::{
    csum_errors, iperf3_bytes, iperf3_client, transfer_sha256, tun_kernel_packets,
    uso_transfer_buffers, Transfer,
};
use common::*;

/// Declares `<case>_offloads_on` and `<case>_offloads_off`, both calling `case(bool)`.
macro_rules! both_modes {
    ($case:ident, $on:ident, $off:ident) => {
        #[test]
        fn $on() {
            $case(true, stringify!($on));
        }
        #[test]
        fn $off() {
            $case(false, stringify!($off));
        }
    };
}

fn mode(offloads: bool) -> &'static str {
    if offloads {
        "offloads on"
    } else {
        "offloads off"
    }
}

/// One lab at a time in this file: the tests push as much traffic as the machine can carry, and
/// the UDP loss they print should be about the tunnel, not about two labs sharing the CPUs.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds [`SERIAL`] (also after another test panicked while holding it).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A one-client lab with offloads on or off, up; returns it and the client's virtual address.
fn lab_up(offloads: bool) -> (Lab, String) {
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        offloads,
        ..Default::default()
    });
    let addr = lab.up()[0].to_string();
    (lab, addr)
}

/// Asserts that neither the client's nor the backend's namespace saw a TCP or UDP checksum
/// error (the server's namespace only forwards, it does not check L4 checksums).
fn assert_no_csum_errors(lab: &Lab, m: &str) {
    for ns in [&lab.client_ns[0], &lab.backend_ns] {
        let (tcp, udp) = csum_errors(lab, ns);
        assert_eq!(
            (tcp, udp),
            (0, 0),
            "[{m}] {ns}: (TCP, UDP) packets with a bad checksum arrived"
        );
    }
}

/// Stops the server and the client and checks what their logs say about offloads: the server's
/// start line `concentrator is up ... offloads=...` names `tso4` when on and is `off` when off,
/// the client's `tunnel up` line says `offloads=true|false`, and the server dropped nothing as
/// malformed (a super-packet the segmenter rejected). Returns the server's counters.
fn stop_and_check_logs(lab: &mut Lab, offloads: bool) -> Vec<WorkerCounters> {
    stop_and_check_both_logs(lab, offloads).0
}

/// [`stop_and_check_logs`], also returning the client's log.
fn stop_and_check_both_logs(lab: &mut Lab, offloads: bool) -> (Vec<WorkerCounters>, String) {
    let (_, client_log) = lab.stop_client(0);
    let log = lab.stop_server();
    let up = common::start_line(&log);
    let names = up
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("offloads="))
        .unwrap_or_else(|| panic!("no offloads= in the start line: {up}"));
    if offloads {
        let list: Vec<&str> = names.split(',').collect();
        assert!(
            list.contains(&"tso4"),
            "offloads on, but the server runs without TSO4: offloads={names}"
        );
    } else {
        assert_eq!(names, "off", "--no-offloads, but the server says: {up}");
    }
    let client_up = client_log
        .lines()
        .find(|l| l.contains("tunnel up"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no 'tunnel up' line in the client log:\n{client_log}"));
    assert!(
        client_up.contains(&format!("offloads={offloads}")),
        "client log does not say offloads={offloads}: {client_up}"
    );
    let c = parse_counters(&log);
    assert_eq!(c.len(), 1, "expected one worker counter line:\n{log}");
    eprintln!("[{}] server counters: {c:?}", mode(offloads));
    assert_eq!(
        c[0].dropped("malformed"),
        0,
        "the server dropped packets as malformed: {c:?}"
    );
    (c, client_log)
}

/// The datagrams the client's data plane sent and the sends that carried them, from its
/// `data plane` line at exit.
fn client_datagrams_and_sends(client_log: &str) -> (u64, u64) {
    let line = client_log
        .lines()
        .find(|l| l.contains("data plane") && l.contains("sent_datagrams="))
        .unwrap_or_else(|| panic!("no 'data plane' counters in the client log:\n{client_log}"));
    let value = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    (value("sent_datagrams="), value("sends="))
}

/// A transfer from one namespace to an address in another: `(lab, from_ns, to_ns, to_addr,
/// port, what)`.
type TransferFn = fn(&Lab, &str, &str, &str, u16, &str);

/// Runs `transfer` from client 0 to the backend at `port`, then from the backend to the
/// client's virtual address `addr` at `port + 1`, labelled `<label> client -> backend` and
/// `<label> backend -> client`.
fn both_ways(lab: &Lab, addr: &str, port: u16, label: &str, transfer: TransferFn) {
    let (c1, b) = (lab.client_ns[0].clone(), lab.backend_ns.clone());
    transfer(
        lab,
        &c1,
        &b,
        BACKEND,
        port,
        &format!("{label} client -> backend"),
    );
    transfer(
        lab,
        &b,
        &c1,
        addr,
        port + 1,
        &format!("{label} backend -> client"),
    );
}

// ---------------------------------------------------------------------------------------------
// TCP transfer with sha256 at both ends

/// 20 MiB from `from_ns` to `to_addr` (a receiver in `to_ns`); length and sha256 must match.
fn tcp_transfer(lab: &Lab, from_ns: &str, to_ns: &str, to_addr: &str, port: u16, what: &str) {
    let Transfer { sent, got, elapsed } =
        transfer_sha256(lab, from_ns, to_ns, to_addr, port, Some(what));
    eprintln!("{what}: 20 MiB in {elapsed:?}");
    assert!(sent.starts_with("20971520 "), "{what}: {sent}");
    assert_eq!(
        got, sent,
        "{what}: length and sha256 at the receiver differ from the sender's"
    );
}

fn tcp_sha256(offloads: bool, test: &str) {
    if !lab_or_skip(test) {
        return;
    }
    let _serial = serial();
    let (mut lab, addr) = lab_up(offloads);
    let m = mode(offloads);
    both_ways(&lab, &addr, 5300, &format!("[{m}]"), tcp_transfer);
    let c1 = lab.client_ns[0].clone();

    // Did the bulk data travel as super-packets? The kernel counts one TUN packet per read or
    // write; the server counts segments (and datagrams). With offloads, a read or write carries
    // many segments.
    let s = lab.server_ns.clone();
    let (srv_writes, srv_reads) = tun_kernel_packets(&lab, &s, SERVER_TUN);
    let (cli_writes, cli_reads) = tun_kernel_packets(&lab, &c1, CLIENT_TUN);
    assert_no_csum_errors(&lab, m);
    let c = stop_and_check_logs(&mut lab, offloads);
    let c = &c[0];
    let ratio = |segments: u64, io: u64| segments as f64 / io.max(1) as f64;
    // server TUN reads: backend -> client data; server TUN writes: client -> backend data.
    // client TUN reads: what the server received as datagrams; client TUN writes: what the
    // server sent.
    let ratios = [
        ("server TUN read (split)", ratio(c.tun_rx, srv_reads)),
        ("server TUN write (coalesce)", ratio(c.tun_tx, srv_writes)),
        ("client TUN read (split)", ratio(c.udp_rx, cli_reads)),
        ("client TUN write (coalesce)", ratio(c.udp_tx, cli_writes)),
    ];
    eprintln!(
        "[{m}] segments per TUN read/write: {ratios:?} (kernel: server reads {srv_reads} writes \
         {srv_writes}, client reads {cli_reads} writes {cli_writes})"
    );
    for (what, r) in ratios {
        // Datagrams lost between the server and the client raise a ratio a little too, so the
        // bounds are far apart: a TUN read or write with offloads carries 15-25 segments of a
        // bulk TCP transfer.
        if offloads {
            assert!(
                r >= 4.0,
                "[{m}] {what}: only {r:.2} segments per TUN read/write: no super-packets?"
            );
        } else {
            // One packet per read/write, give or take keepalives, IPv6 noise and losses.
            assert!(
                r < 2.0,
                "[{m}] {what}: {r:.2} segments per TUN read/write with --no-offloads"
            );
        }
    }
}

both_modes!(tcp_sha256, tcp_sha256_offloads_on, tcp_sha256_offloads_off);

// ---------------------------------------------------------------------------------------------
// iperf3

fn iperf3_tcp(offloads: bool, test: &str) {
    if !lab_or_skip(test) || !tools_or_skip(test, &["iperf3", "ss"]) {
        return;
    }
    let _serial = serial();
    let (mut lab, _) = lab_up(offloads);
    let m = mode(offloads);
    for (port, reverse) in [(5201, false), (5202, true)] {
        let extra: &[&str] = if reverse { &["-R"] } else { &[] };
        let v = iperf3_client(&mut lab, 0, port, 2, extra);
        let (sent, received) = iperf3_bytes(&v);
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        eprintln!(
            "[{m}] iperf3 TCP reverse={reverse}: sent {sent} received {received} bytes \
             ({:.0} Mbit/s)",
            bps / 1e6
        );
        assert!(received > 0, "[{m}] reverse={reverse}: nothing received");
        // The receiver stops counting at the deadline with data in flight: received <= sent.
        assert!(
            received <= sent,
            "[{m}] reverse={reverse}: received {received} > sent {sent}"
        );
    }
    assert_no_csum_errors(&lab, m);
    stop_and_check_logs(&mut lab, offloads);
}

both_modes!(iperf3_tcp, iperf3_tcp_offloads_on, iperf3_tcp_offloads_off);

/// Runs a 2-second iperf3 UDP test with `extra` through client 0 on `port`, upload or
/// download (`reverse`); the share of datagrams lost, in percent, as the receiver saw it.
fn udp_through_client(lab: &mut Lab, m: &str, port: u16, reverse: bool, extra: &[&str]) -> f64 {
    let mut extra = extra.to_vec();
    if reverse {
        extra.push("-R");
    }
    let v = iperf3_client(lab, 0, port, 2, &extra);
    // For UDP, `end.sum` is what the receiving side saw (iperf3 3.x).
    let sum = &v["end"]["sum"];
    let packets = sum["packets"].as_u64().expect("end.sum.packets");
    let lost = sum["lost_packets"].as_u64().expect("end.sum.lost_packets");
    let lost_percent = sum["lost_percent"].as_f64().unwrap_or(0.0);
    let received = packets.saturating_sub(lost);
    eprintln!(
        "[{m}] iperf3 UDP {extra:?}: {packets} datagrams sent, {received} received, \
         {lost} lost ({lost_percent:.2}%), {} out of order",
        sum["out_of_order"].as_u64().unwrap_or(0)
    );
    assert!(
        packets > 0 && received > 0,
        "[{m}] {extra:?}: the receiver got nothing: {sum}"
    );
    lost_percent
}

fn iperf3_udp(offloads: bool, test: &str) {
    if !lab_or_skip(test) || !tools_or_skip(test, &["iperf3", "ss"]) {
        return;
    }
    let _serial = serial();
    let (mut lab, _) = lab_up(offloads);
    let m = mode(offloads);
    for (port, reverse) in [(5203, false), (5204, true)] {
        // 50 Mbit/s: well within what a debug build carries on a busy shared 2-core machine
        // (at 200 Mbit/s it lost most datagrams whenever the load average passed ~8, a speed
        // test in disguise); still thousands of datagrams per second through the offload paths.
        let lost_percent = udp_through_client(
            &mut lab,
            m,
            port,
            reverse,
            &["-u", "-b", "50M", "-l", "1200"],
        );
        assert!(
            lost_percent < 50.0,
            "[{m}] reverse={reverse}: {lost_percent:.1}% of the UDP datagrams lost at 50 \
             Mbit/s: the tunnel is not forwarding UDP properly"
        );
    }
    assert_no_csum_errors(&lab, m);
    stop_and_check_logs(&mut lab, offloads);
}

both_modes!(iperf3_udp, iperf3_udp_offloads_on, iperf3_udp_offloads_off);

/// A flood of small datagrams (64-byte payloads, 10 000 a second: 5 Mbit/s) both ways
/// through the client, each one its own TUN read or write (UDP is not merged into
/// super-packets): most must arrive. The bar is generous: a functional check on a shared
/// machine, not a speed test. With offloads, both ends send the small datagrams read in one
/// batch together (`UDP_SEGMENT`): iperf3 paces in bursts (one per millisecond), so there are
/// fewer sends than datagrams, downloads on the server and uploads on the client; without,
/// each datagram is its own send.
fn iperf3_udp_small(offloads: bool, test: &str) {
    if !lab_or_skip(test) || !tools_or_skip(test, &["iperf3", "ss"]) {
        return;
    }
    let _serial = serial();
    let (mut lab, _) = lab_up(offloads);
    let m = mode(offloads);
    let sent = |lab: &Lab| {
        let show = lab.show_json();
        let sum = |field: &str| -> u64 {
            show["workers"]
                .as_array()
                .map(|w| w.iter().filter_map(|w| w[field].as_u64()).sum())
                .unwrap_or(0)
        };
        (sum("udp_tx_packets"), sum("udp_tx_sends"))
    };
    for (port, reverse) in [(5205, false), (5206, true)] {
        let flood = ["-u", "-b", "5120K", "-l", "64"];
        let before = sent(&lab);
        let lost_percent = udp_through_client(&mut lab, m, port, reverse, &flood);
        assert!(
            lost_percent < 50.0,
            "[{m}] reverse={reverse}: {lost_percent:.1}% of 10 000 small datagrams a second \
             lost: the client does not carry a small-packet flood"
        );
        if reverse {
            let after = sent(&lab);
            let (datagrams, sends) = (after.0 - before.0, after.1 - before.1);
            eprintln!("[{m}] server: {datagrams} datagrams sent in {sends} sends");
            assert!(
                datagrams >= 10_000,
                "[{m}] the server sent {datagrams} datagrams"
            );
            assert_eq!(
                sends < datagrams,
                offloads,
                "[{m}] the server sent {datagrams} datagrams of a small-packet flood in \
                 {sends} sends: gathered only with offloads"
            );
        }
    }
    let (_, client_log) = stop_and_check_both_logs(&mut lab, offloads);
    let (datagrams, sends) = client_datagrams_and_sends(&client_log);
    eprintln!("[{m}] client: {datagrams} datagrams sent in {sends} sends");
    assert!(
        datagrams >= 10_000,
        "[{m}] the client sent {datagrams} datagrams"
    );
    assert_eq!(
        sends < datagrams,
        offloads,
        "[{m}] the client sent {datagrams} datagrams of a small-packet flood in {sends} sends: \
         gathered only with offloads"
    );
}

both_modes!(
    iperf3_udp_small,
    iperf3_udp_small_offloads_on,
    iperf3_udp_small_offloads_off
);

// ---------------------------------------------------------------------------------------------
// UDP integrity with USO (UDP_SEGMENT) in the sender

/// 400 buffers of USO datagrams (about 19 MB) with [`uso_transfer_buffers`].
fn uso_transfer(lab: &Lab, from_ns: &str, to_ns: &str, to_addr: &str, port: u16, what: &str) {
    uso_transfer_buffers(lab, from_ns, to_ns, to_addr, port, 400, what);
}

fn udp_uso_integrity(offloads: bool, test: &str) {
    if !lab_or_skip(test) {
        return;
    }
    let _serial = serial();
    let (mut lab, addr) = lab_up(offloads);
    let m = mode(offloads);
    both_ways(&lab, &addr, 5400, &format!("[{m}] USO"), uso_transfer);
    assert_no_csum_errors(&lab, m);
    stop_and_check_logs(&mut lab, offloads);
}

both_modes!(
    udp_uso_integrity,
    udp_uso_integrity_offloads_on,
    udp_uso_integrity_offloads_off
);
