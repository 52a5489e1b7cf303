//! Tests of the ring: control-message layouts, and real receives on loopback UDP sockets
//! (multishot into provided buffers, running out of buffers, the single-shot fallback).

use super::*;
use crate::sys::cmsg::SendControl;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// The socket of the rings below.
const SOCKET: FileIndex = FileIndex::socket(0);

/// A ring on `socket` ([`SOCKET`]) with `slots` slots of 2048 bytes, one operation each; the
/// socket stands in for the TUN queue too (nothing here reads from the TUN).
fn ring_on(socket: &UdpSocket, slots: usize, entries: u32) -> Result<Uring, SysError> {
    let fd = socket.as_raw_fd();
    Uring::new(fd, &[fd], slots, 2048, 1, entries)
}

#[test]
fn file_indexes_name_the_tun_and_each_socket_apart() {
    assert_eq!(FileIndex::TUN.socket_number(), None);
    for number in [0, 1, FileIndex::MAX_SOCKETS - 1] {
        let file = FileIndex::socket(number);
        assert_ne!(file, FileIndex::TUN);
        assert_eq!(file.socket_number(), Some(number));
    }
    assert_eq!(FileIndex::socket(1).to_string(), "socket 1");
    assert_eq!(FileIndex::TUN.to_string(), "TUN");
}

#[test]
fn each_file_index_reaches_the_file_registered_for_it() {
    // Three sockets: one registered as the TUN queue, two as sockets; a receive on each file
    // index gets the datagram sent to that file.
    let files: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fds: Vec<_> = files.iter().map(|f| f.as_raw_fd()).collect();
    let Ok(mut ring) = Uring::new(fds[0], &fds[1..], 3, 2048, 1, 16) else {
        eprintln!("SKIPPED each_file_index_reaches_the_file_registered_for_it: no io_uring here");
        return;
    };
    let indexes = [FileIndex::TUN, FileIndex::socket(0), FileIndex::socket(1)];
    for (slot, file) in indexes.iter().enumerate() {
        ring.recv(slot as u32, *file, 0, 2048).unwrap();
    }
    for (i, f) in files.iter().enumerate() {
        sender
            .send_to(&[i as u8; 7], f.local_addr().unwrap())
            .unwrap();
    }
    let mut done = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while done.len() < 3 && std::time::Instant::now() < deadline {
        done.extend_from_slice(ring.submit_and_wait(Duration::from_millis(50)).unwrap());
    }
    assert_eq!(done.len(), 3, "{done:?}");
    for c in done {
        let Completion::Slot(c) = c else {
            panic!("no multishot receive here: {c:?}");
        };
        let slot = c.slot as usize;
        assert_eq!(c.file, indexes[slot], "{c:?}");
        assert_eq!(c.result, Ok(7), "{c:?}");
        let payload = &ring.buffer(c.slot).unwrap()[..7];
        assert_eq!(
            payload, &[slot as u8; 7],
            "slot {slot} received from its own file"
        );
    }
}

#[test]
fn a_ring_refuses_more_sockets_than_file_indexes() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fd = socket.as_raw_fd();
    let sockets = vec![fd; FileIndex::MAX_SOCKETS + 1];
    let e = Uring::new(fd, &sockets, 1, 64, 1, 4)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("at most 255"), "{e}");
}

/// A ring with one loopback UDP socket receiving through a multishot `recvmsg` into `buffers`
/// provided slots, and a sender.
fn setup(buffers: u16) -> Option<(Uring, UdpSocket, UdpSocket)> {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.connect(receiver.local_addr().unwrap()).unwrap();
    let mut ring = ring_on(&receiver, 4, 16).ok()?;
    if let Err(e) = ring.enable_multishot(SOCKET, buffers) {
        eprintln!("SKIPPED: no buffer rings on this kernel: {e}");
        return None;
    }
    for slot in 0..u32::from(buffers) {
        ring.provide(slot, SOCKET, 2048).unwrap();
    }
    ring.arm_multishot().unwrap();
    Some((ring, receiver, sender))
}

/// What [`receive`] got.
#[derive(Default)]
struct Received {
    /// (slot, payload, source) of each datagram.
    datagrams: Vec<(u32, Vec<u8>, Option<SocketAddr>)>,
    /// How many times the multishot receive ended for want of a buffer.
    out_of_buffers: usize,
}

/// Receives until `want` datagrams completed (or 2 s).
fn receive(ring: &mut Uring, want: usize) -> Received {
    let mut got = Received::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while got.datagrams.len() < want && std::time::Instant::now() < deadline {
        ring.arm_multishot().unwrap();
        let done: Vec<Completion> = ring
            .submit_and_wait(Duration::from_millis(50))
            .unwrap()
            .to_vec();
        for c in done {
            let c = match c {
                Completion::Slot(c) => c,
                Completion::ReceiveEnded { file, failure } => {
                    assert_eq!(
                        (file, failure),
                        (SOCKET, Some(IoFailure::OutOfBuffers)),
                        "unexpected end of the multishot receive"
                    );
                    got.out_of_buffers += 1;
                    continue;
                }
            };
            assert!(c.slot_idle, "{c:?}");
            let n = c.result.expect("a datagram");
            let payload = ring.buffer(c.slot).unwrap()[..n].to_vec();
            got.datagrams.push((c.slot, payload, ring.source(c.slot)));
        }
    }
    got
}

#[test]
fn datagrams_land_in_provided_slots_with_their_source() {
    let Some((mut ring, _receiver, sender)) = setup(2) else {
        return;
    };
    sender.send(b"first").unwrap();
    sender.send(b"second datagram").unwrap();
    let got = receive(&mut ring, 2).datagrams;
    assert_eq!(got.len(), 2);
    let mut slots: Vec<u32> = got.iter().map(|g| g.0).collect();
    slots.sort_unstable();
    assert_eq!(slots, vec![0, 1], "each datagram in its own slot");
    assert_eq!(got[0].1, b"first");
    assert_eq!(got[1].1, b"second datagram");
    for g in &got {
        assert_eq!(g.2, Some(sender.local_addr().unwrap()));
        assert_eq!(ring.gro_segment_size(g.0), None);
    }
}

#[test]
fn out_of_buffers_waits_for_one_to_come_back() {
    let Some((mut ring, _receiver, sender)) = setup(1) else {
        return;
    };
    for i in 0..3u8 {
        sender.send(&[i; 10]).unwrap();
    }
    // One buffer: one datagram, then the kernel ends the receive (no buffer left); each time
    // the slot is given back and the receive re-armed, the next queued datagram arrives.
    let mut seen = Vec::new();
    let mut out_of_buffers = 0;
    for _ in 0..3 {
        let got = receive(&mut ring, 1);
        assert_eq!(
            got.datagrams.len(),
            1,
            "a datagram after the buffer came back"
        );
        assert_eq!(got.datagrams[0].0, 0);
        seen.push(got.datagrams[0].1.clone());
        out_of_buffers += got.out_of_buffers;
        ring.provide(0, SOCKET, 2048).unwrap();
    }
    assert_eq!(seen, vec![vec![0u8; 10], vec![1u8; 10], vec![2u8; 10]]);
    assert!(
        out_of_buffers > 0,
        "the receive ended for want of a buffer while the only one was held"
    );
    // A busy slot cannot be provided twice.
    assert!(ring.provide(0, SOCKET, 2048).is_err());
}

#[test]
fn single_shot_receive_still_works_without_multishot() {
    // The path kept for kernels without buffer rings.
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.connect(receiver.local_addr().unwrap()).unwrap();
    let Ok(mut ring) = ring_on(&receiver, 2, 16) else {
        eprintln!("SKIPPED: no io_uring here");
        return;
    };
    assert!(!ring.is_multishot(SOCKET));
    ring.recv(1, SOCKET, 0, 2048).unwrap();
    sender.send(b"one").unwrap();
    let mut done = Vec::new();
    for _ in 0..40 {
        done.extend_from_slice(ring.submit_and_wait(Duration::from_millis(50)).unwrap());
        if !done.is_empty() {
            break;
        }
    }
    assert_eq!(done.len(), 1);
    let Completion::Slot(c) = done[0] else {
        panic!("a single-shot receive completes on its slot: {:?}", done[0]);
    };
    assert_eq!(
        (c.slot, c.op, c.file, c.result),
        (1, Op::Recv, SOCKET, Ok(3))
    );
    assert_eq!(&ring.buffer(1).unwrap()[..3], b"one");
    assert_eq!(ring.source(1), Some(sender.local_addr().unwrap()));
}

#[test]
fn a_slot_whose_operation_cannot_be_queued_is_not_left_claimed() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ring = ring_on(&socket, 5, 4).unwrap();
    // A single-issuer ring refuses submissions from any other thread than its creator's
    // (EEXIST): here, a queue that cannot be flushed when it is full.
    let (mut ring, failed) = std::thread::spawn(move || {
        let mut ring = ring;
        // Four receives fill the four-entry submission queue without submitting.
        for slot in 0..4 {
            ring.recv(slot, SOCKET, 0, 2048).unwrap();
        }
        let failed = ring.recv(4, SOCKET, 0, 2048);
        (ring, failed)
    })
    .join()
    .unwrap();
    if failed.is_ok() {
        eprintln!(
            "SKIPPED a_slot_whose_operation_cannot_be_queued_is_not_left_claimed: this ring \
             takes submissions from any thread (kernel without IORING_SETUP_SINGLE_ISSUER)"
        );
        return;
    }
    assert!(
        ring.buffer(4).is_some(),
        "slot 4 is still claimed after its receive could not be queued ({failed:?})"
    );
    for slot in 0..4 {
        assert!(
            ring.buffer(slot).is_none(),
            "slot {slot} has its receive queued"
        );
    }
    // Back on the ring's own thread, the slot can be used again.
    ring.recv(4, SOCKET, 0, 2048).unwrap();
    assert!(ring.buffer(4).is_none());
}

#[test]
fn a_provided_buffer_offers_exactly_the_length_asked_for() {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.connect(receiver.local_addr().unwrap()).unwrap();
    let mut ring = ring_on(&receiver, 2, 16).unwrap();
    if let Err(e) = ring.enable_multishot(SOCKET, 2) {
        eprintln!("SKIPPED a_provided_buffer_offers_exactly_the_length_asked_for: {e}");
        return;
    }
    assert!(
        ring.provide(1, SOCKET, 2049).is_err(),
        "more than the slot holds"
    );
    ring.provide(0, SOCKET, 100).unwrap();
    let entry = {
        let r = ring.buf_rings[usize::from(SOCKET.0)].as_ref().unwrap();
        // SAFETY: entry 0 of the ring, written by `provide` above.
        unsafe { &*r.entries.as_ptr() }
    };
    assert_eq!(entry.len() as usize, RECV_HEADROOM + 100);
    assert_eq!(ring.receive_capacity(0), Some(100));
    ring.arm_multishot().unwrap();
    // A datagram longer than the room offered is cut by the kernel and reported as too large.
    sender.send(&[7u8; 300]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let done = loop {
        let got: Vec<SlotCompletion> = ring
            .submit_and_wait(Duration::from_millis(50))
            .unwrap()
            .iter()
            .filter_map(|c| match c {
                Completion::Slot(c) => Some(*c),
                Completion::ReceiveEnded { .. } => None,
            })
            .collect();
        if let Some(c) = got.first() {
            break *c;
        }
        assert!(std::time::Instant::now() < deadline, "no completion");
    };
    assert_eq!((done.slot, done.result), (0, Err(IoFailure::Truncated)));
}

#[test]
fn completion_results_are_classified_for_the_data_plane() {
    assert_eq!(outcome(0), Ok(0));
    assert_eq!(outcome(1452), Ok(1452));
    assert_eq!(outcome(-libc::ECANCELED), Err(IoFailure::Cancelled));
    assert_eq!(outcome(-libc::EAGAIN), Err(IoFailure::WouldBlock));
    assert_eq!(outcome(-libc::EINTR), Err(IoFailure::Interrupted));
    // ENOBUFS on a send (socket buffer full) is an error like any other.
    assert_eq!(
        outcome(-libc::ENOBUFS),
        Err(IoFailure::Other(libc::ENOBUFS))
    );
    assert_eq!(
        outcome(-libc::ECONNREFUSED),
        Err(IoFailure::Other(libc::ECONNREFUSED))
    );
    // No panic on a result no kernel gives.
    assert_eq!(outcome(i32::MIN), Err(IoFailure::Other(i32::MIN)));
    for failure in [
        IoFailure::Cancelled,
        IoFailure::WouldBlock,
        IoFailure::Interrupted,
        IoFailure::Other(libc::ECONNREFUSED),
    ] {
        assert_eq!(outcome(-failure.errno()), Err(failure));
    }
    assert_eq!(IoFailure::OutOfBuffers.errno(), libc::ENOBUFS);
    assert_eq!(IoFailure::Truncated.errno(), libc::EMSGSIZE);
    assert!(IoFailure::Other(libc::ECONNREFUSED)
        .to_string()
        .contains("refused"));
}

#[test]
fn a_multishot_receive_that_ends_without_a_buffer_says_why() {
    // No buffer ring and no buffer id in the flags: the end of the receive, not a slot.
    let file = FileIndex::socket(1);
    let ended = |result| reap_multishot(&mut [], &mut [], file, result, 0);
    assert_eq!(
        ended(-libc::ENOBUFS),
        Completion::ReceiveEnded {
            file,
            failure: Some(IoFailure::OutOfBuffers)
        }
    );
    assert_eq!(
        ended(-libc::ECANCELED),
        Completion::ReceiveEnded {
            file,
            failure: Some(IoFailure::Cancelled)
        }
    );
    assert_eq!(
        ended(-libc::EBADF),
        Completion::ReceiveEnded {
            file,
            failure: Some(IoFailure::Other(libc::EBADF))
        }
    );
    assert_eq!(
        ended(0),
        Completion::ReceiveEnded {
            file,
            failure: None
        }
    );
}

/// Waits (up to 2 s) for one datagram on blocking-free `socket`; its bytes and control.
fn next_datagram(socket: &UdpSocket) -> (Vec<u8>, crate::sys::cmsg::ReceivedControl) {
    use std::os::fd::AsFd;
    let mut buf = [0u8; 2048];
    for _ in 0..200 {
        if let Ok((n, control)) = crate::sys::udp::recv_with_control(socket.as_fd(), &mut buf) {
            return (buf[..n].to_vec(), control);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no datagram within 2 s on loopback");
}

#[test]
fn a_send_carries_its_tos_on_every_segment_in_either_family() {
    for (local, ipv6) in [("127.0.0.1:0", false), ("[::1]:0", true)] {
        let Ok(receiver) = crate::sys::udp::bind_reuseport(local.parse().unwrap()) else {
            eprintln!("SKIPPED {local}: cannot bind (no IPv6 on loopback?)");
            continue;
        };
        let sender = UdpSocket::bind(local).unwrap();
        let Ok(mut ring) = ring_on(&sender, 1, 8) else {
            eprintln!("SKIPPED: no io_uring here");
            return;
        };
        ring.buffer(0).unwrap()[..250].fill(7);
        let dest = receiver.local_addr().unwrap();
        // Three datagrams of one UDP_SEGMENT send, ECT(1), DSCP 0.
        let control = SendControl {
            segment_size: Some(100),
            tos: Some(0x01),
        };
        ring.send(0, 0, SOCKET, 0, 250, dest, control).unwrap();
        let mut done = Vec::new();
        for _ in 0..40 {
            done.extend_from_slice(ring.submit_and_wait(Duration::from_millis(50)).unwrap());
            if !done.is_empty() {
                break;
            }
        }
        let Some(Completion::Slot(c)) = done.first() else {
            panic!("the send completes: {done:?}");
        };
        assert_eq!(
            c.result,
            Ok(250),
            "{local}: UDP_SEGMENT and the TOS in one sendmsg"
        );
        for expected in [100, 100, 50] {
            let (bytes, control) = next_datagram(&receiver);
            assert_eq!(bytes.len(), expected, "{local}");
            assert_eq!(control.tos, Some(0x01), "{local}, ipv6 {ipv6}");
        }
    }
}

#[test]
fn the_tos_a_datagram_arrived_with_is_reported_for_its_slot() {
    // Multishot receive into provided buffers.
    let Some((mut ring, receiver, sender)) = setup(2) else {
        return;
    };
    crate::sys::udp::set_receive_tos(&receiver, false).unwrap();
    let send = |bytes: &[u8], tos: u8| {
        use std::os::fd::AsFd;
        let control = SendControl {
            segment_size: None,
            tos: Some(tos),
        };
        crate::sys::udp::send_with_control(sender.as_fd(), bytes, control, false).unwrap();
    };
    send(b"ect0", 0x02);
    send(b"ce", 0x03);
    let got = receive(&mut ring, 2).datagrams;
    assert_eq!(got.len(), 2);
    for (slot, payload, _) in &got {
        let expected = if payload == b"ce" { 0x03 } else { 0x02 };
        assert_eq!(ring.received_tos(*slot), Some(expected), "{payload:?}");
        assert_eq!(ring.gro_segment_size(*slot), None);
    }
    // The single-shot receive of kernels without buffer rings.
    let receiver = crate::sys::udp::bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.connect(receiver.local_addr().unwrap()).unwrap();
    let mut ring = ring_on(&receiver, 2, 16).unwrap();
    ring.recv(1, SOCKET, 0, 2048).unwrap();
    let control = SendControl {
        segment_size: None,
        tos: Some(0x01),
    };
    use std::os::fd::AsFd;
    crate::sys::udp::send_with_control(sender.as_fd(), b"ect1", control, false).unwrap();
    let mut done = Vec::new();
    for _ in 0..40 {
        done.extend_from_slice(ring.submit_and_wait(Duration::from_millis(50)).unwrap());
        if !done.is_empty() {
            break;
        }
    }
    assert!(matches!(done.first(), Some(Completion::Slot(c)) if c.result == Ok(4)));
    assert_eq!(ring.received_tos(1), Some(0x01));
}

#[test]
fn slot_classes_have_their_own_sizes_and_pairs_of_idle_buffers_are_lent_together() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fd = socket.as_raw_fd();
    let classes = [
        SlotClass {
            count: 2,
            bytes: 2048,
            ops: 1,
        },
        SlotClass {
            count: 1,
            bytes: 8192,
            ops: 4,
        },
    ];
    let Ok(mut ring) = Uring::with_slots(fd, &[fd], &classes, 16) else {
        eprintln!("SKIPPED slot_classes_...: no io_uring here");
        return;
    };
    assert_eq!(ring.slot_count(), 3);
    assert_eq!(ring.buffer(1).map(|b| b.len()), Some(2048));
    assert_eq!(ring.buffer(2).map(|b| b.len()), Some(8192));
    // Four operations fit slot 2, a fifth does not.
    let dest = socket.local_addr().unwrap();
    for op in 0..4 {
        ring.send(2, op, SOCKET, 0, 8, dest, SendControl::default())
            .unwrap();
    }
    assert!(ring
        .send(2, 4, SOCKET, 0, 8, dest, SendControl::default())
        .is_err());
    assert!(ring.buffer_pair(0, 2).is_none(), "slot 2 is busy");
    ring.submit_and_wait(Duration::from_secs(1)).unwrap();
    for _ in 0..10 {
        if ring.buffer(2).is_some() {
            break;
        }
        ring.submit_and_wait(Duration::from_millis(100)).unwrap();
    }
    let (a, b) = ring.buffer_pair(2, 0).expect("both idle");
    assert_eq!((a.len(), b.len()), (8192, 2048), "in the order asked");
    a[..4].copy_from_slice(b"abcd");
    b[..4].copy_from_slice(&[1, 2, 3, 4]);
    assert_eq!(&ring.buffer(2).unwrap()[..4], b"abcd");
    assert_eq!(&ring.buffer(0).unwrap()[..4], &[1, 2, 3, 4]);
    assert!(ring.buffer_pair(1, 1).is_none());
    assert!(ring.buffer_pair(0, 3).is_none());
}
