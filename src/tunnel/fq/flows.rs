//! The fair queue's storage, allocated once: a slab of packet entries linked by index into
//! per-flow FIFOs, and the flows linked by index into the new-flows and old-flows lists
//! (RFC 8290 §5.1).

use super::codel::Codel;
use super::{Packet, Queued};
use crate::proto::time::Instant;

/// "No entry" / "no flow" in a link.
pub(super) const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    queued: Queued,
    /// The next entry of the same flow, or of the free list.
    next: u32,
}

/// Packet entries, preallocated; free ones form a list.
pub(super) struct Slab {
    entries: Vec<Entry>,
    free: u32,
    used: u32,
}

impl Slab {
    pub fn new(capacity: u32) -> Self {
        let vacant = Queued {
            packet: Packet {
                slot: 0,
                len: 0,
                flow_hash: 0,
                ecn_capable: false,
            },
            enqueued: Instant::default(),
        };
        let entries = (0..capacity)
            .map(|i| Entry {
                queued: vacant,
                next: if i + 1 < capacity { i + 1 } else { NIL },
            })
            .collect();
        Slab {
            entries,
            free: if capacity > 0 { 0 } else { NIL },
            used: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.free == NIL
    }

    pub fn used(&self) -> u32 {
        self.used
    }

    fn insert(&mut self, queued: Queued) -> Option<u32> {
        let at = self.free;
        let entry = self.entries.get_mut(at as usize)?;
        self.free = entry.next;
        *entry = Entry { queued, next: NIL };
        self.used += 1;
        Some(at)
    }

    fn remove(&mut self, at: u32) -> Entry {
        let entry = &mut self.entries[at as usize];
        let taken = *entry;
        entry.next = self.free;
        self.free = at;
        self.used -= 1;
        taken
    }
}

/// One flow's packets, oldest first.
#[derive(Debug, Clone, Copy)]
pub(super) struct PacketList {
    head: u32,
    tail: u32,
    pub packets: u32,
    pub bytes: u64,
}

impl Default for PacketList {
    fn default() -> Self {
        PacketList {
            head: NIL,
            tail: NIL,
            packets: 0,
            bytes: 0,
        }
    }
}

impl PacketList {
    /// Appends a packet; gives it back if the slab is full.
    pub fn push(&mut self, slab: &mut Slab, queued: Queued) -> Result<(), Queued> {
        let at = slab.insert(queued).ok_or(queued)?;
        if self.tail == NIL {
            self.head = at;
        } else {
            slab.entries[self.tail as usize].next = at;
        }
        self.tail = at;
        self.packets += 1;
        self.bytes += u64::from(queued.packet.len);
        Ok(())
    }

    /// Takes the oldest packet off, freeing its entry.
    pub fn pop(&mut self, slab: &mut Slab) -> Option<Queued> {
        if self.head == NIL {
            return None;
        }
        let entry = slab.remove(self.head);
        self.head = entry.next;
        if self.head == NIL {
            self.tail = NIL;
        }
        self.packets -= 1;
        self.bytes -= u64::from(entry.queued.packet.len);
        Some(entry.queued)
    }
}

/// Which scheduling list a flow is on (RFC 8290 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Membership {
    /// On neither list: its next packet makes it a new flow.
    #[default]
    Idle,
    New,
    Old,
}

/// One bucket of the hash: a flow's queue, its CoDel state and its DRR deficit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Flow {
    pub queue: PacketList,
    pub codel: Codel,
    /// Bytes it may still send in this round (RFC 8290 §4.2); negative after a packet larger
    /// than what was left.
    pub deficit: i64,
    pub membership: Membership,
    /// The next flow on the same list.
    next: u32,
}

/// A list of flows (new or old), linked through [`Flow`]'s `next`; flows join at the tail and
/// leave from the head only.
#[derive(Debug, Clone, Copy)]
pub(super) struct FlowList {
    head: u32,
    tail: u32,
}

impl Default for FlowList {
    fn default() -> Self {
        FlowList {
            head: NIL,
            tail: NIL,
        }
    }
}

impl FlowList {
    pub fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }

    pub fn push_back(&mut self, flows: &mut [Flow], flow: u32, membership: Membership) {
        flows[flow as usize].next = NIL;
        flows[flow as usize].membership = membership;
        if self.tail == NIL {
            self.head = flow;
        } else {
            flows[self.tail as usize].next = flow;
        }
        self.tail = flow;
    }

    /// Takes the head flow off the list (it is then on none).
    pub fn pop_front(&mut self, flows: &mut [Flow]) -> Option<u32> {
        let flow = self.front()?;
        self.head = flows[flow as usize].next;
        if self.head == NIL {
            self.tail = NIL;
        }
        flows[flow as usize].membership = Membership::Idle;
        Some(flow)
    }
}
