//! The WireGuard suite's exposed surface: its message parsers, `Server::handle_initiation` for
//! a peer configured for WireGuard (and one configured native, which a WireGuard initiation must
//! never complete), and `Session::decrypt` under ChaCha20-Poly1305 keys.
//!
//! Input: byte 0 = flags (bit 0: under load; bits 1-2: mode), bytes 1-2 = source port, the rest
//! the message. Modes, so that the fuzzer gets past the cheap checks:
//! - 0: the bytes as they are, to the parsers and to `handle_initiation`;
//! - 1: the bytes framed as an initiation (148 bytes, type 1, reserved zero) with a valid
//!   WireGuard mac1, so they reach the BLAKE2s/ChaChaPoly Noise decryption;
//! - 2: a genuine WireGuard initiation of the known peer XOR the bytes, WireGuard's mac1
//!   recomputed: near-valid;
//! - 3: the bytes to `Session::decrypt` of an established WireGuard session; when long enough,
//!   with the header rewritten to type 4 and the session's receiver index.
//!
//! Invariants: nothing panics; no handshake completes unless the initiation's Noise part is the
//! genuine one, and none with the peer configured native; a completed one answers with a
//! 92-byte WireGuard response whose mac1 verifies for the peer; a cookie reply answers only a
//! valid mac1 under load, and one to a WireGuard initiation opens with XChaCha20-Poly1305; no
//! garbage decrypts.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use concentrator::proto::rng::SeededRandom;
use concentrator::proto::server::{HandshakeReply, Server};
use concentrator::proto::session::Session;
use concentrator::proto::suite::Suite;
use concentrator::proto::wire::{
    CookieReply, CookieReplyRepr, WgResponse, WgResponseRepr, INITIATION_LEN, WG_RESPONSE_LEN,
};
use concentrator::proto::wireguard::{self, WgMacKeys};
use concentrator_fuzz as fx;
use libfuzzer_sys::fuzz_target;

struct State {
    /// Answers fuzzed initiations; knows the peer as a WireGuard one.
    server: Server,
    /// Knows the same peer as a native one.
    native_server: Server,
    /// A genuine WireGuard initiation of the known peer (for mode 2).
    genuine: [u8; INITIATION_LEN],
    /// An established WireGuard session (on another server instance) and its receiver index.
    session: Arc<Session>,
    index: u32,
    rng: SeededRandom,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut rng = SeededRandom(11);
        let mut established = fx::server_with_suite(Suite::WireGuard);
        let (_initiator, first) = fx::wireguard_initiation(1, 1);
        let mut out = [0u8; 256];
        let Ok(HandshakeReply::Established(done)) = established.handle_initiation(
            &first,
            fx::client_udp(),
            fx::START,
            false,
            &mut rng,
            &mut out,
        ) else {
            panic!("the genuine WireGuard initiation does not complete");
        };
        let (_initiator, genuine) = fx::wireguard_initiation(2, 2);
        Mutex::new(State {
            server: fx::server_with_suite(Suite::WireGuard),
            native_server: fx::server_with_suite(Suite::Native),
            genuine,
            session: done.session,
            index: done.local_index,
            rng,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = fx::ResponderInput::split(data) else {
        return;
    };
    let (under_load, mode, src, rest) = (input.under_load, input.mode, input.src, input.message);
    let mut guard = state().lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *guard;
    let server_wg_keys = WgMacKeys::new(fx::server_public().as_bytes());

    if mode == 3 {
        fx::assert_garbage_does_not_decrypt(&st.session, st.index, rest, input.keep_header);
        return;
    }

    let msg = match mode {
        0 => {
            // The parsers of what a WireGuard peer may send or receive: none may panic, and a
            // parsed message emits back to the same bytes.
            if let Ok(view) = WgResponse::new_checked(rest) {
                if let Ok(repr) = WgResponseRepr::parse(&view) {
                    let mut again = [0u8; WG_RESPONSE_LEN];
                    repr.emit(&mut WgResponse::new_unchecked(&mut again[..]));
                    assert_eq!(&again[..], rest);
                }
            }
            if let Ok(view) = CookieReply::new_checked(rest) {
                if CookieReplyRepr::parse(&view).is_ok() {
                    let opened = wireguard::open_cookie(
                        &server_wg_keys,
                        view.nonce(),
                        view.encrypted_cookie(),
                        &[0; 16],
                    );
                    assert!(opened.is_none(), "a forged cookie reply opened");
                }
            }
            let _ = wireguard::verify_mac1(&server_wg_keys, rest);
            rest.to_vec()
        }
        1 => {
            let mut m = fx::framed_initiation(rest);
            wireguard::write_mac1(&server_wg_keys, &mut m);
            m
        }
        _ => {
            let mut m = fx::xored_initiation(&st.genuine, rest);
            wireguard::write_mac1(&server_wg_keys, &mut m);
            m
        }
    };

    let mut out = [0u8; 256];
    let native =
        st.native_server
            .handle_initiation(&msg, src, fx::START, under_load, &mut st.rng, &mut out);
    assert!(
        !matches!(native, Ok(HandshakeReply::Established(_))),
        "a peer configured native completed a handshake"
    );

    let mut out = [0u8; 256];
    let result =
        st.server
            .handle_initiation(&msg, src, fx::START, under_load, &mut st.rng, &mut out);
    match result {
        Ok(HandshakeReply::Cookie(n)) => {
            let suite = fx::check_cookie_reply(&msg, &out[..n], under_load);
            if suite == Suite::WireGuard {
                let reply = CookieReply::new_checked(&out[..n]).expect("64 bytes");
                let mac1: [u8; 16] = msg[116..132].try_into().expect("16 bytes");
                assert!(
                    wireguard::open_cookie(
                        &server_wg_keys,
                        reply.nonce(),
                        reply.encrypted_cookie(),
                        &mac1
                    )
                    .is_some(),
                    "our WireGuard cookie reply does not open"
                );
            }
        }
        Ok(HandshakeReply::Established(e)) => {
            fx::check_completed_by_genuine(&msg, &st.genuine, &e.peer);
            assert_eq!(e.len, WG_RESPONSE_LEN);
            let response = WgResponse::new_checked(&out[..e.len]).expect("92 bytes");
            assert!(WgResponseRepr::parse(&response).is_ok());
            assert!(wireguard::verify_mac1(
                &WgMacKeys::new(fx::client_public().as_bytes()),
                &out[..e.len]
            ));
        }
        Err(_) => {}
    }
});
