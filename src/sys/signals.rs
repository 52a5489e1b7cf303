//! Signals as values: SIGINT, SIGTERM and SIGHUP are blocked in every thread (the mask is
//! inherited by threads spawned afterwards) and the main thread collects them synchronously.

use std::time::Duration;

/// A signal the process acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM: stop cleanly.
    Stop,
    /// SIGHUP: reload the configuration.
    Reload,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write into the set we pass, which is a valid local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks the handled signals in the calling thread. Call before spawning any thread.
pub fn block() {
    let set = handled_set();
    // SAFETY: pthread_sigmask reads a valid set and may write the old mask to null (ignored).
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits up to `timeout` for a handled signal.
pub fn wait(timeout: Duration) -> Option<Signal> {
    let set = handled_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sigtimedwait reads the set and timeout we own; the siginfo pointer may be null.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    match sig {
        libc::SIGINT | libc::SIGTERM => Some(Signal::Stop),
        libc::SIGHUP => Some(Signal::Reload),
        _ => None,
    }
}
