//! Shared subscriptions across the cluster: which node serves each shared group
//! (`$share/<group>/<filter>`, `$queue/<filter>`) for one message published on this node.
//!
//! A group is its name and its filter; its members may sit on several nodes. Each node tells
//! its peers which groups have a member online on it (see [`super::interest`]), and the node
//! where a message is published picks, for each group matching the topic, exactly one node to serve
//! it: itself (its router then hands the message to one of its members, in turn) or one peer,
//! whose record names the group (see [`super::sync`]). The peer delivers it to one of its own
//! members, and a peer not named delivers it to none of its members of that group. So each
//! message reaches one member of a group across the cluster, not one per node.
//!
//! The choice follows `-ssp` ([`SharedPolicy`]): `local` keeps a message on the publishing node
//! when a member of the group is online there and spreads it over the nodes with members
//! otherwise; `cluster` spreads every message over the nodes with members, the publishing node
//! included when a member is online on it. Spreading is round robin over those nodes, one turn
//! per node whatever its member count (peers tell which groups they have members of, not how
//! many: a count would cost an interest frame per member that joins or leaves), each group with
//! its own turn shared by every publisher on this node.
//!
//! [`Chooser`] is that choice for one message, without sockets: the router asks it about each
//! local group that matches ([`Chooser::serve_here`]), then [`Chooser::finish`] places the
//! groups that have members on peers only, and [`Chooser::groups_for`] lists what each peer
//! must serve.

use std::str::FromStr;
use std::sync::atomic::Ordering;

use smallvec::SmallVec;

use super::interest::{MatchedGroups, MAX_SLOTS};
use super::sync::{group_entry_len, GroupList, GROUP_COUNT_LEN, MAX_GROUP_LIST_BYTES};

/// Where a shared group's messages go (`-ssp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SharedPolicy {
    /// To a member on the publishing node when one is online, else to another node's.
    #[default]
    Local,
    /// Over every node with members, in turn.
    Cluster,
}

impl FromStr for SharedPolicy {
    type Err = String;

    fn from_str(value: &str) -> Result<SharedPolicy, String> {
        match value.to_ascii_lowercase().as_str() {
            "local" => Ok(SharedPolicy::Local),
            "cluster" => Ok(SharedPolicy::Cluster),
            _ => Err("expected local or cluster".to_string()),
        }
    }
}

/// The choice of a serving node for each shared group matching one message.
pub struct Chooser {
    policy: SharedPolicy,
    /// The peers' groups that match the topic.
    groups: MatchedGroups,
    /// Whether each of `groups` is placed already.
    placed: SmallVec<[bool; 8]>,
    /// The interest slots of the peers this node forwards to now (up, with a control link):
    /// only those may be chosen.
    available: u64,
    /// (slot, position in `groups`) of each group a peer serves.
    assigned: SmallVec<[(u8, u32); 8]>,
    /// The bytes of the group list each slot's record holds so far, count aside: at most
    /// [`MAX_GROUP_LIST_BYTES`] in all.
    listed: [u16; MAX_SLOTS],
}

impl Chooser {
    /// A choice among the peers' `groups` matching a topic, the peers in the `available` slots
    /// being those this node forwards to.
    pub fn new(policy: SharedPolicy, groups: MatchedGroups, available: u64) -> Chooser {
        Chooser {
            policy,
            placed: SmallVec::from_elem(false, groups.indices.len()),
            groups,
            available,
            assigned: SmallVec::new(),
            listed: [0; MAX_SLOTS],
        }
    }

    /// Whether no peer has a group that matches: every local group serves the message here.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether this node serves local group `name` on `filter`, which has a member online here
    /// or not (`online_here`); when it does not, the peer chosen instead is noted.
    pub fn serve_here(&mut self, name: &str, filter: &str, online_here: bool) -> bool {
        let Some(index) = self.groups.position(name.as_bytes(), filter.as_bytes()) else {
            return true;
        };
        if std::mem::replace(&mut self.placed[index], true) {
            // Asked twice about one group (never, the router meets each once): not here again.
            return false;
        }
        self.pick(index, online_here).is_none()
    }

    /// Places the groups the router did not ask about: members on peers only.
    pub fn finish(&mut self) {
        for index in 0..self.placed.len() {
            if !std::mem::replace(&mut self.placed[index], true) {
                self.pick(index, false);
            }
        }
    }

    /// The groups the peer in `slot` must serve (none without a slot).
    pub fn groups_for(&self, slot: Option<usize>) -> GroupList {
        let Some(slot) = slot else {
            return GroupList::new();
        };
        self.assigned
            .iter()
            .filter(|(s, _)| usize::from(*s) == slot)
            .filter_map(|&(_, index)| self.groups.get(index as usize))
            .map(|group| (group.name.clone(), group.filter.clone()))
            .collect()
    }

    /// Whether any peer was chosen for a group.
    pub fn assigned_any(&self) -> bool {
        !self.assigned.is_empty()
    }

    /// Chooses who serves group `index`: the slot of a peer (noted, with the bytes its list
    /// grows by), or `None` for this node. A peer whose list has no room left for the group is
    /// not chosen (see [`MAX_GROUP_LIST_BYTES`]); when no peer with members has room, the group
    /// is left to this node, which serves it if it has members of it (else nobody does: a
    /// message matching over 4 KiB of groups' names and filters for every peer with members).
    fn pick(&mut self, index: usize, online_here: bool) -> Option<usize> {
        let group = self.groups.get(index)?;
        let entry = group_entry_len(&group.name, &group.filter);
        let room = MAX_GROUP_LIST_BYTES - GROUP_COUNT_LEN;
        let mut remote = group.slots & self.available;
        let mut candidates = remote;
        while candidates != 0 {
            let slot = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            if usize::from(self.listed[slot]) + entry > room {
                remote &= !(1 << slot);
            }
        }
        if remote == 0 || (online_here && self.policy == SharedPolicy::Local) {
            return None;
        }
        let nodes = remote.count_ones() as usize + usize::from(online_here);
        let turn = group.turn.fetch_add(1, Ordering::Relaxed) % nodes;
        let nth_peer = match (online_here, turn) {
            (true, 0) => return None,
            (true, turn) => turn - 1,
            (false, turn) => turn,
        };
        let slot = nth_bit(remote, nth_peer)?;
        // Below MAX_GROUP_LIST_BYTES: the sum fits.
        self.listed[slot] += entry as u16;
        self.assigned.push((slot as u8, index as u32));
        Some(slot)
    }
}

/// The position of the `n`th set bit of `bits` (from the least significant, counting from 0).
fn nth_bit(mut bits: u64, n: usize) -> Option<usize> {
    for _ in 0..n {
        bits &= bits.checked_sub(1)?;
    }
    (bits != 0).then(|| bits.trailing_zeros() as usize)
}

/// A group's name and filter as a record names them.
#[cfg(test)]
fn group_entry(name: &str, filter: &str) -> (bytes::Bytes, bytes::Bytes) {
    (
        bytes::Bytes::copy_from_slice(name.as_bytes()),
        bytes::Bytes::copy_from_slice(filter.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::super::interest::RemoteGroup;
    use super::super::sync::groups_len;
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn group(name: &str, filter: &str, slots: u64, turn: &Arc<AtomicUsize>) -> RemoteGroup {
        RemoteGroup {
            name: Bytes::copy_from_slice(name.as_bytes()),
            filter: Bytes::copy_from_slice(filter.as_bytes()),
            slots,
            turn: turn.clone(),
        }
    }

    /// Who serves group `g` on `t/+` for `messages` messages: "here" or the slot's number.
    fn serving(
        policy: SharedPolicy,
        slots: u64,
        available: u64,
        local: Option<bool>,
        messages: usize,
    ) -> Vec<String> {
        let turn = Arc::new(AtomicUsize::new(0));
        (0..messages)
            .map(|_| {
                let groups = MatchedGroups::of(vec![group("g", "t/+", slots, &turn)]);
                let mut chooser = Chooser::new(policy, groups, available);
                let here = local.is_some_and(|online| chooser.serve_here("g", "t/+", online));
                chooser.finish();
                let mut who: Vec<String> = (0..64)
                    .filter(|&slot| !chooser.groups_for(Some(slot)).is_empty())
                    .map(|slot| slot.to_string())
                    .collect();
                if here {
                    who.push("here".to_string());
                }
                assert!(who.len() <= 1, "one node serves each message: {who:?}");
                who.pop().unwrap_or_else(|| "nobody".to_string())
            })
            .collect()
    }

    #[test]
    fn policies_parse_and_anything_else_is_refused() {
        assert_eq!("local".parse(), Ok(SharedPolicy::Local));
        assert_eq!("Cluster".parse(), Ok(SharedPolicy::Cluster));
        assert!("".parse::<SharedPolicy>().is_err());
        assert!("both".parse::<SharedPolicy>().is_err());
    }

    #[test]
    fn local_keeps_messages_here_while_a_member_is_online_here() {
        let all = serving(SharedPolicy::Local, 0b110, u64::MAX, Some(true), 6);
        assert!(all.iter().all(|w| w == "here"), "{all:?}");
        // Offline here (a persistent session away): the peers take turns.
        let away = serving(SharedPolicy::Local, 0b110, u64::MAX, Some(false), 4);
        assert_eq!(away, ["1", "2", "1", "2"]);
        // No member here at all: the same.
        let none = serving(SharedPolicy::Local, 0b110, u64::MAX, None, 4);
        assert_eq!(none, ["1", "2", "1", "2"]);
    }

    #[test]
    fn cluster_spreads_messages_over_every_node_with_members() {
        let spread = serving(SharedPolicy::Cluster, 0b101, u64::MAX, Some(true), 6);
        assert_eq!(spread, ["here", "0", "2", "here", "0", "2"]);
        let remote_only = serving(SharedPolicy::Cluster, 0b101, u64::MAX, None, 4);
        assert_eq!(remote_only, ["0", "2", "0", "2"]);
    }

    #[test]
    fn a_peer_this_node_does_not_forward_to_is_never_chosen() {
        // Slot 2 is down (or has no control link): only slot 0 serves.
        let spread = serving(SharedPolicy::Cluster, 0b101, 0b001, Some(true), 4);
        assert_eq!(spread, ["here", "0", "here", "0"]);
        // No peer left: here, even with no member online (as on a single node).
        let alone = serving(SharedPolicy::Cluster, 0b100, 0b001, Some(false), 2);
        assert_eq!(alone, ["here", "here"]);
        let nobody = serving(SharedPolicy::Local, 0b100, 0b001, None, 1);
        assert_eq!(nobody, ["nobody"]);
    }

    #[test]
    fn groups_are_chosen_one_by_one_and_listed_per_peer() {
        let turns: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
        let groups = vec![
            group("a", "t/+", 0b010, &turns[0]),
            group("b", "t/#", 0b110, &turns[1]),
            group("a", "t/x", 0b100, &turns[2]),
        ];
        let mut chooser = Chooser::new(SharedPolicy::Local, MatchedGroups::of(groups), u64::MAX);
        assert!(!chooser.is_empty());
        // A local group no peer has is served here; one a peer has too, with a member here.
        assert!(chooser.serve_here("c", "t/+", true));
        assert!(chooser.serve_here("a", "t/+", true));
        chooser.finish();
        assert!(chooser.assigned_any());
        assert_eq!(chooser.groups_for(Some(0)), GroupList::new());
        assert_eq!(chooser.groups_for(Some(1)), vec![group_entry("b", "t/#")]);
        assert_eq!(chooser.groups_for(Some(2)), vec![group_entry("a", "t/x")]);
        assert_eq!(chooser.groups_for(None), GroupList::new());
    }

    #[test]
    fn hundreds_of_groups_are_found_and_each_peer_list_stays_within_its_bound() {
        // 900 groups on slots 0 and 1, none here: more than two lists hold.
        let turns: Vec<Arc<AtomicUsize>> = (0..900).map(|_| Arc::default()).collect();
        let name = |i: usize| format!("g{i}");
        let groups = (0..900)
            .map(|i| group(&name(i), "t/+", 0b11, &turns[i]))
            .collect();
        let mut chooser = Chooser::new(SharedPolicy::Cluster, MatchedGroups::of(groups), 0b11);
        // Each local group is found among those matched (a hash and a binary search each).
        assert!(chooser.serve_here(&name(7), "t/+", true) || chooser.assigned_any());
        assert!(chooser.serve_here("not-a-peer-group", "t/+", true));
        chooser.finish();
        let (zero, one) = (chooser.groups_for(Some(0)), chooser.groups_for(Some(1)));
        for list in [&zero, &one] {
            assert!(list.len() > 255, "{}", list.len());
            assert!(
                groups_len(list) <= MAX_GROUP_LIST_BYTES,
                "{}",
                groups_len(list)
            );
        }
        // What fits no list is left to this node (which serves it when it has members of it,
        // see `pick`); nothing is named twice.
        let mut named: Vec<_> = zero.iter().chain(&one).collect();
        let total = named.len();
        named.sort();
        named.dedup();
        assert_eq!(named.len(), total, "each group named once");
        assert!(total < 900, "the lists are full: the rest is left here");
    }

    #[test]
    fn nth_bit_counts_set_bits_from_the_lowest() {
        assert_eq!(nth_bit(0b1011_0000, 0), Some(4));
        assert_eq!(nth_bit(0b1011_0000, 1), Some(5));
        assert_eq!(nth_bit(0b1011_0000, 2), Some(7));
        assert_eq!(nth_bit(0b1011_0000, 3), None);
        assert_eq!(nth_bit(0, 0), None);
        assert_eq!(nth_bit(u64::MAX, 63), Some(63));
    }
}
