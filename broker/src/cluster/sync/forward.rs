//! The publishing side: [`Forwarder::prepare`] tells whether a message crosses and, when peers
//! have shared groups matching it, which node serves each (see [`super::super::shared`]);
//! [`Forwarder::forward`] stages it in a [`ForwardBatch`] for the peers that want it or were
//! chosen for a group, and [`Forwarder::flush`] queues what a batch holds, peer by peer.
//!
//! A connection keeps one batch for the PUBLISH packets of one read buffer and flushes it
//! before it waits again (or sooner: at [`FLUSH_RECORDS`] messages, at its byte bound, see
//! [`flush_bytes`], after a retained message or one for a congested peer): the peers' list,
//! the clock and each peer's lock are taken once per batch, not per message. Other publishers
//! (wills, the HTTP gateway, CoAP) use a batch of one.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::super::link::{earliest, FRAME_HEADER};
use super::super::peers::{InterestWait, Peer, Peers};
use super::super::shared::{Chooser, SharedPolicy};
use super::{record_len, stamped_record_len};
use crate::metrics::{ClusterDrop, ClusterPort, Metrics};
use crate::router::{Message, Stamp};

/// A batch is flushed when it holds this many messages ...
pub const FLUSH_RECORDS: usize = 64;
/// ... or this many bytes of link frames (see [`flush_bytes`]).
const FLUSH_BYTES_MAX: usize = 32 << 10;
const FLUSH_BYTES_MIN: usize = 1 << 10;

/// The bytes a batch holds before it is flushed, for links of `sync_buffer` bytes (`-csb`) and
/// `workers` threads running connections. A batch for a peer past its congestion mark (half of
/// `-csb`, where publishers start to wait) is flushed at once (see [`Forwarder::forward`]), but
/// the batches already staged when a peer crosses the mark are flushed whole: up to one per
/// worker thread, as batches live only while a connection handles its buffer. They are kept
/// within half of the room left past the mark, so that they never fill the link (where QoS 1
/// messages are dropped): 32 KiB each at the default 16 MiB, and never below 1 KiB, about one
/// message, as before batches.
pub fn flush_bytes(sync_buffer: usize, workers: usize) -> usize {
    (sync_buffer / 4 / workers.max(1)).clamp(FLUSH_BYTES_MIN, FLUSH_BYTES_MAX)
}

/// The publishing side's handle: cheap to call from any connection.
pub struct Forwarder {
    peers: Arc<Peers>,
    /// `-csl`, if set.
    limit: Option<usize>,
    /// The newest sync version this node writes (`-csv`), whose record size `limit` applies to.
    version: u8,
    /// Where shared groups' messages go (`-ssp`).
    policy: SharedPolicy,
    /// When a batch is flushed before its end (see [`flush_bytes`]).
    flush_bytes: usize,
    metrics: Arc<Metrics>,
}

/// A message that crosses to other members, as [`Forwarder::prepare`] found it.
pub struct Prepared {
    /// Who serves each shared group that peers have members of.
    pub chooser: Chooser,
}

/// What [`Forwarder::forward`] did with a message.
#[derive(Default)]
pub struct Forwarded {
    /// Staged for a peer that may have a subscriber to it (or whose interest is not known),
    /// or that serves one of its shared groups; not when it goes only as a retained message,
    /// which every peer stores.
    pub for_subscribers: bool,
    /// A peer whose link is congested (told when the batch was flushed).
    pub congested: Option<Arc<Peer>>,
}

/// Messages staged for the peers and not yet queued (see the module's documentation). Every
/// batch must be flushed before it is dropped or waits: a message left in it is never sent.
#[derive(Default)]
pub struct ForwardBatch {
    /// The time of the batch's first message (what expiry is checked against) and the peers
    /// then: the choosers' slots are theirs, so the batch is queued to these, not to a list
    /// read later (where a peer that left could have given its slot to another).
    snapshot: Option<(Instant, Arc<Vec<Arc<Peer>>>)>,
    staged: Vec<Staged>,
    bytes: usize,
}

struct Staged {
    message: Arc<Message>,
    stamp: Option<Stamp>,
    /// The interest slots of the peers whose filters match its topic.
    wanted: u64,
    /// Set when some peer was chosen to serve a shared group.
    chooser: Option<Box<Chooser>>,
    /// Queued for at least one peer.
    queued: bool,
}

impl ForwardBatch {
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }
}

impl Drop for ForwardBatch {
    fn drop(&mut self) {
        // A caller that forgot to flush loses messages silently: caught in tests.
        debug_assert!(
            self.staged.is_empty() || std::thread::panicking(),
            "a ForwardBatch dropped with {} messages staged",
            self.staged.len()
        );
    }
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
            // The runtime's default: a worker per core.
            flush_bytes: flush_bytes(
                peers.link_capacity(),
                std::thread::available_parallelism().map_or(1, usize::from),
            ),
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
    pub fn prepare(&self, message: &Message, batch: &mut ForwardBatch) -> Option<Prepared> {
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
        let (now, peers) = self.snapshot(batch);
        if message.is_expired(*now) {
            return None;
        }
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
            chooser: Chooser::new(self.policy, groups, available),
        })
    }

    /// The batch's time and peers, taken at its first message.
    fn snapshot<'b>(&self, batch: &'b mut ForwardBatch) -> &'b (Instant, Arc<Vec<Arc<Peer>>>) {
        batch.snapshot.get_or_insert_with(|| {
            (
                Instant::now(),
                arc_swap::Guard::into_inner(self.peers.list()),
            )
        })
    }

    /// Stages a locally published message (with the `stamp` the retained store gave it, when
    /// retained), `prepared` for it in `batch`, for the other members that want it or serve
    /// one of its shared groups; flushes the batch when it is full, and then tells of a peer
    /// whose link is congested, which the publisher should wait for.
    pub fn forward(
        &self,
        message: &Arc<Message>,
        stamp: Option<&Stamp>,
        mut prepared: Prepared,
        batch: &mut ForwardBatch,
    ) -> Forwarded {
        let (_, peers) = self.snapshot(batch);
        prepared.chooser.finish();
        let chooser = prepared
            .chooser
            .assigned_any()
            .then(|| Box::new(prepared.chooser));
        let wanted = if peers.iter().any(|p| p.has_link) {
            self.peers.interest.matching(&message.topic)
        } else {
            u64::MAX
        };
        // Nobody to send it to: not staged (each peer counted in `records_skipped`).
        let anyone = chooser.is_some() || peers.iter().any(|peer| peer.wants(message, wanted));
        if !anyone {
            self.metrics
                .cluster
                .records_skipped
                .inc_by(peers.len() as u64);
            return Forwarded::default();
        }
        // The batch is flushed when full, and at once after a message to a congested peer, so that the publisher waits as
        // it would have without batches (each connection's batch would otherwise add its
        // share past the congestion mark, and enough of them fill the link); and after a
        // retained message, so that a peer gets a topic's retained writes in the order they
        // were stamped here (a peer of version 3 keeps the last to arrive).
        let for_subscribers =
            chooser.is_some() || peers.iter().any(|peer| peer.may_subscribe(wanted));
        let flush_now = message.retain
            || peers.iter().any(|peer| {
                peer.is_congested() && (chooser.is_some() || peer.wants(message, wanted))
            });
        batch.bytes += FRAME_HEADER + stamped_record_len(message, None);
        if batch.staged.capacity() == 0 {
            batch.staged.reserve(16);
        }
        batch.staged.push(Staged {
            message: message.clone(),
            stamp: stamp.cloned(),
            wanted,
            chooser,
            queued: false,
        });
        let congested = if flush_now
            || batch.staged.len() >= FLUSH_RECORDS
            || batch.bytes >= self.flush_bytes
        {
            self.flush(batch)
        } else {
            None
        };
        Forwarded {
            for_subscribers,
            congested,
        }
    }

    /// Queues what `batch` holds for the peers, each peer's share under one lock; returns a
    /// peer whose link is congested, which the publisher should wait for. The batch is empty
    /// after (and may be used again).
    pub fn flush(&self, batch: &mut ForwardBatch) -> Option<Arc<Peer>> {
        let (_, peers) = batch.snapshot.take()?;
        let staged = &mut batch.staged;
        batch.bytes = 0;
        if staged.is_empty() {
            return None;
        }
        // Now, not the batch's first message's time: records carry what is left of their
        // messages' expiry intervals, counted from when they are queued.
        let now = Instant::now();
        let cluster = &self.metrics.cluster;
        let (mut wake, mut congested) = (false, None);
        let mut wake_by: Option<Instant> = None;
        for peer in peers.iter() {
            let mut pushing = None;
            let mut skipped = 0;
            for entry in staged.iter_mut() {
                // Expired since the batch began: the peer would only drop it.
                if entry.message.is_expired(now) {
                    continue;
                }
                let groups = match &entry.chooser {
                    Some(chooser) => chooser.groups_for(peer.interest_slot()),
                    None => Vec::new(),
                };
                // A peer chosen to serve a group gets the message even with no other interest
                // in it.
                if groups.is_empty() && !peer.wants(&entry.message, entry.wanted) {
                    skipped += 1;
                    continue;
                }
                let pushing = pushing.get_or_insert_with(|| peer.pushing(now));
                entry.queued |=
                    pushing.push(&entry.message, entry.stamp.as_ref(), &groups, &self.metrics);
            }
            if skipped > 0 {
                cluster.records_skipped.inc_by(skipped);
            }
            let Some(pushing) = pushing else {
                continue;
            };
            let pushed = pushing.finish(&self.metrics);
            wake |= pushed.wake;
            wake_by = earliest(wake_by, pushed.wake_by);
            if pushed.congested && congested.is_none() {
                congested = Some(peer.clone());
            }
        }
        let queued = staged.drain(..).filter(|entry| entry.queued).count();
        if queued > 0 {
            cluster.records_forwarded.inc_by(queued as u64);
        }
        if wake {
            self.peers.send_soon();
        } else if let Some(deadline) = wake_by {
            self.peers.wake_sender_by(deadline);
        }
        congested
    }
}
