//! The TOML configuration of the server (`config/server.toml`) and the client
//! (`config/client.toml`), and its validation.
//!
//! Loading never panics and reports every problem at once: a [`ConfigError`] holds one
//! [`ConfigProblem`] per problem, each naming the field (`peer[3].public_key`, counting
//! `[[peer]]` blocks from 0), what is wrong and what to do. Things that work but look wrong
//! (a key file readable by others, a redundant route) come back as warnings beside the config.
//!
//! The loaded structs hold resolved values: keys decoded (secrets in `Zeroizing`, never shown by
//! `Debug`), defaults applied, key file paths made absolute against the config file's directory,
//! and, on the server, every peer's virtual address assigned.
#![forbid(unsafe_code)]

mod client;
mod pool;
mod push;
mod registry;
mod server;

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

pub use client::ClientConfig;
pub use pool::{AddressPool, AddressPool6};
pub use registry::RegistryConfig;
pub use server::{allowed_ip_problem, PeerSection, ServerConfig};

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field, as written in the file: `listen_port`, `peer[3].public_key`, `routes[1]`.
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A configuration file that cannot be used. `Display` prints every problem, one line each,
/// prefixed with the file's path.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(&self.file, &self.problems))]
pub struct ConfigError {
    /// The file (`<string>` when parsed from a string).
    pub file: PathBuf,
    /// At least one problem.
    pub problems: Vec<ConfigProblem>,
}

fn render(file: &Path, problems: &[ConfigProblem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {p}", file.display()))
        .collect();
    lines.join("\n")
}

impl ConfigError {
    /// Whether some problem names exactly `field`.
    pub fn has_field(&self, field: &str) -> bool {
        self.problems.iter().any(|p| p.field == field)
    }
}

/// Collects problems while validating.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<ConfigProblem>);

impl Problems {
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            field: field.into(),
            message: message.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn into_error(self, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            problems: self.0,
        }
    }
}

/// The label used for the file when parsing from a string.
pub(crate) const STRING_SOURCE: &str = "<string>";

/// Reads a config file; the directory it is in resolves relative paths inside it.
pub(crate) fn read_file(path: &Path) -> Result<(String, PathBuf), ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            Ok((text, dir))
        }
        Err(e) => {
            let mut p = Problems::default();
            p.push(
                "(file)",
                format!(
                    "cannot read the configuration file: {e}; check the path and its permissions"
                ),
            );
            Err(p.into_error(path))
        }
    }
}

/// Parses TOML into a raw struct; a syntax, type or unknown-field error becomes one problem with
/// its line and column.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let mut p = Problems::default();
        let (field, message) = describe_toml_error(text, &e);
        p.push(field, message);
        p.into_error(file)
    })
}

fn describe_toml_error(text: &str, err: &toml::de::Error) -> (String, String) {
    let msg = err.message().trim_end().to_string();
    let Some(span) = err.span() else {
        return ("(syntax)".into(), format!("{msg}; fix the TOML"));
    };
    let start = span.start.min(text.len());
    if !text.is_char_boundary(start) || !text.is_char_boundary(span.end.min(text.len())) {
        return ("(syntax)".into(), format!("{msg}; fix the TOML"));
    }
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = &text[line_start..line_end];

    // The key: before `=` on the error's line, else the spanned text itself.
    let key = match line.find('=') {
        Some(eq) if line_start + eq < start || line_start + eq >= span.end => {
            line[..eq].trim().to_string()
        }
        _ => text
            .get(span.start..span.end.min(text.len()))
            .unwrap_or("")
            .trim()
            .to_string(),
    };
    // The table the line is in: the last header before it.
    let mut table = String::new();
    for l in before[..line_start].lines() {
        let l = l.split('#').next().unwrap_or("").trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    let table = match count_array_tables(&before[..line_start], &table) {
        0 => table,
        n => format!("{table}[{}]", n - 1),
    };
    let field = match (table.is_empty(), key.is_empty()) {
        (true, true) => "(syntax)".to_string(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    let hint = if msg.starts_with("unknown field") {
        "remove it or fix its spelling"
    } else {
        "fix the value or the TOML syntax"
    };
    (
        field,
        format!("{msg} (line {line_no}, column {col}); {hint}"),
    )
}

/// How many `[[name]]` headers appear in `text`.
fn count_array_tables(text: &str, name: &str) -> usize {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| {
            l.strip_prefix("[[")
                .and_then(|r| r.strip_suffix("]]"))
                .is_some_and(|n| n.trim() == name)
        })
        .count()
}

/// A path from the file, made absolute against the config file's directory.
pub(crate) fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// Reads and decodes a key file (`private_key_file`, `preshared_key_file`) with `parse`.
/// Problems go under `field`; a file that group or others may read gives a warning.
pub(crate) fn read_key_file<K, E: fmt::Display>(
    path: &Path,
    field: &str,
    what: &str,
    parse: impl FnOnce(&str) -> Result<K, E>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<K> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) => {
            problems.push(
                field,
                format!(
                    "cannot read {}: {e}; create it holding a base64 {what} or fix the path",
                    path.display()
                ),
            );
            return None;
        }
    };
    check_mode(path, field, warnings);
    match parse(&text) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(field, format!("in {}: {e}", path.display()));
            None
        }
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, field: &str, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "{field}: {} is accessible by group or others (mode {mode:03o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _field: &str, _warnings: &mut Vec<String>) {}

/// Checks a network interface name (Linux: 1..=15 bytes, no `/`, `:` or whitespace). With
/// `template`, one `%d` is allowed for the kernel to number it.
pub(crate) fn check_ifname(name: &str, template: bool, field: &str, problems: &mut Problems) {
    let bad_char = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control());
    let percent_ok = if template {
        name.matches('%').count() <= 1 && name.matches('%').count() == name.matches("%d").count()
    } else {
        !name.contains('%')
    };
    if name.is_empty() || name.len() > 15 || name == "." || name == ".." {
        problems.push(
            field,
            format!(
                "{name:?} is not a valid interface name; use 1 to 15 characters, e.g. \"ctr0\""
            ),
        );
    } else if let Some(c) = bad_char {
        problems.push(
            field,
            format!("{name:?} contains {c:?}, not allowed in an interface name; use letters, digits, '-', '_' or '.'"),
        );
    } else if !percent_ok {
        let allowed = if template {
            "at most one `%d`, which the kernel replaces by a number"
        } else {
            "no `%`"
        };
        problems.push(
            field,
            format!("{name:?} is not a valid interface name; it may contain {allowed}"),
        );
    }
}

/// Checks an optional integer against a range, with a default.
pub(crate) fn int_in_range(
    value: Option<i64>,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
    field: &str,
    hint: &str,
    problems: &mut Problems,
) -> i64 {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        v
    } else {
        problems.push(
            field,
            format!(
                "{v} is out of range; use {}..={} ({hint})",
                range.start(),
                range.end()
            ),
        );
        default
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine as _;

    /// A fresh empty directory under the system temp dir.
    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "concentrator-config-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(crate) fn b64(key: &[u8; 32]) -> String {
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    /// Writes a key file with mode 0600 and returns its path.
    pub(crate) fn key_file(dir: &Path, name: &str, key: &[u8; 32]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("{}\n", b64(key))).unwrap();
        set_mode(&path, 0o600);
        path
    }

    pub(crate) fn set_mode(path: &Path, mode: u32) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let _ = (path, mode);
    }

    /// Rewrites every `*_file = "..."` line of `text` to a fresh key file in `dir`.
    pub(crate) fn rewrite_key_files(text: &str, dir: &Path) -> String {
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            let key = line.split('=').next().unwrap_or("").trim();
            if !line.trim_start().starts_with('#') && key.ends_with("_file") && line.contains('=') {
                let path = key_file(dir, &format!("key{i}"), &[i as u8 + 1; 32]);
                out.push_str(&format!("{key} = {:?}\n", path.display().to_string()));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn example(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name);
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn example_server_config_parses() {
        let dir = temp_dir("example-server");
        let text = rewrite_key_files(&example("server.toml"), &dir);
        let path = dir.join("server.toml");
        std::fs::write(&path, text).unwrap();
        let (cfg, warnings) = ServerConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.listen_port, 51820);
        assert!(!cfg.peers.is_empty());
    }

    #[test]
    fn example_client_config_parses() {
        let dir = temp_dir("example-client");
        let text = rewrite_key_files(&example("client.toml"), &dir);
        let path = dir.join("client.toml");
        std::fs::write(&path, text).unwrap();
        let (cfg, _warnings) = ClientConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.server_endpoint.port(), 51820);
    }

    #[test]
    fn missing_file_is_an_error_not_a_panic() {
        let err = ServerConfig::load(Path::new("/nonexistent/server.toml")).unwrap_err();
        assert!(err.has_field("(file)"));
        assert!(err
            .to_string()
            .starts_with("/nonexistent/server.toml: (file): "));
    }

    #[test]
    fn unknown_field_reports_line_and_peer_index() {
        let text = "address = \"10.0.0.1/24\"\n[[peer]]\npublic_key = \"x\"\n[[peer]]\npublik_key = \"y\"\n";
        let err = ServerConfig::from_toml_str(text, Path::new("/tmp")).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        let p = &err.problems[0];
        assert_eq!(p.field, "peer[1].publik_key", "{p}");
        assert!(p.message.contains("unknown field"), "{p}");
        assert!(p.message.contains("line 5, column 1"), "{p}");
    }

    #[test]
    fn display_prints_every_problem_with_the_file() {
        let dir = testutil::temp_dir("display");
        let path = dir.join("server.toml");
        std::fs::write(
            &path,
            "address = \"10.66.0.1/31\"\nmtu = 9000\n[[peer]]\npublic_key = \"x\"\n",
        )
        .unwrap();
        let err = ServerConfig::load(&path).unwrap_err();
        let shown = err.to_string();
        println!("{shown}");
        let prefix = format!("{}: ", path.display());
        let fields: Vec<&str> = shown
            .lines()
            .map(|l| l.strip_prefix(&prefix).unwrap().split(':').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            ["private_key_file", "address", "mtu", "peer[0].public_key"]
        );
    }

    #[test]
    fn top_level_unknown_field() {
        let text = "adress = \"10.0.0.1/24\"\n";
        let err = ServerConfig::from_toml_str(text, Path::new("/tmp")).unwrap_err();
        assert_eq!(err.problems[0].field, "adress");
        assert!(err.problems[0].message.contains("line 1, column 1"));
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = "address = \"10.0.0.1/24\"\nmtu = \"big\"\n";
        let err = ServerConfig::from_toml_str(text, Path::new("/tmp")).unwrap_err();
        assert_eq!(err.problems[0].field, "mtu", "{err}");
        assert!(err.problems[0].message.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_interface_names() {
        let mut p = Problems::default();
        check_ifname("ctr%d", true, "tun_name", &mut p);
        check_ifname("eth0", false, "nat", &mut p);
        assert!(p.is_empty());
        check_ifname("a-very-long-interface-name", true, "a", &mut p);
        check_ifname("et h0", false, "b", &mut p);
        check_ifname("ctr%d", false, "c", &mut p);
        check_ifname("ctr%d%d", true, "d", &mut p);
        check_ifname("", true, "e", &mut p);
        let fields: Vec<_> = p.0.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(fields, ["a", "b", "c", "d", "e"]);
    }
}
