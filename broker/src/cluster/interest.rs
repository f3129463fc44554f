//! Forwarding by interest: which topic filters each peer's sessions subscribe to, so that a
//! message goes only to the peers that may deliver it.
//!
//! Each node tells every peer of link version 3 the filters with subscriptions on it (online and
//! offline sessions, shared groups by their filter), on the peer's *control link*: a link of
//! its own, beside the one that carries messages, so that a subscription never waits behind
//! messages. A new control link (the peer is new, restarted, or came back after being declared
//! down) begins with a snapshot of every filter; after it come the changes, one filter at a
//! time, as the router reports them (see [`crate::router::FilterWatcher`]). Snapshot and changes
//! are taken under the router's lock, so none is missed or told twice.
//!
//! Shared groups travel the same way, apart from the filters: a node tells its peers each
//! (group, filter) pair that has a member online on it, as the group gets its first online
//! member there or loses its last (see [`crate::router::Router::set_online`]): a node whose
//! members are all offline is never chosen to serve the group. A filter is sent only for direct subscriptions, so a node whose only
//! interest in a topic is a shared group gets a message only when the publishing node chose it
//! to serve the group (see [`super::sync::Forwarder`]).
//!
//! Frame (control link, kind [`FRAME_INTEREST`]): `[flags u8: bit 0 = a snapshot starts: forget
//! what this node said before] then entries to the frame's end: [op u8: bit 0 add (else
//! remove), bit 1 a shared group][only with bit 1: group length u16][group][filter length
//! u16][filter]`. A snapshot larger than [`FRAME_BYTES`] continues in frames without the flag.
//!
//! [`RemoteInterest`] is the receiving side: one trie of every peer's filters, each node
//! marking which peers (a bit per peer slot, at most [`MAX_SLOTS`]) subscribe to the filter
//! ending there. [`RemoteInterest::matching`] walks it once per message, unless the worker
//! thread has just walked it for the same topic and nothing changed since: a publisher sends
//! to the same few topics over and over, and the walk under the lock, shared by every
//! publisher, took a third of a node's time under a flood of QoS 0 messages. A peer whose snapshot
//! has not arrived yet, or whose slot is beyond [`MAX_SLOTS`], gets every message, as before
//! interest existed: never fewer than it wants. [`RemoteInterest::groups_matching`] walks the
//! same trie for the peers' shared groups, only while some peer has one: the groups themselves sit
//! in a [`GroupTable`], which a publisher holds by one shared handle, and finds a group in by its
//! name and filter at the cost of a hash.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::RwLock;

use crate::topic;

/// The kind of a control link frame that carries interest.
pub const FRAME_INTEREST: u8 = 1;
/// Snapshot bytes per frame.
pub const FRAME_BYTES: usize = 64 << 10;
/// Peers whose interest is tracked; others get every message.
pub const MAX_SLOTS: usize = 64;

const SNAPSHOT: u8 = 0b1;
/// Entry op bits.
const OP_ADD: u8 = 0b1;
const OP_GROUP: u8 = 0b10;

/// Appends to `entry` one entry: a filter, or with `group` a shared group on that filter.
/// `None` (nothing written) for what is never sent: a `$` filter (never forwarded), or a
/// length beyond 16 bits.
fn put_entry(entry: &mut BytesMut, group: Option<&[u8]>, filter: &[u8], added: bool) -> Option<()> {
    let filter_len = u16::try_from(filter.len()).ok()?;
    if filter.first() == Some(&b'$') {
        return None;
    }
    let group_len = group.map(|g| u16::try_from(g.len())).transpose().ok()?;
    let mut op = if added { OP_ADD } else { 0 };
    if group.is_some() {
        op |= OP_GROUP;
    }
    entry.put_u8(op);
    if let (Some(group), Some(len)) = (group, group_len) {
        entry.put_u16(len);
        entry.put_slice(group);
    }
    entry.put_u16(filter_len);
    entry.put_slice(filter);
    Some(())
}

/// The interest frame bodies of a snapshot: `entries` is called with a visitor, which it
/// calls with each filter (`None` group) and each shared group (name and filter).
pub fn snapshot_frames(
    entries: impl FnOnce(&mut dyn FnMut(Option<&[u8]>, &[u8])),
) -> Vec<BytesMut> {
    let mut frames = vec![BytesMut::from(&[SNAPSHOT][..])];
    entries(&mut |group: Option<&[u8]>, filter: &[u8]| {
        if frames.last().is_some_and(|f| f.len() >= FRAME_BYTES) {
            frames.push(BytesMut::from(&[0u8][..]));
        }
        if let Some(frame) = frames.last_mut() {
            let _ = put_entry(frame, group, filter, true);
        }
    });
    frames
}

/// The body of a frame that adds (or removes) one filter, or with `group` one shared group.
pub fn change_frame(group: Option<&[u8]>, filter: &[u8], added: bool) -> Option<BytesMut> {
    let mut frame = BytesMut::with_capacity(6 + filter.len() + group.map_or(0, <[u8]>::len));
    frame.put_u8(0);
    put_entry(&mut frame, group, filter, added)?;
    Some(frame)
}

/// A parsed interest frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes {
    pub snapshot: bool,
    /// Filters and whether each is added (else removed), in order.
    pub filters: Vec<(Vec<u8>, bool)>,
    /// Shared groups (name, filter) and whether each is added (else removed), in order.
    pub groups: Vec<(Vec<u8>, Vec<u8>, bool)>,
}

/// Parses an interest frame body; `None` when malformed (a filter that is not a valid one
/// included).
pub fn decode(mut body: &[u8]) -> Option<Changes> {
    if body.is_empty() {
        return None;
    }
    let flags = body.get_u8();
    if flags & !SNAPSHOT != 0 {
        return None;
    }
    let mut filters = Vec::new();
    let mut groups = Vec::new();
    while body.has_remaining() {
        let op = body.get_u8();
        if op & !(OP_ADD | OP_GROUP) != 0 {
            return None;
        }
        let group = if op & OP_GROUP != 0 {
            let group = take_string(&mut body)?;
            if !topic::is_valid_group_name(group) {
                return None;
            }
            Some(group)
        } else {
            None
        };
        let filter = take_string(&mut body)?;
        let Ok(filter) = std::str::from_utf8(filter) else {
            return None;
        };
        if !topic::is_valid_filter(filter) || filter.contains('\0') {
            return None;
        }
        // `$` topics are never forwarded: such a filter (a later release may send one) asks
        // for nothing.
        if filter.starts_with('$') {
            continue;
        }
        let added = op & OP_ADD != 0;
        match group {
            Some(group) => groups.push((group.to_vec(), filter.as_bytes().to_vec(), added)),
            None => filters.push((filter.as_bytes().to_vec(), added)),
        }
    }
    Some(Changes {
        snapshot: flags & SNAPSHOT != 0,
        filters,
        groups,
    })
}

/// `[length u16][bytes]` from the front of `body`; `None` when it is cut short.
fn take_string<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    if body.remaining() < 2 {
        return None;
    }
    let len = usize::from(body.get_u16());
    if body.remaining() < len {
        return None;
    }
    let (bytes, rest) = body.split_at(len);
    *body = rest;
    Some(bytes)
}

/// Every peer's filters and shared groups, for the forwarder.
pub struct RemoteInterest {
    inner: RwLock<Inner>,
    /// Bumped by every change: what a worker thread remembers is good while it is unchanged.
    version: AtomicU64,
    /// Whether any peer has a shared group: publishers skip the walk for groups while none has.
    has_groups: AtomicBool,
}

/// A shared group of the peers' (see [`RemoteInterest::groups_matching`]).
#[derive(Debug, Clone)]
pub struct RemoteGroup {
    pub name: Bytes,
    pub filter: Bytes,
    /// The slots of the peers with members of it.
    pub slots: u64,
    /// Whose turn it is, for the publishers that spread the group's messages over its nodes.
    pub turn: Arc<AtomicUsize>,
}

/// Every shared group of the peers', by index (the trie names groups by their index), and by
/// name and filter. Copied on write: a publisher holds the table it matched against, unchanged,
/// for the one clone of an `Arc`.
#[derive(Clone, Default)]
pub struct GroupTable {
    entries: Vec<Option<RemoteGroup>>,
    /// Indices of `entries` that are free.
    free: Vec<u32>,
    /// The indices of the groups whose (name, filter) hash to each key.
    by_key: HashMap<u64, smallvec::SmallVec<[u32; 1]>, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
    live: usize,
}

impl GroupTable {
    fn key(&self, name: &[u8], filter: &[u8]) -> u64 {
        self.hasher.hash_one((name, filter))
    }

    /// The index of group `name` on `filter`, if a peer has it.
    pub fn find(&self, name: &[u8], filter: &[u8]) -> Option<u32> {
        let indices = self.by_key.get(&self.key(name, filter))?;
        indices.iter().copied().find(|&index| {
            self.get(index)
                .is_some_and(|g| g.name == name && g.filter == filter)
        })
    }

    pub fn get(&self, index: u32) -> Option<&RemoteGroup> {
        self.entries.get(index as usize)?.as_ref()
    }

    fn get_mut(&mut self, index: u32) -> Option<&mut RemoteGroup> {
        self.entries.get_mut(index as usize)?.as_mut()
    }

    /// How many groups peers have.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn insert(&mut self, group: RemoteGroup) -> u32 {
        let key = self.key(&group.name, &group.filter);
        let index = match self.free.pop() {
            Some(index) => {
                self.entries[index as usize] = Some(group);
                index
            }
            None => {
                self.entries.push(Some(group));
                (self.entries.len() - 1) as u32
            }
        };
        self.by_key.entry(key).or_default().push(index);
        self.live += 1;
        index
    }

    fn remove(&mut self, index: u32) {
        let Some(group) = self.entries.get_mut(index as usize).and_then(Option::take) else {
            return;
        };
        let key = self.key(&group.name, &group.filter);
        if let Some(indices) = self.by_key.get_mut(&key) {
            indices.retain(|i| *i != index);
            if indices.is_empty() {
                self.by_key.remove(&key);
            }
        }
        self.free.push(index);
        self.live -= 1;
    }

    /// Unmarks `bit` in every group; returns the indices of those left without members.
    fn clear(&mut self, bit: u64) -> Vec<u32> {
        let mut gone = Vec::new();
        for (index, entry) in self.entries.iter_mut().enumerate() {
            if let Some(group) = entry {
                group.slots &= !bit;
                if group.slots == 0 {
                    gone.push(index as u32);
                }
            }
        }
        for &index in &gone {
            self.remove(index);
        }
        gone
    }
}

/// The peers' shared groups matching one topic: the table they are in (none when no group
/// matches), and their indices in it, sorted.
#[derive(Clone, Default)]
pub struct MatchedGroups {
    pub table: Option<Arc<GroupTable>>,
    pub indices: smallvec::SmallVec<[u32; 8]>,
}

impl MatchedGroups {
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The `n`th group matched.
    pub fn get(&self, n: usize) -> Option<&RemoteGroup> {
        self.table.as_ref()?.get(*self.indices.get(n)?)
    }

    /// The groups of a table holding `groups` only, all matched (for tests).
    #[cfg(test)]
    pub fn of(groups: Vec<RemoteGroup>) -> MatchedGroups {
        let mut table = GroupTable::default();
        let indices = groups.into_iter().map(|g| table.insert(g)).collect();
        MatchedGroups {
            table: Some(Arc::new(table)),
            indices,
        }
    }

    /// Where group `name` on `filter` is among those matched.
    pub fn position(&self, name: &[u8], filter: &[u8]) -> Option<usize> {
        let index = self.table.as_ref()?.find(name, filter)?;
        self.indices.binary_search(&index).ok()
    }
}

/// Topics each worker thread remembers the answer for.
const REMEMBERED: usize = 16;

thread_local! {
    /// The last answers of [`RemoteInterest::matching`] on this thread: (version, topic,
    /// slots), the newest last. One table per thread serves every `RemoteInterest` (a test may
    /// hold several): the version numbers of each start from a process-wide counter.
    static REMEMBERED_ANSWERS: RefCell<Vec<(u64, Bytes, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Where each `RemoteInterest`'s versions start, so that two never share one.
static VERSIONS: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct Inner {
    root: Level,
    /// Whose interest each slot holds.
    slots: Vec<Option<Slot>>,
    /// Slots whose snapshot has arrived.
    known: u64,
    /// The shared groups `root` names by index.
    groups: Arc<GroupTable>,
}

struct Slot {
    node_id: String,
    boot_ms: u64,
}

impl Inner {
    fn find(&self, node_id: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.node_id == node_id))
    }

    /// The slot of `node_id` in boot `boot_ms`: its own, emptied when it held an earlier boot
    /// (a later one is kept: its snapshot came before membership told of it), else a free one.
    fn take_slot(&mut self, node_id: &str, boot_ms: u64) -> Option<usize> {
        if let Some(slot) = self.find(node_id) {
            let held = self.slots[slot].as_ref().map_or(0, |s| s.boot_ms);
            if held < boot_ms {
                self.free(slot);
                self.slots[slot] = Some(Slot {
                    node_id: node_id.to_string(),
                    boot_ms,
                });
            }
            return Some(slot);
        }
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.slots.len() < MAX_SLOTS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return None,
        };
        self.slots[slot] = Some(Slot {
            node_id: node_id.to_string(),
            boot_ms,
        });
        Some(slot)
    }

    fn free(&mut self, slot: usize) {
        let bit = 1u64 << slot;
        self.clear(bit);
        self.known &= !bit;
        self.slots[slot] = None;
    }

    /// Forgets every filter and group of the peer in `bit`.
    fn clear(&mut self, bit: u64) {
        self.clear_groups(bit);
        self.root.clear(bit, &[]);
    }

    /// Forgets every group of the peer in `bit`, keeping its filters.
    fn clear_groups(&mut self, bit: u64) {
        if self.groups.is_empty() {
            return;
        }
        let gone = Arc::make_mut(&mut self.groups).clear(bit);
        if !gone.is_empty() {
            self.root.clear(0, &gone);
        }
    }
}

#[derive(Default)]
struct Level {
    /// Keys come from authenticated peers only; lookups hash topics of every publish.
    children: HashMap<Box<[u8]>, Level, foldhash::fast::RandomState>,
    /// Slots whose filter ends here.
    here: u64,
    /// The shared groups on the filter ending here, by index in the [`GroupTable`].
    groups: smallvec::SmallVec<[u32; 2]>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.here == 0 && self.children.is_empty() && self.groups.is_empty()
    }

    /// Marks (or unmarks) `bit` as having members of group `name` on `filter` (whose levels
    /// are `path`), in `table`.
    fn set_group(
        &mut self,
        path: &[&[u8]],
        name: &[u8],
        filter: &[u8],
        bit: u64,
        on: bool,
        table: &mut GroupTable,
    ) {
        let Some((first, rest)) = path.split_first() else {
            let held = table.find(name, filter);
            match (held, on) {
                (Some(index), true) => {
                    if let Some(group) = table.get_mut(index) {
                        group.slots |= bit;
                    }
                }
                (None, true) => {
                    let index = table.insert(RemoteGroup {
                        name: Bytes::copy_from_slice(name),
                        filter: Bytes::copy_from_slice(filter),
                        slots: bit,
                        turn: Arc::default(),
                    });
                    self.groups.push(index);
                }
                (Some(index), false) => {
                    let left = table.get_mut(index).map_or(0, |group| {
                        group.slots &= !bit;
                        group.slots
                    });
                    if left == 0 {
                        table.remove(index);
                        self.groups.retain(|i| *i != index);
                    }
                }
                (None, false) => {}
            }
            return;
        };
        if on {
            self.children
                .entry(Box::from(*first))
                .or_default()
                .set_group(rest, name, filter, bit, on, table);
        } else if let Some(child) = self.children.get_mut(*first) {
            child.set_group(rest, name, filter, bit, on, table);
            if child.is_empty() {
                self.children.remove(*first);
            }
        }
    }

    /// Collects the indices of the groups whose filters below this node match
    /// `topic[depth..]`.
    fn groups_matching(
        &self,
        topic: &[&[u8]],
        depth: usize,
        out: &mut smallvec::SmallVec<[u32; 8]>,
    ) {
        let wildcards = depth > 0 || topic.first().is_none_or(|t| t.first() != Some(&b'$'));
        if wildcards {
            if let Some(all) = self.children.get(&b"#"[..]) {
                out.extend_from_slice(&all.groups);
            }
        }
        let Some(level) = topic.get(depth) else {
            out.extend_from_slice(&self.groups);
            return;
        };
        if wildcards {
            if let Some(one) = self.children.get(&b"+"[..]) {
                one.groups_matching(topic, depth + 1, out);
            }
        }
        if let Some(child) = self.children.get(*level) {
            child.groups_matching(topic, depth + 1, out);
        }
    }

    fn set(&mut self, path: &[&[u8]], bit: u64, on: bool) {
        let Some((first, rest)) = path.split_first() else {
            if on {
                self.here |= bit;
            } else {
                self.here &= !bit;
            }
            return;
        };
        if on {
            self.children
                .entry(Box::from(*first))
                .or_default()
                .set(rest, bit, on);
        } else if let Some(child) = self.children.get_mut(*first) {
            child.set(rest, bit, on);
            if child.is_empty() {
                self.children.remove(*first);
            }
        }
    }

    /// Unmarks `bit` everywhere, and forgets the groups `gone` (indices no longer in the
    /// table).
    fn clear(&mut self, bit: u64, gone: &[u32]) {
        self.here &= !bit;
        if !gone.is_empty() {
            self.groups.retain(|index| !gone.contains(index));
        }
        self.children.retain(|_, child| {
            child.clear(bit, gone);
            !child.is_empty()
        });
    }

    /// The slots whose filters below this node match `topic[depth..]`.
    fn matching(&self, topic: &[&[u8]], depth: usize) -> u64 {
        // A wildcard at the first level does not match a `$` topic (never forwarded anyway).
        let wildcards = depth > 0 || topic.first().is_none_or(|t| t.first() != Some(&b'$'));
        let mut found = 0;
        if wildcards {
            if let Some(all) = self.children.get(&b"#"[..]) {
                found |= all.here;
            }
        }
        let Some(level) = topic.get(depth) else {
            return found | self.here;
        };
        if wildcards {
            if let Some(one) = self.children.get(&b"+"[..]) {
                found |= one.matching(topic, depth + 1);
            }
        }
        if let Some(child) = self.children.get(*level) {
            found |= child.matching(topic, depth + 1);
        }
        found
    }
}

impl Default for RemoteInterest {
    fn default() -> RemoteInterest {
        RemoteInterest {
            inner: RwLock::default(),
            version: AtomicU64::new(VERSIONS.fetch_add(1, Ordering::Relaxed)),
            has_groups: AtomicBool::new(false),
        }
    }
}

impl RemoteInterest {
    /// Called after every change, with what `inner` holds now.
    fn changed(&self, inner: &Inner) {
        self.has_groups
            .store(!inner.groups.is_empty(), Ordering::Release);
        self.version
            .store(VERSIONS.fetch_add(1, Ordering::Relaxed), Ordering::Release);
    }

    /// The slot of peer `node_id` in its boot `boot_ms`, given one if it has none; `None`
    /// when all are taken. What the slot held of an earlier boot is forgotten: that peer gets
    /// every message until the new boot's snapshot arrives.
    pub fn slot(&self, node_id: &str, boot_ms: u64) -> Option<usize> {
        let mut inner = self.inner.write();
        let slot = inner.take_slot(node_id, boot_ms)?;
        self.changed(&inner);
        Some(slot)
    }

    /// Applies what peer `node_id`, in its boot `boot_ms`, said on its control link. A change
    /// from a boot whose snapshot has not been taken is ignored (the snapshot comes first on
    /// every control link, and has what it changes).
    pub fn apply(&self, node_id: &str, boot_ms: u64, changes: &Changes) -> bool {
        let mut inner = self.inner.write();
        if !changes.snapshot
            && inner
                .slots
                .iter()
                .flatten()
                .all(|s| (s.node_id.as_str(), s.boot_ms) != (node_id, boot_ms))
        {
            return false;
        }
        let Some(slot) = inner.take_slot(node_id, boot_ms) else {
            return false;
        };
        let bit = 1u64 << slot;
        if changes.snapshot {
            inner.clear(bit);
            inner.known |= bit;
        }
        for (filter, added) in &changes.filters {
            let path: Vec<&[u8]> = topic::levels(filter).collect();
            inner.root.set(&path, bit, *added);
        }
        if !changes.groups.is_empty() {
            let Inner { root, groups, .. } = &mut *inner;
            // One copy of the table per frame at most, and none while no publisher holds it.
            let table = Arc::make_mut(groups);
            for (name, filter, added) in &changes.groups {
                let path: Vec<&[u8]> = topic::levels(filter).collect();
                root.set_group(&path, name, filter, bit, *added, table);
            }
        }
        self.changed(&inner);
        true
    }

    /// Forgets what is known of peer `node_id` up to boot `boot_ms` (it went down, or was
    /// replaced by a later boot whose interest may already be here): its slot is free again.
    pub fn forget(&self, node_id: &str, boot_ms: u64) {
        let mut inner = self.inner.write();
        let Some(slot) = inner.slots.iter().position(|s| {
            s.as_ref()
                .is_some_and(|s| s.node_id == node_id && s.boot_ms <= boot_ms)
        }) else {
            return;
        };
        inner.free(slot);
        self.changed(&inner);
    }

    /// Forgets every peer that `keep` does not name.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut inner = self.inner.write();
        let gone: Vec<usize> = (0..inner.slots.len())
            .filter(|&i| inner.slots[i].as_ref().is_some_and(|s| !keep(&s.node_id)))
            .collect();
        if gone.is_empty() {
            return;
        }
        for slot in gone {
            inner.free(slot);
        }
        self.changed(&inner);
    }

    /// Forgets that peer `node_id`'s interest was known (an interest frame of it could not be
    /// read): it gets every message until its next snapshot, and serves none of its shared
    /// groups (they may be stale), which the nodes with members serve meanwhile.
    pub fn unknown(&self, node_id: &str) {
        let mut inner = self.inner.write();
        if let Some(slot) = inner.find(node_id) {
            let bit = 1u64 << slot;
            inner.known &= !bit;
            inner.clear_groups(bit);
            self.changed(&inner);
        }
    }

    /// The slots that want a message on `topic`: those with a matching filter and those whose
    /// interest is not known yet.
    pub fn matching(&self, topic: &Bytes) -> u64 {
        let version = self.version.load(Ordering::Acquire);
        let remembered = REMEMBERED_ANSWERS.with_borrow(|answers| {
            answers
                .iter()
                .rev()
                .find(|(v, t, _)| *v == version && t == topic)
                .map(|&(_, _, slots)| slots)
        });
        if let Some(slots) = remembered {
            return slots;
        }
        let path: smallvec::SmallVec<[&[u8]; 8]> = topic::levels(topic).collect();
        let slots = {
            let inner = self.inner.read();
            inner.root.matching(&path, 0) | !inner.known
        };
        // The version read before the walk: a change meanwhile makes this answer stale at once.
        REMEMBERED_ANSWERS.with_borrow_mut(|answers| {
            if answers.len() >= REMEMBERED {
                answers.remove(0);
            }
            // A copy: the message's topic may share a large read buffer.
            answers.push((version, Bytes::copy_from_slice(topic), slots));
        });
        slots
    }

    /// The peers' shared groups whose filters match `topic` (with the slots that have members
    /// of each, in the table); empty, with neither allocation nor lock, while no peer has any.
    pub fn groups_matching(&self, topic: &[u8]) -> MatchedGroups {
        if !self.has_groups.load(Ordering::Acquire) {
            return MatchedGroups::default();
        }
        let path: smallvec::SmallVec<[&[u8]; 8]> = topic::levels(topic).collect();
        let mut indices = smallvec::SmallVec::new();
        let inner = self.inner.read();
        inner.root.groups_matching(&path, 0, &mut indices);
        if indices.is_empty() {
            return MatchedGroups::default();
        }
        indices.sort_unstable();
        MatchedGroups {
            table: Some(inner.groups.clone()),
            indices,
        }
    }

    /// Whether the snapshot of the peer in `slot` has arrived.
    pub fn is_known(&self, slot: usize) -> bool {
        self.inner.read().known & (1 << slot) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(snapshot: bool, filters: &[(&str, bool)]) -> Changes {
        Changes {
            snapshot,
            filters: filters
                .iter()
                .map(|(f, added)| (f.as_bytes().to_vec(), *added))
                .collect(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn frames_round_trip_and_malformed_ones_are_refused() {
        let frames = snapshot_frames(|visit| {
            for filter in ["a/b", "$SYS/#", "a/+", "#", "/x"] {
                visit(None, filter.as_bytes());
            }
        });
        assert_eq!(frames.len(), 1);
        assert_eq!(
            decode(&frames[0]),
            Some(changes(
                true,
                &[("a/b", true), ("a/+", true), ("#", true), ("/x", true)]
            ))
        );
        let removed = change_frame(None, b"a/b", false).unwrap();
        assert_eq!(decode(&removed), Some(changes(false, &[("a/b", false)])));
        // `$` filters are neither sent nor taken, and do not spoil the frame.
        assert!(change_frame(None, b"$SYS/#", true).is_none());
        let with_dollar = b"\x00\x01\x00\x06$SYS/#\x01\x00\x01x";
        assert_eq!(decode(with_dollar), Some(changes(false, &[("x", true)])));
        for bad in [
            &b""[..],
            b"\x02",
            b"\x00\x01\x00",
            b"\x00\x02\x00\x01a",
            b"\x00\x01\x00\x05a",
            b"\x00\x01\x00\x03a/#/b",
            b"\x00\x01\x00\x00",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn group_entries_round_trip_and_malformed_ones_are_refused() {
        let frames = snapshot_frames(|visit| {
            visit(None, b"a/b");
            visit(Some(b"g"), b"a/+");
            visit(Some(b"$queue"), b"jobs");
            visit(Some(b"g"), b"$SYS/#");
        });
        let decoded = decode(&frames[0]).unwrap();
        assert_eq!(decoded.filters, [(b"a/b".to_vec(), true)]);
        assert_eq!(
            decoded.groups,
            [
                (b"g".to_vec(), b"a/+".to_vec(), true),
                (b"$queue".to_vec(), b"jobs".to_vec(), true)
            ]
        );
        let removed = change_frame(Some(b"g"), b"a/+", false).unwrap();
        assert_eq!(&removed[..], b"\x00\x02\x00\x01g\x00\x03a/+");
        assert_eq!(
            decode(&removed).unwrap().groups,
            [(b"g".to_vec(), b"a/+".to_vec(), false)]
        );
        for bad in [
            &b"\x00\x03\x00\x00\x00\x01a"[..], // empty group name
            b"\x00\x03\x00\x03a/b\x00\x01a",   // a name with '/'
            b"\x00\x03\x00\x01+\x00\x01a",     // a name with '+'
            b"\x00\x03\x00\x02g",              // cut in the name
            b"\x00\x03\x00\x01g\x00\x05a",     // cut in the filter
            b"\x00\x07\x00\x01g\x00\x01a",     // an unknown op bit
            b"\x00\x03\x00\x01g\x00\x03a/#/",  // not a filter
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn groups_match_topics_per_peer_and_go_with_the_peer() {
        let interest = RemoteInterest::default();
        assert!(interest.groups_matching(b"t/x").is_empty(), "none yet");
        let (a, b) = (
            interest.slot("a", 1).unwrap(),
            interest.slot("b", 1).unwrap(),
        );
        let group = |name: &str, filter: &str, added| {
            (name.as_bytes().to_vec(), filter.as_bytes().to_vec(), added)
        };
        let with_groups = |snapshot, groups: Vec<(Vec<u8>, Vec<u8>, bool)>| Changes {
            snapshot,
            filters: Vec::new(),
            groups,
        };
        interest.apply(
            "a",
            1,
            &with_groups(true, vec![group("g", "t/+", true), group("h", "#", true)]),
        );
        interest.apply("b", 1, &with_groups(true, vec![group("g", "t/+", true)]));
        let found = |topic: &[u8]| {
            let matched = interest.groups_matching(topic);
            let mut found: Vec<(String, String, u64)> = (0..matched.indices.len())
                .filter_map(|n| matched.get(n))
                .map(|g| {
                    let name = String::from_utf8_lossy(&g.name).into_owned();
                    (
                        name,
                        String::from_utf8_lossy(&g.filter).into_owned(),
                        g.slots,
                    )
                })
                .collect();
            found.sort();
            found
        };
        let (bit_a, bit_b) = (1u64 << a, 1u64 << b);
        assert_eq!(
            found(b"t/x"),
            [
                ("g".into(), "t/+".into(), bit_a | bit_b),
                ("h".into(), "#".into(), bit_a)
            ]
        );
        assert_eq!(found(b"u"), [("h".into(), "#".into(), bit_a)]);
        // Groups are not filters: a peer with only groups does not want the message as such.
        assert_eq!(
            interest.matching(&Bytes::from_static(b"t/x")) & (bit_a | bit_b),
            0
        );
        // The last member on b leaves; a goes down.
        interest.apply("b", 1, &with_groups(false, vec![group("g", "t/+", false)]));
        assert_eq!(found(b"t/x")[0], ("g".into(), "t/+".into(), bit_a));
        interest.forget("a", 1);
        assert!(found(b"t/x").is_empty());
        assert!(!interest.has_groups.load(Ordering::Relaxed));
        // A snapshot replaces a peer's groups.
        interest.apply("b", 1, &with_groups(true, vec![group("g", "t/#", true)]));
        interest.apply("b", 1, &with_groups(true, vec![]));
        assert!(interest.groups_matching(b"t/x").is_empty());
        assert!(!interest.has_groups.load(Ordering::Relaxed));
    }

    #[test]
    fn a_large_snapshot_spans_frames() {
        let filters: Vec<String> = (0..20_000).map(|i| format!("devices/{i}/cmd")).collect();
        let frames =
            snapshot_frames(|visit| filters.iter().for_each(|f| visit(None, f.as_bytes())));
        assert!(frames.len() > 1);
        assert!(frames.iter().all(|f| f.len() <= FRAME_BYTES + 3 + 20));
        let decoded: Vec<Changes> = frames.iter().map(|f| decode(f).unwrap()).collect();
        assert!(decoded[0].snapshot && decoded[1..].iter().all(|c| !c.snapshot));
        let total: usize = decoded.iter().map(|c| c.filters.len()).sum();
        assert_eq!(total, filters.len());
    }

    #[test]
    fn messages_go_to_the_peers_whose_filters_match_and_to_those_not_yet_known() {
        let interest = RemoteInterest::default();
        let (a, b) = (
            interest.slot("a", 1).unwrap(),
            interest.slot("b", 1).unwrap(),
        );
        let (bit_a, bit_b) = (1u64 << a, 1u64 << b);
        // Nothing known yet: everyone.
        assert_eq!(
            interest.matching(&Bytes::from_static(b"x/y")) & (bit_a | bit_b),
            bit_a | bit_b
        );
        interest.apply("a", 1, &changes(true, &[("x/+", true), ("s/#", true)]));
        assert!(interest.is_known(a) && !interest.is_known(b));
        assert_eq!(
            interest.matching(&Bytes::from_static(b"x/y")) & bit_a,
            bit_a
        );
        assert_eq!(interest.matching(&Bytes::from_static(b"x/y/z")) & bit_a, 0);
        assert_eq!(
            interest.matching(&Bytes::from_static(b"s")) & bit_a,
            bit_a,
            "s/# matches s"
        );
        assert_eq!(
            interest.matching(&Bytes::from_static(b"s/1/2")) & bit_a,
            bit_a
        );
        assert_eq!(
            interest.matching(&Bytes::from_static(b"q")) & bit_b,
            bit_b,
            "b still unknown"
        );
        interest.apply("b", 1, &changes(true, &[("q", true)]));
        assert_eq!(
            interest.matching(&Bytes::from_static(b"q")) & (bit_a | bit_b),
            bit_b
        );
        assert_eq!(
            interest.matching(&Bytes::from_static(b"x/y")) & (bit_a | bit_b),
            bit_a
        );
        interest.apply("a", 1, &changes(false, &[("x/+", false), ("q", true)]));
        assert_eq!(
            interest.matching(&Bytes::from_static(b"x/y")) & (bit_a | bit_b),
            0
        );
        assert_eq!(
            interest.matching(&Bytes::from_static(b"q")) & (bit_a | bit_b),
            bit_a | bit_b
        );
        // A new snapshot replaces what was known.
        interest.apply("a", 1, &changes(true, &[("#", true)]));
        assert_eq!(
            interest.matching(&Bytes::from_static(b"anything")) & bit_a,
            bit_a
        );
        assert_eq!(
            interest.matching(&Bytes::from_static(b"s/1")) & bit_a,
            bit_a
        );
        interest.apply("a", 1, &changes(true, &[]));
        assert_eq!(
            interest.matching(&Bytes::from_static(b"anything")) & bit_a,
            0
        );
        // A change from a boot whose snapshot was not taken changes nothing.
        assert!(!interest.apply("a", 2, &changes(false, &[("#", true)])));
        // A later boot's snapshot replaces the earlier boot's interest; forgetting the earlier
        // boot then keeps it.
        interest.apply("a", 2, &changes(true, &[("z", true)]));
        interest.forget("a", 1);
        assert_eq!(interest.matching(&Bytes::from_static(b"z")) & bit_a, bit_a);
        // A new boot in membership: unknown (everything) until its snapshot.
        interest.slot("a", 3);
        assert!(!interest.is_known(a));
        assert_eq!(
            interest.matching(&Bytes::from_static(b"nothing")) & bit_a,
            bit_a
        );
        // Forgotten: its slot is free, and unknown again when taken.
        interest.forget("b", 1);
        assert_eq!(interest.slot("c", 1), Some(b));
        assert!(!interest.is_known(b));
        interest.retain(|node| node != "c");
        assert_eq!(interest.slot("d", 1), Some(b));
    }

    #[test]
    fn slots_run_out_at_the_limit() {
        let interest = RemoteInterest::default();
        for i in 0..MAX_SLOTS {
            assert_eq!(interest.slot(&format!("n{i}"), 1), Some(i));
        }
        assert_eq!(interest.slot("one-too-many", 1), None);
        assert_eq!(interest.slot("n3", 1), Some(3));
    }
}
