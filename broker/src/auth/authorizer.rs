//! One connection's rights: the rules that apply to it (the rules file's, or its credentials'
//! own), who it is to them, and small caches of the last decisions, so that a client publishing
//! to a few topics walks the rules once per topic, not once per message.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::acl::{Client, Rules, SubscribeDecision};
use crate::topic::Subscription;

/// Decisions remembered per direction: enough for the topics one device publishes to, small
/// enough that a connection pays nothing noticeable for it.
const CACHED_TOPICS: usize = 8;

/// The last decisions for some topics, replaced round-robin.
#[derive(Default)]
struct TopicCache {
    entries: Vec<(Bytes, bool)>,
    next: usize,
}

impl TopicCache {
    fn get(&self, topic: &[u8]) -> Option<bool> {
        self.entries
            .iter()
            .find(|(cached, _)| cached.as_ref() == topic)
            .map(|&(_, allowed)| allowed)
    }

    /// Keeps a copy of `topic`: the caller's bytes may be a slice of a large read buffer or
    /// message, which the cache must not keep alive.
    fn put(&mut self, topic: &[u8], allowed: bool) {
        let topic = Bytes::copy_from_slice(topic);
        if self.entries.len() < CACHED_TOPICS {
            self.entries.push((topic, allowed));
        } else {
            self.entries[self.next] = (topic, allowed);
            self.next = (self.next + 1) % CACHED_TOPICS;
        }
    }

    fn clear(&mut self) {
        *self = TopicCache::default();
    }
}

/// What one connection may do.
pub struct Authorizer {
    rules: Arc<Rules>,
    /// The generation of the rules file these rules are; `None` when they are the client's own
    /// (from its credentials), which a reload of the file does not change.
    pub(super) file_generation: Option<u64>,
    username: Option<Box<str>>,
    client_id: Arc<str>,
    address: Option<IpAddr>,
    /// When the credentials stop being valid: the connection is closed then.
    pub expires_at: Option<tokio::time::Instant>,
    /// The rules allow everything (no rules file, no rules of its own): nothing to check.
    unrestricted: bool,
    /// Set when a subscription was granted that may match topics the client may not read:
    /// every delivery is then checked.
    check_reads: bool,
    published: TopicCache,
    read: TopicCache,
}

impl Authorizer {
    pub(super) fn new(
        rules: Arc<Rules>,
        file_generation: Option<u64>,
        username: Option<&str>,
        client_id: Arc<str>,
        address: Option<IpAddr>,
    ) -> Authorizer {
        Authorizer {
            unrestricted: rules.allows_everything(),
            rules,
            file_generation,
            username: username.map(Box::from),
            client_id,
            address,
            expires_at: None,
            check_reads: false,
            published: TopicCache::default(),
            read: TopicCache::default(),
        }
    }

    /// The username the client proved.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    fn client(&self) -> Client<'_> {
        Client {
            username: self.username.as_deref(),
            client_id: &self.client_id,
            address: self.address,
        }
    }

    /// Swaps in reloaded rules; the caller re-judges the subscriptions.
    pub(super) fn replace_rules(&mut self, rules: Arc<Rules>, generation: u64) {
        self.unrestricted = rules.allows_everything();
        self.rules = rules;
        self.file_generation = Some(generation);
        self.published.clear();
        self.read.clear();
    }

    /// Whether the client may publish to `topic` (a valid topic name).
    pub fn may_publish(&mut self, topic: &[u8]) -> bool {
        if self.unrestricted {
            return true;
        }
        if let Some(allowed) = self.published.get(topic) {
            return allowed;
        }
        let allowed = self.rules.may_publish(&self.client(), topic);
        self.published.put(topic, allowed);
        allowed
    }

    /// Whether the client may publish its will to `topic`; not cached (once per connection).
    pub fn may_publish_will(&self, topic: &[u8]) -> bool {
        self.rules.may_publish(&self.client(), topic)
    }

    /// Whether a message published to `topic` may be delivered to this client: always, unless
    /// one of its subscriptions was granted with checks.
    pub fn may_deliver(&mut self, topic: &[u8]) -> bool {
        if !self.check_reads {
            return true;
        }
        if let Some(allowed) = self.read.get(topic) {
            return allowed;
        }
        let allowed = self.rules.may_read(&self.client(), topic);
        self.read.put(topic, allowed);
        allowed
    }

    /// Judges a subscription. A shared subscription must be readable whole: its messages go to
    /// one member, and a member that could not read one would lose it for the group.
    pub fn may_subscribe(&mut self, subscription: &Subscription<'_>) -> bool {
        match self
            .rules
            .decide_subscribe(&self.client(), subscription.filter())
        {
            SubscribeDecision::Allowed => true,
            SubscribeDecision::AllowedChecked if subscription.group().is_none() => {
                self.check_reads = true;
                true
            }
            SubscribeDecision::AllowedChecked | SubscribeDecision::Denied => false,
        }
    }

    /// Checks every delivery from now on: subscriptions were re-judged, and what was queued
    /// for them under the earlier rules or identity must not slip through.
    pub fn check_every_delivery(&mut self) {
        self.check_reads = true;
    }
}
