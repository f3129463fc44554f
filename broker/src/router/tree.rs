//! The subscription tree: which sessions' filters match a topic.
//!
//! A trie of filter levels, edited in place: the [`Router`](super::Router) keeps it behind a
//! read-write lock, publishers walk it under the read lock ([`Node::collect`]) and SUBSCRIBE,
//! UNSUBSCRIBE and session teardown edit it under the write lock ([`Node::insert`],
//! [`Node::remove`]), pruning branches that end up empty. Matching walks only the branches a
//! topic can reach (exact level, `+`, `#`), never every subscription.
//!
//! Memory is what this layout is for: a broker may hold millions of filters, most of them on
//! nodes with one child or one subscriber. So a node's children are an exactly sized vector while
//! there are few of them and a hash map only beyond [`FEW`]; a level name of up to
//! [`INLINE_LEVEL`] bytes is stored in the entry itself; a lone subscriber is stored in the node
//! itself; shared groups are boxed, and absent from nodes that have none. Each edit costs time
//! in proportion to the filter's depth, except when a node's map outgrows its capacity (one
//! rehash of that node's children, as in any hash table).

use std::borrow::Borrow;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use smallvec::SmallVec;

use crate::codec::QoS;
use crate::session::{Mailbox, SessionId};

/// Children or subscribers beyond this many move from a vector (scanned) to a hash map.
const FEW: usize = 8;

/// Level names up to this many bytes are stored inline.
const INLINE_LEVEL: usize = 22;

/// The hasher of every map in the tree: SipHash with one random key per process, shared rather
/// than stored in each map (a `RandomState` per node would cost 16 bytes each). Random keys keep
/// clients from choosing levels that collide.
#[derive(Clone, Copy, Default)]
pub(super) struct Seeded;

impl BuildHasher for Seeded {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        KEYS.get_or_init(RandomState::new).build_hasher()
    }
}

/// The bytes of one filter level.
#[derive(Clone)]
enum Level {
    Inline { len: u8, bytes: [u8; INLINE_LEVEL] },
    Boxed(Box<[u8]>),
}

impl Level {
    fn new(level: &[u8]) -> Level {
        match LevelKey::new(level) {
            LevelKey::Inline { len, bytes } => Level::Inline { len, bytes },
            LevelKey::Long(level) => Level::Boxed(level.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Level::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Level::Boxed(bytes) => bytes,
        }
    }
}

impl Level {
    /// Whether this is the level `key` was made from. Two short levels compare as a length and
    /// a fixed-size array (a few word comparisons, no call): this runs for every child a
    /// publish looks at.
    #[inline]
    fn is(&self, key: &LevelKey<'_>) -> bool {
        match (self, key) {
            (Level::Inline { len, bytes }, LevelKey::Inline { len: l, bytes: b }) => {
                len == l && bytes == b
            }
            (Level::Boxed(bytes), LevelKey::Long(level)) => **bytes == **level,
            // Each length has one form.
            _ => false,
        }
    }

    /// Whether this level is the one byte `byte`.
    #[inline]
    fn is_byte(&self, byte: u8) -> bool {
        matches!(self, Level::Inline { len: 1, bytes } if bytes[0] == byte)
    }
}

/// A topic's level as a publish looks it up: inline exactly as a [`Level`] is when short, so
/// that comparing the two needs no call; borrowed when long, so that making one never
/// allocates.
#[derive(Clone, Copy)]
pub(super) enum LevelKey<'a> {
    Inline { len: u8, bytes: [u8; INLINE_LEVEL] },
    Long(&'a [u8]),
}

impl<'a> LevelKey<'a> {
    pub(super) fn new(level: &'a [u8]) -> LevelKey<'a> {
        if level.len() <= INLINE_LEVEL {
            let mut bytes = [0; INLINE_LEVEL];
            bytes[..level.len()].copy_from_slice(level);
            LevelKey::Inline {
                len: level.len() as u8,
                bytes,
            }
        } else {
            LevelKey::Long(level)
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            LevelKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            LevelKey::Long(level) => level,
        }
    }
}

impl Borrow<[u8]> for Level {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

// Hash and Eq agree with those of `[u8]`, as `Borrow` requires for lookups by slice.
impl Hash for Level {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for Level {
    fn eq(&self, other: &Level) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Level {}

/// A session's entry on a node: 16 bytes, like the pointer and QoS it was before MQTT 5's
/// options, because there is one per subscription.
#[derive(Clone)]
pub(super) struct Subscriber {
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) qos: QoS,
    /// MQTT 5 No Local: not sent messages its own session published.
    pub(super) no_local: bool,
    /// MQTT 5 Retain As Published: live deliveries keep the message's retain flag.
    pub(super) retain_as_published: bool,
    /// MQTT 5 Subscription Identifier; 0 for none.
    pub(super) identifier: u32,
}

/// A node's children by level.
///
/// Every publish asks each node it reaches for three children: its level, `#` and `+`. The
/// wildcards are asked for at every node and are rarely there, so they are found without a scan
/// or a hash: in a vector they come first (at most two entries to read), and a map says in
/// `wildcards` whether it holds them.
// The map is boxed so that a node with few children (almost every node) pays for a vector only.
#[allow(clippy::box_collection)]
enum Children {
    /// `#` and `+` (when present) before every other level.
    Few(Vec<(Level, Node)>),
    Many(Box<ManyChildren>),
}

struct ManyChildren {
    map: HashMap<Level, Node, Seeded>,
    /// Which wildcard levels `map` holds: [`Wildcard`] bits.
    wildcards: u8,
}

/// The wildcard levels of a filter, as bits of [`ManyChildren::wildcards`].
#[derive(Clone, Copy)]
#[repr(u8)]
pub(super) enum Wildcard {
    /// `#`
    All = 1,
    /// `+`
    One = 2,
}

impl Wildcard {
    fn of(level: &[u8]) -> Option<Wildcard> {
        match level {
            b"#" => Some(Wildcard::All),
            b"+" => Some(Wildcard::One),
            _ => None,
        }
    }

    fn level(self) -> &'static [u8] {
        match self {
            Wildcard::All => b"#",
            Wildcard::One => b"+",
        }
    }
}

impl Children {
    /// The child for a topic's level (never a wildcard: topics have none).
    fn get(&self, key: &LevelKey<'_>) -> Option<&Node> {
        match self {
            Children::Few(few) => few.iter().find(|(l, _)| l.is(key)).map(|e| &e.1),
            Children::Many(many) => many.map.get(key.as_bytes()),
        }
    }

    /// The `#` or `+` child.
    #[inline]
    fn wildcard(&self, wildcard: Wildcard) -> Option<&Node> {
        let level = wildcard.level();
        match self {
            Children::Few(few) => few
                .iter()
                .take(2)
                .find(|(l, _)| l.is_byte(level[0]))
                .map(|e| &e.1),
            Children::Many(many) if many.wildcards & wildcard as u8 != 0 => many.map.get(level),
            Children::Many(_) => None,
        }
    }

    fn get_mut(&mut self, level: &[u8]) -> Option<&mut Node> {
        match self {
            Children::Few(few) => few
                .iter_mut()
                .find(|(l, _)| l.as_bytes() == level)
                .map(|e| &mut e.1),
            Children::Many(many) => many.map.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &[u8]) -> &mut Node {
        if let Children::Few(few) = self {
            if few.len() >= FEW && !few.iter().any(|(l, _)| l.as_bytes() == level) {
                let mut map = HashMap::with_capacity_and_hasher(FEW * 2, Seeded);
                map.extend(std::mem::take(few));
                let wildcards = [Wildcard::All, Wildcard::One]
                    .into_iter()
                    .filter(|w| map.contains_key(w.level()))
                    .fold(0, |bits, w| bits | w as u8);
                *self = Children::Many(Box::new(ManyChildren { map, wildcards }));
            }
        }
        match self {
            Children::Few(few) => {
                let index = match few.iter().position(|(l, _)| l.as_bytes() == level) {
                    Some(index) => index,
                    None => {
                        // Exactly sized: most nodes keep one or two children for good.
                        few.reserve_exact(1);
                        let entry = (Level::new(level), Node::default());
                        if Wildcard::of(level).is_some() {
                            few.insert(0, entry);
                            0
                        } else {
                            few.push(entry);
                            few.len() - 1
                        }
                    }
                };
                &mut few[index].1
            }
            Children::Many(many) => {
                if let Some(wildcard) = Wildcard::of(level) {
                    many.wildcards |= wildcard as u8;
                }
                many.map.entry(Level::new(level)).or_default()
            }
        }
    }

    fn remove(&mut self, level: &[u8]) {
        match self {
            Children::Few(few) => {
                if let Some(index) = few.iter().position(|(l, _)| l.as_bytes() == level) {
                    if Wildcard::of(level).is_some() {
                        // In order, so that the other wildcard stays in front.
                        few.remove(index);
                    } else {
                        // The last entry is a wildcard only when all are, this one included:
                        // what moves into its place is another level.
                        few.swap_remove(index);
                    }
                    if few.is_empty() || few.len() <= few.capacity() / 4 {
                        few.shrink_to_fit();
                    }
                }
            }
            Children::Many(many) => {
                many.map.remove(level);
                if let Some(wildcard) = Wildcard::of(level) {
                    many.wildcards &= !(wildcard as u8);
                }
                // A map is not shrunk on the way down, only replaced once nearly empty (and
                // freed with its node once empty): shrinking rehashes every entry under the
                // write lock, which for a node with 100,000s of children would stall publishers.
                if many.map.len() <= FEW / 2 {
                    let mut few: Vec<(Level, Node)> = many.map.drain().collect();
                    few.sort_by_key(|(l, _)| Wildcard::of(l.as_bytes()).is_none());
                    *self = Children::Few(few);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Children::Few(few) => few.is_empty(),
            Children::Many(many) => many.map.is_empty(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(&[u8], &Node)) {
        match self {
            Children::Few(few) => few.iter().for_each(|(l, n)| f(l.as_bytes(), n)),
            Children::Many(many) => many.map.iter().for_each(|(l, n)| f(l.as_bytes(), n)),
        }
    }
}

impl Default for Children {
    fn default() -> Children {
        Children::Few(Vec::new())
    }
}

/// The sessions subscribed (not through a shared group) to a node's filter.
// The map is boxed so that a node with one subscriber (almost every node) stays small.
#[allow(clippy::box_collection)]
#[derive(Default)]
pub(super) enum Subscribers {
    #[default]
    None,
    One(Subscriber),
    Few(Vec<Subscriber>),
    Many(Box<HashMap<SessionId, Subscriber, Seeded>>),
}

impl Subscribers {
    /// Adds or updates; returns whether it was added.
    fn insert(&mut self, subscriber: Subscriber) -> bool {
        let id = subscriber.mailbox.id();
        match self {
            Subscribers::None => {
                *self = Subscribers::One(subscriber);
                true
            }
            Subscribers::One(one) if one.mailbox.id() == id => {
                *one = subscriber;
                false
            }
            Subscribers::One(_) => {
                let Subscribers::One(one) = std::mem::replace(self, Subscribers::None) else {
                    unreachable!("matched One above")
                };
                *self = Subscribers::Few(vec![one, subscriber]);
                true
            }
            Subscribers::Few(few) => {
                if let Some(existing) = few.iter_mut().find(|s| s.mailbox.id() == id) {
                    *existing = subscriber;
                    return false;
                }
                if few.len() < FEW {
                    few.push(subscriber);
                    return true;
                }
                let mut many = HashMap::with_capacity_and_hasher(FEW * 2, Seeded);
                many.extend(few.drain(..).map(|s| (s.mailbox.id(), s)));
                many.insert(id, subscriber);
                *self = Subscribers::Many(Box::new(many));
                true
            }
            Subscribers::Many(many) => many.insert(id, subscriber).is_none(),
        }
    }

    /// Returns whether `id` was there.
    fn remove(&mut self, id: SessionId) -> bool {
        match self {
            Subscribers::None => false,
            Subscribers::One(one) => {
                let found = one.mailbox.id() == id;
                if found {
                    *self = Subscribers::None;
                }
                found
            }
            Subscribers::Few(few) => {
                let Some(index) = few.iter().position(|s| s.mailbox.id() == id) else {
                    return false;
                };
                few.swap_remove(index);
                if few.len() == 1 {
                    if let Some(last) = few.pop() {
                        *self = Subscribers::One(last);
                    }
                }
                true
            }
            Subscribers::Many(many) => {
                let found = many.remove(&id).is_some();
                // Not shrunk on the way down, for the reason given in `Children::remove`.
                if many.len() <= FEW / 2 {
                    *self = Subscribers::Few(many.drain().map(|(_, s)| s).collect());
                }
                found
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Subscribers::None)
    }

    pub(super) fn for_each<'a>(&'a self, mut f: impl FnMut(&'a Subscriber)) {
        match self {
            Subscribers::None => {}
            Subscribers::One(one) => f(one),
            Subscribers::Few(few) => few.iter().for_each(f),
            Subscribers::Many(many) => many.values().for_each(f),
        }
    }
}

/// The members of one shared-subscription group on one filter.
pub(super) struct SharedGroup {
    name: Box<str>,
    /// The group's filter, whole: a group is its name and its filter, which is how the cluster
    /// names it to other nodes (the node it sits on knows only its own level).
    filter: Box<str>,
    members: Vec<Subscriber>,
    /// Round-robin position.
    next: AtomicUsize,
}

impl SharedGroup {
    /// The next online member after the last one served, if any is online. The turn passes to
    /// the member after the one chosen, so offline members do not double their neighbours' share.
    pub(super) fn pick(&self) -> Option<&Subscriber> {
        let len = self.members.len();
        let start = self.next.load(Ordering::Relaxed);
        let chosen = (0..len)
            .map(|offset| (start + offset) % len)
            .find(|&index| self.members[index].mailbox.is_online())?;
        // Racing publishers may both pick the same member; round robin stays approximate then.
        self.next.store(chosen + 1, Ordering::Relaxed);
        Some(&self.members[chosen])
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn filter(&self) -> &str {
        &self.filter
    }

    /// Whether a member is online: one that [`SharedGroup::pick`] could choose.
    pub(super) fn has_online_member(&self) -> bool {
        self.members.iter().any(|m| m.mailbox.is_online())
    }
}

/// The nodes whose filters match a topic; a publish to an ordinary topic matches few.
pub(super) type Matches<'a> = SmallVec<[&'a Node; 8]>;

/// One level of the tree: the subscriptions whose filter ends here, and the longer filters below.
#[derive(Default)]
pub(super) struct Node {
    children: Children,
    subscribers: Subscribers,
    /// Boxed: one pointer on the many nodes that have no shared groups.
    #[allow(clippy::box_collection)]
    shared: Option<Box<Vec<SharedGroup>>>,
}

/// What an edit of the tree did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Edited {
    /// A subscription was added (not just updated), or removed.
    pub(super) changed: bool,
    /// And with it the filter got its first direct (not shared) subscription on this node, or
    /// lost its last: what other cluster members are told.
    pub(super) filter: bool,
    /// And with it the shared group got its first online member on this node, or lost its
    /// last: what other cluster members are told too, apart from the filter's direct
    /// subscriptions (a group whose members here are all offline, persistent sessions away,
    /// is not one they may choose this node for).
    pub(super) group: bool,
    /// A filter that lost its last direct subscription still has shared groups here (which
    /// a peer of an earlier release counted as its subscriptions).
    pub(super) groups_left: bool,
}

impl Node {
    pub(super) fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_none()
    }

    /// Whether a filter ends here: some session subscribes to it, directly or in a group.
    fn has_subscriptions(&self) -> bool {
        !self.subscribers.is_empty() || self.shared.is_some()
    }

    /// Calls `visit` with every filter that has direct subscriptions at or below this node,
    /// `prefix` being this node's own filter (its levels joined with `/`) and `depth` its level
    /// count.
    pub(super) fn for_each_filter(
        &self,
        prefix: &mut Vec<u8>,
        depth: usize,
        visit: &mut impl FnMut(&[u8]),
    ) {
        if !self.subscribers.is_empty() {
            visit(prefix);
        }
        let start = prefix.len();
        self.children.for_each(|level, child| {
            if depth > 0 {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(level);
            child.for_each_filter(prefix, depth + 1, visit);
            prefix.truncate(start);
        });
    }

    pub(super) fn subscribers(&self) -> &Subscribers {
        &self.subscribers
    }

    pub(super) fn shared_groups(&self) -> &[SharedGroup] {
        self.shared.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Calls `visit` with the name and filter of every shared group at or below this node
    /// that has a member online.
    pub(super) fn for_each_group(&self, visit: &mut impl FnMut(&str, &str)) {
        for group in self.shared_groups() {
            if group.has_online_member() {
                visit(&group.name, &group.filter);
            }
        }
        self.children
            .for_each(|_, child| child.for_each_group(&mut *visit));
    }

    /// Adds (or updates the QoS of) a subscription to `filter`, whose levels are `path`, below
    /// this node, directly or as a member of `group`.
    pub(super) fn insert(
        &mut self,
        path: &[&[u8]],
        filter: &str,
        group: Option<&str>,
        subscriber: Subscriber,
    ) -> Edited {
        let mut node = self;
        for level in path {
            node = node.children.get_or_insert(level);
        }
        node.insert_here(filter, group, subscriber)
    }

    fn insert_here(&mut self, filter: &str, group: Option<&str>, subscriber: Subscriber) -> Edited {
        let node = self;
        let Some(group) = group else {
            let first = node.subscribers.is_empty();
            let changed = node.subscribers.insert(subscriber);
            return Edited {
                changed,
                filter: changed && first,
                group: false,
                groups_left: false,
            };
        };
        let groups = node.shared.get_or_insert_with(Default::default);
        let index = match groups.iter().position(|g| &*g.name == group) {
            Some(index) => index,
            None => {
                groups.push(SharedGroup {
                    name: group.into(),
                    filter: filter.into(),
                    members: Vec::new(),
                    next: AtomicUsize::new(0),
                });
                groups.len() - 1
            }
        };
        let online_before = groups[index].has_online_member();
        let members = &mut groups[index].members;
        let id = subscriber.mailbox.id();
        let changed = match members.iter_mut().find(|m| m.mailbox.id() == id) {
            Some(member) => {
                *member = subscriber;
                false
            }
            None => {
                members.push(subscriber);
                true
            }
        };
        Edited {
            changed,
            filter: false,
            group: !online_before && groups[index].has_online_member(),
            groups_left: false,
        }
    }

    /// The shared group `name` on the filter `path` below this node, if it has members.
    pub(super) fn find_group(&self, path: &[&[u8]], name: &str) -> Option<&SharedGroup> {
        let mut node = self;
        for level in path {
            node = node.children.get(&LevelKey::new(level))?;
        }
        node.shared_groups().iter().find(|g| &*g.name == name)
    }

    /// The subscription of session `id` to the filter `path` below this node (directly, or as a
    /// member of `group`).
    pub(super) fn find_subscriber(
        &self,
        path: &[&[u8]],
        group: Option<&str>,
        id: SessionId,
    ) -> Option<&Subscriber> {
        let mut node = self;
        for level in path {
            node = node.children.get(&LevelKey::new(level))?;
        }
        match group {
            None => {
                let mut found = None;
                node.subscribers().for_each(|subscriber| {
                    if subscriber.mailbox.id() == id {
                        found = Some(subscriber);
                    }
                });
                found
            }
            Some(name) => node
                .shared_groups()
                .iter()
                .find(|g| &*g.name == name)?
                .members
                .iter()
                .find(|member| member.mailbox.id() == id),
        }
    }

    /// Removes the subscription of session `id` to the filter `path` below this node (directly or
    /// as a member of `group`), pruning the branches it leaves empty.
    pub(super) fn remove(&mut self, path: &[&[u8]], group: Option<&str>, id: SessionId) -> Edited {
        let Some((level, rest)) = path.split_first() else {
            return self.remove_here(group, id);
        };
        let Some(child) = self.children.get_mut(level) else {
            return Edited::default();
        };
        let removed = child.remove(rest, group, id);
        if child.is_empty() {
            self.children.remove(level);
        }
        removed
    }

    fn remove_here(&mut self, group: Option<&str>, id: SessionId) -> Edited {
        let Some(group) = group else {
            let changed = self.subscribers.remove(id);
            return Edited {
                changed,
                filter: changed && self.subscribers.is_empty(),
                group: false,
                groups_left: self
                    .shared
                    .as_ref()
                    .is_some_and(|groups| !groups.is_empty()),
            };
        };
        let Some(groups) = self.shared.as_mut() else {
            return Edited::default();
        };
        let Some(index) = groups.iter().position(|g| &*g.name == group) else {
            return Edited::default();
        };
        let online_before = groups[index].has_online_member();
        let members = &mut groups[index].members;
        // Members keep their order: it is the round-robin order.
        let Some(member) = members.iter().position(|m| m.mailbox.id() == id) else {
            return Edited::default();
        };
        members.remove(member);
        let last = members.is_empty();
        let online_after = !last && groups[index].has_online_member();
        if last {
            groups.swap_remove(index);
            if groups.is_empty() {
                self.shared = None;
            }
        }
        Edited {
            changed: true,
            filter: false,
            group: online_before && !online_after,
            groups_left: false,
        }
    }

    /// Collects the nodes whose filters match `topic[depth..]` below this node: along the
    /// topic's own levels in a loop, recursing only into `+` branches.
    pub(super) fn collect<'a>(
        &'a self,
        topic: &[LevelKey<'_>],
        mut depth: usize,
        out: &mut Matches<'a>,
    ) {
        let mut node = self;
        loop {
            // A wildcard in the first level does not match topics starting with '$'.
            let wildcards = depth > 0
                || topic
                    .first()
                    .is_none_or(|t| t.as_bytes().first() != Some(&b'$'));
            if wildcards {
                if let Some(all) = node.children.wildcard(Wildcard::All) {
                    all.add_to(out);
                }
            }
            let Some(level) = topic.get(depth) else {
                node.add_to(out);
                return;
            };
            if wildcards {
                if let Some(any) = node.children.wildcard(Wildcard::One) {
                    any.collect(topic, depth + 1, out);
                }
            }
            match node.children.get(level) {
                Some(child) => {
                    node = child;
                    depth += 1;
                }
                None => return,
            }
        }
    }

    fn add_to<'a>(&'a self, out: &mut Matches<'a>) {
        if self.has_subscriptions() {
            out.push(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_compare_and_hash_as_their_bytes() {
        let short = Level::new(b"abc");
        let long = Level::new(&[b'x'; 40]);
        assert!(matches!(short, Level::Inline { .. }));
        assert!(matches!(long, Level::Boxed(_)));
        assert_eq!(short.as_bytes(), b"abc");
        assert_eq!(long.as_bytes(), &[b'x'; 40][..]);
        assert!(Level::new(b"") == Level::new(b""));
        assert_eq!(Seeded.hash_one(&short), Seeded.hash_one(b"abc".as_slice()));
    }

    #[test]
    fn layout_stays_compact() {
        // What one more filter costs, at least: the entry in its parent's children.
        assert!(std::mem::size_of::<Level>() <= 24);
        assert!(
            std::mem::size_of::<(Level, Node)>() <= 96,
            "{}",
            std::mem::size_of::<(Level, Node)>()
        );
    }
}
