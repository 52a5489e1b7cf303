//! The server's exposed surface: `Server::handle_initiation` (a fixed server key, one known peer)
//! and `Session::decrypt` of an established session (set up once with a real handshake).
//!
//! Input: byte 0 = flags (bit 0: under load; bits 1-2: mode), bytes 1-2 = source port, the rest
//! the message. Modes, so that the fuzzer gets past the cheap checks:
//! - 0: the bytes as they are, to `handle_initiation`;
//! - 1: the bytes framed as an initiation (148 bytes, type 1, reserved zero) with a valid mac1,
//!   so they reach the Noise decryption;
//! - 2: a genuine initiation of the known peer XOR the bytes, mac1 recomputed: near-valid;
//! - 3: the bytes to `Session::decrypt`; when long enough, with the header rewritten to type 4
//!   and the session's receiver index so they reach the replay window and AES-GCM.
//!
//! Invariants: nothing panics; no handshake completes unless the initiation's Noise part is the
//! genuine one; a cookie reply only answers a valid mac1 under load; no garbage decrypts.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use concentrator::proto::rng::SeededRandom;
use concentrator::proto::server::{HandshakeReply, Server};
use concentrator::proto::session::Session;
use concentrator::proto::wire::{self, INITIATION_LEN, TRANSPORT_HEADER_LEN};
use concentrator_fuzz as fx;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

struct State {
    /// Answers fuzzed initiations.
    server: Server,
    /// A genuine initiation of the known peer (for mode 2).
    genuine: [u8; INITIATION_LEN],
    /// The established session (on another server instance) and its receiver index.
    session: Arc<Session>,
    index: u32,
    rng: SeededRandom,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut rng = SeededRandom(7);
        let est = fx::establish(&mut rng);
        // A second initiation from a fresh client of the same peer: valid for `server`, which
        // has not seen any timestamp of that peer yet.
        let (_client, genuine) = fx::client_with_initiation(&mut rng);
        Mutex::new(State {
            server: fx::server(),
            genuine,
            session: est.server_session,
            index: est.server_index,
            rng,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, p0, p1], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let under_load = flags & 1 != 0;
    let mode = (flags >> 1) & 3;
    let src = SocketAddr::new(fx::client_udp().ip(), u16::from_le_bytes([p0, p1]));
    let mut guard = state().lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *guard;

    if mode == 3 {
        let mut buf = rest.to_vec();
        if buf.len() >= TRANSPORT_HEADER_LEN && p0 & 1 == 0 {
            let counter = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
            let header: &mut [u8; TRANSPORT_HEADER_LEN] =
                (&mut buf[..TRANSPORT_HEADER_LEN]).try_into().expect("16");
            wire::write_transport_header(header, st.index, counter);
        }
        let index = wire::transport_receiver_index(&buf).unwrap_or(st.index);
        let result = st.session.decrypt(index, &mut buf, fx::START);
        assert!(result.is_err(), "garbage decrypted: {result:?}");
        return;
    }

    let msg = match mode {
        0 => rest.to_vec(),
        1 => {
            let mut m = fx::sized(rest, INITIATION_LEN);
            m[..4].copy_from_slice(&[1, 0, 0, 0]);
            fx::fix_mac1(&fx::server_mac_keys(), &mut m);
            m
        }
        _ => {
            let x = fx::sized(rest, INITIATION_LEN);
            let mut m: Vec<u8> = st.genuine.iter().zip(&x).map(|(g, x)| g ^ x).collect();
            fx::fix_mac1(&fx::server_mac_keys(), &mut m);
            m
        }
    };
    let mut out = [0u8; 256];
    let result =
        st.server
            .handle_initiation(&msg, src, fx::START, under_load, &mut st.rng, &mut out);
    match result {
        Ok(HandshakeReply::Cookie(n)) => {
            assert!(under_load, "cookie reply while not under load");
            assert!(fx::server_suite_of(&msg).is_some());
            assert_eq!(n, wire::COOKIE_REPLY_LEN);
            assert_eq!(
                wire::message_type(&out[..n]),
                Ok(wire::MessageType::CookieReply)
            );
        }
        Ok(HandshakeReply::Established(e)) => {
            // Only the genuine Noise message can complete a handshake (the header's sender
            // index and mac2 are not authenticated by it). The committed seeds hold no
            // initiation of the known peer (see examples/gen_corpus.rs), so any other
            // completion would be a forgery.
            assert_eq!(
                msg[8..116],
                st.genuine[8..116],
                "a handshake completed with a forged initiation"
            );
            assert_eq!(e.peer, fx::client_public());
            assert_eq!(
                wire::message_type(&out[..e.len]),
                Ok(wire::MessageType::Response)
            );
        }
        Err(_) => {}
    }
});
