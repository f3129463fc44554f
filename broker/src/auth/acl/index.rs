//! The rules' filters in a tree of topic levels, so that finding the rules that match a topic
//! costs a walk of the topic's levels, not of every rule: a client cycling through more topics
//! than its connection caches pays the same against a thousand rules as against ten.
//!
//! A level with `%u`/`%c` is filed under `+` (it matches one level) and checked exactly once
//! found; qualifiers and the action are checked on the candidates, lowest rule first. Rules for
//! one user (or one client id) have a tree of their own, looked in only for that client, so
//! that a thousand rules for other users cost a client nothing.

use std::collections::HashMap;

use smallvec::SmallVec;

use super::{Pattern, PatternLevel};
use crate::topic;

/// Rule numbers (their order in the file) found for one topic.
pub(super) type Candidates = SmallVec<[u32; 8]>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RuleIndex {
    /// Rules without a `user` or `client` qualifier.
    anyone: Node,
    by_user: HashMap<Box<str>, Node>,
    /// Rules with a `client` qualifier and no `user` one.
    by_client: HashMap<Box<str>, Node>,
}

/// What the index files a rule under.
pub(super) struct Filed<'a> {
    pub pattern: &'a Pattern,
    pub user: Option<&'a str>,
    pub client: Option<&'a str>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    children: HashMap<Box<[u8]>, Node>,
    /// `+`, and levels with placeholders.
    single: Option<Box<Node>>,
    /// Rules whose filter ends here.
    ends: Vec<u32>,
    /// Rules whose filter ends here with `/#` (they match this level and all below).
    below: Vec<u32>,
}

impl RuleIndex {
    pub(super) fn new<'a>(rules: impl IntoIterator<Item = Filed<'a>>) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (number, rule) in rules.into_iter().enumerate() {
            let number = u32::try_from(number).unwrap_or(u32::MAX);
            let root = match (rule.user, rule.client) {
                (Some(user), _) => index.by_user.entry(user.into()).or_default(),
                (None, Some(client)) => index.by_client.entry(client.into()).or_default(),
                (None, None) => &mut index.anyone,
            };
            insert(root, rule.pattern, number);
        }
        index
    }

    /// The rules whose filter may match `topic` for a client with `username` and `client_id`
    /// (placeholders and the remaining qualifiers still to be checked), in rule order.
    pub(super) fn candidates(
        &self,
        topic: &[u8],
        username: Option<&str>,
        client_id: &str,
    ) -> Candidates {
        let levels: SmallVec<[&[u8]; 16]> = topic::levels(topic).collect();
        let mut found = Candidates::new();
        // A wildcard in the first level does not match a `$` topic.
        let dollar = topic.first() == Some(&b'$');
        let roots = [
            Some(&self.anyone),
            username.and_then(|user| self.by_user.get(user)),
            self.by_client.get(client_id),
        ];
        for root in roots.into_iter().flatten() {
            collect(root, &levels, 0, dollar, &mut found);
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

fn insert(root: &mut Node, pattern: &Pattern, number: u32) {
    let mut node = root;
    for level in &pattern.levels {
        node = match level {
            PatternLevel::MultiLevel => {
                node.below.push(number);
                return;
            }
            PatternLevel::SingleLevel | PatternLevel::Template(_) => {
                node.single.get_or_insert_with(Box::default)
            }
            PatternLevel::Exact(text) => node.children.entry(text.clone()).or_default(),
        };
    }
    node.ends.push(number);
}

fn collect(node: &Node, levels: &[&[u8]], depth: usize, dollar: bool, found: &mut Candidates) {
    let wildcards = !(dollar && depth == 0);
    if wildcards {
        found.extend_from_slice(&node.below);
    }
    let Some((level, rest)) = levels.split_first() else {
        found.extend_from_slice(&node.ends);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        collect(child, rest, depth + 1, dollar, found);
    }
    if wildcards {
        if let Some(single) = &node.single {
            collect(single, rest, depth + 1, dollar, found);
        }
    }
}
