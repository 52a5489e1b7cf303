//! `concentrator save` end to end: peers added and removed live are written back into the
//! config file (comments, settings, mode kept), so that a reload afterwards changes nothing and
//! the live-added peer keeps its addresses and its session.
//!
//! Root-only, in network namespaces (see `tests/common`); prints `SKIPPED <name>: ...`
//! otherwise.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use common::ctl::cli_ok;
use common::setup::new_lab_or_skip;
use common::*;

fn show_peer(lab: &Lab, key: &str) -> Option<serde_json::Value> {
    let show: serde_json::Value =
        serde_json::from_str(&cli_ok(lab, &["show", "--json", "--limit", "100"])).unwrap();
    show["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["public_key"] == key)
        .cloned()
}

#[test]
fn saved_live_peers_survive_a_reload() {
    let name = "saved_live_peers_survive_a_reload";
    // Client 2's key is not in the file: it is added live, with a pre-shared key and a network.
    let cfg = LabConfig {
        inner6: true,
        ..LabConfig::second_client_unknown()
    };
    let Some(mut lab) = new_lab_or_skip(name, cfg) else {
        return;
    };
    let (k1, k2) = (lab.client_pubkeys[0].clone(), lab.client_pubkeys[1].clone());
    let path = lab.server_config_path();
    // The operator's comments, which a save keeps.
    let original = std::fs::read_to_string(&path).unwrap();
    let commented = format!(
        "# headend of the test lab: keep this comment\n{}",
        original.replace("[[peer]]", "# client one\n[[peer]]")
    );
    std::fs::write(&path, &commented).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (psk, _) = keypair();
    let psk_file = lab.dir().join("c2.psk");
    std::fs::write(&psk_file, &psk).unwrap();
    std::fs::set_permissions(&psk_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c2_config = lab.dir().join("c2.toml");
    let text = std::fs::read_to_string(&c2_config).unwrap();
    std::fs::write(
        &c2_config,
        format!("{text}preshared_key_file = \"c2.psk\"\n"),
    )
    .unwrap();
    lab.start_server();

    cli_ok(
        &lab,
        &[
            "peer",
            "add",
            "--public-key",
            &k2,
            "--psk-file",
            psk_file.to_str().unwrap(),
            "--allowed-ips",
            "10.98.0.0/24",
        ],
    );
    lab.start_client(1);
    let a2 = lab.wait_tunnel(1);
    let c2 = lab.client_ns[1].clone();
    lab.ping_ok(&c2, BACKEND, 2);
    let before = show_peer(&lab, &k2).expect("peer 2 runs");
    assert_eq!(before["address"], a2.to_string());
    let a2_6 = before["address6"]
        .as_str()
        .expect("an IPv6 address")
        .to_string();
    // Peer 1 (in the file) is removed live.
    cli_ok(&lab, &["peer", "remove", &k1]);

    let out = cli_ok(&lab, &["save", "--config", path.to_str().unwrap()]);
    assert!(out.contains("1 added, 1 removed"), "{out}");
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(
        saved.starts_with("# headend of the test lab: keep this comment\n"),
        "{saved}"
    );
    assert!(
        saved.contains(&format!("tun_name = \"{SERVER_TUN}\"")),
        "{saved}"
    );
    assert!(!saved.contains(&k1), "peer 1 was removed live:\n{saved}");
    assert!(saved.contains(&format!("public_key = \"{k2}\"")), "{saved}");
    assert!(saved.contains(&format!("address = \"{a2}\"")), "{saved}");
    assert!(saved.contains(&format!("address6 = \"{a2_6}\"")), "{saved}");
    assert!(
        saved.contains("allowed_ips = [\"10.98.0.0/24\"]"),
        "{saved}"
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640, "the file keeps its mode");
    // The live pre-shared key went into a new 0600 file the peer refers to; no key in the
    // config itself.
    assert!(!saved.contains(psk.trim()), "a key in the config:\n{saved}");
    let psk_name = saved
        .lines()
        .find_map(|l| l.strip_prefix("preshared_key_file = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no preshared_key_file:\n{saved}"));
    let written = lab.dir().join(psk_name);
    assert_eq!(
        std::fs::read_to_string(&written).unwrap().trim(),
        psk.trim()
    );
    assert_eq!(
        std::fs::metadata(&written).unwrap().mode() & 0o7777,
        0o600,
        "{}",
        written.display()
    );
    // No temporary file left next to it.
    let leftovers: Vec<String> = std::fs::read_dir(lab.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".save-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The file now says what runs: a reload changes nothing.
    let r: serde_json::Value = serde_json::from_str(&cli_ok(&lab, &["reload", "--json"])).unwrap();
    for list in ["added", "removed", "changed"] {
        assert!(r[list].as_array().unwrap().is_empty(), "{list}: {r}");
    }
    assert_eq!(r["unchanged"], 1, "{r}");
    let after = show_peer(&lab, &k2).expect("peer 2 still runs after the reload");
    assert_eq!(after["address"], before["address"]);
    assert_eq!(after["address6"], before["address6"]);
    assert_eq!(after["allowed_ips"], before["allowed_ips"]);
    assert!(show_peer(&lab, &k1).is_none(), "peer 1 came back");
    // Its session was not touched.
    lab.ping_ok(&c2, BACKEND, 2);

    // A second save has nothing to do and leaves the file as it is.
    let out = cli_ok(&lab, &["save"]);
    assert!(out.contains("0 added, 0 removed, 0 changed"), "{out}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), saved);
}
