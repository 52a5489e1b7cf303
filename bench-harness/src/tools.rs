//! The small programs the harness runs inside the namespaces: `pingpong`, `sink`, `loadgen`.
//! Each one is bounded in time and prints one JSON object on stdout when done.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use concentrator::proto::client::{Client, ClientEvent, ClientParams};
use concentrator::proto::keys::{PresharedKey, PublicKey, StaticSecret};
use concentrator::proto::rng::OsRandom;
use concentrator::proto::wire::{self, TAG_LEN, TRANSPORT_HEADER_LEN};
use concentrator::sys::clock;

pub use crate::blast::{LoadMode, LoadgenOptions};
use crate::cpu::CpuWatch;
use crate::mmsg::{self, Batch};
use crate::report::{self, histogram_to_base64, percentiles};

/// UDP echo: answers every datagram to its sender until `deadline`.
pub fn pingpong_server(bind: SocketAddr, deadline: Duration) -> Result<()> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let end = Instant::now() + deadline;
    let mut buf = [0u8; 2048];
    let mut echoed = 0u64;
    while Instant::now() < end {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = sock.send_to(&buf[..n], from);
                echoed += 1;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
    }
    println!("{}", json!({ "echoed": echoed }));
    Ok(())
}

/// Sends `count` probes, one at a time, `interval` apart; records each round trip.
pub fn pingpong_client(
    target: SocketAddr,
    count: u64,
    interval: Duration,
    timeout: Duration,
    max_duration: Duration,
) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(target)?;
    let mut h = concentrator::server::latency::latency_histogram();
    let start = Instant::now();
    let mut lost = 0u64;
    let mut buf = [0u8; 64];
    let mut rx = [0u8; 2048];
    let mut sent = 0u64;
    for seq in 0..count {
        if start.elapsed() > max_duration {
            break;
        }
        let t0 = Instant::now();
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        sock.send(&buf)?;
        sent += 1;
        let deadline = t0 + timeout;
        let mut got = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv(&mut rx) {
                Ok(n) if n >= 8 && rx[..8] == seq.to_le_bytes() => {
                    concentrator::server::latency::record_latency(
                        &mut h,
                        t0.elapsed().as_nanos() as u64,
                        1,
                    );
                    got = true;
                    break;
                }
                Ok(_) => {} // a late answer to an earlier probe
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
                Err(e) => return Err(e.into()),
            }
        }
        if !got {
            lost += 1;
        }
        let next = t0 + interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    let p = percentiles(&h);
    println!(
        "{}",
        json!({
            "sent": sent, "received": h.len(), "lost": lost,
            "percentiles": p.to_json(),
            "histogram_v2": histogram_to_base64(&h),
        })
    );
    Ok(())
}

/// Counts datagrams on `bind` (and echoes them when `echo`) until `deadline`, or until
/// `idle` has passed without a datagram once the first one came. With a non-zero `nap`, an
/// empty socket is met with a sleep of that long rather than a wait in poll, so that no
/// datagram finds the sink waiting and wakes it (the socket's buffer holds what arrives
/// meanwhile).
pub fn sink(
    bind: SocketAddr,
    echo: bool,
    deadline: Duration,
    idle: Duration,
    nap: Duration,
) -> Result<()> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    mmsg::big_buffers(&sock);
    sock.set_nonblocking(true)?;
    let end = Instant::now() + deadline;
    let mut batch = Batch::new();
    let (mut received, mut echoed, mut echo_failed) = (0u64, 0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        match batch.recv(&sock) {
            Ok(n) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                received += n as u64;
                if echo {
                    // Sources are in `addrs`: send each datagram back where it came from.
                    match batch.send(&sock, n, true) {
                        Ok(k) => {
                            echoed += k as u64;
                            echo_failed += (n - k) as u64;
                        }
                        Err(_) => echo_failed += n as u64,
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // Idle only counts when the socket is really empty (not when we were not
                // scheduled for a while).
                if first.is_some() && Instant::now() - last >= idle {
                    break;
                }
                if nap.is_zero() {
                    mmsg::wait_readable(&[&sock], 50)
                } else {
                    std::thread::sleep(nap)
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let window = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
    println!(
        "{}",
        json!({
            "received": received, "echoed": echoed, "echo_failed": echo_failed,
            "window_s": window, "nap_us": nap.as_micros() as u64,
            "pps": if window > 0.0 { received as f64 / window } else { 0.0 },
        })
    );
    Ok(())
}

pub fn new_client(secret: StaticSecret, server: PublicKey) -> Client {
    Client::new(
        ClientParams {
            secret,
            server,
            psk: PresharedKey::zero(),
            persistent_keepalive: None,
        },
        clock::monotonic_now(),
        clock::wall_clock(),
    )
}

fn open_sockets(n: usize, server: SocketAddr) -> Result<Vec<UdpSocket>> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            s.set_nonblocking(true)?;
            mmsg::big_buffers(&s);
            Ok(s)
        })
        .collect()
}

/// The receiver index a server message is addressed to (response, cookie reply, transport).
fn addressed_index(msg: &[u8]) -> Option<u32> {
    match wire::message_type(msg).ok()? {
        wire::MessageType::Response => wire::Response::new_checked(msg)
            .ok()
            .map(|r| r.receiver_index()),
        wire::MessageType::CookieReply => wire::CookieReply::new_checked(msg)
            .ok()
            .map(|r| r.receiver_index()),
        wire::MessageType::Transport => wire::transport_receiver_index(msg),
        _ => None,
    }
}

/// Emulated clients: connect all, then blast (packets sealed ahead, or sealed one by one with
/// the echoes decrypted: `LoadMode`), or (handshake mode) do handshakes in a loop.
pub fn loadgen(o: LoadgenOptions) -> Result<()> {
    let k = o.keys.len();
    if k == 0 {
        bail!("no keys");
    }
    let nsock = o.sockets.clamp(1, k);
    let socks = open_sockets(nsock, o.server)?;
    if let Some(window) = o.handshakes_in_flight {
        return handshake_loop(&o, &socks, window.clamp(1, k));
    }
    let (mut clients, by_index, connect_s) = connect_all(&o, &socks)?;
    let report = match o.mode {
        LoadMode::SealEach => blast_seal_each(&o, &socks, &mut clients, &by_index)?,
        LoadMode::Presealed(send) => crate::blast::run_presealed(&o, send, &socks, &mut clients)?,
    };
    let mut report = report;
    report["clients"] = json!(k);
    report["sockets"] = json!(nsock);
    report["connect_s"] = json!(connect_s);
    println!("{report}");
    Ok(())
}

/// Handshakes for every client (at most a few hundred in flight), each session confirmed by
/// its keepalive; returns the clients, who owns which receiver index, and the seconds taken.
#[allow(clippy::type_complexity)]
fn connect_all(
    o: &LoadgenOptions,
    socks: &[UdpSocket],
) -> Result<(Vec<Client>, HashMap<u32, usize>, f64)> {
    let k = o.keys.len();
    let nsock = socks.len();
    let mut clients: Vec<Client> = o
        .keys
        .iter()
        .map(|s| new_client(StaticSecret::from_bytes(*s.to_bytes()), o.server_key))
        .collect();
    let mut by_index: HashMap<u32, usize> = HashMap::with_capacity(k * 2);
    let mut connected = vec![false; k];
    let mut n_connected = 0usize;
    let mut rng = OsRandom;
    let mut batch = Batch::new();
    let t_connect = Instant::now();
    // Phase 1: handshakes for all clients, at most a few hundred in flight (below the
    // server's under-load threshold, so no cookie round trips are forced).
    let mut next_to_start = 0usize;
    let in_flight_max = 256usize;
    let mut active: Vec<usize> = Vec::new();
    let mut buf = [0u8; 256];
    while n_connected < k || !active.is_empty() {
        if t_connect.elapsed() > o.connect_timeout {
            bail!(
                "only {n_connected} of {k} clients connected within {:?}",
                o.connect_timeout
            );
        }
        while active.len() < in_flight_max && next_to_start < k {
            active.push(next_to_start);
            next_to_start += 1;
        }
        let now = clock::monotonic_now();
        for &i in &active {
            while let Some(n) = clients[i].poll_transmit(now, &mut rng, &mut buf) {
                if wire::message_type(&buf[..n]) == Ok(wire::MessageType::Initiation) {
                    if let Ok(init) = wire::Initiation::new_checked(&buf[..n]) {
                        by_index.insert(init.sender_index(), i);
                    }
                }
                let _ = socks[i % nsock].send(&buf[..n]);
            }
        }
        // Connected ones have now sent the keepalive that confirms their session.
        active.retain(|&i| !connected[i]);
        if active.is_empty() && next_to_start >= k {
            break;
        }
        mmsg::wait_readable(&socks.iter().collect::<Vec<_>>(), 5);
        for s in socks {
            while let Ok(n) = batch.recv(s) {
                if n == 0 {
                    break;
                }
                for j in 0..n {
                    let len = batch.lens[j];
                    let msg = &mut batch.bufs[j][..len];
                    let Some(&i) = addressed_index(msg).and_then(|x| by_index.get(&x)) else {
                        continue;
                    };
                    if let ClientEvent::Connected(_) =
                        clients[i].receive(msg, clock::monotonic_now())
                    {
                        if !connected[i] {
                            connected[i] = true;
                            n_connected += 1;
                        }
                    }
                }
            }
        }
    }
    // Confirm the last sessions (their keepalives).
    let now = clock::monotonic_now();
    for (i, c) in clients.iter_mut().enumerate() {
        while let Some(n) = c.poll_transmit(now, &mut rng, &mut buf) {
            let _ = socks[i % nsock].send(&buf[..n]);
        }
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    eprintln!("loadgen: {k} clients connected in {connect_s:.2}s");
    std::thread::sleep(Duration::from_millis(300));

    Ok((clients, by_index, connect_s))
}

/// The first generator: each packet sealed in the timed loop, sent in batches of 64 per
/// socket, the backend echoing everything and the echoes decrypted here.
fn blast_seal_each(
    o: &LoadgenOptions,
    socks: &[UdpSocket],
    clients: &mut [Client],
    by_index: &HashMap<u32, usize>,
) -> Result<serde_json::Value> {
    let k = clients.len();
    let nsock = socks.len();
    let mut batch = Batch::new();
    // Phase 2: blast. Clients are spread over the sockets; each round sends one batch per
    // socket, round robin over that socket's clients.
    let backend_ip = match o.backend.ip() {
        std::net::IpAddr::V4(a) => a,
        _ => bail!("IPv4 backend only"),
    };
    let addrs: Vec<Ipv4Addr> = (0..k).map(report::peer_address).collect();
    let mut cursor = vec![0usize; nsock];
    let per_sock: Vec<Vec<usize>> = (0..nsock)
        .map(|s| (0..k).filter(|i| i % nsock == s).collect())
        .collect();
    let (mut sent, mut send_failed, mut echoes, mut rx_other) = (0u64, 0u64, 0u64, 0u64);
    let mut seal_failed = 0u64;
    let mut rx = Batch::new();
    let watch = CpuWatch::start(o.server_pid, o.sink_pid);
    let start = Instant::now();
    let end = start + o.duration;
    let mut rounds = 0u64;
    while Instant::now() < end {
        let now = clock::monotonic_now();
        for (s, sock) in socks.iter().enumerate() {
            let mine = &per_sock[s];
            let mut n = 0;
            while n < mmsg::BATCH {
                let i = mine[cursor[s] % mine.len()];
                cursor[s] += 1;
                let slot = &mut batch.bufs[n];
                let plen = report::ipv4_udp_packet(
                    &mut slot[TRANSPORT_HEADER_LEN..],
                    addrs[i],
                    backend_ip,
                    10_000 + (i % 50_000) as u16,
                    o.backend.port(),
                    64,
                );
                match clients[i].encrypt(
                    &mut slot[..TRANSPORT_HEADER_LEN + plen + TAG_LEN + 16],
                    plen,
                    now,
                ) {
                    Ok(len) => {
                        batch.lens[n] = len;
                        n += 1;
                    }
                    Err(_) => {
                        seal_failed += 1;
                        if seal_failed > 1_000_000 {
                            bail!("sealing keeps failing (sessions lost?)");
                        }
                        break;
                    }
                }
            }
            match batch.send(sock, n, false) {
                Ok(m) => {
                    sent += m as u64;
                    send_failed += (n - m) as u64;
                }
                Err(_) => send_failed += n as u64,
            }
        }
        rounds += 1;
        // Drain the echoes.
        for sock in socks {
            for _ in 0..4 {
                let Ok(n) = rx.recv(sock) else { break };
                if n == 0 {
                    break;
                }
                let now = clock::monotonic_now();
                for j in 0..n {
                    let len = rx.lens[j];
                    let msg = &mut rx.bufs[j][..len];
                    match addressed_index(msg).and_then(|x| by_index.get(&x)) {
                        Some(&i) => match clients[i].receive(msg, now) {
                            ClientEvent::Packet(_) => echoes += 1,
                            _ => rx_other += 1,
                        },
                        None => rx_other += 1,
                    }
                }
                if n < mmsg::BATCH {
                    break;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = watch.finish();
    // Late echoes still in flight.
    let drain_end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < drain_end {
        let mut any = false;
        for sock in socks {
            if let Ok(n) = rx.recv(sock) {
                any |= n > 0;
                let now = clock::monotonic_now();
                for j in 0..n {
                    let len = rx.lens[j];
                    let msg = &mut rx.bufs[j][..len];
                    if let Some(&i) = addressed_index(msg).and_then(|x| by_index.get(&x)) {
                        if let ClientEvent::Packet(_) = clients[i].receive(msg, now) {
                            echoes += 1;
                        }
                    }
                }
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut report = json!({
        "mode": "seal-each", "packet_bytes": 20 + 8 + 64,
        "duration_s": secs, "sent": sent, "send_failed": send_failed,
        "seal_failed": seal_failed, "echoes": echoes, "rx_other": rx_other,
        "rounds": rounds,
        "sent_pps": sent as f64 / secs, "echo_pps": echoes as f64 / secs,
    });
    cpu.add_to(&mut report);
    Ok(report)
}

/// Handshakes in a loop: `window` fresh clients in flight, each replaced by a new one (the
/// next key) when its handshake completes or after a second without an answer.
fn handshake_loop(o: &LoadgenOptions, socks: &[UdpSocket], window: usize) -> Result<()> {
    let k = o.keys.len();
    let nsock = socks.len();
    let mut rng = OsRandom;
    let mut slots: Vec<(Client, usize, Instant)> = Vec::with_capacity(window);
    let mut by_index: HashMap<u32, usize> = HashMap::new();
    let mut next_key = 0usize;
    let (mut completed, mut timeouts, mut cookies, mut initiations) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = [0u8; 256];
    let mut batch = Batch::new();
    let start = Instant::now();
    let end = start + o.duration;
    let fresh = |next_key: &mut usize| {
        let key = *next_key % k;
        *next_key += 1;
        (
            new_client(
                StaticSecret::from_bytes(*o.keys[key].to_bytes()),
                o.server_key,
            ),
            key,
            Instant::now(),
        )
    };
    for _ in 0..window {
        slots.push(fresh(&mut next_key));
    }
    while Instant::now() < end {
        let now = clock::monotonic_now();
        for (si, slot) in slots.iter_mut().enumerate() {
            if slot.2.elapsed() > Duration::from_secs(1) {
                timeouts += 1;
                *slot = fresh(&mut next_key);
            }
            while let Some(n) = slot.0.poll_transmit(now, &mut rng, &mut buf) {
                if let Ok(init) = wire::Initiation::new_checked(&buf[..n]) {
                    if wire::message_type(&buf[..n]) == Ok(wire::MessageType::Initiation) {
                        by_index.insert(init.sender_index(), si);
                        initiations += 1;
                        let _ = socks[slot.1 % nsock].send(&buf[..n]);
                    }
                }
            }
        }
        mmsg::wait_readable(&socks.iter().collect::<Vec<_>>(), 2);
        for s in socks {
            while let Ok(n) = batch.recv(s) {
                if n == 0 {
                    break;
                }
                for j in 0..n {
                    let len = batch.lens[j];
                    let msg = &mut batch.bufs[j][..len];
                    let Some(idx) = addressed_index(msg) else {
                        continue;
                    };
                    let Some(&si) = by_index.get(&idx) else {
                        continue;
                    };
                    match slots[si].0.receive(msg, clock::monotonic_now()) {
                        ClientEvent::Connected(_) => {
                            completed += 1;
                            by_index.remove(&idx);
                            slots[si] = fresh(&mut next_key);
                        }
                        ClientEvent::CookieReceived => cookies += 1,
                        _ => {}
                    }
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "keys": k, "in_flight": window, "duration_s": secs,
            "initiations": initiations, "completed": completed, "timeouts": timeouts,
            "cookie_replies": cookies, "handshakes_per_s": completed as f64 / secs,
        })
    );
    Ok(())
}
