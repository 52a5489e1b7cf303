//! Test helpers: throwaway network namespaces, removed on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// True when running as root; otherwise prints why the test is skipped.
pub fn is_root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED {test}: needs root (network namespaces, TUN, nftables)");
    }
    root
}

/// A named network namespace `ctr-sys-<pid>-<n>`, deleted on drop (also when a test panics).
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh, unique namespace with `lo` up.
    pub fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ctr-sys-{}-{n}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(st.success(), "ip netns add {name} failed");
        let ns = Netns { name };
        ns.run(|| {
            let st = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("run ip link set lo up");
            assert!(st.success());
        });
        ns
    }

    /// Runs `f` on a helper thread that has joined this namespace; panics propagate.
    pub fn run<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                let file = File::open(&path).expect("open netns file");
                // SAFETY: `file` is an open namespace fd for the duration of the call;
                // setns only changes this helper thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            });
            match handle.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
