//! The retained store: the last retained message of each topic, in a trie of topic levels so
//! that a wildcard SUBSCRIBE visits only the branches it can match. The router keeps it behind
//! its own lock, apart from the subscription tree: a retained PUBLISH never waits for SUBSCRIBE.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::Message;

#[derive(Default)]
pub(super) struct RetainedNode {
    children: HashMap<Bytes, RetainedNode>,
    message: Option<Arc<Message>>,
}

impl RetainedNode {
    /// Stores (or, with `None`, deletes) the message at `path`; returns the change in count.
    pub(super) fn set(&mut self, path: &[&[u8]], message: Option<Arc<Message>>) -> i64 {
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
}
