//! The datagrams of one GRO receive opened together: a bulk sender's datagrams reach the
//! socket as one receive of equal-sized datagrams, nearly always all for one receiver index,
//! and their session can open them several at a time ([`Session::decrypt_train`]); what
//! becomes of each is then decided as [`Gate::decide`] would have decided it.
//!
//! [`Session::decrypt_train`]: crate::proto::session::Session::decrypt_train

use super::{Arrival, Decision, DropReason, Gate};
use crate::proto::session::{Received, MAX_TRAIN};
use crate::proto::time::Instant;
use crate::proto::wire;
use crate::server::session_table::{PeerEntry, TableGuard, TableSnapshot};

/// What [`Gate::open_train`] found for each datagram of a receive, for
/// [`Gate::decide_opened`] to finish.
pub struct OpenedTrain<'t> {
    /// The peer every datagram named.
    peer: &'t PeerEntry,
    /// What opening datagram i gave; taken by [`Gate::decide_opened`].
    results: [Option<Result<Received, DropReason>>; MAX_TRAIN],
}

impl Gate {
    /// Opens the datagrams of one receive together (`datagrams`, `stride` bytes each, the
    /// last one what is left) when there are at least two, at most [`MAX_TRAIN`], and every
    /// one is a transport message for the same receiver index of a known peer. Otherwise
    /// `None`, and each datagram goes through [`Gate::decide`] alone.
    pub fn open_train<'t>(
        &self,
        datagrams: &mut [u8],
        stride: usize,
        now: Instant,
        table: &'t TableSnapshot,
        guard: &'t TableGuard<'_>,
    ) -> Option<OpenedTrain<'t>> {
        if stride == 0 || datagrams.len() <= stride || datagrams.len() > stride * MAX_TRAIN {
            return None;
        }
        let index = wire::transport_receiver_index(datagrams)?;
        let same_index = datagrams
            .chunks(stride)
            .all(|d| wire::transport_receiver_index(d) == Some(index));
        if !same_index {
            return None;
        }
        let peer = table.by_index(index, guard)?;
        let mut results = std::array::from_fn(|_| None);
        peer.session
            .decrypt_train(index, datagrams, stride, now, |i, result| {
                results[i] = Some(result.map_err(DropReason::from));
            });
        Some(OpenedTrain { peer, results })
    }

    /// Decides what becomes of datagram `i` of a receive (`datagram`, arrived as `arrival`
    /// says) that [`Gate::open_train`] opened as `train`, as [`Gate::decide`] would have for
    /// it alone; without a train, [`Gate::decide`] itself.
    pub fn decide_opened<'t>(
        &mut self,
        train: Option<&mut OpenedTrain<'t>>,
        i: usize,
        datagram: &mut [u8],
        arrival: Arrival,
        table: &'t TableSnapshot,
        guard: &'t TableGuard<'_>,
    ) -> Decision<'t> {
        let opened = train.and_then(|t| Some((t.peer, t.results.get_mut(i)?.take()?)));
        match opened {
            Some((peer, Ok(received))) => self
                .accept_opened(datagram, peer, received, arrival, table, guard)
                .unwrap_or_else(Decision::Drop),
            Some((_, Err(why))) => Decision::Drop(why),
            // No train, not part of it (or asked twice): on its own.
            None => self.decide(datagram, arrival, table, guard),
        }
    }
}
