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

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use std::time::Instant;

use super::Message;
use crate::topic;

/// The retained messages, and the topics of those that expire in expiry order.
#[derive(Default)]
pub(super) struct RetainedStore {
    root: RetainedNode,
    /// `(expiry, topic)` of every stored message that has an expiry.
    expiring: BTreeSet<(Instant, Bytes)>,
}

impl RetainedStore {
    pub(super) fn root(&self) -> &RetainedNode {
        &self.root
    }

    /// Stores `message` as the retained message of its topic (or, with `None`, deletes the one
    /// of `topic`); returns the change in count.
    pub(super) fn set(&mut self, topic: &Bytes, message: Option<Arc<Message>>) -> i64 {
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
            }
        }
        removed
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
