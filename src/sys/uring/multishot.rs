//! Multishot receive: one armed `recvmsg` per socket, completing into the slots the socket has
//! handed the kernel as provided buffers (a buffer ring per socket, kernel 5.19+ for the ring,
//! 6.0+ for multishot `recvmsg`).

use std::alloc::Layout;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, types};

use super::{
    outcome, user_data, Completion, FileIndex, IoFailure, Op, Slot, SlotCompletion, Uring,
    CMSG_SPACE, MULTISHOT_RECEIVE, NAME_SPACE, PAGE, RECV_HEADROOM,
};

/// A provided-buffer ring for one socket's multishot receive.
pub(super) struct BufRing {
    pub(super) entries: NonNull<types::BufRingEntry>,
    pub(super) layout: Layout,
    pub(super) mask: u16,
    /// Our copy of the ring's tail (the kernel reads the shared one).
    pub(super) tail: u16,
    /// Buffers the kernel holds.
    pub(super) provided: u16,
    /// A multishot receive is in flight on this socket.
    pub(super) armed: bool,
    /// The template of the multishot receive: only `msg_namelen` and `msg_controllen` matter.
    pub(super) msg: Box<libc::msghdr>,
}

impl Uring {
    /// Makes registered socket `file` receive with one multishot `recvmsg` into provided
    /// buffers (up to `buffers` of them, a power of two): registers its buffer ring. Fails on
    /// kernels without buffer rings (before 5.19); the caller then keeps single-shot receives.
    pub fn enable_multishot(&mut self, file: FileIndex, buffers: u16) -> io::Result<()> {
        let invalid = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
        if self
            .buf_rings
            .get(usize::from(file.0))
            .is_none_or(Option::is_some)
        {
            return Err(invalid("no such file, or multishot already enabled"));
        }
        let count = buffers
            .max(1)
            .checked_next_power_of_two()
            .ok_or(invalid("too many buffers"))?;
        let layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
            PAGE,
        )
        .map_err(|_| invalid("buffer ring layout"))?;
        // SAFETY: the layout has a non-zero size.
        let memory = unsafe { std::alloc::alloc_zeroed(layout) };
        let entries = NonNull::new(memory.cast::<types::BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: page-aligned, zeroed memory for `count` entries that stays allocated (and is
        // written by us only at entries the kernel has not been given) until it is unregistered
        // in `Drop`.
        let registered = unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                u16::from(file.0),
                0,
            )
        };
        if let Err(e) = registered {
            // SAFETY: allocated above with this layout and not registered.
            unsafe { std::alloc::dealloc(memory, layout) };
            return Err(e);
        }
        // SAFETY: all-zero bytes are a valid msghdr.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_namelen = NAME_SPACE as libc::socklen_t;
        msg.msg_controllen = CMSG_SPACE as _;
        self.buf_rings[usize::from(file.0)] = Some(BufRing {
            entries,
            layout,
            mask: count - 1,
            tail: 0,
            provided: 0,
            armed: false,
            msg,
        });
        Ok(())
    }

    /// Whether `file` receives with a multishot `recvmsg` ([`Uring::enable_multishot`]).
    pub fn is_multishot(&self, file: FileIndex) -> bool {
        self.buf_rings
            .get(usize::from(file.0))
            .is_some_and(Option::is_some)
    }

    /// Hands idle `slot` to the kernel as a buffer for `file`'s multishot receive, with room for
    /// `len` bytes of payload (the headroom in front of the data comes on top): no more than
    /// the caller reads a datagram from.
    pub fn provide(&mut self, slot: u32, file: FileIndex, len: usize) -> io::Result<()> {
        let invalid = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
        let ring = self
            .buf_rings
            .get_mut(usize::from(file.0))
            .and_then(Option::as_mut)
            .ok_or(invalid("multishot not enabled on this file"))?;
        let bid = u16::try_from(slot).map_err(|_| invalid("slot number above 65535"))?;
        let s = self
            .slots
            .get_mut(slot as usize)
            .filter(|s| s.busy == 0)
            .ok_or(invalid("no such slot, or slot busy"))?;
        let offered = RECV_HEADROOM
            .checked_add(len)
            .filter(|&n| n <= s.buf.len() && u32::try_from(n).is_ok())
            .ok_or(invalid("receive length beyond the slot's buffer"))?;
        if ring.provided > ring.mask {
            return Err(invalid("buffer ring full"));
        }
        let index = usize::from(ring.tail & ring.mask);
        // SAFETY: `index` is within the ring, and the entry at the tail is not the kernel's until
        // the tail moves past it below.
        let entry = unsafe { &mut *ring.entries.as_ptr().add(index) };
        entry.set_addr(s.buf.as_mut_ptr() as u64);
        entry.set_len(offered as u32);
        entry.set_bid(bid);
        ring.tail = ring.tail.wrapping_add(1);
        // SAFETY: the shared tail is the reserved field of the ring's first entry, 2-byte aligned
        // in memory we own; the kernel reads it with acquire ordering, so the entry written above
        // is visible before the new tail.
        unsafe {
            let tail = types::BufRingEntry::tail(ring.entries.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(ring.tail, Ordering::Release);
        }
        ring.provided += 1;
        s.receive_capacity = len;
        s.busy += 1;
        s.provided_to = Some(file);
        Ok(())
    }

    /// Arms the multishot receive of every socket that has buffers but no receive in flight
    /// (the kernel ends one when it runs out of buffers, or on an error).
    pub fn arm_multishot(&mut self) -> io::Result<()> {
        for file in 0..self.buf_rings.len() {
            let msg = match &self.buf_rings[file] {
                Some(ring) if !ring.armed && ring.provided > 0 => &*ring.msg as *const libc::msghdr,
                _ => continue,
            };
            let entry = opcode::RecvMsgMulti::new(types::Fixed(file as u32), msg, file as u16)
                .build()
                .user_data(user_data(
                    MULTISHOT_RECEIVE,
                    Op::Recv,
                    FileIndex(file as u8),
                    0,
                ));
            self.push(entry)?;
            if let Some(ring) = self.buf_rings[file].as_mut() {
                ring.armed = true;
            }
        }
        Ok(())
    }
}

/// One completion of a multishot receive on `file`: a datagram (or an error) in the buffer the
/// kernel picked, or the end of the receive without a buffer.
pub(super) fn reap_multishot(
    buf_rings: &mut [Option<BufRing>],
    slots: &mut [Slot],
    file: FileIndex,
    result: i32,
    flags: u32,
) -> Completion {
    let ended = Completion::ReceiveEnded {
        file,
        failure: outcome(result).err().map(|failure| match failure {
            IoFailure::Other(libc::ENOBUFS) => IoFailure::OutOfBuffers,
            other => other,
        }),
    };
    let Some(ring) = buf_rings
        .get_mut(usize::from(file.0))
        .and_then(Option::as_mut)
    else {
        return ended;
    };
    if !cqueue::more(flags) {
        ring.armed = false;
    }
    let Some(bid) = cqueue::buffer_select(flags) else {
        return ended;
    };
    ring.provided = ring.provided.saturating_sub(1);
    let Some(s) = slots.get_mut(usize::from(bid)) else {
        return ended;
    };
    s.busy = s.busy.saturating_sub(1);
    s.multishot_filled = true;
    s.provided_to = None;
    let result = outcome(result).and_then(|_| {
        let payload = header_field(&s.buf, 8) as usize;
        let truncated = header_field(&s.buf, 12) & libc::MSG_TRUNC as u32 != 0;
        if truncated || payload > s.receive_capacity {
            Err(IoFailure::Truncated)
        } else {
            Ok(payload)
        }
    });
    Completion::Slot(SlotCompletion {
        slot: u32::from(bid),
        op: Op::Recv,
        file,
        op_index: 0,
        slot_idle: s.busy == 0,
        result,
    })
}

/// The u32 at `at` of a multishot receive's `io_uring_recvmsg_out` header.
pub(super) fn header_field(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}
