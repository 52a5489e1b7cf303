//! The headend-alone blast with packets sealed ahead of the run. Every emulated client's
//! datagrams are sealed before the clock starts, with consecutive counters, laid out one
//! socket's worth per buffer in the order they go out; the timed loop only hands slices of
//! those buffers to the kernel (`sendmmsg` of up to 1024 datagrams, or `UDP_SEGMENT` sends of
//! up to 64), so the generator's own cost per packet is the kernel's send path and nothing
//! else, and the figure it reports is the server's.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use concentrator::proto::client::Client;
use concentrator::proto::keys::{PublicKey, StaticSecret};
use concentrator::proto::time::Instant;
use concentrator::proto::wire::{TAG_LEN, TRANSPORT_HEADER_LEN};
use concentrator::sys::clock;

use crate::cpu::CpuWatch;
use crate::report;

/// Options of `loadgen`.
pub struct LoadgenOptions {
    pub server: SocketAddr,
    pub server_key: PublicKey,
    /// Private keys, one per emulated client (client `i` owns `report::peer_address(i)`).
    pub keys: Vec<StaticSecret>,
    pub backend: SocketAddr,
    pub sockets: usize,
    pub duration: Duration,
    /// Handshake mode: handshakes in a loop with this many in flight, no data.
    pub handshakes_in_flight: Option<usize>,
    /// Longest the initial handshakes of all clients may take.
    pub connect_timeout: Duration,
    /// The server's PID, to report its CPU time during the blast.
    pub server_pid: Option<u32>,
    /// The backend sink's PID, to report its CPU time during the blast.
    pub sink_pid: Option<u32>,
    /// How the blast seals and sends.
    pub mode: LoadMode,
    /// Length of each IP packet the clients send (pre-sealed mode).
    pub packet_bytes: usize,
    /// Most memory for the pre-sealed datagrams, in MiB.
    pub pool_mib: usize,
    /// Open-loop pacing: at most this many datagrams per second in all (none: as fast as the
    /// kernel takes them).
    pub rate_pps: Option<u64>,
}

/// How the blast seals and sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Every datagram sealed ahead of the run; the timed loop only sends (no echoes).
    Presealed(SendMode),
    /// The first generator: sealed one by one in the timed loop, echoes decrypted.
    SealEach,
}

/// Messages per `sendmmsg` call: the kernel caps `vlen` at `UIO_MAXIOV` (1024,
/// include/uapi/linux/uio.h).
pub const MMSG_MESSAGES: usize = 1024;
/// Datagrams per `UDP_SEGMENT` send: `UDP_MAX_SEGMENTS` is 64 on older kernels
/// (include/linux/udp.h); newer ones allow 128, 64 works on both.
pub const GSO_SEGMENTS: usize = 64;
/// Most UDP payload bytes one send may carry over IPv4: 65 535 (IP total length) less the
/// IPv4 (20) and UDP (8) headers (RFC 791, RFC 768).
pub const GSO_BYTES: usize = 65_535 - 20 - 8;
/// `UDP_SEGMENT` socket option (include/uapi/linux/udp.h).
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` socket option (include/uapi/linux/udp.h).
#[allow(dead_code)]
pub const UDP_GRO: libc::c_int = 104;

/// How the timed loop hands datagrams to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMode {
    /// `sendmmsg`, one message per datagram: every datagram crosses the stack alone, as
    /// datagrams from many hosts would arrive.
    Mmsg,
    /// `sendmmsg` of `UDP_SEGMENT` messages: a run of equal datagrams crosses the sending
    /// stack and the veth as one buffer, and a receiver with `UDP_GRO` on (the server's
    /// offloads) takes it in one read.
    Gso,
}

/// One socket's datagrams, sealed, each `stride` bytes, in the order they are sent.
pub struct SealedPool {
    bytes: Vec<u8>,
    stride: usize,
}

impl SealedPool {
    /// Number of datagrams.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.stride
    }

    /// Bytes per datagram.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// A pool of given datagrams, all of one length (tests).
    #[cfg(test)]
    pub fn from_datagrams(datagrams: &[Vec<u8>]) -> SealedPool {
        let stride = datagrams[0].len();
        assert!(datagrams.iter().all(|d| d.len() == stride));
        SealedPool {
            bytes: datagrams.concat(),
            stride,
        }
    }

    /// Datagram `i`.
    #[cfg(test)]
    pub fn datagram(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.stride..(i + 1) * self.stride]
    }
}

/// Datagram length of a sealed IP packet of `packet_len` bytes (no padding in this suite).
pub fn sealed_len(packet_len: usize) -> usize {
    TRANSPORT_HEADER_LEN + packet_len + TAG_LEN
}

/// Seals `rounds` packets for each client in `members` (indexes into `clients` and
/// `packets`, the IP packet each client sends, all of one length), interleaved: datagram
/// `r * members.len() + m` is the `r`-th packet of client `members[m]`. So every client's
/// counters rise by one from each of its datagrams to the next, in sending order: inside the
/// server's replay window whatever its size.
pub fn seal_pool(
    clients: &mut [Client],
    members: &[usize],
    packets: &[Vec<u8>],
    rounds: usize,
    now: Instant,
) -> Result<SealedPool> {
    let Some(&first) = members.first() else {
        bail!("a pool needs at least one client");
    };
    let packet_len = packets[first].len();
    let stride = sealed_len(packet_len);
    let mut bytes = vec![0u8; rounds * members.len() * stride];
    for (slot_no, slot) in bytes.chunks_exact_mut(stride).enumerate() {
        let i = members[slot_no % members.len()];
        let packet = &packets[i];
        if packet.len() != packet_len {
            bail!(
                "client {i}'s packet is {} bytes, others {packet_len}: one pool holds one size",
                packet.len()
            );
        }
        slot[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + packet_len].copy_from_slice(packet);
        match clients[i].encrypt(slot, packet_len, now) {
            Ok(n) if n == stride => {}
            Ok(n) => bail!("client {i} sealed {n} bytes, expected {stride}"),
            Err(e) => bail!("client {i} cannot seal ({e}): is its session up?"),
        }
    }
    Ok(SealedPool { bytes, stride })
}

/// The messages one send call carries, from datagram `from` of a pool of `len` datagrams of
/// `stride` bytes: (byte offset, byte length) each, at most `per_message` datagrams per
/// message and `messages` messages, never past the pool's end.
pub fn plan_messages(
    from: usize,
    len: usize,
    stride: usize,
    per_message: usize,
    messages: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let per_message = per_message.max(1);
    (0..messages).map_while(move |m| {
        let start = from + m * per_message;
        (start < len).then(|| {
            let count = per_message.min(len - start);
            (start * stride, count * stride)
        })
    })
}

/// Datagrams of `stride` bytes one `UDP_SEGMENT` message carries.
pub fn segments_per_message(stride: usize) -> usize {
    (GSO_BYTES / stride.max(1)).clamp(1, GSO_SEGMENTS)
}

/// Turns `UDP_SEGMENT` on for `sock`: every send longer than `stride` is cut into datagrams
/// of `stride` bytes by the kernel.
pub fn enable_gso(sock: &UdpSocket, stride: usize) -> io::Result<()> {
    set_udp_option(sock, UDP_SEGMENT, stride as libc::c_int)
}

/// Sets a `SOL_UDP` integer option.
pub fn set_udp_option(sock: &UdpSocket, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt with a valid int option value of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Message headers for sends out of a pool (reused from call to call).
pub struct PoolSender {
    mode: SendMode,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams in each message of the last call.
    counts: Vec<usize>,
}

impl PoolSender {
    pub fn new(mode: SendMode) -> PoolSender {
        let n = match mode {
            SendMode::Mmsg => MMSG_MESSAGES,
            // 64 messages of up to 64 datagrams: 4096 datagrams per call.
            SendMode::Gso => 64,
        };
        PoolSender {
            mode,
            // SAFETY: all-zero is a valid iovec and mmsghdr (null pointers, zero lengths).
            iov: vec![unsafe { std::mem::zeroed() }; n],
            hdrs: vec![unsafe { std::mem::zeroed() }; n],
            counts: vec![0; n],
        }
    }

    /// Sends up to `limit` datagrams of `pool` from datagram `from` on the connected `sock`;
    /// returns how many went (`WouldBlock` when none could).
    pub fn send(
        &mut self,
        sock: &UdpSocket,
        pool: &SealedPool,
        from: usize,
        limit: usize,
    ) -> io::Result<usize> {
        let per_message = match self.mode {
            SendMode::Mmsg => 1,
            SendMode::Gso => segments_per_message(pool.stride),
        };
        let len = pool.len().min(from.saturating_add(limit));
        let mut n = 0;
        for (m, (offset, bytes)) in
            plan_messages(from, len, pool.stride, per_message, self.hdrs.len()).enumerate()
        {
            self.iov[m] = libc::iovec {
                // The kernel only reads from it (a send).
                iov_base: pool.bytes[offset..].as_ptr() as *mut libc::c_void,
                iov_len: bytes,
            };
            let h = &mut self.hdrs[m].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &mut self.iov[m];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.counts[m] = bytes / pool.stride;
            n = m + 1;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: hdrs[..n] point at iov entries owned by self and at pool bytes, both alive
        // and unmoved for the call; the kernel only reads them.
        let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), self.hdrs.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.counts[..rc as usize].iter().sum())
    }
}

/// More than one generator thread offers on the 2-core lab machine (it measured at most
/// 0.5 Mpps with `sendmmsg`): no run seals more than its duration at this rate could send.
/// A pool that runs out early says so (`pool_ran_out`) and the run is just shorter.
const MAX_OFFERED_PPS: f64 = 1.5e6;
/// Datagrams a paced blast sends per wake-up (one `sendmmsg` call or a few): it sleeps
/// until this many are due.
const PACED_BATCH: u64 = 256;

/// Datagrams due by `elapsed` at `rate` per second, less the `sent` ones.
pub fn due(rate: u64, elapsed: std::time::Duration, sent: u64) -> u64 {
    let by_now = u128::from(rate) * elapsed.as_nanos() / 1_000_000_000;
    u64::try_from(by_now)
        .unwrap_or(u64::MAX)
        .saturating_sub(sent)
}

/// When, from the start, the `n`-th datagram is due at `rate` per second.
pub fn due_at(rate: u64, n: u64) -> std::time::Duration {
    let nanos = u128::from(n) * 1_000_000_000 / u128::from(rate.max(1));
    std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// IPv4 (20) and UDP (8) headers (RFC 791, RFC 768) of each packet.
const IPV4_UDP_HEADERS: usize = 20 + 8;

/// The IP packet client `i` sends: UDP from its tunnel address to the backend, `bytes` long.
pub fn client_packet(i: usize, backend: std::net::SocketAddrV4, bytes: usize) -> Vec<u8> {
    let mut p = vec![0u8; bytes];
    report::ipv4_udp_packet(
        &mut p,
        report::peer_address(i),
        *backend.ip(),
        10_000 + (i % 50_000) as u16,
        backend.port(),
        bytes - IPV4_UDP_HEADERS,
    );
    p
}

/// Seals the pools (every client of socket `s` is `i % sockets == s`), then sends them for
/// `o.duration` or until they run out; returns the report (no echoes: the sink only counts).
pub fn run_presealed(
    o: &LoadgenOptions,
    send: SendMode,
    socks: &[UdpSocket],
    clients: &mut [Client],
) -> Result<Value> {
    let k = clients.len();
    let nsock = socks.len();
    // The tunnel's MTU is the largest packet (config: mtu = 1420 in the lab).
    if !(IPV4_UDP_HEADERS..=1420).contains(&o.packet_bytes) {
        bail!(
            "--packet-bytes {} is outside 28..=1420 (IPv4+UDP headers .. the tunnel MTU)",
            o.packet_bytes
        );
    }
    let std::net::SocketAddr::V4(backend) = o.backend else {
        bail!("IPv4 backend only");
    };
    let packets: Vec<Vec<u8>> = (0..k)
        .map(|i| client_packet(i, backend, o.packet_bytes))
        .collect();
    let stride = sealed_len(o.packet_bytes);
    let by_memory = (o.pool_mib << 20) / stride;
    let rate = o.rate_pps.map_or(MAX_OFFERED_PPS, |r| r as f64);
    let by_time = (o.duration.as_secs_f64() * rate) as usize;
    let rounds = (by_memory.min(by_time) / k).max(1);
    let t_seal = std::time::Instant::now();
    let now = clock::monotonic_now();
    let pools: Vec<SealedPool> = (0..nsock)
        .map(|s| {
            let members: Vec<usize> = (s..k).step_by(nsock).collect();
            seal_pool(clients, &members, &packets, rounds, now)
        })
        .collect::<Result<_>>()?;
    let sealed: usize = pools.iter().map(SealedPool::len).sum();
    let seal_s = t_seal.elapsed().as_secs_f64();
    eprintln!(
        "loadgen: sealed {sealed} datagrams of {stride} bytes ({rounds} per client) in {seal_s:.2}s"
    );
    if send == SendMode::Gso {
        for (sock, pool) in socks.iter().zip(&pools) {
            enable_gso(sock, pool.stride())?;
        }
    }
    let mut sender = PoolSender::new(send);
    let mut cursors = vec![0usize; nsock];
    let (mut sent, mut would_block, mut send_errors) = (0u64, 0u64, 0u64);
    let mut last_error = String::new();
    let mut ran_out_after: Option<f64> = None;
    let watch = CpuWatch::start(o.server_pid, o.sink_pid);
    let start = std::time::Instant::now();
    let end = start + o.duration;
    loop {
        let now = std::time::Instant::now();
        if now >= end {
            break;
        }
        let budget = match o.rate_pps {
            Some(rate) => {
                let due = due(rate, now - start, sent);
                if due < PACED_BATCH {
                    // Asleep until a batch is due: pacing costs no CPU.
                    let wake = start + due_at(rate, sent + PACED_BATCH);
                    std::thread::sleep(wake.min(end).saturating_duration_since(now));
                    continue;
                }
                (due as usize).div_ceil(nsock)
            }
            None => usize::MAX,
        };
        let mut any_left = false;
        for (s, sock) in socks.iter().enumerate() {
            if cursors[s] >= pools[s].len() {
                continue;
            }
            any_left = true;
            match sender.send(sock, &pools[s], cursors[s], budget) {
                Ok(n) => {
                    cursors[s] += n;
                    sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => would_block += 1,
                Err(e) => {
                    send_errors += 1;
                    last_error = e.to_string();
                    if send_errors > 100_000 {
                        bail!("sends keep failing: {e}");
                    }
                }
            }
        }
        if !any_left {
            // The CPU window stays the run's duration: the server drains what it holds.
            ran_out_after = Some(start.elapsed().as_secs_f64());
            std::thread::sleep(end.saturating_duration_since(std::time::Instant::now()));
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = watch.finish();
    let mut report = json!({
        "mode": match send { SendMode::Mmsg => "presealed-mmsg", SendMode::Gso => "presealed-gso" },
        "packet_bytes": o.packet_bytes, "datagram_bytes": stride,
        "sealed": sealed, "seal_s": seal_s, "pool_ran_out_after_s": ran_out_after,
        "rate_limit_pps": o.rate_pps,
        "duration_s": secs, "sent": sent,
        // Offered while there was something to send.
        "sent_pps": sent as f64 / ran_out_after.unwrap_or(secs),
        "would_block": would_block, "send_errors": send_errors, "last_send_error": last_error,
    });
    cpu.add_to(&mut report);
    Ok(report)
}

#[cfg(test)]
mod tests;
