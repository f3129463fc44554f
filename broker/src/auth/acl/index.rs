//! The rules' filters in a tree of topic levels, so that finding the rules that match a topic
//! costs a walk of the topic's levels, not of every rule: a client cycling through more topics
//! than its connection caches pays the same against a thousand rules as against ten.
//!
//! A level with `%u`/`%c` is filed under `+` (it matches one level) and checked exactly once
//! found; qualifiers and the action are checked on the candidates, lowest rule first.

use std::collections::HashMap;

use smallvec::SmallVec;

use super::{Pattern, PatternLevel};
use crate::topic;

/// Rule numbers (their order in the file) found for one topic.
pub(super) type Candidates = SmallVec<[u32; 8]>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RuleIndex {
    root: Node,
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
    pub(super) fn new<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (number, pattern) in patterns.into_iter().enumerate() {
            let number = u32::try_from(number).unwrap_or(u32::MAX);
            index.insert(pattern, number);
        }
        index
    }

    fn insert(&mut self, pattern: &Pattern, number: u32) {
        let mut node = &mut self.root;
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

    /// The rules whose filter may match `topic` (placeholders still to be checked), in rule
    /// order.
    pub(super) fn candidates(&self, topic: &[u8]) -> Candidates {
        let levels: SmallVec<[&[u8]; 16]> = topic::levels(topic).collect();
        let mut found = Candidates::new();
        // A wildcard in the first level does not match a `$` topic.
        let dollar = topic.first() == Some(&b'$');
        collect(&self.root, &levels, 0, dollar, &mut found);
        found.sort_unstable();
        found.dedup();
        found
    }
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
