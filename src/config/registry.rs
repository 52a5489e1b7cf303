//! The `[registry]` table of the server's configuration: the etcd cluster a fleet of headends
//! shares its peers through (see `docs/operations.md`, "Running a fleet").

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::{read_key_file, resolve, Problems};
use crate::proto::keys::PresharedKey;

/// Longest `fleet` name: it is one segment of every etcd key.
const MAX_FLEET_NAME: usize = 64;
/// Longest `stale_after`: a week.
const MAX_STALE_AFTER_SECS: i64 = 7 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    etcd: Option<Vec<String>>,
    fleet: Option<String>,
    name: Option<String>,
    endpoint: Option<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    user: Option<String>,
    password_file: Option<String>,
    fleet_key_file: Option<String>,
    stale_after: Option<i64>,
}

/// The fleet registry, resolved.
#[derive(Clone)]
pub struct RegistryConfig {
    /// The etcd members' client URLs (`http://` or `https://`).
    pub etcd: Vec<String>,
    /// The fleet's name: every key lives under `/concentrator/<fleet>/`.
    pub fleet: String,
    /// This headend's name in `headends/` (default: the host name).
    pub name: String,
    /// The endpoint clients reach this headend at, as listed by `show --fleet` (default:
    /// `<name>:<listen_port>`).
    pub endpoint: String,
    /// The CA that signed the etcd members' certificates (TLS).
    pub ca_file: Option<PathBuf>,
    /// This headend's client certificate and key (TLS client authentication).
    pub cert_file: Option<PathBuf>,
    /// The key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The etcd user, with its password read from `password_file`.
    pub user: Option<String>,
    /// The etcd user's password (never shown by `Debug`).
    pub password: Option<Zeroizing<String>>,
    /// The key that seals pre-shared keys in etcd (never shown by `Debug`).
    pub fleet_key: Zeroizing<[u8; 32]>,
    /// Refuse new handshakes once the registry has not been in sync for this long.
    pub stale_after: Option<Duration>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("etcd", &self.etcd)
            .field("fleet", &self.fleet)
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user)
            .field("stale_after", &self.stale_after)
            .finish_non_exhaustive()
    }
}

impl PartialEq for RegistryConfig {
    fn eq(&self, o: &Self) -> bool {
        self.etcd == o.etcd
            && self.fleet == o.fleet
            && self.name == o.name
            && self.endpoint == o.endpoint
            && self.ca_file == o.ca_file
            && self.cert_file == o.cert_file
            && self.key_file == o.key_file
            && self.user == o.user
            && self.password.as_deref() == o.password.as_deref()
            && *self.fleet_key == *o.fleet_key
            && self.stale_after == o.stale_after
    }
}

/// The host's name, for `name`'s default.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "headend".to_string())
}

/// Whether `s` can be one segment of an etcd key: letters, digits, `-`, `_`, `.`.
fn is_key_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_FLEET_NAME
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A file that must exist and be readable (read again by the registry thread).
fn readable(base_dir: &Path, p: &str, field: &str, problems: &mut Problems) -> PathBuf {
    let path = resolve(base_dir, p);
    if let Err(e) = std::fs::File::open(&path) {
        problems.push(
            field,
            format!("cannot read {}: {e}; fix the path", path.display()),
        );
    }
    path
}

/// Validates the `[registry]` table.
pub(super) fn validate(
    raw: RawRegistry,
    base_dir: &Path,
    listen_port: u16,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<RegistryConfig> {
    let before = problems.len();
    let etcd = raw.etcd.unwrap_or_default();
    if etcd.is_empty() {
        problems.push(
            "registry.etcd",
            "missing or empty; list the etcd members' client URLs, e.g. \
             [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]",
        );
    }
    let mut https = 0;
    for (i, url) in etcd.iter().enumerate() {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains('/') => {
                https += usize::from(url.starts_with("https://"))
            }
            _ => problems.push(
                format!("registry.etcd[{i}]"),
                format!(
                    "{url:?} is not an etcd client URL; write e.g. \"http://10.0.0.1:2379\" \
                     (or https:// with ca_file)"
                ),
            ),
        }
    }
    if https != 0 && https != etcd.len() {
        problems.push(
            "registry.etcd",
            "mixes http:// and https:// members; use https:// for all with TLS, http:// for none",
        );
    }
    let fleet = raw.fleet.unwrap_or_default();
    if !is_key_segment(&fleet) {
        problems.push(
            "registry.fleet",
            format!(
                "{fleet:?} is not a fleet name; use 1 to {MAX_FLEET_NAME} letters, digits, \
                 '-', '_' or '.', the same on every headend of the fleet, e.g. \"vpn-eu\""
            ),
        );
    }
    let name = raw.name.unwrap_or_else(host_name);
    if !is_key_segment(&name) {
        problems.push(
            "registry.name",
            format!(
                "{name:?} is not a headend name; use 1 to {MAX_FLEET_NAME} letters, digits, '-', \
                 '_' or '.', different on each headend"
            ),
        );
    }
    let endpoint = raw
        .endpoint
        .unwrap_or_else(|| format!("{name}:{listen_port}"));
    let ca_file = raw
        .ca_file
        .as_deref()
        .map(|p| readable(base_dir, p, "registry.ca_file", problems));
    if https > 0 && ca_file.is_none() {
        problems.push(
            "registry.ca_file",
            "missing: the https:// members need the CA that signed their certificates; add \
             `ca_file = \"/etc/concentrator/etcd-ca.pem\"`",
        );
    }
    if https == 0 && ca_file.is_some() {
        problems.push(
            "registry.ca_file",
            "is set but the etcd URLs are http://; write them as https:// to use TLS",
        );
    }
    let cert_file = raw
        .cert_file
        .as_deref()
        .map(|p| readable(base_dir, p, "registry.cert_file", problems));
    let key_file = raw
        .key_file
        .as_deref()
        .map(|p| readable(base_dir, p, "registry.key_file", problems));
    if cert_file.is_some() != key_file.is_some() {
        problems.push(
            "registry.cert_file",
            "cert_file and key_file go together (a client certificate and its key); set both \
             or neither",
        );
    }
    if cert_file.is_some() && https == 0 {
        problems.push(
            "registry.cert_file",
            "a client certificate needs TLS; write the etcd URLs as https:// and set ca_file",
        );
    }
    let password = raw.password_file.as_deref().and_then(|p| {
        read_key_file(
            &resolve(base_dir, p),
            "registry.password_file",
            "etcd password",
            |text| {
                let pw = text.trim_end_matches(['\n', '\r']);
                if pw.is_empty() {
                    Err("the file is empty; write the etcd user's password in it")
                } else {
                    Ok(Zeroizing::new(pw.to_string()))
                }
            },
            problems,
            warnings,
        )
    });
    if raw.user.is_some() != raw.password_file.is_some() {
        problems.push(
            "registry.user",
            "user and password_file go together (etcd authentication); set both or neither",
        );
    }
    let fleet_key = match raw.fleet_key_file.as_deref() {
        None => {
            problems.push(
                "registry.fleet_key_file",
                "missing; every headend of the fleet needs the same 32-byte key (base64) that \
                 seals pre-shared keys in etcd: create it once with `concentrator genkey > \
                 fleet.key`, copy it to each headend, and add `fleet_key_file = \"fleet.key\"`",
            );
            None
        }
        Some(p) => read_key_file(
            &resolve(base_dir, p),
            "registry.fleet_key_file",
            "32-byte fleet key (`concentrator genkey`)",
            PresharedKey::from_base64,
            problems,
            warnings,
        )
        .map(|k| Zeroizing::new(*k.as_bytes())),
    };
    let stale_after = match raw.stale_after {
        None | Some(0) => None,
        Some(s) if (1..=MAX_STALE_AFTER_SECS).contains(&s) => Some(Duration::from_secs(s as u64)),
        Some(s) => {
            problems.push(
                "registry.stale_after",
                format!(
                    "{s} is out of range; seconds in 1..={MAX_STALE_AFTER_SECS}, or leave it out \
                     (0) to keep serving a registry of any age"
                ),
            );
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(RegistryConfig {
        etcd,
        fleet,
        name,
        endpoint,
        ca_file,
        cert_file,
        key_file,
        user: raw.user,
        password,
        fleet_key: fleet_key?,
        stale_after,
    })
}
