//! io_uring with a fixed arena of I/O slots: the only place the data plane hands memory to the
//! kernel.
//!
//! Each slot owns a buffer, an iovec, a msghdr and a socket address. While an operation is in
//! flight the slot is marked busy and its memory is never touched from Rust; it becomes
//! available again only when its completion has been reaped. The arena is allocated once and
//! never moves, so the kernel's pointers stay valid. On drop, every operation still in flight is
//! cancelled synchronously before the memory is released (or the memory is leaked if the kernel
//! does not confirm), so the kernel never writes into freed memory.
//!
//! A socket may instead have one multishot `recvmsg` armed (kernel 6.0+): its slots are then
//! handed to the kernel as provided buffers (a buffer ring per socket), and each datagram
//! completes into whichever the kernel picked. One armed request per socket instead of one per
//! slot: io_uring's internal poll on a socket is not exclusive, so every armed single-shot
//! receive was woken for every datagram. Every slot's buffer has room in front of its data for
//! the header, source address and control messages the kernel writes there.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

mod multishot;

use self::multishot::{header_field, reap_multishot, BufRing};
use super::cmsg::{
    control_bytes, parse_received_cmsgs, write_send_cmsgs, ReceivedControl, SendControl,
    CMSG_SPACE, CMSG_WORDS,
};
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

/// A file registered with a ring. The ring registers the TUN queue first and the sockets after
/// it, in the order given to [`Uring::new`]: this type is the one place that order is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIndex(u8);

impl FileIndex {
    /// The TUN queue.
    pub const TUN: FileIndex = FileIndex(0);
    /// The most sockets a ring registers: file indexes travel as a byte in the user data.
    pub const MAX_SOCKETS: usize = u8::MAX as usize;

    /// Socket `number` (counting from 0, in the order given to [`Uring::new`]).
    ///
    /// # Panics
    /// Above [`FileIndex::MAX_SOCKETS`] - 1, which no ring registers.
    pub const fn socket(number: usize) -> FileIndex {
        assert!(
            number < FileIndex::MAX_SOCKETS,
            "a ring registers at most FileIndex::MAX_SOCKETS sockets"
        );
        FileIndex(number as u8 + 1)
    }

    /// Which socket this is (`None` for the TUN queue).
    pub fn socket_number(self) -> Option<usize> {
        usize::from(self.0).checked_sub(1)
    }
}

impl std::fmt::Display for FileIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.socket_number() {
            None => f.write_str("TUN"),
            Some(number) => write!(f, "socket {number}"),
        }
    }
}

/// Why an operation moved no bytes, in the terms the data plane tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFailure {
    /// The operation was cancelled (ECANCELED): the ring is being torn down.
    Cancelled,
    /// Nothing to do yet (EAGAIN).
    WouldBlock,
    /// Interrupted by a signal (EINTR).
    Interrupted,
    /// A multishot receive found no provided buffer left (ENOBUFS): all are held by packets
    /// still in flight; the receive has ended and can be re-armed once one comes back.
    OutOfBuffers,
    /// A datagram did not fit the room the receive offered, and the kernel cut it.
    Truncated,
    /// Any other error, by its errno.
    Other(i32),
}

impl IoFailure {
    /// The failure an operation's `errno` means (an ENOBUFS outside a multishot receive's
    /// end is [`IoFailure::Other`]: a send, for instance, when the socket's buffer is full).
    fn from_errno(errno: i32) -> IoFailure {
        match errno {
            libc::ECANCELED => IoFailure::Cancelled,
            libc::EAGAIN => IoFailure::WouldBlock,
            libc::EINTR => IoFailure::Interrupted,
            other => IoFailure::Other(other),
        }
    }

    /// The errno behind the failure (EMSGSIZE for a cut datagram), for logs.
    pub fn errno(self) -> i32 {
        match self {
            IoFailure::Cancelled => libc::ECANCELED,
            IoFailure::WouldBlock => libc::EAGAIN,
            IoFailure::Interrupted => libc::EINTR,
            IoFailure::OutOfBuffers => libc::ENOBUFS,
            IoFailure::Truncated => libc::EMSGSIZE,
            IoFailure::Other(errno) => errno,
        }
    }
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoFailure::Truncated => f.write_str("datagram larger than the receive's room (cut)"),
            _ => io::Error::from_raw_os_error(self.errno()).fmt(f),
        }
    }
}

/// A completion's result (bytes moved, or a negative errno) in [`IoFailure`] terms.
fn outcome(result: i32) -> Result<usize, IoFailure> {
    usize::try_from(result).map_err(|_| IoFailure::from_errno(result.wrapping_neg()))
}

/// One reaped completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// An operation on a slot finished.
    Slot(SlotCompletion),
    /// A socket's multishot receive ended without filling a buffer; `failure` says why (`None`:
    /// the kernel reported no error). [`Uring::arm_multishot`] arms it again once the socket
    /// has a buffer.
    ReceiveEnded {
        /// The socket.
        file: FileIndex,
        /// Why it ended.
        failure: Option<IoFailure>,
    },
}

/// An operation on a slot that finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotCompletion {
    /// The slot whose operation finished (for a multishot receive, the buffer the kernel
    /// picked).
    pub slot: u32,
    /// The operation.
    pub op: Op,
    /// The registered file it ran on.
    pub file: FileIndex,
    /// Which of the slot's operations (several sends or writes may share one slot).
    pub op_index: u16,
    /// The slot has no operation in flight any more: its buffer is ours again.
    pub slot_idle: bool,
    /// Bytes moved (a received datagram's length), or why none were.
    pub result: Result<usize, IoFailure>,
}

/// `struct io_uring_recvmsg_out` (include/uapi/linux/io_uring.h): namelen, controllen,
/// payloadlen, flags, each a u32, in front of what a multishot `recvmsg` writes.
const RECV_OUT_LEN: usize = 16;
/// Room for the source address in a multishot receive's buffer (`msg_namelen` of its msghdr).
const NAME_SPACE: usize = std::mem::size_of::<libc::sockaddr_storage>();
/// Bytes in front of every slot's data: a multishot receive writes its header, the source
/// address and the control messages there, and the payload right after
/// (io_uring_prep_recvmsg_multishot(3)), so the payload lands where a slot's data starts.
const RECV_HEADROOM: usize = RECV_OUT_LEN + NAME_SPACE + CMSG_SPACE;
/// The slot number in a multishot receive's user data: its completions name their slot by the
/// buffer id the kernel picked.
const MULTISHOT_RECEIVE: u32 = u32::MAX;
/// Page alignment the kernel requires of a buffer ring it does not allocate itself.
const PAGE: usize = 4096;

/// Slots of one kind in [`Uring::with_slots`]: `count` slots of `bytes` bytes, each able to
/// carry `ops` operations at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotClass {
    pub count: usize,
    pub bytes: usize,
    pub ops: usize,
}

/// The kernel-facing records of one operation.
struct OpRecord {
    iov: libc::iovec,
    msg: libc::msghdr,
    addr: libc::sockaddr_storage,
    cmsg: [u64; CMSG_WORDS],
}

struct Slot {
    /// `RECV_HEADROOM` bytes, then the slot's data.
    buf: Box<[u8]>,
    ops: Box<[OpRecord]>,
    /// Operations in flight on this slot (a provided buffer counts as one); its buffer is ours
    /// only at zero.
    busy: u16,
    /// The last receive into this slot was a multishot one: its source address and control
    /// messages are in the headroom, not in the op record.
    multishot_filled: bool,
    /// The file whose buffer ring holds this slot's buffer, if any.
    provided_to: Option<FileIndex>,
    /// The most payload the last receive armed on this slot may put in it.
    receive_capacity: usize,
}

/// A ring plus its slot arena, for one thread.
pub struct Uring {
    ring: IoUring,
    slots: Box<[Slot]>,
    completions: Vec<Completion>,
    /// Per registered file (by [`FileIndex`]): its buffer ring, when it receives with a
    /// multishot `recvmsg`.
    buf_rings: Vec<Option<BufRing>>,
}

// SAFETY: the raw pointers inside the slots point only into the slots' own boxed buffers, which
// move with the `Uring`; nothing is shared with another thread.
unsafe impl Send for Uring {}

fn user_data(slot: u32, op: Op, file: FileIndex, op_index: u16) -> u64 {
    (slot as u64) | ((op as u64) << 32) | ((file.0 as u64) << 40) | ((op_index as u64) << 48)
}

impl Uring {
    /// A ring with `entries` submission entries, the TUN queue `tun` and `sockets` registered
    /// (addressed by [`FileIndex::TUN`] and [`FileIndex::socket`] from then on) and `slots`
    /// slots of `buf_size` bytes each, each able to carry `ops_per_slot` operations at once.
    pub fn new(
        tun: RawFd,
        sockets: &[RawFd],
        slots: usize,
        buf_size: usize,
        ops_per_slot: usize,
        entries: u32,
    ) -> Result<Uring, SysError> {
        let class = SlotClass {
            count: slots,
            bytes: buf_size,
            ops: ops_per_slot,
        };
        Uring::with_slots(tun, sockets, &[class], entries)
    }

    /// [`Uring::new`] with slots of several kinds: the slots of `classes[0]` first (numbered
    /// from 0), then those of `classes[1]`, and so on.
    pub fn with_slots(
        tun: RawFd,
        sockets: &[RawFd],
        classes: &[SlotClass],
        entries: u32,
    ) -> Result<Uring, SysError> {
        if sockets.len() > FileIndex::MAX_SOCKETS {
            return Err(SysError::InvalidArgument(format!(
                "{} sockets for one io_uring: at most {} (use fewer sockets per worker)",
                sockets.len(),
                FileIndex::MAX_SOCKETS
            )));
        }
        // In FileIndex order: the TUN queue, then socket 0, 1, ...
        let files: Vec<RawFd> = std::iter::once(tun)
            .chain(sockets.iter().copied())
            .collect();
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
                SysError::io(
                    "io_uring setup failed (kernel without io_uring, or io_uring disabled by \
                     sysctl kernel.io_uring_disabled)",
                    e,
                )
            })?;
        ring.submitter()
            .register_files(&files)
            .map_err(|e| SysError::io("registering files with io_uring", e))?;
        let slots = classes
            .iter()
            .flat_map(|c| (0..c.count).map(move |_| (c.bytes, c.ops)))
            .map(|(buf_size, ops_per_slot)| Slot {
                buf: vec![0u8; RECV_HEADROOM + buf_size].into_boxed_slice(),
                ops: (0..ops_per_slot.max(1)).map(|_| OpRecord::new()).collect(),
                busy: 0,
                multishot_filled: false,
                provided_to: None,
                receive_capacity: 0,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ok(Uring {
            ring,
            completions: Vec::with_capacity(entries as usize * 2),
            slots,
            buf_rings: files.iter().map(|_| None).collect(),
        })
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Operations one slot can carry at once.
    pub fn ops_per_slot(&self) -> usize {
        self.slots.first().map_or(0, |s| s.ops.len())
    }

    /// The buffer of an idle slot (`None` while the kernel owns any part of it).
    pub fn buffer(&mut self, slot: u32) -> Option<&mut [u8]> {
        let s = self.slots.get_mut(slot as usize)?;
        (s.busy == 0).then_some(&mut s.buf[RECV_HEADROOM..])
    }

    /// The buffers of two different idle slots at once (to copy from one into the other);
    /// `None` if either is busy or out of range, or they are the same slot.
    pub fn buffer_pair(&mut self, a: u32, b: u32) -> Option<(&mut [u8], &mut [u8])> {
        let (a, b) = (a as usize, b as usize);
        if a == b || a.max(b) >= self.slots.len() {
            return None;
        }
        let (low, high) = self.slots.split_at_mut(a.max(b));
        let (first, second) = (&mut low[a.min(b)], &mut high[0]);
        if first.busy != 0 || second.busy != 0 {
            return None;
        }
        let (first, second) = (
            &mut first.buf[RECV_HEADROOM..],
            &mut second.buf[RECV_HEADROOM..],
        );
        Some(if a < b {
            (first, second)
        } else {
            (second, first)
        })
    }

    /// The most payload the kernel may put in `slot`'s data with the last receive armed on it
    /// (single-shot or as a provided buffer).
    pub fn receive_capacity(&self, slot: u32) -> Option<usize> {
        self.slots.get(slot as usize).map(|s| s.receive_capacity)
    }

    /// The source address the last `recvmsg` on `slot` reported.
    pub fn source(&self, slot: u32) -> Option<SocketAddr> {
        let s = self.slots.get(slot as usize)?;
        if !s.multishot_filled {
            return raw_to_socket_addr(&s.ops.first()?.addr);
        }
        let len = (header_field(&s.buf, 0) as usize).min(NAME_SPACE);
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: `len` <= size_of::<sockaddr_storage>(); plain bytes into a plain C struct.
        unsafe {
            std::ptr::copy_nonoverlapping(
                s.buf[RECV_OUT_LEN..].as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            );
        }
        raw_to_socket_addr(&storage)
    }

    /// The segment size the kernel reported with the last `recvmsg` on `slot` when UDP GRO
    /// merged several datagrams into it (`None`: one datagram).
    pub fn gro_segment_size(&self, slot: u32) -> Option<u16> {
        self.received_control(slot)?.gro_segment_size
    }

    /// The TOS byte or traffic class the last `recvmsg` on `slot` arrived with (`None`: the
    /// socket does not report it, `IP_RECVTOS` / `IPV6_RECVTCLASS` off). One value for all
    /// the datagrams of a GRO receive: the kernel merges only datagrams whose TOS is equal.
    pub fn received_tos(&self, slot: u32) -> Option<u8> {
        self.received_control(slot)?.tos
    }

    /// The control messages of the last `recvmsg` on `slot`.
    fn received_control(&self, slot: u32) -> Option<ReceivedControl> {
        let s = self.slots.get(slot as usize)?;
        if s.multishot_filled {
            let len = (header_field(&s.buf, 4) as usize).min(CMSG_SPACE);
            let at = RECV_OUT_LEN + NAME_SPACE;
            return Some(parse_received_cmsgs(&s.buf[at..at + len]));
        }
        let record = s.ops.first()?;
        let used = record.msg.msg_controllen.min(CMSG_SPACE);
        Some(parse_received_cmsgs(&control_bytes(&record.cmsg)[..used]))
    }

    /// Queues the entry of an operation [`claim`](Uring::claim)ed on `slot`; if it cannot be
    /// queued, the claim is given back, so the slot does not stay busy with nothing in flight.
    fn push_claimed(&mut self, slot: u32, entry: squeue::Entry) -> io::Result<()> {
        let pushed = self.push(entry);
        if pushed.is_err() {
            if let Some(s) = self.slots.get_mut(slot as usize) {
                s.busy = s.busy.saturating_sub(1);
            }
        }
        pushed
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

    /// Checks the range and the op record, and marks one more operation in flight on `slot`
    /// (given back by [`push_claimed`](Uring::push_claimed) if the operation is not queued).
    fn claim(
        &mut self,
        slot: u32,
        op_index: u16,
        offset: usize,
        len: usize,
    ) -> io::Result<&mut Slot> {
        let s = self
            .slots
            .get_mut(slot as usize)
            .filter(|s| {
                (op_index as usize) < s.ops.len()
                    && offset
                        .checked_add(len)
                        .is_some_and(|end| end <= s.buf.len() - RECV_HEADROOM)
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "slot range or op index out of bounds",
                )
            })?;
        s.busy += 1;
        Ok(s)
    }

    /// Queues a read of up to `len` bytes into `buf[offset..]` from registered file `file`.
    pub fn read(
        &mut self,
        slot: u32,
        file: FileIndex,
        offset: usize,
        len: usize,
    ) -> io::Result<()> {
        let s = self.claim(slot, 0, offset, len)?;
        let ptr = s.buf[RECV_HEADROOM + offset..].as_mut_ptr();
        let entry = opcode::Read::new(types::Fixed(u32::from(file.0)), ptr, len as u32)
            .build()
            .user_data(user_data(slot, Op::Read, file, 0));
        self.push_claimed(slot, entry)
    }

    /// Queues a write of `buf[offset..offset + len]` to registered file `file`, as operation
    /// `op_index` of the slot.
    pub fn write(
        &mut self,
        slot: u32,
        op_index: u16,
        file: FileIndex,
        offset: usize,
        len: usize,
    ) -> io::Result<()> {
        let s = self.claim(slot, op_index, offset, len)?;
        let ptr = s.buf[RECV_HEADROOM + offset..].as_ptr();
        let entry = opcode::Write::new(types::Fixed(u32::from(file.0)), ptr, len as u32)
            .build()
            .user_data(user_data(slot, Op::Write, file, op_index));
        self.push_claimed(slot, entry)
    }

    /// Queues a `recvmsg` into `buf[offset..offset + len]` on registered socket `file`, with
    /// room for the UDP GRO and the TOS / traffic class control messages.
    pub fn recv(
        &mut self,
        slot: u32,
        file: FileIndex,
        offset: usize,
        len: usize,
    ) -> io::Result<()> {
        let s = self.claim(slot, 0, offset, len)?;
        s.multishot_filled = false;
        s.receive_capacity = len;
        let base = s.buf[RECV_HEADROOM + offset..].as_mut_ptr();
        let r = &mut s.ops[0];
        r.iov = libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        };
        r.msg.msg_name = (&mut r.addr as *mut libc::sockaddr_storage).cast();
        r.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        r.msg.msg_iov = &mut r.iov;
        r.msg.msg_iovlen = 1;
        r.msg.msg_control = r.cmsg.as_mut_ptr().cast();
        r.msg.msg_controllen = CMSG_SPACE as _;
        r.msg.msg_flags = 0;
        let entry = opcode::RecvMsg::new(types::Fixed(u32::from(file.0)), &mut r.msg)
            .build()
            .user_data(user_data(slot, Op::Recv, file, 0));
        self.push_claimed(slot, entry)
    }

    /// Queues a `sendmsg` of `buf[offset..offset + len]` to `dest` on registered socket `file`,
    /// as operation `op_index` of the slot, with the control messages of `control`: with a
    /// segment size the kernel cuts the buffer into datagrams of that size (UDP_SEGMENT; the
    /// last may be shorter), with a TOS every one of them carries it (`IP_TOS` to an IPv4
    /// `dest`, `IPV6_TCLASS` to an IPv6 one: each socket is of one family, IPv6 ones
    /// `IPV6_V6ONLY`).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        slot: u32,
        op_index: u16,
        file: FileIndex,
        offset: usize,
        len: usize,
        dest: SocketAddr,
        control: SendControl,
    ) -> io::Result<()> {
        let s = self.claim(slot, op_index, offset, len)?;
        let base = s.buf[RECV_HEADROOM + offset..].as_mut_ptr();
        let r = &mut s.ops[op_index as usize];
        let (raw, raw_len) = socket_addr_to_raw(&dest);
        r.addr = raw;
        r.iov = libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        };
        r.msg.msg_name = (&mut r.addr as *mut libc::sockaddr_storage).cast();
        r.msg.msg_namelen = raw_len;
        r.msg.msg_iov = &mut r.iov;
        r.msg.msg_iovlen = 1;
        r.msg.msg_flags = 0;
        let used = write_send_cmsgs(&mut r.cmsg, control, dest.is_ipv6());
        if used > 0 {
            r.msg.msg_control = r.cmsg.as_mut_ptr().cast();
            r.msg.msg_controllen = used as _;
        } else {
            r.msg.msg_control = std::ptr::null_mut();
            r.msg.msg_controllen = 0;
        }
        let entry = opcode::SendMsg::new(types::Fixed(u32::from(file.0)), &r.msg)
            .build()
            .user_data(user_data(slot, Op::Send, file, op_index));
        self.push_claimed(slot, entry)
    }

    /// Submits everything queued, waits for at least one completion or `timeout`, and returns
    /// every completion reaped.
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
            if slot == MULTISHOT_RECEIVE {
                let done = reap_multishot(
                    &mut self.buf_rings,
                    &mut self.slots,
                    FileIndex((ud >> 40) as u8),
                    cqe.result(),
                    cqe.flags(),
                );
                self.completions.push(done);
                continue;
            }
            let mut slot_idle = false;
            if let Some(s) = self.slots.get_mut(slot as usize) {
                // Single-shot operations only: one completion ends the operation.
                debug_assert!(!cqueue::more(cqe.flags()));
                s.busy = s.busy.saturating_sub(1);
                slot_idle = s.busy == 0;
            }
            self.completions.push(Completion::Slot(SlotCompletion {
                slot,
                op,
                file: FileIndex((ud >> 40) as u8),
                op_index: (ud >> 48) as u16,
                slot_idle,
                result: outcome(cqe.result()),
            }));
        }
    }
}

impl OpRecord {
    fn new() -> OpRecord {
        OpRecord {
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: msghdr and sockaddr_storage are plain C structs for which all-zero bytes
            // are a valid value.
            msg: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            addr: unsafe { std::mem::zeroed() },
            cmsg: [0; CMSG_WORDS],
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let _ = self.ring.submit();
        let cancel = types::CancelBuilder::any();
        let _ = self.ring.submitter().register_sync_cancel(None, cancel);
        // Take the provided buffers back: once a ring is unregistered the kernel holds no
        // pointer into it or into the buffers it listed.
        for file in 0..self.buf_rings.len() {
            let Some(ring) = self.buf_rings[file].take() else {
                continue;
            };
            if self
                .ring
                .submitter()
                .unregister_buf_ring(file as u16)
                .is_ok()
            {
                // SAFETY: allocated with this layout in `enable_multishot`, no longer registered.
                unsafe { std::alloc::dealloc(ring.entries.as_ptr().cast(), ring.layout) };
                for s in self
                    .slots
                    .iter_mut()
                    .filter(|s| s.provided_to == Some(FileIndex(file as u8)))
                {
                    s.provided_to = None;
                    s.busy = s.busy.saturating_sub(1);
                }
            } else {
                // The kernel may still read the ring: leak it.
                std::mem::forget(ring);
            }
        }
        for _ in 0..100 {
            if !self.slots.iter().any(|s| s.busy > 0) {
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

#[cfg(test)]
mod tests;
