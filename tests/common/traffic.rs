//! Traffic through a lab's tunnel, shared by the end-to-end test binaries: a 20 MiB TCP
//! transfer checked with sha256 at both ends, and iperf3 runs from a client to the backend.

use std::time::{Duration, Instant};

use super::{Lab, BACKEND};

/// argv: bind_addr port. Accepts one TCP connection and prints the length and sha256 of all it
/// received.
pub const RECEIVER: &str = r#"
import socket, hashlib, sys
s = socket.socket()
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

/// argv: dst_addr port. Connects (retrying for about 10 s), sends 20 MiB of random bytes and
/// prints their length and sha256.
pub const SENDER: &str = r#"
import socket, hashlib, os, sys, time
data = os.urandom(20 * 1024 * 1024)
for _ in range(100):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("cannot connect")
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
    let prefix = what.map(|w| format!("{w}: ")).unwrap_or_default();
    let port = port.to_string();
    let mut rx = lab.spawn_proc(
        to_ns,
        &format!("tcp-receiver-{port}"),
        &["python3", "-c", RECEIVER, to_addr, &port],
    );
    let started = Instant::now();
    let tx = lab.exec(
        from_ns,
        &["python3", "-c", SENDER, to_addr, &port],
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
    let backend = lab.backend_ns.clone();
    let port_s = port.to_string();
    lab.spawn_in(
        &backend,
        &format!("iperf3-s-{port}"),
        &["iperf3", "-s", "-1", "-B", BACKEND, "-p", &port_s],
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
    iperf3_server(lab, port);
    let port_s = port.to_string();
    let t = secs.to_string();
    let mut argv = vec!["iperf3", "-c", BACKEND, "-p", &port_s, "-t", &t, "-J"];
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
