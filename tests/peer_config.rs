//! `concentrator peer add --protocol` and `concentrator peer config` end to end: the generated
//! wg-quick config is accepted by the real `wg setconf` on a wireguard-go interface (after
//! dropping Address and DNS, as wg-quick does) and configures it as the server expects, its QR
//! code decodes back to the same text, and an unknown key or a server without
//! `public_endpoint` get errors that say what to do.
//!
//! Root-only, in network namespaces (see `tests/common`); prints `SKIPPED <name>: ...`
//! otherwise.

mod common;

use std::time::Duration;

use common::ctl::{cli, cli_ok, cli_ok_output};
use common::stock::{wg_keypair, StockEndpoint, StockKind};
use common::*;

/// The lines `wg setconf` reads: wg-quick's own settings (Address, DNS, ...) removed, as
/// `wg-quick strip` does.
fn strip(config: &str) -> String {
    const WG_QUICK_ONLY: &[&str] = &[
        "Address",
        "DNS",
        "MTU",
        "Table",
        "PreUp",
        "PostUp",
        "PreDown",
        "PostDown",
        "SaveConfig",
    ];
    config
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !WG_QUICK_ONLY.contains(&key)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Reads a QR code drawn with Unicode half blocks back into modules (a light module is drawn,
/// see `peer config --qr`) and decodes it.
fn decode_qr(drawing: &str) -> String {
    let lines: Vec<Vec<char>> = drawing
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.chars().collect())
        .collect();
    let width = lines[0].len();
    assert!(lines.iter().all(|l| l.len() == width), "ragged drawing");
    // (top, bottom) halves: light when drawn.
    let light = |c: char| -> (bool, bool) {
        match c {
            ' ' => (false, false),
            '\u{2584}' => (false, true),
            '\u{2580}' => (true, false),
            '\u{2588}' => (true, true),
            other => panic!("unexpected character {other:?} in the QR drawing"),
        }
    };
    // The code with its quiet zone is square; an odd height leaves a last half row unused.
    let size = width;
    assert!(
        lines.len() * 2 >= size,
        "{} lines for {size} columns",
        lines.len()
    );
    const SCALE: usize = 4;
    let mut img =
        rqrr::PreparedImage::prepare_from_greyscale(size * SCALE, size * SCALE, |x, y| {
            let (col, row) = (x / SCALE, y / SCALE);
            let (top, bottom) = light(lines[row / 2][col]);
            let is_light = if row % 2 == 0 { top } else { bottom };
            if is_light {
                255
            } else {
                0
            }
        });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "QR codes found: {}", grids.len());
    let (_, text) = grids[0].decode().expect("the QR code decodes");
    text
}

#[test]
fn peer_config_is_a_working_wg_quick_config() {
    let name = "peer_config_is_a_working_wg_quick_config";
    if !lab_or_skip(name) || !tools_or_skip(name, &["wireguard-go", "wg"]) {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        clients: 1,
        inner6: true,
        ..Default::default()
    });
    lab.start_server();
    let (client_key, client_pub) = wg_keypair();
    let (psk, _) = wg_keypair();
    let key_file = lab.dir().join("wgclient.key");
    let psk_file = lab.dir().join("wgclient.psk");
    std::fs::write(&key_file, format!("{client_key}\n")).unwrap();
    std::fs::write(&psk_file, format!("{psk}\n")).unwrap();

    // --protocol reaches the server: the peer speaks the WireGuard suite.
    let add_with_protocol = [
        "peer",
        "add",
        "--public-key",
        client_pub.as_str(),
        "--protocol",
    ];
    let psk_path = psk_file.to_str().unwrap();
    cli_ok(
        &lab,
        &[
            &add_with_protocol[..],
            &["wireguard", "--psk-file", psk_path],
        ]
        .concat(),
    );
    let bad = cli(&lab, &[&add_with_protocol[..], &["ipsec"]].concat());
    assert!(!bad.ok() && bad.stderr.contains("ipsec"), "{bad:?}");

    // No public_endpoint yet: an error naming the setting.
    let peer_config = ["peer", "config", client_pub.as_str()];
    let out = cli(&lab, &peer_config);
    assert!(
        !out.ok() && out.stderr.contains("public_endpoint = \""),
        "{out:?}"
    );
    // An unknown key.
    let (_, stranger) = wg_keypair();
    let out = cli(&lab, &["peer", "config", &stranger]);
    assert!(
        !out.ok() && out.stderr.contains(&stranger) && out.stderr.contains("not a peer"),
        "{out:?}"
    );
    std::fs::write(
        lab.server_config_path(),
        std::fs::read_to_string(lab.server_config_path())
            .unwrap()
            .replace(
                "[[peer]]",
                &format!(
                    "public_endpoint = \"{SERVER_UNDERLAY}:{PORT}\"\npush_dns = [\"10.1.0.53\"]\n\n[[peer]]"
                ),
            ),
    )
    .unwrap();
    // The reload applies public_endpoint and push_dns (and would remove the live peer, which
    // the file does not have: save first).
    cli_ok(&lab, &["save"]);
    cli_ok(&lab, &["reload"]);
    // A key file of another client.
    let (other_key, _) = wg_keypair();
    let other_file = lab.dir().join("other.key");
    std::fs::write(&other_file, &other_key).unwrap();
    let other_path = other_file.to_str().unwrap();
    let out = cli(
        &lab,
        &[&peer_config[..], &["--private-key-file", other_path]].concat(),
    );
    assert!(!out.ok() && out.stderr.contains("not peer"), "{out:?}");

    let with_key_file = [
        &peer_config[..],
        &["--private-key-file", key_file.to_str().unwrap()],
    ]
    .concat();
    let config = cli_ok(&lab, &with_key_file);
    let show = lab.show_json();
    let me = show["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["public_key"] == client_pub.as_str())
        .expect("the peer runs")
        .clone();
    let (a4, a6) = (
        me["address"].as_str().unwrap(),
        me["address6"].as_str().unwrap(),
    );
    for line in [
        "[Interface]".to_string(),
        format!("PrivateKey = {client_key}"),
        format!("Address = {a4}/32, {a6}/128"),
        "DNS = 10.1.0.53".into(),
        "[Peer]".into(),
        format!("PublicKey = {}", lab.server_pubkey),
        format!("PresharedKey = {psk}"),
        format!("Endpoint = {SERVER_UNDERLAY}:{PORT}"),
        format!("AllowedIPs = {CLIENT_SUBNET}, {CLIENT_SUBNET6}"),
        "PersistentKeepalive = 25".into(),
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "{line:?} missing:\n{config}"
        );
    }

    // The real `wg setconf` takes it and configures what it says.
    let ep = StockEndpoint::start(StockKind::WireguardGo, &lab.client_ns[0], lab.dir());
    ep.setconf_text(&strip(&config));
    let dump = ep.dump();
    assert_eq!(dump.interface.public_key, client_pub);
    let server = dump
        .peer(&lab.server_pubkey)
        .expect("the server in the dump");
    assert_eq!(server.preshared_key.as_deref(), Some(psk.as_str()));
    assert_eq!(
        server.endpoint,
        Some(format!("{SERVER_UNDERLAY}:{PORT}").parse().unwrap())
    );
    assert_eq!(server.allowed_ips, [CLIENT_SUBNET, CLIENT_SUBNET6]);
    assert_eq!(server.persistent_keepalive, Some(25));
    assert_eq!(me["protocol"], "wireguard");
    // And it connects: the interface with the config's addresses, a ping to the server's
    // tunnel address both families.
    ep.up(&[&format!("{a4}/16"), &format!("{a6}/64")], 1420);
    lab.ping_ok(&lab.client_ns[0].clone(), SERVER_VIRTUAL, 3);
    lab.ping_ok(&lab.client_ns[0].clone(), SERVER_VIRTUAL6, 3);
    ep.wait_handshake(&lab.server_pubkey, Duration::from_secs(10));
    drop(ep);

    // The QR code holds the same text.
    let qr = cli_ok(&lab, &[&with_key_file[..], &["--qr"]].concat());
    assert_eq!(decode_qr(&qr), config);
    // Without the key file: a marked placeholder, and a note saying so.
    let placeholder = cli_ok_output(&lab, &peer_config);
    assert!(
        placeholder
            .stdout
            .contains("PrivateKey = <REPLACE WITH THE CLIENT'S PRIVATE KEY>"),
        "{}",
        placeholder.stdout
    );
    assert!(!placeholder.stdout.contains(&client_key));
    assert!(
        placeholder.stderr.contains("placeholder"),
        "{placeholder:?}"
    );
    assert!(
        !placeholder.stderr.contains("native"),
        "no warning for a WireGuard peer: {placeholder:?}"
    );
}
