//! The benchmark topology in network namespaces, and child processes that are always stopped.
//!
//! ```text
//!   client ns                 server ns                          backend ns
//!   10.0.0.2/24 ── veth ── 10.0.0.1/24  [tunnel end]  10.1.0.1/24 ── veth ── 10.1.0.2/24
//!   fd00::2/64              fd00::1/64                  fd01::1/64              fd01::2/64
//! ```
//!
//! The IPv6 addresses serve the IPv6-in-tunnel figure (and plain IPv6 routing as its
//! ceiling); the tunnels themselves run over IPv4.
//!
//! Every name carries the harness's PID; everything is removed on drop (also on panic), and
//! every process started here is stopped by its PID.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const CLIENT_UNDERLAY: &str = "10.0.0.2";
pub const SERVER_UNDERLAY: &str = "10.0.0.1";
pub const SERVER_BACKEND: &str = "10.1.0.1";
pub const BACKEND: &str = "10.1.0.2";
pub const BACKEND_NET: &str = "10.1.0.0/24";
pub const CLIENT_UNDERLAY6: &str = "fd00::2";
pub const SERVER_UNDERLAY6: &str = "fd00::1";
pub const SERVER_BACKEND6: &str = "fd01::1";
pub const BACKEND6: &str = "fd01::2";
pub const BACKEND_NET6: &str = "fd01::/64";

/// Set by SIGINT/SIGTERM: every wait gives up, and the lab is torn down.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn install_signal_handlers() {
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// A background process; SIGTERM then SIGKILL on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, argv: &[&str], env: &[(&str, &str)], dir: &Path) -> Result<Proc> {
        let stdout_path = dir.join(format!("{name}.out"));
        let stderr_path = dir.join(format!("{name}.err"));
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {argv:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            stdout_path,
            stderr_path,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the process to end by itself, at most `timeout`; kills it after that.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= end || INTERRUPTED.load(Ordering::SeqCst) {
                self.stop_with(libc::SIGTERM);
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig`, waits up to 10 s, then SIGKILL.
    pub fn stop_with(&mut self, sig: libc::c_int) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Waits until `needle` appears in stderr (or stdout); false after `timeout` or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end && !INTERRUPTED.load(Ordering::SeqCst) {
            if self.stderr().contains(needle) || self.stdout().contains(needle) {
                return true;
            }
            if !self.running() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop_with(libc::SIGTERM);
    }
}

/// Runs `argv` to completion with a deadline (killed after it).
pub fn run(argv: &[&str], timeout: Duration) -> Result<Output> {
    let dir = std::env::temp_dir();
    let name = format!("ctrb-run-{}-{}", std::process::id(), next_id());
    let mut p = Proc::spawn(&name, argv, &[], &dir)?;
    let status = p.wait(timeout);
    let out = Output {
        status,
        stdout: p.stdout(),
        stderr: p.stderr(),
    };
    let _ = std::fs::remove_file(&p.stdout_path);
    let _ = std::fs::remove_file(&p.stderr_path);
    Ok(out)
}

/// Like [`run`], failing unless the command succeeds; returns stdout.
pub fn run_ok(argv: &[&str], timeout: Duration) -> Result<String> {
    let out = run(argv, timeout)?;
    if !out.ok() {
        bail!(
            "{argv:?} failed ({:?}): {}{}",
            out.status,
            out.stdout.trim(),
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

fn next_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

const SHORT: Duration = Duration::from_secs(10);

/// The namespaces and links.
pub struct Lab {
    pub pid: u32,
    pub dir: PathBuf,
    pub client: String,
    pub server: String,
    pub backend: String,
    namespaces: Vec<String>,
}

impl Lab {
    pub fn new(dir: &Path) -> Result<Lab> {
        let pid = std::process::id();
        let ns = |r: &str| format!("ctrb-{pid}-{r}");
        let mut lab = Lab {
            pid,
            dir: dir.to_path_buf(),
            client: ns("cl"),
            server: ns("srv"),
            backend: ns("bk"),
            namespaces: Vec::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    /// A short unique name for a link or TUN (at most 15 bytes).
    pub fn link_name(&self, role: &str) -> String {
        let n = format!("b{:x}{role}", self.pid);
        assert!(n.len() <= 15, "link name {n} too long");
        n
    }

    fn build(&mut self) -> Result<()> {
        for n in [&self.client, &self.server, &self.backend] {
            run_ok(&["ip", "netns", "add", n], SHORT)?;
            self.namespaces.push(n.clone());
            self.ip(n, &["link", "set", "lo", "up"])?;
        }
        let (cl, sv, bk) = (
            self.client.clone(),
            self.server.clone(),
            self.backend.clone(),
        );
        let (c, cs) = (self.link_name("c"), self.link_name("cs"));
        let (b, bs) = (self.link_name("b"), self.link_name("bs"));
        run_ok(
            &[
                "ip", "link", "add", &c, "netns", &cl, "type", "veth", "peer", "name", &cs,
                "netns", &sv,
            ],
            SHORT,
        )?;
        run_ok(
            &[
                "ip", "link", "add", &b, "netns", &bk, "type", "veth", "peer", "name", &bs,
                "netns", &sv,
            ],
            SHORT,
        )?;
        self.ip(
            &cl,
            &["addr", "add", &format!("{CLIENT_UNDERLAY}/24"), "dev", &c],
        )?;
        self.ip(&cl, &["link", "set", &c, "up"])?;
        self.ip(
            &sv,
            &["addr", "add", &format!("{SERVER_UNDERLAY}/24"), "dev", &cs],
        )?;
        self.ip(&sv, &["link", "set", &cs, "up"])?;
        self.ip(
            &sv,
            &["addr", "add", &format!("{SERVER_BACKEND}/24"), "dev", &bs],
        )?;
        self.ip(&sv, &["link", "set", &bs, "up"])?;
        self.ip(&bk, &["addr", "add", &format!("{BACKEND}/24"), "dev", &b])?;
        self.ip(&bk, &["link", "set", &b, "up"])?;
        self.ip(&bk, &["route", "add", "default", "via", SERVER_BACKEND])?;
        self.exec_ok(&sv, &["sysctl", "-qw", "net.ipv4.ip_forward=1"], SHORT)?;
        // `nodad`: usable at once, not after a second or two of duplicate address detection.
        for (ns, addr, dev) in [
            (&cl, CLIENT_UNDERLAY6, &c),
            (&sv, SERVER_UNDERLAY6, &cs),
            (&sv, SERVER_BACKEND6, &bs),
            (&bk, BACKEND6, &b),
        ] {
            self.ip(
                ns,
                &["addr", "add", &format!("{addr}/64"), "dev", dev, "nodad"],
            )?;
        }
        self.ip(
            &bk,
            &["-6", "route", "add", "default", "via", SERVER_BACKEND6],
        )?;
        self.exec_ok(
            &sv,
            &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
            SHORT,
        )?;
        Ok(())
    }

    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend_from_slice(args);
        run_ok(&argv, SHORT)
    }

    /// `nsenter` execs the program in place (`ip netns exec` forks and does not pass signals
    /// on), so the PID we hold is the program's and SIGINT reaches it.
    fn in_ns(ns: &str, argv: &[&str]) -> Vec<String> {
        let mut full = vec![
            "nsenter".to_string(),
            format!("--net=/run/netns/{ns}"),
            "--".to_string(),
        ];
        full.extend(argv.iter().map(|s| s.to_string()));
        full
    }

    pub fn exec(&self, ns: &str, argv: &[&str], timeout: Duration) -> Result<Output> {
        let full = Self::in_ns(ns, argv);
        run(
            &full.iter().map(String::as_str).collect::<Vec<_>>(),
            timeout,
        )
    }

    pub fn exec_ok(&self, ns: &str, argv: &[&str], timeout: Duration) -> Result<String> {
        let full = Self::in_ns(ns, argv);
        run_ok(
            &full.iter().map(String::as_str).collect::<Vec<_>>(),
            timeout,
        )
    }

    /// Starts `argv` in `ns` in the background; the caller owns (and so stops) it.
    pub fn spawn(&self, ns: &str, name: &str, argv: &[&str], env: &[(&str, &str)]) -> Result<Proc> {
        let full = Self::in_ns(ns, argv);
        Proc::spawn(
            name,
            &full.iter().map(String::as_str).collect::<Vec<_>>(),
            env,
            &self.dir,
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in self.namespaces.drain(..).rev() {
            if let Err(e) = run_ok(&["ip", "netns", "del", &n], SHORT) {
                eprintln!("warning: could not delete namespace {n}: {e}");
            }
        }
    }
}
