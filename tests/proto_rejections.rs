//! Each way a message can be refused, its own test: tampered transport messages, unknown or
//! wrong static keys, replayed initiations, bad MACs (no reply at all).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concentrator::proto::cookie::{CookieJar, MacKeys};
use concentrator::proto::handshake::{HandshakeError, InitiatorHandshake, InitiatorKeys};
use concentrator::proto::keypair::{Keypair, TransportError};
use concentrator::proto::keys::{PresharedKey, PublicKey, StaticSecret};
use concentrator::proto::replay::ReplayError;
use concentrator::proto::rng::{Random, SeededRandom};
use concentrator::proto::server::{HandshakeReply, PeerConfig, Server};
use concentrator::proto::session::{Session, SessionError};
use concentrator::proto::time::{Instant, Tai64N};
use concentrator::proto::wire::{AddressAssignment, INITIATION_LEN, RESPONSE_LEN};

const SRC: &str = "192.0.2.7:40000";

fn key(rng: &mut SeededRandom) -> StaticSecret {
    let mut b = [0u8; 32];
    rng.fill(&mut b);
    StaticSecret::from_bytes(b)
}

fn assignment() -> AddressAssignment {
    AddressAssignment {
        ipv4: "10.66.0.2".parse().unwrap(),
        ipv4_prefix: 16,
        ipv6: None,
        mtu: 1420,
    }
}

struct Setup {
    rng: SeededRandom,
    server: Server,
    server_public: PublicKey,
    client: StaticSecret,
    psk: PresharedKey,
}

fn setup(psk: PresharedKey) -> Setup {
    let mut rng = SeededRandom(42);
    let server_secret = key(&mut rng);
    let server_public = server_secret.public_key();
    let client = key(&mut rng);
    let mut server = Server::new(server_secret, Instant::from_nanos(0), &mut rng);
    server.add_peer(PeerConfig {
        public_key: client.public_key(),
        psk: PresharedKey::from_bytes(*psk.as_bytes()),
        assignment: assignment(),
        allowed_ips: Vec::new(),
        suite: concentrator::proto::suite::Suite::Native,
    });
    Setup {
        rng,
        server,
        server_public,
        client,
        psk,
    }
}

fn initiation(
    own: &StaticSecret,
    server: &PublicKey,
    psk: &PresharedKey,
    unix_secs: u64,
) -> (InitiatorHandshake, [u8; INITIATION_LEN]) {
    let mut out = [0u8; INITIATION_LEN];
    let mut jar = CookieJar::new(server.as_bytes());
    let keys = InitiatorKeys { own, server, psk };
    let ts = Tai64N::from_unix(Duration::from_secs(unix_secs));
    let init = InitiatorHandshake::start(keys, 7, ts, &mut jar, Instant::from_nanos(0), &mut out);
    (init, out)
}

fn handle(s: &mut Setup, msg: &[u8]) -> Result<HandshakeReply, HandshakeError> {
    let src: SocketAddr = SRC.parse().unwrap();
    let mut out = [0u8; 148];
    s.server.handle_initiation(
        msg,
        src,
        Instant::from_nanos(1),
        false,
        &mut s.rng,
        &mut out,
    )
}

/// A completed handshake: (client keypair, server session, server's receiver index).
fn established() -> (Keypair, Arc<Session>, u32) {
    let mut s = setup(PresharedKey::zero());
    let (init, msg) = initiation(&s.client, &s.server_public, &s.psk, 1000);
    let src: SocketAddr = SRC.parse().unwrap();
    let mut out = [0u8; 148];
    let reply = s.server.handle_initiation(
        &msg,
        src,
        Instant::from_nanos(1),
        false,
        &mut s.rng,
        &mut out,
    );
    let Ok(HandshakeReply::Established(done)) = reply else {
        panic!("handshake failed")
    };
    let own = MacKeys::new(s.client.public_key().as_bytes());
    let (keypair, _) = init
        .finish(&out[..RESPONSE_LEN], &own, Instant::from_nanos(2))
        .unwrap();
    (keypair, done.session, done.local_index)
}

/// A sealed transport message carrying `payload`.
fn sealed(keypair: &Keypair, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 32 + payload.len()];
    buf[16..16 + payload.len()].copy_from_slice(payload);
    let n = keypair
        .seal(&mut buf, payload.len(), Instant::from_nanos(3))
        .unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn a_genuine_message_opens() {
    let (keypair, session, index) = established();
    let mut msg = sealed(&keypair, b"hello through the tunnel");
    let got = session
        .decrypt(index, &mut msg, Instant::from_nanos(4))
        .unwrap();
    assert_eq!(&msg[got.plaintext], b"hello through the tunnel");
}

#[test]
fn tampered_ciphertext_is_refused() {
    let (keypair, session, index) = established();
    let mut msg = sealed(&keypair, b"payload bytes");
    msg[20] ^= 1;
    assert_eq!(
        session.decrypt(index, &mut msg, Instant::from_nanos(4)),
        Err(SessionError::Transport(TransportError::Authentication))
    );
}

#[test]
fn tampered_header_is_refused() {
    let (keypair, session, index) = established();
    let mut msg = sealed(&keypair, b"payload bytes");
    // The counter is authenticated as AAD: a changed counter fails to open.
    msg[8] ^= 1;
    assert_eq!(
        session.decrypt(index, &mut msg, Instant::from_nanos(4)),
        Err(SessionError::Transport(TransportError::Authentication))
    );
}

#[test]
fn tampered_tag_is_refused() {
    let (keypair, session, index) = established();
    let mut msg = sealed(&keypair, b"payload bytes");
    let last = msg.len() - 1;
    msg[last] ^= 0x80;
    assert_eq!(
        session.decrypt(index, &mut msg, Instant::from_nanos(4)),
        Err(SessionError::Transport(TransportError::Authentication))
    );
}

#[test]
fn replayed_transport_message_is_refused() {
    let (keypair, session, index) = established();
    let msg = sealed(&keypair, b"once only");
    let mut first = msg.clone();
    session
        .decrypt(index, &mut first, Instant::from_nanos(4))
        .unwrap();
    let mut again = msg.clone();
    assert_eq!(
        session.decrypt(index, &mut again, Instant::from_nanos(5)),
        Err(SessionError::Transport(TransportError::Replay(
            ReplayError::Duplicate
        )))
    );
}

#[test]
fn unknown_static_key_gets_no_session() {
    let mut s = setup(PresharedKey::zero());
    let stranger = key(&mut s.rng);
    let (_, msg) = initiation(&stranger, &s.server_public, &s.psk, 1000);
    assert_eq!(
        handle(&mut s, &msg).err(),
        Some(HandshakeError::UnknownPeer)
    );
}

#[test]
fn initiation_for_another_server_key_gets_no_reply() {
    let mut s = setup(PresharedKey::zero());
    let wrong_server = key(&mut s.rng).public_key();
    let (_, msg) = initiation(&s.client, &wrong_server, &s.psk, 1000);
    // mac1 is keyed by the responder's public key: checked before any Diffie-Hellman.
    assert_eq!(handle(&mut s, &msg).err(), Some(HandshakeError::BadMac));
}

#[test]
fn bad_mac1_gets_no_reply_at_all() {
    let mut s = setup(PresharedKey::zero());
    let (_, mut msg) = initiation(&s.client, &s.server_public, &s.psk, 1000);
    msg[120] ^= 1; // inside mac1
    assert_eq!(handle(&mut s, &msg).err(), Some(HandshakeError::BadMac));
    // And a byte mac1 covers, with mac1 left as it was.
    let (_, mut msg) = initiation(&s.client, &s.server_public, &s.psk, 1001);
    msg[50] ^= 1;
    assert_eq!(handle(&mut s, &msg).err(), Some(HandshakeError::BadMac));
}

#[test]
fn replayed_initiation_creates_nothing() {
    let mut s = setup(PresharedKey::zero());
    let (_, msg) = initiation(&s.client, &s.server_public, &s.psk, 1000);
    assert!(matches!(
        handle(&mut s, &msg),
        Ok(HandshakeReply::Established(_))
    ));
    assert_eq!(handle(&mut s, &msg).err(), Some(HandshakeError::Replayed));
    // An older timestamp is refused too; a newer one is accepted.
    let (_, older) = initiation(&s.client, &s.server_public, &s.psk, 999);
    assert_eq!(handle(&mut s, &older).err(), Some(HandshakeError::Replayed));
    let (_, newer) = initiation(&s.client, &s.server_public, &s.psk, 1001);
    assert!(matches!(
        handle(&mut s, &newer),
        Ok(HandshakeReply::Established(_))
    ));
}

#[test]
fn wrong_preshared_key_fails_the_handshake() {
    let mut rng = SeededRandom(5);
    let mut psk_bytes = [0u8; 32];
    rng.fill(&mut psk_bytes);
    let mut s = setup(PresharedKey::from_bytes(psk_bytes));
    let wrong = PresharedKey::zero();
    let (init, msg) = initiation(&s.client, &s.server_public, &wrong, 1000);
    let src: SocketAddr = SRC.parse().unwrap();
    let mut out = [0u8; 148];
    // The responder cannot tell (psk2 is mixed in after message 1): it answers, but the
    // initiator cannot open the response, so no session ever carries data.
    let reply = s.server.handle_initiation(
        &msg,
        src,
        Instant::from_nanos(1),
        false,
        &mut s.rng,
        &mut out,
    );
    assert!(matches!(reply, Ok(HandshakeReply::Established(_))));
    let own = MacKeys::new(s.client.public_key().as_bytes());
    assert_eq!(
        init.finish(&out[..RESPONSE_LEN], &own, Instant::from_nanos(2))
            .err(),
        Some(HandshakeError::Decryption)
    );
}

#[test]
fn under_load_junk_from_the_victims_address_does_not_lock_it_out_of_handshakes() {
    // Initiations with a valid mac1 and random bodies cost nothing to make for anyone holding
    // the server's public key. Sent from the victim's address at ten times the 40/s that the
    // old per-source cookie-reply limit allowed, they must neither keep the victim from its
    // cookie nor its cookie-carrying initiation from the handshake.
    let mut s = setup(PresharedKey::zero());
    let victim: SocketAddr = SRC.parse().unwrap();
    let server_keys = MacKeys::new(s.server_public.as_bytes());
    let junk_every = Duration::from_nanos(1_000_000_000 / (10 * 40));
    let mut junk_at = Instant::from_nanos(1_000_000_000);
    let mut junk_sent = 0u64;
    let mut junk_until = |s: &mut Setup, until: Instant| {
        while junk_at < until {
            let mut m = [0u8; INITIATION_LEN];
            s.rng.fill(&mut m[4..116]);
            m[0] = 1;
            concentrator::proto::cookie::write_mac1(&server_keys, &mut m);
            if junk_sent % 2 == 1 {
                s.rng.fill(&mut m[132..]); // a random mac2 rather than none
            }
            let port = if junk_sent.is_multiple_of(3) {
                victim.port()
            } else {
                50_000
            };
            let mut out = [0u8; 148];
            let answer = s.server.handle_initiation(
                &m,
                SocketAddr::new(victim.ip(), port),
                junk_at,
                true,
                &mut s.rng,
                &mut out,
            );
            assert!(!matches!(answer, Ok(HandshakeReply::Established(_))));
            junk_sent += 1;
            junk_at = junk_at + junk_every;
        }
    };
    // A second of junk, then the victim's first initiation (no cookie yet), between two junk
    // datagrams.
    let first_at = Instant::from_nanos(2_001_234_000);
    junk_until(&mut s, first_at);
    let mut jar = CookieJar::new(s.server_public.as_bytes());
    let initiate = |s: &Setup, jar: &mut CookieJar, index, unix_secs, at| {
        let keys = InitiatorKeys {
            own: &s.client,
            server: &s.server_public,
            psk: &s.psk,
        };
        let stamp = Tai64N::from_unix(Duration::from_secs(unix_secs));
        let mut m = [0u8; INITIATION_LEN];
        InitiatorHandshake::start(keys, index, stamp, jar, at, &mut m);
        m
    };
    let first = initiate(&s, &mut jar, 7, 1000, first_at);
    let mut out = [0u8; 148];
    let answer = s
        .server
        .handle_initiation(&first, victim, first_at, true, &mut s.rng, &mut out);
    let Ok(HandshakeReply::Cookie(n)) = answer else {
        panic!("the victim got no cookie reply after {junk_sent} junk initiations: {answer:?}")
    };
    jar.accept_cookie_reply(&out[..n], first_at).unwrap();
    // The retransmission, with the cookie, REKEY_TIMEOUT later, junk all along.
    let retry_at = first_at + concentrator::proto::constants::REKEY_TIMEOUT;
    junk_until(&mut s, retry_at);
    let retry = initiate(&s, &mut jar, 8, 1005, retry_at);
    let answer = s
        .server
        .handle_initiation(&retry, victim, retry_at, true, &mut s.rng, &mut out);
    assert!(
        matches!(answer, Ok(HandshakeReply::Established(_))),
        "the victim's initiation with a valid mac2 was refused after {junk_sent} junk \
         initiations: {answer:?}"
    );
}

#[test]
fn a_removed_peer_gives_back_its_indexes_and_is_refused() {
    let mut s = setup(PresharedKey::zero());
    let (_, msg) = initiation(&s.client, &s.server_public, &s.psk, 1000);
    let Ok(HandshakeReply::Established(done)) = handle(&mut s, &msg) else {
        panic!("handshake failed")
    };
    let index = done.local_index;
    let client = s.client.public_key();
    assert!(s.server.by_index(index).is_some());
    let freed = s.server.remove_peer(&client).expect("peer was configured");
    assert_eq!(freed, vec![index]);
    assert!(s.server.by_index(index).is_none());
    assert!(s.server.remove_peer(&client).is_none(), "removed twice");
    // Nothing of it is left for the tick to retire, and it can no longer handshake.
    let report = s.server.tick(Instant::from_nanos(2));
    assert!(report.retired_indexes.is_empty());
    let (_, again) = initiation(&s.client, &s.server_public, &s.psk, 1001);
    assert_eq!(
        handle(&mut s, &again).err(),
        Some(HandshakeError::UnknownPeer)
    );
}
