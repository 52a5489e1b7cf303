//! The outer header's ECN field on what the worker sends (RFC 6040 §4.1), seen on a loopback
//! socket that reports it.

use super::*;
use crate::offload::vnet::{VirtioNetHdr, VNET_HDR_LEN};
use std::os::fd::AsFd;

#[test]
fn a_tun_packet_leaves_with_its_ecn_field_on_the_outer_header() {
    for offloads in [false, true] {
        let mut w = worker_with(offloads);
        let receiver = peer_at_loopback(&w);
        let snapshot = w.ctx.table.snapshot();
        let guard = snapshot.guard();
        // CE, ECT(0), ECT(1), Not-ECT under DSCP EF: only the ECN bits go out.
        for ecn in [0b11u8, 0b10, 0b01, 0b00] {
            let n = tun_packet(&mut w, 0);
            let buf = w.ring.buffer(0).unwrap();
            buf[TRANSPORT_HEADER_LEN + 1] = (46 << 2) | ecn;
            let n = if offloads {
                // An offload read: a virtio header, then the packet.
                let packet = buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n].to_vec();
                VirtioNetHdr::NONE.emit(&mut buf[..VNET_HDR_LEN]).unwrap();
                buf[VNET_HDR_LEN..VNET_HDR_LEN + n].copy_from_slice(&packet);
                VNET_HDR_LEN + n
            } else {
                n
            };
            let outcome = w.egress(0, n, Instant::from_nanos(2), &snapshot, &guard);
            assert!(
                matches!(outcome, Ok(Outcome::Queued)),
                "offloads {offloads}"
            );
            let mut received = None;
            for _ in 0..100 {
                let _ = w.ring.submit_and_wait(Duration::from_millis(20)).unwrap();
                let mut bytes = [0u8; 256];
                if let Ok(got) = crate::sys::udp::recv_with_control(receiver.as_fd(), &mut bytes) {
                    received = Some(got.1);
                    break;
                }
            }
            let control = received.expect("the sealed datagram arrives on loopback");
            assert_eq!(control.tos, Some(ecn), "offloads {offloads}");
        }
    }
}
