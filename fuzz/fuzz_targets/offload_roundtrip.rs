//! Arbitrary bytes through the offload code (TSO/USO split, GRO-style coalescing), via
//! `concentrator::offload::fuzz_roundtrip`.
//!
//! Input layout (see that function's documentation): a 10-byte virtio-net header, one byte
//! selecting the MTU (68 + 64 * byte), then an IP packet (a super-packet when the header says
//! GSO). Invariants, asserted inside: nothing panics; every planned segment is written and fits
//! the MTU; coalescing the segments and splitting the result again gives back the same
//! segments; raw packets pushed into a coalescer re-split into as many.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    concentrator::offload::fuzz_roundtrip(data);
});
