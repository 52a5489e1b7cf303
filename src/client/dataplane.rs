//! The client's data plane: the server's worker, run once (no pinned core) on the client's TUN
//! queue and a duplicate of its UDP socket, until [`ClientDataplane::stop`] (or drop).
//!
//! The worker finds the server's entry for every packet read from the TUN (it holds 0.0.0.0/0
//! and ::/0) and opens what the server sends by receiver index, as on the server; the control
//! thread keeps the entry's indexes equal to the session's keypairs
//! ([`ClientDataplane::sync_indexes`], after each handshake event) and its endpoint on the
//! server in use ([`ClientDataplane::set_endpoint`], after a failover).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use ipnet::IpNet;

use crate::offload::coalesce::GsoTypes;
use crate::proto::cookie::{CookieChecker, ServerMacKeys};
use crate::proto::keys::PublicKey;
use crate::proto::rng::OsRandom;
use crate::proto::session::Session;
use crate::proto::wire::AddressAssignment;
use crate::server::dataplane::stats::{Counters, SharedCounters};
use crate::server::dataplane::worker::{self, WorkerContext};
use crate::server::handoff::{ServerMessage, WorkerRole, SERVER_MESSAGE_QUEUE};
use crate::server::session_table::{PeerEntry, SessionTable};
use crate::sys::clock;
use crate::sys::error::SysError;

/// Why the client's data plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Duplicating the socket or starting the thread failed.
    #[error("{what}")]
    Io {
        /// The step that failed.
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The worker could not set up its io_uring.
    #[error("starting the data-plane worker (io_uring; needs Linux 5.19+)")]
    WorkerStart(#[source] SysError),
    /// The worker thread ended during its set-up.
    #[error("the data-plane worker thread died during start-up")]
    WorkerLost,
}

/// How the client's TUN and socket were set up.
#[derive(Debug, Clone, Copy)]
pub struct DataplaneOptions {
    /// The TUN carries virtio headers and the socket has UDP GRO on.
    pub offloads: bool,
    /// The super-packets the TUN takes in writes.
    pub gso_types: GsoTypes,
    /// TUN reads go through the egress queue (per-flow fair queue with CoDel).
    pub fair_queue: bool,
}

/// The queue on which the worker passes the server's handshake messages and pushes to the
/// control thread; one for the client's life (it outlives rebuilt tunnels).
pub fn server_messages() -> (Sender<ServerMessage>, Receiver<ServerMessage>) {
    crossbeam_channel::bounded(SERVER_MESSAGE_QUEUE)
}

/// The running worker and the table it reads.
pub struct ClientDataplane {
    table: Arc<SessionTable>,
    server: Arc<PeerEntry>,
    /// The receiver indexes published for `server`.
    published: Vec<u32>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    counters: Arc<SharedCounters>,
}

/// The server as the client's table holds it: no address of its own in the tunnel, every
/// network behind it.
fn server_entry(key: PublicKey, session: Arc<Session>, endpoint: SocketAddr) -> Arc<PeerEntry> {
    let no_address = AddressAssignment {
        ipv4: Ipv4Addr::UNSPECIFIED,
        ipv4_prefix: 0,
        ipv6: None,
        mtu: 0,
    };
    let everything = vec![
        IpNet::V4(Default::default()), // 0.0.0.0/0
        IpNet::V6(Default::default()), // ::/0
    ];
    let entry = PeerEntry::new(key, session, no_address).with_allowed_ips(everything);
    entry.roam_to(endpoint);
    Arc::new(entry)
}

impl ClientDataplane {
    /// Starts the worker on `tun` (the TUN queue, which it owns from now on) and a duplicate
    /// of `socket`, sealing and opening under `session` for the server `server_key` at
    /// `endpoint`; the server's handshake messages and pushes go to `to_control`. Returns once
    /// the worker's ring is set up.
    pub fn start(
        tun: OwnedFd,
        socket: &UdpSocket,
        session: Arc<Session>,
        server_key: PublicKey,
        endpoint: SocketAddr,
        options: DataplaneOptions,
        to_control: Sender<ServerMessage>,
    ) -> Result<Self, DataplaneError> {
        let socket = socket.try_clone().map_err(|source| DataplaneError::Io {
            what: "duplicating the UDP socket for the data plane",
            source,
        })?;
        let table = Arc::new(SessionTable::new());
        let server = server_entry(server_key, session, endpoint);
        table.insert_peer(&server);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(SharedCounters::default());
        // A client's gate answers no initiation: the responder's keys and secrets it is
        // given are never read.
        let cookies =
            CookieChecker::new(server_key.as_bytes(), clock::monotonic_now(), &mut OsRandom);
        let (handshakes, _) = crossbeam_channel::bounded(1);
        let ctx = WorkerContext {
            id: 0,
            core: None,
            tun,
            sockets: vec![socket],
            table: table.clone(),
            handshakes,
            role: WorkerRole::Client(to_control),
            counters: counters.clone(),
            latency: Arc::default(),
            stop: stop.clone(),
            client_to_client: false,
            mss_clamp: None,
            mac_keys: Arc::new(ServerMacKeys::new(server_key.as_bytes())),
            load: Arc::default(),
            cookie_secrets: Arc::new(arc_swap::ArcSwap::new(cookies.secrets().clone())),
            fair_queue: options.fair_queue,
            offloads: options.offloads,
            gso_types: options.gso_types,
            panic_after_packets: None,
        };
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let worker = std::thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || worker::run(ctx, ready_tx))
            .map_err(|source| DataplaneError::Io {
                what: "starting the data-plane thread",
                source,
            })?;
        let mut dataplane = ClientDataplane {
            table,
            server,
            published: Vec::new(),
            stop,
            worker: Some(worker),
            counters,
        };
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(DataplaneError::WorkerStart(e)),
            Err(_) => return Err(DataplaneError::WorkerLost),
        }
        dataplane.sync_indexes();
        Ok(dataplane)
    }

    /// Publishes the receiver indexes of the session's keypairs and forgets those of keypairs
    /// it no longer holds. Call after every event that installs or drops a keypair (a
    /// completed handshake, a clear, a switch of server): the server's packets under a new
    /// keypair are dropped until its index is published.
    pub fn sync_indexes(&mut self) {
        let held = self.server.session.local_indexes();
        for gone in self.published.iter().filter(|i| !held.contains(i)) {
            self.table.remove_index(*gone);
        }
        for new in held.iter().filter(|i| !self.published.contains(i)) {
            self.table.insert_index(*new, &self.server);
        }
        self.published = held;
    }

    /// Sends to the server at `endpoint` from now on (another server after a failover).
    pub fn set_endpoint(&self, endpoint: SocketAddr) {
        self.server.roam_to(endpoint);
    }

    /// The worker's counters as last published (it publishes after every batch).
    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// Whether the worker ended without being stopped (it stops on a failed io_uring wait,
    /// or panicked): the client has no data plane left.
    pub fn died(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && self.worker.as_ref().is_none_or(|w| w.is_finished())
    }

    /// Stops the worker and waits for it; its TUN queue and socket close with it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("the data-plane worker panicked");
            }
        }
    }
}

impl Drop for ClientDataplane {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keypair::Keypair;

    fn key() -> PublicKey {
        PublicKey::from_bytes([7; 32])
    }

    #[test]
    fn the_server_entry_is_behind_every_address() {
        let session = Arc::new(Session::new());
        let table = SessionTable::new();
        let entry = server_entry(key(), session, "192.0.2.1:51820".parse().unwrap());
        table.insert_peer(&entry);
        let snapshot = table.snapshot();
        let guard = snapshot.guard();
        for addr in ["8.8.8.8", "10.0.0.1", "0.0.0.0", "2001:db8::1", "::"] {
            let found = snapshot.by_address(addr.parse().unwrap(), &guard);
            assert!(found.is_some_and(|e| Arc::ptr_eq(e, &entry)), "{addr}");
            assert!(
                entry.owns_source(addr.parse().unwrap(), &snapshot),
                "{addr}"
            );
        }
        assert_eq!(entry.endpoint(), Some("192.0.2.1:51820".parse().unwrap()));
    }

    #[test]
    fn sync_publishes_new_keypairs_and_forgets_dropped_ones() {
        let session = Arc::new(Session::new());
        let entry = server_entry(key(), session.clone(), "192.0.2.1:1".parse().unwrap());
        let table = Arc::new(SessionTable::new());
        table.insert_peer(&entry);
        let mut dataplane = ClientDataplane {
            table: table.clone(),
            server: entry,
            published: Vec::new(),
            stop: Arc::default(),
            worker: None,
            counters: Arc::default(),
        };
        let now = crate::proto::time::Instant::from_nanos(1);
        let k = zeroize::Zeroizing::new([3u8; 32]);
        let published = |index: u32| {
            let snapshot = table.snapshot();
            let guard = snapshot.guard();
            snapshot.by_index(index, &guard).is_some()
        };
        session.install(Arc::new(Keypair::new(&k, &k, 11, 12, now, true)), now);
        dataplane.sync_indexes();
        assert!(published(11));
        session.install(Arc::new(Keypair::new(&k, &k, 21, 22, now, true)), now);
        dataplane.sync_indexes();
        assert!(published(11) && published(21), "current and previous");
        session.install(Arc::new(Keypair::new(&k, &k, 31, 32, now, true)), now);
        dataplane.sync_indexes();
        assert!(!published(11), "dropped with its keypair");
        assert!(published(21) && published(31));
        session.clear();
        dataplane.sync_indexes();
        assert!(!published(21) && !published(31), "a clear forgets them all");
        assert!(dataplane.published.is_empty());
    }

    /// An IPv4/UDP packet from `src` to `dst` with an 8-byte payload.
    fn ipv4_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 36];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&36u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[28..36].copy_from_slice(b"dataplan");
        p
    }

    fn connected_pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }
        (a, b)
    }

    /// The worker in the client role, without root: its "TUN" is one end of a connected UDP
    /// pair (a read is a datagram the test sends to the other end; a write arrives there), and
    /// its server a UDP socket of the test holding the other side's keys.
    #[test]
    fn packets_go_both_ways_and_the_servers_handshake_messages_reach_the_control_thread() {
        let now = clock::monotonic_now();
        let (c2s, s2c) = (
            zeroize::Zeroizing::new([1u8; 32]),
            zeroize::Zeroizing::new([2u8; 32]),
        );
        let session = Arc::new(Session::new());
        session.install(Arc::new(Keypair::new(&c2s, &s2c, 11, 22, now, true)), now);
        let server_keys = Keypair::new(&s2c, &c2s, 22, 11, now, true);
        let (tun, tun_peer) = connected_pair();
        let (socket, server) = connected_pair();
        let (to_control, from_dataplane) = server_messages();
        let options = DataplaneOptions {
            offloads: false,
            gso_types: GsoTypes::NONE,
            fair_queue: false,
        };
        let started = ClientDataplane::start(
            tun.into(),
            &socket,
            session,
            key(),
            server.local_addr().unwrap(),
            options,
            to_control,
        );
        let mut dataplane = match started {
            Ok(d) => d,
            Err(DataplaneError::WorkerStart(e)) => {
                eprintln!("SKIPPED packets_go_both_ways: no io_uring here ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let mut buf = [0u8; 2048];

        // Out: read from the TUN, sealed for the server, sent to its endpoint.
        let out = ipv4_packet([10, 66, 0, 2], [203, 0, 113, 80]);
        tun_peer.send(&out).unwrap();
        let n = server
            .recv(&mut buf)
            .expect("the sealed packet reaches the server");
        let (_, plaintext) = server_keys.open(&mut buf[..n], now).expect("sealed for it");
        assert_eq!(&buf[plaintext], &out[..]);

        // In: opened under the published index, written to the TUN.
        let back = ipv4_packet([203, 0, 113, 80], [10, 66, 0, 2]);
        let mut sealed = [0u8; 2048];
        sealed[16..16 + back.len()].copy_from_slice(&back);
        let len = server_keys.seal(&mut sealed, back.len(), now).unwrap();
        server.send(&sealed[..len]).unwrap();
        let n = tun_peer
            .recv(&mut buf)
            .expect("the opened packet reaches the TUN");
        assert_eq!(&buf[..n], &back[..]);

        // A handshake response goes to the control thread, whole.
        let mut response = [0u8; crate::proto::wire::RESPONSE_LEN];
        response[0] = 2;
        response[4] = 9;
        server.send(&response).unwrap();
        let mut message = from_dataplane
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the response reaches the control thread");
        assert_eq!(message.datagram_mut(), &response[..]);
        assert_eq!(message.src, server.local_addr().unwrap());

        let counters = dataplane.counters();
        assert_eq!(counters.total_drops(), 0, "{counters:?}");
        assert!(!dataplane.died());
        dataplane.stop();
        assert!(dataplane.worker.is_none(), "joined");
    }
}
