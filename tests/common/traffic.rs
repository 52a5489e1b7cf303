//! Traffic through a lab's tunnel, shared by the end-to-end test binaries: a TCP transfer
//! checked with sha256 at both ends, iperf3 runs from a client to the backend, and a UDP
//! transfer sent with `UDP_SEGMENT` (USO) whose every datagram is checked. Addresses may be
//! IPv4 or IPv6 (the scripts pick the socket family by the address).

use std::time::{Duration, Instant};

use super::{Lab, BACKEND};

/// argv: bind_addr port. Accepts one TCP connection and prints the length and sha256 of all it
/// received.
pub const RECEIVER: &str = r#"
import socket, hashlib, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(30)
c, _ = s.accept()
c.settimeout(30)
h = hashlib.sha256()
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest(), flush=True)
"#;

/// Python, for the start of a script: `connect(addr, port)` returns a TCP connection to
/// `addr:port`, retrying for about 10 s (the listener may still be starting); the script exits
/// with an error when it cannot connect.
pub const CONNECT: &str = r#"
import socket, sys, time
def connect(addr, port):
    for _ in range(100):
        try:
            return socket.create_connection((addr, int(port)), timeout=2)
        except OSError:
            time.sleep(0.1)
    sys.exit("cannot connect")
"#;

/// After [`CONNECT`]; argv: dst_addr port [bytes]. Connects, sends `bytes` (default 20 MiB) of
/// random bytes and prints their length and sha256.
pub const SENDER: &str = r#"
import hashlib, os
data = os.urandom(int(sys.argv[3]) if len(sys.argv) > 3 else 20 * 1024 * 1024)
s = connect(sys.argv[1], sys.argv[2])
s.settimeout(30)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"#;

/// What a [`transfer_sha256`] run printed at both ends (`<length> <sha256>`, trimmed) and how
/// long it took.
pub struct Transfer {
    pub sent: String,
    pub got: String,
    pub elapsed: Duration,
}

/// Bytes [`transfer_sha256`] sends.
pub const TRANSFER_BYTES: usize = 20 * 1024 * 1024;

/// Sends 20 MiB with [`SENDER`] from `from_ns` to a [`RECEIVER`] in `to_ns` at
/// `to_addr:port`; panics when either end fails. `what`, when given, prefixes the failure
/// messages (`<what>: sender failed: ...`). The caller compares `sent` and `got`.
pub fn transfer_sha256(
    lab: &Lab,
    from_ns: &str,
    to_ns: &str,
    to_addr: &str,
    port: u16,
    what: Option<&str>,
) -> Transfer {
    transfer_sha256_bytes(lab, from_ns, to_ns, to_addr, port, TRANSFER_BYTES, what)
}

/// [`transfer_sha256`] with `bytes` instead of 20 MiB.
pub fn transfer_sha256_bytes(
    lab: &Lab,
    from_ns: &str,
    to_ns: &str,
    to_addr: &str,
    port: u16,
    bytes: usize,
    what: Option<&str>,
) -> Transfer {
    let prefix = what.map(|w| format!("{w}: ")).unwrap_or_default();
    let port = port.to_string();
    let bytes = bytes.to_string();
    let mut rx = lab.spawn_proc(
        to_ns,
        &format!("tcp-receiver-{port}"),
        &["python3", "-c", RECEIVER, to_addr, &port],
    );
    let started = Instant::now();
    let sender = format!("{CONNECT}{SENDER}");
    let tx = lab.exec(
        from_ns,
        &["python3", "-c", &sender, to_addr, &port, &bytes],
        Duration::from_secs(45),
    );
    assert!(
        tx.ok(),
        "{prefix}sender failed: {}{}\n{}",
        tx.stdout,
        tx.stderr,
        lab.logs()
    );
    let st = rx.wait(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "{prefix}receiver failed: {}{}",
        rx.stdout(),
        rx.stderr()
    );
    Transfer {
        sent: tx.stdout.trim().to_string(),
        got: rx.stdout().trim().to_string(),
        elapsed: started.elapsed(),
    }
}

/// Starts a one-shot iperf3 server on the backend at `port` and waits until it listens.
pub fn iperf3_server(lab: &mut Lab, port: u16) {
    iperf3_server_at(lab, BACKEND, port);
}

/// Starts a one-shot iperf3 server on the backend bound to `addr` (one of the backend's
/// addresses) at `port` and waits until it listens.
pub fn iperf3_server_at(lab: &mut Lab, addr: &str, port: u16) {
    let backend = lab.backend_ns.clone();
    let port_s = port.to_string();
    lab.spawn_in(
        &backend,
        &format!("iperf3-s-{port}"),
        &["iperf3", "-s", "-1", "-B", addr, "-p", &port_s],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ss = lab.exec(
            &backend,
            &["ss", "-Hltn", "sport", "=", &format!(":{port}")],
            Duration::from_secs(5),
        );
        if ss.stdout.contains("LISTEN") {
            return;
        }
        assert!(Instant::now() < deadline, "iperf3 server not listening");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts [`iperf3_server`] at `port` and runs `iperf3 -c BACKEND -p port -t secs -J extra...`
/// in client `i`'s namespace; returns the client's JSON.
pub fn iperf3_client(
    lab: &mut Lab,
    i: usize,
    port: u16,
    secs: u64,
    extra: &[&str],
) -> serde_json::Value {
    iperf3_client_to(lab, i, BACKEND, port, secs, extra)
}

/// [`iperf3_client`] towards the backend's address `dst` (IPv4 or IPv6).
pub fn iperf3_client_to(
    lab: &mut Lab,
    i: usize,
    dst: &str,
    port: u16,
    secs: u64,
    extra: &[&str],
) -> serde_json::Value {
    iperf3_server_at(lab, dst, port);
    let port_s = port.to_string();
    let t = secs.to_string();
    let mut argv = vec!["iperf3", "-c", dst, "-p", &port_s, "-t", &t, "-J"];
    argv.extend_from_slice(extra);
    let c = lab.client_ns[i].clone();
    let out = lab.exec(&c, &argv, Duration::from_secs(secs + 30));
    assert!(
        out.ok(),
        "iperf3 {argv:?} failed: {}\n{}\n{}",
        out.stdout,
        out.stderr,
        lab.logs()
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3 -J output is not JSON ({e}): {}", out.stdout))
}

/// (bytes sent, bytes received) of an iperf3 TCP run's JSON.
pub fn iperf3_bytes(v: &serde_json::Value) -> (u64, u64) {
    let end = &v["end"];
    let sent = end["sum_sent"]["bytes"]
        .as_u64()
        .expect("end.sum_sent.bytes");
    let received = end["sum_received"]["bytes"]
        .as_u64()
        .expect("end.sum_received.bytes");
    (sent, received)
}

/// The kernel's packet counters of the TUN `dev` in `ns`: (rx, tx). For a TUN, `tx` counts the
/// skbs handed to the reader (one per read, super-packet or not) and `rx` one per write.
pub fn tun_kernel_packets(lab: &Lab, ns: &str, dev: &str) -> (u64, u64) {
    let out = lab.ip(ns, &["-s", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j prints JSON");
    let stats = &v[0]["stats64"];
    let get = |dir: &str| {
        stats[dir]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no stats64.{dir}.packets in {out}"))
    };
    (get("rx"), get("tx"))
}

/// `InCsumErrors` of TCP and UDP in `ns` (`/proc/net/snmp` read inside it, plus
/// `Udp6InCsumErrors` of `/proc/net/snmp6`; the TCP counter covers both families): segments and
/// datagrams the kernel received with a bad checksum. A receiver drops those silently, so a
/// corrupted packet with a bad checksum looks like loss unless these are checked.
pub fn csum_errors(lab: &Lab, ns: &str) -> (u64, u64) {
    let snmp = lab.exec_ok(ns, &["cat", "/proc/net/snmp"], Duration::from_secs(5));
    let field = |proto: &str| -> u64 {
        let prefix = format!("{proto}:");
        let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            panic!("no {proto} lines in /proc/net/snmp:\n{snmp}");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "InCsumErrors")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no {proto} InCsumErrors in /proc/net/snmp:\n{snmp}"))
    };
    // Absent (with the whole file) when IPv6 is disabled in the namespace.
    let snmp6 = lab.exec(ns, &["cat", "/proc/net/snmp6"], Duration::from_secs(5));
    let udp6: u64 = snmp6
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (field("Tcp"), field("Udp") + udp6)
}

/// Each datagram is `seq` (8 bytes, big endian), a pattern derived from `seq`, and the sha256 of
/// both: 1200 bytes. The receiver rebuilds the datagram from its `seq` and compares.
pub const UDP_COMMON: &str = r#"
import hashlib, struct
SEG = 1200
def datagram(seq):
    head = struct.pack(">Q", seq)
    block = hashlib.sha256(b"ctr-offload" + head).digest()
    body = head + (block * (SEG // 32 + 1))[: SEG - 8 - 32]
    return body + hashlib.sha256(body).digest()
"#;

/// argv: dst_addr port buffers. Sends `buffers` buffers of 40 datagrams each with UDP_SEGMENT
/// 1200 (one sendto, one GSO super-packet per buffer); prints the number of datagrams sent.
pub const USO_SENDER: &str = r#"
import socket, sys, time
UDP_SEGMENT = 103
dst, port, buffers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per = 40
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, SEG)
# Give the receiver time to bind (it prints "ready" first, the test waits for it) and pace the
# buffers a little so loss stays moderate.
seq = 0
for b in range(buffers):
    buf = b"".join(datagram(seq + i) for i in range(per))
    assert len(buf) == per * SEG
    while True:
        try:
            s.sendto(buf, (dst, port))
            break
        except (BlockingIOError, InterruptedError) as e:
            time.sleep(0.001)
        except OSError as e:
            if e.errno != 105:  # ENOBUFS: the queue is full, try again
                raise
            time.sleep(0.001)
    seq += per
    if b % 4 == 3:
        time.sleep(0.001)
print(seq, flush=True)
"#;

/// argv: bind_addr port. Counts intact and corrupted datagrams until 2 s pass without any (or
/// 20 s without the first); prints `received corrupted duplicates` and a few corrupted samples.
pub const USO_RECEIVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root)
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
received = corrupted = duplicates = 0
seen = set()
samples = []
s.settimeout(20)
while True:
    try:
        d = s.recv(65536)
    except socket.timeout:
        break
    s.settimeout(2)
    seq = int.from_bytes(d[:8], "big") if len(d) >= 8 else -1
    if len(d) != SEG or seq < 0 or seq > 10**7 or d != datagram(seq):
        corrupted += 1
        if len(samples) < 3:
            samples.append("len=%d seq=%d head=%s" % (len(d), seq, d[:16].hex()))
        continue
    if seq in seen:
        duplicates += 1
        continue
    seen.add(seq)
    received += 1
print(received, corrupted, duplicates, flush=True)
for x in samples:
    print("corrupted:", x, flush=True)
"#;

/// Runs the USO sender in `from_ns` towards a receiver in `to_ns` at `to_addr`, `buffers`
/// buffers of 40 datagrams of 1200 bytes; asserts every datagram that arrived is intact and
/// that some did.
pub fn uso_transfer_buffers(
    lab: &Lab,
    from_ns: &str,
    to_ns: &str,
    to_addr: &str,
    port: u16,
    buffers: u32,
    what: &str,
) {
    let port = port.to_string();
    let receiver = format!("{UDP_COMMON}{USO_RECEIVER}");
    let sender = format!("{UDP_COMMON}{USO_SENDER}");
    let mut rx = lab.spawn_proc(
        to_ns,
        &format!("uso-receiver-{port}"),
        &["python3", "-c", &receiver, to_addr, &port],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rx.stdout().starts_with("ready") {
        assert!(
            rx.exited().is_none(),
            "{what}: receiver exited: {}",
            rx.stderr()
        );
        assert!(Instant::now() < deadline, "{what}: receiver not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let tx = lab.exec(
        from_ns,
        &[
            "python3",
            "-c",
            &sender,
            to_addr,
            &port,
            &buffers.to_string(),
        ],
        Duration::from_secs(60),
    );
    assert!(
        tx.ok(),
        "{what}: USO sender failed: {}{}\n{}",
        tx.stdout,
        tx.stderr,
        lab.logs()
    );
    let st = rx.wait(Duration::from_secs(30));
    let out = rx.stdout();
    assert!(
        st.is_some_and(|s| s.success()),
        "{what}: receiver failed: {out}{}",
        rx.stderr()
    );
    let sent: u64 = tx.stdout.trim().parse().expect("sender prints its count");
    let line = out.lines().nth(1).unwrap_or_default();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let [received, corrupted, duplicates] = nums[..] else {
        panic!("{what}: receiver printed {out:?}");
    };
    let loss = 100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64;
    eprintln!(
        "{what}: {sent} datagrams sent in 48000-byte USO buffers, {received} intact, \
         {corrupted} corrupted, {duplicates} duplicates, loss {loss:.2}%"
    );
    assert_eq!(corrupted, 0, "{what}: corrupted datagrams arrived:\n{out}");
    assert!(received > 0, "{what}: no datagram arrived\n{}", lab.logs());
    assert!(received <= sent, "{what}: {received} > {sent} sent");
}
