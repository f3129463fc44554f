//! Sessions: the state that belongs to a client id rather than to a TCP connection.
//!
//! A session has two parts. Its [`Mailbox`] is shared: the router pushes deliveries into it from
//! any publisher's task, and the connection that owns the session drains it. Everything else
//! ([`SessionState`]: subscriptions, in-flight QoS 1/2 messages, QoS 2 packet ids awaiting PUBREL)
//! is owned by exactly one connection at a time, so it needs no lock. The [`SessionRegistry`]
//! maps client ids to sessions and hands the state from connection to connection: a connection
//! [`claims`](SessionRegistry::claim) it after CONNECT (taking it over from a connection that
//! still holds it) and [`releases`](SessionRegistry::release) it when it closes. A session whose
//! expiry is zero (clean session, or MQTT 5 Session Expiry Interval 0) is discarded then; any
//! other stays in memory, keeps queueing QoS 1/2 messages and is discarded once it has been
//! offline for its expiry ([`SessionRegistry::expire`]). An MQTT 5 will with a delay waits in the
//! offline session: published when the delay or the session ends, cancelled by a reconnect.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::QoS;
use crate::metrics::Metrics;
use crate::router::{Message, Router};

mod durable;
mod mailbox;
mod outgoing;
mod signal;
pub mod snapshot;
mod transfer;

pub use mailbox::{Drain, Mailbox, Pushed, Wakes};
pub use outgoing::{InFlight, Outgoing};
pub use signal::Signal;
pub use snapshot::{SessionSnapshot, SnapshotError, SnapshotSubscription};
pub use transfer::{Adopted, Moving};

/// Identifies one session (a client id reused after a clean session gets a new one).
pub type SessionId = u64;

/// The part of a session owned by the connection that holds it.
pub struct SessionState {
    pub mailbox: Arc<Mailbox>,
    /// Filters as the client sent them (including `$share/...`), with the granted QoS.
    pub subscriptions: BTreeMap<String, QoS>,
    pub outgoing: Outgoing,
    /// Inbound QoS 2 packet ids delivered and awaiting PUBREL: a resent PUBLISH with one of
    /// these ids is acknowledged again but not delivered again (exactly once).
    pub incoming_qos2: AwaitingRelease,
    /// Retained messages owed for new subscriptions, sent before anything in the mailbox. Not
    /// bounded by `-mq`: every matching retained message is delivered, paced by the client's
    /// in-flight window and socket like any other delivery. One cursor per filter, so its size
    /// is bounded by the session's subscriptions (`-msc`), not by the retained store.
    pub retained: RetainedQueue,
    /// How long the session outlives its connection. Set by each CONNECT (and an MQTT 5
    /// DISCONNECT may change it).
    pub expiry: SessionExpiry,
    /// The authenticated username it was started for (access control on); only that user
    /// continues it. A thin pointer, like [`AwaitingRelease`]: see the size test.
    #[allow(clippy::box_collection)]
    owner: Option<Box<String>>,
    /// When its client last connected, on the wall clock (ms since the epoch; 0 if not
    /// known): of two copies of one session in the cluster (a node that crashed and came back
    /// with its copy, a partition), the one its client used last is kept.
    pub connected_ms: u64,
}

/// The retained messages owed, in order. Absent while empty, which it is for most sessions
/// most of the time, so that a session pays 8 bytes for it instead of a queue's 32 (what makes
/// room for the data directory's journal pointer within the 128-byte class).
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
pub struct RetainedQueue(Option<Box<VecDeque<RetainedOwed>>>);

impl RetainedQueue {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn push_back(&mut self, owed: RetainedOwed) {
        self.0.get_or_insert_default().push_back(owed);
    }

    pub fn front_mut(&mut self) -> Option<&mut RetainedOwed> {
        self.0.as_mut().and_then(|queue| queue.front_mut())
    }

    pub fn pop_front(&mut self) -> Option<RetainedOwed> {
        let queue = self.0.as_mut()?;
        let owed = queue.pop_front();
        if queue.is_empty() {
            self.0 = None;
        }
        owed
    }

    pub fn retain(&mut self, keep: impl FnMut(&RetainedOwed) -> bool) {
        if let Some(queue) = self.0.as_mut() {
            queue.retain(keep);
            if queue.is_empty() {
                self.0 = None;
            }
        }
    }
}

impl From<Vec<RetainedOwed>> for RetainedQueue {
    fn from(owed: Vec<RetainedOwed>) -> RetainedQueue {
        RetainedQueue((!owed.is_empty()).then(|| Box::new(owed.into())))
    }
}

impl From<RetainedQueue> for Vec<RetainedOwed> {
    fn from(queue: RetainedQueue) -> Vec<RetainedOwed> {
        queue.0.map_or_else(Vec::new, |queue| (*queue).into())
    }
}

/// Inbound QoS 2 packet ids awaiting PUBREL. Absent while empty, which it is for most sessions
/// (few clients publish at QoS 2), so that a session pays 8 bytes for it instead of a set's 24.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
pub struct AwaitingRelease(Option<Box<BTreeSet<u16>>>);

impl AwaitingRelease {
    pub fn contains(&self, packet_id: &u16) -> bool {
        self.0.as_ref().is_some_and(|ids| ids.contains(packet_id))
    }

    pub fn insert(&mut self, packet_id: u16) -> bool {
        self.0.get_or_insert_default().insert(packet_id)
    }

    pub fn remove(&mut self, packet_id: &u16) -> bool {
        let Some(ids) = self.0.as_mut() else {
            return false;
        };
        let removed = ids.remove(packet_id);
        if ids.is_empty() {
            self.0 = None;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |ids| ids.len())
    }

    /// The ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().flat_map(|ids| ids.iter().copied())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// Who claims a session, for [`SessionRegistry::claim_as`].
#[derive(Debug, Clone, Copy)]
pub enum SessionOwner<'a> {
    /// Access control is off: usernames prove nothing, and any client continues the session
    /// of its client id.
    Unchecked,
    /// An authenticated client, with its username (if any).
    User(Option<&'a str>),
}

impl SessionOwner<'_> {
    fn may_continue(self, stored: Option<&str>) -> bool {
        match self {
            SessionOwner::Unchecked => true,
            SessionOwner::User(user) => user == stored,
        }
    }
}

/// How long a session outlives its connection, in whole seconds: four bytes rather than the
/// sixteen of an `Option<Duration>`, because every session has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpiry(u32);

impl SessionExpiry {
    /// The session ends with its connection.
    pub const ZERO: SessionExpiry = SessionExpiry(0);
    const NEVER: u32 = u32::MAX;

    /// The expiry; `None` = never.
    pub fn get(self) -> Option<Duration> {
        (self.0 != Self::NEVER).then(|| Duration::from_secs(u64::from(self.0)))
    }
}

impl From<Option<Duration>> for SessionExpiry {
    /// `None` = never; a duration beyond 136 years is as good as never, and is kept as the
    /// longest that is not.
    fn from(expiry: Option<Duration>) -> SessionExpiry {
        match expiry {
            None => SessionExpiry(Self::NEVER),
            Some(expiry) => SessionExpiry(
                u32::try_from(expiry.as_secs())
                    .map_or(Self::NEVER - 1, |secs| secs.min(Self::NEVER - 1)),
            ),
        }
    }
}

/// The retained messages a subscription is still owed: those matching `filter` after the topic
/// `after` (all of them while it is `None`), delivered at most at `qos`, with the subscription's
/// MQTT 5 Subscription Identifier (0 for none).
#[derive(Debug)]
pub struct RetainedOwed {
    pub filter: Box<str>,
    pub qos: QoS,
    pub identifier: u32,
    pub after: Option<bytes::Bytes>,
}

impl SessionState {
    pub fn client_id(&self) -> &str {
        self.mailbox.client_id()
    }

    /// Owes the retained messages matching `filter` (a new or a `repeated` subscription): a
    /// repeat starts that filter's delivery over, as MQTT asks, without owing them twice. Only a
    /// repeat looks through what is owed (a new filter cannot be there: unsubscribing forgives
    /// it): a client subscribing a million filters faster than their retained messages are
    /// looked up would otherwise make that quadratic (it hung the broker for minutes).
    pub fn owe_retained(&mut self, filter: &str, qos: QoS, identifier: u32, repeated: bool) {
        if repeated {
            self.forgive_retained(filter);
        }
        self.retained.push_back(RetainedOwed {
            filter: filter.into(),
            qos,
            identifier,
            after: None,
        });
    }

    /// Forgets what is owed for `filter` (unsubscribed).
    pub fn forgive_retained(&mut self, filter: &str) {
        self.retained.retain(|owed| &*owed.filter != filter);
    }
}

/// Who holds a session: lets a new connection, the server's shutdown or an administrator make
/// it let go.
#[derive(Clone)]
pub struct Holder {
    signals: Arc<HolderSignals>,
}

/// Why the connection holding a session is asked to close; the connection turns it into the
/// DISCONNECT reason an MQTT 5 client is sent.
///
/// Kept in one byte next to the kick signal, so that the reason costs an idle connection
/// nothing. When several kicks race, the one with the highest value wins: a shutdown is never
/// reported as anything else. A drain's redirect (0x9C "Use another server") is a shutdown
/// too: its Server Reference is the same for every client of the node, so the connection reads
/// it from the configuration (`-dsr`) as it closes, not from this byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum KickReason {
    /// Not a close: the authorization rules changed, and the connection re-judges its
    /// subscriptions (see [`Holder::take_recheck`]). The weakest reason, so that any real
    /// kick racing with it wins.
    RulesChanged = 1,
    /// A new connection with the same client id claimed the session.
    TakenOver = 2,
    /// `DELETE /clients/<id>` on the HTTP API.
    Administrative = 3,
    /// The server is shutting down.
    Shutdown = 4,
}

impl KickReason {
    fn from_u8(value: u8) -> Option<KickReason> {
        match value {
            1 => Some(KickReason::RulesChanged),
            2 => Some(KickReason::TakenOver),
            3 => Some(KickReason::Administrative),
            4 => Some(KickReason::Shutdown),
            _ => None,
        }
    }
}

/// What [`SessionRegistry::kick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The connection holding the client id was asked to close.
    Asked,
    /// No connection holds it (none is connected with that client id, or its session is
    /// offline).
    NotConnected,
    /// A new connection with that client id is taking the session over: the old one is
    /// closing, and the new one does not hold it yet. An administrative kick is not applied
    /// (see [`Holder::kick`]); asking again in a moment reaches the new connection.
    TakeoverUnderWay,
}

/// `HolderSignals::reason` before any kick.
const NOT_KICKED: u8 = 0;

struct HolderSignals {
    /// The holding connection's number ([`crate::broker::Broker::next_connection_id`]). Here
    /// rather than beside the pointer: a holder is one pointer, in the registry's map and in
    /// every connection.
    connection: u64,
    /// Set to ask the holding connection to close; `reason` is set first.
    kick: Signal,
    /// The strongest [`KickReason`] asked so far, or [`NOT_KICKED`].
    reason: AtomicU8,
    /// Set once the holder has released the session; a takeover waits for it on the registry's
    /// [`SessionRegistry::released`] (one for all holders: 32 bytes less in every connection,
    /// which keeps these signals in the allocator's 64-byte class).
    released: AtomicBool,
    /// The authenticated username the holding connection claimed the session as (access
    /// control on; see [`SessionOwner`]). A `Box<String>`, a thin pointer: the signals stay
    /// within the allocator's 64-byte class, which every connection pays for.
    #[allow(clippy::box_collection)]
    owner: Option<Box<String>>,
}

impl Holder {
    pub fn new(connection: u64) -> Holder {
        Holder::owned_by(connection, None)
    }

    /// A holder for a connection whose client proved `owner` (access control on).
    pub fn owned_by(connection: u64, owner: Option<&str>) -> Holder {
        Holder {
            signals: Arc::new(HolderSignals {
                connection,
                owner: owner.map(|owner| Box::new(owner.to_string())),
                kick: Signal::new(),
                reason: AtomicU8::new(NOT_KICKED),
                released: AtomicBool::new(false),
            }),
        }
    }

    /// The holding connection's number.
    pub fn connection(&self) -> u64 {
        self.signals.connection
    }

    /// Completes when the holder is asked to close (a permit is kept if nobody waits yet);
    /// [`Holder::kick_reason`] says why. The reason is not this future's output so that the
    /// future every idle connection keeps stays as small as the bare notification.
    pub async fn kicked(&self) {
        self.signals.kick.notified().await
    }

    /// Points the next kick's wake-up at `waker` (the parker's, while the connection sleeps);
    /// wakes it at once if a kick is already pending.
    pub fn watch(&self, waker: &std::task::Waker) {
        self.signals.kick.watch(waker);
    }

    /// Why the holder was asked to close; `None` before [`Holder::kicked`] has completed.
    pub fn kick_reason(&self) -> Option<KickReason> {
        KickReason::from_u8(self.signals.reason.load(Ordering::Acquire))
    }

    /// Asks the holder to close for `reason`. `false`, and nothing changes, when an
    /// administrative kick finds a takeover under way: the holder is closing anyway, and the
    /// connection about to hold the client id is the one the administrator means, which this
    /// kick would not reach.
    fn kick(&self, reason: KickReason) -> bool {
        let updated =
            self.signals
                .reason
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                    let taken_over = current == KickReason::TakenOver as u8;
                    if taken_over && reason == KickReason::Administrative {
                        None
                    } else {
                        Some(current.max(reason as u8))
                    }
                });
        if updated.is_err() {
            return false;
        }
        self.signals.kick.notify();
        true
    }

    /// After [`Holder::kicked`]: when the only reason is [`KickReason::RulesChanged`], clears
    /// it and returns true (the connection goes on); false when a real kick is pending.
    pub fn take_recheck(&self) -> bool {
        self.signals
            .reason
            .compare_exchange(
                KickReason::RulesChanged as u8,
                NOT_KICKED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    fn is_released(&self) -> bool {
        self.signals.released.load(Ordering::Acquire)
    }
}

enum Entry {
    /// Stored while its client is offline.
    Idle(Box<Idle>),
    Held(Holder),
}

/// An offline session and what waits on its clock.
struct Idle {
    state: Box<SessionState>,
    /// When it expires; `None` = never.
    expires: Option<Instant>,
    /// Since when its client has been gone, on the wall clock (ms since the epoch): what its
    /// record in the data directory keeps, for its expiry to count across a restart.
    offline_since: u64,
    /// An MQTT 5 will waiting for its delay, and when it is due.
    will: Option<(DelayedWill, Instant)>,
}

impl Idle {
    /// A session whose client went at `gone` (an instant; `offline_since` on the wall clock):
    /// its expiry and its will's delay count from then. A deadline past what an Instant holds
    /// means never for the expiry, and `now` for the will.
    fn gone_at(
        state: Box<SessionState>,
        will: Option<DelayedWill>,
        gone: Instant,
        offline_since: u64,
        now: Instant,
    ) -> Box<Idle> {
        let expires = state
            .expiry
            .get()
            .and_then(|expiry| gone.checked_add(expiry));
        let will = will.map(|will| {
            let due = gone.checked_add(will.delay).unwrap_or(now);
            (will, due)
        });
        Box::new(Idle {
            state,
            expires,
            offline_since,
            will,
        })
    }

    /// The next moment something is due: the will or the expiry.
    fn deadline(&self) -> Option<Instant> {
        let will = self.will.as_ref().map(|(_, due)| *due);
        match (will, self.expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A will to publish later: when its delay has passed, unless its client comes back first.
#[derive(Debug)]
pub struct DelayedWill {
    /// Without an expiry yet: its Message Expiry Interval counts from when it is published
    /// (§3.1.3.2.4), not from when its connection closed.
    pub message: Box<Message>,
    /// The Message Expiry Interval; `None` if it never expires.
    pub expiry: Option<Duration>,
    pub delay: Duration,
}

impl DelayedWill {
    /// The will as published at `now`, its expiry counted from then.
    pub fn publish_at(self, now: Instant) -> Arc<Message> {
        let mut message = *self.message;
        // Beyond what an Instant can hold (over a century): as good as never.
        message.expires_at = self.expiry.and_then(|expiry| now.checked_add(expiry));
        Arc::new(message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("the connection holding client id {0:?} did not let go in time")]
    TakeoverTimedOut(String),
    /// Access control is on and the session of this client id belongs to another user: taking
    /// it over (or starting clean over it) would close that user's connection, fire its will
    /// and discard its messages.
    #[error("client id {0:?} belongs to another user's session")]
    OwnedByAnother(String),
}

/// What a connection gets from a successful claim.
pub struct Claimed {
    pub state: Box<SessionState>,
    /// Whether a stored session was resumed (CONNACK's session-present flag).
    pub session_present: bool,
    /// The delayed will of the session this claim discarded (a clean start): its session ended,
    /// so it is due now.
    pub will_due: Option<Arc<Message>>,
}

/// The registry's map and the deadlines of its offline sessions, under one lock.
#[derive(Default)]
struct Sessions {
    entries: HashMap<Arc<str>, Entry>,
    /// Offline sessions by their next deadline ([`Idle::deadline`]), so that the periodic
    /// sweep looks only at what is due.
    deadlines: BTreeSet<(Instant, Arc<str>)>,
}

impl Sessions {
    /// Removes the entry of `client_id`, and its deadline if it was offline.
    fn remove_entry(&mut self, client_id: &str) -> Option<(Arc<str>, Entry)> {
        let removed = self.entries.remove_entry(client_id);
        if let Some((key, Entry::Idle(idle))) = &removed {
            if let Some(deadline) = idle.deadline() {
                self.deadlines.remove(&(deadline, key.clone()));
            }
        }
        removed
    }

    fn insert_idle(&mut self, key: Arc<str>, idle: Box<Idle>) {
        if let Some(deadline) = idle.deadline() {
            self.deadlines.insert((deadline, key.clone()));
        }
        self.entries.insert(key, Entry::Idle(idle));
    }
}

pub struct SessionRegistry {
    sessions: Mutex<Sessions>,
    /// Notified (all waiters of a shard) whenever a holder of that shard (its connection number
    /// modulo [`RELEASE_SHARDS`]) releases its session, after its `released` flag is set: a
    /// takeover waits on its holder's shard. Sharded so that in a reconnect storm a release
    /// wakes a few of the waiting takeovers, not all of them (each release woke every waiter
    /// with one: 1.7 M wake-ups for 10,000 takeovers, measured in review).
    released: [Notify; RELEASE_SHARDS],
    next_session: AtomicU64,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
    /// The data directory, when there is one (see `durable`).
    store: std::sync::OnceLock<Arc<crate::store::Store>>,
}

/// How many wait queues takeovers are spread over (see [`SessionRegistry::released`]).
const RELEASE_SHARDS: usize = 64;

/// How long a takeover waits for the old connection to release the session.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

impl SessionRegistry {
    pub fn new(queue_capacity: usize, metrics: Arc<Metrics>) -> SessionRegistry {
        SessionRegistry {
            sessions: Mutex::new(Sessions::default()),
            released: std::array::from_fn(|_| Notify::new()),
            next_session: AtomicU64::new(1),
            queue_capacity,
            metrics,
            store: std::sync::OnceLock::new(),
        }
    }

    /// Takes the session of `client_id` for `holder`, closing the connection that holds it now
    /// (takeover). `clean` discards any stored session and starts a new one.
    pub async fn claim(
        &self,
        client_id: &str,
        clean: bool,
        holder: &Holder,
        router: &Router,
    ) -> Result<Claimed, ClaimError> {
        self.claim_as(client_id, clean, SessionOwner::Unchecked, holder, router)
            .await
    }

    /// [`SessionRegistry::claim`] for an authenticated client: the session of a client id
    /// belongs to the user who started it for as long as it lives, so a claim by another user
    /// is refused ([`ClaimError::OwnedByAnother`]) rather than allowed to take over, discard
    /// or continue it.
    pub async fn claim_as(
        &self,
        client_id: &str,
        clean: bool,
        owner: SessionOwner<'_>,
        holder: &Holder,
        router: &Router,
    ) -> Result<Claimed, ClaimError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_TIMEOUT;
        loop {
            let current = {
                let mut sessions = self.sessions.lock();
                // Another user's session, held or stored, is not this client's to take.
                let foreign = match sessions.entries.get(client_id) {
                    Some(Entry::Held(current)) => {
                        !owner.may_continue(current.signals.owner.as_deref().map(String::as_str))
                    }
                    Some(Entry::Idle(idle)) => {
                        !owner.may_continue(idle.state.owner.as_deref().map(String::as_str))
                    }
                    None => false,
                };
                if foreign {
                    return Err(ClaimError::OwnedByAnother(client_id.to_string()));
                }
                match sessions.remove_entry(client_id) {
                    Some((key, Entry::Held(current))) => {
                        // Always applied: only an administrative kick is ever refused.
                        let _ = current.kick(KickReason::TakenOver);
                        sessions.entries.insert(key, Entry::Held(current.clone()));
                        current
                    }
                    stored => {
                        let (key, stored) = match stored {
                            Some((key, Entry::Idle(idle))) => (key, Some(idle)),
                            _ => (Arc::from(client_id), None),
                        };
                        sessions
                            .entries
                            .insert(key.clone(), Entry::Held(holder.clone()));
                        drop(sessions);
                        return Ok(self.start(key, clean, owner, stored, router));
                    }
                }
            };
            // Taken over: the holder was asked to close; wait until it has released the session.
            if self.released(&current, deadline).await.is_err() {
                return Err(ClaimError::TakeoverTimedOut(client_id.to_string()));
            }
        }
    }

    /// Asks every connection that holds a session to re-judge its subscriptions against the
    /// reloaded authorization rules (without closing).
    pub fn recheck_all(&self) {
        for entry in self.sessions.lock().entries.values() {
            if let Entry::Held(holder) = entry {
                let _ = holder.kick(KickReason::RulesChanged);
            }
        }
    }

    /// Asks every connection that holds a session to close (shutdown).
    pub fn kick_all(&self) {
        for entry in self.sessions.lock().entries.values() {
            if let Entry::Held(holder) = entry {
                let _ = holder.kick(KickReason::Shutdown);
            }
        }
    }

    /// The connections holding a session now, for a drain to ask them to close in turn.
    pub fn connected(&self) -> Vec<Holder> {
        self.sessions
            .lock()
            .entries
            .values()
            .filter_map(|entry| match entry {
                Entry::Held(holder) => Some(holder.clone()),
                Entry::Idle(_) => None,
            })
            .collect()
    }

    /// Asks `holder` to close because the server is shutting down (its turn in a drain).
    pub fn drain(&self, holder: &Holder) {
        let _ = holder.kick(KickReason::Shutdown);
    }

    /// Asks the connection that holds the session of `client_id` to close, for `reason`; its
    /// session is then kept or discarded as on any close.
    pub fn kick(&self, client_id: &str, reason: KickReason) -> Kick {
        match self.sessions.lock().entries.get(client_id) {
            Some(Entry::Held(holder)) if holder.kick(reason) => Kick::Asked,
            Some(Entry::Held(_)) => Kick::TakeoverUnderWay,
            _ => Kick::NotConnected,
        }
    }

    /// Whether a connection holds the session of `client_id` now.
    pub fn is_connected(&self, client_id: &str) -> bool {
        matches!(
            self.sessions.lock().entries.get(client_id),
            Some(Entry::Held(_))
        )
    }

    fn start(
        &self,
        client_id: Arc<str>,
        clean: bool,
        owner: SessionOwner<'_>,
        stored: Option<Box<Idle>>,
        router: &Router,
    ) -> Claimed {
        let mut will_due = None;
        let (state, session_present) = match stored {
            // A reconnect in time cancels a delayed will.
            // (Another user's session never gets here: see `claim_as`.)
            // Not one whose expiry has passed and that the sweep has not reached yet (one
            // read back from the data directory may have expired while the node was down).
            Some(idle) if !clean && idle.expires.is_none_or(|at| at > Instant::now()) => {
                let mut state = idle.state;
                state.connected_ms = crate::store::wall_ms();
                (state, true)
            }
            stored => {
                if let Some(old) = stored {
                    will_due = old.will.map(|(will, _)| will.publish_at(Instant::now()));
                    self.discard(*old.state, router);
                }
                self.metrics.sessions.inc();
                let id = self.next_session.fetch_add(1, Ordering::Relaxed);
                let state = Box::new(SessionState {
                    mailbox: Arc::new(Mailbox::new(id, client_id, self.queue_capacity)),
                    subscriptions: BTreeMap::new(),
                    outgoing: Outgoing::default(),
                    incoming_qos2: AwaitingRelease::default(),
                    retained: RetainedQueue::default(),
                    expiry: SessionExpiry::ZERO,
                    owner: match owner {
                        SessionOwner::Unchecked => None,
                        SessionOwner::User(user) => user.map(|user| Box::new(user.to_string())),
                    },
                    connected_ms: crate::store::wall_ms(),
                });
                (state, false)
            }
        };
        router.set_online(
            &state.mailbox,
            state.subscriptions.keys().map(String::as_str),
            true,
        );
        Claimed {
            state,
            session_present,
            will_due,
        }
    }

    /// Gives the session back when its connection closes: kept for its expiry, or discarded if
    /// that is zero. A delayed will waits with it; one whose session ends now is returned, due.
    pub fn release(
        &self,
        holder: &Holder,
        mut state: Box<SessionState>,
        will: Option<DelayedWill>,
        router: &Router,
    ) -> Option<Arc<Message>> {
        // Its record, with the will that now waits with it (a session that ends removes its
        // records as its mailbox closes).
        let offline_since = crate::store::wall_ms();
        if state.expiry != SessionExpiry::ZERO {
            self.keep_journal(&mut state, will.as_ref(), Some(offline_since), router);
        }
        router.set_online(
            &state.mailbox,
            state.subscriptions.keys().map(String::as_str),
            false,
        );
        let now = Instant::now();
        let kept = state.expiry != SessionExpiry::ZERO;
        {
            let mut sessions = self.sessions.lock();
            let ours = matches!(
                sessions.entries.get(state.client_id()),
                Some(Entry::Held(h)) if h.connection() == holder.connection()
            );
            if ours {
                if !kept {
                    sessions.entries.remove(state.client_id());
                } else {
                    let key = state.mailbox.client_id_shared();
                    sessions.insert_idle(key, Idle::gone_at(state, will, now, offline_since, now));
                    drop(sessions);
                    self.mark_released(holder);
                    return None;
                }
            }
        }
        // A session that ends with its connection, or (defensively) one whose entry no longer
        // names us: nobody else can reach this state, so drop its subscriptions and queue.
        self.discard(*state, router);
        self.mark_released(holder);
        will.map(|will| will.publish_at(now))
    }

    fn mark_released(&self, holder: &Holder) {
        holder.signals.released.store(true, Ordering::Release);
        self.release_shard(holder).notify_waiters();
    }

    fn release_shard(&self, holder: &Holder) -> &Notify {
        &self.released[(holder.connection() % RELEASE_SHARDS as u64) as usize]
    }

    /// Waits until `holder` has released its session, or the deadline passes.
    async fn released(
        &self,
        holder: &Holder,
        deadline: tokio::time::Instant,
    ) -> Result<(), tokio::time::error::Elapsed> {
        tokio::time::timeout_at(deadline, async {
            loop {
                let notified = self.release_shard(holder).notified();
                tokio::pin!(notified);
                // Registered before the flag is read, so a release in between is not missed.
                notified.as_mut().enable();
                if holder.is_released() {
                    return;
                }
                // Another holder's release wakes every takeover: look again.
                notified.await;
            }
        })
        .await
    }

    /// Drops a session that nobody can reach any more. Its mailbox is closed first, so that
    /// nothing is queued for it while the router removes its subscriptions, which for a session
    /// with many of them goes on in the background (see [`Router::remove_session`]).
    fn discard(&self, state: SessionState, router: &Router) {
        state.mailbox.close(&self.metrics);
        router.remove_session(state.mailbox.id(), state.subscriptions.into_keys());
        self.metrics.sessions.dec();
    }

    /// Publishes what is due among the offline sessions at `now`: delayed wills whose delay has
    /// passed are returned (to be published by the caller), and sessions whose expiry has passed
    /// are discarded, their pending wills returned with them. Returns the wills and how many
    /// sessions were discarded.
    pub fn expire(&self, now: Instant, router: &Router) -> (Vec<Arc<Message>>, usize) {
        let mut wills = Vec::new();
        let mut expired = Vec::new();
        {
            let mut sessions = self.sessions.lock();
            while let Some((deadline, key)) = sessions.deadlines.first().cloned() {
                if deadline > now {
                    break;
                }
                let mut idle = match sessions.remove_entry(&key) {
                    Some((_, Entry::Idle(idle))) => idle,
                    other => {
                        // Defensive: a deadline whose entry is gone or online. The deadline
                        // goes; an online session's entry stays where it was.
                        sessions.deadlines.remove(&(deadline, key));
                        if let Some((key, held @ Entry::Held(_))) = other {
                            sessions.entries.insert(key, held);
                        }
                        continue;
                    }
                };
                if idle.will.as_ref().is_some_and(|(_, due)| *due <= now) {
                    wills.extend(idle.will.take().map(|(will, _)| will.publish_at(now)));
                    // Published: its record must not bring it back after a restart.
                    if let Some(journal) = idle.state.outgoing.journal() {
                        let record = durable::record_of(&idle.state, None, router);
                        journal.session(&record, Some(idle.offline_since));
                    }
                }
                if idle.expires.is_some_and(|at| at <= now) {
                    wills.extend(idle.will.take().map(|(will, _)| will.publish_at(now)));
                    expired.push(idle.state);
                } else {
                    sessions.insert_idle(key, idle);
                }
            }
        }
        let count = expired.len();
        // Outside the registry lock: unsubscribing takes the subscription tree's write lock.
        for state in expired {
            self.discard(*state, router);
        }
        (wills, count)
    }

    /// Takes every delayed will (shutdown: the sessions end with the process).
    pub fn take_delayed_wills(&self) -> Vec<Arc<Message>> {
        let mut sessions = self.sessions.lock();
        let mut wills = Vec::new();
        let now = Instant::now();
        let Sessions {
            entries, deadlines, ..
        } = &mut *sessions;
        for (key, entry) in entries.iter_mut() {
            if let Entry::Idle(idle) = entry {
                if idle.will.is_some() {
                    if let Some(deadline) = idle.deadline() {
                        deadlines.remove(&(deadline, key.clone()));
                    }
                    wills.extend(idle.will.take().map(|(will, _)| will.publish_at(now)));
                    if let Some(deadline) = idle.deadline() {
                        deadlines.insert((deadline, key.clone()));
                    }
                }
            }
        }
        wills
    }

    /// Sessions in memory (online and offline).
    pub fn len(&self) -> usize {
        self.sessions.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::router::{Delivery, Grant, Message};
    use crate::topic::Subscription;
    use bytes::Bytes;

    pub(crate) fn delivery(qos: QoS, payload: &'static [u8]) -> Delivery {
        let message = Message::new(
            Bytes::from_static(b"t"),
            Bytes::from_static(payload),
            qos,
            false,
        );
        Delivery::new(Arc::new(message), qos, false)
    }

    pub(crate) fn payloads(deliveries: &[Delivery]) -> Vec<&[u8]> {
        deliveries.iter().map(|d| &d.message.payload[..]).collect()
    }

    fn registry() -> (Arc<Metrics>, Arc<Router>, Arc<SessionRegistry>) {
        let metrics = Arc::new(Metrics::new());
        let router = Arc::new(Router::new(metrics.clone()));
        let registry = Arc::new(SessionRegistry::new(10, metrics.clone()));
        (metrics, router, registry)
    }

    /// Plays a connection task: holds the session until kicked, then releases it.
    fn hold_until_kicked(
        registry: Arc<SessionRegistry>,
        router: Arc<Router>,
        holder: Holder,
        state: Box<SessionState>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            holder.kicked().await;
            let mut state = state;
            state.expiry = None.into();
            registry.release(&holder, state, None, &router);
        })
    }

    #[tokio::test]
    async fn kick_asks_the_holder_to_close_with_its_reason() {
        let (_metrics, router, registry) = registry();
        assert_eq!(
            registry.kick("c", KickReason::Administrative),
            Kick::NotConnected
        );
        let holder = Holder::new(1);
        let claimed = registry
            .claim("c", false, &holder, &router)
            .await
            .expect("claim");
        assert_eq!(holder.kick_reason(), None);
        assert_eq!(
            registry.kick("other", KickReason::Administrative),
            Kick::NotConnected
        );
        assert_eq!(registry.kick("c", KickReason::Administrative), Kick::Asked);
        tokio::time::timeout(Duration::from_secs(5), holder.kicked())
            .await
            .expect("kicked");
        assert_eq!(holder.kick_reason(), Some(KickReason::Administrative));
        // A takeover racing the kick does not change the reason; a shutdown does.
        assert!(holder.kick(KickReason::TakenOver));
        assert_eq!(holder.kick_reason(), Some(KickReason::Administrative));
        registry.kick_all();
        assert_eq!(holder.kick_reason(), Some(KickReason::Shutdown));
        // Released with an expiry, the session is kept offline: nothing holds it to kick.
        let mut state = claimed.state;
        state.expiry = Some(Duration::from_secs(60)).into();
        assert!(registry.release(&holder, state, None, &router).is_none());
        assert_eq!(
            registry.kick("c", KickReason::Administrative),
            Kick::NotConnected
        );
        let again = Holder::new(2);
        let claimed = registry
            .claim("c", false, &again, &router)
            .await
            .expect("reclaim");
        assert!(claimed.session_present);
    }

    /// Review finding: a kick that arrives while a takeover waits for the old connection to let
    /// go lands on that old connection, which is closing anyway: the request is reported done
    /// (`true`, HTTP 204), yet the new connection, the one the client id now names, is never
    /// asked to close. (The old client is also told 0x98 rather than 0x8E.)
    #[tokio::test]
    async fn an_administrative_kick_during_a_takeover_is_not_lost_on_the_old_connection() {
        let (_metrics, router, registry) = registry();
        let old = Holder::new(1);
        let claimed = registry
            .claim("c", false, &old, &router)
            .await
            .expect("claim");
        // The new connection claims; the registry kicks the old one and waits for it.
        let new = Holder::new(2);
        let takeover = tokio::spawn({
            let (registry, router, new) = (registry.clone(), router.clone(), new.clone());
            async move { registry.claim("c", false, &new, &router).await.is_ok() }
        });
        for _ in 0..1000 {
            if old.kick_reason().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(old.kick_reason(), Some(KickReason::TakenOver));

        // The administrator's request arrives in that window.
        let kick = registry.kick("c", KickReason::Administrative);
        assert_eq!(kick, Kick::TakeoverUnderWay);
        assert_eq!(
            old.kick_reason(),
            Some(KickReason::TakenOver),
            "the old client is told 0x8E"
        );
        let reported_done = kick == Kick::Asked;

        // The old connection lets go; the new one gets the session.
        let mut state = claimed.state;
        state.expiry = Some(Duration::from_secs(60)).into();
        registry.release(&old, state, None, &router);
        let took_over = tokio::time::timeout(Duration::from_secs(5), takeover)
            .await
            .expect("takeover in time")
            .expect("takeover task");
        assert!(took_over);
        assert!(registry.is_connected("c"));

        assert!(
            !reported_done || new.kick_reason() == Some(KickReason::Administrative),
            "the kick was reported done (204) but the connection now holding the client id \
             was never asked to close"
        );
    }

    #[test]
    fn the_kick_reason_and_owner_keep_the_holder_signals_in_the_64_byte_class() {
        // Every connection holds one: the reason byte lives in what was padding, the owner is
        // one thin pointer, and with the Arc's two counts the allocation stays within 64 bytes.
        assert_eq!(
            std::mem::size_of::<HolderSignals>(),
            std::mem::size_of::<(Signal, AtomicBool)>() + 16
        );
        assert!(std::mem::size_of::<HolderSignals>() + 16 <= 64);
        assert_eq!(std::mem::size_of::<Holder>(), 8);
    }

    #[test]
    fn a_session_stays_within_the_allocators_128_byte_class() {
        // Every session has one, connected or not: a field more moves them all to 160 bytes.
        assert!(std::mem::size_of::<SessionState>() <= 128);
    }

    #[test]
    fn qos2_ids_awaiting_release_take_no_memory_once_released() {
        let mut ids = AwaitingRelease::default();
        assert!(ids.is_empty() && !ids.contains(&1));
        assert!(ids.insert(1) && ids.insert(2) && !ids.insert(2));
        assert_eq!(ids.len(), 2);
        assert!(ids.remove(&1) && !ids.remove(&1));
        assert!(ids.contains(&2));
        assert!(ids.remove(&2));
        assert!(ids.is_empty() && ids.0.is_none());
    }

    #[tokio::test]
    async fn takeover_hands_the_session_to_the_new_connection() {
        let (metrics, router, registry) = registry();
        let first = Holder::new(1);
        let claimed = registry
            .claim("c", false, &first, &router)
            .await
            .expect("claim");
        assert!(!claimed.session_present);
        assert!(registry.is_connected("c"));
        let mut state = claimed.state;
        state.incoming_qos2.insert(42);
        hold_until_kicked(registry.clone(), router.clone(), first, state);

        let second = Holder::new(2);
        let claimed = registry
            .claim("c", false, &second, &router)
            .await
            .expect("takeover");
        assert!(claimed.session_present);
        assert!(claimed.state.incoming_qos2.contains(&42));
        assert_eq!(metrics.sessions.get(), 1);

        let mut state = claimed.state;
        state.expiry = SessionExpiry::ZERO;
        registry.release(&second, state, None, &router);
        assert!(registry.is_empty());
        assert_eq!(metrics.sessions.get(), 0);
    }

    #[tokio::test]
    async fn offline_sessions_expire_and_online_ones_do_not() {
        let metrics = Arc::new(Metrics::new());
        let router = Router::new(metrics.clone());
        let registry = SessionRegistry::new(10, metrics.clone());
        let (offline, online) = (Holder::new(1), Holder::new(2));
        let claimed = registry
            .claim("off", false, &offline, &router)
            .await
            .expect("claim");
        let mut state = claimed.state;
        let filter = "a/+".to_string();
        let subscription = Subscription::parse(&filter).expect("valid");
        router.subscribe(&state.mailbox, &subscription, Grant::qos(QoS::AtLeastOnce));
        state.subscriptions.insert(filter, QoS::AtLeastOnce);
        state.expiry = Some(Duration::from_secs(60)).into();
        registry.release(&offline, state, None, &router);
        let _held = registry
            .claim("on", false, &online, &router)
            .await
            .expect("claim");
        assert_eq!(metrics.subscriptions.get(), 1);

        let now = Instant::now();
        assert_eq!(registry.expire(now, &router).1, 0);
        let later = now + Duration::from_secs(61);
        assert_eq!(registry.expire(later, &router).1, 1);
        assert_eq!(registry.len(), 1, "the online session stays");
        assert!(registry.is_connected("on"));
        assert_eq!(
            metrics.subscriptions.get(),
            0,
            "the expired session's subscriptions go"
        );
        assert_eq!(metrics.sessions.get(), 1);
        let resumed = registry
            .claim("off", false, &Holder::new(3), &router)
            .await
            .expect("claim");
        assert!(!resumed.session_present);
    }

    #[tokio::test]
    async fn a_stray_deadline_never_removes_an_online_session() {
        let (_, router, registry) = registry();
        let holder = Holder::new(1);
        let _claimed = registry
            .claim("on", false, &holder, &router)
            .await
            .expect("claim");
        let now = Instant::now();
        // Only an inconsistent index could point a deadline at an online session: the sweep
        // must drop the deadline, not the session's entry.
        registry
            .sessions
            .lock()
            .deadlines
            .insert((now, Arc::from("on")));
        let (wills, expired) = registry.expire(now, &router);
        assert!(wills.is_empty() && expired == 0);
        assert!(registry.is_connected("on"), "still held by its connection");
        assert!(registry.sessions.lock().deadlines.is_empty());
    }

    fn will(payload: &'static [u8], delay: Duration) -> DelayedWill {
        let message = Message::new(
            Bytes::from_static(b"will"),
            Bytes::from_static(payload),
            QoS::AtMostOnce,
            false,
        );
        DelayedWill {
            message: Box::new(message),
            expiry: None,
            delay,
        }
    }

    /// Releases the session of `client_id` with `expiry` and a will delayed by `delay`.
    async fn leave_with_will(
        registry: &SessionRegistry,
        router: &Router,
        client_id: &str,
        expiry: Option<Duration>,
        delay: Duration,
    ) -> Option<Arc<Message>> {
        let holder = Holder::new(1);
        let claimed = registry
            .claim(client_id, false, &holder, router)
            .await
            .expect("claim");
        let mut state = claimed.state;
        state.expiry = expiry.into();
        registry.release(&holder, state, Some(will(b"w", delay)), router)
    }

    #[tokio::test]
    async fn a_delayed_will_is_due_after_its_delay_or_when_its_session_ends() {
        let (_, router, registry) = registry();
        let delay = Duration::from_secs(10);
        let start = Instant::now();
        assert!(
            leave_with_will(&registry, &router, "a", None, delay)
                .await
                .is_none(),
            "kept with the session"
        );
        assert!(registry.expire(start, &router).0.is_empty());
        let (wills, expired) = registry.expire(start + delay + Duration::from_secs(1), &router);
        assert_eq!((wills.len(), expired), (1, 0), "due, the session stays");
        assert_eq!(registry.len(), 1);

        // A session that expires before the delay publishes it then.
        let expiry = Some(Duration::from_secs(2));
        leave_with_will(&registry, &router, "b", expiry, delay).await;
        let (wills, expired) = registry.expire(start + Duration::from_secs(3), &router);
        assert_eq!((wills.len(), expired), (1, 1));

        // A session that ends with its connection hands it back at once.
        let due = leave_with_will(&registry, &router, "c", Some(Duration::ZERO), delay).await;
        assert!(due.is_some());
    }

    #[tokio::test]
    async fn a_reconnect_cancels_a_delayed_will_and_a_clean_start_makes_it_due() {
        let (_, router, registry) = registry();
        let delay = Duration::from_secs(10);
        leave_with_will(&registry, &router, "r", None, delay).await;
        let resumed = registry
            .claim("r", false, &Holder::new(2), &router)
            .await
            .expect("claim");
        assert!(resumed.session_present && resumed.will_due.is_none());
        let far = Instant::now() + delay * 10;
        assert!(registry.expire(far, &router).0.is_empty(), "cancelled");

        leave_with_will(&registry, &router, "n", None, delay).await;
        let fresh = registry
            .claim("n", true, &Holder::new(3), &router)
            .await
            .expect("claim");
        assert!(!fresh.session_present);
        assert!(fresh.will_due.is_some(), "the discarded session ended");

        leave_with_will(&registry, &router, "s", None, delay).await;
        assert_eq!(registry.take_delayed_wills().len(), 1, "shutdown");
        assert!(registry.expire(far, &router).0.is_empty());
    }

    #[tokio::test]
    async fn simultaneous_takeovers_are_all_served_without_waiting_for_the_timeout() {
        let (_, router, registry) = registry();
        let first = Holder::new(1);
        let claimed = registry
            .claim("c", false, &first, &router)
            .await
            .expect("claim");
        hold_until_kicked(registry.clone(), router.clone(), first, claimed.state);

        let rivals = (2..=4).map(|connection| {
            let (registry, router) = (registry.clone(), router.clone());
            tokio::spawn(async move {
                let holder = Holder::new(connection);
                let claimed = registry.claim("c", false, &holder, &router).await?;
                hold_until_kicked(registry, router, holder, claimed.state);
                Ok::<_, ClaimError>(claimed.session_present)
            })
        });
        let all = futures_join_all(rivals.collect());
        let results = tokio::time::timeout(TAKEOVER_TIMEOUT / 2, all)
            .await
            .expect("every claim is served well before the takeover timeout");
        for result in results {
            assert!(
                result.expect("task").expect("claim"),
                "the session is resumed"
            );
        }
    }

    async fn futures_join_all<T>(
        handles: Vec<tokio::task::JoinHandle<T>>,
    ) -> Vec<Result<T, tokio::task::JoinError>> {
        let mut results = Vec::with_capacity(handles.len());
        for handle in handles {
            results.push(handle.await);
        }
        results
    }
}
