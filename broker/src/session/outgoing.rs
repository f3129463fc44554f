//! The QoS 1/2 messages sent to a client and not yet acknowledged, with the packet ids they
//! use: owned by the connection holding the session, kept with the session when it goes
//! offline, and resent in order when a connection resumes it. For a persistent session with a
//! data directory each change is written to the session's [`Journal`] as it happens: the packet
//! id a delivery was sent with, its PUBREC, its end.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;

use crate::codec::QoS;
use crate::router::Delivery;
use crate::store::Journal;

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone)]
pub enum InFlight {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL sent; waiting for PUBCOMP. With the delivery's journal number, if it was stored.
    Released(Option<NonZeroU32>),
    /// PUBLISH sent on an earlier connection of a resumed session and not yet resent on this
    /// one: it goes again (DUP) when the client's Receive Maximum has room (§4.9: the send quota
    /// starts afresh with each connection), before anything new.
    Unsent(Delivery),
}

/// Outgoing QoS 1/2 messages awaiting acknowledgement, in the order they were sent (which is the
/// order they must be resent in), with the packet ids they use.
#[derive(Debug, Default)]
pub struct Outgoing {
    entries: VecDeque<(u16, InFlight)>,
    last_id: u16,
    /// How many entries are [`InFlight::Unsent`] (at most 65,535 packet ids).
    unsent: u32,
    /// Whether an id was once taken out of turn (the ids wrapped around to the oldest entry
    /// still in flight). Until then the entries' ids follow each other in the order they were
    /// given out, front to back, all of them from the front's up to `last_id`: the id after
    /// `last_id` is free unless it is the front's, and giving it out is O(1) however large the
    /// window. Out of turn, ids are looked for among the entries until they are all gone.
    out_of_turn: bool,
    /// The session's journal in the data directory, when it is persistent and there is one.
    journal: Option<Arc<Journal>>,
}

impl Outgoing {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries that count against the client's Receive Maximum on this connection: all but
    /// those waiting to be resent.
    pub fn in_window(&self) -> usize {
        self.entries.len() - self.unsent as usize
    }

    /// Whether PUBLISHes of an earlier connection wait to be resent.
    pub fn has_unsent(&self) -> bool {
        self.unsent > 0
    }

    /// A new connection resumed the session: every PUBLISH in flight is to be sent again, as its
    /// window allows (PUBRELs are resent at once, see [`Outgoing::iter`]).
    pub fn resume(&mut self) {
        for (_, state) in self.entries.iter_mut() {
            if let InFlight::Published(delivery) = state {
                *state = InFlight::Unsent(delivery.clone());
                self.unsent += 1;
            }
        }
    }

    /// The oldest PUBLISH waiting to be resent, now marked sent: its packet id and delivery.
    pub fn take_unsent(&mut self) -> Option<(u16, Delivery)> {
        if self.unsent == 0 {
            return None;
        }
        let (id, state) = self
            .entries
            .iter_mut()
            .find(|(_, state)| matches!(state, InFlight::Unsent(_)))?;
        let InFlight::Unsent(delivery) = state else {
            return None;
        };
        let delivery = delivery.clone();
        *state = InFlight::Published(delivery.clone());
        self.unsent -= 1;
        Some((*id, delivery))
    }

    /// Removes the entry at `index`, keeping the count of unsent ones (and the journal).
    fn remove_at(&mut self, index: usize) -> bool {
        self.forget(index);
        match self.entries.remove(index) {
            Some((_, InFlight::Unsent(_))) => {
                self.unsent -= 1;
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a PUBLISH about to be sent and returns its packet id: the next one after the last
    /// used, skipping 0 and ids still in flight.
    pub fn publish(&mut self, delivery: Delivery) -> u16 {
        let id = self.next_id();
        self.record(id, delivery);
        id
    }

    /// The packet id the next PUBLISH uses, as [`Outgoing::publish`] gives out, for a sender
    /// that encodes the delivery before it [records](Outgoing::record) it: so the delivery is
    /// moved in, not cloned (two atomic operations on the message's count per delivery), and
    /// one that cannot be encoded is never recorded. An id given out and not recorded is only
    /// skipped.
    pub fn next_id(&mut self) -> u16 {
        let next = |id: u16| id.wrapping_add(1).max(1);
        let mut id = next(self.last_id);
        if self.entries.is_empty() {
            self.out_of_turn = false;
        }
        if !self.out_of_turn && self.entries.front().is_some_and(|(front, _)| *front == id) {
            self.out_of_turn = true;
        }
        if self.out_of_turn {
            while self.entries.iter().any(|(used, _)| *used == id) {
                id = next(id);
            }
        }
        self.last_id = id;
        id
    }

    /// Records a PUBLISH sent with `id`, which [`Outgoing::next_id`] has just given out.
    #[inline]
    pub fn record(&mut self, id: u16, delivery: Delivery) {
        if let (Some(journal), Some(seq), QoS::ExactlyOnce) =
            (&self.journal, delivery.stored, delivery.qos)
        {
            journal.sent(seq, id);
        }
        self.entries.push_back((id, InFlight::Published(delivery)));
    }

    /// The session's journal (see [`Outgoing::set_journal`]).
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// Writes what is in flight to `journal` from now on (or, with `None`, stops). Entries
    /// that have no journal number yet (a session that came from another node) are numbered by
    /// `number` and written, so that the journal holds all of them.
    pub fn set_journal(
        &mut self,
        journal: Option<Arc<Journal>>,
        mut number: impl FnMut() -> NonZeroU32,
    ) {
        if let Some(journal) = &journal {
            for (id, state) in self.entries.iter_mut() {
                match state {
                    InFlight::Published(delivery) | InFlight::Unsent(delivery)
                        if delivery.stored.is_none() =>
                    {
                        let seq = number();
                        delivery.stored = Some(seq);
                        journal.queued(seq, delivery);
                        if delivery.qos == QoS::ExactlyOnce {
                            journal.sent(seq, *id);
                        }
                    }
                    InFlight::Released(stored @ None) => {
                        let seq = number();
                        *stored = Some(seq);
                        journal.released(seq, *id);
                    }
                    _ => {}
                }
            }
        }
        self.journal = journal;
    }

    /// A delivery taken from the mailbox that will not be sent (the client may not read it, or
    /// it is too large for it): done with, in the journal too.
    pub fn forget_unsent(&self, delivery: &Delivery) {
        if let (Some(journal), Some(seq)) = (&self.journal, delivery.stored) {
            journal.done(seq, false);
        }
    }

    /// The journal number of the entry at `index`, which is done with.
    fn forget(&self, index: usize) {
        let (stored, sent) = match self.entries.get(index) {
            Some((_, InFlight::Published(d) | InFlight::Unsent(d))) => {
                (d.stored, d.qos == QoS::ExactlyOnce)
            }
            Some((_, InFlight::Released(stored))) => (*stored, true),
            None => (None, false),
        };
        if let (Some(journal), Some(seq)) = (&self.journal, stored) {
            journal.done(seq, sent);
        }
    }

    /// PUBACK: the QoS 1 message is done. Returns whether `id` was a QoS 1 PUBLISH in flight.
    pub fn acknowledge(&mut self, id: u16) -> bool {
        let index = self.entries.iter().position(|(used, state)| {
            *used == id && matches!(state, InFlight::Published(d) if d.qos == QoS::AtLeastOnce)
        });
        index.is_some_and(|index| self.remove_at(index))
    }

    /// PUBREC: the QoS 2 message is received; PUBREL follows. Returns whether `id` is in flight.
    pub fn received(&mut self, id: u16) -> bool {
        match self.entries.iter_mut().find(|(used, _)| *used == id) {
            Some((used, state)) => {
                let stored = match state {
                    InFlight::Published(d) | InFlight::Unsent(d) => d.stored,
                    InFlight::Released(stored) => *stored,
                };
                if matches!(state, InFlight::Unsent(_)) {
                    self.unsent -= 1;
                }
                if let (Some(journal), Some(seq)) = (&self.journal, stored) {
                    if !matches!(state, InFlight::Released(_)) {
                        journal.released(seq, *used);
                    }
                }
                *state = InFlight::Released(stored);
                true
            }
            None => false,
        }
    }

    /// An MQTT 5 PUBREC with a failure reason: the client refused the QoS 2 message, and the
    /// exchange ends without PUBREL. Returns whether `id` was a PUBLISH in flight.
    pub fn refused(&mut self, id: u16) -> bool {
        let index = self.entries.iter().position(|(used, state)| {
            *used == id && matches!(state, InFlight::Published(_) | InFlight::Unsent(_))
        });
        index.is_some_and(|index| self.remove_at(index))
    }

    /// A PUBLISH recorded by [`Outgoing::publish`] that could not be encoded after all (too
    /// large for the protocol with this client's topic, properties and identifiers): it was
    /// never sent, so it gives its packet id and its place in the window back. Returns whether
    /// `id` was a PUBLISH in flight.
    pub fn unsent(&mut self, id: u16) -> bool {
        self.refused(id)
    }

    /// PUBCOMP: the QoS 2 exchange is complete. Returns whether `id` was awaiting it.
    pub fn complete(&mut self, id: u16) -> bool {
        let index = self
            .entries
            .iter()
            .position(|(used, state)| *used == id && matches!(state, InFlight::Released(_)));
        index.is_some_and(|index| self.remove_at(index))
    }

    /// Everything in flight, oldest first, taken out (the session moves: see
    /// [`super::SessionSnapshot`]).
    pub fn into_entries(self) -> Vec<(u16, InFlight)> {
        self.entries.into()
    }

    /// The messages in flight of a session that moved here, oldest first (packet ids distinct
    /// and not 0, as [`super::SessionSnapshot::decode`] checks). The ids need not follow each
    /// other, so new ones are looked for among them ("out of turn") until they are all gone.
    pub fn restore(entries: Vec<(u16, InFlight)>) -> Outgoing {
        let unsent = entries
            .iter()
            .filter(|(_, state)| matches!(state, InFlight::Unsent(_)))
            .count() as u32;
        Outgoing {
            last_id: entries.last().map_or(0, |(id, _)| *id),
            out_of_turn: !entries.is_empty(),
            entries: entries.into(),
            unsent,
            journal: None,
        }
    }

    /// Everything in flight, oldest first, to be resent on reconnect.
    pub fn iter(&self) -> impl Iterator<Item = &(u16, InFlight)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::delivery;

    #[test]
    fn packet_ids_skip_zero_and_ids_in_flight() {
        let mut outgoing = Outgoing::default();
        let first = outgoing.publish(delivery(QoS::AtLeastOnce, b"a"));
        assert_eq!(first, 1);
        outgoing.last_id = u16::MAX - 1;
        assert_eq!(outgoing.publish(delivery(QoS::AtLeastOnce, b"b")), u16::MAX);
        // Wraps past 0, and past 1 which is still in flight.
        assert_eq!(outgoing.publish(delivery(QoS::AtLeastOnce, b"c")), 2);
    }

    #[test]
    fn ids_wrap_around_a_message_left_unacknowledged() {
        let mut outgoing = Outgoing::default();
        let stuck = outgoing.publish(delivery(QoS::AtLeastOnce, b"stuck"));
        for _ in 0..70_000 {
            let id = outgoing.publish(delivery(QoS::AtLeastOnce, b"x"));
            assert_ne!(id, stuck, "an id in flight was given out again");
            assert_ne!(id, 0);
            assert!(outgoing.acknowledge(id));
        }
        assert!(outgoing.out_of_turn, "the ids went all the way round");
        assert!(outgoing.acknowledge(stuck));
        let id = outgoing.publish(delivery(QoS::AtLeastOnce, b"y"));
        assert!(
            !outgoing.out_of_turn,
            "in turn again once nothing was in flight"
        );
        assert_eq!(id, outgoing.last_id);
    }

    proptest::proptest! {
        /// Whatever is acknowledged in whatever order, a new id is never one still in flight,
        /// and it is the next after the last given out whenever that one is free.
        #[test]
        fn new_ids_are_never_in_flight(
            start in 65_400u16..,
            ops in proptest::collection::vec((0u8..3, 0usize..64), 1..600),
        ) {
            let mut outgoing = Outgoing { last_id: start, ..Outgoing::default() };
            let mut in_flight: Vec<u16> = Vec::new();
            for (op, pick) in ops {
                if op == 0 || in_flight.is_empty() {
                    let last = outgoing.last_id;
                    let id = outgoing.publish(delivery(QoS::AtLeastOnce, b"p"));
                    proptest::prop_assert!(id != 0 && !in_flight.contains(&id));
                    let expected = last.wrapping_add(1).max(1);
                    if !in_flight.contains(&expected) {
                        proptest::prop_assert_eq!(id, expected);
                    }
                    in_flight.push(id);
                } else {
                    // Acknowledged in any order, mostly the oldest.
                    let index = if op == 1 { 0 } else { pick % in_flight.len() };
                    let id = in_flight.remove(index);
                    proptest::prop_assert!(outgoing.acknowledge(id));
                }
            }
        }
    }

    #[test]
    fn acknowledgements_follow_the_qos_flows() {
        let mut outgoing = Outgoing::default();
        let one = outgoing.publish(delivery(QoS::AtLeastOnce, b"a"));
        let two = outgoing.publish(delivery(QoS::ExactlyOnce, b"b"));
        assert!(
            !outgoing.acknowledge(two),
            "PUBACK does not finish a QoS 2 message"
        );
        assert!(
            !outgoing.complete(two),
            "PUBCOMP before PUBREC is out of order"
        );
        assert!(outgoing.received(two));
        assert!(outgoing.acknowledge(one));
        assert!(!outgoing.acknowledge(one));
        assert_eq!(outgoing.len(), 1);
        assert!(matches!(outgoing.iter().next(), Some((id, InFlight::Released(_))) if *id == two));
        assert!(outgoing.complete(two));
        assert!(outgoing.is_empty());
    }

    #[test]
    fn a_resumed_session_resends_in_order_within_the_window() {
        let mut outgoing = Outgoing::default();
        let ids: Vec<u16> = [b"a", b"b", b"c", b"d"]
            .iter()
            .map(|p| outgoing.publish(delivery(QoS::ExactlyOnce, *p)))
            .collect();
        assert!(outgoing.received(ids[0]), "PUBREC: awaiting PUBCOMP");
        outgoing.resume();
        // The PUBREL-awaiting entry still counts; the three PUBLISHes wait to be resent.
        assert_eq!((outgoing.len(), outgoing.in_window()), (4, 1));
        let (id, first) = outgoing.take_unsent().expect("oldest unsent");
        assert_eq!((id, &first.message.payload[..]), (ids[1], &b"b"[..]));
        assert_eq!(outgoing.in_window(), 2);
        // Acknowledgements of what was not resent yet still settle the count.
        assert!(outgoing.received(ids[2]));
        assert!(outgoing.refused(ids[3]));
        assert!(!outgoing.has_unsent());
        assert_eq!((outgoing.len(), outgoing.in_window()), (3, 3));
        assert!(outgoing.take_unsent().is_none());
    }
}
