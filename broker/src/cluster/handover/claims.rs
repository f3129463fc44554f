//! The claims a node has in flight, as a state machine free of I/O (like `foca`): events in
//! (a claim to make, a peer's claim, a peer's answer, a peer gone, the clock), decisions out.
//! [`super::Handover`] does what they say: sends the frames, moves the sessions, wakes the
//! connections.
//!
//! The rule that makes races come out the same everywhere: claims are ordered by their
//! [`ClaimId`] (a hybrid logical clock: wall-clock milliseconds, a count, the node), and of two
//! claims for one client id the later wins. A node with a claim in flight that hears of a
//! later one *yields*: its own client loses, and once its claim is complete it hands what it
//! gathered to the later claim as if that claim had just arrived. An earlier claim that arrives
//! while one is in flight is refused at once. So a claim waits only for claims earlier than
//! itself, which never wait for it: every claim completes, at the latest at its deadline.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use bytes::Bytes;

/// A claim's place in the order of claims: later wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimId {
    pub ms: u64,
    pub count: u32,
    /// The claiming node.
    pub node: Bytes,
}

/// What a claim asks of the node that holds the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The client continues its session (clean session 0, or MQTT 5 Clean Start 0): the
    /// session moves. Otherwise it ends where it is.
    pub want_session: bool,
    /// With access control on, the user the client authenticated as (`Some(None)`: no
    /// username); a session of another user is not taken (see
    /// [`crate::session::SessionOwner`]).
    pub owner: Option<Option<String>>,
    /// Made by a node that takes in the offline session of a node that drains, not for a
    /// client: it takes a session only where its client is offline (never closes a
    /// connection), and it gives way to any claim of a client, earlier or later.
    pub adopt_only: bool,
}

/// A peer's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It holds no session of the client id (any connection it had is closed).
    Nothing,
    /// It has a later claim in flight: this one lost.
    Refused,
    /// The session there belongs to another user: this claim may not take it.
    Foreign,
    /// The session, as [`crate::session::SessionSnapshot`] bytes.
    Session(Bytes),
}

/// How a claim of this node came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The client id is this node's: the session gathered (if any) is adopted and its client
    /// connects.
    Won,
    /// A later claim won: this node's client is refused.
    Lost,
    /// The session belongs to another user.
    Foreign,
}

/// A claim of this node that is complete.
#[derive(Debug)]
pub struct Done {
    pub client_id: String,
    pub id: ClaimId,
    pub verdict: Verdict,
    /// The session a peer handed over: the peer, and the session's bytes.
    pub session: Option<(Bytes, Bytes)>,
    /// More sessions, from peers that each thought they held it (after a partition): adopted
    /// after the first (the last adopted is kept).
    pub extra: Vec<(Bytes, Bytes)>,
    /// The later claim this node yielded to: it is owed what was gathered, and this node's own
    /// session, as the answer to its claim.
    pub yield_to: Option<(ClaimId, Request)>,
    /// Peers that never answered (the deadline came, or they were declared gone).
    pub unanswered: usize,
}

/// What to do with a peer's claim.
#[derive(Debug, PartialEq, Eq)]
pub enum OnClaim {
    /// Nothing in flight here: close the local connection of the client id and answer with
    /// the session (or [`Answer::Nothing`]).
    TakeOver,
    /// This node's claim in flight is later: answer [`Answer::Refused`].
    Refuse,
    /// This node's claim in flight is earlier: it yields; the answer comes when it completes
    /// (see [`Done::yield_to`]). A claim it had yielded to before, earlier than this one, is
    /// to be refused now.
    Deferred { refuse: Option<ClaimId> },
}

/// What an answer was for.
#[derive(Debug)]
pub enum OnAnswer {
    /// Counted; the claim waits for more.
    Waiting,
    /// The claim is complete (boxed: it is the rare case).
    Done(Box<Done>),
    /// No claim of this node waits for it (completed at its deadline, or unknown): a session it
    /// carries is adopted here rather than lost.
    Stray(Option<Bytes>),
}

/// Another claim for the client id is in flight on this node: wait for it, then claim again.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

#[derive(Debug)]
struct Pending {
    id: ClaimId,
    waiting: BTreeSet<Bytes>,
    deadline: Instant,
    session: Option<(Bytes, Bytes)>,
    extra: Vec<(Bytes, Bytes)>,
    refused: bool,
    foreign: bool,
    yield_to: Option<(ClaimId, Request)>,
    adopt_only: bool,
}

/// This node's claims in flight, one per client id at most.
#[derive(Debug)]
pub struct Claims {
    node: Bytes,
    /// The clock's last reading: (ms, count).
    clock: (u64, u32),
    pending: HashMap<String, Pending>,
}

impl Claims {
    pub fn new(node: Bytes) -> Claims {
        Claims {
            node,
            clock: (0, 0),
            pending: HashMap::new(),
        }
    }

    /// This node, as its claims name it.
    pub fn node(&self) -> &[u8] {
        &self.node
    }

    /// Claims in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether a claim for `client_id` is in flight.
    pub fn is_pending(&self, client_id: &str) -> bool {
        self.pending.contains_key(client_id)
    }

    /// A new claim for `client_id`, to be sent to `peers`, complete at `deadline` at the latest;
    /// `now_ms` is the wall clock.
    pub fn start(
        &mut self,
        client_id: &str,
        peers: impl IntoIterator<Item = Bytes>,
        now_ms: u64,
        deadline: Instant,
    ) -> Result<ClaimId, Busy> {
        self.start_as(client_id, peers, now_ms, deadline, false)
    }

    /// [`Claims::start`], for a claim made only to adopt an offline session
    /// ([`Request::adopt_only`]) when `adopt_only`.
    pub fn start_as(
        &mut self,
        client_id: &str,
        peers: impl IntoIterator<Item = Bytes>,
        now_ms: u64,
        deadline: Instant,
        adopt_only: bool,
    ) -> Result<ClaimId, Busy> {
        if self.pending.contains_key(client_id) {
            return Err(Busy);
        }
        self.clock = if now_ms > self.clock.0 {
            (now_ms, 0)
        } else {
            match self.clock.1.checked_add(1) {
                Some(count) => (self.clock.0, count),
                None => (self.clock.0.saturating_add(1), 0),
            }
        };
        let id = ClaimId {
            ms: self.clock.0,
            count: self.clock.1,
            node: self.node.clone(),
        };
        self.pending.insert(
            client_id.to_string(),
            Pending {
                id: id.clone(),
                waiting: peers.into_iter().collect(),
                deadline,
                session: None,
                extra: Vec::new(),
                refused: false,
                foreign: false,
                yield_to: None,
                adopt_only,
            },
        );
        Ok(id)
    }

    /// A claim that asks nobody (no peer reads claims) is complete at once.
    pub fn complete_if_unasked(&mut self, client_id: &str) -> Option<Done> {
        let pending = self.pending.get(client_id)?;
        if !pending.waiting.is_empty() {
            return None;
        }
        self.finish(client_id)
    }

    /// A peer's claim for `client_id`.
    pub fn on_claim(&mut self, client_id: &str, id: &ClaimId, request: &Request) -> OnClaim {
        // Keeps this node's next claims after what it has heard of.
        self.clock = self.clock.max((id.ms, id.count));
        let Some(pending) = self.pending.get_mut(client_id) else {
            return OnClaim::TakeOver;
        };
        // A client's claim beats one made only to adopt, whatever their order; one made only
        // to adopt never beats anything.
        let yields = if request.adopt_only {
            false
        } else if pending.adopt_only {
            true
        } else {
            *id > pending.id
        };
        if !yields {
            return OnClaim::Refuse;
        }
        let refuse = match &pending.yield_to {
            // Of two client claims the later wins, whatever this node's own claim is: one made
            // only to adopt that let the earlier replace the later would leave both refused.
            Some((earlier, _)) if earlier > id => return OnClaim::Refuse,
            Some((earlier, _)) => Some(earlier.clone()),
            None => None,
        };
        pending.yield_to = Some((id.clone(), request.clone()));
        OnClaim::Deferred { refuse }
    }

    /// `peer`'s answer to this node's claim `id` for `client_id`.
    pub fn on_answer(
        &mut self,
        client_id: &str,
        id: &ClaimId,
        peer: &[u8],
        answer: Answer,
    ) -> OnAnswer {
        let Some(pending) = self
            .pending
            .get_mut(client_id)
            .filter(|pending| pending.id == *id && pending.waiting.contains(peer))
        else {
            return OnAnswer::Stray(match answer {
                Answer::Session(bytes) => Some(bytes),
                _ => None,
            });
        };
        pending.waiting.remove(peer);
        match answer {
            Answer::Nothing => {}
            Answer::Refused => pending.refused = true,
            Answer::Foreign => pending.foreign = true,
            Answer::Session(bytes) => {
                let from = Bytes::copy_from_slice(peer);
                match pending.session {
                    None => pending.session = Some((from, bytes)),
                    Some(_) => pending.extra.push((from, bytes)),
                }
            }
        }
        if !pending.waiting.is_empty() {
            return OnAnswer::Waiting;
        }
        match self.finish(client_id) {
            Some(done) => OnAnswer::Done(Box::new(done)),
            None => OnAnswer::Waiting,
        }
    }

    /// The session `peer` handed over for claim `id`, while the claim is in flight.
    pub fn session_from(&self, client_id: &str, id: &ClaimId, peer: &[u8]) -> Option<Bytes> {
        let pending = self.pending.get(client_id).filter(|p| p.id == *id)?;
        pending
            .session
            .iter()
            .chain(&pending.extra)
            .find(|(from, _)| from[..] == *peer)
            .map(|(_, bytes)| bytes.clone())
    }

    /// `peer` is gone (declared down, or left): no claim waits for it any more.
    pub fn peer_gone(&mut self, peer: &[u8]) -> Vec<Done> {
        let complete: Vec<String> = self
            .pending
            .iter_mut()
            .filter_map(|(client_id, pending)| {
                (pending.waiting.remove(peer) && pending.waiting.is_empty())
                    .then(|| client_id.clone())
            })
            .collect();
        complete
            .iter()
            .filter_map(|client_id| self.finish(client_id))
            .collect()
    }

    /// The claims whose deadline has come by `now`, complete with what they have.
    pub fn expire(&mut self, now: Instant) -> Vec<Done> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.deadline <= now)
            .map(|(client_id, _)| client_id.clone())
            .collect();
        due.iter()
            .filter_map(|client_id| self.finish(client_id))
            .collect()
    }

    /// Completes claim `id` for `client_id` with what it has (its deadline came), if it is
    /// still in flight.
    pub fn give_up(&mut self, client_id: &str, id: &ClaimId) -> Option<Done> {
        if self.pending.get(client_id)?.id != *id {
            return None;
        }
        self.finish(client_id)
    }

    /// The earliest deadline of the claims in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|pending| pending.deadline).min()
    }

    fn finish(&mut self, client_id: &str) -> Option<Done> {
        let (client_id, pending) = self.pending.remove_entry(client_id)?;
        let verdict = if pending.foreign {
            Verdict::Foreign
        } else if pending.refused || pending.yield_to.is_some() {
            Verdict::Lost
        } else {
            Verdict::Won
        };
        Some(Done {
            client_id,
            id: pending.id,
            verdict,
            session: pending.session,
            extra: pending.extra,
            yield_to: pending.yield_to,
            unanswered: pending.waiting.len(),
        })
    }
}

#[cfg(test)]
mod tests;
