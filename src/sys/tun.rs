//! Multi-queue TUN devices (`/dev/net/tun`).
//!
//! Each queue is its own file descriptor; the kernel spreads outbound flows across queues
//! by flow hash, so one worker thread can own one queue.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use super::error::SysError;

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ` = `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Offload flag: the kernel may hand over packets with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// Offload flag: TCP segmentation offload for IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// Offload flag: TCP segmentation offload for IPv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// Offload flag: TSO with ECN bits.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// Offload flag: UDP segmentation offload for IPv4 (Linux 6.2+).
pub const TUN_F_USO4: u32 = 0x20;
/// Offload flag: UDP segmentation offload for IPv6 (Linux 6.2+).
pub const TUN_F_USO6: u32 = 0x40;

/// Maximum interface name length including the trailing NUL (`IFNAMSIZ`).
const IFNAMSIZ: usize = 16;

/// `struct ifreq` restricted to the name and the flags member of its union (40 bytes).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TUN device with one file descriptor per queue. Dropping it closes the queues, which
/// removes the (non-persistent) device.
#[derive(Debug)]
pub struct Tun {
    name: String,
    queues: Vec<OwnedFd>,
}

impl Tun {
    /// Creates (or attaches to) TUN device `name` with `queues` queues, each opened
    /// `O_NONBLOCK | O_CLOEXEC` with `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE`, plus
    /// `IFF_VNET_HDR` when `vnet_hdr` is set. `name` may contain `%d`; [`Tun::name`] gives
    /// the name the kernel chose.
    pub fn open(name: &str, queues: usize, vnet_hdr: bool) -> Result<Tun, SysError> {
        if queues == 0 {
            return Err(SysError::InvalidArgument(
                "a TUN device needs at least one queue".into(),
            ));
        }
        ifreq_for(name, 0)?;
        let mut flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE;
        if vnet_hdr {
            flags |= IFF_VNET_HDR;
        }
        let mut tun = Tun {
            name: name.to_owned(),
            queues: Vec::with_capacity(queues),
        };
        for _ in 0..queues {
            let fd = open_dev()?;
            tun.name = set_iff(&fd, &tun.name, flags)?;
            tun.queues.push(fd);
        }
        Ok(tun)
    }

    /// The interface name chosen by the kernel.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue file descriptors, one per queue.
    pub fn queue_fds(&self) -> &[OwnedFd] {
        &self.queues
    }

    /// Takes the queue file descriptors out (e.g. to hand one to each worker). The device
    /// lives as long as at least one of them stays open.
    pub fn take_queues(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.queues)
    }

    /// Sets the offloads (`TUN_F_*` flags) on every queue with `TUNSETOFFLOAD`. Requires a
    /// device opened with `vnet_hdr` for anything but `0`.
    pub fn offload(&self, flags: u32) -> Result<(), SysError> {
        for fd in &self.queues {
            let arg = flags as libc::c_ulong;
            // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is an open TUN fd.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, arg) };
            if rc < 0 {
                return Err(SysError::last_os_error(format!(
                    "setting offloads {flags:#x} on TUN {} (TUNSETOFFLOAD; needs vnet_hdr \
                     and a kernel that knows every flag)",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// Turns on as many offloads as the kernel accepts, best first: checksum + TSO4/6 + USO4/6,
    /// then without USO (kernels before 6.2), then checksum only, then none. Returns the flags in
    /// force. Needs a device opened with `vnet_hdr`.
    pub fn enable_offloads(&self) -> u32 {
        let full = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6;
        let candidates = [full, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, TUN_F_CSUM, 0];
        for flags in candidates {
            match self.offload(flags) {
                Ok(()) => return flags,
                Err(e) => tracing::debug!(flags, error = %e, "TUN offload refused; trying fewer"),
            }
        }
        0
    }

    /// Sets the virtio-net header size (`TUNSETVNETHDRSZ`, 10 or 12) on every queue.
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), SysError> {
        for fd in &self.queues {
            // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which points to
            // `size`, valid for the duration of the call.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &size as *const i32) };
            if rc < 0 {
                return Err(SysError::last_os_error(format!(
                    "setting vnet header size {size} on TUN {} (TUNSETVNETHDRSZ)",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// Opens `/dev/net/tun` non-blocking (std adds `O_CLOEXEC`).
fn open_dev() -> Result<OwnedFd, SysError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SysError::TunMissing,
            _ => SysError::io("opening /dev/net/tun", e),
        })?;
    Ok(OwnedFd::from(file))
}

/// Attaches `fd` to device `name` with `TUNSETIFF`; returns the kernel's name for it.
fn set_iff(fd: &OwnedFd, name: &str, flags: libc::c_short) -> Result<String, SysError> {
    let mut req = ifreq_for(name, flags)?;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its layout and size
    // (40 bytes) and is valid for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EINVAL) => SysError::Io {
                what: format!(
                    "creating TUN device {name}: a device of that name exists with other \
                     flags (not multi-queue TUN?) or is busy; delete it or pick another name"
                ),
                source: err,
            },
            _ => SysError::io(format!("creating TUN device {name} (TUNSETIFF)"), err),
        });
    }
    let bytes: Vec<u8> = req
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Builds the `ifreq` for `TUNSETIFF`, checking the name fits.
fn ifreq_for(name: &str, flags: libc::c_short) -> Result<IfReqFlags, SysError> {
    if name.len() >= IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/' || b == b' ') {
        return Err(SysError::InvalidArgument(format!(
            "bad interface name {name:?}: at most {} bytes, no '/', space or NUL",
            IFNAMSIZ - 1
        )));
    }
    let mut req = IfReqFlags {
        name: [0; IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// Waits until `fd` is ready for `events` or `timeout` passes (`None`: forever).
/// Returns whether it became ready.
pub fn poll_fd(
    fd: BorrowedFd<'_>,
    events: i16,
    timeout: Option<Duration>,
) -> Result<bool, SysError> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    loop {
        // SAFETY: `pfd` is one valid pollfd, and we pass a count of 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(SysError::io("poll", err));
        }
    }
}

/// Reads one packet from a TUN queue, waiting up to `timeout` (`None`: forever).
/// Returns `Ok(None)` on timeout.
pub fn read_timeout(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    timeout: Option<Duration>,
) -> Result<Option<usize>, SysError> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                if !poll_fd(fd, libc::POLLIN, timeout)? {
                    return Ok(None);
                }
            }
            _ => return Err(SysError::io("reading from TUN queue", err)),
        }
    }
}

/// Reads one packet from a TUN queue, blocking until one arrives (the fd may be
/// non-blocking). Returns its length.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, SysError> {
    Ok(read_timeout(fd, buf, None)?.unwrap_or(0))
}

/// Writes one packet to a TUN queue, blocking while the queue is full. Returns the
/// number of bytes written.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, SysError> {
    loop {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                poll_fd(fd, libc::POLLOUT, None)?;
            }
            _ => return Err(SysError::io("writing to TUN queue", err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::link;
    use crate::sys::testutil::{is_root_or_skip, Netns};
    use std::os::fd::AsFd;
    use std::process::Command;

    fn checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in data.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// An IPv4 ICMP echo request from `src` to `dst` with an 8-byte payload.
    fn echo_request(src: [u8; 4], dst: [u8; 4], id: u16) -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0];
        icmp.extend_from_slice(&id.to_be_bytes());
        icmp.extend_from_slice(&1u16.to_be_bytes());
        icmp.extend_from_slice(b"ctr-ping");
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let total = (20 + icmp.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&icmp);
        ip
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(matches!(
            Tun::open("ctr%d", 0, false),
            Err(SysError::InvalidArgument(_))
        ));
        assert!(matches!(
            Tun::open("a-name-that-is-too-long", 1, false),
            Err(SysError::InvalidArgument(_))
        ));
    }

    #[test]
    fn two_queue_tun_answers_ping() {
        if !is_root_or_skip("two_queue_tun_answers_ping") {
            return;
        }
        let ns = Netns::new();
        ns.run(|| {
            let tun = Tun::open("ctr%d", 2, false).expect("open tun");
            assert!(tun.name().starts_with("ctr"), "name {}", tun.name());
            assert!(!tun.name().contains('%'));
            assert_eq!(tun.queue_fds().len(), 2);
            link::set_up(tun.name(), 1420).expect("link up");
            link::add_address(tun.name(), "10.77.0.1/24".parse().unwrap()).expect("addr");
            // Up without an IPv6 link-local address (nothing of the kernel's own goes out).
            let addresses = Command::new("ip")
                .args(["-6", "addr", "show", "dev", tun.name()])
                .output()
                .expect("ip -6 addr");
            let addresses = String::from_utf8_lossy(&addresses.stdout);
            assert!(!addresses.contains("fe80"), "{addresses}");

            let ping = echo_request([10, 77, 0, 2], [10, 77, 0, 1], 0x4242);
            let q0 = tun.queue_fds()[0].as_fd();
            assert_eq!(write(q0, &ping).unwrap(), ping.len());

            // The reply may come out of either queue; read both with a bounded wait.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut buf = [0u8; 2048];
            let reply = loop {
                assert!(std::time::Instant::now() < deadline, "no echo reply");
                let mut got = None;
                for q in tun.queue_fds() {
                    let n =
                        read_timeout(q.as_fd(), &mut buf, Some(Duration::from_millis(50))).unwrap();
                    if let Some(n) = n {
                        got = Some(buf[..n].to_vec());
                        break;
                    }
                }
                match got {
                    // Skip anything else the kernel might send.
                    Some(p) if p.len() >= 28 && p[0] >> 4 == 4 && p[9] == 1 && p[20] == 0 => {
                        break p
                    }
                    _ => continue,
                }
            };
            assert_eq!(&reply[12..16], &[10, 77, 0, 1], "reply source");
            assert_eq!(&reply[16..20], &[10, 77, 0, 2], "reply destination");
            assert_eq!(&reply[24..26], &0x4242u16.to_be_bytes(), "echo id");
            assert_eq!(&reply[28..], b"ctr-ping");
        });
    }

    #[test]
    fn vnet_hdr_offloads() {
        if !is_root_or_skip("vnet_hdr_offloads") {
            return;
        }
        let ns = Netns::new();
        ns.run(|| {
            let mut tun = Tun::open("ctrv%d", 2, true).expect("open tun");
            tun.set_vnet_hdr_size(12).expect("vnet hdr size");
            tun.offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6)
                .expect("offload");
            let queues = tun.take_queues();
            assert_eq!(queues.len(), 2);
            assert!(tun.queue_fds().is_empty());
        });
    }
}
