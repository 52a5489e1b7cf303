//! Single datagrams of a batch gathered into `UDP_SEGMENT` sends (without the egress queue),
//! seen on a loopback socket: every datagram arrives, whole and in order, in fewer sends.

use super::*;
use crate::offload::vnet::{VirtioNetHdr, VNET_HDR_LEN};
use std::os::fd::AsFd;

/// A worker without the egress queue (gathering with offloads) whose test peer's endpoint is a
/// fresh loopback socket (reporting the TOS of what arrives), and that socket.
fn gathering_worker(offloads: bool) -> (Worker, UdpSocket) {
    let w = worker_built(offloads, false);
    assert_eq!(w.staging.enabled(), offloads, "gathering is an offload");
    let receiver = peer_at_loopback(&w);
    (w, receiver)
}

/// Puts packet number `i` (its IP ID) with TOS `tos` where a TUN read lands in `slot`, as the
/// mode reads it (after a virtio header with offloads); the read's length and the packet.
fn tun_read(w: &mut Worker, slot: u32, i: u16, tos: u8) -> (usize, Vec<u8>) {
    let n = tun_packet(w, slot);
    let offloads = w.offloads;
    let buf = w.ring.buffer(slot).unwrap();
    let packet = &mut buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n];
    packet[1] = tos;
    packet[4..6].copy_from_slice(&i.to_be_bytes());
    let packet = packet.to_vec();
    if !offloads {
        return (n, packet);
    }
    VirtioNetHdr::NONE.emit(&mut buf[..VNET_HDR_LEN]).unwrap();
    buf[VNET_HDR_LEN..VNET_HDR_LEN + n].copy_from_slice(&packet);
    (VNET_HDR_LEN + n, packet)
}

/// Reads from the TUN slots `0..tos.len()`, the i-th with `tos[i]`, as one batch: each is
/// staged, its slot reading again; then the batch's sends are queued and handed to the
/// kernel. The packets, in order.
fn one_batch(w: &mut Worker, tos: &[u8]) -> Vec<Vec<u8>> {
    let snapshot = w.ctx.table.snapshot();
    let guard = snapshot.guard();
    let mut packets = Vec::new();
    for (i, tos) in tos.iter().enumerate() {
        let slot = i as u32;
        let (n, packet) = tun_read(w, slot, i as u16, *tos);
        packets.push(packet);
        let outcome = w.egress(slot, n, Instant::from_nanos(2), &snapshot, &guard);
        assert!(
            matches!(outcome, Ok(Outcome::Consumed)),
            "packet {i}: staged, its slot free at once"
        );
        w.rearm(slot);
        assert!(w.ring.buffer(slot).is_none(), "slot {slot} reads again");
    }
    assert_eq!(
        w.counters.udp_tx_packets, 0,
        "nothing sent before the batch ends"
    );
    w.flush_staged();
    let staging = w.staging.first;
    for _ in 0..100 {
        w.ring.submit_and_wait(Duration::from_millis(20)).unwrap();
        if w.ring.buffer(staging).is_some() {
            break;
        }
    }
    assert!(w.ring.buffer(staging).is_some(), "the sends completed");
    packets
}

/// Receives `count` datagrams on `receiver`: their bytes and TOS.
fn receive(receiver: &UdpSocket, count: usize) -> Vec<(Vec<u8>, Option<u8>)> {
    let mut got = Vec::new();
    for _ in 0..200 {
        let mut bytes = [0u8; 2048];
        match crate::sys::udp::recv_with_control(receiver.as_fd(), &mut bytes) {
            Ok((n, control)) => got.push((bytes[..n].to_vec(), control.tos)),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
        if got.len() == count {
            break;
        }
    }
    got
}

/// Opens `datagram` with the key the test peer seals under.
fn open(opener: &Keypair, mut datagram: Vec<u8>) -> Vec<u8> {
    let (_, plain) = opener.open(&mut datagram, Instant::from_nanos(3)).unwrap();
    datagram[plain].to_vec()
}

fn twin() -> Keypair {
    let key = zeroize::Zeroizing::new([3u8; 32]);
    Keypair::new(&key, &key, 1, 2, Instant::from_nanos(1), true)
}

#[test]
fn small_reads_of_one_batch_leave_in_one_send_and_arrive_whole_and_in_order() {
    // Gathering is an offload: on with offloads only.
    let offloads = true;
    let (mut w, receiver) = gathering_worker(offloads);
    let packets = one_batch(&mut w, &[0b10; 8]);
    assert_eq!(w.counters.udp_tx_packets, 8, "offloads {offloads}");
    assert_eq!(w.counters.udp_tx_sends, 1, "offloads {offloads}");
    let got = receive(&receiver, 8);
    assert_eq!(got.len(), 8, "offloads {offloads}: every datagram arrives");
    let opener = twin();
    for (i, ((datagram, tos), packet)) in got.into_iter().zip(&packets).enumerate() {
        assert_eq!(tos, Some(0b10), "offloads {offloads}, datagram {i}");
        assert_eq!(
            datagram.len(),
            TRANSPORT_HEADER_LEN + 28 + TAG_LEN,
            "offloads {offloads}, datagram {i}: cut where it was sealed"
        );
        assert_eq!(&open(&opener, datagram), packet, "offloads {offloads}, {i}");
    }
    assert_eq!(
        w.counters.udp_tx_bytes,
        8 * (TRANSPORT_HEADER_LEN + 28 + TAG_LEN) as u64
    );
}

#[test]
fn without_offloads_each_datagram_is_its_own_send() {
    // `offloads = false` switches every offload off, `UDP_SEGMENT` included.
    let (mut w, receiver) = gathering_worker(false);
    let snapshot = w.ctx.table.snapshot();
    let guard = snapshot.guard();
    let mut packets = Vec::new();
    for i in 0..8u16 {
        let slot = u32::from(i);
        let (n, packet) = tun_read(&mut w, slot, i, 0b10);
        packets.push(packet);
        let outcome = w.egress(slot, n, Instant::from_nanos(2), &snapshot, &guard);
        assert!(
            matches!(outcome, Ok(Outcome::Queued)),
            "packet {i}: sent from its slot"
        );
    }
    w.ring.submit_and_wait(Duration::from_millis(20)).unwrap();
    assert_eq!((w.counters.udp_tx_packets, w.counters.udp_tx_sends), (8, 8));
    let got = receive(&receiver, 8);
    let opener = twin();
    assert_eq!(got.len(), 8, "every datagram arrives");
    for ((datagram, _), packet) in got.into_iter().zip(&packets) {
        assert_eq!(&open(&opener, datagram), packet);
    }
}

#[test]
fn datagrams_of_another_tos_leave_in_another_send() {
    // Gathering is an offload: on with offloads only.
    let offloads = true;
    let (mut w, receiver) = gathering_worker(offloads);
    // ECT(0) x3, Not-ECT x2, ECT(0): three sends, each with one outer TOS.
    let tos = [0b10, 0b10, 0b10, 0b00, 0b00, 0b10];
    let packets = one_batch(&mut w, &tos);
    assert_eq!(w.counters.udp_tx_packets, 6, "offloads {offloads}");
    assert_eq!(w.counters.udp_tx_sends, 3, "offloads {offloads}");
    let got = receive(&receiver, 6);
    let opener = twin();
    assert_eq!(got.len(), 6, "offloads {offloads}");
    for (i, (datagram, got_tos)) in got.into_iter().enumerate() {
        assert_eq!(got_tos, Some(tos[i]), "offloads {offloads}, datagram {i}");
        assert_eq!(open(&opener, datagram), packets[i]);
    }
}

#[test]
fn a_batch_without_a_free_staging_slot_sends_from_the_read_slots() {
    let (mut w, receiver) = gathering_worker(true);
    // Every staging slot busy with a send in flight, whose completions are not reaped.
    let dest = receiver.local_addr().unwrap();
    let first = w.staging.first;
    for slot in first..first + crate::server::dataplane::slots::STAGING_SLOTS as u32 {
        let control = crate::sys::cmsg::SendControl::default();
        w.ring
            .send(slot, 0, FileIndex::socket(0), 0, 8, dest, control)
            .unwrap();
    }
    let (n, _) = tun_read(&mut w, 0, 0, 0);
    let snapshot = w.ctx.table.snapshot();
    let guard = snapshot.guard();
    let outcome = w.egress(0, n, Instant::from_nanos(2), &snapshot, &guard);
    assert!(matches!(outcome, Ok(Outcome::Queued)), "sent from its slot");
    assert_eq!((w.counters.udp_tx_packets, w.counters.udp_tx_sends), (1, 1));
}
