//! The publishing side: [`Forwarder::forward`] queues a message for the peers that want it.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::super::peers::{InterestWait, Peer, Peers};
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
    metrics: Arc<Metrics>,
}

impl Forwarder {
    pub fn new(
        peers: Arc<Peers>,
        limit: Option<usize>,
        version: u8,
        metrics: Arc<Metrics>,
    ) -> Forwarder {
        Forwarder {
            peers,
            limit,
            version,
            metrics,
        }
    }

    /// What a SUBSCRIBE that changed this node's filters waits for (see
    /// [`Peers::interest_wait`]).
    pub fn interest_wait(&self) -> Option<InterestWait> {
        self.peers.interest_wait()
    }

    /// Queues a locally published message (with the `stamp` the retained store gave it, when
    /// retained) for the other members, unless it must stay here; returns a peer whose link is
    /// congested, which the publisher should wait for.
    pub fn forward(&self, message: &Arc<Message>, stamp: Option<&Stamp>) -> Option<Arc<Peer>> {
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
        let peers = self.peers.list();
        let wanted = if peers.iter().any(|p| p.has_link) {
            self.peers.interest.matching(&message.topic)
        } else {
            u64::MAX
        };
        let (mut queued, mut wake, mut congested) = (false, false, None);
        for peer in peers.iter() {
            if !peer.wants(message, wanted) {
                cluster.records_skipped.inc();
                continue;
            }
            let pushed = peer.push(message, stamp, now, &self.metrics);
            queued |= pushed.queued;
            wake |= pushed.wake;
            if pushed.congested && congested.is_none() {
                congested = Some(peer.clone());
            }
        }
        if queued {
            cluster.records_forwarded.inc();
        }
        if wake {
            self.peers.wake_sender();
        }
        congested
    }
}
