//! The retained store: the last retained message of each topic, in a trie of topic levels so
//! that a wildcard SUBSCRIBE visits only the branches it can match. The router keeps it behind
//! its own lock, apart from the subscription tree: a retained PUBLISH never waits for SUBSCRIBE.
//!
//! Levels are kept in order, so the matches of a filter can be read a [`Page`] at a time from
//! where the last page ended (a topic): a subscriber owed a million retained messages holds a
//! cursor, not a copy of the million, and the lock is held for one page at a time.
//!
//! Messages with an MQTT 5 Message Expiry Interval are also indexed by expiry
//! ([`RetainedStore`]): an expired one is never sent, and it is removed (its memory given
//! back) when it expires rather than when its topic is next published to.
//!
//! In a cluster the store also keeps a [`Stamp`] per topic (see [`StampIndex`]): who wrote its
//! retained message last and when, and for a topic cleared recently a *tombstone*, so that the
//! nodes converge on the same retained messages (see [`crate::cluster::anti_entropy`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::Message;
use crate::topic;

/// The retained messages, and the topics of those that expire in expiry order.
#[derive(Default)]
pub(super) struct RetainedStore {
    root: RetainedNode,
    /// `(expiry, topic)` of every stored message that has an expiry.
    expiring: BTreeSet<(Instant, Bytes)>,
    /// Who wrote each topic last, when this node is in a cluster.
    pub(super) stamps: Option<StampIndex>,
}

impl RetainedStore {
    pub(super) fn root(&self) -> &RetainedNode {
        &self.root
    }

    /// Stores `message`, published on this node, as the retained message of `topic` (or, with
    /// `None`, deletes it), stamped after whatever the topic holds; returns the change in count
    /// and the stamp (in a cluster).
    pub(super) fn set_local(
        &mut self,
        topic: &Bytes,
        message: Option<Arc<Message>>,
        now_ms: u64,
    ) -> (i64, Option<Stamp>) {
        let stamp = self
            .stamps
            .as_mut()
            .and_then(|stamps| stamps.stamp_local(topic, message.is_none(), now_ms));
        (self.set(topic, message), stamp)
    }

    /// Stores (or, with `None`, deletes) the retained message of `topic` written elsewhere at
    /// `stamp`, if that is later than what this node holds for the topic; returns whether it
    /// was applied and the change in count.
    pub(super) fn set_stamped(
        &mut self,
        topic: &Bytes,
        message: Option<Arc<Message>>,
        stamp: Stamp,
        now_ms: u64,
    ) -> (bool, i64) {
        if let Some(stamps) = self.stamps.as_mut() {
            if !stamps.apply(topic, stamp, message.is_none(), now_ms) {
                return (false, 0);
            }
        }
        (true, self.set(topic, message))
    }

    /// Stores `message` as the retained message of its topic (or, with `None`, deletes the one
    /// of `topic`); returns the change in count.
    fn set(&mut self, topic: &Bytes, message: Option<Arc<Message>>) -> i64 {
        let path: Vec<&[u8]> = topic::levels(topic).collect();
        // Indexed under the stored message's own topic: `topic` may be a slice of a large
        // buffer (the publisher's), which the index must not keep alive.
        let expiring = message
            .as_ref()
            .and_then(|message| Some((message.expires_at?, message.topic.clone())));
        let has = message.is_some();
        let old = self.root.replace(&path, message);
        if let Some(at) = old.as_ref().and_then(|old| old.expires_at) {
            self.expiring.remove(&(at, topic.clone()));
        }
        if let Some(key) = expiring {
            self.expiring.insert(key);
        }
        i64::from(has) - i64::from(old.is_some())
    }

    /// Removes at most `limit` of the messages whose expiry is at or before `now`; returns how
    /// many it removed.
    pub(super) fn expire(&mut self, now: Instant, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit && self.expiring.first().is_some_and(|(at, _)| *at <= now) {
            let Some((_, topic)) = self.expiring.pop_first() else {
                break;
            };
            let path: Vec<&[u8]> = topic::levels(&topic).collect();
            // The index is kept in step with the store, so this is the expired message.
            if self.root.replace(&path, None).is_some() {
                removed += 1;
                // Expired everywhere at about the same time: a tombstone with the message's
                // own stamp keeps an older write elsewhere from coming back.
                if let Some(stamps) = self.stamps.as_mut() {
                    stamps.expired(&topic);
                }
            }
        }
        removed
    }

    /// The retained message of `topic` (`None` for a tombstone) and its stamp, if the topic has
    /// one.
    pub(super) fn entry(&self, topic: &[u8]) -> Option<(Option<Arc<Message>>, Stamp)> {
        let stamped = self.stamps.as_ref()?.get(topic)?.clone();
        let message = if stamped.cleared {
            None
        } else {
            let path: Vec<&[u8]> = topic::levels(topic).collect();
            Some(self.root.get(&path)?)
        };
        Some((message, stamped.stamp))
    }

    #[cfg(test)]
    pub(super) fn expiring(&self) -> usize {
        self.expiring.len()
    }
}

#[derive(Default)]
pub(super) struct RetainedNode {
    children: BTreeMap<Bytes, RetainedNode>,
    message: Option<Arc<Message>>,
}

impl RetainedNode {
    /// The message at `path`.
    fn get(&self, path: &[&[u8]]) -> Option<Arc<Message>> {
        match path.split_first() {
            None => self.message.clone(),
            Some((level, rest)) => self.children.get(*level)?.get(rest),
        }
    }

    /// Stores (or, with `None`, deletes) the message at `path`; returns the one it replaced.
    fn replace(&mut self, path: &[&[u8]], message: Option<Arc<Message>>) -> Option<Arc<Message>> {
        match path.split_first() {
            None => std::mem::replace(&mut self.message, message),
            Some((level, rest)) => {
                if message.is_none() && !self.children.contains_key(*level) {
                    return None;
                }
                let child = self
                    .children
                    .entry(Bytes::copy_from_slice(level))
                    .or_default();
                let old = child.replace(rest, message);
                if child.message.is_none() && child.children.is_empty() {
                    self.children.remove(*level);
                }
                old
            }
        }
    }

    /// Collects the messages whose topics match the (valid) filter `filter`; `root` is set at the
    /// top level, where wildcards do not match topics starting with `$`.
    pub(super) fn collect(&self, filter: &[&[u8]], root: bool, out: &mut Vec<Arc<Message>>) {
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

    /// Appends to `page`, in level order (a topic before the topics below it, siblings by
    /// bytes), the messages matching the (valid) filter `filter` whose topics come after
    /// `after` (the levels of the last topic of the previous page; `None` for the first page).
    /// Returns false when it stopped because the page is full. `root` is as for
    /// [`RetainedNode::collect`].
    pub(super) fn page(
        &self,
        filter: &[&[u8]],
        after: Option<&[&[u8]]>,
        root: bool,
        page: &mut Page,
    ) -> bool {
        // This node's own topic comes before everything below it: it was on an earlier page
        // whenever there is a cursor.
        let own = after.is_none();
        let Some((level, rest)) = filter.split_first() else {
            return !own || page.add(&self.message);
        };
        let visible = |key: &Bytes| !(root && key.first() == Some(&b'$'));
        match *level {
            b"#" => {
                if own && !page.add(&self.message) {
                    return false;
                }
                self.children_after(after)
                    .filter(|(key, _, _)| visible(key))
                    .all(|(_, child, after)| child.page_all(after, page))
            }
            b"+" => self
                .children_after(after)
                .filter(|(key, _, _)| visible(key))
                .all(|(_, child, after)| child.page(rest, after, false, page)),
            exact => {
                let Some(child) = self.children.get(exact) else {
                    return true;
                };
                let after = match after {
                    Some([first, later @ ..]) => match exact.cmp(first) {
                        std::cmp::Ordering::Less => return true,
                        std::cmp::Ordering::Equal => Some(later),
                        std::cmp::Ordering::Greater => None,
                    },
                    _ => None,
                };
                child.page(rest, after, false, page)
            }
        }
    }

    /// Everything at and below this node after `after`, as [`RetainedNode::page`] with `#`.
    fn page_all(&self, after: Option<&[&[u8]]>, page: &mut Page) -> bool {
        if after.is_none() && !page.add(&self.message) {
            return false;
        }
        self.children_after(after)
            .all(|(_, child, after)| child.page_all(after, page))
    }

    /// The children that hold topics after the cursor `after`, each with the cursor that
    /// applies below it: the rest of the cursor for the child on its path, none for those after.
    #[allow(clippy::type_complexity)]
    fn children_after<'a>(
        &'a self,
        after: Option<&'a [&'a [u8]]>,
    ) -> Box<dyn Iterator<Item = (&'a Bytes, &'a RetainedNode, Option<&'a [&'a [u8]]>)> + 'a> {
        match after {
            Some([first, later @ ..]) => Box::new(
                self.children
                    .range::<[u8], _>((Bound::Included(*first), Bound::Unbounded))
                    .map(move |(key, child)| {
                        let after = (key.as_ref() == *first).then_some(later);
                        (key, child, after)
                    }),
            ),
            _ => Box::new(self.children.iter().map(|(key, child)| (key, child, None))),
        }
    }
}

/// One page of retained messages: at most `max` of them, and no more once `byte_budget` bytes
/// of topic and payload are in it.
pub struct Page {
    pub messages: Vec<Arc<Message>>,
    max: usize,
    byte_budget: usize,
    bytes: usize,
    /// Messages whose MQTT 5 expiry has passed by then are skipped.
    now: Instant,
}

impl Page {
    pub fn new(max: usize, byte_budget: usize) -> Page {
        Page {
            messages: Vec::new(),
            max,
            byte_budget,
            bytes: 0,
            now: Instant::now(),
        }
    }

    /// Adds the message if there is one, it has not expired and there is room for it; false
    /// when the page is full.
    fn add(&mut self, message: &Option<Arc<Message>>) -> bool {
        let Some(message) = message else {
            return true;
        };
        if message.is_expired(self.now) {
            return true;
        }
        if self.messages.len() >= self.max || self.bytes >= self.byte_budget {
            return false;
        }
        self.bytes += message.topic.len() + message.payload.len();
        self.messages.push(message.clone());
        true
    }
}

/// Buckets of the retained digest: topics are spread over them by a hash of the topic, and
/// nodes compare the buckets' hashes to find where their stores differ.
pub const DIGEST_BUCKETS: usize = 1024;

/// How long a tombstone (a cleared topic) is kept, from its stamp: a node that comes back
/// with an older retained message for the topic within this time has it cleared; one that
/// comes back later brings the message back.
pub const TOMBSTONE_LIFETIME_MS: u64 = 60 * 60 * 1000;

/// How far ahead of this node's clock a stamp from elsewhere may be and still be stored: the
/// same tolerance as the wall-clock check of the sync replay windows. A stamp far in the
/// future (a clock set wrong, or forged by a key holder) would otherwise win over every later
/// write to its topic, and its tombstone would outlive its hour.
pub const MAX_STAMP_AHEAD_MS: u64 = 10 * 60 * 1000;

/// Tombstones kept at most: beyond it the oldest go before their time, so that a flood of
/// clears cannot grow the store without bound.
pub const MAX_TOMBSTONES: usize = 100_000;

/// Bytes of topics the tombstones hold at most: beyond it too the oldest go first (a topic
/// may be 64 KiB, so the count alone would let them hold 6 GiB).
pub const MAX_TOMBSTONE_BYTES: usize = 16 << 20;

/// Who wrote a topic's retained message (or cleared it), and when: a hybrid logical clock of
/// the node that took the PUBLISH (the wall clock in milliseconds since the Unix epoch, and a
/// count of the writes to the topic within that millisecond), and that node's id. Stamps are
/// ordered by time, then count, then node id bytes (the derived order: fields in this order),
/// so every node picks the same last writer.
///
/// A write to a topic whose stamp is at or ahead of the clock keeps that millisecond and counts
/// one more: however often a topic is written, its stamps never run ahead of the latest clock
/// that stamped it (with a millisecond only, 2,000 writes a second ran a second ahead every
/// second, until the peers refused them as [`MAX_STAMP_AHEAD_MS`] in the future).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub ms: u64,
    pub count: u32,
    pub node: Bytes,
}

impl Stamp {
    /// The stamp of a write by `node` at `now_ms` to a topic stamped `held` (if it has one):
    /// later than `held`, and at `now_ms` unless `held` is at or ahead of it.
    pub fn next(held: Option<&Stamp>, now_ms: u64, node: Bytes) -> Stamp {
        let (ms, count) = match held {
            Some(held) if held.ms >= now_ms => match held.count.checked_add(1) {
                Some(count) => (held.ms, count),
                None => (held.ms.saturating_add(1), 0),
            },
            _ => (now_ms, 0),
        };
        Stamp { ms, count, node }
    }
}

/// A topic's stamp, and whether the topic was cleared (a tombstone) rather than holds a
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    pub stamp: Stamp,
    pub cleared: bool,
}

impl Stamped {
    /// Whether this write wins over `other`: a later stamp; for the same stamp, a tombstone (a
    /// message that expired on one node and not yet on another is gone on both).
    pub fn wins_over(&self, other: &Stamped) -> bool {
        (&self.stamp, self.cleared) > (&other.stamp, other.cleared)
    }
}

/// Milliseconds since the Unix epoch on this node's wall clock (0 before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The digest bucket of `topic`: the first two bytes of its SHA-256, modulo the buckets. Part
/// of the wire protocol: every node must spread topics alike.
pub fn bucket_of(topic: &[u8]) -> usize {
    let hash = Sha256::digest(topic);
    usize::from(u16::from_be_bytes([hash[0], hash[1]])) % DIGEST_BUCKETS
}

/// What one topic adds to its bucket's hash (by XOR): the first 8 bytes of the SHA-256 of
/// `[topic length u16][topic][stamp ms u64][count u32][node length u8][node][cleared u8]`. A
/// stable hash, not a keyed one: nodes compare the results.
pub fn entry_hash(topic: &[u8], stamped: &Stamped) -> u64 {
    let node = &stamped.stamp.node[..stamped.stamp.node.len().min(usize::from(u8::MAX))];
    let mut hasher = Sha256::new();
    hasher.update((topic.len() as u16).to_be_bytes());
    hasher.update(topic);
    hasher.update(stamped.stamp.ms.to_be_bytes());
    hasher.update(stamped.stamp.count.to_be_bytes());
    hasher.update([node.len() as u8]);
    hasher.update(node);
    hasher.update([u8::from(stamped.cleared)]);
    let hash = hasher.finalize();
    u64::from_be_bytes([
        hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7],
    ])
}

/// The stamps of the retained topics and of the recent tombstones, by digest bucket, with each
/// bucket's hash kept up to date on every change. Topics starting with `$` are never forwarded
/// and have no stamp.
pub struct StampIndex {
    /// This node's id, which stamps its own writes.
    local: Bytes,
    buckets: Vec<BTreeMap<Bytes, Stamped>>,
    hashes: Vec<u64>,
    /// `(stamp ms, topic)` of every tombstone, oldest first.
    tombstones: BTreeSet<(u64, Bytes)>,
    /// Bytes of the tombstones' topics.
    tombstone_bytes: usize,
}

impl StampIndex {
    pub fn new(local: Bytes) -> StampIndex {
        StampIndex {
            local,
            buckets: vec![BTreeMap::new(); DIGEST_BUCKETS],
            hashes: vec![0; DIGEST_BUCKETS],
            tombstones: BTreeSet::new(),
            tombstone_bytes: 0,
        }
    }

    pub fn get(&self, topic: &[u8]) -> Option<&Stamped> {
        self.buckets[bucket_of(topic)].get(topic)
    }

    /// Replaces what `topic` holds (a stamp, or nothing), keeping the hashes and the tombstones
    /// in step.
    fn put(&mut self, topic: &[u8], new: Option<Stamped>) {
        let bucket = bucket_of(topic);
        let old = match &new {
            Some(stamped) => {
                let key = self.buckets[bucket]
                    .get_key_value(topic)
                    .map_or_else(|| Bytes::copy_from_slice(topic), |(key, _)| key.clone());
                self.hashes[bucket] ^= entry_hash(topic, stamped);
                if stamped.cleared && self.tombstones.insert((stamped.stamp.ms, key.clone())) {
                    self.tombstone_bytes += key.len();
                }
                self.buckets[bucket].insert(key, stamped.clone())
            }
            None => self.buckets[bucket].remove(topic),
        };
        if let Some(old) = old {
            self.hashes[bucket] ^= entry_hash(topic, &old);
            let same_tombstone = new
                .as_ref()
                .is_some_and(|new| new.cleared && new.stamp.ms == old.stamp.ms);
            if old.cleared
                && !same_tombstone
                && self
                    .tombstones
                    .remove(&(old.stamp.ms, Bytes::copy_from_slice(topic)))
            {
                self.tombstone_bytes -= topic.len();
            }
        }
        while self.tombstones.len() > MAX_TOMBSTONES || self.tombstone_bytes > MAX_TOMBSTONE_BYTES {
            if self.drop_oldest_tombstone().is_none() {
                break;
            }
        }
    }

    /// Drops the oldest tombstone; returns its stamp's ms.
    fn drop_oldest_tombstone(&mut self) -> Option<u64> {
        let (ms, topic) = self.tombstones.pop_first()?;
        self.tombstone_bytes -= topic.len();
        let bucket = bucket_of(&topic);
        if let Some(old) = self.buckets[bucket].remove(&topic) {
            self.hashes[bucket] ^= entry_hash(&topic, &old);
        }
        Some(ms)
    }

    /// Stamps a write of this node to `topic` (`cleared`: an empty retained message) after
    /// what it holds, at `now_ms` or later; `None` for a `$` topic.
    fn stamp_local(&mut self, topic: &[u8], cleared: bool, now_ms: u64) -> Option<Stamp> {
        if topic.first() == Some(&b'$') {
            return None;
        }
        let stamp = Stamp::next(
            self.get(topic).map(|held| &held.stamp),
            now_ms,
            self.local.clone(),
        );
        self.put(
            topic,
            Some(Stamped {
                stamp: stamp.clone(),
                cleared,
            }),
        );
        Some(stamp)
    }

    /// Takes a write made elsewhere at `stamp` if it wins over what `topic` holds and is not
    /// more than [`MAX_STAMP_AHEAD_MS`] ahead of `now_ms`; says whether it did. A tombstone
    /// older than [`TOMBSTONE_LIFETIME_MS`] still clears an older message, but is not kept.
    fn apply(&mut self, topic: &[u8], stamp: Stamp, cleared: bool, now_ms: u64) -> bool {
        if topic.first() == Some(&b'$') || stamp.ms > now_ms.saturating_add(MAX_STAMP_AHEAD_MS) {
            return false;
        }
        let new = Stamped { stamp, cleared };
        if self.get(topic).is_some_and(|held| !new.wins_over(held)) {
            return false;
        }
        let expired = cleared && new.stamp.ms.saturating_add(TOMBSTONE_LIFETIME_MS) <= now_ms;
        self.put(topic, (!expired).then_some(new));
        true
    }

    /// The retained message of `topic` expired: its stamp stays, as a tombstone.
    fn expired(&mut self, topic: &[u8]) {
        if let Some(held) = self.get(topic).filter(|held| !held.cleared).cloned() {
            self.put(
                topic,
                Some(Stamped {
                    stamp: held.stamp,
                    cleared: true,
                }),
            );
        }
    }

    /// Drops at most `limit` of the tombstones older than [`TOMBSTONE_LIFETIME_MS`] at
    /// `now_ms`; returns how many.
    pub fn sweep(&mut self, now_ms: u64, limit: usize) -> usize {
        let mut dropped = 0;
        while dropped < limit
            && self
                .tombstones
                .first()
                .is_some_and(|(ms, _)| ms.saturating_add(TOMBSTONE_LIFETIME_MS) <= now_ms)
        {
            if self.drop_oldest_tombstone().is_none() {
                break;
            }
            dropped += 1;
        }
        dropped
    }

    /// The buckets' hashes.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// Up to `max` stamps of `bucket` in topic order, of the topics after `after` (all when
    /// `None`) up to and including `upto` (to the bucket's end when `None`).
    pub fn range(
        &self,
        bucket: usize,
        after: Option<&[u8]>,
        upto: Option<&[u8]>,
        max: usize,
    ) -> Vec<(Bytes, Stamped)> {
        let Some(entries) = self.buckets.get(bucket) else {
            return Vec::new();
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let end = upto.map_or(Bound::Unbounded, Bound::Included);
        if let (Some(after), Some(upto)) = (after, upto) {
            // BTreeMap::range panics on an empty or inverted range.
            if after >= upto {
                return Vec::new();
            }
        }
        entries
            .range::<[u8], _>((start, end))
            .take(max)
            .map(|(topic, stamped)| (topic.clone(), stamped.clone()))
            .collect()
    }

    /// Tombstones held.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Bytes of the tombstones' topics.
    pub fn tombstone_bytes(&self) -> usize {
        self.tombstone_bytes
    }
}

#[cfg(test)]
impl StampIndex {
    /// [`StampIndex::apply`] of `stamped`.
    pub fn apply_for_tests(&mut self, topic: &[u8], stamped: Stamped, now_ms: u64) -> bool {
        self.apply(topic, stamped.stamp, stamped.cleared, now_ms)
    }

    /// [`StampIndex::stamp_local`] of a message.
    pub fn stamp_local_for_tests(&mut self, topic: &[u8], now_ms: u64) -> Option<Stamp> {
        self.stamp_local(topic, false, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use std::time::Duration;

    #[test]
    fn stamps_of_frequent_writes_keep_to_the_clock() {
        let mut index = StampIndex::new(Bytes::from_static(b"me"));
        let now = now_ms();
        let mut last: Option<Stamp> = None;
        // 20,000 writes to one topic within one millisecond of the clock.
        for _ in 0..20_000 {
            let stamp = index.stamp_local_for_tests(b"hot", now).unwrap();
            assert_eq!(stamp.ms, now, "never ahead of the clock");
            assert!(last.as_ref().is_none_or(|last| stamp > *last));
            last = Some(stamp);
        }
        assert_eq!(last.map(|s| s.count), Some(19_999));
        // The clock moves on: so do the stamps, from a count of 0.
        let later = index.stamp_local_for_tests(b"hot", now + 1).unwrap();
        assert_eq!((later.ms, later.count), (now + 1, 0));
        // A count that would overflow moves to the next millisecond.
        let full = Stamp {
            ms: now,
            count: u32::MAX,
            node: Bytes::from_static(b"z"),
        };
        let next = Stamp::next(Some(&full), now, Bytes::from_static(b"a"));
        assert_eq!((next.ms, next.count), (now + 1, 0));
        assert!(next > full);
    }

    #[test]
    fn tombstones_are_bounded_in_bytes_too() {
        let mut index = StampIndex::new(Bytes::from_static(b"me"));
        let now = now_ms();
        let long = "t".repeat(60_000);
        let count = MAX_TOMBSTONE_BYTES / 60_000 + 20;
        for i in 0..count {
            let topic = format!("{long}/{i}");
            let stamp = Stamp {
                ms: now + i as u64,
                count: 0,
                node: Bytes::from_static(b"n"),
            };
            assert!(index.apply(topic.as_bytes(), stamp, true, now));
            assert!(index.tombstone_bytes() <= MAX_TOMBSTONE_BYTES);
        }
        assert!(index.tombstones() < count);
        assert_eq!(
            index.get(format!("{long}/0").as_bytes()),
            None,
            "the oldest went first"
        );
        assert!(index
            .get(format!("{long}/{}", count - 1).as_bytes())
            .is_some());
        let held: usize = (0..DIGEST_BUCKETS)
            .flat_map(|b| index.range(b, None, None, usize::MAX))
            .map(|(topic, _)| topic.len())
            .sum();
        assert_eq!(held, index.tombstone_bytes());
    }

    /// Small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The store's stamps, digest, tombstones and messages agree with each other.
    fn check(store: &RetainedStore) {
        let stamps = store.stamps.as_ref().unwrap();
        let mut tombstones = BTreeSet::new();
        let mut bytes = 0;
        for (bucket, entries) in stamps.buckets.iter().enumerate() {
            let mut hash = 0;
            for (topic, stamped) in entries {
                assert_eq!(bucket_of(topic), bucket);
                hash ^= entry_hash(topic, stamped);
                let path: Vec<&[u8]> = topic::levels(topic).collect();
                assert_eq!(
                    store.root.get(&path).is_none(),
                    stamped.cleared,
                    "{topic:?}"
                );
                if stamped.cleared {
                    tombstones.insert((stamped.stamp.ms, topic.clone()));
                    bytes += topic.len();
                }
            }
            assert_eq!(hash, stamps.hashes[bucket], "bucket {bucket}");
        }
        assert_eq!(tombstones, stamps.tombstones);
        assert_eq!(bytes, stamps.tombstone_bytes);
        let mut all = Vec::new();
        store.root.collect(&[&b"#"[..]], true, &mut all);
        for message in all {
            assert!(stamps.get(&message.topic).is_some_and(|s| !s.cleared));
        }
    }

    #[test]
    fn the_digest_keeps_in_step_with_the_store_under_random_writes() {
        let mut store = RetainedStore {
            stamps: Some(StampIndex::new(Bytes::from_static(b"me"))),
            ..RetainedStore::default()
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (base_ms, base) = (now_ms(), Instant::now());
        let nodes = [&b"a"[..], b"me", b"z"];
        for step in 0..20_000u64 {
            let topic = Bytes::from(format!("t/{}", rng.below(40)));
            // A simulated wall clock, 1 s a step.
            let now = base_ms + step * 1000;
            let mut message = Message::new(
                topic.clone(),
                Bytes::from_static(b"p"),
                QoS::AtMostOnce,
                true,
            );
            if rng.below(4) == 0 {
                message.expires_at = Some(base + Duration::from_secs(step + rng.below(5)));
            }
            let message = (rng.below(3) != 0).then(|| Arc::new(message));
            match rng.below(4) {
                0 => {
                    store.set_local(&topic, message, now);
                }
                1 | 2 => {
                    let stamp = Stamp {
                        ms: now.saturating_sub(rng.below(3_000_000)) + rng.below(2000),
                        count: rng.below(3) as u32,
                        node: Bytes::from_static(nodes[rng.below(3) as usize]),
                    };
                    store.set_stamped(&topic, message, stamp, now);
                }
                _ => {
                    store.expire(base + Duration::from_secs(step), 3);
                    store.stamps.as_mut().unwrap().sweep(now, 2);
                }
            }
            check(&store);
        }
    }
}
