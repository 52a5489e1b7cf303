//! `concentrator save`: writes the running peers back into the config file's `[[peer]]` list
//! (like `wg-quick save`), so that peers added or removed live survive a reload or restart.
//!
//! The file is edited, not regenerated: comments, layout and every top-level setting stay,
//! and so does every field of a peer that still runs (its own `push_routes`, a comment next to
//! it); only `address`, `address6`, `allowed_ips`, `protocol` and `preshared_key_file` follow
//! the running peer. A pre-shared key given live has no file: it goes into a new file (0600)
//! next to the config, which the peer then references. The new file is checked as the server
//! would load it before it replaces the old one, atomically (a temporary file in the same
//! directory, then rename), with the old one's mode and owner.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use ipnet::IpNet;
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table};
use zeroize::Zeroizing;

use concentrator::config::ServerConfig;
use concentrator::ops::protocol::{PeerDetail, PeersReply, Request};
use concentrator::proto::keys::{PresharedKey, PublicKey};
use concentrator::proto::suite::Suite;

/// `concentrator save [--config FILE]`.
pub fn run(socket: Option<&Path>, config: Option<&Path>) -> Result<()> {
    let reply: PeersReply = super::ctl::request(socket, &Request::Peers { public_key: None })?;
    let path = config.map_or_else(|| reply.config_file.clone(), Path::to_path_buf);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "server".into());
    let saved = rewrite(&text, &reply.peers, &dir, &stem)?;
    let meta = std::fs::metadata(&path)?;

    // Key files first: the new config refers to them, and is checked with them in place.
    for (name, psk) in &saved.new_psk_files {
        write_atomically(
            &dir.join(name),
            psk.as_bytes(),
            0o600,
            (meta.uid(), meta.gid()),
        )?;
    }
    if let Err(e) = ServerConfig::from_toml_str(&saved.text, &dir) {
        bail!(
            "the saved config would not load, so {} was left as it was:\n{e}",
            path.display()
        );
    }
    write_atomically(
        &path,
        saved.text.as_bytes(),
        meta.mode() & 0o7777,
        (meta.uid(), meta.gid()),
    )?;
    println!(
        "saved {} peers to {} ({} added, {} removed, {} changed)",
        reply.peers.len(),
        path.display(),
        saved.added,
        saved.removed,
        saved.changed
    );
    for (name, _) in &saved.new_psk_files {
        println!("wrote the pre-shared key file {}", dir.join(name).display());
    }
    Ok(())
}

/// The edited config and what it took.
#[derive(Debug)]
pub struct Saved {
    pub text: String,
    /// Pre-shared key files to write next to the config: name and base64 key.
    pub new_psk_files: Vec<(String, Zeroizing<String>)>,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// Rewrites the `[[peer]]` list of the config `text` (in directory `dir`, file stem `stem`)
/// to be `running`.
pub fn rewrite(text: &str, running: &[PeerDetail], dir: &Path, stem: &str) -> Result<Saved> {
    let mut doc: DocumentMut = text
        .parse()
        .context("the config file is not valid TOML; fix it before saving")?;
    let mut wanted: Vec<(PublicKey, &PeerDetail)> = Vec::with_capacity(running.len());
    for p in running {
        let key: PublicKey = p
            .public_key
            .parse()
            .map_err(|e| anyhow::anyhow!("the server sent a bad key {:?}: {e}", p.public_key))?;
        wanted.push((key, p));
    }
    if doc.get("peer").is_none() {
        doc.insert("peer", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    let Some(tables) = doc.get_mut("peer").and_then(Item::as_array_of_tables_mut) else {
        bail!("`peer` in the config file is not a list of [[peer]] tables; write each peer as a [[peer]] table");
    };

    let mut saved = Saved {
        text: String::new(),
        new_psk_files: Vec::new(),
        added: 0,
        removed: 0,
        changed: 0,
    };
    let mut in_file = HashSet::new();
    let mut gone = Vec::new();
    for (i, table) in tables.iter_mut().enumerate() {
        let key_text = table
            .get("public_key")
            .and_then(Item::as_str)
            .with_context(|| format!("peer[{i}] has no public_key; fix the file first"))?;
        let key: PublicKey = key_text
            .parse()
            .map_err(|e| anyhow::anyhow!("peer[{i}].public_key: {e}; fix the file first"))?;
        match wanted.iter().find(|(k, _)| *k == key) {
            None => gone.push(i),
            Some((_, peer)) => {
                in_file.insert(key);
                if update_peer(table, peer, &key, dir, stem, &mut saved.new_psk_files)? {
                    saved.changed += 1;
                }
            }
        }
    }
    for i in gone.iter().rev() {
        tables.remove(*i);
    }
    saved.removed = gone.len();
    for (key, peer) in wanted.iter().filter(|(k, _)| !in_file.contains(k)) {
        let mut table = Table::new();
        table
            .decor_mut()
            .set_prefix("\n# Added live; written by `concentrator save`.\n");
        table.insert("public_key", toml_edit::value(key.to_string()));
        update_peer(&mut table, peer, key, dir, stem, &mut saved.new_psk_files)?;
        tables.push(table);
        saved.added += 1;
    }
    saved.text = doc.to_string();
    Ok(saved)
}

/// Makes `table` say what `peer` runs with, leaving fields that already say it as they are;
/// true when something changed.
fn update_peer(
    table: &mut Table,
    peer: &PeerDetail,
    key: &PublicKey,
    dir: &Path,
    stem: &str,
    new_psk_files: &mut Vec<(String, Zeroizing<String>)>,
) -> Result<bool> {
    let mut changed = false;
    let mut set = |table: &mut Table, field: &str, value: Option<Item>, same: bool| {
        if same {
            return;
        }
        changed = true;
        match value {
            Some(v) => {
                table.insert(field, v);
            }
            None => {
                table.remove(field);
            }
        }
    };

    let file_address = table
        .get("address")
        .and_then(Item::as_str)
        .and_then(|a| a.trim().parse::<Ipv4Addr>().ok());
    set(
        table,
        "address",
        Some(toml_edit::value(peer.address.to_string())),
        file_address == Some(peer.address),
    );

    let file_address6 = table
        .get("address6")
        .and_then(Item::as_str)
        .and_then(|a| a.trim().parse::<Ipv6Addr>().ok());
    set(
        table,
        "address6",
        peer.address6.map(|a| toml_edit::value(a.to_string())),
        file_address6 == peer.address6
            && (peer.address6.is_some() || !table.contains_key("address6")),
    );

    let file_allowed: Option<Vec<IpNet>> =
        table.get("allowed_ips").and_then(Item::as_array).map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(prefix))
                .collect()
        });
    let mut running_set = peer
        .allowed_ips
        .iter()
        .map(IpNet::trunc)
        .collect::<Vec<_>>();
    running_set.sort_unstable();
    running_set.dedup();
    let same = match &file_allowed {
        Some(f) => {
            let mut f = f.clone();
            f.sort_unstable();
            f.dedup();
            f == running_set
        }
        None => running_set.is_empty(),
    };
    set(
        table,
        "allowed_ips",
        (!peer.allowed_ips.is_empty()).then(|| {
            toml_edit::value(Array::from_iter(
                peer.allowed_ips.iter().map(|p| p.to_string()),
            ))
        }),
        same,
    );

    let file_protocol = table.get("protocol").and_then(Item::as_str);
    let native = peer.protocol == Suite::Native.name();
    let same = match file_protocol {
        Some(p) => p == peer.protocol,
        None => native,
    };
    set(
        table,
        "protocol",
        (!native).then(|| toml_edit::value(peer.protocol.clone())),
        same,
    );

    // The pre-shared key: the file the peer names when it holds the running key; else a new
    // file for it.
    let running_psk = peer
        .psk
        .as_deref()
        .map(|t| {
            PresharedKey::from_base64(t)
                .map_err(|e| anyhow::anyhow!("the server sent a bad pre-shared key: {e}"))
        })
        .transpose()?;
    let file_field = table
        .get("preshared_key_file")
        .and_then(Item::as_str)
        .map(str::to_string);
    let file_psk =
        match &file_field {
            Some(f) => {
                let path = resolve(dir, f);
                let text = Zeroizing::new(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                );
                Some(PresharedKey::from_base64(text.trim()).map_err(|e| {
                    anyhow::anyhow!("{}: not a pre-shared key: {e}", path.display())
                })?)
            }
            None => None,
        };
    match (running_psk, file_psk) {
        (None, None) => {}
        (None, Some(_)) => set(table, "preshared_key_file", None, false),
        (Some(r), Some(f)) if r == f => {}
        (Some(r), _) => {
            let name = psk_file_name(stem, key);
            new_psk_files.push((name.clone(), r.to_base64()));
            set(
                table,
                "preshared_key_file",
                Some(toml_edit::value(name)),
                false,
            );
        }
    }
    Ok(changed)
}

/// A prefix of `allowed_ips` as the config reads it: a network, or an address as a host
/// prefix; normalized.
fn prefix(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// A path of the config, relative to its directory.
fn resolve(dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// The file a live pre-shared key is saved in: named after the config and the peer's key
/// (URL-safe base64, so it is a file name).
fn psk_file_name(stem: &str, key: &PublicKey) -> String {
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes());
    format!("{stem}-{key}.psk")
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader sees the old file or the new one, never a part; with `mode` and `owner`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32, owner: (u32, u32)) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.save-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))
            .with_context(|| format!("giving {} its owner", tmp.display()))?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> PublicKey {
        let mut k = [i; 32];
        k[31] = 0x40;
        PublicKey::from_bytes(k)
    }

    fn detail(i: u8, address: &str) -> PeerDetail {
        PeerDetail {
            public_key: key(i).to_string(),
            address: address.parse().unwrap(),
            address6: None,
            allowed_ips: Vec::new(),
            protocol: "native".into(),
            psk: None,
            push_routes: Vec::new(),
            push_dns: Vec::new(),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ctr-save-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn peers_follow_the_running_ones_and_the_rest_of_the_file_stays() {
        let dir = temp_dir("edit");
        std::fs::write(dir.join("p1.psk"), format!("{}\n", key(9))).unwrap();
        let text = format!(
            "# the operator's comment\nprivate_key_file = \"server.key\" # inline\naddress = \"10.66.0.1/24\"\n\n\
             # peer one, kept\n[[peer]]\npublic_key = \"{k1}\"\naddress = \"10.66.0.2\"\npreshared_key_file = \"p1.psk\"\npush_routes = [\"10.9.0.0/24\"]\n\n\
             # peer two, removed live\n[[peer]]\npublic_key = \"{k2}\"\n",
            k1 = key(1),
            k2 = key(2)
        );
        let running = || {
            let mut one = detail(1, "10.66.0.2");
            one.psk = Some(key(9).to_string());
            let mut three = detail(3, "10.66.0.3");
            three.psk = Some(key(8).to_string());
            three.allowed_ips = vec!["10.99.0.0/24".parse().unwrap()];
            three.protocol = "wireguard".into();
            vec![one, three]
        };
        let saved = rewrite(&text, &running(), &dir, "server").unwrap();
        let t = &saved.text;
        for kept in [
            "# the operator's comment\n",
            "private_key_file = \"server.key\" # inline\n",
            "# peer one, kept\n",
            "preshared_key_file = \"p1.psk\"",
            "push_routes = [\"10.9.0.0/24\"]",
        ] {
            assert!(t.contains(kept), "{kept:?} lost:\n{t}");
        }
        assert!(
            !t.contains(&key(2).to_string()),
            "removed peer still there:\n{t}"
        );
        assert!(t.contains(&key(3).to_string()), "{t}");
        assert!(t.contains("address = \"10.66.0.3\""), "{t}");
        assert!(t.contains("allowed_ips = [\"10.99.0.0/24\"]"), "{t}");
        assert!(t.contains("protocol = \"wireguard\""), "{t}");
        let name = psk_file_name("server", &key(3));
        assert!(
            t.contains(&format!("preshared_key_file = \"{name}\"")),
            "{t}"
        );
        assert_eq!(saved.new_psk_files.len(), 1);
        assert_eq!(saved.new_psk_files[0].0, name);
        assert_eq!(*saved.new_psk_files[0].1, key(8).to_string());
        assert!(!name.contains('/'), "{name}");
        assert_eq!((saved.added, saved.removed, saved.changed), (1, 1, 0));

        // A key file the config names must be readable: it is compared with the running key.
        assert!(rewrite(t, &running(), &dir, "server").is_err());
        // Once written, saving what the file already says changes nothing.
        std::fs::write(dir.join(&name), format!("{}\n", key(8))).unwrap();
        let again = rewrite(t, &running(), &dir, "server").unwrap();
        assert_eq!(&again.text, t);
        assert!(again.new_psk_files.is_empty());
        assert_eq!((again.added, again.removed, again.changed), (0, 0, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_without_peers_gets_them_and_bad_files_are_refused() {
        let dir = temp_dir("empty");
        let saved = rewrite(
            "address = \"10.66.0.1/24\"\n",
            &[detail(1, "10.66.0.5")],
            &dir,
            "s",
        )
        .unwrap();
        assert!(saved.text.contains("[[peer]]"), "{}", saved.text);
        assert!(
            saved.text.contains("address = \"10.66.0.5\""),
            "{}",
            saved.text
        );
        assert!(rewrite("peer = 3\n", &[], &dir, "s").is_err());
        assert!(rewrite("address = \n", &[], &dir, "s").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writes_are_atomic_and_keep_mode_and_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("atomic");
        let path = dir.join("c.toml");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        write_atomically(&path, b"new\n", 0o640, (meta.uid(), meta.gid())).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (meta.uid(), meta.gid()));
        // No temporary file left behind.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
