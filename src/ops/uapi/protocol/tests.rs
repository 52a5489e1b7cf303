use super::*;

fn hex(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

fn key(byte: u8) -> PublicKey {
    PublicKey::from([byte; 32])
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

#[test]
fn framing_finds_each_operation_and_waits_for_the_rest() {
    assert_eq!(frame(b"", 0), Framed::NeedMore);
    assert_eq!(frame(b"ge", 0), Framed::NeedMore);
    assert_eq!(frame(b"get=1\n", 0), Framed::NeedMore);
    assert_eq!(frame(b"get=1\n\n", 0), Framed::Get { consumed: 7 });
    assert_eq!(
        frame(b"get=1\n\nget=1\n\n", 0),
        Framed::Get { consumed: 7 },
        "one operation at a time"
    );
    assert_eq!(frame(b"get=1\nx", 0), Framed::GetTrailing { consumed: 7 });
    assert_eq!(frame(b"set=1\n", 0), Framed::NeedMore);
    assert_eq!(
        frame(b"set=1\n\n", 0),
        Framed::Set {
            body: b"",
            consumed: 7
        }
    );
    let text = b"set=1\nlisten_port=1\n\nget=1\n\n";
    assert_eq!(
        frame(text, 0),
        Framed::Set {
            body: b"listen_port=1\n",
            consumed: 21
        }
    );
    assert_eq!(frame(b"set=1\nlisten_port=1\n", 0), Framed::NeedMore);
    assert_eq!(frame(b"put=1\n\n", 0), Framed::Unknown);
    assert_eq!(frame(b"x", 0), Framed::Unknown);
    assert_eq!(frame(b"get=2\n\n", 0), Framed::Unknown);
}

#[test]
fn framing_resumes_where_it_left_off_even_across_the_terminator() {
    let text = b"set=1\nlisten_port=1\n\n";
    // Every split point: what was scanned before must not hide an end that straddles it.
    for seen in 0..text.len() {
        assert_eq!(frame(&text[..seen], 0), Framed::NeedMore, "{seen}");
        assert_eq!(
            frame(text, seen),
            Framed::Set {
                body: b"listen_port=1\n",
                consumed: text.len()
            },
            "resumed at {seen}"
        );
    }
}

#[test]
fn every_device_key_parses() {
    let body = format!(
        "private_key={}\nlisten_port=51820\nfwmark=4294967295\nreplace_peers=true\n",
        hex(0xab)
    );
    let r = parse_set(body.as_bytes()).unwrap();
    assert_eq!(r.private_key.map(|k| *k.0), Some([0xab; 32]));
    assert_eq!(r.listen_port, Some(51820));
    assert_eq!(r.fwmark, Some(u32::MAX));
    assert!(r.replace_peers);
    assert!(r.peers.is_empty());
}

#[test]
fn every_peer_key_parses_in_order() {
    let body = format!(
        "public_key={}\nupdate_only=true\npreshared_key={}\nendpoint=[2001:db8::1]:51820\n\
         persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.99.0.0/24\n\
         allowed_ip=-fd99::/64\nprotocol_version=1\npublic_key={}\nremove=true\n",
        hex(1),
        hex(2).to_uppercase(),
        hex(3)
    );
    let r = parse_set(body.as_bytes()).unwrap();
    assert_eq!(r.peers.len(), 2);
    let p = &r.peers[0];
    assert_eq!(p.public_key, key(1));
    assert!(p.update_only && !p.remove);
    assert_eq!(p.preshared_key, Some(PresharedKey::from_bytes([2; 32])));
    assert_eq!(p.endpoint, Some("[2001:db8::1]:51820".parse().unwrap()));
    assert_eq!(p.persistent_keepalive_interval, Some(25));
    assert_eq!(
        p.allowed_ips,
        vec![
            AllowedIpEdit::Clear,
            AllowedIpEdit::Add(net("10.99.0.0/24")),
            AllowedIpEdit::Remove(net("fd99::/64")),
        ]
    );
    assert_eq!(r.peers[1].public_key, key(3));
    assert!(r.peers[1].remove);
}

fn errno_of(body: &str) -> Errno {
    parse_set(body.as_bytes())
        .expect_err(&format!("{body:?} must be refused"))
        .errno
}

#[test]
fn malformed_lines_get_the_references_errno() {
    let peer = format!("public_key={}\n", hex(1));
    // Not key=value.
    assert_eq!(errno_of("listen_port\n"), Errno::Protocol);
    assert_eq!(errno_of(&format!("{peer}allowed_ip\n")), Errno::Protocol);
    assert_eq!(errno_of("listen_port=\u{fffd}\n"), Errno::Invalid);
    // Unknown keys, at either level; a peer key before any peer is a device key.
    assert_eq!(errno_of("mtu=1420\n"), Errno::Invalid);
    assert_eq!(errno_of("endpoint=1.2.3.4:5\n"), Errno::Invalid);
    assert_eq!(errno_of(&format!("{peer}listen_port=1\n")), Errno::Invalid);
    // Bad values.
    for bad in [
        "listen_port=65536",
        "listen_port=-1",
        "listen_port=+1",
        "listen_port= 1",
        "listen_port=",
        "fwmark=4294967296",
        "replace_peers=false",
        "replace_peers=TRUE",
        "private_key=abc",
    ] {
        assert_eq!(errno_of(&format!("{bad}\n")), Errno::Invalid, "{bad}");
    }
    for bad in [
        "update_only=1",
        "remove=yes",
        "replace_allowed_ips=",
        "preshared_key=zz",
        "endpoint=1.2.3.4",
        "endpoint=host.example:51820",
        "persistent_keepalive_interval=65536",
        "allowed_ip=10.0.0.0",
        "allowed_ip=10.0.0.0/33",
        "allowed_ip=--10.0.0.0/8",
        "protocol_version=2",
    ] {
        assert_eq!(errno_of(&format!("{peer}{bad}\n")), Errno::Invalid, "{bad}");
    }
    assert_eq!(
        errno_of(&format!("public_key={}\n", &hex(1)[..63])),
        Errno::Invalid
    );
    assert_eq!(
        errno_of(&format!("public_key={}g\n", &hex(1)[..63])),
        Errno::Invalid
    );
}

#[test]
fn limits_are_enforced_and_messages_hold_no_key() {
    let long = format!("listen_port={}\n", "1".repeat(MAX_LINE));
    assert_eq!(errno_of(&long), Errno::Protocol);
    let huge = vec![b'x'; MAX_REQUEST + 1];
    assert_eq!(parse_set(&huge).unwrap_err().errno, Errno::Invalid);
    // A bad key's value is never repeated in the message.
    let secret = format!("{}zz", &hex(0x5a)[..62]);
    let e = parse_set(format!("private_key={secret}\n").as_bytes()).unwrap_err();
    assert!(!e.message.contains(&secret[..20]), "{}", e.message);
    // Long garbage is cut short in messages.
    let e = parse_set(format!("{}=1\n", "k".repeat(400)).as_bytes()).unwrap_err();
    assert!(e.message.len() < 200, "{}", e.message);
}

fn sample_peers() -> Vec<PeerState> {
    vec![
        PeerState {
            public_key: key(7),
            preshared_key: PresharedKey::zero(),
            endpoint: Some("192.0.2.1:40000".parse().unwrap()),
            last_handshake: Some(Duration::new(1_700_000_000, 123_456_789)),
            rx_bytes: 10,
            tx_bytes: 20,
            persistent_keepalive_interval: 0,
            allowed_ips: vec![net("10.66.0.2/32"), net("fd66::2/128"), net("10.99.0.0/24")],
        },
        PeerState {
            public_key: key(8),
            preshared_key: PresharedKey::from_bytes([9; 32]),
            endpoint: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive_interval: 25,
            allowed_ips: Vec::new(),
        },
    ]
}

#[test]
fn get_lists_the_interface_then_each_peer_in_the_references_order() {
    let device = DeviceState {
        private_key: Zeroizing::new([0x11; 32]),
        listen_port: 51820,
        fwmark: 0,
    };
    let text = format_get(&device, &sample_peers());
    let expected = format!(
        "private_key={}\nlisten_port=51820\n\
         public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.1:40000\n\
         last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123456789\n\
         tx_bytes=20\nrx_bytes=10\npersistent_keepalive_interval=0\n\
         allowed_ip=10.66.0.2/32\nallowed_ip=fd66::2/128\nallowed_ip=10.99.0.0/24\n\
         public_key={}\npreshared_key={}\nprotocol_version=1\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
         tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=25\n",
        hex(0x11),
        hex(7),
        hex(0),
        hex(8),
        hex(9)
    );
    assert_eq!(text.as_str(), expected);
    let full = format!("{}{}", text.as_str(), format_status(Ok(())));
    let answer = parse_get(&full).unwrap();
    assert_eq!(answer.errno, 0);
    assert_eq!(answer.device.len(), 2);
    assert_eq!(answer.peers.len(), 2);
    assert_eq!(answer.peers[0][0], ("public_key".into(), hex(7)));
    assert_eq!(
        answer.peers[0]
            .iter()
            .filter(|(k, _)| k == "allowed_ip")
            .count(),
        3
    );
    // A zero key, port and mark are left out, as the reference does.
    let bare = format_get(
        &DeviceState {
            private_key: Zeroizing::new([0; 32]),
            listen_port: 0,
            fwmark: 0,
        },
        &[],
    );
    assert_eq!(bare.as_str(), "");
}

#[test]
fn status_lines_carry_negative_errnos() {
    assert_eq!(format_status(Ok(())), "errno=0\n\n");
    assert_eq!(format_status(Err(Errno::Invalid)), "errno=-22\n\n");
    assert_eq!(format_status(Err(Errno::PortInUse)), "errno=-98\n\n");
    assert_eq!(format_status(Err(Errno::Protocol)), "errno=-71\n\n");
    assert_eq!(format_status(Err(Errno::Io)), "errno=-5\n\n");
    assert_eq!(parse_get("errno=-22\n\n").unwrap().errno, -22);
    assert!(parse_get("private_key=x\n\n").is_err(), "no errno");
}

#[test]
fn a_set_round_trips_through_its_text() {
    let mut peer = PeerChange::new(key(4));
    peer.preshared_key = Some(PresharedKey::from_bytes([5; 32]));
    peer.endpoint = Some("[fe80::1%2]:51820".parse().unwrap());
    peer.persistent_keepalive_interval = Some(0);
    peer.allowed_ips = vec![
        AllowedIpEdit::Clear,
        AllowedIpEdit::Add(net("0.0.0.0/0")),
        AllowedIpEdit::Remove(net("::/0")),
    ];
    let mut removed = PeerChange::new(key(6));
    removed.remove = true;
    removed.update_only = true;
    let request = SetRequest {
        private_key: Some(SecretBytes(Zeroizing::new([3; 32]))),
        listen_port: Some(0),
        fwmark: Some(7),
        replace_peers: true,
        peers: vec![peer, removed],
    };
    let text = format_set(&request);
    let Framed::Set { body, consumed } = frame(text.as_bytes(), 0) else {
        panic!("{:?}", text.as_str());
    };
    assert_eq!(consumed, text.len());
    assert_eq!(parse_set(body).unwrap(), request);
}

proptest::proptest! {
    #[test]
    fn any_set_round_trips(
        keys in proptest::collection::vec(proptest::prelude::any::<[u8; 32]>(), 0..4),
        port in proptest::option::of(proptest::prelude::any::<u16>()),
        flags in proptest::prelude::any::<(bool, bool, bool)>(),
        prefixes in proptest::collection::vec(
            (proptest::prelude::any::<u32>(), 0u8..=32, proptest::prelude::any::<bool>()), 0..6),
        keepalive in proptest::option::of(proptest::prelude::any::<u16>()),
    ) {
        let peers = keys.iter().map(|k| {
            let mut p = PeerChange::new(PublicKey::from(*k));
            p.remove = flags.0;
            p.update_only = flags.1;
            p.preshared_key = flags.2.then(|| PresharedKey::from_bytes(*k));
            p.persistent_keepalive_interval = keepalive;
            p.endpoint = keepalive.map(|k| SocketAddr::from(([192, 0, 2, 1], k)));
            p.allowed_ips = prefixes.iter().map(|&(a, len, remove)| {
                let n = IpNet::V4(ipnet::Ipv4Net::new(a.into(), len).unwrap());
                if remove { AllowedIpEdit::Remove(n) } else { AllowedIpEdit::Add(n) }
            }).collect();
            p
        }).collect();
        let request = SetRequest {
            private_key: None,
            listen_port: port,
            fwmark: None,
            replace_peers: flags.0,
            peers,
        };
        let text = format_set(&request);
        let Framed::Set { body, consumed } = frame(text.as_bytes(), 0) else {
            panic!("not framed");
        };
        proptest::prop_assert_eq!(consumed, text.len());
        proptest::prop_assert_eq!(parse_set(body).unwrap(), request);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_parsed_sets_reformat_the_same(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
    ) {
        let _ = frame(&bytes, 0);
        if let Ok(request) = parse_set(&bytes) {
            let text = format_set(&request);
            let Framed::Set { body, .. } = frame(text.as_bytes(), 0) else {
                panic!("not framed");
            };
            proptest::prop_assert_eq!(parse_set(body).unwrap(), request);
        }
    }
}
