//! Dropping root after set-up (`user = "..."` in the config) while keeping CAP_NET_ADMIN, which
//! the server needs on exit to remove its NAT rules and restore forwarding (through `nft` and
//! `/proc/sys`), and to run `ip`.
//!
//! Call [`drop_to`] before any thread is spawned: capabilities are per thread, and threads
//! started afterwards inherit the calling thread's.

use std::ffi::CString;

use std::io::Error;

/// CAP_NET_ADMIN's number (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The uid and primary gid of `user`.
pub fn lookup(user: &str) -> std::io::Result<(u32, u32)> {
    let name = CString::new(user).map_err(|_| Error::other(format!("bad user name {user:?}")))?;
    // SAFETY: passwd is a plain C struct; all-zero is a valid (empty) value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pw` and `buf`, both valid for the sizes passed, and sets
    // `result` to null or to `&pw`; nothing is kept after the call.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(Error::other(format!(
            "user {user:?} does not exist; create it (`useradd --system --no-create-home {user}`) \
             or remove `user` from the config"
        )));
    }
    Ok((pw.pw_uid, pw.pw_gid))
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn check(rc: libc::c_int, what: &str) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = Error::last_os_error();
        Err(Error::new(e.kind(), format!("{what} failed: {e}")))
    }
}

/// Becomes `uid:gid` (no supplementary groups) keeping CAP_NET_ADMIN effective, permitted,
/// inheritable and ambient (so `ip` and `nft` started later have it too); every other
/// capability is gone.
pub fn drop_to(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: plain system calls on the calling thread with valid arguments; `hdr`/`data` are
    // live locals of the layout capset(2) expects (version 3: two data structs).
    unsafe {
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
            "prctl(PR_SET_KEEPCAPS)",
        )?;
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(gid, gid, gid), "setresgid")?;
        check(libc::setresuid(uid, uid, uid), "setresuid")?;
        let mut hdr = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let bit = 1u32 << CAP_NET_ADMIN;
        let mut data = [
            CapData {
                effective: bit,
                permitted: bit,
                inheritable: bit,
            },
            CapData::default(),
        ];
        check(
            libc::syscall(libc::SYS_capset, &mut hdr, data.as_mut_ptr()) as libc::c_int,
            "capset",
        )?;
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                CAP_NET_ADMIN as libc::c_ulong,
                0,
                0,
            ),
            "prctl(PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN)",
        )?;
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
            "prctl(PR_SET_KEEPCAPS, 0)",
        )?;
    }
    Ok(())
}
