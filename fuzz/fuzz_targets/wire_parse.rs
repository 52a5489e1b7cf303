//! Arbitrary bytes through every wire parser. Nothing may panic; whatever parses must emit back
//! to the identical bytes; the classifier and the per-type parsers must agree.
#![no_main]

use concentrator::proto::ip;
use concentrator::proto::wire::{
    self, AddressAssignment, CookieReply, CookieReplyRepr, Initiation, InitiationRepr, MessageType,
    PushConfig, Response, ResponseRepr, Transport, ASSIGNMENT_LEN, MAX_PUSH_PAYLOAD_LEN,
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

    if let Some((src, dst)) = ip::addresses(data) {
        assert_eq!(src.is_ipv4(), dst.is_ipv4());
        let stated = ip::stated_len(data).expect("addresses implies a stated length");
        assert!(stated <= data.len());
    }
    let _ = ip::stated_len(data);
});
