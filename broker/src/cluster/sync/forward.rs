//! The publishing side: [`Forwarder::prepare`] tells whether a message crosses and, when peers
//! have shared groups matching it, which node serves each (see [`super::super::shared`]);
//! [`Forwarder::forward`] queues it for the peers that want it or were chosen for a group.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::super::link::earliest;
use super::super::peers::{InterestWait, Peer, Peers};
use super::super::shared::{Chooser, SharedPolicy};
use super::record_len;
use crate::metrics::{ClusterDrop, ClusterPort, Metrics};
use crate::router::{Message, Stamp};

/// The publishing side's handle: cheap to call from any connection.
pub struct Forwarder {
    peers: Arc<Peers>,
    /// `-csl`, if set.
    limit: Option<usize>,
    /// The newest sync version this node writes (`-csv`), whose record size `limit` applies to.
    version: u8,
    /// Where shared groups' messages go (`-ssp`).
    policy: SharedPolicy,
    metrics: Arc<Metrics>,
}

/// A message that crosses to other members, as [`Forwarder::prepare`] found it.
pub struct Prepared {
    now: Instant,
    /// The peers as they were when the groups were matched: the chooser's slots are theirs, so
    /// [`Forwarder::forward`] queues to these, not to a list read later (where a peer that
    /// left could have given its slot to another).
    peers: Arc<Vec<Arc<Peer>>>,
    /// Who serves each shared group that peers have members of.
    pub chooser: Chooser,
}

impl Forwarder {
    pub fn new(
        peers: Arc<Peers>,
        limit: Option<usize>,
        version: u8,
        policy: SharedPolicy,
        metrics: Arc<Metrics>,
    ) -> Forwarder {
        Forwarder {
            peers,
            limit,
            version,
            policy,
            metrics,
        }
    }

    /// What a SUBSCRIBE that changed this node's filters waits for (see
    /// [`Peers::interest_wait`]).
    pub fn interest_wait(&self) -> Option<InterestWait> {
        self.peers.interest_wait()
    }

    /// Whether a locally published message crosses to the other members (`None`: it stays
    /// here, counted when dropped) and, when it does, who serves the peers' shared groups that
    /// match it (an empty choice, at the cost of one atomic load, while no peer has any).
    pub fn prepare(&self, message: &Message) -> Option<Prepared> {
        let cluster = &self.metrics.cluster;
        if message.topic.first() == Some(&b'$') {
            debug!("$ topic not forwarded");
            cluster
                .dropped(ClusterPort::Sync, ClusterDrop::DollarTopic)
                .inc();
            return None;
        }
        // Lengths a record carries in 16 bits: an MQTT 5 message may have more properties.
        if message.properties.len() > usize::from(u16::MAX) {
            debug!("message with over 64 KiB of properties not forwarded");
            cluster
                .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
                .inc();
            return None;
        }
        if let Some(limit) = self.limit {
            let len = record_len(message, self.version.min(2));
            if len > limit {
                debug!(len, limit, "message too big to forward (-csl)");
                cluster
                    .dropped(ClusterPort::Sync, ClusterDrop::TooBig)
                    .inc();
                return None;
            }
        }
        let now = Instant::now();
        if message.is_expired(now) {
            return None;
        }
        let peers = arc_swap::Guard::into_inner(self.peers.list());
        let groups = self.peers.interest.groups_matching(&message.topic);
        let available = if groups.is_empty() {
            0
        } else {
            peers
                .iter()
                .filter_map(|peer| peer.interest_slot())
                .fold(0u64, |slots, slot| slots | 1 << slot)
        };
        Some(Prepared {
            now,
            peers,
            chooser: Chooser::new(self.policy, groups, available),
        })
    }

    /// Queues a locally published message (with the `stamp` the retained store gave it, when
    /// retained), `prepared` for it, for the other members that want it or serve one of its
    /// shared groups; returns a peer whose link is congested, which the publisher should wait
    /// for.
    pub fn forward(
        &self,
        message: &Arc<Message>,
        stamp: Option<&Stamp>,
        mut prepared: Prepared,
    ) -> Option<Arc<Peer>> {
        let cluster = &self.metrics.cluster;
        let now = prepared.now;
        prepared.chooser.finish();
        let chooser = &prepared.chooser;
        let peers = &prepared.peers;
        let wanted = if peers.iter().any(|p| p.has_link) {
            self.peers.interest.matching(&message.topic)
        } else {
            u64::MAX
        };
        let (mut queued, mut wake, mut congested) = (false, false, None);
        let mut wake_by: Option<Instant> = None;
        for peer in peers.iter() {
            let groups = if chooser.assigned_any() {
                chooser.groups_for(peer.interest_slot())
            } else {
                Vec::new()
            };
            // A peer chosen to serve a group gets the message even with no other interest in it.
            if groups.is_empty() && !peer.wants(message, wanted) {
                cluster.records_skipped.inc();
                continue;
            }
            let pushed = peer.push(message, stamp, &groups, now, &self.metrics);
            queued |= pushed.queued;
            wake |= pushed.wake;
            wake_by = earliest(wake_by, pushed.wake_by);
            if pushed.congested && congested.is_none() {
                congested = Some(peer.clone());
            }
        }
        if queued {
            cluster.records_forwarded.inc();
        }
        if wake {
            self.peers.send_soon();
        } else if let Some(deadline) = wake_by {
            self.peers.wake_sender_by(deadline);
        }
        congested
    }
}
