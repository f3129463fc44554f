//! MQTT 5 topic aliases, both ways: a number standing for a topic on one connection, so that a
//! PUBLISH can leave its topic out. They are forgotten when the connection closes.
//!
//! [`InboundAliases`] holds what the client taught us (bounded by our Topic Alias Maximum,
//! `-mta`, and in bytes by `-mpl`); [`OutboundAliases`] what we taught the client (bounded by the smaller of its maximum
//! and ours), replacing the least recently used alias when all are taken. Both are plain data,
//! tested without a socket.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;

use crate::codec::ReasonCode;

/// What one inbound alias costs besides its topic: its map entry and the topic's allocation.
const ALIAS_OVERHEAD: usize = 64;

/// Hashes an alias number with one multiplication (Fibonacci hashing), which spreads the
/// sixteen bits over the whole word. SipHash's protection against chosen keys buys nothing
/// here: the map holds at most `-mta` aliases of one connection, and it is looked up for
/// every aliased PUBLISH.
#[derive(Debug, Default)]
pub(super) struct AliasHasher(u64);

impl Hasher for AliasHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u16(&mut self, alias: u16) {
        self.0 = u64::from(alias).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    /// Not used by `u16` keys; any bytes still hash.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

/// Aliases the client set, by number. A map rather than a table indexed by alias: a client
/// that sets only alias 65535 must not make us hold 65535 slots.
#[derive(Debug, Default)]
pub(super) struct InboundAliases {
    topics: HashMap<u16, Bytes, BuildHasherDefault<AliasHasher>>,
    /// Bytes the aliases hold (topics plus [`ALIAS_OVERHEAD`] each), which `budget` bounds.
    held: usize,
}

impl InboundAliases {
    /// Applies a PUBLISH that carried `alias` with `topic`: a non-empty topic (re)defines the
    /// alias and is handed back; an empty one uses the alias, which must be known (`None`:
    /// the topic is read with [`InboundAliases::topic`] where it is needed, neither copied nor
    /// reference-counted for every message). At most `budget` bytes are held for the aliases
    /// of one connection (`-mpl`: what one packet may cost): without it, `-mta` aliases of
    /// 64 KiB topics each could be parked on every connection.
    ///
    /// # Errors
    ///
    /// 0x94 (Topic Alias Invalid) for alias 0 or one above `maximum`; 0x82 (Protocol Error) for
    /// an empty topic with an alias never defined on this connection; 0x97 (Quota Exceeded)
    /// for a definition that would take the aliases past `budget` bytes.
    pub(super) fn apply(
        &mut self,
        alias: u16,
        topic: Bytes,
        maximum: u16,
        budget: usize,
    ) -> Result<Option<Bytes>, ReasonCode> {
        if alias == 0 || alias > maximum {
            return Err(ReasonCode::TopicAliasInvalid);
        }
        if topic.is_empty() {
            return match self.topics.contains_key(&alias) {
                true => Ok(None),
                false => Err(ReasonCode::ProtocolError),
            };
        }
        let replaced = self
            .topics
            .get(&alias)
            .map_or(0, |old| old.len() + ALIAS_OVERHEAD);
        let held = self.held - replaced + topic.len() + ALIAS_OVERHEAD;
        if held > budget {
            return Err(ReasonCode::QuotaExceeded);
        }
        self.held = held;
        // Copied: the topic is a slice of the read buffer, which it must not keep alive.
        self.topics.insert(alias, Bytes::copy_from_slice(&topic));
        Ok(Some(topic))
    }

    /// The topic `alias` stands for.
    pub(super) fn topic(&self, alias: u16) -> Option<&Bytes> {
        self.topics.get(&alias)
    }

    /// The topic of a PUBLISH with `alias` and `topic`, as [`InboundAliases::apply`] with the
    /// lookup done.
    #[cfg(test)]
    fn resolve(
        &mut self,
        alias: u16,
        topic: Bytes,
        maximum: u16,
        budget: usize,
    ) -> Result<Bytes, ReasonCode> {
        match self.apply(alias, topic, maximum, budget)? {
            Some(topic) => Ok(topic),
            None => self.topic(alias).cloned().ok_or(ReasonCode::ProtocolError),
        }
    }

    /// Bytes held for the aliases (topics and per-alias overhead).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held
    }
}

/// How a PUBLISH to the client names its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutboundTopic {
    /// The topic, without an alias (none allowed, or none worth using).
    Plain,
    /// The topic and a new alias for it: the client learns it now.
    Define(u16),
    /// An empty topic and the alias the client already knows.
    Alias(u16),
}

/// Aliases the broker set on this connection, reused per topic; when all are in use the least
/// recently used one is given to the new topic.
///
/// `by_topic` is looked up for every delivery, so it hashes with foldhash rather than SipHash
/// (a third of the cost on MQTT 5 fan-in). Its seed is random per map; publishers choose the
/// topics, but what colliding topics could cost is bounded by the map's size (at most `-mta`
/// aliases of one connection).
#[derive(Debug)]
pub(super) struct OutboundAliases {
    maximum: u16,
    by_topic: HashMap<Bytes, u16, foldhash::fast::RandomState>,
    /// Per alias (`n` at `n - 1`): its topic and when it was last used (a counter).
    slots: Vec<(Bytes, u64)>,
    clock: u64,
    /// The alias assigned last (0: none). Deliveries come in runs of one topic (a publisher's
    /// batch, a point-to-point pair), and comparing with its topic is cheaper than hashing.
    last: u16,
}

impl OutboundAliases {
    pub(super) fn new(maximum: u16) -> OutboundAliases {
        OutboundAliases {
            maximum,
            by_topic: HashMap::default(),
            slots: Vec::new(),
            clock: 0,
            last: 0,
        }
    }

    /// The alias to send `topic` with.
    pub(super) fn assign(&mut self, topic: &Bytes) -> OutboundTopic {
        if self.maximum == 0 || topic.is_empty() {
            return OutboundTopic::Plain;
        }
        self.clock += 1;
        if let Some(slot) = usize::from(self.last)
            .checked_sub(1)
            .and_then(|index| self.slots.get_mut(index))
        {
            if slot.0 == topic {
                slot.1 = self.clock;
                return OutboundTopic::Alias(self.last);
            }
        }
        let assigned = self.assign_by_topic(topic);
        if let OutboundTopic::Alias(alias) | OutboundTopic::Define(alias) = assigned {
            self.last = alias;
        }
        assigned
    }

    fn assign_by_topic(&mut self, topic: &Bytes) -> OutboundTopic {
        if let Some(&alias) = self.by_topic.get(topic) {
            self.slots[usize::from(alias - 1)].1 = self.clock;
            return OutboundTopic::Alias(alias);
        }
        // Copied: a message's topic is often a slice of a larger buffer (its payload, or its
        // publisher's read buffer), which an alias must not keep alive. Once per definition.
        let topic = Bytes::copy_from_slice(topic);
        if self.slots.len() < usize::from(self.maximum) {
            self.slots.push((topic.clone(), self.clock));
            // Cannot truncate: at most `maximum` slots.
            let alias = self.slots.len() as u16;
            self.by_topic.insert(topic, alias);
            return OutboundTopic::Define(alias);
        }
        // All taken: the least recently used goes (a linear scan of at most -mta slots, only
        // when a new topic displaces an old one).
        let Some((index, _)) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, used))| *used)
        else {
            return OutboundTopic::Plain;
        };
        let (old, _) = std::mem::replace(&mut self.slots[index], (topic.clone(), self.clock));
        self.by_topic.remove(&old);
        let alias = (index + 1) as u16;
        self.by_topic.insert(topic, alias);
        OutboundTopic::Define(alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &'static str) -> Bytes {
        Bytes::from_static(name.as_bytes())
    }

    const BUDGET: usize = 1 << 20;

    #[test]
    fn inbound_aliases_are_defined_then_used_and_bounded() {
        let mut aliases = InboundAliases::default();
        assert_eq!(
            aliases.resolve(2, topic("a/b"), 4, BUDGET),
            Ok(topic("a/b"))
        );
        assert_eq!(
            aliases.resolve(2, Bytes::new(), 4, BUDGET),
            Ok(topic("a/b"))
        );
        assert_eq!(
            aliases.resolve(1, Bytes::new(), 4, BUDGET),
            Err(ReasonCode::ProtocolError),
            "never defined"
        );
        assert_eq!(
            aliases.resolve(2, topic("c"), 4, BUDGET),
            Ok(topic("c")),
            "redefined"
        );
        assert_eq!(aliases.resolve(2, Bytes::new(), 4, BUDGET), Ok(topic("c")));
        assert_eq!(
            aliases.resolve(0, topic("x"), 4, BUDGET),
            Err(ReasonCode::TopicAliasInvalid)
        );
        assert_eq!(
            aliases.resolve(5, topic("x"), 4, BUDGET),
            Err(ReasonCode::TopicAliasInvalid)
        );
        assert_eq!(
            InboundAliases::default().resolve(1, topic("x"), 0, BUDGET),
            Err(ReasonCode::TopicAliasInvalid),
            "no aliases allowed"
        );
    }

    #[test]
    fn inbound_aliases_hold_what_is_defined_within_their_budget() {
        let mut aliases = InboundAliases::default();
        // The highest alias costs what any other does.
        assert_eq!(
            aliases.resolve(u16::MAX, topic("t"), u16::MAX, BUDGET),
            Ok(topic("t"))
        );
        assert_eq!(aliases.held(), 1 + ALIAS_OVERHEAD);
        // Redefining replaces the old topic's cost.
        aliases
            .resolve(u16::MAX, topic("abc"), u16::MAX, BUDGET)
            .expect("redefined");
        assert_eq!(aliases.held(), 3 + ALIAS_OVERHEAD);
        // A definition past the budget is refused and changes nothing.
        let budget = 2 * (3 + ALIAS_OVERHEAD);
        assert_eq!(
            aliases.resolve(1, topic("abcd"), u16::MAX, budget),
            Err(ReasonCode::QuotaExceeded)
        );
        assert_eq!(aliases.held(), 3 + ALIAS_OVERHEAD);
        assert_eq!(
            aliases.resolve(1, Bytes::new(), u16::MAX, budget),
            Err(ReasonCode::ProtocolError)
        );
        aliases
            .resolve(1, topic("abc"), u16::MAX, budget)
            .expect("exactly at the budget");
        assert_eq!(
            aliases.resolve(u16::MAX, Bytes::new(), u16::MAX, budget),
            Ok(topic("abc"))
        );
    }

    #[test]
    fn outbound_aliases_are_reused_and_the_least_recently_used_is_replaced() {
        let mut aliases = OutboundAliases::new(2);
        assert_eq!(aliases.assign(&topic("a")), OutboundTopic::Define(1));
        assert_eq!(aliases.assign(&topic("b")), OutboundTopic::Define(2));
        assert_eq!(aliases.assign(&topic("a")), OutboundTopic::Alias(1));
        // "b" is now the least recently used.
        assert_eq!(aliases.assign(&topic("c")), OutboundTopic::Define(2));
        assert_eq!(aliases.assign(&topic("b")), OutboundTopic::Define(1));
        assert_eq!(aliases.assign(&topic("c")), OutboundTopic::Alias(2));
        assert_eq!(aliases.assign(&topic("b")), OutboundTopic::Alias(1));
    }

    #[test]
    fn runs_of_one_topic_keep_their_alias_and_its_recency() {
        let mut aliases = OutboundAliases::new(2);
        assert_eq!(aliases.assign(&topic("a")), OutboundTopic::Define(1));
        assert_eq!(aliases.assign(&topic("a")), OutboundTopic::Alias(1));
        assert_eq!(aliases.assign(&topic("b")), OutboundTopic::Define(2));
        assert_eq!(aliases.assign(&topic("b")), OutboundTopic::Alias(2));
        assert_eq!(aliases.assign(&topic("a")), OutboundTopic::Alias(1));
        assert_eq!(aliases.assign(&topic("a")), OutboundTopic::Alias(1));
        // "a" was used last (by the run), so "b" is the one replaced.
        assert_eq!(aliases.assign(&topic("c")), OutboundTopic::Define(2));
        assert_eq!(aliases.assign(&topic("c")), OutboundTopic::Alias(2));
        // The replaced alias's old topic is not found through the last one.
        assert_eq!(aliases.assign(&topic("b")), OutboundTopic::Define(1));
        assert_eq!(aliases.assign(&topic("a")), OutboundTopic::Define(2));
    }

    #[test]
    fn outbound_aliases_do_not_keep_the_message_s_buffer_alive() {
        // A message's topic is often a slice of a larger buffer (its payload, or the
        // publisher's read buffer): an alias must not pin that buffer for as long as it lives.
        let mut aliases = OutboundAliases::new(4);
        let buffer = Bytes::from(vec![b'a'; 64 * 1024]);
        let topic = buffer.slice(..3);
        assert_eq!(aliases.assign(&topic), OutboundTopic::Define(1));
        drop(topic);
        assert!(buffer.is_unique(), "the alias holds a copy, not the buffer");
        assert_eq!(
            aliases.assign(&buffer.slice(..3)),
            OutboundTopic::Alias(1),
            "still found by its bytes"
        );
    }

    #[test]
    fn no_outbound_aliases_when_the_client_takes_none() {
        let mut aliases = OutboundAliases::new(0);
        assert_eq!(aliases.assign(&topic("a")), OutboundTopic::Plain);
        assert_eq!(aliases.assign(&topic("a")), OutboundTopic::Plain);
    }
}
