//! Cluster-wide client ids and sessions that follow their client from node to node.
//!
//! A client id is connected on at most one node. Before a node lets a client in (after its
//! CONNECT is authenticated, before its session is claimed locally), it *claims* the client id
//! from every peer that reads sync version 5 ([`Handover::claim`]): a frame on each peer's
//! control link, the acknowledged, ordered, HMAC-authenticated stream that carries interest
//! (see [`super::link`]). A peer that has nothing in flight for the client id *takes over*:
//! it closes its connection with that id (MQTT 5: DISCONNECT 0x8E, the will as on a local
//! takeover), and answers with the session if the client continues it (its bytes, see
//! [`crate::session::SessionSnapshot`], in parts ahead of the answer) or ends the session
//! there (a clean start) and answers that it has nothing. The claiming node adopts the session
//! it gets as an offline session, and the local claim that follows resumes it: CONNACK's
//! session present says so. Races are settled by [`claims`]: the later claim wins everywhere.
//!
//! Bounded: a claim waits at most `-cht` (a peer that does not answer by then is not waited
//! for: the client starts a new session if none came). Peers declared down are not asked, and
//! nor are peers of an earlier release (version 4 or below: in a mixed cluster client ids
//! are unique among the nodes of this release only).
//!
//! Messages published while a session moves are not lost: the node it leaves keeps its
//! mailbox subscribed ([`crate::session::Moving`]) and sends on what lands there (frame 7) until
//! the new node says (frame 8) that every peer has its subscriptions (what a SUBACK waits for,
//! see [`super::peers::Peers::interest_wait`]), or [`MOVE_LIMIT`] has passed since it took the
//! session; from then on every publisher sends to the new node itself. A message published in
//! that overlap may reach the session twice (once each way): at least once, for QoS 2 too
//! (message ids to tell them apart are future work). A session whose answer the new node never
//! took (its control link dropped it, or [`DELIVERY_LIMIT`] passed) is kept by the node it
//! left: two copies rather than none, which the next claim of its client merges (see
//! [`crate::session::SessionRegistry::adopt`]).
//!
//! A node that drains (see [`crate::drain`]) tells its peers (frame 9) so that none sends it a
//! session, waits for its clients to take their sessions elsewhere, and asks a peer to take
//! in each offline session still here when `-dg` runs out (frame 10): that peer claims it
//! "only to adopt" ([`claims::Request::adopt_only`]: it never closes a client's connection and
//! gives way to any client's claim), so that a client that comes back later finds its session
//! in the cluster. The peer is chosen per client id by rendezvous hashing over the peers that
//! do not drain.
//!
//! Files: `claims` (the state machine, without I/O), `wire` (the frames).

pub mod claims;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::peers::{HandoverQueued, Peer, Peers};
use crate::broker::Broker;
use crate::router::now_ms;
use crate::session::snapshot::{decode_deliveries, encode_deliveries};
use crate::session::{Adopted, Mailbox, Moving, SessionSnapshot};
use claims::{Answer, ClaimId, Claims, Done, OnAnswer, OnClaim, Request, Verdict};
use wire::{
    AnswerKind, FRAME_ANSWER, FRAME_CLAIM, FRAME_DRAINING, FRAME_LATE_DELIVERIES,
    FRAME_SESSION_PART, FRAME_SETTLED, FRAME_TAKE,
};

/// The most bytes of sessions being received from one peer at a time: beyond, a session is
/// dropped (and the claim goes on without it) rather than the node's memory.
const MAX_RECEIVING_BYTES: usize = 512 << 20;

/// The longest a node that a session left sends on what still comes for it, from when the new
/// node took the session.
pub const MOVE_LIMIT: Duration = Duration::from_secs(10);

/// The longest a node that hands a session over waits for the claimant to take its answer (a
/// session of hundreds of megabytes on a slow link) before it takes the session for lost and
/// keeps it.
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);

/// How often a node that hands a session over looks whether the claimant has taken it.
const ANSWER_POLL: Duration = Duration::from_millis(20);

/// How long a node that a session left sends on what still comes for it once the new node
/// has its subscriptions in place: messages sent before the publishers knew it are on their
/// way here.
const MOVE_LINGER: Duration = Duration::from_millis(200);

/// How long a node remembers that a peer's claim took a client id over, for a local claim that
/// won a moment before (see [`Handover::taken_over_since`]).
const TAKEN_OVER_MEMORY: Duration = Duration::from_secs(60);

/// How long a session's parts may pause: parts whose answer never comes (a link that started
/// over, a peer that crashed, a claim id nobody made) are dropped once none came for it.
const RECEIVING_LIMIT: Duration = Duration::from_secs(30);

/// How far ahead of this node's clock a peer's claim may be stamped.
const MAX_CLAIM_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// A session handed over, as it left: kept until the claimant confirms it has it (see
/// [`Handover::send_on`]), to be put back if it never does.
struct Kept {
    snapshot: SessionSnapshot,
    exported_at: Instant,
    /// Whether its delayed will stays with it (a claim made only to adopt, whose client is not
    /// connecting anywhere).
    keep_will: bool,
}

/// A session arriving in parts.
struct Receiving {
    /// `None` once dropped for its size: its later parts are ignored, not started afresh.
    bytes: Option<BytesMut>,
    since: Instant,
}

pub use claims::Verdict as ClaimVerdict;

/// This node's part in cluster-wide client ids.
pub struct Handover {
    peers: Arc<Peers>,
    broker: OnceLock<Weak<Broker>>,
    runtime: OnceLock<tokio::runtime::Handle>,
    /// `-cht`.
    timeout: Duration,
    state: Mutex<State>,
    /// Peer claims being given a session here: counted from before the session leaves the
    /// registry until it is sent on (see [`Handover::moves_in_flight`]), so that a drain does
    /// not take the moment in between for the end of its moves.
    taking_over: std::sync::atomic::AtomicUsize,
}

/// Counts a take-over in [`Handover::taking_over`] for as long as it lives.
struct TakingOver<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> TakingOver<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> TakingOver<'a> {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        TakingOver(count)
    }
}

impl Drop for TakingOver<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

struct State {
    claims: Claims,
    /// The connections waiting for this node's claims.
    waiters: HashMap<ClaimId, oneshot::Sender<Verdict>>,
    /// Connections waiting for another claim of their client id to complete.
    queued: HashMap<String, Vec<oneshot::Sender<()>>>,
    /// Sessions arriving in parts, by the peer and the claim they answer.
    receiving: HashMap<(Bytes, ClaimId), Receiving>,
    /// Once `taken_over` holds this many, it is pruned (and the bound set to twice what is
    /// left): amortized, rather than a pass over it for every peer claim.
    taken_over_prune_at: usize,
    /// The same for `arrived`.
    arrived_prune_at: usize,
    /// The latest peer claim that took each client id over here, and when (see
    /// [`Handover::taken_over_since`]).
    taken_over: HashMap<String, (ClaimId, Instant)>,
    /// Sessions that moved here, by client id: the claim they moved for, their mailbox (where
    /// frames 7 go), and when.
    arrived: HashMap<String, (ClaimId, Arc<Mailbox>, Instant)>,
    /// Sessions that moved away and whose mailboxes here still take messages, by client id
    /// and claim: told when the new node has its subscriptions in place.
    moving: HashMap<(String, ClaimId), oneshot::Sender<()>>,
    /// Peers that drain (node id and boot): no session is sent to them.
    draining: std::collections::HashSet<(Bytes, u64)>,
    /// This node drains: it takes no session in.
    drains: bool,
}

impl Handover {
    pub fn new(peers: Arc<Peers>, node_id: &str, timeout: Duration) -> Handover {
        Handover {
            peers,
            broker: OnceLock::new(),
            runtime: OnceLock::new(),
            timeout,
            state: Mutex::new(State {
                claims: Claims::new(Bytes::copy_from_slice(node_id.as_bytes())),
                waiters: HashMap::new(),
                queued: HashMap::new(),
                receiving: HashMap::new(),
                taken_over_prune_at: 1024,
                arrived_prune_at: 1024,
                taken_over: HashMap::new(),
                arrived: HashMap::new(),
                moving: HashMap::new(),
                draining: std::collections::HashSet::new(),
                drains: false,
            }),
            taking_over: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Moves sessions in and out of `broker`'s registry from now on; called from within the
    /// runtime, whose tasks take sessions over.
    pub fn attach(&self, broker: &Arc<Broker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
        let _ = self.runtime.set(tokio::runtime::Handle::current());
    }

    fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.get().and_then(Weak::upgrade)
    }

    /// The peers a claim goes to: those that read claims and are not gone.
    fn claimable_peers(&self) -> Vec<Arc<Peer>> {
        self.peers
            .list()
            .iter()
            .filter(|peer| peer.handover && !peer.is_gone())
            .cloned()
            .collect()
    }

    /// Claims `client_id` from the other nodes for a client about to connect here: waits until
    /// every peer asked has answered (and a session handed over is adopted here), or `-cht` has
    /// passed. Returns the claim's id with the verdict, for
    /// [`Handover::taken_over_since`].
    pub async fn claim(
        self: &Arc<Self>,
        client_id: &str,
        request: Request,
    ) -> (Verdict, Option<ClaimId>) {
        // A bounded number of turns: each waits for a claim of this client id that was in
        // flight to complete, which its deadline bounds.
        for _ in 0..16 {
            let peers = self.claimable_peers();
            if peers.is_empty() {
                return (Verdict::Won, None);
            }
            let deadline = Instant::now() + self.timeout;
            let started = {
                let mut state = self.state.lock();
                match state.claims.start_as(
                    client_id,
                    peers
                        .iter()
                        .map(|p| Bytes::from(p.identity.node_id.clone())),
                    now_ms(),
                    deadline,
                    request.adopt_only,
                ) {
                    Ok(id) => {
                        let (tx, rx) = oneshot::channel();
                        state.waiters.insert(id.clone(), tx);
                        Ok((id, rx))
                    }
                    Err(claims::Busy) => {
                        let (tx, rx) = oneshot::channel();
                        state
                            .queued
                            .entry(client_id.to_string())
                            .or_default()
                            .push(tx);
                        Err(rx)
                    }
                }
            };
            let (id, answered) = match started {
                Ok(started) => started,
                Err(turn) => {
                    let _ = tokio::time::timeout(self.timeout, turn).await;
                    continue;
                }
            };
            let frame = wire::encode_claim(id.ms, id.count, &request, client_id);
            let unsent = self.send(&peers, FRAME_CLAIM, std::slice::from_ref(&frame));
            // A peer whose link starts over never gets the claim (nor any other frame queued
            // before): it is not waited for, by this claim or any other.
            for peer in unsent {
                let done = self.state.lock().claims.peer_gone(&peer);
                for done in done {
                    self.complete(done);
                }
            }
            let mut answered = answered;
            let verdict = match tokio::time::timeout(self.timeout, &mut answered).await {
                Ok(Ok(verdict)) => verdict,
                Ok(Err(_)) => Verdict::Won,
                // The deadline: complete it with what it has (adopting any session that came).
                Err(_) => {
                    let given_up = self.state.lock().claims.give_up(client_id, &id);
                    if let Some(done) = given_up {
                        self.complete(done);
                    }
                    tokio::time::timeout(self.timeout, answered)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(Verdict::Won)
                }
            };
            return (verdict, Some(id));
        }
        warn!(
            client_id,
            "client id claimed over and over on this node; refused"
        );
        (Verdict::Lost, None)
    }

    /// This node drains: tells the peers, so that none sends it a session, and takes none in
    /// from now on.
    pub fn announce_draining(&self) {
        self.state.lock().drains = true;
        let peers = self.claimable_peers();
        self.send(&peers, FRAME_DRAINING, &[BytesMut::new()]);
    }

    /// Whether a peer that does not drain could take sessions in.
    pub fn has_successor(&self) -> bool {
        !self.successors().is_empty()
    }

    /// The peers that may take sessions in: they read claims, are not gone, do not drain.
    fn successors(&self) -> Vec<Arc<Peer>> {
        let draining = self.state.lock().draining.clone();
        self.claimable_peers()
            .into_iter()
            .filter(|peer| {
                !draining.contains(&(
                    Bytes::from(peer.identity.node_id.clone()),
                    peer.identity.boot_ms,
                ))
            })
            .collect()
    }

    /// Sessions moving away whose old mailboxes here still send on what comes for them.
    pub fn moves_in_flight(&self) -> usize {
        self.state.lock().moving.len() + self.taking_over.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Asks a peer that does not drain to take in each of `client_ids`' offline sessions
    /// (rendezvous hashing: the peer whose hash with the client id is highest); returns how
    /// many were asked for.
    pub fn hand_over(&self, client_ids: &[String]) -> usize {
        let successors = self.successors();
        if successors.is_empty() {
            return 0;
        }
        let mut asked = 0;
        for client_id in client_ids {
            let Some(peer) = successors
                .iter()
                .max_by_key(|peer| rendezvous(client_id, &peer.identity.node_id))
            else {
                continue;
            };
            if peer
                .push_handover(FRAME_TAKE, &[wire::encode_take(client_id)])
                .is_some()
            {
                asked += 1;
            }
        }
        self.peers.wake_sender();
        asked
    }

    /// Whether a peer's claim took `client_id` over after this node's claim `ours` won: the
    /// connection that won it must then close, its client id taken over (it claimed its
    /// session here after the peer's claim looked for a connection to close).
    pub fn taken_over_since(&self, client_id: &str, ours: &ClaimId) -> bool {
        self.state
            .lock()
            .taken_over
            .get(client_id)
            .is_some_and(|(theirs, _)| theirs > ours)
    }

    /// Queues `frames` of `kind` on the control links of `peers`; returns the node ids of
    /// those that did not take them (gone, or their link starts over).
    fn send(&self, peers: &[Arc<Peer>], kind: u8, frames: &[BytesMut]) -> Vec<Bytes> {
        let mut wake = false;
        let mut unsent = Vec::new();
        for peer in peers {
            match peer.push_handover(kind, frames) {
                Some(woken) => wake |= woken,
                None => unsent.push(Bytes::from(peer.identity.node_id.clone())),
            }
        }
        if wake {
            self.peers.wake_sender();
        }
        unsent
    }

    fn send_to(&self, node: &[u8], kind: u8, frames: &[BytesMut]) {
        match self.peers.find_now(node) {
            Some(peer) => {
                self.send(&[peer], kind, frames);
            }
            None => debug!(
                peer = %String::from_utf8_lossy(node),
                "hand-over frame for a peer that is gone; not sent"
            ),
        }
    }

    /// A hand-over frame from peer `origin` (boot `origin_boot`); `false` when it is
    /// malformed.
    pub fn on_frame(
        self: &Arc<Self>,
        origin: &[u8],
        origin_boot: u64,
        kind: u8,
        body: &Bytes,
    ) -> bool {
        match kind {
            FRAME_DRAINING => {
                info!(peer = %String::from_utf8_lossy(origin), "peer drains: no session goes to it");
                self.state
                    .lock()
                    .draining
                    .insert((Bytes::copy_from_slice(origin), origin_boot));
                body.is_empty()
            }
            FRAME_TAKE => {
                let Some(client_id) = wire::decode_take(body) else {
                    return false;
                };
                if self.state.lock().drains {
                    debug!(%client_id, "asked to take in a session while draining; not taken");
                    return true;
                }
                let Some(runtime) = self.runtime.get() else {
                    return true;
                };
                let handover = self.clone();
                runtime.spawn(async move {
                    let request = Request {
                        want_session: true,
                        owner: None,
                        adopt_only: true,
                    };
                    handover.claim(&client_id, request).await;
                });
                true
            }
            FRAME_CLAIM => {
                let Some(claim) = wire::decode_claim(body) else {
                    return false;
                };
                let id = ClaimId {
                    ms: claim.ms,
                    count: claim.count,
                    node: Bytes::copy_from_slice(origin),
                };
                // A claim from far in the future (a peer gone wrong) would win every race for its
                // client id, and pull this node's claim clock along to a point where its ids stop
                // growing: refused. Only beyond a day: a node whose clock is merely wrong by
                // minutes must not have every client refused.
                if claim.ms > now_ms().saturating_add(MAX_CLAIM_AHEAD_MS) {
                    warn!(client_id = %claim.client_id, peer = %String::from_utf8_lossy(origin),
                          "claim stamped more than a day ahead of this node's clock; refused");
                    self.answer(&id, &claim.client_id, AnswerKind::Refused);
                    return true;
                }
                let action =
                    self.state
                        .lock()
                        .claims
                        .on_claim(&claim.client_id, &id, &claim.request);
                match action {
                    OnClaim::TakeOver => self.spawn_take_over(claim.client_id, id, claim.request),
                    OnClaim::Refuse => self.answer(&id, &claim.client_id, AnswerKind::Refused),
                    OnClaim::Deferred { refuse } => {
                        debug!(client_id = %claim.client_id, "a later claim from a peer: this node's claim yields");
                        if let Some(earlier) = refuse {
                            self.answer(&earlier, &claim.client_id, AnswerKind::Refused);
                        }
                    }
                }
                true
            }
            FRAME_SESSION_PART => {
                let Some(part) = wire::decode_part(body) else {
                    return false;
                };
                let id = self.own_claim(part.ms, part.count);
                let mut state = self.state.lock();
                let key = (Bytes::copy_from_slice(origin), id);
                let now = Instant::now();
                if !state.receiving.contains_key(&key) {
                    state
                        .receiving
                        .retain(|_, r| now.duration_since(r.since) < RECEIVING_LIMIT);
                }
                let receiving: usize = state
                    .receiving
                    .iter()
                    .filter(|((peer, _), _)| peer[..] == *origin)
                    .map(|(_, r)| r.bytes.as_ref().map_or(0, BytesMut::len))
                    .sum();
                let over = receiving + part.body.len() > MAX_RECEIVING_BYTES;
                let entry = state.receiving.entry(key).or_insert_with(|| Receiving {
                    bytes: Some(BytesMut::new()),
                    since: now,
                });
                // Idle time is what counts: a large session may take long to arrive.
                entry.since = now;
                match &mut entry.bytes {
                    Some(_) if over => {
                        warn!(client_id = %part.client_id, "session handed over beyond {MAX_RECEIVING_BYTES} bytes; dropped");
                        entry.bytes = None;
                    }
                    Some(bytes) => bytes.extend_from_slice(&part.body),
                    None => {}
                }
                true
            }
            FRAME_ANSWER => {
                let Some(frame) = wire::decode_answer(body) else {
                    return false;
                };
                let id = self.own_claim(frame.ms, frame.count);
                let outcome = {
                    let mut state = self.state.lock();
                    let session = state
                        .receiving
                        .remove(&(Bytes::copy_from_slice(origin), id.clone()))
                        .and_then(|r| r.bytes);
                    let answer = match (frame.body, session) {
                        (AnswerKind::Nothing, _) => Answer::Nothing,
                        (AnswerKind::Refused, _) => Answer::Refused,
                        (AnswerKind::Foreign, _) => Answer::Foreign,
                        (AnswerKind::Session, Some(bytes)) => Answer::Session(bytes.freeze()),
                        // Its parts were dropped (too large, see MAX_RECEIVING_BYTES).
                        (AnswerKind::Session, None) => Answer::Nothing,
                    };
                    state
                        .claims
                        .on_answer(&frame.client_id, &id, origin, answer)
                };
                // A session is adopted as it arrives, here in the receiver's thread, before the
                // link's next frames: what the peer sends on for it (frame 7) finds it, even
                // while the claim still waits for other peers. A claim that then loses hands
                // it on from the registry, as a session of its own.
                let session = match &outcome {
                    OnAnswer::Stray(Some(session)) => {
                        info!(client_id = %frame.client_id, "a session handed over after its claim was complete; kept here");
                        Some(session.clone())
                    }
                    OnAnswer::Done(done) => done
                        .session
                        .iter()
                        .chain(&done.extra)
                        .find(|(from, _)| from[..] == *origin)
                        .map(|(_, bytes)| bytes.clone()),
                    OnAnswer::Waiting => {
                        self.state
                            .lock()
                            .claims
                            .session_from(&frame.client_id, &id, origin)
                    }
                    OnAnswer::Stray(None) => None,
                };
                if let (Some(session), Some(broker)) = (session, self.broker()) {
                    let from = Some((Bytes::copy_from_slice(origin), id));
                    self.adopt(&broker, &frame.client_id, session, from);
                }
                if let OnAnswer::Done(done) = outcome {
                    self.complete(*done);
                }
                true
            }
            FRAME_LATE_DELIVERIES => {
                let Some(frame) = wire::decode_part(body) else {
                    return false;
                };
                let Ok(deliveries) = decode_deliveries(&frame.body, Instant::now()) else {
                    return false;
                };
                let id = self.own_claim(frame.ms, frame.count);
                let mailbox = {
                    let state = self.state.lock();
                    state
                        .arrived
                        .get(&frame.client_id)
                        .filter(|(claim, _, _)| *claim == id)
                        .map(|(_, mailbox, _)| mailbox.clone())
                };
                match (mailbox, self.broker()) {
                    (Some(mailbox), Some(broker)) => {
                        for delivery in deliveries {
                            mailbox.push(delivery, &broker.metrics);
                        }
                    }
                    _ => debug!(client_id = %frame.client_id, count = deliveries.len(),
                                "messages for a session that is no longer here; dropped"),
                }
                true
            }
            FRAME_SETTLED => {
                let Some(frame) = wire::decode_part(body) else {
                    return false;
                };
                let id = ClaimId {
                    ms: frame.ms,
                    count: frame.count,
                    node: Bytes::copy_from_slice(origin),
                };
                if let Some(settled) = self.state.lock().moving.remove(&(frame.client_id, id)) {
                    let _ = settled.send(());
                }
                true
            }
            _ => false,
        }
    }

    /// The id of a claim of this node, as an answer names it.
    fn own_claim(&self, ms: u64, count: u32) -> ClaimId {
        let node = Bytes::copy_from_slice(self.state.lock().claims.node());
        ClaimId { ms, count, node }
    }

    fn answer(&self, id: &ClaimId, client_id: &str, kind: AnswerKind) {
        let frame = wire::encode_answer(id.ms, id.count, kind, client_id);
        self.send_to(&id.node, FRAME_ANSWER, std::slice::from_ref(&frame));
    }

    fn spawn_take_over(self: &Arc<Self>, client_id: String, id: ClaimId, request: Request) {
        let Some(runtime) = self.runtime.get() else {
            return;
        };
        let handover = self.clone();
        runtime.spawn(async move { handover.take_over(client_id, id, request).await });
    }

    /// Gives the client id up to a peer's claim `id`: closes the connection that holds it
    /// here, and answers with the session (the client continues it) or after ending it.
    async fn take_over(self: Arc<Self>, client_id: String, id: ClaimId, request: Request) {
        let Some(broker) = self.broker() else {
            return;
        };
        let _counted = TakingOver::new(&self.taking_over);
        let sessions = &broker.sessions;
        // A claim made only to adopt takes an offline session, never a client's connection,
        // nor one a client of this node is claiming (or has just claimed) for itself.
        if request.adopt_only
            && (sessions.is_connected(&client_id)
                || self.state.lock().claims.is_pending(&client_id))
        {
            self.answer(&id, &client_id, AnswerKind::Nothing);
            return;
        }
        // Another user's session is not this claim's to take (access control on).
        if let (Some(claimant), Some(stored)) = (&request.owner, sessions.owner_of(&client_id)) {
            if *claimant != stored {
                debug!(%client_id, "claim for another user's session refused");
                self.answer(&id, &client_id, AnswerKind::Foreign);
                return;
            }
        }
        if !request.adopt_only {
            let mut state = self.state.lock();
            let now = Instant::now();
            if state.taken_over.len() >= state.taken_over_prune_at {
                state
                    .taken_over
                    .retain(|_, (_, at)| now.duration_since(*at) < TAKEN_OVER_MEMORY);
                state.taken_over_prune_at = (state.taken_over.len() * 2).max(1024);
            }
            let later = state
                .taken_over
                .get(&client_id)
                .is_none_or(|(known, _)| *known < id);
            if later {
                state
                    .taken_over
                    .insert(client_id.clone(), (id.clone(), now));
            }
        }
        // Half the claimant's budget: the answer must reach it before its own `-cht` runs out,
        // or the session arrives after it went on without (and is refused there).
        if !request.adopt_only && !sessions.kick_and_wait(&client_id, self.timeout / 2).await {
            warn!(%client_id, "the connection holding a client id claimed by a peer did not close in time");
        }
        let peer = self.peers.find_now(&id.node);
        let (snapshot, moving) = match &peer {
            _ if !request.want_session => {
                if let Some(will) = sessions.end(&client_id, &broker.router) {
                    broker.publish(will);
                }
                (None, None)
            }
            Some(_) => match sessions.export_moving(&client_id, &broker.router) {
                Some((snapshot, moving)) => (Some(snapshot), Some(moving)),
                None => (None, None),
            },
            // Gone already: the session stays here as it is.
            None => (None, None),
        };
        let Some(peer) = peer else {
            if request.want_session {
                warn!(%client_id, "the peer that claimed a session is gone; the session stays here");
            }
            return;
        };
        let exported_at = Instant::now();
        // In the snapshot version the claimant reads.
        let bytes = snapshot
            .as_ref()
            .map(|snapshot| snapshot.encode_as(exported_at, peer.snapshot_version));
        let answer = wire::encode_answer(
            id.ms,
            id.count,
            if bytes.is_some() {
                AnswerKind::Session
            } else {
                AnswerKind::Nothing
            },
            &client_id,
        );
        let parts = match &bytes {
            Some(bytes) => wire::encode_parts(id.ms, id.count, &client_id, bytes),
            None => Vec::new(),
        };
        debug!(%client_id, bytes = bytes.as_ref().map_or(0, |s| s.len()), "client id given up to a peer's claim");
        drop(bytes);
        // The move is registered before the answer goes: the claimant may tell that its
        // subscriptions are in place (frame 8) as soon as it has the session, before this task
        // runs again, and a frame 8 for a move not registered yet would be dropped, leaving the
        // move (and a drain waiting for it) to run until MOVE_LIMIT.
        let settled = moving.as_ref().map(|_| {
            let (settled_tx, settled) = oneshot::channel();
            self.state
                .lock()
                .moving
                .insert((client_id.clone(), id.clone()), settled_tx);
            settled
        });
        // Parts then the answer, in one go: nothing else of the link comes between, and the
        // link cannot start over in between.
        let pushed = peer.push_handover_all(
            &[
                (FRAME_SESSION_PART, &parts),
                (FRAME_ANSWER, std::slice::from_ref(&answer)),
            ],
            !parts.is_empty(),
        );
        drop(parts);
        // A client's claim: the session's delayed will waits no more where it is kept, as its
        // client is connecting elsewhere (a reconnection cancels it).
        let keep_will = request.adopt_only;
        let Some(queued) = pushed else {
            // The link starts over (or the peer just went): nothing was queued, and the session
            // would be sent on to nowhere. It stays here; the claim completes at its deadline.
            if let (Some(snapshot), Some(moving)) = (snapshot, moving) {
                warn!(%client_id, "a session could not be handed over (the link to the claimant starts over); kept here");
                self.state
                    .lock()
                    .moving
                    .remove(&(client_id.clone(), id.clone()));
                let kept = Kept {
                    snapshot,
                    exported_at,
                    keep_will,
                };
                self.keep_here(&broker, &client_id, kept, moving, Vec::new());
            }
            return;
        };
        if queued.wake {
            self.peers.wake_sender();
        }
        if let (Some(snapshot), Some(moving), Some(settled)) = (snapshot, moving, settled) {
            let kept = Kept {
                snapshot,
                exported_at,
                keep_will,
            };
            self.send_on(
                &broker, &peer, &client_id, &id, moving, settled, kept, queued,
            )
            .await;
        }
    }

    /// Sends on to `peer` what reaches the session that moved there for claim `id`, until it
    /// says its subscriptions are in place (`settled`, registered in `moving`; and
    /// [`MOVE_LINGER`] more), or [`MOVE_LIMIT`] has passed since it took the session's
    /// `answer` (queued where on which control link); then ends the session here.
    ///
    /// Unless the peer never confirmed: the control link that held the answer is gone (it
    /// started over, or the peer went) or would not take what is sent on, the answer was not
    /// taken within [`DELIVERY_LIMIT`], or it was and the peer dropped the session (too large,
    /// unreadable) or its confirmation was lost. Then the session is `kept` here, with what was
    /// sent on: the peer may not have it. If it did, two copies live until its client's next
    /// claim meets them, which keeps the one its client used last and adds the other's
    /// messages (see [`crate::session::SessionRegistry::adopt`]): duplicates, never a session
    /// lost.
    #[allow(clippy::too_many_arguments)]
    async fn send_on(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        peer: &Arc<Peer>,
        client_id: &str,
        id: &ClaimId,
        moving: Moving,
        settled: oneshot::Receiver<()>,
        kept: Kept,
        answer: HandoverQueued,
    ) {
        tokio::pin!(settled);
        // Until the peer has taken the answer, the move may take as long as the link needs.
        let mut deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
        let mut taken = false;
        let mut lost = false;
        let mut poll = tokio::time::interval(ANSWER_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut linger: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut count = 0usize;
        // What was sent on before the peer said it has the session: kept with it if it stays.
        let mut unconfirmed = Vec::new();
        loop {
            let deliveries = moving.take(&broker.metrics);
            if !deliveries.is_empty() {
                if self.send_late(peer, client_id, id, &deliveries) {
                    count += deliveries.len();
                } else if linger.is_none() {
                    lost = true;
                } else {
                    warn!(
                        client_id,
                        count = deliveries.len(),
                        "messages for a session that moved could not be sent on; dropped"
                    );
                }
                if linger.is_none() {
                    unconfirmed.extend(deliveries);
                }
            }
            if !taken && !lost {
                match peer.handover_taken(answer.link, answer.end) {
                    Some(true) => {
                        taken = true;
                        deadline = tokio::time::Instant::now() + MOVE_LIMIT;
                    }
                    Some(false) => {}
                    None => lost = true,
                }
            }
            if lost && linger.is_none() {
                break;
            }
            tokio::select! {
                _ = moving.ready() => {}
                result = &mut settled, if linger.is_none() => {
                    if result.is_err() {
                        break;
                    }
                    linger = Some(Box::pin(tokio::time::sleep(MOVE_LINGER)));
                }
                _ = async { linger.as_mut().expect("guarded").await }, if linger.is_some() => break,
                _ = poll.tick(), if !taken && !lost => {}
                _ = tokio::time::sleep_until(deadline), if linger.is_none() => break,
            }
        }
        self.state
            .lock()
            .moving
            .remove(&(client_id.to_string(), id.clone()));
        // A confirmation that came as the loop ended counts.
        let confirmed = linger.is_some() || settled.try_recv().is_ok();
        if !confirmed {
            warn!(
                client_id,
                lost,
                taken,
                "the claimant may not have the session handed over to it; kept here too"
            );
            self.keep_here(broker, client_id, kept, moving, unconfirmed);
            return;
        }
        drop(kept);
        let last = moving.finish(&broker.sessions, &broker.router);
        if !last.is_empty() {
            if self.send_late(peer, client_id, id, &last) {
                count += last.len();
            } else {
                warn!(
                    client_id,
                    count = last.len(),
                    "messages for a session that moved could not be sent on; dropped"
                );
            }
        }
        debug!(
            client_id,
            count, "messages sent on to the node a session moved to"
        );
    }

    /// Queues `deliveries` for the session that moved to `peer` (frame 7); says whether they
    /// were.
    fn send_late(
        &self,
        peer: &Arc<Peer>,
        client_id: &str,
        id: &ClaimId,
        deliveries: &[crate::router::Delivery],
    ) -> bool {
        // In frames of a bounded size, like a session's parts.
        let frames: Vec<_> = late_frames(deliveries)
            .into_iter()
            .map(|range| {
                let body = encode_deliveries(&deliveries[range], Instant::now());
                wire::part(id.ms, id.count, client_id, &body)
            })
            .collect();
        match peer.push_handover(FRAME_LATE_DELIVERIES, &frames) {
            Some(wake) => {
                if wake {
                    self.peers.wake_sender();
                }
                true
            }
            None => false,
        }
    }

    /// Completes a claim: hands on what a later claim is owed, and wakes the connection waiting
    /// for it.
    fn complete(self: &Arc<Self>, done: Done) {
        let Done {
            client_id,
            id,
            verdict,
            session,
            extra,
            yield_to,
            unanswered,
        } = done;
        if unanswered > 0 {
            info!(%client_id, unanswered, "claim complete without every peer's answer");
        }
        // The sessions it gathered were adopted as they came (see `on_frame`).
        let _ = (session, extra);
        if let Some((later, request)) = yield_to {
            self.spawn_take_over(client_id.clone(), later, request);
        }
        let mut state = self.state.lock();
        if let Some(waiter) = state.waiters.remove(&id) {
            let _ = waiter.send(verdict);
        }
        for next in state.queued.remove(&client_id).unwrap_or_default() {
            let _ = next.send(());
        }
    }

    /// Puts a session handed over into the registry as an offline session; `from` names the
    /// peer it came from and the claim, which that peer's messages for it name (frame 7), and
    /// which it is told once this node's subscriptions are in place (frame 8).
    fn adopt(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        client_id: &str,
        bytes: Bytes,
        from: Option<(Bytes, ClaimId)>,
    ) {
        // Dropped without a confirmation: the node it came from keeps it (see
        // `Handover::send_on`).
        let snapshot = match SessionSnapshot::decode(&bytes, Instant::now(), Duration::ZERO) {
            Ok(snapshot) if snapshot.client_id == client_id => snapshot,
            Ok(_) => {
                warn!(
                    client_id,
                    "session handed over for another client id; dropped"
                );
                return;
            }
            Err(error) => {
                warn!(client_id, %error, "session handed over cannot be read; dropped");
                return;
            }
        };
        self.install(broker, client_id, snapshot, from);
    }

    /// [`Handover::adopt`] once read; the mailbox its messages go to now, and whether that is
    /// a newer copy's it was merged into.
    fn install(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        client_id: &str,
        snapshot: SessionSnapshot,
        from: Option<(Bytes, ClaimId)>,
    ) -> Option<(Arc<Mailbox>, bool)> {
        let (will, installed) = match broker.sessions.adopt(snapshot, &broker.router) {
            Adopted::Installed { mailbox, will_due } => (will_due, Some((mailbox, false))),
            Adopted::Merged { mailbox } => {
                info!(
                    client_id,
                    "a copy of a session its client used before came from a peer; its messages joined the copy here"
                );
                (None, Some((mailbox, true)))
            }
            Adopted::Refused { will_due } => {
                info!(
                    client_id,
                    "session handed over while a newer one of the client id is here; it ends"
                );
                // The node it came from need not send on what comes for it.
                if let Some((peer, claim)) = &from {
                    let frame = wire::part(claim.ms, claim.count, client_id, &[]);
                    self.send_to(peer, FRAME_SETTLED, std::slice::from_ref(&frame));
                }
                (will_due, None)
            }
        };
        // What the node it came from sends on goes where its messages went.
        if let (Some((mailbox, _)), Some((peer, claim))) = (&installed, from) {
            {
                let mut state = self.state.lock();
                let now = Instant::now();
                // Amortized: not a pass over it for every session that arrives.
                if state.arrived.len() >= state.arrived_prune_at {
                    state
                        .arrived
                        .retain(|_, (_, _, at)| now.duration_since(*at) < MOVE_LIMIT * 2);
                    state.arrived_prune_at = (state.arrived.len() * 2).max(1024);
                }
                state
                    .arrived
                    .insert(client_id.to_string(), (claim.clone(), mailbox.clone(), now));
            }
            self.confirm_subscriptions(broker, peer, client_id, claim);
        }
        if let Some(will) = will {
            broker.publish(will);
        }
        installed
    }

    /// Puts a session that could not be handed over (or not for sure) back in here, with what
    /// reached it since it was taken out (`late`, and what its mailbox still holds): adopted
    /// first (written to the data directory, if any) and the old copy ended after, so that a
    /// crash in between leaves two copies rather than none.
    fn keep_here(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        client_id: &str,
        kept: Kept,
        moving: Moving,
        mut late: Vec<crate::router::Delivery>,
    ) {
        let Kept {
            mut snapshot,
            exported_at,
            keep_will,
        } = kept;
        // Its clock ran on while it was away.
        snapshot.offline_for = snapshot
            .offline_for
            .map(|offline_for| offline_for + exported_at.elapsed());
        snapshot.forget_journal();
        if !keep_will {
            snapshot.will = None;
        }
        late.extend(moving.take(&broker.metrics));
        let installed = self.install(broker, client_id, snapshot, None);
        late.extend(moving.finish(&broker.sessions, &broker.router));
        if let Some((mailbox, merged)) = installed {
            // Numbered in the old copy's journal: the new one numbers and writes them.
            let late = late.into_iter().map(|mut delivery| {
                delivery.stored = None;
                delivery
            });
            if merged {
                // Into a newer copy, whose own messages they do not push out.
                mailbox.merge(late, &broker.metrics);
            } else {
                for delivery in late {
                    mailbox.push(delivery, &broker.metrics);
                }
            }
        }
    }

    /// Tells `peer`, once every peer has taken the subscriptions a session that moved here
    /// added (or lags beyond what a SUBACK waits for), that it may stop sending on what comes
    /// for it.
    fn confirm_subscriptions(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        peer: Bytes,
        client_id: &str,
        claim: ClaimId,
    ) {
        let Some(runtime) = self.runtime.get() else {
            return;
        };
        let wait = broker.interest_wait();
        let handover = self.clone();
        let client_id = client_id.to_string();
        runtime.spawn(async move {
            if let Some(wait) = wait {
                wait.settled().await;
            }
            let frame = wire::part(claim.ms, claim.count, &client_id, &[]);
            handover.send_to(&peer, FRAME_SETTLED, std::slice::from_ref(&frame));
        });
    }
}

/// The rendezvous hash of a client id and a node: the node with the highest takes the session.
fn rendezvous(client_id: &str, node_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: only this node chooses, but the choice should not change between calls.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut hasher);
    node_id.hash(&mut hasher);
    hasher.finish()
}

/// Splits deliveries sent on into frames: each at most [`wire::PART_BYTES`] of messages, but
/// for one larger message alone (which the receiver accepts up to `-mpl`). A frame is closed
/// before the delivery that would cross the bound, not after: a large message arriving behind
/// small ones made a frame of both, which the receiver refused with its whole link.
fn late_frames(deliveries: &[crate::router::Delivery]) -> Vec<std::ops::Range<usize>> {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, delivery) in deliveries.iter().enumerate() {
        let size = delivery.message.topic.len() + delivery.message.payload.len() + 64;
        if index > start && bytes + size > wire::PART_BYTES {
            frames.push(start..index);
            start = index;
            bytes = 0;
        }
        bytes += size;
    }
    if start < deliveries.len() {
        frames.push(start..deliveries.len());
    }
    frames
}

#[cfg(test)]
mod late_frame_tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::codec::QoS;
    use crate::router::{Delivery, Message};

    fn delivery(len: usize) -> Delivery {
        let message = Message::new(
            Bytes::from_static(b"t"),
            Bytes::from(vec![0; len]),
            QoS::AtLeastOnce,
            false,
        );
        Delivery::new(Arc::new(message), QoS::AtLeastOnce, false)
    }

    #[test]
    fn a_large_message_behind_small_ones_goes_in_a_frame_of_its_own() {
        let deliveries = [delivery(10_000), delivery(1 << 20), delivery(10)];
        assert_eq!(late_frames(&deliveries), [0..1, 1..2, 2..3]);
        let small: Vec<Delivery> = (0..100).map(|_| delivery(1_000)).collect();
        let frames = late_frames(&small);
        assert!(frames.len() > 1 && frames.iter().all(|r| r.len() * 1_064 <= wire::PART_BYTES));
        assert_eq!(frames.last().map(|r| r.end), Some(100));
        assert!(late_frames(&[]).is_empty());
    }
}
