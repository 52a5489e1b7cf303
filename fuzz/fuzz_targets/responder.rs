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

use std::sync::{Mutex, OnceLock};

use concentrator::proto::rng::SeededRandom;
use concentrator::proto::server::{HandshakeReply, Server};
use concentrator::proto::session::Session;
use concentrator::proto::wire::{self, INITIATION_LEN};
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
    let Some(input) = fx::ResponderInput::split(data) else {
        return;
    };
    let (under_load, mode, src, rest) = (input.under_load, input.mode, input.src, input.message);
    let mut guard = state().lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *guard;

    if mode == 3 {
        fx::assert_garbage_does_not_decrypt(&st.session, st.index, rest, input.keep_header);
        return;
    }

    let msg = match mode {
        0 => rest.to_vec(),
        1 => {
            let mut m = fx::framed_initiation(rest);
            fx::fix_mac1(&fx::server_mac_keys(), &mut m);
            m
        }
        _ => {
            let mut m = fx::xored_initiation(&st.genuine, rest);
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
            fx::check_cookie_reply(&msg, &out[..n], under_load);
        }
        Ok(HandshakeReply::Established(e)) => {
            fx::check_completed_by_genuine(&msg, &st.genuine, &e.peer);
            assert_eq!(
                wire::message_type(&out[..e.len]),
                Ok(wire::MessageType::Response)
            );
        }
        Err(_) => {}
    }
});
