//! Batched UDP I/O (`sendmmsg`/`recvmmsg`), so the load tools spend their time on packets and
//! not on one system call each.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// Most datagrams per batch.
pub const BATCH: usize = 64;
/// Room per datagram.
pub const SLOT: usize = 2048;

/// Buffers for one batch.
pub struct Batch {
    pub bufs: Vec<[u8; SLOT]>,
    pub lens: Vec<usize>,
    pub addrs: Vec<libc::sockaddr_in>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        // SAFETY: all-zero is a valid sockaddr_in, iovec and mmsghdr (null pointers, zero lens).
        let zero_addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        Batch {
            bufs: vec![[0u8; SLOT]; BATCH],
            lens: vec![0; BATCH],
            addrs: vec![zero_addr; BATCH],
            iov: vec![unsafe { std::mem::zeroed() }; BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    fn prepare(&mut self, n: usize, with_addr: bool, recv: bool) {
        for i in 0..n {
            self.iov[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: if recv { SLOT } else { self.lens[i] },
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            if with_addr {
                h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            } else {
                h.msg_name = std::ptr::null_mut();
                h.msg_namelen = 0;
            }
            self.hdrs[i].msg_len = 0;
        }
    }

    /// Sends `bufs[..n]` (lengths `lens`) on a connected socket, or to `addrs` when
    /// `with_addr`. Returns how many went (`WouldBlock` when none).
    pub fn send(&mut self, sock: &UdpSocket, n: usize, with_addr: bool) -> io::Result<usize> {
        if n == 0 {
            return Ok(0);
        }
        self.prepare(n, with_addr, false);
        // SAFETY: hdrs[..n] point at iov/bufs/addrs owned by self, alive for the call.
        let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), self.hdrs.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// Receives up to [`BATCH`] datagrams without blocking; lengths land in `lens`, sources in
    /// `addrs`.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.prepare(BATCH, true, true);
        // SAFETY: as in `send`; the kernel writes at most SLOT bytes per buffer.
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..rc as usize {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(rc as usize)
    }
}

/// Blocks until `sock` is readable or `timeout_ms` passes.
pub fn wait_readable(socks: &[&UdpSocket], timeout_ms: i32) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: fds is a valid array of pollfd of the given length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
}

/// Asks for big socket buffers (best effort).
pub fn big_buffers(sock: &UdpSocket) {
    let size: libc::c_int = 8 << 20;
    for opt in [
        libc::SO_RCVBUF,
        libc::SO_SNDBUF,
        libc::SO_RCVBUFFORCE,
        libc::SO_SNDBUFFORCE,
    ] {
        // SAFETY: setsockopt with a valid int option value.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
    }
}
