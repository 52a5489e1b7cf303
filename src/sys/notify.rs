//! systemd's readiness protocol (`sd_notify`) by hand: one datagram to `$NOTIFY_SOCKET`.
//! No libsystemd. Outside systemd (no variable) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Sends `state` (e.g. `"READY=1"`) to the service manager, if there is one. Errors are
/// returned but harmless to ignore: a server must not fail because nobody listens.
pub fn notify(state: &str) -> std::io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(Path::new(&path), state),
        None => Ok(()),
    }
}

/// Sends `state` to the notification socket at `path` (`@name`: abstract namespace).
pub fn notify_to(path: &Path, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_os_str().as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram() {
        let path = std::env::temp_dir().join(format!("ctr-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(&path, "READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn abstract_socket() {
        let name = format!("ctr-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(Path::new(&format!("@{name}")), "READY=1").unwrap();
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
