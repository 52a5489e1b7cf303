//! Running commands with a deadline, and long-running child processes that are stopped by PID
//! on drop (SIGTERM, then SIGKILL after a deadline).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished (or timed-out) command left behind.
#[derive(Debug)]
pub struct Output {
    /// `None` when the command was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// True when the command exited by itself with status 0.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// True when the command was killed at its deadline.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
}

/// Runs `argv` with optional stdin, killing it (SIGKILL) when `timeout` passes.
pub fn run(argv: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Output {
    run_env(argv, &[], stdin, timeout)
}

/// [`run`] with environment changes: `(name, Some(value))` sets, `(name, None)` removes.
pub fn run_env(
    argv: &[&str],
    env: &[(&str, Option<&str>)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Output {
    let mut cmd = Command::new(argv[0]);
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    cmd.args(&argv[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout pipe")));
    let err = reader(Box::new(child.stderr.take().expect("stderr pipe")));
    let status = wait_deadline(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Like [`run`] but panics with the command's output unless it exits with status 0.
pub fn run_ok(argv: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> String {
    let out = run(argv, stdin, timeout);
    assert!(
        out.ok(),
        "{argv:?} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// `ip netns exec NS argv...`: the argv that runs `argv` inside network namespace `ns`.
pub fn in_netns<'a>(ns: &'a str, argv: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    full
}

/// Polls `child` until it exits or `timeout` passes; `None` on timeout.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
}

/// A background process whose stdout and stderr go to files. Dropping it stops it.
pub struct Proc {
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Proc {
    /// Starts `argv` with `env` added; output goes to `dir/<name>.out` and `dir/<name>.err`.
    pub fn spawn(name: &str, argv: &[&str], env: &[(&str, &str)], dir: &Path) -> Proc {
        let stdout_path = dir.join(format!("{name}.out"));
        let stderr_path = dir.join(format!("{name}.err"));
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout file"))
            .stderr(File::create(&stderr_path).expect("create stderr file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} {argv:?}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            status: None,
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `sig` unless the process was already reaped (so the PID cannot have been reused).
    pub fn signal(&mut self, sig: i32) {
        if self.exited().is_none() {
            // SAFETY: kill(2) on the PID of our own child, which is not yet reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_deadline(&mut self.child, timeout);
        }
        self.status
    }

    /// SIGTERM, then SIGKILL if still running after `grace`. Returns the exit status of the
    /// SIGTERM path, or `None` if it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait(grace) {
            return Some(s);
        }
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(5));
        None
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(5));
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.stop(Duration::from_secs(3));
        }
    }
}
