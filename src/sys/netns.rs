//! Network namespaces: moving the calling thread into a named one (`ip netns add NAME`), so that
//! what it creates afterwards (TUN devices, sockets, threads, `ip` and `nft` processes) lives
//! there. Lets a program run a server inside a namespace without `ip netns exec` around the
//! whole process, e.g. a test that starts the library's engine in its own lab.

use std::os::fd::AsRawFd;

use super::error::SysError;

/// Where `ip netns` keeps the namespaces it names.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Moves the calling thread (only it; threads it starts later inherit it) into the network
/// namespace `name`.
pub fn enter(name: &str) -> Result<(), SysError> {
    if name.is_empty() || name.contains('/') {
        return Err(SysError::InvalidArgument(format!(
            "{name:?} is not a network namespace name"
        )));
    }
    let path = format!("{NETNS_RUN_DIR}/{name}");
    let file = std::fs::File::open(&path).map_err(|e| {
        SysError::io(
            format!("opening {path} (does `ip netns add {name}` exist?)"),
            e,
        )
    })?;
    // SAFETY: `file` is an open descriptor of a namespace file for the duration of the call;
    // setns only changes the calling thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(SysError::last_os_error(format!(
            "entering the network namespace {name}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_paths_are_refused() {
        assert!(matches!(enter(""), Err(SysError::InvalidArgument(_))));
        assert!(matches!(enter("../x"), Err(SysError::InvalidArgument(_))));
    }

    #[test]
    fn a_missing_namespace_is_an_error_that_names_it() {
        let name = format!("ctr-missing-{}", std::process::id());
        let e = enter(&name).unwrap_err().to_string();
        assert!(e.contains(&name), "{e}");
    }
}
