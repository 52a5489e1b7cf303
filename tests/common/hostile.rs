//! Tools for the hostile-input tests (`tests/hostile.rs`): threads that run inside a lab
//! namespace, a tiny AF_PACKET sniffer, a garbage generator, a raw-socket initiation flood
//! from many source addresses, emulated protocol clients for session churn, the control
//! socket and the server's memory figures.
//!
//! Everything here is bounded in time: every loop has a deadline and a stop flag.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use concentrator::proto::client::{Client, ClientEvent, ClientParams};
use concentrator::proto::cookie::{self, MacKeys};
use concentrator::proto::keys::{PresharedKey, PublicKey, StaticSecret};
use concentrator::proto::rng::OsRandom;
use concentrator::proto::wire::{self, INITIATION_LEN, TAG_LEN, TRANSPORT_HEADER_LEN};
use concentrator::sys::clock;

/// An integer from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` on a new thread that has joined network namespace `ns` (`/run/netns/<ns>`).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a namespace file we opened; it only affects this thread (the
        // thread does not share its network namespace with the others after this call).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// xorshift64*: fast, good enough for garbage.
#[derive(Clone)]
pub struct Xs(pub u64);

impl Xs {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sniffer

/// UDP payloads captured from one source to one destination port.
#[derive(Default, Debug, Clone)]
pub struct Captured {
    pub initiations: Vec<Vec<u8>>,
    pub transports: Vec<Vec<u8>>,
}

/// Captures, in namespace `ns` on interface `ifname`, the UDP payloads `src` sends to port
/// `dport`, until `stop` is set or `max` passes. AF_PACKET/SOCK_DGRAM: IP packets without the
/// link header.
pub fn sniff(
    ns: &str,
    ifname: &str,
    src: Ipv4Addr,
    dport: u16,
    stop: Arc<AtomicBool>,
    max: Duration,
) -> JoinHandle<Captured> {
    let ifname = ifname.to_string();
    in_netns(ns, move || {
        let eth_p_ip = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(eth_p_ip)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(ifname.clone()).unwrap();
        // SAFETY: valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(ifindex > 0, "no interface {ifname}");
        // SAFETY: all-zero sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = eth_p_ip;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind with a properly sized sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let end = Instant::now() + max;
        let mut out = Captured::default();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            // SAFETY: recv into our buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let p = &buf[..n as usize];
            if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
                continue;
            }
            let ihl = usize::from(p[0] & 0xf) * 4;
            if Ipv4Addr::new(p[12], p[13], p[14], p[15]) != src || p.len() < ihl + 8 {
                continue;
            }
            let udp = &p[ihl..];
            if u16::from_be_bytes([udp[2], udp[3]]) != dport {
                continue;
            }
            let payload = udp[8..].to_vec();
            match payload.first() {
                Some(1) if payload.len() == INITIATION_LEN => out.initiations.push(payload),
                Some(4) if payload.len() >= 32 && out.transports.len() < 10_000 => {
                    out.transports.push(payload)
                }
                _ => {}
            }
        }
        out
    })
}

// ---------------------------------------------------------------------------------------------
// Garbage

/// What the garbage flood sent, by kind.
#[derive(Default, Debug, Clone)]
pub struct GarbageReport {
    pub sent: HashMap<&'static str, u64>,
    pub total: u64,
    pub seconds: f64,
}

impl GarbageReport {
    pub fn rate(&self) -> f64 {
        self.total as f64 / self.seconds.max(1e-9)
    }
}

/// One garbage datagram of kind `k` (see [`GARBAGE_KINDS`]).
fn garbage(kind: &str, rng: &mut Xs, cap: &Captured, out: &mut Vec<u8>) {
    out.clear();
    let real_index = |rng: &mut Xs| -> [u8; 4] {
        if cap.transports.is_empty() {
            (rng.next() as u32).to_le_bytes()
        } else {
            let t = &cap.transports[rng.below(cap.transports.len() as u64) as usize];
            [t[4], t[5], t[6], t[7]]
        }
    };
    match kind {
        "random" => {
            out.resize(rng.below(1500) as usize, 0);
            rng.fill(out);
        }
        "truncated" => {
            // A prefix of a real message (initiation or transport).
            let src = if rng.below(2) == 0 && !cap.initiations.is_empty() {
                &cap.initiations[0]
            } else if !cap.transports.is_empty() {
                &cap.transports[rng.below(cap.transports.len() as u64) as usize]
            } else {
                out.push(4);
                return;
            };
            let n = rng.below(src.len() as u64) as usize;
            out.extend_from_slice(&src[..n]);
        }
        "oversized" => {
            // Larger than the server's receive slot (2048) or the MTU: up to 9000 bytes.
            out.resize(2049 + rng.below(7000) as usize, 0);
            rng.fill(out);
            out[0] = 1 + rng.below(4) as u8;
            out[1..4].fill(0);
            if out[0] == 4 {
                out[4..8].copy_from_slice(&real_index(rng));
            }
        }
        "wrong_length" => {
            // Every type with a length other than its own (type 4: shorter than 32).
            let t = 1 + rng.below(4) as u8;
            let right = match t {
                1 => 148,
                2 => 116,
                3 => 64,
                _ => 32,
            };
            let len = if t == 4 {
                4 + rng.below(28) as usize
            } else {
                loop {
                    let l = 4 + rng.below(300) as usize;
                    if l != right {
                        break l;
                    }
                }
            };
            out.resize(len, 0);
            rng.fill(out);
            out[0] = t;
            out[1..4].fill(0);
        }
        "bad_header" => {
            // Unknown types and non-zero reserved bytes at the right lengths.
            let t = [0u8, 5, 6, 0x7f, 0xff, 1, 4][rng.below(7) as usize];
            out.resize(
                if t == 1 {
                    148
                } else {
                    64 + rng.below(100) as usize
                },
                0,
            );
            rng.fill(out);
            out[0] = t;
            if t == 1 || t == 4 {
                out[1] = 1 + rng.below(255) as u8; // reserved must be zero
            } else {
                out[1..4].fill(0);
            }
        }
        "server_types" => {
            // Responses and cookie replies at their exact lengths: the server never takes them.
            let t = 2 + rng.below(2) as u8;
            out.resize(if t == 2 { 116 } else { 64 }, 0);
            rng.fill(out);
            out[0] = t;
            out[1..4].fill(0);
        }
        "forged_transport" => {
            // A real receiver index, a counter inside the window, random ciphertext.
            let len = 32 + rng.below(1400) as usize;
            out.resize(len, 0);
            rng.fill(out);
            out[..4].copy_from_slice(&[4, 0, 0, 0]);
            out[4..8].copy_from_slice(&real_index(rng));
            out[8..16].copy_from_slice(&(rng.below(4000)).to_le_bytes());
        }
        "unknown_index" => {
            let len = 32 + rng.below(200) as usize;
            out.resize(len, 0);
            rng.fill(out);
            out[..4].copy_from_slice(&[4, 0, 0, 0]);
        }
        "replayed_transport" => {
            if let Some(t) = cap
                .transports
                .get(rng.below(cap.transports.len().max(1) as u64) as usize)
            {
                out.extend_from_slice(t);
            }
        }
        "replayed_initiation" => {
            if let Some(i) = cap.initiations.last() {
                out.extend_from_slice(i);
            }
        }
        _ => unreachable!("unknown garbage kind {kind}"),
    }
}

/// The kinds of garbage, with their weights (initiation replays cost the server a DH each,
/// so they are a small share).
pub const GARBAGE_KINDS: [(&str, u64); 10] = [
    ("random", 20),
    ("truncated", 10),
    ("oversized", 4),
    ("wrong_length", 10),
    ("bad_header", 10),
    ("server_types", 6),
    ("forged_transport", 20),
    ("unknown_index", 8),
    ("replayed_transport", 10),
    ("replayed_initiation", 2),
];

/// Sends garbage from `bind` (an address of namespace `ns`) to `target` as fast as one thread
/// can (unpaced) for `duration` or until `stop`.
pub fn garbage_flood(
    ns: &str,
    bind: Ipv4Addr,
    target: SocketAddr,
    cap: Captured,
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<GarbageReport> {
    in_netns(ns, move || {
        let sock = UdpSocket::bind((bind, 0)).expect("bind garbage socket");
        sock.connect(target).expect("connect");
        sock.set_nonblocking(true).unwrap();
        // Pre-build a pool per kind so the loop only sends.
        let mut rng = Xs(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
        let weight_sum: u64 = GARBAGE_KINDS.iter().map(|k| k.1).sum();
        let mut pool: Vec<(&'static str, Vec<u8>)> = Vec::new();
        for (kind, w) in GARBAGE_KINDS {
            for _ in 0..(w * 4096 / weight_sum).max(8) {
                let mut b = Vec::new();
                garbage(kind, &mut rng, &cap, &mut b);
                pool.push((kind, b));
            }
        }
        // Shuffle so kinds interleave.
        for i in (1..pool.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            pool.swap(i, j);
        }
        let mut report = GarbageReport::default();
        let start = Instant::now();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < duration {
            for _ in 0..256 {
                let (kind, b) = &pool[i % pool.len()];
                i += 1;
                match sock.send(b) {
                    Ok(_) => {
                        *report.sent.entry(kind).or_default() += 1;
                        report.total += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    Err(_) => {} // ECONNREFUSED from an ICMP error and the like
                }
            }
        }
        report.seconds = start.elapsed().as_secs_f64();
        report
    })
}

// ---------------------------------------------------------------------------------------------
// Handshake flood

/// What the initiation flood sent.
#[derive(Default, Debug, Clone)]
pub struct FloodReport {
    pub sent: u64,
    pub good_mac1: u64,
    pub bad_mac1: u64,
    pub seconds: f64,
    pub sources: usize,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Where the flood's Ethernet frames go: the attacker's interface and the two MAC addresses of
/// its link to the server.
#[derive(Debug, Clone)]
pub struct FloodLink {
    pub interface: String,
    pub own_mac: [u8; 6],
    pub next_hop_mac: [u8; 6],
}

/// Parses `aa:bb:cc:dd:ee:ff` after `marker` (`link/ether`, `lladdr`) in `ip` output.
pub fn mac_after(text: &str, marker: &str) -> Option<[u8; 6]> {
    let mut words = text.split_whitespace().skip_while(|w| *w != marker);
    words.next()?;
    let mut mac = [0u8; 6];
    let mut parts = words.next()?.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

/// Floods `target` with initiations from namespace `ns`, as prepared Ethernet frames sent on
/// `link` through a packet socket that bypasses the qdisc: a real attacker's cost of making
/// packets is not the headend's, and on this shared box it would otherwise be charged to the
/// throughput being measured. Source addresses `10.2.(i/256).(i%256)` for `i < sources`,
/// random ports, about `rate` per second, until `stop` or `max`. One in ten has a bad mac1;
/// the others carry a valid mac1 for `server` (random bodies: they pass the cheap check and
/// reach the responder). The server needs a route to 10.2.0.0/16 via the attacker.
#[allow(clippy::too_many_arguments)]
pub fn initiation_flood(
    ns: &str,
    link: FloodLink,
    server: PublicKey,
    target: SocketAddrV4,
    sources: usize,
    rate: u64,
    max: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<FloodReport> {
    in_netns(ns, move || {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // Protocol 0: the socket only sends (a socket bound to ETH_P_IP would also be handed a
        // copy of every frame arriving in the namespace).
        // SAFETY: plain socket(2); owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(link.interface.clone()).unwrap();
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(
            ifindex > 0,
            "no interface {} in the attacker namespace",
            link.interface
        );
        let one: i32 = 1;
        let big: i32 = 8 << 20;
        // SAFETY: setsockopt with ints.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const i32).cast(),
                4,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&big as *const i32).cast(),
                4,
            );
        }
        // SAFETY: all-zero sockaddr_ll is valid; filled below.
        let mut dst: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        dst.sll_family = libc::AF_PACKET as u16;
        dst.sll_protocol = proto;
        dst.sll_ifindex = ifindex as i32;
        dst.sll_halen = 6;
        dst.sll_addr[..6].copy_from_slice(&link.next_hop_mac);
        let keys = MacKeys::new(server.as_bytes());
        let mut rng = Xs(0xD1B5_4A32_D192_ED03 ^ u64::from(std::process::id()));
        const POOL: usize = 8192;
        const FRAME: usize = 14 + 20 + 8 + INITIATION_LEN;
        let sources = sources.clamp(1, 65536);
        let mut pool: Vec<[u8; FRAME]> = Vec::with_capacity(POOL);
        let mut bad = vec![false; POOL];
        for (i, is_bad) in bad.iter_mut().enumerate() {
            let mut frame = [0u8; FRAME];
            frame[..6].copy_from_slice(&link.next_hop_mac);
            frame[6..12].copy_from_slice(&link.own_mac);
            frame[12..14].copy_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes());
            let pkt = &mut frame[14..];
            let msg = &mut pkt[28..];
            rng.fill(msg);
            msg[..4].copy_from_slice(&[1, 0, 0, 0]);
            // mac1 over the whole 148-byte message, mac2 zero (no cookie).
            cookie::clear_mac2(msg);
            cookie::write_mac1(&keys, msg);
            if i % 10 == 9 {
                pkt[28 + 116] ^= 0x55; // bad mac1
                *is_bad = true;
            }
            let s = i % sources;
            let src = Ipv4Addr::new(10, 2, (s >> 8) as u8, (s & 0xff) as u8);
            let total = (20 + 8 + INITIATION_LEN) as u16;
            pkt[0] = 0x45;
            pkt[2..4].copy_from_slice(&total.to_be_bytes());
            pkt[4..6].copy_from_slice(&(i as u16).to_be_bytes());
            pkt[8] = 64;
            pkt[9] = 17;
            pkt[12..16].copy_from_slice(&src.octets());
            pkt[16..20].copy_from_slice(&target.ip().octets());
            let c = ip_checksum(&pkt[..20]);
            pkt[10..12].copy_from_slice(&c.to_be_bytes());
            let sport = 1024 + rng.below(60000) as u16;
            pkt[20..22].copy_from_slice(&sport.to_be_bytes());
            pkt[22..24].copy_from_slice(&target.port().to_be_bytes());
            pkt[24..26].copy_from_slice(&((8 + INITIATION_LEN) as u16).to_be_bytes());
            // UDP checksum 0: none (allowed for IPv4).
            pool.push(frame);
        }
        const BATCH: usize = 64;
        // SAFETY: zeroed iovec/mmsghdr are valid; pointers set before each call.
        let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
        let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
        let mut report = FloodReport {
            sources,
            ..Default::default()
        };
        let start = Instant::now();
        let mut next = 0usize;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
            // Pace: never ahead of `rate`.
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if report.sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let n = ((due - report.sent) as usize).min(BATCH);
            for k in 0..n {
                let p = &mut pool[(next + k) % POOL];
                iov[k] = libc::iovec {
                    iov_base: p.as_mut_ptr().cast(),
                    iov_len: p.len(),
                };
                let h = &mut hdrs[k].msg_hdr;
                h.msg_iov = &mut iov[k];
                h.msg_iovlen = 1;
                h.msg_name = (&mut dst as *mut libc::sockaddr_ll).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            }
            // SAFETY: hdrs[..n] point at live buffers.
            let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), n as u32, 0) };
            if rc <= 0 {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            for k in 0..rc as usize {
                if bad[(next + k) % POOL] {
                    report.bad_mac1 += 1;
                } else {
                    report.good_mac1 += 1;
                }
            }
            next += rc as usize;
            report.sent += rc as u64;
        }
        report.seconds = start.elapsed().as_secs_f64();
        report
    })
}

// ---------------------------------------------------------------------------------------------
// Emulated clients (session churn)

/// One round of emulated clients.
#[derive(Default, Debug, Clone)]
pub struct ChurnRound {
    pub clients: usize,
    pub connected: usize,
    pub data_sent: usize,
    pub initiations: u64,
    pub seconds: f64,
    /// The addresses the server assigned, by client.
    pub addresses: Vec<Option<Ipv4Addr>>,
}

fn udp_packet(src: Ipv4Addr, dst: SocketAddrV4, payload: &[u8], out: &mut [u8]) -> usize {
    let len = 28 + payload.len();
    let p = &mut out[..len];
    p.fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let c = ip_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    len
}

/// Runs emulated clients (one per key) from namespace `ns` against `server`: each
/// handshakes, sends one UDP datagram through the tunnel to `data_to`, then is dropped. At most
/// `window` handshakes in flight (below the server's under-load threshold), over `sockets`
/// UDP sockets; gives up at `deadline`.
#[allow(clippy::too_many_arguments)]
pub fn churn_round(
    ns: &str,
    server: SocketAddr,
    server_key: PublicKey,
    keys: Vec<[u8; 32]>,
    data_to: SocketAddrV4,
    window: usize,
    sockets: usize,
    deadline: Duration,
) -> JoinHandle<ChurnRound> {
    in_netns(ns, move || {
        let k = keys.len();
        let socks: Vec<UdpSocket> = (0..sockets.clamp(1, k.max(1)))
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.connect(server).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let mut clients: Vec<Option<Client>> = (0..k).map(|_| None).collect();
        let mut round = ChurnRound {
            clients: k,
            addresses: vec![None; k],
            ..Default::default()
        };
        let mut by_index: HashMap<u32, usize> = HashMap::new();
        let mut done = vec![false; k];
        let mut active: Vec<usize> = Vec::new();
        let mut next = 0usize;
        let mut rng = OsRandom;
        let mut buf = vec![0u8; 2048];
        let mut rx = vec![0u8; 2048];
        let start = Instant::now();
        let mut finished = 0usize;
        while finished < k && start.elapsed() < deadline {
            while active.len() < window && next < k {
                clients[next] = Some(Client::new(
                    ClientParams {
                        secret: StaticSecret::from_bytes(keys[next]),
                        server: server_key,
                        psk: PresharedKey::zero(),
                        persistent_keepalive: None,
                    },
                    clock::monotonic_now(),
                    clock::wall_clock(),
                ));
                active.push(next);
                next += 1;
            }
            let now = clock::monotonic_now();
            for &i in &active {
                let c = clients[i].as_mut().unwrap();
                while let Some(n) = c.poll_transmit(now, &mut rng, &mut buf) {
                    if let Ok(init) = wire::Initiation::new_checked(&buf[..n]) {
                        by_index.insert(init.sender_index(), i);
                        round.initiations += 1;
                    }
                    let _ = socks[i % socks.len()].send(&buf[..n]);
                }
            }
            // Receive until quiet for a moment.
            let mut got = 0;
            for s in &socks {
                while let Ok(n) = s.recv(&mut rx) {
                    got += 1;
                    let idx = match wire::message_type(&rx[..n]) {
                        Ok(wire::MessageType::Response) => wire::Response::new_checked(&rx[..n])
                            .ok()
                            .map(|r| r.receiver_index()),
                        Ok(wire::MessageType::CookieReply) => {
                            wire::CookieReply::new_checked(&rx[..n])
                                .ok()
                                .map(|r| r.receiver_index())
                        }
                        Ok(wire::MessageType::Transport) => {
                            wire::transport_receiver_index(&rx[..n])
                        }
                        _ => None,
                    };
                    let Some(&i) = idx.and_then(|x| by_index.get(&x)) else {
                        continue;
                    };
                    let Some(c) = clients[i].as_mut() else {
                        continue;
                    };
                    let now = clock::monotonic_now();
                    if let ClientEvent::Connected(a) = c.receive(&mut rx[..n], now) {
                        round.connected += 1;
                        round.addresses[i] = Some(a.ipv4);
                        // The keepalive that confirms the session, then one datagram.
                        while let Some(m) = c.poll_transmit(now, &mut rng, &mut buf) {
                            let _ = socks[i % socks.len()].send(&buf[..m]);
                        }
                        let payload = (i as u64).to_le_bytes();
                        let len = udp_packet(a.ipv4, data_to, &payload, &mut buf[16..]);
                        if let Ok(m) = c.encrypt(&mut buf, len, now) {
                            let _ = socks[i % socks.len()].send(&buf[..m]);
                            round.data_sent += 1;
                        }
                        done[i] = true;
                    }
                }
            }
            let before = active.len();
            active.retain(|&i| !done[i]);
            for i in 0..k {
                if done[i] && clients[i].is_some() {
                    // Gone: the client forgets everything.
                    clients[i] = None;
                }
            }
            finished += before - active.len();
            if got == 0 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        round.seconds = start.elapsed().as_secs_f64();
        round
    })
}

/// Fresh random private keys (bytes) and their public keys.
pub fn gen_keys(n: usize) -> (Vec<[u8; 32]>, Vec<PublicKey>) {
    let mut rng = OsRandom;
    (0..n)
        .map(|_| {
            let s = StaticSecret::generate(&mut rng);
            (*s.to_bytes(), s.public_key())
        })
        .unzip()
}

// ---------------------------------------------------------------------------------------------
// Control socket and memory

/// One request on the control socket; the parsed answer.
pub fn control(sock: &Path, req: &serde_json::Value) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {sock:?}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("control answer {line:?}: {e}"))
}

/// (VmRSS, VmHWM) of `pid` in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The server's VmRSS once it is at most `limit_kib`, polled until `wait` runs out (then the
/// last reading). Prints the readings, so a run shows how memory came back.
pub fn settled_rss(pid: u32, limit_kib: u64, wait: Duration) -> u64 {
    let until = Instant::now() + wait;
    let mut readings = Vec::new();
    loop {
        let (rss, _) = memory_kib(pid);
        readings.push(rss);
        if rss <= limit_kib || Instant::now() >= until {
            eprintln!("FIGURE churn: VmRSS readings every 250 ms after removal: {readings:?} KiB");
            return rss;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sum of one drop reason over the workers of a `show --json` answer.
pub fn drops(show: &serde_json::Value, reason: &str) -> u64 {
    show["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["drops"][reason].as_u64()).sum())
        .unwrap_or(0)
}

/// Sum of a worker counter over the workers.
pub fn worker_sum(show: &serde_json::Value, field: &str) -> u64 {
    show["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w[field].as_u64()).sum())
        .unwrap_or(0)
}

/// Every drop reason summed over workers, as a compact string.
pub fn drop_summary(show: &serde_json::Value) -> String {
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    for w in show["workers"].as_array().into_iter().flatten() {
        if let Some(d) = w["drops"].as_object() {
            for (k, v) in d {
                *by.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    by.iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Avoid an unused warning for the header constants in some test binaries.
pub const _SIZES: (usize, usize) = (TRANSPORT_HEADER_LEN, TAG_LEN);

/// CPU seconds used so far by process `pid` (all its threads, user + system) and by the whole
/// machine (all CPUs' non-idle time, interrupts and softirqs included: the kernel's receive path
/// of a flood runs in whichever context delivers it, often the sender's).
pub fn cpu_seconds(pid: u32) -> (f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th (proc(5): fields 14 and 15).
    let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let process = fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0);
    let machine = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = machine
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq (guest time is already in user; steal is
    // other guests' time on a shared host).
    let busy: f64 =
        cpu.iter().take(7).sum::<f64>() - cpu.get(3).unwrap_or(&0.0) - cpu.get(4).unwrap_or(&0.0);
    (process / ticks, busy / ticks)
}
