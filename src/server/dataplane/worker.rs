//! One data-plane worker: a TUN queue, its UDP sockets and an io_uring, on one core.
//!
//! Slots `0..tun_slots` live on the TUN side: a read from the TUN, sealed in place (with
//! `fair_queue`, first queued in the egress queue, `queueing`, until it lets the read out), sent
//! to the peer, then read again; without `fair_queue`, a read that sealed to a single datagram
//! is copied into a staging slot and read into again at once, and the staged datagrams leave
//! together at the end of the batch (`gather`). The socket slots come next: a datagram
//! received, opened in place, written to the TUN (or relayed to another client), then received
//! into again. The staging slots are the last. Every submission of a loop iteration goes to the
//! kernel in one `io_uring_enter`, and all its completions are handled as one batch under one
//! pinned view of the session table.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::slots::{
    tun_slot_count, OPS_PER_SLOT, REGION, STAGING_BYTES, STAGING_SENDS, STAGING_SLOTS,
};
use super::staging::Staging;
use super::stats::{Counters, DropReason, SharedCounters};
use crate::proto::time::Instant;
use crate::proto::wire::{TAG_LEN, TRANSPORT_HEADER_LEN};
use crate::server::decision::{Gate, GateConfig, GateRole};
use crate::server::handoff::{HandshakeMessage, LoadSignal, SharedCookieSecrets, WorkerRole};
use crate::server::latency::{latency_histogram, record_latency, SharedLatency};
use crate::server::session_table::{SessionTable, TableGuard, TableSnapshot};
use crate::sys::clock::monotonic_now;
use crate::sys::uring::{Completion, FileIndex, IoFailure, Op, SlotClass, Uring};
use crate::tunnel::egress_queue::{EgressLimits, EgressQueue};
use crate::tunnel::fq::Dropped;

/// Room for the largest datagram: header + MTU (at most `MAX_MTU`) + tag, rounded up.
pub const SLOT_BYTES: usize = 2048;
/// Receives kept in flight on each socket.
pub const RECVS_IN_FLIGHT: usize = 32;
/// How long a worker sleeps in the kernel at most, so it notices `stop` and publishes counters.
const WAIT: Duration = Duration::from_millis(100);
/// How often the worker merges its latency histogram into the shared one.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// Fault injection, for tests only: `<worker>:<packets>` in this environment variable makes
/// worker `<worker>` panic once it has received `<packets>` packets (TUN reads and datagrams),
/// so that tests can check what a worker's death does to the server. The server logs a
/// warning at start-up when it is set; nothing else reads it.
pub const INJECT_PANIC_ENV: &str = "CONCENTRATOR_FAULT_INJECTION_PANIC_WORKER";

/// A worker panic requested through [`INJECT_PANIC_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedPanic {
    /// Which worker panics.
    pub worker: usize,
    /// After how many received packets.
    pub after_packets: u64,
}

/// [`INJECT_PANIC_ENV`] holds something other than `<worker>:<packets>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{INJECT_PANIC_ENV}={0:?} is not <worker>:<packets> (a fault-injection knob for tests: \
     unset it)"
)]
pub struct BadInjectedPanic(String);

impl InjectedPanic {
    /// Parses `<worker>:<packets>`.
    pub fn parse(value: &str) -> Result<Self, BadInjectedPanic> {
        let bad = || BadInjectedPanic(value.to_string());
        let (worker, after) = value.split_once(':').ok_or_else(bad)?;
        Ok(InjectedPanic {
            worker: worker.trim().parse().map_err(|_| bad())?,
            after_packets: after.trim().parse().map_err(|_| bad())?,
        })
    }

    /// The fault requested in the environment, if any.
    pub fn from_env() -> Result<Option<Self>, BadInjectedPanic> {
        match std::env::var(INJECT_PANIC_ENV) {
            Ok(value) => Self::parse(&value).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(BadInjectedPanic(v.to_string_lossy().into_owned()))
            }
        }
    }
}

/// Everything a worker owns or shares.
pub struct WorkerContext {
    /// Worker number (for logs and counters).
    pub id: usize,
    /// The core to pin to, if any.
    pub core: Option<core_affinity::CoreId>,
    /// This worker's TUN queue.
    pub tun: OwnedFd,
    /// This worker's sockets (one per underlay family).
    pub sockets: Vec<UdpSocket>,
    /// The shared session table.
    pub table: Arc<SessionTable>,
    /// Where handshake messages go.
    pub handshakes: Sender<HandshakeMessage>,
    /// A headend's worker, or a client's (whose gate passes its server's handshake messages
    /// and pushes to the client's control thread).
    pub role: WorkerRole,
    /// Where the counters are published.
    pub counters: Arc<SharedCounters>,
    /// Where the per-packet latency (batch received to sent) is published.
    pub latency: Arc<SharedLatency>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// Relay client-to-client packets inside the worker.
    pub client_to_client: bool,
    /// Lower the MSS of TCP SYNs crossing the tunnel to fit this MTU (`mss_clamp`).
    pub mss_clamp: Option<u16>,
    /// The server's mac1 key: initiations are checked before they are queued.
    pub mac_keys: Arc<crate::proto::cookie::ServerMacKeys>,
    /// The control thread's under-load state (cookie-less initiations are shed here then).
    pub load: Arc<LoadSignal>,
    /// The cookie secrets, kept current by the control thread: under load, workers answer
    /// initiations without a valid mac2 themselves.
    pub cookie_secrets: SharedCookieSecrets,
    /// TUN reads go through the egress queue (`queueing`) rather than being sealed at once.
    pub fair_queue: bool,
    /// The TUN queue carries virtio headers (super-packets) and the sockets use UDP GRO/GSO.
    pub offloads: bool,
    /// The super-packets the TUN takes in writes (the offloads it accepted): packets of
    /// other kinds are written one by one.
    pub gso_types: crate::offload::coalesce::GsoTypes,
    /// Tests only ([`INJECT_PANIC_ENV`]): panic after this many received packets.
    pub panic_after_packets: Option<u64>,
}

/// What became of a slot's packet when it was not dropped.
pub(super) enum Outcome {
    /// Handed to the kernel again (sent or written); the slot comes back with that completion.
    Queued,
    /// Done with (a keepalive, a handshake passed on): the slot can be re-armed.
    Consumed,
}

pub(super) struct Worker {
    pub(super) ctx: WorkerContext,
    pub(super) ring: Uring,
    pub(super) counters: Counters,
    tun_slots: u32,
    /// Per socket, by its number ([`FileIndex::socket`]): true for IPv4.
    pub(super) socket_families: Vec<bool>,
    pub(super) offloads: bool,
    /// Bytes a receive may fill in a socket slot, single-shot or as a provided buffer: what
    /// the ingress path reads the datagrams from (one region with offloads, else the slot).
    pub(super) receive_len: usize,
    pub(super) gso_types: crate::offload::coalesce::GsoTypes,
    /// Decides what becomes of each received datagram.
    pub(super) gate: Gate,
    pub(super) mss_clamp: Option<u16>,
    /// Idle slots whose re-arm could not be queued: retried before each wait (room for every
    /// slot, so adding one never allocates).
    unarmed: Vec<u32>,
    /// TUN reads waiting to be sealed and sent, in fair-queue order.
    pub(super) egress_queue: EgressQueue,
    /// Slots the egress queue just dropped, to re-arm (room for every TUN slot).
    pub(super) queue_dropped: Vec<Dropped>,
    /// Per TUN slot, the bytes its sends in flight count against the send budget (0: none).
    pub(super) send_bytes: Vec<u64>,
    /// Where single datagrams of a batch are gathered into `UDP_SEGMENT` sends (`gather`).
    pub(super) staging: Staging,
}

/// Runs a worker until `stop` is set. `ready` gets the outcome of the set-up (the ring must be
/// created on the thread that uses it: it is a single-issuer ring), so the caller can fail the
/// start-up with a clear message instead of running with a worker missing.
pub fn run(
    ctx: WorkerContext,
    ready: crossbeam_channel::Sender<Result<(), crate::sys::error::SysError>>,
) {
    match setup(ctx) {
        Ok(mut worker) => {
            let _ = ready.send(Ok(()));
            worker.arm_all();
            worker.run_loop();
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

/// The worker's ring: its TUN slots, `RECVS_IN_FLIGHT` receive slots per socket (behind a
/// multishot receive where the kernel has it), then its staging slots, which it returns.
fn ring_for(
    ctx: &WorkerContext,
    tun_slots: usize,
) -> Result<(Uring, Staging), crate::sys::error::SysError> {
    let sockets: Vec<_> = ctx.sockets.iter().map(|s| s.as_raw_fd()).collect();
    let slots = tun_slots + RECVS_IN_FLIGHT * ctx.sockets.len();
    let (slot_bytes, ops) = if ctx.offloads {
        (2 * REGION, OPS_PER_SLOT)
    } else {
        (SLOT_BYTES, 1)
    };
    // The egress queue sends in its own order, packet by packet; without it, single
    // datagrams are gathered into staging slots (`gather`), sent with `UDP_SEGMENT`: an
    // offload, so not with `offloads = false`, the kill switch for all of them.
    let staging = if ctx.fair_queue || !ctx.offloads {
        0
    } else {
        STAGING_SLOTS
    };
    let entries = (slots * ops + staging * STAGING_SENDS)
        .next_power_of_two()
        .min(4096) as u32;
    let classes = [
        SlotClass {
            count: slots,
            bytes: slot_bytes,
            ops,
        },
        SlotClass {
            count: staging,
            bytes: STAGING_BYTES,
            ops: STAGING_SENDS,
        },
    ];
    let mut ring = Uring::with_slots(ctx.tun.as_raw_fd(), &sockets, &classes, entries)?;
    for number in 0..sockets.len() {
        // One multishot receive per socket into its slots (kernel 6.0+); else one receive
        // armed per slot.
        let file = FileIndex::socket(number);
        if let Err(e) = ring.enable_multishot(file, RECVS_IN_FLIGHT as u16) {
            tracing::info!(worker = ctx.id, error = %e, "no multishot receive (kernel before 6.0?): one receive per slot");
        }
    }
    Ok((ring, Staging::new(slots as u32, staging as u32)))
}

fn setup(ctx: WorkerContext) -> Result<Worker, crate::sys::error::SysError> {
    if let Some(core) = ctx.core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(
                worker = ctx.id,
                core = core.id,
                "could not pin worker to its core"
            );
        }
    }
    let tun_slots = tun_slot_count(ctx.offloads, ctx.fair_queue);
    let (ring, staging) = ring_for(&ctx, tun_slots)?;
    let unarmed = Vec::with_capacity(ring.slot_count());
    let seed = crate::proto::rng::Random::next_u32(&mut crate::proto::rng::OsRandom);
    let egress_queue =
        EgressQueue::new(EgressLimits::for_reads(ctx.offloads), seed).map_err(|e| {
            crate::sys::error::SysError::InvalidArgument(format!("the egress queue: {e}"))
        })?;
    let socket_families = ctx
        .sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.is_ipv4()).unwrap_or(true))
        .collect();
    let gate = Gate::new(
        GateConfig {
            role: match ctx.role {
                WorkerRole::Server => GateRole::Server,
                WorkerRole::Client(_) => GateRole::Client,
            },
            mac_keys: ctx.mac_keys.clone(),
            load: ctx.load.clone(),
            cookie_secrets: ctx.cookie_secrets.clone(),
            client_to_client: ctx.client_to_client,
            mss_clamp: ctx.mss_clamp,
        },
        &mut crate::proto::rng::OsRandom,
    );
    Ok(Worker {
        offloads: ctx.offloads,
        receive_len: if ctx.offloads { REGION } else { SLOT_BYTES },
        gso_types: ctx.gso_types,
        gate,
        mss_clamp: ctx.mss_clamp,
        ctx,
        ring,
        counters: Counters::default(),
        tun_slots: tun_slots as u32,
        socket_families,
        unarmed,
        egress_queue,
        queue_dropped: Vec::with_capacity(tun_slots + 1),
        send_bytes: vec![0; tun_slots],
        staging,
    })
}

impl Worker {
    /// The socket a socket-side slot receives on: each socket has `RECVS_IN_FLIGHT` slots,
    /// after the TUN's.
    fn home_socket(&self, slot: u32) -> FileIndex {
        FileIndex::socket((slot - self.tun_slots) as usize / RECVS_IN_FLIGHT)
    }

    fn arm_all(&mut self) {
        for slot in 0..self.ring.slot_count() as u32 {
            self.rearm(slot);
        }
        self.arm_multishot();
    }

    /// (Re-)arms the multishot receive of each socket that has none in flight.
    fn arm_multishot(&mut self) {
        if let Err(e) = self.ring.arm_multishot() {
            tracing::error!(worker = self.ctx.id, error = %e, "could not arm a multishot receive");
        }
    }

    /// Puts a slot back to its home operation; if that cannot be queued now, the slot is
    /// retried before the next wait ([`Worker::rearm_unarmed`]) rather than lost.
    pub(super) fn rearm(&mut self, slot: u32) {
        if let Err(e) = self.try_rearm(slot) {
            tracing::error!(worker = self.ctx.id, slot, error = %e, "could not re-arm an I/O slot; retrying");
            if !self.unarmed.contains(&slot) {
                self.unarmed.push(slot);
            }
        }
    }

    /// Re-arms the slots [`Worker::rearm`] could not, until one fails again.
    fn rearm_unarmed(&mut self) {
        while let Some(&slot) = self.unarmed.last() {
            if self.try_rearm(slot).is_err() {
                break;
            }
            self.unarmed.pop();
        }
    }

    fn try_rearm(&mut self, slot: u32) -> std::io::Result<()> {
        if slot >= self.staging.first {
            // A staging slot has no home operation: it waits idle for the next batch.
            return Ok(());
        }
        match (slot < self.tun_slots, self.offloads) {
            (true, false) => self.ring.read(
                slot,
                FileIndex::TUN,
                TRANSPORT_HEADER_LEN,
                SLOT_BYTES - TRANSPORT_HEADER_LEN - TAG_LEN,
            ),
            (true, true) => self.ring.read(slot, FileIndex::TUN, 0, REGION),
            (false, _) if self.ring.is_multishot(self.home_socket(slot)) => {
                self.ring
                    .provide(slot, self.home_socket(slot), self.receive_len)
            }
            (false, _) => self
                .ring
                .recv(slot, self.home_socket(slot), 0, self.receive_len),
        }
    }

    fn run_loop(&mut self) {
        let mut batch: Vec<Completion> = Vec::with_capacity(self.ring.slot_count() * 2);
        let table = self.ctx.table.clone();
        let mut latency = latency_histogram();
        // The batch in hand: when its completions arrived and how many packets it moved.
        let mut pending: Option<(Instant, u64)> = None;
        let mut last_publish = monotonic_now();
        while !self.ctx.stop.load(Ordering::Relaxed) {
            if let Some((received, packets)) = pending.take() {
                // Everything the batch produced is submitted by the wait below.
                let sent = monotonic_now();
                record_latency(&mut latency, (sent - received).as_nanos() as u64, packets);
                if sent - last_publish >= PUBLISH_EVERY {
                    self.ctx.latency.merge_from(&mut latency);
                    last_publish = sent;
                }
            }
            batch.clear();
            if !self.unarmed.is_empty() {
                self.rearm_unarmed();
            }
            self.arm_multishot();
            // Packets queued with no send in flight to wake the wait: only look for completions.
            let wait = if self.egress_queue.needs_service() {
                Duration::ZERO
            } else {
                WAIT
            };
            match self.ring.submit_and_wait(wait) {
                Ok(done) => batch.extend_from_slice(done),
                Err(e) => {
                    tracing::error!(worker = self.ctx.id, error = %e, "io_uring wait failed; worker stops");
                    break;
                }
            }
            let now = monotonic_now();
            // A fresh snapshot per batch: picks up a rebuilt map (after mass removals).
            let snapshot = table.snapshot();
            let guard = snapshot.guard();
            // One latency sample per packet received in the batch (each segment of a TUN
            // super-packet, each datagram of a GRO receive), so the histogram's count equals the
            // worker's `tun_rx_packets + udp_rx_packets`.
            let received_before = self.counters.tun_rx_packets + self.counters.udp_rx_packets;
            for c in &batch {
                self.complete(c, now, &snapshot, &guard);
            }
            if !self.egress_queue.is_empty() {
                self.drain_egress_queue(monotonic_now(), &snapshot, &guard);
            }
            // What the batch staged leaves with the next wait.
            self.flush_staged();
            drop(guard);
            drop(snapshot);
            let packets =
                self.counters.tun_rx_packets + self.counters.udp_rx_packets - received_before;
            if packets > 0 {
                pending = Some((now, packets));
            } else if batch.is_empty() {
                // Idle: publish what the last busy period recorded instead of holding it.
                self.ctx.latency.merge_from(&mut latency);
            }
            self.counters.queue = *self.egress_queue.stats();
            self.ctx.counters.publish(&self.counters);
            if let Some(after) = self.ctx.panic_after_packets {
                let received = self.counters.tun_rx_packets + self.counters.udp_rx_packets;
                if received >= after {
                    panic!(
                        "injected fault: worker {} panics after {received} packets \
                         ({INJECT_PANIC_ENV})",
                        self.ctx.id
                    );
                }
            }
        }
        self.ctx.counters.publish(&self.counters);
        self.ctx.latency.merge_from(&mut latency);
    }

    fn complete(
        &mut self,
        c: &Completion,
        now: Instant,
        table: &TableSnapshot,
        guard: &TableGuard<'_>,
    ) {
        let c = match *c {
            Completion::Slot(done) => done,
            Completion::ReceiveEnded { file, failure } => {
                // Out of buffers (all held by packets still being sent or written; it is
                // re-armed once one comes back), cancelled at shutdown, or an error.
                match failure {
                    None | Some(IoFailure::OutOfBuffers | IoFailure::Cancelled) => {}
                    Some(failure) => {
                        self.counters.drop(DropReason::IoError);
                        tracing::debug!(worker = self.ctx.id, socket = %file, error = %failure, "multishot receive error");
                    }
                }
                return;
            }
        };
        let n = match c.result {
            Ok(n) => n,
            Err(failure) => {
                // Cancelled at shutdown, or to be retried: not an I/O error.
                if !matches!(
                    failure,
                    IoFailure::Cancelled | IoFailure::WouldBlock | IoFailure::Interrupted
                ) {
                    self.counters.drop(DropReason::IoError);
                    tracing::debug!(worker = self.ctx.id, op = ?c.op, error = %failure, "I/O error");
                }
                if c.slot_idle {
                    self.tun_sends_done(c.slot);
                    self.rearm(c.slot);
                }
                return;
            }
        };
        match c.op {
            // Sealed and sent when the egress queue lets it out (`drain_egress_queue`).
            Op::Read if self.ctx.fair_queue => self.queue_tun_read(c.slot, n, now),
            Op::Read => match self.egress(c.slot, n, now, table, guard) {
                Ok(Outcome::Queued) => {}
                Ok(Outcome::Consumed) => self.rearm(c.slot),
                Err(why) => {
                    self.counters.drop(why);
                    self.rearm(c.slot);
                }
            },
            Op::Recv => match self.ingress(c.slot, n, now, table, guard) {
                Ok(Outcome::Queued) => {}
                Ok(Outcome::Consumed) => self.rearm(c.slot),
                Err(why) => {
                    self.counters.drop(why);
                    self.rearm(c.slot);
                }
            },
            // Sends and writes were counted when submitted.
            Op::Send | Op::Write => {
                if c.slot_idle {
                    self.tun_sends_done(c.slot);
                    self.rearm(c.slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keypair::Keypair;
    use crate::proto::keys::{PublicKey, StaticSecret};
    use crate::proto::rng::OsRandom;
    use crate::proto::session::Session;
    use crate::proto::wire::AddressAssignment;
    use crate::server::session_table::PeerEntry;
    use std::net::Ipv4Addr;

    mod ecn;
    mod gather;

    /// A worker without offloads whose "TUN" is a UDP socket (nothing is read from it), with
    /// one socket, and a peer at 10.66.0.2 with an endpoint and a current keypair.
    fn worker() -> Worker {
        worker_with(false)
    }

    fn worker_with(offloads: bool) -> Worker {
        worker_built(offloads, true)
    }

    /// [`worker_with`], with or without the egress queue (`fair_queue`).
    fn worker_built(offloads: bool, fair_queue: bool) -> Worker {
        let now = Instant::from_nanos(1);
        let server = crate::proto::server::Server::new(
            StaticSecret::generate(&mut OsRandom),
            now,
            &mut OsRandom,
        );
        let table = Arc::new(SessionTable::new());
        let session = Arc::new(Session::new());
        let key = zeroize::Zeroizing::new([3u8; 32]);
        session.install(Arc::new(Keypair::new(&key, &key, 1, 2, now, true)), now);
        let peer = Arc::new(PeerEntry::new(
            PublicKey::from_bytes([5; 32]),
            session,
            AddressAssignment {
                ipv4: Ipv4Addr::new(10, 66, 0, 2),
                ipv4_prefix: 24,
                ipv6: None,
                mtu: 1420,
            },
        ));
        peer.roam_to("127.0.0.1:9".parse().unwrap());
        table.insert_peer(&peer);
        let (handshakes, _) = crossbeam_channel::bounded(1);
        let ctx = WorkerContext {
            id: 0,
            core: None,
            tun: UdpSocket::bind("127.0.0.1:0").unwrap().into(),
            sockets: vec![UdpSocket::bind("127.0.0.1:0").unwrap()],
            table,
            handshakes,
            role: WorkerRole::Server,
            counters: Arc::default(),
            latency: Arc::default(),
            stop: Arc::default(),
            client_to_client: false,
            mss_clamp: None,
            mac_keys: Arc::new(crate::proto::cookie::ServerMacKeys::new(&[9; 32])),
            load: Arc::default(),
            cookie_secrets: Arc::new(arc_swap::ArcSwap::new(server.cookie_secrets().clone())),
            offloads,
            fair_queue,
            gso_types: crate::offload::coalesce::GsoTypes::NONE,
            panic_after_packets: None,
        };
        setup(ctx).unwrap()
    }

    /// Moves the test peer's endpoint to a fresh loopback socket that reports the TOS of what
    /// arrives, and returns that socket.
    fn peer_at_loopback(w: &Worker) -> std::net::UdpSocket {
        let receiver = crate::sys::udp::bind_reuseport("127.0.0.1:0".parse().unwrap())
            .expect("a loopback socket reporting the TOS");
        let snapshot = w.ctx.table.snapshot();
        let guard = snapshot.guard();
        let peer = snapshot
            .by_address(Ipv4Addr::new(10, 66, 0, 2).into(), &guard)
            .expect("the test peer");
        peer.roam_to(receiver.local_addr().unwrap());
        receiver
    }

    /// Puts a 28-byte IPv4 packet to 10.66.0.2 where a TUN read lands in `slot`; its length.
    fn tun_packet(w: &mut Worker, slot: u32) -> usize {
        let mut packet = [0u8; 28];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&28u16.to_be_bytes());
        packet[8] = 64;
        packet[9] = 17;
        packet[12..16].copy_from_slice(&[10, 66, 0, 1]);
        packet[16..20].copy_from_slice(&[10, 66, 0, 2]);
        let buf = w.ring.buffer(slot).unwrap();
        buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + 28].copy_from_slice(&packet);
        packet.len()
    }

    #[test]
    fn a_packet_whose_send_cannot_be_queued_gives_its_slot_back() {
        let w = worker();
        // The ring takes submissions only from the thread that made it (single issuer): on
        // another, a full submission queue cannot be flushed and the next push fails.
        let (w, outcome, io_errors) = std::thread::spawn(move || {
            let mut w = w;
            let entries = w.ring.slot_count(); // one operation per slot without offloads
            for i in 0..entries {
                let slot = 1 + (i % (entries - 1)) as u32;
                w.ring.read(slot, FileIndex::TUN, 0, 64).unwrap();
            }
            let n = tun_packet(&mut w, 0);
            let snapshot = w.ctx.table.snapshot();
            let guard = snapshot.guard();
            let outcome = w.egress(0, n, Instant::from_nanos(2), &snapshot, &guard);
            drop(guard);
            let io_errors = w.counters.drops[DropReason::IoError as usize];
            (w, outcome.map(|o| matches!(o, Outcome::Queued)), io_errors)
        })
        .join()
        .unwrap();
        if io_errors == 0 {
            eprintln!(
                "SKIPPED a_packet_whose_send_cannot_be_queued_gives_its_slot_back: this ring \
                 takes submissions from any thread (no IORING_SETUP_SINGLE_ISSUER)"
            );
            return;
        }
        assert_ne!(
            outcome,
            Ok(true),
            "nothing is in flight on the slot, so no completion will ever give it back"
        );
        drop(w);
    }

    #[test]
    fn receives_never_get_more_room_than_the_ingress_path_reads() {
        for offloads in [false, true] {
            let mut w = worker_with(offloads);
            w.arm_all();
            // What `ingress` slices the received datagrams from.
            let input = if offloads { REGION } else { SLOT_BYTES };
            for slot in w.tun_slots..w.staging.first {
                assert_eq!(
                    w.ring.receive_capacity(slot),
                    Some(input),
                    "slot {slot}, offloads {offloads}, multishot {}",
                    w.ring.is_multishot(w.home_socket(slot))
                );
            }
        }
    }

    #[test]
    fn a_slot_that_cannot_be_rearmed_is_rearmed_later() {
        let w = worker();
        let w = std::thread::spawn(move || {
            let mut w = w;
            let entries = w.ring.slot_count();
            for i in 0..entries {
                let slot = 1 + (i % (entries - 1)) as u32;
                w.ring.read(slot, FileIndex::TUN, 0, 64).unwrap();
            }
            // The queue is full and this thread cannot flush it.
            w.rearm(0);
            w
        })
        .join()
        .unwrap();
        let mut w = w;
        if w.unarmed.is_empty() {
            eprintln!("SKIPPED a_slot_that_cannot_be_rearmed_is_rearmed_later: no single issuer");
            return;
        }
        assert_eq!(w.unarmed, vec![0]);
        assert!(w.ring.buffer(0).is_some(), "slot 0 idle, nothing queued");
        // On the ring's own thread, before the next wait.
        w.rearm_unarmed();
        assert!(w.unarmed.is_empty());
        assert!(w.ring.buffer(0).is_none(), "slot 0 has its read queued");
    }

    #[test]
    fn a_queued_tun_read_is_sealed_and_sent_when_the_queue_is_drained() {
        let mut w = worker();
        assert!(w.ctx.fair_queue);
        let n = tun_packet(&mut w, 0);
        w.queue_tun_read(0, n, Instant::from_nanos(2));
        assert_eq!(w.egress_queue.len(), 1);
        assert_eq!(w.counters.udp_tx_packets, 0, "queued, not sent yet");
        let snapshot = w.ctx.table.snapshot();
        let guard = snapshot.guard();
        w.drain_egress_queue(Instant::from_nanos(3), &snapshot, &guard);
        drop(guard);
        assert!(w.egress_queue.is_empty());
        assert_eq!(w.counters.udp_tx_packets, 1);
        assert_eq!(w.egress_queue.sends_in_flight(), 1);
        assert_eq!(
            w.send_bytes[0], n as u64,
            "the send counts against the budget"
        );
        w.tun_sends_done(0);
        assert_eq!(w.egress_queue.sends_in_flight(), 0);
    }

    #[test]
    fn slots_the_full_queue_drops_are_read_into_again() {
        let mut w = worker();
        let limit = crate::tunnel::egress_queue::EgressLimits::for_reads(false).queued_packets;
        assert!(
            limit < w.tun_slots,
            "room for a read beyond the queue's limit"
        );
        for slot in 0..=limit {
            let n = tun_packet(&mut w, slot);
            w.queue_tun_read(slot, n, Instant::from_nanos(2));
        }
        let stats = *w.egress_queue.stats();
        assert!(stats.overflow_drops > 0, "{stats:?}");
        assert_eq!(
            w.egress_queue.len() as u64 + stats.overflow_drops,
            u64::from(limit) + 1
        );
        // One flow: the oldest were dropped, and their slots have reads armed again.
        for slot in 0..stats.overflow_drops as u32 {
            assert!(w.ring.buffer(slot).is_none(), "slot {slot} not re-armed");
        }
        assert!(
            w.ring.buffer(limit).is_some(),
            "the newest read is still queued"
        );
        assert!(w.queue_dropped.is_empty());
    }

    #[test]
    fn injected_panic_parses_worker_and_packets_only() {
        assert_eq!(
            InjectedPanic::parse("1:40"),
            Ok(InjectedPanic {
                worker: 1,
                after_packets: 40
            })
        );
        for bad in ["", "1", "1:", ":40", "a:40", "1:-4", "1:40:2"] {
            let e = InjectedPanic::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(INJECT_PANIC_ENV) && e.contains("unset it"),
                "{bad:?}: {e}"
            );
        }
    }
}
