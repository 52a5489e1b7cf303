//! Arbitrary bytes through every wire parser. Nothing may panic; whatever parses must emit back
//! to the identical bytes; the classifier and the per-type parsers must agree.
#![no_main]

use concentrator::proto::wire::{
    self, AddressAssignment, CookieReply, CookieReplyRepr, Initiation, InitiationRepr, IpPacket,
    MessageType, PushConfig, Response, ResponseRepr, Transport, ASSIGNMENT_LEN,
    MAX_PUSH_PAYLOAD_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ty = wire::message_type(data);

    let initiation = Initiation::new_checked(data).and_then(|p| InitiationRepr::parse(&p));
    if let Ok(repr) = &initiation {
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Initiation::new_unchecked(&mut out[..]));
        assert_eq!(out, data, "initiation round trip");
    }
    assert_eq!(initiation.is_ok(), ty == Ok(MessageType::Initiation));

    let response = Response::new_checked(data).and_then(|p| ResponseRepr::parse(&p));
    if let Ok(repr) = &response {
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Response::new_unchecked(&mut out[..]));
        assert_eq!(out, data, "response round trip");
    }
    assert_eq!(response.is_ok(), ty == Ok(MessageType::Response));

    let cookie = CookieReply::new_checked(data).and_then(|p| CookieReplyRepr::parse(&p));
    if let Ok(repr) = &cookie {
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut CookieReply::new_unchecked(&mut out[..]));
        assert_eq!(out, data, "cookie reply round trip");
    }
    assert_eq!(cookie.is_ok(), ty == Ok(MessageType::CookieReply));

    let index = wire::transport_receiver_index(data);
    assert_eq!(index.is_some(), ty == Ok(MessageType::Transport));
    if let Ok(t) = Transport::new_checked(data) {
        let header_ok = t.check_header().is_ok();
        // Every accessor of a checked view is in bounds.
        let (ri, counter) = (t.receiver_index(), t.counter());
        let total = t.header().len() + t.payload().len() + t.tag().len();
        assert_eq!(total, data.len());
        assert_eq!(t.sealed().len(), t.payload().len() + t.tag().len());
        if header_ok {
            assert_eq!(index, Some(ri));
            // The header writer reproduces a valid header.
            let mut h = [0u8; wire::TRANSPORT_HEADER_LEN];
            wire::write_transport_header(&mut h, ri, counter);
            assert_eq!(&h[..], &data[..wire::TRANSPORT_HEADER_LEN]);
        }
        // Mutable accessors too.
        let mut copy = data.to_vec();
        let mut t = Transport::new_unchecked(&mut copy[..]);
        let _ = t.payload_mut().len() + t.tag_mut().len() + t.sealed_mut().len();
        let _ = t.split_mut();
    }

    let push_index = wire::push_receiver_index(data);
    assert_eq!(push_index.is_some(), ty == Ok(MessageType::Push));
    // Unknown entry kinds are skipped, so what emits back is the known part, which must parse
    // to the same value.
    if let Ok(push) = PushConfig::parse(data) {
        let mut out = [0u8; MAX_PUSH_PAYLOAD_LEN];
        let n = push.emit(&mut out);
        assert_eq!(n, push.buffer_len());
        assert_eq!(PushConfig::parse(&out[..n]), Ok(push), "push round trip");
    }

    for chunk in [data, data.get(..ASSIGNMENT_LEN).unwrap_or(data)] {
        if let Ok(a) = AddressAssignment::parse(chunk) {
            let mut out = [0u8; ASSIGNMENT_LEN];
            a.emit(&mut out);
            assert_eq!(&out[..], chunk, "assignment round trip");
            assert_eq!(a.buffer_len(), ASSIGNMENT_LEN);
        }
    }

    // The IP view: every accessor of a checked view is in bounds and every length within the
    // buffer, also for the view that takes the buffer's length as the packet's.
    let checked = IpPacket::new_checked(data);
    let whole = IpPacket::new_checked_ignoring_length(data);
    if checked.is_ok() {
        assert!(whole.is_ok(), "a checked packet has a checked header");
    }
    for ip in [checked, whole].into_iter().flatten() {
        let (src, dst) = (ip.src(), ip.dst());
        assert_eq!(src.is_ipv6(), ip.is_v6());
        assert_eq!(dst.is_ipv6(), ip.is_v6());
        assert!(ip.header_len() <= ip.total_len());
        assert!(ip.total_len() <= data.len());
        assert_eq!(ip.packet().len(), ip.total_len());
        let _ = (ip.ident(), ip.verify_checksum(), ip.header());
        if let Ok(layout) = ip.layout() {
            assert!(layout.l4_offset >= ip.header_len());
            assert!(layout.l4_offset <= ip.total_len());
            let _ = ip.pseudo_header_sum(layout.protocol, ip.total_len() - layout.l4_offset);
        }
    }
});
