//! What the systemd unit (`debian/concentrator@.service`) relies on: `Type=notify` needs the
//! server to send READY=1 on $NOTIFY_SOCKET once it is up and STOPPING=1 when it stops,
//! `ExecReload` sends SIGHUP, which re-reads the file, and `User=` with only CAP_NET_ADMIN
//! (bounding and ambient) must be enough to set up and take down everything. Root only: the
//! server runs in a throwaway network namespace.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{cmd, keypair, root_or_skip, tools_or_skip, TempNs, BIN};

const DEADLINE: Duration = Duration::from_secs(15);

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The next notification, or `None` after `timeout`.
fn next_notification(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Polls `f` until it is true or the deadline passes.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ready_on_notify_socket_reload_on_sighup_stopping_on_sigterm() {
    let name = "ready_on_notify_socket_reload_on_sighup_stopping_on_sigterm";
    if !root_or_skip(name) {
        return;
    }
    let id = std::process::id();
    let ns = TempNs::add(format!("ctrn-{id}"));
    cmd::run_ok(
        &["ip", "-n", &ns.0, "link", "set", "lo", "up"],
        None,
        Duration::from_secs(10),
    );
    let dir = Scratch(std::env::temp_dir().join(format!("ctr-service-{id}")));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let (key, _) = keypair();
    let (_, peer1) = keypair();
    let (_, peer2) = keypair();
    std::fs::write(dir.0.join("k.key"), key).unwrap();
    let config = dir.0.join("server.toml");
    let write_config = |peers: &[&str]| {
        let mut text = format!(
            "private_key_file = \"k.key\"\nlisten_port = 51998\nlisten_addresses = [\"127.0.0.1\"]\n\
             address = \"10.66.0.1/16\"\ntun_name = \"ctrn0\"\ncontrol_socket = \"{}\"\n",
            dir.0.join("control.sock").display()
        );
        for p in peers {
            text += &format!("\n[[peer]]\npublic_key = \"{p}\"\n");
        }
        std::fs::write(&config, text).unwrap();
    };
    write_config(&[&peer1]);
    let notify_path = dir.0.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();

    let mut server = cmd::Proc::spawn(
        "server",
        &[
            "ip",
            "netns",
            "exec",
            &ns.0,
            BIN,
            "--config",
            config.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
        &dir.0,
    );
    let ready = next_notification(&notify, DEADLINE);
    assert_eq!(
        ready.as_deref(),
        Some("READY=1"),
        "no READY=1; server log:\n{}",
        server.stderr()
    );
    // Ready means up: the start line is already written.
    assert!(
        server.stderr().contains("concentrator is up"),
        "{}",
        server.stderr()
    );

    // ExecReload: SIGHUP re-reads the file (one peer more).
    write_config(&[&peer1, &peer2]);
    server.signal(libc::SIGHUP);
    eventually("the reload to be logged", || {
        server
            .stderr()
            .contains("SIGHUP: reloading the configuration")
            && server.stderr().contains(&peer2[..8])
    });
    assert!(
        server.exited().is_none(),
        "server died on SIGHUP:\n{}",
        server.stderr()
    );

    let status = server.stop(DEADLINE);
    assert!(
        status.is_some_and(|s| s.success()),
        "server did not stop cleanly ({status:?}):\n{}",
        server.stderr()
    );
    assert_eq!(
        next_notification(&notify, Duration::from_secs(2)).as_deref(),
        Some("STOPPING=1")
    );
}

/// The uid the unit's `User=` stands for in this test: nobody.
const UNPRIVILEGED: u32 = 65534;

#[test]
fn an_unprivileged_user_with_only_cap_net_admin_sets_up_and_cleans_up() {
    let name = "an_unprivileged_user_with_only_cap_net_admin_sets_up_and_cleans_up";
    if !root_or_skip(name) || !tools_or_skip(name, &["setpriv", "unshare", "mknod", "nft"]) {
        return;
    }
    let id = std::process::id();
    let ns = TempNs::add(format!("ctru-{id}"));
    let run_ns = |args: &[&str]| {
        let mut argv = vec!["ip", "netns", "exec", &ns.0];
        argv.extend_from_slice(args);
        cmd::run(&argv, None, Duration::from_secs(10)).stdout
    };
    run_ns(&["ip", "link", "set", "lo", "up"]);
    let dir = Scratch(std::env::temp_dir().join(format!("ctr-service-user-{id}")));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let (key, _) = keypair();
    let (_, peer) = keypair();
    std::fs::write(dir.0.join("k.key"), key).unwrap();
    let socket = dir.0.join("control.sock");
    let config = dir.0.join("server.toml");
    // `user` names the user it already runs as: nothing to drop (as under the unit).
    std::fs::write(
        &config,
        format!(
            "private_key_file = \"k.key\"\nlisten_port = 51996\nlisten_addresses = [\"127.0.0.1\"]\n\
             address = \"10.66.0.1/16\"\ntun_name = \"ctru0\"\ncontrol_socket = \"{}\"\n\
             nat = \"lo\"\nuser = \"nobody\"\n\n[[peer]]\npublic_key = \"{peer}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    // As the package does for /etc/concentrator: the user owns its files, 0700/0600.
    use std::os::unix::fs::PermissionsExt as _;
    for (path, mode) in [
        (&dir.0, 0o700),
        (&dir.0.join("k.key"), 0o600),
        (&config, 0o600),
    ] {
        std::os::unix::fs::chown(path, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // /dev/net/tun is 0666 where udev runs (Debian's default rule); this machine's may not be:
    // a 0666 node of our own is bind-mounted over it in a private mount namespace.
    let tun_node = std::env::temp_dir().join(format!("ctr-service-tun-{id}"));
    let _ = std::fs::remove_file(&tun_node);
    cmd::run_ok(
        &[
            "mknod",
            "-m",
            "666",
            tun_node.to_str().unwrap(),
            "c",
            "10",
            "200",
        ],
        None,
        Duration::from_secs(10),
    );
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _tun_node = RemoveOnDrop(tun_node.clone());

    let script = format!(
        "mount --bind '{}' /dev/net/tun && exec setpriv --reuid={UNPRIVILEGED} \
         --regid={UNPRIVILEGED} --clear-groups --bounding-set=-all,+net_admin \
         --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin '{BIN}' --config '{}'",
        tun_node.display(),
        config.display()
    );
    let mut server = cmd::Proc::spawn(
        "server",
        &[
            "ip", "netns", "exec", &ns.0, "unshare", "-m", "sh", "-c", &script,
        ],
        &[],
        &dir.0,
    );
    eventually("the server to come up", || {
        assert!(
            server.exited().is_none(),
            "server exited:\n{}",
            server.stderr()
        );
        server.stderr().contains("concentrator is up")
    });
    let log = server.stderr();
    assert!(
        log.contains("already running as the configured user"),
        "{log}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == UNPRIVILEGED.to_string()),
        "not running as {UNPRIVILEGED}: {uid_line}"
    );
    let table = format!("concentrator_{}", server.pid());
    assert!(run_ns(&["ip", "-br", "addr", "show", "dev", "ctru0"]).contains("10.66.0.1/16"));
    assert!(
        run_ns(&["nft", "list", "tables"]).contains(&table),
        "no NAT table"
    );
    assert_eq!(
        run_ns(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    assert!(socket.exists(), "no control socket");

    let status = server.stop(DEADLINE);
    assert!(
        status.is_some_and(|s| s.success()),
        "server did not stop cleanly ({status:?}):\n{}",
        server.stderr()
    );
    assert!(
        !run_ns(&["nft", "list", "tables"]).contains(&table),
        "NAT table left"
    );
    assert_eq!(
        run_ns(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "0"
    );
    assert!(!socket.exists(), "control socket left");
}
