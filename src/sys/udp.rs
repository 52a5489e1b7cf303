//! UDP sockets for the data plane: `SO_REUSEPORT` groups, GRO/GSO, raw sockaddr helpers.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cmsg::{
    control_bytes, parse_received_cmsgs, write_send_cmsgs, ReceivedControl, SendControl,
    CMSG_SPACE, CMSG_WORDS, UDP_GRO, UDP_SEGMENT,
};
use super::error::SysError;

/// Socket buffer size asked for (best effort).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// Binds a non-blocking, close-on-exec UDP socket to `addr` with `SO_REUSEPORT` and
/// `SO_REUSEADDR`, so several workers can share the port. IPv6 sockets are `IPV6_V6ONLY`,
/// so an IPv4 and an IPv6 socket can use the same port. Send and receive buffers are raised
/// to 4 MiB when the kernel allows. Each receive reports the TOS byte or traffic class the
/// datagram arrived with ([`set_receive_tos`]), for the tunnel's ECN (RFC 6040).
pub fn bind_reuseport(addr: SocketAddr) -> Result<UdpSocket, SysError> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = new_socket(domain)?;
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .map_err(|e| SysError::io("setting SO_REUSEADDR", e))?;
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
        .map_err(|e| SysError::io("setting SO_REUSEPORT", e))?;
    if domain == libc::AF_INET6 {
        setsockopt_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)
            .map_err(|e| SysError::io("setting IPV6_V6ONLY", e))?;
    }
    raise_buffers(&fd);
    set_receive_tos(&fd, domain == libc::AF_INET6)?;
    bind_fd(&fd, &addr)?;
    Ok(UdpSocket::from(fd))
}

/// Creates a `SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC` socket.
fn new_socket(domain: libc::c_int) -> Result<OwnedFd, SysError> {
    let ty = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain system call with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(domain, ty, libc::IPPROTO_UDP) };
    if raw < 0 {
        return Err(SysError::last_os_error("creating UDP socket"));
    }
    // SAFETY: `raw` is a freshly created fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Binds `fd` to `addr`, mapping `EADDRINUSE` to [`SysError::AddrInUse`].
fn bind_fd(fd: &OwnedFd, addr: &SocketAddr) -> Result<(), SysError> {
    let (storage, len) = socket_addr_to_raw(addr);
    let ptr = (&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: `ptr` points to `storage`, which holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), ptr, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::EADDRINUSE) => SysError::AddrInUse { addr: *addr },
        Some(libc::EADDRNOTAVAIL) => SysError::Io {
            what: format!("binding UDP {addr}: the address is not configured on this host"),
            source: err,
        },
        _ => SysError::io(format!("binding UDP {addr}"), err),
    })
}

/// Raises `SO_RCVBUF`/`SO_SNDBUF` to 4 MiB: the `*FORCE` variants when privileged, else
/// the plain ones (capped by `net.core.[rw]mem_max`). Failures are ignored.
pub fn raise_buffers(fd: &impl AsRawFd) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
}

/// Sets `SO_SNDBUF` to `bytes` (`SO_SNDBUFFORCE` when privileged, else the plain option,
/// capped by `net.core.wmem_max`); the kernel doubles it for its bookkeeping (socket(7)).
/// Failures are ignored.
pub fn set_send_buffer(fd: &impl AsRawFd, bytes: libc::c_int) {
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes);
    }
}

/// `setsockopt` with an `int` value.
fn setsockopt_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int and the length says so.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Turns UDP GRO on or off (`UDP_GRO`): with it on, `recvmsg` may return several
/// same-sized datagrams coalesced, with their size in a `UDP_GRO` control message.
pub fn set_udp_gro(fd: BorrowedFd<'_>, on: bool) -> Result<(), SysError> {
    setsockopt_int(&fd, libc::SOL_UDP, UDP_GRO, libc::c_int::from(on))
        .map_err(|e| SysError::io("enabling UDP_GRO (needs Linux 5.0+)", e))
}

/// Makes every receive on `fd` (an IPv6 socket if `ipv6`, else IPv4) report the TOS byte or
/// traffic class its datagram arrived with: `IP_RECVTOS` (ip(7)) or `IPV6_RECVTCLASS`
/// (ipv6(7)), an `IP_TOS` / `IPV6_TCLASS` control message next to UDP_GRO's.
pub fn set_receive_tos(fd: &impl AsRawFd, ipv6: bool) -> Result<(), SysError> {
    let (level, name, what) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, "IPV6_RECVTCLASS")
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVTOS, "IP_RECVTOS")
    };
    setsockopt_int(fd, level, name, 1).map_err(|e| SysError::io(format!("enabling {what}"), e))
}

/// Sets the default GSO segment size (`UDP_SEGMENT`): each send is cut into datagrams of
/// `size` bytes (the last may be shorter). `0` turns it off.
pub fn set_udp_segment(fd: BorrowedFd<'_>, size: u16) -> Result<(), SysError> {
    setsockopt_int(&fd, libc::SOL_UDP, UDP_SEGMENT, libc::c_int::from(size)).map_err(|e| {
        SysError::io(
            format!("setting UDP_SEGMENT to {size} (needs Linux 4.18+)"),
            e,
        )
    })
}

/// A zeroed `sockaddr_storage`.
fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero bytes are a valid value.
    unsafe { mem::zeroed() }
}

/// Converts `addr` to a raw `sockaddr_storage` and its length, for `sendmsg`/`bind`.
pub fn socket_addr_to_raw(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut storage = zeroed_storage();
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            let dst = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { dst.write(sin) };
            (
                storage,
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            let dst = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { dst.write(sin6) };
            (
                storage,
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// Converts a raw `sockaddr_storage` (as filled by `recvmsg`) back to a [`SocketAddr`];
/// `None` for families other than `AF_INET`/`AF_INET6`.
pub fn raw_to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let ptr = storage as *const libc::sockaddr_storage;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is large
            // enough and aligned for it.
            let sin = unsafe { ptr.cast::<libc::sockaddr_in>().read() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6; storage is large
            // enough and aligned for it.
            let sin6 = unsafe { ptr.cast::<libc::sockaddr_in6>().read() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Sends `buf` on a connected socket; with `segment_size`, as one UDP_SEGMENT batch of
/// datagrams of that size (the last may be shorter). One system call either way.
pub fn send_segments(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    segment_size: Option<u16>,
) -> io::Result<usize> {
    let control = SendControl {
        segment_size,
        tos: None,
    };
    send_with_control(fd, buf, control, false)
}

/// Sends `buf` on a connected socket (of IPv6 if `ipv6`, else IPv4) with the control messages
/// of `control` (a UDP_SEGMENT size, a TOS byte or traffic class). One system call.
pub fn send_with_control(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    control: SendControl,
    ipv6: bool,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut space = [0u64; CMSG_WORDS];
    // SAFETY: msghdr is a plain C struct; all-zero is valid (no name, no control).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let used = write_send_cmsgs(&mut space, control, ipv6);
    if used > 0 {
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = used as _;
    }
    // SAFETY: msg points to one iovec over `buf` (read only by the kernel) and to `space`,
    // both alive for the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Receives on a connected non-blocking socket; returns the bytes and, when UDP GRO merged
/// several datagrams, their size (each but the last).
pub fn recv_gro(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<u16>)> {
    recv_with_control(fd, buf).map(|(n, control)| (n, control.gro_segment_size))
}

/// Receives on a connected non-blocking socket; returns the bytes and what the control
/// messages reported (the UDP GRO size, the TOS or traffic class).
pub fn recv_with_control(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, ReceivedControl)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut space = [0u64; CMSG_WORDS];
    // SAFETY: msghdr is a plain C struct; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE as _;
    // SAFETY: msg points to one iovec over `buf` and to `space`, both writable and alive for
    // the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let used = msg.msg_controllen.min(CMSG_SPACE);
    Ok((
        n as usize,
        parse_received_cmsgs(&control_bytes(&space)[..used]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn two_reuseport_sockets_share_a_port() {
        let a = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_reuseport(addr).expect("second SO_REUSEPORT bind");
        assert_eq!(b.local_addr().unwrap(), addr);
    }

    #[test]
    fn v4_and_v6_sockets_coexist() {
        let a = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = a.local_addr().unwrap().port();
        match bind_reuseport(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
            Ok(s) => assert_eq!(s.local_addr().unwrap().port(), port),
            // Hosts without IPv6 on loopback cannot run this half.
            Err(e) => eprintln!("SKIPPED v6 half of v4_and_v6_sockets_coexist: {e}"),
        }
    }

    #[test]
    fn port_taken_without_reuseport_is_a_clear_error() {
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let err = bind_reuseport(addr).unwrap_err();
        assert!(matches!(err, SysError::AddrInUse { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("UDP port {} already in use", addr.port())),
            "{msg}"
        );
    }

    #[test]
    fn sockaddr_round_trips() {
        for s in ["192.0.2.7:51820", "[2001:db8::1]:443", "[fe80::1%3]:9"] {
            let addr: SocketAddr = s.parse().unwrap();
            let (raw, len) = socket_addr_to_raw(&addr);
            assert!(len as usize <= mem::size_of::<libc::sockaddr_storage>());
            assert_eq!(raw_to_socket_addr(&raw), Some(addr), "{s}");
        }
        assert_eq!(raw_to_socket_addr(&zeroed_storage()), None);
    }

    #[test]
    fn gso_send_arrives_as_segments() {
        let rx = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let tx = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        set_udp_gro(rx.as_fd(), true).unwrap();
        set_udp_gro(rx.as_fd(), false).unwrap();
        set_udp_segment(tx.as_fd(), 100).unwrap();
        tx.send_to(&[7u8; 250], rx.local_addr().unwrap()).unwrap();
        rx.set_nonblocking(false).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 512];
        let sizes: Vec<usize> = (0..3).map(|_| rx.recv(&mut buf).unwrap()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn the_tos_of_a_send_arrives_with_the_datagram_in_either_family() {
        for (rx_addr, ipv6) in [("127.0.0.1:0", false), ("[::1]:0", true)] {
            let Ok(rx) = bind_reuseport(rx_addr.parse().unwrap()) else {
                // Hosts without IPv6 on loopback cannot run this half.
                eprintln!("SKIPPED {rx_addr} half: cannot bind");
                continue;
            };
            let tx = bind_reuseport(rx_addr.parse().unwrap()).unwrap();
            tx.connect(rx.local_addr().unwrap()).unwrap();
            // ECT(0), ECT(1), CE, Not-ECT: only the ECN bits, DSCP 0.
            for tos in [0x02, 0x01, 0x03, 0x00] {
                let control = SendControl {
                    segment_size: None,
                    tos: Some(tos),
                };
                send_with_control(tx.as_fd(), b"ecn", control, ipv6).unwrap();
                let mut buf = [0u8; 16];
                let got = (0..200).find_map(|_| match recv_with_control(rx.as_fd(), &mut buf) {
                    Ok(got) => Some(got),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        None
                    }
                });
                let (n, control) = got.expect("the datagram arrives on loopback");
                assert_eq!(&buf[..n], b"ecn");
                assert_eq!(control.tos, Some(tos), "{rx_addr}");
                assert_eq!(control.gro_segment_size, None);
            }
        }
    }
}
