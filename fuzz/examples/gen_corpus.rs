//! Writes the seed corpora under `fuzz/corpus/<target>/`: a few valid messages of each type from
//! a real in-memory handshake, in the input layout each target expects.
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus`. Files are named `seed-*`, so rerunning
//! overwrites them (the ephemeral keys differ per run) without touching what the fuzzers found.

use std::fs;
use std::path::Path;

use concentrator::proto::rng::SeededRandom;
use concentrator::proto::wire::{self, AddressAssignment, ASSIGNMENT_LEN};
use concentrator_fuzz as fx;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn with_prefix(prefix: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(msg);
    v
}

fn main() {
    let mut rng = SeededRandom(1);
    let mut est = fx::establish(&mut rng);

    // A data packet from the client (a small IPv4 packet) and a cookie reply from a loaded server.
    let mut ip = vec![0u8; 28];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&28u16.to_be_bytes());
    ip[9] = 17;
    ip[12..16].copy_from_slice(&fx::assignment().ipv4.octets());
    ip[16..20].copy_from_slice(&[10, 1, 0, 1]);
    let mut data = vec![0u8; wire::TRANSPORT_HEADER_LEN + ip.len() + wire::TAG_LEN];
    data[wire::TRANSPORT_HEADER_LEN..wire::TRANSPORT_HEADER_LEN + ip.len()].copy_from_slice(&ip);
    let n = est
        .client
        .encrypt(&mut data, ip.len(), fx::START)
        .expect("connected client seals");
    data.truncate(n);

    let (_c, second) = fx::client_with_initiation(&mut rng);
    let mut cookie = [0u8; 256];
    let reply = fx::server()
        .handle_initiation(
            &second,
            fx::client_udp(),
            fx::START,
            true,
            &mut rng,
            &mut cookie,
        )
        .expect("valid mac1 under load gets a cookie");
    let concentrator::proto::server::HandshakeReply::Cookie(clen) = reply else {
        panic!("expected a cookie reply");
    };
    let cookie = &cookie[..clen];

    let mut assignment = [0u8; ASSIGNMENT_LEN];
    fx::assignment().emit(&mut assignment);
    let mut v4_only = [0u8; ASSIGNMENT_LEN];
    AddressAssignment {
        ipv6: None,
        ..fx::assignment()
    }
    .emit(&mut v4_only);
    let mut ip6 = [0u8; 48];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&8u16.to_be_bytes());

    // wire_parse: the raw messages.
    for (name, bytes) in [
        ("initiation", &est.initiation[..]),
        ("response", &est.response[..]),
        ("cookie-reply", cookie),
        ("keepalive", &est.keepalive[..]),
        ("data", &data[..]),
        ("assignment", &assignment[..]),
        ("assignment-v4", &v4_only[..]),
        ("ipv4", &ip[..]),
        ("ipv6", &ip6[..]),
    ] {
        write("wire_parse", name, bytes);
    }

    // responder: flags, source port, message. Not the known peer's initiations: one of those
    // would complete a handshake, which the target only allows for its own genuine initiation
    // (mode 2). A stranger's initiation gets as far as the peer lookup.
    let (_s, stranger) = fx::initiate(fx::stranger(), &mut rng);
    write(
        "responder",
        "initiation",
        &with_prefix(&[0, 0x40, 0x9c], &stranger),
    );
    write(
        "responder",
        "initiation-under-load",
        &with_prefix(&[1, 0x40, 0x9c], &stranger),
    );
    write(
        "responder",
        "framed",
        &with_prefix(&[2, 0x40, 0x9c], &stranger),
    );
    // Mode 2 XORs with a genuine initiation: all zeros is the genuine one itself.
    write(
        "responder",
        "genuine-xor",
        &with_prefix(&[4, 0x40, 0x9c], &[0u8; wire::INITIATION_LEN]),
    );
    write(
        "responder",
        "transport",
        &with_prefix(&[6, 0, 0], &est.keepalive),
    );
    write("responder", "data", &with_prefix(&[6, 0, 0], &data));

    // client_receive: mode byte, message.
    write(
        "client_receive",
        "response",
        &with_prefix(&[0], &est.response),
    );
    write(
        "client_receive",
        "response-framed",
        &with_prefix(&[1], &est.response),
    );
    write("client_receive", "cookie-reply", &with_prefix(&[2], cookie));
    write("client_receive", "data", &with_prefix(&[3], &data));

    // datagram_decision: flags (bit 0 under load, bit 1 client_to_client, bits 2-3 mode),
    // source port, source address byte, message. Mode 2 seals the message itself, so its seeds
    // are plaintexts: to a host behind the server, to the second peer (relayed with bit 1),
    // from an address the peer does not own, IPv6, and nothing (a keepalive).
    let mut to_other = ip.clone();
    to_other[16..20].copy_from_slice(&fx::OTHER_PEER_V4.octets());
    let mut spoofed = ip.clone();
    spoofed[12..16].copy_from_slice(&fx::OTHER_PEER_V4.octets());
    let mut ip6_own = ip6;
    ip6_own[8..24].copy_from_slice(&fx::assignment().ipv6.expect("has IPv6").0.octets());
    for (name, flags, bytes) in [
        ("raw-initiation", 0, &stranger[..]),
        ("transport", 4, &data[..]),
        ("sealed-to-tun", 8, &ip[..]),
        ("sealed-relay", 8 | 2, &to_other[..]),
        ("sealed-spoofed", 8, &spoofed[..]),
        ("sealed-ipv6", 8, &ip6_own[..]),
        ("sealed-keepalive", 8, &[][..]),
        ("initiation", 12, &stranger[..]),
        ("initiation-under-load", 12 | 1, &stranger[..]),
    ] {
        write(
            "datagram_decision",
            name,
            &with_prefix(&[flags, 0x40, 0x9c, 10], bytes),
        );
    }
    println!("seed corpora written under fuzz/corpus/");
}
