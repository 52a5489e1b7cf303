//! Body of [`super::fuzz_roundtrip`]: drives split and coalesce with arbitrary bytes and checks
//! the invariants that hold for every input.

use super::{Coalescer, GsoTypes, Push, Segmenter, VirtioNetHdr, VNET_HDR_LEN};

const MAX: usize = 65535;

pub(crate) fn roundtrip(data: &[u8]) {
    let Some(hdr) = VirtioNetHdr::parse(data) else {
        return;
    };
    let Some((&sel, packet)) = data[VNET_HDR_LEN..].split_first() else {
        return;
    };
    let mtu = 68 + usize::from(sel) * 64;
    let mut seg_buf = [0u8; MAX];
    let mut a = [0u8; MAX];
    let mut b = [0u8; MAX];
    let mut coalesce_buf = [0u8; VNET_HDR_LEN + MAX];

    if let Ok(seg) = Segmenter::new(&hdr, packet, mtu) {
        let n = seg.segment_count();
        assert!(n >= 1);
        let mut c = Coalescer::new(&mut coalesce_buf, GsoTypes::ALL);
        // Index of the first segment in the pending super-packet.
        let mut base = 0;
        for i in 0..n {
            let len = seg
                .write_segment(i, &mut seg_buf)
                .expect("planned segment writes");
            assert_eq!(len, seg.segment_len(i));
            assert!(len <= mtu.min(MAX));
            match c.try_push(&seg_buf[..len]) {
                Push::Started | Push::Merged => {}
                Push::Rejected => {
                    check_resplit(&mut c, &seg, base, mtu, &mut a, &mut b);
                    base = i;
                    assert_eq!(c.try_push(&seg_buf[..len]), Push::Started);
                }
                Push::TooLarge => unreachable!("segments fit the coalescer"),
            }
        }
        check_resplit(&mut c, &seg, base, mtu, &mut a, &mut b);
        assert_eq!(
            seg.write_segment(n, &mut seg_buf),
            Err(super::OffloadError::SegmentIndex)
        );
    }

    // Raw packets: `packet` cut into pieces, each length given by a byte, pushed in order.
    let mut c = Coalescer::new(&mut coalesce_buf, GsoTypes::ALL);
    let mut rest = packet;
    let mut pushed = 0usize;
    while let Some((&l, tail)) = rest.split_first() {
        let l = (usize::from(l) * 8).min(tail.len());
        let (p, tail) = tail.split_at(l);
        rest = tail;
        match c.try_push(p) {
            Push::Started | Push::Merged => pushed += 1,
            Push::Rejected => {
                check_raw(&mut c, pushed, &mut a);
                pushed = 0;
                assert_eq!(c.try_push(p), Push::Started);
                pushed += 1;
            }
            Push::TooLarge => unreachable!("packets are shorter than the coalescer"),
        }
    }
    check_raw(&mut c, pushed, &mut a);
}

/// Finishes `c`, whose packets were segments `base..` of `seg`, and checks that splitting the
/// result again gives back exactly those segments.
fn check_resplit(
    c: &mut Coalescer<'_>,
    seg: &Segmenter<'_>,
    base: usize,
    mtu: usize,
    a: &mut [u8],
    b: &mut [u8],
) {
    let Some(out) = c.finish() else { return };
    let again = Segmenter::new(&out.hdr, out.packet(), mtu).expect("own output re-splits");
    assert_eq!(again.segment_count(), out.segments);
    for k in 0..out.segments {
        let la = again.write_segment(k, a).expect("re-split segment");
        let lb = seg.write_segment(base + k, b).expect("original segment");
        if out.segments == 1 {
            // A lone packet is only trimmed to its IP length (a non-GSO input may carry
            // trailing bytes); our GSO segments never do.
            assert!(la <= lb);
            assert_eq!(a[..la], b[..la], "lone packet changed");
        } else {
            assert_eq!(a[..la], b[..lb], "segment {k} differs after coalesce+split");
        }
    }
}

/// Finishes `c` after `pushed` raw packets and checks the result re-splits into as many.
fn check_raw(c: &mut Coalescer<'_>, pushed: usize, a: &mut [u8]) {
    let Some(out) = c.finish() else {
        assert_eq!(pushed, 0);
        return;
    };
    assert_eq!(out.segments, pushed);
    assert_eq!(VirtioNetHdr::parse(out.frame), Some(out.hdr));
    if out.segments > 1 {
        let again = Segmenter::new(&out.hdr, out.packet(), MAX).expect("own output re-splits");
        assert_eq!(again.segment_count(), out.segments);
        for k in 0..out.segments {
            again.write_segment(k, a).expect("re-split segment");
        }
    }
}
