//! Arbitrary bytes through the WireGuard UAPI framing and `set` parser (what any local client
//! of the UAPI socket may send). Nothing may panic; a framed operation lies inside the input;
//! whatever parses must format back to text that parses to the same request.
#![no_main]

use concentrator::ops::uapi::protocol::{format_set, frame, parse_get, parse_set, Framed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Framing, from scratch and resumed at every split a reader could have made.
    let whole = frame(data, 0);
    for seen in [1, data.len() / 2, data.len().saturating_sub(1)] {
        if seen <= data.len() && matches!(frame(&data[..seen], 0), Framed::NeedMore) {
            assert_eq!(frame(data, seen), whole, "resumed framing differs");
        }
    }
    match whole {
        Framed::Get { consumed } | Framed::GetTrailing { consumed } => {
            assert!(consumed <= data.len())
        }
        Framed::Set { body, consumed } => {
            assert!(consumed <= data.len() && body.len() < consumed);
            check_set(body);
        }
        Framed::NeedMore | Framed::Unknown => {}
    }
    // The body parser on its own takes any bytes.
    check_set(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_get(text);
    }
});

fn check_set(body: &[u8]) {
    if let Ok(request) = parse_set(body) {
        let text = format_set(&request);
        let Framed::Set { body, consumed } = frame(text.as_bytes(), 0) else {
            panic!("a formatted set does not frame");
        };
        assert_eq!(consumed, text.len());
        assert_eq!(parse_set(body).expect("formatted set parses"), request);
    }
}
