//! The router: who is subscribed to what, and which messages are retained.
//!
//! A PUBLISH enters through [`Router::publish`]: the retained store ([`retained`]) is updated when
//! the message is retained, the subscription tree ([`tree`]) is walked once for the topic, and a
//! [`Delivery`] is pushed into the [`Mailbox`] of every matching session (the connection tasks
//! drain their mailboxes).
//!
//! The subscription tree is edited in place behind a read-write lock: publishers walk it under
//! the read lock, so they never wait for each other; SUBSCRIBE and UNSUBSCRIBE take the write lock
//! for one filter at a time. A session that goes away with many subscriptions
//! ([`Router::remove_session`]) is removed in batches of [`TEARDOWN_BATCH`] filters per write-lock
//! hold, on a task of its own that yields between batches, so that neither publishers nor the
//! worker thread it runs on wait for the whole teardown.
//!
//! Each [`Message`] caches its encoded MQTT 3.1.1 PUBLISH per delivery QoS, so a message fanned
//! out to many subscribers is encoded at most three times, and the bytes are shared. An MQTT 5
//! delivery is composed per subscriber (its topic alias, subscription identifiers and remaining
//! expiry differ), from the message's properties kept in wire form.

mod retained;
mod tree;

use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use smallvec::SmallVec;

use retained::RetainedStore;
pub use retained::{
    bucket_of, entry_hash, now_ms, Page, Stamp, StampIndex, Stamped, DIGEST_BUCKETS,
    MAX_STAMP_AHEAD_MS, MAX_TOMBSTONES, TOMBSTONE_LIFETIME_MS,
};
use tree::{LevelKey, Matches, Node, Subscriber};

use crate::codec::{self, QoS};
use crate::metrics::{DropReason, Metrics};
use crate::session::{Drain, Mailbox, Pushed, SessionId, Wakes};
use crate::topic::{self, Subscription};

/// An application message on its way through the broker.
#[derive(Debug)]
pub struct Message {
    /// Valid UTF-8 topic name (checked by the codec and the connection).
    pub topic: Bytes,
    pub payload: Bytes,
    /// The QoS it was published with: deliveries get the minimum of this and the subscription's.
    pub qos: QoS,
    /// Set when it was published with the retain flag.
    pub retain: bool,
    /// The MQTT 5 properties that travel with the message to its subscribers (Payload Format
    /// Indicator, Content Type, Response Topic, Correlation Data, User Properties), as encoded
    /// properties without their length prefix; empty for an MQTT 3.1.1 publish.
    pub properties: Bytes,
    /// When its MQTT 5 Message Expiry Interval runs out; `None` if it never expires.
    pub expires_at: Option<Instant>,
    /// The session that published it, for No Local; 0 for messages from other nodes.
    pub origin: SessionId,
    /// The live PUBLISH form per delivery QoS (retain and DUP clear, packet id zero), made
    /// only for a message delivered to more than one session. Boxed: inline, the three slots
    /// took 120 of the message's 264 bytes (jemalloc's 320-byte class with the `Arc`; 160
    /// without them), on every message queued or in flight, for a cache most never use.
    #[allow(clippy::type_complexity)]
    encoded: OnceLock<Box<[OnceLock<Bytes>; 3]>>,
}

impl Message {
    pub fn new(topic: Bytes, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: Bytes::new(),
            expires_at: None,
            origin: 0,
            encoded: Default::default(),
        }
    }

    /// Whether its expiry has passed at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The Message Expiry Interval to send at `now`: the whole seconds left, rounded up so that
    /// a message still deliverable never says 0 (which would mean "expired" to a receiver that
    /// checks); `None` if it never expires.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// The PUBLISH packet as delivered live at `qos`, encoded on first use and then shared. For
    /// QoS 1 and 2 the packet id is zero: the two bytes just before the payload, which the
    /// sender patches (see [`Message::write_to`]). Empty if the message cannot be encoded.
    fn encoded(&self, qos: QoS) -> &Bytes {
        self.encoded.get_or_init(Box::default)[qos as usize].get_or_init(|| {
            let mut buf = BytesMut::new();
            match codec::encode_publish(&mut buf, false, qos, false, &self.topic, 0, &self.payload)
            {
                Ok(()) => buf.freeze(),
                Err(_) => Bytes::new(),
            }
        })
    }

    /// Appends this message as a PUBLISH to `out`: from the shared encoding for live deliveries
    /// of a message that other sessions receive too (`shared`), encoded straight into `out`
    /// otherwise (one subscriber, retained on subscribe, DUP on resend). Returns false,
    /// writing nothing, for a message the wire format cannot carry (which the codec never
    /// produces from a decoded packet).
    pub fn write_to(
        &self,
        out: &mut BytesMut,
        qos: QoS,
        packet_id: u16,
        retain: bool,
        dup: bool,
        shared: bool,
    ) -> bool {
        if retain || dup || !shared {
            let (topic, payload) = (&self.topic, &self.payload);
            return codec::encode_publish(out, dup, qos, retain, topic, packet_id, payload).is_ok();
        }
        let encoded = self.encoded(qos);
        if encoded.is_empty() {
            return false;
        }
        out.extend_from_slice(encoded);
        if qos != QoS::AtMostOnce {
            // The packet id sits just before the payload.
            let id_at = out.len() - self.payload.len() - 2;
            out[id_at..id_at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        true
    }
}

/// What [`Router::publish`] did with a message.
#[derive(Default)]
pub struct Routed {
    /// Whether any subscription matched (MQTT 5 PUBACK 0x10 when none did).
    pub matched: bool,
    /// Deliveries queued.
    pub deliveries: usize,
    /// A queue the message filled past its soft limit: the publisher should let it drain
    /// before sending more.
    pub congested: Option<Congested>,
    /// The stamp this node gave a retained message (or a clear), in a cluster.
    pub stamp: Option<Stamp>,
}

/// A queue a publisher filled, which it waits for before it sends more.
pub enum Congested {
    /// A subscriber's mailbox, while its consumer is keeping up (see [`Mailbox::drained`]).
    Subscriber(Arc<Mailbox>),
    /// What this node holds for a cluster peer (see [`crate::cluster::peers::Peer::drained`]).
    Peer(Arc<crate::cluster::peers::Peer>),
}

/// The longest a publisher waits at a time for a congested queue to drain.
const CONGESTION_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
/// How many waits of [`CONGESTION_WAIT`] a publisher makes at most before it is let go: a
/// subscriber that keeps taking but whose queue other sources (HTTP publish, the cluster, other
/// publishers) keep filling cannot hold a publisher's acknowledgements and pings for longer.
const CONGESTION_STEPS: usize = 20;
/// How many waits in a row without progress make a queue stalled for its publishers.
const STALLED_STEPS: usize = 3;

impl Congested {
    /// Waits (at most `limit`) until the queue has drained, or says how it moved meanwhile.
    pub async fn drained(&self, limit: std::time::Duration) -> Drain {
        match self {
            Congested::Subscriber(mailbox) => mailbox.drained(limit).await,
            Congested::Peer(peer) => peer.drained(limit).await,
        }
    }

    /// Waits while the queue drains: as long as its consumer makes progress (no
    /// [`STALLED_STEPS`] waits in a row without), for at most [`CONGESTION_STEPS`], until
    /// `interrupted` says otherwise. Returns whether it drained, or the wait was interrupted;
    /// `false` when it gave up (no progress, or too long).
    pub async fn wait_while_draining(&self, interrupted: impl Fn() -> bool) -> bool {
        // Waits in a row without progress: one may be a consumer that did not get the CPU.
        let mut without_progress = 0;
        for _ in 0..CONGESTION_STEPS {
            if interrupted() {
                return true;
            }
            match self.drained(CONGESTION_WAIT).await {
                Drain::Progressing => without_progress = 0,
                Drain::Drained => return true,
                Drain::Stalled if without_progress + 1 < STALLED_STEPS => without_progress += 1,
                Drain::Stalled => return false,
            }
        }
        false
    }
}

/// One message for one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The QoS it is delivered with: min(published, granted).
    pub qos: QoS,
    /// The retain flag it is delivered with: set for retained messages sent because of a new
    /// subscription, and for live ones of a Retain As Published subscription.
    pub retain: bool,
    /// The MQTT 5 Subscription Identifiers of the session's subscriptions that matched.
    pub subscription_ids: SubscriptionIds,
    /// Its number in the session's journal in the data directory (`-dd`), for a QoS 1/2
    /// delivery to a persistent session; `None` otherwise. In the padding: free.
    pub stored: Option<NonZeroU32>,
}

impl Delivery {
    /// A delivery without subscription identifiers, not stored.
    pub fn new(message: Arc<Message>, qos: QoS, retain: bool) -> Delivery {
        Delivery {
            message,
            qos,
            retain,
            subscription_ids: SubscriptionIds::new(),
            stored: None,
        }
    }
}

/// Subscription identifiers of one delivery: almost always none or one, kept inline.
pub type SubscriptionIds = SmallVec<[u32; 1]>;

/// What a session was granted for one filter: the router's view of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// The MQTT 5 Subscription Identifier; 0 for none.
    pub identifier: u32,
}

impl Grant {
    /// A plain grant of `qos` (MQTT 3.1.1).
    pub fn qos(qos: QoS) -> Grant {
        Grant {
            qos,
            no_local: false,
            retain_as_published: false,
            identifier: 0,
        }
    }
}

/// Filters removed per write-lock hold when a session goes away: a few tens of microseconds
/// of holding the lock, so that publishers between batches barely notice.
pub const TEARDOWN_BATCH: usize = 256;

/// Expired retained messages removed per call of [`Router::expire_retained`] (a sweep): some
/// milliseconds of work, so that a sweep never holds a worker thread for long.
pub const EXPIRY_SWEEP_MAX: usize = 16 * TEARDOWN_BATCH;

/// Told, under the tree's write lock, when a filter gets its first direct subscription on this
/// node or loses its last, and when a shared group (a name and a filter) gets its first member
/// here or loses its last: the cluster tells its peers which topics to forward here, and which
/// groups this node can serve.
pub trait FilterWatcher: Send + Sync {
    fn filter_added(&self, filter: &[u8]);
    /// `groups_left`: shared groups remain on the filter here.
    fn filter_removed(&self, filter: &[u8], groups_left: bool);
    fn group_added(&self, group: &str, filter: &str);
    fn group_removed(&self, group: &str, filter: &str);
}

/// Which of the local shared groups matching a message serve it.
pub enum Groups<'a> {
    /// Every one (a single node; a message from a peer of a release that chooses no groups).
    All,
    /// Only these, by (name, filter): a message from a peer that chose this node for them.
    Only(&'a [(Bytes, Bytes)]),
    /// Those for which `choose` says so, told each group's name, its filter and whether a
    /// member is online here: a message published on this node in a cluster, where each group
    /// is served by one node.
    Choose(&'a mut dyn FnMut(&str, &str, bool) -> bool),
}

/// The filters with subscriptions on this node, while the tree cannot change (see
/// [`Router::with_filters`]).
pub struct Filters<'a> {
    tree: &'a Node,
}

impl Filters<'_> {
    /// Calls `visit` with each filter that has direct subscriptions.
    pub fn for_each(&self, mut visit: impl FnMut(&[u8])) {
        self.tree.for_each_filter(&mut Vec::new(), 0, &mut visit);
    }

    /// Calls `visit` with the name and filter of each shared group.
    pub fn for_each_group(&self, mut visit: impl FnMut(&str, &str)) {
        self.tree.for_each_group(&mut visit);
    }
}

pub struct Router {
    /// Shared with the teardown tasks of [`Router::remove_session`].
    tree: Arc<RwLock<Node>>,
    watcher: Arc<OnceLock<Arc<dyn FilterWatcher>>>,
    retained: RwLock<RetainedStore>,
    metrics: Arc<Metrics>,
    /// The data directory the retained messages are written to, when there is one.
    durable: OnceLock<Arc<crate::store::Store>>,
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Router {
        Router {
            tree: Arc::new(RwLock::new(Node::default())),
            watcher: Arc::new(OnceLock::new()),
            retained: RwLock::new(RetainedStore::default()),
            metrics,
            durable: OnceLock::new(),
        }
    }

    /// Writes the retained messages to `store` from now on (those held already are not: they
    /// were read from it).
    pub fn set_store(&self, store: Arc<crate::store::Store>) {
        let _ = self.durable.set(store);
    }

    /// Puts in a retained message read back from the data directory, with the stamp it was
    /// written with in a cluster (which a newer write elsewhere still wins over); without one,
    /// as if published here now. Not written back.
    pub fn restore_retained(&self, message: Arc<Message>, stamp: Option<Stamp>) {
        let topic = message.topic.clone();
        let mut retained = self.retained.write();
        let (applied, delta, stamp) = match (stamp, retained.stamps.is_some()) {
            (Some(stamp), true) => {
                let (applied, delta) =
                    retained.set_stamped(&topic, Some(message.clone()), stamp.clone(), now_ms());
                (applied, delta, Some(stamp))
            }
            _ => {
                let (delta, stamp) = retained.set_local(&topic, Some(message.clone()), now_ms());
                (true, delta, stamp)
            }
        };
        // It replaced what a peer sent meanwhile (already written over it on disk): written
        // back. Otherwise the disk has it already.
        if applied && delta == 0 {
            self.write_retained(&topic, Some(&message), stamp.as_ref());
        }
        drop(retained);
        self.metrics.retained.inc_by(delta);
    }

    /// Writes a retained message (or, with `None`, its removal) to the data directory. Called
    /// under the retained store's lock, so that the disk ends as memory does.
    fn write_retained(&self, topic: &[u8], stored: Option<&Message>, stamp: Option<&Stamp>) {
        if let Some(store) = self.durable.get() {
            match stored {
                Some(message) => store.put_retained(message, stamp),
                None => store.remove_retained(topic),
            }
        }
    }

    /// Adds (or updates the options of) a subscription of `mailbox`'s session.
    pub fn subscribe(&self, mailbox: &Arc<Mailbox>, subscription: &Subscription<'_>, grant: Grant) {
        let path: SmallVec<[&[u8]; 16]> = topic::levels(subscription.filter().as_bytes()).collect();
        let subscriber = Subscriber {
            mailbox: mailbox.clone(),
            qos: grant.qos,
            no_local: grant.no_local,
            retain_as_published: grant.retain_as_published,
            identifier: grant.identifier,
        };
        let mut tree = self.tree.write();
        let filter = subscription.filter();
        let edited = tree.insert(&path, filter, subscription.group(), subscriber);
        if let Some(watcher) = self.watcher.get() {
            if edited.filter {
                watcher.filter_added(filter.as_bytes());
            }
            if let (true, Some(group)) = (edited.group, subscription.group()) {
                watcher.group_added(group, filter);
            }
        }
        drop(tree);
        if edited.changed {
            self.metrics.subscriptions.inc();
        }
    }

    /// Marks `mailbox`'s session online (its client connected) or offline, `subscriptions`
    /// being its filters as subscribed (`$share/...` included). In a cluster, the watcher is
    /// told of each of its shared groups that gets its first online member on this node, or
    /// loses its last: other nodes choose this one for a group only while a member here can
    /// take its messages, as a single node gives them to online members only. Without a
    /// watcher, or without shared subscriptions, only the flag changes.
    pub fn set_online<'a>(
        &self,
        mailbox: &Mailbox,
        subscriptions: impl IntoIterator<Item = &'a str>,
        online: bool,
    ) {
        let Some(watcher) = self.watcher.get() else {
            mailbox.set_online(online);
            return;
        };
        let shared: SmallVec<[Subscription<'a>; 4]> = subscriptions
            .into_iter()
            .filter_map(Subscription::parse)
            .filter(|s| s.group().is_some())
            .collect();
        if shared.is_empty() {
            mailbox.set_online(online);
            return;
        }
        // Under the write lock: the flag and what peers are told change together, between
        // two snapshots or edits.
        let tree = self.tree.write();
        let online_in = |subscription: &Subscription<'_>| {
            let path: SmallVec<[&[u8]; 16]> =
                topic::levels(subscription.filter().as_bytes()).collect();
            let group = subscription.group().unwrap_or_default();
            tree.find_group(&path, group)
                .is_some_and(|g| g.has_online_member())
        };
        let before: SmallVec<[bool; 4]> = shared.iter().map(online_in).collect();
        mailbox.set_online(online);
        for (subscription, was) in shared.iter().zip(before) {
            let (Some(group), is) = (subscription.group(), online_in(subscription)) else {
                continue;
            };
            match (was, is) {
                (false, true) => watcher.group_added(group, subscription.filter()),
                (true, false) => watcher.group_removed(group, subscription.filter()),
                _ => {}
            }
        }
    }

    /// Starts telling `watcher` of filters added and removed (once; later calls are ignored).
    pub fn watch_filters(&self, watcher: Arc<dyn FilterWatcher>) {
        let _ = self.watcher.set(watcher);
    }

    /// Calls `f` with the filters that have subscriptions, while none can be added or removed:
    /// what `f` does then comes before or after every edit as a whole, as the
    /// [`FilterWatcher`] sees them.
    pub fn with_filters<R>(&self, f: impl FnOnce(Filters<'_>) -> R) -> R {
        let tree = self.tree.read();
        f(Filters { tree: &tree })
    }

    /// What session `id` was granted for `subscription`, if it subscribes to it.
    pub fn grant(&self, id: SessionId, subscription: &Subscription<'_>) -> Option<Grant> {
        let path: SmallVec<[&[u8]; 16]> = topic::levels(subscription.filter().as_bytes()).collect();
        let tree = self.tree.read();
        let subscriber = tree.find_subscriber(&path, subscription.group(), id)?;
        Some(Grant {
            qos: subscriber.qos,
            no_local: subscriber.no_local,
            retain_as_published: subscriber.retain_as_published,
            identifier: subscriber.identifier,
        })
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, id: SessionId, subscription: &Subscription<'_>) -> bool {
        let removed = remove(&mut self.tree.write(), id, subscription, &self.watcher);
        if removed {
            self.metrics.subscriptions.dec();
        }
        removed
    }

    /// Removes every subscription of session `id`, which is going away: its mailbox must be
    /// [closed](Mailbox::close) already, so that nothing is queued for it meanwhile. Up to
    /// [`TEARDOWN_BATCH`] filters are removed here and now; the rest by a task that takes the
    /// write lock for one batch at a time and yields in between (in batches here, without a
    /// runtime). The `subscriptions` gauge follows the tree batch by batch.
    pub fn remove_session<I>(&self, id: SessionId, filters: I)
    where
        I: IntoIterator<Item = String>,
        I::IntoIter: Send + 'static,
    {
        let mut filters = filters.into_iter().peekable();
        let teardown = Teardown {
            tree: self.tree.clone(),
            watcher: self.watcher.clone(),
            metrics: self.metrics.clone(),
            id,
        };
        if !teardown.batch(&mut filters) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    while teardown.batch(&mut filters) {
                        tokio::task::yield_now().await;
                    }
                });
            }
            Err(_) => while teardown.batch(&mut filters) {},
        }
    }

    /// Routes a message published on this node to every matching session, and stores it when
    /// retained (stamped as this node's latest write to the topic, in a cluster).
    pub fn publish(&self, message: Arc<Message>) -> Routed {
        let routed = self.publish_to(message, Groups::All);
        if !routed.matched {
            self.count_unmatched();
        }
        routed
    }

    /// Counts a message that nobody took (`no_subscribers`): in a cluster, one that no local
    /// session matched and that went to no other node either. A peer whose interest is not
    /// known yet (no link, or before its filters arrive) may subscribe to anything: a message
    /// sent to it is left for it to count, and a retained one (which receivers do not count,
    /// every node gets them) is then counted nowhere. Under-counting there was chosen over
    /// counting messages that a peer does deliver.
    pub fn count_unmatched(&self) {
        self.metrics.dropped(DropReason::NoSubscribers).inc();
    }

    /// [`Router::publish`], delivering to the matching shared groups that `groups` names,
    /// without counting a message nobody matched: the caller knows whether it goes elsewhere.
    pub fn publish_to(&self, message: Arc<Message>, groups: Groups<'_>) -> Routed {
        let stamp = if message.retain {
            self.retain(&message)
        } else {
            None
        };
        let mut routed = self.route(message, groups, None);
        routed.stamp = stamp;
        routed
    }

    /// Routes a message a cluster peer forwarded to every matching session. When retained it is
    /// stored if its `stamp` wins over what this node holds for the topic (see
    /// [`Stamped::wins_over`]); one from a peer of a release without stamps is stored as if
    /// published here. A message that lost is still routed: it was published. It goes to the
    /// matching shared groups that `groups` names. The subscribers it queues for are woken
    /// through `wakes`, when the caller's batch is done.
    pub fn publish_from_peer(
        &self,
        message: Arc<Message>,
        stamp: Option<Stamp>,
        groups: Groups<'_>,
        wakes: &mut Wakes,
    ) -> Routed {
        if message.retain {
            match stamp {
                Some(stamp) => {
                    if !self.store_retained(&message, stamp) {
                        self.metrics.cluster.retained_stale.inc();
                    }
                }
                None => {
                    self.retain(&message);
                }
            }
        }
        // Every node gets every retained message: whether anyone subscribed to it is for
        // the publishing node to count.
        let retained = message.retain;
        let routed = self.route(message, groups, Some(wakes));
        if !routed.matched && !retained {
            self.count_unmatched();
        }
        routed
    }

    /// Stores a retained message (or, with an empty payload, a clear) written elsewhere at
    /// `stamp`, if that wins over what this node holds for the topic, without routing it;
    /// returns whether it was stored.
    pub fn store_retained(&self, message: &Message, stamp: Stamp) -> bool {
        let stored = retained_copy(message);
        let copy = self.durable.get().and(stored.clone());
        let mut retained = self.retained.write();
        let (applied, delta) =
            retained.set_stamped(&message.topic, stored, stamp.clone(), now_ms());
        if applied {
            self.write_retained(&message.topic, copy.as_deref(), Some(&stamp));
        }
        drop(retained);
        self.metrics.retained.inc_by(delta);
        applied
    }

    /// Stamps the retained messages from now on, this node's writes with `local` (its node id),
    /// for the cluster's anti-entropy; those stored already are stamped as written now.
    pub fn enable_stamps(&self, local: Bytes) {
        let mut store = self.retained.write();
        if store.stamps.is_some() {
            return;
        }
        let mut held = Vec::new();
        store.root().collect(&[&b"#"[..]], true, &mut held);
        store.stamps = Some(StampIndex::new(local));
        let now = now_ms();
        for message in held {
            store.set_local(&message.topic.clone(), Some(message), now);
        }
    }

    /// The hashes of the retained digest's buckets, in a cluster.
    pub fn retained_digest(&self) -> Option<Vec<u64>> {
        let store = self.retained.read();
        Some(store.stamps.as_ref()?.hashes().to_vec())
    }

    /// The stamps of digest `bucket`, as [`StampIndex::range`].
    pub fn retained_stamps(
        &self,
        bucket: usize,
        after: Option<&[u8]>,
        upto: Option<&[u8]>,
        max: usize,
    ) -> Vec<(Bytes, Stamped)> {
        let store = self.retained.read();
        store
            .stamps
            .as_ref()
            .map_or_else(Vec::new, |stamps| stamps.range(bucket, after, upto, max))
    }

    /// The retained message of `topic` (`None` when it is a tombstone) and its stamp.
    pub fn retained_entry(&self, topic: &[u8]) -> Option<(Option<Arc<Message>>, Stamp)> {
        self.retained.read().entry(topic)
    }

    /// Tombstones held, in a cluster.
    pub fn tombstones(&self) -> usize {
        let store = self.retained.read();
        store.stamps.as_ref().map_or(0, StampIndex::tombstones)
    }

    /// Queues `message` for every matching session; their consumers are woken at once, or
    /// gathered in `wakes`.
    fn route(
        &self,
        message: Arc<Message>,
        mut groups: Groups<'_>,
        mut wakes: Option<&mut Wakes>,
    ) -> Routed {
        // Topics of ordinary depth are split without a heap allocation.
        let path: SmallVec<[LevelKey; 8]> =
            topic::levels(&message.topic).map(LevelKey::new).collect();
        let tree = self.tree.read();
        let mut nodes = Matches::new();
        tree.collect(&path, 0, &mut nodes);

        let mut matched = false;
        // A shared group that matched and is served by another cluster node.
        let mut served_elsewhere = false;
        let mut routed = Routed::default();
        let mut deliver =
            |subscriber: &Subscriber, qos: QoS, retain: bool, ids: SubscriptionIds| {
                matched = true;
                let delivery = Delivery {
                    message: message.clone(),
                    qos: message.qos.min(qos),
                    retain: retain && message.retain,
                    subscription_ids: ids,
                    stored: None,
                };
                let pushed = match wakes.as_deref_mut() {
                    Some(wakes) => subscriber
                        .mailbox
                        .push_batched(delivery, &self.metrics, wakes),
                    None => subscriber.mailbox.push(delivery, &self.metrics),
                };
                match pushed {
                    Pushed::Dropped => {}
                    Pushed::Queued => routed.deliveries += 1,
                    Pushed::Congested => {
                        routed.deliveries += 1;
                        routed.congested.get_or_insert_with(|| {
                            Congested::Subscriber(subscriber.mailbox.clone())
                        });
                    }
                }
            };
        // A session being torn down is as good as unsubscribed; No Local keeps a session's own
        // messages from it.
        let wanted = |subscriber: &Subscriber| {
            let own_message = subscriber.no_local && subscriber.mailbox.id() == message.origin;
            !subscriber.mailbox.is_closed() && !own_message
        };
        match nodes.as_slice() {
            [] => {}
            [node] => node.subscribers().for_each(|s| {
                if wanted(s) {
                    deliver(s, s.qos, s.retain_as_published, identifiers(s));
                }
            }),
            nodes => {
                // Overlapping filters of one session give one copy at the highest granted QoS,
                // with the identifiers of every subscription that matched.
                let mut direct: Vec<&Subscriber> = Vec::new();
                for node in nodes {
                    node.subscribers().for_each(|s| {
                        if wanted(s) {
                            direct.push(s)
                        }
                    });
                }
                direct.sort_unstable_by_key(|s| (s.mailbox.id(), std::cmp::Reverse(s.qos)));
                for same_session in direct.chunk_by(|a, b| a.mailbox.id() == b.mailbox.id()) {
                    let first = same_session[0];
                    let retain_as_published = same_session.iter().any(|s| s.retain_as_published);
                    let mut ids: SubscriptionIds = same_session
                        .iter()
                        .map(|s| s.identifier)
                        .filter(|&id| id != 0)
                        .collect();
                    ids.sort_unstable();
                    ids.dedup();
                    deliver(first, first.qos, retain_as_published, ids);
                }
            }
        }
        for node in &nodes {
            for group in node.shared_groups() {
                let serve = match &mut groups {
                    Groups::All => true,
                    Groups::Only(names) => names.iter().any(|(name, filter)| {
                        **name == *group.name().as_bytes() && **filter == *group.filter().as_bytes()
                    }),
                    Groups::Choose(choose) => {
                        choose(group.name(), group.filter(), group.has_online_member())
                    }
                };
                if !serve {
                    served_elsewhere = true;
                    continue;
                }
                if let Some(member) = group.pick() {
                    if !member.mailbox.is_closed() {
                        let rap = member.retain_as_published;
                        deliver(member, member.qos, rap, identifiers(member));
                    }
                }
            }
        }
        routed.matched = matched || served_elsewhere;
        routed
    }

    /// Stores a retained message published here (a clear with an empty payload); returns its
    /// stamp, in a cluster.
    fn retain(&self, message: &Message) -> Option<Stamp> {
        let stored = retained_copy(message);
        let copy = self.durable.get().and(stored.clone());
        let mut retained = self.retained.write();
        let (delta, stamp) = retained.set_local(&message.topic, stored, now_ms());
        self.write_retained(&message.topic, copy.as_deref(), stamp.as_ref());
        drop(retained);
        self.metrics.retained.inc_by(delta);
        stamp
    }

    /// Removes the retained messages whose MQTT 5 expiry is at or before `now`, at most
    /// [`EXPIRY_SWEEP_MAX`]; returns how many. They are never sent once expired, so this only
    /// gives their memory back, and what is left waits for the next sweep. The lock is taken
    /// per [`TEARDOWN_BATCH`], so that publishers and subscribers between batches barely
    /// notice many messages expiring at once.
    pub fn expire_retained(&self, now: Instant) -> usize {
        let mut removed = 0;
        let wall = now_ms();
        while self
            .retained
            .write()
            .stamps
            .as_mut()
            .is_some_and(|stamps| stamps.sweep(wall, TEARDOWN_BATCH) == TEARDOWN_BATCH)
        {}
        while removed < EXPIRY_SWEEP_MAX {
            let batch = self.retained.write().expire(now, TEARDOWN_BATCH);
            self.metrics.retained.dec_by(batch as i64);
            removed += batch;
            if batch < TEARDOWN_BATCH {
                break;
            }
        }
        removed
    }

    /// The retained messages matching a (valid, non-shared) filter.
    pub fn retained(&self, filter: &str) -> Vec<Arc<Message>> {
        let path: Vec<&[u8]> = topic::levels(filter.as_bytes()).collect();
        let mut out = Vec::new();
        self.retained.read().root().collect(&path, true, &mut out);
        out
    }

    /// The next page of retained messages matching a (valid, non-shared) filter, after the topic
    /// `after` (the last one of the previous page; `None` to start), into `page`. Returns false
    /// once the matches are exhausted.
    pub fn retained_page(&self, filter: &str, after: Option<&[u8]>, page: &mut Page) -> bool {
        let path: SmallVec<[&[u8]; 16]> = topic::levels(filter.as_bytes()).collect();
        let after: Option<SmallVec<[&[u8]; 16]>> =
            after.map(|topic| topic::levels(topic).collect());
        !self
            .retained
            .read()
            .root()
            .page(&path, after.as_deref(), true, page)
    }
}

/// The copy of `message` the retained store keeps (`None` for a clear): compact, as the
/// original's bytes may share a large read buffer.
fn retained_copy(message: &Message) -> Option<Arc<Message>> {
    (!message.payload.is_empty()).then(|| {
        let mut stored = Message::new(
            Bytes::copy_from_slice(&message.topic),
            Bytes::copy_from_slice(&message.payload),
            message.qos,
            true,
        );
        stored.properties = message.properties.clone();
        stored.expires_at = message.expires_at;
        stored.origin = message.origin;
        Arc::new(stored)
    })
}

/// A subscriber's identifier as a delivery's list.
fn identifiers(subscriber: &Subscriber) -> SubscriptionIds {
    let mut ids = SubscriptionIds::new();
    if subscriber.identifier != 0 {
        ids.push(subscriber.identifier);
    }
    ids
}

/// Removes a subscription under the write lock (`tree`), telling the watcher when that was the
/// filter's last on this node; returns whether it existed.
fn remove(
    tree: &mut Node,
    id: SessionId,
    subscription: &Subscription<'_>,
    watcher: &OnceLock<Arc<dyn FilterWatcher>>,
) -> bool {
    let path: SmallVec<[&[u8]; 16]> = topic::levels(subscription.filter().as_bytes()).collect();
    let edited = tree.remove(&path, subscription.group(), id);
    if let Some(watcher) = watcher.get() {
        if edited.filter {
            watcher.filter_removed(subscription.filter().as_bytes(), edited.groups_left);
        }
        if let (true, Some(group)) = (edited.group, subscription.group()) {
            watcher.group_removed(group, subscription.filter());
        }
    }
    edited.changed
}

/// What [`Router::remove_session`] needs to go on without the router.
struct Teardown {
    tree: Arc<RwLock<Node>>,
    watcher: Arc<OnceLock<Arc<dyn FilterWatcher>>>,
    metrics: Arc<Metrics>,
    id: SessionId,
}

impl Teardown {
    /// Removes up to [`TEARDOWN_BATCH`] of `filters` under one write-lock hold; returns whether
    /// any are left.
    fn batch(&self, filters: &mut std::iter::Peekable<impl Iterator<Item = String>>) -> bool {
        let mut removed = 0;
        {
            let mut tree = self.tree.write();
            for filter in filters.by_ref().take(TEARDOWN_BATCH) {
                let removed_one = Subscription::parse(&filter).is_some_and(|subscription| {
                    remove(&mut tree, self.id, &subscription, &self.watcher)
                });
                removed += i64::from(removed_one);
            }
        }
        self.metrics.subscriptions.dec_by(removed);
        filters.peek().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn mailbox(id: SessionId) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::new(id, Arc::from(format!("c{id}")), 1000));
        mailbox.set_online(true);
        mailbox
    }

    fn router() -> Router {
        Router::new(Arc::new(Metrics::new()))
    }

    fn publish(router: &Router, topic: &str, qos: QoS, retain: bool) -> usize {
        let message = Message::new(
            Bytes::copy_from_slice(topic.as_bytes()),
            Bytes::from_static(b"payload"),
            qos,
            retain,
        );
        router.publish(Arc::new(message)).deliveries
    }

    fn drain(mailbox: &Mailbox) -> Vec<Delivery> {
        let mut out = Vec::new();
        mailbox.take(
            usize::MAX,
            usize::MAX,
            usize::MAX,
            &mut out,
            &Metrics::new(),
        );
        out
    }

    fn subscribe(router: &Router, mailbox: &Arc<Mailbox>, filter: &str, qos: QoS) {
        let subscription = Subscription::parse(filter).expect("valid filter in test");
        router.subscribe(mailbox, &subscription, Grant::qos(qos));
    }

    /// Records what a [`FilterWatcher`] is told.
    #[derive(Default)]
    struct Told(parking_lot::Mutex<Vec<String>>);

    impl FilterWatcher for Told {
        fn filter_added(&self, filter: &[u8]) {
            self.0
                .lock()
                .push(format!("+{}", String::from_utf8_lossy(filter)));
        }
        fn filter_removed(&self, filter: &[u8], groups_left: bool) {
            let left = if groups_left { " (groups left)" } else { "" };
            self.0
                .lock()
                .push(format!("-{}{left}", String::from_utf8_lossy(filter)));
        }
        fn group_added(&self, group: &str, filter: &str) {
            self.0.lock().push(format!("+{group}:{filter}"));
        }
        fn group_removed(&self, group: &str, filter: &str) {
            self.0.lock().push(format!("-{group}:{filter}"));
        }
    }

    impl Told {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock())
        }
    }

    fn filters(router: &Router) -> Vec<String> {
        let mut all = Vec::new();
        router.with_filters(|filters| {
            filters.for_each(|f| all.push(String::from_utf8_lossy(f).into_owned()));
            filters.for_each_group(|g, f| all.push(format!("{g}:{f}")));
        });
        all.sort();
        all
    }

    #[test]
    fn the_watcher_hears_of_a_shared_group_only_while_a_member_is_online_here() {
        let router = router();
        let told = Arc::new(Told::default());
        router.watch_filters(told.clone());
        let (a, b) = (mailbox(1), mailbox(2));
        subscribe(&router, &a, "$share/g/x/y", QoS::AtLeastOnce);
        subscribe(&router, &b, "$share/g/x/y", QoS::AtLeastOnce);
        subscribe(&router, &a, "x/y", QoS::AtLeastOnce);
        assert_eq!(told.take(), ["+g:x/y", "+x/y"]);
        let subscriptions = ["$share/g/x/y", "x/y"];
        // One member of two goes offline: the group still has one online here.
        router.set_online(&a, subscriptions, false);
        assert_eq!(told.take(), Vec::<String>::new());
        // The last one online goes (a persistent session away): peers stop choosing this node
        // for the group (the direct filter stays: its messages wait in the session).
        router.set_online(&b, ["$share/g/x/y"], false);
        assert_eq!(told.take(), ["-g:x/y"]);
        assert_eq!(filters(&router), ["x/y"], "a snapshot leaves it out too");
        // An offline member leaving changes nothing the peers were told.
        let unsubscribe = |id, filter: &str| {
            let subscription = Subscription::parse(filter).expect("valid");
            router.unsubscribe(id, &subscription)
        };
        assert!(unsubscribe(2, "$share/g/x/y"));
        assert_eq!(told.take(), Vec::<String>::new());
        // Back online: chosen again.
        router.set_online(&a, subscriptions, true);
        assert_eq!(told.take(), ["+g:x/y"]);
        assert_eq!(filters(&router), ["g:x/y", "x/y"]);
        // An offline session subscribing (never, but harmless) tells nothing.
        let c = mailbox(3);
        c.set_online(false);
        subscribe(&router, &c, "$share/h/x/y", QoS::AtLeastOnce);
        assert_eq!(told.take(), Vec::<String>::new());
        // The last online member leaving while an offline one stays: removed.
        subscribe(&router, &c, "$share/g/x/y", QoS::AtLeastOnce);
        assert!(unsubscribe(1, "$share/g/x/y"));
        assert_eq!(told.take(), ["-g:x/y"]);
    }

    #[test]
    fn the_watcher_hears_of_a_filter_first_subscribed_and_last_unsubscribed_on_this_node() {
        let router = router();
        let told = Arc::new(Told::default());
        router.watch_filters(told.clone());
        let (a, b) = (mailbox(1), mailbox(2));
        subscribe(&router, &a, "x/y", QoS::AtMostOnce);
        subscribe(&router, &a, "x/y", QoS::AtLeastOnce);
        subscribe(&router, &b, "x/y", QoS::AtMostOnce);
        subscribe(&router, &b, "$share/g/x/y", QoS::AtMostOnce);
        subscribe(&router, &a, "$share/g/x/y", QoS::AtMostOnce);
        subscribe(&router, &a, "$share/g/s/#", QoS::AtMostOnce);
        subscribe(&router, &b, "$queue/s/#", QoS::AtMostOnce);
        subscribe(&router, &a, "/lead", QoS::AtMostOnce);
        subscribe(&router, &a, "#", QoS::AtMostOnce);
        // Direct filters and shared groups are told apart: a group's filter is not a direct one.
        assert_eq!(
            told.take(),
            ["+x/y", "+g:x/y", "+g:s/#", "+$queue:s/#", "+/lead", "+#"]
        );
        assert_eq!(
            filters(&router),
            ["#", "$queue:s/#", "/lead", "g:s/#", "g:x/y", "x/y"]
        );

        let unsubscribe = |id, filter: &str| {
            let subscription = Subscription::parse(filter).expect("valid");
            router.unsubscribe(id, &subscription)
        };
        assert!(unsubscribe(1, "x/y"));
        assert!(unsubscribe(2, "x/y"));
        assert!(!unsubscribe(2, "x/y"));
        assert_eq!(
            told.take(),
            ["-x/y (groups left)"],
            "the shared group is told apart, and that it is left"
        );
        assert!(unsubscribe(2, "$share/g/x/y"));
        assert_eq!(told.take(), Vec::<String>::new(), "a member is left");
        assert!(unsubscribe(1, "$share/g/x/y"));
        assert!(unsubscribe(1, "$share/g/s/#"));
        assert_eq!(told.take(), ["-g:x/y", "-g:s/#"]);
        // A session going away takes its filters with it, in batches.
        router.remove_session(1, ["/lead".to_string(), "#".to_string()]);
        let mut gone = told.take();
        gone.sort();
        assert_eq!(gone, ["-#", "-/lead"]);
        assert_eq!(filters(&router), ["$queue:s/#"]);
    }

    #[test]
    fn overlapping_filters_deliver_one_copy_at_the_highest_qos() {
        let router = router();
        let a = mailbox(1);
        subscribe(&router, &a, "x/y", QoS::AtMostOnce);
        subscribe(&router, &a, "x/#", QoS::ExactlyOnce);
        subscribe(&router, &a, "+/y", QoS::AtLeastOnce);
        assert_eq!(publish(&router, "x/y", QoS::ExactlyOnce, false), 1);
        let got = drain(&a);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].qos, QoS::ExactlyOnce);
        assert!(!got[0].retain);
    }

    #[test]
    fn delivered_qos_is_the_minimum_of_published_and_granted() {
        let router = router();
        let a = mailbox(1);
        subscribe(&router, &a, "t", QoS::AtLeastOnce);
        publish(&router, "t", QoS::ExactlyOnce, false);
        publish(&router, "t", QoS::AtMostOnce, false);
        let qos: Vec<QoS> = drain(&a).iter().map(|d| d.qos).collect();
        assert_eq!(qos, vec![QoS::AtLeastOnce, QoS::AtMostOnce]);
    }

    #[test]
    fn unsubscribe_stops_delivery_and_prunes_the_tree() {
        let router = router();
        let a = mailbox(1);
        subscribe(&router, &a, "a/b/c", QoS::AtMostOnce);
        let subscription = Subscription::parse("a/b/c").expect("valid");
        assert!(router.unsubscribe(1, &subscription));
        assert!(!router.unsubscribe(1, &subscription));
        assert_eq!(publish(&router, "a/b/c", QoS::AtMostOnce, false), 0);
        assert!(router.tree.read().is_empty());
        assert_eq!(router.metrics.subscriptions.get(), 0);
    }

    #[test]
    fn shared_groups_take_turns_among_online_members() {
        let router = router();
        let members: Vec<_> = (1..=3).map(mailbox).collect();
        for member in &members {
            subscribe(&router, member, "$share/g/t/+", QoS::AtLeastOnce);
        }
        let plain = mailbox(9);
        subscribe(&router, &plain, "t/+", QoS::AtMostOnce);
        for _ in 0..9 {
            publish(&router, "t/x", QoS::AtLeastOnce, false);
        }
        for member in &members {
            assert_eq!(drain(member).len(), 3);
        }
        assert_eq!(drain(&plain).len(), 9);

        members[0].set_online(false);
        for _ in 0..4 {
            publish(&router, "t/x", QoS::AtLeastOnce, false);
        }
        assert_eq!(drain(&members[0]).len(), 0);
        // An offline member's turns are shared evenly, not all given to its neighbour.
        assert_eq!((drain(&members[1]).len(), drain(&members[2]).len()), (2, 2));
    }

    #[test]
    fn a_cluster_node_serves_only_the_shared_groups_chosen_for_it() {
        let router = router();
        let (a, b, c, plain) = (mailbox(1), mailbox(2), mailbox(3), mailbox(9));
        subscribe(&router, &a, "$share/g/t/+", QoS::AtLeastOnce);
        subscribe(&router, &b, "$share/h/t/+", QoS::AtLeastOnce);
        subscribe(&router, &c, "$share/g/t/#", QoS::AtLeastOnce);
        subscribe(&router, &plain, "t/x", QoS::AtMostOnce);
        let message = || {
            Arc::new(Message::new(
                Bytes::from_static(b"t/x"),
                Bytes::from_static(b"p"),
                QoS::AtLeastOnce,
                false,
            ))
        };
        // From a peer that chose this node for g on t/+ only: not h, not g on t/#.
        let chosen = [(Bytes::from_static(b"g"), Bytes::from_static(b"t/+"))];
        router.publish_from_peer(
            message(),
            None,
            Groups::Only(&chosen),
            &mut Wakes::default(),
        );
        assert_eq!([&a, &b, &c, &plain].map(|m| drain(m).len()), [1, 0, 0, 1]);
        // Named for nothing: the direct subscribers only.
        router.publish_from_peer(message(), None, Groups::Only(&[]), &mut Wakes::default());
        assert_eq!([&a, &b, &c, &plain].map(|m| drain(m).len()), [0, 0, 0, 1]);
        // Published here: the chooser is asked about each local group, and told who is online.
        b.set_online(false);
        let mut asked = Vec::new();
        let mut choose = |name: &str, filter: &str, online: bool| {
            asked.push(format!("{name}:{filter}:{online}"));
            name == "h"
        };
        let routed = router.publish_to(message(), Groups::Choose(&mut choose));
        asked.sort();
        assert_eq!(asked, ["g:t/#:true", "g:t/+:true", "h:t/+:false"]);
        // h was chosen here but has no member online: nothing for it, as on a single node.
        assert_eq!([&a, &b, &c, &plain].map(|m| drain(m).len()), [0, 0, 0, 1]);
        assert!(routed.matched);
        // Only groups match, served elsewhere: matched all the same (no "no subscribers").
        let only_groups = Arc::new(Message::new(
            Bytes::from_static(b"t/y"),
            Bytes::from_static(b"p"),
            QoS::AtLeastOnce,
            false,
        ));
        let routed = router.publish_to(only_groups, Groups::Choose(&mut |_, _, _| false));
        assert!(routed.matched);
        assert_eq!(routed.deliveries, 0);
    }

    #[test]
    fn queue_groups_are_a_group_named_queue() {
        let router = router();
        let (a, b) = (mailbox(1), mailbox(2));
        subscribe(&router, &a, "$queue/jobs", QoS::AtLeastOnce);
        subscribe(&router, &b, "$share/$queue/jobs", QoS::AtLeastOnce);
        publish(&router, "jobs", QoS::AtLeastOnce, false);
        publish(&router, "jobs", QoS::AtLeastOnce, false);
        assert_eq!((drain(&a).len(), drain(&b).len()), (1, 1));
    }

    #[test]
    fn retained_messages_are_stored_replaced_and_deleted() {
        let router = router();
        publish(&router, "r/a", QoS::AtLeastOnce, true);
        publish(&router, "r/b/c", QoS::AtMostOnce, true);
        publish(&router, "$SYS/r", QoS::AtMostOnce, true);
        assert_eq!(router.retained("r/#").len(), 2);
        assert_eq!(router.retained("+/a").len(), 1);
        assert_eq!(router.retained("#").len(), 2, "# must not match $ topics");
        assert_eq!(router.retained("$SYS/#").len(), 1);
        assert_eq!(router.retained("r/+").len(), 1);
        assert_eq!(router.metrics.retained.get(), 3);

        publish(&router, "r/a", QoS::ExactlyOnce, true);
        let replaced = router.retained("r/a");
        assert_eq!(replaced.len(), 1);
        assert_eq!(replaced[0].qos, QoS::ExactlyOnce);

        let delete = Message::new(
            Bytes::from_static(b"r/a"),
            Bytes::new(),
            QoS::AtMostOnce,
            true,
        );
        router.publish(Arc::new(delete));
        assert!(router.retained("r/a").is_empty());
        assert_eq!(router.metrics.retained.get(), 2);
    }

    fn stamp(ms: u64, node: &'static str) -> Stamp {
        Stamp {
            ms,
            count: 0,
            node: Bytes::from_static(node.as_bytes()),
        }
    }

    fn retained_message(topic: &'static str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            Bytes::from_static(topic.as_bytes()),
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
        ))
    }

    #[test]
    fn retained_writes_are_stamped_and_the_later_stamp_wins() {
        let router = router();
        // Without a cluster: no stamps.
        assert_eq!(router.publish(retained_message("s/a", "1")).stamp, None);
        router.enable_stamps(Bytes::from_static(b"me"));
        assert!(
            router.retained_entry(b"s/a").is_some(),
            "stamped when enabled"
        );
        // A node's successive writes to a topic always win over what it holds, even one a
        // peer stamped in this node's future.
        let future = now_ms() + MAX_STAMP_AHEAD_MS / 2;
        assert!(router.store_retained(&retained_message("s/b", "peer"), stamp(future, "zz")));
        let mine = router
            .publish(retained_message("s/b", "mine"))
            .stamp
            .unwrap();
        assert_eq!(
            mine,
            Stamp {
                count: 1,
                ..stamp(future, "me")
            },
            "the peer's millisecond, one write later"
        );
        assert_eq!(&router.retained("s/b")[0].payload[..], b"mine");
        // A stamp too far ahead of this node's clock is not stored.
        let too_far = stamp(now_ms() + 2 * MAX_STAMP_AHEAD_MS, "zz");
        assert!(!router.store_retained(&retained_message("s/c", "ahead"), too_far));
        assert!(router.retained("s/c").is_empty());
        // An older write from a peer is delivered, not stored.
        let sub = mailbox(1);
        subscribe(&router, &sub, "s/#", QoS::AtMostOnce);
        let stale = router.metrics.cluster.retained_stale.get();
        let routed = router.publish_from_peer(
            retained_message("s/b", "old"),
            Some(stamp(5, "x")),
            Groups::All,
            &mut Wakes::default(),
        );
        assert_eq!(routed.deliveries, 1);
        assert_eq!(
            router.metrics.cluster.retained_stale.get(),
            stale + 1,
            "counted as stale"
        );
        assert_eq!(&router.retained("s/b")[0].payload[..], b"mine");
        // A later one is stored; a clear leaves a tombstone that an older write cannot undo.
        router.publish_from_peer(
            retained_message("s/b", "new"),
            Some(stamp(future + 2, "x")),
            Groups::All,
            &mut Wakes::default(),
        );
        assert_eq!(&router.retained("s/b")[0].payload[..], b"new");
        let clear = retained_message("s/b", "");
        let cleared = router.publish(clear).stamp.unwrap();
        assert_eq!((cleared.ms, cleared.count), (future + 2, 1));
        assert!(router.retained("s/b").is_empty());
        assert_eq!(router.tombstones(), 1);
        assert!(!router.store_retained(&retained_message("s/b", "zombie"), stamp(future + 2, "z")));
        assert!(router.retained("s/b").is_empty());
        let (message, held) = router.retained_entry(b"s/b").unwrap();
        assert!(message.is_none());
        assert_eq!(held, cleared);
        // `$` topics are never stamped (never forwarded).
        assert_eq!(router.publish(retained_message("$SYS/x", "1")).stamp, None);
        // The digest follows every change.
        let before = router.retained_digest().unwrap();
        router.publish(retained_message("s/c", "1"));
        assert_ne!(router.retained_digest().unwrap(), before);
    }

    #[test]
    fn an_expired_retained_message_leaves_a_tombstone_with_its_stamp() {
        let router = router();
        router.enable_stamps(Bytes::from_static(b"me"));
        let now = Instant::now();
        let mut message = Message::new(
            Bytes::from_static(b"e/1"),
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            true,
        );
        message.expires_at = Some(now + Duration::from_secs(1));
        let stamped = router.publish(Arc::new(message)).stamp.unwrap();
        assert_eq!(router.expire_retained(now + Duration::from_secs(1)), 1);
        let (message, held) = router.retained_entry(b"e/1").unwrap();
        assert!(message.is_none());
        assert_eq!(held, stamped);
        // The same stamp, still alive elsewhere, does not bring it back.
        assert!(!router.store_retained(&retained_message("e/1", "x"), stamped));
    }

    #[test]
    fn a_sweep_removes_at_most_its_share_of_expired_retained_messages() {
        let router = router();
        let now = Instant::now();
        for i in 0..EXPIRY_SWEEP_MAX + 10 {
            let mut message = Message::new(
                Bytes::from(format!("x/{i}")),
                Bytes::from_static(b"x"),
                QoS::AtMostOnce,
                true,
            );
            message.expires_at = Some(now);
            router.publish(Arc::new(message));
        }
        assert_eq!(router.expire_retained(now), EXPIRY_SWEEP_MAX);
        assert_eq!(router.metrics.retained.get(), 10);
        assert_eq!(router.expire_retained(now), 10);
        assert_eq!(router.metrics.retained.get(), 0);
    }

    #[test]
    fn expired_retained_messages_are_removed_and_replaced_ones_unindexed() {
        let router = router();
        let now = Instant::now();
        let retained = |topic: &'static str, expires_in: Option<u64>| {
            let mut message = Message::new(
                Bytes::from_static(topic.as_bytes()),
                Bytes::from_static(b"x"),
                QoS::AtMostOnce,
                true,
            );
            message.expires_at = expires_in.map(|secs| now + Duration::from_secs(secs));
            router.publish(Arc::new(message));
        };
        retained("e/1", Some(1));
        retained("e/2", Some(2));
        retained("e/keep", None);
        // Replaced by a message that does not expire: its old expiry must not remove it.
        retained("e/replaced", Some(1));
        retained("e/replaced", None);
        // Replaced by one that expires later: removed at the later expiry only.
        retained("e/later", Some(1));
        retained("e/later", Some(3));
        assert_eq!(router.metrics.retained.get(), 5);
        assert_eq!(router.retained.read().expiring(), 3);

        assert_eq!(router.expire_retained(now), 0);
        assert_eq!(router.expire_retained(now + Duration::from_secs(1)), 1);
        let mut left: Vec<_> = router
            .retained("e/#")
            .iter()
            .map(|message| message.topic.clone())
            .collect();
        left.sort();
        assert_eq!(left, ["e/2", "e/keep", "e/later", "e/replaced"]);
        assert_eq!(router.expire_retained(now + Duration::from_secs(5)), 2);
        assert_eq!(router.metrics.retained.get(), 2);
        assert_eq!(router.retained.read().expiring(), 0);
        // Deleting a message with an expiry unindexes it too.
        retained("e/3", Some(1));
        router.publish(Arc::new(Message::new(
            Bytes::from_static(b"e/3"),
            Bytes::new(),
            QoS::AtMostOnce,
            true,
        )));
        assert_eq!(router.retained.read().expiring(), 0);
    }

    /// Review finding: the expiry index keys on the published message's topic, a slice of the
    /// publisher's buffer (its read buffer for a large payload, the topic-and-payload copy for a
    /// small one), so an expiring retained message keeps that buffer alive until it expires or
    /// is replaced, beside the compact copy the store made to avoid exactly that.
    #[test]
    fn an_expiring_retained_message_keeps_no_reference_to_the_publishers_buffer() {
        let router = router();
        for (topic, expires_in) in [("r/never", None), ("r/expiring", Some(3600))] {
            let mut frame = topic.as_bytes().to_vec();
            frame.extend_from_slice(&[7; 64 * 1024]);
            let frame = Bytes::from(frame);
            let mut message = Message::new(
                frame.slice(..topic.len()),
                frame.slice(topic.len()..),
                QoS::AtMostOnce,
                true,
            );
            message.expires_at = expires_in.map(|secs| Instant::now() + Duration::from_secs(secs));
            router.publish(Arc::new(message));
            assert_eq!(router.retained(topic).len(), 1);
            assert!(
                frame.is_unique(),
                "the retained store still holds the publisher's {} KiB buffer of {topic}",
                frame.len() / 1024
            );
        }
    }

    #[test]
    fn shared_encoding_patches_each_packet_id() {
        let message = Message::new(
            Bytes::from_static(b"t"),
            Bytes::from_static(b"hi"),
            QoS::AtLeastOnce,
            false,
        );
        let mut out = BytesMut::new();
        assert!(message.write_to(&mut out, QoS::AtLeastOnce, 7, false, false, true));
        assert!(message.write_to(&mut out, QoS::AtLeastOnce, 8, false, false, true));
        assert!(message.write_to(&mut out, QoS::AtLeastOnce, 9, false, false, false));
        for expected in [7, 8, 9] {
            match codec::decode(&mut out, None, usize::MAX) {
                Ok(Some(codec::Packet::Publish(publish))) => {
                    assert_eq!(publish.packet_id, Some(expected));
                    assert_eq!(&publish.payload[..], b"hi");
                }
                other => panic!("expected a PUBLISH, got {other:?}"),
            }
        }
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$s".to_string()),
            // Longer than a level stored inline.
            Just("a-level-name-longer-than-twenty-two-bytes".to_string()),
            // Enough siblings for a node's children to become a hash map and back.
            (0..12u8).prop_map(|n| format!("n{n}")),
        ]
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![level(), Just("+".to_string())]
    }

    fn filter() -> impl Strategy<Value = String> {
        (prop::collection::vec(filter_level(), 1..4), any::<bool>())
            .prop_map(|(levels, hash)| {
                let mut filter = levels.join("/");
                if hash {
                    filter.push_str("/#");
                }
                filter
            })
            .prop_filter("a filter is not empty", |filter| !filter.is_empty())
    }

    fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    const SESSIONS: usize = 12;

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(usize, String, QoS),
        Unsubscribe(usize, String),
        /// The session goes away: all its filters at once.
        Discard(usize),
    }

    fn raw_filter() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => filter(),
            1 => (prop_oneof![Just("g"), Just("h")], filter())
                .prop_map(|(group, filter)| format!("$share/{group}/{filter}")),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let qos = prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ];
        prop_oneof![
            6 => (0..SESSIONS, raw_filter(), qos).prop_map(|(s, f, q)| Op::Subscribe(s, f, q)),
            3 => (0..SESSIONS, raw_filter()).prop_map(|(s, f)| Op::Unsubscribe(s, f)),
            1 => (0..SESSIONS).prop_map(Op::Discard),
        ]
    }

    proptest! {
        /// The tree delivers to exactly the sessions whose filters match by the reference rules.
        #[test]
        fn tree_agrees_with_reference_matching(
            filters in prop::collection::vec(filter(), 1..24),
            topics in prop::collection::vec(topic_name(), 1..8),
            unsubscribe in prop::collection::vec(any::<bool>(), 24),
        ) {
            let router = router();
            let mailboxes: Vec<_> = (0..filters.len() as u64).map(mailbox).collect();
            for (mailbox, filter) in mailboxes.iter().zip(&filters) {
                subscribe(&router, mailbox, filter, QoS::AtMostOnce);
            }
            for ((mailbox, filter), remove) in mailboxes.iter().zip(&filters).zip(&unsubscribe) {
                if *remove {
                    let subscription = Subscription::parse(filter).expect("valid");
                    router.unsubscribe(mailbox.id(), &subscription);
                }
            }
            for topic in &topics {
                publish(&router, topic, QoS::AtMostOnce, false);
                for ((mailbox, filter), removed) in mailboxes.iter().zip(&filters).zip(&unsubscribe) {
                    let expected = !removed && topic::matches(filter.as_bytes(), topic.as_bytes());
                    let got = drain(mailbox).len();
                    prop_assert_eq!(got, usize::from(expected), "filter {} topic {}", filter, topic);
                }
            }
        }

        /// After any sequence of subscribes, unsubscribes and session teardowns, each session
        /// gets one copy of a message iff one of its remaining filters matches (at the highest
        /// QoS granted), each shared group that matches delivers once, the gauge counts what is
        /// left, and removing everything leaves an empty tree.
        #[test]
        fn tree_agrees_with_the_reference_after_removals(
            ops in prop::collection::vec(op(), 1..120),
            topics in prop::collection::vec(topic_name(), 1..8),
        ) {
            let router = router();
            let mailboxes: Vec<_> = (0..SESSIONS as u64).map(mailbox).collect();
            // (session, raw filter) -> granted QoS: what should be in the tree.
            let mut model: std::collections::BTreeMap<(usize, String), QoS> = Default::default();
            for op in &ops {
                match op {
                    Op::Subscribe(session, raw, qos) => {
                        subscribe(&router, &mailboxes[*session], raw, *qos);
                        model.insert((*session, raw.clone()), *qos);
                    }
                    Op::Unsubscribe(session, raw) => {
                        let subscription = Subscription::parse(raw).expect("valid");
                        let existed = model.remove(&(*session, raw.clone())).is_some();
                        prop_assert_eq!(router.unsubscribe(*session as u64, &subscription), existed);
                    }
                    Op::Discard(session) => {
                        let filters: Vec<String> = model
                            .keys()
                            .filter(|(s, _)| s == session)
                            .map(|(_, raw)| raw.clone())
                            .collect();
                        model.retain(|(s, _), _| s != session);
                        router.remove_session(*session as u64, filters);
                    }
                }
                prop_assert_eq!(router.metrics.subscriptions.get(), model.len() as i64);
            }
            for topic in &topics {
                let delivered = publish(&router, topic, QoS::ExactlyOnce, false);
                let mut groups = std::collections::BTreeSet::new();
                let mut total = 0;
                for (session, mailbox) in mailboxes.iter().enumerate() {
                    let mut direct: Option<QoS> = None;
                    let mut in_groups = false;
                    for ((_, raw), qos) in model.range((session, String::new())..(session + 1, String::new())) {
                        let subscription = Subscription::parse(raw).expect("valid");
                        if !topic::matches(subscription.filter().as_bytes(), topic.as_bytes()) {
                            continue;
                        }
                        match subscription.group() {
                            None => direct = direct.max(Some(*qos)),
                            Some(group) => {
                                in_groups = true;
                                groups.insert((group.to_string(), subscription.filter().to_string()));
                            }
                        }
                    }
                    let got = drain(mailbox);
                    let got_direct = usize::from(direct.is_some());
                    total += got_direct;
                    if in_groups {
                        prop_assert!(got.len() >= got_direct, "session {} topic {}", session, topic);
                    } else {
                        prop_assert_eq!(got.len(), got_direct, "session {} topic {}", session, topic);
                        if let (Some(qos), Some(delivery)) = (direct, got.first()) {
                            prop_assert_eq!(delivery.qos, qos);
                        }
                    }
                }
                total += groups.len();
                prop_assert_eq!(delivered, total, "topic {}", topic);
            }
            for session in 0..SESSIONS {
                let filters: Vec<String> = model
                    .keys()
                    .filter(|(s, _)| *s == session)
                    .map(|(_, raw)| raw.clone())
                    .collect();
                router.remove_session(session as u64, filters);
            }
            prop_assert_eq!(router.metrics.subscriptions.get(), 0);
            prop_assert!(router.tree.read().is_empty());
        }

        /// Reading the matches a page at a time from a cursor finds each exactly once, whatever
        /// the page size, even with messages added and deleted between pages.
        #[test]
        fn retained_pages_agree_with_reference_matching(
            topics in prop::collection::vec(topic_name(), 1..16),
            filter in filter(),
            page_size in 1usize..4,
            churn in prop::collection::vec(topic_name(), 0..4),
        ) {
            let router = router();
            let mut distinct = topics.clone();
            distinct.sort();
            distinct.dedup();
            for topic in &distinct {
                publish(&router, topic, QoS::AtMostOnce, true);
            }
            let mut got: Vec<String> = Vec::new();
            let mut after: Option<Bytes> = None;
            let mut churn = churn.into_iter();
            for _ in 0..64 {
                let mut page = Page::new(page_size, usize::MAX);
                let more = router.retained_page(&filter, after.as_deref(), &mut page);
                prop_assert!(page.messages.len() <= page_size);
                if let Some(last) = page.messages.last() {
                    after = Some(last.topic.clone());
                }
                got.extend(page.messages.iter().map(|m| String::from_utf8_lossy(&m.topic).into_owned()));
                // A topic published meanwhile is delivered at most once, never twice.
                if let Some(topic) = churn.next() {
                    publish(&router, &topic, QoS::AtMostOnce, true);
                }
                if !more {
                    break;
                }
            }
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), got.len(), "a topic twice: {:?}", got);
            for topic in distinct.iter().filter(|t| topic::matches(filter.as_bytes(), t.as_bytes())) {
                prop_assert!(got.contains(topic), "{} missing from {:?}", topic, got);
            }
            for topic in &got {
                prop_assert!(topic::matches(filter.as_bytes(), topic.as_bytes()));
            }
        }

        /// A wildcard SUBSCRIBE finds exactly the retained messages the reference rules match.
        #[test]
        fn retained_lookup_agrees_with_reference_matching(
            topics in prop::collection::vec(topic_name(), 1..16),
            filter in filter(),
        ) {
            let router = router();
            let mut distinct = topics.clone();
            distinct.sort();
            distinct.dedup();
            for topic in &distinct {
                publish(&router, topic, QoS::AtMostOnce, true);
            }
            let mut got: Vec<String> = router
                .retained(&filter)
                .iter()
                .map(|m| String::from_utf8_lossy(&m.topic).into_owned())
                .collect();
            got.sort();
            let expected: Vec<String> = distinct
                .into_iter()
                .filter(|topic| topic::matches(filter.as_bytes(), topic.as_bytes()))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
