//! The logs: plain text without colour when stderr is not a terminal (a file or a pipe), JSON
//! lines with CONCENTRATOR_LOG_FORMAT=json, and an unknown format refused. Each run makes the
//! server log a warning (a key file readable by others) and then stop at once on `--workers 0`,
//! before it touches anything: no root needed.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{cmd, keypair, BIN};

const DEADLINE: Duration = Duration::from_secs(20);

/// A server config whose key file is mode 0644 (a warning), in a directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("ctr-logging-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (key, _) = keypair();
        let key_path = dir.join("server.key");
        std::fs::write(&key_path, key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(
            dir.join("server.toml"),
            "private_key_file = \"server.key\"\naddress = \"10.77.0.1/16\"\n",
        )
        .unwrap();
        Scratch(dir)
    }

    fn config(&self) -> String {
        self.0.join("server.toml").to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn redirected_text_log_has_no_escape_codes() {
    let s = Scratch::new("text");
    // To a pipe, without NO_COLOR.
    let out = cmd::run_env(
        &[BIN, "--config", &s.config(), "--workers", "0"],
        &[("NO_COLOR", None), ("CONCENTRATOR_LOG_FORMAT", None)],
        None,
        DEADLINE,
    );
    assert!(!out.ok(), "--workers 0 must fail");
    assert!(
        out.stderr.contains("WARN"),
        "no warning logged:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("accessible by group or others"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\u{1b}'),
        "ESC in a piped log: {:?}",
        out.stderr
    );

    // To a file, as `2>server.log` does.
    let log_path = s.0.join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let status = std::process::Command::new(BIN)
        .args(["--config", &s.config(), "--workers", "0"])
        .env_remove("NO_COLOR")
        .env_remove("CONCENTRATOR_LOG_FORMAT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .status()
        .unwrap();
    assert!(!status.success());
    let bytes = std::fs::read(&log_path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("WARN"), "{text}");
    assert!(!bytes.contains(&0x1b), "ESC in a log file: {text:?}");
}

#[test]
fn json_format_gives_one_json_object_per_line() {
    let s = Scratch::new("json");
    let out = cmd::run_env(
        &[BIN, "--config", &s.config(), "--workers", "0"],
        &[("CONCENTRATOR_LOG_FORMAT", Some("json"))],
        None,
        DEADLINE,
    );
    assert!(!out.ok(), "--workers 0 must fail");
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let levels: Vec<&str> = lines
        .iter()
        .map(|v| v["level"].as_str().expect("a level"))
        .collect();
    assert_eq!(levels, ["WARN", "ERROR"], "{}", out.stderr);
    let warning = lines[0]["fields"]["message"].as_str().unwrap();
    assert!(
        warning.contains("accessible by group or others"),
        "{warning}"
    );
    // The reason for exiting is a JSON line too.
    let error = lines[1]["fields"]["message"].as_str().unwrap();
    assert!(
        error.contains("--workers must be between 1 and 1024"),
        "{error}"
    );
    assert!(lines.iter().all(|v| v["timestamp"].is_string()));
}

#[test]
fn unknown_log_format_is_refused() {
    let out = cmd::run_env(
        &[BIN, "genkey"],
        &[("CONCENTRATOR_LOG_FORMAT", Some("yaml"))],
        None,
        DEADLINE,
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("CONCENTRATOR_LOG_FORMAT=\"yaml\" is not a log format"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.is_empty(),
        "printed a key anyway: {}",
        out.stdout
    );
}
