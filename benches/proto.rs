//! Micro-benchmarks of the protocol core: transport seal/open, the replay window, a full
//! handshake, a cookie reply. Run: `cargo bench --bench proto -- --warm-up-time 1 --measurement-time 3`.
//! Results and method: docs/benchmarks.md, "Micro-benchmarks (criterion)".

use std::hint::black_box;
use std::time::Duration;

use concentrator::proto::cookie::{self, CookieChecker, CookieJar, MacKeys};
use concentrator::proto::handshake::{InitiatorHandshake, InitiatorKeys};
use concentrator::proto::keypair::Keypair;
use concentrator::proto::keys::{PresharedKey, StaticSecret};
use concentrator::proto::replay::ReplayWindow;
use concentrator::proto::rng::{PrfRandom, SeededRandom};
use concentrator::proto::server::{HandshakeReply, PeerConfig, Server};
use concentrator::proto::suite::Suite;
use concentrator::proto::time::{Instant, Tai64N};
use concentrator::proto::wire::{
    AddressAssignment, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TAG_LEN,
    TRANSPORT_HEADER_LEN,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zeroize::Zeroizing;

/// Payload sizes: a small packet, a medium one, a full 1420-byte inner MTU, and 8192 (above
/// any MTU the protocol allows, but `Keypair` itself has no size limit).
const SIZES: [usize; 4] = [64, 512, 1420, 8192];

const NOW: Instant = Instant::from_nanos(1_000_000_000);

/// Two ends of one session of `suite`: `tx` seals what `rx` opens.
fn pair(suite: Suite) -> (Keypair, Keypair) {
    let a = Zeroizing::new([0x11; 32]);
    let b = Zeroizing::new([0x22; 32]);
    (
        Keypair::for_suite(suite, &a, &b, 1, 2, NOW, true),
        Keypair::for_suite(suite, &b, &a, 2, 1, NOW, false),
    )
}

fn receiver(suite: Suite) -> Keypair {
    let a = Zeroizing::new([0x11; 32]);
    let b = Zeroizing::new([0x22; 32]);
    Keypair::for_suite(suite, &b, &a, 2, 1, NOW, false)
}

/// The benchmark group of `name` for `suite`: the native suite keeps the plain names, so that
/// its figures compare with earlier runs.
fn group_name(name: &str, suite: Suite) -> String {
    match suite {
        Suite::Native => name.to_string(),
        Suite::WireGuard => format!("{name}_wireguard"),
    }
}

fn buffer(size: usize) -> Vec<u8> {
    vec![0xa5; TRANSPORT_HEADER_LEN + size + TAG_LEN]
}

fn seal(c: &mut Criterion) {
    for suite in [Suite::Native, Suite::WireGuard] {
        seal_suite(c, suite);
    }
}

fn seal_suite(c: &mut Criterion, suite: Suite) {
    let mut group = c.benchmark_group(group_name("seal", suite));
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(size.to_string(), |b| {
            // Sealing again in place just encrypts the previous ciphertext: same cost, and the
            // counter keeps increasing (2^28 messages per key is far beyond a run's count).
            let (tx, _) = pair(suite);
            let mut buf = buffer(size);
            b.iter(|| tx.seal(black_box(&mut buf), size, NOW).expect("seal"));
        });
    }
    group.finish();
}

/// Opening needs a fresh counter every time (the replay window rejects repeats, and a packet
/// opened in place is plaintext afterwards). Method: seal `BATCH` messages (counters
/// 0..BATCH) once; per batch of iterations, copy them into work buffers and make a new
/// receiving keypair (both untimed), then time only the `open` calls.
fn open(c: &mut Criterion) {
    for suite in [Suite::Native, Suite::WireGuard] {
        open_suite(c, suite);
    }
}

fn open_suite(c: &mut Criterion, suite: Suite) {
    const BATCH: usize = 1024;
    let mut group = c.benchmark_group(group_name("open", suite));
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let (tx, _) = pair(suite);
        let sealed: Vec<Vec<u8>> = (0..BATCH)
            .map(|_| {
                let mut buf = buffer(size);
                tx.seal(&mut buf, size, NOW).expect("seal");
                buf
            })
            .collect();
        let mut work = sealed.clone();
        group.bench_function(size.to_string(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let n = (iters - done).min(BATCH as u64) as usize;
                    for (w, s) in work.iter_mut().zip(&sealed).take(n) {
                        w.copy_from_slice(s);
                    }
                    let rx = receiver(suite);
                    let start = std::time::Instant::now();
                    for w in work.iter_mut().take(n) {
                        black_box(rx.open(black_box(w), NOW).expect("open"));
                    }
                    total += start.elapsed();
                    done += n as u64;
                }
                total
            });
        });
    }
    group.finish();
}

/// `check` then `update`, as `Keypair::open` does around the decryption. Counters come from a
/// precomputed pattern; a fresh window per pass over it (untimed) keeps them new.
fn replay(c: &mut Criterion) {
    const LEN: u64 = 1 << 16;
    let in_order: Vec<u64> = (0..LEN).collect();
    // Reordered: within each group of 8, the order 3 0 7 1 5 2 6 4 (every packet late or early
    // by up to 7, all inside the window).
    const PERM: [u64; 8] = [3, 0, 7, 1, 5, 2, 6, 4];
    let reordered: Vec<u64> = (0..LEN)
        .map(|i| (i & !7) + PERM[(i & 7) as usize])
        .collect();
    let mut group = c.benchmark_group("replay_check_update");
    group.throughput(Throughput::Elements(1));
    for (name, pattern) in [("in_order", &in_order), ("reordered", &reordered)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let n = (iters - done).min(LEN) as usize;
                    let window = ReplayWindow::new();
                    let start = std::time::Instant::now();
                    for &counter in &pattern[..n] {
                        let r = window.check(counter).and_then(|()| window.update(counter));
                        debug_assert!(r.is_ok());
                        black_box(r).ok();
                    }
                    total += start.elapsed();
                    done += n as u64;
                }
                total
            });
        });
    }
    group.finish();
}

/// One whole handshake per iteration: the client writes an initiation, the server verifies it
/// and writes the response (peer lookup, timestamp check, index allocation, keypair install),
/// the client finishes. Both ends' X25519 and Noise work, nothing else.
fn handshake(c: &mut Criterion) {
    let mut rng = SeededRandom(5);
    let server_secret = StaticSecret::from_bytes([0x33; 32]);
    let server_public = server_secret.public_key();
    let client_secret = StaticSecret::from_bytes([0x44; 32]);
    let client_public = client_secret.public_key();
    let psk = PresharedKey::zero();
    let mut server = Server::new(server_secret, NOW, &mut rng);
    server.add_peer(PeerConfig {
        public_key: client_public,
        psk: PresharedKey::zero(),
        assignment: AddressAssignment {
            ipv4: [10, 66, 0, 7].into(),
            ipv4_prefix: 16,
            ipv6: None,
            mtu: 1420,
        },
        allowed_ips: Vec::new(),
        suite: concentrator::proto::suite::Suite::Native,
    });
    let own_mac_keys = MacKeys::new(client_public.as_bytes());
    let mut cookies = CookieJar::new(server_public.as_bytes());
    let src = "192.0.2.10:40000".parse().expect("literal");
    // Each initiation needs a newer timestamp than the last the server accepted.
    let mut unix = Duration::from_secs(1_700_000_000);
    let mut index = 0u32;
    c.bench_function("handshake/full", |b| {
        b.iter(|| {
            unix += Duration::from_micros(1);
            index = index.wrapping_add(1);
            let keys = InitiatorKeys {
                own: &client_secret,
                server: &server_public,
                psk: &psk,
            };
            let mut init = [0u8; INITIATION_LEN];
            let pending = InitiatorHandshake::start(
                keys,
                index,
                Tai64N::from_unix(unix),
                &mut cookies,
                NOW,
                &mut init,
            );
            let mut response = [0u8; RESPONSE_LEN];
            let reply = server
                .handle_initiation(&init, src, NOW, false, &mut rng, &mut response)
                .expect("server accepts");
            assert!(matches!(reply, HandshakeReply::Established(_)));
            let (keypair, _) = pending
                .finish(&response, &own_mac_keys, NOW)
                .expect("client finishes");
            black_box(keypair)
        });
    });
}

/// What a worker spends on one initiation under a flood, after its per-source token: mac1,
/// and the cookie reply it writes (cookie MAC, one-use sealing key, AES-GCM of 16 bytes) with a
/// nonce from its own generator.
fn cookie_reply(c: &mut Criterion) {
    let mut rng = SeededRandom(9);
    let server_public = StaticSecret::from_bytes([0x33; 32]).public_key();
    let keys = MacKeys::new(server_public.as_bytes());
    let checker = CookieChecker::new(server_public.as_bytes(), NOW, &mut rng);
    let secrets = checker.secrets().clone();
    let mut nonces = PrfRandom::new(&mut rng);
    let mut init = [0x5a; INITIATION_LEN];
    init[..4].copy_from_slice(&[1, 0, 0, 0]);
    cookie::clear_mac2(&mut init);
    cookie::write_mac1(&keys, &mut init);
    let src = "192.0.2.10:40000".parse().expect("literal");
    c.bench_function("cookie/verify_mac1", |b| {
        b.iter(|| black_box(cookie::verify_mac1(&keys, black_box(&init))))
    });
    c.bench_function("cookie/write_reply", |b| {
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        b.iter(|| {
            secrets.write_cookie_reply(&keys, black_box(&init), src, &mut nonces, &mut reply);
            black_box(reply)
        })
    });
}

criterion_group!(benches, seal, open, replay, handshake, cookie_reply);
criterion_main!(benches);
