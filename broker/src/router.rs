//! The router: who is subscribed to what, and which messages are retained.
//!
//! A PUBLISH enters through [`Router::publish`]: the retained store is updated when the message
//! is retained, the subscription tree is walked once for the topic, and a [`Delivery`] is pushed
//! into the [`Mailbox`] of every matching session (the connection tasks drain their mailboxes).
//!
//! The subscription tree is a persistent (copy-on-write) trie behind an [`ArcSwap`]: publishers
//! load a snapshot without taking any lock, so the publish path never contends with other
//! publishers or with SUBSCRIBE; subscribers serialise on a writer lock and publish a new root that
//! shares every untouched branch with the old one (`imbl` maps clone in O(1)). Matching walks only
//! the branches a topic can reach (exact level, `+`, `#`), never every subscription.
//!
//! Each [`Message`] caches its encoded PUBLISH per delivery QoS, so a message fanned out to many
//! subscribers is encoded at most three times, and the bytes are shared.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use crate::codec::{self, QoS};
use crate::metrics::{DropReason, Metrics};
use crate::session::{Mailbox, Pushed, SessionId};
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
    /// The live PUBLISH form per delivery QoS (retain and DUP clear, packet id zero).
    encoded: [OnceLock<Bytes>; 3],
}

impl Message {
    pub fn new(topic: Bytes, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            encoded: Default::default(),
        }
    }

    /// The PUBLISH packet as delivered live at `qos`, encoded on first use and then shared. For
    /// QoS 1 and 2 the packet id is zero: the two bytes just before the payload, which the
    /// sender patches (see [`Message::write_to`]). Empty if the message cannot be encoded.
    fn encoded(&self, qos: QoS) -> &Bytes {
        self.encoded[qos as usize].get_or_init(|| {
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
    /// Deliveries queued.
    pub deliveries: usize,
    /// A mailbox the message filled past its soft limit while its consumer is keeping up: the
    /// publisher should let it drain before sending more (see [`Mailbox::drained`]).
    pub congested: Option<Arc<Mailbox>>,
}

/// One message for one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The QoS it is delivered with: min(published, granted).
    pub qos: QoS,
    /// Set only for retained messages sent because of a new subscription.
    pub retain: bool,
}

/// A session's entry in the subscription tree.
#[derive(Clone)]
struct Subscriber {
    mailbox: Arc<Mailbox>,
    qos: QoS,
}

/// The members of one shared-subscription group on one filter.
#[derive(Clone)]
struct SharedGroup {
    members: imbl::Vector<(SessionId, Subscriber)>,
    /// Round-robin position; shared by every copy of the tree so turns continue across updates.
    next: Arc<AtomicUsize>,
}

impl SharedGroup {
    /// The next online member after the last one served, if any is online. The turn passes to
    /// the member after the one chosen, so offline members do not double their neighbours' share.
    fn pick(&self) -> Option<&Subscriber> {
        let len = self.members.len();
        let start = self.next.load(Ordering::Relaxed);
        let chosen = (0..len)
            .map(|offset| (start + offset) % len)
            .find(|&index| self.members[index].1.mailbox.is_online())?;
        // Racing publishers may both pick the same member; round robin stays approximate then.
        self.next.store(chosen + 1, Ordering::Relaxed);
        Some(&self.members[chosen].1)
    }
}

#[derive(Clone, Default)]
struct Node {
    children: imbl::HashMap<Bytes, Arc<Node>>,
    direct: imbl::HashMap<SessionId, Subscriber>,
    shared: imbl::HashMap<Arc<str>, SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.direct.is_empty() && self.shared.is_empty()
    }

    /// A copy of this node with `edit` applied to the node at `path` (created if missing), and
    /// emptied branches pruned. Only the nodes along the path are copied.
    fn edit(&self, path: &[&[u8]], edit: &mut dyn FnMut(&mut Node)) -> Node {
        let mut node = self.clone();
        match path.split_first() {
            None => edit(&mut node),
            Some((level, rest)) => {
                let key = Bytes::copy_from_slice(level);
                let child = match node.children.get(&key) {
                    Some(child) => child.edit(rest, edit),
                    None => Node::default().edit(rest, edit),
                };
                if child.is_empty() {
                    node.children.remove(&key);
                } else {
                    node.children.insert(key, Arc::new(child));
                }
            }
        }
        node
    }

    /// Collects the subscribers whose filters match `topic[depth..]` below this node.
    fn collect<'a>(&'a self, topic: &[&[u8]], depth: usize, out: &mut Matches<'a>) {
        // A wildcard in the first level does not match topics starting with '$'.
        let wildcards = depth > 0 || topic.first().is_none_or(|t| t.first() != Some(&b'$'));
        if wildcards {
            if let Some(all) = self.children.get(b"#".as_slice()) {
                out.add(all);
            }
        }
        match topic.get(depth) {
            None => out.add(self),
            Some(level) => {
                if let Some(child) = self.children.get(*level) {
                    child.collect(topic, depth + 1, out);
                }
                if wildcards {
                    if let Some(any) = self.children.get(b"+".as_slice()) {
                        any.collect(topic, depth + 1, out);
                    }
                }
            }
        }
    }
}

/// Subscribers found for one topic: each node's direct subscribers, and one member per group.
#[derive(Default)]
struct Matches<'a> {
    nodes: Vec<&'a Node>,
}

impl<'a> Matches<'a> {
    fn add(&mut self, node: &'a Node) {
        if !node.direct.is_empty() || !node.shared.is_empty() {
            self.nodes.push(node);
        }
    }
}

/// Retained messages, in a trie of topic levels so that a wildcard SUBSCRIBE visits only the
/// branches it can match.
#[derive(Default)]
struct RetainedNode {
    children: std::collections::HashMap<Bytes, RetainedNode>,
    message: Option<Arc<Message>>,
}

impl RetainedNode {
    /// Stores (or, with `None`, deletes) the message at `path`; returns the change in count.
    fn set(&mut self, path: &[&[u8]], message: Option<Arc<Message>>) -> i64 {
        match path.split_first() {
            None => {
                let had = self.message.is_some();
                let has = message.is_some();
                self.message = message;
                i64::from(has) - i64::from(had)
            }
            Some((level, rest)) => {
                if message.is_none() && !self.children.contains_key(*level) {
                    return 0;
                }
                let child = self
                    .children
                    .entry(Bytes::copy_from_slice(level))
                    .or_default();
                let delta = child.set(rest, message);
                if child.message.is_none() && child.children.is_empty() {
                    self.children.remove(*level);
                }
                delta
            }
        }
    }

    fn collect(&self, filter: &[&[u8]], root: bool, out: &mut Vec<Arc<Message>>) {
        let Some((level, rest)) = filter.split_first() else {
            out.extend(self.message.clone());
            return;
        };
        let visible = |key: &Bytes| !(root && key.first() == Some(&b'$'));
        match *level {
            b"#" => {
                out.extend(self.message.clone());
                for (_, child) in self.children.iter().filter(|(key, _)| visible(key)) {
                    child.collect_all(out);
                }
            }
            b"+" => {
                for (_, child) in self.children.iter().filter(|(key, _)| visible(key)) {
                    child.collect(rest, false, out);
                }
            }
            exact => {
                if let Some(child) = self.children.get(exact) {
                    child.collect(rest, false, out);
                }
            }
        }
    }

    fn collect_all(&self, out: &mut Vec<Arc<Message>>) {
        out.extend(self.message.clone());
        for child in self.children.values() {
            child.collect_all(out);
        }
    }
}

pub struct Router {
    tree: ArcSwap<Node>,
    /// Serialises tree updates (read-copy-update); publishers never take it.
    writer: Mutex<()>,
    retained: RwLock<RetainedNode>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Router {
        Router {
            tree: ArcSwap::from_pointee(Node::default()),
            writer: Mutex::new(()),
            retained: RwLock::new(RetainedNode::default()),
            metrics,
        }
    }

    /// Adds (or updates the QoS of) a subscription of `mailbox`'s session.
    pub fn subscribe(&self, mailbox: &Arc<Mailbox>, subscription: &Subscription<'_>, qos: QoS) {
        let subscriber = Subscriber {
            mailbox: mailbox.clone(),
            qos,
        };
        let id = mailbox.id();
        let mut added = false;
        self.update(
            subscription.filter(),
            &mut |node| match subscription.group() {
                None => added = node.direct.insert(id, subscriber.clone()).is_none(),
                Some(group) => {
                    let group =
                        node.shared
                            .entry(Arc::from(group))
                            .or_insert_with(|| SharedGroup {
                                members: imbl::Vector::new(),
                                next: Arc::new(AtomicUsize::new(0)),
                            });
                    match group.members.iter().position(|(member, _)| *member == id) {
                        Some(index) => {
                            group.members.set(index, (id, subscriber.clone()));
                        }
                        None => {
                            group.members.push_back((id, subscriber.clone()));
                            added = true;
                        }
                    }
                }
            },
        );
        if added {
            self.metrics.subscriptions.inc();
        }
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, id: SessionId, subscription: &Subscription<'_>) -> bool {
        let mut removed = false;
        self.update(
            subscription.filter(),
            &mut |node| match subscription.group() {
                None => removed = node.direct.remove(&id).is_some(),
                Some(group) => {
                    if let Some(members) = node.shared.get_mut(group) {
                        if let Some(index) = members.members.iter().position(|(m, _)| *m == id) {
                            members.members.remove(index);
                            removed = true;
                        }
                        if members.members.is_empty() {
                            node.shared.remove(group);
                        }
                    }
                }
            },
        );
        if removed {
            self.metrics.subscriptions.dec();
        }
        removed
    }

    fn update(&self, filter: &str, edit: &mut dyn FnMut(&mut Node)) {
        let path: Vec<&[u8]> = topic::levels(filter.as_bytes()).collect();
        let _writer = self.writer.lock();
        let root = self.tree.load();
        self.tree.store(Arc::new(root.edit(&path, edit)));
    }

    /// Routes a message to every matching session.
    pub fn publish(&self, message: Arc<Message>) -> Routed {
        if message.retain {
            self.retain(&message);
        }
        // Topics of ordinary depth are split without a heap allocation.
        let path: SmallVec<[&[u8]; 16]> = topic::levels(&message.topic).collect();
        let tree = self.tree.load();
        let mut matches = Matches::default();
        tree.collect(&path, 0, &mut matches);

        let mut matched = false;
        let mut routed = Routed::default();
        let mut deliver = |subscriber: &Subscriber| {
            matched = true;
            let qos = message.qos.min(subscriber.qos);
            let delivery = Delivery {
                message: message.clone(),
                qos,
                retain: false,
            };
            match subscriber.mailbox.push(delivery, &self.metrics) {
                Pushed::Dropped => {}
                Pushed::Queued => routed.deliveries += 1,
                Pushed::Congested => {
                    routed.deliveries += 1;
                    routed
                        .congested
                        .get_or_insert_with(|| subscriber.mailbox.clone());
                }
            }
        };
        match matches.nodes.as_slice() {
            [] => {}
            [node] => node.direct.values().for_each(&mut deliver),
            nodes => {
                // Overlapping filters of one session give one copy at the highest granted QoS.
                let mut direct: Vec<&Subscriber> =
                    nodes.iter().flat_map(|node| node.direct.values()).collect();
                direct.sort_unstable_by_key(|s| (s.mailbox.id(), std::cmp::Reverse(s.qos)));
                direct.dedup_by_key(|s| s.mailbox.id());
                direct.into_iter().for_each(&mut deliver);
            }
        }
        for node in &matches.nodes {
            for group in node.shared.values() {
                if let Some(member) = group.pick() {
                    deliver(member);
                }
            }
        }
        if !matched {
            self.metrics.dropped(DropReason::NoSubscribers).inc();
        }
        routed
    }

    fn retain(&self, message: &Message) {
        let path: Vec<&[u8]> = topic::levels(&message.topic).collect();
        let stored = (!message.payload.is_empty()).then(|| {
            // A compact copy: the original's bytes may share a large read buffer.
            Arc::new(Message::new(
                Bytes::copy_from_slice(&message.topic),
                Bytes::copy_from_slice(&message.payload),
                message.qos,
                true,
            ))
        });
        let delta = self.retained.write().set(&path, stored);
        self.metrics.retained.inc_by(delta);
    }

    /// The retained messages matching a (valid, non-shared) filter.
    pub fn retained(&self, filter: &str) -> Vec<Arc<Message>> {
        let path: Vec<&[u8]> = topic::levels(filter.as_bytes()).collect();
        let mut out = Vec::new();
        self.retained.read().collect(&path, true, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        router.subscribe(mailbox, &subscription, qos);
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
        assert!(router.tree.load().is_empty());
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
