//! io_uring with a fixed arena of I/O slots: the only place the data plane hands memory to the
//! kernel.
//!
//! Each slot owns a buffer, an iovec, a msghdr and a socket address. While an operation is in
//! flight the slot is marked busy and its memory is never touched from Rust; it becomes
//! available again only when its completion has been reaped. The arena is allocated once and
//! never moves, so the kernel's pointers stay valid. On drop, every operation still in flight is
//! cancelled synchronously before the memory is released (or the memory is leaked if the kernel
//! does not confirm), so the kernel never writes into freed memory.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::error::SysError;
use super::udp::{raw_to_socket_addr, socket_addr_to_raw};

/// What a slot's operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `read` into the slot's buffer.
    Read = 1,
    /// `write` from the slot's buffer.
    Write = 2,
    /// `recvmsg` into the slot's buffer, source address into the slot.
    Recv = 3,
    /// `sendmsg` from the slot's buffer to the slot's address.
    Send = 4,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Read,
            2 => Op::Write,
            3 => Op::Recv,
            4 => Op::Send,
            _ => return None,
        })
    }
}

/// One reaped completion.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The slot whose operation finished (its memory is ours again).
    pub slot: u32,
    /// The operation.
    pub op: Op,
    /// The index of the registered file it ran on.
    pub file: u8,
    /// The kernel's result: bytes moved, or a negative errno.
    pub result: i32,
}

struct Slot {
    buf: Box<[u8]>,
    iov: libc::iovec,
    msg: libc::msghdr,
    addr: libc::sockaddr_storage,
    busy: bool,
}

/// A ring plus its slot arena, for one thread.
pub struct Uring {
    ring: IoUring,
    slots: Box<[Slot]>,
    completions: Vec<Completion>,
}

// SAFETY: the raw pointers inside the slots point only into the slots' own boxed buffers, which
// move with the `Uring`; nothing is shared with another thread.
unsafe impl Send for Uring {}

fn user_data(slot: u32, op: Op, file: u8) -> u64 {
    (slot as u64) | ((op as u64) << 32) | ((file as u64) << 40)
}

impl Uring {
    /// A ring with `entries` submission entries, `files` registered (addressed by their index
    /// from then on) and `slots` slots of `buf_size` bytes each.
    pub fn new(
        files: &[RawFd],
        slots: usize,
        buf_size: usize,
        entries: u32,
    ) -> Result<Uring, SysError> {
        // SINGLE_ISSUER + DEFER_TASKRUN: completions are processed when this thread asks for
        // them, without interrupting it or waking kernel workers (kernel 6.1+); fall back to a
        // plain ring on older kernels.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .build(entries)
            .or_else(|_| IoUring::new(entries))
            .map_err(|e| {
                SysError::io("io_uring setup failed (kernel without io_uring, or io_uring disabled by sysctl kernel.io_uring_disabled)", e)
            })?;
        ring.submitter()
            .register_files(files)
            .map_err(|e| SysError::io("registering files with io_uring", e))?;
        let slots = (0..slots)
            .map(|_| Slot {
                buf: vec![0u8; buf_size].into_boxed_slice(),
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                // SAFETY: msghdr and sockaddr_storage are plain C structs for which all-zero
                // bytes are a valid value.
                msg: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                addr: unsafe { std::mem::zeroed() },
                busy: false,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ok(Uring {
            ring,
            completions: Vec::with_capacity(entries as usize * 2),
            slots,
        })
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The buffer of an idle slot (`None` while the kernel owns it).
    pub fn buffer(&mut self, slot: u32) -> Option<&mut [u8]> {
        let s = self.slots.get_mut(slot as usize)?;
        (!s.busy).then_some(&mut s.buf[..])
    }

    /// The source address the last `recvmsg` on `slot` reported.
    pub fn source(&self, slot: u32) -> Option<SocketAddr> {
        raw_to_socket_addr(&self.slots.get(slot as usize)?.addr)
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built here points into a slot's memory, which stays valid and
            // untouched until its completion is reaped (the slot is marked busy before pushing).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // Queue full: hand what is queued to the kernel and retry.
            self.ring.submit()?;
        }
    }

    fn claim(&mut self, slot: u32, offset: usize, len: usize) -> io::Result<&mut Slot> {
        let s = self
            .slots
            .get_mut(slot as usize)
            .filter(|s| {
                !s.busy
                    && offset
                        .checked_add(len)
                        .is_some_and(|end| end <= s.buf.len())
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "slot busy or range out of bounds",
                )
            })?;
        s.busy = true;
        Ok(s)
    }

    /// Queues a read of up to `len` bytes into `buf[offset..]` from registered file `file`.
    pub fn read(&mut self, slot: u32, file: u8, offset: usize, len: usize) -> io::Result<()> {
        let s = self.claim(slot, offset, len)?;
        let ptr = s.buf[offset..].as_mut_ptr();
        let entry = opcode::Read::new(types::Fixed(file as u32), ptr, len as u32)
            .build()
            .user_data(user_data(slot, Op::Read, file));
        self.push(entry)
    }

    /// Queues a write of `buf[offset..offset + len]` to registered file `file`.
    pub fn write(&mut self, slot: u32, file: u8, offset: usize, len: usize) -> io::Result<()> {
        let s = self.claim(slot, offset, len)?;
        let ptr = s.buf[offset..].as_ptr();
        let entry = opcode::Write::new(types::Fixed(file as u32), ptr, len as u32)
            .build()
            .user_data(user_data(slot, Op::Write, file));
        self.push(entry)
    }

    /// Queues a `recvmsg` into `buf[offset..offset + len]` on registered socket `file`.
    pub fn recv(&mut self, slot: u32, file: u8, offset: usize, len: usize) -> io::Result<()> {
        let s = self.claim(slot, offset, len)?;
        s.iov = libc::iovec {
            iov_base: s.buf[offset..].as_mut_ptr().cast(),
            iov_len: len,
        };
        s.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
        s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        s.msg.msg_iov = &mut s.iov;
        s.msg.msg_iovlen = 1;
        s.msg.msg_control = std::ptr::null_mut();
        s.msg.msg_controllen = 0;
        let entry = opcode::RecvMsg::new(types::Fixed(file as u32), &mut s.msg)
            .build()
            .user_data(user_data(slot, Op::Recv, file));
        self.push(entry)
    }

    /// Queues a `sendmsg` of `buf[offset..offset + len]` to `dest` on registered socket `file`.
    pub fn send(
        &mut self,
        slot: u32,
        file: u8,
        offset: usize,
        len: usize,
        dest: SocketAddr,
    ) -> io::Result<()> {
        let s = self.claim(slot, offset, len)?;
        let (raw, raw_len) = socket_addr_to_raw(&dest);
        s.addr = raw;
        s.iov = libc::iovec {
            iov_base: s.buf[offset..].as_mut_ptr().cast(),
            iov_len: len,
        };
        s.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_storage).cast();
        s.msg.msg_namelen = raw_len;
        s.msg.msg_iov = &mut s.iov;
        s.msg.msg_iovlen = 1;
        s.msg.msg_control = std::ptr::null_mut();
        s.msg.msg_controllen = 0;
        let entry = opcode::SendMsg::new(types::Fixed(file as u32), &s.msg)
            .build()
            .user_data(user_data(slot, Op::Send, file));
        self.push(entry)
    }

    /// Submits everything queued, waits for at least one completion or `timeout`, and returns
    /// every completion reaped (their slots are idle again).
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<&[Completion]> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.reap();
        Ok(&self.completions)
    }

    fn reap(&mut self) {
        self.completions.clear();
        for cqe in self.ring.completion() {
            let ud = cqe.user_data();
            let slot = ud as u32;
            let Some(op) = Op::from_u8((ud >> 32) as u8) else {
                continue;
            };
            if let Some(s) = self.slots.get_mut(slot as usize) {
                // Single-shot operations only: one completion ends the operation.
                debug_assert!(!cqueue::more(cqe.flags()));
                s.busy = false;
            }
            self.completions.push(Completion {
                slot,
                op,
                file: (ud >> 40) as u8,
                result: cqe.result(),
            });
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let _ = self.ring.submit();
        let cancel = types::CancelBuilder::any();
        let _ = self.ring.submitter().register_sync_cancel(None, cancel);
        for _ in 0..100 {
            if !self.slots.iter().any(|s| s.busy) {
                return;
            }
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
        }
        // The kernel still holds some slots: leak the arena rather than free memory it may
        // write to.
        std::mem::forget(std::mem::take(&mut self.slots));
    }
}
