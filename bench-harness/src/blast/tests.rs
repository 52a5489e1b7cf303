//! Tests of the pre-sealed blast: pools the server opens, sends over loopback, pacing.
use super::*;

use std::sync::Arc;
use std::time::Duration;

use concentrator::proto::client::{ClientEvent, ClientParams};
use concentrator::proto::keys::{PresharedKey, StaticSecret};
use concentrator::proto::rng::SeededRandom;
use concentrator::proto::server::{HandshakeReply, PeerConfig, Server};
use concentrator::proto::session::Session;
use concentrator::proto::suite::Suite;
use concentrator::proto::wire::{self, AddressAssignment};

/// `n` clients connected to one server (the sans-IO cores only, no sockets): each client
/// with the server's session for it and the server's receiver index.
fn connected(n: usize, now: Instant) -> (Vec<Client>, Vec<(Arc<Session>, u32)>) {
    let mut rng = SeededRandom(17);
    let mut server = Server::new(StaticSecret::from_bytes([9; 32]), now, &mut rng);
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..n {
        let secret = StaticSecret::from_bytes([i as u8 + 1; 32]);
        server.add_peer(PeerConfig {
            public_key: secret.public_key(),
            psk: PresharedKey::zero(),
            assignment: AddressAssignment {
                ipv4: report::peer_address(i),
                ipv4_prefix: 16,
                ipv6: None,
                mtu: 1420,
            },
            allowed_ips: Vec::new(),
            suite: Suite::Native,
        });
        let mut client = Client::new(
            ClientParams {
                secret,
                server: *server.public_key(),
                psk: PresharedKey::zero(),
                persistent_keepalive: None,
            },
            now,
            Duration::from_secs(1_700_000_000),
        );
        let mut buf = [0u8; 512];
        let n = client
            .poll_transmit(now, &mut rng, &mut buf)
            .expect("an initiation");
        let mut out = [0u8; 512];
        let src = "192.0.2.1:40000".parse().unwrap();
        let reply = server.handle_initiation(&buf[..n], src, now, false, &mut rng, &mut out);
        let Ok(HandshakeReply::Established(e)) = reply else {
            panic!("handshake of client {i}: {reply:?}");
        };
        let event = client.receive(&mut out[..e.len], now);
        assert!(matches!(event, ClientEvent::Connected(_)), "{event:?}");
        // The keepalive that confirms the session (counter 0).
        while let Some(n) = client.poll_transmit(now, &mut rng, &mut buf) {
            e.session
                .decrypt(e.local_index, &mut buf[..n], now)
                .unwrap();
        }
        clients.push(client);
        sessions.push((e.session, e.local_index));
    }
    (clients, sessions)
}

#[test]
fn presealed_datagrams_open_at_the_server_with_consecutive_counters() {
    let now = Instant::from_nanos(1_000_000_000);
    let (mut clients, sessions) = connected(3, now);
    let backend = "10.77.0.2:9000".parse().unwrap();
    let packets: Vec<Vec<u8>> = (0..3).map(|i| client_packet(i, backend, 64)).collect();
    // Clients 0 and 2 share a socket; client 1 is not in this pool.
    let rounds = 5;
    let pool = seal_pool(&mut clients, &[0, 2], &packets, rounds, now).unwrap();
    assert_eq!(pool.len(), 2 * rounds);
    assert_eq!(pool.stride(), sealed_len(64));
    let mut last_counter = [None::<u64>; 3];
    for j in 0..pool.len() {
        let i = [0, 2][j % 2];
        let mut d = pool.datagram(j).to_vec();
        let t = wire::Transport::new_checked(&d[..]).unwrap();
        let (index, counter) = (t.receiver_index(), t.counter());
        let (session, local_index) = &sessions[i];
        assert_eq!(index, *local_index, "datagram {j} is client {i}'s");
        // One more than the client's previous datagram (its keepalive had counter 0).
        assert_eq!(
            counter,
            last_counter[i].map_or(1, |c| c + 1),
            "datagram {j}"
        );
        last_counter[i] = Some(counter);
        let got = session
            .decrypt(index, &mut d, now)
            .expect("the server opens it");
        assert_eq!(&d[got.plaintext], &packets[i][..], "datagram {j}");
    }
    // Client 1 sealed nothing: its first datagram still carries counter 1.
    let pool = seal_pool(&mut clients, &[1], &packets, 1, now).unwrap();
    assert_eq!(
        wire::Transport::new_checked(pool.datagram(0))
            .unwrap()
            .counter(),
        1
    );
}

#[test]
fn a_pool_refuses_mixed_sizes_and_clients_without_a_session() {
    let now = Instant::from_nanos(1_000_000_000);
    let (mut clients, _) = connected(2, now);
    let backend = "10.77.0.2:9000".parse().unwrap();
    let mixed = vec![
        client_packet(0, backend, 64),
        client_packet(1, backend, 100),
    ];
    assert!(seal_pool(&mut clients, &[0, 1], &mixed, 1, now).is_err());
    let mut fresh = vec![Client::new(
        ClientParams {
            secret: StaticSecret::from_bytes([5; 32]),
            server: StaticSecret::from_bytes([9; 32]).public_key(),
            psk: PresharedKey::zero(),
            persistent_keepalive: None,
        },
        now,
        Duration::from_secs(1_700_000_000),
    )];
    let one = vec![client_packet(0, backend, 64)];
    let err = seal_pool(&mut fresh, &[0], &one, 1, now).err().unwrap();
    assert!(err.to_string().contains("cannot seal"), "{err}");
    assert!(seal_pool(&mut clients, &[], &one, 1, now).is_err());
}

#[test]
fn messages_cover_the_pool_once_and_stop_at_its_end() {
    let stride = 96;
    let got: Vec<_> = plan_messages(0, 10, stride, 4, 8).collect();
    assert_eq!(got, vec![(0, 4 * 96), (4 * 96, 4 * 96), (8 * 96, 2 * 96)]);
    let got: Vec<_> = plan_messages(3, 10, stride, 1, 2).collect();
    assert_eq!(got, vec![(3 * 96, 96), (4 * 96, 96)]);
    assert_eq!(plan_messages(10, 10, stride, 1, 8).count(), 0);
    // A zero per-message count still makes progress.
    assert_eq!(plan_messages(0, 3, stride, 0, 8).count(), 3);
}

/// Sends `count` numbered datagrams of `stride` bytes over loopback in `mode` and returns
/// what arrived, in order.
fn over_loopback(mode: SendMode, count: usize, stride: usize, limit: usize) -> Vec<Vec<u8>> {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.connect(rx.local_addr().unwrap()).unwrap();
    let datagrams: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut d = vec![(i % 251) as u8; stride];
            d[..4].copy_from_slice(&(i as u32).to_be_bytes());
            d
        })
        .collect();
    let pool = SealedPool::from_datagrams(&datagrams);
    if mode == SendMode::Gso {
        enable_gso(&tx, stride).unwrap();
    }
    let mut sender = PoolSender::new(mode);
    let mut cursor = 0;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while cursor < pool.len() {
        let sent = sender.send(&tx, &pool, cursor, limit).unwrap();
        assert!(sent > 0 && sent <= limit, "{sent}");
        cursor += sent;
        // Taken before the next call: the receive buffer holds one call's worth.
        for _ in 0..sent {
            let n = rx.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
    }
    assert_eq!(
        sender.send(&tx, &pool, cursor, limit).unwrap(),
        0,
        "past the end"
    );
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d, &datagrams[i], "datagram {i}");
    }
    got
}

#[test]
fn mmsg_sends_every_datagram_once_in_order() {
    // Calls cut short by the limit (the last one by the pool's end).
    assert_eq!(over_loopback(SendMode::Mmsg, 150, 96, 64).len(), 150);
    assert_eq!(over_loopback(SendMode::Mmsg, 100, 96, 7).len(), 100);
}

#[test]
fn gso_sends_arrive_as_separate_datagrams_in_order() {
    // 64 per message at 96 bytes; 45 per message at 1452 (the 64 KiB bound); calls of
    // two messages or fewer.
    assert_eq!(over_loopback(SendMode::Gso, 200, 96, 100).len(), 200);
    assert_eq!(
        over_loopback(SendMode::Gso, 100, sealed_len(1420), 60).len(),
        100
    );
}

#[test]
fn pacing_is_due_what_the_rate_allows_and_no_more() {
    let ms = std::time::Duration::from_millis;
    assert_eq!(due(200_000, ms(10), 0), 2_000);
    assert_eq!(due(200_000, ms(10), 1_500), 500);
    assert_eq!(due(200_000, ms(10), 3_000), 0);
    assert_eq!(due_at(200_000, 2_000), ms(10));
    // The wake-up for the next batch is when that batch is due, not earlier.
    let wake = due_at(200_000, 2_000 + PACED_BATCH);
    assert!(due(200_000, wake, 2_000) >= PACED_BATCH);
    assert!(due(200_000, wake - ms(1), 2_000) < PACED_BATCH);
}

#[test]
fn segments_fit_one_ip_datagram_and_the_kernel_limit() {
    assert_eq!(segments_per_message(sealed_len(64)), GSO_SEGMENTS);
    let big = sealed_len(1420);
    let n = segments_per_message(big);
    assert!(n * big <= GSO_BYTES && (n + 1) * big > GSO_BYTES, "{n}");
    assert_eq!(segments_per_message(70_000), 1);
}
