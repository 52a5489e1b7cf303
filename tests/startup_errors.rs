//! Start-up failures an operator meets: no privilege, no /dev/net/tun, the port taken. Each must
//! end with a clear message and a non-zero exit, never a panic. Root only (the server is run in a
//! throwaway network namespace, so nothing on the host is touched).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{cmd, keypair, TempNs, BIN};

/// A network namespace and a config directory, removed on drop.
struct Scratch {
    ns: String,
    dir: PathBuf,
    /// Deletes the namespace after `drop` removed the directory.
    _ns: TempNs,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(tag: &str) -> Scratch {
    let ns = format!("ctrx-{}-{tag}", std::process::id());
    let dir = std::env::temp_dir().join(format!("ctr-startup-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let guard = TempNs::add(ns.clone());
    cmd::run_ok(
        &["ip", "-n", &ns, "link", "set", "lo", "up"],
        None,
        Duration::from_secs(10),
    );
    let (key, _) = keypair();
    let (_, peer) = keypair();
    std::fs::write(dir.join("k.key"), key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    // Readable by the unprivileged user of the privilege test (a warning, not an error).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("k.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = format!(
        "private_key_file = \"k.key\"\nlisten_port = 51999\nlisten_addresses = [\"127.0.0.1\"]\n\
         address = \"10.66.0.1/16\"\ntun_name = \"ctrx0\"\ncontrol_socket = \"{}\"\n\n\
         [[peer]]\npublic_key = \"{}\"\n",
        dir.join("control.sock").display(),
        peer
    );
    std::fs::write(dir.join("server.toml"), config).unwrap();
    Scratch {
        ns,
        dir,
        _ns: guard,
    }
}

fn config(dir: &Path) -> String {
    dir.join("server.toml").to_str().unwrap().to_string()
}

/// Runs `argv` and checks it failed cleanly with a message containing `expect`.
fn assert_clean_failure(argv: &[&str], expect: &str) {
    let out = cmd::run(argv, None, Duration::from_secs(20));
    assert!(!out.timed_out(), "{argv:?} did not exit:\n{}", out.stderr);
    assert!(
        !out.ok(),
        "{argv:?} succeeded, expected a failure:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "{argv:?} panicked:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(expect),
        "{argv:?}: message lacks {expect:?}:\n{}",
        out.stderr
    );
}

#[test]
fn without_privilege_the_server_says_what_it_needs() {
    if !common::root_or_skip("without_privilege_the_server_says_what_it_needs")
        || !common::tools_or_skip(
            "without_privilege_the_server_says_what_it_needs",
            &["setpriv"],
        )
    {
        return;
    }
    let s = scratch("priv");
    let cfg = config(&s.dir);
    assert_clean_failure(
        &[
            "ip",
            "netns",
            "exec",
            &s.ns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            BIN,
            "--config",
            &cfg,
        ],
        "CAP_NET_ADMIN",
    );
}

#[test]
fn without_dev_net_tun_the_server_says_so() {
    if !common::root_or_skip("without_dev_net_tun_the_server_says_so")
        || !common::tools_or_skip("without_dev_net_tun_the_server_says_so", &["unshare"])
    {
        return;
    }
    let s = scratch("notun");
    let cfg = config(&s.dir);
    // A private mount namespace where /dev/net is an empty tmpfs: the host's stays as it is.
    let script = format!("mount -t tmpfs none /dev/net && exec {BIN} --config {cfg}");
    assert_clean_failure(
        &[
            "ip", "netns", "exec", &s.ns, "unshare", "-m", "sh", "-c", &script,
        ],
        "/dev/net/tun not found",
    );
}

#[test]
fn a_taken_port_is_reported() {
    if !common::root_or_skip("a_taken_port_is_reported") {
        return;
    }
    let s = scratch("port");
    let cfg = config(&s.dir);
    let holder = String::from(
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('127.0.0.1', 51999))\nprint('bound', flush=True)\ntime.sleep(30)\n",
    );
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &s.ns, "python3", "-c", &holder])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "bound");
    assert_clean_failure(
        &["ip", "netns", "exec", &s.ns, BIN, "--config", &cfg],
        "already in use",
    );
    let _ = child.kill();
    let _ = child.wait();
    // The failed start left no TUN behind.
    let links = cmd::run_ok(
        &["ip", "-n", &s.ns, "-o", "link"],
        None,
        Duration::from_secs(5),
    );
    assert!(!links.contains("ctrx0"), "TUN left behind:\n{links}");
}
