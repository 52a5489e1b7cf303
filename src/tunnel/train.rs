//! Gathering single sealed datagrams into `UDP_SEGMENT` sends: a batch of TUN reads that each
//! sealed to one datagram (a small packet, not a super-packet) is laid out back to back in a
//! staging buffer, and consecutive datagrams to the same destination, with the same outer TOS
//! and the same length (the last of a send may be shorter) leave in one send, which the kernel
//! cuts into datagrams again (its UDP GSO): one trip through the kernel's UDP send path for up
//! to [`SEGMENTS_PER_SEND`] datagrams instead of one each.
//!
//! [`TrainBuilder`] only decides where each datagram goes and which sends carry them; the
//! caller copies the bytes and issues the sends. Nothing is allocated: the sends of one staging
//! buffer are at most `N`.

use super::egress::{BYTES_PER_SEND, SEGMENTS_PER_SEND};

/// One send of a staging buffer: `len` bytes from `offset`, `datagrams` datagrams to `dest`,
/// all `segment` bytes long but the last, which may be shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Train<D> {
    /// Where the datagrams go.
    pub dest: D,
    /// The outer TOS byte / traffic class of every datagram of the send.
    pub tos: u8,
    /// Where the first datagram starts in the staging buffer.
    pub offset: usize,
    /// Bytes of all its datagrams.
    pub len: usize,
    /// The length of each datagram but the last.
    pub segment: usize,
    /// Datagrams it carries.
    pub datagrams: usize,
}

impl<D> Train<D> {
    /// The `UDP_SEGMENT` size, when the send carries more than one datagram (a single one is
    /// a plain send).
    pub fn segment_size(&self) -> Option<u16> {
        (self.datagrams > 1).then_some(self.segment as u16)
    }

    /// Whether a datagram of `len` bytes to `dest` with `tos` may end this send: same
    /// destination and TOS (one address and one control message per send), not longer than
    /// the others and none shorter before it (`UDP_SEGMENT` cuts at the segment size; only
    /// the last may be shorter), within the kernel's limits of datagrams and bytes per send.
    fn takes(&self, dest: &D, len: usize, tos: u8) -> bool
    where
        D: PartialEq,
    {
        let last_was_short = self.len < self.datagrams * self.segment;
        self.dest == *dest
            && self.tos == tos
            && !last_was_short
            && len <= self.segment
            && self.datagrams < SEGMENTS_PER_SEND
            && self.len + len <= BYTES_PER_SEND
    }
}

/// Lays out datagrams back to back in a staging buffer of `capacity` bytes and groups them
/// into at most `N` sends, in the order they came ([`TrainBuilder::place`]).
#[derive(Debug, Clone)]
pub struct TrainBuilder<D: Copy, const N: usize> {
    capacity: usize,
    used: usize,
    trains: [Option<Train<D>>; N],
    count: usize,
}

impl<D: Copy + PartialEq, const N: usize> TrainBuilder<D, N> {
    /// An empty builder for a staging buffer of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        TrainBuilder {
            capacity,
            used: 0,
            trains: [None; N],
            count: 0,
        }
    }

    /// Places a datagram of `len` bytes to `dest` with outer TOS `tos`: it joins the last
    /// send when that can take it, else starts a new one. Returns where to copy it in the
    /// staging buffer, or `None` when the buffer or the sends are used up (the caller sends
    /// what is placed, [`TrainBuilder::clear`]s, and places it again) or `len` is 0.
    pub fn place(&mut self, dest: D, len: usize, tos: u8) -> Option<usize> {
        if len == 0 || self.used + len > self.capacity {
            return None;
        }
        let offset = self.used;
        match self
            .count
            .checked_sub(1)
            .and_then(|i| self.trains[i].as_mut())
        {
            Some(last) if last.takes(&dest, len, tos) => {
                last.len += len;
                last.datagrams += 1;
            }
            _ => {
                let free = self.trains.get_mut(self.count)?;
                *free = Some(Train {
                    dest,
                    tos,
                    offset,
                    len,
                    segment: len,
                    datagrams: 1,
                });
                self.count += 1;
            }
        }
        self.used += len;
        Some(offset)
    }

    /// The sends, in order.
    pub fn trains(&self) -> impl Iterator<Item = &Train<D>> + '_ {
        self.trains[..self.count].iter().flatten()
    }

    /// Whether nothing is placed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Forgets what was placed (once it is sent).
    pub fn clear(&mut self) {
        self.trains[..self.count].fill(None);
        self.count = 0;
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Builder = TrainBuilder<u8, 8>;

    /// Places `(dest, len, tos)` in order; the offsets.
    fn place_all(b: &mut Builder, datagrams: &[(u8, usize, u8)]) -> Vec<Option<usize>> {
        datagrams
            .iter()
            .map(|&(dest, len, tos)| b.place(dest, len, tos))
            .collect()
    }

    /// The sends as (dest, tos, offset, len, segment size, datagrams).
    fn sends(b: &Builder) -> Vec<(u8, u8, usize, usize, Option<u16>, usize)> {
        b.trains()
            .map(|t| {
                (
                    t.dest,
                    t.tos,
                    t.offset,
                    t.len,
                    t.segment_size(),
                    t.datagrams,
                )
            })
            .collect()
    }

    #[test]
    fn equal_datagrams_to_one_destination_are_one_send() {
        let mut b = Builder::new(64 * 1024);
        let offsets = place_all(&mut b, &[(1, 92, 2); 5]);
        assert_eq!(
            offsets,
            vec![Some(0), Some(92), Some(184), Some(276), Some(368)]
        );
        assert_eq!(sends(&b), vec![(1, 2, 0, 460, Some(92), 5)]);
    }

    #[test]
    fn one_datagram_is_a_plain_send() {
        let mut b = Builder::new(2048);
        assert_eq!(b.place(1, 92, 0), Some(0));
        assert_eq!(sends(&b), vec![(1, 0, 0, 92, None, 1)]);
    }

    #[test]
    fn a_shorter_datagram_ends_the_send() {
        let mut b = Builder::new(64 * 1024);
        place_all(&mut b, &[(1, 100, 0), (1, 100, 0), (1, 60, 0), (1, 60, 0)]);
        // The short one is the first send's last; the next starts a send of its own.
        assert_eq!(
            sends(&b),
            vec![(1, 0, 0, 260, Some(100), 3), (1, 0, 260, 60, None, 1)]
        );
    }

    #[test]
    fn a_longer_datagram_starts_a_new_send() {
        let mut b = Builder::new(64 * 1024);
        place_all(&mut b, &[(1, 60, 0), (1, 60, 0), (1, 100, 0), (1, 100, 0)]);
        assert_eq!(
            sends(&b),
            vec![(1, 0, 0, 120, Some(60), 2), (1, 0, 120, 200, Some(100), 2)]
        );
    }

    #[test]
    fn another_destination_or_tos_breaks_the_send() {
        let mut b = Builder::new(64 * 1024);
        place_all(
            &mut b,
            &[(1, 92, 0), (2, 92, 0), (2, 92, 0), (2, 92, 1), (1, 92, 1)],
        );
        // One TOS and one destination per send: ECT(1) and Not-ECT never share one.
        assert_eq!(
            sends(&b),
            vec![
                (1, 0, 0, 92, None, 1),
                (2, 0, 92, 184, Some(92), 2),
                (2, 1, 276, 92, None, 1),
                (1, 1, 368, 92, None, 1),
            ]
        );
    }

    #[test]
    fn a_send_holds_at_most_segments_per_send_datagrams() {
        let mut b = TrainBuilder::<u8, 4>::new(64 * 1024);
        for _ in 0..SEGMENTS_PER_SEND + 3 {
            assert!(b.place(1, 60, 0).is_some());
        }
        let datagrams: Vec<_> = b.trains().map(|t| t.datagrams).collect();
        assert_eq!(datagrams, vec![SEGMENTS_PER_SEND, 3]);
        assert_eq!(
            b.trains().nth(1).map(|t| t.offset),
            Some(SEGMENTS_PER_SEND * 60)
        );
    }

    #[test]
    fn a_send_holds_at_most_bytes_per_send() {
        let mut b = TrainBuilder::<u8, 4>::new(4 * BYTES_PER_SEND);
        // 1500-byte datagrams: 43 fit in BYTES_PER_SEND (65 487), the 44th does not.
        for _ in 0..50 {
            assert!(b.place(1, 1500, 0).is_some());
        }
        let trains: Vec<_> = b.trains().copied().collect();
        assert_eq!(trains.len(), 2);
        assert_eq!(trains[0].datagrams, BYTES_PER_SEND / 1500);
        assert!(trains.iter().all(|t| t.len <= BYTES_PER_SEND));
        assert_eq!(trains[1].offset, trains[0].len);
        assert_eq!(trains.iter().map(|t| t.datagrams).sum::<usize>(), 50);
    }

    #[test]
    fn a_full_buffer_or_too_many_sends_refuse_until_cleared() {
        let mut b = TrainBuilder::<u8, 2>::new(250);
        assert_eq!(b.place(1, 100, 0), Some(0));
        assert_eq!(b.place(1, 100, 0), Some(100));
        assert_eq!(b.place(1, 100, 0), None, "only 50 bytes left");
        assert_eq!(b.place(2, 50, 0), Some(200));
        assert_eq!(b.trains().count(), 2);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.place(1, 100, 0), Some(0));
        // Two sends at most: a third destination waits for the next buffer.
        let mut b = TrainBuilder::<u8, 2>::new(64 * 1024);
        assert_eq!(b.place(1, 10, 0), Some(0));
        assert_eq!(b.place(2, 10, 0), Some(10));
        assert_eq!(b.place(3, 10, 0), None);
        assert_eq!(
            b.place(2, 10, 0),
            Some(20),
            "the last send still takes more"
        );
        assert_eq!(b.place(0, 0, 0), None, "nothing to place");
    }

    #[test]
    fn every_send_fits_udp_segment_rules() {
        // A pseudo-random mix of lengths, destinations and TOS values: every send's
        // datagrams but the last are exactly `segment` bytes, its bytes are contiguous and
        // follow the previous send's, and every datagram is placed once, in order.
        let mut seed = 0x2545_f491_u32;
        let mut next = |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % n
        };
        let mut b = TrainBuilder::<u8, 64>::new(256 * 1024);
        let mut placed = Vec::new();
        for _ in 0..2000 {
            let len = [60, 92, 92, 92, 1452][next(5) as usize];
            let (dest, tos) = (next(2) as u8, next(2) as u8 * 2);
            match b.place(dest, len, tos) {
                Some(offset) => placed.push((offset, len, dest, tos)),
                None => break,
            }
        }
        let mut at = 0;
        let mut i = 0;
        for t in b.trains() {
            assert_eq!(t.offset, at);
            assert!(t.datagrams <= SEGMENTS_PER_SEND && t.len <= BYTES_PER_SEND);
            let mine = &placed[i..i + t.datagrams];
            for (k, &(offset, len, dest, tos)) in mine.iter().enumerate() {
                assert_eq!((dest, tos), (t.dest, t.tos));
                assert_eq!(offset, t.offset + k * t.segment);
                if k + 1 < mine.len() {
                    assert_eq!(len, t.segment);
                } else {
                    assert!(len <= t.segment);
                }
            }
            at += t.len;
            i += t.datagrams;
        }
        assert_eq!(i, placed.len());
    }
}
