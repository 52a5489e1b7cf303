//! Arbitrary datagrams into `Client::receive` of a client waiting for its handshake response
//! (a fresh client per input, so runs are reproducible).
//!
//! Byte 0 selects a mode: 0 = the bytes as they are; 1 = framed as a response (116 bytes, type 2,
//! our receiver index, valid mac1) so they reach the Noise decryption; 2 = framed as a cookie
//! reply to our index; 3 = framed as a transport message. The rest is the message.
//!
//! Invariants: nothing panics, and nothing forged is accepted: every event is `Dropped`.
#![no_main]

use concentrator::proto::client::ClientEvent;
use concentrator::proto::rng::SeededRandom;
use concentrator::proto::wire::{self, COOKIE_REPLY_LEN, RESPONSE_LEN, TRANSPORT_HEADER_LEN};
use concentrator_fuzz as fx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut rng = SeededRandom(11);
    let (mut client, initiation) = fx::client_with_initiation(&mut rng);
    let our_index = wire::Initiation::new_checked(&initiation[..])
        .expect("genuine")
        .sender_index();
    let mut msg = match mode & 3 {
        0 => rest.to_vec(),
        1 => {
            let mut m = fx::sized(rest, RESPONSE_LEN);
            m[..4].copy_from_slice(&[2, 0, 0, 0]);
            m[8..12].copy_from_slice(&our_index.to_le_bytes());
            fx::fix_mac1(&fx::client_mac_keys(), &mut m);
            m
        }
        2 => {
            let mut m = fx::sized(rest, COOKIE_REPLY_LEN);
            m[..4].copy_from_slice(&[3, 0, 0, 0]);
            m[4..8].copy_from_slice(&our_index.to_le_bytes());
            m
        }
        _ => {
            let mut m = rest.to_vec();
            if m.len() >= TRANSPORT_HEADER_LEN {
                m[..4].copy_from_slice(&[4, 0, 0, 0]);
            }
            m
        }
    };
    let len = msg.len();
    match client.receive(&mut msg, fx::START) {
        ClientEvent::Dropped(_) => {}
        other => panic!("forged datagram of {len} bytes accepted: {other:?}"),
    }
});
